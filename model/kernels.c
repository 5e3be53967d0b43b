/* kernels.c — hot loops: softmax, norms, RoPE, SwiGLU and attention (see kernels.h). */
#include "model/kernels.h"

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- scratch ----------------------------------------------------------------------------- */

void *vl_buf_get(vl_buf *b, size_t bytes) {
    if (bytes == 0) bytes = 64;
    if (b->cap < bytes) {
        size_t cap = bytes + bytes / 4;
        cap = (cap + 63) / 64 * 64;
        void *p = aligned_alloc(64, cap);
        if (!p) return NULL;
        free(b->p);
        b->p = p;
        b->cap = cap;
    }
    return b->p;
}

void vl_buf_free(vl_buf *b) {
    free(b->p);
    b->p = NULL;
    b->cap = 0;
}

int vl_err(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* ---- exp / softmax ----------------------------------------------------------------------- */

#if defined(__AVX512F__)
/* exp(x) for x <= 88.7: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], degree-6 polynomial
 * (about 1 ulp); scalef handles the 2^n scaling and underflows to 0 for very negative x. */
static inline __m512 exp512(__m512 x) {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2hi = _mm512_set1_ps(0.693359375f), ln2lo = _mm512_set1_ps(-2.12194440e-4f);
    x = _mm512_min_ps(x, _mm512_set1_ps(88.7f));
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, ln2hi, x);
    r = _mm512_fnmadd_ps(n, ln2lo, r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}
#endif

void vl_softmax_scaled(float *x, int n, float scale) {
    if (n <= 0) return;
    int i = 0;
    float mx = -INFINITY;
#if defined(__AVX512F__)
    const __m512 vs = _mm512_set1_ps(scale);
    __m512 vm = _mm512_set1_ps(-INFINITY);
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i), vs);
        _mm512_storeu_ps(x + i, v);
        vm = _mm512_max_ps(vm, v);
    }
    mx = _mm512_reduce_max_ps(vm);
#endif
    for (; i < n; i++) {
        x[i] *= scale;
        if (x[i] > mx) mx = x[i];
    }
    double sum = 0.0;
    i = 0;
#if defined(__AVX512F__)
    const __m512 vmx = _mm512_set1_ps(mx);
    __m512 vsum = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vmx));
        _mm512_storeu_ps(x + i, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    sum = _mm512_reduce_add_ps(vsum);
#endif
    for (; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    const float inv = (float)(1.0 / sum);
    i = 0;
#if defined(__AVX512F__)
    const __m512 vinv = _mm512_set1_ps(inv);
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), vinv));
#endif
    for (; i < n; i++) x[i] *= inv;
}

