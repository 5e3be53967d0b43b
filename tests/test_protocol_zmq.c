/* test_protocol_zmq.c — the protocol over real ZeroMQ sockets: a ROUTER server in a thread
 * (built on proto_router_recv/proto_router_send and proto_parse_request, answering like vigild
 * would) against the client and subscriber helpers, over inproc, ipc and tcp loopback, with
 * streamed answers, interleaved replies, REQ peers, bad framing, timeouts, and CURVE with a
 * real CURVE server socket and a real ZAP handler. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "protocol/protocol.h"

#define OK_TIMEOUT_MS 10000   /* generous: the sanitizer build is slow */

/* ------------------------------------------------------------------------------------------ */
/* The test server                                                                            */

typedef struct server {
    void *ctx;
    bool own_ctx;
    void *router, *pub, *zap;
    char endpoint[256], pub_endpoint[256];
    char deny_key[PROTO_Z85_KEY_LEN + 1];   /* ZAP: refuse this client public key */
    atomic_int stop;
    atomic_int publish;                      /* publish events every loop */
    atomic_int requests;                     /* parsed requests seen */
    atomic_int zap_requests;
    atomic_int failures;                     /* sends that failed (no cmocka in this thread) */
    size_t max_bytes;
    pthread_t thread;
} server;

static void send_frame(server *s, const proto_envelope *env, char *json)
{
    if (!json || proto_router_send(s->router, env, json, strlen(json), 0) != 0)
        atomic_fetch_add(&s->failures, 1);
    free(json);
}

/* Answers one request the way vigild would, with the real parser and builders. */
static void handle(server *s, const proto_envelope *env, const char *payload, size_t len)
{
    proto_limits lim;
    proto_limits_default(&lim);
    proto_request req;
    proto_error err;
    if (proto_parse_request(payload, len, &lim, &req, &err) < 0) {
        send_frame(s, env, proto_reply_parse_error(&err));
        return;
    }
    atomic_fetch_add(&s->requests, 1);
    switch (req.op) {
    case PROTO_OP_PING: {
        cJSON *b = cJSON_CreateObject();
        cJSON_AddTrueToObject(b, "pong");
        send_frame(s, env, proto_reply_ok(req.id, b));
        break;
    }
    case PROTO_OP_STATUS: {
        /* Late frames of other requests first: the client must skip them. */
        send_frame(s, env, proto_reply_ok("stale", NULL));
        send_frame(s, env, proto_event_token("stale", "old", 3));
        cJSON *b = cJSON_CreateObject();
        cJSON_AddItemToObject(b, "streams", cJSON_CreateArray());
        send_frame(s, env, proto_reply_ok(req.id, b));
        break;
    }
    case PROTO_OP_QUERY: {
        if (strcmp(req.query.prompt, "slow") == 0)
            break;  /* never answers: timeouts */
        if (strcmp(req.query.prompt, "fail") == 0) {
            send_frame(s, env, proto_reply_error(req.id, PROTO_E_NOT_FOUND, "no stream '%s'",
                                                 req.query.stream));
            break;
        }
        /* One token per word; the done text is their concatenation. */
        char text[1024] = "";
        size_t tl = 0;
        int n = 0;
        char *copy = strdup(req.query.prompt), *save = NULL;
        for (char *w = strtok_r(copy, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
            char tok[256];
            int k = snprintf(tok, sizeof tok, "%s%s", n ? " " : "", w);
            if (req.query.stream_tokens)
                send_frame(s, env, proto_event_token(req.id, tok, (size_t)k));
            tl += (size_t)snprintf(text + tl, sizeof text - tl, "%s", tok);
            n++;
        }
        free(copy);
        proto_usage u = {.prompt_tokens = 100, .completion_tokens = n, .cached_tokens = 90};
        proto_timing t = {.queue_ms = 1, .ttft_ms = 2, .total_ms = 3, .tokens_per_s = 4};
        send_frame(s, env, proto_event_done(req.id, text, PROTO_FINISH_STOP, &u, &t, NULL, NULL));
        break;
    }
    default: {
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "op", proto_op_name(req.op));
        send_frame(s, env, proto_reply_ok(req.id, b));
        break;
    }
    }
    proto_request_free(&req);
}

