/* test_cli.c — the `vigil` command-line client.
 *
 * Part 1 (in-process): value parsers, key files, and every command's request, which is fed to
 * the protocol's own parser (proto_parse_request) so that the CLI and the daemon cannot drift
 * apart on field names or shapes; usage errors; help texts; event filters; output tables.
 * Part 2 (processes): build/bin/vigil against no daemon (exit 3 and the message), then against
 * the real vigild on a temporary ipc endpoint with a tiny generated checkpoint and a short
 * ffmpeg-made clip: ping, stream add/ls/rm, status, ask (streamed, --json, Ctrl-C cancel),
 * image, watch add/ls/rm, events, daemon errors (exit 1). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "clients/cli.h"
#include "tests/support/manpage.h"
#include "tests/support/media.h"
#include "tests/support/vigild_proc.h"

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                    */

#define ARGV(...) ((char *[]){"vigil", __VA_ARGS__, NULL})
#define ARGC(...) ((int)(sizeof((char *[]){"vigil", __VA_ARGS__}) / sizeof(char *)))
#define PARSE(inv, ...) cli_parse(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), (inv), err, sizeof err)

static char err[1024];

/* Parses the invocation's request with the protocol parser (as vigild would). */
static void request_parse(const cli_invocation *inv, proto_request *out)
{
    assert_non_null(inv->request);
    cJSON *copy = cJSON_Duplicate(inv->request, 1);
    assert_non_null(copy);
    assert_non_null(cJSON_AddStringToObject(copy, "id", "t1"));
    char *text = cJSON_PrintUnformatted(copy);
    cJSON_Delete(copy);
    proto_limits lim;
    proto_limits_default(&lim);
    lim.allowed_url_schemes = NULL;  /* the shape of requests is tested here, not the policy */
    proto_error perr;
    int r = proto_parse_request(text, strlen(text), &lim, out, &perr);
    if (r != 0)
        fail_msg("the protocol parser rejected the CLI's request %s: %s", text, perr.message);
    free(text);
}

static void expect_usage(int argc, char **argv, const char *needle)
{
    cli_invocation inv;
    int rc = cli_parse(argc, argv, &inv, err, sizeof err);
    cli_invocation_free(&inv);
    if (rc != CLI_EXIT_USAGE)
        fail_msg("expected a usage error containing \"%s\", got rc %d (%s)", needle, rc, err);
    if (!strstr(err, needle))
        fail_msg("usage error \"%s\" does not contain \"%s\"", err, needle);
}
#define EXPECT_USAGE(needle, ...) expect_usage(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), needle)

static char *capture(void (*fn)(FILE *, const void *), const void *arg)
{
    /* static: the stream keeps the addresses until fclose, which GCC cannot see. */
    static char *buf;
    static size_t len;
    buf = NULL;
    len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    fn(f, arg);
    fclose(f);
    return buf;
}

/* ------------------------------------------------------------------------------------------ */
/* Value parsers                                                                              */

static void test_durations(void **state)
{
    (void)state;
    static const struct { const char *s; double v; } ok[] = {
        {"30", 30}, {"30s", 30}, {"500ms", 0.5}, {"5m", 300}, {"1h30m", 5400}, {"2.5h", 9000},
        {"1d", 86400}, {"1m30s", 90}, {"0", 0}, {"0.25s", 0.25},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        double v = -1;
        if (cli_parse_duration(ok[i].s, &v) != 0 || fabs(v - ok[i].v) > 1e-9)
            fail_msg("duration \"%s\": expected %g, got %g", ok[i].s, ok[i].v, v);
    }
    static const char *const bad[] = {"", "abc", "10x", "-5s", "1m30", "s", "5 m", "1e400s",
                                      "1..5s"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        double v;
        if (cli_parse_duration(bad[i], &v) == 0)
            fail_msg("duration \"%s\" was accepted as %g", bad[i], v);
    }
}

static void test_sizes(void **state)
{
    (void)state;
    static const struct { const char *s; uint64_t v; } ok[] = {
        {"1048576", 1048576}, {"512K", 512u << 10}, {"64M", 64u << 20},
        {"2G", 2ull << 30}, {"2GiB", 2ull << 30}, {"2GB", 2ull << 30}, {"1.5G", 3ull << 29},
        {"1T", 1ull << 40}, {"100B", 100},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        uint64_t v = 0;
        if (cli_parse_size(ok[i].s, &v) != 0 || v != ok[i].v)
            fail_msg("size \"%s\": expected %llu, got %llu", ok[i].s,
                     (unsigned long long)ok[i].v, (unsigned long long)v);
    }
    static const char *const bad[] = {"", "G", "12Q", "-1M", "1.5", "2GiBs", "0.5B"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v;
        if (cli_parse_size(bad[i], &v) == 0)
            fail_msg("size \"%s\" was accepted as %llu", bad[i], (unsigned long long)v);
    }
}

