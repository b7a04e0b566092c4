/* Tokenizer benchmark: the O(n log n) encoder against a literal transcription
 * of llama2.c run.c's O(n^2) encode() on Tiny Shakespeare.
 *
 * The reference is too slow for the whole 1 MB text (hours), so it runs on
 * two prefixes (default 10 KB and 20 KB) and its full-text time is
 * extrapolated quadratically from the longer one: every merge rescans all
 * remaining pairs. The exponent measured between the two prefixes is printed
 * as a check of that assumption. Both encoders must agree on the prefixes
 * before anything is timed.
 *
 * usage: bench_tokenizer [prefix_kb] [tokenizer.bin] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "core/internal.h" /* wmat__now */
#include "wmat.h"

#include "ref_tokenizer.h"

/* ---- timing helpers */

/* Best of `reps` runs of the fast encoder; -1 on failure. */
static double time_fast(const wmat_tokenizer *t, const char *text, size_t len, int reps, size_t *n_tok)
{
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        int32_t *ids;
        double t0 = wmat__now();
        if (wmat_tokenizer_encode(t, text, len, 1, 0, &ids, n_tok) != WMAT_OK) return -1;
        double dt = wmat__now() - t0;
        free(ids);
        if (dt < best) best = dt;
    }
    return best;
}

/* Time the reference on text[0..len) and check that it agrees with the fast
 * encoder; -1 if they differ. */
static double time_ref_checked(const wmat_tokenizer *t, const ref_tok *r, const char *text, size_t len)
{
    char *s = malloc(len + 1);
    int *ref = malloc((len + 3) * sizeof *ref);
    if (!s || !ref) abort();
    memcpy(s, text, len);
    s[len] = '\0';
    int n_ref;
    double t0 = wmat__now();
    ref_tok_encode(r, s, 1, 0, ref, &n_ref);
    double dt = wmat__now() - t0;
    int32_t *ids;
    size_t n;
    if (wmat_tokenizer_encode(t, s, len, 1, 0, &ids, &n) != WMAT_OK) abort();
    int same = n == (size_t)n_ref;
    for (size_t i = 0; same && i < n; i++) same = ids[i] == ref[i];
    if (!same)
        fprintf(stderr, "MISMATCH on a %zu-byte prefix: fast %zu tokens, reference %d\n", len, n, n_ref);
    free(ids);
    free(ref);
    free(s);
    return same ? dt : -1;
}

int main(int argc, char **argv)
{
    size_t prefix = (argc > 1 ? (size_t)atol(argv[1]) : 20) * 1024;
    if (prefix < 2048) prefix = 2048;
    char tok_path[4096], txt_path[4096];
    snprintf(tok_path, sizeof tok_path, "%s", argc > 2 ? argv[2] : WMAT_DATA_DIR "/models/tok512.bin");
    snprintf(txt_path, sizeof txt_path, "%s", WMAT_DATA_DIR "/text/tinyshakespeare.txt");

    wmat_tokenizer *t;
    if (wmat_tokenizer_load_llama2c(&t, tok_path, 0) != WMAT_OK) {
        fprintf(stderr, "SKIP: %s\n", wmat_last_error());
        return 0;
    }
    char *text;
    size_t len;
    if (wmat_read_file(txt_path, &text, &len) != WMAT_OK) {
        fprintf(stderr, "SKIP: %s\n", wmat_last_error());
        wmat_tokenizer_free(t);
        return 0;
    }
    if (prefix > len) prefix = len;
    ref_tok r;
    if (ref_tok_build(&r, t) != 0) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }

    printf("tokenizer %s (%d tokens), text %s (%zu bytes)\n", tok_path, wmat_tokenizer_vocab_size(t),
           txt_path, len);

    /* validate first: both encoders on the two prefixes */
    size_t half = prefix / 2;
    double ref_half = time_ref_checked(t, &r, text, half);
    double ref_full_prefix = ref_half < 0 ? -1 : time_ref_checked(t, &r, text, prefix);
    if (ref_half < 0 || ref_full_prefix < 0) {
        fprintf(stderr, "FAIL: fast encoder differs from run.c's algorithm\n");
        return 1;
    }
    size_t n_tok;
    double fast_prefix = time_fast(t, text, prefix, 5, &n_tok);
    double fast_all = time_fast(t, text, len, 3, &n_tok);
    if (fast_prefix < 0 || fast_all < 0) {
        fprintf(stderr, "FAIL: %s\n", wmat_last_error());
        return 1;
    }
    double expo = log(ref_full_prefix / ref_half) / log((double)prefix / (double)half);
    double ref_all = ref_full_prefix * pow((double)len / (double)prefix, 2.0);

    printf("validated: fast == run.c reference on %zu- and %zu-byte prefixes\n", half, prefix);
    printf("%-36s %10s %12s %10s\n", "", "seconds", "MB/s", "speedup");
    printf("%-36s %10.4g %12.4g %10s\n", "reference, prefix (measured)", ref_full_prefix,
           prefix / ref_full_prefix / 1e6, "1x");
    printf("%-36s %10.4g %12.4g %9.0fx\n", "fast, prefix (measured)", fast_prefix, prefix / fast_prefix / 1e6,
           ref_full_prefix / fast_prefix);
    printf("%-36s %10.4g %12.4g %10s\n", "reference, full text (extrap. n^2)", ref_all, len / ref_all / 1e6,
           "1x");
    printf("%-36s %10.4g %12.4g %9.0fx\n", "fast, full text (measured)", fast_all, len / fast_all / 1e6,
           ref_all / fast_all);
    printf("reference scaling exponent measured between %zu and %zu bytes: %.2f; full text: %zu tokens\n",
           half, prefix, expo, n_tok);

    ref_tok_free(&r);
    free(text);
    wmat_tokenizer_free(t);
    return 0;
}
