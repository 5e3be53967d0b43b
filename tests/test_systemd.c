/* test_systemd.c — the service unit, the sd_notify conversation and `make install`.
 *
 * - systemd-analyze verify accepts systemd/vigild.service (ExecStart pointed at this build's
 *   vigild, Documentation= man pages found in a MANPATH holding docs/man) with no warning, and
 *   `systemd-analyze security --offline` rates its exposure at 2.0 or lower.
 * - The real vigild started as systemd would (NOTIFY_SOCKET, WATCHDOG_USEC) sends READY=1 only
 *   once it answers requests, STATUS= lines, WATCHDOG=1 pings and STOPPING=1 on SIGTERM, all
 *   from its main process; a unix datagram socket opened here plays systemd's part.
 * - With the test hook (VIGILD_TEST_HOOKS=1, SIGUSR1 stalls the compute worker) the watchdog
 *   pings stop while the process stays alive, so systemd's WatchdogSec= would restart it.
 * - `make install` into a DESTDIR (PREFIX /usr/local and /usr): the files land where the unit,
 *   man and Python expect them, the installed programs and Python package run from there, and
 *   a second install keeps an edited /etc/vigil/vigild.json. */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "protocol/protocol.h"
#include "tests/support/manpage.h"
#include "tests/support/media.h"
#include "tests/support/vigild_proc.h"

/* Output and exit status of a shell command (stderr included). */
static char *sh_output(int *status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *sh_output(int *status, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[4200];
    snprintf(full, sizeof full, "(%s) 2>&1", cmd);
    FILE *p = popen(full, "r");
    assert_non_null(p);
    char *out = NULL;
    size_t len = 0;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) {
        out = realloc(out, len + n + 1);
        memcpy(out + len, buf, n);
        len += n;
        out[len] = '\0';
    }
    int st = pclose(p);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return out ? out : strdup("");
}

static bool have_systemd_analyze(void)
{
    int st;
    free(sh_output(&st, "command -v systemd-analyze"));
    return st == 0;
}

static void abs_path(const char *rel, char *out, size_t n)
{
    if (rel[0] == '/') {
        snprintf(out, n, "%s", rel);
        return;
    }
    char cwd[1024];
    assert_non_null(getcwd(cwd, sizeof cwd));
    if ((size_t)snprintf(out, n, "%.512s/%.400s", cwd, rel) >= n)
        fail_msg("path too long: %s/%s", cwd, rel);
}

/* A copy of a unit file with ExecStart's program replaced (verify checks that it exists). */
static void unit_copy(const char *src, const char *dst, const char *exec_from, const char *exec_to)
{
    int st;
    char *o = sh_output(&st, "sed 's|^ExecStart=%s |ExecStart=%s |' '%s' > '%s' && "
                        "grep -q '^ExecStart=%s ' '%s'", exec_from, exec_to, src, dst, exec_to,
                        dst);
    if (st != 0)
        fail_msg("cannot rewrite ExecStart of %s: %s", src, o);
    free(o);
}

/* Each test gets a temporary directory; the teardown also stops a daemon a failed test left
 * running and closes its notify socket, so a failure leaves nothing behind. */
typedef struct fixture {
    char dir[256];
    vigild_proc *vd;
    int notify_fd;
} fixture;

static int fx_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f || media_tmpdir(f->dir, sizeof f->dir) != 0) {
        free(f);
        return -1;
    }
    f->notify_fd = -1;
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    fixture *f = *state;
    vigild_stop(f->vd);
    if (f->notify_fd >= 0)
        close(f->notify_fd);
    media_rmtree(f->dir);
    free(f);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The unit file                                                                              */

static void verify_unit(const char *unit, const char *manpath)
{
    int st;
    char *out = sh_output(&st, "MANPATH='%s' systemd-analyze verify '%s'", manpath, unit);
    /* Warnings (unknown keys, bad values, missing man pages) leave the status 0: any line
     * about our unit is a failure. */
    if (st != 0 || strstr(out, "vigild.service"))
        fail_msg("systemd-analyze verify %s (exit %d):\n%s", unit, st, out);
    free(out);
}