static void test_wall_times(void **state)
{
    (void)state;
    /* Local times are read in the TZ of the process: pin it. */
    char *old_tz = getenv("TZ") ? strdup(getenv("TZ")) : NULL;
    setenv("TZ", "UTC", 1);
    tzset();
    double now, t;
    assert_int_equal(proto_parse_rfc3339("2025-01-31T10:05:00Z", &now), 0);

    assert_int_equal(cli_parse_wall_time("10:02", now, &t), 0);
    assert_true(fabs(t - (now - 180)) < 1e-6);
    assert_int_equal(cli_parse_wall_time("10:02:30", now, &t), 0);
    assert_true(fabs(t - (now - 150)) < 1e-6);
    /* Later today than now: yesterday's. Within a minute: today's (clock skew). */
    assert_int_equal(cli_parse_wall_time("23:50", now, &t), 0);
    assert_true(fabs(t - (now - 10 * 3600 - 15 * 60)) < 1e-6);
    assert_int_equal(cli_parse_wall_time("10:05:30", now, &t), 0);
    assert_true(fabs(t - (now + 30)) < 1e-6);
    assert_int_equal(cli_parse_wall_time("@1738317720", now, &t), 0);
    assert_true(t == 1738317720.0);
    assert_int_equal(cli_parse_wall_time("2025-01-31T10:02:00+01:00", now, &t), 0);
    assert_true(fabs(t - (now - 180 - 3600)) < 1e-6);
    static const char *const bad[] = {"", "25:00", "10:61", "1002", "10:2", "10:02:5", "@",
                                      "@x", "yesterday", "10:02:30:00"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (cli_parse_wall_time(bad[i], now, &t) == 0)
            fail_msg("time \"%s\" was accepted", bad[i]);
    if (old_tz) {
        setenv("TZ", old_tz, 1);
        free(old_tz);
    } else {
        unsetenv("TZ");
    }
    tzset();
}

static void test_key_files(void **state)
{
    (void)state;
    char dir[256];
    assert_int_equal(media_tmpdir(dir, sizeof dir), 0);
    char pub[PROTO_Z85_KEY_LEN + 1], sec[PROTO_Z85_KEY_LEN + 1], out[PROTO_Z85_KEY_LEN + 1];
    assert_int_equal(proto_curve_keypair(pub, sec, err, sizeof err), 0);

    assert_int_equal(cli_read_key(pub, false, out, err, sizeof err), CLI_EXIT_OK);
    assert_string_equal(out, pub);

    char path[512], text[512];
    snprintf(path, sizeof path, "%s/bare.key", dir);
    snprintf(text, sizeof text, "# vigild server key\n%s\n", pub);
    assert_int_equal(media_write_file(path, text, strlen(text)), 0);
    assert_int_equal(cli_read_key(path, false, out, err, sizeof err), CLI_EXIT_OK);
    assert_string_equal(out, pub);

    /* A ZeroMQ certificate holds both keys: each is found by its name. */
    snprintf(path, sizeof path, "%s/client.key_secret", dir);
    snprintf(text, sizeof text, "#   ****  Generated by zmq  ****\nmetadata\ncurve\n"
             "    public-key = \"%s\"\n    secret-key = \"%s\"\n", pub, sec);
    assert_int_equal(media_write_file(path, text, strlen(text)), 0);
    assert_int_equal(cli_read_key(path, true, out, err, sizeof err), CLI_EXIT_OK);
    assert_string_equal(out, sec);
    assert_int_equal(cli_read_key(path, false, out, err, sizeof err), CLI_EXIT_OK);
    assert_string_equal(out, pub);

    snprintf(path, sizeof path, "%s/junk.key", dir);
    assert_int_equal(media_write_file(path, "not a key\n", 10), 0);
    assert_int_equal(cli_read_key(path, true, out, err, sizeof err), CLI_EXIT_USAGE);
    assert_non_null(strstr(err, "has no CURVE secret key"));
    assert_int_equal(cli_read_key("/nonexistent/key", false, out, err, sizeof err),
                     CLI_EXIT_USAGE);
    assert_non_null(strstr(err, "nor a readable key file"));

    /* Keys for a connection: server key + client secret -> derived client public key. */
    cli_conn_opts o = {.endpoint = "ipc:///x", .server_key = pub, .client_secret = sec};
    proto_curve_keys keys;
    bool use;
    assert_int_equal(cli_conn_keys(&o, &keys, &use, err, sizeof err), CLI_EXIT_OK);
    assert_true(use);
    assert_string_equal(keys.server_public, pub);
    assert_string_equal(keys.client_secret, sec);
    assert_string_equal(keys.client_public, pub);   /* same pair used for both roles here */
    cli_conn_opts o2 = {.endpoint = "ipc:///x", .client_secret = sec};
    assert_int_equal(cli_conn_keys(&o2, &keys, &use, err, sizeof err), CLI_EXIT_USAGE);
    assert_non_null(strstr(err, "no server key"));
    cli_conn_opts o3 = {.endpoint = "ipc:///x", .server_key = pub};
    assert_int_equal(cli_conn_keys(&o3, &keys, &use, err, sizeof err), CLI_EXIT_USAGE);
    assert_non_null(strstr(err, "no client key"));
    cli_conn_opts o4 = {.endpoint = "ipc:///x"};
    assert_int_equal(cli_conn_keys(&o4, &keys, &use, err, sizeof err), CLI_EXIT_OK);
    assert_false(use);
    media_rmtree(dir);
}

/* ------------------------------------------------------------------------------------------ */
/* Requests                                                                                   */

static void test_stream_add_request(void **state)
{
    (void)state;
    cli_invocation inv;
    assert_int_equal(PARSE(&inv, "stream", "add", "gate", "rtsp://10.0.0.5/live", "--fps", "1.5",
                           "--tokens-per-pair", "64-128", "--cache-tokens", "8192",
                           "--system-prompt", "You watch a gate.", "--loop", "--realtime",
                           "--start=1m30s", "--rtsp-transport", "udp", "--decoder-threads", "2",
                           "--io-timeout", "2.5s"),
                     CLI_EXIT_OK);
    assert_int_equal(inv.cmd, CLI_CMD_STREAM_ADD);
    proto_request r;
    request_parse(&inv, &r);
    assert_int_equal(r.op, PROTO_OP_STREAM_ADD);
    const proto_stream_add *a = &r.stream_add;
    assert_string_equal(a->stream, "gate");
    assert_string_equal(a->url, "rtsp://10.0.0.5/live");
    assert_true(a->fps == 1.5);
    assert_int_equal(a->min_tokens_per_pair, 64);
    assert_int_equal(a->max_tokens_per_pair, 128);
    assert_int_equal(a->cache_kind, PROTO_CACHE_TOKENS);
    assert_int_equal(a->cache_tokens, 8192);
    assert_string_equal(a->system_prompt, "You watch a gate.");
    assert_true(a->loop && a->realtime);
    assert_true(a->start_offset == 90);
    assert_int_equal(a->rtsp_transport, PROTO_RTSP_UDP);
    assert_int_equal(a->decoder_threads, 2);
    assert_int_equal(a->timeout_ms, 2500);
    proto_request_free(&r);
    cli_invocation_free(&inv);

    /* A single number fixes the budget; sizes in bytes. */
    assert_int_equal(PARSE(&inv, "stream", "add", "c", "/tmp/a.mp4", "--tokens-per-pair", "256",
                           "--cache-bytes", "2G"), CLI_EXIT_OK);
    request_parse(&inv, &r);
    assert_int_equal(r.stream_add.min_tokens_per_pair, 256);
    assert_int_equal(r.stream_add.max_tokens_per_pair, 256);
    assert_int_equal(r.stream_add.cache_kind, PROTO_CACHE_BYTES);
    assert_true(r.stream_add.cache_bytes == 2ull << 30);
    assert_string_equal(r.stream_add.url_scheme, "file");
    proto_request_free(&r);
    cli_invocation_free(&inv);

    assert_int_equal(PARSE(&inv, "stream", "add", "c", "/tmp/a.mp4", "--max-tokens-per-pair",
                           "32"), CLI_EXIT_OK);
    request_parse(&inv, &r);
    assert_int_equal(r.stream_add.max_tokens_per_pair, 32);
    assert_true(r.stream_add.min_tokens_per_pair <= 32);
    proto_request_free(&r);
    cli_invocation_free(&inv);
}

static void test_ask_request(void **state)
{
    (void)state;
    cli_invocation inv;
    proto_request r;
    assert_int_equal(PARSE(&inv, "ask", "gate", "Is the gate open?", "-w", "30s", "-n", "64",
                           "--temperature", "0.7", "--top-k", "20", "--top-p", "0.8", "--min-p",
                           "0.05", "--repetition-penalty", "1.1", "--presence-penalty", "-0.5",
                           "--seed", "42", "--stop", "\n\n", "--stop", "END"),
                     CLI_EXIT_OK);
    assert_int_equal(inv.cmd, CLI_CMD_ASK);
    assert_false(inv.no_stream);
    request_parse(&inv, &r);
    assert_int_equal(r.op, PROTO_OP_QUERY);
    const proto_query *q = &r.query;
    assert_string_equal(q->stream, "gate");
    assert_string_equal(q->prompt, "Is the gate open?");
    assert_int_equal(q->window.kind, PROTO_WINDOW_LAST);
    assert_true(q->window.last_seconds == 30);
    assert_int_equal(q->max_tokens, 64);
    assert_true(q->stream_tokens);
    const proto_sampling *s = &q->sampling;
    assert_true(s->temperature == 0.7 && s->top_k == 20 && s->top_p == 0.8);
    assert_true(s->min_p == 0.05 && s->repetition_penalty == 1.1 && s->presence_penalty == -0.5);
    assert_true(s->seed == 42);
    assert_int_equal(s->n_stop, 2);
    assert_string_equal(s->stop[0], "\n\n");
    assert_string_equal(s->stop[1], "END");
    proto_request_free(&r);
    cli_invocation_free(&inv);

    /* Media window; --no-stream asks for the final frame only. */
    assert_int_equal(PARSE(&inv, "ask", "gate", "--from-media", "1m", "--to-media", "90s",
                           "--no-stream", "--", "-what happened?"), CLI_EXIT_OK);
    request_parse(&inv, &r);
    assert_string_equal(r.query.prompt, "-what happened?");
    assert_int_equal(r.query.window.kind, PROTO_WINDOW_MEDIA);
    assert_true(r.query.window.has_from && r.query.window.from == 60);
    assert_true(r.query.window.has_to && r.query.window.to == 90);
    assert_false(r.query.stream_tokens);
    assert_int_equal(r.query.sampling.set, 0);
    proto_request_free(&r);
    cli_invocation_free(&inv);

    /* Wall window with an open end; --json also turns token streaming off. */
    assert_int_equal(PARSE(&inv, "ask", "gate", "q", "--from", "2025-01-31T10:02:00Z", "--json"),
                     CLI_EXIT_OK);
    request_parse(&inv, &r);
    assert_int_equal(r.query.window.kind, PROTO_WINDOW_WALL);
    assert_true(r.query.window.has_from && !r.query.window.has_to);
    double t;
    assert_int_equal(proto_parse_rfc3339("2025-01-31T10:02:00Z", &t), 0);
    assert_true(r.query.window.from == t);
    assert_false(r.query.stream_tokens);
    proto_request_free(&r);
    cli_invocation_free(&inv);
}

static void image_roundtrip(const char *dir, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/img%zu.bin", dir, n);
    unsigned char *data = malloc(n);
    for (size_t i = 0; i < n; i++)
        data[i] = (unsigned char)(i * 131 + 7 + n);
    assert_int_equal(media_write_file(path, data, n), 0);
    cli_invocation inv;
    assert_int_equal(PARSE(&inv, "image", path, "What is this?", "--max-tokens", "9"),
                     CLI_EXIT_OK);
    proto_request r;
    request_parse(&inv, &r);
    assert_int_equal(r.op, PROTO_OP_IMAGE);
    assert_null(r.image.path);
    assert_int_equal(r.image.data_len, n);
    assert_memory_equal(r.image.data, data, n);
    assert_string_equal(r.image.prompt, "What is this?");
    assert_int_equal(r.image.max_tokens, 9);
    proto_request_free(&r);
    cli_invocation_free(&inv);
    free(data);
}

static void test_image_request(void **state)
{
    (void)state;
    char dir[256];
    assert_int_equal(media_tmpdir(dir, sizeof dir), 0);
    /* Every base64 tail: no padding, one '=', two '='. */
    for (size_t n = 1; n <= 7; n++)
        image_roundtrip(dir, n);
    image_roundtrip(dir, 100000);
    char path[512];
    snprintf(path, sizeof path, "%s/missing.png", dir);
    EXPECT_USAGE("cannot open image file", "image", path, "q");
    EXPECT_USAGE("is not a regular file", "image", dir, "q");
    snprintf(path, sizeof path, "%s/empty.png", dir);
    assert_int_equal(media_write_file(path, "", 0), 0);
    EXPECT_USAGE("is 0 bytes", "image", path, "q");
    media_rmtree(dir);
}

static void test_watch_request(void **state)
{
    (void)state;
    cli_invocation inv;
    proto_request r;
    assert_int_equal(PARSE(&inv, "watch", "add", "gate", "Which door is open?", "--every", "10s",
                           "--name", "doors", "--expect", "enum:front,back,none", "--alert-on",
                           "front,back", "--alert-repeat", "--cooldown", "5m", "--window", "30s",
                           "--max-tokens", "8", "--seed", "3"),
                     CLI_EXIT_OK);
    request_parse(&inv, &r);
    assert_int_equal(r.op, PROTO_OP_WATCH_ADD);
    const proto_watch_add *w = &r.watch_add;
    assert_string_equal(w->stream, "gate");
    assert_string_equal(w->watch, "doors");
    assert_string_equal(w->prompt, "Which door is open?");
    assert_false(w->on_pair);
    assert_true(w->every_seconds == 10);
    assert_true(w->window_last_seconds == 30);
    assert_int_equal(w->max_tokens, 8);
    assert_true(w->sampling.seed == 3);
    assert_int_equal(w->expect.kind, PROTO_EXPECT_ENUM);
    assert_int_equal(w->expect.n_values, 3);
    assert_string_equal(w->expect.values[2], "none");
    assert_int_equal(w->expect.alert_mask, 0x3);
    assert_true(w->expect.alert_repeat);
    assert_true(w->expect.cooldown_seconds == 300);
    proto_request_free(&r);
    cli_invocation_free(&inv);

    assert_int_equal(PARSE(&inv, "watch", "add", "gate", "Is someone there?", "--on-pair",
                           "--expect", "yes_no"), CLI_EXIT_OK);
    request_parse(&inv, &r);
    assert_true(r.watch_add.on_pair);
    assert_int_equal(r.watch_add.expect.kind, PROTO_EXPECT_YES_NO);
    assert_string_equal(r.watch_add.watch, "");
    proto_request_free(&r);
    cli_invocation_free(&inv);
}

static void test_simple_requests(void **state)
{
    (void)state;
    static const struct {
        const char *argv[4];
        proto_op op;
        const char *stream, *watch;
    } cases[] = {
        {{"ping"}, PROTO_OP_PING, NULL, NULL},
        {{"status"}, PROTO_OP_STATUS, "", NULL},
        {{"status", "cam1"}, PROTO_OP_STATUS, "cam1", NULL},
        {{"status", "--stream", "cam2"}, PROTO_OP_STATUS, "cam2", NULL},
        {{"stream", "ls"}, PROTO_OP_STREAM_LIST, NULL, NULL},
        {{"stream", "list"}, PROTO_OP_STREAM_LIST, NULL, NULL},
        {{"stream", "rm", "cam1"}, PROTO_OP_STREAM_REMOVE, "cam1", NULL},
        {{"stream", "remove", "cam1"}, PROTO_OP_STREAM_REMOVE, "cam1", NULL},
        {{"watch", "ls"}, PROTO_OP_WATCH_LIST, "", NULL},
        {{"watch", "ls", "--stream", "cam3"}, PROTO_OP_WATCH_LIST, "cam3", NULL},
        {{"watch", "rm", "w1"}, PROTO_OP_WATCH_REMOVE, NULL, "w1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *argv[6] = {"vigil"};
        int argc = 1;
        for (int k = 0; k < 4 && cases[i].argv[k]; k++)
            argv[argc++] = (char *)cases[i].argv[k];
        cli_invocation inv;
        assert_int_equal(cli_parse(argc, argv, &inv, err, sizeof err), CLI_EXIT_OK);
        proto_request r;
        request_parse(&inv, &r);
        assert_int_equal(r.op, cases[i].op);
        if (r.op == PROTO_OP_STATUS)
            assert_string_equal(r.status.stream, cases[i].stream);
        if (r.op == PROTO_OP_WATCH_LIST)
            assert_string_equal(r.watch_list.stream, cases[i].stream);
        if (r.op == PROTO_OP_STREAM_REMOVE)
            assert_string_equal(r.stream_remove.stream, cases[i].stream);
        if (r.op == PROTO_OP_WATCH_REMOVE)
            assert_string_equal(r.watch_remove.watch, cases[i].watch);
        proto_request_free(&r);
        cli_invocation_free(&inv);
    }
    /* Local commands send nothing. */
    cli_invocation inv;
    assert_int_equal(PARSE(&inv, "version"), CLI_EXIT_OK);
    assert_null(inv.request);
    cli_invocation_free(&inv);
    assert_int_equal(PARSE(&inv, "--version"), CLI_EXIT_OK);
    assert_int_equal(inv.cmd, CLI_CMD_VERSION);
    assert_null(inv.request);
    cli_invocation_free(&inv);
    assert_int_equal(PARSE(&inv, "ping", "-V"), CLI_EXIT_OK);
    assert_int_equal(inv.cmd, CLI_CMD_VERSION);
    cli_invocation_free(&inv);
    assert_int_equal(PARSE(&inv, "events", "--kind", "alert,state", "-s", "cam1", "--count", "3"),
                     CLI_EXIT_OK);
    assert_null(inv.request);
    assert_int_equal(inv.events_kinds, CLI_KIND_ALERT | CLI_KIND_STATE);
    assert_string_equal(inv.events_stream, "cam1");
    assert_int_equal(inv.events_count, 3);
    cli_invocation_free(&inv);
}

static void test_usage_errors(void **state)
{
    (void)state;
    EXPECT_USAGE("no command given", "--json");
    EXPECT_USAGE("unknown command 'frob'", "frob");
    EXPECT_USAGE("unknown subcommand 'frob'; expected add, rm or ls", "stream", "frob");
    EXPECT_USAGE("expected add, rm or ls after 'watch'", "watch");
    EXPECT_USAGE("unknown option --bogus", "ask", "cam", "q", "--bogus");
    EXPECT_USAGE("unknown option -Z", "ping", "-Z");
    EXPECT_USAGE("--fps does not apply here (vigil ask --help)", "ask", "cam", "q", "--fps", "2");
    EXPECT_USAGE("missing arguments; usage: vigil ask STREAM", "ask", "cam");
    EXPECT_USAGE("too many arguments", "ping", "extra");
    EXPECT_USAGE("--max-tokens needs a value", "ask", "cam", "q", "--max-tokens");
    EXPECT_USAGE("--max-tokens expects an integer", "ask", "cam", "q", "--max-tokens", "ten");
    EXPECT_USAGE("--max-tokens expects an integer", "ask", "cam", "q", "-n0");
    EXPECT_USAGE("--temperature expects a number, got \"hot\"", "ask", "c", "q", "-t", "hot");
    EXPECT_USAGE("--loop takes no value", "stream", "add", "c", "u", "--loop=yes");
    EXPECT_USAGE("--window expects a duration above zero", "ask", "c", "q", "--window", "0");
    EXPECT_USAGE("not several", "ask", "c", "q", "--window", "30s", "--from", "10:00");
    EXPECT_USAGE("ends (10:00) before it begins (11:00)", "ask", "c", "q", "--from", "11:00",
                 "--to", "10:00");
    EXPECT_USAGE("--from expects a time", "ask", "c", "q", "--from", "noon");
    EXPECT_USAGE("--from-media expects a duration", "ask", "c", "q", "--from-media", "x");
    EXPECT_USAGE("--tokens-per-pair expects N >= 1", "stream", "add", "c", "u",
                 "--tokens-per-pair", "10-5");
    EXPECT_USAGE("--tokens-per-pair or --max-tokens-per-pair, not both", "stream", "add", "c",
                 "u", "--tokens-per-pair", "10", "--max-tokens-per-pair", "20");
    EXPECT_USAGE("--cache-tokens or --cache-bytes, not both", "stream", "add", "c", "u",
                 "--cache-tokens", "4096", "--cache-bytes", "1G");
    EXPECT_USAGE("--cache-bytes expects a size", "stream", "add", "c", "u", "--cache-bytes",
                 "lots");
    EXPECT_USAGE("--rtsp-transport expects tcp or udp", "stream", "add", "c", "u",
                 "--rtsp-transport", "http");
    EXPECT_USAGE("exactly one of --every D", "watch", "add", "c", "p");
    EXPECT_USAGE("exactly one of --every D", "watch", "add", "c", "p", "--every", "5s",
                 "--on-pair");
    EXPECT_USAGE("--expect expects yes_no or enum:A,B", "watch", "add", "c", "p", "--on-pair",
                 "--expect", "maybe");
    EXPECT_USAGE("without empty items", "watch", "add", "c", "p", "--on-pair", "--expect",
                 "enum:a,,b");
    EXPECT_USAGE("--alert-on needs --expect", "watch", "add", "c", "p", "--on-pair",
                 "--alert-on", "yes");
    EXPECT_USAGE("--kind expects state, watch, alert or daemon", "events", "--kind", "alerts");
    EXPECT_USAGE("--count expects an integer", "events", "--count", "0");
    EXPECT_USAGE("--timeout expects a duration above zero", "ping", "--timeout", "0s");
    EXPECT_USAGE("name different streams", "status", "a", "--stream", "b");
    EXPECT_USAGE("no help for 'frob'", "help", "frob");
}

static void test_environment(void **state)
{
    (void)state;
    cli_invocation inv;
    setenv("VIGIL_ENDPOINT", "tcp://127.0.0.1:7000", 1);
    setenv("VIGIL_TIMEOUT", "2s", 1);
    setenv("VIGIL_EVENTS_ENDPOINT", "tcp://127.0.0.1:7001", 1);
    assert_int_equal(PARSE(&inv, "ping"), CLI_EXIT_OK);
    assert_string_equal(inv.conn.endpoint, "tcp://127.0.0.1:7000");
    assert_string_equal(inv.conn.events_endpoint, "tcp://127.0.0.1:7001");
    assert_true(inv.conn.timeout_s == 2 && inv.conn.timeout_given);
    cli_invocation_free(&inv);
    /* Flags beat the environment. */
    assert_int_equal(PARSE(&inv, "ping", "-e", "ipc:///tmp/x/vigild.sock", "--timeout", "750ms"),
                     CLI_EXIT_OK);
    assert_string_equal(inv.conn.endpoint, "ipc:///tmp/x/vigild.sock");
    assert_true(inv.conn.timeout_s == 0.75);
    cli_invocation_free(&inv);
    setenv("VIGIL_TIMEOUT", "soon", 1);
    EXPECT_USAGE("VIGIL_TIMEOUT expects a duration", "ping");
    unsetenv("VIGIL_ENDPOINT");
    unsetenv("VIGIL_TIMEOUT");
    unsetenv("VIGIL_EVENTS_ENDPOINT");
    assert_int_equal(PARSE(&inv, "ping"), CLI_EXIT_OK);
    assert_string_equal(inv.conn.endpoint, PROTO_DEFAULT_ENDPOINT);
    assert_null(inv.conn.events_endpoint);
    assert_true(inv.conn.timeout_s == CLI_DEFAULT_TIMEOUT_S && !inv.conn.timeout_given);
    cli_invocation_free(&inv);

    char ep[256];
    cli_conn_opts o = {.endpoint = PROTO_DEFAULT_ENDPOINT};
    assert_int_equal(cli_events_endpoint(&o, ep, sizeof ep, err, sizeof err), 0);
    assert_string_equal(ep, PROTO_DEFAULT_EVENTS_ENDPOINT);
    o.endpoint = "ipc:///tmp/v1/vigild.sock";
    assert_int_equal(cli_events_endpoint(&o, ep, sizeof ep, err, sizeof err), 0);
    assert_string_equal(ep, "ipc:///tmp/v1/events.sock");
    o.endpoint = "tcp://10.0.0.1:5555";
    assert_int_equal(cli_events_endpoint(&o, ep, sizeof ep, err, sizeof err), CLI_EXIT_USAGE);
    assert_non_null(strstr(err, "--events-endpoint"));
    o.events_endpoint = "tcp://10.0.0.1:5556";
    assert_int_equal(cli_events_endpoint(&o, ep, sizeof ep, err, sizeof err), 0);
    assert_string_equal(ep, "tcp://10.0.0.1:5556");
}

static void usage_of(FILE *f, const void *cmd)
{
    cli_usage(*(const cli_command *)cmd, f);
}

static void test_help(void **state)
{
    (void)state;
    for (int c = 0; c < CLI_CMD_COUNT_; c++) {
        char *text = capture(usage_of, &c);
        const char *name = cli_command_name((cli_command)c);
        char want[64];
        snprintf(want, sizeof want, "vigil %s", c == CLI_CMD_NONE ||
                 c == CLI_CMD_VERSION ? "[options]" : name);
        if (strncmp(text, "usage: vigil ", 13) != 0 || !strstr(text, want))
            fail_msg("help of '%s' lacks \"%s\"", name, want);
        /* Every help lists the exit codes scripts rely on. */
        if (!strstr(text, "3  vigild not reachable") || !strstr(text, "4  interrupted"))
            fail_msg("help of '%s' lacks the exit codes", name);
        free(text);
    }
    cli_invocation inv;
    assert_int_equal(PARSE(&inv, "ask", "--help"), CLI_EXIT_OK);
    assert_true(inv.help && inv.cmd == CLI_CMD_ASK);
    cli_invocation_free(&inv);
    assert_int_equal(PARSE(&inv, "help", "stream", "add"), CLI_EXIT_OK);
    assert_true(inv.help && inv.cmd == CLI_CMD_STREAM_ADD);
    cli_invocation_free(&inv);
    assert_int_equal(PARSE(&inv, "-h"), CLI_EXIT_OK);
    assert_true(inv.help && inv.cmd == CLI_CMD_NONE);
    cli_invocation_free(&inv);
}

/* Every option the help texts mention is documented in vigil(1). */
static void test_man_page(void **state)
{
    (void)state;
    size_t len;
    char *man = media_read_file("docs/man/vigil.1", &len);
    assert_non_null(man);
    int checked = 0;
    for (int c = 0; c < CLI_CMD_COUNT_; c++) {
        char *text = capture(usage_of, &c);
        char missing[96];
        int n = manpage_check_options(text, man, missing, sizeof missing);
        if (n < 0)
            fail_msg("'%s' (help of '%s') is not in docs/man/vigil.1", missing,
                     cli_command_name((cli_command)c));
        checked += n;
        free(text);
    }
    assert_true(checked > 40);
    static const char *const env[] = {"VIGIL_ENDPOINT", "VIGIL_EVENTS_ENDPOINT",
                                      "VIGIL_SERVER_KEY", "VIGIL_CLIENT_KEY_FILE",
                                      "VIGIL_CLIENT_SECRET_KEY", "VIGIL_TIMEOUT"};
    for (size_t i = 0; i < sizeof env / sizeof env[0]; i++)
        if (!strstr(man, env[i]))
            fail_msg("%s is not in docs/man/vigil.1", env[i]);
    free(man);
}

/* ------------------------------------------------------------------------------------------ */
/* Events and output                                                                          */

static void test_event_filters(void **state)
{
    (void)state;
    cJSON *st1 = cJSON_Parse("{\"event\":\"stream.state\",\"stream\":\"cam1\",\"state\":\"running\"}");
    cJSON *st10 = cJSON_Parse("{\"event\":\"stream.state\",\"stream\":\"cam10\",\"state\":\"running\"}");
    cJSON *al = cJSON_Parse("{\"event\":\"alert\",\"stream\":\"cam1\",\"watch\":\"door\",\"value\":\"yes\"}");
    cJSON *wa = cJSON_Parse("{\"event\":\"watch.answer\",\"stream\":\"cam1\",\"watch\":\"door2\"}");
    assert_true(st1 && st10 && al && wa);
    cli_invocation inv = {.cmd = CLI_CMD_EVENTS};
    char topics[4][PROTO_NAME_MAX + 16];
    assert_int_equal(cli_event_topics(&inv, topics), 0);       /* everything */
    assert_true(cli_event_wanted(&inv, "stream.cam10", st10));

    inv.events_stream = "cam1";
    size_t n = cli_event_topics(&inv, topics);
    assert_int_equal(n, 3);
    assert_string_equal(topics[0], "stream.cam1");
    assert_string_equal(topics[1], "watch.");
    assert_string_equal(topics[2], "alert.");
    assert_true(cli_event_wanted(&inv, "stream.cam1", st1));
    assert_false(cli_event_wanted(&inv, "stream.cam10", st10));  /* prefix match, other stream */
    assert_true(cli_event_wanted(&inv, "alert.door", al));

    inv.events_kinds = CLI_KIND_ALERT;
    n = cli_event_topics(&inv, topics);
    assert_int_equal(n, 1);
    assert_string_equal(topics[0], "alert.");
    assert_false(cli_event_wanted(&inv, "stream.cam1", st1));
    assert_false(cli_event_wanted(&inv, "watch.door2", wa));
    assert_true(cli_event_wanted(&inv, "alert.door", al));

    cli_invocation w = {.cmd = CLI_CMD_EVENTS, .events_watch = "door"};
    n = cli_event_topics(&w, topics);
    assert_int_equal(n, 2);
    assert_string_equal(topics[0], "watch.door");
    assert_string_equal(topics[1], "alert.door");
    assert_false(cli_event_wanted(&w, "watch.door2", wa));      /* "door" is a prefix of it */
    assert_true(cli_event_wanted(&w, "alert.door", al));
    cJSON_Delete(st1);
    cJSON_Delete(st10);
    cJSON_Delete(al);
    cJSON_Delete(wa);
}

static void print_status_fn(FILE *f, const void *j) { cli_print_status(f, j); }
static void print_streams_fn(FILE *f, const void *j) { cli_print_streams(f, j); }
static void print_watches_fn(FILE *f, const void *j) { cli_print_watches(f, j); }
static void print_timing_fn(FILE *f, const void *j) { cli_print_timing(f, j); }

static void test_output(void **state)
{
    (void)state;
    /* The status example of docs/protocol.md, plus a failed stream with null figures. */
    cJSON *st = cJSON_Parse(
        "{\"v\":1,\"id\":\"s\",\"ok\":true,\"version\":\"0.1.0\",\"uptime_s\":3600.2,"
        "\"model\":\"Qwen3-VL-2B-Instruct\",\"queue_depth\":0,\"streams\":["
        "{\"stream\":\"gate\",\"url\":\"rtsp://cam1/stream\",\"state\":\"running\","
        "\"detail\":\"frames flowing\","
        "\"fps_target\":2,\"fps_in\":2.0,\"pairs_per_s\":1.0,\"frames_in\":7200,"
        "\"pairs_encoded\":3600,\"pairs_dropped\":0,\"pairs_evicted\":3470,"
        "\"cache_tokens_used\":32700,\"cache_tokens_cap\":32768,\"media_time\":3599.75,"
        "\"oldest_media_time\":259.75,\"tokens_per_pair\":256,\"watches\":1,"
        "\"latency_ms\":{\"p50\":640.1,\"p95\":980.4,\"p99\":1210.0}},"
        "{\"stream\":\"yard\",\"url\":\"rtsp://cam2/x\",\"state\":\"failed\","
        "\"detail\":\"rtsp://cam2/x: Connection refused\",\"fps_target\":2,\"fps_in\":null,"
        "\"media_time\":null,\"latency_ms\":{\"p50\":null,\"p95\":null,\"p99\":null}}]}");
    assert_non_null(st);
    char *out = capture(print_status_fn, st);
    static const char *const want[] = {
        "vigild 0.1.0, up 1h 00m, model Qwen3-VL-2B-Instruct, queries waiting 0",
        "STREAM", "gate", "running", "2.0/2.0", "32700/32768 100%", "640/980/1210", "59:59.8",
        "yard", "failed", "-/2.0", "-/-/-", "  yard: rtsp://cam2/x: Connection refused",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(out, want[i]))
            fail_msg("status output lacks \"%s\":\n%s", want[i], out);
    /* Only a stream in trouble gets its detail line. */
    if (strstr(out, "frames flowing"))
        fail_msg("a running stream's detail was printed:\n%s", out);
    /* Columns line up: "running" and "failed" start at the same offset in their rows. */
    const char *r1 = strstr(out, "\ngate"), *r2 = strstr(out, "\nyard");
    assert_true(r1 && r2);
    assert_int_equal(strstr(r1, "running") - r1, strstr(r2, "failed") - r2);
    free(out);
    out = capture(print_streams_fn, st);
    assert_non_null(strstr(out, "rtsp://cam1/stream"));
    free(out);
    cJSON_Delete(st);

    cJSON *one = cJSON_Parse("{\"ok\":true,\"stream\":{\"stream\":\"solo\",\"state\":\"ended\"}}");
    out = capture(print_status_fn, one);
    assert_non_null(strstr(out, "solo"));
    assert_non_null(strstr(out, "ended"));
    free(out);
    cJSON_Delete(one);
    cJSON *none = cJSON_Parse("{\"ok\":true,\"streams\":[]}");
    out = capture(print_streams_fn, none);
    assert_non_null(strstr(out, "no streams"));
    free(out);
    cJSON_Delete(none);

    cJSON *wl = cJSON_Parse(
        "{\"ok\":true,\"watches\":[{\"watch\":\"gate_open\",\"stream\":\"gate\",\"prompt\":"
        "\"Is the gate open?\",\"every_seconds\":10,\"on_pair\":false,\"expect\":{\"type\":"
        "\"enum\",\"values\":[\"open\",\"closed\"],\"alert_on\":[\"open\"]},\"last_value\":"
        "\"closed\"}]}");
    out = capture(print_watches_fn, wl);
    assert_non_null(strstr(out, "gate_open"));
    assert_non_null(strstr(out, "every 10s"));
    assert_non_null(strstr(out, "enum:open,closed alert open"));
    assert_non_null(strstr(out, "Is the gate open?"));
    free(out);
    cJSON_Delete(wl);

    cJSON *done = cJSON_Parse(
        "{\"ok\":true,\"event\":\"done\",\"text\":\"A red car\",\"finish_reason\":\"stop\","
        "\"usage\":{\"prompt_tokens\":5012,\"completion_tokens\":9,\"cached_tokens\":4980},"
        "\"timing\":{\"queue_ms\":3.1,\"ttft_ms\":412.5,\"total_ms\":1690.2,\"tokens_per_s\":32.4}}");
    out = capture(print_timing_fn, done);
    assert_string_equal(out, "queue 3 ms, first token 412 ms, 9 tokens in 1.69 s (32.4 tokens/s), "
                             "stop; prompt 5012 tokens (4980 cached)\n");
    free(out);
    cJSON_Delete(done);
    done = cJSON_Parse("{\"ok\":true,\"event\":\"done\",\"text\":\"red\",\"finish_reason\":\"stop\","
                       "\"usage\":{\"prompt_tokens\":135,\"completion_tokens\":2,\"cached_tokens\":123},"
                       "\"timing\":{\"queue_ms\":0.2,\"ttft_ms\":6.9,\"total_ms\":8.8,\"tokens_per_s\":228.4},"
                       "\"media_time\":75.25}");
    out = capture(print_timing_fn, done);
    assert_string_equal(out, "queue 0 ms, first token 7 ms, 2 tokens in 9 ms (228.4 tokens/s), stop; prompt 135 "
                             "tokens (123 cached); frames up to 1:15.2\n");
    free(out);
    cJSON_Delete(done);

    cJSON *ev = cJSON_Parse("{\"v\":1,\"event\":\"alert\",\"time\":\"2025-01-31T10:02:10.004Z\","
                            "\"watch\":\"gate_open\",\"stream\":\"gate\",\"value\":\"yes\","
                            "\"text\":\"Yes.\\nA person.\",\"media_time\":612.25}");
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cli_print_event(f, "alert.gate_open", ev);
    fclose(f);
    assert_non_null(strstr(buf, " ALERT gate_open on gate at 10:12.2: [yes] Yes. A person.\n"));
    free(buf);
    cJSON_Delete(ev);

    /* A long answer stays one line, cut at a character boundary. */
    char *text = malloc(2001);
    for (int i = 0; i < 1000; i++)
        memcpy(text + 2 * i, "\xc3\xa9", 2);     /* 1000 x U+00E9 */
    text[2000] = '\0';
    ev = cJSON_CreateObject();
    cJSON_AddStringToObject(ev, "event", "watch.answer");
    cJSON_AddStringToObject(ev, "watch", "w");
    cJSON_AddStringToObject(ev, "stream", "s");
    cJSON_AddStringToObject(ev, "text", text);
    free(text);
    buf = NULL;
    len = 0;
    f = open_memstream(&buf, &len);
    cli_print_event(f, "watch.w", ev);
    fclose(f);
    assert_non_null(strstr(buf, "\xc3\xa9...\n"));
    assert_true(len < 300);
    assert_ptr_equal(strchr(buf, '\n'), buf + len - 1);
    free(buf);
    cJSON_Delete(ev);
}

/* ------------------------------------------------------------------------------------------ */
/* The real program                                                                           */

typedef struct run_result {
    int status;                 /* exit code, or 128 + signal */
    char *out, *err;
} run_result;

static void run_free(run_result *r)
{
    free(r->out);
    free(r->err);
}

/* Runs build/bin/vigil with args (NULL-terminated); stdin from /dev/null. When
 * sigint_after_output is set, SIGINT is sent once stdout has produced some bytes. */
static run_result run_vigil_ex(bool sigint_after_output, const char *const *args)
{
    char prog[512];
    snprintf(prog, sizeof prog, "%s/bin/vigil", vigild_build_dir());
    int po[2], pe[2];
    assert_int_equal(pipe(po), 0);
    assert_int_equal(pipe(pe), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int dn = open("/dev/null", O_RDONLY);
        dup2(dn, 0);
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]);
        close(pe[0]);
        const char *argv[64] = {prog};
        int n = 1;
        for (; args[n - 1] && n < 63; n++)
            argv[n] = args[n - 1];
        argv[n] = NULL;
        execv(prog, (char *const *)argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    run_result r = {0};
    size_t no = 0, ne = 0;
    bool signalled = false;
    struct pollfd fds[2] = {{.fd = po[0], .events = POLLIN}, {.fd = pe[0], .events = POLLIN}};
    int open_fds = 2;
    int64_t deadline = media_now_ms() + 120000;
    while (open_fds > 0 && media_now_ms() < deadline) {
        if (poll(fds, 2, 200) < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP)))
                continue;
            char buf[4096];
            ssize_t k = read(fds[i].fd, buf, sizeof buf);
            if (k <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
                continue;
            }
            char **dst = i == 0 ? &r.out : &r.err;
            size_t *dn = i == 0 ? &no : &ne;
            *dst = realloc(*dst, *dn + (size_t)k + 1);
            memcpy(*dst + *dn, buf, (size_t)k);
            *dn += (size_t)k;
            (*dst)[*dn] = '\0';
        }
        if (sigint_after_output && !signalled && no > 0) {
            kill(pid, SIGINT);
            signalled = true;
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0)
            close(fds[i].fd);
    int st;
    if (media_now_ms() >= deadline)
        kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (!r.out)
        r.out = strdup("");
    if (!r.err)
        r.err = strdup("");
    return r;
}

