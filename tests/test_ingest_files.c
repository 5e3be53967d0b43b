/* test_ingest_files.c — file sources through real FFmpeg decodes of clips made with the
 * ffmpeg CLI at test time. Every clip's frame N is a flat colour that encodes N
 * (media_color_source), so each test can tell exactly which source frames were sampled.
 *
 * Covers: codecs and containers (H.264/MP4, HEVC/MKV, VP9/WebM, AV1/MKV, MJPEG/AVI,
 * H.264/MPEG-TS), PTS sampling at 2 fps, skip of non-reference frames (same samples, fewer
 * decodes), upstream whole-file sampling against ref_tables.json (frame counts and fps of
 * its cases), VFR, odd sizes, rotation metadata, missing timestamps (raw H.264), MPEG-TS
 * wrap-around and discontinuities, start offset, loop, real-time pacing, queue backpressure
 * and drop-oldest, still images, image sequences and in-memory images (pixel-exact against
 * the upstream processor's output). */
#include "ingest/ingest.h"
#include "tests/support/media.h"
#include "tests/support/npy.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#define GOLDEN "tests/data/golden/qwen3vl-dense-tiny/"

static char g_dir[256];

/* ---- helpers -------------------------------------------------------------------------- */

typedef struct got_pair {
    uint64_t seq;
    int h, w;
    double t0, t1, ts, wall;
    int64_t i0, i1;
    int c0, c1;           /* colour-decoded source frame of each frame */
    bool repeated;
} got_pair;

typedef struct run_result {
    got_pair p[1200];
    int n;
    ingest_state final_state;
    ingest_stats st;
    ingest_info info;
    char last_error[512];
} run_result;

static void base_opts(ingest_options *o)
{
    ingest_options_init(o);
    snprintf(o->protocols, sizeof(o->protocols), "file");
    o->min_pixels = 4096; /* keep test pairs tiny */
    o->io_timeout_ms = 5000;
}

static void keep(run_result *r, const ingest_pair *p)
{
    if (r->n >= (int)(sizeof(r->p) / sizeof(r->p[0])))
        return;
    got_pair *g = &r->p[r->n++];
    g->seq = p->seq;
    g->h = p->height;
    g->w = p->width;
    g->t0 = p->t0;
    g->t1 = p->t1;
    g->ts = p->timestamp;
    g->wall = p->wall_time;
    g->i0 = p->index0;
    g->i1 = p->index1;
    g->c0 = media_color_index(p->rgb[0], p->height, p->width);
    g->c1 = media_color_index(p->rgb[1], p->height, p->width);
    g->repeated = p->repeated;
    assert_int_equal(p->grid_t, 1);
    assert_int_equal(p->grid_h * 16, p->height);
    assert_int_equal(p->grid_w * 16, p->width);
    assert_int_equal(p->height % 32, 0);
    assert_int_equal(p->width % 32, 0);
    assert_true(fabs(p->timestamp - (p->t0 + p->t1) / 2) < 1e-9);
}

/* Runs a source to its end (or max_pairs), collecting every pair. */
static run_result *run_source(const char *url, const ingest_options *o, int max_pairs)
{
    run_result *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    char err[512];
    ingest_source *s;
    int rc = ingest_source_create(&s, url, o, err, sizeof(err));
    if (rc)
        fail_msg("create %s: %s", url, err);
    assert_int_equal(ingest_source_start(s, err, sizeof(err)), 0);
    int64_t end = media_now_ms() + 60000;
    ingest_pair *p;
    while (media_now_ms() < end && (max_pairs <= 0 || r->n < max_pairs)) {
        rc = ingest_source_pop(s, &p, 200);
        if (rc == INGEST_EOF)
            break;
        if (rc == INGEST_EAGAIN)
            continue;
        assert_int_equal(rc, 0);
        keep(r, p);
        ingest_pair_free(p);
    }
    ingest_source_stop(s);
    /* anything produced after max_pairs is still queued: drain so the counters add up */
    while (ingest_source_pop(s, &p, 0) == 0)
        ingest_pair_free(p);
    r->final_state = ingest_source_state(s);
    ingest_source_stats(s, &r->st);
    ingest_source_info(s, &r->info);
    ingest_source_last_error(s, r->last_error, sizeof(r->last_error));
    ingest_source_destroy(s);
    assert_int_equal(r->st.pairs_produced, r->st.pairs_popped + r->st.pairs_dropped);
    return r;
}

static void path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", g_dir, name);
}

/* Makes a colour-coded clip. extra: encoder options; name: file in g_dir. */
static void make_clip(const char *name, int w, int h, const char *rate, int frames,
                      const char *extra)
{
    char src[512], out[512];
    media_color_source(src, sizeof(src), w, h, rate, 100000);
    path(out, sizeof(out), name);
    int rc = media_sh("ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i \"%s\" "
                      "-frames:v %d %s '%s'", src, frames, extra, out);
    assert_int_equal(rc, 0);
}

