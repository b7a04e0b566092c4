/* The trainer's registries, entry by entry: a new optimizer, projector or
 * adapter is tested by adding it to its table.
 *
 * - every optimizer, alone and wrapped by every projector, lowers the loss
 *   of a tiny synthetic model, and its state goes through a checkpoint bit
 *   for bit (the reloaded trainer writes the same file and continues to the
 *   same weights);
 * - every adapter: backward against central finite differences of its own
 *   forward (tolerance below), merged weights give the logits of base +
 *   adapter within 1e-5, PEFT save + merge round trip within 1e-6; an
 *   entry that adopts its base's factors gets a base that has some (a sum
 *   of the dense W and a rank-3 low-rank weight; a tiny model decomposed
 *   by SVD) and its trained model is the base's kinds;
 * - names are unique and found; an unknown name is refused naming the
 *   registered ones. */
#include "test_util.h"
#include "train/adapter.h"
#include "train/optim.h"
#include "train/train.h"
#include "wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static wmat_model *tiny_model(uint64_t seed)
{
    wmat_config c = tu_config(16, 24, 2, 4, 2, 13, 16);
    c.tied_embeddings = 1;
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, seed, 0.3f));
    return m;
}

static int32_t *synthetic_tokens(size_t n, int V)
{
    int32_t *d = malloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) d[i] = (int32_t)((i * i + 3 * i) % 7 + (i % 3)) % V; /* learnable pattern */
    return d;
}

static wmat_train_params params(wmat_context *oc)
{
    wmat_train_params p = wmat_train_default_params();
    p.exec = oc;
    p.batch = 4;
    p.ctx = 8;
    p.steps = 40;
    p.warmup = 3;
    p.grad_accum = 2;
    p.weight_decay = 0.01f;
    p.galore_rank = 4;
    p.galore_gap = 5;
    p.lora_rank = 4;
    p.lora_targets = 0x7f;
    p.adapter_density = 0.25f;
    return p;
}

static double run(wmat_trainer *t, int n, double *first)
{
    double last = NAN;
    for (int i = 0; i < n; i++) {
        wmat_train_step_info si;
        TU_OK(wmat_trainer_step(t, &si));
        if (i == 0 && first) *first = si.loss;
        last = si.loss;
    }
    return last;
}

/* Loss falls by 0.3+ over 40 steps at the first of a few learning rates
 * that works (an entry declares no scale of its own: SGD wants ~10x
 * Adam's); then a checkpoint at step 7 reloads bit for bit. */
static void optimizer_check(const char *opt, const char *proj)
{
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    int32_t *d = synthetic_tokens(2000, 13);
    wmat_model *m = tiny_model(41);
    const float lrs[3] = {1e-2f, 1e-1f, 3e-3f};
    int ok = 0;
    double first = 0, last = 0;
    wmat_train_params p = params(&oc);
    p.optimizer_name = opt;
    p.projector = proj;
    for (int i = 0; i < 3 && !ok; i++) {
        p.lr = lrs[i];
        wmat_trainer *t;
        TU_OK(wmat_trainer_create(&t, m, &p));
        TU_OK(wmat_trainer_set_data(t, d, 2000));
        last = run(t, 40, &first);
        ok = isfinite(last) && last < first - 0.3;
        print_message("%s%s%s lr %g: loss %.4f -> %.4f\n", opt, proj ? " + " : "", proj ? proj : "", lrs[i], first, last);
        wmat_trainer_free(t);
    }
    if (!ok) fail_msg("%s%s%s: the loss did not fall at any learning rate", opt, proj ? " + " : "", proj ? proj : "");
    /* checkpoint round trip: 7 steps (a projector update lies after them),
     * save, load into a fresh trainer, save again: same bytes; then both go
     * on to the same weights */
    wmat_trainer *a, *b;
    TU_OK(wmat_trainer_create(&a, m, &p));
    TU_OK(wmat_trainer_set_data(a, d, 2000));
    run(a, 7, NULL);
    const char *ca = tu_tmp("a.ckpt"), *cb = tu_tmp("b.ckpt");
    TU_OK(wmat_trainer_save_checkpoint(a, ca));
    TU_OK(wmat_trainer_create(&b, m, &p));
    TU_OK(wmat_trainer_set_data(b, d, 2000));
    TU_OK(wmat_trainer_load_checkpoint(b, ca));
    TU_OK(wmat_trainer_save_checkpoint(b, cb));
    size_t na, nb;
    unsigned char *fa = tu_slurp(ca, &na), *fb = tu_slurp(cb, &nb);
    assert_int_equal(na, nb);
    if (memcmp(fa, fb, na)) fail_msg("%s: the reloaded checkpoint differs from the saved one", opt);
    free(fa);
    free(fb);
    run(a, 6, NULL);
    run(b, 6, NULL);
    size_t n1, n2;
    float *pa = wmat__trainer_params(a, &n1), *pb = wmat__trainer_params(b, &n2);
    assert_int_equal(n1, n2);
    if (memcmp(pa, pb, n1 * sizeof(float))) fail_msg("%s: resumed weights differ", opt);
    wmat_trainer_free(a);
    wmat_trainer_free(b);
    wmat_model_free(m);
    free(d);
}

