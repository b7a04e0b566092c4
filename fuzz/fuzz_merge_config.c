/* Fuzz target: the merge config parser (src/merge/config.c, libyaml's
 * document loader and the mergekit-subset checks). A failure must leave a
 * message naming the config; a success must hold a method of the table and
 * value lists within their bounds. */
#include "fuzz_common.h"
#include "merge/merge.h"

int wmat_fuzz_merge_config(const uint8_t *data, size_t size);
int wmat_fuzz_merge_config(const uint8_t *data, size_t size)
{
    wmat_merge_config c;
    wmat_clear_error();
    int rc = wmat__merge_config_parse(&c, (const char *)data, size, "fuzz.yaml");
    if (rc != WMAT_OK) {
        if (!strstr(wmat_last_error(), "fuzz.yaml") && rc != WMAT_ERR_NOMEM) abort();
    } else {
        if (!c.spec.method || !wmat__merge_method_find(c.spec.method)) abort();
        if (c.spec.n_models < 0 || c.spec.n_models > 64) abort();
        for (int i = 0; i < c.spec.n_models; i++) {
            const wmat_merge_model *m = &c.spec.models[i];
            if (!m->path || m->weight.n > WMAT_MERGE_MAX_LIST || m->density.n > WMAT_MERGE_MAX_LIST) abort();
            for (int k = 0; k < m->density.n; k++)
                if (!(m->density.v[k] > 0 && m->density.v[k] <= 1)) abort();
        }
    }
    wmat__merge_config_free(&c);
    return 0;
}
WMAT_FUZZ_ENTRY(wmat_fuzz_merge_config)
