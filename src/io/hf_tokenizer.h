/* Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json) made
 * from wmat's SentencePiece-style (llama2.c) tokenizer. Private to src/io. */
#ifndef WMAT_HF_TOKENIZER_H
#define WMAT_HF_TOKENIZER_H

#include "../core/internal.h"

#define WMAT_HF_TOKENIZER_JSON "tokenizer.json"
#define WMAT_HF_TOKENIZER_CONFIG "tokenizer_config.json"

/* tokenizer.json text for t: a BPE model with byte fallback whose merges,
 * applied by rank as the tokenizers library does, give the ids of
 * wmat_tokenizer_encode (run.c's highest-score-first merging), with
 * SentencePiece's "▁" spelling and dummy prefix. *out (NUL-terminated,
 * *len bytes without the NUL) is the caller's, freed with wmat__free. */
int wmat__hf_tokenizer_json(const wmat_tokenizer *t, char **out, size_t *len);

/* tokenizer_config.json text for t (special tokens, model_max_length =
 * max_len when > 0); ownership as above. */
int wmat__hf_tokenizer_config_json(const wmat_tokenizer *t, int max_len, char **out, size_t *len);

#endif