static void test_unit_verify(void **state)
{
    const char *dir = ((fixture *)*state)->dir;
    if (!have_systemd_analyze())
        fail_msg("systemd-analyze is missing (Debian package systemd, tools/install-deps.sh)");
    char unit[512], vigild[1024], man[512];
    snprintf(unit, sizeof unit, "%s/vigild.service", dir);
    char rel[512];
    snprintf(rel, sizeof rel, "%s/bin/vigild", vigild_build_dir());
    abs_path(rel, vigild, sizeof vigild);
    if (access(vigild, X_OK) != 0)
        fail_msg("%s is missing: build it first", vigild);
    unit_copy("systemd/vigild.service", unit, "/usr/local/bin/vigild", vigild);
    snprintf(man, sizeof man, "%s/man", dir);
    assert_int_equal(media_sh("mkdir -p '%s/man1' '%s/man8' && cp docs/man/vigil.1 '%s/man1/' && "
                              "cp docs/man/vigild.8 '%s/man8/'", man, man, man, man), 0);
    verify_unit(unit, man);

    /* The check can fail: a unit with an unknown key, and one whose man page is missing. */
    char bad[512];
    snprintf(bad, sizeof bad, "%s/bad/vigild.service", dir);
    assert_int_equal(media_sh("mkdir -p '%s/bad' && sed 's/^NoNewPrivileges=/NoNewPrivilege=/' "
                              "'%s' > '%s'", dir, unit, bad), 0);
    int st;
    char *out = sh_output(&st, "MANPATH='%s' systemd-analyze verify '%s'", man, bad);
    assert_non_null(strstr(out, "NoNewPrivilege"));
    free(out);
    out = sh_output(&st, "MANPATH='%s/none' systemd-analyze verify '%s'", dir, unit);
    assert_non_null(strstr(out, "man vigild(8)"));
    free(out);
}

static double exposure_of(const char *unit)
{
    int st;
    char *out = sh_output(&st, "systemd-analyze security --offline=yes --no-pager '%s'", unit);
    const char *p = strstr(out, "Overall exposure level for vigild.service:");
    double x = -1;
    if (st != 0 || !p || sscanf(p, "Overall exposure level for vigild.service: %lf", &x) != 1)
        fail_msg("systemd-analyze security (exit %d) printed no exposure level:\n%s", st, out);
    free(out);
    return x;
}

static void test_unit_exposure(void **state)
{
    const char *dir = ((fixture *)*state)->dir;
    if (!have_systemd_analyze())
        fail_msg("systemd-analyze is missing (Debian package systemd, tools/install-deps.sh)");
    double x = exposure_of("systemd/vigild.service");
    printf("exposure of systemd/vigild.service: %.1f\n", x);
    if (x > 2.0)
        fail_msg("systemd/vigild.service exposure is %.1f; the deployment guide promises <= 2.0",
                 x);
    /* The measure reacts to the sandbox: without it the same unit scores far worse. */
    char weak[512];
    snprintf(weak, sizeof weak, "%s/vigild.service", dir);
    assert_int_equal(media_sh("grep -v -e '^Protect' -e '^Private' -e '^SystemCall' "
                              "-e '^Restrict' -e '^CapabilityBoundingSet' "
                              "systemd/vigild.service > '%s'", weak), 0);
    assert_true(exposure_of(weak) > x + 2);
}

/* Every option of `vigild --help` is documented in vigild(8). */
static void test_vigild_man_page(void **state)
{
    (void)state;
    int st;
    char *help = sh_output(&st, "'%s/bin/vigild' --help", vigild_build_dir());
    if (st != 0)
        fail_msg("vigild --help: exit %d\n%s", st, help);
    size_t len;
    char *man = media_read_file("docs/man/vigild.8", &len);
    assert_non_null(man);
    char missing[96];
    int n = manpage_check_options(help, man, missing, sizeof missing);
    if (n < 0)
        fail_msg("vigild --help names '%s', docs/man/vigild.8 does not", missing);
    assert_true(n > 30);
    free(man);
    free(help);
}

/* ------------------------------------------------------------------------------------------ */
/* sd_notify                                                                                  */

typedef struct notify_sock {
    int fd;
    char path[300];
    char env[340];               /* NOTIFY_SOCKET=... */
} notify_sock;

