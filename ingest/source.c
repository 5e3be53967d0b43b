/* source.c — one video source on its own thread: open (with the protocol policy), demux,
 * decode only what sampling needs, map timestamps to a continuous media time, sample by PTS
 * (or by the upstream whole-file plan), convert to RGB24, resize, pair, queue; reconnect live
 * sources with backoff; report state changes and counters.
 *
 * Every blocking FFmpeg call runs under an interrupt callback that ends it on stop() or when
 * no data arrived for io_timeout_ms, so a dead camera or a stuck socket never wedges the
 * thread. Nothing here aborts on bad input: corrupt data is counted and skipped, and an input
 * that cannot be used ends the source in FAILED with a message naming it. */
#include "ingest/ingest_internal.h"

#include <libavcodec/avcodec.h>
#include <libavdevice/avdevice.h>
#include <libavformat/avformat.h>
#include <libavutil/display.h>
#include <libavutil/imgutils.h>
#include <libavutil/pixdesc.h>
#include <libswscale/swscale.h>

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define MAX_FRAME_SIDE 16384
#define MAX_CONSECUTIVE_READ_ERRORS 64

/* ---- small utilities ---------------------------------------------------------------- */

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void av_err(int rc, char *buf, size_t len)
{
    if (av_strerror(rc, buf, len) < 0)
        snprintf(buf, len, "error %d", rc);
}

static pthread_once_t g_avdevice_once = PTHREAD_ONCE_INIT;
static void register_devices(void) { avdevice_register_all(); }

/* ---- pairs -------------------------------------------------------------------------- */

static ingest_pair *pair_alloc(int h, int w)
{
    size_t fb = (size_t)h * (size_t)w * 3;
    size_t head = (sizeof(ingest_pair) + 63) & ~(size_t)63;
    uint8_t *blk = malloc(head + 2 * fb);
    if (!blk)
        return NULL;
    ingest_pair *p = (ingest_pair *)blk;
    memset(p, 0, sizeof(*p));
    p->height = h;
    p->width = w;
    p->grid_t = 1;
    p->grid_h = h / INGEST_PATCH_SIZE;
    p->grid_w = w / INGEST_PATCH_SIZE;
    p->tokens = (h / INGEST_FACTOR) * (w / INGEST_FACTOR);
    p->rgb[0] = blk + head;
    p->rgb[1] = blk + head + fb;
    p->index0 = p->index1 = -1;
    return p;
}

void ingest_pair_free(ingest_pair *p)
{
    free(p); /* header and both frames are one block */
}

/* ---- timeline: raw timestamps -> continuous media time ------------------------------ */

typedef struct timeline {
    double tb;              /* seconds per tick of the video stream */
    int64_t wrap_ticks;     /* 2^pts_wrap_bits when the container wraps (MPEG-TS), else 0 */
    bool discont_fmt;       /* container may jump (AVFMT_TS_DISCONT) */
    bool live;
    double file_start;      /* stream start in seconds (files) */
    /* per connection / pass */
    bool anchored;
    bool continue_mode;     /* anchor the first frame right after the previous media time */
    bool have_raw;
    int64_t last_raw;       /* last unwrapped raw ts */
    int64_t wrap_add;
    double offset;          /* media = ts_seconds + offset */
    /* across the whole life of the source */
    bool have_last;
    double last_media;
    double last_wall;
    double dur;             /* frame duration estimate */
    bool dur_fixed;         /* from the stream's frame rate: not re-estimated */
    uint64_t discontinuities;
} timeline;

static void tl_begin(timeline *tl, bool continue_mode)
{
    tl->anchored = false;
    tl->continue_mode = continue_mode;
    tl->have_raw = false;
    tl->wrap_add = 0;
}

/* Maps one frame. raw may be AV_NOPTS_VALUE (then frames are counted with the duration
 * estimate). The result is strictly increasing. */
static double tl_map(timeline *tl, int64_t raw, double wall)
{
    double m;
    if (raw == AV_NOPTS_VALUE) {
        m = tl->have_last ? tl->last_media + tl->dur : 0.0;
    } else {
        int64_t r = raw + tl->wrap_add;
        if (tl->have_raw && tl->wrap_ticks > 0 && r - tl->last_raw < -tl->wrap_ticks / 2) {
            /* 33-bit MPEG-TS clock wrapped (every ~26.5 h): keep counting upward */
            tl->wrap_add += tl->wrap_ticks;
            r += tl->wrap_ticks;
            tl->discontinuities++;
        }
        tl->have_raw = true;
        tl->last_raw = r;
        double ts = (double)r * tl->tb;
        if (!tl->anchored) {
            if (tl->continue_mode && tl->have_last) {
                double gap = tl->dur;
                if (tl->live && wall - tl->last_wall > gap)
                    gap = fmin(wall - tl->last_wall, 86400.0);
                tl->offset = tl->last_media + gap - ts;
            } else if (tl->live) {
                tl->offset = -ts; /* first frame of a live stream is media time 0 */
            } else {
                tl->offset = -tl->file_start;
            }
            tl->anchored = true;
        }
        m = ts + tl->offset;
        if (tl->have_last) {
            double d = m - tl->last_media;
            bool jump_fwd = (tl->live || tl->discont_fmt) && d > 10.0 &&
                            !(tl->live && d < wall - tl->last_wall + 2.0);
            if (d < -1.0 || jump_fwd) {
                /* A discontinuity (MPEG-TS splice, camera clock reset, corrupt timestamp):
                 * continue right after the last frame; live sources keep the real elapsed
                 * time so "last 30 s" stays meaningful. */
                double gap = tl->dur;
                if (tl->live && wall - tl->last_wall > gap)
                    gap = fmin(wall - tl->last_wall, 86400.0);
                tl->offset = tl->last_media + gap - ts;
                m = tl->last_media + gap;
                tl->discontinuities++;
            } else if (d <= 0) {
                /* duplicate or slightly out-of-order timestamp: keep monotonic, no re-anchor */
                m = tl->last_media + 1e-6;
            } else if (d < 1.0 && !tl->dur_fixed) {
                /* no nominal rate: learn it, but only from small steps (skipped non-reference
                 * frames make some steps two or three frames long) */
                tl->dur = d < tl->dur ? d : tl->dur * 0.95 + d * 0.05;
            }
        }
    }
    if (tl->have_last && m <= tl->last_media)
        m = tl->last_media + 1e-6;
    tl->have_last = true;
    tl->last_media = m;
    tl->last_wall = wall;
    return m;
}

/* Estimated media time of a raw timestamp without updating state (for skip decisions). */
static bool tl_peek(const timeline *tl, int64_t raw, double *m)
{
    if (raw == AV_NOPTS_VALUE || !tl->anchored || !tl->have_raw)
        return false;
    int64_t r = raw + tl->wrap_add;
    if (tl->wrap_ticks > 0 && (r - tl->last_raw < -tl->wrap_ticks / 4 ||
                               r - tl->last_raw > tl->wrap_ticks / 4))
        return false;
    *m = (double)r * tl->tb + tl->offset;
    return true;
}

/* ---- the source object -------------------------------------------------------------- */

typedef enum { RUN_CONTINUE, RUN_EOF, RUN_ERROR, RUN_STOP, RUN_FATAL, RUN_DONE } run_result;

struct ingest_source {
    char *url;
    ingest_options opt;
    ingest_url_info ui;
    char ff_protocols[300];

    pthread_mutex_t mu;
    pthread_cond_t cv_pop;     /* queue got a pair / finished / wake */
    pthread_cond_t cv_push;    /* queue got room / stop */
    pthread_cond_t cv_sleep;   /* stop, for interruptible sleeps */
    pthread_mutex_t join_mu;
    ingest_pair **q;
    int q_cap, q_head, q_len;
    uint64_t wake_gen;
    bool started, finished, joined;
    pthread_t thread;
    atomic_bool stop;
    atomic_int state;
    char last_error[512];
    ingest_info info;
    bool info_valid;

    atomic_uint_fast64_t n_bytes, n_packets, n_decoded, n_sampled, n_dec_errors, n_reconnects,
        n_produced, n_popped, n_dropped, n_discont;
    _Atomic int64_t media_us;

