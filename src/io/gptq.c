/* GPTQ checkpoints (the layout AutoGPTQ, GPTQModel, transformers/optimum,
 * vLLM and ExLlama load): a Hugging Face directory whose quantized linear
 * layers are four tensors instead of `weight`, plus quantize_config.json
 * and a quantization_config in config.json. docs/FORMATS.md, "GPTQ".
 *
 * For a layer with out = R rows and in = C inputs, b bits, G groups along
 * the inputs:
 *   qweight  I32 (C b / 32, R): column i is output i's codes as one
 *            little-endian bit stream over the inputs in ORIGINAL order,
 *            code k at bits k b .. k b + b - 1 (3 bits cross word borders,
 *            as AutoGPTQ packs them);
 *   qzeros   I32 (G, R b / 32): per group, the zero points minus one ("v1"
 *            checkpoint format) as a bit stream over the outputs;
 *   scales   F16 (G, R);
 *   g_idx    I32 (C): the group of each input (act-order: of its permuted
 *            position; per output channel: 0, group_size -1).
 *   w[i][k] = scales[g][i] * (q[k][i] - (qzeros[g][i] + 1)),  g = g_idx[k].
 * wmat's packed tensors hold the same numbers (w = f16 scale * (code -
 * zero)) in another order, so the export is exact. What it cannot hold:
 * groups along the outputs (per-IC, AdaDim), 5-7 bits, and an asymmetric
 * zero point of 0 (v1 stores zero - 1 in b bits). */
#include "model_internal.h"
#include "safetensors.h"
#include "wop/qstore.h"

#include <stdio.h>
#include <string.h>

#define QUANTIZE_CONFIG_NAME "quantize_config.json"

enum { PART_QWEIGHT, PART_QZEROS, PART_SCALES, PART_GIDX, N_PARTS };
static const char *const g_part_suffix[N_PARTS] = {".qweight", ".qzeros", ".scales", ".g_idx"};

typedef struct {
    const wmat_tensor *t;
    int part;
    int rope_heads, head_dim;
    char name[WMAT_NAME_MAX + 16];
} part_src;

typedef struct {
    part_src *parts; /* 4 per packed tensor */
    int n, cap;
    int bits, group, desc_act, sym; /* the checkpoint's setting (group -1: one per row), every tensor checked against it */
} gptq_ctx;

/* Whether a packed tensor fits the format; its setting in *bits etc. */
static int check_tensor(const wmat_qtensor *qt, const char *name)
{
    if (qt->bits != 2 && qt->bits != 3 && qt->bits != 4 && qt->bits != 8)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: %d-bit codes: GPTQ checkpoints hold 2, 3, 4 or 8 bits", name, qt->bits);
    if (qt->axis != WMAT_QAXIS_IN)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                              "%s: groups along the outputs (per-IC / AdaDim) have no GPTQ layout (its groups run along the inputs)",
                              name);
    if ((qt->rows * qt->bits) % 32)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: %lld outputs x %d bits do not fill whole 32-bit words of qzeros", name,
                              (long long)qt->rows, qt->bits);
    return WMAT_OK;
}

/* src_row[i]: the wmat row stored as HF output i (q and k rows follow HF's
 * rotary order). */
static int row_map(const part_src *s, int64_t R, int32_t *src_row)
{
    if (!s->rope_heads) {
        for (int64_t i = 0; i < R; i++) src_row[i] = (int32_t)i;
        return WMAT_OK;
    }
    float *a = wmat__malloc((size_t)R * 2 * sizeof(float));
    if (!a) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", s->name);
    for (int64_t i = 0; i < R; i++) a[i] = (float)i; /* exact below 2^24 */
    wmat__rope_permute_hf(a + R, a, s->rope_heads, s->head_dim, 1);
    for (int64_t i = 0; i < R; i++) src_row[i] = (int32_t)a[R + i];
    wmat__free(a);
    return WMAT_OK;
}

/* OR value v (b bits) into a bit stream of 32-bit words at bit position p,
 * word j of the stream at w[j * stride]. */
static void put_bits(int32_t *w, int64_t stride, int64_t p, uint32_t v, int b)
{
    const int64_t j = p >> 5;
    const int off = (int)(p & 31);
    uint32_t *u = (uint32_t *)w;
    u[j * stride] |= v << off;
    if (off + b > 32) u[(j + 1) * stride] |= v >> (32 - off);
}

