/* wmat: the command line. */
#include "cli.h"
#include "cli_mpi.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Filled from the method registry at start-up (method_summaries). */
static char g_quantize_summary[384], g_decompose_summary[384];

const cli_command g_commands[] = {
    {"info", "Show a model's architecture and every tensor (name, shape, dtype, bytes).", "MODEL [options]", cmd_info},
    {"eval", "Perplexity of a text or token stream: windows of ctx+1 tokens overlapping by one, each from an empty cache "
     "(--protocol llama.cpp: scored as llama-perplexity scores).",
     "MODEL (--text FILE | --tokens FILE | --eval FILE) [options]", cmd_eval},
    {"generate", "Continue a prompt (greedy with --temp 0).", "(MODEL | -m MODEL) [-p TEXT] [-n N] [options]", cmd_generate},
    {"tokenize", "Encode a text file as llama2.c does and write little-endian uint16 ids.",
     "[MODEL | --tokenizer FILE] --text FILE --out FILE [options]", cmd_tokenize},
    {"convert", "Write a model in another format or weight type (atomic output).",
     "IN OUT --to llama2c|gguf|hf [--dtype f32|f16|bf16|q8_0|q4_0|q4_k|q6_k|...] [options]", cmd_convert},
    {"sysinfo", "CPU features, math libraries and kernels in use, and GEMM / memory speed measured now.", "[options]",
     cmd_sysinfo},
    {"analyze", "Spectra, outliers, low-rank-ness, fine-tuning fingerprints and head circuits of every matrix.", "MODEL [--base BASE] [--csv F] [--json-out F] [--html F] [options]", cmd_analyze},
    {"quantize", g_quantize_summary, "MODEL OUT --method M --bits B [options]", cmd_quantize},
    {"decompose", g_decompose_summary, "MODEL OUT [--method M] [method keys] [options]", cmd_decompose},
    {"train", "Train: full fine-tuning, LoRA or GaLore, or a new model from a config (--init), dense or as SLTrain's sparse + low-rank layers; loss curve CSV + SVG.", "MODEL OUT --data FILE [--eval FILE] [--method full|lora|galore|sltrain] [options] | --init CONFIG OUT --data FILE", cmd_train},
    {"methods", "The registered quantization and decomposition methods: keys, defaults, ranges, needs, kinds.",
     "[--family F] [--json]", cmd_methods},
    {"merge", "Merge fine-tunes of one base (task arithmetic, TIES, DARE, SLERP, OPCM, average), streamed, any format in and out.", "(CONFIG.yaml | --method M [--base B] MODEL...) OUT [options]", cmd_merge},
    {"signature", "Weight signatures: extract a fine-tune's delta (full or its top-r singular part per matrix), apply, compose, info.",
     "(extract FT BASE OUT [--rank R] [--layers LIST] [--against CLEAN_FT] | apply BASE SIG OUT [--alpha A] | compose BASE SIG... OUT [--alphas A1,...] | info SIG) [options]",
     cmd_signature},
    {"adapter", "PEFT adapters: describe one, or merge adapters into a base and write it (generate/eval take --adapter DIR).",
     "(info DIR | merge BASE DIR... OUT [--to FMT] [--dtype T]) [options]", cmd_adapter},
    {"align", "Weight matching: permute B's channels and heads to match A (git re-basin); loss along the linear path before and after.", "A B OUT [--lmc-text FILE [--report lmc.svg]] [options]", cmd_align},
    {"experiment", "Run a measured study of a paper's claim (a table; CSV, JSON, SVG chart); without NAME, list them.",
     "NAME [experiment keys] [--csv F] [--svg F] [--json | --json-out F] [--seed N] [options]", cmd_experiment},
    {"plot", "Draw a line chart (SVG) of a table of points: lines SERIES<TAB>X<TAB>Y (the docs' size-quality curves).",
     "TABLE.tsv OUT.svg [--xlabel T] [--ylabel T] [--title T] [--ymax Y] [--dashed NAMES]", cmd_plot},
    {NULL, NULL, NULL, NULL},
};

const cli_command *cli_find_command(const char *name)
{
    for (const cli_command *c = g_commands; c->name; c++)
        if (!strcmp(c->name, name)) return c;
    return NULL;
}

static void method_summaries(void)
{
    char names[192];
    cli_method_names(WMAT_FAMILY_QUANTIZATION, ", ", 0, names, sizeof names);
    snprintf(g_quantize_summary, sizeof g_quantize_summary,
             "Post-training quantization (%s) with calibration; per-tensor report.", names);
    cli_method_names(WMAT_FAMILY_DECOMPOSITION, ", ", 1, names, sizeof names);
    snprintf(g_decompose_summary, sizeof g_decompose_summary,
             "Factor linear weights into structured kinds (%s) that run as stored.", names);
}