/* PTS sampling at 2 fps of a 30 fps clip picks frames 0, 15, 30, ... */
static void expect_30fps_pairs(const run_result *r, int npairs)
{
    assert_int_equal(r->n, npairs);
    for (int k = 0; k < r->n; k++) {
        assert_int_equal(r->p[k].seq, (uint64_t)k);
        if (r->p[k].c0 != 30 * k || r->p[k].c1 != 30 * k + 15)
            fail_msg("pair %d: frames %d,%d; expected %d,%d", k, r->p[k].c0, r->p[k].c1, 30 * k,
                     30 * k + 15);
        assert_true(fabs(r->p[k].t0 - k) < 1e-3);
        assert_true(fabs(r->p[k].t1 - (k + 0.5)) < 1e-3);
        assert_int_equal(r->p[k].i0, 30 * k);
        assert_int_equal(r->p[k].i1, 30 * k + 15);
    }
}

/* ---- codecs and containers ------------------------------------------------------------ */

static void check_codec(const char *name, const char *extra)
{
    make_clip(name, 64, 64, "30", 90, extra);
    char url[512];
    path(url, sizeof(url), name);
    ingest_options o;
    base_opts(&o);
    run_result *r = run_source(url, &o, 0);
    if (r->n != 3)
        fail_msg("%s: %d pairs (state %s, %s)", name, r->n, ingest_state_name(r->final_state),
                 r->last_error);
    expect_30fps_pairs(r, 3);
    assert_int_equal(r->final_state, INGEST_STATE_ENDED);
    assert_int_equal(r->st.decode_errors, 0);
    assert_int_equal(r->info.src_width, 64);
    assert_true(fabs(r->info.src_fps - 30) < 0.01);
    printf("%-10s %-24s %s: %d pairs, %llu of 90 frames decoded\n", name, r->info.format,
           r->info.codec, r->n, (unsigned long long)r->st.frames_decoded);
    free(r);
}

static void test_codec_h264_mp4(void **s) { (void)s; check_codec("h264.mp4", "-c:v libx264 -pix_fmt yuv420p -g 30"); }
static void test_codec_hevc_mkv(void **s) { (void)s; check_codec("hevc.mkv", "-c:v libx265 -x265-params log-level=error -pix_fmt yuv420p"); }
static void test_codec_vp9_webm(void **s) { (void)s; check_codec("vp9.webm", "-c:v libvpx-vp9 -deadline realtime -cpu-used 8 -pix_fmt yuv420p"); }
static void test_codec_mjpeg_avi(void **s) { (void)s; check_codec("mjpeg.avi", "-c:v mjpeg -q:v 2 -pix_fmt yuvj420p"); }
static void test_codec_h264_ts(void **s) { (void)s; check_codec("h264.ts", "-c:v libx264 -pix_fmt yuv420p -f mpegts"); }
static void test_codec_av1_mkv(void **s)
{
    (void)s;
    if (!media_have_decoder("libdav1d") && !media_have_decoder("libaom-av1")) {
        printf("no AV1 decoder in this FFmpeg: skipped\n");
        skip();
    }
    if (media_have_encoder("libaom-av1"))
        check_codec("av1.mkv", "-c:v libaom-av1 -cpu-used 8 -row-mt 1 -crf 30 -pix_fmt yuv420p");
    else if (media_have_encoder("libsvtav1"))
        check_codec("av1.mkv", "-c:v libsvtav1 -pix_fmt yuv420p");
    else
        skip();
}

/* Non-reference frames that cannot be sampled are discarded before decoding: same samples,
 * fewer decoded frames. */
static void test_skip_nonref_same_samples(void **state)
{
    (void)state;
    make_clip("bframes.mp4", 64, 64, "30", 300, "-c:v libx264 -pix_fmt yuv420p -bf 3 -g 60");
    char url[512];
    path(url, sizeof(url), "bframes.mp4");
    ingest_options o;
    base_opts(&o);
    o.skip_nonref = false;
    run_result *all = run_source(url, &o, 0);
    o.skip_nonref = true;
    run_result *skip = run_source(url, &o, 0);
    expect_30fps_pairs(all, 10);
    expect_30fps_pairs(skip, 10);
    assert_int_equal(all->st.frames_decoded, 300);
    printf("decoded frames: %llu without skipping, %llu with skip_frame=nonref\n",
           (unsigned long long)all->st.frames_decoded, (unsigned long long)skip->st.frames_decoded);
    assert_true(skip->st.frames_decoded < all->st.frames_decoded);
    assert_int_equal(skip->st.packets_read, 300);
    free(all);
    free(skip);
}

/* ---- upstream whole-file sampling ------------------------------------------------------ */

static const char *containers[][2] = {
    {"mp4", "-c:v libx264 -pix_fmt yuv420p"},
    {"mkv", "-c:v libx265 -x265-params log-level=error -pix_fmt yuv420p"},
    {"webm", "-c:v libvpx-vp9 -deadline realtime -cpu-used 8 -pix_fmt yuv420p"},
    {"avi", "-c:v mjpeg -q:v 2 -pix_fmt yuvj420p"},
    {"mov", "-c:v libx264 -pix_fmt yuv420p -bf 2"},
};

