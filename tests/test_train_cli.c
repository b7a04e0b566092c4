/* `wmat train` end to end: a new byte-level model from a preset on a small
 * text, the loss curve files, the saved model reloaded and evaluated, an
 * interrupt-and-resume through the CLI giving the same file, clear errors. */
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *text_file(void)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s", tu_tmp("text.txt"));
    size_t n = 0, cap = 64 * 1024;
    char *buf = malloc(cap);
    const char *lines[] = {"In the beginning was the word.\n", "And the word was with the cat.\n",
                           "The cat sat on the mat and the dog sat on the log.\n"};
    while (n + 80 < cap) {
        const char *l = lines[(n / 7) % 3];
        size_t k = strlen(l);
        memcpy(buf + n, l, k);
        n += k;
    }
    assert_int_equal(tu_write_file(path, buf, n), 0);
    free(buf);
    return path;
}

static void test_cli_init_train_eval(void **state)
{
    (void)state;
    const char *txt = text_file();
    char cmd[8192];
    const char *out = tu_tmp("m.gguf");
    snprintf(cmd, sizeof cmd,
             "%s train --init tiny %s --byte-tokenizer --data %s --val %s --steps 12 --batch 2 --ctx 32 --threads 1 --json "
             "--eval-every 6 2>/dev/null",
             tu_cli(), out, txt, txt);
    int rc;
    char *o = tu_run(cmd, &rc);
    if (rc) fail_msg("wmat train failed (%d): %s", rc, o);
    assert_non_null(strstr(o, "\"val_loss_end\""));
    free(o);
    char p[4200];
    snprintf(p, sizeof p, "%s.loss.svg", out);
    FILE *f = fopen(p, "r");
    assert_non_null(f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s eval %s --text %s --ctx 32 --max-windows 4 --json", tu_cli(), out, txt);
    o = tu_run(cmd, &rc);
    if (rc) fail_msg("wmat eval of the trained model failed: %s", o);
    assert_non_null(strstr(o, "\"ppl\""));
    free(o);
}

static void test_cli_resume_identical(void **state)
{
    (void)state;
    const char *txt = text_file();
    char cmd[8192], base[4096];
    snprintf(base, sizeof base, "%s train --init tiny --byte-tokenizer --data %s --steps 10 --batch 2 --ctx 16 --threads 1",
             tu_cli(), txt);
    const char *u = tu_tmp("u.gguf"), *r = tu_tmp("r.gguf"), *ck = tu_tmp("r.ckpt");
    int rc;
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", base, u);
    free(tu_run(cmd, &rc));
    assert_int_equal(rc, 0);
    snprintf(cmd, sizeof cmd, "%s %s --checkpoint %s --stop-after 4 2>&1", base, r, ck);
    free(tu_run(cmd, &rc));
    assert_int_equal(rc, 0);
    snprintf(cmd, sizeof cmd, "%s %s --checkpoint %s --resume %s 2>&1", base, r, ck, ck);
    free(tu_run(cmd, &rc));
    assert_int_equal(rc, 0);
    snprintf(cmd, sizeof cmd, "cmp -s %s %s", u, r);
    free(tu_run(cmd, &rc));
    if (rc) fail_msg("resumed model differs from the uninterrupted one");
    /* errors */
    snprintf(cmd, sizeof cmd, "%s train --init tiny %s --byte-tokenizer --data %s --ctx 100000 2>&1", tu_cli(), u, txt);
    char *o = tu_run(cmd, &rc);
    assert_int_not_equal(rc, 0);
    free(o);
    snprintf(cmd, sizeof cmd, "%s train %s %s --data %s --method lora --lora-targets q,nope 2>&1", tu_cli(), u, r, txt);
    o = tu_run(cmd, &rc);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(o, "nope"));
    free(o);
}

/* --help lists every registry entry (the CLI names none itself); an
 * unknown optimizer is refused naming them; a projector around a
 * non-default optimizer trains through the CLI. */
static void test_cli_registries(void **state)
{
    (void)state;
    char cmd[8192];
    int rc;
    snprintf(cmd, sizeof cmd, "%s train --help 2>&1", tu_cli());
    char *o = tu_run(cmd, &rc);
    const wmat_train_registry regs[3] = {WMAT_REG_OPTIMIZER, WMAT_REG_ADAPTER, WMAT_REG_PROJECTOR};
    for (int r = 0; r < 3; r++) {
        const char *nm;
        for (int i = 0; !wmat_train_registry_entry(regs[r], i, &nm, NULL); i++)
            if (!strstr(o, nm)) fail_msg("train --help does not list '%s':\n%s", nm, o);
    }
    free(o);
    const char *txt = text_file(), *out = tu_tmp("proj.gguf");
    const char *opt1 = NULL, *proj = NULL;
    wmat_train_registry_entry(WMAT_REG_OPTIMIZER, 1, &opt1, NULL);
    wmat_train_registry_entry(WMAT_REG_PROJECTOR, 0, &proj, NULL);
    assert_non_null(opt1);
    assert_non_null(proj);
    snprintf(cmd, sizeof cmd, "%s train --init tiny %s --byte-tokenizer --data %s --optimizer no-such-opt 2>&1", tu_cli(),
             out, txt);
    o = tu_run(cmd, &rc);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(o, opt1));
    free(o);
    snprintf(cmd, sizeof cmd,
             "%s train --init tiny %s --byte-tokenizer --data %s --method %s --optimizer %s --lr 0.1 --steps 8 --batch 2 "
             "--ctx 16 --galore-gap 4 --threads 1 --json 2>/dev/null",
             tu_cli(), out, txt, proj, opt1);
    o = tu_run(cmd, &rc);
    if (rc) fail_msg("wmat train --method %s --optimizer %s failed (%d): %s", proj, opt1, rc, o);
    assert_non_null(strstr(o, "\"final_train_loss\""));
    free(o);
}

