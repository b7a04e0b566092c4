/* CPU detection, OpenBLAS as loaded, and the OPENBLAS_CORETYPE fix.
 *
 * A DYNAMIC_ARCH OpenBLAS picks its kernel family in a constructor when the
 * library is loaded, from cpuid. Builds that do not know a CPU model fall
 * back to generic SSE kernels ("Prescott") that run 5-6x slower on an
 * AVX-512 machine. OPENBLAS_CORETYPE overrides the choice but is read only
 * at load time, so the CLI re-executes itself once with it set
 * (wmat_blas_tune_reexec); the decision itself is a pure function
 * (wmat__blas_tune_decide) that tests drive with made-up inputs.
 */
#include "linalg.h"

#include <ctype.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define WMAT_X86 1
#endif

/* ---------------------------------------------------------------- OpenBLAS */

/* Declared by OpenBLAS's cblas.h; repeated so a reference cblas.h found
 * first on the include path cannot hide them. */
char *openblas_get_corename(void);
char *openblas_get_config(void);
int openblas_get_num_threads(void);
void openblas_set_num_threads(int num_threads);

const char *wmat__blas_corename(void)
{
    const char *s = openblas_get_corename();
    return s ? s : "unknown";
}
const char *wmat__blas_config(void)
{
    const char *s = openblas_get_config();
    return s ? s : "";
}
int wmat__blas_num_threads(void) { return openblas_get_num_threads(); }
void wmat__blas_set_num_threads(int n) { openblas_set_num_threads(n); }