static void test_upstream_sampling_table(void **state)
{
    (void)state;
    size_t jl;
    char *js = media_read_file(GOLDEN "ref_tables.json", &jl);
    assert_non_null(js);
    cJSON *j = cJSON_Parse(js);
    free(js);
    assert_non_null(j);
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(j, "frame_sampling");
    const cJSON *row;
    int cases = 0;
    cJSON_ArrayForEach(row, rows) {
        int total = (int)cJSON_GetObjectItemCaseSensitive(row, "total_frames")->valuedouble;
        double fps = cJSON_GetObjectItemCaseSensitive(row, "video_fps")->valuedouble;
        if (total > 1000)
            continue; /* the 2-minute and 1-hour cases are covered by the plan test */
        const char *rate = fabs(fps - 29.97) < 1e-9 ? "30000/1001" : NULL;
        char ratebuf[32];
        if (!rate) {
            snprintf(ratebuf, sizeof(ratebuf), "%g", fps);
            rate = ratebuf;
        }
        const char **c = containers[cases % 5];
        char name[64], url[512];
        snprintf(name, sizeof(name), "up_%d_%g.%s", total, fps, c[0]);
        make_clip(name, 64, 48, rate, total, c[1]);
        path(url, sizeof(url), name);
        ingest_options o;
        base_opts(&o);
        o.sampling = INGEST_SAMPLE_UPSTREAM;
        run_result *r = run_source(url, &o, 0);
        ingest_sample_plan plan;
        assert_int_equal(ingest_sample_plan_make(&plan, total, fps, 2, 4, 768, NULL, 0), 0);
        const cJSON *tn = cJSON_GetObjectItemCaseSensitive(row, "transformers_num_frames");
        assert_int_equal(plan.num_frames, (int)tn->valuedouble);
        if (r->n != plan.num_pairs)
            fail_msg("%s: %d pairs, expected %d (%s)", name, r->n, plan.num_pairs, r->last_error);
        assert_int_equal(r->info.total_frames, total);
        const cJSON *texts = cJSON_GetObjectItemCaseSensitive(row, "transformers_timestamps_text");
        int tn_text = cJSON_GetArraySize(texts);
        for (int k = 0; k < r->n; k++) {
            int64_t a = plan.indices[2 * k], b = plan.indices[2 * k + 1];
            if (r->p[k].i0 != a || r->p[k].i1 != b || r->p[k].c0 != a || r->p[k].c1 != b)
                fail_msg("%s pair %d: index %lld,%lld colour %d,%d; upstream %lld,%lld", name, k,
                         (long long)r->p[k].i0, (long long)r->p[k].i1, r->p[k].c0, r->p[k].c1,
                         (long long)a, (long long)b);
            /* timestamp text as upstream prints it (head and tail of the table's list) */
            int ti = -1;
            if (k < 6 && k < tn_text && !cJSON_IsString(cJSON_GetArrayItem(texts, k)))
                ti = k;
            const cJSON *tk = k < tn_text ? cJSON_GetArrayItem(texts, k) : NULL;
            if (tn_text == r->n)
                ti = k;
            else if (r->n - k <= 4)
                ti = tn_text - (r->n - k);
            (void)tk;
            if (ti >= 0) {
                char buf[32];
                ingest_format_timestamp(r->p[k].ts, buf, sizeof(buf));
                const char *want = cJSON_GetArrayItem(texts, ti)->valuestring;
                if (strcmp(buf, want) != 0)
                    fail_msg("%s pair %d: %s, upstream %s", name, k, buf, want);
            }
        }
        if (plan.num_frames % 2)
            assert_true(r->p[r->n - 1].repeated);
        /* one size for the whole clip: the video rule over t*h*w */
        int eh, ew;
        assert_int_equal(ingest_smart_resize_video(plan.num_frames, 48, 64, 4096, 25165824, &eh,
                                                   &ew, NULL, 0), 0);
        for (int k = 0; k < r->n; k++) {
            assert_int_equal(r->p[k].h, eh);
            assert_int_equal(r->p[k].w, ew);
        }
        assert_int_equal(r->final_state, INGEST_STATE_ENDED);
        printf("upstream %5d frames @ %-6g %-4s: %d pairs ok\n", total, fps, c[0], r->n);
        ingest_sample_plan_free(&plan);
        free(r);
        cases++;
    }
    assert_true(cases >= 9);
    cJSON_Delete(j);
}

/* ---- timing edge cases --------------------------------------------------------------- */

static void test_vfr(void **state)
{
    (void)state;
    /* frames 0-29 at 30 fps (0 .. 0.967 s), then 10 fps from 1.0 s */
    char src[512], out[512];
    media_color_source(src, sizeof(src), 64, 64, "30", 100000);
    path(out, sizeof(out), "vfr.mkv");
    assert_int_equal(media_sh("ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i \"%s\" "
                              "-frames:v 60 -vf \"setpts='if(lt(N,30),N/30,1+(N-30)/10)/TB'\" "
                              "-fps_mode passthrough -c:v libx264 -pix_fmt yuv420p '%s'", src, out), 0);
    ingest_options o;
    base_opts(&o);
    run_result *r = run_source(out, &o, 0);
    /* targets every 0.5 s: 0 -> frame 0, 0.5 -> 15, then 10 fps: t -> frame 30 + (t-1)*10 */
    assert_int_equal(r->n, 4);
    int want[8] = {0, 15, 30, 35, 40, 45, 50, 55};
    for (int k = 0; k < r->n; k++) {
        if (r->p[k].c0 != want[2 * k] || r->p[k].c1 != want[2 * k + 1])
            fail_msg("VFR pair %d: frames %d,%d; expected %d,%d", k, r->p[k].c0, r->p[k].c1,
                     want[2 * k], want[2 * k + 1]);
        assert_true(fabs(r->p[k].t0 - k) < 1e-3);
    }
    free(r);
}

