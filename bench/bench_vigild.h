/* bench_vigild.h — what the bench programs that drive the real vigild share (header-only: the
 * Makefile builds one program per source file in bench/): timing, dying with a message, /proc figures, and
 * the daemon as a child process with a configuration written into a temporary directory. */
#ifndef VIGIL_BENCH_BENCH_VIGILD_H
#define VIGIL_BENCH_BENCH_VIGILD_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "protocol/protocol.h"

static inline double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static inline void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static inline void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", program_invocation_short_name);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static inline long proc_kb(pid_t pid, const char *key) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long kb = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0) kb = strtol(line + kl, NULL, 10);
    fclose(f);
    return kb;
}

/* The path of a program of this build: $VIGIL_BUILD/bin/NAME, else the bin/ folder beside the
 * bench/ folder this program lives in. */
static inline void bench_program(const char *name, char *out, size_t outlen) {
    const char *vb = getenv("VIGIL_BUILD");
    if (vb && *vb) {
        snprintf(out, outlen, "%s/bin/%s", vb, name);
        return;
    }
    char self[PATH_MAX];
    ssize_t l = readlink("/proc/self/exe", self, sizeof self - 1);
    if (l <= 0) die("cannot find myself");
    self[l] = 0;
    char *slash = strrchr(self, '/');   /* .../build/bench/bench_x -> .../build/bin/NAME */
    if (slash) *slash = 0;
    slash = strrchr(self, '/');
    if (slash) *slash = 0;
    snprintf(out, outlen, "%s/bin/%s", self, name);
}

/* ---- the daemon ---------------------------------------------------------------------------------- */

typedef struct daemon_run {
    pid_t pid;
    char dir[256], ep[320], log[320];
} daemon_run;

static inline cJSON *call(const char *ep, const char *json, int timeout_ms) {
    char e[256];
    proto_client *c = proto_client_connect(ep, NULL, e, sizeof e);
    if (!c) return NULL;
    cJSON *final = NULL;
    if (proto_client_request(c, json, timeout_ms, NULL, NULL, &final, e, sizeof e) != 0) final = NULL;
    proto_client_close(c);
    return final;
}

static inline bool ok(const cJSON *r) {
    return r && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "ok"));
}

static inline double num(const cJSON *o, const char *k) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* Starts vigild --config DIR/vigild.json in a fresh temporary directory: the endpoints, the
 * model and the thread count, plus `extra` (more top-level JSON members, without braces). */
static inline void start_daemon(daemon_run *d, const char *vigild, const char *model, int threads, const char *extra) {
    snprintf(d->dir, sizeof d->dir, "/tmp/vigil-bench-XXXXXX");
    if (!mkdtemp(d->dir)) die("mkdtemp: %s", strerror(errno));
    snprintf(d->ep, sizeof d->ep, "ipc://%s/vigild.sock", d->dir);
    snprintf(d->log, sizeof d->log, "%s/vigild.log", d->dir);
    char cfg[320], text[PATH_MAX + 4096];
    snprintf(cfg, sizeof cfg, "%s/vigild.json", d->dir);
    snprintf(text, sizeof text,
             "{\"model\": \"%s\", \"threads\": %d, \"endpoint\": \"%s\", \"events_endpoint\": \"ipc://%s/events.sock\",\n"
             " \"log_format\": \"plain\", %s}\n", model, threads, d->ep, d->dir, extra);
    FILE *f = fopen(cfg, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) die("cannot write %s", cfg);
    d->pid = fork();
    if (d->pid < 0) die("fork: %s", strerror(errno));
    if (d->pid == 0) {
        int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(vigild, vigild, "--config", cfg, (char *)NULL);
        _exit(127);
    }
    double deadline = now_s() + 600;
    while (now_s() < deadline) {
        int st;
        if (waitpid(d->pid, &st, WNOHANG) == d->pid) die("vigild exited during start-up; see %s", d->log);
        cJSON *r = call(d->ep, "{\"id\":\"p\",\"op\":\"ping\"}", 1000);
        bool up = ok(r);
        cJSON_Delete(r);
        if (up) return;
        usleep(200000);
    }
    die("vigild did not start in 10 min; see %s", d->log);
}

static inline void stop_daemon(daemon_run *d) {
    kill(d->pid, SIGTERM);
    int st;
    for (int i = 0; i < 600 && waitpid(d->pid, &st, WNOHANG) != d->pid; i++) usleep(100000);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", d->dir);
}

#endif
