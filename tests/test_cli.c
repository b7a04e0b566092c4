/* The wmat command line end to end: usage errors, info speed, eval against
 * the published references, tokenize against run.c's ids, convert round
 * trips (exact for f32, idempotent for q8_0/q4_0), and llama.cpp itself
 * continuing prompts on GGUF files wmat wrote exactly as wmat does. */
#include "test_util.h"

#include "llamacpp.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static char *run(int *code, const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[8400];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    return tu_run(full, code);
}

static void expect_exit(int want, const char *must_contain, const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int code;
    char *out = run(&code, "%s", cmd);
    if (code != want) fail_msg("'%s' exited %d, expected %d:\n%s", cmd, code, want, out);
    if (must_contain && !strstr(out, must_contain)) fail_msg("'%s' output lacks '%s':\n%s", cmd, must_contain, out);
    free(out);
}

static void test_usage_errors(void **state)
{
    (void)state;
    const char *w = tu_cli();
    expect_exit(0, "commands:", "%s --help", w);
    expect_exit(2, "usage", "%s", w);
    expect_exit(2, "unknown command 'bogus'", "%s bogus", w);
    expect_exit(2, "missing arguments", "%s eval", w);
    expect_exit(2, "unknown option '--nope'", "%s info x --nope", w);
    expect_exit(2, "expects an integer", "%s eval x --tokens y --ctx abc", w);
    expect_exit(2, "exactly one of --text", "%s eval x", w);
    expect_exit(2, "give one evaluation stream", "%s eval x --tokens y --eval z", w);
    expect_exit(2, "unknown format", "%s convert a b --to xyz", w);
    expect_exit(2, "unknown --dtype", "%s convert a b --to gguf --dtype q3_kx", w);
    expect_exit(1, "/nonexistent/model.bin", "%s info /nonexistent/model.bin", w);
    expect_exit(0, "--max-windows", "%s eval --help", w);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_info_is_fast_on_every_model(void **state)
{
    (void)state;
    const char *models[] = {"models/stories260K.bin", "models/stories260K.gguf", "models/mix4m.bin", "models/mix4m-hf",
                            "models/aidreams260K.bin", "models/llama2xs_tinystories_iter500.bin"};
    int seen = 0;
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        const char *p = tu_data(models[i]);
        if (!p) continue;
        int code;
        double t0 = now();
        char *out = run(&code, "%s info '%s' --no-blas-tune", tu_cli(), p);
        double dt = now() - t0;
        if (code != 0) fail_msg("info %s failed:\n%s", p, out);
        assert_non_null(strstr(out, "model.layers.0.self_attn.q_proj.weight"));
        print_message("wmat info %s: %.1f ms (whole process)\n", models[i], dt * 1e3);
#if !defined(__SANITIZE_ADDRESS__)
        assert_true(dt < 0.5); /* process start included; the load itself is sub-millisecond */
#endif
        free(out);
        seen++;
    }
    if (!seen) {
        print_message("SKIP: no shared models\n");
        skip();
    }
}

static void test_eval_cli_matches_reference(void **state)
{
    (void)state;
    TU_NEED_DATA(m, "models/mix4m.bin");
    TU_NEED_DATA(t, "golden/wikitext2_valid_tokenized.tok512.u16");
    int code;
    char *out = run(&code, "%s eval '%s' --tokens '%s' --ctx 256 --max-windows 64 --json", tu_cli(), m, t);
    assert_int_equal(code, 0);
    double nll = 0;
    const char *p = strstr(out, "\"mean_nll\": ");
    assert_non_null(p);
    nll = atof(p + 12);
    TU_ASSERT_NEAR(nll, 3.089273, 1e-5); /* golden/eval_refs.tsv */
    assert_non_null(strstr(out, "\"tokens_scored\": 16384"));
    free(out);
    /* --text: [BOS] + the tokens of the whole file */
    TU_NEED_DATA(txt, "golden/tok_case2.txt");
    out = run(&code, "%s eval '%s' --text '%s' --ctx 64 --json", tu_cli(), m, txt);
    assert_int_equal(code, 0);
    assert_non_null(strstr(out, "\"ppl\""));
    free(out);
}

/* The option groups every command spells alike (docs/CLI.md,
 * "Conventions"): each command's --help offers them; a bad value exits 2
 * naming the flag before any file is read. */
