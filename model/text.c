/* text.c — the Qwen3 text decoder (model.language_model.*) over a batch of tokens written to
 * KV-cache slots, top-down as upstream's Qwen3VLTextModel.forward: embeddings (visual rows
 * replace the pad embeddings) -> layers (RMSNorm, q/k/v, per-head q_norm/k_norm, interleaved
 * MRoPE, GQA attention over the visible slots, o_proj, RMSNorm, SwiGLU MLP or sparse MoE),
 * DeepStack feature i added at visual rows after layer i -> final norm -> lm_head. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/kernels.h"

/* Batches up to this size attend straight from the cache slots (memory-bound decode path);
 * larger ones gather the visible K/V and run the scores and values as matmuls. */
#define VL_SLOT_ATTN_MAX 8

static int validate(const model *m, const model_kv *kv, const model_batch *b, char *err,
                    size_t errlen, int *n_pads) {
    const vl_text *t = &m->txt;
    if (!kv) return vl_err(err, errlen, "forward: no KV cache given");
    if (kv->layers != t->layers || kv->kv_heads != t->kv_heads || kv->head_dim != t->head_dim ||
        kv->bf16 != (m->compute == MODEL_COMPUTE_BF16))
        return vl_err(err, errlen, "forward: the KV cache was made for a different model or "
                      "compute mode");
    if (!b || b->n <= 0) return vl_err(err, errlen, "forward: empty batch");
    if (!b->ids || !b->pos || !b->slots)
        return vl_err(err, errlen, "forward: batch needs ids, positions and slots");
    if (b->n > kv->capacity)
        return vl_err(err, errlen, "forward: batch of %d tokens exceeds the cache's %d slots",
                      b->n, kv->capacity);
    int pads = 0;
    for (int i = 0; i < b->n; i++) {
        if (b->ids[i] < 0 || b->ids[i] >= t->vocab)
            return vl_err(err, errlen, "forward: token %d has id %d outside the vocabulary "
                          "[0, %d)", i, b->ids[i], t->vocab);
        pads += b->ids[i] == m->cfg.image_token_id || b->ids[i] == m->cfg.video_token_id;
        const model_pos p = b->pos[i];
        if (abs(p.t) >= (1 << 24) || abs(p.h) >= (1 << 24) || abs(p.w) >= (1 << 24))
            return vl_err(err, errlen, "forward: token %d position (%d,%d,%d) is beyond 2^24; "
                          "renumber with model_kv_shift", i, p.t, p.h, p.w);
        const int s = b->slots[i];
        if (s < 0 || s >= kv->capacity)
            return vl_err(err, errlen, "forward: token %d slot %d is outside the cache's %d "
                          "slots", i, s, kv->capacity);
        if (kv->state[s] == MODEL_SLOT_VISIBLE)
            return vl_err(err, errlen, "forward: token %d slot %d is in use and visible; "
                          "release or hide it first", i, s);
    }
    if (pads != b->visual.n)
        return vl_err(err, errlen, "forward: batch has %d image/video pad tokens but %d visual "
                      "feature rows were supplied", pads, b->visual.n);
    if (pads > 0 && !b->visual.embeds)
        return vl_err(err, errlen, "forward: visual rows have no embeddings");
    if (pads > 0 && m->vis.num_deepstack > 0 && !b->visual.deepstack)
        return vl_err(err, errlen, "forward: visual rows have no DeepStack features (the model "
                      "has %d)", m->vis.num_deepstack);
    if (b->n_logits < 0 || b->n_logits > b->n || (b->n_logits > 0 && (!b->logit_rows || !b->logits)))
        return vl_err(err, errlen, "forward: %d logit rows requested for a batch of %d",
                      b->n_logits, b->n);
    for (int i = 0; i < b->n_logits; i++)
        if (b->logit_rows[i] < 0 || b->logit_rows[i] >= b->n)
            return vl_err(err, errlen, "forward: logit row %d is outside the batch of %d",
                          b->logit_rows[i], b->n);
    *n_pads = pads;
    return 0;
}

