/* The adapter registry (see adapter.h) and PEFT files for any adapter:
 * adapter_config.json + adapter_model.safetensors with HF's module names,
 * the output rows of q/k tensors in HF's rotary order. */
#include "adapter.h"
#include "sparse_update.h" /* sara, pst */

#include "../io/model_internal.h"
#include "../io/safetensors.h"
#include "core/shapes.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* One line per adapter: the trainer, the CLI's --help and the tests
 * (tests/test_train_registry.c) iterate this table. */
static const wmat__adapter *const adapters[] = {&wmat__adapter_lora,  &wmat__adapter_rslora, &wmat__adapter_sltrain,
                                                &wmat__adapter_dora,  &wmat__adapter_pissa,  &wmat__adapter_olora,
                                                &wmat__adapter_svfit, &wmat__adapter_bone,
                                                &wmat__adapter_factors, &wmat__adapter_dsformer,
                                                &wmat__adapter_dsformer_fixed, &wmat__adapter_vera,
                                                &wmat__adapter_lamda,     &wmat__adapter_s2lora,
                                                &wmat__adapter_compacter, &wmat__adapter_adalora,
                                                &wmat__adapter_miss,      &wmat__adapter_eva,
                                                &wmat__adapter_memoryformer,
                                                &wmat__adapter_s2ft, &wmat__adapter_s2ft_wnorm, &wmat__adapter_s2ft_anorm,
                                                &wmat__adapter_ofq, &wmat__adapter_ofq_statsq, &wmat__adapter_ofq_lsq,
                                                &wmat__adapter_sara,      &wmat__adapter_pst,
                                                &wmat__adapter_precrop, &wmat__adapter_precrop_uniform,
                                                &wmat__adapter_spt};

const wmat__adapter *wmat__adapter_at(int i)
{
    return i >= 0 && i < (int)(sizeof adapters / sizeof adapters[0]) ? adapters[i] : NULL;
}

const wmat__adapter *wmat__adapter_find(const char *name)
{
    for (int i = 0; name && wmat__adapter_at(i); i++)
        if (!strcmp(adapters[i]->name, name)) return adapters[i];
    return NULL;
}

size_t wmat__adapter_shared_floats(const wmat__adapter *a, const wmat__adapter_cfg *c)
{
    size_t n = 0;
    if (a->n_shared > 0 && a->shared_shapes) {
        int rows[2], cols[2];
        a->shared_shapes(c, rows, cols);
        for (int i = 0; i < a->n_shared; i++) n += wmat__adapter_nelem(rows[i], cols[i]);
    }
    return n;
}

int wmat__adapter_check_rank(const wmat__adapter_cfg *c, int in, int out, const char *who, const char *what)
{
    const int k = in < out ? in : out;
    if (c->rank > k)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: rank %d is larger than the %s matrix allows (%d x %d: at most %d)", who,
                              c->rank, what, out, in, k);
    return WMAT_OK;
}

int wmat__adapter_check_f32(const wmat_tensor *base, const char *who, const char *what)
{
    if (!base || base->dtype != WMAT_F32)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                              "%s: the %s base is %s, not f32: this adapter is built from W itself (dequantize the "
                              "model first, or use lora)",
                              who, what, base ? (base->dtype < WMAT_OBJ ? wmat_dtype_info(base->dtype)->name : "a packed or structured kind") : "absent");
    return WMAT_OK;
}

static const char *const hf_mod[WMAT_LIN_COUNT] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                   "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                   "mlp.down_proj"};

const char *wmat__adapter_hf_module(int k) { return k >= 0 && k < WMAT_LIN_COUNT ? hf_mod[k] : "?"; }

static void lin_dims(const wmat_config *c, int k, int *out, int *in)
{
    wmat__linear_shape(c, (wmat_linear_kind)k, out, in);
}