static void test_odd_size_and_count(void **state)
{
    (void)state;
    /* 101x75, 4:4:4 so the odd size is legal; 75 frames at 30 fps */
    make_clip("odd.mp4", 101, 75, "30", 75, "-c:v libx264 -pix_fmt yuv444p");
    char url[512];
    path(url, sizeof(url), "odd.mp4");
    ingest_options o;
    base_opts(&o);
    run_result *r = run_source(url, &o, 0);
    int eh, ew;
    assert_int_equal(ingest_smart_resize_image(75, 101, 4096, o.max_pixels,
                                               INGEST_RULE_TRANSFORMERS, &eh, &ew, NULL, 0), 0);
    /* samples at 0, .5, 1, 1.5, 2 s: frames 0 15 30 45 60 -> 5 frames, the last repeated */
    assert_int_equal(r->n, 3);
    assert_int_equal(r->p[2].c0, 60);
    assert_int_equal(r->p[2].c1, 60);
    assert_true(r->p[2].repeated);
    assert_false(r->p[0].repeated);
    assert_true(fabs(r->p[2].ts - 2.0) < 1e-3);
    for (int k = 0; k < r->n; k++) {
        assert_int_equal(r->p[k].h, eh);
        assert_int_equal(r->p[k].w, ew);
    }
    assert_int_equal(r->info.src_width, 101);
    assert_int_equal(r->info.src_height, 75);
    free(r);
}

/* Phone video: stored 128x64 (left red, right blue) with a 90-degree display matrix. The
 * expected orientation is whatever the ffmpeg CLI (like every player) shows. */
static void test_rotation(void **state)
{
    (void)state;
    char raw[512], out[512], cli[512];
    path(raw, sizeof(raw), "phone_raw.mp4");
    path(out, sizeof(out), "phone.mp4");
    path(cli, sizeof(cli), "phone_cli.rgb");
    assert_int_equal(media_sh("ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi "
                              "-i color=c=red:s=64x64:r=10:d=2 -f lavfi -i color=c=blue:s=64x64:r=10:d=2 "
                              "-filter_complex hstack -c:v libx264 -pix_fmt yuv444p '%s' && "
                              "ffmpeg -nostdin -hide_banner -loglevel error -y -i '%s' -c copy "
                              "-metadata:s:v:0 rotate=90 '%s' && "
                              "ffmpeg -nostdin -hide_banner -loglevel error -y -i '%s' -frames:v 1 "
                              "-f rawvideo -pix_fmt rgb24 '%s'", raw, raw, out, out, cli), 0);
    size_t clen;
    uint8_t *ref = media_read_file(cli, &clen);
    assert_non_null(ref);
    assert_int_equal(clen, (size_t)64 * 128 * 3); /* the CLI shows it 64 wide, 128 tall */
    /* colour of each quadrant corner of the CLI's picture (64 wide) */
    int cw = 64, ch = 128;
    const uint8_t *cref[4] = {ref + (2 * cw + 2) * 3, ref + (2 * cw + cw - 3) * 3,
                              ref + ((ch - 3) * cw + 2) * 3, ref + ((ch - 3) * cw + cw - 3) * 3};
    ingest_options o;
    base_opts(&o);
    ingest_source *s;
    char err[256];
    ingest_pair *p;
    for (int autorot = 1; autorot >= 0; autorot--) {
        o.autorotate = autorot;
        assert_int_equal(ingest_source_create(&s, out, &o, err, sizeof(err)), 0);
        assert_int_equal(ingest_source_start(s, err, sizeof(err)), 0);
        assert_int_equal(ingest_source_pop(s, &p, 20000), 0);
        ingest_info info;
        assert_int_equal(ingest_source_info(s, &info), 0);
        int W = p->width, H = p->height;
        const uint8_t *q[4] = {p->rgb[0] + (2 * W + 2) * 3, p->rgb[0] + (2 * W + W - 3) * 3,
                               p->rgb[0] + ((H - 3) * W + 2) * 3,
                               p->rgb[0] + ((H - 3) * W + W - 3) * 3};
        if (autorot) {
            assert_int_equal(info.rotation, 270); /* 90 degrees counter-clockwise */
            assert_int_equal(info.src_width, 64);
            assert_int_equal(info.src_height, 128);
            assert_true(H > W);
            for (int k = 0; k < 4; k++) {
                /* same colour as the CLI in every corner */
                bool red = cref[k][0] > 128;
                assert_true(red ? (q[k][0] > 200 && q[k][2] < 60) : (q[k][2] > 200 && q[k][0] < 60));
            }
        } else {
            /* as stored: 128 wide, red left, blue right (what upstream readers see) */
            assert_int_equal(info.rotation, 0);
            assert_true(W > H);
            assert_true(q[0][0] > 200 && q[2][0] > 200);
            assert_true(q[1][2] > 200 && q[3][2] > 200);
        }
        ingest_pair_free(p);
        ingest_source_destroy(s);
    }
    free(ref);
}

