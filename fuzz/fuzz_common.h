/* Shared helpers for the fuzz entry points (fuzz/fuzz_*.c).
 *
 * Each target is a plain C function `int wmat_fuzz_NAME(const uint8_t *, size_t)`
 * so that the gcc-built regression runner (tests/test_fuzz_regressions.c) can
 * call it; compiled with -DWMAT_FUZZ_LIBFUZZER it also defines libFuzzer's
 * LLVMFuzzerTestOneInput. Most readers take a path, so the input is written to
 * a file in a per-process scratch directory (on /dev/shm when there is one). */
#ifndef WMAT_FUZZ_COMMON_H
#define WMAT_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <unistd.h>

#include "wmat.h"

#ifdef WMAT_FUZZ_LIBFUZZER
#define WMAT_FUZZ_ENTRY(fn)                                                  \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);            \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)             \
    {                                                                        \
        fn(data, size);                                                      \
        return 0;                                                            \
    }
#else
#define WMAT_FUZZ_ENTRY(fn)
#endif

static char wmat_fuzz_dir_[256];

static inline int wmat_fuzz_rm_(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    remove(p);
    return 0;
}
static inline void wmat_fuzz_cleanup_(void)
{
    if (wmat_fuzz_dir_[0]) nftw(wmat_fuzz_dir_, wmat_fuzz_rm_, 16, FTW_DEPTH | FTW_PHYS);
}

/* The scratch directory of this process (created once, removed at exit). */
static inline const char *wmat_fuzz_dir(void)
{
    if (!wmat_fuzz_dir_[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(wmat_fuzz_dir_, sizeof wmat_fuzz_dir_, "%s/wmat-fuzz-XXXXXX", base);
        if (!mkdtemp(wmat_fuzz_dir_)) abort();
        atexit(wmat_fuzz_cleanup_);
    }
    return wmat_fuzz_dir_;
}

/* dir/name into buf. */
static inline const char *wmat_fuzz_path(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", wmat_fuzz_dir(), name);
    return buf;
}

/* Write bytes to a file (replacing it); aborts on failure (not an input bug). */
static inline void wmat_fuzz_write(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n && fwrite(data, 1, n, f) != n) abort();
    if (fclose(f) != 0) abort();
}

/* Read every byte of a tensor's data so that ASan sees any range past the
 * mapping; returns a value so the loop is not optimized away. */
static inline unsigned wmat_fuzz_touch(const void *p, size_t n)
{
    const volatile unsigned char *b = (const volatile unsigned char *)p;
    unsigned acc = 0;
    if (!p) return 0;
    for (size_t i = 0; i < n; i++) acc += b[i];
    return acc;
}

/* A loaded model: check the error contract on failure, touch everything on
 * success (tensor data, materialized weights), then free. */
static inline void wmat_fuzz_model_check(int rc, wmat_model *m)
{
    if (rc != WMAT_OK) {
        if (m) abort();                        /* no half-built object on failure */
        if (!wmat_last_error()[0]) abort();    /* every failure has a message */
        return;
    }
    int n = wmat_model_n_tensors(m);
    volatile unsigned acc = 0;
    for (int i = 0; i < n; i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        int64_t ne = wmat_tensor_nelem(t);
        if (ne < 0 || t->nbytes != wmat_dtype_bytes(t->dtype, (uint64_t)ne)) abort();
        acc += wmat_fuzz_touch(t->data, t->nbytes);
    }
    wmat_tokenizer *tok = wmat_model_tokenizer(m);
    if (tok) {
        int v = wmat_tokenizer_vocab_size(tok);
        for (int i = 0; i < v && i < 64; i++) {
            size_t len;
            const char *s = wmat_tokenizer_piece(tok, i, &len);
            acc += wmat_fuzz_touch(s, len);
        }
    }
    (void)acc;
    if (wmat_model_n_params(m) < 10000000) (void)wmat_model_materialize(m);
    wmat_model_free(m);
}

#endif
