/* Fuzz target: llama2.c tokenizer files (wmat_tokenizer_load_llama2c), read
 * whole (vocab_size 0) and again with a smaller vocab_size (trailing bytes),
 * then a text encoded and every id decoded. */
#include "fuzz_common.h"

static void exercise(const wmat_tokenizer *t)
{
    static const char text[] = "Once upon a time, \xc3\xa9t\xc3\xa9 <0x0A> \xff\xfe  x\n";
    int32_t *ids = NULL;
    size_t nt = 0, dlen;
    int n = wmat_tokenizer_vocab_size(t);
    char buf[64];
    if (wmat_tokenizer_encode(t, text, sizeof text - 1, 1, 1, &ids, &nt) == WMAT_OK) {
        if (nt > sizeof text - 1 + 3) abort();
        int prev = wmat_tokenizer_bos(t);
        for (size_t i = 0; i < nt; i++) {
            if (ids[i] < 0 || ids[i] >= n) abort();
            const char *d = wmat_tokenizer_decode(t, prev, ids[i], buf, &dlen); /* sets dlen: */
            (void)wmat_fuzz_touch(d, dlen); /* not in one call, whose arguments have no order */
            prev = ids[i];
        }
        free(ids);
    }
    volatile unsigned acc = 0;
    for (int i = 0; i < n && i < 512; i++) {
        size_t len = 0;
        const char *s = wmat_tokenizer_piece(t, i, &len);
        acc += wmat_fuzz_touch(s, len);
        acc += wmat_tokenizer_score(t, i) > 0;
        const char *d = wmat_tokenizer_decode(t, 1, i, buf, &dlen);
        if (d) acc += wmat_fuzz_touch(d, dlen);
    }
    (void)acc;
}

int wmat_fuzz_tokenizer(const uint8_t *data, size_t size);
int wmat_fuzz_tokenizer(const uint8_t *data, size_t size)
{
    char path[512];
    wmat_fuzz_path(path, sizeof path, "tok.bin");
    wmat_fuzz_write(path, data, size);
    wmat_tokenizer *t = NULL;
    wmat_clear_error();
    int rc = wmat_tokenizer_load_llama2c(&t, path, 0);
    if (rc != WMAT_OK) {
        if (t || !wmat_last_error()[0]) abort();
        return 0;
    }
    int n = wmat_tokenizer_vocab_size(t);
    exercise(t);
    wmat_tokenizer_free(t);
    if (n > 1) {
        t = NULL;
        if (wmat_tokenizer_load_llama2c(&t, path, n - 1) == WMAT_OK) {
            if (wmat_tokenizer_vocab_size(t) != n - 1) abort();
            exercise(t);
            wmat_tokenizer_free(t);
        }
    }
    return 0;
}
WMAT_FUZZ_ENTRY(wmat_fuzz_tokenizer)