static void notify_open(notify_sock *n, const char *dir)
{
    snprintf(n->path, sizeof n->path, "%s/notify.sock", dir);
    snprintf(n->env, sizeof n->env, "NOTIFY_SOCKET=%s", n->path);
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(n->fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    assert_true(strlen(n->path) < sizeof sa.sun_path);
    memcpy(sa.sun_path, n->path, strlen(n->path) + 1);
    assert_int_equal(bind(n->fd, (struct sockaddr *)&sa, sizeof sa), 0);
    int one = 1;
    /* systemd checks who sent a notification (NotifyAccess=main): so do we. */
    assert_int_equal(setsockopt(n->fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one), 0);
}

/* Receives one datagram within timeout_ms: returns its length (text NUL-terminated) and the
 * sender's pid, or -1 on timeout. */
static int notify_recv(notify_sock *n, int timeout_ms, char *text, size_t size, pid_t *sender)
{
    struct pollfd pfd = {.fd = n->fd, .events = POLLIN};
    if (poll(&pfd, 1, timeout_ms) <= 0)
        return -1;
    struct iovec iov = {.iov_base = text, .iov_len = size - 1};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(struct ucred))];
    } ctl;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &ctl,
                         .msg_controllen = sizeof ctl};
    ssize_t k = recvmsg(n->fd, &msg, MSG_DONTWAIT);
    if (k < 0)
        return -1;
    text[k] = '\0';
    *sender = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
            struct ucred cr;
            memcpy(&cr, CMSG_DATA(c), sizeof cr);
            *sender = cr.pid;
        }
    return (int)k;
}

/* Whether a notification has a line "key" ("READY=1") or starts a line with key ("STATUS="). */
static bool has_line(const char *text, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, key, kl) == 0)
            return true;
    return false;
}

static bool ping_ok(const char *endpoint)
{
    char e[256];
    proto_client *c = proto_client_connect(endpoint, NULL, e, sizeof e);
    if (!c)
        return false;
    cJSON *final = NULL;
    int r = proto_client_request(c, "{\"id\":\"p\",\"op\":\"ping\"}", 5000, NULL, NULL, &final,
                                 e, sizeof e);
    bool ok = r == 0 && cJSON_IsTrue(cJSON_GetObjectItem(final, "ok"));
    cJSON_Delete(final);
    proto_client_close(c);
    return ok;
}

static void test_sd_notify(void **state)
{
    fixture *fx = *state;
    notify_sock n;
    notify_open(&n, fx->dir);
    fx->notify_fd = n.fd;
    /* A 2 s watchdog: sd_watchdog_enabled() tells vigild to ping at least every second. */
    const char *env[] = {n.env, "WATCHDOG_USEC=2000000", NULL};
    vigild_opts o = {.extra_config = "\"status_interval_seconds\": 0.5", .env = env,
                     .no_wait = true};
    char e[512] = "";
    vigild_proc *vd = fx->vd = vigild_start(&o, e, sizeof e);
    if (!vd)
        fail_msg("cannot start vigild: %s", e);

    bool ready = false, status = false;
    int watchdogs = 0;
    int64_t deadline = media_now_ms() + 180000;
    char text[4096];
    pid_t sender;
    while ((!ready || !status || watchdogs < 2) && media_now_ms() < deadline) {
        if (notify_recv(&n, 500, text, sizeof text, &sender) < 0) {
            if (!vigild_alive(vd)) {
                vigild_dump_log(vd);
                fail_msg("vigild exited before READY=1");
            }
            continue;
        }
        if (sender != vigild_pid(vd))
            fail_msg("notification \"%s\" came from pid %d, not vigild's main pid %d", text,
                     (int)sender, (int)vigild_pid(vd));
        if (has_line(text, "READY=1") && !ready) {
            ready = true;
            /* Type=notify: READY means requests are served now. */
            if (!ping_ok(vigild_endpoint(vd)))
                fail_msg("READY=1 was sent but vigild does not answer ping");
        }
        if (has_line(text, "STATUS="))
            status = true;
        if (has_line(text, "WATCHDOG=1"))
            watchdogs++;
    }
    if (!ready || !status || watchdogs < 2) {
        vigild_dump_log(vd);
        fail_msg("within 180 s: READY=1 %s, STATUS= %s, %d WATCHDOG=1 (expected >= 2)",
                 ready ? "seen" : "missing", status ? "seen" : "missing", watchdogs);
    }
    pid_t pid = vigild_pid(vd);
    int rc = vigild_stop(vd);
    fx->vd = NULL;
    assert_int_equal(rc, 0);
    bool stopping = false;
    while (!stopping && notify_recv(&n, 100, text, sizeof text, &sender) >= 0)
        stopping = has_line(text, "STOPPING=1") && sender == pid;
    if (!stopping)
        fail_msg("no STOPPING=1 from vigild after SIGTERM");
}

