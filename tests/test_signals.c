/* Ctrl-C during a long command (issue 18): `wmat train` stops within a
 * second of SIGINT with "interrupted" and exit status 130, leaves no model,
 * no loss log and no temporary file, and writes a checkpoint that a second
 * run resumes from; a second signal is not needed, and SIGTERM does the
 * same. */
#include "test_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void text_file(const char *path)
{
    char buf[32768];
    size_t n = 0;
    const char *line = "The cat sat on the mat and the dog sat on the log.\n";
    while (n + strlen(line) < sizeof buf) {
        memcpy(buf + n, line, strlen(line));
        n += strlen(line);
    }
    assert_int_equal(tu_write_file(path, buf, n), 0);
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return strdup("");
    char *b = calloc(1, 1 << 20);
    size_t n = fread(b, 1, (1 << 20) - 1, f);
    b[n] = 0;
    fclose(f);
    return b;
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Entries of dir whose names contain "tmp" or start with '.' (the writers'
 * temporaries), other than "." and "..". */
static int temporaries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && (e->d_name[0] == '.' || strstr(e->d_name, "tmp"))) n++;
    closedir(d);
    return n;
}

/* Run argv with stderr to err_path; once err_path contains `ready`, send
 * sig; returns the exit status (or 128 + signal), and the seconds from the
 * signal to the exit. */
static int run_and_signal(char *const argv[], const char *err_path, const char *ready, int sig, double *stop_s)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) _exit(127);
        dup2(fd, 2);
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) dup2(null, 1);
        execv(argv[0], argv);
        _exit(127);
    }
    const double t_start = now_s();
    int status = 0, sent = 0;
    double t_sig = 0;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) break;
        if (!sent) {
            char *e = read_all(err_path);
            int go = strstr(e, ready) != NULL;
            free(e);
            if (go) {
                kill(pid, sig);
                t_sig = now_s();
                sent = 1;
            } else if (now_s() - t_start > 120) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                fail_msg("%s never printed '%s'", argv[0], ready);
            }
        } else if (now_s() - t_sig > 30) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fail_msg("%s did not stop within 30 s of signal %d", argv[0], sig);
        }
        usleep(20000);
    }
    assert_true(sent);
    *stop_s = now_s() - t_sig;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void interrupt_train(int sig)
{
    char dir[4096], txt[4200], out[4200], err[4200], ckpt[4400], csv[4400], steps_s[32];
    snprintf(dir, sizeof dir, "%s/sig%d", tu_tmpdir(), sig);
    mkdir(dir, 0755);
    snprintf(txt, sizeof txt, "%s/../sig_text.txt", dir);
    snprintf(out, sizeof out, "%s/m.gguf", dir);
    snprintf(err, sizeof err, "%s/../sig_err%d.txt", dir, sig);
    unlink(err); /* the child truncates it, but only after the parent may have looked */
    snprintf(ckpt, sizeof ckpt, "%s.ckpt", out);
    snprintf(csv, sizeof csv, "%s.loss.csv", out);
    text_file(txt);
    snprintf(steps_s, sizeof steps_s, "%d", 1000000);
    char *argv[] = {(char *)tu_cli(), "train", "--init", "tiny", out, "--byte-tokenizer", "--data", txt, "--steps", steps_s,
                    "--batch", "2", "--ctx", "32", "--threads", "1", NULL};
    double stop_s = 0;
    /* "step    10/" is printed after step 10: training is well under way */
    int rc = run_and_signal(argv, err, "step    10/", sig, &stop_s);
    char *e = read_all(err);
    if (rc != 130) fail_msg("exit status %d after signal %d, want 130; stderr:\n%s", rc, sig, e);
    assert_non_null(strstr(e, "interrupted"));
    if (stop_s > 2.0) fail_msg("stopped %.2f s after the signal (want within a second)", stop_s);
    print_message("signal %d: stopped %.3f s after it, exit 130\n", sig, stop_s);
    assert_false(exists(out));
    assert_false(exists(csv));
    assert_true(exists(ckpt));
    assert_int_equal(temporaries(dir), 0);
    /* the checkpoint resumes: one more step, then a normal exit */
    const char *p = strstr(e, "interrupted after step ");
    assert_non_null(p);
    int step = atoi(p + strlen("interrupted after step "));
    assert_true(step >= 10);
    free(e);
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "%s train --init tiny %s --byte-tokenizer --data %s --steps %d --batch 2 --ctx 32 --threads 1 --resume %s --stop-after %d 2>&1",
             tu_cli(), out, txt, 1000000, ckpt, step + 1);
    char *o = tu_run(cmd, &rc);
    if (rc) fail_msg("resuming from %s failed (%d): %s", ckpt, rc, o);
    free(o);
    assert_true(exists(out));
}

static void test_train_sigint(void **state)
{
    (void)state;
    interrupt_train(SIGINT);
}

static void test_train_sigterm(void **state)
{
    (void)state;
    interrupt_train(SIGTERM);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_sigint),
        cmocka_unit_test(test_train_sigterm),
    };
    return tu_run_tests("signals", tests, NULL, NULL);
}
