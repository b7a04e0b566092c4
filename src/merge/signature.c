/* Weight signatures: extract (ft - base, optionally orthogonalized against
 * a clean fine-tune's delta and truncated to a top-r SVD per matrix),
 * apply / compose (base + sum alpha_i sig_i) and describe. The file layout
 * is in signature.h. The models are loaded whole as fp32 (a signature of a
 * small model is the use this serves; the merge driver is the streamed
 * path); the SVDs are LAPACK's dgesdd in double. */
#include "signature.h"
#include "io/model_internal.h"
#include "io/safetensors.h"
#include "linalg/dense.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SIG_FORMAT "wmat.signature"
#define SIG_VERSION "1"
/* a tensor name with a suffix, with room for snprintf's worst case */
#define SIG_NAME (2 * WMAT_NAME_MAX + 8)

void wmat__sig_report_free(wmat_sig_report *r)
{
    if (!r) return;
    wmat__free(r->t);
    memset(r, 0, sizeof *r);
}

/* ---- the base's shape as text, and its check */

typedef struct {
    const char *key;
    long long v;
} cfg_field;

static int cfg_fields(const wmat_config *c, cfg_field *f)
{
    int n = 0;
    f[n++] = (cfg_field){"dim", c->dim};
    f[n++] = (cfg_field){"hidden_dim", c->hidden_dim};
    f[n++] = (cfg_field){"n_layers", c->n_layers};
    f[n++] = (cfg_field){"n_heads", c->n_heads};
    f[n++] = (cfg_field){"n_kv_heads", c->n_kv_heads};
    f[n++] = (cfg_field){"vocab_size", c->vocab_size};
    f[n++] = (cfg_field){"head_dim", c->head_dim};
    f[n++] = (cfg_field){"tied_embeddings", c->tied_embeddings};
    return n;
}

static void cfg_text(const wmat_config *c, char *buf, size_t n)
{
    cfg_field f[16];
    const int k = cfg_fields(c, f);
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < k && o < n; i++) o += (size_t)snprintf(buf + o, n - o, "%s%s=%lld", i ? "," : "", f[i].key, f[i].v);
}

/* 0 when text (a signature's "config") describes c; else sets an error
 * naming the signature file, the base file and the first difference. */
static int cfg_check(const char *text, const wmat_config *c, const char *sig, const char *base)
{
    cfg_field f[16];
    const int k = cfg_fields(c, f);
    for (int i = 0; i < k; i++) {
        const char *p = text;
        const size_t kl = strlen(f[i].key);
        long long v = 0;
        int found = 0;
        while (p && *p) {
            if (!strncmp(p, f[i].key, kl) && p[kl] == '=') {
                char *end;
                v = strtoll(p + kl + 1, &end, 10);
                found = end != p + kl + 1 && (*end == ',' || !*end);
                break;
            }
            p = strchr(p, ',');
            if (p) p++;
        }
        if (!found)
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: the signature's config has no %s (config '%s')", sig, f[i].key, text);
        if (v != f[i].v)
            return wmat_set_error(WMAT_ERR_INVALID,
                                  "%s and %s: the signature was made for a base with %s %lld, but %s has %s %lld", sig,
                                  base, f[i].key, v, base, f[i].key, f[i].v);
    }
    return WMAT_OK;
}

static int same_arch(const wmat_model *a, const wmat_model *b, const char *pa, const char *pb)
{
    cfg_field fa[16], fb[16];
    const int k = cfg_fields(wmat_model_config(a), fa);
    cfg_fields(wmat_model_config(b), fb);
    for (int i = 0; i < k; i++)
        if (fa[i].v != fb[i].v)
            return wmat_set_error(WMAT_ERR_INVALID, "%s and %s: different architectures (%s %lld vs %lld)", pa, pb, fa[i].key,
                                  fa[i].v, fb[i].v);
    for (int i = 0; i < wmat_model_n_tensors(a); i++) {
        const wmat_tensor *t = wmat_model_tensor((wmat_model *)a, i), *u = wmat_model_find((wmat_model *)b, t->name);
        if (!u) return wmat_set_error(WMAT_ERR_INVALID, "%s and %s: tensor %s is missing from %s", pa, pb, t->name, pb);
        if (wmat_tensor_nelem(t) != wmat_tensor_nelem(u) || t->ndim != u->ndim || t->shape[0] != u->shape[0])
            return wmat_set_error(WMAT_ERR_INVALID, "%s and %s: tensor %s has another shape", pa, pb, t->name);
    }
    return WMAT_OK;
}

