/* Fuzz target: safetensors header + tensor table + data ranges, parsed from
 * memory (wmat__st_parse), every tensor's bytes read back. */
#include "fuzz_common.h"
#include "io/safetensors.h"

int wmat_fuzz_safetensors(const uint8_t *data, size_t size);
int wmat_fuzz_safetensors(const uint8_t *data, size_t size)
{
    wmat_st_file *f = NULL;
    wmat_clear_error();
    int rc = wmat__st_parse(&f, data, size, "fuzz.safetensors");
    if (rc != WMAT_OK) {
        if (f || !wmat_last_error()[0]) abort();
        return 0;
    }
    volatile unsigned acc = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const wmat_st_tensor *t = &f->tensors[i];
        const uint8_t *p = t->data;
        if (t->end < t->begin || t->nbytes != t->end - t->begin) abort();
        if (t->nbytes && (p < data || p + t->nbytes > data + size)) abort();
        acc += wmat_fuzz_touch(p, t->nbytes);
        if (wmat__st_find(f, t->name) == NULL) abort();
    }
    for (int i = 0; i < f->n_meta; i++) {
        acc += (unsigned)strlen(f->meta[i].key) + (unsigned)strlen(f->meta[i].value);
        (void)wmat__st_meta_get(f, f->meta[i].key);
    }
    (void)acc;
    wmat__st_close(f);
    return 0;
}
WMAT_FUZZ_ENTRY(wmat_fuzz_safetensors)
