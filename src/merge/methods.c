/* The merge-method table and the per-tensor kernels: linear averaging, task
 * arithmetic, TIES, DARE (alone or before TIES's sign election) and SLERP.
 * Definitions follow the papers and mergekit's semantics (docs/MERGING.md):
 *   task vector d_i = x_i - base;
 *   task_arithmetic: base + lambda sum_i w_i d_i;
 *   ties: d_i trimmed to its top density_i share of magnitudes, the sign of
 *     sum_i w_i d_i elected per entry, the weighted mean of the entries that
 *     agree with it (normalize) or their weighted sum, times lambda;
 *   dare_linear: each d_i entry kept with probability density_i and scaled
 *     by 1 / density_i, then summed as in task arithmetic;
 *   dare_ties: DARE's drop, then TIES's election and disjoint mean;
 *   slerp: spherical interpolation between base (t = 0) and the model
 *     (t = 1), linear when the two are near parallel;
 *   linear: sum_i w_i x_i / sum_i w_i;
 *   opcm: the models one at a time, each task vector projected away from the
 *     top singular directions of the merged one (opcm.c). */
#include "merge.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* ---- keys (each written once; a method lists those it reads) */

#define MK_WEIGHT {"weight", WMAT_PARAM_FLOAT, "1", -1e6, 1e6, NULL, "weight of a model's task vector (per model)", NULL}
#define MK_DENSITY                                                                                                    \
    {"density", WMAT_PARAM_FLOAT, "1", 1e-6, 1, NULL,                                                                 \
     "share of each task vector kept (ties: largest magnitudes; dare: at random, p = 1 - density)", NULL}
#define MK_LAMBDA {"lambda", WMAT_PARAM_FLOAT, "1", -1e3, 1e3, NULL, "scale of the merged task vector", NULL}
#define MK_NORMALIZE_T                                                                                                \
    {"normalize", WMAT_PARAM_BOOL, "true", 0, 0, NULL, "divide by the summed weights (ties: of the agreeing entries); the default is true for linear, ties and dare_ties, false for task_arithmetic and dare_linear", NULL}
#define MK_NORMALIZE_F                                                                                                \
    {"normalize", WMAT_PARAM_BOOL, "false", 0, 0, NULL, "divide by the summed weights (ties: of the agreeing entries); the default is true for linear, ties and dare_ties, false for task_arithmetic and dare_linear", NULL}
#define MK_T {"t", WMAT_PARAM_FLOAT, "0.5", 0, 1, NULL, "slerp: 0 is the base, 1 the other model", NULL}
#define MK_DOT                                                                                                        \
    {"dot_threshold", WMAT_PARAM_FLOAT, "0.9995", 0, 1, NULL,                                                         \
     "slerp: interpolate linearly when |cos| of the two tensors exceeds this", NULL}
#define MK_SEED                                                                                                       \
    {"seed", WMAT_PARAM_INT, "0", 0, 9007199254740992.0, NULL, "dare: seed of the drop masks; opcm: of the shuffled order", NULL}
#define MK_ALPHA                                                                                                      \
    {"alpha", WMAT_PARAM_FLOAT, "0.5", 0, 0.999999, NULL,                                                            \
     "opcm: the top singular directions of the merged task vector whose values sum to this share are protected", NULL}
#define MK_SHUFFLE                                                                                                    \
    {"shuffle", WMAT_PARAM_BOOL, "false", 0, 0, NULL, "opcm: merge the models in a random order (--seed) instead of as listed", NULL}
#define MK_END {NULL, 0, NULL, 0, 0, NULL, NULL, NULL}

static const wmat_param_spec k_linear[] = {MK_WEIGHT, MK_NORMALIZE_T, MK_END};
static const wmat_param_spec k_task[] = {MK_WEIGHT, MK_LAMBDA, MK_NORMALIZE_F, MK_END};
static const wmat_param_spec k_ties[] = {MK_WEIGHT, MK_DENSITY, MK_LAMBDA, MK_NORMALIZE_T, MK_END};
static const wmat_param_spec k_dare[] = {MK_WEIGHT, MK_DENSITY, MK_LAMBDA, MK_NORMALIZE_F, MK_SEED, MK_END};
static const wmat_param_spec k_dare_ties[] = {MK_WEIGHT, MK_DENSITY, MK_LAMBDA, MK_NORMALIZE_T, MK_SEED, MK_END};
static const wmat_param_spec k_slerp[] = {MK_T, MK_DOT, MK_END};
static const wmat_param_spec k_opcm[] = {MK_ALPHA, MK_SHUFFLE, MK_SEED, MK_END};

