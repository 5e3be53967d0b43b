/* vd_internal.h — what the event loop (server.c) and the compute worker (worker.c) share.
 * Not a public header.
 *
 * Threads:
 *   loop thread   libuv: ZeroMQ sockets, timers, signals, sd_notify. Never computes.
 *   worker thread owns the model, every stream context and every ingest source's lifetime.
 *   source threads (one per stream, inside ingest/) call on_state/on_pair.
 *   ZAP thread    answers libzmq's CURVE authentication requests (only with CURVE).
 * Loop -> worker: control messages (vd_ctl) and jobs, on queues under d->mu + d->cond.
 * Worker/sources -> loop: results (vd_result) on a queue under d->res_mu + uv_async_send.
 * The worker never touches a socket; the loop never touches a model or a source. */
#ifndef VIGIL_DAEMON_VD_INTERNAL_H
#define VIGIL_DAEMON_VD_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "daemon/daemon.h"

#define VD_LAT_RING 512

typedef struct vd_daemon vd_daemon;
typedef struct vd_stream vd_stream;

/* ---- jobs: answers computed by the worker -------------------------------------------------- */

typedef enum vd_job_kind {
    VD_JOB_QUERY = 0,             /* a client's query on a stream */
    VD_JOB_IMAGE,                 /* a client's one-off image question */
    VD_JOB_WATCH,                 /* a standing watch's evaluation (answer goes to PUB) */
} vd_job_kind;

typedef struct vd_job {
    vd_job_kind kind;
    _Atomic int cancel;           /* query.cancel, client gone, stream removed */
    _Atomic int client_gone;      /* no frame can reach the client any more */
    bool started;                 /* the worker began computing it */
    proto_envelope env;           /* QUERY/IMAGE: the client */
    char id[PROTO_ID_MAX + 1];    /* request id (QUERY/IMAGE) */
    vd_stream *stream;            /* QUERY/WATCH: reference held */
    /* what to compute (owned copies) */
    char *prompt;
    proto_window window;
    int max_tokens;
    model_sampling sampling;
    char **stop;
    int n_stop;
    bool stream_tokens;
    /* IMAGE input */
    char *image_path;
    unsigned char *image_data;
    size_t image_len;
    /* WATCH */
    char watch[PROTO_NAME_MAX + 1];
    uint64_t watch_serial;        /* tells a removed-and-re-added watch apart */
    /* timing (monotonic seconds) */
    double t_accepted, t_started, t_first, t_done;
    /* result (filled by the worker for WATCH answers) */
    char *answer;
    proto_finish finish;
    proto_usage usage;
    double media_time;
    bool skipped;                 /* WATCH: nothing to look at yet */
    char error[384];
    proto_errc error_code;
    /* links */
    struct vd_job *next;          /* worker queue */
    struct vd_job *reg_next;      /* loop registry */
} vd_job;

void vd_job_free(vd_job *j);

/* ---- streams ---------------------------------------------------------------------------------- */

struct vd_stream {
    _Atomic int refs;
    vd_daemon *d;
    char id[PROTO_NAME_MAX + 1];
    char *url;                    /* as given (for the source) */
    char *url_display;            /* credentials stripped */
    proto_request req;            /* the stream.add request (owned) */
    bool from_config;
    char *canonical;              /* config streams: for SIGHUP comparisons */
    int cache_tokens;
    double fps_target;

    /* loop side */
    bool add_pending;             /* the stream.add reply waits for the source to open */
    bool has_add_env;
    proto_envelope add_env;
    char add_id[PROTO_ID_MAX + 1];
    double add_t;                 /* when the worker started the source (reply deadline) */
    vd_stream *reg_next;          /* loop registry */
    int n_watches;

    /* worker side (only the worker thread touches these, except q_* under d->mu) */
    ingest_source *src;
    vd_sctx *ctx;
    vd_job *q_head, *q_tail;      /* queued jobs (under d->mu) */
    vd_job *active;
    vd_query *aq;
    vd_features held;             /* encoded pair waiting for slots (a query runs) */
    bool has_held;
    bool src_stopped;
    vd_stream *w_next;            /* worker list */
    double rate_t;                /* last rate sample */
    uint64_t rate_frames, rate_pairs;

    _Atomic int pair_ready;       /* set by the source thread */
    /* The source ended or failed: the stream shows it once its queued pairs are in the context
     * (a client that waits for "ended" then asks sees the whole input). end_state/end_detail
     * are written by the source thread before end_pending is set. */
    _Atomic int end_pending;
    proto_stream_state end_state;
    char end_detail[256];

    /* shared figures (under mu) */
    pthread_mutex_t mu;
    proto_stream_state state;
    char detail[256];
    uint64_t frames_in, pairs_encoded, pairs_dropped, pairs_evicted, queries_served, shifts;
    uint64_t cache_used, cache_cap;
    size_t kv_bytes;
    double media_time, oldest_media;
    int tokens_per_pair;
    double fps_in, pairs_per_s;
    double lat_total[VD_LAT_RING], lat_ttft[VD_LAT_RING];
    int lat_n, lat_i;
};

vd_stream *vd_stream_ref(vd_stream *s);
void vd_stream_unref(vd_stream *s);

/* ---- control messages loop -> worker ---------------------------------------------------------- */