typedef struct {
    const float *src;
    int heads, head_dim, cols;
    int rows; /* >= 0: permute the columns of each of rows rows instead */
} permute_fill;

static int fill_permuted(void *user, const wmat_st_entry *e, void *dst)
{
    const permute_fill *pf = user;
    (void)e;
    if (pf->rows < 0) {
        wmat__rope_permute_hf(dst, pf->src, pf->heads, pf->head_dim, pf->cols);
        return WMAT_OK;
    }
    /* the columns are the output features (MiSS's D): each row is permuted */
    const int n = pf->heads * pf->head_dim;
    for (int r = 0; r < pf->rows; r++)
        wmat__rope_permute_hf((float *)dst + (size_t)r * n, pf->src + (size_t)r * n, pf->heads, pf->head_dim, 1);
    return WMAT_OK;
}

/* The inverse for a (rows, heads * head_dim) matrix whose columns are permuted. */
static void unpermute_cols(float *dst, const float *src, int rows, int heads, int head_dim)
{
    const int n = heads * head_dim;
    for (int r = 0; r < rows; r++)
        wmat__rope_unpermute_hf(dst + (size_t)r * n, src + (size_t)r * n, heads, head_dim, 1);
}

/* A rank_pattern / alpha_pattern key ("model.layers.3.mlp.up_proj", any
 * prefix) as layer l and linear kind k; 0 when it names no linear. */
static int pattern_lk(const char *key, int *l, int *k)
{
    const char *p = strstr(key, "layers.");
    int n = 0;
    if (!p || sscanf(p, "layers.%d.%n", l, &n) != 1 || n == 0) return 0;
    for (int kk = 0; kk < WMAT_LIN_COUNT; kk++)
        if (!strcmp(p + n, hf_mod[kk])) {
            *k = kk;
            return 1;
        }
    return 0;
}

#define NT WMAT__ADAPTER_MAX_TENSORS

/* PiSSA/OLoRA: the tensors PEFT gets (peft_as's) for every adapted layer,
 * then the plain save of those. */
static int peft_save_as(const wmat__adapter *a, const wmat__adapter_cfg *c, const wmat_config *mc,
                        float *const *tensors, void *const *fixed, const char *base_path, const char *dir)
{
    const wmat__adapter *b = a->peft_as;
    wmat__adapter_cfg cb = *c;
    a->peft_cfg(c, &cb);
    const size_t nl = (size_t)mc->n_layers * WMAT_LIN_COUNT;
    size_t total = 0;
    for (size_t j = 0; j < nl; j++)
        if (tensors[j * NT]) {
            int o, in, rows[NT], cols[NT];
            lin_dims(mc, (int)(j % WMAT_LIN_COUNT), &o, &in);
            b->shapes(&cb, in, o, rows, cols);
            for (int i = 0; i < b->n_tensors; i++) total += wmat__adapter_nelem(rows[i], cols[i]);
        }
    float **tb = wmat__calloc(nl * NT + 1, sizeof *tb);
    float *data = wmat__malloc(total * sizeof(float) + 1);
    int rc;
    if (!tb || !data) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "save adapter: out of memory");
        goto done;
    }
    size_t off = 0;
    for (size_t j = 0; j < nl; j++)
        if (tensors[j * NT]) {
            int o, in, rows[NT], cols[NT];
            lin_dims(mc, (int)(j % WMAT_LIN_COUNT), &o, &in);
            b->shapes(&cb, in, o, rows, cols);
            for (int i = 0; i < b->n_tensors; i++) {
                tb[j * NT + i] = data + off;
                off += wmat__adapter_nelem(rows[i], cols[i]);
            }
            a->peft_export(c, (const float *const *)(tensors + j * NT), fixed ? fixed[j] : NULL, in, o, tb + j * NT);
        }
    rc = wmat__adapter_peft_save(b, &cb, NULL, mc, tb, NULL, base_path, dir);
