/* Out of core (docs/SCALING.md): eval's layer-major path computes what the
 * window-major path computes, releasing mapped pages never changes a
 * result, quantization packing each block as it goes writes the same
 * bytes, and the streaming commands (eval, convert, analyze, quantize) run
 * on a generated model with a peak resident set (less the program's own)
 * under half the model's size, and `wmat eval` succeeds inside a memory cgroup whose limit is
 * smaller than the model (skipped where no memory cgroup can be made). Calibration's streams kept
 * in spill files give the statistics and streams of the in-memory ones while only about a window
 * of them is resident, and GPTQ's factorization in H's own storage gives the factor of the copy
 * and leaves H as it was. */
#include "test_util.h"
#include "core/shapes.h"
#include "io/model_internal.h"
#include "quant/methods.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Sanitizer builds: shadow memory and the free quarantine are resident
 * memory no model size bounds, so the memory cases skip there. */
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

static int skip_sanitized(void)
{
    if (!SANITIZED) return 0;
    print_message("SKIP: sanitizer build (its shadow memory and quarantine are not bounded by the model)\n");
    skip();
    return 1;
}

static char g_model[512];  /* generated llama2.c model, ~219 MB */
static char g_tokens[512]; /* random token ids */
static long g_model_bytes;

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* Drop the file's pages from the page cache, so that a child charged to a
 * cgroup reads (and pays for) them itself. */
static void drop_cache(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    fdatasync(fd);
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

/* Run the CLI with argv (NULL-terminated, argv[0] ignored), stdout and
 * stderr to log; returns the exit status (-1: signal) and the child's peak
 * RSS in bytes. cgroup_procs: a cgroup.procs file the child joins first. */
static int run_cli(char *const argv[], const char *log, long *peak_rss, const char *cgroup_procs)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (cgroup_procs) {
            FILE *f = fopen(cgroup_procs, "w");
            if (!f || fprintf(f, "%ld\n", (long)getpid()) < 0 || fclose(f) != 0) _exit(126);
        }
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(tu_cli(), argv);
        _exit(127);
    }
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    assert_int_equal(wait4(pid, &status, 0, &ru), pid);
    if (peak_rss) *peak_rss = ru.ru_maxrss * 1024L;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void print_log(const char *log)
{
    char *txt = NULL;
    size_t n = 0;
    if (wmat_read_file(log, &txt, &n) == WMAT_OK) print_message("%s\n", txt);
    free(txt);
}

/* The "ppl" value of a --json-out file. */
static double json_ppl(const char *path)
{
    char *txt = NULL;
    size_t n = 0;
    TU_OK(wmat_read_file(path, &txt, &n));
    const char *p = strstr(txt, "\"ppl\": ");
    assert_non_null(p);
    double v = strtod(p + 7, NULL);
    free(txt);
    return v;
}

static int setup(void **state)
{
    (void)state;
    /* 12 blocks of 1.77 M weights, vocabulary 4096: 24.4 M weights, 98 MB */
    wmat_config c = tu_config(384, 1024, 12, 6, 6, 4096, 128);
    wmat_model *m = NULL;
    if (wmat_model_create(&m, &c) != WMAT_OK || wmat_model_init_random(m, 7, 0.02f) != WMAT_OK) {
        print_error("setup: %s\n", wmat_last_error());
        wmat_model_free(m);
        return -1;
    }
    snprintf(g_model, sizeof g_model, "%s", tu_tmp("big.bin"));
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_LLAMA2C;
    int rc = wmat_model_save(m, g_model, &sp);
    wmat_model_free(m);
    int32_t ids[1024];
    uint64_t s = 12345;
    for (int i = 0; i < 1024; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((s >> 33) % 4096u);
    }
    snprintf(g_tokens, sizeof g_tokens, "%s", tu_tmp("tokens.u16"));
    if (rc == WMAT_OK) rc = wmat_write_tokens_u16(g_tokens, ids, 1024);
    if (rc != WMAT_OK) {
        print_error("setup: %s\n", wmat_last_error());
        return -1;
    }
    g_model_bytes = file_size(g_model);
    print_message("model: %s, %ld bytes\n", g_model, g_model_bytes);
    return 0;
}

