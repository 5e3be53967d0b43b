/* vision.c — the Qwen3-VL vision tower (model.visual.*), top-down as upstream's
 * Qwen3VLVisionModel.forward: patch_embed -> + interpolated pos_embed -> blocks with 2-D RoPE
 * and attention restricted to each frame pair -> merger; DeepStack mergers on the outputs of
 * the blocks listed in deepstack_visual_indexes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/kernels.h"

void model_vision_out_free(model_vision_out *o) {
    if (!o) return;
    free(o->embeds);
    free(o->deepstack);
    memset(o, 0, sizeof *o);
}

/* torch.linspace(start, end, steps) in float32: the first half counts up from start, the
 * second half down from end, as ATen's kernel does. */
static float linspace_at(float start, float end, int steps, int i) {
    if (steps == 1) return start;
    const float step = (end - start) / (float)(steps - 1);
    return i < steps / 2 ? start + step * (float)i : end - step * (float)(steps - i - 1);
}

/* fast_pos_embed_interpolate for one grid: bilinear from the side x side table onto the
 * h x w patch grid (floor by truncation, ceil clamped), then in 2x2 merge order, per t. */
static int add_pos_embed(const vl_vision *v, const model_grid *g, float *x) {
    const int side = v->grid_side, D = v->hidden, m = v->merge;
    float *hv = malloc(sizeof(float) * (size_t)g->h), *wv = malloc(sizeof(float) * (size_t)g->w);
    if (!hv || !wv) {
        free(hv);
        free(wv);
        return -1;
    }
    for (int i = 0; i < g->h; i++) hv[i] = linspace_at(0.0f, (float)(side - 1), g->h, i);
    for (int i = 0; i < g->w; i++) wv[i] = linspace_at(0.0f, (float)(side - 1), g->w, i);
    const int wb = g->w / m;
    const long per_t = (long)g->h * g->w;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < per_t; r++) {
        long q = r;
        int j = (int)(q % m); q /= m;
        int i = (int)(q % m); q /= m;
        int bw = (int)(q % wb); q /= wb;
        int bh = (int)q;
        int y = bh * m + i, xx = bw * m + j;
        int hf = (int)hv[y], wf = (int)wv[xx];
        int hc = hf + 1 < side - 1 ? hf + 1 : side - 1, wc = wf + 1 < side - 1 ? wf + 1 : side - 1;
        float dh = hv[y] - (float)hf, dw = wv[xx] - (float)wf;
        float w00 = (1.0f - dh) * (1.0f - dw), w01 = (1.0f - dh) * dw;
        float w10 = dh * (1.0f - dw), w11 = dh * dw;
        const float *e00 = v->pos_embed + ((size_t)hf * side + wf) * D;
        const float *e01 = v->pos_embed + ((size_t)hf * side + wc) * D;
        const float *e10 = v->pos_embed + ((size_t)hc * side + wf) * D;
        const float *e11 = v->pos_embed + ((size_t)hc * side + wc) * D;
        for (int t = 0; t < g->t; t++) {
            float *xr = x + ((size_t)t * per_t + r) * D;
            for (int d = 0; d < D; d++) {
                float p = e00[d] * w00 + e01[d] * w01;
                p = p + e10[d] * w10;
                p = p + e11[d] * w11;
                xr[d] += p;
            }
        }
    }
    free(hv);
    free(wv);
    return 0;
}

/* Per patch: angles [row freqs | col freqs] (head_dim/2 of them), row = 2*hb+hi, col = 2*wb+wi. */
static void rope_tables(const vl_vision *v, const model_grid *g, float *cosv, float *sinv) {
    const int m = v->merge, q4 = v->head_dim / 4, half = v->head_dim / 2;
    const int wb = g->w / m;
    const long per_t = (long)g->h * g->w;
    for (long r = 0; r < per_t * g->t; r++) {
        long q = r % per_t;
        int j = (int)(q % m); q /= m;
        int i = (int)(q % m); q /= m;
        int bw = (int)(q % wb); q /= wb;
        int bh = (int)q;
        float row = (float)(bh * m + i), col = (float)(bw * m + j);
        for (int f = 0; f < half; f++) {
            float a = f < q4 ? row * v->rope_inv_freq[f] : col * v->rope_inv_freq[f - q4];
            cosv[r * half + f] = cosf(a);
            sinv[r * half + f] = sinf(a);
        }
    }
}

