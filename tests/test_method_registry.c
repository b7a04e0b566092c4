/* Every method of the registries (quantization: src/quant/methods.c;
 * decomposition: src/decomp/decompose.c; both listed by src/catalog), by
 * iterating them: its row is complete, its schema's defaults validate, it
 * runs on a random matrix within its error budget, every numeric key
 * rejects out-of-range values with a message naming the key (through the
 * schema, the driver's check, --override and the CLI), the public listing
 * and the CLI's --help document it, and tools/ names no method. */
#include "test_util.h"

#include "catalog/catalog.h"
#include "decomp/decomp.h"
#include "experiment/experiment.h"
#include "quant/methods.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Error budgets at the schema's defaults on the matrix below (64 x 96,
 * N(0, 0.1^2) with one input column x20; 4 bits, asymmetric, per-OC for the
 * fixed-axis methods): weight error ||W - Q||_F / ||W||_F and calibration
 * output error tr(dW H dW^T) / tr(W H W^T). Measured (rel / out): rtn
 * 0.175 / 0.0663, imatrix 0.179 / 0.0555, gptq 0.201 / 0.0456, adadim-rtn
 * 0.097 / 0.0097, adadim-gptq 0.110 / 0.0059 (the outlier column sends
 * AdaDim per-IC); the budgets leave 1.3x. A method with no row here fails:
 * a new method states its budget. */
static const struct {
    const char *name;
    double rel, out;
} k_budget[] = {
    {"rtn", 0.23, 0.086},
    {"imatrix", 0.235, 0.072},
    {"gptq", 0.26, 0.059},
    {"adadim-rtn", 0.127, 0.0127},
    {"adadim-gptq", 0.143, 0.0077},
    {"pbllm", 0.25, 0.04}, /* 10% at 8 bits, the rest 1 bit (no bits key: one budget); measured 0.203, 0.030 */
    {"bcq", 0.23, 0.022},
    {"dgq", 0.22, 0.06}, /* per-channel 4-bit with its fine search (no bits key); measured 0.187, 0.049 */
    {"bitstack", 0.03, 0.0005}, /* the full stack at its defaults (16 blocks of rank 1, ~22 b/w); measured 0.0213, 0.00034 */
    {"gwq", 0.23, 0.05},       /* 1% fp16, the rest GPTQ per-OC; measured 0.197, 0.044 */
    {"finequant", 0.29, 0.13}, /* symmetric RTN, per-OC here (n = 96); measured 0.257, 0.113 */
    {"cbq", 0.21, 0.075},      /* CFP + RTN per-OC (the reconstruction is not a per-tensor step); measured 0.185, 0.064 */
};

static void rand_matrix(float *W, int64_t n, uint64_t seed, float sd)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) W[i] = sd * wmat_rng_normal(&r);
}

/* Statistics of N synthetic activations with correlated features and a few
 * outlier channels, accumulated the way calibration does. */
static void synthetic_stats(wmat_qstats *st, int64_t n, int N, uint64_t seed)
{
    float *X = malloc((size_t)N * (size_t)n * sizeof(float));
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int t = 0; t < N; t++) {
        const float common = wmat_rng_normal(&r);
        for (int64_t j = 0; j < n; j++) {
            float v = wmat_rng_normal(&r) + 0.5f * common;
            if (j % 37 == 5) v *= 8.0f;
            X[(int64_t)t * n + j] = v;
        }
    }
    TU_OK(wmat__qstats_init(st, n, 1));
    wmat__qstats_add(st, X, N);
    wmat__qstats_finish(st);
    free(X);
}

static int n_methods(void)
{
    int n = 0;
    while (wmat__qmethods[n].name) n++;
    return n;
}

