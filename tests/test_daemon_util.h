/* test_daemon_util.h — helpers shared by the tests/test_daemon_*.c programs (header-only: the
 * Makefile builds one program per tests/test_*.c). The real vigild from $VIGIL_BUILD/bin runs as a
 * child process with a configuration written here (tiny golden checkpoint, ipc:// endpoints in a
 * temporary directory); clients are real ZeroMQ clients through protocol.h's helpers.
 * Include <cmocka.h> first: some helpers fail the running test. */
#ifndef VIGIL_TESTS_TEST_DAEMON_UTIL_H
#define VIGIL_TESTS_TEST_DAEMON_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "protocol/protocol.h"
#include "tests/support/media.h"

#define TD_MODEL "tests/data/golden/qwen3vl-dense-tiny/model"

typedef struct td {
    pid_t pid;
    int status;
    bool reaped;
    char dir[256];
    char ep[320], ev[320], log[320], cfg[320];
} td;

/* Daemons started and not yet reaped: killed at exit, so that a failed test (cmocka jumps out
 * of it) never leaves a vigild running. */
static pid_t td_running[32];

static inline void td_forget(pid_t pid) {
    for (int i = 0; i < 32; i++)
        if (td_running[i] == pid) td_running[i] = 0;
}

static inline void td_kill_all(void) {
    for (int i = 0; i < 32; i++)
        if (td_running[i] > 0) {
            kill(td_running[i], SIGKILL);
            waitpid(td_running[i], NULL, 0);
            td_running[i] = 0;
        }
}

static inline void td_remember(pid_t pid) {
    static bool registered;
    if (!registered) {
        atexit(td_kill_all);
        registered = true;
    }
    for (int i = 0; i < 32; i++)
        if (td_running[i] == 0) {
            td_running[i] = pid;
            return;
        }
}

static inline const char *td_build(void) {
    const char *b = getenv("VIGIL_BUILD");
    return b && *b ? b : "build";
}

static inline bool td_alive(td *t) {
    if (t->reaped || t->pid <= 0) return false;
    int st;
    pid_t r = waitpid(t->pid, &st, WNOHANG);
    if (r == t->pid) {
        t->reaped = true;
        t->status = st;
        td_forget(t->pid);
        return false;
    }
    return r == 0;
}

static inline void td_dump_log(const td *t) {
    size_t len = 0;
    char *text = media_read_file(t->log, &len);
    if (!text) return;
    size_t start = len > 8000 ? len - 8000 : 0;
    fprintf(stderr, "---- vigild log (%s) ----\n%.*s\n---- end ----\n", t->log, (int)(len - start), text + start);
    free(text);
}

static inline bool td_log_contains(const td *t, const char *needle) {
    char *text = media_read_file(t->log, NULL);
    bool found = text && strstr(text, needle);
    free(text);
    return found;
}

/* One request on a fresh client; the final frame (cJSON_Delete) or NULL on timeout. */
static inline cJSON *td_call(const td *t, const char *json, int timeout_ms) {
    char e[512];
    proto_client *c = proto_client_connect(t->ep, NULL, e, sizeof e);
    if (!c) return NULL;
    cJSON *final = NULL;
    if (proto_client_request(c, json, timeout_ms, NULL, NULL, &final, e, sizeof e) != 0) final = NULL;
    proto_client_close(c);
    return final;
}

static inline cJSON *td_callf(const td *t, int timeout_ms, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static inline cJSON *td_callf(const td *t, int timeout_ms, const char *fmt, ...) {
    char buf[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return td_call(t, buf, timeout_ms);
}

static inline bool td_ok(const cJSON *r) {
    return r && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "ok"));
}

/* The error code of a reply ("" when it is not an error reply). */
static inline const char *td_code(const cJSON *r) {
    const cJSON *e = r ? cJSON_GetObjectItemCaseSensitive(r, "error") : NULL;
    const cJSON *c = e ? cJSON_GetObjectItemCaseSensitive(e, "code") : NULL;
    return cJSON_IsString(c) ? c->valuestring : "";
}

static inline const char *td_str(const cJSON *o, const char *key) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static inline double td_num(const cJSON *o, const char *key) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* Writes the configuration: the golden tiny model, one math thread, plain logs, ipc endpoints,
 * plus extra top-level members (JSON text without braces, may be NULL). */
static inline int td_write_config(td *t, const char *model_dir, const char *extra) {
    char model[PATH_MAX];
    if (!realpath(model_dir ? model_dir : TD_MODEL, model)) {
        fprintf(stderr, "model folder %s is missing\n", model_dir ? model_dir : TD_MODEL);
        return -1;
    }
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return -1;
    fprintf(f,
            "{\"model\": \"%s\", \"threads\": 1, \"endpoint\": \"%s\", \"events_endpoint\": \"%s\",\n"
            " \"log_level\": \"debug\", \"log_format\": \"plain\"%s%s}\n",
            model, t->ep, t->ev, extra && *extra ? ",\n " : "", extra ? extra : "");
    fclose(f);
    int r = media_write_file(t->cfg, text, len);
    free(text);
    return r;
}