    /* ---- owned by the source thread ---- */
    AVFormatContext *fmt;
    AVCodecContext *dec;
    AVStream *st;
    int vidx;
    bool live;
    bool live_decided;
    bool is_image;
    int rotation;
    int64_t io_deadline_ns;
    int64_t io_budget_ns;
    int64_t pb_bytes_seen;
    int64_t last_frame_ns;
    bool timed_out;
    int last_open_rc;
    bool force_image;       /* one-off image API: the first frame is the image */
    const uint8_t *mem;     /* encoded bytes for memory sources (not owned) */
    size_t mem_len, mem_pos;
    AVIOContext *mem_io;

    struct SwsContext *sws;
    uint8_t *rgb;           /* source-size RGB24 */
    size_t rgb_cap;
    uint8_t *rot;           /* rotated copy */
    size_t rot_cap;
    ingest_resizer *rz;
    int rz_sh, rz_sw, rz_dh, rz_dw;
    int cache_sh, cache_sw, cache_dh, cache_dw; /* smart_resize memo */

    timeline tl;
    bool have_target;
    double grid0, next_target;
    double skip_until_ts;   /* stream seconds: frames before this are not used (seek target) */
    double resume_media;    /* non-live network resume: drop frames <= this media time */
    ingest_pair *pend;      /* first frame of the next pair */
    double pend_wall;
    uint64_t seq;
    uint64_t frames_this_conn;

    bool upstream;
    ingest_sample_plan plan;
    int plan_pos;
    int64_t up_total;
    int64_t frame_counter;
    int64_t decode_index;
    double src_fps;
    double up_fps;
    int up_h, up_w;

    bool pace_init;
    int64_t pace_wall0;
    double pace_media0;

    uint64_t rng;
};

static void set_state(ingest_source *s, ingest_state ns, const char *detail)
{
    pthread_mutex_lock(&s->mu);
    ingest_state old = (ingest_state)atomic_load(&s->state);
    if (old == ns) {
        pthread_mutex_unlock(&s->mu);
        return;
    }
    atomic_store(&s->state, (int)ns);
    if (ns == INGEST_STATE_FAILED && detail && *detail)
        snprintf(s->last_error, sizeof(s->last_error), "%.500s", detail);
    pthread_mutex_unlock(&s->mu);
    if (s->opt.on_state)
        s->opt.on_state(s->opt.user, s, old, ns, detail ? detail : "");
}

static void set_error(ingest_source *s, const char *msg)
{
    pthread_mutex_lock(&s->mu);
    snprintf(s->last_error, sizeof(s->last_error), "%.500s", msg);
    pthread_mutex_unlock(&s->mu);
}

/* Sleeps up to ns unless stop is requested. Returns false when stopping. */
static bool sleep_ns(ingest_source *s, int64_t ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t end = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec + ns;
    ts.tv_sec = end / 1000000000LL;
    ts.tv_nsec = end % 1000000000LL;
    pthread_mutex_lock(&s->mu);
    while (!atomic_load(&s->stop)) {
        if (pthread_cond_timedwait(&s->cv_sleep, &s->mu, &ts) != 0)
            break;
    }
    pthread_mutex_unlock(&s->mu);
    return !atomic_load(&s->stop);
}

static uint64_t rng_next(ingest_source *s)
{
    uint64_t x = s->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s->rng = x;
    return x;
}

/* ---- queue -------------------------------------------------------------------------- */

static bool queue_blocks(const ingest_source *s)
{
    if (s->opt.queue_policy == INGEST_QUEUE_BLOCK)
        return true;
    if (s->opt.queue_policy == INGEST_QUEUE_DROP_OLDEST)
        return false;
    return !s->live && !s->opt.realtime;
}

static void queue_push(ingest_source *s, ingest_pair *p)
{
    bool block = queue_blocks(s);
    pthread_mutex_lock(&s->mu);
    while (s->q_len == s->q_cap) {
        if (!block) {
            ingest_pair_free(s->q[s->q_head]);
            s->q[s->q_head] = NULL;
            s->q_head = (s->q_head + 1) % s->q_cap;
            s->q_len--;
            atomic_fetch_add(&s->n_dropped, 1);
            break;
        }
        if (atomic_load(&s->stop)) {
            /* stopping: the pair was produced but nobody will consume it; count it as
             * dropped so produced = popped + dropped + queued still holds */
            atomic_fetch_add(&s->n_produced, 1);
            atomic_fetch_add(&s->n_dropped, 1);
            pthread_mutex_unlock(&s->mu);
            ingest_pair_free(p);
            return;
        }
        pthread_cond_wait(&s->cv_push, &s->mu);
    }
    /* counted under the queue lock, when it enters the queue: produced = popped + dropped +
     * queued holds in every snapshot */
    atomic_fetch_add(&s->n_produced, 1);
    s->q[(s->q_head + s->q_len) % s->q_cap] = p;
    s->q_len++;
    pthread_cond_broadcast(&s->cv_pop);
    pthread_mutex_unlock(&s->mu);
    if (s->opt.on_pair)
        s->opt.on_pair(s->opt.user, s);
}

/* ---- interrupt callback ------------------------------------------------------------- */

static int interrupt_cb(void *opaque)
{
    ingest_source *s = opaque;
    if (atomic_load(&s->stop))
        return 1;
    int64_t now = mono_ns();
    if (s->fmt && s->fmt->pb && s->fmt->pb->bytes_read != s->pb_bytes_seen) {
        /* data is flowing through the byte layer: the connection is alive */
        s->pb_bytes_seen = s->fmt->pb->bytes_read;
        s->io_deadline_ns = now + s->io_budget_ns;
    }
    if (now > s->io_deadline_ns) {
        s->timed_out = true;
        return 1;
    }
    if (s->live && atomic_load(&s->state) == INGEST_STATE_LIVE &&
        now - s->last_frame_ns > (int64_t)s->opt.stall_timeout_ms * 1000000LL) {
        char d[96];
        snprintf(d, sizeof(d), "no frame for %d ms", s->opt.stall_timeout_ms);
        set_state(s, INGEST_STATE_STALLED, d);
    }
    return 0;
}

static void arm_deadline(ingest_source *s, int64_t budget_ns)
{
    s->io_budget_ns = budget_ns;
    s->io_deadline_ns = mono_ns() + budget_ns;
    s->timed_out = false;
}

/* ---- frame conversion --------------------------------------------------------------- */

static int get_rotation(AVStream *st)
{
    size_t size = 0;
    const uint8_t *m = av_stream_get_side_data(st, AV_PKT_DATA_DISPLAYMATRIX, &size);
    if (!m || size < 9 * sizeof(int32_t))
        return 0;
    double theta = -av_display_rotation_get((const int32_t *)m); /* clockwise degrees */
    if (isnan(theta))
        return 0;
    theta -= 360 * floor(theta / 360 + 0.9 / 360);
    int r = (int)lround(theta / 90.0) * 90 % 360;
    if (fabs(theta - r) > 3 && fabs(theta - r - 360) > 3)
        return 0; /* not a multiple of 90: leave the frame as stored */
    return r;
}

/* Rotates an RGB24 image clockwise by deg (90/180/270). */
static void rotate_rgb(const uint8_t *src, int h, int w, size_t stride, uint8_t *dst, int deg)
{
    if (deg == 180) {
        for (int y = 0; y < h; y++) {
            const uint8_t *in = src + (size_t)y * stride;
            uint8_t *out = dst + (size_t)(h - 1 - y) * (size_t)w * 3;
            for (int x = 0; x < w; x++)
                memcpy(out + (size_t)(w - 1 - x) * 3, in + (size_t)x * 3, 3);
        }
        return;
    }
    /* 90 clockwise: out (w rows x h cols), out[x][h-1-y] = in[y][x];
     * 270: out[w-1-x][y] = in[y][x] */
    for (int y = 0; y < h; y++) {
        const uint8_t *in = src + (size_t)y * stride;
        for (int x = 0; x < w; x++) {
            size_t oy = deg == 90 ? (size_t)x : (size_t)(w - 1 - x);
            size_t ox = deg == 90 ? (size_t)(h - 1 - y) : (size_t)y;
            memcpy(dst + (oy * (size_t)h + ox) * 3, in + (size_t)x * 3, 3);
        }
    }
}

static bool grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (*cap >= need)
        return true;
    uint8_t *n = realloc(*buf, need);
    if (!n)
        return false;
    *buf = n;
    *cap = need;
    return true;
}

/* Converts a decoded frame to packed RGB24 at source size (rotated when asked).
 * On success *out points to h*w*3 bytes with row stride w*3. */
