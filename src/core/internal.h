/* Private helpers shared by all modules (never installed). */
#ifndef WMAT_INTERNAL_H
#define WMAT_INTERNAL_H

#include "wmat.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WMAT_ALIGN 64

/* Allocation goes through these so that the fault-injection build can make
 * the n-th allocation fail (docs/FUZZING.md). */
void *wmat__malloc(size_t n);
void *wmat__calloc(size_t n, size_t size);
void *wmat__realloc(void *p, size_t n);
void *wmat__aligned_alloc(size_t n); /* WMAT_ALIGN-aligned, zeroed; free with wmat__free */
void wmat__free(void *p);
char *wmat__strdup(const char *s);

/* Fault injection: when armed, the countdown-th allocation or I/O call fails.
 * Compiled in only with WMAT_FAULT_INJECTION; otherwise these are no-ops. */
void wmat__fault_arm(long alloc_countdown, long io_countdown);
long wmat__fault_alloc_calls(void);
long wmat__fault_io_calls(void);
bool wmat__fault_io(void); /* true: this I/O call should fail */

/* Overflow-checked size arithmetic: return false on overflow. */
static inline bool wmat__mul_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a != 0 && b > UINT64_MAX / a) return false;
    *out = a * b;
    return true;
}
static inline bool wmat__add_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    if (b > UINT64_MAX - a) return false;
    *out = a + b;
    return true;
}

/* ---- files */

/* A read-only memory mapping of a whole file. */
typedef struct {
    void *addr;
    size_t len;
} wmat_map;

/* Map `path` read-only. Empty files map to addr == NULL, len == 0. */
int wmat__map_file(const char *path, wmat_map *out);
void wmat__unmap(wmat_map *m);
/* Drop the pages of [addr, addr + len) that lie in map m from the process's
 * resident set (madvise MADV_DONTNEED, widened to whole pages and clamped to
 * the mapping). Only for wmat__map_file's mappings: they are private and
 * read-only, so nothing is lost; a later read faults the bytes in again from
 * the page cache or the file. Does nothing when the range is not inside m.
 * What keeps a streaming command's resident set at one block of weights
 * (docs/SCALING.md, "Out of core"). */
void wmat__map_release(const wmat_map *m, const void *addr, size_t len);
/* The same on any range of a read-only private mapping, without the
 * clamping: outward drops every page the range touches, inward only the
 * pages wholly inside it (what a thread may drop while others still read
 * the pages its range shares with theirs). */
void wmat__pages_release(const void *addr, size_t len, int outward);

/* Atomic output: data goes to "<path>.tmp.<pid>" in the same directory and
 * is renamed over `path` only by wmat__afile_commit after fsync. */
typedef struct {
    FILE *f;
    char *path;
    char *tmp_path;
    int failed;
    uint64_t written;
    uint64_t kicked; /* bytes handed to the kernel's write-back so far (wmat__afile_write) */
} wmat_afile;

int wmat__afile_open(wmat_afile *af, const char *path);
int wmat__afile_write(wmat_afile *af, const void *data, size_t n);
int wmat__afile_pad(wmat_afile *af, size_t alignment); /* zero bytes up to a multiple */
int wmat__afile_commit(wmat_afile *af);
void wmat__afile_abort(wmat_afile *af); /* removes the temporary, keeps `path` */

/* "dir/name", malloc'd; NULL with the error set when out of memory. */
char *wmat__path_join(const char *dir, const char *name);
/* True for an existing regular file (links followed). */
bool wmat__is_file(const char *path);
/* mkdir -p: create dir and its parents; existing directories are fine. */
int wmat__make_dirs(const char *dir);

/* Current time in seconds (monotonic). */
double wmat__now(void);

/* True if every value is finite; *bad_index gets the first non-finite one. */
bool wmat__all_finite(const float *x, size_t n, size_t *bad_index);

/* ggml block quantization (src/core/ggml_quants.c), bit-exact with ggml's
 * reference (quantize_row_q8_0_ref / q4_0_ref). k must be a multiple of 32. */
void wmat__quantize_row_q8_0(const float *x, void *y, int64_t k);
void wmat__dequantize_row_q8_0(const void *x, float *y, int64_t k);
void wmat__quantize_row_q4_0(const float *x, void *y, int64_t k);
void wmat__dequantize_row_q4_0(const void *x, float *y, int64_t k);

/* ggml's other block types (src/core/ggml_kquants.c): the ggml type id of
 * a dtype (-1: not one of them) and back; dequantize n values (a multiple
 * of the block size); quantize (ggml's reference rule for Q4_1, Q5_0 and
 * Q5_1, simple closed-form scales for the others). Both return WMAT_ERR_*
 * without setting a message. */
int wmat__ggml_block_type(wmat_dtype dt);
int wmat__ggml_block_dtype(int ggml_type);
int wmat__ggml_block_can_quantize(wmat_dtype dt);
int wmat__ggml_block_dequant(wmat_dtype dt, const void *src, float *dst, int64_t n);
int wmat__ggml_block_quant(wmat_dtype dt, const float *src, void *dst, int64_t n);
/* Rows (nrows, ncols) into ggml blocks; qw (ncols, or NULL): per-input
 * importance (an imatrix) for the K-quants' weighted scale search
 * (ggml_kquants.c); other types ignore it. */
int wmat__ggml_quant_rows(wmat_dtype dt, const float *x, void *dst, int64_t nrows, int64_t ncols, const float *qw);
/* One K-quant super-block (Q2_K..Q6_K) in three steps, for quantizers that
 * choose the values themselves (GPTQ): fit writes the block's header (the
 * searched sub-block scales/mins and their codes; qw NULL: llama.cpp's
 * reference rule) and the grids; code(i, x) puts value i on its
 * sub-block's grid and returns its dequantized value; pack writes the
 * codes. Value of code l of sub-block j: step[j] l - off[j]. */
typedef struct {
    wmat_dtype dt;
    int nsub, sub, qlo, qhi; /* sub-blocks, their length, code range */
    float step[16], off[16];
    uint8_t L[256]; /* codes - qlo */
} wmat_kfit;
int wmat__kq_fit(wmat_dtype dt, const float *x, const float *qw, void *block, wmat_kfit *f);
float wmat__kq_code(wmat_kfit *f, int i, float x);
void wmat__kq_pack(const wmat_kfit *f, void *block);
/* Q4_K / Q5_K: the 6-bit scale and min of sub-block j (0..7) from the
 * super-block's 12 packed bytes q: j < 4 in the low 6 bits of bytes j and
 * j+4; j >= 4 split between the nibbles of byte j+4 and the top 2 bits of
 * bytes j-4 and j. Inline: the decode kernels call it per sub-block. */
static inline void wmat__k4_scale_min(int j, const unsigned char *q, int *sc, int *mn)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

#endif
