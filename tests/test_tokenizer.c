/* Tokenizer tests: run.c's encode() token for token (golden files, and a
 * literal O(n^2) reimplementation of its loop on random strings), decode,
 * save/load round trip, hostile files, and the speed of the fast encoder. */
#include "support/test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h" /* wmat__now */

#if defined(__SANITIZE_ADDRESS__)
#define TT_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TT_SANITIZED 1
#endif
#endif
#ifndef TT_SANITIZED
#define TT_SANITIZED 0
#endif

/* ---------------------------------------------------------------- reference
 * llama2.c run.c's encode(), transcribed literally (sorted vocabulary with
 * bsearch, byte fallback at byte + 3, rescan every pair after each merge),
 * so that the fast encoder can be held to it on any input. */

#include "ref_tokenizer.h"

/* ---------------------------------------------------------------- helpers */

static void assert_same_ids(const int32_t *got, size_t n_got, const int32_t *want, size_t n_want,
                            const char *what)
{
    size_t n = n_got < n_want ? n_got : n_want;
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i])
            fail_msg("%s: token %zu is %d, expected %d (%zu vs %zu tokens)", what, i, (int)got[i],
                     (int)want[i], n_got, n_want);
    if (n_got != n_want) fail_msg("%s: %zu tokens, expected %zu", what, n_got, n_want);
}

static void check_against_ref(const wmat_tokenizer *t, const ref_tok *r, const char *text, int bos,
                              int eos)
{
    size_t len = strlen(text);
    int *want = malloc((len + 3) * sizeof *want);
    int32_t *want32 = malloc((len + 3) * sizeof *want32);
    assert_non_null(want);
    assert_non_null(want32);
    int n_want;
    ref_tok_encode(r, text, bos, eos, want, &n_want);
    for (int i = 0; i < n_want; i++) want32[i] = want[i];
    int32_t *got;
    size_t n_got;
    TU_OK(wmat_tokenizer_encode(t, text, len, bos, eos, &got, &n_got));
    assert_true(n_got <= len + 3);
    assert_same_ids(got, n_got, want32, (size_t)n_want, "fast vs reference");
    free(got);
    free(want);
    free(want32);
}

static int32_t *read_ids(const char *path, size_t *n)
{
    char *s;
    size_t len;
    TU_OK(wmat_read_file(path, &s, &len));
    int32_t *ids = malloc((len / 2 + 2) * sizeof *ids);
    assert_non_null(ids);
    *n = 0;
    char *p = s, *end;
    for (;;) {
        long v = strtol(p, &end, 10);
        if (end == p) break;
        ids[(*n)++] = (int32_t)v;
        p = end;
    }
    free(s);
    return ids;
}

/* A small vocabulary in llama2.c's layout (unk, bos, eos, 256 bytes, then
 * pieces), with many tied scores and a few that run.c never merges. */
static const char *const k_syn_pieces[] = {
    " ", "a", "b", "c", "d", "\xc3\xa9", "\xe6\x9d\xb1", " a", " b", "ab", "ba", "bc", "cd", "aa",
    "bb", "abc", "bcd", "ab ", " ab", " abc", "aab", "abab", "cc", "dd", "dc", " d", "da",
    "\xc3\xa9" "a", "a\xc3\xa9", " \xc3\xa9", "ccc", "cdcd", "never", "ne", "ve", "er",
};
static const float k_syn_scores[] = {
    -1, -2, -2, -3, -3, -4, -4, -1, -1, -1, -1, -2, -2, -1, -5, -3, -3, -2, -1, -1, -2, -1, -1e10f,
    -1, -1, -INFINITY, -2, -2, -1, -3, -1, -3, -1e9f, -1e10f, -1e11f, -6,
};

