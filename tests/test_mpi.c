/* Data parallelism over MPI (docs/SCALING.md): 2 ranks against 1 with the
 * same global batch for full training, LoRA and GaLore (losses within 1e-6
 * relative per step), a checkpoint of the 2-rank run resumed in one
 * process, `mpirun -np 2 wmat quantize` writing the files one process
 * writes, and a rank failing mid-run stopping the job with a clear error
 * and no output. Skipped with a message when wmat is built without MPI or
 * mpirun is missing; in a build without MPI a job started as several
 * ranks is refused.
 *
 * The library cases run this program itself under mpirun as a worker
 * (WMAT_MPI_WORKER=METHOD): rank 0 writes each step's loss, %.17g, to
 * WMAT_MPI_OUT; the test computes the one-process losses in-process. */
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STEPS 6
/* Every process here runs one thread (wmat_linalg_init(1) in main): the
 * trainer's GEMMs and the calibration's run on the process's default
 * thread count, which under mpirun's core binding would be one CPU per
 * rank and all of them in this process. */
#define MPIRUN "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 300 mpirun -np 2 --oversubscribe"

/* Windows of seeded random tokens of stories260K's vocabulary. */
static int32_t *tokens(size_t n, int vocab)
{
    int32_t *t = malloc(n * sizeof *t);
    wmat_rng r;
    wmat_rng_seed(&r, 7);
    for (size_t i = 0; i < n; i++) t[i] = (int32_t)(wmat_rng_u64(&r) % (uint64_t)vocab);
    return t;
}

/* Train stories260K for `steps` steps (from `resume` if given; a
 * checkpoint to `save` after the last) with method full / lora / galore
 * over comm (NULL: one process); losses[s] for the steps run. */
static int train(const wmat_comm *comm, const char *path, const char *method, int shards, int first, int steps,
                 const char *resume, const char *save, double *losses)
{
    wmat_model *m = NULL;
    wmat_trainer *t = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    int rc = wmat_model_load(&m, path, &lp);
    if (rc) return rc;
    const int V = wmat_model_config(m)->vocab_size;
    const size_t n = 64 * 33 + 1;
    int32_t *tok = tokens(n, V);
    wmat_context wc = wmat_context_default();
    wc.n_threads = 1;
    wc.comm = comm;
    wmat_train_params p = wmat_train_default_params();
    p.exec = &wc;
    p.batch = 4;
    p.ctx = 32;
    p.grad_accum = !strcmp(method, "full") ? 2 : 1;
    p.steps = STEPS;
    p.lr = 3e-3f;
    p.dp_shards = shards;
    if (!strcmp(method, "lora")) {
        p.adapter = "lora";
        p.lora_targets = (1u << WMAT_LIN_COUNT) - 1;
    }
    if (!strcmp(method, "galore")) {
        p.projector = "galore";
        p.galore_gap = 2; /* projector refreshes inside the run */
    }
    if (!(rc = wmat_trainer_create(&t, m, &p)) && !(rc = wmat_trainer_set_data(t, tok, n)) && resume)
        rc = wmat_trainer_load_checkpoint(t, resume);
    for (int s = first; s < steps && !rc; s++) {
        wmat_train_step_info si;
        if (!(rc = wmat_trainer_step(t, &si))) losses[s] = si.loss;
    }
    if (!rc && save && wmat_comm_rank(comm) == 0) rc = wmat_trainer_save_checkpoint(t, save);
    wmat_trainer_free(t);
    wmat_model_free(m);
    free(tok);
    return rc;
}