/* Sparse MoE block on normed rows h [n, H]: out [n, H] (before the residual add). */
static int moe_block(model *m, int layer, const float *h, int n, float *out, char *err,
                     size_t errlen) {
    const vl_text *t = &m->txt;
    const vl_text_layer *ly = &t->layer[layer];
    const int H = t->hidden, E = t->experts, K = t->top_k, I = t->moe_inter;
    size_t need = (size_t)n * E + (size_t)n * K * 3 + (size_t)E + 1 + (size_t)n * K * 2;
    float *rl = vl_buf_get(&m->scratch[VL_S_AUX3], sizeof(float) * need);
    float *work = vl_buf_get(&m->scratch[VL_S_AUX4], sizeof(float) * (size_t)n * (2 * H + 3 * I));
    if (!rl || !work) return vl_err(err, errlen, "out of memory (MoE block, %d tokens)", n);
    float *tw = rl + (size_t)n * E;          /* [n, K] weights */
    float *tid = tw + (size_t)n * K;         /* [n, K] ids as floats (for the trace) */
    int *ids = (int *)(tid + (size_t)n * K); /* [n, K] */
    int *cnt = ids + (size_t)n * K;          /* [E + 1] offsets */
    int *tok = cnt + E + 1;                  /* [n*K] token of each (expert, entry) */
    float *wt = (float *)(tok + (size_t)n * K);

    /* Router in f32 (a bf16 router would flip near-tied choices). */
    if (vl_lin(m, &ly->router, h, n, H, rl, E, VL_ACT_NONE, false, err, errlen)) return -1;
    vl_trace(m, "text.moe_router_logits", layer, rl, n, E);
    float *prob = malloc(sizeof(float) * (size_t)E);
    if (!prob) return vl_err(err, errlen, "out of memory (router)");
    for (int i = 0; i < n; i++) {
        memcpy(prob, rl + (size_t)i * E, sizeof(float) * (size_t)E);
        vl_softmax_scaled(prob, E, 1.0f);
        float sum = 0.0f;
        for (int k = 0; k < K; k++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                bool taken = false;
                for (int j = 0; j < k; j++) taken |= ids[(size_t)i * K + j] == e;
                if (!taken && (best < 0 || prob[e] > prob[best])) best = e;
            }
            ids[(size_t)i * K + k] = best;
            tw[(size_t)i * K + k] = prob[best];
            tid[(size_t)i * K + k] = (float)best;
            sum += prob[best];
        }
        if (t->norm_topk)
            for (int k = 0; k < K; k++) tw[(size_t)i * K + k] /= sum;
    }
    free(prob);
    vl_trace(m, "text.moe_topk_ids", layer, tid, n, K);
    vl_trace(m, "text.moe_topk_weights", layer, tw, n, K);

    /* Group the (token, expert) pairs by expert so each expert runs one matmul. */
    memset(cnt, 0, sizeof(int) * (size_t)(E + 1));
    for (int i = 0; i < n * K; i++) cnt[ids[i] + 1]++;
    for (int e = 0; e < E; e++) cnt[e + 1] += cnt[e];
    int *fill = malloc(sizeof(int) * (size_t)E);
    if (!fill) return vl_err(err, errlen, "out of memory (router)");
    memcpy(fill, cnt, sizeof(int) * (size_t)E);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < K; k++) {
            int e = ids[(size_t)i * K + k], at = fill[e]++;
            tok[at] = i;
            wt[at] = tw[(size_t)i * K + k];
        }
    free(fill);
    memset(out, 0, sizeof(float) * (size_t)n * H);
    float *xin = work, *gu = xin + (size_t)n * H, *act = gu + (size_t)n * 2 * I, *y = act + (size_t)n * I;
    for (int e = 0; e < E; e++) {
        const int c0 = cnt[e], ne = cnt[e + 1] - c0;
        if (ne == 0) continue;
        for (int r = 0; r < ne; r++) memcpy(xin + (size_t)r * H, h + (size_t)tok[c0 + r] * H, sizeof(float) * H);
        if (vl_lin(m, &ly->exp_gate_up[e], xin, ne, H, gu, 2 * I, VL_ACT_NONE, false, err, errlen)) return -1;
        vl_silu_mul(gu, 2 * I, I, ne, act, I);
        if (vl_lin(m, &ly->exp_down[e], act, ne, I, y, H, VL_ACT_NONE, false, err, errlen)) return -1;
        for (int r = 0; r < ne; r++) {
            float *o = out + (size_t)tok[c0 + r] * H;
            const float w = wt[c0 + r], *yr = y + (size_t)r * H;
            for (int d = 0; d < H; d++) o[d] += yr[d] * w;
        }
    }
    vl_trace(m, "text.moe_output", layer, out, n, H);
    return 0;
}