static void test_watchdog_stall(void **state)
{
    fixture *fx = *state;
    notify_sock n;
    notify_open(&n, fx->dir);
    fx->notify_fd = n.fd;
    const char *env[] = {n.env, "WATCHDOG_USEC=2000000", "VIGILD_TEST_HOOKS=1", NULL};
    vigild_opts o = {.extra_config = "\"watchdog_stall_seconds\": 1", .env = env};
    char e[512] = "";
    vigild_proc *vd = fx->vd = vigild_start(&o, e, sizeof e);
    if (!vd)
        fail_msg("cannot start vigild: %s", e);
    char text[4096];
    pid_t sender;
    /* Healthy: pings keep coming. */
    int pings = 0;
    int64_t deadline = media_now_ms() + 20000;
    while (pings < 2 && media_now_ms() < deadline)
        if (notify_recv(&n, 500, text, sizeof text, &sender) >= 0 && has_line(text, "WATCHDOG=1"))
            pings++;
    if (pings < 2) {
        vigild_dump_log(vd);
        fail_msg("a healthy vigild sent %d WATCHDOG=1 in 20 s with WATCHDOG_USEC=2 s", pings);
    }
    /* Stall the worker: once it has made no progress for watchdog_stall_seconds, the pings
     * stop. A silence of 3x the watchdog period means systemd would have restarted it. */
    assert_int_equal(kill(vigild_pid(vd), SIGUSR1), 0);
    int64_t last_ping = media_now_ms(), silent_since = 0;
    bool silenced = false;
    deadline = media_now_ms() + 30000;
    while (!silenced && media_now_ms() < deadline) {
        int r = notify_recv(&n, 200, text, sizeof text, &sender);
        if (r >= 0 && has_line(text, "WATCHDOG=1"))
            last_ping = media_now_ms();
        silent_since = media_now_ms() - last_ping;
        silenced = silent_since >= 6000;
    }
    bool alive = vigild_alive(vd);
    if (!silenced || !alive) {
        vigild_dump_log(vd);
        fail_msg("after SIGUSR1 (stalled worker): %s; vigild %s",
                 silenced ? "pings stopped" : "WATCHDOG=1 went on for 30 s",
                 alive ? "alive" : "exited");
    }
    /* The teardown stops it: a stalled worker may need SIGKILL, so no status check. */
}

/* ------------------------------------------------------------------------------------------ */
/* make install                                                                               */

