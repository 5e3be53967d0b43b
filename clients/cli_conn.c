/* cli_conn.c — `vigil` talking to vigild: keys, connecting, one request and its frames,
 * cancellation on Ctrl-C, and turning failures into exit codes with messages.
 *
 * Waiting is done in short slices of proto_client_recv so that Ctrl-C is seen promptly even
 * while no frame arrives (a question waits in the daemon's queue or in its prefill), and so
 * that the CLI can then send query.cancel and still collect the daemon's confirmation. */
#include "clients/cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SLICE_MS 100
#define CANCEL_WAIT_S 10.0         /* a slow daemon confirms at its next decode step */
#define CANCEL_NOTE_S 1.0

struct cli_conn {
    proto_client *client;
    const char *endpoint;
    bool curve;
    const volatile sig_atomic_t *interrupted;
    unsigned long seq;
    char hint[200];             /* why the last wait timed out, as proto_client_recv saw it */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int cli_conn_keys(const cli_conn_opts *o, proto_curve_keys *keys, bool *use, char *err,
                  size_t errlen)
{
    memset(keys, 0, sizeof *keys);
    *use = false;
    bool have_client = o->client_key_file || o->client_secret;
    if (!o->server_key && !have_client)
        return CLI_EXIT_OK;
    /* vigild admits only the client keys its configuration lists (curve.client_keys), so a
     * made-up client key could never connect: both keys are required. */
    if (!o->server_key) {
        snprintf(err, errlen, "a client key is set (--client-key-file, VIGIL_CLIENT_KEY_FILE "
                 "or VIGIL_CLIENT_SECRET_KEY) but no server key: give vigild's public key "
                 "with --server-key or VIGIL_SERVER_KEY");
        return CLI_EXIT_USAGE;
    }
    if (!have_client) {
        snprintf(err, errlen, "a server key is set but no client key: give this client's "
                 "secret key with --client-key-file or VIGIL_CLIENT_SECRET_KEY (its public key "
                 "must be in vigild's curve.client_keys)");
        return CLI_EXIT_USAGE;
    }
    char e[300];
    if (cli_read_key(o->server_key, false, keys->server_public, e, sizeof e)) {
        snprintf(err, errlen, "server key: %s", e);
        return CLI_EXIT_USAGE;
    }
    const char *src = o->client_key_file ? o->client_key_file : o->client_secret;
    if (cli_read_key(src, true, keys->client_secret, e, sizeof e) ||
        proto_curve_public(keys->client_secret, keys->client_public, e, sizeof e) < 0) {
        snprintf(err, errlen, "client key: %s", e);
        return CLI_EXIT_USAGE;
    }
    *use = true;
    return CLI_EXIT_OK;
}

int cli_conn_open(const cli_conn_opts *opts, const volatile sig_atomic_t *interrupted,
                  cli_conn **out, char *err, size_t errlen)
{
    *out = NULL;
    proto_curve_keys keys;
    bool use_keys;
    int rc = cli_conn_keys(opts, &keys, &use_keys, err, errlen);
    if (rc)
        return rc;
    /* ZeroMQ connects in the background and would only time out: a socket file that is not
     * there, or not ours to write, is worth saying at once. "@" is Linux's abstract namespace. */
    const char *ep = opts->endpoint;
    if (strncmp(ep, "ipc://", 6) == 0 && ep[6] != '@') {
        struct stat st;
        if (stat(ep + 6, &st) != 0) {
            snprintf(err, errlen, "%s: %s: is vigild running? (systemctl status vigild; or give "
                     "its endpoint with --endpoint / VIGIL_ENDPOINT)", ep, strerror(errno));
            return CLI_EXIT_UNREACHABLE;
        }
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "%s exists but is not a socket: is this vigild's endpoint?", ep);
            return CLI_EXIT_UNREACHABLE;
        }
        if (access(ep + 6, W_OK) != 0) {
            snprintf(err, errlen, "%s: %s: this user may not connect to vigild (the socket's "
                     "permissions and the daemon's UMask decide who may)", ep, strerror(errno));
            return CLI_EXIT_UNREACHABLE;
        }
    }
    cli_conn *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return CLI_EXIT_PROTOCOL;
    }
    char e[300] = "";
    c->client = proto_client_connect(ep, use_keys ? &keys : NULL, e, sizeof e);
    if (!c->client) {
        free(c);
        snprintf(err, errlen, "cannot connect to %s: %s", ep, e);
        return CLI_EXIT_USAGE;
    }
    c->endpoint = ep;
    c->curve = use_keys;
    c->interrupted = interrupted;
    *out = c;
    return CLI_EXIT_OK;
}

void cli_conn_close(cli_conn *c)
{
    if (!c)
        return;
    proto_client_close(c->client);
    free(c);
}

static bool is_interrupted(const cli_conn *c)
{
    return c->interrupted && *c->interrupted;
}

