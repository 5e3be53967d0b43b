/* log.c — one line per event on stderr. Under systemd (JOURNAL_STREAM names our stderr) each
 * line starts with the syslog priority "<N>" that journald turns into the entry's level;
 * elsewhere a timestamp and the level name lead the line. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "daemon/daemon.h"

static _Atomic int g_max_level = VD_LOG_INFO;
static _Atomic int g_journal = 0;

static const char *const level_names[8] = { "emerg", "alert", "crit", "err",
                                            "warning", "notice", "info", "debug" };

/* JOURNAL_STREAM is "device:inode" of the stream journald gave us; it is inherited by children
 * whose stderr may be something else, so compare it with our own stderr. */
static bool stderr_is_journal(void) {
    const char *js = getenv("JOURNAL_STREAM");
    if (!js || !*js) return false;
    unsigned long long dev = 0, ino = 0;
    if (sscanf(js, "%llu:%llu", &dev, &ino) != 2) return false;
    struct stat st;
    if (fstat(STDERR_FILENO, &st) != 0) return false;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void vd_log_setup(vd_log_level max_level, vd_log_format format) {
    atomic_store(&g_max_level, (int)max_level);
    bool journal = format == VD_LOG_FORMAT_JOURNAL ||
                   (format == VD_LOG_FORMAT_AUTO && stderr_is_journal());
    atomic_store(&g_journal, journal ? 1 : 0);
}

bool vd_log_enabled(vd_log_level level) {
    return (int)level <= atomic_load(&g_max_level);
}

void vd_logv(vd_log_level level, const char *fmt, va_list ap) {
    if (!vd_log_enabled(level)) return;
    char line[2048];
    size_t n = 0;
    if (atomic_load(&g_journal)) {
        n = (size_t)snprintf(line, sizeof line, "<%d>", (int)level);
    } else {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof line - n, ".%03dZ vigild %s: ",
                              (int)(tv.tv_usec / 1000),
                              level_names[(int)level & 7]);
    }
    int w = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    size_t end = n + (w < 0 ? 0 : (size_t)w);
    if (end > sizeof line - 2) end = sizeof line - 2;
    /* One event, one line: a message that quotes client input must not forge log lines. */
    for (size_t i = n; i < end; i++)
        if (line[i] == '\n' || line[i] == '\r') line[i] = ' ';
    line[end++] = '\n';
    ssize_t off = 0;
    while ((size_t)off < end) {
        ssize_t k = write(STDERR_FILENO, line + off, end - (size_t)off);
        if (k <= 0) break;
        off += k;
    }
}

void vd_log(vd_log_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vd_logv(level, fmt, ap);
    va_end(ap);
}

int vd_log_level_parse(const char *s, vd_log_level *out) {
    static const struct { const char *name; vd_log_level level; } names[] = {
        { "err", VD_LOG_ERR },         { "error", VD_LOG_ERR },
        { "warning", VD_LOG_WARNING }, { "warn", VD_LOG_WARNING },
        { "notice", VD_LOG_NOTICE },   { "info", VD_LOG_INFO },
        { "debug", VD_LOG_DEBUG },
    };
    if (!s) return -1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(s, names[i].name) == 0) {
            *out = names[i].level;
            return 0;
        }
    return -1;
}

const char *vd_log_level_name(vd_log_level level) {
    return level_names[(int)level & 7];
}
