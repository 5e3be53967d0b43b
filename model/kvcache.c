/* kvcache.c — the slot-array KV cache (see model.h). K and V of every layer are stored
 * [kv_heads][capacity][head_dim] so one head's keys are one contiguous stream for the decode
 * kernel; bf16 in bf16 compute mode (half the memory; the matmuls consume bf16 anyway), f32 in
 * f32 mode (exact comparison with the reference). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/kernels.h"

int model_kv_create(const model *m, int capacity, model_kv **out, char *err, size_t errlen) {
    if (!m || !out) return vl_err(err, errlen, "kv_create: no model given");
    *out = NULL;
    if (capacity <= 0 || capacity > (1 << 24))
        return vl_err(err, errlen, "kv_create: capacity %d must be between 1 and %d slots",
                      capacity, 1 << 24);
    model_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return vl_err(err, errlen, "kv_create: out of memory");
    kv->capacity = capacity;
    kv->layers = m->txt.layers;
    kv->kv_heads = m->txt.kv_heads;
    kv->head_dim = m->txt.head_dim;
    kv->bf16 = m->compute == MODEL_COMPUTE_BF16;
    kv->elt = kv->bf16 ? 2 : 4;
    kv->state = calloc((size_t)capacity, 1);
    kv->pos = calloc((size_t)capacity, sizeof(model_pos));
    kv->k = calloc((size_t)kv->layers, sizeof(void *));
    kv->v = calloc((size_t)kv->layers, sizeof(void *));
    if (!kv->state || !kv->pos || !kv->k || !kv->v) goto oom;
    const size_t per_layer = (size_t)kv->kv_heads * capacity * kv->head_dim * kv->elt;
    kv->layer_bytes = per_layer;
    for (int l = 0; l < kv->layers; l++) {
        /* zeroed mappings: pages are only committed as slots are written */
        kv->k[l] = vl_big_alloc(per_layer);
        kv->v[l] = vl_big_alloc(per_layer);
        if (!kv->k[l] || !kv->v[l]) goto oom;
    }
    kv->counts[MODEL_SLOT_FREE] = capacity;
    *out = kv;
    return 0;
oom:
    model_kv_destroy(kv);
    return vl_err(err, errlen, "kv_create: out of memory for %d slots (%zu bytes each)", capacity,
                  (size_t)m->txt.layers * 2 * m->txt.kv_heads * m->txt.head_dim *
                      (m->compute == MODEL_COMPUTE_BF16 ? 2 : 4));
}

void model_kv_destroy(model_kv *kv) {
    if (!kv) return;
    for (int l = 0; kv->k && l < kv->layers; l++) vl_big_free(kv->k[l], kv->layer_bytes);
    for (int l = 0; kv->v && l < kv->layers; l++) vl_big_free(kv->v[l], kv->layer_bytes);
    free(kv->k);
    free(kv->v);
    free(kv->state);
    free(kv->pos);
    free(kv);
}

int model_kv_capacity(const model_kv *kv) { return kv ? kv->capacity : 0; }

size_t model_kv_bytes_per_slot(const model_kv *kv) {
    return kv ? (size_t)kv->layers * 2 * kv->kv_heads * kv->head_dim * kv->elt : 0;
}

int model_kv_count(const model_kv *kv, model_slot_state state) {
    if (!kv || (int)state < 0 || (int)state > 2) return 0;
    return kv->counts[state];
}

model_slot_state model_kv_state(const model_kv *kv, int slot) {
    if (!kv || slot < 0 || slot >= kv->capacity) return MODEL_SLOT_FREE;
    return (model_slot_state)kv->state[slot];
}

int model_kv_slot_pos(const model_kv *kv, int slot, model_pos *pos) {
    if (!kv || slot < 0 || slot >= kv->capacity || kv->state[slot] == MODEL_SLOT_FREE) return -1;
    if (pos) *pos = kv->pos[slot];
    return 0;
}

static int check_range(const model_kv *kv, int first, int count, const char *what, char *err,
                       size_t errlen) {
    if (!kv) return vl_err(err, errlen, "%s: no cache given", what);
    if (first < 0 || count < 0 || first > kv->capacity || count > kv->capacity - first)
        return vl_err(err, errlen, "%s: slots [%d, %d) are outside the cache's %d slots", what,
                      first, first + count, kv->capacity);
    return 0;
}

static void set_state(model_kv *kv, int slot, model_slot_state s) {
    kv->counts[kv->state[slot]]--;
    kv->state[slot] = (uint8_t)s;
    kv->counts[s]++;
}

