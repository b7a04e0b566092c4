/* safetensors reader and writer. The reader validates everything a hostile
 * file could get wrong before it hands out a pointer; the writer produces
 * what the reference implementation (huggingface/safetensors) produces. */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* wmat reads and writes tensor bytes in place: the format is little-endian. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

static const struct {
    const char *name;
    int bits;
    int wmat; /* wmat_dtype stored identically, or -1 */
} g_st_dtypes[WMAT_ST_DTYPE_COUNT] = {
    [WMAT_ST_BOOL] = {"BOOL", 8, -1},
    [WMAT_ST_U8] = {"U8", 8, WMAT_U8},
    [WMAT_ST_I8] = {"I8", 8, -1},
    [WMAT_ST_F8_E5M2] = {"F8_E5M2", 8, -1},
    [WMAT_ST_F8_E4M3] = {"F8_E4M3", 8, -1},
    [WMAT_ST_F8_E8M0] = {"F8_E8M0", 8, -1},
    [WMAT_ST_I16] = {"I16", 16, -1},
    [WMAT_ST_U16] = {"U16", 16, -1},
    [WMAT_ST_F16] = {"F16", 16, WMAT_F16},
    [WMAT_ST_BF16] = {"BF16", 16, WMAT_BF16},
    [WMAT_ST_I32] = {"I32", 32, WMAT_I32},
    [WMAT_ST_U32] = {"U32", 32, -1},
    [WMAT_ST_F32] = {"F32", 32, WMAT_F32},
    [WMAT_ST_I64] = {"I64", 64, -1},
    [WMAT_ST_U64] = {"U64", 64, -1},
    [WMAT_ST_F64] = {"F64", 64, -1},
    [WMAT_ST_C64] = {"C64", 64, -1},
    [WMAT_ST_F4] = {"F4", 4, -1},
    [WMAT_ST_F6_E2M3] = {"F6_E2M3", 6, -1},
    [WMAT_ST_F6_E3M2] = {"F6_E3M2", 6, -1},
};

int wmat__st_dtype_from_name(const char *name)
{
    for (int i = 0; i < WMAT_ST_DTYPE_COUNT; i++)
        if (!strcmp(name, g_st_dtypes[i].name)) return i;
    return -1;
}

const char *wmat__st_dtype_name(wmat_st_dtype d)
{
    return (unsigned)d < WMAT_ST_DTYPE_COUNT ? g_st_dtypes[d].name : "?";
}

int wmat__st_dtype_bits(wmat_st_dtype d) { return (unsigned)d < WMAT_ST_DTYPE_COUNT ? g_st_dtypes[d].bits : 0; }

int wmat__st_to_wmat_dtype(wmat_st_dtype d) { return (unsigned)d < WMAT_ST_DTYPE_COUNT ? g_st_dtypes[d].wmat : -1; }

int wmat__st_from_wmat_dtype(wmat_dtype d)
{
    for (int i = 0; i < WMAT_ST_DTYPE_COUNT; i++)
        if (g_st_dtypes[i].wmat == (int)d) return i;
    return -1;
}

/* Bytes of nelem elements of d; false on overflow or when packed sub-byte
 * elements would not end on a byte boundary. */
static bool st_nbytes(wmat_st_dtype d, uint64_t nelem, uint64_t *out)
{
    uint64_t bits;
    if (!wmat__mul_ok(nelem, (uint64_t)g_st_dtypes[d].bits, &bits) || bits % 8) return false;
    *out = bits / 8;
    return true;
}

/* ------------------------------------------------------------------ reading */

/* A JSON number that is an exact non-negative integer. cJSON keeps numbers as
 * doubles, so anything at or above 2^53 may have been rounded: refuse it
 * rather than guess (no real file is 9 PB). */
static bool json_u64(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0.0) || !(d < 9007199254740992.0) || d != floor(d)) return false;
    *out = (uint64_t)d;
    return true;
}

/* qsort has no user pointer in C11, so sort (name, index) pairs. */
typedef struct {
    const char *name;
    int idx;
} name_idx;

static int cmp_name_idx(const void *a, const void *b)
{
    return strcmp(((const name_idx *)a)->name, ((const name_idx *)b)->name);
}

