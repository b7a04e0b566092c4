/* AdamW with 8-bit states: the block-wise dynamic quantization of
 * Dettmers et al. 2022 ("8-bit optimizers via block-wise quantization",
 * bitsandbytes' Adam8bit with blockwise states).
 *
 * Both moments are stored as 8-bit codes into a 256-entry "dynamic" code
 * book, normalized per block of BLK weights by the block's absmax (fp32):
 * m with the signed book, v with the unsigned one, each code the nearest
 * book value. The dynamic book spends its codes like a float with a
 * variable-length exponent: decade e (1e-6 .. 1) holds 2^e (signed) or
 * 2^(e+1) (unsigned) values, the midpoints of equal steps over
 * [0.1, 1] x 10^(e-6), plus 0 and 1. So a block keeps relative precision
 * over six decades below its absmax, where a linear code keeps two.
 *
 * Within a step the moments are fp32: each block is dequantized, updated
 * with the exact gradient, used for the update, and requantized; only what
 * is kept between steps is 8-bit. One change from the nearest-code rule: a
 * non-zero v is stored as at least the smallest non-zero code, so a weight
 * whose gradient falls to 0 (a token not seen for a while) cannot be left
 * with m > 0 over v = 0, which would make its next step m / eps.
 *
 * Bytes per weight: 2 + 8 / BLK (2.0039 at BLK 2048): 25.05% of AdamW's 8. */
#include "optim.h"

#include <math.h>

#define BLK 2048

/* The two code books, ascending. sgn: 127 negative values, 0, 127
 * positive values, 1 (so 0 has index 127). uns: 0, 254 values, 1. */
static void dynamic_books(float *sgn, float *uns)
{
    double pos[127], up[254];
    int np = 0, nu = 0;
    for (int e = 0; e < 7; e++) {
        const double dec = pow(10.0, (double)(e - 6));
        for (int signed_book = 1; signed_book >= 0; signed_book--) {
            const int k = signed_book ? 1 << e : 1 << (e + 1); /* steps over [0.1, 1] */
            for (int j = 0; j < k; j++) {
                const double lo = 0.1 + 0.9 * j / k, hi = 0.1 + 0.9 * (j + 1) / k;
                if (signed_book) pos[np++] = dec * 0.5 * (lo + hi);
                else up[nu++] = dec * 0.5 * (lo + hi);
            }
        }
    }
    for (int i = 0; i < 127; i++) sgn[i] = (float)-pos[126 - i];
    sgn[127] = 0.0f;
    for (int i = 0; i < 127; i++) sgn[128 + i] = (float)pos[i];
    sgn[255] = 1.0f;
    uns[0] = 0.0f;
    for (int i = 0; i < 254; i++) uns[1 + i] = (float)up[i];
    uns[255] = 1.0f;
}

/* Index of the book value nearest x (ties to the lower magnitude). The
 * book's layout gives it without a search: |x|'s decade by six
 * comparisons, its step within the decade by one multiply. Inside a
 * decade the codes are the steps' midpoints, so the step's code is the
 * nearest; only in the first or last step of a decade can the neighbouring
 * decade's code (or 0, or 1) be nearer. (A binary search over the book,
 * branching or not, made the step 10 to 50x AdamW's.) */
static inline int code_of(const float *book, float a, int is_signed) /* a >= 0: its index in the positive side */
{
    static const float inv[7] = {1e6f, 1e5f, 1e4f, 1e3f, 1e2f, 1e1f, 1.0f};
    const int e = (a >= 1e-6f) + (a >= 1e-5f) + (a >= 1e-4f) + (a >= 1e-3f) + (a >= 1e-2f) + (a >= 1e-1f);
    const int k = is_signed ? 1 << e : 2 << e; /* steps in decade e */
    float t = (a * inv[e] - 0.1f) * ((float)k / 0.9f);
    t = t > 0.0f ? t : 0.0f; /* clamped as a float: a NaN becomes 0, not an undefined conversion */
    t = t < (float)(k - 1) ? t : (float)(k - 1);
    const int j = (int)t;
    const int c = (is_signed ? 128 : 0) + k - 1 + j; /* after 0 and the lower decades' codes */
    /* flags, not branches: which side wins is data, not predictable */
    const int down = (j == 0) & (a - book[c - 1] <= book[c] - a);
    const int up = (j == k - 1) & (book[c + 1] - a < a - book[c]);
    return c - down + (up & !down);
}

