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
 * same operations four entries at a time (no FMA), the AVX-512 twin eight. */
#include "merge.h"
#include "wop/kern_dense.h"
#include "core/internal.h"

#include <sys/resource.h>
#include <time.h>

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

/* The AVX-512 twin: eight entries at a time, the values in double from the
 * start (a float's conversion is exact, so |x| against the threshold
 * compares the same); every add, multiply and divide is an explicitly
 * rounded intrinsic, which the compiler never contracts into an FMA, and a
 * masked-out term is added as +0 as the AVX2 twin adds it: the same bits. */
#define RN (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

/* The last j1 - j0 (< 8) entries of a range read from f16 storage: those
 * halves converted (exactly) and subtracted in float into small arrays,
 * then the AVX2 twin on them, as the buffers' path runs its tail: the same
 * operations on the same values, the sums added to *st in the same order. */
static void range_f16_tail(const wmat_ties_fuse *f, const int *mode, float *out, int64_t j0, int64_t j1, wmat_ties_stats *st)
{
    const int64_t r = j1 - j0;
    float tb[8], td[64][8], tx[8];
    const float *tdp[64];
    wmat_to_f32(tb, f->hbase + j0, WMAT_F16, (uint64_t)r);
    for (int i = 0; i < f->n_in; i++) {
        wmat_to_f32(tx, f->hx[i] + j0, WMAT_F16, (uint64_t)r);
        for (int64_t q = 0; q < r; q++) td[i][q] = tx[q] - tb[q];
        tdp[i] = td[i];
    }
    const wmat_ties_fuse ft = {f->n_in, tb, tdp, f->w, f->thr, f->cut, f->none, f->lambda, f->normalize, NULL, NULL};
    const int64_t bad0 = st->bad;
    st->bad = INT64_MAX;
    range_avx2(&ft, mode, out + j0, 0, r, st);
    st->bad = st->bad == INT64_MAX ? bad0 : (j0 + st->bad < bad0 ? j0 + st->bad : bad0);
}

__attribute__((target("avx512f,avx512vl,f16c"))) static void range_avx512(const wmat_ties_fuse *f, const int *mode, float *out,
                                                                          int64_t j0, int64_t j1, wmat_ties_stats *st)
{
    const int h16 = f->hbase != NULL;
    const __m512d zd = _mm512_setzero_pd(), one = _mm512_set1_pd(1.0), lam = _mm512_set1_pd(f->lambda);
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m512d dn = zd, bn = zd;
    int64_t conflicts = 0;
    int64_t j = j0;
    for (; j + 8 <= j1; j += 8) {
        __m512d s = zd;
        __mmask8 pos = 0, neg = 0;
        __m512d dk[64];
        /* f16 storage: d = f16(x) - f16(base) in float, as ts_sub forms it */
        const __m256 bf = h16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(f->hbase + j)))
                              : _mm256_loadu_ps(f->base + j);
        for (int i = 0; i < f->n_in; i++) {
            const __m256 xf =
                h16 ? _mm256_sub_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(f->hx[i] + j))), bf)
                    : _mm256_loadu_ps(f->d[i] + j);
            const __m512d x = _mm512_cvtps_pd(xf), a = _mm512_abs_pd(x), t = _mm512_set1_pd((double)f->thr[i]);
            const __mmask8 m = mode[i] == KEEP_GE ? _mm512_cmp_pd_mask(a, t, _CMP_NLT_UQ)
                               : mode[i] == KEEP_GT ? _mm512_cmp_pd_mask(a, t, _CMP_NLE_UQ)
                                                    : (__mmask8)0;
            dk[i] = _mm512_maskz_mov_pd(m, x);
            pos |= _mm512_cmp_pd_mask(dk[i], zd, _CMP_GT_OQ);
            neg |= _mm512_cmp_pd_mask(dk[i], zd, _CMP_LT_OQ);
            s = _mm512_add_round_pd(s, _mm512_mul_round_pd(_mm512_set1_pd(f->w[i]), dk[i], RN), RN);
        }
        conflicts += __builtin_popcount((unsigned)(pos & neg));
        const __mmask8 sgt = _mm512_cmp_pd_mask(s, zd, _CMP_GT_OQ);
        __m512d num = zd, den = zd;
        for (int i = 0; i < f->n_in; i++) {
            const __m512d w = _mm512_set1_pd(f->w[i]);
            const __mmask8 agree = (__mmask8)(~(_mm512_cmp_pd_mask(dk[i], zd, _CMP_GT_OQ) ^ sgt) &
                                              _mm512_cmp_pd_mask(dk[i], zd, _CMP_NEQ_UQ));
            num = _mm512_add_round_pd(num, _mm512_maskz_mov_pd(agree, _mm512_mul_round_pd(w, dk[i], RN)), RN);
            den = _mm512_add_round_pd(den, _mm512_maskz_mov_pd(agree, w), RN);
        }
        if (f->normalize) {
            const __mmask8 nz = _mm512_cmp_pd_mask(den, zd, _CMP_NEQ_UQ);
            num = _mm512_maskz_mov_pd(nz, _mm512_div_round_pd(num, _mm512_mask_blend_pd(nz, one, den), RN));
        }
        const __m512d r = _mm512_maskz_mov_pd((__mmask8)~_mm512_cmp_pd_mask(s, zd, _CMP_EQ_OQ), num);
        const __m512d b = _mm512_cvtps_pd(bf);
        const __m256 o = _mm512_cvtpd_ps(_mm512_add_round_pd(b, _mm512_mul_round_pd(lam, r, RN), RN));
        _mm256_storeu_ps(out + j, o);
        const int fin = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(o, absm), _mm256_set1_ps(3.40282347e38f), _CMP_LE_OQ));
        if (fin != 0xff)
            for (int q = 0; q < 8; q++)
                if (!(fin >> q & 1)) stats_bad(st, j + q);
        const __m512d dd = _mm512_sub_round_pd(_mm512_cvtps_pd(o), b, RN);
        dn = _mm512_add_round_pd(dn, _mm512_mul_round_pd(dd, dd, RN), RN);
        bn = _mm512_add_round_pd(bn, _mm512_mul_round_pd(b, b, RN), RN);
    }
    st->dn += _mm512_reduce_add_pd(dn);
    st->bn += _mm512_reduce_add_pd(bn);
    st->conflicts += conflicts;
    if (j < j1) {
        if (h16) range_f16_tail(f, mode, out, j, j1, st);
        else range_avx2(f, mode, out, j, j1, st);
    }
}
#undef RN

