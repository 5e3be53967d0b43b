/* test_daemon_api.c — the real vigild process and real ZeroMQ clients: requests and replies.
 *
 *  - every kind of bad request gets its error code, and the daemon keeps serving (ping after each);
 *  - answers stream as token frames that add up to the done text; the done frame has usage and
 *    timing; a stream that stopped changing answers the same question identically every time;
 *  - concurrent questions on one stream and on several streams all get their answers, and equal
 *    streams give equal answers (no cross-talk between contexts while answers interleave);
 *  - one-off image questions, by path and by base64 bytes, give the same answer;
 *  - query.cancel (running: done "cancelled"; queued: error "cancelled"), queue_full, max_streams;
 *  - a client that disconnects mid-answer: its question is cancelled, others are served;
 *  - stream.remove while a question runs. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <zmq.h>

#include "tests/test_daemon_util.h"

static td g_d;
static char g_clip[512], g_png[512];

static int setup(void **state) {
    (void)state;
    char dir[256];
    if (media_tmpdir(dir, sizeof dir) != 0) return -1;
    snprintf(g_clip, sizeof g_clip, "%s/clip.mp4", dir);
    snprintf(g_png, sizeof g_png, "%s/image.png", dir);
    if (td_make_clip(g_clip, 128, 128, 4, 6) != 0) return -1;
    if (media_sh("ffmpeg -nostdin -v error -y -f lavfi -i testsrc2=size=96x64 -frames:v 1 '%s'", g_png) != 0) return -1;
    const char *extra =
        "\"sources\": {\"allowed_protocols\": \"file\"},\n"
        " \"limits\": {\"max_streams\": 4, \"max_queue_depth\": 6, \"max_message_bytes\": 65536, \"max_image_bytes\": 40000},\n"
        " \"stream_defaults\": {\"min_tokens_per_pair\": 4, \"max_tokens_per_pair\": 16, \"cache_tokens\": 2048},\n"
        " \"shutdown_grace_seconds\": 2";
    if (td_start(&g_d, NULL, extra, NULL, NULL) != 0) return -1;
    /* cam1, cam2: the same clip, fully ingested (file streams end) */
    for (int i = 1; i <= 2; i++) {
        cJSON *r = td_callf(&g_d, 20000, "{\"id\":\"a%d\",\"op\":\"stream.add\",\"stream\":\"cam%d\",\"url\":\"%s\"}", i, i,
                            g_clip);
        bool ok = td_ok(r);
        cJSON_Delete(r);
        if (!ok) return -1;
    }
    for (int i = 1; i <= 2; i++) {
        char name[16];
        snprintf(name, sizeof name, "cam%d", i);
        if (!td_wait_state(&g_d, name, "ended", 60000) || !td_wait_pairs(&g_d, name, 6, 60000)) {
            td_dump_log(&g_d);
            return -1;
        }
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    int rc = td_stop(&g_d);
    char *slash = strrchr(g_clip, '/');
    if (slash) {
        *slash = 0;
        media_rmtree(g_clip);
    }
    td_cleanup(&g_d);
    return rc == 0 ? 0 : -1;
}

static cJSON *raw_exchange(const void *const *parts, const size_t *lens, int n);

static void expect_error(const char *json, const char *code) {
    /* the client helper refuses to send what is not an object with an id: send those raw */
    cJSON *parsed = cJSON_Parse(json);
    bool raw = !parsed || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(parsed, "id"));
    cJSON_Delete(parsed);
    const void *parts[1] = { json };
    size_t lens[1] = { strlen(json) };
    cJSON *r = raw ? raw_exchange(parts, lens, 1) : td_call(&g_d, json, 20000);
    if (!r) fail_msg("no reply to %s", json);
    if (td_ok(r) || strcmp(td_code(r), code) != 0) {
        char *s = cJSON_PrintUnformatted(r);
        fail_msg("%s\n  expected error %s, got %s", json, code, s);
    }
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(r, "error");
    const char *msg = td_str(e, "message");
    assert_non_null(msg);
    assert_true(strlen(msg) > 5);
    cJSON_Delete(r);
    /* and the daemon keeps serving */
    r = td_call(&g_d, "{\"id\":\"p\",\"op\":\"ping\"}", 10000);
    assert_true(td_ok(r));
    cJSON_Delete(r);
}