static void test_optimizers(void **state)
{
    (void)state;
    const char *nm;
    int n = 0;
    for (int i = 0; !wmat_train_registry_entry(WMAT_REG_OPTIMIZER, i, &nm, NULL); i++, n++) optimizer_check(nm, NULL);
    assert_true(n >= 2);
}

static void test_projected_optimizers(void **state)
{
    (void)state;
    const char *on, *pn;
    for (int j = 0; !wmat_train_registry_entry(WMAT_REG_PROJECTOR, j, &pn, NULL); j++)
        for (int i = 0; !wmat_train_registry_entry(WMAT_REG_OPTIMIZER, i, &on, NULL); i++) optimizer_check(on, pn);
}

/* ------------------------------------------------------------ adapters */

/* f = sum(R * (X W^T + adapter(X))) in double over the float forward. */
typedef struct {
    const wmat__adapter *a;
    wmat__adapter_cfg c;
    int BT, in, out;
    float *X, *W, *w[WMAT__ADAPTER_MAX_TENSORS], *R, *Y, *act;
    wmat_tensor base; /* f32 header over W */
    void *fixed;
    float *scratch;
} actx;

static double f_adapter(actx *e)
{
    wmat__linear_forward(e->Y, e->X, e->W, e->BT, e->in, e->out);
    e->a->forward(&e->c, e->Y, e->act, e->scratch, e->X, (const float *const *)e->w, e->fixed, &e->base, e->BT, e->in,
                  e->out);
    double s = 0;
    for (int i = 0; i < e->BT * e->out; i++) s += (double)e->R[i] * e->Y[i];
    return s;
}

/* Central differences with h = 1e-2 on float inputs: exact for LoRA's
 * bilinear path up to float rounding of f (~1e-6 / 2h); tolerance
 * |analytic - fd| <= 5e-3 max|fd| + 2e-4 per tensor. */
static void fd_check(const char *what, actx *e, float *x, const float *an, size_t n)
{
    const float h = 1e-2f;
    double mx = 0, err = 0;
    double *fd = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        const float s = x[i];
        x[i] = s + h;
        double fp = f_adapter(e);
        x[i] = s - h;
        double fm = f_adapter(e);
        x[i] = s;
        fd[i] = (fp - fm) / (2.0 * (double)h);
        mx = fmax(mx, fabs(fd[i]));
    }
    size_t worst = 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabs(an[i] - fd[i]) <= err)) {
            err = fabs(an[i] - fd[i]);
            worst = i;
        }
    if (!(err <= 5e-3 * mx + 2e-4))
        fail_msg("%s %s: max |analytic - fd| = %.3g at %zu (%.6g vs %.6g), max |fd| %.3g", e->a->name, what, err, worst,
                 an[worst], fd[worst], mx);
    free(fd);
}

