/* options.c — option defaults and validation, and the URL policy: which FFmpeg protocols and
 * device paths a source may use. The policy is checked here on the URL itself (clear error,
 * no I/O) and enforced again by FFmpeg through protocol_whitelist on every nested open
 * (RTSP's RTP sockets, HLS segments, HTTP redirects). */
#include "ingest/ingest_internal.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ingest_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

const char *ingest_state_name(ingest_state s)
{
    switch (s) {
    case INGEST_STATE_IDLE: return "idle";
    case INGEST_STATE_CONNECTING: return "connecting";
    case INGEST_STATE_LIVE: return "live";
    case INGEST_STATE_STALLED: return "stalled";
    case INGEST_STATE_RECONNECTING: return "reconnecting";
    case INGEST_STATE_ENDED: return "ended";
    case INGEST_STATE_FAILED: return "failed";
    }
    return "unknown";
}

void ingest_options_init(ingest_options *opt)
{
    memset(opt, 0, sizeof(*opt));
    opt->fps = INGEST_DEFAULT_FPS;
    opt->sampling = INGEST_SAMPLE_PTS;
    opt->min_pixels = INGEST_DEFAULT_MIN_PIXELS;
    opt->max_pixels = INGEST_DEFAULT_MAX_PIXELS;
    opt->clip_min_pixels = INGEST_DEFAULT_CLIP_MIN_PIXELS;
    opt->clip_max_pixels = INGEST_DEFAULT_CLIP_MAX_PIXELS;
    opt->min_frames = INGEST_DEFAULT_MIN_FRAMES;
    opt->max_frames = INGEST_DEFAULT_MAX_FRAMES;
    opt->image_min_pixels = INGEST_DEFAULT_IMAGE_MIN_PIXELS;
    opt->image_max_pixels = INGEST_DEFAULT_IMAGE_MAX_PIXELS;
    opt->sequence_fps = 0;
    opt->start_offset = 0;
    opt->loop = false;
    opt->realtime = false;
    opt->autorotate = true;
    opt->decoder_threads = 1;
    opt->skip_nonref = true;
    opt->live = INGEST_LIVE_AUTO;
    opt->io_timeout_ms = 10000;
    opt->stall_timeout_ms = 3000;
    opt->reconnect_min_ms = 500;
    opt->reconnect_max_ms = 30000;
    opt->max_reconnects = -1;
    snprintf(opt->rtsp_transport, sizeof(opt->rtsp_transport), "tcp");
    snprintf(opt->protocols, sizeof(opt->protocols), "%s", INGEST_DEFAULT_PROTOCOLS);
    snprintf(opt->device_prefix, sizeof(opt->device_prefix), "%s", INGEST_DEFAULT_DEVICE_PREFIX);
    opt->queue_capacity = 4;
    opt->queue_policy = INGEST_QUEUE_AUTO;
}

void ingest_options_set_max_tokens(ingest_options *opt, int tokens)
{
    if (tokens < 1)
        tokens = 1;
    opt->max_pixels = (long)tokens * INGEST_TOKEN_PIXELS;
    if (opt->min_pixels > opt->max_pixels)
        opt->min_pixels = opt->max_pixels;
}

/* Is name one entry of the comma-separated list? Case-insensitive, whitespace-tolerant. */
bool ingest_list_has(const char *list, const char *name)
{
    size_t n = strlen(name);
    const char *p = list;
    while (p && *p) {
        while (*p == ',' || *p == ' ')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && t[-1] == ' ')
            t--;
        if ((size_t)(t - p) == n && strncasecmp(p, name, n) == 0)
            return true;
        p = e;
    }
    return false;
}

/* FFmpeg's own rule (url_find_protocol): the protocol is the run of [A-Za-z0-9+.-] before a
 * ':' at the start; "a+b" nests protocol a over b. A path with no such prefix is "file". */