/* A raw DEALER to send frames the helpers would not (multi-part, oversized). */
static cJSON *raw_exchange(const void *const *parts, const size_t *lens, int n) {
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, tmo = 20000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    assert_int_equal(zmq_connect(s, g_d.ep), 0);
    for (int i = 0; i < n; i++) assert_true(zmq_send(s, parts[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0) >= 0);
    char buf[8192];
    int got = zmq_recv(s, buf, sizeof buf - 1, 0);
    zmq_close(s);
    zmq_ctx_term(ctx);
    if (got < 0) return NULL;
    buf[got < (int)sizeof buf - 1 ? got : (int)sizeof buf - 1] = 0;
    return cJSON_Parse(buf);
}

static void test_bad_requests(void **state) {
    (void)state;
    char j[1024];
    expect_error("{not json", "bad_json");
    expect_error("[1,2]", "bad_request");
    expect_error("{\"id\":\"b1\",\"op\":\"frob\"}", "unknown_op");
    expect_error("{\"id\":\"b2\",\"op\":\"ping\",\"v\":2}", "unsupported_version");
    expect_error("{\"id\":\"b3\",\"op\":\"query\",\"stream\":\"nope\",\"prompt\":\"x\"}", "not_found");
    expect_error("{\"id\":\"b4\",\"op\":\"query\",\"stream\":\"cam1\",\"prompt\":\"x\",\"max_tokens\":999999}",
                 "limit_exceeded");
    expect_error("{\"id\":\"b5\",\"op\":\"query\",\"stream\":\"cam1\",\"prompt\":\"x\",\"bogus\":1}", "bad_request");
    expect_error("{\"id\":\"b6\",\"op\":\"stream.add\",\"stream\":\"x\",\"url\":\"rtsp://127.0.0.1:1/a\"}", "forbidden");
    expect_error("{\"id\":\"b7\",\"op\":\"stream.remove\",\"stream\":\"nope\"}", "not_found");
    expect_error("{\"id\":\"b8\",\"op\":\"watch.remove\",\"watch\":\"nope\"}", "not_found");
    expect_error("{\"id\":\"b9\",\"op\":\"query.cancel\",\"query\":\"nope\"}", "not_found");
    snprintf(j, sizeof j, "{\"id\":\"b10\",\"op\":\"stream.add\",\"stream\":\"cam1\",\"url\":\"%s\"}", g_clip);
    expect_error(j, "already_exists");
    expect_error("{\"id\":\"b11\",\"op\":\"stream.add\",\"stream\":\"gone\",\"url\":\"/nonexistent/x.mp4\"}",
                 "media_error");
    expect_error("{\"id\":\"b12\",\"op\":\"image\",\"data_base64\":\"aGVsbG8gd29ybGQ=\",\"prompt\":\"x\"}",
                 "media_error");
    expect_error("{\"id\":\"b13\",\"op\":\"status\",\"stream\":\"nope\"}", "not_found");
    expect_error("{\"id\":\"b14\",\"op\":\"watch.add\",\"stream\":\"nope\",\"prompt\":\"x\",\"every_seconds\":5}",
                 "not_found");
    snprintf(j, sizeof j, "{\"id\":\"b15\",\"op\":\"stream.add\",\"stream\":\"cap\",\"url\":\"%s\",\"cache_tokens\":1024,"
             "\"tokens_per_pair\":{\"min\":4,\"max\":2000}}", g_clip);
    expect_error(j, "limit_exceeded");
    expect_error("{\"id\":\"b16\",\"op\":\"image\",\"path\":\"/nonexistent.png\",\"prompt\":\"x\"}", "media_error");
    /* a stream that failed to open is not listed */
    cJSON *r = td_call(&g_d, "{\"id\":\"l\",\"op\":\"stream.list\"}", 10000);
    assert_true(td_ok(r));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "streams")), 2);
    cJSON_Delete(r);

    /* over max_message_bytes (64 KiB): too_large, id null */
    size_t big = 70000;
    char *huge = malloc(big + 100);
    assert_non_null(huge);
    int off = snprintf(huge, 100, "{\"id\":\"big\",\"op\":\"query\",\"stream\":\"cam1\",\"prompt\":\"");
    memset(huge + off, 'a', big);
    strcpy(huge + off + big, "\"}");
    const void *parts1[1] = { huge };
    size_t lens1[1] = { strlen(huge) };
    r = raw_exchange(parts1, lens1, 1);
    free(huge);
    assert_non_null(r);
    assert_string_equal(td_code(r), "too_large");
    cJSON_Delete(r);
    /* two frames from a DEALER: bad framing */
    const char *a = "{\"id\":\"x\",\"op\":\"ping\"}", *b = "{}";
    const void *parts2[2] = { a, b };
    size_t lens2[2] = { strlen(a), strlen(b) };
    r = raw_exchange(parts2, lens2, 2);
    assert_non_null(r);
    assert_string_equal(td_code(r), "bad_request");
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(r, "id")));
    cJSON_Delete(r);
    r = td_call(&g_d, "{\"id\":\"p\",\"op\":\"ping\"}", 10000);
    assert_true(td_ok(r));
    assert_string_equal(td_str(r, "version"), "0.1.0");
    cJSON_Delete(r);
}

