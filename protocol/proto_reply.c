/* proto_reply.c — builders for reply frames, token/done events, PUB events and status
 * payloads, plus the watch "expect" helpers. Everything leaves as cJSON-printed UTF-8: text that
 * comes from the model or from a request is sanitized first, because one bad byte would make
 * the whole frame unreadable for a strict client. */
#include "protocol/proto_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static cJSON *add_text(cJSON *obj, const char *key, const char *s, size_t n)
{
    char *clean = proto_utf8_sanitize(s ? s : "", s ? n : 0);
    if (!clean)
        return NULL;
    cJSON *item = cJSON_AddStringToObject(obj, key, clean);
    free(clean);
    return item;
}

static cJSON *add_str(cJSON *obj, const char *key, const char *s)
{
    return add_text(obj, key, s, s ? strlen(s) : 0);
}

/* A string member, or null when s is NULL. */
static cJSON *add_str_or_null(cJSON *obj, const char *key, const char *s)
{
    return s ? add_str(obj, key, s) : cJSON_AddNullToObject(obj, key);
}

static cJSON *add_num_or_null(cJSON *obj, const char *key, double v)
{
    return v >= 0 && isfinite(v) ? cJSON_AddNumberToObject(obj, key, v)
                                 : cJSON_AddNullToObject(obj, key);
}

