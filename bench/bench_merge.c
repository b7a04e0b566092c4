/* TIES/DARE magnitude thresholds: selection (src/merge's
 * radix select, what the merge methods use) against a full qsort of the
 * magnitudes, on one tensor of N elements (default 45M, a 1.1B model's
 * largest FFN-sized tensor class), in the same run. Both must give the same
 * k-th largest magnitude before any time is printed.
 *
 * Selection and trimming also run on `threads` threads against one.
 *
 * Then TIES on one tensor of N entries with a base and two models, the way
 * the merge driver ran it before (the `ties` kernel: task vectors, trim by
 * selection, combine; then the driver's separate finite / norm pass) against
 * the one-pass path (ties_fused.c: task vectors with the histogram, the
 * threshold's second read, one fused trim + election + mean pass with the
 * checks), in its SIMD and its plain C form, in the same run; all three
 * outputs must be the same bytes before a time is printed.
 *
 * With "stream": TIES from f16 inputs, the per-tensor fp32 path against the
 * streamed one (wmat__ties_stream), nothing else.
 *
 * With "f16out": the streamed TIES from f16 inputs to an f16 output, as the
 * GGUF merge ran it before (each chunk converted into fp32 buffers, the
 * fp32 tensor, then the writer's whole-tensor f32 -> f16 on one thread)
 * against the current form (the passes read the f16 halves directly, each
 * chunk's result encoded to f16 in cache: the writer's encoder hook), in
 * the same run; the f16 bytes must be the same. A third variant is the
 * current form with pass A through the chunk buffers (pass_a_buffers), so
 * pass A in place and buffered are timed in the same run.
 *
 *   bench_merge [N] [density] [threads] [ties|stream|f16out]   (default 45000000 0.5 2; "ties": only the TIES part) */
