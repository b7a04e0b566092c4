/* MemoryFormer's Memory Layer (Ding et al., NeurIPS 2024, "MemoryFormer:
 * Minimize Transformer Computation by Removing Fully-Connected Layers"):
 * the linear layer x -> y (in -> out) becomes a set of hashed lookup
 * tables, trained from scratch (replaces_base).
 *
 * The input is normalised, z = x / rms(x) (the paper's block puts a Norm
 * before each Memory Layer; here without a learned gain, so the layer that
 * reads the SwiGLU product silu(g) * u hashes values of order 1 as the
 * others do), then cut into K = in / tau chunks z_k of tau = c->rank
 * entries. Chunk k is hashed by the signs of its entries (the paper hashes
 * x itself, no projection) to the row h_k = sum_i [z_k,i >= 0] 2^i of its
 * table T_k (2^tau rows of out floats), and
 *
 *     y = b + sum_k p_k T_k[h_k],
 *     p_k = exp(|z_k|_1) / prod_i (exp(z_k,i) + exp(-z_k,i))
 *         = prod_i sigmoid(2 |z_k,i|),
 *
 * p_k the paper's score of the selected bucket: the softmax over all 2^tau
 * sign vectors s of <z_k, s> (temperature 1) taken at s = sign(z_k), so
 * gradients reach x through p_k:
 *     d p_k / d z_k,i = p_k 2 sign(z_k,i) (1 - sigmoid(2 |z_k,i|)).
 * (The authors' released code uses another score, |z_k|_1 / prod_i (1 +
 * exp(-2 |z_k,i|)); this follows the paper's equation.) The hash itself is
 * piecewise constant: the layer is differentiable everywhere except where
 * an entry of z changes sign, where it jumps (the paper's design).
 *
 * Tensors per layer: the K tables stacked, (K 2^tau, out), N(0, 0.02^2)
 * at init as the reference's, and the bias b (out), 0 at init.
 * Parameters K 2^tau out + out against a linear's in out: 2^tau / tau
 * times as many. Forward FLOPs per token (wmat__memoryformer_flops): K
 * out multiply-adds of the gather-sum (2 K out), the bias (out), and about
 * 8 per input entry for the norm, the hash and p; a dense linear's 2 in out
 * is tau times (2 in out / (2 K out)) that of the gather.
 *
 * Not a weight delta (not_mergeable): no merged model, no PEFT file; the
 * trainer evaluates through its own forward. Nothing is kept from forward
 * for backward (the codes and scores are recomputed from X); scratch: z
 * and dz of one row. */
#include "adapter.h"

#include <math.h>
#include <string.h>

#define MF_TAU_MAX 12
#define MF_INIT_STD 0.02f
#define MF_EPS 1e-6f

static int chunks(const wmat__adapter_cfg *c, int in) { return in / c->rank; }

static void mf_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    rows[0] = chunks(c, in) << c->rank; /* the K tables, stacked */
    cols[0] = out;
    rows[1] = out; /* bias */
    cols[1] = 0;
}

static int mf_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    (void)base; /* none: the entry is the layer */
    if (c->rank < 1 || c->rank > MF_TAU_MAX)
        return wmat_set_error(WMAT_ERR_INVALID,
                              "memoryformer: tau (--rank, the bits of a hash code) %d must be in [1, %d] (%s)", c->rank,
                              MF_TAU_MAX, what);
    if (in % c->rank)
        return wmat_set_error(WMAT_ERR_INVALID,
                              "memoryformer: tau %d does not divide the %d inputs of %s (its chunks are tau wide)", c->rank,
                              in, what);
    if ((double)chunks(c, in) * (double)(1 << c->rank) * (double)out > 2147483647.0)
        return wmat_set_error(WMAT_ERR_INVALID, "memoryformer: the tables of %s would hold more than 2^31 - 1 floats",
                              what);
    return WMAT_OK;
}

static size_t mf_act_floats(const wmat__adapter_cfg *c, int BT)
{
    (void)c, (void)BT;
    return 0;
}

static size_t mf_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    (void)c, (void)BT, (void)out;
    return 2 * (size_t)in;
}

static float mf_scale(const wmat__adapter_cfg *c)
{
    (void)c;
    return 1.0f;
}

static int mf_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                   int out, wmat_rng *rng)
{
    (void)fixed, (void)base, (void)W;
    const size_t n = (size_t)(chunks(c, in) << c->rank) * out;
    for (size_t j = 0; j < n; j++) w[0][j] = MF_INIT_STD * wmat_rng_normal(rng);
    return WMAT_OK; /* the bias stays 0 */
}

