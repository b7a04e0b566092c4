/* Typed key=value parameters (params.h). */
#include "params.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* '-' and '_' are one letter in keys, so a flag and its key are one name. */
static int key_eq(const char *a, size_t alen, const char *b)
{
    size_t i = 0;
    for (; i < alen && b[i]; i++) {
        const char x = a[i] == '-' ? '_' : a[i], y = b[i] == '-' ? '_' : b[i];
        if (x != y) return 0;
    }
    return i == alen && !b[i];
}

/* "act_order" -> "--act-order" */
static void flag_name(const char *key, char *buf, size_t n)
{
    snprintf(buf, n, "--%s", key);
    for (char *p = buf + 2; *p; p++)
        if (*p == '_') *p = '-';
}

int wmat__params_count(const wmat_param_spec *spec)
{
    int n = 0;
    while (spec && spec[n].name) n++;
    return n;
}

int wmat__params_find(const wmat_param_spec *spec, const char *key, size_t len)
{
    for (int i = 0; spec && spec[i].name; i++)
        if (key_eq(key, len, spec[i].name)) return i;
    return -1;
}

/* Index of name among the '|'-separated choices, -1 if absent. */
static int choice_index(const char *choices, const char *name)
{
    const size_t len = strlen(name);
    int k = 0;
    for (const char *c = choices; c && *c; k++) {
        const char *e = strchr(c, '|');
        const size_t cl = e ? (size_t)(e - c) : strlen(c);
        if (cl == len && !strncmp(c, name, len)) return k;
        if (!e) break;
        c = e + 1;
    }
    return -1;
}

/* Copy of choice k (owned), NULL when out of memory or absent. */
static char *choice_dup(const char *choices, int64_t k)
{
    const char *c = choices;
    for (int64_t i = 0; c && i < k; i++) {
        c = strchr(c, '|');
        if (c) c++;
    }
    if (!c) return NULL;
    const char *e = strchr(c, '|');
    const size_t len = e ? (size_t)(e - c) : strlen(c);
    char *s = wmat__malloc(len + 1);
    if (!s) return NULL;
    memcpy(s, c, len);
    s[len] = '\0';
    return s;
}

int wmat__param_range(const wmat_param_spec *s, char *buf, size_t n)
{
    switch (s->type) {
    case WMAT_PARAM_INT: return snprintf(buf, n, "%lld..%lld", (long long)s->min, (long long)s->max);
    case WMAT_PARAM_FLOAT: return snprintf(buf, n, "%g..%g", s->min, s->max);
    case WMAT_PARAM_BOOL: return snprintf(buf, n, "true|false");
    case WMAT_PARAM_ENUM: return snprintf(buf, n, "%s", s->choices ? s->choices : "");
    case WMAT_PARAM_STRING: return snprintf(buf, n, "text");
    }
    return snprintf(buf, n, "?");
}

static int bad_value(const wmat_param_spec *s, const char *text, const char *what)
{
    char range[256];
    wmat__param_range(s, range, sizeof range);
    if (s->type == WMAT_PARAM_ENUM || s->type == WMAT_PARAM_BOOL)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: '%.60s' is not one of %s", s->name, text, range);
    return wmat_set_error(WMAT_ERR_INVALID, "%s: '%.60s' %s %s", s->name, text, what, range);
}

int wmat__param_parse(const wmat_param_spec *s, const char *text, wmat_param_value *out)
{
    memset(out, 0, sizeof *out);
    if (!text) return wmat_set_error(WMAT_ERR_INVALID, "%s: no value", s->name);
    char *end;
    switch (s->type) {
    case WMAT_PARAM_INT: {
        errno = 0;
        const long long v = strtoll(text, &end, 10);
        if (errno || end == text || *end) return bad_value(s, text, "is not an integer in");
        if ((double)v < s->min || (double)v > s->max) return bad_value(s, text, "is out of range");
        out->i = v;
        return WMAT_OK;
    }
    case WMAT_PARAM_FLOAT: {
        errno = 0;
        const double v = strtod(text, &end);
        if (end == text || *end) return bad_value(s, text, "is not a number in");
        if (!isfinite(v)) return bad_value(s, text, "is not a finite number in");
        if (errno == ERANGE && v != 0.0) return bad_value(s, text, "is out of range");
        if (v < s->min || v > s->max) return bad_value(s, text, "is out of range");
        out->f = v;
        return WMAT_OK;
    }
    case WMAT_PARAM_BOOL: {
        static const char *const yes[] = {"true", "1", "yes", "on"}, *const no[] = {"false", "0", "no", "off"};
        for (int k = 0; k < 4; k++) {
            if (!strcasecmp(text, yes[k])) {
                out->i = 1;
                return WMAT_OK;
            }
            if (!strcasecmp(text, no[k])) {
                out->i = 0;
                return WMAT_OK;
            }
        }
        return bad_value(s, text, "");
    }
    case WMAT_PARAM_ENUM: {
        const int k = choice_index(s->choices, text);
        if (k < 0) return bad_value(s, text, "");
        out->i = k;
        if (!(out->s = choice_dup(s->choices, k))) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", s->name);
        return WMAT_OK;
    }
    case WMAT_PARAM_STRING:
        if (!(out->s = wmat__strdup(text))) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", s->name);
        return WMAT_OK;
    }
    return wmat_set_error(WMAT_ERR_INVALID, "%s: unknown parameter type %d", s->name, (int)s->type);
}