static void adapter_backward_check(const wmat__adapter *a)
{
    /* rank 4 divides both (Bone's blocks); out and rank are multiples of 4
     * (Compacter's PHM size) */
    enum { BT = 5, in = 12, out = 8 };
    actx e = {.a = a,
              .c = {.rank = 4, .alpha = 2.1f, .density = 0.3f, .nt = 1, .isa = WMAT_ISA_AVX2},
              .BT = BT,
              .in = in,
              .out = out};
    wmat_rng r;
    wmat_rng_seed(&r, 6);
    int rows[WMAT__ADAPTER_MAX_TENSORS], cols[WMAT__ADAPTER_MAX_TENSORS];
    a->shapes(&e.c, in, out, rows, cols);
    float *dw[WMAT__ADAPTER_MAX_TENSORS] = {0};
    e.X = malloc(sizeof(float) * BT * in);
    e.W = malloc(sizeof(float) * out * in);
    e.R = malloc(sizeof(float) * BT * out);
    e.Y = malloc(sizeof(float) * BT * out);
    if (a->n_tshared > 0) {
        /* as the trainer: the largest adapted layer (act_floats has no out) */
        e.c.in_max = in;
        e.c.out_max = out;
    }
    e.act = calloc(a->act_floats(&e.c, BT) + 1, sizeof(float));
    float *scratch = calloc(a->scratch_floats(&e.c, BT, in, out) + 1, sizeof(float));
    e.scratch = scratch;
    float *dX = calloc((size_t)BT * in, sizeof(float));
    for (int i = 0; i < BT * in; i++) e.X[i] = wmat_rng_normal(&r);
    for (int i = 0; i < out * in; i++) e.W[i] = wmat_rng_normal(&r);
    for (int i = 0; i < BT * out; i++) e.R[i] = wmat_rng_normal(&r);
    /* the init's values, then noise everywhere: a zero tensor (LoRA's B)
     * would hide the other's gradient */
    for (int k = 0; k < a->n_tensors; k++) {
        e.w[k] = calloc(wmat__adapter_nelem(rows[k], cols[k]), sizeof(float));
        dw[k] = calloc(wmat__adapter_nelem(rows[k], cols[k]), sizeof(float));
    }
    e.fixed = a->fixed_bytes ? calloc(a->fixed_bytes(&e.c, in, out), 1) : NULL;
    /* shared data (VeRA's A, B) sized for a larger layer than this one: the
     * layer reads its slices */
    float *shared = NULL;
    if (a->n_shared > 0) {
        e.c.in_max = in + 2;
        e.c.out_max = out + 3;
        shared = calloc(wmat__adapter_shared_floats(a, &e.c) + 1, sizeof(float));
        TU_OK(a->init_shared(&e.c, shared));
        e.c.shared = shared;
    }
    /* trained shared tensors (S2-LoRA's A, B; Compacter's PHM rule): one
     * group, with gradients the backward adds to */
    float *tw[WMAT__ADAPTER_MAX_TENSORS] = {0}, *tg[WMAT__ADAPTER_MAX_TENSORS] = {0};
    int trows[WMAT__ADAPTER_MAX_TENSORS], tcols[WMAT__ADAPTER_MAX_TENSORS];
    if (a->n_tshared > 0) {
        a->tshared_shapes(&e.c, in, out, trows, tcols);
        for (int k = 0; k < a->n_tshared; k++) {
            tw[k] = calloc(wmat__adapter_nelem(trows[k], tcols[k]), sizeof(float));
            tg[k] = calloc(wmat__adapter_nelem(trows[k], tcols[k]), sizeof(float));
        }
        TU_OK(a->init_tshared(&e.c, tw, in, out, &r));
        for (int k = 0; k < a->n_tshared; k++)
            for (size_t i = 0; i < wmat__adapter_nelem(trows[k], tcols[k]); i++) tw[k][i] += 0.5f * wmat_rng_normal(&r);
        e.c.tw = tw;
        e.c.tg = tg;
    }
    /* a base-aware entry sees W (and may rewrite it: the layer then runs
     * on the rewritten W, as in the trainer) */
    wmat__tensor_init2(&e.base, WMAT_F32, out, in, e.W);
    TU_OK(a->check ? a->check(&e.c, a->replaces_base ? NULL : &e.base, in, out, "test") : WMAT_OK);
    wmat_tensor sum; /* an adopting entry's base: W + A0 B0 (rank 3), of which it takes A0, B0 and leaves W */
    memset(&sum, 0, sizeof sum);
    float A0[out * 3], B0[3 * in];
    if (a->adopt) {
        for (int i = 0; i < out * 3; i++) A0[i] = wmat_rng_normal(&r);
        for (int i = 0; i < 3 * in; i++) B0[i] = wmat_rng_normal(&r);
        void *lo, *so;
        wmat_tensor wp, lp;
        TU_OK(wmat__lowrank_create(WMAT_F32, out, in, 3, A0, B0, &lo));
        wmat__tensor_init2(&wp, WMAT_F32, out, in, e.W);
        wmat__tensor_own_obj(&lp, out, in, lo);
        TU_OK(wmat__sum_create(&wp, &lp, &so));
        wmat__tensor_own_obj(&sum, out, in, so);
        const wmat_tensor *rest = NULL;
        wmat__adapter_cfg lc;
        assert_int_equal(a->adopt(&e.c, &e.base, in, out, "test", &lc, &rest), 0); /* dense W: nothing to adopt */
        assert_int_equal(a->adopt(&e.c, &sum, in, out, "test", &lc, &rest), 1);
        assert_true(rest && rest->data == e.W && lc.rank == 3);
        e.c = lc;
        TU_OK(a->init(&e.c, e.w, e.fixed, &sum, NULL, in, out, &r));
        /* the tensors are the factors as stored (LoRA's layout: B, then A) */
        assert_memory_equal(e.w[0], B0, sizeof B0);
        assert_memory_equal(e.w[1], A0, sizeof A0);
    } else {
        TU_OK(a->init(&e.c, e.w, e.fixed, a->replaces_base ? NULL : &e.base, a->replaces_base ? NULL : e.W, in, out, &r));
    }
    for (int k = 0; k < a->n_tensors; k++)
        for (size_t i = 0; i < wmat__adapter_nelem(rows[k], cols[k]); i++) e.w[k][i] += 0.5f * wmat_rng_normal(&r);
    f_adapter(&e);
    if (a->output_side) {
        /* the entry maps the base output: its backward gives that output's
         * gradient, the base's backward runs from it */
        float *dy = calloc((size_t)BT * out, sizeof(float));
        a->backward(&e.c, dy, dw, scratch, e.R, NULL, (const float *const *)e.w, e.fixed, &e.base, e.act, BT, in, out);
        wmat__linear_backward(dX, NULL, dy, e.X, e.W, BT, in, out, 0);
        free(dy);
    } else {
        wmat__linear_backward(dX, NULL, e.R, e.X, e.W, BT, in, out, 0);
        a->backward(&e.c, dX, dw, scratch, e.R, e.X, (const float *const *)e.w, e.fixed, &e.base, e.act, BT, in, out);
    }
    fd_check("dX", &e, e.X, dX, (size_t)BT * in);
    for (int k = 0; k < a->n_tensors; k++) {
        char what[48];
        snprintf(what, sizeof what, "d%s", a->tensor_key[k]);
        /* by design not the forward's exact gradient (DoRA's detached
         * norm): tests/test_adapters_base.c checks it against a reference */
        if (a->approx_grad & (1u << k)) continue;
        fd_check(what, &e, e.w[k], dw[k], wmat__adapter_nelem(rows[k], cols[k]));
    }
    for (int k = 0; k < a->n_tshared; k++) {
        char what[48];
        snprintf(what, sizeof what, "d%s (shared)", a->tshared_key[k]);
        fd_check(what, &e, tw[k], tg[k], wmat__adapter_nelem(trows[k], tcols[k]));
    }
    for (int k = 0; k < a->n_tshared; k++) free(tw[k]), free(tg[k]);
    wmat__tensor_free_data(&sum);
    for (int k = 0; k < a->n_tensors; k++) free(e.w[k]), free(dw[k]);
    free(e.X), free(e.W), free(e.R), free(e.Y), free(e.act), free(scratch), free(dX), free(e.fixed), free(shared);
}

