/* test_daemon_events.c — the real vigild with the demo model (demo/model: a tiny Qwen3-VL trained
 * to answer questions about synthetic shape videos; demo/TASK.md) on the demo clips, so answers
 * can be checked for meaning, not only for form:
 *  - window queries through the daemon: the first pair of clip08 shows a yellow shape, the rest
 *    red: "What color is the shape?" answers "yellow" for {"to_media": 0.9}, "red" otherwise; a
 *    window without frames answers from the prefix alone;
 *  - a standing watch (on every pair, the newest pair only) on a looping, real-time paced clip
 *    whose shape turns from yellow to green publishes watch.answer events and raises an alert each
 *    time the answer becomes "green" (edge-triggered: none for consecutive green answers); a timed watch
 *    (every 1 s) publishes too; removed watches stop;
 *  - several streams at once, one of them a live MPEG-TS source over loopback UDP sent by the ffmpeg
 *    CLI in real time: concurrent questions on all of them get the right colours;
 *  - a loopback RTSP camera (tests/support/media_rtsp_server.py, GStreamer): the right colour. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "tests/test_daemon_util.h"

#define CLIPS "demo/clips"

static td g_d;
static char g_clips[PATH_MAX];

static int setup(void **state) {
    (void)state;
    if (!realpath(CLIPS, g_clips)) {
        fprintf(stderr, "%s is missing (the demo model's clips)\n", CLIPS);
        return -1;
    }
    return td_start_demo(&g_d, "file,udp,rtsp,rtp,tcp");
}

static int teardown(void **state) {
    (void)state;
    return td_stop_and_cleanup(&g_d);
}

/* The answer text (caller frees) of a question, with optional extra request members. */
static char *ask(const char *stream, const char *prompt, const char *extra, cJSON **usage_out) {
    cJSON *r = td_callf(&g_d, 60000, "{\"id\":\"q\",\"op\":\"query\",\"stream\":\"%s\",\"prompt\":\"%s\",\"max_tokens\":6%s%s}",
                        stream, prompt, extra ? "," : "", extra ? extra : "");
    if (!td_ok(r)) {
        char *s = r ? cJSON_PrintUnformatted(r) : NULL;
        fail_msg("query on %s: %s", stream, s ? s : "no reply");
    }
    char *text = strdup(td_str(r, "text"));
    if (usage_out) *usage_out = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(r, "usage"), true);
    cJSON_Delete(r);
    return text;
}

static void test_window_semantics(void **state) {
    (void)state;
    char url[PATH_MAX + 32];
    snprintf(url, sizeof url, "%s/clip08_color_now.mp4", g_clips);
    td_add_stream(&g_d, "c8", url, NULL);
    assert_true(td_wait_state(&g_d, "c8", "ended", 60000));
    assert_true(td_wait_pairs(&g_d, "c8", 8, 60000));
    char *all = ask("c8", "What color is the shape?", NULL, NULL);
    char *first = ask("c8", "What color is the shape?", "\"window\":{\"to_media\":0.9}", NULL);
    char *last = ask("c8", "What color is the shape?", "\"window\":{\"last_seconds\":1}", NULL);
    printf("clip08: whole %s, first pair %s, last second %s\n", all, first, last);
    assert_string_equal(all, "red");
    assert_string_equal(first, "yellow");
    assert_string_equal(last, "red");
    /* a window before the stream's frames: the prefix alone is attended to */
    cJSON *u = NULL;
    char *none = ask("c8", "What color is the shape?", "\"window\":{\"from_wall\":\"2999-01-01T00:00:00Z\"}", &u);
    assert_int_equal((int)td_num(u, "cached_tokens"), 3);   /* <|im_start|>user\n */
    assert_true(td_num(u, "prompt_tokens") < 20);
    cJSON_Delete(u);
    free(all);
    free(first);
    free(last);
    free(none);
    td_remove_stream(&g_d, "c8");
}

/* ---- watches ------------------------------------------------------------------------------------ */

typedef struct ev {
    char topic[96];
    char watch[65];
    char value[32];
    double media_time;
} ev;