static int frame_to_rgb(ingest_source *s, const AVFrame *f, const uint8_t **out, int *oh,
                        int *ow, char *err, size_t errlen)
{
    int w = f->width, h = f->height;
    if (w <= 0 || h <= 0 || w > MAX_FRAME_SIDE || h > MAX_FRAME_SIDE) {
        ingest_set_err(err, errlen, "frame size %dx%d is outside 1..%d", w, h, MAX_FRAME_SIDE);
        return INGEST_EIO;
    }
    const AVPixFmtDescriptor *desc = av_pix_fmt_desc_get((enum AVPixelFormat)f->format);
    if (!desc) {
        ingest_set_err(err, errlen, "frame has an unknown pixel format %d", f->format);
        return INGEST_EIO;
    }
    bool alpha = (desc->flags & AV_PIX_FMT_FLAG_ALPHA) != 0;
    /* The yuvj* formats are yuv* with full range; convert as such (swscale warns about them
     * and would otherwise guess the range). */
    enum AVPixelFormat in_fmt = (enum AVPixelFormat)f->format;
    bool jpeg_range = true;
    switch (in_fmt) {
    case AV_PIX_FMT_YUVJ420P: in_fmt = AV_PIX_FMT_YUV420P; break;
    case AV_PIX_FMT_YUVJ422P: in_fmt = AV_PIX_FMT_YUV422P; break;
    case AV_PIX_FMT_YUVJ444P: in_fmt = AV_PIX_FMT_YUV444P; break;
    case AV_PIX_FMT_YUVJ440P: in_fmt = AV_PIX_FMT_YUV440P; break;
    case AV_PIX_FMT_YUVJ411P: in_fmt = AV_PIX_FMT_YUV411P; break;
    default: jpeg_range = false; break;
    }
    enum AVPixelFormat dst_fmt = alpha ? AV_PIX_FMT_RGBA : AV_PIX_FMT_RGB24;
    int bpp = alpha ? 4 : 3;
    s->sws = sws_getCachedContext(s->sws, w, h, in_fmt, w, h, dst_fmt,
                                  SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT, NULL,
                                  NULL, NULL);
    if (!s->sws) {
        ingest_set_err(err, errlen, "cannot convert pixel format %s to RGB", desc->name);
        return INGEST_EIO;
    }
    bool tagged = !s->upstream && f->colorspace != AVCOL_SPC_UNSPECIFIED &&
                  f->colorspace != AVCOL_SPC_RGB;
    if (!(desc->flags & AV_PIX_FMT_FLAG_RGB) && (tagged || jpeg_range)) {
        /* Honour the stream's matrix (BT.709 for HD, ...) and range. Upstream readers use
         * swscale's BT.601 default matrix, so the upstream mode keeps that instead. */
        int full = jpeg_range || f->color_range == AVCOL_RANGE_JPEG;
        const int *coefs = sws_getCoefficients(tagged ? f->colorspace : SWS_CS_DEFAULT);
        sws_setColorspaceDetails(s->sws, coefs, full, sws_getCoefficients(SWS_CS_DEFAULT), 1, 0,
                                 1 << 16, 1 << 16);
    }
    size_t stride = (size_t)w * (size_t)bpp;
    if (!grow(&s->rgb, &s->rgb_cap, stride * (size_t)h + 64)) {
        ingest_set_err(err, errlen, "out of memory for a %dx%d frame", w, h);
        return INGEST_ENOMEM;
    }
    uint8_t *dst[4] = {s->rgb, NULL, NULL, NULL};
    int dst_ls[4] = {(int)stride, 0, 0, 0};
    int rc = sws_scale(s->sws, (const uint8_t *const *)f->data, f->linesize, 0, h, dst, dst_ls);
    if (rc <= 0) {
        ingest_set_err(err, errlen, "pixel conversion of a %dx%d %s frame failed", w, h,
                       desc->name);
        return INGEST_EIO;
    }
    if (alpha) {
        /* Composite on white like transformers' convert_to_rgb, then pack to RGB24. */
        uint8_t *p = s->rgb;
        size_t n = (size_t)w * (size_t)h;
        for (size_t i = 0; i < n; i++) {
            unsigned a = p[i * 4 + 3];
            for (int c = 0; c < 3; c++)
                p[i * 3 + c] = (uint8_t)((p[i * 4 + c] * a + 255u * (255u - a) + 127u) / 255u);
        }
    }
    const uint8_t *img = s->rgb;
    if (s->rotation) {
        if (!grow(&s->rot, &s->rot_cap, (size_t)w * (size_t)h * 3)) {
            ingest_set_err(err, errlen, "out of memory for a %dx%d frame", w, h);
            return INGEST_ENOMEM;
        }
        rotate_rgb(s->rgb, h, w, (size_t)w * 3, s->rot, s->rotation);
        img = s->rot;
        if (s->rotation != 180) {
            int t = w;
            w = h;
            h = t;
        }
    }
    *out = img;
    *oh = h;
    *ow = w;
    return 0;
}

/* ---- sampling ----------------------------------------------------------------------- */

static int target_size(ingest_source *s, int sh, int sw, int *dh, int *dw, char *err,
                       size_t errlen)
{
    if (s->pend) {
        *dh = s->pend->height;
        *dw = s->pend->width;
        return 0;
    }
    if (s->upstream && !s->is_image) {
        *dh = s->up_h;
        *dw = s->up_w;
        return 0;
    }
    if (sh == s->cache_sh && sw == s->cache_sw) {
        *dh = s->cache_dh;
        *dw = s->cache_dw;
        return 0;
    }
    int rc;
    if (s->is_image)
        rc = ingest_smart_resize_image(sh, sw, s->opt.image_min_pixels, s->opt.image_max_pixels,
                                       INGEST_RULE_TRANSFORMERS, dh, dw, err, errlen);
    else
        rc = ingest_smart_resize_image(sh, sw, s->opt.min_pixels, s->opt.max_pixels,
                                       INGEST_RULE_TRANSFORMERS, dh, dw, err, errlen);
    if (rc)
        return rc;
    s->cache_sh = sh;
    s->cache_sw = sw;
    s->cache_dh = *dh;
    s->cache_dw = *dw;
    return 0;
}

static void finish_pair(ingest_source *s, ingest_pair *p)
{
    p->timestamp = (p->t0 + p->t1) / 2;
    p->seq = s->seq++;
    queue_push(s, p);
}

/* Flushes a lone first frame as a pair with itself (odd tail, as upstream pads). */
static void flush_pending(ingest_source *s)
{
    ingest_pair *p = s->pend;
    if (!p)
        return;
    s->pend = NULL;
    memcpy(p->rgb[1], p->rgb[0], (size_t)p->height * (size_t)p->width * 3);
    p->t1 = p->t0;
    p->index1 = p->index0;
    p->repeated = true;
    finish_pair(s, p);
}

