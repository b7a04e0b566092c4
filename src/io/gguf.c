/* GGUF v2/v3 reader and writer for LLaMA-architecture models
 * (docs/FORMATS.md, "GGUF").
 *
 * The reader treats the file as hostile: it is memory-mapped, and every
 * count, length, shape, offset and size is checked against the mapping
 * before anything is read or allocated, so allocations never exceed what
 * the file could describe. Tensors keep their stored type and point into the
 * mapping; wmat_model_materialize converts them later. GGUF's rotary layout
 * is wmat's own (interleaved pairs), so nothing is permuted.
 *
 * The writer produces what llama.cpp's loader expects: tensors in order,
 * each at a 32-byte aligned offset and padded, and the SentencePiece
 * vocabulary in GGUF's spelling (U+2581 for spaces, typed tokens). */
#include "model_internal.h"

#include <stdlib.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define GG_DEFAULT_ALIGNMENT 32u
/* Far above any real LLaMA file (3 + 9 * layers tensors, a few dozen keys);
 * they keep hostile counts from turning into long loops or big tables. */
#define GG_MAX_TENSORS 65536u
#define GG_MAX_KV 65536u
#define GG_MAX_DIMS 4

/* ---------------------------------------------------------------- types */

enum {
    GG_U8, GG_I8, GG_U16, GG_I16, GG_U32, GG_I32, GG_F32, GG_BOOL, GG_STR, GG_ARR, GG_U64, GG_I64, GG_F64,
    GG_NVTYPES
};
static const uint8_t g_vsize[GG_NVTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
static const char *const g_vname[GG_NVTYPES] = {"u8",     "i8",    "u16", "i16", "u32", "i32", "f32",
                                                "bool",   "string", "array", "u64", "i64", "f64"};

/* ggml tensor types: the ones wmat stores, and names of the others for
 * messages (a known type is valid GGUF that wmat does not read; anything else
 * is a malformed file). Numbers from ggml.h's enum ggml_type. */
enum { GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q8_0 = 8, GGML_BF16 = 30 };
static const struct {
    uint32_t ggml;
    wmat_dtype dt;
} g_stored[] = {{GGML_F32, WMAT_F32}, {GGML_F16, WMAT_F16}, {GGML_Q4_0, WMAT_Q4_0}, {GGML_Q8_0, WMAT_Q8_0}, {GGML_BF16, WMAT_BF16}};
static const char *const g_ggml_names[40] = {
    [3] = "Q4_1",     [6] = "Q5_0",   [7] = "Q5_1",    [9] = "Q8_1",    [10] = "Q2_K",   [11] = "Q3_K",
    [12] = "Q4_K",    [13] = "Q5_K",  [14] = "Q6_K",   [15] = "Q8_K",   [16] = "IQ2_XXS", [17] = "IQ2_XS",
    [18] = "IQ3_XXS", [19] = "IQ1_S", [20] = "IQ4_NL", [21] = "IQ3_S",  [22] = "IQ2_S",  [23] = "IQ4_XS",
    [24] = "I8",      [25] = "I16",   [26] = "I32",    [27] = "I64",    [28] = "F64",    [29] = "IQ1_M",
    [34] = "TQ1_0",   [35] = "TQ2_0", [39] = "MXFP4",
};

/* llama_ftype values recorded in general.file_type (a K-quant written for
 * every matrix is llama.cpp's "_S" mix of that type). */
static uint32_t file_type_of(wmat_dtype dt)
{
    switch (dt) {
    case WMAT_F16: return 1;
    case WMAT_Q4_0: return 2;
    case WMAT_Q4_1: return 3;
    case WMAT_Q8_0: return 7;
    case WMAT_Q5_0: return 8;
    case WMAT_Q5_1: return 9;
    case WMAT_Q2_K: return 10;
    case WMAT_Q3_K: return 11;
    case WMAT_Q4_K: return 14;
    case WMAT_Q5_K: return 16;
    case WMAT_Q6_K: return 18;
    case WMAT_IQ4_NL: return 25;
    case WMAT_IQ4_XS: return 30;
    case WMAT_BF16: return 32;
    default: return 0;
    }
}

/* llama.cpp's type for a matrix whose rows are no multiple of 256
 * (llama_tensor_get_type's fallback): mix4m's ffn_down has 704 inputs. */
static wmat_dtype block_fallback(wmat_dtype dt)
{
    switch (dt) {
    case WMAT_Q2_K:
    case WMAT_Q3_K:
    case WMAT_IQ4_XS: return WMAT_IQ4_NL;
    case WMAT_Q4_K: return WMAT_Q5_0;
    case WMAT_Q5_K: return WMAT_Q5_1;
    case WMAT_Q6_K: return WMAT_Q8_0;
    default: return WMAT_F16;
    }
}

static uint32_t ggml_type_of(wmat_dtype dt)
{
    for (size_t i = 0; i < sizeof g_stored / sizeof g_stored[0]; i++)
        if (g_stored[i].dt == dt) return g_stored[i].ggml;
    if (wmat__ggml_block_type(dt) >= 0) return (uint32_t)wmat__ggml_block_type(dt);
    return UINT32_MAX;
}

/* GGUF tensor names of the layer roles, "blk.N.<suffix>.weight". */
static const char *const g_blk_suffix[WMAT_W_LAYER_COUNT] = {
    [WMAT_W_ATTN_NORM] = "attn_norm", [WMAT_W_Q] = "attn_q",       [WMAT_W_K] = "attn_k",
    [WMAT_W_V] = "attn_v",            [WMAT_W_O] = "attn_output",  [WMAT_W_FFN_NORM] = "ffn_norm",
    [WMAT_W_GATE] = "ffn_gate",       [WMAT_W_DOWN] = "ffn_down",  [WMAT_W_UP] = "ffn_up",
};
#define GG_TOK_EMBD "token_embd.weight"
#define GG_OUT_NORM "output_norm.weight"
#define GG_OUTPUT "output.weight"

static const char g_space_mark[3] = {'\xe2', '\x96', '\x81'}; /* U+2581, SentencePiece's space */

/* Little-endian loads and stores, independent of the host's byte order. */
static uint32_t ld32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t ld64(const unsigned char *p) { return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32; }
static void st32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void st64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static int host_is_little_endian(void)
{
    const uint32_t one = 1;
    unsigned char c;
    memcpy(&c, &one, 1);
    return c == 1;
}

/* A name from the file, made safe to print: at most 64 bytes, anything
 * outside printable ASCII shown as '?'. */
static const char *printable(char *dst, size_t cap, const unsigned char *s, uint64_t n)
{
    size_t k = 0;
    for (uint64_t i = 0; i < n && i < 64 && k + 4 < cap; i++) dst[k++] = (s[i] >= 0x20 && s[i] < 0x7f) ? (char)s[i] : '?';
    if (n > 64 && k + 4 <= cap) {
        memcpy(dst + k, "...", 3);
        k += 3;
    }
    dst[k] = '\0';
    return dst;
}

/* ---------------------------------------------------------------- reader */

typedef struct {
    const unsigned char *key;
    size_t key_len;
    uint32_t type;  /* value type */
    uint32_t atype; /* element type, for arrays */
    uint64_t n;     /* element count, for arrays */
    size_t val;     /* file offset of the value (of the first element, for arrays) */
} gg_kv;

typedef struct {
    const unsigned char *name;
    size_t name_len;
    int ndim;
    uint64_t ne[GG_MAX_DIMS]; /* ne[0] fastest */
    uint32_t type;
    uint64_t offset; /* relative to the data section */
    wmat_dtype dt;
    size_t nbytes;
    char wname[WMAT_NAME_MAX]; /* wmat's name for it */
} gg_tensor;

typedef struct {
    const char *path;
    const unsigned char *b; /* the mapping */
    size_t len, pos;
    gg_kv *kv; /* sorted by key after parsing */
    uint64_t n_kv;
    gg_tensor *t;
    uint64_t n_t;
    uint64_t alignment;
    uint64_t data_start;
} gg_file;

static int need(gg_file *g, uint64_t n, const char *what)
{
    if (n > g->len - g->pos)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: truncated: %s needs %llu bytes at offset %zu, the file has %zu left",
                              g->path, what, (unsigned long long)n, g->pos, g->len - g->pos);
    return WMAT_OK;
}

