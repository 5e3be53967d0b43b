/* test_protocol.c — the request parser/validator, the reply and event builders, and the text,
 * time, URL, endpoint and expect helpers of protocol/. Every error case checks the code, the
 * field the error names, that the message mentions that field, and that the error reply built
 * from it is valid JSON carrying the same code. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/protocol.h"

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                    */

static proto_limits g_lim;

/* Most tests parse as an operator who allowed local files would configure the daemon; the
 * shipped defaults (network sources only) are checked in test_default_limits_no_local_files. */
static int setup_limits(void **state)
{
    (void)state;
    proto_limits_default(&g_lim);
    g_lim.allowed_url_schemes = "rtsp,rtsps,rtmp,rtmps,http,https,hls,srt,udp,rtp,tcp,v4l2,file";
    g_lim.allow_image_path = true;
    return 0;
}

static void parse_ok_lim(const char *json, const proto_limits *lim, proto_request *req)
{
    proto_error err;
    int r = proto_parse_request(json, strlen(json), lim, req, &err);
    if (r != 0)
        fail_msg("expected %s to parse; got %s: %s", json, proto_errc_name(err.code), err.message);
}

static void parse_ok(const char *json, proto_request *req)
{
    parse_ok_lim(json, &g_lim, req);
}

/* Checks the whole error path: code, field, message naming the field, and the reply. */
static void expect_err_lim_len(const char *json, size_t len, const proto_limits *lim,
                               proto_errc code, const char *field)
{
    proto_request req;
    proto_error err;
    int r = proto_parse_request(json, len, lim, &req, &err);
    if (r == 0) {
        proto_request_free(&req);
        fail_msg("expected %s for %.200s; it parsed", proto_errc_name(code), json);
    }
    if (err.code != code)
        fail_msg("expected %s for %.200s; got %s: %s", proto_errc_name(code), json,
                 proto_errc_name(err.code), err.message);
    assert_true(strlen(err.message) > 0);
    if (field) {
        if (strcmp(err.field, field) != 0)
            fail_msg("expected field '%s' for %.200s; got '%s' (%s)", field, json, err.field,
                     err.message);
        if (!strstr(err.message, field))
            fail_msg("message does not name '%s': %s", field, err.message);
    }
    /* The request after parsing is empty: nothing to free, nothing dangling. */
    assert_int_equal(req.op, PROTO_OP_NONE);

    char *reply = proto_reply_parse_error(&err);
    assert_non_null(reply);
    assert_true(proto_utf8_valid(reply, strlen(reply)));
    cJSON *j = cJSON_Parse(reply);
    assert_non_null(j);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(j, "ok")));
    assert_int_equal(cJSON_GetObjectItem(j, "v")->valuedouble, 1);
    cJSON *e = cJSON_GetObjectItem(j, "error");
    assert_string_equal(cJSON_GetObjectItem(e, "code")->valuestring, proto_errc_name(code));
    assert_string_equal(cJSON_GetObjectItem(e, "message")->valuestring, err.message);
    if (field && *field)
        assert_string_equal(cJSON_GetObjectItem(e, "field")->valuestring, field);
    cJSON *id = cJSON_GetObjectItem(j, "id");
    assert_non_null(id);
    if (err.has_id)
        assert_string_equal(id->valuestring, err.id);
    else
        assert_true(cJSON_IsNull(id));
    cJSON_Delete(j);
    free(reply);
}

static void expect_err_lim(const char *json, const proto_limits *lim, proto_errc code,
                           const char *field)
{
    expect_err_lim_len(json, strlen(json), lim, code, field);
}

static void expect_err(const char *json, proto_errc code, const char *field)
{
    expect_err_lim(json, &g_lim, code, field);
}

/* Builds {"id":"t","op":OP, BODY} into a static buffer. */
static const char *req_of(const char *op, const char *body)
{
    static char buf[8192];
    size_t bl = body ? strlen(body) : 0;
    if (bl && body[bl - 1] == ',')
        bl--;  /* the field macros below end their prefix with a comma */
    snprintf(buf, sizeof buf, "{\"id\":\"t\",\"op\":\"%s\"%s%.*s}", op, bl ? "," : "",
             (int)bl, bl ? body : "");
    return buf;
}

/* ------------------------------------------------------------------------------------------ */
/* Simple ops                                                                                 */

static void test_simple_ops(void **state)
{
    (void)state;
    proto_request r;
    parse_ok("{\"id\":\"p1\",\"op\":\"ping\"}", &r);
    assert_int_equal(r.op, PROTO_OP_PING);
    assert_string_equal(r.id, "p1");
    proto_request_free(&r);

    parse_ok(" \n{\"v\":1, \"op\":\"status\", \"id\":\"s\"}\r\n", &r);
    assert_int_equal(r.op, PROTO_OP_STATUS);
    assert_string_equal(r.status.stream, "");
    proto_request_free(&r);

    parse_ok("{\"v\":1.0,\"id\":\"s\",\"op\":\"status\",\"stream\":\"cam-1.main_2\"}", &r);
    assert_string_equal(r.status.stream, "cam-1.main_2");
    proto_request_free(&r);

    parse_ok(req_of("stream.list", NULL), &r);
    assert_int_equal(r.op, PROTO_OP_STREAM_LIST);
    proto_request_free(&r);

    parse_ok(req_of("stream.remove", "\"stream\":\"gate\""), &r);
    assert_int_equal(r.op, PROTO_OP_STREAM_REMOVE);
    assert_string_equal(r.stream_remove.stream, "gate");
    proto_request_free(&r);

    parse_ok(req_of("watch.list", "\"stream\":null"), &r);
    assert_int_equal(r.op, PROTO_OP_WATCH_LIST);
    assert_string_equal(r.watch_list.stream, "");
    proto_request_free(&r);

    parse_ok(req_of("watch.remove", "\"watch\":\"door\""), &r);
    assert_string_equal(r.watch_remove.watch, "door");
    proto_request_free(&r);

    parse_ok(req_of("query.cancel", "\"query\":\"q 7/\\u00e9\""), &r);
    assert_int_equal(r.op, PROTO_OP_QUERY_CANCEL);
    assert_string_equal(r.query_cancel.query, "q 7/\xc3\xa9");
    proto_request_free(&r);

    /* Unicode ids are echoed as given. */
    parse_ok("{\"id\":\"\xe6\x97\xa5\xf0\x9f\x98\x80\",\"op\":\"ping\"}", &r);
    assert_string_equal(r.id, "\xe6\x97\xa5\xf0\x9f\x98\x80");
    proto_request_free(&r);

    expect_err(req_of("stream.remove", ""), PROTO_E_BAD_REQUEST, "stream");
    expect_err(req_of("watch.remove", "\"watch\":3"), PROTO_E_BAD_REQUEST, "watch");
    expect_err(req_of("query.cancel", "\"query\":\"\""), PROTO_E_BAD_REQUEST, "query");
    expect_err(req_of("ping", "\"stream\":\"x\""), PROTO_E_BAD_REQUEST, "stream");
    expect_err(req_of("stream.list", "\"extra\":1"), PROTO_E_BAD_REQUEST, "extra");
}

/* ------------------------------------------------------------------------------------------ */
/* stream.add                                                                                 */

static void test_stream_add_defaults(void **state)
{
    (void)state;
    proto_request r;
    parse_ok(req_of("stream.add", "\"stream\":\"gate\",\"url\":\"rtsp://10.0.0.5/live\""), &r);
    assert_int_equal(r.op, PROTO_OP_STREAM_ADD);
    proto_stream_add *a = &r.stream_add;
    assert_string_equal(a->stream, "gate");
    assert_string_equal(a->url, "rtsp://10.0.0.5/live");
    assert_string_equal(a->url_scheme, "rtsp");
    assert_true(a->fps == 2.0);
    assert_int_equal(a->min_tokens_per_pair, 64);
    assert_int_equal(a->max_tokens_per_pair, 256);
    assert_int_equal(a->cache_kind, PROTO_CACHE_TOKENS);
    assert_int_equal(a->cache_tokens, 32768);
    assert_null(a->system_prompt);
    assert_false(a->loop);
    assert_false(a->realtime);
    assert_true(a->start_offset == 0);
    assert_int_equal(a->rtsp_transport, PROTO_RTSP_TCP);
    assert_int_equal(a->decoder_threads, 0);
    assert_int_equal(a->timeout_ms, 10000);
    proto_request_free(&r);

    /* A plain path is a file; the daemon's defaults come from the limits. */
    proto_limits lim = g_lim;
    lim.default_fps = 1;
    lim.default_cache_tokens = 4096;
    lim.default_min_tokens_per_pair = 100;
    lim.default_max_tokens_per_pair = 200;
    parse_ok_lim(req_of("stream.add", "\"stream\":\"f\",\"url\":\"/srv/clips/a b.mp4\""), &lim, &r);
    assert_string_equal(r.stream_add.url_scheme, "file");
    assert_true(r.stream_add.fps == 1.0);
    assert_int_equal(r.stream_add.cache_tokens, 4096);
    assert_int_equal(r.stream_add.min_tokens_per_pair, 100);
    assert_int_equal(r.stream_add.max_tokens_per_pair, 200);
    proto_request_free(&r);

    /* One bound alone drags the other default along. */
    parse_ok(req_of("stream.add", "\"stream\":\"g\",\"url\":\"x.mp4\",\"max_tokens_per_pair\":32"), &r);
    assert_int_equal(r.stream_add.max_tokens_per_pair, 32);
    assert_int_equal(r.stream_add.min_tokens_per_pair, 32);
    proto_request_free(&r);
    parse_ok(req_of("stream.add", "\"stream\":\"g\",\"url\":\"x.mp4\",\"tokens_per_pair\":{\"min\":1000}"), &r);
    assert_int_equal(r.stream_add.min_tokens_per_pair, 1000);
    assert_int_equal(r.stream_add.max_tokens_per_pair, 1000);
    proto_request_free(&r);
}