static void test_common_spellings_offered(void **state)
{
    (void)state;
    const char *w = tu_cli();
    const struct {
        const char *cmd, *flags;
    } offered[] = {
        {"eval", "--eval --text --tokens --ctx --max-windows --offset --json --json-out"},
        {"quantize", "--calib --eval --text --tokens --ctx --max-windows --offset --json --json-out"},
        {"decompose", "--eval --text --tokens --ctx --max-windows --offset --json --json-out"},
        {"train", "--data --eval --ctx --max-windows --offset --json --json-out"},
        {"info", "--json --json-out"},
        {"analyze", "--json --json-out"},
        {"methods", "--json --json-out"},
    };
    for (size_t i = 0; i < sizeof offered / sizeof offered[0]; i++) {
        int code;
        char *help = run(&code, "%s %s --help", w, offered[i].cmd);
        assert_int_equal(code, 0);
        char flags[256];
        snprintf(flags, sizeof flags, "%s", offered[i].flags);
        for (char *f = strtok(flags, " "); f; f = strtok(NULL, " ")) {
            char line[64];
            snprintf(line, sizeof line, "\n  %s ", f); /* the flag itself, not a longer one */
            if (!strstr(help, line)) fail_msg("wmat %s --help does not offer %s:\n%s", offered[i].cmd, f, help);
        }
        /* the old spellings are hidden */
        if (strstr(help, "--eval-windows") || strstr(help, "--eval-offset") || strstr(help, "--eval-ctx") ||
            strstr(help, "\n  --val "))
            fail_msg("wmat %s --help shows an old spelling:\n%s", offered[i].cmd, help);
        free(help);
    }
    /* bad values: exit 2, the message names the flag */
    const struct {
        const char *args, *says;
    } bad[] = {
        {"eval x --tokens y --max-windows -1", "--max-windows must be >= 0"},
        {"eval x --tokens y --offset -3", "--offset must be >= 0"},
        {"eval x --tokens y --ctx 12x", "--ctx expects an integer"},
        {"eval x --tokens y --json --json-out z.json", "--json-out"},
        {"quantize x --to none --offset -1", "--offset must be >= 0"},
        {"quantize x --to none --max-windows=-4", "--max-windows must be >= 0"},
        {"quantize x --to none --calib-tokens -5", "--calib-tokens must be >= 0"},
        {"decompose x y --rank 8 --max-windows -2", "--max-windows must be >= 0"},
        {"decompose x y --rank 8 --ctx -1", "--ctx must be positive"},
        {"decompose x y --rank 8 --json --json-out z", "--json-out"},
        {"train x y --data d.txt --max-windows -1", "--max-windows must be >= 0"},
        {"train x y --data d.txt --offset -1", "--offset must be >= 0"},
        {"methods --json --json-out z", "--json-out"},
        /* an old spelling reaches the same check, under its new name */
        {"quantize x --to none --eval-windows -1", "--max-windows must be >= 0"},
        {"train x y --data d.txt --eval-windows -7", "--max-windows must be >= 0"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) expect_exit(2, bad[i].says, "%s %s", w, bad[i].args);
}

/* Count of non-overlapping occurrences of needle in s. */
static int count_of(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

/* The field "key": of a JSON text as a number (NAN when absent). */
static double json_num(const char *s, const char *key)
{
    char k[64];
    snprintf(k, sizeof k, "\"%s\": ", key);
    const char *p = s ? strstr(s, k) : NULL;
    return p ? atof(p + strlen(k)) : NAN;
}

/* stdout only (stderr dropped): what a script reading --json gets. */
static char *run_stdout(int *code, const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[8400];
    snprintf(full, sizeof full, "%s 2>/dev/null", cmd);
    return tu_run(full, code);
}

/* The shared spellings at work on a real model: every form of a token
 * input gives the same stream, --offset is the stream without its head,
 * --json-out writes what --json prints, and the old spellings give the
 * same numbers with one note each. */
static void test_common_spellings_work(void **state)
{
    (void)state;
    TU_NEED_DATA(m, "models/stories260K.bin");
    TU_NEED_DATA(t, "golden/tinystories_valid_head.tok512.u16");
    const char *w = tu_cli();
    int code;
    /* eval: --tokens F, --eval F, --eval tokens:F are one stream */
    char *ref = run_stdout(&code, "%s eval '%s' --tokens '%s' --ctx 128 --max-windows 3 --json", w, m, t);
    assert_int_equal(code, 0);
    const double nll = json_num(ref, "mean_nll");
    if (!isfinite(nll)) fail_msg("no mean_nll in:\n%s", ref);
    const char *forms[] = {"--eval '%s'", "--eval 'tokens:%s'"};
    for (size_t i = 0; i < 2; i++) {
        char form[4096], *out;
        snprintf(form, sizeof form, forms[i], t);
        out = run_stdout(&code, "%s eval '%s' %s --ctx 128 --max-windows 3 --json", w, m, form);
        assert_int_equal(code, 0);
        if (!(json_num(out, "mean_nll") == nll)) fail_msg("%s: %s vs %s", form, out, ref);
        free(out);
    }
    /* --json-out FILE holds what --json prints */
    const char *jpath = tu_tmp("eval.json");
    remove(jpath);
    char *out = run(&code, "%s eval '%s' --tokens '%s' --ctx 128 --max-windows 3 --json-out '%s'", w, m, t, jpath);
    if (code != 0 || !strstr(out, "perplexity")) fail_msg("--json-out: exit %d:\n%s", code, out);
    free(out);
    char *jtext;
    size_t jlen;
    TU_OK(wmat_read_file(jpath, &jtext, &jlen));
    assert_true(json_num(jtext, "mean_nll") == nll);
    free(jtext);
    /* --offset N: the stream without its first N tokens */
    int32_t *ids;
    size_t n;
    TU_OK(wmat_read_tokens_u16(t, &ids, &n));
    const char *tail = tu_tmp("tail.u16");
    TU_OK(wmat_write_tokens_u16(tail, ids + 1000, n - 1000));
    free(ids);
    free(ref);
    ref = run_stdout(&code, "%s eval '%s' --tokens '%s' --ctx 128 --max-windows 3 --json", w, m, tail);
    out = run_stdout(&code, "%s eval '%s' --tokens '%s' --ctx 128 --max-windows 3 --offset 1000 --json", w, m, t);
    assert_int_equal(code, 0);
    if (!(json_num(out, "mean_nll") == json_num(ref, "mean_nll"))) fail_msg("--offset: %s vs %s", out, ref);
    free(out);
    expect_exit(1, "leaves fewer than 2", "%s eval '%s' --tokens '%s' --offset 100000000", w, m, t);
    /* a name the rule does not know: refused with the way out */
    expect_exit(1, "tokens:", "%s eval '%s' --eval '%s'", w, m, tu_tmp("stream.dat"));
    /* quantize: the old evaluation spellings, one note each, the same perplexity */
    char *old = run(&code, "%s quantize '%s' --to none --quiet --eval '%s' --eval-ctx 128 --eval-windows 2 --eval-offset 65536",
                    w, m, t);
    assert_int_equal(code, 0);
    assert_int_equal(count_of(old, "old spelling"), 3);
    out = run(&code, "%s quantize '%s' --to none --quiet --eval '%s' --ctx 128 --max-windows 2 --offset 65536", w, m, t);
    assert_int_equal(code, 0);
    assert_int_equal(count_of(out, "old spelling"), 0);
    const char *po = strstr(old, "perplexity"), *pn = strstr(out, "perplexity");
    if (!po || !pn || strcmp(po, pn)) fail_msg("old and new spellings differ:\n%s\n---\n%s", old, out);
    free(old);
    free(out);
    /* quantize and decompose --json: stdout is the JSON alone */
    free(ref);
    ref = run_stdout(&code, "%s eval '%s' --tokens '%s' --ctx 128 --max-windows 2 --offset 65536 --json", w, m, t);
    out = run_stdout(&code, "%s quantize '%s' --to none --eval '%s' --ctx 128 --max-windows 2 --offset 65536 --json", w, m, t);
    assert_int_equal(code, 0);
    if (out[0] != '{' || !isfinite(json_num(out, "ppl")) || !strstr(out, "\"tensors\": ["))
        fail_msg("quantize --json:\n%s", out);
    free(out);
    out = run_stdout(&code, "%s decompose '%s' '%s' --rank 1000 --eval '%s' --ctx 128 --max-windows 2 --offset 65536 --json",
                     w, m, tu_tmp("dec-full"), t);
    assert_int_equal(code, 0);
    if (out[0] != '{') fail_msg("decompose --json:\n%s", out);
    /* full rank: the perplexity before is wmat eval's (one runtime helper), and barely moves */
    const double before = json_num(out, "ppl_before"), after = json_num(out, "ppl_after"), e = json_num(ref, "ppl");
    print_message("decompose full rank: ppl %.6f -> %.6f (wmat eval %.6f)\n", before, after, e);
    if (!(before == e) || !(fabs(after - before) < 1e-3 * before)) fail_msg("decompose --json:\n%s\neval:\n%s", out, ref);
    free(out);
    free(ref);
    /* analyze: --json FILE.json is the old --json-out, --json prints */
    const char *apath = tu_tmp("an.json");
    remove(apath);
    out = run(&code, "%s analyze '%s' --no-heads --quiet --json '%s'", w, m, apath);
    if (code != 0 || count_of(out, "old spelling") != 1) fail_msg("analyze --json FILE: exit %d:\n%s", code, out);
    free(out);
    TU_OK(wmat_read_file(apath, &jtext, &jlen));
    out = run_stdout(&code, "%s analyze --json '%s' --no-heads", w, m);
    assert_int_equal(code, 0);
    if (strcmp(out, jtext) && !(out[0] == '{' && strstr(out, "\"matrices\"")))
        fail_msg("analyze --json:\n%.300s", out);
    free(out);
    free(jtext);
    /* info --json-out */
    const char *ipath = tu_tmp("info.json");
    expect_exit(0, NULL, "%s info '%s' --json-out '%s'", w, m, ipath);
    TU_OK(wmat_read_file(ipath, &jtext, &jlen));
    assert_true(json_num(jtext, "n_layers") == 5);
    free(jtext);
}

/* train: --data / --eval by the shared rule, --max-windows, --offset,
 * --json-out; the old --val and --eval-windows still work with a note. */
static void test_common_spellings_train(void **state)
{
    (void)state;
    const char *w = tu_cli(), *txt = tu_tmp("spell.txt");
    FILE *f = fopen(txt, "w");
    assert_non_null(f);
    for (int i = 0; i < 60; i++) fprintf(f, "The quick brown fox jumps over the lazy dog, line %d.\n", i);
    fclose(f);
    const char *base = "--init tiny --byte-tokenizer --steps 2 --batch 1 --ctx 16 --threads 1 --eval-every 2";
    int code;
    char *old = run(&code, "%s train %s '%s' --data '%s' --val '%s' --eval-windows 2", w, base, tu_tmp("sp-old.gguf"), txt, txt);
    if (code != 0 || count_of(old, "old spelling") != 2) fail_msg("train old spellings: exit %d:\n%s", code, old);
    free(old);
    const char *jpath = tu_tmp("train.json");
    remove(jpath);
    char *out = run(&code, "%s train %s '%s' --data '%s' --eval '%s' --max-windows 2 --offset 10 --json-out '%s'", w, base,
                    tu_tmp("sp-new.gguf"), txt, txt, jpath);
    if (code != 0 || count_of(out, "old spelling")) fail_msg("train new spellings: exit %d:\n%s", code, out);
    free(out);
    char *j;
    size_t n;
    TU_OK(wmat_read_file(jpath, &j, &n));
    if (!(json_num(j, "val_loss_end") > 0)) fail_msg("train --json-out:\n%s", j);
    free(j);
}

static int32_t *read_ids_txt(const char *path, size_t *n)
{
    char *s;
    size_t len;
    TU_OK(wmat_read_file(path, &s, &len));
    int32_t *ids = malloc((len / 2 + 2) * sizeof *ids);
    *n = 0;
    char *p = s, *e;
    for (long v; (v = strtol(p, &e, 10)), e != p; p = e) ids[(*n)++] = (int32_t)v;
    free(s);
    return ids;
}

static void test_tokenize_cli_matches_runc(void **state)
{
    (void)state;
    TU_NEED_DATA(model_p, "models/stories260K.bin");
    TU_NEED_DATA(tok32k_p, "models/llama2c_tokenizer_32000.bin");
    char *model = strdup(model_p), *tok32k = strdup(tok32k_p); /* tu_data's buffers rotate */
    for (int c = 1; c <= 4; c++) {
        char rel[64], ids_rel[64], txt[4096];
        snprintf(rel, sizeof rel, "golden/tok_case%d.txt", c);
        if (!tu_data(rel)) continue;
        snprintf(txt, sizeof txt, "%s", tu_data(rel));
        for (int v = 0; v < 2; v++) {
            snprintf(ids_rel, sizeof ids_rel, "golden/tok_case%d.%s.ids", c, v ? "llama32000" : "tok512");
            size_t n_want;
            int32_t *want = read_ids_txt(tu_data(ids_rel), &n_want);
            const char *out = tu_tmp("tok.u16");
            int code;
            char *o = v ? run(&code, "%s tokenize --tokenizer '%s' --text '%s' --out '%s'", tu_cli(), tok32k, txt, out)
                        : run(&code, "%s tokenize '%s' --text '%s' --out '%s'", tu_cli(), model, txt, out);
            if (code) fail_msg("%s", o);
            free(o);
            int32_t *got;
            size_t n_got;
            TU_OK(wmat_read_tokens_u16(out, &got, &n_got));
            assert_int_equal(n_got, n_want);
            assert_memory_equal(got, want, n_want * sizeof *want);
            free(got);
            free(want);
        }
    }
    free(model);
    free(tok32k);
}

static void assert_same_tensors(const char *a, const char *b)
{
    wmat_model *ma, *mb;
    TU_OK(wmat_model_load(&ma, a, NULL));
    TU_OK(wmat_model_load(&mb, b, NULL));
    assert_int_equal(wmat_model_n_params(ma), wmat_model_n_params(mb));
    for (int i = 0; i < wmat_model_n_tensors(ma); i++) {
        wmat_tensor *t = wmat_model_tensor(ma, i), *u = wmat_model_find(mb, t->name);
        if (!u && !strcmp(t->name, "lm_head.weight")) u = wmat_model_classifier(mb);
        if (!u) fail_msg("%s: tensor %s missing in %s", a, t->name, b);
        assert_int_equal(t->nbytes, u->nbytes);
        if (memcmp(t->data, u->data, t->nbytes)) fail_msg("tensor %s differs between %s and %s", t->name, a, b);
    }
    wmat_model_free(ma);
    wmat_model_free(mb);
}

static void convert(const char *in, const char *out, const char *to, const char *dtype)
{
    int code;
    char *o = run(&code, "%s convert '%s' '%s' --to %s --dtype %s", tu_cli(), in, out, to, dtype);
    if (code) fail_msg("convert %s -> %s (%s %s) failed:\n%s", in, out, to, dtype, o);
    free(o);
}

/* Same tensors, byte for byte, in their stored types (no conversion). */
static int stored_tensors_equal(const char *a, const char *b)
{
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 0;
    wmat_model *ma, *mb;
    TU_OK(wmat_model_load(&ma, a, &lp));
    TU_OK(wmat_model_load(&mb, b, &lp));
    int eq = wmat_model_n_tensors(ma) == wmat_model_n_tensors(mb);
    for (int i = 0; eq && i < wmat_model_n_tensors(ma); i++) {
        wmat_tensor *t = wmat_model_tensor(ma, i), *u = wmat_model_find(mb, t->name);
        eq = u && t->dtype == u->dtype && t->nbytes == u->nbytes && !memcmp(t->data, u->data, t->nbytes);
    }
    wmat_model_free(ma);
    wmat_model_free(mb);
    return eq;
}

static int files_equal(const char *a, const char *b)
{
    char *x, *y;
    size_t nx, ny;
    TU_OK(wmat_read_file(a, &x, &nx));
    TU_OK(wmat_read_file(b, &y, &ny));
    int eq = nx == ny && !memcmp(x, y, nx);
    free(x);
    free(y);
    return eq;
}

/* quantize --to gguf refuses, before any calibration and naming the flag
 * that works, settings no GGUF type holds; the fixed command writes it. */
static int count(const char *s, const char *what)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, what)); p += strlen(what)) n++;
    return n;
}

