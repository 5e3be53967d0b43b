/* vigil.c — the `vigil` command: talk to vigild from a terminal or a script.
 *
 *   vigil stream add gate rtsp://10.0.0.5/live --fps 2 --tokens-per-pair 256
 *   vigil ask gate "Is the gate open?" --window 30s
 *   vigil watch add gate "Is a person at the gate?" --every 10s --expect yes_no
 *   vigil events --kind alert
 *
 * Parsing and request building live in cli_args.c, the conversation with the daemon in
 * cli_conn.c, output formats in cli_print.c; this file wires them to each command and owns
 * the process-wide bits (signals, stdout, exit codes). */
#include "clients/cli.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CLI_VERSION "0.1.0"

static volatile sig_atomic_t g_interrupted;

/* First Ctrl-C: stop waiting, cancel the answer, exit 4. A second one while that is under
 * way kills the process the default way, for a daemon that does not confirm. */
static void on_signal(int sig)
{
    if (g_interrupted) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    g_interrupted = 1;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    /* No SA_RESTART: a blocking poll must return so the flag is seen. */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* `vigil ask ... | head -c 20`: a closed stdout is a write error that cancels the answer,
     * not a silent death that leaves the daemon decoding for nobody. */
    signal(SIGPIPE, SIG_IGN);
}

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int fail(int rc, const char *err)
{
    fprintf(stderr, "vigil: %s\n", err);
    return rc;
}

static void print_json(const cJSON *j)
{
    char *s = cJSON_Print(j);
    if (s) {
        puts(s);
        free(s);
    }
}

/* One request, its reply checked; *reply owned by the caller on CLI_EXIT_OK. */
static int request(cli_conn *c, const cJSON *req, double timeout_s, cJSON **reply, char *err,
                   size_t errlen)
{
    int rc = cli_call(c, req, timeout_s, false, NULL, NULL, reply, err, errlen);
    if (rc == CLI_EXIT_OK && (rc = cli_reply_check(*reply, err, errlen)) != CLI_EXIT_OK) {
        cJSON_Delete(*reply);
        *reply = NULL;
    }
    return rc;
}

/* ask/image/events first check that vigild answers at all, within the short timeout, so a
 * stopped daemon is reported in seconds rather than after the long answer timeout. */
static int ping(cli_conn *c, double timeout_s, char *err, size_t errlen)
{
    cJSON *req = cJSON_CreateObject();
    if (!req || !cJSON_AddStringToObject(req, "op", "ping")) {
        cJSON_Delete(req);
        snprintf(err, errlen, "out of memory");
        return CLI_EXIT_PROTOCOL;
    }
    cJSON *reply = NULL;
    int rc = request(c, req, timeout_s, &reply, err, errlen);
    cJSON_Delete(req);
    cJSON_Delete(reply);
    return rc;
}

static const char *reply_str(const cJSON *o, const char *key, const char *dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : dflt;
}

/* ---- control commands -------------------------------------------------------------------- */

static int run_simple(const cli_invocation *inv)
{
    char err[1024] = "";
    cli_conn *c;
    int rc = cli_conn_open(&inv->conn, &g_interrupted, &c, err, sizeof err);
    if (rc)
        return fail(rc, err);
    cJSON *reply = NULL;
    double t0 = mono_ms();
    rc = request(c, inv->request, inv->conn.timeout_s, &reply, err, sizeof err);
    double rtt = mono_ms() - t0;
    cli_conn_close(c);
    if (rc)
        return fail(rc, err);
    const cJSON *req = inv->request;
    if (inv->json) {
        print_json(reply);
    } else {
        switch (inv->cmd) {
        case CLI_CMD_PING:
            printf("vigild %s answered in %.1f ms\n", reply_str(reply, "version", "?"), rtt);
            break;
        case CLI_CMD_STATUS:
            cli_print_status(stdout, reply);
            break;
        case CLI_CMD_STREAM_LS:
            cli_print_streams(stdout, reply);
            break;
        case CLI_CMD_WATCH_LS:
            cli_print_watches(stdout, reply);
            break;
        case CLI_CMD_STREAM_ADD: {
            const cJSON *s = cJSON_GetObjectItemCaseSensitive(reply, "stream");
            const char *state = reply_str(s, "state", "starting"), *detail = reply_str(s, "detail", "");
            bool explain = *detail && strcmp(state, "running") != 0;   /* e.g. why it is reconnecting */
            printf("stream %s added: %s%s%s%s\n", reply_str(req, "stream", "?"), state, explain ? " (" : "",
                   explain ? detail : "", explain ? ")" : "");
            break;
        }
        case CLI_CMD_STREAM_RM:
            printf("stream %s removed\n", reply_str(req, "stream", "?"));
            break;
        case CLI_CMD_WATCH_ADD:
            /* Only the id, so that scripts can write  w=$(vigil watch add ...). */
            printf("%s\n", reply_str(reply, "watch", reply_str(req, "name", "?")));
            break;
        case CLI_CMD_WATCH_RM:
            printf("watch %s removed\n", reply_str(req, "watch", "?"));
            break;
        default:
            break;
        }
    }
    cJSON_Delete(reply);
    if (fflush(stdout) != 0 || ferror(stdout))
        return fail(CLI_EXIT_INTERRUPTED, "cannot write the output");
    return CLI_EXIT_OK;
}

