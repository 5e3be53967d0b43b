/* test_incremental.c — the KV cache and the batch forward are consistent with themselves:
 * the logits of a sequence (the golden img prompt with its 70 visual tokens, on the dense tiny
 * checkpoint, f32) prefilled in one chunk equal, within 1e-5 relative, those from prefilling it
 * in uneven chunks, from decoding it token by token after truncating and re-extending the
 * cache, from a scattered slot layout with unrelated hidden slots, from a cache whose keys were
 * re-rotated by a position shift, and from time-window / fork use of hide, show and release.
 * Also the linear kernels (oneDNN bf16 matmul on the packed layout and the GEMV kernel) against
 * a plain loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/dnnl_ops.h"
#include "model/kernels.h"
#include "model/model.h"
#include "tests/support/npy.h"

#define SET_DIR "tests/data/golden/qwen3vl-dense-tiny"
#define TOL 1e-5

typedef struct seq {
    checkpoint *ck;
    model *m;
    int n, V, H;
    int32_t *ids;
    model_pos *pos;
    int delta;
    model_vision_out vo;
    int *pads_before;          /* visual rows consumed before token i */
    float *ref;                /* [n, V] logits of the one-chunk prefill */
} seq;

static seq g;

static npy_array *load(const char *name) {
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/%s", SET_DIR, name);
    npy_array *a = npy_load(path, err, sizeof err);
    if (!a) fprintf(stderr, "%s\n", err);
    return a;
}

static double rel_err(const float *got, const float *ref, size_t n) {
    double mx = 0.0, ma = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (!(d <= mx)) mx = d;
        if (fabs(ref[i]) > ma) ma = fabs(ref[i]);
    }
    return ma > 0 ? mx / ma : mx;
}

static void expect_rows(const char *what, const float *got, int first_row, int rows) {
    for (int r = 0; r < rows; r++) {
        double e = rel_err(got + (size_t)r * g.V, g.ref + (size_t)(first_row + r) * g.V, (size_t)g.V);
        if (!(e <= TOL)) fail_msg("%s: logits of token %d differ by %.3g relative", what, first_row + r, e);
    }
}

static bool is_pad(const model_config *cfg, int32_t id) {
    return id == cfg->image_token_id || id == cfg->video_token_id;
}

/* Forward tokens [a, b) of the sequence to the given slots with positions shifted by dpos;
 * logits of every row into out (may be NULL). */
static int fwd_range(model_kv *kv, int a, int b, const int32_t *slots, int dpos, float *out, char *err,
                     size_t errlen) {
    const model_config *cfg = model_get_config(g.m);
    const int n = b - a;
    model_pos *pos = malloc(sizeof(model_pos) * (size_t)n);
    int32_t *rows = malloc(sizeof(int32_t) * (size_t)n);
    assert_non_null(pos);
    assert_non_null(rows);
    int pads = 0;
    for (int i = 0; i < n; i++) {
        pos[i] = (model_pos){ g.pos[a + i].t + dpos, g.pos[a + i].h + dpos, g.pos[a + i].w + dpos };
        rows[i] = i;
        pads += is_pad(cfg, g.ids[a + i]);
    }
    const int r0 = g.pads_before[a], H = g.H;
    model_batch bt = { .n = n, .ids = g.ids + a, .pos = pos, .slots = slots,
                       .visual = { g.vo.embeds + (size_t)r0 * H, g.vo.deepstack + (size_t)r0 * H,
                                   (size_t)g.vo.n_tokens * H, pads },
                       .n_logits = out ? n : 0, .logit_rows = rows, .logits = out };
    int rc = model_forward(g.m, kv, &bt, err, errlen);
    free(pos);
    free(rows);
    return rc;
}

static int32_t *iota(int first, int n) {
    int32_t *s = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    assert_non_null(s);
    for (int i = 0; i < n; i++) s[i] = first + i;
    return s;
}