/* wmat plot: points land where the axes say, curves go in x order, clipped
 * points are counted, labels are escaped, bad tables name their line and
 * leave no chart. */
static void test_plot_chart(void **state)
{
    (void)state;
    const char *w = tu_cli(), *tsv = tu_tmp("plot.tsv"), *svg = tu_tmp("plot.svg");
    FILE *f = fopen(tsv, "w");
    assert_non_null(f);
    /* x spans [0, 1] (the axis starts at 0), y over [20, 30] plus 5% pads */
    fprintf(f, "# comment\na<b\t1\t20\na<b\t0.5\t30\nref\t0\t25\nref\t0.25\t1000\n");
    fclose(f);
    remove(svg);
    expect_exit(0, "2 series", "%s plot %s %s --ymax 100 --dashed ref --title 'T&T'", w, tsv, svg);
    char cat[4200];
    snprintf(cat, sizeof cat, "cat '%s'", svg);
    int code;
    char *doc = tu_run(cat, &code);
    assert_int_equal(code, 0);
    assert_non_null(strstr(doc, ">a&lt;b</text>"));
    assert_non_null(strstr(doc, ">T&amp;T</text>"));
    assert_non_null(strstr(doc, "1 point above 100 not shown"));
    assert_int_equal(count(doc, "<circle"), 3);
    assert_int_equal(count(doc, "stroke-dasharray"), 1);
    /* plot box: x 60..620 over [0, 1]; y over [19.5, 30.5] from the legend's bottom (mt = 22 + 16 + 14 = 52) to 400 + 22 - 50 = 372 */
    const double py20 = 52 + (30.5 - 20) / 11.0 * 320, py30 = 52 + (30.5 - 30) / 11.0 * 320;
    char want[128];
    snprintf(want, sizeof want, "points=\"340.0,%.1f 620.0,%.1f \"", py30, py20);
    if (!strstr(doc, want)) fail_msg("chart lacks %s:\n%s", want, doc);
    free(doc);
    f = fopen(tsv, "w");
    fprintf(f, "a\t1\t2\nb\t1\tnan\n");
    fclose(f);
    remove(svg);
    expect_exit(1, "plot.tsv:2: X and Y must be finite", "%s plot %s %s", w, tsv, svg);
    f = fopen(svg, "rb");
    if (f) fclose(f);
    assert_null(f);
    f = fopen(tsv, "w");
    fprintf(f, "a 1 2\n");
    fclose(f);
    expect_exit(1, "plot.tsv:1: expected SERIES<TAB>X<TAB>Y", "%s plot %s %s", w, tsv, svg);
    expect_exit(2, "--ymax", "%s plot %s %s --ymax -1", w, tsv, svg);
}

