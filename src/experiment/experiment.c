/* The experiment registry, its runner and the result table (experiment.h). */
#include "experiment.h"
#include "core/internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const wmat_experiment wmat__exp_ibp_init;
extern const wmat_experiment wmat__exp_gmm_mask;
extern const wmat_experiment wmat__exp_rf_attention;
extern const wmat_experiment wmat__exp_memoryformer;
extern const wmat_experiment wmat__exp_precrop;

/* One line per experiment; the catalogue lists them in this order. */
const wmat_experiment *const wmat__experiments[] = {
    &wmat__exp_ibp_init,
    &wmat__exp_gmm_mask,
    &wmat__exp_rf_attention,
    &wmat__exp_memoryformer,
    &wmat__exp_precrop,
    NULL,
};

const wmat_experiment *wmat__experiment_find(const char *name)
{
    for (int i = 0; name && wmat__experiments[i]; i++)
        if (!strcmp(wmat__experiments[i]->name, name)) return wmat__experiments[i];
    return NULL;
}

void wmat_table_free(wmat_table *t)
{
    if (!t) return;
    for (int i = 0; t->cols && i < t->ncols; i++) free(t->cols[i]);
    for (int i = 0; t->series && i < t->nrows; i++) free(t->series[i]);
    free(t->cols);
    free(t->series);
    free(t->v);
    free(t->title);
    free(t->note);
    memset(t, 0, sizeof *t);
    t->x_col = t->y_col = -1;
}

int wmat__table_init(wmat_table *t, const char *title, const char *cols)
{
    wmat_table_free(t);
    int n = 1;
    for (const char *c = cols; *c; c++) n += *c == '|';
    t->cols = calloc((size_t)n, sizeof *t->cols);
    t->title = strdup(title ? title : "");
    if (!t->cols || !t->title) return wmat_set_error(WMAT_ERR_NOMEM, "experiment table: out of memory");
    const char *c = cols;
    for (int i = 0; i < n; i++) {
        const char *e = strchr(c, '|');
        const size_t len = e ? (size_t)(e - c) : strlen(c);
        if (!len) return wmat_set_error(WMAT_ERR_INVALID, "experiment table: empty column name in '%s'", cols);
        if (!(t->cols[i] = strndup(c, len))) return wmat_set_error(WMAT_ERR_NOMEM, "experiment table: out of memory");
        t->ncols = i + 1;
        c = e ? e + 1 : c + len;
    }
    return WMAT_OK;
}

int wmat__table_add(wmat_table *t, const char *series, const double *v)
{
    if (t->ncols < 1) return wmat_set_error(WMAT_ERR_INVALID, "experiment table: no columns");
    if (t->nrows == t->cap) {
        const int cap = t->cap ? 2 * t->cap : 16;
        double *nv = realloc(t->v, (size_t)cap * (size_t)t->ncols * sizeof *nv);
        if (!nv) return wmat_set_error(WMAT_ERR_NOMEM, "experiment table: out of memory");
        t->v = nv;
        char **ns = realloc(t->series, (size_t)cap * sizeof *ns);
        if (!ns) return wmat_set_error(WMAT_ERR_NOMEM, "experiment table: out of memory");
        t->series = ns;
        t->cap = cap;
    }
    if (!(t->series[t->nrows] = strdup(series ? series : "")))
        return wmat_set_error(WMAT_ERR_NOMEM, "experiment table: out of memory");
    memcpy(t->v + (size_t)t->nrows * (size_t)t->ncols, v, (size_t)t->ncols * sizeof *v);
    t->nrows++;
    return WMAT_OK;
}

static int col_index(const wmat_table *t, const char *name)
{
    for (int i = 0; i < t->ncols; i++)
        if (!strcmp(t->cols[i], name)) return i;
    return -1;
}

int wmat__table_chart(wmat_table *t, const char *x, const char *y, int log_x, int log_y)
{
    t->x_col = col_index(t, x);
    t->y_col = col_index(t, y);
    if (t->x_col < 0 || t->y_col < 0)
        return wmat_set_error(WMAT_ERR_INVALID, "experiment table: chart columns '%s' / '%s' are not columns", x, y);
    t->log_x = log_x;
    t->log_y = log_y;
    return WMAT_OK;
}

int wmat__table_note(wmat_table *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    const int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0) return wmat_set_error(WMAT_ERR_NOMEM, "experiment table: out of memory");
    free(t->note);
    t->note = s;
    return WMAT_OK;
}

int wmat_experiment_run(const char *name, const wmat_experiment_params *p, wmat_table *out)
{
    if (!out) return wmat_set_error(WMAT_ERR_INVALID, "experiment: no table to fill");
    memset(out, 0, sizeof *out);
    out->x_col = out->y_col = -1;
    const wmat_experiment *e = wmat__experiment_find(name);
    if (!e) {
        char names[512] = "";
        size_t k = 0;
        for (int i = 0; wmat__experiments[i] && k < sizeof names; i++)
            k += (size_t)snprintf(names + k, sizeof names - k, "%s%s", i ? ", " : "", wmat__experiments[i]->name);
        return wmat_set_error(WMAT_ERR_INVALID, "experiment '%s' does not exist (experiments: %s)", name ? name : "(null)",
                              names);
    }
    wmat_pset ps;
    int rc = wmat__pset_init(&ps, e->schema);
    if (rc) return rc;
    if (p && p->params && (rc = wmat__pset_parse_kv(&ps, p->params, ';', 0))) {
        wmat__pset_free(&ps);
        return wmat_set_error(rc, "experiment %s: %s", e->name, wmat_last_error());
    }
    const wmat_context ctx = p && p->ctx ? *p->ctx : wmat_context_default();
    const wmat_exp_env env = {.ctx = &ctx, .seed = p && p->seed ? p->seed : 1};
    rc = e->run(&ps, &env, out);
    wmat__pset_free(&ps);
    if (rc) return rc;
    for (int64_t i = 0; i < (int64_t)out->nrows * out->ncols; i++)
        if (isinf(out->v[i]))
            return wmat_set_error(WMAT_ERR_NUMERIC, "experiment %s: an infinite value in column %s", e->name,
                                  out->cols[i % out->ncols]);
    return WMAT_OK;
}

