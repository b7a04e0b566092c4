/* Atomic outputs under SIGKILL: the CLI converts a ~100 MB model and is
 * killed while its temporary output is being written. Afterwards no file may
 * exist under the final name (or a file that was there before is byte-for-
 * byte intact), and the only leftover allowed is "<final>.tmp.<pid>".
 * Uses fork/exec on the CLI built beside the tests (tu_cli()). */
#include "test_util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char g_big[512]; /* the synthetic llama2.c model */

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static char *slurp(const char *path, size_t *n)
{
    char *buf = NULL;
    if (wmat_read_file(path, &buf, n) != WMAT_OK) return NULL;
    return buf;
}

/* Start `wmat convert IN OUT --to FMT --dtype DT`, wait until its temporary
 * (OUT.tmp.PID, or OUT/model.safetensors.tmp.PID for hf) holds at least
 * `min_bytes`, SIGKILL it. Returns 1 if killed midway, 0 if it finished first. */
static int convert_and_kill(const char *out, const char *fmt, const char *dtype, long min_bytes)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execl(tu_cli(), tu_cli(), "convert", g_big, out, "--to", fmt, "--dtype", dtype, "--threads", "1",
              "--no-blas-tune", (char *)NULL);
        _exit(127);
    }
    char tmp[1024];
    if (!strcmp(fmt, "hf")) snprintf(tmp, sizeof tmp, "%s/model.safetensors.tmp.%ld", out, (long)pid);
    else snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out, (long)pid);
    int killed = 0, status = 0;
    for (int i = 0; i < 60000; i++) { /* at most ~60 s */
        if (file_size(tmp) >= min_bytes) {
            kill(pid, SIGKILL);
            killed = 1;
            break;
        }
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) return 0; /* finished (or failed) before we could kill it */
        sleep_ms(1);
    }
    if (!killed) kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    return killed;
}

/* Everything in dir other than the names in keep[] must be "<final>.tmp.*". */
static void assert_only_tmp_leftovers(const char *dir, const char *final_base, const char *const *keep)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    char prefix[600];
    snprintf(prefix, sizeof prefix, "%s.tmp.", final_base);
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        int ok = !strncmp(e->d_name, prefix, strlen(prefix));
        for (int i = 0; keep && keep[i]; i++) ok |= !strcmp(e->d_name, keep[i]);
        if (!ok) fail_msg("unexpected file after SIGKILL: %s/%s", dir, e->d_name);
    }
    closedir(d);
}

static void kill_one(const char *name, const char *fmt, const char *dtype, int preexisting)
{
    char dir[600], out[700];
    snprintf(dir, sizeof dir, "%s", tu_tmp(name));
    assert_int_equal(mkdir(dir, 0700), 0);
    const char *base = !strcmp(fmt, "hf") ? "hf-out" : (!strcmp(fmt, "gguf") ? "out.gguf" : "out.bin");
    snprintf(out, sizeof out, "%s/%s", dir, base);
    static const char old_text[] = "a previous output that must survive\n";
    char old_path[800];
    if (!strcmp(fmt, "hf")) {
        assert_int_equal(mkdir(out, 0700), 0);
        snprintf(old_path, sizeof old_path, "%s/model.safetensors", out);
    } else {
        snprintf(old_path, sizeof old_path, "%s", out);
    }
    if (preexisting) assert_int_equal(tu_write_file(old_path, old_text, sizeof old_text - 1), 0);

    int killed = 0;
    for (int attempt = 0; attempt < 3 && !killed; attempt++) {
        killed = convert_and_kill(out, fmt, dtype, 4L << 20);
        if (!killed) {
            /* Too fast to interrupt: restore the starting state and retry. */
            print_message("%s: conversion finished before the kill, retrying\n", name);
            if (!strcmp(fmt, "hf")) {
                char cmd[1600];
                snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir '%s'", out, out);
                assert_int_equal(system(cmd), 0);
            } else {
                unlink(out);
            }
            if (preexisting) assert_int_equal(tu_write_file(old_path, old_text, sizeof old_text - 1), 0);
        }
    }
    if (!killed) {
        print_message("SKIP: %s: could not interrupt the conversion\n", name);
        skip();
        return;
    }
    if (preexisting) {
        size_t n;
        char *now = slurp(old_path, &n);
        assert_non_null(now);
        assert_int_equal(n, sizeof old_text - 1);
        assert_memory_equal(now, old_text, n);
        free(now);
    } else {
        assert_true(access(old_path, F_OK) != 0);
    }
    if (!strcmp(fmt, "hf")) {
        static const char *const keep_pre[] = {"model.safetensors", NULL};
        assert_only_tmp_leftovers(out, "model.safetensors", preexisting ? keep_pre : NULL);
        assert_only_tmp_leftovers(dir, base, (const char *const[]){base, NULL});
    } else {
        assert_only_tmp_leftovers(dir, base, preexisting ? (const char *const[]){base, NULL} : NULL);
    }
    print_message("%s: killed midway; %s\n", name, preexisting ? "previous file intact" : "no file under the final name");
}

static void test_kill_gguf_f16(void **state) { (void)state; kill_one("k-gguf", "gguf", "f16", 0); }
static void test_kill_gguf_over_existing(void **state) { (void)state; kill_one("k-gguf-old", "gguf", "f32", 1); }
static void test_kill_llama2c(void **state) { (void)state; kill_one("k-bin", "llama2c", "f32", 0); }
static void test_kill_hf_over_existing(void **state) { (void)state; kill_one("k-hf-old", "hf", "f16", 1); }

/* A ~100 MB zero llama2.c model (2 layers of width 1024); the data only has
 * to be large, not meaningful. */
static int setup(void **state)
{
    (void)state;
    wmat_config c = tu_config(1024, 2816, 2, 8, 8, 512, 64);
    wmat_model *m = NULL;
    if (wmat_model_create(&m, &c) != WMAT_OK) return -1;
    snprintf(g_big, sizeof g_big, "%s", tu_tmp("big.bin"));
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_LLAMA2C;
    int rc = wmat_model_save(m, g_big, &sp);
    wmat_model_free(m);
    if (rc != WMAT_OK) {
        print_error("setup: %s\n", wmat_last_error());
        return -1;
    }
    print_message("model: %s, %ld bytes\n", g_big, file_size(g_big));
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill_gguf_f16),
        cmocka_unit_test(test_kill_gguf_over_existing),
        cmocka_unit_test(test_kill_llama2c),
        cmocka_unit_test(test_kill_hf_over_existing),
    };
    return tu_run_tests("atomic_kill", tests, setup, NULL);
}
