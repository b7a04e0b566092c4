/* OFQ (Liu et al., ICML 2023, "Oscillation-free Quantization for Low-bit
 * Vision Transformers"): quantization-aware training of the linear
 * weights, as three entries that replace the layers they target
 * (replaces_base; the rest of the model trains as in full training):
 *
 *   ofq-lsq     the baseline the paper argues against: a learned step per
 *               group (LSQ, Esser et al.: init 2 mean|w| / sqrt(Qp), its
 *               gradient scaled by 1 / sqrt(Qp * group)), the weights'
 *               gradient masked outside the clipping range;
 *   ofq-statsq  StatsQ: the step computed from the weights at every
 *               forward, 2 mean|w| / 2^(b-1) per group, no gradient through
 *               it, the weights' gradient passed straight through;
 *   ofq         StatsQ + CGA (confidence-guided annealing): during the last
 *               qat.cga_steps steps (the tail of the cosine schedule: the
 *               paper's annealing stage) only the weights within qat.cga_range
 *               (in levels) of a decision boundary keep training; all
 *               others are frozen (their gradient zeroed and their value
 *               restored after the optimizer step, as the paper's code
 *               does against momentum and decay).
 *
 * Every entry counts oscillations after every step (ofq.h: a level change
 * opposite to the weight's previous change) and reports them (status).
 * The trained layer is a packed quantized weight (qpacked, symmetric,
 * groups along inputs) holding exactly the levels and f16 steps of the
 * fake-quant forward (ofq.h's grid); a layer whose inputs are not a
 * multiple of 32 (the packed kind's chunk) is written with the same values
 * as f32 in a `sparse` weight instead. OFQ's StatsQ uses a grid without a
 * zero level ((k + 1/2) s / 2^(b-1)); the packed kind stores integer zero
 * points, so the entries use StatsQ's step on the integer grid it runs.
 *
 * Tensors: 0 the latent f32 weight (out, in), started from the model's;
 * ofq-lsq: 1 the steps, one per group (a vector). Frozen data per layer:
 * a header of counters, the levels of the last step, the sign of each
 * weight's last level change, whether it ever oscillated; ofq: the
 * weights before the step (what CGA restores). */
#include "adapter.h"
#include "ofq.h"

#include "../wop/kern_sparse.h"
#include "../wop/qstore.h"
#include "../wop/quant.h"
#include "../wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------ the grid */

static int qmin(int bits) { return -(1 << (bits - 1)); }
static int qmax(int bits) { return (1 << (bits - 1)) - 1; }

int wmat__ofq_level(float w, float d, int bits)
{
    const float v = roundf(w / d);
    if (!(v >= (float)qmin(bits))) return v != v ? 0 : qmin(bits); /* NaN: level 0 */
    if (v > (float)qmax(bits)) return qmax(bits);
    return (int)v;
}

static float f16r(float x) { return wmat_f16_to_f32(wmat_f32_to_f16(x)); }

#define OFQ_STEP_MIN 6.103515625e-05f /* the smallest positive normal f16 */

float wmat__ofq_statsq_step(const float *w, size_t n, int bits)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += fabs((double)w[i]);
    float d = f16r((float)(2.0 * s / (double)(n ? n : 1) / (double)(1 << (bits - 1))));
    return d >= OFQ_STEP_MIN ? d : OFQ_STEP_MIN;
}

float wmat__ofq_lsq_init(const float *w, size_t n, int bits)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += fabs((double)w[i]);
    return (float)(2.0 * s / (double)(n ? n : 1) / sqrt((double)qmax(bits)));
}

float wmat__ofq_step16(float s)
{
    const float d = f16r(s > 1e-5f ? s : 1e-5f);
    return d > 0.0f ? d : OFQ_STEP_MIN;
}

int wmat__ofq_cga_trains(float w, float d, int bits, float range)
{
    const float v = w / d;
    const float b = floorf(v) + 0.5f; /* the nearest boundary is floor(v) + 1/2 or one below/above it */
    for (int k = -1; k <= 1; k++) {
        const float h = b + (float)k;
        if (h < (float)qmin(bits) + 0.5f || h > (float)qmax(bits) - 0.5f) continue; /* not between two levels */
        if (v - h <= range && v - h >= -range) return 1;
    }
    return 0;
}