/* Starts vigild --config DIR/vigild.json [args] with the model folder model_dir (NULL: the tiny
 * golden checkpoint); waits until it answers ping. env: extra "NAME=value" strings
 * (NULL-terminated, may be NULL). */
static inline int td_start(td *t, const char *model_dir, const char *extra_config, const char *const *args,
                           const char *const *env) {
    memset(t, 0, sizeof *t);
    if (media_tmpdir(t->dir, sizeof t->dir) != 0) return -1;
    snprintf(t->ep, sizeof t->ep, "ipc://%s/vigild.sock", t->dir);
    snprintf(t->ev, sizeof t->ev, "ipc://%s/events.sock", t->dir);
    snprintf(t->log, sizeof t->log, "%s/vigild.log", t->dir);
    snprintf(t->cfg, sizeof t->cfg, "%s/vigild.json", t->dir);
    if (td_write_config(t, model_dir, extra_config) != 0) return -1;
    char prog[512];
    snprintf(prog, sizeof prog, "%s/bin/vigild", td_build());
    if (access(prog, X_OK) != 0) {
        fprintf(stderr, "%s is missing: build it first (make %s)\n", prog, prog);
        return -1;
    }
    const char *argv[32];
    int n = 0;
    argv[n++] = prog;
    argv[n++] = "--config";
    argv[n++] = t->cfg;
    for (int i = 0; args && args[i] && n < 30; i++) argv[n++] = args[i];
    argv[n] = NULL;
    t->pid = fork();
    if (t->pid < 0) return -1;
    if (t->pid == 0) {
        setpgid(0, 0);
        /* a test that dies without running its atexit handlers (a sanitizer abort) still
         * takes its daemon with it */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(t->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        for (int i = 0; env && env[i]; i++) putenv((char *)env[i]);
        execv(prog, (char *const *)argv);
        _exit(127);
    }
    td_remember(t->pid);
    int64_t deadline = media_now_ms() + 180000;   /* sanitizer builds load slowly */
    while (media_now_ms() < deadline) {
        if (!td_alive(t)) {
            fprintf(stderr, "vigild exited during start-up (status 0x%x)\n", t->status);
            td_dump_log(t);
            return -1;
        }
        struct stat st;
        if (stat(t->ep + 6, &st) == 0) {
            cJSON *r = td_call(t, "{\"id\":\"ping\",\"op\":\"ping\"}", 2000);
            bool ok = td_ok(r);
            cJSON_Delete(r);
            if (ok) return 0;
        }
        media_sleep_ms(50);
    }
    fprintf(stderr, "vigild did not answer ping in time\n");
    td_dump_log(t);
    return -1;
}

/* The demo model (demo/model, demo/TASK.md) with what it was trained on: 128x128 frames, 16
 * visual tokens per pair. protocols: the sources the test may add ("file,http,tcp"). */
#define TD_DEMO_MODEL "demo/model"
static inline int td_start_demo(td *t, const char *protocols) {
    char extra[512];
    snprintf(extra, sizeof extra,
             "\"sources\": {\"allowed_protocols\": \"%s\"},\n"
             " \"stream_defaults\": {\"min_tokens_per_pair\": 4, \"max_tokens_per_pair\": 16, \"cache_tokens\": 4096},\n"
             " \"shutdown_grace_seconds\": 2",
             protocols);
    return td_start(t, TD_DEMO_MODEL, extra, NULL, NULL);
}

/* Waits for the process to exit (up to timeout_ms); returns its exit code, 128+signal, or -1. */
static inline int td_wait_exit(td *t, int timeout_ms) {
    int64_t deadline = media_now_ms() + timeout_ms;
    while (td_alive(t) && media_now_ms() < deadline) media_sleep_ms(20);
    if (!t->reaped) return -1;
    if (WIFEXITED(t->status)) return WEXITSTATUS(t->status);
    return 128 + WTERMSIG(t->status);
}

/* SIGTERM and wait; SIGKILL after 60 s. Returns the exit status (see td_wait_exit). */
static inline int td_stop(td *t) {
    if (t->pid <= 0) return -1;
    if (!t->reaped) kill(t->pid, SIGTERM);
    int rc = td_wait_exit(t, 60000);
    if (rc < 0) {
        kill(t->pid, SIGKILL);
        td_wait_exit(t, 5000);
    }
    if (rc != 0) td_dump_log(t);
    return rc;
}

static inline void td_cleanup(td *t) {
    if (t->pid > 0 && !t->reaped) {
        kill(t->pid, SIGKILL);
        td_wait_exit(t, 5000);
    }
    if (t->dir[0]) media_rmtree(t->dir);
    t->dir[0] = 0;
}

/* SIGTERM, wait, remove the directory: 0 when vigild exited 0 (a cmocka teardown's result). */
static inline int td_stop_and_cleanup(td *t) {
    int rc = td_stop(t);
    td_cleanup(t);
    return rc == 0 ? 0 : -1;
}

/* A stream's status object (owned by *root; cJSON_Delete(*root)). */
static inline cJSON *td_stream_status(const td *t, const char *stream, cJSON **root) {
    *root = td_callf(t, 10000, "{\"id\":\"st\",\"op\":\"status\",\"stream\":\"%s\"}", stream);
    return *root ? cJSON_GetObjectItemCaseSensitive(*root, "stream") : NULL;
}

static inline double td_stream_num(const td *t, const char *stream, const char *key) {
    cJSON *root;
    cJSON *s = td_stream_status(t, stream, &root);
    double v = td_num(s, key);
    cJSON_Delete(root);
    return v;
}

/* stream.add with optional extra request members ("\"cache_tokens\":1024"); fails the test
 * (with the daemon's log) unless it is accepted. */
static inline void td_add_stream(const td *t, const char *name, const char *url, const char *more) {
    cJSON *r = td_callf(t, 30000, "{\"id\":\"add-%s\",\"op\":\"stream.add\",\"stream\":\"%s\",\"url\":\"%s\"%s%s}", name,
                        name, url, more ? "," : "", more ? more : "");
    if (!td_ok(r)) {
        char *s = r ? cJSON_PrintUnformatted(r) : NULL;
        td_dump_log(t);
        fail_msg("stream.add %s: %s", name, s ? s : "no reply");
    }
    cJSON_Delete(r);
}

static inline void td_remove_stream(const td *t, const char *name) {
    cJSON *r = td_callf(t, 30000, "{\"id\":\"rm-%s\",\"op\":\"stream.remove\",\"stream\":\"%s\"}", name, name);
    assert_true(td_ok(r));
    cJSON_Delete(r);
}

static inline bool td_wait_pairs(const td *t, const char *stream, int n, int timeout_ms) {
    int64_t deadline = media_now_ms() + timeout_ms;
    while (media_now_ms() < deadline) {
        if (td_stream_num(t, stream, "pairs_encoded") >= n) return true;
        media_sleep_ms(100);
    }
    return false;
}

static inline bool td_wait_state(const td *t, const char *stream, const char *state, int timeout_ms) {
    int64_t deadline = media_now_ms() + timeout_ms;
    while (media_now_ms() < deadline) {
        cJSON *root;
        cJSON *s = td_stream_status(t, stream, &root);
        const char *st = td_str(s, "state");
        bool ok = st && strcmp(st, state) == 0;
        cJSON_Delete(root);
        if (ok) return true;
        media_sleep_ms(100);
    }
    return false;
}

/* A memory figure of a process from /proc/PID/status in KiB ("VmRSS:", "RssAnon:", ...), or -1. */
static inline long td_proc_kb(pid_t pid, const char *key) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");   /* /proc files have no size: read them line by line */
    if (!f) return -1;
    long kb = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0) kb = strtol(line + kl, NULL, 10);
    fclose(f);
    return kb;
}

