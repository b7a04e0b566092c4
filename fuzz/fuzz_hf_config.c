/* Fuzz target: an HF config.json (cJSON + the field checks in hf.c), loaded
 * beside a valid tiny model.safetensors. */
#include "fuzz_hf_common.h"

int wmat_fuzz_hf_config(const uint8_t *data, size_t size);
int wmat_fuzz_hf_config(const uint8_t *data, size_t size)
{
    static int init;
    char path[512];
    if (!init) {
        static const char *const names[] = {"model.safetensors", "model.safetensors", NULL};
        wmat_fuzz_hf_dir("config", names);
        init = 1;
    }
    wmat_fuzz_write(wmat_fuzz_sub(path, sizeof path, "config", "config.json"), data, size);
    wmat_fuzz_hf_load("config");
    return 0;
}
WMAT_FUZZ_ENTRY(wmat_fuzz_hf_config)
