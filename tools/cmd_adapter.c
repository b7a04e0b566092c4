/* adapter: PEFT adapter directories (adapter_config.json +
 * adapter_model.safetensors, as `wmat train --lora-out` and PEFT write
 * them): describe one, or merge one or more into a base model and write
 * the result in any format. generate/eval take --adapter DIR for the same
 * merge in memory. */
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void print_field(const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!v) return;
    char *txt = cJSON_PrintUnformatted(v);
    printf("  %-26s %s\n", key, txt ? txt : "?");
    free(txt);
}

static int adapter_info(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    char *text;
    size_t len;
    if (wmat_read_file(path, &text, &len)) return cli_fail("adapter");
    cJSON *cfg = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cfg || !cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        fprintf(stderr, "wmat adapter: error: %s: not a JSON object\n", path);
        return 1;
    }
    printf("adapter %s\n", dir);
    static const char *const keys[] = {"peft_type", "base_model_name_or_path", "r", "lora_alpha", "use_rslora", "use_dora",
                                       "init_lora_weights", "target_modules", "lora_dropout", "bias", "task_type"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) print_field(cfg, keys[i]);
    cJSON_Delete(cfg);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "wmat adapter: error: %s: no such file\n", path);
        return 1;
    }
    char b[32];
    printf("  %-26s %s\n", "adapter_model.safetensors", cli_bytes((double)st.st_size, b, sizeof b));
    return 0;
}

int cmd_adapter(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("adapter");
    const char *to = NULL, *dtype = NULL;
    cli_opt opts[] = {
        {"--to", OPT_STR, &to, "FMT", "merge: output format llama2c|gguf|hf (default by extension)"},
        {"--dtype", OPT_STR, &dtype, "T", "merge: output weights f32 (default), f16, bf16, or a GGUF block type"},
        {NULL, 0, NULL, NULL, NULL},
    };
    if (argc < 2 || argv[1][0] == '-') {
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
            cli_usage(cmd, opts);
            printf("\ninfo DIR                  what a PEFT adapter directory holds (its adapter_config.json)\n"
                   "merge BASE DIR... OUT     BASE with each adapter merged in, in order, written to OUT\n"
                   "PEFT types read: LoRA (rsLoRA, DoRA, converted PiSSA/OLoRA) and wmat's other registered adapters\n"
                   "with a PEFT layout; generate and eval take --adapter DIR to do the same merge in memory.\n");
            return 0;
        }
        return cli_usage_error("adapter", "give info or merge");
    }
    const char *sub = argv[1];
    const char *pos[34];
    int np = 0;
    int rc = cli_parse(cmd, argc - 1, argv + 1, opts, pos, 1, 34, &np);
    if (rc) return rc == 1 ? 0 : rc;
    if (!strcmp(sub, "info")) {
        if (np != 1 || to || dtype) return cli_usage_error("adapter", "info takes one adapter directory and no options");
        return adapter_info(pos[0]);
    }
    if (strcmp(sub, "merge")) return cli_usage_error("adapter", "unknown subcommand '%s' (info, merge)", sub);
    if (np < 3) return cli_usage_error("adapter", "merge takes BASE DIR... OUT");
    wmat_save_params sp = wmat_save_default_params();
    const char *out = pos[np - 1];
    sp.format = to ? wmat_format_from_name(to) : wmat_format_for_path(out);
    if (sp.format == WMAT_FMT_UNKNOWN) return cli_usage_error("adapter", "unknown --to '%s' (llama2c, gguf, hf)", to);
    if (dtype) {
        const int d = wmat_dtype_from_name(dtype);
        if (d < 0 || !wmat_dtype_info((wmat_dtype)d)->is_float) return cli_usage_error("adapter", "unknown --dtype '%s'", dtype);
        sp.dtype = (wmat_dtype)d;
    }
    wmat_model *m;
    if (cli_load_model("adapter", pos[0], CLI_LOAD_F32, &m)) return 1;
    for (int i = 1; i < np - 1; i++)
        if (cli_apply_adapter("adapter", m, pos[i])) return 1;
    if (wmat_model_save(m, out, &sp)) {
        wmat_model_free(m);
        return cli_fail("adapter");
    }
    fprintf(stderr, "wrote %s (%s, %s)\n", out, wmat_format_name(sp.format), wmat_dtype_info(sp.dtype)->name);
    wmat_model_free(m);
    return 0;
}
