/* Weight signatures (src/merge/signature.c): a full-rank signature applied
 * at coefficient 1 gives the fine-tune's logits back; a rank-r one differs
 * from the delta by exactly the singular values' tail (Eckart-Young) and
 * applies as base + A B; compose is base + sum alpha_i sig_i; --against
 * leaves each tensor's delta orthogonal to the clean one; --layers keeps the
 * rest of the base as it is; a mismatched base, a file that is not a
 * signature and bad arguments are refused with no output written. */
#include "test_util.h"
#include "io/safetensors.h"
#include "linalg/dense.h"
#include "merge/signature.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void make_model(const char *path, uint64_t seed, const wmat_model *like, int dim)
{
    wmat_config cfg = tu_config(dim, 2 * dim, 2, 4, 2, 64, 32);
    wmat_model *m = NULL;
    TU_OK(wmat_model_create(&m, &cfg));
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        float *d = t->data;
        const float *base = like ? wmat_model_find((wmat_model *)like, t->name)->data : NULL;
        for (int64_t j = 0; j < wmat_tensor_nelem(t); j++)
            d[j] = (base ? base[j] : 0.0f) + (base ? 0.05f : 0.5f) * wmat_rng_normal(&r);
    }
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_LLAMA2C;
    sp.dtype = WMAT_F32;
    TU_OK(wmat_model_save(m, path, &sp));
    wmat_model_free(m);
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void logits_of(wmat_model *m, const int32_t *ids, int T, float *out)
{
    wmat_runtime *rt = NULL;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = T;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    TU_OK(wmat_forward(rt, ids, T, out));
    wmat_runtime_free(rt);
}

typedef struct {
    char base[512], ft[512], ft2[512], other[512];
} models;

static void make_models(models *m)
{
    snprintf(m->base, sizeof m->base, "%s", tu_tmp("gb.bin"));
    snprintf(m->ft, sizeof m->ft, "%s", tu_tmp("gf.bin"));
    snprintf(m->ft2, sizeof m->ft2, "%s", tu_tmp("gf2.bin"));
    snprintf(m->other, sizeof m->other, "%s", tu_tmp("go.bin"));
    make_model(m->base, 31, NULL, 32);
    wmat_model *mb = tu_load_f32(m->base);
    make_model(m->ft, 32, mb, 32);
    make_model(m->ft2, 33, mb, 32);
    wmat_model_free(mb);
    make_model(m->other, 34, NULL, 48); /* another shape */
}

static wmat_sig_params params(int rank)
{
    wmat_sig_params p;
    memset(&p, 0, sizeof p);
    p.rank = rank;
    p.dtype = WMAT_F32;
    return p;
}

/* Full rank, alpha 1: the fine-tune's logits to 1e-5. */
static void test_sig_roundtrip_logits(void **state)
{
    (void)state;
    models m;
    make_models(&m);
    char sig[512], back[512];
    snprintf(sig, sizeof sig, "%s", tu_tmp("g.st"));
    snprintf(back, sizeof back, "%s", tu_tmp("gback.gguf"));
    wmat_sig_params p = params(0);
    wmat_sig_report rep;
    TU_OK(wmat__sig_extract(m.ft, m.base, sig, &p, &rep));
    for (int i = 0; i < rep.n; i++) assert_int_equal(rep.t[i].rank, -1);
    assert_true(rep.file_bytes > rep.bytes && rep.bytes == rep.dense_bytes);
    wmat__sig_report_free(&rep);
    const char *sigs[1] = {sig};
    const double one = 1.0;
    TU_OK(wmat__sig_apply(m.base, 1, sigs, &one, back, WMAT_FMT_UNKNOWN, WMAT_F32, NULL, NULL));
    wmat_model *a = tu_load_f32(m.ft), *b = tu_load_f32(back);
    enum { T = 16 };
    int32_t ids[T];
    for (int i = 0; i < T; i++) ids[i] = (i * 7 + 1) % 64;
    float *la = malloc(sizeof(float) * T * 64), *lb = malloc(sizeof(float) * T * 64);
    logits_of(a, ids, T, la);
    logits_of(b, ids, T, lb);
    TU_ASSERT_CLOSE(lb, la, (size_t)T * 64, 1e-5, 0);
    free(la);
    free(lb);
    wmat_model_free(a);
    wmat_model_free(b);
}

