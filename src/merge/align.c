/* Weight matching for LLaMA (git re-basin) and linear mode connectivity:
 * the permutation groups, applying them to a model, coordinate ascent of
 * <A, pi(B)> over the groups (each step a linear assignment, lap.c),
 * interpolation and the loss along the path, and singular-subspace overlap.
 * align.h states the groups and the layout of the maps. */
#include "merge/align.h"

#include "linalg/dense.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const char *mname(wmat_model *m, const char *def)
{
    const char *p = wmat_model_path(m);
    return p ? p : def;
}

/* ---------------------------------------------------------------- permutations */

/* m[i] = i modulo block: the identity of every block of a map */
static void iota_blocks(int *m, int64_t total, int block)
{
    for (int64_t i = 0; i < total; i++) m[i] = (int)(i % block);
}

static int64_t moved_blocks(const int *m, int64_t total, int block)
{
    int64_t k = 0;
    for (int64_t i = 0; i < total; i++) k += m[i] != (int)(i % block);
    return k;
}

static void shuffle_blocks(int *m, int64_t total, int block, wmat_rng *r)
{
    for (int64_t b0 = 0; b0 < total; b0 += block)
        for (int i = block - 1; i > 0; i--) {
            const int j = (int)(wmat_rng_u64(r) % (uint64_t)(i + 1));
            const int t = m[b0 + i];
            m[b0 + i] = m[b0 + j];
            m[b0 + j] = t;
        }
}

int wmat__align_perm_init(wmat_align_perm *p, const wmat_config *c)
{
    memset(p, 0, sizeof *p);
    if (!c || c->dim <= 0 || c->hidden_dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        c->n_heads % c->n_kv_heads || c->dim % c->n_heads)
        return wmat_set_error(WMAT_ERR_INVALID, "align: bad config for permutations");
    p->dim = c->dim;
    p->hidden = c->hidden_dim;
    p->n_layers = c->n_layers;
    p->n_heads = c->n_heads;
    p->n_kv = c->n_kv_heads;
    p->head_dim = c->dim / c->n_heads;
    const int64_t L = p->n_layers, nkvd = (int64_t)p->n_kv * p->head_dim;
    const int64_t total = p->dim + L * (p->hidden + p->n_kv + p->n_heads + nkvd);
    int *buf = wmat__malloc((size_t)total * sizeof *buf);
    if (!buf) return wmat_set_error(WMAT_ERR_NOMEM, "align: out of memory for permutations");
    p->res = buf;
    p->ffn = p->res + p->dim;
    p->kv = p->ffn + L * p->hidden;
    p->qh = p->kv + L * p->n_kv;
    p->vd = p->qh + L * p->n_heads;
    iota_blocks(p->res, p->dim, p->dim);
    iota_blocks(p->ffn, L * p->hidden, p->hidden);
    iota_blocks(p->kv, L * p->n_kv, p->n_kv);
    iota_blocks(p->qh, L * p->n_heads, p->n_heads / p->n_kv);
    iota_blocks(p->vd, L * nkvd, p->head_dim);
    return WMAT_OK;
}

void wmat__align_perm_free(wmat_align_perm *p)
{
    if (!p) return;
    wmat__free(p->res);
    memset(p, 0, sizeof *p);
}

int64_t wmat__align_perm_moved(const wmat_align_perm *p)
{
    const int64_t L = p->n_layers;
    return moved_blocks(p->res, p->dim, p->dim) + moved_blocks(p->ffn, L * p->hidden, p->hidden) +
           moved_blocks(p->kv, L * p->n_kv, p->n_kv) + moved_blocks(p->qh, L * p->n_heads, p->n_heads / p->n_kv) +
           moved_blocks(p->vd, L * p->n_kv * p->head_dim, p->head_dim);
}

int wmat__align_perm_is_identity(const wmat_align_perm *p)
{
    return wmat__align_perm_moved(p) == 0;
}

void wmat__align_perm_random(wmat_align_perm *p, uint64_t seed)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    const int64_t L = p->n_layers;
    shuffle_blocks(p->res, p->dim, p->dim, &r);
    shuffle_blocks(p->ffn, L * p->hidden, p->hidden, &r);
    shuffle_blocks(p->kv, L * p->n_kv, p->n_kv, &r);
    shuffle_blocks(p->qh, L * p->n_heads, p->n_heads / p->n_kv, &r);
    shuffle_blocks(p->vd, L * p->n_kv * p->head_dim, p->head_dim, &r);
}

/* ---------------------------------------------------------------- models */

static int check_f32(wmat_model *m, const char *what)
{
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        const wmat_tensor *t = wmat_model_tensor(m, i);
        if (t->dtype != WMAT_F32 || !t->data)
            return wmat_set_error(WMAT_ERR_INVALID, "%s: tensor %s is %s; alignment works on fp32 weights", mname(m, what),
                                  t->name, wmat_dtype_info(t->dtype) ? wmat_dtype_info(t->dtype)->name : "?");
    }
    return WMAT_OK;
}