/* ZAP (RFC 27): allow every CURVE client except deny_key. */
static void handle_zap(server *s)
{
    zmq_msg_t parts[8];
    int n = 0;
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s->zap, 0) < 0) {
            zmq_msg_close(&m);
            break;
        }
        bool more = zmq_msg_more(&m);
        if (n < 8)
            parts[n++] = m;
        else
            zmq_msg_close(&m);
        if (!more)
            break;
    }
    atomic_fetch_add(&s->zap_requests, 1);
    /* version, request id, domain, address, identity, mechanism, credentials... */
    const char *status = "200";
    if (n >= 7 && zmq_msg_size(&parts[5]) == 5 && memcmp(zmq_msg_data(&parts[5]), "CURVE", 5) == 0 &&
        zmq_msg_size(&parts[6]) == 32 && s->deny_key[0]) {
        char z85[PROTO_Z85_KEY_LEN + 1];
        zmq_z85_encode(z85, zmq_msg_data(&parts[6]), 32);
        if (strcmp(z85, s->deny_key) == 0)
            status = "400";
    }
    zmq_send(s->zap, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(s->zap, n > 1 ? zmq_msg_data(&parts[1]) : "", n > 1 ? zmq_msg_size(&parts[1]) : 0,
             ZMQ_SNDMORE);
    zmq_send(s->zap, status, 3, ZMQ_SNDMORE);
    zmq_send(s->zap, status[0] == '2' ? "OK" : "denied", status[0] == '2' ? 2 : 6, ZMQ_SNDMORE);
    zmq_send(s->zap, "", 0, ZMQ_SNDMORE);
    zmq_send(s->zap, "", 0, 0);
    for (int i = 0; i < n; i++)
        zmq_msg_close(&parts[i]);
}

static void publish_events(server *s)
{
    char topic[80];
    char *ev = proto_event_stream_state("cam1", PROTO_STREAM_RUNNING, NULL);
    proto_topic(topic, sizeof topic, "stream", "cam1");
    zmq_send(s->pub, topic, strlen(topic), ZMQ_SNDMORE);
    zmq_send(s->pub, ev, strlen(ev), 0);
    free(ev);
    proto_watch_answer a = {.watch = "door", .stream = "cam1", .text = "Yes.", .value_index = 0,
                            .value = "yes", .media_time = 1.25};
    ev = proto_event_alert(&a);
    proto_topic(topic, sizeof topic, "alert", "door");
    zmq_send(s->pub, topic, strlen(topic), ZMQ_SNDMORE);
    zmq_send(s->pub, ev, strlen(ev), 0);
    free(ev);
}

static void *server_main(void *arg)
{
    server *s = arg;
    while (!atomic_load(&s->stop)) {
        zmq_pollitem_t items[2] = {{.socket = s->router, .events = ZMQ_POLLIN},
                                   {.socket = s->zap, .events = ZMQ_POLLIN}};
        int r = zmq_poll(items, s->zap ? 2 : 1, 20);
        if (r < 0)
            continue;
        if (s->zap && (items[1].revents & ZMQ_POLLIN))
            handle_zap(s);
        if (atomic_load(&s->publish))
            publish_events(s);
        /* Drain: vigild must do the same with ZMQ_FD being edge-triggered. */
        for (;;) {
            proto_envelope env;
            char *payload;
            size_t len;
            int rc = proto_router_recv(s->router, ZMQ_DONTWAIT, s->max_bytes, &env, &payload, &len);
            if (rc == PROTO_RECV_AGAIN || rc == PROTO_RECV_ERROR)
                break;
            if (rc == PROTO_RECV_BAD_FRAMING) {
                send_frame(s, &env, proto_reply_error(NULL, PROTO_E_BAD_REQUEST,
                                                      "a request is one frame of JSON"));
                continue;
            }
            if (rc == PROTO_RECV_TOO_LARGE) {
                send_frame(s, &env, proto_reply_error(NULL, PROTO_E_TOO_LARGE,
                                                      "the request is over %zu bytes", s->max_bytes));
                continue;
            }
            handle(s, &env, payload, len);
            free(payload);
        }
    }
    return NULL;
}

