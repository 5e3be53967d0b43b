/* cli_print.c — `vigil` output for people: tables for status / stream ls / watch ls, one line
 * per event, the timing line after an answer. Replies are read defensively: a member that is
 * missing or null prints as "-", and members this version does not know are ignored, as
 * docs/protocol.md asks of clients. */
#include "clients/cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const cJSON *member(const cJSON *o, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

static const char *str_of(const cJSON *o, const char *key)
{
    const cJSON *v = member(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Number member, or NAN when missing/null/not a number. */
static double num_of(const cJSON *o, const char *key)
{
    const cJSON *v = member(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static void fmt_num(char *b, size_t n, double v, int decimals)
{
    if (isnan(v))
        snprintf(b, n, "-");
    else
        snprintf(b, n, "%.*f", decimals, v);
}

/* Media seconds as 59.8s, 12:05.2, 3:02:05. */
static void fmt_media(char *b, size_t n, double s)
{
    if (isnan(s) || s < 0) {
        snprintf(b, n, "-");
    } else if (s < 60) {
        snprintf(b, n, "%.1fs", s);
    } else if (s < 3600) {
        snprintf(b, n, "%d:%04.1f", (int)(s / 60), fmod(s, 60));
    } else {
        long t = (long)s;
        snprintf(b, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    }
}

static void fmt_ms(char *b, size_t n, double ms)
{
    if (isnan(ms))
        snprintf(b, n, "-");
    else if (ms < 1000)
        snprintf(b, n, "%.0f ms", ms);
    else
        snprintf(b, n, "%.2f s", ms / 1000);
}

static void fmt_uptime(char *b, size_t n, double s)
{
    if (isnan(s)) {
        snprintf(b, n, "-");
        return;
    }
    long t = (long)s;
    if (t < 3600)
        snprintf(b, n, "%ldm %02lds", t / 60, t % 60);
    else if (t < 86400)
        snprintf(b, n, "%ldh %02ldm", t / 3600, t / 60 % 60);
    else
        snprintf(b, n, "%ldd %02ldh", t / 86400, t / 3600 % 24);
}

/* ---- a small table: cells are copied, columns padded to their widest cell ---------------- */

#define TABLE_MAX_COLS 12
#define CELL_MAX 96

typedef struct table {
    int ncols;
    size_t nrows, cap;
    char (*cells)[TABLE_MAX_COLS][CELL_MAX];
} table;

static void table_cell(table *t, size_t row, int col, const char *s)
{
    if (!t->cells || row >= t->nrows || col >= t->ncols)
        return;
    /* Cut at a UTF-8 character boundary so a long prompt or URL never prints half a char. */
    size_t n = strlen(s);
    if (n >= CELL_MAX) {
        n = CELL_MAX - 4;
        while (n && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
        snprintf(t->cells[row][col], CELL_MAX, "%.*s...", (int)n, s);
    } else {
        memcpy(t->cells[row][col], s, n + 1);
    }
}

static size_t table_row(table *t)
{
    if (t->nrows == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        void *p = realloc(t->cells, cap * sizeof *t->cells);
        if (!p)
            return (size_t)-1;
        t->cells = p;
        t->cap = cap;
    }
    memset(t->cells[t->nrows], 0, sizeof t->cells[t->nrows]);
    return t->nrows++;
}

/* Display width of UTF-8 text, one column per code point (good enough for names and URLs). */
static size_t text_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xC0) != 0x80;
    return w;
}

static void table_print(FILE *out, const table *t)
{
    size_t width[TABLE_MAX_COLS] = {0};
    for (size_t r = 0; r < t->nrows; r++)
        for (int c = 0; c < t->ncols; c++) {
            size_t w = text_width(t->cells[r][c]);
            if (w > width[c])
                width[c] = w;
        }
    for (size_t r = 0; r < t->nrows; r++) {
        for (int c = 0; c < t->ncols; c++) {
            const char *s = t->cells[r][c];
            if (c == t->ncols - 1) {
                fputs(s, out);
            } else {
                fputs(s, out);
                for (size_t k = text_width(s); k < width[c] + 2; k++)
                    fputc(' ', out);
            }
        }
        fputc('\n', out);
    }
}

static void table_free(table *t)
{
    free(t->cells);
    t->cells = NULL;
}

/* ---- status / stream ls ---------------------------------------------------------------- */

static void cache_cell(char *b, size_t n, const cJSON *s)
{
    double used = num_of(s, "cache_tokens_used"), cap = num_of(s, "cache_tokens_cap");
    if (isnan(used) || isnan(cap))
        snprintf(b, n, "-");
    else if (cap > 0)
        snprintf(b, n, "%.0f/%.0f %.0f%%", used, cap, 100 * used / cap);
    else
        snprintf(b, n, "%.0f/%.0f", used, cap);
}

static const char *or_dash(const char *s)
{
    return s && *s ? s : "-";
}

static void streams_table(FILE *out, const cJSON *const *streams, size_t nstreams, bool full)
{
    static const char *const head_full[] = {"STREAM", "STATE", "FPS IN/TARGET", "PAIRS/S",
                                            "PAIRS", "DROPPED", "EVICTED", "CACHE TOKENS",
                                            "MEDIA", "TOK/PAIR", "WATCHES", "LATENCY p50/p95/p99"};
    static const char *const head_short[] = {"STREAM", "STATE", "FPS", "TOK/PAIR",
                                             "CACHE TOKENS", "MEDIA", "URL"};
    table t = {.ncols = full ? 12 : 7};
    size_t r = table_row(&t);
    for (int c = 0; c < t.ncols; c++)
        table_cell(&t, r, c, full ? head_full[c] : head_short[c]);
    for (size_t i = 0; i < nstreams; i++) {
        const cJSON *s = streams[i];
        char b[CELL_MAX], x[30], y[30], z[30];
        if ((r = table_row(&t)) == (size_t)-1)
            break;
        table_cell(&t, r, 0, or_dash(str_of(s, "stream")));
        table_cell(&t, r, 1, or_dash(str_of(s, "state")));
        if (full) {
            fmt_num(x, sizeof x, num_of(s, "fps_in"), 1);
            fmt_num(y, sizeof y, num_of(s, "fps_target"), 1);
            snprintf(b, sizeof b, "%s/%s", x, y);
            table_cell(&t, r, 2, b);
            fmt_num(b, sizeof b, num_of(s, "pairs_per_s"), 2);
            table_cell(&t, r, 3, b);
            static const char *const counts[] = {"pairs_encoded", "pairs_dropped",
                                                 "pairs_evicted"};
            for (int k = 0; k < 3; k++) {
                fmt_num(b, sizeof b, num_of(s, counts[k]), 0);
                table_cell(&t, r, 4 + k, b);
            }
            cache_cell(b, sizeof b, s);
            table_cell(&t, r, 7, b);
            fmt_media(b, sizeof b, num_of(s, "media_time"));
            table_cell(&t, r, 8, b);
            fmt_num(b, sizeof b, num_of(s, "tokens_per_pair"), 0);
            table_cell(&t, r, 9, b);
            fmt_num(b, sizeof b, num_of(s, "watches"), 0);
            table_cell(&t, r, 10, b);
            const cJSON *lat = member(s, "latency_ms");
            fmt_num(x, sizeof x, num_of(lat, "p50"), 0);
            fmt_num(y, sizeof y, num_of(lat, "p95"), 0);
            fmt_num(z, sizeof z, num_of(lat, "p99"), 0);
            snprintf(b, sizeof b, "%s/%s/%s", x, y, z);
            table_cell(&t, r, 11, b);
        } else {
            fmt_num(b, sizeof b, num_of(s, "fps_target"), 1);
            table_cell(&t, r, 2, b);
            fmt_num(b, sizeof b, num_of(s, "tokens_per_pair"), 0);
            table_cell(&t, r, 3, b);
            cache_cell(b, sizeof b, s);
            table_cell(&t, r, 4, b);
            fmt_media(b, sizeof b, num_of(s, "media_time"));
            table_cell(&t, r, 5, b);
            table_cell(&t, r, 6, or_dash(str_of(s, "url")));
        }
    }
    table_print(out, &t);
    table_free(&t);
    /* Why a stream is failing, reconnecting or over matters more than any column; a running
     * stream's detail is news for nobody. */
    for (size_t i = 0; i < nstreams; i++) {
        const char *d = str_of(streams[i], "detail"), *st = str_of(streams[i], "state");
        if (d && *d && !(st && strcmp(st, "running") == 0))
            fprintf(out, "  %s: %s\n", or_dash(str_of(streams[i], "stream")), d);
    }
}

/* The stream objects of a reply: "streams": [...] or a single "stream": {...}. */
static size_t reply_streams(const cJSON *reply, const cJSON ***out)
{
    *out = NULL;
    const cJSON *one = member(reply, "stream"), *list = member(reply, "streams"), *s;
    size_t n = cJSON_IsObject(one) ? 1 : cJSON_IsArray(list) ? (size_t)cJSON_GetArraySize(list) : 0;
    if (n == 0 || !(*out = calloc(n, sizeof **out)))
        return 0;
    if (cJSON_IsObject(one)) {
        (*out)[0] = one;
        return 1;
    }
    size_t k = 0;
    cJSON_ArrayForEach(s, list) if (cJSON_IsObject(s) && k < n)(*out)[k++] = s;
    return k;
}

void cli_print_status(FILE *out, const cJSON *reply)
{
    char up[48], q[48];
    fmt_uptime(up, sizeof up, num_of(reply, "uptime_s"));
    fmt_num(q, sizeof q, num_of(reply, "queue_depth"), 0);
    /* `status STREAM` replies with that stream only: no daemon line then */
    if (str_of(reply, "version") || !cJSON_GetObjectItemCaseSensitive(reply, "stream"))
        fprintf(out, "vigild %s, up %s, model %s, queries waiting %s\n",
                or_dash(str_of(reply, "version")), up, or_dash(str_of(reply, "model")), q);
    const cJSON **streams;
    size_t n = reply_streams(reply, &streams);
    if (n)
        streams_table(out, streams, n, true);
    else
        fprintf(out, "no streams (add one with: vigil stream add ID URL)\n");
    free(streams);
}

void cli_print_streams(FILE *out, const cJSON *reply)
{
    const cJSON **streams;
    size_t n = reply_streams(reply, &streams);
    if (n)
        streams_table(out, streams, n, false);
    else
        fprintf(out, "no streams (add one with: vigil stream add ID URL)\n");
    free(streams);
}

/* ---- watch ls ---------------------------------------------------------------------------- */

static void expect_cell(char *b, size_t n, const cJSON *e)
{
    const char *type = str_of(e, "type");
    if (!type) {
        snprintf(b, n, "-");
        return;
    }
    size_t o = (size_t)snprintf(b, n, "%s", type);
    const cJSON *v;
    const cJSON *vals = member(e, "values");
    if (strcmp(type, "enum") == 0 && cJSON_IsArray(vals)) {
        int i = 0;
        cJSON_ArrayForEach(v, vals) if (cJSON_IsString(v) && o < n)
            o += (size_t)snprintf(b + o, n - o, "%s%s", i++ ? "," : ":", v->valuestring);
    }
    const cJSON *al = member(e, "alert_on");
    if (cJSON_IsArray(al) && cJSON_GetArraySize(al) > 0 && o < n) {
        int i = 0;
        o += (size_t)snprintf(b + o, n - o, " alert ");
        cJSON_ArrayForEach(v, al) if (cJSON_IsString(v) && o < n)
            o += (size_t)snprintf(b + o, n - o, "%s%s", i++ ? "," : "", v->valuestring);
    }
}

void cli_print_watches(FILE *out, const cJSON *reply)
{
    const cJSON *watches = member(reply, "watches");
    if (!cJSON_IsArray(watches) || cJSON_GetArraySize(watches) == 0) {
        fprintf(out, "no watches (add one with: vigil watch add STREAM PROMPT --every 10s)\n");
        return;
    }
    static const char *const head[] = {"WATCH", "STREAM", "SCHEDULE", "EXPECT", "LAST", "PROMPT"};
    table t = {.ncols = 6};
    size_t r = table_row(&t);
    for (int c = 0; c < 6; c++)
        table_cell(&t, r, c, head[c]);
    const cJSON *w;
    cJSON_ArrayForEach(w, watches)
    {
        char b[CELL_MAX];
        if (!cJSON_IsObject(w) || (r = table_row(&t)) == (size_t)-1)
            continue;
        table_cell(&t, r, 0, or_dash(str_of(w, "watch")));
        table_cell(&t, r, 1, or_dash(str_of(w, "stream")));
        double every = num_of(w, "every_seconds");
        if (cJSON_IsTrue(member(w, "on_pair")))
            snprintf(b, sizeof b, "every pair");
        else if (!isnan(every))
            snprintf(b, sizeof b, "every %gs", every);
        else
            snprintf(b, sizeof b, "-");
        table_cell(&t, r, 2, b);
        expect_cell(b, sizeof b, member(w, "expect"));
        table_cell(&t, r, 3, b);
        table_cell(&t, r, 4, or_dash(str_of(w, "last_value")));
        table_cell(&t, r, 5, or_dash(str_of(w, "prompt")));
    }
    table_print(out, &t);
    table_free(&t);
}

/* ---- answers and events ----------------------------------------------------------------- */

void cli_print_timing(FILE *out, const cJSON *done)
{
    const cJSON *tm = member(done, "timing"), *us = member(done, "usage");
    char queue[32], ttft[32], total[32];
    fmt_ms(queue, sizeof queue, num_of(tm, "queue_ms"));
    fmt_ms(ttft, sizeof ttft, num_of(tm, "ttft_ms"));
    fmt_ms(total, sizeof total, num_of(tm, "total_ms"));
    double tps = num_of(tm, "tokens_per_s"), ntok = num_of(us, "completion_tokens");
    double prompt = num_of(us, "prompt_tokens"), cached = num_of(us, "cached_tokens");
    char tpsb[32], ntokb[32], pb[32], cb[32];
    fmt_num(tpsb, sizeof tpsb, tps, 1);
    fmt_num(ntokb, sizeof ntokb, ntok, 0);
    fmt_num(pb, sizeof pb, prompt, 0);
    fmt_num(cb, sizeof cb, cached, 0);
    fprintf(out, "queue %s, first token %s, %s tokens in %s (%s tokens/s), %s; prompt %s tokens "
            "(%s cached)", queue, ttft, ntokb, total, tpsb,
            or_dash(str_of(done, "finish_reason")), pb, cb);
    /* a stream's answer: the newest frames it saw, as the model's <t seconds> stamp shows them */
    double media = num_of(done, "media_time");
    if (!isnan(media) && media >= 0) {
        char mb[32];
        fmt_media(mb, sizeof mb, media);
        fprintf(out, "; frames up to %s", mb);
    }
    fputc('\n', out);
}

static bool topic_has_prefix(const char *topic, const char *prefix)
{
    return strncmp(topic, prefix, strlen(prefix)) == 0;
}

bool cli_event_wanted(const cli_invocation *inv, const char *topic, const cJSON *event)
{
    unsigned kind = topic_has_prefix(topic, "stream.")  ? CLI_KIND_STATE
                    : topic_has_prefix(topic, "watch.") ? CLI_KIND_WATCH
                    : topic_has_prefix(topic, "alert.") ? CLI_KIND_ALERT
                    : strcmp(topic, "daemon") == 0      ? CLI_KIND_DAEMON
                                                        : 0;
    if (inv->events_kinds && !(inv->events_kinds & kind))
        return false;
    /* Topic prefixes also match longer names (stream.cam1 / stream.cam10): compare members. */
    if (inv->events_stream) {
        const char *s = str_of(event, "stream");
        if (!s || strcmp(s, inv->events_stream) != 0)
            return false;
    }
    if (inv->events_watch) {
        const char *w = str_of(event, "watch");
        if (!w || strcmp(w, inv->events_watch) != 0)
            return false;
    }
    return true;
}

size_t cli_event_topics(const cli_invocation *inv, char topics[4][PROTO_NAME_MAX + 16])
{
    /* A watch filter narrows to that watch's topics; a stream filter cannot be expressed as a
     * topic for watch events (topics name the watch), so only state topics use it. */
    unsigned kinds = inv->events_kinds ? inv->events_kinds
                                       : CLI_KIND_STATE | CLI_KIND_WATCH | CLI_KIND_ALERT |
                                             CLI_KIND_DAEMON;
    if (!inv->events_kinds && !inv->events_stream && !inv->events_watch)
        return 0;
    if (inv->events_watch)
        kinds &= CLI_KIND_WATCH | CLI_KIND_ALERT;
    if (inv->events_stream)
        kinds &= ~(unsigned)CLI_KIND_DAEMON;
    size_t n = 0;
    const size_t sz = PROTO_NAME_MAX + 16;
    if (kinds & CLI_KIND_STATE)
        snprintf(topics[n++], sz, "stream.%s", inv->events_stream ? inv->events_stream : "");
    if (kinds & CLI_KIND_WATCH)
        snprintf(topics[n++], sz, "watch.%s", inv->events_watch ? inv->events_watch : "");
    if (kinds & CLI_KIND_ALERT)
        snprintf(topics[n++], sz, "alert.%s", inv->events_watch ? inv->events_watch : "");
    if (kinds & CLI_KIND_DAEMON)
        snprintf(topics[n++], sz, "daemon");
    if (n == 0) /* e.g. --kind daemon --stream x: nothing can match; keep a topic nobody uses */
        snprintf(topics[n++], sz, "none.");
    return n;
}

/* Local HH:MM:SS of an event's RFC 3339 "time" (or now when it has none). */
static void event_clock(const cJSON *event, char *b, size_t n)
{
    double t;
    const char *s = str_of(event, "time");
    if (!s || proto_parse_rfc3339(s, &t) < 0)
        t = (double)time(NULL);
    time_t tt = (time_t)t;
    struct tm tm;
    if (localtime_r(&tt, &tm))
        strftime(b, n, "%H:%M:%S", &tm);
    else
        snprintf(b, n, "--:--:--");
}

/* Answers can span lines; an event is one line, so newlines print as spaces, and a long
 * answer is cut (at a character boundary) after EVENT_TEXT_MAX bytes: --json has it whole. */
#define EVENT_TEXT_MAX 200

static void put_oneline(FILE *out, const char *s)
{
    size_t n = 0;
    for (; s && *s; s++, n++) {
        if (n >= EVENT_TEXT_MAX && ((unsigned char)*s & 0xC0) != 0x80) {
            fputs("...", out);
            return;
        }
        fputc(*s == '\n' || *s == '\r' || *s == '\t' ? ' ' : *s, out);
    }
}

void cli_print_event(FILE *out, const char *topic, const cJSON *event)
{
    char clock[16], media[32];
    event_clock(event, clock, sizeof clock);
    const char *ev = or_dash(str_of(event, "event"));
    const char *stream = or_dash(str_of(event, "stream"));
    const char *watch = or_dash(str_of(event, "watch"));
    fmt_media(media, sizeof media, num_of(event, "media_time"));
    if (strcmp(ev, "stream.state") == 0) {
        fprintf(out, "%s stream %s: %s", clock, stream, or_dash(str_of(event, "state")));
        const char *d = str_of(event, "detail");
        if (d && *d) {
            fputs(" (", out);
            put_oneline(out, d);
            fputc(')', out);
        }
    } else if (strcmp(ev, "watch.answer") == 0 || strcmp(ev, "alert") == 0) {
        bool alert = strcmp(ev, "alert") == 0;
        fprintf(out, "%s %s %s on %s at %s: ", clock, alert ? "ALERT" : "watch", watch, stream,
                media);
        const char *v = str_of(event, "value");
        if (v)
            fprintf(out, "[%s] ", v);
        put_oneline(out, str_of(event, "text"));
    } else if (strcmp(ev, "daemon.state") == 0) {
        fprintf(out, "%s daemon: %s", clock, or_dash(str_of(event, "state")));
        const char *d = str_of(event, "detail");
        if (d && *d) {
            fputs(" (", out);
            put_oneline(out, d);
            fputc(')', out);
        }
    } else {
        char *j = cJSON_PrintUnformatted(event);
        fprintf(out, "%s %s %s: %s", clock, topic, ev, j ? j : "");
        free(j);
    }
    fputc('\n', out);
}