static cJSON *ask(const char *stream, const char *prompt, int max_tokens, bool stream_tokens, td_tokens *tk) {
    char j[2048], e[256];
    static int seq;
    snprintf(j, sizeof j, "{\"id\":\"q%d\",\"op\":\"query\",\"stream\":\"%s\",\"prompt\":\"%s\",\"max_tokens\":%d,"
             "\"stream_tokens\":%s}", __atomic_add_fetch(&seq, 1, __ATOMIC_SEQ_CST), stream, prompt, max_tokens,
             stream_tokens ? "true" : "false");
    proto_client *c = proto_client_connect(g_d.ep, NULL, e, sizeof e);
    assert_non_null(c);
    cJSON *final = NULL;
    int rc = proto_client_request(c, j, 60000, tk ? td_on_token : NULL, tk, &final, e, sizeof e);
    proto_client_close(c);
    if (rc != 0) fail_msg("query: %s", e);
    return final;
}

static void test_query_stream_and_usage(void **state) {
    (void)state;
    td_tokens tk = { .len = 0 };
    cJSON *r = ask("cam1", "What is shown?", 12, true, &tk);
    assert_true(td_ok(r));
    assert_string_equal(td_str(r, "event"), "done");
    const char *text = td_str(r, "text");
    assert_non_null(text);
    assert_string_equal(text, tk.text);            /* token frames add up to the answer */
    assert_true(tk.frames >= 1);
    const char *fin = td_str(r, "finish_reason");
    assert_true(strcmp(fin, "length") == 0 || strcmp(fin, "stop") == 0);
    cJSON *u = cJSON_GetObjectItemCaseSensitive(r, "usage");
    double prompt = td_num(u, "prompt_tokens"), cached = td_num(u, "cached_tokens"), comp = td_num(u, "completion_tokens");
    /* the whole clip is attended to: 6 pairs of 16 visual tokens and their stamps */
    assert_true(cached > 6 * 16 && prompt > cached);
    assert_true(comp >= 1 && comp <= 12);
    if (strcmp(fin, "length") == 0) assert_int_equal((int)comp, 12);
    cJSON *t = cJSON_GetObjectItemCaseSensitive(r, "timing");
    assert_true(td_num(t, "ttft_ms") >= td_num(t, "queue_ms") && td_num(t, "total_ms") >= td_num(t, "ttft_ms"));

    /* The same question again, without token frames: the only frame is done, same answer. */
    td_tokens tk2 = { .len = 0 };
    cJSON *r2 = ask("cam1", "What is shown?", 12, false, &tk2);
    assert_int_equal(tk2.frames, 0);
    assert_string_equal(td_str(r2, "text"), text);
    /* Another stream with the same content answers the same. */
    cJSON *r3 = ask("cam2", "What is shown?", 12, false, NULL);
    assert_string_equal(td_str(r3, "text"), text);
    cJSON_Delete(r);
    cJSON_Delete(r2);
    cJSON_Delete(r3);

    /* status: served questions and latencies are counted */
    cJSON *root;
    cJSON *s = td_stream_status(&g_d, "cam1", &root);
    assert_non_null(s);
    assert_true(td_num(s, "queries_served") >= 2);
    assert_true(td_num(cJSON_GetObjectItemCaseSensitive(s, "latency_ms"), "p50") > 0);
    assert_int_equal((int)td_num(s, "pairs_encoded"), 6);
    assert_string_equal(td_str(s, "state"), "ended");
    cJSON_Delete(root);
    root = td_call(&g_d, "{\"id\":\"s\",\"op\":\"status\"}", 10000);
    assert_true(td_ok(root));
    assert_non_null(td_str(root, "model"));
    assert_non_null(cJSON_GetObjectItemCaseSensitive(root, "build"));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(root, "streams")), 2);
    cJSON_Delete(root);
}