static int check_pair(wmat_model *A, wmat_model *B)
{
    const wmat_config *a = wmat_model_config(A), *b = wmat_model_config(B);
    struct {
        const char *key;
        int x, y;
    } f[] = {{"dim", a->dim, b->dim},
             {"hidden_dim", a->hidden_dim, b->hidden_dim},
             {"n_layers", a->n_layers, b->n_layers},
             {"n_heads", a->n_heads, b->n_heads},
             {"n_kv_heads", a->n_kv_heads, b->n_kv_heads},
             {"vocab_size", a->vocab_size, b->vocab_size},
             {"tied_embeddings", a->tied_embeddings, b->tied_embeddings}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].x != f[i].y)
            return wmat_set_error(WMAT_ERR_INVALID, "%s and %s: different architectures (%s %d vs %d)", mname(A, "A"),
                                  mname(B, "B"), f[i].key, f[i].x, f[i].y);
    if (wmat_model_n_tensors(A) != wmat_model_n_tensors(B))
        return wmat_set_error(WMAT_ERR_INVALID, "%s and %s: different tensor counts (%d vs %d)", mname(A, "A"), mname(B, "B"),
                              wmat_model_n_tensors(A), wmat_model_n_tensors(B));
    int rc = check_f32(A, "A");
    return rc ? rc : check_f32(B, "B");
}

static int check_perm(const wmat_align_perm *p, const wmat_config *c)
{
    if (!p->res || p->dim != c->dim || p->hidden != c->hidden_dim || p->n_layers != c->n_layers ||
        p->n_heads != c->n_heads || p->n_kv != c->n_kv_heads)
        return wmat_set_error(WMAT_ERR_INVALID, "align: the permutations are for another architecture");
    return WMAT_OK;
}

static float *lw(wmat_model *m, int l, wmat_layer_weight w)
{
    return (float *)wmat_model_layer_tensor(m, l, w)->data;
}

/* dst (rows, cols) = src[rmap[i]][cmap[j]] (NULL map: identity) */
static void gather(float *dst, const float *src, int64_t rows, int64_t cols, const int *rmap, const int *cmap)
{
    for (int64_t i = 0; i < rows; i++) {
        const float *s = src + (rmap ? rmap[i] : i) * cols;
        float *d = dst + i * cols;
        if (cmap)
            for (int64_t j = 0; j < cols; j++) d[j] = s[cmap[j]];
        else
            memcpy(d, s, (size_t)cols * sizeof *d);
    }
}

static void permute_inplace(float *x, int64_t rows, int64_t cols, const int *rmap, const int *cmap, float *scratch)
{
    memcpy(scratch, x, (size_t)(rows * cols) * sizeof *x);
    gather(x, scratch, rows, cols, rmap, cmap);
}

/* Row maps of q, k, v and the column map of o of layer l (align.h's
 * convention: aligned index -> B's index). */
static void attn_maps(const wmat_align_perm *p, int l, int *qrow, int *krow, int *vrow, int *ocol)
{
    const int g = p->n_heads / p->n_kv, hd = p->head_dim;
    const int *kv = p->kv + (int64_t)l * p->n_kv, *qh = p->qh + (int64_t)l * p->n_heads,
              *vd = p->vd + (int64_t)l * p->n_kv * hd;
    for (int j = 0; j < p->n_kv; j++) {
        for (int e = 0; e < hd; e++) {
            krow[j * hd + e] = kv[j] * hd + e;
            vrow[j * hd + e] = kv[j] * hd + vd[j * hd + e];
        }
        for (int s = 0; s < g; s++) {
            const int h = j * g + s, src = kv[j] * g + qh[h];
            for (int e = 0; e < hd; e++) {
                qrow[h * hd + e] = src * hd + e;
                ocol[h * hd + e] = src * hd + vd[j * hd + e];
            }
        }
    }
}

int wmat__align_apply(wmat_model *B, const wmat_align_perm *p, wmat_model **out)
{
    *out = NULL;
    const wmat_config *c = wmat_model_config(B);
    int rc = check_f32(B, "B");
    if (!rc) rc = check_perm(p, c);
    if (rc) return rc;
    wmat_model *m = NULL;
    int *maps = NULL;
    if ((rc = wmat_model_create(&m, c))) return rc;
    if (wmat_model_n_tensors(m) != wmat_model_n_tensors(B)) {
        rc = wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: has %d tensors where a LLaMA model of its config has %d; alignment "
                            "permutes only those", mname(B, "B"), wmat_model_n_tensors(B), wmat_model_n_tensors(m));
        goto fail;
    }
    if (wmat_model_tokenizer(B)) {
        wmat_tokenizer *tok = NULL;
        if ((rc = wmat_tokenizer_clone(wmat_model_tokenizer(B), &tok))) goto fail;
        wmat_model_set_tokenizer(m, tok);
    }
    const int64_t D = c->dim, H = c->hidden_dim, V = c->vocab_size, nq = (int64_t)p->n_heads * p->head_dim,
                  nk = (int64_t)p->n_kv * p->head_dim;
    maps = wmat__malloc((size_t)(2 * nq + 2 * nk) * sizeof *maps);
    if (!maps) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "align: out of memory");
        goto fail;
    }
    int *qrow = maps, *ocol = qrow + nq, *krow = ocol + nq, *vrow = krow + nk;
    gather(wmat_model_tok_embeddings(m)->data, wmat_model_tok_embeddings(B)->data, V, D, NULL, p->res);
    if (!c->tied_embeddings)
        gather(wmat_model_classifier(m)->data, wmat_model_classifier(B)->data, V, D, NULL, p->res);
    gather(wmat_model_final_norm(m)->data, wmat_model_final_norm(B)->data, 1, D, NULL, p->res);
    for (int l = 0; l < c->n_layers; l++) {
        const int *ffn = p->ffn + (int64_t)l * H;
        attn_maps(p, l, qrow, krow, vrow, ocol);
        gather(lw(m, l, WMAT_W_ATTN_NORM), lw(B, l, WMAT_W_ATTN_NORM), 1, D, NULL, p->res);
        gather(lw(m, l, WMAT_W_FFN_NORM), lw(B, l, WMAT_W_FFN_NORM), 1, D, NULL, p->res);
        gather(lw(m, l, WMAT_W_Q), lw(B, l, WMAT_W_Q), nq, D, qrow, p->res);
        gather(lw(m, l, WMAT_W_K), lw(B, l, WMAT_W_K), nk, D, krow, p->res);
        gather(lw(m, l, WMAT_W_V), lw(B, l, WMAT_W_V), nk, D, vrow, p->res);
        gather(lw(m, l, WMAT_W_O), lw(B, l, WMAT_W_O), D, nq, p->res, ocol);
        gather(lw(m, l, WMAT_W_GATE), lw(B, l, WMAT_W_GATE), H, D, ffn, p->res);
        gather(lw(m, l, WMAT_W_UP), lw(B, l, WMAT_W_UP), H, D, ffn, p->res);
        gather(lw(m, l, WMAT_W_DOWN), lw(B, l, WMAT_W_DOWN), D, H, p->res, ffn);
    }
    wmat__free(maps);
    *out = m;
    return WMAT_OK;