/* Binds in the calling thread (so the endpoint is known at once), then hands the sockets over
 * to the server thread; pthread_create is the memory barrier ZeroMQ requires for that. */
static void server_start(server *s, void *shared_ctx, const char *endpoint, const char *pub_ep,
                         const char *secret_key, const char *deny_key)
{
    memset(s, 0, sizeof *s);
    if (deny_key)
        snprintf(s->deny_key, sizeof s->deny_key, "%s", deny_key);
    s->own_ctx = shared_ctx == NULL;
    s->ctx = shared_ctx ? shared_ctx : zmq_ctx_new();
    s->max_bytes = 1 << 20;
    int zero = 0;
    if (secret_key) {
        s->zap = zmq_socket(s->ctx, ZMQ_REP);
        zmq_setsockopt(s->zap, ZMQ_LINGER, &zero, sizeof zero);
        assert_int_equal(zmq_bind(s->zap, "inproc://zeromq.zap.01"), 0);
    }
    s->router = zmq_socket(s->ctx, ZMQ_ROUTER);
    zmq_setsockopt(s->router, ZMQ_LINGER, &zero, sizeof zero);
    if (secret_key) {
        int one = 1;
        assert_int_equal(zmq_setsockopt(s->router, ZMQ_CURVE_SERVER, &one, sizeof one), 0);
        assert_int_equal(zmq_setsockopt(s->router, ZMQ_CURVE_SECRETKEY, secret_key, 41), 0);
    }
    if (zmq_bind(s->router, endpoint) != 0)
        fail_msg("bind %s: %s", endpoint, zmq_strerror(errno));
    size_t sz = sizeof s->endpoint;
    zmq_getsockopt(s->router, ZMQ_LAST_ENDPOINT, s->endpoint, &sz);
    if (pub_ep) {
        s->pub = zmq_socket(s->ctx, ZMQ_PUB);
        zmq_setsockopt(s->pub, ZMQ_LINGER, &zero, sizeof zero);
        assert_int_equal(zmq_bind(s->pub, pub_ep), 0);
        sz = sizeof s->pub_endpoint;
        zmq_getsockopt(s->pub, ZMQ_LAST_ENDPOINT, s->pub_endpoint, &sz);
    }
    assert_int_equal(pthread_create(&s->thread, NULL, server_main, s), 0);
}