#include "wmat.h"
#include "merge/merge.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_float(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The TIES comparison; returns nonzero on a mismatch. */
static int bench_ties(int64_t n, double density, int threads)
{
    float *base = malloc((size_t)n * 4), *x[2], *c[2], *ref = malloc((size_t)n * 4), *out = malloc((size_t)n * 4);
    uint32_t *hist = malloc((size_t)(threads + 1) * WMAT_TIES_HIST * sizeof *hist);
    for (int i = 0; i < 2; i++) {
        x[i] = malloc((size_t)n * 4);
        c[i] = malloc((size_t)n * 4);
    }
    if (!base || !ref || !out || !hist || !x[0] || !x[1] || !c[0] || !c[1]) {
        fprintf(stderr, "out of memory for 7 x %lld floats\n", (long long)n);
        return 1;
    }
    wmat_rng r;
    wmat_rng_seed(&r, 2);
    for (int64_t j = 0; j < n; j++) base[j] = 0.02f * wmat_rng_normal(&r);
    for (int i = 0; i < 2; i++)
        for (int64_t j = 0; j < n; j++) x[i][j] = base[j] + 0.01f * wmat_rng_normal(&r);
    const double w[2] = {1, 1}, dens[2] = {density, density};
    double best[3] = {1e30, 1e30, 1e30};
    for (int rep = 0; rep < 3; rep++) {
        /* the multi-pass path: the kernel on copies, then the driver's check pass */
        for (int i = 0; i < 2; i++) memcpy(c[i], x[i], (size_t)n * 4);
        wmat_merge_args a;
        memset(&a, 0, sizeof a);
        a.n = n;
        a.n_in = 2;
        a.base = base;
        a.x = c;
        a.weight = w;
        a.density = dens;
        a.lambda = 1;
        a.normalize = 1;
        a.n_threads = threads;
        wmat_merge_tinfo info;
        double t0 = now_s();
        if (wmat__merge_method_find("ties")->fn(&a, ref, &info)) return 1;
        double dn = 0, bn = 0;
        int64_t bad = n;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : dn, bn) reduction(min : bad)
        for (int64_t k = 0; k < n; k++) {
            if (!isfinite(ref[k]) && k < bad) bad = k;
            const double d = (double)ref[k] - base[k];
            dn += d * d;
            bn += (double)base[k] * base[k];
        }
        const double t_multi = now_s() - t0;
        if (t_multi < best[0]) best[0] = t_multi;
        /* the one-pass path, SIMD then plain C */
        for (int impl = 0; impl < 2; impl++) {
            for (int i = 0; i < 2; i++) memcpy(c[i], x[i], (size_t)n * 4);
            t0 = now_s();
            float thr[2];
            int64_t cut[2];
            int none[2];
            uint32_t *hsum = hist + (size_t)threads * WMAT_TIES_HIST;
            for (int i = 0; i < 2; i++) {
                const int64_t pieces = (n + 16383) / 16384;
                memset(hist, 0, (size_t)threads * WMAT_TIES_HIST * sizeof *hist);
#pragma omp parallel for num_threads(threads) schedule(static)
                for (int64_t p = 0; p < pieces; p++) {
                    const int64_t s0 = p * 16384, s1 = n - s0 < 16384 ? n : s0 + 16384;
                    wmat__ties_delta_hist(c[i] + s0, base + s0, s1 - s0, hist + (size_t)omp_get_thread_num() * WMAT_TIES_HIST);
                }
                for (int q = 0; q < WMAT_TIES_HIST; q++) {
                    uint32_t v = 0;
                    for (int t = 0; t < threads; t++) v += hist[(size_t)t * WMAT_TIES_HIST + q];
                    hsum[q] = v;
                }
                const double kd = density * (double)n;
                if (wmat__ties_threshold(c[i], n, kd >= (double)n ? n : (int64_t)kd, hsum, threads, &thr[i], &cut[i], &none[i]))
                    return 1;
            }
            const wmat_ties_fuse f = {2, base, (const float *const *)c, w, thr, cut, none, 1.0, 1, NULL, NULL};
            const int64_t nb = (n + 16383) / 16384;
#pragma omp parallel for num_threads(threads) schedule(static)
            for (int64_t b = 0; b < nb; b++) {
                wmat_ties_stats st = {0, 0, 0, INT64_MAX};
                wmat__ties_fused_range(&f, out, b * 16384, n - b * 16384 < 16384 ? n : (b + 1) * 16384,
                                       impl ? WMAT_TIES_IMPL_C : WMAT_TIES_IMPL_AUTO, &st);
            }
            const double t = now_s() - t0;
            if (t < best[1 + impl]) best[1 + impl] = t;
            if (memcmp(out, ref, (size_t)n * 4)) {
                fprintf(stderr, "MISMATCH: the one-pass TIES (%s) differs from the kernel\n", impl ? "C" : "SIMD");
                return 1;
            }
        }
    }
    printf("TIES, base + 2 models of %lld entries, density %.2f, %d threads (best of 3; outputs identical):\n",
           (long long)n, density, threads);
    printf("  multi-pass (kernel + check pass)  %8.3f s  %6.2f ns/entry\n", best[0], 1e9 * best[0] / (double)n);
    printf("  one pass, %-4s                   %8.3f s  %6.2f ns/entry  (%.2fx)\n", wmat__ties_fused_has_simd() ? "SIMD" : "C",
           best[1], 1e9 * best[1] / (double)n, best[0] / best[1]);
    printf("  one pass, plain C                 %8.3f s  %6.2f ns/entry  (%.2fx)\n", best[2], 1e9 * best[2] / (double)n,
           best[0] / best[2]);
    for (int i = 0; i < 2; i++) {
        free(x[i]);
        free(c[i]);
    }
    free(base);
    free(ref);
    free(out);
    free(hist);
    return 0;
}

/* TIES from f16 inputs (a GGUF f16 merge's tensors), per tensor: the
 * driver's one-pass path before the streamed one (the base converted whole
 * to fp32, each model converted piece by piece into a whole fp32 task vector
 * with its histogram, the threshold's second read, the fused pass over the
 * fp32 task vectors) against wmat__ties_stream (chunks converted from the
 * f16 bytes in each of its passes, nothing stored as fp32), on one thread
 * and on `threads`, in the same run; the outputs must be the same bytes. */