int wmat__param_format(const wmat_param_spec *s, const wmat_param_value *v, char *buf, size_t n)
{
    switch (s->type) {
    case WMAT_PARAM_INT: return snprintf(buf, n, "%lld", (long long)v->i);
    case WMAT_PARAM_FLOAT: {
        /* the shortest text that reads back as the same double */
        int len = 0;
        for (int prec = 6; prec <= 17; prec++) {
            char tmp[64];
            len = snprintf(tmp, sizeof tmp, "%.*g", prec, v->f);
            if (strtod(tmp, NULL) == v->f || prec == 17) return snprintf(buf, n, "%s", tmp);
        }
        return len;
    }
    case WMAT_PARAM_BOOL: return snprintf(buf, n, "%s", v->i ? "true" : "false");
    case WMAT_PARAM_ENUM:
    case WMAT_PARAM_STRING: return snprintf(buf, n, "%s", v->s ? v->s : "");
    }
    return snprintf(buf, n, "?");
}

int wmat__pset_init(wmat_pset *ps, const wmat_param_spec *spec)
{
    memset(ps, 0, sizeof *ps);
    ps->spec = spec;
    ps->n = wmat__params_count(spec);
    if (ps->n == 0) return WMAT_OK;
    ps->v = wmat__calloc((size_t)ps->n, sizeof *ps->v);
    if (!ps->v) return wmat_set_error(WMAT_ERR_NOMEM, "parameters: out of memory");
    for (int i = 0; i < ps->n; i++) {
        int rc = wmat__param_parse(&spec[i], spec[i].def ? spec[i].def : "", &ps->v[i]);
        if (rc) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", wmat_last_error());
            wmat__pset_free(ps);
            return wmat_set_error(rc, "schema default: %s", msg);
        }
    }
    return WMAT_OK;
}

void wmat__pset_free(wmat_pset *ps)
{
    if (!ps) return;
    for (int i = 0; ps->v && i < ps->n; i++) wmat__free(ps->v[i].s);
    wmat__free(ps->v);
    memset(ps, 0, sizeof *ps);
}

static int unknown_key(const wmat_pset *ps, const char *key, size_t len)
{
    char keys[512];
    size_t k = 0;
    keys[0] = '\0';
    for (int i = 0; i < ps->n && k < sizeof keys; i++)
        k += (size_t)snprintf(keys + k, sizeof keys - k, "%s%s", i ? ", " : "", ps->spec[i].name);
    return wmat_set_error(WMAT_ERR_INVALID, "unknown key '%.*s' (keys: %s)", (int)(len > 60 ? 60 : len), key,
                          ps->n ? keys : "none");
}

/* Replace value i with a parsed one. */
static int assign(wmat_pset *ps, int i, const char *text)
{
    wmat_param_value v;
    int rc = wmat__param_parse(&ps->spec[i], text, &v);
    if (rc) return rc;
    wmat__free(ps->v[i].s);
    v.set = 1;
    ps->v[i] = v;
    return WMAT_OK;
}

/* Index of the bool whose negation is key, -1 if none. */
static int find_neg(const wmat_pset *ps, const char *key, size_t len)
{
    for (int i = 0; i < ps->n; i++)
        if (ps->spec[i].type == WMAT_PARAM_BOOL && ps->spec[i].neg && key_eq(key, len, ps->spec[i].neg)) return i;
    return -1;
}