int ingest_url_scheme(const char *url, char *scheme, size_t len)
{
    size_t i = 0;
    while (url[i] && (isalnum((unsigned char)url[i]) || url[i] == '+' || url[i] == '-' ||
                      url[i] == '.'))
        i++;
    if (i == 0 || url[i] != ':' || !isalpha((unsigned char)url[0])) {
        snprintf(scheme, len, "%s", "");
        return 0;
    }
    if (i >= len)
        i = len - 1;
    for (size_t k = 0; k < i; k++)
        scheme[k] = (char)tolower((unsigned char)url[k]);
    scheme[i] = '\0';
    return 1;
}

static bool is_live_scheme(const char *scheme)
{
    static const char *live[] = {"rtsp", "rtsps", "rtp", "srtp", "udp", "tcp", "srt",
                                 "rtmp", "rtmps", "rist", "v4l2", NULL};
    for (int i = 0; live[i]; i++)
        if (strcmp(scheme, live[i]) == 0)
            return true;
    return false;
}

static int check_device_path(const char *path, const ingest_options *opt, char *err,
                             size_t errlen)
{
    if (!ingest_list_has(opt->protocols, "v4l2")) {
        ingest_set_err(err, errlen,
                       "source '%s': V4L2 devices are not allowed (add \"v4l2\" to the allowed "
                       "protocols)", path);
        return INGEST_EPERM;
    }
    size_t pl = strlen(opt->device_prefix);
    if (pl == 0 || strncmp(path, opt->device_prefix, pl) != 0) {
        ingest_set_err(err, errlen,
                       "source '%s': device path must start with the allowed prefix '%s'", path,
                       opt->device_prefix);
        return INGEST_EPERM;
    }
    if (strstr(path, "..") || strstr(path, "//")) {
        ingest_set_err(err, errlen, "source '%s': device path must not contain '..' or '//'",
                       path);
        return INGEST_EPERM;
    }
    return 0;
}

int ingest_classify_url(const char *url, const ingest_options *opt, ingest_url_info *ui,
                        char *err, size_t errlen)
{
    memset(ui, 0, sizeof(*ui));
    if (!url || !*url) {
        ingest_set_err(err, errlen, "source url is empty");
        return INGEST_EINVAL;
    }
    size_t len = strlen(url);
    if (len >= INGEST_MAX_URL) {
        ingest_set_err(err, errlen, "source url is %zu bytes; the limit is %d", len,
                       INGEST_MAX_URL - 1);
        return INGEST_EINVAL;
    }
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)url[i] < 0x20 || url[i] == 0x7f) {
            ingest_set_err(err, errlen, "source url contains a control character at byte %zu", i);
            return INGEST_EINVAL;
        }
    }
    char scheme[64];
    bool has_scheme = ingest_url_scheme(url, scheme, sizeof(scheme));
    const char *dev_prefix = opt->device_prefix[0] ? opt->device_prefix : INGEST_DEFAULT_DEVICE_PREFIX;

    if (has_scheme && strcmp(scheme, "v4l2") == 0) {
        const char *p = url + 5;
        while (p[0] == '/' && p[1] == '/')
            p++; /* v4l2:///dev/video0 and v4l2:/dev/video0 */
        snprintf(ui->open_url, sizeof(ui->open_url), "%s", p);
        ui->kind = INGEST_KIND_DEVICE;
        snprintf(ui->scheme, sizeof(ui->scheme), "v4l2");
        int rc = check_device_path(ui->open_url, opt, err, errlen);
        if (rc)
            return rc;
        ui->live = true;
        return 0;
    }
    if (!has_scheme && strncmp(url, dev_prefix, strlen(dev_prefix)) == 0) {
        snprintf(ui->open_url, sizeof(ui->open_url), "%s", url);
        ui->kind = INGEST_KIND_DEVICE;
        snprintf(ui->scheme, sizeof(ui->scheme), "v4l2");
        int rc = check_device_path(url, opt, err, errlen);
        if (rc)
            return rc;
        ui->live = true;
        return 0;
    }
    snprintf(ui->open_url, sizeof(ui->open_url), "%s", url);
    if (!has_scheme || strcmp(scheme, "file") == 0) {
        snprintf(ui->scheme, sizeof(ui->scheme), "file");
        if (!ingest_list_has(opt->protocols, "file")) {
            ingest_set_err(err, errlen,
                           "source '%s': local files are not allowed (the operator must add "
                           "\"file\" to the allowed protocols)", url);
            return INGEST_EPERM;
        }
        ui->kind = INGEST_KIND_FILE;
        /* printf-style pattern (frame_%04d.png) -> image2 sequence */
        const char *pc = strchr(url, '%');
        while (pc) {
            const char *q = pc + 1;
            while (*q >= '0' && *q <= '9')
                q++;
            if (*q == 'd') {
                ui->is_sequence = true;
                break;
            }
            pc = strchr(pc + 1, '%');
        }
        ui->live = false;
        return 0;
    }
    snprintf(ui->scheme, sizeof(ui->scheme), "%s", scheme);
    /* Every component of a nested scheme (crypto+http, hls+https) must be allowed. The
     * well-known local-file tricks get a message of their own. */
    static const char *tricks[] = {"concat", "concatf", "subfile", "data", "pipe", "fd",
                                   "cache", "async", "crypto", NULL};
    char tmp[64];
    snprintf(tmp, sizeof(tmp), "%s", scheme);
    for (char *tok = strtok(tmp, "+"); tok; tok = strtok(NULL, "+")) {
        if (!ingest_list_has(opt->protocols, tok)) {
            for (int i = 0; tricks[i]; i++) {
                if (strcmp(tok, tricks[i]) == 0) {
                    ingest_set_err(err, errlen,
                                   "source '%.200s': protocol '%s:' is refused: it can read local "
                                   "files or other resources the operator did not allow "
                                   "(allowed protocols: %s)", url, tok, opt->protocols);
                    return INGEST_EPERM;
                }
            }
            ingest_set_err(err, errlen,
                           "source '%.200s': protocol '%s' is not allowed (allowed protocols: %s)",
                           url, tok, opt->protocols);
            return INGEST_EPERM;
        }
    }
    ui->kind = INGEST_KIND_NETWORK;
    char first[64];
    snprintf(first, sizeof(first), "%s", scheme);
    char *plus = strchr(first, '+');
    if (plus)
        *plus = '\0';
    ui->live = is_live_scheme(first);
    ui->live_known = ui->live; /* http/https/hls: decided once the stream is open */
    return 0;
}