static void server_stop(server *s)
{
    atomic_store(&s->stop, 1);
    pthread_join(s->thread, NULL);
    zmq_close(s->router);
    if (s->pub)
        zmq_close(s->pub);
    if (s->zap)
        zmq_close(s->zap);
    if (s->own_ctx)
        zmq_ctx_term(s->ctx);
    assert_int_equal(atomic_load(&s->failures), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Client-side helpers                                                                        */

typedef struct collected {
    int tokens;
    char text[1024];
    int stop_after;   /* > 0: ask to stop after this many tokens */
} collected;

static int on_token(void *user, const cJSON *frame)
{
    collected *c = user;
    const cJSON *ev = cJSON_GetObjectItem(frame, "event");
    assert_true(cJSON_IsString(ev));
    assert_string_equal(ev->valuestring, "token");
    assert_null(cJSON_GetObjectItem(frame, "ok"));
    size_t l = strlen(c->text);
    snprintf(c->text + l, sizeof c->text - l, "%s", cJSON_GetObjectItem(frame, "text")->valuestring);
    c->tokens++;
    return c->stop_after > 0 && c->tokens >= c->stop_after;
}

static cJSON *call(proto_client *c, const char *req, collected *col)
{
    char err[512];
    cJSON *fin = NULL;
    int r = proto_client_request(c, req, OK_TIMEOUT_MS, on_token, col, &fin, err, sizeof err);
    if (r != 0)
        fail_msg("request %s failed (%d): %s", req, r, err);
    assert_non_null(fin);
    return fin;
}

/* The flows every transport must carry. */
static void exercise(proto_client *c)
{
    collected col = {0};
    cJSON *f = call(c, "{\"id\":\"p1\",\"op\":\"ping\"}", &col);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(f, "ok")));
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(f, "pong")));
    assert_string_equal(cJSON_GetObjectItem(f, "id")->valuestring, "p1");
    assert_int_equal(col.tokens, 0);
    cJSON_Delete(f);

    /* Streamed answer: tokens through the callback, then the final done frame. */
    memset(&col, 0, sizeof col);
    f = call(c, "{\"id\":\"q1\",\"op\":\"query\",\"stream\":\"cam1\",\"prompt\":\"a red car \xc3\xa9t\xc3\xa9\"}", &col);
    assert_int_equal(col.tokens, 4);
    assert_string_equal(col.text, "a red car \xc3\xa9t\xc3\xa9");
    assert_string_equal(cJSON_GetObjectItem(f, "event")->valuestring, "done");
    assert_string_equal(cJSON_GetObjectItem(f, "text")->valuestring, col.text);
    assert_string_equal(cJSON_GetObjectItem(f, "finish_reason")->valuestring, "stop");
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(f, "usage"), "completion_tokens")->valuedouble, 4);
    cJSON_Delete(f);

    /* Without streaming, only done. */
    memset(&col, 0, sizeof col);
    f = call(c, "{\"id\":\"q2\",\"op\":\"query\",\"stream\":\"cam1\",\"prompt\":\"x y\",\"stream_tokens\":false}", &col);
    assert_int_equal(col.tokens, 0);
    assert_string_equal(cJSON_GetObjectItem(f, "text")->valuestring, "x y");
    cJSON_Delete(f);

    /* Frames of other ids are skipped. */
    f = call(c, "{\"id\":\"s1\",\"op\":\"status\"}", &col);
    assert_string_equal(cJSON_GetObjectItem(f, "id")->valuestring, "s1");
    assert_true(cJSON_IsArray(cJSON_GetObjectItem(f, "streams")));
    cJSON_Delete(f);

    /* Error replies are final frames too; an unreadable request's reply has id null. */
    f = call(c, "{\"id\":\"e1\",\"op\":\"query\",\"stream\":\"cam1\",\"prompt\":\"fail\"}", &col);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(f, "ok")));
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(f, "error"), "code")->valuestring, "not_found");
    cJSON_Delete(f);
    f = call(c, "{\"id\":\"e2\",\"op\":\"query\",\"stream\":\"cam 1\",\"prompt\":\"p\"}", &col);
    cJSON *e = cJSON_GetObjectItem(f, "error");
    assert_string_equal(cJSON_GetObjectItem(e, "code")->valuestring, "bad_request");
    assert_string_equal(cJSON_GetObjectItem(e, "field")->valuestring, "stream");
    cJSON_Delete(f);
    /* Malformed JSON: the request helper refuses to send it, the raw calls do not. */
    char err[256], *raw;
    size_t rawlen;
    const char *bad = "{\"id\":\"e3\",\"op\":\"ping\",\"x\":[1,}";
    assert_int_equal(proto_client_send(c, bad, strlen(bad), OK_TIMEOUT_MS, err, sizeof err), 0);
    assert_int_equal(proto_client_recv(c, OK_TIMEOUT_MS, &raw, &rawlen, err, sizeof err), 0);
    f = cJSON_Parse(raw);
    free(raw);
    assert_non_null(f);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(f, "id")));
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(f, "error"), "code")->valuestring, "bad_json");
    cJSON_Delete(f);
}

