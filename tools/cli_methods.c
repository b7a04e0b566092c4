/* The CLI's view of the method registry (src/catalog): help text, the
 * flags of the methods' keys and the `wmat methods` listing, built from the
 * descriptors, so that no method is named in tools/. */
#include "cli.h"
#include "cli_inputs.h"
#include "cli_out.h"
#include "catalog/catalog.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cli_method_names(const char *family, const char *sep, int with_kind, char *buf, size_t n)
{
    size_t k = 0;
    buf[0] = '\0';
    const wmat_method_desc *d;
    for (int i = 0; (d = wmat__method_at(i)) && k < n; i++) {
        if (strcmp(d->family, family)) continue;
        k += (size_t)snprintf(buf + k, n - k, "%s%s", k ? sep : "", d->name);
        if (with_kind && k < n) k += (size_t)snprintf(buf + k, n - k, " -> %s", d->produces);
    }
}

const char *cli_method_default(const char *family)
{
    const wmat_method_desc *d;
    for (int i = 0; (d = wmat__method_at(i)); i++)
        if (!strcmp(d->family, family)) return d->name;
    return NULL;
}

char *cli_methods_help(const char *family, const char *stats_flag, const char *epilog)
{
    size_t cap = 8192, k = 0;
    char *buf = malloc(cap);
    if (!buf) return NULL;
    k += (size_t)snprintf(buf + k, cap - k, "methods (--method NAME; each reads the keys listed, defaults shown):\n");
    const wmat_method_desc *m;
    for (int i = 0; (m = wmat__method_at(i)) && k < cap; i++) {
        if (strcmp(m->family, family)) continue;
        char needs[96];
        wmat__method_stats_text(m->stats, needs, sizeof needs);
        k += (size_t)snprintf(buf + k, cap - k, "  %-12s %s\n  %-12s needs %s%s%s; produces %s\n  %-12s keys:", m->name,
                              m->summary, "", needs, m->stats && stats_flag ? " " : "",
                              m->stats && stats_flag ? stats_flag : "", m->produces, "");
        wmat_pset ps;
        if (wmat__pset_init(&ps, m->schema)) continue;
        for (int j = 0; j < ps.n && k < cap; j++) {
            char v[64];
            wmat__param_format(&ps.spec[j], &ps.v[j], v, sizeof v);
            k += (size_t)snprintf(buf + k, cap - k, " %s=%s", ps.spec[j].name, v);
        }
        wmat__pset_free(&ps);
        if (k < cap) k += (size_t)snprintf(buf + k, cap - k, "\n");
    }
    if (epilog && k < cap) snprintf(buf + k, cap - k, "\n%s", epilog);
    return buf;
}

int cli_method_keys(const char *family, wmat_param_spec *keys, int cap, wmat_pset *ps)
{
    return wmat__family_keys(family, keys, cap) || wmat__pset_init(ps, keys) ? -1 : 0;
}

void cli_note_unread_keys(const char *cmd, const char *family, const char *method, const wmat_pset *ps)
{
    const wmat_method_desc *d = wmat__method_lookup(family, method);
    for (int i = 0; d && i < ps->n; i++)
        if (ps->v[i].set && wmat__params_find(d->schema, ps->spec[i].name, strlen(ps->spec[i].name)) < 0)
            fprintf(stderr, "wmat %s: note: method %s does not read %s; ignored\n", cmd, method, ps->spec[i].name);
}

int cli_method_needs_stats(const char *family, const char *method)
{
    const wmat_method_desc *d = wmat__method_lookup(family, method);
    return d && d->stats;
}

const char *cli_method_produces(const char *family, const char *method)
{
    const wmat_method_desc *d = wmat__method_lookup(family, method);
    return d && d->produces ? d->produces : "";
}

/* wmat methods: every method of every family, from the public listing. */
int cmd_methods(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("methods");
    const char *family = NULL;
    cli_json js = {0};
    cli_opt opts[] = {
        {"--family", OPT_STR, &family, "F", "only this family (quantization, decomposition)"},
        CLI_JSON_OPTS(&js),
        {NULL, 0, NULL, NULL, NULL},
    };
    const char *pos[1];
    int np, rc = cli_parse(cmd, argc, argv, opts, pos, 0, 0, &np);
    if (rc) return rc == 1 ? 0 : rc;
    if ((rc = cli_json_check("methods", &js))) return rc;
    const int n = wmat_method_count();
    int shown = 0;
    if (family) {
        wmat_method_about a;
        for (int i = 0; i < n && !wmat_method_info(i, &a); i++) shown += !strcmp(a.family, family);
        if (!shown) return cli_usage_error("methods", "--family: no methods of family '%s'", family);
        shown = 0;
    }
    int jfail;
    FILE *jf = cli_json_open("methods", &js, &jfail);
    if (jfail) return 1;
    if (jf) fprintf(jf, "[");
    for (int i = 0; i < n; i++) {
        wmat_method_about a;
        if (wmat_method_info(i, &a)) return cli_fail("methods");
        if (family && strcmp(a.family, family)) continue;
        char needs[96];
        wmat__method_stats_text((a.needs & WMAT_NEEDS_HESSIAN ? WMAT_MSTAT_HESSIAN : 0u) |
                                    (a.needs & WMAT_NEEDS_ACT_NORMS ? WMAT_MSTAT_ACT_NORMS : 0u) |
                                    (a.needs & WMAT_NEEDS_GRADIENTS ? WMAT_MSTAT_GRADIENTS : 0u) |
                                    (a.needs & WMAT_NEEDS_RESIDUAL ? WMAT_MSTAT_RESIDUAL : 0u),
                                needs, sizeof needs);
        if (jf) {
            fprintf(jf, "%s\n {\"name\": \"%s\", \"family\": \"%s\", \"produces\": \"%s\", \"needs\": \"%s\", \"summary\": ",
                    shown ? "," : "", a.name, a.family, a.produces, needs);
            cli_json_string(jf, a.summary);
            fprintf(jf, ", \"keys\": [");
        }
        if (!js.flag) {
            printf("%-14s %-13s -> %-8s needs %s\n  %s\n", a.name, a.family, a.produces, needs, a.summary);
        }
        for (int k = 0; k < a.n_keys; k++) {
            wmat_method_key key;
            if (wmat_method_key_info(i, k, &key)) return cli_fail("methods");
            if (jf) {
                fprintf(jf, "%s{\"key\": \"%s\", \"type\": \"%s\", \"default\": \"%s\", \"range\": \"%s\", \"help\": ",
                        k ? ", " : "", key.key, key.type, key.def, key.range);
                cli_json_string(jf, key.help);
                fprintf(jf, "}");
            }
            if (!js.flag) {
                char lhs[256];
                snprintf(lhs, sizeof lhs, "%s=%s", key.key, key.range);
                printf("    %-24s %s (default %s)\n", lhs, key.help, key.def[0] ? key.def : "none");
            }
        }
        if (jf) fprintf(jf, "]}");
        shown++;
    }
    if (jf) {
        fprintf(jf, "\n]\n");
        return cli_json_close("methods", &js);
    }
    return 0;
}
