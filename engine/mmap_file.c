/*
 * mmap_file.c - see mmap_file.h. POSIX mmap of a regular file, MAP_PRIVATE + PROT_READ, so
 * the weights are shared with the page cache and never copied unless a loader chooses to.
 */
#include "mmap_file.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const unsigned char empty_file_byte = 0;

qv_status qv_mmap_open(const char *path, qv_mmap_file *m, qv_error *err) {
    memset(m, 0, sizeof(*m));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return qv_errorf(err, errno == ENOENT ? QV_ERR_NOT_FOUND : QV_ERR_IO, "%s: %s", path,
                         strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return qv_errorf(err, QV_ERR_IO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return qv_errorf(err, QV_ERR_IO, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        m->data = &empty_file_byte;
        return QV_OK;
    }
    size_t len = (size_t)st.st_size;
    void *p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) return qv_errorf(err, QV_ERR_IO, "%s: mmap: %s", path, strerror(e));
    m->data = p;
    m->len = len;
    m->map_base = p;
    return QV_OK;
}

void qv_mmap_close(qv_mmap_file *m) {
    if (!m) return;
    if (m->map_base) munmap(m->map_base, m->len);
    memset(m, 0, sizeof(*m));
}