/* ------------------------------------------------------------------------------------------ */
/* Tests                                                                                      */

static void test_inproc(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    server s;
    server_start(&s, ctx, "inproc://vigil-test", NULL, NULL, NULL);
    char err[256];
    proto_client *c = proto_client_connect_ctx(ctx, "inproc://vigil-test", NULL, err, sizeof err);
    if (!c)
        fail_msg("%s", err);
    exercise(c);
    /* A second client on the same context, at the same time. */
    proto_client *c2 = proto_client_connect_ctx(ctx, "inproc://vigil-test", NULL, err, sizeof err);
    assert_non_null(c2);
    exercise(c2);
    proto_client_close(c2);
    proto_client_close(c);
    server_stop(&s);
    zmq_ctx_term(ctx);
}

static void test_ipc_and_req_peer(void **state)
{
    (void)state;
    char dir[] = "/tmp/vigil-proto-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char ep[256];
    snprintf(ep, sizeof ep, "ipc://%s/vigild.sock", dir);
    assert_true(proto_endpoint_is_local(ep));
    server s;
    server_start(&s, NULL, ep, NULL, NULL, NULL);
    char err[256];
    proto_client *c = proto_client_connect(ep, NULL, err, sizeof err);
    if (!c)
        fail_msg("%s", err);
    exercise(c);
    proto_client_close(c);

    /* A REQ peer: the envelope keeps its empty delimiter, one reply per request. */
    void *ctx = zmq_ctx_new();
    void *req = zmq_socket(ctx, ZMQ_REQ);
    int zero = 0, tmo = OK_TIMEOUT_MS;
    zmq_setsockopt(req, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(req, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    assert_int_equal(zmq_connect(req, ep), 0);
    const char *q = "{\"id\":\"r1\",\"op\":\"query\",\"stream\":\"cam1\",\"prompt\":\"hello there\",\"stream_tokens\":false}";
    assert_int_equal(zmq_send(req, q, strlen(q), 0), (int)strlen(q));
    char buf[2048];
    int n = zmq_recv(req, buf, sizeof buf - 1, 0);
    assert_true(n > 0);
    buf[n] = '\0';
    int more = 0;
    size_t sz = sizeof more;
    zmq_getsockopt(req, ZMQ_RCVMORE, &more, &sz);
    assert_int_equal(more, 0);
    cJSON *f = cJSON_Parse(buf);
    assert_non_null(f);
    assert_string_equal(cJSON_GetObjectItem(f, "id")->valuestring, "r1");
    assert_string_equal(cJSON_GetObjectItem(f, "text")->valuestring, "hello there");
    cJSON_Delete(f);
    zmq_close(req);
    zmq_ctx_term(ctx);

    server_stop(&s);
    char path[300];
    snprintf(path, sizeof path, "%s/vigild.sock", dir);
    unlink(path);
    rmdir(dir);
}

static void test_tcp_interleaved_and_framing(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL, "tcp://127.0.0.1:*", NULL, NULL, NULL);
    assert_true(proto_endpoint_is_local(s.endpoint));
    char err[256];
    proto_client *c = proto_client_connect(s.endpoint, NULL, err, sizeof err);
    if (!c)
        fail_msg("%s", err);
    exercise(c);

    /* Two queries in flight on one socket: frames carry their ids, each ends with one final. */
    const char *q1 = "{\"id\":\"A\",\"op\":\"query\",\"stream\":\"s\",\"prompt\":\"one two three\"}";
    const char *q2 = "{\"id\":\"B\",\"op\":\"query\",\"stream\":\"s\",\"prompt\":\"four five\"}";
    assert_int_equal(proto_client_send(c, q1, strlen(q1), OK_TIMEOUT_MS, err, sizeof err), 0);
    assert_int_equal(proto_client_send(c, q2, strlen(q2), OK_TIMEOUT_MS, err, sizeof err), 0);
    int tokens[2] = {0, 0}, finals[2] = {0, 0};
    while (finals[0] + finals[1] < 2) {
        char *json;
        size_t len;
        int r = proto_client_recv(c, OK_TIMEOUT_MS, &json, &len, err, sizeof err);
        if (r != 0)
            fail_msg("recv: %s", err);
        assert_int_equal(strlen(json), len);
        cJSON *f = cJSON_Parse(json);
        free(json);
        assert_non_null(f);
        const char *id = cJSON_GetObjectItem(f, "id")->valuestring;
        int k = id[0] == 'A' ? 0 : 1;
        assert_true(id[0] == 'A' || id[0] == 'B');
        if (cJSON_GetObjectItem(f, "ok"))
            finals[k]++;
        else
            tokens[k]++;
        cJSON_Delete(f);
    }
    assert_int_equal(tokens[0], 3);
    assert_int_equal(tokens[1], 2);

    /* The callback can stop the wait. */
    collected col = {.stop_after = 2};
    cJSON *fin = NULL;
    int r = proto_client_request(c, "{\"id\":\"C\",\"op\":\"query\",\"stream\":\"s\",\"prompt\":\"a b c d\"}",
                                 OK_TIMEOUT_MS, on_token, &col, &fin, err, sizeof err);
    assert_int_equal(r, -ECANCELED);
    assert_null(fin);
    assert_int_equal(col.tokens, 2);
    /* ... and the next request still gets its own reply (C's late frames are skipped). */
    memset(&col, 0, sizeof col);
    fin = call(c, "{\"id\":\"D\",\"op\":\"ping\"}", &col);
    assert_string_equal(cJSON_GetObjectItem(fin, "id")->valuestring, "D");
    cJSON_Delete(fin);

    /* Requests the helper refuses to send. */
    assert_int_equal(proto_client_request(c, "{\"op\":\"ping\"}", 100, NULL, NULL, &fin, err, sizeof err), -EINVAL);
    assert_int_equal(proto_client_request(c, "not json", 100, NULL, NULL, &fin, err, sizeof err), -EINVAL);
    assert_int_equal(proto_client_request(c, "{\"id\":5}", 100, NULL, NULL, &fin, err, sizeof err), -EINVAL);
    proto_client_close(c);

    /* A raw DEALER sending two frames, then an oversized frame. */
    void *ctx = zmq_ctx_new();
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0, tmo = OK_TIMEOUT_MS;
    zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(d, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    assert_int_equal(zmq_connect(d, s.endpoint), 0);
    zmq_send(d, "{\"id\":\"x\",", 10, ZMQ_SNDMORE);
    zmq_send(d, "\"op\":\"ping\"}", 12, 0);
    char buf[4096];
    int n = zmq_recv(d, buf, sizeof buf - 1, 0);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strstr(buf, "\"code\":\"bad_request\""));
    size_t big = s.max_bytes + 1;
    char *huge = malloc(big);
    memset(huge, ' ', big);
    zmq_send(d, huge, big, 0);
    free(huge);
    n = zmq_recv(d, buf, sizeof buf - 1, 0);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strstr(buf, "\"code\":\"too_large\""));
    /* The server is still fine. */
    const char *p = "{\"id\":\"after\",\"op\":\"ping\"}";
    zmq_send(d, p, strlen(p), 0);
    n = zmq_recv(d, buf, sizeof buf - 1, 0);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strstr(buf, "\"id\":\"after\""));
    zmq_close(d);
    zmq_ctx_term(ctx);
    server_stop(&s);
}