static double ppl_of(const char *args, const char *txt)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s eval %s --text %s --ctx 32 --max-windows 4 --json 2>/dev/null", tu_cli(), args, txt);
    int rc;
    char *o = tu_run(cmd, &rc);
    if (rc) fail_msg("wmat eval %s failed: %s", args, o ? o : "");
    const char *p = o ? strstr(o, "\"ppl\": ") : NULL;
    const double v = p ? atof(p + 7) : -1;
    free(o);
    return v;
}

/* A LoRA run's PEFT directory (--lora-out) described by `adapter info`,
 * merged by `adapter merge` and applied by `eval --adapter`: all three
 * score as the trainer's own merged model, and differ from the base. */
static void test_cli_adapter_merge_apply(void **state)
{
    (void)state;
    const char *txt = text_file();
    char cmd[8192], base[1024], ft[1024], dir[1024], merged[1024];
    snprintf(base, sizeof base, "%s", tu_tmp("abase.gguf"));
    snprintf(ft, sizeof ft, "%s", tu_tmp("aft.gguf"));
    snprintf(dir, sizeof dir, "%s", tu_tmp("alora"));
    snprintf(merged, sizeof merged, "%s", tu_tmp("amerged.gguf"));
    int rc;
    snprintf(cmd, sizeof cmd, "%s train --init tiny %s --byte-tokenizer --data %s --steps 4 --batch 2 --ctx 32 --threads 1 2>&1",
             tu_cli(), base, txt);
    char *o = tu_run(cmd, &rc);
    if (rc) fail_msg("base: %s", o);
    free(o);
    snprintf(cmd, sizeof cmd,
             "%s train %s %s --method lora --lora-out %s --data %s --steps 6 --batch 2 --ctx 32 --lr 1e-2 --threads 1 2>&1",
             tu_cli(), base, ft, dir, txt);
    o = tu_run(cmd, &rc);
    if (rc) fail_msg("lora: %s", o);
    free(o);
    snprintf(cmd, sizeof cmd, "%s adapter info %s", tu_cli(), dir);
    o = tu_run(cmd, &rc);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(o, "\"LORA\""));
    assert_non_null(strstr(o, "q_proj"));
    free(o);
    snprintf(cmd, sizeof cmd, "%s adapter merge %s %s %s 2>&1", tu_cli(), base, dir, merged);
    o = tu_run(cmd, &rc);
    if (rc) fail_msg("adapter merge: %s", o);
    free(o);
    char with[2200];
    snprintf(with, sizeof with, "%s --adapter %s", base, dir);
    const double p_ft = ppl_of(ft, txt), p_merged = ppl_of(merged, txt), p_with = ppl_of(with, txt), p_base = ppl_of(base, txt);
    print_message("  ppl: base %.6f, trainer's merge %.6f, adapter merge %.6f, eval --adapter %.6f\n", p_base, p_ft, p_merged,
                  p_with);
    TU_ASSERT_BELOW(fabs(p_merged / p_ft - 1), 1e-5);
    TU_ASSERT_BELOW(fabs(p_with / p_ft - 1), 1e-5);
    if (!(fabs(p_base / p_ft - 1) > 1e-3)) fail_msg("the adapter changed nothing (base %g, fine-tune %g)", p_base, p_ft);
    /* a missing directory and an unknown subcommand are clear errors */
    snprintf(cmd, sizeof cmd, "%s adapter merge %s %s/nope %s 2>&1", tu_cli(), base, dir, merged);
    o = tu_run(cmd, &rc);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(o, "nope"));
    free(o);
    snprintf(cmd, sizeof cmd, "%s adapter frobnicate %s 2>&1", tu_cli(), dir);
    o = tu_run(cmd, &rc);
    assert_int_equal(rc, 2);
    free(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli_init_train_eval),
        cmocka_unit_test(test_cli_resume_identical),
        cmocka_unit_test(test_cli_registries),
        cmocka_unit_test(test_cli_adapter_merge_apply),
    };
    return tu_run_tests("train_cli", tests, NULL, NULL);
}
