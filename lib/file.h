/* A whole file's bytes in memory: mapped read-only, or read into a buffer. */
#ifndef BONSAI_FILE_H
#define BONSAI_FILE_H

#include "internal.h"

#include <stdio.h>

typedef struct bsi_file {
    const uint8_t *data;
    uint64_t size;
    bool mapped;
} bsi_file;

/* Open `path`. With use_mmap the file is mapped (falling back to reading when mapping fails);
 * otherwise read in chunks, calling `progress` (which may abort) as it goes. */
bonsai_status bsi_file_open(const char *path, bool use_mmap, bonsai_progress_fn progress,
                            void *user_data, bsi_file *out);
void bsi_file_close(bsi_file *f);

/* A file written under a temporary name beside `path` and renamed over it only when complete: a
 * failure never leaves a partial file behind, and `path` may be a file still mapped for reading
 * (writing over the input of a conversion is safe). */
typedef struct bsi_atomic_file {
    FILE *f;
    char *tmp;
    const char *path;
} bsi_atomic_file;

bonsai_status bsi_atomic_file_open(bsi_atomic_file *af, const char *path);
/* Closes the file: renamed into place when `st` is BONSAI_OK, removed otherwise. Returns the
 * final status (a failed close or rename turns BONSAI_OK into BONSAI_ERR_IO). */
bonsai_status bsi_atomic_file_close(bsi_atomic_file *af, bonsai_status st);

#endif
