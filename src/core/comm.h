/* Private side of the communicator (wmat.h has the public one): typed
 * reductions and nonblocking reductions in flight, for the trainer's
 * gradient buckets and calibration statistics. */
#ifndef WMAT_COMM_H
#define WMAT_COMM_H

#include "wmat.h"

#include <stddef.h>

typedef enum { WMAT_COMM_F32 = 0, WMAT_COMM_F64 = 1, WMAT_COMM_U64 = 2 } wmat__comm_type;
typedef enum { WMAT_COMM_SUM = 0, WMAT_COMM_MAX = 1 } wmat__comm_op;

size_t wmat__comm_type_size(wmat__comm_type t);
/* In place over all ranks (c NULL or one rank: nothing to do). */
int wmat__comm_allreduce(const wmat_comm *c, void *buf, size_t n, wmat__comm_type t, wmat__comm_op op);

/* The sum over the ranks in a fixed order, the binary tree over the ranks
 * (rank count a power of two): the same bits as one process adding the
 * ranks' values pairwise, whatever MPI's own algorithms. scratch: n
 * elements. */
int wmat__comm_tree_sum(const wmat_comm *c, void *buf, size_t n, wmat__comm_type t, void *scratch);

/* Nonblocking sums in flight (MPI_Iallreduce), waited for together. A
 * buffer of n floats takes wmat__comm_chunks(n) of the cap. */
typedef struct wmat__comm_pending wmat__comm_pending;
int wmat__comm_pending_create(wmat__comm_pending **out, int cap);
void wmat__comm_pending_free(wmat__comm_pending *p);
size_t wmat__comm_chunks(size_t n);
int wmat__comm_iallreduce_sum_f32(const wmat_comm *c, float *buf, size_t n, wmat__comm_pending *p);
void wmat__comm_progress(wmat__comm_pending *p);
int wmat__comm_wait(wmat__comm_pending *p);

#endif
