/* signature: weight signatures (src/merge/signature.c, docs/MERGING.md):
 * extract a fine-tune's delta (optionally its top-r singular part, or
 * orthogonal to a clean fine-tune's), apply it to a base with a
 * coefficient, compose several, and describe a signature file. */
#include "cli.h"
#include "merge/signature.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_alphas(const char *text, double *dst, int n)
{
    char *dup = strdup(text), *save = NULL;
    int i = 0;
    if (!dup) return cli_usage_error("signature", "out of memory");
    for (char *tok = strtok_r(dup, ",", &save); tok; tok = strtok_r(NULL, ",", &save), i++) {
        char *end;
        const double v = strtod(tok, &end);
        if (*end || end == tok || i >= n) {
            free(dup);
            return cli_usage_error("signature", "--alphas takes one number per signature (%d), comma-separated (got '%s')",
                                   n, text);
        }
        dst[i] = v;
    }
    free(dup);
    if (i != n) return cli_usage_error("signature", "--alphas takes one number per signature (%d), got %d", n, i);
    return 0;
}

static void print_report(const wmat_sig_report *r, int verbose)
{
    char b1[32], b2[32], b3[32];
    if (verbose) {
        printf("%-44s %11s %7s %10s %10s\n", "tensor", "shape", "rank", "bytes", "rel err");
        for (int i = 0; i < r->n; i++) {
            const wmat_sig_tensor *t = &r->t[i];
            char shape[32], rank[16], err[16];
            snprintf(shape, sizeof shape, "%lldx%lld", (long long)t->rows, (long long)t->cols);
            if (t->rank < 0) snprintf(rank, sizeof rank, "full");
            else snprintf(rank, sizeof rank, "%d", t->rank);
            if (t->rank < 0) snprintf(err, sizeof err, "0");
            else snprintf(err, sizeof err, "%.4f", t->rel_err);
            printf("%-44s %11s %7s %10llu %10s\n", t->name, shape, rank, (unsigned long long)t->bytes,
                   verbose > 1 ? err : "-");
        }
    }
    printf("%d tensors, %s of tensor data (a full fp32 delta of them: %s, %.1f%%), file %s\n", r->n,
           cli_bytes((double)r->bytes, b1, sizeof b1), cli_bytes((double)r->dense_bytes, b2, sizeof b2),
           r->dense_bytes ? 100.0 * (double)r->bytes / (double)r->dense_bytes : 0.0,
           cli_bytes((double)r->file_bytes, b3, sizeof b3));
}