int wmat__exp_byte_tokens(const wmat_pset *ps, const char *who, wmat_exp_synth_fn synth, uint64_t seed, int lead_space,
                          int32_t **ids, size_t *n)
{
    *ids = NULL;
    *n = 0;
    const char *src = wmat__pset_str(ps, "data");
    const size_t cap = (size_t)wmat__pset_int(ps, "max_bytes");
    char *text = malloc(cap);
    int32_t *tok = malloc((cap + 1) * sizeof *tok);
    if (!text || !tok) {
        free(text), free(tok);
        return wmat_set_error(WMAT_ERR_NOMEM, "experiment %s: out of memory for %zu bytes of text", who, cap);
    }
    size_t len;
    if (!strcmp(src, "synthetic")) {
        len = synth(text, cap, seed);
    } else {
        FILE *f = fopen(src, "rb");
        if (!f) {
            free(text), free(tok);
            return wmat_set_error(WMAT_ERR_IO, "experiment %s: cannot open the text %s (give data=FILE, or data=synthetic)",
                                  who, src);
        }
        len = fread(text, 1, cap, f);
        const int bad = ferror(f);
        fclose(f);
        if (bad) {
            free(text), free(tok);
            return wmat_set_error(WMAT_ERR_IO, "experiment %s: cannot read the text %s", who, src);
        }
    }
    size_t k = 0;
    if (lead_space && len) tok[k++] = ' ' + 3;
    for (size_t i = 0; i < len; i++) tok[k++] = (unsigned char)text[i] + 3;
    free(text);
    *ids = tok;
    *n = k;
    return WMAT_OK;
}

wmat_exp_stats wmat__exp_stats(const double *x, int n, size_t stride)
{
    wmat_exp_stats st = {0, 0, INFINITY, -INFINITY};
    double a = 0, a2 = 0;
    for (int i = 0; i < n; i++) {
        const double v = x[(size_t)i * stride];
        a += v, a2 += v * v;
        st.min = fmin(st.min, v), st.max = fmax(st.max, v);
    }
    st.mean = a / n;
    st.sd = n > 1 ? sqrt(fmax((a2 - n * st.mean * st.mean) / (n - 1), 0)) : 0;
    return st;
}

void wmat__exp_byte_config(wmat_config *c, int dim, int hidden, int layers, int heads, int ctx)
{
    memset(c, 0, sizeof *c);
    c->dim = dim;
    c->hidden_dim = hidden;
    c->n_layers = layers;
    c->n_heads = heads;
    c->n_kv_heads = heads;
    c->head_dim = dim / heads;
    c->vocab_size = 259;
    c->seq_len = ctx;
    c->rope_theta = 10000.0f;
    c->norm_eps = 1e-5f;
    c->tied_embeddings = 1;
    c->bos_id = 1;
    c->eos_id = 2;
}

wmat_train_params wmat__exp_train_params(const wmat_context *ec, int batch, int ctx, int steps, float lr,
                                         uint64_t seed)
{
    wmat_train_params p = wmat_train_default_params();
    p.exec = ec;
    p.method = WMAT_TRAIN_FULL;
    p.batch = batch;
    p.ctx = ctx;
    p.grad_accum = 1;
    p.steps = steps;
    p.lr = lr;
    p.min_lr = lr / 10;
    p.warmup = steps / 10;
    p.weight_decay = 0.1f;
    p.grad_clip = 1.0f;
    p.seed = seed;
    p.shuffle = 1;
    return p;
}

int wmat__exp_train_curve(wmat_trainer *t, int steps, int eval_every, const int32_t *held, size_t n_held, int ctx,
                          int eval_windows, const char *who, double *train_l, double *held_l, double *tokps)
{
    const size_t fit = n_held > 0 ? (n_held - 1) / (size_t)ctx : 0;
    const int windows = (int)(fit < (size_t)eval_windows ? fit : (size_t)eval_windows);
    if (windows < 1)
        return wmat_set_error(WMAT_ERR_INVALID, "experiment %s: the held-out text has no window of %d tokens", who, ctx);
    double secs = 0, sum = 0;
    uint64_t toks = 0;
    int since = 0, j = 0, rc = WMAT_OK;
    for (int s = 1; !rc && s <= steps; s++) {
        wmat_train_step_info si;
        if ((rc = wmat_trainer_step(t, &si))) break;
        secs += si.seconds;
        toks += si.tokens;
        sum += si.loss;
        since++;
        if (s % eval_every && s != steps) continue;
        wmat_eval_result er;
        if ((rc = wmat_trainer_eval(t, held, (size_t)windows * ctx + 1, ctx, windows, &er))) break;
        train_l[j] = sum / since;
        held_l[j] = er.mean_nll;
        tokps[j] = secs > 0 ? (double)toks / secs : 0;
        j++;
        sum = 0;
        since = 0;
    }
    return rc;
}