static int set_n(wmat_pset *ps, const char *key, size_t len, const char *value)
{
    int i = wmat__params_find(ps->spec, key, len);
    if (i >= 0) {
        if (!value && ps->spec[i].type == WMAT_PARAM_BOOL) value = "true";
        return assign(ps, i, value);
    }
    if ((i = find_neg(ps, key, len)) >= 0) {
        if (value)
            return wmat_set_error(WMAT_ERR_INVALID, "%.*s takes no value (it sets %s false), got '%.60s'", (int)len,
                                  key, ps->spec[i].name, value);
        return assign(ps, i, "false");
    }
    return unknown_key(ps, key, len);
}

int wmat__pset_set(wmat_pset *ps, const char *key, const char *value)
{
    return set_n(ps, key, strlen(key), value);
}

int wmat__pset_parse_kv(wmat_pset *ps, const char *text, char sep, int skip_unknown)
{
    for (const char *s = text; s && *s;) {
        const char *e = strchr(s, sep);
        const size_t len = e ? (size_t)(e - s) : strlen(s);
        const char *eq = memchr(s, '=', len);
        const size_t klen = eq ? (size_t)(eq - s) : len;
        char val[512];
        if (eq) {
            const size_t vlen = len - klen - 1;
            if (vlen >= sizeof val) return wmat_set_error(WMAT_ERR_INVALID, "%.*s: value too long", (int)klen, s);
            memcpy(val, eq + 1, vlen);
            val[vlen] = '\0';
        }
        if (klen == 0) {
            if (len) return wmat_set_error(WMAT_ERR_INVALID, "'%.*s' is not key=value", (int)len, s);
        } else if (!(skip_unknown && wmat__params_find(ps->spec, s, klen) < 0 && find_neg(ps, s, klen) < 0)) {
            int rc = set_n(ps, s, klen, eq ? val : NULL);
            if (rc) return rc;
        }
        s = e ? e + 1 : s + len;
    }
    return WMAT_OK;
}

int wmat__pset_flag(wmat_pset *ps, const char *arg, const char *next)
{
    if (strncmp(arg, "--", 2) || !arg[2]) return 0;
    const char *key = arg + 2, *eq = strchr(key, '=');
    const size_t len = eq ? (size_t)(eq - key) : strlen(key);
    int i = wmat__params_find(ps->spec, key, len), neg = 0;
    if (i < 0) {
        if ((i = find_neg(ps, key, len)) < 0) return 0;
        neg = 1;
    }
    const wmat_param_spec *s = &ps->spec[i];
    char flag[80], negflag[80];
    flag_name(s->name, flag, sizeof flag);
    flag_name(s->neg ? s->neg : "", negflag, sizeof negflag);
    const char *value = eq ? eq + 1 : NULL;
    int used = 1;
    if (neg) {
        if (value) return wmat_set_error(WMAT_ERR_INVALID, "%s takes no value, got '%.60s'", negflag, value);
        value = "false";
    } else if (!value && s->type == WMAT_PARAM_BOOL) {
        value = "true";
    } else if (!value) {
        char range[256];
        wmat__param_range(s, range, sizeof range);
        if (!next) return wmat_set_error(WMAT_ERR_INVALID, "%s needs a value (%s)", flag, range);
        value = next;
        used = 2;
    }
    const int64_t before = ps->v[i].i;
    const int was_set = ps->v[i].set;
    int rc = assign(ps, i, value);
    if (rc) return rc;
    if (s->type == WMAT_PARAM_BOOL && was_set && before != ps->v[i].i) {
        if (s->neg) return wmat_set_error(WMAT_ERR_INVALID, "%s and %s exclude each other", flag, negflag);
        return wmat_set_error(WMAT_ERR_INVALID, "%s given both true and false", flag);
    }
    return used;
}

int wmat__pset_parse_args(wmat_pset *ps, int argc, char **argv, unsigned char *used)
{
    for (int i = 0; i < argc; i++) {
        if (used) used[i] = 0;
        int k = wmat__pset_flag(ps, argv[i], i + 1 < argc ? argv[i + 1] : NULL);
        if (k < 0) return k;
        for (int j = 0; j < k; j++)
            if (used) used[i + j] = 1;
        if (k == 2) i++;
    }
    return WMAT_OK;
}

static const wmat_param_value *get(const wmat_pset *ps, const char *key)
{
    const int i = wmat__params_find(ps->spec, key, strlen(key));
    return i >= 0 ? &ps->v[i] : NULL;
}

int64_t wmat__pset_int(const wmat_pset *ps, const char *key)
{
    const wmat_param_value *v = get(ps, key);
    return v ? v->i : 0;
}

double wmat__pset_float(const wmat_pset *ps, const char *key)
{
    const wmat_param_value *v = get(ps, key);
    return v ? v->f : 0.0;
}