/* The worker: WMAT_MPI_WORKER=METHOD[:SAVE_AT], losses to WMAT_MPI_OUT. */
static int worker(const char *spec)
{
    char method[32] = {0};
    int save_at = 0, shards = 0;
    sscanf(spec, "%31[a-z]:%d:%d", method, &save_at, &shards);
    wmat_comm *c = NULL;
    if (wmat_comm_create(&c, 1)) {
        fprintf(stderr, "worker: %s\n", wmat_last_error());
        return 1;
    }
    double losses[STEPS];
    const char *out = getenv("WMAT_MPI_OUT");
    char ck[4200];
    snprintf(ck, sizeof ck, "%s.ckpt", out);
    int rc = train(c, getenv("WMAT_MPI_MODEL"), method, shards, 0, save_at ? save_at : STEPS, NULL, save_at ? ck : NULL,
                   losses);
    if (rc) {
        fprintf(stderr, "worker rank %d: %s\n", wmat_comm_rank(c), wmat_last_error());
        wmat_comm_abort(c, 1);
    }
    if (wmat_comm_rank(c) == 0) {
        FILE *f = fopen(out, "w");
        for (int s = 0; f && s < (save_at ? save_at : STEPS); s++) fprintf(f, "%.17g\n", losses[s]);
        if (f) fclose(f);
    }
    wmat_comm_free(c);
    return 0;
}

/* Skip unless MPI is built in and mpirun runs. */
static int mpi_ready(void)
{
    if (!wmat_comm_mpi_built()) {
        print_message("SKIP: wmat is built without MPI (configure with -DWMAT_WITH_MPI=ON)\n");
        return 0;
    }
    int rc;
    free(tu_run("command -v mpirun >/dev/null 2>&1", &rc));
    if (rc) {
        print_message("SKIP: mpirun not found (apt-get install openmpi-bin)\n");
        return 0;
    }
    return 1;
}

/* 2 ranks against one process: within tol relative per step (0: the same bits). */
static void check_method(const char *method, int shards, double tol)
{
    TU_NEED_DATA(model, "models/stories260K.bin");
    if (!mpi_ready()) {
        skip();
        return;
    }
    double ref[STEPS];
    TU_OK(train(NULL, model, method, shards, 0, STEPS, NULL, NULL, ref));
    char self[4096], cmd[16384];
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    assert_true(k > 0);
    self[k] = 0;
    const char *out = tu_tmp(method);
    snprintf(cmd, sizeof cmd, "WMAT_MPI_WORKER=%s:0:%d WMAT_MPI_OUT=%s WMAT_MPI_MODEL=%s " MPIRUN " %s 2>&1", method, shards,
             out, model, self);
    int rc;
    char *o = tu_run(cmd, &rc);
    if (rc) fail_msg("mpirun of the worker failed (%d): %s", rc, o);
    free(o);
    FILE *f = fopen(out, "r");
    assert_non_null(f);
    double worst = 0;
    for (int s = 0; s < STEPS; s++) {
        double l = NAN;
        if (fscanf(f, "%lg", &l) != 1) fail_msg("%s: loss of step %d missing", out, s + 1);
        const double rel = tu_abs_diff(l, ref[s]) / fabs(ref[s]);
        if (!(rel <= tol))
            fail_msg("%s step %d: 2 ranks %.17g, 1 rank %.17g (relative %.3g > %g)", method, s + 1, l, ref[s], rel, tol);
        if (rel > worst) worst = rel;
    }
    fclose(f);
    print_message("%s, %d shards: 2 ranks vs 1 over %d steps: largest relative loss difference %.3g\n", method, shards,
                  STEPS, worst);
}

static void test_train_full_2ranks(void **state)
{
    (void)state;
    check_method("full", 0, 1e-6);
}
static void test_train_lora_2ranks(void **state)
{
    (void)state;
    check_method("lora", 0, 1e-6);
}
static void test_train_galore_2ranks(void **state)
{
    (void)state;
    check_method("galore", 0, 1e-6);
}
/* dp_shards: one process running 4 shards and 2 ranks of 2 each sum them
 * in the same tree: the same losses, bit for bit */
static void test_train_fixed_order_bit_equal(void **state)
{
    (void)state;
    check_method("full", 4, 0.0);
}

/* A checkpoint written by rank 0 of a 2-rank run, resumed by one process:
 * the same losses as one process throughout. */