#define RUN(...) run_vigil_ex(false, (const char *const[]){__VA_ARGS__, NULL})
#define RUN_INT(...) run_vigil_ex(true, (const char *const[]){__VA_ARGS__, NULL})

static void expect_status(const run_result *r, int status, const char *what)
{
    if (r->status != status)
        fail_msg("%s: expected exit %d, got %d\nstdout: %s\nstderr: %s", what, status, r->status,
                 r->out, r->err);
}

static void test_no_daemon(void **state)
{
    (void)state;
    char dir[256], ep[512];
    assert_int_equal(media_tmpdir(dir, sizeof dir), 0);
    snprintf(ep, sizeof ep, "ipc://%s/vigild.sock", dir);
    run_result r = RUN("ping", "--endpoint", ep);
    expect_status(&r, CLI_EXIT_UNREACHABLE, "ping, missing socket");
    assert_non_null(strstr(r.err, "is vigild running?"));
    assert_non_null(strstr(r.err, ep));
    run_free(&r);

    /* Nobody listens on this port: the wait runs out. */
    int port = media_free_port(SOCK_STREAM);
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    r = RUN("ask", "cam", "hello?", "--endpoint", ep, "--timeout", "0.3s");
    expect_status(&r, CLI_EXIT_UNREACHABLE, "ask, nobody listening");
    char want[600];
    snprintf(want, sizeof want, "vigil: no answer from %s within 0.3 s", ep);
    if (!strstr(r.err, want))
        fail_msg("stderr lacks \"%s\": %s", want, r.err);
    run_free(&r);

    r = RUN("stream", "add", "x");
    expect_status(&r, CLI_EXIT_USAGE, "usage error");
    assert_non_null(strstr(r.err, "vigil: stream add: missing arguments"));
    run_free(&r);
    r = RUN("watch", "--help");
    expect_status(&r, CLI_EXIT_OK, "watch --help");
    assert_non_null(strstr(r.out, "usage: vigil watch add"));
    run_free(&r);
    media_rmtree(dir);
}

