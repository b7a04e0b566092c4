/* TIES/DARE magnitude thresholds: selection (src/merge's
 * radix select, what the merge methods use) against a full qsort of the
 * magnitudes, on one tensor of N elements (default 45M, a 1.1B model's
 * largest FFN-sized tensor class), in the same run. Both must give the same
 * k-th largest magnitude before any time is printed.
 *
 * Selection and trimming also run on `threads` threads against one.
 *
 *   bench_merge [N] [density] [threads]      (default 45000000 0.5 2) */
#include "wmat.h"
#include "merge/merge.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_float(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    const int64_t n = argc > 1 ? atoll(argv[1]) : 45000000;
    const double density = argc > 2 ? atof(argv[2]) : 0.5;
    const int threads = argc > 3 ? atoi(argv[3]) : 2;
    if (n < 1 || !(density > 0 && density <= 1) || threads < 1) {
        fprintf(stderr, "usage: bench_merge [N] [density] [threads]\n");
        return 2;
    }
    const int64_t k = (int64_t)(density * (double)n) > 0 ? (int64_t)(density * (double)n) : 1;
    float *x = malloc((size_t)n * sizeof *x), *s = malloc((size_t)n * sizeof *s), *d = malloc((size_t)n * sizeof *d);
    if (!x || !s || !d) {
        fprintf(stderr, "out of memory for 3 x %lld floats\n", (long long)n);
        return 1;
    }
    wmat_rng r;
    wmat_rng_seed(&r, 1);
    for (int64_t j = 0; j < n; j++) x[j] = 0.01f * wmat_rng_normal(&r); /* a task vector's scale */

    double t0 = now_s();
    const float thr_sel = wmat__merge_kth_largest_abs(x, n, k, 1);
    const double t_sel = now_s() - t0;
    t0 = now_s();
    const float thr_par = wmat__merge_kth_largest_abs(x, n, k, threads);
    const double t_par = now_s() - t0;

    for (int64_t j = 0; j < n; j++) d[j] = x[j];
    t0 = now_s();
    wmat__merge_trim_topk(d, n, k, 1);
    const double t_trim = now_s() - t0;
    for (int64_t j = 0; j < n; j++) s[j] = x[j];
    t0 = now_s();
    wmat__merge_trim_topk(s, n, k, threads);
    const double t_trim_par = now_s() - t0;
    int64_t same = 0;
    for (int64_t j = 0; j < n; j++) same += s[j] == d[j];

    t0 = now_s();
    for (int64_t j = 0; j < n; j++) s[j] = fabsf(x[j]);
    qsort(s, (size_t)n, sizeof *s, cmp_float);
    const float thr_sort = s[n - k];
    const double t_sort = now_s() - t0;

    int64_t kept = 0;
    for (int64_t j = 0; j < n; j++) kept += d[j] != 0;
    if (thr_sel != thr_sort || thr_par != thr_sel || kept != k || same != n) {
        fprintf(stderr, "MISMATCH: selection %.9g vs sort %.9g; trim kept %lld of %lld\n", thr_sel, thr_sort, (long long)kept,
                (long long)k);
        return 1;
    }
    printf("n %lld, density %.3f (k = %lld): threshold %.9g (selection == sort)\n", (long long)n, density, (long long)k,
           thr_sel);
    printf("selection (radix select)   %8.3f s   %d threads %8.3f s (%.2fx)\n", t_sel, threads, t_par, t_sel / t_par);
    printf("trim to top-k (select+pass) %8.3f s   %d threads %8.3f s (%.2fx)\n", t_trim, threads, t_trim_par,
           t_trim / t_trim_par);
    printf("full qsort                  %8.3f s\n", t_sort);
    printf("sort / selection            %8.1fx\n", t_sort / t_sel);
    free(x);
    free(s);
    free(d);
    return 0;
}
