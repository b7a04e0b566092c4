/* One-row products (decode) of ggml's block types against Q4_0 and fp32.
 *
 *   bench_ggml [N]        (an N x N matrix, default 4096; one thread)
 *
 * Each kind's from_f32 of the same Gaussian matrix, its prepare + rows over
 * all rows (what the runtime's matvec does per token), best of 30 calls in
 * the thread's CPU time (a shared machine's other work does not count),
 * kinds interleaved per round. Prints ms and the ratio to q4_0's kernel
 * (int8 activations) and to fp32's. Every ggml kind runs its fused int8
 * kernel (src/wop/kern_ggml.c) at the best ISA of this CPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "wop/wop.h"

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    const int64_t n = argc > 1 ? atoll(argv[1]) : 4096;
    if (n <= 0 || n % 256) {
        fprintf(stderr, "bench_ggml: N must be a positive multiple of 256\n");
        return 2;
    }
    static const char *const kinds[] = {"f32", "q4_0", "q4_1", "q5_0", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_xs"};
    enum { NK = sizeof kinds / sizeof kinds[0], ROUNDS = 30 };
    float *W = malloc((size_t)(n * n) * sizeof *W), *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
    if (!W || !x || !y) return 1;
    wmat_rng r;
    wmat_rng_seed(&r, 7);
    for (int64_t i = 0; i < n * n; i++) W[i] = 0.02f * (float)wmat_rng_normal(&r);
    for (int64_t i = 0; i < n; i++) x[i] = (float)wmat_rng_normal(&r);
    wmat_tensor t[NK];
    void *prep[NK];
    double best[NK];
    wmat_wexec ex = wmat__wexec_from(NULL);
    ex.n_threads = 1;
    for (int k = 0; k < NK; k++) {
        const wmat_wkind *kd = wmat__wkind_find(kinds[k]);
        if (!kd || kd->from_f32(W, n, n, &t[k])) {
            fprintf(stderr, "bench_ggml: %s: %s\n", kinds[k], wmat_last_error());
            return 1;
        }
        const size_t pb = kd->prep_bytes(&t[k], &ex);
        prep[k] = pb ? malloc(pb) : NULL;
        best[k] = INFINITY;
    }
    for (int round = 0; round < ROUNDS; round++)
        for (int k = 0; k < NK; k++) {
            const wmat_wkind *kd = wmat__wkind_of(&t[k]);
            const double t0 = cpu_s();
            if (prep[k]) kd->prepare(&t[k], x, prep[k], &ex);
            kd->rows(&t[k], x, prep[k], y, 0, n, 0, &ex);
            const double dt = cpu_s() - t0;
            if (dt < best[k]) best[k] = dt;
        }
    printf("decode, %lld x %lld, one thread, best of %d (thread CPU time)\n", (long long)n, (long long)n, ROUNDS);
    printf("%-7s %9s %7s %10s %10s\n", "kind", "ms", "bpw", "vs q4_0", "vs f32");
    for (int k = 0; k < NK; k++)
        printf("%-7s %9.3f %7.3f %9.2fx %9.2fx\n", kinds[k], 1e3 * best[k], wmat_tensor_bits_per_weight(&t[k]), best[1] / best[k],
               best[0] / best[k]);
    for (int k = 0; k < NK; k++) {
        wmat__tensor_free_data(&t[k]);
        free(prep[k]);
    }
    free(W);
    free(x);
    free(y);
    return 0;
}
