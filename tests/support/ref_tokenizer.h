/* A literal transcription of llama2.c run.c's encode(): O(n^2), the
 * reference the fast tokenizer is tested and benchmarked against. */
#ifndef WMAT_REF_TOKENIZER_H
#define WMAT_REF_TOKENIZER_H

#include <stddef.h>

#include "wmat.h"

typedef struct {
    const char *str;
    int id;
} ref_index;

typedef struct {
    int n;
    char **vocab;
    float *scores;
    ref_index *sorted;
    size_t max_token_length;
} ref_tok;

/* Copy the vocabulary of t; 0 on success, -1 when out of memory. */
int ref_tok_build(ref_tok *r, const wmat_tokenizer *t);
void ref_tok_free(ref_tok *r);
/* run.c's encode(); tokens must hold strlen(text) + 3 ids. */
void ref_tok_encode(const ref_tok *r, const char *text, int bos, int eos, int *tokens, int *n_tokens);

#endif