/* Rank r: ||delta - A B||_F equals sqrt(sum_{i > r} s_i^2) of the delta's
 * singular values (to the f32 storage of the factors), the report says the
 * same share, and apply at alpha 0.5 writes base + 0.5 A B. */
static void test_sig_rank_eckart_young(void **state)
{
    (void)state;
    models m;
    make_models(&m);
    char sig[512], out[512];
    snprintf(sig, sizeof sig, "%s", tu_tmp("gr.st"));
    snprintf(out, sizeof out, "%s", tu_tmp("gr.bin"));
    const int r = 3;
    wmat_sig_params p = params(r);
    wmat_sig_report rep;
    TU_OK(wmat__sig_extract(m.ft, m.base, sig, &p, &rep));
    assert_true(rep.bytes < rep.dense_bytes / 2);
    wmat_model *mb = tu_load_f32(m.base), *mf = tu_load_f32(m.ft);
    wmat_st_file *f = NULL;
    TU_OK(wmat__st_open(&f, sig));
    const char *names[] = {"model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                           "model.embed_tokens.weight"};
    for (size_t q = 0; q < sizeof names / sizeof names[0]; q++) {
        const wmat_tensor *tb = wmat_model_find(mb, names[q]), *tf = wmat_model_find(mf, names[q]);
        const int M = (int)tb->shape[0], N = (int)tb->shape[1], k = M < N ? M : N;
        double *d = malloc((size_t)M * N * 8), *a = malloc((size_t)M * N * 8), *s = malloc((size_t)k * 8),
               *U = malloc((size_t)M * k * 8), *VT = malloc((size_t)k * N * 8);
        for (int64_t j = 0; j < (int64_t)M * N; j++) a[j] = d[j] = (double)((const float *)tf->data)[j] - ((const float *)tb->data)[j];
        TU_OK(wmat__dgesdd(M, N, a, N, s, U, k, VT, N));
        double tail = 0, all = 0;
        for (int i = 0; i < k; i++) {
            all += s[i] * s[i];
            if (i >= r) tail += s[i] * s[i];
        }
        char an[256], bn[256];
        snprintf(an, sizeof an, "%s.A", names[q]);
        snprintf(bn, sizeof bn, "%s.B", names[q]);
        const wmat_st_tensor *A = wmat__st_find(f, an), *B = wmat__st_find(f, bn);
        assert_non_null(A);
        assert_non_null(B);
        assert_int_equal(A->shape[1], r);
        float *af = malloc(A->nbytes), *bf = malloc(B->nbytes);
        memcpy(af, A->data, A->nbytes);
        memcpy(bf, B->data, B->nbytes);
        /* the error against the delta, and A B against U_r S_r V_r^T itself
         * (the error alone is blind to a small change along the kept part) */
        double err = 0, off = 0, head = 0;
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double v = 0, w = 0;
                for (int c = 0; c < r; c++) {
                    v += (double)af[i * r + c] * bf[c * N + j];
                    w += U[(size_t)i * k + c] * s[c] * VT[(size_t)c * N + j];
                }
                err += (d[(size_t)i * N + j] - v) * (d[(size_t)i * N + j] - v);
                off += (v - w) * (v - w);
                head += w * w;
            }
        TU_ASSERT_BELOW(sqrt(off), 1e-6 * sqrt(head));
        if (!(fabs(sqrt(err) - sqrt(tail)) <= 1e-5 * sqrt(all)))
            fail_msg("%s: ||delta - AB|| = %.9g, SVD tail %.9g", names[q], sqrt(err), sqrt(tail));
        assert_true(tail > 1e-3 * all); /* the truncation does drop something */
        for (int i = 0; i < rep.n; i++)
            if (!strcmp(rep.t[i].name, names[q])) TU_ASSERT_NEAR(rep.t[i].rel_err, sqrt(tail / all), 1e-9);
        free(d);
        free(a);
        free(s);
        free(U);
        free(VT);
        free(af);
        free(bf);
    }
    wmat__sig_report_free(&rep);
    /* apply at 0.5: base + 0.5 A B on a matrix, base + 0.5 delta on a norm */
    const char *sigs[1] = {sig};
    const double half = 0.5;
    TU_OK(wmat__sig_apply(m.base, 1, sigs, &half, out, WMAT_FMT_UNKNOWN, WMAT_F32, NULL, NULL));
    wmat_model *mo = tu_load_f32(out);
    {
        const char *nm = names[0];
        const wmat_tensor *tb = wmat_model_find(mb, nm), *to = wmat_model_find(mo, nm);
        const int M = (int)tb->shape[0], N = (int)tb->shape[1];
        char an[256], bn[256];
        snprintf(an, sizeof an, "%s.A", nm);
        snprintf(bn, sizeof bn, "%s.B", nm);
        const wmat_st_tensor *A = wmat__st_find(f, an), *B = wmat__st_find(f, bn);
        float *af = malloc(A->nbytes), *bf = malloc(B->nbytes), *want = malloc((size_t)M * N * 4);
        memcpy(af, A->data, A->nbytes);
        memcpy(bf, B->data, B->nbytes);
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double v = 0;
                for (int c = 0; c < r; c++) v += (double)af[i * r + c] * bf[c * N + j];
                want[(size_t)i * N + j] = (float)(((const float *)tb->data)[(size_t)i * N + j] + 0.5 * v);
            }
        TU_ASSERT_CLOSE(to->data, want, (size_t)M * N, 1e-6, 1e-6);
        free(af);
        free(bf);
        free(want);
        const char *norm = "model.layers.0.input_layernorm.weight";
        const float *b0 = wmat_model_find(mb, norm)->data, *f0 = wmat_model_find(mf, norm)->data,
                    *o0 = wmat_model_find(mo, norm)->data;
        for (int j = 0; j < 32; j++) TU_ASSERT_NEAR(o0[j], b0[j] + 0.5 * ((double)f0[j] - b0[j]), 1e-6);
    }
    wmat__st_close(f);
    wmat_model_free(mo);
    wmat_model_free(mb);
    wmat_model_free(mf);
}

