/* A deliberately plain re-statement of llama2.c's run.c forward pass, used
 * as the reference the runtime is tested against. It reads the checkpoint
 * with stdio (independently of wmat's loader) and computes one token at a
 * time with sequential float sums, exactly as run.c does. */
#ifndef WMAT_REF_LLAMA2C_H
#define WMAT_REF_LLAMA2C_H

typedef struct ref_model ref_model;

ref_model *ref_load(const char *path); /* NULL on failure */
void ref_free(ref_model *r);
int ref_vocab(const ref_model *r);
int ref_seq_len(const ref_model *r);
/* logits of the next token after `token` at `pos` (positions in order). */
float *ref_forward(ref_model *r, int token, int pos);

#endif