static wmat_tokenizer *syn_tokenizer_ex(int empty_byte_piece)
{
    enum { NS = sizeof k_syn_pieces / sizeof k_syn_pieces[0] };
    _Static_assert(sizeof k_syn_scores / sizeof k_syn_scores[0] == NS, "one score per piece");
    enum { N = 3 + 256 + NS };
    static char bytes[256][7];
    const char *pieces[N];
    float scores[N];
    pieces[0] = "<unk>";
    pieces[1] = "\n<s>\n";
    pieces[2] = "\n</s>\n";
    for (int b = 0; b < 256; b++) {
        snprintf(bytes[b], sizeof bytes[b], "<0x%02X>", b);
        pieces[3 + b] = bytes[b];
    }
    /* an empty piece where byte 'z' falls back: merges can then absorb it */
    if (empty_byte_piece) pieces[3 + 'z'] = "";
    for (int i = 0; i < 259; i++) scores[i] = 0;
    for (int i = 0; i < NS; i++) {
        pieces[259 + i] = k_syn_pieces[i];
        scores[259 + i] = k_syn_scores[i];
    }
    wmat_tokenizer *t;
    TU_OK(wmat_tokenizer_from_vocab(&t, N, pieces, NULL, scores, NULL, 1, 2));
    if (empty_byte_piece) {
        /* run.c's byte + 3 rule needs the llama2.c layout: go through a file */
        const char *path = tu_tmp("syn_empty.bin");
        TU_OK(wmat_tokenizer_save_llama2c(t, path));
        wmat_tokenizer_free(t);
        TU_OK(wmat_tokenizer_load_llama2c(&t, path, N));
    }
    return t;
}

static wmat_tokenizer *syn_tokenizer(void) { return syn_tokenizer_ex(0); }

static int syn_id(const wmat_tokenizer *t, const char *piece)
{
    for (int i = 0; i < wmat_tokenizer_vocab_size(t); i++) {
        size_t len;
        const char *p = wmat_tokenizer_piece(t, i, &len);
        if (len == strlen(piece) && memcmp(p, piece, len) == 0) return i;
    }
    return -1;
}

static void encode_expect(const wmat_tokenizer *t, const char *text, size_t len, int bos, int eos,
                          const int32_t *want, size_t n_want)
{
    int32_t *got;
    size_t n_got;
    TU_OK(wmat_tokenizer_encode(t, text, len, bos, eos, &got, &n_got));
    assert_same_ids(got, n_got, want, n_want, text);
    free(got);
}

/* ---------------------------------------------------------------- golden */

static void golden(const char *model, const char *suffix, int vocab)
{
    TU_NEED_DATA(tok_path, model);
    wmat_tokenizer *t;
    TU_OK(wmat_tokenizer_load_llama2c(&t, tok_path, vocab));
    int found = 0;
    for (int c = 1; c <= 4; c++) {
        char rel[128];
        snprintf(rel, sizeof rel, "golden/tok_case%d.txt", c);
        const char *txt_path = tu_data(rel);
        snprintf(rel, sizeof rel, "golden/tok_case%d.%s.ids", c, suffix);
        const char *ids_path = tu_data(rel);
        if (!txt_path || !ids_path) continue;
        found++;
        char *text;
        size_t len, n_want, n_got;
        TU_OK(wmat_read_file(txt_path, &text, &len));
        int32_t *want = read_ids(ids_path, &n_want);
        int32_t *got;
        TU_OK(wmat_tokenizer_encode(t, text, len, 1, 0, &got, &n_got));
        assert_same_ids(got, n_got, want, n_want, rel);
        free(got);
        free(want);
        free(text);
    }
    wmat_tokenizer_free(t);
    if (!found) {
        print_message("SKIP: no golden/tok_case*.txt\n");
        skip();
    }
}

static void test_golden_tok512(void **state) { golden("models/tok512.bin", "tok512", 512); }
static void test_golden_llama32000(void **state)
{
    golden("models/llama2c_tokenizer_32000.bin", "llama32000", 32000);
}

/* ---------------------------------------------------------------- semantics */