/* compose: base + 0.5 sig1 - 2 sig2; --against: each delta orthogonal to
 * the clean one; --layers: the other tensors stay the base's. */
static void test_sig_compose_against_layers(void **state)
{
    (void)state;
    models m;
    make_models(&m);
    char s1[512], s2[512], sa[512], sl[512], out[512], outl[512];
    snprintf(s1, sizeof s1, "%s", tu_tmp("c1.st"));
    snprintf(s2, sizeof s2, "%s", tu_tmp("c2.st"));
    snprintf(sa, sizeof sa, "%s", tu_tmp("ca.st"));
    snprintf(sl, sizeof sl, "%s", tu_tmp("cl.st"));
    snprintf(out, sizeof out, "%s", tu_tmp("cout.bin"));
    snprintf(outl, sizeof outl, "%s", tu_tmp("coutl.bin"));
    wmat_sig_params p = params(0);
    TU_OK(wmat__sig_extract(m.ft, m.base, s1, &p, NULL));
    TU_OK(wmat__sig_extract(m.ft2, m.base, s2, &p, NULL));
    const char *sigs[2] = {s1, s2};
    const double al[2] = {0.5, -2.0};
    TU_OK(wmat__sig_apply(m.base, 2, sigs, al, out, WMAT_FMT_UNKNOWN, WMAT_F32, NULL, NULL));
    wmat_model *mb = tu_load_f32(m.base), *f1 = tu_load_f32(m.ft), *f2 = tu_load_f32(m.ft2), *mo = tu_load_f32(out);
    for (int i = 0; i < wmat_model_n_tensors(mb); i++) {
        const wmat_tensor *t = wmat_model_tensor(mb, i);
        const float *b = t->data, *x1 = wmat_model_find(f1, t->name)->data, *x2 = wmat_model_find(f2, t->name)->data,
                    *o = wmat_model_find(mo, t->name)->data;
        for (int64_t j = 0; j < wmat_tensor_nelem(t); j++) {
            const double want = b[j] + 0.5 * ((double)x1[j] - b[j]) - 2.0 * ((double)x2[j] - b[j]);
            if (!tu_near(o[j], want, 1e-6)) fail_msg("%s[%lld]: %g vs %g", t->name, (long long)j, o[j], want);
        }
    }
    /* against ft2: sig = d - <d, d0>/|d0|^2 d0 per tensor */
    p.against = m.ft2;
    TU_OK(wmat__sig_extract(m.ft, m.base, sa, &p, NULL));
    wmat_st_file *f = NULL;
    TU_OK(wmat__st_open(&f, sa));
    for (int i = 0; i < wmat_model_n_tensors(mb); i++) {
        const wmat_tensor *t = wmat_model_tensor(mb, i);
        const wmat_st_tensor *s = wmat__st_find(f, t->name);
        assert_non_null(s);
        const int64_t n = wmat_tensor_nelem(t);
        float *sv = malloc(s->nbytes);
        memcpy(sv, s->data, s->nbytes);
        const float *b = t->data, *x1 = wmat_model_find(f1, t->name)->data, *x2 = wmat_model_find(f2, t->name)->data;
        double dot = 0, n0 = 0, ns = 0, d0d = 0;
        for (int64_t j = 0; j < n; j++) {
            const double d0 = (double)x2[j] - b[j], d = (double)x1[j] - b[j];
            dot += sv[j] * d0;
            n0 += d0 * d0;
            ns += (double)sv[j] * sv[j];
            d0d += d * d0;
        }
        TU_ASSERT_BELOW(fabs(dot), 1e-5 * sqrt(n0 * ns) + 1e-12);
        for (int64_t j = 0; j < n; j++) {
            const double d0 = (double)x2[j] - b[j], d = (double)x1[j] - b[j];
            TU_ASSERT_NEAR(sv[j], d - d0d / n0 * d0, 1e-6);
        }
        free(sv);
    }
    wmat__st_close(f);
    /* layers 1,embed: block 0, the final norm and the classifier are the base's */
    p.against = NULL;
    p.layers = "1,embed";
    TU_OK(wmat__sig_extract(m.ft, m.base, sl, &p, NULL));
    const char *one[1] = {sl};
    const double a1 = 1.0;
    TU_OK(wmat__sig_apply(m.base, 1, one, &a1, outl, WMAT_FMT_UNKNOWN, WMAT_F32, NULL, NULL));
    wmat_model *ml = tu_load_f32(outl);
    for (int i = 0; i < wmat_model_n_tensors(mb); i++) {
        const wmat_tensor *t = wmat_model_tensor(mb, i);
        const int sel = !strncmp(t->name, "model.layers.1.", 15) || !strcmp(t->name, "model.embed_tokens.weight");
        const wmat_model *want = sel ? f1 : mb;
        TU_ASSERT_CLOSE(wmat_model_find(ml, t->name)->data, wmat_model_find((wmat_model *)want, t->name)->data,
                        (size_t)wmat_tensor_nelem(t), 1e-6, 0);
    }
    wmat_model_free(ml);
    wmat_model_free(mb);
    wmat_model_free(f1);
    wmat_model_free(f2);
    wmat_model_free(mo);
}

