/* test_demo_live.c — the product proved by its answers: the real vigild with the demo model
 * (demo/model, trained on synthetic shape videos: demo/TASK.md) watching fresh clips drawn by
 * vigil-make-clip, whose truth (colour of every frame, time of the change) is known.
 *  - a live loopback camera (the ffmpeg CLI serving MPEG-TS over HTTP in real time) whose shape
 *    changes colour at a known time: "What color is the shape now?", asked again and again while
 *    the video plays, answers the colour of the newest pair the answer saw (done.media_time):
 *    the old colour before the change, the new one after; so the incrementally extended cache
 *    holds the newest frames, in order, with the right timestamps;
 *  - watches on every pair publish the old colour before the change and the new one after it,
 *    within one pair of the truth;
 *  - a window over the last seconds answers the colour after the change although the cache still
 *    holds the frames before it;
 *  - a small cache cap (1024 tokens, fed more than 3x that): evicted many times, the answers still
 *    describe the latest frames;
 *  - a camera that is not up yet: stream.add answers at once ("reconnecting", the error in
 *    detail), FFmpeg's own messages are log lines of the daemon's format, and the camera is
 *    watched as soon as it comes up;
 *  - a second vigild on the same ipc:// endpoints refuses to start instead of stealing them. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "tests/test_daemon_util.h"


static td g_d;

static int setup(void **state) {
    (void)state;
    return td_start_demo(&g_d, "file,http,tcp");
}

static int teardown(void **state) {
    (void)state;
    return td_stop_and_cleanup(&g_d);
}

/* ---- clips with known truth ------------------------------------------------------------------ */

typedef struct clip {
    char path[512];
    double change_s;             /* the colour changes at this media time */
    char before[16], after[16];
    int frames, fps;
} clip;

/* A color_now clip from vigil-make-clip: `frames` frames at `fps`, colour `before` until
 * change_s, then `after`. The truth file is read back rather than trusted from the arguments. */
static void make_color_clip(clip *c, const char *name, int seed, int frames, int fps, double change_s,
                            const char *before, const char *after) {
    char truth[600];
    snprintf(c->path, sizeof c->path, "%s/%s.mp4", g_d.dir, name);
    snprintf(truth, sizeof truth, "%s/%s.json", g_d.dir, name);
    int rc = media_sh("'%s/bin/vigil-make-clip' --type color_now --seed %d --frames %d --fps %d --change-at-frame %d "
                      "--colors %s,%s --out '%s' --truth '%s'", td_build(), seed, frames, fps,
                      (int)(change_s * fps + 0.5), before, after, c->path, truth);
    assert_int_equal(rc, 0);
    char *text = media_read_file(truth, NULL);
    assert_non_null(text);
    cJSON *t = cJSON_Parse(text);
    free(text);
    assert_non_null(t);
    cJSON *scene = cJSON_GetObjectItemCaseSensitive(t, "scene");
    c->change_s = td_num(scene, "change_time_s");
    cJSON *obj = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(scene, "objects"), 0);
    cJSON *per_frame = cJSON_GetObjectItemCaseSensitive(obj, "colors_per_frame");
    c->frames = cJSON_GetArraySize(per_frame);
    c->fps = fps;
    snprintf(c->before, sizeof c->before, "%s", cJSON_GetArrayItem(per_frame, 0)->valuestring);
    snprintf(c->after, sizeof c->after, "%s", cJSON_GetArrayItem(per_frame, c->frames - 1)->valuestring);
    assert_string_equal(c->before, before);
    assert_string_equal(c->after, after);
    assert_true(fabs(c->change_s - change_s) < 1e-9);
    cJSON_Delete(t);
}

/* The colour of the frame pair whose mean media time is m (frames at m - 0.25 and m + 0.25 when
 * sampled at 2 fps; the changes fall on pair boundaries, so a pair has one colour). */
static const char *colour_at(const clip *c, double m) {
    return m - 0.25 + 1e-6 >= c->change_s ? c->after : c->before;
}

/* ---- requests ----------------------------------------------------------------------------------- */

typedef struct answer {
    char text[64];
    double media_time;           /* newest pair the answer saw; -1: none */
} answer;

