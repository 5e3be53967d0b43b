/* ingest.h — the ingest layer's contract: video sources in, timestamped frame pairs out.
 *
 * A source (file, RTSP camera, HTTP/HLS, UDP/TCP MPEG-TS, V4L2 device, still image, numbered
 * image sequence) runs on its own thread, blocking inside FFmpeg behind an interrupt callback
 * (I/O timeout, shutdown). Frames are sampled by presentation time at the target fps (or, for
 * a whole file in offline use, exactly as the upstream Qwen3-VL video processor samples it),
 * converted to RGB24, resized with the torch-matching antialiased bicubic to the pair's
 * smart_resize size (multiples of 32) and paired (temporal_patch_size 2). Pairs wait in a
 * bounded queue: a live source drops the oldest waiting pair when the consumer falls behind, a
 * file source blocks (backpressure) and loses nothing.
 *
 * Media time = seconds since the stream started, monotonic and continuous across timestamp
 * discontinuities, MPEG-TS wrap-around, reconnects and file loops.
 *
 * Thread safety: every ingest_source_* call may be made from any thread except that
 * ingest_source_destroy must not race other calls on the same source, and callbacks run on
 * the source's thread (they must be quick and must not stop/destroy their own source).
 * The pure functions (smart_resize, sampling plan, resizer) are reentrant.
 *
 * Errors: functions return 0 or a negative INGEST_E* code and write a message naming the
 * source/field and what was expected into the caller's err buffer (may be NULL). */
#ifndef VIGIL_INGEST_INGEST_H
#define VIGIL_INGEST_INGEST_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- constants ---------------------------------------------------------------------- */

#define INGEST_PATCH_SIZE 16
#define INGEST_MERGE_SIZE 2
#define INGEST_FACTOR 32            /* patch 16 x merge 2: one merged token = 32x32 px */
#define INGEST_TOKEN_PIXELS 1024    /* pixels per merged token; max_pixels = tokens * 1024 */
#define INGEST_MAX_ASPECT 200.0     /* smart_resize refuses longer/shorter side > 200 */

/* Qwen defaults. Per-pair (live/PTS sampling): qwen-vl-utils VIDEO_MIN/MAX_PIXELS per frame. */
#define INGEST_DEFAULT_FPS 2.0
#define INGEST_DEFAULT_MIN_PIXELS (128L * 1024)
#define INGEST_DEFAULT_MAX_PIXELS (768L * 1024)
/* Whole-clip budget of transformers' Qwen3VLVideoProcessor (t*h*w), video_preprocessor_config. */
#define INGEST_DEFAULT_CLIP_MIN_PIXELS 4096L
#define INGEST_DEFAULT_CLIP_MAX_PIXELS 25165824L
#define INGEST_DEFAULT_MIN_FRAMES 4
#define INGEST_DEFAULT_MAX_FRAMES 768
/* Still images: transformers Qwen2VLImageProcessor size {shortest_edge, longest_edge}. */
#define INGEST_DEFAULT_IMAGE_MIN_PIXELS 65536L
#define INGEST_DEFAULT_IMAGE_MAX_PIXELS 16777216L

/* Default protocol allow-list: network sources and V4L2 only. No file, concat, subfile,
 * data, pipe, fd, cache, async: a remote client must not make the daemon read local files.
 * HLS playlists need http/https (and tcp/tls below them); "crypto" is the decryption layer
 * of AES-128 HLS and only ever wraps another protocol that must itself be allowed. */
#define INGEST_DEFAULT_PROTOCOLS \
    "rtsp,rtsps,rtp,srtp,udp,tcp,tls,http,https,httpproxy,hls,crypto,srt,rtmp,rtmps,v4l2"
#define INGEST_DEFAULT_DEVICE_PREFIX "/dev/video"

/* ---- error codes (negative errno style) --------------------------------------------- */

