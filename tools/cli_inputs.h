/* The option groups every command spells the same way (docs/CLI.md,
 * "Conventions"):
 *
 * - a token input is FILE, its type told by one rule: .txt, .md and .text
 *   are UTF-8 text (encoded with the model's tokenizer as [BOS] + tokens),
 *   .u16, .tok, .bin and .ids are little-endian uint16 ids; "text:FILE" or
 *   "tokens:FILE" says it for any name. The roles: --data (what train trains
 *   on), --calib (quantize's calibration), --eval (the stream whose
 *   perplexity a command reports), with --text FILE / --tokens FILE as the
 *   explicit-type forms of --eval;
 * - evaluation windows: --ctx N (window), --max-windows K, --offset N (skip
 *   the first N tokens of the stream);
 * - --json prints the command's result as JSON on stdout; --json-out FILE
 *   writes the same JSON to FILE (atomically).
 *
 * Old spellings stay as hidden aliases (cli.c) that print a one-line note. */
#ifndef WMAT_CLI_INPUTS_H
#define WMAT_CLI_INPUTS_H

#include "cli.h"

#include <stdio.h>

#define CLI_TOKEN_RULE ".txt/.md/.text: text; .u16/.tok/.bin/.ids: uint16 ids; or text:FILE / tokens:FILE"

/* An evaluation stream and its windows. */
typedef struct {
    const char *file;          /* --eval FILE (type by the rule) */
    const char *text, *tokens; /* --text FILE, --tokens FILE (explicit type) */
    int ctx, max_windows, offset;
} cli_eval;

/* The option rows (inside a command's cli_opt table). */
#define CLI_EVAL_INPUT_OPTS(e, what)                                                                                   \
    {"--eval", OPT_STR, &(e)->file, "FILE", what " (" CLI_TOKEN_RULE ")"},                                             \
        {"--text", OPT_STR, &(e)->text, "FILE", "... as a UTF-8 text file ([BOS] + its tokens)"},                     \
        {"--tokens", OPT_STR, &(e)->tokens, "FILE", "... as a little-endian uint16 token file"}
#define CLI_EVAL_CTX_OPT(e, help) {"--ctx", OPT_INT, &(e)->ctx, "N", help}
#define CLI_EVAL_WINDOW_OPTS(e, windows_help)                                                                          \
    {"--max-windows", OPT_INT, &(e)->max_windows, "K", windows_help},                                                  \
        {"--offset", OPT_INT, &(e)->offset, "N", "skip the first N tokens of the evaluation stream (a held-out part)"}

/* The stream's path as given (NULL: none). */
const char *cli_eval_path(const cli_eval *e);
/* Usage errors (2, naming the flag) for two streams at once or negative
 * --ctx / --max-windows / --offset. */
int cli_eval_check(const char *cmd, const cli_eval *e);
/* Load the evaluation stream and skip --offset tokens; *ids is malloc'd. */
int cli_eval_load(const char *cmd, wmat_model *m, const cli_eval *e, int32_t **ids, size_t *n);

/* A token input of role `flag` ("--calib") by the rule above. */
int cli_load_token_input(const char *cmd, wmat_model *m, const char *flag, const char *spec, int32_t **ids, size_t *n);

/* Perplexity of m on ids in windows of ctx (at most max_windows; 0: all),
 * each from an empty cache, with the runtime wmat eval uses (packed
 * weights, --threads). 1 (reported) on failure. */
int cli_eval_perplexity(const char *cmd, wmat_model *m, const int32_t *ids, size_t n, int ctx, int max_windows,
                        wmat_eval_result *res);
/* The same under any protocol (wmat_eval_params; its context and
 * pack_weights are the CLI's). */
int cli_eval_stream(const char *cmd, wmat_model *m, const int32_t *ids, size_t n, const wmat_eval_params *p,
                    wmat_eval_result *res);

/* --json / --json-out FILE */
typedef struct {
    int flag;
    const char *path;
    wmat_afile af;
    FILE *f;
} cli_json;

#define CLI_JSON_OPTS(j)                                                                                               \
    {"--json", OPT_FLAG, &(j)->flag, NULL, "print the result as JSON on stdout"},                                      \
        {"--json-out", OPT_STR, &(j)->path, "FILE", "write the result as JSON to FILE (atomically)"}

/* Usage error (2) for --json with --json-out. */
int cli_json_check(const char *cmd, const cli_json *j);
/* The stream to write the JSON to: stdout (--json), a temporary renamed to
 * FILE by cli_json_close (--json-out), or NULL when neither was given or
 * FILE cannot be opened (then reported, and *failed set). */
FILE *cli_json_open(const char *cmd, cli_json *j, int *failed);
/* Finish: commit FILE (0), or report and return 1. */
int cli_json_close(const char *cmd, cli_json *j);

#endif
