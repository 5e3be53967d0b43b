/* test_ingest_resize.c — smart_resize, the torch-matching bicubic resize and the upstream
 * sampling plan against the upstream reference data (tests/data/golden): ref_tables.json
 * (computed by transformers v4.57.6 / qwen-vl-utils 0.0.14) and the resized frames the
 * transformers processors produced for the golden cases. */
#include "ingest/ingest.h"
#include "tests/support/npy.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#define GOLDEN "tests/data/golden/qwen3vl-dense-tiny/"

static cJSON *load_tables(void)
{
    FILE *f = fopen(GOLDEN "ref_tables.json", "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    assert_non_null(j);
    return j;
}

static int jint(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    assert_non_null(v);
    assert_true(cJSON_IsNumber(v));
    return (int)v->valuedouble;
}

static double jnum(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    assert_non_null(v);
    assert_true(cJSON_IsNumber(v));
    return v->valuedouble;
}

static void jpair(const cJSON *o, const char *k, int *a, int *b)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    assert_non_null(v);
    assert_int_equal(cJSON_GetArraySize(v), 2);
    *a = (int)cJSON_GetArrayItem(v, 0)->valuedouble;
    *b = (int)cJSON_GetArrayItem(v, 1)->valuedouble;
}

static void test_image_smart_resize_table(void **state)
{
    (void)state;
    cJSON *j = load_tables();
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(j, "image_smart_resize");
    assert_true(cJSON_GetArraySize(rows) >= 10);
    const cJSON *r;
    int checked = 0;
    cJSON_ArrayForEach(r, rows) {
        int h = jint(r, "height"), w = jint(r, "width");
        long mn = (long)jnum(r, "min_pixels"), mx = (long)jnum(r, "max_pixels");
        int eh, ew, oh, ow;
        char err[256];
        jpair(r, "transformers_image_smart_resize", &eh, &ew);
        assert_int_equal(ingest_smart_resize_image(h, w, mn, mx, INGEST_RULE_TRANSFORMERS, &oh,
                                                   &ow, err, sizeof(err)), 0);
        if (oh != eh || ow != ew)
            fail_msg("transformers smart_resize(%d, %d, %ld, %ld) = %dx%d, upstream %dx%d", h, w,
                     mn, mx, oh, ow, eh, ew);
        jpair(r, "qwen_vl_utils_smart_resize", &eh, &ew);
        assert_int_equal(ingest_smart_resize_image(h, w, mn, mx, INGEST_RULE_QWEN_VL_UTILS, &oh,
                                                   &ow, err, sizeof(err)), 0);
        if (oh != eh || ow != ew)
            fail_msg("qwen-vl-utils smart_resize(%d, %d, %ld, %ld) = %dx%d, upstream %dx%d", h,
                     w, mn, mx, oh, ow, eh, ew);
        checked++;
    }
    assert_int_equal(checked, cJSON_GetArraySize(rows));
    cJSON_Delete(j);
}