/* ---- concurrency ---------------------------------------------------------------------------- */

typedef struct job_arg {
    const char *stream, *prompt;
    char text[4096];
    bool ok;
} job_arg;

static void *ask_thread(void *p) {
    job_arg *a = p;
    char j[1024], e[256];
    static int seq;
    snprintf(j, sizeof j, "{\"id\":\"c%d\",\"op\":\"query\",\"stream\":\"%s\",\"prompt\":\"%s\",\"max_tokens\":10}",
             __atomic_add_fetch(&seq, 1, __ATOMIC_SEQ_CST), a->stream, a->prompt);
    proto_client *c = proto_client_connect(g_d.ep, NULL, e, sizeof e);
    if (!c) return NULL;
    td_tokens tk = { .len = 0 };
    cJSON *final = NULL;
    if (proto_client_request(c, j, 120000, td_on_token, &tk, &final, e, sizeof e) == 0 && td_ok(final)) {
        snprintf(a->text, sizeof a->text, "%s", td_str(final, "text"));
        a->ok = strcmp(a->text, tk.text) == 0;
    }
    cJSON_Delete(final);
    proto_client_close(c);
    return NULL;
}

static void test_concurrent_queries(void **state) {
    (void)state;
    /* 6 at once (= max_queue_depth): two questions on each of cam1 and cam2, one more each */
    job_arg a[6] = {
        { "cam1", "Describe the colors.", "", false }, { "cam2", "Describe the colors.", "", false },
        { "cam1", "Count the bars.", "", false },      { "cam2", "Count the bars.", "", false },
        { "cam1", "Anything moving?", "", false },     { "cam2", "Anything moving?", "", false },
    };
    pthread_t th[6];
    for (int i = 0; i < 6; i++) assert_int_equal(pthread_create(&th[i], NULL, ask_thread, &a[i]), 0);
    for (int i = 0; i < 6; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 6; i++)
        if (!a[i].ok) fail_msg("concurrent query %d (%s) failed", i, a[i].stream);
    /* same content, same question: same answer on either stream, whatever ran in between */
    for (int i = 0; i < 6; i += 2) assert_string_equal(a[i].text, a[i + 1].text);
    /* and the answer does not depend on the load: asked alone it is the same */
    cJSON *r = ask("cam1", "Describe the colors.", 10, false, NULL);
    assert_string_equal(td_str(r, "text"), a[0].text);
    cJSON_Delete(r);
}

static void test_images(void **state) {
    (void)state;
    char j[1024];
    snprintf(j, sizeof j, "{\"id\":\"i1\",\"op\":\"image\",\"path\":\"%s\",\"prompt\":\"Describe this image.\","
             "\"max_tokens\":8}", g_png);
    td_tokens tk = { .len = 0 };
    char e[256];
    proto_client *c = proto_client_connect(g_d.ep, NULL, e, sizeof e);
    cJSON *r1 = NULL;
    assert_int_equal(proto_client_request(c, j, 60000, td_on_token, &tk, &r1, e, sizeof e), 0);
    assert_true(td_ok(r1));
    assert_string_equal(td_str(r1, "text"), tk.text);
    /* 96x64 image at >= 65536 px: 320x224 -> 70 visual tokens (+ the prefix and the question) */
    assert_true(td_num(cJSON_GetObjectItemCaseSensitive(r1, "usage"), "prompt_tokens") > 70);

    size_t len = 0;
    unsigned char *png = media_read_file(g_png, &len);
    assert_non_null(png);
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *enc = malloc(len * 4 / 3 + 8);
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)png[i] << 16 | (i + 1 < len ? (uint32_t)png[i + 1] << 8 : 0) | (i + 2 < len ? png[i + 2] : 0);
        enc[o++] = b64[v >> 18 & 63];
        enc[o++] = b64[v >> 12 & 63];
        enc[o++] = i + 1 < len ? b64[v >> 6 & 63] : '=';
        enc[o++] = i + 2 < len ? b64[v & 63] : '=';
    }
    enc[o] = 0;
    char *j2 = malloc(o + 256);
    snprintf(j2, o + 256, "{\"id\":\"i2\",\"op\":\"image\",\"data_base64\":\"%s\",\"prompt\":\"Describe this image.\","
             "\"max_tokens\":8,\"stream_tokens\":false}", enc);
    cJSON *r2 = NULL;
    assert_int_equal(proto_client_request(c, j2, 60000, NULL, NULL, &r2, e, sizeof e), 0);
    assert_true(td_ok(r2));
    assert_string_equal(td_str(r2, "text"), td_str(r1, "text"));
    proto_client_close(c);
    cJSON_Delete(r1);
    cJSON_Delete(r2);
    free(png);
    free(enc);
    free(j2);
}

