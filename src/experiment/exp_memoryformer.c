/* MemoryFormer against dense FFNs, trained from scratch (Ding et al.,
 * NeurIPS 2024, "MemoryFormer: Minimize Transformer Computation by Removing
 * Fully-Connected Layers"; issue 19). The paper's claim: hashed lookup
 * tables (Memory Layers) in place of the fully-connected layers keep the
 * model's quality at a fraction of the FLOPs.
 *
 * Three LLaMA-shaped models of the same width, depth, attention and
 * vocabulary (a byte tokenizer) are trained for the same tokens, order and
 * seeds: "memoryformer", whose FFN's three linears (gate, up, down) are each
 * a Memory Layer of hidden width `hidden` (the trainer's adapter
 * "memoryformer": src/train/adapter_memoryformer.c; the SwiGLU product
 * silu(g) * u between them stays); "dense", a SwiGLU FFN of the hidden width
 * whose FFN parameters equal the MemoryFormer FFN's (about 2^tau / tau times
 * `hidden`); and "dense-narrow" (narrow=1), a dense FFN of width `hidden`
 * (the paper's comparison: the same architecture). Attention stays dense in
 * all three. Each row is one (model, checkpoint): the mean over `seeds`
 * seeds of the training loss since the last checkpoint and the held-out
 * loss (nats per byte) with its sd, the trainable parameters, the FFN's
 * parameters and forward FLOPs per token (all layers), and training tokens
 * per second so far. */
#include "experiment.h"
#include "core/internal.h"
#include "train/adapter.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const wmat_param_spec k_schema[] = {
    WMAT_EXP_TEXT_KEYS("400000"),
    {"dim", WMAT_PARAM_INT, "64", 8, 1024, NULL, "model width", NULL},
    {"layers", WMAT_PARAM_INT, "2", 1, 16, NULL, "blocks", NULL},
    {"heads", WMAT_PARAM_INT, "4", 1, 64, NULL, "attention heads (dim must be a multiple)", NULL},
    {"hidden", WMAT_PARAM_INT, "32", 2, 8192, NULL, "MemoryFormer's FFN width (dense-narrow's too)", NULL},
    {"tau", WMAT_PARAM_INT, "4", 1, 12, NULL, "bits of a hash code: tables of 2^tau rows per tau inputs", NULL},
    {"narrow", WMAT_PARAM_BOOL, "true", 0, 0, NULL, "also train the dense model of width hidden", NULL},
    {"ctx", WMAT_PARAM_INT, "64", 4, 4096, NULL, "tokens per window", NULL},
    {"batch", WMAT_PARAM_INT, "8", 1, 1024, NULL, "windows per step", NULL},
    {"steps", WMAT_PARAM_INT, "300", 1, 1000000, NULL, "optimizer steps", NULL},
    {"eval_every", WMAT_PARAM_INT, "50", 1, 1000000, NULL, "steps between checkpoints (the last step is one)", NULL},
    {"eval_windows", WMAT_PARAM_INT, "32", 1, 100000, NULL, "held-out windows of ctx tokens per checkpoint", NULL},
    {"lr", WMAT_PARAM_FLOAT, "3e-3", 1e-6, 1, NULL, "peak learning rate (AdamW, cosine, 10% warmup), all models", NULL},
    {"seeds", WMAT_PARAM_INT, "1", 1, 100, NULL, "seeds per model (init and data order; means and sd)", NULL},
    {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
};

enum { M_MF = 0, M_DENSE, M_NARROW, N_MODELS };

/* The synthetic text: a learnable byte stream, words from a small
 * vocabulary in a seeded order. */
static size_t synth_text(char *buf, size_t cap, uint64_t seed)
{
    static const char *const words[] = {"the ", "cat ", "sat ", "on ", "a ", "mat ", "and ", "dog ", "ran ", ". "};
    wmat_rng r;
    wmat_rng_seed(&r, seed ^ 0x5eedu);
    size_t len = 0;
    int prev = 0;
    while (len < cap) {
        const int w = (prev * 3 + (int)(wmat_rng_uniform(&r) * 3.0f)) % 10;
        const size_t l = strlen(words[w]) < cap - len ? strlen(words[w]) : cap - len;
        memcpy(buf + len, words[w], l);
        len += l;
        prev = w;
    }
    return len;
}

typedef struct {
    int dim, layers, heads, hidden, tau, ctx, batch, steps, eval_every, eval_windows;
    float lr;
    const int32_t *train, *held;
    size_t n_train, n_held;
    int threads;
} run_cfg;