/* The row is complete and consistent; the keys mean one thing across methods. */
static void test_rows(void **state)
{
    (void)state;
    const int n = n_methods();
    assert_true(n >= 5);
    int n_quant = 0;
    for (int i = 0; i < n; i++) {
        const wmat_qmethod *m = &wmat__qmethods[i];
        assert_string_equal(m->family, WMAT_FAMILY_QUANTIZATION);
        TU_OK(wmat__method_desc_check(&m->desc));
        assert_ptr_equal(&m->desc.name, &m->name); /* one layout read two ways */
        {
            /* what the public list and wmat_quantize_model offer */
            assert_non_null(m->fn);
            int calib = -1;
            assert_string_equal(wmat_quantize_method_name(n_quant++, &calib), m->name);
            assert_int_equal(calib, wmat__qmethod_needs_calib(m));
        }
        assert_true(m->produces && m->produces[0]);
        assert_true(m->summary && m->summary[0]);
        assert_ptr_equal(wmat__qmethod_find(m->name), m);
        assert_int_equal(m->stats & ~(unsigned)(WMAT_QSTAT_HESSIAN | WMAT_QSTAT_ACT_NORMS | WMAT_QSTAT_GRADIENTS), 0);
        for (int k = 0; k < i; k++) assert_string_not_equal(wmat__qmethods[k].name, m->name);
        /* the schema's defaults validate, and every key is documented */
        wmat_pset ps;
        TU_OK(wmat__pset_init(&ps, m->schema));
        assert_true(ps.n > 0);
        for (int k = 0; k < ps.n; k++) {
            assert_true(ps.spec[k].help && ps.spec[k].help[0]);
            if (ps.spec[k].type == WMAT_PARAM_INT || ps.spec[k].type == WMAT_PARAM_FLOAT)
                assert_true(ps.spec[k].min <= ps.spec[k].max);
        }
        /* the driver accepts the method with its defaults */
        wmat_quantize_params p = wmat_quantize_default_params();
        p.method = m->name;
        TU_OK(wmat__quantize_check(&p));
        wmat__pset_free(&ps);
    }
    assert_string_equal(wmat_quantize_default_params().method, wmat__qmethods[0].name);
    assert_null(wmat_quantize_method_name(n_quant, NULL));
    assert_null(wmat_quantize_method_name(-1, NULL));
    const wmat_qmethod *df = wmat__qmethod_data_free();
    assert_non_null(df);
    assert_int_equal(df->stats, 0);
    wmat_param_spec keys[64];
    TU_OK(wmat__qmethod_keys(keys, 64));
    assert_true(wmat__params_count(keys) > 0);
}

static int n_dmethods(void)
{
    int n = 0;
    while (wmat__dmethods[n].name) n++;
    return n;
}

/* The decomposition rows: complete, their defaults a valid schema, listed. */
static void test_decomp_rows(void **state)
{
    (void)state;
    const int n = n_dmethods();
    assert_true(n >= 1);
    for (int i = 0; i < n; i++) {
        const wmat_dmethod *d = &wmat__dmethods[i];
        assert_string_equal(d->family, WMAT_FAMILY_DECOMPOSITION);
        TU_OK(wmat__method_desc_check(&d->desc));
        assert_true(d->fn || d->model_fn); /* per matrix, or over the whole model */
        assert_ptr_equal(wmat__dmethod_find(d->name), d);
        const char *sum = NULL, *prod = NULL;
        assert_string_equal(wmat_decompose_method_name(i, &sum, &prod), d->name);
        assert_string_equal(sum, d->summary);
        assert_string_equal(prod, d->produces);
        if (!d->model_fn) assert_int_equal(d->stats, 0); /* only a whole-model method collects statistics */
    }
    assert_null(wmat_decompose_method_name(n, NULL, NULL));
    assert_string_equal(wmat_decompose_default_params().method, wmat__dmethods[0].name);
}

/* The public listing covers both families, each in its registry's order,
 * and names are unique across families. */