fail:
    wmat__free(maps);
    wmat_model_free(m);
    return rc;
}

int wmat__align_distance(wmat_model *A, wmat_model *B, double *dist, double *inner)
{
    double d2 = 0, ip = 0;
    for (int i = 0; i < wmat_model_n_tensors(A); i++) {
        const wmat_tensor *a = wmat_model_tensor(A, i), *b = wmat_model_find(B, a->name);
        if (!b || wmat_tensor_nelem(a) != wmat_tensor_nelem(b) || a->dtype != WMAT_F32 || b->dtype != WMAT_F32)
            return wmat_set_error(WMAT_ERR_INVALID, "%s and %s: tensor %s missing, of another shape or not fp32",
                                  mname(A, "A"), mname(B, "B"), a->name);
        const float *x = a->data, *y = b->data;
        const int64_t n = wmat_tensor_nelem(a);
        for (int64_t k = 0; k < n; k++) {
            const double df = (double)x[k] - (double)y[k];
            d2 += df * df;
            ip += (double)x[k] * (double)y[k];
        }
    }
    if (dist) *dist = sqrt(d2);
    if (inner) *inner = ip;
    return WMAT_OK;
}

static double model_norm(wmat_model *m)
{
    double s = 0;
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        const wmat_tensor *t = wmat_model_tensor(m, i);
        const float *x = t->data;
        for (int64_t k = 0; k < wmat_tensor_nelem(t); k++) s += (double)x[k] * (double)x[k];
    }
    return sqrt(s);
}

const char *const wmat__align_role_names[WMAT_ALIGN_ROLE_COUNT] = {"embed", "classifier", "norms", "q", "k",
                                                                   "v", "o", "gate", "up", "down"};

int wmat__align_role_cosines(wmat_model *A, wmat_model *B, double *cos)
{
    int rc = check_pair(A, B);
    if (rc) return rc;
    double ab[WMAT_ALIGN_ROLE_COUNT] = {0}, aa[WMAT_ALIGN_ROLE_COUNT] = {0}, bb[WMAT_ALIGN_ROLE_COUNT] = {0};
    const wmat_config *c = wmat_model_config(A);
    static const struct {
        wmat_layer_weight w;
        int role;
    } lr[] = {{WMAT_W_ATTN_NORM, WMAT_ALIGN_ROLE_NORMS}, {WMAT_W_FFN_NORM, WMAT_ALIGN_ROLE_NORMS}, {WMAT_W_Q, WMAT_ALIGN_ROLE_Q},
              {WMAT_W_K, WMAT_ALIGN_ROLE_K},                {WMAT_W_V, WMAT_ALIGN_ROLE_V},           {WMAT_W_O, WMAT_ALIGN_ROLE_O},
              {WMAT_W_GATE, WMAT_ALIGN_ROLE_GATE},          {WMAT_W_UP, WMAT_ALIGN_ROLE_UP},         {WMAT_W_DOWN, WMAT_ALIGN_ROLE_DOWN}};
    const int n_pairs = 3 + c->n_layers * (int)(sizeof lr / sizeof lr[0]);
    for (int i = 0; i < n_pairs; i++) {
        const wmat_tensor *x, *y;
        int role;
        if (i == 0) {
            x = wmat_model_tok_embeddings(A), y = wmat_model_tok_embeddings(B), role = WMAT_ALIGN_ROLE_EMBED;
        } else if (i == 1) {
            if (c->tied_embeddings) continue;
            x = wmat_model_classifier(A), y = wmat_model_classifier(B), role = WMAT_ALIGN_ROLE_CLASSIFIER;
        } else if (i == 2) {
            x = wmat_model_final_norm(A), y = wmat_model_final_norm(B), role = WMAT_ALIGN_ROLE_NORMS;
        } else {
            const int k = i - 3, l = k / (int)(sizeof lr / sizeof lr[0]), w = k % (int)(sizeof lr / sizeof lr[0]);
            x = wmat_model_layer_tensor(A, l, lr[w].w), y = wmat_model_layer_tensor(B, l, lr[w].w), role = lr[w].role;
        }
        const float *p = x->data, *q = y->data;
        for (int64_t e = 0; e < wmat_tensor_nelem(x); e++) {
            ab[role] += (double)p[e] * q[e];
            aa[role] += (double)p[e] * p[e];
            bb[role] += (double)q[e] * q[e];
        }
    }
    for (int r = 0; r < WMAT_ALIGN_ROLE_COUNT; r++) cos[r] = aa[r] > 0 && bb[r] > 0 ? ab[r] / sqrt(aa[r] * bb[r]) : NAN;
    return WMAT_OK;
}

