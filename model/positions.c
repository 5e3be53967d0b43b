/* positions.c — MRoPE (T,H,W) position ids, the upstream get_rope_index way. */
#include <stdio.h>

#include "model/vl_internal.h"

void model_pos_text(int *next, int n, model_pos *out) {
    for (int k = 0; k < n; k++) {
        int p = *next + k;
        out[k] = (model_pos){ p, p, p };
    }
    *next += n;
}

long model_pos_visual(const model_config *cfg, int *next, const model_grid *g, model_pos *out) {
    long ntok = model_grid_tokens(cfg, g);
    if (ntok <= 0) return -1;
    const int m = cfg->vision.spatial_merge_size;
    const int rows = g->h / m, cols = g->w / m, s = *next;
    long k = 0;
    for (int t = 0; t < g->t; t++)
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) out[k++] = (model_pos){ s + t, s + r, s + c };
    int span = g->t > rows ? g->t : rows;
    if (cols > span) span = cols;
    *next = s + span;
    return ntok;
}

static int find_from(const int32_t *ids, int n, int from, int32_t id) {
    for (int k = from; k < n; k++)
        if (ids[k] == id) return k;
    return -1;
}

int model_rope_index(const model_config *cfg, const int32_t *ids, int n,
                     const model_grid *image_grids, int n_images,
                     const model_grid *video_grids, int n_videos,
                     model_pos *pos, int *rope_delta, char *err, size_t errlen) {
    const int32_t img = cfg->image_token_id, vid = cfg->video_token_id;
    const int32_t vstart = cfg->vision_start_token_id;
    if (n < 0 || (n > 0 && (!ids || !pos)))
        return vl_err(err, errlen, "rope_index: no ids/positions given");
    if (n_images < 0 || n_videos < 0 || (n_images && !image_grids) || (n_videos && !video_grids))
        return vl_err(err, errlen, "rope_index: bad grid lists");
    /* Pads must match the grids exactly: upstream would silently mis-number otherwise. */
    long img_pads = 0, vid_pads = 0, img_need = 0, vid_need = 0, vid_entries = 0;
    for (int k = 0; k < n; k++) {
        img_pads += ids[k] == img;
        vid_pads += ids[k] == vid;
    }
    for (int i = 0; i < n_images; i++) {
        long t = model_grid_tokens(cfg, &image_grids[i]);
        if (t <= 0)
            return vl_err(err, errlen, "rope_index: image grid %d (%d,%d,%d) is not positive "
                          "and divisible by spatial_merge_size %d", i, image_grids[i].t,
                          image_grids[i].h, image_grids[i].w, cfg->vision.spatial_merge_size);
        img_need += t;
    }
    for (int i = 0; i < n_videos; i++) {
        long t = model_grid_tokens(cfg, &video_grids[i]);
        if (t <= 0)
            return vl_err(err, errlen, "rope_index: video grid %d (%d,%d,%d) is not positive "
                          "and divisible by spatial_merge_size %d", i, video_grids[i].t,
                          video_grids[i].h, video_grids[i].w, cfg->vision.spatial_merge_size);
        vid_need += t;
        vid_entries += video_grids[i].t;
    }
    if (img_pads != img_need)
        return vl_err(err, errlen, "rope_index: prompt has %ld image pad tokens (id %d) but the "
                      "%d image grid(s) cover %ld merged tokens", img_pads, img, n_images, img_need);
    if (vid_pads != vid_need)
        return vl_err(err, errlen, "rope_index: prompt has %ld video pad tokens (id %d) but the "
                      "%d video grid(s) cover %ld merged tokens", vid_pads, vid, n_videos, vid_need);

    /* Upstream splits each video into one (1,h,w) entry per frame pair: every pair is its own
     * <|vision_start|> ... <|vision_end|> block after its timestamp text. */
    int blocks = 0;
    for (int k = 0; k + 1 < n; k++)
        if (ids[k] == vstart && (ids[k + 1] == img || ids[k + 1] == vid)) blocks++;
    if (blocks != n_images + vid_entries)
        return vl_err(err, errlen, "rope_index: prompt has %d <|vision_start|> blocks followed by "
                      "pads, but %d image grid(s) and %ld video frame pair(s) were given", blocks,
                      n_images, vid_entries);

    int st = 0, next = 0, ii = 0, vi = 0, vt = 0;
    for (int b = 0; b < blocks; b++) {
        int ed_img = ii < n_images ? find_from(ids, n, st, img) : -1;
        int ed_vid = vi < n_videos ? find_from(ids, n, st, vid) : -1;
        model_grid g;
        int ed;
        if (ed_img >= 0 && (ed_vid < 0 || ed_img < ed_vid)) {
            g = image_grids[ii++];
            ed = ed_img;
        } else if (ed_vid >= 0) {
            g = video_grids[vi];
            g.t = 1;
            if (++vt == video_grids[vi].t) {
                vt = 0;
                vi++;
            }
            ed = ed_vid;
        } else {
            return vl_err(err, errlen, "rope_index: vision block %d has no pad tokens after "
                          "position %d", b, st);
        }
        int text_len = ed - st;
        model_pos_text(&next, text_len, pos + st);
        long ntok = model_grid_tokens(cfg, &g);
        if (ed + ntok > n)
            return vl_err(err, errlen, "rope_index: grid (%d,%d,%d) needs %ld pad tokens from "
                          "position %d but the prompt ends at %d", g.t, g.h, g.w, ntok, ed, n);
        int32_t pad = ids[ed];
        for (long k = 0; k < ntok; k++)
            if (ids[ed + k] != pad)
                return vl_err(err, errlen, "rope_index: token %ld is %d inside a run of %ld pad "
                              "tokens for grid (%d,%d,%d) (expected %d)", ed + k, ids[ed + k],
                              ntok, g.t, g.h, g.w, pad);
        model_pos_visual(cfg, &next, &g, pos + ed);
        st = ed + (int)ntok;
    }
    if (st < n) model_pos_text(&next, n - st, pos + st);
    if (rope_delta) *rope_delta = next - n;
    return 0;
}
