/* PreCropping against the full-width model and a uniform crop, trained
 * from scratch (Cai et al. 2022, "Structured Pruning is All You Need for
 * Pruning CNNs at Initialization"; issue 19). The paper's claim: what a
 * pruning-at-initialization score decides is each layer's compression
 * ratio; cropping whole channels to those ratios at initialization (dense,
 * narrower layers) keeps the accuracy of the pruned model, and layer-wise
 * ratios beat a uniform crop of the same size.
 *
 * Three LLaMA-shaped models of the same width, depth, attention and
 * vocabulary (a byte tokenizer), from the same initial weights (one seed
 * each), trained on the same tokens in the same order:
 *   "full"            every FFN of hidden width `hidden` (full training);
 *   "precrop"         the trainer's adapter "precrop" (src/train/
 *                     adapter_precrop.c): SNIP scores |g w| on one batch at
 *                     initialization give each layer its share of a budget
 *                     of round(density L hidden) FFN channels (one global
 *                     threshold), each layer keeps its best channels, and
 *                     gate / up / down train as dense narrower matrices;
 *   "precrop-uniform" the same budget split evenly over the layers (the
 *                     same FFN parameters, uniform ratios).
 * Each row is one (model, checkpoint): the mean over `seeds` seeds of the
 * training loss since the last checkpoint, the held-out loss (nats per
 * byte) with its sd, the trainable parameters, the FFN's parameters (all
 * layers) and training tokens per second so far (the optimizer steps'
 * time). The text loader is this file's own (a byte stream of the file's
 * first max_bytes bytes, or a generated one). */
#include "experiment.h"
#include "core/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const wmat_param_spec k_schema[] = {
    {"data", WMAT_PARAM_STRING, "../shared/data/text/tinyshakespeare.txt", 0, 0, NULL,
     "UTF-8 text to train on (byte tokens; the last 10% held out), or 'synthetic' for a generated stream", NULL},
    {"max_bytes", WMAT_PARAM_INT, "400000", 1000, 100000000, NULL, "bytes of the text read from its start", NULL},
    {"dim", WMAT_PARAM_INT, "64", 8, 1024, NULL, "model width", NULL},
    {"layers", WMAT_PARAM_INT, "4", 1, 16, NULL, "blocks", NULL},
    {"heads", WMAT_PARAM_INT, "4", 1, 64, NULL, "attention heads (dim must be a multiple)", NULL},
    {"hidden", WMAT_PARAM_INT, "256", 2, 8192, NULL, "the full model's FFN width", NULL},
    {"density", WMAT_PARAM_FLOAT, "0.25", 0.001, 1, NULL, "kept share of all layers' FFN channels (both crops)", NULL},
    {"ctx", WMAT_PARAM_INT, "64", 4, 4096, NULL, "tokens per window", NULL},
    {"batch", WMAT_PARAM_INT, "8", 1, 1024, NULL, "windows per step (SNIP: one batch)", NULL},
    {"steps", WMAT_PARAM_INT, "200", 1, 1000000, NULL, "optimizer steps", NULL},
    {"eval_every", WMAT_PARAM_INT, "50", 1, 1000000, NULL, "steps between checkpoints (the last step is one)", NULL},
    {"eval_windows", WMAT_PARAM_INT, "32", 1, 100000, NULL, "held-out windows of ctx tokens per checkpoint", NULL},
    {"lr", WMAT_PARAM_FLOAT, "3e-3", 1e-6, 1, NULL, "peak learning rate (AdamW, cosine, 10% warmup), all models", NULL},
    {"seeds", WMAT_PARAM_INT, "3", 1, 100, NULL, "seeds per model (init and data order; means and sd)", NULL},
    {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
};

enum { M_FULL = 0, M_PRECROP, M_UNIFORM, N_MODELS };
static const char *const adapter_of[N_MODELS] = {NULL, "precrop", "precrop-uniform"};

static int load_text(const char *path, int64_t max_bytes, uint64_t seed, int32_t **ids, size_t *n)
{
    char *text = malloc((size_t)max_bytes + 16);
    if (!text) return wmat_set_error(WMAT_ERR_NOMEM, "experiment precrop: out of memory");
    size_t len = 0;
    if (!strcmp(path, "synthetic")) {
        /* a learnable byte stream: short words in a seeded order with structure */
        static const char *const words[] = {"one ", "two ", "red ", "blue ", "fish ", "saw ", "in ", "the ", "sea ", ". "};
        wmat_rng r;
        wmat_rng_seed(&r, seed ^ 0xc40bu);
        int prev = 0;
        while (len < (size_t)max_bytes) {
            const int w = (prev * 7 + 1 + (int)(wmat_rng_uniform(&r) * 2.0f)) % 10;
            const size_t l = strlen(words[w]);
            memcpy(text + len, words[w], l);
            len += l;
            prev = w;
        }
        len = (size_t)max_bytes;
    } else {
        FILE *f = fopen(path, "rb");
        if (!f) {
            free(text);
            return wmat_set_error(WMAT_ERR_IO, "experiment precrop: cannot open %s (give data=FILE, or data=synthetic)",
                                  path);
        }
        len = fread(text, 1, (size_t)max_bytes, f);
        fclose(f);
    }
    wmat_tokenizer *tk = NULL;
    int rc = wmat_tokenizer_bytes(&tk);
    if (!rc) rc = wmat_tokenizer_encode(tk, text, len, 0, 0, ids, n);
    wmat_tokenizer_free(tk);
    free(text);
    return rc;
}

