/* Built by scripts/check-install.sh against an installed wmat, found with
 * pkg-config only: a small random model through the public API, one forward
 * pass, the logits checked finite and equal on a second run. */
#include <wmat.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
    wmat_config c;
    memset(&c, 0, sizeof c);
    c.dim = 64, c.hidden_dim = 176, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 96;
    c.seq_len = 32, c.head_dim = 16, c.rope_theta = 10000.0f, c.norm_eps = 1e-5f, c.tied_embeddings = 1;
    wmat_model *m = NULL;
    wmat_runtime *rt = NULL;
    if (wmat_model_create(&m, &c) || wmat_model_init_random(m, 7, 0.02f)) {
        fprintf(stderr, "hello: %s\n", wmat_last_error());
        return 1;
    }
    wmat_runtime_params rp = wmat_runtime_default_params();
    if (wmat_runtime_create(&rt, m, &rp)) {
        fprintf(stderr, "hello: %s\n", wmat_last_error());
        return 1;
    }
    const int32_t tok[4] = {1, 5, 9, 2};
    float *a = malloc(4 * 96 * sizeof *a), *b = malloc(4 * 96 * sizeof *b);
    int rc = wmat_forward(rt, tok, 4, a) || wmat_forward(rt, tok, 4, b);
    for (int i = 0; i < 4 * 96 && !rc; i++) rc = !isfinite(a[i]) || a[i] != b[i];
    printf("wmat %s: %lld parameters, logits %s\n", WMAT_VERSION, (long long)wmat_model_n_params(m), rc ? "BAD" : "ok");
    free(a);
    free(b);
    wmat_runtime_free(rt);
    wmat_model_free(m);
    return rc;
}