static void test_stream_add_all_fields(void **state)
{
    (void)state;
    proto_request r;
    parse_ok("{\"v\":1,\"id\":\"a1\",\"op\":\"stream.add\",\"stream\":\"Gate_2.cam-b\","
             "\"url\":\"HTTPS://example.com/live.m3u8\",\"fps\":0.5,"
             "\"tokens_per_pair\":{\"min\":16,\"max\":768},\"cache_bytes\":1073741824,"
             "\"system_prompt\":\"You watch a gate.\\nBe brief.\","
             "\"options\":{\"loop\":true,\"realtime\":true,\"start_offset\":12.5,"
             "\"rtsp_transport\":\"udp\",\"decoder_threads\":2,\"timeout_ms\":5000}}", &r);
    proto_stream_add *a = &r.stream_add;
    assert_string_equal(r.id, "a1");
    assert_string_equal(a->stream, "Gate_2.cam-b");
    assert_string_equal(a->url_scheme, "https");
    assert_true(a->fps == 0.5);
    assert_int_equal(a->min_tokens_per_pair, 16);
    assert_int_equal(a->max_tokens_per_pair, 768);
    assert_int_equal(a->cache_kind, PROTO_CACHE_BYTES);
    assert_int_equal(a->cache_bytes, 1073741824ull);
    assert_string_equal(a->system_prompt, "You watch a gate.\nBe brief.");
    assert_true(a->loop);
    assert_true(a->realtime);
    assert_true(a->start_offset == 12.5);
    assert_int_equal(a->rtsp_transport, PROTO_RTSP_UDP);
    assert_int_equal(a->decoder_threads, 2);
    assert_int_equal(a->timeout_ms, 5000);
    proto_request_free(&r);

    parse_ok(req_of("stream.add", "\"stream\":\"g\",\"url\":\"srt://h:9000\",\"cache_tokens\":100000,"
                    "\"system_prompt\":\"\""), &r);
    assert_int_equal(r.stream_add.cache_kind, PROTO_CACHE_TOKENS);
    assert_int_equal(r.stream_add.cache_tokens, 100000);
    assert_null(r.stream_add.system_prompt);
    proto_request_free(&r);
}

static void test_stream_add_errors(void **state)
{
    (void)state;
#define SA(body) req_of("stream.add", "\"stream\":\"g\",\"url\":\"rtsp://h/x\"," body)
    expect_err(req_of("stream.add", "\"url\":\"rtsp://h/x\""), PROTO_E_BAD_REQUEST, "stream");
    expect_err(req_of("stream.add", "\"stream\":\"g\""), PROTO_E_BAD_REQUEST, "url");
    /* stream names */
    expect_err(req_of("stream.add", "\"stream\":\"cam 1\",\"url\":\"a\""), PROTO_E_BAD_REQUEST, "stream");
    expect_err(req_of("stream.add", "\"stream\":\"a/b\",\"url\":\"a\""), PROTO_E_BAD_REQUEST, "stream");
    expect_err(req_of("stream.add", "\"stream\":\"\",\"url\":\"a\""), PROTO_E_BAD_REQUEST, "stream");
    expect_err(req_of("stream.add", "\"stream\":\"caf\xc3\xa9\",\"url\":\"a\""), PROTO_E_BAD_REQUEST, "stream");
    expect_err(req_of("stream.add", "\"stream\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\",\"url\":\"a\""),
               PROTO_E_BAD_REQUEST, "stream");
    proto_request r;
    parse_ok(req_of("stream.add", "\"stream\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\",\"url\":\"a\""), &r);
    proto_request_free(&r);
    expect_err(req_of("stream.add", "\"stream\":7,\"url\":\"a\""), PROTO_E_BAD_REQUEST, "stream");
    /* types and ranges */
    expect_err(SA("\"fps\":\"2\""), PROTO_E_BAD_REQUEST, "fps");
    expect_err(SA("\"fps\":-1"), PROTO_E_BAD_REQUEST, "fps");
    expect_err(SA("\"fps\":0"), PROTO_E_BAD_REQUEST, "fps");
    expect_err(SA("\"fps\":31"), PROTO_E_LIMIT_EXCEEDED, "fps");
    expect_err(SA("\"fps\":1e999"), PROTO_E_BAD_REQUEST, "fps");
    expect_err(SA("\"tokens_per_pair\":256"), PROTO_E_BAD_REQUEST, "tokens_per_pair");
    expect_err(SA("\"tokens_per_pair\":{}"), PROTO_E_BAD_REQUEST, "tokens_per_pair");
    expect_err(SA("\"tokens_per_pair\":{\"min\":300,\"max\":200}"), PROTO_E_BAD_REQUEST, "tokens_per_pair.min");
    expect_err(SA("\"tokens_per_pair\":{\"min\":2}"), PROTO_E_BAD_REQUEST, "tokens_per_pair.min");
    expect_err(SA("\"tokens_per_pair\":{\"max\":20000}"), PROTO_E_LIMIT_EXCEEDED, "tokens_per_pair.max");
    expect_err(SA("\"tokens_per_pair\":{\"max\":64.5}"), PROTO_E_BAD_REQUEST, "tokens_per_pair.max");
    expect_err(SA("\"tokens_per_pair\":{\"mx\":64}"), PROTO_E_BAD_REQUEST, "tokens_per_pair.mx");
    expect_err(SA("\"tokens_per_pair\":{\"max\":64},\"max_tokens_per_pair\":64"), PROTO_E_BAD_REQUEST, "max_tokens_per_pair");
    expect_err(SA("\"max_tokens_per_pair\":true"), PROTO_E_BAD_REQUEST, "max_tokens_per_pair");
    expect_err(SA("\"cache_tokens\":100,\"cache_bytes\":1e9"), PROTO_E_BAD_REQUEST, "cache_bytes");
    expect_err(SA("\"cache_tokens\":100"), PROTO_E_BAD_REQUEST, "cache_tokens");
    expect_err(SA("\"cache_tokens\":1e9"), PROTO_E_LIMIT_EXCEEDED, "cache_tokens");
    expect_err(SA("\"cache_bytes\":1000"), PROTO_E_BAD_REQUEST, "cache_bytes");
    expect_err(SA("\"cache_bytes\":\"1GiB\""), PROTO_E_BAD_REQUEST, "cache_bytes");
    expect_err(SA("\"system_prompt\":[]"), PROTO_E_BAD_REQUEST, "system_prompt");
    expect_err(SA("\"options\":[]"), PROTO_E_BAD_REQUEST, "options");
    expect_err(SA("\"options\":{\"loop\":1}"), PROTO_E_BAD_REQUEST, "options.loop");
    expect_err(SA("\"options\":{\"realtime\":\"yes\"}"), PROTO_E_BAD_REQUEST, "options.realtime");
    expect_err(SA("\"options\":{\"start_offset\":-3}"), PROTO_E_BAD_REQUEST, "options.start_offset");
    expect_err(SA("\"options\":{\"rtsp_transport\":\"http\"}"), PROTO_E_BAD_REQUEST, "options.rtsp_transport");
    expect_err(SA("\"options\":{\"decoder_threads\":65}"), PROTO_E_BAD_REQUEST, "options.decoder_threads");
    expect_err(SA("\"options\":{\"timeout_ms\":50}"), PROTO_E_BAD_REQUEST, "options.timeout_ms");
    expect_err(SA("\"options\":{\"retries\":5}"), PROTO_E_BAD_REQUEST, "options.retries");
    expect_err(SA("\"options\":{\"loop\":true,\"loop\":false}"), PROTO_E_BAD_REQUEST, "options.loop");
    /* URLs */
    expect_err(req_of("stream.add", "\"stream\":\"g\",\"url\":\"\""), PROTO_E_BAD_URL, "url");
    expect_err(req_of("stream.add", "\"stream\":\"g\",\"url\":\"rtsp://h/\\nx\""), PROTO_E_BAD_URL, "url");
    expect_err(req_of("stream.add", "\"stream\":\"g\",\"url\":\"concat:/etc/passwd\""), PROTO_E_FORBIDDEN, "url");
    proto_limits lim = g_lim;
    lim.allowed_url_schemes = "rtsp, rtsps";
    expect_err_lim(req_of("stream.add", "\"stream\":\"g\",\"url\":\"/etc/passwd\""), &lim, PROTO_E_FORBIDDEN, "url");
    expect_err_lim(req_of("stream.add", "\"stream\":\"g\",\"url\":\"file:/etc/passwd\""), &lim, PROTO_E_FORBIDDEN, "url");
    parse_ok_lim(req_of("stream.add", "\"stream\":\"g\",\"url\":\"RTSPS://h/x\""), &lim, &r);
    assert_string_equal(r.stream_add.url_scheme, "rtsps");
    proto_request_free(&r);
    lim.max_url_bytes = 20;
    expect_err_lim(req_of("stream.add", "\"stream\":\"g\",\"url\":\"rtsp://example.com/long/path\""), &lim,
                   PROTO_E_BAD_URL, "url");
#undef SA
}

/* ------------------------------------------------------------------------------------------ */
/* query                                                                                      */

