/* test_golden_dense.c — the dense Qwen3-VL forward against the upstream Hugging Face
 * reference (tests/data/golden/qwen3vl-dense-tiny): token ids, pixel values, grids, MRoPE
 * positions and rope deltas exact; every vision and text intermediate, the final norm and the
 * logits within 1e-4 relative (max abs error / max abs reference) in f32 compute; 8 greedy ids
 * identical (per-step logits for img); in bf16 compute the same greedy ids and logits within
 * 3e-2 relative. Also: frame pairs encoded one at a time equal the whole-video encode, and bad
 * input gives clear errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/chat.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "tests/support/npy.h"

#define SET_DIR "tests/data/golden/qwen3vl-dense-tiny"
#define TOL_F32 1e-4
#define TOL_BF16 3e-2

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                    */

static npy_array *load_opt(const char *kase, const char *what) {
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/%s%s%s.npy", SET_DIR, kase, kase[0] ? "_" : "", what);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fclose(f);
    npy_array *a = npy_load(path, err, sizeof err);
    if (!a) fail_msg("%s", err);
    return a;
}

static npy_array *load(const char *kase, const char *what) {
    npy_array *a = load_opt(kase, what);
    if (!a) fail_msg("missing golden file %s/%s_%s.npy", SET_DIR, kase, what);
    return a;
}

static double rel_err(const float *got, const float *ref, size_t n) {
    double mx = 0.0, ma = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (!(d <= mx)) mx = d; /* NaN propagates as a failure */
        if (fabs(ref[i]) > ma) ma = fabs(ref[i]);
    }
    return ma > 0 ? mx / ma : mx;
}

static void expect_close(const char *what, const float *got, const float *ref, size_t n, double tol) {
    double r = rel_err(got, ref, n);
    if (!(r <= tol)) fail_msg("%s: relative error %.3g exceeds %.3g", what, r, tol);
}

/* Trace checker: every expected (name, index) must be produced once, within tolerance. */
typedef struct want_item {
    const char *name;
    int index;
    const float *ref;
    int rows, cols;
    int seen;
    double err;
} want_item;

typedef struct want_list {
    want_item item[64];
    int n;
} want_list;

static void want_add(want_list *l, const char *name, int index, const float *ref, int rows, int cols) {
    assert_true(l->n < 64);
    l->item[l->n++] = (want_item){ name, index, ref, rows, cols, 0, 0.0 };
}

static void trace_cb(void *ctx, const char *name, int index, const float *data, int rows, int cols) {
    want_list *l = ctx;
    for (int i = 0; i < l->n; i++) {
        want_item *e = &l->item[i];
        if (strcmp(e->name, name) || e->index != index) continue;
        e->seen++;
        if (rows != e->rows || cols != e->cols) {
            e->err = INFINITY;
            continue;
        }
        e->err = rel_err(data, e->ref, (size_t)rows * cols);
    }
}

static void want_check(const want_list *l, double tol) {
    for (int i = 0; i < l->n; i++) {
        const want_item *e = &l->item[i];
        if (e->seen != 1) fail_msg("trace %s[%d] produced %d times (expected once)", e->name, e->index, e->seen);
        if (!(e->err <= tol))
            fail_msg("%s[%d] ([%d x %d]): relative error %.3g exceeds %.3g", e->name, e->index,
                     e->rows, e->cols, e->err, tol);
    }
}

typedef struct fixture {
    checkpoint *ck;
    model *m;
    tokenizer *tok;
    model_compute compute;
} fixture;

static fixture g_f32, g_bf16;

static int setup_model(fixture *f, model_compute c) {
    char err[512];
    if (checkpoint_open(SET_DIR "/model", &f->ck, err, sizeof err)) {
        fprintf(stderr, "checkpoint_open: %s\n", err);
        return -1;
    }
    model_options o = { .compute = c, .num_threads = 2 };
    if (model_create(f->ck, &o, &f->m, err, sizeof err)) {
        fprintf(stderr, "model_create: %s\n", err);
        return -1;
    }
    if (tok_load(SET_DIR "/model/tokenizer.json", &f->tok, err, sizeof err)) {
        fprintf(stderr, "tok_load: %s\n", err);
        return -1;
    }
    f->compute = c;
    return 0;
}