static void expect_file(const char *root, const char *path)
{
    char full[1024];
    snprintf(full, sizeof full, "%s%s", root, path);
    struct stat st;
    if (stat(full, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0)
        fail_msg("make install did not install %s", full);
}

static char *must_run(int want, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static char *must_run(int want, const char *what, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st;
    char *out = sh_output(&st, "%s", cmd);
    if (st != want)
        fail_msg("%s: exit %d (expected %d)\n$ %s\n%s", what, st, want, cmd, out);
    return out;
}

/* `make install` without rebuilding: "all" is taken as made (-o), so only the install recipe
 * runs, with the Makefile's own variables. */
static void make_install(const char *destdir, const char *prefix)
{
    free(must_run(0, "make install", "make -s -o all install BUILD='%s' DESTDIR='%s' PREFIX='%s'",
                  vigild_build_dir(), destdir, prefix));
}

static void test_install_destdir(void **state)
{
    const char *dir = ((fixture *)*state)->dir;
    char root[300];
    snprintf(root, sizeof root, "%s/root", dir);
    make_install(root, "/usr/local");

    char pyver[32];
    char *v = must_run(0, "python version", "/usr/bin/python3 -c 'import sys; "
                       "print(\"%%d.%%d\" %% sys.version_info[:2])'");
    snprintf(pyver, sizeof pyver, "%.*s", (int)strcspn(v, "\n"), v);
    free(v);
    char pydir[256];
    snprintf(pydir, sizeof pydir, "/usr/local/lib/python%s/dist-packages", pyver);
    static const char *const files[] = {
        "/usr/local/bin/vigild", "/usr/local/bin/vigil",
        "/usr/local/lib/systemd/system/vigild.service",
        "/etc/vigil/vigild.json", "/etc/vigil/vigild.json.example",
        "/usr/local/share/man/man1/vigil.1", "/usr/local/share/man/man8/vigild.8",
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        expect_file(root, files[i]);
    char pkg[512];
    snprintf(pkg, sizeof pkg, "%s/vigil_client/__init__.py", pydir);
    expect_file(root, pkg);

    /* The installed programs run from the staging tree. */
    char *out = must_run(0, "installed vigil --help", "'%s/usr/local/bin/vigil' --help", root);
    assert_non_null(strstr(out, "usage: vigil"));
    assert_non_null(strstr(out, "Exit status:"));
    free(out);
    out = must_run(0, "installed vigild --help", "'%s/usr/local/bin/vigild' --help", root);
    assert_non_null(strstr(out, "vigild"));
    assert_non_null(strstr(out, "--config"));
    free(out);
    out = must_run(2, "installed vigil, usage error", "'%s/usr/local/bin/vigil' frob", root);
    assert_non_null(strstr(out, "unknown command"));
    free(out);
    out = must_run(0, "import the installed Python client",
                   "cd / && PYTHONDONTWRITEBYTECODE=1 PYTHONPATH='%s%s' /usr/bin/python3 -c "
                   "'import vigil_client; print(vigil_client.__file__); print(vigil_client.Client)'",
                   root, pydir);
    if (!strstr(out, root) || !strstr(out, "vigil_client.client.Client"))
        fail_msg("the Python client was not imported from the install tree:\n%s", out);
    free(out);

    /* The unit names the installed daemon, and verifies against the installed man pages. */
    char unit[512], unit_copy_path[512], vigild[512], man[512];
    snprintf(unit, sizeof unit, "%s/usr/local/lib/systemd/system/vigild.service", root);
    out = must_run(0, "ExecStart of the installed unit",
                   "grep '^ExecStart=/usr/local/bin/vigild --config /etc/vigil/vigild.json$' "
                   "'%s'", unit);
    free(out);
    if (have_systemd_analyze()) {
        snprintf(unit_copy_path, sizeof unit_copy_path, "%s/vigild.service", dir);
        snprintf(vigild, sizeof vigild, "%s/usr/local/bin/vigild", root);
        unit_copy(unit, unit_copy_path, "/usr/local/bin/vigild", vigild);
        snprintf(man, sizeof man, "%s/usr/local/share/man", root);
        verify_unit(unit_copy_path, man);
    }

    /* The example configuration is valid for the daemon once a model is named. */
    out = must_run(0, "vigild --check-config on the installed example",
                   "'%s/usr/local/bin/vigild' --check-config --config '%s/etc/vigil/vigild.json' "
                   "--model tests/data/golden/qwen3vl-dense-tiny/model", root, root);
    free(out);

    /* A second install keeps the administrator's configuration. */
    assert_int_equal(media_sh("printf '\\n' >> '%s/etc/vigil/vigild.json' && "
                              "cp '%s/etc/vigil/vigild.json' '%s/edited.json'", root, root, dir),
                     0);
    make_install(root, "/usr/local");
    assert_int_equal(media_sh("cmp -s '%s/etc/vigil/vigild.json' '%s/edited.json'", root, dir), 0);

    /* PREFIX=/usr: Debian's unit and Python directories. */
    char root2[300];
    snprintf(root2, sizeof root2, "%s/root2", dir);
    make_install(root2, "/usr");
    expect_file(root2, "/usr/bin/vigild");
    expect_file(root2, "/lib/systemd/system/vigild.service");
    expect_file(root2, "/usr/lib/python3/dist-packages/vigil_client/client.py");
    expect_file(root2, "/usr/share/man/man8/vigild.8");
    out = must_run(0, "ExecStart for PREFIX=/usr",
                   "grep -c '^ExecStart=/usr/bin/vigild ' '%s/lib/systemd/system/vigild.service'",
                   root2);
    free(out);
    /* Nothing else was written: no byte-code, no tests or examples in site-packages. */
    out = must_run(1, "stray files in the Python install",
                   "find '%s' '%s' -name '__pycache__' -o -name 'test_*.py' | grep .", root,
                   root2);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_unit_verify, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_unit_exposure, fx_setup, fx_teardown),
        cmocka_unit_test(test_vigild_man_page),
        cmocka_unit_test_setup_teardown(test_install_destdir, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_sd_notify, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_watchdog_stall, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests_name("systemd", tests, NULL, NULL);
}