static int sample_frame(ingest_source *s, const AVFrame *f, double t, int64_t index,
                        double wall, char *err, size_t errlen)
{
    const uint8_t *img;
    int sh, sw, dh, dw;
    int rc = frame_to_rgb(s, f, &img, &sh, &sw, err, errlen);
    if (rc)
        return rc;
    rc = target_size(s, sh, sw, &dh, &dw, err, errlen);
    if (rc)
        return rc;
    if (!s->rz || s->rz_sh != sh || s->rz_sw != sw || s->rz_dh != dh || s->rz_dw != dw) {
        ingest_resizer_destroy(s->rz);
        s->rz = NULL;
        rc = ingest_resizer_create(&s->rz, sh, sw, dh, dw, err, errlen);
        if (rc)
            return rc;
        s->rz_sh = sh;
        s->rz_sw = sw;
        s->rz_dh = dh;
        s->rz_dw = dw;
    }
    ingest_pair *p = s->pend;
    int slot = 1;
    if (!p) {
        p = pair_alloc(dh, dw);
        if (!p) {
            ingest_set_err(err, errlen, "out of memory for a %dx%d pair", dh, dw);
            return INGEST_ENOMEM;
        }
        slot = 0;
    }
    ingest_resizer_run(s->rz, img, (size_t)sw * 3, p->rgb[slot]);
    atomic_fetch_add(&s->n_sampled, 1);
    if (slot == 0) {
        p->t0 = t;
        p->index0 = index;
        s->pend_wall = wall;
        p->is_image = s->is_image;
        if (s->is_image) {
            s->pend = p;
            flush_pending(s); /* one image = the same frame twice */
            return 0;
        }
        s->pend = p;
        pthread_mutex_lock(&s->mu);
        s->info.out_height = dh;
        s->info.out_width = dw;
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    s->pend = NULL;
    p->t1 = t;
    p->index1 = index;
    p->wall_time = s->live ? (s->pend_wall + wall) / 2 : 0;
    finish_pair(s, p);
    return 0;
}

/* Real-time pacing for files: wait until the frame's media time is due. */
static bool pace(ingest_source *s, double m)
{
    if (!s->opt.realtime || s->live)
        return true;
    int64_t now = mono_ns();
    if (!s->pace_init) {
        s->pace_init = true;
        s->pace_wall0 = now;
        s->pace_media0 = m;
        return true;
    }
    int64_t due = s->pace_wall0 + (int64_t)((m - s->pace_media0) * 1e9);
    if (due - now > 5000000000LL) {
        /* a long gap (or a timestamp jump) would stall us: re-anchor the clock */
        s->pace_wall0 = now;
        s->pace_media0 = m;
        return true;
    }
    if (due > now)
        return sleep_ns(s, due - now);
    return true;
}

/* Tolerance for timestamp jitter: a quarter period, and less than half a source frame, so
 * a 25 fps camera sampled at 25 fps does not skip frames, a 30 fps file sampled at 2 fps
 * picks exactly frames 15, 30, ..., and when two frames are equally far from a target
 * (25 fps: 0.48 and 0.52 s for 0.5 s) the later one is taken. */
static double sample_eps(const ingest_source *s)
{
    return fmin(0.25 / s->opt.fps, 0.45 * s->tl.dur);
}

static int handle_frame(ingest_source *s, AVFrame *f, char *err, size_t errlen)
{
    atomic_fetch_add(&s->n_decoded, 1);
    s->frames_this_conn++;
    s->decode_index++;
    s->last_frame_ns = mono_ns();
    double wall = s->live ? wall_s() : 0;
    if (f->decode_error_flags || (f->flags & AV_FRAME_FLAG_CORRUPT))
        atomic_fetch_add(&s->n_dec_errors, 1);
    if (atomic_load(&s->state) != INGEST_STATE_LIVE)
        set_state(s, INGEST_STATE_LIVE, s->frames_this_conn == 1 ? "frames flowing" : "frames again");

    if (s->is_image) {
        int rc = sample_frame(s, f, 0.0, 0, wall, err, errlen);
        return rc ? rc : 1; /* 1: done */
    }
    if (s->upstream) {
        int64_t idx = s->frame_counter++;
        atomic_store(&s->media_us, (int64_t)(idx / s->up_fps * 1e6));
        if (s->plan_pos < s->plan.num_frames && s->plan.indices[s->plan_pos] == idx) {
            int rc = sample_frame(s, f, (double)idx / s->up_fps, idx, wall, err, errlen);
            if (rc)
                return rc;
            s->plan_pos++;
        }
        return s->plan_pos >= s->plan.num_frames ? 1 : 0;
    }

    int64_t raw = f->best_effort_timestamp;
    if (s->skip_until_ts > -1e300) {
        /* between the keyframe a seek landed on and the requested start position */
        if (raw != AV_NOPTS_VALUE && (double)raw * s->tl.tb < s->skip_until_ts - 1e-6)
            return 0;
        s->skip_until_ts = -1e308;
    }
    double m = tl_map(&s->tl, raw, s->live ? wall : wall_s());
    atomic_store(&s->n_discont, s->tl.discontinuities);
    atomic_store(&s->media_us, (int64_t)(m * 1e6));
    if (s->resume_media > -1e300) {
        if (m <= s->resume_media + 1e-6)
            return 0;
        s->resume_media = -1e308;
    }
    if (!pace(s, m))
        return 0;

    double period = 1.0 / s->opt.fps;
    double eps = sample_eps(s);
    if (!s->have_target) {
        s->have_target = true;
        s->grid0 = m;
        s->next_target = m;
    }
    if (m + eps < s->next_target)
        return 0;
    /* nominal source frame number: exact for constant-rate files, an estimate otherwise */
    int64_t nominal = s->src_fps > 0 ? (int64_t)llround(m * s->src_fps) : s->decode_index - 1;
    int rc = sample_frame(s, f, m, nominal, wall, err, errlen);
    if (rc)
        return rc;
    double k = floor((m - s->grid0 + eps) * s->opt.fps) + 1;
    s->next_target = s->grid0 + k * period;
    return 0;
}

/* Decide per packet whether non-reference frames may be discarded before decoding: only
 * when the packet's presentation time is before the next sampling target, so it cannot be
 * a frame we would sample. */
static void choose_skip(ingest_source *s, const AVPacket *pkt)
{
    if (!s->opt.skip_nonref || s->upstream || s->is_image || !s->have_target) {
        s->dec->skip_frame = AVDISCARD_DEFAULT;
        return;
    }
    double m;
    enum AVDiscard want = AVDISCARD_DEFAULT;
    if (tl_peek(&s->tl, pkt->pts, &m)) {
        /* a frame earlier than target - eps is never sampled; 1 ms for rounding */
        if (m < s->next_target - sample_eps(s) - 0.001)
            want = AVDISCARD_NONREF;
    }
    s->dec->skip_frame = want;
}

/* ---- open / close ------------------------------------------------------------------- */

static int mem_read(void *opaque, uint8_t *buf, int size)
{
    ingest_source *s = opaque;
    size_t left = s->mem_len - s->mem_pos;
    if (left == 0)
        return AVERROR_EOF;
    size_t n = (size_t)size < left ? (size_t)size : left;
    memcpy(buf, s->mem + s->mem_pos, n);
    s->mem_pos += n;
    return (int)n;
}

static int64_t mem_seek(void *opaque, int64_t off, int whence)
{
    ingest_source *s = opaque;
    int64_t base;
    switch (whence & ~AVSEEK_FORCE) {
    case AVSEEK_SIZE: return (int64_t)s->mem_len;
    case SEEK_SET: base = 0; break;
    case SEEK_CUR: base = (int64_t)s->mem_pos; break;
    case SEEK_END: base = (int64_t)s->mem_len; break;
    default: return AVERROR(EINVAL);
    }
    int64_t pos = base + off;
    if (pos < 0 || pos > (int64_t)s->mem_len)
        return AVERROR(EINVAL);
    s->mem_pos = (size_t)pos;
    return pos;
}

static void close_input(ingest_source *s)
{
    if (s->dec)
        avcodec_free_context(&s->dec);
    if (s->fmt)
        avformat_close_input(&s->fmt);
    if (s->mem_io) {
        av_freep(&s->mem_io->buffer);
        avio_context_free(&s->mem_io);
    }
    s->st = NULL;
    s->vidx = -1;
}

static bool fatal_open_error(int rc)
{
    return rc == AVERROR_PROTOCOL_NOT_FOUND || rc == AVERROR_DEMUXER_NOT_FOUND ||
           rc == AVERROR_DECODER_NOT_FOUND || rc == AVERROR(EPERM) || rc == AVERROR(EACCES) ||
           rc == AVERROR(ENOTDIR);
}

static bool first_open_refused(int rc)
{
    return rc == AVERROR_HTTP_BAD_REQUEST || rc == AVERROR_HTTP_UNAUTHORIZED ||
           rc == AVERROR_HTTP_FORBIDDEN || rc == AVERROR_HTTP_NOT_FOUND ||
           rc == AVERROR_HTTP_OTHER_4XX || rc == AVERROR_STREAM_NOT_FOUND ||
           rc == AVERROR(ENOENT);
}

static int count_frames(ingest_source *s, int64_t *total, char *err, size_t errlen)
{
    AVPacket *pkt = av_packet_alloc();
    if (!pkt) {
        ingest_set_err(err, errlen, "out of memory");
        return INGEST_ENOMEM;
    }
    int64_t n = 0;
    for (;;) {
        arm_deadline(s, (int64_t)s->opt.io_timeout_ms * 1000000LL);
        int rc = av_read_frame(s->fmt, pkt);
        if (rc == AVERROR(EAGAIN)) {
            if (!sleep_ns(s, 1000000))
                break;
            continue;
        }
        if (rc < 0)
            break;
        if (pkt->stream_index == s->vidx)
            n++;
        av_packet_unref(pkt);
    }
    av_packet_free(&pkt);
    if (atomic_load(&s->stop))
        return INGEST_EIO;
    *total = n;
    return 0;
}

/* Opens the input. Returns 0, or <0 with err set; *fatal says retrying cannot help. */
static int open_input(ingest_source *s, bool first_open, bool *fatal, char *err, size_t errlen)
{
    char e[256];
    *fatal = false;
    const AVInputFormat *ifmt = NULL;
    if (s->ui.kind == INGEST_KIND_DEVICE) {
        struct stat stt;
        if (stat(s->ui.open_url, &stt) != 0 || !S_ISCHR(stt.st_mode)) {
            ingest_set_err(err, errlen, "source '%s': not a character device (V4L2 capture "
                           "device expected)", s->ui.open_url);
            return INGEST_EIO; /* a camera may be plugged in later: not fatal */
        }
        pthread_once(&g_avdevice_once, register_devices);
        ifmt = av_find_input_format("video4linux2");
        if (!ifmt) {
            ingest_set_err(err, errlen, "this FFmpeg build has no video4linux2 input");
            *fatal = true;
            return INGEST_EIO;
        }
    }
    s->fmt = avformat_alloc_context();
    if (!s->fmt) {
        ingest_set_err(err, errlen, "out of memory");
        return INGEST_ENOMEM;
    }
    s->fmt->interrupt_callback.callback = interrupt_cb;
    s->fmt->interrupt_callback.opaque = s;
    s->pb_bytes_seen = 0;

    AVDictionary *o = NULL;
    if (s->mem) {
        /* Encoded image bytes from a client: custom I/O, still-image demuxers only, and no
         * protocol at all, so the bytes cannot make FFmpeg open anything (an HLS playlist
         * or ffconcat script would need a demuxer and a protocol it does not get). */
        uint8_t *buf = av_malloc(65536);
        s->mem_pos = 0;
        s->mem_io = buf ? avio_alloc_context(buf, 65536, 0, s, mem_read, NULL, mem_seek) : NULL;
        if (!s->mem_io) {
            av_free(buf);
            avformat_free_context(s->fmt);
            s->fmt = NULL;
            ingest_set_err(err, errlen, "out of memory");
            return INGEST_ENOMEM;
        }
        s->fmt->pb = s->mem_io;
        s->fmt->flags |= AVFMT_FLAG_CUSTOM_IO;
        av_dict_set(&o, "format_whitelist", INGEST_IMAGE_DEMUXERS, 0);
        av_dict_set(&o, "protocol_whitelist", "none", 0);
    } else {
        av_dict_set(&o, "protocol_whitelist", s->ff_protocols, 0);
        /* an image path or URL: still-image demuxers only, so that a text file is not read
         * as a "video" by the tty demuxer, nor a playlist followed */
        if (s->force_image)
            av_dict_set(&o, "format_whitelist", "image2," INGEST_IMAGE_DEMUXERS, 0);
    }
    char num[32];
    if (strncmp(s->ui.scheme, "rtsp", 4) == 0) {
        if (s->opt.rtsp_transport[0])
            av_dict_set(&o, "rtsp_transport", s->opt.rtsp_transport, 0);
        snprintf(num, sizeof(num), "%lld", (long long)s->opt.io_timeout_ms * 1000LL);
        av_dict_set(&o, "timeout", num, 0);
    }
    if (strcmp(s->ui.scheme, "udp") == 0)
        av_dict_set(&o, "overrun_nonfatal", "1", 0);
    if (strncmp(s->ui.scheme, "http", 4) == 0) {
        snprintf(num, sizeof(num), "%lld", (long long)s->opt.io_timeout_ms * 1000LL);
        av_dict_set(&o, "rw_timeout", num, 0);
    }
    if (s->ui.is_sequence) {
        snprintf(num, sizeof(num), "%g", s->opt.sequence_fps > 0 ? s->opt.sequence_fps : s->opt.fps);
        av_dict_set(&o, "framerate", num, 0);
    }
    arm_deadline(s, (int64_t)s->opt.io_timeout_ms * 1000000LL);
    int rc = avformat_open_input(&s->fmt, s->mem ? NULL : s->ui.open_url, ifmt, &o);
    av_dict_free(&o);
    s->last_open_rc = rc;
    if (rc < 0) {
        s->fmt = NULL; /* freed by avformat_open_input on failure */
        if (s->mem_io) {
            av_freep(&s->mem_io->buffer);
            avio_context_free(&s->mem_io);
        }
        av_err(rc, e, sizeof(e));
        if (s->timed_out)
            snprintf(e, sizeof(e), "no answer within %d ms", s->opt.io_timeout_ms);
        else if (s->force_image && (rc == AVERROR(EINVAL) || rc == AVERROR_INVALIDDATA))
            snprintf(e, sizeof(e), "not a still image in a format FFmpeg decodes (PNG, JPEG, WebP, BMP, "
                                   "TIFF, GIF, ...)");
        ingest_set_err(err, errlen, "cannot open '%s': %s", s->url, e);
        *fatal = fatal_open_error(rc) || (!s->ui.live && s->ui.kind == INGEST_KIND_FILE);
        return INGEST_EIO;
    }
    /* probing may read several seconds of a live stream */
    arm_deadline(s, (int64_t)s->opt.io_timeout_ms * 1000000LL + 10000000000LL);
    rc = avformat_find_stream_info(s->fmt, NULL);
    if (rc < 0) {
        av_err(rc, e, sizeof(e));
        ingest_set_err(err, errlen, "cannot read stream information of '%s': %s", s->url, e);
        close_input(s);
        *fatal = !s->ui.live && s->ui.kind == INGEST_KIND_FILE;
        return INGEST_EIO;
    }
    const AVCodec *codec = NULL;
    s->vidx = av_find_best_stream(s->fmt, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
    if (s->vidx < 0) {
        if (s->vidx == AVERROR_DECODER_NOT_FOUND) {
            int any = -1;
            for (unsigned i = 0; i < s->fmt->nb_streams; i++)
                if (s->fmt->streams[i]->codecpar->codec_type == AVMEDIA_TYPE_VIDEO)
                    any = (int)i;
            ingest_set_err(err, errlen, "'%s': no decoder in this FFmpeg build for video codec %s",
                           s->url, any >= 0 ? avcodec_get_name(s->fmt->streams[any]->codecpar->codec_id) : "?");
            *fatal = true;
        } else {
            ingest_set_err(err, errlen, "'%s' (%s) has no video stream", s->url,
                           s->fmt->iformat->name);
            *fatal = !s->ui.live;
        }
        close_input(s);
        return INGEST_EIO;
    }
    s->st = s->fmt->streams[s->vidx];
    for (unsigned i = 0; i < s->fmt->nb_streams; i++)
        if ((int)i != s->vidx)
            s->fmt->streams[i]->discard = AVDISCARD_ALL;
    if (s->st->codecpar->width > MAX_FRAME_SIDE || s->st->codecpar->height > MAX_FRAME_SIDE) {
        ingest_set_err(err, errlen, "'%s': video size %dx%d exceeds %d", s->url,
                       s->st->codecpar->width, s->st->codecpar->height, MAX_FRAME_SIDE);
        close_input(s);
        *fatal = true;
        return INGEST_EIO;
    }
    s->dec = avcodec_alloc_context3(codec);
    if (!s->dec || avcodec_parameters_to_context(s->dec, s->st->codecpar) < 0) {
        ingest_set_err(err, errlen, "out of memory for the %s decoder", codec->name);
        close_input(s);
        return INGEST_ENOMEM;
    }
    s->dec->pkt_timebase = s->st->time_base;
    s->dec->thread_count = s->opt.decoder_threads;
    s->dec->thread_type = FF_THREAD_FRAME | FF_THREAD_SLICE;
    rc = avcodec_open2(s->dec, codec, NULL);
    if (rc < 0) {
        av_err(rc, e, sizeof(e));
        ingest_set_err(err, errlen, "cannot open the %s decoder for '%s': %s", codec->name,
                       s->url, e);
        close_input(s);
        *fatal = true;
        return INGEST_EIO;
    }

    const char *iname = s->fmt->iformat->name;
    size_t il = strlen(iname);
    s->is_image = s->force_image ||
                  (!s->ui.is_sequence && s->ui.kind != INGEST_KIND_DEVICE &&
                   ((il > 5 && strcmp(iname + il - 5, "_pipe") == 0) || strcmp(iname, "image2") == 0));
    if (!s->live_decided) {
        if (s->opt.live == INGEST_LIVE_YES)
            s->live = true;
        else if (s->opt.live == INGEST_LIVE_NO)
            s->live = false;
        else if (s->ui.live_known || s->ui.kind != INGEST_KIND_NETWORK)
            s->live = s->ui.live;
        else /* http(s)/hls: a stream with no duration is live (camera, live playlist) */
            s->live = s->fmt->duration == AV_NOPTS_VALUE || s->fmt->duration <= 0;
        if (s->is_image)
            s->live = false;
        s->live_decided = true;
    }
    s->rotation = s->opt.autorotate ? get_rotation(s->st) : 0;

    AVRational fr = s->st->avg_frame_rate;
    if (fr.num <= 0 || fr.den <= 0)
        fr = s->st->r_frame_rate;
    double src_fps = (fr.num > 0 && fr.den > 0) ? av_q2d(fr) : 0;
    if (src_fps > 1000)
        src_fps = 0;
    s->src_fps = src_fps;
    s->tl.tb = av_q2d(s->st->time_base);
    s->tl.wrap_ticks = (s->st->pts_wrap_bits > 0 && s->st->pts_wrap_bits < 63)
                           ? (int64_t)1 << s->st->pts_wrap_bits : 0;
    s->tl.discont_fmt = (s->fmt->iformat->flags & AVFMT_TS_DISCONT) != 0;
    s->tl.live = s->live;
    if (!(s->tl.dur > 0))
        s->tl.dur = src_fps > 0 ? 1.0 / src_fps : 0.04;
    s->tl.dur_fixed = src_fps > 0;
    s->tl.file_start = s->st->start_time != AV_NOPTS_VALUE ? s->st->start_time * s->tl.tb : 0;

    int disp_w = s->st->codecpar->width, disp_h = s->st->codecpar->height;
    if (s->rotation == 90 || s->rotation == 270) {
        int t = disp_w;
        disp_w = disp_h;
        disp_h = t;
    }

    (void)first_open;
    if (s->upstream && !s->is_image && s->plan.indices == NULL) {
        /* Upstream's total_num_frames is the container's frame count (PyAV stream.frames);
         * containers without one (MKV, WebM) are counted by demuxing once, then reopened:
         * seeking back to 0 is not reliable for every format. */
        if (s->up_total <= 0) {
            int64_t total = s->st->nb_frames;
            if (total <= 0) {
                rc = count_frames(s, &total, err, errlen);
                close_input(s);
                if (rc)
                    return rc;
                if (total <= 0) {
                    ingest_set_err(err, errlen, "'%s' has no video frames", s->url);
                    *fatal = true;
                    return INGEST_EIO;
                }
                s->up_total = total;
                return open_input(s, false, fatal, err, errlen);
            }
            s->up_total = total;
        }
        int64_t total = s->up_total;
        s->up_fps = src_fps > 0 ? src_fps : 24.0; /* upstream's default when fps is unknown */
        rc = ingest_sample_plan_make(&s->plan, total, s->up_fps, s->opt.fps, s->opt.min_frames,
                                     s->opt.max_frames, e, sizeof(e));
        if (rc) {
            ingest_set_err(err, errlen, "'%s': %s", s->url, e);
            close_input(s);
            *fatal = true;
            return rc;
        }
        rc = ingest_smart_resize_video(s->plan.num_frames, disp_h, disp_w, s->opt.clip_min_pixels,
                                       s->opt.clip_max_pixels, &s->up_h, &s->up_w, e, sizeof(e));
        if (rc) {
            ingest_set_err(err, errlen, "'%s': %s", s->url, e);
            close_input(s);
            *fatal = true;
            return rc;
        }
    }

    pthread_mutex_lock(&s->mu);
    snprintf(s->info.format, sizeof(s->info.format), "%s", iname);
    snprintf(s->info.codec, sizeof(s->info.codec), "%s", codec->name);
    s->info.src_width = disp_w;
    s->info.src_height = disp_h;
    s->info.rotation = s->rotation;
    s->info.src_fps = src_fps;
    s->info.duration = (!s->live && s->fmt->duration > 0) ? s->fmt->duration / (double)AV_TIME_BASE : 0;
    s->info.live = s->live;
    s->info.is_image = s->is_image;
    if (s->upstream && !s->is_image) {
        s->info.total_frames = s->up_total;
        s->info.out_height = s->up_h;
        s->info.out_width = s->up_w;
    }
    s->info_valid = true;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static void seek_to(ingest_source *s, double media_pos)
{
    if (media_pos <= 0)
        return;
    int64_t ts = (int64_t)(media_pos * AV_TIME_BASE);
    if (s->fmt->start_time != AV_NOPTS_VALUE)
        ts += s->fmt->start_time;
    arm_deadline(s, (int64_t)s->opt.io_timeout_ms * 1000000LL);
    if (avformat_seek_file(s->fmt, -1, INT64_MIN, ts, ts, 0) < 0)
        return; /* not seekable: decode from the start and drop frames before the position */
    avcodec_flush_buffers(s->dec);
}

/* ---- the decode loop ---------------------------------------------------------------- */

static run_result decode_packet(ingest_source *s, AVPacket *pkt, AVFrame *frm, char *err,
                                size_t errlen)
{
    int rc = avcodec_send_packet(s->dec, pkt);
    if (rc < 0 && rc != AVERROR(EAGAIN) && rc != AVERROR_EOF)
        atomic_fetch_add(&s->n_dec_errors, 1);
    for (;;) {
        int r = avcodec_receive_frame(s->dec, frm);
        if (r == AVERROR(EAGAIN) || r == AVERROR_EOF)
            break;
        if (r < 0) {
            atomic_fetch_add(&s->n_dec_errors, 1);
            break;
        }
        int h = handle_frame(s, frm, err, errlen);
        av_frame_unref(frm);
        if (h < 0)
            return RUN_FATAL;
        if (h > 0)
            return RUN_DONE;
        if (atomic_load(&s->stop))
            return RUN_STOP;
    }
    if (rc == AVERROR(EAGAIN)) {
        /* decoder was full: its output has been drained, feed the packet again */
        if (avcodec_send_packet(s->dec, pkt) < 0)
            atomic_fetch_add(&s->n_dec_errors, 1);
    }
    return RUN_CONTINUE;
}

static run_result run_input(ingest_source *s, char *err, size_t errlen)
{
    AVPacket *pkt = av_packet_alloc();
    AVFrame *frm = av_frame_alloc();
    if (!pkt || !frm) {
        av_packet_free(&pkt);
        av_frame_free(&frm);
        ingest_set_err(err, errlen, "out of memory");
        return RUN_FATAL;
    }
    run_result res = RUN_EOF;
    int consecutive_errors = 0;
    s->last_frame_ns = mono_ns();
    for (;;) {
        if (atomic_load(&s->stop)) {
            res = RUN_STOP;
            break;
        }
        arm_deadline(s, (int64_t)s->opt.io_timeout_ms * 1000000LL);
        int rc = av_read_frame(s->fmt, pkt);
        if (rc == AVERROR(EAGAIN)) {
            sleep_ns(s, 5000000); /* nothing yet (non-blocking device); stop is checked above */
            continue;
        }
        if (rc < 0) {
            if (atomic_load(&s->stop)) {
                res = RUN_STOP;
                break;
            }
            bool eof = rc == AVERROR_EOF || (s->fmt->pb && avio_feof(s->fmt->pb) && !s->timed_out);
            if (!eof && rc == AVERROR_INVALIDDATA && !s->timed_out &&
                ++consecutive_errors < MAX_CONSECUTIVE_READ_ERRORS) {
                atomic_fetch_add(&s->n_dec_errors, 1);
                continue; /* corrupt container data: skip it */
            }
            /* drain what the decoder still holds */
            run_result d = decode_packet(s, NULL, frm, err, errlen);
            avcodec_flush_buffers(s->dec);
            if (d == RUN_FATAL || d == RUN_STOP || d == RUN_DONE) {
                res = d;
                break;
            }
            if (eof) {
                res = RUN_EOF;
            } else {
                char e[160];
                av_err(rc, e, sizeof(e));
                if (s->timed_out)
                    ingest_set_err(err, errlen, "no data for %d ms", s->opt.io_timeout_ms);
                else
                    ingest_set_err(err, errlen, "read error: %s", e);
                res = RUN_ERROR;
            }
            break;
        }
        consecutive_errors = 0;
        atomic_fetch_add(&s->n_bytes, (uint64_t)(pkt->size > 0 ? pkt->size : 0));
        if (pkt->stream_index != s->vidx) {
            av_packet_unref(pkt);
            continue;
        }
        atomic_fetch_add(&s->n_packets, 1);
        if (pkt->flags & AV_PKT_FLAG_CORRUPT)
            atomic_fetch_add(&s->n_dec_errors, 1); /* the demuxer saw damage (TS CC errors) */
        choose_skip(s, pkt);
        run_result d = decode_packet(s, pkt, frm, err, errlen);
        av_packet_unref(pkt);
        if (d != RUN_CONTINUE) {
            res = d;
            break;
        }
    }
    av_packet_free(&pkt);
    av_frame_free(&frm);
    return res;
}

/* ---- the thread --------------------------------------------------------------------- */

static void backoff_wait(ingest_source *s, int attempt)
{
    double base = s->opt.reconnect_min_ms;
    for (int i = 1; i < attempt && base < s->opt.reconnect_max_ms; i++)
        base *= 2;
    if (base > s->opt.reconnect_max_ms)
        base = s->opt.reconnect_max_ms;
    /* jitter in [0.5, 1.0] x base so that many cameras behind one failed switch do not
     * reconnect in lockstep */
    double j = 0.5 + 0.5 * (double)(rng_next(s) >> 11) / (double)(1ULL << 53);
    sleep_ns(s, (int64_t)(base * j * 1e6));
}

static void *source_thread(void *arg)
{
    ingest_source *s = arg;
    char err[512] = "";
    int attempt = 0;          /* consecutive failed attempts */
    bool first = true;        /* no successful open yet */
    bool had_frames = false;  /* any frame ever */
    ingest_state final_state = INGEST_STATE_ENDED;
    char final_detail[512] = "end of input";
    bool resume = false;
    bool looping = false;     /* reopening a file for loop=true: not a reconnect */

    while (!atomic_load(&s->stop)) {
        /* A live source that cannot be reached yet says so after its first attempt
         * (RECONNECTING, with the error) instead of staying CONNECTING for ever. */
        if (first && attempt == 0)
            set_state(s, INGEST_STATE_CONNECTING, s->url);
        else if (!looping && !first)
            set_state(s, INGEST_STATE_RECONNECTING, err);
        bool fatal = false;
        int rc = open_input(s, first, &fatal, err, sizeof(err));
        if (rc < 0) {
            if (atomic_load(&s->stop))
                break;
            set_error(s, err);
            bool retry = !fatal && (s->ui.live || s->live || s->ui.kind == INGEST_KIND_NETWORK);
            if (first && first_open_refused(s->last_open_rc))
                retry = false; /* 401/403/404 on the very first attempt: a wrong URL, not an outage */
            attempt++;
            if (!retry || (s->opt.max_reconnects >= 0 && attempt > s->opt.max_reconnects)) {
                final_state = INGEST_STATE_FAILED;
                if (retry)
                    snprintf(final_detail, sizeof(final_detail), "gave up after %d attempts: %.440s",
                             attempt, err);
                else
                    snprintf(final_detail, sizeof(final_detail), "%.500s", err);
                break;
            }
            looping = false;
            if (first)
                set_state(s, INGEST_STATE_RECONNECTING, err);
            backoff_wait(s, attempt);
            continue;
        }
        if (!first && !looping)
            atomic_fetch_add(&s->n_reconnects, 1);
        s->frames_this_conn = 0;
        /* timeline for this connection */
        if (first || s->live) {
            tl_begin(&s->tl, !first);
            if (first && !s->live && s->opt.start_offset > 0) {
                seek_to(s, s->opt.start_offset);
                s->skip_until_ts = s->tl.file_start + s->opt.start_offset;
            }
        } else if (resume) {
            /* non-live network source: continue where the connection broke */
            tl_begin(&s->tl, false);
            s->resume_media = s->tl.last_media;
            seek_to(s, s->tl.last_media);
        } else {
            /* file loop: start again, media time keeps growing */
            tl_begin(&s->tl, true);
            if (s->opt.start_offset > 0) {
                seek_to(s, s->opt.start_offset);
                s->skip_until_ts = s->tl.file_start + s->opt.start_offset;
            }
        }
        first = false;
        resume = false;
        looping = false;

        run_result r = run_input(s, err, sizeof(err));
        if (s->frames_this_conn > 0) {
            had_frames = true;
            attempt = 0;
        }
        close_input(s);
        if (r == RUN_STOP)
            break;
        if (r == RUN_FATAL) {
            final_state = INGEST_STATE_FAILED;
            snprintf(final_detail, sizeof(final_detail), "%.500s", err);
            break;
        }
        if (r == RUN_DONE) {
            snprintf(final_detail, sizeof(final_detail), "%s",
                     s->is_image ? "image decoded" : "all planned frames sampled");
            break;
        }
        if (!s->live) {
            if (r == RUN_EOF && s->opt.loop && s->frames_this_conn > 0 && !s->upstream) {
                looping = true;
                continue;
            }
            if (r == RUN_EOF) {
                if (!had_frames) {
                    final_state = INGEST_STATE_FAILED;
                    snprintf(final_detail, sizeof(final_detail),
                             "'%s': no decodable video frame", s->url);
                } else if (s->upstream && s->plan_pos < s->plan.num_frames) {
                    snprintf(final_detail, sizeof(final_detail),
                             "end of input after %lld frames (%d of %d planned frames sampled)",
                             (long long)s->frame_counter, s->plan_pos, s->plan.num_frames);
                }
                break;
            }
            /* read error on a non-live source */
            if (s->ui.kind == INGEST_KIND_NETWORK) {
                set_state(s, INGEST_STATE_STALLED, err);
                attempt++;
                if (s->opt.max_reconnects >= 0 && attempt > s->opt.max_reconnects) {
                    final_state = INGEST_STATE_FAILED;
                    snprintf(final_detail, sizeof(final_detail), "gave up after %d attempts: %.440s",
                             attempt, err);
                    break;
                }
                resume = true;
                backoff_wait(s, attempt);
                continue;
            }
            final_state = had_frames ? INGEST_STATE_ENDED : INGEST_STATE_FAILED;
            snprintf(final_detail, sizeof(final_detail), "%.500s", err);
            break;
        }
        /* live: the connection ended or broke */
        char lost[600];
        snprintf(lost, sizeof(lost), "connection lost: %.500s",
                 r == RUN_EOF ? "end of stream" : err);
        set_error(s, lost);
        set_state(s, INGEST_STATE_STALLED, lost);
        flush_pending(s); /* a pair must not span an outage */
        snprintf(err, sizeof(err), "%.500s", lost);
        attempt++;
        if (s->opt.max_reconnects >= 0 && attempt > s->opt.max_reconnects) {
            final_state = INGEST_STATE_FAILED;
            snprintf(final_detail, sizeof(final_detail), "gave up after %d attempts: %.440s",
                     attempt, lost);
            break;
        }
        backoff_wait(s, attempt);
    }
    close_input(s);
    flush_pending(s);
    if (atomic_load(&s->stop) && final_state != INGEST_STATE_FAILED)
        snprintf(final_detail, sizeof(final_detail), "stopped");
    if (final_state == INGEST_STATE_FAILED)
        set_error(s, final_detail);
    /* The final state and "finished" change together, before on_state runs: a consumer told
     * ENDED/FAILED gets INGEST_EOF from ingest_source_pop as soon as the queue is empty. */
    pthread_mutex_lock(&s->mu);
    ingest_state old = (ingest_state)atomic_load(&s->state);
    atomic_store(&s->state, (int)final_state);
    s->finished = true;
    pthread_cond_broadcast(&s->cv_pop);
    pthread_mutex_unlock(&s->mu);
    if (old != final_state && s->opt.on_state)
        s->opt.on_state(s->opt.user, s, old, final_state, final_detail);
    return NULL;
}

/* ---- public API --------------------------------------------------------------------- */

static int source_new(ingest_source **out, const char *url, const ingest_options *opt,
                      char *err, size_t errlen);

int ingest_source_create(ingest_source **out, const char *url, const ingest_options *opt,
                         char *err, size_t errlen)
{
    *out = NULL;
    ingest_options defaults;
    if (!opt) {
        ingest_options_init(&defaults);
        opt = &defaults;
    }
    int rc = ingest_check_url(url, opt, err, errlen);
    if (rc)
        return rc;
    return source_new(out, url, opt, err, errlen);
}

static int source_new(ingest_source **out, const char *url, const ingest_options *opt,
                      char *err, size_t errlen)
{
    ingest_source *s = calloc(1, sizeof(*s));
    if (!s) {
        ingest_set_err(err, errlen, "out of memory");
        return INGEST_ENOMEM;
    }
    s->opt = *opt;
    s->url = strdup(url);
    s->q_cap = opt->queue_capacity;
    s->q = calloc((size_t)s->q_cap, sizeof(*s->q));
    if (!s->url || !s->q) {
        free(s->url);
        free(s->q);
        free(s);
        ingest_set_err(err, errlen, "out of memory");
        return INGEST_ENOMEM;
    }
    if (ingest_classify_url(url, opt, &s->ui, NULL, 0) != 0)
        memset(&s->ui, 0, sizeof(s->ui)); /* memory source: no URL policy applies */
    /* FFmpeg gets the operator's list; "v4l2" and "hls" are not protocol names it needs,
     * but harmless in the list. */
    snprintf(s->ff_protocols, sizeof(s->ff_protocols), "%s", opt->protocols);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->join_mu, NULL);
    pthread_cond_init(&s->cv_pop, &ca);
    pthread_cond_init(&s->cv_push, &ca);
    pthread_cond_init(&s->cv_sleep, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&s->stop, false);
    atomic_init(&s->state, INGEST_STATE_IDLE);
    s->vidx = -1;
    s->upstream = opt->sampling == INGEST_SAMPLE_UPSTREAM;
    s->skip_until_ts = -1e308;
    s->resume_media = -1e308;
    s->rng = (uint64_t)mono_ns() ^ ((uint64_t)(uintptr_t)s << 16) ^ 0x9e3779b97f4a7c15ULL;
    if (!s->rng)
        s->rng = 1;
    *out = s;
    return 0;
}

int ingest_source_start(ingest_source *s, char *err, size_t errlen)
{
    pthread_mutex_lock(&s->mu);
    if (s->started) {
        pthread_mutex_unlock(&s->mu);
        ingest_set_err(err, errlen, "source '%s' was already started", s->url);
        return INGEST_ESTATE;
    }
    s->started = true;
    pthread_mutex_unlock(&s->mu);
    int rc = pthread_create(&s->thread, NULL, source_thread, s);
    if (rc != 0) {
        pthread_mutex_lock(&s->mu);
        s->started = false;
        pthread_mutex_unlock(&s->mu);
        ingest_set_err(err, errlen, "cannot start a thread for '%s': %s", s->url, strerror(rc));
        return INGEST_ENOMEM;
    }
    return 0;
}

void ingest_source_stop(ingest_source *s)
{
    if (!s)
        return;
    atomic_store(&s->stop, true);
    pthread_mutex_lock(&s->mu);
    pthread_cond_broadcast(&s->cv_push);
    pthread_cond_broadcast(&s->cv_sleep);
    bool started = s->started;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&s->join_mu);
    if (started && !s->joined) {
        pthread_join(s->thread, NULL);
        s->joined = true;
    }
    pthread_mutex_unlock(&s->join_mu);
    pthread_mutex_lock(&s->mu);
    s->finished = true;
    pthread_cond_broadcast(&s->cv_pop);
    pthread_mutex_unlock(&s->mu);
}

void ingest_source_destroy(ingest_source *s)
{
    if (!s)
        return;
    ingest_source_stop(s);
    for (int i = 0; i < s->q_len; i++)
        ingest_pair_free(s->q[(s->q_head + i) % s->q_cap]);
    free(s->q);
    ingest_pair_free(s->pend);
    close_input(s);
    sws_freeContext(s->sws);
    ingest_resizer_destroy(s->rz);
    free(s->rgb);
    free(s->rot);
    ingest_sample_plan_free(&s->plan);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->join_mu);
    pthread_cond_destroy(&s->cv_pop);
    pthread_cond_destroy(&s->cv_push);
    pthread_cond_destroy(&s->cv_sleep);
    free(s->url);
    free(s);
}