/* Names longer than this are cut in messages: the file is not to be trusted
 * with the length of our error text. */
#define NAME_FMT "%.200s"

static int parse_tensor(wmat_st_tensor *t, const cJSON *obj, uint64_t data_len, const char *what)
{
    if (!cJSON_IsObject(obj))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: entry is not an object (tensor " NAME_FMT ")", what, t->name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(obj, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(obj, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(obj, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off))
        return wmat_set_error(WMAT_ERR_FORMAT,
                              "%s: entry needs \"dtype\" (string), \"shape\" and \"data_offsets\" (arrays) (tensor " NAME_FMT ")",
                              what, t->name);
    int d = wmat__st_dtype_from_name(dt->valuestring);
    if (d < 0)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: unknown dtype \"%.32s\" (tensor " NAME_FMT ")", what, dt->valuestring,
                              t->name);
    t->dtype = (wmat_st_dtype)d;

    int nd = cJSON_GetArraySize(sh);
    if (nd > WMAT_ST_MAX_DIMS)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: rank %d exceeds %d (tensor " NAME_FMT ")", what, nd, WMAT_ST_MAX_DIMS,
                              t->name);
    t->ndim = nd;
    uint64_t nelem = 1;
    int i = 0;
    for (const cJSON *e = sh->child; e; e = e->next, i++) {
        uint64_t v;
        if (!json_u64(e, &v))
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: shape[%d] is not a non-negative integer (tensor " NAME_FMT ")",
                                  what, i, t->name);
        if (!wmat__mul_ok(nelem, v, &nelem))
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: element count overflows (tensor " NAME_FMT ")", what, t->name);
        t->shape[i] = (int64_t)v;
    }
    t->nelem = nelem;
    uint64_t need;
    if (!st_nbytes(t->dtype, nelem, &need))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: %llu %s elements do not make a whole number of bytes or overflow (tensor " NAME_FMT ")",
                              what, (unsigned long long)nelem, g_st_dtypes[d].name, t->name);

    if (cJSON_GetArraySize(off) != 2 || !json_u64(off->child, &t->begin) || !json_u64(off->child->next, &t->end))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: data_offsets must be two non-negative integers (tensor " NAME_FMT ")",
                              what, t->name);
    if (t->begin > t->end || t->end > data_len)
        return wmat_set_error(WMAT_ERR_FORMAT,
                              "%s: data_offsets [%llu, %llu] fall outside the %llu bytes of data (tensor " NAME_FMT ")", what,
                              (unsigned long long)t->begin, (unsigned long long)t->end, (unsigned long long)data_len,
                              t->name);
    if (t->end - t->begin != need)
        return wmat_set_error(WMAT_ERR_FORMAT,
                              "%s: data_offsets [%llu, %llu] hold %llu bytes, shape and dtype %s need %llu (tensor " NAME_FMT ")",
                              what, (unsigned long long)t->begin, (unsigned long long)t->end,
                              (unsigned long long)(t->end - t->begin), g_st_dtypes[d].name, (unsigned long long)need,
                              t->name);
    t->nbytes = (size_t)need;
    return WMAT_OK;
}