int wmat__merge_key_per_model(const char *key)
{
    return !strcmp(key, "weight") || !strcmp(key, "density");
}

/* ---- selection */

/* The k-th largest magnitude by a radix select on the bit patterns: for
 * non-negative IEEE floats the pattern's order is the value's order, so
 * two counting passes, over the top 15 bits of |x| (exponent and 7
 * mantissa bits) and then the low 16, narrow the answer down to its exact
 * pattern. The passes only read x (no copy, no reordering), and the cost
 * is 2 n in every case (a quickselect is n expected, n^2 worst, and moves
 * memory; three passes of 11 bits kept the histograms in L1 but cost a
 * fifth of a 1.1B TIES merge). Each pass counts in per-thread histograms
 * (256 KiB, in L2) summed after it, so threads never share a counter. */
#define SEL_BITS 16
float wmat__merge_kth_largest_abs(const float *x, int64_t n, int64_t k, int n_threads)
{
    if (n <= 0 || k < 1) return INFINITY;
    if (k > n) k = n;
    if (n_threads < 1 || n < ((int64_t)1 << 16)) n_threads = 1;
    static const int shifts[2] = {16, 0};
    const uint32_t nb = 1u << SEL_BITS, bm = nb - 1;
    uint32_t prefix = 0, mask = 0;
    int64_t kk = k; /* rank among the entries matching the prefix, from the top */
    int64_t *counts = malloc(nb * sizeof *counts);
    /* counts per thread in 32 bits: a thread's share of one pass is below
     * 2^32 entries for every tensor a model has (4 G entries each) */
    uint32_t *local = malloc((size_t)n_threads * nb * sizeof *local);
    if (!counts || !local || n / n_threads >= ((int64_t)1 << 32)) {
        /* out of memory for 0.5 MiB, or a tensor of 2^32 entries per thread:
         * the exact answer by a plain scan of the bit patterns, slowly */
        free(counts);
        free(local);
        uint32_t lo = 0, hi = 0x7fffffffu; /* the answer lies in [lo, hi] */
        while (lo < hi) {
            const uint32_t mid = lo + (hi - lo + 1) / 2;
            int64_t ge = 0;
            for (int64_t j = 0; j < n; j++) {
                uint32_t u;
                memcpy(&u, &x[j], sizeof u);
                ge += (u & 0x7fffffffu) >= mid;
            }
            if (ge >= k) lo = mid;
            else hi = mid - 1;
        }
        float v;
        memcpy(&v, &lo, sizeof v);
        return v;
    }
    for (int p = 0; p < 2; p++) {
        const int sh = shifts[p];
#pragma omp parallel num_threads(n_threads)
        {
            uint32_t *h = local + (size_t)omp_get_thread_num() * nb;
            memset(h, 0, nb * sizeof *h);
#pragma omp for schedule(static)
            for (int64_t j = 0; j < n; j++) {
                uint32_t u;
                memcpy(&u, &x[j], sizeof u);
                u &= 0x7fffffffu;
                /* pass 2: few entries share the prefix, so the branch is
                 * predicted and the others touch no counter */
                if ((u & mask) == prefix) h[(u >> sh) & bm]++;
            }
        }
        for (uint32_t b = 0; b < nb; b++) {
            int64_t c = 0;
            for (int t = 0; t < n_threads; t++) c += local[(size_t)t * nb + b];
            counts[b] = c;
        }
        uint32_t b = nb - 1;
        for (; b > 0; b--) {
            if (kk <= counts[b]) break;
            kk -= counts[b];
        }
        prefix |= b << sh;
        mask |= bm << sh;
    }
    free(counts);
    free(local);
    float v;
    memcpy(&v, &prefix, sizeof v);
    return v;
}
#undef SEL_BITS

void wmat__merge_trim_topk(float *d, int64_t n, int64_t k, int n_threads)
{
    if (k >= n) return;
    if (k <= 0) {
        memset(d, 0, (size_t)n * sizeof *d);
        return;
    }
    if (n_threads < 1 || n < ((int64_t)1 << 16)) n_threads = 1;
    const float thr = wmat__merge_kth_largest_abs(d, n, k, n_threads);
    /* one branch-free pass (it vectorizes) zeroes what is below the
     * threshold and counts what is kept; only when more entries equal it
     * than may be kept does a second pass drop the surplus, the last first */
    int64_t kept = 0;
#pragma omp parallel for num_threads(n_threads) schedule(static) reduction(+ : kept)
    for (int64_t j = 0; j < n; j++) {
        const int keep = !(fabsf(d[j]) < thr);
        kept += keep;
        d[j] = keep ? d[j] : 0.0f;
    }
    int64_t surplus = kept - k;
    for (int64_t j = n - 1; j >= 0 && surplus > 0; j--)
        if (fabsf(d[j]) == thr) {
            d[j] = 0.0f;
            surplus--;
        }
}

