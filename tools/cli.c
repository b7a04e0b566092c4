#include "cli.h"
#include "core/internal.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

cli_common g_cli = {0, NULL, 0, 0};

static const cli_opt g_common_opts[] = {
    {"--threads", OPT_INT, &g_cli.threads, "N", "threads (default: the cores not busy with other processes at start)"},
    {"-t", OPT_INT, &g_cli.threads, "N", "same as --threads"},
    {"--tokenizer", OPT_STR, &g_cli.tokenizer, "FILE", "llama2.c tokenizer file (default: found beside the model)"},
    {"--no-blas-tune", OPT_FLAG, NULL, NULL, "keep the BLAS library's own kernel choice"},
    {"--help", OPT_FLAG, &g_cli.help, NULL, "show this help"},
    {NULL, 0, NULL, NULL, NULL},
};

static void print_opts(const cli_opt *opts)
{
    for (const cli_opt *o = opts; o && o->name; o++) {
        char lhs[64];
        snprintf(lhs, sizeof lhs, "%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
        fprintf(stdout, "  %-24s %s\n", lhs, o->help);
    }
}

static void usage_params(const cli_command *cmd, const cli_opt *opts, const wmat_pset *ps, const char *title,
                         const char *epilog)
{
    fprintf(stdout, "usage: wmat %s %s\n\n%s\n\noptions:\n", cmd->name, cmd->usage, cmd->summary);
    print_opts(opts);
    print_opts(g_common_opts);
    if (ps && ps->n) {
        const int len = wmat__params_help(ps->spec, 1, NULL, 0);
        char *text = malloc((size_t)len + 1);
        if (text) {
            wmat__params_help(ps->spec, 1, text, (size_t)len + 1);
            fprintf(stdout, "\n%s:\n%s", title ? title : "parameters", text);
            free(text);
        }
    }
    if (epilog) fprintf(stdout, "\n%s", epilog);
}

void cli_usage(const cli_command *cmd, const cli_opt *opts)
{
    usage_params(cmd, opts, NULL, NULL, NULL);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "wmat %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(see 'wmat %s --help')\n", cmd);
    va_end(ap);
    return 2;
}

volatile sig_atomic_t cli_interrupted = 0;

static void on_signal(int sig)
{
    cli_interrupted = sig;
}

static void signal_mask(int how)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(how, &set, NULL);
}

static void *signal_thread(void *arg)
{
    (void)arg;
    signal_mask(SIG_UNBLOCK); /* a mask blocked across an exec would be inherited */
    for (;;) pause();
    return NULL;
}

/* Why the handler runs on a thread of its own: oneDNN's JIT f32 GEMM on
 * AVX-512 (Debian 12 ships 2.7; fixed upstream by oneDNN PR #4855, issue
 * #4845) points rsp into a heap buffer while it runs, so a handler that
 * lands on a thread inside that kernel writes its signal frame over the
 * heap ("corrupted size vs. prev_size" at the next free). Every thread
 * started after this call (OpenMP's pool, oneDNN's) blocks SIGINT and
 * SIGTERM; the kernel delivers them to this idle thread (or to a BLAS
 * thread started before main, which never runs oneDNN). Called before any
 * math library starts its threads. */
void cli_signals_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = (int)SA_RESETHAND; /* a second Ctrl-C kills the process */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    pthread_attr_t at;
    pthread_t th;
    if (pthread_attr_init(&at)) return;
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (!pthread_create(&th, &at, signal_thread, NULL)) signal_mask(SIG_BLOCK);
    pthread_attr_destroy(&at);
}

int cli_cancel_check(void *user, const char *what, uint64_t done, uint64_t total)
{
    (void)user, (void)what, (void)done, (void)total;
    return cli_interrupted != 0;
}

int cli_fail(const char *cmd)
{
    if (cli_interrupted) return 1; /* main() says "interrupted" */
    fprintf(stderr, "wmat %s: error: %s\n", cmd, wmat_last_error()[0] ? wmat_last_error() : "unknown failure");
    return 1;
}

/* Old spellings, still accepted with a one-line note (docs/CLI.md,
 * "Conventions"). suffix: the alias applies only to "--old=VALUE" or to
 * "--old VALUE" with VALUE ending so (analyze's --json FILE, now a flag). */
static const struct {
    const char *cmd, *old, *now, *suffix;
} g_aliases[] = {
    {"quantize", "--eval-ctx", "--ctx", NULL},
    {"quantize", "--eval-windows", "--max-windows", NULL},
    {"quantize", "--eval-offset", "--offset", NULL},
    {"train", "--val", "--eval", NULL},
    {"train", "--eval-windows", "--max-windows", NULL},
    {"analyze", "--json", "--json-out", ".json"},
};

