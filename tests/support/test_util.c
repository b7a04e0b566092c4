#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

const char *tu_data(const char *rel)
{
    static char bufs[8][4096];
    static int slot;
    const char *root = getenv("WMAT_DATA");
    if (!root || !*root) root = WMAT_DATA_DIR;
    char *b = bufs[slot++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", root, rel);
    struct stat st;
    if (stat(b, &st) != 0) return NULL;
    return b;
}

static char g_tmpdir[256];

static void rm_tmpdir(void)
{
    if (!g_tmpdir[0]) return;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", g_tmpdir);
}

const char *tu_tmpdir(void)
{
    if (!g_tmpdir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(g_tmpdir, sizeof g_tmpdir, "%s/wmat-test-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(g_tmpdir)) {
            perror("mkdtemp");
            abort();
        }
        atexit(rm_tmpdir);
    }
    return g_tmpdir;
}

const char *tu_tmp(const char *name)
{
    static char bufs[8][512];
    static int slot;
    char *b = bufs[slot++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", tu_tmpdir(), name);
    return b;
}

const char *tu_cli(void) { return WMAT_CLI_PATH; }

char *tu_run(const char *cmd, int *exit_code)
{
    FILE *p = popen(cmd, "r");
    if (!p) return NULL;
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    size_t k;
    while ((k = fread(out + len, 1, cap - len - 1, p)) > 0) {
        len += k;
        if (cap - len < 2) out = realloc(out, cap *= 2);
    }
    out[len] = '\0';
    int st = pclose(p);
    if (exit_code) *exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return out;
}

int tu_write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, n, f);
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

unsigned char *tu_slurp(const char *path, size_t *n)
{
    char *buf = NULL;
    TU_OK(wmat_read_file(path, &buf, n));
    return (unsigned char *)buf;
}

wmat_config tu_config(int dim, int hidden, int layers, int heads, int kv_heads, int vocab, int seq_len)
{
    wmat_config c;
    memset(&c, 0, sizeof c);
    c.dim = dim;
    c.hidden_dim = hidden;
    c.n_layers = layers;
    c.n_heads = heads;
    c.n_kv_heads = kv_heads;
    c.vocab_size = vocab;
    c.seq_len = seq_len;
    c.rope_theta = 10000.0f;
    c.norm_eps = 1e-5f;
    c.bos_id = 1;
    c.eos_id = 2;
    return c;
}

static int g_skipped;

void tu_skip_(const char *file, int line)
{
    g_skipped = 1;
    _skip(file, line);
}

int tu_run_group_(const char *group, const struct CMUnitTest *tests, size_t n, CMFixtureFunction setup,
                  CMFixtureFunction teardown)
{
    if (getenv("WMAT_TEST_LIST")) {
        for (size_t i = 0; i < n; i++) printf("%s\n", tests[i].name);
        return 0;
    }
    const char *one = getenv("WMAT_TEST_CASE");
    if (one && *one) {
        size_t i = 0;
        while (i < n && strcmp(tests[i].name, one) != 0) i++;
        if (i == n) { /* a stale registration must not pass by running nothing */
            fprintf(stderr, "%s: no test case named '%s'\n", group, one);
            return 1;
        }
        /* The filter is a glob pattern; case names hold no glob characters,
         * but run the one case alone all the same. */
        int rc = _cmocka_run_group_tests(group, &tests[i], 1, setup, teardown);
        return rc == 0 && g_skipped ? 77 : rc;
    }
    const char *glob = getenv("WMAT_TEST_FILTER"); /* by hand: cmocka's * and ? pattern */
    if (glob && *glob) cmocka_set_test_filter(glob);
    return _cmocka_run_group_tests(group, tests, n, setup, teardown);
}

double tu_abs_diff(double x, double y)
{
    if (isnan(x) || isnan(y)) return INFINITY;
    if (isinf(x) || isinf(y)) return x == y ? 0.0 : INFINITY;
    return fabs(x - y);
}

double tu_max_abs_diff(const float *a, const float *b, size_t n, size_t *worst)
{
    double md = 0;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        double d = tu_abs_diff(a[i], b[i]);
        if (d > md) md = d, w = i;
        if (isinf(md)) break;
    }
    if (worst) *worst = w;
    return md;
}

double tu_max_abs_diff_d(const double *a, const double *b, size_t n, size_t *worst)
{
    double md = 0;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        double d = tu_abs_diff(a[i], b[i]);
        if (d > md) md = d, w = i;
        if (isinf(md)) break;
    }
    if (worst) *worst = w;
    return md;
}

double tu_max_abs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i])) return NAN;
        if (fabs(a[i]) > m) m = fabs(a[i]);
    }
    return m;
}

static int close1(double x, double y, double abs_tol, double rel_tol)
{
    if (isnan(abs_tol) || isnan(rel_tol)) return 0;
    double d = tu_abs_diff(x, y);
    if (d == 0) return 1; /* equal, infinities included */
    if (isinf(d)) return 0; /* else rel_tol * |inf| would admit it */
    return d <= abs_tol + rel_tol * fabs(y);
}

int tu_close(const float *a, const float *b, size_t n, double abs_tol, double rel_tol, size_t *bad)
{
    for (size_t i = 0; i < n; i++)
        if (!close1(a[i], b[i], abs_tol, rel_tol)) {
            if (bad) *bad = i;
            return 0;
        }
    return 1;
}

int tu_close_d(const double *a, const double *b, size_t n, double abs_tol, double rel_tol, size_t *bad)
{
    for (size_t i = 0; i < n; i++)
        if (!close1(a[i], b[i], abs_tol, rel_tol)) {
            if (bad) *bad = i;
            return 0;
        }
    return 1;
}

int tu_near(double x, double y, double tol)
{
    if (isnan(tol)) return 0; /* a tolerance computed from a NaN admits nothing */
    double d = tu_abs_diff(x, y);
    if (d == 0) return 1;
    return !isinf(d) && d <= tol; /* an infinite tolerance admits no NaN */
}

double tu_rel_frob(const float *a, const float *b, size_t n)
{
    double d = 0, t = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        t += (double)b[i] * b[i];
    }
    return sqrt(d / t);
}

wmat_model *tu_load_f32(const char *path)
{
    wmat_model *m = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    TU_OK(wmat_model_load(&m, path, &lp));
    return m;
}
