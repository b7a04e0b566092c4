/* tokenizer.json / tokenizer_config.json in HF directories (src/io/hf_tokenizer.c):
 * the files parse and describe the vocabulary (special tokens, byte tokens,
 * every merge), wmat reads them back to the same ids, a GGUF converted from
 * such a directory carries the tokenizer, and Hugging Face's tokenizers
 * library (npm package `tokenizers`, tests/peer/hf-tokenize.mjs) gives the
 * ids wmat gives on every line of a text (peer cases, test_peer_*). */
#include "support/test_util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/internal.h"

#define TEXT_REL "text/tinystories_valid_head.txt"
#define SP "\xe2\x96\x81"

/* ---------------------------------------------------------------- helpers */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    assert_non_null(b);
    size_t got = fread(b, 1, (size_t)n, f);
    fclose(f);
    b[got] = '\0';
    if (len) *len = got;
    return b;
}

static int file_exists(const char *dir, const char *name)
{
    char p[2048];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat st;
    return stat(p, &st) == 0;
}

static cJSON *read_json_file(const char *dir, const char *name)
{
    char p[2048];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    char *text = slurp(p, NULL);
    if (!text) fail_msg("%s was not written", p);
    cJSON *j = cJSON_Parse(text);
    if (!j) fail_msg("%s does not parse as JSON", p);
    free(text);
    return j;
}

/* The lines of a text file, split at '\n' (a final newline ends the last
 * line), as tests/peer/hf-tokenize.mjs splits them. Pointers into *buf. */
static char **text_lines(const char *path, char **buf, int *n_lines)
{
    size_t len;
    *buf = slurp(path, &len);
    assert_non_null(*buf);
    if (len && (*buf)[len - 1] == '\n') (*buf)[--len] = '\0';
    int n = 1;
    for (size_t i = 0; i < len; i++) n += (*buf)[i] == '\n';
    char **lines = malloc((size_t)n * sizeof *lines);
    assert_non_null(lines);
    int k = 0;
    lines[k++] = *buf;
    for (size_t i = 0; i < len; i++)
        if ((*buf)[i] == '\n') {
            (*buf)[i] = '\0';
            lines[k++] = *buf + i + 1;
        }
    *n_lines = n;
    return lines;
}

/* A tiny model (dim 8) with the given tokenizer's vocabulary and a copy of
 * it, saved as an HF directory; returns the directory. */
static const char *save_hf_with(const wmat_tokenizer *tok, const char *name)
{
    int n = wmat_tokenizer_vocab_size(tok);
    wmat_config c = tu_config(8, 16, 1, 2, 2, n, 256);
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    wmat_tokenizer *copy;
    TU_OK(wmat_tokenizer_clone(tok, &copy));
    wmat_model_set_tokenizer(m, copy);
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_HF;
    const char *dir = tu_tmp(name);
    TU_OK(wmat_model_save(m, dir, &sp));
    wmat_model_free(m);
    return dir;
}

static int is_special(const wmat_tokenizer *t, int id)
{
    int32_t ty = wmat_tokenizer_type(t, id);
    return ty == 2 || ty == 3 || id == wmat_tokenizer_bos(t) || id == wmat_tokenizer_eos(t);
}

/* Id of the non-special piece s[0..n), or -1 (linear: the test's own
 * lookup, independent of the writer's). */
