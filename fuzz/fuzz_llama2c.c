/* Fuzz target: a llama2.c checkpoint (28-byte header vs file size, shared
 * classifier flag) through wmat_model_load, then every tensor read and the
 * model materialized. No tokenizer sits beside the scratch file. */
#include "fuzz_common.h"

int wmat_fuzz_llama2c(const uint8_t *data, size_t size);
int wmat_fuzz_llama2c(const uint8_t *data, size_t size)
{
    char path[512];
    /* Not starting with "GGUF" is llama2.c by detection; force the reader by
     * skipping inputs the GGUF target covers. */
    if (size >= 4 && memcmp(data, "GGUF", 4) == 0) return 0;
    wmat_fuzz_path(path, sizeof path, "in.bin");
    wmat_fuzz_write(path, data, size);
    wmat_model *m = NULL;
    wmat_load_params lp = wmat_load_default_params();
    wmat_clear_error();
    int rc = wmat_model_load(&m, path, &lp);
    wmat_fuzz_model_check(rc, m);
    return 0;
}
WMAT_FUZZ_ENTRY(wmat_fuzz_llama2c)
