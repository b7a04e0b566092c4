/* The streaming merge driver: load every input as stored (memory-mapped,
 * nothing converted), check that they are the same architecture with the
 * same tensors, then produce the output one tensor at a time: that tensor
 * of each input dequantized into a buffer, the method's kernel, the result
 * written, the inputs' pages of that tensor released (MADV_DONTNEED on a
 * read-only mapping: they are read again from the file if ever needed).
 * The output model has no data: every writer (GGUF, llama2.c, HF) asks the
 * model's fill hook for a tensor just before writing it, so resident memory
 * is a few tensors per input whatever the output format. */
#include "merge.h"
#include "io/model_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static size_t peak_rss(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    size_t kb = 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = (size_t)strtoull(line + 6, NULL, 10);
    fclose(f);
    return kb * 1024;
}

void wmat__merge_report_free(wmat_merge_report *rep)
{
    if (!rep) return;
    wmat__free(rep->tensors);
    memset(rep, 0, sizeof *rep);
}

typedef struct {
    const wmat_merge_spec *s;
    const wmat_merge_method *m;
    int n_in;            /* models besides the base */
    int has_base;
    wmat_model **in;     /* [0] the base when has_base, then the models */
    const char **paths;
    int **idx;           /* idx[i][t]: the output tensor t's index in input i */
    wmat_model *out;
    wmat_dtype out_dtype;
    float **xbuf;        /* n_in + has_base buffers of max_n floats */
    float *work, *scratch; /* work: the measuring pass of a two-pass method */
    int64_t max_n;
    int normalize;
    wmat_merge_report *rep;
    int done;
    int64_t done_elems, total_elems;
    double t0;
    const char *out_path;
    /* two-pass methods (opcm): the pass under way and the whole-model sums */
    int pass;
    double acc[WMAT_MERGE_N_ACC];
    /* the one-pass TIES (ties_fused.c): per-thread histograms */
    int fused;
    int lin;              /* the method's WMAT_MS_* flags where it streams (wmat__merge_stream_linear) */
    uint32_t *hist;
    struct readahead *ra; /* NULL: the inputs are read as they are converted */
    struct dio *dio;      /* NULL: the streamed paths read the mappings */
    const void *cur_data[65]; /* the tensor being merged: input i's bytes in a direct-read buffer (NULL: its mapping) */
    void *enc_dst;        /* set during merge_encode: the output tensor's bytes (out_dtype) */
    double fill_seconds;  /* time inside merge_fill (the rest of the save is the writer's) */
} merge_job;

static int layer_of(const char *name, int L)
{
    int l;
    if (sscanf(name, "model.layers.%d.", &l) == 1) return l;
    return strcmp(name, WMAT_NAME_TOK_EMBD) ? L : -1; /* embedding first, final norm / classifier last */
}

static uint64_t name_hash(const char *s, uint64_t seed)
{
    uint64_t h = 1469598103934665603ull ^ seed;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The inputs' fp32 buffers (one tensor each), allocated when the first
 * tensor that needs them comes: the streamed TIES never does. */
static int ensure_xbufs(merge_job *j)
{
    for (int i = 0; i < j->n_in + j->has_base; i++)
        if (!j->xbuf[i] && !(j->xbuf[i] = wmat__malloc((size_t)j->max_n * sizeof(float))))
            return wmat_set_error(WMAT_ERR_NOMEM, "merge: out of memory for %d buffers of %lld floats",
                                  j->n_in + j->has_base, (long long)j->max_n);
    return WMAT_OK;
}

/* Tensor t of input model m as fp32 in wmat's canonical row order, nt
 * threads converting (and faulting in) chunks of a mapped matrix. */
static int read_f32(const wmat_model *m, const wmat_tensor *t, float *dst, float *scratch, int nt)
{
    const int64_t n = wmat_tensor_nelem(t);
    int rc;
    if (t->dtype == WMAT_OBJ) {
        rc = wmat_tensor_dequant_rows(t, 0, t->shape[0], dst);
    } else if (t->flags & WMAT_TF_HF_ROPE) {
        /* HF's rotary row order, reordered in the stored type first */
        const size_t row_bytes = wmat_dtype_bytes(t->dtype, (uint64_t)t->shape[1]);
        wmat__rope_unpermute_rows(scratch, t->data, (int)(t->shape[0] / m->cfg.head_dim), m->cfg.head_dim, row_bytes);
        rc = wmat_to_f32(dst, scratch, t->dtype, (uint64_t)n);
    } else if (t->ndim == 2 && !(t->flags & WMAT_TF_OWNED)) {
        /* a mapped matrix: convert 1 MiB of rows at a time and drop their
         * pages at once, so the mapping adds little to resident memory;
         * the chunks on threads, so page faults of one overlap another's
         * conversion (the f16 inputs of a merge are read near disk speed) */
        const size_t row_bytes = wmat_dtype_bytes(t->dtype, (uint64_t)t->shape[1]);
        int64_t step = row_bytes ? (int64_t)(((size_t)1 << 20) / row_bytes) : 1;
        if (step < 1) step = 1;
        const int64_t chunks = (t->shape[0] + step - 1) / step;
        int bad = WMAT_OK;
#pragma omp parallel for num_threads(nt > 0 ? nt : 1) schedule(dynamic, 1) if (chunks > 1)
        for (int64_t c = 0; c < chunks; c++) {
            const int64_t r0 = c * step, nr = t->shape[0] - r0 < step ? t->shape[0] - r0 : step;
            const unsigned char *src = (const unsigned char *)t->data + (size_t)r0 * row_bytes;
            /* rows are whole blocks of their type, so this cannot fail once
             * the model loaded; a failure is kept, not raced over */
            if (wmat_to_f32(dst + r0 * t->shape[1], src, t->dtype, (uint64_t)(nr * t->shape[1])))
                __atomic_store_n(&bad, WMAT_ERR_FORMAT, __ATOMIC_RELAXED);
            wmat__pages_release(src, (size_t)nr * row_bytes, 0);
        }
        rc = bad ? wmat_set_error(bad, "%s rows of %lld values do not convert", wmat_dtype_info(t->dtype)->name,
                                  (long long)t->shape[1])
                 : WMAT_OK;
    } else {
        rc = wmat_to_f32(dst, t->data, t->dtype, (uint64_t)n);
    }
    if (rc) {
        char msg[400];
        snprintf(msg, sizeof msg, "%s", wmat_last_error());
        return wmat_set_error(rc, "%s: tensor %s: %s", m->path ? m->path : "model", t->name, msg);
    }
    return WMAT_OK;
}

/* ---- read-ahead
 *
 * A thread asks the kernel to read the next tensors of every input (in the
 * order the writer will ask for them) into the page cache while the
 * current one is merged: madvise(MADV_WILLNEED) on a tensor's byte range of
 * a mapped input starts its read and returns, so the disk works while the
 * CPUs convert and merge. It keeps RA_BYTES of input ahead of the tensor
 * being merged (at least the next tensor); the pages are the page cache's,
 * not the process's, until the conversion touches (and then drops) them. */
#define RA_BYTES ((uint64_t)512 << 20)

struct readahead {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop, want, issued; /* positions [0, want) asked for, [0, issued) advised */
    int cur;                /* the position being merged */
    int populate, pop_next; /* map the next tensor's pages ahead; the next position to consider */
    int n_pop;              /* tensors populated */
    int n;
    int *order, *pos;       /* order[p]: the tensor written p-th; pos[ti]: its position */
    const merge_job *j;
};

static uint64_t tensor_bytes(const merge_job *j, int ti)
{
    uint64_t b = 0;
    for (int i = 0; i < j->n_in + j->has_base; i++) b += j->in[i]->tensors[j->idx[i][ti]].nbytes;
    return b;
}

static void advise(const merge_job *j, int ti)
{
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < j->n_in + j->has_base; i++) {
        const wmat_tensor *t = &j->in[i]->tensors[j->idx[i][ti]];
        if (t->dtype == WMAT_OBJ || (t->flags & WMAT_TF_OWNED) || !t->data || !t->nbytes) continue;
        const uintptr_t a = (uintptr_t)t->data / pg * pg, b = (uintptr_t)t->data + t->nbytes;
        madvise((void *)a, b - a, MADV_WILLNEED);
    }
}

