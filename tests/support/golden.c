/* golden.c — see golden.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/golden.h"

#include "model/chat.h"

/* ------------------------------------------------------------------------------------------ */
/* Reference arrays and comparisons                                                           */

npy_array *golden_load_opt(const char *set_dir, const char *kase, const char *what) {
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/%s%s%s.npy", set_dir, kase, kase[0] ? "_" : "", what);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fclose(f);
    npy_array *a = npy_load(path, err, sizeof err);
    if (!a) fail_msg("%s", err);
    return a;
}

npy_array *golden_load(const char *set_dir, const char *kase, const char *what) {
    npy_array *a = golden_load_opt(set_dir, kase, what);
    if (!a) fail_msg("missing golden file %s/%s%s%s.npy", set_dir, kase, kase[0] ? "_" : "", what);
    return a;
}

double golden_rel_err(const float *got, const float *ref, size_t n) {
    double mx = 0.0, ma = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (!(d <= mx)) mx = d; /* NaN propagates as a failure */
        if (fabs(ref[i]) > ma) ma = fabs(ref[i]);
    }
    return ma > 0 ? mx / ma : mx;
}

void golden_expect_close(const char *what, const float *got, const float *ref, size_t n, double tol) {
    double r = golden_rel_err(got, ref, n);
    if (!(r <= tol)) fail_msg("%s: relative error %.3g exceeds %.3g", what, r, tol);
}

/* ------------------------------------------------------------------------------------------ */
/* Trace checker                                                                              */

void golden_expect_trace(golden_trace_checker *c, const char *name, int index, const float *ref, int rows,
                         int cols) {
    assert_true(c->n < GOLDEN_MAX_TRACES);
    c->expect[c->n++] = (golden_trace_expect){ name, index, ref, rows, cols, 0, 0.0 };
}

void golden_trace_record(void *checker, const char *name, int index, const float *data, int rows, int cols) {
    golden_trace_checker *c = checker;
    if (c->also) c->also(c->also_ctx, name, index, data, rows, cols);
    for (int i = 0; i < c->n; i++) {
        golden_trace_expect *e = &c->expect[i];
        if (strcmp(e->name, name) || e->index != index) continue;
        e->seen++;
        if (rows != e->rows || cols != e->cols) {
            e->err = INFINITY;
            continue;
        }
        e->err = golden_rel_err(data, e->ref, (size_t)rows * cols);
    }
}