int wmat__st_parse(wmat_st_file **out, const void *buf, size_t len, const char *what)
{
    *out = NULL;
    const unsigned char *p = buf;
    if (len < 8)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: %zu bytes is too short for a safetensors file", what, len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | p[i];
    if (hlen > WMAT_ST_MAX_HEADER)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: header length %llu exceeds the limit of %llu bytes", what,
                              (unsigned long long)hlen, (unsigned long long)WMAT_ST_MAX_HEADER);
    if (hlen > len - 8)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: header length %llu exceeds the file size (%zu bytes): truncated?",
                              what, (unsigned long long)hlen, len);
    if (hlen < 2) return wmat_set_error(WMAT_ERR_FORMAT, "%s: header is empty", what);
    if (memchr(p + 8, '\0', (size_t)hlen))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: header contains a NUL byte", what);

    int rc = WMAT_OK;
    cJSON *root = NULL;
    name_idx *pairs = NULL;
    wmat_st_file *f = wmat__calloc(1, sizeof *f);
    /* cJSON wants a terminated string; a copy also keeps the parse from ever
     * reading the mapping beyond the header. */
    char *hdr = wmat__malloc((size_t)hlen + 1);
    if (!f || !hdr) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for a %llu-byte header", what, (unsigned long long)hlen);
        goto fail;
    }
    memcpy(hdr, p + 8, (size_t)hlen);
    hdr[hlen] = '\0';
    f->data_start = 8 + hlen;
    const uint64_t data_len = len - f->data_start;

    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen + 1, &end, 0);
    if (!root) {
        size_t at = end && end >= hdr && end <= hdr + hlen ? (size_t)(end - hdr) : 0;
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: header is not valid JSON (near byte %zu of the header)", what, at);
        goto fail;
    }
    /* The reference pads the header with spaces; anything else after the
     * object is garbage. */
    for (const char *q = end; q < hdr + hlen; q++) {
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: unexpected bytes after the header JSON (byte %zu)", what,
                                (size_t)(q - hdr));
            goto fail;
        }
    }
    if (!cJSON_IsObject(root)) {
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: header is not a JSON object", what);
        goto fail;
    }

    /* Count entries and string bytes so that one allocation holds them. */
    int n_t = 0, n_m = 0, seen_meta = 0;
    size_t str_bytes = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (!e->string) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: header entry without a name", what);
            goto fail;
        }
        if (!strcmp(e->string, "__metadata__")) {
            if (seen_meta++) {
                rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: __metadata__ appears twice", what);
                goto fail;
            }
            if (cJSON_IsNull(e)) continue;
            if (!cJSON_IsObject(e)) {
                rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: __metadata__ is not an object", what);
                goto fail;
            }
            for (const cJSON *kv = e->child; kv; kv = kv->next) {
                if (!kv->string || !cJSON_IsString(kv)) {
                    rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: __metadata__ value of \"" NAME_FMT "\" is not a string",
                                        what, kv->string ? kv->string : "");
                    goto fail;
                }
                str_bytes += strlen(kv->string) + strlen(kv->valuestring) + 2;
                n_m++;
            }
            continue;
        }
        str_bytes += strlen(e->string) + 1;
        n_t++;
    }
    f->tensors = wmat__calloc((size_t)n_t, sizeof *f->tensors);
    f->by_name = wmat__calloc((size_t)n_t, sizeof *f->by_name);
    f->meta = wmat__calloc((size_t)n_m, sizeof *f->meta);
    f->strings = wmat__malloc(str_bytes ? str_bytes : 1);
    f->path = wmat__strdup(what);
    if (!f->tensors || !f->by_name || !f->meta || !f->strings || !f->path) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for %d tensor entries", what, n_t);
        goto fail;
    }
    char *s = f->strings;
#define KEEP(dst, src)                     \
    do {                                   \
        size_t k_ = strlen(src) + 1;       \
        memcpy(s, (src), k_);              \
        (dst) = s;                         \
        s += k_;                           \
    } while (0)
    for (const cJSON *e = root->child; e; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) {
            if (cJSON_IsObject(e))
                for (const cJSON *kv = e->child; kv; kv = kv->next) {
                    wmat_st_meta *m = &f->meta[f->n_meta++];
                    KEEP(m->key, kv->string);
                    KEEP(m->value, kv->valuestring);
                }
            continue;
        }
        wmat_st_tensor *t = &f->tensors[f->n_tensors];
        KEEP(t->name, e->string);
        f->by_name[f->n_tensors] = f->n_tensors;
        f->n_tensors++;
        rc = parse_tensor(t, e, data_len, what);
        if (rc) goto fail;
        t->data = p + f->data_start + t->begin;
    }
    (void)s;
#undef KEEP
    pairs = wmat__malloc((size_t)(f->n_tensors ? f->n_tensors : 1) * sizeof *pairs);
    if (!pairs) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
        goto fail;
    }
    for (int i = 0; i < f->n_tensors; i++) pairs[i] = (name_idx){f->tensors[i].name, i};
    qsort(pairs, (size_t)f->n_tensors, sizeof *pairs, cmp_name_idx);
    for (int i = 0; i < f->n_tensors; i++) {
        if (i && !strcmp(pairs[i - 1].name, pairs[i].name)) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: duplicate entry (tensor " NAME_FMT ")", what, pairs[i].name);
            goto fail;
        }
        f->by_name[i] = pairs[i].idx;
    }
    wmat__free(pairs);
    cJSON_Delete(root);
    wmat__free(hdr);
    *out = f;
    return WMAT_OK;

