/* config.c — vigild's configuration: defaults, then the JSON file, then command-line flags.
 *
 * The file is strict like the protocol: unknown keys and wrong types are errors naming the file
 * and the key ("vigild.json: limits.max_tokens: expected an integer in [1, 1048576], got "x"").
 * Streams listed in the file are validated exactly as a client's stream.add request would be,
 * with the final limits (after flags), so a stream that starts at launch cannot bypass them. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "daemon/daemon.h"

#define CFG_MAX_FILE (4u << 20)

static int cfg_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int cfg_err(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int set_str(char **dst, const char *src) {
    char *d = src ? strdup(src) : NULL;
    if (src && !d) return -1;
    free(*dst);
    *dst = d;
    return 0;
}

int vd_config_init(vd_config *c, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    c->compute = MODEL_COMPUTE_BF16;
    proto_limits_default(&c->limits);
    const char *rt = getenv("RUNTIME_DIRECTORY");
    char ep[1024], ev[1024];
    if (rt && *rt && !strchr(rt, ':')) {
        /* systemd may list several directories separated by ':'; one is the normal case. */
        snprintf(ep, sizeof ep, "ipc://%s/vigild.sock", rt);
        snprintf(ev, sizeof ev, "ipc://%s/events.sock", rt);
    } else {
        snprintf(ep, sizeof ep, "%s", PROTO_DEFAULT_ENDPOINT);
        snprintf(ev, sizeof ev, "%s", PROTO_DEFAULT_EVENTS_ENDPOINT);
    }
    if (set_str(&c->endpoint, ep) || set_str(&c->events_endpoint, ev) ||
        set_str(&c->allowed_protocols, INGEST_DEFAULT_PROTOCOLS) ||
        set_str(&c->device_prefix, INGEST_DEFAULT_DEVICE_PREFIX))
        return cfg_err(err, errlen, "out of memory");
    c->max_total_cache_bytes = 0;
    c->query_reserve_tokens = 0;   /* derived from limits.max_tokens at validation */
    c->ingest_headroom_pairs = 2;
    c->position_limit = 0;
    c->image_max_pixels = 1024L * 1024;
    c->image_min_pixels = INGEST_DEFAULT_IMAGE_MIN_PIXELS;
    c->ingest_queue_pairs = 4;
    c->log_level = VD_LOG_INFO;
    c->log_format = VD_LOG_FORMAT_AUTO;
    c->thinking = -1;
    c->shutdown_grace_ms = 5000;
    c->status_interval_ms = 5000;
    c->watchdog_stall_ms = 60000;
    const char *th = getenv("VIGILD_TEST_HOOKS");
    c->test_hooks = th && strcmp(th, "1") == 0;
    c->limits.allowed_url_schemes = NULL;   /* the daemon checks URLs with ingest_check_url */
    c->limits.allow_image_path = false;
    return 0;
}

void vd_stream_specs_free(vd_stream_spec *s, int n) {
    if (!s) return;
    for (int i = 0; i < n; i++) {
        proto_request_free(&s[i].req);
        free(s[i].canonical);
    }
    free(s);
}

void vd_config_free(vd_config *c) {
    if (!c) return;
    free(c->config_path);
    free(c->model_dir);
    free(c->endpoint);
    free(c->events_endpoint);
    free(c->allowed_protocols);
    free(c->device_prefix);
    if (c->curve_secret_key) memset(c->curve_secret_key, 0, strlen(c->curve_secret_key));
    free(c->curve_secret_key);
    for (int i = 0; i < c->n_curve_client_keys; i++) free(c->curve_client_keys[i]);
    free(c->curve_client_keys);
    free(c->system_prompt);
    vd_stream_specs_free(c->streams, c->n_streams);
    memset(c, 0, sizeof *c);
}

/* ---- small readers ----------------------------------------------------------------------- */

typedef struct jctx {
    const char *file;
    char *err;
    size_t errlen;
} jctx;

static const char *jtype(const cJSON *v) {
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "something else";
}

static int jbad(jctx *j, const char *path, const char *key, const char *expected, const cJSON *v) {
    char got[96];
    if (cJSON_IsString(v)) snprintf(got, sizeof got, "\"%.60s\"", v->valuestring);
    else if (cJSON_IsNumber(v)) snprintf(got, sizeof got, "%.17g", v->valuedouble);
    else snprintf(got, sizeof got, "%s", jtype(v));
    return cfg_err(j->err, j->errlen, "%s: %s%s%s: expected %s, got %s", j->file, path ? path : "",
                   path && *path ? "." : "", key, expected, got);
}

/* Keys starting with '_' are comments ("_comment": "..."): JSON has no other way to annotate. */
static bool comment_key(const char *k) {
    return k && k[0] == '_';
}

static int jkeys(jctx *j, const cJSON *obj, const char *path, const char *const *keys, size_t n) {
    for (const cJSON *it = obj->child; it; it = it->next) {
        if (comment_key(it->string)) continue;
        bool ok = false;
        for (size_t i = 0; i < n && !ok; i++) ok = strcmp(it->string, keys[i]) == 0;
        if (!ok) {
            char list[512] = "";
            size_t o = 0;
            for (size_t i = 0; i < n && o < sizeof list; i++)
                o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "", keys[i]);
            return cfg_err(j->err, j->errlen, "%s: unknown key \"%s%s%s\" (allowed%s%s: %s)", j->file,
                           path ? path : "", path && *path ? "." : "", it->string,
                           path && *path ? " in " : "", path ? path : "", list);
        }
        for (const cJSON *d = it->next; d; d = d->next)
            if (strcmp(d->string, it->string) == 0)
                return cfg_err(j->err, j->errlen, "%s: key \"%s%s%s\" appears twice", j->file,
                               path ? path : "", path && *path ? "." : "", it->string);
    }
    return 0;
}

/* Each returns 1 when the key was set, 0 when absent (or null), -1 on error. */
static int jnum(jctx *j, const cJSON *obj, const char *path, const char *key, double lo, double hi, double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    char what[96];
    snprintf(what, sizeof what, "a number in [%g, %g]", lo, hi);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi)
        return jbad(j, path, key, what, v);
    *out = v->valuedouble;
    return 1;
}

static int jint64(jctx *j, const cJSON *obj, const char *path, const char *key, double lo, double hi, int64_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    char what[96];
    snprintf(what, sizeof what, "an integer in [%.0f, %.0f]", lo, hi);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi)
        return jbad(j, path, key, what, v);
    *out = (int64_t)v->valuedouble;
    return 1;
}