static wmat_model *load_stored(const char *path)
{
    wmat_load_params lp = wmat_load_default_params();
    lp.keep_stored = 1;
    wmat_model *m = NULL;
    TU_OK(wmat_model_load(&m, path, &lp));
    return m;
}

static wmat_eval_protocol g_proto = WMAT_EVAL_WMAT;

static wmat_eval_result eval_with(wmat_model *m, const int32_t *ids, size_t n, int low_mem, int pack, int threads)
{
    wmat_eval_params p = wmat_eval_default_params();
    p.protocol = g_proto;
    p.ctx = 64;
    p.max_chunks = 5;
    p.low_mem = low_mem;
    p.pack_weights = pack;
    p.n_threads = threads;
    wmat_eval_result r;
    TU_OK(wmat_eval_stream(m, ids, n, &p, &r));
    return r;
}

/* Layer-major against window-major: the same floats on one thread without
 * packing (every window runs the same block code on the same runtime), and
 * within float reassociation against the default packed, threaded path. */
static void test_eval_layer_major_matches(void **state)
{
    (void)state;
    wmat_model *m = load_stored(g_model);
    int32_t *ids = NULL;
    size_t n = 0;
    TU_OK(wmat_read_tokens_u16(g_tokens, &ids, &n));
    for (int proto = 0; proto < 2; proto++) {
        g_proto = proto ? WMAT_EVAL_LLAMACPP : WMAT_EVAL_WMAT;
        wmat_eval_result a = eval_with(m, ids, n, -1, 0, 1), b = eval_with(m, ids, n, 1, 0, 1);
        assert_int_equal(a.tokens_scored, b.tokens_scored);
        assert_true(a.mean_nll == b.mean_nll);
        wmat_eval_result c = eval_with(m, ids, n, -1, 1, 2), d = eval_with(m, ids, n, 1, 1, 2);
        TU_ASSERT_NEAR(d.ppl, c.ppl, 1e-6 * c.ppl);
        TU_ASSERT_NEAR(d.ppl, a.ppl, 1e-6 * a.ppl);
    }
    g_proto = WMAT_EVAL_WMAT;
    free(ids);
    wmat_model_free(m);
}

/* Releasing every mapped page between and during runs changes nothing. */
static void test_release_keeps_results(void **state)
{
    (void)state;
    wmat_model *m = load_stored(g_model);
    int32_t *ids = NULL;
    size_t n = 0;
    TU_OK(wmat_read_tokens_u16(g_tokens, &ids, &n));
    wmat_eval_result a = eval_with(m, ids, n, -1, 0, 1);
    wmat__model_release(m, NULL);
    for (int l = 0; l < wmat_model_config(m)->n_layers; l++) wmat__model_release_layer(m, l);
    wmat_eval_result b = eval_with(m, ids, n, -1, 0, 1);
    assert_true(a.mean_nll == b.mean_nll);
    /* an owned tensor is never touched: make one writable, release, read */
    wmat_tensor *t = wmat_model_linear(m, 0, WMAT_LIN_Q);
    TU_OK(wmat__tensor_make_writable(t));
    ((float *)t->data)[0] = 0.5f;
    wmat__model_release(m, t);
    wmat__model_release(m, NULL);
    assert_true(((float *)t->data)[0] == 0.5f);
    free(ids);
    wmat_model_free(m);
}

static void assert_same_file(const char *a, const char *b)
{
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    TU_OK(wmat_read_file(a, &x, &nx));
    TU_OK(wmat_read_file(b, &y, &ny));
    if (nx != ny || memcmp(x, y, nx)) fail_msg("%s (%zu bytes) and %s (%zu bytes) differ", a, nx, b, ny);
    free(x);
    free(y);
}