static answer ask(const char *stream, const char *prompt, const char *window) {
    cJSON *r = td_callf(&g_d, 60000,
                        "{\"id\":\"q\",\"op\":\"query\",\"stream\":\"%s\",\"prompt\":\"%s\",\"max_tokens\":6%s%s%s}", stream,
                        prompt, window ? ",\"window\":" : "", window ? window : "", "");
    if (!td_ok(r)) {
        char *s = r ? cJSON_PrintUnformatted(r) : NULL;
        td_dump_log(&g_d);
        fail_msg("query on %s: %s", stream, s ? s : "no reply");
    }
    answer a;
    snprintf(a.text, sizeof a.text, "%s", td_str(r, "text"));
    cJSON *mt = cJSON_GetObjectItemCaseSensitive(r, "media_time");
    a.media_time = cJSON_IsNumber(mt) ? mt->valuedouble : -1;
    cJSON_Delete(r);
    return a;
}

static void add_watch(const char *stream, const char *name, const char *prompt, const char *window) {
    cJSON *r = td_callf(&g_d, 10000,
                        "{\"id\":\"w\",\"op\":\"watch.add\",\"stream\":\"%s\",\"name\":\"%s\",\"prompt\":\"%s\","
                        "\"on_pair\":true,\"max_tokens\":4%s%s}",
                        stream, name, prompt, window ? ",\"window\":" : "", window ? window : "");
    if (!td_ok(r)) {
        char *s = r ? cJSON_PrintUnformatted(r) : NULL;
        fail_msg("watch.add %s: %s", name, s ? s : "no reply");
    }
    cJSON_Delete(r);
}

/* ---- a live camera whose shape changes colour ---------------------------------------------------- */

#define MAX_SEEN 64

typedef struct watch_log {
    answer a[MAX_SEEN];
    int n;
} watch_log;

static void drain_events(proto_subscriber *sub, int timeout_ms, watch_log *newest, watch_log *now) {
    char e[256];
    char *topic = NULL, *json = NULL;
    cJSON *ev = NULL;
    if (proto_subscriber_recv(sub, timeout_ms, &topic, &json, &ev, e, sizeof e) == 0 && ev &&
        strcmp(td_str(ev, "event") ? td_str(ev, "event") : "", "watch.answer") == 0) {
        watch_log *l = strcmp(td_str(ev, "watch"), "newest") == 0 ? newest : now;
        if (l->n < MAX_SEEN) {
            snprintf(l->a[l->n].text, sizeof l->a[l->n].text, "%s", td_str(ev, "text"));
            l->a[l->n].media_time = td_num(ev, "media_time");
            l->n++;
        }
    }
    free(topic);
    free(json);
    cJSON_Delete(ev);
}

