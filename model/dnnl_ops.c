/* dnnl_ops.c — oneDNN matmul wrappers with a primitive cache, weight packing, and the bf16 GEMV
 * kernel used for decode-sized batches. */
#include "model/dnnl_ops.h"

#include <dnnl.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define VL_CACHE_SIZE 96
#define VL_HUGE (2u << 20)

typedef struct vl_mm_key {
    int ndims;
    int sdt, wdt;
    int wpacked;              /* weights in BA16a64b2a */
    int bias;
    int act;
    int acc;
    int64_t sd[3], ss[3], wd[3], ws[3], dd[3], ds[3];
} vl_mm_key;

typedef struct vl_mm_entry {
    vl_mm_key key;
    dnnl_primitive_t prim;
    dnnl_memory_t src, wei, bias, dst, scratch;
    size_t scratch_bytes;
    unsigned long long used;
} vl_mm_entry;

struct vl_dnnl {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    vl_mm_entry cache[VL_CACHE_SIZE];
    int n_cache;
    unsigned long long tick;
    long created;
    char last_impl[64];
    uint16_t *xpad;           /* GEMV input rows padded to Kp */
    size_t xpad_cap;
    /* One scratchpad for all primitives (user mode): oneDNN's own would be allocated, page
     * faulted and zeroed on every execution. */
    void *scratch;
    size_t scratch_cap;
};

static int dnnl_fail(char *err, size_t errlen, const char *what, dnnl_status_t st) {
    if (err && errlen) snprintf(err, errlen, "oneDNN: %s failed (status %d)", what, (int)st);
    return -1;
}

int vl_dnnl_create(vl_dnnl **out, char *err, size_t errlen) {
    vl_dnnl *d = calloc(1, sizeof *d);
    if (!d) return dnnl_fail(err, errlen, "allocation", dnnl_out_of_memory);
    dnnl_status_t st = dnnl_engine_create(&d->eng, dnnl_cpu, 0);
    if (st != dnnl_success) {
        free(d);
        return dnnl_fail(err, errlen, "dnnl_engine_create(cpu)", st);
    }
    st = dnnl_stream_create(&d->stream, d->eng, dnnl_stream_default_flags);
    if (st != dnnl_success) {
        dnnl_engine_destroy(d->eng);
        free(d);
        return dnnl_fail(err, errlen, "dnnl_stream_create", st);
    }
    *out = d;
    return 0;
}

static void entry_clear(vl_mm_entry *e) {
    if (e->prim) dnnl_primitive_destroy(e->prim);
    if (e->src) dnnl_memory_destroy(e->src);
    if (e->wei) dnnl_memory_destroy(e->wei);
    if (e->bias) dnnl_memory_destroy(e->bias);
    if (e->dst) dnnl_memory_destroy(e->dst);
    if (e->scratch) dnnl_memory_destroy(e->scratch);
    memset(e, 0, sizeof *e);
}

void vl_dnnl_destroy(vl_dnnl *d) {
    if (!d) return;
    for (int i = 0; i < d->n_cache; i++) entry_clear(&d->cache[i]);
    dnnl_stream_destroy(d->stream);
    dnnl_engine_destroy(d->eng);
    free(d->xpad);
    free(d->scratch);
    free(d);
}

long vl_dnnl_primitives_created(const vl_dnnl *d) { return d->created; }
const char *vl_dnnl_last_impl(const vl_dnnl *d) { return d->last_impl; }

/* ---- memory ------------------------------------------------------------------------------ */