typedef struct {
    const char *s;
    size_t n;
    int id;
} tpiece;
static int tp_cmp(const void *a, const void *b)
{
    const tpiece *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->s, y->s, n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

/* The number of merges the writer must list: every split, at a character
 * boundary, of every non-special piece scoring above -1e10 into two
 * non-special pieces. */
static long expected_merges(const wmat_tokenizer *t)
{
    int n = wmat_tokenizer_vocab_size(t), ns = 0;
    tpiece *s = malloc((size_t)n * sizeof *s);
    assert_non_null(s);
    for (int i = 0; i < n; i++)
        if (!is_special(t, i)) {
            s[ns].s = wmat_tokenizer_piece(t, i, &s[ns].n);
            s[ns].id = i;
            ns++;
        }
    qsort(s, (size_t)ns, sizeof *s, tp_cmp);
    long count = 0;
    for (int k = 0; k < ns; k++) {
        if (!(wmat_tokenizer_score(t, s[k].id) > -1e10f)) continue;
        for (size_t cut = 1; cut < s[k].n; cut++) {
            if (((unsigned char)s[k].s[cut] & 0xC0) == 0x80) continue;
            tpiece l = {s[k].s, cut, 0}, r = {s[k].s + cut, s[k].n - cut, 0};
            if (bsearch(&l, s, (size_t)ns, sizeof *s, tp_cmp) && bsearch(&r, s, (size_t)ns, sizeof *s, tp_cmp)) count++;
        }
    }
    free(s);
    return count;
}

/* A piece in tokenizer.json's spelling (spaces as U+2581), static buffer. */
static const char *sp_spelling(const char *p, size_t n)
{
    static char buf[1024];
    size_t k = 0;
    for (size_t i = 0; i < n && k + 4 < sizeof buf; i++) {
        if (p[i] == ' ') {
            memcpy(buf + k, SP, 3);
            k += 3;
        } else {
            buf[k++] = p[i];
        }
    }
    buf[k] = '\0';
    return buf;
}

static void encode(const wmat_tokenizer *t, const char *s, int32_t **ids, size_t *n)
{
    TU_OK(wmat_tokenizer_encode(t, s, strlen(s), 1, 0, ids, n));
}

static int same_ids(const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
    return na == nb && (na == 0 || !memcmp(a, b, na * sizeof *a));
}

/* ---------------------------------------------------------------- the files */

/* tokenizer.json and tokenizer_config.json of a real vocabulary: structure,
 * special and byte tokens, vocabulary size, every merge in score order. */
static void check_files(const wmat_tokenizer *tok, const char *dir)
{
    int n = wmat_tokenizer_vocab_size(tok);
    cJSON *j = read_json_file(dir, "tokenizer.json");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(model, "type")->valuestring, "BPE");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback")));
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges")));
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(model, "unk_token")->valuestring, "<unk>");
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer")));
    /* the dummy prefix and spaces as SentencePiece spells them */
    const cJSON *norms = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "normalizer"), "normalizers");
    assert_int_equal(cJSON_GetArraySize(norms), 2);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(norms->child, "type")->valuestring, "Prepend");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(norms->child, "prepend")->valuestring, SP);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(norms->child->next, "type")->valuestring, "Replace");
    const cJSON *decs = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "decoder"), "decoders");
    const char *dec_types[] = {"Replace", "ByteFallback", "Fuse", "Strip"};
    assert_int_equal(cJSON_GetArraySize(decs), 4);
    for (int i = 0; i < 4; i++)
        assert_string_equal(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(decs, i), "type")->valuestring, dec_types[i]);

    /* added tokens: <unk>, <s>, </s> at 0, 1, 2 (llama2.c's "\n<s>\n" named as HF names it) */
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(j, "added_tokens");
    const char *special[3] = {"<unk>", "<s>", "</s>"};
    assert_int_equal(cJSON_GetArraySize(added), 3);
    for (int i = 0; i < 3; i++) {
        const cJSON *e = cJSON_GetArrayItem(added, i);
        assert_int_equal(cJSON_GetObjectItemCaseSensitive(e, "id")->valueint, i);
        assert_string_equal(cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring, special[i]);
        assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special")));
    }

    /* every id once, under its piece; the 256 byte tokens at 3..258 */
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    assert_int_equal(cJSON_GetArraySize(vocab), n);
    char *seen = calloc((size_t)n, 1);
    for (const cJSON *e = vocab->child; e; e = e->next) {
        int id = e->valueint;
        assert_true(id >= 0 && id < n);
        assert_false(seen[id]);
        seen[id] = 1;
        if (id < 3) {
            assert_string_equal(e->string, special[id]);
        } else {
            size_t len;
            const char *p = wmat_tokenizer_piece(tok, id, &len);
            assert_string_equal(e->string, sp_spelling(p, len));
        }
    }
    free(seen);
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(vocab, name);
        assert_non_null(e);
        assert_int_equal(e->valueint, 3 + b);
    }

    /* merges: the count of every split, each "a b" joining to a piece, in
     * non-increasing score of that piece */
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    long n_merges = cJSON_GetArraySize(merges), want = expected_merges(tok);
    print_message("vocab %d: %ld merges\n", n, n_merges);
    assert_int_equal(n_merges, want);
    /* (cJSON's object lookup is linear: sort the keys once) */
    tpiece *keys = malloc((size_t)n * sizeof *keys);
    int nk = 0;
    for (const cJSON *e = vocab->child; e; e = e->next) keys[nk++] = (tpiece){e->string, strlen(e->string), e->valueint};
    qsort(keys, (size_t)nk, sizeof *keys, tp_cmp);
    float prev = 1e30f;
    for (const cJSON *e = merges->child; e; e = e->next) {
        assert_true(cJSON_IsString(e));
        const char *sp = strchr(e->valuestring, ' ');
        assert_non_null(sp);
        assert_null(strchr(sp + 1, ' '));
        char joined[1024];
        snprintf(joined, sizeof joined, "%.*s%s", (int)(sp - e->valuestring), e->valuestring, sp + 1);
        tpiece key = {joined, strlen(joined), 0};
        const tpiece *a = bsearch(&key, keys, (size_t)nk, sizeof *keys, tp_cmp);
        if (!a) fail_msg("merge \"%s\" makes \"%s\", not in the vocabulary", e->valuestring, joined);
        float s = wmat_tokenizer_score(tok, a->id);
        assert_true(s <= prev);
        prev = s;
    }
    free(keys);
    cJSON_Delete(j);

    cJSON *cfg = read_json_file(dir, "tokenizer_config.json");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(cfg, "bos_token")->valuestring, "<s>");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(cfg, "eos_token")->valuestring, "</s>");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(cfg, "unk_token")->valuestring, "<unk>");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token")));
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(cfg, "add_eos_token")));
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(cfg, "model_max_length")->valueint, 256);
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(cfg, "added_tokens_decoder");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(dec, "1"), "content")->valuestring, "<s>");
    cJSON_Delete(cfg);
}