#define INGEST_EINVAL (-EINVAL)        /* bad argument or option */
#define INGEST_EPERM (-EPERM)          /* protocol/device not allowed by the operator */
#define INGEST_ENOMEM (-ENOMEM)
#define INGEST_EIO (-EIO)              /* open/decode failure */
#define INGEST_EAGAIN (-EAGAIN)        /* pop: nothing yet (timeout / empty) */
#define INGEST_ESTATE (-EALREADY)      /* wrong lifecycle state (e.g. started twice) */
#define INGEST_EOF (-10001)            /* pop: source finished and queue drained */

/* ---- smart_resize ------------------------------------------------------------------- */

/* Which upstream implementation's image rule to follow. They differ only when a side rounds
 * to 0 multiples of 32 (transformers then scales up from 0; qwen-vl-utils clamps to 32). */
typedef enum ingest_resize_rule {
    INGEST_RULE_TRANSFORMERS = 0,   /* transformers Qwen2VLImageProcessor smart_resize */
    INGEST_RULE_QWEN_VL_UTILS = 1,  /* qwen-vl-utils smart_resize (h' = max(32, ...)) */
} ingest_resize_rule;

/* Image smart_resize, factor 32, Python round-half-to-even. *out_h, *out_w are multiples of 32.
 * Errors: non-positive sizes, min > max, aspect ratio > 200. */
int ingest_smart_resize_image(int height, int width, long min_pixels, long max_pixels,
                              ingest_resize_rule rule, int *out_h, int *out_w,
                              char *err, size_t errlen);

/* transformers Qwen3-VL video smart_resize: the budget applies to num_frames*h*w (temporal
 * factor 2). Errors like upstream: num_frames < 2, height or width < 32, aspect > 200. */
int ingest_smart_resize_video(int num_frames, int height, int width, long min_pixels,
                              long max_pixels, int *out_h, int *out_w, char *err, size_t errlen);

/* qwen-vl-utils per-frame budget for a clip of nframes frames:
 * max(min(max_pixels, total_pixels / nframes * 2), 1.05 * min_pixels). total_pixels <= 0
 * means the default 128000*1024*0.9. */
double ingest_qvu_frame_max_pixels(int nframes, long min_pixels, long max_pixels,
                                   double total_pixels);

/* ---- torch-matching antialiased bicubic resize -------------------------------------- */

/* Replicates torch F.interpolate(float32(u8 NCHW), mode='bicubic', align_corners=False,
 * antialias=True) -> clamp [0,255] -> round half to even -> u8, on interleaved RGB24 (HWC).
 * Weights are computed once per (src, dst) size; a resizer can be reused for every frame of
 * that size. Not thread-safe per object (it owns a scratch buffer). */
typedef struct ingest_resizer ingest_resizer;

int ingest_resizer_create(ingest_resizer **out, int src_h, int src_w, int dst_h, int dst_w,
                          char *err, size_t errlen);
/* src: src_h rows of src_w*3 bytes, rows src_stride bytes apart. dst: dst_h*dst_w*3, packed. */
void ingest_resizer_run(ingest_resizer *r, const uint8_t *src, size_t src_stride, uint8_t *dst);
void ingest_resizer_destroy(ingest_resizer *r);

/* One-shot convenience (creates and destroys a resizer). Identity copy when sizes match. */
int ingest_resize_rgb24(const uint8_t *src, int src_h, int src_w, size_t src_stride,
                        uint8_t *dst, int dst_h, int dst_w, char *err, size_t errlen);

/* ---- upstream whole-file sampling plan ---------------------------------------------- */

/* transformers Qwen3VLVideoProcessor.sample_frames + Qwen3VLProcessor._calculate_timestamps:
 * n = int(total_frames / source_fps * fps) clamped to [min_frames, max_frames] and to
 * total_frames; indices = round_half_even(linspace(0, total_frames - 1, n)); if n is odd the
 * last index is repeated (pairs always complete); pair timestamp = mean(index/source_fps). */
typedef struct ingest_sample_plan {
    int num_frames;         /* n, before padding to even */
    int num_indices;        /* n rounded up to even (= 2 * num_pairs) */
    int64_t *indices;       /* num_indices entries, last repeated when n is odd */
    int num_pairs;
    double *timestamps;     /* num_pairs entries, seconds */
} ingest_sample_plan;

