/* worker.c — the compute worker: one thread that owns the model, every stream's context and the
 * lifetime of every ingest source.
 *
 * Scheduling, in units of work (a pair's encode + prefill, a question's prefill, one decode step,
 * an image's decode + encode):
 *  - queries on one stream run in order (one at a time per stream); active queries of different
 *    streams (and the image lane) take decode steps round-robin;
 *  - queries and ingest alternate in turns: a query turn lasts at most as long as the last pair's
 *    work took, then one pair is ingested. So neither side waits longer than about one pair's
 *    work for the other, and with both busy the CPU is shared evenly;
 *  - a pair that arrives while its stream's query runs is encoded and appended into other slots
 *    (hidden from the query); if there is no room until the query ends it is held, encoded.
 * The worker bumps a heartbeat between units; the loop pings systemd's watchdog only while it is
 * fresh. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/vd_internal.h"

int64_t vd_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double vd_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void heartbeat(vd_daemon *d) {
    atomic_store(&d->heartbeat_ms, vd_now_ms());
}

/* ---- objects -------------------------------------------------------------------------------- */

vd_stream *vd_stream_ref(vd_stream *s) {
    if (s) atomic_fetch_add(&s->refs, 1);
    return s;
}

void vd_stream_unref(vd_stream *s) {
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1) return;
    pthread_mutex_destroy(&s->mu);
    free(s->url);
    free(s->url_display);
    free(s->canonical);
    proto_request_free(&s->req);
    free(s);
}

void vd_job_free(vd_job *j) {
    if (!j) return;
    free(j->prompt);
    for (int i = 0; i < j->n_stop; i++) free(j->stop[i]);
    free(j->stop);
    free(j->image_path);
    free(j->image_data);
    free(j->answer);
    vd_stream_unref(j->stream);
    free(j);
}

model_sampling vd_sampling_from_proto(const proto_sampling *p) {
    model_sampling s = model_sampling_default();
    if (!p) return s;
    s.temperature = (float)p->temperature;
    s.top_k = p->top_k;
    s.top_p = (float)p->top_p;
    s.min_p = (float)p->min_p;
    s.repetition_penalty = (float)p->repetition_penalty;
    s.presence_penalty = (float)p->presence_penalty;
    s.seed = p->seed;
    return s;
}

/* ---- results --------------------------------------------------------------------------------- */

static vd_result *res_new(vd_result_kind kind) {
    vd_result *r = calloc(1, sizeof *r);
    if (r) r->kind = kind;
    return r;
}

static void post_frame(vd_daemon *d, vd_job *job, char *json, bool final) {
    vd_result *r = res_new(VD_RES_FRAME);
    if (!r) {
        /* Out of memory: the frame is lost; a final one must still hand the job back, or the
         * loop would wait for it forever. Retry once after a short pause. */
        free(json);
        if (!final) return;
        usleep(10000);
        r = res_new(VD_RES_FRAME);
        if (!r) {
            vd_log(VD_LOG_ERR, "out of memory: request %s cannot be finished", job->id);
            return;
        }
        json = NULL;
    }
    r->has_env = true;
    r->env = job->env;
    r->json = json;
    r->final = final;
    r->job = final ? job : NULL;
    vd_post_result(d, r);
}

static void post_stream_result(vd_daemon *d, vd_result_kind kind, vd_stream *st, proto_errc code,
                               const char *detail, const vd_ctl *c) {
    vd_result *r = res_new(kind);
    if (!r) return;
    r->stream = vd_stream_ref(st);
    r->code = code;
    if (detail) snprintf(r->detail, sizeof r->detail, "%s", detail);
    if (c && c->has_env) {
        r->has_env = true;
        r->env = c->env;
        snprintf(r->id, sizeof r->id, "%s", c->id);
    }
    vd_post_result(d, r);
}

/* Ends a job without an answer: an error reply (or, for a watch, an empty evaluation). */
static void job_fail(vd_daemon *d, vd_job *job, proto_errc code, const char *msg) {
    job->error_code = code;
    snprintf(job->error, sizeof job->error, "%s", msg);
    if (job->kind == VD_JOB_WATCH) {
        vd_result *r = res_new(VD_RES_WATCH_DONE);
        if (!r) return;
        r->job = job;
        vd_post_result(d, r);
        return;
    }
    char *json = proto_reply_error(job->id, code, "%s", msg);
    post_frame(d, job, json, true);
}

