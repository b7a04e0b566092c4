/* merge: combine models fine-tuned from one base (src/merge, docs/MERGING.md),
 * from a mergekit-style YAML config or from flags; a line per tensor on
 * stderr with the ETA and what changed. Method names and keys come from
 * the method table. */
#include "cli.h"
#include "merge/merge.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    double t0;
    int quiet;
    FILE *csv;
} progress_state;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void on_tensor(void *user, const wmat_merge_tensor_report *r, int i, int n)
{
    progress_state *ps = user;
    /* by elements, not tensors: the first tensor (the embedding) is often the largest */
    const double el = now_s() - ps->t0, f = r->done_share, eta = f > 0 ? el / f * (1 - f) : 0;
    if (!ps->quiet)
        fprintf(stderr, "[%3d/%d] %-44s |delta| %9.4g (%6.2f%% of |ref|)  trimmed %5.1f%%  sign conflicts %5.1f%%%s  ETA %.1fs\n",
                i, n, r->name, r->delta_norm, r->base_norm > 0 ? 100 * r->delta_norm / r->base_norm : 0, 100 * r->trimmed,
                100 * r->sign_conflicts, r->slerp_linear ? "  (linear)" : "", eta);
    if (ps->csv)
        fprintf(ps->csv, "%s,%lld,%.9g,%.9g,%.6f,%.6f,%d,%.6f,%.6f,%.6f\n", r->name, (long long)r->nelem, r->delta_norm,
                r->base_norm, r->trimmed, r->sign_conflicts, r->slerp_linear, r->seconds, r->read_seconds, r->kernel_seconds);
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* "0.5,0.5" into one value per model. */
static int per_model_list(const char *text, const char *flag, wmat_merge_model *mm, int n, int density)
{
    char *dup = strdup(text), *save = NULL;
    int i = 0;
    for (char *tok = strtok_r(dup, ",", &save); tok; tok = strtok_r(NULL, ",", &save), i++) {
        char *end;
        double v = strtod(tok, &end);
        if (*end || end == tok || i >= n) {
            free(dup);
            return cli_usage_error("merge", "%s takes one number per model (%d), comma-separated (got '%s')", flag, n, text);
        }
        wmat_mvalue *dst = density ? &mm[i].density : &mm[i].weight;
        dst->n = 1;
        dst->v[0] = v;
    }
    free(dup);
    if (i != n) return cli_usage_error("merge", "%s takes one number per model (%d), got %d", flag, n, i);
    return 0;
}

static char *methods_help(void)
{
    size_t cap = 2048, k = 0;
    char *h = malloc(cap);
    if (!h) return NULL;
    k += (size_t)snprintf(h + k, cap - k, "methods (--method, or merge_method in the config):\n");
    for (const wmat_merge_method *m = wmat__merge_methods; m->name && k < cap; m++) {
        k += (size_t)snprintf(h + k, cap - k, "  %-16s %s%s\n                   keys:", m->name, m->summary,
                              m->base ? " (needs --base)" : "");
        for (const wmat_param_spec *p = m->schema; p->name && k < cap; p++)
            k += (size_t)snprintf(h + k, cap - k, " %s", p->name);
        if (k < cap) k += (size_t)snprintf(h + k, cap - k, "\n");
    }
    if (k < cap)
        snprintf(h + k, cap - k,
                 "\nCONFIG.yaml: mergekit's merge_method, base_model, models (model, parameters: weight, density),\n"
                 "parameters (the keys above; a number may be a list interpolated across layers), dtype or\n"
                 "out_dtype (float32, float16, bfloat16), tokenizer_source (base or a model's path). docs/MERGING.md.\n");
    return h;
}

/* The merge's OpenMP threads meet at a barrier after every pass of every
 * tensor (~600 on a 1.1B model); with libgomp's default wait policy a
 * thread that arrives first spins there (up to ~3 ms each time) while the
 * other runs or waits for the CPU, which on a loaded machine inflated the
 * two-thread merge's user time by 3-5 s of ~13 (docs/MERGING.md). libgomp
 * reads OMP_WAIT_POLICY once, when it loads, before main: setting it here
 * would change nothing, so the program runs itself again with
 * OMP_WAIT_POLICY=passive (threads sleep at once) unless the user set it
 * or GOMP_SPINCOUNT. Only for merge: the other commands keep the default. */
static void merge_passive_reexec(int argc, char **argv)
{
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    char **args = malloc(((size_t)argc + 2) * sizeof *args);
    if (!args) return;
    args[0] = (char *)"wmat";
    for (int i = 0; i < argc; i++) args[i + 1] = argv[i]; /* argv[0] is "merge" */
    args[argc + 1] = NULL;
    if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0) {
        free(args);
        return;
    }
    fflush(NULL);
    execv("/proc/self/exe", args);
    /* could not: go on with the default policy */
    unsetenv("OMP_WAIT_POLICY");
    free(args);
}