static void test_query(void **state)
{
    (void)state;
    proto_request r;
    parse_ok(req_of("query", "\"stream\":\"gate\",\"prompt\":\"What happened?\""), &r);
    assert_int_equal(r.op, PROTO_OP_QUERY);
    proto_query *q = &r.query;
    assert_string_equal(q->stream, "gate");
    assert_string_equal(q->prompt, "What happened?");
    assert_int_equal(q->window.kind, PROTO_WINDOW_ALL);
    assert_int_equal(q->max_tokens, 512);
    assert_true(q->stream_tokens);
    assert_int_equal(q->sampling.set, 0);
    assert_true(q->sampling.temperature == 0);
    assert_true(q->sampling.top_p == 1);
    assert_true(q->sampling.repetition_penalty == 1);
    assert_int_equal(q->sampling.n_stop, 0);
    assert_null(q->sampling.stop);
    proto_request_free(&r);

    parse_ok(req_of("query", "\"stream\":\"gate\",\"prompt\":\"Who?\",\"window\":{\"last_seconds\":30},"
                    "\"max_tokens\":4096,\"stream_tokens\":false,"
                    "\"sampling\":{\"temperature\":0.7,\"top_k\":20,\"top_p\":0.8,\"min_p\":0.05,"
                    "\"repetition_penalty\":1.05,\"presence_penalty\":1.5,\"seed\":9007199254740991,"
                    "\"stop\":[\"\\n\\n\",\"END\"]}"), &r);
    q = &r.query;
    assert_int_equal(q->window.kind, PROTO_WINDOW_LAST);
    assert_true(q->window.last_seconds == 30);
    assert_int_equal(q->max_tokens, 4096);
    assert_false(q->stream_tokens);
    assert_int_equal(q->sampling.set, 0xFF);
    assert_true(q->sampling.temperature == 0.7);
    assert_int_equal(q->sampling.top_k, 20);
    assert_true(q->sampling.top_p == 0.8);
    assert_true(q->sampling.min_p == 0.05);
    assert_true(q->sampling.repetition_penalty == 1.05);
    assert_true(q->sampling.presence_penalty == 1.5);
    assert_int_equal(q->sampling.seed, 9007199254740991ull);
    assert_int_equal(q->sampling.n_stop, 2);
    assert_string_equal(q->sampling.stop[0], "\n\n");
    assert_string_equal(q->sampling.stop[1], "END");
    proto_request_free(&r);

    /* A single stop string is accepted as a shorthand; only the given fields are marked. */
    parse_ok(req_of("query", "\"stream\":\"g\",\"prompt\":\"p\",\"sampling\":{\"stop\":\"###\",\"seed\":7}"), &r);
    assert_int_equal(r.query.sampling.n_stop, 1);
    assert_string_equal(r.query.sampling.stop[0], "###");
    assert_int_equal(r.query.sampling.set, PROTO_SAMPLING_STOP | PROTO_SAMPLING_SEED);
    proto_request_free(&r);
}

static void test_query_windows(void **state)
{
    (void)state;
    proto_request r;
#define QW(w) req_of("query", "\"stream\":\"g\",\"prompt\":\"p\",\"window\":" w)
    parse_ok(QW("{\"from_media\":600,\"to_media\":660.5}"), &r);
    assert_int_equal(r.query.window.kind, PROTO_WINDOW_MEDIA);
    assert_true(r.query.window.has_from && r.query.window.has_to);
    assert_true(r.query.window.from == 600 && r.query.window.to == 660.5);
    proto_request_free(&r);
    parse_ok(QW("{\"from_media\":600}"), &r);
    assert_true(r.query.window.has_from && !r.query.window.has_to);
    proto_request_free(&r);
    parse_ok(QW("{\"to_media\":10}"), &r);
    assert_true(!r.query.window.has_from && r.query.window.has_to);
    proto_request_free(&r);

    parse_ok(QW("{\"from_wall\":\"2025-01-31T10:02:00Z\",\"to_wall\":\"2025-01-31T11:05:00.5+01:00\"}"), &r);
    assert_int_equal(r.query.window.kind, PROTO_WINDOW_WALL);
    assert_true(r.query.window.from == 1738317720.0);
    assert_true(r.query.window.to == 1738317900.5);
    proto_request_free(&r);
    parse_ok(QW("{\"from_wall\":1738317720,\"to_wall\":null}"), &r);
    assert_int_equal(r.query.window.kind, PROTO_WINDOW_WALL);
    assert_true(r.query.window.from == 1738317720.0 && !r.query.window.has_to);
    proto_request_free(&r);

    expect_err(QW("{}"), PROTO_E_BAD_REQUEST, "window");
    expect_err(QW("30"), PROTO_E_BAD_REQUEST, "window");
    expect_err(QW("{\"last_seconds\":30,\"from_media\":1}"), PROTO_E_BAD_REQUEST, "window");
    expect_err(QW("{\"from_media\":1,\"to_wall\":5}"), PROTO_E_BAD_REQUEST, "window");
    expect_err(QW("{\"last_seconds\":0}"), PROTO_E_BAD_REQUEST, "window.last_seconds");
    expect_err(QW("{\"last_seconds\":\"30s\"}"), PROTO_E_BAD_REQUEST, "window.last_seconds");
    expect_err(QW("{\"from_media\":-1}"), PROTO_E_BAD_REQUEST, "window.from_media");
    expect_err(QW("{\"from_media\":60,\"to_media\":60}"), PROTO_E_BAD_REQUEST, "window.to_media");
    expect_err(QW("{\"from_media\":60,\"to_media\":30}"), PROTO_E_BAD_REQUEST, "window.to_media");
    expect_err(QW("{\"from_wall\":\"2025-02-30T00:00:00Z\"}"), PROTO_E_BAD_REQUEST, "window.from_wall");
    expect_err(QW("{\"from_wall\":\"10:02\"}"), PROTO_E_BAD_REQUEST, "window.from_wall");
    expect_err(QW("{\"from_wall\":\"2025-01-31T10:02:00\"}"), PROTO_E_BAD_REQUEST, "window.from_wall");
    expect_err(QW("{\"from_wall\":true}"), PROTO_E_BAD_REQUEST, "window.from_wall");
    expect_err(QW("{\"from_wall\":-5}"), PROTO_E_BAD_REQUEST, "window.from_wall");
    expect_err(QW("{\"from_wall\":2000,\"to_wall\":\"1970-01-01T00:00:01Z\"}"), PROTO_E_BAD_REQUEST, "window.to_wall");
    expect_err(QW("{\"since\":5}"), PROTO_E_BAD_REQUEST, "window.since");
#undef QW
}

static void test_query_errors(void **state)
{
    (void)state;
#define Q(body) req_of("query", "\"stream\":\"g\",\"prompt\":\"p\"," body)
    expect_err(req_of("query", "\"stream\":\"g\""), PROTO_E_BAD_REQUEST, "prompt");
    expect_err(req_of("query", "\"prompt\":\"p\""), PROTO_E_BAD_REQUEST, "stream");
    expect_err(req_of("query", "\"stream\":\"g\",\"prompt\":\"\""), PROTO_E_BAD_REQUEST, "prompt");
    expect_err(req_of("query", "\"stream\":\"g\",\"prompt\":null"), PROTO_E_BAD_REQUEST, "prompt");
    expect_err(req_of("query", "\"stream\":\"g\",\"prompt\":[\"a\"]"), PROTO_E_BAD_REQUEST, "prompt");
    /* prompt length: at the limit passes, one byte more is limit_exceeded */
    proto_limits lim = g_lim;
    lim.max_prompt_bytes = 10;
    proto_request r;
    parse_ok_lim(req_of("query", "\"stream\":\"g\",\"prompt\":\"0123456789\""), &lim, &r);
    proto_request_free(&r);
    expect_err_lim(req_of("query", "\"stream\":\"g\",\"prompt\":\"0123456789A\""), &lim,
                   PROTO_E_LIMIT_EXCEEDED, "prompt");
    /* escapes count as the bytes they decode to: 5 x U+00E9 = 10 bytes */
    parse_ok_lim(req_of("query", "\"stream\":\"g\",\"prompt\":\"\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\""), &lim, &r);
    assert_int_equal(strlen(r.query.prompt), 10);
    proto_request_free(&r);

    expect_err(Q("\"max_tokens\":0"), PROTO_E_BAD_REQUEST, "max_tokens");
    expect_err(Q("\"max_tokens\":-5"), PROTO_E_BAD_REQUEST, "max_tokens");
    expect_err(Q("\"max_tokens\":4097"), PROTO_E_LIMIT_EXCEEDED, "max_tokens");
    expect_err(Q("\"max_tokens\":1e300"), PROTO_E_LIMIT_EXCEEDED, "max_tokens");
    expect_err(Q("\"max_tokens\":10.5"), PROTO_E_BAD_REQUEST, "max_tokens");
    expect_err(Q("\"max_tokens\":\"10\""), PROTO_E_BAD_REQUEST, "max_tokens");
    expect_err(Q("\"stream_tokens\":\"yes\""), PROTO_E_BAD_REQUEST, "stream_tokens");
    expect_err(Q("\"stream_tokens\":0"), PROTO_E_BAD_REQUEST, "stream_tokens");
    expect_err(Q("\"sampling\":[]"), PROTO_E_BAD_REQUEST, "sampling");
    expect_err(Q("\"sampling\":{\"temperature\":-0.1}"), PROTO_E_BAD_REQUEST, "sampling.temperature");
    expect_err(Q("\"sampling\":{\"temperature\":6}"), PROTO_E_BAD_REQUEST, "sampling.temperature");
    expect_err(Q("\"sampling\":{\"temperature\":\"hot\"}"), PROTO_E_BAD_REQUEST, "sampling.temperature");
    expect_err(Q("\"sampling\":{\"top_k\":-1}"), PROTO_E_BAD_REQUEST, "sampling.top_k");
    expect_err(Q("\"sampling\":{\"top_k\":2.5}"), PROTO_E_BAD_REQUEST, "sampling.top_k");
    expect_err(Q("\"sampling\":{\"top_p\":0}"), PROTO_E_BAD_REQUEST, "sampling.top_p");
    expect_err(Q("\"sampling\":{\"top_p\":1.5}"), PROTO_E_BAD_REQUEST, "sampling.top_p");
    expect_err(Q("\"sampling\":{\"min_p\":1}"), PROTO_E_BAD_REQUEST, "sampling.min_p");
    expect_err(Q("\"sampling\":{\"repetition_penalty\":0}"), PROTO_E_BAD_REQUEST, "sampling.repetition_penalty");
    expect_err(Q("\"sampling\":{\"presence_penalty\":2.5}"), PROTO_E_BAD_REQUEST, "sampling.presence_penalty");
    expect_err(Q("\"sampling\":{\"seed\":-1}"), PROTO_E_BAD_REQUEST, "sampling.seed");
    expect_err(Q("\"sampling\":{\"seed\":9007199254740992}"), PROTO_E_BAD_REQUEST, "sampling.seed");
    expect_err(Q("\"sampling\":{\"seed\":\"42\"}"), PROTO_E_BAD_REQUEST, "sampling.seed");
    expect_err(Q("\"sampling\":{\"stop\":5}"), PROTO_E_BAD_REQUEST, "sampling.stop");
    expect_err(Q("\"sampling\":{\"stop\":[\"a\",\"\"]}"), PROTO_E_BAD_REQUEST, "sampling.stop[1]");
    expect_err(Q("\"sampling\":{\"stop\":[\"a\",3]}"), PROTO_E_BAD_REQUEST, "sampling.stop[1]");
    expect_err(Q("\"sampling\":{\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\"]}"),
               PROTO_E_LIMIT_EXCEEDED, "sampling.stop");
    lim = g_lim;
    lim.max_stop_bytes = 3;
    expect_err_lim(Q("\"sampling\":{\"stop\":[\"abcd\"]}"), &lim, PROTO_E_LIMIT_EXCEEDED, "sampling.stop[0]");
    expect_err(Q("\"sampling\":{\"top_q\":1}"), PROTO_E_BAD_REQUEST, "sampling.top_q");
    expect_err(Q("\"sampling\":{\"seed\":1,\"seed\":2}"), PROTO_E_BAD_REQUEST, "sampling.seed");
    expect_err(Q("\"max_token\":5"), PROTO_E_BAD_REQUEST, "max_token");
#undef Q
}