static void test_watch_alerts(void **state) {
    (void)state;
    char e[256];
    const char *topics[] = { "watch.", "alert." };
    proto_subscriber *sub = proto_subscriber_connect(g_d.ev, NULL, topics, 2, e, sizeof e);
    assert_non_null(sub);
    media_sleep_ms(300);   /* a SUB socket misses what is published before it is connected */
    char url[PATH_MAX + 32];
    snprintf(url, sizeof url, "%s/clip06_color_now.mp4", g_clips);
    /* yellow for one pair, then green for three; looped at its own pace like a camera */
    td_add_stream(&g_d, "c6", url, "\"options\":{\"loop\":true,\"realtime\":true}");
    cJSON *r = td_call(&g_d,
                       "{\"id\":\"w\",\"op\":\"watch.add\",\"stream\":\"c6\",\"name\":\"greenwatch\","
                       "\"prompt\":\"What color is the shape?\",\"on_pair\":true,\"window\":{\"last_seconds\":0.5},"
                       "\"max_tokens\":4,\"expect\":{\"type\":\"enum\",\"values\":[\"red\",\"green\",\"blue\",\"yellow\"],"
                       "\"alert_on\":[\"green\"]}}", 10000);
    assert_true(td_ok(r));
    assert_string_equal(td_str(r, "watch"), "greenwatch");
    cJSON_Delete(r);
    r = td_call(&g_d, "{\"id\":\"w2\",\"op\":\"watch.add\",\"stream\":\"c6\",\"prompt\":\"What color is the shape?\","
                      "\"every_seconds\":1,\"max_tokens\":4}", 10000);
    assert_true(td_ok(r));
    char timed[65];
    snprintf(timed, sizeof timed, "%s", td_str(r, "watch"));
    cJSON_Delete(r);
    r = td_call(&g_d, "{\"id\":\"w3\",\"op\":\"watch.add\",\"stream\":\"c6\",\"name\":\"greenwatch\",\"prompt\":\"x\","
                      "\"every_seconds\":5}", 10000);
    assert_string_equal(td_code(r), "already_exists");
    cJSON_Delete(r);

    ev evs[256];
    int n = 0, alerts = 0, timed_answers = 0;
    int64_t deadline = media_now_ms() + 60000;
    while (media_now_ms() < deadline && n < 256 && (alerts < 2 || timed_answers < 2)) {
        char *topic = NULL, *json = NULL;
        cJSON *evj = NULL;
        int rc = proto_subscriber_recv(sub, 1000, &topic, &json, &evj, e, sizeof e);
        if (rc == -ETIMEDOUT) continue;
        assert_int_equal(rc, 0);
        ev *x = &evs[n++];
        memset(x, 0, sizeof *x);
        snprintf(x->topic, sizeof x->topic, "%s", topic);
        snprintf(x->watch, sizeof x->watch, "%s", td_str(evj, "watch") ? td_str(evj, "watch") : "");
        const char *v = td_str(evj, "value");
        snprintf(x->value, sizeof x->value, "%s", v ? v : "");
        x->media_time = td_num(evj, "media_time");
        if (strncmp(topic, "alert.", 6) == 0) {
            assert_string_equal(topic, "alert.greenwatch");
            assert_string_equal(td_str(evj, "event"), "alert");
            alerts++;
        } else {
            assert_string_equal(td_str(evj, "event"), "watch.answer");
            assert_non_null(td_str(evj, "text"));
            assert_non_null(td_str(evj, "time"));
            if (strcmp(x->watch, timed) == 0) {
                timed_answers++;
                assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(evj, "value")));
            }
        }
        free(topic);
        free(json);
        cJSON_Delete(evj);
    }
    printf("watch events:");
    for (int i = 0; i < n; i++)
        if (strcmp(evs[i].watch, "greenwatch") == 0)
            printf(" %s%s@%.1f", evs[i].topic[0] == 'a' ? "ALERT:" : "", evs[i].value, evs[i].media_time);
    printf("\n");
    if (alerts < 2 || timed_answers < 2) {
        td_dump_log(&g_d);
        fail_msg("in 60 s: %d alerts (expected 2), %d timed answers (expected >= 2)", alerts, timed_answers);
    }
    /* Edge-triggered: between two alerts the answer stopped being green. The answers are the
     * clip's colours (a pair that straddles the loop's end, half green and half yellow, may get
     * another one from this small model: most, not all). */
    int first_alert = -1, second_alert = -1, answers = 0, clip_colours = 0;
    for (int i = 0; i < n; i++) {
        if (evs[i].topic[0] == 'a') {
            if (first_alert < 0) first_alert = i;
            else if (second_alert < 0) second_alert = i;
            assert_string_equal(evs[i].value, "green");
        } else if (strcmp(evs[i].watch, "greenwatch") == 0) {
            answers++;
            clip_colours += strcmp(evs[i].value, "green") == 0 || strcmp(evs[i].value, "yellow") == 0;
        }
    }
    assert_true(clip_colours * 10 >= answers * 7);
    bool left_green = false;
    for (int i = first_alert + 1; i < second_alert; i++)
        if (strcmp(evs[i].watch, "greenwatch") == 0 && evs[i].topic[0] == 'w' && strcmp(evs[i].value, "green") != 0)
            left_green = true;
    assert_true(left_green);
    /* an alert goes with a green answer of the same pair, published just before it */
    assert_true(first_alert > 0 && strcmp(evs[first_alert - 1].value, "green") == 0);
    assert_true(evs[second_alert].media_time > evs[first_alert].media_time);

    /* watch.list knows them */
    r = td_call(&g_d, "{\"id\":\"wl\",\"op\":\"watch.list\",\"stream\":\"c6\"}", 10000);
    assert_true(td_ok(r));
    cJSON *ws = cJSON_GetObjectItemCaseSensitive(r, "watches");
    assert_int_equal(cJSON_GetArraySize(ws), 2);
    bool found = false;
    cJSON *w;
    cJSON_ArrayForEach(w, ws) if (strcmp(td_str(w, "watch"), "greenwatch") == 0) {
        found = true;
        assert_true(td_num(w, "alerts") >= 2);
        assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(w, "on_pair")));
        assert_non_null(td_str(w, "last_answer_time"));
    }
    assert_true(found);
    cJSON_Delete(r);

    /* removed watches stop publishing */
    r = td_call(&g_d, "{\"id\":\"wr\",\"op\":\"watch.remove\",\"watch\":\"greenwatch\"}", 10000);
    assert_true(td_ok(r));
    cJSON_Delete(r);
    r = td_callf(&g_d, 10000, "{\"id\":\"wr2\",\"op\":\"watch.remove\",\"watch\":\"%s\"}", timed);
    assert_true(td_ok(r));
    cJSON_Delete(r);
    media_sleep_ms(500);   /* an evaluation in flight may still be published */
    int late = 0;
    deadline = media_now_ms() + 3000;
    while (media_now_ms() < deadline) {
        char *topic = NULL, *json = NULL;
        if (proto_subscriber_recv(sub, 200, &topic, &json, NULL, e, sizeof e) == 0) late++;
        free(topic);
        free(json);
    }
    assert_int_equal(late, 0);
    proto_subscriber_close(sub);
    td_remove_stream(&g_d, "c6");
}