/* One training run: per checkpoint j (of nck), the mean training loss since
 * the previous one, the held-out loss and tokens/s so far; trainable params. */
static int train_one(const run_cfg *R, int model, int hidden, uint64_t seed, double *train_l, double *held_l,
                     double *tokps, int64_t *params)
{
    wmat_config c;
    wmat__exp_byte_config(&c, R->dim, hidden, R->layers, R->heads, R->ctx);
    wmat_model *m = NULL;
    wmat_trainer *t = NULL;
    int rc = wmat_model_create(&m, &c);
    if (!rc) rc = wmat_model_init_random(m, seed, 0.02f);
    wmat_context ec = wmat_context_default();
    ec.n_threads = R->threads;
    wmat_train_params p = wmat__exp_train_params(&ec, R->batch, R->ctx, R->steps, R->lr, seed);
    if (model == M_MF) {
        p.method = WMAT_TRAIN_LORA;
        p.adapter = "memoryformer";
        p.lora_rank = R->tau;
        p.lora_targets = (1u << WMAT_LIN_GATE) | (1u << WMAT_LIN_UP) | (1u << WMAT_LIN_DOWN);
    } else {
        p.method = WMAT_TRAIN_FULL;
    }
    if (!rc) rc = wmat_trainer_create(&t, m, &p);
    if (!rc) rc = wmat_trainer_set_data(t, R->train, R->n_train);
    if (!rc) {
        wmat_train_memory mem;
        wmat_trainer_memory(t, &mem);
        *params = mem.trainable;
    }
    if (!rc)
        rc = wmat__exp_train_curve(t, R->steps, R->eval_every, R->held, R->n_held, R->ctx, R->eval_windows, "memoryformer",
                                   train_l, held_l, tokps);
    wmat_trainer_free(t);
    wmat_model_free(m);
    return rc;
}