/* ------------------------------------------------------------------------------------------ */
/* watches                                                                                    */

static void test_watch_add(void **state)
{
    (void)state;
    proto_request r;
    parse_ok(req_of("watch.add", "\"stream\":\"gate\",\"prompt\":\"Is the gate open?\",\"every_seconds\":10"), &r);
    assert_int_equal(r.op, PROTO_OP_WATCH_ADD);
    proto_watch_add *w = &r.watch_add;
    assert_string_equal(w->stream, "gate");
    assert_string_equal(w->watch, "");
    assert_false(w->on_pair);
    assert_true(w->every_seconds == 10);
    assert_true(w->window_last_seconds == 0);
    assert_int_equal(w->max_tokens, 512);
    assert_int_equal(w->expect.kind, PROTO_EXPECT_NONE);
    proto_request_free(&r);

    parse_ok(req_of("watch.add", "\"stream\":\"gate\",\"name\":\"gate_open\",\"prompt\":\"Open?\","
                    "\"on_pair\":true,\"window\":{\"last_seconds\":10},\"max_tokens\":8,"
                    "\"sampling\":{\"temperature\":0},"
                    "\"expect\":{\"type\":\"yes_no\",\"cooldown_seconds\":300}"), &r);
    w = &r.watch_add;
    assert_string_equal(w->watch, "gate_open");
    assert_true(w->on_pair);
    assert_true(w->window_last_seconds == 10);
    assert_int_equal(w->max_tokens, 8);
    assert_int_equal(w->sampling.set, PROTO_SAMPLING_TEMPERATURE);
    assert_int_equal(w->expect.kind, PROTO_EXPECT_YES_NO);
    assert_int_equal(w->expect.n_values, 2);
    assert_string_equal(w->expect.values[0], "yes");
    assert_string_equal(w->expect.values[1], "no");
    assert_int_equal(w->expect.alert_mask, 1);  /* alerts on yes by default */
    assert_false(w->expect.alert_repeat);
    assert_true(w->expect.cooldown_seconds == 300);
    proto_request_free(&r);

    parse_ok(req_of("watch.add", "\"stream\":\"g\",\"prompt\":\"Closed?\",\"every_seconds\":1,"
                    "\"expect\":{\"type\":\"yes_no\",\"alert_on\":[\"NO\"],\"alert_repeat\":true}"), &r);
    assert_int_equal(r.watch_add.expect.alert_mask, 2);
    assert_true(r.watch_add.expect.alert_repeat);
    proto_request_free(&r);

    parse_ok(req_of("watch.add", "\"stream\":\"g\",\"prompt\":\"Who?\",\"every_seconds\":5,"
                    "\"expect\":{\"type\":\"enum\",\"values\":[\"nobody\",\"person\",\"vehicle\",\"animal\"],"
                    "\"alert_on\":[\"person\",\"Vehicle\"]}"), &r);
    proto_expect *e = &r.watch_add.expect;
    assert_int_equal(e->kind, PROTO_EXPECT_ENUM);
    assert_int_equal(e->n_values, 4);
    assert_string_equal(e->values[3], "animal");
    assert_int_equal(e->alert_mask, (1u << 1) | (1u << 2));
    proto_request_free(&r);

    parse_ok(req_of("watch.add", "\"stream\":\"g\",\"prompt\":\"Who?\",\"every_seconds\":5,"
                    "\"expect\":{\"type\":\"enum\",\"values\":[\"a\",\"b\"]}"), &r);
    assert_int_equal(r.watch_add.expect.alert_mask, 0);  /* enum: no alerts unless asked */
    proto_request_free(&r);

#define W(body) req_of("watch.add", "\"stream\":\"g\",\"prompt\":\"p\"," body)
    expect_err(W(""), PROTO_E_BAD_REQUEST, "every_seconds");
    expect_err(W("\"on_pair\":false"), PROTO_E_BAD_REQUEST, "every_seconds");
    expect_err(W("\"every_seconds\":5,\"on_pair\":true"), PROTO_E_BAD_REQUEST, "on_pair");
    expect_err(W("\"every_seconds\":0.5"), PROTO_E_BAD_REQUEST, "every_seconds");
    expect_err(W("\"every_seconds\":\"5\""), PROTO_E_BAD_REQUEST, "every_seconds");
    expect_err(W("\"on_pair\":1"), PROTO_E_BAD_REQUEST, "on_pair");
    expect_err(W("\"every_seconds\":5,\"name\":\"bad name\""), PROTO_E_BAD_REQUEST, "name");
    expect_err(W("\"every_seconds\":5,\"window\":{\"from_media\":3}"), PROTO_E_BAD_REQUEST, "window.from_media");
    expect_err(W("\"every_seconds\":5,\"expect\":\"yes_no\""), PROTO_E_BAD_REQUEST, "expect");
    expect_err(W("\"every_seconds\":5,\"expect\":{}"), PROTO_E_BAD_REQUEST, "expect.type");
    expect_err(W("\"every_seconds\":5,\"expect\":{\"type\":\"bool\"}"), PROTO_E_BAD_REQUEST, "expect.type");
    expect_err(W("\"every_seconds\":5,\"expect\":{\"type\":\"yes_no\",\"values\":[\"y\",\"n\"]}"),
               PROTO_E_BAD_REQUEST, "expect.values");
    expect_err(W("\"every_seconds\":5,\"expect\":{\"type\":\"enum\"}"), PROTO_E_BAD_REQUEST, "expect.values");
    expect_err(W("\"every_seconds\":5,\"expect\":{\"type\":\"enum\",\"values\":[\"a\"]}"),
               PROTO_E_BAD_REQUEST, "expect.values");
    expect_err(W("\"every_seconds\":5,\"expect\":{\"type\":\"enum\",\"values\":[\"a\",\"A\"]}"),
               PROTO_E_BAD_REQUEST, "expect.values[1]");
    expect_err(W("\"every_seconds\":5,\"expect\":{\"type\":\"enum\",\"values\":[\"a\",\" b\"]}"),
               PROTO_E_BAD_REQUEST, "expect.values[1]");
    expect_err(W("\"every_seconds\":5,\"expect\":{\"type\":\"enum\",\"values\":[\"a\",2]}"),
               PROTO_E_BAD_REQUEST, "expect.values[1]");
    expect_err(W("\"every_seconds\":5,\"expect\":{\"type\":\"enum\",\"values\":[\"a\",\"b\"],\"alert_on\":[\"c\"]}"),
               PROTO_E_BAD_REQUEST, "expect.alert_on[0]");
    expect_err(W("\"every_seconds\":5,\"expect\":{\"type\":\"yes_no\",\"alert_on\":\"yes\"}"),
               PROTO_E_BAD_REQUEST, "expect.alert_on");
    expect_err(W("\"every_seconds\":5,\"expect\":{\"type\":\"yes_no\",\"cooldown_seconds\":-1}"),
               PROTO_E_BAD_REQUEST, "expect.cooldown_seconds");
    expect_err(W("\"every_seconds\":5,\"expect\":{\"type\":\"yes_no\",\"alert\":true}"),
               PROTO_E_BAD_REQUEST, "expect.alert");
#undef W
}

/* ------------------------------------------------------------------------------------------ */
/* image                                                                                      */

static void test_default_limits_no_local_files(void **state)
{
    (void)state;
    proto_limits def;
    proto_limits_default(&def);
    expect_err_lim(req_of("stream.add", "\"stream\":\"g\",\"url\":\"/etc/passwd\""), &def,
                   PROTO_E_FORBIDDEN, "url");
    expect_err_lim(req_of("stream.add", "\"stream\":\"g\",\"url\":\"file:///etc/passwd\""), &def,
                   PROTO_E_FORBIDDEN, "url");
    expect_err_lim(req_of("image", "\"path\":\"/etc/passwd\",\"prompt\":\"x\""), &def,
                   PROTO_E_FORBIDDEN, "path");
    proto_request r;
    parse_ok_lim(req_of("stream.add", "\"stream\":\"g\",\"url\":\"rtsp://127.0.0.1/cam\""), &def, &r);
    proto_request_free(&r);
}