/* Written, read back without tokenizer.bin, converted to GGUF: every line
 * of the text has the same ids throughout, and decoding them gives the line
 * back. */
static void check_roundtrip(const char *tok_rel, int vocab, const char *name)
{
    TU_NEED_DATA(tok_path, tok_rel);
    TU_NEED_DATA(text_path, TEXT_REL);
    wmat_tokenizer *tok;
    TU_OK(wmat_tokenizer_load_llama2c(&tok, tok_path, vocab));
    const char *dir = save_hf_with(tok, name);
    assert_true(file_exists(dir, "tokenizer.bin"));
    check_files(tok, dir);

    /* only tokenizer.json left: wmat reads it */
    char p[2048];
    snprintf(p, sizeof p, "%s/tokenizer.bin", dir);
    assert_int_equal(unlink(p), 0);
    wmat_model *hf;
    TU_OK(wmat_model_load(&hf, dir, NULL));
    const wmat_tokenizer *tj = wmat_model_tokenizer(hf);
    assert_non_null(tj);
    assert_int_equal(wmat_tokenizer_vocab_size(tj), vocab);
    assert_int_equal(wmat_tokenizer_bos(tj), 1);
    assert_int_equal(wmat_tokenizer_eos(tj), 2);
    /* ...and a GGUF made from that directory carries it */
    char gguf[2048];
    snprintf(gguf, sizeof gguf, "%s.gguf", dir);
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_GGUF;
    TU_OK(wmat_model_save(hf, gguf, &sp));
    wmat_model *gm;
    TU_OK(wmat_model_load(&gm, gguf, NULL));
    const wmat_tokenizer *tg = wmat_model_tokenizer(gm);
    assert_non_null(tg);

    char *buf;
    int n_lines;
    char **lines = text_lines(text_path, &buf, &n_lines);
    assert_true(n_lines >= 600);
    size_t longest = 0;
    for (int i = 0; i < n_lines; i++)
        if (strlen(lines[i]) > longest) longest = strlen(lines[i]);
    char *back = malloc(longest + 64);
    long bad_json = 0, bad_gguf = 0, bad_decode = 0;
    for (int i = 0; i < n_lines; i++) {
        int32_t *a, *b, *c;
        size_t na, nb, nc;
        encode(tok, lines[i], &a, &na);
        encode(tj, lines[i], &b, &nb);
        encode(tg, lines[i], &c, &nc);
        if (!same_ids(a, na, b, nb) && bad_json++ < 3) print_message("line %d: tokenizer.json's ids differ\n", i + 1);
        if (!same_ids(a, na, c, nc) && bad_gguf++ < 3) print_message("line %d: the GGUF's ids differ\n", i + 1);
        /* decode -> the line -> the same ids */
        size_t k = 0;
        for (size_t t = 1; t < na; t++) {
            char tmp[16];
            size_t len;
            const char *s = wmat_tokenizer_decode(tj, b[t - 1], b[t], tmp, &len);
            memcpy(back + k, s, len);
            k += len;
        }
        back[k] = '\0';
        int32_t *d;
        size_t nd;
        encode(tj, back, &d, &nd);
        if ((strcmp(back, lines[i]) || !same_ids(b, nb, d, nd)) && bad_decode++ < 3)
            print_message("line %d: decode/encode round trip differs\n", i + 1);
        free(a), free(b), free(c), free(d);
    }
    print_message("%s: %d lines; ids differ on %ld (tokenizer.json), %ld (GGUF); %ld decode round trips differ\n",
                  tok_rel, n_lines, bad_json, bad_gguf, bad_decode);
    assert_int_equal(bad_json, 0);
    assert_int_equal(bad_gguf, 0);
    assert_int_equal(bad_decode, 0);
    free(back);
    free(lines);
    free(buf);
    wmat_model_free(gm);
    wmat_model_free(hf);
    wmat_tokenizer_free(tok);
}

