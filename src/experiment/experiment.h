/* Experiments: measured studies that answer a paper's claim with a table
 * (`wmat experiment NAME`), registered as the method catalogue's family
 * "experiment" (core/method.h), so listing, help, flags and checks come
 * from each row's parameter schema like any other method's. A row adds a
 * run function that fills a wmat_table, and `smoke`: settings small enough
 * for tests/test_experiment.c to run every entry in seconds.
 *
 * Adding one: a file exp_<name>.c defining a const wmat_experiment and one
 * line in the table of experiment.c. The module sits above train, analyze
 * and merge (an experiment may train, analyze or merge) and below the
 * catalogue. */
#ifndef WMAT_EXPERIMENT_H
#define WMAT_EXPERIMENT_H

#include "core/method.h"
#include "wmat.h"

typedef struct {
    const wmat_context *ctx;     /* threads, progress; never NULL here */
    uint64_t seed;
} wmat_exp_env;

typedef int (*wmat_exp_fn)(const wmat_pset *ps, const wmat_exp_env *env, wmat_table *out);

typedef struct {
    WMAT_METHOD_ROW;
    wmat_exp_fn run;
    const char *smoke; /* "key=value;..." that runs in a few seconds (tests) */
} wmat_experiment;

/* The table, ended by a row with name == NULL. */
extern const wmat_experiment *const wmat__experiments[];
const wmat_experiment *wmat__experiment_find(const char *name);

/* ---- building a table (the functions set wmat's error on failure) */
/* Columns from a '|'-separated list ("depth|width|measured|predicted"). */
int wmat__table_init(wmat_table *t, const char *title, const char *cols);
/* One row: its series label (copied) and ncols values. */
int wmat__table_add(wmat_table *t, const char *series, const double *v);
/* The chart: y against x (column names), one line per series. */
int wmat__table_chart(wmat_table *t, const char *x, const char *y, int log_x, int log_y);
int wmat__table_note(wmat_table *t, const char *fmt, ...);

/* ---- helpers of the experiments that train small models */
/* The schema rows of their text: "data", a UTF-8 file (default Tiny
 * Shakespeare) or "synthetic", and "max_bytes", how much of it (default
 * `bytes`, a string as in a schema). */
#define WMAT_EXP_TEXT_KEYS(bytes)                                                                                      \
    {"data", WMAT_PARAM_STRING, "../shared/data/text/tinyshakespeare.txt", 0, 0, NULL,                                 \
     "UTF-8 text to train on (its bytes as tokens; the last 10% held out), or 'synthetic' for a generated stream",     \
     NULL},                                                                                                            \
    {"max_bytes", WMAT_PARAM_INT, bytes, 1000, 1 << 30, NULL, "bytes of the text read from its start", NULL}
/* An experiment's own generated text: at most cap bytes into buf, from
 * seed; returns how many. */
typedef size_t (*wmat_exp_synth_fn)(char *buf, size_t cap, uint64_t seed);
/* Those keys' text as byte-level ids (byte + 3: wmat_tokenizer_bytes's),
 * into *ids (malloc'd) and *n: the first max_bytes bytes of the file, or of
 * synth's text from seed for "synthetic". lead_space: a space's id first
 * (as wmat_tokenizer_encode starts a text; the memoryformer experiment's
 * streams do). who: the experiment, for errors. */
int wmat__exp_byte_tokens(const wmat_pset *ps, const char *who, wmat_exp_synth_fn synth, uint64_t seed, int lead_space,
                          int32_t **ids, size_t *n);

/* Over seeds: the mean, the sample sd (0 for one value), min and max of
 * x[0], x[stride], ..., x[(n - 1) stride], summed in that order. */
typedef struct {
    double mean, sd, min, max;
} wmat_exp_stats;
wmat_exp_stats wmat__exp_stats(const double *x, int n, size_t stride);

/* The small model the from-scratch experiments train: byte vocabulary
 * (259 ids, wmat_tokenizer_bytes), tied embeddings, n_kv_heads = heads. */
void wmat__exp_byte_config(wmat_config *c, int dim, int hidden, int layers, int heads, int ctx);
/* Their shared schedule: AdamW at lr, warm-up steps/10 then cosine to
 * lr/10, weight decay 0.1, clip 1, shuffled windows; method full (the
 * caller sets an adapter). ec outlives the trainer. */
wmat_train_params wmat__exp_train_params(const wmat_context *ec, int batch, int ctx, int steps, float lr,
                                         uint64_t seed);
/* Train t for `steps` steps; at every eval_every-th step and the last, a
 * checkpoint j: train_l[j] the mean training loss since the previous one,
 * held_l[j] the held-out loss on up to eval_windows windows of ctx tokens
 * of held, tokps[j] training tokens per second of the steps so far. who:
 * the experiment, for errors. */
int wmat__exp_train_curve(wmat_trainer *t, int steps, int eval_every, const int32_t *held, size_t n_held, int ctx,
                          int eval_windows, const char *who, double *train_l, double *held_l, double *tokps);

#endif
