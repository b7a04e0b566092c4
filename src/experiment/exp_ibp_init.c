/* Interval-bound tightness of deep linear networks at Gaussian
 * initialisation against depth and width (Mao, Mueller, Fischer, Vechev,
 * ICLR 2024, "Understanding certified training with interval bound
 * propagation", their Theorem on initialisation). For iid N(0, s^2) weights
 * the tightness of L layers with inner widths n_1..n_{L-1} tends to
 * prod_l sqrt(pi / (2 n_l)): the paper's claim that IBP loosens
 * exponentially with depth and with the square root of width. Measured
 * with analyze's wmat_ibp_tightness over `seeds` draws. */
#include "experiment.h"
#include "core/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const wmat_param_spec k_schema[] = {
    {"widths", WMAT_PARAM_STRING, "16,64,256", 0, 0, NULL, "comma-separated layer widths (input, inner and output alike)", NULL},
    {"max_depth", WMAT_PARAM_INT, "6", 1, 12, NULL, "layers of the deepest chain (depth 1..max_depth)", NULL},
    {"seeds", WMAT_PARAM_INT, "3", 1, 100, NULL, "independent draws per point (mean and sd)", NULL},
    {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
};

static int run(const wmat_pset *ps, const wmat_exp_env *env, wmat_table *out)
{
    const int max_depth = (int)wmat__pset_int(ps, "max_depth"), seeds = (int)wmat__pset_int(ps, "seeds");
    const char *widths = wmat__pset_str(ps, "widths");
    int rc = wmat__table_init(out, "IBP tightness of Gaussian deep linear networks at initialisation",
                              "depth|width|tightness|sd|predicted|measured/predicted");
    if (rc) return rc;
    const char *w = widths;
    int n_w = 0;
    while (*w) {
        char *end;
        const long width = strtol(w, &end, 10);
        if (end == w || width < 1 || width > 4096 || (*end && *end != ','))
            return wmat_set_error(WMAT_ERR_INVALID, "experiment ibp-init: widths '%s': widths are integers in 1..4096",
                                  widths);
        w = *end ? end + 1 : end;
        n_w++;
        char series[32];
        snprintf(series, sizeof series, "width %ld", width);
        const int64_t n = width;
        float **W = calloc((size_t)max_depth, sizeof *W);
        int64_t *dims = malloc((size_t)(max_depth + 1) * sizeof *dims);
        rc = W && dims ? WMAT_OK : wmat_set_error(WMAT_ERR_NOMEM, "experiment ibp-init: out of memory");
        for (int l = 0; !rc && l < max_depth; l++) {
            if (!(W[l] = malloc((size_t)(n * n) * sizeof(float))))
                rc = wmat_set_error(WMAT_ERR_NOMEM, "experiment ibp-init: out of memory");
        }
        for (int l = 0; dims && l <= max_depth; l++) dims[l] = n;
        for (int depth = 1; !rc && depth <= max_depth; depth++) {
            double sum = 0, sum2 = 0;
            for (int s = 0; !rc && s < seeds; s++) {
                wmat_rng rng;
                wmat_rng_seed(&rng, env->seed * 1000003u + (uint64_t)(s * 131 + depth * 7) + (uint64_t)n);
                /* scale 1/sqrt(n) keeps the chain's values O(1); tightness does not depend on it */
                const float scale = 1.0f / sqrtf((float)n);
                for (int l = 0; l < depth; l++)
                    for (int64_t i = 0; i < n * n; i++) W[l][i] = scale * wmat_rng_normal(&rng);
                double t = NAN;
                rc = wmat_ibp_tightness((const float *const *)W, dims, depth, &t, NULL, NULL);
                sum += t;
                sum2 += t * t;
            }
            if (rc) break;
            const double mean = sum / seeds, var = seeds > 1 ? (sum2 - seeds * mean * mean) / (seeds - 1) : 0;
            const double pred = pow(M_PI / (2.0 * (double)n), 0.5 * (depth - 1));
            const double row[] = {depth, (double)n, mean, sqrt(fmax(var, 0)), pred, mean / pred};
            rc = wmat__table_add(out, series, row);
            if (!rc && env->ctx->progress &&
                env->ctx->progress(env->ctx->progress_user, series, (uint64_t)depth, (uint64_t)max_depth))
                rc = wmat_set_error(WMAT_ERR_CANCELLED, "experiment ibp-init: cancelled");
        }
        for (int l = 0; W && l < max_depth; l++) free(W[l]);
        free(W);
        free(dims);
        if (rc) return rc;
    }
    if (!n_w) return wmat_set_error(WMAT_ERR_INVALID, "experiment ibp-init: no widths given");
    if ((rc = wmat__table_chart(out, "depth", "tightness", 0, 1))) return rc;
    return wmat__table_note(out, "Claim (Mao et al. 2024): at initialisation, tightness = prod over inner layers of "
                                 "sqrt(pi / (2 width)), so it falls exponentially with depth and as 1/sqrt(width). "
                                 "measured/predicted near 1 reproduces it.");
}

const wmat_experiment wmat__exp_ibp_init = {
    .name = "ibp-init",
    .family = WMAT_FAMILY_EXPERIMENT,
    .schema = k_schema,
    .produces = "table",
    .summary = "IBP tightness of Gaussian deep linear networks vs depth and width, against the paper's law",
    .run = run,
    .smoke = "widths=8,32;max_depth=3;seeds=2",
};