/* ---------------------------------------------------------------- matching */

enum { G_RES, G_FFN, G_KV, G_QH, G_VD };

typedef struct {
    int kind, layer, group;
} align_group;

typedef struct {
    wmat_model *A, *Bp;         /* Bp: pi(B) under the current permutations, kept up to date */
    wmat_align_perm *p;
    const wmat_config *c;
    int nt, g, hd, n_max;
    float *scratch;             /* the largest tensor */
    double *da, *db;            /* the largest tensor, twice, for the GEMMs of the cost */
    double *C;                  /* (n_max, n_max) */
    int *q, *tmp, *map1, *map2; /* n_max; the largest permuted axis (two maps) */
    int *tmp2;                  /* n_heads + n_kv * head_dim: a KV step's inner maps */
    void *lap_ws;
} matcher;

static double dotf(const float *a, const float *b, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}

static void to_double(double *d, const float *s, int64_t n)
{
    for (int64_t i = 0; i < n; i++) d[i] = s[i];
}

/* C (cols, cols) += a^T b for a, b (rows, cols): the permuted axis is the columns */
static int add_cols(matcher *mt, double *C, const float *a, const float *b, int64_t rows, int64_t cols)
{
    to_double(mt->da, a, rows * cols);
    to_double(mt->db, b, rows * cols);
    return wmat__dgemm(1, 0, (int)cols, (int)cols, (int)rows, 1.0, mt->da, (int)cols, mt->db, (int)cols, 1.0, C, (int)cols);
}

/* C (rows, rows) += a b^T: the permuted axis is the rows */
static int add_rows(matcher *mt, double *C, const float *a, const float *b, int64_t rows, int64_t cols)
{
    to_double(mt->da, a, rows * cols);
    to_double(mt->db, b, rows * cols);
    return wmat__dgemm(0, 1, (int)rows, (int)rows, (int)cols, 1.0, mt->da, (int)cols, mt->db, (int)cols, 1.0, C, (int)rows);
}

static int group_size(const matcher *mt, const align_group *gr)
{
    switch (gr->kind) {
    case G_RES: return mt->c->dim;
    case G_FFN: return mt->c->hidden_dim;
    case G_KV: return mt->c->n_kv_heads;
    case G_QH: return mt->g;
    default: return mt->hd;
    }
}

/* C[i][k] = the part of <A, pi(B)> that aligned index i gets when it takes
 * index k of the current pi(B), summed over every tensor the group touches. */
static int group_cost(matcher *mt, const align_group *gr, double *C)
{
    const wmat_config *c = mt->c;
    wmat_model *A = mt->A, *B = mt->Bp;
    const int n = group_size(mt, gr), l = gr->layer, j = gr->group, g = mt->g, hd = mt->hd, nt = mt->nt;
    const int64_t D = c->dim, H = c->hidden_dim, nhd = (int64_t)c->n_heads * hd;
    memset(C, 0, (size_t)n * (size_t)n * sizeof *C);
    int rc = WMAT_OK;
    if (gr->kind == G_RES) {
        rc = add_cols(mt, C, wmat_model_tok_embeddings(A)->data, wmat_model_tok_embeddings(B)->data, c->vocab_size, D);
        if (!rc && !c->tied_embeddings)
            rc = add_cols(mt, C, wmat_model_classifier(A)->data, wmat_model_classifier(B)->data, c->vocab_size, D);
        if (!rc) rc = add_cols(mt, C, wmat_model_final_norm(A)->data, wmat_model_final_norm(B)->data, 1, D);
        for (int k = 0; k < c->n_layers && !rc; k++) {
            static const wmat_layer_weight in_cols[] = {WMAT_W_ATTN_NORM, WMAT_W_FFN_NORM, WMAT_W_Q, WMAT_W_K,
                                                        WMAT_W_V, WMAT_W_GATE, WMAT_W_UP};
            for (size_t w = 0; w < sizeof in_cols / sizeof in_cols[0] && !rc; w++) {
                const wmat_tensor *t = wmat_model_layer_tensor(A, k, in_cols[w]);
                rc = add_cols(mt, C, t->data, lw(B, k, in_cols[w]), t->ndim == 1 ? 1 : t->shape[0], D);
            }
            if (!rc) rc = add_rows(mt, C, lw(A, k, WMAT_W_O), lw(B, k, WMAT_W_O), D, nhd);
            if (!rc) rc = add_rows(mt, C, lw(A, k, WMAT_W_DOWN), lw(B, k, WMAT_W_DOWN), D, H);
        }
    } else if (gr->kind == G_FFN) {
        rc = add_rows(mt, C, lw(A, l, WMAT_W_GATE), lw(B, l, WMAT_W_GATE), H, D);
        if (!rc) rc = add_rows(mt, C, lw(A, l, WMAT_W_UP), lw(B, l, WMAT_W_UP), H, D);
        if (!rc) rc = add_cols(mt, C, lw(A, l, WMAT_W_DOWN), lw(B, l, WMAT_W_DOWN), D, H);
    } else {
        const float *qa = lw(A, l, WMAT_W_Q), *qb = lw(B, l, WMAT_W_Q), *ka = lw(A, l, WMAT_W_K), *kb = lw(B, l, WMAT_W_K);
        const float *va = lw(A, l, WMAT_W_V), *vb = lw(B, l, WMAT_W_V), *oa = lw(A, l, WMAT_W_O), *ob = lw(B, l, WMAT_W_O);
        const int64_t hsz = hd * D; /* one head's rows of q, k or v */
        if (gr->kind == G_KV) {
            /* a KV group: its k and v blocks, its g query heads and their columns of o */
#pragma omp parallel for collapse(2) num_threads(nt) schedule(static)
            for (int a = 0; a < n; a++)
                for (int b = 0; b < n; b++) {
                    double s = dotf(ka + a * hsz, kb + b * hsz, hsz) + dotf(va + a * hsz, vb + b * hsz, hsz) +
                               dotf(qa + (int64_t)a * g * hsz, qb + (int64_t)b * g * hsz, g * hsz);
                    for (int64_t r = 0; r < D; r++)
                        s += dotf(oa + r * nhd + (int64_t)a * g * hd, ob + r * nhd + (int64_t)b * g * hd, (int64_t)g * hd);
                    C[a * n + b] = s;
                }
        } else if (gr->kind == G_QH) {
            /* query heads of aligned group j: a head's q rows and its columns of o */
#pragma omp parallel for collapse(2) num_threads(nt) schedule(static)
            for (int a = 0; a < n; a++)
                for (int b = 0; b < n; b++) {
                    const int64_t ha = (int64_t)j * g + a, hb = (int64_t)j * g + b;
                    double s = dotf(qa + ha * hsz, qb + hb * hsz, hsz);
                    for (int64_t r = 0; r < D; r++) s += dotf(oa + r * nhd + ha * hd, ob + r * nhd + hb * hd, hd);
                    C[a * n + b] = s;
                }
        } else {
            /* value dims of aligned KV head j: rows of v, and the matching
             * column of o in every query head of the group */
#pragma omp parallel for num_threads(nt) schedule(static)
            for (int a = 0; a < n; a++)
                for (int b = 0; b < n; b++) {
                    double s = dotf(va + ((int64_t)j * hd + a) * D, vb + ((int64_t)j * hd + b) * D, D);
                    for (int h = 0; h < g; h++) {
                        const int64_t col = ((int64_t)j * g + h) * hd;
                        for (int64_t r = 0; r < D; r++) s += (double)oa[r * nhd + col + a] * (double)ob[r * nhd + col + b];
                    }
                    C[a * n + b] = s;
                }
        }
    }
    return rc;
}