/* ---- ask / image ------------------------------------------------------------------------- */

typedef struct answer_out {
    size_t bytes;               /* answer bytes printed so far */
    bool ends_newline;
    bool write_failed;
} answer_out;

static int on_token(void *user, const cJSON *frame)
{
    answer_out *a = user;
    const char *ev = reply_str(frame, "event", "");
    const char *text = reply_str(frame, "text", NULL);
    if (strcmp(ev, "token") != 0 || !text || !*text)
        return 0;
    size_t n = strlen(text);
    if (fwrite(text, 1, n, stdout) != n || fflush(stdout) != 0) {
        a->write_failed = true;
        return 1;
    }
    a->bytes += n;
    a->ends_newline = text[n - 1] == '\n';
    return 0;
}

static int run_answer(const cli_invocation *inv)
{
    char err[1024] = "";
    cli_conn *c;
    int rc = cli_conn_open(&inv->conn, &g_interrupted, &c, err, sizeof err);
    if (rc)
        return fail(rc, err);
    if ((rc = ping(c, inv->conn.timeout_s, err, sizeof err))) {
        cli_conn_close(c);
        return fail(rc, err);
    }
    double answer_timeout = inv->conn.timeout_given ? inv->conn.timeout_s
                                                    : CLI_DEFAULT_ANSWER_TIMEOUT_S;
    answer_out a = {0};
    cJSON *final = NULL;
    rc = cli_call(c, inv->request, answer_timeout, true, on_token, &a, &final, err, sizeof err);
    cli_conn_close(c);
    if (a.bytes && !a.ends_newline && !a.write_failed)
        putchar('\n');
    if (rc) {
        if (a.write_failed)
            snprintf(err, sizeof err, "cannot write the answer (%s); it was cancelled",
                     strerror(errno ? errno : EPIPE));
        return fail(rc, err);
    }
    if ((rc = cli_reply_check(final, err, sizeof err))) {
        cJSON_Delete(final);
        return fail(rc, err);
    }
    /* Someone else's query.cancel, or the stream's removal, ends the answer early. */
    bool cancelled = strcmp(reply_str(final, "finish_reason", ""), "cancelled") == 0;
    if (inv->json) {
        print_json(final);
    } else if (a.bytes == 0) {
        /* --no-stream, or an answer whose tokens did not come one by one. */
        const char *text = reply_str(final, "text", "");
        size_t n = strlen(text);
        if (n) {
            fputs(text, stdout);
            if (text[n - 1] != '\n')
                putchar('\n');
        }
    }
    if (!inv->quiet)
        cli_print_timing(stderr, final);
    cJSON_Delete(final);
    if (fflush(stdout) != 0 || ferror(stdout))
        return fail(CLI_EXIT_INTERRUPTED, "cannot write the answer");
    if (cancelled)
        return fail(CLI_EXIT_INTERRUPTED, "the answer was cancelled (query.cancel or the stream "
                                          "was removed)");
    return CLI_EXIT_OK;
}

