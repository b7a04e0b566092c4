/* Fault injection over whole operations (SQLite's habit): the n-th allocation
 * or the n-th I/O call fails, for n = 1, 2, ... until the operation succeeds
 * without reaching the fault. Each failure must end in a clean error (status
 * != WMAT_OK, message set), leave no temporary file and no file under the
 * final name; leaks are LeakSanitizer's to find (build with WMAT_SANITIZE).
 *
 * Operations: load (llama2.c + tokenizer, GGUF, HF; materialized to f32),
 * eval (wmat_runtime_create + wmat_eval_tokens on a few tokens), convert
 * (wmat_model_save to gguf q8_0, hf f16, llama2c + tokenizer), quantize
 * (RTN 4-bit g32 of a fresh copy, packed and saved as GGUF; the packed model
 * saved as the native directory), train (trainer + one step + checkpoint;
 * a LoRA adapter's PEFT files) and analyze (the analysis; its CSV, JSON and
 * HTML writers).
 *
 * Needs a library built with -DWMAT_FAULT_INJECTION=ON; skips otherwise.
 * Not covered: allocations inside cJSON, OpenBLAS/oneDNN and the C library
 * (docs/FUZZING.md). */
#include "test_util.h"
#include "core/internal.h"
#include "quant/methods.h"
#include "quant/qmodel.h"

#include <dirent.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The model every operation starts from: stories260K (with tok512) when the
 * shared data is there, else a small random model without a tokenizer. */
static wmat_model *g_model;
static char g_src[3][512]; /* the model saved as llama2c, gguf (f32), hf (f32) */

static int faults_compiled_in(void)
{
#ifndef WMAT_FAULT_INJECTION
    return 0;
#else
    wmat__fault_arm(-1, -1);
    void *p = wmat__malloc(8);
    wmat__free(p);
    return wmat__fault_alloc_calls() > 0;
#endif
}

#define NEED_FAULTS()                                                                              \
    if (!faults_compiled_in()) {                                                                   \
        print_message("SKIP: library built without WMAT_FAULT_INJECTION (cmake -DWMAT_FAULT_INJECTION=ON)\n"); \
        skip();                                                                                    \
        return;                                                                                    \
    }

/* No "*.tmp.*" anywhere in dir (one level, and one below for HF folders). */
static void assert_no_temporaries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (strstr(e->d_name, ".tmp.")) fail_msg("temporary file left behind: %s/%s", dir, e->d_name);
        char sub[1024];
        snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
        DIR *s = opendir(sub);
        if (s) {
            struct dirent *f;
            while ((f = readdir(s)))
                if (strstr(f->d_name, ".tmp.")) fail_msg("temporary file left behind: %s/%s", sub, f->d_name);
            closedir(s);
        }
    }
    closedir(d);
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

/* rm -rf without a shell (forking a sanitized process each try is slow). */
static void rm_rf(const char *path)
{
    if (access(path, F_OK) != 0) return;
    if (nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) != 0) fail_msg("cannot remove %s", path);
}

typedef int (*op_fn)(void *arg);

/* Every n up to this many is tried; beyond it, K_SPREAD points spread evenly
 * over the rest (a save makes one I/O call per write, thousands of them, and
 * each try rewrites the file: trying all would be quadratic). */
enum { K_ALL = 160, K_SPREAD = 160 };

/* One try with the n-th allocation (io == 0) or I/O call (io == 1) failing
 * (n = LONG_MAX: nothing fails, just count). Returns the status; *calls gets
 * the number of calls made. */
static int one_try(const char *what, op_fn op, void *arg, int io, long n, const char *out, long *calls)
{
    if (out) rm_rf(out);
    wmat_clear_error();
    wmat__fault_arm(io ? -1 : n, io ? n : -1);
    int rc = op(arg);
    *calls = io ? wmat__fault_io_calls() : wmat__fault_alloc_calls();
    wmat__fault_arm(-1, -1);
    assert_no_temporaries(tu_tmpdir());
    if (rc != WMAT_OK) {
        if (!wmat_last_error()[0]) fail_msg("%s: fault %ld: status %d without a message", what, n, rc);
        if (out && access(out, F_OK) == 0)
            fail_msg("%s: fault %ld (%s) left %s behind", what, n, wmat_last_error(), out);
        if (n > *calls) fail_msg("%s: failed (%s) without reaching fault %ld", what, wmat_last_error(), n);
    }
    return rc;
}