static void record_latency(vd_stream *st, double total_ms, double ttft_ms) {
    if (!st) return;
    pthread_mutex_lock(&st->mu);
    st->queries_served++;
    st->lat_total[st->lat_i] = total_ms;
    st->lat_ttft[st->lat_i] = ttft_ms;
    st->lat_i = (st->lat_i + 1) % VD_LAT_RING;
    if (st->lat_n < VD_LAT_RING) st->lat_n++;
    pthread_mutex_unlock(&st->mu);
}

/* The answer is complete: the final frame (or the watch result). */
static void job_done(vd_daemon *d, vd_stream *st, vd_job *job, vd_query *q, bool cut) {
    vd_query_result r;
    vd_query_get_result(q, &r);
    job->t_done = vd_now_s();
    if (job->t_first <= 0) job->t_first = job->t_done;
    proto_timing tm = {
        .queue_ms = (job->t_started - job->t_accepted) * 1000,
        .ttft_ms = (job->t_first - job->t_accepted) * 1000,
        .total_ms = (job->t_done - job->t_accepted) * 1000,
    };
    double decode_s = job->t_done - job->t_started;
    tm.tokens_per_s = decode_s > 0 ? r.usage.completion_tokens / decode_s : 0;
    d->queries_total++;
    if (job->kind != VD_JOB_WATCH) record_latency(st, tm.total_ms, tm.ttft_ms);
    if (job->kind == VD_JOB_WATCH) {
        job->answer = strndup(r.text ? r.text : "", r.text_len);
        job->finish = r.finish;
        job->usage = r.usage;
        job->media_time = r.media_time;
        /* timing rides along in the job's timestamps */
        vd_result *res = res_new(VD_RES_WATCH_DONE);
        if (!res) return;
        res->job = job;
        vd_post_result(d, res);
        return;
    }
    /* A done frame cut by shutdown carries error.code "shutting_down" next to finish_reason;
     * a stream's answer says which media time it saw up to. */
    proto_error shutdown = { .code = PROTO_E_SHUTTING_DOWN };
    snprintf(shutdown.message, sizeof shutdown.message, "vigild is stopping: the answer was cut short");
    cJSON *body = NULL;
    if (job->kind == VD_JOB_QUERY && r.media_time >= 0 && (body = cJSON_CreateObject()) &&
        !cJSON_AddNumberToObject(body, "media_time", r.media_time)) {
        cJSON_Delete(body);
        body = NULL;
    }
    char *json = proto_event_done(job->id, r.text ? r.text : "", r.finish, &r.usage, &tm, cut ? &shutdown : NULL, body);
    vd_log(VD_LOG_DEBUG, "%s %s done: %s, %lld tokens, ttft %.0f ms, total %.0f ms",
           job->kind == VD_JOB_IMAGE ? "image" : "query", job->id, proto_finish_name(r.finish),
           (long long)r.usage.completion_tokens, tm.ttft_ms, tm.total_ms);
    post_frame(d, job, json, true);
}

/* ---- sources' callbacks (source threads) ------------------------------------------------------- */

static proto_stream_state map_state(ingest_state s) {
    switch (s) {
    case INGEST_STATE_IDLE:
    case INGEST_STATE_CONNECTING: return PROTO_STREAM_STARTING;
    case INGEST_STATE_LIVE: return PROTO_STREAM_RUNNING;
    case INGEST_STATE_STALLED:
    case INGEST_STATE_RECONNECTING: return PROTO_STREAM_RECONNECTING;
    case INGEST_STATE_ENDED: return PROTO_STREAM_ENDED;
    case INGEST_STATE_FAILED: return PROTO_STREAM_FAILED;
    }
    return PROTO_STREAM_FAILED;
}

/* The stream's state as clients see it: status figures and a stream.state result. */
static void publish_state(vd_daemon *d, vd_stream *st, proto_stream_state ps, const char *det) {
    pthread_mutex_lock(&st->mu);
    st->state = ps;
    snprintf(st->detail, sizeof st->detail, "%s", det);
    pthread_mutex_unlock(&st->mu);
    vd_result *r = res_new(VD_RES_STREAM_STATE);
    if (r) {
        r->stream = vd_stream_ref(st);
        r->state = ps;
        snprintf(r->detail, sizeof r->detail, "%s", det);
        vd_post_result(d, r);
    }
}