static int forward(model *m, model_kv *kv, const model_batch *b, char *err, size_t errlen) {
    const vl_text *t = &m->txt;
    const int n = b->n, H = t->hidden, hd = t->head_dim, half = hd / 2;
    const int HQ = t->heads, KVH = t->kv_heads, G = HQ / KVH;
    const int QN = HQ * hd, QKVN = (HQ + 2 * KVH) * hd;
    const bool bf16 = kv->bf16;
    const float scale = 1.0f / sqrtf((float)hd);

    /* visible slots, in slot order (attention does not depend on the order) */
    int nv = kv->counts[MODEL_SLOT_VISIBLE];
    int32_t *vis = malloc(sizeof(int32_t) * (size_t)(nv + 1));
    int *vrow = malloc(sizeof(int) * (size_t)n);
    if (!vis || !vrow) {
        free(vis);
        free(vrow);
        return vl_err(err, errlen, "out of memory");
    }
    for (int s = 0, k = 0; s < kv->capacity && k < nv; s++)
        if (kv->state[s] == MODEL_SLOT_VISIBLE) vis[k++] = s;

    int rc = -1;
    const size_t inter2 = t->experts ? 0 : (size_t)2 * t->inter;
    const size_t bigw = (size_t)QKVN > inter2 ? (size_t)QKVN : inter2;
    float *x = vl_buf_get(&m->scratch[VL_S_X], sizeof(float) * (size_t)n * H);
    float *h = vl_buf_get(&m->scratch[VL_S_H], sizeof(float) * (size_t)n * H);
    float *big = vl_buf_get(&m->scratch[VL_S_BIG], sizeof(float) * (size_t)n * bigw);
    float *att = vl_buf_get(&m->scratch[VL_S_ATT], sizeof(float) * (size_t)n * QN);
    float *rope = vl_buf_get(&m->scratch[VL_S_ROPE], sizeof(float) * (size_t)n * hd);
    float *act = vl_buf_get(&m->scratch[VL_S_AUX], sizeof(float) * (size_t)n * (t->experts ? H : t->inter));
    const bool gemm_attn = n > VL_SLOT_ATTN_MAX;
    const int L = nv + n;
    void *kc = gemm_attn ? vl_buf_get(&m->scratch[VL_S_AUX2], 2 * kv->elt * (size_t)KVH * L * hd) : NULL;
    if (!x || !h || !big || !att || !rope || !act || (gemm_attn && !kc)) {
        vl_err(err, errlen, "forward: out of memory for a batch of %d tokens", n);
        goto done;
    }
    void *vc = gemm_attn ? (uint8_t *)kc + kv->elt * (size_t)KVH * L * hd : NULL;

    /* embeddings; pad tokens take the visual rows in order */
    for (int i = 0, r = 0; i < n; i++) {
        const int32_t id = b->ids[i];
        if (id == m->cfg.image_token_id || id == m->cfg.video_token_id) {
            vrow[i] = r;
            memcpy(x + (size_t)i * H, b->visual.embeds + (size_t)r * H, sizeof(float) * H);
            r++;
        } else {
            vrow[i] = -1;
            for (int d = 0; d < H; d++)
                x[(size_t)i * H + d] = vl_load_f32(t->embed->data, t->embed->dtype, (size_t)id * H + d);
        }
    }
    /* interleaved MRoPE angles: frequency j uses the T, H or W position */
    float *cosv = rope, *sinv = rope + (size_t)n * half;
    for (int i = 0; i < n; i++) {
        const int32_t ap[3] = { b->pos[i].t, b->pos[i].h, b->pos[i].w };
        for (int j = 0; j < half; j++) {
            float a = t->rope_inv_freq[j] * (float)ap[t->rope_axis[j]];
            cosv[(size_t)i * half + j] = cosf(a);
            sinv[(size_t)i * half + j] = sinf(a);
        }
    }

    for (int l = 0; l < t->layers; l++) {
        const vl_text_layer *ly = &t->layer[l];
        vl_trace(m, "text.layer_input", l, x, n, H);
        vl_rmsnorm(&ly->input_norm, x, h, n, H, H, t->rms_eps);
        float *qkv = big;
        if (vl_lin(m, &ly->qkv, h, n, H, qkv, QKVN, VL_ACT_NONE, false, err, errlen)) goto done;
#pragma omp parallel for schedule(static) if (n > 1)
        for (int i = 0; i < n; i++) {
            float *row = qkv + (size_t)i * QKVN;
            const float *c = cosv + (size_t)i * half, *s = sinv + (size_t)i * half;
            for (int hh = 0; hh < HQ; hh++) {
                vl_rmsnorm_row(ly->q_norm.weight, row + hh * hd, row + hh * hd, hd, t->rms_eps);
                vl_rope_apply(row + hh * hd, c, s, half);
            }
            for (int g = 0; g < KVH; g++) {
                float *k = row + QN + g * hd, *v = row + QN + KVH * hd + g * hd;
                vl_rmsnorm_row(ly->k_norm.weight, k, k, hd, t->rms_eps);
                vl_rope_apply(k, c, s, half);
                void *kd = vl_kv_at(kv, kv->k[l], g, b->slots[i]);
                void *vd = vl_kv_at(kv, kv->v[l], g, b->slots[i]);
                if (bf16) {
                    vl_f32_to_bf16(k, kd, (size_t)hd);
                    vl_f32_to_bf16(v, vd, (size_t)hd);
                } else {
                    memcpy(kd, k, sizeof(float) * hd);
                    memcpy(vd, v, sizeof(float) * hd);
                }
            }
        }
        if (!gemm_attn) {
            if (vl_attention_slots(m, kv, l, qkv, QKVN, n, vis, nv, b->slots, scale, att, QN,
                                   err, errlen))
                goto done;
        } else {
            /* gather the visible keys/values, then the batch's own, per kv head */
            const size_t row = kv->elt * (size_t)hd;
#pragma omp parallel for schedule(static)
            for (int g = 0; g < KVH; g++)
                for (int j = 0; j < L; j++) {
                    int slot = j < nv ? vis[j] : b->slots[j - nv];
                    memcpy((uint8_t *)kc + ((size_t)g * L + j) * row, vl_kv_at(kv, kv->k[l], g, slot), row);
                    memcpy((uint8_t *)vc + ((size_t)g * L + j) * row, vl_kv_at(kv, kv->v[l], g, slot), row);
                }
            for (int g = 0; g < KVH; g++) {
                vl_attn a = {
                    .nq = n, .nk = L, .group = G, .hd = hd,
                    .q = qkv + (size_t)g * G * hd, .q_head_stride = hd, .q_row_stride = QKVN,
                    .k = (uint8_t *)kc + (size_t)g * L * row, .v = (uint8_t *)vc + (size_t)g * L * row,
                    .kv_bf16 = bf16, .k_row_stride = hd, .v_row_stride = hd,
                    .n_prefix = nv, .scale = scale,
                    .out = att + (size_t)g * G * hd, .out_head_stride = hd, .out_row_stride = QN,
                };
                if (vl_attention_gemm(m, &a, err, errlen)) goto done;
            }
        }
        if (vl_lin(m, &ly->o_proj, att, n, QN, x, H, VL_ACT_NONE, true, err, errlen)) goto done;
        vl_rmsnorm(&ly->post_norm, x, h, n, H, H, t->rms_eps);
        if (ly->moe) {
            if (moe_block(m, l, h, n, act, err, errlen)) goto done;
            for (size_t i = 0; i < (size_t)n * H; i++) x[i] += act[i];
        } else {
            float *gu = big;
            if (vl_lin(m, &ly->gate_up, h, n, H, gu, 2 * t->inter, VL_ACT_NONE, false, err, errlen)) goto done;
            vl_silu_mul(gu, 2 * t->inter, t->inter, n, act, t->inter);
            if (vl_lin(m, &ly->down, act, n, t->inter, x, H, VL_ACT_NONE, true, err, errlen)) goto done;
        }
        vl_trace(m, "text.layer_output", l, x, n, H);
        if (l < m->vis.num_deepstack && b->visual.n > 0) {
            const float *ds = b->visual.deepstack + (size_t)l * b->visual.deepstack_stride;
            for (int i = 0; i < n; i++) {
                if (vrow[i] < 0) continue;
                const float *f = ds + (size_t)vrow[i] * H;
                for (int d = 0; d < H; d++) x[(size_t)i * H + d] += f[d];
            }
        }
    }
    vl_rmsnorm(&t->norm, x, h, n, H, H, t->rms_eps);
    vl_trace(m, "text.final_norm", 0, h, n, H);
    if (b->n_logits > 0) {
        float *rows = att; /* the attention buffer is free again; grow it if H > QN */
        if ((size_t)b->n_logits * H > (size_t)n * QN)
            rows = vl_buf_get(&m->scratch[VL_S_ATT], sizeof(float) * (size_t)b->n_logits * H);
        if (!rows) {
            vl_err(err, errlen, "out of memory (logits)");
            goto done;
        }
        for (int r = 0; r < b->n_logits; r++)
            memcpy(rows + (size_t)r * H, h + (size_t)b->logit_rows[r] * H, sizeof(float) * H);
        if (vl_lin(m, &t->lm_head, rows, b->n_logits, H, b->logits, t->vocab, VL_ACT_NONE, false,
                   err, errlen))
            goto done;
    }
    rc = 0;
done:
    free(vis);
    free(vrow);
    return rc;
}