static int rd_u32(gg_file *g, uint32_t *v, const char *what)
{
    int rc = need(g, 4, what);
    if (rc) return rc;
    *v = ld32(g->b + g->pos);
    g->pos += 4;
    return WMAT_OK;
}

static int rd_u64(gg_file *g, uint64_t *v, const char *what)
{
    int rc = need(g, 8, what);
    if (rc) return rc;
    *v = ld64(g->b + g->pos);
    g->pos += 8;
    return WMAT_OK;
}

/* A GGUF string (u64 length, bytes); *s points into the mapping. */
static int rd_str(gg_file *g, const unsigned char **s, uint64_t *n, const char *what)
{
    int rc = rd_u64(g, n, what);
    if (!rc) rc = need(g, *n, what);
    if (rc) return rc;
    *s = g->b + g->pos;
    g->pos += (size_t)*n;
    return WMAT_OK;
}

/* Step over a value, checking that all of it lies inside the file. */
static int parse_value(gg_file *g, gg_kv *kv, const char *what)
{
    if (kv->type >= GG_NVTYPES)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: %s has unknown value type %u", g->path, what, kv->type);
    kv->val = g->pos;
    if (kv->type == GG_STR) {
        const unsigned char *s;
        uint64_t n;
        return rd_str(g, &s, &n, what);
    }
    if (kv->type != GG_ARR) {
        int rc = need(g, g_vsize[kv->type], what);
        if (!rc) g->pos += g_vsize[kv->type];
        return rc;
    }
    int rc = rd_u32(g, &kv->atype, what);
    if (!rc) rc = rd_u64(g, &kv->n, what);
    if (rc) return rc;
    kv->val = g->pos;
    if (kv->atype >= GG_NVTYPES)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: %s is an array of unknown value type %u", g->path, what, kv->atype);
    if (kv->atype == GG_ARR)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: %s is an array of arrays (GGUF readers do not support nesting)",
                              g->path, what);
    if (kv->atype == GG_STR) {
        /* Each string takes at least its 8-byte length. */
        if (kv->n > (g->len - g->pos) / 8)
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: %s claims %llu strings, more than the %zu bytes left can hold",
                                  g->path, what, (unsigned long long)kv->n, g->len - g->pos);
        for (uint64_t i = 0; i < kv->n; i++) {
            const unsigned char *s;
            uint64_t n;
            rc = rd_str(g, &s, &n, what);
            if (rc) return rc;
        }
        return WMAT_OK;
    }
    uint64_t bytes;
    if (!wmat__mul_ok(kv->n, g_vsize[kv->atype], &bytes) || bytes > g->len - g->pos)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: %s claims %llu elements of %s, more than the %zu bytes left can hold",
                              g->path, what, (unsigned long long)kv->n, g_vname[kv->atype], g->len - g->pos);
    g->pos += (size_t)bytes;
    return WMAT_OK;
}

static int key_cmp(const unsigned char *a, size_t an, const unsigned char *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c) return c;
    return an < bn ? -1 : an > bn;
}
static int kv_sort_cmp(const void *x, const void *y)
{
    const gg_kv *a = x, *b = y;
    return key_cmp(a->key, a->key_len, b->key, b->key_len);
}

static const gg_kv *kv_find(const gg_file *g, const char *key)
{
    size_t lo = 0, hi = (size_t)g->n_kv, n = strlen(key);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = key_cmp(g->kv[mid].key, g->kv[mid].key_len, (const unsigned char *)key, n);
        if (c == 0) return &g->kv[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* Integer value of a key in [lo, hi]; *found = 0 (and OK) when absent. */
static int kv_int(const gg_file *g, const char *key, int64_t lo, int64_t hi, int64_t *out, int *found)
{
    const gg_kv *kv = kv_find(g, key);
    *found = kv != NULL;
    if (!kv) return WMAT_OK;
    const unsigned char *p = g->b + kv->val;
    int64_t v;
    switch (kv->type) {
    case GG_U8: v = p[0]; break;
    case GG_I8: v = (int8_t)p[0]; break;
    case GG_U16: v = (int64_t)(p[0] | p[1] << 8); break;
    case GG_I16: v = (int16_t)(uint16_t)(p[0] | p[1] << 8); break;
    case GG_U32: v = (int64_t)ld32(p); break;
    case GG_I32: v = (int32_t)ld32(p); break;
    case GG_I64: v = (int64_t)ld64(p); break;
    case GG_U64: {
        uint64_t u = ld64(p);
        if (u > (uint64_t)INT64_MAX && hi < INT64_MAX)
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: key %s = %llu is out of range [%lld, %lld]", g->path, key,
                                  (unsigned long long)u, (long long)lo, (long long)hi);
        v = u > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)u; /* callers asking for any value treat this as "none" */
        break;
    }
    case GG_ARR:
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: key %s is an array (per-layer values); wmat reads one value for all layers",
                              g->path, key);
    default:
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: key %s has type %s, expected an integer", g->path, key, g_vname[kv->type]);
    }
    if (v < lo || v > hi)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: key %s = %lld is out of range [%lld, %lld]", g->path, key, (long long)v,
                              (long long)lo, (long long)hi);
    *out = v;
    return WMAT_OK;
}

static int kv_float(const gg_file *g, const char *key, float *out, int *found)
{
    const gg_kv *kv = kv_find(g, key);
    *found = kv != NULL;
    if (!kv) return WMAT_OK;
    const unsigned char *p = g->b + kv->val;
    if (kv->type == GG_F32) {
        uint32_t u = ld32(p);
        memcpy(out, &u, 4);
    } else if (kv->type == GG_F64) {
        uint64_t u = ld64(p);
        double d;
        memcpy(&d, &u, 8);
        *out = (float)d;
    } else {
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: key %s has type %s, expected a float", g->path, key, g_vname[kv->type]);
    }
    return WMAT_OK;
}

/* String value of a key (not NUL-terminated; points into the mapping). */
static int kv_str(const gg_file *g, const char *key, const unsigned char **s, uint64_t *n, int *found)
{
    const gg_kv *kv = kv_find(g, key);
    *found = kv != NULL;
    if (!kv) return WMAT_OK;
    if (kv->type != GG_STR)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: key %s has type %s, expected a string", g->path, key, g_vname[kv->type]);
    *n = ld64(g->b + kv->val);
    *s = g->b + kv->val + 8;
    return WMAT_OK;
}

static int str_is(const unsigned char *s, uint64_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(s, lit, (size_t)n) == 0;
}

