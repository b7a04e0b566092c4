/* Decode speed of DSFormer weights (kind dsf, src/wop/kind_dsf.c) against
 * dense fp32 and against the truncated SVD at the same size, in one run.
 *
 *   bench_dsformer [--model PATH.bin] [--threads N] [--rank R --k K --nnz S] [--budget SECONDS]
 *
 * The model (default ../shared/data/models/mix4m.bin) three times: fp32;
 * its FFN matrices (gate, up, down) as D S (k 110, s 55: 2x smaller than
 * fp32 with the index bytes); as rank-93 low-rank factors (2x). Each
 * structured model is first checked: its decode logits against the same
 * model with those weights dequantized to fp32 (1e-4). Then decode of 128
 * positions per round, rounds interleaved, best round of each, at 1 and N
 * threads; the ratio is fp32 time / structured time. Also y = W x of one
 * 704x256 gate matrix per kind, one thread (the matrix alone, hot in cache). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "decomp/decomp.h"
#include "wop/wop.h"

enum { M_DENSE, M_DSF, M_LR, NM_ };
static const char *m_name[NM_] = {"fp32 dense", "dsf D S", "lowrank SVD"};

static double now(void) { return omp_get_wtime(); }

static void die(const char *what)
{
    fprintf(stderr, "%s: %s\n", what, wmat_last_error());
    exit(1);
}

static wmat_model *load(const char *path)
{
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    wmat_model *m;
    if (wmat_model_load(&m, path, &lp)) die(path);
    return m;
}

/* the FFN matrices of m in their structured kind */
static void structure(wmat_model *m, int kind, int64_t rank, int64_t k, int64_t s)
{
    const wmat_config *c = wmat_model_config(m);
    const wmat_linear_kind ffn[3] = {WMAT_LIN_GATE, WMAT_LIN_UP, WMAT_LIN_DOWN};
    for (int l = 0; l < c->n_layers; l++)
        for (int f = 0; f < 3; f++) {
            wmat_tensor *W = wmat_model_linear(m, l, ffn[f]);
            wmat_tensor T;
            memset(&T, 0, sizeof T);
            int64_t r;
            double e;
            int rc = kind == M_DSF ? wmat__dsformer_factor(W->data, W->shape[0], W->shape[1], k, s, 1, WMAT_F32, &T, &e)
                                   : wmat__decomp_svd_rank(W->data, W->shape[0], W->shape[1], rank, WMAT_F32, &T, &r, &e);
            if (rc) die("factor");
            wmat__tensor_set_obj(W, T.data);
        }
}

static uint64_t ffn_bytes(const wmat_model *m)
{
    const wmat_config *c = wmat_model_config(m);
    uint64_t b = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int f = WMAT_LIN_GATE; f <= WMAT_LIN_DOWN; f++) {
            const wmat_tensor *W = wmat_model_linear((wmat_model *)m, l, (wmat_linear_kind)f);
            b += wmat__wkind_of(W)->nbytes(W);
        }
    return b;
}

static wmat_runtime *runtime(wmat_model *m, int nt, wmat_context *ctx, int T)
{
    *ctx = wmat_context_default();
    ctx->n_threads = nt;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = 1;
    rp.kv_cache_len = T;
    rp.ctx = ctx;
    wmat_runtime *rt;
    if (wmat_runtime_create(&rt, m, &rp)) die("runtime");
    return rt;
}

/* decode logits of m against the same model (built again: the methods are
 * deterministic) with its structured weights dequantized to fp32 */
static void validate(const char *path, wmat_model *m, int kind, int64_t rank, int64_t k, int64_t s, const char *name)
{
    wmat_model *d = load(path);
    structure(d, kind, rank, k, s);
    if (wmat_model_dequantize(d)) die("dequantize");
    const wmat_config *c = wmat_model_config(m);
    wmat_context c1, c2;
    wmat_runtime *a = runtime(m, 1, &c1, 16), *b = runtime(d, 1, &c2, 16);
    float *la = malloc(sizeof(float) * c->vocab_size), *lb = malloc(sizeof(float) * c->vocab_size);
    double worst = 0;
    for (int p = 0; p < 16; p++) {
        const int32_t tok = (int32_t)((p * 37 + 1) % c->vocab_size);
        if (wmat_decode(a, tok, p, la) || wmat_decode(b, tok, p, lb)) die("decode");
        for (int i = 0; i < c->vocab_size; i++) {
            const double e = fabs((double)la[i] - lb[i]);
            worst = isnan(e) ? INFINITY : fmax(worst, e / (1 + fabs(lb[i])));
        }
    }
    if (!(worst < 1e-4)) {
        fprintf(stderr, "%s: decode logits differ from its dequantized weights by %g\n", name, worst);
        exit(1);
    }
    printf("  %s: decode logits = dequantized model's within %.1e\n", name, worst);
    wmat_runtime_free(a), wmat_runtime_free(b);
    free(la), free(lb);
    wmat_model_free(d);
}