static void test_checkpoint_resumes_1rank(void **state)
{
    (void)state;
    TU_NEED_DATA(model, "models/stories260K.bin");
    if (!mpi_ready()) {
        skip();
        return;
    }
    double ref[STEPS], res[STEPS];
    TU_OK(train(NULL, model, "full", 0, 0, STEPS, NULL, NULL, ref));
    char self[4096], cmd[16384];
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    assert_true(k > 0);
    self[k] = 0;
    const char *out = tu_tmp("ck");
    snprintf(cmd, sizeof cmd, "WMAT_MPI_WORKER=full:3 WMAT_MPI_OUT=%s WMAT_MPI_MODEL=%s " MPIRUN " %s 2>&1", out, model, self);
    int rc;
    char *o = tu_run(cmd, &rc);
    if (rc) fail_msg("mpirun of the worker failed (%d): %s", rc, o);
    free(o);
    char ck[4200];
    snprintf(ck, sizeof ck, "%s.ckpt", out);
    TU_OK(train(NULL, model, "full", 0, 3, STEPS, ck, NULL, res));
    for (int s = 3; s < STEPS; s++)
        if (!(tu_abs_diff(res[s], ref[s]) / fabs(ref[s]) <= 1e-6))
            fail_msg("step %d after resuming the 2-rank checkpoint: %.17g vs %.17g", s + 1, res[s], ref[s]);
}

static const char *quant_args(char *buf, size_t n, const char *model, const char *tok, const char *text)
{
    snprintf(buf, n,
             "quantize %s --method gptq --bits 4 --keep down_proj --calib %s --tokenizer %s --calib-tokens 2560 "
             "--calib-ctx 256 --threads 1 --quiet",
             model, text, tok);
    return buf;
}

/* `mpirun -np 2 wmat quantize` (5 windows each) writes the files of one process. */
static void test_quantize_2ranks_identical(void **state)
{
    (void)state;
    TU_NEED_DATA(model, "models/stories260K.bin");
    TU_NEED_DATA(tok, "models/tok512.bin");
    TU_NEED_DATA(text, "text/tinystories_valid_head.txt");
    if (!mpi_ready()) {
        skip();
        return;
    }
    char args[8192], cmd[16384];
    quant_args(args, sizeof args, model, tok, text);
    const char *q1 = tu_tmp("q1"), *q2 = tu_tmp("q2");
    int rc;
    snprintf(cmd, sizeof cmd, "%s %s %s 2>&1", tu_cli(), args, q1);
    char *o = tu_run(cmd, &rc);
    if (rc) fail_msg("wmat quantize failed (%d): %s", rc, o);
    free(o);
    snprintf(cmd, sizeof cmd, MPIRUN " %s %s %s 2>&1", tu_cli(), args, q2);
    o = tu_run(cmd, &rc);
    if (rc) fail_msg("mpirun -np 2 wmat quantize failed (%d): %s", rc, o);
    /* rank 0 alone prints: one report */
    const char *w = strstr(o, "wrote ");
    assert_non_null(w);
    assert_null(strstr(w + 1, "wrote "));
    free(o);
    snprintf(cmd, sizeof cmd, "diff -r %s %s 2>&1", q1, q2);
    o = tu_run(cmd, &rc);
    if (rc) fail_msg("2-rank quantization differs from one process: %s", o);
    free(o);
    /* 3 ranks: 10 windows as 4 + 3 + 3 */
    const char *q3 = tu_tmp("q3");
    snprintf(cmd, sizeof cmd, "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 300 mpirun -np 3 --oversubscribe %s %s %s 2>&1 && diff -r %s %s 2>&1",
             tu_cli(), args, q3, q1, q3);
    o = tu_run(cmd, &rc);
    if (rc) fail_msg("3-rank quantization failed or differs from one process: %s", o);
    free(o);
}