static int parse_header(gg_file *g)
{
    if (g->len < 24)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: %zu bytes is too small for a GGUF file (the header alone is 24)", g->path, g->len);
    if (memcmp(g->b, "GGUF", 4) != 0) return wmat_set_error(WMAT_ERR_FORMAT, "%s: no GGUF magic", g->path);
    g->pos = 4;
    uint32_t version;
    uint64_t n_t, n_kv;
    int rc = rd_u32(g, &version, "the version");
    if (!rc && version == 1)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: GGUF version 1 is obsolete; wmat reads versions 2 and 3", g->path);
    if (!rc && (version < 2 || version > 3))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: unknown GGUF version %u (wmat reads 2 and 3)", g->path, version);
    if (!rc) rc = rd_u64(g, &n_t, "the tensor count");
    if (!rc) rc = rd_u64(g, &n_kv, "the key count");
    if (rc) return rc;
    /* A key takes at least 13 bytes (length, type, one-byte value), a tensor
     * info at least 33 (name length, one name byte, rank, one dim, type,
     * offset): counts beyond that cannot be real. */
    if (n_kv > GG_MAX_KV || n_kv > (g->len - g->pos) / 13)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: key count %llu is more than the file can hold", g->path,
                              (unsigned long long)n_kv);
    if (n_t > GG_MAX_TENSORS || n_t > (g->len - g->pos) / 33)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor count %llu is more than the file can hold", g->path,
                              (unsigned long long)n_t);
    g->n_kv = n_kv;
    g->n_t = n_t;

    g->kv = wmat__calloc(n_kv ? (size_t)n_kv : 1, sizeof *g->kv);
    if (!g->kv) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for %llu keys", g->path, (unsigned long long)n_kv);
    for (uint64_t i = 0; i < n_kv; i++) {
        char what[128], name[80];
        gg_kv *kv = &g->kv[i];
        const unsigned char *k;
        uint64_t kn;
        snprintf(what, sizeof what, "the name of key %llu", (unsigned long long)i);
        rc = rd_str(g, &k, &kn, what);
        if (rc) return rc;
        kv->key = k;
        kv->key_len = (size_t)kn;
        snprintf(what, sizeof what, "key '%s'", printable(name, sizeof name, k, kn));
        rc = rd_u32(g, &kv->type, what);
        if (!rc) rc = parse_value(g, kv, what);
        if (rc) return rc;
    }
    if (n_kv > 1) qsort(g->kv, (size_t)n_kv, sizeof *g->kv, kv_sort_cmp);
    for (uint64_t i = 1; i < n_kv; i++) {
        if (!kv_sort_cmp(&g->kv[i - 1], &g->kv[i])) {
            char name[80];
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: duplicate key '%s'", g->path,
                                  printable(name, sizeof name, g->kv[i].key, g->kv[i].key_len));
        }
    }

    int64_t align = GG_DEFAULT_ALIGNMENT;
    int found;
    rc = kv_int(g, "general.alignment", 1, INT32_MAX, &align, &found);
    if (rc) return rc;
    if (align & (align - 1))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: general.alignment %lld is not a power of two", g->path, (long long)align);
    g->alignment = (uint64_t)align;

    g->t = wmat__calloc(n_t ? (size_t)n_t : 1, sizeof *g->t);
    if (!g->t) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for %llu tensors", g->path, (unsigned long long)n_t);
    for (uint64_t i = 0; i < n_t; i++) {
        char what[160], name[80];
        gg_tensor *t = &g->t[i];
        const unsigned char *s;
        uint64_t sn;
        uint32_t nd;
        snprintf(what, sizeof what, "the name of tensor %llu", (unsigned long long)i);
        rc = rd_str(g, &s, &sn, what);
        if (rc) return rc;
        printable(name, sizeof name, s, sn);
        if (sn == 0 || sn >= WMAT_NAME_MAX || memchr(s, 0, (size_t)sn))
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor %llu has a bad name '%s' (%llu bytes)", g->path,
                                  (unsigned long long)i, name, (unsigned long long)sn);
        t->name = s;
        t->name_len = (size_t)sn;
        snprintf(what, sizeof what, "tensor '%s'", name);
        rc = rd_u32(g, &nd, what);
        if (rc) return rc;
        if (nd < 1 || nd > GG_MAX_DIMS)
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor '%s' has %u dimensions (1 to %d allowed)", g->path, name, nd,
                                  GG_MAX_DIMS);
        t->ndim = (int)nd;
        for (uint32_t d = 0; d < nd && !rc; d++) rc = rd_u64(g, &t->ne[d], what);
        if (!rc) rc = rd_u32(g, &t->type, what);
        if (!rc) rc = rd_u64(g, &t->offset, what);
        if (rc) return rc;
    }
    /* The data section starts at the next multiple of the alignment. */
    uint64_t ds;
    if (!wmat__add_ok((uint64_t)g->pos, g->alignment - 1, &ds))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: data section offset overflows", g->path);
    g->data_start = ds / g->alignment * g->alignment;
    return WMAT_OK;
}

/* Check a tensor's type, shape and data range against the mapping. */
static int check_tensor(gg_file *g, gg_tensor *t)
{
    char name[80];
    printable(name, sizeof name, t->name, t->name_len);
    int known = 0;
    for (size_t i = 0; i < sizeof g_stored / sizeof g_stored[0]; i++)
        if (g_stored[i].ggml == t->type) t->dt = g_stored[i].dt, known = 1;
    if (!known && t->type <= INT_MAX && wmat__ggml_block_dtype((int)t->type) >= 0)
        t->dt = (wmat_dtype)wmat__ggml_block_dtype((int)t->type), known = 1;
    if (!known) {
        if (t->type < sizeof g_ggml_names / sizeof g_ggml_names[0] && g_ggml_names[t->type])
            return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                                  "%s: tensor '%s' has ggml type %s (%u); wmat reads F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, "
                                  "Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS",
                                  g->path, name, g_ggml_names[t->type], t->type);
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor '%s' has unknown ggml type %u", g->path, name, t->type);
    }
    uint64_t n = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (t->ne[d] == 0 || t->ne[d] > (uint64_t)INT64_MAX || !wmat__mul_ok(n, t->ne[d], &n) || n > (uint64_t)INT64_MAX)
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor '%s' has a bad shape (dimension %d is %llu)", g->path, name, d,
                                  (unsigned long long)t->ne[d]);
    }
    const wmat_dtype_traits *tr = wmat_dtype_info(t->dt);
    if (t->ne[0] % (uint64_t)tr->block_size)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor '%s': row length %llu is not a multiple of the %s block size %d",
                              g->path, name, (unsigned long long)t->ne[0], tr->name, tr->block_size);
    t->nbytes = wmat_dtype_bytes(t->dt, n);
    if (t->nbytes == 0)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor '%s': size overflows", g->path, name);
    if (t->offset % g->alignment)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor '%s': offset %llu is not a multiple of the alignment %llu", g->path,
                              name, (unsigned long long)t->offset, (unsigned long long)g->alignment);
    if (g->data_start > g->len || t->offset > g->len - g->data_start || t->nbytes > g->len - g->data_start - t->offset)
        return wmat_set_error(WMAT_ERR_FORMAT,
                              "%s: tensor '%s': data (%zu bytes at offset %llu of the data section at %llu) lies outside the %zu-byte file",
                              g->path, name, t->nbytes, (unsigned long long)t->offset, (unsigned long long)g->data_start, g->len);
    return WMAT_OK;
}

/* wmat's name for a tensor: a canonical name for LLaMA roles, the GGUF name
 * for anything else (kept, so that nothing in the file silently vanishes). */
