/* protocol.h — vigild's versioned JSON-over-ZeroMQ protocol (v1): request parsing and
 * validation, reply/event builders, and the ZeroMQ framing and client helpers both ends share.
 * docs/protocol.md is the user-facing specification; this header is the C contract.
 *
 * Transport
 *   Requests: vigild binds a ROUTER socket; clients connect DEALER sockets and send ONE frame,
 *   the JSON request (no empty delimiter). The ROUTER sees [identity][json]. REQ clients are
 *   tolerated ([identity][""][json]; the reply keeps the delimiter) but can receive only one
 *   frame per request, so they must send "stream_tokens": false.
 *   Every request gets exactly one FINAL frame: a frame that has an "ok" member (an ok reply,
 *   an error reply, or the "done" event closing a query). Frames without "ok" ("token"
 *   events) are intermediate. Every frame carries "v": 1 and echoes the request "id" (null
 *   when the request's id could not be read).
 *   Events: vigild binds a PUB socket; each event is [topic][json] with topics
 *   "stream.<stream>", "watch.<watch>", "alert.<watch>", "daemon" (ZeroMQ prefix matching:
 *   subscribe "alert." for every alert).
 *
 * Validation policy (see docs/protocol.md): strict RFC 8259 JSON in UTF-8, top level an
 * object, unknown and duplicate keys are errors, every field type- and range-checked, defaults
 * applied from proto_limits. Never aborts on bad input. */
#ifndef VIGIL_PROTOCOL_PROTOCOL_H
#define VIGIL_PROTOCOL_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#define PROTO_VERSION 1

#define PROTO_ID_MAX     128  /* request "id": 1..128 bytes of UTF-8, no control characters */
#define PROTO_NAME_MAX   64   /* stream and watch ids: [A-Za-z0-9_.-]{1,64} */
#define PROTO_ENUM_MAX   32   /* expect.values: at most 32 values */
#define PROTO_ENUM_VALUE_MAX 64 /* each value 1..64 bytes */

/* Default endpoints of a locally running vigild (systemd RuntimeDirectory=vigil). The daemon's
 * configuration and the CLI's --endpoint may name others. */
#define PROTO_DEFAULT_ENDPOINT        "ipc:///run/vigil/vigild.sock"
#define PROTO_DEFAULT_EVENTS_ENDPOINT "ipc:///run/vigil/events.sock"

/* ------------------------------------------------------------------------------------------ */
/* Error codes: stable strings on the wire (proto_errc_name).                                 */

typedef enum proto_errc {
    PROTO_OK = 0,
    PROTO_E_BAD_JSON,            /* not well-formed JSON / not UTF-8 */
    PROTO_E_BAD_REQUEST,         /* well-formed, but a field is missing, of the wrong type or
                                    out of range, unknown or duplicated (message names it) */
    PROTO_E_UNKNOWN_OP,
    PROTO_E_UNSUPPORTED_VERSION,
    PROTO_E_TOO_LARGE,           /* message, image or JSON structure over the size limits */
    PROTO_E_LIMIT_EXCEEDED,      /* max_tokens, prompt length, number of streams/watches ... */
    PROTO_E_NOT_FOUND,
    PROTO_E_ALREADY_EXISTS,
    PROTO_E_FORBIDDEN,           /* URL protocol not allowed, image path not allowed ... */
    PROTO_E_BAD_URL,
    PROTO_E_QUEUE_FULL,
    PROTO_E_CANCELLED,
    PROTO_E_SHUTTING_DOWN,
    PROTO_E_MEDIA_ERROR,
    PROTO_E_MODEL_ERROR,
    PROTO_E_INTERNAL,
    PROTO_E_COUNT_
} proto_errc;

/* "bad_json", "bad_request", ...; "internal" for out-of-range values. */
const char *proto_errc_name(proto_errc code);
/* Returns 0 and sets *out, or -1 for an unknown name. */
int proto_errc_from_name(const char *name, proto_errc *out);

typedef struct proto_error {
    proto_errc code;
    char message[384];           /* names the field and what was expected */
    char field[96];              /* JSON path of the offending field ("sampling.top_p"), or "" */
    bool has_id;                 /* the request's id could be read: echo it */
    char id[PROTO_ID_MAX + 1];
} proto_error;