/* Members a body may not override: they define the frame. */
static bool reserved_key(const char *k)
{
    static const char *const keys[] = {"v", "id", "ok", "event", "error"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (strcmp(k, keys[i]) == 0)
            return true;
    return false;
}

/* Moves the members of body into frame (dropping reserved ones) and frees body. */
static bool merge_body(cJSON *frame, cJSON *body)
{
    if (!body)
        return true;
    bool ok = cJSON_IsObject(body);
    while (ok && body->child) {
        cJSON *item = cJSON_DetachItemViaPointer(body, body->child);
        if (!item->string || reserved_key(item->string) ||
            cJSON_GetObjectItemCaseSensitive(frame, item->string)) {
            cJSON_Delete(item);
            continue;
        }
        char *key = item->string;
        /* cJSON_AddItemToObject copies the key before releasing the item's own copy. */
        if (!cJSON_AddItemToObject(frame, key, item)) {
            cJSON_Delete(item);
            ok = false;
        }
    }
    cJSON_Delete(body);
    return ok;
}

static cJSON *new_frame(const char *id)
{
    cJSON *f = cJSON_CreateObject();
    if (!f)
        return NULL;
    if (!cJSON_AddNumberToObject(f, "v", PROTO_VERSION) || !add_str_or_null(f, "id", id)) {
        cJSON_Delete(f);
        return NULL;
    }
    return f;
}

static char *print_and_free(cJSON *f)
{
    if (!f)
        return NULL;
    char *s = cJSON_PrintUnformatted(f);
    cJSON_Delete(f);
    return s;
}

char *proto_reply_ok(const char *id, cJSON *body)
{
    cJSON *f = new_frame(id);
    if (!f || !cJSON_AddTrueToObject(f, "ok")) {
        cJSON_Delete(f);
        cJSON_Delete(body);
        return NULL;
    }
    if (!merge_body(f, body)) {
        cJSON_Delete(f);
        return NULL;
    }
    return print_and_free(f);
}

static char *error_frame(const char *id, proto_errc code, const char *message, const char *field)
{
    cJSON *f = new_frame(id);
    cJSON *e = f ? cJSON_CreateObject() : NULL;
    if (!e || !cJSON_AddFalseToObject(f, "ok")) {
        cJSON_Delete(e);
        cJSON_Delete(f);
        return NULL;
    }
    cJSON_AddItemToObject(f, "error", e);
    if (!add_str(e, "code", proto_errc_name(code)) || !add_str(e, "message", message) ||
        (field && *field && !add_str(e, "field", field))) {
        cJSON_Delete(f);
        return NULL;
    }
    return print_and_free(f);
}

char *proto_reply_error(const char *id, proto_errc code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (code == PROTO_OK)
        code = PROTO_E_INTERNAL;  /* an error reply must carry an error */
    return error_frame(id, code, msg, NULL);
}

char *proto_reply_parse_error(const proto_error *err)
{
    proto_errc code = err->code == PROTO_OK ? PROTO_E_INTERNAL : err->code;
    return error_frame(err->has_id ? err->id : NULL, code,
                       err->message[0] ? err->message : "invalid request", err->field);
}

char *proto_event_token(const char *id, const char *text, size_t len)
{
    cJSON *f = new_frame(id);
    if (!f || !add_str(f, "event", "token") || !add_text(f, "text", text, len)) {
        cJSON_Delete(f);
        return NULL;
    }
    return print_and_free(f);
}

static cJSON *usage_json(const proto_usage *u)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    proto_usage z = {0};
    if (!u)
        u = &z;
    if (!cJSON_AddNumberToObject(o, "prompt_tokens", (double)u->prompt_tokens) ||
        !cJSON_AddNumberToObject(o, "completion_tokens", (double)u->completion_tokens) ||
        !cJSON_AddNumberToObject(o, "cached_tokens", (double)u->cached_tokens)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *timing_json(const proto_timing *t)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    proto_timing z = {0};
    if (!t)
        t = &z;
    /* Milliseconds rounded to 0.01: more digits are noise and bloat every frame. */
    if (!cJSON_AddNumberToObject(o, "queue_ms", round(t->queue_ms * 100) / 100) ||
        !cJSON_AddNumberToObject(o, "ttft_ms", round(t->ttft_ms * 100) / 100) ||
        !cJSON_AddNumberToObject(o, "total_ms", round(t->total_ms * 100) / 100) ||
        !cJSON_AddNumberToObject(o, "tokens_per_s", round(t->tokens_per_s * 100) / 100)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static bool add_obj(cJSON *f, const char *key, cJSON *o)
{
    if (!o)
        return false;
    if (!cJSON_AddItemToObject(f, key, o)) {
        cJSON_Delete(o);
        return false;
    }
    return true;
}

char *proto_event_done(const char *id, const char *text, proto_finish finish,
                       const proto_usage *usage, const proto_timing *timing,
                       const proto_error *error, cJSON *body)
{
    cJSON *f = new_frame(id);
    cJSON *e = NULL;
    if (error && (!(e = cJSON_CreateObject()) || !add_str(e, "code", proto_errc_name(error->code)) ||
                  !add_str(e, "message", error->message))) {
        cJSON_Delete(e);
        e = NULL;
        cJSON_Delete(f);
        f = NULL;
    }
    if (!f || !cJSON_AddTrueToObject(f, "ok") || !add_str(f, "event", "done") ||
        !add_str(f, "text", text ? text : "") ||
        !add_str(f, "finish_reason", proto_finish_name(finish)) ||
        !add_obj(f, "usage", usage_json(usage)) || !add_obj(f, "timing", timing_json(timing)) ||
        (e && !add_obj(f, "error", e))) {
        if (e && !cJSON_GetObjectItemCaseSensitive(f, "timing")) cJSON_Delete(e);
        cJSON_Delete(f);
        cJSON_Delete(body);
        return NULL;
    }
    if (!merge_body(f, body)) {
        cJSON_Delete(f);
        return NULL;
    }
    return print_and_free(f);
}

/* ------------------------------------------------------------------------------------------ */
/* PUB events                                                                                 */

int proto_topic(char *buf, size_t size, const char *kind, const char *id)
{
    int n = id && *id ? snprintf(buf, size, "%s.%s", kind, id) : snprintf(buf, size, "%s", kind);
    if (n < 0 || (size_t)n >= size)
        return -1;
    return n;
}

static cJSON *new_event(const char *event)
{
    cJSON *f = cJSON_CreateObject();
    char now[40];
    if (proto_format_rfc3339(proto_now_epoch(), now, sizeof now) < 0)
        snprintf(now, sizeof now, "1970-01-01T00:00:00.000Z");
    if (!f || !cJSON_AddNumberToObject(f, "v", PROTO_VERSION) || !add_str(f, "event", event) ||
        !add_str(f, "time", now)) {
        cJSON_Delete(f);
        return NULL;
    }
    return f;
}

char *proto_event_pub(const char *event, cJSON *body)
{
    cJSON *f = new_event(event ? event : "");
    if (!f) {
        cJSON_Delete(body);
        return NULL;
    }
    if (!merge_body(f, body)) {
        cJSON_Delete(f);
        return NULL;
    }
    return print_and_free(f);
}

char *proto_event_stream_state(const char *stream, proto_stream_state state, const char *detail)
{
    cJSON *f = new_event("stream.state");
    if (!f || !add_str(f, "stream", stream) ||
        !add_str(f, "state", proto_stream_state_name(state)) ||
        (detail && !add_str(f, "detail", detail))) {
        cJSON_Delete(f);
        return NULL;
    }
    return print_and_free(f);
}

char *proto_event_watch_answer(const proto_watch_answer *a)
{
    cJSON *f = new_event("watch.answer");
    if (!f || !add_str(f, "watch", a->watch) || !add_str(f, "stream", a->stream) ||
        !add_str(f, "text", a->text) || !add_str_or_null(f, "value", a->value) ||
        !cJSON_AddNumberToObject(f, "media_time", a->media_time) ||
        !add_obj(f, "usage", usage_json(&a->usage)) ||
        !add_obj(f, "timing", timing_json(&a->timing))) {
        cJSON_Delete(f);
        return NULL;
    }
    return print_and_free(f);
}

char *proto_event_alert(const proto_watch_answer *a)
{
    cJSON *f = new_event("alert");
    if (!f || !add_str(f, "watch", a->watch) || !add_str(f, "stream", a->stream) ||
        !add_str_or_null(f, "value", a->value) || !add_str(f, "text", a->text) ||
        !cJSON_AddNumberToObject(f, "media_time", a->media_time)) {
        cJSON_Delete(f);
        return NULL;
    }
    return print_and_free(f);
}

cJSON *proto_stream_status_json(const proto_stream_status *s)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    bool ok = add_str(o, "stream", s->stream) && add_str_or_null(o, "url", s->url) &&
              add_str(o, "state", proto_stream_state_name(s->state)) &&
              add_str_or_null(o, "detail", s->detail) &&
              cJSON_AddNumberToObject(o, "fps_target", s->fps_target) &&
              add_num_or_null(o, "fps_in", s->fps_in) &&
              add_num_or_null(o, "pairs_per_s", s->pairs_per_s) &&
              cJSON_AddNumberToObject(o, "frames_in", (double)s->frames_in) &&
              cJSON_AddNumberToObject(o, "pairs_encoded", (double)s->pairs_encoded) &&
              cJSON_AddNumberToObject(o, "pairs_dropped", (double)s->pairs_dropped) &&
              cJSON_AddNumberToObject(o, "pairs_evicted", (double)s->pairs_evicted) &&
              cJSON_AddNumberToObject(o, "cache_tokens_used", (double)s->cache_tokens_used) &&
              cJSON_AddNumberToObject(o, "cache_tokens_cap", (double)s->cache_tokens_cap) &&
              add_num_or_null(o, "media_time", s->media_time) &&
              add_num_or_null(o, "oldest_media_time", s->oldest_media_time) &&
              cJSON_AddNumberToObject(o, "tokens_per_pair", s->tokens_per_pair) &&
              cJSON_AddNumberToObject(o, "watches", s->watches);
    cJSON *lat = ok ? cJSON_CreateObject() : NULL;
    ok = ok && add_obj(o, "latency_ms", lat) && add_num_or_null(lat, "p50", s->latency_ms_p50) &&
         add_num_or_null(lat, "p95", s->latency_ms_p95) &&
         add_num_or_null(lat, "p99", s->latency_ms_p99);
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* ------------------------------------------------------------------------------------------ */
/* Watch expectations                                                                         */

static bool word_byte(unsigned char c)
{
    /* Bytes of non-ASCII letters count as word characters: "yesé" is not "yes". */
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           c >= 0x80;
}

static bool skip_byte(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '"' || c == '\'' ||
           c == '`' || c == '*' || c == '_' || c == '(' || c == '[';
}

static size_t match_at(const proto_expect *e, const char *p, int *best)
{
    size_t best_len = 0;
    for (size_t i = 0; i < e->n_values && i < PROTO_ENUM_MAX; i++) {
        const char *v = e->values[i];
        size_t l = strlen(v);
        if (l == 0 || strncasecmp(p, v, l) != 0)
            continue;
        /* The value must end at a word boundary unless it itself ends in a non-word byte. */
        if (word_byte((unsigned char)p[l]) && word_byte((unsigned char)v[l - 1]))
            continue;
        if (l > best_len) {
            *best = (int)i;
            best_len = l;
        }
    }
    return best_len;
}

static bool ascii_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int proto_expect_match(const proto_expect *e, const char *answer)
{
    if (!e || e->kind == PROTO_EXPECT_NONE || !answer)
        return -1;
    const char *p = answer;
    while (ascii_ws(*p))
        p++;
    /* A thinking checkpoint's answer opens with its reasoning: judge what follows it. An
     * unfinished block leaves nothing to judge, and matches nothing below. */
    if (strncmp(p, "<think>", 7) == 0) {
        const char *end = strstr(p, "</think>");
        if (end) {
            p = end + 8;
            while (ascii_ws(*p))
                p++;
        }
    }
    /* Try the answer as it is and without decoration (quotes, emphasis, brackets), so that
     * values that themselves start with such a character still match. */
    const char *q = p;
    while (skip_byte((unsigned char)*q))
        q++;
    int best = -1, best_q = -1;
    size_t lp = match_at(e, p, &best);
    size_t lq = q != p ? match_at(e, q, &best_q) : 0;
    return lq > lp ? best_q : best;
}

size_t proto_expect_instruction(const proto_expect *e, char *buf, size_t size)
{
    char tmp[PROTO_ENUM_MAX * (PROTO_ENUM_VALUE_MAX + 2) + 64];
    size_t o = 0;
    tmp[0] = '\0';
    if (e && e->kind == PROTO_EXPECT_YES_NO) {
        o = (size_t)snprintf(tmp, sizeof tmp, " Answer with only yes or no.");
    } else if (e && e->kind == PROTO_EXPECT_ENUM) {
        o = (size_t)snprintf(tmp, sizeof tmp, " Answer with exactly one of:");
        for (size_t i = 0; i < e->n_values && i < PROTO_ENUM_MAX; i++)
            o += (size_t)snprintf(tmp + o, sizeof tmp - o, "%s %s", i ? "," : "", e->values[i]);
        o += (size_t)snprintf(tmp + o, sizeof tmp - o, ".");
    }
    if (size) {
        size_t n = o < size - 1 ? o : proto_utf8_cut(tmp, o, size - 1);
        memcpy(buf, tmp, n);
        buf[n] = '\0';
    }
    return o;
}