static void test_synthetic_rules(void **state)
{
    wmat_tokenizer *t = syn_tokenizer();
    int sp = syn_id(t, " "), a = syn_id(t, "a"), sa = syn_id(t, " a");
    assert_true(sp > 0 && a > 0 && sa > 0);
    assert_int_equal(wmat_tokenizer_bos(t), 1);
    assert_int_equal(wmat_tokenizer_eos(t), 2);
    assert_int_equal(wmat_tokenizer_type(t, 0), 2);
    assert_int_equal(wmat_tokenizer_type(t, 1), 3);
    assert_int_equal(wmat_tokenizer_type(t, 3 + 'A'), 6);
    assert_int_equal(wmat_tokenizer_type(t, a), 1);

    /* empty text: no dummy prefix, only the requested specials */
    encode_expect(t, "", 0, 0, 0, NULL, 0);
    encode_expect(t, "", 0, 1, 1, (const int32_t[]){1, 2}, 2);
    /* dummy prefix merges with the first codepoint; eos appended after merging */
    encode_expect(t, "a", 1, 1, 1, (const int32_t[]){1, sa, 2}, 3);
    /* the text ends at the first NUL, as run.c's C string does */
    encode_expect(t, "a\0bbb", 5, 0, 0, (const int32_t[]){sa}, 1);
    /* unknown bytes fall back to byte + 3 */
    encode_expect(t, "Z", 1, 0, 0, (const int32_t[]){sp, 3 + 'Z'}, 2);
    /* "cc" scores exactly -1e10 and " d" -inf: run.c never merges them */
    int c = syn_id(t, "c"), d = syn_id(t, "d"), dd = syn_id(t, "dd"), dc = syn_id(t, "dc");
    encode_expect(t, "cc", 2, 0, 0, (const int32_t[]){sp, c, c}, 3);
    encode_expect(t, "d", 1, 0, 0, (const int32_t[]){sp, d}, 2);
    encode_expect(t, "dc", 2, 0, 0, (const int32_t[]){sp, dc}, 2);
    /* ties go to the leftmost pair: " a", "ab" and "ba" all score -1 */
    encode_expect(t, "aba", 3, 0, 0, (const int32_t[]){syn_id(t, " ab"), a}, 2);
    encode_expect(t, "ddc", 3, 0, 0, (const int32_t[]){sp, dd, c}, 3);
    /* a lone continuation byte and a truncated sequence fall back bytewise */
    encode_expect(t, "\x80", 1, 0, 0, (const int32_t[]){sp, 3 + 0x80}, 2);
    encode_expect(t, "\xe6\x9d", 2, 0, 0, (const int32_t[]){sp, 3 + 0xe6, 3 + 0x9d}, 3);
    /* an ASCII byte swallows following continuation bytes (run.c's grouping) */
    encode_expect(t, "a\x80", 2, 0, 0, (const int32_t[]){sp, 3 + 'a', 3 + 0x80}, 3);
    wmat_tokenizer_free(t);
}

/* GGUF vocabularies: "\xe2\x96\x81" stands for a space and the byte tokens
 * sit wherever the file puts them. */
static void test_gguf_style_vocab(void **state)
{
    enum { N = 6 };
    const char *pieces[N] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "\xe2\x96\x81hi", "<0x21>"};
    const float scores[N] = {0, 0, 0, -1, -1, 0};
    const int32_t types[N] = {2, 3, 3, 1, 1, 6};
    wmat_tokenizer *t;
    TU_OK(wmat_tokenizer_from_vocab(&t, N, pieces, NULL, scores, types, 1, 2));
    size_t len;
    const char *p = wmat_tokenizer_piece(t, 4, &len);
    assert_int_equal(len, 3);
    assert_memory_equal(p, " hi", 3);
    /* 'h' and 'i' have no byte token and become <unk>; "!" finds its byte
     * token by name although it does not sit at '!' + 3 */
    encode_expect(t, "!", 1, 1, 0, (const int32_t[]){1, 3, 5}, 3);
    encode_expect(t, "hi", 2, 0, 0, (const int32_t[]){3, 0, 0}, 3);
    assert_int_equal(wmat_tokenizer_type(t, 5), 6);
    char buf[8];
    const char *s = wmat_tokenizer_decode(t, 3, 5, buf, &len);
    assert_int_equal(len, 1);
    assert_int_equal(s[0], '!');
    s = wmat_tokenizer_decode(t, 1, 4, buf, &len);
    assert_int_equal(len, 2);
    assert_memory_equal(s, "hi", 2);
    wmat_tokenizer_free(t);

    /* bad arguments */
    assert_int_equal(wmat_tokenizer_from_vocab(&t, 0, pieces, NULL, scores, types, 1, 2), WMAT_ERR_INVALID);
    assert_null(t);
    assert_int_equal(wmat_tokenizer_from_vocab(&t, N, pieces, NULL, scores, types, N, 2), WMAT_ERR_INVALID);
    const float nan_scores[N] = {0, 0, NAN, 0, 0, 0};
    assert_int_equal(wmat_tokenizer_from_vocab(&t, N, pieces, NULL, nan_scores, types, 1, 2),
                     WMAT_ERR_FORMAT);
}

