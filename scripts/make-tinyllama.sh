#!/usr/bin/env bash
# A seeded random LLaMA of TinyLlama-1.1B's shape, as GGUF F32, F16, Q8_0 and Q4_0.
#
# usage: scripts/make-tinyllama.sh OUTDIR
#   env: WMAT (default build/wmat), TOKENIZER (default ../shared/data/models/llama2c_tokenizer_32000.bin),
#        SEED (default 1337), KEEP_BIN=1 keeps the intermediate llama2.c checkpoint,
#        TYPES (default "f32 f16 q8_0 q4_0"), LAYERS (default 22: fewer blocks of the same shape, for
#        benchmarks that need several models in memory at once; files then tinyllama-rand-L<N>-<type>.gguf)
#
# Shape: dim 2048, hidden 5632, 22 layers, 32 heads, 4 KV heads, vocab 32000, seq_len 2048, untied
# classifier. Weights follow wmat_model_init_random's recipe: N(0, 0.02) for every matrix, the
# residual projections (wo, w2) scaled by 1/sqrt(2 L), norms 1.
#
# How: `wmat train --init CONFIG` would draw the same kind of model, but it always runs at least one
# optimizer step and allocates gradients and optimizer state first (about 3x the 4.4 GB of weights),
# and the CLI has no init-only mode. So a 70-line C generator (below, compiled here with cc) writes
# the llama2.c checkpoint (4.4 GB) from a seeded xoshiro256** stream, and `wmat convert` writes each
# GGUF from it, one at a time (each step holds one model in memory). Files:
#   OUTDIR/tinyllama-rand-{f32,f16,q8_0,q4_0}.gguf  (4.4 GB, 2.2 GB, 1.17 GB, 0.62 GB)
set -euo pipefail
out=${1:?usage: make-tinyllama.sh OUTDIR}
root=$(cd "$(dirname "$0")/.." && pwd)
wmat=${WMAT:-$root/build/wmat}
tok=${TOKENIZER:-$root/../shared/data/models/llama2c_tokenizer_32000.bin}
seed=${SEED:-1337}
types=${TYPES:-f32 f16 q8_0 q4_0}
[ -x "$wmat" ] || { echo "make-tinyllama: $wmat not found (build first or set WMAT)" >&2; exit 1; }
[ -f "$tok" ] || { echo "make-tinyllama: tokenizer $tok not found (set TOKENIZER)" >&2; exit 1; }
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cat > "$tmp/gen.c" <<'EOF'
/* Writes a llama2.c checkpoint with seeded N(0, std) weights. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
static uint64_t s[4];
static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t next(void) {
    const uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
    return r;
}
static double unif(void) { return ((next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); } /* (0, 1) */
static float buf[1 << 16];
/* n values N(0, std) (Box-Muller), or the constant c when std == 0 */
static void put(FILE *f, size_t n, double std, float c) {
    while (n) {
        size_t k = n < (1 << 16) ? n : (1 << 16);
        for (size_t i = 0; i < k; i += 2) {
            const double r = sqrt(-2.0 * log(unif())), a = 6.283185307179586 * unif();
            buf[i] = std ? (float)(std * r * cos(a)) : c;
            if (i + 1 < k) buf[i + 1] = std ? (float)(std * r * sin(a)) : c;
        }
        if (fwrite(buf, 4, k, f) != k) { perror("write"); exit(1); }
        n -= k;
    }
}
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    const int L = atoi(argv[3]);
    if (L < 1 || L > 22) return 2;
    const int dim = 2048, hidden = 5632, H = 32, KV = 4, vocab = 32000, seq = 2048, hd = dim / H;
    uint64_t z = strtoull(argv[2], 0, 10);
    for (int i = 0; i < 4; i++) { /* splitmix64 seeding */
        z += 0x9e3779b97f4a7c15ull;
        uint64_t x = z;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull; x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        s[i] = x ^ (x >> 31);
    }
    FILE *f = fopen(argv[1], "wb");
    if (!f) { perror(argv[1]); return 1; }
    const int32_t h[7] = {dim, hidden, L, H, KV, -vocab, seq}; /* vocab < 0: untied classifier */
    fwrite(h, 4, 7, f);
    const double sd = 0.02, sr = 0.02 / sqrt(2.0 * L);
    const size_t d = dim, kvd = (size_t)KV * hd;
    put(f, (size_t)vocab * d, sd, 0);        /* token embedding */
    put(f, (size_t)L * d, 0, 1.0f);           /* attention norms */
    put(f, (size_t)L * d * d, sd, 0);         /* wq */
    put(f, (size_t)L * d * kvd, sd, 0);       /* wk */
    put(f, (size_t)L * d * kvd, sd, 0);       /* wv */
    put(f, (size_t)L * d * d, sr, 0);         /* wo */
    put(f, (size_t)L * d, 0, 1.0f);           /* ffn norms */
    put(f, (size_t)L * hidden * d, sd, 0);    /* w1 (gate) */
    put(f, (size_t)L * d * hidden, sr, 0);    /* w2 (down) */
    put(f, (size_t)L * hidden * d, sd, 0);    /* w3 (up) */
    put(f, d, 0, 1.0f);                       /* final norm */
    for (int part = 0; part < 2; part++)      /* RoPE tables (read by nobody, kept for the format) */
        for (int p = 0; p < seq; p++)
            for (int i = 0; i < hd / 2; i++) {
                const float a = (float)p * powf(10000.0f, -(float)(2 * i) / (float)hd), v = part ? sinf(a) : cosf(a);
                fwrite(&v, 4, 1, f);
            }
    put(f, (size_t)vocab * d, sd, 0);         /* classifier */
    return fclose(f) ? 1 : 0;
}
EOF
cc -O2 -o "$tmp/gen" "$tmp/gen.c" -lm
layers=${LAYERS:-22}
case $layers in ''|*[!0-9]*) echo "make-tinyllama: LAYERS must be 1..22" >&2; exit 2 ;; esac
name=tinyllama-rand
[ "$layers" = 22 ] || name=tinyllama-rand-L$layers
bin="$out/$name.bin"
if [ ! -s "$bin" ]; then
  echo "== writing $bin (seed $seed)"
  "$tmp/gen" "$bin.tmp" "$seed" "$layers"
  mv "$bin.tmp" "$bin"
fi
for t in $types; do
  f="$out/$name-$t.gguf"
  echo "== $f"
  "$wmat" convert "$bin" "$f" --to gguf --dtype "$t" --tokenizer "$tok"
done
[ "${KEEP_BIN:-0}" = 1 ] || rm -f "$bin"
ls -l "$out/$name"-*.gguf
