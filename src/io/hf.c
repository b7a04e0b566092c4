/* Hugging Face directories (stub until implemented). */
#include "model_internal.h"
int wmat__hf_load(wmat_model **out, const char *path, const wmat_load_params *p)
{
    (void)p;
    *out = NULL;
    return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: HF reading is not implemented yet", path);
}
int wmat__hf_save(wmat_model *m, const char *path, const wmat_save_params *p)
{
    (void)m; (void)p;
    return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: HF writing is not implemented yet", path);
}