/* WMAT_MERGE_TUNE=no_direct,no_populate,pass_a_buffers: the alternatives the
 * measurements in docs/MERGING.md compare against, in the same binary. */
static void merge_tune(wmat_merge_spec *s)
{
    const char *t = getenv("WMAT_MERGE_TUNE");
    if (!t) return;
    if (strstr(t, "no_direct")) s->no_direct = 1;
    if (strstr(t, "no_populate")) s->no_populate = 1;
    if (strstr(t, "pass_a_buffers")) s->pass_a_buffers = 1;
}

int cmd_merge(int argc, char **argv)
{
    merge_passive_reexec(argc, argv);
    const cli_command *cmd = cli_find_command("merge");
    const char *method = NULL, *base = NULL, *weights = NULL, *densities = NULL, *dtype = NULL, *to = NULL, *tok_src = NULL,
               *csv = NULL;
    int quiet = 0, sequential = 0;
    cli_opt opts[] = {
        {"--method", OPT_STR, &method, "M", "merge method (see below)"},
        {"--base", OPT_STR, &base, "MODEL", "the model the others were fine-tuned from"},
        {"--weights", OPT_STR, &weights, "W1,W2,...", "one weight per model (else --weight for all)"},
        {"--densities", OPT_STR, &densities, "D1,D2,...", "one density per model (else --density for all)"},
        {"--dtype", OPT_STR, &dtype, "T", "output weights: f32 (default), f16, bf16; gguf also q8_0, q4_0, q4_1, q5_0, q5_1, q2_k..q6_k, iq4_nl, iq4_xs"},
        {"--to", OPT_STR, &to, "FMT", "output format llama2c|gguf|hf (default by extension: .gguf, .bin, else hf)"},
        {"--tokenizer-source", OPT_STR, &tok_src, "SRC", "base (default) or a model's path"},
        {"--csv", OPT_STR, &csv, "FILE", "per-tensor summary as CSV"},
        {"--quiet", OPT_FLAG, &quiet, NULL, "no line per tensor"},
        {"--sequential", OPT_FLAG, &sequential, NULL, "no read-ahead, TIES in separate passes (the reference path: same bytes, slower)"},
        {NULL, 0, NULL, NULL, NULL},
    };
    wmat_param_spec keys[32];
    wmat_pset ps;
    if (wmat__merge_keys(keys, 32) || wmat__pset_init(&ps, keys)) return cli_fail("merge");
    char *mhelp = methods_help();
    const char *pos[66];
    int np = 0, rc = cli_parse_params(cmd, argc, argv, opts, &ps, "method parameters (all models)", mhelp, pos, 2, 66, &np);
    free(mhelp);
    if (rc) {
        wmat__pset_free(&ps);
        return rc == 1 ? 0 : rc;
    }
    wmat_merge_config cfg;
    memset(&cfg, 0, sizeof cfg);
    wmat_merge_model models[64];
    memset(models, 0, sizeof models);
    wmat_merge_spec *s = &cfg.spec;
    const char *out = pos[np - 1];
    int from_yaml = np == 2 && (ends_with(pos[0], ".yaml") || ends_with(pos[0], ".yml"));
    rc = 2;
    if (from_yaml) {
        if (method || base || weights || densities)
            return wmat__pset_free(&ps), cli_usage_error("merge", "a config names the method and models; drop --method/--base/--weights/--densities");
        char *text = NULL;
        size_t len = 0;
        if (wmat_read_file(pos[0], &text, &len) || wmat__merge_config_parse(&cfg, text, len, pos[0])) {
            free(text);
            wmat__merge_config_free(&cfg);
            wmat__pset_free(&ps);
            return cli_fail("merge");
        }
        free(text);
    } else {
        if (!method) {
            wmat__pset_free(&ps);
            return cli_usage_error("merge", "give CONFIG.yaml OUT, or --method M [--base B] MODEL... OUT");
        }
        if (np - 1 > 64) return wmat__pset_free(&ps), cli_usage_error("merge", "at most 64 models");
        s->normalize = -1;
        s->out_dtype = WMAT_F32;
        s->method = method;
        s->base = base;
        s->n_models = np - 1;
        for (int i = 0; i < np - 1; i++) models[i].path = pos[i];
        s->models = models;
        if (weights && per_model_list(weights, "--weights", models, np - 1, 0)) goto out;
        if (densities && per_model_list(densities, "--densities", models, np - 1, 1)) goto out;
    }
    /* flags apply over the config's values */
    struct {
        const char *key;
        wmat_mvalue *dst;
    } nums[] = {{"weight", &s->weight}, {"density", &s->density}, {"lambda", &s->lambda}, {"t", &s->t},
                {"dot_threshold", &s->dot_threshold}, {"alpha", &s->alpha}};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++)
        if (wmat__pset_is_set(&ps, nums[i].key)) {
            nums[i].dst->n = 1;
            nums[i].dst->v[0] = wmat__pset_float(&ps, nums[i].key);
        }
    if (wmat__pset_is_set(&ps, "normalize")) s->normalize = (int)wmat__pset_int(&ps, "normalize");
    if (wmat__pset_is_set(&ps, "seed")) s->seed = (uint64_t)wmat__pset_int(&ps, "seed");
    if (wmat__pset_is_set(&ps, "shuffle")) s->shuffle = (int)wmat__pset_int(&ps, "shuffle");
    if (dtype) {
        int dt = wmat_dtype_from_name(dtype);
        if (dt < 0) {
            cli_usage_error("merge", "unknown --dtype '%s'", dtype);
            goto out;
        }
        s->out_dtype = (wmat_dtype)dt;
    }
    s->out_format = WMAT_FMT_UNKNOWN;
    if (to) {
        s->out_format = wmat_format_from_name(to);
        if (s->out_format == WMAT_FMT_UNKNOWN) {
            cli_usage_error("merge", "unknown --to '%s' (llama2c, gguf, hf)", to);
            goto out;
        }
    }
    if (tok_src) s->tokenizer_source = tok_src;
    wmat_context ctx = wmat_context_default();
    ctx.n_threads = g_cli.threads;
    ctx.progress = cli_cancel_check; /* on_tensor prints; this only stops on Ctrl-C */
    s->ctx = &ctx;
    progress_state st = {now_s(), quiet, NULL};
    if (csv) {
        st.csv = fopen(csv, "w");
        if (!st.csv) {
            cli_usage_error("merge", "cannot write %s", csv);
            goto out;
        }
        fprintf(st.csv, "tensor,nelem,delta_norm,ref_norm,trimmed,sign_conflicts,slerp_linear,seconds,read_seconds,kernel_seconds\n");
    }
    s->on_tensor = on_tensor;
    s->sequential = sequential;
    merge_tune(s);
    s->user = &st;
    wmat_merge_report rep;
    rc = wmat__merge_run(s, out, &rep);
    if (st.csv) fclose(st.csv);
    if (rc) {
        rc = cli_fail("merge");
        goto out;
    }
    char b1[32], b2[32], b3[32];
    printf("merged %d tensors (%s) in %.2f s: read %s, peak RSS %s, largest tensor %s (fp32)\n", rep.n_tensors, s->method,
           rep.seconds, cli_bytes((double)rep.bytes_read, b1, sizeof b1), cli_bytes((double)rep.peak_rss, b2, sizeof b2),
           cli_bytes((double)rep.largest_tensor, b3, sizeof b3));
    printf("time: inputs %.2f s, merging %.2f s, writer %.2f s (summed over the tensors; the inputs' time includes "
           "waiting for the disk)\n",
           rep.read_seconds, rep.kernel_seconds, rep.write_seconds);
    if (rep.streamed_tensors || rep.populated || rep.direct_bytes)
        printf("streamed %d of %d tensors from the stored inputs; %s read directly (O_DIRECT); read-ahead mapped %d "
               "tensors ahead; OpenMP wait policy %s\n",
               rep.streamed_tensors, rep.n_tensors, cli_bytes((double)rep.direct_bytes, b1, sizeof b1), rep.populated,
               getenv("OMP_WAIT_POLICY") ? getenv("OMP_WAIT_POLICY") : "default");
    if (rep.stage_cpu[0] + rep.stage_cpu[1] + rep.stage_cpu[2] > 0)
        printf("cpu (merging thread): fill %.2f s, of it ties passes: task vectors + histogram %.2f s, threshold %.2f s, "
               "trim/elect/mean %.2f s (with --threads 1 these are the merge's whole CPU time)\n",
               rep.fill_cpu, rep.stage_cpu[0], rep.stage_cpu[1], rep.stage_cpu[2]);
    if (rep.stage_cpu[0] + rep.stage_cpu[1] + rep.stage_cpu[2] > 0)
        printf("  of which system time %.2f / %.2f / %.2f s; page faults (minor, major) %ld, %ld / %ld, %ld / %ld, %ld\n",
               rep.stage_sys[0], rep.stage_sys[1], rep.stage_sys[2], rep.stage_minflt[0], rep.stage_majflt[0],
               rep.stage_minflt[1], rep.stage_majflt[1], rep.stage_minflt[2], rep.stage_majflt[2]);
    if (s->shuffle) {
        printf("order:");
        for (int i = 0; i < s->n_models; i++) printf(" %s", s->models[rep.order[i]].path);
        printf("\n");
    }
    printf("wrote %s\n", out);
    wmat__merge_report_free(&rep);
    rc = 0;
out:
    wmat__merge_config_free(&cfg);
    wmat__pset_free(&ps);
    return rc;
}