static void test_video_smart_resize_table(void **state)
{
    (void)state;
    cJSON *j = load_tables();
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(j, "video_smart_resize_transformers");
    assert_true(cJSON_GetArraySize(rows) >= 5);
    const cJSON *r;
    cJSON_ArrayForEach(r, rows) {
        int t = jint(r, "num_frames"), h = jint(r, "height"), w = jint(r, "width");
        long mn = (long)jnum(r, "min_pixels"), mx = (long)jnum(r, "max_pixels");
        int eh, ew, oh, ow;
        char err[256];
        jpair(r, "transformers_video_smart_resize", &eh, &ew);
        assert_int_equal(ingest_smart_resize_video(t, h, w, mn, mx, &oh, &ow, err, sizeof(err)), 0);
        if (oh != eh || ow != ew)
            fail_msg("video smart_resize(t=%d, %d, %d) = %dx%d, upstream %dx%d", t, h, w, oh, ow,
                     eh, ew);
    }
    /* qwen-vl-utils fetch_video: per-frame budget from nframes, then its image rule */
    rows = cJSON_GetObjectItemCaseSensitive(j, "qwen_vl_utils_fetch_video_resize");
    assert_true(cJSON_GetArraySize(rows) >= 3);
    cJSON_ArrayForEach(r, rows) {
        int n = jint(r, "nframes"), h = jint(r, "height"), w = jint(r, "width");
        long mn = (long)jnum(r, "min_pixels");
        double mx = jnum(r, "max_pixels");
        double budget = ingest_qvu_frame_max_pixels(n, 128L * 1024, 768L * 1024, 0);
        assert_true(fabs(budget - mx) < 1e-6);
        int eh, ew, oh, ow;
        jpair(r, "resized_hw", &eh, &ew);
        assert_int_equal(ingest_smart_resize_image(h, w, mn, (long)budget,
                                                   INGEST_RULE_QWEN_VL_UTILS, &oh, &ow, NULL, 0), 0);
        if (oh != eh || ow != ew)
            fail_msg("qwen-vl-utils video resize(n=%d, %d, %d) = %dx%d, upstream %dx%d", n, h, w,
                     oh, ow, eh, ew);
    }
    cJSON_Delete(j);
}

static void test_smart_resize_errors(void **state)
{
    (void)state;
    char err[256];
    int h, w;
    /* aspect ratio just above 200 is refused with a message; exactly 200 is accepted */
    assert_int_equal(ingest_smart_resize_image(10, 2001, 4096, 16777216, INGEST_RULE_TRANSFORMERS,
                                               &h, &w, err, sizeof(err)), INGEST_EINVAL);
    assert_non_null(strstr(err, "aspect ratio"));
    assert_int_equal(ingest_smart_resize_image(10, 2000, 4096, 16777216, INGEST_RULE_TRANSFORMERS,
                                               &h, &w, err, sizeof(err)), 0);
    assert_int_equal(ingest_smart_resize_video(4, 10, 2100, 4096, 25165824, &h, &w, err,
                                               sizeof(err)), INGEST_EINVAL);
    assert_int_equal(ingest_smart_resize_image(0, 10, 4096, 16777216, INGEST_RULE_TRANSFORMERS,
                                               &h, &w, err, sizeof(err)), INGEST_EINVAL);
    assert_int_equal(ingest_smart_resize_image(100, 100, 8192, 4096, INGEST_RULE_TRANSFORMERS,
                                               &h, &w, err, sizeof(err)), INGEST_EINVAL);
    assert_int_equal(ingest_smart_resize_video(1, 100, 100, 4096, 25165824, &h, &w, err,
                                               sizeof(err)), INGEST_EINVAL);
    assert_non_null(strstr(err, "frame"));
    /* frames below one factor are scaled up before the rule, not refused */
    assert_int_equal(ingest_smart_resize_video(4, 24, 40, 4096, 25165824, &h, &w, err,
                                               sizeof(err)), 0);
    assert_int_equal(h % 32, 0);
    assert_int_equal(w % 32, 0);
    assert_true(h >= 32 && w >= 32);
    /* a per-pair token budget: 256 tokens -> at most 256*1024 pixels */
    assert_int_equal(ingest_smart_resize_image(1080, 1920, 128L * 1024, 256L * 1024,
                                               INGEST_RULE_TRANSFORMERS, &h, &w, err, sizeof(err)), 0);
    assert_true((long)h * w <= 256L * 1024);
    assert_true((h / 32) * (w / 32) > 200); /* and not needlessly small */
}

/* Resizes every frame of in_path to the reference's size and compares. Returns the number
 * of values that agree exactly; fails on any difference > 1. */
