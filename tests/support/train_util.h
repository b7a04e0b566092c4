/* Helpers of the adapter tests (test_vera_lamda, test_compacter_s2lora,
 * test_adalora): a tiny tied model, a fixed token pattern over its 13-id
 * vocabulary, and the check of every trainable float's gradient against
 * central differences of the trainer's own loss. */
#ifndef WMAT_TRAIN_UTIL_H
#define WMAT_TRAIN_UTIL_H

#include "test_util.h"

#include "train/train.h"

/* dim x hidden, `layers` blocks, 4 heads over 2 KV heads, vocab 13, ctx 16,
 * tied embeddings, weights N(0, 0.3) from seed */
wmat_model *tu_tiny_model(uint64_t seed, int dim, int hidden, int layers);
/* The adapter tests' run: `adapter` at rank (alpha 8) on all seven linears,
 * batch 2 x 8, 20 steps (warmup 2), lr 2e-2, weight decay 0.1, on oc */
wmat_train_params tu_adapter_params(wmat_context *oc, const char *adapter, int rank);
/* n ids in 0..12 in a fixed pattern (malloc'd) */
int32_t *tu_pattern_tokens(size_t n);
/* Every trainable float of t: the gradient of two windows of 8 tokens
 * against (L(p + h) - L(p - h)) / 2h with h = 1e-2, within 2e-3 max|fd| +
 * 2e-5 (and max|fd| > 1e-4, so that the check can fail); `who` names the
 * case in the messages. */
void tu_trainer_fd_check(wmat_trainer *t, const char *who);
/* The same check with step h */
void tu_trainer_fd_check_h(wmat_trainer *t, const char *who, float h);

#endif
