/* oneDNN backend: dnnl_sgemm, dnnl_gemm_s8s8s32 / u8s8s32 (row-major, 'N' /
 * 'T'), and bf16 x bf16 -> f32 through the matmul primitive. Without
 * WMAT_HAVE_DNNL every entry reports WMAT_ERR_UNSUPPORTED.
 *
 * Threads: Debian's oneDNN uses the OpenMP runtime and sizes its work by
 * omp_get_max_threads() of the calling thread, so each call sets that to
 * the count the dispatcher asked for and puts it back afterwards (inside a
 * parallel region the dispatcher asks for 1).
 */
#include "linalg.h"

#include <stdio.h>
#include <string.h>

#include <omp.h>

#ifdef WMAT_HAVE_DNNL
#include <dnnl.h>

static dnnl_engine_t g_engine; /* created once by wmat__dnnl_init, never freed */

bool wmat__dnnl_built(void) { return true; }

int wmat__dnnl_init(void)
{
    if (g_engine) return WMAT_OK;
    dnnl_status_t st = dnnl_engine_create(&g_engine, dnnl_cpu, 0);
    if (st != dnnl_success) {
        g_engine = NULL;
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "oneDNN: cannot create a CPU engine (status %d)", (int)st);
    }
    return WMAT_OK;
}

static const char *isa_name(dnnl_cpu_isa_t isa)
{
    switch ((int)isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    default: return "other";
    }
}

void wmat__dnnl_describe(char *buf, size_t cap)
{
    const dnnl_version_t *v = dnnl_version();
    const char *rt = v->cpu_runtime == DNNL_RUNTIME_OMP   ? "OpenMP"
                     : v->cpu_runtime == DNNL_RUNTIME_SEQ ? "sequential"
                     : v->cpu_runtime == DNNL_RUNTIME_TBB ? "TBB"
                                                          : "other";
    snprintf(buf, cap, "%d.%d.%d (git %.12s, cpu runtime %s, isa %s)", v->major, v->minor, v->patch,
             v->hash ? v->hash : "?", rt, isa_name(dnnl_get_effective_cpu_isa()));
}

static int dnnl_fail(const char *what, dnnl_status_t st)
{
    return wmat_set_error(WMAT_ERR_INTERNAL, "oneDNN %s failed (status %d)", what, (int)st);
}

/* Run one oneDNN call with omp_get_max_threads() == nt. */
#define WITH_THREADS(nt, call)                                   \
    do {                                                         \
        int prev_ = omp_get_max_threads();                       \
        if (prev_ != (nt)) omp_set_num_threads(nt);              \
        st = (call);                                             \
        if (prev_ != (nt)) omp_set_num_threads(prev_);           \
    } while (0)

int wmat__dnnl_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc, int nt)
{
    dnnl_status_t st;
    WITH_THREADS(nt, dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta,
                                C, ldc));
    return st == dnnl_success ? WMAT_OK : dnnl_fail("dnnl_sgemm", st);
}

int wmat__dnnl_s8s8s32(int ta, int tb, int M, int N, int K, const int8_t *A, int lda,
                       const int8_t *B, int ldb, int accumulate, int32_t *C, int ldc, int nt)
{
    const int32_t co = 0;
    dnnl_status_t st;
    WITH_THREADS(nt, dnnl_gemm_s8s8s32(ta ? 'T' : 'N', tb ? 'T' : 'N', 'F', M, N, K, 1.0f, A, lda, 0,
                                       B, ldb, 0, accumulate ? 1.0f : 0.0f, C, ldc, &co));
    return st == dnnl_success ? WMAT_OK : dnnl_fail("dnnl_gemm_s8s8s32", st);
}

int wmat__dnnl_u8s8s32(int ta, int tb, int M, int N, int K, const uint8_t *A, int lda,
                       const int8_t *B, int ldb, int accumulate, int32_t *C, int ldc, int nt)
{
    const int32_t co = 0;
    dnnl_status_t st;
    WITH_THREADS(nt, dnnl_gemm_u8s8s32(ta ? 'T' : 'N', tb ? 'T' : 'N', 'F', M, N, K, 1.0f, A, lda, 0,
                                       B, ldb, 0, accumulate ? 1.0f : 0.0f, C, ldc, &co));
    return st == dnnl_success ? WMAT_OK : dnnl_fail("dnnl_gemm_u8s8s32", st);
}

/* bf16 matmul: src (M, K) and weights (K, N) described by strides, so the
 * transposes and leading dimensions need no copies; alpha is the output
 * scale and beta a sum post-op (absent when beta == 0: C is not read).
 * oneDNN's primitive cache keeps the JIT kernel between calls of the same
 * shape; descriptors are rebuilt each call (tens of microseconds). */