static void adapter_merge_peft_check(const char *name)
{
    const int replaces = wmat_train_adapter_replaces_base(name) == 1;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_train_params p = params(&oc);
    p.adapter = name;
    p.batch = 1;
    p.ctx = 12;
    p.grad_accum = 1;
    p.lr = 5e-2f;
    int32_t *d = synthetic_tokens(500, 13);
    /* an entry that plans from data (EVA) calibrates on the training tokens */
    p.adapter_calib = d;
    p.adapter_calib_n = 500;
    wmat_model *m = tiny_model(61);
    const int adopts = wmat_train_adapter_replaces_base(name) == 2;
    if (adopts) {
        /* an entry that trains a decomposition's factors: rank-4 SVD of every linear */
        wmat_decompose_params dp = wmat_decompose_default_params();
        dp.method = "svd";
        dp.method_params = "rank=4";
        TU_OK(wmat_decompose_model(m, &dp, NULL));
    }
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, 500));
    double first, last = run(t, 10, &first);
    if (!(last < first)) fail_msg("%s: loss did not fall (%.4f -> %.4f)", name, first, last);
    int32_t inp[12], tgt[12];
    for (int i = 0; i < 12; i++) inp[i] = d[i], tgt[i] = d[i + 1];
    double loss;
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 1, 12, 1, 1, 1, &loss));
    if (wmat__adapter_find(name)->not_mergeable) {
        /* not a weight delta: no merged model, no PEFT file, each refused
         * with the entry's reason; evaluation runs the trainer's forward
         * (one window: the loss of the forward above) */
        wmat_model *mm = NULL;
        assert_int_equal(wmat_train_adapter_replaces_base(name), wmat__adapter_find(name)->replaces_base ? 4 : 3);
        assert_int_equal(wmat_trainer_model(t, &mm), WMAT_ERR_UNSUPPORTED);
        assert_null(mm);
        assert_non_null(strstr(wmat_last_error(), "not a weight delta"));
        assert_int_not_equal(wmat_trainer_save_lora(t, tu_tmp("peft_none")), WMAT_OK);
        assert_non_null(strstr(wmat_last_error(), "not a weight delta"));
        wmat_eval_result er;
        TU_OK(wmat_trainer_eval(t, d, 13, 12, 1, &er));
        assert_int_equal(er.windows, 1);
        assert_true(fabs(er.mean_nll - loss) < 1e-9 * (1 + loss));
        assert_int_not_equal(wmat_trainer_eval(t, d, 20, 12, 0, &er), WMAT_OK); /* a partial window */
        wmat_trainer_free(t);
        wmat_model_free(m);
        free(d);
        return;
    }
    float unmerged[12 * 13], lg[12 * 13];
    memcpy(unmerged, wmat__trainer_logits(t), sizeof unmerged);
    wmat_model *merged;
    TU_OK(wmat_trainer_model(t, &merged));
    /* the adapter changed the function (else the comparison proves nothing);
     * a replacing adapter's model is its own, in its small kinds */
    double moved = replaces ? 1 : 0;
    for (int i = 0; i < wmat_model_n_tensors(m) && !replaces; i++) {
        const wmat_tensor *a = wmat_model_tensor(m, i), *b = wmat_model_find(merged, a->name);
        const int64_t ne = wmat_tensor_nelem(a);
        float *va = malloc((size_t)ne * sizeof(float)), *vb = malloc((size_t)ne * sizeof(float));
        if (a->ndim == 2) {
            /* an adopting entry's model keeps the base's kinds: compare values */
            if (adopts) assert_string_equal(wmat_tensor_kind(a), wmat_tensor_kind(b));
            TU_OK(wmat_tensor_dequant_rows(a, 0, a->shape[0], va));
            TU_OK(wmat_tensor_dequant_rows(b, 0, b->shape[0], vb));
        } else {
            memcpy(va, a->data, (size_t)ne * sizeof(float));
            memcpy(vb, b->data, (size_t)ne * sizeof(float));
        }
        for (int64_t j = 0; j < ne; j++) moved = fmax(moved, fabs(va[j] - vb[j]));
        free(va), free(vb);
    }
    if (!(moved > 1e-3)) fail_msg("%s: the merged weights did not move (%.3g)", name, moved);
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.ctx = &oc;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, merged, &rp));
    TU_OK(wmat_forward(rt, inp, 12, lg));
    for (int i = 0; i < 12 * 13; i++)
        if (!(fabsf(lg[i] - unmerged[i]) <= 1e-5f * (1 + fabsf(lg[i]))))
            fail_msg("%s: merged vs base + adapter logit %d: %.7g vs %.7g", name, i, lg[i], unmerged[i]);
    wmat_runtime_free(rt);
    if (!wmat__adapter_find(name)->peft_type) {
        /* PEFT has no such adapter: saving one is refused */
        assert_int_not_equal(wmat_trainer_save_lora(t, tu_tmp("peft_none")), WMAT_OK);
        wmat_trainer_free(t);
        wmat_model_free(m);
        free(d);
        return;
    }
    /* PEFT round trip */
    char dir[64];
    snprintf(dir, sizeof dir, "peft_%s", name);
    const char *path = tu_tmp(dir);
    TU_OK(wmat_trainer_save_lora(t, path));
    wmat_model *m2 = tiny_model(61);
    TU_OK(wmat_lora_merge_peft(m2, path));
    for (int i = 0; i < wmat_model_n_tensors(m2); i++) {
        const wmat_tensor *a = wmat_model_tensor(m2, i), *b = wmat_model_find(merged, a->name);
        for (int64_t j = 0; j < wmat_tensor_nelem(a); j++)
            if (!(fabsf(((float *)a->data)[j] - ((float *)b->data)[j]) < 1e-6f))
                fail_msg("%s: PEFT round trip differs in %s[%lld]", name, a->name, (long long)j);
    }
    wmat_model_free(m2);
    wmat_trainer_free(t);
    wmat_model_free(m);
    free(d);
}