/* Entries of directory dir whose names start with prefix. */
static int count_prefixed(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

/* The three outputs quantize streams out of core, by the commands' tails:
 * GPTQ to the native directory (packed objects), RTN 4-bit sym g32 to GGUF
 * (packed objects written as Q4_0) and --ggml q4_k_m (plain ggml block
 * tensors). */
static const char *const g_qcase[3][12] = {
    /* 16 windows of 64: the low-mem run keeps them in spill files */
    {"--method", "gptq", "--bits", "4", "--group", "128", "--calib", NULL /* tokens */, "--calib-tokens", "1024", NULL},
    {"--to", "gguf", "--method", "rtn", "--bits", "4", "--group", "32", "--sym", NULL},
    {"--to", "gguf", "--ggml", "q4_k_m", "--method", "rtn", NULL},
};

static int run_quantize(int c, const char *out, const char *mode, const char *logf, long *rss, const char *procs)
{
    char *argv[40];
    int n = 0;
    argv[n++] = "wmat";
    argv[n++] = "quantize";
    argv[n++] = g_model;
    argv[n++] = (char *)out;
    for (int i = 0; g_qcase[c][i] || (c == 0 && i == 7); i++) argv[n++] = (char *)(g_qcase[c][i] ? g_qcase[c][i] : g_tokens);
    char *const tail[] = {"--calib-ctx", "64", "--threads", "1", "--quiet", (char *)mode};
    for (int i = c == 0 ? 0 : 2; i < 6; i++) argv[n++] = tail[i];
    argv[n] = NULL;
    return run_cli(argv, logf, rss, procs);
}

static const char *qout_name(int c, int low)
{
    static const char *const names[3][2] = {{"q_full", "q_low"}, {"q_full.gguf", "q_low.gguf"}, {"k_full.gguf", "k_low.gguf"}};
    return tu_tmp(names[c][low]);
}

/* Quantization packing each block as soon as it is done, spilling it to a
 * temporary file beside the output and writing the output from there,
 * writes the bytes of the fake-quant path, for each output kind, and
 * leaves no temporary file behind. The GPTQ case calibrates on 16 windows,
 * which the low-mem run keeps in spill files (the streams and stage mode's
 * kept activations; test_calib_streams_spilled holds that path to the
 * in-memory one directly). */
static void test_quantize_low_mem_same_bytes(void **state)
{
    (void)state;
    char logf[600], a[700], b[700];
    snprintf(logf, sizeof logf, "%s", tu_tmp("q.log"));
    const char *mode[2] = {"--no-low-mem", "--low-mem"};
    for (int c = 0; c < 3; c++) {
        for (int low = 0; low < 2; low++) {
            long rss = 0;
            int rc = run_quantize(c, qout_name(c, low), mode[low], logf, &rss, NULL);
            print_message("wmat quantize %s %s: peak RSS %.1f MB of a %.1f MB model\n", qout_name(c, low), mode[low],
                          rss / 1e6, g_model_bytes / 1e6);
            if (rc) print_log(logf);
            assert_int_equal(rc, 0);
        }
        if (c == 0) {
            snprintf(a, sizeof a, "%s/model.safetensors", qout_name(c, 0));
            snprintf(b, sizeof b, "%s/model.safetensors", qout_name(c, 1));
            assert_same_file(a, b);
            snprintf(a, sizeof a, "%s/quant_config.json", qout_name(c, 0));
            snprintf(b, sizeof b, "%s/quant_config.json", qout_name(c, 1));
            assert_same_file(a, b);
        } else {
            assert_same_file(qout_name(c, 0), qout_name(c, 1));
        }
    }
    /* the spill files are unlinked as they are made */
    snprintf(a, sizeof a, "%s", qout_name(0, 0));
    char *slash = strrchr(a, '/');
    if (slash) *slash = '\0';
    assert_int_equal(count_prefixed(a, ".wmat-spill"), 0);
}

/* Bytes of this process's resident pages in mappings whose path holds
 * `name` (/proc/self/smaps; -1 where it cannot be read), and how many such
 * mappings there are. */
static long smaps_rss(const char *name, int *n_maps)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[1024];
    long kb = 0;
    int in = 0;
    *n_maps = 0;
    while (fgets(line, sizeof line, f)) {
        long v;
        if ((line[0] >= '0' && line[0] <= '9') || (line[0] >= 'a' && line[0] <= 'f')) {
            /* a mapping's header: "start-end perms offset dev inode path"
             * (field lines start with a capital: "Rss:", "VmFlags:") */
            in = strstr(line, name) != NULL;
            *n_maps += in;
        } else if (in && sscanf(line, "Rss: %ld kB", &v) == 1) {
            kb += v;
        }
    }
    fclose(f);
    return kb * 1024L;
}