int ingest_sample_plan_make(ingest_sample_plan *plan, int64_t total_frames, double source_fps,
                            double fps, int min_frames, int max_frames,
                            char *err, size_t errlen);
void ingest_sample_plan_free(ingest_sample_plan *plan);

/* "<%.1f seconds>" exactly as Python formats it (the binary value rounded, ties to even). */
void ingest_format_timestamp(double seconds, char *buf, size_t buflen);

/* ---- frame pairs -------------------------------------------------------------------- */

typedef struct ingest_pair {
    uint64_t seq;              /* 0, 1, 2, ... per source */
    int height, width;         /* H', W' (multiples of 32) */
    int grid_t, grid_h, grid_w;/* 1, H'/16, W'/16: patch grid of this pair */
    int tokens;                /* merged tokens = H'*W'/1024 */
    uint8_t *rgb[2];           /* two RGB24 HWC frames, height*width*3 bytes each (one block) */
    double t0, t1;             /* media time of each frame, seconds since the stream started */
    double timestamp;          /* (t0 + t1) / 2: the "<t seconds>" of this pair */
    double wall_time;          /* live sources: unix time (s) the frames arrived, mean of both;
                                  0 for files, images and sequences */
    int64_t index0, index1;    /* source frame index of each frame: exact in UPSTREAM
                                  sampling; in PTS sampling round(media time x source fps) */
    bool repeated;             /* second frame is a copy of the first (odd tail or still image) */
    bool is_image;             /* still image (grid_t 1, frame twice) */
} ingest_pair;

void ingest_pair_free(ingest_pair *p);

/* ---- sources ------------------------------------------------------------------------ */

typedef enum ingest_state {
    INGEST_STATE_IDLE = 0,       /* created, not started */
    INGEST_STATE_CONNECTING,     /* opening the input for the first time */
    INGEST_STATE_LIVE,           /* frames flowing */
    INGEST_STATE_STALLED,        /* frames stopped: silent past stall_timeout or connection lost */
    INGEST_STATE_RECONNECTING,   /* reopening after a loss (or a failed first attempt), with backoff */
    INGEST_STATE_ENDED,          /* finished normally (end of file, stop requested) */
    INGEST_STATE_FAILED,         /* gave up: see ingest_source_last_error */
} ingest_state;

const char *ingest_state_name(ingest_state s);   /* "connecting", "live", ... */

typedef enum ingest_sampling {
    INGEST_SAMPLE_PTS = 0,       /* by presentation time at opt.fps (live and files) */
    INGEST_SAMPLE_UPSTREAM = 1,  /* whole file exactly as transformers samples it (files only) */
} ingest_sampling;

typedef enum ingest_queue_policy {
    INGEST_QUEUE_AUTO = 0,       /* drop-oldest for live sources and real-time files, else block */
    INGEST_QUEUE_BLOCK = 1,      /* backpressure: the source waits for the consumer */
    INGEST_QUEUE_DROP_OLDEST = 2,
} ingest_queue_policy;

typedef enum ingest_live_mode {
    INGEST_LIVE_AUTO = 0,        /* rtsp/rtp/udp/tcp/srt/v4l2 and unbounded http/hls are live */
    INGEST_LIVE_YES = 1,
    INGEST_LIVE_NO = 2,
} ingest_live_mode;

typedef struct ingest_source ingest_source;

/* Called on the source thread on every state change (old != new). detail may be "" . When it
 * reports ENDED or FAILED, ingest_source_pop already returns INGEST_EOF once the queue is empty. */
typedef void (*ingest_state_cb)(void *user, ingest_source *src, ingest_state old_state,
                                ingest_state new_state, const char *detail);
/* Called on the source thread after a pair was queued (e.g. to uv_async_send). */
typedef void (*ingest_pair_cb)(void *user, ingest_source *src);