static int jint(jctx *j, const cJSON *obj, const char *path, const char *key, int lo, int hi, int *out) {
    int64_t x;
    int r = jint64(j, obj, path, key, lo, hi, &x);
    if (r == 1) *out = (int)x;
    return r;
}

static int jsize(jctx *j, const cJSON *obj, const char *path, const char *key, double lo, double hi, size_t *out) {
    int64_t x;
    int r = jint64(j, obj, path, key, lo, hi, &x);
    if (r == 1) *out = (size_t)x;
    return r;
}

static int ju64(jctx *j, const cJSON *obj, const char *path, const char *key, double lo, double hi, uint64_t *out) {
    int64_t x;
    int r = jint64(j, obj, path, key, lo, hi, &x);
    if (r == 1) *out = (uint64_t)x;
    return r;
}

static int jstr(jctx *j, const cJSON *obj, const char *path, const char *key, const char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v) || !v->valuestring[0]) return jbad(j, path, key, "a non-empty string", v);
    *out = v->valuestring;
    return 1;
}

static int jobj(jctx *j, const cJSON *obj, const char *key, const cJSON **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsObject(v)) return jbad(j, "", key, "an object", v);
    *out = v;
    return 1;
}

/* "a,b,c" or ["a","b","c"] -> "a,b,c" (malloc'ed). */
static int jlist(jctx *j, const cJSON *obj, const char *path, const char *key, char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (cJSON_IsString(v)) {
        if (set_str(out, v->valuestring)) return cfg_err(j->err, j->errlen, "out of memory");
        return 1;
    }
    if (!cJSON_IsArray(v)) return jbad(j, path, key, "a comma-separated string or an array of strings", v);
    size_t len = 1;
    for (const cJSON *it = v->child; it; it = it->next) {
        if (!cJSON_IsString(it) || !it->valuestring[0] || strchr(it->valuestring, ','))
            return jbad(j, path, key, "an array of non-empty strings without commas", it);
        len += strlen(it->valuestring) + 1;
    }
    char *s = malloc(len);
    if (!s) return cfg_err(j->err, j->errlen, "out of memory");
    s[0] = 0;
    for (const cJSON *it = v->child; it; it = it->next) {
        if (s[0]) strcat(s, ",");
        strcat(s, it->valuestring);
    }
    free(*out);
    *out = s;
    return 1;
}