/* Out of core calibration (quantize's low-mem mode): the streams and stage
 * mode's kept activations in unlinked spill files give every slot's
 * statistics and the streams after each block bit for bit as in memory,
 * while the spill files' resident pages stay near one window's, and
 * nothing is left in the directory. */
static void test_calib_streams_spilled(void **state)
{
    (void)state;
    wmat_model *m = load_stored(g_model);
    const wmat_config *c = wmat_model_config(m);
    int32_t *ids = NULL;
    size_t nc = 0;
    TU_OK(wmat_read_tokens_u16(g_tokens, &ids, &nc));
    const int ctx = 64, nw = 16, blocks = 3;
    assert_true(nc >= (size_t)(ctx * nw));
    char dir[600];
    snprintf(dir, sizeof dir, "%s", tu_tmp("calib_spill"));
    assert_int_equal(mkdir(dir, 0755), 0);
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = ctx;
    rp.kv_cache_len = 1;
    wmat_runtime *ra, *rb;
    TU_OK(wmat_runtime_create(&ra, m, &rp));
    TU_OK(wmat_runtime_create(&rb, m, &rp));
    wmat__calib_states a, b;
    TU_OK(wmat__calib_states_init(&a, ra, ids, nw, ctx, c->dim));
    TU_OK(wmat__calib_states_init_spill(&b, rb, ids, nw, ctx, c->dim, 1, dir));
    a.resume = b.resume = 1;
    assert_int_equal(b.x_map > 0, 1);
    assert_int_equal(a.x_map, 0);
    const size_t per_tok = (size_t)(c->dim + wmat__attn_width(c) + c->hidden_dim) * sizeof(float);
    const size_t all = per_tok * (size_t)ctx * (size_t)nw, window = per_tok * (size_t)ctx;
    long worst = 0;
    for (int l = 0; l < blocks; l++) {
        for (int s = 0; s < 4; s++) {
            const int64_t n = s == WMAT_CSLOT_DOWN ? c->hidden_dim : s == WMAT_CSLOT_O ? wmat__attn_width(c) : c->dim;
            wmat_qstats sa, sb;
            TU_OK(wmat__qstats_init(&sa, n, 1));
            TU_OK(wmat__qstats_init(&sb, n, 1));
            wmat_qstats *slots_a[WMAT_CSLOT_COUNT] = {0}, *slots_b[WMAT_CSLOT_COUNT] = {0};
            slots_a[s] = &sa;
            slots_b[s] = &sb;
            TU_OK(wmat__calib_collect(&a, c->n_layers, slots_a, 1u << s, 0));
            TU_OK(wmat__calib_collect(&b, c->n_layers, slots_b, 1u << s, 0));
            assert_memory_equal(sa.H, sb.H, (size_t)(n * n) * sizeof(double));
            assert_memory_equal(sa.x2, sb.x2, (size_t)n * sizeof(double));
            assert_memory_equal(sa.absmax, sb.absmax, (size_t)n * sizeof(float));
            wmat__qstats_free(&sa);
            wmat__qstats_free(&sb);
            int maps = 0;
            const long rss = smaps_rss(".wmat-spill-", &maps);
            if (rss > worst) worst = rss;
        }
        TU_OK(wmat__calib_advance(&a));
        TU_OK(wmat__calib_advance(&b));
        for (int w = 0; w < nw; w++)
            assert_memory_equal(wmat__calib_state(&a, w), wmat__calib_state(&b, w), (size_t)ctx * (size_t)c->dim * sizeof(float));
    }
    int maps = 0;
    const long rss = smaps_rss(".wmat-spill-", &maps);
    print_message("spilled streams: %d mappings, %zu bytes in all, resident at most %ld bytes after a pass (%ld now; "
                  "a window is %zu)\n", maps, all, worst, rss, window);
    assert_int_equal(maps, 3); /* X, A, Hs */
    assert_int_equal(a.stage_runs, b.stage_runs);
    /* a window (plus the pages the windows share) at most, of 16 */
    if (worst >= 0) TU_ASSERT_BELOW((double)worst, (double)(2 * window + 6 * 4096));
    assert_int_equal(count_prefixed(dir, ".wmat-spill"), 0);
    wmat__calib_states_free(&a);
    wmat__calib_states_free(&b);
    assert_int_equal(smaps_rss(".wmat-spill-", &maps) <= 0 && maps == 0, 1);
    wmat_runtime_free(ra);
    wmat_runtime_free(rb);
    wmat_model_free(m);
    free(ids);
}