static void src_on_state(void *user, ingest_source *src, ingest_state old_state, ingest_state new_state,
                         const char *detail) {
    (void)src;
    (void)old_state;
    vd_stream *st = user;
    vd_daemon *d = st->d;
    proto_stream_state ps = map_state(new_state);
    char det[256];
    if (new_state == INGEST_STATE_STALLED)
        snprintf(det, sizeof det, "stalled: %s", detail && *detail ? detail : "no frames");
    else
        snprintf(det, sizeof det, "%s", detail ? detail : "");
    if (ps == PROTO_STREAM_ENDED || ps == PROTO_STREAM_FAILED) {
        /* The worker drains what is left of the source, then publishes the end. */
        st->end_state = ps;
        snprintf(st->end_detail, sizeof st->end_detail, "%s", det);
        atomic_store(&st->end_pending, 1);
        atomic_store(&st->pair_ready, 1);
    } else {
        publish_state(d, st, ps, det);
    }
    pthread_mutex_lock(&d->mu);
    pthread_cond_signal(&d->cond);
    pthread_mutex_unlock(&d->mu);
}

static void src_on_pair(void *user, ingest_source *src) {
    (void)src;
    vd_stream *st = user;
    atomic_store(&st->pair_ready, 1);
    pthread_mutex_lock(&st->d->mu);
    pthread_cond_signal(&st->d->cond);
    pthread_mutex_unlock(&st->d->mu);
}

/* ---- streams ------------------------------------------------------------------------------------ */

static void update_stream_figures(vd_stream *st, bool rates) {
    ingest_stats is;
    memset(&is, 0, sizeof is);
    if (st->src) ingest_source_stats(st->src, &is);
    vd_sctx_stats cs;
    memset(&cs, 0, sizeof cs);
    cs.oldest_media = cs.newest_media = -1;
    if (st->ctx) vd_sctx_get_stats(st->ctx, &cs);
    double now = vd_now_s();
    pthread_mutex_lock(&st->mu);
    if (rates) {
        double dt = now - st->rate_t;
        if (st->rate_t > 0 && dt > 0) {
            double fi = (double)(is.frames_decoded - st->rate_frames) / dt;
            double pp = (double)(cs.pairs_appended - st->rate_pairs) / dt;
            /* smooth over a few samples: rates of a 2 fps source jump between 0 and 4 per second */
            st->fps_in = st->fps_in < 0 ? fi : 0.7 * st->fps_in + 0.3 * fi;
            st->pairs_per_s = st->pairs_per_s < 0 ? pp : 0.7 * st->pairs_per_s + 0.3 * pp;
        }
        st->rate_t = now;
        st->rate_frames = is.frames_decoded;
        st->rate_pairs = cs.pairs_appended;
    }
    st->frames_in = is.frames_decoded;
    st->pairs_dropped = is.pairs_dropped;
    st->pairs_encoded = cs.pairs_appended;
    st->pairs_evicted = cs.pairs_evicted;
    st->shifts = cs.shifts;
    st->cache_used = (uint64_t)cs.tokens_used;
    st->cache_cap = (uint64_t)cs.cache_tokens;
    st->kv_bytes = cs.kv_bytes;
    st->media_time = cs.newest_media;
    st->oldest_media = cs.oldest_media;
    pthread_mutex_unlock(&st->mu);
}

static proto_errc ingest_errc(int rc) {
    if (rc == INGEST_EPERM) return PROTO_E_FORBIDDEN;
    if (rc == INGEST_EINVAL) return PROTO_E_BAD_URL;
    return PROTO_E_MEDIA_ERROR;
}