void *vl_big_alloc(size_t bytes) {
    if (bytes == 0) bytes = 64;
    if (bytes < 2 * (size_t)VL_HUGE) {
        size_t sz = (bytes + 63) / 64 * 64;
        void *p = aligned_alloc(64, sz);
        if (p) memset(p, 0, sz);
        return p;
    }
    const size_t sz = (bytes + VL_HUGE - 1) / VL_HUGE * VL_HUGE;
    uint8_t *raw = mmap(NULL, sz + VL_HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    uint8_t *p = (uint8_t *)(((uintptr_t)raw + VL_HUGE - 1) & ~(uintptr_t)(VL_HUGE - 1));
    if (p > raw) munmap(raw, (size_t)(p - raw));
    if (p + sz < raw + sz + VL_HUGE) munmap(p + sz, (size_t)(raw + sz + VL_HUGE - (p + sz)));
    madvise(p, sz, MADV_HUGEPAGE);
    return p;
}

void vl_big_free(void *p, size_t bytes) {
    if (!p) return;
    if (bytes == 0) bytes = 64;
    if (bytes < 2 * (size_t)VL_HUGE) {
        free(p);
        return;
    }
    munmap(p, (bytes + VL_HUGE - 1) / VL_HUGE * VL_HUGE);
}

/* ---- conversions ------------------------------------------------------------------------- */

void vl_f32_to_bf16(const float *x, uint16_t *y, size_t n) {
    size_t i = 0;
#if defined(__AVX512BF16__)
    for (; i + 16 <= n; i += 16) {
        __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + i));
        _mm256_storeu_si256((__m256i *)(y + i), (__m256i)h);
    }
#endif
    for (; i < n; i++) y[i] = vl_f32_bf16(x[i]);
}

void vl_bf16_to_f32(const uint16_t *x, float *y, size_t n) {
    size_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16) {
        __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(x + i)));
        _mm512_storeu_ps(y + i, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
    }
#endif
    for (; i < n; i++) y[i] = vl_bf16_f32(x[i]);
}

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    union { uint32_t u; float f; } v;
    if (exp == 0) {
        float f = ldexpf((float)man, -24);
        return sign ? -f : f;
    }
    if (exp == 31) v.u = sign | 0x7f800000u | (man << 13);
    else v.u = sign | ((exp + 112) << 23) | (man << 13);
    return v.f;
}

float vl_load_f32(const void *data, st_dtype dt, size_t i) {
    switch (dt) {
    case ST_BF16: return vl_bf16_f32(((const uint16_t *)data)[i]);
    case ST_F16: return f16_to_f32(((const uint16_t *)data)[i]);
    case ST_F32: return ((const float *)data)[i];
    default: return 0.0f;
    }
}

static uint16_t load_bf16(const void *data, st_dtype dt, size_t i) {
    if (dt == ST_BF16) return ((const uint16_t *)data)[i];
    return vl_f32_bf16(vl_load_f32(data, dt, i));
}

/* ---- weights ----------------------------------------------------------------------------- */

static int round_up(int x, int m) { return (x + m - 1) / m * m; }

void vl_linear_free(vl_linear *l) {
    if (!l) return;
    vl_big_free(l->wb, l->bytes);
    vl_big_free(l->wf, l->bytes);
    free(l->bias);
    memset(l, 0, sizeof *l);
}