/* The current spelling of option `name` of cmd when it is an old one (the
 * note printed), else NULL. */
static const char *alias_of(const char *cmd, const char *name, const char *eq, const char *next)
{
    for (size_t i = 0; i < sizeof g_aliases / sizeof g_aliases[0]; i++) {
        if (strcmp(g_aliases[i].cmd, cmd) || strcmp(g_aliases[i].old, name)) continue;
        const char *suf = g_aliases[i].suffix;
        if (suf && !eq) {
            const size_t a = next ? strlen(next) : 0, b = strlen(suf);
            if (a < b || strcmp(next + a - b, suf)) continue;
        }
        fprintf(stderr, "wmat %s: note: %s%s is the old spelling of %s%s; it still works\n", cmd, name,
                suf ? " FILE" : "", g_aliases[i].now, suf ? " FILE" : "");
        return g_aliases[i].now;
    }
    return NULL;
}

static const cli_opt *find_opt(const cli_opt *opts, const char *name)
{
    for (const cli_opt *o = opts; o && o->name; o++)
        if (!strcmp(o->name, name)) return o;
    return NULL;
}

static int set_opt(const char *cmd, const cli_opt *o, const char *val)
{
    char *end;
    switch (o->kind) {
    case OPT_FLAG:
        if (o->dst) *(int *)o->dst = 1;
        return 0;
    case OPT_STR: *(const char **)o->dst = val; return 0;
    case OPT_INT: {
        errno = 0;
        long v = strtol(val, &end, 10);
        if (errno || *end || end == val || v < -2147483647L || v > 2147483647L)
            return cli_usage_error(cmd, "%s expects an integer, got '%s'", o->name, val);
        *(int *)o->dst = (int)v;
        return 0;
    }
    case OPT_FLOAT: {
        errno = 0;
        float v = strtof(val, &end);
        if (errno || *end || end == val || !isfinite(v))
            return cli_usage_error(cmd, "%s expects a number, got '%s'", o->name, val);
        *(float *)o->dst = v;
        return 0;
    }
    }
    return 0;
}

int cli_parse(const cli_command *cmd, int argc, char **argv, const cli_opt *opts, const char **pos, int min_pos,
              int max_pos, int *n_pos)
{
    return cli_parse_params(cmd, argc, argv, opts, NULL, NULL, NULL, pos, min_pos, max_pos, n_pos);
}

int cli_parse_params(const cli_command *cmd, int argc, char **argv, const cli_opt *opts, wmat_pset *ps,
                     const char *title, const char *epilog, const char **pos, int min_pos, int max_pos, int *n_pos)
{
    *n_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] == '-' && a[1] == '-' && a[2]) {
            char name[64];
            const char *eq = strchr(a, '=');
            size_t nl = eq ? (size_t)(eq - a) : strlen(a);
            if (nl >= sizeof name) return cli_usage_error(cmd->name, "unknown option '%s'", a);
            memcpy(name, a, nl);
            name[nl] = '\0';
            const char *now = alias_of(cmd->name, name, eq, i + 1 < argc ? argv[i + 1] : NULL);
            if (now) snprintf(name, sizeof name, "%s", now);
            const cli_opt *o = find_opt(opts, name);
            if (!o) o = find_opt(g_common_opts, name);
            if (!o && ps) {
                const int k = wmat__pset_flag(ps, a, i + 1 < argc ? argv[i + 1] : NULL);
                if (k < 0) return cli_usage_error(cmd->name, "%s", wmat_last_error());
                if (k > 0) {
                    i += k - 1;
                    continue;
                }
            }
            if (!o) return cli_usage_error(cmd->name, "unknown option '%s'", a);
            const char *val = NULL;
            if (o->kind != OPT_FLAG) {
                if (eq) val = eq + 1;
                else if (i + 1 < argc) val = argv[++i];
                else return cli_usage_error(cmd->name, "%s needs a value (%s)", o->name, o->arg ? o->arg : "VALUE");
            } else if (eq) {
                return cli_usage_error(cmd->name, "%s takes no value", o->name);
            }
            int rc = set_opt(cmd->name, o, val);
            if (rc) return rc;
        } else if (!strcmp(a, "-h")) {
            g_cli.help = 1;
        } else if (a[0] == '-' && isalpha((unsigned char)a[1]) && !a[2]) {
            /* llama.cpp's short forms where a command lists them (-m -p -n ...) */
            const cli_opt *o = find_opt(opts, a);
            if (!o) o = find_opt(g_common_opts, a);
            if (!o) return cli_usage_error(cmd->name, "unknown option '%s'", a);
            const char *val = NULL;
            if (o->kind != OPT_FLAG) {
                if (i + 1 >= argc) return cli_usage_error(cmd->name, "%s needs a value (%s)", o->name, o->arg ? o->arg : "VALUE");
                val = argv[++i];
            }
            int rc = set_opt(cmd->name, o, val);
            if (rc) return rc;
        } else {
            if (*n_pos >= max_pos) return cli_usage_error(cmd->name, "unexpected argument '%s'", a);
            pos[(*n_pos)++] = a;
        }
    }
    if (g_cli.help) {
        usage_params(cmd, opts, ps, title, epilog);
        return 1;
    }
    if (*n_pos < min_pos) return cli_usage_error(cmd->name, "missing arguments: %s", cmd->usage);
    if (g_cli.threads < 0) return cli_usage_error(cmd->name, "--threads must be positive");
    return 0;
}