static void test_decode(void **state)
{
    wmat_tokenizer *t = syn_tokenizer();
    char buf[8];
    size_t len;
    const char *s = wmat_tokenizer_decode(t, 5, 3 + 0x0A, buf, &len);
    assert_int_equal(len, 1);
    assert_int_equal(s[0], '\n');
    s = wmat_tokenizer_decode(t, 1, 3 + 0xFF, buf, &len);
    assert_int_equal(len, 1);
    assert_int_equal((unsigned char)s[0], 0xFF);
    s = wmat_tokenizer_decode(t, 5, 3 + 'A', NULL, &len); /* no buffer: the tokenizer's copy */
    assert_int_equal(len, 1);
    assert_int_equal(s[0], 'A');
    s = wmat_tokenizer_decode(t, 5, 3, buf, &len); /* <0x00> */
    assert_int_equal(len, 1);
    assert_int_equal(s[0], 0);
    int sa = syn_id(t, " a");
    s = wmat_tokenizer_decode(t, 1, sa, buf, &len);
    assert_int_equal(len, 1);
    assert_memory_equal(s, "a", 1);
    s = wmat_tokenizer_decode(t, 7, sa, buf, &len);
    assert_int_equal(len, 2);
    assert_memory_equal(s, " a", 2);
    s = wmat_tokenizer_decode(t, 7, 1, buf, &len);
    assert_int_equal(len, 5);
    assert_memory_equal(s, "\n<s>\n", 5);
    s = wmat_tokenizer_decode(t, 1, -4, buf, &len);
    assert_int_equal(len, 0);
    s = wmat_tokenizer_decode(t, 1, 1 << 20, buf, &len);
    assert_int_equal(len, 0);
    wmat_tokenizer_free(t);

    const char *path = tu_data("models/tok512.bin");
    if (!path) return;
    TU_OK(wmat_tokenizer_load_llama2c(&t, path, 512));
    for (int b = 0; b < 256; b++) {
        s = wmat_tokenizer_decode(t, 1, 3 + b, buf, &len);
        assert_int_equal(len, 1);
        assert_int_equal((unsigned char)s[0], b);
        assert_int_equal(wmat_tokenizer_type(t, 3 + b), 6);
    }
    wmat_tokenizer_free(t);
}

/* ---------------------------------------------------------------- files */

static void assert_same_tokenizer(const wmat_tokenizer *a, const wmat_tokenizer *b)
{
    assert_int_equal(wmat_tokenizer_vocab_size(a), wmat_tokenizer_vocab_size(b));
    for (int i = 0; i < wmat_tokenizer_vocab_size(a); i++) {
        size_t la, lb;
        const char *pa = wmat_tokenizer_piece(a, i, &la), *pb = wmat_tokenizer_piece(b, i, &lb);
        assert_int_equal(la, lb);
        assert_memory_equal(pa, pb, la);
        float sa = wmat_tokenizer_score(a, i), sb = wmat_tokenizer_score(b, i);
        assert_memory_equal(&sa, &sb, sizeof sa);
    }
}

static void test_roundtrip(void **state)
{
    wmat_tokenizer *t = syn_tokenizer(), *u;
    const char *out = tu_tmp("syn.bin");
    TU_OK(wmat_tokenizer_save_llama2c(t, out));
    TU_OK(wmat_tokenizer_load_llama2c(&u, out, 0));
    assert_same_tokenizer(t, u);
    wmat_tokenizer_free(u);
    TU_OK(wmat_tokenizer_load_llama2c(&u, out, wmat_tokenizer_vocab_size(t)));
    assert_same_tokenizer(t, u);
    wmat_tokenizer_free(u);
    wmat_tokenizer_free(t);

    const char *names[] = {"models/tok512.bin", "models/llama2c_tokenizer_32000.bin"};
    for (int k = 0; k < 2; k++) {
        const char *path = tu_data(names[k]);
        if (!path) continue;
        TU_OK(wmat_tokenizer_load_llama2c(&t, path, 0));
        out = tu_tmp("rt.bin");
        TU_OK(wmat_tokenizer_save_llama2c(t, out));
        TU_OK(wmat_tokenizer_load_llama2c(&u, out, wmat_tokenizer_vocab_size(t)));
        assert_same_tokenizer(t, u);
        /* the file itself comes back byte for byte */
        char *x, *y;
        size_t nx, ny;
        TU_OK(wmat_read_file(path, &x, &nx));
        TU_OK(wmat_read_file(out, &y, &ny));
        assert_int_equal(nx, ny);
        assert_memory_equal(x, y, nx);
        free(x);
        free(y);
        wmat_tokenizer_free(u);
        wmat_tokenizer_free(t);
    }
    /* saving into a missing directory fails cleanly */
    t = syn_tokenizer();
    assert_int_equal(wmat_tokenizer_save_llama2c(t, tu_tmp("no/such/dir/t.bin")), WMAT_ERR_IO);
    wmat_tokenizer_free(t);
}