static void test_timeouts(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL, "tcp://127.0.0.1:*", NULL, NULL, NULL);
    char err[512];
    proto_client *c = proto_client_connect(s.endpoint, NULL, err, sizeof err);
    assert_non_null(c);
    cJSON *fin = NULL;
    int r = proto_client_request(c, "{\"id\":\"z\",\"op\":\"query\",\"stream\":\"s\",\"prompt\":\"slow\"}",
                                 300, NULL, NULL, &fin, err, sizeof err);
    assert_int_equal(r, -ETIMEDOUT);
    assert_null(fin);
    assert_non_null(strstr(err, s.endpoint));
    assert_non_null(strstr(err, "did not answer"));
    char *json;
    size_t len;
    assert_int_equal(proto_client_recv(c, 50, &json, &len, err, sizeof err), -ETIMEDOUT);
    assert_true(atomic_load(&s.requests) >= 1);
    proto_client_close(c);
    server_stop(&s);

    /* Nobody listening. */
    char dir[] = "/tmp/vigil-proto-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char ep[300];
    snprintf(ep, sizeof ep, "ipc://%s/nobody.sock", dir);
    c = proto_client_connect(ep, NULL, err, sizeof err);
    assert_non_null(c);
    r = proto_client_request(c, "{\"id\":\"p\",\"op\":\"ping\"}", 300, NULL, NULL, &fin, err, sizeof err);
    assert_int_equal(r, -ETIMEDOUT);
    print_message("nobody listening: %s\n", err);
    assert_non_null(strstr(err, "is vigild running"));
    proto_client_close(c);
    rmdir(dir);

    /* Endpoints that cannot work fail at once, with the expected forms in the message. */
    assert_null(proto_client_connect("localhost:5555", NULL, err, sizeof err));
    assert_non_null(strstr(err, "tcp://HOST:PORT"));
    assert_null(proto_client_connect("", NULL, err, sizeof err));
    proto_curve_keys bad = {.server_public = "short"};
    assert_null(proto_client_connect("tcp://127.0.0.1:1", &bad, err, sizeof err));
    assert_non_null(strstr(err, "Z85"));
}