static size_t compare_resize(const char *in_path, const char *ref_path, int ref_frames_per_in,
                             size_t *total)
{
    char err[256];
    npy_array *in = npy_load(in_path, err, sizeof(err));
    if (!in)
        fail_msg("%s", err);
    npy_array *ref = npy_load(ref_path, err, sizeof(err));
    if (!ref)
        fail_msg("%s", err);
    assert_non_null(npy_u8(in));
    assert_non_null(npy_u8(ref));
    int frames = in->ndim == 4 ? (int)in->shape[0] : 1;
    int H = (int)in->shape[in->ndim - 3], W = (int)in->shape[in->ndim - 2];
    int h = (int)ref->shape[1], w = (int)ref->shape[2];
    assert_int_equal(ref->shape[3], 3);
    size_t fb = (size_t)h * w * 3;
    uint8_t *out = malloc(fb);
    assert_non_null(out);
    ingest_resizer *rz;
    assert_int_equal(ingest_resizer_create(&rz, H, W, h, w, err, sizeof(err)), 0);
    size_t exact = 0, n = 0;
    int worst = 0;
    for (int f = 0; f < frames; f++) {
        ingest_resizer_run(rz, npy_u8(in) + (size_t)f * H * W * 3, (size_t)W * 3, out);
        for (int k = 0; k < ref_frames_per_in; k++) {
            const uint8_t *r = npy_u8(ref) + (size_t)(f * ref_frames_per_in + k) * fb;
            for (size_t i = 0; i < fb; i++) {
                int d = abs((int)out[i] - (int)r[i]);
                exact += d == 0;
                if (d > worst)
                    worst = d;
            }
            n += fb;
        }
    }
    ingest_resizer_destroy(rz);
    free(out);
    npy_free(in);
    npy_free(ref);
    if (worst > 1)
        fail_msg("%s: a value differs by %d from the reference", ref_path, worst);
    *total = n;
    return exact;
}

static void test_resize_matches_reference_image(void **state)
{
    (void)state;
    size_t n, exact = compare_resize(GOLDEN "input_image_hwc_u8.npy",
                                     GOLDEN "img_image_resized_thwc_u8.npy", 2, &n);
    printf("image 160x224 -> 224x320: %zu of %zu values exact\n", exact, n);
    assert_int_equal(n, (size_t)2 * 224 * 320 * 3);
    /* our float path replicates torch's arithmetic: demand (near) bit-exactness */
    assert_true(exact * 1000 >= n * 999);
}

static void test_resize_matches_reference_video(void **state)
{
    (void)state;
    size_t n, exact = compare_resize(GOLDEN "input_video_thwc_u8.npy",
                                     GOLDEN "vid_video_resized_thwc_u8.npy", 1, &n);
    printf("video 100x136 -> 96x128 (4 frames): %zu of %zu values exact\n", exact, n);
    assert_int_equal(n, (size_t)4 * 96 * 128 * 3);
    assert_true(exact * 1000 >= n * 999);
}

static void test_resize_identity_and_shapes(void **state)
{
    (void)state;
    const int h = 37, w = 53;
    uint8_t *src = malloc((size_t)h * (w + 5) * 3), *dst = malloc((size_t)h * w * 3);
    assert_non_null(src);
    assert_non_null(dst);
    for (int i = 0; i < h * (w + 5) * 3; i++)
        src[i] = (uint8_t)(i * 7 + 3);
    /* identity with a padded source stride */
    assert_int_equal(ingest_resize_rgb24(src, h, w, (size_t)(w + 5) * 3, dst, h, w, NULL, 0), 0);
    for (int y = 0; y < h; y++)
        assert_memory_equal(dst + (size_t)y * w * 3, src + (size_t)y * (w + 5) * 3, (size_t)w * 3);
    /* a constant image stays constant under up- and downscaling (weights sum to 1) */
    memset(src, 77, (size_t)h * (w + 5) * 3);
    uint8_t *big = malloc(96 * 160 * 3), *small = malloc(8 * 16 * 3);
    assert_int_equal(ingest_resize_rgb24(src, h, w, (size_t)w * 3, big, 96, 160, NULL, 0), 0);
    assert_int_equal(ingest_resize_rgb24(src, h, w, (size_t)w * 3, small, 8, 16, NULL, 0), 0);
    for (int i = 0; i < 96 * 160 * 3; i++)
        assert_int_equal(big[i], 77);
    for (int i = 0; i < 8 * 16 * 3; i++)
        assert_int_equal(small[i], 77);
    char err[128];
    ingest_resizer *rz = NULL;
    assert_int_equal(ingest_resizer_create(&rz, 0, 10, 10, 10, err, sizeof(err)), INGEST_EINVAL);
    assert_null(rz);
    free(src);
    free(dst);
    free(big);
    free(small);
}