int model_forward(model *m, model_kv *kv, const model_batch *b, char *err, size_t errlen) {
    if (!m) return vl_err(err, errlen, "forward: no model given");
    int pads = 0;
    if (validate(m, kv, b, err, errlen, &pads)) return -1;
    /* slots must be distinct within the batch */
    {
        uint8_t *seen = calloc((size_t)kv->capacity, 1);
        if (!seen) return vl_err(err, errlen, "out of memory");
        for (int i = 0; i < b->n; i++) {
            if (seen[b->slots[i]]) {
                free(seen);
                return vl_err(err, errlen, "forward: slot %d appears twice in the batch (tokens "
                              "must go to distinct slots)", b->slots[i]);
            }
            seen[b->slots[i]] = 1;
        }
        free(seen);
    }
    if (forward(m, kv, b, err, errlen)) {
        /* The destination slots may hold partial K/V now: drop them. */
        for (int i = 0; i < b->n; i++) {
            int s = b->slots[i];
            if (kv->state[s] != MODEL_SLOT_FREE) {
                kv->counts[kv->state[s]]--;
                kv->state[s] = MODEL_SLOT_FREE;
                kv->counts[MODEL_SLOT_FREE]++;
            }
        }
        return -1;
    }
    for (int i = 0; i < b->n; i++) {
        int s = b->slots[i];
        kv->counts[kv->state[s]]--;
        kv->state[s] = MODEL_SLOT_VISIBLE;
        kv->counts[MODEL_SLOT_VISIBLE]++;
        kv->pos[s] = b->pos[i];
    }
    return 0;
}