/* ---- which tensors: "0-1,4,embed,head" */

typedef struct {
    int all, embed, head;
    unsigned char block[1024];
} layer_set;

static int parse_layers(const char *spec, int n_layers, layer_set *s)
{
    memset(s, 0, sizeof *s);
    if (!spec || !*spec || !strcmp(spec, "all")) {
        s->all = 1;
        return WMAT_OK;
    }
    const char *p = spec;
    while (*p) {
        const char *e = strchr(p, ',');
        const size_t len = e ? (size_t)(e - p) : strlen(p);
        char item[64];
        if (!len || len >= sizeof item)
            return wmat_set_error(WMAT_ERR_INVALID, "layers '%s': an empty or too long item", spec);
        memcpy(item, p, len);
        item[len] = 0;
        int a, b, used = 0;
        if (!strcmp(item, "embed")) {
            s->embed = 1;
        } else if (!strcmp(item, "head")) {
            s->head = 1;
        } else if (sscanf(item, "%d-%d%n", &a, &b, &used) == 2 && used == (int)len) {
            if (a < 0 || b < a || b >= n_layers || b >= 1024)
                return wmat_set_error(WMAT_ERR_INVALID, "layers '%s': %s is not a range of blocks 0..%d", spec, item,
                                      n_layers - 1);
            for (int l = a; l <= b; l++) s->block[l] = 1;
        } else if (sscanf(item, "%d%n", &a, &used) == 1 && used == (int)len) {
            if (a < 0 || a >= n_layers || a >= 1024)
                return wmat_set_error(WMAT_ERR_INVALID, "layers '%s': block %d is not in 0..%d", spec, a, n_layers - 1);
            s->block[a] = 1;
        } else {
            return wmat_set_error(WMAT_ERR_INVALID,
                                  "layers '%s': '%s' is not a block, a range A-B, 'embed' or 'head'", spec, item);
        }
        p += len;
        if (*p == ',') p++;
    }
    return WMAT_OK;
}

static int layer_selected(const layer_set *s, const char *name)
{
    if (s->all) return 1;
    int l;
    if (sscanf(name, "model.layers.%d.", &l) == 1) return l >= 0 && l < 1024 && s->block[l];
    if (!strcmp(name, WMAT_NAME_TOK_EMBD)) return s->embed;
    return s->head; /* the final norm and the classifier */
}

/* ---- extract */

static wmat_model *load_f32_tok(const char *path, const char *tokenizer_path, int *rc)
{
    wmat_model *m = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    lp.tokenizer_path = tokenizer_path;
    *rc = wmat_model_load(&m, path, &lp);
    return *rc ? NULL : m;
}

static wmat_model *load_f32(const char *path, int *rc)
{
    return load_f32_tok(path, NULL, rc);
}

typedef struct {
    wmat_st_entry *e;
    void **bufs;
    char **names;
    int n, cap;
} entries;

static int entries_add(entries *es, const char *name, wmat_dtype dt, int64_t d0, int64_t d1, int ndim, const float *src)
{
    if (es->n == es->cap) {
        const int cap = es->cap ? 2 * es->cap : 64;
        wmat_st_entry *e = wmat__realloc(es->e, (size_t)cap * sizeof *e);
        if (e) es->e = e;
        void **b = wmat__realloc(es->bufs, (size_t)cap * sizeof *b);
        if (b) es->bufs = b;
        char **nm = wmat__realloc(es->names, (size_t)cap * sizeof *nm);
        if (nm) es->names = nm;
        if (!e || !b || !nm) return wmat_set_error(WMAT_ERR_NOMEM, "signature: out of memory");
        es->cap = cap;
    }
    const uint64_t n = (uint64_t)d0 * (uint64_t)(ndim > 1 ? d1 : 1);
    void *buf = wmat__malloc(wmat_dtype_bytes(dt, n) ? wmat_dtype_bytes(dt, n) : 1);
    char *nm = wmat__malloc(strlen(name) + 1);
    if (!buf || !nm) {
        wmat__free(buf);
        wmat__free(nm);
        return wmat_set_error(WMAT_ERR_NOMEM, "signature: out of memory for %s", name);
    }
    strcpy(nm, name);
    int rc = wmat_from_f32(buf, dt, src, n);
    if (rc) {
        wmat__free(buf);
        wmat__free(nm);
        return rc;
    }
    wmat_st_entry *e = &es->e[es->n];
    memset(e, 0, sizeof *e);
    e->name = nm;
    e->dtype = (wmat_st_dtype)wmat__st_from_wmat_dtype(dt);
    e->ndim = ndim;
    e->shape[0] = d0;
    e->shape[1] = d1;
    e->data = buf;
    es->bufs[es->n] = buf;
    es->names[es->n] = nm;
    es->n++;
    return WMAT_OK;
}

