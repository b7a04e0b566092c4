/* info, eval, generate, tokenize, convert */
#include "cli.h"
#include "cli_inputs.h"
#include "cli_out.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int cmd_info(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("info");
    cli_json js = {0};
    cli_opt opts[] = {CLI_JSON_OPTS(&js), {NULL, 0, NULL, NULL, NULL}};
    const char *pos[1];
    int np, rc = cli_parse(cmd, argc, argv, opts, pos, 1, 1, &np);
    if (rc) return rc == 1 ? 0 : rc;
    if ((rc = cli_json_check("info", &js))) return rc;
    wmat_model *m;
    if (cli_load_model("info", pos[0], 0, &m)) return 1;
    const wmat_config *c = wmat_model_config(m);
    wmat_tokenizer *tok = wmat_model_tokenizer(m);
    size_t total_bytes = 0;
    for (int i = 0; i < wmat_model_n_tensors(m); i++) total_bytes += wmat_model_tensor(m, i)->nbytes;
    char b1[32];
    int jfail;
    FILE *jf = cli_json_open("info", &js, &jfail);
    if (jfail) {
        wmat_model_free(m);
        return 1;
    }
    if (jf) {
        fprintf(jf, "{\"path\": ");
        cli_json_string(jf, wmat_model_path(m));
        fprintf(jf, ", \"format\": \"%s\", \"dim\": %d, \"hidden_dim\": %d, \"n_layers\": %d, \"n_heads\": %d, "
                "\"n_kv_heads\": %d, \"vocab_size\": %d, \"seq_len\": %d, \"head_dim\": %d, \"rope_theta\": %g, "
                "\"norm_eps\": %g, \"tied_embeddings\": %s, \"attn_dim\": %d, \"norm_dim\": %d, \"shortcuts\": %s, "
                "\"n_params\": %lld, \"bytes\": %zu, \"tensors\": [",
                wmat_format_name(wmat_model_format(m)), c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
                c->vocab_size, c->seq_len, c->head_dim, c->rope_theta, c->norm_eps, c->tied_embeddings ? "true" : "false",
                c->attn_dim ? c->attn_dim : c->dim, c->norm_dim ? c->norm_dim : c->dim, c->shortcuts ? "true" : "false",
                (long long)wmat_model_n_params(m), total_bytes);
        for (int i = 0; i < wmat_model_n_tensors(m); i++) {
            const wmat_tensor *t = wmat_model_tensor(m, i);
            fprintf(jf, "%s{\"name\": \"%s\", \"dtype\": \"%s\", \"shape\": [", i ? ", " : "", t->name,
                    wmat_dtype_info(t->dtype)->name);
            for (int d = 0; d < t->ndim; d++) fprintf(jf, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
            fprintf(jf, "], \"bytes\": %zu}", t->nbytes);
        }
        fprintf(jf, "]}\n");
        rc = cli_json_close("info", &js);
        if (rc || js.flag) { /* --json: stdout carries only the JSON */
            wmat_model_free(m);
            return rc;
        }
    }
    printf("model       %s (%s)\n", wmat_model_path(m), wmat_format_name(wmat_model_format(m)));
    printf("arch        llama: dim %d, hidden %d, layers %d, heads %d (kv %d, head dim %d), vocab %d, context %d\n", c->dim,
           c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab_size, c->seq_len);
    printf("            rope theta %g, rms eps %g, classifier %s\n", c->rope_theta, c->norm_eps,
           c->tied_embeddings ? "tied to the embedding" : "separate");
    if (c->attn_dim || c->norm_dim || c->shortcuts)
        printf("            sliced: attention width %d, norms divide by %d, %s\n",
               c->attn_dim ? c->attn_dim : c->dim, c->norm_dim ? c->norm_dim : c->dim,
               c->shortcuts ? "residual shortcut matrices" : "no shortcut matrices");
    printf("tokenizer   %s\n", tok ? "yes" : "none (pass --tokenizer FILE)");
    if (tok) printf("            %d pieces, bos %d, eos %d\n", wmat_tokenizer_vocab_size(tok), c->bos_id, c->eos_id);
    printf("parameters  %lld (%.3f M), %s of weights\n\n", (long long)wmat_model_n_params(m),
           (double)wmat_model_n_params(m) / 1e6, cli_bytes((double)total_bytes, b1, sizeof b1));
    printf("%-48s %-6s %-16s %12s\n", "tensor", "dtype", "shape", "bytes");
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        const wmat_tensor *t = wmat_model_tensor(m, i);
        char shape[64] = "";
        size_t k = 0;
        for (int d = 0; d < t->ndim; d++)
            k += (size_t)snprintf(shape + k, sizeof shape - k, "%s%lld", d ? " x " : "", (long long)t->shape[d]);
        printf("%-48s %-6s %-16s %12zu\n", t->name, wmat_dtype_info(t->dtype)->name, shape, t->nbytes);
    }
    wmat_model_free(m);
    return 0;
}

