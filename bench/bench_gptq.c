/* GPTQ's per-matrix cost on the shapes of a 1.1B Llama (TinyLlama: dim 2048,
 * hidden 5632, 4 KV heads of 64), new path against the first sessions' path
 * in the same run.
 *
 *   bench_gptq [--shapes LIST] [--bits B] [--group G] [--act-order] [--threads N]
 *              [--tokens T] [--legacy 0|1]
 *
 * LIST: comma-separated from q, kv, o, gate, down, qkv, gateup (default
 * "q,kv,gate,down,qkv,gateup"); qkv = q, k and v on one H (the new path
 * factors it once: st->fact), gateup likewise. H = 2/T X^T X from T
 * synthetic tokens (a rank-64 shared part plus noise, every 97th feature an
 * outlier at 8x), so it is SPD and as ill-conditioned as real ones; W is
 * uniform +-0.05. Per case: the factorization alone in double and in float
 * (GPTQ's: the unit factor of wmat__gptq_factor_unit, one Cholesky; time
 * and max |U_f32 - U_f64| / max |U|), then whole GPTQ calls: legacy
 * (--legacy 0 skips it; it takes ~15 s on down_proj), new in double, new
 * in float; each with the calibration output error tr(dW H dW^T) /
 * tr(W H W^T) and the share of codes that differ from the legacy result.
 *
 *   bench_gptq --calib [--threads N] [--tokens T] [--reps R]
 *
 * The calibration forward's products instead (`wmat quantize --calib-dtype`,
 * src/quant/calib.c), fp32 against bf16 in the same run: per window of T
 * tokens (default 256) one block's linear products at the 1.1B shapes (q,
 * k, v, o, gate, up, down) as the runtime's fp32 kind runs them (an sgemm
 * on the default backend) and as the bf16 forward does (X converted, then
 * oneDNN's bf16 matmul on weights converted once per block, whose
 * conversion is timed apart); then the statistics' X^T X of a batch of
 * 2048 tokens (n = 2048 and 5632) in fp32 (what calib.c does) and in bf16
 * (the alternative it does not take), with the bf16 product's relative
 * Frobenius error. R repetitions (default 3), the best of each. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/internal.h"
#include "linalg/linalg.h"
#include "quant/methods.h"

static unsigned long long rs = 88172645463325252ull;
static float rnd(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (float)((double)(rs >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static double *make_h(int n, int T)
{
    const int r = 64;
    float *G = malloc((size_t)T * r * 4), *F = malloc((size_t)r * n * 4), *X = malloc((size_t)T * n * 4);
    float *Hf = malloc((size_t)n * n * 4);
    double *H = malloc((size_t)n * n * 8);
    if (!G || !F || !X || !Hf || !H) abort();
    for (size_t i = 0; i < (size_t)T * r; i++) G[i] = rnd();
    for (size_t i = 0; i < (size_t)r * n; i++) F[i] = rnd() * 0.3f;
    wmat_sgemm(0, 0, T, n, r, 1.0f, G, r, F, n, 0.0f, X, n);
    for (size_t t = 0; t < (size_t)T; t++)
        for (int j = 0; j < n; j++) X[t * n + j] += rnd() * (j % 97 == 0 ? 8.0f : 1.0f);
    wmat_sgemm(1, 0, n, n, T, 2.0f / (float)T, X, n, X, n, 0.0f, Hf, n);
    for (size_t i = 0; i < (size_t)n * n; i++) H[i] = Hf[i];
    free(G), free(F), free(X), free(Hf);
    return H;
}

typedef struct {
    double sec, cpu, err;
    long flips;
} run_out;

/* CPU seconds of the whole process: on a shared machine the work a path
 * does, where wall time also counts the other tenants */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* GPTQ of the k matrices W[i] (rows[i] x n) on one H. */