static char *read_file(const char *path, size_t max, size_t *len, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        cfg_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(max + 1);
    if (!buf) {
        fclose(f);
        cfg_err(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    size_t n = fread(buf, 1, max + 1, f);
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        cfg_err(err, errlen, "%s: read error", path);
        return NULL;
    }
    if (n > max) {
        free(buf);
        cfg_err(err, errlen, "%s: larger than %zu bytes", path, max);
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

/* A key file holds one Z85 key per line; lines starting with '#' are comments. */
static int read_key_lines(const char *path, char ***keys, int *n, char *err, size_t errlen) {
    char *text = read_file(path, 1u << 20, NULL, err, errlen);
    if (!text) return -1;
    int line = 0;
    for (char *save = NULL, *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        line++;
        /* '#' starts a comment line only: it is also a Z85 character */
        while (*l && isspace((unsigned char)*l)) l++;
        if (*l == '#') continue;
        size_t k = strlen(l);
        while (k && isspace((unsigned char)l[k - 1])) l[--k] = 0;
        if (!*l) continue;
        if (!proto_curve_key_valid(l)) {
            free(text);
            return cfg_err(err, errlen, "%s: line %d: expected a 40-character Z85 CURVE key", path, line);
        }
        char **nk = realloc(*keys, (size_t)(*n + 1) * sizeof *nk);
        if (!nk || !(nk[*n] = strdup(l))) {
            if (nk) *keys = nk;
            free(text);
            return cfg_err(err, errlen, "out of memory");
        }
        *keys = nk;
        (*n)++;
    }
    free(text);
    return 0;
}

static int add_client_key(vd_config *c, const char *key, const char *where, char *err, size_t errlen) {
    if (!proto_curve_key_valid(key))
        return cfg_err(err, errlen, "%s: expected a 40-character Z85 CURVE public key", where);
    char **nk = realloc(c->curve_client_keys, (size_t)(c->n_curve_client_keys + 1) * sizeof *nk);
    if (!nk) return cfg_err(err, errlen, "out of memory");
    c->curve_client_keys = nk;
    if (!(nk[c->n_curve_client_keys] = strdup(key))) return cfg_err(err, errlen, "out of memory");
    c->n_curve_client_keys++;
    return 0;
}

static int load_secret_file(vd_config *c, const char *path, char *err, size_t errlen) {
    char **keys = NULL;
    int n = 0;
    int rc = read_key_lines(path, &keys, &n, err, errlen);
    if (rc == 0 && n != 1) rc = cfg_err(err, errlen, "%s: expected exactly one Z85 secret key, found %d", path, n);
    if (rc == 0) rc = set_str(&c->curve_secret_key, keys[0]) ? cfg_err(err, errlen, "out of memory") : 0;
    for (int i = 0; i < n; i++) {
        memset(keys[i], 0, strlen(keys[i]));
        free(keys[i]);
    }
    free(keys);
    return rc;
}

/* ---- streams ---------------------------------------------------------------------------------- */

/* A configured stream is a stream.add request without id/op: parse it as one. */
static int parse_streams(const proto_limits *lim, const cJSON *arr, const char *file, vd_stream_spec **out,
                         int *n_out, char *err, size_t errlen) {
    *out = NULL;
    *n_out = 0;
    if (!arr) return 0;
    if (!cJSON_IsArray(arr))
        return cfg_err(err, errlen, "%s: streams: expected an array of stream objects, got %s", file, jtype(arr));
    int n = cJSON_GetArraySize(arr);
    vd_stream_spec *specs = calloc((size_t)(n > 0 ? n : 1), sizeof *specs);
    if (!specs) return cfg_err(err, errlen, "out of memory");
    int i = 0;
    for (const cJSON *it = arr->child; it; it = it->next, i++) {
        if (!cJSON_IsObject(it)) {
            vd_stream_specs_free(specs, i);
            return cfg_err(err, errlen, "%s: streams[%d]: expected an object with stream.add fields, got %s",
                           file, i, jtype(it));
        }
        if (cJSON_GetObjectItemCaseSensitive(it, "id") || cJSON_GetObjectItemCaseSensitive(it, "op")) {
            vd_stream_specs_free(specs, i);
            return cfg_err(err, errlen, "%s: streams[%d]: \"id\"/\"op\" are not stream fields; name the stream "
                           "with \"stream\"", file, i);
        }
        cJSON *req = cJSON_Duplicate(it, true);
        /* comment keys are not stream fields; they do not make a stream "changed" either */
        for (cJSON *k = req ? req->child : NULL, *nx; k; k = nx) {
            nx = k->next;
            if (comment_key(k->string)) cJSON_DeleteItemFromObjectCaseSensitive(req, k->string);
        }
        char *canon = req ? cJSON_PrintUnformatted(req) : NULL;
        char idbuf[48];
        snprintf(idbuf, sizeof idbuf, "config.streams[%d]", i);
        if (!req || !canon || !cJSON_AddStringToObject(req, "id", idbuf) ||
            !cJSON_AddStringToObject(req, "op", "stream.add")) {
            cJSON_Delete(req);
            free(canon);
            vd_stream_specs_free(specs, i);
            return cfg_err(err, errlen, "out of memory");
        }
        char *text = cJSON_PrintUnformatted(req);
        cJSON_Delete(req);
        if (!text || !canon) {
            free(text);
            free(canon);
            vd_stream_specs_free(specs, i);
            return cfg_err(err, errlen, "out of memory");
        }
        proto_error pe;
        int rc = proto_parse_request(text, strlen(text), lim, &specs[i].req, &pe);
        free(text);
        if (rc != 0) {
            free(canon);
            vd_stream_specs_free(specs, i);
            return cfg_err(err, errlen, "%s: streams[%d]: %s (%s)", file, i, pe.message, proto_errc_name(pe.code));
        }
        specs[i].canonical = canon;
        for (int k = 0; k < i; k++)
            if (strcmp(specs[k].req.stream_add.stream, specs[i].req.stream_add.stream) == 0) {
                char name[PROTO_NAME_MAX + 1];
                snprintf(name, sizeof name, "%s", specs[i].req.stream_add.stream);
                vd_stream_specs_free(specs, i + 1);
                return cfg_err(err, errlen, "%s: streams[%d]: stream \"%s\" is listed twice", file, i, name);
            }
    }
    *out = specs;
    *n_out = n;
    return 0;
}

/* ---- the file --------------------------------------------------------------------------------- */

static const char *const k_top[] = { "model", "compute", "threads", "endpoint", "events_endpoint",
                                     "log_level", "log_format", "system_prompt", "thinking", "stream_defaults",
                                     "limits", "memory", "sources", "curve", "shutdown_grace_seconds",
                                     "status_interval_seconds", "watchdog_stall_seconds", "streams" };
static const char *const k_defaults[] = { "fps", "min_tokens_per_pair", "max_tokens_per_pair", "cache_tokens" };
static const char *const k_limits[] = { "max_message_bytes", "max_json_depth", "max_json_values",
                                        "max_prompt_bytes", "max_url_bytes", "max_path_bytes",
                                        "max_image_bytes", "max_tokens", "default_max_tokens",
                                        "max_stop_strings", "max_stop_bytes", "max_fps",
                                        "max_tokens_per_pair", "max_streams", "max_watches",
                                        "max_queue_depth", "min_watch_interval_seconds" };
static const char *const k_memory[] = { "max_cache_tokens", "max_cache_bytes", "max_total_cache_bytes",
                                        "query_reserve_tokens", "ingest_headroom_pairs",
                                        "ingest_queue_pairs", "position_limit" };
static const char *const k_sources[] = { "allowed_protocols", "device_prefix", "image_max_pixels",
                                         "image_min_pixels" };
static const char *const k_curve[] = { "secret_key", "secret_key_file", "client_keys", "client_keys_file" };

#define NK(a) (sizeof(a) / sizeof((a)[0]))

static int apply_root(vd_config *c, const cJSON *root, jctx *j) {
    if (!cJSON_IsObject(root)) return cfg_err(j->err, j->errlen, "%s: expected a JSON object at the top level", j->file);
    if (jkeys(j, root, "", k_top, NK(k_top)) < 0) return -1;
    const char *s;
    int r;
    if ((r = jstr(j, root, "", "model", &s)) < 0) return -1;
    if (r && set_str(&c->model_dir, s)) return cfg_err(j->err, j->errlen, "out of memory");
    if ((r = jstr(j, root, "", "compute", &s)) < 0) return -1;
    if (r) {
        if (strcmp(s, "bf16") == 0) c->compute = MODEL_COMPUTE_BF16;
        else if (strcmp(s, "f32") == 0) c->compute = MODEL_COMPUTE_F32;
        else return jbad(j, "", "compute", "\"bf16\" or \"f32\"", cJSON_GetObjectItemCaseSensitive(root, "compute"));
    }
    if (jint(j, root, "", "threads", 0, 1024, &c->threads) < 0) return -1;
    if ((r = jstr(j, root, "", "endpoint", &s)) < 0) return -1;
    if (r && set_str(&c->endpoint, s)) return cfg_err(j->err, j->errlen, "out of memory");
    if ((r = jstr(j, root, "", "events_endpoint", &s)) < 0) return -1;
    if (r && set_str(&c->events_endpoint, s)) return cfg_err(j->err, j->errlen, "out of memory");
    if ((r = jstr(j, root, "", "log_level", &s)) < 0) return -1;
    if (r && vd_log_level_parse(s, &c->log_level) != 0)
        return jbad(j, "", "log_level", "one of err, warning, notice, info, debug",
                    cJSON_GetObjectItemCaseSensitive(root, "log_level"));
    if ((r = jstr(j, root, "", "log_format", &s)) < 0) return -1;
    if (r) {
        if (strcmp(s, "auto") == 0) c->log_format = VD_LOG_FORMAT_AUTO;
        else if (strcmp(s, "plain") == 0) c->log_format = VD_LOG_FORMAT_PLAIN;
        else if (strcmp(s, "journal") == 0) c->log_format = VD_LOG_FORMAT_JOURNAL;
        else return jbad(j, "", "log_format", "\"auto\", \"plain\" or \"journal\"",
                         cJSON_GetObjectItemCaseSensitive(root, "log_format"));
    }
    {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "system_prompt");
        if (v && !cJSON_IsNull(v)) {
            if (!cJSON_IsString(v)) return jbad(j, "", "system_prompt", "a string or null", v);
            if (set_str(&c->system_prompt, v->valuestring[0] ? v->valuestring : NULL))
                return cfg_err(j->err, j->errlen, "out of memory");
        }
    }
    {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "thinking");
        if (v && !cJSON_IsNull(v)) {
            if (cJSON_IsBool(v)) c->thinking = cJSON_IsTrue(v) ? 1 : 0;
            else if (cJSON_IsString(v) && strcmp(v->valuestring, "auto") == 0) c->thinking = -1;
            else return jbad(j, "", "thinking", "true, false or \"auto\"", v);
        }
    }
    double d;
    if ((r = jnum(j, root, "", "shutdown_grace_seconds", 0, 3600, &d)) < 0) return -1;
    if (r) c->shutdown_grace_ms = (int)(d * 1000);
    if ((r = jnum(j, root, "", "status_interval_seconds", 0.1, 3600, &d)) < 0) return -1;
    if (r) c->status_interval_ms = (int)(d * 1000);
    if ((r = jnum(j, root, "", "watchdog_stall_seconds", 1, 86400, &d)) < 0) return -1;
    if (r) c->watchdog_stall_ms = (int)(d * 1000);

    const cJSON *o = NULL;
    proto_limits *L = &c->limits;
    if ((r = jobj(j, root, "stream_defaults", &o)) < 0) return -1;
    if (r) {
        const char *P = "stream_defaults";
        if (jkeys(j, o, P, k_defaults, NK(k_defaults)) < 0 || jnum(j, o, P, "fps", 0.01, 1000, &L->default_fps) < 0 ||
            jint(j, o, P, "min_tokens_per_pair", 4, 1 << 20, &L->default_min_tokens_per_pair) < 0 ||
            jint(j, o, P, "max_tokens_per_pair", 4, 1 << 20, &L->default_max_tokens_per_pair) < 0 ||
            ju64(j, o, P, "cache_tokens", 1024, 1 << 30, &L->default_cache_tokens) < 0)
            return -1;
    }
    if ((r = jobj(j, root, "limits", &o)) < 0) return -1;
    if (r) {
        const char *P = "limits";
        if (jkeys(j, o, P, k_limits, NK(k_limits)) < 0 ||
            jsize(j, o, P, "max_message_bytes", 1024, 1 << 30, &L->max_message_bytes) < 0 ||
            jint(j, o, P, "max_json_depth", 4, 64, &L->max_depth) < 0 ||
            jint(j, o, P, "max_json_values", 16, 1 << 24, &L->max_json_values) < 0 ||
            jsize(j, o, P, "max_prompt_bytes", 16, 1 << 26, &L->max_prompt_bytes) < 0 ||
            jsize(j, o, P, "max_url_bytes", 16, 1 << 20, &L->max_url_bytes) < 0 ||
            jsize(j, o, P, "max_path_bytes", 16, 1 << 20, &L->max_path_bytes) < 0 ||
            jsize(j, o, P, "max_image_bytes", 1024, 1 << 30, &L->max_image_bytes) < 0 ||
            jint(j, o, P, "max_tokens", 1, 1 << 20, &L->max_tokens) < 0 ||
            jint(j, o, P, "default_max_tokens", 1, 1 << 20, &L->default_max_tokens) < 0 ||
            jint(j, o, P, "max_stop_strings", 0, 64, &L->max_stop_strings) < 0 ||
            jsize(j, o, P, "max_stop_bytes", 1, 4096, &L->max_stop_bytes) < 0 ||
            jnum(j, o, P, "max_fps", 0.01, 1000, &L->max_fps) < 0 ||
            jint(j, o, P, "max_tokens_per_pair", 4, 1 << 20, &L->max_tokens_per_pair) < 0 ||
            jint(j, o, P, "max_streams", 0, 4096, &L->max_streams) < 0 ||
            jint(j, o, P, "max_watches", 0, 65536, &L->max_watches) < 0 ||
            jint(j, o, P, "max_queue_depth", 1, 1 << 20, &L->max_queue_depth) < 0 ||
            jnum(j, o, P, "min_watch_interval_seconds", 0.01, 86400, &L->min_watch_interval_s) < 0)
            return -1;
    }
    if ((r = jobj(j, root, "memory", &o)) < 0) return -1;
    if (r) {
        const char *P = "memory";
        if (jkeys(j, o, P, k_memory, NK(k_memory)) < 0 ||
            ju64(j, o, P, "max_cache_tokens", 1024, 1 << 30, &L->max_cache_tokens) < 0 ||
            ju64(j, o, P, "max_cache_bytes", 1 << 20, 9.0e15, &L->max_cache_bytes) < 0 ||
            ju64(j, o, P, "max_total_cache_bytes", 0, 9.0e15, &c->max_total_cache_bytes) < 0 ||
            jint(j, o, P, "query_reserve_tokens", 64, 1 << 24, &c->query_reserve_tokens) < 0 ||
            jint(j, o, P, "ingest_headroom_pairs", 0, 64, &c->ingest_headroom_pairs) < 0 ||
            jint(j, o, P, "ingest_queue_pairs", 1, 1024, &c->ingest_queue_pairs) < 0 ||
            jint(j, o, P, "position_limit", 0, INT_MAX, &c->position_limit) < 0)
            return -1;
    }
    if ((r = jobj(j, root, "sources", &o)) < 0) return -1;
    if (r) {
        const char *P = "sources";
        int64_t px;
        if (jkeys(j, o, P, k_sources, NK(k_sources)) < 0 || jlist(j, o, P, "allowed_protocols", &c->allowed_protocols) < 0)
            return -1;
        if ((r = jstr(j, o, P, "device_prefix", &s)) < 0) return -1;
        if (r && set_str(&c->device_prefix, s)) return cfg_err(j->err, j->errlen, "out of memory");
        if ((r = jint64(j, o, P, "image_max_pixels", 1024, 1e9, &px)) < 0) return -1;
        if (r) c->image_max_pixels = (long)px;
        if ((r = jint64(j, o, P, "image_min_pixels", 1024, 1e9, &px)) < 0) return -1;
        if (r) c->image_min_pixels = (long)px;
    }
    if ((r = jobj(j, root, "curve", &o)) < 0) return -1;
    if (r) {
        const char *P = "curve";
        if (jkeys(j, o, P, k_curve, NK(k_curve)) < 0) return -1;
        if ((r = jstr(j, o, P, "secret_key", &s)) < 0) return -1;
        if (r) {
            if (!proto_curve_key_valid(s))
                return cfg_err(j->err, j->errlen, "%s: curve.secret_key: expected a 40-character Z85 key", j->file);
            if (set_str(&c->curve_secret_key, s)) return cfg_err(j->err, j->errlen, "out of memory");
        }
        if ((r = jstr(j, o, P, "secret_key_file", &s)) < 0) return -1;
        if (r && load_secret_file(c, s, j->err, j->errlen) < 0) return -1;
        const cJSON *keys = cJSON_GetObjectItemCaseSensitive(o, "client_keys");
        if (keys && !cJSON_IsNull(keys)) {
            if (!cJSON_IsArray(keys)) return jbad(j, P, "client_keys", "an array of Z85 public keys", keys);
            int i = 0;
            for (const cJSON *k = keys->child; k; k = k->next, i++) {
                char where[160];
                snprintf(where, sizeof where, "%s: curve.client_keys[%d]", j->file, i);
                if (!cJSON_IsString(k)) return jbad(j, P, "client_keys[]", "a Z85 public key string", k);
                if (add_client_key(c, k->valuestring, where, j->err, j->errlen) < 0) return -1;
            }
        }
        if ((r = jstr(j, o, P, "client_keys_file", &s)) < 0) return -1;
        if (r && read_key_lines(s, &c->curve_client_keys, &c->n_curve_client_keys, j->err, j->errlen) < 0) return -1;
    }
    return 0;
}

int vd_config_apply_json(vd_config *c, const char *json_text, const char *path, char *err, size_t errlen) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json_text, &end, true);
    if (!root) {
        size_t off = end ? (size_t)(end - json_text) : 0;
        int line = 1;
        for (size_t i = 0; i < off && json_text[i]; i++) line += json_text[i] == '\n';
        return cfg_err(err, errlen, "%s: not valid JSON (near line %d, byte %zu)", path, line, off);
    }
    jctx j = { path, err, errlen };
    int rc = apply_root(c, root, &j);
    if (rc == 0) {
        /* Streams are validated later, with the final limits: keep the file name for that. */
        if (set_str(&c->config_path, path)) rc = cfg_err(err, errlen, "out of memory");
    }
    cJSON_Delete(root);
    return rc;
}