static void expect_load_fails(const char *path, int vocab, int status)
{
    wmat_tokenizer *t = (wmat_tokenizer *)(uintptr_t)1;
    int rc = wmat_tokenizer_load_llama2c(&t, path, vocab);
    if (rc != status)
        fail_msg("%s (vocab %d): got %d (%s), expected %d", path, vocab, rc, wmat_last_error(), status);
    assert_null(t);
    if (!strstr(wmat_last_error(), path)) fail_msg("message lacks the path: %s", wmat_last_error());
}

static unsigned char *syn_file(size_t *n)
{
    wmat_tokenizer *t = syn_tokenizer();
    const char *p = tu_tmp("base.bin");
    TU_OK(wmat_tokenizer_save_llama2c(t, p));
    wmat_tokenizer_free(t);
    char *d;
    TU_OK(wmat_read_file(p, &d, n));
    return (unsigned char *)d;
}

static void put_i32(unsigned char *p, int32_t v) { memcpy(p, &v, 4); }

static void test_hostile_files(void **state)
{
    size_t n;
    unsigned char *d = syn_file(&n);
    int nv = 3 + 256 + (int)(sizeof k_syn_pieces / sizeof k_syn_pieces[0]);
    const char *p = tu_tmp("hostile.bin");

    expect_load_fails(tu_tmp("does-not-exist.bin"), 0, WMAT_ERR_IO);
    assert_int_equal(tu_write_file(p, d, 0), 0);
    expect_load_fails(p, 0, WMAT_ERR_FORMAT);
    expect_load_fails(p, 512, WMAT_ERR_FORMAT);
    assert_int_equal(tu_write_file(p, d, 3), 0);
    expect_load_fails(p, 0, WMAT_ERR_FORMAT);
    assert_int_equal(tu_write_file(p, d, 4), 0); /* header only: no tokens */
    expect_load_fails(p, 0, WMAT_ERR_FORMAT);
    expect_load_fails(p, 1, WMAT_ERR_FORMAT);

    /* every truncation point fails with the model's vocab size */
    for (size_t cut = 5; cut < n; cut += (cut < 64 ? 1 : 7)) {
        assert_int_equal(tu_write_file(p, d, cut), 0);
        expect_load_fails(p, nv, WMAT_ERR_FORMAT);
    }
    /* asking for more tokens than the file holds */
    assert_int_equal(tu_write_file(p, d, n), 0);
    expect_load_fails(p, nv + 1, WMAT_ERR_FORMAT);
    expect_load_fails(p, 1 << 30, WMAT_ERR_FORMAT);
    /* until-EOF reading rejects a torn last record */
    assert_int_equal(tu_write_file(p, d, n - 1), 0);
    expect_load_fails(p, 0, WMAT_ERR_FORMAT);

    unsigned char *m = malloc(n);
    assert_non_null(m);
    /* record 0 is at byte 4: score, then length */
    const int32_t bad_len[] = {-1, INT32_MIN, INT32_MAX, (int32_t)n, 1 << 30};
    for (size_t k = 0; k < sizeof bad_len / sizeof bad_len[0]; k++) {
        memcpy(m, d, n);
        put_i32(m + 8, bad_len[k]);
        assert_int_equal(tu_write_file(p, m, n), 0);
        expect_load_fails(p, nv, WMAT_ERR_FORMAT);
        expect_load_fails(p, 0, WMAT_ERR_FORMAT);
    }
    memcpy(m, d, n);
    float nan = NAN;
    memcpy(m + 4, &nan, 4);
    assert_int_equal(tu_write_file(p, m, n), 0);
    expect_load_fails(p, nv, WMAT_ERR_FORMAT);
    if (!strstr(wmat_last_error(), "NaN")) fail_msg("message: %s", wmat_last_error());
    memcpy(m, d, n);
    put_i32(m, -5);
    assert_int_equal(tu_write_file(p, m, n), 0);
    expect_load_fails(p, nv, WMAT_ERR_FORMAT);

    /* trailing bytes after the requested vocabulary are ignored, as llama2.c does */
    wmat_tokenizer *t;
    TU_OK(wmat_tokenizer_load_llama2c(&t, p = tu_tmp("base.bin"), 10));
    assert_int_equal(wmat_tokenizer_vocab_size(t), 10);
    int32_t *ids;
    size_t n_ids;
    TU_OK(wmat_tokenizer_encode(t, "hello \xe6\x9d\xb1", 9, 1, 1, &ids, &n_ids));
    free(ids);
    wmat_tokenizer_free(t);
    free(m);
    free(d);
}

