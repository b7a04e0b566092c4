/* The all-reduce the data-parallel trainer runs (docs/SCALING.md), timed
 * through wmat's communicator: a float sum of n elements over the ranks of
 * an mpirun job, median of 10, with the bandwidth the ring model's link
 * would need for that time (bus bandwidth = 2 (N - 1) / N x bytes / t).
 * usage: mpirun -np N bench_allreduce [FLOATS...]   (default 4558080, mix4m's parameters) */
#include "wmat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (!wmat_comm_mpi_built()) {
        printf("bench_allreduce: wmat is built without MPI (configure with -DWMAT_WITH_MPI=ON)\n");
        return 0;
    }
    wmat_comm *c;
    if (wmat_comm_create(&c, 1)) {
        fprintf(stderr, "bench_allreduce: %s\n", wmat_last_error());
        return 1;
    }
    const int rank = wmat_comm_rank(c), N = wmat_comm_size(c);
    int nsz = argc > 1 ? argc - 1 : 1;
    for (int a = 0; a < nsz; a++) {
        const size_t n = argc > 1 ? (size_t)strtoull(argv[a + 1], NULL, 10) : 4558080;
        float *x = malloc(n * sizeof *x);
        if (!x) return 1;
        for (size_t i = 0; i < n; i++) x[i] = (float)(i % 7) * 0.25f;
        double t[10];
        wmat_comm_allreduce_sum_f32(c, x, n); /* warm-up: connections, pages */
        for (int r = 0; r < 10; r++) {
            wmat_comm_barrier(c);
            const double t0 = now();
            if (wmat_comm_allreduce_sum_f32(c, x, n)) {
                fprintf(stderr, "bench_allreduce: %s\n", wmat_last_error());
                return 1;
            }
            t[r] = now() - t0;
        }
        /* the slowest rank's time is the collective's */
        double tm[10];
        memcpy(tm, t, sizeof t);
        for (int r = 0; r < 10; r++) {
            float v = (float)tm[r];
            wmat_comm_allreduce_max_f32(c, &v, 1);
            tm[r] = v;
        }
        qsort(tm, 10, sizeof *tm, cmp);
        const double med = 0.5 * (tm[4] + tm[5]), bytes = 4.0 * (double)n;
        if (rank == 0)
            printf("allreduce ranks %d floats %zu bytes %.0f median_s %.6f bus_GBps %.3f\n", N, n, bytes, med,
                   N > 1 ? 2.0 * (N - 1) / N * bytes / med / 1e9 : 0.0);
        free(x);
    }
    wmat_comm_free(c);
    return 0;
}