static void test_public_listing(void **state)
{
    (void)state;
    int ne = 0;
    while (wmat__experiments[ne]) ne++;
    const int nq = n_methods(), nd = n_dmethods(), n = wmat_method_count();
    assert_int_equal(n, nq + nd + ne);
    int per[3] = {0, 0, 0};
    for (int i = 0; i < n; i++) {
        wmat_method_about a;
        TU_OK(wmat_method_info(i, &a));
        const int fam = !strcmp(a.family, WMAT_FAMILY_DECOMPOSITION) ? 1 : !strcmp(a.family, WMAT_FAMILY_EXPERIMENT) ? 2 : 0;
        if (!fam) assert_string_equal(a.family, WMAT_FAMILY_QUANTIZATION);
        /* the i-th of its family is the family's i-th registry row, families in catalogue order */
        const wmat_method_desc *want = fam == 0   ? &wmat__qmethods[per[0]].desc
                                       : fam == 1 ? &wmat__dmethods[per[1]].desc
                                                  : &wmat__experiments[per[2]]->desc;
        if (fam < 2) assert_int_equal(per[fam + 1], 0);
        if (fam == 0) assert_int_equal(per[2], 0);
        per[fam]++;
        assert_string_equal(a.name, want->name);
        assert_string_equal(a.summary, want->summary);
        assert_string_equal(a.produces, want->produces);
        assert_int_equal(a.n_keys, wmat__params_count(want->schema));
        assert_int_equal(!!(a.needs & WMAT_NEEDS_HESSIAN), !!(want->stats & WMAT_MSTAT_HESSIAN));
        assert_int_equal(!!(a.needs & WMAT_NEEDS_ACT_NORMS), !!(want->stats & WMAT_MSTAT_ACT_NORMS));
        assert_ptr_equal(wmat__method_lookup(a.family, a.name), want);
        for (int k = 0; k < a.n_keys; k++) {
            wmat_method_key key;
            TU_OK(wmat_method_key_info(i, k, &key));
            assert_string_equal(key.key, want->schema[k].name);
            assert_string_equal(key.def, want->schema[k].def);
            assert_true(key.help && key.help[0] && key.range[0]);
        }
        assert_int_equal(wmat_method_key_info(i, a.n_keys, &(wmat_method_key){0}), WMAT_ERR_INVALID);
        for (int j = 0; j < i; j++) {
            wmat_method_about b;
            TU_OK(wmat_method_info(j, &b));
            assert_string_not_equal(a.name, b.name);
        }
    }
    assert_int_equal(per[0], nq);
    assert_int_equal(per[1], nd);
    assert_int_equal(per[2], ne);
    wmat_method_about a;
    assert_int_equal(wmat_method_info(n, &a), WMAT_ERR_INVALID);
    assert_int_equal(wmat_method_info(-1, &a), WMAT_ERR_INVALID);
    /* the family's keys mean one thing across its methods */
    wmat_param_spec keys[64];
    TU_OK(wmat__family_keys(WMAT_FAMILY_DECOMPOSITION, keys, 64));
    assert_true(wmat__params_count(keys) >= 1);
    TU_OK(wmat__dmethod_keys(keys, 64));
    /* `wmat methods` prints the same listing */
    char cmd[1024];
    int code;
    snprintf(cmd, sizeof cmd, "%s methods 2>&1", tu_cli());
    char *out = tu_run(cmd, &code);
    assert_int_equal(code, 0);
    for (int i = 0; i < n; i++) {
        TU_OK(wmat_method_info(i, &a));
        if (!strstr(out, a.name) || !strstr(out, a.summary)) fail_msg("wmat methods lacks %s:\n%s", a.name, out);
    }
    free(out);
    snprintf(cmd, sizeof cmd, "%s methods --family %s --json 2>&1", tu_cli(), WMAT_FAMILY_DECOMPOSITION);
    out = tu_run(cmd, &code);
    assert_int_equal(code, 0);
    assert_non_null(strstr(out, "\"family\": \"" WMAT_FAMILY_DECOMPOSITION "\""));
    assert_null(strstr(out, "\"family\": \"" WMAT_FAMILY_QUANTIZATION "\""));
    free(out);
    snprintf(cmd, sizeof cmd, "%s methods --family nope 2>&1", tu_cli());
    out = tu_run(cmd, &code);
    if (code != 2 || !strstr(out, "nope")) fail_msg("--family nope: exit %d:\n%s", code, out);
    free(out);
}

/* Every method on a random matrix: within its budget at its defaults, and
 * its bits key honoured. */