/* ------------------------------------------------------------------------------------------ */
/* Limits: filled by the daemon from its configuration. The parser enforces those marked (P);
 * the daemon enforces the others (D) and replies limit_exceeded / queue_full.                */

typedef struct proto_limits {
    size_t max_message_bytes;        /* (P) whole request frame; default 16 MiB */
    int max_depth;                   /* (P) JSON nesting; default 16, at most 64 */
    int max_json_values;             /* (P) values in one request; default 4096 */
    size_t max_prompt_bytes;         /* (P) prompt and system_prompt; default 32 KiB */
    size_t max_url_bytes;            /* (P) default 4096 */
    size_t max_path_bytes;           /* (P) image path; default 4096 */
    size_t max_image_bytes;          /* (P) decoded data_base64; default 10 MiB */
    int max_tokens;                  /* (P) upper bound of max_tokens; default 4096 */
    int default_max_tokens;          /* (P) when the request has none; default 512 */
    int max_stop_strings;            /* (P) default 8 */
    size_t max_stop_bytes;           /* (P) each stop string; default 128 */
    double default_fps;              /* (P) default 2 */
    double max_fps;                  /* (P) default 30 */
    int default_min_tokens_per_pair; /* (P) default 64 (256x256 px a frame pair) */
    int default_max_tokens_per_pair; /* (P) default 256 */
    int max_tokens_per_pair;         /* (P) upper bound; default 16384 */
    uint64_t default_cache_tokens;   /* (P) context cap when stream.add has none; default 32768 */
    uint64_t max_cache_tokens;       /* (P) default 262144 */
    uint64_t max_cache_bytes;        /* (P) default 64 GiB */
    double min_watch_interval_s;     /* (P) smallest every_seconds; default 1 */
    /* (P) comma-separated URL protocols a stream may use ("file" covers plain paths); NULL
     * allows any. Default "rtsp,rtsps,rtmp,rtmps,http,https,hls,srt,udp,rtp,tcp,v4l2":
     * network sources and cameras only, so a remote client cannot make the daemon read local
     * files; an operator adds "file" deliberately.
     * The string is not copied. */
    const char *allowed_url_schemes;
    bool allow_image_path;           /* (P) image {"path"}; default false (see above) */
    int max_streams;                 /* (D) default 16 */
    int max_watches;                 /* (D) default 64 */
    int max_queue_depth;             /* (D) queued queries/images; default 32 */
} proto_limits;

void proto_limits_default(proto_limits *lim);
/* Checks a filled struct for consistency (defaults within bounds, an image fits in a message
 * as base64 ...). Returns 0, or -1 with err naming the field. */
int proto_limits_check(const proto_limits *lim, char *err, size_t errlen);

/* ------------------------------------------------------------------------------------------ */
/* Requests                                                                                   */

typedef enum proto_op {
    PROTO_OP_NONE = 0,
    PROTO_OP_PING,
    PROTO_OP_STATUS,
    PROTO_OP_STREAM_ADD,
    PROTO_OP_STREAM_REMOVE,
    PROTO_OP_STREAM_LIST,
    PROTO_OP_QUERY,
    PROTO_OP_QUERY_CANCEL,
    PROTO_OP_WATCH_ADD,
    PROTO_OP_WATCH_REMOVE,
    PROTO_OP_WATCH_LIST,
    PROTO_OP_IMAGE,
    PROTO_OP_COUNT_
} proto_op;

/* "stream.add", ...; NULL for PROTO_OP_NONE / out of range. */
const char *proto_op_name(proto_op op);

/* Bits of proto_sampling.set: which fields the request gave. Unset fields hold the neutral
 * values below; the daemon may replace them with its configured defaults. */
enum {
    PROTO_SAMPLING_TEMPERATURE        = 1u << 0,
    PROTO_SAMPLING_TOP_K              = 1u << 1,
    PROTO_SAMPLING_TOP_P              = 1u << 2,
    PROTO_SAMPLING_MIN_P              = 1u << 3,
    PROTO_SAMPLING_REPETITION_PENALTY = 1u << 4,
    PROTO_SAMPLING_PRESENCE_PENALTY   = 1u << 5,
    PROTO_SAMPLING_SEED               = 1u << 6,
    PROTO_SAMPLING_STOP               = 1u << 7,
};