/* Raw H.264 elementary stream: no container timestamps. */
static void test_missing_timestamps(void **state)
{
    (void)state;
    make_clip("raw.h264", 64, 64, "30", 90, "-c:v libx264 -pix_fmt yuv420p -bf 0 -f h264");
    char url[512];
    path(url, sizeof(url), "raw.h264");
    ingest_options o;
    base_opts(&o);
    run_result *r = run_source(url, &o, 0);
    assert_true(r->n >= 2);
    double rate = r->info.src_fps > 0 ? r->info.src_fps : 25;
    for (int k = 0; k < r->n; k++) {
        /* the frame sampled at media time t is frame round(t * rate), within one frame */
        assert_true(fabs(r->p[k].c0 - r->p[k].t0 * rate) <= 1.01);
        assert_true(fabs(r->p[k].c1 - r->p[k].t1 * rate) <= 1.01);
        assert_true(r->p[k].t1 > r->p[k].t0);
        if (k)
            assert_true(r->p[k].t0 > r->p[k - 1].t1);
        assert_true(fabs(r->p[k].t0 - k) < 0.05);
    }
    free(r);
}

static void check_continuous(const run_result *r, double max_gap)
{
    for (int k = 1; k < r->n; k++) {
        double d = r->p[k].t0 - r->p[k - 1].t0;
        if (!(d > 0 && d < max_gap))
            fail_msg("pair %d: media time %.3f after %.3f", k, r->p[k].t0, r->p[k - 1].t0);
    }
}

static void test_mpegts_wraparound(void **state)
{
    (void)state;
    /* 33-bit PTS wraps at 95443.7 s: start 3.2 s before it */
    make_clip("wrap.ts", 64, 64, "30", 240,
              "-c:v libx264 -pix_fmt yuv420p -output_ts_offset 95440.5 -f mpegts");
    char url[512];
    path(url, sizeof(url), "wrap.ts");
    ingest_options o;
    base_opts(&o);
    run_result *r = run_source(url, &o, 0);
    expect_30fps_pairs(r, 8);
    check_continuous(r, 1.01);
    assert_true(fabs(r->p[0].t0) < 1e-3);
    free(r);
}

static void test_mpegts_discontinuity(void **state)
{
    (void)state;
    /* two segments with the same timestamps back to back (a splice / encoder restart) */
    make_clip("seg.ts", 64, 64, "30", 90, "-c:v libx264 -pix_fmt yuv420p -f mpegts");
    char a[512], b[512];
    path(a, sizeof(a), "seg.ts");
    path(b, sizeof(b), "spliced.ts");
    assert_int_equal(media_sh("cat '%s' '%s' > '%s'", a, a, b), 0);
    ingest_options o;
    base_opts(&o);
    run_result *r = run_source(b, &o, 0);
    /* 6 s of media in all: pairs at 0..5 s, continuous, second half starts over at frame 0 */
    assert_true(r->n >= 5 && r->n <= 6);
    check_continuous(r, 1.2);
    assert_true(r->p[r->n - 1].t0 > 4.0);
    assert_true(r->st.discontinuities >= 1);
    printf("spliced TS: %d pairs, last at %.3f s, %llu discontinuities\n", r->n,
           r->p[r->n - 1].t0, (unsigned long long)r->st.discontinuities);
    free(r);
}

/* ---- file options -------------------------------------------------------------------- */

static void test_start_offset(void **state)
{
    (void)state;
    make_clip("ten.mp4", 64, 64, "30", 300, "-c:v libx264 -pix_fmt yuv420p -g 90");
    char url[512];
    path(url, sizeof(url), "ten.mp4");
    ingest_options o;
    base_opts(&o);
    o.start_offset = 4.0;
    run_result *r = run_source(url, &o, 0);
    assert_int_equal(r->n, 6);
    for (int k = 0; k < r->n; k++) {
        assert_int_equal(r->p[k].c0, 120 + 30 * k);
        assert_int_equal(r->p[k].c1, 135 + 30 * k);
        assert_true(fabs(r->p[k].t0 - (4.0 + k)) < 1e-3); /* media time = file position */
    }
    free(r);
}

static void test_loop(void **state)
{
    (void)state;
    make_clip("two.mp4", 64, 64, "30", 60, "-c:v libx264 -pix_fmt yuv420p");
    char url[512];
    path(url, sizeof(url), "two.mp4");
    ingest_options o;
    base_opts(&o);
    o.loop = true;
    run_result *r = run_source(url, &o, 5);
    assert_int_equal(r->n, 5);
    for (int k = 0; k < r->n; k++) {
        /* the clip repeats (frames 0,15 then 30,45, then 0,15 again) while media time grows */
        assert_int_equal(r->p[k].c0, (k % 2) * 30);
        assert_int_equal(r->p[k].c1, (k % 2) * 30 + 15);
        assert_true(fabs(r->p[k].t0 - k) < 0.01);
    }
    assert_int_equal(r->st.reconnects, 0);
    free(r);
}

