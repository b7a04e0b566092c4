/* Fuzz target: a whole GGUF file through wmat_model_load (header, metadata
 * KVs, arrays, strings, tensor infos, alignment, data ranges, vocabulary),
 * then every tensor read and the model materialized to f32. */
#include "fuzz_common.h"

int wmat_fuzz_gguf(const uint8_t *data, size_t size);
int wmat_fuzz_gguf(const uint8_t *data, size_t size)
{
    char path[512];
    wmat_fuzz_path(path, sizeof path, "in.gguf");
    wmat_fuzz_write(path, data, size);
    wmat_model *m = NULL;
    wmat_load_params lp = wmat_load_default_params();
    wmat_clear_error();
    int rc = wmat_model_load(&m, path, &lp);
    wmat_fuzz_model_check(rc, m);
    return 0;
}
WMAT_FUZZ_ENTRY(wmat_fuzz_gguf)