static void test_live_colour_change(void **state) {
    (void)state;
    /* 8 s at 10 fps (a camera-like rate; the daemon samples 2 fps): yellow, then blue from 6 s */
    clip c;
    make_color_clip(&c, "live_change", 11, 80, 10, 6.0, "yellow", "blue");
    char e[256], log[600], url[128];
    const char *topics[] = { "watch." };
    proto_subscriber *sub = proto_subscriber_connect(g_d.ev, NULL, topics, 1, e, sizeof e);
    assert_non_null(sub);
    int port = media_free_port(SOCK_STREAM);
    assert_true(port > 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/cam.ts", port);
    /* The camera is not up yet: the stream is added (reconnecting) and the watches set before
     * the first frame, so that they see every pair. */
    td_add_stream(&g_d, "cam", url, "\"options\":{\"timeout_ms\":5000}");
    add_watch("cam", "newest", "What color is the shape?", "{\"last_seconds\":0.5}");
    add_watch("cam", "now", "What color is the shape now?", NULL);
    snprintf(log, sizeof log, "%s/camera.log", g_d.dir);
    pid_t cam = media_spawn(log, "exec ffmpeg -nostdin -hide_banner -loglevel error -re -i '%s' -c copy "
                                 "-f mpegts -listen 1 '%s'", c.path, url);
    assert_true(cam > 0);

    /* Ask while it plays, until all 8 pairs are in. */
    answer asked[MAX_SEEN];
    int n_asked = 0;
    watch_log newest = { .n = 0 }, now = { .n = 0 };
    int64_t deadline = media_now_ms() + 60000;
    int pairs = 0;
    while (media_now_ms() < deadline && pairs < c.frames / c.fps && n_asked < MAX_SEEN) {
        pairs = (int)td_stream_num(&g_d, "cam", "pairs_encoded");
        if (pairs >= 1) asked[n_asked++] = ask("cam", "What color is the shape now?", NULL);
        drain_events(sub, 250, &newest, &now);
    }
    int64_t settle = media_now_ms() + 3000;   /* the last watch answers */
    while (media_now_ms() < settle) drain_events(sub, 200, &newest, &now);
    media_kill(cam, 2000);
    if (pairs < c.frames / c.fps) {
        td_dump_log(&g_d);
        fail_msg("the camera delivered %d of %d pairs in 60 s (see %s)", pairs, c.frames / c.fps, log);
    }

    printf("change %s -> %s at %.1f s\nasked \"now\":", c.before, c.after, c.change_s);
    for (int i = 0; i < n_asked; i++) printf(" %s@%.2f", asked[i].text, asked[i].media_time);
    printf("\nwatch \"now\", every pair:");
    for (int i = 0; i < now.n; i++) printf(" %s@%.2f", now.a[i].text, now.a[i].media_time);
    printf("\nwatch \"newest pair\", every pair:");
    for (int i = 0; i < newest.n; i++) printf(" %s@%.2f", newest.a[i].text, newest.a[i].media_time);
    printf("\n");

    /* Asked while it plays: the colour of the newest pair each answer saw, before and after. */
    int before = 0, after = 0;
    for (int i = 0; i < n_asked; i++) {
        assert_true(asked[i].media_time > 0);
        assert_string_equal(asked[i].text, colour_at(&c, asked[i].media_time));
        if (asked[i].media_time < c.change_s) before++;
        else after++;
    }
    assert_true(before >= 1);
    assert_true(after >= 1);
    /* Watches on every pair: one answer per pair (8), in media order; "now" exact, the
     * newest-pair one within one pair of the change. */
    assert_true(now.n >= c.frames / c.fps - 1);
    assert_true(newest.n >= c.frames / c.fps - 1);
    for (int i = 0; i < now.n; i++) {
        if (i > 0) assert_true(now.a[i].media_time > now.a[i - 1].media_time);
        assert_string_equal(now.a[i].text, colour_at(&c, now.a[i].media_time));
    }
    for (int i = 0; i < newest.n; i++)
        if (fabs(newest.a[i].media_time - c.change_s) > 1.0)
            assert_string_equal(newest.a[i].text, colour_at(&c, newest.a[i].media_time));
    assert_string_equal(newest.a[0].text, c.before);
    assert_string_equal(newest.a[newest.n - 1].text, c.after);

    /* The whole video is cached; a window of the last 2 s sees only the new colour. */
    answer w = ask("cam", "What color is the shape?", "{\"last_seconds\":2}");
    answer all_now = ask("cam", "What color is the shape now?", NULL);
    printf("after the end: last 2 s %s, now %s\n", w.text, all_now.text);
    assert_string_equal(w.text, c.after);
    assert_string_equal(all_now.text, c.after);
    /* and a window ending before the change sees the old one */
    answer early = ask("cam", "What color is the shape?", "{\"to_media\":3}");
    assert_string_equal(early.text, c.before);
    assert_true(early.media_time < 3);
    td_remove_stream(&g_d, "cam");
    proto_subscriber_close(sub);
}

/* ---- a small cache, evicted many times ----------------------------------------------------------- */

static void test_small_cache_evictions(void **state) {
    (void)state;
    /* 150 s at 2 fps: 150 pairs of ~24 tokens = ~3600 tokens through a 1024-token cache; the
     * colour changes 15 s before the end. */
    clip c[2];
    make_color_clip(&c[0], "long_a", 21, 300, 2, 135.0, "red", "green");
    make_color_clip(&c[1], "long_b", 22, 300, 2, 135.0, "blue", "yellow");
    td_add_stream(&g_d, "long_a", c[0].path, "\"cache_tokens\":1024");
    td_add_stream(&g_d, "long_b", c[1].path, "\"cache_tokens\":1024");
    for (int k = 0; k < 2; k++) {
        const char *name = k ? "long_b" : "long_a";
        if (!td_wait_state(&g_d, name, "ended", 120000)) {
            td_dump_log(&g_d);
            fail_msg("%s did not end in 120 s", name);
        }
        cJSON *root;
        cJSON *s = td_stream_status(&g_d, name, &root);
        assert_non_null(s);
        double pairs = td_num(s, "pairs_encoded"), evicted = td_num(s, "pairs_evicted");
        double used = td_num(s, "cache_tokens_used"), cap = td_num(s, "cache_tokens_cap");
        printf("%s: %.0f pairs, %.0f evicted, cache %.0f/%.0f tokens, oldest pair at %.1f s\n", name, pairs, evicted,
               used, cap, td_num(s, "oldest_media_time"));
        assert_int_equal((int)pairs, 150);
        assert_true(pairs * 24 > 3 * cap);          /* fed more than 3x the cap */
        assert_true(evicted >= 100);
        assert_true(used <= cap);
        cJSON_Delete(root);
        answer now = ask(name, "What color is the shape now?", NULL);
        answer last = ask(name, "What color is the shape?", "{\"last_seconds\":4}");
        printf("%s: now %s, last 4 s %s (truth %s)\n", name, now.text, last.text, c[k].after);
        assert_string_equal(now.text, c[k].after);
        assert_string_equal(last.text, c[k].after);
        assert_true(fabs(now.media_time - 149.25) < 1e-6);   /* the newest pair, <149.2 seconds> */
        td_remove_stream(&g_d, name);
    }
}

/* ---- a camera that is not up yet ----------------------------------------------------------------- */

static void test_camera_not_up_yet(void **state) {
    (void)state;
    clip c;
    make_color_clip(&c, "late", 31, 40, 10, 2.0, "green", "red");
    int port = media_free_port(SOCK_STREAM);
    char url[128], log[600];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/late.ts", port);
    int64_t t0 = media_now_ms();
    cJSON *r = td_callf(&g_d, 30000, "{\"id\":\"a\",\"op\":\"stream.add\",\"stream\":\"late\",\"url\":\"%s\"}", url);
    int64_t waited = media_now_ms() - t0;
    assert_true(td_ok(r));
    cJSON *s = cJSON_GetObjectItemCaseSensitive(r, "stream");
    const char *state_now = td_str(s, "state"), *detail = td_str(s, "detail");
    printf("stream.add of a camera that is down: %s (%s) after %lld ms\n", state_now ? state_now : "?",
           detail ? detail : "no detail", (long long)waited);
    assert_non_null(state_now);
    assert_string_equal(state_now, "reconnecting");
    assert_non_null(detail);
    assert_non_null(strstr(detail, "Connection refused"));
    cJSON_Delete(r);
    /* FFmpeg's message is one of the daemon's log lines, not FFmpeg's own "[tcp @ 0x...]" */
    int64_t deadline = media_now_ms() + 5000;
    while (!td_log_contains(&g_d, "vigild info: ffmpeg: tcp: Connection to") && media_now_ms() < deadline)
        media_sleep_ms(50);
    assert_true(td_log_contains(&g_d, "vigild info: ffmpeg: tcp: Connection to"));
    assert_false(td_log_contains(&g_d, "[tcp @ 0x"));
    /* the camera comes up: the retries find it */
    snprintf(log, sizeof log, "%s/late.log", g_d.dir);
    pid_t cam = media_spawn(log, "exec ffmpeg -nostdin -hide_banner -loglevel error -re -i '%s' -c copy "
                                 "-f mpegts -listen 1 '%s'", c.path, url);
    assert_true(cam > 0);
    if (!td_wait_pairs(&g_d, "late", 2, 60000)) {
        td_dump_log(&g_d);
        media_kill(cam, 500);
        fail_msg("no pairs from the camera once it was up");
    }
    answer a = ask("late", "What color is the shape now?", NULL);
    assert_string_equal(a.text, colour_at(&c, a.media_time));
    media_kill(cam, 2000);
    td_remove_stream(&g_d, "late");
}

/* ---- one daemon per endpoint --------------------------------------------------------------------- */

static void test_second_daemon_refused(void **state) {
    (void)state;
    char log[600];
    snprintf(log, sizeof log, "%s/second.log", g_d.dir);
    int rc = media_sh("'%s/bin/vigild' --config '%s' > '%s' 2>&1", td_build(), g_d.cfg, log);
    char *text = media_read_file(log, NULL);
    const char *why = text ? strstr(text, "err:") : NULL;
    printf("second vigild: exit %d: %s", rc, why ? why : text ? text : "(no log)\n");
    assert_int_equal(rc, 1);
    assert_non_null(text);
    assert_non_null(strstr(text, "another process is listening there"));
    free(text);
    cJSON *r = td_call(&g_d, "{\"id\":\"p\",\"op\":\"ping\"}", 5000);   /* the first one still serves */
    assert_true(td_ok(r));
    cJSON_Delete(r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_live_colour_change),
        cmocka_unit_test(test_small_cache_evictions),
        cmocka_unit_test(test_camera_not_up_yet),
        cmocka_unit_test(test_second_daemon_refused),
    };
    int rc = cmocka_run_group_tests_name("demo_live", tests, setup, teardown);
    media_kill_all();
    return rc;
}
