/* Fuzz target: an HF tokenizer.json (SentencePiece-style vocab and merges),
 * loaded beside a valid tiny model (vocab_size 32). */
#include "fuzz_hf_common.h"

int wmat_fuzz_hf_tokenizer(const uint8_t *data, size_t size);
int wmat_fuzz_hf_tokenizer(const uint8_t *data, size_t size)
{
    static int init;
    char path[512];
    if (!init) {
        static const char *const names[] = {"config.json", "config.json", "model.safetensors", "model.safetensors", NULL};
        wmat_fuzz_hf_dir("tokjson", names);
        init = 1;
    }
    wmat_fuzz_write(wmat_fuzz_sub(path, sizeof path, "tokjson", "tokenizer.json"), data, size);
    wmat_fuzz_hf_load("tokjson");
    return 0;
}
WMAT_FUZZ_ENTRY(wmat_fuzz_hf_tokenizer)