static void w_stream_add(vd_daemon *d, vd_ctl *c) {
    vd_stream *st = c->stream;
    const proto_stream_add *a = &st->req.stream_add;
    const vd_config *cfg = d->cfg;
    char err[512] = "";
    /* The worker lists the stream even when it fails, so jobs queued meanwhile get an answer. */
    st->w_next = d->w_streams;
    d->w_streams = vd_stream_ref(st);

    vd_sctx_options o = {
        .cache_tokens = st->cache_tokens,
        .query_reserve = cfg->query_reserve_tokens,
        .ingest_headroom = cfg->ingest_headroom_pairs * (a->max_tokens_per_pair + 32),
        .position_limit = cfg->position_limit,
        .system_prompt = a->system_prompt ? a->system_prompt : cfg->system_prompt,
        .thinking = d->thinking,
    };
    if (vd_sctx_create(d->m, d->tok, &o, &st->ctx, err, sizeof err) != 0) {
        vd_log(VD_LOG_WARNING, "stream %s: %s", st->id, err);
        post_stream_result(d, VD_RES_STREAM_STARTED, st, PROTO_E_MODEL_ERROR, err, c);
        return;
    }
    ingest_options io;
    ingest_options_init(&io);
    io.fps = a->fps;
    ingest_options_set_max_tokens(&io, a->max_tokens_per_pair);
    long minpx = (long)a->min_tokens_per_pair * INGEST_TOKEN_PIXELS;
    io.min_pixels = minpx < io.max_pixels ? minpx : io.max_pixels;
    io.loop = a->loop;
    io.realtime = a->realtime;
    io.start_offset = a->start_offset;
    snprintf(io.rtsp_transport, sizeof io.rtsp_transport, "%s", a->rtsp_transport == PROTO_RTSP_UDP ? "udp" : "tcp");
    io.decoder_threads = a->decoder_threads;
    io.io_timeout_ms = a->timeout_ms;
    snprintf(io.protocols, sizeof io.protocols, "%s", cfg->allowed_protocols);
    snprintf(io.device_prefix, sizeof io.device_prefix, "%s", cfg->device_prefix);
    io.queue_capacity = cfg->ingest_queue_pairs;
    io.on_state = src_on_state;
    io.on_pair = src_on_pair;
    io.user = st;
    int rc = ingest_source_create(&st->src, st->url, &io, err, sizeof err);
    if (rc == 0) rc = ingest_source_start(st->src, err, sizeof err);
    if (rc != 0) {
        vd_log(VD_LOG_WARNING, "stream %s: %s", st->id, err);
        ingest_source_destroy(st->src);
        st->src = NULL;
        vd_sctx_destroy(st->ctx);
        st->ctx = NULL;
        post_stream_result(d, VD_RES_STREAM_STARTED, st, ingest_errc(rc), err, c);
        return;
    }
    st->rate_t = vd_now_s();
    update_stream_figures(st, false);
    vd_log(VD_LOG_INFO, "stream %s: context ready (%d tokens cap, %zu MiB of KV cache reserved), source %s",
           st->id, st->cache_tokens, vd_sctx_bytes_for(d->m, &o) >> 20, st->url_display);
    post_stream_result(d, VD_RES_STREAM_STARTED, st, PROTO_OK, NULL, c);
}

static void step_until_done_cancelled(vd_daemon *d, vd_stream *st, vd_job *job, vd_sctx *ctx, vd_query *q, bool cut);

/* Takes every queued job off a stream and fails it. */
static void drain_stream_queue(vd_daemon *d, vd_stream *st, proto_errc code, const char *msg) {
    pthread_mutex_lock(&d->mu);
    vd_job *j = st->q_head;
    st->q_head = st->q_tail = NULL;
    pthread_mutex_unlock(&d->mu);
    while (j) {
        vd_job *n = j->next;
        if (j->kind == VD_JOB_WATCH) j->skipped = true;
        job_fail(d, j, code, msg);
        j = n;
    }
}

static void stream_teardown(vd_daemon *d, vd_stream *st, bool cut_shutdown) {
    if (st->aq) {
        vd_query_cancel(st->aq);
        step_until_done_cancelled(d, st, st->active, st->ctx, st->aq, cut_shutdown);
        st->aq = NULL;
        st->active = NULL;
    }
    char msg[160];
    snprintf(msg, sizeof msg, "stream %s was removed before the query started", st->id);
    drain_stream_queue(d, st, cut_shutdown ? PROTO_E_SHUTTING_DOWN : PROTO_E_CANCELLED,
                       cut_shutdown ? "vigild is stopping" : msg);
    /* No lock may be held here: the source thread's callbacks take d->mu. */
    ingest_source_destroy(st->src);
    st->src = NULL;
    if (st->has_held) vd_features_free(&st->held);
    st->has_held = false;
    vd_sctx_destroy(st->ctx);
    st->ctx = NULL;
}

static void w_stream_remove(vd_daemon *d, vd_ctl *c) {
    vd_stream *st = c->stream;
    vd_stream **pp = &d->w_streams;
    while (*pp && *pp != st) pp = &(*pp)->w_next;
    if (*pp) {
        *pp = st->w_next;
        stream_teardown(d, st, false);
        vd_stream_unref(st);   /* the worker list's reference */
        vd_log(VD_LOG_INFO, "stream %s: removed", st->id);
    }
    post_stream_result(d, VD_RES_STREAM_REMOVED, st, PROTO_OK, NULL, c);
}

/* ---- queries ------------------------------------------------------------------------------------ */

typedef struct text_ctx {
    vd_daemon *d;
    vd_job *job;
} text_ctx;

static int on_text(void *ctx, const char *t, size_t n) {
    text_ctx *c = ctx;
    vd_job *job = c->job;
    if (job->kind != VD_JOB_WATCH && job->stream_tokens && !atomic_load(&job->client_gone)) {
        char *json = proto_event_token(job->id, t, n);
        if (json) post_frame(c->d, job, json, false);
    }
    return atomic_load(&job->cancel);
}

