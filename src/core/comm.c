/* The communicator of data-parallel work (wmat.h, docs/SCALING.md).
 *
 * With WMAT_HAVE_MPI it holds a duplicate of MPI_COMM_WORLD whose error
 * handler returns codes, so a failed collective becomes a wmat_status with
 * a message instead of MPI's default abort; without MPI every function is
 * the one-rank case (reductions of one rank are the identity). MPI counts
 * are int: buffers longer than that go in chunks. */
#include "comm.h"
#include "internal.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef WMAT_HAVE_MPI
#include <mpi.h>
#endif

struct wmat_comm {
    int rank, size;
    int finalize; /* MPI_Init was called by wmat_comm_create */
#ifdef WMAT_HAVE_MPI
    MPI_Comm mc;
#endif
};

/* elements per MPI call: int counts, and a round number of bytes */
#define CHUNK ((size_t)1 << 28)

int wmat_comm_mpi_built(void)
{
#ifdef WMAT_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

#ifdef WMAT_HAVE_MPI
static int mpi_fail(int err, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(err, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "error %d", err);
    return wmat_set_error(WMAT_ERR_IO, "MPI %s: %s", what, msg);
}
#endif

int wmat_comm_create(wmat_comm **out, int init_mpi)
{
    *out = NULL;
    wmat_comm *c = wmat__calloc(1, sizeof *c);
    if (!c) return wmat_set_error(WMAT_ERR_NOMEM, "comm: out of memory");
    c->size = 1;
#ifdef WMAT_HAVE_MPI
    int inited = 0, err;
    MPI_Initialized(&inited);
    if (!inited) {
        if (!init_mpi) {
            wmat__free(c);
            return wmat_set_error(WMAT_ERR_INVALID, "comm: MPI is not initialized (call MPI_Init first, or pass init_mpi)");
        }
        int provided;
        /* wmat calls MPI from the thread that created the communicator only */
        if ((err = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided)) != MPI_SUCCESS) {
            wmat__free(c);
            return mpi_fail(err, "init");
        }
        c->finalize = 1;
    }
    if ((err = MPI_Comm_dup(MPI_COMM_WORLD, &c->mc)) != MPI_SUCCESS) {
        int rc = mpi_fail(err, "communicator duplicate");
        if (c->finalize) MPI_Finalize();
        wmat__free(c);
        return rc;
    }
    MPI_Comm_set_errhandler(c->mc, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c->mc, &c->rank);
    MPI_Comm_size(c->mc, &c->size);
#else
    (void)init_mpi;
#endif
    *out = c;
    return WMAT_OK;
}

void wmat_comm_free(wmat_comm *c)
{
    if (!c) return;
#ifdef WMAT_HAVE_MPI
    MPI_Comm_free(&c->mc);
    if (c->finalize) MPI_Finalize();
#endif
    wmat__free(c);
}

int wmat_comm_rank(const wmat_comm *c) { return c ? c->rank : 0; }
int wmat_comm_size(const wmat_comm *c) { return c ? c->size : 1; }

#ifdef WMAT_HAVE_MPI
static MPI_Datatype mpi_type(wmat__comm_type t)
{
    switch (t) {
    case WMAT_COMM_F32: return MPI_FLOAT;
    case WMAT_COMM_F64: return MPI_DOUBLE;
    default: return MPI_UINT64_T;
    }
}
#endif

size_t wmat__comm_type_size(wmat__comm_type t) { return t == WMAT_COMM_F32 ? 4 : 8; }

