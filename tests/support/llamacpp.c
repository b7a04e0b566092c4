#include "llamacpp.h"

#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* --------------------------------------------------- llama.cpp peer check
 * Reusable: llamacpp_greedy() runs llama.cpp's greedy decoding through
 * node-llama-cpp (WMAT_NODE_LLAMA_DIR, default /opt/nlc) and the script
 * ../shared/tools/llamacpp-greedy.mjs. */



void llamacpp_result_free(llamacpp_result *r)
{
    free(r->text), free(r->tokens), free(r->raw);
    memset(r, 0, sizeof *r);
}

/* Where node-llama-cpp and the script are; NULL (with *why) when absent. */
const char *llamacpp_script(char *nlc_dir, size_t n, const char **why)
{
    /* CI sets this for the sanitizer run: the peer check exercises llama.cpp,
     * not wmat's memory safety, and the Release run already did it. */
    if (getenv("WMAT_NO_PEER")) {
        *why = "llama.cpp peer checks disabled by WMAT_NO_PEER";
        return NULL;
    }
    const char *dir = getenv("WMAT_NODE_LLAMA_DIR");
    if (!dir || !*dir) dir = "/opt/nlc";
    snprintf(nlc_dir, n, "%s", dir);
    char pkg[1024];
    snprintf(pkg, sizeof pkg, "%s/node_modules/node-llama-cpp/package.json", dir);
    struct stat st;
    if (stat(pkg, &st) != 0) {
        *why = "node-llama-cpp not installed (set WMAT_NODE_LLAMA_DIR to a folder holding node_modules/node-llama-cpp)";
        return NULL;
    }
    int code = 0;
    char *out = tu_run("command -v node >/dev/null 2>&1 && echo yes", &code);
    int have_node = out && !strncmp(out, "yes", 3);
    free(out);
    if (!have_node) {
        *why = "node is not on PATH";
        return NULL;
    }
    /* the repo's variant keeps llama.cpp's KV cache in f32 */
    static char own[1024];
    snprintf(own, sizeof own, "%s/tests/support/llamacpp_greedy.mjs", WMAT_SOURCE_DIR);
    if (stat(own, &st) == 0) return own;
    const char *s = tu_data("../tools/llamacpp-greedy.mjs");
    if (s) return s;
    static char alt[1024];
    snprintf(alt, sizeof alt, "%s/../shared/tools/llamacpp-greedy.mjs", WMAT_SOURCE_DIR);
    if (stat(alt, &st) == 0) return alt;
    *why = "../shared/tools/llamacpp-greedy.mjs not found";
    return NULL;
}

/* Decode a JSON string body starting after its opening quote. */
static char *json_string(const char *p)
{
    size_t cap = strlen(p) + 1, k = 0;
    char *o = malloc(cap * 3 + 4);
    assert_non_null(o);
    while (*p && *p != '"') {
        if (*p != '\\') {
            o[k++] = *p++;
            continue;
        }
        p++;
        switch (*p) {
        case 'n': o[k++] = '\n'; break;
        case 't': o[k++] = '\t'; break;
        case 'r': o[k++] = '\r'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'u': {
            unsigned cp = 0;
            for (int i = 1; i <= 4 && p[i]; i++) {
                char c = p[i];
                cp = cp * 16 + (unsigned)(c <= '9' ? c - '0' : (c | 32) - 'a' + 10);
            }
            p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && p[1] == '\\' && p[2] == 'u') {
                unsigned lo = 0;
                for (int i = 3; i <= 6 && p[i]; i++) {
                    char c = p[i];
                    lo = lo * 16 + (unsigned)(c <= '9' ? c - '0' : (c | 32) - 'a' + 10);
                }
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p += 6;
            }
            if (cp < 0x80) o[k++] = (char)cp;
            else if (cp < 0x800) o[k++] = (char)(0xc0 | cp >> 6), o[k++] = (char)(0x80 | (cp & 0x3f));
            else if (cp < 0x10000)
                o[k++] = (char)(0xe0 | cp >> 12), o[k++] = (char)(0x80 | ((cp >> 6) & 0x3f)), o[k++] = (char)(0x80 | (cp & 0x3f));
            else
                o[k++] = (char)(0xf0 | cp >> 18), o[k++] = (char)(0x80 | ((cp >> 12) & 0x3f)),
                o[k++] = (char)(0x80 | ((cp >> 6) & 0x3f)), o[k++] = (char)(0x80 | (cp & 0x3f));
            break;
        }
        default: o[k++] = *p; break; /* \" \\ \/ */
        }
        if (*p) p++;
    }
    o[k] = '\0';
    return o;
}

