#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int wmat__map_file(const char *path, wmat_map *out)
{
    out->addr = NULL;
    out->len = 0;
    if (wmat__fault_io()) return wmat_set_error(WMAT_ERR_IO, "%s: cannot open: injected I/O fault", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return wmat_set_error(WMAT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return wmat_set_error(WMAT_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return wmat_set_error(WMAT_ERR_IO, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return WMAT_OK;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) return wmat_set_error(WMAT_ERR_IO, "%s: cannot map: %s", path, strerror(e));
    out->addr = p;
    out->len = (size_t)st.st_size;
    return WMAT_OK;
}

void wmat__unmap(wmat_map *m)
{
    if (m->addr) munmap(m->addr, m->len);
    m->addr = NULL;
    m->len = 0;
}

void wmat__pages_release(const void *addr, size_t len, int outward)
{
    if (!addr || !len) return;
    const long pg = sysconf(_SC_PAGESIZE);
    const uintptr_t ps = pg > 0 ? (uintptr_t)pg : 4096u, a = (uintptr_t)addr, e = a + len;
    const uintptr_t lo = outward ? a & ~(ps - 1) : (a + ps - 1) & ~(ps - 1);
    const uintptr_t hi = outward ? (e + ps - 1) & ~(ps - 1) : e & ~(ps - 1);
    if (hi > lo) (void)madvise((void *)lo, (size_t)(hi - lo), MADV_DONTNEED);
}

void wmat__map_release(const wmat_map *m, const void *addr, size_t len)
{
    if (!m->addr || !addr || !len) return;
    const uintptr_t base = (uintptr_t)m->addr, end = base + m->len, a = (uintptr_t)addr;
    if (a < base || a >= end) return;
    /* outward: the mapping is page-aligned at its start and extends to a
     * whole page at its end, so the widened range stays inside it */
    wmat__pages_release(addr, (a + len < end ? a + len : end) - a, 1);
}

int wmat__afile_open(wmat_afile *af, const char *path)
{
    memset(af, 0, sizeof *af);
    size_t n = strlen(path) + 32;
    af->path = wmat__strdup(path);
    af->tmp_path = wmat__malloc(n);
    if (!af->path || !af->tmp_path) {
        wmat__free(af->path);
        wmat__free(af->tmp_path);
        af->path = af->tmp_path = NULL;
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", path);
    }
    snprintf(af->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    if (wmat__fault_io()) {
        wmat__afile_abort(af);
        return wmat_set_error(WMAT_ERR_IO, "%s: cannot create: injected I/O fault", path);
    }
    af->f = fopen(af->tmp_path, "wb");
    if (!af->f) {
        int e = errno;
        wmat__afile_abort(af);
        return wmat_set_error(WMAT_ERR_IO, "%s: cannot create: %s", path, strerror(e));
    }
    return WMAT_OK;
}

int wmat__afile_write(wmat_afile *af, const void *data, size_t n)
{
    if (af->failed) return WMAT_ERR_IO;
    if (n == 0) return WMAT_OK;
    if (wmat__fault_io() || fwrite(data, 1, n, af->f) != n) {
        af->failed = 1;
        return wmat_set_error(WMAT_ERR_IO, "%s: write failed: %s", af->path,
                              errno ? strerror(errno) : "injected I/O fault");
    }
    af->written += n;
#ifdef __linux__
    /* Write-behind: start the write-back of every 64 MiB written at once
     * (asynchronously; no fsync until the commit), so that a large output
     * reaches the disk while the producer computes the next tensors, and
     * the commit's fsync has little left to wait for. */
    if (af->written - af->kicked >= ((uint64_t)64 << 20) && fflush(af->f) == 0) {
        sync_file_range(fileno(af->f), (off_t)af->kicked, (off_t)(af->written - af->kicked), SYNC_FILE_RANGE_WRITE);
        af->kicked = af->written;
    }
#endif
    return WMAT_OK;
}

int wmat__afile_pad(wmat_afile *af, size_t alignment)
{
    static const unsigned char zeros[256];
    size_t pad = (size_t)((alignment - af->written % alignment) % alignment);
    while (pad) {
        size_t k = pad < sizeof zeros ? pad : sizeof zeros;
        int rc = wmat__afile_write(af, zeros, k);
        if (rc) return rc;
        pad -= k;
    }
    return WMAT_OK;
}

int wmat__afile_commit(wmat_afile *af)
{
    int rc = WMAT_OK;
    if (af->failed) {
        rc = WMAT_ERR_IO;
    } else if (wmat__fault_io() || fflush(af->f) != 0 || fsync(fileno(af->f)) != 0) {
        rc = wmat_set_error(WMAT_ERR_IO, "%s: cannot flush: %s", af->path,
                            errno ? strerror(errno) : "injected I/O fault");
    }
    if (fclose(af->f) != 0 && rc == WMAT_OK)
        rc = wmat_set_error(WMAT_ERR_IO, "%s: cannot close: %s", af->path, strerror(errno));
    af->f = NULL;
    if (rc == WMAT_OK && rename(af->tmp_path, af->path) != 0)
        rc = wmat_set_error(WMAT_ERR_IO, "%s: cannot rename from %s: %s", af->path, af->tmp_path,
                            strerror(errno));
    if (rc != WMAT_OK) unlink(af->tmp_path);
    wmat__free(af->path);
    wmat__free(af->tmp_path);
    af->path = af->tmp_path = NULL;
    return rc;
}

void wmat__afile_abort(wmat_afile *af)
{
    if (af->f) fclose(af->f);
    af->f = NULL;
    if (af->tmp_path) unlink(af->tmp_path);
    wmat__free(af->path);
    wmat__free(af->tmp_path);
    af->path = af->tmp_path = NULL;
}

int wmat_read_file(const char *path, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    wmat_map m;
    int rc = wmat__map_file(path, &m);
    if (rc) return rc;
    char *buf = wmat__malloc(m.len + 1);
    if (!buf) {
        wmat__unmap(&m);
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, m.len + 1);
    }
    if (m.len) memcpy(buf, m.addr, m.len);
    buf[m.len] = '\0';
    *len = m.len;
    *out = buf;
    wmat__unmap(&m);
    return WMAT_OK;
}

int wmat_read_tokens_u16(const char *path, int32_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    wmat_map m;
    int rc = wmat__map_file(path, &m);
    if (rc) return rc;
    if (m.len % 2) {
        size_t len = m.len; /* wmat__unmap clears it */
        wmat__unmap(&m);
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: token file has an odd size (%zu bytes); expected little-endian uint16 ids", path, len);
    }
    size_t cnt = m.len / 2;
    int32_t *ids = wmat__malloc((cnt ? cnt : 1) * sizeof *ids);
    if (!ids) {
        wmat__unmap(&m);
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for %zu tokens", path, cnt);
    }
    const unsigned char *p = m.addr;
    for (size_t i = 0; i < cnt; i++) ids[i] = (int32_t)(p[2 * i] | (p[2 * i + 1] << 8));
    wmat__unmap(&m);
    *out = ids;
    *n = cnt;
    return WMAT_OK;
}

int wmat_write_tokens_u16(const char *path, const int32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] > 65535)
            return wmat_set_error(WMAT_ERR_INVALID, "%s: token id %d at index %zu does not fit uint16", path, ids[i], i);
    wmat_afile af;
    int rc = wmat__afile_open(&af, path);
    if (rc) return rc;
    unsigned char buf[4096];
    size_t k = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        buf[k++] = (unsigned char)(ids[i] & 0xff);
        buf[k++] = (unsigned char)(ids[i] >> 8);
        if (k == sizeof buf || i + 1 == n) {
            rc = wmat__afile_write(&af, buf, k);
            k = 0;
        }
    }
    if (rc) {
        wmat__afile_abort(&af);
        return rc;
    }
    return wmat__afile_commit(&af);
}

int wmat__make_dirs(const char *dir)
{
    char *p = wmat__strdup(dir);
    if (!p) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", dir);
    int rc = WMAT_OK;
    for (char *q = p + 1;; q++) {
        if (*q != '/' && *q) continue;
        char c = *q;
        *q = '\0';
        struct stat st;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) {
            rc = wmat_set_error(WMAT_ERR_IO, "%s: cannot create directory %s: %s", dir, p, strerror(errno));
            break;
        }
        if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) {
            rc = wmat_set_error(WMAT_ERR_IO, "%s: %s exists and is not a directory", dir, p);
            break;
        }
        *q = c;
        if (!c) break;
    }
    wmat__free(p);
    return rc;
}

char *wmat__path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = wmat__malloc(a + b + 2);
    if (!p) {
        wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", dir);
        return NULL;
    }
    memcpy(p, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

bool wmat__is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}