/* A batch that does not split over the ranks: a clear error, no output. */
static void test_batch_must_split(void **state)
{
    (void)state;
    TU_NEED_DATA(model, "models/stories260K.bin");
    TU_NEED_DATA(tok, "models/tok512.bin");
    TU_NEED_DATA(text, "text/tinystories_valid_head.txt");
    if (!mpi_ready()) {
        skip();
        return;
    }
    const char *out = tu_tmp("odd.bin");
    char cmd[16384];
    snprintf(cmd, sizeof cmd, MPIRUN " %s train %s %s --tokenizer %s --data %s --steps 2 --batch 3 --ctx 32 --threads 1 2>&1",
             tu_cli(), model, out, tok, text);
    int rc;
    char *o = tu_run(cmd, &rc);
    if (!rc || !strstr(o, "a batch of 3 windows does not split into 2 ranks (give a multiple of 2)"))
        fail_msg("expected a refusal of --batch 3 over 2 ranks (%d): %s", rc, o);
    free(o);
    assert_int_equal(access(out, F_OK), -1);
}

/* Rank 1 fails after step 3 of 8: the job stops, the error names the rank,
 * and neither the model nor its loss curve exists. */
static void test_rank_failure_stops_job(void **state)
{
    (void)state;
    TU_NEED_DATA(model, "models/stories260K.bin");
    TU_NEED_DATA(tok, "models/tok512.bin");
    TU_NEED_DATA(text, "text/tinystories_valid_head.txt");
    if (!mpi_ready()) {
        skip();
        return;
    }
    const char *out = tu_tmp("failed.bin");
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             "WMAT_MPI_FAIL_AT=1:3 " MPIRUN " %s train %s %s --tokenizer %s --data %s --steps 8 --batch 4 --ctx 32 "
             "--threads 1 2>&1",
             tu_cli(), model, out, tok, text);
    int rc;
    char *o = tu_run(cmd, &rc);
    if (!rc) fail_msg("the job with a failing rank exited 0: %s", o);
    if (!strstr(o, "[rank 1] wmat train: error: rank 1: failure injected after step 3") ||
        !strstr(o, "rank 1 of 2 failed: stopping every rank"))
        fail_msg("no clear error from the failing rank: %s", o);
    free(o);
    assert_int_equal(access(out, F_OK), -1);
    char csv[4200];
    snprintf(csv, sizeof csv, "%s.loss.csv", out);
    assert_int_equal(access(csv, F_OK), -1);
}

/* Without MPI in the build, a job started as 2 ranks is refused (each
 * rank would otherwise run and write the whole job). */
static void test_no_mpi_build_refuses_ranks(void **state)
{
    (void)state;
    if (wmat_comm_mpi_built()) {
        print_message("SKIP: this build has MPI (the refusal is for builds without it)\n");
        skip();
        return;
    }
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "OMPI_COMM_WORLD_SIZE=2 %s train --init tiny %s --byte-tokenizer --data /dev/null 2>&1",
             tu_cli(), tu_tmp("x.bin"));
    int rc;
    char *o = tu_run(cmd, &rc);
    assert_int_not_equal(rc, 0);
    if (!strstr(o, "built without MPI")) fail_msg("unclear refusal: %s", o);
    free(o);
    /* and the one-rank stub */
    wmat_comm *c = NULL;
    TU_OK(wmat_comm_create(&c, 0));
    assert_int_equal(wmat_comm_size(c), 1);
    assert_int_equal(wmat_comm_rank(c), 0);
    float x[3] = {1, 2, 3};
    TU_OK(wmat_comm_allreduce_sum_f32(c, x, 3));
    assert_true(x[0] == 1 && x[2] == 3);
    wmat_comm_free(c);
}

int main(void)
{
    wmat_linalg_init(1);
    const char *w = getenv("WMAT_MPI_WORKER");
    if (w) return worker(w);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_full_2ranks),        cmocka_unit_test(test_train_lora_2ranks),
        cmocka_unit_test(test_train_galore_2ranks),      cmocka_unit_test(test_train_fixed_order_bit_equal),
        cmocka_unit_test(test_checkpoint_resumes_1rank),
        cmocka_unit_test(test_quantize_2ranks_identical), cmocka_unit_test(test_rank_failure_stops_job),
        cmocka_unit_test(test_batch_must_split),
        cmocka_unit_test(test_no_mpi_build_refuses_ranks),
    };
    return tu_run_tests("mpi", tests, NULL, NULL);
}
