/* GGUF block types chosen per tensor the way llama.cpp's quantizer does
 * (its file types Q4_K_M, Q3_K_S, ...), and wmat's methods choosing the
 * values inside those blocks (wmat_quantize_params.ggml):
 *
 *   rtn      llama.cpp's reference search (its bytes without an imatrix)
 *   imatrix  llama.cpp's importance-weighted search, weights mean x_j^2
 *   gptq     GPTQ's column loop (gptq.c's wmat__gptq_feedback_sub) over the
 *            inputs; when the loop reaches a super-block (256 inputs of a
 *            row; 32 for the 32-block fallback types) the block's grid is
 *            fitted from the error-fed columns by the weighted search
 *            (weights diag H), then each column is coded on that grid and
 *            its error fed forward.
 *
 * The mix follows llama_tensor_get_type (llama.cpp src/llama-quant.cpp,
 * for the LLaMA architecture without experts): written from its rules, the
 * types checked against files llama.cpp wrote (tests/test_ggml_quant.c). */
#include "methods.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    wmat_dtype base;
} g_ftypes[] = {
    {"q2_k", WMAT_Q2_K},   {"q3_k_s", WMAT_Q3_K}, {"q3_k_m", WMAT_Q3_K}, {"q3_k_l", WMAT_Q3_K},
    {"q4_k_s", WMAT_Q4_K}, {"q4_k_m", WMAT_Q4_K}, {"q5_k_s", WMAT_Q5_K}, {"q5_k_m", WMAT_Q5_K},
    {"q6_k", WMAT_Q6_K},   {"q4_k", WMAT_Q4_K},   {"q5_k", WMAT_Q5_K},   {"q3_k", WMAT_Q3_K},
};

int wmat__ggml_ftype_known(const char *ftype)
{
    for (size_t i = 0; ftype && i < sizeof g_ftypes / sizeof g_ftypes[0]; i++)
        if (!strcmp(g_ftypes[i].name, ftype)) return 1;
    return 0;
}

/* llama.cpp's use_more_bits: the first and last eighth of the layers and
 * every third one between */
static int more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

static wmat_dtype fallback(wmat_dtype dt, int64_t cols)
{
    if (cols % 256 == 0) return dt;
    wmat_dtype f = dt == WMAT_Q5_K ? WMAT_Q5_1 : dt == WMAT_Q6_K ? WMAT_Q8_0 : dt == WMAT_Q4_K ? WMAT_Q5_0 : WMAT_Q4_0;
    return cols % 32 ? WMAT_F16 : f;
}

wmat_dtype wmat__ggml_mix_type(const char *ftype, int role, int layer, const wmat_config *c, int64_t cols)
{
    wmat_dtype base = WMAT_F32;
    for (size_t i = 0; i < sizeof g_ftypes / sizeof g_ftypes[0]; i++)
        if (!strcmp(g_ftypes[i].name, ftype)) base = g_ftypes[i].base;
    if (base == WMAT_F32) return WMAT_F32;
    const int n = c->n_layers, gqa = c->n_kv_heads > 0 ? c->n_heads / c->n_kv_heads : 1;
    const int q3m = !strcmp(ftype, "q3_k_m"), q3l = !strcmp(ftype, "q3_k_l"), q2 = !strcmp(ftype, "q2_k");
    const int q4m = !strcmp(ftype, "q4_k_m"), q5m = !strcmp(ftype, "q5_k_m"), q4s = !strcmp(ftype, "q4_k_s");
    wmat_dtype t = base;
    if (role == WMAT_GGML_OUTPUT || (role == WMAT_GGML_TOKEN_EMBD && c->tied_embeddings))
        return cols % 256 ? (cols % 32 ? WMAT_F16 : WMAT_Q8_0) : WMAT_Q6_K;
    switch (role) {
    case WMAT_GGML_TOKEN_EMBD: break;
    case WMAT_LIN_V:
        if (q2) t = gqa >= 4 ? WMAT_Q4_K : WMAT_Q3_K;
        else if (q3m) t = layer < 2 ? WMAT_Q5_K : WMAT_Q4_K;
        else if (q3l) t = WMAT_Q5_K;
        else if ((q4m || q5m) && more_bits(layer, n)) t = WMAT_Q6_K;
        else if (q4s && layer < 4) t = WMAT_Q5_K;
        break;
    case WMAT_LIN_DOWN:
        if (q2) t = WMAT_Q3_K;
        else if (q3m) t = layer < n / 16 ? WMAT_Q5_K : WMAT_Q4_K;
        else if (q3l) t = WMAT_Q5_K;
        else if ((q4m || q5m) && more_bits(layer, n)) t = WMAT_Q6_K;
        else if (q4s && layer < n / 8) t = WMAT_Q5_K;
        break;
    case WMAT_LIN_O:
        if (q2) t = WMAT_Q3_K;
        else if (q3m) t = WMAT_Q4_K;
        else if (q3l) t = WMAT_Q5_K;
        break;
    default: break;
    }
    return fallback(t, cols);
}

