/* train: full fine-tuning, LoRA, GaLore, or pretraining from a config. */
#include "cli.h"
#include "cli_inputs.h"
#include "cli_mpi.h"
#include "cli_out.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static wmat_format out_format(const char *path, const char *to)
{
    return to ? wmat_format_from_name(to) : wmat_format_for_path(path);
}

/* The loss curve: train loss (a line) and held-out loss (a line with dots). */
static int write_svg(const char *path, const int *xs, const double *ys, int n, const int *vx, const double *vy, int vn)
{
    double *buf = malloc(((size_t)n + (size_t)vn + 1) * sizeof *buf);
    if (!buf) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", path), -1;
    for (int i = 0; i < n; i++) buf[i] = xs[i];
    for (int i = 0; i < vn; i++) buf[n + i] = vx[i];
    const cli_svg_series s[2] = {{"train loss", "#1f77b4", buf, ys, n, 1.5, 0, 0}, {"held-out loss", "#d62728", buf + n, vy, vn, 2, 1, 0}};
    int rc = cli_svg_lines(path, "step", "loss", s, 2);
    free(buf);
    return rc;
}

/* "a | b | c" of a registry into buf (the help text and error messages
 * come from the registries, so a new entry needs no edit here). */
static const char *reg_list(wmat_train_registry r, const char *sep, char *buf, size_t n)
{
    size_t k = 0;
    buf[0] = 0;
    const char *nm;
    for (int i = 0; k < n && !wmat_train_registry_entry(r, i, &nm, NULL); i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%s", i ? sep : "", nm);
    return buf;
}

static int in_registry(wmat_train_registry r, const char *name)
{
    const char *nm;
    for (int i = 0; !wmat_train_registry_entry(r, i, &nm, NULL); i++)
        if (!strcmp(nm, name)) return 1;
    return 0;
}

/* Entry 0 of a registry is its default. */
static const char *reg_default(wmat_train_registry r)
{
    const char *nm = NULL;
    wmat_train_registry_entry(r, 0, &nm, NULL);
    return nm;
}

int cmd_train(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("train");
    const char *data = NULL, *val = NULL, *method = "full", *init = NULL, *to = NULL, *targets = NULL, *gtargets = NULL;
    const char *ckpt = NULL, *resume = NULL, *csv = NULL, *svg = NULL, *lora_out = NULL, *precision = "f32",
               *eva_data = NULL;
    int eva_batches = 32;
    float eva_rho = 2.0f, eva_tau = 0.99f, spt_budget = 0, spt_threshold = 1.0f;
    const char *opt = reg_default(WMAT_REG_OPTIMIZER);
    int tokenizer_kind = 0, gmm = 0;
    int steps = 100, batch = 8, ctx = 0, accum = 1, warmup = -1, seed = 1337, eval_every = 0, eval_windows = 0;
    int recompute = 0, ckpt_every = 0, rank = 8, grank = 0, ggap = 50, rslora = 0, randomized = 0, no_shuffle = 0;
    int stop_after = 0, save_merged = 1, time_limit = 0, eval_offset = 0, merge_dense = 0;
    int ada_target = 0, ada_tinit = -1, ada_tfinal = -1, ada_deltat = 1;
    float ada_orth = 0.5f;
    int qat_bits = 4, qat_group = 0, qat_anneal = -1;
    float qat_range = 0.005f;
    cli_json js = {0};
    float lr = 0, min_lr = -1, wd = 0, clip = 1.0f, alpha = 16, gscale = 1.0f, b2 = 0.95f, mom = 0.9f, density = 0.03f, l1 = 0;
    char adapters[512], projectors[256], optimizers[256], method_help[1536], opt_help[512];
    reg_list(WMAT_REG_ADAPTER, " | ", adapters, sizeof adapters);
    reg_list(WMAT_REG_PROJECTOR, " | ", projectors, sizeof projectors);
    reg_list(WMAT_REG_OPTIMIZER, " | ", optimizers, sizeof optimizers);
    snprintf(method_help, sizeof method_help,
             "full (default), an adapter (%s; one that replaces the linears trains them in its own form, "
             "from scratch or from the model's weights, and fits --init; factors trains the low-rank factors of a "
             "model written by wmat decompose, the rest frozen) or a gradient projector (%s)", adapters, projectors);
    snprintf(opt_help, sizeof opt_help, "%s (default %s)", optimizers, opt);
    cli_opt opts[] = {
        {"--data", OPT_STR, &data, "FILE", "training stream (" CLI_TOKEN_RULE ")"},
        {"--eval", OPT_STR, &val, "FILE", "held-out stream for periodic evaluation (the same rule)"},
        {"--init", OPT_STR, &init, "CONFIG", "train a new model: preset (tiny, small, mix4m) or HF-style config.json"},
        {"--byte-tokenizer", OPT_FLAG, &tokenizer_kind, NULL, "with --init: a byte-level tokenizer (259 ids)"},
        {"--gmm-kernels", OPT_INT, &gmm, "K", "with --init: a Gaussian-mixture attention mask, K kernels per head (1..16; the paper's default 5), two parameters each (alpha ~ N(0, 2^2), sigma ~ N(10, 10^2) at init, as its paper), trained with the model (full training or a projector); OUT is a native directory (quant), the one format that stores the mask"},
        {"--method", OPT_STR, &method, "M", method_help},
        {"--optimizer", OPT_STR, &opt, "O", opt_help},
        {"--steps", OPT_INT, &steps, "N", "optimizer steps (default 100)"},
        {"--batch", OPT_INT, &batch, "B", "windows per micro-batch (default 8)"},
        {"--ctx", OPT_INT, &ctx, "T", "tokens per window (default min(seq_len, 128))"},
        {"--accum", OPT_INT, &accum, "K", "gradient accumulation micro-batches (default 1)"},
        {"--lr", OPT_FLOAT, &lr, "LR", "peak learning rate (default 1e-3; an adapter 2e-3, one that replaces the linears 3e-3, factors 1e-3)"},
        {"--min-lr", OPT_FLOAT, &min_lr, "LR", "final learning rate of the cosine (default lr/10)"},
        {"--warmup", OPT_INT, &warmup, "N", "warmup steps (default steps/20)"},
        {"--wd", OPT_FLOAT, &wd, "WD", "decoupled weight decay (default 0)"},
        {"--beta2", OPT_FLOAT, &b2, "B2", "Adam beta2 (default 0.95)"},
        {"--momentum", OPT_FLOAT, &mom, "M", "SGD momentum (default 0.9)"},
        {"--clip", OPT_FLOAT, &clip, "C", "global gradient-norm clip, 0 off (default 1)"},
        {"--seed", OPT_INT, &seed, "S", "seed of init, shuffling and LoRA init (default 1337)"},
        {"--no-shuffle", OPT_FLAG, &no_shuffle, NULL, "take windows in order"},
        {"--lora-rank", OPT_INT, &rank, "R", "adapter rank (default 8; compacter: the bottleneck width, a multiple of 4)"},
        {"--rank", OPT_INT, &rank, "R", "the same as --lora-rank"},
        {"--lora-alpha", OPT_FLOAT, &alpha, "A", "adapter alpha, scale alpha/r (default 16)"},
        {"--alpha", OPT_FLOAT, &alpha, "A", "the same as --lora-alpha"},
        {"--density", OPT_FLOAT, &density, "D", "share of each matrix in the sparse part of an adapter that has one (of a dense x sparse factorization: the share of the sparse factor's rows kept in each column) (default 0.03)"},
        {"--l1", OPT_FLOAT, &l1, "MU", "an adapter with per-layer coefficients under an L1 penalty (s2lora's lambda): mu, applied as soft-thresholding by lr * mu after every step (default 0: none)"},
        {"--adalora-target-r", OPT_INT, &ada_target, "R", "adalora: final average rank per matrix, from --lora-rank (the initial one) (default round(2/3 of it): 12 -> 8)"},
        {"--adalora-tinit", OPT_INT, &ada_tinit, "N", "adalora: steps at the initial budget before ranks are cut (default steps/10)"},
        {"--adalora-tfinal", OPT_INT, &ada_tfinal, "N", "adalora: last steps at the final budget, the rank pattern fixed (default steps/5)"},
        {"--adalora-deltat", OPT_INT, &ada_deltat, "N", "adalora: steps between budget allocations (default 1)"},
        {"--adalora-orth", OPT_FLOAT, &ada_orth, "W", "adalora: weight of the orthogonality penalty on A and B (default 0.5)"},
        {"--qat-bits", OPT_INT, &qat_bits, "B", "a quantization-aware adapter: bits of the fake-quantized (and written) weights, 2..8 (default 4)"},
        {"--qat-group", OPT_INT, &qat_group, "G", "a quantization-aware adapter: inputs per step, a multiple of 32 (default 0: one step per output channel)"},
        {"--cga-steps", OPT_INT, &qat_anneal, "N", "a quantization-aware adapter with confidence-guided annealing: the last N steps anneal (default steps/5)"},
        {"--cga-range", OPT_FLOAT, &qat_range, "R", "its boundary range in levels: weights within R of a decision boundary keep training, the rest are frozen (default 0.005)"},
        {"--merge-dense", OPT_FLAG, &merge_dense, NULL, "an adapter that replaces the linears (or factors): write them as dense f32 instead of their small form"},
        {"--lora-targets", OPT_STR, &targets, "LIST", "adapted layers: q,k,v,o,gate,up,down or all, or PEFT's q_proj,...,all-linear (default q,v; compacter: down, Compacter++)"},
        {"--rslora", OPT_FLAG, &rslora, NULL, "rank-stabilized scale alpha/sqrt(r) for the default adapter"},
        {"--lora-out", OPT_STR, &lora_out, "DIR", "also write the adapter in PEFT's layout"},
        {"--eva-data", OPT_STR, &eva_data, "FILE", "eva: calibration stream (the same rule as --data; default: the training data), read as windows of --ctx in batches of --batch"},
        {"--eva-batches", OPT_INT, &eva_batches, "N", "eva: at most N calibration batches (default 32; fewer when every input has converged)"},
        {"--eva-rho", OPT_FLOAT, &eva_rho, "RHO", "eva: components per input = round(rank * RHO), the most rank one matrix can get (default 2)"},
        {"--eva-tau", OPT_FLOAT, &eva_tau, "TAU", "eva: a component has converged when its cosine with the previous batch's is >= TAU (default 0.99)"},
        {"--spt-budget", OPT_FLOAT, &spt_budget, "N", "spt: trained floats over the targeted matrices (default 0: LoRA's at --lora-rank on them); calibrates on --eva-data or the training data, at most 8 batches (fewer with --eva-batches)"},
        {"--spt-threshold", OPT_FLOAT, &spt_threshold, "T", "spt: a matrix whose selected positions number at least T x (in + out) gets a LoRA of the rank they pay for, the others a sparse update of their positions (default 1)"},
        {"--galore-rank", OPT_INT, &grank, "R", "projector rank (default dim/4)"},
        {"--galore-gap", OPT_INT, &ggap, "T", "steps between projector updates (default 50)"},
        {"--galore-scale", OPT_FLOAT, &gscale, "S", "projected update scale (default 1)"},
        {"--galore-targets", OPT_STR, &gtargets, "LIST", "projected matrices (default all seven)"},
        {"--galore-randomized", OPT_FLAG, &randomized, NULL, "randomized range finder instead of a full singular value decomposition"},
        {"--recompute", OPT_FLAG, &recompute, NULL, "keep only each block's input in the forward and recompute the block in the backward (less activation memory, same gradients)"},
        {"--precision", OPT_STR, &precision, "P", "GEMM precision: f32 (default) or bf16 (mixed precision: bf16 operands in the linear layers' forward and backward GEMMs, fp32 accumulation, master weights, optimizer and everything else; needs oneDNN on a CPU with AVX512-BF16 or AMX, refused elsewhere)"},
        {"--eval-every", OPT_INT, &eval_every, "N", "evaluate on --eval every N steps (default steps/10)"},
        {"--max-windows", OPT_INT, &eval_windows, "K", "windows per evaluation (default all)"},
        {"--offset", OPT_INT, &eval_offset, "N", "skip the first N tokens of the --eval stream (a held-out part)"},
        {"--checkpoint", OPT_STR, &ckpt, "FILE", "save a training checkpoint here (every --checkpoint-every and at the end)"},
        {"--checkpoint-every", OPT_INT, &ckpt_every, "N", "checkpoint period in steps"},
        {"--resume", OPT_STR, &resume, "FILE", "resume from a checkpoint"},
        {"--stop-after", OPT_INT, &stop_after, "N", "stop after step N (simulates an interruption)"},
        {"--time-limit", OPT_INT, &time_limit, "S", "stop after S seconds of training (the schedule still spans --steps)"},
        {"--csv", OPT_STR, &csv, "FILE", "loss curve CSV (default OUT.loss.csv)"},
        {"--svg", OPT_STR, &svg, "FILE", "loss curve SVG (default OUT.loss.svg)"},
        {"--to", OPT_STR, &to, "FMT", "output format llama2c|gguf|hf|quant (default by extension; an adapter that replaces the linears: quant, a native directory)"},
        CLI_JSON_OPTS(&js),
        {NULL, 0, NULL, NULL, NULL},
    };
    const char *pos[2];
    int np, rc = cli_parse(cmd, argc, argv, opts, pos, 1, 2, &np);
    if (rc) return rc == 1 ? 0 : rc;
    const char *model_path = init ? NULL : pos[0];
    const char *out = init ? pos[0] : (np == 2 ? pos[1] : NULL);
    if (init && np != 1) return cli_usage_error("train", "with --init give only OUT");
    if (!init && np != 2) return cli_usage_error("train", "give MODEL and OUT (or --init CONFIG OUT)");
    if (!data) return cli_usage_error("train", "--data FILE is required");
    if (eval_windows < 0) return cli_usage_error("train", "--max-windows must be >= 0 (got %d; 0: all)", eval_windows);
    if (eval_offset < 0) return cli_usage_error("train", "--offset must be >= 0 (got %d)", eval_offset);
    if ((rc = cli_json_check("train", &js))) return rc;
    if (gmm && !init) return cli_usage_error("train", "--gmm-kernels is for a new model (--init)");
    if (gmm < 0 || gmm > 16) return cli_usage_error("train", "--gmm-kernels must be 1..16 kernels per head (got %d)", gmm);
    /* a masked model is stored only in the native directory: a directory OUT is one */
    if (gmm && (to ? out_format(out, to) != WMAT_FMT_QUANT : out_format(out, NULL) != WMAT_FMT_HF))
        return cli_usage_error("train", "--gmm-kernels: only the native directory (quant) stores the mask: give a directory "
                                        "as OUT (or --to quant), not %s", out);
    wmat_train_params p = wmat_train_default_params();
    if (!strcmp(method, "full")) {
        p.method = WMAT_TRAIN_FULL;
    } else if (in_registry(WMAT_REG_ADAPTER, method)) {
        p.method = WMAT_TRAIN_LORA;
        p.adapter = method;
    } else if (in_registry(WMAT_REG_PROJECTOR, method)) {
        p.method = WMAT_TRAIN_GALORE;
        p.projector = method;
    } else {
        return cli_usage_error("train", "--method must be full, an adapter (%s) or a projector (%s)", adapters, projectors);
    }
    if (!in_registry(WMAT_REG_OPTIMIZER, opt)) return cli_usage_error("train", "--optimizer must be one of %s", optimizers);
    p.optimizer_name = opt;
    const int akind = p.adapter ? wmat_train_adapter_replaces_base(p.adapter) : 0;
    /* an adapter that replaces the linears (sltrain) trains them from
     * scratch: it fits --init, and targets every linear unless told */
    const int replaces = akind == 1;
    /* one that trains the factors a decomposition left (factors) keeps the
     * base's kinds too, and finds its layers itself among all linears */
    const int adopts = akind == 2, keeps = replaces || adopts;
    /* one that is not a weight delta has no merged model or PEFT file: its
     * trained form is the checkpoint. Added to a base (compacter): after
     * the FFN unless told; replacing the linears from scratch
     * (hashed tables): as sltrain, it fits --init and targets every linear */
    const int nomerge = akind == 3 || akind == 4, scratch = replaces || akind == 4;
    if (init && p.method == WMAT_TRAIN_LORA && !scratch)
        return cli_usage_error("train", "an adapter needs a pretrained MODEL, not --init");
    if (gmm && p.method == WMAT_TRAIN_LORA)
        return cli_usage_error("train", "--gmm-kernels: adapters do not train a masked model (full training or a projector do)");
    if (merge_dense && !keeps)
        return cli_usage_error("train", "--merge-dense is for an adapter that replaces the linears or trains a decomposition's factors");
    if ((keeps || scratch) && !targets) p.lora_targets = (1u << WMAT_LIN_COUNT) - 1;
    if (nomerge && lora_out)
        return cli_usage_error("train", "%s is not a weight delta: PEFT has no such adapter and it cannot be merged (no --lora-out); the trained adapter is kept in the training checkpoint", method);
    if (nomerge && !scratch && !targets) p.lora_targets = 1u << WMAT_LIN_DOWN;
    if (l1 < 0) return cli_usage_error("train", "--l1 must be >= 0");
    p.adapter_l1 = l1;
    if (steps <= 0 || batch <= 0 || accum <= 0 || ctx < 0) return cli_usage_error("train", "--steps, --batch, --accum must be positive");
    if (targets && wmat_train_parse_targets(targets, &p.lora_targets)) return cli_usage_error("train", "--lora-targets: %s", wmat_last_error());
    if (gtargets && wmat_train_parse_targets(gtargets, &p.galore_targets))
        return cli_usage_error("train", "--galore-targets: %s", wmat_last_error());
    p.steps = steps;
    p.batch = batch;
    p.ctx = ctx;
    p.grad_accum = accum;
    p.lr = lr > 0 ? lr : scratch ? 3e-3f : adopts ? 1e-3f : (p.method == WMAT_TRAIN_LORA ? 2e-3f : 1e-3f);
    p.min_lr = min_lr;
    p.warmup = warmup >= 0 ? warmup : steps / 20;
    p.weight_decay = wd;
    p.beta2 = b2;
    p.momentum = mom;
    p.grad_clip = clip;
    p.seed = (uint64_t)seed;
    p.shuffle = !no_shuffle;
    p.lora_rank = rank;
    p.lora_alpha = alpha;
    p.adapter_density = density;
    p.adalora_target_r = ada_target;
    p.adalora_tinit = ada_tinit;
    p.adalora_tfinal = ada_tfinal;
    p.adalora_deltat = ada_deltat;
    p.adalora_orth = ada_orth;
    p.adapter_calib_batches = eva_batches;
    p.eva_rho = eva_rho;
    p.eva_tau = eva_tau;
    p.spt_budget = spt_budget;
    p.spt_threshold = spt_threshold;
    p.qat_bits = qat_bits;
    p.qat_group = qat_group;
    p.qat_cga_steps = qat_anneal;
    p.qat_cga_range = qat_range;
    p.lora_rslora = rslora;
    p.galore_rank = grank;
    p.galore_gap = ggap;
    p.galore_scale = gscale;
    p.galore_randomized = randomized;
    p.recompute = recompute;
    if (!strcmp(precision, "f32") || !strcmp(precision, "fp32")) p.precision = WMAT_F32;
    else if (!strcmp(precision, "bf16")) p.precision = WMAT_BF16;
    else return cli_usage_error("train", "--precision must be f32 or bf16 (got %s)", precision);
    wmat_context wc = wmat_context_default();
    wc.n_threads = g_cli.threads;
    wc.comm = cli_mpi_comm(); /* under mpirun: data-parallel, rank 0 prints and writes */
    p.exec = &wc;
    const int writer = cli_mpi_writer();
    /* tests of a failing rank: WMAT_MPI_FAIL_AT=RANK:STEP ends that rank with an error after STEP */
    int fail_rank = -1, fail_step = 0;
    if (getenv("WMAT_MPI_FAIL_AT") && sscanf(getenv("WMAT_MPI_FAIL_AT"), "%d:%d", &fail_rank, &fail_step) != 2)
        fail_rank = -1;

    wmat_model *m = NULL;
    wmat_trainer *t = NULL;
    int32_t *ids = NULL, *vids = NULL, *cids = NULL;
    size_t n = 0, vn = 0, cn = 0;
    int *xs = NULL, *vx = NULL;
    char *report0 = NULL; /* the adapter's report before training (an entry with a running status updates it) */
    double *ys = NULL, *vy = NULL;
    int n_pts = 0, n_v = 0;
    FILE *fcsv = NULL;
    wmat_afile csv_af = {0};
    int ret = 1;
    /* an adapter trains over the frozen base as stored (a q4_0 or packed
     * base stays that size); full training and projectors update the
     * weights themselves, in f32 */
    const int load_as = p.method == WMAT_TRAIN_LORA && !scratch ? CLI_LOAD_STORED : CLI_LOAD_F32;
    if (init) {
        wmat_config c;
        memset(&c, 0, sizeof c);
        wmat_tokenizer *tok = NULL;
        if (tokenizer_kind) {
            if (wmat_tokenizer_bytes(&tok)) return cli_fail("train");
        } else if (g_cli.tokenizer) {
            if (wmat_tokenizer_load_llama2c(&tok, g_cli.tokenizer, 0)) return cli_fail("train");
        } else {
            return cli_usage_error("train", "--init needs a tokenizer: --byte-tokenizer or --tokenizer FILE");
        }
        c.vocab_size = wmat_tokenizer_vocab_size(tok);
        int crc = wmat_train_config(init, &c);
        c.gmm_kernels = gmm; /* its parameters: wmat_model_init_random draws them as the paper */
        if (crc || wmat_model_create(&m, &c) || wmat_model_init_random(m, (uint64_t)seed, 0.02f)) {
            wmat_tokenizer_free(tok);
            wmat_model_free(m);
            return cli_fail("train");
        }
        if (wmat_tokenizer_vocab_size(tok) != c.vocab_size) {
            wmat_tokenizer_free(tok);
            wmat_model_free(m);
            return cli_usage_error("train", "the config's vocab_size differs from the tokenizer's (%d)", c.vocab_size);
        }
        wmat_model_set_tokenizer(m, tok);
    } else if (cli_load_model("train", model_path, load_as, &m)) {
        return 1;
    }
    const wmat_config *c = wmat_model_config(m);
    if (cli_load_token_input("train", m, "--data", data, &ids, &n)) goto done;
    if (val && cli_load_token_input("train", m, "--eval", val, &vids, &vn)) goto done;
    if (vids && (size_t)eval_offset + 2 > vn) {
        fprintf(stderr, "wmat train: error: --offset %d leaves fewer than 2 of the %zu tokens of %s\n", eval_offset, vn, val);
        goto done;
    }
    if (vids && eval_offset) {
        memmove(vids, vids + eval_offset, (vn - (size_t)eval_offset) * sizeof *vids);
        vn -= (size_t)eval_offset;
    }
    /* an adapter that plans from data (eva) calibrates on --eva-data or the training data */
    if (eva_data && cli_load_token_input("train", m, "--eva-data", eva_data, &cids, &cn)) goto done;
    p.adapter_calib = cids ? cids : ids;
    p.adapter_calib_n = cids ? cn : n;
    if (wmat_trainer_create(&t, m, &p) || wmat_trainer_set_data(t, ids, n)) {
        cli_fail("train");
        goto done;
    }
    if (writer && *wmat_trainer_adapter_report(t)) fputs(wmat_trainer_adapter_report(t), stderr);
    report0 = strdup(wmat_trainer_adapter_report(t));
    if (resume && wmat_trainer_load_checkpoint(t, resume)) {
        cli_fail("train");
        goto done;
    }
    int T = ctx > 0 ? ctx : (c->seq_len < 128 ? c->seq_len : 128);
    if (eval_every <= 0) eval_every = steps / 10 > 0 ? steps / 10 : 1;
    wmat_train_memory mem;
    wmat_trainer_memory(t, &mem);
    char b1[32], b2s[32], b3[32], b4[32], b5[32];
    fprintf(stderr, "train: %s, %s, %lld params (%lld trainable), %zu tokens, batch %d x ctx %d x accum %d, %d steps, lr %g\n",
            method, init ? init : model_path, (long long)wmat_model_n_params(m), (long long)mem.trainable, n, batch, T, accum,
            steps, p.lr);
    fprintf(stderr, "memory: weights %s, grads %s, optimizer %s, activations %s, peak RSS %s\n",
            cli_bytes((double)mem.weights, b1, sizeof b1), cli_bytes((double)mem.grads, b2s, sizeof b2s),
            cli_bytes((double)mem.optim, b3, sizeof b3), cli_bytes((double)mem.activations, b4, sizeof b4),
            cli_bytes((double)mem.peak_rss, b5, sizeof b5));
    if (p.precision == WMAT_BF16)
        fprintf(stderr, "precision bf16: GEMM operand copies %s (weights and activations, on top of the above)\n",
                cli_bytes((double)mem.bf16, b1, sizeof b1));
    char csv_def[4096], svg_def[4096];
    snprintf(csv_def, sizeof csv_def, "%s.loss.csv", out);
    snprintf(svg_def, sizeof svg_def, "%s.loss.svg", out);
    if (!csv) csv = csv_def;
    if (!svg) svg = svg_def;
    fcsv = writer ? cli_out_open(&csv_af, csv) : fopen("/dev/null", "w");
    if (!fcsv) {
        fprintf(stderr, "wmat train: error: cannot write %s: %s\n", csv, wmat_last_error());
        goto done;
    }
    fprintf(fcsv, "step,train_loss,val_loss,lr,grad_norm,tokens_per_s\n");
    xs = malloc((size_t)steps * sizeof *xs);
    ys = malloc((size_t)steps * sizeof *ys);
    vx = malloc(((size_t)steps + 2) * sizeof *vx);
    vy = malloc(((size_t)steps + 2) * sizeof *vy);
    if (!xs || !ys || !vx || !vy) goto done;
    double val0 = NAN, vlast = NAN, tsum = 0, tok_sum = 0, comm_sum = 0;
    wmat_eval_result er;
    /* the held-out loss before training, or that of a finished run resumed
     * from its checkpoint (nothing left to train: the way to evaluate an
     * adapter whose trained form is the checkpoint) */
    const int done0 = wmat_trainer_steps_done(t);
    if (vids && (done0 == 0 || done0 >= steps)) {
        if (wmat_trainer_eval(t, vids, vn, T, eval_windows, &er)) {
            cli_fail("train");
            goto done;
        }
        val0 = vlast = er.mean_nll;
        vx[n_v] = done0;
        vy[n_v++] = er.mean_nll;
        fprintf(stderr, "step %5d  held-out loss %.4f  ppl %.2f\n", done0, er.mean_nll, er.ppl);
        fprintf(fcsv, "%d,,%.6f,,,\n", done0, er.mean_nll);
    }
    double last_loss = NAN;
    int start = wmat_trainer_steps_done(t);
    for (int s = start; s < steps; s++) {
        wmat_train_step_info si;
        if (wmat_trainer_step(t, &si)) {
            cli_fail("train");
            goto done;
        }
        if (fail_rank == wmat_comm_rank(wc.comm) && si.step == fail_step) {
            fprintf(stderr, "wmat train: error: rank %d: failure injected after step %d (WMAT_MPI_FAIL_AT)\n", fail_rank,
                    si.step);
            goto done;
        }
        tsum += si.seconds;
        tok_sum += (double)si.tokens;
        comm_sum += si.comm_seconds;
        last_loss = si.loss;
        xs[n_pts] = si.step;
        ys[n_pts++] = si.loss;
        double tps = tok_sum / tsum, eta = tsum / (s - start + 1) * (steps - s - 1);
        int do_eval = vids && (si.step % eval_every == 0 || si.step == steps);
        double vl = NAN;
        if (do_eval) {
            if (wmat_trainer_eval(t, vids, vn, T, eval_windows, &er)) {
                cli_fail("train");
                goto done;
            }
            vl = vlast = er.mean_nll;
            vx[n_v] = si.step;
            vy[n_v++] = vl;
        }
        fprintf(fcsv, "%d,%.6f,", si.step, si.loss);
        if (do_eval) fprintf(fcsv, "%.6f", vl);
        fprintf(fcsv, ",%g,%.4f,%.1f\n", si.lr, si.grad_norm, si.tokens / (si.seconds > 0 ? si.seconds : 1e-9));
        if (do_eval || si.step % 10 == 0 || si.step == steps || si.step == start + 1) {
            fprintf(stderr, "step %5d/%d  loss %.4f  lr %.2e  |g| %.3f  %.0f tok/s  ETA %.0fs", si.step, steps, si.loss, si.lr,
                    si.grad_norm, tps, eta);
            if (do_eval) fprintf(stderr, "  held-out loss %.4f ppl %.2f", vl, exp(vl));
            fprintf(stderr, "\n");
        }
        if (writer && ckpt && ckpt_every > 0 && si.step % ckpt_every == 0 && wmat_trainer_save_checkpoint(t, ckpt)) {
            cli_fail("train");
            goto done;
        }
        if (stop_after > 0 && si.step >= stop_after) break;
        if (cli_interrupted) {
            /* a checkpoint to resume from, and no other output */
            char def[4200];
            snprintf(def, sizeof def, "%s.ckpt", out);
            const char *cp = ckpt ? ckpt : def;
            if (writer && wmat_trainer_save_checkpoint(t, cp)) {
                fprintf(stderr, "wmat train: error: checkpoint %s: %s\n", cp, wmat_last_error());
            } else {
                fprintf(stderr, "wmat train: interrupted after step %d; checkpoint %s (continue with the same command and --resume %s)\n",
                        si.step, cp, cp);
            }
            goto done;
        }
        if (time_limit > 0 && tsum >= time_limit && si.step < steps) {
            if (vids && !do_eval && !wmat_trainer_eval(t, vids, vn, T, eval_windows, &er)) {
                vlast = er.mean_nll;
                vx[n_v] = si.step;
                vy[n_v++] = er.mean_nll;
            }
            fprintf(stderr, "time limit of %d s reached after step %d\n", time_limit, si.step);
            break;
        }
    }
    if (writer && report0 && strcmp(report0, wmat_trainer_adapter_report(t))) fputs(wmat_trainer_adapter_report(t), stderr);
    if (!writer) {
        /* ranks > 0: the same training, nothing to write */
        fclose(fcsv);
        fcsv = NULL;
        ret = 0;
        goto done;
    }
    if (ckpt && wmat_trainer_save_checkpoint(t, ckpt)) {
        cli_fail("train");
        goto done;
    }
    fcsv = NULL;
    if (cli_out_close(&csv_af)) {
        cli_fail("train");
        goto done;
    }
    if (write_svg(svg, xs, ys, n_pts, vx, vy, n_v))
        fprintf(stderr, "wmat train: warning: cannot write %s: %s\n", svg, wmat_last_error());
    if (lora_out && wmat_trainer_save_lora(t, lora_out)) {
        cli_fail("train");
        goto done;
    }
    wmat_model *trained;
    if (nomerge) {
        /* no merged model: the adapter lives in the checkpoint */
        char def[4200];
        snprintf(def, sizeof def, "%s.ckpt", out);
        if (!ckpt && wmat_trainer_save_checkpoint(t, def)) {
            cli_fail("train");
            goto done;
        }
        fprintf(stderr, "wmat train: %s is not a weight delta: no merged %s written; the trained adapter is in the "
                        "checkpoint %s (resume or evaluate from it with the same command and --resume)\n",
                method, out, ckpt ? ckpt : def);
        save_merged = 0;
    }
    if (save_merged) {
        wmat_save_params sp = wmat_save_default_params();
        sp.format = out_format(out, to);
        /* a replacing adapter's layers are weights of small kinds (sltrain:
         * low-rank + sparse): the native directory keeps them as they are,
         * unless --merge-dense asks for dense f32 in any format */
        if (keeps && !merge_dense) {
            if (!to && sp.format != WMAT_FMT_HF) {
                cli_usage_error("train", "%s keeps its layers in their small form in a native directory: give a directory "
                                         "as OUT, or --merge-dense for a dense %s", method, wmat_format_name(sp.format));
                goto done;
            }
            if (!to) sp.format = WMAT_FMT_QUANT;
        }
        if (gmm && !to) sp.format = WMAT_FMT_QUANT; /* checked above: OUT is a directory */
        if (sp.format == WMAT_FMT_UNKNOWN) {
            cli_usage_error("train", "--to must be llama2c, gguf, hf or quant");
            goto done;
        }
        if (wmat_trainer_model(t, &trained) || (merge_dense && wmat_model_dequantize(trained)) ||
            wmat_model_save(trained, out, &sp)) {
            cli_fail("train");
            goto done;
        }
    }
    wmat_trainer_memory(t, &mem);
    if (nomerge)
        fprintf(stderr, "loss curve %s, %s; peak RSS %s\n", csv, svg, cli_bytes((double)mem.peak_rss, b5, sizeof b5));
    else
        fprintf(stderr, "saved %s (%s); loss curve %s, %s; peak RSS %s\n", out,
                wmat_format_name((keeps && !merge_dense) || gmm ? (to ? out_format(out, to) : WMAT_FMT_QUANT) : out_format(out, to)), csv, svg,
                cli_bytes((double)mem.peak_rss, b5, sizeof b5));
    int jfail;
    FILE *jf = cli_json_open("train", &js, &jfail);
    if (jfail) goto done;
    if (jf) {
        fprintf(jf, "{\"method\": \"%s\", \"steps\": %d, \"final_train_loss\": %.6f, \"val_loss_start\": %.6f, \"val_loss_end\": %.6f, "
               "\"tokens_per_s\": %.1f, \"seconds\": %.3f, \"trainable_params\": %lld, \"bytes_weights\": %zu, \"bytes_grads\": %zu, "
               "\"bytes_optimizer\": %zu, \"bytes_optimizer_scratch\": %zu, \"bytes_activations\": %zu, \"peak_rss\": %zu, "
               "\"galore_state_bytes\": %zu, \"galore_adamw_equiv_bytes\": %zu, \"ranks\": %d, \"comm_seconds\": %.3f, "
               "\"precision\": \"%s\", \"bytes_bf16\": %zu}\n",
               method, wmat_trainer_steps_done(t), isnan(last_loss) ? -1.0 : last_loss, isnan(val0) ? -1.0 : val0, isnan(vlast) ? -1.0 : vlast,
               tsum > 0 ? tok_sum / tsum : 0.0, tsum, (long long)mem.trainable, mem.weights, mem.grads, mem.optim,
               mem.optim_scratch, mem.activations, mem.peak_rss, mem.galore_state, mem.galore_adam_equiv,
               wmat_comm_size(wc.comm), comm_sum, p.precision == WMAT_BF16 ? "bf16" : "f32", mem.bf16);
        if (cli_json_close("train", &js)) goto done;
    }
    ret = 0;
done:
    if (fcsv && writer) cli_out_abort(&csv_af); /* a failed run leaves no partial loss log */
    else if (fcsv) fclose(fcsv);
    free(report0);
    free(xs);
    free(ys);
    free(vx);
    free(vy);
    wmat_trainer_free(t);
    free(ids);
    free(vids);
    free(cids);
    wmat_model_free(m);
    return ret;
}