/* Count the calls of a clean run (C), make call n fail for n = 1..C (all of
 * them up to K_ALL, then K_SPREAD spread up to C), then check that a run
 * with the fault at C + 1 succeeds. `out`: a path that must not exist after
 * a failure (removed before each try; may be NULL). Returns C. */
static long fault_loop(const char *what, op_fn op, void *arg, int io, const char *out)
{
    long total = 0, calls = 0, tried = 0;
    int rc = one_try(what, op, arg, io, LONG_MAX, out, &total);
    if (rc != WMAT_OK) fail_msg("%s: fails without a fault: %s", what, wmat_last_error());
    for (long n = 1; n <= total && n <= K_ALL; n++, tried++) one_try(what, op, arg, io, n, out, &calls);
    if (total > K_ALL) {
        long rest = total - K_ALL, m = rest < K_SPREAD ? rest : K_SPREAD;
        for (long k = 1; k <= m; k++, tried++) one_try(what, op, arg, io, K_ALL + k * rest / m, out, &calls);
    }
    /* A try that returned WMAT_OK although its fault was reached: an optional
     * allocation with a fallback absorbed it; the format tests check the
     * result. */
    rc = one_try(what, op, arg, io, total + 1, out, &calls);
    if (rc != WMAT_OK) fail_msg("%s: fails with the fault past its last call: %s", what, wmat_last_error());
    print_message("%s: %ld %s calls, %ld of them failed in turn: clean errors\n", what, total, io ? "I/O" : "allocation",
                  tried);
    return total;
}

/* ---- load */

static int op_load(void *arg)
{
    wmat_model *m = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    int rc = wmat_model_load(&m, (const char *)arg, &lp);
    if (rc == WMAT_OK && !m) return WMAT_ERR_INTERNAL;
    if (rc != WMAT_OK && m) fail_msg("load failed but returned a model");
    wmat_model_free(m);
    return rc;
}

static void load_loops(const char *path)
{
    char what[600];
    snprintf(what, sizeof what, "load %s", path);
    fault_loop(what, op_load, (void *)path, 0, NULL);
    fault_loop(what, op_load, (void *)path, 1, NULL);
}

static void test_load_llama2c(void **state)
{
    (void)state;
    NEED_FAULTS();
    load_loops(g_src[0]);
}
static void test_load_gguf(void **state)
{
    (void)state;
    NEED_FAULTS();
    load_loops(g_src[1]);
    const char *q = tu_data("models/stories260K.gguf");
    if (q) load_loops(q);
}
static void test_load_hf(void **state)
{
    (void)state;
    NEED_FAULTS();
    load_loops(g_src[2]);
}

/* ---- eval */

/* A fresh model each try: the runtime caches per-model data on first use,
 * and those allocations must fail too. */
static int op_eval(void *arg)
{
    wmat_model *m = NULL;
    wmat_runtime *rt = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    int rc = wmat_model_load(&m, (const char *)arg, &lp);
    if (rc) return rc;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = 8;
    rp.kv_cache_len = 8;
    rc = wmat_runtime_create(&rt, m, &rp);
    if (rc == WMAT_OK) {
        int32_t toks[17];
        int v = wmat_model_config(m)->vocab_size;
        for (int i = 0; i < 17; i++) toks[i] = (1 + 7 * i) % v;
        wmat_eval_result res;
        rc = wmat_eval_tokens(rt, toks, 17, 8, 0, &res);
    }
    wmat_runtime_free(rt);
    wmat_model_free(m);
    return rc;
}

static void test_eval(void **state)
{
    (void)state;
    NEED_FAULTS();
    fault_loop("load + eval", op_eval, g_src[0], 0, NULL);
    fault_loop("load + eval", op_eval, g_src[0], 1, NULL);
}

/* ---- convert */

typedef struct {
    const char *path;
    wmat_save_params sp;
} save_arg;

