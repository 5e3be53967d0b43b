/* server.c — vigild's event loop: ZeroMQ ROUTER (requests) and PUB (events) sockets watched with
 * uv_poll on ZMQ_FD, timers, signals, sd_notify; requests are validated here and handed to the
 * compute worker, whose results come back through uv_async.
 *
 * ZMQ_FD is edge-triggered: it signals that ZMQ_EVENTS changed, not that a message is waiting. So
 * the loop drains while ZMQ_EVENTS reports ZMQ_POLLIN, and re-checks after sending (a send can
 * consume the notification of a message that arrived meanwhile). */
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>
#include <zmq.h>

#include "daemon/vd_internal.h"

#define ADD_REPLY_WAIT_S 5.0      /* stream.add answers at the latest after this (state "starting") */

/* ---- utilities ------------------------------------------------------------------------------ */

char *vd_url_strip_credentials(const char *url) {
    char *out = strdup(url ? url : "");
    if (!out) return NULL;
    char *sch = strstr(out, "://");
    if (!sch) return out;
    char *auth = sch + 3;
    size_t alen = strcspn(auth, "/?#");
    char *at = NULL;
    for (size_t i = 0; i < alen; i++)
        if (auth[i] == '@') at = auth + i;
    if (at) memmove(auth, at + 1, strlen(at + 1) + 1);
    return out;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

void vd_percentiles(const double *ring, int n, double *p50, double *p95, double *p99) {
    *p50 = *p95 = *p99 = -1;
    if (n <= 0) return;
    double v[VD_LAT_RING];
    memcpy(v, ring, (size_t)n * sizeof *v);
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    /* nearest rank */
    *p50 = v[(int)ceil(0.50 * n) - 1];
    *p95 = v[(int)ceil(0.95 * n) - 1];
    *p99 = v[(int)ceil(0.99 * n) - 1];
}

void vd_post_result(vd_daemon *d, vd_result *r) {
    r->next = NULL;
    pthread_mutex_lock(&d->res_mu);
    if (d->res_tail) d->res_tail->next = r;
    else d->res_head = r;
    d->res_tail = r;
    pthread_mutex_unlock(&d->res_mu);
    uv_async_send(&d->async);
}

/* ---- sending ------------------------------------------------------------------------------------ */

static void router_service(vd_daemon *d);

static bool same_peer(const proto_envelope *a, const proto_envelope *b) {
    return a->identity_len == b->identity_len && memcmp(a->identity, b->identity, a->identity_len) == 0;
}

/* A client that is gone (or does not read) costs nothing more: cancel what it asked for. */
static void client_gone(vd_daemon *d, const proto_envelope *env, const char *why) {
    int n = 0;
    for (vd_job *j = d->jobs; j; j = j->reg_next)
        if (same_peer(&j->env, env) && !atomic_load(&j->client_gone)) {
            atomic_store(&j->client_gone, 1);
            atomic_store(&j->cancel, 1);
            n++;
        }
    if (n) vd_log(VD_LOG_INFO, "client %s: %d request%s cancelled", why, n, n == 1 ? "" : "s");
}

static void send_json(vd_daemon *d, const proto_envelope *env, const char *json) {
    if (!json) return;
    if (proto_router_send(d->router, env, json, strlen(json), ZMQ_DONTWAIT) != 0) {
        int e = errno;
        if (e == EHOSTUNREACH) client_gone(d, env, "disconnected");
        else if (e == EAGAIN) client_gone(d, env, "not reading its replies (send queue full)");
        else vd_log(VD_LOG_WARNING, "reply not sent: %s", zmq_strerror(e));
    }
}

static void reply(vd_daemon *d, const proto_envelope *env, char *json) {
    send_json(d, env, json);
    free(json);
}

static void reply_error(vd_daemon *d, const proto_envelope *env, const char *id, proto_errc code,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void reply_error(vd_daemon *d, const proto_envelope *env, const char *id, proto_errc code,
                        const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    reply(d, env, proto_reply_error(id, code, "%s", msg));
}

static void publish(vd_daemon *d, const char *kind, const char *id, char *json) {
    if (!json) return;
    char topic[PROTO_NAME_MAX + 16];
    if (proto_topic(topic, sizeof topic, kind, id) > 0) {
        zmq_send(d->pub, topic, strlen(topic), ZMQ_SNDMORE | ZMQ_DONTWAIT);
        zmq_send(d->pub, json, strlen(json), ZMQ_DONTWAIT);
    }
    free(json);
}

static void publish_daemon_state(vd_daemon *d, const char *state) {
    cJSON *b = cJSON_CreateObject();
    if (b) cJSON_AddStringToObject(b, "state", state);
    publish(d, "daemon", NULL, proto_event_pub("daemon.state", b));
}

/* ---- registry ------------------------------------------------------------------------------------ */

static vd_stream *find_stream(vd_daemon *d, const char *id) {
    for (vd_stream *s = d->streams; s; s = s->reg_next)
        if (strcmp(s->id, id) == 0) return s;
    return NULL;
}

static bool stream_registered(vd_daemon *d, const vd_stream *st) {
    for (vd_stream *s = d->streams; s; s = s->reg_next)
        if (s == st) return true;
    return false;
}

static void unregister_stream(vd_daemon *d, vd_stream *st) {
    vd_stream **pp = &d->streams;
    while (*pp && *pp != st) pp = &(*pp)->reg_next;
    if (!*pp) return;
    *pp = st->reg_next;
    st->reg_next = NULL;
    d->n_streams--;
    vd_stream_unref(st);
}

static void finish_job(vd_daemon *d, vd_job *job) {
    vd_job **pp = &d->jobs;
    while (*pp && *pp != job) pp = &(*pp)->reg_next;
    if (*pp) {
        *pp = job->reg_next;
        d->n_jobs--;
    }
    vd_job_free(job);
}

static vd_watch *find_watch(vd_daemon *d, const char *name) {
    for (vd_watch *w = d->watches; w; w = w->next)
        if (strcmp(w->name, name) == 0) return w;
    return NULL;
}

static void timer_free_cb(uv_handle_t *h) {
    free(h);
}

static void watch_free(vd_daemon *d, vd_watch *w) {
    if (w->timer) {
        uv_timer_stop(w->timer);
        uv_close((uv_handle_t *)w->timer, timer_free_cb);
    }
    if (w->stream) w->stream->n_watches--;
    vd_stream_unref(w->stream);
    proto_request_free(&w->req);
    free(w->prompt);
    free(w);
    d->n_watches--;
}

static void remove_watch(vd_daemon *d, vd_watch *w) {
    vd_watch **pp = &d->watches;
    while (*pp && *pp != w) pp = &(*pp)->next;
    if (*pp) *pp = w->next;
    watch_free(d, w);
}

/* ---- status --------------------------------------------------------------------------------------- */

static cJSON *stream_status(vd_daemon *d, vd_stream *st) {
    (void)d;
    proto_stream_status s = { .stream = st->id, .url = st->url_display };
    double tp50, tp95, tp99;
    uint64_t served, shifts;
    size_t kv_bytes;
    char detail[256];
    pthread_mutex_lock(&st->mu);
    s.state = st->state;
    snprintf(detail, sizeof detail, "%s", st->detail);
    s.fps_target = st->fps_target;
    s.fps_in = st->fps_in;
    s.pairs_per_s = st->pairs_per_s;
    s.frames_in = st->frames_in;
    s.pairs_encoded = st->pairs_encoded;
    s.pairs_dropped = st->pairs_dropped;
    s.pairs_evicted = st->pairs_evicted;
    s.cache_tokens_used = st->cache_used;
    s.cache_tokens_cap = st->cache_cap ? st->cache_cap : (uint64_t)st->cache_tokens;
    s.media_time = st->media_time;
    s.oldest_media_time = st->oldest_media;
    s.tokens_per_pair = st->tokens_per_pair;
    vd_percentiles(st->lat_total, st->lat_n, &s.latency_ms_p50, &s.latency_ms_p95, &s.latency_ms_p99);
    vd_percentiles(st->lat_ttft, st->lat_n, &tp50, &tp95, &tp99);
    served = st->queries_served;
    shifts = st->shifts;
    kv_bytes = st->kv_bytes;
    pthread_mutex_unlock(&st->mu);
    s.detail = detail[0] ? detail : NULL;
    s.watches = st->n_watches;
    cJSON *o = proto_stream_status_json(&s);
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "queries_served", (double)served);
    cJSON *t = cJSON_AddObjectToObject(o, "ttft_ms");
    if (t) {
        const double v[3] = { tp50, tp95, tp99 };
        const char *k[3] = { "p50", "p95", "p99" };
        for (int i = 0; i < 3; i++) {
            if (v[i] >= 0) cJSON_AddNumberToObject(t, k[i], v[i]);
            else cJSON_AddNullToObject(t, k[i]);
        }
    }
    cJSON_AddNumberToObject(o, "cache_bytes", (double)kv_bytes);
    cJSON_AddNumberToObject(o, "position_shifts", (double)shifts);
    return o;
}

static cJSON *streams_array(vd_daemon *d) {
    cJSON *a = cJSON_CreateArray();
    for (vd_stream *st = d->streams; a && st; st = st->reg_next) {
        cJSON *o = stream_status(d, st);
        if (o) cJSON_AddItemToArray(a, o);
    }
    return a;
}

static cJSON *daemon_status(vd_daemon *d) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    const model_config *mc = d->mcfg;
    cJSON_AddStringToObject(o, "version", VD_VERSION);
    cJSON_AddNumberToObject(o, "uptime_s", round((vd_now_s() - d->t_start) * 10) / 10);
    cJSON_AddStringToObject(o, "model", d->model_name);
    cJSON *mi = cJSON_AddObjectToObject(o, "model_info");
    if (mi) {
        cJSON_AddStringToObject(mi, "dir", d->cfg->model_dir);
        cJSON_AddStringToObject(mi, "type", mc->model_type);
        cJSON_AddStringToObject(mi, "compute", d->cfg->compute == MODEL_COMPUTE_F32 ? "f32" : "bf16");
        cJSON_AddNumberToObject(mi, "threads", d->cfg->threads);
        cJSON_AddNumberToObject(mi, "weight_bytes", (double)model_weight_bytes(d->m));
        cJSON_AddNumberToObject(mi, "kv_bytes_per_token", (double)d->kv_bytes_per_slot);
        cJSON_AddNumberToObject(mi, "layers", mc->text.num_hidden_layers);
        cJSON_AddNumberToObject(mi, "hidden_size", mc->text.hidden_size);
        cJSON_AddNumberToObject(mi, "max_position_embeddings", mc->text.max_position_embeddings);
        cJSON_AddBoolToObject(mi, "thinking", d->thinking);
    }
    cJSON *b = cJSON_AddObjectToObject(o, "build");
    if (b) {
        cJSON_AddStringToObject(b, "version", VD_VERSION);
        cJSON_AddNumberToObject(b, "protocol", PROTO_VERSION);
        cJSON_AddStringToObject(b, "compiler", __VERSION__);
        cJSON_AddStringToObject(b, "built", __DATE__ " " __TIME__);
    }
    cJSON_AddNumberToObject(o, "queue_depth", d->n_jobs);
    cJSON_AddNumberToObject(o, "watches", d->n_watches);
    cJSON_AddNumberToObject(o, "requests", (double)d->requests);
    int64_t age = vd_now_ms() - atomic_load(&d->heartbeat_ms);
    cJSON *w = cJSON_AddObjectToObject(o, "worker");
    if (w) {
        cJSON_AddNumberToObject(w, "heartbeat_age_ms", (double)age);
        cJSON_AddBoolToObject(w, "alive", age < d->cfg->watchdog_stall_ms);
    }
    cJSON_AddBoolToObject(o, "shutting_down", d->shutting_down);
    cJSON *a = streams_array(d);
    if (a) cJSON_AddItemToObject(o, "streams", a);
    return o;
}

