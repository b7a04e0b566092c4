/* Truncated SVD of a large matrix: LAPACK's full SVD against the randomized
 * range finder (svd's solver=exact / solver=randomized), same matrix, same
 * run, through wmat_decompose_model. The matrix is a 1.1B model's FFN
 * shape with a decaying spectrum (a random product plus noise), so the
 * errors are comparable to trained weights'.
 *
 *   bench_rsvd [--rows R] [--cols C] [--rank K]
 * Prints seconds and reported relative error of each solver and the ratio. */
#include "wmat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int one(const wmat_config *c, const float *W, int rank, const char *params, double *secs, double *err)
{
    wmat_model *m;
    if (wmat_model_create(&m, c)) return -1;
    wmat_tensor *t = wmat_model_linear(m, 0, WMAT_LIN_GATE);
    memcpy(t->data, W, (size_t)(t->shape[0] * t->shape[1]) * sizeof(float));
    wmat_decompose_params p = wmat_decompose_default_params();
    p.rank = rank;
    p.method_params = params;
    p.targets = 1u << WMAT_LIN_GATE;
    wmat_decompose_report rep;
    const double t0 = now();
    int rc = wmat_decompose_model(m, &p, &rep);
    *secs = now() - t0;
    if (!rc) {
        *err = rep.tensors[0].rel_error;
        wmat_decompose_report_free(&rep);
    }
    wmat_model_free(m);
    return rc;
}

int main(int argc, char **argv)
{
    int R = 5632, C = 2048, K = 512;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rows") && i + 1 < argc) R = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cols") && i + 1 < argc) C = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rank") && i + 1 < argc) K = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_rsvd [--rows R] [--cols C] [--rank K]\n");
            return 2;
        }
    }
    if (R < 16 || C < 16 || K < 1 || K >= (R < C ? R : C)) {
        fprintf(stderr, "bench_rsvd: need rows, cols >= 16 and 1 <= rank < min(rows, cols)\n");
        return 2;
    }
    wmat_config c = {0};
    c.dim = C, c.hidden_dim = R, c.n_layers = 1, c.n_heads = 4, c.n_kv_heads = 4, c.vocab_size = 32, c.seq_len = 16;
    c.rope_theta = 10000, c.norm_eps = 1e-5f, c.bos_id = 1, c.eos_id = 2;
    /* W = U diag(0.99^i) V^T-like: a product of Gaussians with a decaying
     * inner scale, plus a small noise floor */
    const int inner = 256;
    float *W = malloc((size_t)R * C * sizeof(float)), *A = malloc((size_t)R * inner * sizeof(float)),
          *B = malloc((size_t)inner * C * sizeof(float));
    if (!W || !A || !B) return 1;
    wmat_rng rng;
    wmat_rng_seed(&rng, 1);
    for (int i = 0; i < R * inner; i++) A[i] = wmat_rng_normal(&rng);
    for (int t = 0; t < inner; t++) {
        const float sc = 1.0f / (1.0f + 0.05f * (float)t);
        for (int j = 0; j < C; j++) B[t * C + j] = sc * wmat_rng_normal(&rng);
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) W[(size_t)i * C + j] = 0.02f * wmat_rng_normal(&rng);
    for (int i = 0; i < R; i++)
        for (int t = 0; t < inner; t++) {
            const float a = A[i * inner + t] / (float)inner;
            for (int j = 0; j < C; j++) W[(size_t)i * C + j] += a * B[t * C + j];
        }
    free(A), free(B);
    double te, ee, tr, er;
    if (one(&c, W, K, "solver=randomized", &tr, &er) || one(&c, W, K, "solver=exact", &te, &ee)) {
        fprintf(stderr, "bench_rsvd: %s\n", wmat_last_error());
        return 1;
    }
    printf("svd of %d x %d, rank %d (1 OpenBLAS thread)\n", R, C, K);
    printf("  exact (dgesdd)          %8.2f s  rel. error %.5f\n", te, ee);
    printf("  randomized (q=2, p=10)  %8.2f s  rel. error %.5f\n", tr, er);
    printf("  randomized / exact: %.2fx faster, error %+.2f%%\n", te / tr, 100.0 * (er / ee - 1));
    free(W);
    return 0;
}
