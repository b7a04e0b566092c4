/* The shared option groups of the CLI (cli_inputs.h). */
#include "cli_inputs.h"
#include "cli_out.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int ends_with_ci(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcasecmp(s + a - b, suf);
}

int cli_load_token_input(const char *cmd, wmat_model *m, const char *flag, const char *spec, int32_t **ids, size_t *n)
{
    static const char *const k_text[] = {".txt", ".md", ".text"}, *const k_ids[] = {".u16", ".tok", ".bin", ".ids"};
    int text = -1;
    const char *path = spec;
    if (!strncmp(spec, "text:", 5)) text = 1, path = spec + 5;
    else if (!strncmp(spec, "tokens:", 7)) text = 0, path = spec + 7;
    for (size_t i = 0; text < 0 && i < sizeof k_text / sizeof k_text[0]; i++)
        if (ends_with_ci(path, k_text[i])) text = 1;
    for (size_t i = 0; text < 0 && i < sizeof k_ids / sizeof k_ids[0]; i++)
        if (ends_with_ci(path, k_ids[i])) text = 0;
    if (text < 0) {
        fprintf(stderr,
                "wmat %s: error: %s %s: cannot tell text from token ids by the name (" CLI_TOKEN_RULE
                "); write %s text:%s or %s tokens:%s\n",
                cmd, flag, path, flag, path, flag, path);
        return 1;
    }
    return text ? cli_load_tokens(cmd, m, path, NULL, ids, n) : cli_load_tokens(cmd, m, NULL, path, ids, n);
}

const char *cli_eval_path(const cli_eval *e)
{
    return e->file ? e->file : e->text ? e->text : e->tokens;
}

int cli_eval_check(const char *cmd, const cli_eval *e)
{
    if (!!e->file + !!e->text + !!e->tokens > 1)
        return cli_usage_error(cmd, "give one evaluation stream: --eval FILE, --text FILE or --tokens FILE");
    if (e->ctx < 0) return cli_usage_error(cmd, "--ctx must be positive (got %d)", e->ctx);
    if (e->max_windows < 0) return cli_usage_error(cmd, "--max-windows must be >= 0 (got %d; 0: all)", e->max_windows);
    if (e->offset < 0) return cli_usage_error(cmd, "--offset must be >= 0 (got %d)", e->offset);
    return 0;
}

int cli_eval_load(const char *cmd, wmat_model *m, const cli_eval *e, int32_t **ids, size_t *n)
{
    int rc;
    if (e->text) rc = cli_load_tokens(cmd, m, e->text, NULL, ids, n);
    else if (e->tokens) rc = cli_load_tokens(cmd, m, NULL, e->tokens, ids, n);
    else rc = cli_load_token_input(cmd, m, "--eval", e->file, ids, n);
    if (rc) return rc;
    if ((size_t)e->offset + 2 > *n) {
        fprintf(stderr, "wmat %s: error: --offset %d leaves fewer than 2 of the %zu tokens of %s\n", cmd, e->offset, *n,
                cli_eval_path(e));
        free(*ids);
        *ids = NULL;
        return 1;
    }
    if (e->offset) {
        memmove(*ids, *ids + e->offset, (*n - (size_t)e->offset) * sizeof **ids);
        *n -= (size_t)e->offset;
    }
    return 0;
}

int cli_eval_stream(const char *cmd, wmat_model *m, const int32_t *ids, size_t n, const wmat_eval_params *p,
                    wmat_eval_result *res)
{
    wmat_context wc = wmat_context_default();
    wc.n_threads = g_cli.threads;
    wc.progress = cli_progress;
    wmat_eval_params ep = *p;
    ep.context = &wc;
    ep.pack_weights = 1; /* weights stay fixed during evaluation */
    return wmat_eval_stream(m, ids, n, &ep, res) ? cli_fail(cmd) : 0;
}

int cli_eval_perplexity(const char *cmd, wmat_model *m, const int32_t *ids, size_t n, int ctx, int max_windows,
                        wmat_eval_result *res)
{
    wmat_eval_params p = wmat_eval_default_params();
    p.ctx = ctx;
    p.max_chunks = max_windows;
    return cli_eval_stream(cmd, m, ids, n, &p, res);
}

int cli_json_check(const char *cmd, const cli_json *j)
{
    if (j->flag && j->path) return cli_usage_error(cmd, "give one of --json (stdout) and --json-out FILE");
    return 0;
}

FILE *cli_json_open(const char *cmd, cli_json *j, int *failed)
{
    *failed = 0;
    if (j->flag) return j->f = stdout;
    if (!j->path) return NULL;
    j->f = cli_out_open(&j->af, j->path);
    if (!j->f) {
        fprintf(stderr, "wmat %s: error: --json-out %s: %s\n", cmd, j->path, wmat_last_error());
        *failed = 1;
    }
    return j->f;
}

int cli_json_close(const char *cmd, cli_json *j)
{
    if (!j->f || j->f == stdout) {
        j->f = NULL;
        return 0;
    }
    j->f = NULL;
    if (cli_out_close(&j->af)) {
        fprintf(stderr, "wmat %s: error: --json-out %s: %s\n", cmd, j->path, wmat_last_error());
        return 1;
    }
    return 0;
}
