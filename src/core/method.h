/* What every registered method (quantization, decomposition, and the
 * families to come) says about itself, in one type below the modules that
 * implement methods: its name and family, the statistics it needs, its
 * parameter schema (params.h), the weight kind it produces and a summary.
 * A family's registry row starts with WMAT_METHOD_ROW and adds its own
 * function pointers, so a row is read both as row->name and as the shared
 * descriptor &row->desc; the CLI, the public listing (wmat_method_info) and
 * the tests work on descriptors and never name a method.
 *
 * Also here: the per-tensor override lists both families take,
 * "PATTERN=METHOD[:FIELD]...,...", and the name patterns they match. */
#ifndef WMAT_CORE_METHOD_H
#define WMAT_CORE_METHOD_H

#include "params.h"

/* The families (the strings are what users see: --help, wmat_method_info). */
#define WMAT_FAMILY_QUANTIZATION "quantization"
#define WMAT_FAMILY_DECOMPOSITION "decomposition"
#define WMAT_FAMILY_EXPERIMENT "experiment"

/* Statistics of a layer's input (or of the loss) a method needs. */
enum {
    WMAT_MSTAT_HESSIAN = 1u << 0,   /* 2/N sum x x^T (GPTQ's Hessian) */
    WMAT_MSTAT_ACT_NORMS = 1u << 1, /* mean x_j^2 (llama.cpp's imatrix) */
    WMAT_MSTAT_GRADIENTS = 1u << 2, /* gradients of the loss (no driver collects them yet) */
    WMAT_MSTAT_RESIDUAL = 1u << 3,  /* sum x x^T of the residual stream between blocks (SliceGPT's PCA) */
};

#define WMAT_METHOD_DESC_FIELDS                                                                                        \
    const char *name;                                                                                                  \
    const char *family;            /* WMAT_FAMILY_* */                                                                 \
    unsigned stats;                /* WMAT_MSTAT_* it needs; 0: data-free */                                           \
    unsigned flags;                /* the family's own behaviour bits */                                               \
    const wmat_param_spec *schema; /* the keys it reads, NULL-name terminated */                                       \
    const char *produces;          /* weight kind of its result ("qpacked", "lowrank") */                              \
    const char *summary;           /* one line */

typedef struct {
    WMAT_METHOD_DESC_FIELDS
} wmat_method_desc;

/* The head of a family's row type: the descriptor, whose fields are also
 * the row's own (an anonymous union of two layouts that are one). */
#define WMAT_METHOD_ROW                                                                                                \
    union {                                                                                                            \
        wmat_method_desc desc;                                                                                         \
        struct {                                                                                                       \
            WMAT_METHOD_DESC_FIELDS                                                                                    \
        };                                                                                                             \
    }

/* "Hessian, activation norms", or "nothing (data-free)"; returns buf. */
const char *wmat__method_stats_text(unsigned stats, char *buf, size_t n);
/* Every descriptor's row is complete: name, family, summary, produces,
 * a schema whose defaults parse; WMAT_ERR_INVALID naming what is missing. */
int wmat__method_desc_check(const wmat_method_desc *d);

/* ---- override lists: "PATTERN=METHOD[:FIELD]..." items, comma-separated.
 * PATTERN is a glob (with * ? [) or else a substring of the tensor name;
 * METHOD "keep" (or "fp32") leaves the tensor as it is. */
typedef struct {
    char buf[256];
    const char *pattern, *method;
    char *fields; /* after the first ':', or NULL */
} wmat_override_item;

/* The next item of the list at *s (advanced): 1 with an item, 0 at the end,
 * a negative status on a malformed item (syntax: how the message writes
 * the item's form). */
int wmat__override_next(const char **s, wmat_override_item *it, const char *syntax);
int wmat__override_is_keep(const wmat_override_item *it);
/* 1 when the item's pattern matches name. */
int wmat__override_matches(const wmat_override_item *it, const char *name);
/* Apply the item's fields "KEY=VALUE" or a bool's bare key (or negation)
 * to ps; a key ps lacks is an error when strict, else passed over. Errors
 * name the item's pattern and method. Positional fields are refused (a
 * family with positional fields parses them itself). */
int wmat__override_fields(wmat_pset *ps, wmat_override_item *it, int strict, const char *syntax);
/* Set key on ps for the item (strict as above), the error naming the item. */
int wmat__override_set(wmat_pset *ps, const wmat_override_item *it, const char *key, const char *val, int strict);

/* 1 if one of the comma-separated patterns (glob or substring) matches name. */
int wmat__name_list_match(const char *list, const char *name);

#endif
