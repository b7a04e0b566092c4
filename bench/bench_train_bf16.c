/* bf16 mixed-precision training against fp32 in one run (issue 15):
 *   1. throughput on mix4m's configuration (dim 256, hidden 704, 6 layers,
 *      8/4 heads, vocab 512, random init) at batch B x ctx T: tokens/s of
 *      fp32 and bf16 and their ratio, by wall clock and by this process's
 *      CPU time (on a shared machine the CPU time is the work done; at one
 *      thread it is what the wall clock shows on a quiet one);
 *   2. where the step's time goes: every linear-layer GEMM of a step (the
 *      forward, input-gradient and weight-gradient products of the seven
 *      linears per layer and of the classifier) timed alone in fp32 and in
 *      bf16 (with the conversion of its activation operand), summed: the
 *      GEMM part of a step in each precision and the rest (norms, attention,
 *      SwiGLU, loss, optimizer), which bf16 does not change; Amdahl's bound
 *      on the step ratio follows;
 *   3. with --data FILE (tokens as u16 or i32, see below): the same model
 *      trained from the same random init for --loss-steps steps in fp32 and
 *      in bf16 on the same windows: the final step's loss, the mean of the
 *      last 20 steps' losses and the held-out loss on --eval FILE (60
 *      windows) of both, and their relative differences.
 *   bench_train_bf16 [--threads N] [--batch B] [--ctx T] [--steps S]
 *                    [--data train.u16 --eval val.u16 --loss-steps 300 --lr LR]
 * Exits 77 (skipped) when bf16 training is not available here. */
#include "wmat.h"

#include "linalg/linalg.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static const char *sarg(int argc, char **argv, const char *name, const char *def)
{
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], name)) return argv[i + 1];
    return def;
}

static int iarg(int argc, char **argv, const char *name, int def)
{
    const char *s = sarg(argc, argv, name, NULL);
    return s ? atoi(s) : def;
}

/* u16 token stream (the .u16 files of docs/TRAINING.md "Commands") */
static int32_t *read_u16(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint16_t *u = malloc((size_t)sz);
    int32_t *d = malloc((size_t)sz / 2 * sizeof(int32_t));
    if (!u || !d || fread(u, 1, (size_t)sz, f) != (size_t)sz) {
        fclose(f);
        free(u), free(d);
        return NULL;
    }
    fclose(f);
    *n = (size_t)sz / 2;
    for (size_t i = 0; i < *n; i++) d[i] = u[i];
    free(u);
    return d;
}

static wmat_model *mix4m(int seq_len)
{
    wmat_config c;
    memset(&c, 0, sizeof c);
    c.vocab_size = 512;
    c.seq_len = seq_len;
    wmat_model *m = NULL;
    if (wmat_train_config("mix4m", &c) || wmat_model_create(&m, &c) || wmat_model_init_random(m, 1, 0.02f)) return NULL;
    return m;
}

/* seconds per step (wall, CPU) over `steps` steps after one warm-up step */
static int time_steps(wmat_model *m, wmat_train_params *p, const int32_t *d, size_t n, int steps, double *wall,
                      double *cpu, size_t *bf16_bytes)
{
    wmat_trainer *t;
    int rc = wmat_trainer_create(&t, m, p);
    if (rc) return rc;
    if (wmat_trainer_set_data(t, d, n)) {
        wmat_trainer_free(t);
        return 1;
    }
    wmat_train_step_info si;
    rc = wmat_trainer_step(t, &si);
    double w0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_PROCESS_CPUTIME_ID);
    for (int s = 0; s < steps && !rc; s++) rc = wmat_trainer_step(t, &si);
    *wall = (now(CLOCK_MONOTONIC) - w0) / steps;
    *cpu = (now(CLOCK_PROCESS_CPUTIME_ID) - c0) / steps;
    wmat_train_memory mem;
    wmat_trainer_memory(t, &mem);
    *bf16_bytes = mem.bf16;
    wmat_trainer_free(t);
    return rc;
}

typedef struct {
    double last, mean20, val, seconds;
} run_result;

static int loss_run(const wmat_train_params *p0, int T, const int32_t *d, size_t n, const int32_t *v, size_t nv,
                    run_result *r)
{
    wmat_model *m = mix4m(T);
    if (!m) return 1;
    wmat_trainer *t = NULL;
    int rc = wmat_trainer_create(&t, m, p0);
    if (!rc) rc = wmat_trainer_set_data(t, d, n);
    double sum = 0, w0 = now(CLOCK_MONOTONIC);
    wmat_train_step_info si;
    for (int s = 0; s < p0->steps && !rc; s++) {
        rc = wmat_trainer_step(t, &si);
        if (!rc && s >= p0->steps - 20) sum += si.loss;
        if (!rc && (s + 1) % 50 == 0)
            fprintf(stderr, "  %s step %d loss %.4f\n", p0->precision == WMAT_BF16 ? "bf16" : "fp32", s + 1, si.loss);
    }
    r->seconds = now(CLOCK_MONOTONIC) - w0;
    if (!rc) {
        r->last = si.loss;
        r->mean20 = sum / (p0->steps < 20 ? p0->steps : 20);
        wmat_eval_result er;
        rc = wmat_trainer_eval(t, v, nv, T, 60, &er);
        r->val = rc ? NAN : er.mean_nll;
    }
    wmat_trainer_free(t);
    wmat_model_free(m);
    return rc;
}