/* A random symmetric positive semi-definite H (n, n): X^T X of T < n rows,
 * so damping is needed, minus sub x mean(diag) on the diagonal (then the
 * first dampings fail), with dead inputs (zero rows and columns). */
static double *gptq_h(int64_t n, int T, double sub, uint64_t seed)
{
    double *X = malloc((size_t)T * (size_t)n * sizeof(double)), *H = calloc((size_t)(n * n), sizeof(double));
    assert_non_null(X);
    assert_non_null(H);
    for (int64_t i = 0; i < (int64_t)T * n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        X[i] = ((double)(seed >> 11) / 9007199254740992.0 - 0.5) * (1.0 + (double)(i % n) / (double)n);
    }
    for (int64_t j = 3; j < n; j += 37)
        for (int t = 0; t < T; t++) X[t * n + j] = 0.0; /* dead */
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j <= i; j++) {
            double v = 0.0;
            for (int t = 0; t < T; t++) v += X[t * n + i] * X[t * n + j];
            H[i * n + j] = H[j * n + i] = v;
        }
    double mean = 0.0;
    for (int64_t j = 0; j < n; j++) mean += H[j * n + j];
    mean /= (double)n;
    for (int64_t j = 0; j < n; j++)
        if (H[j * n + j] != 0.0) H[j * n + j] -= sub * mean;
    free(X);
    return H;
}

/* GPTQ's factorization in H's own storage (a bit-symmetric H, double)
 * gives U, perm and the damping of the copy path (taken for an H whose
 * triangle the factorization does not read differs), and leaves H bit for
 * bit as it was: with and without act-order, with retried dampings; the
 * inverse factor (wmat__gptq_factor) and the unit one GPTQ reads
 * (wmat__gptq_factor_unit). */
static void test_gptq_factor_in_place(void **state)
{
    (void)state;
    const int64_t n = 300; /* not a multiple of the transposes' tiles */
    for (int unit = 0; unit < 2; unit++)
    for (int act = 0; act < 2; act++)
        for (int hard = 0; hard < 2; hard++) {
            int (*factor)(double *, int64_t, int, int, int, double *, int32_t *, float *) =
                unit ? wmat__gptq_factor_unit : wmat__gptq_factor;
            double *H = gptq_h(n, 200, hard ? 0.05 : 0.0, 11 + (uint64_t)act), *H0 = malloc((size_t)(n * n) * sizeof(double)),
                   *H2 = malloc((size_t)(n * n) * sizeof(double));
            float *U1 = malloc((size_t)(n * n) * sizeof(float)), *U2 = malloc((size_t)(n * n) * sizeof(float));
            int32_t *p1 = malloc((size_t)n * sizeof(int32_t)), *p2 = malloc((size_t)n * sizeof(int32_t));
            assert_true(H0 && H2 && U1 && U2 && p1 && p2);
            memcpy(H0, H, (size_t)(n * n) * sizeof(double));
            double l1 = 0.01, l2 = 0.01;
            TU_OK(factor(H, n, act, 1, 1, &l1, p1, U1));
            assert_memory_equal(H, H0, (size_t)(n * n) * sizeof(double));
            /* the entries J P H P^T J's strict lower triangle holds, changed:
             * H is no longer symmetric, so the copy path runs on the values
             * the in-place path factored */
            memcpy(H2, H0, (size_t)(n * n) * sizeof(double));
            for (int64_t x = 0; x < n; x++)
                for (int64_t y = 0; y < x; y++) H2[(int64_t)p1[n - 1 - x] * n + p1[n - 1 - y]] += 1.0;
            TU_OK(factor(H2, n, act, 1, 1, &l2, p2, U2));
            print_message("%s, act-order %d, %s: damping %g in place, %g copied\n", unit ? "unit" : "inverse", act,
                          hard ? "indefinite" : "semi-definite", l1, l2);
            assert_true(l1 == l2);
            if (hard) assert_true(l1 > 0.05); /* retried */
            assert_memory_equal(p1, p2, (size_t)n * sizeof(int32_t));
            assert_memory_equal(U1, U2, (size_t)(n * n) * sizeof(float));
            free(H);
            free(H0);
            free(H2);
            free(U1);
            free(U2);
            free(p1);
            free(p2);
        }
}

