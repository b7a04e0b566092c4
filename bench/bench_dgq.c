/* DGQ's A8W4 batched forward (int8 activations, W8 tiles decoded from the
 * 4-bit codes, linalg's int8 GEMM) against the fp32 kind's forward.
 *
 *   bench_dgq [--rows R] [--cols C] [--T T] [--threads N]
 *
 * Default 4096 x 4096, T = 64. The dgq weight is the kind's from_f32 (g64,
 * per-token activation scales; the static scale costs the same). Validates
 * first (both against the double product of the dequantized matrix), then
 * times each kind's forward at 1 and N threads, best of repeated calls in
 * interleaved rounds (load from other work on a shared machine falls on
 * both alike), on each int8 GEMM backend available (oneDNN, the reference)
 * and the fp32 backend AUTO picks. Prints ms per call, GOP/s and the ratio
 * fp32 / dgq; and the same for the kind's forward without int8 activations
 * (tiles dequantized to fp32 for an sgemm). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "linalg/linalg.h"
#include "wop/wop.h"

static double rel_err(const float *Y, const float *D, const float *X, int64_t R, int64_t C, int T)
{
    double num = 0, den = 0;
    for (int t = 0; t < T; t++)
        for (int64_t r = 0; r < R; r++) {
            double s = 0;
            for (int64_t c = 0; c < C; c++) s += (double)D[r * C + c] * X[(int64_t)t * C + c];
            const double y = Y[(int64_t)t * R + r];
            if (!isfinite(y)) return INFINITY;
            num += (y - s) * (y - s);
            den += s * s;
        }
    return sqrt(num / den);
}

typedef struct {
    const wmat_tensor *W;
    wmat_wexec ex;
    void *ws;
    double best;
} job;

static void run(job *j, const float *X, float *Y, int T)
{
    const double t0 = omp_get_wtime();
    wmat__wkind_of(j->W)->forward(j->W, X, Y, T, 0, j->ws, &j->ex);
    const double dt = omp_get_wtime() - t0;
    if (dt < j->best) j->best = dt;
}

int main(int argc, char **argv)
{
    int64_t R = 4096, C = 4096;
    int T = 64, NT = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rows")) R = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--cols")) C = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--T")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) NT = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: bench_dgq [--rows R] [--cols C] [--T T] [--threads N]\n");
            return 2;
        }
    }
    float *W0 = malloc((size_t)(R * C) * sizeof(float)), *X = malloc((size_t)T * (size_t)C * sizeof(float));
    float *Y = malloc((size_t)T * (size_t)R * sizeof(float)), *D = malloc((size_t)(R * C) * sizeof(float));
    wmat_rng g;
    wmat_rng_seed(&g, 1);
    for (int64_t i = 0; i < R * C; i++) W0[i] = 0.02f * wmat_rng_normal(&g);
    for (int64_t i = 0; i < (int64_t)T * C; i++) X[i] = wmat_rng_normal(&g);
    wmat_tensor Wf, Wd;
    if (wmat__wkind_find("f32")->from_f32(W0, R, C, &Wf) || wmat__wkind_find("dgq")->from_f32(W0, R, C, &Wd)) {
        fprintf(stderr, "bench_dgq: %s\n", wmat_last_error());
        return 1;
    }
    char desc[160];
    wmat__wkind_of(&Wd)->describe(&Wd, desc, sizeof desc);
    wmat__wkind_of(&Wd)->dequant_rows(&Wd, 0, R, D);
    printf("shape %lld x %lld, T %d; dgq: %s, %.3f bpw\n", (long long)R, (long long)C, T, desc,
           8.0 * (double)wmat__wkind_of(&Wd)->nbytes(&Wd) / ((double)R * (double)C));
    const wmat_gemm_backend b8[] = {WMAT_GEMM_ONEDNN, WMAT_GEMM_REFERENCE};
    const char *b8n[] = {"onednn", "reference"};
    const double ops = 2.0 * (double)R * (double)C * (double)T;
    for (int nt = 1; nt <= NT; nt = nt == NT ? NT + 1 : NT) {
        job jf = {&Wf, wmat__wexec_from(NULL), NULL, 1e30};
        jf.ex.n_threads = nt;
        jf.ex.act8 = 0;
        jf.ws = malloc(wmat__wkind_of(&Wf)->ws_bytes(&Wf, T, &jf.ex) + 64);
        job jd[3];
        int nd = 0;
        for (int b = 0; b < 2; b++) {
            if (!wmat__gemm_int8_native(b8[b])) continue;
            jd[nd] = (job){&Wd, wmat__wexec_from(NULL), NULL, 1e30};
            jd[nd].ex.n_threads = nt, jd[nd].ex.act8 = 1, jd[nd].ex.gemm = b8[b];
            jd[nd].ws = malloc(wmat__wkind_of(&Wd)->ws_bytes(&Wd, T, &jd[nd].ex));
            nd++;
        }
        const int i_fp = nd; /* the kind's fp32 path */
        jd[nd] = (job){&Wd, wmat__wexec_from(NULL), NULL, 1e30};
        jd[nd].ex.n_threads = nt, jd[nd].ex.act8 = 0;
        jd[nd].ws = malloc(wmat__wkind_of(&Wd)->ws_bytes(&Wd, T, &jd[nd].ex));
        nd++;
        /* validate */
        for (int i = 0; i < nd; i++) {
            run(&jd[i], X, Y, T);
            const double e = rel_err(Y, D, X, R, C, T);
            if (!(e < (jd[i].ex.act8 ? 3e-2 : 1e-4))) {
                fprintf(stderr, "bench_dgq: dgq forward %d is %g from the dequantized product\n", i, e);
                return 1;
            }
            jd[i].best = 1e30;
        }
        const double end = omp_get_wtime() + 3.0;
        for (int it = 0; it < 3 || omp_get_wtime() < end; it++) {
            run(&jf, X, Y, T);
            for (int i = 0; i < nd; i++) run(&jd[i], X, Y, T);
        }
        printf("threads %d: fp32 kind %.3f ms (%.1f GFLOP/s)\n", nt, 1e3 * jf.best, ops / jf.best * 1e-9);
        for (int i = 0; i < nd; i++) {
            const char *name = i == i_fp ? "dgq fp32 path (tiles dequantized, sgemm)" : b8n[i < 1 && !wmat__gemm_int8_native(b8[0]) ? 1 : i];
            printf("threads %d: %-42s %.3f ms (%.1f GOP/s), fp32 / dgq = %.2fx\n", nt, name, 1e3 * jd[i].best,
                   ops / jd[i].best * 1e-9, jf.best / jd[i].best);
            free(jd[i].ws);
        }
        free(jf.ws);
    }
    wmat__tensor_free_data(&Wf);
    wmat__tensor_free_data(&Wd);
    free(W0), free(X), free(Y), free(D);
    return 0;
}