static double children_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
           1e-6 * (double)ru.ru_stime.tv_usec;
}

static void test_quantize_gguf_fails_early(void **state)
{
    (void)state;
    TU_NEED_DATA(m, "models/mix4m.bin");
    TU_NEED_DATA(cal, "golden/tinystories_valid_head.tok512.u16");
    const char *w = tu_cli(), *out = tu_tmp("early.gguf");
    const double t0 = children_cpu();
    expect_exit(1, "use --sym", "%s quantize %s %s --method gptq --bits 4 --group 32 --calib %s --to gguf --threads 1", w, m, out,
                cal);
    expect_exit(1, "use --group 32", "%s quantize %s %s --method gptq --bits 4 --group 64 --sym --calib %s --to gguf --threads 1", w,
                m, out, cal);
    expect_exit(1, "use --bits 4 or --bits 8", "%s quantize %s %s --method rtn --bits 3 --group 32 --sym --to gguf", w, m, out);
    expect_exit(1, "--static-groups", "%s quantize %s %s --method gptq --bits 4 --group 32 --sym --act-order --calib %s --to gguf", w,
                m, out, cal);
    /* the calibration of mix4m takes seconds of CPU: four refusals take a
     * fraction of one (CPU time of the children, which a loaded machine
     * does not inflate as it does wall time) */
    const double dt = children_cpu() - t0;
    if (dt > 3.0) fail_msg("the refusals took %.2f s of CPU: the check does not run before calibration", dt);
    FILE *f = fopen(out, "rb");
    if (f) fclose(f);
    assert_null(f);
    expect_exit(0, "wrote", "%s quantize %s %s --method rtn --bits 4 --group 32 --sym --to gguf --quiet", w, m, out);
}