static int begin_query(vd_daemon *d, vd_sctx *ctx, vd_job *job, vd_query **q) {
    vd_query_params p = {
        .prompt = job->prompt, .window = job->window, .max_tokens = job->max_tokens,
        .sampling = job->sampling, .stop = (const char *const *)job->stop, .n_stop = job->n_stop,
    };
    proto_errc code = PROTO_E_INTERNAL;
    char err[512] = "";
    if (vd_query_begin(ctx, &p, q, &code, err, sizeof err) != 0) {
        if (code == PROTO_E_INTERNAL) code = PROTO_E_MODEL_ERROR;
        job_fail(d, job, code, err);
        return -1;
    }
    return 0;
}

/* One step of a running answer. Returns true when it finished (the job was handed back). */
static bool step_query(vd_daemon *d, vd_stream *st, vd_job *job, vd_sctx *ctx, vd_query *q, bool cut) {
    if (atomic_load(&job->cancel)) vd_query_cancel(q);
    text_ctx tc = { d, job };
    char err[512] = "";
    int rc = vd_query_step(ctx, q, on_text, &tc, err, sizeof err);
    heartbeat(d);
    if (job->t_first <= 0 && rc >= 0) {
        vd_query_result r;
        vd_query_get_result(q, &r);
        if (r.n_ids > 0) job->t_first = vd_now_s();
    }
    if (rc == 1) return false;
    if (rc == 0) {
        job_done(d, st, job, q, cut);
    } else {
        vd_log(VD_LOG_WARNING, "query %s: %s", job->id, err);
        job_fail(d, job, PROTO_E_MODEL_ERROR, err);
    }
    vd_query_end(ctx, q);
    return true;
}

static void step_until_done_cancelled(vd_daemon *d, vd_stream *st, vd_job *job, vd_sctx *ctx, vd_query *q, bool cut) {
    vd_query_cancel(q);
    while (!step_query(d, st, job, ctx, q, cut)) {}
}

/* Takes the next job of a queue (a stream's questions, or the images) and marks it started; a
 * job cancelled while it waited gets its "cancelled" reply here and the next one is taken.
 * NULL when the queue is empty. */
static vd_job *take_next_job(vd_daemon *d, vd_job **head, vd_job **tail) {
    for (;;) {
        pthread_mutex_lock(&d->mu);
        vd_job *job = *head;
        if (job) {
            *head = job->next;
            if (!*head) *tail = NULL;
            job->next = NULL;
        }
        pthread_mutex_unlock(&d->mu);
        if (!job) return NULL;
        job->started = true;
        job->t_started = vd_now_s();
        if (!atomic_load(&job->cancel)) return job;
        job_fail(d, job, PROTO_E_CANCELLED, "cancelled before it started");
    }
}

static void start_next_query(vd_daemon *d, vd_stream *st) {
    vd_job *job;
    while ((job = take_next_job(d, &st->q_head, &st->q_tail))) {
        if (job->kind == VD_JOB_WATCH && vd_sctx_segment_count(st->ctx) == 0) {
            job->skipped = true;   /* nothing to look at yet: no evaluation */
            job_fail(d, job, PROTO_OK, "no frames yet");
            continue;
        }
        vd_query *q = NULL;
        if (begin_query(d, st->ctx, job, &q) != 0) continue;
        st->active = job;
        st->aq = q;
        return;
    }
}

/* ---- images ------------------------------------------------------------------------------------- */

static void start_next_image(vd_daemon *d) {
    vd_job *job = take_next_job(d, &d->img_head, &d->img_tail);
    if (!job) return;
    const vd_config *cfg = d->cfg;
    ingest_options io;
    ingest_options_init(&io);
    io.image_min_pixels = cfg->image_min_pixels < cfg->image_max_pixels ? cfg->image_min_pixels : cfg->image_max_pixels;
    io.image_max_pixels = cfg->image_max_pixels;
    snprintf(io.protocols, sizeof io.protocols, "%s", cfg->allowed_protocols);
    snprintf(io.device_prefix, sizeof io.device_prefix, "%s", cfg->device_prefix);
    ingest_pair *p = NULL;
    char err[512] = "";
    int rc = job->image_path ? ingest_image_load(job->image_path, &io, &p, err, sizeof err)
                             : ingest_image_decode(job->image_data, job->image_len, &io, &p, err, sizeof err);
    heartbeat(d);
    if (rc != 0) {
        job_fail(d, job, rc == INGEST_EPERM ? PROTO_E_FORBIDDEN : PROTO_E_MEDIA_ERROR, err);
        return;
    }
    vd_sctx_options o = { .cache_tokens = p->tokens + 64, .query_reserve = cfg->query_reserve_tokens,
                          .image_mode = true, .thinking = d->thinking };
    vd_sctx *ctx = NULL;
    vd_features f;
    memset(&f, 0, sizeof f);
    if (vd_sctx_create(d->m, d->tok, &o, &ctx, err, sizeof err) != 0 ||
        vd_sctx_encode(ctx, p, &f, err, sizeof err) != 0 || (heartbeat(d), vd_sctx_append(ctx, &f, err, sizeof err)) != 0) {
        ingest_pair_free(p);
        vd_features_free(&f);
        vd_sctx_destroy(ctx);
        job_fail(d, job, PROTO_E_MODEL_ERROR, err);
        return;
    }
    ingest_pair_free(p);
    vd_features_free(&f);
    heartbeat(d);
    vd_query *q = NULL;
    if (begin_query(d, ctx, job, &q) != 0) {
        vd_sctx_destroy(ctx);
        return;
    }
    d->img_job = job;
    d->img_ctx = ctx;
    d->img_q = q;
}