static int map_name(gg_file *g, gg_tensor *t, int n_layers)
{
    char name[WMAT_NAME_MAX];
    memcpy(name, t->name, t->name_len);
    name[t->name_len] = '\0';
    if (!strcmp(name, GG_TOK_EMBD)) return snprintf(t->wname, sizeof t->wname, "%s", WMAT_NAME_TOK_EMBD), WMAT_OK;
    if (!strcmp(name, GG_OUT_NORM)) return snprintf(t->wname, sizeof t->wname, "%s", WMAT_NAME_FINAL_NORM), WMAT_OK;
    if (!strcmp(name, GG_OUTPUT)) return snprintf(t->wname, sizeof t->wname, "%s", WMAT_NAME_CLASSIFIER), WMAT_OK;
    if (!strcmp(name, "rope_freqs.weight"))
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: tensor rope_freqs.weight (scaled RoPE) is not supported", g->path);
    if (!strncmp(name, "blk.", 4)) {
        const char *p = name + 4;
        long layer = 0;
        int digits = 0;
        while (*p >= '0' && *p <= '9' && digits < 8) layer = layer * 10 + (*p++ - '0'), digits++;
        if (digits && *p == '.') {
            p++;
            for (int w = 0; w < WMAT_W_LAYER_COUNT; w++) {
                size_t k = strlen(g_blk_suffix[w]);
                if (strncmp(p, g_blk_suffix[w], k) || strcmp(p + k, ".weight")) continue;
                if (layer >= n_layers)
                    return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor '%s' is in layer %ld but llama.block_count is %d", g->path,
                                          name, layer, n_layers);
                wmat__layer_tensor_name(t->wname, sizeof t->wname, (int)layer, (wmat_layer_weight)w);
                return WMAT_OK;
            }
        }
    }
    snprintf(t->wname, sizeof t->wname, "%s", name);
    return WMAT_OK;
}

static int wname_cmp(const void *x, const void *y)
{
    const gg_tensor *a = *(const gg_tensor *const *)x, *b = *(const gg_tensor *const *)y;
    return strcmp(a->wname, b->wname);
}

/* Two tensors with the same wmat name (the same GGUF name twice, or a GGUF
 * name and a canonical one that mean the same thing). */
static int check_duplicates(gg_file *g)
{
    if (g->n_t < 2) return WMAT_OK;
    gg_tensor **idx = wmat__malloc((size_t)g->n_t * sizeof *idx);
    if (!idx) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", g->path);
    for (uint64_t i = 0; i < g->n_t; i++) idx[i] = &g->t[i];
    qsort(idx, (size_t)g->n_t, sizeof *idx, wname_cmp);
    int rc = WMAT_OK;
    for (uint64_t i = 1; i < g->n_t && !rc; i++) {
        if (strcmp(idx[i - 1]->wname, idx[i]->wname)) continue;
        char a[80], b[80];
        printable(a, sizeof a, idx[i - 1]->name, idx[i - 1]->name_len);
        printable(b, sizeof b, idx[i]->name, idx[i]->name_len);
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: duplicate tensor '%s'%s%s%s", g->path, b, strcmp(a, b) ? " (also as '" : "",
                            strcmp(a, b) ? a : "", strcmp(a, b) ? "')" : "");
    }
    wmat__free(idx);
    return rc;
}

static const gg_tensor *find_gguf_tensor(const gg_file *g, const char *name)
{
    for (uint64_t i = 0; i < g->n_t; i++)
        if (str_is(g->t[i].name, g->t[i].name_len, name)) return &g->t[i];
    return NULL;
}

static int read_config(gg_file *g, wmat_config *c)
{
    const unsigned char *arch;
    uint64_t arch_n;
    int found, rc = kv_str(g, "general.architecture", &arch, &arch_n, &found);
    if (rc) return rc;
    if (!found) return wmat_set_error(WMAT_ERR_FORMAT, "%s: missing key general.architecture", g->path);
    if (!str_is(arch, arch_n, "llama")) {
        char a[80];
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: architecture '%s' is not supported (wmat reads llama)", g->path,
                              printable(a, sizeof a, arch, arch_n));
    }
    memset(c, 0, sizeof *c);
    static const struct {
        const char *key;
        size_t off;
        int required;
    } ints[] = {
        {"llama.embedding_length", offsetof(wmat_config, dim), 1},
        {"llama.feed_forward_length", offsetof(wmat_config, hidden_dim), 1},
        {"llama.block_count", offsetof(wmat_config, n_layers), 1},
        {"llama.attention.head_count", offsetof(wmat_config, n_heads), 1},
        {"llama.attention.head_count_kv", offsetof(wmat_config, n_kv_heads), 0},
        {"llama.context_length", offsetof(wmat_config, seq_len), 1},
        {"llama.vocab_size", offsetof(wmat_config, vocab_size), 0},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        int64_t v = 0;
        rc = kv_int(g, ints[i].key, 1, INT32_MAX, &v, &found);
        if (rc) return rc;
        if (!found && ints[i].required) return wmat_set_error(WMAT_ERR_FORMAT, "%s: missing key %s", g->path, ints[i].key);
        if (found) *(int *)((char *)c + ints[i].off) = (int)v;
    }
    if (!c->n_kv_heads) c->n_kv_heads = c->n_heads;
    c->rope_theta = 10000.0f;
    c->norm_eps = 1e-5f;
    float f;
    rc = kv_float(g, "llama.rope.freq_base", &f, &found);
    if (rc) return rc;
    if (found) c->rope_theta = f;
    rc = kv_float(g, "llama.attention.layer_norm_rms_epsilon", &f, &found);
    if (rc) return rc;
    if (found) c->norm_eps = f;

    /* What wmat's runtime cannot honour must not load as if it could. */
    const unsigned char *s;
    uint64_t sn;
    rc = kv_str(g, "llama.rope.scaling.type", &s, &sn, &found);
    if (rc) return rc;
    if (found && !str_is(s, sn, "none")) {
        char a[80];
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: RoPE scaling '%s' is not supported", g->path, printable(a, sizeof a, s, sn));
    }
    if (c->n_heads > 0 && c->n_heads <= 1024) {
        /* heads wider than the residual stream (a sliced model: key_length
         * x heads above the embedding length) */
        int64_t kl;
        rc = kv_int(g, "llama.attention.key_length", 1, 65536, &kl, &found);
        if (rc) return rc;
        if (found && kl * c->n_heads != c->dim && kl * c->n_heads <= 65536) c->attn_dim = (int)(kl * c->n_heads);
    }
    const int attn = c->attn_dim ? c->attn_dim : c->dim;
    if (c->n_heads > 0 && attn % c->n_heads == 0) {
        const int hd = attn / c->n_heads;
        static const char *const hd_keys[] = {"llama.rope.dimension_count", "llama.attention.key_length",
                                              "llama.attention.value_length"};
        for (size_t i = 0; i < 3; i++) {
            int64_t v;
            rc = kv_int(g, hd_keys[i], 0, INT32_MAX, &v, &found);
            if (rc) return rc;
            if (found && v != hd)
                return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: %s = %lld differs from the head dimension %d (not supported)",
                                      g->path, hd_keys[i], (long long)v, hd);
        }
    }
    if (!c->vocab_size) {
        const gg_kv *tok = kv_find(g, "tokenizer.ggml.tokens");
        const gg_tensor *emb = find_gguf_tensor(g, GG_TOK_EMBD);
        if (tok && tok->type == GG_ARR && tok->n > 0 && tok->n <= INT32_MAX) c->vocab_size = (int)tok->n;
        else if (emb && emb->ndim == 2 && emb->ne[1] <= INT32_MAX) c->vocab_size = (int)emb->ne[1];
        else return wmat_set_error(WMAT_ERR_FORMAT, "%s: no vocabulary size (llama.vocab_size, tokenizer.ggml.tokens or %s)",
                                   g->path, GG_TOK_EMBD);
    }
    c->tied_embeddings = find_gguf_tensor(g, GG_OUTPUT) == NULL;
    c->bos_id = 1;
    c->eos_id = 2;
    return WMAT_OK;
}

/* An array key with elements of type t1 or t2 and exactly n of them; *out
 * NULL (and OK) when absent. */