typedef enum vd_ctl_kind {
    VD_CTL_STREAM_ADD = 0,
    VD_CTL_STREAM_REMOVE,
    VD_CTL_SHUTDOWN,
    VD_CTL_STALL,                 /* test hook: stop making progress (watchdog test) */
} vd_ctl_kind;

typedef struct vd_ctl {
    vd_ctl_kind kind;
    vd_stream *stream;            /* reference held */
    bool has_env;
    proto_envelope env;
    char id[PROTO_ID_MAX + 1];
    struct vd_ctl *next;
} vd_ctl;

/* ---- results worker/sources -> loop ----------------------------------------------------------- */

typedef enum vd_result_kind {
    VD_RES_FRAME = 0,             /* send json to env (final: then finish job) */
    VD_RES_PUB,                   /* publish json under topic */
    VD_RES_STREAM_STATE,          /* a source changed state */
    VD_RES_STREAM_STARTED,        /* worker created context + source (or failed: code != OK) */
    VD_RES_STREAM_REMOVED,        /* worker freed the stream; reply to env */
    VD_RES_PAIR,                  /* a pair was appended to stream */
    VD_RES_WATCH_DONE,            /* job (a watch evaluation) finished */
    VD_RES_WORKER_EXIT,
} vd_result_kind;

typedef struct vd_result {
    vd_result_kind kind;
    bool has_env;
    proto_envelope env;
    char *json;
    char topic[PROTO_NAME_MAX + 16];
    vd_job *job;                  /* FRAME (final) / WATCH_DONE: handed back to the loop */
    bool final;
    vd_stream *stream;            /* reference held (STATE/STARTED/REMOVED/PAIR) */
    proto_stream_state state;
    char detail[256];
    proto_errc code;
    char id[PROTO_ID_MAX + 1];
    struct vd_result *next;
} vd_result;

/* ---- watches (loop only) ---------------------------------------------------------------------- */

typedef struct vd_watch {
    char name[PROTO_NAME_MAX + 1];
    vd_stream *stream;            /* reference held */
    proto_request req;            /* watch.add (owned) */
    char *prompt;                 /* prompt + expect instruction */
    uint64_t serial;
    uv_timer_t *timer;            /* every_seconds; NULL for on_pair */
    bool pending;                 /* an evaluation is queued or running */
    int last_value;
    double last_alert;            /* monotonic s; < 0 none */
    double last_answer_wall;      /* unix s; < 0 none */
    uint64_t evaluations, alerts, skipped;
    struct vd_watch *next;
} vd_watch;

/* ---- the daemon -------------------------------------------------------------------------------- */

struct vd_daemon {
    vd_config *cfg;
    checkpoint *ck;
    model *m;
    tokenizer *tok;
    const model_config *mcfg;
    size_t kv_bytes_per_slot;
    char model_name[256];
    bool thinking;                /* answers open with "<think>\n" */
    double t_start;

    /* worker */
    pthread_t worker;
    bool worker_started;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    vd_ctl *ctl_head, *ctl_tail;
    vd_job *img_head, *img_tail;  /* under mu */
    vd_stream *w_streams;         /* worker thread only */
    vd_job *img_job;              /* worker: running image job */
    vd_sctx *img_ctx;
    vd_query *img_q;
    _Atomic int64_t heartbeat_ms;
    _Atomic int stop_stall;
    bool w_shutdown;
    double w_deadline;
    unsigned rr;                  /* round-robin cursor of answers */
    unsigned rr_ingest;           /* round-robin cursor of pair ingest */
    double last_pair_s;           /* duration of the last pair's work */
    uint64_t pairs_total, queries_total;

    /* results */
    pthread_mutex_t res_mu;
    vd_result *res_head, *res_tail;
    uv_async_t async;

    /* loop */
    uv_loop_t loop;
    uv_poll_t poll;
    uv_signal_t sig_term, sig_int, sig_hup, sig_usr1;
    uv_timer_t status_timer, watchdog_timer;
    bool watchdog_on;
    void *zctx, *router, *pub;
    void *zap;                    /* CURVE authentication handler (zap.c) or NULL */
    vd_stream *streams;
    int n_streams;
    vd_job *jobs;                 /* client jobs not yet finished */
    int n_jobs;
    vd_watch *watches;
    int n_watches;
    uint64_t watch_seq;
    bool shutting_down;
    bool loop_closing;
    double last_status;
    int exit_code;
    uint64_t requests, bad_requests;
};

/* worker.c */
int vd_worker_start(vd_daemon *d, char *err, size_t errlen);
void vd_worker_join(vd_daemon *d);
void vd_worker_post_ctl(vd_daemon *d, vd_ctl *c);
/* Queues a job (QUERY/WATCH on its stream, IMAGE on the image lane). */
void vd_worker_submit(vd_daemon *d, vd_job *j);
int64_t vd_now_ms(void);
double vd_now_s(void);

/* server.c (any thread) */
void vd_post_result(vd_daemon *d, vd_result *r);

/* zap.c */
void *vd_zap_start(void *zmq_ctx, char *const *client_keys, int n, char *err, size_t errlen);
void vd_zap_join(void *zap);

/* util */
bool vd_list_has(const char *list, const char *name);
char *vd_url_strip_credentials(const char *url);
void vd_percentiles(const double *ring, int n, double *p50, double *p95, double *p99);
model_sampling vd_sampling_from_proto(const proto_sampling *p);

#endif