static void test_adapters(void **state)
{
    (void)state;
    int n = 0;
    for (int i = 0; wmat__adapter_at(i); i++, n++) {
        const wmat__adapter *a = wmat__adapter_at(i);
        print_message("adapter %s\n", a->name);
        adapter_backward_check(a);
        adapter_merge_peft_check(a->name);
    }
    assert_true(n >= 2);
}

/* ------------------------------------------------------------ names */

static void test_names(void **state)
{
    (void)state;
    const wmat_train_registry regs[3] = {WMAT_REG_OPTIMIZER, WMAT_REG_ADAPTER, WMAT_REG_PROJECTOR};
    for (int r = 0; r < 3; r++) {
        const char *nm, *sum, *nm2;
        int n = 0;
        for (; !wmat_train_registry_entry(regs[r], n, &nm, &sum); n++) {
            assert_true(nm && *nm && sum && *sum);
            for (int j = 0; j < n; j++) {
                TU_OK(wmat_train_registry_entry(regs[r], j, &nm2, NULL));
                assert_string_not_equal(nm, nm2);
            }
        }
        assert_true(n >= 1);
    }
    for (int i = 0; wmat__optimizer_at(i); i++) {
        const wmat__optimizer *o = wmat__optimizer_at(i);
        assert_ptr_equal(wmat__optimizer_find(o->name), o);
        assert_true(o->n_states >= 0 && o->n_states <= WMAT__OPT_MAX_STATES && o->step && o->serialize && o->deserialize);
        for (int k = 0; k < o->n_states; k++) assert_true(o->states[k].elem_bytes >= 1);
    }
    for (int i = 0; wmat__adapter_at(i); i++) assert_ptr_equal(wmat__adapter_find(wmat__adapter_at(i)->name), wmat__adapter_at(i));
    for (int i = 0; wmat__projector_at(i); i++)
        assert_ptr_equal(wmat__projector_find(wmat__projector_at(i)->name), wmat__projector_at(i));
    /* unknown names: refused, naming what is registered */
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_model *m = tiny_model(3);
    wmat_train_params p = params(&oc);
    wmat_trainer *t = NULL;
    p.optimizer_name = "adamw-typo";
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "adamw-typo"));
    assert_non_null(strstr(wmat_last_error(), wmat__optimizer_at(0)->name));
    p = params(&oc);
    p.adapter = "nope";
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), wmat__adapter_at(0)->name));
    p = params(&oc);
    p.projector = "nope";
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    p = params(&oc);
    p.adapter = wmat__adapter_at(0)->name;
    p.projector = wmat__projector_at(0)->name;
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    assert_null(t);
    wmat_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_optimizers),
        cmocka_unit_test(test_projected_optimizers),
        cmocka_unit_test(test_adapters),
    };
    return tu_run_tests("train_registry", tests, NULL, NULL);
}