static void test_roundtrip_tok512(void **state)
{
    (void)state;
    check_roundtrip("models/tok512.bin", 512, "rt512");
}

static void test_roundtrip_llama32000(void **state)
{
    (void)state;
    check_roundtrip("models/llama2c_tokenizer_32000.bin", 32000, "rt32000");
}

/* No tokenizer: no tokenizer files, no error. */
static void test_no_tokenizer(void **state)
{
    (void)state;
    wmat_config c = tu_config(8, 16, 1, 2, 2, 40, 64);
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_HF;
    const char *dir = tu_tmp("notok");
    TU_OK(wmat_model_save(m, dir, &sp));
    assert_true(file_exists(dir, "config.json"));
    assert_false(file_exists(dir, "tokenizer.json"));
    assert_false(file_exists(dir, "tokenizer_config.json"));
    assert_false(file_exists(dir, "tokenizer.bin"));
    wmat_model_free(m);
}

/* Vocabularies JSON cannot hold as they are: an invalid UTF-8 piece, one
 * with a NUL, duplicates, an empty piece, a piece with a quote and a control
 * character. The files still parse; what JSON cannot hold is left out, a
 * duplicate keeps its first id (as wmat's own lookup does). */
static void test_awkward_vocab(void **state)
{
    (void)state;
    const char *pieces[] = {"<unk>", "<s>", "</s>", " ", "a", " a", "\xff\xfe", "x\0y", "a", "", "\"q\\\x01", "b", " ab"};
    size_t lens[] = {5, 3, 4, 1, 1, 2, 2, 3, 1, 0, 4, 1, 3};
    float scores[] = {0, 0, 0, -5, -4, -1, -2, -2, -3, -3, -3, -4, -2};
    int n = (int)(sizeof lens / sizeof lens[0]);
    wmat_tokenizer *t;
    TU_OK(wmat_tokenizer_from_vocab(&t, n, pieces, lens, scores, NULL, 1, 2));
    const char *dir = save_hf_with(t, "awkward");
    cJSON *j = read_json_file(dir, "tokenizer.json");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "model"), "vocab");
    assert_int_equal(cJSON_GetArraySize(vocab), n - 3); /* invalid UTF-8, NUL, duplicate "a" */
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(vocab, "a")->valueint, 4);
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(vocab, "")->valueint, 9);
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(vocab, "\"q\\\x01")->valueint, 10);
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "model"), "merges");
    /* " a" = " " + "a"; " ab" = " a" + "b" (score -2 after -1) */
    assert_int_equal(cJSON_GetArraySize(merges), 2);
    assert_string_equal(merges->child->valuestring, SP " a");
    assert_string_equal(merges->child->next->valuestring, SP "a b");
    cJSON_Delete(j);
    /* read back: the vocabulary that matters encodes alike */
    char p[2048];
    snprintf(p, sizeof p, "%s/tokenizer.bin", dir);
    assert_int_equal(unlink(p), 0);
    wmat_model *r;
    TU_OK(wmat_model_load(&r, dir, NULL));
    int32_t *a, *b;
    size_t na, nb;
    encode(t, "ab a", &a, &na);
    encode(wmat_model_tokenizer(r), "ab a", &b, &nb);
    assert_true(same_ids(a, na, b, nb));
    assert_int_equal(na, 3);
    assert_int_equal(a[1], 12);
    free(a), free(b);
    wmat_model_free(r);
    wmat_tokenizer_free(t);
}