int vd_config_load_file(vd_config *c, const char *path, char *err, size_t errlen) {
    char *text = read_file(path, CFG_MAX_FILE, NULL, err, errlen);
    if (!text) return -1;
    int rc = vd_config_apply_json(c, text, path, err, errlen);
    free(text);
    return rc;
}

int vd_config_load_streams(const vd_config *base, const char *path, vd_stream_spec **out, int *n, char *err,
                           size_t errlen) {
    *out = NULL;
    *n = 0;
    char *text = read_file(path, CFG_MAX_FILE, NULL, err, errlen);
    if (!text) return -1;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, true);
    if (!root) {
        size_t off = end ? (size_t)(end - text) : 0;
        free(text);
        return cfg_err(err, errlen, "%s: not valid JSON (near byte %zu)", path, off);
    }
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return cfg_err(err, errlen, "%s: expected a JSON object at the top level", path);
    }
    int rc = parse_streams(&base->limits, cJSON_GetObjectItemCaseSensitive(root, "streams"), path, out, n, err, errlen);
    cJSON_Delete(root);
    return rc;
}

/* ---- command line ----------------------------------------------------------------------------- */

enum {
    OPT_CONFIG = 256, OPT_MODEL, OPT_COMPUTE, OPT_THREADS, OPT_ENDPOINT, OPT_EVENTS, OPT_FPS, OPT_MIN_TPP,
    OPT_MAX_TPP, OPT_CACHE_TOKENS, OPT_MAX_CACHE_TOKENS, OPT_MAX_TOTAL_CACHE, OPT_QUERY_RESERVE,
    OPT_MAX_STREAMS, OPT_MAX_WATCHES, OPT_MAX_QUEUE, OPT_MAX_TOKENS, OPT_MAX_MESSAGE, OPT_MAX_PROMPT,
    OPT_PROTOCOLS, OPT_DEVICE_PREFIX, OPT_IMAGE_MAX_PIXELS, OPT_CURVE_SECRET_FILE, OPT_CURVE_CLIENT_KEY,
    OPT_CURVE_CLIENT_FILE, OPT_SYSTEM_PROMPT, OPT_LOG_LEVEL, OPT_LOG_FORMAT, OPT_GRACE, OPT_STATUS_INTERVAL,
    OPT_WATCHDOG_STALL, OPT_POSITION_LIMIT, OPT_HEADROOM, OPT_QUEUE_PAIRS, OPT_THINKING, OPT_CHECK, OPT_HELP,
    OPT_VERSION,
};

