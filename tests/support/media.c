/* media.c — see media.h. */
#include "tests/support/media.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MEDIA_MAX_CHILDREN 32
static pid_t g_children[MEDIA_MAX_CHILDREN];

int64_t media_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void media_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int media_tmpdir(char *out, size_t len)
{
    char tmpl[] = "/tmp/vigil-media-XXXXXX";
    if (!mkdtemp(tmpl))
        return -1;
    snprintf(out, len, "%s", tmpl);
    return 0;
}

void media_rmtree(const char *dir)
{
    if (!dir || strncmp(dir, "/tmp/vigil-media-", 17) != 0 || strstr(dir, ".."))
        return;
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "media: could not remove %s\n", dir);
}

int media_sh(const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    char full[8400];
    char log[] = "/tmp/vigil-media-sh-XXXXXX";
    int fd = mkstemp(log);
    if (fd < 0)
        return -1;
    close(fd);
    snprintf(full, sizeof(full), "( %s ) >'%s' 2>&1", cmd, log);
    int rc = system(full);
    int status = (rc == -1) ? -1 : (WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
    if (status != 0) {
        fprintf(stderr, "media: command failed (%d): %s\n", status, cmd);
        char tail[2048];
        FILE *f = fopen(log, "r");
        if (f) {
            size_t n = fread(tail, 1, sizeof(tail) - 1, f);
            tail[n] = '\0';
            fclose(f);
            fprintf(stderr, "%s\n", tail);
        }
    }
    unlink(log);
    return status;
}

pid_t media_spawn(const char *log_path, const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        setpgid(0, 0);
        int fd = open(log_path ? log_path : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) {
            dup2(nul, 0);
            close(nul);
        }
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    setpgid(pid, pid);
    for (int i = 0; i < MEDIA_MAX_CHILDREN; i++) {
        if (g_children[i] == 0) {
            g_children[i] = pid;
            break;
        }
    }
    return pid;
}

void media_kill(pid_t pid, int grace_ms)
{
    if (pid <= 0)
        return;
    kill(-pid, SIGTERM);
    int64_t end = media_now_ms() + grace_ms;
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD))
            break;
        if (media_now_ms() > end) {
            kill(-pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        media_sleep_ms(20);
    }
    kill(-pid, SIGKILL); /* anything left in the group */
    for (int i = 0; i < MEDIA_MAX_CHILDREN; i++)
        if (g_children[i] == pid)
            g_children[i] = 0;
}

void media_kill_all(void)
{
    for (int i = 0; i < MEDIA_MAX_CHILDREN; i++)
        if (g_children[i] > 0)
            media_kill(g_children[i], 1000);
}

int media_free_port(int type)
{
    int fd = socket(AF_INET, type, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t l = sizeof(a);
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &l) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

bool media_wait_tcp(int port, int timeout_ms)
{
    int64_t end = media_now_ms() + timeout_ms;
    while (media_now_ms() < end) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            return false;
        struct sockaddr_in a;
        memset(&a, 0, sizeof(a));
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons((uint16_t)port);
        int rc = connect(fd, (struct sockaddr *)&a, sizeof(a));
        close(fd);
        if (rc == 0)
            return true;
        media_sleep_ms(50);
    }
    return false;
}

static bool ffmpeg_lists(const char *what, const char *name)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "ffmpeg -hide_banner -%s 2>/dev/null | grep -qw '%s'", what, name);
    int rc = system(cmd);
    return rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
}

bool media_have_encoder(const char *name) { return ffmpeg_lists("encoders", name); }
bool media_have_decoder(const char *name) { return ffmpeg_lists("decoders", name); }

void media_color_source(char *buf, size_t len, int w, int h, const char *rate, double duration)
{
    snprintf(buf, len,
             "color=c=black:s=%dx%d:r=%s:d=%g,format=gbrp,"
             "geq=r='16*mod(N\\,16)+8':g='16*mod(trunc(N/16)\\,16)+8':b='16*mod(trunc(N/256)\\,16)+8'",
             w, h, rate, duration);
}

int media_color_index(const uint8_t *rgb, int h, int w)
{
    int y0 = h / 4, y1 = h - h / 4, x0 = w / 4, x1 = w - w / 4;
    double sum[3] = {0, 0, 0};
    int n = 0;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++, n++)
            for (int c = 0; c < 3; c++)
                sum[c] += rgb[((size_t)y * w + x) * 3 + c];
    if (n == 0)
        return -1;
    int d[3];
    for (int c = 0; c < 3; c++) {
        int v = (int)(sum[c] / n + 0.5);
        d[c] = (v - 8 + 8) / 16; /* nearest level of 16*k+8 */
        if (d[c] > 15)
            d[c] = 15;
    }
    return d[0] + 16 * d[1] + 256 * d[2];
}

int media_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t n = fwrite(data, 1, len, f);
    int rc = fclose(f);
    return (n == len && rc == 0) ? 0 : -1;
}

void *media_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return NULL;
    }
    long n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return NULL;
    }
    void *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf)
        ((char *)buf)[n] = '\0';   /* text files can be used as strings */
    if (buf && len)
        *len = (size_t)n;
    return buf;
}