/* ---------------------------------------------------------------- peer */

/* The npm package tokenizers and node, or NULL with *why. */
static const char *hf_peer(const char **why)
{
    if (getenv("WMAT_NO_PEER")) {
        *why = "peer checks disabled by WMAT_NO_PEER";
        return NULL;
    }
    static char dir[1024];
    const char *d = getenv("WMAT_NPM_TOKENIZERS_DIR");
    if (d && *d) snprintf(dir, sizeof dir, "%s", d);
    else snprintf(dir, sizeof dir, "%s/.cache/wmat-npm-tokenizers", getenv("HOME") ? getenv("HOME") : "/root");
    char pkg[1200];
    snprintf(pkg, sizeof pkg, "%s/node_modules/tokenizers/package.json", dir);
    struct stat st;
    if (stat(pkg, &st) != 0) {
        *why = "npm package tokenizers not installed (npm install tokenizers@0.23 in ~/.cache/wmat-npm-tokenizers, "
               "or set WMAT_NPM_TOKENIZERS_DIR)";
        return NULL;
    }
    char *out = tu_run("command -v node >/dev/null 2>&1 && echo yes", NULL);
    int have = out && !strncmp(out, "yes", 3);
    free(out);
    if (!have) {
        *why = "node is not on PATH";
        return NULL;
    }
    return dir;
}

/* HF's ids for every line of text_path with dir's tokenizer.json, compared
 * with wmat's (BOS included on both sides). Returns the lines that differ. */
static long peer_compare(const char *npm, const char *dir, const wmat_tokenizer *tok, const char *text_path,
                         int *n_lines_out)
{
    char cmd[4096], err[1200];
    snprintf(err, sizeof err, "%s.node-stderr", dir);
    snprintf(cmd, sizeof cmd, "NODE_PATH='%s/node_modules' node '%s/tests/peer/hf-tokenize.mjs' '%s' '%s' 2>'%s'", npm,
             WMAT_SOURCE_DIR, dir, text_path, err);
    int code = -1;
    char *out = tu_run(cmd, &code);
    if (code != 0) {
        char *e = slurp(err, NULL);
        fail_msg("hf-tokenize.mjs failed (%d): %s", code, e ? e : "");
    }
    char *buf;
    int n_lines;
    char **lines = text_lines(text_path, &buf, &n_lines);
    long bad = 0;
    char *q = out;
    for (int i = 0; i < n_lines; i++) {
        int32_t *ids;
        size_t n;
        encode(tok, lines[i], &ids, &n);
        char *eol = strchr(q, '\n');
        if (!eol) fail_msg("hf-tokenize.mjs printed %d lines for %d", i, n_lines);
        *eol = '\0';
        char *r = q;
        size_t k = 0;
        int same = 1;
        for (;;) {
            char *end;
            long v = strtol(r, &end, 10);
            if (end == r) break;
            r = end;
            if (k >= n || v != ids[k]) same = 0;
            k++;
        }
        if (k != n) same = 0;
        if (!same && bad++ < 5) print_message("line %d differs: \"%.80s\"\n  hf:   %.200s\n", i + 1, lines[i], q);
        q = eol + 1;
        free(ids);
    }
    free(lines);
    free(buf);
    free(out);
    *n_lines_out = n_lines;
    return bad;
}

/* Lines that exercise the corners: runs of spaces (Llama's whitespace
 * pieces all score alike), leading and trailing spaces, tabs, characters
 * outside the vocabulary (byte fallback), the empty line. */