typedef struct ingest_options {
    /* sampling */
    double fps;                  /* target sampling rate (frames/s), default 2 */
    ingest_sampling sampling;
    /* per-pair budget (PTS sampling, live): per frame of the pair, through image smart_resize
     * (transformers rule). max_pixels = max tokens per pair * 1024. */
    long min_pixels;             /* default 128*1024 */
    long max_pixels;             /* default 768*1024 */
    /* UPSTREAM sampling: whole-clip t*h*w budget and frame count limits */
    long clip_min_pixels;        /* default 4096 */
    long clip_max_pixels;        /* default 25165824 */
    int min_frames;              /* default 4 */
    int max_frames;              /* default 768 */
    /* still images */
    long image_min_pixels;       /* default 65536 */
    long image_max_pixels;       /* default 16777216 */
    double sequence_fps;         /* frame rate of a numbered image sequence; 0 = opt.fps */

    /* files */
    double start_offset;         /* seconds into the file to start at */
    bool loop;                   /* restart at the end (media time keeps growing) */
    bool realtime;               /* pace a file at its own speed, like a camera */
    bool autorotate;             /* apply the display matrix (phone videos) like players do;
                                    default true. Upstream readers do not: set false to match */

    /* decoding */
    int decoder_threads;         /* default 1: cheapest per frame, and a 1080p30 stream needs
                                    ~0.1 core; 0 = FFmpeg's choice (frame threads, more
                                    CPU and latency, for 4K or high frame rates) */
    bool skip_nonref;            /* discard non-reference frames that cannot be sampled;
                                    default true (PTS sampling only) */

    /* network / robustness */
    ingest_live_mode live;
    int io_timeout_ms;           /* no data for this long -> connection lost; default 10000 */
    int stall_timeout_ms;        /* no frame for this long -> STALLED; default 3000 */
    int reconnect_min_ms;        /* first backoff delay, default 500 */
    int reconnect_max_ms;        /* backoff cap, default 30000 */
    int max_reconnects;          /* consecutive failed attempts before FAILED; -1 = forever (default) */
    char rtsp_transport[16];     /* "tcp" (default), "udp", "udp_multicast", "http", or ""
                                    for FFmpeg's choice */

    /* security */
    char protocols[256];         /* comma list of allowed FFmpeg protocols; add "file" to allow
                                    local files, images and image sequences */
    char device_prefix[128];     /* allowed V4L2 device path prefix, default "/dev/video" */

    /* output queue */
    int queue_capacity;          /* pairs, default 4 */
    ingest_queue_policy queue_policy;

    /* callbacks (optional) */
    ingest_state_cb on_state;
    ingest_pair_cb on_pair;
    void *user;
} ingest_options;

/* Fills every field with its default. Always start from this. */
void ingest_options_init(ingest_options *opt);

/* Sets max_pixels = tokens * 1024 (and lowers min_pixels if it would exceed it). */
void ingest_options_set_max_tokens(ingest_options *opt, int tokens);

/* Checks a URL against the options without any I/O: scheme/protocol allow-list, device
 * prefix, concat:/subfile:/data: tricks, option ranges. 0 or INGEST_EPERM/INGEST_EINVAL. */
int ingest_check_url(const char *url, const ingest_options *opt, char *err, size_t errlen);

typedef struct ingest_stats {
    uint64_t bytes_read;         /* demuxed packet bytes, all streams, all connections */
    uint64_t packets_read;       /* video packets */
    uint64_t frames_decoded;     /* frames out of the decoder */
    uint64_t frames_sampled;     /* frames converted + resized (repeats not counted) */
    uint64_t decode_errors;      /* damaged input seen: packets the demuxer flagged corrupt
                                    or skipped, packets the decoder rejected, frames it had
                                    to conceal */
    uint64_t reconnects;         /* successful re-opens after a loss */
    uint64_t pairs_produced;     /* pairs built = popped + dropped + queued */
    uint64_t pairs_popped;
    uint64_t pairs_dropped;      /* oldest waiting pairs dropped (live, consumer too slow) */
    uint64_t discontinuities;    /* timestamp jumps/wraps repaired */
    int queue_len;
    double media_time;           /* media time of the last decoded frame */
} ingest_stats;

