/* Replays every input that ever crashed a fuzz target (fuzz/regressions/
 * TARGET/) and the seed corpus (fuzz/corpus/TARGET/) through the targets'
 * entry points, compiled in with the normal compiler. Under the sanitizer
 * build this is the same check libFuzzer makes; in Release it still catches
 * crashes and the error contract (targets abort() on a broken contract). */
#include "test_util.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int wmat_fuzz_safetensors(const uint8_t *data, size_t size);
int wmat_fuzz_gguf(const uint8_t *data, size_t size);
int wmat_fuzz_llama2c(const uint8_t *data, size_t size);
int wmat_fuzz_tokenizer(const uint8_t *data, size_t size);
int wmat_fuzz_tokens_u16(const uint8_t *data, size_t size);
int wmat_fuzz_hf_config(const uint8_t *data, size_t size);
int wmat_fuzz_hf_index(const uint8_t *data, size_t size);
int wmat_fuzz_hf_tokenizer(const uint8_t *data, size_t size);

typedef struct {
    const char *name;
    int (*fn)(const uint8_t *, size_t);
} target;

static const target k_targets[] = {
    {"safetensors", wmat_fuzz_safetensors}, {"gguf", wmat_fuzz_gguf},
    {"llama2c", wmat_fuzz_llama2c},         {"tokenizer", wmat_fuzz_tokenizer},
    {"tokens_u16", wmat_fuzz_tokens_u16},   {"hf_config", wmat_fuzz_hf_config},
    {"hf_index", wmat_fuzz_hf_index},       {"hf_tokenizer", wmat_fuzz_hf_tokenizer},
};

/* Feed every regular file of dir to fn; returns how many. */
static int replay_dir(const char *dir, int (*fn)(const uint8_t *, size_t))
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        char *buf = NULL;
        size_t len = 0;
        if (wmat_read_file(path, &buf, &len) != WMAT_OK) continue; /* a subfolder, say */
        fn((const uint8_t *)buf, len);
        free(buf);
        n++;
    }
    closedir(d);
    return n;
}

static void test_replay(void **state)
{
    const target *t = *state;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/regressions/%s", WMAT_FUZZ_DIR, t->name);
    int nr = replay_dir(dir, t->fn);
    snprintf(dir, sizeof dir, "%s/corpus/%s", WMAT_FUZZ_DIR, t->name);
    int nc = replay_dir(dir, t->fn);
    print_message("fuzz_%s: %d regression inputs, %d corpus inputs replayed\n", t->name, nr, nc);
}

int main(void)
{
    enum { N = sizeof k_targets / sizeof k_targets[0] };
    struct CMUnitTest tests[N];
    for (int i = 0; i < N; i++) {
        tests[i] = (struct CMUnitTest){k_targets[i].name, test_replay, NULL, NULL, (void *)&k_targets[i]};
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