/* A request that must time out, with a diagnosis naming `expect`. The diagnosis comes from
 * socket-monitor events, which a loaded machine may deliver late: retry a few short waits
 * rather than one long one. */
static void expect_timeout_hint(proto_client *c, const char *expect, const char *label)
{
    char err[512] = "";
    for (int attempt = 0; attempt < 20; attempt++) {
        cJSON *fin = NULL;
        int r = proto_client_request(c, "{\"id\":\"p\",\"op\":\"ping\"}", 500, NULL, NULL, &fin,
                                     err, sizeof err);
        assert_int_equal(r, -ETIMEDOUT);
        assert_null(fin);
        if (strstr(err, expect))
            break;
    }
    print_message("%s: %s\n", label, err);
    if (!strstr(err, expect))
        fail_msg("%s: expected the timeout message to mention \"%s\": %s", label, expect, err);
}

static void make_keys(char pub[41], char sec[41])
{
    char err[200];
    if (proto_curve_keypair(pub, sec, err, sizeof err) != 0)
        fail_msg("%s", err);
}

static void test_curve(void **state)
{
    (void)state;
    char spub[41], ssec[41], cpub[41], csec[41], xpub[41], xsec[41];
    make_keys(spub, ssec);
    make_keys(cpub, csec);
    make_keys(xpub, xsec);
    server s;
    server_start(&s, NULL, "tcp://127.0.0.1:*", NULL, ssec, xpub);

    char err[512];
    proto_curve_keys keys;
    snprintf(keys.server_public, sizeof keys.server_public, "%s", spub);
    snprintf(keys.client_public, sizeof keys.client_public, "%s", cpub);
    snprintf(keys.client_secret, sizeof keys.client_secret, "%s", csec);
    proto_client *c = proto_client_connect(s.endpoint, &keys, err, sizeof err);
    if (!c)
        fail_msg("%s", err);
    exercise(c);
    proto_client_close(c);
    assert_true(atomic_load(&s.zap_requests) >= 1);   /* the ZAP handler saw our key */

    /* A client key the ZAP handler refuses. */
    proto_curve_keys denied = keys;
    snprintf(denied.client_public, sizeof denied.client_public, "%s", xpub);
    snprintf(denied.client_secret, sizeof denied.client_secret, "%s", xsec);
    c = proto_client_connect(s.endpoint, &denied, err, sizeof err);
    assert_non_null(c);
    expect_timeout_hint(c, "rejected", "refused client key");
    proto_client_close(c);

    /* The wrong server key. */
    proto_curve_keys wrong = keys;
    snprintf(wrong.server_public, sizeof wrong.server_public, "%s", xpub);
    c = proto_client_connect(s.endpoint, &wrong, err, sizeof err);
    assert_non_null(c);
    expect_timeout_hint(c, "CURVE handshake failed", "wrong server key");
    proto_client_close(c);

    /* No keys at all against a CURVE server. */
    c = proto_client_connect(s.endpoint, NULL, err, sizeof err);
    assert_non_null(c);
    expect_timeout_hint(c, "requires CURVE", "no client keys");
    proto_client_close(c);
    assert_int_equal(atomic_load(&s.requests), 5);  /* only the good client got through */
    server_stop(&s);
}