int wmat__dnnl_bf16(int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A, int lda,
                    const uint16_t *B, int ldb, float beta, float *C, int ldc, int nt)
{
    if (!g_engine) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "oneDNN: no engine");
    dnnl_memory_desc_t amd, bmd, cmd;
    dnnl_matmul_desc_t desc;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t ops = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_memory_t am = NULL, bm = NULL, cm = NULL;
    dnnl_stream_t stream = NULL;
    const char *what = "matmul setup";
    int rc = WMAT_OK;
    dnnl_status_t st;

    dnnl_dims_t ad = {M, K}, as = {ta ? 1 : lda, ta ? lda : 1};
    dnnl_dims_t bd = {K, N}, bs = {tb ? 1 : ldb, tb ? ldb : 1};
    dnnl_dims_t cd = {M, N}, cs = {ldc, 1};
#define TRY(call, name)                   \
    do {                                  \
        what = name;                      \
        if ((st = (call)) != dnnl_success) goto fail; \
    } while (0)
    TRY(dnnl_memory_desc_init_by_strides(&amd, 2, ad, dnnl_bf16, as), "memory desc A");
    TRY(dnnl_memory_desc_init_by_strides(&bmd, 2, bd, dnnl_bf16, bs), "memory desc B");
    TRY(dnnl_memory_desc_init_by_strides(&cmd, 2, cd, dnnl_f32, cs), "memory desc C");
    TRY(dnnl_matmul_desc_init(&desc, &amd, &bmd, NULL, &cmd), "matmul desc");
    TRY(dnnl_primitive_attr_create(&attr), "attr");
    if (alpha != 1.0f) TRY(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha), "output scale");
    if (beta != 0.0f) {
        TRY(dnnl_post_ops_create(&ops), "post ops");
        TRY(dnnl_post_ops_append_sum(ops, beta), "sum post op");
        TRY(dnnl_primitive_attr_set_post_ops(attr, ops), "set post ops");
    }
    {
        int prev = omp_get_max_threads();
        if (prev != nt) omp_set_num_threads(nt); /* primitives are built for a thread count */
        what = "matmul primitive";
        st = dnnl_primitive_desc_create(&pd, &desc, attr, g_engine, NULL);
        if (st == dnnl_success) st = dnnl_primitive_create(&prim, pd);
        if (st == dnnl_success) {
            what = "matmul execute";
            st = dnnl_memory_create(&am, &amd, g_engine, (void *)A);
            if (st == dnnl_success) st = dnnl_memory_create(&bm, &bmd, g_engine, (void *)B);
            if (st == dnnl_success) st = dnnl_memory_create(&cm, &cmd, g_engine, C);
            if (st == dnnl_success) st = dnnl_stream_create(&stream, g_engine, dnnl_stream_default_flags);
            if (st == dnnl_success) {
                dnnl_exec_arg_t args[3] = {
                    {DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}};
                st = dnnl_primitive_execute(prim, stream, 3, args);
                if (st == dnnl_success) st = dnnl_stream_wait(stream);
            }
        }
        if (prev != nt) omp_set_num_threads(prev);
        if (st != dnnl_success) goto fail;
    }
    goto done;
#undef TRY
fail:
    rc = wmat_set_error(st == dnnl_unimplemented ? WMAT_ERR_UNSUPPORTED : WMAT_ERR_INTERNAL,
                        "oneDNN bf16 %s failed (status %d)", what, (int)st);
done:
    if (stream) dnnl_stream_destroy(stream);
    if (am) dnnl_memory_destroy(am);
    if (bm) dnnl_memory_destroy(bm);
    if (cm) dnnl_memory_destroy(cm);
    if (prim) dnnl_primitive_destroy(prim);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (ops) dnnl_post_ops_destroy(ops);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return rc;
}

/* Packed weights: a matmul primitive whose weights are in the layout the
 * implementation chose (format "any"), reordered once here. M is a runtime
 * dimension so one primitive serves every window length; accumulation is a
 * second primitive with a sum post-op over the same packed weights. */
struct wmat__packed_gemm {
    int N, K;
    dnnl_primitive_t prim[2]; /* [accumulate] */
    dnnl_memory_t w;          /* packed weights, allocated by oneDNN */
    size_t bytes;
};

void wmat__dnnl_packed_free(wmat__packed_gemm *p)
{
    if (!p) return;
    for (int i = 0; i < 2; i++)
        if (p->prim[i]) dnnl_primitive_destroy(p->prim[i]);
    if (p->w) dnnl_memory_destroy(p->w);
    wmat__free(p);
}