int main(int argc, char **argv)
{
    const char *path = "../shared/data/models/mix4m.bin";
    int maxt = omp_get_max_threads();
    int64_t rank = 93, k = 110, s = 55;
    double budget = 2.0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) path = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) maxt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rank") && i + 1 < argc) rank = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--k") && i + 1 < argc) k = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--nnz") && i + 1 < argc) s = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--budget") && i + 1 < argc) budget = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--model PATH.bin] [--threads N] [--rank R --k K --nnz S] [--budget SECONDS]\n", argv[0]);
            return 2;
        }
    }
    if (maxt < 1) maxt = 1;
    wmat_model *mods[NM_];
    for (int i = 0; i < NM_; i++) mods[i] = load(path);
    structure(mods[M_DSF], M_DSF, rank, k, s);
    structure(mods[M_LR], M_LR, rank, k, s);
    printf("== %s: FFN (gate, up, down) bytes: fp32 %llu, dsf k%lld s%lld %llu (%.2fx), lowrank r%lld %llu (%.2fx)\n", path,
           (unsigned long long)ffn_bytes(mods[0]), (long long)k, (long long)s, (unsigned long long)ffn_bytes(mods[M_DSF]),
           (double)ffn_bytes(mods[0]) / ffn_bytes(mods[M_DSF]), (long long)rank, (unsigned long long)ffn_bytes(mods[M_LR]),
           (double)ffn_bytes(mods[0]) / ffn_bytes(mods[M_LR]));
    validate(path, mods[M_DSF], M_DSF, rank, k, s, m_name[M_DSF]);
    validate(path, mods[M_LR], M_LR, rank, k, s, m_name[M_LR]);

    /* one gate matrix, y = W x, one thread */
    {
        wmat_wexec ex = wmat__wexec_from(NULL);
        ex.n_threads = 1;
        const wmat_tensor *W[NM_];
        for (int i = 0; i < NM_; i++) W[i] = wmat_model_linear(mods[i], 0, WMAT_LIN_GATE);
        const int64_t R = W[0]->shape[0], C = W[0]->shape[1];
        float *x = malloc(sizeof(float) * C), *y = malloc(sizeof(float) * R);
        for (int64_t i = 0; i < C; i++) x[i] = sinf((float)i);
        double best[NM_] = {1e30, 1e30, 1e30};
        const int reps = 2000;
        for (int round = 0; round < 5; round++)
            for (int i = 0; i < NM_; i++) {
                const double t0 = now();
                for (int r = 0; r < reps; r++)
                    if (wmat__wop_matvec(W[i], x, y, 0, &ex)) die("matvec");
                best[i] = fmin(best[i], (now() - t0) / reps);
            }
        printf("  y = W x, %lldx%lld gate, 1 thread:", (long long)R, (long long)C);
        for (int i = 0; i < NM_; i++) printf("  %s %.2f us", m_name[i], best[i] * 1e6);
        printf("\n    ratio fp32/kind: dsf %.2fx, lowrank %.2fx\n", best[0] / best[M_DSF], best[0] / best[M_LR]);
        free(x), free(y);
    }

    const int T = 128;
    const wmat_config *c = wmat_model_config(mods[0]);
    float *lg = malloc((size_t)c->vocab_size * sizeof(float));
    printf("  decode of %d positions (whole model)\n", T);
    for (int nt = 1; nt <= maxt; nt = nt < maxt && nt * 2 > maxt ? maxt : nt * 2) {
        wmat_runtime *rt[NM_];
        wmat_context ctx[NM_];
        for (int i = 0; i < NM_; i++) rt[i] = runtime(mods[i], nt, &ctx[i], T);
        double best[NM_] = {1e30, 1e30, 1e30};
        const double end = now() + budget;
        for (int round = 0; round < 3 || (now() < end && round < 200); round++)
            for (int i = 0; i < NM_; i++) {
                const double t0 = now();
                for (int p = 0; p < T; p++) wmat_decode(rt[i], (int32_t)((p * 37 + 1) % c->vocab_size), p, lg);
                best[i] = fmin(best[i], now() - t0);
            }
        printf("  %d thread%s:", nt, nt > 1 ? "s" : " ");
        for (int i = 0; i < NM_; i++) printf("  %s %.0f tok/s", m_name[i], T / best[i]);
        printf("\n    ratio kind/fp32: dsf %.2fx, lowrank %.2fx\n", best[M_DENSE] / best[M_DSF], best[M_DENSE] / best[M_LR]);
        for (int i = 0; i < NM_; i++) wmat_runtime_free(rt[i]);
        if (nt == maxt) break;
    }
    free(lg);
    for (int i = 0; i < NM_; i++) wmat_model_free(mods[i]);
    return 0;
}