static void test_image(void **state)
{
    (void)state;
    proto_request r;
    parse_ok(req_of("image", "\"path\":\"/srv/img/a.jpg\",\"prompt\":\"Describe.\""), &r);
    assert_int_equal(r.op, PROTO_OP_IMAGE);
    assert_string_equal(r.image.path, "/srv/img/a.jpg");
    assert_null(r.image.data);
    assert_int_equal(r.image.max_tokens, 512);
    assert_true(r.image.stream_tokens);
    proto_request_free(&r);

    /* bytes 0, 7, 14, ... 252, base64 with line breaks */
    parse_ok(req_of("image", "\"data_base64\":\"AAcOFRwjKjE4P0ZNVFtiaXB3foWMk5qhqK+2vcTL\\r\\n0tng5+71/A==\","
                    "\"prompt\":\"What is it?\",\"max_tokens\":100,\"stream_tokens\":false,"
                    "\"sampling\":{\"top_k\":5}"), &r);
    assert_null(r.image.path);
    assert_int_equal(r.image.data_len, 37);
    for (size_t i = 0; i < r.image.data_len; i++)
        assert_int_equal(r.image.data[i], (unsigned char)(i * 7));
    assert_int_equal(r.image.max_tokens, 100);
    assert_false(r.image.stream_tokens);
    assert_int_equal(r.image.sampling.top_k, 5);
    proto_request_free(&r);

    parse_ok(req_of("image", "\"data_base64\":\"aGk\",\"prompt\":\"p\""), &r);  /* unpadded */
    assert_int_equal(r.image.data_len, 2);
    assert_memory_equal(r.image.data, "hi", 2);
    proto_request_free(&r);

#define I(body) req_of("image", "\"prompt\":\"p\"," body)
    expect_err(I(""), PROTO_E_BAD_REQUEST, "path");
    expect_err(I("\"path\":\"/a.jpg\",\"data_base64\":\"aGk=\""), PROTO_E_BAD_REQUEST, "data_base64");
    expect_err(I("\"path\":\"a.jpg\""), PROTO_E_BAD_REQUEST, "path");
    expect_err(I("\"path\":5"), PROTO_E_BAD_REQUEST, "path");
    expect_err(I("\"data_base64\":\"\""), PROTO_E_BAD_REQUEST, "data_base64");
    expect_err(I("\"data_base64\":\"aGk*\""), PROTO_E_BAD_REQUEST, "data_base64");
    expect_err(I("\"data_base64\":\"a\""), PROTO_E_BAD_REQUEST, "data_base64");
    expect_err(I("\"data_base64\":\"aG=k\""), PROTO_E_BAD_REQUEST, "data_base64");
    expect_err(I("\"data_base64\":\"aGl=\""), PROTO_E_BAD_REQUEST, "data_base64");  /* stray bits */
    expect_err(req_of("image", "\"path\":\"/a.jpg\""), PROTO_E_BAD_REQUEST, "prompt");
    proto_limits lim = g_lim;
    lim.allow_image_path = false;
    expect_err_lim(I("\"path\":\"/etc/shadow\""), &lim, PROTO_E_FORBIDDEN, "path");
    lim = g_lim;
    lim.max_image_bytes = 36;
    expect_err_lim(I("\"data_base64\":\"AAcOFRwjKjE4P0ZNVFtiaXB3foWMk5qhqK+2vcTL0tng5+71/A==\""), &lim,
                   PROTO_E_TOO_LARGE, "data_base64");
#undef I
}

/* ------------------------------------------------------------------------------------------ */
/* Envelope: ids, versions, ops, unknown and duplicate keys                                   */

static void test_envelope(void **state)
{
    (void)state;
    proto_request r;
    proto_error err;
    const char *j;

    j = "{\"op\":\"ping\"}";
    assert_int_equal(proto_parse_request(j, strlen(j), &g_lim, &r, &err), -1);
    assert_int_equal(err.code, PROTO_E_BAD_REQUEST);
    assert_string_equal(err.field, "id");
    assert_false(err.has_id);

    expect_err("{\"id\":5,\"op\":\"ping\"}", PROTO_E_BAD_REQUEST, "id");
    expect_err("{\"id\":\"\",\"op\":\"ping\"}", PROTO_E_BAD_REQUEST, "id");
    expect_err("{\"id\":\"a\\nb\",\"op\":\"ping\"}", PROTO_E_BAD_REQUEST, "id");
    char big[400];
    snprintf(big, sizeof big, "{\"id\":\"%0129d\",\"op\":\"ping\"}", 0);
    expect_err(big, PROTO_E_BAD_REQUEST, "id");
    snprintf(big, sizeof big, "{\"id\":\"%0128d\",\"op\":\"ping\"}", 0);
    parse_ok(big, &r);
    proto_request_free(&r);

    /* Once the id is read, every later error echoes it. */
    j = "{\"id\":\"q-42\",\"op\":\"fly\"}";
    assert_int_equal(proto_parse_request(j, strlen(j), &g_lim, &r, &err), -1);
    assert_int_equal(err.code, PROTO_E_UNKNOWN_OP);
    assert_true(err.has_id);
    assert_string_equal(err.id, "q-42");
    assert_non_null(strstr(err.message, "fly"));
    assert_non_null(strstr(err.message, "stream.add"));  /* lists the known ops */
    char *reply = proto_reply_parse_error(&err);
    cJSON *rj = cJSON_Parse(reply);
    assert_string_equal(cJSON_GetObjectItem(rj, "id")->valuestring, "q-42");
    cJSON_Delete(rj);
    free(reply);

    expect_err("{\"id\":\"x\"}", PROTO_E_BAD_REQUEST, "op");
    expect_err("{\"id\":\"x\",\"op\":7}", PROTO_E_BAD_REQUEST, "op");
    expect_err("{\"id\":\"x\",\"op\":\"Ping\"}", PROTO_E_UNKNOWN_OP, "op");
    expect_err("{\"id\":\"x\",\"op\":\"ping\",\"v\":2}", PROTO_E_UNSUPPORTED_VERSION, "v");
    expect_err("{\"id\":\"x\",\"op\":\"ping\",\"v\":0}", PROTO_E_UNSUPPORTED_VERSION, "v");
    expect_err("{\"id\":\"x\",\"op\":\"ping\",\"v\":\"1\"}", PROTO_E_BAD_REQUEST, "v");
    expect_err("{\"id\":\"x\",\"op\":\"ping\",\"verbose\":true}", PROTO_E_BAD_REQUEST, "verbose");
    expect_err("{\"id\":\"x\",\"op\":\"ping\",\"op\":\"status\"}", PROTO_E_BAD_REQUEST, "op");
    expect_err("{\"id\":\"x\",\"id\":\"y\",\"op\":\"ping\"}", PROTO_E_BAD_REQUEST, "id");
    expect_err("{\"id\":\"x\",\"op\":\"query\",\"stream\":\"g\",\"prompt\":\"a\",\"prompt\":\"b\"}",
               PROTO_E_BAD_REQUEST, "prompt");
    /* an unknown key is shown cut at a character boundary */
    expect_err("{\"id\":\"x\",\"op\":\"ping\",\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
               "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
               "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
               "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\":1}", PROTO_E_BAD_REQUEST, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Malformed input                                                                            */

static void test_bad_json(void **state)
{
    (void)state;
    expect_err_lim_len("", 0, &g_lim, PROTO_E_BAD_JSON, NULL);
    expect_err(" \n\t ", PROTO_E_BAD_JSON, NULL);
    expect_err("{", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x\",\"op\":\"ping\"", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x\",\"op\":\"ping\",}", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x\" \"op\":\"ping\"}", PROTO_E_BAD_JSON, NULL);
    expect_err("{id:\"x\",\"op\":\"ping\"}", PROTO_E_BAD_JSON, NULL);
    expect_err("{'id':'x'}", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x\",\"op\":\"ping\"} {}", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x\",\"op\":\"ping\"}x", PROTO_E_BAD_JSON, NULL);
    expect_err("\xef\xbb\xbf{\"id\":\"x\",\"op\":\"ping\"}", PROTO_E_BAD_JSON, NULL);  /* BOM */
    expect_err("{\"id\":\"x\",\"op\":\"ping\",\"v\":+1}", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x\",\"op\":\"ping\",\"v\":01}", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x\",\"op\":\"ping\",\"v\":1.}", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x\",\"op\":\"ping\",\"v\":NaN}", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x\",\"op\":\"ping\",\"v\":tru}", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x\",\"op\":\"ping\",\"v\":1e}", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x\",\"op\":\"ping\",\"v\":1000000000000000000000000000000000000000000000000000000000000000}",
               PROTO_E_BAD_REQUEST, NULL);
    /* strings */
    expect_err("{\"id\":\"x\xff\",\"op\":\"ping\"}", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x\xc0\xaf\",\"op\":\"ping\"}", PROTO_E_BAD_JSON, NULL);      /* overlong '/' */
    expect_err("{\"id\":\"x\xed\xa0\x80\",\"op\":\"ping\"}", PROTO_E_BAD_JSON, NULL);  /* surrogate */
    expect_err("{\"id\":\"x\xf4\x90\x80\x80\",\"op\":\"ping\"}", PROTO_E_BAD_JSON, NULL); /* > U+10FFFF */
    expect_err("{\"id\":\"x\xe6\x97\",\"op\":\"ping\"}", PROTO_E_BAD_JSON, NULL);      /* truncated */
    expect_err("{\"id\":\"a\tb\",\"op\":\"ping\"}", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x\",\"op\":\"ping\\u0000\"}", PROTO_E_BAD_REQUEST, NULL);
    expect_err("{\"id\":\"x\\ud800\",\"op\":\"ping\"}", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x\\udc00\",\"op\":\"ping\"}", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x\\u12\",\"op\":\"ping\"}", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x\\q\",\"op\":\"ping\"}", PROTO_E_BAD_JSON, NULL);
    expect_err("{\"id\":\"x", PROTO_E_BAD_JSON, NULL);
    /* a valid surrogate pair is fine */
    proto_request r;
    parse_ok("{\"id\":\"\\ud83d\\ude00\",\"op\":\"ping\"}", &r);
    assert_string_equal(r.id, "\xf0\x9f\x98\x80");
    proto_request_free(&r);
    /* an embedded NUL byte is not JSON */
    expect_err_lim_len("{\"id\":\"x\",\"op\":\"ping\"}\0", 23, &g_lim, PROTO_E_BAD_JSON, NULL);
    expect_err_lim_len("{\"id\":\"x\0\",\"op\":\"ping\"}", 23, &g_lim, PROTO_E_BAD_JSON, NULL);

    /* Top level must be an object. */
    expect_err("[1,2]", PROTO_E_BAD_REQUEST, "");
    expect_err("\"ping\"", PROTO_E_BAD_REQUEST, "");
    expect_err("42", PROTO_E_BAD_REQUEST, "");
    expect_err("null", PROTO_E_BAD_REQUEST, "");
}

static void test_limits_on_structure(void **state)
{
    (void)state;
    /* nesting: 16 levels in total pass, 17 do not */
    char buf[1 << 16];
    int o = snprintf(buf, sizeof buf, "{\"id\":\"x\",\"op\":\"ping\",\"deep\":");
    for (int i = 0; i < 14; i++)
        buf[o++] = '[';
    for (int i = 0; i < 14; i++)
        buf[o++] = ']';
    buf[o++] = '}';
    buf[o] = '\0';
    expect_err(buf, PROTO_E_BAD_REQUEST, "deep");  /* 15 levels: scanner passes, schema rejects */
    o = snprintf(buf, sizeof buf, "{\"id\":\"x\",\"op\":\"ping\",\"deep\":");
    for (int i = 0; i < 16; i++)
        buf[o++] = '[';
    for (int i = 0; i < 16; i++)
        buf[o++] = ']';
    buf[o++] = '}';
    buf[o] = '\0';
    expect_err(buf, PROTO_E_TOO_LARGE, NULL);
    /* 100000 levels must not recurse */
    size_t n = 200000;
    char *deep = malloc(n + 1);
    memset(deep, '[', n / 2);
    memset(deep + n / 2, ']', n / 2);
    deep[n] = '\0';
    expect_err(deep, PROTO_E_TOO_LARGE, NULL);
    memset(deep, '{', n);
    expect_err(deep, PROTO_E_BAD_JSON, NULL);   /* '{' must be followed by a key */
    free(deep);

    /* many values */
    o = snprintf(buf, sizeof buf, "{\"id\":\"x\",\"op\":\"ping\",\"many\":[");
    for (int i = 0; i < 5000; i++)
        o += snprintf(buf + o, sizeof buf - (size_t)o, "%s0", i ? "," : "");
    snprintf(buf + o, sizeof buf - (size_t)o, "]}");
    expect_err(buf, PROTO_E_TOO_LARGE, NULL);

}

static void test_too_large(void **state)
{
    (void)state;
    proto_limits lim = g_lim;
    const char *j = "{\"id\":\"x\",\"op\":\"query\",\"stream\":\"g\",\"prompt\":\"a long enough prompt\"}";
    lim.max_message_bytes = strlen(j);
    proto_request r;
    parse_ok_lim(j, &lim, &r);
    proto_request_free(&r);
    lim.max_message_bytes = strlen(j) - 1;
    expect_err_lim(j, &lim, PROTO_E_TOO_LARGE, NULL);
}

/* Random bytes and mutated valid requests: never a crash or a leak, and every rejection
 * carries a code and a message whose reply is valid JSON. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void check_any(const char *buf, size_t len, int *accepted)
{
    proto_request r;
    proto_error err;
    if (proto_parse_request(buf, len, &g_lim, &r, &err) == 0) {
        assert_int_not_equal(r.op, PROTO_OP_NONE);
        assert_true(strlen(r.id) >= 1);
        (*accepted)++;
        proto_request_free(&r);
        return;
    }
    assert_int_not_equal(err.code, PROTO_OK);
    assert_true(err.message[0] != '\0');
    char *reply = proto_reply_parse_error(&err);
    assert_non_null(reply);
    cJSON *j = cJSON_Parse(reply);
    assert_non_null(j);
    cJSON_Delete(j);
    free(reply);
}

static void test_garbage(void **state)
{
    (void)state;
    static const char *const seeds[] = {
        "{\"id\":\"a1\",\"op\":\"stream.add\",\"stream\":\"g\",\"url\":\"rtsp://h/x\",\"fps\":2,"
        "\"tokens_per_pair\":{\"min\":16,\"max\":64},\"options\":{\"loop\":true}}",
        "{\"id\":\"q\",\"op\":\"query\",\"stream\":\"g\",\"prompt\":\"hi\",\"window\":{\"from_wall\":"
        "\"2025-01-31T10:02:00Z\"},\"sampling\":{\"stop\":[\"a\"],\"top_p\":0.5}}",
        "{\"id\":\"w\",\"op\":\"watch.add\",\"stream\":\"g\",\"prompt\":\"p\",\"every_seconds\":2,"
        "\"expect\":{\"type\":\"enum\",\"values\":[\"a\",\"b\"],\"alert_on\":[\"a\"]}}",
        "{\"id\":\"i\",\"op\":\"image\",\"data_base64\":\"aGVsbG8=\",\"prompt\":\"p\"}",
    };
    int accepted = 0;
    char buf[512];
    for (int it = 0; it < 20000; it++) {
        size_t len;
        if (it % 4 == 0) {
            len = rng() % sizeof buf;
            for (size_t i = 0; i < len; i++)
                buf[i] = (char)rng();
        } else {
            const char *s = seeds[rng() % 4];
            len = strlen(s);
            memcpy(buf, s, len);
            int flips = 1 + (int)(rng() % 3);
            for (int f = 0; f < flips && len > 0; f++) {
                size_t at = rng() % len;
                switch (rng() % 3) {
                case 0: buf[at] = (char)rng(); break;
                case 1: buf[at] = "{}[]\",:0\\e-."[rng() % 12]; break;
                default: len = at; break;  /* truncate */
                }
            }
        }
        check_any(buf, len, &accepted);
    }
    /* Mutations keep some requests valid: the valid path is exercised too. */
    assert_true(accepted > 100);
}