static int setup(void **state) {
    (void)state;
    char err[512];
    memset(&g, 0, sizeof g);
    if (checkpoint_open(SET_DIR "/model", &g.ck, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    model_options o = { .compute = MODEL_COMPUTE_F32, .num_threads = 2 };
    if (model_create(g.ck, &o, &g.m, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    const model_config *cfg = model_get_config(g.m);
    g.V = cfg->text.vocab_size;
    g.H = cfg->text.hidden_size;
    npy_array *ids = load("img_input_ids.npy"), *u8 = load("img_image_resized_thwc_u8.npy");
    if (!ids || !u8) return -1;
    g.n = (int)ids->shape[1];
    g.ids = malloc(sizeof(int32_t) * (size_t)g.n);
    g.pos = malloc(sizeof(model_pos) * (size_t)g.n);
    g.pads_before = malloc(sizeof(int) * (size_t)(g.n + 1));
    g.ref = malloc(sizeof(float) * (size_t)g.n * g.V);
    if (!g.ids || !g.pos || !g.pads_before || !g.ref) return -1;
    for (int i = 0; i < g.n; i++) g.ids[i] = (int32_t)npy_i64(ids)[i];
    npy_free(ids);
    const int Hh = (int)u8->shape[1], W = (int)u8->shape[2];
    const uint8_t *fr[2] = { npy_u8(u8), npy_u8(u8) + (size_t)Hh * W * 3 };
    const size_t cap = (size_t)Hh * W * 6 / model_patch_dim(cfg);
    float *px = malloc(sizeof(float) * cap * model_patch_dim(cfg));
    model_grid grid;
    long rows = model_patchify(cfg, fr, 2, Hh, W, 0, px, cap, &grid, err, sizeof err);
    npy_free(u8);
    if (rows < 0 || model_vision_encode(g.m, px, (size_t)rows, &grid, 1, &g.vo, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        free(px);
        return -1;
    }
    free(px);
    if (model_rope_index(cfg, g.ids, g.n, &grid, 1, NULL, 0, g.pos, &g.delta, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    g.pads_before[0] = 0;
    for (int i = 0; i < g.n; i++) g.pads_before[i + 1] = g.pads_before[i] + is_pad(cfg, g.ids[i]);
    /* the reference: one chunk into slots 0..n-1 */
    model_kv *kv;
    if (model_kv_create(g.m, g.n, &kv, err, sizeof err)) return -1;
    int32_t *slots = iota(0, g.n);
    int rc = fwd_range(kv, 0, g.n, slots, 0, g.ref, err, sizeof err);
    free(slots);
    model_kv_destroy(kv);
    if (rc) fprintf(stderr, "%s\n", err);
    return rc;
}

static int teardown(void **state) {
    (void)state;
    model_vision_out_free(&g.vo);
    free(g.ids);
    free(g.pos);
    free(g.pads_before);
    free(g.ref);
    model_destroy(g.m);
    checkpoint_close(g.ck);
    return 0;
}

/* Uneven chunks, split inside the visual block: sizes 5, 3, 17, 1, 30, rest (both the
 * slot-attention path for small chunks and the matmul path for large ones). */
static void test_chunks(void **state) {
    (void)state;
    char err[512];
    model_kv *kv;
    assert_int_equal(model_kv_create(g.m, g.n, &kv, err, sizeof err), 0);
    const int sizes[] = { 5, 3, 17, 1, 30, 1000 };
    float *out = malloc(sizeof(float) * (size_t)g.n * g.V);
    assert_non_null(out);
    for (int k = 0, a = 0; a < g.n; k++) {
        int b = a + sizes[k] < g.n ? a + sizes[k] : g.n;
        int32_t *slots = iota(a, b - a);
        if (fwd_range(kv, a, b, slots, 0, out, err, sizeof err)) fail_msg("%s", err);
        free(slots);
        expect_rows("chunked prefill", out, a, b - a);
        a = b;
    }
    assert_int_equal(model_kv_seq_len(kv), g.n);
    free(out);
    model_kv_destroy(kv);
}

/* Prefill 40, truncate to 20, then decode tokens 20..n-1 one at a time. */
static void test_truncate_and_decode(void **state) {
    (void)state;
    char err[512];
    model_kv *kv;
    assert_int_equal(model_kv_create(g.m, g.n, &kv, err, sizeof err), 0);
    int32_t *slots = iota(0, 40);
    assert_int_equal(fwd_range(kv, 0, 40, slots, 0, NULL, err, sizeof err), 0);
    free(slots);
    assert_int_equal(model_kv_seq_len(kv), 40);
    assert_int_equal(model_kv_truncate(kv, 20), 0);
    assert_int_equal(model_kv_seq_len(kv), 20);
    assert_int_equal(model_kv_count(kv, MODEL_SLOT_VISIBLE), 20);
    float *out = malloc(sizeof(float) * (size_t)g.V);
    assert_non_null(out);
    for (int i = 20; i < g.n; i++) {
        int32_t s = i;
        if (fwd_range(kv, i, i + 1, &s, 0, out, err, sizeof err)) fail_msg("token %d: %s", i, err);
        expect_rows("token-by-token decode", out, i, 1);
    }
    free(out);
    model_kv_destroy(kv);
}

/* The same tokens in scattered, non-monotonic slots of a larger cache, with unrelated junk
 * written first and then hidden: attention sees only visibility, never slot order. */
static void test_scattered_slots(void **state) {
    (void)state;
    char err[512];
    const int cap = 331;
    model_kv *kv;
    assert_int_equal(model_kv_create(g.m, cap, &kv, err, sizeof err), 0);
    int32_t *slot_of = malloc(sizeof(int32_t) * (size_t)g.n);
    assert_non_null(slot_of);
    for (int i = 0; i < g.n; i++) slot_of[i] = (int32_t)(((long)(g.n - 1 - i) * 97 + 13) % cap);
    /* junk: text tokens in slots not used by the sequence, visible while written, then hidden */
    int32_t junk_ids[40], junk_slots[40];
    model_pos junk_pos[40];
    int nj = 0;
    for (int s = 0; s < cap && nj < 40; s++) {
        bool used = false;
        for (int i = 0; i < g.n; i++) used |= slot_of[i] == s;
        if (used || s % 3) continue;
        junk_ids[nj] = 1000 + nj * 7;
        junk_slots[nj] = s;
        junk_pos[nj] = (model_pos){ nj, nj, nj };
        nj++;
    }
    model_batch jb = { .n = nj, .ids = junk_ids, .pos = junk_pos, .slots = junk_slots };
    assert_int_equal(model_forward(g.m, kv, &jb, err, sizeof err), 0);
    for (int j = 0; j < nj; j++) assert_int_equal(model_kv_hide(kv, junk_slots[j], 1, err, sizeof err), 0);
    assert_int_equal(model_kv_count(kv, MODEL_SLOT_HIDDEN), nj);
    float *out = malloc(sizeof(float) * (size_t)g.n * g.V);
    assert_non_null(out);
    const int cuts[] = { 0, 9, 50, g.n };
    for (int k = 0; k < 3; k++) {
        if (fwd_range(kv, cuts[k], cuts[k + 1], slot_of + cuts[k], 0, out, err, sizeof err)) fail_msg("%s", err);
        expect_rows("scattered slots", out, cuts[k], cuts[k + 1] - cuts[k]);
    }
    /* showing the junk again changes the result: the test can tell visibility apart */
    for (int j = 0; j < nj; j++) assert_int_equal(model_kv_show(kv, junk_slots[j], 1, err, sizeof err), 0);
    assert_int_equal(model_kv_release(kv, slot_of[g.n - 1], 1, err, sizeof err), 0);
    if (fwd_range(kv, g.n - 1, g.n, slot_of + g.n - 1, 0, out, err, sizeof err)) fail_msg("%s", err);
    assert_true(rel_err(out, g.ref + (size_t)(g.n - 1) * g.V, (size_t)g.V) > 1e-3);
    free(out);
    free(slot_of);
    model_kv_destroy(kv);
}

/* Prefill the first 50 tokens at positions p + d, shift their keys by -d, continue at p:
 * equal to the sequence written at p directly. Then shift everything by +d and continue at
 * p + d: attention is invariant to a common shift, so the logits agree again. */
static void test_rerotation(void **state) {
    (void)state;
    char err[512];
    const int d = 777;
    model_kv *kv;
    assert_int_equal(model_kv_create(g.m, g.n, &kv, err, sizeof err), 0);
    int32_t *slots = iota(0, g.n);
    assert_int_equal(fwd_range(kv, 0, 50, slots, d, NULL, err, sizeof err), 0);
    model_pos p;
    assert_int_equal(model_kv_slot_pos(kv, 10, &p), 0);
    assert_int_equal(p.h, g.pos[10].h + d);
    assert_int_equal(model_kv_shift(g.m, kv, 0, g.n, -d, err, sizeof err), 0);
    assert_int_equal(model_kv_slot_pos(kv, 10, &p), 0);
    assert_int_equal(p.h, g.pos[10].h);
    float *out = malloc(sizeof(float) * (size_t)g.n * g.V);
    assert_non_null(out);
    if (fwd_range(kv, 50, 70, slots + 50, 0, out, err, sizeof err)) fail_msg("%s", err);
    expect_rows("continued after shift", out, 50, 20);
    assert_int_equal(model_kv_shift(g.m, kv, 0, g.n, d, err, sizeof err), 0);
    if (fwd_range(kv, 70, g.n, slots + 70, d, out, err, sizeof err)) fail_msg("%s", err);
    expect_rows("continued after shifting back", out, 70, g.n - 70);
    /* without the shift the continuation differs: the check can fail */
    assert_int_equal(model_kv_truncate(kv, 50), 0);
    assert_int_equal(model_kv_shift(g.m, kv, 0, 50, -d, err, sizeof err), 0);
    if (fwd_range(kv, 50, 51, slots + 50, d, out, err, sizeof err)) fail_msg("%s", err);
    assert_true(rel_err(out, g.ref + (size_t)50 * g.V, (size_t)g.V) > 1e-3);
    free(out);
    free(slots);
    model_kv_destroy(kv);
}

/* Time window and fork: prefix | segment A | segment B in the cache with A hidden; a query sees
 * only prefix + B; after decoding, the answer slots are released and the cache is back at the
 * fork point. Compared with a fresh cache holding only prefix + B at the same positions. */
static void test_window_and_fork(void **state) {
    (void)state;
    char err[512];
    const int P = 30, A0 = 30, A1 = 60, B1 = g.n; /* A = [30,60) (visual), B = [60, n) */
    model_kv *kv, *ref;
    assert_int_equal(model_kv_create(g.m, 2 * g.n, &kv, err, sizeof err), 0);
    assert_int_equal(model_kv_create(g.m, 2 * g.n, &ref, err, sizeof err), 0);
    int32_t *slots = iota(0, g.n);
    /* A is hidden before B is written, so B's keys/values never saw A, exactly as in a cache
     * that only ever held prefix + B */
    assert_int_equal(fwd_range(kv, 0, A1, slots, 0, NULL, err, sizeof err), 0);
    assert_int_equal(model_kv_hide(kv, A0, A1 - A0, err, sizeof err), 0);
    assert_int_equal(fwd_range(kv, A1, B1, slots + A1, 0, NULL, err, sizeof err), 0);
    assert_int_equal(fwd_range(ref, 0, P, slots, 0, NULL, err, sizeof err), 0);
    assert_int_equal(fwd_range(ref, A1, B1, slots + A1, 0, NULL, err, sizeof err), 0);
    /* query: the last 6 prompt tokens again, at fresh positions after the sequence */
    int32_t q[6];
    model_pos qp[6];
    int next = g.n + g.delta;
    for (int i = 0; i < 6; i++) q[i] = g.ids[g.n - 6 + i];
    model_pos_text(&next, 6, qp);
    int32_t qs[6];
    for (int i = 0; i < 6; i++) qs[i] = g.n + 10 + 2 * i;
    const int32_t last = 5;
    float *a = malloc(sizeof(float) * (size_t)g.V), *b = malloc(sizeof(float) * (size_t)g.V);
    assert_non_null(a);
    assert_non_null(b);
    model_batch qa = { .n = 6, .ids = q, .pos = qp, .slots = qs, .n_logits = 1, .logit_rows = &last, .logits = a };
    model_batch qb = qa;
    qb.logits = b;
    assert_int_equal(model_forward(g.m, kv, &qa, err, sizeof err), 0);
    assert_int_equal(model_forward(g.m, ref, &qb, err, sizeof err), 0);
    if (!(rel_err(a, b, (size_t)g.V) <= TOL)) fail_msg("windowed query: %.3g", rel_err(a, b, (size_t)g.V));
    /* fork: decode 3 greedy answer tokens, release them and the query, query again */
    model_generate_params gp = { .sampling = model_sampling_default(), .max_tokens = 4 };
    int32_t ans_slots[4] = { g.n + 30, g.n + 31, g.n + 32, g.n + 33 };
    model_generate_result res;
    int anext = next;
    assert_int_equal(model_generate(g.m, kv, NULL, &gp, NULL, 0, a, ans_slots, 4, &anext, &res, err, sizeof err), 0);
    assert_int_equal(res.n_fed, 3);
    assert_int_equal(model_kv_count(kv, MODEL_SLOT_VISIBLE), (B1 - (A1 - A0)) + 6 + 3);
    model_generate_result_free(&res);
    assert_int_equal(model_kv_release(kv, g.n + 30, 4, err, sizeof err), 0);
    assert_int_equal(model_kv_release(kv, g.n + 10, 11, err, sizeof err), 0);
    assert_int_equal(model_forward(g.m, kv, &qa, err, sizeof err), 0);
    if (!(rel_err(a, b, (size_t)g.V) <= TOL)) fail_msg("query after fork: %.3g", rel_err(a, b, (size_t)g.V));
    /* showing A again must change the answer */
    assert_int_equal(model_kv_release(kv, g.n + 10, 11, err, sizeof err), 0);
    assert_int_equal(model_kv_show(kv, A0, A1 - A0, err, sizeof err), 0);
    assert_int_equal(model_forward(g.m, kv, &qa, err, sizeof err), 0);
    assert_true(rel_err(a, b, (size_t)g.V) > 1e-3);
    free(a);
    free(b);
    free(slots);
    model_kv_destroy(kv);
    model_kv_destroy(ref);
}

/* bf16 compute: chunked and token-by-token agree with the one-chunk prefill to bf16 accuracy. */
static void test_bf16_consistency(void **state) {
    (void)state;
    char err[512];
    model *m16;
    model_options o = { .compute = MODEL_COMPUTE_BF16, .num_threads = 2 };
    assert_int_equal(model_create(g.ck, &o, &m16, err, sizeof err), 0);
    model *m32 = g.m;
    g.m = m16;
    model_kv *kv1, *kv2;
    assert_int_equal(model_kv_create(m16, g.n, &kv1, err, sizeof err), 0);
    assert_int_equal(model_kv_create(m16, g.n, &kv2, err, sizeof err), 0);
    float *one = malloc(sizeof(float) * (size_t)g.n * g.V), *out = malloc(sizeof(float) * (size_t)g.V);
    assert_non_null(one);
    assert_non_null(out);
    int32_t *slots = iota(0, g.n);
    assert_int_equal(fwd_range(kv1, 0, g.n, slots, 0, one, err, sizeof err), 0);
    assert_int_equal(fwd_range(kv2, 0, 60, slots, 0, NULL, err, sizeof err), 0);
    for (int i = 60; i < g.n; i++) {
        assert_int_equal(fwd_range(kv2, i, i + 1, slots + i, 0, out, err, sizeof err), 0);
        double e = rel_err(out, one + (size_t)i * g.V, (size_t)g.V);
        if (!(e <= 3e-2)) fail_msg("bf16 token %d: %.3g", i, e);
        /* and close to the f32 reference */
        e = rel_err(out, g.ref + (size_t)i * g.V, (size_t)g.V);
        if (!(e <= 3e-2)) fail_msg("bf16 vs f32 token %d: %.3g", i, e);
    }
    g.m = m32;
    free(slots);
    free(one);
    free(out);
    model_kv_destroy(kv1);
    model_kv_destroy(kv2);
    model_destroy(m16);
}

/* The packed bf16 layout is what oneDNN expects (odd K and N, padding) and the GEMV kernel
 * (M <= 4) agrees with the matmul path and with a plain loop, with bias, accumulate and GELU. */
static void test_linear_kernels(void **state) {
    (void)state;
    char err[512];
    vl_dnnl *d;
    assert_int_equal(vl_dnnl_create(&d, err, sizeof err), 0);
    const int K = 77, N = 130, M = 9;
    uint16_t *w = malloc(2 * (size_t)K * N), *bias = malloc(2 * (size_t)N), *xb = malloc(2 * (size_t)M * K);
    float *x = malloc(sizeof(float) * (size_t)M * K), *y = malloc(sizeof(float) * (size_t)M * N);
    float *ref = malloc(sizeof(float) * (size_t)M * N);
    assert_true(w && bias && xb && x && y && ref);
    uint64_t s = 12345;
    for (int i = 0; i < K * N; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        w[i] = vl_f32_bf16((float)((double)(s >> 40) / (1 << 24) - 0.5));
    }
    for (int i = 0; i < N; i++) bias[i] = vl_f32_bf16(0.01f * (float)(i % 7));
    for (int i = 0; i < M * K; i++) x[i] = vl_bf16_f32(vl_f32_bf16(sinf(0.37f * (float)i)));
    vl_f32_to_bf16(x, xb, (size_t)M * K);
    for (int mode = 0; mode < 2; mode++) {
        vl_linear l;
        vl_wpart p = { w, ST_BF16, N, VL_OUT_IN, bias };
        assert_int_equal(vl_linear_init(&l, mode == 0, K, &p, 1, err, sizeof err), 0);
        for (int act = 0; act < 2; act++)
            for (int acc = 0; acc < 2; acc++)
                for (int rows = 1; rows <= M; rows += (rows < 5 ? 1 : 4)) {
                    for (int i = 0; i < rows * N; i++) y[i] = ref[i] = 0.5f;
                    for (int r = 0; r < rows; r++)
                        for (int n = 0; n < N; n++) {
                            double t = vl_bf16_f32(bias[n]);
                            for (int k = 0; k < K; k++)
                                t += (double)x[r * K + k] * vl_bf16_f32(w[(size_t)n * K + k]);
                            if (acc) t += ref[r * N + n];
                            if (act) t = 0.5 * t * (1.0 + erf(t / sqrt(2.0)));
                            ref[r * N + n] = (float)t;
                        }
                    const void *src = mode == 0 ? (const void *)xb : (const void *)x;
                    if (vl_linear_fwd(d, &l, rows, src, K, y, N, act ? VL_ACT_GELU_ERF : VL_ACT_NONE, acc,
                                      err, sizeof err))
                        fail_msg("%s", err);
                    double e = rel_err(y, ref, (size_t)rows * N);
                    if (!(e <= 1e-5))
                        fail_msg("linear %s M=%d act=%d acc=%d: %.3g", mode == 0 ? "bf16" : "f32", rows, act, acc, e);
                }
        vl_linear_free(&l);
    }
    free(w);
    free(bias);
    free(xb);
    free(x);
    free(y);
    free(ref);
    vl_dnnl_destroy(d);
}

/* The decode attention kernel (straight from cache slots; a register-blocked path for bf16
 * head_dim 128) against a plain double-precision softmax attention, on random K/V in a
 * scattered set of visible slots, for head_dim 128 and 64, 2 and 4 query heads per KV head,
 * bf16 and f32 caches. */
static void test_decode_attention_kernel(void **state) {
    (void)state;
    char err[256];
    const int cases[][4] = { { 128, 2, 1 }, { 128, 4, 1 }, { 64, 2, 1 }, { 128, 2, 0 }, { 128, 3, 1 } };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int hd = cases[c][0], G = cases[c][1], bf = cases[c][2], KVH = 2, cap = 300, n = 3;
        model *fm = calloc(1, sizeof *fm);
        assert_non_null(fm);
        fm->txt.layers = 1;
        fm->txt.kv_heads = KVH;
        fm->txt.heads = KVH * G;
        fm->txt.head_dim = hd;
        fm->compute = bf ? MODEL_COMPUTE_BF16 : MODEL_COMPUTE_F32;
        model_kv *kv;
        assert_int_equal(model_kv_create(fm, cap, &kv, err, sizeof err), 0);
        uint64_t r = 77 + c;
        for (int g = 0; g < KVH; g++)
            for (int sl = 0; sl < cap; sl++)
                for (int d = 0; d < hd; d++)
                    for (int w = 0; w < 2; w++) {
                        r = r * 6364136223846793005ULL + 1442695040888963407ULL;
                        float x = (float)((double)(r >> 40) / (1 << 24) - 0.5) * 2.0f;
                        void *base = vl_kv_at(kv, w ? kv->v[0] : kv->k[0], g, sl);
                        if (bf) ((uint16_t *)base)[d] = vl_f32_bf16(x);
                        else ((float *)base)[d] = x;
                    }
        int32_t vis[200];
        int nv = 0;
        for (int sl = 0; sl < cap && nv < 200; sl += 1 + (sl % 3)) vis[nv++] = sl;
        int32_t bslots[3] = { 299, 298, 297 };
        const int QN = KVH * G * hd;
        float *q = malloc(sizeof(float) * (size_t)n * QN), *out = malloc(sizeof(float) * (size_t)n * QN);
        assert_true(q && out);
        for (int i = 0; i < n * QN; i++) q[i] = sinf(0.7f * (float)i);
        const float scale = 1.0f / sqrtf((float)hd);
        assert_int_equal(vl_attention_slots(fm, kv, 0, q, QN, n, vis, nv, bslots, scale, out, QN, err, sizeof err), 0);
        double worst = 0.0;
        for (int i = 0; i < n; i++)
            for (int h = 0; h < KVH * G; h++) {
                const int g = h / G, nk = nv + i + 1;
                double sc[260], mx = -1e300, sum = 0.0;
                for (int j = 0; j < nk; j++) {
                    const int sl = j < nv ? vis[j] : bslots[j - nv];
                    const void *k = vl_kv_at(kv, kv->k[0], g, sl);
                    double t = 0.0;
                    for (int d = 0; d < hd; d++)
                        t += (double)q[(size_t)i * QN + h * hd + d] *
                             (bf ? vl_bf16_f32(((const uint16_t *)k)[d]) : ((const float *)k)[d]);
                    sc[j] = t * scale;
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int j = 0; j < nk; j++) sum += sc[j] = exp(sc[j] - mx);
                for (int d = 0; d < hd; d++) {
                    double o = 0.0;
                    for (int j = 0; j < nk; j++) {
                        const int sl = j < nv ? vis[j] : bslots[j - nv];
                        const void *v = vl_kv_at(kv, kv->v[0], g, sl);
                        o += sc[j] / sum * (bf ? vl_bf16_f32(((const uint16_t *)v)[d]) : ((const float *)v)[d]);
                    }
                    double e = fabs(o - out[(size_t)i * QN + h * hd + d]);
                    if (e > worst) worst = e;
                }
            }
        if (!(worst < 1e-5)) fail_msg("decode attention hd=%d G=%d bf16=%d: max error %.3g", hd, G, bf, worst);
        free(q);
        free(out);
        model_kv_destroy(kv);
        for (int i = 0; i < 16; i++) vl_buf_free(&fm->scratch[i]);
        free(fm);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_kernels),
        cmocka_unit_test(test_decode_attention_kernel),
        cmocka_unit_test(test_chunks),
        cmocka_unit_test(test_truncate_and_decode),
        cmocka_unit_test(test_scattered_slots),
        cmocka_unit_test(test_rerotation),
        cmocka_unit_test(test_window_and_fork),
        cmocka_unit_test(test_bf16_consistency),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