/* Refusals, each with no output: a base of another shape (both files named),
 * a compose whose second signature does not fit, a file that is not a
 * signature, a non-finite alpha, a bad layer list, a fine-tune of another
 * shape. */
static void test_sig_refusals(void **state)
{
    (void)state;
    models m;
    make_models(&m);
    char sig[512], out[512], outx[512];
    snprintf(sig, sizeof sig, "%s", tu_tmp("x.st"));
    snprintf(out, sizeof out, "%s", tu_tmp("xout.gguf"));
    snprintf(outx, sizeof outx, "%s", tu_tmp("xsig.st"));
    wmat_sig_params p = params(2);
    TU_OK(wmat__sig_extract(m.ft, m.base, sig, &p, NULL));
    const char *sigs[2] = {sig, sig};
    const double al[2] = {1, 1};
    assert_int_equal(wmat__sig_apply(m.other, 1, sigs, al, out, WMAT_FMT_UNKNOWN, WMAT_F32, NULL, NULL), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), sig));
    assert_non_null(strstr(wmat_last_error(), m.other));
    assert_non_null(strstr(wmat_last_error(), "dim 32"));
    assert_false(exists(out));
    /* compose: the first fits, the second is the base model itself (not a signature) */
    const char *mixed[2] = {sig, m.base};
    assert_true(wmat__sig_apply(m.base, 2, mixed, al, out, WMAT_FMT_UNKNOWN, WMAT_F32, NULL, NULL) < 0);
    assert_non_null(strstr(wmat_last_error(), "not a weight signature"));
    assert_false(exists(out));
    const double bad[1] = {NAN};
    assert_int_equal(wmat__sig_apply(m.base, 1, sigs, bad, out, WMAT_FMT_UNKNOWN, WMAT_F32, NULL, NULL), WMAT_ERR_INVALID);
    assert_false(exists(out));
    p.layers = "0,7";
    assert_int_equal(wmat__sig_extract(m.ft, m.base, outx, &p, NULL), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "block 7"));
    assert_false(exists(outx));
    /* hand-made files: a matrix both whole and factored, factors of the
     * wrong shape, no config */
    {
        wmat_model *mb = tu_load_f32(m.base);
        char cfg[256];
        const wmat_config *c = wmat_model_config(mb);
        snprintf(cfg, sizeof cfg, "dim=%d,hidden_dim=%d,n_layers=%d,n_heads=%d,n_kv_heads=%d,vocab_size=%d,head_dim=%d,tied_embeddings=%d",
                 c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size, c->head_dim,
                 c->tied_embeddings);
        const char *nm = "model.layers.0.mlp.down_proj.weight"; /* 32 x 64 */
        static float zeros[32 * 64];
        wmat_st_entry e[3];
        memset(e, 0, sizeof e);
        e[0] = (wmat_st_entry){"model.layers.0.mlp.down_proj.weight.A", WMAT_ST_F32, 2, {32, 2}, zeros, NULL, NULL, NULL};
        e[1] = (wmat_st_entry){"model.layers.0.mlp.down_proj.weight.B", WMAT_ST_F32, 2, {2, 64}, zeros, NULL, NULL, NULL};
        e[2] = (wmat_st_entry){nm, WMAT_ST_F32, 2, {32, 64}, zeros, NULL, NULL, NULL};
        const wmat_st_meta meta[2] = {{"format", "wmat.signature"}, {"config", cfg}};
        const wmat_st_meta meta_v[3] = {{"format", "wmat.signature"}, {"version", "1"}, {"config", cfg}};
        const char *hand = tu_tmp("hand.st");
        const char *one_sig[1] = {hand};
        static const struct {
            int n_e, shape_b1, n_meta;
            const char *says;
        } cases[] = {
            {3, 64, 3, "both whole and as factors"},
            {2, 63, 3, "do not make a 32x64 matrix"},
            {2, 64, 2, "signature version"},
        };
        for (size_t q = 0; q < sizeof cases / sizeof cases[0]; q++) {
            e[1].shape[1] = cases[q].shape_b1;
            TU_OK(wmat__st_write(hand, e, cases[q].n_e, cases[q].n_meta == 3 ? meta_v : meta, cases[q].n_meta));
            const int rc = wmat__sig_apply(m.base, 1, one_sig, al, out, WMAT_FMT_UNKNOWN, WMAT_F32, NULL, NULL);
            if (rc >= 0 || !strstr(wmat_last_error(), cases[q].says))
                fail_msg("case %zu: rc %d, '%s'", q, rc, wmat_last_error());
            assert_false(exists(out));
        }
        e[1].shape[1] = 64;
        TU_OK(wmat__st_write(hand, e, 2, meta_v, 3)); /* and the well-formed one applies */
        TU_OK(wmat__sig_apply(m.base, 1, one_sig, al, out, WMAT_FMT_UNKNOWN, WMAT_F32, NULL, NULL));
        remove(out);
        wmat_model_free(mb);
    }
    p.layers = NULL;
    assert_int_equal(wmat__sig_extract(m.other, m.base, outx, &p, NULL), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "different architectures"));
    assert_false(exists(outx));
}