/* Move index q[i] of the current pi(B) to i along the group's axes and
 * compose q into the maps. */
static void group_apply(matcher *mt, const align_group *gr, const int *q)
{
    const wmat_config *c = mt->c;
    wmat_model *B = mt->Bp;
    wmat_align_perm *p = mt->p;
    const int n = group_size(mt, gr), l = gr->layer, j = gr->group, g = mt->g, hd = mt->hd;
    const int64_t D = c->dim, H = c->hidden_dim, V = c->vocab_size, nhd = (int64_t)c->n_heads * hd,
                  nkd = (int64_t)c->n_kv_heads * hd;
    float *sc = mt->scratch;
    int *tmp = mt->tmp, *rmap = mt->map1, *cmap = mt->map2;
    if (gr->kind == G_RES) {
        permute_inplace(wmat_model_tok_embeddings(B)->data, V, D, NULL, q, sc);
        if (!c->tied_embeddings) permute_inplace(wmat_model_classifier(B)->data, V, D, NULL, q, sc);
        permute_inplace(wmat_model_final_norm(B)->data, 1, D, NULL, q, sc);
        for (int k = 0; k < c->n_layers; k++) {
            permute_inplace(lw(B, k, WMAT_W_ATTN_NORM), 1, D, NULL, q, sc);
            permute_inplace(lw(B, k, WMAT_W_FFN_NORM), 1, D, NULL, q, sc);
            permute_inplace(lw(B, k, WMAT_W_Q), nhd, D, NULL, q, sc);
            permute_inplace(lw(B, k, WMAT_W_K), nkd, D, NULL, q, sc);
            permute_inplace(lw(B, k, WMAT_W_V), nkd, D, NULL, q, sc);
            permute_inplace(lw(B, k, WMAT_W_GATE), H, D, NULL, q, sc);
            permute_inplace(lw(B, k, WMAT_W_UP), H, D, NULL, q, sc);
            permute_inplace(lw(B, k, WMAT_W_O), D, nhd, q, NULL, sc);
            permute_inplace(lw(B, k, WMAT_W_DOWN), D, H, q, NULL, sc);
        }
        memcpy(tmp, p->res, (size_t)n * sizeof *tmp);
        for (int i = 0; i < n; i++) p->res[i] = tmp[q[i]];
        return;
    }
    if (gr->kind == G_FFN) {
        permute_inplace(lw(B, l, WMAT_W_GATE), H, D, q, NULL, sc);
        permute_inplace(lw(B, l, WMAT_W_UP), H, D, q, NULL, sc);
        permute_inplace(lw(B, l, WMAT_W_DOWN), D, H, NULL, q, sc);
        int *f = p->ffn + (int64_t)l * H;
        memcpy(tmp, f, (size_t)n * sizeof *tmp);
        for (int i = 0; i < n; i++) f[i] = tmp[q[i]];
        return;
    }
    int *kv = p->kv + (int64_t)l * c->n_kv_heads, *qh = p->qh + (int64_t)l * c->n_heads, *vd = p->vd + (int64_t)l * nkd;
    /* rmap: rows of q (and, with head blocks, columns of o); cmap: rows of k / v */
    for (int64_t i = 0; i < nhd; i++) rmap[i] = (int)i;
    for (int64_t i = 0; i < nkd; i++) cmap[i] = (int)i;
    if (gr->kind == G_KV) {
        for (int a = 0; a < n; a++) {
            for (int e = 0; e < hd; e++) cmap[a * hd + e] = q[a] * hd + e;
            for (int s = 0; s < g; s++)
                for (int e = 0; e < hd; e++) rmap[(a * g + s) * hd + e] = (q[a] * g + s) * hd + e;
        }
        permute_inplace(lw(B, l, WMAT_W_K), nkd, D, cmap, NULL, sc);
        permute_inplace(lw(B, l, WMAT_W_V), nkd, D, cmap, NULL, sc);
        permute_inplace(lw(B, l, WMAT_W_Q), nhd, D, rmap, NULL, sc);
        permute_inplace(lw(B, l, WMAT_W_O), D, nhd, NULL, rmap, sc);
        /* the group's inner maps travel with it */
        memcpy(tmp, kv, (size_t)n * sizeof *tmp);
        for (int a = 0; a < n; a++) kv[a] = tmp[q[a]];
        int *t2 = mt->tmp2;
        memcpy(t2, qh, (size_t)c->n_heads * sizeof *t2);
        memcpy(t2 + c->n_heads, vd, (size_t)nkd * sizeof *t2);
        for (int a = 0; a < n; a++) {
            for (int s = 0; s < g; s++) qh[a * g + s] = t2[q[a] * g + s];
            for (int e = 0; e < hd; e++) vd[a * hd + e] = t2[c->n_heads + q[a] * hd + e];
        }
        return;
    }
    if (gr->kind == G_QH) {
        for (int s = 0; s < g; s++)
            for (int e = 0; e < hd; e++) rmap[((int64_t)j * g + s) * hd + e] = (int)(((int64_t)j * g + q[s]) * hd + e);
        permute_inplace(lw(B, l, WMAT_W_Q), nhd, D, rmap, NULL, sc);
        permute_inplace(lw(B, l, WMAT_W_O), D, nhd, NULL, rmap, sc);
        memcpy(tmp, qh + (int64_t)j * g, (size_t)g * sizeof *tmp);
        for (int s = 0; s < g; s++) qh[(int64_t)j * g + s] = tmp[q[s]];
        return;
    }
    /* G_VD */
    for (int e = 0; e < hd; e++) cmap[(int64_t)j * hd + e] = (int)((int64_t)j * hd + q[e]);
    for (int s = 0; s < g; s++)
        for (int e = 0; e < hd; e++) rmap[((int64_t)j * g + s) * hd + e] = (int)(((int64_t)j * g + s) * hd + q[e]);
    permute_inplace(lw(B, l, WMAT_W_V), nkd, D, cmap, NULL, sc);
    permute_inplace(lw(B, l, WMAT_W_O), D, nhd, NULL, rmap, sc);
    memcpy(tmp, vd + (int64_t)j * hd, (size_t)hd * sizeof *tmp);
    for (int e = 0; e < hd; e++) vd[(int64_t)j * hd + e] = tmp[q[e]];
}