typedef struct proto_sampling {
    unsigned set;
    double temperature;           /* [0, 5]; 0 = greedy (default) */
    int top_k;                    /* [0, 1048576]; 0 = off (default) */
    double top_p;                 /* (0, 1]; 1 = off (default) */
    double min_p;                 /* [0, 1); 0 = off (default) */
    double repetition_penalty;    /* (0, 10]; 1 = off (default) */
    double presence_penalty;      /* [-2, 2]; 0 = off (default) */
    uint64_t seed;                /* [0, 2^53 - 1]; default 0 */
    char **stop;                  /* owned; n_stop strings of 1..max_stop_bytes */
    size_t n_stop;
} proto_sampling;

typedef enum proto_window_kind {
    PROTO_WINDOW_ALL = 0,         /* no window: everything in the stream's cache */
    PROTO_WINDOW_LAST,            /* {"last_seconds": s} of media time before the newest pair */
    PROTO_WINDOW_MEDIA,           /* {"from_media", "to_media"}: seconds since the stream began */
    PROTO_WINDOW_WALL,            /* {"from_wall", "to_wall"}: RFC 3339 or Unix seconds */
} proto_window_kind;

typedef struct proto_window {
    proto_window_kind kind;
    double last_seconds;          /* LAST: > 0 */
    bool has_from, has_to;        /* MEDIA / WALL: at least one; an open end is unbounded */
    double from, to;              /* MEDIA: media seconds; WALL: Unix seconds (UTC) */
} proto_window;

typedef enum proto_cache_kind {
    PROTO_CACHE_TOKENS = 0,       /* cache_tokens (also the default, from the limits) */
    PROTO_CACHE_BYTES,            /* cache_bytes: the daemon converts with the model's KV size */
} proto_cache_kind;

typedef enum proto_rtsp_transport {
    PROTO_RTSP_TCP = 0,
    PROTO_RTSP_UDP,
} proto_rtsp_transport;

typedef struct proto_stream_add {
    char stream[PROTO_NAME_MAX + 1];
    char *url;                    /* owned */
    char url_scheme[32];          /* FFmpeg protocol name: "rtsp", "file" for plain paths ... */
    double fps;                   /* (0, max_fps] */
    int min_tokens_per_pair;      /* [4, max], visual tokens a frame pair may use */
    int max_tokens_per_pair;      /* [min, limits.max_tokens_per_pair] */
    proto_cache_kind cache_kind;
    uint64_t cache_tokens;        /* CACHE_TOKENS: [1024, limits.max_cache_tokens] */
    uint64_t cache_bytes;         /* CACHE_BYTES: [1 MiB, limits.max_cache_bytes] */
    char *system_prompt;          /* owned; NULL when absent */
    /* options */
    bool loop;                    /* restart a file at its end; default false */
    bool realtime;                /* pace a file at its native rate; default false */
    double start_offset;          /* seconds into a file; >= 0; default 0 */
    proto_rtsp_transport rtsp_transport; /* default tcp */
    int decoder_threads;          /* [0, 64]; 0 = FFmpeg's choice (default) */
    int timeout_ms;               /* I/O timeout [100, 600000]; default 10000 */
} proto_stream_add;

typedef struct proto_query {
    char stream[PROTO_NAME_MAX + 1];
    char *prompt;                 /* owned, 1..max_prompt_bytes */
    proto_window window;
    int max_tokens;               /* [1, limits.max_tokens] */
    proto_sampling sampling;
    bool stream_tokens;           /* default true */
} proto_query;

typedef enum proto_expect_kind {
    PROTO_EXPECT_NONE = 0,        /* free text; no alerts */
    PROTO_EXPECT_YES_NO,          /* values {"yes","no"}; alerts on "yes" unless alert_on says */
    PROTO_EXPECT_ENUM,            /* values as given; alerts only on alert_on values */
} proto_expect_kind;