static run_out run(float **W, const int *rows, int k, int n, double *H, wmat_qparams p, uint8_t **ref_codes,
                   int keep_codes)
{
    wmat_qstats st;
    memset(&st, 0, sizeof st);
    st.n = n;
    st.H = H;
    wmat_gptq_fact fact;
    memset(&fact, 0, sizeof fact);
    st.fact = &fact;
    run_out o = {0, 0, 0, 0};
    double num = 0, den = 0;
    for (int i = 0; i < k; i++) {
        wmat_qresult q;
        const double t0 = wmat__now(), c0 = cpu_now();
        if (wmat__quant_gptq(&q, W[i], rows[i], n, &st, &p, NULL)) {
            fprintf(stderr, "gptq: %s\n", wmat_last_error());
            exit(1);
        }
        o.sec += wmat__now() - t0;
        o.cpu += cpu_now() - c0;
        const size_t mn = (size_t)rows[i] * n;
        float *Wq = malloc(mn * 4), *z = calloc(mn, 4);
        wmat_qresult_dequant(&q, Wq);
        num += wmat__qoutput_error(W[i], Wq, rows[i], n, H);
        den += wmat__qoutput_error(W[i], z, rows[i], n, H);
        if (keep_codes) {
            ref_codes[i] = malloc(mn);
            memcpy(ref_codes[i], q.codes, mn);
        } else if (ref_codes[i]) {
            for (size_t e = 0; e < mn; e++) o.flips += q.codes[e] != ref_codes[i][e];
        }
        free(Wq), free(z);
        wmat_qresult_free(&q);
    }
    wmat__gptq_fact_clear(&fact);
    o.err = num / den;
    return o;
}

/* ---- --calib: the calibration forward's GEMMs, fp32 against bf16 */

typedef struct {
    double sec, cpu;
} tpair;

static void tmin(tpair *best, double sec, double cpu)
{
    if (best->sec == 0 || sec < best->sec) best->sec = sec;
    if (best->cpu == 0 || cpu < best->cpu) best->cpu = cpu;
}