static int bench_stream(int64_t n, double density, int threads)
{
    enum { NIN = 2 };
    float *tmp = malloc((size_t)n * 4), *base = malloc((size_t)n * 4), *d[NIN], *ref = malloc((size_t)n * 4),
          *out = malloc((size_t)n * 4);
    unsigned char *st[NIN + 1];
    uint32_t *hist = malloc((size_t)(threads + 1) * WMAT_TIES_HIST * sizeof *hist);
    for (int i = 0; i < NIN; i++) d[i] = malloc((size_t)n * 4);
    for (int i = 0; i <= NIN; i++) st[i] = malloc((size_t)n * 2);
    if (!tmp || !base || !ref || !out || !hist || !d[0] || !d[1] || !st[0] || !st[1] || !st[2]) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    wmat_rng r;
    wmat_rng_seed(&r, 3);
    for (int64_t j = 0; j < n; j++) base[j] = 0.02f * wmat_rng_normal(&r);
    wmat_from_f32(st[0], WMAT_F16, base, (uint64_t)n);
    for (int i = 1; i <= NIN; i++) {
        for (int64_t j = 0; j < n; j++) tmp[j] = base[j] + 0.01f * wmat_rng_normal(&r);
        wmat_from_f32(st[i], WMAT_F16, tmp, (uint64_t)n);
    }
    const double w[NIN] = {1, 1};
    const double kd = density * (double)n;
    const int64_t k[NIN] = {kd >= (double)n ? n : (int64_t)kd, kd >= (double)n ? n : (int64_t)kd};
    const int64_t P = 16384, np = (n + P - 1) / P;
    double best_old[2] = {1e30, 1e30}, best_new[2] = {1e30, 1e30}, cpu[3] = {0, 0, 0}, cpu_old = 1e30, cpu_new = 1e30;
    for (int ti = 0; ti < 2; ti++) {
        const int nt = ti ? threads : 1;
        for (int rep = 0; rep < 3; rep++) {
            double t0 = now_s(), c0 = thread_cpu_s();
            wmat_to_f32(base, st[0], WMAT_F16, (uint64_t)n);
            float thr[NIN];
            int64_t cut[NIN];
            int none[NIN];
            uint32_t *hsum = hist + (size_t)nt * WMAT_TIES_HIST;
            for (int i = 0; i < NIN; i++) {
                memset(hist, 0, (size_t)nt * WMAT_TIES_HIST * sizeof *hist);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4)
                for (int64_t p = 0; p < np; p++) {
                    const int64_t s0 = p * P, s1 = n - s0 < P ? n : s0 + P;
                    wmat_to_f32(d[i] + s0, st[i + 1] + 2 * s0, WMAT_F16, (uint64_t)(s1 - s0));
                    wmat__ties_delta_hist(d[i] + s0, base + s0, s1 - s0, hist + (size_t)omp_get_thread_num() * WMAT_TIES_HIST);
                }
                for (int q = 0; q < WMAT_TIES_HIST; q++) {
                    uint32_t v = 0;
                    for (int t = 0; t < nt; t++) v += hist[(size_t)t * WMAT_TIES_HIST + q];
                    hsum[q] = v;
                }
                if (wmat__ties_threshold(d[i], n, k[i], hsum, nt, &thr[i], &cut[i], &none[i])) return 1;
            }
            const wmat_ties_fuse f = {NIN, base, (const float *const *)d, w, thr, cut, none, 1.0, 1, NULL, NULL};
#pragma omp parallel for num_threads(nt) schedule(static)
            for (int64_t b = 0; b < np; b++) {
                wmat_ties_stats sts = {0, 0, 0, INT64_MAX};
                wmat__ties_fused_range(&f, ref, b * P, n - b * P < P ? n : (b + 1) * P, WMAT_TIES_IMPL_AVX2, &sts);
            }
            double t = now_s() - t0, c = thread_cpu_s() - c0;
            if (t < best_old[ti]) best_old[ti] = t;
            if (!ti && c < cpu_old) cpu_old = c;
            const void *xs[NIN] = {st[1], st[2]};
            const wmat_dtype xdt[NIN] = {WMAT_F16, WMAT_F16};
            const wmat_ties_src src = {NIN, n, st[0], WMAT_F16, xs, xdt, k, w, 1.0, 1, NULL, WMAT_F32, 0, 0};
            wmat_ties_stream_out so;
            t0 = now_s();
            c0 = thread_cpu_s();
            if (wmat__ties_stream(&src, out, nt, &so)) return 1;
            t = now_s() - t0;
            c = thread_cpu_s() - c0;
            if (!ti && c < cpu_new) cpu_new = c;
            if (t < best_new[ti]) {
                best_new[ti] = t;
                if (!ti) memcpy(cpu, so.cpu, sizeof cpu);
            }
            if (memcmp(out, ref, (size_t)n * 4)) {
                fprintf(stderr, "MISMATCH: the streamed TIES differs from the one-pass path\n");
                return 1;
            }
        }
    }
    printf("TIES from f16, base + %d models of %lld entries, density %.2f (best of 3; outputs identical):\n", NIN,
           (long long)n, density);
    for (int ti = 0; ti < 2; ti++)
        printf("  %d thread%s: fp32 task vectors %8.3f s %6.2f ns/entry | streamed %8.3f s %6.2f ns/entry (%.2fx)\n",
               ti ? threads : 1, ti && threads > 1 ? "s" : " ", best_old[ti], 1e9 * best_old[ti] / (double)n, best_new[ti],
               1e9 * best_new[ti] / (double)n, best_old[ti] / best_new[ti]);
    printf("  1 thread, CPU time (the thread's; best of 3): fp32 task vectors %.3f s %.2f ns/entry | streamed %.3f s "
           "%.2f ns/entry (%.2fx)\n",
           cpu_old, 1e9 * cpu_old / (double)n, cpu_new, 1e9 * cpu_new / (double)n, cpu_old / cpu_new);
    printf("  streamed, 1 thread, CPU by pass: convert + task vectors + histogram %.3f s, threshold %.3f s, "
           "convert + trim/elect/mean %.3f s\n",
           cpu[0], cpu[1], cpu[2]);
    for (int i = 0; i < NIN; i++) free(d[i]);
    for (int i = 0; i <= NIN; i++) free(st[i]);
    free(tmp);
    free(base);
    free(ref);
    free(out);
    free(hist);
    return 0;
}

