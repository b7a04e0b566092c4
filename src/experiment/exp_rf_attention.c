/* Random-features attention against the number of heads (Fu, Guo, Bai,
 * Mei, NeurIPS 2023, "What can a single attention layer learn? A study
 * through the random features lens").
 *
 * The paper's model: one multi-head attention layer reading a query x_0
 * and N keys x_1..x_N (unit vectors in R^d, x~ = [x; 1]), with M heads
 * whose query-key matrices W_m are random and frozen and whose value
 * vectors v_m are trained:
 *
 *     f_M(x_0, X) = sum_m (1/N) sum_i relu(x~_0^T W_m x~_i) <v_m, x~_i>.
 *
 * Fitting the v_m is linear least squares over the M (d + 1) features
 * phi_{m,j} = (1/N) sum_i relu(x~_0^T W_m x~_i) x~_{i,j} (ridge with a tiny
 * penalty, through LAPACK's Cholesky and inverse). W_m = mu I + G_m with
 * G_m iid N(0, 1/(d + 1)), the paper's non-zero-mean sampling.
 *
 * Two targets, both permutation invariant in the keys (the paper's class):
 *   - kernel: (1/N) sum_i E_W relu(x~_0^T W x~_i), the infinite-head limit
 *     of the model itself (v = e_{d+1}): x~_0^T W x~_i ~ N(mu (1 + rho_i),
 *     4 / (d + 1)) with rho_i = <x_0, x_i>, so the target is the closed
 *     form m Phi(m / s) + s phi(m / s). The class contains it as M grows;
 *     the random-features rate says the squared error falls as 1/M.
 *   - quad: (1/N) sum_i (d rho_i^2 - 1), a degree-2 function of the
 *     query-key products that the model reaches only through the
 *     nonlinearity (the paper's "natural" targets, whose cost grows with d).
 *
 * Measured: the test error relative to the target's variance, mean and sd
 * over seeds, per (target, d, N, M); the fitted log-log slope of error
 * against M per series (the bound's rate is -1 for the squared error). The
 * training set is the same for every M of a series (mult * P_max + 200
 * samples, P_max the largest feature count), nested heads (M uses the
 * first M of M_max). */
#include "experiment.h"
#include "core/internal.h"
#include "linalg/dense.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LIST 16

