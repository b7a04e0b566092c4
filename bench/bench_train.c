/* Training throughput on mix4m's configuration (dim 256, hidden 704, 6
 * layers, 8 heads / 4 kv, vocab 512): tokens/s, achieved FLOP/s as a
 * fraction of the fp32 GEMM peak measured in the same run, and GaLore's
 * overhead averaged over its update gap relative to a plain AdamW step.
 *   bench_train [--threads N] [--batch B] [--ctx T] [--steps S] [--gap G]
 * Validates first: the loss must fall over the timed steps. */
#include "wmat.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int arg(int argc, char **argv, const char *name, int def)
{
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], name)) return atoi(argv[i + 1]);
    return def;
}

static double gemm_peak(int n, int reps)
{
    float *A = malloc(sizeof(float) * n * n), *B = malloc(sizeof(float) * n * n), *C = malloc(sizeof(float) * n * n);
    for (int i = 0; i < n * n; i++) A[i] = (float)(i % 7) * 0.1f, B[i] = (float)(i % 5) * 0.1f;
    wmat_sgemm(0, 0, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        wmat_sgemm(0, 0, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    free(A), free(B), free(C);
    return 2.0 * n * n * n / best;
}

/* mean seconds per step over `steps` steps (after one warm-up step) */
static int time_steps(wmat_model *m, wmat_train_params *p, const int32_t *d, size_t n, int steps, double *sec,
                      double *first, double *last)
{
    wmat_trainer *t;
    if (wmat_trainer_create(&t, m, p) || wmat_trainer_set_data(t, d, n)) return 1;
    wmat_train_step_info si;
    if (wmat_trainer_step(t, &si)) return 1;
    *first = si.loss;
    double t0 = now();
    for (int s = 0; s < steps; s++)
        if (wmat_trainer_step(t, &si)) return 1;
    *sec = (now() - t0) / steps;
    *last = si.loss;
    wmat_trainer_free(t);
    return 0;
}

int main(int argc, char **argv)
{
    int threads = arg(argc, argv, "--threads", 0), B = arg(argc, argv, "--batch", 4), T = arg(argc, argv, "--ctx", 256);
    int steps = arg(argc, argv, "--steps", 10), gap = arg(argc, argv, "--gap", 10);
    wmat_linalg_init(threads);
    wmat_config c;
    memset(&c, 0, sizeof c);
    c.vocab_size = 512;
    c.seq_len = 256;
    if (wmat_train_config("mix4m", &c)) {
        fprintf(stderr, "%s\n", wmat_last_error());
        return 1;
    }
    wmat_model *m;
    if (wmat_model_create(&m, &c) || wmat_model_init_random(m, 1, 0.02f)) {
        fprintf(stderr, "%s\n", wmat_last_error());
        return 1;
    }
    /* synthetic data with structure the model can learn */
    size_t n = 200000;
    int32_t *d = malloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) d[i] = (int32_t)((i * 31 + (i / 7) * 3) % 97 + (i % 11) * 37) % 512;
    wmat_context ctx = wmat_context_default();
    ctx.n_threads = threads;
    wmat_train_params p = wmat_train_default_params();
    p.exec = &ctx;
    p.batch = B;
    p.ctx = T;
    p.steps = 1000;
    p.lr = 3e-3f;
    double peak = gemm_peak(1024, 3);
    double sa, f0, f1;
    if (time_steps(m, &p, d, n, steps, &sa, &f0, &f1)) {
        fprintf(stderr, "bench_train: %s\n", wmat_last_error());
        return 1;
    }
    if (!(f1 < f0)) {
        fprintf(stderr, "bench_train: validation failed: loss %.4f -> %.4f did not fall\n", f0, f1);
        return 1;
    }
    /* model FLOPs per token: 6 x matmul params + causal attention 6 L D T */
    double nmat = 0;
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        const wmat_tensor *t = wmat_model_tensor(m, i);
        if (t->ndim == 2) nmat += (double)wmat_tensor_nelem(t);
    }
    if (c.tied_embeddings) nmat -= 0; /* the tied embedding is used once as the classifier */
    double fpt = 6.0 * nmat + 6.0 * c.n_layers * c.dim * (double)T;
    double tps = (double)B * T / sa, flops = tps * fpt;
    printf("config       mix4m: dim %d, hidden %d, layers %d, heads %d/%d, vocab %d; batch %d x ctx %d, %d threads\n", c.dim,
           c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, B, T, wmat_context_threads(&ctx));
    printf("validation   loss %.4f -> %.4f over %d AdamW steps\n", f0, f1, steps + 1);
    printf("gemm peak    %.1f GFLOP/s (fp32 1024^3, %s)\n", peak / 1e9, wmat_gemm_backend_name(wmat_gemm_get_backend()));
    printf("adamw step   %.1f ms, %.0f tokens/s, %.1f GFLOP/s = %.1f%% of the GEMM peak\n", sa * 1e3, tps, flops / 1e9,
           100 * flops / peak);
    p.method = WMAT_TRAIN_GALORE;
    p.galore_gap = gap;
    double sg;
    if (time_steps(m, &p, d, n, gap, &sg, &f0, &f1)) {
        fprintf(stderr, "bench_train: %s\n", wmat_last_error());
        return 1;
    }
    /* the warm-up step did the first projector update; make the timed window
     * hold exactly one: step 1..gap includes step `gap` (an update) */
    printf("galore step  %.1f ms averaged over a gap of %d (one SVD update per gap): overhead %+.1f%% of an AdamW step\n",
           sg * 1e3, gap, 100 * (sg - sa) / sa);
    printf("{\"tokens_per_s\": %.1f, \"gflops\": %.2f, \"gemm_peak_gflops\": %.2f, \"fraction_of_peak\": %.4f, "
           "\"adamw_step_ms\": %.2f, \"galore_step_ms\": %.2f, \"galore_overhead\": %.4f}\n",
           tps, flops / 1e9, peak / 1e9, flops / peak, sa * 1e3, sg * 1e3, (sg - sa) / sa);
    free(d);
    wmat_model_free(m);
    return 0;
}