/* Each streaming command's peak RSS, less the program's own, stays under
 * half the model (before this, eval and convert held all of it). */
static void test_peak_rss_below_half_model(void **state)
{
    (void)state;
    if (skip_sanitized()) return;
    char logf[600], gguf[600], qout[600];
    snprintf(logf, sizeof logf, "%s", tu_tmp("rss.log"));
    snprintf(gguf, sizeof gguf, "%s", tu_tmp("rss.gguf"));
    snprintf(qout, sizeof qout, "%s", tu_tmp("rss_q"));
    char *const eval[] = {"wmat", "eval", g_model, "--tokens", g_tokens, "--ctx", "64", "--max-windows", "3",
                          "--threads", "1", "--low-mem", NULL};
    char *const convert[] = {"wmat", "convert", g_model, gguf, "--to", "gguf", "--dtype", "f16", "--no-tokenizer",
                             "--threads", "1", NULL};
    char *const analyze[] = {"wmat", "analyze", g_model, "--quiet", "--no-heads", "--threads", "1", NULL};
    /* RTN: GPTQ's statistics of a 1024-wide input (H, its batch and its
     * factors, ~40 MB) outweigh this model's blocks (7 MB each); its bytes
     * are test_quantize_low_mem_same_bytes's */
    char *const quant[] = {"wmat", "quantize", g_model, qout, "--method", "rtn", "--bits", "4", "--group", "128",
                           "--threads", "1", "--quiet", "--low-mem", NULL};
    /* the program itself (libraries, OpenBLAS and oneDNN state): `wmat
     * info` maps the model and reads only its header */
    char *const info[] = {"wmat", "info", g_model, NULL};
    long base = 0;
    assert_int_equal(run_cli(info, logf, &base, NULL), 0);
    print_message("wmat info: peak RSS %.1f MB (the program)\n", base / 1e6);
    char *const *cmds[] = {eval, convert, analyze, quant};
    for (int i = 0; i < 4; i++) {
        long rss = 0;
        int rc = run_cli(cmds[i], logf, &rss, NULL);
        print_message("wmat %s: peak RSS %.1f MB, %.1f MB above the program, of a %.1f MB model\n", cmds[i][1],
                      rss / 1e6, (rss - base) / 1e6, g_model_bytes / 1e6);
        if (rc) print_log(logf);
        assert_int_equal(rc, 0);
        /* a block is 7 MB here, the classifier 6 MB; half the model leaves
         * room for the BLAS libraries' state (~15-20 MB once they start),
         * buffers and the packed outputs (11 MB at 4 bits), not for the
         * model */
        if (!(rss - base < g_model_bytes / 2))
            fail_msg("wmat %s: peak RSS %ld bytes, %ld above the program, not below half the model (%ld)",
                     cmds[i][1], rss, rss - base, g_model_bytes);
    }
}

/* A memory cgroup (v1, else v2) limited to `limit` bytes; its cgroup.procs
 * path in procs, its directory in dir. 0 when made. */
static int make_cgroup(long limit, char *dir, size_t nd, char *procs, size_t np)
{
    static const struct {
        const char *root, *limit_file;
    } kinds[2] = {{"/sys/fs/cgroup/memory", "memory.limit_in_bytes"}, {"/sys/fs/cgroup", "memory.max"}};
    for (int k = 0; k < 2; k++) {
        char f[700];
        snprintf(f, sizeof f, "%s/%s", kinds[k].root, k ? "cgroup.controllers" : "memory.limit_in_bytes");
        if (access(f, F_OK) != 0) continue;
        snprintf(dir, nd, "%s/wmat_test_outofcore_%ld", kinds[k].root, (long)getpid());
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) continue;
        snprintf(f, sizeof f, "%s/%s", dir, kinds[k].limit_file);
        FILE *lf = fopen(f, "w");
        if (!lf || fprintf(lf, "%ld\n", limit) < 0 || fclose(lf) != 0) {
            rmdir(dir);
            continue;
        }
        if (k == 1) { /* no swap to escape to */
            snprintf(f, sizeof f, "%s/memory.swap.max", dir);
            FILE *sf = fopen(f, "w");
            if (sf) {
                fprintf(sf, "0\n");
                fclose(sf);
            }
        }
        snprintf(procs, np, "%s/cgroup.procs", dir);
        return 0;
    }
    return -1;
}

