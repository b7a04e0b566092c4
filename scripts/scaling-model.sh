#!/usr/bin/env bash
# The data-parallel cost model of docs/SCALING.md, evaluated.
#   t_step(N) = t_compute / N + t_allreduce(N)
#   t_compute = 6 x P_matmul x G / R  (+ attention, 6 x L x T x d per token)
#   t_allreduce = 2 (N - 1) / N x bytes / link + 2 (N - 1) x latency,  bytes = 4 x trainable (fp32)
# G: tokens per global step; R: FLOP/s of one node (measured by scripts/bench-mpi.sh).
# usage: scripts/scaling-model.sh R_GFLOPS [G_TOKENS] [LATENCY_US]
#   prints, for TinyLlama-1.1B and Llama-2-7B on 8 and 64 nodes at 25 and 100 Gb/s:
#   compute and all-reduce seconds per step, the all-reduce's share, and the
#   same with bf16 gradients, with the all-reduce hidden behind the backward
#   (buckets: at best the backward's 2/3 of the compute), with LoRA r=16 on
#   q,v (compute 4/6: no weight gradients) and GaLore (projected gradients of
#   rank r = dim/4 reduced between refreshes; wmat reduces full ones today).
set -euo pipefail
R=${1:?usage: scaling-model.sh R_GFLOPS [G_TOKENS] [LATENCY_US]}
G=${2:-524288}
LAT=${3:-5}
awk -v R="$R" -v G="$G" -v LAT="$LAT" '
function proj(m, n, r) { return r * (m > n ? m : n) < m * n ? r * (m > n ? m : n) : m * n }
BEGIN {
  # name dim hidden layers heads kv vocab ctx
  n = split("tinyllama-1.1b 2048 5632 22 32 4 32000 2048;llama2-7b 4096 11008 32 32 32 32000 4096", M, ";")
  printf "R = %g GFLOP/s per node, G = %d tokens per global step, latency %g us per message\n\n", R, G, LAT
  printf "| model | trainable | nodes | link Gb/s | compute s | all-reduce s | comm share | bf16 share | overlapped step s | LoRA q,v r16 share | GaLore share |\n"
  printf "|---|---|---|---|---|---|---|---|---|---|---|\n"
  for (i = 1; i <= n; i++) {
    split(M[i], a, " ")
    d = a[2]; h = a[3]; L = a[4]; nh = a[5]; kv = a[6]; V = a[7]; T = a[8]
    hd = d / nh
    lin = L * (2 * d * d + 2 * d * kv * hd + 3 * d * h)
    P = lin + 2 * V * d + (2 * L + 1) * d        # untied embedding + classifier, norms
    Pm = lin + V * d                              # matmul weights (the embedding is a lookup)
    flop = 6 * Pm * G + 6 * L * T * d * G
    tc1 = flop / (R * 1e9)
    lora = L * (16 * d + d * 16 + 16 * d + kv * hd * 16)  # q, v: A (16 x in) + B (out x 16)
    r = d / 4
    # GaLore reduces r x max(m, n) per projected matrix (at most m x n), the rest whole
    gal = L * (2 * proj(d, d, r) + 2 * proj(kv * hd, d, r) + 3 * proj(h, d, r)) + 2 * V * d + (2 * L + 1) * d
    split("8 64", NS, " "); split("25 100", BW, " ")
    for (x = 1; x <= 2; x++) for (y = 1; y <= 2; y++) {
      N = NS[x]; bw = BW[y] * 1e9 / 8
      ring = 2 * (N - 1) / N
      tc = tc1 / N
      ar = ring * 4 * P / bw + 2 * (N - 1) * LAT * 1e-6
      ar16 = ring * 2 * P / bw + 2 * (N - 1) * LAT * 1e-6
      ov = tc / 3 + (2 * tc / 3 > ar ? 2 * tc / 3 : ar)
      arl = ring * 4 * lora / bw + 2 * (N - 1) * LAT * 1e-6; tcl = tc * 4 / 6
      arg = ring * 4 * gal / bw + 2 * (N - 1) * LAT * 1e-6
      printf "| %s | %.3g | %d | %d | %.4g | %.4g | %.1f%% | %.1f%% | %.4g | %.2f%% | %.1f%% |\n", a[1], P, N, BW[y], tc, ar,
             100 * ar / (tc + ar), 100 * ar16 / (tc + ar16), ov, 100 * arl / (tcl + arl), 100 * arg / (tc + arg)
    }
    # where the all-reduce (fp32, 100 Gb/s) starts to exceed the compute: N with tc1 / N = 2 x 4P / bw
    printf "| %s | crossover: the all-reduce exceeds the compute beyond N = %.0f nodes at 25 Gb/s, %.0f at 100 Gb/s (G fixed) |\n", a[1],
           tc1 / (2 * 4 * P / (25e9 / 8)), tc1 / (2 * 4 * P / (100e9 / 8))
  }
}'