/* ---- streams ---------------------------------------------------------------------------------------- */

/* Validates and registers a stream.add; the worker builds the context and starts the source.
 * req is consumed. env NULL: a configured stream (no reply). */
static int stream_add(vd_daemon *d, proto_request *req, const proto_envelope *env, const char *reply_id,
                      const char *canonical, proto_errc *code, char *msg, size_t msglen) {
    proto_stream_add *a = &req->stream_add;
    const vd_config *cfg = d->cfg;
    if (d->shutting_down) {
        *code = PROTO_E_SHUTTING_DOWN;
        snprintf(msg, msglen, "vigild is stopping");
        return -1;
    }
    if (find_stream(d, a->stream)) {
        *code = PROTO_E_ALREADY_EXISTS;
        snprintf(msg, msglen, "stream \"%s\" already exists (stream.remove it first)", a->stream);
        return -1;
    }
    if (d->n_streams >= cfg->limits.max_streams) {
        *code = PROTO_E_LIMIT_EXCEEDED;
        snprintf(msg, msglen, "this daemon runs at most %d streams (max_streams)", cfg->limits.max_streams);
        return -1;
    }
    ingest_options io;
    ingest_options_init(&io);
    snprintf(io.protocols, sizeof io.protocols, "%s", cfg->allowed_protocols);
    snprintf(io.device_prefix, sizeof io.device_prefix, "%s", cfg->device_prefix);
    char err[384] = "";
    int rc = ingest_check_url(a->url, &io, err, sizeof err);
    if (rc != 0) {
        *code = rc == INGEST_EPERM ? PROTO_E_FORBIDDEN : PROTO_E_BAD_URL;
        snprintf(msg, msglen, "url: %s", err);
        return -1;
    }
    uint64_t cache_tokens = a->cache_kind == PROTO_CACHE_BYTES ? a->cache_bytes / d->kv_bytes_per_slot : a->cache_tokens;
    uint64_t need = (uint64_t)a->max_tokens_per_pair + 64;
    if (cache_tokens < need || cache_tokens > (1u << 30)) {
        *code = PROTO_E_LIMIT_EXCEEDED;
        snprintf(msg, msglen, "the context cap (%llu tokens) cannot hold one frame pair of up to %d tokens plus "
                 "the prefix; raise cache_tokens or lower tokens_per_pair.max",
                 (unsigned long long)cache_tokens, a->max_tokens_per_pair);
        return -1;
    }
    vd_sctx_options so = { .cache_tokens = (int)cache_tokens, .query_reserve = cfg->query_reserve_tokens,
                           .ingest_headroom = cfg->ingest_headroom_pairs * (a->max_tokens_per_pair + 32) };
    if (cfg->max_total_cache_bytes) {
        uint64_t total = vd_sctx_bytes_for(d->m, &so);
        for (vd_stream *s = d->streams; s; s = s->reg_next) {
            vd_sctx_options o2 = so;
            o2.cache_tokens = s->cache_tokens;
            o2.ingest_headroom = cfg->ingest_headroom_pairs * (s->req.stream_add.max_tokens_per_pair + 32);
            total += vd_sctx_bytes_for(d->m, &o2);
        }
        if (total > cfg->max_total_cache_bytes) {
            *code = PROTO_E_LIMIT_EXCEEDED;
            snprintf(msg, msglen, "the streams' KV caches would need %.1f MiB, over the daemon's memory cap of "
                     "%.1f MiB (max_total_cache_bytes)", total / 1048576.0, cfg->max_total_cache_bytes / 1048576.0);
            return -1;
        }
    }
    vd_stream *st = calloc(1, sizeof *st);
    if (!st) {
        *code = PROTO_E_INTERNAL;
        snprintf(msg, msglen, "out of memory");
        return -1;
    }
    atomic_init(&st->refs, 1);
    st->d = d;
    pthread_mutex_init(&st->mu, NULL);
    snprintf(st->id, sizeof st->id, "%s", a->stream);
    st->url = strdup(a->url);
    st->url_display = vd_url_strip_credentials(a->url);
    st->canonical = canonical ? strdup(canonical) : NULL;
    st->from_config = canonical != NULL;
    st->cache_tokens = (int)cache_tokens;
    st->fps_target = a->fps;
    st->state = PROTO_STREAM_STARTING;
    st->fps_in = st->pairs_per_s = -1;
    st->media_time = st->oldest_media = -1;
    st->cache_cap = cache_tokens;
    st->req = *req;
    memset(req, 0, sizeof *req);
    a = &st->req.stream_add;
    if (!st->url || !st->url_display || (canonical && !st->canonical)) {
        vd_stream_unref(st);
        *code = PROTO_E_INTERNAL;
        snprintf(msg, msglen, "out of memory");
        return -1;
    }
    if (env) {
        st->add_pending = true;
        st->has_add_env = true;
        st->add_env = *env;
        snprintf(st->add_id, sizeof st->add_id, "%s", reply_id);
    }
    st->reg_next = d->streams;
    d->streams = st;
    d->n_streams++;
    vd_ctl *c = calloc(1, sizeof *c);
    if (!c) {
        unregister_stream(d, st);
        *code = PROTO_E_INTERNAL;
        snprintf(msg, msglen, "out of memory");
        return -1;
    }
    c->kind = VD_CTL_STREAM_ADD;
    c->stream = vd_stream_ref(st);
    vd_worker_post_ctl(d, c);
    vd_log(VD_LOG_NOTICE, "stream %s: added (%s, %.3g fps, %d-%d tokens per pair, cap %d tokens)%s", st->id,
           st->url_display, a->fps, a->min_tokens_per_pair, a->max_tokens_per_pair, st->cache_tokens,
           st->from_config ? " from the configuration" : "");
    publish(d, "stream", st->id, proto_event_stream_state(st->id, PROTO_STREAM_STARTING, NULL));
    return 0;
}