/* The drop mask is drawn per chunk of DARE_CHUNK entries from a stream
 * seeded by (seed, chunk), so the mask depends on the seed only, never on
 * the number of threads. */
#define DARE_CHUNK ((int64_t)1 << 16)

int64_t wmat__merge_dare_chunk(float *d, int64_t m, double density, uint64_t seed, int64_t c)
{
    if (density >= 1.0) return 0;
    const float keep = (float)density, scale = (float)(1.0 / density);
    wmat_rng r;
    wmat_rng_seed(&r, seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(c + 1)));
    int64_t dropped = 0;
    for (int64_t j = 0; j < m; j++) {
        if (wmat_rng_uniform(&r) < keep) {
            d[j] *= scale;
        } else {
            d[j] = 0.0f;
            dropped++;
        }
    }
    return dropped;
}

int64_t wmat__merge_dare(float *d, int64_t n, double density, uint64_t seed, int n_threads)
{
    if (density >= 1.0) return 0;
    const int64_t chunks = (n + DARE_CHUNK - 1) / DARE_CHUNK;
    if (n_threads < 1 || chunks < 2) n_threads = 1;
    int64_t dropped = 0;
#pragma omp parallel for num_threads(n_threads) schedule(static) reduction(+ : dropped)
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t end = (c + 1) * DARE_CHUNK < n ? (c + 1) * DARE_CHUNK : n;
        dropped += wmat__merge_dare_chunk(d + c * DARE_CHUNK, end - c * DARE_CHUNK, density, seed, c);
    }
    return dropped;
}

/* ---- kernels */

static int64_t keep_count(double density, int64_t n)
{
    double k = density * (double)n;
    if (k >= (double)n) return n;
    return (int64_t)k; /* mergekit's int(density * numel) */
}

static void to_deltas(const wmat_merge_args *a)
{
    for (int i = 0; i < a->n_in; i++) {
        float *x = a->x[i];
        const float *b = a->base;
#pragma omp parallel for num_threads(a->n_threads) schedule(static)
        for (int64_t j = 0; j < a->n; j++) x[j] -= b[j];
    }
}

/* out = base + lambda * combined deltas (x[i] hold the deltas). elect: TIES's
 * sign election by summed weighted mass and the mean over the entries that
 * agree with the elected sign. Returns the entries whose kept deltas
 * disagree in sign.
 *
 * Blocks of CB entries, one input at a time, without branches, so the
 * loops vectorize: the per-entry form mispredicted on every random sign
 * and was half the time of a 1.1B TIES merge. Each entry still sums its
 * inputs in order in double, so results do not change; the AVX2 clone has
 * no FMA, so it gives the same bits as the default one. */
#define CB 256
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static int64_t combine_block(const wmat_merge_args *a, float *out, int elect, double inv, int64_t j0, int m)
{
    double s[CB], num[CB], den[CB];
    float pos[CB], neg[CB];
    for (int j = 0; j < m; j++) s[j] = pos[j] = neg[j] = 0;
    for (int i = 0; i < a->n_in; i++) {
        const float *restrict x = a->x[i] + j0;
        const double w = a->weight[i];
        for (int j = 0; j < m; j++) {
            pos[j] = x[j] > 0 ? 1.0f : pos[j];
            neg[j] = x[j] < 0 ? 1.0f : neg[j];
            s[j] += w * (double)x[j];
        }
    }
    float c = 0;
    for (int j = 0; j < m; j++) c += pos[j] * neg[j];
    if (!elect) {
        for (int j = 0; j < m; j++) s[j] *= inv;
    } else {
        for (int j = 0; j < m; j++) num[j] = den[j] = 0;
        for (int i = 0; i < a->n_in; i++) {
            const float *restrict x = a->x[i] + j0;
            const double w = a->weight[i];
            for (int j = 0; j < m; j++) {
                const double d = (double)x[j];
                const int agree = (d > 0) == (s[j] > 0) && d != 0;
                num[j] += agree ? w * d : 0.0;
                den[j] += agree ? w : 0.0;
            }
        }
        if (a->normalize)
            for (int j = 0; j < m; j++) num[j] = den[j] != 0 ? num[j] / (den[j] != 0 ? den[j] : 1.0) : 0.0;
        for (int j = 0; j < m; j++) s[j] = s[j] == 0 ? 0.0 : num[j];
    }
    const float *restrict bs = a->base + j0;
    float *restrict o = out + j0;
    for (int j = 0; j < m; j++) o[j] = (float)((double)bs[j] + a->lambda * s[j]);
    return (int64_t)c;
}

