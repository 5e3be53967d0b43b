/* proto_text.c — names of the protocol's enums, limits, and the text/time helpers (UTF-8,
 * RFC 3339, URL schemes, base64) that the parser and the builders rely on. */
#include "protocol/proto_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* ------------------------------------------------------------------------------------------ */
/* Names                                                                                      */

static const char *const errc_names[PROTO_E_COUNT_] = {
    [PROTO_OK] = "ok",
    [PROTO_E_BAD_JSON] = "bad_json",
    [PROTO_E_BAD_REQUEST] = "bad_request",
    [PROTO_E_UNKNOWN_OP] = "unknown_op",
    [PROTO_E_UNSUPPORTED_VERSION] = "unsupported_version",
    [PROTO_E_TOO_LARGE] = "too_large",
    [PROTO_E_LIMIT_EXCEEDED] = "limit_exceeded",
    [PROTO_E_NOT_FOUND] = "not_found",
    [PROTO_E_ALREADY_EXISTS] = "already_exists",
    [PROTO_E_FORBIDDEN] = "forbidden",
    [PROTO_E_BAD_URL] = "bad_url",
    [PROTO_E_QUEUE_FULL] = "queue_full",
    [PROTO_E_CANCELLED] = "cancelled",
    [PROTO_E_SHUTTING_DOWN] = "shutting_down",
    [PROTO_E_MEDIA_ERROR] = "media_error",
    [PROTO_E_MODEL_ERROR] = "model_error",
    [PROTO_E_INTERNAL] = "internal",
};

const char *proto_errc_name(proto_errc code)
{
    if ((int)code < 0 || code >= PROTO_E_COUNT_)
        return "internal";
    return errc_names[code];
}

int proto_errc_from_name(const char *name, proto_errc *out)
{
    if (!name)
        return -1;
    for (int i = 0; i < PROTO_E_COUNT_; i++) {
        if (strcmp(errc_names[i], name) == 0) {
            *out = (proto_errc)i;
            return 0;
        }
    }
    return -1;
}

static const char *const op_names[PROTO_OP_COUNT_] = {
    [PROTO_OP_NONE] = NULL,
    [PROTO_OP_PING] = "ping",
    [PROTO_OP_STATUS] = "status",
    [PROTO_OP_STREAM_ADD] = "stream.add",
    [PROTO_OP_STREAM_REMOVE] = "stream.remove",
    [PROTO_OP_STREAM_LIST] = "stream.list",
    [PROTO_OP_QUERY] = "query",
    [PROTO_OP_QUERY_CANCEL] = "query.cancel",
    [PROTO_OP_WATCH_ADD] = "watch.add",
    [PROTO_OP_WATCH_REMOVE] = "watch.remove",
    [PROTO_OP_WATCH_LIST] = "watch.list",
    [PROTO_OP_IMAGE] = "image",
};

const char *proto_op_name(proto_op op)
{
    if ((int)op <= 0 || op >= PROTO_OP_COUNT_)
        return NULL;
    return op_names[op];
}

const char *proto_finish_name(proto_finish f)
{
    switch (f) {
    case PROTO_FINISH_STOP: return "stop";
    case PROTO_FINISH_STOP_STRING: return "stop_string";
    case PROTO_FINISH_LENGTH: return "length";
    case PROTO_FINISH_CANCELLED: return "cancelled";
    case PROTO_FINISH_CONTEXT: return "context";
    }
    return "stop";
}

const char *proto_stream_state_name(proto_stream_state s)
{
    switch (s) {
    case PROTO_STREAM_STARTING: return "starting";
    case PROTO_STREAM_RUNNING: return "running";
    case PROTO_STREAM_RECONNECTING: return "reconnecting";
    case PROTO_STREAM_ENDED: return "ended";
    case PROTO_STREAM_FAILED: return "failed";
    case PROTO_STREAM_REMOVED: return "removed";
    }
    return "failed";
}

/* ------------------------------------------------------------------------------------------ */
/* Limits                                                                                     */

