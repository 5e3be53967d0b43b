/* test_ingest_net.c — network sources against real servers on 127.0.0.1:
 *  - RTSP (GStreamer's RTSP server, tests/support/media_rtsp_server.py) over TCP and UDP: the
 *    server is killed mid-stream and restarted; the source must go live -> stalled ->
 *    reconnecting -> live, media time must keep growing across the outage, counters add up;
 *  - HTTP live MPEG-TS (ffmpeg's HTTP server mode), also killed and restarted;
 *  - HTTP progressive file and HLS VOD (python3 -m http.server): every frame, exactly;
 *  - an HLS playlist served over HTTP that points at a local file: refused by the policy;
 *  - UDP MPEG-TS pushed by ffmpeg, with the sender stopping and coming back.
 * Every server is started in its own process group and killed at the end, pass or fail. */
#include "ingest/ingest.h"
#include "tests/support/media.h"

#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#define FPS 25

static char g_dir[256];
static char g_mp4[512], g_ts[512];

/* ---- recording a source's life ------------------------------------------------------- */

typedef struct rec {
    pthread_mutex_t mu;
    int states[256];
    int nstates;
    char details[256][96];
} rec;

static void on_state(void *user, ingest_source *src, ingest_state old, ingest_state now,
                     const char *detail)
{
    (void)src;
    (void)old;
    rec *r = user;
    pthread_mutex_lock(&r->mu);
    if (r->nstates < 256) {
        snprintf(r->details[r->nstates], sizeof(r->details[0]), "%s", detail);
        r->states[r->nstates++] = now;
    }
    pthread_mutex_unlock(&r->mu);
}

static int rec_find(rec *r, int state, int from)
{
    pthread_mutex_lock(&r->mu);
    int at = -1;
    for (int i = from; i < r->nstates; i++)
        if (r->states[i] == state) {
            at = i;
            break;
        }
    pthread_mutex_unlock(&r->mu);
    return at;
}

static void rec_print(rec *r)
{
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->nstates; i++)
        printf("    -> %s (%s)\n", ingest_state_name(r->states[i]), r->details[i]);
    pthread_mutex_unlock(&r->mu);
}

/* Waits until the state occurs at index >= from; returns its index or fails. */
static int wait_state(rec *r, ingest_source *s, int state, int from, int timeout_ms)
{
    int64_t end = media_now_ms() + timeout_ms;
    int at;
    while ((at = rec_find(r, state, from)) < 0) {
        if (media_now_ms() > end) {
            rec_print(r);
            char e[512];
            ingest_source_last_error(s, e, sizeof(e));
            fail_msg("state %s not reached within %d ms (last error: %s)", ingest_state_name(state),
                     timeout_ms, e);
        }
        /* keep the queue moving so a live source never has to drop while we wait */
        media_sleep_ms(20);
    }
    return at;
}

typedef struct seen {
    double t0[512], ts[512], wall[512];
    int c0[512];
    int n;
} seen;

/* Pops pairs until `count` more arrived (or fails after timeout_ms). */
static void take_pairs(ingest_source *s, seen *sn, int count, int timeout_ms)
{
    int64_t end = media_now_ms() + timeout_ms;
    int want = sn->n + count;
    while (sn->n < want) {
        if (media_now_ms() > end) {
            char e[512];
            ingest_source_last_error(s, e, sizeof(e));
            fail_msg("only %d of %d pairs within %d ms (state %s, last error: %s)", sn->n, want,
                     timeout_ms, ingest_state_name(ingest_source_state(s)), e);
        }
        ingest_pair *p;
        int rc = ingest_source_pop(s, &p, 100);
        if (rc == INGEST_EAGAIN)
            continue;
        assert_int_equal(rc, 0);
        assert_true(sn->n < 512);
        sn->t0[sn->n] = p->t0;
        sn->ts[sn->n] = p->timestamp;
        sn->wall[sn->n] = p->wall_time;
        sn->c0[sn->n] = media_color_index(p->rgb[0], p->height, p->width);
        assert_true(p->t1 > p->t0);
        assert_true(p->height % 32 == 0 && p->width % 32 == 0);
        sn->n++;
        ingest_pair_free(p);
    }
}

static void drain(ingest_source *s)
{
    ingest_pair *p;
    while (ingest_source_pop(s, &p, 0) == 0)
        ingest_pair_free(p);
}