static float sigmoidf(float v) { return 1.0f / (1.0f + expf(-v)); }

/* z = x / rms(x); returns 1 / rms */
static float normalise(float *z, const float *x, int in)
{
    double s = 0;
    for (int i = 0; i < in; i++) s += (double)x[i] * x[i];
    const float r = (float)(1.0 / sqrt(s / in + MF_EPS));
    for (int i = 0; i < in; i++) z[i] = x[i] * r;
    return r;
}

/* chunk k's row index and score */
static int code_of(const float *zk, int tau, float *p)
{
    int h = 0;
    float q = 1.0f;
    for (int i = 0; i < tau; i++) {
        if (zk[i] >= 0.0f) h |= 1 << i;
        q *= sigmoidf(2.0f * fabsf(zk[i]));
    }
    *p = q;
    return h;
}

static void mf_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                       const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)act, (void)fixed, (void)base;
    const int tau = c->rank, K = chunks(c, in), rows = 1 << tau;
    float *z = scratch;
    for (int t = 0; t < BT; t++) {
        float *y = Y + (size_t)t * out;
        normalise(z, X + (size_t)t * in, in);
        for (int o = 0; o < out; o++) y[o] += w[1][o];
        for (int k = 0; k < K; k++) {
            float p;
            const int h = code_of(z + (size_t)k * tau, tau, &p);
            const float *row = w[0] + ((size_t)k * rows + h) * out;
            for (int o = 0; o < out; o++) y[o] += p * row[o];
        }
    }
}

static void mf_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                        const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                        const float *act, int BT, int in, int out)
{
    (void)fixed, (void)base, (void)act;
    const int tau = c->rank, K = chunks(c, in), rows = 1 << tau;
    float *z = scratch, *dz = scratch + in;
    for (int t = 0; t < BT; t++) {
        const float *dy = dY + (size_t)t * out;
        if (dw[1])
            for (int o = 0; o < out; o++) dw[1][o] += dy[o];
        if (!dw[0] && !dX) continue;
        const float r = normalise(z, X + (size_t)t * in, in);
        for (int k = 0; k < K; k++) {
            const float *zk = z + (size_t)k * tau;
            float p;
            const int h = code_of(zk, tau, &p);
            const size_t off = ((size_t)k * rows + h) * out;
            const float *row = w[0] + off;
            double dp = 0;
            for (int o = 0; o < out; o++) dp += (double)dy[o] * row[o];
            if (dw[0])
                for (int o = 0; o < out; o++) dw[0][off + o] += p * dy[o];
            for (int i = 0; i < tau; i++) {
                const float a = fabsf(zk[i]), sg = zk[i] >= 0.0f ? 1.0f : -1.0f;
                dz[k * tau + i] = (float)dp * p * 2.0f * sg * (1.0f - sigmoidf(2.0f * a));
            }
        }
        if (!dX) continue;
        /* through z = x r, r = (mean x^2 + eps)^-1/2: dx = r (dz - z mean(dz z)) */
        double m = 0;
        for (int i = 0; i < in; i++) m += (double)dz[i] * z[i];
        m /= in;
        float *dx = dX + (size_t)t * in;
        for (int i = 0; i < in; i++) dx[i] += r * (dz[i] - z[i] * (float)m);
    }
}

double wmat__memoryformer_flops(int tau, int in, int out)
{
    const double K = (double)(in / tau);
    return 2.0 * K * out + out + 8.0 * in;
}

const wmat__adapter wmat__adapter_memoryformer = {
    .name = "memoryformer",
    .summary = "MemoryFormer: the linear is a Memory Layer, sum over tau-wide chunks of rms-normed x of p_k T_k[sign hash] "
               "(tau --rank; 2^tau/tau x the parameters, ~1/tau the FLOPs), trained from scratch; not mergeable",
    .n_tensors = 2,
    .tensor_key = {"memory_tables", "memory_bias"},
    .rows_are_out = {0, 1},
    .replaces_base = 1,
    .shapes = mf_shapes,
    .check = mf_check,
    .not_mergeable = "MemoryFormer is not a weight delta (hashed table lookups of the layer's input): it cannot be "
                     "written as a weight; keep the trained model in a training checkpoint (--checkpoint)",
    .act_floats = mf_act_floats,
    .scratch_floats = mf_scratch_floats,
    .scale = mf_scale,
    .init = mf_init,
    .forward = mf_forward,
    .backward = mf_backward,
};