int ingest_check_options(const ingest_options *o, char *err, size_t errlen)
{
#define BAD(...) do { ingest_set_err(err, errlen, __VA_ARGS__); return INGEST_EINVAL; } while (0)
    if (!(o->fps > 0 && o->fps <= 240))
        BAD("option fps = %g: expected a rate in (0, 240] frames per second", o->fps);
    if (o->min_pixels < INGEST_FACTOR * INGEST_FACTOR || o->max_pixels < o->min_pixels ||
        o->max_pixels > 16384L * 16384L)
        BAD("options min_pixels = %ld, max_pixels = %ld: expected 1024 <= min <= max <= 268435456 "
            "(max tokens per pair * 1024)", o->min_pixels, o->max_pixels);
    if (o->clip_min_pixels <= 0 || o->clip_max_pixels < o->clip_min_pixels)
        BAD("options clip_min_pixels = %ld, clip_max_pixels = %ld: expected 0 < min <= max",
            o->clip_min_pixels, o->clip_max_pixels);
    if (o->image_min_pixels <= 0 || o->image_max_pixels < o->image_min_pixels ||
        o->image_max_pixels > 16384L * 16384L)
        BAD("options image_min_pixels = %ld, image_max_pixels = %ld: expected 0 < min <= max "
            "<= 268435456", o->image_min_pixels, o->image_max_pixels);
    if (o->min_frames < 1 || o->max_frames < o->min_frames || o->max_frames > 100000)
        BAD("options min_frames = %d, max_frames = %d: expected 1 <= min <= max <= 100000",
            o->min_frames, o->max_frames);
    if (!(o->sequence_fps >= 0 && o->sequence_fps <= 1000))
        BAD("option sequence_fps = %g: expected 0 (use fps) or a rate up to 1000", o->sequence_fps);
    if (!(o->start_offset >= 0 && o->start_offset < 1e9))
        BAD("option start_offset = %g: expected seconds >= 0", o->start_offset);
    if (o->decoder_threads < 0 || o->decoder_threads > 64)
        BAD("option decoder_threads = %d: expected 0 (auto) to 64", o->decoder_threads);
    if (o->io_timeout_ms < 100 || o->io_timeout_ms > 3600000)
        BAD("option io_timeout_ms = %d: expected 100 to 3600000", o->io_timeout_ms);
    if (o->stall_timeout_ms < 100 || o->stall_timeout_ms > 3600000)
        BAD("option stall_timeout_ms = %d: expected 100 to 3600000", o->stall_timeout_ms);
    if (o->reconnect_min_ms < 10 || o->reconnect_max_ms < o->reconnect_min_ms ||
        o->reconnect_max_ms > 3600000)
        BAD("options reconnect_min_ms = %d, reconnect_max_ms = %d: expected 10 <= min <= max "
            "<= 3600000", o->reconnect_min_ms, o->reconnect_max_ms);
    if (o->max_reconnects < -1)
        BAD("option max_reconnects = %d: expected -1 (forever) or a count >= 0", o->max_reconnects);
    if (o->queue_capacity < 1 || o->queue_capacity > 4096)
        BAD("option queue_capacity = %d: expected 1 to 4096 pairs", o->queue_capacity);
    if (o->queue_policy < INGEST_QUEUE_AUTO || o->queue_policy > INGEST_QUEUE_DROP_OLDEST)
        BAD("option queue_policy = %d: expected auto, block or drop_oldest", (int)o->queue_policy);
    if (o->sampling != INGEST_SAMPLE_PTS && o->sampling != INGEST_SAMPLE_UPSTREAM)
        BAD("option sampling = %d: expected pts or upstream", (int)o->sampling);
    if (o->live < INGEST_LIVE_AUTO || o->live > INGEST_LIVE_NO)
        BAD("option live = %d: expected auto, yes or no", (int)o->live);
    if (memchr(o->rtsp_transport, '\0', sizeof(o->rtsp_transport)) == NULL)
        BAD("option rtsp_transport is not terminated");
    if (o->rtsp_transport[0] && strcmp(o->rtsp_transport, "tcp") != 0 &&
        strcmp(o->rtsp_transport, "udp") != 0 && strcmp(o->rtsp_transport, "http") != 0 &&
        strcmp(o->rtsp_transport, "udp_multicast") != 0)
        BAD("option rtsp_transport = '%s': expected tcp, udp, udp_multicast, http or empty",
            o->rtsp_transport);
    if (memchr(o->protocols, '\0', sizeof(o->protocols)) == NULL ||
        memchr(o->device_prefix, '\0', sizeof(o->device_prefix)) == NULL)
        BAD("option protocols/device_prefix is not terminated");
    for (const char *p = o->protocols; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == ',' || *p == '_' || *p == ' ' || *p == '-'))
            BAD("option protocols = '%s': expected a comma-separated list of protocol names",
                o->protocols);
#undef BAD
    return 0;
}

int ingest_check_url(const char *url, const ingest_options *opt, char *err, size_t errlen)
{
    int rc = ingest_check_options(opt, err, errlen);
    if (rc)
        return rc;
    ingest_url_info ui;
    rc = ingest_classify_url(url, opt, &ui, err, errlen);
    if (rc)
        return rc;
    if (opt->sampling == INGEST_SAMPLE_UPSTREAM) {
        if (ui.kind == INGEST_KIND_DEVICE || ui.live || opt->live == INGEST_LIVE_YES) {
            ingest_set_err(err, errlen,
                           "source '%.200s': sampling=upstream needs a whole file; a live source "
                           "has no frame count (use pts sampling)", url);
            return INGEST_EINVAL;
        }
        if (opt->loop || opt->realtime || opt->start_offset > 0) {
            ingest_set_err(err, errlen,
                           "source '%.200s': sampling=upstream samples the whole file once; "
                           "loop, realtime and start_offset do not apply", url);
            return INGEST_EINVAL;
        }
    }
    return 0;
}