static int run(const wmat_pset *ps, const wmat_exp_env *env, wmat_table *out)
{
    run_cfg R;
    R.dim = (int)wmat__pset_int(ps, "dim");
    R.layers = (int)wmat__pset_int(ps, "layers");
    R.heads = (int)wmat__pset_int(ps, "heads");
    R.hidden = (int)wmat__pset_int(ps, "hidden");
    R.tau = (int)wmat__pset_int(ps, "tau");
    R.ctx = (int)wmat__pset_int(ps, "ctx");
    R.batch = (int)wmat__pset_int(ps, "batch");
    R.steps = (int)wmat__pset_int(ps, "steps");
    R.eval_every = (int)wmat__pset_int(ps, "eval_every");
    R.eval_windows = (int)wmat__pset_int(ps, "eval_windows");
    R.lr = (float)wmat__pset_float(ps, "lr");
    R.threads = wmat_context_threads(env->ctx);
    const int seeds = (int)wmat__pset_int(ps, "seeds"), narrow = (int)wmat__pset_int(ps, "narrow");
    const int D = R.dim, H = R.hidden, tau = R.tau, L = R.layers;
    if (D % R.heads || (D / R.heads) % 2)
        return wmat_set_error(WMAT_ERR_INVALID, "experiment memoryformer: dim %d must split into %d heads of an even size",
                              D, R.heads);
    if (D % tau || H % tau)
        return wmat_set_error(WMAT_ERR_INVALID, "experiment memoryformer: tau %d must divide dim %d and hidden %d", tau, D,
                              H);
    /* the FFN of each model: parameters and forward FLOPs per token, all layers */
    const double mf_ffn = (double)L * (2.0 * (((double)(D / tau) * (1 << tau)) * H + H) +
                                       ((double)(H / tau) * (1 << tau)) * D + D);
    const int H_eq = (int)lround(mf_ffn / L / (3.0 * D));
    const int hid[N_MODELS] = {H, H_eq, H};
    double ffn_p[N_MODELS], ffn_f[N_MODELS];
    ffn_p[M_MF] = mf_ffn;
    ffn_f[M_MF] = (double)L * (2 * wmat__memoryformer_flops(tau, D, H) + wmat__memoryformer_flops(tau, H, D));
    for (int k = M_DENSE; k < N_MODELS; k++) {
        ffn_p[k] = 3.0 * D * hid[k] * L;
        ffn_f[k] = 2.0 * 3.0 * D * hid[k] * L;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    /* a leading space, as the tokenizer's encode (which this experiment used) starts a text */
    int rc = wmat__exp_byte_tokens(ps, "memoryformer", synth_text, env->seed, 1, &ids, &n);
    if (rc) return rc;
    const size_t n_held = n / 10;
    R.train = ids;
    R.n_train = n - n_held;
    R.held = ids + R.n_train;
    R.n_held = n_held;
    const int nck = (R.steps + R.eval_every - 1) / R.eval_every;
    /* [model][seed][checkpoint]: train loss, held-out loss, tokens/s */
    double *res = calloc((size_t)N_MODELS * seeds * nck * 3, sizeof(double));
    double *tl = malloc((size_t)nck * sizeof(double)), *hl = malloc((size_t)nck * sizeof(double)),
           *tp = malloc((size_t)nck * sizeof(double));
    int64_t params[N_MODELS] = {0};
    if (!res || !tl || !hl || !tp) rc = wmat_set_error(WMAT_ERR_NOMEM, "experiment memoryformer: out of memory");
    if (!rc)
        rc = wmat__table_init(out, "MemoryFormer vs dense FFNs, trained from scratch on the same tokens",
                              "step|tokens|train_loss|heldout_loss|heldout_sd|params|ffn_params|ffn_flops_per_token|"
                              "tokens_per_s");
    const int n_models = narrow ? N_MODELS : M_NARROW;
    for (int k = 0; !rc && k < n_models; k++)
        for (int s = 0; !rc && s < seeds; s++) {
            if ((rc = train_one(&R, k, hid[k], env->seed * 1000 + (uint64_t)s, tl, hl, tp, &params[k]))) break;
            for (int j = 0; j < nck; j++) {
                double *r = res + (((size_t)k * seeds + s) * nck + j) * 3;
                r[0] = tl[j], r[1] = hl[j], r[2] = tp[j];
            }
            if (env->ctx->progress &&
                env->ctx->progress(env->ctx->progress_user, "memoryformer", (uint64_t)(k * seeds + s + 1),
                                   (uint64_t)(n_models * seeds)))
                rc = wmat_set_error(WMAT_ERR_CANCELLED, "experiment memoryformer: cancelled");
        }
    static const char *const label[N_MODELS] = {"memoryformer", "dense (equal params)", "dense-narrow"};
    for (int k = 0; !rc && k < n_models; k++) {
        char series[96];
        if (k == M_MF) snprintf(series, sizeof series, "%s H=%d tau=%d", label[k], hid[k], tau);
        else snprintf(series, sizeof series, "%s H=%d", label[k], hid[k]);
        for (int j = 0; !rc && j < nck; j++) {
            const double *r = res + ((size_t)k * seeds * nck + j) * 3;
            const size_t stride = (size_t)nck * 3;
            const wmat_exp_stats tr = wmat__exp_stats(r, seeds, stride), held = wmat__exp_stats(r + 1, seeds, stride),
                                 tps = wmat__exp_stats(r + 2, seeds, stride);
            const int step = j == nck - 1 ? R.steps : (j + 1) * R.eval_every;
            const double row[] = {step,
                                  (double)step * R.batch * R.ctx,
                                  tr.mean,
                                  held.mean,
                                  held.sd,
                                  (double)params[k],
                                  ffn_p[k],
                                  ffn_f[k],
                                  tps.mean};
            rc = wmat__table_add(out, series, row);
        }
    }
    free(res), free(tl), free(hl), free(tp), free(ids);
    if (rc) return rc;
    if ((rc = wmat__table_chart(out, "tokens", "heldout_loss", 0, 0))) return rc;
    return wmat__table_note(out,
                            "Claim (Ding et al. 2024): Memory Layers (hashed lookup tables) in place of the FFN keep the "
                            "loss of the dense model at a fraction of its FLOPs. Here: the FFN's gate, up and down are "
                            "Memory Layers (tau %d, hidden %d), against a dense FFN of equal FFN parameters (hidden %d)%s; "
                            "losses in nats per byte, means over %d seed(s).",
                            tau, H, H_eq, narrow ? " and one of the same width" : "", seeds);
}

const wmat_experiment wmat__exp_memoryformer = {
    .name = "memoryformer",
    .family = WMAT_FAMILY_EXPERIMENT,
    .schema = k_schema,
    .produces = "table",
    .summary = "MemoryFormer (hashed-table FFN) vs dense FFNs of equal parameters and equal width, trained from scratch: "
               "loss, parameters, FLOPs, tokens/s",
    .run = run,
    .smoke = "data=synthetic;max_bytes=4000;dim=16;layers=1;heads=2;hidden=8;tau=4;ctx=16;batch=2;steps=4;eval_every=2;"
             "eval_windows=2",
};