int model_forward_append(model *m, model_kv *kv, const int32_t *ids, const model_pos *pos, int n,
                         const model_visual_rows *visual, float *logits_last,
                         char *err, size_t errlen) {
    if (!kv) return vl_err(err, errlen, "forward_append: no KV cache given");
    if (n <= 0) return vl_err(err, errlen, "forward_append: no tokens given");
    const int start = model_kv_seq_len(kv);
    if (n > kv->capacity - start)
        return vl_err(err, errlen, "forward_append: %d tokens do not fit after the %d cached "
                      "(capacity %d)", n, start, kv->capacity);
    int32_t *slots = malloc(sizeof(int32_t) * (size_t)n);
    if (!slots) return vl_err(err, errlen, "out of memory");
    for (int i = 0; i < n; i++) {
        slots[i] = start + i;
        if (kv->state[start + i] != MODEL_SLOT_FREE) {
            free(slots);
            return vl_err(err, errlen, "forward_append: slot %d after the sequence is not free",
                          start + i);
        }
    }
    const int32_t last = n - 1;
    model_batch b = {
        .n = n, .ids = ids, .pos = pos, .slots = slots,
        .n_logits = logits_last ? 1 : 0, .logit_rows = &last, .logits = logits_last,
    };
    if (visual) b.visual = *visual;
    int rc = model_forward(m, kv, &b, err, errlen);
    free(slots);
    return rc;
}