/* the weight kernels' CPU probe (detected once, src/wop/kern_dense.c) */
static int cpu_avx2(void) { return wmat__isa_best() >= WMAT_ISA_AVX2; }
#endif

int wmat__ties_f16_direct(void)
{
#ifdef TIES_HAVE_AVX2
    /* the AVX-512 level (F, BW, VL) comes with F16C on every CPU that has
     * it; the dense kernels make the same assumption (kern_dense.c) */
    return wmat__isa_best() >= WMAT_ISA_AVX512;
#else
    return 0;
#endif
}

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
        /* f16 storage (only set where wmat__ties_f16_direct): the AVX-512 twin */
        if (f->hbase || (impl == WMAT_TIES_IMPL_AUTO && wmat__isa_best() >= WMAT_ISA_AVX512))
            range_avx512(f, mode, out, j0, end, st);
        else if (impl != WMAT_TIES_IMPL_C && cpu_avx2()) range_avx2(f, mode, out, j0, end, st);
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

/* ---- TIES streamed from the stored inputs, chunk by chunk
 *
 * No fp32 copy of a whole task vector: every pass converts a chunk of the
 * base and of each model from their stored bytes (wmat_to_f32: F16C for
 * f16), forms the chunk's task vectors in a per-thread buffer that stays in
 * cache and uses them at once. Pass A counts the high 15 bits of each
 * |d_i|; pass B counts the low 16 bits of the entries in the bucket that
 * holds the k-th largest (the AVX-512 twin compares 16 patterns at a time
 * and only touches the few that match); pass C, only for an input whose
 * threshold value occurs more often than the top k can keep, counts the
 * entries equal to it per chunk and finds the cut; pass D is the fused
 * trim / elect / mean of wmat__ties_fused_range on the chunk. The same
 * operations on the same values as the whole-tensor path, so the same
 * bits. Inputs are read three times (four with pass C): from the page
 * cache, not the disk. Their pages are the caller's to release, once per
 * tensor: a madvise per chunk cost more system time than the whole merge
 * (a TLB shootdown each, on a virtual machine). */

#define TS_CHUNK 16384

