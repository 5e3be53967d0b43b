/* patchify.c — normalisation and patch layout of resized frames, exactly as upstream's
 * Qwen2VL image / Qwen3VL video processors write pixel_values. */
#include <stdio.h>

#include "model/vl_internal.h"

int model_patch_dim(const model_config *cfg) {
    const model_vision_config *v = &cfg->vision;
    return v->in_channels * v->temporal_patch_size * v->patch_size * v->patch_size;
}

long model_grid_patches(const model_grid *g) {
    if (!g || g->t <= 0 || g->h <= 0 || g->w <= 0) return 0;
    return (long)g->t * g->h * g->w;
}

long model_grid_tokens(const model_config *cfg, const model_grid *g) {
    int m = cfg->vision.spatial_merge_size;
    if (!g || m <= 0 || g->t <= 0 || g->h <= 0 || g->w <= 0 || g->h % m || g->w % m) return 0;
    return (long)g->t * (g->h / m) * (g->w / m);
}

long model_patchify(const model_config *cfg, const uint8_t *const *frames, int nframes,
                    int height, int width, size_t stride, float *out, size_t out_rows,
                    model_grid *grid, char *err, size_t errlen) {
    const model_vision_config *v = &cfg->vision;
    const int ps = v->patch_size, tp = v->temporal_patch_size, m = v->spatial_merge_size;
    const int ch = v->in_channels;
    if (ps <= 0 || tp <= 0 || m <= 0 || ch != 3)
        return vl_err(err, errlen, "patchify: vision config has patch_size %d, "
                      "temporal_patch_size %d, spatial_merge_size %d, in_channels %d "
                      "(expected positive sizes and 3 RGB channels)", ps, tp, m, ch);
    if (!frames || nframes <= 0 || nframes % tp)
        return vl_err(err, errlen, "patchify: %d frames given; expected a positive multiple of "
                      "temporal_patch_size %d (repeat a still image's frame)", nframes, tp);
    const int unit = ps * m;
    if (height <= 0 || width <= 0 || height % unit || width % unit)
        return vl_err(err, errlen, "patchify: frame size %dx%d is not a positive multiple of "
                      "patch_size*spatial_merge_size = %d (resize with factor %d first)",
                      width, height, unit, unit);
    if (stride == 0) stride = (size_t)width * 3;
    if (stride < (size_t)width * 3)
        return vl_err(err, errlen, "patchify: row stride %zu is less than width*3 = %d", stride,
                      width * 3);
    for (int f = 0; f < nframes; f++)
        if (!frames[f]) return vl_err(err, errlen, "patchify: frame %d is NULL", f);
    model_grid g = { nframes / tp, height / ps, width / ps };
    long rows = model_grid_patches(&g);
    if (!out || out_rows < (size_t)rows)
        return vl_err(err, errlen, "patchify: output holds %zu rows; grid %dx%dx%d needs %ld",
                      out_rows, g.t, g.h, g.w, rows);
    /* Upstream fuses rescale (1/255) into normalize: (x - mean*255) / (std*255) in float32;
     * for mean = std = 0.5 that is (x - 127.5f) / 127.5f exactly. */
    float mean[3], sd[3];
    for (int c = 0; c < 3; c++) {
        mean[c] = (float)((double)cfg->processor.image_mean[c] * 255.0);
        sd[c] = (float)((double)cfg->processor.image_std[c] * 255.0);
        if (!(sd[c] > 0.0f))
            return vl_err(err, errlen, "patchify: image_std[%d] = %g must be positive", c,
                          (double)cfg->processor.image_std[c]);
    }
    const int dim = ch * tp * ps * ps;
    const int hb = g.h / m, wb = g.w / m;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < rows; r++) {
        /* r = (((t*hb + bh)*wb + bw)*m + i)*m + j */
        long q = r;
        int j = (int)(q % m); q /= m;
        int i = (int)(q % m); q /= m;
        int bw = (int)(q % wb); q /= wb;
        int bh = (int)(q % hb); q /= hb;
        int t = (int)q;
        int py0 = (bh * m + i) * ps, px0 = (bw * m + j) * ps;
        float *o = out + (size_t)r * dim;
        for (int c = 0; c < ch; c++)
            for (int tt = 0; tt < tp; tt++) {
                const uint8_t *fr = frames[t * tp + tt];
                for (int y = 0; y < ps; y++) {
                    const uint8_t *src = fr + (size_t)(py0 + y) * stride + (size_t)px0 * 3 + c;
                    for (int x = 0; x < ps; x++)
                        *o++ = ((float)src[x * 3] - mean[c]) / sd[c];
                }
            }
    }
    if (grid) *grid = g;
    return rows;
}