/* sgn: x in [-1, 1] (there is no -1 code: sgn[0] is the most negative);
 * uns: x in [0, 1]. */
static inline uint8_t nearest_sgn(const float *sgn, float x)
{
    const int c = code_of(sgn, fabsf(x), 1);
    return (uint8_t)(x >= 0.0f ? c : 254 - (c < 254 ? c : 254));
}

static size_t q8_elems(int k, size_t n) { return (k == 0 || k == 2) ? n : (n + BLK - 1) / BLK; }

static void adamw8_step(float *p, const float *g, void *const *state, size_t n, const wmat__optim_hparams *h)
{
    uint8_t *mq = state[0], *vq = state[2];
    float *ma = state[1], *va = state[3];
    float sgn[256], uns[256];
    dynamic_books(sgn, uns);
    const float b1 = h->beta1, b2 = h->beta2, eps = h->eps, lr = h->lr, wd = h->weight_decay;
    const float bc1 = 1.0f - powf(b1, (float)h->step), bc2 = 1.0f - powf(b2, (float)h->step);
    const long nb = (long)((n + BLK - 1) / BLK);
#pragma omp parallel for num_threads(h->nt) schedule(static) if (n > 32768)
    for (long b = 0; b < nb; b++) {
        const size_t i0 = (size_t)b * BLK, i1 = i0 + BLK < n ? i0 + BLK : n;
        float m[BLK], v[BLK], am = 0.0f, av = 0.0f;
        for (size_t i = i0; i < i1; i++) {
            const float mi = b1 * (sgn[mq[i]] * ma[b]) + (1.0f - b1) * g[i];
            const float vi = b2 * (uns[vq[i]] * va[b]) + (1.0f - b2) * g[i] * g[i];
            const float u = (mi / bc1) / (sqrtf(vi / bc2) + eps);
            p[i] -= lr * (u + wd * p[i]);
            m[i - i0] = mi;
            v[i - i0] = vi;
            am = fmaxf(am, fabsf(mi));
            av = fmaxf(av, vi);
        }
        ma[b] = am;
        va[b] = av;
        /* by the reciprocal: a division per element would cost more than
         * the rest of the quantization (the code may then differ from the
         * exact nearest one by a rounding at a step boundary) */
        const float rm = am > 0.0f ? 1.0f / am : 0.0f, rv = av > 0.0f ? 1.0f / av : 0.0f;
        for (size_t i = i0; i < i1; i++) {
            mq[i] = nearest_sgn(sgn, m[i - i0] * rm);
            uint8_t c = (uint8_t)code_of(uns, v[i - i0] * rv, 0);
            vq[i] = c == 0 && v[i - i0] > 0.0f ? 1 : c;
        }
    }
}

const wmat__optimizer wmat__optim_adamw8bit = {
    .name = "adamw8bit",
    .summary = "AdamW with 8-bit states: block-wise dynamic quantization of m and v (bitsandbytes' scheme, "
               "block 2048: 2.004 bytes per weight)",
    .n_states = 4,
    .states = {{"m.q", WMAT_ST_U8, 1}, {"m.absmax", WMAT_ST_F32, sizeof(float)},
               {"v.q", WMAT_ST_U8, 1}, {"v.absmax", WMAT_ST_F32, sizeof(float)}},
    .state_elems = q8_elems,
    .step = adamw8_step,
    .serialize = wmat__optim_serialize_raw,
    .deserialize = wmat__optim_deserialize_raw,
};