int64_t wmat__merge_combine_serial(const wmat_merge_args *a, float *out, int elect)
{
    double wsum = 0;
    for (int i = 0; i < a->n_in; i++) wsum += a->weight[i];
    const double inv = (a->normalize && wsum != 0) ? 1.0 / wsum : 1.0;
    int64_t conflicts = 0;
    for (int64_t j0 = 0; j0 < a->n; j0 += CB)
        conflicts += combine_block(a, out, elect, inv, j0, (int)(a->n - j0 < CB ? a->n - j0 : CB));
    return conflicts;
}

static int64_t combine(const wmat_merge_args *a, float *out, int elect)
{
    double wsum = 0;
    for (int i = 0; i < a->n_in; i++) wsum += a->weight[i];
    const double inv = (a->normalize && wsum != 0) ? 1.0 / wsum : 1.0;
    const int64_t nb = (a->n + CB - 1) / CB;
    int64_t conflicts = 0;
#pragma omp parallel for num_threads(a->n_threads) schedule(static) reduction(+ : conflicts)
    for (int64_t b = 0; b < nb; b++)
        conflicts += combine_block(a, out, elect, inv, b * CB, (int)(a->n - b * CB < CB ? a->n - b * CB : CB));
    return conflicts;
}
#undef CB

static int m_linear(const wmat_merge_args *a, float *out, wmat_merge_tinfo *info)
{
    double wsum = 0;
    for (int i = 0; i < a->n_in; i++) wsum += a->weight[i];
    if (a->normalize && wsum == 0)
        return wmat_set_error(WMAT_ERR_INVALID, "linear: the weights sum to zero (normalize: false to allow it)");
    const double inv = a->normalize ? 1.0 / wsum : 1.0;
#pragma omp parallel for num_threads(a->n_threads) schedule(static)
    for (int64_t j = 0; j < a->n; j++) {
        double s = 0;
        for (int i = 0; i < a->n_in; i++) s += a->weight[i] * (double)a->x[i][j];
        out[j] = (float)(s * inv);
    }
    (void)info;
    return WMAT_OK;
}

static int m_task_arithmetic(const wmat_merge_args *a, float *out, wmat_merge_tinfo *info)
{
    to_deltas(a);
    info->sign_conflicts = (double)combine(a, out, 0) / (double)a->n;
    return WMAT_OK;
}

static int m_ties(const wmat_merge_args *a, float *out, wmat_merge_tinfo *info)
{
    to_deltas(a);
    double trimmed = 0;
    for (int i = 0; i < a->n_in; i++) {
        const int64_t k = keep_count(a->density[i], a->n);
        wmat__merge_trim_topk(a->x[i], a->n, k, a->n_threads);
        trimmed += (double)(a->n - k);
    }
    info->trimmed = trimmed / ((double)a->n * a->n_in);
    info->sign_conflicts = (double)combine(a, out, 1) / (double)a->n;
    return WMAT_OK;
}

