/* test_ingest_robust.c — bad input never takes the process down: corrupt, truncated, empty
 * and non-video files end in a clean ENDED/FAILED state with counted errors and a message
 * naming the source; the protocol/device policy refuses local-file tricks before any I/O and
 * FFmpeg enforces it on nested opens; option errors name the field; stop() never hangs on a
 * source that is connecting or waiting. Runs under ASan+UBSan too. */
#include "ingest/ingest.h"
#include "tests/support/media.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

static char g_dir[256];

static void path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", g_dir, name);
}

static void file_opts(ingest_options *o)
{
    ingest_options_init(o);
    snprintf(o->protocols, sizeof(o->protocols), "file");
    o->min_pixels = 4096;
    o->io_timeout_ms = 3000;
}

typedef struct outcome {
    int pairs;
    ingest_state state;
    ingest_stats st;
    char err[512];
} outcome;

static outcome run_to_end(const char *url, const ingest_options *o)
{
    outcome r;
    memset(&r, 0, sizeof(r));
    ingest_source *s;
    char err[512];
    int rc = ingest_source_create(&s, url, o, err, sizeof(err));
    if (rc)
        fail_msg("create %s: %s", url, err);
    assert_int_equal(ingest_source_start(s, err, sizeof(err)), 0);
    ingest_pair *p;
    int64_t end = media_now_ms() + 60000;
    while (media_now_ms() < end && (rc = ingest_source_pop(s, &p, 200)) != INGEST_EOF) {
        if (rc == 0) {
            /* every pair that comes out is well formed, even from damaged input */
            assert_true(p->height > 0 && p->height % 32 == 0);
            assert_true(p->width > 0 && p->width % 32 == 0);
            assert_true(p->timestamp >= 0 && isfinite(p->timestamp));
            r.pairs++;
            ingest_pair_free(p);
        }
    }
    assert_int_equal(rc, INGEST_EOF);
    r.state = ingest_source_state(s);
    ingest_source_stats(s, &r.st);
    ingest_source_last_error(s, r.err, sizeof(r.err));
    ingest_source_destroy(s);
    assert_int_equal(r.st.pairs_produced, r.st.pairs_popped + r.st.pairs_dropped);
    return r;
}

static void make_clip(const char *name, int frames, const char *extra)
{
    char src[512], out[512];
    media_color_source(src, sizeof(src), 96, 64, "30", 100000);
    path(out, sizeof(out), name);
    assert_int_equal(media_sh("ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i \"%s\" "
                              "-frames:v %d %s '%s'", src, frames, extra, out), 0);
}

/* Overwrites n ranges of the file (after skip bytes, and after the first occurrence of
 * marker when given: the media payload, not the index) with deterministic garbage. */
static void splice_garbage(const char *file, size_t skip, int ranges, size_t len,
                           const char *marker)
{
    size_t n;
    uint8_t *d = media_read_file(file, &n);
    assert_non_null(d);
    if (marker) {
        size_t ml = strlen(marker), at = 0;
        while (at + ml < n && memcmp(d + at, marker, ml) != 0)
            at++;
        assert_true(at + ml < n);
        skip += at + ml;
    }
    assert_true(n > skip + (size_t)ranges * len);
    uint32_t x = 12345;
    for (int r = 0; r < ranges; r++) {
        size_t at = skip + (n - skip - len) * (size_t)(r + 1) / (size_t)(ranges + 1);
        for (size_t i = 0; i < len; i++) {
            x = x * 1664525u + 1013904223u;
            d[at + i] = (uint8_t)(x >> 24);
        }
    }
    assert_int_equal(media_write_file(file, d, n), 0);
    free(d);
}

/* ---- corrupt input ------------------------------------------------------------------- */

static void test_truncated_file(void **state)
{
    (void)state;
    make_clip("full.mp4", 150, "-c:v libx264 -pix_fmt yuv420p -movflags +faststart");
    char full[512], cut[512];
    path(full, sizeof(full), "full.mp4");
    path(cut, sizeof(cut), "cut.mp4");
    size_t n;
    uint8_t *d = media_read_file(full, &n);
    assert_non_null(d);
    assert_int_equal(media_write_file(cut, d, n * 45 / 100), 0);
    free(d);
    ingest_options o;
    file_opts(&o);
    outcome r = run_to_end(cut, &o);
    printf("truncated mp4: %d pairs, state %s, %llu decode errors\n", r.pairs,
           ingest_state_name(r.state), (unsigned long long)r.st.decode_errors);
    assert_int_equal(r.state, INGEST_STATE_ENDED);
    assert_true(r.pairs >= 1 && r.pairs < 3); /* the part before the cut, no more */
}

