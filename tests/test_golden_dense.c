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

#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "tests/support/golden.h"

#define SET_DIR "tests/data/golden/qwen3vl-dense-tiny"

static const golden_tolerances TOL = {
    .f32 = 1e-4,
    .bf16 = 3e-2,
    .pair_deepstack = 1e-5,
    .top5_abs = 1e-4f,
};

static golden_model g_f32, g_bf16;

static int setup(void **state) {
    (void)state;
    if (golden_model_open(&g_f32, SET_DIR, MODEL_COMPUTE_F32) || golden_model_open(&g_bf16, SET_DIR, MODEL_COMPUTE_BF16))
        return -1;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    golden_model_close(&g_f32);
    golden_model_close(&g_bf16);
    return 0;
}

static void test_img_f32(void **s) { (void)s; golden_run_case(&g_f32, "img", &TOL, NULL); }
static void test_vid_f32(void **s) { (void)s; golden_run_case(&g_f32, "vid", &TOL, NULL); }
static void test_mix_f32(void **s) { (void)s; golden_run_case(&g_f32, "mix", &TOL, NULL); }
static void test_img_bf16(void **s) { (void)s; golden_run_case(&g_bf16, "img", &TOL, NULL); }
static void test_vid_bf16(void **s) { (void)s; golden_run_case(&g_bf16, "vid", &TOL, NULL); }
static void test_mix_bf16(void **s) { (void)s; golden_run_case(&g_bf16, "mix", &TOL, NULL); }

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