/* Removes a registered stream: its watches now, the rest on the worker. */
static void stream_remove(vd_daemon *d, vd_stream *st, const proto_envelope *env, const char *id) {
    if (st->add_pending && st->has_add_env) {
        reply_error(d, &st->add_env, st->add_id, PROTO_E_CANCELLED, "stream \"%s\" was removed before its source "
                    "opened", st->id);
        st->add_pending = false;
    }
    for (vd_watch *w = d->watches, *n; w; w = n) {
        n = w->next;
        if (w->stream == st) remove_watch(d, w);
    }
    vd_ctl *c = calloc(1, sizeof *c);
    if (c) {
        c->kind = VD_CTL_STREAM_REMOVE;
        c->stream = vd_stream_ref(st);
        if (env) {
            c->has_env = true;
            c->env = *env;
            snprintf(c->id, sizeof c->id, "%s", id);
        }
        vd_worker_post_ctl(d, c);
    }
    unregister_stream(d, st);
}

/* A configured stream's request, rebuilt from its canonical JSON (the spec stays untouched). */
static int add_config_stream(vd_daemon *d, const char *canonical) {
    cJSON *o = cJSON_Parse(canonical);
    char *text = NULL;
    if (o && cJSON_AddStringToObject(o, "id", "config") && cJSON_AddStringToObject(o, "op", "stream.add"))
        text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text) return -1;
    proto_request req;
    proto_error pe;
    int rc = proto_parse_request(text, strlen(text), &d->cfg->limits, &req, &pe);
    free(text);
    if (rc != 0) {
        vd_log(VD_LOG_ERR, "configured stream: %s", pe.message);
        return -1;
    }
    proto_errc code;
    char msg[512];
    char name[PROTO_NAME_MAX + 1];
    snprintf(name, sizeof name, "%s", req.stream_add.stream);
    rc = stream_add(d, &req, NULL, NULL, canonical, &code, msg, sizeof msg);
    if (rc != 0) vd_log(VD_LOG_ERR, "configured stream %s: %s (%s)", name, msg, proto_errc_name(code));
    proto_request_free(&req);
    return rc;
}

/* SIGHUP: the configuration file's stream list again. Streams added by clients are not touched. */
static void reload_streams(vd_daemon *d) {
    if (!d->cfg->config_path) {
        vd_log(VD_LOG_NOTICE, "SIGHUP: no configuration file (--config) to reload");
        return;
    }
    vd_stream_spec *specs = NULL;
    int n = 0;
    char err[512] = "";
    if (vd_config_load_streams(d->cfg, d->cfg->config_path, &specs, &n, err, sizeof err) != 0) {
        vd_log(VD_LOG_ERR, "SIGHUP: keeping the current streams: %s", err);
        return;
    }
    bool *used = calloc((size_t)(n > 0 ? n : 1), sizeof *used);
    if (!used) {
        vd_stream_specs_free(specs, n);
        return;
    }
    int added = 0, removed = 0, kept = 0, restarted = 0;
    for (vd_stream *st = d->streams, *next; st; st = next) {
        next = st->reg_next;
        if (!st->from_config) continue;
        int k = -1;
        for (int i = 0; i < n && k < 0; i++)
            if (strcmp(specs[i].req.stream_add.stream, st->id) == 0) k = i;
        if (k >= 0 && strcmp(specs[k].canonical, st->canonical) == 0) {
            used[k] = true;
            kept++;
            continue;
        }
        vd_log(VD_LOG_NOTICE, "SIGHUP: stream %s %s", st->id, k >= 0 ? "changed: restarting it" : "is gone: removing it");
        stream_remove(d, st, NULL, NULL);
        if (k >= 0) {
            /* re-added below with the new settings */
            if (add_config_stream(d, specs[k].canonical) == 0) restarted++;
            used[k] = true;
        } else {
            removed++;
        }
    }
    for (int i = 0; i < n; i++) {
        if (used[i]) continue;
        vd_stream *other = find_stream(d, specs[i].req.stream_add.stream);
        if (other) {
            vd_log(VD_LOG_WARNING, "SIGHUP: stream %s from the configuration is not started: a client added a "
                   "stream of that name", other->id);
            continue;
        }
        if (add_config_stream(d, specs[i].canonical) == 0) added++;
    }
    free(used);
    vd_stream_specs_free(specs, n);
    vd_log(VD_LOG_NOTICE, "SIGHUP: configuration streams reloaded: %d added, %d removed, %d restarted, %d unchanged",
           added, removed, restarted, kept);
}

/* ---- watches ------------------------------------------------------------------------------------------- */

static void watch_fire(vd_daemon *d, vd_watch *w) {
    if (w->pending || d->shutting_down) {
        if (w->pending) w->skipped++;
        return;
    }
    const proto_watch_add *wa = &w->req.watch_add;
    vd_job *j = calloc(1, sizeof *j);
    if (!j) return;
    j->kind = VD_JOB_WATCH;
    j->stream = vd_stream_ref(w->stream);
    j->prompt = strdup(w->prompt);
    if (wa->window_last_seconds > 0) {
        j->window.kind = PROTO_WINDOW_LAST;
        j->window.last_seconds = wa->window_last_seconds;
    }
    j->max_tokens = wa->max_tokens;
    j->sampling = vd_sampling_from_proto(&wa->sampling);
    if (wa->sampling.n_stop) {
        j->stop = calloc(wa->sampling.n_stop, sizeof *j->stop);
        for (size_t i = 0; j->stop && i < wa->sampling.n_stop; i++)
            if ((j->stop[j->n_stop] = strdup(wa->sampling.stop[i]))) j->n_stop++;
    }
    snprintf(j->watch, sizeof j->watch, "%s", w->name);
    j->watch_serial = w->serial;
    j->t_accepted = vd_now_s();
    if (!j->prompt) {
        vd_job_free(j);
        return;
    }
    w->pending = true;
    w->evaluations++;
    vd_worker_submit(d, j);
}