static void test_runs_within_budget(void **state)
{
    (void)state;
    const int64_t m = 64, n = 96;
    float *W = malloc(m * n * sizeof(float)), *D = malloc(m * n * sizeof(float)), *Z = calloc(m * n, sizeof(float));
    rand_matrix(W, m * n, 21, 0.1f);
    for (int64_t r = 0; r < m; r++) W[r * n + 7] *= 20.0f;
    wmat_qstats st;
    synthetic_stats(&st, n, 512, 23);
    const double e0 = wmat__qoutput_error(W, Z, m, n, st.H);
    float *G = malloc(m * n * sizeof(float)); /* dL/dW for the methods that read it (GWQ): a stand-in */
    rand_matrix(G, m * n, 25, 1e-3f);
    double wn = 0;
    for (int64_t i = 0; i < m * n; i++) wn += (double)W[i] * W[i];
    for (const wmat_qmethod *qm = wmat__qmethods; qm->name; qm++) {
        int b = -1;
        for (size_t k = 0; k < sizeof k_budget / sizeof k_budget[0]; k++)
            if (!strcmp(k_budget[k].name, qm->name)) b = (int)k;
        if (b < 0) fail_msg("method %s has no error budget in this test", qm->name);
        wmat_pset ps;
        TU_OK(wmat__pset_init(&ps, qm->schema));
        for (int bits = 2; bits <= 8; bits += 6) {
            if (wmat__pset_has(&ps, "bits")) {
                char v[8];
                snprintf(v, sizeof v, "%d", bits == 8 ? 4 : bits);
                TU_OK(wmat__pset_set(&ps, "bits", bits == 8 ? "4" : v));
            }
            wmat_qparams qp;
            wmat__qparams_from(&ps, &qp);
            wmat_qresult q;
            wmat_qmethod_info info;
            memset(&info, 0, sizeof info);
            /* a data-free method gets no statistics, as the driver does */
            st.grad = qm->stats & WMAT_QSTAT_GRADIENTS ? G : NULL;
            TU_OK(qm->fn(&q, W, m, n, qm->stats ? &st : NULL, &qp, &info));
            if (wmat__pset_has(&ps, "bits")) assert_int_equal(q.bits, qp.bits);
            wmat_qresult_dequant(&q, D);
            double num = 0;
            for (int64_t i = 0; i < m * n; i++) num += ((double)W[i] - D[i]) * ((double)W[i] - D[i]);
            const double rel = sqrt(num / wn), out = wmat__qoutput_error(W, D, m, n, st.H) / e0;
            print_message("%-12s %d bits: rel %.4f out %.5f  %s\n", qm->name, qp.bits, rel, out, info.scheme);
            if (!(isfinite(rel) && isfinite(out))) fail_msg("%s: error is not finite", qm->name);
            if (qp.bits == 4 && !(rel <= k_budget[b].rel && out <= k_budget[b].out))
                fail_msg("%s: rel %.4f (budget %.4f), out %.5f (budget %.5f)", qm->name, rel, k_budget[b].rel, out,
                         k_budget[b].out);
            /* 2 bits is worse than 4, but still an approximation */
            if (qp.bits == 2 && !(rel < 1.0)) fail_msg("%s at 2 bits: rel %.4f", qm->name, rel);
            wmat_qresult_free(&q);
        }
        wmat__pset_free(&ps);
    }
    st.grad = NULL;
    wmat__qstats_free(&st);
    free(G);
    free(W);
    free(D);
    free(Z);
}

/* Out-of-range text for a numeric key: below min, above max, NaN. */
static int bad_values(const wmat_param_spec *s, char vals[3][64])
{
    if (s->type == WMAT_PARAM_INT) {
        snprintf(vals[0], 64, "%lld", (long long)s->min - 1);
        snprintf(vals[1], 64, "%lld", (long long)s->max + 1);
        return 2;
    }
    snprintf(vals[0], 64, "%.17g", s->min - fmax(1e-3, fabs(s->min) * 0.5));
    snprintf(vals[1], 64, "%.17g", s->max + fmax(1e-3, fabs(s->max) * 0.5));
    snprintf(vals[2], 64, "nan");
    return 3;
}

static void expect_names(int rc, const char *what, const char *key, const char *val)
{
    if (rc == WMAT_OK) fail_msg("%s: %s=%s was accepted", what, key, val);
    const char *msg = wmat_last_error();
    if (!strstr(msg, key) || !strstr(msg, val)) fail_msg("%s: %s=%s: message '%s' names neither", what, key, val, msg);
}

/* Each numeric key of each method rejects values outside its range, with a
 * message naming the key and the value: in the schema, in the driver's
 * check (method_params), and in an --override item. */
