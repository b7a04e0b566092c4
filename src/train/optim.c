/* The optimizer and projector registries (see optim.h) and the raw state
 * (de)serializer shared by optimizers that store states as they are. */
#include "optim.h"

#include <stdio.h>
#include <string.h>

/* One line per optimizer: the trainer, the CLI's --help and the tests
 * (tests/test_train_registry.c) iterate this table. */
static const wmat__optimizer *const optimizers[] = {&wmat__optim_adamw, &wmat__optim_sgd, &wmat__optim_adamw8bit};
static const wmat__projector *const projectors[] = {&wmat__proj_galore, &wmat__proj_fira, &wmat__proj_gradnormlorp};

const wmat__optimizer *wmat__optimizer_at(int i)
{
    return i >= 0 && i < (int)(sizeof optimizers / sizeof optimizers[0]) ? optimizers[i] : NULL;
}

const wmat__optimizer *wmat__optimizer_find(const char *name)
{
    for (int i = 0; name && wmat__optimizer_at(i); i++)
        if (!strcmp(optimizers[i]->name, name)) return optimizers[i];
    return NULL;
}

const wmat__projector *wmat__projector_at(int i)
{
    return i >= 0 && i < (int)(sizeof projectors / sizeof projectors[0]) ? projectors[i] : NULL;
}

const wmat__projector *wmat__projector_find(const char *name)
{
    for (int i = 0; name && wmat__projector_at(i); i++)
        if (!strcmp(projectors[i]->name, name)) return projectors[i];
    return NULL;
}

int wmat__optim_serialize_raw(const wmat__optimizer *o, const wmat__optim_states *s, wmat_st_entry *e,
                              char (*names)[64])
{
    int n = 0;
    for (int k = 0; k < o->n_states; k++) {
        if (!s->elems[k]) continue; /* safetensors has no use for empty tensors */
        snprintf(names[n], 64, "optim.%s", o->states[k].name);
        memset(&e[n], 0, sizeof e[n]);
        e[n].name = names[n];
        e[n].dtype = o->states[k].dtype;
        e[n].ndim = 1;
        e[n].shape[0] = (int64_t)s->elems[k];
        e[n].data = s->base[k];
        n++;
    }
    return n;
}

int wmat__optim_deserialize_raw(const wmat__optimizer *o, const wmat__optim_states *s, const wmat_st_file *f,
                                const char *path)
{
    const wmat_st_tensor *t[WMAT__OPT_MAX_STATES] = {0};
    /* all checks first: a refused file changes nothing */
    for (int k = 0; k < o->n_states; k++) {
        if (!s->elems[k]) continue;
        char nm[64];
        snprintf(nm, sizeof nm, "optim.%s", o->states[k].name);
        t[k] = wmat__st_find(f, nm);
        if (!t[k] || t[k]->dtype != o->states[k].dtype || t[k]->nelem != s->elems[k] ||
            t[k]->nbytes != s->elems[k] * o->states[k].elem_bytes)
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: optimizer state %s missing or not %zu elements of %s", path, nm,
                                  s->elems[k], wmat__st_dtype_name(o->states[k].dtype));
    }
    for (int k = 0; k < o->n_states; k++)
        if (t[k]) memcpy(s->base[k], t[k]->data, t[k]->nbytes);
    return WMAT_OK;
}