/* `wmat eval --low-mem` on the 98 MB model inside a 64 MB memory cgroup
 * succeeds with the perplexity of the same command unlimited (which
 * test_eval_layer_major_matches holds to the window-major path). */
static void test_eval_in_memory_cgroup(void **state)
{
    (void)state;
    if (skip_sanitized()) return;
    const long limit = 64L << 20;
    assert_true(limit < g_model_bytes);
    char dir[600], procs[700];
    if (make_cgroup(limit, dir, sizeof dir, procs, sizeof procs)) {
        print_message("SKIP: cannot create a memory cgroup (needs root and cgroup v1 memory or v2 with the memory "
                      "controller: /sys/fs/cgroup/memory or /sys/fs/cgroup/cgroup.controllers)\n");
        skip();
        return;
    }
    char logf[600], j0[600], j1[600];
    snprintf(logf, sizeof logf, "%s", tu_tmp("cg.log"));
    snprintf(j0, sizeof j0, "%s", tu_tmp("free.json"));
    snprintf(j1, sizeof j1, "%s", tu_tmp("limited.json"));
    char *const free_run[] = {"wmat", "eval", g_model, "--tokens", g_tokens, "--ctx", "64", "--max-windows", "3",
                              "--threads", "1", "--low-mem", "--json-out", j0, NULL};
    char *const limited[] = {"wmat", "eval", g_model, "--tokens", g_tokens, "--ctx", "64", "--max-windows", "3",
                             "--threads", "1", "--low-mem", "--json-out", j1, NULL};
    int rc = run_cli(free_run, logf, NULL, NULL);
    if (rc) print_log(logf);
    assert_int_equal(rc, 0);
    drop_cache(g_model);
    long rss = 0;
    rc = run_cli(limited, logf, &rss, procs);
    char f[700];
    snprintf(f, sizeof f, "%s/memory.max_usage_in_bytes", dir);
    FILE *uf = fopen(f, "r"); /* v1 only */
    long usage = -1;
    if (uf) {
        if (fscanf(uf, "%ld", &usage) != 1) usage = -1;
        fclose(uf);
    }
    print_message("cgroup limit %ld bytes, peak usage %ld bytes (v1; -1: not reported)\n", limit, usage);
    print_message("limited eval: exit %d, peak RSS %.1f MB, model %.1f MB\n", rc, rss / 1e6, g_model_bytes / 1e6);
    rmdir(dir);
    if (rc) print_log(logf);
    assert_int_equal(rc, 0);
    assert_true(json_ppl(j0) == json_ppl(j1));
}

/* `wmat quantize --low-mem` (GPTQ with calibration, native output) inside
 * a memory cgroup whose limit is smaller than the model succeeds and writes
 * the bytes of the same command unlimited. */