typedef struct {
    int dim, layers, heads, hidden, ctx, batch, steps, eval_every, eval_windows, threads;
    float lr, density;
    const int32_t *train, *held;
    size_t n_train, n_held;
} run_cfg;

/* One run: per checkpoint the mean training loss since the previous one,
 * the held-out loss and tokens/s so far; trainable params; the plan's report. */
static int train_one(const run_cfg *R, int model, uint64_t seed, double *train_l, double *held_l, double *tokps,
                     int64_t *params, char *report, size_t report_cap)
{
    wmat_config c;
    wmat__exp_byte_config(&c, R->dim, R->hidden, R->layers, R->heads, R->ctx);
    wmat_model *m = NULL;
    wmat_trainer *t = NULL;
    int rc = wmat_model_create(&m, &c);
    if (!rc) rc = wmat_model_init_random(m, seed, 0.02f);
    wmat_context ec = wmat_context_default();
    ec.n_threads = R->threads;
    wmat_train_params p = wmat__exp_train_params(&ec, R->batch, R->ctx, R->steps, R->lr, seed);
    if (adapter_of[model]) {
        p.method = WMAT_TRAIN_LORA;
        p.adapter = adapter_of[model];
        p.lora_targets = (1u << WMAT_LIN_GATE) | (1u << WMAT_LIN_UP) | (1u << WMAT_LIN_DOWN);
        p.adapter_density = R->density;
        p.adapter_calib = R->train; /* SNIP: the first batch of training windows */
        p.adapter_calib_n = R->n_train;
    } else {
        p.method = WMAT_TRAIN_FULL;
    }
    if (!rc) rc = wmat_trainer_create(&t, m, &p);
    if (!rc) rc = wmat_trainer_set_data(t, R->train, R->n_train);
    if (!rc) {
        wmat_train_memory mem;
        wmat_trainer_memory(t, &mem);
        *params = mem.trainable;
        if (report && report_cap) snprintf(report, report_cap, "%s", wmat_trainer_adapter_report(t));
    }
    if (!rc)
        rc = wmat__exp_train_curve(t, R->steps, R->eval_every, R->held, R->n_held, R->ctx, R->eval_windows, "precrop",
                                   train_l, held_l, tokps);
    wmat_trainer_free(t);
    wmat_model_free(m);
    return rc;
}