/* "f16out": see the header. */
static int bench_f16out(int64_t n, double density, int threads)
{
    enum { NIN = 2 };
    float *tmp = malloc((size_t)n * 4);
    unsigned char *st[NIN + 1], *ref = malloc((size_t)n * 2), *got = malloc((size_t)n * 2);
    for (int i = 0; i <= NIN; i++) st[i] = malloc((size_t)n * 2);
    if (!tmp || !ref || !got || !st[0] || !st[1] || !st[2]) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    wmat_rng r;
    wmat_rng_seed(&r, 5);
    float *base = malloc((size_t)n * 4);
    if (!base) return 1;
    for (int64_t j = 0; j < n; j++) base[j] = 0.02f * wmat_rng_normal(&r);
    wmat_from_f32(st[0], WMAT_F16, base, (uint64_t)n);
    for (int i = 1; i <= NIN; i++) {
        for (int64_t j = 0; j < n; j++) tmp[j] = base[j] + 0.01f * wmat_rng_normal(&r);
        wmat_from_f32(st[i], WMAT_F16, tmp, (uint64_t)n);
    }
    free(base);
    const double w[NIN] = {1, 1};
    const double kd = density * (double)n;
    const int64_t k[NIN] = {kd >= (double)n ? n : (int64_t)kd, kd >= (double)n ? n : (int64_t)kd};
    const void *xs[NIN] = {st[1], st[2]};
    const wmat_dtype xdt[NIN] = {WMAT_F16, WMAT_F16};
    /* v = 0: as before; 1: now; 2: now with pass A through the chunk buffers */
    double best[2][3] = {{1e30, 1e30, 1e30}, {1e30, 1e30, 1e30}}, cpu[3] = {1e30, 1e30, 1e30}, pass[3][3];
    for (int ti = 0; ti < 2; ti++) {
        const int nt = ti ? threads : 1;
        for (int rep = 0; rep < 3; rep++) {
            for (int v = 0; v < 3; v++) {
                wmat_ties_src src = {NIN, n, st[0], WMAT_F16, xs, xdt, k, w, 1.0, 1, NULL, WMAT_F32, 1, v == 2};
                if (v) {
                    src.no_fused_load = 0;
                    src.enc = got;
                    src.enc_dt = WMAT_F16;
                }
                wmat_ties_stream_out so;
                const double t0 = now_s(), c0 = thread_cpu_s();
                if (wmat__ties_stream(&src, v ? NULL : tmp, nt, &so)) return 1;
                if (!v) wmat_from_f32(ref, WMAT_F16, tmp, (uint64_t)n); /* the writer's encoding */
                const double t = now_s() - t0, c = thread_cpu_s() - c0;
                if (t < best[ti][v]) best[ti][v] = t;
                if (!ti && c < cpu[v]) {
                    cpu[v] = c;
                    memcpy(pass[v], so.cpu, sizeof pass[v]);
                }
                if (v && memcmp(got, ref, (size_t)n * 2)) {
                    fprintf(stderr, "MISMATCH: the f16 output encoded by the merge differs from the writer's\n");
                    return 1;
                }
            }
        }
    }
    printf("TIES f16 -> f16, base + %d models of %lld entries, density %.2f (best of 3; f16 outputs identical):\n", NIN,
           (long long)n, density);
    for (int ti = 0; ti < 2; ti++)
        printf("  %d thread%s: buffers + fp32 tensor + writer's f16 %8.3f s %6.2f ns/entry | f16 read and written "
               "directly %8.3f s %6.2f ns/entry (%.2fx)\n",
               ti ? threads : 1, ti && threads > 1 ? "s" : " ", best[ti][0], 1e9 * best[ti][0] / (double)n, best[ti][1],
               1e9 * best[ti][1] / (double)n, best[ti][0] / best[ti][1]);
    printf("  1 thread, CPU time (best of 3): %.3f s | %.3f s (%.2fx); by pass A / B+C / D: %.3f %.3f %.3f | %.3f %.3f %.3f\n",
           cpu[0], cpu[1], cpu[0] / cpu[1], pass[0][0], pass[0][1], pass[0][2], pass[1][0], pass[1][1], pass[1][2]);
    printf("  pass A (1 thread, CPU, best of 3): f16 read in place %.3f s (%.2f ns/entry) | through the chunk buffers "
           "%.3f s (%.2f ns/entry): %.2fx; the whole stream %.3f | %.3f s; 2 threads wall %.3f | %.3f s\n",
           pass[1][0], 1e9 * pass[1][0] / (double)n, pass[2][0], 1e9 * pass[2][0] / (double)n, pass[2][0] / pass[1][0], cpu[1],
           cpu[2], best[1][1], best[1][2]);
    for (int i = 0; i <= NIN; i++) free(st[i]);
    free(tmp);
    free(ref);
    free(got);
    return 0;
}

int main(int argc, char **argv)
{
    const int64_t n = argc > 1 ? atoll(argv[1]) : 45000000;
    const double density = argc > 2 ? atof(argv[2]) : 0.5;
    const int threads = argc > 3 ? atoi(argv[3]) : 2;
    if (n < 1 || !(density > 0 && density <= 1) || threads < 1) {
        fprintf(stderr, "usage: bench_merge [N] [density] [threads] [ties|stream|f16out]\n");
        return 2;
    }
    if (argc > 4 && !strcmp(argv[4], "stream")) return bench_stream(n, density, threads) ? 1 : 0;
    if (argc > 4 && !strcmp(argv[4], "f16out")) return bench_f16out(n, density, threads) ? 1 : 0;
    if (bench_ties(n, density, threads)) return 1;
    if (argc > 4 && !strcmp(argv[4], "ties")) return 0;
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