static int fill_part(void *user, const wmat_st_entry *e, void *dst)
{
    const part_src *s = user;
    const wmat_qtensor *qt = wmat_tensor_qtensor(s->t);
    const int64_t R = qt->rows, C = qt->cols, b = qt->bits;
    const int64_t gs = qt->group, gpr = C / gs; /* groups per row in wmat */
    wmat_qresult q;
    int rc = wmat_qtensor_unpack(qt, &q);
    if (rc) return rc;
    int32_t *src_row = wmat__malloc((size_t)R * sizeof(int32_t)), *inv = wmat__malloc((size_t)C * sizeof(int32_t));
    if (!src_row || !inv) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", s->t->name);
        goto done;
    }
    if ((rc = row_map(s, R, src_row))) goto done;
    for (int64_t j = 0; j < C; j++) inv[q.perm ? q.perm[j] : j] = (int32_t)j; /* original input -> stored column */
    const int32_t zsym = 1 << (b - 1);
    switch (s->part) {
    case PART_QWEIGHT: {
        int32_t *w = dst;
        memset(w, 0, (size_t)(C * b / 32 * R) * sizeof(int32_t));
        for (int64_t i = 0; i < R; i++) {
            const uint8_t *codes = q.codes + (int64_t)src_row[i] * C;
            for (int64_t k = 0; k < C; k++) put_bits(w + i, R, k * b, codes[inv[k]], (int)b);
        }
        break;
    }
    case PART_QZEROS: {
        int32_t *z = dst;
        const int64_t words = R * b / 32;
        memset(z, 0, (size_t)(gpr * words) * sizeof(int32_t));
        for (int64_t g = 0; g < gpr; g++)
            for (int64_t i = 0; i < R; i++) {
                const int32_t zero = q.zeros ? (int32_t)q.zeros[(int64_t)src_row[i] * gpr + g] : zsym;
                if (zero < 1 || zero >= (1 << b)) {
                    rc = wmat_set_error(WMAT_ERR_UNSUPPORTED,
                                        "%s: zero point %d (row %lld, group %lld) cannot be stored in GPTQ's v1 layout (zero - 1 in "
                                        "%d bits): quantize with --sym",
                                        s->t->name, zero, (long long)src_row[i], (long long)g, (int)b);
                    goto done;
                }
                put_bits(z + g * words, 1, i * b, (uint32_t)(zero - 1), (int)b);
            }
        break;
    }
    case PART_SCALES: {
        uint16_t *h = dst;
        for (int64_t g = 0; g < gpr; g++)
            for (int64_t i = 0; i < R; i++) h[g * R + i] = qt->scales[(int64_t)src_row[i] * gpr + g];
        break;
    }
    default: {
        int32_t *gi = dst;
        for (int64_t k = 0; k < C; k++) gi[k] = (int32_t)(inv[k] / gs);
        break;
    }
    }
    (void)e;
done:
    wmat__free(src_row);
    wmat__free(inv);
    wmat_qresult_free(&q);
    return rc;
}

static int add_entries(void *user, const wmat_model *m, const wmat_tensor *t, int rope_heads, int head_dim, wmat_st_entry *out)
{
    (void)m;
    gptq_ctx *g = user;
    const wmat_qtensor *qt = wmat_tensor_qtensor(t);
    int rc = check_tensor(qt, t->name);
    if (rc) return rc;
    /* One group_size for the checkpoint: a tensor with one group per row
     * fits any group_size at least its width (its g_idx is all 0) */
    const int per_oc = qt->group == qt->cols;
    const int group_ok = per_oc ? g->group == -1 || qt->cols <= g->group : qt->group == g->group;
    if (g->bits != qt->bits || !group_ok || g->desc_act != (qt->perm != NULL) || g->sym != qt->sym)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                              "%s: %d bits, group %d%s, %s, where the checkpoint has %d bits, group %d%s, %s: a GPTQ "
                              "checkpoint has one quantize_config",
                              t->name, qt->bits, per_oc ? -1 : qt->group, qt->perm ? ", act-order" : "", qt->sym ? "sym" : "asym",
                              g->bits, g->group, g->desc_act ? ", act-order" : "", g->sym ? "sym" : "asym");
    const size_t len = strlen(t->name);
    const char *suffix = ".weight";
    if (len < 7 || strcmp(t->name + len - 7, suffix))
        return wmat_set_error(WMAT_ERR_INVALID, "%s: a packed tensor's name does not end in .weight", t->name);
    if (g->n + N_PARTS > g->cap) return wmat_set_error(WMAT_ERR_INTERNAL, "%s: too many GPTQ parts", t->name);
    const int64_t R = qt->rows, C = qt->cols, b = qt->bits, G = C / qt->group;
    const int64_t shapes[N_PARTS][2] = {{C * b / 32, R}, {G, R * b / 32}, {G, R}, {C, 0}};
    const wmat_st_dtype dts[N_PARTS] = {WMAT_ST_I32, WMAT_ST_I32, WMAT_ST_F16, WMAT_ST_I32};
    for (int k = 0; k < N_PARTS; k++) {
        part_src *s = &g->parts[g->n++];
        s->t = t, s->part = k, s->rope_heads = rope_heads, s->head_dim = head_dim;
        snprintf(s->name, sizeof s->name, "%.*s%s", (int)(len - 7), t->name, g_part_suffix[k]);
        wmat_st_entry *e = &out[k];
        memset(e, 0, sizeof *e);
        e->name = s->name;
        e->dtype = dts[k];
        e->ndim = k == PART_GIDX ? 1 : 2;
        e->shape[0] = shapes[k][0];
        e->shape[1] = shapes[k][1];
        e->fill = fill_part;
        e->user = s;
    }
    return N_PARTS;
}