static void usage(FILE *f)
{
    fprintf(f, "wmat %s: load, run, measure and transform the weight matrices of LLaMA-family models\n\n", WMAT_VERSION);
    fprintf(f, "usage: wmat COMMAND [ARGS] [--threads N] [--help]\n\ncommands:\n");
    for (const cli_command *c = g_commands; c->name; c++) fprintf(f, "  %-10s %s\n", c->name, c->summary);
    fprintf(f, "\nMODEL is a llama2.c .bin (tokenizer found beside it or given with --tokenizer),\n"
               "a .gguf file, or a Hugging Face directory (config.json + safetensors).\n"
               "'wmat COMMAND --help' describes a command.\n");
}

/* --threads N anywhere on the line, read before the command parses its
 * options, so the math libraries start with the right thread count. */
static int prescan_threads(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "--threads=", 10)) return atoi(argv[i] + 10);
        if ((!strcmp(argv[i], "--threads") || !strcmp(argv[i], "-t")) && i + 1 < argc) return atoi(argv[i + 1]);
    }
    return 0;
}

/* Threads when neither --threads nor OMP_NUM_THREADS says: the cores that
 * other processes are not using now. OpenMP teams spin while they wait, so
 * a team as large as the machine on a machine that is already busy makes
 * every barrier wait for a descheduled thread: measured on 2 cores with
 * other work running, generate fell from 246 tok/s with one thread to 12
 * with two (docs/BENCHMARKS.md, "Threads under load"). Runnable tasks are
 * sampled from /proc/loadavg (its fourth field counts them, this process
 * included) five times over ~20 ms and the median taken; on a quiet machine
 * this is every core, as before. */
static int default_threads(int *others_out)
{
    cpu_set_t set;
    int n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    int r[5], k = 0;
    for (int i = 0; i < 5; i++) {
        FILE *f = fopen("/proc/loadavg", "r");
        int running = 0, total = 0;
        double a, b, c;
        if (f && fscanf(f, "%lf %lf %lf %d/%d", &a, &b, &c, &running, &total) == 5) r[k++] = running - 1;
        if (f) fclose(f);
        if (i < 4) usleep(5000);
    }
    int others = 0;
    if (k) {
        for (int i = 1; i < k; i++) /* insertion sort of at most 5 */
            for (int j = i; j > 0 && r[j] < r[j - 1]; j--) {
                int t = r[j];
                r[j] = r[j - 1];
                r[j - 1] = t;
            }
        others = r[k / 2] > 0 ? r[k / 2] : 0;
    }
    *others_out = others;
    return n - others >= 1 ? n - others : 1;
}

int main(int argc, char **argv)
{
    method_summaries();
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("wmat %s\n", WMAT_VERSION);
        return 0;
    }
    const cli_command *cmd = cli_find_command(argv[1]);
    if (!cmd) {
        fprintf(stderr, "wmat: unknown command '%s'\n\n", argv[1]);
        usage(stderr);
        return 2;
    }
    /* May re-execute the program once with OPENBLAS_CORETYPE set (never when
     * the user set it or passed --no-blas-tune). */
    wmat_blas_tune_reexec(argc, argv);
    cli_signals_install(); /* before the math libraries start threads (cli.c) */
    /* Commands that only read and write files skip the math libraries'
     * start-up (the GEMM self-checks cost ~0.1 s): `wmat info` stays instant. */
    static const char *const no_math[] = {"info", "tokenize", "convert", "methods", NULL};
    int needs_math = 1;
    for (int i = 0; no_math[i]; i++)
        if (!strcmp(argv[1], no_math[i])) needs_math = 0;
    int threads = prescan_threads(argc, argv);
    if (threads <= 0 && needs_math && !getenv("OMP_NUM_THREADS")) {
        int others;
        threads = default_threads(&others);
        g_cli.threads = threads; /* --threads, parsed later, still wins */
        g_cli.busy = others;
    }
    if (needs_math && wmat_linalg_init(threads > 0 ? threads : 0) != WMAT_OK)
        fprintf(stderr, "wmat: warning: %s\n", wmat_last_error());
    int rc = cli_mpi_begin(argv[1]); /* under mpirun: train and quantize run data-parallel */
    if (rc) return rc;
    rc = cmd->run(argc - 1, argv + 1);
    if (cli_interrupted) {
        fflush(stdout);
        fprintf(stderr, "\nwmat %s: interrupted\n", argv[1]);
        return cli_mpi_end(argv[1], 130);
    }
    return cli_mpi_end(argv[1], rc);
}