/* best of 3 CPU seconds of one GEMM shape, fp32 (k == 0) or bf16 with the
 * conversion of A (k == 1) */
static double gemm_time(int k, int nt, int ta, int tb, int M, int N, int K)
{
    const int lda = ta ? M : K, ldb = tb ? K : N;
    const size_t na = (size_t)M * K, nb = (size_t)K * N;
    float *A = malloc(na * sizeof(float)), *Bm = malloc(nb * sizeof(float)), *C = calloc((size_t)M * N, sizeof(float));
    uint16_t *Ah = malloc(na * 2), *Bh = malloc(nb * 2);
    for (size_t i = 0; i < na; i++) A[i] = (float)((i * 7) % 13) * 0.01f;
    for (size_t i = 0; i < nb; i++) Bm[i] = (float)((i * 5) % 11) * 0.01f;
    wmat_from_f32(Bh, WMAT_BF16, Bm, nb);
    double best = 1e30;
    for (int r = 0; r < 4; r++) {
        double t0 = now(CLOCK_PROCESS_CPUTIME_ID); /* CPU time, as the steps' */
        if (k) {
            wmat_from_f32(Ah, WMAT_BF16, A, na);
            wmat__gemm_bf16_on(WMAT_GEMM_AUTO, nt, ta, tb, M, N, K, 1.0f, Ah, lda, Bh, ldb, 1.0f, C, N);
        } else {
            wmat__sgemm_on(WMAT_GEMM_AUTO, nt, ta, tb, M, N, K, 1.0f, A, lda, Bm, ldb, 1.0f, C, N);
        }
        double dt = now(CLOCK_PROCESS_CPUTIME_ID) - t0;
        if (r && dt < best) best = dt; /* the first call builds oneDNN's kernel */
    }
    free(A), free(Bm), free(C), free(Ah), free(Bh);
    return best;
}

/* GEMM seconds of one training step (fp32 k == 0, bf16 k == 1) */
static double step_gemms(const wmat_config *c, int BT, int nt, int k)
{
    const int D = c->dim, H = c->hidden_dim, KV = c->n_kv_heads * c->head_dim, V = c->vocab_size;
    const int out[8] = {D, KV, KV, D, H, H, D, V}, in[8] = {D, D, D, D, D, D, H, D};
    double s = 0;
    for (int j = 0; j < 8; j++) {
        const double one = gemm_time(k, nt, 0, 1, BT, out[j], in[j]) /* Y = X W^T */
                           + gemm_time(k, nt, 0, 0, BT, in[j], out[j]) /* dX = dY W */
                           + gemm_time(k, nt, 1, 0, out[j], in[j], BT); /* dW += dY^T X */
        s += j < 7 ? one * c->n_layers : one;
    }
    return s;
}

/* GEMM seconds of one step's attention (per batch row and head: scores
 * twice, P V, dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q), which the
 * trainer keeps in fp32: what bf16 would save there */
static double step_attention(const wmat_config *c, int B, int T, int nt, int k)
{
    const int hd = c->head_dim;
    const double one = 2 * gemm_time(k, nt, 0, 1, T, T, hd) + gemm_time(k, nt, 0, 0, T, hd, T) +
                       gemm_time(k, nt, 1, 0, T, hd, T) + gemm_time(k, nt, 0, 1, T, T, hd) +
                       gemm_time(k, nt, 0, 0, T, hd, T) + gemm_time(k, nt, 1, 0, T, hd, T);
    return one * B * c->n_heads * c->n_layers;
}

static double rel(double a, double b) { return fabs(a - b) / fabs(b); }