static const struct option long_opts[] = {
    { "config", required_argument, NULL, OPT_CONFIG },
    { "model", required_argument, NULL, OPT_MODEL },
    { "compute", required_argument, NULL, OPT_COMPUTE },
    { "threads", required_argument, NULL, OPT_THREADS },
    { "endpoint", required_argument, NULL, OPT_ENDPOINT },
    { "events-endpoint", required_argument, NULL, OPT_EVENTS },
    { "fps", required_argument, NULL, OPT_FPS },
    { "min-tokens-per-pair", required_argument, NULL, OPT_MIN_TPP },
    { "max-tokens-per-pair", required_argument, NULL, OPT_MAX_TPP },
    { "cache-tokens", required_argument, NULL, OPT_CACHE_TOKENS },
    { "max-cache-tokens", required_argument, NULL, OPT_MAX_CACHE_TOKENS },
    { "max-total-cache-bytes", required_argument, NULL, OPT_MAX_TOTAL_CACHE },
    { "query-reserve-tokens", required_argument, NULL, OPT_QUERY_RESERVE },
    { "ingest-headroom-pairs", required_argument, NULL, OPT_HEADROOM },
    { "ingest-queue-pairs", required_argument, NULL, OPT_QUEUE_PAIRS },
    { "max-streams", required_argument, NULL, OPT_MAX_STREAMS },
    { "max-watches", required_argument, NULL, OPT_MAX_WATCHES },
    { "max-queue-depth", required_argument, NULL, OPT_MAX_QUEUE },
    { "max-tokens", required_argument, NULL, OPT_MAX_TOKENS },
    { "max-message-bytes", required_argument, NULL, OPT_MAX_MESSAGE },
    { "max-prompt-bytes", required_argument, NULL, OPT_MAX_PROMPT },
    { "allowed-protocols", required_argument, NULL, OPT_PROTOCOLS },
    { "device-prefix", required_argument, NULL, OPT_DEVICE_PREFIX },
    { "image-max-pixels", required_argument, NULL, OPT_IMAGE_MAX_PIXELS },
    { "curve-secret-key-file", required_argument, NULL, OPT_CURVE_SECRET_FILE },
    { "curve-client-key", required_argument, NULL, OPT_CURVE_CLIENT_KEY },
    { "curve-client-keys-file", required_argument, NULL, OPT_CURVE_CLIENT_FILE },
    { "system-prompt", required_argument, NULL, OPT_SYSTEM_PROMPT },
    { "log-level", required_argument, NULL, OPT_LOG_LEVEL },
    { "log-format", required_argument, NULL, OPT_LOG_FORMAT },
    { "shutdown-grace", required_argument, NULL, OPT_GRACE },
    { "status-interval", required_argument, NULL, OPT_STATUS_INTERVAL },
    { "watchdog-stall", required_argument, NULL, OPT_WATCHDOG_STALL },
    { "position-limit", required_argument, NULL, OPT_POSITION_LIMIT },
    { "thinking", required_argument, NULL, OPT_THINKING },
    { "check-config", no_argument, NULL, OPT_CHECK },
    { "help", no_argument, NULL, OPT_HELP },
    { "version", no_argument, NULL, OPT_VERSION },
    { NULL, 0, NULL, 0 },
};