static const char *corner_text(void)
{
    static char path[1024];
    snprintf(path, sizeof path, "%s", tu_tmp("corners.txt"));
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    for (int k = 1; k <= 40; k++) fprintf(f, "the%*sdog\n", k, "");
    for (int k = 1; k <= 20; k++) fprintf(f, "%*sOnce upon a time%*s\n", k, "", k % 5, "");
    fputs("\n \n  \n\ttab\tand\t\ttabs\n", f);
    fputs("caf\xc3\xa9 na\xc3\xafve \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x99\x82 emoji \xf0\x9f\x90\x89\xf0\x9f\x90\x89\n", f);
    fputs("\xe2\x80\x94" "dash \xe2\x80\x9c" "quoted\xe2\x80\x9d 3.14159 1,000,000 x==y && a||b\n", f);
    fputs("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa abababababab !!!??? ...... ----\n", f);
    fclose(f);
    return path;
}

/* Asked before anything is allocated: cmocka's skip() does not return, so
 * a test that skipped after loading would leak what it loaded. */
static int peer_ready(void)
{
    const char *why;
    if (hf_peer(&why)) return 1;
    print_message("SKIP: %s\n", why);
    return 0;
}

#define NEED_PEER()                                                                                                    \
    do {                                                                                                               \
        if (!peer_ready()) {                                                                                           \
            skip();                                                                                                    \
            return;                                                                                                    \
        }                                                                                                              \
    } while (0)

static void check_peer(const wmat_tokenizer *tok, const char *name, const char *text_path)
{
    const char *why;
    const char *npm = hf_peer(&why);
    assert_non_null(npm);
    const char *dir = save_hf_with(tok, name);
    int n_lines = 0, n_corner = 0;
    long bad = peer_compare(npm, dir, tok, text_path, &n_lines);
    long bad_corner = peer_compare(npm, dir, tok, corner_text(), &n_corner);
    char p[2048];
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    print_message("vocab %d: HF tokenizers = wmat on %d of %d lines (%.2f%%), %d of %d corner lines; tokenizer.json "
                  "%lld bytes\n",
                  wmat_tokenizer_vocab_size(tok), n_lines - (int)bad, n_lines, 100.0 * (double)(n_lines - bad) / n_lines,
                  n_corner - (int)bad_corner, n_corner, (long long)st.st_size);
    assert_true(n_lines >= 600);
    assert_int_equal(bad, 0);
    assert_int_equal(bad_corner, 0);
}

static void check_peer_file(const char *tok_rel, int vocab, const char *name)
{
    TU_NEED_DATA(tok_path, tok_rel);
    TU_NEED_DATA(text_path, TEXT_REL);
    NEED_PEER();
    wmat_tokenizer *tok;
    TU_OK(wmat_tokenizer_load_llama2c(&tok, tok_path, vocab));
    check_peer(tok, name, text_path);
    wmat_tokenizer_free(tok);
}

static void test_peer_hf_tokenizers_tok512(void **state)
{
    (void)state;
    check_peer_file("models/tok512.bin", 512, "peer512");
}

static void test_peer_hf_tokenizers_llama32000(void **state)
{
    (void)state;
    check_peer_file("models/llama2c_tokenizer_32000.bin", 32000, "peer32000");
}

/* wmat's byte-level tokenizer (train's default): no merges, printable ASCII
 * as pieces, the rest bytes. */
static void test_peer_hf_tokenizers_bytes(void **state)
{
    (void)state;
    TU_NEED_DATA(text_path, TEXT_REL);
    NEED_PEER();
    wmat_tokenizer *tok;
    TU_OK(wmat_tokenizer_bytes(&tok));
    check_peer(tok, "peerbytes", text_path);
    wmat_tokenizer_free(tok);
}

/* A vocabulary as GGUF spells it (U+2581, typed tokens, "<s>"). */
static void test_peer_hf_tokenizers_gguf(void **state)
{
    (void)state;
    TU_NEED_DATA(gguf, "models/stories260K.gguf");
    TU_NEED_DATA(text_path, TEXT_REL);
    NEED_PEER();
    wmat_load_params lp = wmat_load_default_params();
    wmat_model *m;
    TU_OK(wmat_model_load(&m, gguf, &lp));
    assert_non_null(wmat_model_tokenizer(m));
    check_peer(wmat_model_tokenizer(m), "peergguf", text_path);
    wmat_model_free(m);
}

