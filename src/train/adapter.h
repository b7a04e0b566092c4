/* Adapters of the trainer (private): a registry of trainable additions to
 * a frozen linear layer Y = X W^T, one entry per file (adapter_<name>.c),
 * the table in adapter.c. docs/TRAINING.md says how to add one.
 *
 * The trainer's linear op is the base product followed by the adapter's
 * forward, which ADDS its contribution to Y; the backward likewise adds to
 * dX after the base has written it. An adapter owns n_tensors trainable
 * tensors per adapted layer (LoRA: A (r, in), B (out, r)); the trainer
 * keeps them, their gradients and optimizer states in its arenas. */
#ifndef WMAT_TRAIN_ADAPTER_H
#define WMAT_TRAIN_ADAPTER_H

#include "../core/internal.h"

#define WMAT__ADAPTER_MAX_TENSORS 4

/* Settings shared by all adapted layers of a run. */
typedef struct {
    int rank;
    float alpha;
} wmat__adapter_cfg;

typedef struct wmat__adapter {
    const char *name;
    const char *summary;
    int n_tensors;
    /* Per tensor: PEFT key ("lora_A"), and whether its rows are the
     * layer's output features (those rows follow the base's row order, so
     * HF's rotary permutation of q/k applies to them in PEFT files). */
    const char *tensor_key[WMAT__ADAPTER_MAX_TENSORS];
    int rows_are_out[WMAT__ADAPTER_MAX_TENSORS];
    /* Shapes of the tensors for a layer (in -> out). */
    void (*shapes)(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols);
    /* Floats saved by forward for backward (act), and backward's scratch,
     * for BT rows. */
    size_t (*act_floats)(const wmat__adapter_cfg *c, int BT);
    size_t (*scratch_floats)(const wmat__adapter_cfg *c, int BT);
    /* The scale s of the adapter's path for this configuration. */
    float (*scale)(const wmat__adapter_cfg *c);
    /* Fresh tensors (zeroed on entry), drawing from rng. */
    void (*init)(const wmat__adapter_cfg *c, float *const *w, int in, int out, wmat_rng *rng);
    /* Y (BT, out) += adapter(X (BT, in)); act: what backward needs. */
    void (*forward)(const wmat__adapter_cfg *c, float *Y, float *act, const float *X, const float *const *w, int BT,
                    int in, int out);
    /* dw[i] += gradients of the tensors (NULL: not wanted); dX (BT, in) +=
     * the input gradient of the adapter path when dX is not NULL. */
    void (*backward)(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                     const float *X, const float *const *w, const float *act, int BT, int in, int out);
    /* W (out, in) += the adapter's matrix: afterwards X W^T equals base +
     * adapter. */
    void (*merge)(const wmat__adapter_cfg *c, float *W, const float *const *w, int in, int out);
    /* PEFT: peft_type and the adapter_config.json fields after the common
     * ones (written into buf, returns the length); parse reads them back
     * into c and says whether the file is this entry's (1) or not (0). */
    const char *peft_type;
    size_t (*peft_config)(const wmat__adapter_cfg *c, char *buf, size_t n);
    int (*peft_parse)(const void *cjson, wmat__adapter_cfg *c);
} wmat__adapter;

const wmat__adapter *wmat__adapter_at(int i);
const wmat__adapter *wmat__adapter_find(const char *name);

/* PEFT files of an adapter over a model's layers. tensors[(l * 7 + k) *
 * WMAT__ADAPTER_MAX_TENSORS + i] points to tensor i of layer l, linear kind
 * k (NULL where that linear is not adapted). Keys are
 * base_model.model.model.layers.L.<module>.<tensor_key>.weight. */
int wmat__adapter_peft_save(const wmat__adapter *a, const wmat__adapter_cfg *c, const wmat_config *mc,
                            float *const *tensors, const char *base_path, const char *dir);
/* Merge a PEFT directory into m in place (any registered adapter whose
 * peft_parse accepts the config). */
int wmat__adapter_peft_merge(wmat_model *m, const char *dir);

extern const wmat__adapter wmat__adapter_lora;
extern const wmat__adapter wmat__adapter_rslora;

#endif