void vd_config_usage(FILE *f) {
    fprintf(f,
"Usage: vigild [--config FILE] [OPTIONS]\n"
"Watches video streams and answers questions about them with a Qwen3-VL model on the CPU.\n"
"Requests: JSON over a ZeroMQ ROUTER socket; events: a PUB socket (see docs/protocol.md).\n"
"Settings come from the defaults, then the JSON file given with --config, then these flags\n"
"(flags win). systemd/vigild.json.example documents every key of the file; keys starting\n"
"with \"_\" are comments.\n"
"\n"
"Model\n"
"  --model DIR                 Qwen3-VL checkpoint folder (config.json, *.safetensors, tokenizer.json)\n"
"  --compute bf16|f32          matmul precision (default bf16; f32 doubles weight memory)\n"
"  --threads N                 math threads (default 0 = one per online CPU)\n"
"Sockets\n"
"  --endpoint EP               ROUTER endpoint for requests (default ipc://$RUNTIME_DIRECTORY/vigild.sock,\n"
"                              or " PROTO_DEFAULT_ENDPOINT " without RUNTIME_DIRECTORY)\n"
"  --events-endpoint EP        PUB endpoint for events (default .../events.sock likewise)\n"
"  --curve-secret-key-file F   server CURVE secret key (Z85, one line); required for a non-loopback tcp bind\n"
"  --curve-client-key KEY      allow this client public key (Z85; repeatable)\n"
"  --curve-client-keys-file F  allow the client public keys listed in F (one per line)\n"
"Streams\n"
"  --fps X                     default sampling rate, frames/s (default 2)\n"
"  --min-tokens-per-pair N     default minimum visual tokens per frame pair (default 64)\n"
"  --max-tokens-per-pair N     default maximum visual tokens per frame pair (default 256)\n"
"  --cache-tokens N            default context cap per stream, tokens (default 32768)\n"
"  --system-prompt TEXT        system prompt of streams that give none (default none)\n"
"  --thinking auto|on|off      open answers with <think> (Thinking checkpoints); auto (default): when\n"
"                              the checkpoint's chat template does\n"
"  --allowed-protocols LIST    FFmpeg protocols sources may use (default " INGEST_DEFAULT_PROTOCOLS ");\n"
"                              add \"file\" to allow local files and image paths\n"
"  --device-prefix P           allowed V4L2 device path prefix (default /dev/video)\n"
"  --image-max-pixels N        one-off image queries: resize budget in pixels (default 1048576)\n"
"Memory and limits\n"
"  --max-cache-tokens N        largest context cap a client may ask for (default 262144)\n"
"  --max-total-cache-bytes N   all streams' KV caches together, bytes, K/M/G suffixes (default unlimited)\n"
"  --query-reserve-tokens N    cache slots per stream for a question and its answer\n"
"                              (default max_tokens + 1024)\n"
"  --ingest-headroom-pairs N   extra pair-sized slot blocks so frames keep arriving during a query (2)\n"
"  --ingest-queue-pairs N      frame pairs waiting per stream before the oldest is dropped (4)\n"
"  --max-streams N             (16)    --max-watches N (64)    --max-queue-depth N (32)\n"
"  --max-tokens N              largest max_tokens of a request (4096)\n"
"  --max-message-bytes N       largest request frame (16 MiB)\n"
"  --max-prompt-bytes N        largest prompt (32 KiB)\n"
"Operation\n"
"  --log-level L               err, warning, notice, info (default), debug\n"
"  --log-format F              auto (journal prefixes under systemd), plain, journal\n"
"  --shutdown-grace S          seconds running answers may take to finish on SIGTERM (default 5)\n"
"  --status-interval S         seconds between STATUS= updates and rate samples (default 5)\n"
"  --watchdog-stall S          stop pinging the systemd watchdog when the compute worker has made no\n"
"                              progress for S seconds (default 60)\n"
"  --position-limit N          re-rotate positions before N (default: the model's limit; for tests)\n"
"  --check-config              validate the configuration and exit\n"
"  --help, --version\n"
"\n"
"Signals: SIGTERM/SIGINT stop gracefully (answers in flight finish or end with shutting_down);\n"
"SIGHUP re-reads the \"streams\" list of the configuration file (adds new, removes gone, keeps\n"
"unchanged streams). Test-only: with VIGILD_TEST_HOOKS=1 in the environment, SIGUSR1 stalls the\n"
"compute worker (to exercise the systemd watchdog); never set it in production.\n");
}

static int parse_u64(const char *s, uint64_t *out, bool suffixes) {
    if (!s || !*s || *s == '-') return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s) return -1;
    uint64_t mul = 1;
    if (suffixes && *end) {
        switch (toupper((unsigned char)*end)) {
        case 'K': mul = 1ull << 10; break;
        case 'M': mul = 1ull << 20; break;
        case 'G': mul = 1ull << 30; break;
        case 'T': mul = 1ull << 40; break;
        default: return -1;
        }
        end++;
        if (*end == 'i' || *end == 'I') end++;
        if (*end == 'B' || *end == 'b') end++;
    }
    if (*end) return -1;
    if (v > UINT64_MAX / mul) return -1;
    *out = (uint64_t)v * mul;
    return 0;
}

