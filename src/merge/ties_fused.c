/* TIES in one pass over the task vectors (docs/MERGING.md "Streaming and
 * memory"): trimming, sign election and the disjoint mean of one range of
 * entries, reading the untrimmed deltas once and writing the output once,
 * with the report's sums (||out - base||^2, ||base||^2) and the first
 * non-finite output on the way. Trimming is a test per entry against the
 * input's threshold (no trimmed copy is written): entry j of input i is kept
 * when !(|d| < thr_i), and, past the input's cut (an index after which the
 * entries equal to the threshold are the surplus that exact top-k drops),
 * when !(|d| <= thr_i). Every entry is computed with the same double
 * operations in the same order as the multi-pass path in methods.c (trim,
 * then combine_block), so both give the same bits; the AVX2 twin does the
 * same operations four entries at a time (no FMA). */
#include "merge.h"
#include "wop/kern_dense.h"

#include <math.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TIES_HAVE_AVX2 1
#endif

/* How input i tests an entry in a range that does not contain its cut. */
enum { KEEP_GE = 0, KEEP_GT = 1, KEEP_NONE = 2 };

static void stats_bad(wmat_ties_stats *st, int64_t j)
{
    if (j < st->bad) st->bad = j;
}

/* The plain C definition, entry by entry. */
static void range_c(const wmat_ties_fuse *f, const int *mode, float *out, int64_t j0, int64_t j1, wmat_ties_stats *st)
{
    for (int64_t j = j0; j < j1; j++) {
        double s = 0;
        int pos = 0, neg = 0;
        float dk[64];
        for (int i = 0; i < f->n_in; i++) {
            const float x = f->d[i][j], a = fabsf(x);
            const int keep = mode[i] == KEEP_GE ? !(a < f->thr[i]) : mode[i] == KEEP_GT ? !(a <= f->thr[i]) : 0;
            dk[i] = keep ? x : 0.0f;
            pos |= dk[i] > 0;
            neg |= dk[i] < 0;
            s += f->w[i] * (double)dk[i];
        }
        st->conflicts += pos & neg;
        double num = 0, den = 0;
        for (int i = 0; i < f->n_in; i++) {
            const double d = (double)dk[i];
            const int agree = (d > 0) == (s > 0) && d != 0;
            num += agree ? f->w[i] * d : 0.0;
            den += agree ? f->w[i] : 0.0;
        }
        if (f->normalize) num = den != 0 ? num / (den != 0 ? den : 1.0) : 0.0;
        const double r = s == 0 ? 0.0 : num;
        const float o = (float)((double)f->base[j] + f->lambda * r);
        out[j] = o;
        if (!isfinite(o)) stats_bad(st, j);
        const double dd = (double)o - f->base[j];
        st->dn += dd * dd;
        st->bn += (double)f->base[j] * f->base[j];
    }
}

