/* The element-wise merge methods (task arithmetic, DARE-linear, DARE-TIES)
 * streamed from the stored inputs (docs/MERGING.md "Streaming and
 * memory"): one pass over the tensor in chunks of WMAT_DARE_CHUNK entries;
 * each chunk of the base and of every model converted into per-thread
 * buffers (wmat_to_f32), made task vectors (d = x - base in float, as the
 * kernels' to_deltas), dropped and rescaled with DARE's mask of that chunk
 * (wmat__merge_dare_chunk: the mask is drawn per chunk of that size, so the
 * chunk's entries are those of the whole tensor's), combined by the
 * kernels' own block function (wmat__merge_combine_serial) and written to
 * the output, or encoded into the writer's buffer while in cache. No fp32
 * copy of an input or of the output exists; the bits are the kernels'. */
#include "merge.h"
#include "core/internal.h"

#include <math.h>
#include <omp.h>
#include <string.h>
#include <time.h>

#define LS_CHUNK WMAT_DARE_CHUNK

static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int wmat__merge_stream_linear(const wmat_ties_src *s, const wmat_lin_how *how, float *out, int n_threads,
                              wmat_lin_stream_out *r)
{
    const int k_in = s->n_in;
    const int64_t n = s->n, nc = (n + LS_CHUNK - 1) / LS_CHUNK;
    const int nt = n_threads < 1 || nc < 2 ? 1 : n_threads;
    memset(r, 0, sizeof *r);
    r->bad = INT64_MAX;
    if (k_in < 1 || k_in > 64) return wmat_set_error(WMAT_ERR_INVALID, "merge: 1..64 models");
    if (!(how->flags & WMAT_MS_LIN)) return wmat_set_error(WMAT_ERR_INVALID, "merge: not an element-wise method");
    if (s->enc) {
        const wmat_dtype_traits *et = wmat_dtype_info(s->enc_dt);
        if (!et || !et->block_size || LS_CHUNK % et->block_size || n % et->block_size)
            return wmat_set_error(WMAT_ERR_INVALID, "merge: the output type does not encode in whole chunks");
    } else if (!out) {
        return wmat_set_error(WMAT_ERR_INVALID, "merge: no output");
    }
    const int enc_buf = s->enc && s->enc_dt != WMAT_F32;
    const size_t bstride = (size_t)(k_in + 1 + enc_buf) * LS_CHUNK;
    float *buf = wmat__aligned_alloc((size_t)nt * bstride * sizeof *buf);
    if (!buf) return wmat_set_error(WMAT_ERR_NOMEM, "merge: out of memory for the streamed chunk buffers");
    const double t0 = thread_cpu();
    const int drop = (how->flags & WMAT_MS_DROP) != 0, elect = (how->flags & WMAT_MS_ELECT) != 0;
    int bad_rc = WMAT_OK;
    int64_t conflicts = 0, dropped = 0, bad = INT64_MAX;
    double sdn = 0, sbn = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : conflicts, dropped, sdn, sbn) reduction(min : bad)
    for (int64_t c = 0; c < nc; c++) {
        float *b = buf + (size_t)omp_get_thread_num() * bstride, *d[64];
        const int64_t j0 = c * LS_CHUNK, m = n - j0 < LS_CHUNK ? n - j0 : LS_CHUNK;
        int rc = wmat_to_f32(b, (const unsigned char *)s->base + wmat_dtype_bytes(s->base_dt, (uint64_t)j0), s->base_dt,
                             (uint64_t)m);
        for (int i = 0; i < k_in; i++) {
            d[i] = b + (size_t)(i + 1) * LS_CHUNK;
            if (!rc)
                rc = wmat_to_f32(d[i], (const unsigned char *)s->x[i] + wmat_dtype_bytes(s->x_dt[i], (uint64_t)j0),
                                 s->x_dt[i], (uint64_t)m);
        }
        if (rc) {
            __atomic_store_n(&bad_rc, WMAT_ERR_FORMAT, __ATOMIC_RELAXED);
            continue;
        }
        for (int i = 0; i < k_in; i++) {
            float *x = d[i];
            for (int64_t j = 0; j < m; j++) x[j] = x[j] - b[j];
            if (drop) dropped += wmat__merge_dare_chunk(x, m, how->density[i], how->seed[i], c);
        }
        float *o = !s->enc ? out + j0 : enc_buf ? b + (size_t)(k_in + 1) * LS_CHUNK : (float *)s->enc + j0;
        wmat_merge_args a;
        memset(&a, 0, sizeof a);
        a.n = m;
        a.n_in = k_in;
        a.base = b;
        a.x = d;
        a.weight = s->w;
        a.lambda = s->lambda;
        a.normalize = s->normalize;
        a.n_threads = 1;
        conflicts += wmat__merge_combine_serial(&a, o, elect);
        if (enc_buf &&
            wmat_from_f32((unsigned char *)s->enc + wmat_dtype_bytes(s->enc_dt, (uint64_t)j0), s->enc_dt, o, (uint64_t)m))
            __atomic_store_n(&bad_rc, WMAT_ERR_FORMAT, __ATOMIC_RELAXED);
        double dn = 0, bn = 0;
        int64_t lb = INT64_MAX;
        for (int64_t j = 0; j < m; j++) {
            if (!isfinite(o[j]) && lb == INT64_MAX) lb = j0 + j;
            const double dd = (double)o[j] - b[j];
            dn += dd * dd;
            bn += (double)b[j] * b[j];
        }
        sdn += dn;
        sbn += bn;
        if (lb < bad) bad = lb;
    }
    wmat__free(buf);
    r->cpu = thread_cpu() - t0;
    if (bad_rc) return wmat_set_error(WMAT_ERR_FORMAT, "merge: an input's stored values do not convert");
    r->conflicts = conflicts;
    r->dropped = dropped;
    r->dn = sdn;
    r->bn = sbn;
    r->bad = bad;
    return WMAT_OK;
}