static inline long td_rss_kb(pid_t pid) {
    return td_proc_kb(pid, "VmRSS:");
}

/* A test clip with the ffmpeg CLI: size WxH, rate fps, seconds long. */
static inline int td_make_clip(const char *path, int w, int h, int fps, double seconds) {
    const char *codec = media_have_encoder("libx264") ? "libx264 -pix_fmt yuv420p -g 8" : "mpeg4";
    return media_sh("ffmpeg -nostdin -v error -y -f lavfi -i testsrc2=size=%dx%d:rate=%d -t %g -c:v %s '%s'", w, h,
                    fps, seconds, codec, path);
}

/* Collects an answer's token frames. */
typedef struct td_tokens {
    char text[65536];
    size_t len;
    int frames;
} td_tokens;

static inline int td_on_token(void *user, const cJSON *frame) {
    td_tokens *tk = user;
    const char *t = td_str(frame, "text");
    const char *ev = td_str(frame, "event");
    if (ev && strcmp(ev, "token") == 0 && t) {
        size_t n = strlen(t);
        if (tk->len + n < sizeof tk->text) {
            memcpy(tk->text + tk->len, t, n);
            tk->len += n;
            tk->text[tk->len] = 0;
        }
        tk->frames++;
    }
    return 0;
}

#endif