/* ---- cancel, queue, disconnect ---------------------------------------------------------------- */

/* Receives frames on c until the final frame of `id`; counts token frames of `id`. */
static cJSON *recv_final(proto_client *c, const char *id, int *tokens, cJSON **other_final, const char *other_id) {
    char e[256];
    for (;;) {
        char *json = NULL;
        size_t len;
        if (proto_client_recv(c, 60000, &json, &len, e, sizeof e) != 0) fail_msg("recv: %s", e);
        cJSON *f = cJSON_Parse(json);
        free(json);
        assert_non_null(f);
        const char *fid = td_str(f, "id");
        bool final = cJSON_GetObjectItemCaseSensitive(f, "ok") != NULL;
        if (fid && strcmp(fid, id) == 0) {
            if (final) return f;
            if (tokens) (*tokens)++;
        } else if (final && other_final && other_id && fid && strcmp(fid, other_id) == 0) {
            *other_final = f;
            continue;
        }
        cJSON_Delete(f);
    }
}

/* Sends a long question on a new client and returns once `tokens` token frames of its answer
 * have arrived (the answer is running); fails if the answer ends before. */
static proto_client *start_long_answer(const char *query, int tokens) {
    char e[256];
    proto_client *c = proto_client_connect(g_d.ep, NULL, e, sizeof e);
    assert_non_null(c);
    assert_int_equal(proto_client_send(c, query, strlen(query), 5000, e, sizeof e), 0);
    for (int seen = 0; seen < tokens;) {
        char *json = NULL;
        size_t len;
        assert_int_equal(proto_client_recv(c, 60000, &json, &len, e, sizeof e), 0);
        cJSON *f = cJSON_Parse(json);
        free(json);
        if (f && strcmp(td_str(f, "event") ? td_str(f, "event") : "", "token") == 0) seen++;
        else if (f && cJSON_GetObjectItemCaseSensitive(f, "ok")) fail_msg("the long answer ended early");
        cJSON_Delete(f);
    }
    return c;
}

static void test_cancel(void **state) {
    (void)state;
    char e[256];
    proto_client *c = start_long_answer(
        "{\"id\":\"long\",\"op\":\"query\",\"stream\":\"cam1\",\"prompt\":\"Tell a long story.\",\"max_tokens\":4000}", 3);
    /* a second question on the same stream waits behind it; cancel it while queued */
    const char *q2 = "{\"id\":\"queued\",\"op\":\"query\",\"stream\":\"cam1\",\"prompt\":\"x\",\"max_tokens\":5}";
    assert_int_equal(proto_client_send(c, q2, strlen(q2), 5000, e, sizeof e), 0);
    const char *c2 = "{\"id\":\"cx2\",\"op\":\"query.cancel\",\"query\":\"queued\"}";
    assert_int_equal(proto_client_send(c, c2, strlen(c2), 5000, e, sizeof e), 0);
    cJSON *queued = NULL;
    cJSON *cr = recv_final(c, "cx2", NULL, &queued, "queued");
    assert_true(td_ok(cr));
    cJSON_Delete(cr);
    const char *c1 = "{\"id\":\"cx1\",\"op\":\"query.cancel\",\"query\":\"long\"}";
    assert_int_equal(proto_client_send(c, c1, strlen(c1), 5000, e, sizeof e), 0);
    cJSON *done = NULL;
    cr = recv_final(c, "cx1", NULL, &done, "long");
    assert_true(td_ok(cr));
    assert_string_equal(td_str(cr, "query"), "long");
    cJSON_Delete(cr);
    if (!done) done = recv_final(c, "long", NULL, NULL, NULL);
    assert_true(td_ok(done));
    assert_string_equal(td_str(done, "finish_reason"), "cancelled");
    assert_true(td_num(cJSON_GetObjectItemCaseSensitive(done, "usage"), "completion_tokens") < 4000);
    cJSON_Delete(done);
    if (!queued) queued = recv_final(c, "queued", NULL, NULL, NULL);
    /* the queued one never started: an error reply "cancelled" */
    assert_false(td_ok(queued));
    assert_string_equal(td_code(queued), "cancelled");
    cJSON_Delete(queued);
    proto_client_close(c);
}