done:
    wmat__free(tb);
    wmat__free(data);
    return rc;
}

int wmat__adapter_peft_save(const wmat__adapter *a, const wmat__adapter_cfg *c, const wmat__adapter_cfg *lcfg,
                            const wmat_config *mc, float *const *tensors, void *const *fixed, const char *base_path,
                            const char *dir)
{
    if (a->peft_as) return peft_save_as(a, c, mc, tensors, fixed, base_path, dir);
    if (mkdir(dir, 0777) && errno != EEXIST) return wmat_set_error(WMAT_ERR_IO, "%s: cannot create directory", dir);
    const int cap = mc->n_layers * WMAT_LIN_COUNT * a->n_tensors + a->n_shared;
    const size_t nl = (size_t)mc->n_layers * WMAT_LIN_COUNT;
    wmat_st_entry *e = wmat__calloc((size_t)cap + 1, sizeof *e);
    permute_fill *pf = wmat__calloc((size_t)cap + 1, sizeof *pf);
    char *names = wmat__calloc((size_t)cap + 1, 160);
    wmat__adapter_layer *al = wmat__calloc(nl + 1, sizeof *al);
    /* peft_rank: each layer's tensors cut to its rank (one block) */
    float *cut = NULL, **cutw = a->peft_rank ? wmat__calloc(nl * NT + 1, sizeof *cutw) : NULL;
    wmat__adapter_cfg *lcs = a->peft_rank ? wmat__calloc(nl + 1, sizeof *lcs) : NULL;
    char *js = NULL;
    int rc = WMAT_OK, n = 0, nal = 0;
    unsigned targets = 0;
    if (!e || !pf || !names || !al || (a->peft_rank && (!cutw || !lcs))) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "save adapter: out of memory");
        goto done;
    }
    if (a->peft_rank) {
        size_t total = 0;
        for (size_t j = 0; j < nl; j++)
            if (tensors[j * NT]) {
                int o, in, rows[NT], cols[NT];
                lin_dims(mc, (int)(j % WMAT_LIN_COUNT), &o, &in);
                lcs[j] = *c;
                lcs[j].rank = a->peft_rank(c, fixed ? fixed[j] : NULL, in, o);
                lcs[j].rank_init = c->rank;
                a->shapes(&lcs[j], in, o, rows, cols);
                for (int i = 0; i < a->n_tensors; i++) total += wmat__adapter_nelem(rows[i], cols[i]);
            }
        if (!(cut = wmat__malloc(total * sizeof(float) + 1))) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "save adapter: out of memory");
            goto done;
        }
        size_t off = 0;
        for (size_t j = 0; j < nl; j++)
            if (tensors[j * NT]) {
                int o, in, rows[NT], cols[NT];
                lin_dims(mc, (int)(j % WMAT_LIN_COUNT), &o, &in);
                a->shapes(&lcs[j], in, o, rows, cols);
                for (int i = 0; i < a->n_tensors; i++) {
                    cutw[j * NT + i] = cut + off;
                    off += wmat__adapter_nelem(rows[i], cols[i]);
                }
                a->peft_export(c, (const float *const *)(tensors + j * NT), fixed ? fixed[j] : NULL, in, o,
                               cutw + j * NT);
            }
    }
    for (int l = 0; l < mc->n_layers; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            const size_t j = (size_t)(l * WMAT_LIN_COUNT + k);
            float *const *w = a->peft_rank ? cutw + j * NT : tensors + j * NT;
            if (!tensors[j * NT]) continue;
            targets |= 1u << k;
            int o, in, rows[NT], cols[NT];
            lin_dims(mc, k, &o, &in);
            /* the layer's settings: cut to its PEFT rank (AdaLoRA), or its own
             * rank and alpha (EVA's plan), or the run's */
            const wmat__adapter_cfg *lc = a->peft_rank ? &lcs[j] : lcfg ? &lcfg[j] : c;
            a->shapes(lc, in, o, rows, cols);
            al[nal++] = (wmat__adapter_layer){lc, tensors + j * NT, NULL, fixed ? fixed[j] : NULL, l, k, in, o};
            if (a->peft_rank && lcs[j].rank == 0) continue; /* pruned to nothing: no tensors (PEFT loads it as rank 0) */
            for (int i = 0; i < a->n_tensors; i++) {
                char *nm = names + (size_t)n * 160;
                snprintf(nm, 160, "base_model.model.model.layers.%d.%s.%s%s", l, hf_mod[k], a->tensor_key[i],
                         a->peft_bare_keys ? "" : ".weight");
                e[n].name = nm;
                e[n].dtype = WMAT_ST_F32;
                e[n].ndim = cols[i] ? 2 : 1;
                e[n].shape[0] = rows[i];
                e[n].shape[1] = cols[i];
                if ((a->rows_are_out[i] || a->cols_are_out[i]) && (k == WMAT_LIN_Q || k == WMAT_LIN_K)) {
                    pf[n] = (permute_fill){w[i], k == WMAT_LIN_Q ? mc->n_heads : mc->n_kv_heads, mc->head_dim,
                                           cols[i] ? cols[i] : 1, a->cols_are_out[i] ? rows[i] : -1};
                    e[n].fill = fill_permuted;
                    e[n].user = &pf[n];
                } else {
                    e[n].data = w[i];
                }
                n++;
            }
        }
    if (a->n_shared > 0) {
        /* the shared tensors (VeRA's vera_A, vera_B), as PEFT names them */
        if (!c->shared) {
            rc = wmat_set_error(WMAT_ERR_INTERNAL, "save adapter: %s has no shared data", a->name);
            goto done;
        }
        int rows[2], cols[2];
        a->shared_shapes(c, rows, cols);
        const float *sh = c->shared;
        for (int i = 0; i < a->n_shared; i++) {
            e[n] = (wmat_st_entry){.name = a->shared_key[i], .dtype = WMAT_ST_F32, .ndim = cols[i] ? 2 : 1,
                                   .shape = {rows[i], cols[i]}, .data = (void *)sh};
            sh += wmat__adapter_nelem(rows[i], cols[i]);
            n++;
        }
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    wmat_st_meta meta[1] = {{"format", "pt"}};
    if ((rc = wmat__st_write(path, e, n, meta, 1))) goto done;
    {
        /* the common fields fit in 2 KB; the per-layer ones say what they
         * need; EVA's patterns take two short lines per layer */
        const size_t jn = 2048 + (a->peft_config_layers ? a->peft_config_layers(c, al, nal, NULL, 0) : 0) +
                          (lcfg ? nl * 160 : 0);
        if (!(js = wmat__malloc(jn + 1))) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "save adapter: out of memory");
            goto done;
        }
        size_t k = (size_t)snprintf(js, jn, "{\n  \"peft_type\": \"%s\",\n  \"task_type\": \"CAUSAL_LM\",\n",
                                    a->peft_type);
        k += a->peft_config(c, js + k, jn - k);
        if (k < jn && a->peft_config_layers) k += a->peft_config_layers(c, al, nal, js + k, jn - k);
        /* per-layer ranks and alphas that differ from the run's (EVA) */
        for (int pat = 0; pat < 2 && lcfg && k < jn; pat++) {
            int any = 0;
            for (size_t jj = 0; jj < nl && k < jn; jj++) {
                const wmat__adapter_cfg *lc = &lcfg[jj];
                if (!tensors[jj * NT] || (pat ? lc->alpha == c->alpha : lc->rank == c->rank)) continue;
                char v[32];
                if (pat) snprintf(v, sizeof v, "%.9g", (double)lc->alpha);
                else snprintf(v, sizeof v, "%d", lc->rank);
                k += (size_t)snprintf(js + k, jn - k, "%s\n    \"model.layers.%d.%s\": %s",
                                      any ? "," : pat ? "  \"alpha_pattern\": {" : "  \"rank_pattern\": {",
                                      (int)(jj / WMAT_LIN_COUNT), hf_mod[jj % WMAT_LIN_COUNT], v);
                any = 1;
            }
            if (any && k < jn) k += (size_t)snprintf(js + k, jn - k, "\n  },\n");
        }
        if (k < jn)
            k += (size_t)snprintf(js + k, jn - k, "  \"base_model_name_or_path\": \"%s\",\n  \"target_modules\": [",
                                  base_path ? base_path : "");
        int first = 1;
        for (int kk = 0; kk < WMAT_LIN_COUNT && k < jn; kk++)
            if (targets & (1u << kk)) {
                k += (size_t)snprintf(js + k, jn - k, "%s\"%s_proj\"", first ? "" : ", ",
                                      wmat_linear_name((wmat_linear_kind)kk));
                first = 0;
            }
        if (k < jn) k += (size_t)snprintf(js + k, jn - k, "]\n}\n");
        if (k >= jn) {
            rc = wmat_set_error(WMAT_ERR_INTERNAL, "save adapter: adapter_config.json longer than %zu bytes", jn);
            goto done;
        }
        snprintf(path, sizeof path, "%s/adapter_config.json", dir);
        wmat_afile af;
        if ((rc = wmat__afile_open(&af, path))) goto done;
        if ((rc = wmat__afile_write(&af, js, k))) {
            wmat__afile_abort(&af);
            goto done;
        }
        rc = wmat__afile_commit(&af);
    }