/* A packed output refuses, before calibration, a tensor whose width the
 * packed kind cannot hold (stories260K's down_proj: 172 inputs), and names
 * the ways out; one of them (another kind for that tensor) then writes. */
static void test_quantize_pack_width_fails_early(void **state)
{
    (void)state;
    TU_NEED_DATA(m, "models/stories260K.bin");
    TU_NEED_DATA(cal, "golden/tinystories_valid_head.tok512.u16");
    const char *w = tu_cli(), *out = tu_tmp("pack172");
    expect_exit(1, "172 inputs is not a multiple of 32", "%s quantize %s %s --method gptq --bits 3 --calib %s --calib-tokens 4096 --threads 1",
                w, m, out, cal);
    FILE *f = fopen(out, "rb");
    if (f) fclose(f);
    assert_null(f);
    expect_exit(0, "wrote", "%s quantize %s %s --method gptq --bits 3 --calib %s --calib-tokens 4096 --threads 1 --keep down_proj",
                w, m, out, cal);
}

/* A packed model converts to dense llama2.c and HF files (dequantized, with
 * a note) that score exactly as the packed model does. */
static void test_convert_dequantizes_packed(void **state)
{
    (void)state;
    TU_NEED_DATA(m, "models/mix4m.bin");
    TU_NEED_DATA(tok, "golden/wikitext2_valid_tokenized.tok512.u16");
    const char *w = tu_cli();
    char q[1024], bin[1024], hf[1024];
    snprintf(q, sizeof q, "%s", tu_tmp("packed4"));
    snprintf(bin, sizeof bin, "%s", tu_tmp("deq.bin"));
    snprintf(hf, sizeof hf, "%s", tu_tmp("deq-hf"));
    expect_exit(0, "wrote", "%s quantize %s %s --method rtn --bits 4 --quiet", w, m, q);
    expect_exit(0, "dequantizing 42 packed", "%s convert %s %s --to llama2c", w, q, bin);
    expect_exit(0, "dequantizing 42 packed", "%s convert %s %s --to hf", w, q, hf);
    double ppl[3];
    const char *paths[3] = {q, bin, hf};
    for (int i = 0; i < 3; i++) {
        int code = 0;
        char *out = run_stdout(&code, "%s eval %s --tokens %s --max-windows 4 --json", w, paths[i], tok);
        assert_int_equal(code, 0);
        ppl[i] = json_num(out, "ppl");
        free(out);
    }
    if (!(ppl[0] > 1 && ppl[0] < 100)) fail_msg("packed model perplexity %g", ppl[0]);
    TU_ASSERT_BELOW(fabs(ppl[1] - ppl[0]), 1e-9 + 1e-6 * ppl[0]);
    TU_ASSERT_BELOW(fabs(ppl[2] - ppl[0]), 1e-9 + 1e-6 * ppl[0]);
    /* a model without a tokenizer (this HF directory has none) is not
     * written as a GGUF llama.cpp would refuse, unless asked */
    const char *hfdir = tu_data("models/mix4m-hf");
    if (hfdir) {
        const char *g = tu_tmp("notok.gguf");
        expect_exit(1, "--no-tokenizer", "%s convert %s %s --to gguf", w, hfdir, g);
        FILE *f = fopen(g, "rb");
        if (f) fclose(f);
        assert_null(f);
        expect_exit(0, "wrote", "%s convert %s %s --to gguf --no-tokenizer", w, hfdir, g);
    }
}