void proto_limits_default(proto_limits *lim)
{
    memset(lim, 0, sizeof *lim);
    lim->max_message_bytes = 16u << 20;
    lim->max_depth = 16;
    lim->max_json_values = 4096;
    lim->max_prompt_bytes = 32u << 10;
    lim->max_url_bytes = 4096;
    lim->max_path_bytes = 4096;
    lim->max_image_bytes = 10u << 20;
    lim->max_tokens = 4096;
    lim->default_max_tokens = 512;
    lim->max_stop_strings = 8;
    lim->max_stop_bytes = 128;
    lim->default_fps = 2.0;
    lim->max_fps = 30.0;
    lim->default_min_tokens_per_pair = 64;
    lim->default_max_tokens_per_pair = 256;
    lim->max_tokens_per_pair = 16384;
    lim->default_cache_tokens = 32768;
    lim->max_cache_tokens = 262144;
    lim->max_cache_bytes = (uint64_t)64 << 30;
    lim->min_watch_interval_s = 1.0;
    lim->allowed_url_schemes = "rtsp,rtsps,rtmp,rtmps,http,https,hls,srt,udp,rtp,tcp,v4l2";
    lim->allow_image_path = false;
    lim->max_streams = 16;
    lim->max_watches = 64;
    lim->max_queue_depth = 32;
}

int proto_limits_check(const proto_limits *lim, char *err, size_t errlen)
{
#define BAD(...) do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)
    if (lim->max_message_bytes < 1024)
        BAD("limits: max_message_bytes is %zu; expected at least 1024", lim->max_message_bytes);
    if (lim->max_depth < 4 || lim->max_depth > 64)
        BAD("limits: max_depth is %d; expected 4..64 (requests nest 4 levels deep)",
            lim->max_depth);
    if (lim->max_json_values < 64)
        BAD("limits: max_json_values is %d; expected at least 64", lim->max_json_values);
    if (lim->max_prompt_bytes < 1)
        BAD("limits: max_prompt_bytes must be at least 1");
    if (lim->max_url_bytes < 16 || lim->max_path_bytes < 16)
        BAD("limits: max_url_bytes and max_path_bytes must be at least 16");
    if (lim->max_tokens < 1)
        BAD("limits: max_tokens is %d; expected at least 1", lim->max_tokens);
    if (lim->default_max_tokens < 1 || lim->default_max_tokens > lim->max_tokens)
        BAD("limits: default_max_tokens is %d; expected 1..max_tokens (%d)",
            lim->default_max_tokens, lim->max_tokens);
    if (lim->max_stop_strings < 0 || lim->max_stop_strings > 256)
        BAD("limits: max_stop_strings is %d; expected 0..256", lim->max_stop_strings);
    if (lim->max_stop_bytes < 1)
        BAD("limits: max_stop_bytes must be at least 1");
    if (!(lim->max_fps > 0 && lim->max_fps <= 1000))
        BAD("limits: max_fps is %g; expected (0, 1000]", lim->max_fps);
    if (!(lim->default_fps > 0 && lim->default_fps <= lim->max_fps))
        BAD("limits: default_fps is %g; expected (0, max_fps (%g)]", lim->default_fps,
            lim->max_fps);
    if (lim->max_tokens_per_pair < 4)
        BAD("limits: max_tokens_per_pair is %d; expected at least 4", lim->max_tokens_per_pair);
    if (lim->default_min_tokens_per_pair < 4 ||
        lim->default_min_tokens_per_pair > lim->default_max_tokens_per_pair ||
        lim->default_max_tokens_per_pair > lim->max_tokens_per_pair)
        BAD("limits: expected 4 <= default_min_tokens_per_pair (%d) <= "
            "default_max_tokens_per_pair (%d) <= max_tokens_per_pair (%d)",
            lim->default_min_tokens_per_pair, lim->default_max_tokens_per_pair,
            lim->max_tokens_per_pair);
    if (lim->max_cache_tokens < 1024 || lim->default_cache_tokens < 1024 ||
        lim->default_cache_tokens > lim->max_cache_tokens)
        BAD("limits: expected 1024 <= default_cache_tokens (%llu) <= max_cache_tokens (%llu)",
            (unsigned long long)lim->default_cache_tokens,
            (unsigned long long)lim->max_cache_tokens);
    if (lim->max_cache_bytes < (1u << 20))
        BAD("limits: max_cache_bytes must be at least 1 MiB");
    if (!(lim->min_watch_interval_s > 0 && lim->min_watch_interval_s <= 3600))
        BAD("limits: min_watch_interval_s is %g; expected (0, 3600]", lim->min_watch_interval_s);
    /* An image sent inline travels as base64 (4 bytes per 3) inside the request frame. */
    if (lim->max_image_bytes > 0) {
        size_t b64 = (lim->max_image_bytes + 2) / 3 * 4;
        if (b64 + 4096 > lim->max_message_bytes)
            BAD("limits: max_image_bytes (%zu) needs %zu bytes of base64 plus the request, more "
                "than max_message_bytes (%zu)", lim->max_image_bytes, b64,
                lim->max_message_bytes);
    }
    if (lim->max_streams < 1 || lim->max_watches < 0 || lim->max_queue_depth < 1)
        BAD("limits: max_streams and max_queue_depth must be at least 1, max_watches at least 0");
    if (lim->allowed_url_schemes) {
        for (const char *p = lim->allowed_url_schemes; *p; p++) {
            char c = *p;
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '+' || c == '-' || c == '.' || c == ',' || c == ' '))
                BAD("limits: allowed_url_schemes has '%c'; expected comma-separated protocol "
                    "names such as \"rtsp,https\"", c);
        }
    }
    return 0;