/* The entries of the k-th largest's bucket, in index order (index << 16 |
 * low 16 bits), so that the cut needs no pass of its own; over: more than
 * cap of them (then pass C finds the cut). */
typedef struct {
    uint64_t *v;
    int64_t n, cap;
    int over;
} ts_cand;

static inline void cand_put(ts_cand *c, int64_t j, uint32_t lo)
{
    if (c->n < c->cap) c->v[c->n++] = (uint64_t)j << 16 | lo;
    else c->over = 1;
}

#ifdef TIES_HAVE_AVX2
__attribute__((target("avx512f"))) static void delta_hist_avx512(float *x, const float *base, int64_t n, uint32_t *h)
{
    const __m512i absm = _mm512_set1_epi32(0x7fffffff);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + j), _mm512_loadu_ps(base + j));
        _mm512_storeu_ps(x + j, d);
        uint32_t idx[16];
        _mm512_storeu_si512((void *)idx, _mm512_srli_epi32(_mm512_and_si512(_mm512_castps_si512(d), absm), 16));
        for (int q = 0; q < 16; q++) h[idx[q]]++;
    }
    if (j < n) wmat__ties_delta_hist(x + j, base + j, n - j, h);
}

__attribute__((target("avx512f"))) static void lo_hist_avx512(const float *d, int64_t n, uint32_t prefix, uint32_t *h, ts_cand *cd,
                                                            int64_t j0)
{
    const __m512i absm = _mm512_set1_epi32(0x7fffffff), him = _mm512_set1_epi32((int)0xffff0000u),
                  pre = _mm512_set1_epi32((int)prefix);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m512i u = _mm512_and_si512(_mm512_loadu_si512((const void *)(d + j)), absm);
        unsigned m = _mm512_cmpeq_epi32_mask(_mm512_and_si512(u, him), pre);
        if (!m) continue;
        uint32_t v[16];
        _mm512_storeu_si512((void *)v, u);
        while (m) {
            const int q = __builtin_ctz(m);
            h[v[q] & 0xffffu]++;
            cand_put(cd, j0 + j + q, v[q] & 0xffffu);
            m &= m - 1;
        }
    }
    for (; j < n; j++) {
        uint32_t u;
        memcpy(&u, &d[j], sizeof u);
        u &= 0x7fffffffu;
        if ((u & 0xffff0000u) == prefix) {
            h[u & 0xffffu]++;
            cand_put(cd, j0 + j, u & 0xffffu);
        }
    }
}

__attribute__((target("avx512f"))) static int64_t count_eq_avx512(const float *d, int64_t n, float v)
{
    const __m512i absm = _mm512_set1_epi32(0x7fffffff);
    uint32_t vb;
    memcpy(&vb, &v, sizeof vb);
    const __m512i t = _mm512_set1_epi32((int)vb);
    int64_t c = 0, j = 0;
    /* v is a number (not NaN) here: |d| == v as floats is the same as the
     * patterns' equality, except for v = 0 (a -0 delta also equals 0) */
    for (; j + 16 <= n; j += 16)
        c += __builtin_popcount(
            _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_loadu_si512((const void *)(d + j)), absm), t));
    for (; j < n; j++) c += fabsf(d[j]) == v;
    return c;
}

static int cpu_avx512(void) { return wmat__isa_best() >= WMAT_ISA_AVX512; }

/* f16 storage read directly (wmat__ties_f16_direct; pass B here, pass D in
 * range_avx512): sixteen halves of the model and of the base converted in
 * registers and subtracted in float (exact conversions, the same
 * subtraction as ts_sub), no chunk buffers. */
#define TS_F16 __attribute__((target("avx512f,avx512bw,avx512vl,f16c")))

/* |x - base|'s patterns of the r (< 16) entries left at the end */
TS_F16 static __m512i f16_tail_abs(const uint16_t *x, const uint16_t *b, int64_t r)
{
    uint16_t tx[16] = {0}, tb[16] = {0};
    memcpy(tx, x, (size_t)r * sizeof *tx);
    memcpy(tb, b, (size_t)r * sizeof *tb);
    const __m512 d = _mm512_sub_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)tx)),
                                   _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)tb)));
    return _mm512_and_si512(_mm512_castps_si512(d), _mm512_set1_epi32(0x7fffffff));
}