int cmd_signature(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("signature");
    const char *layers = NULL, *against = NULL, *dtype = NULL, *alphas = NULL, *to = NULL;
    int rank = 0, quiet = 0;
    float alpha = 1.0f;
    cli_opt opts[] = {
        {"--rank", OPT_INT, &rank, "R", "extract: keep the top-R singular part of each matrix (default: the full delta)"},
        {"--layers", OPT_STR, &layers, "LIST", "extract: only these tensors: blocks (0-1,4), embed, head (default: all)"},
        {"--against", OPT_STR, &against, "CLEAN_FT", "extract: remove each delta's projection on CLEAN_FT - BASE (RWS)"},
        {"--dtype", OPT_STR, &dtype, "T", "extract: storage f32 (default), f16, bf16; apply/compose: output weights"},
        {"--alpha", OPT_FLOAT, &alpha, "A", "apply: coefficient of the signature (default 1)"},
        {"--alphas", OPT_STR, &alphas, "A1,A2,...", "compose: one coefficient per signature (default 1 each)"},
        {"--to", OPT_STR, &to, "FMT", "apply/compose: output format llama2c|gguf|hf (default by extension)"},
        {"--quiet", OPT_FLAG, &quiet, NULL, "extract: no line per tensor"},
        {NULL, 0, NULL, NULL, NULL},
    };
    if (argc < 2 || argv[1][0] == '-') {
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
            cli_usage(cmd, opts);
            printf("\nextract FT BASE OUT      signature = FT - BASE (--rank, --layers, --against, --dtype)\n"
                   "apply BASE SIG OUT       BASE + alpha SIG (--alpha)\n"
                   "compose BASE SIG... OUT  BASE + sum alpha_i SIG_i (--alphas)\n"
                   "info SIG                 what a signature holds, tensor by tensor\n"
                   "A signature is a safetensors file; it records the base's shape and is refused by another.\n");
            return 0;
        }
        return cli_usage_error("signature", "give extract, apply, compose or info");
    }
    const char *sub = argv[1];
    const char *pos[66];
    int np = 0;
    int rc = cli_parse(cmd, argc - 1, argv + 1, opts, pos, 1, 66, &np);
    if (rc) return rc == 1 ? 0 : rc;
    const int is_extract = !strcmp(sub, "extract"), is_apply = !strcmp(sub, "apply"), is_compose = !strcmp(sub, "compose"),
              is_info = !strcmp(sub, "info");
    if (!is_extract && !is_apply && !is_compose && !is_info)
        return cli_usage_error("signature", "unknown subcommand '%s' (extract, apply, compose, info)", sub);
    if (!is_extract && (rank || layers || against))
        return cli_usage_error("signature", "--rank, --layers and --against are for extract");
    if (!is_apply && alpha != 1.0f) return cli_usage_error("signature", "--alpha is for apply (compose: --alphas)");
    if (!is_compose && alphas) return cli_usage_error("signature", "--alphas is for compose");
    if (rank < 0) return cli_usage_error("signature", "--rank must be >= 0");
    wmat_dtype dt = WMAT_F32;
    if (dtype) {
        int d = wmat_dtype_from_name(dtype);
        if (d < 0) return cli_usage_error("signature", "unknown --dtype '%s'", dtype);
        dt = (wmat_dtype)d;
    }
    wmat_format fmt = WMAT_FMT_UNKNOWN;
    if (to) {
        fmt = wmat_format_from_name(to);
        if (fmt == WMAT_FMT_UNKNOWN) return cli_usage_error("signature", "unknown --to '%s' (llama2c, gguf, hf)", to);
    }
    wmat_context ctx = wmat_context_default();
    ctx.n_threads = g_cli.threads;

    if (is_info) {
        if (np != 1) return cli_usage_error("signature", "info takes one SIG");
        wmat_sig_info info;
        if (wmat__sig_info(pos[0], &info)) return cli_fail("signature");
        printf("%s: weight signature\n", pos[0]);
        for (int i = 0; i < info.n_meta; i++) printf("  %-10s %s\n", info.keys[i], info.values[i]);
        print_report(&info.rep, 1);
        wmat__sig_info_free(&info);
        return 0;
    }
    if (is_extract) {
        if (np != 3) return cli_usage_error("signature", "extract takes FT BASE OUT");
        wmat_sig_params p = {rank, layers, against, dt, &ctx};
        wmat_sig_report rep;
        if (wmat__sig_extract(pos[0], pos[1], pos[2], &p, &rep)) return cli_fail("signature");
        print_report(&rep, quiet ? 0 : 2);
        printf("wrote %s\n", pos[2]);
        wmat__sig_report_free(&rep);
        return 0;
    }
    /* apply / compose */
    if (is_apply && np != 3) return cli_usage_error("signature", "apply takes BASE SIG OUT");
    if (is_compose && np < 3) return cli_usage_error("signature", "compose takes BASE SIG1 [SIG2 ...] OUT");
    const int n_sig = np - 2;
    double a[64];
    if (n_sig > 64) return cli_usage_error("signature", "at most 64 signatures");
    for (int i = 0; i < n_sig; i++) a[i] = is_apply ? (double)alpha : 1.0;
    if (alphas && parse_alphas(alphas, a, n_sig)) return 2;
    if (wmat__sig_apply(pos[0], n_sig, pos + 1, a, pos[np - 1], fmt, dt, g_cli.tokenizer, &ctx)) return cli_fail("signature");
    printf("wrote %s\n", pos[np - 1]);
    return 0;
}