/* ---- against the real daemon ------------------------------------------------------------- */

static vigild_proc *g_vd;

static int daemon_setup(void **state)
{
    (void)state;
    char e[512] = "";
    g_vd = vigild_start(NULL, e, sizeof e);
    if (!g_vd) {
        fprintf(stderr, "cannot start vigild: %s\n", e);
        return -1;
    }
    return 0;
}

static int daemon_teardown(void **state)
{
    (void)state;
    vigild_stop(g_vd);
    g_vd = NULL;
    return 0;
}

static void test_daemon_session(void **state)
{
    (void)state;
    const char *ep = vigild_endpoint(g_vd);
    run_result r = RUN("ping", "-e", ep);
    expect_status(&r, 0, "ping");
    assert_non_null(strstr(r.out, "vigild 0.1.0 answered in"));
    run_free(&r);

    r = RUN("stream", "add", "clip", vigild_clip(g_vd), "-e", ep, "--tokens-per-pair", "16",
            "--loop");
    expect_status(&r, 0, "stream add");
    assert_non_null(strstr(r.out, "stream clip added"));
    run_free(&r);
    r = RUN("stream", "add", "clip", vigild_clip(g_vd), "-e", ep);
    expect_status(&r, CLI_EXIT_DAEMON, "stream add twice");
    assert_non_null(strstr(r.err, "vigil: vigild: already_exists: "));
    run_free(&r);

    assert_true(vigild_wait_pairs(g_vd, "clip", 1, 60000));
    r = RUN("stream", "ls", "-e", ep);
    expect_status(&r, 0, "stream ls");
    assert_non_null(strstr(r.out, "clip"));
    assert_non_null(strstr(r.out, vigild_clip(g_vd)));
    run_free(&r);
    r = RUN("status", "--json", "-e", ep);
    expect_status(&r, 0, "status --json");
    cJSON *j = cJSON_Parse(r.out);
    assert_non_null(j);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "ok")));
    assert_true(cJSON_GetArraySize(cJSON_GetObjectItem(j, "streams")) == 1);
    cJSON_Delete(j);
    run_free(&r);
    r = RUN("status", "clip", "-e", ep);
    expect_status(&r, 0, "status clip");
    assert_non_null(strstr(r.out, "LATENCY"));
    run_free(&r);

    /* Tokens on stdout as they come, the timing line on stderr. */
    r = RUN("ask", "clip", "What color is the shape?", "-e", ep, "--max-tokens", "6");
    expect_status(&r, 0, "ask");
    assert_true(strlen(r.out) > 1 && r.out[strlen(r.out) - 1] == '\n');
    assert_non_null(strstr(r.err, "first token"));
    assert_non_null(strstr(r.err, "tokens/s"));
    assert_non_null(strstr(r.err, "length"));      /* 6 tokens of a random model: cut */
    char *streamed = strdup(r.out);
    run_free(&r);
    /* The same greedy question, as one JSON reply: the same text. */
    r = RUN("ask", "clip", "What color is the shape?", "-e", ep, "--max-tokens", "6", "--json");
    expect_status(&r, 0, "ask --json");
    j = cJSON_Parse(r.out);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "finish_reason")->valuestring, "length");
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"),
                                         "completion_tokens")->valueint, 6);
    (void)streamed;
    cJSON_Delete(j);
    free(streamed);
    run_free(&r);

    r = RUN("ask", "nosuch", "q", "-e", ep);
    expect_status(&r, CLI_EXIT_DAEMON, "ask unknown stream");
    assert_non_null(strstr(r.err, "vigil: vigild: not_found: "));
    run_free(&r);
    r = RUN("ask", "clip", "q", "-e", ep, "--temperature", "9");
    expect_status(&r, CLI_EXIT_DAEMON, "ask bad temperature");
    assert_non_null(strstr(r.err, "bad_request"));
    assert_non_null(strstr(r.err, "sampling.temperature"));
    run_free(&r);

    /* Ctrl-C while the answer streams: query.cancel, the daemon confirms, exit 4. */
    r = RUN_INT("ask", "clip", "Describe everything in great detail.", "-e", ep,
                "--max-tokens", "4096", "--temperature", "1", "--seed", "1");
    expect_status(&r, CLI_EXIT_INTERRUPTED, "ask interrupted");
    if (!strstr(r.err, "interrupted: the answer was cancelled"))
        fail_msg("no cancel confirmation: %s", r.err);
    run_free(&r);

    r = RUN("image", vigild_image(g_vd), "What is in this picture?", "-e", ep, "-n", "4",
            "--no-stream", "-q");
    expect_status(&r, 0, "image");
    assert_true(strlen(r.out) > 1);
    assert_int_equal(r.err[0], '\0');               /* -q: no timing line */
    run_free(&r);

    r = RUN("watch", "add", "clip", "Is there a shape?", "-e", ep, "--every", "1s", "--expect",
            "yes_no", "--name", "shape", "--max-tokens", "2");
    expect_status(&r, 0, "watch add");
    assert_string_equal(r.out, "shape\n");
    run_free(&r);
    r = RUN("events", "-e", ep, "--watch", "shape", "--kind", "watch", "--count", "1", "--json");
    expect_status(&r, 0, "events");
    j = cJSON_Parse(r.out);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "event")->valuestring, "watch.answer");
    assert_string_equal(cJSON_GetObjectItem(j, "watch")->valuestring, "shape");
    cJSON_Delete(j);
    run_free(&r);
    r = RUN("watch", "ls", "-e", ep);
    expect_status(&r, 0, "watch ls");
    assert_non_null(strstr(r.out, "shape"));
    assert_non_null(strstr(r.out, "every 1s"));
    run_free(&r);
    r = RUN("watch", "rm", "shape", "-e", ep);
    expect_status(&r, 0, "watch rm");
    run_free(&r);
    r = RUN("watch", "rm", "shape", "-e", ep);
    expect_status(&r, CLI_EXIT_DAEMON, "watch rm twice");
    assert_non_null(strstr(r.err, "not_found"));
    run_free(&r);

    r = RUN("stream", "rm", "clip", "-e", ep);
    expect_status(&r, 0, "stream rm");
    assert_non_null(strstr(r.out, "stream clip removed"));
    run_free(&r);
    r = RUN("stream", "ls", "-e", ep);
    expect_status(&r, 0, "stream ls after rm");
    assert_non_null(strstr(r.out, "no streams"));
    run_free(&r);
}

int main(void)
{
    const struct CMUnitTest unit[] = {
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_wall_times),
        cmocka_unit_test(test_key_files),
        cmocka_unit_test(test_stream_add_request),
        cmocka_unit_test(test_ask_request),
        cmocka_unit_test(test_image_request),
        cmocka_unit_test(test_watch_request),
        cmocka_unit_test(test_simple_requests),
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_environment),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_man_page),
        cmocka_unit_test(test_event_filters),
        cmocka_unit_test(test_output),
        cmocka_unit_test(test_no_daemon),
    };
    const struct CMUnitTest daemon[] = {
        cmocka_unit_test(test_daemon_session),
    };
    int failed = cmocka_run_group_tests_name("cli", unit, NULL, NULL);
    failed += cmocka_run_group_tests_name("cli_daemon", daemon, daemon_setup, daemon_teardown);
    return failed ? 1 : 0;
}
