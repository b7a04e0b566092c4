// lcppl: llama.cpp's perplexity protocol (tools/perplexity, `llama-perplexity -f`)
// through llama.cpp's public C API, as a peer for `wmat eval --protocol llama.cpp`.
//
//   lcppl MODEL.gguf TOKENS.u16 [--ctx 256] [--chunks K] [--threads 1] [--kv f32|f16]
//
// The protocol, as llama-perplexity runs it on an already tokenized stream:
//  - the stream is cut into n/ctx chunks of ctx tokens (no overlap, a last
//    partial chunk is dropped); at most --chunks of them (default: all);
//    fewer than 2*ctx tokens is an error (llama-perplexity refuses too);
//  - each chunk is decoded from an empty KV cache at positions 0..ctx-1, its
//    first token replaced by the vocabulary's BOS when the vocabulary adds one
//    (llama_vocab_get_add_bos);
//  - logits are kept for positions first = ctx/2 .. ctx-1; the predictions at
//    positions first .. ctx-2 (of tokens first+1 .. ctx-1) are scored:
//    ctx - first - 1 per chunk;
//  - NLL = log(sum_v exp(l_v - max)) - (l_tok - max) (float max, double sum of
//    expf as llama.cpp's log_softmax); ppl = exp(mean NLL); its uncertainty
//    ppl * sqrt((mean(NLL^2) - mean(NLL)^2) / (count - 1)), the figure after
//    "Final estimate: PPL = X +/- Y".
// llama-perplexity decodes several chunks per llama_decode (n_batch/n_ctx
// sequences); that changes nothing in the numbers, so one chunk per decode here.
// --kv f32 (default) keeps the KV cache in F32 (llama-perplexity's default is
// F16, which rounds K and V); flash attention is off.
//
// Prints one JSON line on stdout and llama-perplexity's "Final estimate" line on
// stderr. Build: tests/peer/build-lcppl.sh (against node-llama-cpp's prebuilt
// libraries, like ../shared/tools/llamacpp-quant).
#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static bool g_verbose = false;

