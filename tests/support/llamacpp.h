/* llama.cpp as a peer: run its greedy decoding on a GGUF file through the
 * npm package node-llama-cpp (WMAT_NODE_LLAMA_DIR, default /opt/nlc) and
 * ../shared/tools/llamacpp-greedy.mjs. */
#ifndef WMAT_TEST_LLAMACPP_H
#define WMAT_TEST_LLAMACPP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *text;       /* the continuation (without the prompt), UTF-8 */
    int32_t *tokens;  /* its token ids */
    size_t n_tokens;
    char *raw;        /* everything the script printed */
} llamacpp_result;

void llamacpp_result_free(llamacpp_result *r);
/* Where node-llama-cpp and the script are; NULL (with *why) when absent. */
const char *llamacpp_script(char *nlc_dir, size_t n, const char **why);
/* 0: ok; 1: llama.cpp unavailable (*why set; skip); -1: it ran and failed
 * (r->raw holds its output). */
int llamacpp_greedy(const char *gguf, const char *prompt, int n_tokens, llamacpp_result *r, const char **why);

/* llama.cpp's own quantizer and perplexity (../shared/tools/llamacpp-quant's
 * lcq): $WMAT_LCQ, else built once (~20 s) against node-llama-cpp's
 * libraries into $WMAT_NODE_LLAMA_DIR/lcq-build. NULL (with *why) when
 * node-llama-cpp, the tool's source or a C++ compiler is missing. */
const char *llamacpp_lcq(const char **why);

/* llama.cpp's perplexity protocol through its C API (tests/peer/lcppl.cpp):
 * $WMAT_LCPPL, else built (~10 s) with tests/peer/build-lcppl.sh against
 * node-llama-cpp's libraries into $WMAT_NODE_LLAMA_DIR/lcppl-wmat-build
 * (again when the source is newer). NULL (with *why) when node-llama-cpp or
 * g++ is missing or WMAT_NO_PEER is set. */
const char *llamacpp_lcppl(const char **why);

typedef struct {
    double ppl, ppl_err, mean_nll; /* "Final estimate: PPL = ppl +/- ppl_err" */
    long long tokens_scored;
    int chunks;
} llamacpp_ppl;

/* llama-perplexity's figures for a GGUF on a uint16 token file: chunks of
 * ctx (at most `chunks`; <= 0: all), one thread, F32 KV cache. 0: ok; 1:
 * unavailable (*why; skip); -1: it ran and failed (its output printed). */
int llamacpp_perplexity(const char *gguf, const char *tokens_u16, int ctx, int chunks, llamacpp_ppl *r, const char **why);

#endif
