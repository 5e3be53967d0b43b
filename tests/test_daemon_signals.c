/* test_daemon_signals.c — the real vigild process: configuration, signals, CURVE.
 *  - bad configurations (unknown key, wrong type, bad stream, non-loopback bind without CURVE)
 *    exit non-zero with a message naming the key; --help documents the flags; flags override
 *    the file;
 *  - streams listed in the configuration start at launch; SIGHUP re-reads them: adds new ones,
 *    removes those gone, restarts changed ones, keeps unchanged ones (their context is not
 *    rebuilt) and leaves streams added by clients alone; a broken file on SIGHUP changes nothing;
 *  - SIGTERM with answers running and waiting: every request gets a final frame (a done frame,
 *    cut ones with error.code "shutting_down", or an error reply "shutting_down"), exit 0;
 *  - a non-loopback tcp bind with CURVE: a client with an allowed key is served, one with
 *    another key is not. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "tests/test_daemon_util.h"

static char g_dir[256], g_clip[512];

static int setup(void **state) {
    (void)state;
    if (media_tmpdir(g_dir, sizeof g_dir) != 0) return -1;
    snprintf(g_clip, sizeof g_clip, "%s/clip.mp4", g_dir);
    return td_make_clip(g_clip, 128, 128, 4, 4);
}

static int teardown(void **state) {
    (void)state;
    media_rmtree(g_dir);
    return 0;
}

/* Runs vigild with arguments; returns the exit status and its output (malloc'ed) in *out. */
static int run_vigild(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run_vigild(char **out, const char *fmt, ...) {
    char args[4096], cmd[4600], log[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(log, sizeof log, "%s/run.out", g_dir);
    snprintf(cmd, sizeof cmd, "'%s/bin/vigild' %s > '%s' 2>&1", td_build(), args, log);
    int st = system(cmd);
    *out = media_read_file(log, NULL);
    if (!*out) *out = strdup("");
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_file(const char *path, const char *text) {
    assert_int_equal(media_write_file(path, text, strlen(text)), 0);
}

static void test_bad_configuration(void **state) {
    (void)state;
    char path[512], *out;
    snprintf(path, sizeof path, "%s/bad.json", g_dir);
    struct {
        const char *json, *expect;
    } cases[] = {
        { "{\"model\": \"" TD_MODEL "\", \"thread\": 2}", "unknown key \"thread\"" },
        { "{\"model\": \"" TD_MODEL "\", \"threads\": \"two\"}", "threads: expected an integer" },
        { "{\"model\": \"" TD_MODEL "\", \"limits\": {\"max_tokens\": 0}}", "limits.max_tokens" },
        { "{\"model\": \"" TD_MODEL "\", \"streams\": [{\"stream\": \"a\", \"url\": \"/x.mp4\", \"fps\": -1}]}",
          "streams[0]" },
        { "{\"model\": \"" TD_MODEL "\", \"endpoint\": \"tcp://0.0.0.0:5999\"}", "CURVE is required" },
        { "{\"model\": \"" TD_MODEL "\", \"compute\": \"fp8\"}", "compute" },
        { "{\"model\": \"" TD_MODEL "\",}", "not valid JSON" },
        { "{}", "no model" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_file(path, cases[i].json);
        int st = run_vigild(&out, "--config '%s' --check-config", path);
        if (st == 0 || !strstr(out, cases[i].expect))
            fail_msg("config %s: exit %d, output \"%s\" (expected a message with \"%s\")", cases[i].json, st, out,
                     cases[i].expect);
        if (strstr(cases[i].json, "streams")) assert_non_null(strstr(out, "fps"));
        free(out);
    }
    /* flags win over the file, and are checked too */
    write_file(path, "{\"model\": \"" TD_MODEL "\", \"threads\": \"two\"}");
    assert_int_not_equal(run_vigild(&out, "--config '%s' --threads 1 --check-config", path), 0);
    free(out);
    write_file(path, "{\"model\": \"" TD_MODEL "\", \"endpoint\": \"tcp://0.0.0.0:5999\"}");
    assert_int_equal(run_vigild(&out, "--config '%s' --endpoint ipc:///tmp/x.sock --check-config", path), 0);
    free(out);
    assert_int_equal(run_vigild(&out, "--model " TD_MODEL " --threads x"), 2);
    assert_non_null(strstr(out, "--threads"));
    free(out);
    assert_int_equal(run_vigild(&out, "--model " TD_MODEL " --frobnicate"), 2);
    assert_non_null(strstr(out, "unknown option"));
    free(out);
    /* a missing model is reported at start, naming the folder */
    assert_int_equal(run_vigild(&out, "--model /nonexistent/model --endpoint ipc://%s/x.sock --events-endpoint "
                                "ipc://%s/y.sock", g_dir, g_dir), 1);
    assert_non_null(strstr(out, "/nonexistent/model"));
    free(out);
    /* --help documents every flag group */
    assert_int_equal(run_vigild(&out, "--help"), 0);
    const char *flags[] = { "--config", "--model", "--compute", "--endpoint", "--events-endpoint", "--fps",
                            "--cache-tokens", "--max-total-cache-bytes", "--allowed-protocols", "--curve-secret-key-file",
                            "--log-level", "--system-prompt", "SIGHUP", "VIGILD_TEST_HOOKS" };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (!strstr(out, flags[i])) fail_msg("--help does not mention %s", flags[i]);
    free(out);
}

/* ---- SIGHUP ---------------------------------------------------------------------------------------- */

static void write_streams_config(td *t, const char *streams) {
    char extra[4096];
    snprintf(extra, sizeof extra,
             "\"sources\": {\"allowed_protocols\": \"file\"},\n"
             " \"stream_defaults\": {\"min_tokens_per_pair\": 4, \"max_tokens_per_pair\": 16, \"cache_tokens\": 2048},\n"
             " \"streams\": [%s]", streams);
    assert_int_equal(td_write_config(t, NULL, extra), 0);
}

static cJSON *list_streams(td *t) {
    cJSON *r = td_call(t, "{\"id\":\"l\",\"op\":\"stream.list\"}", 10000);
    assert_true(td_ok(r));
    return r;
}

static cJSON *find(cJSON *list, const char *name) {
    cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(list, "streams")) if (strcmp(td_str(s, "stream"), name) == 0)
        return s;
    return NULL;
}

static bool wait_list(td *t, const char *const *want, int n_want, int timeout_ms) {
    int64_t deadline = media_now_ms() + timeout_ms;
    while (media_now_ms() < deadline) {
        cJSON *l = list_streams(t);
        int n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(l, "streams"));
        bool ok = n == n_want;
        for (int i = 0; ok && i < n_want; i++) ok = find(l, want[i]) != NULL;
        cJSON_Delete(l);
        if (ok) return true;
        media_sleep_ms(100);
    }
    return false;
}

static void test_sighup_reload(void **state) {
    (void)state;
    char s_a[700], s_b[700], s_b2[700], s_c[700];
    snprintf(s_a, sizeof s_a, "{\"stream\": \"a\", \"url\": \"%s\", \"_comment\": \"kept\"}", g_clip);
    snprintf(s_b, sizeof s_b, "{\"stream\": \"b\", \"url\": \"%s\", \"fps\": 2}", g_clip);
    snprintf(s_b2, sizeof s_b2, "{\"stream\": \"b\", \"url\": \"%s\", \"fps\": 1}", g_clip);
    snprintf(s_c, sizeof s_c, "{\"stream\": \"c\", \"url\": \"%s\"}", g_clip);
    char streams[3000];
    snprintf(streams, sizeof streams, "%s, %s", s_a, s_b);
    td t;
    char extra[4096];
    snprintf(extra, sizeof extra,
             "\"sources\": {\"allowed_protocols\": \"file\"},\n"
             " \"stream_defaults\": {\"min_tokens_per_pair\": 4, \"max_tokens_per_pair\": 16, \"cache_tokens\": 2048},\n"
             " \"streams\": [%s]", streams);
    assert_int_equal(td_start(&t, NULL, extra, NULL, NULL), 0);
    /* configured streams start at launch */
    assert_true(td_wait_state(&t, "a", "ended", 60000));
    assert_true(td_wait_state(&t, "b", "ended", 60000));
    assert_true(td_wait_pairs(&t, "a", 4, 30000));
    /* a question on "a" before the reload ... */
    cJSON *r = td_call(&t, "{\"id\":\"q\",\"op\":\"query\",\"stream\":\"a\",\"prompt\":\"What?\",\"max_tokens\":6}", 30000);
    assert_true(td_ok(r));
    char *before = strdup(td_str(r, "text"));
    cJSON_Delete(r);
    /* a client's own stream */
    r = td_callf(&t, 30000, "{\"id\":\"d\",\"op\":\"stream.add\",\"stream\":\"d\",\"url\":\"%s\"}", g_clip);
    assert_true(td_ok(r));
    cJSON_Delete(r);
    double served_a = td_stream_num(&t, "a", "queries_served");
    assert_true(served_a >= 1);

    /* reload: a unchanged (comment edited), b changed, c new */
    snprintf(s_a, sizeof s_a, "{\"stream\": \"a\", \"url\": \"%s\", \"_comment\": \"edited comment\"}", g_clip);
    snprintf(streams, sizeof streams, "%s, %s, %s", s_a, s_b2, s_c);
    write_streams_config(&t, streams);
    assert_int_equal(kill(t.pid, SIGHUP), 0);
    const char *want1[] = { "a", "b", "c", "d" };
    assert_true(wait_list(&t, want1, 4, 30000));
    assert_true(td_wait_state(&t, "c", "ended", 60000));
    int64_t deadline = media_now_ms() + 30000;
    while (media_now_ms() < deadline && td_stream_num(&t, "b", "fps_target") != 1) media_sleep_ms(100);
    assert_true(td_stream_num(&t, "b", "fps_target") == 1);   /* restarted with the new settings */
    /* "a" kept its context: its served count is still there (a new stream would start at 0) */
    assert_true(td_stream_num(&t, "a", "queries_served") == served_a);
    r = td_call(&t, "{\"id\":\"q2\",\"op\":\"query\",\"stream\":\"a\",\"prompt\":\"What?\",\"max_tokens\":6}", 30000);
    assert_string_equal(td_str(r, "text"), before);
    cJSON_Delete(r);
    assert_true(td_log_contains(&t, "1 added, 0 removed, 1 restarted, 1 unchanged"));

    /* a broken file changes nothing */
    assert_int_equal(media_write_file(t.cfg, "{\"streams\": [", 13), 0);
    assert_int_equal(kill(t.pid, SIGHUP), 0);
    deadline = media_now_ms() + 10000;
    while (media_now_ms() < deadline && !td_log_contains(&t, "keeping the current streams")) media_sleep_ms(100);
    assert_true(td_log_contains(&t, "keeping the current streams"));
    assert_true(wait_list(&t, want1, 4, 1000));

    /* a gone: removed; d (a client's) untouched */
    snprintf(streams, sizeof streams, "%s, %s", s_b2, s_c);
    write_streams_config(&t, streams);
    assert_int_equal(kill(t.pid, SIGHUP), 0);
    const char *want2[] = { "b", "c", "d" };
    assert_true(wait_list(&t, want2, 3, 30000));
    free(before);
    assert_int_equal(td_stop(&t), 0);
    td_cleanup(&t);
}

/* ---- SIGTERM with answers in flight ------------------------------------------------------------------ */

typedef struct inflight {
    td *t;
    char id[16], stream[16];
    char finish[32], error[32];
    bool final, ok, started;
} inflight;

static void *inflight_thread(void *p) {
    inflight *f = p;
    char e[256], j[512];
    snprintf(j, sizeof j, "{\"id\":\"%s\",\"op\":\"query\",\"stream\":\"%s\",\"prompt\":\"Go on and on.\","
             "\"max_tokens\":4000}", f->id, f->stream);
    proto_client *c = proto_client_connect(f->t->ep, NULL, e, sizeof e);
    if (!c) return NULL;
    td_tokens tk = { .len = 0 };
    cJSON *final = NULL;
    if (proto_client_request(c, j, 60000, td_on_token, &tk, &final, e, sizeof e) == 0) {
        f->final = true;
        f->ok = td_ok(final);
        f->started = tk.frames > 0;
        snprintf(f->finish, sizeof f->finish, "%s", td_str(final, "finish_reason") ? td_str(final, "finish_reason") : "");
        snprintf(f->error, sizeof f->error, "%s", td_code(final));
    }
    cJSON_Delete(final);
    proto_client_close(c);
    return NULL;
}

static void test_sigterm_in_flight(void **state) {
    (void)state;
    td t;
    char extra[2048];
    snprintf(extra, sizeof extra,
             "\"sources\": {\"allowed_protocols\": \"file\"},\n"
             " \"stream_defaults\": {\"min_tokens_per_pair\": 4, \"max_tokens_per_pair\": 16, \"cache_tokens\": 2048},\n"
             " \"shutdown_grace_seconds\": 1,\n"
             " \"streams\": [{\"stream\": \"s1\", \"url\": \"%s\", \"options\": {\"loop\": true}},"
             " {\"stream\": \"s2\", \"url\": \"%s\", \"options\": {\"loop\": true}}]", g_clip, g_clip);
    assert_int_equal(td_start(&t, NULL, extra, NULL, NULL), 0);
    assert_true(td_wait_pairs(&t, "s1", 2, 60000));
    assert_true(td_wait_pairs(&t, "s2", 2, 60000));
    /* two answers running (one per stream) and two waiting behind them */
    inflight f[4] = {
        { &t, "t1", "s1", "", "", false, false, false }, { &t, "t2", "s2", "", "", false, false, false },
        { &t, "t3", "s1", "", "", false, false, false }, { &t, "t4", "s2", "", "", false, false, false },
    };
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_create(&th[i], NULL, inflight_thread, &f[i]), 0);
        media_sleep_ms(150);
    }
    /* wait until both running answers stream tokens */
    int64_t deadline = media_now_ms() + 30000;
    while (media_now_ms() < deadline) {
        cJSON *r = td_call(&t, "{\"id\":\"s\",\"op\":\"status\"}", 5000);
        double depth = td_num(r, "queue_depth");
        cJSON_Delete(r);
        if (depth == 4) break;
        media_sleep_ms(50);
    }
    media_sleep_ms(300);
    assert_int_equal(kill(t.pid, SIGTERM), 0);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    int rc = td_wait_exit(&t, 60000);
    int cut = 0, refused = 0;
    for (int i = 0; i < 4; i++) {
        printf("%s on %s: final %d ok %d finish %s error %s\n", f[i].id, f[i].stream, f[i].final, f[i].ok,
               f[i].finish, f[i].error);
        if (!f[i].final) fail_msg("%s got no final frame", f[i].id);
        if (f[i].ok) {
            /* a running answer: finished, or cut with error.code shutting_down */
            if (strcmp(f[i].finish, "cancelled") == 0) {
                assert_string_equal(f[i].error, "shutting_down");
                cut++;
            }
        } else {
            assert_string_equal(f[i].error, "shutting_down");
            refused++;
        }
    }
    assert_true(cut >= 1);     /* 4000 tokens do not fit in a 1 s grace period */
    assert_true(refused >= 1);  /* the waiting ones never started */
    if (rc != 0) td_dump_log(&t);
    assert_int_equal(rc, 0);
    assert_true(td_log_contains(&t, "vigild stopped"));
    td_cleanup(&t);
}

