#define _GNU_SOURCE
#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define READ_CHUNK (64u << 20)

static bonsai_status read_all(int fd, const char *path, uint64_t size, bonsai_progress_fn progress,
                              void *user_data, uint8_t *buf)
{
    uint64_t done = 0;
    while (done < size) {
        uint64_t want = size - done < READ_CHUNK ? size - done : READ_CHUNK;
        ssize_t n = pread(fd, buf + done, (size_t)want, (off_t)done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0)
            return bsi_fail(BONSAI_ERR_IO, "%s: read failed at offset %" PRIu64 ": %s", path, done,
                            strerror(errno));
        if (n == 0)
            return bsi_fail(BONSAI_ERR_TRUNCATED,
                            "%s: the file shrank while being read (%" PRIu64 " of %" PRIu64
                            " bytes)",
                            path, done, size);
        done += (uint64_t)n;
        if (progress && !progress(0.9f * (float)done / (float)size, user_data))
            return bsi_fail(BONSAI_ERR_ABORTED, "%s: loading aborted by the progress callback",
                            path);
    }
    return BONSAI_OK;
}

bonsai_status bsi_file_open(const char *path, bool use_mmap, bonsai_progress_fn progress,
                            void *user_data, bsi_file *out)
{
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return bsi_fail(BONSAI_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return bsi_fail(BONSAI_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return bsi_fail(BONSAI_ERR_IO, "%s: not a regular file", path);
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size == 0) {
        close(fd);
        return bsi_fail(BONSAI_ERR_TRUNCATED, "%s: the file is empty", path);
    }
    if (size > SIZE_MAX) {
        close(fd);
        return bsi_fail(BONSAI_ERR_NO_MEMORY, "%s: too large for this address space", path);
    }
    if (use_mmap) {
        void *p = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p != MAP_FAILED) {
            close(fd);
            out->data = p;
            out->size = size;
            out->mapped = true;
            return BONSAI_OK;
        }
        bsi_log(BONSAI_LOG_WARN, "%s: mmap failed (%s); reading the file instead", path,
                strerror(errno));
    }
    uint8_t *buf = bsi_malloc((size_t)size);
    if (!buf) {
        close(fd);
        return bsi_fail(BONSAI_ERR_NO_MEMORY, "%s: cannot allocate %" PRIu64 " bytes to read it",
                        path, size);
    }
    bonsai_status s = read_all(fd, path, size, progress, user_data, buf);
    close(fd);
    if (s) {
        free(buf);
        return s;
    }
    out->data = buf;
    out->size = size;
    return BONSAI_OK;
}

void bsi_file_close(bsi_file *f)
{
    if (!f || !f->data) return;
    if (f->mapped)
        munmap((void *)f->data, (size_t)f->size);
    else
        free((void *)f->data);
    f->data = NULL;
}

bonsai_status bsi_atomic_file_open(bsi_atomic_file *af, const char *path)
{
    memset(af, 0, sizeof *af);
    af->path = path;
    af->tmp = bsi_malloc(strlen(path) + 16);
    if (!af->tmp) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    sprintf(af->tmp, "%s.tmp-XXXXXX", path);
    int fd = mkstemp(af->tmp);
    if (fd >= 0) { /* mkstemp makes it private; give it the permissions of a normal file */
        mode_t mask = umask(0);
        umask(mask);
        fchmod(fd, 0666 & ~mask);
    }
    if (fd < 0 || !(af->f = fdopen(fd, "wb"))) {
        bonsai_status st =
            bsi_fail(BONSAI_ERR_IO, "%s: cannot create: %s", af->tmp, strerror(errno));
        if (fd >= 0) {
            close(fd);
            remove(af->tmp);
        }
        free(af->tmp);
        af->tmp = NULL;
        return st;
    }
    return BONSAI_OK;
}

bonsai_status bsi_atomic_file_close(bsi_atomic_file *af, bonsai_status st)
{
    if (!af->f) return st;
    if (fclose(af->f) != 0 && !st) st = bsi_fail(BONSAI_ERR_IO, "%s: write failed", af->path);
    af->f = NULL;
    if (!st && rename(af->tmp, af->path) != 0)
        st = bsi_fail(BONSAI_ERR_IO, "%s: cannot rename into place: %s", af->path, strerror(errno));
    if (st) remove(af->tmp);
    free(af->tmp);
    af->tmp = NULL;
    return st;
}