int vl_linear_init(vl_linear *l, bool bf16, int K, const vl_wpart *parts, int nparts,
                   char *err, size_t errlen) {
    memset(l, 0, sizeof *l);
    int N = 0;
    bool any_bias = false;
    for (int i = 0; i < nparts; i++) {
        if (parts[i].dtype != ST_BF16 && parts[i].dtype != ST_F16 && parts[i].dtype != ST_F32) {
            if (err && errlen) snprintf(err, errlen, "weight dtype %s is not BF16, F16 or F32",
                                        st_dtype_name(parts[i].dtype));
            return -1;
        }
        N += parts[i].n;
        any_bias |= parts[i].bias != NULL;
    }
    if (K <= 0 || N <= 0) {
        if (err && errlen) snprintf(err, errlen, "linear weight with empty shape [%d, %d]", K, N);
        return -1;
    }
    l->K = K;
    l->N = N;
    l->bf16 = bf16;
    l->Kp = bf16 ? round_up(K, 32) : K;
    l->Np = bf16 ? round_up(N, 64) : N;
    if (bf16) {
        l->bytes = (size_t)l->Kp * l->Np * 2;
        l->wb = vl_big_alloc(l->bytes);
        if (!l->wb) goto oom;
    } else {
        l->bytes = (size_t)K * N * 4;
        l->wf = vl_big_alloc(l->bytes);
        if (!l->wf) goto oom;
    }
    if (any_bias) {
        l->bias = calloc((size_t)N, sizeof(float));
        if (!l->bias) goto oom;
    }
    /* column -> (part, column within part) map, so each output block is written in one pass */
    int *part_of = malloc(sizeof(int) * (size_t)N), *col_of = malloc(sizeof(int) * (size_t)N);
    if (!part_of || !col_of) {
        free(part_of);
        free(col_of);
        goto oom;
    }
    for (int i = 0, n = 0; i < nparts; i++) {
        for (int j = 0; j < parts[i].n; j++, n++) {
            part_of[n] = i;
            col_of[n] = j;
            if (parts[i].bias) l->bias[n] = vl_load_f32(parts[i].bias, parts[i].dtype, (size_t)j);
        }
    }
    if (bf16) {
        /* One 64-column block at a time (its packed form is Kp*128 bytes, cache resident):
         * element (k, n) goes to (k/32)*2048 + ((k%32)/2)*128 + (n%64)*2 + k%2. */
        const int nblk = l->Np / 64, kblk = l->Kp / 32; /* padding stays zero */
#pragma omp parallel for schedule(dynamic, 1)
        for (int nb = 0; nb < nblk; nb++) {
            uint16_t *dst = l->wb + (size_t)nb * kblk * 2048;
            for (int nn = 0; nn < 64; nn++) {
                const int n = nb * 64 + nn;
                if (n >= N) break;
                const vl_wpart *p = &parts[part_of[n]];
                const int col = col_of[n];
                uint16_t *d = dst + nn * 2;
                if (p->layout == VL_OUT_IN && p->dtype == ST_BF16) {
                    const uint16_t *src = (const uint16_t *)p->data + (size_t)col * K;
                    for (int k = 0; k < K; k++) d[(k >> 5) * 2048 + ((k & 31) >> 1) * 128 + (k & 1)] = src[k];
                } else {
                    for (int k = 0; k < K; k++) {
                        size_t idx = p->layout == VL_OUT_IN ? (size_t)col * K + k : (size_t)k * p->n + col;
                        d[(k >> 5) * 2048 + ((k & 31) >> 1) * 128 + (k & 1)] = load_bf16(p->data, p->dtype, idx);
                    }
                }
            }
        }
    } else {
#pragma omp parallel for schedule(static)
        for (int k = 0; k < K; k++) {
            for (int n = 0; n < N; n++) {
                const vl_wpart *p = &parts[part_of[n]];
                size_t idx = p->layout == VL_OUT_IN ? (size_t)col_of[n] * K + k
                                                    : (size_t)k * p->n + col_of[n];
                l->wf[(size_t)k * N + n] = vl_load_f32(p->data, p->dtype, idx);
            }
        }
    }
    free(part_of);
    free(col_of);
    return 0;
oom:
    vl_linear_free(l);
    if (err && errlen) snprintf(err, errlen, "out of memory preparing a [%d, %d] weight", K, N);
    return -1;
}

/* ---- primitive cache --------------------------------------------------------------------- */

static dnnl_status_t md_strided(dnnl_memory_desc_t *md, int ndims, const int64_t *dims,
                                const int64_t *strides, dnnl_data_type_t dt) {
    dnnl_dims_t d, s;
    for (int i = 0; i < ndims; i++) {
        d[i] = dims[i];
        s[i] = strides[i];
    }
    return dnnl_memory_desc_init_by_strides(md, ndims, d, dt, s);
}