static int no_answer(const cli_conn *c, double timeout_s, bool started, char *err, size_t errlen)
{
    if (started)
        snprintf(err, errlen, "vigild (%s) stopped answering: nothing more within %g s",
                 c->endpoint, timeout_s);
    else if (c->hint[0])
        snprintf(err, errlen, "no answer from %s within %g s: %s",
                 c->endpoint, timeout_s, c->hint);
    else
        snprintf(err, errlen, "no answer from %s within %g s: is vigild running?", c->endpoint,
                 timeout_s);
    return CLI_EXIT_UNREACHABLE;
}

/* Serializes req with "v" and the given id added. NULL when out of memory. */
static char *frame_text(const cJSON *req, const char *id)
{
    cJSON *copy = cJSON_Duplicate(req, 1);
    if (!copy)
        return NULL;
    cJSON_DeleteItemFromObjectCaseSensitive(copy, "v");
    cJSON_DeleteItemFromObjectCaseSensitive(copy, "id");
    char *text = NULL;
    if (cJSON_AddNumberToObject(copy, "v", PROTO_VERSION) &&
        cJSON_AddStringToObject(copy, "id", id))
        text = cJSON_PrintUnformatted(copy);
    cJSON_Delete(copy);
    return text;
}

typedef enum { FRAME_OTHER, FRAME_INTERMEDIATE, FRAME_FINAL } frame_kind;

/* Which request a frame belongs to. A final frame with "id": null is the daemon's answer to
 * a request whose id it could not read: ours, since we wait for one request at a time. */
static frame_kind classify(const cJSON *frame, const char *id)
{
    const cJSON *fid = cJSON_GetObjectItemCaseSensitive(frame, "id");
    bool final = cJSON_GetObjectItemCaseSensitive(frame, "ok") != NULL;
    if (cJSON_IsString(fid) && strcmp(fid->valuestring, id) == 0)
        return final ? FRAME_FINAL : FRAME_INTERMEDIATE;
    if (final && cJSON_IsNull(fid))
        return FRAME_FINAL;
    return FRAME_OTHER;
}

/* Receives the next frame within the deadline. Returns 1 with *frame, 0 at the deadline,
 * -1 when interrupted (if watch_interrupt), or a CLI exit code (> 1) with err. */
static int next_frame(cli_conn *c, double deadline, bool watch_interrupt, cJSON **frame,
                      char *err, size_t errlen)
{
    *frame = NULL;
    for (;;) {
        if (watch_interrupt && is_interrupted(c))
            return -1;
        double left = deadline - now_s();
        if (left <= 0)
            return 0;
        int ms = left * 1000 < SLICE_MS ? (int)(left * 1000) + 1 : SLICE_MS;
        char *buf = NULL;
        size_t len = 0;
        char e[300] = "";
        int r = proto_client_recv(c->client, ms, &buf, &len, e, sizeof e);
        if (r == -ETIMEDOUT) {
            /* proto_client_recv's diagnosis (no connection, CURVE refused ...) follows the
             * "within N ms: " of its message; N is only this slice, so keep just the reason. */
            const char *h = strstr(e, " ms: ");
            snprintf(c->hint, sizeof c->hint, "%s", h ? h + 5 : "");
            continue;
        }
        if (r == -EAGAIN || r == -EINTR)
            continue;
        if (r < 0) {
            if (is_interrupted(c))
                continue;        /* a signal broke the poll: handled at the loop's top */
            if (r == -EPROTO) {
                snprintf(err, errlen, "vigild (%s) sent a malformed frame: %s", c->endpoint, e);
                return CLI_EXIT_PROTOCOL;
            }
            snprintf(err, errlen, "receiving from %s failed: %s", c->endpoint, e);
            return CLI_EXIT_UNREACHABLE;
        }
        cJSON *j = cJSON_ParseWithLength(buf, len);
        free(buf);
        if (!j || !cJSON_IsObject(j)) {
            cJSON_Delete(j);
            snprintf(err, errlen, "vigild (%s) sent a frame that is not a JSON object",
                     c->endpoint);
            return CLI_EXIT_PROTOCOL;
        }
        *frame = j;
        return 1;
    }
}

static int send_frame(cli_conn *c, const char *text, double timeout_s, char *err, size_t errlen)
{
    char e[300] = "";
    int r = proto_client_send(c->client, text, strlen(text), (int)(timeout_s * 1000), e,
                              sizeof e);
    if (r == 0)
        return CLI_EXIT_OK;
    if (r == -ETIMEDOUT || r == -EAGAIN)
        return no_answer(c, timeout_s, false, err, errlen);
    snprintf(err, errlen, "sending to %s failed: %s", c->endpoint, e);
    return CLI_EXIT_UNREACHABLE;
}

/* Ctrl-C during an answer: ask the daemon to stop it and wait a little for the "done" frame
 * that confirms it, so the daemon's compute goes back to the other streams at once. */
