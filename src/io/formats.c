/* The registry of model formats: how each is recognised, read and written.
 * wmat_model_load / wmat_model_save and the format names go through this
 * table only, so a format is a reader/writer file plus a row here. */
#include "model_internal.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* What a detector sees: whether the path is a directory, and a file's
 * first bytes. */
typedef struct {
    const char *path;
    int is_dir;
    unsigned char magic[8];
    size_t n_magic;
} probe;

static int is_quant_dir(const probe *p) { return p->is_dir && wmat__quant_dir_detect(p->path); }
static int is_gptq_dir(const probe *p) { return p->is_dir && wmat__gptq_dir_detect(p->path); }
static int is_hf_dir(const probe *p) { return p->is_dir; }
static int is_gguf(const probe *p) { return !p->is_dir && p->n_magic >= 4 && !memcmp(p->magic, "GGUF", 4); }
static int is_llama2c(const probe *p) { return !p->is_dir; } /* no magic: any other file, tried last */

static int save_quant(wmat_model *m, const char *path, const wmat_save_params *p)
{
    (void)p;
    return wmat_quant_model_save(m, path, WMAT_FMT_QUANT);
}

typedef struct {
    wmat_format fmt;
    const char *name;
    int (*detect)(const probe *p);
    int (*load)(wmat_model **out, const char *path, const wmat_load_params *p);
    int (*save)(wmat_model *m, const char *path, const wmat_save_params *p);
} format_entry;

/* In detection order: the most specific first. */
static const format_entry g_formats[] = {
    {WMAT_FMT_QUANT, "quant", is_quant_dir, wmat__quant_load, save_quant}, /* native.c */
    {WMAT_FMT_GPTQ, "gptq", is_gptq_dir, wmat__gptq_load, wmat__gptq_save}, /* gptq.c */
    {WMAT_FMT_HF, "hf", is_hf_dir, wmat__hf_load, wmat__hf_save},          /* hf.c */
    {WMAT_FMT_GGUF, "gguf", is_gguf, wmat__gguf_load, wmat__gguf_save},    /* gguf.c */
    {WMAT_FMT_LLAMA2C, "llama2c", is_llama2c, wmat__llama2c_load, wmat__llama2c_save}, /* llama2c.c */
};
#define N_FORMATS ((int)(sizeof g_formats / sizeof g_formats[0]))

static const format_entry *by_fmt(wmat_format f)
{
    for (int i = 0; i < N_FORMATS; i++)
        if (g_formats[i].fmt == f) return &g_formats[i];
    return NULL;
}

const char *wmat_format_name(wmat_format f)
{
    const format_entry *e = by_fmt(f);
    return e ? e->name : "unknown";
}

wmat_format wmat_format_for_path(const char *path)
{
    const size_t n = strlen(path);
    if (n >= 5 && !strcmp(path + n - 5, ".gguf")) return WMAT_FMT_GGUF;
    if (n >= 4 && !strcmp(path + n - 4, ".bin")) return WMAT_FMT_LLAMA2C;
    return WMAT_FMT_HF;
}

wmat_format wmat_format_from_name(const char *name)
{
    for (int i = 0; i < N_FORMATS; i++)
        if (!strcmp(name, g_formats[i].name)) return g_formats[i].fmt;
    return WMAT_FMT_UNKNOWN;
}

wmat_format wmat_detect_format(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) return WMAT_FMT_UNKNOWN;
    probe p = {path, S_ISDIR(st.st_mode), {0}, 0};
    if (!p.is_dir) {
        FILE *f = fopen(path, "rb");
        if (!f) return WMAT_FMT_UNKNOWN;
        p.n_magic = fread(p.magic, 1, sizeof p.magic, f);
        fclose(f);
    }
    for (int i = 0; i < N_FORMATS; i++)
        if (g_formats[i].detect(&p)) return g_formats[i].fmt;
    return WMAT_FMT_UNKNOWN;
}

int wmat__format_load(wmat_format f, wmat_model **out, const char *path, const wmat_load_params *p)
{
    const format_entry *e = by_fmt(f);
    if (!e) return wmat_set_error(WMAT_ERR_IO, "%s: no such file or directory", path);
    return e->load(out, path, p);
}

int wmat__format_save(wmat_model *m, const char *path, const wmat_save_params *p)
{
    const format_entry *e = by_fmt(p->format);
    if (!e) return wmat_set_error(WMAT_ERR_INVALID, "%s: unknown output format", path);
    return e->save(m, path, p);
}