/* A direct transcription of torch's CPU kernel (UpSampleKernel.cpp, antialias=True, float):
 * compute_indices_weights_aa per axis, then width pass, then height pass, plain loops. */
static float ref_filter(float x)
{
    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return (float)(((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1);
    if (x < 2.0)
        return (float)((((x - 5) * x + 8) * x - 4) * -0.5);
    return 0.0f;
}

static void ref_weights(int in, int out, int *xmin, int *xsize, float *w, int stride)
{
    float scale = (float)in / (float)out;
    float support = (scale >= 1.0) ? (float)(2.0 * scale) : 2.0f;
    float invscale = (scale >= 1.0) ? (float)(1.0 / scale) : 1.0f;
    for (int i = 0; i < out; i++) {
        float center = (float)(scale * (i + 0.5));
        int64_t lo = (int64_t)(center - support + 0.5);
        if (lo < 0)
            lo = 0;
        int64_t hi = (int64_t)(center + support + 0.5);
        if (hi > in)
            hi = in;
        float total = 0;
        for (int64_t j = 0; j < hi - lo; j++) {
            float v = ref_filter((float)((j + lo - center + 0.5) * invscale));
            w[i * stride + j] = v;
            total += v;
        }
        for (int64_t j = 0; j < hi - lo; j++)
            if (total != 0.0f)
                w[i * stride + j] /= total;
        xmin[i] = (int)lo;
        xsize[i] = (int)(hi - lo);
    }
}

static void ref_resize(const uint8_t *src, int H, int W, uint8_t *dst, int h, int w)
{
    int stride = 64;
    int *xmin = malloc(sizeof(int) * (size_t)w), *xs = malloc(sizeof(int) * (size_t)w);
    int *ymin = malloc(sizeof(int) * (size_t)h), *ys = malloc(sizeof(int) * (size_t)h);
    float *wx = calloc((size_t)w * stride, sizeof(float)), *wy = calloc((size_t)h * stride, sizeof(float));
    float *tmp = malloc(sizeof(float) * (size_t)H * w * 3);
    assert_true(xmin && xs && ymin && ys && wx && wy && tmp);
    ref_weights(W, w, xmin, xs, wx, stride);
    ref_weights(H, h, ymin, ys, wy, stride);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                float o = (float)src[((size_t)y * W + xmin[x]) * 3 + c] * wx[x * stride];
                for (int j = 1; j < xs[x]; j++)
                    o += (float)src[((size_t)y * W + xmin[x] + j) * 3 + c] * wx[x * stride + j];
                tmp[((size_t)y * w + x) * 3 + c] = o;
            }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w * 3; x++) {
            float o = tmp[(size_t)ymin[y] * w * 3 + x] * wy[y * stride];
            for (int j = 1; j < ys[y]; j++)
                o += tmp[(size_t)(ymin[y] + j) * w * 3 + x] * wy[y * stride + j];
            o = o < 0 ? 0 : (o > 255 ? 255 : o);
            dst[(size_t)y * w * 3 + x] = (uint8_t)nearbyintf(o);
        }
    free(xmin), free(xs), free(ymin), free(ys), free(wx), free(wy), free(tmp);
}