static int kv_array(const gg_file *g, const char *key, uint32_t t1, uint32_t t2, uint64_t n, const gg_kv **out)
{
    const gg_kv *kv = kv_find(g, key);
    *out = kv;
    if (!kv) return WMAT_OK;
    if (kv->type != GG_ARR || (kv->atype != t1 && kv->atype != t2))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: key %s has type %s%s%s, expected an array of %s", g->path, key,
                              g_vname[kv->type], kv->type == GG_ARR ? " of " : "", kv->type == GG_ARR ? g_vname[kv->atype] : "",
                              g_vname[t1]);
    if (kv->n != n)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: key %s has %llu entries, the vocabulary has %llu", g->path, key,
                              (unsigned long long)kv->n, (unsigned long long)n);
    return WMAT_OK;
}

/* The SentencePiece vocabulary (tokenizer.ggml.model "llama"), with
 * GGUF's U+2581 turned back into the spaces wmat's (llama2.c) tokenizer uses.
 * Other tokenizer models are left out: wmat's tokenizer is SentencePiece. */
static int load_vocab(gg_file *g, wmat_model *m)
{
    const gg_kv *tok = kv_find(g, "tokenizer.ggml.tokens");
    if (!tok) return WMAT_OK;
    if (tok->type != GG_ARR || tok->atype != GG_STR)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: key tokenizer.ggml.tokens is not an array of strings", g->path);
    const unsigned char *model;
    uint64_t model_n;
    int found, rc = kv_str(g, "tokenizer.ggml.model", &model, &model_n, &found);
    if (rc) return rc;
    if (found && !str_is(model, model_n, "llama")) return WMAT_OK;

    const wmat_config *c = &m->cfg;
    const uint64_t n = tok->n;
    if (n != (uint64_t)c->vocab_size)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %llu entries, the model's vocabulary is %d", g->path,
                              (unsigned long long)n, c->vocab_size);
    const gg_kv *sc, *ty;
    rc = kv_array(g, "tokenizer.ggml.scores", GG_F32, GG_F32, n, &sc);
    if (!rc) rc = kv_array(g, "tokenizer.ggml.token_type", GG_I32, GG_U32, n, &ty);
    if (rc) return rc;

    /* Pieces shrink when U+2581 becomes a space, so the string bytes in the
     * file bound the buffer. */
    size_t str_bytes = 0;
    {
        size_t p = tok->val;
        for (uint64_t i = 0; i < n; i++) {
            uint64_t len = ld64(g->b + p);
            str_bytes += (size_t)len;
            p += 8 + (size_t)len;
        }
    }
    const char **pieces = wmat__malloc((size_t)n * sizeof *pieces);
    size_t *lens = wmat__malloc((size_t)n * sizeof *lens);
    char *buf = wmat__malloc(str_bytes + (size_t)n);
    float *scores = wmat__calloc((size_t)n, sizeof *scores);
    int32_t *types = ty ? wmat__malloc((size_t)n * sizeof *types) : NULL;
    wmat_tokenizer *t = NULL;
    if (!pieces || !lens || !buf || !scores || (ty && !types)) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for a vocabulary of %llu tokens", g->path, (unsigned long long)n);
        goto done;
    }
    size_t p = tok->val, k = 0;
    for (uint64_t i = 0; i < n; i++) {
        size_t len = (size_t)ld64(g->b + p);
        const unsigned char *s = g->b + p + 8;
        p += 8 + len;
        pieces[i] = buf + k;
        for (size_t j = 0; j < len; j++) {
            if (j + 3 <= len && !memcmp(s + j, g_space_mark, 3)) {
                buf[k++] = ' ';
                j += 2;
            } else {
                buf[k++] = (char)s[j];
            }
        }
        lens[i] = (size_t)(buf + k - pieces[i]);
        buf[k++] = '\0';
    }
    for (uint64_t i = 0; sc && i < n; i++) {
        uint32_t u = ld32(g->b + sc->val + 4 * i);
        memcpy(&scores[i], &u, 4);
    }
    for (uint64_t i = 0; ty && i < n; i++) types[i] = (int32_t)ld32(g->b + ty->val + 4 * i);

    int64_t bos = 1, eos = 2;
    int64_t v;
    rc = kv_int(g, "tokenizer.ggml.bos_token_id", INT64_MIN, INT64_MAX, &v, &found);
    if (rc) goto done;
    if (found && v >= 0 && (uint64_t)v < n) bos = v; /* out of range (often -1): "none"; keep the default */
    rc = kv_int(g, "tokenizer.ggml.eos_token_id", INT64_MIN, INT64_MAX, &v, &found);
    if (rc) goto done;
    if (found && v >= 0 && (uint64_t)v < n) eos = v;
    if ((uint64_t)bos >= n) bos = 0;
    if ((uint64_t)eos >= n) eos = 0;
    rc = wmat_tokenizer_from_vocab(&t, (int)n, pieces, lens, scores, types, (int)bos, (int)eos);
    if (rc) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", wmat_last_error());
        rc = wmat_set_error(rc, "%s: vocabulary: %s", g->path, msg);
        goto done;
    }
    wmat_model_set_tokenizer(m, t);
    m->cfg.bos_id = (int)bos;
    m->cfg.eos_id = (int)eos;
done:
    wmat__free(pieces);
    wmat__free(lens);
    wmat__free(buf);
    wmat__free(scores);
    wmat__free(types);
    return rc;
}

int wmat__gguf_load(wmat_model **out, const char *path, const wmat_load_params *p)
{
    (void)p; /* tokenizer_path is for formats without a vocabulary; materializing is the caller's */
    *out = NULL;
    if (!host_is_little_endian())
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: GGUF tensors are little-endian; this host is not", path);
    wmat_map map;
    int rc = wmat__map_file(path, &map);
    if (rc) return rc;
    gg_file g;
    memset(&g, 0, sizeof g);
    wmat_config c;
    memset(&c, 0, sizeof c);
    g.path = path;
    g.b = map.addr;
    g.len = map.len;
    wmat_model *m = NULL;

    rc = parse_header(&g);
    for (uint64_t i = 0; i < g.n_t && !rc; i++) rc = check_tensor(&g, &g.t[i]);
    if (!rc) rc = read_config(&g, &c);
    for (uint64_t i = 0; i < g.n_t && !rc; i++) rc = map_name(&g, &g.t[i], c.n_layers);
    if (!rc) rc = check_duplicates(&g);
    if (!rc) rc = wmat__model_new(&m, &c, WMAT_FMT_GGUF, path);
    if (rc) {
        wmat__unmap(&map);
        goto done;
    }
    unsigned char *base = map.addr;
    rc = wmat__model_add_map(m, &map);
    for (uint64_t i = 0; i < g.n_t && !rc; i++) {
        const gg_tensor *t = &g.t[i];
        int64_t shape[GG_MAX_DIMS];
        for (int d = 0; d < t->ndim; d++) shape[d] = (int64_t)t->ne[t->ndim - 1 - d]; /* ggml's ne[0] is the fastest */
        rc = wmat__model_add_tensor(m, t->wname, t->dt, t->ndim, shape, base + g.data_start + t->offset, 0);
    }
    if (!rc) rc = load_vocab(&g, m);
    if (!rc) rc = wmat__model_bind(m);
    if (rc) {
        wmat_model_free(m);
        m = NULL;
    }
done:
    wmat__free(g.kv);
    wmat__free(g.t);
    *out = m;
    return rc;
}

/* ---------------------------------------------------------------- writer */

typedef struct {
    wmat_afile *af; /* NULL: only count keys */
    uint64_t n_kv;
    int rc;
} gw;

