/* Method descriptors and override lists (method.h). */
#include "method.h"

#include <fnmatch.h>
#include <stdio.h>
#include <string.h>

const char *wmat__method_stats_text(unsigned stats, char *buf, size_t n)
{
    static const struct {
        unsigned bit;
        const char *what;
    } k_stats[] = {
        {WMAT_MSTAT_HESSIAN, "Hessian"},
        {WMAT_MSTAT_ACT_NORMS, "activation norms"},
        {WMAT_MSTAT_GRADIENTS, "gradients"},
        {WMAT_MSTAT_RESIDUAL, "residual-stream covariance"},
    };
    size_t k = 0;
    if (n) buf[0] = '\0';
    if (!stats) {
        snprintf(buf, n, "nothing (data-free)");
        return buf;
    }
    for (size_t i = 0; i < sizeof k_stats / sizeof k_stats[0] && k < n; i++)
        if (stats & k_stats[i].bit) k += (size_t)snprintf(buf + k, n - k, "%s%s", k ? ", " : "", k_stats[i].what);
    return buf;
}

int wmat__method_desc_check(const wmat_method_desc *d)
{
    const char *nm = d && d->name ? d->name : "(null)";
    if (!d || !d->name || !d->name[0]) return wmat_set_error(WMAT_ERR_INVALID, "method registry: a row without a name");
    if (!d->family || !d->family[0] || !d->summary || !d->summary[0] || !d->produces || !d->produces[0] || !d->schema)
        return wmat_set_error(WMAT_ERR_INVALID, "method %s: family, summary, produces and schema are required", nm);
    if (d->stats & ~(unsigned)(WMAT_MSTAT_HESSIAN | WMAT_MSTAT_ACT_NORMS | WMAT_MSTAT_GRADIENTS | WMAT_MSTAT_RESIDUAL))
        return wmat_set_error(WMAT_ERR_INVALID, "method %s: unknown statistics bits 0x%x", nm, d->stats);
    for (const wmat_param_spec *s = d->schema; s->name; s++)
        if (!s->help || !s->help[0]) return wmat_set_error(WMAT_ERR_INVALID, "method %s: key %s has no help", nm, s->name);
    wmat_pset ps;
    int rc = wmat__pset_init(&ps, d->schema);
    if (rc) return wmat_set_error(rc, "method %s: %s", nm, wmat_last_error());
    wmat__pset_free(&ps);
    return WMAT_OK;
}

/* ---- override lists */

static int pattern_match(const char *pat, size_t len, const char *name)
{
    char buf[256];
    if (len == 0 || len >= sizeof buf) return 0;
    memcpy(buf, pat, len);
    buf[len] = '\0';
    if (strpbrk(buf, "*?[")) return fnmatch(buf, name, 0) == 0;
    return strstr(name, buf) != NULL;
}

int wmat__name_list_match(const char *list, const char *name)
{
    for (const char *s = list; s && *s;) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (pattern_match(s, len, name)) return 1;
        s = e ? e + 1 : s + len;
    }
    return 0;
}

int wmat__override_next(const char **s, wmat_override_item *it, const char *syntax)
{
    if (!*s || !**s) return 0;
    const char *e = strchr(*s, ',');
    const size_t len = e ? (size_t)(e - *s) : strlen(*s);
    if (len >= sizeof it->buf) return wmat_set_error(WMAT_ERR_INVALID, "override '%.40s...' is too long", *s);
    memcpy(it->buf, *s, len);
    it->buf[len] = '\0';
    *s = e ? e + 1 : *s + len;
    char *eq = strchr(it->buf, '=');
    if (!eq) return wmat_set_error(WMAT_ERR_INVALID, "override '%s' is not %s", it->buf, syntax);
    *eq = '\0';
    it->pattern = it->buf;
    it->method = eq + 1;
    it->fields = strchr(eq + 1, ':');
    if (it->fields) *it->fields++ = '\0';
    return 1;
}

int wmat__override_is_keep(const wmat_override_item *it)
{
    return !strcmp(it->method, "keep") || !strcmp(it->method, "fp32");
}

int wmat__override_matches(const wmat_override_item *it, const char *name)
{
    return pattern_match(it->pattern, strlen(it->pattern), name);
}

int wmat__override_set(wmat_pset *ps, const wmat_override_item *it, const char *key, const char *val, int strict)
{
    if (!strict && !wmat__pset_knows(ps, key)) return WMAT_OK;
    int rc = wmat__pset_set(ps, key, val);
    if (rc) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", wmat_last_error());
        return wmat_set_error(rc, "override for '%s' (%s): %s", it->pattern, it->method, msg);
    }
    return WMAT_OK;
}

int wmat__override_fields(wmat_pset *ps, wmat_override_item *it, int strict, const char *syntax)
{
    for (char *f = it->fields; f;) {
        char *next = strchr(f, ':');
        if (next) *next++ = '\0';
        char *eq = strchr(f, '=');
        int rc;
        if (eq) {
            *eq = '\0';
            rc = wmat__override_set(ps, it, f, eq + 1, strict);
            *eq = '=';
        } else if (f[0] == '-' || (f[0] >= '0' && f[0] <= '9')) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "override for '%s': '%s' is not KEY=VALUE (%s)", it->pattern, f, syntax);
        } else {
            rc = wmat__override_set(ps, it, f, NULL, strict);
        }
        if (next) next[-1] = ':';
        if (rc) return rc;
        f = next;
    }
    return WMAT_OK;
}