static void test_out_of_range_rejected(void **state)
{
    (void)state;
    int checked = 0;
    for (const wmat_qmethod *qm = wmat__qmethods; qm->name; qm++) {
        for (const wmat_param_spec *s = qm->schema; s->name; s++) {
            if (s->type != WMAT_PARAM_INT && s->type != WMAT_PARAM_FLOAT) continue;
            char vals[3][64];
            const int nv = bad_values(s, vals);
            for (int k = 0; k < nv; k++) {
                wmat_pset ps;
                TU_OK(wmat__pset_init(&ps, qm->schema));
                expect_names(wmat__pset_set(&ps, s->name, vals[k]), qm->name, s->name, vals[k]);
                wmat__pset_free(&ps);
                char kv[256], ov[320];
                snprintf(kv, sizeof kv, "%s=%s", s->name, vals[k]);
                wmat_quantize_params p = wmat_quantize_default_params();
                p.method = qm->name;
                p.method_params = kv;
                expect_names(wmat__quantize_check(&p), "method_params", s->name, vals[k]);
                snprintf(ov, sizeof ov, "layers.0=%s:%s", qm->name, kv);
                p = wmat_quantize_default_params();
                p.overrides = ov;
                expect_names(wmat__quantize_check(&p), "override", s->name, vals[k]);
                checked++;
            }
        }
    }
    /* the decomposition methods' keys, the same three ways */
    for (const wmat_dmethod *dm = wmat__dmethods; dm->name; dm++) {
        for (const wmat_param_spec *s = dm->schema; s->name; s++) {
            if (s->type != WMAT_PARAM_INT && s->type != WMAT_PARAM_FLOAT) continue;
            char vals[3][64];
            const int nv = bad_values(s, vals);
            for (int k = 0; k < nv; k++) {
                wmat_pset ps;
                TU_OK(wmat__pset_init(&ps, dm->schema));
                expect_names(wmat__pset_set(&ps, s->name, vals[k]), dm->name, s->name, vals[k]);
                wmat__pset_free(&ps);
                char kv[256], ov[320];
                snprintf(kv, sizeof kv, "%s=%s", s->name, vals[k]);
                wmat_decompose_params p = wmat_decompose_default_params();
                p.method = dm->name;
                p.method_params = kv;
                expect_names(wmat__decompose_check(&p), "method_params", s->name, vals[k]);
                snprintf(ov, sizeof ov, "layers.0=%s:%s", dm->name, kv);
                p = wmat_decompose_default_params();
                p.rank = 8;
                p.overrides = ov;
                expect_names(wmat__decompose_check(&p), "override", s->name, vals[k]);
                checked++;
            }
        }
    }
    print_message("%d out-of-range values rejected three ways\n", checked);
    assert_true(checked >= 14);
    /* and the rest of the check */
    wmat_quantize_params p = wmat_quantize_default_params();
    p.method = "no-such-method";
    assert_int_equal(wmat__quantize_check(&p), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), wmat__qmethods[0].name)); /* lists the methods */
    p = wmat_quantize_default_params();
    p.method_params = "bits=3,colour=red";
    assert_int_equal(wmat__quantize_check(&p), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "colour"));
    p.method_params = "per_oc,group=32";
    assert_int_equal(wmat__quantize_check(&p), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "exclude each other"));
    p.method_params = NULL;
    p.bits = 9; /* the public fields go through the same schema */
    assert_int_equal(wmat__quantize_check(&p), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "2..8"));
    p = wmat_quantize_default_params();
    p.overrides = "wq=keep,wo=fp32,w1=rtn:3:oc,w2=rtn:2:ic:clip,w3=rtn:bits=5:asym:group=16";
    TU_OK(wmat__quantize_check(&p));
    const char *bad_ov[] = {"wq", "wq=rtn:3:16:7", "wq=rtn:damp=0.1", "wq=nope:3", "wq=rtn:bits=x"};
    for (size_t i = 0; i < sizeof bad_ov / sizeof bad_ov[0]; i++) {
        p.overrides = bad_ov[i];
        if (wmat__quantize_check(&p) != WMAT_ERR_INVALID) fail_msg("override '%s' accepted", bad_ov[i]);
        print_message("override %-18s -> %s\n", bad_ov[i], wmat_last_error());
    }
}

/* The CLI of a family's command: --help lists every method of the family,
 * its summary and its keys as flags; each numeric key's bad value exits 2
 * naming the key before any model is read (args: what else the command
 * needs to get that far). */