/* The optimized resizer (8 rows per vector) against the plain transcription, on random
 * pictures and sizes: up, down, mixed, odd, tiny, row counts that are not multiples of 8. */
static void test_resize_matches_plain_kernel(void **state)
{
    (void)state;
    uint32_t rnd = 2024;
#define RND() (rnd = rnd * 1664525u + 1013904223u, rnd >> 8)
    int sizes[][4] = {{1080, 1920, 384, 672}, {37, 53, 96, 160}, {100, 136, 96, 128},
                      {9, 300, 64, 32}, {300, 9, 32, 64}, {480, 640, 480, 640}, {17, 17, 32, 32},
                      {720, 1280, 224, 416}, {15, 23, 8, 5}};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        int H = sizes[k][0], W = sizes[k][1], h = sizes[k][2], w = sizes[k][3];
        uint8_t *src = malloc((size_t)H * W * 3), *a = malloc((size_t)h * w * 3), *b = malloc((size_t)h * w * 3);
        assert_true(src && a && b);
        for (size_t i = 0; i < (size_t)H * W * 3; i++)
            src[i] = (uint8_t)((i % 7 == 0) ? RND() : (i / 3 * 5 + (RND() & 15)));
        assert_int_equal(ingest_resize_rgb24(src, H, W, (size_t)W * 3, a, h, w, NULL, 0), 0);
        ref_resize(src, H, W, b, h, w);
        if (memcmp(a, b, (size_t)h * w * 3) != 0) {
            size_t i = 0;
            while (a[i] == b[i])
                i++;
            fail_msg("%dx%d -> %dx%d: value %zu is %d, plain kernel %d", H, W, h, w, i, a[i], b[i]);
        }
        free(src);
        free(a);
        free(b);
    }
#undef RND
}

/* Compares a list of the reference table ("..." marks an elided middle) with ours. */
static void check_list(const cJSON *ref, int n, int64_t (*get)(int, void *), void *ctx,
                       const char *what)
{
    int rn = cJSON_GetArraySize(ref);
    int dots = -1;
    for (int i = 0; i < rn; i++)
        if (cJSON_IsString(cJSON_GetArrayItem(ref, i)))
            dots = i;
    if (dots < 0)
        assert_int_equal(rn, n);
    for (int i = 0; i < rn; i++) {
        if (i == dots)
            continue;
        int ours = i < dots || dots < 0 ? i : n - (rn - i);
        int64_t want = (int64_t)cJSON_GetArrayItem(ref, i)->valuedouble;
        int64_t got = get(ours, ctx);
        if (want != got)
            fail_msg("%s[%d]: %lld, upstream %lld", what, ours, (long long)got, (long long)want);
    }
}

static int64_t plan_index(int i, void *ctx) { return ((ingest_sample_plan *)ctx)->indices[i]; }