/* A vocabulary without the piece " ": run.c spells the dummy prefix and
 * every space as the byte <0x20>, and so must HF (Prepend(" ") alone). */
static void test_peer_hf_tokenizers_no_space(void **state)
{
    (void)state;
    TU_NEED_DATA(text_path, TEXT_REL);
    const char *merged[] = {"th", "he", "the", "an", "and", "in", "ing", "on", "ce", "Once", "On", "nce", "er", "re"};
    enum { N_MERGED = sizeof merged / sizeof merged[0] };
    enum { N = 3 + 256 + 52 + N_MERGED };
    static char store[N][8];
    const char *pieces[N];
    float scores[N];
    for (int i = 0; i < N; i++) {
        if (i < 3) snprintf(store[i], 8, "%s", (const char *[]){"<unk>", "<s>", "</s>"}[i]);
        else if (i < 259) snprintf(store[i], 8, "<0x%02X>", i - 3);
        else if (i < 259 + 52) snprintf(store[i], 8, "%c", i < 259 + 26 ? 'a' + (i - 259) : 'A' + (i - 285));
        else snprintf(store[i], 8, "%s", merged[i - 311]);
        pieces[i] = store[i];
        scores[i] = i < 259 ? 0.0f : i < 311 ? -1000.0f - (float)i : -(float)(i - 311);
    }
    wmat_tokenizer *tok;
    TU_OK(wmat_tokenizer_from_vocab(&tok, N, pieces, NULL, scores, NULL, 1, 2));
    const char *dir = save_hf_with(tok, "nospace");
    cJSON *j = read_json_file(dir, "tokenizer.json");
    const cJSON *norms = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "normalizer"), "normalizers");
    assert_int_equal(cJSON_GetArraySize(norms), 1);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(norms->child, "prepend")->valuestring, " ");
    cJSON_Delete(j);
    const int ready = peer_ready();
    if (ready) check_peer(tok, "peernospace", text_path);
    wmat_tokenizer_free(tok);
    if (!ready) skip();
}

#ifdef WMAT_FAULT_INJECTION
/* Every allocation and I/O call of an HF save with a tokenizer may fail: the
 * save reports it and leaves no temporary file behind. */
static void test_faults(void **state)
{
    (void)state;
    TU_NEED_DATA(tok_path, "models/tok512.bin");
    wmat_tokenizer *tok;
    TU_OK(wmat_tokenizer_load_llama2c(&tok, tok_path, 512));
    wmat_config c = tu_config(8, 16, 1, 2, 2, 512, 64);
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    wmat_model_set_tokenizer(m, tok);
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_HF;
    const char *dst = tu_tmp("fault-tok");
    for (int io = 0; io < 2; io++) {
        for (long k = 1;; k++) {
            wmat__fault_arm(io ? -1 : k, io ? k : -1);
            int rc = wmat_model_save(m, dst, &sp);
            long calls = io ? wmat__fault_io_calls() : wmat__fault_alloc_calls();
            wmat__fault_arm(-1, -1);
            if (rc != WMAT_OK) assert_true(wmat_last_error()[0] != '\0');
            DIR *d = opendir(dst);
            if (d) {
                struct dirent *de;
                while ((de = readdir(d))) assert_null(strstr(de->d_name, ".tmp."));
                closedir(d);
            }
            if (rc == WMAT_OK && k > calls) {
                print_message("save: %ld %s calls, each failed once\n", calls, io ? "I/O" : "allocation");
                break;
            }
        }
        assert_true(file_exists(dst, "tokenizer.json"));
    }
    wmat_model_free(m);
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_tok512),
        cmocka_unit_test(test_roundtrip_llama32000),
        cmocka_unit_test(test_no_tokenizer),
        cmocka_unit_test(test_awkward_vocab),
        cmocka_unit_test(test_peer_hf_tokenizers_tok512),
        cmocka_unit_test(test_peer_hf_tokenizers_llama32000),
        cmocka_unit_test(test_peer_hf_tokenizers_bytes),
        cmocka_unit_test(test_peer_hf_tokenizers_no_space),
        cmocka_unit_test(test_peer_hf_tokenizers_gguf),
#ifdef WMAT_FAULT_INJECTION
        cmocka_unit_test(test_faults),
#endif
    };
    return tu_run_tests("hf_tokenizer", tests, NULL, NULL);
}