int64_t wmat__ofq_track(int8_t *prev, int8_t *dir, uint8_t *ever, const int8_t *cur, size_t n, int64_t *flips)
{
    int64_t osc = 0, sw = 0;
    for (size_t i = 0; i < n; i++) {
        const int delta = (int)cur[i] - (int)prev[i];
        if (!delta) continue;
        const int8_t s = delta > 0 ? 1 : -1;
        sw++;
        if (dir[i] == -s) {
            osc++;
            ever[i] |= 1;
        }
        dir[i] = s;
        prev[i] = cur[i];
    }
    if (flips) *flips += sw;
    return osc;
}

/* ------------------------------------------------------------ layout */

enum { MODE_STATSQ = 0, MODE_LSQ = 1 };

typedef struct {
    int64_t steps;      /* after_step calls */
    int64_t osc;        /* oscillations (weights that oscillated, summed over steps) */
    int64_t osc_late;   /* ... within the last cga_steps steps (the annealing stage, CGA or not) */
    int64_t late_steps; /* steps counted in osc_late */
    int64_t flips;      /* level changes, summed over steps */
    int64_t frozen;     /* CGA: weights frozen at the last step */
    int64_t cga_on;     /* CGA: 1 when the next step is in the annealing stage (backward masks) */
    int64_t frozen_sum; /* CGA: frozen weights summed over its steps */
} ofq_hdr;

static size_t al16(size_t n) { return (n + 15) & ~(size_t)15; }

typedef struct {
    ofq_hdr *h;
    int8_t *lev, *dir;
    uint8_t *ever;
    float *wprev; /* ofq only */
} ofq_fix;

static ofq_fix fix_of(void *fixed, int in, int out)
{
    const size_t n = (size_t)in * out;
    ofq_fix f;
    char *p = fixed;
    f.h = (ofq_hdr *)p;
    p += sizeof(ofq_hdr);
    f.lev = (int8_t *)p;
    f.dir = f.lev + n;
    f.ever = (uint8_t *)(f.dir + n);
    f.wprev = (float *)((char *)fixed + al16(sizeof(ofq_hdr) + 3 * n));
    return f;
}

static size_t fixed_common(int in, int out) { return al16(sizeof(ofq_hdr) + 3 * (size_t)in * out); }
static size_t fx_bytes(const wmat__adapter_cfg *c, int in, int out)
{
    (void)c;
    return fixed_common(in, out);
}
static size_t fx_bytes_cga(const wmat__adapter_cfg *c, int in, int out)
{
    (void)c;
    return fixed_common(in, out) + (size_t)in * out * sizeof(float);
}

static int bits_of(const wmat__adapter_cfg *c) { return c->qat.bits ? c->qat.bits : 4; }
static int group_of(const wmat__adapter_cfg *c, int in) { return c->qat.group > 0 ? c->qat.group : in; }
static float range_of(const wmat__adapter_cfg *c) { return c->qat.cga_range > 0 ? c->qat.cga_range : 0.0f; }
/* the annealing stage: the last `late` steps of `steps` */
static int late_of(const wmat__adapter_cfg *c, int steps)
{
    int l = c->qat.cga_steps < 0 ? steps / 5 : c->qat.cga_steps;
    return l > steps ? steps : l;
}

/* the step of every group: StatsQ from W, LSQ from its learned steps */
static void steps_of(const wmat__adapter_cfg *c, int mode, const float *W, const float *lsq, int in, int out, float *d)
{
    const int G = group_of(c, in), bits = bits_of(c);
    const size_t ng = (size_t)out * (in / G);
    for (size_t g = 0; g < ng; g++)
        d[g] = mode == MODE_LSQ ? wmat__ofq_step16(lsq[g]) : wmat__ofq_statsq_step(W + g * G, (size_t)G, bits);
}

/* ------------------------------------------------------------ the entry */

static void q_shapes_statsq(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    (void)c;
    rows[0] = out;
    cols[0] = in;
}
static void q_shapes_lsq(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    rows[0] = out;
    cols[0] = in;
    rows[1] = out * (in / group_of(c, in)); /* one step per group: a vector */
    cols[1] = 0;
}