static void test_realtime_pacing(void **state)
{
    (void)state;
    make_clip("three.mp4", 64, 64, "30", 90, "-c:v libx264 -pix_fmt yuv420p");
    char url[512];
    path(url, sizeof(url), "three.mp4");
    ingest_options o;
    base_opts(&o);
    o.realtime = true;
    int64_t t0 = media_now_ms();
    run_result *r = run_source(url, &o, 0);
    int64_t el = media_now_ms() - t0;
    /* frames are released at their media time: the last one (2.97 s) cannot come earlier */
    printf("3 s clip paced in %lld ms\n", (long long)el);
    assert_true(el >= 2800);
    expect_30fps_pairs(r, 3);
    free(r);
}

/* ---- queue --------------------------------------------------------------------------- */

static void test_backpressure_loses_nothing(void **state)
{
    (void)state;
    char url[512];
    path(url, sizeof(url), "ten.mp4");
    ingest_options o;
    base_opts(&o);
    o.queue_capacity = 2;
    ingest_source *s;
    char err[256];
    assert_int_equal(ingest_source_create(&s, url, &o, err, sizeof(err)), 0);
    assert_int_equal(ingest_source_start(s, err, sizeof(err)), 0);
    ingest_pair *p;
    int n = 0, rc, max_queue = 0;
    while ((rc = ingest_source_pop(s, &p, 5000)) != INGEST_EOF) {
        assert_int_equal(rc, 0);
        assert_int_equal(p->seq, (uint64_t)n);
        assert_int_equal(media_color_index(p->rgb[0], p->height, p->width), 30 * n);
        n++;
        ingest_pair_free(p);
        media_sleep_ms(60); /* a slow consumer */
        ingest_stats st;
        ingest_source_stats(s, &st);
        if (st.queue_len > max_queue)
            max_queue = st.queue_len;
        assert_int_equal(st.pairs_produced, st.pairs_popped + st.pairs_dropped + (uint64_t)st.queue_len);
    }
    ingest_stats st;
    ingest_source_stats(s, &st);
    assert_int_equal(n, 10);
    assert_int_equal(st.pairs_dropped, 0);
    assert_int_equal(st.pairs_produced, 10);
    assert_true(max_queue <= 2);
    assert_int_equal(ingest_source_state(s), INGEST_STATE_ENDED);
    ingest_source_destroy(s);
}

static void test_drop_oldest_keeps_newest(void **state)
{
    (void)state;
    char url[512];
    path(url, sizeof(url), "ten.mp4");
    ingest_options o;
    base_opts(&o);
    o.queue_capacity = 3;
    o.queue_policy = INGEST_QUEUE_DROP_OLDEST; /* what a live source does */
    ingest_source *s;
    char err[256];
    assert_int_equal(ingest_source_create(&s, url, &o, err, sizeof(err)), 0);
    assert_int_equal(ingest_source_start(s, err, sizeof(err)), 0);
    int64_t end = media_now_ms() + 30000;
    while (ingest_source_state(s) != INGEST_STATE_ENDED && media_now_ms() < end)
        media_sleep_ms(20);
    ingest_stats st;
    ingest_source_stats(s, &st);
    assert_int_equal(st.pairs_produced, 10);
    assert_int_equal(st.pairs_dropped, 7);
    assert_int_equal(st.queue_len, 3);
    ingest_pair *p;
    for (int k = 7; k < 10; k++) {
        assert_int_equal(ingest_source_pop(s, &p, 0), 0);
        assert_int_equal(p->seq, (uint64_t)k);
        assert_int_equal(media_color_index(p->rgb[0], p->height, p->width), 30 * k);
        ingest_pair_free(p);
    }
    assert_int_equal(ingest_source_pop(s, &p, 0), INGEST_EOF);
    ingest_source_destroy(s);
}

typedef struct { ingest_source *s; int rc; } popper;
static void *pop_forever(void *arg)
{
    popper *pp = arg;
    ingest_pair *p = NULL;
    pp->rc = ingest_source_pop(pp->s, &p, -1);
    ingest_pair_free(p);
    return NULL;
}

