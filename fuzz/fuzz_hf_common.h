/* A tiny valid HF model (config.json + model.safetensors) written once into
 * the scratch directory, so the HF targets can replace one file with the
 * fuzz input and load the directory. */
#ifndef WMAT_FUZZ_HF_COMMON_H
#define WMAT_FUZZ_HF_COMMON_H

#include "fuzz_common.h"

#include <sys/stat.h>

/* dir/name for the HF targets' directories. */
static inline const char *wmat_fuzz_sub(char *buf, size_t n, const char *sub, const char *name)
{
    if (name) snprintf(buf, n, "%s/%s/%s", wmat_fuzz_dir(), sub, name);
    else snprintf(buf, n, "%s/%s", wmat_fuzz_dir(), sub);
    return buf;
}

static inline void wmat_fuzz_copy(const char *from, const char *to)
{
    FILE *f = fopen(from, "rb");
    if (!f) abort();
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc(n ? (size_t)n : 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) abort();
    fclose(f);
    wmat_fuzz_write(to, buf, (size_t)n);
    free(buf);
}

/* The reference model lives in <scratch>/ref (config.json, model.safetensors). */
static inline void wmat_fuzz_hf_ref(void)
{
    static int done;
    if (done) return;
    char dir[512];
    wmat_fuzz_sub(dir, sizeof dir, "ref", NULL);
    wmat_config c;
    memset(&c, 0, sizeof c);
    c.dim = 8;
    c.hidden_dim = 16;
    c.n_layers = 1;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.vocab_size = 32;
    c.seq_len = 16;
    c.rope_theta = 10000.0f;
    c.norm_eps = 1e-5f;
    c.bos_id = 1;
    c.eos_id = 2;
    wmat_model *m = NULL;
    if (wmat_model_create(&m, &c) != WMAT_OK) abort();
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_HF;
    sp.dtype = WMAT_F32;
    if (wmat_model_save(m, dir, &sp) != WMAT_OK) {
        fprintf(stderr, "fuzz: cannot write the reference model: %s\n", wmat_last_error());
        abort();
    }
    wmat_model_free(m);
    done = 1;
}

/* A fresh directory `sub` holding copies of the reference files named in
 * `names` (NULL-terminated, pairs: reference name, name in sub). */
static inline void wmat_fuzz_hf_dir(const char *sub, const char *const *names)
{
    char a[512], b[512];
    wmat_fuzz_hf_ref();
    mkdir(wmat_fuzz_sub(a, sizeof a, sub, NULL), 0700);
    for (int i = 0; names[i]; i += 2)
        wmat_fuzz_copy(wmat_fuzz_sub(a, sizeof a, "ref", names[i]), wmat_fuzz_sub(b, sizeof b, sub, names[i + 1]));
}

static inline void wmat_fuzz_hf_load(const char *sub)
{
    char dir[512];
    wmat_model *m = NULL;
    wmat_load_params lp = wmat_load_default_params();
    wmat_clear_error();
    int rc = wmat_model_load(&m, wmat_fuzz_sub(dir, sizeof dir, sub, NULL), &lp);
    wmat_fuzz_model_check(rc, m);
}

#endif