static void test_queue_full(void **state) {
    (void)state;
    char e[256], j[512];
    proto_client *c = proto_client_connect(g_d.ep, NULL, e, sizeof e);
    /* 8 long questions at once; max_queue_depth is 6 */
    for (int i = 0; i < 8; i++) {
        snprintf(j, sizeof j, "{\"id\":\"f%d\",\"op\":\"query\",\"stream\":\"cam%d\",\"prompt\":\"Go on.\","
                 "\"max_tokens\":4000,\"stream_tokens\":false}", i, 1 + i % 2);
        assert_int_equal(proto_client_send(c, j, strlen(j), 5000, e, sizeof e), 0);
    }
    int full = 0, finals = 0;
    bool cancelled_rest = false;
    while (finals < 8) {
        char *json = NULL;
        size_t len;
        assert_int_equal(proto_client_recv(c, 60000, &json, &len, e, sizeof e), 0);
        cJSON *f = cJSON_Parse(json);
        free(json);
        const char *id = td_str(f, "id");
        int k;
        char tail;
        bool query_final = id && sscanf(id, "f%d%c", &k, &tail) == 1 && cJSON_GetObjectItemCaseSensitive(f, "ok");
        if (query_final) {
            finals++;
            if (!td_ok(f)) {
                /* refused (the queue was full) or cancelled while waiting */
                if (strcmp(td_code(f), "queue_full") == 0) full++;
                else assert_string_equal(td_code(f), "cancelled");
            } else {
                assert_string_equal(td_str(f, "finish_reason"), "cancelled");
            }
        }
        cJSON_Delete(f);
        if (full == 2 && !cancelled_rest) {
            cancelled_rest = true;
            for (int i = 0; i < 8; i++) {
                snprintf(j, sizeof j, "{\"id\":\"fc%d\",\"op\":\"query.cancel\",\"query\":\"f%d\"}", i, i);
                assert_int_equal(proto_client_send(c, j, strlen(j), 5000, e, sizeof e), 0);
            }
        }
    }
    assert_int_equal(full, 2);
    proto_client_close(c);
    /* the queue drains: status shows nothing in flight */
    int64_t deadline = media_now_ms() + 30000;
    double depth = -1;
    while (media_now_ms() < deadline) {
        cJSON *r = td_call(&g_d, "{\"id\":\"s\",\"op\":\"status\"}", 10000);
        depth = td_num(r, "queue_depth");
        cJSON_Delete(r);
        if (depth == 0) break;
        media_sleep_ms(100);
    }
    assert_true(depth == 0);
}

static int log_count(const char *needle) {
    char *text = media_read_file(g_d.log, NULL);
    int n = 0;
    for (const char *p = text; p && (p = strstr(p, needle)); p++) n++;
    free(text);
    return n;
}