void vl_silu_mul(const float *gu, int ld_gu, int I, int rows, float *out, int ld_out) {
#pragma omp parallel for schedule(static) if (rows > 1)
    for (int r = 0; r < rows; r++) {
        const float *g = gu + (size_t)r * ld_gu, *u = g + I;
        float *o = out + (size_t)r * ld_out;
        int i = 0;
#if defined(__AVX512F__)
        const __m512 one = _mm512_set1_ps(1.0f);
        for (; i + 16 <= I; i += 16) {
            __m512 x = _mm512_loadu_ps(g + i);
            __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
            __m512 s = _mm512_div_ps(x, _mm512_add_ps(one, e));
            _mm512_storeu_ps(o + i, _mm512_mul_ps(s, _mm512_loadu_ps(u + i)));
        }
#endif
        for (; i < I; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

/* ---- norms ------------------------------------------------------------------------------- */

void vl_layernorm(const vl_norm *n, const float *x, float *y, int rows, int ld_x, int ld_y,
                  float eps) {
    const int d = n->dim;
#pragma omp parallel for schedule(static) if (rows > 4)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * ld_x;
        float *yr = y + (size_t)r * ld_y;
        double s = 0.0, s2 = 0.0;
        for (int i = 0; i < d; i++) s += xr[i];
        const double mean = s / d;
        for (int i = 0; i < d; i++) {
            double c = xr[i] - mean;
            s2 += c * c;
        }
        const float inv = (float)(1.0 / sqrt(s2 / d + (double)eps));
        const float mf = (float)mean;
        for (int i = 0; i < d; i++) {
            float v = (xr[i] - mf) * inv;
            yr[i] = v * n->weight[i] + (n->bias ? n->bias[i] : 0.0f);
        }
    }
}

/* Sum of squares with 16 f32 lanes (each lane sums d/16 terms), finished in double: close to
 * torch's pairwise f32 reduction and far faster than a scalar double loop. */
static inline double sum_squares(const float *x, int d) {
    int i = 0;
    double s = 0.0;
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (; i + 32 <= d; i += 32) {
        __m512 v0 = _mm512_loadu_ps(x + i), v1 = _mm512_loadu_ps(x + i + 16);
        a0 = _mm512_fmadd_ps(v0, v0, a0);
        a1 = _mm512_fmadd_ps(v1, v1, a1);
    }
    float lanes[16];
    _mm512_storeu_ps(lanes, _mm512_add_ps(a0, a1));
    for (int k = 0; k < 16; k++) s += lanes[k];
#endif
    for (; i < d; i++) s += (double)x[i] * x[i];
    return s;
}

void vl_rmsnorm_row(const float *w, const float *x, float *y, int d, float eps) {
    const float inv = (float)(1.0 / sqrt((double)(float)(sum_squares(x, d) / d) + (double)eps));
    for (int i = 0; i < d; i++) y[i] = w[i] * (x[i] * inv);
}

void vl_rmsnorm(const vl_norm *n, const float *x, float *y, int rows, int ld_x, int ld_y,
                float eps) {
#pragma omp parallel for schedule(static) if (rows > 16)
    for (int r = 0; r < rows; r++)
        vl_rmsnorm_row(n->weight, x + (size_t)r * ld_x, y + (size_t)r * ld_y, n->dim, eps);
}

void vl_rope_apply(float *x, const float *c, const float *s, int half) {
    for (int j = 0; j < half; j++) {
        float a = x[j], b = x[j + half];
        x[j] = a * c[j] - b * s[j];
        x[j + half] = b * c[j] + a * s[j];
    }
}

/* ---- attention (matmul path) ------------------------------------------------------------- */

int vl_attention_gemm(model *m, const vl_attn *a, char *err, size_t errlen) {
    const bool bf16 = a->kv_bf16;
    const int G = a->group, hd = a->hd, nk = a->nk;
    if (a->nq <= 0 || nk <= 0) return 0;
    /* Row chunks keep the score block near 8M floats (32 MB) whatever the sequence length. */
    long rows = (8L << 20) / ((long)G * nk);
    if (rows < 16) rows = 16;
    if (rows > a->nq) rows = a->nq;
    float *S = vl_buf_get(&m->scratch[0], sizeof(float) * (size_t)G * rows * nk);
    uint16_t *P = bf16 ? vl_buf_get(&m->scratch[1], 2 * (size_t)G * rows * nk) : NULL;
    uint16_t *Q = bf16 ? vl_buf_get(&m->scratch[2], 2 * (size_t)G * rows * hd) : NULL;
    if (!S || (bf16 && (!P || !Q)))
        return vl_err(err, errlen, "out of memory for attention scores (%d x %ld x %d)", G, rows, nk);
    for (int r0 = 0; r0 < a->nq; r0 += (int)rows) {
        const int nr = a->nq - r0 < rows ? a->nq - r0 : (int)rows;
        vl_mat src, wei, dst;
        memset(&src, 0, sizeof src);
        memset(&wei, 0, sizeof wei);
        memset(&dst, 0, sizeof dst);
        src.ndims = wei.ndims = dst.ndims = 3;
        if (bf16) {
            for (int h = 0; h < G; h++)
                for (int r = 0; r < nr; r++)
                    vl_f32_to_bf16(a->q + h * a->q_head_stride + (long)(r0 + r) * a->q_row_stride,
                                   Q + ((size_t)h * nr + r) * hd, (size_t)hd);
            src = (vl_mat){ Q, true, 3, { G, nr, hd }, { (int64_t)nr * hd, hd, 1 } };
        } else {
            src = (vl_mat){ a->q + (long)r0 * a->q_row_stride, false, 3, { G, nr, hd },
                            { a->q_head_stride, a->q_row_stride, 1 } };
        }
        const int64_t kb = a->k_head_stride ? G : 1, vb = a->v_head_stride ? G : 1;
        wei = (vl_mat){ a->k, bf16, 3, { kb, hd, nk },
                        { a->k_head_stride ? a->k_head_stride : (int64_t)hd * nk, 1, a->k_row_stride } };
        dst = (vl_mat){ S, false, 3, { G, nr, nk }, { (int64_t)nr * nk, nk, 1 } };
        if (vl_matmul(m->dnnl, &src, &wei, &dst, err, errlen)) return -1;
#pragma omp parallel for schedule(static)
        for (int hr = 0; hr < G * nr; hr++) {
            const int r = hr % nr;
            float *row = S + (size_t)hr * nk;
            int vis = a->n_prefix < 0 ? nk : a->n_prefix + r0 + r + 1;
            if (vis > nk) vis = nk;
            vl_softmax_scaled(row, vis, a->scale);
            for (int j = vis; j < nk; j++) row[j] = 0.0f;
            if (bf16) vl_f32_to_bf16(row, P + (size_t)hr * nk, (size_t)nk);
        }
        src = (vl_mat){ bf16 ? (const void *)P : (const void *)S, bf16, 3, { G, nr, nk },
                        { (int64_t)nr * nk, nk, 1 } };
        wei = (vl_mat){ a->v, bf16, 3, { vb, nk, hd },
                        { a->v_head_stride ? a->v_head_stride : (int64_t)nk * hd, a->v_row_stride, 1 } };
        dst = (vl_mat){ a->out + (long)r0 * a->out_row_stride, false, 3, { G, nr, hd },
                        { a->out_head_stride, a->out_row_stride, 1 } };
        if (vl_matmul(m->dnnl, &src, &wei, &dst, err, errlen)) return -1;
    }
    return 0;
}

/* ---- attention (cache slots, small batches) ---------------------------------------------- */

static inline float dot_kv(const float *q, const void *k, bool bf16, int hd) {
    int d = 0;
    float s = 0.0f;
#if defined(__AVX512F__)
    __m512 acc = _mm512_setzero_ps();
    if (bf16) {
        const uint16_t *kb = k;
        for (; d + 16 <= hd; d += 16) {
            __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(kb + d)));
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)), acc);
        }
    } else {
        const float *kf = k;
        for (; d + 16 <= hd; d += 16)
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_loadu_ps(kf + d), acc);
    }
    s = _mm512_reduce_add_ps(acc);