/* ---- GPTQ into ggml blocks */

typedef struct {
    wmat_dtype dt;
    int64_t n;
    size_t row_bytes, block_bytes;
    int bs;              /* values per block: 256 or 32 */
    unsigned char *out;  /* (rows, row_bytes) */
    wmat_kfit *fit;      /* one per row: the current super-block's grid */
    const float *qw;     /* (n) weights of the fit: diag H */
} gq_ctx;

static int is_kquant(wmat_dtype dt)
{
    return dt == WMAT_Q2_K || dt == WMAT_Q3_K || dt == WMAT_Q4_K || dt == WMAT_Q5_K || dt == WMAT_Q6_K;
}

/* GPTQ's quantizer of column i of row r: a K-quant super-block is fitted
 * when the loop enters it (from the error-fed values, which are all up to
 * date then: it starts a block of 128 columns) and packed when it leaves;
 * a Q8_0 / Q4_0 / Q5_0 block of 32 gets its step by ggml's reference rule
 * from its current values, then each value its code on that step. */
static float gq_col(void *user, int64_t r, int64_t i, const float *w)
{
    gq_ctx *c = user;
    unsigned char *blk = c->out + (size_t)r * c->row_bytes + (size_t)(i / c->bs) * c->block_bytes;
    const int k = (int)(i % c->bs);
    if (is_kquant(c->dt)) {
        wmat_kfit *f = &c->fit[r];
        if (k == 0) wmat__kq_fit(c->dt, w + i, c->qw ? c->qw + i : NULL, blk, f);
        const float v = wmat__kq_code(f, k, w[i]);
        if (k == c->bs - 1) wmat__kq_pack(f, blk);
        return v;
    }
    /* 32-blocks: the header by ggml's reference rule from the block's
     * current values (k == 0), then each value's code on that step */
    if (k == 0) wmat_from_f32(blk, c->dt, w + i, 32);
    const float d = wmat_f16_to_f32((uint16_t)(blk[0] | blk[1] << 8));
    float best;
    if (c->dt == WMAT_Q8_0) {
        int q = d != 0.0f ? (int)lrintf(w[i] / d) : 0;
        q = q < -128 ? -128 : q > 127 ? 127 : q;
        blk[2 + k] = (unsigned char)(int8_t)q;
        best = (float)q * d;
    } else if (c->dt == WMAT_Q4_0) { /* value k in nibble k / 16 of qs[k % 16] */
        int q = d != 0.0f ? (int)lrintf(w[i] / d) + 8 : 8;
        q = q < 0 ? 0 : q > 15 ? 15 : q;
        const int j = k % 16;
        blk[2 + j] = (unsigned char)(k / 16 ? (blk[2 + j] & 15) | q << 4 : (blk[2 + j] & 0xf0) | q);
        best = (float)(q - 8) * d;
    } else { /* Q5_0: value k in nibble k / 16 of qs[k % 16], 5th bit in qh bit k */
        int q = d != 0.0f ? (int)lrintf(w[i] / d) + 16 : 16;
        q = q < 0 ? 0 : q > 31 ? 31 : q;
        const int j = k % 16;
        blk[6 + j] = (unsigned char)(k / 16 ? (blk[6 + j] & 15) | (q & 15) << 4 : (blk[6 + j] & 0xf0) | (q & 15));
        if (q & 16) blk[2 + k / 8] |= (unsigned char)(1u << (k % 8));
        else blk[2 + k / 8] &= (unsigned char)~(1u << (k % 8));
        best = (float)(q - 16) * d;
    }
    return best;
}