static void teardown_model(fixture *f) {
    if (f->tok) tok_free(f->tok);
    model_destroy(f->m);
    if (f->ck) checkpoint_close(f->ck);
    memset(f, 0, sizeof *f);
}

static int setup(void **state) {
    (void)state;
    if (setup_model(&g_f32, MODEL_COMPUTE_F32) || setup_model(&g_bf16, MODEL_COMPUTE_BF16)) return -1;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    teardown_model(&g_f32);
    teardown_model(&g_bf16);
    return 0;
}

/* Patchify one modality's resized frames and check pixel values and grid exactly. */
static float *patchify_case(const model_config *cfg, const char *kase, const char *mod,
                            model_grid *grid, long *rows) {
    char what[64];
    snprintf(what, sizeof what, "%s_resized_thwc_u8", mod);
    npy_array *u8 = load(kase, what);
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
    npy_array *g = load(kase, what);
    assert_int_equal(grid->t, npy_i64(g)[0]);
    assert_int_equal(grid->h, npy_i64(g)[1]);
    assert_int_equal(grid->w, npy_i64(g)[2]);
    npy_free(g);
    npy_array *pv = load(kase, strcmp(mod, "image") == 0 ? "pixel_values" : "pixel_values_videos");
    assert_int_equal(pv->shape[0], *rows);
    assert_int_equal(pv->shape[1], model_patch_dim(cfg));
    size_t bad = 0;
    for (size_t i = 0; i < pv->count; i++) bad += out[i] != npy_f32(pv)[i];
    if (bad) fail_msg("%s %s pixel values: %zu of %zu differ from the reference", kase, mod, bad, pv->count);
    npy_free(pv);
    return out;
}

typedef struct case_data {
    int n;
    int32_t *ids;
    model_grid img[4], vid[4];
    int n_img, n_vid;
    model_visual_rows visual;
    float *embeds, *deepstack;
    npy_array *keep[48];
    int n_keep;
} case_data;

static const float *keep(case_data *c, npy_array *a) {
    assert_true(c->n_keep < 48);
    c->keep[c->n_keep++] = a;
    return npy_f32(a);
}

static void case_free(case_data *c) {
    free(c->ids);
    free(c->embeds);
    free(c->deepstack);
    for (int i = 0; i < c->n_keep; i++) npy_free(c->keep[i]);
    memset(c, 0, sizeof *c);
}

/* Vision for every modality of the case (image first, as in the prompts), with traces checked
 * in f32; visual rows concatenated in prompt order. */