static void test_subscriber(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", NULL, NULL);
    char err[256];
    const char *topics[] = {"alert."};
    proto_subscriber *sub = proto_subscriber_connect(s.pub_endpoint, NULL, topics, 1, err, sizeof err);
    if (!sub)
        fail_msg("%s", err);
    proto_subscriber *all = proto_subscriber_connect(s.pub_endpoint, NULL, NULL, 0, err, sizeof err);
    assert_non_null(all);
    atomic_store(&s.publish, 1);   /* PUB drops until subscribers join: keep publishing */
    for (int i = 0; i < 3; i++) {
        char *topic, *json;
        cJSON *ev;
        int r = proto_subscriber_recv(sub, OK_TIMEOUT_MS, &topic, &json, &ev, err, sizeof err);
        if (r != 0)
            fail_msg("%s", err);
        assert_string_equal(topic, "alert.door");
        assert_string_equal(cJSON_GetObjectItem(ev, "event")->valuestring, "alert");
        assert_string_equal(cJSON_GetObjectItem(ev, "watch")->valuestring, "door");
        assert_string_equal(cJSON_GetObjectItem(ev, "value")->valuestring, "yes");
        assert_non_null(strstr(json, "\"media_time\":1.25"));
        cJSON_Delete(ev);
        free(topic);
        free(json);
    }
    bool seen_stream = false, seen_alert = false;
    for (int i = 0; i < 50 && !(seen_stream && seen_alert); i++) {
        char *topic, *json;
        assert_int_equal(proto_subscriber_recv(all, OK_TIMEOUT_MS, &topic, &json, NULL, err, sizeof err), 0);
        seen_stream |= strcmp(topic, "stream.cam1") == 0;
        seen_alert |= strcmp(topic, "alert.door") == 0;
        free(topic);
        free(json);
    }
    assert_true(seen_stream && seen_alert);
    proto_subscriber_close(all);
    atomic_store(&s.publish, 0);
    proto_subscriber_close(sub);

    const char *none[] = {"watch.nothing"};
    sub = proto_subscriber_connect(s.pub_endpoint, NULL, none, 1, err, sizeof err);
    assert_non_null(sub);
    atomic_store(&s.publish, 1);
    char *topic, *json;
    assert_int_equal(proto_subscriber_recv(sub, 300, &topic, &json, NULL, err, sizeof err), -ETIMEDOUT);
    assert_null(topic);
    proto_subscriber_close(sub);
    server_stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inproc),
        cmocka_unit_test(test_ipc_and_req_peer),
        cmocka_unit_test(test_tcp_interleaved_and_framing),
        cmocka_unit_test(test_timeouts),
        cmocka_unit_test(test_curve),
        cmocka_unit_test(test_subscriber),
    };
    return cmocka_run_group_tests_name("protocol_zmq", tests, NULL, NULL);
}
