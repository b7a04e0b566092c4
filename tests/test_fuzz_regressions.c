/* Replays every input that ever crashed a fuzz target (fuzz/regressions/
 * TARGET/) and the seed corpus (fuzz/corpus/TARGET/) through the targets'
 * entry points, compiled in with the normal compiler. Under the sanitizer
 * build this is the same check libFuzzer makes; in Release it still catches
 * crashes and the error contract (targets abort() on a broken contract).
 *
 * A replay that replays nothing must not pass: each target's seed corpus
 * folder must hold inputs, fuzz/regressions/ must exist and hold at least one
 * input, and every folder in it must name a target (a renamed target would
 * otherwise orphan its regressions silently). A target's own regressions
 * folder appears with its first regression input (git keeps no empty
 * folders). */
#include "test_util.h"

#include <dirent.h>
#include <sys/stat.h>
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
int wmat_fuzz_merge_config(const uint8_t *data, size_t size);

typedef struct {
    const char *name;
    int (*fn)(const uint8_t *, size_t);
} target;

static const target k_targets[] = {
    {"safetensors", wmat_fuzz_safetensors}, {"gguf", wmat_fuzz_gguf},
    {"llama2c", wmat_fuzz_llama2c},         {"tokenizer", wmat_fuzz_tokenizer},
    {"tokens_u16", wmat_fuzz_tokens_u16},   {"hf_config", wmat_fuzz_hf_config},
    {"hf_index", wmat_fuzz_hf_index},       {"hf_tokenizer", wmat_fuzz_hf_tokenizer},
    {"merge_config", wmat_fuzz_merge_config},
};

/* Feed every regular file of dir to fn; returns how many, or -1 when dir
 * cannot be opened. */
static int replay_dir(const char *dir, int (*fn)(const uint8_t *, size_t))
{
    DIR *d = opendir(dir);
    if (!d) return -1;
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
    struct stat st;
    int nr = 0;
    if (stat(dir, &st) == 0) { /* present: it must be a readable folder with inputs */
        nr = replay_dir(dir, t->fn);
        if (nr <= 0) fail_msg("%s: %s", dir, nr < 0 ? "not a readable folder" : "holds no inputs");
    }
    snprintf(dir, sizeof dir, "%s/corpus/%s", WMAT_FUZZ_DIR, t->name);
    int nc = replay_dir(dir, t->fn);
    if (nc <= 0) fail_msg("%s: %s", dir, nc < 0 ? "missing" : "holds no inputs");
    print_message("fuzz_%s: %d regression inputs, %d corpus inputs replayed\n", t->name, nr, nc);
}

/* fuzz/regressions/ itself: present, every folder a target's, and at least
 * one input in all (there is one today; losing the folder must fail). */
static void test_regressions_folder(void **state)
{
    (void)state;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/regressions", WMAT_FUZZ_DIR);
    DIR *d = opendir(dir);
    if (!d) fail_msg("%s: missing", dir);
    int total = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        const target *t = NULL;
        for (size_t i = 0; i < sizeof k_targets / sizeof k_targets[0]; i++)
            if (strcmp(k_targets[i].name, e->d_name) == 0) t = &k_targets[i];
        if (!t) {
            closedir(d);
            fail_msg("%s/%s: no fuzz target of that name", dir, e->d_name);
        }
        char sub[1024 + 256];
        snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
        DIR *s = opendir(sub);
        if (s) {
            struct dirent *f;
            while ((f = readdir(s)))
                if (f->d_name[0] != '.') total++;
            closedir(s);
        }
    }
    closedir(d);
    if (total == 0) fail_msg("%s: no regression inputs at all", dir);
    print_message("%s: %d regression inputs\n", dir, total);
}

int main(void)
{
    enum { N = sizeof k_targets / sizeof k_targets[0] };
    struct CMUnitTest tests[N + 1];
    for (int i = 0; i < N; i++) {
        tests[i] = (struct CMUnitTest){k_targets[i].name, test_replay, NULL, NULL, (void *)&k_targets[i]};
    }
    tests[N] = (struct CMUnitTest){"regressions_folder", test_regressions_folder, NULL, NULL, NULL};
    return tu_run_tests("fuzz_regressions", tests, NULL, NULL);
}