static void test_wake_and_lifecycle(void **state)
{
    (void)state;
    char url[512], err[256];
    path(url, sizeof(url), "ten.mp4");
    ingest_options o;
    base_opts(&o);
    ingest_source *s;
    assert_int_equal(ingest_source_create(&s, url, &o, err, sizeof(err)), 0);
    assert_int_equal(ingest_source_state(s), INGEST_STATE_IDLE);
    ingest_info info;
    assert_int_equal(ingest_source_info(s, &info), INGEST_EAGAIN);
    /* not started: a blocked consumer is released by wake */
    popper pp = {s, 1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, pop_forever, &pp), 0);
    media_sleep_ms(100);
    ingest_source_wake(s);
    pthread_join(th, NULL);
    assert_int_equal(pp.rc, INGEST_EAGAIN);
    ingest_pair *p;
    assert_int_equal(ingest_source_pop(s, &p, 0), INGEST_EAGAIN);
    assert_int_equal(ingest_source_start(s, err, sizeof(err)), 0);
    assert_int_equal(ingest_source_start(s, err, sizeof(err)), INGEST_ESTATE);
    assert_non_null(strstr(err, "already"));
    /* stop while the file source is blocked on a full queue, then stop again */
    media_sleep_ms(300);
    ingest_source_stop(s);
    ingest_source_stop(s);
    assert_int_equal(ingest_source_state(s), INGEST_STATE_ENDED);
    int popped = 0;
    while (ingest_source_pop(s, &p, 0) == 0) {
        popped++;
        ingest_pair_free(p);
    }
    assert_true(popped >= 1 && popped <= 4);
    assert_int_equal(ingest_source_pop(s, &p, 100), INGEST_EOF);
    ingest_stats st;
    ingest_source_stats(s, &st);
    assert_int_equal(st.pairs_produced, st.pairs_popped + st.pairs_dropped);
    ingest_source_destroy(s);
    /* created and destroyed without ever starting */
    assert_int_equal(ingest_source_create(&s, url, &o, err, sizeof(err)), 0);
    ingest_source_destroy(s);
    ingest_source_destroy(NULL);
}

/* ---- images: pixel-exact against the upstream processors ------------------------------ */

static void write_png_from_npy(const char *npy, int frame, const char *png)
{
    char err[256];
    npy_array *a = npy_load(npy, err, sizeof(err));
    if (!a)
        fail_msg("%s", err);
    int h = (int)a->shape[a->ndim - 3], w = (int)a->shape[a->ndim - 2];
    size_t fb = (size_t)h * w * 3;
    char raw[512];
    snprintf(raw, sizeof(raw), "%s.rgb", png);
    assert_int_equal(media_write_file(raw, npy_u8(a) + (size_t)frame * fb, fb), 0);
    assert_int_equal(media_sh("ffmpeg -nostdin -hide_banner -loglevel error -y -f rawvideo "
                              "-pix_fmt rgb24 -s %dx%d -i '%s' -frames:v 1 '%s'", w, h, raw, png), 0);
    npy_free(a);
}

static void assert_pair_equals_npy(const ingest_pair *p, const char *npy, int f0, int f1)
{
    char err[256];
    npy_array *a = npy_load(npy, err, sizeof(err));
    if (!a)
        fail_msg("%s", err);
    assert_int_equal(p->height, a->shape[1]);
    assert_int_equal(p->width, a->shape[2]);
    size_t fb = (size_t)p->height * p->width * 3;
    assert_memory_equal(p->rgb[0], npy_u8(a) + (size_t)f0 * fb, fb);
    assert_memory_equal(p->rgb[1], npy_u8(a) + (size_t)f1 * fb, fb);
    npy_free(a);
}

static void test_image_exact(void **state)
{
    (void)state;
    char png[512], err[256];
    path(png, sizeof(png), "golden.png");
    write_png_from_npy(GOLDEN "input_image_hwc_u8.npy", 0, png);
    ingest_options o;
    ingest_options_init(&o);
    snprintf(o.protocols, sizeof(o.protocols), "file");
    ingest_pair *p;
    int rc = ingest_image_load(png, &o, &p, err, sizeof(err));
    if (rc)
        fail_msg("%s", err);
    assert_true(p->is_image);
    assert_true(p->repeated);
    assert_int_equal(p->grid_t, 1);
    assert_int_equal(p->grid_h, 14);
    assert_int_equal(p->grid_w, 20);
    assert_int_equal(p->tokens, 70);
    assert_pair_equals_npy(p, GOLDEN "img_image_resized_thwc_u8.npy", 0, 1);
    ingest_pair_free(p);
    /* the image as a source, in both sampling modes: one pair, the image rule */
    for (int mode = 0; mode < 2; mode++) {
        o.sampling = mode ? INGEST_SAMPLE_UPSTREAM : INGEST_SAMPLE_PTS;
        ingest_source *s;
        assert_int_equal(ingest_source_create(&s, png, &o, err, sizeof(err)), 0);
        assert_int_equal(ingest_source_start(s, err, sizeof(err)), 0);
        rc = ingest_source_pop(s, &p, 20000);
        if (rc) {
            ingest_source_last_error(s, err, sizeof(err));
            fail_msg("image source, mode %d: %s", mode, err);
        }
        assert_true(p->is_image);
        assert_pair_equals_npy(p, GOLDEN "img_image_resized_thwc_u8.npy", 0, 1);
        ingest_pair_free(p);
        assert_int_equal(ingest_source_pop(s, &p, 20000), INGEST_EOF);
        assert_int_equal(ingest_source_state(s), INGEST_STATE_ENDED);
        ingest_info info;
        assert_int_equal(ingest_source_info(s, &info), 0);
        assert_true(info.is_image);
        ingest_source_destroy(s);
    }
    o.sampling = INGEST_SAMPLE_PTS;
    /* the same bytes from memory: no file access involved */
    size_t len;
    void *bytes = media_read_file(png, &len);
    assert_non_null(bytes);
    ingest_options mem;
    ingest_options_init(&mem); /* default policy: files not allowed, memory still fine */
    rc = ingest_image_decode(bytes, len, &mem, &p, err, sizeof(err));
    if (rc)
        fail_msg("%s", err);
    assert_pair_equals_npy(p, GOLDEN "img_image_resized_thwc_u8.npy", 0, 1);
    ingest_pair_free(p);
    /* truncated and garbage bytes fail cleanly */
    rc = ingest_image_decode(bytes, len / 3, &mem, &p, err, sizeof(err));
    if (rc == 0)
        ingest_pair_free(p); /* a truncated PNG may still decode partially; must not crash */
    char junk[4096];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (char)(i * 131 + 7);
    assert_int_not_equal(ingest_image_decode(junk, sizeof(junk), &mem, &p, err, sizeof(err)), 0);
    assert_null(p);
    assert_non_null(strstr(err, "image"));
    assert_int_equal(ingest_image_decode(junk, 0, &mem, &p, err, sizeof(err)), INGEST_EINVAL);
    /* a file is refused under the default policy */
    assert_int_equal(ingest_image_load(png, &mem, &p, err, sizeof(err)), INGEST_EPERM);
    free(bytes);
}

