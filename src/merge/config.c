/* mergekit's YAML config, the subset wmat merges (docs/MERGING.md):
 *
 *   merge_method: ties            # a row of the method table
 *   base_model: path
 *   models:
 *     - model: path
 *       parameters: {weight: 0.5, density: [0.2, 0.8]}
 *   parameters: {lambda: 1, normalize: true, t: [0, 0.5, 1], ...}
 *   dtype: float16                # also out_dtype; float32/float16/bfloat16 (f32/f16/bf16, q8_0, q4_0)
 *   tokenizer_source: base        # or a model's path
 *
 * A number may be a list, interpolated across layers. Anything else (an
 * unknown key, slices, a method not in the table, a wrong type) is an error
 * naming the key and the line. Parsed with libyaml's document loader. */
#include "merge.h"

#include <stdlib.h>
#include <string.h>
#include <yaml.h>

typedef struct {
    wmat_merge_config *c;
    yaml_document_t *doc;
    const char *name;
} ctx;

static int bad(ctx *x, const yaml_node_t *n, const char *fmt, const char *what)
{
    return wmat_set_error(WMAT_ERR_INVALID, "%s:%lu: %s%s", x->name, n ? (unsigned long)n->start_mark.line + 1 : 0ul, fmt,
                          what ? what : "");
}

static const char *scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static const char *keep(ctx *x, const char *s)
{
    wmat_merge_config *c = x->c;
    if (c->n_strs == c->cap_strs) {
        int cap = c->cap_strs ? 2 * c->cap_strs : 16;
        char **p = wmat__realloc(c->strs, (size_t)cap * sizeof *p);
        if (!p) return NULL;
        c->strs = p;
        c->cap_strs = cap;
    }
    char *d = wmat__strdup(s);
    if (d) c->strs[c->n_strs++] = d;
    return d;
}

static int str_value(ctx *x, const yaml_node_t *v, const char *key, const char **out)
{
    const char *s = scalar(v);
    if (!s || !*s) return bad(x, v, "expected a text value for ", key);
    *out = keep(x, s);
    return *out ? WMAT_OK : wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", x->name);
}

/* A number or a list of numbers, each checked against the key's row. */
static int num_value(ctx *x, const yaml_node_t *v, const wmat_param_spec *spec, wmat_mvalue *out)
{
    const yaml_node_t *items[WMAT_MERGE_MAX_LIST];
    int n = 0;
    if (v->type == YAML_SCALAR_NODE) {
        items[n++] = v;
    } else if (v->type == YAML_SEQUENCE_NODE) {
        for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
            if (n == WMAT_MERGE_MAX_LIST) return bad(x, v, "more than 64 values in the list of ", spec->name);
            items[n++] = yaml_document_get_node(x->doc, *it);
        }
        if (!n) return bad(x, v, "an empty list for ", spec->name);
    } else {
        return bad(x, v, "expected a number or a list of numbers for ", spec->name);
    }
    for (int i = 0; i < n; i++) {
        const char *s = scalar(items[i]);
        if (!s) return bad(x, items[i], "expected a number in ", spec->name);
        wmat_param_value pv = {0, 0, NULL, 0};
        if (wmat__param_parse(spec, s, &pv)) {
            char msg[300];
            snprintf(msg, sizeof msg, "%s", wmat_last_error());
            return bad(x, items[i], msg, NULL);
        }
        out->v[i] = spec->type == WMAT_PARAM_FLOAT ? pv.f : (double)pv.i;
        free(pv.s);
    }
    out->n = n;
    return WMAT_OK;
}

static const wmat_param_spec *find_key(const wmat_param_spec *keys, const char *k)
{
    for (const wmat_param_spec *p = keys; p->name; p++)
        if (!strcmp(p->name, k)) return p;
    return NULL;
}