size_t wmat__dnnl_packed_bytes(const wmat__packed_gemm *p) { return p->bytes; }

int wmat__dnnl_packed_create(wmat__packed_gemm **out, const float *W, int N, int K)
{
    *out = NULL;
    if (!g_engine) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "oneDNN: no engine");
    wmat__packed_gemm *p = wmat__calloc(1, sizeof *p);
    if (!p) return wmat_set_error(WMAT_ERR_NOMEM, "packed GEMM: out of memory");
    p->N = N;
    p->K = K;
    dnnl_memory_desc_t amd, bany, bplain, cmd;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t ops = NULL;
    dnnl_primitive_desc_t pd[2] = {NULL, NULL}, rpd = NULL;
    dnnl_primitive_t reorder = NULL;
    dnnl_memory_t src = NULL;
    dnnl_stream_t stream = NULL;
    const char *what = "setup";
    dnnl_status_t st;
    int rc = WMAT_OK;
    dnnl_dims_t ad = {DNNL_RUNTIME_DIM_VAL, K}, as = {K, 1};
    dnnl_dims_t bd = {K, N}, bs = {1, K}; /* W (N, K) row-major is (K, N) with strides (1, K) */
    dnnl_dims_t cd = {DNNL_RUNTIME_DIM_VAL, N}, cs = {N, 1};
#define TRY(call, name)                               \
    do {                                              \
        what = name;                                  \
        if ((st = (call)) != dnnl_success) goto fail; \
    } while (0)
    TRY(dnnl_memory_desc_init_by_strides(&amd, 2, ad, dnnl_f32, as), "memory desc X");
    TRY(dnnl_memory_desc_init_by_strides(&bplain, 2, bd, dnnl_f32, bs), "memory desc W");
    TRY(dnnl_memory_desc_init_by_tag(&bany, 2, bd, dnnl_f32, dnnl_format_tag_any), "memory desc packed W");
    TRY(dnnl_memory_desc_init_by_strides(&cmd, 2, cd, dnnl_f32, cs), "memory desc Y");
    dnnl_matmul_desc_t desc;
    TRY(dnnl_matmul_desc_init(&desc, &amd, &bany, NULL, &cmd), "matmul desc");
    TRY(dnnl_primitive_attr_create(&attr), "attr");
    TRY(dnnl_post_ops_create(&ops), "post ops");
    TRY(dnnl_post_ops_append_sum(ops, 1.0f), "sum post op");
    TRY(dnnl_primitive_attr_set_post_ops(attr, ops), "set post ops");
    TRY(dnnl_primitive_desc_create(&pd[0], &desc, NULL, g_engine, NULL), "matmul primitive desc");
    TRY(dnnl_primitive_desc_create(&pd[1], &desc, attr, g_engine, NULL), "matmul primitive desc (sum)");
    const dnnl_memory_desc_t *wmd = dnnl_primitive_desc_query_md(pd[0], dnnl_query_weights_md, 0);
    if (!wmd || !dnnl_memory_desc_equal(wmd, dnnl_primitive_desc_query_md(pd[1], dnnl_query_weights_md, 0))) {
        st = dnnl_unimplemented;
        what = "one weight layout for both primitives";
        goto fail;
    }
    /* Eval runs one primitive from several threads at once; with a library
     * scratchpad that could be shared, so such implementations are not used. */
    for (int i = 0; i < 2; i++) {
        const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd[i], dnnl_query_scratchpad_md, 0);
        if (smd && dnnl_memory_desc_get_size(smd) > 0) {
            st = dnnl_unimplemented;
            what = "an implementation without scratchpad";
            goto fail;
        }
    }
    p->bytes = dnnl_memory_desc_get_size(wmd);
    TRY(dnnl_primitive_create(&p->prim[0], pd[0]), "matmul primitive");
    TRY(dnnl_primitive_create(&p->prim[1], pd[1]), "matmul primitive (sum)");
    TRY(dnnl_memory_create(&p->w, wmd, g_engine, DNNL_MEMORY_ALLOCATE), "packed weight memory");
    TRY(dnnl_memory_create(&src, &bplain, g_engine, (void *)W), "weight memory");
    TRY(dnnl_reorder_primitive_desc_create(&rpd, &bplain, g_engine, wmd, g_engine, NULL), "reorder desc");
    TRY(dnnl_primitive_create(&reorder, rpd), "reorder primitive");
    TRY(dnnl_stream_create(&stream, g_engine, dnnl_stream_default_flags), "stream");
    {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, p->w}};
        TRY(dnnl_primitive_execute(reorder, stream, 2, args), "weight reorder");
        TRY(dnnl_stream_wait(stream), "weight reorder wait");
    }
