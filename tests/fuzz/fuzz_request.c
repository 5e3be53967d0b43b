/* fuzz_request.c — libFuzzer target for the request parser/validator and the builders that
 * turn its results (and raw bytes) into frames. Built by `make fuzz` with clang and
 * -fsanitize=fuzzer,address,undefined; run briefly by tests/test_fuzz_smoke.c.
 *
 * Beyond "no crash, no leak, no undefined behaviour" it checks the parser's promises: an
 * accepted request satisfies the ranges protocol.h documents, a rejection always has a code
 * and a UTF-8 message, and every frame a builder makes is valid UTF-8 JSON. A broken promise
 * aborts, which libFuzzer reports as a crash with the input saved. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/protocol.h"

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "fuzz_request: %s:%d: check failed: %s\n", __FILE__,      \
                    __LINE__, #cond);                                                 \
            abort();                                                                  \
        }                                                                             \
    } while (0)

static void check_frame(char *s)
{
    CHECK(s != NULL);
    CHECK(proto_utf8_valid(s, strlen(s)));
    cJSON *j = cJSON_Parse(s);
    CHECK(cJSON_IsObject(j));
    cJSON_Delete(j);
    free(s);
}

static bool name_ok(const char *s, bool may_be_empty)
{
    size_t n = strlen(s);
    if (n == 0)
        return may_be_empty;
    return n <= PROTO_NAME_MAX &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") == n;
}

static void check_sampling(const proto_sampling *s, const proto_limits *lim)
{
    CHECK(s->temperature >= 0 && s->temperature <= 5);
    CHECK(s->top_k >= 0);
    CHECK(s->top_p > 0 && s->top_p <= 1);
    CHECK(s->min_p >= 0 && s->min_p < 1);
    CHECK(s->repetition_penalty > 0 && s->repetition_penalty <= 10);
    CHECK(s->presence_penalty >= -2 && s->presence_penalty <= 2);
    CHECK(s->n_stop <= (size_t)lim->max_stop_strings);
    for (size_t i = 0; i < s->n_stop; i++)
        CHECK(s->stop[i] && s->stop[i][0] && strlen(s->stop[i]) <= lim->max_stop_bytes);
}

static void check_text(const char *s, const proto_limits *lim)
{
    CHECK(s && s[0]);
    CHECK(strlen(s) <= lim->max_prompt_bytes);
    CHECK(proto_utf8_valid(s, strlen(s)));
}

static void check_request(const proto_request *r, const proto_limits *lim)
{
    CHECK(r->op > PROTO_OP_NONE && r->op < PROTO_OP_COUNT_);
    size_t idl = strlen(r->id);
    CHECK(idl >= 1 && idl <= PROTO_ID_MAX && proto_utf8_valid(r->id, idl));
    switch (r->op) {
    case PROTO_OP_STREAM_ADD: {
        const proto_stream_add *a = &r->stream_add;
        CHECK(name_ok(a->stream, false));
        CHECK(a->url && a->url[0] && strlen(a->url) <= lim->max_url_bytes);
        CHECK(a->fps > 0 && a->fps <= lim->max_fps);
        CHECK(a->min_tokens_per_pair >= 4 && a->min_tokens_per_pair <= a->max_tokens_per_pair);
        CHECK(a->max_tokens_per_pair <= lim->max_tokens_per_pair);
        if (a->cache_kind == PROTO_CACHE_TOKENS)
            CHECK(a->cache_tokens >= 1024 && a->cache_tokens <= lim->max_cache_tokens);
        else
            CHECK(a->cache_bytes >= (1u << 20) && a->cache_bytes <= lim->max_cache_bytes);
        CHECK(!a->system_prompt || (a->system_prompt[0] &&
                                    strlen(a->system_prompt) <= lim->max_prompt_bytes));
        CHECK(a->start_offset >= 0);
        CHECK(a->decoder_threads >= 0 && a->decoder_threads <= 64);
        CHECK(a->timeout_ms >= 100 && a->timeout_ms <= 600000);
        break;
    }
    case PROTO_OP_QUERY: {
        const proto_query *q = &r->query;
        CHECK(name_ok(q->stream, false));
        check_text(q->prompt, lim);
        CHECK(q->max_tokens >= 1 && q->max_tokens <= lim->max_tokens);
        check_sampling(&q->sampling, lim);
        const proto_window *w = &q->window;
        if (w->kind == PROTO_WINDOW_LAST)
            CHECK(w->last_seconds > 0);
        if (w->kind == PROTO_WINDOW_MEDIA || w->kind == PROTO_WINDOW_WALL) {
            CHECK(w->has_from || w->has_to);
            if (w->has_from && w->has_to)
                CHECK(w->from < w->to);
        }
        break;
    }
    case PROTO_OP_WATCH_ADD: {
        const proto_watch_add *w = &r->watch_add;
        CHECK(name_ok(w->stream, false) && name_ok(w->watch, true));
        check_text(w->prompt, lim);
        CHECK(w->on_pair != (w->every_seconds > 0));
        CHECK(w->on_pair || w->every_seconds >= lim->min_watch_interval_s);
        check_sampling(&w->sampling, lim);
        CHECK(w->expect.n_values <= PROTO_ENUM_MAX);
        if (w->expect.kind == PROTO_EXPECT_NONE)
            CHECK(w->expect.n_values == 0);
        else
            CHECK(w->expect.n_values >= 2);
        CHECK(w->expect.n_values == 32 || (w->expect.alert_mask >> w->expect.n_values) == 0);
        /* Each value must match itself. */
        for (size_t i = 0; i < w->expect.n_values; i++)
            CHECK(proto_expect_match(&w->expect, w->expect.values[i]) >= 0);
        char buf[64];
        size_t need = proto_expect_instruction(&w->expect, buf, sizeof buf);
        CHECK(strlen(buf) == (need < sizeof buf ? need : strlen(buf)));
        CHECK(proto_utf8_valid(buf, strlen(buf)));
        break;
    }
    case PROTO_OP_IMAGE: {
        const proto_image *im = &r->image;
        CHECK((im->path == NULL) != (im->data == NULL));
        CHECK(!im->path || im->path[0] == '/');
        CHECK(!im->data || (im->data_len > 0 && im->data_len <= lim->max_image_bytes));
        check_text(im->prompt, lim);
        check_sampling(&im->sampling, lim);
        break;
    }
    case PROTO_OP_STREAM_REMOVE:
        CHECK(name_ok(r->stream_remove.stream, false));
        break;
    case PROTO_OP_WATCH_REMOVE:
        CHECK(name_ok(r->watch_remove.watch, false));
        break;
    case PROTO_OP_STATUS:
        CHECK(name_ok(r->status.stream, true));
        break;
    default:
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static proto_limits lim[2];
    static bool init;
    if (!init) {
        proto_limits_default(&lim[0]);
        /* A tight configuration reaches the limit checks with small inputs. */
        lim[1] = lim[0];
        lim[1].max_message_bytes = 4096;
        lim[1].max_depth = 4;
        lim[1].max_json_values = 64;
        lim[1].max_prompt_bytes = 16;
        lim[1].max_tokens = 64;
        lim[1].default_max_tokens = 16;
        lim[1].max_stop_strings = 2;
        lim[1].max_stop_bytes = 4;
        lim[1].max_image_bytes = 16;
        lim[1].allowed_url_schemes = "rtsp";
        lim[1].allow_image_path = false;
        init = true;
    }
    const char *in = (const char *)data;
    for (int pass = 0; pass < 2; pass++) {
        proto_request req;
        proto_error err;
        if (proto_parse_request(in, size, &lim[pass], &req, &err) == 0) {
            check_request(&req, &lim[pass]);
            check_frame(proto_reply_ok(req.id, NULL));
            if (req.op == PROTO_OP_QUERY) {
                const char *p = req.query.prompt;
                check_frame(proto_event_token(req.id, p, strlen(p)));
                proto_usage u = {1, 2, 3};
                proto_timing t = {1, 2, 3, 4};
                check_frame(proto_event_done(req.id, p, PROTO_FINISH_STOP, &u, &t, NULL, NULL));
            }
            proto_request_free(&req);
            CHECK(req.op == PROTO_OP_NONE);
        } else {
            CHECK(err.code != PROTO_OK && err.code < PROTO_E_COUNT_);
            CHECK(err.message[0] != '\0');
            CHECK(proto_utf8_valid(err.message, strlen(err.message)));
            CHECK(proto_utf8_valid(err.field, strlen(err.field)));
            CHECK(!err.has_id || err.id[0] != '\0');
            CHECK(req.op == PROTO_OP_NONE);
            check_frame(proto_reply_parse_error(&err));
        }
    }

    /* The same bytes as model output: builders must sanitize whatever they get. */
    check_frame(proto_event_token("f", in, size));
    size_t k = proto_utf8_complete_prefix(in, size);
    CHECK(k <= size && size - k <= 3);

    /* And as a date-time. */
    char buf[64];
    size_t n = size < sizeof buf - 1 ? size : sizeof buf - 1;
    memcpy(buf, in, n);
    buf[n] = '\0';
    double t;
    if (proto_parse_rfc3339(buf, &t) == 0) {
        char out[40];
        double t2;
        if (proto_format_rfc3339(t, out, sizeof out) == 0)
            CHECK(proto_parse_rfc3339(out, &t2) == 0 && fabs(t2 - t) < 1e-3);
    }
    return 0;
}