static int q_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    (void)base, (void)out;
    const int bits = bits_of(c);
    if (bits < 2 || bits > 8)
        return wmat_set_error(WMAT_ERR_INVALID, "ofq: bits %d must be in 2..8", bits);
    if (c->qat.group < 0 || (c->qat.group > 0 && (c->qat.group % 32 || in % c->qat.group)))
        return wmat_set_error(WMAT_ERR_INVALID,
                              "ofq: group %d must be 0 (one step per output channel) or a multiple of 32 dividing the "
                              "%d inputs of %s", c->qat.group, in, what);
    if (!(c->qat.cga_range >= 0.0f && c->qat.cga_range < 0.5f))
        return wmat_set_error(WMAT_ERR_INVALID, "ofq: the CGA boundary range %g must be in [0, 0.5) (levels)",
                              (double)c->qat.cga_range);
    return WMAT_OK;
}

/* Levels of the written data must be on the grid, directions signs, the
 * counters not negative. */
static int q_fixed_valid(const wmat__adapter_cfg *c, const void *fixed, int in, int out)
{
    ofq_fix f = fix_of((void *)fixed, in, out);
    const int bits = bits_of(c);
    const ofq_hdr *h = f.h;
    if (h->steps < 0 || h->osc < 0 || h->osc_late < 0 || h->late_steps < 0 || h->flips < 0 || h->frozen < 0 ||
        (h->cga_on != 0 && h->cga_on != 1) || h->frozen_sum < 0)
        return 0;
    for (size_t i = 0; i < (size_t)in * out; i++)
        if (f.lev[i] < qmin(bits) || f.lev[i] > qmax(bits) || f.dir[i] < -1 || f.dir[i] > 1 || f.ever[i] > 1) return 0;
    return 1;
}

static size_t q_act_floats(const wmat__adapter_cfg *c, int BT)
{
    (void)c, (void)BT;
    return 0;
}

/* Wq (out, in), the weight gradient (out, in), the steps */
static size_t q_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    (void)BT;
    return 2 * al16((size_t)in * out) + al16((size_t)out * (in / group_of(c, in)));
}

static float q_scale(const wmat__adapter_cfg *c)
{
    (void)c;
    return 1.0f;
}

/* Wq = d_g * level, every weight of every group */
static void fake_quant(const wmat__adapter_cfg *c, const float *W, const float *d, int in, int out, float *Wq)
{
    const int G = group_of(c, in), bits = bits_of(c);
    const size_t n = (size_t)in * out;
    for (size_t i = 0; i < n; i++) {
        const float dg = d[i / G];
        Wq[i] = dg * (float)wmat__ofq_level(W[i], dg, bits);
    }
}

static void levels_of(const wmat__adapter_cfg *c, const float *W, const float *d, int in, int out, int8_t *lev)
{
    const int G = group_of(c, in), bits = bits_of(c);
    for (size_t i = 0; i < (size_t)in * out; i++) lev[i] = (int8_t)wmat__ofq_level(W[i], d[i / G], bits);
}

static int init_any(const wmat__adapter_cfg *c, int mode, int cga, float *const *w, void *fixed, const float *W, int in,
                    int out, wmat_rng *rng)
{
    const size_t n = (size_t)in * out;
    const int G = group_of(c, in), bits = bits_of(c);
    if (W) {
        memcpy(w[0], W, n * sizeof(float));
    } else {
        /* no f32 weight to start from (a new model): Kaiming-uniform, as
         * the other entries that replace a layer */
        const float bd = 1.0f / sqrtf((float)in);
        for (size_t i = 0; i < n; i++) w[0][i] = (2.0f * wmat_rng_uniform(rng) - 1.0f) * bd;
    }
    if (mode == MODE_LSQ)
        for (size_t g = 0; g < n / G; g++) w[1][g] = wmat__ofq_lsq_init(w[0] + g * G, (size_t)G, bits);
    ofq_fix f = fix_of(fixed, in, out);
    memset(f.h, 0, sizeof *f.h);
    float *d = wmat__malloc((n / G) * sizeof(float));
    if (!d) return wmat_set_error(WMAT_ERR_NOMEM, "ofq: out of memory");
    steps_of(c, mode, w[0], mode == MODE_LSQ ? w[1] : NULL, in, out, d);
    levels_of(c, w[0], d, in, out, f.lev);
    wmat__free(d);
    memset(f.dir, 0, n);
    memset(f.ever, 0, n);
    if (cga) {
        memcpy(f.wprev, w[0], n * sizeof(float));
        f.h->cga_on = late_of(c, c->steps) >= c->steps && c->steps > 0;
    }
    return WMAT_OK;
}