static void test_convert_roundtrips(void **state)
{
    (void)state;
    const char *models[] = {"models/stories260K.bin", "models/mix4m.bin"};
    for (int i = 0; i < 2; i++) {
        const char *src = tu_data(models[i]);
        if (!src) continue;
        /* f32: llama2c -> gguf -> hf -> llama2c, every tensor bit-exact */
        convert(src, tu_tmp("a.gguf"), "gguf", "f32");
        convert(tu_tmp("a.gguf"), tu_tmp("b-hf"), "hf", "f32");
        convert(tu_tmp("b-hf"), tu_tmp("c.bin"), "llama2c", "f32");
        assert_same_tensors(src, tu_tmp("c.bin"));
        convert(src, tu_tmp("d.bin"), "llama2c", "f32");
        assert_true(files_equal(tu_tmp("c.bin"), tu_tmp("d.bin")));
        /* q8_0 / q4_0: quantizing again what was dequantized reproduces the
         * same blocks (ggml's reference rounding is idempotent) */
        const char *types[] = {"q8_0", "q4_0", "f16"};
        for (int t = 0; t < 3; t++) {
            convert(src, tu_tmp("q1.gguf"), "gguf", types[t]);
            convert(tu_tmp("q1.gguf"), tu_tmp("q2.gguf"), "gguf", types[t]);
            if (!stored_tensors_equal(tu_tmp("q1.gguf"), tu_tmp("q2.gguf")))
                fail_msg("%s: %s round trip differs", src, types[t]);
        }
        print_message("%s: f32 chain exact, q8_0/q4_0/f16 idempotent\n", models[i]);
    }
    /* a model that cannot be written as asked: clear error, no output */
    TU_NEED_DATA(src, "models/stories260K.bin");
    int code;
    char *o = run(&code, "%s convert '%s' '%s' --to llama2c --dtype q8_0", tu_cli(), src, tu_tmp("bad.bin"));
    assert_int_equal(code, 1);
    assert_non_null(strstr(o, "f32 weights only"));
    free(o);
    FILE *f = fopen(tu_tmp("bad.bin"), "rb");
    assert_null(f);
}