static void cli_family(const char *command, const char *family, const char *args)
{
    char cmd[1024];
    int code;
    snprintf(cmd, sizeof cmd, "%s %s --help 2>&1", tu_cli(), command);
    char *help = tu_run(cmd, &code);
    assert_int_equal(code, 0);
    const wmat_method_desc *d;
    int n = 0;
    for (int i = 0; (d = wmat__method_at(i)); i++) {
        if (strcmp(d->family, family)) {
            /* another family's methods are not offered here */
            char line[128];
            snprintf(line, sizeof line, "  %-12s %s\n", d->name, d->summary);
            if (strstr(help, line)) fail_msg("%s --help lists %s of %s", command, d->name, d->family);
            continue;
        }
        n++;
        char line[128];
        snprintf(line, sizeof line, "  %-12s %s\n", d->name, d->summary);
        if (!strstr(help, line)) fail_msg("%s --help lacks '%s'", command, line);
        for (const wmat_param_spec *s = d->schema; s->name; s++) {
            char flag[64];
            snprintf(flag, sizeof flag, "\n  --%s", s->name);
            for (char *c = flag + 5; *c; c++)
                if (*c == '_') *c = '-';
            if (!strstr(help, flag)) fail_msg("%s --help lacks the flag %s", command, flag + 1);
        }
    }
    assert_true(n >= 1);
    free(help);
    wmat_param_spec keys[64];
    TU_OK(wmat__family_keys(family, keys, 64));
    for (const wmat_param_spec *s = keys; s->name; s++) {
        if (s->type != WMAT_PARAM_INT && s->type != WMAT_PARAM_FLOAT) continue;
        char vals[3][64];
        const int nv = bad_values(s, vals);
        for (int k = 0; k < nv; k++) {
            snprintf(cmd, sizeof cmd, "%s %s /nonexistent.bin %s --%s=%s 2>&1", tu_cli(), command, args, s->name, vals[k]);
            char *out = tu_run(cmd, &code);
            if (code != 2 || !strstr(out, s->name) || !strstr(out, vals[k]))
                fail_msg("%s --%s=%s: exit %d, output:\n%s", command, s->name, vals[k], code, out);
            free(out);
        }
    }
}

static void test_cli_from_schema(void **state)
{
    (void)state;
    char cmd[1024];
    int code;
    cli_family("quantize", WMAT_FAMILY_QUANTIZATION, "--to none");
    cli_family("decompose", WMAT_FAMILY_DECOMPOSITION, "/nonexistent.out");
    snprintf(cmd, sizeof cmd, "%s quantize /nonexistent.bin --to none --override 'wq=gptq:blok=3' 2>&1", tu_cli());
    char *out = tu_run(cmd, &code);
    if (code != 2 || !strstr(out, "unknown key 'blok'")) fail_msg("bad override key: exit %d:\n%s", code, out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s quantize /nonexistent.bin --to none --sym --asym 2>&1", tu_cli());
    out = tu_run(cmd, &code);
    if (code != 2 || !strstr(out, "exclude each other")) fail_msg("--sym --asym: exit %d:\n%s", code, out);
    free(out);
}

/* Overrides with keys reach the method, on a real model. */
static void test_cli_override_keys(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/stories260K.bin");
    TU_NEED_DATA(cp, "golden/tinystories_valid_head.tok512.u16");
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "%s quantize %s --to none --calib %s --calib-tokens 1024 --calib-ctx 128 --bits 4 --per-ic "
             "--override 'q_proj=%s:bits=3:act_order:damp=0.05,k_proj=%s:2:oc:asym,v_proj=keep,o_proj=%s:bits=3:per-oc' 2>&1",
             tu_cli(), mp, cp, wmat__qmethods[2].name, wmat__qmethods[0].name, wmat__qmethods[0].name);
    int code;
    char *out = tu_run(cmd, &code);
    if (code != 0) fail_msg("exit %d:\n%s", code, out);
    /* the reports' scheme column says what each tensor got */
    const char *want[] = {"q_proj.weight       gptq 3b asym per-IC act-order", "k_proj.weight       rtn 2b asym per-OC",
                          "v_proj.weight       kept (fp32)", "o_proj.weight       rtn 3b asym per-OC",
                          "gate_proj.weight          rtn 4b asym per-IC"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(out, want[i])) fail_msg("report lacks '%s':\n%s", want[i], out);
    free(out);
    /* a key the chosen method does not read is noted, not fatal */
    snprintf(cmd, sizeof cmd, "%s quantize %s --to none --quiet --damp 0.05 2>&1", tu_cli(), mp);
    out = tu_run(cmd, &code);
    if (code != 0 || !strstr(out, "does not read damp")) fail_msg("exit %d:\n%s", code, out);
    free(out);
}

