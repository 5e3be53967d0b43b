/* kernels.h — the hand-written hot loops of the model engine (internal to model/): softmax,
 * norms, RoPE, activations and attention. Everything else goes through oneDNN matmuls. */
#ifndef VIGIL_MODEL_KERNELS_H
#define VIGIL_MODEL_KERNELS_H

#include "model/vl_internal.h"

/* x[0..n) = softmax(x * scale) in place (f32, max-subtracted). */
void vl_softmax_scaled(float *x, int n, float scale);

/* out[r, i] = silu(gu[r, i]) * gu[r, I + i] (gate half first), rows r. */
void vl_silu_mul(const float *gu, int ld_gu, int I, int rows, float *out, int ld_out);

/* Attention of nq query rows against nk keys for `group` query heads, batched in one matmul:
 *   q(h, r)  = q + h*q_head_stride + r*q_row_stride   [hd] f32
 *   k(h, j)  = k + h*k_head_stride + j*k_row_stride   [hd] (bf16 or f32 as kv_bf16)
 *   v(h, j)  = v + h*v_head_stride + j*v_row_stride
 *   out(h, r)= out + h*out_head_stride + r*out_row_stride
 * k_head_stride = v_head_stride = 0: the heads share one K/V head (GQA).
 * Mask: n_prefix < 0 -> every key visible; else query row r sees keys 0 .. n_prefix + r.
 * Runs as matmuls (scores, then probabilities x V) in row chunks; in bf16 mode the query and
 * the probabilities are rounded to bf16 for the matmul, accumulation stays f32. */
typedef struct vl_attn {
    int nq, nk, group, hd;
    const float *q;
    long q_head_stride, q_row_stride;
    const void *k, *v;
    bool kv_bf16;
    long k_row_stride, v_row_stride;
    long k_head_stride, v_head_stride;
    int n_prefix;
    float scale;
    float *out;
    long out_head_stride, out_row_stride;
} vl_attn;
int vl_attention_gemm(model *m, const vl_attn *a, char *err, size_t errlen);

/* Attention for small batches straight from the KV cache: batch token i (query rows
 * q + i*q_row_stride, heads*hd wide) attends to the visible slots vis[0..nv) and the batch's
 * own slots bslots[0..i]. Memory bound; reads each K/V once per token and kv head. */
int vl_attention_slots(model *m, const model_kv *kv, int layer, const float *q, long q_row_stride,
                       int n, const int32_t *vis, int nv, const int32_t *bslots, float scale,
                       float *out, long out_row_stride, char *err, size_t errlen);

#endif