static void watch_timer_cb(uv_timer_t *t) {
    vd_watch *w = t->data;
    watch_fire(w->stream->d, w);
}

static void watch_done(vd_daemon *d, vd_job *j) {
    vd_watch *w = NULL;
    for (vd_watch *x = d->watches; x; x = x->next)
        if (x->serial == j->watch_serial) w = x;
    if (!w) return;   /* removed meanwhile */
    w->pending = false;
    if (j->skipped) {
        w->evaluations--;
        return;
    }
    if (j->error[0] && !j->answer) {
        vd_log(VD_LOG_WARNING, "watch %s: evaluation failed: %s", w->name, j->error);
        return;
    }
    const proto_expect *e = &w->req.watch_add.expect;
    int vi = e->kind != PROTO_EXPECT_NONE ? proto_expect_match(e, j->answer) : -1;
    proto_watch_answer a = {
        .watch = w->name, .stream = w->stream->id, .text = j->answer, .value_index = vi,
        .value = vi >= 0 ? e->values[vi] : NULL, .media_time = j->media_time, .usage = j->usage,
        .timing = { .queue_ms = (j->t_started - j->t_accepted) * 1000, .ttft_ms = (j->t_first - j->t_accepted) * 1000,
                    .total_ms = (j->t_done - j->t_accepted) * 1000 },
    };
    double dec = j->t_done - j->t_started;
    a.timing.tokens_per_s = dec > 0 ? j->usage.completion_tokens / dec : 0;
    publish(d, "watch", w->name, proto_event_watch_answer(&a));
    w->last_answer_wall = (double)time(NULL);
    if (vi >= 0) {
        bool alerting = (e->alert_mask >> vi) & 1u;
        bool edge = e->alert_repeat || w->last_value != vi;
        double now = vd_now_s();
        bool cool = w->last_alert < 0 || now - w->last_alert >= e->cooldown_seconds;
        if (alerting && edge && cool) {
            publish(d, "alert", w->name, proto_event_alert(&a));
            w->last_alert = now;
            w->alerts++;
            vd_log(VD_LOG_NOTICE, "watch %s on %s: alert \"%s\"", w->name, w->stream->id, e->values[vi]);
        }
        w->last_value = vi;
    }
}

static cJSON *watch_json(const vd_watch *w) {
    const proto_watch_add *wa = &w->req.watch_add;
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "watch", w->name);
    cJSON_AddStringToObject(o, "stream", w->stream->id);
    cJSON_AddStringToObject(o, "prompt", wa->prompt);
    if (wa->on_pair) cJSON_AddNullToObject(o, "every_seconds");
    else cJSON_AddNumberToObject(o, "every_seconds", wa->every_seconds);
    cJSON_AddBoolToObject(o, "on_pair", wa->on_pair);
    if (wa->window_last_seconds > 0) {
        cJSON *win = cJSON_AddObjectToObject(o, "window");
        if (win) cJSON_AddNumberToObject(win, "last_seconds", wa->window_last_seconds);
    } else {
        cJSON_AddNullToObject(o, "window");
    }
    cJSON_AddNumberToObject(o, "max_tokens", wa->max_tokens);
    const proto_expect *e = &wa->expect;
    if (e->kind == PROTO_EXPECT_NONE) {
        cJSON_AddNullToObject(o, "expect");
    } else {
        cJSON *x = cJSON_AddObjectToObject(o, "expect");
        if (x) {
            cJSON_AddStringToObject(x, "type", e->kind == PROTO_EXPECT_YES_NO ? "yes_no" : "enum");
            cJSON *vals = cJSON_AddArrayToObject(x, "values");
            cJSON *on = cJSON_AddArrayToObject(x, "alert_on");
            for (size_t i = 0; i < e->n_values; i++) {
                if (vals) cJSON_AddItemToArray(vals, cJSON_CreateString(e->values[i]));
                if (on && ((e->alert_mask >> i) & 1u)) cJSON_AddItemToArray(on, cJSON_CreateString(e->values[i]));
            }
            cJSON_AddBoolToObject(x, "alert_repeat", e->alert_repeat);
            cJSON_AddNumberToObject(x, "cooldown_seconds", e->cooldown_seconds);
        }
    }
    if (w->last_value >= 0) cJSON_AddStringToObject(o, "last_value", e->values[w->last_value]);
    else cJSON_AddNullToObject(o, "last_value");
    char ts[40];
    if (w->last_answer_wall >= 0 && proto_format_rfc3339(w->last_answer_wall, ts, sizeof ts) == 0)
        cJSON_AddStringToObject(o, "last_answer_time", ts);
    else
        cJSON_AddNullToObject(o, "last_answer_time");
    cJSON_AddNumberToObject(o, "evaluations", (double)w->evaluations);
    cJSON_AddNumberToObject(o, "alerts", (double)w->alerts);
    return o;
}

/* ---- requests ----------------------------------------------------------------------------------------- */

static bool job_in_flight(vd_daemon *d, const proto_envelope *env, const char *id) {
    for (vd_job *j = d->jobs; j; j = j->reg_next)
        if (same_peer(&j->env, env) && strcmp(j->id, id) == 0) return true;
    return false;
}

static vd_job *new_client_job(vd_daemon *d, vd_job_kind kind, const proto_envelope *env, const char *id) {
    vd_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->kind = kind;
    j->env = *env;
    snprintf(j->id, sizeof j->id, "%s", id);
    j->t_accepted = vd_now_s();
    j->reg_next = d->jobs;
    d->jobs = j;
    d->n_jobs++;
    return j;
}

static bool admit_job(vd_daemon *d, const proto_envelope *env, const char *id) {
    if (d->shutting_down) {
        reply_error(d, env, id, PROTO_E_SHUTTING_DOWN, "vigild is stopping");
        return false;
    }
    if (d->n_jobs >= d->cfg->limits.max_queue_depth) {
        reply_error(d, env, id, PROTO_E_QUEUE_FULL, "%d questions are already waiting or running (max_queue_depth); "
                    "retry later", d->n_jobs);
        return false;
    }
    if (job_in_flight(d, env, id)) {
        reply_error(d, env, id, PROTO_E_BAD_REQUEST, "a request with id \"%s\" from this client is still in flight; "
                    "use a new id", id);
        return false;
    }
    return true;
}

static void take_sampling(vd_job *j, proto_sampling *s) {
    j->sampling = vd_sampling_from_proto(s);
    j->stop = s->stop;
    j->n_stop = (int)s->n_stop;
    s->stop = NULL;
    s->n_stop = 0;
}