TS_F16 static inline __m512i f16_abs16(const uint16_t *x, const uint16_t *b)
{
    const __m512 d = _mm512_sub_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)x)),
                                   _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)b)));
    return _mm512_and_si512(_mm512_castps_si512(d), _mm512_set1_epi32(0x7fffffff));
}

/* pass A on f16 storage: every model's |x - base| patterns sixteen at a
 * time, the high 15 bits counted into that model's table (h + i *
 * WMAT_TIES_HIST); the base's halves converted once per model (cheap), the
 * next lines of every input prefetched while the scalar increments run. */
TS_F16 static void hi_hist_f16_avx512(const uint16_t *b, const uint16_t *const *x, int k_in, int64_t n, uint32_t *h)
{
    uint32_t idx[16];
    for (int64_t j = 0; j < n; j += 16) {
        const int64_t r = n - j < 16 ? n - j : 16;
        _mm_prefetch((const char *)(const void *)(b + j + 512), _MM_HINT_T0);
        for (int i = 0; i < k_in; i++) {
            const uint16_t *xi = x[i] + j;
            _mm_prefetch((const char *)(const void *)(xi + 512), _MM_HINT_T0);
            const __m512i u = r == 16 ? f16_abs16(xi, b + j) : f16_tail_abs(xi, b + j, r);
            _mm512_storeu_si512((void *)idx, _mm512_srli_epi32(u, 16));
            uint32_t *hi = h + (size_t)i * WMAT_TIES_HIST;
            for (int q = 0; q < r; q++) hi[idx[q]]++;
        }
    }
}

/* pass B on f16 storage (as lo_hist_avx512) */
TS_F16 static void lo_hist_f16_avx512(const uint16_t *x, const uint16_t *b, int64_t n, uint32_t prefix, uint32_t *h,
                                      ts_cand *cd, int64_t j0)
{
    const __m512i him = _mm512_set1_epi32((int)0xffff0000u), pre = _mm512_set1_epi32((int)prefix);
    uint32_t v[16];
    for (int64_t j = 0; j < n; j += 16) {
        const int64_t r = n - j < 16 ? n - j : 16;
        const __m512i u = r == 16 ? f16_abs16(x + j, b + j) : f16_tail_abs(x + j, b + j, r);
        unsigned m = _mm512_cmpeq_epi32_mask(_mm512_and_si512(u, him), pre) & (r == 16 ? 0xffffu : (1u << r) - 1);
        if (!m) continue;
        _mm512_storeu_si512((void *)v, u);
        while (m) {
            const int q = __builtin_ctz(m);
            h[v[q] & 0xffffu]++;
            cand_put(cd, j0 + j + q, v[q] & 0xffffu);
            m &= m - 1;
        }
    }
}
#endif

static void ts_delta_hist(float *x, const float *base, int64_t n, uint32_t *h)
{
#ifdef TIES_HAVE_AVX2
    if (cpu_avx512()) {
        delta_hist_avx512(x, base, n, h);
        return;
    }
#endif
    wmat__ties_delta_hist(x, base, n, h);
}

static void ts_lo_hist(const float *d, int64_t n, uint32_t prefix, uint32_t *h, ts_cand *cd, int64_t j0)
{
#ifdef TIES_HAVE_AVX2
    if (cpu_avx512()) {
        lo_hist_avx512(d, n, prefix, h, cd, j0);
        return;
    }
#endif
    for (int64_t j = 0; j < n; j++) {
        uint32_t u;
        memcpy(&u, &d[j], sizeof u);
        u &= 0x7fffffffu;
        if ((u & 0xffff0000u) == prefix) {
            h[u & 0xffffu]++;
            cand_put(cd, j0 + j, u & 0xffffu);
        }
    }
}

static int64_t ts_count_eq(const float *d, int64_t n, float v)
{
#ifdef TIES_HAVE_AVX2
    if (v != 0.0f && cpu_avx512()) return count_eq_avx512(d, n, v);
#endif
    int64_t c = 0;
    for (int64_t j = 0; j < n; j++) c += fabsf(d[j]) == v;
    return c;
}