/* ------------------------------------------------------------------------------------------ */
/* Builders                                                                                   */

static cJSON *parse_frame(char *s)
{
    assert_non_null(s);
    assert_true(proto_utf8_valid(s, strlen(s)));
    cJSON *j = cJSON_Parse(s);
    free(s);
    assert_non_null(j);
    assert_int_equal(cJSON_GetObjectItem(j, "v")->valuedouble, 1);
    return j;
}

static void test_builders(void **state)
{
    (void)state;
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "watch", "w1");
    cJSON_AddNumberToObject(body, "count", 3);
    cJSON_AddBoolToObject(body, "ok", false);   /* reserved: must not override */
    cJSON_AddStringToObject(body, "id", "evil");
    cJSON *j = parse_frame(proto_reply_ok("r1", body));
    assert_string_equal(cJSON_GetObjectItem(j, "id")->valuestring, "r1");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "ok")));
    assert_string_equal(cJSON_GetObjectItem(j, "watch")->valuestring, "w1");
    assert_int_equal(cJSON_GetObjectItem(j, "count")->valuedouble, 3);
    assert_int_equal(cJSON_GetArraySize(j), 5);
    cJSON_Delete(j);

    j = parse_frame(proto_reply_ok(NULL, NULL));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "id")));
    cJSON_Delete(j);

    j = parse_frame(proto_reply_error("r2", PROTO_E_NOT_FOUND, "no stream '%s'", "gate"));
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(j, "ok")));
    cJSON *e = cJSON_GetObjectItem(j, "error");
    assert_string_equal(cJSON_GetObjectItem(e, "code")->valuestring, "not_found");
    assert_string_equal(cJSON_GetObjectItem(e, "message")->valuestring, "no stream 'gate'");
    assert_null(cJSON_GetObjectItem(e, "field"));
    cJSON_Delete(j);

    /* Token text: a split character becomes U+FFFD, never invalid JSON. */
    j = parse_frame(proto_event_token("q1", "caf\xc3", 4));
    assert_string_equal(cJSON_GetObjectItem(j, "event")->valuestring, "token");
    assert_string_equal(cJSON_GetObjectItem(j, "text")->valuestring, "caf\xef\xbf\xbd");
    assert_null(cJSON_GetObjectItem(j, "ok"));   /* intermediate frame */
    cJSON_Delete(j);
    j = parse_frame(proto_event_token("q1", "a\"b\n\x01", 5));
    assert_string_equal(cJSON_GetObjectItem(j, "text")->valuestring, "a\"b\n\x01");
    cJSON_Delete(j);

    proto_usage u = {.prompt_tokens = 5012, .completion_tokens = 9, .cached_tokens = 4980};
    proto_timing t = {.queue_ms = 3.14159, .ttft_ms = 412.5, .total_ms = 690.2, .tokens_per_s = 32.4};
    body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "stream", "gate");
    j = parse_frame(proto_event_done("q1", "A red car.", PROTO_FINISH_LENGTH, &u, &t, NULL, body));
    assert_null(cJSON_GetObjectItem(j, "error"));
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "ok")));
    assert_string_equal(cJSON_GetObjectItem(j, "event")->valuestring, "done");
    assert_string_equal(cJSON_GetObjectItem(j, "text")->valuestring, "A red car.");
    assert_string_equal(cJSON_GetObjectItem(j, "finish_reason")->valuestring, "length");
    assert_string_equal(cJSON_GetObjectItem(j, "stream")->valuestring, "gate");
    cJSON *uj = cJSON_GetObjectItem(j, "usage");
    assert_int_equal(cJSON_GetObjectItem(uj, "prompt_tokens")->valuedouble, 5012);
    assert_int_equal(cJSON_GetObjectItem(uj, "completion_tokens")->valuedouble, 9);
    assert_int_equal(cJSON_GetObjectItem(uj, "cached_tokens")->valuedouble, 4980);
    cJSON *tj = cJSON_GetObjectItem(j, "timing");
    assert_true(fabs(cJSON_GetObjectItem(tj, "queue_ms")->valuedouble - 3.14) < 1e-9);
    assert_true(cJSON_GetObjectItem(tj, "ttft_ms")->valuedouble == 412.5);
    assert_true(cJSON_GetObjectItem(tj, "total_ms")->valuedouble == 690.2);
    assert_true(cJSON_GetObjectItem(tj, "tokens_per_s")->valuedouble == 32.4);
    cJSON_Delete(j);
    /* an answer cut short: ok with the text so far, and the reason */
    proto_error cut = {.code = PROTO_E_SHUTTING_DOWN};
    snprintf(cut.message, sizeof cut.message, "stopping");
    j = parse_frame(proto_event_done("q2", "A re", PROTO_FINISH_CANCELLED, &u, &t, &cut, NULL));
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "ok")));
    assert_string_equal(cJSON_GetObjectItem(j, "finish_reason")->valuestring, "cancelled");
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "code")->valuestring, "shutting_down");
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "message")->valuestring, "stopping");
    cJSON_Delete(j);

    static const char *const finishes[] = {"stop", "stop_string", "length", "cancelled", "context"};
    for (int f = 0; f <= PROTO_FINISH_CONTEXT; f++)
        assert_string_equal(proto_finish_name((proto_finish)f), finishes[f]);

    /* A non-object body is refused and freed (ASan checks the free). */
    assert_null(proto_reply_ok("x", cJSON_CreateArray()));
}