int ingest_source_pop(ingest_source *s, ingest_pair **out, int timeout_ms)
{
    *out = NULL;
    struct timespec dl;
    if (timeout_ms > 0) {
        clock_gettime(CLOCK_MONOTONIC, &dl);
        int64_t end = (int64_t)dl.tv_sec * 1000000000LL + dl.tv_nsec + (int64_t)timeout_ms * 1000000LL;
        dl.tv_sec = end / 1000000000LL;
        dl.tv_nsec = end % 1000000000LL;
    }
    pthread_mutex_lock(&s->mu);
    uint64_t gen = s->wake_gen;
    while (s->q_len == 0 && !s->finished && s->wake_gen == gen && timeout_ms != 0) {
        if (timeout_ms < 0)
            pthread_cond_wait(&s->cv_pop, &s->mu);
        else if (pthread_cond_timedwait(&s->cv_pop, &s->mu, &dl) != 0)
            break;
    }
    if (s->q_len > 0) {
        *out = s->q[s->q_head];
        s->q[s->q_head] = NULL;
        s->q_head = (s->q_head + 1) % s->q_cap;
        s->q_len--;
        atomic_fetch_add(&s->n_popped, 1);
        pthread_cond_broadcast(&s->cv_push);
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    int rc = s->finished ? INGEST_EOF : INGEST_EAGAIN;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void ingest_source_wake(ingest_source *s)
{
    pthread_mutex_lock(&s->mu);
    s->wake_gen++;
    pthread_cond_broadcast(&s->cv_pop);
    pthread_mutex_unlock(&s->mu);
}

ingest_state ingest_source_state(const ingest_source *s)
{
    return (ingest_state)atomic_load(&((ingest_source *)s)->state);
}

void ingest_source_stats(const ingest_source *cs, ingest_stats *o)
{
    ingest_source *s = (ingest_source *)cs;
    memset(o, 0, sizeof(*o));
    /* Read under the queue lock so that produced = popped + dropped + queue_len holds in
     * every snapshot (those four only change under it). */
    pthread_mutex_lock(&s->mu);
    o->pairs_produced = atomic_load(&s->n_produced);
    o->pairs_popped = atomic_load(&s->n_popped);
    o->pairs_dropped = atomic_load(&s->n_dropped);
    o->queue_len = s->q_len;
    pthread_mutex_unlock(&s->mu);
    o->bytes_read = atomic_load(&s->n_bytes);
    o->packets_read = atomic_load(&s->n_packets);
    o->frames_decoded = atomic_load(&s->n_decoded);
    o->frames_sampled = atomic_load(&s->n_sampled);
    o->decode_errors = atomic_load(&s->n_dec_errors);
    o->reconnects = atomic_load(&s->n_reconnects);
    o->discontinuities = atomic_load(&s->n_discont);
    o->media_time = (double)atomic_load(&s->media_us) / 1e6;
}

int ingest_source_info(const ingest_source *cs, ingest_info *out)
{
    ingest_source *s = (ingest_source *)cs;
    pthread_mutex_lock(&s->mu);
    int rc = s->info_valid ? 0 : INGEST_EAGAIN;
    *out = s->info;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void ingest_source_last_error(const ingest_source *cs, char *buf, size_t buflen)
{
    ingest_source *s = (ingest_source *)cs;
    pthread_mutex_lock(&s->mu);
    snprintf(buf, buflen, "%s", s->last_error);
    pthread_mutex_unlock(&s->mu);
}

const char *ingest_source_url(const ingest_source *s) { return s->url; }

int ingest_source_create_image(ingest_source **out, const char *url, const void *data,
                               size_t len, const ingest_options *opt, char *err, size_t errlen)
{
    ingest_options o = *opt;
    o.sampling = INGEST_SAMPLE_PTS;
    o.live = INGEST_LIVE_NO;
    o.loop = false;
    o.realtime = false;
    o.start_offset = 0;
    o.queue_capacity = 1;
    o.queue_policy = INGEST_QUEUE_DROP_OLDEST;
    o.max_reconnects = 0;
    o.on_state = NULL;
    o.on_pair = NULL;
    int rc;
    if (url) {
        rc = ingest_check_url(url, &o, err, errlen);
        if (rc)
            return rc;
    } else if ((rc = ingest_check_options(&o, err, errlen)) != 0) {
        return rc;
    } else if (!data || len == 0) {
        ingest_set_err(err, errlen, "image: no data (0 bytes)");
        return INGEST_EINVAL;
    }
    rc = source_new(out, url ? url : "<image data>", &o, err, errlen);
    if (rc)
        return rc;
    (*out)->force_image = true;
    if (!url) {
        (*out)->mem = data;
        (*out)->mem_len = len;
        (*out)->ui.kind = INGEST_KIND_FILE;
        snprintf((*out)->ui.scheme, sizeof((*out)->ui.scheme), "memory");
    }
    return 0;
}
