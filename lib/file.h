/* A whole file's bytes in memory: mapped read-only, or read into a buffer. */
#ifndef BONSAI_FILE_H
#define BONSAI_FILE_H

#include "internal.h"

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

#endif