void wmat__blas_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc)
{
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* ---------------------------------------------------------------- CPU */

static int count_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

#ifdef WMAT_X86
static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

void wmat__cpu_info(wmat_cpu_info *ci)
{
    memset(ci, 0, sizeof *ci);
    ci->logical_cpus = count_cpus();
#ifdef WMAT_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return;
    unsigned max_leaf = a;
    memcpy(ci->vendor, &b, 4);
    memcpy(ci->vendor + 4, &d, 4);
    memcpy(ci->vendor + 8, &c, 4);
    __get_cpuid(1, &a, &b, &c, &d);
    unsigned fam = (a >> 8) & 0xf, mod = (a >> 4) & 0xf;
    if (fam == 0xf) fam += (a >> 20) & 0xff;
    if (fam == 0x6 || fam >= 0xf) mod |= ((a >> 16) & 0xf) << 4;
    ci->family = (int)fam;
    ci->model_id = (int)mod;
    ci->stepping = (int)(a & 0xf);
    bool osxsave = (c >> 27) & 1;
    uint64_t xcr0 = osxsave ? xgetbv0() : 0;
    bool os_ymm = (xcr0 & 0x6) == 0x6;               /* SSE and AVX state */
    bool os_zmm = os_ymm && (xcr0 & 0xe0) == 0xe0;   /* opmask, ZMM_Hi256, Hi16_ZMM */
    bool os_amx = (xcr0 & 0x60000) == 0x60000;       /* XTILECFG, XTILEDATA */
    ci->sse42 = (c >> 20) & 1;
    ci->avx = os_ymm && ((c >> 28) & 1);
    ci->fma = ci->avx && ((c >> 12) & 1);
    if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        ci->avx2 = ci->avx && ((b >> 5) & 1);
        ci->avx512f = os_zmm && ((b >> 16) & 1);
        ci->avx512dq = ci->avx512f && ((b >> 17) & 1);
        ci->avx512bw = ci->avx512f && ((b >> 30) & 1);
        ci->avx512vl = ci->avx512f && ((b >> 31) & 1);
        ci->avx512_vnni = ci->avx512f && ((c >> 11) & 1);
        ci->amx_bf16 = os_amx && ((d >> 22) & 1);
        ci->amx_tile = os_amx && ((d >> 24) & 1);
        ci->amx_int8 = os_amx && ((d >> 25) & 1);
        unsigned max_sub = a;
        if (max_sub >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            ci->avx_vnni = ci->avx2 && ((a >> 4) & 1);
            ci->avx512_bf16 = ci->avx512f && ((a >> 5) & 1);
        }
    }
    __get_cpuid(0x80000000, &a, &b, &c, &d);
    if (a >= 0x80000004) {
        unsigned r[12];
        for (unsigned i = 0; i < 3; i++)
            __get_cpuid(0x80000002 + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
        char brand[49];
        memcpy(brand, r, 48);
        brand[48] = '\0';
        const char *p = brand;
        while (*p == ' ') p++;
        snprintf(ci->model, sizeof ci->model, "%s", p);
        for (size_t n = strlen(ci->model); n > 0 && ci->model[n - 1] == ' '; n--) ci->model[n - 1] = '\0';
    }
#endif
    if (!ci->model[0]) snprintf(ci->model, sizeof ci->model, "unknown");
}

/* ---------------------------------------------------------------- decision */

/* ISA level of an OpenBLAS x86 kernel family: 1 SSE, 2 AVX, 3 AVX2+FMA,
 * 4 AVX-512; -1 for names this table does not know (then nothing is done). */
static int core_rank(const char *name)
{
    static const struct { const char *name; int rank; } tab[] = {
        {"katmai", 1}, {"coppermine", 1}, {"northwood", 1}, {"prescott", 1}, {"banias", 1},
        {"atom", 1}, {"core2", 1}, {"penryn", 1}, {"dunnington", 1}, {"nehalem", 1},
        {"opteron", 1}, {"opteron_sse3", 1}, {"barcelona", 1}, {"bobcat", 1}, {"athlon", 1},
        {"nano", 1}, {"sandybridge", 2}, {"bulldozer", 2}, {"piledriver", 2}, {"steamroller", 2},
        {"excavator", 2}, {"haswell", 3}, {"zen", 3}, {"skylakex", 4}, {"cooperlake", 4},
        {"sapphirerapids", 4},
    };
    if (!name) return -1;
    char low[32];
    size_t n = 0;
    for (; name[n] && n + 1 < sizeof low; n++) low[n] = (char)tolower((unsigned char)name[n]);
    low[n] = '\0';
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (strcmp(low, tab[i].name) == 0) return tab[i].rank;
    return -1;
}

void wmat__blas_tune_decide(const char *corename, const char *config, const wmat_cpu_info *ci,
                            const char *user_coretype, const char *guard, wmat_blas_tune *t)
{
    memset(t, 0, sizeof *t);
    t->core_rank = core_rank(corename);
    bool amd = strcmp(ci->vendor, "AuthenticAMD") == 0 || strcmp(ci->vendor, "HygonGenuine") == 0;
    const char *best = NULL;
    if (ci->avx512f && ci->avx512bw && ci->avx512vl && ci->avx512dq) {
        t->cpu_rank = 4;
        int maj = 0, min = 0, pat = 0;
        bool cooperlake_known = config && sscanf(config, "OpenBLAS %d.%d.%d", &maj, &min, &pat) == 3 &&
                                (maj > 0 || min > 3 || (min == 3 && pat >= 11));
        best = ci->avx512_bf16 && cooperlake_known ? "Cooperlake" : "SkylakeX";
    } else if (ci->avx2 && ci->fma) {
        t->cpu_rank = 3;
        best = amd ? "Zen" : "Haswell";
    } else if (ci->avx) {
        t->cpu_rank = 2;
        best = "Sandybridge";
    } else {
        t->cpu_rank = 1;
    }
    const char *core = corename ? corename : "?";
    if (user_coretype) {
        if (guard && strcmp(guard, user_coretype) == 0)
            snprintf(t->reason, sizeof t->reason, "OPENBLAS_CORETYPE=%s set by wmat's re-exec", user_coretype);
        else
            snprintf(t->reason, sizeof t->reason, "OPENBLAS_CORETYPE=%s set by the user: left alone", user_coretype);
        return;
    }
    if (!config || !strstr(config, "DYNAMIC_ARCH")) {
        snprintf(t->reason, sizeof t->reason,
                 "OpenBLAS is built for one target (%s): OPENBLAS_CORETYPE would do nothing", core);
        return;
    }
    if (t->core_rank < 0) {
        snprintf(t->reason, sizeof t->reason, "OpenBLAS core %s is not one wmat knows: left alone", core);
        return;
    }
    if (!best || t->core_rank >= t->cpu_rank) {
        snprintf(t->reason, sizeof t->reason, "OpenBLAS core %s suits this CPU", core);
        return;
    }
    t->needed = 1;
    snprintf(t->value, sizeof t->value, "%s", best);
    snprintf(t->reason, sizeof t->reason,
             "OpenBLAS loaded core %s (ISA level %d) on a CPU with level %d: OPENBLAS_CORETYPE=%s "
             "would run its fast kernels",
             core, t->core_rank, t->cpu_rank, best);
}

void wmat__blas_tune_current(wmat_blas_tune *out)
{
    wmat_cpu_info ci;
    wmat__cpu_info(&ci);
    const char *fake = getenv("WMAT_TEST_OPENBLAS_CORENAME");
    const char *core = fake && *fake ? fake : wmat__blas_corename();
    wmat__blas_tune_decide(core, wmat__blas_config(), &ci, getenv("OPENBLAS_CORETYPE"),
                           getenv(WMAT_BLAS_TUNE_GUARD), out);
}

int wmat_blas_tune_advice(char *value, size_t cap)
{
    if (!value || cap == 0) return wmat_set_error(WMAT_ERR_INVALID, "wmat_blas_tune_advice: no buffer");
    wmat_blas_tune t;
    wmat__blas_tune_current(&t);
    value[0] = '\0';
    if (!t.needed) return 0;
    if (strlen(t.value) >= cap)
        return wmat_set_error(WMAT_ERR_INVALID, "wmat_blas_tune_advice: buffer of %zu bytes is too small", cap);
    memcpy(value, t.value, strlen(t.value) + 1);
    return 1;
}

int wmat_blas_tune_reexec(int argc, char **argv)
{
    if (argc < 1 || !argv) return wmat_set_error(WMAT_ERR_INVALID, "wmat_blas_tune_reexec: no argv");
    for (int i = 1; i < argc && argv[i]; i++) {
        if (strcmp(argv[i], "--") == 0) break;
        if (strcmp(argv[i], "--no-blas-tune") == 0) return 0;
    }
    const char *opt_out = getenv("WMAT_NO_BLAS_TUNE");
    if ((opt_out && *opt_out) || getenv(WMAT_BLAS_TUNE_GUARD) || getenv("OPENBLAS_CORETYPE")) return 0;
    wmat_blas_tune t;
    wmat__blas_tune_current(&t);
    if (!t.needed) return 0;

    /* execv needs a NULL-terminated copy (the caller's argv may not be). */
    char **args = wmat__malloc(sizeof(char *) * ((size_t)argc + 1));
    if (!args) return wmat_set_error(WMAT_ERR_NOMEM, "wmat_blas_tune_reexec: out of memory");
    for (int i = 0; i < argc; i++) args[i] = argv[i];
    args[argc] = NULL;
    if (setenv("OPENBLAS_CORETYPE", t.value, 1) != 0 || setenv(WMAT_BLAS_TUNE_GUARD, t.value, 1) != 0) {
        int e = errno;
        unsetenv("OPENBLAS_CORETYPE");
        unsetenv(WMAT_BLAS_TUNE_GUARD);
        wmat__free(args);
        return wmat_set_error(WMAT_ERR_INTERNAL, "wmat_blas_tune_reexec: setenv: %s", strerror(e));
    }
    fflush(NULL); /* buffered output would otherwise be lost */
    execv("/proc/self/exe", args);
    int e = errno;
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv(WMAT_BLAS_TUNE_GUARD);
    wmat__free(args);
    return wmat_set_error(WMAT_ERR_IO, "wmat_blas_tune_reexec: execv(/proc/self/exe): %s", strerror(e));
}