int wmat__gptq_save(wmat_model *m, const char *dir, const wmat_save_params *p)
{
    if (!m->layer_idx) {
        int rc = wmat__model_bind(m);
        if (rc) return rc;
    }
    int rc = wmat_model_prepare_stored(m);
    if (rc) return rc;
    /* The setting is read from the first packed tensor before any file is
     * written: config.json and quantize_config.json carry it. */
    gptq_ctx g = {0};
    int n_packed = 0;
    g.group = -1;
    for (int i = 0; i < m->n_tensors; i++) {
        const wmat_tensor *t = &m->tensors[i];
        if (t->dtype != WMAT_QPACKED) continue;
        const wmat_qtensor *qt = wmat_tensor_qtensor(t);
        if ((rc = check_tensor(qt, t->name))) return rc;
        if (!n_packed++) g.bits = qt->bits, g.desc_act = qt->perm != NULL, g.sym = qt->sym;
        if (g.group == -1 && qt->group != qt->cols) g.group = qt->group;
    }
    if (!n_packed)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: the model has no packed (quantized) weights to write as GPTQ", dir);
    g.cap = N_PARTS * n_packed;
    g.parts = wmat__calloc((size_t)g.cap, sizeof *g.parts);
    if (!g.parts) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", dir);
    char qcfg[256], extra[384];
    snprintf(qcfg, sizeof qcfg,
             "{\n  \"bits\": %d,\n  \"group_size\": %d,\n  \"desc_act\": %s,\n  \"sym\": %s,\n  \"true_sequential\": true,\n"
             "  \"checkpoint_format\": \"gptq\",\n  \"quant_method\": \"gptq\"\n}\n",
             g.bits, g.group, g.desc_act ? "true" : "false", g.sym ? "true" : "false");
    snprintf(extra, sizeof extra,
             "\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": %d, \"group_size\": %d, \"desc_act\": %s, "
             "\"sym\": %s, \"true_sequential\": true, \"checkpoint_format\": \"gptq\"}",
             g.bits, g.group, g.desc_act ? "true" : "false", g.sym ? "true" : "false");
    const wmat__hf_packed_hook hook = {N_PARTS, add_entries, &g, extra, QUANTIZE_CONFIG_NAME, qcfg};
    /* the layers that stay dense in f16, as GPTQ checkpoints are shipped */
    wmat_save_params sp = p ? *p : wmat_save_default_params();
    if (!p || p->dtype == WMAT_F32) sp.dtype = WMAT_F16;
    rc = wmat__hf_save_with(m, dir, &sp, &hook);
    wmat__free(g.parts);
    return rc;
}

int wmat__gptq_dir_detect(const char *dir)
{
    char *path = wmat__path_join(dir, QUANTIZE_CONFIG_NAME);
    const int yes = path && wmat__is_file(path);
    wmat__free(path);
    return yes;
}

/* Reading GPTQ checkpoints (into wmat's packed kind, which holds the same
 * numbers) is not written yet: say so by name rather than failing later on
 * the missing .weight tensors. */
int wmat__gptq_load(wmat_model **out, const char *dir, const wmat_load_params *p)
{
    (void)p;
    *out = NULL;
    return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                          "%s: a GPTQ checkpoint (%s): wmat writes this format (wmat quantize --to gptq) but does not read it yet",
                          dir, QUANTIZE_CONFIG_NAME);
}