static void test_garbage_in_ts(void **state)
{
    (void)state;
    make_clip("clean.ts", 300, "-c:v libx264 -pix_fmt yuv420p -g 15 -f mpegts");
    char ts[512];
    path(ts, sizeof(ts), "clean.ts");
    ingest_options o;
    file_opts(&o);
    outcome clean = run_to_end(ts, &o);
    assert_int_equal(clean.st.decode_errors, 0);
    splice_garbage(ts, 4096, 6, 3000, NULL);
    outcome r = run_to_end(ts, &o);
    printf("TS with garbage: %d pairs (clean %d), %llu decode errors, state %s\n", r.pairs,
           clean.pairs, (unsigned long long)r.st.decode_errors, ingest_state_name(r.state));
    assert_int_equal(r.state, INGEST_STATE_ENDED);
    assert_true(r.st.decode_errors > 0);
    assert_true(r.pairs >= clean.pairs / 2);
}

static void test_garbage_in_mp4_and_mjpeg(void **state)
{
    (void)state;
    make_clip("dirty.mp4", 150, "-c:v libx264 -pix_fmt yuv420p -g 10 -movflags +faststart");
    make_clip("dirty.avi", 150, "-c:v mjpeg -q:v 3 -pix_fmt yuvj420p");
    const char *names[] = {"dirty.mp4", "dirty.avi"};
    const char *payload[] = {"mdat", "movi"};
    for (int i = 0; i < 2; i++) {
        char f[512];
        path(f, sizeof(f), names[i]);
        splice_garbage(f, 2000, 8, 400, payload[i]);
        ingest_options o;
        file_opts(&o);
        outcome r = run_to_end(f, &o);
        printf("%s with garbage: %d pairs, %llu decode errors, state %s (%s)\n", names[i], r.pairs,
               (unsigned long long)r.st.decode_errors, ingest_state_name(r.state), r.err);
        assert_true(r.state == INGEST_STATE_ENDED || r.state == INGEST_STATE_FAILED);
        assert_true(r.st.decode_errors > 0);
    }
}

static void test_empty_and_non_video(void **state)
{
    (void)state;
    char empty[512], text[512], missing[512], audio[512];
    path(empty, sizeof(empty), "empty.mp4");
    path(text, sizeof(text), "notes.mp4");
    path(missing, sizeof(missing), "missing.mp4");
    path(audio, sizeof(audio), "tone.mka");
    assert_int_equal(media_write_file(empty, "", 0), 0);
    const char *words = "this is not a video, just some words an operator saved.\n";
    assert_int_equal(media_write_file(text, words, strlen(words)), 0);
    assert_int_equal(media_sh("ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi "
                              "-i sine=d=1 '%s'", audio), 0);
    ingest_options o;
    file_opts(&o);
    const char *urls[] = {empty, text, missing, audio};
    const char *expect[] = {"empty.mp4", "notes.mp4", "missing.mp4", "video"};
    for (int i = 0; i < 4; i++) {
        outcome r = run_to_end(urls[i], &o);
        printf("%s: %s (%s)\n", urls[i], ingest_state_name(r.state), r.err);
        assert_int_equal(r.state, INGEST_STATE_FAILED);
        assert_int_equal(r.pairs, 0);
        if (!strstr(r.err, expect[i]))
            fail_msg("error for %s does not name it: %s", urls[i], r.err);
        assert_int_equal(r.st.reconnects, 0); /* files are not retried */
    }
}

static void test_garbage_image_sequence(void **state)
{
    (void)state;
    /* an image sequence with one unreadable picture in the middle */
    char pat[512], bad[512];
    path(pat, sizeof(pat), "seq_%03d.png");
    assert_int_equal(media_sh("ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi "
                              "-i testsrc2=s=80x60:r=1:d=6 '%s'", pat), 0);
    path(bad, sizeof(bad), "seq_003.png");
    assert_int_equal(media_write_file(bad, "\x89PNG\r\n\x1a\nbroken", 14), 0);
    ingest_options o;
    file_opts(&o);
    o.sequence_fps = 2;
    outcome r = run_to_end(pat, &o);
    printf("image sequence with a broken picture: %d pairs, %llu errors, %s\n", r.pairs,
           (unsigned long long)r.st.decode_errors, ingest_state_name(r.state));
    assert_int_equal(r.state, INGEST_STATE_ENDED);
    assert_true(r.pairs >= 2);
    assert_true(r.st.decode_errors >= 1);
}