static bool step_image(vd_daemon *d, bool cut) {
    if (!step_query(d, NULL, d->img_job, d->img_ctx, d->img_q, cut)) return false;
    vd_sctx_destroy(d->img_ctx);
    d->img_ctx = NULL;
    d->img_q = NULL;
    d->img_job = NULL;
    return true;
}

static void drain_images(vd_daemon *d, proto_errc code, const char *msg) {
    pthread_mutex_lock(&d->mu);
    vd_job *j = d->img_head;
    d->img_head = d->img_tail = NULL;
    pthread_mutex_unlock(&d->mu);
    while (j) {
        vd_job *n = j->next;
        job_fail(d, j, code, msg);
        j = n;
    }
}

/* ---- ingest ------------------------------------------------------------------------------------- */

static bool can_ingest(vd_stream *st) {
    if (!st->ctx || !st->src) return false;
    if (st->has_held) return !st->aq;
    return atomic_load(&st->pair_ready) != 0;
}

static void after_append(vd_daemon *d, vd_stream *st, int tokens) {
    d->pairs_total++;
    pthread_mutex_lock(&st->mu);
    st->tokens_per_pair = tokens;
    pthread_mutex_unlock(&st->mu);
    update_stream_figures(st, false);
    vd_result *r = res_new(VD_RES_PAIR);
    if (r) {
        r->stream = vd_stream_ref(st);
        vd_post_result(d, r);
    }
}

/* One pair of one stream: pop, encode, append (or hold). */
static void ingest_one(vd_daemon *d, vd_stream *st) {
    char err[512] = "";
    double t0 = vd_now_s();
    if (st->has_held) {
        int rc = vd_sctx_append(st->ctx, &st->held, err, sizeof err);
        if (rc == -EAGAIN && st->aq) return;   /* still no room while the answer runs */
        if (rc == -EAGAIN) {
            /* cannot happen without a running answer (evictions then free room at once); never
             * spin on it */
            rc = -1;
            snprintf(err, sizeof err, "no room in the context");
        }
        int tokens = st->held.vo.n_tokens;
        vd_features_free(&st->held);
        st->has_held = false;
        if (rc != 0) vd_log(VD_LOG_WARNING, "stream %s: pair dropped: %s", st->id, err);
        else after_append(d, st, tokens);
        return;
    }
    if (!atomic_exchange(&st->pair_ready, 0)) return;
    ingest_pair *p = NULL;
    int pop = ingest_source_pop(st->src, &p, 0);
    if (pop == INGEST_EOF && atomic_exchange(&st->end_pending, 0))
        publish_state(d, st, st->end_state, st->end_detail);   /* every pair is in */
    if (pop != 0) return;
    atomic_store(&st->pair_ready, 1);   /* there may be more */
    vd_features f;
    int rc = vd_sctx_encode(st->ctx, p, &f, err, sizeof err);
    int tokens = p->tokens;
    uint64_t seq = p->seq;
    ingest_pair_free(p);
    heartbeat(d);
    double t1 = vd_now_s();
    if (rc != 0) {
        vd_log(VD_LOG_WARNING, "stream %s: pair not encoded: %s", st->id, err);
        return;
    }
    rc = vd_sctx_append(st->ctx, &f, err, sizeof err);
    if (rc == -EAGAIN) {
        st->held = f;
        st->has_held = true;
        return;
    }
    vd_features_free(&f);
    d->last_pair_s = vd_now_s() - t0;
    if (vd_log_enabled(VD_LOG_DEBUG))
        vd_log(VD_LOG_DEBUG, "stream %s: pair %llu (%d tokens): vision %.1f ms, prefill %.1f ms", st->id,
               (unsigned long long)seq, tokens, (t1 - t0) * 1000, (vd_now_s() - t1) * 1000);
    if (rc != 0) {
        vd_log(VD_LOG_WARNING, "stream %s: pair not appended: %s", st->id, err);
        return;
    }
    after_append(d, st, tokens);
}