/* ---- several streams, one live over UDP -------------------------------------------------------------- */

typedef struct qa {
    const char *stream;
    char answer[64];
} qa;

static void *ask_thread(void *p) {
    qa *a = p;
    char *t = ask(a->stream, "What color is the shape?", NULL, NULL);
    snprintf(a->answer, sizeof a->answer, "%s", t);
    free(t);
    return NULL;
}

static void test_live_udp_and_files(void **state) {
    (void)state;
    char clip0[PATH_MAX + 32], clip1[PATH_MAX + 32], log[512], url[128];
    snprintf(clip0, sizeof clip0, "%s/clip00_color.mp4", g_clips);
    snprintf(clip1, sizeof clip1, "%s/clip01_shape.mp4", g_clips);
    int port = media_free_port(SOCK_DGRAM);
    assert_true(port > 0);
    snprintf(log, sizeof log, "%s/udp.log", g_d.dir);
    snprintf(url, sizeof url, "udp://127.0.0.1:%d", port);
    /* a camera: clip00 (a red square) looped in real time as MPEG-TS over UDP */
    pid_t tx = media_spawn(log, "exec ffmpeg -nostdin -hide_banner -loglevel error -re -stream_loop -1 -i '%s' "
                                "-c copy -f mpegts 'udp://127.0.0.1:%d?pkt_size=1316'", clip0, port);
    assert_true(tx > 0);
    td_add_stream(&g_d, "live", url, "\"options\":{\"timeout_ms\":5000}");
    td_add_stream(&g_d, "f0", clip0, NULL);
    td_add_stream(&g_d, "f1", clip1, NULL);   /* a yellow triangle */
    if (!td_wait_pairs(&g_d, "live", 3, 60000)) {
        td_dump_log(&g_d);
        media_kill(tx, 1000);
        fail_msg("the UDP stream did not deliver 3 pairs in 60 s");
    }
    assert_true(td_wait_pairs(&g_d, "f0", 4, 60000));
    assert_true(td_wait_pairs(&g_d, "f1", 4, 60000));
    qa a[4] = { { "live", "" }, { "f0", "" }, { "f1", "" }, { "live", "" } };
    pthread_t th[4];
    for (int i = 0; i < 4; i++) assert_int_equal(pthread_create(&th[i], NULL, ask_thread, &a[i]), 0);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    printf("live %s, f0 %s, f1 %s, live %s\n", a[0].answer, a[1].answer, a[2].answer, a[3].answer);
    assert_string_equal(a[0].answer, "red");
    assert_string_equal(a[1].answer, "red");
    assert_string_equal(a[2].answer, "yellow");
    assert_string_equal(a[3].answer, "red");
    cJSON *root;
    cJSON *s = td_stream_status(&g_d, "live", &root);
    assert_non_null(s);
    assert_string_equal(td_str(s, "state"), "running");
    assert_true(td_num(s, "frames_in") > 0);
    assert_string_equal(td_str(s, "url"), url);
    cJSON_Delete(root);
    td_remove_stream(&g_d, "live");
    td_remove_stream(&g_d, "f0");
    td_remove_stream(&g_d, "f1");
    media_kill(tx, 2000);
}