int wmat__comm_allreduce(const wmat_comm *c, void *buf, size_t n, wmat__comm_type t, wmat__comm_op op)
{
    if (!c || c->size == 1 || n == 0) return WMAT_OK;
#ifdef WMAT_HAVE_MPI
    const size_t es = wmat__comm_type_size(t);
    for (size_t off = 0; off < n; off += CHUNK) {
        const size_t k = n - off < CHUNK ? n - off : CHUNK;
        int err = MPI_Allreduce(MPI_IN_PLACE, (char *)buf + off * es, (int)k, mpi_type(t), op == WMAT_COMM_MAX ? MPI_MAX : MPI_SUM,
                                c->mc);
        if (err != MPI_SUCCESS) return mpi_fail(err, "allreduce");
    }
    return WMAT_OK;
#else
    (void)buf;
    (void)t;
    (void)op;
    return wmat_set_error(WMAT_ERR_INTERNAL, "comm: %d ranks in a build without MPI", c->size);
#endif
}

int wmat_comm_allreduce_sum_f32(const wmat_comm *c, float *buf, size_t n)
{
    return wmat__comm_allreduce(c, buf, n, WMAT_COMM_F32, WMAT_COMM_SUM);
}
int wmat_comm_allreduce_sum_f64(const wmat_comm *c, double *buf, size_t n)
{
    return wmat__comm_allreduce(c, buf, n, WMAT_COMM_F64, WMAT_COMM_SUM);
}
int wmat_comm_allreduce_max_f32(const wmat_comm *c, float *buf, size_t n)
{
    return wmat__comm_allreduce(c, buf, n, WMAT_COMM_F32, WMAT_COMM_MAX);
}

int wmat_comm_bcast(const wmat_comm *c, void *buf, size_t bytes, int root)
{
    if (!c || c->size == 1 || bytes == 0) return WMAT_OK;
    if (root < 0 || root >= c->size) return wmat_set_error(WMAT_ERR_INVALID, "comm: broadcast root %d of %d ranks", root, c->size);
#ifdef WMAT_HAVE_MPI
    for (size_t off = 0; off < bytes; off += CHUNK) {
        const size_t k = bytes - off < CHUNK ? bytes - off : CHUNK;
        int err = MPI_Bcast((char *)buf + off, (int)k, MPI_BYTE, root, c->mc);
        if (err != MPI_SUCCESS) return mpi_fail(err, "broadcast");
    }
    return WMAT_OK;
#else
    (void)buf;
    return WMAT_OK;
#endif
}

int wmat_comm_barrier(const wmat_comm *c)
{
    if (!c || c->size == 1) return WMAT_OK;
#ifdef WMAT_HAVE_MPI
    int err = MPI_Barrier(c->mc);
    return err == MPI_SUCCESS ? WMAT_OK : mpi_fail(err, "barrier");
#else
    return WMAT_OK;
#endif
}

void wmat_comm_abort(const wmat_comm *c, int code)
{
#ifdef WMAT_HAVE_MPI
    int inited = 0, fin = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&fin);
    if (inited && !fin) MPI_Abort(c ? c->mc : MPI_COMM_WORLD, code);
#else
    (void)c;
#endif
    exit(code);
}

int wmat__comm_tree_sum(const wmat_comm *c, void *buf, size_t n, wmat__comm_type t, void *scratch)
{
    if (!c || c->size == 1 || n == 0) return WMAT_OK;
    if (c->size & (c->size - 1))
        return wmat_set_error(WMAT_ERR_INVALID, "comm: a fixed-order sum needs a power-of-two rank count (not %d)", c->size);
#ifdef WMAT_HAVE_MPI
    const size_t es = wmat__comm_type_size(t);
    /* recursive doubling: at stride w, ranks r and r ^ w swap their sums of
     * the w ranks below and add them; a + b == b + a in IEEE arithmetic, so
     * both hold the same bits, those of the binary tree over the ranks */
    for (int w = 1; w < c->size; w *= 2) {
        const int peer = c->rank ^ w;
        for (size_t off = 0; off < n; off += CHUNK) {
            const size_t k = n - off < CHUNK ? n - off : CHUNK;
            int err = MPI_Sendrecv((char *)buf + off * es, (int)k, mpi_type(t), peer, w, (char *)scratch + off * es, (int)k,
                                   mpi_type(t), peer, w, c->mc, MPI_STATUS_IGNORE);
            if (err != MPI_SUCCESS) return mpi_fail(err, "fixed-order sum");
        }
        if (t == WMAT_COMM_F32) {
            float *b = buf;
            const float *o = scratch;
            for (size_t i = 0; i < n; i++) b[i] += o[i];
        } else if (t == WMAT_COMM_F64) {
            double *b = buf;
            const double *o = scratch;
            for (size_t i = 0; i < n; i++) b[i] += o[i];
        } else {
            uint64_t *b = buf;
            const uint64_t *o = scratch;
            for (size_t i = 0; i < n; i++) b[i] += o[i];
        }
    }
    return WMAT_OK;
#else
    (void)buf;
    (void)t;
    (void)scratch;
    return wmat_set_error(WMAT_ERR_INTERNAL, "comm: %d ranks in a build without MPI", c->size);
#endif
}

