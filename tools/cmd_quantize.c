/* wmat quantize: post-training quantization with calibration, a per-tensor
 * report, optional fake-quant perplexity, and packed output through the
 * quantized storage (native directory or GGUF). */
#include "cli.h"
#include "cli_inputs.h"
#include "cli_mpi.h"
#include "cli_out.h"
#include "quant/methods.h"
#include "quant/qmodel.h"
#include "train/reconstruct.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    double t0, last;
    int printed;
} qprogress;

/* A bar per tensor with the time left, on stderr when it is a terminal. */
static int progress_eta(void *user, const char *what, uint64_t done, uint64_t total)
{
    qprogress *q = user;
    if (cli_interrupted) return 1;
    if (total == 0) return 0;
    const double el = wmat__now() - q->t0, eta = done ? el / (double)done * (double)(total - done) : 0.0;
    if (!isatty(STDERR_FILENO)) {
        /* a log: a line every few seconds and at the end */
        /* quick runs print nothing; long ones a line every 5 s and the end */
        if (wmat__now() - q->last >= 5.0 || (done == total && q->printed)) {
            q->last = wmat__now();
            q->printed = 1;
            fprintf(stderr, "quantize: %llu/%llu %s, %.0f s, ETA %.0f s\n", (unsigned long long)done,
                    (unsigned long long)total, what, el, eta);
        }
        return 0;
    }
    const int width = 24, fill = (int)((double)done / (double)total * width);
    fprintf(stderr, "\rquantize [");
    for (int i = 0; i < width; i++) fputc(i < fill ? '=' : ' ', stderr);
    fprintf(stderr, "] %llu/%llu %-40.40s ETA %5.1fs", (unsigned long long)done, (unsigned long long)total, what, eta);
    if (done == total) fputc('\n', stderr);
    fflush(stderr);
    return 0;
}

/* A line per reconstruction window, with the time left. */
static int recon_progress(void *user, const char *what, uint64_t done, uint64_t total)
{
    qprogress *q = user;
    if (cli_interrupted) return 1;
    const double el = wmat__now() - q->t0, eta = done ? el / (double)done * (double)(total - done) : 0.0;
    fprintf(stderr, "%s, %.1f s, ETA %.0f s\n", what, el, eta);
    return 0;
}

/* The one place that hands results to quantized storage. */
static int write_packed(wmat_model *m, wmat_qresult *results, const char *out, wmat_format fmt)
{
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        if (!wmat_qresult_done(&results[i])) continue;
        int rc = wmat_model_set_quantized(m, wmat_model_tensor(m, i)->name, &results[i]);
        if (rc) return rc;
    }
    return wmat_quant_model_save(m, out, fmt);
}

#define QFAMILY WMAT_FAMILY_QUANTIZATION

/* The allocation's table (one line per tensor: each candidate's loss
 * increase and bits, the choice starred) and its summary. */
static void print_allocation(FILE *f, const wmat_alloc_report *ar, const char *cands)
{
    double mix[8] = {0}, n = 0;
    for (int i = 0; i < ar->n_tensors; i++) {
        mix[ar->tensors[i].choice] += (double)ar->tensors[i].n;
        n += (double)ar->tensors[i].n;
    }
    if (f) {
        fprintf(f, "allocation    candidates %s; fp32 calibration loss %.5f\n", cands, ar->loss0);
        fprintf(f, "%-44s", "loss increase alone (bpw); [chosen]");
        for (const char *s = cands; *s;) {
            const size_t n = strcspn(s, ",");
            fprintf(f, "   %-18.*s", (int)(n < 18 ? n : 18), s);
            s += n + (s[n] == ',');
        }
        fputc('\n', f);
        for (int i = 0; i < ar->n_tensors; i++) {
            const wmat_alloc_tensor *t = &ar->tensors[i];
            fprintf(f, "%-44s", t->name);
            for (int c = 0; c < ar->n_candidates; c++)
                fprintf(f, "  %c%+.5f (%5.2f)%c", c == t->choice ? '[' : ' ', t->dloss[c], t->bits_per_weight[c], c == t->choice ? ']' : ' ');
            fputc('\n', f);
        }
    }
    fprintf(stderr, "allocation    %.3f bits per weight chosen; predicted loss increase %+.5f; ", ar->bits_per_weight, ar->predicted_dloss);
    for (int c = 0; c < ar->n_candidates; c++) fprintf(stderr, "%scandidate %d on %.1f%% of the weights", c ? ", " : "", c, n > 0 ? 100 * mix[c] / n : 0);
    fprintf(stderr, " (%.1f s)\n", ar->seconds);
}