#endif
    for (; d < hd; d++)
        s += q[d] * (bf16 ? vl_bf16_f32(((const uint16_t *)k)[d]) : ((const float *)k)[d]);
    return s;
}

static inline void axpy_kv(float *acc, float p, const void *v, bool bf16, int hd) {
    int d = 0;
#if defined(__AVX512F__)
    const __m512 vp = _mm512_set1_ps(p);
    if (bf16) {
        const uint16_t *vb = v;
        for (; d + 16 <= hd; d += 16) {
            __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(vb + d)));
            _mm512_storeu_ps(acc + d, _mm512_fmadd_ps(vp, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)),
                                                      _mm512_loadu_ps(acc + d)));
        }
    } else {
        const float *vf = v;
        for (; d + 16 <= hd; d += 16)
            _mm512_storeu_ps(acc + d, _mm512_fmadd_ps(vp, _mm512_loadu_ps(vf + d), _mm512_loadu_ps(acc + d)));
    }
#endif
    for (; d < hd; d++)
        acc[d] += p * (bf16 ? vl_bf16_f32(((const uint16_t *)v)[d]) : ((const float *)v)[d]);
}

#if defined(__AVX512F__)
static inline __m512 bf16x16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* The decode hot path (bf16 cache, head_dim 128, an even number of query heads per KV head):
 * two query heads at a time with their queries, the converted key or value (8 vectors) and
 * the output accumulators all in registers, so every K/V row is converted once per pair and
 * nothing but the scores goes through memory. */