typedef struct proto_expect {
    proto_expect_kind kind;
    size_t n_values;
    char values[PROTO_ENUM_MAX][PROTO_ENUM_VALUE_MAX + 1];
    uint32_t alert_mask;          /* bit i: an answer matching values[i] raises an alert */
    bool alert_repeat;            /* false (default): alert when the matched value becomes an
                                     alerting one; true: on every alerting answer */
    double cooldown_seconds;      /* >= 0: minimum time between two alerts; default 0 */
} proto_expect;

typedef struct proto_watch_add {
    char stream[PROTO_NAME_MAX + 1];
    char watch[PROTO_NAME_MAX + 1]; /* "name"; "" when absent: the daemon assigns one */
    char *prompt;                 /* owned */
    bool on_pair;                 /* evaluate after every new frame pair ... */
    double every_seconds;         /* ... or every N seconds of wall time (exactly one of the two) */
    double window_last_seconds;   /* "window": {"last_seconds"}; 0 = whole cache */
    int max_tokens;
    proto_sampling sampling;
    proto_expect expect;
} proto_watch_add;

typedef struct proto_image {
    char *path;                   /* owned; absolute path, or NULL */
    unsigned char *data;          /* owned; decoded data_base64, or NULL */
    size_t data_len;
    char *prompt;                 /* owned */
    int max_tokens;
    proto_sampling sampling;
    bool stream_tokens;           /* default true */
} proto_image;

typedef struct proto_request {
    proto_op op;
    char id[PROTO_ID_MAX + 1];
    union {
        proto_stream_add stream_add;
        struct { char stream[PROTO_NAME_MAX + 1]; } stream_remove;
        proto_query query;
        struct { char query[PROTO_ID_MAX + 1]; } query_cancel;
        proto_watch_add watch_add;
        struct { char watch[PROTO_NAME_MAX + 1]; } watch_remove;
        struct { char stream[PROTO_NAME_MAX + 1]; } watch_list;  /* "" = every stream */
        struct { char stream[PROTO_NAME_MAX + 1]; } status;      /* "" = whole daemon */
        proto_image image;
    };
} proto_request;

/* Parses and validates one request frame. On success returns 0 and *out owns its strings
 * (release with proto_request_free). On failure returns -1, *out holds nothing to free, and
 * *err has the code, a message naming the field and what was expected, and the request id
 * when it could be read. lim may be NULL (proto_limits_default). */
int proto_parse_request(const char *bytes, size_t len, const proto_limits *lim,
                        proto_request *out, proto_error *err);
void proto_request_free(proto_request *req);

/* Builds a parse error into err (code, field, printf message). For the daemon's own
 * validation steps, so their errors read like the parser's. */