static int op_save(void *arg)
{
    save_arg *a = arg;
    return wmat_model_save(g_model, a->path, &a->sp);
}

static void save_loops(const char *name, wmat_format fmt, wmat_dtype dt)
{
    save_arg a = {tu_tmp(name), wmat_save_default_params()};
    char path[512], what[600];
    snprintf(path, sizeof path, "%s", a.path);
    a.path = path;
    a.sp.format = fmt;
    a.sp.dtype = dt;
    snprintf(what, sizeof what, "save %s", name);
    /* An HF folder may keep files of a partly committed save; the single-file
     * formats must leave nothing under the final name. */
    const char *must_not_exist = fmt == WMAT_FMT_HF ? NULL : path;
    for (int io = 0; io < 2; io++) {
        fault_loop(what, op_save, &a, io, must_not_exist);
        wmat_model *r = NULL;
        TU_OK(wmat_model_load(&r, path, NULL)); /* the last, unfaulted run wrote a good file */
        wmat_model_free(r);
    }
    rm_rf(path);
}

static void test_save_gguf_q8_0(void **state)
{
    (void)state;
    NEED_FAULTS();
    save_loops("out-q8.gguf", WMAT_FMT_GGUF, WMAT_Q8_0);
}
static void test_save_hf_f16(void **state)
{
    (void)state;
    NEED_FAULTS();
    save_loops("out-hf", WMAT_FMT_HF, WMAT_F16);
}
static void test_save_llama2c(void **state)
{
    (void)state;
    NEED_FAULTS();
    save_loops("out.bin", WMAT_FMT_LLAMA2C, WMAT_F32);
}

/* ---- quantize */

/* The model as `wmat quantize --method rtn --bits 4 --group 32 --to gguf`
 * makes it: a fresh copy, quantized, packed, saved (GGUF Q4_0). */
static wmat_model *copy_model(void)
{
    wmat_model *m = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    if (wmat_model_load(&m, g_src[0], &lp) != WMAT_OK) return NULL;
    return m;
}

static int pack_rtn4(wmat_model *m)
{
    wmat_quantize_params qp = wmat_quantize_default_params();
    qp.method = "rtn";
    qp.bits = 4;
    qp.sym = 1;
    qp.group = 32;
    qp.n_threads = 1;
    qp.keep = "down_proj"; /* stories260K's hidden size 172 is no multiple of 32 (Q4_0's block) */
    wmat_qresult *res = NULL;
    int rc = wmat__quantize_model(m, &qp, NULL, &res);
    for (int i = 0; res && i < wmat_model_n_tensors(m); i++) {
        if (rc == WMAT_OK && wmat_qresult_done(&res[i])) rc = wmat_model_set_quantized(m, wmat_model_tensor(m, i)->name, &res[i]);
        wmat_qresult_free(&res[i]);
    }
    wmat__free(res);
    return rc;
}

static int op_quantize_gguf(void *arg)
{
    wmat_model *m = copy_model();
    if (!m) return wmat_set_error(WMAT_ERR_NOMEM, "copy_model: %s", wmat_last_error());
    int rc = pack_rtn4(m);
    if (rc == WMAT_OK) rc = wmat_quant_model_save(m, (const char *)arg, WMAT_FMT_GGUF);
    wmat_model_free(m);
    return rc;
}

static wmat_model *g_qmodel; /* packed once for the native-directory writer */

static int op_quant_save_native(void *arg) { return wmat_quant_model_save(g_qmodel, (const char *)arg, WMAT_FMT_QUANT); }

static void test_quantize(void **state)
{
    (void)state;
    NEED_FAULTS();
    char path[512];
    snprintf(path, sizeof path, "%s", tu_tmp("q4.gguf"));
    for (int io = 0; io < 2; io++) {
        fault_loop("quantize rtn4 -> gguf", op_quantize_gguf, path, io, path);
        wmat_model *r = NULL;
        TU_OK(wmat_model_load(&r, path, NULL));
        wmat_model_free(r);
    }
    rm_rf(path);
    g_qmodel = copy_model();
    assert_non_null(g_qmodel);
    TU_OK(pack_rtn4(g_qmodel));
    snprintf(path, sizeof path, "%s", tu_tmp("q4-native"));
    /* a directory: files of a partly committed save may stay, temporaries not */
    for (int io = 0; io < 2; io++) {
        fault_loop("quant save native", op_quant_save_native, path, io, NULL);
        wmat_model *r = NULL;
        TU_OK(wmat_model_load(&r, path, NULL));
        wmat_model_free(r);
    }
    rm_rf(path);
    wmat_model_free(g_qmodel);
    g_qmodel = NULL;
}