/* One coordinate step: the best assignment for the group with the others
 * fixed; applied when it beats the current one by more than rounding. */
static int group_step(matcher *mt, const align_group *gr, int *changed)
{
    *changed = 0;
    const int n = group_size(mt, gr);
    int rc = group_cost(mt, gr, mt->C);
    if (rc) return rc;
    double val, tr = 0, amax = 0;
    if ((rc = wmat__lap_max(mt->C, n, mt->q, &val, mt->lap_ws))) return rc;
    for (int i = 0; i < n; i++) tr += mt->C[(size_t)i * n + i];
    for (int64_t k = 0; k < (int64_t)n * n; k++) amax = fmax(amax, fabs(mt->C[k]));
    /* C comes from double GEMMs: a gain below this is a tie, and taking it
     * could cycle between equal assignments */
    if (val - tr > 1e-10 * amax * n) {
        group_apply(mt, gr, mt->q);
        *changed = 1;
    }
    return WMAT_OK;
}

wmat_align_params wmat__align_default_params(void)
{
    wmat_align_params p;
    memset(&p, 0, sizeof p);
    p.max_iter = 100;
    p.seed = 1;
    return p;
}

int wmat__align_match(wmat_model *A, wmat_model *B, const wmat_align_params *pp, wmat_align_perm *perm,
                      wmat_align_report *rep)
{
    const wmat_align_params dp = wmat__align_default_params();
    const wmat_align_params *p = pp ? pp : &dp;
    if (rep) memset(rep, 0, sizeof *rep);
    int rc = check_pair(A, B);
    if (!rc) rc = check_perm(perm, wmat_model_config(A));
    if (rc) return rc;
    if (p->max_iter < 0) return wmat_set_error(WMAT_ERR_INVALID, "align: max_iter must be >= 0 (got %d)", p->max_iter);
    const double t0 = now_s();
    matcher mt;
    memset(&mt, 0, sizeof mt);
    align_group *groups = NULL;
    mt.A = A;
    mt.p = perm;
    mt.c = wmat_model_config(A);
    mt.nt = wmat_context_threads(p->ctx);
    mt.g = mt.c->n_heads / mt.c->n_kv_heads;
    mt.hd = perm->head_dim;
    if ((rc = wmat__align_apply(B, perm, &mt.Bp))) return rc;
    const wmat_config *c = mt.c;
    int64_t big = 0;
    for (int i = 0; i < wmat_model_n_tensors(A); i++) {
        const int64_t ne = wmat_tensor_nelem(wmat_model_tensor(A, i));
        if (ne > big) big = ne;
    }
    const int64_t nhd = (int64_t)c->n_heads * mt.hd;
    mt.n_max = c->dim > c->hidden_dim ? c->dim : c->hidden_dim;
    if (mt.hd > mt.n_max) mt.n_max = mt.hd;
    if (c->n_kv_heads > mt.n_max) mt.n_max = c->n_kv_heads;
    const int64_t maplen = nhd > mt.n_max ? nhd : mt.n_max;
    const int L = c->n_layers, nkv = c->n_kv_heads;
    const int n_groups = 1 + L * (1 + (nkv > 1) + nkv * (mt.g > 1) + nkv * (mt.hd > 1));
    mt.scratch = wmat__malloc((size_t)big * sizeof(float));
    mt.da = wmat__malloc((size_t)big * sizeof(double));
    mt.db = wmat__malloc((size_t)big * sizeof(double));
    mt.C = wmat__malloc((size_t)mt.n_max * (size_t)mt.n_max * sizeof(double));
    mt.q = wmat__malloc((size_t)mt.n_max * sizeof(int));
    mt.tmp = wmat__malloc((size_t)mt.n_max * sizeof(int));
    mt.map1 = wmat__malloc((size_t)maplen * sizeof(int));
    mt.map2 = wmat__malloc((size_t)maplen * sizeof(int));
    mt.lap_ws = wmat__malloc(wmat__lap_ws_bytes(mt.n_max));
    mt.tmp2 = wmat__malloc((size_t)(c->n_heads + (int64_t)nkv * mt.hd) * sizeof(int));
    groups = wmat__malloc((size_t)n_groups * sizeof *groups);
    if (!mt.scratch || !mt.da || !mt.db || !mt.C || !mt.q || !mt.tmp || !mt.map1 || !mt.map2 || !mt.lap_ws || !mt.tmp2 || !groups) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "align: out of memory (largest tensor %lld elements)", (long long)big);
        goto done;
    }
    int ng = 0;
    groups[ng++] = (align_group){G_RES, -1, -1};
    for (int l = 0; l < L; l++) {
        groups[ng++] = (align_group){G_FFN, l, -1};
        if (nkv > 1) groups[ng++] = (align_group){G_KV, l, -1};
        for (int j = 0; j < nkv; j++) {
            if (mt.g > 1) groups[ng++] = (align_group){G_QH, l, j};
            if (mt.hd > 1) groups[ng++] = (align_group){G_VD, l, j};
        }
    }
    wmat_align_report r;
    memset(&r, 0, sizeof r);
    r.groups = ng;
    r.norm_a = model_norm(A);
    r.norm_b = model_norm(mt.Bp);
    if ((rc = wmat__align_distance(A, mt.Bp, &r.dist_before, &r.inner_before))) goto done;
    r.dist_after = r.dist_before;
    r.inner_after = r.inner_before;
    wmat_rng rng;
    wmat_rng_seed(&rng, p->seed);
    for (int it = 0; it < p->max_iter; it++) {
        for (int i = ng - 1; i > 0; i--) { /* a fresh random order per sweep */
            const int k = (int)(wmat_rng_u64(&rng) % (uint64_t)(i + 1));
            const align_group t = groups[i];
            groups[i] = groups[k];
            groups[k] = t;
        }
        int improved = 0;
        for (int i = 0; i < ng; i++) {
            int ch;
            if ((rc = group_step(&mt, &groups[i], &ch))) goto done;
            improved += ch;
        }
        r.iters = it + 1;
        if ((rc = wmat__align_distance(A, mt.Bp, &r.dist_after, &r.inner_after))) goto done;
        if (p->on_iter) {
            wmat_align_iter ii = {it + 1, ng, improved, r.inner_after, r.dist_after, now_s() - t0};
            p->on_iter(p->user, &ii);
        }
        if (!improved) {
            r.converged = 1;
            break;
        }
    }
    r.seconds = now_s() - t0;
    if (rep) *rep = r;