fail:
    cJSON_Delete(root);
    wmat__free(hdr);
    wmat__free(pairs);
    wmat__st_close(f);
    return rc;
}

int wmat__st_open(wmat_st_file **out, const char *path)
{
    *out = NULL;
    wmat_map map;
    int rc = wmat__map_file(path, &map);
    if (rc) return rc;
    wmat_st_file *f;
    rc = wmat__st_parse(&f, map.addr, map.len, path);
    if (rc) {
        wmat__unmap(&map);
        return rc;
    }
    f->map = map;
    *out = f;
    return WMAT_OK;
}

void wmat__st_close(wmat_st_file *f)
{
    if (!f) return;
    wmat__unmap(&f->map);
    wmat__free(f->tensors);
    wmat__free(f->by_name);
    wmat__free(f->meta);
    wmat__free(f->strings);
    wmat__free(f->path);
    wmat__free(f);
}

const wmat_st_tensor *wmat__st_find(const wmat_st_file *f, const char *name)
{
    int lo = 0, hi = f->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const wmat_st_tensor *t = &f->tensors[f->by_name[mid]];
        int c = strcmp(t->name, name);
        if (c == 0) return t;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

const char *wmat__st_meta_get(const wmat_st_file *f, const char *key)
{
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta[i].key, key)) return f->meta[i].value;
    return NULL;
}

void wmat__st_take_map(wmat_st_file *f, wmat_map *out)
{
    *out = f->map;
    f->map.addr = NULL;
    f->map.len = 0;
}

/* ------------------------------------------------------------------ writing */

typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        char *q = wmat__realloc(b->p, cap);
        if (!q) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}
static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }
static void sb_u64(sbuf *b, uint64_t v)
{
    char t[24];
    sb_str(b, (snprintf(t, sizeof t, "%llu", (unsigned long long)v), t));
}
/* A JSON string literal: bytes >= 0x20 pass through (UTF-8 stays UTF-8). */
static void sb_json_str(sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_put(b, e, 2);
        } else if (c < 0x20) {
            char e[8];
            snprintf(e, sizeof e, "\\u%04x", c);
            sb_put(b, e, 6);
        } else {
            sb_put(b, (const char *)s, 1);
        }
    }
    sb_put(b, "\"", 1);
}

typedef struct {
    const wmat_st_entry *e;
    uint64_t nbytes;
} entry_ref;

static int cmp_entry_name(const void *a, const void *b)
{
    return strcmp(((const entry_ref *)a)->e->name, ((const entry_ref *)b)->e->name);
}

/* The reference's data order: larger elements first, so that every tensor
 * starts aligned to its element size, then by name. */
static int cmp_entry_layout(const void *a, const void *b)
{
    const wmat_st_entry *x = ((const entry_ref *)a)->e, *y = ((const entry_ref *)b)->e;
    int bx = g_st_dtypes[x->dtype].bits, by = g_st_dtypes[y->dtype].bits;
    if (bx != by) return by - bx;
    return strcmp(x->name, y->name);
}