/* The CLI: extract, info, apply and compose run; a mismatched base fails
 * with both names and writes nothing. */
static void test_sig_cli(void **state)
{
    (void)state;
    models m;
    make_models(&m);
    const char *sig = tu_tmp("cli.st");
    char sigc[512], cmd[4096];
    snprintf(sigc, sizeof sigc, "%s", sig);
    const char *o1 = tu_tmp("cli1.gguf");
    int code = -1;
    snprintf(cmd, sizeof cmd, "%s signature extract %s %s %s --rank 4 --threads 1 2>&1", tu_cli(), m.ft, m.base, sigc);
    char *out = tu_run(cmd, &code);
    if (code != 0 || !strstr(out, "rel err")) fail_msg("%s -> %d: %s", cmd, code, out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s signature info %s 2>&1", tu_cli(), sigc);
    out = tu_run(cmd, &code);
    if (code != 0 || !strstr(out, "rank       4") || !strstr(out, "dim=32")) fail_msg("%s -> %d: %s", cmd, code, out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s signature compose %s %s %s --alphas 0.5,0.5 %s --threads 1 2>&1", tu_cli(), m.base, sigc,
             sigc, o1);
    out = tu_run(cmd, &code);
    if (code != 0) fail_msg("%s -> %d: %s", cmd, code, out);
    free(out);
    const char *o2 = tu_tmp("cli2.gguf");
    snprintf(cmd, sizeof cmd, "%s signature apply %s %s %s --threads 1 2>&1", tu_cli(), m.base, sigc, o2);
    out = tu_run(cmd, &code);
    if (code != 0) fail_msg("%s -> %d: %s", cmd, code, out);
    free(out);
    /* compose of two halves equals apply of the whole */
    wmat_model *a = tu_load_f32(o1), *b = tu_load_f32(o2);
    for (int i = 0; i < wmat_model_n_tensors(a); i++) {
        const wmat_tensor *t = wmat_model_tensor(a, i);
        TU_ASSERT_CLOSE(t->data, wmat_model_find(b, t->name)->data, (size_t)wmat_tensor_nelem(t), 1e-6, 1e-6);
    }
    wmat_model_free(a);
    wmat_model_free(b);
    const char *o3 = tu_tmp("cli3.gguf");
    snprintf(cmd, sizeof cmd, "%s signature apply %s %s %s 2>&1", tu_cli(), m.other, sigc, o3);
    out = tu_run(cmd, &code);
    if (code == 0 || !strstr(out, m.other) || !strstr(out, sigc)) fail_msg("%s -> %d: %s", cmd, code, out);
    free(out);
    assert_false(exists(o3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sig_roundtrip_logits),
        cmocka_unit_test(test_sig_rank_eckart_young),
        cmocka_unit_test(test_sig_compose_against_layers),
        cmocka_unit_test(test_sig_refusals),
        cmocka_unit_test(test_sig_cli),
    };
    return tu_run_tests("signature", tests, NULL, NULL);
}
