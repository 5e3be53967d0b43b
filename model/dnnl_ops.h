/* dnnl_ops.h — the model's matrix math: oneDNN 2.6 matmul primitives (created once per shape
 * and kept in a small cache), prepared linear weights, and the hand-written kernels oneDNN has
 * no good answer for (a bf16 GEMV for decode, bf16 conversion). Internal to model/. */
#ifndef VIGIL_MODEL_DNNL_OPS_H
#define VIGIL_MODEL_DNNL_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/safetensors.h"

typedef struct vl_dnnl vl_dnnl;

int vl_dnnl_create(vl_dnnl **out, char *err, size_t errlen);
void vl_dnnl_destroy(vl_dnnl *d);

/* A linear layer prepared for y[M,N] = x[M,K] W[K,N] (+ bias).
 * bf16: W is packed in oneDNN's BA16a64b2a layout (K padded to 32, N to 64, zero-filled):
 *   element (k, n) at ((n/64)*Kp/32 + k/32)*2048 + ((k%32)/2)*128 + (n%64)*2 + k%2,
 *   which is what the brgemm bf16 matmul prefers and what the GEMV kernel streams.
 * f32: W is plain row-major [K, N]. */
typedef struct vl_linear {
    int K, N, Kp, Np;
    bool bf16;
    uint16_t *wb;             /* bf16 packed (bf16 mode) */
    float *wf;                /* f32 [K, N] (f32 mode) */
    size_t bytes;
    float *bias;              /* [N] or NULL */
} vl_linear;

/* Where a part of a weight comes from. OUT_IN is a torch Linear weight [n, K] (row-major);
 * IN_OUT is a right-multiplied matrix [K, n] (the fused MoE expert tensors). */
typedef enum { VL_OUT_IN = 0, VL_IN_OUT = 1 } vl_src_layout;

typedef struct vl_wpart {
    const void *data;
    st_dtype dtype;           /* ST_BF16, ST_F16 or ST_F32 */
    int n;                    /* output columns this part contributes */
    vl_src_layout layout;
    const void *bias;         /* [n] in the same dtype, or NULL */
} vl_wpart;

/* Builds W from parts concatenated along N (e.g. q|k|v). */
int vl_linear_init(vl_linear *l, bool bf16, int K, const vl_wpart *parts, int nparts,
                   char *err, size_t errlen);
void vl_linear_free(vl_linear *l);

typedef enum { VL_ACT_NONE = 0, VL_ACT_GELU_TANH, VL_ACT_GELU_ERF } vl_act;

/* y = act(x W + b), or with accumulate y += x W + b (residual add fused as a sum post-op).
 * x is bf16 [M, ldx] when l->bf16, else f32. Rows with M <= 4 in bf16 mode run on the GEMV
 * kernel (decode is memory bound; oneDNN's M=1 path reaches about half the bandwidth). */
int vl_linear_fwd(vl_dnnl *d, const vl_linear *l, int M, const void *x, int ldx, float *y,
                  int ldy, vl_act act, bool accumulate, char *err, size_t errlen);

/* A strided view of a 2-D or batched 3-D matrix for vl_matmul. */
typedef struct vl_mat {
    const void *p;
    bool bf16;                /* else f32 */
    int ndims;                /* 2 or 3 */
    int64_t dims[3];
    int64_t strides[3];       /* in elements */
} vl_mat;

/* dst (f32) = src x wei, batched over dims[0] for 3-D (wei may broadcast with dims[0] == 1).
 * Used for attention (Q K^T and P V with views into the qkv and cache buffers). */
int vl_matmul(vl_dnnl *d, const vl_mat *src, const vl_mat *wei, const vl_mat *dst,
              char *err, size_t errlen);

/* Zeroed, 64-byte aligned memory for weights and caches. Large blocks are mapped directly,
 * 2 MiB aligned and marked for transparent huge pages: streaming gigabytes of weights per
 * token through 4 KiB pages costs TLB misses and a million page faults at load. */
void *vl_big_alloc(size_t bytes);
void vl_big_free(void *p, size_t bytes);

/* Conversions (round to nearest even, as torch's .to(bfloat16)). */
void vl_f32_to_bf16(const float *x, uint16_t *y, size_t n);
void vl_bf16_to_f32(const uint16_t *x, float *y, size_t n);
static inline float vl_bf16_f32(uint16_t h) {
    union { uint32_t u; float f; } v = { .u = (uint32_t)h << 16 };
    return v.f;
}
static inline uint16_t vl_f32_bf16(float f) {
    union { uint32_t u; float f; } v = { .f = f };
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);   /* NaN */
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
/* Reads element i of a tensor stored as BF16/F16/F32 as f32. */
float vl_load_f32(const void *data, st_dtype dt, size_t i);

/* Number of oneDNN primitives created so far (cache misses), for tests and the bench. */
long vl_dnnl_primitives_created(const vl_dnnl *d);
/* Implementation name oneDNN chose for the last created matmul (e.g. "brg:avx512_core_bf16"). */
const char *vl_dnnl_last_impl(const vl_dnnl *d);

#endif
