/* daemon.h — vigild, the daemon layer's contract.
 *
 * Four parts:
 *   1. Logging (vd_log): one line per event on stderr, syslog "<N>" prefixes under journald.
 *   2. Configuration (vd_config): defaults, then the JSON file (--config), then command-line
 *      flags (flags win). Errors name the file, the key and what was expected.
 *   3. The stream context (vd_sctx): a stream's KV cache, extended one frame pair at a time and
 *      forked for questions. It is plain single-threaded code (the daemon's compute worker owns
 *      every context); tests drive it in-process.
 *   4. The daemon itself (vd_daemon_run): libuv loop + ZeroMQ + compute worker (daemon/server.c,
 *      daemon/worker.c).
 *
 * The cache of a stream:
 *   [prefix: (<|im_start|>system\n...<|im_end|>\n) <|im_start|>user\n]
 *   [segment per frame pair: "<t seconds>" <|vision_start|> <|video_pad|> x N <|vision_end|>] ...
 * A segment is appended when its pair has been encoded; nothing in the cache is ever recomputed.
 * A question forks the cache at its end: "question<|im_end|>\n<|im_start|>assistant\n" and the
 * answer go into spare slots that are released afterwards. Slots are reused without compaction;
 * old segments are evicted when the stream's cap is reached (the prefix stays); when positions
 * near the model's limit the keys of the remaining segments are re-rotated back (model_kv_shift)
 * so that a stream runs indefinitely in constant memory. */
#ifndef VIGIL_DAEMON_DAEMON_H
#define VIGIL_DAEMON_DAEMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ingest/ingest.h"
#include "model/model.h"
#include "protocol/protocol.h"

#define VD_VERSION "0.1.0"

/* ------------------------------------------------------------------------------------------ */
/* Logging                                                                                    */

/* syslog levels (the "<N>" prefix journald reads). */
typedef enum vd_log_level {
    VD_LOG_ERR = 3,
    VD_LOG_WARNING = 4,
    VD_LOG_NOTICE = 5,
    VD_LOG_INFO = 6,
    VD_LOG_DEBUG = 7,
} vd_log_level;

typedef enum vd_log_format {
    VD_LOG_FORMAT_AUTO = 0,       /* journal when JOURNAL_STREAM names our stderr, else plain */
    VD_LOG_FORMAT_PLAIN,          /* "2025-01-31T10:02:00.123Z warning message" */
    VD_LOG_FORMAT_JOURNAL,        /* "<4>message" */
} vd_log_format;