static void test_video_exact_and_sequence(void **state)
{
    (void)state;
    /* the golden 4-frame video as lossless PNG frames, then as a lossless 2 fps clip */
    char pat[512], mkv[512], err[256];
    for (int f = 0; f < 4; f++) {
        char png[512], name[64];
        snprintf(name, sizeof(name), "vid_%04d.png", f + 1);
        path(png, sizeof(png), name);
        write_png_from_npy(GOLDEN "input_video_thwc_u8.npy", f, png);
    }
    path(pat, sizeof(pat), "vid_%04d.png");
    path(mkv, sizeof(mkv), "golden_video.mkv");
    assert_int_equal(media_sh("ffmpeg -nostdin -hide_banner -loglevel error -y -framerate 2 "
                              "-i '%s' -c:v png '%s'", pat, mkv), 0);
    ingest_options o;
    base_opts(&o);
    /* upstream whole-file mode: same frames, size and timestamps as transformers */
    o.sampling = INGEST_SAMPLE_UPSTREAM;
    ingest_source *s;
    ingest_pair *p;
    for (int mode = 0; mode < 3; mode++) {
        const char *url = mode == 2 ? pat : mkv;
        o.sampling = mode == 0 ? INGEST_SAMPLE_UPSTREAM : INGEST_SAMPLE_PTS;
        o.sequence_fps = 2;
        int rc = ingest_source_create(&s, url, &o, err, sizeof(err));
        if (rc)
            fail_msg("%s", err);
        assert_int_equal(ingest_source_start(s, err, sizeof(err)), 0);
        for (int k = 0; k < 2; k++) {
            rc = ingest_source_pop(s, &p, 20000);
            if (rc) {
                ingest_source_last_error(s, err, sizeof(err));
                fail_msg("mode %d pair %d: rc %d (%s)", mode, k, rc, err);
            }
            assert_pair_equals_npy(p, GOLDEN "vid_video_resized_thwc_u8.npy", 2 * k, 2 * k + 1);
            assert_true(fabs(p->timestamp - (0.25 + k)) < 1e-9);
            char buf[32];
            ingest_format_timestamp(p->timestamp, buf, sizeof(buf));
            assert_string_equal(buf, k == 0 ? "<0.2 seconds>" : "<1.2 seconds>");
            assert_int_equal(p->grid_h, 6);
            assert_int_equal(p->grid_w, 8);
            ingest_pair_free(p);
        }
        assert_int_equal(ingest_source_pop(s, &p, 20000), INGEST_EOF);
        ingest_info info;
        assert_int_equal(ingest_source_info(s, &info), 0);
        assert_false(info.is_image);
        ingest_source_destroy(s);
    }
}

/* ---- setup --------------------------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    if (media_tmpdir(g_dir, sizeof(g_dir)) != 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    media_rmtree(g_dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codec_h264_mp4),
        cmocka_unit_test(test_codec_hevc_mkv),
        cmocka_unit_test(test_codec_vp9_webm),
        cmocka_unit_test(test_codec_av1_mkv),
        cmocka_unit_test(test_codec_mjpeg_avi),
        cmocka_unit_test(test_codec_h264_ts),
        cmocka_unit_test(test_skip_nonref_same_samples),
        cmocka_unit_test(test_upstream_sampling_table),
        cmocka_unit_test(test_vfr),
        cmocka_unit_test(test_odd_size_and_count),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_missing_timestamps),
        cmocka_unit_test(test_mpegts_wraparound),
        cmocka_unit_test(test_mpegts_discontinuity),
        cmocka_unit_test(test_start_offset),
        cmocka_unit_test(test_loop),
        cmocka_unit_test(test_realtime_pacing),
        cmocka_unit_test(test_backpressure_loses_nothing),
        cmocka_unit_test(test_drop_oldest_keeps_newest),
        cmocka_unit_test(test_wake_and_lifecycle),
        cmocka_unit_test(test_image_exact),
        cmocka_unit_test(test_video_exact_and_sequence),
    };
    return cmocka_run_group_tests_name("ingest_files", tests, setup, teardown);
}