int cli_load_model(const char *cmd, const char *path, int materialize, wmat_model **out)
{
    wmat_load_params lp = wmat_load_default_params();
    lp.tokenizer_path = g_cli.tokenizer;
    lp.materialize_f32 = materialize != CLI_LOAD_RAW;
    lp.keep_stored = materialize == CLI_LOAD_STORED;
    lp.check_finite = materialize != CLI_LOAD_RAW;
    int rc = wmat_model_load(out, path, &lp);
    /* work that edits weights starts from fp32, whatever the stored kind */
    if (!rc && materialize == CLI_LOAD_F32 && (rc = wmat_model_dequantize(*out))) {
        wmat_model_free(*out);
        *out = NULL;
    }
    return rc ? cli_fail(cmd) : 0;
}

int cli_apply_adapter(const char *cmd, wmat_model *m, const char *dir)
{
    if (wmat_lora_merge_peft(m, dir)) {
        cli_fail(cmd);
        wmat_model_free(m);
        return 1;
    }
    fprintf(stderr, "%s: merged the adapter %s into the weights (fp32)\n", cmd, dir);
    return 0;
}

int cli_load_tokens(const char *cmd, wmat_model *m, const char *text_path, const char *tokens_path, int32_t **ids,
                    size_t *n)
{
    if (tokens_path) return wmat_read_tokens_u16(tokens_path, ids, n) ? cli_fail(cmd) : 0;
    wmat_tokenizer *tok = wmat_model_tokenizer(m);
    if (!tok) {
        fprintf(stderr, "wmat %s: error: %s has no tokenizer; pass --tokenizer FILE (a llama2.c tokenizer such as tok512.bin) or use --tokens\n",
                cmd, wmat_model_path(m));
        return 1;
    }
    char *text;
    size_t len;
    if (wmat_read_file(text_path, &text, &len)) return cli_fail(cmd);
    int rc = wmat_tokenizer_encode(tok, text, len, 1, 0, ids, n);
    free(text);
    return rc ? cli_fail(cmd) : 0;
}

const char *cli_bytes(double b, char *buf, size_t n)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4) {
        b /= 1024;
        i++;
    }
    snprintf(buf, n, i ? "%.2f %s" : "%.0f %s", b, u[i]);
    return buf;
}

/* On a terminal, a bar redrawn in place; otherwise (a log) one line every
 * few seconds and at the end, so long runs show progress in logs too. */
int cli_progress(void *user, const char *what, uint64_t done, uint64_t total)
{
    (void)user;
    static double last;
    static int printed;
    if (cli_interrupted) return 1;
    if (total == 0) return 0;
    if (!isatty(STDERR_FILENO)) {
        /* quick runs print nothing; long ones a line every 5 s and the end */
        const double t = wmat__now();
        if (last == 0) last = t;
        if (t - last >= 5.0 || (done == total && printed)) {
            last = t;
            printed = 1;
            fprintf(stderr, "%s: %llu/%llu (%.0f%%)\n", what, (unsigned long long)done, (unsigned long long)total,
                    100.0 * (double)done / (double)total);
        }
        return 0;
    }
    int width = 30, fill = (int)((double)done / (double)total * width);
    fprintf(stderr, "\r%-10s [", what);
    for (int i = 0; i < width; i++) fputc(i < fill ? '=' : ' ', stderr);
    fprintf(stderr, "] %llu/%llu", (unsigned long long)done, (unsigned long long)total);
    if (done == total) fputc('\n', stderr);
    fflush(stderr);
    return 0;
}
