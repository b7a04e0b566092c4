#include "ref_tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int ref_cmp(const void *a, const void *b)
{
    return strcmp(((const ref_index *)a)->str, ((const ref_index *)b)->str);
}

int ref_tok_build(ref_tok *r, const wmat_tokenizer *t)
{
    r->n = wmat_tokenizer_vocab_size(t);
    r->vocab = calloc((size_t)r->n, sizeof *r->vocab);
    r->scores = calloc((size_t)r->n, sizeof *r->scores);
    r->sorted = calloc((size_t)r->n, sizeof *r->sorted);
    if (!r->vocab || !r->scores || !r->sorted) return -1;
    r->max_token_length = 0;
    for (int i = 0; i < r->n; i++) {
        size_t len;
        const char *p = wmat_tokenizer_piece(t, i, &len);
        if (!(r->vocab[i] = malloc(len + 1))) return -1;
        memcpy(r->vocab[i], p, len);
        r->vocab[i][len] = '\0';
        r->scores[i] = wmat_tokenizer_score(t, i);
        r->sorted[i].str = r->vocab[i];
        r->sorted[i].id = i;
        if (strlen(r->vocab[i]) > r->max_token_length) r->max_token_length = strlen(r->vocab[i]);
    }
    qsort(r->sorted, (size_t)r->n, sizeof *r->sorted, ref_cmp);
    return 0;
}

void ref_tok_free(ref_tok *r)
{
    for (int i = 0; r->vocab && i < r->n; i++) free(r->vocab[i]);
    free(r->vocab);
    free(r->scores);
    free(r->sorted);
}

static int ref_lookup(const ref_tok *r, const char *str)
{
    ref_index key = {.str = str};
    ref_index *res = bsearch(&key, r->sorted, (size_t)r->n, sizeof *r->sorted, ref_cmp);
    return res ? res->id : -1;
}

void ref_tok_encode(const ref_tok *r, const char *text, int bos, int eos, int *tokens, int *n_tokens)
{
    char *buf = malloc(r->max_token_length * 2 + 1 + 2);
    if (!buf) abort();
    size_t str_len = 0;
    *n_tokens = 0;
    if (bos) tokens[(*n_tokens)++] = 1;
    if (text[0] != '\0') tokens[(*n_tokens)++] = ref_lookup(r, " ");
    for (const char *c = text; *c != '\0'; c++) {
        if ((*c & 0xC0) != 0x80) str_len = 0;
        buf[str_len++] = *c;
        buf[str_len] = '\0';
        if ((*(c + 1) & 0xC0) == 0x80 && str_len < 4) continue;
        int id = ref_lookup(r, buf);
        if (id != -1) {
            tokens[(*n_tokens)++] = id;
        } else {
            for (size_t i = 0; i < str_len; i++) tokens[(*n_tokens)++] = (unsigned char)buf[i] + 3;
        }
        str_len = 0;
    }
    for (;;) {
        float best_score = -1e10;
        int best_id = -1, best_idx = -1;
        for (int i = 0; i < *n_tokens - 1; i++) {
            snprintf(buf, r->max_token_length * 2 + 3, "%s%s", r->vocab[tokens[i]], r->vocab[tokens[i + 1]]);
            int id = ref_lookup(r, buf);
            if (id != -1 && r->scores[id] > best_score) {
                best_score = r->scores[id];
                best_id = id;
                best_idx = i;
            }
        }
        if (best_idx == -1) break;
        tokens[best_idx] = best_id;
        for (int i = best_idx + 1; i < *n_tokens - 1; i++) tokens[i] = tokens[i + 1];
        (*n_tokens)--;
    }
    if (eos) tokens[(*n_tokens)++] = 2;
    free(buf);
}