/* ---- the loop ------------------------------------------------------------------------------------ */

static bool has_work_locked(vd_daemon *d) {
    if (d->img_head || d->img_job) return true;
    for (vd_stream *st = d->w_streams; st; st = st->w_next) {
        if (st->aq || st->q_head) return true;
        if (can_ingest(st)) return true;
    }
    return false;
}

static bool ctl_pending(vd_daemon *d) {
    pthread_mutex_lock(&d->mu);
    bool p = d->ctl_head != NULL;
    pthread_mutex_unlock(&d->mu);
    return p;
}

/* Active answers, round-robin: streams with a running query, then the image lane. */
static bool step_one_active(vd_daemon *d, bool cut) {
    int n = 0;
    for (vd_stream *st = d->w_streams; st; st = st->w_next) n += st->aq != NULL;
    n += d->img_q != NULL;
    if (n == 0) return false;
    int pick = (int)(d->rr++ % (unsigned)n), k = 0;
    for (vd_stream *st = d->w_streams; st; st = st->w_next) {
        if (!st->aq) continue;
        if (k++ == pick) {
            if (step_query(d, st, st->active, st->ctx, st->aq, cut)) {
                st->aq = NULL;
                st->active = NULL;
            }
            return true;
        }
    }
    step_image(d, cut);
    return true;
}

static bool any_active(vd_daemon *d) {
    if (d->img_q) return true;
    for (vd_stream *st = d->w_streams; st; st = st->w_next)
        if (st->aq) return true;
    return false;
}

static void schedule_once(vd_daemon *d) {
    /* Streams that failed to start answer their queued jobs. */
    for (vd_stream *st = d->w_streams; st; st = st->w_next)
        if (!st->ctx && st->q_head) {
            char msg[160];
            snprintf(msg, sizeof msg, "stream %s failed to start", st->id);
            drain_stream_queue(d, st, PROTO_E_NOT_FOUND, msg);
        }
    for (vd_stream *st = d->w_streams; st; st = st->w_next)
        if (st->ctx && !st->aq) start_next_query(d, st);
    if (!d->img_job) start_next_image(d);

    bool pairs = false;
    for (vd_stream *st = d->w_streams; st && !pairs; st = st->w_next) pairs = can_ingest(st);
    if (any_active(d)) {
        double budget = pairs ? fmax(d->last_pair_s, 0.005) : 0.25;
        double t0 = vd_now_s();
        do {
            step_one_active(d, false);
        } while (any_active(d) && vd_now_s() - t0 < budget && !ctl_pending(d));
    }
    /* One pair, round-robin over the streams that have one. */
    int n = 0;
    for (vd_stream *st = d->w_streams; st; st = st->w_next) n += can_ingest(st);
    if (n == 0) return;
    int pick = (int)(d->rr_ingest++ % (unsigned)n), k = 0;
    for (vd_stream *st = d->w_streams; st; st = st->w_next) {
        if (!can_ingest(st)) continue;
        if (k++ == pick) {
            ingest_one(d, st);
            break;
        }
    }
}

static void w_shutdown_begin(vd_daemon *d) {
    d->w_shutdown = true;
    d->w_deadline = vd_now_s() + d->cfg->shutdown_grace_ms / 1000.0;
    for (vd_stream *st = d->w_streams; st; st = st->w_next)
        drain_stream_queue(d, st, PROTO_E_SHUTTING_DOWN, "vigild is stopping");
    drain_images(d, PROTO_E_SHUTTING_DOWN, "vigild is stopping");
    /* Stop the sources: no more pairs. (No lock held: their callbacks take d->mu.) */
    for (vd_stream *st = d->w_streams; st; st = st->w_next)
        if (st->src && !st->src_stopped) {
            ingest_source_stop(st->src);
            st->src_stopped = true;
            /* pairs still queued are not encoded any more: the stream ends now */
            if (atomic_exchange(&st->end_pending, 0)) publish_state(d, st, st->end_state, st->end_detail);
        }
    vd_log(VD_LOG_NOTICE, "worker: stopping (running answers may take %.1f s to finish)",
           d->cfg->shutdown_grace_ms / 1000.0);
}