static void test_pub_events(void **state)
{
    (void)state;
    char topic[80];
    assert_int_equal(proto_topic(topic, sizeof topic, "stream", "gate"), 11);
    assert_string_equal(topic, "stream.gate");
    assert_int_equal(proto_topic(topic, sizeof topic, "daemon", NULL), 6);
    assert_int_equal(proto_topic(topic, 5, "alert", "door"), -1);

    cJSON *j = parse_frame(proto_event_stream_state("gate", PROTO_STREAM_RECONNECTING, "timed out"));
    assert_string_equal(cJSON_GetObjectItem(j, "event")->valuestring, "stream.state");
    assert_string_equal(cJSON_GetObjectItem(j, "stream")->valuestring, "gate");
    assert_string_equal(cJSON_GetObjectItem(j, "state")->valuestring, "reconnecting");
    assert_string_equal(cJSON_GetObjectItem(j, "detail")->valuestring, "timed out");
    double when;
    assert_int_equal(proto_parse_rfc3339(cJSON_GetObjectItem(j, "time")->valuestring, &when), 0);
    assert_true(when > 1.7e9);
    cJSON_Delete(j);

    proto_watch_answer a = {.watch = "gate_open", .stream = "gate", .text = "Yes, it is open.",
                            .value_index = 0, .value = "yes", .media_time = 612.25,
                            .usage = {.prompt_tokens = 10, .completion_tokens = 4}};
    j = parse_frame(proto_event_watch_answer(&a));
    assert_string_equal(cJSON_GetObjectItem(j, "event")->valuestring, "watch.answer");
    assert_string_equal(cJSON_GetObjectItem(j, "watch")->valuestring, "gate_open");
    assert_string_equal(cJSON_GetObjectItem(j, "value")->valuestring, "yes");
    assert_true(cJSON_GetObjectItem(j, "media_time")->valuedouble == 612.25);
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "completion_tokens")->valuedouble, 4);
    cJSON_Delete(j);
    a.value = NULL;
    j = parse_frame(proto_event_watch_answer(&a));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "value")));
    cJSON_Delete(j);
    a.value = "yes";
    j = parse_frame(proto_event_alert(&a));
    assert_string_equal(cJSON_GetObjectItem(j, "event")->valuestring, "alert");
    assert_string_equal(cJSON_GetObjectItem(j, "text")->valuestring, "Yes, it is open.");
    cJSON_Delete(j);

    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "state", "ready");
    cJSON_AddStringToObject(body, "time", "not-overridden");
    j = parse_frame(proto_event_pub("daemon.state", body));
    assert_string_equal(cJSON_GetObjectItem(j, "state")->valuestring, "ready");
    assert_string_not_equal(cJSON_GetObjectItem(j, "time")->valuestring, "not-overridden");
    cJSON_Delete(j);

    proto_stream_status s = {.stream = "gate", .url = "rtsp://h/x", .state = PROTO_STREAM_RUNNING,
                             .fps_target = 2, .fps_in = -1, .pairs_per_s = 1, .frames_in = 10,
                             .pairs_encoded = 5, .cache_tokens_used = 1280,
                             .cache_tokens_cap = 32768, .media_time = 4.75,
                             .oldest_media_time = -1, .tokens_per_pair = 256, .watches = 2,
                             .latency_ms_p50 = 600, .latency_ms_p95 = -1, .latency_ms_p99 = -1};
    cJSON *st = proto_stream_status_json(&s);
    assert_non_null(st);
    assert_string_equal(cJSON_GetObjectItem(st, "state")->valuestring, "running");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(st, "fps_in")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(st, "detail")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(st, "oldest_media_time")));
    assert_true(cJSON_GetObjectItem(st, "media_time")->valuedouble == 4.75);
    assert_int_equal(cJSON_GetObjectItem(st, "cache_tokens_cap")->valuedouble, 32768);
    cJSON *lat = cJSON_GetObjectItem(st, "latency_ms");
    assert_true(cJSON_GetObjectItem(lat, "p50")->valuedouble == 600);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(lat, "p95")));
    /* it slots into a reply body */
    body = cJSON_CreateObject();
    cJSON_AddItemToObject(body, "stream", st);
    j = parse_frame(proto_reply_ok("a1", body));
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "stream"), "url")->valuestring, "rtsp://h/x");
    cJSON_Delete(j);
}

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                    */

static void test_utf8(void **state)
{
    (void)state;
    assert_true(proto_utf8_valid("", 0));
    assert_true(proto_utf8_valid("a\xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80", 10));
    assert_false(proto_utf8_valid("\x80", 1));
    assert_false(proto_utf8_valid("\xc1\xbf", 2));
    assert_false(proto_utf8_valid("\xe0\x80\xaf", 3));
    assert_false(proto_utf8_valid("\xed\xb0\x80", 3));
    assert_false(proto_utf8_valid("\xf5\x80\x80\x80", 4));
    assert_false(proto_utf8_valid("\xc3", 1));

    /* Complete prefix: holds back only an unfinished final sequence. */
    assert_int_equal(proto_utf8_complete_prefix("abc", 3), 3);
    assert_int_equal(proto_utf8_complete_prefix("ab\xc3", 3), 2);
    assert_int_equal(proto_utf8_complete_prefix("ab\xc3\xa9", 4), 4);
    assert_int_equal(proto_utf8_complete_prefix("a\xf0\x9f\x98", 4), 1);
    assert_int_equal(proto_utf8_complete_prefix("a\xf0\x9f", 3), 1);
    assert_int_equal(proto_utf8_complete_prefix("a\xf0", 2), 1);
    assert_int_equal(proto_utf8_complete_prefix("a\xf0\x9f\x98\x80", 5), 5);
    assert_int_equal(proto_utf8_complete_prefix("a\xe6\x97", 3), 1);
    assert_int_equal(proto_utf8_complete_prefix("", 0), 0);
    /* invalid tails are not held back forever: they are passed on (and sanitized) */
    assert_int_equal(proto_utf8_complete_prefix("a\xff", 2), 2);
    assert_int_equal(proto_utf8_complete_prefix("a\xe0\x80", 3), 3);
    assert_int_equal(proto_utf8_complete_prefix("\x80\x80\x80", 3), 3);
}

