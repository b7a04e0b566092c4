/* Decode speed of the sparse weight kinds (src/wop/kind_sparse.c) against
 * fp32, in the same run.
 *
 *   bench_sparse [--threads N] [--shape RxC] [--budget S] [--model PATH.bin]
 *
 * For each shape (default 2048x5632 and 5632x2048, the 1.1B model's FFN,
 * and 704x256, mix4m's gate/up): a random Gaussian W pruned by magnitude
 * to 2:4 (values f32 and f16) and to 50% unstructured (f32, f16); checks
 * each kind's one-row product against the fp32 product of the pruned
 * matrix, then times y = W x at 1 and N threads: fp32 through the
 * runtime's matvec (wmat__matvec_multi_part), the kinds through their
 * rows() split over threads as the runtime splits them. Two regimes:
 * "stream" cycles through copies spanning 256 MB (every call reads its
 * weights from memory, as a model larger than the caches does), "hot"
 * repeats one copy (a model that fits the last-level cache, like mix4m).
 * Kinds are timed in interleaved rounds, best call of each; the ratio is
 * fp32 time / kind time.
 *
 * --model: decode tokens/s of a whole model (default mix4m) as fp32 and
 * with every linear weight pruned by magnitude to 2:4 (f32 and f16 values)
 * and to 50% unstructured (f32), one runtime each, 128 positions per
 * round, rounds interleaved, best round of each, at 1 and N threads. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "model/kernels.h"
#include "decomp/prune.h"
#include "wop/kern_sparse.h"

#define SPAN_BYTES ((size_t)256 << 20)

enum { K_F32, K_NM32, K_NM16, K_SP32, K_SP16, NK };
static const char *k_name[NK] = {"f32 dense", "2:4 f32", "2:4 f16", "50% unstr f32", "50% unstr f16"};

typedef struct {
    int ncopy;
    size_t bytes;
    wmat_tensor *t; /* ncopy tensors (sparse kinds) */
    float *w;       /* ncopy copies (fp32) */
} kmat;

static double now(void) { return omp_get_wtime(); }

static void call(int k, kmat *m, int c, int rows, int cols, const float *x, float *y, int nt, const wmat_wexec *ex)
{
    if (k == K_F32) {
        const float *W = m->w + (size_t)c * (size_t)rows * (size_t)cols;
        float *out = y;
        if (nt <= 1) {
            wmat__matvec_multi_part(1, &out, &W, &rows, x, cols, 0, 0, 1);
            return;
        }
#pragma omp parallel num_threads(nt)
        wmat__matvec_multi_part(1, &out, &W, &rows, x, cols, 0, omp_get_thread_num(), omp_get_num_threads());
        return;
    }
    const wmat_tensor *t = &m->t[c];
    const wmat_wkind *kd = wmat__wkind_of(t);
    if (nt <= 1) {
        kd->rows(t, x, NULL, y, 0, rows, 0, ex);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int64_t r0, r1;
        wmat__wop_split(kd, rows, omp_get_thread_num(), omp_get_num_threads(), &r0, &r1);
        if (r0 < r1) kd->rows(t, x, NULL, y, r0, r1, 0, ex);
    }
}