static void entries_free(entries *es)
{
    for (int i = 0; i < es->n; i++) {
        wmat__free(es->bufs[i]);
        wmat__free(es->names[i]);
    }
    wmat__free(es->e);
    wmat__free(es->bufs);
    wmat__free(es->names);
    memset(es, 0, sizeof *es);
}

/* The top-r part of the delta d (m, n) as A = U_r S_r (m, r) and
 * B = V_r^T (r, n), fp32; *tail2 = the sum of the squared singular values
 * past r (the squared error, Eckart-Young). */
static int truncate_svd(const double *d, int m, int n, int r, float *A, float *B, double *tail2)
{
    const int k = m < n ? m : n;
    const size_t mn = (size_t)m * n;
    double *w = wmat__malloc((mn + (size_t)m * k + (size_t)k * n + (size_t)k) * sizeof(double));
    if (!w) return wmat_set_error(WMAT_ERR_NOMEM, "signature: out of memory for a %dx%d SVD", m, n);
    double *a = w, *U = a + mn, *VT = U + (size_t)m * k, *S = VT + (size_t)k * n;
    memcpy(a, d, mn * sizeof(double));
    int rc = wmat__dgesdd(m, n, a, n, S, U, k, VT, n);
    if (!rc) {
        *tail2 = 0;
        for (int i = r; i < k; i++) *tail2 += S[i] * S[i];
        for (int i = 0; i < m; i++)
            for (int q = 0; q < r; q++) A[(size_t)i * r + q] = (float)(U[(size_t)i * k + q] * S[q]);
        for (int q = 0; q < r; q++)
            for (int j = 0; j < n; j++) B[(size_t)q * n + j] = (float)VT[(size_t)q * n + j];
    }
    wmat__free(w);
    return rc;
}

