#include "cli_out.h"

FILE *cli_out_open(wmat_afile *af, const char *path)
{
    if (wmat__afile_open(af, path)) return NULL;
    return af->f;
}

int cli_out_close(wmat_afile *af)
{
    if (!af->f) return -1;
    /* fprintf bypasses wmat__afile_write: its errors are in the stream */
    if (ferror(af->f)) {
        char *path = af->path;
        af->path = NULL; /* keep the name for the message */
        wmat__afile_abort(af);
        wmat_set_error(WMAT_ERR_IO, "%s: write failed", path ? path : "output");
        wmat__free(path);
        return -1;
    }
    return wmat__afile_commit(af) ? -1 : 0;
}

void cli_out_abort(wmat_afile *af)
{
    if (af->f || af->tmp_path) wmat__afile_abort(af);
}

void cli_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *c = (const unsigned char *)(s ? s : ""); *c; c++) {
        if (*c == '"' || *c == '\\') fprintf(f, "\\%c", *c);
        else if (*c == '\n') fputs("\\n", f);
        else if (*c < 0x20) fprintf(f, "\\u%04x", *c);
        else fputc(*c, f);
    }
    fputc('"', f);
}
