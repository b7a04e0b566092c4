/* The catalogue: every registered method of every family, read from the
 * families' own registries (src/quant's wmat__qmethods, src/decomp's
 * wmat__dmethods, src/experiment's wmat__experiments) as shared descriptors (core/method.h). It sits above the
 * families so that they stay peers; the public listing (wmat_method_count,
 * wmat_method_info, wmat_method_key_info) and the CLI read it. A new family
 * adds one loop to wmat__method_at. */
#ifndef WMAT_CATALOG_H
#define WMAT_CATALOG_H

#include "core/method.h"

/* Descriptor i over all families (quantization first), NULL past the end. */
const wmat_method_desc *wmat__method_at(int i);
/* The method of family (NULL: any) called name, or NULL. */
const wmat_method_desc *wmat__method_lookup(const char *family, const char *name);
/* The keys of every method of family, each once, into dst (cap rows, the
 * NULL-name end row included); a key with two meanings is WMAT_ERR_INVALID. */
int wmat__family_keys(const char *family, wmat_param_spec *dst, int cap);

#endif