#undef BAD
}

/* ------------------------------------------------------------------------------------------ */
/* UTF-8                                                                                      */

int proto_utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    int len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80)
        return 1;
    if (c < 0xC2)
        return 0;
    if (c < 0xE0) {
        len = 2;
    } else if (c < 0xF0) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;   /* no UTF-16 surrogates */
    } else if (c < 0xF5) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;   /* nothing over U+10FFFF */
    } else {
        return 0;
    }
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n)
            return -i;
        unsigned char b = s[i];
        unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (b < l || b > h)
            return 0;
    }
    return len;
}

bool proto_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        int l = proto_utf8_seq(p + i, n - i);
        if (l <= 0)
            return false;
        i += (size_t)l;
    }
    return true;
}

size_t proto_utf8_complete_prefix(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    /* Only the last (up to 3) bytes can be an unfinished sequence. */
    size_t start = n > 3 ? n - 3 : 0;
    for (size_t i = n; i > start; i--) {
        unsigned char c = p[i - 1];
        if (c < 0x80)
            return n;
        if (c >= 0xC0) {
            int l = proto_utf8_seq(p + i - 1, n - (i - 1));
            return l < 0 ? i - 1 : n;
        }
    }
    return n;
}

size_t proto_utf8_cut(const char *s, size_t n, size_t max)
{
    if (n <= max)
        return n;
    size_t cut = max;
    /* Step back over continuation bytes to the start of the sequence max falls into. */
    while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80)
        cut--;
    return cut;
}

char *proto_utf8_sanitize(const char *s, size_t n)
{
    if (n > (SIZE_MAX - 1) / 3)
        return NULL;
    char *out = malloc(n * 3 + 1);
    if (!out)
        return NULL;
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, o = 0;
    while (i < n) {
        int l = p[i] == 0 ? 0 : proto_utf8_seq(p + i, n - i);
        if (l > 0) {
            memcpy(out + o, p + i, (size_t)l);
            o += (size_t)l;
            i += (size_t)l;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = '\0';
    return out;
}

/* ------------------------------------------------------------------------------------------ */
/* Time                                                                                       */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int proto_parse_rfc3339(const char *s, double *epoch_s)
{
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, mo, d, h, mi, sec;
    if (!s || strnlen(s, 20) < 20)
        return -1;
    if (digits(s, 4, &y) || s[4] != '-' || digits(s + 5, 2, &mo) || s[7] != '-' ||
        digits(s + 8, 2, &d) || !(s[10] == 'T' || s[10] == 't' || s[10] == ' ') ||
        digits(s + 11, 2, &h) || s[13] != ':' || digits(s + 14, 2, &mi) || s[16] != ':' ||
        digits(s + 17, 2, &sec))
        return -1;
    if (mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || sec > 60)
        return -1;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    int dim = mdays[mo - 1] + (mo == 2 && leap);
    if (d > dim)
        return -1;
    const char *p = s + 19;
    /* Up to 9 fraction digits as an integer, so that ".25" is exactly 0.25. */
    double frac = 0;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return -1;
        long num = 0, den = 1;
        for (int k = 0; *p >= '0' && *p <= '9'; p++, k++) {
            if (k < 9) {
                num = num * 10 + (*p - '0');
                den *= 10;
            }
        }
        frac = (double)num / (double)den;
    }
    int offset = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (digits(p + 1, 2, &oh) || p[3] != ':' || digits(p + 4, 2, &om) || oh > 23 || om > 59)
            return -1;
        offset = (oh * 60 + om) * 60 * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return -1;
    }
    if (*p != '\0')
        return -1;
    int64_t days = days_from_civil(y, (unsigned)mo, (unsigned)d);
    int64_t t = days * 86400 + h * 3600 + mi * 60 + sec - offset;
    *epoch_s = (double)t + frac;
    return 0;
}