static int init_statsq(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W,
                       int in, int out, wmat_rng *rng)
{
    (void)base;
    return init_any(c, MODE_STATSQ, 0, w, fixed, W, in, out, rng);
}
static int init_cga(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                    int out, wmat_rng *rng)
{
    (void)base;
    return init_any(c, MODE_STATSQ, 1, w, fixed, W, in, out, rng);
}
static int init_lsq(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                    int out, wmat_rng *rng)
{
    (void)base;
    return init_any(c, MODE_LSQ, 0, w, fixed, W, in, out, rng);
}

static void forward_any(const wmat__adapter_cfg *c, int mode, float *Y, float *scratch, const float *X,
                        const float *const *w, int BT, int in, int out)
{
    float *Wq = scratch, *d = scratch + 2 * al16((size_t)in * out);
    steps_of(c, mode, w[0], mode == MODE_LSQ ? w[1] : NULL, in, out, d);
    fake_quant(c, w[0], d, in, out, Wq);
    wmat_sgemm(0, 1, BT, out, in, 1.0f, X, in, Wq, in, 1.0f, Y, out); /* Y += X Wq^T */
}

static void fwd_statsq(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                       const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)act, (void)fixed, (void)base;
    forward_any(c, MODE_STATSQ, Y, scratch, X, w, BT, in, out);
}
static void fwd_lsq(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                    const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)act, (void)fixed, (void)base;
    forward_any(c, MODE_LSQ, Y, scratch, X, w, BT, in, out);
}

/* dX += dY Wq; the latent weight's gradient through the straight-through
 * estimator: StatsQ passes dWq to every weight (CGA's annealing stage:
 * only to those its rule keeps training), LSQ to the weights inside the
 * clipping range, and gives each step its gradient
 * g sum dWq * (level - w/d inside, the clipped level outside), g = 1/sqrt(Qp G). */
static void backward_any(const wmat__adapter_cfg *c, int mode, int cga, float *dX, float *const *dw, float *scratch,
                         const float *dY, const float *X, const float *const *w, const void *fixed, int BT, int in,
                         int out)
{
    const size_t n = (size_t)in * out;
    float *Wq = scratch, *Gw = scratch + al16(n), *d = scratch + 2 * al16(n);
    const int G = group_of(c, in), bits = bits_of(c);
    steps_of(c, mode, w[0], mode == MODE_LSQ ? w[1] : NULL, in, out, d);
    if (dX) {
        fake_quant(c, w[0], d, in, out, Wq);
        wmat_sgemm(0, 0, BT, in, out, 1.0f, dY, out, Wq, in, 1.0f, dX, in);
    }
    const int want_s = mode == MODE_LSQ && dw[1];
    if (!dw[0] && !want_s) return;
    const int mask = cga && fix_of((void *)fixed, in, out).h->cga_on;
    if (mode == MODE_STATSQ && !mask) {
        if (dw[0]) wmat_sgemm(1, 0, out, in, BT, 1.0f, dY, out, X, in, 1.0f, dw[0], in); /* straight through */
        return;
    }
    wmat_sgemm(1, 0, out, in, BT, 1.0f, dY, out, X, in, 0.0f, Gw, in); /* dWq */
    if (mode == MODE_STATSQ) {
        const float r = range_of(c);
        for (size_t i = 0; i < n; i++)
            if (wmat__ofq_cga_trains(w[0][i], d[i / G], bits, r)) dw[0][i] += Gw[i];
        return;
    }
    const float lo = (float)qmin(bits), hi = (float)qmax(bits);
    const float gs = 1.0f / sqrtf((float)qmax(bits) * (float)G);
    for (size_t g = 0; g < n / G; g++) {
        double sg = 0;
        for (size_t i = g * G; i < (g + 1) * G; i++) {
            const float v = w[0][i] / d[g];
            const int inside = v >= lo && v <= hi;
            if (dw[0] && inside) dw[0][i] += Gw[i];
            const float q = (float)wmat__ofq_level(w[0][i], d[g], bits);
            sg += (double)Gw[i] * (inside ? (double)q - (double)v : (double)q);
        }
        if (want_s) dw[1][g] += gs * (float)sg;
    }
}