/* parameters: of a model (per_model) or of the merge. */
static int parameters(ctx *x, const yaml_node_t *map, int per_model, wmat_merge_model *mm)
{
    wmat_param_spec keys[32];
    int rc = wmat__merge_keys(keys, 32);
    if (rc) return rc;
    if (map->type != YAML_MAPPING_NODE) return bad(x, map, "parameters must be a mapping", NULL);
    wmat_merge_spec *s = &x->c->spec;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const yaml_node_t *kn = yaml_document_get_node(x->doc, p->key), *vn = yaml_document_get_node(x->doc, p->value);
        const char *k = scalar(kn);
        if (!k || !vn) return bad(x, kn, "a parameter name must be text", NULL);
        const wmat_param_spec *spec = find_key(keys, k);
        if (!spec) {
            char msg[300];
            size_t o = (size_t)snprintf(msg, sizeof msg, "unknown parameter '%.64s' (known:", k);
            for (const wmat_param_spec *q = keys; q->name && o < sizeof msg; q++)
                o += (size_t)snprintf(msg + o, sizeof msg - o, " %s", q->name);
            if (o < sizeof msg) snprintf(msg + o, sizeof msg - o, ")");
            return bad(x, kn, msg, NULL);
        }
        if (per_model && !wmat__merge_key_per_model(k))
            return bad(x, kn, "only weight and density are set per model, not ", k);
        if (spec->type == WMAT_PARAM_BOOL || spec->type == WMAT_PARAM_INT) {
            const char *v = scalar(vn);
            wmat_param_value pv = {0, 0, NULL, 0};
            if (!v) return bad(x, vn, "expected a single value for ", k);
            if (wmat__param_parse(spec, v, &pv)) {
                char msg[300];
                snprintf(msg, sizeof msg, "%s", wmat_last_error());
                return bad(x, vn, msg, NULL);
            }
            if (!strcmp(k, "normalize")) s->normalize = (int)pv.i;
            else if (!strcmp(k, "seed")) s->seed = (uint64_t)pv.i;
            else if (!strcmp(k, "shuffle")) s->shuffle = (int)pv.i;
            free(pv.s);
            continue;
        }
        wmat_mvalue *dst = NULL;
        if (!strcmp(k, "weight")) dst = per_model ? &mm->weight : &s->weight;
        else if (!strcmp(k, "density")) dst = per_model ? &mm->density : &s->density;
        else if (!strcmp(k, "lambda")) dst = &s->lambda;
        else if (!strcmp(k, "t")) dst = &s->t;
        else if (!strcmp(k, "dot_threshold")) dst = &s->dot_threshold;
        else if (!strcmp(k, "alpha")) dst = &s->alpha;
        if (!dst) return bad(x, kn, "parameter not handled: ", k);
        rc = num_value(x, vn, spec, dst);
        if (rc) return rc;
    }
    return WMAT_OK;
}

static int dtype_value(ctx *x, const yaml_node_t *v)
{
    const char *s = scalar(v);
    static const struct {
        const char *name;
        wmat_dtype dt;
    } names[] = {{"float32", WMAT_F32}, {"float16", WMAT_F16}, {"bfloat16", WMAT_BF16}, {"f32", WMAT_F32},
                 {"f16", WMAT_F16},     {"bf16", WMAT_BF16},    {"q8_0", WMAT_Q8_0},     {"q4_0", WMAT_Q4_0}};
    for (size_t i = 0; s && i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(s, names[i].name)) {
            x->c->spec.out_dtype = names[i].dt;
            return WMAT_OK;
        }
    return bad(x, v, "dtype must be float32, float16, bfloat16 (f32, f16, bf16, q8_0, q4_0), not ", s ? s : "a non-text value");
}

static int models(ctx *x, const yaml_node_t *seq, const char *base)
{
    if (seq->type != YAML_SEQUENCE_NODE) return bad(x, seq, "models must be a list", NULL);
    const int cap = (int)(seq->data.sequence.items.top - seq->data.sequence.items.start);
    if (cap > 64) return bad(x, seq, "more than 64 models", NULL);
    wmat_merge_config *c = x->c;
    c->models = wmat__calloc((size_t)(cap ? cap : 1), sizeof *c->models);
    if (!c->models) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", x->name);
    int n = 0;
    for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++) {
        const yaml_node_t *e = yaml_document_get_node(x->doc, *it);
        if (!e) return bad(x, seq, "a broken list entry", NULL);
        wmat_merge_model *mm = &c->models[n];
        const yaml_node_t *params = NULL;
        if (e->type == YAML_SCALAR_NODE) { /* "- path" */
            int rc = str_value(x, e, "model", &mm->path);
            if (rc) return rc;
        } else if (e->type == YAML_MAPPING_NODE) {
            for (yaml_node_pair_t *p = e->data.mapping.pairs.start; p < e->data.mapping.pairs.top; p++) {
                const yaml_node_t *kn = yaml_document_get_node(x->doc, p->key), *vn = yaml_document_get_node(x->doc, p->value);
                const char *k = scalar(kn);
                if (!k || !vn) return bad(x, kn, "a key of a model entry must be text", NULL);
                if (!strcmp(k, "model")) {
                    int rc = str_value(x, vn, "model", &mm->path);
                    if (rc) return rc;
                } else if (!strcmp(k, "parameters")) {
                    params = vn;
                } else {
                    return bad(x, kn, "unknown key in a model entry (model, parameters): ", k);
                }
            }
            if (!mm->path) return bad(x, e, "a model entry without 'model'", NULL);
        } else {
            return bad(x, e, "a model entry must be a path or a mapping", NULL);
        }
        /* mergekit lists the base among the models; it has no task vector */
        if (base && !strcmp(mm->path, base)) {
            memset(mm, 0, sizeof *mm);
            continue;
        }
        if (params) {
            int rc = parameters(x, params, 1, mm);
            if (rc) return rc;
        }
        n++;
    }
    c->spec.models = c->models;
    c->spec.n_models = n;
    return WMAT_OK;
}