static void check_monotonic(const seen *sn, bool live)
{
    for (int i = 1; i < sn->n; i++) {
        if (!(sn->t0[i] > sn->t0[i - 1]))
            fail_msg("media time went from %.3f to %.3f at pair %d", sn->t0[i - 1], sn->t0[i], i);
        if (live)
            assert_true(sn->wall[i] >= sn->wall[i - 1]);
    }
}

static void check_counters(ingest_source *s)
{
    ingest_stats st;
    ingest_source_stats(s, &st);
    assert_int_equal(st.pairs_produced, st.pairs_popped + st.pairs_dropped + (uint64_t)st.queue_len);
    assert_true(st.frames_sampled <= st.frames_decoded);
    assert_true(st.frames_decoded <= st.packets_read + 8);
    assert_true(st.bytes_read > 0);
    printf("    counters: %llu bytes, %llu packets, %llu decoded, %llu sampled, %llu pairs "
           "(%llu popped, %llu dropped), %llu errors, %llu reconnects\n",
           (unsigned long long)st.bytes_read, (unsigned long long)st.packets_read,
           (unsigned long long)st.frames_decoded, (unsigned long long)st.frames_sampled,
           (unsigned long long)st.pairs_produced, (unsigned long long)st.pairs_popped,
           (unsigned long long)st.pairs_dropped, (unsigned long long)st.decode_errors,
           (unsigned long long)st.reconnects);
}

static void live_opts(ingest_options *o, rec *r)
{
    ingest_options_init(o);
    o->min_pixels = 4096;
    o->stall_timeout_ms = 800;
    o->io_timeout_ms = 2500;
    o->reconnect_min_ms = 200;
    o->reconnect_max_ms = 800;
    o->on_state = on_state;
    o->user = r;
}

static void rec_init(rec *r)
{
    memset(r, 0, sizeof(*r));
    pthread_mutex_init(&r->mu, NULL);
}

/* ---- RTSP ---------------------------------------------------------------------------- */

static bool have_rtsp_server(void)
{
    return media_sh("/usr/bin/python3 -c 'import gi, sys; gi.require_version(\"Gst\", \"1.0\"); "
                    "gi.require_version(\"GstRtspServer\", \"1.0\"); "
                    "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
                    "sys.exit(0 if Gst.ElementFactory.find(\"qtdemux\") and "
                    "Gst.ElementFactory.find(\"rtph264pay\") else 1)'") == 0;
}

static pid_t start_rtsp(int port)
{
    char log[512];
    snprintf(log, sizeof(log), "%s/rtsp.log", g_dir);
    pid_t pid = media_spawn(log, "exec /usr/bin/python3 tests/support/media_rtsp_server.py %d '%s'",
                            port, g_mp4);
    assert_true(pid > 0);
    if (!media_wait_tcp(port, 10000)) {
        media_kill(pid, 500);
        fail_msg("RTSP server did not start on port %d (see %s)", port, log);
    }
    return pid;
}

static void rtsp_kill_restart(const char *transport)
{
    if (!have_rtsp_server()) {
        printf("GStreamer RTSP server not installed (tools/install-deps.sh): skipped\n");
        skip();
    }
    int port = media_free_port(SOCK_STREAM);
    pid_t srv = start_rtsp(port);
    char url[128], err[512];
    snprintf(url, sizeof(url), "rtsp://127.0.0.1:%d/cam", port);
    rec r;
    rec_init(&r);
    ingest_options o;
    live_opts(&o, &r);
    snprintf(o.rtsp_transport, sizeof(o.rtsp_transport), "%s", transport);
    ingest_source *s;
    assert_int_equal(ingest_source_create(&s, url, &o, err, sizeof(err)), 0);
    assert_int_equal(ingest_source_start(s, err, sizeof(err)), 0);
    seen *sn = calloc(1, sizeof(*sn));
    assert_non_null(sn);

    int live1 = wait_state(&r, s, INGEST_STATE_LIVE, 0, 15000);
    take_pairs(s, sn, 3, 15000);
    ingest_info info;
    assert_int_equal(ingest_source_info(s, &info), 0);
    assert_true(info.live);
    assert_string_equal(info.codec, "h264");
    int before = sn->n;
    double t_before = sn->t0[before - 1];

    /* the camera dies */
    media_kill(srv, 2000);
    int stalled = wait_state(&r, s, INGEST_STATE_STALLED, live1, 10000);
    int reconn = wait_state(&r, s, INGEST_STATE_RECONNECTING, stalled, 10000);
    drain(s);
    media_sleep_ms(700); /* a few failed attempts against a closed port */
    /* and comes back on the same address */
    srv = start_rtsp(port);
    int live2 = wait_state(&r, s, INGEST_STATE_LIVE, reconn, 20000);
    int n_before_restart = sn->n;
    take_pairs(s, sn, 3, 15000);
    printf("RTSP/%s states:\n", transport);
    rec_print(&r);
    assert_true(live1 < stalled && stalled < reconn && reconn < live2);
    ingest_stats st;
    ingest_source_stats(s, &st);
    assert_true(st.reconnects >= 1);
    check_monotonic(sn, true);
    /* media time continued across the outage: the restarted server starts its file over at
     * frame 0 but the pairs' media times are later than everything before */
    assert_true(sn->t0[n_before_restart] > t_before);
    bool restarted_content = false;
    for (int i = n_before_restart; i < sn->n; i++)
        if (sn->c0[i] < sn->c0[before - 1])
            restarted_content = true;
    assert_true(restarted_content);
    /* within one connection, media time follows the stream's own clock */
    for (int i = 1; i < before; i++) {
        double dm = sn->t0[i] - sn->t0[i - 1];
        double dc = (sn->c0[i] - sn->c0[i - 1]) / (double)FPS;
        assert_true(fabs(dm - dc) < 0.2);
    }
    check_counters(s);
    ingest_source_destroy(s);
    media_kill(srv, 2000);
    assert_int_equal(r.states[r.nstates - 1], INGEST_STATE_ENDED);
    free(sn);
}