int wmat__sig_extract(const char *ft, const char *base, const char *out, const wmat_sig_params *p, wmat_sig_report *rep)
{
    wmat_sig_report local;
    if (!rep) rep = &local;
    memset(rep, 0, sizeof *rep);
    if (p->rank < 0) return wmat_set_error(WMAT_ERR_INVALID, "signature: rank %d is negative", p->rank);
    if (p->dtype != WMAT_F32 && p->dtype != WMAT_F16 && p->dtype != WMAT_BF16)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: a signature is stored as f32, f16 or bf16", out);
    int rc;
    wmat_model *mf = NULL, *mb = NULL, *mc = NULL;
    entries es;
    memset(&es, 0, sizeof es);
    double *d = NULL, *d0 = NULL;
    float *A = NULL, *B = NULL, *full = NULL;
    mb = load_f32(base, &rc);
    if (!rc) mf = load_f32(ft, &rc);
    if (!rc && p->against) mc = load_f32(p->against, &rc);
    if (!rc) rc = same_arch(mb, mf, base, ft);
    if (!rc && mc) rc = same_arch(mb, mc, base, p->against);
    layer_set ls;
    if (!rc) rc = parse_layers(p->layers, wmat_model_config(mb)->n_layers, &ls);
    if (rc) goto done;
    int64_t max_n = 0;
    const int nt = wmat_model_n_tensors(mb);
    for (int i = 0; i < nt; i++)
        if (wmat_tensor_nelem(wmat_model_tensor(mb, i)) > max_n) max_n = wmat_tensor_nelem(wmat_model_tensor(mb, i));
    d = wmat__malloc((size_t)max_n * sizeof(double));
    d0 = mc ? wmat__malloc((size_t)max_n * sizeof(double)) : NULL;
    full = wmat__malloc((size_t)max_n * sizeof(float));
    A = wmat__malloc((size_t)max_n * sizeof(float));
    B = wmat__malloc((size_t)max_n * sizeof(float));
    rep->t = wmat__calloc((size_t)nt, sizeof *rep->t);
    if (!d || (mc && !d0) || !full || !A || !B || !rep->t) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "signature: out of memory");
        goto done;
    }
    for (int i = 0; i < nt && !rc; i++) {
        const wmat_tensor *tb = wmat_model_tensor(mb, i);
        if (!layer_selected(&ls, tb->name)) continue;
        const int64_t n = wmat_tensor_nelem(tb);
        const float *xb = tb->data, *xf = wmat_model_find(mf, tb->name)->data;
        double dd = 0;
        for (int64_t j = 0; j < n; j++) d[j] = (double)xf[j] - xb[j];
        if (mc) {
            /* RWS: d - (<d, d0> / ||d0||^2) d0, per flattened tensor */
            const float *xc = wmat_model_find(mc, tb->name)->data;
            double dot = 0, n0 = 0;
            for (int64_t j = 0; j < n; j++) {
                d0[j] = (double)xc[j] - xb[j];
                dot += d[j] * d0[j];
                n0 += d0[j] * d0[j];
            }
            if (n0 > 0)
                for (int64_t j = 0; j < n; j++) d[j] -= dot / n0 * d0[j];
        }
        for (int64_t j = 0; j < n; j++) dd += d[j] * d[j];
        wmat_sig_tensor *st = &rep->t[rep->n++];
        snprintf(st->name, sizeof st->name, "%s", tb->name);
        st->rows = tb->shape[0];
        st->cols = tb->ndim > 1 ? tb->shape[1] : 1;
        st->delta_norm = sqrt(dd);
        st->rank = -1;
        const int64_t m = st->rows, c = st->cols, r = p->rank;
        rep->dense_bytes += (uint64_t)n * 4;
        if (tb->ndim == 2 && r > 0 && r * (m + c) < m * c && m <= 0x7fffffff && c <= 0x7fffffff) {
            double tail2 = 0;
            rc = truncate_svd(d, (int)m, (int)c, (int)r, A, B, &tail2);
            if (rc) break;
            char nm[SIG_NAME];
            snprintf(nm, sizeof nm, "%s.A", tb->name);
            rc = entries_add(&es, nm, p->dtype, m, r, 2, A);
            snprintf(nm, sizeof nm, "%s.B", tb->name);
            if (!rc) rc = entries_add(&es, nm, p->dtype, r, c, 2, B);
            st->rank = (int)r;
            st->rel_err = dd > 0 ? sqrt(tail2 / dd) : 0;
            st->bytes = wmat_dtype_bytes(p->dtype, (uint64_t)(m * r + r * c));
        } else {
            for (int64_t j = 0; j < n; j++) full[j] = (float)d[j];
            int64_t d1 = tb->ndim > 1 ? tb->shape[1] : 0;
            rc = entries_add(&es, tb->name, tb->ndim == 1 ? WMAT_F32 : p->dtype, tb->shape[0], d1, tb->ndim, full);
            st->bytes = wmat_dtype_bytes(tb->ndim == 1 ? WMAT_F32 : p->dtype, (uint64_t)n);
        }
        rep->bytes += st->bytes;
    }
    if (rc) goto done;
    if (!es.n) {
        rc = wmat_set_error(WMAT_ERR_INVALID, "%s: layers '%s' select no tensor", out, p->layers ? p->layers : "");
        goto done;
    }
    {
        char cfg[256], rank[32];
        cfg_text(wmat_model_config(mb), cfg, sizeof cfg);
        if (p->rank > 0) snprintf(rank, sizeof rank, "%d", p->rank);
        else snprintf(rank, sizeof rank, "full");
        const wmat_st_meta meta[] = {
            {"format", SIG_FORMAT},
            {"version", SIG_VERSION},
            {"config", cfg},
            {"base", base},
            {"finetune", ft},
            {"against", p->against ? p->against : ""},
            {"rank", rank},
            {"layers", p->layers && *p->layers ? p->layers : "all"},
        };
        rc = wmat__st_write(out, es.e, es.n, meta, (int)(sizeof meta / sizeof meta[0]));
        struct stat sb;
        if (!rc && !stat(out, &sb)) rep->file_bytes = (uint64_t)sb.st_size;
    }