static int run(const wmat_pset *ps, const wmat_exp_env *env, wmat_table *out)
{
    run_cfg R;
    memset(&R, 0, sizeof R);
    R.dim = (int)wmat__pset_int(ps, "dim");
    R.layers = (int)wmat__pset_int(ps, "layers");
    R.heads = (int)wmat__pset_int(ps, "heads");
    R.hidden = (int)wmat__pset_int(ps, "hidden");
    R.density = (float)wmat__pset_float(ps, "density");
    R.ctx = (int)wmat__pset_int(ps, "ctx");
    R.batch = (int)wmat__pset_int(ps, "batch");
    R.steps = (int)wmat__pset_int(ps, "steps");
    R.eval_every = (int)wmat__pset_int(ps, "eval_every");
    R.eval_windows = (int)wmat__pset_int(ps, "eval_windows");
    R.lr = (float)wmat__pset_float(ps, "lr");
    R.threads = wmat_context_threads(env->ctx);
    const int seeds = (int)wmat__pset_int(ps, "seeds");
    const int D = R.dim, H = R.hidden, L = R.layers;
    if (D % R.heads || (D / R.heads) % 2)
        return wmat_set_error(WMAT_ERR_INVALID, "experiment precrop: dim %d must split into %d heads of an even size", D,
                              R.heads);
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = load_text(wmat__pset_str(ps, "data"), wmat__pset_int(ps, "max_bytes"), env->seed, &ids, &n);
    if (rc) return rc;
    const size_t n_held = n / 10;
    R.train = ids;
    R.n_train = n - n_held;
    R.held = ids + R.n_train;
    R.n_held = n_held;
    const int nck = (R.steps + R.eval_every - 1) / R.eval_every;
    double *acc = calloc((size_t)N_MODELS * nck * 5, sizeof(double)); /* train, held, held^2, tok/s, count */
    double *tl = malloc((size_t)nck * sizeof(double)), *hl = malloc((size_t)nck * sizeof(double)),
           *tp = malloc((size_t)nck * sizeof(double));
    int64_t params[N_MODELS] = {0};
    char report[N_MODELS][1024];
    memset(report, 0, sizeof report);
    if (!acc || !tl || !hl || !tp) rc = wmat_set_error(WMAT_ERR_NOMEM, "experiment precrop: out of memory");
    if (!rc)
        rc = wmat__table_init(out, "PreCropping (SNIP layer-wise FFN widths at init) vs full width and a uniform crop, "
                                   "trained from scratch on the same tokens",
                              "step|tokens|train_loss|heldout_loss|heldout_sd|params|ffn_params|tokens_per_s");
    for (int k = 0; !rc && k < N_MODELS; k++)
        for (int s = 0; !rc && s < seeds; s++) {
            if ((rc = train_one(&R, k, env->seed * 1000 + (uint64_t)s, tl, hl, tp, &params[k], s ? NULL : report[k],
                                sizeof report[k])))
                break;
            for (int j = 0; j < nck; j++) {
                double *a = acc + ((size_t)k * nck + j) * 5;
                a[0] += tl[j], a[1] += hl[j], a[2] += hl[j] * hl[j], a[3] += tp[j], a[4] += 1;
            }
            if (env->ctx->progress &&
                env->ctx->progress(env->ctx->progress_user, "precrop", (uint64_t)(k * seeds + s + 1),
                                   (uint64_t)(N_MODELS * seeds)))
                rc = wmat_set_error(WMAT_ERR_CANCELLED, "experiment precrop: cancelled");
        }
    /* the FFN's parameters: the full model's 3 D H L; the crops' are what
     * their trainable parameters have beyond the rest of the same model */
    const double full_ffn = 3.0 * D * H * L, rest = (double)params[M_FULL] - full_ffn;
    static const char *const label[N_MODELS] = {"full", "precrop (SNIP ratios)", "precrop-uniform"};
    for (int k = 0; !rc && k < N_MODELS; k++) {
        char series[96];
        if (k == M_FULL) snprintf(series, sizeof series, "%s H=%d", label[k], H);
        else snprintf(series, sizeof series, "%s density=%.3g", label[k], (double)R.density);
        for (int j = 0; !rc && j < nck; j++) {
            const double *a = acc + ((size_t)k * nck + j) * 5, cnt = a[4];
            const int step = j == nck - 1 ? R.steps : (j + 1) * R.eval_every;
            const double mean = a[1] / cnt, var = cnt > 1 ? (a[2] - cnt * mean * mean) / (cnt - 1) : 0;
            const double row[] = {step,
                                  (double)step * R.batch * R.ctx,
                                  a[0] / cnt,
                                  mean,
                                  sqrt(fmax(var, 0)),
                                  (double)params[k],
                                  k == M_FULL ? full_ffn : (double)params[k] - rest,
                                  a[3] / cnt};
            rc = wmat__table_add(out, series, row);
        }
    }
    free(acc), free(tl), free(hl), free(tp), free(ids);
    if (rc) return rc;
    if ((rc = wmat__table_chart(out, "tokens", "heldout_loss", 0, 0))) return rc;
    for (int k = M_PRECROP; k < N_MODELS; k++) { /* one line each in the note */
        char *nl = strchr(report[k], '\n');
        if (nl) *nl = 0;
    }
    return wmat__table_note(out,
                            "Claim (Cai et al. 2022): the layer-wise compression ratio a pruning-at-initialization score "
                            "gives is what matters; cropping whole channels to it at init trains as well as the pruned "
                            "model, and better than a uniform crop of the same size. Here: the FFN channels (gate/up "
                            "rows, down columns) of a %d-layer model of width %d, hidden %d, cropped at init to %.3g of "
                            "them by SNIP ratios and evenly; attention untouched; losses in nats per byte, means over %d "
                            "seed(s) (same init per seed). The first seed's plans: [%s] [%s]. The saved models are full-shape "
                            "with the cut channels exactly 0: inference does not speed up until per-layer FFN widths "
                            "exist; the training tokens/s above does.",
                            L, D, H, (double)R.density, seeds, report[M_PRECROP], report[M_UNIFORM]);
}

const wmat_experiment wmat__exp_precrop = {
    .name = "precrop",
    .family = WMAT_FAMILY_EXPERIMENT,
    .schema = k_schema,
    .produces = "table",
    .summary = "PreCropping: FFN widths per layer from SNIP at init vs full width and a uniform crop of equal parameters, "
               "trained from scratch: loss, parameters, tokens/s",
    .run = run,
    .smoke = "data=synthetic;max_bytes=4000;dim=16;layers=2;heads=2;hidden=16;density=0.5;ctx=16;batch=2;steps=4;"
             "eval_every=2;eval_windows=2;seeds=1",
};
