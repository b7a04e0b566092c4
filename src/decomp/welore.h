/* WeLore's rank rule (Jaiswal et al. 2024, "From GaLore to WeLore"). */
#ifndef WMAT_DECOMP_WELORE_H
#define WMAT_DECOMP_WELORE_H

#include "core/internal.h"

/* Matrices i = 0..n-1 with singular values sv[i][0..len[i]) (descending).
 * Each spectrum is min-max normalized, s^ = (s - min) / (max - min); a
 * matrix prunes p_i(tau) = #{s^ < tau} ranks and keeps k_i = len_i - p_i,
 * one threshold tau for all. With tau >= 0 given, that tau is used; with
 * tau < 0, tau is found by bisection as the smallest threshold pruning at
 * least `target` (0..1) of all ranks. A matrix is low-rank-compressible
 * (LRC) iff p_i / len_i > min_ratio; rank_out[i] = k_i for an LRC, 0 for an
 * N-LRC (kept dense). *tau_out gets the threshold used, *pruned_out the
 * share of all ranks pruned in the LRCs. */
int wmat__welore_ranks(int n, const double *const *sv, const int64_t *len, double tau, double target, double min_ratio,
                       int64_t *rank_out, double *tau_out, double *pruned_out);

#endif