static void run_vision(fixture *f, const char *kase, case_data *c, double tol) {
    const model_config *cfg = model_get_config(f->m);
    const char *mods[2] = { "image", "video" };
    model_vision_out vo[2];
    int nvo = 0;
    for (int k = 0; k < 2; k++) {
        char what[64];
        snprintf(what, sizeof what, "%s_resized_thwc_u8", mods[k]);
        npy_array *probe = load_opt(kase, what);
        if (!probe) continue;
        npy_free(probe);
        model_grid g;
        long rows;
        float *pix = patchify_case(cfg, kase, mods[k], &g, &rows);
        want_list ex = { .n = 0 };
        const int N = (int)rows, T = (int)model_grid_tokens(cfg, &g);
        const int D = cfg->vision.hidden_size, OUT = cfg->vision.out_hidden_size;
        snprintf(what, sizeof what, "%s_vision_patch_embed", mods[k]);
        want_add(&ex, "vision.patch_embed", 0, keep(c, load(kase, what)), N, D);
        snprintf(what, sizeof what, "%s_vision_block_outputs", mods[k]);
        const float *blocks = keep(c, load(kase, what));
        for (int b = 0; b < cfg->vision.depth; b++)
            want_add(&ex, "vision.block", b, blocks + (size_t)b * N * D, N, D);
        for (int d = 0; d < cfg->vision.num_deepstack; d++) {
            snprintf(what, sizeof what, "%s_vision_deepstack_%d", mods[k], d);
            want_add(&ex, "vision.deepstack", d, keep(c, load(kase, what)), T, OUT);
        }
        snprintf(what, sizeof what, "%s_vision_pooler_output", mods[k]);
        const float *pooler = keep(c, load(kase, what));
        want_add(&ex, "vision.merger", 0, pooler, T, OUT);
        char err[512] = "";
        model_set_trace(f->m, trace_cb, &ex);
        int rc = model_vision_encode(f->m, pix, (size_t)rows, &g, 1, &vo[nvo], err, sizeof err);
        model_set_trace(f->m, NULL, NULL);
        if (rc) fail_msg("vision_encode %s %s: %s", kase, mods[k], err);
        want_check(&ex, tol);

        if (g.t > 1) {
            /* the daemon's way: each frame pair encoded on its own */
            const long per = (long)g.h * g.w, tper = T / g.t;
            for (int t = 0; t < g.t; t++) {
                model_grid g1 = { 1, g.h, g.w };
                model_vision_out one;
                if (model_vision_encode(f->m, pix + (size_t)t * per * model_patch_dim(cfg), (size_t)per,
                                        &g1, 1, &one, err, sizeof err))
                    fail_msg("vision_encode pair %d: %s", t, err);
                expect_close("pair-by-pair merger", one.embeds, pooler + (size_t)t * tper * OUT,
                             (size_t)tper * OUT, tol);
                for (int d = 0; d < one.num_deepstack; d++)
                    expect_close("pair-by-pair deepstack", one.deepstack + (size_t)d * tper * OUT,
                                 vo[nvo].deepstack + (size_t)d * T * OUT + (size_t)t * tper * OUT,
                                 (size_t)tper * OUT, 1e-5);
                model_vision_out_free(&one);
            }
        }
        if (k == 0) c->img[c->n_img++] = g;
        else c->vid[c->n_vid++] = g;
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
static void load_ids(fixture *f, const char *kase, case_data *c) {
    npy_array *ids = load(kase, "input_ids");
    c->n = (int)ids->shape[1];
    c->ids = malloc(sizeof(int32_t) * (size_t)c->n);
    assert_non_null(c->ids);
    for (int i = 0; i < c->n; i++) c->ids[i] = (int32_t)npy_i64(ids)[i];
    npy_free(ids);

    char path[512];
    snprintf(path, sizeof path, "%s/%s_prompt_expanded.txt", SET_DIR, kase);
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    char *text = malloc(1 << 20);
    assert_non_null(text);
    size_t len = fread(text, 1, (1 << 20) - 1, fp);
    fclose(fp);
    text[len] = '\0';
    long n = tok_encode(f->tok, text, len, NULL, 0);
    if (n != c->n) fail_msg("%s: tokenizer gives %ld ids for the expanded prompt, reference %d", kase, n, c->n);
    int32_t *got = malloc(sizeof(int32_t) * (size_t)n);
    assert_non_null(got);
    assert_int_equal(tok_encode(f->tok, text, len, got, (size_t)n), n);
    for (int i = 0; i < c->n; i++)
        if (got[i] != c->ids[i]) fail_msg("%s: token %d is %d, reference %d", kase, i, got[i], c->ids[i]);
    free(got);
    free(text);
}

/* The chat renderer builds the same prompt ids from the parts (image tokens, video frame pairs
 * with their timestamps, the question), as upstream's processor expands them. */
static void check_chat(fixture *f, const char *kase, const case_data *c) {
    const model_config *cfg = model_get_config(f->m);
    chat_format fmt;
    char err[512] = "";
    if (chat_format_init(&fmt, f->tok, err, sizeof err)) fail_msg("chat_format_init: %s", err);
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

static void check_positions(const model_config *cfg, const char *kase, case_data *c, model_pos *pos,
                            int *delta) {
    char err[512] = "";
    if (model_rope_index(cfg, c->ids, c->n, c->img, c->n_img, c->vid, c->n_vid, pos, delta, err, sizeof err))
        fail_msg("rope_index %s: %s", kase, err);
    npy_array *p = load(kase, "position_ids");
    const int64_t *r = npy_i64(p);
    for (int i = 0; i < c->n; i++)
        if (pos[i].t != r[i] || pos[i].h != r[c->n + i] || pos[i].w != r[2 * c->n + i])
            fail_msg("%s position %d: (%d,%d,%d), reference (%lld,%lld,%lld)", kase, i, pos[i].t,
                     pos[i].h, pos[i].w, (long long)r[i], (long long)r[c->n + i], (long long)r[2 * c->n + i]);
    npy_free(p);
    npy_array *d = load(kase, "rope_deltas");
    assert_int_equal(*delta, npy_i64(d)[0]);
    npy_free(d);
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* The whole case: ids, pixels, vision, positions, text forward (all logits), greedy decode. */
static void run_case(fixture *f, const char *kase) {
    const bool exact = f->compute == MODEL_COMPUTE_F32;
    const double tol = exact ? TOL_F32 : TOL_BF16;
    const model_config *cfg = model_get_config(f->m);
    const int V = cfg->text.vocab_size, H = cfg->text.hidden_size, NL = cfg->text.num_hidden_layers;
    case_data c;
    memset(&c, 0, sizeof c);
    load_ids(f, kase, &c);
    run_vision(f, kase, &c, exact ? TOL_F32 : 1.0 /* bf16 vision: judged by the logits */);
    check_chat(f, kase, &c);
    model_pos *pos = malloc(sizeof(model_pos) * (size_t)c.n);
    assert_non_null(pos);
    int delta = 0;
    check_positions(cfg, kase, &c, pos, &delta);

    want_list ex = { .n = 0 };
    if (exact) {
        const float *li = keep(&c, load(kase, "text_layer_inputs"));
        const float *lo = keep(&c, load(kase, "text_layer_outputs"));
        for (int l = 0; l < NL; l++) {
            want_add(&ex, "text.layer_input", l, li + (size_t)l * c.n * H, c.n, H);
            want_add(&ex, "text.layer_output", l, lo + (size_t)l * c.n * H, c.n, H);
        }
        want_add(&ex, "text.final_norm", 0, keep(&c, load(kase, "text_final_norm")), c.n, H);
    }
    model_kv *kv = NULL;
    char err[512] = "";
    if (model_kv_create(f->m, c.n + 16, &kv, err, sizeof err)) fail_msg("%s", err);
    int32_t *slots = malloc(sizeof(int32_t) * (size_t)c.n), *rows = malloc(sizeof(int32_t) * (size_t)c.n);
    float *logits = malloc(sizeof(float) * (size_t)c.n * V);
    assert_non_null(slots);
    assert_non_null(rows);
    assert_non_null(logits);
    for (int i = 0; i < c.n; i++) slots[i] = rows[i] = i;
    model_batch b = { .n = c.n, .ids = c.ids, .pos = pos, .slots = slots, .visual = c.visual,
                      .n_logits = c.n, .logit_rows = rows, .logits = logits };
    model_set_trace(f->m, trace_cb, &ex);
    int rc = model_forward(f->m, kv, &b, err, sizeof err);
    model_set_trace(f->m, NULL, NULL);
    if (rc) fail_msg("forward %s: %s", kase, err);
    want_check(&ex, TOL_F32);

    const float *last = logits + (size_t)(c.n - 1) * V;
    npy_array *ll = load(kase, "logits_last");
    expect_close("logits_last", last, npy_f32(ll), (size_t)V, tol);
    npy_free(ll);
    if (exact) {
        /* top-5 at every prompt position, where the reference values are clearly apart */
        npy_array *ti = load(kase, "logits_top5_ids_all_pos"), *tv = load(kase, "logits_top5_vals_all_pos");
        int compared = 0;
        for (int i = 0; i < c.n; i++) {
            const float *lg = logits + (size_t)i * V;
            for (int k = 0; k < 5; k++) {
                const float rv = npy_f32(tv)[i * 5 + k];
                const int64_t rid = npy_i64(ti)[i * 5 + k];
                if (fabsf(lg[rid] - rv) > 1e-4f)
                    fail_msg("%s position %d: logit of top-%d id %lld is %.6f, reference %.6f", kase, i,
                             k, (long long)rid, lg[rid], rv);
                bool apart = (k == 0 || npy_f32(tv)[i * 5 + k - 1] - rv > 1e-4f) &&
                             (k == 4 || rv - npy_f32(tv)[i * 5 + k + 1] > 1e-4f);
                if (k == 0 && apart && argmax(lg, V) != rid)
                    fail_msg("%s position %d: argmax %d, reference %lld", kase, i, argmax(lg, V), (long long)rid);
                compared += apart;
            }
        }
        assert_true(compared > c.n);
        npy_free(ti);
        npy_free(tv);
    }

    /* 8 greedy tokens, KV-cache path: manual loop for img (per-step logits), generate otherwise */
    npy_array *gi = load(kase, "greedy_8_ids");
    npy_array *steps = exact ? load_opt(kase, "greedy_8_step_logits") : NULL;
    float *lg = malloc(sizeof(float) * (size_t)V);
    assert_non_null(lg);
    memcpy(lg, last, sizeof(float) * V);
    int next = c.n + delta;
    if (steps) {
        for (int s = 0; s < 8; s++) {
            expect_close("greedy step logits", lg, npy_f32(steps) + (size_t)s * V, (size_t)V, TOL_F32);
            int32_t id = argmax(lg, V);
            if (id != npy_i64(gi)[s]) fail_msg("%s greedy step %d: %d, reference %lld", kase, s, id, (long long)npy_i64(gi)[s]);
            model_pos p;
            model_pos_text(&next, 1, &p);
            if (model_forward_append(f->m, kv, &id, &p, 1, NULL, lg, err, sizeof err)) fail_msg("%s", err);
        }
        npy_free(steps);
    } else {
        model_generate_params gp = { .sampling = model_sampling_default(), .max_tokens = 8 };
        int32_t gslots[8];
        for (int s = 0; s < 8; s++) gslots[s] = c.n + s;
        model_generate_result res;
        /* tokenizer NULL: the reference generated with eos_token_id=None */
        if (model_generate(f->m, kv, NULL, &gp, c.ids, (size_t)c.n, lg, gslots, 8, &next, &res, err, sizeof err))
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
    free(lg);
    free(logits);
    free(slots);
    free(rows);
    free(pos);
    model_kv_destroy(kv);
    case_free(&c);
}

static void test_img_f32(void **s) { (void)s; run_case(&g_f32, "img"); }
static void test_vid_f32(void **s) { (void)s; run_case(&g_f32, "vid"); }
static void test_mix_f32(void **s) { (void)s; run_case(&g_f32, "mix"); }
static void test_img_bf16(void **s) { (void)s; run_case(&g_bf16, "img"); }
static void test_vid_bf16(void **s) { (void)s; run_case(&g_bf16, "vid"); }
static void test_mix_bf16(void **s) { (void)s; run_case(&g_bf16, "mix"); }

/* ------------------------------------------------------------------------------------------ */
/* Bad input                                                                                  */

static void expect_err(int rc, const char *err, const char *needle) {
    assert_true(rc < 0);
    if (!strstr(err, needle)) fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
}

static void test_bad_input(void **state) {
    (void)state;
    model *m = g_f32.m;
    const model_config *cfg = model_get_config(m);
    char err[512];
    const int PD = model_patch_dim(cfg);
    float *rows = calloc((size_t)64 * PD, sizeof(float));
    assert_non_null(rows);
    model_vision_out vo;

    /* wrong patch row count for the grid */
    model_grid g = { 1, 4, 4 };
    err[0] = '\0';
    expect_err(model_vision_encode(m, rows, 15, &g, 1, &vo, err, sizeof err), err, "16 patches");
    assert_null(vo.embeds);
    /* grid not divisible by the merge size */
    model_grid g3 = { 1, 3, 4 };
    expect_err(model_vision_encode(m, rows, 12, &g3, 1, &vo, err, sizeof err), err, "spatial_merge_size");
    model_grid g0 = { 0, 4, 4 };
    expect_err(model_vision_encode(m, rows, 0, &g0, 1, &vo, err, sizeof err), err, "grid 0");
    /* patchify: odd frame count, size not a multiple of 32 */
    uint8_t *px = calloc(64 * 64 * 3, 1);
    assert_non_null(px);
    const uint8_t *fr[3] = { px, px, px };
    model_grid pg;
    expect_err((int)model_patchify(cfg, fr, 3, 64, 64, 0, rows, 64, &pg, err, sizeof err), err, "multiple");
    expect_err((int)model_patchify(cfg, fr, 2, 48, 64, 0, rows, 64, &pg, err, sizeof err), err, "48");
    expect_err((int)model_patchify(cfg, fr, 2, 64, 64, 0, rows, 3, &pg, err, sizeof err), err, "needs 16");
    assert_int_equal(model_patchify(cfg, fr, 2, 64, 64, 0, rows, 64, &pg, err, sizeof err), 16);
    free(px);

    /* prompt referencing more pads than features */
    model_kv *kv = NULL;
    assert_int_equal(model_kv_create(m, 32, &kv, err, sizeof err), 0);
    int32_t ids[6] = { 151644, cfg->vision_start_token_id, cfg->image_token_id, cfg->image_token_id,
                       cfg->image_token_id, cfg->vision_end_token_id };
    model_pos pos[6];
    int next = 0;
    model_pos_text(&next, 6, pos);
    int32_t slots[6] = { 0, 1, 2, 3, 4, 5 };
    float feat[2 * 64 * 3] = { 0 };
    model_batch b = { .n = 6, .ids = ids, .pos = pos, .slots = slots,
                      .visual = { feat, feat, 2 * 64, 2 } };
    expect_err(model_forward(m, kv, &b, err, sizeof err), err, "3 image/video pad tokens but 2");
    assert_int_equal(model_kv_count(kv, MODEL_SLOT_FREE), 32);
    /* positions for such a prompt: pads do not match the grid */
    model_grid ig = { 1, 4, 4 };
    expect_err(model_rope_index(cfg, ids, 6, &ig, 1, NULL, 0, pos, NULL, err, sizeof err), err, "4 merged");
    /* slot out of range, duplicated slot, visible slot, bad token id */
    b.visual = (model_visual_rows){ feat, feat, 3 * 64, 3 };
    slots[5] = 32;
    expect_err(model_forward(m, kv, &b, err, sizeof err), err, "slot 32");
    slots[5] = -1;
    expect_err(model_forward(m, kv, &b, err, sizeof err), err, "slot -1");
    slots[5] = 4;
    expect_err(model_forward(m, kv, &b, err, sizeof err), err, "twice");
    slots[5] = 5;
    assert_int_equal(model_forward(m, kv, &b, err, sizeof err), 0);
    expect_err(model_forward(m, kv, &b, err, sizeof err), err, "visible");
    ids[0] = cfg->text.vocab_size;
    slots[0] = 10;
    b.n = 1;
    b.visual = (model_visual_rows){ 0 };
    expect_err(model_forward(m, kv, &b, err, sizeof err), err, "vocabulary");
    /* range operations outside the cache */
    expect_err(model_kv_hide(kv, 30, 3, err, sizeof err), err, "outside");
    expect_err(model_kv_shift(m, kv, -1, 2, 5, err, sizeof err), err, "outside");
    /* a cache of the other compute mode */
    model_kv *kv16 = NULL;
    assert_int_equal(model_kv_create(g_bf16.m, 8, &kv16, err, sizeof err), 0);
    ids[0] = 100;
    slots[0] = 0;
    expect_err(model_forward(m, kv16, &b, err, sizeof err), err, "different model");
    model_kv_destroy(kv16);
    model_kv_destroy(kv);
    free(rows);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_img_f32),  cmocka_unit_test(test_vid_f32),  cmocka_unit_test(test_mix_f32),
        cmocka_unit_test(test_img_bf16), cmocka_unit_test(test_vid_bf16), cmocka_unit_test(test_mix_bf16),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
