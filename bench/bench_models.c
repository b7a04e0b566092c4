/* Decode and batched speed of transformed models (sliced, low-rank,
 * Monarch, sparse, quantized: any weight kinds) against the dense model
 * they came from, in the same run.
 *
 *   bench_models [--threads N] [--budget S] [--positions T] DENSE OTHER...
 *
 * Each model gets its own runtime on N threads (default 1). Rounds
 * interleave the models (dense, other 1, other 2, ...) until the budget
 * per model is spent (at least 3 rounds); each model's best round counts.
 * Decode: T positions (default 128) through wmat_decode, one token at a
 * time against the KV cache; batched: one window of T tokens through
 * wmat_forward (packed weights, as wmat eval). Quality is measured
 * elsewhere (wmat eval; scripts/decomp-curves.sh). */
#include "wmat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    int nt = 1, T = 128, n = 0;
    double budget = 2.0;
    const char *paths[16];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) nt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--budget") && i + 1 < argc) budget = atof(argv[++i]);
        else if (!strcmp(argv[i], "--positions") && i + 1 < argc) T = atoi(argv[++i]);
        else if (argv[i][0] != '-' && n < 16) paths[n++] = argv[i];
        else {
            fprintf(stderr, "usage: %s [--threads N] [--budget S] [--positions T] DENSE OTHER...\n", argv[0]);
            return 2;
        }
    }
    if (n < 1 || nt < 1 || T < 2) {
        fprintf(stderr, "usage: %s [--threads N] [--budget S] [--positions T] DENSE OTHER...\n", argv[0]);
        return 2;
    }
    /* as the CLI does: OpenBLAS to one thread before any runtime exists
     * (left lazy, its idle pool spun against the batched GEMMs) */
    if (wmat_linalg_init(nt)) {
        fprintf(stderr, "linalg: %s\n", wmat_last_error());
        return 1;
    }
    wmat_model *m[16];
    wmat_runtime *dec[16], *bat[16];
    wmat_context ctx = wmat_context_default();
    ctx.n_threads = nt;
    int V = 0;
    for (int k = 0; k < n; k++) {
        wmat_load_params lp = wmat_load_default_params();
        lp.materialize_f32 = 1;
        if (wmat_model_load(&m[k], paths[k], &lp)) {
            fprintf(stderr, "%s: %s\n", paths[k], wmat_last_error());
            return 1;
        }
        const wmat_config *c = wmat_model_config(m[k]);
        if (k && c->vocab_size != V) {
            fprintf(stderr, "%s: vocabulary %d, the dense model's is %d\n", paths[k], c->vocab_size, V);
            return 1;
        }
        V = c->vocab_size;
        if (T > c->seq_len) T = c->seq_len;
        wmat_runtime_params rp = wmat_runtime_default_params();
        rp.max_batch_tokens = 1;
        rp.kv_cache_len = T;
        rp.ctx = &ctx;
        wmat_runtime_params rb = wmat_runtime_default_params();
        rb.max_batch_tokens = T;
        rb.kv_cache_len = 1;
        rb.ctx = &ctx;
        rb.pack_weights = 1;
        if (wmat_runtime_create(&dec[k], m[k], &rp) || wmat_runtime_create(&bat[k], m[k], &rb)) {
            fprintf(stderr, "%s: runtime: %s\n", paths[k], wmat_last_error());
            return 1;
        }
        printf("model %d: %s: dim %d, attention %d, shortcuts %d, %lld parameters\n", k, paths[k], c->dim,
               c->attn_dim ? c->attn_dim : c->dim, c->shortcuts, (long long)wmat_model_n_params(m[k]));
    }
    float *lg = malloc((size_t)T * (size_t)V * sizeof(float));
    int32_t *ids = malloc((size_t)T * sizeof *ids);
    for (int p = 0; p < T; p++) ids[p] = (int32_t)((p * 37 + 1) % V);
    double bd[16], bb[16];
    for (int k = 0; k < n; k++) bd[k] = bb[k] = 1e30;
    const double end = now() + budget * n;
    for (int round = 0; round < 3 || now() < end; round++) {
        for (int k = 0; k < n; k++) {
            double t0 = now();
            for (int p = 0; p < T; p++)
                if (wmat_decode(dec[k], ids[p], p, lg)) {
                    fprintf(stderr, "decode: %s\n", wmat_last_error());
                    return 1;
                }
            double dt = now() - t0;
            if (dt < bd[k]) bd[k] = dt;
            t0 = now();
            if (wmat_forward(bat[k], ids, T, lg)) {
                fprintf(stderr, "forward: %s\n", wmat_last_error());
                return 1;
            }
            dt = now() - t0;
            if (dt < bb[k]) bb[k] = dt;
        }
        if (round > 500) break;
    }
    printf("decode of %d positions and a batched window of %d tokens, %d thread%s, best round of each:\n", T, T, nt,
           nt > 1 ? "s" : "");
    for (int k = 0; k < n; k++)
        printf("  model %d: decode %8.1f tok/s (%.2fx dense)  batched %9.1f tok/s (%.2fx dense)\n", k, T / bd[k],
               bd[0] / bd[k], T / bb[k], bb[0] / bb[k]);
    free(lg);
    free(ids);
    for (int k = 0; k < n; k++) {
        wmat_runtime_free(dec[k]);
        wmat_runtime_free(bat[k]);
        wmat_model_free(m[k]);
    }
    return 0;
}