int model_kv_hide(model_kv *kv, int first, int count, char *err, size_t errlen) {
    if (check_range(kv, first, count, "kv_hide", err, errlen)) return -1;
    for (int s = first; s < first + count; s++)
        if (kv->state[s] == MODEL_SLOT_VISIBLE) set_state(kv, s, MODEL_SLOT_HIDDEN);
    return 0;
}

int model_kv_show(model_kv *kv, int first, int count, char *err, size_t errlen) {
    if (check_range(kv, first, count, "kv_show", err, errlen)) return -1;
    for (int s = first; s < first + count; s++)
        if (kv->state[s] == MODEL_SLOT_HIDDEN) set_state(kv, s, MODEL_SLOT_VISIBLE);
    return 0;
}

int model_kv_release(model_kv *kv, int first, int count, char *err, size_t errlen) {
    if (check_range(kv, first, count, "kv_release", err, errlen)) return -1;
    for (int s = first; s < first + count; s++)
        if (kv->state[s] != MODEL_SLOT_FREE) set_state(kv, s, MODEL_SLOT_FREE);
    return 0;
}

int model_kv_seq_len(const model_kv *kv) {
    if (!kv) return 0;
    int n = 0;
    while (n < kv->capacity && kv->state[n] != MODEL_SLOT_FREE) n++;
    return n;
}

int model_kv_truncate(model_kv *kv, int n) {
    if (!kv || n < 0) return -1;
    for (int s = n; s < kv->capacity; s++)
        if (kv->state[s] != MODEL_SLOT_FREE) set_state(kv, s, MODEL_SLOT_FREE);
    return 0;
}

/* The rotation that takes a key rotated at position p to one rotated at p + delta is, per
 * frequency, the difference of the two f32 angles upstream would compute (f32(inv*p)), so a
 * shifted key equals a key written at p + delta directly up to one rounding. */
int model_kv_shift(model *m, model_kv *kv, int first, int count, int delta,
                   char *err, size_t errlen) {
    if (!m) return vl_err(err, errlen, "kv_shift: no model given");
    if (check_range(kv, first, count, "kv_shift", err, errlen)) return -1;
    if (kv->layers != m->txt.layers || kv->kv_heads != m->txt.kv_heads || kv->head_dim != m->txt.head_dim)
        return vl_err(err, errlen, "kv_shift: the cache was made for a different model");
    const int hd = kv->head_dim, half = hd / 2;
    for (int s = first; s < first + count; s++) {
        if (kv->state[s] == MODEL_SLOT_FREE) continue;
        const model_pos p = kv->pos[s];
        const long lim = 1L << 24;
        if (labs((long)p.t + delta) >= lim || labs((long)p.h + delta) >= lim || labs((long)p.w + delta) >= lim)
            return vl_err(err, errlen, "kv_shift: slot %d at position (%d,%d,%d) shifted by %d "
                          "leaves the exactly representable range |p| < 2^24", s, p.t, p.h, p.w,
                          delta);
    }
    float *cs = malloc(sizeof(float) * (size_t)hd);
    float *tmp = malloc(sizeof(float) * (size_t)hd);
    if (!cs || !tmp) {
        free(cs);
        free(tmp);
        return vl_err(err, errlen, "kv_shift: out of memory");
    }
    for (int s = first; s < first + count; s++) {
        if (kv->state[s] == MODEL_SLOT_FREE) continue;
        const model_pos p = kv->pos[s];
        const int32_t axis_pos[3] = { p.t, p.h, p.w };
        for (int j = 0; j < half; j++) {
            int32_t a = axis_pos[m->txt.rope_axis[j]];
            float inv = m->txt.rope_inv_freq[j];
            double d = (double)(inv * (float)(a + delta)) - (double)(inv * (float)a);
            cs[j] = (float)cos(d);
            cs[half + j] = (float)sin(d);
        }
        for (int l = 0; l < kv->layers; l++)
            for (int g = 0; g < kv->kv_heads; g++) {
                void *k = vl_kv_at(kv, kv->k[l], g, s);
                if (kv->bf16) vl_bf16_to_f32(k, tmp, (size_t)hd);
                else memcpy(tmp, k, sizeof(float) * (size_t)hd);
                vl_rope_apply(tmp, cs, cs + half, half);
                if (kv->bf16) vl_f32_to_bf16(tmp, k, (size_t)hd);
                else memcpy(k, tmp, sizeof(float) * (size_t)hd);
            }
        kv->pos[s] = (model_pos){ p.t + delta, p.h + delta, p.w + delta };
    }
    free(cs);
    free(tmp);
    return 0;
}