/* The seed of input i's mask: a->seed is per tensor already. */
uint64_t wmat__merge_dare_seed(uint64_t seed, int i)
{
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int dare_common(const wmat_merge_args *a, float *out, wmat_merge_tinfo *info, int elect)
{
    to_deltas(a);
    double dropped = 0;
    for (int i = 0; i < a->n_in; i++) dropped += (double)wmat__merge_dare(a->x[i], a->n, a->density[i], wmat__merge_dare_seed(a->seed, i), a->n_threads);
    info->trimmed = dropped / ((double)a->n * a->n_in);
    info->sign_conflicts = (double)combine(a, out, elect) / (double)a->n;
    return WMAT_OK;
}

static int m_dare_linear(const wmat_merge_args *a, float *out, wmat_merge_tinfo *info)
{
    return dare_common(a, out, info, 0);
}

static int m_dare_ties(const wmat_merge_args *a, float *out, wmat_merge_tinfo *info)
{
    return dare_common(a, out, info, 1);
}

/* slerp(v0, v1; t) = sin((1-t) theta) / sin theta v0 + sin(t theta) / sin theta v1,
 * theta the angle between the tensors as vectors (mergekit's: the angle
 * of the normalized copies, applied to the unnormalized ones). */
static int m_slerp(const wmat_merge_args *a, float *out, wmat_merge_tinfo *info)
{
    const float *v0 = a->base, *v1 = a->x[0];
    const double t = a->t;
    double d = 0, n0 = 0, n1 = 0;
#pragma omp parallel for num_threads(a->n_threads) schedule(static) reduction(+ : d, n0, n1)
    for (int64_t j = 0; j < a->n; j++) {
        d += (double)v0[j] * v1[j];
        n0 += (double)v0[j] * v0[j];
        n1 += (double)v1[j] * v1[j];
    }
    double c = (n0 > 0 && n1 > 0) ? d / sqrt(n0 * n1) : 1.0;
    double s0, s1;
    if (fabs(c) > a->dot_threshold) {
        s0 = 1 - t;
        s1 = t;
        info->slerp_linear = 1;
    } else {
        const double th = acos(c), st = sin(th);
        s0 = sin((1 - t) * th) / st;
        s1 = sin(t * th) / st;
    }
#pragma omp parallel for num_threads(a->n_threads) schedule(static)
    for (int64_t j = 0; j < a->n; j++) out[j] = (float)(s0 * v0[j] + s1 * v1[j]);
    return WMAT_OK;
}

const wmat_merge_method wmat__merge_methods[] = {
    {"linear", m_linear, WMAT_MB_NONE, 1, 64, k_linear, "weighted average of the models: sum w_i x_i / sum w_i", 0, 0, 0},
    {"task_arithmetic", m_task_arithmetic, WMAT_MB_REQUIRED, 1, 64, k_task,
     "base + lambda sum_i w_i (x_i - base)", 0, 0, WMAT_MS_LIN},
    {"ties", m_ties, WMAT_MB_REQUIRED, 1, 64, k_ties,
     "TIES: trim task vectors to their top-density magnitudes, elect signs by mass, disjoint mean", 0, 1, 0},
    {"dare_linear", m_dare_linear, WMAT_MB_REQUIRED, 1, 64, k_dare,
     "DARE: drop delta entries with p = 1 - density, rescale by 1/density, then task arithmetic", 0, 0,
     WMAT_MS_LIN | WMAT_MS_DROP},
    {"dare_ties", m_dare_ties, WMAT_MB_REQUIRED, 1, 64, k_dare_ties,
     "DARE's drop and rescale, then TIES's sign election and disjoint mean", 0, 0,
     WMAT_MS_LIN | WMAT_MS_DROP | WMAT_MS_ELECT},
    {"slerp", m_slerp, WMAT_MB_REQUIRED, 1, 1, k_slerp,
     "spherical interpolation from the base (t=0) to one model (t=1), linear when near parallel", 0, 0, 0},
    {"opcm", wmat__merge_opcm, WMAT_MB_REQUIRED, 1, 64, k_opcm,
     "OPCM: models in order, each task vector projected off the merged one's top singular directions, norm-rescaled", 2, 0, 0},
    {NULL, NULL, 0, 0, 0, NULL, NULL, 0, 0, 0},
};

const wmat_merge_method *wmat__merge_method_find(const char *name)
{
    for (const wmat_merge_method *m = wmat__merge_methods; name && m->name; m++)
        if (!strcmp(m->name, name)) return m;
    return NULL;
}

int wmat__merge_keys(wmat_param_spec *dst, int cap)
{
    int n = 0;
    if (cap < 1) return wmat_set_error(WMAT_ERR_INVALID, "merge keys: no room");
    for (const wmat_merge_method *m = wmat__merge_methods; m->name; m++) {
        /* normalize's default differs by method; the first row's stands in the union */
        int rc = wmat__params_merge(dst, cap - 1, &n, m->schema);
        if (rc) return rc;
    }
    dst[n] = (wmat_param_spec)MK_END;
    return WMAT_OK;
}

double wmat__mvalue_at(const wmat_mvalue *p, int l, int L, double def)
{
    if (!p || p->n <= 0) return def;
    if (p->n == 1) return p->v[0];
    if (l <= 0 || L <= 1) return p->v[0];
    if (l >= L - 1) return p->v[p->n - 1];
    const double pos = (double)l / (double)(L - 1) * (double)(p->n - 1);
    const int i = (int)pos;
    const double f = pos - i;
    return i + 1 < p->n ? p->v[i] * (1 - f) + p->v[i + 1] * f : p->v[p->n - 1];
}