static void w_raw(gw *w, const void *data, size_t n)
{
    if (w->af && !w->rc) w->rc = wmat__afile_write(w->af, data, n);
}
static void w_u32(gw *w, uint32_t v)
{
    unsigned char b[4];
    st32(b, v);
    w_raw(w, b, 4);
}
static void w_u64(gw *w, uint64_t v)
{
    unsigned char b[8];
    st64(b, v);
    w_raw(w, b, 8);
}
static void w_f32(gw *w, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    w_u32(w, u);
}
static void w_str(gw *w, const char *s, size_t n)
{
    w_u64(w, n);
    w_raw(w, s, n);
}
static void w_key(gw *w, const char *key, uint32_t type)
{
    w->n_kv++;
    w_str(w, key, strlen(key));
    w_u32(w, type);
}
static void kv_u32(gw *w, const char *key, uint32_t v)
{
    w_key(w, key, GG_U32);
    w_u32(w, v);
}
static void kv_f32(gw *w, const char *key, float v)
{
    w_key(w, key, GG_F32);
    w_f32(w, v);
}
static void kv_string(gw *w, const char *key, const char *s)
{
    w_key(w, key, GG_STR);
    w_str(w, s, strlen(s));
}

static int is_byte_piece(const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEFabcdef";
    return n == 6 && !memcmp(s, "<0x", 3) && s[5] == '>' && s[3] && s[4] && strchr(hex, s[3]) && strchr(hex, s[4]);
}

/* Token types as llama.cpp's llama2.c converter assigns them, for
 * tokenizers that carry none (llama2.c files): 0 unknown, 1 and 2 (BOS, EOS)
 * and empty pieces control, "<0xXX>" byte, the rest normal. Byte tokens
 * must be typed for llama.cpp to turn them back into bytes. */
static int32_t rule_type(int id, const char *s, size_t n)
{
    if (id == 0) return 2;
    if (id == 1 || id == 2 || n == 0) return 3;
    if (is_byte_piece(s, n)) return 6;
    return 1;
}

/* 1 if the tokenizer knows SentencePiece types (one that is not normal or
 * undefined is enough to tell), else the types come from rule_type. */
static int has_types(const wmat_tokenizer *t, int n)
{
    for (int i = 0; i < n; i++) {
        int32_t ty = wmat_tokenizer_type(t, i);
        if (ty >= 2 && ty <= 6) return 1;
    }
    return 0;
}

static int32_t token_type(const wmat_tokenizer *t, int typed, int id, const char *s, size_t n)
{
    if (!typed) return rule_type(id, s, n);
    int32_t ty = wmat_tokenizer_type(t, id);
    return ty >= 0 && ty <= 6 ? ty : 0;
}

static void w_vocab(gw *w, const wmat_tokenizer *t, char **scratch, size_t *scratch_cap)
{
    const int n = wmat_tokenizer_vocab_size(t);
    const int typed = has_types(t, n);
    kv_string(w, "tokenizer.ggml.model", "llama");

    w_key(w, "tokenizer.ggml.tokens", GG_ARR);
    w_u32(w, GG_STR);
    w_u64(w, (uint64_t)n);
    for (int i = 0; i < n && w->af && !w->rc; i++) {
        size_t len = 0;
        const char *s = wmat_tokenizer_piece(t, i, &len);
        if (!s) s = "", len = 0;
        /* llama2.c's exporter decorates BOS/EOS with newlines; GGUF (and
         * llama.cpp's own llama2.c converter) spell them plainly. */
        if (token_type(t, typed, i, s, len) == 3) {
            if (len == 5 && !memcmp(s, "\n<s>\n", 5)) s = "<s>", len = 3;
            else if (len == 6 && !memcmp(s, "\n</s>\n", 6)) s = "</s>", len = 4;
        }
        if (len > (SIZE_MAX - 1) / 3) {
            w->rc = wmat_set_error(WMAT_ERR_INVALID, "%s: token %d is too long", w->af->path, i);
            break;
        }
        if (*scratch_cap < 3 * len + 1) {
            char *b = wmat__realloc(*scratch, 3 * len + 1);
            if (!b) {
                w->rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", w->af->path);
                break;
            }
            *scratch = b;
            *scratch_cap = 3 * len + 1;
        }
        size_t k = 0;
        for (size_t j = 0; j < len; j++) {
            if (s[j] == ' ') memcpy(*scratch + k, g_space_mark, 3), k += 3;
            else (*scratch)[k++] = s[j];
        }
        w_str(w, *scratch, k);
    }

    w_key(w, "tokenizer.ggml.scores", GG_ARR);
    w_u32(w, GG_F32);
    w_u64(w, (uint64_t)n);
    for (int i = 0; i < n && w->af && !w->rc; i++) w_f32(w, wmat_tokenizer_score(t, i));

    int unk = -1;
    w_key(w, "tokenizer.ggml.token_type", GG_ARR);
    w_u32(w, GG_I32);
    w_u64(w, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        size_t len = 0;
        const char *s = wmat_tokenizer_piece(t, i, &len);
        int32_t ty = token_type(t, typed, i, s ? s : "", s ? len : 0);
        if (ty == 2 && unk < 0) unk = i;
        if (!w->af || w->rc) continue;
        w_u32(w, (uint32_t)ty);
    }
    kv_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)wmat_tokenizer_bos(t));
    kv_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)wmat_tokenizer_eos(t));
    kv_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)(unk < 0 ? 0 : unk));
}

static void w_kvs(gw *w, const wmat_model *m, wmat_dtype dt, const char *name, char **scratch, size_t *scratch_cap)
{
    const wmat_config *c = &m->cfg;
    kv_string(w, "general.architecture", "llama");
    kv_string(w, "general.name", name);
    kv_u32(w, "general.alignment", GG_DEFAULT_ALIGNMENT);
    kv_u32(w, "general.file_type", file_type_of(dt));
    if (wmat_dtype_info(dt)->block_size > 1) kv_u32(w, "general.quantization_version", 2); /* ggml's GGML_QNT_VERSION */
    kv_u32(w, "llama.context_length", (uint32_t)c->seq_len);
    kv_u32(w, "llama.embedding_length", (uint32_t)c->dim);
    kv_u32(w, "llama.block_count", (uint32_t)c->n_layers);
    kv_u32(w, "llama.feed_forward_length", (uint32_t)c->hidden_dim);
    kv_u32(w, "llama.rope.dimension_count", (uint32_t)c->head_dim);
    kv_u32(w, "llama.attention.head_count", (uint32_t)c->n_heads);
    kv_u32(w, "llama.attention.head_count_kv", (uint32_t)c->n_kv_heads);
    if (c->attn_dim) { /* heads wider than the residual stream (SliceGPT without shortcuts) */
        kv_u32(w, "llama.attention.key_length", (uint32_t)c->head_dim);
        kv_u32(w, "llama.attention.value_length", (uint32_t)c->head_dim);
    }
    kv_f32(w, "llama.attention.layer_norm_rms_epsilon", c->norm_eps);
    kv_f32(w, "llama.rope.freq_base", c->rope_theta);
    kv_u32(w, "llama.vocab_size", (uint32_t)c->vocab_size);
    if (m->tok) w_vocab(w, m->tok, scratch, scratch_cap);
}

typedef struct {
    const wmat_tensor *t;
    char name[64];
    wmat_dtype dt;
    uint64_t nbytes, offset;
    int encoded; /* bytes come from the caller's encoder (wmat__gguf_save_with) */
} gw_tensor;

/* Append a tensor to the write plan; layer1 > 0 names it blk.(layer1-1).<gguf>.weight. */
static void plan_add(gw_tensor *ts, size_t *k, const wmat_tensor *t, const char *gguf, int layer1)
{
    gw_tensor *g = &ts[(*k)++];
    g->t = t;
    if (layer1) snprintf(g->name, sizeof g->name, "blk.%d.%s.weight", layer1 - 1, gguf);
    else snprintf(g->name, sizeof g->name, "%s", gguf);
}