/* wmat's greedy tokens after a prompt, with the margin between the best
 * and second-best logit of each choice. */
static int wmat_greedy_ids(const char *model, const char *prompt, int n, int32_t *out, float *margin)
{
    wmat_model *m;
    TU_OK(wmat_model_load(&m, model, NULL));
    const wmat_config *c = wmat_model_config(m);
    int32_t *ids;
    size_t np;
    TU_OK(wmat_tokenizer_encode(wmat_model_tokenizer(m), prompt, strlen(prompt), 1, 0, &ids, &np));
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = 1;
    rp.kv_cache_len = (int)np + n;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    float *lg = malloc((size_t)c->vocab_size * 4);
    int32_t tok = ids[0];
    int k = 0;
    for (int pos = 0; k < n; pos++) {
        TU_OK(wmat_decode(rt, tok, pos, lg));
        if ((size_t)pos + 1 < np) {
            tok = ids[pos + 1];
            continue;
        }
        int b = 0, s = -1;
        for (int i = 1; i < c->vocab_size; i++)
            if (lg[i] > lg[b]) b = i;
        for (int i = 0; i < c->vocab_size; i++)
            if (i != b && (s < 0 || lg[i] > lg[s])) s = i;
        out[k] = b;
        margin[k++] = lg[b] - lg[s];
        tok = b;
        if (b == c->eos_id || b == c->bos_id) break;
    }
    free(lg);
    free(ids);
    wmat_runtime_free(rt);
    wmat_model_free(m);
    return k;
}