done:
    wmat_model_free(mt.Bp);
    wmat__free(mt.scratch);
    wmat__free(mt.da);
    wmat__free(mt.db);
    wmat__free(mt.C);
    wmat__free(mt.q);
    wmat__free(mt.tmp);
    wmat__free(mt.map1);
    wmat__free(mt.map2);
    wmat__free(mt.lap_ws);
    wmat__free(mt.tmp2);
    wmat__free(groups);
    return rc;
}

/* ---------------------------------------------------------------- linear mode connectivity */

int wmat__align_lerp(wmat_model *out, wmat_model *A, wmat_model *B, double t)
{
    int rc = check_pair(A, B);
    if (!rc && out != A && out != B) rc = check_pair(A, out);
    if (rc) return rc;
    for (int i = 0; i < wmat_model_n_tensors(out); i++) {
        wmat_tensor *o = wmat_model_tensor(out, i);
        const wmat_tensor *a = wmat_model_find(A, o->name), *b = wmat_model_find(B, o->name);
        if (!a || !b || wmat_tensor_nelem(a) != wmat_tensor_nelem(o) || wmat_tensor_nelem(b) != wmat_tensor_nelem(o))
            return wmat_set_error(WMAT_ERR_INVALID, "%s and %s: tensor %s missing or of another shape", mname(A, "A"),
                                  mname(B, "B"), o->name);
        const float *x = a->data, *y = b->data;
        float *z = o->data;
        const int64_t n = wmat_tensor_nelem(o);
        /* (1 - t) x + t y in double: t = 0 and 1 give x and y exactly */
        for (int64_t k = 0; k < n; k++) z[k] = (float)((1.0 - t) * (double)x[k] + t * (double)y[k]);
    }
    return WMAT_OK;
}