int main(int argc, char **argv)
{
    const int threads = iarg(argc, argv, "--threads", 1), B = iarg(argc, argv, "--batch", 8),
              T = iarg(argc, argv, "--ctx", 256), steps = iarg(argc, argv, "--steps", 5),
              lsteps = iarg(argc, argv, "--loss-steps", 300);
    const char *data = sarg(argc, argv, "--data", NULL), *eval = sarg(argc, argv, "--eval", NULL);
    const float lr = (float)atof(sarg(argc, argv, "--lr", "1e-3"));
    wmat_linalg_init(threads);
    wmat_model *m = mix4m(T);
    if (!m) {
        fprintf(stderr, "bench_train_bf16: %s\n", wmat_last_error());
        return 1;
    }
    const wmat_config *c = wmat_model_config(m);
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
    printf("config       mix4m: dim %d, hidden %d, layers %d, heads %d/%d, vocab %d; batch %d x ctx %d, %d threads\n", c->dim,
           c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size, B, T, wmat_context_threads(&ctx));
    double w[2], cp[2];
    size_t b16[2];
    for (int k = 0; k < 2; k++) {
        p.precision = k ? WMAT_BF16 : WMAT_F32;
        const int rc = time_steps(m, &p, d, n, steps, &w[k], &cp[k], &b16[k]);
        if (rc) {
            if (k && rc == WMAT_ERR_UNSUPPORTED) {
                printf("bf16         not available here: %s\n", wmat_last_error());
                return 77;
            }
            fprintf(stderr, "bench_train_bf16: %s\n", wmat_last_error());
            return 1;
        }
        const double tok = (double)B * T;
        printf("%-12s %.1f ms/step wall, %.0f tokens/s; %.1f ms/step CPU, %.0f tokens/s per CPU second%s\n",
               k ? "bf16" : "fp32", w[k] * 1e3, tok / w[k], cp[k] * 1e3, tok / cp[k], "");
    }
    printf("ratio        bf16 / fp32 tokens/s: %.2fx wall, %.2fx CPU time (bf16 copies %.1f MiB)\n", w[0] / w[1], cp[0] / cp[1],
           (double)b16[1] / (1 << 20));
    printf("{\"fp32_tokens_per_s\": %.1f, \"bf16_tokens_per_s\": %.1f, \"ratio_wall\": %.3f, \"fp32_tokens_per_cpu_s\": %.1f, "
           "\"bf16_tokens_per_cpu_s\": %.1f, \"ratio_cpu\": %.3f}\n",
           B * T / w[0], B * T / w[1], w[0] / w[1], B * T / cp[0], B * T / cp[1], cp[0] / cp[1]);
    const double g32 = step_gemms(c, B * T, threads, 0), g16 = step_gemms(c, B * T, threads, 1);
    const double rest = cp[0] - g32;
    printf("gemms        linear GEMMs of a step timed alone (CPU time): fp32 %.1f ms, bf16 %.1f ms with conversions (%.2fx); "
           "fp32 step %.1f ms CPU = %.0f%% GEMMs + %.1f ms other work\n",
           g32 * 1e3, g16 * 1e3, g32 / g16, cp[0] * 1e3, 100 * g32 / cp[0], rest * 1e3);
    const double a32 = step_attention(c, B, T, threads, 0), a16 = step_attention(c, B, T, threads, 1);
    printf("attention    its GEMMs (kept fp32) timed alone (CPU time): fp32 %.1f ms, bf16 %.1f ms with one conversion each: "
           "bf16 would save %.1f ms of the step (%.1f%%), before converting the other operands\n",
           a32 * 1e3, a16 * 1e3, (a32 - a16) * 1e3, 100 * (a32 - a16) / cp[1]);
    /* (rest + g32) / (rest + g16) >= 2 needs rest <= g32 - 2 g16 */
    printf("bound        with the same other work the step ratio is at most %.2fx (measured %.2fx CPU); ", cp[0] / (rest + g16),
           cp[0] / cp[1]);
    if (g32 > 2 * g16)
        printf("2x would need the other work under %.1f ms\n", (g32 - 2 * g16) * 1e3);
    else
        printf("2x is out of reach here: the GEMMs alone are only %.2fx faster in bf16\n", g32 / g16);
    wmat_model_free(m);
    free(d);
    if (!data) return 0;
    size_t nd = 0, nv = 0;
    int32_t *td = read_u16(data, &nd), *vd = eval ? read_u16(eval, &nv) : NULL;
    if (!td || (eval && !vd)) {
        fprintf(stderr, "bench_train_bf16: cannot read %s\n", td ? eval : data);
        return 1;
    }
    if (!vd) vd = td, nv = nd;
    p.steps = lsteps;
    p.lr = lr;
    p.warmup = lsteps / 20;
    run_result r[2];
    for (int k = 0; k < 2; k++) {
        p.precision = k ? WMAT_BF16 : WMAT_F32;
        if (loss_run(&p, T, td, nd, vd, nv, &r[k])) {
            fprintf(stderr, "bench_train_bf16: %s\n", wmat_last_error());
            return 1;
        }
        printf("%-12s %d steps from the same init in %.0f s: final loss %.4f, last-20 mean %.4f, held-out %.4f\n",
               k ? "bf16" : "fp32", lsteps, r[k].seconds, r[k].last, r[k].mean20, r[k].val);
    }
    printf("loss         bf16 vs fp32: final %+.2f%%, last-20 mean %+.2f%%, held-out %+.2f%%\n",
           100 * (r[1].last - r[0].last) / r[0].last, 100 * (r[1].mean20 - r[0].mean20) / r[0].mean20,
           100 * (r[1].val - r[0].val) / r[0].val);
    printf("{\"steps\": %d, \"fp32_final\": %.5f, \"bf16_final\": %.5f, \"rel_final\": %.5f, \"fp32_mean20\": %.5f, "
           "\"bf16_mean20\": %.5f, \"rel_mean20\": %.5f, \"fp32_val\": %.5f, \"bf16_val\": %.5f, \"rel_val\": %.5f}\n",
           lsteps, r[0].last, r[1].last, rel(r[1].last, r[0].last), r[0].mean20, r[1].mean20, rel(r[1].mean20, r[0].mean20),
           r[0].val, r[1].val, rel(r[1].val, r[0].val));
    if (vd != td) free(vd);
    free(td);
    return 0;
}