/* ---- CURVE ------------------------------------------------------------------------------------------ */

static void test_curve(void **state) {
    (void)state;
    char spub[41], ssec[41], cpub[41], csec[41], opub[41], osec[41], e[256];
    assert_int_equal(proto_curve_keypair(spub, ssec, e, sizeof e), 0);
    assert_int_equal(proto_curve_keypair(cpub, csec, e, sizeof e), 0);
    assert_int_equal(proto_curve_keypair(opub, osec, e, sizeof e), 0);
    int port = media_free_port(SOCK_STREAM), eport = media_free_port(SOCK_STREAM);
    while (eport == port) eport = media_free_port(SOCK_STREAM);
    char keyfile[512];
    snprintf(keyfile, sizeof keyfile, "%s/server.key", g_dir);
    char keytext[64];
    snprintf(keytext, sizeof keytext, "# vigild\n%s\n", ssec);
    write_file(keyfile, keytext);
    /* wildcard binds: reachable from other hosts, so CURVE is required (and given) */
    char ep[64], ev[64];
    snprintf(ep, sizeof ep, "tcp://0.0.0.0:%d", port);
    snprintf(ev, sizeof ev, "tcp://0.0.0.0:%d", eport);
    const char *args[] = { "--endpoint", ep, "--events-endpoint", ev, "--curve-secret-key-file", keyfile,
                           "--curve-client-key", cpub, NULL };
    td t;
    /* td_start pings over ipc; here the request socket is tcp: start without waiting on ping */
    memset(&t, 0, sizeof t);
    assert_int_equal(media_tmpdir(t.dir, sizeof t.dir), 0);
    snprintf(t.ep, sizeof t.ep, "ipc://%s/unused.sock", t.dir);
    snprintf(t.ev, sizeof t.ev, "ipc://%s/unused-ev.sock", t.dir);
    snprintf(t.log, sizeof t.log, "%s/vigild.log", t.dir);
    snprintf(t.cfg, sizeof t.cfg, "%s/vigild.json", t.dir);
    assert_int_equal(td_write_config(&t, NULL, NULL), 0);
    char prog[512];
    snprintf(prog, sizeof prog, "%s/bin/vigild", td_build());
    t.pid = fork();
    if (t.pid == 0) {
        int fd = open(t.log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        const char *argv[16] = { prog, "--config", t.cfg };
        int n = 3;
        for (int i = 0; args[i]; i++) argv[n++] = args[i];
        argv[n] = NULL;
        execv(prog, (char *const *)argv);
        _exit(127);
    }
    td_remember(t.pid);
    char cep[64];
    snprintf(cep, sizeof cep, "tcp://127.0.0.1:%d", port);
    proto_curve_keys good, bad;
    memset(&good, 0, sizeof good);
    memcpy(good.server_public, spub, 41);
    memcpy(good.client_public, cpub, 41);
    memcpy(good.client_secret, csec, 41);
    bad = good;
    memcpy(bad.client_public, opub, 41);
    memcpy(bad.client_secret, osec, 41);
    /* the allowed client is served (retry while the daemon starts) */
    bool served = false;
    int64_t deadline = media_now_ms() + 180000;
    while (!served && media_now_ms() < deadline && td_alive(&t)) {
        proto_client *c = proto_client_connect(cep, &good, e, sizeof e);
        assert_non_null(c);
        cJSON *final = NULL;
        if (proto_client_request(c, "{\"id\":\"p\",\"op\":\"ping\"}", 2000, NULL, NULL, &final, e, sizeof e) == 0)
            served = td_ok(final);
        cJSON_Delete(final);
        proto_client_close(c);
    }
    if (!served) td_dump_log(&t);
    assert_true(served);
    /* another key pair is refused by the authentication handler: no answer */
    proto_client *c = proto_client_connect(cep, &bad, e, sizeof e);
    cJSON *final = NULL;
    int rc = proto_client_request(c, "{\"id\":\"p\",\"op\":\"ping\"}", 2000, NULL, NULL, &final, e, sizeof e);
    assert_int_equal(rc, -ETIMEDOUT);
    cJSON_Delete(final);
    proto_client_close(c);
    /* and so is a plain (non-CURVE) client */
    c = proto_client_connect(cep, NULL, e, sizeof e);
    rc = proto_client_request(c, "{\"id\":\"p\",\"op\":\"ping\"}", 1500, NULL, NULL, &final, e, sizeof e);
    assert_int_equal(rc, -ETIMEDOUT);
    proto_client_close(c);
    assert_true(td_log_contains(&t, "CURVE: refused a client"));
    assert_int_equal(td_stop(&t), 0);
    td_cleanup(&t);
}

/* ---- memory caps ----------------------------------------------------------------------------------- */

static void test_memory_caps(void **state) {
    (void)state;
    /* the tiny model's KV cache: 4 layers x 2 KV heads x 16 x (K, V) in bf16 = 512 bytes a token */
    td t;
    const char *extra = "\"sources\": {\"allowed_protocols\": \"file\"},\n"
                        " \"memory\": {\"max_total_cache_bytes\": 6000000, \"query_reserve_tokens\": 1024},\n"
                        " \"stream_defaults\": {\"min_tokens_per_pair\": 4, \"max_tokens_per_pair\": 16}";
    assert_int_equal(td_start(&t, NULL, extra, NULL, NULL), 0);
    cJSON *r = td_call(&t, "{\"id\":\"s\",\"op\":\"status\"}", 10000);
    double per_token = td_num(cJSON_GetObjectItemCaseSensitive(r, "model_info"), "kv_bytes_per_token");
    cJSON_Delete(r);
    assert_true(per_token >= 512);
    /* cache_bytes: the cap in bytes of KV cache becomes tokens */
    r = td_callf(&t, 30000, "{\"id\":\"a\",\"op\":\"stream.add\",\"stream\":\"a\",\"url\":\"%s\",\"cache_bytes\":2097152}",
                 g_clip);
    assert_true(td_ok(r));
    cJSON *s = cJSON_GetObjectItemCaseSensitive(r, "stream");
    assert_int_equal((int)td_num(s, "cache_tokens_cap"), (int)(2097152 / per_token));
    cJSON_Delete(r);
    /* two more 4096-token streams would need more than the 6 MB the daemon may use */
    r = td_callf(&t, 30000, "{\"id\":\"b\",\"op\":\"stream.add\",\"stream\":\"b\",\"url\":\"%s\",\"cache_tokens\":4096}",
                 g_clip);
    bool b_ok = td_ok(r);
    cJSON_Delete(r);
    r = td_callf(&t, 30000, "{\"id\":\"c\",\"op\":\"stream.add\",\"stream\":\"c\",\"url\":\"%s\",\"cache_tokens\":4096}",
                 g_clip);
    assert_true(b_ok);
    assert_false(td_ok(r));
    assert_string_equal(td_code(r), "limit_exceeded");
    const char *msg = td_str(cJSON_GetObjectItemCaseSensitive(r, "error"), "message");
    assert_non_null(strstr(msg, "max_total_cache_bytes"));
    cJSON_Delete(r);
    /* removing one makes room again */
    r = td_call(&t, "{\"id\":\"rb\",\"op\":\"stream.remove\",\"stream\":\"b\"}", 30000);
    assert_true(td_ok(r));
    cJSON_Delete(r);
    r = td_callf(&t, 30000, "{\"id\":\"c2\",\"op\":\"stream.add\",\"stream\":\"c\",\"url\":\"%s\",\"cache_tokens\":4096}",
                 g_clip);
    assert_true(td_ok(r));
    cJSON_Delete(r);
    assert_int_equal(td_stop(&t), 0);
    td_cleanup(&t);
}

/* ---- Thinking checkpoints ------------------------------------------------------------------------- */

static bool status_thinking(td *t) {
    cJSON *r = td_call(t, "{\"id\":\"s\",\"op\":\"status\"}", 10000);
    assert_true(td_ok(r));
    bool v = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "model_info"), "thinking"));
    cJSON_Delete(r);
    return v;
}