/* ---- an RTSP camera --------------------------------------------------------------------------------- */

static bool have_rtsp_server(void) {
    return media_sh("/usr/bin/python3 -c 'import gi, sys; gi.require_version(\"Gst\", \"1.0\"); "
                    "gi.require_version(\"GstRtspServer\", \"1.0\"); "
                    "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
                    "sys.exit(0 if Gst.ElementFactory.find(\"qtdemux\") and "
                    "Gst.ElementFactory.find(\"rtph264pay\") else 1)'") == 0;
}

static void test_live_rtsp(void **state) {
    (void)state;
    if (!have_rtsp_server()) {
        printf("GStreamer RTSP server (python3-gi, gir1.2-gst-rtsp-server-1.0) not installed: skipped\n");
        skip();
    }
    char clip[PATH_MAX + 32], log[512], url[128];
    snprintf(clip, sizeof clip, "%s/clip01_shape.mp4", g_clips);   /* a yellow triangle */
    int port = media_free_port(SOCK_STREAM);
    snprintf(log, sizeof log, "%s/rtsp.log", g_d.dir);
    pid_t srv = media_spawn(log, "exec /usr/bin/python3 tests/support/media_rtsp_server.py %d '%s'", port, clip);
    assert_true(srv > 0);
    if (!media_wait_tcp(port, 15000)) {
        media_kill(srv, 500);
        fail_msg("the RTSP server did not start (see %s)", log);
    }
    snprintf(url, sizeof url, "rtsp://127.0.0.1:%d/cam", port);
    td_add_stream(&g_d, "cam", url, "\"options\":{\"rtsp_transport\":\"tcp\",\"timeout_ms\":5000}");
    if (!td_wait_pairs(&g_d, "cam", 2, 30000)) {
        td_dump_log(&g_d);
        media_kill(srv, 500);
        fail_msg("no frame pairs from %s in 30 s", url);
    }
    char *a = ask("cam", "What color is the shape?", NULL, NULL);
    printf("RTSP camera: %s\n", a);
    assert_string_equal(a, "yellow");
    free(a);
    td_remove_stream(&g_d, "cam");
    media_kill(srv, 2000);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_semantics),
        cmocka_unit_test(test_watch_alerts),
        cmocka_unit_test(test_live_udp_and_files),
        cmocka_unit_test(test_live_rtsp),
    };
    int rc = cmocka_run_group_tests_name("daemon_events", tests, setup, teardown);
    media_kill_all();
    return rc;
}
