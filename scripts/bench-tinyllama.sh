#!/usr/bin/env bash
# Greedy decode speed of llama.cpp (through node-llama-cpp) and of wmat on the TinyLlama-shaped
# GGUF files of scripts/make-tinyllama.sh, at 1 and 2 threads, in one run; prints a table.
#
# usage: scripts/bench-tinyllama.sh DIR [N_TOKENS]
#   DIR holds tinyllama-rand-{f32,f16,q8_0,q4_0}.gguf; N_TOKENS generated per run (default 64).
#   env: WMAT (default build/wmat), WMAT_NODE_LLAMA_DIR (default ~/.cache/wmat-node-llama; holds
#        node_modules/node-llama-cpp, installed there with npm install node-llama-cpp@3.22.1 when
#        absent, as .ci/run does), THREADS (default "1 2"), TYPES (default "f32 f16 q8_0 q4_0";
#        an entry with a '/' is a model path: a GGUF runs in both, a native directory written by
#        `wmat quantize` in wmat only, e.g. TYPES="q4_0 /tmp/iq2xxs.gguf /tmp/bcq2-g128"),
#        NO_PEER=1 skips llama.cpp, NO_WMAT=1 skips wmat.
#
# llama.cpp: the model's prompt ids for "Once upon a time", then greedy tokens from the context
# sequence's evaluate() (no stop at end-of-text: a random model may pick it); decode tok/s is
# (N - 1) / (time of token N - time of token 1), so loading and the prompt are not counted.
# Prompt processing is timed too: 256 tokens of text as one prompt (llama.cpp batches them), as
# tokens/s until the first generated token. KV cache f32 (as the repo's peer tests), context 512,
# exactly THREADS threads (maxThreads 0 lifts node-llama-cpp's own cap).
# wmat: `wmat generate --temp 0 --steps N+5` with the same prompt; its "achieved tok/s" (positions
# after the first, as run.c reports); peak RSS from /usr/bin/time. Runs are one at a time: every
# model is loaded alone.
set -uo pipefail
dir=${1:?usage: bench-tinyllama.sh DIR [N_TOKENS]}
ntok=${2:-64}
root=$(cd "$(dirname "$0")/.." && pwd)
wmat=${WMAT:-$root/build/wmat}
nld=${WMAT_NODE_LLAMA_DIR:-$HOME/.cache/wmat-node-llama}
threads=${THREADS:-1 2}
types=${TYPES:-f32 f16 q8_0 q4_0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

peer=1
if [ "${NO_PEER:-0}" = 1 ]; then
  peer=0
elif [ ! -d "$nld/node_modules/node-llama-cpp" ]; then
  echo "== installing node-llama-cpp into $nld" >&2
  mkdir -p "$nld"
  if ! (cd "$nld" && timeout 900 npm install --no-audit --no-fund node-llama-cpp@3.22.1 >npm-install.log 2>&1); then
    echo "bench-tinyllama: node-llama-cpp could not be installed; llama.cpp is skipped" >&2
    peer=0
  fi
fi

cat > "$tmp/speed.mjs" <<'EOF'
import {createRequire} from "module";
const require = createRequire(import.meta.url);
const lib = await import(require.resolve("node-llama-cpp", {paths: (process.env.NODE_PATH || "").split(":")}));
const {getLlama} = lib;
const [model_path, threads, ntok] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const llama = await getLlama({gpu: false, build: "never", logLevel: "error", maxThreads: 0});
const model = await llama.loadModel({modelPath: model_path});
const context = await model.createContext({contextSize: 512, batchSize: 512, threads: {ideal: threads, min: threads},
  experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32"});
async function run(prompt, n) {
  const seq = context.getSequence();
  const t_start = performance.now();
  let k = 0, t1 = 0, tn = 0;
  for await (const tok of seq.evaluate(prompt, {temperature: 0})) {
    k++;
    if (k === 1) t1 = performance.now();
    if (k >= n) { tn = performance.now(); break; }
  }
  seq.dispose();
  return {first_ms: t1 - t_start, decode_tok_s: (k - 1) / ((tn - t1) / 1000)};
}
const dec = await run(model.tokenize("Once upon a time"), ntok);
const pp_prompt = model.tokenize("Once upon a time there was a little girl who liked to play outside. ".repeat(40)).slice(0, 256);
const pp = await run(pp_prompt, 2);
console.log(JSON.stringify({decode_tok_s: dec.decode_tok_s, pp256_tok_s: 256 / (pp.first_ms / 1000)}));
EOF

# The arithmetic ceiling of a batched forward: flops per prompt token of this shape (linear layers
# 2 x 1.0344e9 weights, attention over 128.5 positions on average) against the fp32 FMA peak
# bench_peak measures at each thread count.
flops_tok=2092000000
peak_bin=${PEAK:-$(dirname "$wmat")/bench_peak}
# benchmarks are not built by `make`; build this one when the build tree is there
[ -x "$peak_bin" ] || cmake --build "$(dirname "$peak_bin")" --target bench_peak >/dev/null 2>&1 || true
declare -A peak
for n in $threads; do
  peak[$n]=-
  if [ -x "$peak_bin" ]; then
    peak[$n]=$("$peak_bin" --threads "$n" --seconds 1 | awk -v n="$n" '$1 == "threads" && $2 == n":" {print $6}')
    echo "fp32 FMA peak at $n threads: ${peak[$n]} GFLOP/s = $(awk -v p="${peak[$n]}" -v f=$flops_tok \
      'BEGIN {printf "%.1f", p * 1e9 / f}') prompt tokens/s at most" >&2
  fi
done
tok512=${TOKENS:-$root/../shared/data/golden/wikitext2_valid_tokenized.tok512.u16}

printf '%-8s %7s | %14s %14s | %10s %12s %12s %9s\n' type threads "llama.cpp tg" "llama.cpp pp256" "wmat tg" "wmat RSS MB" \
  "wmat pp256" "pp % peak"
for t in $types; do
  f="$dir/tinyllama-rand-$t.gguf"
  case $t in */*) f=$t; t=$(basename "$t") ;; esac
  if [ ! -e "$f" ]; then echo "bench-tinyllama: $f missing (scripts/make-tinyllama.sh $dir)" >&2; continue; fi
  for n in $threads; do
    lt="-" lp="-" wt="-" wr="-"
    if [ $peer = 1 ] && [ -f "$f" ]; then
      if NODE_PATH="$nld/node_modules" timeout 900 node "$tmp/speed.mjs" "$f" "$n" "$ntok" >"$tmp/peer.json" 2>"$tmp/peer.err"; then
        lt=$(sed -n 's/.*"decode_tok_s":\([0-9.]*\).*/\1/p' "$tmp/peer.json")
        lp=$(sed -n 's/.*"pp256_tok_s":\([0-9.]*\).*/\1/p' "$tmp/peer.json")
        lt=$(printf '%.1f' "$lt") lp=$(printf '%.1f' "$lp")
      else
        lt="failed"
        sed 's/^/  llama.cpp: /' "$tmp/peer.err" | tail -3 >&2
      fi
    fi
    if [ "${NO_WMAT:-0}" != 1 ]; then
      if /usr/bin/time -v "$wmat" generate "$f" --prompt "Once upon a time" --temp 0 --steps $((ntok + 5)) \
          --threads "$n" >"$tmp/wmat.out" 2>"$tmp/wmat.err"; then
        wt=$(sed -n 's/^achieved tok\/s: \([0-9.]*\)/\1/p' "$tmp/wmat.err")
        wr=$(awk '/Maximum resident set size/ {printf "%.0f", $6 / 1024}' "$tmp/wmat.err")
      else
        wt="failed"
        grep -v "^\s" "$tmp/wmat.err" | tail -3 | sed 's/^/  wmat: /' >&2
      fi
    fi
    wp="-" wf="-"
    if [ "${NO_WMAT:-0}" != 1 ] && [ -f "$tok512" ]; then
      # the batched forward of one 256-token window (it also scores every position)
      wp=$("$wmat" eval "$f" --tokens "$tok512" --ctx 256 --max-windows 1 --threads "$n" 2>&1 |
        sed -n 's/^scored .*(\([0-9.]*\) tokens\/s)/\1/p')
      [ -n "$wp" ] && [ "${peak[$n]}" != - ] &&
        wf=$(awk -v r="$wp" -v p="${peak[$n]}" -v f=$flops_tok 'BEGIN {printf "%.0f%%", 100 * r * f / (p * 1e9)}')
    fi
    printf '%-8s %7s | %14s %14s | %10s %12s %12s %9s\n' "$t" "$n" "$lt" "$lp" "$wt" "$wr" "${wp:--}" "$wf"
  done
done