/* Merger: main (norm each patch, then group merge^2 patches) or DeepStack (group, then norm). */
static int run_merger(model *m, const vl_merger *mg, const float *x, int N, float *out,
                      char *err, size_t errlen) {
    const vl_vision *v = &m->vis;
    const int D = v->hidden, D4 = D * v->merge * v->merge, T = N / (v->merge * v->merge);
    float *h = vl_buf_get(&m->scratch[VL_S_H], sizeof(float) * (size_t)N * D);
    float *f1 = vl_buf_get(&m->scratch[VL_S_AUX], sizeof(float) * (size_t)T * D4);
    if (!h || !f1) return vl_err(err, errlen, "out of memory (vision merger)");
    if (mg->postshuffle) vl_layernorm(&mg->norm, x, h, T, D4, D4, 1e-6f);
    else vl_layernorm(&mg->norm, x, h, N, D, D, 1e-6f);
    if (vl_lin(m, &mg->fc1, h, T, D4, f1, D4, VL_ACT_GELU_ERF, false, err, errlen)) return -1;
    return vl_lin(m, &mg->fc2, f1, T, D4, out, v->out_hidden, VL_ACT_NONE, false, err, errlen);
}

int model_vision_encode(model *m, const float *patch_rows, size_t n_rows,
                        const model_grid *grids, int n_grids, model_vision_out *out,
                        char *err, size_t errlen) {
    if (!m || !out) return vl_err(err, errlen, "vision_encode: no model or output given");
    memset(out, 0, sizeof *out);
    const vl_vision *v = &m->vis;
    if (!grids || n_grids <= 0) return vl_err(err, errlen, "vision_encode: no grids given");
    if (!patch_rows) return vl_err(err, errlen, "vision_encode: no patch rows given");
    long total = 0;
    for (int i = 0; i < n_grids; i++) {
        const model_grid *g = &grids[i];
        if (g->t <= 0 || g->h <= 0 || g->w <= 0 || g->h % v->merge || g->w % v->merge)
            return vl_err(err, errlen, "vision_encode: grid %d is (t=%d, h=%d, w=%d); expected "
                          "positive sizes with h and w divisible by spatial_merge_size %d", i,
                          g->t, g->h, g->w, v->merge);
        if ((long)g->h * g->w > (1L << 24) || total > (1L << 26))
            return vl_err(err, errlen, "vision_encode: grid %d (%d x %d patches) is too large", i,
                          g->h, g->w);
        total += model_grid_patches(g);
    }
    if ((long)n_rows != total)
        return vl_err(err, errlen, "vision_encode: %zu patch rows given but the %d grid(s) hold "
                      "%ld patches (t*h*w)", n_rows, n_grids, total);
    const int N = (int)total, D = v->hidden, hd = v->head_dim, half = hd / 2;
    const int T = N / (v->merge * v->merge), OUT = v->out_hidden;
    const bool bf16 = m->compute == MODEL_COMPUTE_BF16;
    size_t big = (size_t)N * (3 * D > v->inter ? 3 * D : v->inter);
    float *x = vl_buf_get(&m->scratch[VL_S_X], sizeof(float) * (size_t)N * D);
    float *rope = vl_buf_get(&m->scratch[VL_S_ROPE], sizeof(float) * (size_t)N * hd);
    out->embeds = malloc(sizeof(float) * (size_t)T * OUT);
    out->deepstack = malloc(sizeof(float) * (size_t)T * OUT * (v->num_deepstack ? v->num_deepstack : 1));
    if (!x || !rope || !out->embeds || !out->deepstack) {
        model_vision_out_free(out);
        return vl_err(err, errlen, "vision_encode: out of memory for %d patches", N);
    }
    out->n_tokens = T;
    out->hidden = OUT;
    out->num_deepstack = v->num_deepstack;

    /* patch_embed (Conv3d with stride = kernel is a GEMM) + pos_embed */
    if (vl_lin(m, &v->patch_embed, patch_rows, N, v->patch_dim, x, D, VL_ACT_NONE, false, err, errlen))
        goto fail;
    vl_trace(m, "vision.patch_embed", 0, x, N, D);
    float *cosv = rope, *sinv = rope + (size_t)N * half;
    for (int i = 0, off = 0; i < n_grids; i++) {
        if (add_pos_embed(v, &grids[i], x + (size_t)off * D)) {
            vl_err(err, errlen, "vision_encode: out of memory");
            goto fail;
        }
        rope_tables(v, &grids[i], cosv + (size_t)off * half, sinv + (size_t)off * half);
        off += (int)model_grid_patches(&grids[i]);
    }

    const vl_act mlp_act = strcmp(m->cfg.vision.hidden_act, "gelu") == 0 ? VL_ACT_GELU_ERF : VL_ACT_GELU_TANH;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int b = 0; b < v->depth; b++) {
        const vl_vision_block *blk = &v->blocks[b];
        float *h = vl_buf_get(&m->scratch[VL_S_H], sizeof(float) * (size_t)N * D);
        float *qkv = vl_buf_get(&m->scratch[VL_S_BIG], sizeof(float) * big);
        float *att = vl_buf_get(&m->scratch[VL_S_ATT], sizeof(float) * (size_t)N * D);
        uint16_t *qkvb = bf16 ? vl_buf_get(&m->scratch[VL_S_QKVB], 2 * (size_t)N * 3 * D) : NULL;
        if (!h || !qkv || !att || (bf16 && !qkvb)) {
            vl_err(err, errlen, "vision_encode: out of memory for %d patches", N);
            goto fail;
        }
        vl_layernorm(&blk->norm1, x, h, N, D, D, 1e-6f);
        if (vl_lin(m, &blk->qkv, h, N, D, qkv, 3 * D, VL_ACT_NONE, false, err, errlen)) goto fail;
        /* RoPE on q and k of every head, in f32 */
#pragma omp parallel for schedule(static)
        for (int r = 0; r < N; r++) {
            float *row = qkv + (size_t)r * 3 * D;
            for (int hh = 0; hh < v->heads; hh++) {
                vl_rope_apply(row + hh * hd, cosv + (size_t)r * half, sinv + (size_t)r * half, half);
                vl_rope_apply(row + D + hh * hd, cosv + (size_t)r * half, sinv + (size_t)r * half, half);
            }
            if (bf16) vl_f32_to_bf16(row, qkvb + (size_t)r * 3 * D, (size_t)3 * D);
        }
        /* Attention within each frame pair (cu_seqlens: one segment of h*w per t per grid). */
        for (int i = 0, off = 0; i < n_grids; i++) {
            const int L = grids[i].h * grids[i].w;
            for (int t = 0; t < grids[i].t; t++, off += L) {
                /* all heads in one batched matmul, each with its own K/V */
                {
                    vl_attn a = {
                        .nq = L, .nk = L, .group = v->heads, .hd = hd,
                        .q = qkv + (size_t)off * 3 * D,
                        .q_head_stride = hd, .q_row_stride = 3 * D,
                        .k = bf16 ? (const void *)(qkvb + (size_t)off * 3 * D + D)
                                  : (const void *)(qkv + (size_t)off * 3 * D + D),
                        .v = bf16 ? (const void *)(qkvb + (size_t)off * 3 * D + 2 * D)
                                  : (const void *)(qkv + (size_t)off * 3 * D + 2 * D),
                        .kv_bf16 = bf16, .k_row_stride = 3 * D, .v_row_stride = 3 * D,
                        .k_head_stride = hd, .v_head_stride = hd,
                        .n_prefix = -1, .scale = scale,
                        .out = att + (size_t)off * D,
                        .out_head_stride = hd, .out_row_stride = D,
                    };
                    if (vl_attention_gemm(m, &a, err, errlen)) goto fail;
                }
            }
        }
        if (vl_lin(m, &blk->proj, att, N, D, x, D, VL_ACT_NONE, true, err, errlen)) goto fail;
        vl_layernorm(&blk->norm2, x, h, N, D, D, 1e-6f);
        if (vl_lin(m, &blk->fc1, h, N, D, qkv, v->inter, mlp_act, false, err, errlen)) goto fail;
        if (vl_lin(m, &blk->fc2, qkv, N, v->inter, x, D, VL_ACT_NONE, true, err, errlen)) goto fail;
        vl_trace(m, "vision.block", b, x, N, D);
        for (int k = 0; k < v->num_deepstack; k++) {
            if (v->deepstack_index[k] != b) continue;
            float *dst = out->deepstack + (size_t)k * T * OUT;
            if (run_merger(m, &v->deepstack[k], x, N, dst, err, errlen)) goto fail;
            vl_trace(m, "vision.deepstack", k, dst, T, OUT);
        }
    }
    if (run_merger(m, &v->merger, x, N, out->embeds, err, errlen)) goto fail;
    vl_trace(m, "vision.merger", 0, out->embeds, T, OUT);
    return 0;
fail:
    model_vision_out_free(out);
    return -1;
}