/* Process-wide settings (set once at start-up, before threads exist). */
void vd_log_setup(vd_log_level max_level, vd_log_format format);
/* Thread-safe; one write(2) per line; newlines in the message are replaced by spaces. */
void vd_log(vd_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void vd_logv(vd_log_level level, const char *fmt, va_list ap);
bool vd_log_enabled(vd_log_level level);
/* "err", "warning", "notice", "info", "debug" (also "error", "warn"). 0 or -1. */
int vd_log_level_parse(const char *s, vd_log_level *out);
const char *vd_log_level_name(vd_log_level level);

/* ------------------------------------------------------------------------------------------ */
/* Configuration                                                                              */

/* One stream listed in the configuration file: started at launch, re-read on SIGHUP. */
typedef struct vd_stream_spec {
    proto_request req;            /* op PROTO_OP_STREAM_ADD, validated like a client's request */
    char *canonical;              /* the stream's JSON object, canonical text: compared on
                                     reload to decide "unchanged" */
} vd_stream_spec;

typedef struct vd_config {
    char *config_path;            /* --config; NULL when none (reload then only logs) */
    char *model_dir;              /* checkpoint folder (required) */
    model_compute compute;        /* "bf16" (default) or "f32" */
    int threads;                  /* math threads; 0 = one per online CPU */
    char *endpoint;               /* ROUTER, requests */
    char *events_endpoint;        /* PUB, events */

    proto_limits limits;          /* per-stream defaults, message/prompt/token/queue limits */
    char *allowed_protocols;      /* comma list (FFmpeg protocol names; "file" allows paths) */
    char *device_prefix;          /* V4L2 device path prefix */

    uint64_t max_total_cache_bytes; /* all streams' KV caches together; 0 = unlimited */
    int query_reserve_tokens;     /* slots per stream for a question + its answer */
    int ingest_headroom_pairs;    /* extra pair-sized slot blocks so ingest runs during queries */
    int position_limit;           /* shift positions before this; 0 = max_position_embeddings
                                     (lower values exist to test the shift) */
    long image_max_pixels;        /* one-off image queries: smart_resize budget */
    long image_min_pixels;
    int ingest_queue_pairs;       /* per-stream ingest queue length */

    char *curve_secret_key;       /* Z85 server secret; NULL = no CURVE */
    char **curve_client_keys;     /* Z85 public keys allowed to connect */
    int n_curve_client_keys;

    vd_log_level log_level;
    vd_log_format log_format;
    char *system_prompt;          /* default system prompt of streams that give none; NULL */
    int thinking;                 /* answers open with "<think>\n": -1 auto (the checkpoint's chat
                                     template says), 0 no, 1 yes */

    int shutdown_grace_ms;        /* running queries may finish within this on SIGTERM */
    int status_interval_ms;       /* sd_notify STATUS= and rate sampling period */
    int watchdog_stall_ms;        /* worker heartbeat older than this stops WATCHDOG=1 */
    bool test_hooks;              /* VIGILD_TEST_HOOKS=1 in the environment (test-only) */

    vd_stream_spec *streams;      /* from the configuration file */
    int n_streams;
} vd_config;

/* Fills defaults (everything except model_dir). Endpoints: ipc://$RUNTIME_DIRECTORY/vigild.sock
 * and .../events.sock when RUNTIME_DIRECTORY is set (systemd), else protocol.h's defaults. */
int vd_config_init(vd_config *c, char *err, size_t errlen);
void vd_config_free(vd_config *c);

/* Applies a configuration file's JSON text (path used in messages). Unknown keys are errors. */
int vd_config_apply_json(vd_config *c, const char *json_text, const char *path,
                         char *err, size_t errlen);
/* Reads and applies a configuration file. */
int vd_config_load_file(vd_config *c, const char *path, char *err, size_t errlen);

/* Command line. Returns 0 to run, 1 when --help/--version printed something (exit 0),
 * -1 on an error (message in err). The file named by --config is loaded first, then the
 * other flags are applied on top. */
int vd_config_from_args(vd_config *c, int argc, char **argv, char *err, size_t errlen);
/* Final consistency checks (model given, limits, CURVE required for non-local endpoints ...). */
int vd_config_validate(const vd_config *c, char *err, size_t errlen);
/* Reads only the "streams" list of a configuration file (SIGHUP); replaces the out array and count. */
int vd_config_load_streams(const vd_config *base, const char *path, vd_stream_spec **out,
                           int *n, char *err, size_t errlen);
void vd_stream_specs_free(vd_stream_spec *s, int n);
/* The --help text. */
void vd_config_usage(FILE *f);

/* ------------------------------------------------------------------------------------------ */
/* Stream context                                                                             */

typedef struct vd_sctx vd_sctx;

typedef struct vd_sctx_options {
    int cache_tokens;             /* cap of prefix + segments, in tokens (slots) */
    int query_reserve;            /* slots for a question + its answer */
    int ingest_headroom;          /* extra slots for pairs appended while a query runs */
    int position_limit;           /* 0 = the model's max_position_embeddings */
    const char *system_prompt;    /* NULL or "": no system turn */
    bool image_mode;              /* one-off image context: no timestamps, image pads */
    bool thinking;                /* Thinking checkpoint: answers open with "<think>\n" */
} vd_sctx_options;

/* A frame pair after the vision tower: what vd_sctx_append needs. */
typedef struct vd_features {
    model_grid grid;              /* (1, h, w) patches */
    model_vision_out vo;          /* merged embeddings + DeepStack features */
    uint64_t seq;
    double t0, t1, timestamp;     /* media time (s) */
    double wall;                  /* unix time of the frames (s) */
    bool is_image;
} vd_features;

/* Creates the context: allocates the KV cache (cache_tokens + query_reserve + ingest_headroom
 * slots) and prefills the prefix. m and tok must outlive it. */
int vd_sctx_create(model *m, const tokenizer *tok, const vd_sctx_options *opt, vd_sctx **out,
                   char *err, size_t errlen);
/* Frees the context; a query still running on it is ended and freed too. NULL is fine. */
void vd_sctx_destroy(vd_sctx *s);

/* Patchifies and vision-encodes a pair (no change to the cache). */
int vd_sctx_encode(vd_sctx *s, const ingest_pair *p, vd_features *out, char *err, size_t errlen);
void vd_features_free(vd_features *f);

/* Appends one encoded pair as a segment (timestamp text + vision block), evicting the oldest
 * segments first when the cap would be exceeded and shifting positions when they near the limit.
 * While a query runs, its slots are hidden from this prefill and the new segment is hidden from
 * the query; segments evicted meanwhile stay visible to the query until it ends.
 * Returns 0, -EAGAIN when there is no free slot for the pair until the running query ends
 * (nothing changed), or -1 on error. */
int vd_sctx_append(vd_sctx *s, const vd_features *f, char *err, size_t errlen);

typedef struct vd_segment_info {
    uint64_t seq;
    int n_tokens;
    int pos_start, pos_next;      /* MRoPE positions (after any shifts) */
    double t0, t1, timestamp, wall;
    bool zombie;                  /* evicted, kept only for the running query */
} vd_segment_info;

typedef struct vd_sctx_stats {
    int prefix_tokens;
    int segments;                 /* live segments (not zombies) */
    int tokens_used;              /* prefix + live segments: compared with cache_tokens */
    int cache_tokens;
    int capacity;                 /* slots in the KV cache */
    int next_pos;
    uint64_t pairs_appended;
    uint64_t pairs_evicted;
    uint64_t shifts;              /* position shifts done */
    int64_t shifted_total;        /* sum of |delta| */
    double oldest_media, newest_media;   /* < 0 when no segment */
    double oldest_wall, newest_wall;
    size_t kv_bytes;              /* capacity * bytes per slot */
} vd_sctx_stats;

void vd_sctx_get_stats(const vd_sctx *s, vd_sctx_stats *st);
int vd_sctx_segment_count(const vd_sctx *s);     /* live + zombie */
/* Segment i (oldest first), 0 or -1 out of range. */
int vd_sctx_segment(const vd_sctx *s, int i, vd_segment_info *out);
/* Slots of segment i: writes up to cap slot indices, returns the count (tests). */
int vd_sctx_segment_slots(const vd_sctx *s, int i, int32_t *slots, int cap);
/* Token ids of segment i (timestamp text, vision start, pads, vision end) into ids; returns the
 * count or -1. Prefix ids likewise (tests build one-shot references from these). */
int vd_sctx_segment_ids(const vd_sctx *s, int i, const int32_t **ids);
int vd_sctx_prefix_ids(const vd_sctx *s, const int32_t **ids);
model_kv *vd_sctx_kv(vd_sctx *s);
/* Approximate size of a context with these options in bytes (for memory caps). */
size_t vd_sctx_bytes_for(const model *m, const vd_sctx_options *opt);

/* Queries --------------------------------------------------------------------------------- */

typedef struct vd_query vd_query;

typedef struct vd_query_params {
    const char *prompt;
    proto_window window;          /* kind ALL: everything cached */
    int max_tokens;               /* >= 1 */
    model_sampling sampling;
    const char *const *stop;      /* stop strings (not included in the answer) */
    int n_stop;
    bool keep_logits;             /* keep each step's raw logits (tests) */
} vd_query_params;

/* Streaming output: newly final text (never cuts UTF-8 or a possible stop string). Return
 * nonzero to cancel. */
typedef int (*vd_text_fn)(void *ctx, const char *text, size_t len);

/* Forks the stream at its current end: tokenizes the question, picks the segments of the
 * window, reserves slots. At most one query per context at a time. A window without frames
 * leaves only the prefix visible. The prompt is plain text: special-token text in it stays
 * text. On failure *code says why (limit_exceeded: prompt too long for the reserve; ...). */
int vd_query_begin(vd_sctx *s, const vd_query_params *p, vd_query **out, proto_errc *code,
                   char *err, size_t errlen);
/* One unit of work: the question's prefill (and first token), or one decode step.
 * Returns 1 when more steps follow, 0 when the answer is complete, -1 on error. */
int vd_query_step(vd_sctx *s, vd_query *q, vd_text_fn on_text, void *ctx, char *err,
                  size_t errlen);
/* Stops before the next step (finish reason cancelled). */
void vd_query_cancel(vd_query *q);
/* Releases the query's slots and the zombie segments, restores the stream's view. Then frees q. */
void vd_query_end(vd_sctx *s, vd_query *q);

typedef struct vd_query_result {
    const char *text;             /* full answer so far (stop string cut off) */
    size_t text_len;
    proto_finish finish;          /* valid once done */
    bool done;
    int n_ids;
    const int32_t *ids;           /* generated ids (incl. a final eos) */
    proto_usage usage;
    int steps;                    /* forward calls made */
    int n_logits;                 /* keep_logits: rows kept */
    const float *logits;          /* keep_logits: [n_logits, vocab] raw logits before sampling */
    double media_time;            /* newest visible pair's timestamp (media s), -1: none */
    int window_segments;          /* segments visible to the query */
} vd_query_result;
void vd_query_get_result(const vd_query *q, vd_query_result *r);
/* The question's token ids (user text + end of turn + assistant opening). Returns the count. */
int vd_query_prompt_ids(const vd_query *q, const int32_t **ids);
/* Positions of the question's first token and of the next token (tests). */
void vd_query_positions(const vd_query *q, int *first, int *next);

/* ------------------------------------------------------------------------------------------ */
/* The daemon                                                                                 */

/* Runs vigild with a validated configuration until SIGTERM/SIGINT (returns 0) or a fatal
 * start-up error (returns 1 with a logged reason). Takes ownership of nothing. */
int vd_daemon_run(vd_config *cfg);

#endif