/* ---- train */

static int32_t g_tokens[600];

/* One thread: a step in a busy OpenMP team costs more than the fault loop. */
static wmat_context g_one_thread;

static wmat_train_params train_params(wmat_train_method meth)
{
    g_one_thread = wmat_context_default();
    g_one_thread.n_threads = 1;
    wmat_train_params p = wmat_train_default_params();
    p.exec = &g_one_thread;
    p.method = meth;
    p.batch = 2;
    p.ctx = 8;
    p.steps = 4;
    p.lora_rank = 2;
    p.lora_targets = 0x7f;
    p.galore_rank = 2;
    return p;
}

/* create + data + one step + checkpoint, as `wmat train --checkpoint` does */
static int op_train_checkpoint(void *arg)
{
    const wmat_train_params *p = ((void **)arg)[1];
    wmat_trainer *t = NULL;
    int rc = wmat_trainer_create(&t, g_model, p);
    if (rc == WMAT_OK && !t) return WMAT_ERR_INTERNAL;
    if (rc == WMAT_OK) rc = wmat_trainer_set_data(t, g_tokens, sizeof g_tokens / sizeof g_tokens[0]);
    wmat_train_step_info si;
    if (rc == WMAT_OK) rc = wmat_trainer_step(t, &si);
    if (rc == WMAT_OK) rc = wmat_trainer_save_checkpoint(t, ((void **)arg)[0]);
    wmat_trainer_free(t);
    return rc;
}

static wmat_trainer *g_lora;
static int op_save_lora(void *arg) { return wmat_trainer_save_lora(g_lora, (const char *)arg); }

static void test_train(void **state)
{
    (void)state;
    NEED_FAULTS();
    int v = wmat_model_config(g_model)->vocab_size;
    for (size_t i = 0; i < sizeof g_tokens / sizeof g_tokens[0]; i++) g_tokens[i] = (int32_t)((3 + 11 * i) % (size_t)v);
    char path[512];
    snprintf(path, sizeof path, "%s", tu_tmp("train.ckpt"));
    static const wmat_train_method meths[] = {WMAT_TRAIN_FULL, WMAT_TRAIN_LORA, WMAT_TRAIN_GALORE};
    static const char *names[] = {"train full + checkpoint", "train lora + checkpoint", "train galore + checkpoint"};
    for (int k = 0; k < 3; k++) {
        wmat_train_params p = train_params(meths[k]);
        void *arg[2] = {path, &p};
        for (int io = 0; io < 2; io++) fault_loop(names[k], op_train_checkpoint, arg, io, path);
        /* the last, unfaulted run wrote a checkpoint this method resumes from */
        wmat_trainer *t = NULL;
        TU_OK(wmat_trainer_create(&t, g_model, &p));
        TU_OK(wmat_trainer_load_checkpoint(t, path));
        assert_int_equal(wmat_trainer_steps_done(t), 1);
        wmat_trainer_free(t);
        rm_rf(path);
    }
    wmat_train_params p = train_params(WMAT_TRAIN_LORA);
    TU_OK(wmat_trainer_create(&g_lora, g_model, &p));
    TU_OK(wmat_trainer_set_data(g_lora, g_tokens, sizeof g_tokens / sizeof g_tokens[0]));
    wmat_train_step_info si;
    TU_OK(wmat_trainer_step(g_lora, &si));
    snprintf(path, sizeof path, "%s", tu_tmp("adapter"));
    for (int io = 0; io < 2; io++) {
        fault_loop("save lora (PEFT)", op_save_lora, path, io, NULL);
        wmat_model *m = copy_model();
        assert_non_null(m);
        TU_OK(wmat_lora_merge_peft(m, path)); /* the last run wrote a readable adapter */
        wmat_model_free(m);
    }
    rm_rf(path);
    wmat_trainer_free(g_lora);
    g_lora = NULL;
}

