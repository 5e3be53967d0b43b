/* vigild_proc.c — the real vigild as a child process for integration tests. */
#include "tests/support/vigild_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
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

#define GOLDEN_MODEL "tests/data/golden/qwen3vl-dense-tiny/model"

struct vigild_proc {
    pid_t pid;
    int status;                  /* once reaped */
    bool reaped;
    char dir[256];
    char endpoint[320], events[320], log[320], clip[320], image[320];
};

const char *vigild_build_dir(void)
{
    const char *b = getenv("VIGIL_BUILD");
    return b && *b ? b : "build";
}

pid_t vigild_pid(const vigild_proc *p) { return p->pid; }
const char *vigild_dir(const vigild_proc *p) { return p->dir; }
const char *vigild_endpoint(const vigild_proc *p) { return p->endpoint; }
const char *vigild_events_endpoint(const vigild_proc *p) { return p->events; }
const char *vigild_log_path(const vigild_proc *p) { return p->log; }
const char *vigild_clip(const vigild_proc *p) { return p->clip; }
const char *vigild_image(const vigild_proc *p) { return p->image; }

bool vigild_alive(vigild_proc *p)
{
    if (p->reaped)
        return false;
    int st;
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    if (r == p->pid) {
        p->reaped = true;
        p->status = st;
        return false;
    }
    return r == 0;
}

void vigild_dump_log(const vigild_proc *p)
{
    size_t len = 0;
    char *text = media_read_file(p->log, &len);
    if (!text)
        return;
    size_t start = len > 6000 ? len - 6000 : 0;
    fprintf(stderr, "---- vigild log (%s), last %zu bytes ----\n%.*s\n---- end of log ----\n",
            p->log, len - start, (int)(len - start), text + start);
    free(text);
}

/* One request to the daemon; the reply object (cJSON_Delete) or NULL. */
static cJSON *call(const vigild_proc *p, const char *json, int timeout_ms)
{
    char e[256];
    proto_client *c = proto_client_connect(p->endpoint, NULL, e, sizeof e);
    if (!c)
        return NULL;
    cJSON *final = NULL;
    if (proto_client_request(c, json, timeout_ms, NULL, NULL, &final, e, sizeof e) != 0)
        final = NULL;
    proto_client_close(c);
    return final;
}

static int make_media(vigild_proc *p)
{
    snprintf(p->clip, sizeof p->clip, "%s/clip.mp4", p->dir);
    snprintf(p->image, sizeof p->image, "%s/image.png", p->dir);
    const char *codec = media_have_encoder("libx264") ? "libx264 -pix_fmt yuv420p" : "mpeg4";
    if (media_sh("ffmpeg -nostdin -v error -y -f lavfi -i testsrc2=size=128x128:rate=4 -t 8 "
                 "-c:v %s '%s'", codec, p->clip) != 0)
        return -1;
    if (media_sh("ffmpeg -nostdin -v error -y -f lavfi -i testsrc2=size=96x64 -frames:v 1 '%s'",
                 p->image) != 0)
        return -1;
    return 0;
}

static int write_config(const vigild_proc *p, const char *extra, char *path, size_t pathlen)
{
    char model[PATH_MAX];
    if (!realpath(GOLDEN_MODEL, model))
        return -1;
    snprintf(path, pathlen, "%s/vigild.json", p->dir);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return -1;
    /* One math thread: tests share two cores with other test programs. "file" lets the
     * daemon read the test clip. */
    fprintf(f,
            "{\n"
            "  \"model\": \"%s\",\n"
            "  \"threads\": 1,\n"
            "  \"endpoint\": \"%s\",\n"
            "  \"events_endpoint\": \"%s\",\n"
            "  \"log_level\": \"info\",\n"
            "  \"log_format\": \"plain\",\n"
            "  \"sources\": {\"allowed_protocols\": \"file\"}%s\n"
            "  %s\n"
            "}\n",
            model, p->endpoint, p->events, extra && *extra ? "," : "", extra ? extra : "");
    fclose(f);
    int r = media_write_file(path, text, len);
    free(text);
    return r;
}