static vl_mm_entry *cache_get(vl_dnnl *d, const vl_mm_key *key, char *err, size_t errlen) {
    for (int i = 0; i < d->n_cache; i++) {
        if (memcmp(&d->cache[i].key, key, sizeof *key) == 0) {
            d->cache[i].used = ++d->tick;
            return &d->cache[i];
        }
    }
    vl_mm_entry *e;
    if (d->n_cache < VL_CACHE_SIZE) {
        e = &d->cache[d->n_cache++];
    } else {
        e = &d->cache[0];
        for (int i = 1; i < VL_CACHE_SIZE; i++)
            if (d->cache[i].used < e->used) e = &d->cache[i];
        entry_clear(e);
    }
    memset(e, 0, sizeof *e);

    dnnl_memory_desc_t smd, wmd, bmd, dmd;
    dnnl_status_t st;
    const dnnl_data_type_t sdt = key->sdt ? dnnl_bf16 : dnnl_f32;
    const dnnl_data_type_t wdt = key->wdt ? dnnl_bf16 : dnnl_f32;
    st = md_strided(&smd, key->ndims, key->sd, key->ss, sdt);
    if (st == dnnl_success) {
        if (key->wpacked) {
            dnnl_dims_t wd = { key->wd[0], key->wd[1] };
            st = dnnl_memory_desc_init_by_tag(&wmd, 2, wd, dnnl_bf16, dnnl_BA16a64b2a);
        } else {
            st = md_strided(&wmd, key->ndims, key->wd, key->ws, wdt);
        }
    }
    if (st == dnnl_success) st = md_strided(&dmd, key->ndims, key->dd, key->ds, dnnl_f32);
    if (st == dnnl_success && key->bias) {
        dnnl_dims_t bd = { 1, key->wd[1] };
        st = dnnl_memory_desc_init_by_tag(&bmd, 2, bd, dnnl_f32, dnnl_ab);
    }
    if (st != dnnl_success) {
        d->n_cache -= (e == &d->cache[d->n_cache - 1]);
        dnnl_fail(err, errlen, "memory descriptor", st);
        return NULL;
    }
    dnnl_matmul_desc_t mmd;
    st = dnnl_matmul_desc_init(&mmd, &smd, &wmd, key->bias ? &bmd : NULL, &dmd);
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    if (st == dnnl_success) st = dnnl_primitive_attr_create(&attr);
    if (st == dnnl_success) st = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    /* f32 stays f32 (no implicit bf16/tf32 down-conversion): the exact-comparison mode */
    if (st == dnnl_success) st = dnnl_primitive_attr_set_fpmath_mode(attr, dnnl_fpmath_mode_strict);
    if (st == dnnl_success && (key->act || key->acc)) {
        st = dnnl_post_ops_create(&po);
        if (st == dnnl_success && key->acc) st = dnnl_post_ops_append_sum(po, 1.0f);
        if (st == dnnl_success && key->act)
            st = dnnl_post_ops_append_eltwise(
                po, 1.0f, key->act == VL_ACT_GELU_TANH ? dnnl_eltwise_gelu_tanh : dnnl_eltwise_gelu_erf,
                0.0f, 0.0f);
        if (st == dnnl_success) st = dnnl_primitive_attr_set_post_ops(attr, po);
    }
    dnnl_primitive_desc_t pd = NULL;
    if (st == dnnl_success) st = dnnl_primitive_desc_create(&pd, &mmd, attr, d->eng, NULL);
    if (po) dnnl_post_ops_destroy(po);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (st == dnnl_success) {
        const char *impl = NULL;
        if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl)
            snprintf(d->last_impl, sizeof d->last_impl, "%s", impl);
        st = dnnl_primitive_create(&e->prim, pd);
    }
    if (st == dnnl_success) {
        const dnnl_memory_desc_t *smd_s = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
        e->scratch_bytes = smd_s ? dnnl_memory_desc_get_size(smd_s) : 0;
        if (e->scratch_bytes) st = dnnl_memory_create(&e->scratch, smd_s, d->eng, DNNL_MEMORY_NONE);
    }
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (st == dnnl_success) st = dnnl_memory_create(&e->src, &smd, d->eng, DNNL_MEMORY_NONE);
    if (st == dnnl_success) st = dnnl_memory_create(&e->wei, &wmd, d->eng, DNNL_MEMORY_NONE);
    if (st == dnnl_success) st = dnnl_memory_create(&e->dst, &dmd, d->eng, DNNL_MEMORY_NONE);
    if (st == dnnl_success && key->bias)
        st = dnnl_memory_create(&e->bias, &bmd, d->eng, DNNL_MEMORY_NONE);
    if (st != dnnl_success) {
        entry_clear(e);
        if (e == &d->cache[d->n_cache - 1]) d->n_cache--;
        char what[160];
        snprintf(what, sizeof what, "matmul primitive [%lld x %lld] x [%lld x %lld]",
                 (long long)key->sd[key->ndims - 2], (long long)key->sd[key->ndims - 1],
                 (long long)key->wd[key->ndims - 2], (long long)key->wd[key->ndims - 1]);
        dnnl_fail(err, errlen, what, st);
        return NULL;
    }
    e->key = *key;
    e->used = ++d->tick;
    d->created++;
    return e;
}