/* "1.5MB", "800KiB", "123456": bytes (K/M/G decimal, KiB/MiB/GiB binary); -1 when malformed. */
static double parse_bytes(const char *s)
{
    char *end;
    const double v = strtod(s, &end);
    if (end == s || !(v > 0)) return -1.0;
    static const struct { const char *suf; double mul; } units[] = {
        {"", 1.0}, {"B", 1.0}, {"K", 1e3}, {"KB", 1e3}, {"KiB", 1024.0}, {"M", 1e6}, {"MB", 1e6},
        {"MiB", 1048576.0}, {"G", 1e9}, {"GB", 1e9}, {"GiB", 1073741824.0}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (!strcmp(end, units[i].suf)) return v * units[i].mul;
    return -1.0;
}

/* --budget / --bpw: run the longest prefix of a stacked model's blocks that fits. */
static int apply_budget(const char *cmd, wmat_model *m, const char *budget, float bpw, int quiet)
{
    if (!budget && !(bpw > 0)) return 0;
    double bytes = 0.0, used = 0.0;
    if (budget && (bytes = parse_bytes(budget)) <= 0)
        return cli_usage_error(cmd, "--budget %s: give bytes, e.g. 1500000, 1.5MB or 1.4MiB", budget);
    if (wmat_model_set_budget(m, bytes, budget ? 0.0 : (double)bpw, &used)) {
        fprintf(stderr, "wmat %s: %s\n", cmd, wmat_last_error());
        return 1;
    }
    if (!quiet) {
        wmat_quant_size qs;
        wmat_model_quant_size(m, &qs);
        printf("budget        %.0f bytes of stacked weights (%.4f b/w over the packed tensors)\n", used,
               qs.packed_bits_per_weight);
    }
    return 0;
}

int cmd_eval(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("eval");
    cli_eval ev = {0};
    cli_json js = {0};
    const char *adapter = NULL, *protocol = NULL;
    int chunks = 0, low_mem = 0, no_low_mem = 0;
    const char *budget = NULL;
    float bpw = 0.0f;
    cli_opt opts[] = {
        {"--adapter", OPT_STR, &adapter, "DIR", "a PEFT adapter directory merged into the weights first (LoRA, DoRA, ...)"},
        {"--budget", OPT_STR, &budget, "BYTES",
         "a model stored as stacks of blocks runs the longest prefix of its block order that fits BYTES of stacked "
         "weights (1.5MB, 1.4MiB, 1500000); docs/QUANT.md"},
        {"--bpw", OPT_FLOAT, &bpw, "B", "the same budget in bits per weight over the stacked weights"},
        CLI_EVAL_INPUT_OPTS(&ev, "the stream to score"),
        CLI_EVAL_CTX_OPT(&ev, "window length (default: the model's context)"),
        CLI_EVAL_WINDOW_OPTS(&ev, "score only the first K windows (default: all)"),
        {"--protocol", OPT_STR, &protocol, "P",
         "which predictions count: wmat (default: every one, windows overlapping by one token) or llama.cpp (as "
         "llama-perplexity: chunks of ctx tokens, BOS first, the second half of each scored; prints PPL +/- its "
         "error; needs 2 x ctx tokens); docs/ARCHITECTURE.md, \"Perplexity protocols\""},
        {"--chunks", OPT_INT, &chunks, "K", "score only the first K chunks, as llama-perplexity's --chunks (the same as --max-windows)"},
        {"--low-mem", OPT_FLAG, &low_mem, NULL,
         "out of core: all windows through one block at a time, each block's pages released after it, no packed "
         "weight copies (default when the model maps >= 2 GiB of weights; docs/SCALING.md)"},
        {"--no-low-mem", OPT_FLAG, &no_low_mem, NULL, "window by window with packed weights, whatever the model's size"},
        CLI_JSON_OPTS(&js),
        {NULL, 0, NULL, NULL, NULL},
    };
    const char *pos[1];
    int np, rc = cli_parse(cmd, argc, argv, opts, pos, 1, 1, &np);
    if (rc) return rc == 1 ? 0 : rc;
    if (!cli_eval_path(&ev)) return cli_usage_error("eval", "give exactly one of --text FILE, --tokens FILE or --eval FILE");
    if ((rc = cli_eval_check("eval", &ev)) || (rc = cli_json_check("eval", &js))) return rc;
    wmat_eval_params ep = wmat_eval_default_params();
    if (protocol && wmat_eval_protocol_from_name(protocol, &ep.protocol))
        return cli_usage_error("eval", "--protocol %s: give wmat or llama.cpp", protocol);
    if (chunks < 0) return cli_usage_error("eval", "--chunks must be >= 0 (got %d; 0: all)", chunks);
    if (chunks && ev.max_windows && chunks != ev.max_windows)
        return cli_usage_error("eval", "--chunks %d and --max-windows %d disagree (they are one limit)", chunks,
                               ev.max_windows);
    if (low_mem && no_low_mem) return cli_usage_error("eval", "give --low-mem or --no-low-mem, not both");
    ep.low_mem = low_mem ? 1 : no_low_mem ? -1 : 0;
    const int llama = ep.protocol == WMAT_EVAL_LLAMACPP;
    wmat_model *m;
    if (cli_load_model("eval", pos[0], adapter ? CLI_LOAD_F32 : CLI_LOAD_STORED, &m)) return 1;
    if (adapter && cli_apply_adapter("eval", m, adapter)) return 1;
    if (budget && bpw > 0) {
        wmat_model_free(m);
        return cli_usage_error("eval", "give --budget or --bpw, not both");
    }
    if (apply_budget("eval", m, budget, bpw, js.flag)) {
        wmat_model_free(m);
        return 1;
    }
    const wmat_config *c = wmat_model_config(m);
    int ctx = ev.ctx ? ev.ctx : c->seq_len;
    if (ctx > c->seq_len) {
        wmat_model_free(m);
        return cli_usage_error("eval", "--ctx %d is longer than the model's context (%d)", ctx, c->seq_len);
    }
    int32_t *ids = NULL;
    size_t n = 0;
    if (cli_eval_load("eval", m, &ev, &ids, &n)) {
        wmat_model_free(m);
        return 1;
    }
    wmat_eval_result res;
    ep.ctx = ctx;
    ep.max_chunks = chunks ? chunks : ev.max_windows;
    rc = cli_eval_stream("eval", m, ids, n, &ep, &res);
    if (!rc && !js.flag) {
        printf("model         %s\n", wmat_model_path(m));
        printf("stream        %s (%zu tokens", cli_eval_path(&ev), n);
        if (ev.offset) printf(" from token %d", ev.offset);
        if (llama) {
            printf("), ctx %d, %d chunks\n", ctx, res.windows);
            printf("protocol      llama.cpp (BOS first in each chunk, positions %d..%d scored)\n", ctx / 2, ctx - 2);
        } else {
            printf("), ctx %d, %d windows\n", ctx, res.windows);
        }
        printf("mean NLL      %.6f\n", res.mean_nll);
        if (llama) printf("perplexity    %.4f +/- %.5f\n", res.ppl, res.ppl_err);
        else printf("perplexity    %.4f\n", res.ppl);
        printf("scored        %llu tokens in %.2f s (%.0f tokens/s)\n", (unsigned long long)res.tokens_scored,
               res.seconds, res.tokens_per_s);
    }
    int jfail = 0;
    FILE *jf = rc ? NULL : cli_json_open("eval", &js, &jfail);
    if (jfail) rc = 1;
    if (jf) {
        fprintf(jf, "{\"model\": ");
        cli_json_string(jf, wmat_model_path(m));
        if (llama) /* the wmat protocol's keys stay as they were */
            fprintf(jf, ", \"protocol\": \"llama.cpp\", \"chunks\": %d, \"ppl_err\": %.6f", res.windows,
                    res.ppl_err);
        fprintf(jf, ", \"ctx\": %d, \"offset\": %d, \"windows\": %d, \"tokens_scored\": %llu, \"mean_nll\": %.6f, "
                "\"ppl\": %.6f, \"seconds\": %.4f, \"tokens_per_s\": %.1f}\n",
                ctx, ev.offset, res.windows, (unsigned long long)res.tokens_scored, res.mean_nll, res.ppl, res.seconds,
                res.tokens_per_s);
        rc = cli_json_close("eval", &js);
    }
    free(ids);
    wmat_model_free(m);
    return rc ? 1 : 0;
}

/* Print a decoded piece, skipping lone control bytes as run.c does. */
static void print_piece(const char *p, size_t len)
{
    if (len == 1) {
        unsigned char b = (unsigned char)p[0];
        if (!(b >= 32 && b < 127) && b != '\n' && b != '\t' && b != ' ' && b < 128) return;
    }
    fwrite(p, 1, len, stdout);
}

int cmd_generate(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("generate");
    const char *prompt = "", *model = NULL;
    int steps = 0, n_new = -1, seed_set = 0, seed = 0;
    wmat_sampler_params sp = wmat_sampler_default_params();
    const char *adapter = NULL, *budget = NULL;
    float bpw = 0.0f;
    cli_opt opts[] = {
        {"--prompt", OPT_STR, &prompt, "TEXT", "text to continue (default: empty)"},
        {"--budget", OPT_STR, &budget, "BYTES", "a model stored as stacks of blocks runs the longest prefix of its block order that fits (as eval)"},
        {"--bpw", OPT_FLOAT, &bpw, "B", "the same budget in bits per weight over the stacked weights"},
        {"--adapter", OPT_STR, &adapter, "DIR", "a PEFT adapter directory merged into the weights first (LoRA, DoRA, ...)"},
        {"-p", OPT_STR, &prompt, "TEXT", "same as --prompt"},
        {"-m", OPT_STR, &model, "MODEL", "the model (instead of the positional MODEL), as llama.cpp's -m"},
        {"--n-predict", OPT_INT, &n_new, "N", "new tokens to generate after the prompt (default: up to --steps or the context)"},
        {"-n", OPT_INT, &n_new, "N", "same as --n-predict"},
        {"--steps", OPT_INT, &steps, "N", "positions in total, prompt included, as run.c's -n (default 256 without -n)"},
        {"--temp", OPT_FLOAT, &sp.temp, "T", "temperature; 0 is greedy (default 1.0)"},
        {"--top-k", OPT_INT, &sp.top_k, "K", "keep the K most likely tokens (default 0: off)"},
        {"--top-p", OPT_FLOAT, &sp.top_p, "P", "nucleus sampling mass (default 0.9; 1 disables)"},
        {"--min-p", OPT_FLOAT, &sp.min_p, "P", "keep tokens at least P times as likely as the best (default 0: off)"},
        {"--repeat-penalty", OPT_FLOAT, &sp.repeat_penalty, "R", "penalize tokens of the last --repeat-last-n (default 1: off; llama.cpp's rule)"},
        {"--repeat-last-n", OPT_INT, &sp.repeat_last_n, "N", "history the repetition penalty looks at (default 64)"},
        {"--seed", OPT_INT, &seed, "S", "random seed (default: from the clock, printed so a run can be repeated)"},
        {"-s", OPT_INT, &seed, "S", "same as --seed"},
        {NULL, 0, NULL, NULL, NULL},
    };
    const char *pos[1];
    int np, rc = cli_parse(cmd, argc, argv, opts, pos, 0, 1, &np);
    if (rc) return rc == 1 ? 0 : rc;
    for (int i = 1; i < argc; i++)
        if (!strncmp(argv[i], "--seed", 6) || !strcmp(argv[i], "-s")) seed_set = 1;
    if (model && np) return cli_usage_error("generate", "give the model once: -m MODEL or MODEL");
    if (!model && !np) return cli_usage_error("generate", "missing arguments: %s", cmd->usage);
    if (!model) model = pos[0];
    if (steps < 0 || (steps > 0 && n_new >= 0)) return cli_usage_error("generate", "give --steps N (positions, prompt included) or -n N (new tokens), not both");
    if (n_new < -1) return cli_usage_error("generate", "-n must be >= 0");
    if (sp.temp < 0 || sp.top_p < 0 || sp.top_p > 1 || sp.top_k < 0 || sp.min_p < 0 || sp.min_p > 1 || !(sp.repeat_penalty > 0) ||
        sp.repeat_last_n < 0)
        return cli_usage_error("generate", "--temp >= 0, --top-p and --min-p in [0, 1], --top-k >= 0, --repeat-penalty > 0, --repeat-last-n >= 0");
    wmat_model *m;
    if (cli_load_model("generate", model, adapter ? CLI_LOAD_F32 : CLI_LOAD_STORED, &m)) return 1;
    if (adapter && cli_apply_adapter("generate", m, adapter)) return 1;
    if ((budget && bpw > 0 && cli_usage_error("generate", "give --budget or --bpw, not both")) ||
        apply_budget("generate", m, budget, bpw, 1)) {
        wmat_model_free(m);
        return 1;
    }
    const wmat_config *c = wmat_model_config(m);
    wmat_tokenizer *tok = wmat_model_tokenizer(m);
    if (!tok) {
        fprintf(stderr, "wmat generate: error: %s has no tokenizer; pass --tokenizer FILE\n", wmat_model_path(m));
        wmat_model_free(m);
        return 1;
    }
    int32_t *ids = NULL;
    size_t n_prompt = 0;
    if (wmat_tokenizer_encode(tok, prompt, strlen(prompt), 1, 0, &ids, &n_prompt)) {
        wmat_model_free(m);
        return cli_fail("generate");
    }
    /* positions: the prompt (BOS included) plus the new tokens, within the context */
    if (n_new >= 0) steps = (int)n_prompt + n_new;
    else if (steps == 0) steps = 256 < c->seq_len ? 256 : c->seq_len;
    if ((int)n_prompt > c->seq_len || ((int)n_prompt > steps && steps > 0)) {
        const int limit = (int)n_prompt > c->seq_len ? c->seq_len : steps;
        fprintf(stderr, "wmat generate: error: the prompt is %zu tokens (BOS included) but %s %d%s\n", n_prompt,
                limit == c->seq_len ? "the model's context is" : "--steps, which counts the prompt, is", limit,
                limit == c->seq_len ? "" : " (use -n N for N new tokens)");
        free(ids);
        wmat_model_free(m);
        return 1;
    }
    if (steps > c->seq_len) {
        fprintf(stderr, "wmat generate: note: stopping at the model's context of %d positions\n", c->seq_len);
        steps = c->seq_len;
    }
    wmat_context wc = wmat_context_default();
    wc.n_threads = g_cli.threads;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = 1;
    rp.kv_cache_len = steps;
    rp.ctx = &wc;
    wmat_runtime *rt = NULL;
    float *logits = malloc((size_t)c->vocab_size * sizeof(float));
    rc = logits ? wmat_runtime_create(&rt, m, &rp) : WMAT_ERR_NOMEM;
    if (rc) {
        free(ids);
        free(logits);
        wmat_model_free(m);
        return cli_fail("generate");
    }
    wmat_rng rng;
    if (!seed_set) seed = (int)(time(NULL) & 0x7fffffff);
    if (!seed_set && sp.temp > 0) fprintf(stderr, "seed %d\n", seed);
    wmat_rng_seed(&rng, (uint64_t)seed);
    /* the history the repetition penalty reads: the prompt, then each new token */
    int32_t *hist = malloc(((size_t)steps + n_prompt + 1) * sizeof *hist);
    int n_hist = (int)n_prompt;
    if (!hist) {
        free(ids);
        free(logits);
        wmat_runtime_free(rt);
        wmat_model_free(m);
        return cli_fail("generate");
    }
    memcpy(hist, ids, n_prompt * sizeof *hist);
    int32_t token = ids[0];
    int pos_i = 0;
    double t0 = 0;
    while (pos_i < steps && !cli_interrupted) {
        if ((rc = wmat_decode(rt, token, pos_i, logits))) break;
        int next;
        if ((size_t)pos_i + 1 < n_prompt) {
            next = ids[pos_i + 1];
        } else {
            next = wmat_sample_ex(logits, c->vocab_size, &sp, hist, n_hist, &rng);
            if (next >= 0) hist[n_hist++] = next;
        }
        if (next < 0) {
            rc = next;
            break;
        }
        pos_i++;
        if (next == c->bos_id) break;
        char buf[8];
        size_t len;
        const char *piece = wmat_tokenizer_decode(tok, token, next, buf, &len);
        print_piece(piece, len);
        fflush(stdout);
        token = next;
        if (pos_i == 1) t0 = now_s();
    }
    printf("\n");
    fflush(stdout); /* the text ends before the statistics on stderr */
    if (rc) cli_fail("generate");
    else if (pos_i > 1) fprintf(stderr, "achieved tok/s: %.1f\n", (pos_i - 1) / (now_s() - t0));
    wmat_runtime_free(rt);
    free(hist);
    free(logits);
    free(ids);
    wmat_model_free(m);
    return rc ? 1 : 0;
}

int cmd_tokenize(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("tokenize");
    const char *text = NULL, *out = NULL;
    int no_bos = 0, print = 0;
    cli_opt opts[] = {
        {"--text", OPT_STR, &text, "FILE", "UTF-8 text to encode (the whole file as one string)"},
        {"--out", OPT_STR, &out, "FILE", "where to write the uint16 ids"},
        {"--no-bos", OPT_FLAG, &no_bos, NULL, "do not start with BOS"},
        {"--print", OPT_FLAG, &print, NULL, "also print the ids, space-separated"},
        {NULL, 0, NULL, NULL, NULL},
    };
    const char *pos[1];
    int np, rc = cli_parse(cmd, argc, argv, opts, pos, 0, 1, &np);
    if (rc) return rc == 1 ? 0 : rc;
    if (!text || (!out && !print)) return cli_usage_error("tokenize", "--text FILE and --out FILE are required");
    if (np == 0 && !g_cli.tokenizer) return cli_usage_error("tokenize", "give a MODEL or --tokenizer FILE");
    wmat_model *m = NULL;
    wmat_tokenizer *tok = NULL, *own_tok = NULL;
    if (np == 0) {
        /* a tokenizer file alone: its whole vocabulary */
        if (wmat_tokenizer_load_llama2c(&own_tok, g_cli.tokenizer, 0)) return cli_fail("tokenize");
        tok = own_tok;
    } else {
        if (cli_load_model("tokenize", pos[0], 0, &m)) return 1;
        tok = wmat_model_tokenizer(m);
        if (!tok) {
            fprintf(stderr, "wmat tokenize: error: %s has no tokenizer; pass --tokenizer FILE\n", wmat_model_path(m));
            wmat_model_free(m);
            return 1;
        }
    }
    if (wmat_tokenizer_vocab_size(tok) > 65536) {
        fprintf(stderr, "wmat tokenize: error: vocabulary of %d does not fit uint16 ids\n", wmat_tokenizer_vocab_size(tok));
        wmat_tokenizer_free(own_tok);
        wmat_model_free(m);
        return 1;
    }
    char *buf;
    size_t len;
    if (wmat_read_file(text, &buf, &len)) {
        wmat_tokenizer_free(own_tok);
        wmat_model_free(m);
        return cli_fail("tokenize");
    }
    int32_t *ids;
    size_t n;
    double t0 = now_s();
    rc = wmat_tokenizer_encode(tok, buf, len, !no_bos, 0, &ids, &n);
    double dt = now_s() - t0;
    free(buf);
    if (rc) {
        wmat_tokenizer_free(own_tok);
        wmat_model_free(m);
        return cli_fail("tokenize");
    }
    if (print) {
        for (size_t i = 0; i < n; i++) printf("%s%d", i ? " " : "", ids[i]);
        printf("\n");
    }
    if (out) {
        if (wmat_write_tokens_u16(out, ids, n)) {
            cli_fail("tokenize");
            rc = 1;
        } else {
            fprintf(stderr, "%s: %zu bytes -> %zu tokens in %.3f s; wrote %s\n", text, len, n, dt, out);
        }
    }
    free(ids);
    wmat_tokenizer_free(own_tok);
    wmat_model_free(m);
    return rc ? 1 : 0;
}

int cmd_convert(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("convert");
    const char *to = NULL, *dtype = NULL, *tok_out = NULL;
    int no_tok = 0;
    cli_opt opts[] = {
        {"--to", OPT_STR, &to, "FORMAT", "llama2c, gguf, hf, or gptq (a packed model's 2/3/4/8-bit weights as a GPTQ checkpoint)"},
        {"--dtype", OPT_STR, &dtype, "TYPE", "weight type: f32 (default), f16, bf16 (hf, gguf), q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs (gguf)"},
        {"--tokenizer-out", OPT_STR, &tok_out, "FILE", "llama2c: where to write the tokenizer (default OUT_tokV.bin)"},
        {"--no-tokenizer", OPT_FLAG, &no_tok, NULL, "write a GGUF even when the model has no tokenizer (llama.cpp will refuse it)"},
        {NULL, 0, NULL, NULL, NULL},
    };
    const char *pos[2];
    int np, rc = cli_parse(cmd, argc, argv, opts, pos, 2, 2, &np);
    if (rc) return rc == 1 ? 0 : rc;
    if (!to) return cli_usage_error("convert", "--to llama2c|gguf|hf is required");
    wmat_save_params sp = wmat_save_default_params();
    sp.format = wmat_format_from_name(to);
    if (sp.format == WMAT_FMT_UNKNOWN) return cli_usage_error("convert", "unknown format '%s' (llama2c, gguf, hf)", to);
    const int dtype_given = dtype != NULL;
    if (!dtype) dtype = "f32";
    int dt = wmat_dtype_from_name(dtype);
    if (dt < 0 || !wmat_dtype_info((wmat_dtype)dt)->is_float)
        return cli_usage_error("convert", "unknown --dtype '%s' (f32, f16, bf16; gguf also q8_0, q4_0, q4_1, q5_0, q5_1, "
                                          "q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs)",
                               dtype);
    sp.dtype = (wmat_dtype)dt;
    sp.tokenizer_path = tok_out;
    wmat_model *m;
    if (cli_load_model("convert", pos[0], CLI_LOAD_STORED, &m)) return 1;
    if (sp.format == WMAT_FMT_GGUF && !wmat_model_tokenizer(m) && !no_tok) {
        fprintf(stderr,
                "wmat convert: error: %s has no tokenizer, and llama.cpp refuses a GGUF without one; pass --tokenizer FILE "
                "(a llama2.c tokenizer) or --no-tokenizer to write it anyway\n",
                pos[0]);
        wmat_model_free(m);
        return 1;
    }
    double t0 = now_s();
    /* packed, low-rank, sparse ... weights (object kinds): llama2.c and HF
     * files hold dense matrices, and a GGUF asked for with --dtype gets
     * that type; so these are expanded to f32 first (a GGUF without
     * --dtype keeps the exact ggml types of packed weights, and GPTQ
     * writes the packed ones as they are) */
    int n_obj = 0;
    for (int i = 0; i < wmat_model_n_tensors(m); i++) n_obj += wmat_tensor_kind(wmat_model_tensor(m, i)) &&
                                                                wmat_model_tensor(m, i)->dtype == WMAT_OBJ;
    if (n_obj && sp.format != WMAT_FMT_GPTQ && (sp.format != WMAT_FMT_GGUF || dtype_given)) {
        fprintf(stderr, "convert: dequantizing %d packed/factored tensor%s to f32 before writing %s\n", n_obj,
                n_obj == 1 ? "" : "s", to);
        if (wmat_model_dequantize(m)) {
            wmat_model_free(m);
            return cli_fail("convert");
        }
    }
    rc = wmat_model_save(m, pos[1], &sp);
    if (rc) {
        wmat_model_free(m);
        return cli_fail("convert");
    }
    fprintf(stderr, "wrote %s (%s, %s) in %.2f s\n", pos[1], to, dtype, now_s() - t0);
    wmat_model_free(m);
    return 0;
}

int cmd_sysinfo(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("sysinfo");
    int quick = 0;
    cli_opt opts[] = {{"--quick", OPT_FLAG, &quick, NULL, "short measurements (about 0.3 s instead of a few seconds)"},
                      {NULL, 0, NULL, NULL, NULL}};
    const char *pos[1];
    int np, rc = cli_parse(cmd, argc, argv, opts, pos, 0, 0, &np);
    if (rc) return rc == 1 ? 0 : rc;
    if (wmat_sysinfo_report(stdout, g_cli.threads, quick)) return cli_fail("sysinfo");
    if (!getenv("OMP_NUM_THREADS"))
        printf("default threads: %d now (%d runnable task%s of other processes at start; --threads N overrides)\n",
               g_cli.threads, g_cli.busy, g_cli.busy == 1 ? "" : "s");
    return 0;
}