/* general.name: the source file's name without directory and extension. */
static void model_name(const wmat_model *m, char *buf, size_t n)
{
    const char *src = m->path ? m->path : "";
    size_t len = strlen(src);
    while (len > 1 && src[len - 1] == '/') len--;
    size_t start = len;
    while (start > 0 && src[start - 1] != '/') start--;
    size_t end = len;
    for (size_t i = len; i > start + 1; i--)
        if (src[i - 1] == '.') {
            end = i - 1;
            break;
        }
    if (end <= start) {
        snprintf(buf, n, "wmat");
        return;
    }
    snprintf(buf, n, "%.*s", (int)(end - start), src + start);
}

/* The tensors in the order the writer writes them: llama.cpp's own
 * converters' order, the globals, then each block. */
static size_t plan_size(const wmat_model *m) { return 3 + (size_t)m->cfg.n_layers * WMAT_W_LAYER_COUNT; }

static size_t plan_build(const wmat_model *m, gw_tensor *ts)
{
    static const wmat_layer_weight order[WMAT_W_LAYER_COUNT] = {
        WMAT_W_Q, WMAT_W_K, WMAT_W_V, WMAT_W_O, WMAT_W_ATTN_NORM, WMAT_W_GATE, WMAT_W_DOWN, WMAT_W_UP, WMAT_W_FFN_NORM,
    };
    const wmat_config *c = &m->cfg;
    wmat_model *mm = (wmat_model *)m; /* the role accessors take a mutable model; nothing is changed */
    size_t count = 0;
    plan_add(ts, &count, wmat_model_tok_embeddings(mm), GG_TOK_EMBD, 0);
    plan_add(ts, &count, wmat_model_final_norm(mm), GG_OUT_NORM, 0);
    if (!c->tied_embeddings && m->classifier_idx >= 0) plan_add(ts, &count, &m->tensors[m->classifier_idx], GG_OUTPUT, 0);
    for (int l = 0; l < c->n_layers; l++)
        for (int w = 0; w < WMAT_W_LAYER_COUNT; w++)
            plan_add(ts, &count, wmat_model_layer_tensor(mm, l, order[w]), g_blk_suffix[order[w]], l + 1);
    return count;
}

int wmat__gguf_write_order(const wmat_model *m, int *idx, int cap)
{
    if (!m->layer_idx || m->tok_embd_idx < 0 || m->final_norm_idx < 0) return 0;
    gw_tensor *ts = wmat__calloc(plan_size(m), sizeof *ts);
    if (!ts) return 0;
    const size_t count = plan_build(m, ts);
    int n = 0;
    for (size_t i = 0; i < count && n < cap; i++)
        if (ts[i].t) idx[n++] = (int)(ts[i].t - m->tensors);
    wmat__free(ts);
    return n;
}

static int gguf_save_core(wmat_model *m, const char *path, wmat_dtype want, wmat_dtype file_dt, wmat_gguf_encode_fn enc,
                          void *user);

/* ---- write-behind for saves with an encoder hook (a merge or a quantized
 * model produces tensor k + 1 while tensor k is written)
 *
 * Two buffers of the largest tensor's bytes. The producer (the saving
 * thread) fills slot p, then hands it over under the mutex (len[p] = its
 * size, a broadcast); the writer thread writes and pads it in file order
 * (slots alternate), and hands it back (len[p] = 0, a broadcast). A
 * buffer is only touched by the thread that holds it, and every handoff
 * goes through the mutex: no data race. The writer alone uses the file
 * between the start and the join; its first failure stops the producer
 * at the next handoff, and its message (the error text is per thread)
 * is set again on the saving thread. */
typedef struct {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    wmat_afile *af;
    void *buf[2];
    size_t len[2]; /* > 0: held by the writer */
    int next;      /* the slot the writer takes next */
    int stop;
    int rc;
    char msg[1024];
} gw_behind;