static int run(vl_dnnl *d, vl_mm_entry *e, const void *src, const void *wei, const float *bias,
               float *dst, char *err, size_t errlen) {
    dnnl_memory_set_data_handle(e->src, (void *)src);
    dnnl_memory_set_data_handle(e->wei, (void *)wei);
    dnnl_memory_set_data_handle(e->dst, dst);
    dnnl_exec_arg_t args[5] = {
        { DNNL_ARG_SRC, e->src }, { DNNL_ARG_WEIGHTS, e->wei }, { DNNL_ARG_DST, e->dst },
    };
    int nargs = 3;
    if (e->bias) {
        dnnl_memory_set_data_handle(e->bias, (void *)bias);
        args[nargs++] = (dnnl_exec_arg_t){ DNNL_ARG_BIAS, e->bias };
    }
    if (e->scratch) {
        if (d->scratch_cap < e->scratch_bytes) {
            void *p = aligned_alloc(64, (e->scratch_bytes + 63) / 64 * 64);
            if (!p) {
                if (err && errlen) snprintf(err, errlen, "out of memory (matmul scratchpad)");
                return -1;
            }
            free(d->scratch);
            d->scratch = p;
            d->scratch_cap = e->scratch_bytes;
        }
        dnnl_memory_set_data_handle(e->scratch, d->scratch);
        args[nargs++] = (dnnl_exec_arg_t){ DNNL_ARG_SCRATCHPAD, e->scratch };
    }
    dnnl_status_t st = dnnl_primitive_execute(e->prim, d->stream, nargs, args);
    if (st == dnnl_success) st = dnnl_stream_wait(d->stream);
    if (st != dnnl_success) return dnnl_fail(err, errlen, "matmul execution", st);
    return 0;
}

/* ---- GEMV (bf16, M <= 4) ----------------------------------------------------------------- */

static inline float gelu_tanh(float x) {
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}
static inline float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f)); }

static inline float epilogue(float v, float old, const float *bias, int n, vl_act act, bool acc) {
    if (bias) v += bias[n];
    if (acc) v += old;
    if (act == VL_ACT_GELU_TANH) v = gelu_tanh(v);
    else if (act == VL_ACT_GELU_ERF) v = gelu_erf(v);
    return v;
}

#if defined(__AVX512BF16__)
/* One 64-column block of W against M input rows: the packed block is one contiguous stream of
 * Kp*64 bf16, read once for all rows; each k-pair is one vdpbf16ps per 16 columns. */