static void test_sampling_plan_table(void **state)
{
    (void)state;
    cJSON *j = load_tables();
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(j, "frame_sampling");
    assert_true(cJSON_GetArraySize(rows) >= 10);
    const cJSON *r;
    cJSON_ArrayForEach(r, rows) {
        int64_t total = (int64_t)jnum(r, "total_frames");
        double fps = jnum(r, "video_fps");
        ingest_sample_plan plan;
        char err[256];
        assert_int_equal(ingest_sample_plan_make(&plan, total, fps, 2.0, 4, 768, err, sizeof(err)), 0);
        assert_int_equal(plan.num_frames, jint(r, "transformers_num_frames"));
        assert_int_equal(plan.num_indices % 2, 0);
        assert_int_equal(plan.num_pairs * 2, plan.num_indices);
        check_list(cJSON_GetObjectItemCaseSensitive(r, "transformers_indices"), plan.num_frames,
                   plan_index, &plan, "indices");
        if (plan.num_frames % 2)
            assert_int_equal(plan.indices[plan.num_indices - 1], plan.indices[plan.num_frames - 1]);
        const cJSON *ts = cJSON_GetObjectItemCaseSensitive(r, "transformers_timestamps_text");
        int rn = cJSON_GetArraySize(ts);
        int dots = -1;
        for (int i = 0; i < rn; i++)
            if (strcmp(cJSON_GetArrayItem(ts, i)->valuestring, "...") == 0)
                dots = i;
        if (dots < 0)
            assert_int_equal(rn, plan.num_pairs);
        for (int i = 0; i < rn; i++) {
            if (i == dots)
                continue;
            int p = (dots < 0 || i < dots) ? i : plan.num_pairs - (rn - i);
            char buf[64];
            ingest_format_timestamp(plan.timestamps[p], buf, sizeof(buf));
            if (strcmp(buf, cJSON_GetArrayItem(ts, i)->valuestring) != 0)
                fail_msg("total %lld fps %g pair %d: %s, upstream %s", (long long)total, fps, p,
                         buf, cJSON_GetArrayItem(ts, i)->valuestring);
        }
        ingest_sample_plan_free(&plan);
    }
    cJSON_Delete(j);
}

static void test_sampling_plan_edges(void **state)
{
    (void)state;
    ingest_sample_plan plan;
    char err[256];
    /* fewer frames than min_frames: every frame, the odd one repeated */
    assert_int_equal(ingest_sample_plan_make(&plan, 3, 30.0, 2.0, 4, 768, err, sizeof(err)), 0);
    assert_int_equal(plan.num_frames, 3);
    assert_int_equal(plan.num_indices, 4);
    assert_int_equal(plan.indices[0], 0);
    assert_int_equal(plan.indices[1], 1);
    assert_int_equal(plan.indices[2], 2);
    assert_int_equal(plan.indices[3], 2);
    assert_true(fabs(plan.timestamps[1] - 2.0 / 30.0) < 1e-12);
    ingest_sample_plan_free(&plan);
    /* a single frame */
    assert_int_equal(ingest_sample_plan_make(&plan, 1, 25.0, 2.0, 4, 768, err, sizeof(err)), 0);
    assert_int_equal(plan.num_pairs, 1);
    assert_int_equal(plan.indices[0], 0);
    assert_int_equal(plan.indices[1], 0);
    ingest_sample_plan_free(&plan);
    assert_int_equal(ingest_sample_plan_make(&plan, 0, 25.0, 2.0, 4, 768, err, sizeof(err)), INGEST_EINVAL);
    assert_non_null(strstr(err, "no frames"));
    assert_int_equal(ingest_sample_plan_make(&plan, 10, 0.0, 2.0, 4, 768, err, sizeof(err)), INGEST_EINVAL);
    assert_non_null(strstr(err, "frame rate"));
    /* half-to-even in the timestamp text, like Python */
    char buf[32];
    ingest_format_timestamp(0.25, buf, sizeof(buf));
    assert_string_equal(buf, "<0.2 seconds>");
    ingest_format_timestamp(0.35, buf, sizeof(buf)); /* 0.34999.. in binary */
    assert_string_equal(buf, "<0.3 seconds>");
    ingest_format_timestamp(1.25, buf, sizeof(buf));
    assert_string_equal(buf, "<1.2 seconds>");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_image_smart_resize_table),
        cmocka_unit_test(test_video_smart_resize_table),
        cmocka_unit_test(test_smart_resize_errors),
        cmocka_unit_test(test_resize_matches_reference_image),
        cmocka_unit_test(test_resize_matches_reference_video),
        cmocka_unit_test(test_resize_identity_and_shapes),
        cmocka_unit_test(test_resize_matches_plain_kernel),
        cmocka_unit_test(test_sampling_plan_table),
        cmocka_unit_test(test_sampling_plan_edges),
    };
    return cmocka_run_group_tests_name("ingest_resize", tests, NULL, NULL);
}