/* ---- policy -------------------------------------------------------------------------- */

static void expect_refused(const char *url, const ingest_options *o, const char *needle)
{
    char err[512] = "";
    ingest_source *s = (ingest_source *)0x1;
    int rc = ingest_source_create(&s, url, o, err, sizeof(err));
    if (rc != INGEST_EPERM)
        fail_msg("'%s' was not refused (rc %d)", url, rc);
    assert_null(s);
    if (!strstr(err, needle))
        fail_msg("refusal of '%s' does not say '%s': %s", url, needle, err);
    assert_int_equal(ingest_check_url(url, o, NULL, 0), INGEST_EPERM);
}

static void expect_allowed(const char *url, const ingest_options *o)
{
    char err[512] = "";
    int rc = ingest_check_url(url, o, err, sizeof(err));
    if (rc)
        fail_msg("'%s' was refused: %s", url, err);
}

static void test_protocol_policy(void **state)
{
    (void)state;
    ingest_options def;
    ingest_options_init(&def); /* operator default: network + V4L2 only */
    expect_refused("file:///etc/passwd", &def, "local files are not allowed");
    expect_refused("/etc/passwd", &def, "local files are not allowed");
    expect_refused("relative/clip.mp4", &def, "local files are not allowed");
    expect_refused("concat:/etc/passwd|/etc/group", &def, "'concat:' is refused");
    expect_refused("subfile:,start,0,end,100,:/etc/passwd", &def, "'subfile:' is refused");
    expect_refused("data:text/plain;base64,SGVsbG8=", &def, "'data:' is refused");
    expect_refused("pipe:0", &def, "'pipe:' is refused");
    expect_refused("fd:3", &def, "'fd:' is refused");
    expect_refused("crypto+file:///etc/passwd", &def, "protocol 'file' is not allowed");
    expect_refused("async:http://127.0.0.1/x", &def, "'async:' is refused");
    expect_refused("cache:http://127.0.0.1/x", &def, "'cache:' is refused");
    expect_refused("gopher://127.0.0.1/x", &def, "protocol 'gopher' is not allowed");
    expect_refused("/dev/video0/../../etc/passwd", &def, "'..'");
    expect_refused("v4l2:///dev/sda", &def, "prefix '/dev/video'");
    expect_refused("/dev/sda", &def, "local files are not allowed");
    expect_allowed("rtsp://127.0.0.1:8554/cam", &def);
    expect_allowed("RTSP://127.0.0.1/cam", &def);
    expect_allowed("http://127.0.0.1/live.m3u8", &def);
    expect_allowed("udp://127.0.0.1:5000", &def);
    expect_allowed("/dev/video0", &def);
    expect_allowed("v4l2:///dev/video2", &def);

    ingest_options files;
    ingest_options_init(&files);
    snprintf(files.protocols, sizeof(files.protocols), "file");
    expect_allowed("/tmp/clip.mp4", &files);
    expect_allowed("file:/tmp/clip.mp4", &files);
    expect_refused("http://127.0.0.1/x.mp4", &files, "protocol 'http' is not allowed");
    expect_refused("concat:/a.mp4|/b.mp4", &files, "'concat:' is refused");
    expect_refused("/dev/video0", &files, "V4L2 devices are not allowed");

    /* one-off images follow the same policy */
    ingest_pair *p = NULL;
    char err[256];
    assert_int_equal(ingest_image_load("/etc/hostname", &def, &p, err, sizeof(err)), INGEST_EPERM);
    assert_null(p);
    assert_int_equal(ingest_image_load("subfile:,start,0,end,9,:/etc/hostname", &files, &p, err,
                                       sizeof(err)), INGEST_EPERM);
    /* allowed, but not a still image: a text file (the tty demuxer would "decode" it) and a
     * video are refused by the still-image demuxer list, with a message that says so */
    char text[512], video[512];
    path(text, sizeof(text), "notes.txt");
    assert_int_equal(media_write_file(text, "hello, this is not a picture\n", 29), 0);
    path(video, sizeof(video), "still.mp4");
    make_clip("still.mp4", 4, "-c:v libx264 -pix_fmt yuv420p");
    const char *not_images[] = { text, video };
    for (int i = 0; i < 2; i++) {
        assert_int_equal(ingest_image_load(not_images[i], &files, &p, err, sizeof(err)), INGEST_EIO);
        assert_null(p);
        assert_non_null(strstr(err, "not a still image"));
    }
}