static void test_rtsp_tcp_kill_restart(void **state) { (void)state; rtsp_kill_restart("tcp"); }
static void test_rtsp_udp_kill_restart(void **state) { (void)state; rtsp_kill_restart("udp"); }

/* ---- HTTP ---------------------------------------------------------------------------- */

static pid_t start_http_live(int port)
{
    char log[512];
    snprintf(log, sizeof(log), "%s/http_live.log", g_dir);
    pid_t pid = media_spawn(log, "exec ffmpeg -nostdin -hide_banner -loglevel error -re -i '%s' "
                                 "-c copy -f mpegts -listen 1 http://127.0.0.1:%d/live.ts",
                            g_ts, port);
    assert_true(pid > 0);
    return pid;
}

static void test_http_live_kill_restart(void **state)
{
    (void)state;
    int port = media_free_port(SOCK_STREAM);
    pid_t srv = start_http_live(port);
    media_sleep_ms(300);
    char url[128], err[512];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/live.ts", port);
    rec r;
    rec_init(&r);
    ingest_options o;
    live_opts(&o, &r);
    ingest_source *s;
    assert_int_equal(ingest_source_create(&s, url, &o, err, sizeof(err)), 0);
    assert_int_equal(ingest_source_start(s, err, sizeof(err)), 0);
    seen *sn = calloc(1, sizeof(*sn));
    int live1 = wait_state(&r, s, INGEST_STATE_LIVE, 0, 15000);
    take_pairs(s, sn, 2, 15000);
    ingest_info info;
    assert_int_equal(ingest_source_info(s, &info), 0);
    assert_true(info.live); /* no duration: a live HTTP stream */
    media_kill(srv, 2000);
    int stalled = wait_state(&r, s, INGEST_STATE_STALLED, live1, 10000);
    int reconn = wait_state(&r, s, INGEST_STATE_RECONNECTING, stalled, 10000);
    drain(s);
    srv = start_http_live(port);
    int live2 = wait_state(&r, s, INGEST_STATE_LIVE, reconn, 20000);
    take_pairs(s, sn, 2, 15000);
    printf("HTTP live states:\n");
    rec_print(&r);
    assert_true(live1 < stalled && stalled < reconn && reconn < live2);
    check_monotonic(sn, true);
    check_counters(s);
    ingest_source_destroy(s);
    media_kill(srv, 2000);
    free(sn);
}

static pid_t g_http = -1;
static int g_http_port;

static void start_file_server(void)
{
    if (g_http > 0)
        return;
    g_http_port = media_free_port(SOCK_STREAM);
    char log[512];
    snprintf(log, sizeof(log), "%s/http.log", g_dir);
    g_http = media_spawn(log, "exec /usr/bin/python3 -m http.server %d --bind 127.0.0.1 "
                              "--directory '%s'", g_http_port, g_dir);
    assert_true(g_http > 0);
    assert_true(media_wait_tcp(g_http_port, 10000));
}