static void test_rfc3339(void **state)
{
    (void)state;
    double t;
    assert_int_equal(proto_parse_rfc3339("1970-01-01T00:00:00Z", &t), 0);
    assert_true(t == 0);
    assert_int_equal(proto_parse_rfc3339("2025-01-31T10:02:00Z", &t), 0);
    assert_true(t == 1738317720.0);
    assert_int_equal(proto_parse_rfc3339("2025-01-31t11:02:00+01:00", &t), 0);
    assert_true(t == 1738317720.0);
    assert_int_equal(proto_parse_rfc3339("2025-01-31 04:32:00.25-05:30", &t), 0);
    assert_true(t == 1738317720.25);
    assert_int_equal(proto_parse_rfc3339("2024-02-29T23:59:59z", &t), 0);
    assert_true(t == 1709251199.0);
    assert_int_equal(proto_parse_rfc3339("2000-03-01T00:00:00Z", &t), 0);
    assert_true(t == 951868800.0);
    assert_int_equal(proto_parse_rfc3339("9999-12-31T23:59:59Z", &t), 0);
    assert_true(t == 253402300799.0);
    assert_int_equal(proto_parse_rfc3339("1969-12-31T23:59:59Z", &t), 0);
    assert_true(t == -1);
    static const char *const bad[] = {
        "2023-02-29T00:00:00Z", "2025-13-01T00:00:00Z", "2025-00-01T00:00:00Z",
        "2025-04-31T00:00:00Z", "2025-01-31T24:00:00Z", "2025-01-31T10:60:00Z",
        "2025-01-31T10:02:00", "2025-01-31T10:02:00.Z", "2025-01-31T10:02:00+0100",
        "2025-01-31T10:02:00+24:00", "2025-01-31X10:02:00Z", "2025-1-31T10:02:00Z",
        "2025-01-31T10:02:00Zjunk", "", "now",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (proto_parse_rfc3339(bad[i], &t) == 0)
            fail_msg("accepted bad date-time \"%s\"", bad[i]);

    char buf[40];
    assert_int_equal(proto_format_rfc3339(1738317720.25, buf, sizeof buf), 0);
    assert_string_equal(buf, "2025-01-31T10:02:00.250Z");
    assert_int_equal(proto_format_rfc3339(0, buf, sizeof buf), 0);
    assert_string_equal(buf, "1970-01-01T00:00:00.000Z");
    assert_int_equal(proto_format_rfc3339(-0.5, buf, sizeof buf), 0);
    assert_string_equal(buf, "1969-12-31T23:59:59.500Z");
    assert_int_equal(proto_format_rfc3339(1709251199.9996, buf, sizeof buf), 0);
    assert_string_equal(buf, "2024-03-01T00:00:00.000Z");
    assert_int_equal(proto_format_rfc3339(NAN, buf, sizeof buf), -1);
    assert_int_equal(proto_format_rfc3339(1e12, buf, sizeof buf), -1);
    assert_int_equal(proto_format_rfc3339(0, buf, 10), -1);
    /* round trip over many instants */
    for (double x = -1e10; x < 2.5e11; x += 7777777.125) {
        assert_int_equal(proto_format_rfc3339(x, buf, sizeof buf), 0);
        assert_int_equal(proto_parse_rfc3339(buf, &t), 0);
        assert_true(fabs(t - x) < 1e-3);
    }
}

static void test_urls_endpoints_keys(void **state)
{
    (void)state;
    char s[32], err[200];
    struct { const char *url, *scheme; } ok[] = {
        {"rtsp://cam/live", "rtsp"}, {"RTSP://cam", "rtsp"}, {"https://x/y.m3u8", "https"},
        {"/srv/a.mp4", "file"}, {"a.mp4", "file"}, {"file:/srv/a.mp4", "file"},
        {"C:\\clips\\a.mp4", "file"}, {"srt://h:9000?mode=caller", "srt"},
        {"hls+http://x/a.m3u8", "hls+http"}, {"./x:y", "file"},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        assert_int_equal(proto_url_scheme(ok[i].url, s, sizeof s, err, sizeof err), 0);
        assert_string_equal(s, ok[i].scheme);
    }
    assert_int_equal(proto_url_scheme("", s, sizeof s, err, sizeof err), -1);
    assert_int_equal(proto_url_scheme("rtsp://a\tb", s, sizeof s, err, sizeof err), -1);
    assert_non_null(strstr(err, "control"));
    assert_int_equal(proto_url_scheme("abcdefghijklmnopqrstuvwxyzabcdefghij://x", s, sizeof s, err, sizeof err), -1);

    static const char *const local[] = {
        "ipc:///run/vigil/vigild.sock", "inproc://x", "tcp://127.0.0.1:5555", "tcp://127.1.2.3:*",
        "tcp://localhost:1", "tcp://[::1]:5555", "tcp://lo:5555", "tcp://[::ffff:127.0.0.1]:80",
    };
    for (size_t i = 0; i < sizeof local / sizeof local[0]; i++)
        if (!proto_endpoint_is_local(local[i]))
            fail_msg("%s should be local", local[i]);
    static const char *const remote[] = {
        "tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://192.168.1.2:5555", "tcp://eth0:5555",
        "tcp://[::]:5555", "tcp://example.com:80", "tcp://127.0.0.1", "tcp://127.0.0.1:99999",
        "tcp://127.0.0.1:x", "tcp://10.0.0.1;127.0.0.1:5555", "ipc://", "inproc://", "ws://127.0.0.1:80",
        "pgm://eth0;239.192.1.1:5555", "", "127.0.0.1:5555", "tcp://:5555",
    };
    for (size_t i = 0; i < sizeof remote / sizeof remote[0]; i++)
        if (proto_endpoint_is_local(remote[i]))
            fail_msg("%s should not be local", remote[i]);
    assert_false(proto_endpoint_is_local(NULL));

    char pub[41], sec[41], pub2[41];
    assert_int_equal(proto_curve_keypair(pub, sec, err, sizeof err), 0);
    assert_true(proto_curve_key_valid(pub));
    assert_true(proto_curve_key_valid(sec));
    assert_string_not_equal(pub, sec);
    assert_int_equal(proto_curve_public(sec, pub2, err, sizeof err), 0);
    assert_string_equal(pub, pub2);
    assert_false(proto_curve_key_valid("short"));
    assert_false(proto_curve_key_valid("0123456789012345678901234567890123456789X"));
    assert_false(proto_curve_key_valid("012345678901234567890123456789012345678,"));
    assert_false(proto_curve_key_valid(NULL));
    assert_int_equal(proto_curve_public("bad", pub2, err, sizeof err), -1);
}

static void test_expect(void **state)
{
    (void)state;
    proto_request r;
    parse_ok(req_of("watch.add", "\"stream\":\"g\",\"prompt\":\"p\",\"every_seconds\":5,"
                    "\"expect\":{\"type\":\"yes_no\"}"), &r);
    proto_expect yn = r.watch_add.expect;
    proto_request_free(&r);
    assert_int_equal(proto_expect_match(&yn, "yes"), 0);
    assert_int_equal(proto_expect_match(&yn, "Yes."), 0);
    assert_int_equal(proto_expect_match(&yn, "  **YES**, a person is there"), 0);
    assert_int_equal(proto_expect_match(&yn, "\"no\""), 1);
    assert_int_equal(proto_expect_match(&yn, "No"), 1);
    assert_int_equal(proto_expect_match(&yn, "<think>\nmaybe yes\n</think>\n\nNo."), 1);
    assert_int_equal(proto_expect_match(&yn, "<think>unfinished yes"), -1);
    assert_int_equal(proto_expect_match(&yn, "nobody"), -1);
    assert_int_equal(proto_expect_match(&yn, "yesterday"), -1);
    assert_int_equal(proto_expect_match(&yn, "The answer is yes"), -1);
    assert_int_equal(proto_expect_match(&yn, ""), -1);
    char buf[256];
    assert_int_equal(proto_expect_instruction(&yn, buf, sizeof buf), strlen(" Answer with only yes or no."));
    assert_string_equal(buf, " Answer with only yes or no.");

    parse_ok(req_of("watch.add", "\"stream\":\"g\",\"prompt\":\"p\",\"every_seconds\":5,"
                    "\"expect\":{\"type\":\"enum\",\"values\":[\"car\",\"car door\",\"person\",\"n/a\"]}"), &r);
    proto_expect en = r.watch_add.expect;
    proto_request_free(&r);
    assert_int_equal(proto_expect_match(&en, "car"), 0);
    assert_int_equal(proto_expect_match(&en, "Car door, open"), 1);  /* longest wins */
    assert_int_equal(proto_expect_match(&en, "cars"), -1);
    assert_int_equal(proto_expect_match(&en, "PERSON"), 2);
    assert_int_equal(proto_expect_match(&en, "n/a"), 3);
    assert_int_equal(proto_expect_match(&en, "carré"), -1);
    size_t n = proto_expect_instruction(&en, buf, sizeof buf);
    assert_string_equal(buf, " Answer with exactly one of: car, car door, person, n/a.");
    assert_int_equal(n, strlen(buf));
    char small[10];
    assert_int_equal(proto_expect_instruction(&en, small, sizeof small), n);
    assert_int_equal(strlen(small), 9);
    proto_expect none = {0};
    assert_int_equal(proto_expect_match(&none, "yes"), -1);
    assert_int_equal(proto_expect_instruction(&none, buf, sizeof buf), 0);
    assert_string_equal(buf, "");
}

static void test_limits_and_names(void **state)
{
    (void)state;
    char err[256];
    proto_limits lim;
    proto_limits_default(&lim);
    assert_int_equal(proto_limits_check(&lim, err, sizeof err), 0);
    lim.default_max_tokens = lim.max_tokens + 1;
    assert_int_equal(proto_limits_check(&lim, err, sizeof err), -1);
    assert_non_null(strstr(err, "default_max_tokens"));
    proto_limits_default(&lim);
    lim.max_image_bytes = lim.max_message_bytes;
    assert_int_equal(proto_limits_check(&lim, err, sizeof err), -1);
    assert_non_null(strstr(err, "max_image_bytes"));
    proto_limits_default(&lim);
    lim.default_min_tokens_per_pair = 300;
    assert_int_equal(proto_limits_check(&lim, err, sizeof err), -1);
    assert_non_null(strstr(err, "default_min_tokens_per_pair"));
    proto_limits_default(&lim);
    lim.allowed_url_schemes = "rtsp;file";
    assert_int_equal(proto_limits_check(&lim, err, sizeof err), -1);
    assert_non_null(strstr(err, "allowed_url_schemes"));
    proto_limits_default(&lim);
    lim.max_depth = 2;
    assert_int_equal(proto_limits_check(&lim, err, sizeof err), -1);

    static const char *const codes[] = {
        "bad_json", "bad_request", "unknown_op", "unsupported_version", "too_large",
        "limit_exceeded", "not_found", "already_exists", "forbidden", "bad_url", "queue_full",
        "cancelled", "shutting_down", "media_error", "model_error", "internal"};
    assert_int_equal(sizeof codes / sizeof codes[0], PROTO_E_COUNT_ - 1);
    for (int i = 1; i < PROTO_E_COUNT_; i++) {
        assert_string_equal(proto_errc_name((proto_errc)i), codes[i - 1]);
        proto_errc c;
        assert_int_equal(proto_errc_from_name(codes[i - 1], &c), 0);
        assert_int_equal(c, i);
    }
    proto_errc c;
    assert_int_equal(proto_errc_from_name("nope", &c), -1);
    assert_string_equal(proto_errc_name((proto_errc)999), "internal");
    assert_string_equal(proto_op_name(PROTO_OP_WATCH_ADD), "watch.add");
    assert_null(proto_op_name(PROTO_OP_NONE));
    assert_string_equal(proto_stream_state_name(PROTO_STREAM_ENDED), "ended");

    proto_error e = {0};
    proto_error_set(&e, PROTO_E_NOT_FOUND, "stream", "no stream '%s'", "gate");
    assert_int_equal(e.code, PROTO_E_NOT_FOUND);
    assert_string_equal(e.field, "stream");
    assert_string_equal(e.message, "no stream 'gate'");
    /* a long message is cut on a character boundary */
    char longmsg[1000];
    for (int i = 0; i < 499; i++)
        memcpy(longmsg + 2 * i, "\xc3\xa9", 2);
    longmsg[998] = '\0';
    proto_error_set(&e, PROTO_E_INTERNAL, NULL, "x%s", longmsg);
    assert_true(proto_utf8_valid(e.message, strlen(e.message)));
    assert_true(strlen(e.message) >= sizeof e.message - 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_ops),
        cmocka_unit_test(test_default_limits_no_local_files),
        cmocka_unit_test(test_stream_add_defaults),
        cmocka_unit_test(test_stream_add_all_fields),
        cmocka_unit_test(test_stream_add_errors),
        cmocka_unit_test(test_query),
        cmocka_unit_test(test_query_windows),
        cmocka_unit_test(test_query_errors),
        cmocka_unit_test(test_watch_add),
        cmocka_unit_test(test_image),
        cmocka_unit_test(test_envelope),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_limits_on_structure),
        cmocka_unit_test(test_too_large),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_builders),
        cmocka_unit_test(test_pub_events),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_rfc3339),
        cmocka_unit_test(test_urls_endpoints_keys),
        cmocka_unit_test(test_expect),
        cmocka_unit_test(test_limits_and_names),
    };
    return cmocka_run_group_tests_name("protocol", tests, setup_limits, NULL);
}