void golden_check_traces(const golden_trace_checker *c, double tol) {
    for (int i = 0; i < c->n; i++) {
        const golden_trace_expect *e = &c->expect[i];
        if (e->seen != 1) fail_msg("trace %s[%d] produced %d times (expected once)", e->name, e->index, e->seen);
        if (!(e->err <= tol))
            fail_msg("%s[%d] ([%d x %d]): relative error %.3g exceeds %.3g", e->name, e->index,
                     e->rows, e->cols, e->err, tol);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Fixture                                                                                    */

int golden_model_open(golden_model *g, const char *set_dir, model_compute compute) {
    char path[512], err[512];
    memset(g, 0, sizeof *g);
    g->set_dir = set_dir;
    g->compute = compute;
    snprintf(path, sizeof path, "%s/model", set_dir);
    if (checkpoint_open(path, &g->ck, err, sizeof err)) {
        fprintf(stderr, "checkpoint_open: %s\n", err);
        return -1;
    }
    model_options o = { .compute = compute, .num_threads = 2 };
    if (model_create(g->ck, &o, &g->m, err, sizeof err)) {
        fprintf(stderr, "model_create: %s\n", err);
        return -1;
    }
    snprintf(path, sizeof path, "%s/model/tokenizer.json", set_dir);
    if (tok_load(path, &g->tok, err, sizeof err)) {
        fprintf(stderr, "tok_load: %s\n", err);
        return -1;
    }
    return 0;
}

void golden_model_close(golden_model *g) {
    if (g->tok) tok_free(g->tok);
    model_destroy(g->m);
    if (g->ck) checkpoint_close(g->ck);
    memset(g, 0, sizeof *g);
}

/* ------------------------------------------------------------------------------------------ */
/* One case                                                                                   */

const float *golden_case_keep(golden_case *c, npy_array *a) {
    assert_true(c->n_kept < GOLDEN_MAX_KEPT);
    c->kept[c->n_kept++] = a;
    return npy_f32(a);
}

static void case_free(golden_case *c) {
    free(c->ids);
    free(c->embeds);
    free(c->deepstack);
    for (int i = 0; i < c->n_kept; i++) npy_free(c->kept[i]);
    memset(c, 0, sizeof *c);
}

/* Patchify one modality's resized frames and check pixel values and grid exactly. */
static float *patchify_case(const golden_model *g, const char *kase, const char *mod, model_grid *grid,
                            long *rows) {
    const model_config *cfg = model_get_config(g->m);
    char what[64];
    snprintf(what, sizeof what, "%s_resized_thwc_u8", mod);
    npy_array *u8 = golden_load(g->set_dir, kase, what);
    assert_int_equal(u8->ndim, 4);
    const int T = (int)u8->shape[0], H = (int)u8->shape[1], W = (int)u8->shape[2];
    const uint8_t *fr[64];
    assert_true(T <= 64);
    for (int t = 0; t < T; t++) fr[t] = npy_u8(u8) + (size_t)t * H * W * 3;
    const size_t cap = (size_t)T * H * W * 3 / (size_t)model_patch_dim(cfg) * 2;
    float *out = malloc(sizeof(float) * cap * model_patch_dim(cfg));
    assert_non_null(out);
    char err[512] = "";
    *rows = model_patchify(cfg, fr, T, H, W, 0, out, cap, grid, err, sizeof err);
    if (*rows < 0) fail_msg("patchify: %s", err);
    npy_free(u8);

    snprintf(what, sizeof what, "%s_grid_thw", mod);
    npy_array *gt = golden_load(g->set_dir, kase, what);
    assert_int_equal(grid->t, npy_i64(gt)[0]);
    assert_int_equal(grid->h, npy_i64(gt)[1]);
    assert_int_equal(grid->w, npy_i64(gt)[2]);
    npy_free(gt);
    npy_array *pv = golden_load(g->set_dir, kase, strcmp(mod, "image") == 0 ? "pixel_values" : "pixel_values_videos");
    assert_int_equal(pv->shape[0], *rows);
    assert_int_equal(pv->shape[1], model_patch_dim(cfg));
    size_t bad = 0;
    for (size_t i = 0; i < pv->count; i++) bad += out[i] != npy_f32(pv)[i];
    if (bad) fail_msg("%s %s pixel values: %zu of %zu differ from the reference", kase, mod, bad, pv->count);
    npy_free(pv);
    return out;
}

/* Vision for every modality of the case (image first, as in the prompts), traces checked within
 * trace_tol; visual rows concatenated in prompt order. */
static void run_vision(const golden_model *g, golden_case *c, const golden_tolerances *tol, double trace_tol) {
    const model_config *cfg = model_get_config(g->m);
    const char *kase = c->name, *dir = g->set_dir;
    const char *mods[2] = { "image", "video" };
    model_vision_out vo[2];
    int nvo = 0;
    for (int k = 0; k < 2; k++) {
        char what[64];
        snprintf(what, sizeof what, "%s_resized_thwc_u8", mods[k]);
        npy_array *probe = golden_load_opt(dir, kase, what);
        if (!probe) continue;
        npy_free(probe);
        model_grid gr;
        long rows;
        float *pix = patchify_case(g, kase, mods[k], &gr, &rows);
        golden_trace_checker ex = { .n = 0 };
        const int N = (int)rows, T = (int)model_grid_tokens(cfg, &gr);
        const int D = cfg->vision.hidden_size, OUT = cfg->vision.out_hidden_size;
        snprintf(what, sizeof what, "%s_vision_patch_embed", mods[k]);
        golden_expect_trace(&ex, "vision.patch_embed", 0, golden_case_keep(c, golden_load(dir, kase, what)), N, D);
        snprintf(what, sizeof what, "%s_vision_block_outputs", mods[k]);
        const float *blocks = golden_case_keep(c, golden_load(dir, kase, what));
        for (int b = 0; b < cfg->vision.depth; b++)
            golden_expect_trace(&ex, "vision.block", b, blocks + (size_t)b * N * D, N, D);
        for (int d = 0; d < cfg->vision.num_deepstack; d++) {
            snprintf(what, sizeof what, "%s_vision_deepstack_%d", mods[k], d);
            golden_expect_trace(&ex, "vision.deepstack", d, golden_case_keep(c, golden_load(dir, kase, what)), T, OUT);
        }
        snprintf(what, sizeof what, "%s_vision_pooler_output", mods[k]);
        const float *pooler = golden_case_keep(c, golden_load(dir, kase, what));
        golden_expect_trace(&ex, "vision.merger", 0, pooler, T, OUT);
        char err[512] = "";
        model_set_trace(g->m, golden_trace_record, &ex);
        int rc = model_vision_encode(g->m, pix, (size_t)rows, &gr, 1, &vo[nvo], err, sizeof err);
        model_set_trace(g->m, NULL, NULL);
        if (rc) fail_msg("vision_encode %s %s: %s", kase, mods[k], err);
        golden_check_traces(&ex, trace_tol);

        if (gr.t > 1) {
            /* the daemon's way: each frame pair encoded on its own */
            const long per = (long)gr.h * gr.w, tper = T / gr.t;
            for (int t = 0; t < gr.t; t++) {
                model_grid g1 = { 1, gr.h, gr.w };
                model_vision_out one;
                if (model_vision_encode(g->m, pix + (size_t)t * per * model_patch_dim(cfg), (size_t)per,
                                        &g1, 1, &one, err, sizeof err))
                    fail_msg("vision_encode pair %d: %s", t, err);
                golden_expect_close("pair-by-pair merger", one.embeds, pooler + (size_t)t * tper * OUT,
                                    (size_t)tper * OUT, trace_tol);
                for (int d = 0; d < one.num_deepstack; d++)
                    golden_expect_close("pair-by-pair deepstack", one.deepstack + (size_t)d * tper * OUT,
                                        vo[nvo].deepstack + (size_t)d * T * OUT + (size_t)t * tper * OUT,
                                        (size_t)tper * OUT, tol->pair_deepstack);
                model_vision_out_free(&one);
            }
        }
        if (k == 0) c->img[c->n_img++] = gr;
        else c->vid[c->n_vid++] = gr;
        nvo++;
        free(pix);
    }
    int tot = 0;
    for (int i = 0; i < nvo; i++) tot += vo[i].n_tokens;
    const int OUT = cfg->vision.out_hidden_size, NDS = cfg->vision.num_deepstack;
    c->embeds = malloc(sizeof(float) * (size_t)(tot ? tot : 1) * OUT);
    c->deepstack = malloc(sizeof(float) * (size_t)(tot ? tot : 1) * OUT * (NDS ? NDS : 1));
    assert_non_null(c->embeds);
    assert_non_null(c->deepstack);
    for (int i = 0, off = 0; i < nvo; i++) {
        memcpy(c->embeds + (size_t)off * OUT, vo[i].embeds, sizeof(float) * vo[i].n_tokens * OUT);
        for (int d = 0; d < NDS; d++)
            memcpy(c->deepstack + (size_t)d * tot * OUT + (size_t)off * OUT,
                   vo[i].deepstack + (size_t)d * vo[i].n_tokens * OUT, sizeof(float) * vo[i].n_tokens * OUT);
        off += vo[i].n_tokens;
        model_vision_out_free(&vo[i]);
    }
    c->visual = (model_visual_rows){ c->embeds, c->deepstack, (size_t)tot * OUT, tot };
}

/* Prompt ids: from the tokenizer on the expanded prompt text, equal to the reference ids. */
static void load_ids(const golden_model *g, golden_case *c) {
    const char *kase = c->name;
    npy_array *ids = golden_load(g->set_dir, kase, "input_ids");
    c->n = (int)ids->shape[1];
    c->ids = malloc(sizeof(int32_t) * (size_t)c->n);
    assert_non_null(c->ids);
    for (int i = 0; i < c->n; i++) c->ids[i] = (int32_t)npy_i64(ids)[i];
    npy_free(ids);

    char path[512];
    snprintf(path, sizeof path, "%s/%s_prompt_expanded.txt", g->set_dir, kase);
    FILE *fp = fopen(path, "rb");
    if (!fp) fail_msg("missing golden file %s", path);
    char *text = malloc(1 << 20);
    assert_non_null(text);
    size_t len = fread(text, 1, (1 << 20) - 1, fp);
    fclose(fp);
    text[len] = '\0';
    long n = tok_encode(g->tok, text, len, NULL, 0);
    if (n != c->n) fail_msg("%s: tokenizer gives %ld ids for the expanded prompt, reference %d", kase, n, c->n);
    int32_t *got = malloc(sizeof(int32_t) * (size_t)n);
    assert_non_null(got);
    assert_int_equal(tok_encode(g->tok, text, len, got, (size_t)n), n);
    for (int i = 0; i < c->n; i++)
        if (got[i] != c->ids[i]) fail_msg("%s: token %d is %d, reference %d", kase, i, got[i], c->ids[i]);
    free(got);
    free(text);
}

/* The chat renderer builds the same prompt ids from the parts (image tokens, video frame pairs
 * with their timestamps, the question), as upstream's processor expands them. */
static void check_chat(const golden_model *g, const golden_case *c) {
    const model_config *cfg = model_get_config(g->m);
    const char *kase = c->name;
    chat_format fmt;
    char err[512] = "";
    if (chat_format_init(&fmt, g->tok, err, sizeof err)) fail_msg("chat_format_init: %s", err);
    chat_part parts[3];
    int np = 0, pair_tokens[8];
    const double ts[2] = { 0.25, 1.25 }; /* README: 4 frames at 2 fps, pairs (0,1) and (2,3) */
    for (int i = 0; i < c->n_img; i++)
        parts[np++] = (chat_part){ .kind = CHAT_PART_IMAGE, .image_tokens = (int)model_grid_tokens(cfg, &c->img[i]) };
    for (int i = 0; i < c->n_vid; i++) {
        assert_int_equal(c->vid[i].t, 2);
        model_grid pair = c->vid[i];
        pair.t = 1;
        for (int k = 0; k < c->vid[i].t; k++) pair_tokens[k] = (int)model_grid_tokens(cfg, &pair);
        parts[np++] = (chat_part){ .kind = CHAT_PART_VIDEO, .n_pairs = c->vid[i].t, .pair_tokens = pair_tokens, .timestamps = ts };
    }
    const char *q = strcmp(kase, "img") == 0 ? "Describe this image."
                    : strcmp(kase, "vid") == 0 ? "Describe this video." : "Compare the image and the video.";
    parts[np++] = (chat_part){ .kind = CHAT_PART_TEXT, .text = q, .text_len = strlen(q) };
    chat_message msg = { CHAT_ROLE_USER, parts, (size_t)np };
    chat_options opts = chat_options_default();
    chat_prompt pr;
    chat_prompt_init(&pr);
    if (chat_render(&fmt, &msg, 1, &opts, &pr, err, sizeof err)) fail_msg("chat_render %s: %s", kase, err);
    if ((int)pr.n_ids != c->n) fail_msg("%s: chat prompt has %zu ids, reference %d", kase, pr.n_ids, c->n);
    for (int i = 0; i < c->n; i++)
        if (pr.ids[i] != c->ids[i]) fail_msg("%s: chat prompt token %d is %d, reference %d", kase, i, pr.ids[i], c->ids[i]);
    chat_prompt_free(&pr);
}

static void check_positions(const golden_model *g, const golden_case *c, model_pos *pos, int *delta) {
    const model_config *cfg = model_get_config(g->m);
    const char *kase = c->name;
    char err[512] = "";
    if (model_rope_index(cfg, c->ids, c->n, c->img, c->n_img, c->vid, c->n_vid, pos, delta, err, sizeof err))
        fail_msg("rope_index %s: %s", kase, err);
    npy_array *p = golden_load(g->set_dir, kase, "position_ids");
    const int64_t *r = npy_i64(p);
    for (int i = 0; i < c->n; i++)
        if (pos[i].t != r[i] || pos[i].h != r[c->n + i] || pos[i].w != r[2 * c->n + i])
            fail_msg("%s position %d: (%d,%d,%d), reference (%lld,%lld,%lld)", kase, i, pos[i].t,
                     pos[i].h, pos[i].w, (long long)r[i], (long long)r[c->n + i], (long long)r[2 * c->n + i]);
    npy_free(p);
    npy_array *d = golden_load(g->set_dir, kase, "rope_deltas");
    assert_int_equal(*delta, npy_i64(d)[0]);
    npy_free(d);
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Top-5 at every prompt position, where the reference values are clearly apart. */
static void check_top5_all_positions(const golden_model *g, const golden_case *c, const float *logits, int V,
                                     float abs_tol) {
    const char *kase = c->name;
    npy_array *ti = golden_load(g->set_dir, kase, "logits_top5_ids_all_pos");
    npy_array *tv = golden_load(g->set_dir, kase, "logits_top5_vals_all_pos");
    int compared = 0;
    for (int i = 0; i < c->n; i++) {
        const float *lg = logits + (size_t)i * V;
        for (int k = 0; k < 5; k++) {
            const float rv = npy_f32(tv)[i * 5 + k];
            const int64_t rid = npy_i64(ti)[i * 5 + k];
            if (fabsf(lg[rid] - rv) > abs_tol)
                fail_msg("%s position %d: logit of top-%d id %lld is %.6f, reference %.6f", kase, i,
                         k, (long long)rid, lg[rid], rv);
            bool apart = (k == 0 || npy_f32(tv)[i * 5 + k - 1] - rv > abs_tol) &&
                         (k == 4 || rv - npy_f32(tv)[i * 5 + k + 1] > abs_tol);
            if (k == 0 && apart && argmax(lg, V) != rid)
                fail_msg("%s position %d: argmax %d, reference %lld", kase, i, argmax(lg, V), (long long)rid);
            compared += apart;
        }
    }
    assert_true(compared > c->n);
    npy_free(ti);
    npy_free(tv);
}

/* 8 greedy tokens, KV-cache path: a manual loop where the set has per-step logits (f32 only),
 * model_generate otherwise. lg holds the last prompt position's logits and is overwritten. */
static void check_greedy_8(const golden_model *g, const golden_case *c, model_kv *kv, float *lg, int V,
                           int next, double step_tol) {
    const char *kase = c->name;
    const bool exact = g->compute == MODEL_COMPUTE_F32;
    char err[512] = "";
    npy_array *gi = golden_load(g->set_dir, kase, "greedy_8_ids");
    npy_array *steps = exact ? golden_load_opt(g->set_dir, kase, "greedy_8_step_logits") : NULL;
    if (steps) {
        for (int s = 0; s < 8; s++) {
            golden_expect_close("greedy step logits", lg, npy_f32(steps) + (size_t)s * V, (size_t)V, step_tol);
            int32_t id = argmax(lg, V);
            if (id != npy_i64(gi)[s]) fail_msg("%s greedy step %d: %d, reference %lld", kase, s, id, (long long)npy_i64(gi)[s]);
            model_pos p;
            model_pos_text(&next, 1, &p);
            if (model_forward_append(g->m, kv, &id, &p, 1, NULL, lg, err, sizeof err)) fail_msg("%s", err);
        }
        npy_free(steps);
    } else {
        model_generate_params gp = { .sampling = model_sampling_default(), .max_tokens = 8 };
        int32_t gslots[8];
        for (int s = 0; s < 8; s++) gslots[s] = c->n + s;
        model_generate_result res;
        /* tokenizer NULL: the reference generated with eos_token_id=None */
        if (model_generate(g->m, kv, NULL, &gp, c->ids, (size_t)c->n, lg, gslots, 8, &next, &res, err, sizeof err))
            fail_msg("generate %s: %s", kase, err);
        assert_int_equal(res.n_ids, 8);
        assert_int_equal(res.reason, MODEL_STOP_MAX_TOKENS);
        assert_int_equal(res.n_fed, 7);
        for (int s = 0; s < 8; s++)
            if (res.ids[s] != npy_i64(gi)[s])
                fail_msg("%s (%s) greedy step %d: %d, reference %lld", kase, exact ? "f32" : "bf16", s,
                         res.ids[s], (long long)npy_i64(gi)[s]);
        model_generate_result_free(&res);
    }
    npy_free(gi);
}

void golden_run_case(const golden_model *g, const char *kase, const golden_tolerances *tol,
                     const golden_case_hooks *hooks) {
    const bool exact = g->compute == MODEL_COMPUTE_F32;
    const model_config *cfg = model_get_config(g->m);
    const int V = cfg->text.vocab_size, H = cfg->text.hidden_size, NL = cfg->text.num_hidden_layers;
    const char *dir = g->set_dir;
    golden_case c;
    memset(&c, 0, sizeof c);
    c.name = kase;
    load_ids(g, &c);
    run_vision(g, &c, tol, exact ? tol->f32 : 1.0 /* bf16 vision: judged by the logits */);
    check_chat(g, &c);
    model_pos *pos = malloc(sizeof(model_pos) * (size_t)c.n);
    assert_non_null(pos);
    int delta = 0;
    check_positions(g, &c, pos, &delta);

    golden_trace_checker ex = { .n = 0 };
    if (exact) {
        const float *li = golden_case_keep(&c, golden_load(dir, kase, "text_layer_inputs"));
        const float *lo = golden_case_keep(&c, golden_load(dir, kase, "text_layer_outputs"));
        for (int l = 0; l < NL; l++) {
            golden_expect_trace(&ex, "text.layer_input", l, li + (size_t)l * c.n * H, c.n, H);
            golden_expect_trace(&ex, "text.layer_output", l, lo + (size_t)l * c.n * H, c.n, H);
        }
        golden_expect_trace(&ex, "text.final_norm", 0, golden_case_keep(&c, golden_load(dir, kase, "text_final_norm")),
                            c.n, H);
        if (hooks && hooks->expect_text_traces) hooks->expect_text_traces(hooks->ctx, g, &c, &ex);
    }
    model_kv *kv = NULL;
    char err[512] = "";
    if (model_kv_create(g->m, c.n + 16, &kv, err, sizeof err)) fail_msg("%s", err);
    int32_t *slots = malloc(sizeof(int32_t) * (size_t)c.n), *rows = malloc(sizeof(int32_t) * (size_t)c.n);
    float *logits = malloc(sizeof(float) * (size_t)c.n * V);
    assert_non_null(slots);
    assert_non_null(rows);
    assert_non_null(logits);
    for (int i = 0; i < c.n; i++) slots[i] = rows[i] = i;
    model_batch b = { .n = c.n, .ids = c.ids, .pos = pos, .slots = slots, .visual = c.visual,
                      .n_logits = c.n, .logit_rows = rows, .logits = logits };
    model_set_trace(g->m, golden_trace_record, &ex);
    int rc = model_forward(g->m, kv, &b, err, sizeof err);
    model_set_trace(g->m, NULL, NULL);
    if (rc) fail_msg("forward %s: %s", kase, err);
    golden_check_traces(&ex, tol->f32);
    if (hooks && hooks->after_prompt_forward) hooks->after_prompt_forward(hooks->ctx, g, &c);

    const float *last = logits + (size_t)(c.n - 1) * V;
    npy_array *ll = golden_load(dir, kase, "logits_last");
    golden_expect_close("logits_last", last, npy_f32(ll), (size_t)V, exact ? tol->f32 : tol->bf16);
    npy_free(ll);
    if (exact) check_top5_all_positions(g, &c, logits, V, tol->top5_abs);

    float *lg = malloc(sizeof(float) * (size_t)V);
    assert_non_null(lg);
    memcpy(lg, last, sizeof(float) * V);
    check_greedy_8(g, &c, kv, lg, V, c.n + delta, tol->f32);
    free(lg);
    free(logits);
    free(slots);
    free(rows);
    free(pos);
    model_kv_destroy(kv);
    case_free(&c);
}