/* llama.cpp continues prompts on GGUF files wmat wrote exactly as wmat does,
 * token for token, up to the first choice that is a near-tie in wmat's own
 * logits (margin < 0.05): there llama.cpp's different summation order and
 * RoPE may legitimately pick the other token (tests/test_model.c shows wmat
 * agrees with run.c's algorithm at such points). */
static void test_llamacpp_continues_like_wmat(void **state)
{
    (void)state;
    char dir[1024];
    const char *why = NULL;
    if (!llamacpp_script(dir, sizeof dir, &why)) {
        print_message("SKIP: %s\n", why);
        skip();
        return;
    }
    struct {
        const char *model, *prompt, *dtype;
    } cases[] = {{"models/stories260K.bin", "Once upon a time", "f32"},
                 {"models/stories260K.bin", "The little dog", "f32"},
                 {"models/mix4m.bin", "And God said", "f32"},
                 {"models/mix4m.bin", "Once upon a time", "f32"},
                 {"models/mix4m.bin", "The king", "f32"},
                 {"models/mix4m.bin", "And God said", "f16"}};
    enum { N = 64 };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *src = tu_data(cases[i].model);
        if (!src) continue;
        const char *gguf = tu_tmp("peer.gguf");
        convert(src, gguf, "gguf", cases[i].dtype);
        llamacpp_result r;
        int rc = llamacpp_greedy(gguf, cases[i].prompt, N, &r, &why);
        if (rc) fail_msg("llama.cpp failed on %s:\n%s", gguf, r.raw ? r.raw : why);
        int32_t mine[N];
        float margin[N];
        int n = wmat_greedy_ids(gguf, cases[i].prompt, N, mine, margin);
        int k = 0;
        while (k < n && k < (int)r.n_tokens && margin[k] >= 0.05f) {
            if (mine[k] != r.tokens[k])
                fail_msg("%s (%s) '%s': token %d: wmat %d (margin %.3f), llama.cpp %d", cases[i].model, cases[i].dtype,
                         cases[i].prompt, k, mine[k], margin[k], r.tokens[k]);
            k++;
        }
        print_message("%s as %s GGUF, '%s': llama.cpp and wmat agree on %d tokens%s (\"%.40s...\")\n", cases[i].model,
                      cases[i].dtype, cases[i].prompt, k, k < n && k < (int)r.n_tokens ? " up to a near-tie" : "", r.text);
        assert_true(k >= 16);
        llamacpp_result_free(&r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_info_is_fast_on_every_model),
        cmocka_unit_test(test_eval_cli_matches_reference),
        cmocka_unit_test(test_common_spellings_offered),
        cmocka_unit_test(test_common_spellings_work),
        cmocka_unit_test(test_common_spellings_train),
        cmocka_unit_test(test_tokenize_cli_matches_runc),
        cmocka_unit_test(test_convert_roundtrips),
        cmocka_unit_test(test_convert_dequantizes_packed),
        cmocka_unit_test(test_quantize_gguf_fails_early),
        cmocka_unit_test(test_quantize_pack_width_fails_early),
        cmocka_unit_test(test_plot_chart),
        cmocka_unit_test(test_llamacpp_continues_like_wmat),
    };
    return tu_run_tests("cli", tests, NULL, NULL);
}