#undef TRY
    goto done;
fail:
    wmat__dnnl_packed_free(p);
    p = NULL;
    rc = wmat_set_error(st == dnnl_unimplemented ? WMAT_ERR_UNSUPPORTED : (st == dnnl_out_of_memory ? WMAT_ERR_NOMEM : WMAT_ERR_INTERNAL),
                   "oneDNN packed GEMM %d x %d: %s failed (status %d)", N, K, what, (int)st);
done:
    if (stream) dnnl_stream_destroy(stream);
    if (reorder) dnnl_primitive_destroy(reorder);
    if (rpd) dnnl_primitive_desc_destroy(rpd);
    if (src) dnnl_memory_destroy(src);
    for (int i = 0; i < 2; i++)
        if (pd[i]) dnnl_primitive_desc_destroy(pd[i]);
    if (ops) dnnl_post_ops_destroy(ops);
    if (attr) dnnl_primitive_attr_destroy(attr);
    *out = p;
    return rc;
}

int wmat__dnnl_packed_apply(const wmat__packed_gemm *p, const float *X, int M, float *Y, int accumulate, int nt)
{
    dnnl_memory_desc_t amd, cmd;
    dnnl_memory_t a = NULL, c = NULL;
    dnnl_stream_t stream = NULL;
    dnnl_dims_t ad = {M, p->K}, as = {p->K, 1}, cd = {M, p->N}, cs = {p->N, 1};
    dnnl_status_t st = dnnl_memory_desc_init_by_strides(&amd, 2, ad, dnnl_f32, as);
    if (st == dnnl_success) st = dnnl_memory_desc_init_by_strides(&cmd, 2, cd, dnnl_f32, cs);
    if (st == dnnl_success) st = dnnl_memory_create(&a, &amd, g_engine, (void *)X);
    if (st == dnnl_success) st = dnnl_memory_create(&c, &cmd, g_engine, Y);
    if (st == dnnl_success) st = dnnl_stream_create(&stream, g_engine, dnnl_stream_default_flags);
    if (st == dnnl_success) {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, p->w}, {DNNL_ARG_DST, c}};
        int prev = omp_get_max_threads();
        if (prev != nt) omp_set_num_threads(nt);
        st = dnnl_primitive_execute(p->prim[accumulate ? 1 : 0], stream, 3, args);
        if (st == dnnl_success) st = dnnl_stream_wait(stream);
        if (prev != nt) omp_set_num_threads(prev);
    }
    if (stream) dnnl_stream_destroy(stream);
    if (a) dnnl_memory_destroy(a);
    if (c) dnnl_memory_destroy(c);
    return st == dnnl_success ? WMAT_OK : dnnl_fail("packed matmul", st);
}

#else /* !WMAT_HAVE_DNNL */

static int not_built(void)
{
    return wmat_set_error(WMAT_ERR_UNSUPPORTED, "oneDNN: not in this build (libdnnl-dev was not found)");
}
bool wmat__dnnl_built(void) { return false; }
int wmat__dnnl_init(void) { return not_built(); }
void wmat__dnnl_describe(char *buf, size_t cap) { snprintf(buf, cap, "not in this build"); }
int wmat__dnnl_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc, int nt)
{
    return not_built();
}
int wmat__dnnl_s8s8s32(int ta, int tb, int M, int N, int K, const int8_t *A, int lda,
                       const int8_t *B, int ldb, int accumulate, int32_t *C, int ldc, int nt)
{
    return not_built();
}
int wmat__dnnl_u8s8s32(int ta, int tb, int M, int N, int K, const uint8_t *A, int lda,
                       const int8_t *B, int ldb, int accumulate, int32_t *C, int ldc, int nt)
{
    return not_built();
}
int wmat__dnnl_bf16(int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A, int lda,
                    const uint16_t *B, int ldb, float beta, float *C, int ldc, int nt)
{
    return not_built();
}
int wmat__dnnl_packed_create(wmat__packed_gemm **out, const float *W, int N, int K)
{
    *out = NULL;
    return not_built();
}
int wmat__dnnl_packed_apply(const wmat__packed_gemm *p, const float *X, int M, float *Y, int accumulate, int nt)
{
    return not_built();
}
size_t wmat__dnnl_packed_bytes(const wmat__packed_gemm *p) { return 0; }
void wmat__dnnl_packed_free(wmat__packed_gemm *p) {}
#endif