static void handle_query(vd_daemon *d, const proto_envelope *env, proto_request *req) {
    proto_query *q = &req->query;
    if (!admit_job(d, env, req->id)) return;
    vd_stream *st = find_stream(d, q->stream);
    if (!st) {
        reply_error(d, env, req->id, PROTO_E_NOT_FOUND, "no stream \"%s\" (stream.list shows the streams)", q->stream);
        return;
    }
    vd_job *j = new_client_job(d, VD_JOB_QUERY, env, req->id);
    if (!j) {
        reply_error(d, env, req->id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    j->stream = vd_stream_ref(st);
    j->prompt = q->prompt;
    q->prompt = NULL;
    j->window = q->window;
    j->max_tokens = q->max_tokens;
    take_sampling(j, &q->sampling);
    /* A REQ socket can take only one frame per request. */
    j->stream_tokens = q->stream_tokens && !env->delimiter;
    vd_worker_submit(d, j);
}

static void handle_image(vd_daemon *d, const proto_envelope *env, proto_request *req) {
    proto_image *im = &req->image;
    if (!admit_job(d, env, req->id)) return;
    vd_job *j = new_client_job(d, VD_JOB_IMAGE, env, req->id);
    if (!j) {
        reply_error(d, env, req->id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    j->image_path = im->path;
    im->path = NULL;
    j->image_data = im->data;
    j->image_len = im->data_len;
    im->data = NULL;
    j->prompt = im->prompt;
    im->prompt = NULL;
    j->max_tokens = im->max_tokens;
    take_sampling(j, &im->sampling);
    j->stream_tokens = im->stream_tokens && !env->delimiter;
    vd_worker_submit(d, j);
}

static void handle_cancel(vd_daemon *d, const proto_envelope *env, proto_request *req) {
    const char *qid = req->query_cancel.query;
    for (vd_job *j = d->jobs; j; j = j->reg_next)
        if (same_peer(&j->env, env) && strcmp(j->id, qid) == 0) {
            atomic_store(&j->cancel, 1);
            cJSON *b = cJSON_CreateObject();
            if (b) cJSON_AddStringToObject(b, "query", qid);
            reply(d, env, proto_reply_ok(req->id, b));
            return;
        }
    reply_error(d, env, req->id, PROTO_E_NOT_FOUND, "no request \"%s\" of this client is pending (already finished?)", qid);
}

static void handle_watch_add(vd_daemon *d, const proto_envelope *env, proto_request *req) {
    proto_watch_add *wa = &req->watch_add;
    if (d->shutting_down) {
        reply_error(d, env, req->id, PROTO_E_SHUTTING_DOWN, "vigild is stopping");
        return;
    }
    vd_stream *st = find_stream(d, wa->stream);
    if (!st) {
        reply_error(d, env, req->id, PROTO_E_NOT_FOUND, "no stream \"%s\"", wa->stream);
        return;
    }
    if (d->n_watches >= d->cfg->limits.max_watches) {
        reply_error(d, env, req->id, PROTO_E_LIMIT_EXCEEDED, "this daemon runs at most %d watches (max_watches)",
                    d->cfg->limits.max_watches);
        return;
    }
    char name[PROTO_NAME_MAX + 1];
    if (wa->watch[0]) {
        snprintf(name, sizeof name, "%s", wa->watch);
        if (find_watch(d, name)) {
            reply_error(d, env, req->id, PROTO_E_ALREADY_EXISTS, "watch \"%s\" already exists", name);
            return;
        }
    } else {
        do snprintf(name, sizeof name, "w%llu", (unsigned long long)++d->watch_seq);
        while (find_watch(d, name));
    }
    vd_watch *w = calloc(1, sizeof *w);
    size_t il = proto_expect_instruction(&wa->expect, NULL, 0);
    size_t pl = strlen(wa->prompt);
    char *prompt = malloc(pl + il + 1);
    if (!w || !prompt) {
        free(w);
        free(prompt);
        reply_error(d, env, req->id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    memcpy(prompt, wa->prompt, pl);
    proto_expect_instruction(&wa->expect, prompt + pl, il + 1);
    prompt[pl + il] = 0;
    snprintf(w->name, sizeof w->name, "%s", name);
    w->stream = vd_stream_ref(st);
    st->n_watches++;
    w->prompt = prompt;
    w->serial = ++d->watch_seq;
    w->last_value = -1;
    w->last_alert = -1;
    w->last_answer_wall = -1;
    w->req = *req;
    memset(req, 0, sizeof *req);
    if (!w->req.watch_add.on_pair) {
        w->timer = malloc(sizeof *w->timer);
        if (w->timer) {
            uv_timer_init(&d->loop, w->timer);
            w->timer->data = w;
            uint64_t ms = (uint64_t)(w->req.watch_add.every_seconds * 1000);
            uv_timer_start(w->timer, watch_timer_cb, ms, ms);
        }
    }
    w->next = d->watches;
    d->watches = w;
    d->n_watches++;
    vd_log(VD_LOG_INFO, "watch %s on stream %s added", w->name, st->id);
    cJSON *b = cJSON_CreateObject();
    if (b) cJSON_AddStringToObject(b, "watch", w->name);
    reply(d, env, proto_reply_ok(w->req.id, b));
}

static void handle_request(vd_daemon *d, const proto_envelope *env, const char *payload, size_t len) {
    proto_request req;
    proto_error pe;
    d->requests++;
    if (proto_parse_request(payload, len, &d->cfg->limits, &req, &pe) != 0) {
        d->bad_requests++;
        vd_log(VD_LOG_DEBUG, "bad request: %s: %s", proto_errc_name(pe.code), pe.message);
        reply(d, env, proto_reply_parse_error(&pe));
        return;
    }
    vd_log(VD_LOG_DEBUG, "request %s: %s", req.id, proto_op_name(req.op));
    switch (req.op) {
    case PROTO_OP_PING: {
        cJSON *b = cJSON_CreateObject();
        if (b) {
            cJSON_AddTrueToObject(b, "pong");
            cJSON_AddStringToObject(b, "version", VD_VERSION);
        }
        reply(d, env, proto_reply_ok(req.id, b));
        break;
    }
    case PROTO_OP_STATUS:
        if (req.status.stream[0]) {
            vd_stream *st = find_stream(d, req.status.stream);
            if (!st) {
                reply_error(d, env, req.id, PROTO_E_NOT_FOUND, "no stream \"%s\"", req.status.stream);
                break;
            }
            cJSON *b = cJSON_CreateObject();
            if (b) cJSON_AddItemToObject(b, "stream", stream_status(d, st));
            reply(d, env, proto_reply_ok(req.id, b));
        } else {
            reply(d, env, proto_reply_ok(req.id, daemon_status(d)));
        }
        break;
    case PROTO_OP_STREAM_ADD: {
        proto_errc code;
        char msg[512];
        char id[PROTO_ID_MAX + 1];
        snprintf(id, sizeof id, "%s", req.id);
        if (stream_add(d, &req, env, id, NULL, &code, msg, sizeof msg) != 0) reply_error(d, env, id, code, "%s", msg);
        break;
    }
    case PROTO_OP_STREAM_REMOVE: {
        vd_stream *st = find_stream(d, req.stream_remove.stream);
        if (!st) {
            reply_error(d, env, req.id, PROTO_E_NOT_FOUND, "no stream \"%s\"", req.stream_remove.stream);
            break;
        }
        vd_log(VD_LOG_NOTICE, "stream %s: removing", st->id);
        stream_remove(d, st, env, req.id);
        break;
    }
    case PROTO_OP_STREAM_LIST: {
        cJSON *b = cJSON_CreateObject();
        if (b) cJSON_AddItemToObject(b, "streams", streams_array(d));
        reply(d, env, proto_reply_ok(req.id, b));
        break;
    }
    case PROTO_OP_QUERY: handle_query(d, env, &req); break;
    case PROTO_OP_QUERY_CANCEL: handle_cancel(d, env, &req); break;
    case PROTO_OP_WATCH_ADD: handle_watch_add(d, env, &req); break;
    case PROTO_OP_WATCH_REMOVE: {
        vd_watch *w = find_watch(d, req.watch_remove.watch);
        if (!w) {
            reply_error(d, env, req.id, PROTO_E_NOT_FOUND, "no watch \"%s\"", req.watch_remove.watch);
            break;
        }
        vd_log(VD_LOG_INFO, "watch %s removed", w->name);
        remove_watch(d, w);
        reply(d, env, proto_reply_ok(req.id, NULL));
        break;
    }
    case PROTO_OP_WATCH_LIST: {
        cJSON *b = cJSON_CreateObject();
        cJSON *a = b ? cJSON_AddArrayToObject(b, "watches") : NULL;
        for (vd_watch *w = d->watches; a && w; w = w->next)
            if (!req.watch_list.stream[0] || strcmp(req.watch_list.stream, w->stream->id) == 0)
                cJSON_AddItemToArray(a, watch_json(w));
        reply(d, env, proto_reply_ok(req.id, b));
        break;
    }
    case PROTO_OP_IMAGE: handle_image(d, env, &req); break;
    default:
        reply_error(d, env, req.id, PROTO_E_UNKNOWN_OP, "op not served by this daemon");
        break;
    }
    proto_request_free(&req);
}

static void router_service(vd_daemon *d) {
    if (!d->router) return;
    for (;;) {
        int ev = 0;
        size_t sz = sizeof ev;
        if (zmq_getsockopt(d->router, ZMQ_EVENTS, &ev, &sz) != 0 || !(ev & ZMQ_POLLIN)) return;
        proto_envelope env;
        char *payload = NULL;
        size_t len = 0;
        int rc = proto_router_recv(d->router, ZMQ_DONTWAIT, d->cfg->limits.max_message_bytes, &env, &payload, &len);
        if (rc == PROTO_RECV_OK) {
            handle_request(d, &env, payload, len);
        } else if (rc == PROTO_RECV_BAD_FRAMING) {
            reply(d, &env, proto_reply_error(NULL, PROTO_E_BAD_REQUEST, "bad framing: send one frame holding the JSON "
                                            "request (DEALER), or an empty delimiter and the JSON (REQ)"));
        } else if (rc == PROTO_RECV_TOO_LARGE) {
            reply(d, &env, proto_reply_error(NULL, PROTO_E_TOO_LARGE, "the request is larger than %zu bytes "
                                            "(max_message_bytes)", d->cfg->limits.max_message_bytes));
        } else if (rc == PROTO_RECV_ERROR) {
            if (errno != EAGAIN) vd_log(VD_LOG_WARNING, "receive: %s", zmq_strerror(errno));
            free(payload);
            return;
        } else {
            free(payload);
            return;
        }
        free(payload);
    }
}

static void poll_cb(uv_poll_t *h, int status, int events) {
    (void)status;
    (void)events;
    router_service(h->data);
}

/* ---- results -------------------------------------------------------------------------------------- */

static void begin_close(vd_daemon *d);

static void stream_state_result(vd_daemon *d, vd_result *r) {
    vd_stream *st = r->stream;
    if (!stream_registered(d, st)) return;
    vd_log(r->state == PROTO_STREAM_FAILED ? VD_LOG_WARNING : VD_LOG_INFO, "stream %s: %s%s%s", st->id,
           proto_stream_state_name(r->state), r->detail[0] ? ": " : "", r->detail);
    publish(d, "stream", st->id, proto_event_stream_state(st->id, r->state, r->detail[0] ? r->detail : NULL));
    if (!st->add_pending || r->state == PROTO_STREAM_STARTING) return;
    st->add_pending = false;
    if (r->state == PROTO_STREAM_FAILED) {
        if (st->has_add_env)
            reply_error(d, &st->add_env, st->add_id, PROTO_E_MEDIA_ERROR, "stream \"%s\": the source could not be "
                        "opened: %s", st->id, r->detail[0] ? r->detail : "unknown error");
        stream_remove(d, st, NULL, NULL);
        return;
    }
    if (st->has_add_env) {
        cJSON *b = cJSON_CreateObject();
        if (b) cJSON_AddItemToObject(b, "stream", stream_status(d, st));
        reply(d, &st->add_env, proto_reply_ok(st->add_id, b));
    }
}

static void process_result(vd_daemon *d, vd_result *r) {
    switch (r->kind) {
    case VD_RES_FRAME:
        if (r->json && !(r->job && atomic_load(&r->job->client_gone))) send_json(d, &r->env, r->json);
        if (r->final && r->job) finish_job(d, r->job);
        r->job = NULL;
        break;
    case VD_RES_PUB:
        publish(d, r->topic, NULL, r->json);
        r->json = NULL;
        break;
    case VD_RES_STREAM_STATE: stream_state_result(d, r); break;
    case VD_RES_STREAM_STARTED:
        if (r->code != PROTO_OK) {
            vd_stream *st = r->stream;
            if (st->add_pending && st->has_add_env)
                reply_error(d, &st->add_env, st->add_id, r->code, "stream \"%s\": %s", st->id, r->detail);
            st->add_pending = false;
            if (stream_registered(d, st)) stream_remove(d, st, NULL, NULL);
            else {
                /* already removed by a client: the worker still lists it */
                vd_ctl *c = calloc(1, sizeof *c);
                if (c) {
                    c->kind = VD_CTL_STREAM_REMOVE;
                    c->stream = vd_stream_ref(st);
                    vd_worker_post_ctl(d, c);
                }
            }
        } else {
            r->stream->add_t = vd_now_s();
        }
        break;
    case VD_RES_STREAM_REMOVED:
        if (r->has_env) reply(d, &r->env, proto_reply_ok(r->id, NULL));
        publish(d, "stream", r->stream->id, proto_event_stream_state(r->stream->id, PROTO_STREAM_REMOVED, NULL));
        break;
    case VD_RES_PAIR:
        for (vd_watch *w = d->watches; w; w = w->next)
            if (w->stream == r->stream && w->req.watch_add.on_pair) watch_fire(d, w);
        break;
    case VD_RES_WATCH_DONE:
        watch_done(d, r->job);
        vd_job_free(r->job);
        r->job = NULL;
        break;
    case VD_RES_WORKER_EXIT:
        vd_worker_join(d);
        begin_close(d);
        break;
    }
    free(r->json);
    vd_stream_unref(r->stream);
    free(r);
}

static void async_cb(uv_async_t *h) {
    vd_daemon *d = h->data;
    for (;;) {
        pthread_mutex_lock(&d->res_mu);
        vd_result *r = d->res_head;
        d->res_head = d->res_tail = NULL;
        pthread_mutex_unlock(&d->res_mu);
        if (!r) break;
        while (r) {
            vd_result *n = r->next;
            process_result(d, r);
            r = n;
        }
    }
    router_service(d);
}

/* ---- signals, timers, systemd -------------------------------------------------------------------- */

static void notify_status(vd_daemon *d) {
    int running = 0;
    for (vd_stream *st = d->streams; st; st = st->reg_next) {
        pthread_mutex_lock(&st->mu);
        running += st->state == PROTO_STREAM_RUNNING;
        pthread_mutex_unlock(&st->mu);
    }
    char buf[256];
    snprintf(buf, sizeof buf, "STATUS=%s%d stream%s (%d running), %d question%s in flight, %d watch%s",
             d->shutting_down ? "stopping: " : "", d->n_streams, d->n_streams == 1 ? "" : "s", running, d->n_jobs,
             d->n_jobs == 1 ? "" : "s", d->n_watches, d->n_watches == 1 ? "" : "es");
    sd_notify(0, buf);
}

static void tick_cb(uv_timer_t *t) {
    vd_daemon *d = t->data;
    double now = vd_now_s();
    if (now - d->last_status >= d->cfg->status_interval_ms / 1000.0) {
        d->last_status = now;
        notify_status(d);
    }
    /* stream.add answers at the latest after a few seconds, even if the source is still opening */
    for (vd_stream *st = d->streams; st; st = st->reg_next)
        if (st->add_pending && st->add_t > 0 && now - st->add_t > ADD_REPLY_WAIT_S) {
            st->add_pending = false;
            if (st->has_add_env) {
                cJSON *b = cJSON_CreateObject();
                if (b) cJSON_AddItemToObject(b, "stream", stream_status(d, st));
                reply(d, &st->add_env, proto_reply_ok(st->add_id, b));
            }
        }
    router_service(d);
}

static void watchdog_cb(uv_timer_t *t) {
    vd_daemon *d = t->data;
    int64_t age = vd_now_ms() - atomic_load(&d->heartbeat_ms);
    if (age < d->cfg->watchdog_stall_ms) {
        sd_notify(0, "WATCHDOG=1");
        d->watchdog_on = true;
    } else if (d->watchdog_on) {
        d->watchdog_on = false;
        vd_log(VD_LOG_ERR, "compute worker has made no progress for %.1f s: no more watchdog pings",
               age / 1000.0);
    }
}

static void start_shutdown(vd_daemon *d, const char *why) {
    if (d->shutting_down) {
        vd_log(VD_LOG_NOTICE, "%s: already stopping", why);
        return;
    }
    d->shutting_down = true;
    vd_log(VD_LOG_NOTICE, "%s: stopping (queued questions are refused, running answers get %.1f s)", why,
           d->cfg->shutdown_grace_ms / 1000.0);
    sd_notify(0, "STOPPING=1");
    notify_status(d);
    publish_daemon_state(d, "shutting_down");
    for (vd_watch *w = d->watches; w; w = w->next)
        if (w->timer) uv_timer_stop(w->timer);
    atomic_store(&d->stop_stall, 1);
    vd_ctl *c = calloc(1, sizeof *c);
    if (c) {
        c->kind = VD_CTL_SHUTDOWN;
        vd_worker_post_ctl(d, c);
    }
}

static void signal_cb(uv_signal_t *h, int signum) {
    vd_daemon *d = h->data;
    if (signum == SIGTERM || signum == SIGINT) {
        start_shutdown(d, signum == SIGTERM ? "SIGTERM" : "SIGINT");
    } else if (signum == SIGHUP) {
        vd_log(VD_LOG_NOTICE, "SIGHUP: reloading the configured streams");
        sd_notify(0, "RELOADING=1");
        reload_streams(d);
        sd_notify(0, "READY=1");
    } else if (signum == SIGUSR1 && d->cfg->test_hooks) {
        vd_ctl *c = calloc(1, sizeof *c);
        if (c) {
            c->kind = VD_CTL_STALL;
            vd_worker_post_ctl(d, c);
        }
    }
}

static void close_cb(uv_handle_t *h) {
    (void)h;
}

static void close_walk(uv_handle_t *h, void *arg) {
    (void)arg;
    if (uv_is_closing(h)) return;
    /* watch timers are malloc'ed and freed by watch_free; the others live in vd_daemon */
    uv_close(h, close_cb);
}

static void begin_close(vd_daemon *d) {
    if (d->loop_closing) return;
    d->loop_closing = true;
    /* answer what is left of the requests still waiting for a stream to open */
    for (vd_stream *st = d->streams; st; st = st->reg_next)
        if (st->add_pending && st->has_add_env) {
            st->add_pending = false;
            reply_error(d, &st->add_env, st->add_id, PROTO_E_SHUTTING_DOWN, "vigild is stopping");
        }
    while (d->watches) {
        vd_watch *w = d->watches;
        d->watches = w->next;
        watch_free(d, w);
    }
    uv_walk(&d->loop, close_walk, NULL);
}

/* ---- sockets ---------------------------------------------------------------------------------------- */

/* libzmq binds an ipc:// endpoint by unlinking whatever socket file is there, so a second
 * vigild would silently take the first one's clients. A socket file that accepts a connection
 * belongs to a live process: refuse. */
static bool ipc_endpoint_in_use(const char *ep) {
    if (strncmp(ep, "ipc://", 6) != 0 || ep[6] == '@') return false;
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    if (strlen(ep + 6) >= sizeof a.sun_path) return false;
    strcpy(a.sun_path, ep + 6);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    bool live = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return live;
}

static int setup_socket(vd_daemon *d, void *s, const char *ep, const char *what, char *err, size_t errlen) {
    int linger = 2000, one = 1;
    if (ipc_endpoint_in_use(ep)) {
        snprintf(err, errlen, "cannot bind the %s socket to %s: another process is listening there (is another "
                 "vigild running?)", what, ep);
        return -1;
    }
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (d->cfg->curve_secret_key) {
        if (zmq_setsockopt(s, ZMQ_ZAP_DOMAIN, "vigil", 5) != 0 ||
            zmq_setsockopt(s, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
            zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, d->cfg->curve_secret_key, strlen(d->cfg->curve_secret_key) + 1) != 0) {
            snprintf(err, errlen, "%s socket: CURVE setup failed: %s", what, zmq_strerror(zmq_errno()));
            return -1;
        }
    }
    if (zmq_bind(s, ep) != 0) {
        int e = zmq_errno();
        snprintf(err, errlen, "cannot bind the %s socket to %s: %s%s", what, ep, zmq_strerror(e),
                 e == ENOENT ? " (does the directory exist? systemd creates /run/vigil with RuntimeDirectory=vigil; "
                               "elsewhere give --endpoint/--events-endpoint)" :
                 e == EADDRINUSE ? " (is another vigild running?)" : "");
        return -1;
    }
    return 0;
}

static int open_sockets(vd_daemon *d, char *err, size_t errlen) {
    d->zctx = zmq_ctx_new();
    if (!d->zctx) {
        snprintf(err, errlen, "cannot create a ZeroMQ context: %s", zmq_strerror(zmq_errno()));
        return -1;
    }
    if (d->cfg->curve_secret_key) {
        if (!zmq_has("curve")) {
            snprintf(err, errlen, "this libzmq has no CURVE support, but CURVE keys are configured");
            return -1;
        }
        d->zap = vd_zap_start(d->zctx, d->cfg->curve_client_keys, d->cfg->n_curve_client_keys, err, errlen);
        if (!d->zap) return -1;
    }
    d->router = zmq_socket(d->zctx, ZMQ_ROUTER);
    d->pub = zmq_socket(d->zctx, ZMQ_PUB);
    if (!d->router || !d->pub) {
        snprintf(err, errlen, "cannot create sockets: %s", zmq_strerror(zmq_errno()));
        return -1;
    }
    int one = 1, hwm = 100000;
    /* Too-large requests get a too_large reply up to twice the limit; beyond that libzmq drops
     * the connection before the daemon ever buffers the message. */
    int64_t maxmsg = (int64_t)d->cfg->limits.max_message_bytes * 2 + 65536;
    zmq_setsockopt(d->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(d->router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(d->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(d->pub, ZMQ_SNDHWM, &hwm, sizeof hwm);
    if (setup_socket(d, d->router, d->cfg->endpoint, "request", err, errlen) != 0 ||
        setup_socket(d, d->pub, d->cfg->events_endpoint, "events", err, errlen) != 0)
        return -1;
    return 0;
}

static void close_sockets(vd_daemon *d) {
    if (d->router) zmq_close(d->router);
    if (d->pub) zmq_close(d->pub);
    d->router = d->pub = NULL;
    if (d->zctx) zmq_ctx_term(d->zctx);
    d->zctx = NULL;
    vd_zap_join(d->zap);
    d->zap = NULL;
}

/* ---- run ------------------------------------------------------------------------------------------------ */

/* Whether the checkpoint's chat template opens the answer with <think> (Qwen3-VL "Thinking"
 * checkpoints: '<|im_start|>assistant\n<think>\n' in the generation prompt). The template sits in
 * chat_template.json, chat_template.jinja or tokenizer_config.json, with the newline written as
 * an escape or as itself. */
static bool template_thinks(const char *dir) {
    static const char *const files[] = { "chat_template.json", "chat_template.jinja", "tokenizer_config.json" };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        size_t cap = 8u << 20, n;
        char *text = malloc(cap + 1);
        n = text ? fread(text, 1, cap, f) : 0;
        fclose(f);
        if (!text) continue;
        text[n] = 0;
        bool found = false;
        const char *key = "<|im_start|>assistant";
        for (const char *p = strstr(text, key); p && !found; p = strstr(p + 1, key)) {
            const char *q = p + strlen(key);
            while (*q == '\\' || *q == 'n' || *q == '\n') q++;
            found = strncmp(q, "<think>", 7) == 0;
        }
        free(text);
        if (found) return true;
    }
    return false;
}

static int load_model(vd_daemon *d, char *err, size_t errlen) {
    const vd_config *cfg = d->cfg;
    char e[512] = "";
    double t0 = vd_now_s();
    if (checkpoint_open(cfg->model_dir, &d->ck, e, sizeof e) != 0) {
        snprintf(err, errlen, "cannot open the checkpoint %s: %s", cfg->model_dir, e);
        return -1;
    }
    char path[2048];
    snprintf(path, sizeof path, "%s/tokenizer.json", cfg->model_dir);
    if (tok_load(path, &d->tok, e, sizeof e) != 0) {
        snprintf(err, errlen, "cannot load the tokenizer: %s", e);
        return -1;
    }
    model_options mo = { .compute = cfg->compute, .num_threads = cfg->threads };
    if (model_create(d->ck, &mo, &d->m, e, sizeof e) != 0) {
        snprintf(err, errlen, "cannot build the model from %s: %s", cfg->model_dir, e);
        return -1;
    }
    d->mcfg = model_get_config(d->m);
    model_kv *kv = NULL;
    if (model_kv_create(d->m, 1, &kv, e, sizeof e) != 0) {
        snprintf(err, errlen, "KV cache: %s", e);
        return -1;
    }
    d->kv_bytes_per_slot = model_kv_bytes_per_slot(kv);
    model_kv_destroy(kv);
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", cfg->model_dir);
    size_t l = strlen(tmp);
    while (l > 1 && tmp[l - 1] == '/') tmp[--l] = 0;
    /* ".../Qwen3-VL-2B-Instruct" names the model; a folder called just "model" does not */
    char *base = basename(tmp);
    if (strcmp(base, "model") == 0 && base > tmp + 1) {
        base[-1] = 0;
        base = basename(tmp);
    }
    snprintf(d->model_name, sizeof d->model_name, "%s", base);
    d->thinking = cfg->thinking < 0 ? template_thinks(cfg->model_dir) : cfg->thinking == 1;
    vd_log(VD_LOG_INFO, "model %s loaded in %.1f s: %s, %d layers, %s compute, %.0f MiB of weights, %zu KiB KV per "
           "token%s", d->model_name, vd_now_s() - t0, d->mcfg->model_type, d->mcfg->text.num_hidden_layers,
           cfg->compute == MODEL_COMPUTE_F32 ? "f32" : "bf16", model_weight_bytes(d->m) / 1048576.0,
           d->kv_bytes_per_slot >> 10, d->thinking ? ", answers open with <think>" : "");
    return 0;
}

static void daemon_free(vd_daemon *d) {
    while (d->jobs) {
        vd_job *j = d->jobs;
        d->jobs = j->reg_next;
        vd_job_free(j);
    }
    while (d->streams) {
        vd_stream *st = d->streams;
        d->streams = st->reg_next;
        vd_stream_unref(st);
    }
    pthread_mutex_lock(&d->res_mu);
    vd_result *r = d->res_head;
    d->res_head = d->res_tail = NULL;
    pthread_mutex_unlock(&d->res_mu);
    while (r) {
        vd_result *n = r->next;
        free(r->json);
        if (r->job) vd_job_free(r->job);
        vd_stream_unref(r->stream);
        free(r);
        r = n;
    }
    model_destroy(d->m);
    tok_free(d->tok);
    checkpoint_close(d->ck);
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cond);
    pthread_mutex_destroy(&d->res_mu);
    free(d);
}

/* FFmpeg's own messages become log lines like every other event: its errors (a refused
 * connection, a corrupt packet) at info, since the stream's state already reports what they
 * mean; its warnings and chatter at debug. */
static void ffmpeg_log_line(void *user, int level, const char *line) {
    (void)user;
    vd_log(level == INGEST_LOG_ERROR ? VD_LOG_INFO : VD_LOG_DEBUG, "ffmpeg: %s", line);
}

int vd_daemon_run(vd_config *cfg) {
    ingest_set_log_handler(ffmpeg_log_line, NULL, vd_log_enabled(VD_LOG_DEBUG));
    vd_daemon *d = calloc(1, sizeof *d);
    if (!d) {
        vd_log(VD_LOG_ERR, "out of memory");
        return 1;
    }
    d->cfg = cfg;
    d->t_start = vd_now_s();
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cond, NULL);
    pthread_mutex_init(&d->res_mu, NULL);
    if (cfg->query_reserve_tokens <= 0) cfg->query_reserve_tokens = cfg->limits.max_tokens + 1024;
    /* A plain path is a "file" URL: image paths follow the same allow-list as sources. */
    cfg->limits.allow_image_path = vd_list_has(cfg->allowed_protocols, "file");
    if (cfg->test_hooks) vd_log(VD_LOG_WARNING, "VIGILD_TEST_HOOKS=1: test hooks are enabled (never in production)");

    char err[1024] = "";
    sd_notify(0, "STATUS=loading the model");
    if (load_model(d, err, sizeof err) != 0) {
        vd_log(VD_LOG_ERR, "%s", err);
        daemon_free(d);
        return 1;
    }
    uv_loop_init(&d->loop);
    uv_async_init(&d->loop, &d->async, async_cb);
    d->async.data = d;
    if (open_sockets(d, err, sizeof err) != 0) {
        vd_log(VD_LOG_ERR, "%s", err);
        uv_close((uv_handle_t *)&d->async, NULL);
        uv_run(&d->loop, UV_RUN_DEFAULT);
        uv_loop_close(&d->loop);
        close_sockets(d);
        daemon_free(d);
        return 1;
    }
    int fd = -1;
    size_t fsz = sizeof fd;
    zmq_getsockopt(d->router, ZMQ_FD, &fd, &fsz);
    uv_poll_init(&d->loop, &d->poll, fd);
    d->poll.data = d;
    uv_poll_start(&d->poll, UV_READABLE, poll_cb);
    uv_signal_t *sigs[4] = { &d->sig_term, &d->sig_int, &d->sig_hup, &d->sig_usr1 };
    int signums[4] = { SIGTERM, SIGINT, SIGHUP, SIGUSR1 };
    for (int i = 0; i < 4; i++) {
        uv_signal_init(&d->loop, sigs[i]);
        sigs[i]->data = d;
        uv_signal_start(sigs[i], signal_cb, signums[i]);
    }
    uv_timer_init(&d->loop, &d->status_timer);
    d->status_timer.data = d;
    uv_timer_start(&d->status_timer, tick_cb, 1000, 1000);
    uint64_t wd_usec = 0;
    if (sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0) {
        uv_timer_init(&d->loop, &d->watchdog_timer);
        d->watchdog_timer.data = d;
        uint64_t ms = wd_usec / 2000;
        if (ms < 1) ms = 1;
        uv_timer_start(&d->watchdog_timer, watchdog_cb, 0, ms);
        d->watchdog_on = true;
        vd_log(VD_LOG_INFO, "systemd watchdog every %.1f s (pinged while the worker progresses)", wd_usec / 1e6);
    }
    if (vd_worker_start(d, err, sizeof err) != 0) {
        vd_log(VD_LOG_ERR, "%s", err);
        begin_close(d);
        uv_run(&d->loop, UV_RUN_DEFAULT);
        uv_loop_close(&d->loop);
        close_sockets(d);
        daemon_free(d);
        return 1;
    }
    for (int i = 0; i < cfg->n_streams; i++) add_config_stream(d, cfg->streams[i].canonical);
    vd_log(VD_LOG_NOTICE, "vigild %s ready: requests on %s, events on %s%s", VD_VERSION, cfg->endpoint,
           cfg->events_endpoint, cfg->curve_secret_key ? " (CURVE)" : "");
    sd_notify(0, "READY=1");
    notify_status(d);
    publish_daemon_state(d, "ready");
    router_service(d);

    uv_run(&d->loop, UV_RUN_DEFAULT);
    uv_loop_close(&d->loop);
    /* replies of the last moments are flushed within the sockets' linger */
    close_sockets(d);
    int code = d->exit_code;
    daemon_free(d);
    vd_log(VD_LOG_NOTICE, "vigild stopped");
    return code;
}