static void bwd_statsq(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                       const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                       const float *act, int BT, int in, int out)
{
    (void)base, (void)act;
    backward_any(c, MODE_STATSQ, 0, dX, dw, scratch, dY, X, w, fixed, BT, in, out);
}
static void bwd_cga(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                    const float *X, const float *const *w, const void *fixed, const wmat_tensor *base, const float *act,
                    int BT, int in, int out)
{
    (void)base, (void)act;
    backward_any(c, MODE_STATSQ, 1, dX, dw, scratch, dY, X, w, fixed, BT, in, out);
}
static void bwd_lsq(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                    const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                    const float *act, int BT, int in, int out)
{
    (void)base, (void)act;
    backward_any(c, MODE_LSQ, 0, dX, dw, scratch, dY, X, w, fixed, BT, in, out);
}

/* ------------------------------------------------------------ per step */

static int after_any(const wmat__adapter_cfg *c, int mode, int cga, const wmat__adapter_layer *layers, int nl, int step,
                     int steps)
{
    for (int j = 0; j < nl; j++) {
        const wmat__adapter_layer *L = &layers[j];
        const wmat__adapter_cfg *lc = L->cfg ? L->cfg : c;
        const int in = L->in, out = L->out, G = group_of(lc, in), bits = bits_of(lc);
        const size_t n = (size_t)in * out;
        ofq_fix f = fix_of(L->fixed, in, out);
        float *W = L->w[0];
        float *d = wmat__malloc((n / G) * sizeof(float));
        int8_t *cur = wmat__malloc(n);
        if (!d || !cur) {
            wmat__free(d), wmat__free(cur);
            return wmat_set_error(WMAT_ERR_NOMEM, "ofq: out of memory");
        }
        if (cga && f.h->cga_on) {
            /* the step just taken was masked: the weights CGA froze (by
             * the rule on the weights before the step) get their values back */
            const float r = range_of(lc);
            int64_t fr = 0;
            steps_of(lc, MODE_STATSQ, f.wprev, NULL, in, out, d);
            for (size_t i = 0; i < n; i++)
                if (!wmat__ofq_cga_trains(f.wprev[i], d[i / G], bits, r)) {
                    W[i] = f.wprev[i];
                    fr++;
                }
            f.h->frozen = fr;
            f.h->frozen_sum += fr;
        }
        steps_of(lc, mode, W, mode == MODE_LSQ ? L->w[1] : NULL, in, out, d);
        levels_of(lc, W, d, in, out, cur);
        const int64_t osc = wmat__ofq_track(f.lev, f.dir, f.ever, cur, n, &f.h->flips);
        f.h->steps++;
        f.h->osc += osc;
        const int late = late_of(lc, steps);
        if (step >= steps - late) {
            f.h->osc_late += osc;
            f.h->late_steps++;
        }
        if (cga) {
            memcpy(f.wprev, W, n * sizeof(float));
            f.h->cga_on = late > 0 && step + 1 >= steps - late && step + 1 < steps;
        }
        wmat__free(d);
        wmat__free(cur);
    }
    return WMAT_OK;
}

static int after_statsq(const wmat__adapter_cfg *c, const wmat__adapter_layer *l, int n, int step, int steps)
{
    return after_any(c, MODE_STATSQ, 0, l, n, step, steps);
}
static int after_cga(const wmat__adapter_cfg *c, const wmat__adapter_layer *l, int n, int step, int steps)
{
    return after_any(c, MODE_STATSQ, 1, l, n, step, steps);
}
static int after_lsq(const wmat__adapter_cfg *c, const wmat__adapter_layer *l, int n, int step, int steps)
{
    return after_any(c, MODE_LSQ, 0, l, n, step, steps);
}