/* ---- reductions in flight */

struct wmat__comm_pending {
    int n, cap;
#ifdef WMAT_HAVE_MPI
    MPI_Request *req;
#endif
};

int wmat__comm_pending_create(wmat__comm_pending **out, int cap)
{
    *out = NULL;
    wmat__comm_pending *p = wmat__calloc(1, sizeof *p);
    if (!p) return wmat_set_error(WMAT_ERR_NOMEM, "comm: out of memory");
    p->cap = cap > 0 ? cap : 1;
#ifdef WMAT_HAVE_MPI
    if (!(p->req = wmat__calloc((size_t)p->cap, sizeof *p->req))) {
        wmat__free(p);
        return wmat_set_error(WMAT_ERR_NOMEM, "comm: out of memory");
    }
#endif
    *out = p;
    return WMAT_OK;
}

void wmat__comm_pending_free(wmat__comm_pending *p)
{
    if (!p) return;
#ifdef WMAT_HAVE_MPI
    /* requests still in flight (an error path): wait them out, the buffers are the caller's */
    if (p->n) MPI_Waitall(p->n, p->req, MPI_STATUSES_IGNORE);
    wmat__free(p->req);
#endif
    wmat__free(p);
}

size_t wmat__comm_chunks(size_t n) { return (n + CHUNK - 1) / CHUNK; }

int wmat__comm_iallreduce_sum_f32(const wmat_comm *c, float *buf, size_t n, wmat__comm_pending *p)
{
    if (!c || c->size == 1 || n == 0) return WMAT_OK;
#ifdef WMAT_HAVE_MPI
    for (size_t off = 0; off < n; off += CHUNK) {
        const size_t k = n - off < CHUNK ? n - off : CHUNK;
        if (p->n >= p->cap) return wmat_set_error(WMAT_ERR_INTERNAL, "comm: more reductions in flight than reserved (%d)", p->cap);
        int err = MPI_Iallreduce(MPI_IN_PLACE, buf + off, (int)k, MPI_FLOAT, MPI_SUM, c->mc, &p->req[p->n]);
        if (err != MPI_SUCCESS) return mpi_fail(err, "iallreduce");
        p->n++;
    }
    return WMAT_OK;
#else
    (void)buf;
    (void)p;
    return wmat_set_error(WMAT_ERR_INTERNAL, "comm: %d ranks in a build without MPI", c->size);
#endif
}

void wmat__comm_progress(wmat__comm_pending *p)
{
#ifdef WMAT_HAVE_MPI
    /* MPI progresses nonblocking collectives inside MPI calls: a test now
     * and then lets the reductions move while the backward computes */
    int done;
    if (p && p->n) MPI_Testall(p->n, p->req, &done, MPI_STATUSES_IGNORE);
#else
    (void)p;
#endif
}

int wmat__comm_wait(wmat__comm_pending *p)
{
    if (!p || !p->n) return WMAT_OK;
#ifdef WMAT_HAVE_MPI
    int err = MPI_Waitall(p->n, p->req, MPI_STATUSES_IGNORE);
    p->n = 0;
    if (err != MPI_SUCCESS) return mpi_fail(err, "wait for the gradient reductions");
#endif
    return WMAT_OK;
}