void proto_error_set(proto_error *err, proto_errc code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ------------------------------------------------------------------------------------------ */
/* Replies and events. Builders return malloc'ed NUL-terminated JSON (free with free()), or
 * NULL when out of memory. Text arguments are sanitized: invalid UTF-8 becomes U+FFFD. A
 * cJSON *body argument must be an object (or NULL); the builder takes ownership of it, moves
 * its members into the frame and frees it, also on failure. id NULL is written as null.   */

char *proto_reply_ok(const char *id, cJSON *body);
char *proto_reply_error(const char *id, proto_errc code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The error reply for a failed proto_parse_request (id echoed when it was read; includes
 * "field" when known). */
char *proto_reply_parse_error(const proto_error *err);

char *proto_event_token(const char *id, const char *text, size_t len);

typedef enum proto_finish {
    PROTO_FINISH_STOP = 0,        /* end-of-turn token */
    PROTO_FINISH_STOP_STRING,     /* one of sampling.stop matched */
    PROTO_FINISH_LENGTH,          /* max_tokens reached */
    PROTO_FINISH_CANCELLED,       /* query.cancel, or the client went away */
    PROTO_FINISH_CONTEXT,         /* the stream's context had no room for more tokens */
} proto_finish;
const char *proto_finish_name(proto_finish f);

typedef struct proto_usage {
    int64_t prompt_tokens;        /* tokens the answer attended to (prefix + window + question) */
    int64_t completion_tokens;
    int64_t cached_tokens;        /* of prompt_tokens, those already in the stream's cache */
} proto_usage;

typedef struct proto_timing {
    double queue_ms;              /* accepted -> compute started */
    double ttft_ms;               /* accepted -> first token */
    double total_ms;              /* accepted -> done */
    double tokens_per_s;          /* completion tokens / decode time */
} proto_timing;

/* The final frame of a query/image: {"v","id","ok":true,"event":"done","text",
 * "finish_reason","usage","timing"} plus "error":{"code","message"} when error is not NULL (an
 * answer cut short, e.g. by shutdown) plus the members of body (may be NULL; taken). */
char *proto_event_done(const char *id, const char *text, proto_finish finish,
                       const proto_usage *usage, const proto_timing *timing,
                       const proto_error *error, cJSON *body);

/* PUB events ------------------------------------------------------------------------------ */

/* Topic frames: "stream.<id>", "watch.<id>", "alert.<id>", "daemon". Returns the length, or
 * -1 if buf is too small. */
int proto_topic(char *buf, size_t size, const char *kind, const char *id);

typedef enum proto_stream_state {
    PROTO_STREAM_STARTING = 0,    /* added, opening the source */
    PROTO_STREAM_RUNNING,         /* frames arriving */
    PROTO_STREAM_RECONNECTING,    /* live source lost; retrying with backoff */
    PROTO_STREAM_ENDED,           /* a file reached its end (and loop is off) */
    PROTO_STREAM_FAILED,          /* gave up: detail says why */
    PROTO_STREAM_REMOVED,
} proto_stream_state;
const char *proto_stream_state_name(proto_stream_state s);

/* Generic PUB payload {"v":1,"event":event,"time":RFC 3339 now, ...body}. Body members must
 * be UTF-8 (the daemon's own data); members named v, id, ok, event or error are dropped. */
char *proto_event_pub(const char *event, cJSON *body);
/* {"event":"stream.state","stream","state","detail"(if not NULL)} */
char *proto_event_stream_state(const char *stream, proto_stream_state state, const char *detail);

typedef struct proto_watch_answer {
    const char *watch;
    const char *stream;
    const char *text;             /* the model's full answer */
    int value_index;              /* matched expect value, or -1 (no expect / no match) */
    const char *value;            /* values[value_index] or NULL */
    double media_time;            /* newest pair's media time the answer saw, seconds */
    proto_usage usage;
    proto_timing timing;
} proto_watch_answer;
/* {"event":"watch.answer","watch","stream","text","value"(string|null),"media_time","usage",
 *  "timing"} */
char *proto_event_watch_answer(const proto_watch_answer *a);
/* {"event":"alert","watch","stream","value","text","media_time"} */
char *proto_event_alert(const proto_watch_answer *a);

/* Status payloads (members of a status / stream.list / stream.add reply) --------------------- */

typedef struct proto_stream_status {
    const char *stream;
    const char *url;              /* as configured; the daemon strips credentials first */
    proto_stream_state state;
    const char *detail;           /* last error or NULL */
    double fps_target;
    double fps_in;                /* decoded frames/s from the source (recent average) */
    double pairs_per_s;           /* frame pairs encoded/s (recent average) */
    uint64_t frames_in;
    uint64_t pairs_encoded;
    uint64_t pairs_dropped;       /* live source could not keep up */
    uint64_t pairs_evicted;       /* left the context because of its cap */
    uint64_t cache_tokens_used;
    uint64_t cache_tokens_cap;
    double media_time;            /* newest pair's media time, seconds; < 0 before the first */
    double oldest_media_time;     /* oldest pair still in context; < 0 when none */
    int tokens_per_pair;          /* current visual tokens per pair */
    int watches;
    double latency_ms_p50, latency_ms_p95, latency_ms_p99; /* query total_ms; < 0 = no data */
} proto_stream_status;
/* An object with the fields above (negative "no data" values written as null). NULL on OOM. */
cJSON *proto_stream_status_json(const proto_stream_status *s);

/* ------------------------------------------------------------------------------------------ */
/* Watch expectations                                                                         */

/* Which value an answer means: ASCII case-insensitive, ignoring surrounding whitespace,
 * quotes and trailing punctuation; the answer may be the value alone or start with it and
 * go on after a non-alphanumeric character ("Yes, a person ..."). The longest matching value
 * wins. Returns the index or -1. */
int proto_expect_match(const proto_expect *e, const char *answer);
/* The instruction the daemon appends to a watch prompt so that the model answers with one of
 * the values (e.g. " Answer with exactly one of: yes, no."). "" for EXPECT_NONE. Returns the
 * length it needed (like snprintf). */
size_t proto_expect_instruction(const proto_expect *e, char *buf, size_t size);

/* ------------------------------------------------------------------------------------------ */
/* Text and time helpers                                                                      */

/* Length of the longest prefix of s[0..n) that does not end inside an incomplete UTF-8
 * sequence: stream tokens up to it, hold the rest until the next token completes it. */
size_t proto_utf8_complete_prefix(const char *s, size_t n);
/* true when s[0..n) is valid UTF-8 (no overlongs, surrogates or values over U+10FFFF). */
bool proto_utf8_valid(const char *s, size_t n);

/* RFC 3339 date-time ("2025-01-31T10:02:00Z", "...T10:02:00.25+01:00"; 't', 'z' and a space
 * separator accepted) to Unix seconds. Returns 0, or -1 if malformed or out of range. */
int proto_parse_rfc3339(const char *s, double *epoch_s);
/* Unix seconds to "YYYY-MM-DDTHH:MM:SS.mmmZ". Returns 0, or -1 if out of range or too small. */
int proto_format_rfc3339(double epoch_s, char *buf, size_t size);

/* The FFmpeg protocol a URL uses: its RFC 3986 scheme lower-cased ("rtsp", "https"), or "file"
 * when it has none (a plain path). Returns 0, or -1 when the URL is empty or has control
 * characters (err says why). */
int proto_url_scheme(const char *url, char *scheme, size_t size, char *err, size_t errlen);

/* ------------------------------------------------------------------------------------------ */
/* ZeroMQ: framing shared by vigild and the clients                                           */

/* Where a ROUTER frame came from, to send the replies back. */
typedef struct proto_envelope {
    unsigned char identity[256];
    size_t identity_len;
    bool delimiter;               /* the peer is a REQ socket: replies keep the empty frame */
} proto_envelope;

enum {
    PROTO_RECV_OK = 0,
    PROTO_RECV_AGAIN = -1,        /* nothing to read (ZMQ_DONTWAIT) or timed out */
    PROTO_RECV_BAD_FRAMING = -2,  /* drained; env valid: reply bad_request to it */
    PROTO_RECV_TOO_LARGE = -3,    /* drained; env valid: reply too_large to it */
    PROTO_RECV_ERROR = -4,        /* socket error (errno set; ETERM when shutting down) */
};

/* Receives one request from a ROUTER socket: [identity]([""])[json]. flags: 0 or ZMQ_DONTWAIT.
 * *payload is malloc'ed and NUL-terminated (free()). A payload over max_bytes is dropped. */
int proto_router_recv(void *router, int flags, size_t max_bytes, proto_envelope *env,
                      char **payload, size_t *len);
/* Sends one frame to the peer of env. flags: 0 or ZMQ_DONTWAIT. Returns 0 or -1 (errno;
 * EHOSTUNREACH when the peer is gone and ZMQ_ROUTER_MANDATORY is set). */
int proto_router_send(void *router, const proto_envelope *env, const char *payload, size_t len,
                      int flags);

/* CURVE keys as Z85 text (40 characters). */
#define PROTO_Z85_KEY_LEN 40
typedef struct proto_curve_keys {
    char server_public[PROTO_Z85_KEY_LEN + 1];
    char client_public[PROTO_Z85_KEY_LEN + 1];
    char client_secret[PROTO_Z85_KEY_LEN + 1];
} proto_curve_keys;

/* New CURVE key pair. Returns 0 or -1 with err (libzmq without CURVE support). */
int proto_curve_keypair(char public_z85[PROTO_Z85_KEY_LEN + 1],
                        char secret_z85[PROTO_Z85_KEY_LEN + 1], char *err, size_t errlen);
/* Public key of a secret key. Returns 0 or -1 with err. */
int proto_curve_public(const char *secret_z85, char public_z85[PROTO_Z85_KEY_LEN + 1],
                       char *err, size_t errlen);
/* true when key is 40 characters of the Z85 alphabet. */
bool proto_curve_key_valid(const char *key);

/* true for inproc://, ipc://, and tcp:// on 127.0.0.0/8, ::1, "localhost" or the "lo"
 * interface. false for anything else, wildcards and malformed endpoints included. */
bool proto_endpoint_is_local(const char *endpoint);

/* Client ---------------------------------------------------------------------------------- */

typedef struct proto_client proto_client;

/* Connects a DEALER socket (own ZeroMQ context) to endpoint; with keys, as a CURVE client.
 * Connecting does not wait for the daemon: a missing daemon shows up as a timeout. */
proto_client *proto_client_connect(const char *endpoint, const proto_curve_keys *keys,
                                   char *err, size_t errlen);
/* The same on a caller's ZeroMQ context (needed for inproc:// endpoints, which only connect
 * within one context). zmq_ctx must outlive the client; NULL behaves like proto_client_connect. */
proto_client *proto_client_connect_ctx(void *zmq_ctx, const char *endpoint,
                                       const proto_curve_keys *keys, char *err, size_t errlen);
void proto_client_close(proto_client *c);

/* Called for each intermediate frame (token events) of a request. Return nonzero to stop
 * waiting (proto_client_request then returns -ECANCELED; send query.cancel to stop the
 * daemon's work). frame is the parsed JSON, owned by the caller of the callback. */
typedef int (*proto_frame_fn)(void *user, const cJSON *frame);

/* Sends request_json (must be an object with a string "id") and receives frames with that id
 * until the final one (the frame with "ok"), which is returned in *final (cJSON_Delete it).
 * Frames of other ids (late replies of abandoned requests) are skipped; a final frame with
 * "id": null is taken as this request's (the daemon could not read the id). timeout_ms bounds
 * the wait for each frame, not the whole answer (< 0: wait forever).
 * Returns 0, or a negative errno: -ETIMEDOUT (no frame in time), -ECANCELED (callback),
 * -EINTR (a signal interrupted the wait: the CLI's Ctrl-C), -EINVAL (request_json unusable),
 * -EPROTO (a frame was not a JSON object), -EIO (socket error), -ENOMEM; err says which, with
 * a hint on timeouts (is vigild running? CURVE handshake rejected?). */
int proto_client_request(proto_client *c, const char *request_json, int timeout_ms,
                         proto_frame_fn on_frame, void *user, cJSON **final,
                         char *err, size_t errlen);

/* Lower level: send one frame; receive one frame (malloc'ed NUL-terminated, free()). Same
 * return conventions as proto_client_request. */
int proto_client_send(proto_client *c, const char *json, size_t len, int timeout_ms,
                      char *err, size_t errlen);
int proto_client_recv(proto_client *c, int timeout_ms, char **json, size_t *len,
                      char *err, size_t errlen);

/* Events subscriber ----------------------------------------------------------------------- */

typedef struct proto_subscriber proto_subscriber;

/* SUB socket on endpoint subscribed to the topic prefixes given (none: everything). */
proto_subscriber *proto_subscriber_connect(const char *endpoint, const proto_curve_keys *keys,
                                           const char *const *topics, size_t n_topics,
                                           char *err, size_t errlen);
proto_subscriber *proto_subscriber_connect_ctx(void *zmq_ctx, const char *endpoint,
                                               const proto_curve_keys *keys,
                                               const char *const *topics, size_t n_topics,
                                               char *err, size_t errlen);
void proto_subscriber_close(proto_subscriber *s);
/* Receives one event. *topic and *json are malloc'ed NUL-terminated (free()); *event (if not
 * NULL) gets the parsed JSON (cJSON_Delete). Returns 0, -ETIMEDOUT, -EPROTO (a malformed event
 * was dropped) or -EIO. */
int proto_subscriber_recv(proto_subscriber *s, int timeout_ms, char **topic, char **json,
                          cJSON **event, char *err, size_t errlen);

#endif