/* Random damage must only ever give OK or FORMAT, and a tokenizer that loads
 * must encode without crashing (the sanitizer build checks the "crashing"). */
static void test_fuzz_load(void **state)
{
    size_t n;
    unsigned char *d = syn_file(&n);
    unsigned char *m = malloc(n);
    assert_non_null(m);
    const char *p = tu_tmp("fuzz.bin");
    wmat_rng rng;
    wmat_rng_seed(&rng, 1234);
    for (int it = 0; it < 400; it++) {
        memcpy(m, d, n);
        int flips = 1 + (int)(wmat_rng_u64(&rng) % 8);
        for (int f = 0; f < flips; f++) m[wmat_rng_u64(&rng) % n] = (unsigned char)wmat_rng_u64(&rng);
        size_t len = (it % 3 == 0) ? wmat_rng_u64(&rng) % (n + 1) : n;
        assert_int_equal(tu_write_file(p, m, len), 0);
        int vocab = (it % 2) ? 0 : (int)(wmat_rng_u64(&rng) % 400);
        wmat_tokenizer *t = NULL;
        int rc = wmat_tokenizer_load_llama2c(&t, p, vocab);
        if (rc != WMAT_OK) {
            assert_int_equal(rc, WMAT_ERR_FORMAT);
            assert_null(t);
            continue;
        }
        const char *text = "abc cd \xc3\xa9\xe6\x9d\xb1 never\x80\xff a";
        int32_t *ids;
        size_t n_ids;
        TU_OK(wmat_tokenizer_encode(t, text, strlen(text), 1, 1, &ids, &n_ids));
        for (size_t i = 0; i < n_ids; i++) {
            assert_true(ids[i] >= 0 && ids[i] < wmat_tokenizer_vocab_size(t));
            char buf[8];
            size_t dl;
            wmat_tokenizer_decode(t, i ? ids[i - 1] : 1, ids[i], buf, &dl);
        }
        free(ids);
        wmat_tokenizer_free(t);
    }
    free(m);
    free(d);
}

#ifdef WMAT_FAULT_INJECTION
/* Every allocation and I/O call on the way fails once in turn (builds with
 * WMAT_FAULT_INJECTION): each must come back as a clean error, with nothing
 * leaked (the sanitizer build checks that). */
static int fault_pass(void)
{
    const char *pieces[] = {"<unk>", "<s>", "</s>", " ", "a", "b", " a", "ab", "\xe2\x96\x81" "b"};
    const float scores[] = {0, 0, 0, -1, -2, -2, -1, -1, -3};
    enum { N = sizeof scores / sizeof scores[0] };
    wmat_tokenizer *t = NULL, *u = NULL;
    int32_t *ids = NULL;
    size_t n;
    const char *path = tu_tmp("fault.bin");
    int rc = wmat_tokenizer_from_vocab(&t, N, pieces, NULL, scores, NULL, 1, 2);
    if (rc == WMAT_OK) rc = wmat_tokenizer_encode(t, "ab ab a", 7, 1, 1, &ids, &n);
    if (rc == WMAT_OK) rc = wmat_tokenizer_save_llama2c(t, path);
    if (rc == WMAT_OK) rc = wmat_tokenizer_load_llama2c(&u, path, 0);
    free(ids);
    wmat_tokenizer_free(t);
    wmat_tokenizer_free(u);
    return rc;
}
#endif

static void test_fault_injection(void **state)
{
#ifndef WMAT_FAULT_INJECTION
    print_message("SKIP: built without WMAT_FAULT_INJECTION\n");
    skip();
#else
    for (int io = 0; io < 2; io++) {
        for (long k = 1;; k++) {
            wmat__fault_arm(io ? 0 : k, io ? k : 0);
            int rc = fault_pass();
            long calls = io ? wmat__fault_io_calls() : wmat__fault_alloc_calls();
            wmat__fault_arm(0, 0);
            if (calls < k) {
                TU_OK(rc); /* the fault never fired: the whole pass must succeed */
                break;
            }
            if (rc != (io ? WMAT_ERR_IO : WMAT_ERR_NOMEM))
                fail_msg("%s fault %ld: got %d (%s)", io ? "I/O" : "alloc", k, rc, wmat_last_error());
        }
    }
#endif
}

