/* Shared pieces of the wmat command line: option parsing, model loading,
 * error reporting. Each command lives in its own cmd_*.c and is listed in
 * the table in wmat.c. */
#ifndef WMAT_CLI_H
#define WMAT_CLI_H

#include "wmat.h"
#include "core/method.h"

#include <signal.h>

typedef enum { OPT_FLAG, OPT_STR, OPT_INT, OPT_FLOAT } cli_opt_kind;

typedef struct {
    const char *name; /* "--steps" */
    cli_opt_kind kind;
    void *dst;        /* int* for FLAG/INT, const char** for STR, float* for FLOAT */
    const char *arg;  /* placeholder for help ("N"), NULL for flags */
    const char *help;
} cli_opt;

typedef struct {
    const char *name;
    const char *summary;
    const char *usage; /* "MODEL (--text FILE | --tokens FILE) [options]" */
    int (*run)(int argc, char **argv);
} cli_command;

/* Options every command takes. */
typedef struct {
    int threads; /* --threads, or main()'s default: the cores not busy at start */
    const char *tokenizer;
    int help;
    int busy; /* runnable tasks of other processes seen at start (the default's reason) */
} cli_common;

extern cli_common g_cli;

/* Parse argv[1..] of a command (argv[0] is the command name). Positional
 * arguments go to pos[0..max_pos). Returns 0 to go on, 1 when --help was
 * printed, 2 on a usage error (already reported). */
int cli_parse(const cli_command *cmd, int argc, char **argv, const cli_opt *opts, const char **pos, int min_pos,
              int max_pos, int *n_pos);
/* cli_parse with a parameter schema (core/params.h) beside opts: its flags
 * (--key V, --key=V, a bool bare or by its negation) set values in ps, and
 * --help prints ps's rows under `title`, then `epilog` (either may be NULL). */
int cli_parse_params(const cli_command *cmd, int argc, char **argv, const cli_opt *opts, wmat_pset *ps,
                     const char *title, const char *epilog, const char **pos, int min_pos, int max_pos, int *n_pos);
void cli_usage(const cli_command *cmd, const cli_opt *opts);

/* Print "wmat CMD: error: <last wmat error>" to stderr; returns 1. */
int cli_fail(const char *cmd);

/* Ctrl-C / SIGTERM: the first sets cli_interrupted (a second one kills at
 * once). Progress callbacks then return nonzero, so the library stops and
 * removes its temporary outputs; long loops of the CLI check the flag;
 * main() prints "wmat CMD: interrupted" and exits 130. */
extern volatile sig_atomic_t cli_interrupted;
void cli_signals_install(void);
/* A progress callback that only reports an interruption (no display). */
int cli_cancel_check(void *user, const char *what, uint64_t done, uint64_t total);
/* Print a formatted error; returns 2 (usage) */
int cli_usage_error(const char *cmd, const char *fmt, ...);

/* Load a model for inspection (CLI_LOAD_RAW: as stored, nothing converted),
 * for editing its weights (CLI_LOAD_F32: every tensor fp32) or for running
 * (CLI_LOAD_STORED: weights stay in their stored kind, f16/bf16/q8_0/q4_0
 * run without an fp32 copy). */
enum { CLI_LOAD_RAW = 0, CLI_LOAD_F32 = 1, CLI_LOAD_STORED = 2 };
int cli_load_model(const char *cmd, const char *path, int materialize, wmat_model **out);
/* Merge a PEFT adapter directory into m (loaded CLI_LOAD_F32); on failure
 * the error is printed and m freed (returns 1). */
int cli_apply_adapter(const char *cmd, wmat_model *m, const char *dir);
/* Tokens of a text file ([BOS] + text) or a uint16 token file. */
int cli_load_tokens(const char *cmd, wmat_model *m, const char *text_path, const char *tokens_path, int32_t **ids,
                    size_t *n);
/* Human-readable byte count into buf. */
const char *cli_bytes(double b, char *buf, size_t n);
/* A progress callback drawing a bar on stderr (when it is a terminal). */
int cli_progress(void *user, const char *what, uint64_t done, uint64_t total);

/* The method registry (cli_methods.c; family: WMAT_FAMILY_* of core/method.h). */
/* The family's method names joined by sep (with_kind: "name -> kind"). */
void cli_method_names(const char *family, const char *sep, int with_kind, char *buf, size_t n);
/* The family's first (default) method. */
const char *cli_method_default(const char *family);
/* --help text of the family's methods (summary, statistics it needs with
 * stats_flag, kind, keys and defaults), then epilog; malloc'd, NULL when out
 * of memory. */
char *cli_methods_help(const char *family, const char *stats_flag, const char *epilog);
/* keys (cap rows): every key of the family's methods; ps: a set over them
 * (the command's flags --KEY). -1 with wmat_last_error() set. */
int cli_method_keys(const char *family, wmat_param_spec *keys, int cap, wmat_pset *ps);
/* A note on stderr for each key set in ps that method does not read. */
void cli_note_unread_keys(const char *cmd, const char *family, const char *method, const wmat_pset *ps);
/* 1 when method needs input statistics (calibration). */
int cli_method_needs_stats(const char *family, const char *method);
/* The weight kind the method writes ("qpacked", "lowrank"; "" when unknown). */
const char *cli_method_produces(const char *family, const char *method);

/* Commands */
int cmd_info(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_sysinfo(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_analyze(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_decompose(int argc, char **argv);
int cmd_methods(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_signature(int argc, char **argv);
int cmd_adapter(int argc, char **argv);
int cmd_align(int argc, char **argv);
int cmd_plot(int argc, char **argv);
int cmd_experiment(int argc, char **argv);

extern const cli_command g_commands[];
const cli_command *cli_find_command(const char *name);

#endif