vigild_proc *vigild_start(const vigild_opts *opts, char *err, size_t errlen)
{
    static const vigild_opts none = {0};
    if (!opts)
        opts = &none;
    char prog[512];
    snprintf(prog, sizeof prog, "%s/bin/vigild", vigild_build_dir());
    if (access(prog, X_OK) != 0) {
        snprintf(err, errlen, "%s: %s (build it: make %s)", prog, strerror(errno), prog);
        return NULL;
    }
    vigild_proc *p = calloc(1, sizeof *p);
    if (!p || media_tmpdir(p->dir, sizeof p->dir) != 0) {
        snprintf(err, errlen, "cannot make a temporary directory");
        free(p);
        return NULL;
    }
    snprintf(p->endpoint, sizeof p->endpoint, "ipc://%s/vigild.sock", p->dir);
    snprintf(p->events, sizeof p->events, "ipc://%s/events.sock", p->dir);
    snprintf(p->log, sizeof p->log, "%s/vigild.log", p->dir);
    char config[320];
    if (make_media(p) != 0) {
        snprintf(err, errlen, "ffmpeg could not make the test clip/image in %s", p->dir);
        goto fail;
    }
    if (write_config(p, opts->extra_config, config, sizeof config) != 0) {
        snprintf(err, errlen, "cannot write %s/vigild.json (is %s there?)", p->dir, GOLDEN_MODEL);
        goto fail;
    }
    p->pid = fork();
    if (p->pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        goto fail;
    }
    if (p->pid == 0) {
        setpgid(0, 0);
        /* a test that dies without running its atexit handlers (a sanitizer abort) still
         * takes its daemon with it */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(p->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int dn = open("/dev/null", O_RDONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (dn >= 0)
            dup2(dn, 0);
        for (const char *const *e = opts->env; e && *e; e++)
            putenv((char *)*e);
        execl(prog, prog, "--config", config, (char *)NULL);
        _exit(127);
    }
    if (opts->no_wait)
        return p;
    /* Sanitizer builds load the model slowly; a daemon that exits is reported at once. */
    int64_t deadline = media_now_ms() + 180000;
    while (media_now_ms() < deadline) {
        if (!vigild_alive(p)) {
            snprintf(err, errlen, "vigild exited during start-up (status %d); see its log",
                     WIFEXITED(p->status) ? WEXITSTATUS(p->status) : 128 + WTERMSIG(p->status));
            vigild_dump_log(p);
            goto fail;
        }
        struct stat st;
        if (stat(p->endpoint + 6, &st) == 0) {
            cJSON *r = call(p, "{\"id\":\"ping\",\"op\":\"ping\"}", 2000);
            bool ok = r && cJSON_IsTrue(cJSON_GetObjectItem(r, "ok"));
            cJSON_Delete(r);
            if (ok)
                return p;
        }
        media_sleep_ms(100);
    }
    snprintf(err, errlen, "vigild did not answer ping within 180 s");
    vigild_dump_log(p);
fail:
    vigild_stop(p);
    return NULL;
}

bool vigild_wait_pairs(vigild_proc *p, const char *stream, int n, int timeout_ms)
{
    char req[256];
    snprintf(req, sizeof req, "{\"id\":\"st\",\"op\":\"status\",\"stream\":\"%s\"}", stream);
    int64_t deadline = media_now_ms() + timeout_ms;
    while (media_now_ms() < deadline && vigild_alive(p)) {
        cJSON *r = call(p, req, 5000);
        const cJSON *s = cJSON_GetObjectItem(r, "stream");
        const cJSON *pe = cJSON_GetObjectItem(s, "pairs_encoded");
        bool done = cJSON_IsNumber(pe) && pe->valuedouble >= n;
        cJSON_Delete(r);
        if (done)
            return true;
        media_sleep_ms(100);
    }
    vigild_dump_log(p);
    return false;
}

int vigild_stop(vigild_proc *p)
{
    if (!p)
        return -1;
    int rc = -1;
    if (p->pid > 0) {
        if (vigild_alive(p))
            kill(p->pid, SIGTERM);
        int64_t deadline = media_now_ms() + 30000;
        while (vigild_alive(p) && media_now_ms() < deadline)
            media_sleep_ms(20);
        if (vigild_alive(p)) {
            kill(-p->pid, SIGKILL);
            kill(p->pid, SIGKILL);
            waitpid(p->pid, NULL, 0);
            fprintf(stderr, "vigild did not stop within 30 s of SIGTERM: killed\n");
            vigild_dump_log(p);
        } else if (WIFEXITED(p->status)) {
            rc = WEXITSTATUS(p->status);
        } else {
            rc = 128 + WTERMSIG(p->status);
        }
    }
    media_rmtree(p->dir);
    free(p);
    return rc;
}
