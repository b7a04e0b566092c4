/* Shared helpers for the cmocka test executables. */
#ifndef WMAT_TEST_UTIL_H
#define WMAT_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "wmat.h"

/* Path of a file in the shared data folder (../shared/data or $WMAT_DATA),
 * or NULL if it does not exist. Returned string is static per call slot. */
const char *tu_data(const char *rel);
/* Skip the current test with a message when a data file is missing. */
#define TU_NEED_DATA(var, rel)                                                        \
    const char *var = tu_data(rel);                                                   \
    if (!var) {                                                                       \
        print_message("SKIP: %s not found (set WMAT_DATA or provide ../shared/data)\n", rel); \
        skip();                                                                       \
        return;                                                                       \
    }
/* Assert a wmat call returned WMAT_OK, printing wmat_last_error() if not. */
#define TU_OK(expr)                                                                   \
    do {                                                                              \
        int tu_rc_ = (expr);                                                          \
        if (tu_rc_ != WMAT_OK) fail_msg("%s -> %d: %s", #expr, tu_rc_, wmat_last_error()); \
    } while (0)

/* A fresh temporary directory for this process (removed at exit). */
const char *tu_tmpdir(void);
/* tu_tmpdir()/name into a static rotating buffer. */
const char *tu_tmp(const char *name);
/* Path of the wmat CLI built alongside the tests. */
const char *tu_cli(void);
/* Run a shell command, capture stdout (malloc'd, caller frees) and exit code. */
char *tu_run(const char *cmd, int *exit_code);
/* Write bytes to a file; returns 0 on success. */
int tu_write_file(const char *path, const void *data, size_t n);
/* A LLaMA config for synthetic test models: rope theta 10000, eps 1e-5,
 * BOS 1, EOS 2, untied. */
wmat_config tu_config(int dim, int hidden, int layers, int heads, int kv_heads, int vocab, int seq_len);

#endif
