/* Quantization-aware training (private): the pieces of the OFQ entries
 * (adapter_ofq.c; Liu et al., ICML 2023, "Oscillation-free Quantization
 * for Low-bit Vision Transformers") that the tests check one by one.
 *
 * Grid: uniform symmetric b-bit with an integer zero, the one the packed
 * kind runs (src/wop/qstore.h): w_q = d * q, q = clamp(round(w / d),
 * -2^(b-1), 2^(b-1) - 1), d = f16(step) per group (a group: `group`
 * consecutive inputs of one output row; group = in: per output channel),
 * so the fake-quant weights are exactly what the packed model computes. */
#ifndef WMAT_TRAIN_OFQ_H
#define WMAT_TRAIN_OFQ_H

#include <stddef.h>
#include <stdint.h>

/* The level of w for step d: clamp(round(w / d), -2^(b-1), 2^(b-1) - 1). */
int wmat__ofq_level(float w, float d, int bits);
/* StatsQ's step of a group of n weights: f16(2 mean|w| / 2^(b-1)) (OFQ's
 * scale s = 2 mean|w| over its 2^(b-1) positive levels), floored at the
 * smallest positive f16 normal so it never vanishes. */
float wmat__ofq_statsq_step(const float *w, size_t n, int bits);
/* LSQ's initial step: 2 mean|w| / sqrt(2^(b-1) - 1) (Esser et al.), the
 * value the learned scale starts from. */
float wmat__ofq_lsq_init(const float *w, size_t n, int bits);
/* A learned step as the forward uses it: max(s, 1e-5) rounded to f16. */
float wmat__ofq_step16(float s);
/* CGA's rule (OFQ's freeze_outside_boundary_weight_idx on this grid): 1
 * when v = w / d lies within `range` of a decision boundary between two
 * levels (v - (i + 1/2) in [-range, range] for i in [-2^(b-1), 2^(b-1) - 2]:
 * a weight that is not confident of its level, which keeps training), 0
 * when it is confident (frozen during the annealing stage). */
int wmat__ofq_cga_trains(float w, float d, int bits, float range);
/* Oscillation tracking (Nagel et al.'s definition, OFQ's TrackOscillation):
 * given the levels `cur` of this step, a weight switched when its level
 * differs from prev; it oscillated when it switched in the direction
 * opposite to its last switch (dir: the sign of its last switch, 0: none
 * yet). Updates prev, dir and ever (bit 0: oscillated at least once);
 * returns the number of weights that oscillated at this step and adds the
 * number that switched to *flips. */
int64_t wmat__ofq_track(int8_t *prev, int8_t *dir, uint8_t *ever, const int8_t *cur, size_t n, int64_t *flips);

#endif