static int calib_bench(int nt, int T, int reps)
{
    static const struct {
        const char *name;
        int out, in;
    } lin[] = {{"q", 2048, 2048}, {"k", 256, 2048}, {"v", 256, 2048}, {"o", 2048, 2048},
               {"gate", 5632, 2048}, {"up", 5632, 2048}, {"down", 2048, 5632}};
    const int nl = (int)(sizeof lin / sizeof lin[0]);
    char why[256];
    if (!wmat__gemm_bf16_fast(WMAT_GEMM_AUTO, why, sizeof why)) {
        printf("no native bf16 GEMM here: %s\n", why);
        return 0;
    }
    printf("calibration forward products of one 1.1B block (dim 2048, hidden 5632, kv 256), window of %d tokens, %d "
           "threads, best of %d\n",
           T, nt, reps);
    printf("wall seconds (CPU seconds of the process); GFLOP/s from wall\n");
    printf("%-6s %-11s | %17s %8s | %17s %8s | %6s | %9s\n", "linear", "shape", "fp32", "GFLOP/s", "bf16 (+X conv)",
           "GFLOP/s", "ratio", "W conv");
    tpair sum32 = {0, 0}, sum16 = {0, 0};
    double wconv = 0, flops = 0;
    for (int i = 0; i < nl; i++) {
        const int o = lin[i].out, n = lin[i].in;
        float *W = malloc((size_t)o * n * 4), *X = malloc((size_t)T * n * 4), *Y = malloc((size_t)T * o * 4);
        uint16_t *W16 = malloc((size_t)o * n * 2), *X16 = malloc((size_t)T * n * 2);
        if (!W || !X || !Y || !W16 || !X16) abort();
        for (size_t e = 0; e < (size_t)o * n; e++) W[e] = rnd() * 0.05f;
        for (size_t e = 0; e < (size_t)T * n; e++) X[e] = rnd();
        double t0 = wmat__now();
        wmat_from_f32(W16, WMAT_BF16, W, (uint64_t)o * n);
        const double wc = wmat__now() - t0;
        tpair b32 = {0, 0}, b16 = {0, 0};
        for (int r = 0; r < reps; r++) {
            t0 = wmat__now();
            double c0 = cpu_now();
            wmat__sgemm_cfg(WMAT_GEMM_AUTO, nt, 0, 1, T, o, n, 1.0f, X, n, W, n, 0.0f, Y, o);
            tmin(&b32, wmat__now() - t0, cpu_now() - c0);
            t0 = wmat__now();
            c0 = cpu_now();
            wmat_from_f32(X16, WMAT_BF16, X, (uint64_t)T * n);
            if (wmat__gemm_bf16_on(WMAT_GEMM_AUTO, nt, 0, 1, T, o, n, 1.0f, X16, n, W16, n, 0.0f, Y, o)) {
                fprintf(stderr, "bf16 gemm: %s\n", wmat_last_error());
                return 1;
            }
            tmin(&b16, wmat__now() - t0, cpu_now() - c0);
        }
        const double gf = 2.0 * T * (double)o * n * 1e-9;
        char shape[32];
        snprintf(shape, sizeof shape, "%dx%d", o, n);
        printf("%-6s %-11s | %7.4f (%7.4f) %8.1f | %7.4f (%7.4f) %8.1f | %5.2fx | %8.4fs\n", lin[i].name, shape, b32.sec,
               b32.cpu, gf / b32.sec, b16.sec, b16.cpu, gf / b16.sec, b32.sec / b16.sec, wc);
        sum32.sec += b32.sec, sum32.cpu += b32.cpu, sum16.sec += b16.sec, sum16.cpu += b16.cpu;
        wconv += wc;
        flops += gf;
        free(W), free(X), free(Y), free(W16), free(X16);
    }
    printf("%-6s %-11s | %7.4f (%7.4f) %8.1f | %7.4f (%7.4f) %8.1f | %5.2fx | %8.4fs (once per block)\n", "block",
           "all 7", sum32.sec, sum32.cpu, flops / sum32.sec, sum16.sec, sum16.cpu, flops / sum16.sec,
           sum32.sec / sum16.sec, wconv);
    /* statistics: X^T X of a batch */
    const int K = 2048;
    printf("\nstatistics X^T X of %d tokens (full product; calib.c computes the upper panels in fp32)\n", K);
    printf("%-6s | %17s | %17s | %6s | %s\n", "n", "fp32", "bf16 (+X conv)", "ratio", "|G_bf16 - G_f32| / |G_f32|");
    for (int n = 2048; n <= 5632; n += 3584) {
        float *X = malloc((size_t)K * n * 4), *G = malloc((size_t)n * n * 4), *G16 = malloc((size_t)n * n * 4);
        uint16_t *X16 = malloc((size_t)K * n * 2);
        if (!X || !G || !G16 || !X16) abort();
        /* activation-like: a shared part plus noise, outlier channels */
        for (size_t t = 0; t < (size_t)K; t++) {
            const float c = rnd();
            for (int j = 0; j < n; j++) X[t * n + j] = (rnd() + 0.5f * c) * (j % 97 == 0 ? 8.0f : 1.0f);
        }
        tpair b32 = {0, 0}, b16 = {0, 0};
        for (int r = 0; r < reps; r++) {
            double t0 = wmat__now(), c0 = cpu_now();
            wmat__sgemm_cfg(WMAT_GEMM_AUTO, nt, 1, 0, n, n, K, 1.0f, X, n, X, n, 0.0f, G, n);
            tmin(&b32, wmat__now() - t0, cpu_now() - c0);
            t0 = wmat__now();
            c0 = cpu_now();
            wmat_from_f32(X16, WMAT_BF16, X, (uint64_t)K * n);
            if (wmat__gemm_bf16_on(WMAT_GEMM_AUTO, nt, 1, 0, n, n, K, 1.0f, X16, n, X16, n, 0.0f, G16, n)) {
                fprintf(stderr, "bf16 gemm: %s\n", wmat_last_error());
                return 1;
            }
            tmin(&b16, wmat__now() - t0, cpu_now() - c0);
        }
        double d = 0, r2 = 0;
        for (size_t e = 0; e < (size_t)n * n; e++) {
            d += ((double)G16[e] - G[e]) * ((double)G16[e] - G[e]);
            r2 += (double)G[e] * G[e];
        }
        printf("%-6d | %7.4f (%7.4f) | %7.4f (%7.4f) | %5.2fx | %.2e\n", n, b32.sec, b32.cpu, b16.sec, b16.cpu,
               b32.sec / b16.sec, sqrt(d / r2));
        free(X), free(G), free(G16), free(X16);
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *shapes = "q,kv,gate,down,qkv,gateup";
    int bits = 4, group = 128, act = 0, nt = omp_get_max_threads(), T = 0, legacy = 1, calib = 0, reps = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--shapes") && i + 1 < argc) shapes = argv[++i];
        else if (!strcmp(argv[i], "--bits") && i + 1 < argc) bits = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--group") && i + 1 < argc) group = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--act-order")) act = 1;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) nt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--legacy") && i + 1 < argc) legacy = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--calib")) calib = 1;
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_gptq [--shapes q,kv,o,gate,down,qkv,gateup] [--bits B] [--group G] "
                            "[--act-order] [--threads N] [--tokens T] [--legacy 0|1]\n"
                            "       bench_gptq --calib [--threads N] [--tokens T] [--reps R]\n");
            return 2;
        }
    }
    omp_set_num_threads(nt);
    if (calib) return calib_bench(nt, T > 0 ? T : 256, reps > 0 ? reps : 1);
    if (T <= 0) T = 4096;
    printf("GPTQ %d bits, %s%s, %d threads, H from %d synthetic tokens\n", bits, group ? "groups" : "per-OC",
           act ? ", act-order" : "", nt, T);
    if (group) printf("group %d\n", group);
    printf("wall seconds (CPU seconds of the process); ratio = legacy / the faster new path, wall (CPU)\n");
    printf("%-7s %-17s %9s %9s %9s | %17s %17s %17s %13s | %10s %10s %10s | %8s %8s\n", "case", "shape", "fact f64",
           "fact f32", "U diff", "legacy", "new f64", "new f32", "ratio", "err legacy", "err f64", "err f32",
           "flips64", "flips32");
    char buf[256];
    snprintf(buf, sizeof buf, "%s", shapes);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        int n, k, rows[3];
        if (!strcmp(tok, "q") || !strcmp(tok, "o")) n = 2048, k = 1, rows[0] = 2048;
        else if (!strcmp(tok, "kv")) n = 2048, k = 1, rows[0] = 256;
        else if (!strcmp(tok, "gate")) n = 2048, k = 1, rows[0] = 5632;
        else if (!strcmp(tok, "down")) n = 5632, k = 1, rows[0] = 2048;
        else if (!strcmp(tok, "qkv")) n = 2048, k = 3, rows[0] = 2048, rows[1] = 256, rows[2] = 256;
        else if (!strcmp(tok, "gateup")) n = 2048, k = 2, rows[0] = 5632, rows[1] = 5632;
        else {
            fprintf(stderr, "unknown shape %s\n", tok);
            return 2;
        }
        double *H = make_h(n, T);
        float *W[3];
        int mtot = 0;
        for (int i = 0; i < k; i++) {
            W[i] = malloc((size_t)rows[i] * n * 4);
            for (size_t e = 0; e < (size_t)rows[i] * n; e++) W[i][e] = rnd() * 0.05f;
            mtot += rows[i];
        }
        /* the factorization alone, both precisions */
        /* as the library allocates its factors (wmat__malloc: huge pages) */
        float *U64 = wmat__malloc((size_t)n * n * 4), *U32 = wmat__malloc((size_t)n * n * 4);
        int32_t *perm = malloc((size_t)n * 4);
        double l64 = 0.01, l32 = 0.01;
        double t0 = wmat__now();
        if (wmat__gptq_factor_unit(H, n, act, 1, nt, &l64, perm, U64)) return 1;
        const double f64 = wmat__now() - t0;
        t0 = wmat__now();
        if (wmat__gptq_factor_unit(H, n, act, 2, nt, &l32, perm, U32)) return 1;
        const double f32 = wmat__now() - t0;
        double dmax = 0, umax = 0;
        for (size_t e = 0; e < (size_t)n * n; e++) {
            dmax = fmax(dmax, fabs((double)U64[e] - U32[e]));
            umax = fmax(umax, fabs((double)U64[e]));
        }
        free(U64), free(U32), free(perm);

        wmat_qparams p = wmat__qparams_default();
        p.bits = bits;
        p.group = group;
        p.act_order = act;
        p.n_threads = nt;
        uint8_t *codes[3] = {0};
        run_out ol = {0, 0, 0, 0};
        if (legacy) {
            p.legacy = 1;
            ol = run(W, rows, k, n, H, p, codes, 1);
            p.legacy = 0;
        }
        p.fact_prec = 1;
        run_out o64 = run(W, rows, k, n, H, p, codes, 0);
        p.fact_prec = 2;
        run_out o32 = run(W, rows, k, n, H, p, codes, 0);
        const double total = (double)mtot * n;
        char shape[32];
        snprintf(shape, sizeof shape, "%dx%d%s", rows[0], n, k > 1 ? (k == 3 ? "+2x256" : " x2") : "");
        const double best = o64.sec < o32.sec ? o64.sec : o32.sec;
        const double bestc = o64.cpu < o32.cpu ? o64.cpu : o32.cpu;
        printf("%-7s %-17s %8.3fs %8.3fs %9.2e | %7.3f (%7.3f) %7.3f (%7.3f) %7.3f (%7.3f) %5.1fx (%4.1fx) | %10.6f "
               "%10.6f %10.6f | %7.4f%% %7.4f%%\n",
               tok, shape, f64, f32, dmax / umax, ol.sec, ol.cpu, o64.sec, o64.cpu, o32.sec, o32.cpu,
               legacy ? ol.sec / best : 0.0, legacy ? ol.cpu / bestc : 0.0, ol.err,
               o64.err, o32.err, legacy ? 100.0 * (double)o64.flips / total : 0.0,
               legacy ? 100.0 * (double)o32.flips / total : 0.0);
        fflush(stdout);
        for (int i = 0; i < k; i++) free(W[i]), free(codes[i]);
        free(H);
    }
    return 0;
}