/* ---------------------------------------------------------------- property */

/* Random text built from vocabulary pieces (to provoke long merge chains and
 * ties), ASCII, valid multi-byte UTF-8 and stray continuation/invalid bytes. */
static size_t random_text(wmat_rng *rng, const ref_tok *r, char *out, size_t max)
{
    static const char *const utf8[] = {"\xc3\xa9", "\xe6\x9d\xb1", "\xf0\x9f\x99\x82", "\xe2\x96\x81",
                                       "\xc3", "\x80", "\xbf\xbf\xbf\xbf\xbf", "\xff", "\xf0\x9f"};
    size_t n = 0, target = 1 + wmat_rng_u64(rng) % max;
    while (n < target) {
        const char *s;
        char one[2] = {0, 0};
        uint64_t k = wmat_rng_u64(rng) % 10;
        if (k < 5) {
            s = r->vocab[wmat_rng_u64(rng) % (uint64_t)r->n];
        } else if (k < 8) {
            one[0] = (char)(1 + wmat_rng_u64(rng) % 127);
            if (k == 7) one[0] = " \n\tezab"[wmat_rng_u64(rng) % 7];
            s = one;
        } else {
            s = utf8[wmat_rng_u64(rng) % (sizeof utf8 / sizeof utf8[0])];
        }
        size_t l = strlen(s);
        if (n + l > max) break;
        memcpy(out + n, s, l);
        n += l;
    }
    out[n] = '\0';
    return n;
}

static void property(const wmat_tokenizer *t, int cases, size_t max_len, uint64_t seed)
{
    ref_tok r;
    assert_int_equal(ref_tok_build(&r, t), 0);
    wmat_rng rng;
    wmat_rng_seed(&rng, seed);
    char *text = malloc(max_len + 1);
    assert_non_null(text);
    for (int i = 0; i < cases; i++) {
        random_text(&rng, &r, text, max_len);
        check_against_ref(t, &r, text, i % 2, i % 3 == 0);
    }
    free(text);
    ref_tok_free(&r);
}

static void test_property_synthetic(void **state)
{
    wmat_tokenizer *t = syn_tokenizer();
    property(t, TT_SANITIZED ? 1000 : 4000, 48, 1);
    wmat_tokenizer_free(t);
}

/* An empty piece defeats the encoder's segmenting shortcut (and makes merges
 * that absorb a symbol without changing the text). */
static void test_property_empty_piece(void **state)
{
    wmat_tokenizer *t = syn_tokenizer_ex(1);
    ref_tok r;
    assert_int_equal(ref_tok_build(&r, t), 0);
    check_against_ref(t, &r, "zz az za abzzab z", 1, 0);
    ref_tok_free(&r);
    property(t, TT_SANITIZED ? 500 : 2000, 48, 4);
    wmat_tokenizer_free(t);
}

static void test_property_tok512(void **state)
{
    TU_NEED_DATA(path, "models/tok512.bin");
    wmat_tokenizer *t;
    TU_OK(wmat_tokenizer_load_llama2c(&t, path, 512));
    property(t, TT_SANITIZED ? 150 : 600, 200, 2);
    wmat_tokenizer_free(t);
}

static void test_property_llama32000(void **state)
{
    TU_NEED_DATA(path, "models/llama2c_tokenizer_32000.bin");
    wmat_tokenizer *t;
    TU_OK(wmat_tokenizer_load_llama2c(&t, path, 32000));
    property(t, TT_SANITIZED ? 60 : 250, 160, 3);
    wmat_tokenizer_free(t);
}

/* ---------------------------------------------------------------- speed */