static inline void gemv_block(const uint16_t *w, int kpairs, int M, const uint16_t *x, int ldx,
                              float out[4][64]) {
    __m512 acc[4][4];
    for (int m = 0; m < 4; m++)
        for (int j = 0; j < 4; j++) acc[m][j] = _mm512_setzero_ps();
    const int32_t *x0 = (const int32_t *)x;
    const int32_t *x1 = (const int32_t *)(x + ldx);
    const int32_t *x2 = (const int32_t *)(x + 2 * (size_t)ldx);
    const int32_t *x3 = (const int32_t *)(x + 3 * (size_t)ldx);
    for (int kp = 0; kp < kpairs; kp++, w += 128) {
        _mm_prefetch((const char *)(w + 1024), _MM_HINT_T0);
        _mm_prefetch((const char *)(w + 1056), _MM_HINT_T0);
        _mm_prefetch((const char *)(w + 1088), _MM_HINT_T0);
        _mm_prefetch((const char *)(w + 1120), _MM_HINT_T0);
        __m512bh w0 = (__m512bh)_mm512_loadu_si512(w);
        __m512bh w1 = (__m512bh)_mm512_loadu_si512(w + 32);
        __m512bh w2 = (__m512bh)_mm512_loadu_si512(w + 64);
        __m512bh w3 = (__m512bh)_mm512_loadu_si512(w + 96);
        __m512bh b = (__m512bh)_mm512_set1_epi32(x0[kp]);
        acc[0][0] = _mm512_dpbf16_ps(acc[0][0], w0, b);
        acc[0][1] = _mm512_dpbf16_ps(acc[0][1], w1, b);
        acc[0][2] = _mm512_dpbf16_ps(acc[0][2], w2, b);
        acc[0][3] = _mm512_dpbf16_ps(acc[0][3], w3, b);
        if (M > 1) {
            b = (__m512bh)_mm512_set1_epi32(x1[kp]);
            acc[1][0] = _mm512_dpbf16_ps(acc[1][0], w0, b);
            acc[1][1] = _mm512_dpbf16_ps(acc[1][1], w1, b);
            acc[1][2] = _mm512_dpbf16_ps(acc[1][2], w2, b);
            acc[1][3] = _mm512_dpbf16_ps(acc[1][3], w3, b);
        }
        if (M > 2) {
            b = (__m512bh)_mm512_set1_epi32(x2[kp]);
            acc[2][0] = _mm512_dpbf16_ps(acc[2][0], w0, b);
            acc[2][1] = _mm512_dpbf16_ps(acc[2][1], w1, b);
            acc[2][2] = _mm512_dpbf16_ps(acc[2][2], w2, b);
            acc[2][3] = _mm512_dpbf16_ps(acc[2][3], w3, b);
        }
        if (M > 3) {
            b = (__m512bh)_mm512_set1_epi32(x3[kp]);
            acc[3][0] = _mm512_dpbf16_ps(acc[3][0], w0, b);
            acc[3][1] = _mm512_dpbf16_ps(acc[3][1], w1, b);
            acc[3][2] = _mm512_dpbf16_ps(acc[3][2], w2, b);
            acc[3][3] = _mm512_dpbf16_ps(acc[3][3], w3, b);
        }
    }
    for (int m = 0; m < M; m++)
        for (int j = 0; j < 4; j++) _mm512_storeu_ps(out[m] + 16 * j, acc[m][j]);
}
#else
static inline void gemv_block(const uint16_t *w, int kpairs, int M, const uint16_t *x, int ldx,
                              float out[4][64]) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < 64; n++) out[m][n] = 0.0f;
    for (int kp = 0; kp < kpairs; kp++, w += 128)
        for (int m = 0; m < M; m++) {
            float a = vl_bf16_f32(x[(size_t)m * ldx + 2 * kp]);
            float b = vl_bf16_f32(x[(size_t)m * ldx + 2 * kp + 1]);
            for (int n = 0; n < 64; n++)
                out[m][n] += vl_bf16_f32(w[2 * n]) * a + vl_bf16_f32(w[2 * n + 1]) * b;
        }
}
#endif