static void test_disconnect_mid_answer(void **state) {
    (void)state;
    const char *gone_line = "client disconnected: 1 request cancelled";
    int before = log_count(gone_line);
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, tmo = 60000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    assert_int_equal(zmq_connect(s, g_d.ep), 0);
    const char *q = "{\"id\":\"gone\",\"op\":\"query\",\"stream\":\"cam2\",\"prompt\":\"Talk.\",\"max_tokens\":4000}";
    assert_true(zmq_send(s, q, strlen(q), 0) > 0);
    char buf[4096];
    int n = zmq_recv(s, buf, sizeof buf - 1, 0);   /* the first token frame: the answer runs */
    assert_true(n > 0);
    zmq_close(s);
    zmq_ctx_term(ctx);
    /* the daemon notices at its next token and cancels the answer */
    int64_t deadline = media_now_ms() + 30000;
    while (media_now_ms() < deadline && log_count(gone_line) == before) media_sleep_ms(50);
    if (log_count(gone_line) == before) {
        fprintf(stderr, "first frame: %.*s\n", n, buf);
        td_dump_log(&g_d);
        fail_msg("vigild did not notice that the client went away");
    }
    /* nothing of it is left in flight, and others are served */
    deadline = media_now_ms() + 30000;
    double depth = -1;
    while (media_now_ms() < deadline) {
        cJSON *r = td_call(&g_d, "{\"id\":\"s\",\"op\":\"status\"}", 10000);
        depth = td_num(r, "queue_depth");
        cJSON_Delete(r);
        if (depth == 0) break;
        media_sleep_ms(50);
    }
    assert_true(depth == 0);
    cJSON *r = ask("cam2", "Still there?", 4, false, NULL);
    assert_true(td_ok(r));
    cJSON_Delete(r);
}

static void test_streams_limit_and_remove(void **state) {
    (void)state;
    char j[1024];
    for (int i = 3; i <= 4; i++) {
        snprintf(j, sizeof j, "{\"id\":\"m%d\",\"op\":\"stream.add\",\"stream\":\"cam%d\",\"url\":\"%s\","
                 "\"options\":{\"loop\":true}}", i, i, g_clip);
        cJSON *r = td_call(&g_d, j, 20000);
        assert_true(td_ok(r));
        cJSON_Delete(r);
    }
    snprintf(j, sizeof j, "{\"id\":\"m5\",\"op\":\"stream.add\",\"stream\":\"cam5\",\"url\":\"%s\"}", g_clip);
    expect_error(j, "limit_exceeded");
    /* a question runs on cam4 (a looping file: pairs keep arriving during the answer) ... */
    assert_true(td_wait_pairs(&g_d, "cam4", 2, 60000));
    proto_client *c = start_long_answer(
        "{\"id\":\"r1\",\"op\":\"query\",\"stream\":\"cam4\",\"prompt\":\"Keep going.\",\"max_tokens\":4000}", 2);
    /* ... when the stream is removed: the answer ends "cancelled", the remove succeeds */
    cJSON *r = td_call(&g_d, "{\"id\":\"rm\",\"op\":\"stream.remove\",\"stream\":\"cam4\"}", 30000);
    assert_true(td_ok(r));
    cJSON_Delete(r);
    cJSON *done = recv_final(c, "r1", NULL, NULL, NULL);
    assert_true(td_ok(done));
    assert_string_equal(td_str(done, "finish_reason"), "cancelled");
    cJSON_Delete(done);
    proto_client_close(c);
    r = td_call(&g_d, "{\"id\":\"rm3\",\"op\":\"stream.remove\",\"stream\":\"cam3\"}", 30000);
    assert_true(td_ok(r));
    cJSON_Delete(r);
    expect_error("{\"id\":\"q\",\"op\":\"query\",\"stream\":\"cam4\",\"prompt\":\"x\"}", "not_found");
    /* the name is free again */
    snprintf(j, sizeof j, "{\"id\":\"m6\",\"op\":\"stream.add\",\"stream\":\"cam4\",\"url\":\"%s\"}", g_clip);
    r = td_call(&g_d, j, 20000);
    assert_true(td_ok(r));
    cJSON_Delete(r);
    r = td_call(&g_d, "{\"id\":\"rm4\",\"op\":\"stream.remove\",\"stream\":\"cam4\"}", 30000);
    assert_true(td_ok(r));
    cJSON_Delete(r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_query_stream_and_usage),
        cmocka_unit_test(test_concurrent_queries),
        cmocka_unit_test(test_images),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_queue_full),
        cmocka_unit_test(test_disconnect_mid_answer),
        cmocka_unit_test(test_streams_limit_and_remove),
    };
    return cmocka_run_group_tests_name("daemon_api", tests, setup, teardown);
}