static int parse_int_opt(const char *opt, const char *s, long lo, long hi, long *out, char *err, size_t errlen) {
    uint64_t v;
    if (parse_u64(s, &v, false) != 0 || (long double)v < lo || (long double)v > hi)
        return cfg_err(err, errlen, "--%s: expected an integer in [%ld, %ld], got \"%s\"", opt, lo, hi, s);
    *out = (long)v;
    return 0;
}

static int parse_double_opt(const char *opt, const char *s, double lo, double hi, double *out, char *err,
                            size_t errlen) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi)
        return cfg_err(err, errlen, "--%s: expected a number in [%g, %g], got \"%s\"", opt, lo, hi, s);
    *out = v;
    return 0;
}

int vd_config_from_args(vd_config *c, int argc, char **argv, char *err, size_t errlen) {
    /* Pass 1: --help/--version and the file, so that the flags of pass 2 override the file. */
    const char *config = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            vd_config_usage(stdout);
            return 1;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("vigild %s (protocol v%d)\n", VD_VERSION, PROTO_VERSION);
            return 1;
        }
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) config = argv[i + 1];
        else if (strncmp(argv[i], "--config=", 9) == 0) config = argv[i] + 9;
    }
    if (config && vd_config_load_file(c, config, err, errlen) != 0) return -1;

    bool check_only = false;
    optind = 1;
    opterr = 0;
    int o;
    while ((o = getopt_long(argc, argv, ":", long_opts, NULL)) != -1) {
        long l = 0;
        double d = 0;
        uint64_t u = 0;
        const char *a = optarg;
        const char *name = o >= OPT_CONFIG && o <= OPT_VERSION ? long_opts[o - OPT_CONFIG].name : "?";
        switch (o) {
        case OPT_CONFIG: break;
        case OPT_MODEL: if (set_str(&c->model_dir, a)) return cfg_err(err, errlen, "out of memory"); break;
        case OPT_COMPUTE:
            if (strcmp(a, "bf16") == 0) c->compute = MODEL_COMPUTE_BF16;
            else if (strcmp(a, "f32") == 0) c->compute = MODEL_COMPUTE_F32;
            else return cfg_err(err, errlen, "--compute: expected bf16 or f32, got \"%s\"", a);
            break;
        case OPT_THREADS: if (parse_int_opt(name, a, 0, 1024, &l, err, errlen)) return -1; c->threads = (int)l; break;
        case OPT_ENDPOINT: if (set_str(&c->endpoint, a)) return cfg_err(err, errlen, "out of memory"); break;
        case OPT_EVENTS: if (set_str(&c->events_endpoint, a)) return cfg_err(err, errlen, "out of memory"); break;
        case OPT_FPS: if (parse_double_opt(name, a, 0.01, 1000, &d, err, errlen)) return -1; c->limits.default_fps = d; break;
        case OPT_MIN_TPP:
            if (parse_int_opt(name, a, 4, 1 << 20, &l, err, errlen)) return -1;
            c->limits.default_min_tokens_per_pair = (int)l;
            break;
        case OPT_MAX_TPP:
            if (parse_int_opt(name, a, 4, 1 << 20, &l, err, errlen)) return -1;
            c->limits.default_max_tokens_per_pair = (int)l;
            break;
        case OPT_CACHE_TOKENS:
            if (parse_int_opt(name, a, 1024, 1L << 30, &l, err, errlen)) return -1;
            c->limits.default_cache_tokens = (uint64_t)l;
            break;
        case OPT_MAX_CACHE_TOKENS:
            if (parse_int_opt(name, a, 1024, 1L << 30, &l, err, errlen)) return -1;
            c->limits.max_cache_tokens = (uint64_t)l;
            break;
        case OPT_MAX_TOTAL_CACHE:
            if (parse_u64(a, &u, true)) return cfg_err(err, errlen, "--%s: expected bytes (e.g. 8G), got \"%s\"", name, a);
            c->max_total_cache_bytes = u;
            break;
        case OPT_QUERY_RESERVE:
            if (parse_int_opt(name, a, 64, 1L << 24, &l, err, errlen)) return -1;
            c->query_reserve_tokens = (int)l;
            break;
        case OPT_HEADROOM: if (parse_int_opt(name, a, 0, 64, &l, err, errlen)) return -1; c->ingest_headroom_pairs = (int)l; break;
        case OPT_QUEUE_PAIRS: if (parse_int_opt(name, a, 1, 1024, &l, err, errlen)) return -1; c->ingest_queue_pairs = (int)l; break;
        case OPT_MAX_STREAMS: if (parse_int_opt(name, a, 0, 4096, &l, err, errlen)) return -1; c->limits.max_streams = (int)l; break;
        case OPT_MAX_WATCHES: if (parse_int_opt(name, a, 0, 65536, &l, err, errlen)) return -1; c->limits.max_watches = (int)l; break;
        case OPT_MAX_QUEUE: if (parse_int_opt(name, a, 1, 1L << 20, &l, err, errlen)) return -1; c->limits.max_queue_depth = (int)l; break;
        case OPT_MAX_TOKENS: if (parse_int_opt(name, a, 1, 1L << 20, &l, err, errlen)) return -1; c->limits.max_tokens = (int)l; break;
        case OPT_MAX_MESSAGE:
            if (parse_u64(a, &u, true) || u < 1024 || u > (1u << 30))
                return cfg_err(err, errlen, "--%s: expected bytes in [1K, 1G], got \"%s\"", name, a);
            c->limits.max_message_bytes = (size_t)u;
            break;
        case OPT_MAX_PROMPT:
            if (parse_u64(a, &u, true) || u < 16 || u > (1u << 26))
                return cfg_err(err, errlen, "--%s: expected bytes in [16, 64M], got \"%s\"", name, a);
            c->limits.max_prompt_bytes = (size_t)u;
            break;
        case OPT_PROTOCOLS: if (set_str(&c->allowed_protocols, a)) return cfg_err(err, errlen, "out of memory"); break;
        case OPT_DEVICE_PREFIX: if (set_str(&c->device_prefix, a)) return cfg_err(err, errlen, "out of memory"); break;
        case OPT_IMAGE_MAX_PIXELS:
            if (parse_int_opt(name, a, 1024, 1000000000L, &l, err, errlen)) return -1;
            c->image_max_pixels = l;
            break;
        case OPT_CURVE_SECRET_FILE: if (load_secret_file(c, a, err, errlen)) return -1; break;
        case OPT_CURVE_CLIENT_KEY: if (add_client_key(c, a, "--curve-client-key", err, errlen)) return -1; break;
        case OPT_CURVE_CLIENT_FILE:
            if (read_key_lines(a, &c->curve_client_keys, &c->n_curve_client_keys, err, errlen)) return -1;
            break;
        case OPT_SYSTEM_PROMPT: if (set_str(&c->system_prompt, *a ? a : NULL)) return cfg_err(err, errlen, "out of memory"); break;
        case OPT_LOG_LEVEL:
            if (vd_log_level_parse(a, &c->log_level))
                return cfg_err(err, errlen, "--log-level: expected err, warning, notice, info or debug, got \"%s\"", a);
            break;
        case OPT_LOG_FORMAT:
            if (strcmp(a, "auto") == 0) c->log_format = VD_LOG_FORMAT_AUTO;
            else if (strcmp(a, "plain") == 0) c->log_format = VD_LOG_FORMAT_PLAIN;
            else if (strcmp(a, "journal") == 0) c->log_format = VD_LOG_FORMAT_JOURNAL;
            else return cfg_err(err, errlen, "--log-format: expected auto, plain or journal, got \"%s\"", a);
            break;
        case OPT_GRACE: if (parse_double_opt(name, a, 0, 3600, &d, err, errlen)) return -1; c->shutdown_grace_ms = (int)(d * 1000); break;
        case OPT_STATUS_INTERVAL:
            if (parse_double_opt(name, a, 0.1, 3600, &d, err, errlen)) return -1;
            c->status_interval_ms = (int)(d * 1000);
            break;
        case OPT_WATCHDOG_STALL:
            if (parse_double_opt(name, a, 1, 86400, &d, err, errlen)) return -1;
            c->watchdog_stall_ms = (int)(d * 1000);
            break;
        case OPT_POSITION_LIMIT:
            if (parse_int_opt(name, a, 0, INT_MAX, &l, err, errlen)) return -1;
            c->position_limit = (int)l;
            break;
        case OPT_THINKING:
            if (strcmp(a, "auto") == 0) c->thinking = -1;
            else if (strcmp(a, "on") == 0 || strcmp(a, "true") == 0) c->thinking = 1;
            else if (strcmp(a, "off") == 0 || strcmp(a, "false") == 0) c->thinking = 0;
            else return cfg_err(err, errlen, "--thinking: expected auto, on or off, got \"%s\"", a);
            break;
        case OPT_CHECK: check_only = true; break;
        case ':': return cfg_err(err, errlen, "%s: missing value (see vigild --help)", argv[optind - 1]);
        default:
            return cfg_err(err, errlen, "unknown option \"%s\" (see vigild --help)", argv[optind - 1]);
        }
    }
    if (optind < argc) return cfg_err(err, errlen, "unexpected argument \"%s\" (see vigild --help)", argv[optind]);

    if (c->config_path) {
        vd_stream_specs_free(c->streams, c->n_streams);
        c->streams = NULL;
        c->n_streams = 0;
        if (vd_config_load_streams(c, c->config_path, &c->streams, &c->n_streams, err, errlen) != 0) return -1;
    }
    if (vd_config_validate(c, err, errlen) != 0) return -1;
    if (check_only) {
        printf("vigild: configuration OK (%d stream%s)\n", c->n_streams, c->n_streams == 1 ? "" : "s");
        return 1;
    }
    return 0;
}