int wmat__st_write_afile(wmat_afile *af, const wmat_st_entry *entries, int n, const wmat_st_meta *meta, int n_meta)
{
    const char *what = af->path;
    int rc = WMAT_OK;
    entry_ref *order = wmat__malloc((size_t)(n > 0 ? n : 1) * sizeof *order);
    sbuf h = {0};
    void *scratch = NULL;
    if (!order) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
        goto done;
    }
    uint64_t max_fill = 0;
    for (int i = 0; i < n; i++) {
        const wmat_st_entry *e = &entries[i];
        order[i].e = e;
        if (!e->name || !*e->name || !strcmp(e->name, "__metadata__")) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "%s: tensor %d has an empty or reserved name", what, i);
            goto done;
        }
        if ((unsigned)e->dtype >= WMAT_ST_DTYPE_COUNT || e->ndim < 0 || e->ndim > WMAT_ST_MAX_DIMS ||
            (!e->data && !e->fill)) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "%s: bad dtype, rank or data (tensor " NAME_FMT ")", what, e->name);
            goto done;
        }
        uint64_t nelem = 1;
        for (int d = 0; d < e->ndim; d++) {
            if (e->shape[d] < 0 || !wmat__mul_ok(nelem, (uint64_t)e->shape[d], &nelem)) {
                rc = wmat_set_error(WMAT_ERR_INVALID, "%s: bad shape (tensor " NAME_FMT ")", what, e->name);
                goto done;
            }
        }
        if (!st_nbytes(e->dtype, nelem, &order[i].nbytes) || order[i].nbytes > SIZE_MAX) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "%s: size overflows or is not whole bytes (tensor " NAME_FMT ")", what,
                                e->name);
            goto done;
        }
        if (e->fill && order[i].nbytes > max_fill) max_fill = order[i].nbytes;
    }
    qsort(order, (size_t)n, sizeof *order, cmp_entry_name);
    for (int i = 1; i < n; i++) {
        if (!strcmp(order[i - 1].e->name, order[i].e->name)) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "%s: duplicate tensor name " NAME_FMT, what, order[i].e->name);
            goto done;
        }
    }
    qsort(order, (size_t)n, sizeof *order, cmp_entry_layout);

    sb_str(&h, "{");
    if (n_meta > 0) {
        sb_str(&h, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            if (i) sb_str(&h, ",");
            sb_json_str(&h, meta[i].key);
            sb_str(&h, ":");
            sb_json_str(&h, meta[i].value);
        }
        sb_str(&h, "}");
    }
    uint64_t off = 0;
    for (int k = 0; k < n; k++) {
        const wmat_st_entry *e = order[k].e;
        if (k || n_meta > 0) sb_str(&h, ",");
        sb_json_str(&h, e->name);
        sb_str(&h, ":{\"dtype\":\"");
        sb_str(&h, g_st_dtypes[e->dtype].name);
        sb_str(&h, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) {
            if (d) sb_str(&h, ",");
            sb_u64(&h, (uint64_t)e->shape[d]);
        }
        sb_str(&h, "],\"data_offsets\":[");
        sb_u64(&h, off);
        sb_str(&h, ",");
        if (!wmat__add_ok(off, order[k].nbytes, &off)) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "%s: total size overflows", what);
            goto done;
        }
        sb_u64(&h, off);
        sb_str(&h, "]}");
    }
    sb_str(&h, "}");
    while (h.len % 8 && !h.oom) sb_str(&h, " "); /* no progress once out of memory */
    if (h.oom) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for the header", what);
        goto done;
    }
    if (h.len > WMAT_ST_MAX_HEADER) {
        rc = wmat_set_error(WMAT_ERR_INVALID, "%s: header of %zu bytes exceeds the format's limit", what, h.len);
        goto done;
    }
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    if ((rc = wmat__afile_write(af, lenbuf, 8)) || (rc = wmat__afile_write(af, h.p, h.len))) goto done;

    if (max_fill) {
        scratch = wmat__aligned_alloc((size_t)max_fill);
        if (!scratch) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory (%llu bytes of scratch)", what,
                                (unsigned long long)max_fill);
            goto done;
        }
    }
    for (int k = 0; k < n; k++) {
        const wmat_st_entry *e = order[k].e;
        size_t nb = (size_t)order[k].nbytes;
        const void *src = e->data;
        if (e->fill) {
            if ((rc = e->fill(e->user, e, scratch))) goto done;
            src = scratch;
        }
        if ((rc = wmat__afile_write(af, src, nb))) goto done;
        if (e->release && !e->fill) wmat__map_release(e->release, src, nb);
    }

done:
    wmat__free(order);
    wmat__free(h.p);
    wmat__free(scratch);
    return rc;
}

int wmat__st_write(const char *path, const wmat_st_entry *entries, int n, const wmat_st_meta *meta, int n_meta)
{
    wmat_afile af;
    int rc = wmat__afile_open(&af, path);
    if (rc) return rc;
    rc = wmat__st_write_afile(&af, entries, n, meta, n_meta);
    if (rc) {
        wmat__afile_abort(&af);
        return rc;
    }
    return wmat__afile_commit(&af);
}