done:
    entries_free(&es);
    wmat__free(d);
    wmat__free(d0);
    wmat__free(full);
    wmat__free(A);
    wmat__free(B);
    wmat_model_free(mf);
    wmat_model_free(mb);
    wmat_model_free(mc);
    if (rc || rep == &local) wmat__sig_report_free(rep);
    return rc;
}

/* ---- reading a signature */

/* Open and check the header: format, version, config against base (when
 * given). */
static int sig_open(wmat_st_file **f, const char *path, const wmat_model *base, const char *base_path)
{
    int rc = wmat__st_open(f, path);
    if (rc) {
        char why[400];
        snprintf(why, sizeof why, "%s", wmat_last_error());
        return wmat_set_error(rc, "%s: not a weight signature (%s)", path, why);
    }
    const char *fmt = wmat__st_meta_get(*f, "format"), *ver = wmat__st_meta_get(*f, "version"),
               *cfg = wmat__st_meta_get(*f, "config");
    if (!fmt || strcmp(fmt, SIG_FORMAT))
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: not a weight signature (no __metadata__ format '%s')", path, SIG_FORMAT);
    else if (!ver || strcmp(ver, SIG_VERSION))
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: signature version %s (this wmat reads %s)", path, ver ? ver : "(none)",
                            SIG_VERSION);
    else if (!cfg)
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: the signature does not say which base it applies to (no config)", path);
    else if (base)
        rc = cfg_check(cfg, wmat_model_config(base), path, base_path);
    if (rc) {
        wmat__st_close(*f);
        *f = NULL;
    }
    return rc;
}

static int ends_with(const char *s, const char *suf)
{
    const size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* A factor or full tensor as fp32 (the mapping may be unaligned). */
static int st_f32(const wmat_st_tensor *t, float *dst, const char *path)
{
    const int dt = wmat__st_to_wmat_dtype(t->dtype);
    if (dt != WMAT_F32 && dt != WMAT_F16 && dt != WMAT_BF16)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor %s is %s (a signature holds F32, F16 or BF16)", path, t->name,
                              wmat__st_dtype_name(t->dtype));
    return wmat_to_f32(dst, t->data, (wmat_dtype)dt, t->nelem);
}

/* Checks every tensor of the signature against the base (names, shapes,
 * factor pairs) without touching the base; used before any change. */
static int sig_check_tensors(const wmat_st_file *f, const wmat_model *base, const char *path, const char *base_path)
{
    for (int i = 0; i < f->n_tensors; i++) {
        const wmat_st_tensor *t = &f->tensors[i];
        char name[SIG_NAME];
        snprintf(name, sizeof name, "%s", t->name);
        const int is_a = ends_with(name, ".A"), is_b = ends_with(name, ".B");
        if (is_a || is_b) name[strlen(name) - 2] = 0;
        const wmat_tensor *bt = wmat_model_find((wmat_model *)base, name);
        if (!bt)
            return wmat_set_error(WMAT_ERR_INVALID, "%s and %s: the signature's tensor %s is not in %s", path, base_path, name,
                                  base_path);
        const int64_t rows = bt->shape[0], cols = bt->ndim > 1 ? bt->shape[1] : 1;
        if (is_a || is_b) {
            char other[SIG_NAME + 4];
            snprintf(other, sizeof other, "%s.%c", name, is_a ? 'B' : 'A');
            const wmat_st_tensor *o = wmat__st_find(f, other);
            const wmat_st_tensor *a = is_a ? t : o, *b = is_a ? o : t;
            if (wmat__st_find(f, name))
                return wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor %s is stored both whole and as factors", path, name);
            if (!o || a->ndim != 2 || b->ndim != 2 || a->shape[0] != rows || b->shape[1] != cols || a->shape[1] != b->shape[0])
                return wmat_set_error(WMAT_ERR_INVALID,
                                      "%s and %s: the factors of %s do not make a %lldx%lld matrix", path, base_path, name,
                                      (long long)rows, (long long)cols);
        } else if ((int64_t)t->nelem != wmat_tensor_nelem(bt) || t->shape[0] != rows) {
            return wmat_set_error(WMAT_ERR_INVALID, "%s and %s: tensor %s has %llu entries in the signature, %lld in %s", path,
                                  base_path, name, (unsigned long long)t->nelem, (long long)wmat_tensor_nelem(bt), base_path);
        }
    }
    return WMAT_OK;
}