int wmat__ties_stream_ok(const void *data, wmat_dtype dt, int64_t n, size_t nbytes)
{
    const wmat_dtype_traits *tr = wmat_dtype_info(dt);
    if (!data || !tr || !tr->block_bytes || dt == WMAT_OBJ || dt == WMAT_QPACKED) return 0;
    if (TS_CHUNK % tr->block_size || n % tr->block_size) return 0;
    return wmat_dtype_bytes(dt, (uint64_t)n) == nbytes && nbytes > 0;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The calling thread's system seconds and page faults so far. */
static void thread_sys(double *sys, long *minflt, long *majflt)
{
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    getrusage(RUSAGE_THREAD, &ru);
    *sys = (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
    *minflt = ru.ru_minflt;
    *majflt = ru.ru_majflt;
}

static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Chunk c's task vectors: base into b, model i's deltas into d[i] (only
 * the inputs with want[i]); m entries from index j0. */
static int ts_load(const wmat_ties_src *s, int64_t j0, int64_t m, float *b, float **d, const int *want)
{
    int rc = wmat_to_f32(b, (const unsigned char *)s->base + wmat_dtype_bytes(s->base_dt, (uint64_t)j0), s->base_dt,
                         (uint64_t)m);
    for (int i = 0; i < s->n_in && !rc; i++)
        if (!want || want[i])
            rc = wmat_to_f32(d[i], (const unsigned char *)s->x[i] + wmat_dtype_bytes(s->x_dt[i], (uint64_t)j0), s->x_dt[i],
                             (uint64_t)m);
    return rc;
}

static void ts_sub(float *d, const float *b, int64_t m)
{
    for (int64_t j = 0; j < m; j++) d[j] = d[j] - b[j];
}

int wmat__ties_stream(const wmat_ties_src *s, float *out, int n_threads, wmat_ties_stream_out *r)
{
    const int k_in = s->n_in;
    const int64_t n = s->n, nc = (n + TS_CHUNK - 1) / TS_CHUNK;
    const int nt = n_threads < 1 || nc < 2 ? 1 : n_threads;
    memset(r, 0, sizeof *r);
    r->st.bad = INT64_MAX;
    if (k_in < 1 || k_in > 64) return wmat_set_error(WMAT_ERR_INVALID, "ties: 1..64 models");
    if (s->enc) {
        const wmat_dtype_traits *et = wmat_dtype_info(s->enc_dt);
        if (!et || !et->block_size || TS_CHUNK % et->block_size || n % et->block_size)
            return wmat_set_error(WMAT_ERR_INVALID, "ties: the output type does not encode in whole chunks");
    }
    /* f16 storage everywhere: the passes read the halves directly */
    int h16 = !s->no_fused_load && wmat__ties_f16_direct() && s->base_dt == WMAT_F16;
    for (int i = 0; i < k_in && h16; i++) h16 = s->x_dt[i] == WMAT_F16;
    /* an encoded output other than f32: each chunk's fp32 result in a
     * per-thread buffer first */
    const int enc_buf = s->enc && s->enc_dt != WMAT_F32;
    /* per thread: base + k_in chunk buffers (+ the output's); histograms per thread and input */
    const size_t nbuf = (size_t)nt * (size_t)(k_in + 1 + enc_buf) * TS_CHUNK;
    float *buf = wmat__aligned_alloc(nbuf * sizeof *buf);
    uint32_t *hh = wmat__malloc((size_t)nt * (size_t)k_in * WMAT_TIES_HIST * sizeof *hh);
    uint32_t *hl = wmat__malloc((size_t)nt * (size_t)k_in * 65536 * sizeof *hl);
    int64_t *eqc = wmat__malloc((size_t)k_in * (size_t)nc * sizeof *eqc);
    /* candidates: room for a sixteenth of each thread's share (the bucket
     * of the k-th largest holds ~1% of a tensor's entries) */
    const int64_t ccap = n / (16 * (int64_t)nt) + 1024;
    ts_cand *cand = wmat__calloc((size_t)nt * (size_t)k_in, sizeof *cand);
    uint64_t *cbuf = wmat__malloc((size_t)nt * (size_t)k_in * (size_t)ccap * sizeof *cbuf);
    if (!buf || !hh || !hl || !eqc || !cand || !cbuf) {
        wmat__free(cand);
        wmat__free(cbuf);
        wmat__free(buf);
        wmat__free(hh);
        wmat__free(hl);
        wmat__free(eqc);
        return wmat_set_error(WMAT_ERR_NOMEM, "ties: out of memory for the streamed passes' buffers");
    }
    const size_t bstride = (size_t)(k_in + 1 + enc_buf) * TS_CHUNK;
    int64_t kk[64], cut[64], n_eq[64];
    uint32_t prefix[64];
    int none[64], full[64], need_eq[64];
    float thr[64];
    int bad_rc = WMAT_OK;
    double t = thread_cpu(), tw = wall_now(), sy0, sy1;
    long mi0, mi1, ma0, ma1;
    thread_sys(&sy0, &mi0, &ma0);

    /* pass A: high-bits histograms */
    memset(hh, 0, (size_t)nt * (size_t)k_in * WMAT_TIES_HIST * sizeof *hh);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t c = 0; c < nc; c++) {
        const int th = omp_get_thread_num();
        float *b = buf + (size_t)th * bstride, *d[64];
        for (int i = 0; i < k_in; i++) d[i] = b + (size_t)(i + 1) * TS_CHUNK;
        const int64_t j0 = c * TS_CHUNK, m = n - j0 < TS_CHUNK ? n - j0 : TS_CHUNK;
#ifdef TIES_HAVE_AVX2
        /* f16 read in place (pass_a_buffers: through the buffers; in place
         * was slower when this pass was the one that faulted the mapped
         * pages in, before the read-ahead populated them) */
        if (h16 && !s->pass_a_buffers) {
            const uint16_t *hx[64];
            for (int i = 0; i < k_in; i++) hx[i] = (const uint16_t *)s->x[i] + j0;
            hi_hist_f16_avx512((const uint16_t *)s->base + j0, hx, k_in, m, hh + (size_t)th * k_in * WMAT_TIES_HIST);
            continue;
        }
#endif
        if (ts_load(s, j0, m, b, d, NULL)) __atomic_store_n(&bad_rc, WMAT_ERR_FORMAT, __ATOMIC_RELAXED);
        for (int i = 0; i < k_in; i++) ts_delta_hist(d[i], b, m, hh + ((size_t)th * k_in + i) * WMAT_TIES_HIST);
    }
    r->cpu[0] = thread_cpu() - t;
    thread_sys(&sy1, &mi1, &ma1);
    r->sys[0] = sy1 - sy0;
    r->minflt[0] = mi1 - mi0;
    r->majflt[0] = ma1 - ma0;
    sy0 = sy1, mi0 = mi1, ma0 = ma1;
    r->wall[0] = wall_now() - tw;
    tw = wall_now();
    t = thread_cpu();
    if (bad_rc) goto fail_format;
    /* the bucket of the k-th largest, per input (as wmat__ties_threshold) */
    int any_b = 0;
    for (int i = 0; i < k_in; i++) {
        const int64_t k = s->k[i];
        none[i] = 0;
        full[i] = 0;
        cut[i] = INT64_MAX;
        if (k >= n) {
            full[i] = 1;
            thr[i] = 0.0f;
            continue;
        }
        if (k <= 0) {
            none[i] = 1;
            thr[i] = INFINITY;
            continue;
        }
        int64_t q = k;
        uint32_t bk = (WMAT_TIES_HIST)-1;
        for (; bk > 0; bk--) {
            uint64_t c = 0;
            for (int th = 0; th < nt; th++) c += hh[((size_t)th * k_in + i) * WMAT_TIES_HIST + bk];
            if (q <= (int64_t)c) break;
            q -= (int64_t)c;
        }
        kk[i] = q;
        prefix[i] = bk << 16;
        any_b = 1;
    }
    /* pass B: low-bits histograms inside each input's bucket */
    if (any_b) {
        int want[64];
        for (int i = 0; i < k_in; i++) want[i] = !full[i] && !none[i];
        memset(hl, 0, (size_t)nt * (size_t)k_in * 65536 * sizeof *hl);
        for (size_t q = 0; q < (size_t)nt * (size_t)k_in; q++) cand[q] = (ts_cand){cbuf + q * (size_t)ccap, 0, ccap, 0};
        /* static schedule: thread th holds the th-th run of chunks, so the
         * candidates of threads 0, 1, ... in turn are in index order */
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t c = 0; c < nc; c++) {
            const int th = omp_get_thread_num();
            float *b = buf + (size_t)th * bstride, *d[64];
            for (int i = 0; i < k_in; i++) d[i] = b + (size_t)(i + 1) * TS_CHUNK;
            const int64_t j0 = c * TS_CHUNK, m = n - j0 < TS_CHUNK ? n - j0 : TS_CHUNK;
#ifdef TIES_HAVE_AVX2
            if (h16) {
                for (int i = 0; i < k_in; i++)
                    if (want[i])
                        lo_hist_f16_avx512((const uint16_t *)s->x[i] + j0, (const uint16_t *)s->base + j0, m, prefix[i],
                                           hl + ((size_t)th * k_in + i) * 65536, &cand[(size_t)th * k_in + i], j0);
                continue;
            }
#endif
            if (ts_load(s, j0, m, b, d, want)) __atomic_store_n(&bad_rc, WMAT_ERR_FORMAT, __ATOMIC_RELAXED);
            for (int i = 0; i < k_in; i++)
                if (want[i]) {
                    ts_sub(d[i], b, m);
                    ts_lo_hist(d[i], m, prefix[i], hl + ((size_t)th * k_in + i) * 65536, &cand[(size_t)th * k_in + i], j0);
                }
        }
        if (bad_rc) goto fail_format;
    }
    int any_c = 0;
    for (int i = 0; i < k_in; i++) {
        need_eq[i] = 0;
        if (full[i] || none[i]) continue;
        int64_t q = kk[i], c = 0;
        uint32_t lo = 65535;
        for (;; lo--) {
            c = 0;
            for (int th = 0; th < nt; th++) c += hl[((size_t)th * k_in + i) * 65536 + lo];
            if (lo == 0 || q <= c) break;
            q -= c;
        }
        const uint32_t pat = prefix[i] | lo;
        memcpy(&thr[i], &pat, sizeof thr[i]);
        kk[i] = q;
        n_eq[i] = c;
        need_eq[i] = n_eq[i] > kk[i] && !isnan(thr[i]);
        if (!need_eq[i]) continue;
        int over = 0;
        for (int th = 0; th < nt; th++) over |= cand[(size_t)th * k_in + i].over;
        if (over) { /* too many in the bucket to keep: pass C */
            any_c = 1;
            continue;
        }
        int64_t seen = 0;
        for (int th = 0; th < nt && cut[i] == INT64_MAX; th++) {
            const ts_cand *cd = &cand[(size_t)th * k_in + i];
            for (int64_t q2 = 0; q2 < cd->n; q2++)
                if ((cd->v[q2] & 0xffffu) == lo && ++seen == kk[i]) {
                    cut[i] = (int64_t)(cd->v[q2] >> 16);
                    break;
                }
        }
        need_eq[i] = 0;
    }
    /* pass C: where the threshold's value has a surplus, the index of the
     * kk-th entry equal to it (the first kk in index order are kept) */
    if (any_c) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t c = 0; c < nc; c++) {
            const int th = omp_get_thread_num();
            float *b = buf + (size_t)th * bstride, *d[64];
            for (int i = 0; i < k_in; i++) d[i] = b + (size_t)(i + 1) * TS_CHUNK;
            const int64_t j0 = c * TS_CHUNK, m = n - j0 < TS_CHUNK ? n - j0 : TS_CHUNK;
            if (ts_load(s, j0, m, b, d, need_eq)) __atomic_store_n(&bad_rc, WMAT_ERR_FORMAT, __ATOMIC_RELAXED);
            for (int i = 0; i < k_in; i++)
                if (need_eq[i]) {
                    ts_sub(d[i], b, m);
                    eqc[(size_t)i * (size_t)nc + (size_t)c] = ts_count_eq(d[i], m, thr[i]);
                }
        }
        if (bad_rc) goto fail_format;
        for (int i = 0; i < k_in; i++) {
            if (!need_eq[i]) continue;
            int64_t seen = 0, c = 0;
            for (; c < nc; c++) {
                const int64_t e = eqc[(size_t)i * (size_t)nc + (size_t)c];
                if (seen + e >= kk[i]) break;
                seen += e;
            }
            /* c < nc: the counts sum to n_eq > kk */
            const int64_t j0 = c * TS_CHUNK, m = n - j0 < TS_CHUNK ? n - j0 : TS_CHUNK;
            float *b = buf, *d[64];
            int one[64] = {0};
            one[i] = 1;
            for (int q = 0; q < k_in; q++) d[q] = b + (size_t)(q + 1) * TS_CHUNK;
            if (ts_load(s, j0, m, b, d, one)) goto fail_format;
            ts_sub(d[i], b, m);
            for (int64_t j = 0; j < m; j++)
                if (fabsf(d[i][j]) == thr[i] && ++seen == kk[i]) {
                    cut[i] = j0 + j;
                    break;
                }
        }
    }
    r->cpu[1] = thread_cpu() - t;
    thread_sys(&sy1, &mi1, &ma1);
    r->sys[1] = sy1 - sy0;
    r->minflt[1] = mi1 - mi0;
    r->majflt[1] = ma1 - ma0;
    sy0 = sy1, mi0 = mi1, ma0 = ma1;
    r->wall[1] = wall_now() - tw;
    tw = wall_now();
    t = thread_cpu();
    /* pass D: trim, elect, disjoint mean, per chunk */
    int64_t conflicts = 0, bad = INT64_MAX;
    double sdn = 0, sbn = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : conflicts, sdn, sbn) reduction(min : bad)
    for (int64_t c = 0; c < nc; c++) {
        const int th = omp_get_thread_num();
        float *b = buf + (size_t)th * bstride, *d[64];
        for (int i = 0; i < k_in; i++) d[i] = b + (size_t)(i + 1) * TS_CHUNK;
        const int64_t j0 = c * TS_CHUNK, m = n - j0 < TS_CHUNK ? n - j0 : TS_CHUNK;
        int64_t lcut[64];
        const uint16_t *hx[64];
        for (int i = 0; i < k_in; i++) {
            lcut[i] = cut[i] == INT64_MAX ? INT64_MAX : cut[i] - j0; /* negative: the cut is behind */
            hx[i] = h16 ? (const uint16_t *)s->x[i] + j0 : NULL;
        }
        if (!h16) {
            if (ts_load(s, j0, m, b, d, NULL)) __atomic_store_n(&bad_rc, WMAT_ERR_FORMAT, __ATOMIC_RELAXED);
            for (int i = 0; i < k_in; i++) ts_sub(d[i], b, m);
        }
        const wmat_ties_fuse f = {k_in,      b,           (const float *const *)d,
                                  s->w,      thr,         lcut,
                                  none,      s->lambda,   s->normalize,
                                  h16 ? (const uint16_t *)s->base + j0 : NULL, h16 ? hx : NULL};
        /* the chunk's fp32 result: into out, or (an encoded output) into the
         * output's bytes directly (f32) or this thread's buffer, encoded next */
        float *o = !s->enc ? out + j0 : enc_buf ? b + (size_t)(k_in + 1) * TS_CHUNK : (float *)s->enc + j0;
        wmat_ties_stats st = {0, 0, 0, INT64_MAX};
        wmat__ties_fused_range(&f, o, 0, m, WMAT_TIES_IMPL_AUTO, &st);
        if (enc_buf &&
            wmat_from_f32((unsigned char *)s->enc + wmat_dtype_bytes(s->enc_dt, (uint64_t)j0), s->enc_dt, o, (uint64_t)m))
            __atomic_store_n(&bad_rc, WMAT_ERR_FORMAT, __ATOMIC_RELAXED);
        conflicts += st.conflicts;
        sdn += st.dn;
        sbn += st.bn;
        if (st.bad < INT64_MAX && j0 + st.bad < bad) bad = j0 + st.bad;
    }
    r->cpu[2] = thread_cpu() - t;
    thread_sys(&sy1, &mi1, &ma1);
    r->sys[2] = sy1 - sy0;
    r->minflt[2] = mi1 - mi0;
    r->majflt[2] = ma1 - ma0;
    sy0 = sy1, mi0 = mi1, ma0 = ma1;
    r->wall[2] = wall_now() - tw;
    if (bad_rc) goto fail_format;
    r->st.conflicts = conflicts;
    r->st.dn = sdn;
    r->st.bn = sbn;
    r->st.bad = bad;
    for (int i = 0; i < k_in; i++) {
        r->thr[i] = thr[i];
        r->cut[i] = cut[i];
        r->none[i] = none[i];
    }
    wmat__free(buf);
    wmat__free(hh);
    wmat__free(hl);
    wmat__free(eqc);
    wmat__free(cand);
    wmat__free(cbuf);
    return WMAT_OK;
fail_format:
    wmat__free(buf);
    wmat__free(hh);
    wmat__free(hl);
    wmat__free(eqc);
    wmat__free(cand);
    wmat__free(cbuf);
    return wmat_set_error(WMAT_ERR_FORMAT, "ties: an input's stored values do not convert");
}