/* The counters over all layers, one line each. */
static size_t status_any(const wmat__adapter_cfg *c, int mode, int cga, const wmat__adapter_layer *layers, int nl,
                         char *buf, size_t cap)
{
    int64_t W = 0, steps = 0, osc = 0, late = 0, late_steps = 0, flips = 0, ever = 0, frozen = 0, fsum = 0;
    for (int j = 0; j < nl; j++) {
        const size_t n = (size_t)layers[j].in * layers[j].out;
        ofq_fix f = fix_of(layers[j].fixed, layers[j].in, layers[j].out);
        W += (int64_t)n;
        if (f.h->steps > steps) steps = f.h->steps;
        if (f.h->late_steps > late_steps) late_steps = f.h->late_steps;
        osc += f.h->osc;
        late += f.h->osc_late;
        flips += f.h->flips;
        frozen += f.h->frozen;
        fsum += f.h->frozen_sum;
        for (size_t i = 0; i < n; i++) ever += f.ever[i];
    }
    const int G = c->qat.group;
    int k = snprintf(buf, cap,
                     "qat: %d-bit %s, %s step%s; %lld weights in %d layers\n"
                     "qat: oscillations: %lld over %lld steps (%.1f per step), %lld weights oscillated at least once "
                     "(%.4f%%); level changes %lld\n"
                     "qat: last %lld steps: %lld oscillations (%.1f per step)\n",
                     bits_of(c), G > 0 ? "groups" : "per output channel", mode == MODE_LSQ ? "learned" : "statistical",
                     cga ? " + confidence-guided annealing" : "", (long long)W, nl, (long long)osc, (long long)steps,
                     steps ? (double)osc / (double)steps : 0.0, (long long)ever, W ? 100.0 * (double)ever / (double)W : 0.0,
                     (long long)flips, (long long)late_steps, (long long)late,
                     late_steps ? (double)late / (double)late_steps : 0.0);
    if (k < 0) return 0;
    if (cga) {
        const size_t used = (size_t)k < cap ? (size_t)k : cap;
        const int k2 = snprintf(buf + used, cap - used,
                                "qat: annealing: %lld of %lld weights frozen at the last step (%.2f%%), boundary range %g\n",
                                (long long)frozen, (long long)W, W ? 100.0 * (double)frozen / (double)W : 0.0,
                                (double)range_of(c));
        if (k2 > 0) k += k2;
        (void)fsum;
    }
    return (size_t)k;
}

static size_t status_statsq(const wmat__adapter_cfg *c, const wmat__adapter_layer *l, int n, char *buf, size_t cap)
{
    return status_any(c, MODE_STATSQ, 0, l, n, buf, cap);
}
static size_t status_cga(const wmat__adapter_cfg *c, const wmat__adapter_layer *l, int n, char *buf, size_t cap)
{
    return status_any(c, MODE_STATSQ, 1, l, n, buf, cap);
}
static size_t status_lsq(const wmat__adapter_cfg *c, const wmat__adapter_layer *l, int n, char *buf, size_t cap)
{
    return status_any(c, MODE_LSQ, 0, l, n, buf, cap);
}

/* ------------------------------------------------------------ results */

static int merge_any(const wmat__adapter_cfg *c, int mode, float *W, const float *const *w, int in, int out)
{
    const size_t n = (size_t)in * out;
    const int G = group_of(c, in);
    float *d = wmat__malloc((n / G) * sizeof(float)), *Wq = wmat__malloc(n * sizeof(float));
    if (!d || !Wq) {
        wmat__free(d), wmat__free(Wq);
        return wmat_set_error(WMAT_ERR_NOMEM, "ofq: out of memory");
    }
    steps_of(c, mode, w[0], mode == MODE_LSQ ? w[1] : NULL, in, out, d);
    fake_quant(c, w[0], d, in, out, Wq);
    for (size_t i = 0; i < n; i++) W[i] += Wq[i];
    wmat__free(d), wmat__free(Wq);
    return WMAT_OK;
}
static int merge_statsq(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    (void)fixed;
    return merge_any(c, MODE_STATSQ, W, w, in, out);
}
static int merge_lsq(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    (void)fixed;
    return merge_any(c, MODE_LSQ, W, w, in, out);
}

/* The layer as a packed weight: the fake-quant forward's levels (+ 2^(b-1))
 * and steps (already f16 values, so packing keeps them exactly). */
