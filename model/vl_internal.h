/* vl_internal.h — shared internals of the Qwen3-VL forward (the model engine's .c files in model/
 * only; not a public header). The model structs mirror the checkpoint's module tree:
 * model.visual.* -> vl_vision, model.language_model.* -> vl_text. */
#ifndef VIGIL_MODEL_VL_INTERNAL_H
#define VIGIL_MODEL_VL_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "model/dnnl_ops.h"
#include "model/model.h"

/* printf into the caller's error buffer; returns -1 so callers can `return vl_err(...)`. */
int vl_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- weights ----------------------------------------------------------------------------- */

typedef struct vl_norm {
    float *weight;            /* [dim] */
    float *bias;              /* [dim] or NULL (RMSNorm) */
    int dim;
} vl_norm;

typedef struct vl_vision_block {
    vl_norm norm1, norm2;
    vl_linear qkv, proj, fc1, fc2;
} vl_vision_block;

typedef struct vl_merger {
    vl_norm norm;             /* over hidden (main merger) or 4*hidden (DeepStack) */
    bool postshuffle;         /* DeepStack: group 4 patches first, then norm */
    vl_linear fc1, fc2;
} vl_merger;

typedef struct vl_vision {
    int hidden, heads, head_dim, inter, depth, merge, patch, tpatch, in_ch, out_hidden;
    int patch_dim;
    int grid_side;            /* sqrt(num_position_embeddings) */
    vl_linear patch_embed;    /* Conv3d as [patch_dim] -> [hidden] + bias */
    float *pos_embed;         /* [num_position_embeddings, hidden] */
    float *rope_inv_freq;     /* [head_dim/4] */
    vl_vision_block *blocks;
    vl_merger merger;
    int num_deepstack;
    int deepstack_index[MODEL_MAX_DEEPSTACK];
    vl_merger deepstack[MODEL_MAX_DEEPSTACK];
} vl_vision;

typedef struct vl_text_layer {
    vl_norm input_norm, post_norm;
    vl_linear qkv;            /* q_proj|k_proj|v_proj concatenated along the output */
    vl_linear o_proj;
    vl_norm q_norm, k_norm;   /* over head_dim */
    bool moe;
    vl_linear gate_up;        /* dense: gate_proj|up_proj */
    vl_linear down;
    vl_linear router;         /* MoE: hidden -> experts, always f32 (routing stays f32) */
    vl_linear *exp_gate_up;   /* MoE: [experts], each [hidden] -> [2I] (gate half first) */
    vl_linear *exp_down;      /* MoE: [experts], each [I] -> [hidden] */
} vl_text_layer;

typedef struct vl_text {
    int hidden, layers, heads, kv_heads, head_dim, inter, vocab;
    int experts, top_k, moe_inter;
    bool norm_topk;
    float rms_eps;
    const st_tensor *embed;   /* [vocab, hidden] in the mapping (rows read on lookup) */
    vl_text_layer *layer;
    vl_norm norm;
    vl_linear lm_head;        /* tied: packed from embed_tokens */
    float *rope_inv_freq;     /* [head_dim/2] */
    int rope_axis[512];       /* per frequency: 0 = T, 1 = H, 2 = W (interleaved MRoPE) */
} vl_text;

/* Scratch buffers reused across calls (grown on demand). */
typedef struct vl_buf {
    void *p;
    size_t cap;
} vl_buf;
void *vl_buf_get(vl_buf *b, size_t bytes);   /* NULL on OOM; contents not preserved */
void vl_buf_free(vl_buf *b);

struct model {
    const checkpoint *ck;
    model_config cfg;
    model_compute compute;
    int threads;
    vl_dnnl *dnnl;
    vl_vision vis;
    vl_text txt;
    size_t weight_bytes;
    model_trace_fn trace;
    void *trace_ctx;
    int32_t im_end_id;        /* -1 when unknown */
    vl_buf scratch[16];
};

static inline void vl_trace(const model *m, const char *name, int index, const float *data,
                            int rows, int cols) {
    if (m->trace) m->trace(m->trace_ctx, name, index, data, rows, cols);
}

/* model.c helpers for loading */
int vl_vision_load(model *m, char *err, size_t errlen);
void vl_vision_free(vl_vision *v);
int vl_text_load(model *m, char *err, size_t errlen);
void vl_text_free(vl_text *t);

/* Norms (f32, as upstream: LayerNorm with biased variance; RMSNorm computed in f32). */
void vl_layernorm(const vl_norm *n, const float *x, float *y, int rows, int ld_x, int ld_y,
                  float eps);
void vl_rmsnorm_row(const float *w, const float *x, float *y, int d, float eps);
void vl_rmsnorm(const vl_norm *n, const float *x, float *y, int rows, int ld_x, int ld_y,
                float eps);

/* ---- KV cache ---------------------------------------------------------------------------- */

struct model_kv {
    int capacity;
    int layers, kv_heads, head_dim;
    bool bf16;
    size_t elt;                /* bytes per element */
    size_t layer_bytes;        /* bytes of one layer's K (or V) block */
    uint8_t *state;            /* [capacity] model_slot_state */
    model_pos *pos;            /* [capacity] */
    void **k, **v;             /* [layers] -> [kv_heads][capacity][head_dim] */
    int counts[3];
};

static inline void *vl_kv_at(const model_kv *kv, void *base, int head, int slot) {
    return (uint8_t *)base + (((size_t)head * kv->capacity + slot) * kv->head_dim) * kv->elt;
}

/* y = act(x W + b) (or y += ...) for f32 rows x: converts x to bf16 first in bf16 mode. */
int vl_lin(model *m, const vl_linear *l, const float *x, int M, int ldx, float *y, int ldy,
           vl_act act, bool accumulate, char *err, size_t errlen);

/* Scratch slots (model.scratch[]): 0-3 attention, the rest by the forward passes. */
enum { VL_S_X = 4, VL_S_H, VL_S_BF16, VL_S_BIG, VL_S_ATT, VL_S_QKVB, VL_S_ROPE, VL_S_AUX,
       VL_S_AUX2, VL_S_AUX3, VL_S_AUX4 };

/* Text RoPE rotation of one head vector by per-frequency angles (f32, rotate-half pairing). */
void vl_rope_apply(float *x, const float *cos_t, const float *sin_t, int half);

#endif