int cmd_quantize(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("quantize");
    wmat_quantize_params qp = wmat_quantize_default_params();
    const char *method = qp.method, *ggml = NULL, *calib = NULL, *to = "native", *seq = "stage", *keep = NULL,
               *overrides = NULL, *allocate = NULL, *calib_dtype = "f32";
    float alloc_bpw = 0;
    int alloc_windows = 32;
    int calib_tokens = 0, calib_ctx = 0, group_fallback = 0, embeddings = 0, classifier = 0, quiet = 0;
    int low_mem = 0, no_low_mem = 0;
    cli_eval evo = {0};
    cli_json js = {0};
    char method_help[96];
    snprintf(method_help, sizeof method_help, "quantization method (default %s; the methods are listed below)", method);
    cli_opt opts[] = {
        {"--method", OPT_STR, &method, "M", method_help},
        {"--calib", OPT_STR, &calib, "FILE", "calibration stream (" CLI_TOKEN_RULE ")"},
        {"--calib-tokens", OPT_INT, &calib_tokens, "N", "calibration tokens (default 64 windows, or the file if shorter)"},
        {"--calib-ctx", OPT_INT, &calib_ctx, "T", "calibration window (default min(context, 256))"},
        {"--calib-dtype", OPT_STR, &calib_dtype, "DT", "f32 (default) or bf16: the calibration forward's linear products on bf16 operands (oneDNN, fp32 accumulation; norms, attention and the statistics stay fp32); needs AVX512-BF16 or AMX"},
        {"--sequential", OPT_STR, &seq, "MODE", "stage (default, 'true-sequential': q/k/v, o, gate/up, down in turn, each on the model quantized so far), block (block l calibrated on blocks < l quantized; fewer passes), off"},
        {"--keep", OPT_STR, &keep, "PATS", "comma-separated name patterns left in fp32 (glob or substring)"},
        {"--override", OPT_STR, &overrides, "LIST", "PATTERN=METHOD[:BITS[:G|oc|ic]][:KEY=VALUE]...,... per-tensor choices (below)"},
        {"--allocate", OPT_STR, &allocate, "LIST", "bit allocation: candidate settings SPEC,SPEC,... (SPEC an --override item without PATTERN: METHOD[:BITS[:G|oc|ic]][:KEY=VALUE]..., e.g. M:2:64,M:3:oc); each tensor gets the one a measured knapsack picks under --bpw"},
        {"--bpw", OPT_FLOAT, &alloc_bpw, "B", "with --allocate: budget in bits per weight over the quantized tensors"},
        {"--allocate-windows", OPT_INT, &alloc_windows, "K", "with --allocate: calibration windows of the sensitivity loss (default 32; 8 measured too noisily on mix4m)"},
        {"--group-fallback", OPT_FLAG, &group_fallback, NULL, "per-channel where G does not divide a width"},
        {"--embeddings", OPT_FLAG, &embeddings, NULL, "also quantize the token embedding"},
        {"--classifier", OPT_FLAG, &classifier, NULL, "also quantize the classifier (the embedding when tied)"},
        {"--ggml", OPT_STR, &ggml, "FTYPE", "llama.cpp file type (q4_k_m, q4_k_s, q3_k_m, q3_k_s, q3_k_l, q5_k_m, q5_k_s, q2_k, q6_k, q3_k, q4_k, q5_k): each tensor in the ggml block type llama.cpp's rules give it, values chosen by --method (llama.cpp's own search for a data-free method, its importance-weighted search with activation statistics, error feedback into the blocks for a Hessian method; docs/QUANT.md 'GGUF K-quants'); with --to gguf"},
        {"--to", OPT_STR, &to, "FMT", "native (default), gguf, gptq (a GPTQ checkpoint: HF directory with qweight/qzeros/scales/g_idx), or none (report / --eval only)"},
        CLI_EVAL_INPUT_OPTS(&evo, "perplexity of the quantized weights on this stream (fake-quant)"),
        CLI_EVAL_CTX_OPT(&evo, "evaluation window (default min(context, 256))"),
        CLI_EVAL_WINDOW_OPTS(&evo, "evaluate the first K windows (default all)"),
        {"--quiet", OPT_FLAG, &quiet, NULL, "no per-tensor table"},
        {"--low-mem", OPT_FLAG, &low_mem, NULL,
         "out of core: pack each block once the calibration has passed it and release its pages (the model then "
         "holds packed weights, not fake-quant fp32; default when the model maps >= 2 GiB of weights; docs/SCALING.md)"},
        {"--no-low-mem", OPT_FLAG, &no_low_mem, NULL, "keep fake-quant fp32 weights of every block until the end"},
        CLI_JSON_OPTS(&js),
        {NULL, 0, NULL, NULL, NULL},
    };
    /* the methods' keys are flags too (--bits 3, --act-order, --asym, ...) */
    wmat_param_spec keys[64];
    wmat_pset mps;
    if (cli_method_keys(QFAMILY, keys, 64, &mps)) return cli_fail("quantize");
    char *mhelp = cli_methods_help(
        QFAMILY, "(--calib)",
        "--override PATTERN=METHOD[:BITS[:GROUP|oc|ic]][:KEY=VALUE]... (comma-separated items) gives the\n"
        "tensors whose names match PATTERN (glob or substring; the last match wins) their own method, and\n"
        "keys on top of the command line's: PATTERN=keep leaves them fp32. KEY is a key of that method,\n"
        "written with '_' or '-'; a bool may be given bare (act_order) or by its negation (asym).\n"),
         kv[1024];
    const char *pos[2];
    int np, rc = cli_parse_params(cmd, argc, argv, opts, &mps,
                                  "method parameters (--KEY VALUE here; KEY=VALUE in --override)", mhelp, pos, 1, 2, &np);
    free(mhelp);
    const int kv_len = wmat__pset_format(&mps, 1, ',', kv, sizeof kv);
    if (rc) {
        wmat__pset_free(&mps);
        return rc == 1 ? 0 : rc;
    }
    if ((size_t)kv_len >= sizeof kv) {
        wmat__pset_free(&mps);
        return cli_usage_error("quantize", "method parameters too long");
    }
    qp.method = method;
    qp.method_params = kv;
    qp.overrides = overrides;
    if (!strcmp(calib_dtype, "f32")) qp.calib_dtype = WMAT_F32;
    else if (!strcmp(calib_dtype, "bf16")) qp.calib_dtype = WMAT_BF16;
    else {
        wmat__pset_free(&mps);
        return cli_usage_error("quantize", "--calib-dtype must be f32 or bf16 (got '%s')", calib_dtype);
    }
    rc = wmat__quantize_check(&qp);
    /* a key the method does not read is harmless (it may be meant for an
     * --override method), so it is only noted, and only without --override */
    if (!rc && !overrides) cli_note_unread_keys("quantize", QFAMILY, method, &mps);
    /* GPTQ's layout holds uniform grids along the inputs in 2, 3, 4 or 8
     * bits: refuse anything else before calibrating (the save checks every
     * tensor again, --override included) */
    const char *gptq_why = NULL;
    if (!rc && !strcmp(to, "gptq")) {
        const int64_t bits = wmat__pset_int(&mps, "bits");
        if (strcmp(cli_method_produces(QFAMILY, method), "qpacked"))
            gptq_why = "a GPTQ checkpoint stores uniform grids (methods that produce qpacked weights: wmat methods)";
        else if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
            gptq_why = "a GPTQ checkpoint holds 2, 3, 4 or 8 bits";
        else if (wmat__pset_int(&mps, "per_ic"))
            gptq_why = "GPTQ's groups run along the inputs (no --per-ic)";
    }
    wmat__pset_free(&mps);
    if (gptq_why) return cli_usage_error("quantize", "--to gptq: %s", gptq_why);
    if (rc) return cli_usage_error("quantize", "%s", wmat_last_error());
    wmat_format fmt = WMAT_FMT_UNKNOWN;
    if (!strcmp(to, "native")) fmt = WMAT_FMT_QUANT;
    else if (!strcmp(to, "gguf")) fmt = WMAT_FMT_GGUF;
    else if (!strcmp(to, "gptq")) fmt = WMAT_FMT_GPTQ;
    else if (strcmp(to, "none")) return cli_usage_error("quantize", "--to must be native, gguf, gptq or none (got '%s')", to);
    if (fmt != WMAT_FMT_UNKNOWN && np < 2) return cli_usage_error("quantize", "give OUT (or --to none)");
    if (ggml && fmt != WMAT_FMT_GGUF && fmt != WMAT_FMT_UNKNOWN)
        return cli_usage_error("quantize", "--ggml writes ggml block types: use --to gguf (or --to none)");
    if (calib_tokens < 0) return cli_usage_error("quantize", "--calib-tokens must be >= 0 (got %d)", calib_tokens);
    if (calib_ctx < 0) return cli_usage_error("quantize", "--calib-ctx must be >= 0 (got %d)", calib_ctx);
    if ((rc = cli_eval_check("quantize", &evo)) || (rc = cli_json_check("quantize", &js))) return rc;
    if (!allocate != !(alloc_bpw > 0)) return cli_usage_error("quantize", "give --allocate LIST and --bpw B together");
    if (alloc_windows <= 0) return cli_usage_error("quantize", "--allocate-windows must be > 0 (got %d)", alloc_windows);
    if (allocate && !calib) return cli_usage_error("quantize", "--allocate measures the calibration loss: --calib FILE");
    if (allocate && ggml) return cli_usage_error("quantize", "--ggml takes llama.cpp's per-tensor types; --allocate chooses its own: give one");
    if (cli_method_needs_stats(QFAMILY, method) && !calib)
        return cli_usage_error("quantize", "--method %s needs calibration data: --calib FILE", method);
    /* a method whose results a reconstruction over blocks refines (the
     * descriptor's flag): calibration data, fp32 weights until the end */
    const wmat_qmethod *qmeth = wmat__qmethod_find(method);
    const int recon = qmeth && (qmeth->flags & WMAT_QM_RECONSTRUCT);
    if (recon && !calib)
        return cli_usage_error("quantize", "--method %s refines its rounding on calibration data: --calib FILE", method);
    if (recon && (low_mem || ggml || allocate))
        return cli_usage_error("quantize", "--method %s reconstructs over blocks on fake-quant weights: no --low-mem, --ggml or --allocate", method);
    if (!strcmp(seq, "stage")) qp.sequential = 2;
    else if (!strcmp(seq, "block")) qp.sequential = 1;
    else if (!strcmp(seq, "off")) qp.sequential = 0;
    else return cli_usage_error("quantize", "--sequential must be stage, block or off");

    if (low_mem && no_low_mem) return cli_usage_error("quantize", "give --low-mem or --no-low-mem, not both");
    qp.low_mem = low_mem ? 1 : no_low_mem ? -1 : 0;
    if (recon) qp.low_mem = -1;

    wmat_model *m, *fpm = NULL;
    if (cli_load_model("quantize", pos[0], 1, &m)) return 1;
    /* the reconstruction's targets: the fp model, loaded once more */
    if (recon && cli_load_model("quantize", pos[0], 1, &fpm)) {
        wmat_model_free(m);
        return 1;
    }
    const wmat_config *c = wmat_model_config(m);
    int32_t *cal = NULL, *ev = NULL;
    size_t n_cal = 0, n_ev = 0;
    wmat_qresult *results = NULL;
    float **grads = NULL;
    char *alloc_ov = NULL;
    wmat_quantize_report rep;
    memset(&rep, 0, sizeof rep);
    rc = 1;
    const int cctx = calib_ctx ? calib_ctx : (c->seq_len < 256 ? c->seq_len : 256);
    if (calib) {
        if (cli_load_token_input("quantize", m, "--calib", calib, &cal, &n_cal)) goto out;
        if (calib_tokens > 0 && n_cal < (size_t)calib_tokens) {
            fprintf(stderr,
                    "wmat quantize: error: calibration stream %s has %zu tokens, fewer than the %d requested "
                    "(--calib-tokens); give a longer stream or a smaller N\n",
                    calib, n_cal, calib_tokens);
            goto out;
        }
        size_t want = calib_tokens > 0 ? (size_t)calib_tokens : (size_t)64 * (size_t)cctx;
        if (n_cal < want) {
            fprintf(stderr, "wmat quantize: note: calibration stream has %zu tokens (default is %zu); using them all\n",
                    n_cal, want);
            want = n_cal;
        }
        if (want < (size_t)cctx)
            fprintf(stderr, "wmat quantize: note: calibration uses one window of %zu tokens (shorter than %d)\n", want,
                    cctx);
        n_cal = want;
    }
    qp.keep = keep;
    qp.group_fallback = group_fallback;
    qp.embeddings = embeddings;
    qp.classifier = classifier;
    qp.gguf = fmt == WMAT_FMT_GGUF;
    qp.pack = fmt != WMAT_FMT_UNKNOWN && fmt != WMAT_FMT_GGUF;
    qp.ggml = ggml;
    qp.calib = cal;
    qp.n_calib = n_cal;
    qp.calib_ctx = cctx;
    qp.n_threads = g_cli.threads;
    qp.comm = cli_mpi_comm(); /* under mpirun: ranks split the calibration windows; rank 0 writes */
    /* out of core, packed blocks wait in temporary files beside OUT (the
     * output's file system, not a RAM-backed /tmp) */
    char spill[4096];
    if (fmt != WMAT_FMT_UNKNOWN) {
        snprintf(spill, sizeof spill, "%s", pos[1]);
        size_t n = strlen(spill);
        while (n > 1 && spill[n - 1] == '/') spill[--n] = '\0';
        char *slash = strrchr(spill, '/');
        if (!slash) snprintf(spill, sizeof spill, ".");
        else slash[slash == spill] = '\0';
        qp.spill_dir = spill;
    }
    /* methods that read dL/dW: the trainer's backward on the fp32 model,
     * the first 8 calibration windows (src/train/gradstat.c), once */
    const int grads_wanted = wmat_quantize_gradients_wanted(&qp);
    if (grads_wanted < 0) {
        cli_fail("quantize");
        goto out;
    }
    if (grads_wanted && cal) {
        const double t0 = wmat__now();
        double gl = 0.0;
        const int fisher = grads_wanted == WMAT_GRADS_FISHER;
        if ((fisher ? wmat_model_weight_fisher : wmat_model_weight_gradients)(m, cal, n_cal, cctx, 8, g_cli.threads,
                                                                              &grads, &gl)) {
            cli_fail("quantize");
            goto out;
        }
        qp.gradients = (const float *const *)grads;
        if (!quiet)
            fprintf(stderr, "gradients     %s on %d windows x %d tokens (loss %.4f), %.2f s\n", fisher ? "mean (dL/dW)^2 per window" : "dL/dW",
                    (int)((n_cal - 1) / (size_t)cctx < 8 ? (n_cal - 1) / (size_t)cctx : 8), cctx, gl, wmat__now() - t0);
    }
    qprogress pr = {wmat__now(), wmat__now(), 0};
    qp.progress = progress_eta;
    qp.progress_user = &pr;
    if (allocate) {
        wmat_alloc_report ar;
        if (wmat_quantize_allocate(m, &qp, allocate, alloc_bpw, alloc_windows, &alloc_ov, &ar)) {
            cli_fail("quantize");
            goto out;
        }
        print_allocation(quiet ? NULL : stderr, &ar, allocate);
        wmat_alloc_report_free(&ar);
        qp.overrides = alloc_ov;
        pr = (qprogress){wmat__now(), wmat__now(), 0};
    }
    if (wmat__quantize_model(m, &qp, &rep, &results)) {
        cli_fail("quantize");
        goto out;
    }
    wmat_reconstruct_info ri;
    memset(&ri, 0, sizeof ri);
    if (recon) {
        wmat_qparams rq;
        wmat_pset rps;
        if (wmat__pset_init(&rps, qmeth->schema)) {
            cli_fail("quantize");
            goto out;
        }
        int prc = wmat__pset_parse_kv(&rps, kv, ',', 1);
        if (!prc) wmat__qparams_from(&rps, &rq);
        wmat__pset_free(&rps);
        pr = (qprogress){wmat__now(), wmat__now(), 0};
        if (prc || wmat__reconstruct(fpm, m, results, cal, n_cal, cctx, &rq, g_cli.threads, recon_progress, &pr, &ri)) {
            cli_fail("quantize");
            goto out;
        }
        rep.seconds += ri.seconds;
        wmat_model_free(fpm);
        fpm = NULL;
    }
    char b1[32], b2[32];
    /* --json: stdout carries only the JSON, the report goes to stderr */
    FILE *txt = js.flag ? stderr : stdout;
    if (!quiet) {
        fprintf(txt, "%-44s %-34s %11s %6s %9s %9s %8s\n", "tensor", "scheme", "shape", "bpw", "rel.err", "out.err", "ms");
        for (int i = 0; i < rep.n_tensors; i++) {
            const wmat_quantize_tensor *t = &rep.tensors[i];
            char shape[32], oe[16];
            snprintf(shape, sizeof shape, "%lldx%lld", (long long)t->rows, (long long)t->cols);
            if (t->out_error >= 0) snprintf(oe, sizeof oe, "%.3e", t->out_error);
            else snprintf(oe, sizeof oe, "-");
            fprintf(txt, "%-44s %-34s %11s %6.2f %9.3e %9s %8.1f\n", t->name, t->scheme, shape, t->bits_per_weight,
                   t->rel_error, oe, 1e3 * t->seconds);
        }
    }
    fprintf(txt, "size          %s -> %s (%.2fx)\n", cli_bytes(rep.bytes_before, b1, sizeof b1),
           cli_bytes(rep.bytes_after, b2, sizeof b2), rep.bytes_after > 0 ? rep.bytes_before / rep.bytes_after : 0.0);
    fprintf(txt, "bits/weight   %.3f over quantized tensors, %.3f over the model\n", rep.bits_per_weight,
           8.0 * rep.bytes_after / ((double)wmat_model_n_params(m)));
    if (rep.calib_windows) {
        char b3[32];
        fprintf(txt, "calibration   %s: %d windows x %d tokens, %d block passes (%s), %.2f s; statistics peak %s, "
               "streams %s%s; forward %s\n",
               calib, rep.calib_windows, rep.calib_ctx, rep.block_passes, seq, rep.calib_seconds,
               cli_bytes((double)rep.stats_bytes, b1, sizeof b1), cli_bytes((double)rep.state_bytes, b3, sizeof b3),
               rep.state_spilled ? " (spilled to disk)" : "", calib_dtype);
    }
    if (recon) {
        double eb = 0.0, ea = 0.0;
        for (int i = 0; i < ri.n_windows; i++) {
            eb += ri.err_before[i];
            ea += ri.err_after[i];
        }
        fprintf(txt, "reconstruct   %d windows of %d blocks; mean window output error (hard rounding) %.4e -> %.4e; "
                     "rounding variables still soft %.2f%% of %lld; %.2f s\n",
                ri.n_windows, ri.n_windows ? ri.blocks[0] : 0, ri.n_windows ? eb / ri.n_windows : 0.0,
                ri.n_windows ? ea / ri.n_windows : 0.0, 100.0 * ri.soft_fraction, (long long)ri.n_rounding, ri.seconds);
    }
    fprintf(txt, "time          %.2f s total, %.2f s in the method; peak RSS %s\n", rep.seconds, rep.method_seconds,
           cli_bytes((double)wmat_peak_rss(), b2, sizeof b2));
    if (rep.calib_windows)
        fprintf(txt, "breakdown     calibration forward %.2f s (%lld block stages), statistics %.2f s, factorization "
                     "%.2f s, quantization %.2f s, the rest (output errors, dequantization) %.2f s\n",
               rep.calib_seconds - rep.stats_seconds, (long long)rep.stage_runs, rep.stats_seconds, rep.factor_seconds,
               rep.method_seconds - rep.factor_seconds, rep.seconds - rep.calib_seconds - rep.method_seconds);
    wmat_eval_result er = {0};
    const int ectx = evo.ctx ? evo.ctx : (c->seq_len < 256 ? c->seq_len : 256);
    if (cli_eval_path(&evo)) {
        if (cli_eval_load("quantize", m, &evo, &ev, &n_ev) ||
            cli_eval_perplexity("quantize", m, ev, n_ev, ectx, evo.max_windows, &er))
            goto out;
        wmat_quant_size qs;
        wmat_model_quant_size(m, &qs); /* out of core, the blocks are packed as they are done */
        fprintf(txt, "perplexity    %.4f on %s from token %d (ctx %d, %d windows; %s)\n", er.ppl, cli_eval_path(&evo),
                evo.offset, ectx, er.windows, qs.n_packed ? "packed weights, as written" : "fake-quant weights");
    }
    if (!cli_mpi_writer()) {
        rc = 0; /* ranks > 0 computed the same result: rank 0 writes it */
        goto out;
    }
    if (fmt != WMAT_FMT_UNKNOWN) {
        double t0 = wmat__now();
        if (write_packed(m, results, pos[1], fmt)) {
            cli_fail("quantize");
            goto out;
        }
        fprintf(txt, "wrote         %s (%s) in %.2f s\n", pos[1], to, wmat__now() - t0);
    }
    int jfail;
    FILE *jf = cli_json_open("quantize", &js, &jfail);
    if (jfail) goto out;
    if (jf) {
        fprintf(jf, "{\"method\": ");
        cli_json_string(jf, method);
        fprintf(jf, ", \"bytes_before\": %.0f, \"bytes_after\": %.0f, \"bits_per_weight\": %.6f, "
                "\"seconds\": %.4f, \"calib_windows\": %d, \"calib_ctx\": %d",
                rep.bytes_before, rep.bytes_after, rep.bits_per_weight, rep.seconds, rep.calib_windows, rep.calib_ctx);
        if (rep.calib_windows) fprintf(jf, ", \"calib_dtype\": \"%s\"", calib_dtype);
        if (cli_eval_path(&evo))
            fprintf(jf, ", \"ctx\": %d, \"offset\": %d, \"windows\": %d, \"ppl\": %.6f", ectx, evo.offset, er.windows, er.ppl);
        fprintf(jf, ", \"tensors\": [");
        for (int i = 0; i < rep.n_tensors; i++) {
            const wmat_quantize_tensor *t = &rep.tensors[i];
            fprintf(jf, "%s\n {\"name\": \"%s\", \"scheme\": \"%s\", \"rows\": %lld, \"cols\": %lld, "
                    "\"bits_per_weight\": %.6g, \"rel_error\": %.6g, \"out_error\": %.6g}",
                    i ? "," : "", t->name, t->scheme, (long long)t->rows, (long long)t->cols, t->bits_per_weight,
                    t->rel_error, t->out_error);
        }
        fprintf(jf, "]}\n");
        if (cli_json_close("quantize", &js)) goto out;
    }
    rc = 0;
out:
    if (results)
        for (int i = 0; i < wmat_model_n_tensors(m); i++) wmat_qresult_free(&results[i]);
    wmat__free(results);
    free(alloc_ov);
    wmat_quantize_report_free(&rep);
    free(cal);
    free(ev);
    wmat_model_weight_gradients_free(m, grads);
    wmat_model_free(m);
    wmat_model_free(fpm);
    return rc;
}