static void on_log(enum ggml_log_level level, const char * text, void *) {
    if (g_verbose || level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

[[noreturn]] static void fail(const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("lcppl: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

// The CPU backends (libggml-cpu-*.so) sit beside libllama: load them from there.
static void load_backends() {
    llama_log_set(on_log, nullptr);
    ggml_log_set(on_log, nullptr);
    std::string dir;
    Dl_info info;
    if (dladdr((void *) &llama_backend_init, &info) && info.dli_fname) {
        dir = info.dli_fname;
        const size_t slash = dir.rfind('/');
        dir = slash == std::string::npos ? std::string(".") : dir.substr(0, slash);
    }
    ggml_backend_load_all_from_path(dir.empty() ? nullptr : dir.c_str());
    llama_backend_init();
    if (ggml_backend_dev_count() == 0) fail("no ggml backend found beside libllama (%s)", dir.c_str());
}

static std::vector<llama_token> read_tokens(const char * path) {
    FILE * f = fopen(path, "rb");
    if (!f) fail("cannot open %s", path);
    std::vector<llama_token> ids;
    unsigned char le[2];
    while (fread(le, 1, 2, f) == 2) ids.push_back((llama_token) (le[0] | le[1] << 8));
    fclose(f);
    return ids;
}

// -log p(tok) from one row of logits, computed the way llama.cpp's perplexity tool does.
static double nll_of(const float * logits, int n_vocab, int tok) {
    float mx = logits[0];
    for (int v = 1; v < n_vocab; v++) mx = logits[v] > mx ? logits[v] : mx;
    double s = 0.0;
    for (int v = 0; v < n_vocab; v++) s += expf(logits[v] - mx);
    return -((double) (logits[tok] - mx) - log(s));
}

int main(int argc, char ** argv) {
    const char * model_path = nullptr, * tokens_path = nullptr;
    int n_ctx = 256, max_chunks = -1, threads = 1;
    bool kv_f16 = false;
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        auto value = [&]() -> const char * {
            if (i + 1 >= argc) fail("%s needs a value", a.c_str());
            return argv[++i];
        };
        if (a == "--ctx") n_ctx = atoi(value());
        else if (a == "--chunks") max_chunks = atoi(value());
        else if (a == "--threads") threads = atoi(value());
        else if (a == "--kv") {
            const std::string k = value();
            if (k != "f32" && k != "f16") fail("--kv takes f32 or f16");
            kv_f16 = k == "f16";
        } else if (a == "--verbose") g_verbose = true;
        else if (a.size() > 1 && a[0] == '-') fail("unknown option %s", a.c_str());
        else if (!model_path) model_path = argv[i];
        else if (!tokens_path) tokens_path = argv[i];
        else fail("too many arguments");
    }
    if (!model_path || !tokens_path)
        fail("usage: lcppl MODEL.gguf TOKENS.u16 [--ctx 256] [--chunks K] [--threads 1] [--kv f32|f16]");
    if (n_ctx < 2) fail("--ctx must be at least 2");
    if (threads < 1) threads = 1;

    load_backends();
    std::vector<llama_token> tokens = read_tokens(tokens_path);
    const size_t n = tokens.size();
    if (n < 2 * (size_t) n_ctx)
        fail("you need at least %d tokens to evaluate perplexity with a context of %d; %s has %zu", 2 * n_ctx, n_ctx,
             tokens_path, n);

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(model_path, mp);
    if (!model) fail("cannot load %s", model_path);
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    const bool add_bos = llama_vocab_get_add_bos(vocab);
    const llama_token bos = llama_vocab_bos(vocab);
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= n_vocab) fail("token %d at %zu is outside the vocabulary (%d)", tokens[i], i, n_vocab);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) n_ctx;
    cp.n_batch = (uint32_t) n_ctx;
    cp.n_ubatch = (uint32_t) n_ctx;
    cp.n_seq_max = 1;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = kv_f16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
    cp.type_v = kv_f16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) fail("cannot create a context of %d tokens", n_ctx);

    const int n_chunk_max = (int) (n / (size_t) n_ctx);
    const int n_chunk = max_chunks < 0 ? n_chunk_max : std::min(max_chunks, n_chunk_max);
    const int first = n_ctx / 2;
    llama_batch batch = llama_batch_init(n_ctx, 0, 1);
    double nll = 0.0, nll2 = 0.0;
    long long count = 0;
    const int64_t t0 = ggml_time_us();
    for (int c = 0; c < n_chunk; c++) {
        const size_t start = (size_t) c * (size_t) n_ctx;
        llama_memory_clear(llama_get_memory(ctx), true);
        batch.n_tokens = n_ctx;
        for (int k = 0; k < n_ctx; k++) {
            batch.token[k] = k == 0 && add_bos ? bos : tokens[start + k];
            batch.pos[k] = k;
            batch.n_seq_id[k] = 1;
            batch.seq_id[k][0] = 0;
            batch.logits[k] = k >= first;
        }
        if (llama_decode(ctx, batch)) fail("llama_decode failed on chunk %d", c);
        for (int k = first; k < n_ctx - 1; k++) {
            const float * lg = llama_get_logits_ith(ctx, k);
            if (!lg) fail("no logits at position %d", k);
            const double v = nll_of(lg, n_vocab, tokens[start + k + 1]);
            nll += v;
            nll2 += v * v;
            count++;
        }
    }
    const double secs = (double) (ggml_time_us() - t0) / 1e6;
    const double mean = nll / (double) count;
    const double ppl = exp(mean);
    double var = nll2 / (double) count - mean * mean, err = 0.0;
    if (var > 0 && count > 1) err = ppl * sqrt(var / (double) (count - 1));
    fprintf(stderr, "Final estimate: PPL = %.4lf +/- %.5lf\n", ppl, err);
    printf("{\"model\": \"%s\", \"tokens\": \"%s\", \"ctx\": %d, \"chunks\": %d, \"tokens_scored\": %lld, "
           "\"add_bos\": %s, \"bos\": %d, \"kv\": \"%s\", \"mean_nll\": %.9f, \"ppl\": %.9f, \"ppl_err\": %.9f, "
           "\"seconds\": %.3f}\n",
           model_path, tokens_path, n_ctx, n_chunk, count, add_bos ? "true" : "false", (int) bos,
           kv_f16 ? "f16" : "f32", mean, ppl, err, secs);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