static void run_shape(int rows, int cols, int maxt, double budget)
{
    const size_t n = (size_t)rows * (size_t)cols;
    float *W = malloc(n * sizeof(float)), *Wp = malloc(n * sizeof(float)), *x = malloc((size_t)cols * sizeof(float));
    float *y = malloc((size_t)rows * sizeof(float)), *yr = malloc((size_t)rows * sizeof(float));
    uint8_t *mask = malloc(n);
    wmat_rng r;
    wmat_rng_seed(&r, 42);
    for (size_t i = 0; i < n; i++) W[i] = 0.02f * wmat_rng_normal(&r);
    for (int i = 0; i < cols; i++) x[i] = wmat_rng_normal(&r);
    wmat_wexec ex = wmat__wexec_from(NULL);
    kmat km[NK];
    memset(km, 0, sizeof km);
    printf("== %d x %d\n", rows, cols);
    for (int k = 0; k < NK; k++) {
        memcpy(Wp, W, n * sizeof(float));
        if (k != K_F32) {
            /* magnitude: 2:4 per group, or half of each row */
            float *sc = malloc(n * sizeof(float));
            for (size_t i = 0; i < n; i++) sc[i] = fabsf(W[i]);
            if (k == K_NM32 || k == K_NM16) wmat__mask_nm(sc, rows, cols, 2, 4, mask);
            else wmat__mask_row_topk(sc, rows, cols, cols / 2, mask);
            free(sc);
            for (size_t i = 0; i < n; i++) Wp[i] = mask[i] ? Wp[i] : 0.0f;
        }
        const wmat_dtype vdt = k == K_NM16 || k == K_SP16 ? WMAT_F16 : WMAT_F32;
        if (vdt == WMAT_F16)
            for (size_t i = 0; i < n; i++) Wp[i] = wmat_f16_to_f32(wmat_f32_to_f16(Wp[i]));
        if (k == K_F32) {
            km[k].bytes = n * 4;
            km[k].ncopy = (int)((SPAN_BYTES + km[k].bytes - 1) / km[k].bytes);
            km[k].w = wmat__aligned_alloc(km[k].bytes * (size_t)km[k].ncopy);
            for (int c = 0; c < km[k].ncopy; c++) memcpy(km[k].w + (size_t)c * n, W, km[k].bytes);
        } else {
            void *obj;
            int rc = k == K_NM32 || k == K_NM16 ? wmat__nm_create(Wp, mask, rows, cols, 2, 4, vdt, &obj)
                                                : wmat__sparse_create(Wp, mask, rows, cols, vdt, &obj);
            if (rc) {
                fprintf(stderr, "%s: %s\n", k_name[k], wmat_last_error());
                exit(1);
            }
            wmat_tensor t0;
            wmat__tensor_own_obj(&t0, rows, cols, obj);
            km[k].bytes = wmat__wkind_of(&t0)->nbytes(&t0);
            km[k].ncopy = (int)((SPAN_BYTES + km[k].bytes - 1) / km[k].bytes);
            km[k].t = calloc((size_t)km[k].ncopy, sizeof(wmat_tensor));
            km[k].t[0] = t0;
            for (int c = 1; c < km[k].ncopy; c++) {
                if (k == K_NM32 || k == K_NM16) wmat__nm_create(Wp, mask, rows, cols, 2, 4, vdt, &obj);
                else wmat__sparse_create(Wp, mask, rows, cols, vdt, &obj);
                wmat__tensor_own_obj(&km[k].t[c], rows, cols, obj);
            }
        }
        /* check: the kind's product against the fp32 product of what it stores */
        for (int i = 0; i < rows; i++) {
            double s = 0;
            for (int j = 0; j < cols; j++) s += (double)Wp[(size_t)i * cols + j] * x[j];
            yr[i] = (float)s;
        }
        call(k, &km[k], 0, rows, cols, x, y, 1, &ex);
        double e = 0, d = 0;
        for (int i = 0; i < rows; i++) e += ((double)y[i] - yr[i]) * ((double)y[i] - yr[i]), d += (double)yr[i] * yr[i];
        const double rel = sqrt(e / d);
        printf("  %-14s %6.2f bits/weight, %7.2f MB, check %.1e%s\n", k_name[k], 8.0 * (double)km[k].bytes / (double)n,
               (double)km[k].bytes / 1e6, rel, rel < 1e-5 ? "" : "  FAILED");
        if (!(rel < 1e-5)) exit(1);
    }
    for (int hot = 0; hot < 2; hot++)
        for (int nt = 1; nt <= maxt; nt = nt < maxt && nt * 2 > maxt ? maxt : nt * 2) {
            double best[NK];
            int cyc[NK] = {0};
            for (int k = 0; k < NK; k++) best[k] = 1e30;
            const double end = now() + budget * NK;
            for (int round = 0; round < 20 || now() < end; round++) {
                for (int k = 0; k < NK; k++)
                    for (int rep = 0; rep < 5; rep++) {
                        const int c = hot ? 0 : cyc[k];
                        const double t0 = now();
                        call(k, &km[k], c, rows, cols, x, y, nt, &ex);
                        const double dt = now() - t0;
                        if (dt < best[k]) best[k] = dt;
                        cyc[k] = (cyc[k] + 1) % km[k].ncopy;
                    }
                if (round > 2000) break;
            }
            printf("  %s, %d thread%s:", hot ? "hot   " : "stream", nt, nt > 1 ? "s" : " ");
            for (int k = 0; k < NK; k++)
                printf("  %s %.0f us%s", k_name[k], best[k] * 1e6, k ? "" : " |");
            printf("\n    ratio fp32/kind:");
            for (int k = 1; k < NK; k++) printf("  %s %.2fx", k_name[k], best[K_F32] / best[k]);
            printf("\n");
            if (nt == maxt) break;
        }
    for (int k = 0; k < NK; k++) {
        for (int c = 0; km[k].t && c < km[k].ncopy; c++) wmat__tensor_free_data(&km[k].t[c]);
        free(km[k].t);
        wmat__free(km[k].w);
    }
    free(W), free(Wp), free(x), free(y), free(yr), free(mask);
}