/* FFmpeg applies the allow-list to nested opens too: a local playlist whose segment is an
 * http URL cannot reach the network when only "file" is allowed. */
static void test_policy_enforced_on_nested_opens(void **state)
{
    (void)state;
    char seg[512], m3u8[512];
    path(seg, sizeof(seg), "seg.ts");
    path(m3u8, sizeof(m3u8), "list.m3u8");
    make_clip("seg.ts", 60, "-c:v libx264 -pix_fmt yuv420p -f mpegts");
    int port = media_free_port(1 /* SOCK_STREAM */);
    char list[1024];
    snprintf(list, sizeof(list),
             "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
             "#EXTINF:2.0,\nhttp://127.0.0.1:%d/seg.ts\n#EXT-X-ENDLIST\n", port);
    assert_int_equal(media_write_file(m3u8, list, strlen(list)), 0);
    ingest_options o;
    file_opts(&o);
    outcome r = run_to_end(m3u8, &o);
    printf("local playlist with an http segment: %s (%s)\n", ingest_state_name(r.state), r.err);
    assert_int_equal(r.state, INGEST_STATE_FAILED);
    assert_int_equal(r.pairs, 0);
    /* the same playlist pointing at the local segment works when files are allowed */
    snprintf(list, sizeof(list),
             "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
             "#EXTINF:2.0,\nseg.ts\n#EXT-X-ENDLIST\n");
    assert_int_equal(media_write_file(m3u8, list, strlen(list)), 0);
    r = run_to_end(m3u8, &o);
    assert_int_equal(r.state, INGEST_STATE_ENDED);
    assert_int_equal(r.pairs, 2);
}

static void test_option_errors(void **state)
{
    (void)state;
    struct {
        const char *field;
        void (*set)(ingest_options *);
    } cases[] = {
        {"fps", NULL}, {"queue_capacity", NULL}, {"max_pixels", NULL}, {"rtsp_transport", NULL},
        {"io_timeout_ms", NULL}, {"reconnect_min_ms", NULL}, {"decoder_threads", NULL},
    };
    (void)cases;
    char err[512];
    ingest_options o;
    ingest_source *s = NULL;
    const char *url = "rtsp://127.0.0.1/cam";
#define CHECK_FIELD(mut, needle) do { \
        ingest_options_init(&o); mut; \
        assert_int_equal(ingest_source_create(&s, url, &o, err, sizeof(err)), INGEST_EINVAL); \
        assert_null(s); \
        if (!strstr(err, needle)) fail_msg("error does not name %s: %s", needle, err); \
    } while (0)
    CHECK_FIELD(o.fps = 0, "fps");
    CHECK_FIELD(o.fps = NAN, "fps");
    CHECK_FIELD(o.queue_capacity = 0, "queue_capacity");
    CHECK_FIELD(o.max_pixels = 1000, "max_pixels");
    CHECK_FIELD(o.min_pixels = 1L << 22, "min_pixels");
    CHECK_FIELD(snprintf(o.rtsp_transport, sizeof(o.rtsp_transport), "sctp"), "rtsp_transport");
    CHECK_FIELD(o.io_timeout_ms = 5, "io_timeout_ms");
    CHECK_FIELD(o.reconnect_min_ms = 5000; o.reconnect_max_ms = 100, "reconnect_min_ms");
    CHECK_FIELD(o.decoder_threads = -1, "decoder_threads");
    CHECK_FIELD(o.start_offset = -1, "start_offset");
    CHECK_FIELD(snprintf(o.protocols, sizeof(o.protocols), "file;rm -rf"), "protocols");
    CHECK_FIELD(o.sampling = INGEST_SAMPLE_UPSTREAM, "live source");
    url = "/tmp/x.mp4";
    CHECK_FIELD(snprintf(o.protocols, sizeof(o.protocols), "file"); o.sampling = INGEST_SAMPLE_UPSTREAM; o.loop = true, "loop");
#undef CHECK_FIELD
    ingest_options_init(&o);
    assert_int_equal(ingest_source_create(&s, "", &o, err, sizeof(err)), INGEST_EINVAL);
    assert_non_null(strstr(err, "empty"));
    assert_int_equal(ingest_source_create(&s, "rtsp://a\nb", &o, err, sizeof(err)), INGEST_EINVAL);
    assert_non_null(strstr(err, "control character"));
    ingest_options_set_max_tokens(&o, 64);
    assert_int_equal(o.max_pixels, 64 * 1024);
    assert_true(o.min_pixels <= o.max_pixels);
}

/* ---- lifecycle under trouble --------------------------------------------------------- */