/* ---- events ------------------------------------------------------------------------------ */

static int run_events(const cli_invocation *inv)
{
    char err[1024] = "", endpoint[512];
    int rc = cli_events_endpoint(&inv->conn, endpoint, sizeof endpoint, err, sizeof err);
    if (rc)
        return fail(rc, err);
    /* PUB/SUB cannot tell a silent daemon from a stopped one: ask the request socket once. */
    cli_conn *c;
    if ((rc = cli_conn_open(&inv->conn, &g_interrupted, &c, err, sizeof err)))
        return fail(rc, err);
    rc = ping(c, inv->conn.timeout_s, err, sizeof err);
    cli_conn_close(c);
    if (rc)
        return fail(rc, err);

    proto_curve_keys keys;
    bool use_keys;
    if ((rc = cli_conn_keys(&inv->conn, &keys, &use_keys, err, sizeof err)))
        return fail(rc, err);
    char topics[4][PROTO_NAME_MAX + 16];
    const char *tp[4];
    size_t nt = cli_event_topics(inv, topics);
    for (size_t i = 0; i < nt; i++)
        tp[i] = topics[i];
    char e[300] = "";
    proto_subscriber *s = proto_subscriber_connect(endpoint, use_keys ? &keys : NULL, tp, nt, e,
                                                   sizeof e);
    if (!s) {
        snprintf(err, sizeof err, "cannot subscribe to %s: %s", endpoint, e);
        return fail(CLI_EXIT_USAGE, err);
    }
    if (isatty(STDERR_FILENO))
        fprintf(stderr, "vigil: following events from %s (Ctrl-C to stop)\n", endpoint);
    long seen = 0;
    rc = CLI_EXIT_OK;
    while (!g_interrupted && (inv->events_count == 0 || seen < inv->events_count)) {
        char *topic = NULL, *json = NULL;
        cJSON *ev = NULL;
        int r = proto_subscriber_recv(s, 200, &topic, &json, &ev, e, sizeof e);
        if (r == -ETIMEDOUT || r == -EINTR)
            continue;
        if (r == -EPROTO) {
            fprintf(stderr, "vigil: %s\n", e);
            continue;
        }
        if (r < 0) {
            if (!g_interrupted) {
                snprintf(err, sizeof err, "%s", e);
                rc = CLI_EXIT_UNREACHABLE;
            }
            break;
        }
        if (cli_event_wanted(inv, topic, ev)) {
            if (inv->json) {
                char *line = cJSON_PrintUnformatted(ev);
                if (line)
                    puts(line);
                free(line);
            } else {
                cli_print_event(stdout, topic, ev);
            }
            seen++;
            if (fflush(stdout) != 0) {
                snprintf(err, sizeof err, "cannot write events: %s", strerror(errno));
                rc = CLI_EXIT_INTERRUPTED;
            }
        }
        free(topic);
        free(json);
        cJSON_Delete(ev);
        if (rc)
            break;
    }
    proto_subscriber_close(s);
    /* Ctrl-C is how `vigil events` normally ends: not an error. */
    return rc ? fail(rc, err) : CLI_EXIT_OK;
}

int main(int argc, char **argv)
{
    char err[1024] = "";
    cli_invocation inv;
    int rc = cli_parse(argc, argv, &inv, err, sizeof err);
    if (rc) {
        fprintf(stderr, "vigil: %s\n", err);
        cli_invocation_free(&inv);
        return rc;
    }
    if (inv.help) {
        cli_usage(inv.cmd, stdout);
        cli_invocation_free(&inv);
        return CLI_EXIT_OK;
    }
    install_signals();
    switch (inv.cmd) {
    case CLI_CMD_VERSION:
        printf("vigil %s (protocol v%d)\n", CLI_VERSION, PROTO_VERSION);
        rc = CLI_EXIT_OK;
        break;
    case CLI_CMD_ASK:
    case CLI_CMD_IMAGE:
        rc = run_answer(&inv);
        break;
    case CLI_CMD_EVENTS:
        rc = run_events(&inv);
        break;
    default:
        rc = run_simple(&inv);
        break;
    }
    cli_invocation_free(&inv);
    return rc;
}