/* ---- whole-model decode */
enum { M_DENSE, M_NM32, M_NM16, M_SP32, NM_ };
static const char *m_name[NM_] = {"fp32 dense", "2:4 f32", "2:4 f16", "50% unstr f32"};

static void run_model(const char *path, int maxt, double budget)
{
    wmat_model *mods[NM_];
    for (int k = 0; k < NM_; k++) {
        wmat_load_params lp = wmat_load_default_params();
        lp.materialize_f32 = 1;
        if (wmat_model_load(&mods[k], path, &lp)) {
            fprintf(stderr, "%s: %s\n", path, wmat_last_error());
            exit(1);
        }
        if (k == M_DENSE) continue;
        wmat_prune_model_params p;
        memset(&p, 0, sizeof p);
        p.method = "magnitude";
        p.pp = k == M_SP32 ? (wmat_prune_params){0.5, 0, 0, 0, 0, 1} : (wmat_prune_params){0, 2, 4, 0, 0, 1};
        p.dtype = k == M_NM16 ? WMAT_F16 : WMAT_F32;
        if (wmat__prune_model(mods[k], &p, NULL)) {
            fprintf(stderr, "prune: %s\n", wmat_last_error());
            exit(1);
        }
    }
    const int T = 128;
    const wmat_config *c = wmat_model_config(mods[0]);
    float *lg = malloc((size_t)c->vocab_size * sizeof(float));
    printf("== %s: decode of %d positions\n", path, T);
    for (int nt = 1; nt <= maxt; nt = nt < maxt && nt * 2 > maxt ? maxt : nt * 2) {
        wmat_runtime *rt[NM_];
        wmat_context ctx[NM_];
        for (int k = 0; k < NM_; k++) {
            ctx[k] = wmat_context_default();
            ctx[k].n_threads = nt;
            wmat_runtime_params rp = wmat_runtime_default_params();
            rp.max_batch_tokens = 1;
            rp.kv_cache_len = T;
            rp.ctx = &ctx[k];
            if (wmat_runtime_create(&rt[k], mods[k], &rp)) {
                fprintf(stderr, "runtime: %s\n", wmat_last_error());
                exit(1);
            }
        }
        double best[NM_];
        for (int k = 0; k < NM_; k++) best[k] = 1e30;
        const double end = now() + budget * NM_ * 4;
        for (int round = 0; round < 3 || now() < end; round++) {
            for (int k = 0; k < NM_; k++) {
                const double t0 = now();
                for (int p = 0; p < T; p++) wmat_decode(rt[k], (int32_t)((p * 37 + 1) % c->vocab_size), p, lg);
                const double dt = now() - t0;
                if (dt < best[k]) best[k] = dt;
            }
            if (round > 200) break;
        }
        printf("  %d thread%s:", nt, nt > 1 ? "s" : " ");
        for (int k = 0; k < NM_; k++) printf("  %s %.0f tok/s%s", m_name[k], T / best[k], k ? "" : " |");
        printf("\n    ratio kind/fp32:");
        for (int k = 1; k < NM_; k++) printf("  %s %.2fx", m_name[k], best[M_DENSE] / best[k]);
        printf("\n");
        for (int k = 0; k < NM_; k++) wmat_runtime_free(rt[k]);
        if (nt == maxt) break;
    }
    free(lg);
    for (int k = 0; k < NM_; k++) wmat_model_free(mods[k]);
}

int main(int argc, char **argv)
{
    int maxt = omp_get_max_threads(), shapes[3][2] = {{2048, 5632}, {5632, 2048}, {704, 256}}, ns = 3;
    double budget = 0.5;
    const char *model = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) maxt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--budget") && i + 1 < argc) budget = atof(argv[++i]);
        else if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc) {
            if (sscanf(argv[++i], "%dx%d", &shapes[0][0], &shapes[0][1]) != 2) return 2;
            ns = 1;
        } else {
            fprintf(stderr, "usage: %s [--threads N] [--shape RxC] [--budget S] [--model PATH.bin]\n", argv[0]);
            return 2;
        }
    }
    if (maxt < 1) maxt = 1;
    if (model) {
        run_model(model, maxt, budget);
        return 0;
    }
    for (int s = 0; s < ns; s++) run_shape(shapes[s][0], shapes[s][1], maxt, budget);
    return 0;
}