static void test_quantize_in_memory_cgroup(void **state)
{
    (void)state;
    if (skip_sanitized()) return;
    const long limit = 64L << 20;
    assert_true(limit < g_model_bytes);
    char dir[600], procs[700];
    if (make_cgroup(limit, dir, sizeof dir, procs, sizeof procs)) {
        print_message("SKIP: cannot create a memory cgroup (needs root and cgroup v1 memory or v2 with the memory "
                      "controller)\n");
        skip();
        return;
    }
    char logf[600], out[600], a[700], b[700];
    snprintf(logf, sizeof logf, "%s", tu_tmp("cgq.log"));
    snprintf(out, sizeof out, "%s", tu_tmp("q_cgroup"));
    long rss = 0;
    int rc = run_quantize(0, qout_name(0, 1), "--low-mem", logf, NULL, NULL); /* unlimited (also in the test above) */
    if (rc) print_log(logf);
    assert_int_equal(rc, 0);
    drop_cache(g_model);
    rc = run_quantize(0, out, "--low-mem", logf, &rss, procs);
    char f[700];
    snprintf(f, sizeof f, "%s/memory.max_usage_in_bytes", dir);
    FILE *uf = fopen(f, "r"); /* v1 only */
    long usage = -1;
    if (uf) {
        if (fscanf(uf, "%ld", &usage) != 1) usage = -1;
        fclose(uf);
    }
    print_message("cgroup limit %ld bytes, peak usage %ld bytes (v1; -1: not reported)\n", limit, usage);
    print_message("limited quantize: exit %d, peak RSS %.1f MB, model %.1f MB\n", rc, rss / 1e6, g_model_bytes / 1e6);
    rmdir(dir);
    if (rc) print_log(logf);
    assert_int_equal(rc, 0);
    snprintf(a, sizeof a, "%s/model.safetensors", qout_name(0, 1));
    snprintf(b, sizeof b, "%s/model.safetensors", out);
    assert_same_file(a, b);
}

/* `wmat convert` from an f16 GGUF converts one tensor at a time: its peak
 * RSS above the program stays under half the f16 file (an f32 copy of the
 * model, what wmat_model_save made before, is twice the file), and the
 * output holds the values of the f32 source converted once. */
static void test_convert_f16_no_f32_copy(void **state)
{
    (void)state;
    if (skip_sanitized()) return;
    char logf[600], f16[600], q8[600], q8ref[600];
    snprintf(logf, sizeof logf, "%s", tu_tmp("cv.log"));
    snprintf(f16, sizeof f16, "%s", tu_tmp("cv_f16.gguf"));
    snprintf(q8, sizeof q8, "%s", tu_tmp("cv_q8_from_f16.gguf"));
    snprintf(q8ref, sizeof q8ref, "%s", tu_tmp("cv_q8_ref.gguf"));
    char *const to_f16[] = {"wmat", "convert", g_model, f16, "--to", "gguf", "--dtype", "f16", "--no-tokenizer", NULL};
    char *const to_q8[] = {"wmat", "convert", f16, q8, "--to", "gguf", "--dtype", "q8_0", "--no-tokenizer",
                           "--threads", "1", NULL};
    char *const info[] = {"wmat", "info", f16, NULL};
    assert_int_equal(run_cli(to_f16, logf, NULL, NULL), 0);
    long base = 0, rss = 0;
    assert_int_equal(run_cli(info, logf, &base, NULL), 0);
    int rc = run_cli(to_q8, logf, &rss, NULL);
    if (rc) print_log(logf);
    assert_int_equal(rc, 0);
    const long f16_bytes = file_size(f16);
    print_message("wmat convert f16 -> q8_0: peak RSS %.1f MB, %.1f MB above the program, of a %.1f MB f16 file\n",
                  rss / 1e6, (rss - base) / 1e6, f16_bytes / 1e6);
    if (!(rss - base < f16_bytes / 2))
        fail_msg("convert from f16: %ld bytes above the program, not below half the f16 file (%ld)", rss - base, f16_bytes);
    /* the same bytes as converting the f16 model materialized in memory */
    wmat_model *m = load_stored(f16);
    TU_OK(wmat_model_materialize(m));
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_GGUF;
    sp.dtype = WMAT_Q8_0;
    TU_OK(wmat_model_save(m, q8ref, &sp));
    wmat_model_free(m);
    assert_same_file(q8, q8ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eval_layer_major_matches),
        cmocka_unit_test(test_release_keeps_results),
        cmocka_unit_test(test_quantize_low_mem_same_bytes),
        cmocka_unit_test(test_calib_streams_spilled),
        cmocka_unit_test(test_gptq_factor_in_place),
        cmocka_unit_test(test_peak_rss_below_half_model),
        cmocka_unit_test(test_eval_in_memory_cgroup),
        cmocka_unit_test(test_quantize_in_memory_cgroup),
        cmocka_unit_test(test_convert_f16_no_f32_copy),
    };
    return tu_run_tests("outofcore", tests, setup, NULL);
}