static void encode_big(const char *rel)
{
    TU_NEED_DATA(tok_path, "models/tok512.bin");
    TU_NEED_DATA(txt_path, rel);
    wmat_tokenizer *t;
    TU_OK(wmat_tokenizer_load_llama2c(&t, tok_path, 512));
    char *text;
    size_t len;
    TU_OK(wmat_read_file(txt_path, &text, &len));
    int32_t *ids;
    size_t n;
    double t0 = wmat__now();
    TU_OK(wmat_tokenizer_encode(t, text, len, 1, 0, &ids, &n));
    double dt = wmat__now() - t0;
    print_message("%s: %zu bytes -> %zu tokens in %.3f s (%.1f MB/s)\n", rel, len, n, dt,
                  (double)len / dt / 1e6);
#if defined(NDEBUG) && !TT_SANITIZED
    if (dt >= 1.0) fail_msg("encoding %zu bytes took %.3f s (limit 1 s)", len, dt);
#endif
    /* decoding the ids after BOS gives the text back, byte for byte */
    assert_true(n >= 2);
    assert_int_equal(ids[0], 1);
    char *back = malloc(len + 64);
    assert_non_null(back);
    size_t k = 0;
    for (size_t i = 1; i < n; i++) {
        char buf[8];
        size_t l;
        const char *s = wmat_tokenizer_decode(t, ids[i - 1], ids[i], buf, &l);
        if (k + l > len) fail_msg("decoded text is longer than the input at token %zu", i);
        memcpy(back + k, s, l);
        k += l;
    }
    assert_int_equal(k, len);
    assert_memory_equal(back, text, len);
    free(back);
    free(ids);
    free(text);
    wmat_tokenizer_free(t);
}

/* golden/tinyshakespeare.tok512.u16 is run.c's own encoding of the text cut
 * into pieces: paragraphs at blank lines, whitespace-trimmed, long ones cut
 * after the first line that takes them to 1500 bytes; each piece encoded
 * with BOS. Cutting the same way must give the same 690k tokens. */
static void test_golden_stream_tinyshakespeare(void **state)
{
    TU_NEED_DATA(tok_path, "models/tok512.bin");
    TU_NEED_DATA(txt_path, "text/tinyshakespeare.txt");
    TU_NEED_DATA(u16_path, "golden/tinyshakespeare.tok512.u16");
    wmat_tokenizer *t;
    TU_OK(wmat_tokenizer_load_llama2c(&t, tok_path, 512));
    char *text;
    size_t len, n_want, k = 0, pieces = 0;
    TU_OK(wmat_read_file(txt_path, &text, &len));
    int32_t *want;
    TU_OK(wmat_read_tokens_u16(u16_path, &want, &n_want));
    for (size_t p = 0; p < len;) {
        const char *nn = memmem(text + p, len - p, "\n\n", 2);
        size_t q = nn ? (size_t)(nn - text) : len;
        size_t a = p, b = q;
        while (a < b && strchr(" \t\n\r\v\f", text[a])) a++;
        while (b > a && strchr(" \t\n\r\v\f", text[b - 1])) b--;
        for (size_t start = a, e = a; start < b; e++) {
            if (e < b && text[e] != '\n') continue;
            if (e - start < 1500 && e < b) continue;
            int32_t *ids;
            size_t n;
            TU_OK(wmat_tokenizer_encode(t, text + start, e - start, 1, 0, &ids, &n));
            if (k + n > n_want) fail_msg("piece %zu: more tokens than the golden stream", pieces);
            for (size_t i = 0; i < n; i++)
                if (ids[i] != want[k + i])
                    fail_msg("piece %zu (text byte %zu), token %zu: %d, expected %d", pieces, start, i,
                             (int)ids[i], (int)want[k + i]);
            k += n;
            pieces++;
            free(ids);
            start = e + 1;
        }
        p = nn ? q + 2 : len;
    }
    assert_int_equal(k, n_want);
    print_message("%zu pieces, %zu tokens equal to run.c's\n", pieces, k);
    free(want);
    free(text);
    wmat_tokenizer_free(t);
}

static void test_speed_tinyshakespeare(void **state) { encode_big("text/tinyshakespeare.txt"); }
static void test_speed_tinystories(void **state) { encode_big("text/tinystories_valid_head.txt"); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_synthetic_rules),     cmocka_unit_test(test_gguf_style_vocab),
        cmocka_unit_test(test_decode),              cmocka_unit_test(test_golden_tok512),
        cmocka_unit_test(test_golden_llama32000),   cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_hostile_files),       cmocka_unit_test(test_fuzz_load),
        cmocka_unit_test(test_fault_injection),
        cmocka_unit_test(test_property_synthetic),  cmocka_unit_test(test_property_empty_piece),
        cmocka_unit_test(test_property_tok512),     cmocka_unit_test(test_golden_stream_tinyshakespeare),
        cmocka_unit_test(test_property_llama32000), cmocka_unit_test(test_speed_tinyshakespeare),
        cmocka_unit_test(test_speed_tinystories),
    };
    return tu_run_tests("tokenizer", tests, NULL, NULL);
}