/* Whether a comma list names a protocol. */
bool vd_list_has(const char *list, const char *name);
bool vd_list_has(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        while (l && *p == ' ') p++, l--;
        while (l && p[l - 1] == ' ') l--;
        if (l == n && strncmp(p, name, n) == 0) return true;
        p = e ? e + 1 : NULL;
    }
    return false;
}

int vd_config_validate(const vd_config *c, char *err, size_t errlen) {
    if (!c->model_dir || !*c->model_dir)
        return cfg_err(err, errlen, "no model: give the checkpoint folder with --model DIR or \"model\" in the "
                       "configuration file");
    char lerr[256] = "";
    if (proto_limits_check(&c->limits, lerr, sizeof lerr) != 0) return cfg_err(err, errlen, "%s", lerr);
    if (c->limits.default_min_tokens_per_pair > c->limits.default_max_tokens_per_pair)
        return cfg_err(err, errlen, "stream_defaults: min_tokens_per_pair %d is above max_tokens_per_pair %d",
                       c->limits.default_min_tokens_per_pair, c->limits.default_max_tokens_per_pair);
    if (!c->endpoint || !c->events_endpoint) return cfg_err(err, errlen, "endpoints are required");
    if (strcmp(c->endpoint, c->events_endpoint) == 0)
        return cfg_err(err, errlen, "endpoint and events_endpoint are both \"%s\"; they must differ", c->endpoint);
    const char *eps[2] = { c->endpoint, c->events_endpoint };
    const char *names[2] = { "endpoint", "events_endpoint" };
    for (int i = 0; i < 2; i++) {
        if (!strstr(eps[i], "://"))
            return cfg_err(err, errlen, "%s \"%s\": expected a ZeroMQ endpoint such as ipc:///run/vigil/vigild.sock or "
                           "tcp://127.0.0.1:5555", names[i], eps[i]);
        if (!proto_endpoint_is_local(eps[i]) && (!c->curve_secret_key || c->n_curve_client_keys == 0))
            return cfg_err(err, errlen, "%s \"%s\" is reachable from other hosts: CURVE is required (a server secret "
                           "key with curve.secret_key[_file] / --curve-secret-key-file, and the allowed client keys "
                           "with curve.client_keys / --curve-client-key)", names[i], eps[i]);
    }
    if (c->curve_secret_key && c->n_curve_client_keys == 0)
        return cfg_err(err, errlen, "curve: a server secret key is set but no client key is allowed "
                       "(curve.client_keys)");
    if (c->query_reserve_tokens && c->query_reserve_tokens < 64)
        return cfg_err(err, errlen, "memory.query_reserve_tokens %d: at least 64", c->query_reserve_tokens);
    if (!c->allowed_protocols || !*c->allowed_protocols)
        return cfg_err(err, errlen, "sources.allowed_protocols is empty: no source could be opened");
    return 0;
}
