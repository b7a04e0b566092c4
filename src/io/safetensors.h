/* safetensors files: a validating reader and an atomic writer (private).
 *
 * Format: u64 little-endian header length N, N bytes of JSON
 *   {"__metadata__": {"k": "v", ...},
 *    "NAME": {"dtype": "F32", "shape": [d0, ...], "data_offsets": [begin, end]}, ...}
 * then the data; offsets are relative to byte 8 + N.
 *
 * The reader treats every file as hostile: once wmat__st_open succeeds,
 * every tensor's byte range lies inside the mapping and holds exactly
 * nelem x dtype-size bytes, names are unique, and the shape product did not
 * overflow. Users (HF models, packed quantized formats, PEFT adapters) can
 * then use `data` without further bounds checks.
 */
#ifndef WMAT_SAFETENSORS_H
#define WMAT_SAFETENSORS_H

#include "../core/internal.h"

/* Larger than any real header (a 70B model's is about 100 KB); the reference
 * implementation uses the same cap. */
#define WMAT_ST_MAX_HEADER ((uint64_t)100000000)
/* safetensors allows any rank; wmat keeps shapes in a fixed array. */
#define WMAT_ST_MAX_DIMS 8

/* The dtypes of the safetensors specification. */
typedef enum {
    WMAT_ST_BOOL = 0,
    WMAT_ST_U8, WMAT_ST_I8, WMAT_ST_F8_E5M2, WMAT_ST_F8_E4M3, WMAT_ST_F8_E8M0,
    WMAT_ST_I16, WMAT_ST_U16, WMAT_ST_F16, WMAT_ST_BF16,
    WMAT_ST_I32, WMAT_ST_U32, WMAT_ST_F32,
    WMAT_ST_I64, WMAT_ST_U64, WMAT_ST_F64, WMAT_ST_C64,
    WMAT_ST_F4, WMAT_ST_F6_E2M3, WMAT_ST_F6_E3M2,
    WMAT_ST_DTYPE_COUNT
} wmat_st_dtype;

/* "F32" -> WMAT_ST_F32; -1 if not a safetensors dtype. */
int wmat__st_dtype_from_name(const char *name);
const char *wmat__st_dtype_name(wmat_st_dtype d);
/* Bits per element (4 and 6 for the packed float types). */
int wmat__st_dtype_bits(wmat_st_dtype d);
/* The wmat dtype stored the same way (F32, F16, BF16, I32, U8), else -1. */
int wmat__st_to_wmat_dtype(wmat_st_dtype d);
/* The safetensors dtype of a wmat dtype; -1 for the ggml block types, which
 * have no safetensors equivalent. */
int wmat__st_from_wmat_dtype(wmat_dtype d);

/* One tensor of a parsed file. Pointers stay valid until wmat__st_close. */
typedef struct {
    const char *name;
    wmat_st_dtype dtype;
    int ndim; /* 0 for a scalar (one element) */
    int64_t shape[WMAT_ST_MAX_DIMS];
    uint64_t nelem;
    uint64_t begin, end; /* data_offsets, relative to the data section */
    size_t nbytes;       /* end - begin == nelem * bits / 8 */
    const void *data;    /* into the mapping (read-only); unaligned in general */
} wmat_st_tensor;

typedef struct {
    const char *key, *value;
} wmat_st_meta;

typedef struct {
    char *path;
    wmat_map map;           /* the whole file (addr NULL once taken) */
    uint64_t data_start;    /* 8 + header length */
    wmat_st_tensor *tensors; /* in header order */
    int n_tensors;
    int *by_name;           /* indices sorted by name, for lookups */
    wmat_st_meta *meta;     /* __metadata__, in header order */
    int n_meta;
    char *strings;          /* storage of names, keys and values */
} wmat_st_file;

/* Map and validate `path`. On success *out is a new file (free with
 * wmat__st_close). Errors are WMAT_ERR_IO (cannot open/map) or
 * WMAT_ERR_FORMAT ("PATH: problem (tensor NAME)"). */
int wmat__st_open(wmat_st_file **out, const char *path);
/* Validate an in-memory image (the caller keeps `buf` alive as long as the
 * result; map.addr stays NULL, so nothing is unmapped on close). `what`
 * names the source in messages. Used by wmat__st_open and by fuzzers. */
int wmat__st_parse(wmat_st_file **out, const void *buf, size_t len, const char *what);
void wmat__st_close(wmat_st_file *f);

/* Tensor by name, NULL if absent. O(log n). */
const wmat_st_tensor *wmat__st_find(const wmat_st_file *f, const char *name);
/* Value of a __metadata__ key, NULL if absent. */
const char *wmat__st_meta_get(const wmat_st_file *f, const char *key);
/* Hand the mapping over (to wmat__model_add_map, say) so that tensor data
 * outlives the file object; the table itself stays usable until close. */
void wmat__st_take_map(wmat_st_file *f, wmat_map *out);

/* ---- writing */

struct wmat_st_entry;
/* Produce an entry's bytes into dst (nbytes of it). Return WMAT_OK or an
 * error status with the message set. */
typedef int (*wmat_st_fill_fn)(void *user, const struct wmat_st_entry *e, void *dst);

/* One tensor to write: either `data` (nbytes = nelem x dtype size, copied
 * as is) or `fill`, called once with a scratch buffer of that size, which
 * lets a caller convert or permute one tensor at a time. */
typedef struct wmat_st_entry {
    const char *name;
    wmat_st_dtype dtype;
    int ndim;
    int64_t shape[WMAT_ST_MAX_DIMS];
    const void *data;
    wmat_st_fill_fn fill;
    void *user;
    const wmat_map *release; /* `data` lies in this private file mapping: its pages leave the
                                resident set once written (out of core, docs/SCALING.md) */
} wmat_st_entry;

/* Write entries and __metadata__ (n_meta key/value pairs, may be 0) as a
 * safetensors file the way the reference implementation does: the data
 * ordered by element size (largest first, so every tensor is aligned to its
 * element size) then by name, header keys in data order after
 * "__metadata__", the header padded with spaces to a multiple of 8.
 * Duplicate or empty names are WMAT_ERR_INVALID.
 *
 * wmat__st_write commits `path` atomically. wmat__st_write_afile writes into
 * an already open atomic file and leaves the commit (or abort) to the caller,
 * so that a multi-file save can commit only once every file is complete. */
int wmat__st_write(const char *path, const wmat_st_entry *entries, int n, const wmat_st_meta *meta,
                   int n_meta);
int wmat__st_write_afile(wmat_afile *af, const wmat_st_entry *entries, int n, const wmat_st_meta *meta,
                         int n_meta);

#endif