/* Returns true once everything is finished. */
static bool w_shutdown_progress(vd_daemon *d) {
    for (vd_stream *st = d->w_streams; st; st = st->w_next)
        if (st->q_head) drain_stream_queue(d, st, PROTO_E_SHUTTING_DOWN, "vigild is stopping");
    if (d->img_head) drain_images(d, PROTO_E_SHUTTING_DOWN, "vigild is stopping");
    if (any_active(d) && vd_now_s() < d->w_deadline) {
        step_one_active(d, false);
        return false;
    }
    /* Past the grace period: cut what still runs. */
    for (vd_stream *st = d->w_streams; st; st = st->w_next)
        if (st->aq) {
            step_until_done_cancelled(d, st, st->active, st->ctx, st->aq, true);
            st->aq = NULL;
            st->active = NULL;
        }
    if (d->img_q) {
        vd_query_cancel(d->img_q);
        while (!step_image(d, true)) {}
    }
    while (d->w_streams) {
        vd_stream *st = d->w_streams;
        d->w_streams = st->w_next;
        stream_teardown(d, st, true);
        vd_stream_unref(st);
    }
    return true;
}

static void handle_ctl(vd_daemon *d, vd_ctl *c) {
    switch (c->kind) {
    case VD_CTL_STREAM_ADD:
        if (d->w_shutdown) post_stream_result(d, VD_RES_STREAM_STARTED, c->stream, PROTO_E_SHUTTING_DOWN,
                                              "vigild is stopping", c);
        else w_stream_add(d, c);
        break;
    case VD_CTL_STREAM_REMOVE: w_stream_remove(d, c); break;
    case VD_CTL_SHUTDOWN:
        if (!d->w_shutdown) w_shutdown_begin(d);
        break;
    case VD_CTL_STALL:
        /* Test hook (VIGILD_TEST_HOOKS=1): a worker that makes no progress and no heartbeat,
         * until the daemon is asked to stop. */
        vd_log(VD_LOG_WARNING, "worker: stalling on request of the test hook");
        while (!atomic_load(&d->stop_stall)) usleep(20000);
        break;
    }
    vd_stream_unref(c->stream);
    free(c);
}

static void sample_rates(vd_daemon *d, double *last) {
    double now = vd_now_s();
    if (now - *last < 1.0) return;
    *last = now;
    for (vd_stream *st = d->w_streams; st; st = st->w_next) update_stream_figures(st, true);
}

static void *worker_main(void *arg) {
    vd_daemon *d = arg;
    double last_rates = 0;
    for (;;) {
        heartbeat(d);
        pthread_mutex_lock(&d->mu);
        while (!d->ctl_head && !d->w_shutdown && !has_work_locked(d)) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 500 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&d->cond, &d->mu, &ts);
            heartbeat(d);
            if (vd_now_s() - last_rates >= 1.0) break;
        }
        vd_ctl *c = d->ctl_head;
        d->ctl_head = d->ctl_tail = NULL;
        pthread_mutex_unlock(&d->mu);
        while (c) {
            vd_ctl *n = c->next;
            handle_ctl(d, c);
            c = n;
        }
        sample_rates(d, &last_rates);
        if (d->w_shutdown) {
            if (w_shutdown_progress(d)) break;
            continue;
        }
        schedule_once(d);
    }
    heartbeat(d);
    vd_result *r = res_new(VD_RES_WORKER_EXIT);
    if (r) vd_post_result(d, r);
    return NULL;
}

int vd_worker_start(vd_daemon *d, char *err, size_t errlen) {
    heartbeat(d);
    int rc = pthread_create(&d->worker, NULL, worker_main, d);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the compute worker thread: %s", strerror(rc));
        return -1;
    }
    d->worker_started = true;
    return 0;
}

void vd_worker_join(vd_daemon *d) {
    if (!d->worker_started) return;
    pthread_join(d->worker, NULL);
    d->worker_started = false;
}

void vd_worker_post_ctl(vd_daemon *d, vd_ctl *c) {
    c->next = NULL;
    pthread_mutex_lock(&d->mu);
    if (d->ctl_tail) d->ctl_tail->next = c;
    else d->ctl_head = c;
    d->ctl_tail = c;
    pthread_cond_signal(&d->cond);
    pthread_mutex_unlock(&d->mu);
}

void vd_worker_submit(vd_daemon *d, vd_job *j) {
    j->next = NULL;
    pthread_mutex_lock(&d->mu);
    if (j->kind == VD_JOB_IMAGE) {
        if (d->img_tail) d->img_tail->next = j;
        else d->img_head = j;
        d->img_tail = j;
    } else {
        vd_stream *st = j->stream;
        if (st->q_tail) st->q_tail->next = j;
        else st->q_head = j;
        st->q_tail = j;
    }
    pthread_cond_signal(&d->cond);
    pthread_mutex_unlock(&d->mu);
}