/* base tensor += alpha * (full or A B) */
static int sig_add(const wmat_st_file *f, wmat_model *base, double alpha, const char *path)
{
    int rc = WMAT_OK;
    for (int i = 0; i < f->n_tensors && !rc; i++) {
        const wmat_st_tensor *t = &f->tensors[i];
        if (ends_with(t->name, ".B")) continue; /* with its A */
        const int is_a = ends_with(t->name, ".A");
        char name[SIG_NAME];
        snprintf(name, sizeof name, "%s", t->name);
        if (is_a) name[strlen(name) - 2] = 0;
        wmat_tensor *bt = wmat_model_find(base, name);
        rc = wmat__tensor_make_writable(bt);
        if (rc) break;
        float *w = bt->data;
        const int64_t n = wmat_tensor_nelem(bt);
        if (!is_a) {
            float *x = wmat__malloc((size_t)n * sizeof(float));
            if (!x) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", path);
            rc = st_f32(t, x, path);
            for (int64_t j = 0; j < n && !rc; j++) w[j] = (float)((double)w[j] + alpha * x[j]);
            wmat__free(x);
            continue;
        }
        char bn[SIG_NAME + 4];
        snprintf(bn, sizeof bn, "%s.B", name);
        const wmat_st_tensor *tb = wmat__st_find(f, bn);
        const int m = (int)bt->shape[0], c = (int)bt->shape[1], r = (int)t->shape[1];
        float *af = wmat__malloc(((size_t)m * r + (size_t)r * c) * sizeof(float));
        double *ad = wmat__malloc(((size_t)m * r + (size_t)r * c + (size_t)m * c) * sizeof(double));
        if (!af || !ad) {
            wmat__free(af);
            wmat__free(ad);
            return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", path);
        }
        float *bf = af + (size_t)m * r;
        double *bd = ad + (size_t)m * r, *prod = bd + (size_t)r * c;
        rc = st_f32(t, af, path);
        if (!rc) rc = st_f32(tb, bf, path);
        if (!rc) {
            for (size_t j = 0; j < (size_t)m * r; j++) ad[j] = af[j];
            for (size_t j = 0; j < (size_t)r * c; j++) bd[j] = bf[j];
            rc = wmat__dgemm(0, 0, m, c, r, 1.0, ad, r, bd, c, 0.0, prod, c);
        }
        for (int64_t j = 0; j < n && !rc; j++) w[j] = (float)((double)w[j] + alpha * prod[j]);
        wmat__free(af);
        wmat__free(ad);
    }
    return rc;
}