static void attend_bf16_128(const model_kv *kv, const void *K, const void *V, int g, int G,
                            const float *qh, int nv, int nk, const int32_t *vis,
                            const int32_t *bslots, float *sc, int maxk, float scale, float *o) {
    for (int h0 = 0; h0 < G; h0 += 2) {
        float *s0 = sc + (size_t)h0 * maxk, *s1 = s0 + maxk;
        __m512 q0[8], q1[8];
        for (int c = 0; c < 8; c++) {
            q0[c] = _mm512_loadu_ps(qh + (size_t)h0 * 128 + c * 16);
            q1[c] = _mm512_loadu_ps(qh + (size_t)(h0 + 1) * 128 + c * 16);
        }
        for (int j = 0; j < nk; j++) {
            const int slot = j < nv ? vis[j] : bslots[j - nv];
            const uint16_t *k = vl_kv_at(kv, (void *)K, g, slot);
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
            for (int c = 0; c < 8; c++) {
                const __m512 kc = bf16x16(k + c * 16);
                a0 = _mm512_fmadd_ps(q0[c], kc, a0);
                a1 = _mm512_fmadd_ps(q1[c], kc, a1);
            }
            s0[j] = _mm512_reduce_add_ps(a0);
            s1[j] = _mm512_reduce_add_ps(a1);
        }
        vl_softmax_scaled(s0, nk, scale);
        vl_softmax_scaled(s1, nk, scale);
        __m512 o0[8], o1[8];
        for (int c = 0; c < 8; c++) o0[c] = o1[c] = _mm512_setzero_ps();
        for (int j = 0; j < nk; j++) {
            const int slot = j < nv ? vis[j] : bslots[j - nv];
            const uint16_t *v = vl_kv_at(kv, (void *)V, g, slot);
            const __m512 p0 = _mm512_set1_ps(s0[j]), p1 = _mm512_set1_ps(s1[j]);
            for (int c = 0; c < 8; c++) {
                const __m512 vc = bf16x16(v + c * 16);
                o0[c] = _mm512_fmadd_ps(p0, vc, o0[c]);
                o1[c] = _mm512_fmadd_ps(p1, vc, o1[c]);
            }
        }
        for (int c = 0; c < 8; c++) {
            _mm512_storeu_ps(o + (size_t)h0 * 128 + c * 16, o0[c]);
            _mm512_storeu_ps(o + (size_t)(h0 + 1) * 128 + c * 16, o1[c]);
        }
    }
}
#endif

int vl_attention_slots(model *m, const model_kv *kv, int layer, const float *q, long q_row_stride,
                       int n, const int32_t *vis, int nv, const int32_t *bslots, float scale,
                       float *out, long out_row_stride, char *err, size_t errlen) {
    const int hd = kv->head_dim, KVH = kv->kv_heads, G = m->txt.heads / KVH;
    const int maxk = nv + n;
    const int nthr = omp_get_max_threads();
    float *scr = vl_buf_get(&m->scratch[3], sizeof(float) * (size_t)nthr * G * (maxk + hd));
    if (!scr) return vl_err(err, errlen, "out of memory for attention scores (%d keys)", maxk);
    const void *K = kv->k[layer], *V = kv->v[layer];
    const bool bf16 = kv->bf16;
#pragma omp parallel for schedule(dynamic, 1)
    for (int item = 0; item < n * KVH; item++) {
        const int i = item / KVH, g = item % KVH;
        float *sc = scr + (size_t)omp_get_thread_num() * G * (maxk + hd);
        float *acc = sc + (size_t)G * maxk;
        const int nk = nv + i + 1;
        const float *qh = q + (size_t)i * q_row_stride + (size_t)g * G * hd;
#if defined(__AVX512F__)
        if (bf16 && hd == 128 && G % 2 == 0) {
            attend_bf16_128(kv, K, V, g, G, qh, nv, nk, vis, bslots, sc, maxk, scale,
                            out + (size_t)i * out_row_stride + (size_t)g * G * hd);
            continue;
        }
#endif
        /* each key and value is read once for all G query heads of its group */
        for (int j = 0; j < nk; j++) {
            const int slot = j < nv ? vis[j] : bslots[j - nv];
            const void *k = vl_kv_at(kv, (void *)K, g, slot);
            for (int h = 0; h < G; h++) sc[(size_t)h * maxk + j] = dot_kv(qh + (size_t)h * hd, k, bf16, hd);
        }
        for (int h = 0; h < G; h++) vl_softmax_scaled(sc + (size_t)h * maxk, nk, scale);
        memset(acc, 0, sizeof(float) * (size_t)G * hd);
        for (int j = 0; j < nk; j++) {
            const int slot = j < nv ? vis[j] : bslots[j - nv];
            const void *v = vl_kv_at(kv, (void *)V, g, slot);
            for (int h = 0; h < G; h++) axpy_kv(acc + (size_t)h * hd, sc[(size_t)h * maxk + j], v, bf16, hd);
        }
        memcpy(out + (size_t)i * out_row_stride + (size_t)g * G * hd, acc, sizeof(float) * (size_t)G * hd);
    }
    return 0;
}
