/* The CLI's MPI job (cli_mpi.c). */
#ifndef WMAT_CLI_MPI_H
#define WMAT_CLI_MPI_H

#include "wmat.h"

/* Before the command runs: when a launcher (mpirun) started this process,
 * initialize MPI for train and quantize (other commands refuse more than
 * one rank, as does a build without MPI). 0, or the exit code. */
int cli_mpi_begin(const char *cmd);
/* The job's communicator (NULL: one process, no launcher). */
const wmat_comm *cli_mpi_comm(void);
/* 1 on the rank that prints and writes (rank 0, or no job). */
int cli_mpi_writer(void);
/* After the command: rc != 0 with more than one rank prints the rank's
 * error and ends every rank; else MPI is finalized. Returns rc. */
int cli_mpi_end(const char *cmd, int rc);

#endif