/* 0: ok; 1: llama.cpp unavailable (*why set; skip); -1: it ran and failed
 * (r->raw holds its output). */
int llamacpp_greedy(const char *gguf, const char *prompt, int n_tokens, llamacpp_result *r, const char **why)
{
    memset(r, 0, sizeof *r);
    char dir[1024];
    const char *script = llamacpp_script(dir, sizeof dir, why);
    if (!script) return 1;
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "NODE_PATH='%s/node_modules' timeout 300 node '%s' '%s' '%s' %d 2>&1", dir, script, gguf, prompt,
             n_tokens);
    int code = -1;
    r->raw = tu_run(cmd, &code);
    if (!r->raw) return -1;
    const char *j = NULL;
    for (const char *q = r->raw; (q = strstr(q, "{\"text\":\"")); q++) j = q;
    if (code != 0 || !j) return -1;
    r->text = json_string(j + 9);
    const char *t = strstr(j, "\"tokens\":[");
    r->tokens = malloc((size_t)(n_tokens + 1) * sizeof *r->tokens);
    assert_non_null(r->tokens);
    if (t) {
        t += 10;
        while (*t && *t != ']' && r->n_tokens < (size_t)n_tokens + 1) {
            char *e;
            long v = strtol(t, &e, 10);
            if (e == t) break;
            r->tokens[r->n_tokens++] = (int32_t)v;
            t = *e == ',' ? e + 1 : e;
        }
    }
    return 0;
}


const char *llamacpp_lcq(const char **why)
{
    static char path[1200];
    if (getenv("WMAT_NO_PEER")) {
        *why = "llama.cpp peer checks disabled by WMAT_NO_PEER";
        return NULL;
    }
    struct stat st;
    const char *env = getenv("WMAT_LCQ");
    if (env && *env) {
        if (stat(env, &st) == 0) return env;
        *why = "WMAT_LCQ names no file";
        return NULL;
    }
    const char *dir = getenv("WMAT_NODE_LLAMA_DIR");
    if (!dir || !*dir) dir = "/opt/nlc";
    char pkg[1024];
    snprintf(pkg, sizeof pkg, "%s/node_modules/node-llama-cpp/package.json", dir);
    if (stat(pkg, &st) != 0) {
        *why = "node-llama-cpp not installed (set WMAT_NODE_LLAMA_DIR to a folder holding node_modules/node-llama-cpp)";
        return NULL;
    }
    snprintf(path, sizeof path, "%s/lcq-build/lcq", dir);
    if (stat(path, &st) == 0) return path;
    const char *script = tu_data("../tools/llamacpp-quant/build.sh");
    if (!script) {
        *why = "../shared/tools/llamacpp-quant/build.sh not found";
        return NULL;
    }
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "NLC_MODULES='%s/node_modules' LCQ_BUILD='%s/lcq-build' timeout 600 bash '%s' 2>&1", dir, dir,
             script);
    int code = 0;
    char *out = tu_run(cmd, &code);
    if (code != 0 || stat(path, &st) != 0) {
        print_message("lcq build failed:\n%s\n", out ? out : "");
        free(out);
        *why = "building lcq failed";
        return NULL;
    }
    free(out);
    return path;
}

/* Where node-llama-cpp's node_modules are (NULL, with *why, when absent or
 * peers are off). */