static int gemv_bf16(vl_dnnl *d, const vl_linear *l, int M, const uint16_t *x, int ldx,
                     float *y, int ldy, vl_act act, bool acc, char *err, size_t errlen) {
    /* Inputs padded with zeros to Kp so the kernel never needs a K tail. */
    size_t need = (size_t)4 * l->Kp;
    if (d->xpad_cap < need) {
        uint16_t *p = aligned_alloc(64, (need * 2 + 63) / 64 * 64);
        if (!p) {
            if (err && errlen) snprintf(err, errlen, "out of memory (GEMV input)");
            return -1;
        }
        free(d->xpad);
        d->xpad = p;
        d->xpad_cap = need;
    }
    for (int m = 0; m < M; m++) {
        memcpy(d->xpad + (size_t)m * l->Kp, x + (size_t)m * ldx, (size_t)l->K * 2);
        memset(d->xpad + (size_t)m * l->Kp + l->K, 0, (size_t)(l->Kp - l->K) * 2);
    }
    const uint16_t *xp = d->xpad;
    const int nblk = l->Np / 64, kpairs = l->Kp / 2;
#pragma omp parallel for schedule(static)
    for (int nb = 0; nb < nblk; nb++) {
        float out[4][64];
        gemv_block(l->wb + (size_t)nb * kpairs * 128, kpairs, M, xp, l->Kp, out);
        int n0 = nb * 64, n1 = n0 + 64 < l->N ? n0 + 64 : l->N;
        for (int m = 0; m < M; m++) {
            float *yr = y + (size_t)m * ldy;
            for (int n = n0; n < n1; n++)
                yr[n] = epilogue(out[m][n - n0], acc ? yr[n] : 0.0f, l->bias, n, act, acc);
        }
    }
    return 0;
}

/* ---- public matmuls ---------------------------------------------------------------------- */

int vl_linear_fwd(vl_dnnl *d, const vl_linear *l, int M, const void *x, int ldx, float *y,
                  int ldy, vl_act act, bool accumulate, char *err, size_t errlen) {
    if (M <= 0) return 0;
    if (l->bf16 && M <= 4) return gemv_bf16(d, l, M, x, ldx, y, ldy, act, accumulate, err, errlen);
    vl_mm_key key;
    memset(&key, 0, sizeof key);
    key.ndims = 2;
    key.sdt = l->bf16;
    key.wdt = l->bf16;
    key.wpacked = l->bf16;
    key.bias = l->bias != NULL;
    key.act = act;
    key.acc = accumulate;
    key.sd[0] = M;
    key.sd[1] = l->K;
    key.ss[0] = ldx;
    key.ss[1] = 1;
    key.wd[0] = l->K;
    key.wd[1] = l->N;
    key.ws[0] = l->N;
    key.ws[1] = 1;
    key.dd[0] = M;
    key.dd[1] = l->N;
    key.ds[0] = ldy;
    key.ds[1] = 1;
    vl_mm_entry *e = cache_get(d, &key, err, errlen);
    if (!e) return -1;
    return run(d, e, x, l->bf16 ? (const void *)l->wb : (const void *)l->wf, l->bias, y, err,
               errlen);
}

int vl_matmul(vl_dnnl *d, const vl_mat *src, const vl_mat *wei, const vl_mat *dst,
              char *err, size_t errlen) {
    vl_mm_key key;
    memset(&key, 0, sizeof key);
    key.ndims = src->ndims;
    key.sdt = src->bf16;
    key.wdt = wei->bf16;
    for (int i = 0; i < src->ndims; i++) {
        key.sd[i] = src->dims[i];
        key.ss[i] = src->strides[i];
        key.wd[i] = wei->dims[i];
        key.ws[i] = wei->strides[i];
        key.dd[i] = dst->dims[i];
        key.ds[i] = dst->strides[i];
    }
    vl_mm_entry *e = cache_get(d, &key, err, errlen);
    if (!e) return -1;
    return run(d, e, src->p, wei->p, NULL, (float *)dst->p, err, errlen);
}
