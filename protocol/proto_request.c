/* proto_request.c — parsing and validation of request frames.
 *
 * Two passes. A strict RFC 8259 scanner walks the bytes first: it checks UTF-8, nesting depth,
 * the number of values, string escapes and number syntax, and reports the byte offset of the
 * first problem. Only then does cJSON build the tree, so cJSON never sees input it would
 * accept loosely (it allows "+1", raw control characters, truncates at \u0000 and cuts long
 * numbers), and a hostile frame cannot make it allocate millions of nodes or recurse deeply.
 * The second pass is schema-driven: every object has a list of allowed keys, which also
 * finds duplicate keys without quadratic work. */
#include "protocol/proto_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_DEPTH_CAP 64
#define MAX_NUMBER_CHARS 63          /* cJSON parses numbers through a 64-byte buffer */
#define MAX_SAFE_INT 9007199254740991.0  /* 2^53 - 1: integers a double holds exactly */
#define MAX_WALL_EPOCH 253402300799.0    /* 9999-12-31T23:59:59Z */
#define MAX_SECONDS 1e9                  /* ~31 years: bound for media times and durations */

void proto_error_set(proto_error *err, proto_errc code, const char *field, const char *fmt, ...)
{
    err->code = code;
    size_t fl = field ? strlen(field) : 0;
    fl = proto_utf8_cut(field ? field : "", fl, sizeof err->field - 1);
    if (fl)
        memcpy(err->field, field, fl);
    err->field[fl] = '\0';
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof err->message) {
        size_t cut = proto_utf8_cut(err->message, sizeof err->message - 1,
                                    sizeof err->message - 1);
        err->message[cut] = '\0';
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Pass 1: the strict scanner                                                                 */

typedef struct jscan {
    const unsigned char *p;
    size_t n, i;
    int max_depth;
    long values, max_values;
    proto_error *err;
} jscan;

static int js_fail(jscan *s, proto_errc code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int js_fail(jscan *s, proto_errc code, const char *fmt, ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    proto_error_set(s->err, code, NULL, "%s", msg);
    return -1;
}

static int js_unexpected(jscan *s, const char *expected)
{
    if (s->i >= s->n)
        return js_fail(s, PROTO_E_BAD_JSON, "unexpected end of the message at byte %zu; "
                       "expected %s", s->i, expected);
    unsigned char c = s->p[s->i];
    if (c >= 0x20 && c < 0x7F)
        return js_fail(s, PROTO_E_BAD_JSON, "unexpected '%c' at byte %zu; expected %s", c, s->i,
                       expected);
    return js_fail(s, PROTO_E_BAD_JSON, "unexpected byte 0x%02x at byte %zu; expected %s", c,
                   s->i, expected);
}

static void js_ws(jscan *s)
{
    while (s->i < s->n) {
        unsigned char c = s->p[s->i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        s->i++;
    }
}

static int hex4(const unsigned char *p, unsigned *out)
{
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        unsigned char c = p[k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static int js_string(jscan *s)
{
    size_t start = s->i++;
    for (;;) {
        if (s->i >= s->n)
            return js_fail(s, PROTO_E_BAD_JSON, "unterminated string starting at byte %zu",
                           start);
        unsigned char c = s->p[s->i];
        if (c == '"') {
            s->i++;
            return 0;
        }
        if (c == '\\') {
            size_t at = s->i;
            if (s->i + 1 >= s->n)
                return js_fail(s, PROTO_E_BAD_JSON, "unterminated string starting at byte %zu",
                               start);
            unsigned char e = s->p[s->i + 1];
            if (e && strchr("\"\\/bfnrt", e)) {
                s->i += 2;
                continue;
            }
            if (e != 'u') {
                if (e >= 0x20 && e < 0x7F)
                    return js_fail(s, PROTO_E_BAD_JSON, "invalid escape '\\%c' at byte %zu", e,
                                   at);
                return js_fail(s, PROTO_E_BAD_JSON, "invalid escape at byte %zu", at);
            }
            unsigned cp;
            if (s->i + 6 > s->n || hex4(s->p + s->i + 2, &cp) < 0)
                return js_fail(s, PROTO_E_BAD_JSON, "invalid \\u escape at byte %zu; expected "
                               "4 hex digits", at);
            s->i += 6;
            if (cp == 0)
                return js_fail(s, PROTO_E_BAD_REQUEST, "a string has \\u0000 at byte %zu; "
                               "strings must not contain NUL characters", at);
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return js_fail(s, PROTO_E_BAD_JSON, "unpaired UTF-16 low surrogate \\u%04X at "
                               "byte %zu", cp, at);
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (s->i + 6 > s->n || s->p[s->i] != '\\' || s->p[s->i + 1] != 'u' ||
                    hex4(s->p + s->i + 2, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
                    return js_fail(s, PROTO_E_BAD_JSON, "UTF-16 high surrogate \\u%04X at byte "
                                   "%zu is not followed by a low surrogate", cp, at);
                s->i += 6;
            }
            continue;
        }
        if (c < 0x20)
            return js_fail(s, PROTO_E_BAD_JSON, "control character 0x%02x in a string at byte "
                           "%zu; escape it (\\n, \\t, \\u00XX)", c, s->i);
        if (c < 0x80) {
            s->i++;
            continue;
        }
        int l = proto_utf8_seq(s->p + s->i, s->n - s->i);
        if (l <= 0)
            return js_fail(s, PROTO_E_BAD_JSON, "invalid UTF-8 at byte %zu (0x%02x); JSON text "
                           "must be UTF-8", s->i, c);
        s->i += (size_t)l;
    }
}

static bool is_digit_b(jscan *s)
{
    return s->i < s->n && s->p[s->i] >= '0' && s->p[s->i] <= '9';
}

static int js_number(jscan *s)
{
    size_t start = s->i;
    if (s->p[s->i] == '-')
        s->i++;
    if (s->i < s->n && s->p[s->i] == '0') {
        s->i++;
    } else if (is_digit_b(s)) {
        while (is_digit_b(s))
            s->i++;
    } else {
        return js_unexpected(s, "a digit");
    }
    if (s->i < s->n && s->p[s->i] == '.') {
        s->i++;
        if (!is_digit_b(s))
            return js_unexpected(s, "a digit after '.'");
        while (is_digit_b(s))
            s->i++;
    }
    if (s->i < s->n && (s->p[s->i] == 'e' || s->p[s->i] == 'E')) {
        s->i++;
        if (s->i < s->n && (s->p[s->i] == '+' || s->p[s->i] == '-'))
            s->i++;
        if (!is_digit_b(s))
            return js_unexpected(s, "a digit in the exponent");
        while (is_digit_b(s))
            s->i++;
    }
    if (s->i - start > MAX_NUMBER_CHARS)
        return js_fail(s, PROTO_E_BAD_REQUEST, "the number at byte %zu has %zu characters; at "
                       "most %d are accepted", start, s->i - start, MAX_NUMBER_CHARS);
    return 0;
}

static int js_literal(jscan *s, const char *word)
{
    size_t l = strlen(word);
    if (s->n - s->i < l || memcmp(s->p + s->i, word, l) != 0)
        return js_unexpected(s, "a JSON value");
    s->i += l;
    return 0;
}

static int js_value(jscan *s, int depth)
{
    js_ws(s);
    if (s->i >= s->n)
        return js_unexpected(s, "a JSON value");
    if (++s->values > s->max_values)
        return js_fail(s, PROTO_E_TOO_LARGE, "the message has more than %ld JSON values",
                       s->max_values);
    unsigned char c = s->p[s->i];
    if (c == '{' || c == '[') {
        bool obj = c == '{';
        if (depth + 1 > s->max_depth)
            return js_fail(s, PROTO_E_TOO_LARGE, "JSON nests deeper than %d levels at byte %zu",
                           s->max_depth, s->i);
        s->i++;
        js_ws(s);
        if (s->i < s->n && s->p[s->i] == (obj ? '}' : ']')) {
            s->i++;
            return 0;
        }
        for (;;) {
            if (obj) {
                js_ws(s);
                if (s->i >= s->n || s->p[s->i] != '"')
                    return js_unexpected(s, "a string key");
                if (js_string(s) < 0)
                    return -1;
                js_ws(s);
                if (s->i >= s->n || s->p[s->i] != ':')
                    return js_unexpected(s, "':' after the key");
                s->i++;
            }
            if (js_value(s, depth + 1) < 0)
                return -1;
            js_ws(s);
            if (s->i < s->n && s->p[s->i] == ',') {
                s->i++;
                continue;
            }
            if (s->i < s->n && s->p[s->i] == (obj ? '}' : ']')) {
                s->i++;
                return 0;
            }
            return js_unexpected(s, obj ? "',' or '}'" : "',' or ']'");
        }
    }
    if (c == '"')
        return js_string(s);
    if (c == '-' || (c >= '0' && c <= '9'))
        return js_number(s);
    if (c == 't')
        return js_literal(s, "true");
    if (c == 'f')
        return js_literal(s, "false");
    if (c == 'n')
        return js_literal(s, "null");
    return js_unexpected(s, "a JSON value");
}

static int js_document(jscan *s)
{
    js_ws(s);
    if (s->i >= s->n)
        return js_fail(s, PROTO_E_BAD_JSON, "the message is empty; expected a JSON object");
    if (js_value(s, 0) < 0)
        return -1;
    js_ws(s);
    if (s->i != s->n)
        return js_unexpected(s, "the end of the message after the JSON value");
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Pass 2: schema                                                                             */

typedef struct pctx {
    const proto_limits *lim;
    proto_error *err;
} pctx;

static const char *jtype(const cJSON *v)
{
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an invalid value";
}

static void join_path(char *buf, size_t size, const char *path, const char *key)
{
    if (path && *path)
        snprintf(buf, size, "%s.%s", path, key);
    else
        snprintf(buf, size, "%s", key);
}

/* Every field error reads "field 'a.b': <what>", and err->field is "a.b". */
static int fail(pctx *c, proto_errc code, const char *path, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(pctx *c, proto_errc code, const char *path, const char *key, const char *fmt, ...)
{
    char field[96], what[300];
    join_path(field, sizeof field, path, key);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    proto_error_set(c->err, code, field, "field '%s': %s", field, what);
    return -1;
}

/* A key or string from the request, shortened for an error message. */
static int quote_len(const char *s)
{
    return (int)proto_utf8_cut(s, strlen(s), 48);
}

static int check_keys(pctx *c, const cJSON *obj, const char *path, const char *const *allowed,
                      size_t n_allowed)
{
    uint64_t seen = 0;
    for (const cJSON *it = obj->child; it; it = it->next) {
        const char *k = it->string ? it->string : "";
        size_t i;
        for (i = 0; i < n_allowed; i++)
            if (strcmp(k, allowed[i]) == 0)
                break;
        if (i == n_allowed) {
            char list[200] = "";
            size_t o = 0;
            for (size_t j = 0; j < n_allowed && o < sizeof list; j++)
                o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", j ? ", " : "",
                                      allowed[j]);
            char field[96];
            join_path(field, sizeof field, path, k);
            size_t fl = proto_utf8_cut(field, strlen(field), 60);
            field[fl] = '\0';
            proto_error_set(c->err, PROTO_E_BAD_REQUEST, field,
                            "unknown field '%s'%s; expected one of: %s", field,
                            fl < strlen(k) + (path && *path ? strlen(path) + 1 : 0) ? "..." : "",
                            list);
            return -1;
        }
        if (seen & (1ull << i))
            return fail(c, PROTO_E_BAD_REQUEST, path, allowed[i],
                        "appears twice; each field may be given once");
        seen |= 1ull << i;
    }
    return 0;
}

/* A member; JSON null counts as absent, so clients may send null for "not given". */
static const cJSON *member(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* Getters return 1 (present, valid), 0 (absent) or -1 (error set). */

static int get_string(pctx *c, const cJSON *obj, const char *path, const char *key,
                      const char *what, bool required, const char **out)
{
    const cJSON *v = member(obj, key);
    if (!v) {
        if (required)
            return fail(c, PROTO_E_BAD_REQUEST, path, key, "missing; expected %s", what);
        return 0;
    }
    if (!cJSON_IsString(v) || !v->valuestring)
        return fail(c, PROTO_E_BAD_REQUEST, path, key, "expected %s, got %s", what, jtype(v));
    *out = v->valuestring;
    return 1;
}

static bool has_control(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7F)
            return true;
    return false;
}

static bool valid_name(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char ch = s[n];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == '-'))
            return false;
        if (n >= PROTO_NAME_MAX)
            return false;
    }
    return n >= 1;
}

#define NAME_WHAT "a name of 1..64 characters from A-Z a-z 0-9 _ . -"
#define ID_WHAT "a string of 1..128 bytes without control characters"

static int get_name(pctx *c, const cJSON *obj, const char *path, const char *key, bool required,
                    char out[PROTO_NAME_MAX + 1])
{
    const char *s;
    int r = get_string(c, obj, path, key, NAME_WHAT, required, &s);
    if (r <= 0)
        return r;
    if (!valid_name(s))
        return fail(c, PROTO_E_BAD_REQUEST, path, key, "expected %s, got \"%.*s\"%s", NAME_WHAT,
                    quote_len(s), s, strlen(s) > (size_t)quote_len(s) ? "..." : "");
    strcpy(out, s);
    return 1;
}

static int get_id(pctx *c, const cJSON *obj, const char *path, const char *key, bool required,
                  char out[PROTO_ID_MAX + 1])
{
    const char *s;
    int r = get_string(c, obj, path, key, ID_WHAT, required, &s);
    if (r <= 0)
        return r;
    size_t n = strlen(s);
    if (n == 0 || n > PROTO_ID_MAX || has_control(s))
        return fail(c, PROTO_E_BAD_REQUEST, path, key, "expected %s, got %zu bytes%s", ID_WHAT,
                    n, has_control(s) ? " with control characters" : "");
    memcpy(out, s, n + 1);
    return 1;
}

/* Free text (prompts): owned copy, length within max_bytes (limit_exceeded beyond). */
static int get_text(pctx *c, const cJSON *obj, const char *path, const char *key, bool required,
                    bool allow_empty, size_t max_bytes, const char *limit_name, char **out)
{
    const char *s;
    int r = get_string(c, obj, path, key, "a string", required, &s);
    if (r <= 0)
        return r;
    size_t n = strlen(s);
    if (n == 0 && !allow_empty)
        return fail(c, PROTO_E_BAD_REQUEST, path, key, "must not be empty");
    if (n > max_bytes)
        return fail(c, PROTO_E_LIMIT_EXCEEDED, path, key,
                    "is %zu bytes; this daemon accepts at most %zu (%s)", n, max_bytes,
                    limit_name);
    *out = strdup(s);
    if (!*out)
        return fail(c, PROTO_E_INTERNAL, path, key, "out of memory");
    return 1;
}

static int get_number(pctx *c, const cJSON *obj, const char *path, const char *key,
                      const char *what, double *out)
{
    const cJSON *v = member(obj, key);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v))
        return fail(c, PROTO_E_BAD_REQUEST, path, key, "expected %s, got %s", what, jtype(v));
    if (!isfinite(v->valuedouble))
        return fail(c, PROTO_E_BAD_REQUEST, path, key, "expected %s, got a number out of range",
                    what);
    *out = v->valuedouble;
    return 1;
}

/* A number in [lo, hi] (lo_open / hi_open make the ends exclusive). */
static int get_range(pctx *c, const cJSON *obj, const char *path, const char *key, double lo,
                     bool lo_open, double hi, bool hi_open, proto_errc over_code, double *out)
{
    char what[96];
    snprintf(what, sizeof what, "a number in %c%g, %g%c", lo_open ? '(' : '[', lo, hi,
             hi_open ? ')' : ']');
    double d;
    int r = get_number(c, obj, path, key, what, &d);
    if (r <= 0)
        return r;
    bool below = lo_open ? !(d > lo) : !(d >= lo);
    bool above = hi_open ? !(d < hi) : !(d <= hi);
    if (below || above)
        return fail(c, above ? over_code : PROTO_E_BAD_REQUEST, path, key, "expected %s, got %g",
                    what, d);
    *out = d;
    return 1;
}

static int get_int(pctx *c, const cJSON *obj, const char *path, const char *key, double lo,
                   double hi, proto_errc over_code, const char *limit_note, int64_t *out)
{
    char what[128];
    snprintf(what, sizeof what, "an integer in [%.0f, %.0f]%s", lo, hi, limit_note ? limit_note : "");
    double d;
    int r = get_number(c, obj, path, key, what, &d);
    if (r <= 0)
        return r;
    if (d != floor(d))
        return fail(c, PROTO_E_BAD_REQUEST, path, key, "expected %s, got %g", what, d);
    if (d < lo || d > hi)
        return fail(c, d > hi ? over_code : PROTO_E_BAD_REQUEST, path, key,
                    "expected %s, got %.0f", what, d);
    *out = (int64_t)d;
    return 1;
}

static int get_bool(pctx *c, const cJSON *obj, const char *path, const char *key, bool *out)
{
    const cJSON *v = member(obj, key);
    if (!v)
        return 0;
    if (!cJSON_IsBool(v))
        return fail(c, PROTO_E_BAD_REQUEST, path, key, "expected true or false, got %s",
                    jtype(v));
    *out = cJSON_IsTrue(v);
    return 1;
}

/* An optional nested object: 1 with *out, 0 absent, -1 wrong type. */
static int get_object(pctx *c, const cJSON *obj, const char *path, const char *key,
                      const char *what, const cJSON **out)
{
    const cJSON *v = member(obj, key);
    if (!v)
        return 0;
    if (!cJSON_IsObject(v))
        return fail(c, PROTO_E_BAD_REQUEST, path, key, "expected %s, got %s", what, jtype(v));
    *out = v;
    return 1;
}

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------------------------------------ */
/* Shared pieces: sampling, window, max_tokens                                                */

static void sampling_defaults(proto_sampling *s)
{
    memset(s, 0, sizeof *s);
    s->temperature = 0.0;
    s->top_k = 0;
    s->top_p = 1.0;
    s->min_p = 0.0;
    s->repetition_penalty = 1.0;
    s->presence_penalty = 0.0;
    s->seed = 0;
}

static void sampling_free(proto_sampling *s)
{
    for (size_t i = 0; i < s->n_stop; i++)
        free(s->stop[i]);
    free(s->stop);
    s->stop = NULL;
    s->n_stop = 0;
}

static int parse_stop(pctx *c, const cJSON *v, proto_sampling *s)
{
    const proto_limits *lim = c->lim;
    size_t count = cJSON_IsString(v) ? 1 : (size_t)cJSON_GetArraySize(v);
    if (!cJSON_IsString(v) && !cJSON_IsArray(v))
        return fail(c, PROTO_E_BAD_REQUEST, "sampling", "stop",
                    "expected an array of strings (or one string), got %s", jtype(v));
    if (count > (size_t)lim->max_stop_strings)
        return fail(c, PROTO_E_LIMIT_EXCEEDED, "sampling", "stop",
                    "has %zu strings; this daemon accepts at most %d (max_stop_strings)", count,
                    lim->max_stop_strings);
    s->stop = calloc(count ? count : 1, sizeof *s->stop);
    if (!s->stop)
        return fail(c, PROTO_E_INTERNAL, "sampling", "stop", "out of memory");
    const cJSON *item = cJSON_IsString(v) ? v : v->child;
    for (size_t i = 0; i < count; i++, item = item->next) {
        char key[32];
        snprintf(key, sizeof key, cJSON_IsString(v) ? "stop" : "stop[%zu]", i);
        if (!cJSON_IsString(item))
            return fail(c, PROTO_E_BAD_REQUEST, "sampling", key, "expected a string, got %s",
                        jtype(item));
        size_t n = strlen(item->valuestring);
        if (n == 0)
            return fail(c, PROTO_E_BAD_REQUEST, "sampling", key, "must not be empty");
        if (n > lim->max_stop_bytes)
            return fail(c, PROTO_E_LIMIT_EXCEEDED, "sampling", key,
                        "is %zu bytes; this daemon accepts at most %zu (max_stop_bytes)", n,
                        lim->max_stop_bytes);
        s->stop[i] = strdup(item->valuestring);
        if (!s->stop[i])
            return fail(c, PROTO_E_INTERNAL, "sampling", key, "out of memory");
        s->n_stop = i + 1;
    }
    s->set |= PROTO_SAMPLING_STOP;
    return 0;
}

static int parse_sampling(pctx *c, const cJSON *req, proto_sampling *s)
{
    static const char *const keys[] = {"temperature", "top_k", "top_p", "min_p",
                                       "repetition_penalty", "presence_penalty", "seed", "stop"};
    sampling_defaults(s);
    const cJSON *o;
    int r = get_object(c, req, NULL, "sampling", "an object with sampling settings", &o);
    if (r <= 0)
        return r;
    if (check_keys(c, o, "sampling", keys, N_OF(keys)) < 0)
        return -1;
    const char *P = "sampling";
    double d;
    int64_t i;
    if ((r = get_range(c, o, P, "temperature", 0, false, 5, false, PROTO_E_BAD_REQUEST, &d)) < 0)
        return -1;
    if (r) { s->temperature = d; s->set |= PROTO_SAMPLING_TEMPERATURE; }
    if ((r = get_int(c, o, P, "top_k", 0, 1048576, PROTO_E_BAD_REQUEST, " (0 = off)", &i)) < 0)
        return -1;
    if (r) { s->top_k = (int)i; s->set |= PROTO_SAMPLING_TOP_K; }
    if ((r = get_range(c, o, P, "top_p", 0, true, 1, false, PROTO_E_BAD_REQUEST, &d)) < 0)
        return -1;
    if (r) { s->top_p = d; s->set |= PROTO_SAMPLING_TOP_P; }
    if ((r = get_range(c, o, P, "min_p", 0, false, 1, true, PROTO_E_BAD_REQUEST, &d)) < 0)
        return -1;
    if (r) { s->min_p = d; s->set |= PROTO_SAMPLING_MIN_P; }
    if ((r = get_range(c, o, P, "repetition_penalty", 0, true, 10, false, PROTO_E_BAD_REQUEST,
                       &d)) < 0)
        return -1;
    if (r) { s->repetition_penalty = d; s->set |= PROTO_SAMPLING_REPETITION_PENALTY; }
    if ((r = get_range(c, o, P, "presence_penalty", -2, false, 2, false, PROTO_E_BAD_REQUEST,
                       &d)) < 0)
        return -1;
    if (r) { s->presence_penalty = d; s->set |= PROTO_SAMPLING_PRESENCE_PENALTY; }
    if ((r = get_int(c, o, P, "seed", 0, MAX_SAFE_INT, PROTO_E_BAD_REQUEST, NULL, &i)) < 0)
        return -1;
    if (r) { s->seed = (uint64_t)i; s->set |= PROTO_SAMPLING_SEED; }
    const cJSON *stop = member(o, "stop");
    if (stop && parse_stop(c, stop, s) < 0)
        return -1;
    return 0;
}

static int parse_max_tokens(pctx *c, const cJSON *req, int *out)
{
    char note[64];
    snprintf(note, sizeof note, " (this daemon's max_tokens)");
    int64_t v;
    int r = get_int(c, req, NULL, "max_tokens", 1, c->lim->max_tokens, PROTO_E_LIMIT_EXCEEDED,
                    note, &v);
    if (r < 0)
        return -1;
    *out = r ? (int)v : c->lim->default_max_tokens;
    return 0;
}

static int parse_wall(pctx *c, const cJSON *w, const char *key, bool *has, double *out)
{
    const cJSON *v = member(w, key);
    if (!v)
        return 0;
    if (cJSON_IsString(v)) {
        if (proto_parse_rfc3339(v->valuestring, out) < 0)
            return fail(c, PROTO_E_BAD_REQUEST, "window", key,
                        "expected an RFC 3339 date-time such as \"2025-01-31T10:02:00Z\" or Unix "
                        "seconds, got \"%.*s\"", quote_len(v->valuestring), v->valuestring);
        if (*out < 0 || *out > MAX_WALL_EPOCH)
            return fail(c, PROTO_E_BAD_REQUEST, "window", key, "must be after 1970-01-01");
    } else {
        int r = get_range(c, w, "window", key, 0, false, MAX_WALL_EPOCH, false,
                          PROTO_E_BAD_REQUEST, out);
        if (r < 0) {
            if (!cJSON_IsNumber(v))
                return fail(c, PROTO_E_BAD_REQUEST, "window", key,
                            "expected an RFC 3339 date-time string or Unix seconds, got %s",
                            jtype(v));
            return -1;
        }
    }
    *has = true;
    return 0;
}

static int parse_window(pctx *c, const cJSON *req, bool last_only, proto_window *w)
{
    static const char *const keys[] = {"last_seconds", "from_media", "to_media", "from_wall",
                                       "to_wall"};
    memset(w, 0, sizeof *w);
    w->kind = PROTO_WINDOW_ALL;
    const cJSON *o;
    const char *what = last_only ? "an object {\"last_seconds\": s}"
                                 : "an object: {\"last_seconds\"}, {\"from_media\", \"to_media\"} "
                                   "or {\"from_wall\", \"to_wall\"}";
    int r = get_object(c, req, NULL, "window", what, &o);
    if (r <= 0)
        return r;
    if (check_keys(c, o, "window", keys, last_only ? 1 : N_OF(keys)) < 0)
        return -1;
    bool last = member(o, "last_seconds") != NULL;
    bool media = member(o, "from_media") || member(o, "to_media");
    bool wall = member(o, "from_wall") || member(o, "to_wall");
    if (last + media + wall != 1)
        return fail(c, PROTO_E_BAD_REQUEST, NULL, "window", "expected %s; %s", what,
                    last + media + wall == 0 ? "it is empty" : "it mixes these forms");
    if (last) {
        w->kind = PROTO_WINDOW_LAST;
        return get_range(c, o, "window", "last_seconds", 0, true, MAX_SECONDS, false,
                         PROTO_E_BAD_REQUEST, &w->last_seconds) < 0 ? -1 : 0;
    }
    if (media) {
        w->kind = PROTO_WINDOW_MEDIA;
        if ((r = get_range(c, o, "window", "from_media", 0, false, MAX_SECONDS, false,
                           PROTO_E_BAD_REQUEST, &w->from)) < 0)
            return -1;
        w->has_from = r;
        if ((r = get_range(c, o, "window", "to_media", 0, false, MAX_SECONDS, false,
                           PROTO_E_BAD_REQUEST, &w->to)) < 0)
            return -1;
        w->has_to = r;
    } else {
        w->kind = PROTO_WINDOW_WALL;
        if (parse_wall(c, o, "from_wall", &w->has_from, &w->from) < 0 ||
            parse_wall(c, o, "to_wall", &w->has_to, &w->to) < 0)
            return -1;
    }
    if (w->has_from && w->has_to && !(w->from < w->to))
        return fail(c, PROTO_E_BAD_REQUEST, "window", media ? "to_media" : "to_wall",
                    "must be after %s (got from %.3f, to %.3f)",
                    media ? "from_media" : "from_wall", w->from, w->to);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Ops                                                                                        */

static const char *const k_stream_add[] = {"stream", "url", "fps", "tokens_per_pair",
                                           "max_tokens_per_pair", "cache_tokens", "cache_bytes",
                                           "system_prompt", "options"};
static const char *const k_stream_ref[] = {"stream"};
static const char *const k_query[] = {"stream", "prompt", "window", "max_tokens", "sampling",
                                      "stream_tokens"};
static const char *const k_query_cancel[] = {"query"};
static const char *const k_watch_add[] = {"stream", "name", "prompt", "every_seconds",
                                          "on_pair", "window", "max_tokens", "sampling", "expect"};
static const char *const k_watch_ref[] = {"watch"};
static const char *const k_image[] = {"path", "data_base64", "prompt", "max_tokens", "sampling",
                                      "stream_tokens"};

static int parse_tokens_per_pair(pctx *c, const cJSON *req, proto_stream_add *a)
{
    const proto_limits *lim = c->lim;
    const cJSON *tpp;
    int r = get_object(c, req, NULL, "tokens_per_pair", "an object {\"min\", \"max\"}", &tpp);
    if (r < 0)
        return -1;
    bool has_short = member(req, "max_tokens_per_pair") != NULL;
    if (r && has_short)
        return fail(c, PROTO_E_BAD_REQUEST, NULL, "max_tokens_per_pair",
                    "give tokens_per_pair or max_tokens_per_pair, not both");
    int64_t mn = 0, mx = 0;
    int has_min = 0, has_max = 0;
    char note[64];
    snprintf(note, sizeof note, " (this daemon's max_tokens_per_pair)");
    if (r) {
        static const char *const keys[] = {"min", "max"};
        if (check_keys(c, tpp, "tokens_per_pair", keys, 2) < 0)
            return -1;
        if ((has_min = get_int(c, tpp, "tokens_per_pair", "min", 4, lim->max_tokens_per_pair,
                               PROTO_E_LIMIT_EXCEEDED, note, &mn)) < 0 ||
            (has_max = get_int(c, tpp, "tokens_per_pair", "max", 4, lim->max_tokens_per_pair,
                               PROTO_E_LIMIT_EXCEEDED, note, &mx)) < 0)
            return -1;
        if (!has_min && !has_max)
            return fail(c, PROTO_E_BAD_REQUEST, NULL, "tokens_per_pair",
                        "expected at least one of min and max");
        if (has_min && has_max && mn > mx)
            return fail(c, PROTO_E_BAD_REQUEST, "tokens_per_pair", "min",
                        "is %lld, more than max (%lld)", (long long)mn, (long long)mx);
    } else if (has_short) {
        if ((has_max = get_int(c, req, NULL, "max_tokens_per_pair", 4, lim->max_tokens_per_pair,
                               PROTO_E_LIMIT_EXCEEDED, note, &mx)) < 0)
            return -1;
    }
    /* A bound given alone pulls the other default along so that min <= max still holds. */
    a->min_tokens_per_pair = has_min ? (int)mn : lim->default_min_tokens_per_pair;
    a->max_tokens_per_pair = has_max ? (int)mx : lim->default_max_tokens_per_pair;
    if (!has_min && a->min_tokens_per_pair > a->max_tokens_per_pair)
        a->min_tokens_per_pair = a->max_tokens_per_pair;
    if (!has_max && a->max_tokens_per_pair < a->min_tokens_per_pair)
        a->max_tokens_per_pair = a->min_tokens_per_pair;
    return 0;
}

static int parse_stream_options(pctx *c, const cJSON *req, proto_stream_add *a)
{
    static const char *const keys[] = {"loop", "realtime", "start_offset", "rtsp_transport",
                                       "decoder_threads", "timeout_ms"};
    a->loop = false;
    a->realtime = false;
    a->start_offset = 0;
    a->rtsp_transport = PROTO_RTSP_TCP;
    a->decoder_threads = 0;
    a->timeout_ms = 10000;
    const cJSON *o;
    int r = get_object(c, req, NULL, "options", "an object with stream options", &o);
    if (r <= 0)
        return r;
    if (check_keys(c, o, "options", keys, N_OF(keys)) < 0)
        return -1;
    const char *P = "options";
    int64_t i;
    if (get_bool(c, o, P, "loop", &a->loop) < 0 || get_bool(c, o, P, "realtime", &a->realtime) < 0)
        return -1;
    if (get_range(c, o, P, "start_offset", 0, false, MAX_SECONDS, false, PROTO_E_BAD_REQUEST,
                  &a->start_offset) < 0)
        return -1;
    const char *t;
    if ((r = get_string(c, o, P, "rtsp_transport", "\"tcp\" or \"udp\"", false, &t)) < 0)
        return -1;
    if (r) {
        if (strcmp(t, "tcp") == 0)
            a->rtsp_transport = PROTO_RTSP_TCP;
        else if (strcmp(t, "udp") == 0)
            a->rtsp_transport = PROTO_RTSP_UDP;
        else
            return fail(c, PROTO_E_BAD_REQUEST, P, "rtsp_transport",
                        "expected \"tcp\" or \"udp\", got \"%.*s\"", quote_len(t), t);
    }
    if ((r = get_int(c, o, P, "decoder_threads", 0, 64, PROTO_E_BAD_REQUEST, " (0 = automatic)",
                     &i)) < 0)
        return -1;
    if (r)
        a->decoder_threads = (int)i;
    if ((r = get_int(c, o, P, "timeout_ms", 100, 600000, PROTO_E_BAD_REQUEST, NULL, &i)) < 0)
        return -1;
    if (r)
        a->timeout_ms = (int)i;
    return 0;
}

static int parse_stream_add(pctx *c, const cJSON *req, proto_stream_add *a)
{
    const proto_limits *lim = c->lim;
    if (get_name(c, req, NULL, "stream", true, a->stream) < 0)
        return -1;
    const char *url;
    if (get_string(c, req, NULL, "url", "a URL or file path", true, &url) < 0)
        return -1;
    size_t ul = strlen(url);
    if (ul > lim->max_url_bytes)
        return fail(c, PROTO_E_BAD_URL, NULL, "url",
                    "is %zu bytes; this daemon accepts at most %zu (max_url_bytes)", ul,
                    lim->max_url_bytes);
    char why[160];
    if (proto_url_scheme(url, a->url_scheme, sizeof a->url_scheme, why, sizeof why) < 0)
        return fail(c, PROTO_E_BAD_URL, NULL, "url", "%s", why);
    if (lim->allowed_url_schemes && !proto_scheme_in_list(a->url_scheme, lim->allowed_url_schemes))
        return fail(c, PROTO_E_FORBIDDEN, NULL, "url",
                    "protocol '%s' is not allowed by this daemon (allowed: %s)", a->url_scheme,
                    lim->allowed_url_schemes);
    if (!(a->url = strdup(url)))
        return fail(c, PROTO_E_INTERNAL, NULL, "url", "out of memory");

    int r;
    a->fps = lim->default_fps;
    if (get_range(c, req, NULL, "fps", 0, true, lim->max_fps, false, PROTO_E_LIMIT_EXCEEDED,
                  &a->fps) < 0)
        return -1;
    if (parse_tokens_per_pair(c, req, a) < 0)
        return -1;

    bool has_tok = member(req, "cache_tokens") != NULL, has_bytes = member(req, "cache_bytes");
    if (has_tok && has_bytes)
        return fail(c, PROTO_E_BAD_REQUEST, NULL, "cache_bytes",
                    "give cache_tokens or cache_bytes, not both");
    int64_t v;
    a->cache_kind = PROTO_CACHE_TOKENS;
    a->cache_tokens = lim->default_cache_tokens;
    if ((r = get_int(c, req, NULL, "cache_tokens", 1024, (double)lim->max_cache_tokens,
                     PROTO_E_LIMIT_EXCEEDED, " (this daemon's max_cache_tokens)", &v)) < 0)
        return -1;
    if (r)
        a->cache_tokens = (uint64_t)v;
    double max_bytes = (double)lim->max_cache_bytes;
    if (max_bytes > MAX_SAFE_INT)
        max_bytes = MAX_SAFE_INT;
    if ((r = get_int(c, req, NULL, "cache_bytes", 1 << 20, max_bytes, PROTO_E_LIMIT_EXCEEDED,
                     " (this daemon's max_cache_bytes)", &v)) < 0)
        return -1;
    if (r) {
        a->cache_kind = PROTO_CACHE_BYTES;
        a->cache_tokens = 0;
        a->cache_bytes = (uint64_t)v;
    }
    if (get_text(c, req, NULL, "system_prompt", false, true, lim->max_prompt_bytes,
                 "max_prompt_bytes", &a->system_prompt) < 0)
        return -1;
    if (a->system_prompt && !*a->system_prompt) {
        free(a->system_prompt);
        a->system_prompt = NULL;
    }
    return parse_stream_options(c, req, a);
}

static int parse_query(pctx *c, const cJSON *req, proto_query *q)
{
    q->stream_tokens = true;
    if (get_name(c, req, NULL, "stream", true, q->stream) < 0 ||
        get_text(c, req, NULL, "prompt", true, false, c->lim->max_prompt_bytes,
                 "max_prompt_bytes", &q->prompt) < 0 ||
        parse_window(c, req, false, &q->window) < 0 || parse_max_tokens(c, req, &q->max_tokens) < 0 ||
        parse_sampling(c, req, &q->sampling) < 0 ||
        get_bool(c, req, NULL, "stream_tokens", &q->stream_tokens) < 0)
        return -1;
    return 0;
}

static bool ascii_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

static int parse_expect(pctx *c, const cJSON *req, proto_expect *e)
{
    static const char *const keys[] = {"type", "values", "alert_on", "alert_repeat",
                                       "cooldown_seconds"};
    memset(e, 0, sizeof *e);
    e->kind = PROTO_EXPECT_NONE;
    const cJSON *o;
    int r = get_object(c, req, NULL, "expect",
                       "an object {\"type\": \"yes_no\"} or {\"type\": \"enum\", \"values\": [...]}",
                       &o);
    if (r <= 0)
        return r;
    if (check_keys(c, o, "expect", keys, N_OF(keys)) < 0)
        return -1;
    const char *type;
    if (get_string(c, o, "expect", "type", "\"yes_no\" or \"enum\"", true, &type) < 0)
        return -1;
    const cJSON *values = member(o, "values");
    if (strcmp(type, "yes_no") == 0) {
        if (values)
            return fail(c, PROTO_E_BAD_REQUEST, "expect", "values",
                        "only type \"enum\" takes values; yes_no answers are \"yes\" or \"no\"");
        e->kind = PROTO_EXPECT_YES_NO;
        e->n_values = 2;
        strcpy(e->values[0], "yes");
        strcpy(e->values[1], "no");
        e->alert_mask = 1u;
    } else if (strcmp(type, "enum") == 0) {
        e->kind = PROTO_EXPECT_ENUM;
        const char *what = "an array of 2..32 distinct strings of 1..64 bytes";
        if (!values)
            return fail(c, PROTO_E_BAD_REQUEST, "expect", "values", "missing; expected %s", what);
        if (!cJSON_IsArray(values))
            return fail(c, PROTO_E_BAD_REQUEST, "expect", "values", "expected %s, got %s", what,
                        jtype(values));
        int n = cJSON_GetArraySize(values);
        if (n < 2 || n > PROTO_ENUM_MAX)
            return fail(c, PROTO_E_BAD_REQUEST, "expect", "values",
                        "expected %s, got %d values", what, n);
        size_t i = 0;
        for (const cJSON *it = values->child; it; it = it->next, i++) {
            char key[32];
            snprintf(key, sizeof key, "values[%zu]", i);
            if (!cJSON_IsString(it))
                return fail(c, PROTO_E_BAD_REQUEST, "expect", key, "expected a string, got %s",
                            jtype(it));
            const char *s = it->valuestring;
            size_t l = strlen(s);
            if (l == 0 || l > PROTO_ENUM_VALUE_MAX || has_control(s) || ascii_space(s[0]) ||
                ascii_space(s[l - 1]))
                return fail(c, PROTO_E_BAD_REQUEST, "expect", key,
                            "expected 1..64 bytes without control characters or surrounding "
                            "spaces, got \"%.*s\"", quote_len(s), s);
            for (size_t j = 0; j < i; j++)
                if (strcasecmp(e->values[j], s) == 0)
                    return fail(c, PROTO_E_BAD_REQUEST, "expect", key,
                                "\"%s\" repeats values[%zu] (values are matched ignoring case)",
                                s, j);
            memcpy(e->values[i], s, l + 1);
        }
        e->n_values = i;
        e->alert_mask = 0;
    } else {
        return fail(c, PROTO_E_BAD_REQUEST, "expect", "type",
                    "expected \"yes_no\" or \"enum\", got \"%.*s\"", quote_len(type), type);
    }
    const cJSON *al = member(o, "alert_on");
    if (al) {
        if (!cJSON_IsArray(al))
            return fail(c, PROTO_E_BAD_REQUEST, "expect", "alert_on",
                        "expected an array of strings from expect.values, got %s", jtype(al));
        e->alert_mask = 0;
        size_t i = 0;
        for (const cJSON *it = al->child; it; it = it->next, i++) {
            char key[32];
            snprintf(key, sizeof key, "alert_on[%zu]", i);
            if (!cJSON_IsString(it))
                return fail(c, PROTO_E_BAD_REQUEST, "expect", key, "expected a string, got %s",
                            jtype(it));
            size_t j;
            for (j = 0; j < e->n_values; j++)
                if (strcasecmp(e->values[j], it->valuestring) == 0)
                    break;
            if (j == e->n_values)
                return fail(c, PROTO_E_BAD_REQUEST, "expect", key,
                            "\"%.*s\" is not one of the expected values", quote_len(it->valuestring),
                            it->valuestring);
            e->alert_mask |= 1u << j;
        }
    }
    if (get_bool(c, o, "expect", "alert_repeat", &e->alert_repeat) < 0)
        return -1;
    if (get_range(c, o, "expect", "cooldown_seconds", 0, false, 7 * 86400.0, false,
                  PROTO_E_BAD_REQUEST, &e->cooldown_seconds) < 0)
        return -1;
    return 0;
}

static int parse_watch_add(pctx *c, const cJSON *req, proto_watch_add *w)
{
    if (get_name(c, req, NULL, "stream", true, w->stream) < 0 ||
        get_name(c, req, NULL, "name", false, w->watch) < 0 ||
        get_text(c, req, NULL, "prompt", true, false, c->lim->max_prompt_bytes,
                 "max_prompt_bytes", &w->prompt) < 0)
        return -1;
    bool on_pair = false;
    int has_on_pair = get_bool(c, req, NULL, "on_pair", &on_pair);
    if (has_on_pair < 0)
        return -1;
    int has_every = get_range(c, req, NULL, "every_seconds", c->lim->min_watch_interval_s, false,
                              7 * 86400.0, false, PROTO_E_BAD_REQUEST, &w->every_seconds);
    if (has_every < 0)
        return -1;
    if (has_every && on_pair)
        return fail(c, PROTO_E_BAD_REQUEST, NULL, "on_pair",
                    "give every_seconds or \"on_pair\": true, not both");
    if (!has_every && !on_pair)
        return fail(c, PROTO_E_BAD_REQUEST, NULL, "every_seconds",
                    "missing; expected every_seconds (a number >= %g) or \"on_pair\": true",
                    c->lim->min_watch_interval_s);
    w->on_pair = on_pair;
    if (on_pair)
        w->every_seconds = 0;
    proto_window win;
    if (parse_window(c, req, true, &win) < 0)
        return -1;
    w->window_last_seconds = win.kind == PROTO_WINDOW_LAST ? win.last_seconds : 0;
    if (parse_max_tokens(c, req, &w->max_tokens) < 0 || parse_sampling(c, req, &w->sampling) < 0 ||
        parse_expect(c, req, &w->expect) < 0)
        return -1;
    return 0;
}

static int parse_image(pctx *c, const cJSON *req, proto_image *im)
{
    const proto_limits *lim = c->lim;
    im->stream_tokens = true;
    bool has_path = member(req, "path") != NULL, has_data = member(req, "data_base64") != NULL;
    if (has_path == has_data)
        return fail(c, PROTO_E_BAD_REQUEST, NULL, has_path ? "data_base64" : "path",
                    has_path ? "give path or data_base64, not both"
                             : "missing; expected path (an absolute file path on the daemon's "
                               "host) or data_base64 (the image file, base64)");
    if (has_path) {
        const char *p;
        if (get_string(c, req, NULL, "path", "an absolute file path", true, &p) < 0)
            return -1;
        size_t n = strlen(p);
        if (p[0] != '/' || has_control(p))
            return fail(c, PROTO_E_BAD_REQUEST, NULL, "path",
                        "expected an absolute file path without control characters, got \"%.*s\"",
                        quote_len(p), p);
        if (n > lim->max_path_bytes)
            return fail(c, PROTO_E_LIMIT_EXCEEDED, NULL, "path",
                        "is %zu bytes; this daemon accepts at most %zu (max_path_bytes)", n,
                        lim->max_path_bytes);
        if (!lim->allow_image_path)
            return fail(c, PROTO_E_FORBIDDEN, NULL, "path",
                        "this daemon does not read image files from its own disk; send the "
                        "image as data_base64");
        if (!(im->path = strdup(p)))
            return fail(c, PROTO_E_INTERNAL, NULL, "path", "out of memory");
    } else {
        const char *b;
        if (get_string(c, req, NULL, "data_base64", "a base64 string", true, &b) < 0)
            return -1;
        char why[160];
        int r = proto_base64_decode(b, strlen(b), lim->max_image_bytes, &im->data, &im->data_len,
                                    why, sizeof why);
        if (r == -2)
            return fail(c, PROTO_E_TOO_LARGE, NULL, "data_base64", "%s (max_image_bytes)", why);
        if (r < 0)
            return fail(c, PROTO_E_BAD_REQUEST, NULL, "data_base64", "%s", why);
        if (im->data_len == 0)
            return fail(c, PROTO_E_BAD_REQUEST, NULL, "data_base64", "the image is empty");
    }
    if (get_text(c, req, NULL, "prompt", true, false, lim->max_prompt_bytes, "max_prompt_bytes",
                 &im->prompt) < 0 ||
        parse_max_tokens(c, req, &im->max_tokens) < 0 || parse_sampling(c, req, &im->sampling) < 0 ||
        get_bool(c, req, NULL, "stream_tokens", &im->stream_tokens) < 0)
        return -1;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Entry point                                                                                */

static proto_op op_from_name(const char *s)
{
    for (int i = 1; i < PROTO_OP_COUNT_; i++)
        if (strcmp(s, proto_op_name((proto_op)i)) == 0)
            return (proto_op)i;
    return PROTO_OP_NONE;
}

static int op_keys(proto_op op, const char *const **keys, size_t *n)
{
    switch (op) {
    case PROTO_OP_PING:
    case PROTO_OP_STREAM_LIST: *keys = NULL; *n = 0; break;
    case PROTO_OP_STATUS:
    case PROTO_OP_STREAM_REMOVE:
    case PROTO_OP_WATCH_LIST: *keys = k_stream_ref; *n = N_OF(k_stream_ref); break;
    case PROTO_OP_STREAM_ADD: *keys = k_stream_add; *n = N_OF(k_stream_add); break;
    case PROTO_OP_QUERY: *keys = k_query; *n = N_OF(k_query); break;
    case PROTO_OP_QUERY_CANCEL: *keys = k_query_cancel; *n = N_OF(k_query_cancel); break;
    case PROTO_OP_WATCH_ADD: *keys = k_watch_add; *n = N_OF(k_watch_add); break;
    case PROTO_OP_WATCH_REMOVE: *keys = k_watch_ref; *n = N_OF(k_watch_ref); break;
    case PROTO_OP_IMAGE: *keys = k_image; *n = N_OF(k_image); break;
    default: return -1;
    }
    return 0;
}

static int parse_op(pctx *c, const cJSON *req, proto_request *out)
{
    switch (out->op) {
    case PROTO_OP_PING:
    case PROTO_OP_STREAM_LIST:
        return 0;
    case PROTO_OP_STATUS:
        return get_name(c, req, NULL, "stream", false, out->status.stream) < 0 ? -1 : 0;
    case PROTO_OP_WATCH_LIST:
        return get_name(c, req, NULL, "stream", false, out->watch_list.stream) < 0 ? -1 : 0;
    case PROTO_OP_STREAM_REMOVE:
        return get_name(c, req, NULL, "stream", true, out->stream_remove.stream) < 0 ? -1 : 0;
    case PROTO_OP_STREAM_ADD:
        return parse_stream_add(c, req, &out->stream_add);
    case PROTO_OP_QUERY:
        return parse_query(c, req, &out->query);
    case PROTO_OP_QUERY_CANCEL:
        return get_id(c, req, NULL, "query", true, out->query_cancel.query) < 0 ? -1 : 0;
    case PROTO_OP_WATCH_ADD:
        return parse_watch_add(c, req, &out->watch_add);
    case PROTO_OP_WATCH_REMOVE:
        return get_name(c, req, NULL, "watch", true, out->watch_remove.watch) < 0 ? -1 : 0;
    case PROTO_OP_IMAGE:
        return parse_image(c, req, &out->image);
    default:
        return fail(c, PROTO_E_INTERNAL, NULL, "op", "no parser for this op");
    }
}

static int parse_tree(pctx *c, const cJSON *root, proto_request *out)
{
    proto_error *err = c->err;
    if (!cJSON_IsObject(root)) {
        proto_error_set(err, PROTO_E_BAD_REQUEST, "",
                        "expected a JSON object at the top level, got %s", jtype(root));
        return -1;
    }
    if (get_id(c, root, NULL, "id", true, out->id) < 0)
        return -1;
    memcpy(err->id, out->id, sizeof err->id);
    err->has_id = true;

    const cJSON *v = member(root, "v");
    if (v) {
        if (!cJSON_IsNumber(v))
            return fail(c, PROTO_E_BAD_REQUEST, NULL, "v",
                        "expected the protocol version number %d, got %s", PROTO_VERSION,
                        jtype(v));
        if (v->valuedouble != PROTO_VERSION)
            return fail(c, PROTO_E_UNSUPPORTED_VERSION, NULL, "v",
                        "this daemon speaks protocol version %d; the request asks for %g",
                        PROTO_VERSION, v->valuedouble);
    }

    char known[256] = "";
    size_t o = 0;
    for (int i = 1; i < PROTO_OP_COUNT_; i++)
        o += (size_t)snprintf(known + o, sizeof known - o, "%s%s", i > 1 ? ", " : "",
                              proto_op_name((proto_op)i));
    const char *op;
    if (get_string(c, root, NULL, "op", "an op name", true, &op) < 0)
        return -1;
    out->op = op_from_name(op);
    if (out->op == PROTO_OP_NONE)
        return fail(c, PROTO_E_UNKNOWN_OP, NULL, "op", "unknown op \"%.*s\"; expected one of: %s",
                    quote_len(op), op, known);

    const char *const *keys = NULL;
    size_t n_keys = 0;
    op_keys(out->op, &keys, &n_keys);
    const char *all[3 + 16];
    all[0] = "v";
    all[1] = "id";
    all[2] = "op";
    for (size_t i = 0; i < n_keys; i++)
        all[3 + i] = keys[i];
    if (check_keys(c, root, NULL, all, 3 + n_keys) < 0)
        return -1;
    return parse_op(c, root, out);
}

int proto_parse_request(const char *bytes, size_t len, const proto_limits *lim,
                        proto_request *out, proto_error *err)
{
    proto_limits dflt;
    if (!lim) {
        proto_limits_default(&dflt);
        lim = &dflt;
    }
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    if (!bytes && len) {
        proto_error_set(err, PROTO_E_INTERNAL, NULL, "no request bytes");
        return -1;
    }
    if (len > lim->max_message_bytes) {
        proto_error_set(err, PROTO_E_TOO_LARGE, NULL,
                        "the request is %zu bytes; this daemon accepts at most %zu "
                        "(max_message_bytes)", len, lim->max_message_bytes);
        return -1;
    }
    jscan s = {
        .p = (const unsigned char *)bytes,
        .n = len,
        .max_depth = lim->max_depth < 1 ? 1 : lim->max_depth > MAX_DEPTH_CAP ? MAX_DEPTH_CAP
                                                                             : lim->max_depth,
        .max_values = lim->max_json_values < 1 ? 1 : lim->max_json_values,
        .err = err,
    };
    if (js_document(&s) < 0)
        return -1;
    cJSON *root = cJSON_ParseWithLength(bytes, len);
    if (!root) {
        /* The scanner accepted it, so only an allocation can have failed. */
        proto_error_set(err, PROTO_E_INTERNAL, NULL, "out of memory while parsing the request");
        return -1;
    }
    pctx c = {.lim = lim, .err = err};
    int r = parse_tree(&c, root, out);
    cJSON_Delete(root);
    if (r < 0) {
        proto_request_free(out);
        if (err->code == PROTO_OK)
            proto_error_set(err, PROTO_E_INTERNAL, NULL, "request rejected without a reason");
        return -1;
    }
    return 0;
}

void proto_request_free(proto_request *req)
{
    if (!req)
        return;
    switch (req->op) {
    case PROTO_OP_STREAM_ADD:
        free(req->stream_add.url);
        free(req->stream_add.system_prompt);
        break;
    case PROTO_OP_QUERY:
        free(req->query.prompt);
        sampling_free(&req->query.sampling);
        break;
    case PROTO_OP_WATCH_ADD:
        free(req->watch_add.prompt);
        sampling_free(&req->watch_add.sampling);
        break;
    case PROTO_OP_IMAGE:
        free(req->image.path);
        free(req->image.data);
        free(req->image.prompt);
        sampling_free(&req->image.sampling);
        break;
    default:
        break;
    }
    memset(req, 0, sizeof *req);
}
