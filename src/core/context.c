#include "internal.h"

#include <math.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

wmat_context wmat_context_default(void)
{
    wmat_context c = {.n_threads = 0, .progress = NULL, .progress_user = NULL, .gemm = WMAT_GEMM_AUTO, .act8 = -1};
    return c;
}

int wmat_context_threads(const wmat_context *ctx)
{
    if (ctx && ctx->n_threads > 0) return ctx->n_threads;
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

double wmat__now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

bool wmat__all_finite(const float *x, size_t n, size_t *bad_index)
{
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            if (bad_index) *bad_index = i;
            return false;
        }
    }
    return true;
}

/* xoshiro256** seeded through splitmix64 (Vigna's recommendation). */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void wmat_rng_seed(wmat_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t wmat_rng_u64(wmat_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float wmat_rng_uniform(wmat_rng *r) { return (float)(wmat_rng_u64(r) >> 40) * (1.0f / 16777216.0f); }

float wmat_rng_normal(wmat_rng *r)
{
    /* Box-Muller in double; one value per call keeps the state simple. */
    double u1 = ((double)(wmat_rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (double)(wmat_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