#ifdef TIES_HAVE_AVX2
__attribute__((target("avx2"))) static void range_avx2(const wmat_ties_fuse *f, const int *mode, float *out, int64_t j0,
                                                        int64_t j1, wmat_ties_stats *st)
{
    const __m128 absm = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff)), zf = _mm_setzero_ps();
    const __m256d zd = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0), lam = _mm256_set1_pd(f->lambda);
    __m256d dn = zd, bn = zd;
    int64_t conflicts = 0;
    int64_t j = j0;
    for (; j + 4 <= j1; j += 4) {
        __m256d s = zd;
        __m128 pos = zf, neg = zf;
        __m256d dk[64];
        for (int i = 0; i < f->n_in; i++) {
            const __m128 x = _mm_loadu_ps(f->d[i] + j), a = _mm_and_ps(x, absm), t = _mm_set1_ps(f->thr[i]);
            const __m128 m = mode[i] == KEEP_GE ? _mm_cmp_ps(a, t, _CMP_NLT_UQ)
                             : mode[i] == KEEP_GT ? _mm_cmp_ps(a, t, _CMP_NLE_UQ)
                                                  : zf;
            const __m128 xk = _mm_and_ps(m, x);
            pos = _mm_or_ps(pos, _mm_cmp_ps(xk, zf, _CMP_GT_OQ));
            neg = _mm_or_ps(neg, _mm_cmp_ps(xk, zf, _CMP_LT_OQ));
            dk[i] = _mm256_cvtps_pd(xk);
            s = _mm256_add_pd(s, _mm256_mul_pd(_mm256_set1_pd(f->w[i]), dk[i]));
        }
        conflicts += __builtin_popcount((unsigned)_mm_movemask_ps(_mm_and_ps(pos, neg)));
        const __m256d sgt = _mm256_cmp_pd(s, zd, _CMP_GT_OQ);
        __m256d num = zd, den = zd;
        for (int i = 0; i < f->n_in; i++) {
            const __m256d w = _mm256_set1_pd(f->w[i]);
            const __m256d same = _mm256_xor_pd(_mm256_cmp_pd(dk[i], zd, _CMP_GT_OQ), sgt); /* all ones: differ */
            const __m256d agree = _mm256_andnot_pd(same, _mm256_cmp_pd(dk[i], zd, _CMP_NEQ_UQ));
            num = _mm256_add_pd(num, _mm256_and_pd(agree, _mm256_mul_pd(w, dk[i])));
            den = _mm256_add_pd(den, _mm256_and_pd(agree, w));
        }
        if (f->normalize) {
            const __m256d nz = _mm256_cmp_pd(den, zd, _CMP_NEQ_UQ);
            num = _mm256_and_pd(nz, _mm256_div_pd(num, _mm256_blendv_pd(one, den, nz)));
        }
        const __m256d r = _mm256_andnot_pd(_mm256_cmp_pd(s, zd, _CMP_EQ_OQ), num);
        const __m256d b = _mm256_cvtps_pd(_mm_loadu_ps(f->base + j));
        const __m128 o = _mm256_cvtpd_ps(_mm256_add_pd(b, _mm256_mul_pd(lam, r)));
        _mm_storeu_ps(out + j, o);
        /* finite: |o| <= FLT_MAX (false for Inf and NaN) */
        const int fin = _mm_movemask_ps(_mm_cmp_ps(_mm_and_ps(o, absm), _mm_set1_ps(3.40282347e38f), _CMP_LE_OQ));
        if (fin != 0xf)
            for (int q = 0; q < 4; q++)
                if (!(fin >> q & 1)) stats_bad(st, j + q);
        const __m256d dd = _mm256_sub_pd(_mm256_cvtps_pd(o), b);
        dn = _mm256_add_pd(dn, _mm256_mul_pd(dd, dd));
        bn = _mm256_add_pd(bn, _mm256_mul_pd(b, b));
    }
    double t[4];
    _mm256_storeu_pd(t, dn);
    st->dn += t[0] + t[1] + t[2] + t[3];
    _mm256_storeu_pd(t, bn);
    st->bn += t[0] + t[1] + t[2] + t[3];
    st->conflicts += conflicts;
    if (j < j1) range_c(f, mode, out, j, j1, st);
}

/* the weight kernels' CPU probe (detected once, src/wop/kern_dense.c) */
static int cpu_avx2(void) { return wmat__isa_best() >= WMAT_ISA_AVX2; }
#endif

int wmat__ties_fused_has_simd(void)
{
#ifdef TIES_HAVE_AVX2
    return cpu_avx2();
#else
    return 0;
#endif
}