int wmat__quant_ggml(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                     wmat_dtype dt, int how, const wmat_qparams *p, wmat_qmethod_info *info)
{
    memset(out, 0, sizeof *out);
    const size_t row_bytes = (size_t)wmat_dtype_bytes(dt, (uint64_t)cols);
    out->rows = rows;
    out->cols = cols;
    out->ggml = dt;
    out->gbytes = wmat__malloc(row_bytes * (size_t)rows);
    if (!out->gbytes) return wmat_set_error(WMAT_ERR_NOMEM, "out of memory for a %lld x %lld matrix", (long long)rows, (long long)cols);
    const char *name = how == 2 ? "gptq" : how == 1 ? "imatrix" : "rtn";
    int rc = WMAT_OK;
    if (how == 2 && dt != WMAT_Q8_0 && dt != WMAT_Q5_0 && dt != WMAT_Q4_0 && !is_kquant(dt)) how = st && st->x2 ? 1 : 0;
    if (how == 0 || (how == 1 && !is_kquant(dt))) {
        rc = wmat__ggml_quant_rows(dt, W, out->gbytes, rows, cols, NULL);
    } else if (how == 1) {
        if (!st || !st->x2 || st->n != cols) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "imatrix needs the statistics of the %lld inputs", (long long)cols);
            goto done;
        }
        float *qw = wmat__malloc((size_t)cols * sizeof(float));
        if (!qw) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "imatrix: out of memory");
            goto done;
        }
        for (int64_t j = 0; j < cols; j++) qw[j] = (float)st->x2[j];
        rc = wmat__ggml_quant_rows(dt, W, out->gbytes, rows, cols, qw);
        wmat__free(qw);
    } else {
        if (!st || !st->H || st->n != cols) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "GPTQ needs the Hessian of the layer's %lld inputs", (long long)cols);
            goto done;
        }
        const int64_t n = cols;
        const int nt = p->n_threads > 0 ? p->n_threads : 1;
        const int B = n < 128 ? (int)n : 128;
        float *U = wmat__malloc((size_t)(n * n) * sizeof(float));
        int32_t *perm = wmat__malloc((size_t)n * sizeof(int32_t));
        float *Wk = wmat__malloc((size_t)(rows * n) * sizeof(float));
        float *E = wmat__malloc((size_t)(rows * B) * sizeof(float));
        float *qw = wmat__malloc((size_t)n * sizeof(float));
        wmat_kfit *fit = wmat__malloc((size_t)rows * sizeof(wmat_kfit));
        if (!U || !perm || !Wk || !E || !qw || !fit) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "GPTQ: out of memory");
        } else {
            double lambda = p->damp > 0 ? p->damp : 0.01f;
            rc = wmat__gptq_factor(st->H, n, 0, 1, nt, &lambda, perm, U);
            if (!rc) {
                memcpy(Wk, W, (size_t)(rows * n) * sizeof(float));
                for (int64_t j = 0; j < n; j++) {
                    const double h = st->H[j * n + j];
                    qw[j] = (float)(h > 0 ? h : 0.0);
                    if (h == 0.0)
                        for (int64_t r = 0; r < rows; r++) Wk[r * n + j] = 0.0f;
                }
                gq_ctx c = {dt, n, row_bytes, (size_t)wmat_dtype_info(dt)->block_bytes, wmat_dtype_info(dt)->block_size,
                            out->gbytes, fit, qw};
                wmat__gptq_feedback_sub(Wk, rows, n, U, B, 16 < B ? 16 : B, E, nt, gq_col, &c);
                if (info) info->damp = lambda;
            }
        }
        wmat__free(U);
        wmat__free(perm);
        wmat__free(Wk);
        wmat__free(E);
        wmat__free(qw);
        wmat__free(fit);
    }
done:
    if (rc) {
        if (rc == WMAT_ERR_UNSUPPORTED || rc == WMAT_ERR_INVALID)
            rc = wmat_set_error(rc, "%s into %s: %s", name, wmat_dtype_info(dt)->name, wmat_last_error());
        wmat_qresult_free(out);
        return rc;
    }
    if (info) snprintf(info->scheme, sizeof info->scheme, "%s into %s", name, wmat_dtype_info(dt)->name);
    return WMAT_OK;
}