typedef struct ingest_info {
    char format[32];             /* demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2" truncated */
    char codec[32];              /* decoder name */
    int src_width, src_height;   /* as displayed (after autorotation) */
    int rotation;                /* clockwise degrees applied (0, 90, 180, 270), as the
                                    ffmpeg CLI and players rotate for the display matrix */
    double src_fps;              /* average frame rate, 0 if unknown */
    double duration;             /* seconds, 0 if unknown / live */
    bool live;
    bool is_image;
    int out_width, out_height;   /* pair size (H', W'); 0 until known */
    int64_t total_frames;        /* UPSTREAM sampling: frames counted; else 0 */
} ingest_info;

/* Validates url and options (ingest_check_url) and copies them. No I/O, no thread yet. */
int ingest_source_create(ingest_source **out, const char *url, const ingest_options *opt,
                         char *err, size_t errlen);
/* Starts the source thread. Once only. */
int ingest_source_start(ingest_source *src, char *err, size_t errlen);
/* Interrupts any blocking FFmpeg call and joins the thread. Queued pairs stay poppable;
 * the state ends as ENDED (or FAILED if it had failed). Idempotent. */
void ingest_source_stop(ingest_source *src);
/* Stops if needed and frees everything, including pairs still queued. NULL is fine. */
void ingest_source_destroy(ingest_source *src);

/* Pops the oldest queued pair; the caller owns it (ingest_pair_free). timeout_ms: 0 =
 * non-blocking, < 0 = wait forever. Returns 0, INGEST_EAGAIN (nothing within the timeout or
 * woken by ingest_source_wake) or INGEST_EOF (source ended/failed/stopped and queue empty). */
int ingest_source_pop(ingest_source *src, ingest_pair **out, int timeout_ms);
/* Wakes every thread blocked in ingest_source_pop on this source (they return EAGAIN). */
void ingest_source_wake(ingest_source *src);

ingest_state ingest_source_state(const ingest_source *src);
void ingest_source_stats(const ingest_source *src, ingest_stats *out);
/* 0 when the input is open and the info is known, INGEST_EAGAIN before. */
int ingest_source_info(const ingest_source *src, ingest_info *out);
/* The last error message ("" if none) copied into buf. */
void ingest_source_last_error(const ingest_source *src, char *buf, size_t buflen);
const char *ingest_source_url(const ingest_source *src);

/* ---- FFmpeg's own messages ------------------------------------------------------------ */

/* FFmpeg libraries print their messages (connection refused, corrupt packets, ...) straight
 * to stderr. A program with its own log hands them to fn instead: one call per complete line,
 * without the newline, prefixed with the FFmpeg component ("tcp: Connection to ... refused").
 * level: INGEST_LOG_ERROR, INGEST_LOG_WARNING, or INGEST_LOG_INFO (verbose messages are only
 * passed with want_info). fn == NULL restores FFmpeg's default printing. Process-wide; fn
 * is called from whichever thread FFmpeg logs on, so it must be thread-safe. */
enum { INGEST_LOG_ERROR = 0, INGEST_LOG_WARNING = 1, INGEST_LOG_INFO = 2 };
typedef void (*ingest_log_fn)(void *user, int level, const char *line);
void ingest_set_log_handler(ingest_log_fn fn, void *user, bool want_info);

/* ---- one-off images ----------------------------------------------------------------- */

/* Decodes one still image (a path/URL, checked against opt's allow-list like a source) into
 * a pair (the frame twice), sized with image smart_resize (opt.image_min/max_pixels). */
int ingest_image_load(const char *url, const ingest_options *opt, ingest_pair **out,
                      char *err, size_t errlen);
/* Same from encoded bytes in memory (PNG, JPEG, WebP, BMP, ...); no file access at all. */
int ingest_image_decode(const void *data, size_t len, const ingest_options *opt,
                        ingest_pair **out, char *err, size_t errlen);

#endif