/* decompose: overrides with keys reach the method, keep leaves a tensor,
 * and the settings are checked before the model is read. */
static void test_cli_decompose_overrides(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/stories260K.bin");
    const char *dm = wmat__dmethods[0].name;
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s decompose %s %s --method %s --rank 8 --override 'q_proj=%s:rank=16,down_proj=keep' 2>&1",
             tu_cli(), mp, tu_tmp("dec-ov"), dm, dm);
    int code;
    char *out = tu_run(cmd, &code);
    if (code != 0) fail_msg("exit %d:\n%s", code, out);
    if (!strstr(out, "layers.0.self_attn.q_proj.weight")) fail_msg("no q_proj row:\n%s", out);
    if (strstr(out, "down_proj")) fail_msg("down_proj was kept, but is reported:\n%s", out);
    /* q_proj at rank 16, k_proj at the command line's 8 */
    for (const char *l = out; (l = strstr(l, "self_attn.")); l++) {
        const int want = !strncmp(l, "self_attn.q_proj", 16) ? 16 : 8;
        long long rows, cols, rank;
        char meth[32];
        if (sscanf(strchr(l, ' '), " %31s %lld %lld %lld", meth, &rows, &cols, &rank) != 4) fail_msg("row: %.80s", l);
        assert_string_equal(meth, dm);
        if (rank != want) fail_msg("%.40s: rank %lld, expected %d", l, rank, want);
    }
    free(out);
    const struct {
        const char *args, *says;
    } bad[] = {
        {"", "give rank > 0 or energy"},
        {"--rank 8 --energy 0.9", "exclude each other"},
        {"--rank 8 --override 'q_proj=nope'", "unknown method 'nope'"},
        {"--rank 8 --override 'q_proj=svd:rnk=3'", "unknown key 'rnk'"},
        {"--rank 8 --override 'q_proj=svd:rank=0'", "give rank > 0 or energy"},
        {"--method nope --rank 8", "unknown method 'nope'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        /* the real model: the override check runs per tensor */
        snprintf(cmd, sizeof cmd, "%s decompose %s %s %s 2>&1", tu_cli(), mp, tu_tmp("dec-bad"), bad[i].args);
        out = tu_run(cmd, &code);
        if (code == 0 || !strstr(out, bad[i].says)) fail_msg("'%s': exit %d:\n%s", bad[i].args, code, out);
        free(out);
    }
}

/* No method name is written in tools/: the CLI reads them from the registry. */
static void test_no_method_names_in_tools(void **state)
{
    (void)state;
    const char *dir = WMAT_SOURCE_DIR "/tools";
    DIR *d = opendir(dir);
    if (!d) fail_msg("cannot open %s", dir);
    int files = 0;
    for (struct dirent *e; (e = readdir(d));) {
        const size_t len = strlen(e->d_name);
        if (len < 3 || (strcmp(e->d_name + len - 2, ".c") && strcmp(e->d_name + len - 2, ".h"))) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        char *text;
        size_t n;
        TU_OK(wmat_read_file(path, &text, &n));
        for (char *c = text; *c; c++)
            if (*c >= 'A' && *c <= 'Z') *c = (char)(*c - 'A' + 'a');
        const wmat_method_desc *md;
        for (int i = 0; (md = wmat__method_at(i)); i++)
            /* a file format of the same name (GPTQ checkpoints: --to gptq) is
             * the tools' to name; the method's name is then not checked */
            if (wmat_format_from_name(md->name) == WMAT_FMT_UNKNOWN && strstr(text, md->name)) fail_msg("%s names the %s method '%s'", path, md->family, md->name);
        free(text);
        files++;
    }
    closedir(d);
    assert_true(files >= 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows),
        cmocka_unit_test(test_decomp_rows),
        cmocka_unit_test(test_public_listing),
        cmocka_unit_test(test_runs_within_budget),
        cmocka_unit_test(test_out_of_range_rejected),
        cmocka_unit_test(test_cli_from_schema),
        cmocka_unit_test(test_cli_override_keys),
        cmocka_unit_test(test_cli_decompose_overrides),
        cmocka_unit_test(test_no_method_names_in_tools),
    };
    return tu_run_tests("method_registry", tests, NULL, NULL);
}