/* Map tensor ti's pages of every input into the process ahead of the merge
 * (MADV_POPULATE_READ, Linux 5.14: it waits for the reads the advice
 * started and fills the page tables in one call, so the merging threads
 * take no page faults on it). 0 when the kernel does not know the advice. */
static int populate(const merge_job *j, int ti)
{
#ifdef MADV_POPULATE_READ
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < j->n_in + j->has_base; i++) {
        const wmat_tensor *t = &j->in[i]->tensors[j->idx[i][ti]];
        if (t->dtype == WMAT_OBJ || (t->flags & WMAT_TF_OWNED) || !t->data || !t->nbytes) continue;
        const uintptr_t a = (uintptr_t)t->data / pg * pg, b = (uintptr_t)t->data + t->nbytes;
        if (madvise((void *)a, b - a, MADV_POPULATE_READ) != 0 && errno == EINVAL) return 0;
    }
    return 1;
#else
    (void)j;
    (void)ti;
    return 0;
#endif
}

static void *ra_main(void *arg)
{
    struct readahead *r = arg;
    pthread_mutex_lock(&r->mu);
    while (!r->stop) {
        if (r->issued < r->want) {
            const int p = r->issued++;
            pthread_mutex_unlock(&r->mu);
            advise(r->j, r->order[p]);
            pthread_mutex_lock(&r->mu);
            continue;
        }
        /* then the tensor after the one being merged (only that one: its
         * pages count in the resident memory once mapped); positions the
         * merge has reached are skipped */
        if (r->populate && r->pop_next < r->n && r->pop_next <= r->cur + 1) {
            const int p = r->pop_next++;
            if (p > r->cur) {
                pthread_mutex_unlock(&r->mu);
                const int ok = populate(r->j, r->order[p]);
                pthread_mutex_lock(&r->mu);
                if (ok) r->n_pop++;
                else r->populate = 0;
            }
            continue;
        }
        pthread_cond_wait(&r->cv, &r->mu);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* Tensor ti is being merged: ask for what follows it. */
static void ra_at(struct readahead *r, int ti)
{
    if (!r) return;
    int p = ti >= 0 && ti < r->n ? r->pos[ti] : -1;
    uint64_t ahead = 0;
    int q = p + 1;
    while (q < r->n && (q == p + 1 || ahead < RA_BYTES)) ahead += tensor_bytes(r->j, r->order[q++]);
    pthread_mutex_lock(&r->mu);
    r->cur = p;
    if (q > r->want) r->want = q;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Stop the read-ahead; returns the number of tensors it populated. */
static int ra_stop(struct readahead *r)
{
    if (!r) return 0;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->th, NULL);
    const int n_pop = r->n_pop;
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    wmat__free(r->order);
    wmat__free(r->pos);
    wmat__free(r);
    return n_pop;
}

/* Start the read-ahead for a save in format fmt (GGUF: its writer's order;
 * the others: the tensors' order). NULL when it cannot start: the merge
 * then reads as it converts, as the sequential path does. */
static struct readahead *ra_start(const merge_job *j, wmat_format fmt)
{
    struct readahead *r = wmat__calloc(1, sizeof *r);
    const int n = j->out->n_tensors;
    if (!r) return NULL;
    r->order = wmat__calloc((size_t)n, sizeof *r->order);
    r->pos = wmat__calloc((size_t)n, sizeof *r->pos);
    if (!r->order || !r->pos) goto fail;
    int k = fmt == WMAT_FMT_GGUF ? wmat__gguf_write_order(j->out, r->order, n) : 0;
    if (k != n)
        for (int t = 0; t < n; t++) r->order[t] = t;
    for (int t = 0; t < n; t++) r->pos[t] = -1;
    for (int p = 0; p < n; p++)
        if (r->order[p] >= 0 && r->order[p] < n) r->pos[r->order[p]] = p;
    r->n = n;
    r->j = j;
    r->cur = -1;
    r->populate = !j->s->no_populate;
    if (pthread_mutex_init(&r->mu, NULL)) goto fail;
    if (pthread_cond_init(&r->cv, NULL)) {
        pthread_mutex_destroy(&r->mu);
        goto fail;
    }
    if (pthread_create(&r->th, NULL, ra_main, r)) {
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
        goto fail;
    }
    ra_at(r, -1);
    return r;
fail:
    wmat__free(r->order);
    wmat__free(r->pos);
    wmat__free(r);
    return NULL;
}

/* ---- direct reads
 *
 * Instead of the mapping (page cache, page faults, MADV_DONTNEED), a
 * thread reads each tensor of every input with pread() on a descriptor
 * opened with O_DIRECT into one of two reused buffers per input (the
 * tensor being merged and the next one, in the writer's order): the disk's
 * DMA lands in the buffer, no page-cache page is allocated, filled, mapped
 * or dropped, which is most of the system time of a merge through the
 * mapping (the kernel's share of `cat`). Only for inputs that are one
 * file mapped whole (GGUF, llama2.c) on a file system that takes O_DIRECT,
 * and all inputs or none; only the streamed paths use the buffers (a
 * tensor whose read failed, or any other path, reads the mapping). */
#define DIO_ALIGN ((size_t)4096)

enum { DIO_FREE = 0, DIO_READING, DIO_READY, DIO_FAILED };

struct dio {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    int n_all, n;
    int fd[65];
    unsigned char *buf[2][65]; /* DIO_ALIGN-aligned, cap[i] bytes */
    size_t cap[65];
    int slot_pos[2], slot_state[2];
    int released;          /* positions [0, released) merged */
    int next;              /* the position the reader takes next */
    int *order, *pos;
    uint64_t bytes;        /* read */
    const merge_job *j;
};

/* Read input i's tensor ti into dst (aligned); *at: where its bytes start. */
static int dio_read(struct dio *d, int i, int ti, unsigned char *dst, const void **at)
{
    const merge_job *j = d->j;
    const wmat_model *m = j->in[i];
    const wmat_tensor *t = &m->tensors[j->idx[i][ti]];
    if (t->dtype == WMAT_OBJ || (t->flags & WMAT_TF_OWNED) || !t->data || !t->nbytes) return -1;
    const wmat_map *mp = wmat__model_map_at(m, t->data);
    if (!mp) return -1;
    const size_t off = (size_t)((const unsigned char *)t->data - (const unsigned char *)mp->addr);
    const size_t a0 = off / DIO_ALIGN * DIO_ALIGN, need = off + t->nbytes - a0;
    const size_t len = (need + DIO_ALIGN - 1) / DIO_ALIGN * DIO_ALIGN;
    if (len > d->cap[i]) return -1;
    size_t done = 0;
    while (done < need) {
        const ssize_t r = pread(d->fd[i], dst + done, len - done, (off_t)(a0 + done));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1; /* an error, or the file ends early */
        done += (size_t)r;
        if (done % DIO_ALIGN && done < need) return -1; /* a short read inside the file: give up */
    }
    d->bytes += need;
    *at = dst + (off - a0);
    return 0;
}

static void *dio_main(void *arg)
{
    struct dio *d = arg;
    const void *at[65];
    pthread_mutex_lock(&d->mu);
    for (int p = 0; p < d->n && !d->stop; p++) {
        const int s = p & 1;
        while (!d->stop && p >= d->released + 2) pthread_cond_wait(&d->cv, &d->mu);
        if (d->stop) break;
        d->slot_pos[s] = p;
        d->slot_state[s] = DIO_READING;
        d->next = p + 1;
        pthread_mutex_unlock(&d->mu);
        int ok = 1;
        for (int i = 0; i < d->n_all && ok; i++) ok = dio_read(d, i, d->order[p], d->buf[s][i], &at[i]) == 0;
        pthread_mutex_lock(&d->mu);
        d->slot_state[s] = ok ? DIO_READY : DIO_FAILED;
        pthread_cond_broadcast(&d->cv);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* Tensor ti is next: wait for its buffers; cur_data[i] then point into
 * them (all NULL: read the mappings). */
static void dio_get(merge_job *j, int ti)
{
    struct dio *d = j->dio;
    memset(j->cur_data, 0, sizeof j->cur_data);
    if (!d || ti < 0 || ti >= d->n) return;
    const int p = d->pos[ti], s = p & 1;
    if (p < 0) return;
    pthread_mutex_lock(&d->mu);
    /* wait while the reader will still bring p without another release (a
     * tensor asked out of the writer's order, or one the reader has passed,
     * reads its mapping) */
    for (;;) {
        if (d->slot_pos[s] == p && d->slot_state[s] != DIO_READING) break;
        if (d->stop || p >= d->released + 2 || (d->next > p && d->slot_pos[s] != p)) break;
        pthread_cond_wait(&d->cv, &d->mu);
    }
    const int ready = d->slot_pos[s] == p && d->slot_state[s] == DIO_READY;
    pthread_mutex_unlock(&d->mu);
    if (!ready) return;
    /* where each input's bytes start in the buffer (as dio_read put them) */
    for (int i = 0; i < d->n_all; i++) {
        const wmat_tensor *t = &j->in[i]->tensors[j->idx[i][ti]];
        const wmat_map *mp = wmat__model_map_at(j->in[i], t->data);
        const size_t off = (size_t)((const unsigned char *)t->data - (const unsigned char *)mp->addr);
        j->cur_data[i] = d->buf[s][i] + (off - off / DIO_ALIGN * DIO_ALIGN);
    }
}

/* Tensor ti is merged: its slot may take the tensor after the next. */
static void dio_put(merge_job *j, int ti)
{
    struct dio *d = j->dio;
    memset(j->cur_data, 0, sizeof j->cur_data);
    if (!d || ti < 0 || ti >= d->n || d->pos[ti] < 0) return;
    pthread_mutex_lock(&d->mu);
    if (d->pos[ti] + 1 > d->released) d->released = d->pos[ti] + 1;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static void dio_free(struct dio *d)
{
    for (int i = 0; i < 65; i++) {
        if (d->fd[i] >= 0) close(d->fd[i]);
        free(d->buf[0][i]);
        free(d->buf[1][i]);
    }
    wmat__free(d->order);
    wmat__free(d->pos);
    wmat__free(d);
}

/* Stop the reader; returns the bytes it read. */
static uint64_t dio_stop(struct dio *d)
{
    if (!d) return 0;
    pthread_mutex_lock(&d->mu);
    d->stop = 1;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    pthread_join(d->th, NULL);
    const uint64_t b = d->bytes;
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
    dio_free(d);
    return b;
}

/* Start direct reads for a save in format fmt, or NULL where they cannot
 * be used (then the read-ahead runs instead). */
static struct dio *dio_start(const merge_job *j, wmat_format fmt)
{
    const int n_all = j->n_in + j->has_base, n = j->out->n_tensors;
    if (n_all > 65) return NULL;
    struct dio *d = wmat__calloc(1, sizeof *d);
    if (!d) return NULL;
    for (int i = 0; i < 65; i++) d->fd[i] = -1;
    d->order = wmat__calloc((size_t)n, sizeof *d->order);
    d->pos = wmat__calloc((size_t)n, sizeof *d->pos);
    if (!d->order || !d->pos) goto fail;
    for (int i = 0; i < n_all; i++) {
        const wmat_model *m = j->in[i];
        if ((m->format != WMAT_FMT_GGUF && m->format != WMAT_FMT_LLAMA2C) || m->n_maps != 1 || !m->path) goto fail;
        d->fd[i] = open(m->path, O_RDONLY | O_DIRECT | O_CLOEXEC);
        struct stat st;
        if (d->fd[i] < 0 || fstat(d->fd[i], &st) != 0 || (size_t)st.st_size != m->maps[0].len) goto fail;
        size_t big = 0;
        for (int t = 0; t < n; t++) {
            const size_t b = m->tensors[j->idx[i][t]].nbytes;
            if (b > big) big = b;
        }
        d->cap[i] = (big + 2 * DIO_ALIGN) / DIO_ALIGN * DIO_ALIGN;
        for (int s = 0; s < 2; s++)
            if (posix_memalign((void **)&d->buf[s][i], DIO_ALIGN, d->cap[i])) {
                d->buf[s][i] = NULL;
                goto fail;
            }
    }
    int k = fmt == WMAT_FMT_GGUF ? wmat__gguf_write_order(j->out, d->order, n) : 0;
    if (k != n)
        for (int t = 0; t < n; t++) d->order[t] = t;
    for (int t = 0; t < n; t++) d->pos[t] = -1;
    for (int p = 0; p < n; p++)
        if (d->order[p] >= 0 && d->order[p] < n) d->pos[d->order[p]] = p;
    d->n_all = n_all;
    d->n = n;
    d->j = j;
    d->slot_pos[0] = d->slot_pos[1] = -1;
    if (pthread_mutex_init(&d->mu, NULL)) goto fail;
    if (pthread_cond_init(&d->cv, NULL)) {
        pthread_mutex_destroy(&d->mu);
        goto fail;
    }
    if (pthread_create(&d->th, NULL, dio_main, d)) {
        pthread_cond_destroy(&d->cv);
        pthread_mutex_destroy(&d->mu);
        goto fail;
    }
    return d;
fail:
    dio_free(d);
    return NULL;
}

/* Input i's stored bytes of tensor ti for the streamed paths. */
static const void *in_data(const merge_job *j, int i, int ti)
{
    return j->cur_data[i] ? j->cur_data[i] : j->in[i]->tensors[j->idx[i][ti]].data;
}

/* ---- the one-pass TIES */

/* Input i's tensor ti minus the base (fp32, in d) with the histogram of its
 * magnitudes' high bits summed into hsum. A mapped matrix is converted a
 * few rows at a time, each piece made a task vector and counted while it
 * is in cache, and its pages dropped; other tensors are converted whole
 * first (read_f32), then the same. */
#define TIES_PIECE 16384
static int delta_hist(merge_job *j, int i, int ti, float *d, const float *base, uint32_t *hsum, int nt)
{
    const wmat_model *m = j->in[i];
    const wmat_tensor *t = &m->tensors[j->idx[i][ti]];
    const int64_t n = wmat_tensor_nelem(t);
    uint32_t *hist = j->hist;
    memset(hist, 0, (size_t)nt * WMAT_TIES_HIST * sizeof *hist);
    int rc = WMAT_OK;
    if (t->dtype != WMAT_OBJ && !(t->flags & (WMAT_TF_HF_ROPE | WMAT_TF_OWNED)) && t->ndim == 2) {
        const int64_t cols = t->shape[1];
        const size_t row_bytes = wmat_dtype_bytes(t->dtype, (uint64_t)cols);
        int64_t step = row_bytes ? (int64_t)(((size_t)1 << 20) / row_bytes) : 1, sub = TIES_PIECE / (cols > 0 ? cols : 1);
        if (step < 1) step = 1;
        if (sub < 1) sub = 1;
        const int64_t chunks = (t->shape[0] + step - 1) / step;
        int bad = WMAT_OK;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (chunks > 1)
        for (int64_t c = 0; c < chunks; c++) {
            uint32_t *h = hist + (size_t)omp_get_thread_num() * WMAT_TIES_HIST;
            const int64_t r0 = c * step, r1 = t->shape[0] - r0 < step ? t->shape[0] : r0 + step;
            const unsigned char *src = (const unsigned char *)t->data + (size_t)r0 * row_bytes;
            for (int64_t r = r0; r < r1; r += sub) {
                const int64_t nr = r1 - r < sub ? r1 - r : sub;
                float *x = d + r * cols;
                if (wmat_to_f32(x, (const unsigned char *)t->data + (size_t)r * row_bytes, t->dtype, (uint64_t)(nr * cols)))
                    __atomic_store_n(&bad, WMAT_ERR_FORMAT, __ATOMIC_RELAXED);
                wmat__ties_delta_hist(x, base + r * cols, nr * cols, h);
            }
            wmat__pages_release(src, (size_t)(r1 - r0) * row_bytes, 0);
        }
        if (bad)
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: tensor %s: %s rows of %lld values do not convert",
                                m->path ? m->path : "model", t->name, wmat_dtype_info(t->dtype)->name, (long long)cols);
    } else {
        rc = read_f32(m, t, d, j->scratch, nt);
        if (!rc) {
            const int64_t pieces = (n + TIES_PIECE - 1) / TIES_PIECE;
#pragma omp parallel for num_threads(nt) schedule(static) if (pieces > 4)
            for (int64_t p = 0; p < pieces; p++) {
                const int64_t a = p * TIES_PIECE, b = n - a < TIES_PIECE ? n : a + TIES_PIECE;
                wmat__ties_delta_hist(d + a, base + a, b - a, hist + (size_t)omp_get_thread_num() * WMAT_TIES_HIST);
            }
        }
    }
    for (int q = 0; q < WMAT_TIES_HIST; q++) {
        uint32_t c = 0;
        for (int th = 0; th < nt; th++) c += hist[(size_t)th * WMAT_TIES_HIST + q];
        hsum[q] = c;
    }
    return rc;
}

/* Whether every input's tensor ti streams (wmat__ties_stream's passes on
 * the stored bytes, chunk by chunk). */
static int ties_streams(const merge_job *j, int ti)
{
    const int64_t n = wmat_tensor_nelem(&j->out->tensors[ti]);
    int stream = 1;
    for (int i = 0; i < j->n_in + 1 && stream; i++) {
        const wmat_tensor *t = &j->in[i]->tensors[j->idx[i][ti]];
        stream = !(t->flags & WMAT_TF_HF_ROPE) && wmat__ties_stream_ok(t->data, t->dtype, n, t->nbytes);
    }
    return stream;
}

/* TIES for output tensor ti (a->... as the kernel would get them, without
 * the inputs' data): read, trim, elect and combine into dst (fp32), or,
 * during merge_encode, straight into the output's bytes (j->enc_dst). */
static int ties_fused_tensor(merge_job *j, int ti, const wmat_merge_args *a, float *dst, wmat_merge_tinfo *info,
                             double *dn, double *bn, double *t_read)
{
    const int nt = a->n_threads;
    const int64_t n = a->n;
    const double t0 = now_s();
    uint32_t *hsum = j->hist + (size_t)nt * WMAT_TIES_HIST;
    float thr[64];
    int64_t cut[64];
    int none[64];
    double trimmed = 0, t_sel = 0;
    /* stored data that converts chunk by chunk: the streamed passes */
    if (j->enc_dst && !ties_streams(j, ti))
        return wmat_set_error(WMAT_ERR_INTERNAL, "%s: tensor %s was to be encoded by the merge", j->out_path,
                              j->out->tensors[ti].name);
    if (ties_streams(j, ti)) {
        const void *xs[64];
        wmat_dtype xdt[64];
        int64_t ks[64];
        for (int i = 0; i < j->n_in + 1; i++) {
            const wmat_tensor *t = &j->in[i]->tensors[j->idx[i][ti]];
            if (i) {
                xs[i - 1] = in_data(j, i, ti);
                xdt[i - 1] = t->dtype;
                const double kd = a->density[i - 1] * (double)n;
                ks[i - 1] = kd >= (double)n ? n : (int64_t)kd;
                trimmed += (double)(n - ks[i - 1]);
            }
            j->rep->bytes_read += t->nbytes;
        }
        const wmat_tensor *bt = &j->in[0]->tensors[j->idx[0][ti]];
        const wmat_ties_src src = {j->n_in,     n,         in_data(j, 0, ti), bt->dtype,  xs, xdt, ks, a->weight,
                                   a->lambda,   a->normalize, j->enc_dst, j->out_dtype, 0, j->s->pass_a_buffers};
        wmat_ties_stream_out so;
        const int rc = wmat__ties_stream(&src, dst, nt, &so);
        if (rc) {
            char msg[400];
            snprintf(msg, sizeof msg, "%s", wmat_last_error());
            return wmat_set_error(rc, "%s: tensor %s: %s", j->out_path, j->out->tensors[ti].name, msg);
        }
        for (int q = 0; q < 3; q++) {
            j->rep->stage_cpu[q] += so.cpu[q];
            j->rep->stage_sys[q] += so.sys[q];
            j->rep->stage_minflt[q] += so.minflt[q];
            j->rep->stage_majflt[q] += so.majflt[q];
        }
        *t_read = so.wall[0];
        j->rep->streamed_tensors++;
        if (so.st.bad < n)
            return wmat_set_error(WMAT_ERR_NUMERIC, "%s: merged tensor %s has a non-finite value at index %lld", j->out_path,
                                  j->out->tensors[ti].name, (long long)so.st.bad);
        info->trimmed = trimmed / ((double)n * j->n_in);
        info->sign_conflicts = (double)so.st.conflicts / (double)n;
        *dn = so.st.dn;
        *bn = so.st.bn;
        return WMAT_OK;
    }
    int rc = ensure_xbufs(j);
    if (rc) return rc;
    rc = read_f32(j->in[0], &j->in[0]->tensors[j->idx[0][ti]], j->xbuf[0], j->scratch, nt);
    for (int i = 0; i < j->n_in && !rc; i++) {
        rc = delta_hist(j, i + 1, ti, j->xbuf[i + 1], j->xbuf[0], hsum, nt);
        const double ts = now_s();
        const double kd = a->density[i] * (double)n;
        const int64_t k = kd >= (double)n ? n : (int64_t)kd;
        if (!rc) rc = wmat__ties_threshold(j->xbuf[i + 1], n, k, hsum, nt, &thr[i], &cut[i], &none[i]);
        trimmed += (double)(n - k);
        t_sel += now_s() - ts;
    }
    for (int i = 0; i < j->n_in + 1; i++) j->rep->bytes_read += j->in[i]->tensors[j->idx[i][ti]].nbytes;
    *t_read = now_s() - t0 - t_sel;
    if (rc) return rc;
    const wmat_ties_fuse f = {j->n_in, j->xbuf[0], (const float *const *)(j->xbuf + 1), a->weight, thr, cut, none,
                              a->lambda, a->normalize, NULL, NULL};
    const int64_t blk = 16384, nb = (n + blk - 1) / blk;
    int64_t conflicts = 0, bad = INT64_MAX;
    double sdn = 0, sbn = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : conflicts, sdn, sbn) reduction(min : bad) if (nb > 4)
    for (int64_t b = 0; b < nb; b++) {
        wmat_ties_stats st = {0, 0, 0, INT64_MAX};
        wmat__ties_fused_range(&f, dst, b * blk, n - b * blk < blk ? n : (b + 1) * blk, WMAT_TIES_IMPL_AUTO, &st);
        conflicts += st.conflicts;
        sdn += st.dn;
        sbn += st.bn;
        if (st.bad < bad) bad = st.bad;
    }
    if (bad < n)
        return wmat_set_error(WMAT_ERR_NUMERIC, "%s: merged tensor %s has a non-finite value at index %lld", j->out_path,
                              j->out->tensors[ti].name, (long long)bad);
    info->trimmed = trimmed / ((double)n * j->n_in);
    info->sign_conflicts = (double)conflicts / (double)n;
    *dn = sdn;
    *bn = sbn;
    return WMAT_OK;
}

/* An element-wise method (task arithmetic, DARE) on tensor ti streamed from
 * the stored inputs (every input streams: ties_streams): into dst (fp32),
 * or during merge_encode into the output's bytes. */
static int lin_tensor(merge_job *j, int ti, const wmat_merge_args *a, float *dst, wmat_merge_tinfo *info, double *dn,
                      double *bn)
{
    const int64_t n = a->n;
    const void *xs[64];
    wmat_dtype xdt[64];
    uint64_t seeds[64];
    for (int i = 0; i < j->n_in + 1; i++) {
        const wmat_tensor *t = &j->in[i]->tensors[j->idx[i][ti]];
        if (i) {
            xs[i - 1] = in_data(j, i, ti);
            xdt[i - 1] = t->dtype;
            seeds[i - 1] = wmat__merge_dare_seed(a->seed, i - 1);
        }
        j->rep->bytes_read += t->nbytes;
    }
    const wmat_tensor *bt = &j->in[0]->tensors[j->idx[0][ti]];
    const wmat_ties_src src = {j->n_in,   n,           in_data(j, 0, ti), bt->dtype,    xs, xdt, NULL, a->weight,
                               a->lambda, a->normalize, j->enc_dst, j->out_dtype, 0,  0};
    const wmat_lin_how how = {j->lin, a->density, seeds};
    wmat_lin_stream_out so;
    const int rc = wmat__merge_stream_linear(&src, &how, dst, a->n_threads, &so);
    if (rc) {
        char msg[400];
        snprintf(msg, sizeof msg, "%s", wmat_last_error());
        return wmat_set_error(rc, "%s: tensor %s: %s", j->out_path, j->out->tensors[ti].name, msg);
    }
    if (so.bad < n)
        return wmat_set_error(WMAT_ERR_NUMERIC, "%s: merged tensor %s has a non-finite value at index %lld", j->out_path,
                              j->out->tensors[ti].name, (long long)so.bad);
    j->rep->streamed_tensors++;
    info->trimmed = (double)so.dropped / ((double)n * j->n_in);
    info->sign_conflicts = (double)so.conflicts / (double)n;
    *dn = so.dn;
    *bn = so.bn;
    return WMAT_OK;
}

/* Merge output tensor ti into dst (fp32). */
static int merge_tensor(merge_job *j, int ti, float *dst)
{
    const double t0 = now_s();
    const wmat_tensor *ot = &j->out->tensors[ti];
    const int64_t n = wmat_tensor_nelem(ot);
    const int L = j->out->cfg.n_layers;
    const int layer = layer_of(ot->name, L);
    const int n_all = j->n_in + j->has_base;
    const int nt = wmat_context_threads(j->s->ctx);
    double t_read = 0;
    if (j->pass == 1 || j->m->passes != 2) ra_at(j->ra, ti);
    /* an element-wise method streams where every input does */
    const int lin = j->lin && ties_streams(j, ti);
    if (j->lin && !lin) {
        if (j->enc_dst)
            return wmat_set_error(WMAT_ERR_INTERNAL, "%s: tensor %s was to be encoded by the merge", j->out_path, ot->name);
        int rc = ensure_xbufs(j);
        if (rc) return rc;
    }
    for (int i = 0; i < n_all && !j->fused && !lin; i++) {
        const wmat_tensor *it = &j->in[i]->tensors[j->idx[i][ti]];
        int rc = read_f32(j->in[i], it, j->xbuf[i], j->scratch, nt);
        if (rc) return rc;
        j->rep->bytes_read += it->nbytes;
    }
    if (!j->fused && !lin) t_read = now_s() - t0;
    double w[64], dens[64];
    const wmat_merge_spec *s = j->s;
    for (int i = 0; i < j->n_in; i++) {
        const wmat_merge_model *mm = &s->models[i];
        w[i] = wmat__mvalue_at(mm->weight.n ? &mm->weight : &s->weight, layer, L, 1.0);
        dens[i] = wmat__mvalue_at(mm->density.n ? &mm->density : &s->density, layer, L, 1.0);
        if (!(dens[i] > 0 && dens[i] <= 1))
            return wmat_set_error(WMAT_ERR_INVALID, "%s: density %g at tensor %s is outside (0, 1]", mm->path, dens[i], ot->name);
    }
    wmat_merge_args a = {
        .n = n,
        .n_in = j->n_in,
        .base = j->has_base ? j->xbuf[0] : NULL,
        .x = j->xbuf + j->has_base,
        .weight = w,
        .density = dens,
        .lambda = wmat__mvalue_at(&s->lambda, layer, L, 1.0),
        .t = wmat__mvalue_at(&s->t, layer, L, 0.5),
        .dot_threshold = wmat__mvalue_at(&s->dot_threshold, layer, L, 0.9995),
        .normalize = j->normalize,
        .seed = name_hash(ot->name, s->seed),
        .scratch = j->scratch,
        .n_threads = nt,
        .rows = ot->shape[0],
        .cols = ot->ndim > 1 ? ot->shape[1] : 1,
        .linear = ot->ndim == 2 && strcmp(ot->name, WMAT_NAME_TOK_EMBD) != 0,
        .alpha = wmat__mvalue_at(&s->alpha, layer, L, 0.5),
        .pass = j->pass,
        .acc = j->acc,
    };
    if (!(a.t >= 0 && a.t <= 1)) return wmat_set_error(WMAT_ERR_INVALID, "t %g at tensor %s is outside [0, 1]", a.t, ot->name);
    /* the reference for the delta norm, before the kernel may overwrite the inputs */
    /* (the base, or input 0 for methods without one: linear leaves its inputs alone) */
    const float *ref = j->xbuf[0];
    wmat_merge_tinfo info = {0, 0, 0};
    double dn = 0, bn = 0;
    if (j->fused || lin) {
        dio_get(j, ti);
        int rc = j->fused ? ties_fused_tensor(j, ti, &a, dst, &info, &dn, &bn, &t_read) : lin_tensor(j, ti, &a, dst, &info, &dn, &bn);
        dio_put(j, ti);
        if (rc) return rc;
        for (int i = 0; i < n_all; i++) wmat__model_release(j->in[i], &j->in[i]->tensors[j->idx[i][ti]]);
        goto report;
    }
    int rc = j->m->fn(&a, dst, &info);
    if (rc) return rc;
    if (j->m->passes == 2 && j->pass == 0) {
        /* the measuring pass writes nothing and reports no tensor; progress
         * (and cancelling) goes through the tensors once for each pass */
        for (int i = 0; i < n_all; i++) wmat__model_release(j->in[i], &j->in[i]->tensors[j->idx[i][ti]]);
        if (s->ctx && s->ctx->progress &&
            s->ctx->progress(s->ctx->progress_user, ot->name, (uint64_t)ti + 1, (uint64_t)j->out->n_tensors))
            return wmat_set_error(WMAT_ERR_CANCELLED, "merge: cancelled at %s (first pass)", ot->name);
        return WMAT_OK;
    }
    int64_t bad = n;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : dn, bn) reduction(min : bad) if (n > 65536)
    for (int64_t k = 0; k < n; k++) {
        if (!isfinite(dst[k]) && k < bad) bad = k;
        const double d = (double)dst[k] - ref[k];
        dn += d * d;
        bn += (double)ref[k] * ref[k];
    }
    if (bad < n)
        return wmat_set_error(WMAT_ERR_NUMERIC, "%s: merged tensor %s has a non-finite value at index %lld", j->out_path,
                              ot->name, (long long)bad);
    for (int i = 0; i < n_all; i++) wmat__model_release(j->in[i], &j->in[i]->tensors[j->idx[i][ti]]);
report:;
    wmat_merge_tensor_report *r = &j->rep->tensors[ti];
    snprintf(r->name, sizeof r->name, "%s", ot->name);
    r->nelem = n;
    r->delta_norm = sqrt(dn);
    r->base_norm = sqrt(bn);
    r->trimmed = info.trimmed;
    r->sign_conflicts = info.sign_conflicts;
    r->slerp_linear = info.slerp_linear;
    r->seconds = now_s() - t0;
    r->read_seconds = t_read;
    r->kernel_seconds = r->seconds - t_read;
    j->rep->read_seconds += r->read_seconds;
    j->rep->kernel_seconds += r->kernel_seconds;
    j->done++;
    j->done_elems += n;
    r->done_share = j->total_elems ? (double)j->done_elems / (double)j->total_elems : 1.0;
    if (s->on_tensor) s->on_tensor(s->user, r, j->done, j->out->n_tensors);
    if (s->ctx && s->ctx->progress && s->ctx->progress(s->ctx->progress_user, ot->name, (uint64_t)j->done,
                                                       (uint64_t)j->out->n_tensors))
        return wmat_set_error(WMAT_ERR_CANCELLED, "merge: cancelled at %s", ot->name);
    return WMAT_OK;
}

/* The output model's fill: the writer asks for each tensor in its own
 * order, just before writing it. */
static int merge_fill(void *user, const wmat_tensor *t, float *dst)
{
    merge_job *j = user;
    const int ti = (int)(t - j->out->tensors);
    if (ti < 0 || ti >= j->out->n_tensors)
        return wmat_set_error(WMAT_ERR_INTERNAL, "%s: tensor %s is not the merge's", j->out_path, t->name);
    const double t0 = now_s(), c0 = thread_cpu_s();
    const int rc = merge_tensor(j, ti, dst);
    j->fill_seconds += now_s() - t0;
    j->rep->fill_cpu += thread_cpu_s() - c0;
    return rc;
}

/* The GGUF writer's encoder hook (wmat__gguf_save_with): a matrix whose
 * inputs all stream is merged straight into the output's bytes (the
 * streamed TIES encodes each chunk while it is in cache: no fp32 tensor,
 * no whole-tensor conversion on the writer's thread); everything else
 * (the norms, tensors that do not stream) goes through merge_fill. */
static int merge_encode(void *user, const wmat_tensor *t, wmat_dtype *dt, void *dst)
{
    merge_job *j = user;
    const int ti = (int)(t - j->out->tensors);
    if (ti < 0 || ti >= j->out->n_tensors)
        return wmat_set_error(WMAT_ERR_INTERNAL, "%s: tensor %s is not the merge's", j->out_path, t->name);
    if (!dst) {
        if (t->ndim != 2 || !ties_streams(j, ti)) return 0;
        *dt = j->out_dtype;
        return 1;
    }
    const double t0 = now_s(), c0 = thread_cpu_s();
    j->enc_dst = dst;
    const int rc = merge_tensor(j, ti, NULL);
    j->enc_dst = NULL;
    j->fill_seconds += now_s() - t0;
    j->rep->fill_cpu += thread_cpu_s() - c0;
    if (!rc) j->rep->encoded_tensors++;
    return rc ? rc : 1;
}

static int cfg_diff(const wmat_config *a, const wmat_config *b, char *buf, size_t n)
{
#define CMPI(f)                                                                                                       \
    if (a->f != b->f) return snprintf(buf, n, "%s %d vs %d", #f, a->f, b->f), 1;
    CMPI(dim) CMPI(hidden_dim) CMPI(n_layers) CMPI(n_heads) CMPI(n_kv_heads) CMPI(vocab_size) CMPI(head_dim)
    CMPI(tied_embeddings)
#undef CMPI
    if (a->rope_theta != b->rope_theta) return snprintf(buf, n, "rope_theta %g vs %g", a->rope_theta, b->rope_theta), 1;
    if (a->norm_eps != b->norm_eps) return snprintf(buf, n, "norm_eps %g vs %g", a->norm_eps, b->norm_eps), 1;
    return 0;
}

static int key_read(const wmat_merge_method *m, const char *key)
{
    for (const wmat_param_spec *p = m->schema; p->name; p++)
        if (!strcmp(p->name, key)) return 1;
    return 0;
}

static const wmat_param_spec *key_spec(const wmat_merge_method *m, const char *key)
{
    for (const wmat_param_spec *p = m->schema; p->name; p++)
        if (!strcmp(p->name, key)) return p;
    return NULL;
}

/* A value given for a key the method does not read, or out of its range. */
static int check_value(const wmat_merge_method *m, const char *key, const wmat_mvalue *v, const char *who)
{
    if (!v->n) return WMAT_OK;
    const wmat_param_spec *p = key_spec(m, key);
    if (!p) {
        char keys[256];
        size_t k = 0;
        keys[0] = 0;
        for (const wmat_param_spec *q = m->schema; q->name && k < sizeof keys; q++)
            k += (size_t)snprintf(keys + k, sizeof keys - k, "%s%s", k ? ", " : "", q->name);
        return wmat_set_error(WMAT_ERR_INVALID, "%s%smethod %s does not take %s (its keys: %s)", who ? who : "",
                              who ? ": " : "", m->name, key, keys);
    }
    for (int i = 0; i < v->n; i++)
        if (!(v->v[i] >= p->min && v->v[i] <= p->max))
            return wmat_set_error(WMAT_ERR_INVALID, "%s%s%s = %g is outside %g..%g", who ? who : "", who ? ": " : "", key,
                                  v->v[i], p->min, p->max);
    return WMAT_OK;
}

static int check_spec(const wmat_merge_spec *s, const wmat_merge_method *m)
{
    if (m->base == WMAT_MB_REQUIRED && !s->base)
        return wmat_set_error(WMAT_ERR_INVALID, "method %s needs a base model", m->name);
    if (m->base == WMAT_MB_NONE && s->base)
        return wmat_set_error(WMAT_ERR_INVALID, "method %s takes no base model (list every model to average)", m->name);
    if (s->n_models < m->min_models || s->n_models > m->max_models)
        return wmat_set_error(WMAT_ERR_INVALID, "method %s takes %d..%d models besides the base (got %d)", m->name,
                              m->min_models, m->max_models, s->n_models);
    int rc = check_value(m, "weight", &s->weight, NULL);
    if (!rc) rc = check_value(m, "density", &s->density, NULL);
    if (!rc) rc = check_value(m, "lambda", &s->lambda, NULL);
    if (!rc) rc = check_value(m, "t", &s->t, NULL);
    if (!rc) rc = check_value(m, "dot_threshold", &s->dot_threshold, NULL);
    if (!rc) rc = check_value(m, "alpha", &s->alpha, NULL);
    if (!rc && s->shuffle && !key_read(m, "shuffle"))
        rc = wmat_set_error(WMAT_ERR_INVALID, "method %s does not take shuffle", m->name);
    for (int i = 0; i < s->n_models && !rc; i++) {
        rc = check_value(m, "weight", &s->models[i].weight, s->models[i].path);
        if (!rc) rc = check_value(m, "density", &s->models[i].density, s->models[i].path);
    }
    if (!rc && s->normalize >= 0 && !key_read(m, "normalize"))
        rc = wmat_set_error(WMAT_ERR_INVALID, "method %s does not take normalize", m->name);
    return rc;
}

int wmat__merge_run(const wmat_merge_spec *s, const char *out_path, wmat_merge_report *rep)
{
    memset(rep, 0, sizeof *rep);
    const double t_start = now_s();
    const wmat_merge_method *m = wmat__merge_method_find(s->method);
    if (!m) {
        char names[256];
        size_t k = 0;
        names[0] = 0;
        for (const wmat_merge_method *q = wmat__merge_methods; q->name && k < sizeof names; q++)
            k += (size_t)snprintf(names + k, sizeof names - k, "%s%s", k ? ", " : "", q->name);
        return wmat_set_error(WMAT_ERR_INVALID, "unknown merge method '%s' (known: %s)", s->method ? s->method : "(none)",
                              names);
    }
    int rc = check_spec(s, m);
    if (rc) return rc;
    /* opcm's shuffle: the models in a seeded random order (Fisher-Yates) */
    wmat_merge_spec shuffled;
    wmat_merge_model perm_models[64];
    for (int i = 0; i < s->n_models && i < 64; i++) rep->order[i] = i;
    if (s->shuffle) {
        if (s->n_models > 64) return wmat_set_error(WMAT_ERR_INVALID, "shuffle: at most 64 models");
        wmat_rng r;
        wmat_rng_seed(&r, s->seed ^ 0x6f70636d5f6f7264ull);
        for (int i = s->n_models - 1; i > 0; i--) {
            const int k = (int)(wmat_rng_u64(&r) % (uint64_t)(i + 1)), tmp = rep->order[i];
            rep->order[i] = rep->order[k];
            rep->order[k] = tmp;
        }
        for (int i = 0; i < s->n_models; i++) perm_models[i] = s->models[rep->order[i]];
        shuffled = *s;
        shuffled.models = perm_models;
        s = &shuffled;
    }
    wmat_format fmt = s->out_format != WMAT_FMT_UNKNOWN ? s->out_format : wmat_format_for_path(out_path);
    wmat_dtype odt = s->out_dtype;
    if (odt != WMAT_F32 && odt != WMAT_F16 && odt != WMAT_BF16 && odt != WMAT_Q8_0 && odt != WMAT_Q4_0)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: output weights can be f32, f16, bf16, q8_0 or q4_0", out_path);
    if (fmt == WMAT_FMT_LLAMA2C && odt != WMAT_F32)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: llama2.c checkpoints hold f32 weights only (asked for %s)", out_path,
                              wmat_dtype_info(odt)->name);
    if (fmt != WMAT_FMT_LLAMA2C && fmt != WMAT_FMT_GGUF && fmt != WMAT_FMT_HF)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: merge writes llama2c, gguf or hf", out_path);

    merge_job j;
    memset(&j, 0, sizeof j);
    j.s = s;
    j.m = m;
    j.n_in = s->n_models;
    j.has_base = m->base == WMAT_MB_REQUIRED;
    j.rep = rep;
    j.out_path = out_path;
    j.out_dtype = odt;
    j.normalize = s->normalize;
    if (j.normalize < 0) {
        const wmat_param_spec *p = key_spec(m, "normalize");
        j.normalize = p && !strcmp(p->def, "true");
    }
    const int n_all = j.n_in + j.has_base;
    j.in = wmat__calloc((size_t)n_all, sizeof *j.in);
    j.paths = wmat__calloc((size_t)n_all, sizeof *j.paths);
    j.idx = wmat__calloc((size_t)n_all, sizeof *j.idx);
    j.xbuf = wmat__calloc((size_t)n_all, sizeof *j.xbuf);
    if (!j.in || !j.paths || !j.idx || !j.xbuf) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "merge: out of memory");
        goto done;
    }
    for (int i = 0; i < n_all; i++) j.paths[i] = j.has_base && i == 0 ? s->base : s->models[i - j.has_base].path;

    /* Load as stored: the tensors point into the files' mappings. */
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 0;
    for (int i = 0; i < n_all && !rc; i++) rc = wmat_model_load(&j.in[i], j.paths[i], &lp);
    if (rc) goto done;

    /* Same architecture, same tensors, same shapes, same vocabulary. */
    const wmat_model *a = j.in[0];
    for (int i = 1; i < n_all && !rc; i++) {
        const wmat_model *b = j.in[i];
        char why[160];
        if (cfg_diff(&a->cfg, &b->cfg, why, sizeof why)) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "%s and %s: different architectures (%s)", j.paths[0], j.paths[i], why);
            break;
        }
        if (a->tok && b->tok && wmat_tokenizer_vocab_size(a->tok) != wmat_tokenizer_vocab_size(b->tok)) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "%s and %s: different vocabularies (%d vs %d tokenizer entries)", j.paths[0],
                                j.paths[i], wmat_tokenizer_vocab_size(a->tok), wmat_tokenizer_vocab_size(b->tok));
            break;
        }
        if (a->tok && b->tok) {
            /* same size is not the same vocabulary: compare the pieces */
            const int nv = wmat_tokenizer_vocab_size(a->tok);
            for (int v = 0; v < nv; v++) {
                size_t la, lb;
                const char *pa = wmat_tokenizer_piece(a->tok, v, &la), *pb = wmat_tokenizer_piece(b->tok, v, &lb);
                if (la != lb || memcmp(pa, pb, la)) {
                    rc = wmat_set_error(WMAT_ERR_INVALID, "%s and %s: different vocabularies (token %d is '%.*s' vs '%.*s')",
                                        j.paths[0], j.paths[i], v, (int)(la > 40 ? 40 : la), pa, (int)(lb > 40 ? 40 : lb), pb);
                    break;
                }
            }
            if (rc) break;
        }
        if (a->n_tensors != b->n_tensors) {
            /* name the first tensor one of them lacks */
            const wmat_model *big = a->n_tensors > b->n_tensors ? a : b, *small = big == a ? b : a;
            for (int t = 0; t < big->n_tensors; t++)
                if (!wmat_model_find((wmat_model *)small, big->tensors[t].name)) {
                    rc = wmat_set_error(WMAT_ERR_INVALID, "%s and %s: tensor %s is in %s only", j.paths[0], j.paths[i],
                                        big->tensors[t].name, big == a ? j.paths[0] : j.paths[i]);
                    break;
                }
            if (!rc)
                rc = wmat_set_error(WMAT_ERR_INVALID, "%s and %s: %d vs %d tensors", j.paths[0], j.paths[i], a->n_tensors,
                                    b->n_tensors);
        }
    }
    if (rc) goto done;

    /* The output: input 0's tensor list as fp32 without data; the writer
     * asks merge_fill for each tensor as it writes it, whatever the format. */
    rc = wmat__model_new(&j.out, &a->cfg, fmt, out_path);
    for (int t = 0; t < a->n_tensors && !rc; t++) {
        const wmat_tensor *src = &a->tensors[t];
        const int64_t n = wmat_tensor_nelem(src);
        if (n > j.max_n) j.max_n = n;
        j.total_elems += n;
        rc = wmat__model_add_tensor(j.out, src->name, WMAT_F32, src->ndim, src->shape, NULL, 0);
        if (!rc) j.out->tensors[t].nbytes = 0; /* no data: the binder would refuse a size without it */
    }
    if (!rc) rc = wmat__model_bind(j.out);
    for (int i = 0; i < n_all && !rc; i++) {
        j.idx[i] = wmat__calloc((size_t)a->n_tensors, sizeof(int));
        if (!j.idx[i]) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "merge: out of memory");
            break;
        }
        for (int t = 0; t < a->n_tensors && !rc; t++) {
            const wmat_tensor *ot = &j.out->tensors[t];
            int k = -1;
            for (int q = 0; q < j.in[i]->n_tensors; q++)
                if (!strcmp(j.in[i]->tensors[q].name, ot->name)) {
                    k = q;
                    break;
                }
            if (k < 0) {
                rc = wmat_set_error(WMAT_ERR_INVALID, "%s and %s: tensor %s is missing from %s", j.paths[0], j.paths[i],
                                    ot->name, j.paths[i]);
                break;
            }
            const wmat_tensor *it = &j.in[i]->tensors[k];
            int same = it->ndim == ot->ndim;
            for (int d = 0; d < ot->ndim && same; d++) same = it->shape[d] == ot->shape[d];
            if (!same) {
                rc = wmat_set_error(WMAT_ERR_INVALID, "%s and %s: tensor %s has shape %lldx%lld vs %lldx%lld", j.paths[0],
                                    j.paths[i], ot->name, (long long)ot->shape[0],
                                    (long long)(ot->ndim > 1 ? ot->shape[1] : 1), (long long)it->shape[0],
                                    (long long)(it->ndim > 1 ? it->shape[1] : 1));
                break;
            }
            j.idx[i][t] = k;
        }
    }
    if (rc) goto done;

    /* The tokenizer moves from its source to the output. */
    {
        int src = 0;
        if (s->tokenizer_source && strcmp(s->tokenizer_source, "base")) {
            src = -1;
            for (int i = 0; i < n_all; i++)
                if (!strcmp(j.paths[i], s->tokenizer_source)) src = i;
            if (src < 0) {
                rc = wmat_set_error(WMAT_ERR_INVALID, "tokenizer_source %s is not one of the merged models (or 'base')",
                                    s->tokenizer_source);
                goto done;
            }
        }
        /* by default the first input that has one (an HF base may come without) */
        if (!s->tokenizer_source)
            for (int i = 0; i < n_all && !j.in[src]->tok; i++) src = j.in[i]->tok ? i : src;
        j.out->tok = j.in[src]->tok;
        j.in[src]->tok = NULL;
    }

    rep->tensors = wmat__calloc((size_t)j.out->n_tensors, sizeof *rep->tensors);
    j.work = m->passes == 2 ? wmat__malloc((size_t)j.max_n * sizeof(float)) : NULL;
    /* scratch only reorders HF's rotary rows (TIES's selection needs none) */
    int need_scratch = 0;
    for (int i = 0; i < n_all; i++)
        for (int t = 0; t < j.in[i]->n_tensors; t++) need_scratch |= (j.in[i]->tensors[t].flags & WMAT_TF_HF_ROPE) != 0;
    j.scratch = need_scratch ? wmat__malloc((size_t)j.max_n * sizeof(float)) : NULL;
    const int nt = wmat_context_threads(s->ctx);
    j.fused = m->ties_fused && !s->sequential && j.has_base && j.n_in <= 64;
    j.lin = !j.fused && !s->sequential && j.has_base && j.n_in <= 64 && m->passes != 2 ? m->stream : 0;
    if (j.fused) j.hist = wmat__malloc((size_t)(nt + 1) * WMAT_TIES_HIST * sizeof *j.hist);
    int ok = rep->tensors && (j.scratch || !need_scratch) && (j.work || m->passes != 2) && (j.hist || !j.fused);
    /* the one-pass TIES allocates them only for a tensor it cannot stream */
    for (int i = 0; i < n_all && ok && !j.fused && !j.lin; i++) ok = (j.xbuf[i] = wmat__malloc((size_t)j.max_n * sizeof(float))) != NULL;
    if (!ok) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "merge: out of memory for %d buffers of %lld floats", n_all + 2,
                            (long long)j.max_n);
        goto done;
    }
    rep->n_tensors = j.out->n_tensors;
    rep->largest_tensor = (size_t)j.max_n * sizeof(float);
    j.t0 = now_s();
    if (m->passes == 2) {
        /* the measuring pass: whole-model sums into j.acc, nothing written */
        for (int t = 0; t < j.out->n_tensors && !rc; t++) rc = merge_tensor(&j, t, j.work);
        j.pass = 1;
        if (rc) goto done;
    }
    j.out->fill = merge_fill;
    j.out->fill_user = &j;
    if (!s->sequential && (j.fused || j.lin) && !s->no_direct) j.dio = dio_start(&j, fmt);
    if (!s->sequential && !j.dio) j.ra = ra_start(&j, fmt);
    {
        wmat_save_params sp = wmat_save_default_params();
        sp.format = fmt;
        sp.dtype = odt;
        const double ts = now_s();
        /* GGUF in f16, bf16 or f32 from the streamed TIES: the merge fills
         * the writer's buffer in the output type itself (merge_encode) */
        if (fmt == WMAT_FMT_GGUF && (j.fused || j.lin) && !s->sequential && (odt == WMAT_F16 || odt == WMAT_BF16 || odt == WMAT_F32) &&
            !j.out->cfg.shortcuts && !j.out->cfg.norm_dim && !j.out->cfg.attn_dim)
            rc = wmat__gguf_save_with(j.out, out_path, odt, odt, merge_encode, &j);
        else
            rc = wmat_model_save(j.out, out_path, &sp);
        rep->write_seconds = now_s() - ts - j.fill_seconds;
    }

done:
    rep->populated = ra_stop(j.ra);
    rep->direct_bytes = dio_stop(j.dio);
    wmat__free(j.hist);
    if (j.xbuf)
        for (int i = 0; i < n_all; i++) wmat__free(j.xbuf[i]);
    if (j.idx)
        for (int i = 0; i < n_all; i++) wmat__free(j.idx[i]);
    if (j.in)
        for (int i = 0; i < n_all; i++) wmat_model_free(j.in[i]);
    wmat__free(j.in);
    wmat__free(j.paths);
    wmat__free(j.idx);
    wmat__free(j.xbuf);
    wmat__free(j.work);
    wmat__free(j.scratch);
    wmat_model_free(j.out);
    rep->seconds = now_s() - t_start;
    rep->peak_rss = peak_rss();
    if (rc) {
        wmat__free(rep->tensors);
        rep->tensors = NULL;
        rep->n_tensors = 0;
    }
    return rc;
}