static int root(ctx *x, const yaml_node_t *r)
{
    if (!r || r->type != YAML_MAPPING_NODE) return bad(x, r, "the config must be a mapping (merge_method, models, ...)", NULL);
    wmat_merge_spec *s = &x->c->spec;
    const yaml_node_t *models_node = NULL, *params_node = NULL;
    int rc = WMAT_OK;
    for (yaml_node_pair_t *p = r->data.mapping.pairs.start; p < r->data.mapping.pairs.top && !rc; p++) {
        const yaml_node_t *kn = yaml_document_get_node(x->doc, p->key), *vn = yaml_document_get_node(x->doc, p->value);
        const char *k = scalar(kn);
        if (!k || !vn) return bad(x, kn, "a top-level key must be text", NULL);
        if (!strcmp(k, "merge_method")) {
            rc = str_value(x, vn, k, &s->method);
            if (!rc && !wmat__merge_method_find(s->method)) {
                char msg[300];
                size_t o = (size_t)snprintf(msg, sizeof msg, "unknown merge_method '%.64s' (known:", s->method);
                for (const wmat_merge_method *q = wmat__merge_methods; q->name && o < sizeof msg; q++)
                    o += (size_t)snprintf(msg + o, sizeof msg - o, " %s", q->name);
                if (o < sizeof msg) snprintf(msg + o, sizeof msg - o, ")");
                return bad(x, vn, msg, NULL);
            }
        } else if (!strcmp(k, "base_model")) {
            rc = str_value(x, vn, k, &s->base);
        } else if (!strcmp(k, "models")) {
            models_node = vn;
        } else if (!strcmp(k, "parameters")) {
            params_node = vn;
        } else if (!strcmp(k, "dtype") || !strcmp(k, "out_dtype")) {
            rc = dtype_value(x, vn);
        } else if (!strcmp(k, "tokenizer_source")) {
            rc = str_value(x, vn, k, &s->tokenizer_source);
            if (!rc && !strcmp(s->tokenizer_source, "union"))
                return bad(x, vn, "tokenizer_source: union is not supported (the models must share a vocabulary)", NULL);
        } else if (!strcmp(k, "slices")) {
            return bad(x, kn, "slices are not supported: list whole models under 'models'", NULL);
        } else {
            return bad(x, kn, "unknown key (merge_method, base_model, models, parameters, dtype, out_dtype, tokenizer_source): ", k);
        }
    }
    if (rc) return rc;
    if (!s->method) return bad(x, r, "no merge_method", NULL);
    if (!models_node) return bad(x, r, "no models", NULL);
    rc = models(x, models_node, s->base);
    if (!rc && params_node) rc = parameters(x, params_node, 0, NULL);
    return rc;
}

void wmat__merge_config_free(wmat_merge_config *c)
{
    if (!c) return;
    for (int i = 0; i < c->n_strs; i++) wmat__free(c->strs[i]);
    wmat__free(c->strs);
    wmat__free(c->models);
    memset(c, 0, sizeof *c);
}

int wmat__merge_config_parse(wmat_merge_config *c, const char *text, size_t len, const char *name)
{
    memset(c, 0, sizeof *c);
    c->spec.normalize = -1;
    c->spec.out_dtype = WMAT_F32;
    if (!name) name = "config";
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", name);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        int rc = wmat_set_error(WMAT_ERR_INVALID, "%s:%lu: YAML: %s", name, (unsigned long)parser.problem_mark.line + 1,
                                parser.problem ? parser.problem : "malformed");
        yaml_parser_delete(&parser);
        return rc;
    }
    ctx x = {c, &doc, name};
    int rc = root(&x, yaml_document_get_root_node(&doc));
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return rc;
}