static int g_states[64], g_nstates;
static void on_state(void *user, ingest_source *src, ingest_state old, ingest_state now,
                     const char *detail)
{
    (void)user;
    (void)src;
    (void)old;
    (void)detail;
    if (g_nstates < 64)
        g_states[g_nstates++] = now;
}

static void test_missing_device_and_dead_server(void **state)
{
    (void)state;
    char err[512];
    ingest_options o;
    ingest_options_init(&o);
    o.max_reconnects = 1;
    o.reconnect_min_ms = 50;
    o.reconnect_max_ms = 100;
    /* no V4L2 device on this machine (or a free number): FAILED with a clear message */
    outcome r = run_to_end("/dev/video63", &o);
    assert_int_equal(r.state, INGEST_STATE_FAILED);
    assert_non_null(strstr(r.err, "/dev/video63"));
    printf("missing device: %s\n", r.err);
    /* nothing listens on this port: retried max_reconnects times, then FAILED */
    int port = media_free_port(1);
    char url[128];
    snprintf(url, sizeof(url), "rtsp://127.0.0.1:%d/cam", port);
    g_nstates = 0;
    o.on_state = on_state;
    r = run_to_end(url, &o);
    assert_int_equal(r.state, INGEST_STATE_FAILED);
    assert_non_null(strstr(r.err, "gave up after 2 attempts"));
    assert_int_equal(g_states[0], INGEST_STATE_CONNECTING);
    assert_int_equal(g_states[g_nstates - 1], INGEST_STATE_FAILED);
    printf("dead server: %s\n", r.err);
    /* retrying forever: stop() still returns promptly from the backoff / connect */
    o.max_reconnects = -1;
    o.reconnect_min_ms = 2000;
    o.reconnect_max_ms = 4000;
    ingest_source *s;
    assert_int_equal(ingest_source_create(&s, url, &o, err, sizeof(err)), 0);
    assert_int_equal(ingest_source_start(s, err, sizeof(err)), 0);
    media_sleep_ms(300);
    int64_t t0 = media_now_ms();
    ingest_source_stop(s);
    int64_t stop_ms = media_now_ms() - t0;
    printf("stop() during reconnect backoff took %lld ms\n", (long long)stop_ms);
    assert_true(stop_ms < 1500);
    assert_int_equal(ingest_source_state(s), INGEST_STATE_ENDED);
    ingest_source_destroy(s);
}

static void test_udp_silence_then_stop(void **state)
{
    (void)state;
    /* a UDP source nobody sends to: it waits for data behind the interrupt callback */
    int port = media_free_port(2 /* SOCK_DGRAM */);
    char url[128], err[256];
    snprintf(url, sizeof(url), "udp://127.0.0.1:%d", port);
    ingest_options o;
    ingest_options_init(&o);
    o.io_timeout_ms = 400;
    o.reconnect_min_ms = 50;
    o.reconnect_max_ms = 100;
    ingest_source *s;
    assert_int_equal(ingest_source_create(&s, url, &o, err, sizeof(err)), 0);
    assert_int_equal(ingest_source_start(s, err, sizeof(err)), 0);
    media_sleep_ms(1500);
    ingest_stats st;
    ingest_source_stats(s, &st);
    assert_int_equal(st.pairs_produced, 0);
    /* never opened: after the first failed attempt it says so and retries */
    assert_int_equal(ingest_source_state(s), INGEST_STATE_RECONNECTING);
    char last[512];
    ingest_source_last_error(s, last, sizeof(last));
    printf("silent UDP: %s\n", last);
    assert_non_null(strstr(last, url));
    int64_t t0 = media_now_ms();
    ingest_source_destroy(s);
    assert_true(media_now_ms() - t0 < 1500);
}

static int setup(void **state)
{
    (void)state;
    return media_tmpdir(g_dir, sizeof(g_dir));
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
        cmocka_unit_test(test_truncated_file),
        cmocka_unit_test(test_garbage_in_ts),
        cmocka_unit_test(test_garbage_in_mp4_and_mjpeg),
        cmocka_unit_test(test_empty_and_non_video),
        cmocka_unit_test(test_garbage_image_sequence),
        cmocka_unit_test(test_protocol_policy),
        cmocka_unit_test(test_policy_enforced_on_nested_opens),
        cmocka_unit_test(test_option_errors),
        cmocka_unit_test(test_missing_device_and_dead_server),
        cmocka_unit_test(test_udp_silence_then_stop),
    };
    return cmocka_run_group_tests_name("ingest_robust", tests, setup, teardown);
}