done:
    wmat__free(e);
    wmat__free(pf);
    wmat__free(names);
    wmat__free(al);
    wmat__free(cut);
    wmat__free(cutw);
    wmat__free(lcs);
    wmat__free(js);
    return rc;
}

int wmat__adapter_peft_merge(wmat_model *m, const char *dir)
{
    const wmat_config *mc = wmat_model_config(m);
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    char *text;
    size_t len;
    int rc = wmat_read_file(path, &text, &len);
    if (rc) return rc;
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!j) return wmat_set_error(WMAT_ERR_FORMAT, "%s: not JSON", path);
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(j, "peft_type");
    const wmat__adapter *a = NULL;
    wmat__adapter_cfg c = {.nt = 1};
    for (int i = 0; wmat__adapter_at(i) && !a; i++) {
        const wmat__adapter *x = wmat__adapter_at(i);
        /* files without peft_type predate it: LoRA was the only kind */
        const char *want = cJSON_IsString(pt) ? pt->valuestring : "LORA";
        if (x->peft_type && !strcmp(x->peft_type, want) && x->peft_parse(j, &c)) a = x;
    }
    /* PEFT's per-module overrides of r and lora_alpha (EVA's ranks) */
    const int nlk = mc->n_layers * WMAT_LIN_COUNT;
    int *prank = wmat__calloc((size_t)nlk + 1, sizeof *prank);
    float *palpha = wmat__malloc(((size_t)nlk + 1) * sizeof *palpha);
    if (!prank || !palpha) {
        cJSON_Delete(j);
        wmat__free(prank);
        wmat__free(palpha);
        return wmat_set_error(WMAT_ERR_NOMEM, "adapter merge: out of memory");
    }
    for (int i = 0; i < nlk; i++) palpha[i] = NAN;
    for (int pat = 0; pat < 2; pat++) {
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(j, pat ? "alpha_pattern" : "rank_pattern"), *it;
        cJSON_ArrayForEach(it, o)
        {
            int l, k;
            if (!cJSON_IsNumber(it) || !it->string || !pattern_lk(it->string, &l, &k) || l < 0 || l >= mc->n_layers)
                continue;
            if (pat) palpha[l * WMAT_LIN_COUNT + k] = (float)it->valuedouble;
            else prank[l * WMAT_LIN_COUNT + k] = it->valueint;
        }
    }
    cJSON_Delete(j);
    if (!a || c.rank <= 0) {
        wmat__free(prank);
        wmat__free(palpha);
        return a ? wmat_set_error(WMAT_ERR_FORMAT, "%s: missing or bad rank r", path)
                 : wmat_set_error(WMAT_ERR_FORMAT, "%s: no registered adapter reads this peft_type", path);
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    wmat_st_file *f;
    if ((rc = wmat__st_open(&f, path))) {
        wmat__free(prank);
        wmat__free(palpha);
        return rc;
    }
    int merged = 0;
    float *buf[NT] = {0}, *perm = NULL, *shared = NULL;
    const char *sfx = a->peft_bare_keys ? "" : ".weight";
    if (a->n_shared > 0) {
        /* shared data (VeRA's A, B): its shapes follow the largest adapted
         * layer, so those of the model's layers the file adapts must give
         * exactly the file's shapes */
        c.in_max = c.out_max = 0;
        for (int l = 0; l < mc->n_layers; l++)
            for (int k = 0; k < WMAT_LIN_COUNT; k++) {
                char nm[256];
                snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.%s%s", l, hf_mod[k], a->tensor_key[0],
                         sfx);
                if (!wmat__st_find(f, nm)) continue;
                int o, in;
                lin_dims(mc, k, &o, &in);
                if (in > c.in_max) c.in_max = in;
                if (o > c.out_max) c.out_max = o;
            }
        int rows[2], cols[2];
        a->shared_shapes(&c, rows, cols);
        const size_t nf = wmat__adapter_shared_floats(a, &c);
        if (!(shared = wmat__malloc(nf * sizeof(float) + 1)))
            rc = wmat_set_error(WMAT_ERR_NOMEM, "adapter merge: out of memory");
        size_t so = 0;
        for (int i = 0; i < a->n_shared && !rc; i++) {
            const wmat_st_tensor *st = wmat__st_find(f, a->shared_key[i]);
            if (!st)
                rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: no %s tensor (%s files keep their shared projections)", path,
                                    a->shared_key[i], a->name);
            else if (st->dtype != WMAT_ST_F32 || st->ndim != (cols[i] ? 2 : 1) || st->shape[0] != rows[i] ||
                     (cols[i] && st->shape[1] != cols[i]))
                rc = wmat_set_error(WMAT_ERR_FORMAT,
                                    "%s: %s is not the f32 (%d, %d) that rank %d over this model's adapted layers "
                                    "(largest in %d, out %d) needs: an adapter for another model shape?",
                                    path, a->shared_key[i], rows[i], cols[i], c.rank, c.in_max, c.out_max);
            else {
                memcpy(shared + so, st->data, st->nbytes);
                so += wmat__adapter_nelem(rows[i], cols[i]);
            }
        }
        c.shared = shared;
    }
    for (int l = 0; l < mc->n_layers && !rc; l++)
        for (int k = 0; k < WMAT_LIN_COUNT && !rc; k++) {
            char nm[NT][256];
            const wmat_st_tensor *t[NT];
            int found = 0;
            for (int i = 0; i < a->n_tensors; i++) {
                snprintf(nm[i], sizeof nm[i], "base_model.model.model.layers.%d.%s.%s%s", l, hf_mod[k],
                         a->tensor_key[i], sfx);
                t[i] = wmat__st_find(f, nm[i]);
                found += t[i] != NULL;
            }
            if (!found) continue;
            wmat_tensor *W = wmat_model_linear(m, l, (wmat_linear_kind)k);
            const int o = (int)W->shape[0], in = (int)W->shape[1];
            int rows[NT], cols[NT], ok = found == a->n_tensors && W->dtype == WMAT_F32;
            wmat__adapter_cfg lc = c;
            lc.hf_rope_heads = wmat__adapter_rope_heads(mc, k);
            /* PEFT's rank_pattern / alpha_pattern for this module (EVA) */
            if (prank[l * WMAT_LIN_COUNT + k] > 0) lc.rank = prank[l * WMAT_LIN_COUNT + k];
            if (!isnan(palpha[l * WMAT_LIN_COUNT + k])) lc.alpha = palpha[l * WMAT_LIN_COUNT + k];
            if (ok && a->peft_rank) {
                /* the layer's own rank (AdaLoRA's rank_pattern), the file's r the scale's */
                lc.rank = t[0]->ndim >= 1 ? (int)t[0]->shape[0] : -1;
                lc.rank_init = c.rank;
                if (lc.rank < 0 || lc.rank > c.rank) {
                    rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: %s has rank %d, above the file's %d", path, nm[0], lc.rank,
                                        c.rank);
                    break;
                }
                if (lc.rank == 0) { /* pruned to nothing (PEFT #1539): the layer stays as it is */
                    merged++;
                    continue;
                }
            }
            a->shapes(&lc, in, o, rows, cols);
            for (int i = 0; i < a->n_tensors && ok; i++)
                ok = t[i]->ndim == (cols[i] ? 2 : 1) && t[i]->dtype == WMAT_ST_F32 && t[i]->shape[0] == rows[i] &&
                     (!cols[i] || t[i]->shape[1] == cols[i]);
            if (!ok) {
                rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: the %s tensors of %s (layer %d) do not fit %s (f32, rank %d)",
                                    path, a->name, hf_mod[k], l, W->name, lc.rank);
                break;
            }
            for (int i = 0; i < a->n_tensors && !rc; i++) {
                buf[i] = wmat__malloc(t[i]->nbytes);
                if (!buf[i]) rc = wmat_set_error(WMAT_ERR_NOMEM, "adapter merge: out of memory");
                else memcpy(buf[i], t[i]->data, t[i]->nbytes); /* the mapping is unaligned in general */
                if (!rc && (a->rows_are_out[i] || a->cols_are_out[i]) && (k == WMAT_LIN_Q || k == WMAT_LIN_K)) {
                    perm = wmat__malloc(t[i]->nbytes);
                    if (!perm) {
                        rc = wmat_set_error(WMAT_ERR_NOMEM, "adapter merge: out of memory");
                        break;
                    }
                    if (a->cols_are_out[i])
                        unpermute_cols(perm, buf[i], rows[i], k == WMAT_LIN_Q ? mc->n_heads : mc->n_kv_heads,
                                       mc->head_dim);
                    else
                        wmat__rope_unpermute_hf(perm, buf[i], k == WMAT_LIN_Q ? mc->n_heads : mc->n_kv_heads,
                                                mc->head_dim, cols[i] ? cols[i] : 1);
                    wmat__free(buf[i]);
                    buf[i] = perm;
                    perm = NULL;
                }
            }
            if (!rc && !(W->flags & WMAT_TF_OWNED)) {
                float *cp = wmat__aligned_alloc(W->nbytes);
                if (!cp) {
                    rc = wmat_set_error(WMAT_ERR_NOMEM, "adapter merge: out of memory");
                } else {
                    memcpy(cp, W->data, W->nbytes);
                    W->data = cp;
                    W->flags |= WMAT_TF_OWNED;
                }
            }
            if (!rc && !(rc = a->merge(&lc, W->data, (const float *const *)buf, NULL, in, o))) merged++;
            for (int i = 0; i < NT; i++) {
                wmat__free(buf[i]);
                buf[i] = NULL;
            }
        }
    for (int i = 0; i < NT; i++) wmat__free(buf[i]);
    wmat__free(shared);
    wmat__free(prank);
    wmat__free(palpha);
    wmat__st_close(f);
    if (!rc && merged == 0) rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: no adapter weight matches a layer of the model", path);
    return rc;
}