static const char *nlc_modules(char *buf, size_t n, const char **why)
{
    if (getenv("WMAT_NO_PEER")) {
        *why = "llama.cpp peer checks disabled by WMAT_NO_PEER";
        return NULL;
    }
    const char *dir = getenv("WMAT_NODE_LLAMA_DIR");
    if (!dir || !*dir) dir = "/opt/nlc";
    snprintf(buf, n, "%s", dir);
    char pkg[1200];
    snprintf(pkg, sizeof pkg, "%s/node_modules/node-llama-cpp/package.json", dir);
    struct stat st;
    if (stat(pkg, &st) != 0) {
        *why = "node-llama-cpp not installed (set WMAT_NODE_LLAMA_DIR to a folder holding node_modules/node-llama-cpp)";
        return NULL;
    }
    return buf;
}

const char *llamacpp_lcppl(const char **why)
{
    static char path[1200];
    struct stat st;
    const char *env = getenv("WMAT_LCPPL");
    if (env && *env && !getenv("WMAT_NO_PEER")) {
        if (stat(env, &st) == 0) return env;
        *why = "WMAT_LCPPL names no file";
        return NULL;
    }
    char dir[1024];
    if (!nlc_modules(dir, sizeof dir, why)) return NULL;
    char src[1200], script[1200];
    snprintf(src, sizeof src, "%s/tests/peer/lcppl.cpp", WMAT_SOURCE_DIR);
    snprintf(script, sizeof script, "%s/tests/peer/build-lcppl.sh", WMAT_SOURCE_DIR);
    struct stat ss;
    if (stat(src, &ss) != 0 || stat(script, &st) != 0) {
        *why = "tests/peer/lcppl.cpp or build-lcppl.sh missing";
        return NULL;
    }
    /* its own folder (not lcq's), rebuilt when the source is newer */
    snprintf(path, sizeof path, "%s/lcppl-wmat-build/lcppl", dir);
    if (stat(path, &st) == 0 && st.st_mtime >= ss.st_mtime) return path;
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "NLC_MODULES='%s/node_modules' LCPPL_BUILD='%s/lcppl-wmat-build' timeout 600 bash '%s' 2>&1",
             dir, dir, script);
    int code = 0;
    char *out = tu_run(cmd, &code);
    if (code != 0 || stat(path, &st) != 0) {
        print_message("lcppl build failed:\n%s\n", out ? out : "");
        free(out);
        *why = "building tests/peer/lcppl.cpp failed (g++ and node-llama-cpp's libraries needed)";
        return NULL;
    }
    free(out);
    return path;
}

static double json_num(const char *s, const char *key, int *ok)
{
    char k[64];
    snprintf(k, sizeof k, "\"%s\": ", key);
    const char *p = strstr(s, k);
    if (!p) {
        *ok = 0;
        return 0.0;
    }
    return strtod(p + strlen(k), NULL);
}

int llamacpp_perplexity(const char *gguf, const char *tokens_u16, int ctx, int chunks, llamacpp_ppl *r, const char **why)
{
    memset(r, 0, sizeof *r);
    const char *bin = llamacpp_lcppl(why);
    if (!bin) return 1;
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "timeout 600 '%s' '%s' '%s' --ctx %d --chunks %d --threads 1 2>&1", bin, gguf, tokens_u16,
             ctx, chunks > 0 ? chunks : -1);
    int code = -1;
    char *out = tu_run(cmd, &code);
    if (!out) return -1;
    const char *j = strstr(out, "{\"model\"");
    int ok = j && code == 0;
    if (ok) {
        r->ppl = json_num(j, "ppl", &ok);
        r->ppl_err = json_num(j, "ppl_err", &ok);
        r->mean_nll = json_num(j, "mean_nll", &ok);
        r->tokens_scored = (long long)json_num(j, "tokens_scored", &ok);
        r->chunks = (int)json_num(j, "chunks", &ok);
    }
    if (!ok) print_message("lcppl failed (exit %d):\n%s\n", code, out);
    free(out);
    return ok ? 0 : -1;
}