static void test_thinking_checkpoint(void **state) {
    (void)state;
    /* the golden checkpoint with the chat template of a Thinking release next to it */
    char model[512], src[PATH_MAX];
    snprintf(model, sizeof model, "%s/thinking-model", g_dir);
    assert_non_null(realpath(TD_MODEL, src));
    assert_int_equal(media_sh("mkdir -p '%s' && ln -sf '%s'/* '%s/'", model, src, model), 0);
    char tmpl[600];
    snprintf(tmpl, sizeof tmpl, "%s/chat_template.json", model);
    write_file(tmpl, "{\"chat_template\": \"{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}"
                     "{%- endif %}\"}\n");
    td t;
    assert_int_equal(td_start(&t, model, NULL, NULL, NULL), 0);
    assert_true(status_thinking(&t));
    assert_int_equal(td_stop(&t), 0);
    td_cleanup(&t);
    const char *off[] = { "--thinking", "off", NULL };
    assert_int_equal(td_start(&t, model, NULL, off, NULL), 0);
    assert_false(status_thinking(&t));
    assert_int_equal(td_stop(&t), 0);
    td_cleanup(&t);
    /* an Instruct checkpoint (no <think> in its template) */
    assert_int_equal(td_start(&t, NULL, NULL, NULL, NULL), 0);
    assert_false(status_thinking(&t));
    assert_int_equal(td_stop(&t), 0);
    td_cleanup(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_configuration),
        cmocka_unit_test(test_sighup_reload),
        cmocka_unit_test(test_sigterm_in_flight),
        cmocka_unit_test(test_curve),
        cmocka_unit_test(test_thinking_checkpoint),
        cmocka_unit_test(test_memory_caps),
    };
    return cmocka_run_group_tests_name("daemon_signals", tests, setup, teardown);
}