static void expect_all_frames(const char *url, const ingest_options *o, int npairs)
{
    char err[512];
    ingest_source *s;
    assert_int_equal(ingest_source_create(&s, url, o, err, sizeof(err)), 0);
    assert_int_equal(ingest_source_start(s, err, sizeof(err)), 0);
    ingest_pair *p;
    int n = 0, rc;
    int64_t end = media_now_ms() + 60000;
    while ((rc = ingest_source_pop(s, &p, 200)) != INGEST_EOF && media_now_ms() < end) {
        if (rc)
            continue;
        int c0 = media_color_index(p->rgb[0], p->height, p->width);
        int c1 = media_color_index(p->rgb[1], p->height, p->width);
        /* 2 fps from 25 fps: frames at 0, 0.5, 1.0 s ... = 0, 12.5 -> 13, 25, 38, ... */
        int w0 = (int)ceil(n * FPS - 1e-9), w1 = (int)ceil(n * FPS + FPS / 2.0 - 1e-9);
        if (c0 != w0 || c1 != w1)
            fail_msg("%s pair %d: frames %d,%d; expected %d,%d", url, n, c0, c1, w0, w1);
        assert_true(fabs(p->t0 - n) < 1e-3);
        assert_true(p->wall_time == 0);
        n++;
        ingest_pair_free(p);
    }
    assert_int_equal(rc, INGEST_EOF);
    assert_int_equal(n, npairs);
    ingest_info info;
    assert_int_equal(ingest_source_info(s, &info), 0);
    assert_false(info.live);
    assert_int_equal(ingest_source_state(s), INGEST_STATE_ENDED);
    ingest_stats st;
    ingest_source_stats(s, &st);
    assert_int_equal(st.pairs_dropped, 0);
    ingest_source_destroy(s);
}