int proto_format_rfc3339(double epoch_s, char *buf, size_t size)
{
    /* 0000-01-01 .. 9999-12-31T23:59:59.999 */
    if (!isfinite(epoch_s) || epoch_s < -62167219200.0 || epoch_s >= 253402300800.0 ||
        size < 25)
        return -1;
    int64_t ms = (int64_t)llround(epoch_s * 1000.0);
    int64_t secs = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
    int msr = (int)(ms - secs * 1000);
    int64_t days = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
    int64_t sod = secs - days * 86400;
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    if (y > 9999)
        return -1;
    snprintf(buf, size, "%04d-%02u-%02uT%02d:%02d:%02d.%03dZ", (int)y, m, d, (int)(sod / 3600),
             (int)(sod / 60 % 60), (int)(sod % 60), msr);
    return 0;
}

double proto_now_epoch(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------------------------------ */
/* URLs                                                                                       */

static bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }

int proto_url_scheme(const char *url, char *scheme, size_t size, char *err, size_t errlen)
{
    if (!url || !*url) {
        snprintf(err, errlen, "the URL is empty");
        return -1;
    }
    for (const unsigned char *p = (const unsigned char *)url; *p; p++) {
        if (*p < 0x20 || *p == 0x7F) {
            snprintf(err, errlen, "the URL has a control character (0x%02x) at byte %zu", *p,
                     (size_t)(p - (const unsigned char *)url));
            return -1;
        }
    }
    /* RFC 3986: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":". One letter before ':'
     * is a drive letter, not a scheme; FFmpeg treats both cases as files. */
    size_t n = 0;
    if (is_alpha(url[0])) {
        n = 1;
        while (is_alpha(url[n]) || is_digit(url[n]) || url[n] == '+' || url[n] == '-' ||
               url[n] == '.')
            n++;
        if (url[n] != ':' || n < 2)
            n = 0;
    }
    const char *src = n ? url : "file";
    size_t len = n ? n : 4;
    if (len + 1 > size) {
        snprintf(err, errlen, "the URL's protocol name is longer than %zu characters",
                 size ? size - 1 : 0);
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        char c = src[i];
        scheme[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    scheme[len] = '\0';
    return 0;
}

bool proto_scheme_in_list(const char *scheme, const char *list)
{
    size_t sl = strlen(scheme);
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *b = p;
        while (*p && *p != ',')
            p++;
        const char *e = p;
        while (e > b && e[-1] == ' ')
            e--;
        if ((size_t)(e - b) == sl && sl > 0 && strncasecmp(b, scheme, sl) == 0)
            return true;
    }
    return false;
}

/* ------------------------------------------------------------------------------------------ */
/* Base64                                                                                     */

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

int proto_base64_decode(const char *s, size_t n, size_t max_out, unsigned char **out,
                        size_t *out_len, char *err, size_t errlen)
{
    /* First pass: count symbols and padding so the size is known before allocating. */
    size_t syms = 0, pad = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
            continue;
        if (c == '=') {
            pad++;
            continue;
        }
        if (pad) {
            snprintf(err, errlen, "'=' padding in the middle at offset %zu", i);
            return -1;
        }
        if (b64_value(c) < 0) {
            if (c >= 0x20 && c < 0x7F)
                snprintf(err, errlen, "invalid base64 character '%c' at offset %zu", c, i);
            else
                snprintf(err, errlen, "invalid base64 byte 0x%02x at offset %zu", c, i);
            return -1;
        }
        syms++;
    }
    if (pad > 2 || syms % 4 == 1 || (pad && (syms + pad) % 4 != 0)) {
        snprintf(err, errlen, "base64 length is wrong (%zu symbols, %zu '=')", syms, pad);
        return -1;
    }
    size_t len = syms / 4 * 3 + (syms % 4 ? syms % 4 - 1 : 0);
    if (len > max_out) {
        snprintf(err, errlen, "decodes to %zu bytes; the limit is %zu", len, max_out);
        return -2;
    }
    unsigned char *buf = malloc(len ? len : 1);
    if (!buf) {
        snprintf(err, errlen, "out of memory for %zu bytes", len);
        return -2;
    }
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value((unsigned char)s[i]);
        if (v < 0)
            continue;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o < len)
                buf[o++] = (unsigned char)(acc >> bits);
        }
    }
    /* RFC 4648 3.5: the unused low bits of the last symbol must be zero. */
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) {
        free(buf);
        snprintf(err, errlen, "the last base64 symbol has non-zero padding bits");
        return -1;
    }
    *out = buf;
    *out_len = o;
    return 0;
}