static int to_weight_any(const wmat__adapter_cfg *c, int mode, const float *const *w, int in, int out, wmat_tensor *dst)
{
    const int G = group_of(c, in), bits = bits_of(c);
    if (in % 32) {
        /* the packed kind needs inputs in whole chunks of 32: the same
         * values (the fake-quant weights, f32) in a sparse weight */
        float *Wq = wmat__calloc((size_t)in * out, sizeof(float));
        if (!Wq) return wmat_set_error(WMAT_ERR_NOMEM, "ofq: out of memory");
        int rc = merge_any(c, mode, Wq, w, in, out);
        void *obj = NULL;
        if (!rc) rc = wmat__sparse_create(Wq, NULL, out, in, WMAT_F32, &obj);
        wmat__free(Wq);
        if (!rc) wmat__tensor_own_obj(dst, out, in, obj);
        return rc;
    }
    wmat_qresult q;
    memset(&q, 0, sizeof q);
    int rc = wmat_qresult_alloc(&q, bits, 1, WMAT_QAXIS_IN, G, out, in, 0);
    if (rc) return rc;
    steps_of(c, mode, w[0], mode == MODE_LSQ ? w[1] : NULL, in, out, q.scales);
    const int64_t ng = wmat_qresult_n_groups(&q);
    for (int64_t g = 0; g < ng; g++) q.zeros[g] = (float)(1 << (bits - 1));
    for (size_t i = 0; i < (size_t)in * out; i++)
        q.codes[i] = (uint8_t)(wmat__ofq_level(w[0][i], q.scales[i / G], bits) + (1 << (bits - 1)));
    wmat_qtensor *qt = NULL;
    if (!(rc = wmat_qresult_check_packable(&q, "ofq"))) rc = wmat_qtensor_pack(&q, &qt);
    wmat_qresult_free(&q);
    if (rc) return rc;
    wmat__tensor_own_obj(dst, out, in, qt);
    return WMAT_OK;
}
static int tw_statsq(const wmat__adapter_cfg *c, const float *const *w, const void *fixed, int in, int out, wmat_tensor *dst)
{
    (void)fixed;
    return to_weight_any(c, MODE_STATSQ, w, in, out, dst);
}
static int tw_lsq(const wmat__adapter_cfg *c, const float *const *w, const void *fixed, int in, int out, wmat_tensor *dst)
{
    (void)fixed;
    return to_weight_any(c, MODE_LSQ, w, in, out, dst);
}

const wmat__adapter wmat__adapter_ofq = {
    .name = "ofq",
    .summary = "OFQ: quantization-aware training, StatsQ steps (2 mean|w| / 2^(b-1) per group, each step) and "
               "confidence-guided annealing (the last --cga-steps: only weights near a level boundary train); "
               "--qat-bits, --qat-group; writes the packed model",
    .n_tensors = 1,
    .tensor_key = {"qat_weight"},
    .rows_are_out = {1},
    .replaces_base = 1,
    .approx_grad = 1u << 0,
    .shapes = q_shapes_statsq,
    .check = q_check,
    .fixed_bytes = fx_bytes_cga,
    .fixed_valid = q_fixed_valid,
    .after_step = after_cga,
    .status = status_cga,
    .act_floats = q_act_floats,
    .scratch_floats = q_scratch_floats,
    .scale = q_scale,
    .init = init_cga,
    .forward = fwd_statsq,
    .backward = bwd_cga,
    .merge = merge_statsq,
    .to_weight = tw_statsq,
    .peft_type = NULL,
};

const wmat__adapter wmat__adapter_ofq_statsq = {
    .name = "ofq-statsq",
    .summary = "OFQ's StatsQ alone: quantization-aware training with the step from the weights' statistics, "
               "straight-through gradient, no annealing",
    .n_tensors = 1,
    .tensor_key = {"qat_weight"},
    .rows_are_out = {1},
    .replaces_base = 1,
    .approx_grad = 1u << 0,
    .shapes = q_shapes_statsq,
    .check = q_check,
    .fixed_bytes = fx_bytes,
    .fixed_valid = q_fixed_valid,
    .after_step = after_statsq,
    .status = status_statsq,
    .act_floats = q_act_floats,
    .scratch_floats = q_scratch_floats,
    .scale = q_scale,
    .init = init_statsq,
    .forward = fwd_statsq,
    .backward = bwd_statsq,
    .merge = merge_statsq,
    .to_weight = tw_statsq,
    .peft_type = NULL,
};

const wmat__adapter wmat__adapter_ofq_lsq = {
    .name = "ofq-lsq",
    .summary = "quantization-aware training with a learned step per group (LSQ, the baseline OFQ argues against), "
               "straight-through gradient inside the clipping range",
    .n_tensors = 2,
    .tensor_key = {"qat_weight", "qat_step"},
    .rows_are_out = {1, 0},
    .replaces_base = 1,
    .approx_grad = (1u << 0) | (1u << 1),
    .shapes = q_shapes_lsq,
    .check = q_check,
    .fixed_bytes = fx_bytes,
    .fixed_valid = q_fixed_valid,
    .after_step = after_lsq,
    .status = status_lsq,
    .act_floats = q_act_floats,
    .scratch_floats = q_scratch_floats,
    .scale = q_scale,
    .init = init_lsq,
    .forward = fwd_lsq,
    .backward = bwd_lsq,
    .merge = merge_lsq,
    .to_weight = tw_lsq,
    .peft_type = NULL,
};