static void test_http_progressive_and_hls(void **state)
{
    (void)state;
    char src[512], out[512], pl[512];
    media_color_source(src, sizeof(src), 96, 64, "25", 100000);
    snprintf(out, sizeof(out), "%s/prog.mp4", g_dir);
    assert_int_equal(media_sh("ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i \"%s\" "
                              "-frames:v 150 -c:v libx264 -pix_fmt yuv420p -movflags +faststart '%s'",
                              src, out), 0);
    snprintf(pl, sizeof(pl), "%s/hls/vod.m3u8", g_dir);
    assert_int_equal(media_sh("mkdir -p '%s/hls' && ffmpeg -nostdin -hide_banner -loglevel error "
                              "-y -i '%s' -c copy -f hls -hls_time 2 -hls_playlist_type vod '%s'",
                              g_dir, out, pl), 0);
    start_file_server();
    ingest_options o;
    ingest_options_init(&o);
    o.min_pixels = 4096;
    char url[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/prog.mp4", g_http_port);
    expect_all_frames(url, &o, 6);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/hls/vod.m3u8", g_http_port);
    expect_all_frames(url, &o, 6);
    printf("HTTP progressive and HLS VOD: every expected frame\n");
    /* a wrong URL fails at once instead of being retried forever */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/nope.mp4", g_http_port);
    char err[512];
    ingest_source *s;
    assert_int_equal(ingest_source_create(&s, url, &o, err, sizeof(err)), 0);
    assert_int_equal(ingest_source_start(s, err, sizeof(err)), 0);
    ingest_pair *p;
    assert_int_equal(ingest_source_pop(s, &p, 10000), INGEST_EOF);
    assert_int_equal(ingest_source_state(s), INGEST_STATE_FAILED);
    ingest_source_last_error(s, err, sizeof(err));
    printf("missing HTTP file: %s\n", err);
    assert_non_null(strstr(err, "404"));
    ingest_stats st;
    ingest_source_stats(s, &st);
    assert_int_equal(st.reconnects, 0);
    ingest_source_destroy(s);
}

/* A playlist on a web server that names a local file: the default policy (network only)
 * must keep FFmpeg from opening it. */
static void test_hls_pointing_at_local_file_refused(void **state)
{
    (void)state;
    start_file_server();
    char m3u8[512], list[1024];
    snprintf(m3u8, sizeof(m3u8), "%s/evil.m3u8", g_dir);
    snprintf(list, sizeof(list),
             "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
             "#EXTINF:10.0,\nfile://%s\n#EXT-X-ENDLIST\n", g_ts);
    assert_int_equal(media_write_file(m3u8, list, strlen(list)), 0);
    char url[256], err[512];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/evil.m3u8", g_http_port);
    ingest_options o;
    ingest_options_init(&o);
    o.max_reconnects = 0;
    o.min_pixels = 4096;
    ingest_source *s;
    assert_int_equal(ingest_source_create(&s, url, &o, err, sizeof(err)), 0);
    assert_int_equal(ingest_source_start(s, err, sizeof(err)), 0);
    ingest_pair *p;
    int rc, pairs = 0;
    int64_t end = media_now_ms() + 30000;
    while ((rc = ingest_source_pop(s, &p, 200)) != INGEST_EOF && media_now_ms() < end)
        if (rc == 0) {
            pairs++;
            ingest_pair_free(p);
        }
    assert_int_equal(pairs, 0);
    assert_int_equal(ingest_source_state(s), INGEST_STATE_FAILED);
    ingest_source_last_error(s, err, sizeof(err));
    printf("playlist naming a local file: %s\n", err);
    ingest_stats st;
    ingest_source_stats(s, &st);
    assert_int_equal(st.frames_decoded, 0);
    ingest_source_destroy(s);
}

/* ---- UDP ----------------------------------------------------------------------------- */

static pid_t start_udp_sender(int port)
{
    char log[512];
    snprintf(log, sizeof(log), "%s/udp.log", g_dir);
    return media_spawn(log, "exec ffmpeg -nostdin -hide_banner -loglevel error -re -i '%s' -c copy "
                            "-f mpegts 'udp://127.0.0.1:%d?pkt_size=1316'", g_ts, port);
}

static void test_udp_mpegts_sender_restart(void **state)
{
    (void)state;
    int port = media_free_port(SOCK_DGRAM);
    char url[128], err[512];
    snprintf(url, sizeof(url), "udp://127.0.0.1:%d", port);
    rec r;
    rec_init(&r);
    ingest_options o;
    live_opts(&o, &r);
    ingest_source *s;
    assert_int_equal(ingest_source_create(&s, url, &o, err, sizeof(err)), 0);
    assert_int_equal(ingest_source_start(s, err, sizeof(err)), 0);
    media_sleep_ms(300); /* our socket is bound before the sender starts */
    pid_t tx = start_udp_sender(port);
    seen *sn = calloc(1, sizeof(*sn));
    int live1 = wait_state(&r, s, INGEST_STATE_LIVE, 0, 15000);
    take_pairs(s, sn, 3, 15000);
    media_kill(tx, 2000);
    int stalled = wait_state(&r, s, INGEST_STATE_STALLED, live1, 10000);
    int reconn = wait_state(&r, s, INGEST_STATE_RECONNECTING, stalled, 10000);
    drain(s);
    tx = start_udp_sender(port);
    int live2 = wait_state(&r, s, INGEST_STATE_LIVE, reconn, 20000);
    take_pairs(s, sn, 2, 15000);
    printf("UDP MPEG-TS states:\n");
    rec_print(&r);
    assert_true(live1 < stalled && stalled < reconn && reconn < live2);
    check_monotonic(sn, true);
    check_counters(s);
    ingest_source_destroy(s);
    media_kill(tx, 2000);
    free(sn);
}

/* ---- setup --------------------------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    if (media_tmpdir(g_dir, sizeof(g_dir)) != 0)
        return -1;
    char src[512];
    media_color_source(src, sizeof(src), 128, 96, "25", 100000);
    snprintf(g_mp4, sizeof(g_mp4), "%s/cam.mp4", g_dir);
    snprintf(g_ts, sizeof(g_ts), "%s/cam.ts", g_dir);
    /* 40 s, one keyframe per second, no B-frames: a typical camera stream */
    if (media_sh("ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i \"%s\" -frames:v 1000 "
                 "-c:v libx264 -preset veryfast -pix_fmt yuv420p -g 25 -bf 0 '%s' && "
                 "ffmpeg -nostdin -hide_banner -loglevel error -y -i '%s' -c copy -f mpegts '%s'",
                 src, g_mp4, g_mp4, g_ts) != 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    media_kill(g_http, 2000);
    g_http = -1;
    media_kill_all();
    media_rmtree(g_dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rtsp_tcp_kill_restart),
        cmocka_unit_test(test_rtsp_udp_kill_restart),
        cmocka_unit_test(test_http_live_kill_restart),
        cmocka_unit_test(test_http_progressive_and_hls),
        cmocka_unit_test(test_hls_pointing_at_local_file_refused),
        cmocka_unit_test(test_udp_mpegts_sender_restart),
    };
    return cmocka_run_group_tests_name("ingest_net", tests, setup, teardown);
}