int wmat__sig_apply(const char *base, int n, const char *const *sigs, const double *alpha, const char *out,
                    wmat_format out_format, wmat_dtype out_dtype, const char *tokenizer_path, const wmat_context *ctx)
{
    (void)ctx;
    if (n < 1) return wmat_set_error(WMAT_ERR_INVALID, "signature: no signature to apply");
    int rc;
    wmat_model *mb = load_f32_tok(base, tokenizer_path, &rc);
    if (rc) return rc;
    wmat_st_file **fs = wmat__calloc((size_t)n, sizeof *fs);
    if (!fs) rc = wmat_set_error(WMAT_ERR_NOMEM, "signature: out of memory");
    /* every check before the first change */
    for (int i = 0; i < n && !rc; i++) {
        if (!isfinite(alpha[i])) rc = wmat_set_error(WMAT_ERR_INVALID, "%s: alpha %g is not finite", sigs[i], alpha[i]);
        if (!rc) rc = sig_open(&fs[i], sigs[i], mb, base);
        if (!rc) rc = sig_check_tensors(fs[i], mb, sigs[i], base);
    }
    for (int i = 0; i < n && !rc; i++) rc = sig_add(fs[i], mb, alpha[i], sigs[i]);
    for (int t = 0; t < wmat_model_n_tensors(mb) && !rc; t++) {
        const wmat_tensor *bt = wmat_model_tensor(mb, t);
        const float *w = bt->data;
        for (int64_t j = 0; j < wmat_tensor_nelem(bt); j++)
            if (!isfinite(w[j])) {
                rc = wmat_set_error(WMAT_ERR_NUMERIC, "%s: tensor %s has a non-finite value at index %lld", out, bt->name,
                                    (long long)j);
                break;
            }
    }
    if (!rc) {
        wmat_save_params sp = wmat_save_default_params();
        sp.format = out_format != WMAT_FMT_UNKNOWN ? out_format : wmat_format_for_path(out);
        sp.dtype = out_dtype;
        rc = wmat_model_save(mb, out, &sp);
    }
    for (int i = 0; fs && i < n; i++) wmat__st_close(fs[i]);
    wmat__free(fs);
    wmat_model_free(mb);
    return rc;
}

/* ---- info */

typedef struct {
    wmat_st_file *f;
    const char **keys, **values;
} info_priv;

int wmat__sig_info(const char *path, wmat_sig_info *info)
{
    memset(info, 0, sizeof *info);
    wmat_st_file *f = NULL;
    int rc = sig_open(&f, path, NULL, NULL);
    if (rc) return rc;
    info_priv *pv = wmat__calloc(1, sizeof *pv);
    wmat_sig_tensor *ts = wmat__calloc((size_t)f->n_tensors + 1, sizeof *ts);
    const char **kv = wmat__calloc(2 * (size_t)f->n_meta + 2, sizeof *kv);
    if (!pv || !ts || !kv) {
        wmat__free(pv);
        wmat__free(ts);
        wmat__free(kv);
        wmat__st_close(f);
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", path);
    }
    for (int i = 0; i < f->n_meta; i++) {
        kv[i] = f->meta[i].key;
        kv[f->n_meta + 1 + i] = f->meta[i].value;
    }
    pv->f = f;
    pv->keys = kv;
    pv->values = kv + f->n_meta + 1;
    info->priv = pv;
    info->n_meta = f->n_meta;
    info->keys = pv->keys;
    info->values = pv->values;
    info->rep.t = ts;
    for (int i = 0; i < f->n_tensors; i++) {
        const wmat_st_tensor *t = &f->tensors[i];
        info->rep.bytes += t->nbytes;
        if (ends_with(t->name, ".B")) continue;
        wmat_sig_tensor *st = &ts[info->rep.n++];
        snprintf(st->name, sizeof st->name, "%s", t->name);
        st->bytes = t->nbytes;
        if (ends_with(t->name, ".A")) {
            st->name[strlen(st->name) - 2] = 0;
            char bn[SIG_NAME];
            snprintf(bn, sizeof bn, "%s.B", st->name);
            const wmat_st_tensor *b = wmat__st_find(f, bn);
            st->rows = t->shape[0];
            st->cols = b && b->ndim == 2 ? b->shape[1] : 0;
            st->rank = t->ndim == 2 ? (int)t->shape[1] : 0;
            if (b) st->bytes += b->nbytes;
        } else {
            st->rows = t->ndim ? t->shape[0] : 1;
            st->cols = t->ndim > 1 ? t->shape[1] : 1;
            st->rank = -1;
        }
        info->rep.dense_bytes += (uint64_t)(st->rows * st->cols) * 4;
    }
    struct stat sb;
    if (!stat(path, &sb)) info->rep.file_bytes = (uint64_t)sb.st_size;
    return WMAT_OK;
}

void wmat__sig_info_free(wmat_sig_info *info)
{
    if (!info) return;
    info_priv *pv = info->priv;
    if (pv) {
        wmat__st_close(pv->f);
        wmat__free((void *)pv->keys);
        wmat__free(pv);
    }
    wmat__free(info->rep.t);
    memset(info, 0, sizeof *info);
}
