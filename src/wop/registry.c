/* The registry of weight kinds: one line per kind. A new kind is its own
 * file defining `const wmat_wkind wmat__wkind_<name>` plus a line here;
 * tests/test_wop.c holds every kind listed here to the conformance suite. */
#include "wop.h"

#include <string.h>

extern const wmat_wkind wmat__wkind_f32, wmat__wkind_f16, wmat__wkind_bf16, wmat__wkind_q8_0, wmat__wkind_q4_0;
extern const wmat_wkind wmat__wkind_qpacked, wmat__wkind_lowrank;
extern const wmat_wkind wmat__wkind_nm, wmat__wkind_sparse;
extern const wmat_wkind wmat__wkind_monarch, wmat__wkind_sum;
extern const wmat_wkind wmat__wkind_q4_1, wmat__wkind_q5_0, wmat__wkind_q5_1, wmat__wkind_q2_k, wmat__wkind_q3_k,
    wmat__wkind_q4_k, wmat__wkind_q5_k, wmat__wkind_q6_k, wmat__wkind_iq4_nl, wmat__wkind_iq4_xs;
extern const wmat_wkind wmat__wkind_pbllm;
extern const wmat_wkind wmat__wkind_dsf;
extern const wmat_wkind wmat__wkind_dgq;

static const wmat_wkind *const g_kinds[] = {
    &wmat__wkind_f32,     /* kind_f32.c */
    &wmat__wkind_f16,     /* kind_stored.c */
    &wmat__wkind_bf16,    /* kind_stored.c */
    &wmat__wkind_q8_0,    /* kind_stored.c */
    &wmat__wkind_q4_0,    /* kind_stored.c */
    &wmat__wkind_qpacked, /* kind_qpacked.c */
    &wmat__wkind_lowrank, /* kind_lowrank.c */
    &wmat__wkind_nm,      /* kind_sparse.c */
    &wmat__wkind_sparse,  /* kind_sparse.c */
    &wmat__wkind_monarch, /* kind_monarch.c */
    &wmat__wkind_sum,     /* kind_sum.c */
    &wmat__wkind_q4_1, &wmat__wkind_q5_0, &wmat__wkind_q5_1, &wmat__wkind_q2_k, &wmat__wkind_q3_k, /* kind_ggml.c */
    &wmat__wkind_q4_k, &wmat__wkind_q5_k, &wmat__wkind_q6_k, &wmat__wkind_iq4_nl, &wmat__wkind_iq4_xs, /* kind_ggml.c */
    &wmat__wkind_pbllm,   /* kind_pbllm.c */
    &wmat__wkind_bcq,     /* kind_bcq.c (declared in wop.h) */
    &wmat__wkind_dsf,     /* kind_dsf.c */
    &wmat__wkind_dgq,     /* kind_dgq.c */
    &wmat__wkind_bitstack, /* kind_bitstack.c (declared in wop.h) */
};
#define N_KINDS ((int)(sizeof g_kinds / sizeof g_kinds[0]))

int wmat__wkind_count(void) { return N_KINDS; }
const wmat_wkind *wmat__wkind_at(int i) { return i >= 0 && i < N_KINDS ? g_kinds[i] : NULL; }

const wmat_wkind *wmat__wkind_find(const char *name)
{
    for (int i = 0; i < N_KINDS; i++)
        if (!strcmp(g_kinds[i]->name, name)) return g_kinds[i];
    return NULL;
}

const wmat_wkind *wmat__wkind_of(const wmat_tensor *t)
{
    if (!t || t->ndim != 2 || !t->data) return NULL;
    if (t->dtype == WMAT_OBJ) return ((const wmat_wobj *)t->data)->kind;
    for (int i = 0; i < N_KINDS; i++)
        if (g_kinds[i]->dtype == t->dtype) return g_kinds[i];
    return NULL;
}
