/* The CLI under mpirun (docs/SCALING.md): `mpirun -np N wmat train ...` and
 * `mpirun -np N wmat quantize ...` run data-parallel. MPI is initialized
 * here, not by the library, and only when the process was started by a
 * launcher; rank 0 alone prints and writes; a rank that fails reports its
 * error and ends the whole job (MPI_Abort), so no rank waits forever in a
 * reduction and rank 0 never reaches its writes. */
#include "cli_mpi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static wmat_comm *g_comm;
static int g_err_fd = -1;  /* rank > 0: the real stderr */
static FILE *g_err_log;    /* rank > 0: what the command wrote to stderr */

/* Ranks the launcher says this job has (0: not started by one). */
static int launcher_size(void)
{
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", NULL};
    for (int i = 0; vars[i]; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 0) return atoi(v);
    }
    return getenv("PMIX_RANK") ? 1 : 0;
}

int cli_mpi_begin(const char *cmd)
{
    const int n = launcher_size();
    if (n == 0) return 0;
    const int parallel = !strcmp(cmd, "train") || !strcmp(cmd, "quantize");
    if (!wmat_comm_mpi_built()) {
        if (n == 1) return 0;
        fprintf(stderr,
                "wmat %s: error: started as %d ranks, but this wmat is built without MPI (configure with "
                "-DWMAT_WITH_MPI=ON); every rank would run the whole job\n",
                cmd, n);
        return 2;
    }
    if (!parallel) {
        if (n == 1) return 0;
        fprintf(stderr, "wmat %s: error: only train and quantize run over MPI ranks; run %s as one process\n", cmd, cmd);
        return 2;
    }
    if (wmat_comm_create(&g_comm, 1)) {
        fprintf(stderr, "wmat %s: error: %s\n", cmd, wmat_last_error());
        return 1;
    }
    if (wmat_comm_rank(g_comm) > 0) {
        /* only rank 0 prints; the others' stderr is kept to report a failure */
        fflush(stdout);
        fflush(stderr);
        g_err_fd = dup(2);
        g_err_log = tmpfile();
        if (!freopen("/dev/null", "w", stdout) || g_err_fd < 0 || !g_err_log || dup2(fileno(g_err_log), 2) < 0) {
            fprintf(stderr, "wmat %s: error: rank %d cannot redirect its output\n", cmd, wmat_comm_rank(g_comm));
            return 1;
        }
    }
    return 0;
}

const wmat_comm *cli_mpi_comm(void) { return g_comm; }
int cli_mpi_writer(void) { return wmat_comm_rank(g_comm) == 0; }

int cli_mpi_end(const char *cmd, int rc)
{
    if (!g_comm) return rc;
    const int rank = wmat_comm_rank(g_comm), size = wmat_comm_size(g_comm);
    if (rc && size > 1) {
        fflush(stderr);
        if (g_err_log && g_err_fd >= 0) {
            /* the failing rank's own messages, then the stop */
            FILE *err = fdopen(g_err_fd, "w");
            char line[1024];
            rewind(g_err_log);
            while (err && fgets(line, sizeof line, g_err_log)) fprintf(err, "[rank %d] %s", rank, line);
            if (err) {
                fprintf(err, "wmat %s: rank %d of %d failed: stopping every rank (no output written)\n", cmd, rank, size);
                fflush(err);
            }
        } else {
            fprintf(stderr, "wmat %s: rank %d of %d failed: stopping every rank (no output written)\n", cmd, rank, size);
            fflush(stderr);
        }
        wmat_comm_abort(g_comm, rc);
    }
    wmat_comm_free(g_comm);
    g_comm = NULL;
    if (g_err_log) fclose(g_err_log);
    return rc;
}