void wmat__ties_fused_range(const wmat_ties_fuse *f, float *out, int64_t j0, int64_t j1, int impl, wmat_ties_stats *st)
{
    /* split [j0, j1) where an input's cut falls inside, so that every
     * piece tests each input one way */
    while (j0 < j1) {
        int mode[64];
        int64_t end = j1;
        for (int i = 0; i < f->n_in; i++) {
            if (f->none[i]) {
                mode[i] = KEEP_NONE;
            } else if (j0 > f->cut[i]) {
                mode[i] = KEEP_GT;
            } else {
                mode[i] = KEEP_GE;
                if (f->cut[i] < end - 1) end = f->cut[i] + 1; /* (cut may be INT64_MAX: no surplus) */
            }
        }
#ifdef TIES_HAVE_AVX2
        if (impl != WMAT_TIES_IMPL_C && cpu_avx2()) range_avx2(f, mode, out, j0, end, st);
        else
#endif
            range_c(f, mode, out, j0, end, st);
        j0 = end;
    }
    (void)impl;
}

/* ---- the exact top-k threshold from the histogram of the high bits */

void wmat__ties_delta_hist(float *x, const float *base, int64_t n, uint32_t *h)
{
    for (int64_t j = 0; j < n; j++) {
        const float d = x[j] - base[j];
        x[j] = d;
        uint32_t u;
        memcpy(&u, &d, sizeof u);
        h[(u & 0x7fffffffu) >> 16]++;
    }
}

#include <omp.h>
#include <stdlib.h>

int wmat__ties_threshold(const float *d, int64_t n, int64_t k, const uint32_t *hist_hi, int n_threads, float *thr,
                         int64_t *cut, int *none)
{
    *none = 0;
    *cut = INT64_MAX;
    if (k >= n) { /* nothing trimmed */
        *thr = 0.0f;
        return WMAT_OK;
    }
    if (k <= 0) {
        *none = 1;
        *thr = INFINITY;
        return WMAT_OK;
    }
    if (n_threads < 1 || n < ((int64_t)1 << 16)) n_threads = 1;
    const uint32_t nb = 1u << 16;
    /* the high 15 bits: from the histogram the caller built */
    int64_t kk = k;
    uint32_t b = (nb >> 1) - 1;
    for (; b > 0; b--) {
        if (kk <= (int64_t)hist_hi[b]) break;
        kk -= hist_hi[b];
    }
    const uint32_t prefix = b << 16;
    uint32_t *local = malloc((size_t)n_threads * nb * sizeof *local);
    int64_t *counts = malloc(nb * sizeof *counts);
    if (!local || !counts) {
        free(local);
        free(counts);
        return wmat_set_error(WMAT_ERR_NOMEM, "ties: out of memory for the selection's histograms");
    }
#pragma omp parallel num_threads(n_threads)
    {
        uint32_t *h = local + (size_t)omp_get_thread_num() * nb;
        memset(h, 0, nb * sizeof *h);
#pragma omp for schedule(static)
        for (int64_t j = 0; j < n; j++) {
            uint32_t u;
            memcpy(&u, &d[j], sizeof u);
            u &= 0x7fffffffu;
            if ((u & 0xffff0000u) == prefix) h[u & 0xffffu]++;
        }
    }
    for (uint32_t q = 0; q < nb; q++) {
        int64_t c = 0;
        for (int t = 0; t < n_threads; t++) c += local[(size_t)t * nb + q];
        counts[q] = c;
    }
    uint32_t lo = nb - 1;
    for (; lo > 0; lo--) {
        if (kk <= counts[lo]) break;
        kk -= counts[lo];
    }
    const int64_t n_eq = counts[lo];
    free(local);
    free(counts);
    const uint32_t pat = prefix | lo;
    float v;
    memcpy(&v, &pat, sizeof v);
    *thr = v;
    /* kk of the n_eq entries equal to the threshold are kept, the first in
     * index order (trim_topk drops the surplus from the end); a NaN
     * threshold equals nothing, and everything is kept */
    if (n_eq > kk && !isnan(v)) {
        int64_t seen = 0;
        for (int64_t j = 0; j < n; j++)
            if (fabsf(d[j]) == v && ++seen == kk) {
                *cut = j;
                break;
            }
    }
    return WMAT_OK;
}