/* ---- analyze */

static int op_analyze(void *arg)
{
    (void)arg;
    wmat_analysis *a = NULL;
    wmat_analyze_params p = wmat_analyze_default_params();
    int rc = wmat_analyze_model(&a, g_model, NULL, &p);
    if (rc != WMAT_OK && a) fail_msg("analysis failed but returned a result");
    wmat_analysis_free(a);
    return rc;
}

static wmat_analysis *g_analysis;
typedef struct {
    int kind; /* 0 csv, 1 json, 2 html */
    const char *path;
} report_arg;

static int op_report(void *arg)
{
    const report_arg *r = arg;
    return r->kind == 0   ? wmat_analysis_write_csv(g_analysis, r->path)
           : r->kind == 1 ? wmat_analysis_write_json(g_analysis, r->path)
                          : wmat_analysis_write_html(g_analysis, r->path, "faults");
}

static void test_analyze(void **state)
{
    (void)state;
    NEED_FAULTS();
    fault_loop("analyze", op_analyze, NULL, 0, NULL);
    TU_OK(wmat_analyze_model(&g_analysis, g_model, NULL, NULL));
    static const char *names[3] = {"analysis.csv", "analysis.json", "analysis.html"};
    for (int k = 0; k < 3; k++) {
        char path[512], what[64];
        snprintf(path, sizeof path, "%s", tu_tmp(names[k]));
        snprintf(what, sizeof what, "write %s", names[k]);
        report_arg r = {k, path};
        for (int io = 0; io < 2; io++) {
            fault_loop(what, op_report, &r, io, path);
            assert_int_equal(access(path, F_OK), 0);
        }
        rm_rf(path);
    }
    wmat_analysis_free(g_analysis);
    g_analysis = NULL;
}

/* ---- fixture */

static int setup(void **state)
{
    (void)state;
    const char *bin = tu_data("models/stories260K.bin");
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    if (bin && wmat_model_load(&g_model, bin, &lp) == WMAT_OK) {
        print_message("model: %s\n", bin);
    } else {
        wmat_config c = tu_config(64, 128, 2, 4, 2, 96, 32);
        if (wmat_model_create(&g_model, &c) != WMAT_OK) return -1;
        wmat_rng r;
        wmat_rng_seed(&r, 7);
        for (int i = 0; i < wmat_model_n_tensors(g_model); i++) {
            wmat_tensor *t = wmat_model_tensor(g_model, i);
            float *x = t->data;
            for (int64_t j = 0; j < wmat_tensor_nelem(t); j++) x[j] = 0.05f * wmat_rng_normal(&r);
        }
        print_message("model: random (shared data not found)\n");
    }
    static const struct {
        const char *name;
        wmat_format fmt;
    } out[3] = {{"src.bin", WMAT_FMT_LLAMA2C}, {"src.gguf", WMAT_FMT_GGUF}, {"src-hf", WMAT_FMT_HF}};
    for (int i = 0; i < 3; i++) {
        snprintf(g_src[i], sizeof g_src[i], "%s", tu_tmp(out[i].name));
        wmat_save_params sp = wmat_save_default_params();
        sp.format = out[i].fmt;
        sp.dtype = WMAT_F32;
        if (wmat_model_save(g_model, g_src[i], &sp) != WMAT_OK) {
            print_error("setup: %s\n", wmat_last_error());
            return -1;
        }
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    wmat_model_free(g_model);
    g_model = NULL;
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows in CI logs as it happens */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_llama2c),   cmocka_unit_test(test_load_gguf),
        cmocka_unit_test(test_load_hf),        cmocka_unit_test(test_eval),
        cmocka_unit_test(test_save_gguf_q8_0), cmocka_unit_test(test_save_hf_f16),
        cmocka_unit_test(test_save_llama2c),   cmocka_unit_test(test_quantize),
        cmocka_unit_test(test_train),          cmocka_unit_test(test_analyze),
    };
    return tu_run_tests("faults", tests, setup, teardown);
}
