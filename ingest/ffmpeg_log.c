/* ffmpeg_log.c — FFmpeg's messages handed to the program's own log (ingest_set_log_handler). */
#include "ingest/ingest.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <libavutil/log.h>

static ingest_log_fn g_fn;
static void *g_user;

/* av_log may deliver one line in several calls: each thread gathers its own pieces. */
static _Thread_local char t_line[1024];
static _Thread_local size_t t_len;
static _Thread_local int t_level = AV_LOG_PANIC;

static void flush_line(void) {
    while (t_len > 0 && (t_line[t_len - 1] == '\n' || t_line[t_len - 1] == '\r' || t_line[t_len - 1] == ' '))
        t_len--;
    t_line[t_len] = '\0';
    ingest_log_fn fn = g_fn;
    if (t_len > 0 && fn) {
        int level = t_level <= AV_LOG_ERROR ? INGEST_LOG_ERROR
                    : t_level <= AV_LOG_WARNING ? INGEST_LOG_WARNING : INGEST_LOG_INFO;
        fn(g_user, level, t_line);
    }
    t_len = 0;
    t_level = AV_LOG_PANIC;
}

static void av_callback(void *avcl, int level, const char *fmt, va_list vl) {
    if (level > av_log_get_level()) return;
    if (t_len == 0 && avcl) {
        /* the component: "tcp", "h264", "mpegts", ... */
        AVClass *cls = *(AVClass **)avcl;
        const char *name = cls && cls->item_name ? cls->item_name(avcl) : NULL;
        if (name && *name) {
            int n = snprintf(t_line, sizeof t_line, "%s: ", name);
            t_len = n > 0 && (size_t)n < sizeof t_line ? (size_t)n : 0;
        }
    }
    if (level < t_level) t_level = level;   /* the most severe part decides */
    char piece[1024];
    int n = vsnprintf(piece, sizeof piece, fmt, vl);
    if (n < 0) return;
    size_t plen = strlen(piece);
    size_t room = sizeof t_line - 1 - t_len;
    size_t take = plen < room ? plen : room;
    memcpy(t_line + t_len, piece, take);
    t_len += take;
    if ((plen > 0 && piece[plen - 1] == '\n') || t_len >= sizeof t_line - 1) flush_line();
}

void ingest_set_log_handler(ingest_log_fn fn, void *user, bool want_info) {
    if (!fn) {
        g_fn = NULL;
        av_log_set_callback(av_log_default_callback);
        av_log_set_level(AV_LOG_INFO);
        return;
    }
    g_user = user;
    g_fn = fn;
    av_log_set_level(want_info ? AV_LOG_INFO : AV_LOG_WARNING);
    av_log_set_callback(av_callback);
}
