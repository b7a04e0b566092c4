/* Fuzz target: a sharded HF model's model.safetensors.index.json (weight_map,
 * shard names, tensors spread over shards), beside a valid config.json and two
 * shards: model-00001-of-00002.safetensors (every tensor) and
 * model-00002-of-00002.safetensors (a copy: duplicate tensors). */
#include "fuzz_hf_common.h"

int wmat_fuzz_hf_index(const uint8_t *data, size_t size);
int wmat_fuzz_hf_index(const uint8_t *data, size_t size)
{
    static int init;
    char path[512];
    if (!init) {
        static const char *const names[] = {"config.json", "config.json",
                                            "model.safetensors", "model-00001-of-00002.safetensors",
                                            "model.safetensors", "model-00002-of-00002.safetensors", NULL};
        wmat_fuzz_hf_dir("index", names);
        init = 1;
    }
    wmat_fuzz_write(wmat_fuzz_sub(path, sizeof path, "index", "model.safetensors.index.json"), data, size);
    wmat_fuzz_hf_load("index");
    return 0;
}
WMAT_FUZZ_ENTRY(wmat_fuzz_hf_index)