const char *wmat__pset_str(const wmat_pset *ps, const char *key)
{
    const wmat_param_value *v = get(ps, key);
    return v ? v->s : NULL;
}

int wmat__pset_is_set(const wmat_pset *ps, const char *key)
{
    const wmat_param_value *v = get(ps, key);
    return v ? v->set : 0;
}

int wmat__pset_has(const wmat_pset *ps, const char *key)
{
    return get(ps, key) != NULL;
}

int wmat__pset_knows(const wmat_pset *ps, const char *key)
{
    const size_t len = strlen(key);
    return wmat__params_find(ps->spec, key, len) >= 0 || find_neg(ps, key, len) >= 0;
}

/* Append to buf at *k like snprintf, never past n; *k counts what would be written. */
static void app(char *buf, size_t n, size_t *k, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    const int w = vsnprintf(*k < n ? buf + *k : NULL, *k < n ? n - *k : 0, fmt, ap);
    va_end(ap);
    if (w > 0) *k += (size_t)w;
}

int wmat__pset_format(const wmat_pset *ps, int only_set, char sep, char *buf, size_t n)
{
    size_t k = 0;
    if (n) buf[0] = '\0';
    for (int i = 0; i < ps->n; i++) {
        if (only_set && !ps->v[i].set) continue;
        char val[512];
        wmat__param_format(&ps->spec[i], &ps->v[i], val, sizeof val);
        app(buf, n, &k, "%s%s=%s", k ? (char[]){sep, '\0'} : "", ps->spec[i].name, val);
    }
    return (int)k;
}

int wmat__params_help(const wmat_param_spec *spec, int as_flags, char *buf, size_t n)
{
    size_t k = 0;
    if (n) buf[0] = '\0';
    for (int i = 0; spec && spec[i].name; i++) {
        const wmat_param_spec *s = &spec[i];
        char lhs[512], range[256], flag[80];
        wmat__param_range(s, range, sizeof range);
        flag_name(s->name, flag, sizeof flag);
        const char *metavar = s->type == WMAT_PARAM_INT ? "N" : s->type == WMAT_PARAM_FLOAT ? "X" : s->type == WMAT_PARAM_STRING ? "S" : range;
        if (as_flags && s->type == WMAT_PARAM_BOOL)
            snprintf(lhs, sizeof lhs, "%s%s%s", flag, s->neg ? ", --" : "", s->neg ? s->neg : "");
        else if (as_flags)
            snprintf(lhs, sizeof lhs, "%s %s", flag, metavar);
        else
            snprintf(lhs, sizeof lhs, "%s=%s", s->name, s->type == WMAT_PARAM_BOOL ? range : metavar);
        if (as_flags && s->neg)
            for (char *p = lhs + strlen(flag); *p; p++)
                if (*p == '_') *p = '-';
        const int ranged = s->type == WMAT_PARAM_INT || s->type == WMAT_PARAM_FLOAT;
        char def[96];
        snprintf(def, sizeof def, "%s", s->def && s->def[0] ? s->def : "none");
        if (as_flags && s->type == WMAT_PARAM_BOOL && s->neg) {
            /* the flag that gives the default: --asym rather than "false" */
            wmat_param_value v;
            if (wmat__param_parse(s, s->def, &v) == WMAT_OK) {
                if (v.i) snprintf(def, sizeof def, "%s", flag);
                else flag_name(s->neg, def, sizeof def);
            }
        }
        app(buf, n, &k, "  %-24s %s (%s%sdefault %s)\n", lhs, s->help ? s->help : "", ranged ? range : "",
            ranged ? "; " : "", def);
    }
    return (int)k;
}

static int same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

int wmat__params_merge(wmat_param_spec *dst, int cap, int *n, const wmat_param_spec *src)
{
    for (int i = 0; src && src[i].name; i++) {
        int found = -1;
        for (int j = 0; j < *n; j++)
            if (key_eq(src[i].name, strlen(src[i].name), dst[j].name)) found = j;
        if (found >= 0) {
            const wmat_param_spec *a = &dst[found], *b = &src[i];
            if (a->type != b->type || a->min != b->min || a->max != b->max || !same_str(a->choices, b->choices) ||
                !same_str(a->neg, b->neg))
                return wmat_set_error(WMAT_ERR_INVALID,
                                      "key %s is declared twice with different types, ranges or choices", b->name);
            continue;
        }
        if (*n >= cap) return wmat_set_error(WMAT_ERR_INVALID, "parameters: more than %d keys", cap);
        dst[(*n)++] = src[i];
    }
    return WMAT_OK;
}