static void *gwb_main(void *arg)
{
    gw_behind *b = arg;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        while (!b->len[b->next] && !b->stop) pthread_cond_wait(&b->cv, &b->mu);
        if (!b->len[b->next]) break; /* stopped, nothing left to write */
        const int sl = b->next;
        const size_t n = b->len[sl];
        const int failed = b->rc;
        pthread_mutex_unlock(&b->mu);
        int rc = WMAT_OK;
        char msg[1024];
        msg[0] = 0;
        if (!failed) {
            rc = wmat__afile_write(b->af, b->buf[sl], n);
            if (!rc) rc = wmat__afile_pad(b->af, GG_DEFAULT_ALIGNMENT);
            if (rc) snprintf(msg, sizeof msg, "%s", wmat_last_error());
        }
        pthread_mutex_lock(&b->mu);
        if (rc && !b->rc) {
            b->rc = rc;
            memcpy(b->msg, msg, sizeof msg);
        }
        b->len[sl] = 0;
        b->next = sl ^ 1;
        pthread_cond_broadcast(&b->cv);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

/* Wait until slot sl is the producer's again; the writer's failure, if any. */
static int gwb_take(gw_behind *b, int sl)
{
    pthread_mutex_lock(&b->mu);
    while (b->len[sl] && !b->rc) pthread_cond_wait(&b->cv, &b->mu);
    const int rc = b->rc;
    pthread_mutex_unlock(&b->mu);
    return rc;
}

static void gwb_give(gw_behind *b, int sl, size_t n)
{
    pthread_mutex_lock(&b->mu);
    b->len[sl] = n;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

/* Write what was handed over, stop the thread; the writer's status (its
 * message set on this thread). */
static int gwb_finish(gw_behind *b)
{
    pthread_mutex_lock(&b->mu);
    b->stop = 1;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    pthread_join(b->th, NULL);
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    return b->rc ? wmat_set_error(b->rc, "%s", b->msg) : WMAT_OK;
}

int wmat__gguf_save(wmat_model *m, const char *path, const wmat_save_params *p)
{
    return gguf_save_core(m, path, p->dtype, p->dtype, NULL, NULL);
}

/* Entry point for pre-quantized tensors (quantized storage, qstore.h). */
int wmat__gguf_save_with(wmat_model *m, const char *path, wmat_dtype matrix_dtype, wmat_dtype file_dtype,
                         wmat_gguf_encode_fn enc, void *user)
{
    return gguf_save_core(m, path, matrix_dtype, file_dtype, enc, user);
}

static int gguf_save_core(wmat_model *m, const char *path, wmat_dtype want, wmat_dtype file_dt, wmat_gguf_encode_fn enc,
                          void *user)
{
    if (want != WMAT_F32 && want != WMAT_F16 && want != WMAT_BF16 && want != WMAT_Q8_0 && want != WMAT_Q4_0 &&
        !wmat__ggml_block_can_quantize(want))
        return wmat_set_error(WMAT_ERR_INVALID,
                              "%s: GGUF weights can be f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, "
                              "q6_k, iq4_nl or iq4_xs (asked for %s)",
                              path, wmat_dtype_info(want) ? wmat_dtype_info(want)->name : "an unknown type");
    if (!m->layer_idx || m->tok_embd_idx < 0 || m->final_norm_idx < 0)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: the model is not bound to the LLaMA roles", path);
    const wmat_config *c = &m->cfg;
    if (m->tok && wmat_tokenizer_vocab_size(m->tok) != c->vocab_size)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: the tokenizer has %d tokens but the model's vocabulary is %d", path,
                              wmat_tokenizer_vocab_size(m->tok), c->vocab_size);

    gw_tensor *ts = wmat__calloc(plan_size(m), sizeof *ts);
    if (!ts) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", path);
    const size_t count = plan_build(m, ts);

    int rc = WMAT_OK;
    uint64_t off = 0, max_bytes = 0;
    for (size_t i = 0; i < count && !rc; i++) {
        gw_tensor *g = &ts[i];
        const wmat_tensor *t = g->t;
        if (enc) {
            wmat_dtype edt = WMAT_F32;
            int e = enc(user, t, &edt, NULL);
            if (e < 0) {
                rc = e;
                break;
            }
            g->encoded = e == 1;
            if (g->encoded) g->dt = edt;
        }
        if (g->encoded) {
            /* the encoder vouched for the type */
        } else if (t->dtype == WMAT_OBJ || (t->flags & WMAT_TF_HF_ROPE) || (!t->data && (t->nbytes || !m->fill)) ||
                   t->ndim < 1 || t->ndim > 2) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "%s: tensor %s is not a materialized f32 matrix or vector", path, t->name);
            break;
        }
        /* Norms stay f32 (as in llama.cpp's files); a matrix whose rows do
         * not split into the type's blocks takes llama.cpp's fallback (a
         * 32-block type of about the same size), then f16. */
        if (!g->encoded) {
            g->dt = t->ndim == 1 ? WMAT_F32 : want;
            if (t->shape[t->ndim - 1] % wmat_dtype_info(g->dt)->block_size) g->dt = block_fallback(g->dt);
            if (t->shape[t->ndim - 1] % wmat_dtype_info(g->dt)->block_size) g->dt = WMAT_F16;
        }
        g->nbytes = wmat_dtype_bytes(g->dt, (uint64_t)wmat_tensor_nelem(t));
        g->offset = off;
        uint64_t padded = (g->nbytes + GG_DEFAULT_ALIGNMENT - 1) / GG_DEFAULT_ALIGNMENT * GG_DEFAULT_ALIGNMENT;
        if (!g->nbytes || !wmat__add_ok(off, padded, &off)) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "%s: tensor %s is too large", path, t->name);
            break;
        }
        if (g->nbytes > max_bytes) max_bytes = g->nbytes;
    }
    if (rc) {
        wmat__free(ts);
        return rc;
    }

    char name[128];
    model_name(m, name, sizeof name);
    char *scratch = NULL;
    size_t scratch_cap = 0;
    void *buf = NULL;
    float *fill = NULL;
    wmat_afile af;
    gw counter = {NULL, 0, 0};
    w_kvs(&counter, m, file_dt, name, &scratch, &scratch_cap);
    rc = wmat__afile_open(&af, path);
    if (rc) goto fail_open;
    gw w = {&af, 0, 0};
    w_raw(&w, "GGUF", 4);
    w_u32(&w, 3);
    w_u64(&w, (uint64_t)count);
    w_u64(&w, counter.n_kv);
    w_kvs(&w, m, file_dt, name, &scratch, &scratch_cap);
    for (size_t i = 0; i < count; i++) {
        const wmat_tensor *t = ts[i].t;
        w_str(&w, ts[i].name, strlen(ts[i].name));
        w_u32(&w, (uint32_t)t->ndim);
        for (int d = t->ndim - 1; d >= 0; d--) w_u64(&w, (uint64_t)t->shape[d]);
        w_u32(&w, ggml_type_of(ts[i].dt));
        w_u64(&w, ts[i].offset);
    }
    rc = w.rc;
    if (!rc) rc = wmat__afile_pad(&af, GG_DEFAULT_ALIGNMENT);
    if (!rc && max_bytes > SIZE_MAX) rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: tensor too large for memory", path);
    if (!rc) {
        buf = wmat__malloc((size_t)max_bytes);
        if (!buf) rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for a %llu-byte tensor", path, (unsigned long long)max_bytes);
    }
    const int64_t n_fill = wmat__model_max_fill(m);
    if (!rc && n_fill) {
        fill = wmat__aligned_alloc((size_t)n_fill * sizeof(float));
        if (!fill) rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for a %lld-value tensor", path, (long long)n_fill);
    }
    /* an encoder hook: write-behind on a second buffer (gw_behind) */
    gw_behind wb;
    memset(&wb, 0, sizeof wb);
    int behind = 0, slot = 0;
    void *buf2 = NULL;
    if (!rc && enc && count > 1) {
        buf2 = wmat__malloc((size_t)max_bytes);
        wb.af = &af;
        wb.buf[0] = buf;
        wb.buf[1] = buf2;
        if (buf2 && !pthread_mutex_init(&wb.mu, NULL)) {
            if (!pthread_cond_init(&wb.cv, NULL)) {
                if (!pthread_create(&wb.th, NULL, gwb_main, &wb)) behind = 1;
                else pthread_cond_destroy(&wb.cv);
            }
            if (!behind) pthread_mutex_destroy(&wb.mu);
        }
        /* without the thread (no memory for the second buffer): in turn */
    }
    for (size_t i = 0; i < count && !rc; i++) {
        const wmat_tensor *t = ts[i].t;
        if (behind) {
            if ((rc = gwb_take(&wb, slot))) break;
            buf = wb.buf[slot];
        }
        if (ts[i].encoded) {
            wmat_dtype edt = ts[i].dt;
            int e = enc(user, t, &edt, buf);
            rc = e < 0 ? e : WMAT_OK;
            if (!rc && behind) {
                gwb_give(&wb, slot, (size_t)ts[i].nbytes);
                slot ^= 1;
            } else {
                if (!rc) rc = wmat__afile_write(&af, buf, (size_t)ts[i].nbytes);
                if (!rc) rc = wmat__afile_pad(&af, GG_DEFAULT_ALIGNMENT);
            }
            wmat__model_release(m, t); /* out of core: the source is not read again */
            continue;
        }
        size_t bad;
        const float *x;
        if ((rc = wmat__tensor_f32_for_save(m, t, fill, &x))) break;
        /* ggml's block encoders turn NaN/Inf into out-of-range integer
         * conversions: refuse rather than write garbage. */
        if (wmat_dtype_info(ts[i].dt)->block_size > 1 && !wmat__all_finite(x, (size_t)wmat_tensor_nelem(t), &bad)) {
            rc = wmat_set_error(WMAT_ERR_NUMERIC, "%s: tensor %s has a non-finite value (%g) at index %zu; %s cannot encode it",
                                path, t->name, x[bad], bad, wmat_dtype_info(ts[i].dt)->name);
            break;
        }
        rc = wmat_from_f32(buf, ts[i].dt, x, (uint64_t)wmat_tensor_nelem(t));
        if (rc) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", wmat_last_error());
            rc = wmat_set_error(rc, "%s: tensor %s: %s", path, t->name, msg);
            break;
        }
        if (behind) {
            gwb_give(&wb, slot, (size_t)ts[i].nbytes);
            slot ^= 1;
        } else {
            rc = wmat__afile_write(&af, buf, (size_t)ts[i].nbytes);
            if (!rc) rc = wmat__afile_pad(&af, GG_DEFAULT_ALIGNMENT);
        }
        wmat__model_release(m, t);
    }
    if (behind) {
        /* the writer's failure comes first (the producer saw it or stopped
         * for its own); a producer's failure keeps its message */
        char keep[1024];
        snprintf(keep, sizeof keep, "%s", wmat_last_error());
        const int wrc = gwb_finish(&wb);
        if (rc && wrc != rc) wmat_set_error(rc, "%s", keep);
        if (!rc) rc = wrc;
        buf = wb.buf[0];
    }
    if (rc) wmat__afile_abort(&af);
    else rc = wmat__afile_commit(&af);
    wmat__free(buf2);
fail_open:
    wmat__free(buf);
    wmat__free(fill);
    wmat__free(scratch);
    wmat__free(ts);
    return rc;
}