static int cancel_request(cli_conn *c, const char *id, char *err, size_t errlen)
{
    char cid[PROTO_ID_MAX + 1];
    snprintf(cid, sizeof cid, "%.100s-cancel", id);
    cJSON *req = cJSON_CreateObject();
    char *text = NULL;
    if (req && cJSON_AddStringToObject(req, "op", "query.cancel") &&
        cJSON_AddStringToObject(req, "query", id))
        text = frame_text(req, cid);
    cJSON_Delete(req);
    if (!text || send_frame(c, text, 1.0, err, errlen) != CLI_EXIT_OK) {
        free(text);
        snprintf(err, errlen, "interrupted; could not send query.cancel to %s", c->endpoint);
        return CLI_EXIT_INTERRUPTED;
    }
    free(text);
    double start = now_s(), deadline = start + CANCEL_WAIT_S;
    bool confirmed = false, noted = false;
    for (;;) {
        cJSON *f;
        char e[300];
        double until = noted ? deadline : start + CANCEL_NOTE_S;
        int r = next_frame(c, until, false, &f, e, sizeof e);
        if (r == 0 && !noted) {
            fprintf(stderr, "vigil: waiting for vigild to confirm the cancel (Ctrl-C again to "
                            "quit at once)\n");
            noted = true;
            continue;
        }
        if (r != 1)
            break;
        bool done = classify(f, id) == FRAME_FINAL;
        cJSON_Delete(f);
        if (done) {
            confirmed = true;
            break;
        }
    }
    snprintf(err, errlen, confirmed ? "interrupted: the answer was cancelled"
                                    : "interrupted: query.cancel sent; vigild did not confirm "
                                      "within %g s", CANCEL_WAIT_S);
    return CLI_EXIT_INTERRUPTED;
}

int cli_call(cli_conn *c, const cJSON *request, double timeout_s, bool cancellable,
             cli_frame_fn on_frame, void *user, cJSON **final, char *err, size_t errlen)
{
    *final = NULL;
    char id[PROTO_ID_MAX + 1];
    snprintf(id, sizeof id, "vigil-%ld-%lu", (long)getpid(), ++c->seq);
    char *text = frame_text(request, id);
    if (!text) {
        snprintf(err, errlen, "out of memory");
        return CLI_EXIT_PROTOCOL;
    }
    int rc = send_frame(c, text, timeout_s, err, errlen);
    free(text);
    if (rc)
        return rc;
    bool started = false;
    for (;;) {
        cJSON *f;
        int r = next_frame(c, now_s() + timeout_s, true, &f, err, errlen);
        if (r == 0)
            return no_answer(c, timeout_s, started, err, errlen);
        if (r == -1) {
            if (cancellable)
                return cancel_request(c, id, err, errlen);
            snprintf(err, errlen, "interrupted");
            return CLI_EXIT_INTERRUPTED;
        }
        if (r > 1)
            return r;
        switch (classify(f, id)) {
        case FRAME_FINAL:
            *final = f;
            return CLI_EXIT_OK;
        case FRAME_INTERMEDIATE:
            started = true;
            if (on_frame && on_frame(user, f)) {
                cJSON_Delete(f);
                if (cancellable)
                    return cancel_request(c, id, err, errlen);
                snprintf(err, errlen, "stopped");
                return CLI_EXIT_INTERRUPTED;
            }
            break;
        case FRAME_OTHER:
            break;               /* a late frame of an earlier, abandoned request */
        }
        cJSON_Delete(f);
    }
}

int cli_reply_check(const cJSON *final, char *err, size_t errlen)
{
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(final, "ok");
    if (cJSON_IsTrue(ok))
        return CLI_EXIT_OK;
    if (!cJSON_IsFalse(ok)) {
        snprintf(err, errlen, "vigild's reply has no boolean \"ok\"");
        return CLI_EXIT_PROTOCOL;
    }
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(final, "error");
    const cJSON *src = cJSON_IsObject(e) ? e : final;
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(src, "code");
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(src, "message");
    const char *cs = cJSON_IsString(code) ? code->valuestring : "unknown";
    snprintf(err, errlen, "vigild: %s: %s", cs,
             cJSON_IsString(msg) ? msg->valuestring : "(no message)");
    return strcmp(cs, "cancelled") == 0 ? CLI_EXIT_INTERRUPTED : CLI_EXIT_DAEMON;
}

int cli_events_endpoint(const cli_conn_opts *o, char *buf, size_t size, char *err,
                        size_t errlen)
{
    const char *sock = "vigild.sock";
    size_t el = strlen(o->endpoint), sl = strlen(sock);
    if (o->events_endpoint) {
        snprintf(buf, size, "%s", o->events_endpoint);
    } else if (strcmp(o->endpoint, PROTO_DEFAULT_ENDPOINT) == 0) {
        snprintf(buf, size, "%s", PROTO_DEFAULT_EVENTS_ENDPOINT);
    } else if (strncmp(o->endpoint, "ipc://", 6) == 0 && el > sl &&
               strcmp(o->endpoint + el - sl, sock) == 0) {
        /* vigild's configuration puts both sockets in one directory by default. */
        snprintf(buf, size, "%.*sevents.sock", (int)(el - sl), o->endpoint);
    } else {
        snprintf(err, errlen, "cannot tell the events endpoint from %s: give --events-endpoint "
                 "or VIGIL_EVENTS_ENDPOINT (vigild's \"events_endpoint\" setting)", o->endpoint);
        return CLI_EXIT_USAGE;
    }
    return CLI_EXIT_OK;
}