static const wmat_param_spec k_schema[] = {
    {"targets", WMAT_PARAM_STRING, "kernel,quad", 0, 0, NULL, "comma-separated targets: kernel (in the class), quad", NULL},
    {"dims", WMAT_PARAM_STRING, "4,8,16", 0, 0, NULL, "comma-separated input dimensions d", NULL},
    {"heads", WMAT_PARAM_STRING, "4,8,16,32,64", 0, 0, NULL, "comma-separated head counts M (random features)", NULL},
    {"keys", WMAT_PARAM_STRING, "8", 0, 0, NULL, "comma-separated key counts N", NULL},
    {"mu", WMAT_PARAM_FLOAT, "1", 0, 10, NULL, "mean of the query-key matrices' diagonal", NULL},
    {"train_mult", WMAT_PARAM_INT, "4", 1, 64, NULL, "training samples per feature of the largest M (plus 200)", NULL},
    {"test", WMAT_PARAM_INT, "1000", 50, 100000, NULL, "test samples", NULL},
    {"seeds", WMAT_PARAM_INT, "3", 1, 100, NULL, "independent draws (data and heads) per point", NULL},
    {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
};

enum { T_KERNEL = 0, T_QUAD, T_COUNT };
static const char *const k_target_names[T_COUNT] = {"kernel", "quad"};

static int parse_list(const char *what, const char *text, int lo, int hi, int *out, int *n)
{
    *n = 0;
    const char *s = text;
    while (*s) {
        char *end;
        const long v = strtol(s, &end, 10);
        if (end == s || v < lo || v > hi || (*end && *end != ',') || *n >= MAX_LIST)
            return wmat_set_error(WMAT_ERR_INVALID,
                                  "experiment rf-attention: %s '%s': at most %d integers in %d..%d, comma-separated",
                                  what, text, MAX_LIST, lo, hi);
        out[(*n)++] = (int)v;
        s = *end ? end + 1 : end;
    }
    if (!*n) return wmat_set_error(WMAT_ERR_INVALID, "experiment rf-attention: no %s given", what);
    return WMAT_OK;
}

static int parse_targets(const char *text, int *out, int *n)
{
    *n = 0;
    const char *s = text;
    while (*s) {
        const char *e = strchr(s, ',');
        const size_t len = e ? (size_t)(e - s) : strlen(s);
        int k = -1;
        for (int t = 0; t < T_COUNT; t++)
            if (strlen(k_target_names[t]) == len && !strncmp(s, k_target_names[t], len)) k = t;
        if (k < 0 || *n >= T_COUNT)
            return wmat_set_error(WMAT_ERR_INVALID, "experiment rf-attention: targets '%s': each is kernel or quad, once",
                                  text);
        out[(*n)++] = k;
        s = e ? e + 1 : s + len;
    }
    if (!*n) return wmat_set_error(WMAT_ERR_INVALID, "experiment rf-attention: no targets given");
    return WMAT_OK;
}

/* A point uniform on the unit sphere of R^d, then 1 appended. */
static void sphere_point(wmat_rng *r, int d, double *x)
{
    double s = 0;
    for (int j = 0; j < d; j++) {
        x[j] = wmat_rng_normal(r);
        s += x[j] * x[j];
    }
    const double inv = 1.0 / sqrt(s > 0 ? s : 1);
    for (int j = 0; j < d; j++) x[j] *= inv;
    x[d] = 1.0;
}

static double norm_cdf(double z) { return 0.5 * erfc(-z / M_SQRT2); }

/* One sample: its features (M_max (d + 1)) and both targets. W: M_max
 * matrices (d + 1)^2. xs: scratch (N + 1) (d + 1). */
static void sample(wmat_rng *r, int d, int N, int Mx, double mu, const double *W, double *xs, double *phi,
                   double *y)
{
    const int e = d + 1;
    for (int i = 0; i <= N; i++) sphere_point(r, d, xs + (size_t)i * e);
    const double *x0 = xs;
    const double s = 2.0 / sqrt((double)e);
    double kern = 0, quad = 0;
    for (int i = 1; i <= N; i++) {
        double rho = 0;
        for (int j = 0; j < d; j++) rho += x0[j] * xs[(size_t)i * e + j];
        const double m = mu * (1.0 + rho);
        kern += m * norm_cdf(m / s) + s * exp(-0.5 * (m / s) * (m / s)) / sqrt(2 * M_PI);
        quad += d * rho * rho - 1.0;
    }
    y[T_KERNEL] = kern / N;
    y[T_QUAD] = quad / N;
    memset(phi, 0, (size_t)Mx * e * sizeof *phi);
    for (int m = 0; m < Mx; m++) {
        const double *Wm = W + (size_t)m * e * e;
        double *pm = phi + (size_t)m * e;
        /* u = x~_0^T W_m, then relu(u . x~_i) for each key */
        double u[257]; /* e <= 257: dims are at most 256 */
        for (int k = 0; k < e; k++) {
            double a = 0;
            for (int j = 0; j < e; j++) a += x0[j] * Wm[(size_t)j * e + k];
            u[k] = a;
        }
        for (int i = 1; i <= N; i++) {
            const double *xi = xs + (size_t)i * e;
            double z = 0;
            for (int k = 0; k < e; k++) z += u[k] * xi[k];
            if (z <= 0) continue;
            for (int k = 0; k < e; k++) pm[k] += z * xi[k];
        }
        for (int k = 0; k < e; k++) pm[k] /= N;
    }
}

/* Ridge fit on the first P columns of Phi (n, ld), targets Y (n, nt): the
 * weights (P, nt) into w. G: scratch (P, P). */
static int ridge(const double *Phi, int n, int ld, int P, const double *Y, int nt, double *G, double *rhs, double *w)
{
    int rc = wmat__dsyrk_upper(1, P, n, 1.0, Phi, ld, 0.0, G, P);
    if (rc) return rc;
    double tr = 0;
    for (int j = 0; j < P; j++) tr += G[(size_t)j * P + j];
    const double lam = 1e-8 * (tr / P) + 1e-12;
    for (int j = 0; j < P; j++) G[(size_t)j * P + j] += lam;
    if ((rc = wmat__dpotrf_upper(P, G, P)) || (rc = wmat__dpotri_upper(P, G, P))) return rc;
    for (int i = 0; i < P; i++)
        for (int j = 0; j < i; j++) G[(size_t)i * P + j] = G[(size_t)j * P + i];
    /* rhs = Phi^T Y (P, nt), w = G^-1 rhs */
    if ((rc = wmat__dgemm(1, 0, P, nt, n, 1.0, Phi, ld, Y, nt, 0.0, rhs, nt))) return rc;
    return wmat__dgemm(0, 0, P, nt, P, 1.0, G, P, rhs, nt, 0.0, w, nt);
}

static int run(const wmat_pset *ps, const wmat_exp_env *env, wmat_table *out)
{
    int dims[MAX_LIST], heads[MAX_LIST], keys[MAX_LIST], targets[T_COUNT];
    int nd, nh, nk, ntg;
    int rc = parse_targets(wmat__pset_str(ps, "targets"), targets, &ntg);
    if (!rc) rc = parse_list("dims", wmat__pset_str(ps, "dims"), 2, 256, dims, &nd);
    if (!rc) rc = parse_list("heads", wmat__pset_str(ps, "heads"), 1, 4096, heads, &nh);
    if (!rc) rc = parse_list("keys", wmat__pset_str(ps, "keys"), 1, 1024, keys, &nk);
    if (rc) return rc;
    const double mu = wmat__pset_float(ps, "mu");
    const int mult = (int)wmat__pset_int(ps, "train_mult"), n_test = (int)wmat__pset_int(ps, "test");
    const int seeds = (int)wmat__pset_int(ps, "seeds");
    int Mx = 0;
    for (int i = 0; i < nh; i++) Mx = heads[i] > Mx ? heads[i] : Mx;
    if ((rc = wmat__table_init(out, "Random-features attention: test error against heads M (random features)",
                               "M|d|N|features|train|rel_error|sd|rate_1/M|slope")))
        return rc;
    char slopes[2048] = "";
    size_t sl = 0;
    for (int di = 0; di < nd; di++)
        for (int ki = 0; ki < nk; ki++) {
            const int d = dims[di], N = keys[ki], e = d + 1;
            const int Pmax = Mx * e;
            const int n = mult * Pmax + 200;
            if ((double)n * Pmax > 6e7 || (double)Pmax * Pmax > 2.5e7)
                return wmat_set_error(WMAT_ERR_INVALID,
                                      "experiment rf-attention: d %d with M %d gives %d features x %d samples: too large "
                                      "(keep features x samples under 6e7)",
                                      d, Mx, Pmax, n);
            double *W = malloc((size_t)Mx * e * e * sizeof *W);
            double *Phi = malloc((size_t)n * Pmax * sizeof *Phi), *Y = malloc((size_t)n * T_COUNT * sizeof *Y);
            double *Pt = malloc((size_t)n_test * Pmax * sizeof *Pt), *Yt = malloc((size_t)n_test * T_COUNT * sizeof *Yt);
            double *G = malloc((size_t)Pmax * Pmax * sizeof *G), *rhs = malloc((size_t)Pmax * T_COUNT * sizeof *rhs);
            double *w = malloc((size_t)Pmax * T_COUNT * sizeof *w), *xs = malloc((size_t)(N + 1) * e * sizeof *xs);
            /* err[target][M index][seed] */
            double *err = calloc((size_t)T_COUNT * nh * seeds, sizeof *err);
            rc = W && Phi && Y && Pt && Yt && G && rhs && w && xs && err
                     ? WMAT_OK
                     : wmat_set_error(WMAT_ERR_NOMEM, "experiment rf-attention: out of memory (%d features, %d samples)",
                                      Pmax, n);
            for (int s = 0; !rc && s < seeds; s++) {
                wmat_rng rng;
                wmat_rng_seed(&rng, env->seed * 1000003u + (uint64_t)s * 7919u + (uint64_t)d * 131u + (uint64_t)N);
                const double gs = 1.0 / sqrt((double)e);
                for (int m = 0; m < Mx; m++)
                    for (int j = 0; j < e; j++)
                        for (int k = 0; k < e; k++)
                            W[((size_t)m * e + j) * e + k] = gs * wmat_rng_normal(&rng) + (j == k ? mu : 0.0);
                for (int i = 0; i < n; i++) sample(&rng, d, N, Mx, mu, W, xs, Phi + (size_t)i * Pmax, Y + (size_t)i * T_COUNT);
                for (int i = 0; i < n_test; i++)
                    sample(&rng, d, N, Mx, mu, W, xs, Pt + (size_t)i * Pmax, Yt + (size_t)i * T_COUNT);
                double mean[T_COUNT] = {0}, var[T_COUNT] = {0};
                for (int i = 0; i < n_test; i++)
                    for (int t = 0; t < T_COUNT; t++) mean[t] += Yt[(size_t)i * T_COUNT + t] / n_test;
                for (int i = 0; i < n_test; i++)
                    for (int t = 0; t < T_COUNT; t++) {
                        const double dv = Yt[(size_t)i * T_COUNT + t] - mean[t];
                        var[t] += dv * dv / n_test;
                    }
                for (int hi = 0; !rc && hi < nh; hi++) {
                    const int P = heads[hi] * e;
                    if ((rc = ridge(Phi, n, Pmax, P, Y, T_COUNT, G, rhs, w))) break;
                    double se[T_COUNT] = {0};
                    for (int i = 0; i < n_test; i++) {
                        const double *f = Pt + (size_t)i * Pmax;
                        for (int t = 0; t < T_COUNT; t++) {
                            double pred = 0;
                            for (int j = 0; j < P; j++) pred += f[j] * w[(size_t)j * T_COUNT + t];
                            const double r = pred - Yt[(size_t)i * T_COUNT + t];
                            se[t] += r * r / n_test;
                        }
                    }
                    for (int t = 0; t < T_COUNT; t++)
                        err[((size_t)t * nh + hi) * seeds + s] = se[t] / (var[t] > 0 ? var[t] : 1);
                }
                if (!rc && env->ctx->progress &&
                    env->ctx->progress(env->ctx->progress_user, "rf-attention", (uint64_t)(s + 1), (uint64_t)seeds))
                    rc = wmat_set_error(WMAT_ERR_CANCELLED, "experiment rf-attention: cancelled");
            }
            for (int ti = 0; !rc && ti < ntg; ti++) {
                const int t = targets[ti];
                char series[64];
                snprintf(series, sizeof series, "%s d=%d N=%d", k_target_names[t], d, N);
                /* least-squares slope of log(mean error) on log M */
                double sx = 0, sy = 0, sxx = 0, sxy = 0, first = NAN, m0 = 0;
                double mean_e[MAX_LIST], sd_e[MAX_LIST];
                for (int hi = 0; hi < nh; hi++) {
                    double a = 0, a2 = 0;
                    for (int s = 0; s < seeds; s++) {
                        const double v = err[((size_t)t * nh + hi) * seeds + s];
                        a += v;
                        a2 += v * v;
                    }
                    mean_e[hi] = a / seeds;
                    sd_e[hi] = seeds > 1 ? sqrt(fmax(0, (a2 - seeds * mean_e[hi] * mean_e[hi]) / (seeds - 1))) : 0;
                    const double lx = log((double)heads[hi]), ly = log(fmax(mean_e[hi], 1e-300));
                    sx += lx, sy += ly, sxx += lx * lx, sxy += lx * ly;
                    if (hi == 0) first = mean_e[hi], m0 = heads[hi];
                }
                const double den = nh * sxx - sx * sx;
                const double slope = nh > 1 && den > 0 ? (nh * sxy - sx * sy) / den : NAN;
                for (int hi = 0; !rc && hi < nh; hi++) {
                    const double row[] = {heads[hi], d, N, (double)heads[hi] * e, n, mean_e[hi], sd_e[hi],
                                          first * m0 / heads[hi], slope};
                    rc = wmat__table_add(out, series, row);
                }
                if (sl < sizeof slopes)
                    sl += (size_t)snprintf(slopes + sl, sizeof slopes - sl, "%s%s %.2f", sl ? ", " : "", series, slope);
            }
            free(W), free(Phi), free(Y), free(Pt), free(Yt), free(G), free(rhs), free(w), free(xs), free(err);
            if (rc) return rc;
        }
    if ((rc = wmat__table_chart(out, "M", "rel_error", 1, 1))) return rc;
    return wmat__table_note(out,
                            "Claim (Fu et al. 2023): a random-feature attention layer with M heads approximates targets "
                            "of the form (1/N) sum_i F(x_0, x_i) with squared error O(B(F)^2 / M), independent of the "
                            "number of keys N, B(F) growing with d for degree-p targets. rel_error: test MSE / target "
                            "variance; rate_1/M: the first point scaled by 1/M. Fitted slopes of log error on log M "
                            "(bound: -1): %s.",
                            slopes);
}

const wmat_experiment wmat__exp_rf_attention = {
    .name = "rf-attention",
    .family = WMAT_FAMILY_EXPERIMENT,
    .schema = k_schema,
    .produces = "table",
    .summary = "random-features attention (frozen query-key, fitted values): test error vs heads M, d and N, against "
               "the 1/M rate",
    .run = run,
    .smoke = "dims=4;heads=2,4,8;keys=4;seeds=1;test=100;train_mult=2",
};