int wmat__align_lmc_curve(wmat_model *A, wmat_model *B, int n_points, const int32_t *tokens, size_t n, int ctx,
                          int max_windows, const wmat_context *cx, double *loss)
{
    if (n_points < 2) return wmat_set_error(WMAT_ERR_INVALID, "align: the path needs at least 2 points (got %d)", n_points);
    int rc = check_pair(A, B);
    if (rc) return rc;
    wmat_model *m = NULL;
    wmat_runtime *rt = NULL;
    if ((rc = wmat_model_create(&m, wmat_model_config(A)))) return rc;
    if ((rc = wmat__align_lerp(m, A, B, 0.0))) goto done;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = ctx;
    rp.kv_cache_len = 1;
    rp.ctx = cx;
    rp.pack_weights = 0; /* the weights change between points */
    if ((rc = wmat_runtime_create(&rt, m, &rp))) goto done;
    for (int k = 0; k < n_points; k++) {
        wmat_eval_result er;
        if ((rc = wmat__align_lerp(m, A, B, (double)k / (n_points - 1)))) goto done;
        if ((rc = wmat_eval_tokens(rt, tokens, n, ctx, max_windows, &er))) goto done;
        loss[k] = er.mean_nll;
    }
done:
    wmat_runtime_free(rt);
    wmat_model_free(m);
    return rc;
}

/* ---------------------------------------------------------------- singular subspaces */

/* Top-k left (U, (rows, k)) and right (VT, (k, cols)) singular vectors of t. */
static int top_sv(const wmat_tensor *t, int k, double *U, double *VT)
{
    const int64_t M = t->shape[0], N = t->shape[1], mn = M < N ? M : N;
    double *a = wmat__malloc((size_t)(M * N + M * mn + mn * N + mn) * sizeof *a);
    if (!a) return wmat_set_error(WMAT_ERR_NOMEM, "align: out of memory for the SVD of %s", t->name);
    double *u = a + M * N, *vt = u + M * mn, *s = vt + mn * N;
    to_double(a, t->data, M * N);
    int rc = wmat__dgesdd((int)M, (int)N, a, (int)N, s, u, (int)mn, vt, (int)N);
    if (!rc) {
        for (int64_t r = 0; r < M; r++)
            for (int i = 0; i < k; i++) U[r * k + i] = u[r * mn + i];
        memcpy(VT, vt, (size_t)(k * N) * sizeof *VT);
    }
    wmat__free(a);
    return rc;
}

/* ||X^T Y||_F^2 / k for X, Y (n, k) row-major */
static double overlap_cols(const double *X, const double *Y, int64_t n, int k)
{
    double s = 0;
    for (int a = 0; a < k; a++)
        for (int b = 0; b < k; b++) {
            double d = 0;
            for (int64_t r = 0; r < n; r++) d += X[r * k + a] * Y[r * k + b];
            s += d * d;
        }
    return s / k;
}

/* ||X Y^T||_F^2 / k for X, Y (k, n) row-major */
static double overlap_rows(const double *X, const double *Y, int64_t n, int k)
{
    double s = 0;
    for (int a = 0; a < k; a++)
        for (int b = 0; b < k; b++) {
            double d = 0;
            for (int64_t r = 0; r < n; r++) d += X[a * n + r] * Y[b * n + r];
            s += d * d;
        }
    return s / k;
}

int wmat__align_sv_overlap(wmat_model *A, wmat_model *B, int k, double *left, double *right)
{
    if (k <= 0) return wmat_set_error(WMAT_ERR_INVALID, "align: overlap of the top k singular vectors needs k > 0");
    int rc = check_pair(A, B);
    if (rc) return rc;
    double sl = 0, sr = 0;
    int cnt = 0;
    for (int i = 0; i < wmat_model_n_tensors(A) && !rc; i++) {
        const wmat_tensor *a = wmat_model_tensor(A, i), *b = wmat_model_find(B, a->name);
        if (a->ndim != 2) continue;
        if (!b || b->ndim != 2 || b->shape[0] != a->shape[0] || b->shape[1] != a->shape[1])
            return wmat_set_error(WMAT_ERR_INVALID, "%s and %s: tensor %s missing or of another shape", mname(A, "A"),
                                  mname(B, "B"), a->name);
        const int64_t M = a->shape[0], N = a->shape[1], mn = M < N ? M : N;
        const int kk = (int)(k < mn ? k : mn);
        double *buf = wmat__malloc((size_t)(2 * kk * (M + N)) * sizeof *buf);
        if (!buf) return wmat_set_error(WMAT_ERR_NOMEM, "align: out of memory");
        double *ua = buf, *ub = ua + kk * M, *va = ub + kk * M, *vb = va + kk * N;
        rc = top_sv(a, kk, ua, va);
        if (!rc) rc = top_sv(b, kk, ub, vb);
        if (!rc) {
            sl += overlap_cols(ua, ub, M, kk);
            sr += overlap_rows(va, vb, N, kk);
            cnt++;
        }
        wmat__free(buf);
    }
    if (rc) return rc;
    if (left) *left = cnt ? sl / cnt : 0;
    if (right) *right = cnt ? sr / cnt : 0;
    return WMAT_OK;
}
