/* proto_zmq.c — the ZeroMQ side both ends share: ROUTER framing for vigild, CURVE key helpers,
 * the endpoint locality check, and the blocking-with-timeout DEALER client and SUB subscriber
 * the CLI uses. Each client/subscriber owns its ZeroMQ context, so a library user needs no
 * global state and closing one never disturbs another. */
#include "protocol/proto_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

/* ------------------------------------------------------------------------------------------ */
/* ROUTER framing                                                                             */

static void drain_more(void *sock)
{
    int more = 1;
    size_t sz = sizeof more;
    while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz) == 0 && more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        int r = zmq_msg_recv(&m, sock, 0);
        zmq_msg_close(&m);
        if (r < 0)
            break;
    }
}

int proto_router_recv(void *router, int flags, size_t max_bytes, proto_envelope *env,
                      char **payload, size_t *len)
{
    *payload = NULL;
    *len = 0;
    memset(env, 0, sizeof *env);
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, router, flags) < 0) {
        int e = errno;
        zmq_msg_close(&m);
        errno = e;
        return e == EAGAIN ? PROTO_RECV_AGAIN : PROTO_RECV_ERROR;
    }
    size_t il = zmq_msg_size(&m);
    if (il > sizeof env->identity)
        il = sizeof env->identity;
    memcpy(env->identity, zmq_msg_data(&m), il);
    env->identity_len = il;
    bool more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    if (!more)
        return PROTO_RECV_BAD_FRAMING;

    /* The rest of a multipart message is already queued: later parts never block. */
    for (int part = 0;; part++) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, router, 0) < 0) {
            int e = errno;
            zmq_msg_close(&m);
            errno = e;
            return PROTO_RECV_ERROR;
        }
        size_t sz = zmq_msg_size(&m);
        more = zmq_msg_more(&m);
        if (part == 0 && sz == 0 && more) {
            env->delimiter = true;  /* a REQ peer */
            zmq_msg_close(&m);
            continue;
        }
        if (more) {
            zmq_msg_close(&m);
            drain_more(router);
            return PROTO_RECV_BAD_FRAMING;
        }
        if (sz > max_bytes) {
            zmq_msg_close(&m);
            return PROTO_RECV_TOO_LARGE;
        }
        char *buf = malloc(sz + 1);
        if (!buf) {
            zmq_msg_close(&m);
            errno = ENOMEM;
            return PROTO_RECV_ERROR;
        }
        memcpy(buf, zmq_msg_data(&m), sz);
        buf[sz] = '\0';
        zmq_msg_close(&m);
        *payload = buf;
        *len = sz;
        return PROTO_RECV_OK;
    }
}

int proto_router_send(void *router, const proto_envelope *env, const char *payload, size_t len,
                      int flags)
{
    flags &= ZMQ_DONTWAIT;
    if (zmq_send(router, env->identity, env->identity_len, flags | ZMQ_SNDMORE) < 0)
        return -1;
    /* ROUTER parts are queued together once the first went through. */
    if (env->delimiter && zmq_send(router, "", 0, ZMQ_SNDMORE) < 0)
        return -1;
    if (zmq_send(router, payload, len, 0) < 0)
        return -1;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* CURVE keys and endpoints                                                                   */

static const char z85_alphabet[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

bool proto_curve_key_valid(const char *key)
{
    if (!key)
        return false;
    size_t n = 0;
    for (; key[n]; n++)
        if (n >= PROTO_Z85_KEY_LEN || !strchr(z85_alphabet, key[n]))
            return false;
    return n == PROTO_Z85_KEY_LEN;
}

int proto_curve_keypair(char public_z85[PROTO_Z85_KEY_LEN + 1],
                        char secret_z85[PROTO_Z85_KEY_LEN + 1], char *err, size_t errlen)
{
    if (!zmq_has("curve")) {
        snprintf(err, errlen, "this libzmq was built without CURVE support");
        return -1;
    }
    if (zmq_curve_keypair(public_z85, secret_z85) != 0) {
        snprintf(err, errlen, "zmq_curve_keypair failed: %s", zmq_strerror(errno));
        return -1;
    }
    return 0;
}

int proto_curve_public(const char *secret_z85, char public_z85[PROTO_Z85_KEY_LEN + 1],
                       char *err, size_t errlen)
{
    if (!proto_curve_key_valid(secret_z85)) {
        snprintf(err, errlen, "the secret key is not 40 characters of Z85 text");
        return -1;
    }
    if (zmq_curve_public(public_z85, secret_z85) != 0) {
        snprintf(err, errlen, "zmq_curve_public failed: %s", zmq_strerror(errno));
        return -1;
    }
    return 0;
}

bool proto_endpoint_is_local(const char *ep)
{
    if (!ep)
        return false;
    if (strncmp(ep, "inproc://", 9) == 0)
        return ep[9] != '\0';
    if (strncmp(ep, "ipc://", 6) == 0)
        return ep[6] != '\0';
    if (strncmp(ep, "tcp://", 6) != 0)
        return false;
    const char *h = ep + 6;
    if (strchr(h, ';'))       /* "source;destination" connect syntax: judge nothing clever */
        return false;
    const char *colon = strrchr(h, ':');
    if (!colon || colon == h)
        return false;
    const char *port = colon + 1;
    if (strcmp(port, "*") != 0) {
        size_t pl = strlen(port);
        if (pl == 0 || pl > 5 || strspn(port, "0123456789") != pl || atoi(port) > 65535)
            return false;
    }
    char host[256];
    size_t hl = (size_t)(colon - h);
    if (hl >= sizeof host)
        return false;
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    if (strcmp(host, "localhost") == 0 || strcmp(host, "lo") == 0)
        return true;
    struct in_addr a4;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    struct in6_addr a6;
    if (inet_pton(AF_INET6, host, &a6) == 1) {
        if (IN6_IS_ADDR_LOOPBACK(&a6))
            return true;
        return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
    }
    return false;
}

/* ------------------------------------------------------------------------------------------ */
/* Shared socket setup                                                                        */

static int set_curve(void *sock, const proto_curve_keys *keys, char *err, size_t errlen)
{
    if (!keys)
        return 0;
    if (!proto_curve_key_valid(keys->server_public) ||
        !proto_curve_key_valid(keys->client_public) ||
        !proto_curve_key_valid(keys->client_secret)) {
        snprintf(err, errlen, "CURVE keys must each be 40 characters of Z85 text (server public "
                 "key, client public key, client secret key)");
        return -1;
    }
    if (!zmq_has("curve")) {
        snprintf(err, errlen, "this libzmq was built without CURVE support");
        return -1;
    }
    /* A Z85 key is passed as 41 bytes including its NUL; 32 would mean binary. */
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, keys->server_public, PROTO_Z85_KEY_LEN + 1) ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, keys->client_public, PROTO_Z85_KEY_LEN + 1) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, keys->client_secret, PROTO_Z85_KEY_LEN + 1)) {
        snprintf(err, errlen, "cannot set CURVE keys: %s", zmq_strerror(errno));
        return -1;
    }
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for `events` on sock until deadline (< 0: forever). 1 ready, 0 timed out, -errno. */
static int wait_socket(void *sock, short events, int64_t deadline)
{
    for (;;) {
        long timeout = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            timeout = left > 0 ? (long)left : 0;
        }
        zmq_pollitem_t it = {.socket = sock, .events = events};
        int r = zmq_poll(&it, 1, timeout);
        if (r < 0)
            return -errno;
        if (r > 0 && (it.revents & events))
            return 1;
        if (deadline >= 0 && now_ms() >= deadline)
            return 0;
    }
}

/* Receives one whole message (all parts) without waiting; the parts are returned
 * concatenated in *out only if it had exactly `parts` parts. */
typedef struct frame {
    char *data;
    size_t len;
} frame;

static int recv_parts(void *sock, frame *out, int parts, int *got)
{
    *got = 0;
    for (int i = 0;; i++) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, i == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            int e = errno;
            zmq_msg_close(&m);
            for (int k = 0; k < *got && k < parts; k++)
                free(out[k].data);
            return -e;
        }
        size_t sz = zmq_msg_size(&m);
        bool more = zmq_msg_more(&m);
        if (i < parts) {
            out[i].data = malloc(sz + 1);
            if (out[i].data) {
                memcpy(out[i].data, zmq_msg_data(&m), sz);
                out[i].data[sz] = '\0';
            }
            out[i].len = sz;
        }
        zmq_msg_close(&m);
        (*got)++;
        if (!more)
            break;
    }
    bool oom = false;
    for (int k = 0; k < *got && k < parts; k++)
        oom |= out[k].data == NULL;
    if (oom || *got != parts) {
        for (int k = 0; k < *got && k < parts; k++)
            free(out[k].data);
        return oom ? -ENOMEM : -EPROTO;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Client                                                                                     */

struct proto_client {
    void *ctx;
    bool own_ctx;
    void *sock;
    void *mon;                  /* PAIR end of the socket monitor, for timeout diagnostics */
    char endpoint[256];
    bool curve;
    bool connected;             /* a TCP/IPC connection was made at least once */
    bool handshake_ok;
    int handshake_failure;      /* last ZMQ_EVENT_HANDSHAKE_FAILED_* seen, or 0 */
    int disconnects;
};

static void drain_monitor(proto_client *c)
{
    if (!c->mon)
        return;
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, c->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        uint16_t event = 0;
        if (zmq_msg_size(&m) >= 6)
            memcpy(&event, zmq_msg_data(&m), sizeof event);
        bool more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        if (more)
            drain_more(c->mon);
        switch (event) {
        case ZMQ_EVENT_CONNECTED: c->connected = true; break;
        case ZMQ_EVENT_HANDSHAKE_SUCCEEDED: c->handshake_ok = true; c->handshake_failure = 0; break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
        case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: c->handshake_failure = event; break;
        case ZMQ_EVENT_DISCONNECTED: c->disconnects++; break;
        default: break;
        }
    }
}

static void timeout_message(proto_client *c, int timeout_ms, char *err, size_t errlen)
{
    drain_monitor(c);
    const char *hint;
    if (c->handshake_failure == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
        hint = "the server rejected this client's CURVE key (not authorized)";
    else if (c->handshake_failure)
        hint = c->curve ? "the CURVE handshake failed: check the server public key, and that "
                          "the server uses CURVE"
                        : "the security handshake failed: the server probably requires CURVE "
                          "keys";
    else if (!c->connected)
        hint = "no connection could be made: is vigild running and listening there?";
    else if (c->curve && !c->handshake_ok)
        hint = "connected, but the CURVE handshake did not complete (wrong server public key?)";
    else if (!c->handshake_ok && c->disconnects)
        hint = "connected, but the server closed the connection during the handshake";
    else
        hint = "vigild is connected but did not answer in time";
    snprintf(err, errlen, "no reply from %s within %d ms: %s", c->endpoint, timeout_ms, hint);
}

proto_client *proto_client_connect(const char *endpoint, const proto_curve_keys *keys,
                                   char *err, size_t errlen)
{
    return proto_client_connect_ctx(NULL, endpoint, keys, err, errlen);
}

proto_client *proto_client_connect_ctx(void *zmq_ctx, const char *endpoint,
                                       const proto_curve_keys *keys, char *err, size_t errlen)
{
    if (!endpoint || !*endpoint || strlen(endpoint) >= sizeof(((proto_client *)0)->endpoint)) {
        snprintf(err, errlen, "endpoint is empty or longer than 255 bytes");
        return NULL;
    }
    proto_client *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
    c->curve = keys != NULL;
    int zero = 0;
    c->own_ctx = zmq_ctx == NULL;
    c->ctx = zmq_ctx ? zmq_ctx : zmq_ctx_new();
    if (!c->ctx) {
        snprintf(err, errlen, "zmq_ctx_new failed: %s", zmq_strerror(errno));
        free(c);
        return NULL;
    }
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    if (!c->sock) {
        snprintf(err, errlen, "cannot create a DEALER socket: %s", zmq_strerror(errno));
        goto fail;
    }
    zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero);
    if (set_curve(c->sock, keys, err, errlen) < 0)
        goto fail;
    /* The monitor must be listening before connect, or the first events are lost. Its name
     * is unique within the context, which a caller may share among clients. */
    char mon_ep[64];
    snprintf(mon_ep, sizeof mon_ep, "inproc://proto-client-monitor-%p", (void *)c);
    if (zmq_socket_monitor(c->sock, mon_ep,
                           ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED |
                               ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) == 0) {
        c->mon = zmq_socket(c->ctx, ZMQ_PAIR);
        if (c->mon) {
            zmq_setsockopt(c->mon, ZMQ_LINGER, &zero, sizeof zero);
            if (zmq_connect(c->mon, mon_ep) != 0) {
                zmq_close(c->mon);
                c->mon = NULL;
            }
        }
    }
    if (zmq_connect(c->sock, endpoint) != 0) {
        int e = errno;
        snprintf(err, errlen, "cannot connect to '%s': %s%s", endpoint, zmq_strerror(e),
                 e == EINVAL || e == EPROTONOSUPPORT
                     ? " (expected tcp://HOST:PORT, ipc:///path or inproc://name)" : "");
        goto fail;
    }
    return c;
fail:
    proto_client_close(c);
    return NULL;
}

void proto_client_close(proto_client *c)
{
    if (!c)
        return;
    if (c->sock && c->mon)
        zmq_socket_monitor(c->sock, NULL, 0);
    if (c->mon)
        zmq_close(c->mon);
    if (c->sock)
        zmq_close(c->sock);
    if (c->ctx && c->own_ctx)
        zmq_ctx_term(c->ctx);
    free(c);
}

static int sock_error(proto_client *c, int e, const char *what, char *err, size_t errlen)
{
    if (e == EINTR) {
        snprintf(err, errlen, "interrupted while waiting for %s", c->endpoint);
        return -EINTR;
    }
    snprintf(err, errlen, "%s %s failed: %s", what, c->endpoint, zmq_strerror(e));
    return -EIO;
}

int proto_client_send(proto_client *c, const char *json, size_t len, int timeout_ms,
                      char *err, size_t errlen)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        int r = wait_socket(c->sock, ZMQ_POLLOUT, deadline);
        if (r < 0)
            return sock_error(c, -r, "waiting to send to", err, errlen);
        if (r == 0) {
            snprintf(err, errlen, "could not send to %s within %d ms (send queue full)",
                     c->endpoint, timeout_ms);
            return -ETIMEDOUT;
        }
        if (zmq_send(c->sock, json, len, ZMQ_DONTWAIT) >= 0)
            return 0;
        if (errno != EAGAIN)
            return sock_error(c, errno, "sending to", err, errlen);
    }
}

static int client_recv_until(proto_client *c, int64_t deadline, int timeout_ms, char **json,
                             size_t *len, char *err, size_t errlen)
{
    *json = NULL;
    *len = 0;
    for (;;) {
        int r = wait_socket(c->sock, ZMQ_POLLIN, deadline);
        if (r < 0)
            return sock_error(c, -r, "receiving from", err, errlen);
        if (r == 0) {
            timeout_message(c, timeout_ms, err, errlen);
            return -ETIMEDOUT;
        }
        frame f;
        int got;
        r = recv_parts(c->sock, &f, 1, &got);
        if (r == -EAGAIN)
            continue;
        if (r == -EPROTO) {
            snprintf(err, errlen, "%s sent a %d-part message; replies are single frames",
                     c->endpoint, got);
            return -EPROTO;
        }
        if (r < 0)
            return sock_error(c, -r, "receiving from", err, errlen);
        *json = f.data;
        *len = f.len;
        return 0;
    }
}

int proto_client_recv(proto_client *c, int timeout_ms, char **json, size_t *len, char *err,
                      size_t errlen)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    return client_recv_until(c, deadline, timeout_ms, json, len, err, errlen);
}

int proto_client_request(proto_client *c, const char *request_json, int timeout_ms,
                         proto_frame_fn on_frame, void *user, cJSON **final, char *err,
                         size_t errlen)
{
    if (final)
        *final = NULL;
    if (!request_json) {
        snprintf(err, errlen, "no request");
        return -EINVAL;
    }
    size_t rlen = strlen(request_json);
    cJSON *req = cJSON_ParseWithLength(request_json, rlen);
    const cJSON *idv = req ? cJSON_GetObjectItemCaseSensitive(req, "id") : NULL;
    if (!cJSON_IsString(idv) || !idv->valuestring[0]) {
        snprintf(err, errlen, "the request must be a JSON object with a non-empty string \"id\"");
        cJSON_Delete(req);
        return -EINVAL;
    }
    char *id = strdup(idv->valuestring);
    cJSON_Delete(req);
    if (!id) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc = proto_client_send(c, request_json, rlen, timeout_ms, err, errlen);
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    while (rc == 0) {
        char *json;
        size_t len;
        rc = client_recv_until(c, deadline, timeout_ms, &json, &len, err, errlen);
        if (rc < 0)
            break;
        cJSON *fr = cJSON_ParseWithLength(json, len);
        if (!cJSON_IsObject(fr)) {
            snprintf(err, errlen, "%s sent a frame that is not a JSON object: %.80s",
                     c->endpoint, json);
            free(json);
            cJSON_Delete(fr);
            rc = -EPROTO;
            break;
        }
        free(json);
        const cJSON *fid = cJSON_GetObjectItemCaseSensitive(fr, "id");
        bool is_final = cJSON_GetObjectItemCaseSensitive(fr, "ok") != NULL;
        bool mine = cJSON_IsString(fid) ? strcmp(fid->valuestring, id) == 0
                                        : (cJSON_IsNull(fid) && is_final);
        if (!mine) {
            cJSON_Delete(fr);  /* a late frame of an abandoned request */
            continue;
        }
        if (deadline >= 0)
            deadline = now_ms() + timeout_ms;
        if (is_final) {
            if (final)
                *final = fr;
            else
                cJSON_Delete(fr);
            break;
        }
        int stop = on_frame ? on_frame(user, fr) : 0;
        cJSON_Delete(fr);
        if (stop) {
            snprintf(err, errlen, "stopped by the caller while receiving request %s", id);
            rc = -ECANCELED;
        }
    }
    free(id);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Subscriber                                                                                 */

struct proto_subscriber {
    void *ctx;
    bool own_ctx;
    void *sock;
    char endpoint[256];
};

proto_subscriber *proto_subscriber_connect(const char *endpoint, const proto_curve_keys *keys,
                                           const char *const *topics, size_t n_topics,
                                           char *err, size_t errlen)
{
    return proto_subscriber_connect_ctx(NULL, endpoint, keys, topics, n_topics, err, errlen);
}

proto_subscriber *proto_subscriber_connect_ctx(void *zmq_ctx, const char *endpoint,
                                               const proto_curve_keys *keys,
                                               const char *const *topics, size_t n_topics,
                                               char *err, size_t errlen)
{
    if (!endpoint || !*endpoint || strlen(endpoint) >= 256) {
        snprintf(err, errlen, "endpoint is empty or longer than 255 bytes");
        return NULL;
    }
    proto_subscriber *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(s->endpoint, sizeof s->endpoint, "%s", endpoint);
    int zero = 0;
    s->own_ctx = zmq_ctx == NULL;
    s->ctx = zmq_ctx ? zmq_ctx : zmq_ctx_new();
    s->sock = s->ctx ? zmq_socket(s->ctx, ZMQ_SUB) : NULL;
    if (!s->sock) {
        snprintf(err, errlen, "cannot create a SUB socket: %s", zmq_strerror(errno));
        goto fail;
    }
    zmq_setsockopt(s->sock, ZMQ_LINGER, &zero, sizeof zero);
    if (set_curve(s->sock, keys, err, errlen) < 0)
        goto fail;
    for (size_t i = 0; i < n_topics; i++) {
        const char *t = topics[i] ? topics[i] : "";
        if (zmq_setsockopt(s->sock, ZMQ_SUBSCRIBE, t, strlen(t)) != 0) {
            snprintf(err, errlen, "cannot subscribe to '%s': %s", t, zmq_strerror(errno));
            goto fail;
        }
    }
    if (n_topics == 0 && zmq_setsockopt(s->sock, ZMQ_SUBSCRIBE, "", 0) != 0) {
        snprintf(err, errlen, "cannot subscribe: %s", zmq_strerror(errno));
        goto fail;
    }
    if (zmq_connect(s->sock, endpoint) != 0) {
        snprintf(err, errlen, "cannot connect to '%s': %s", endpoint, zmq_strerror(errno));
        goto fail;
    }
    return s;
fail:
    proto_subscriber_close(s);
    return NULL;
}

void proto_subscriber_close(proto_subscriber *s)
{
    if (!s)
        return;
    if (s->sock)
        zmq_close(s->sock);
    if (s->ctx && s->own_ctx)
        zmq_ctx_term(s->ctx);
    free(s);
}

int proto_subscriber_recv(proto_subscriber *s, int timeout_ms, char **topic, char **json,
                          cJSON **event, char *err, size_t errlen)
{
    *topic = NULL;
    *json = NULL;
    if (event)
        *event = NULL;
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        int r = wait_socket(s->sock, ZMQ_POLLIN, deadline);
        if (r < 0) {
            snprintf(err, errlen, "receiving events from %s failed: %s", s->endpoint,
                     zmq_strerror(-r));
            return r == -EINTR ? -EINTR : -EIO;
        }
        if (r == 0) {
            snprintf(err, errlen, "no event from %s within %d ms", s->endpoint, timeout_ms);
            return -ETIMEDOUT;
        }
        frame f[2];
        int got;
        r = recv_parts(s->sock, f, 2, &got);
        if (r == -EAGAIN)
            continue;
        if (r == -EPROTO) {
            snprintf(err, errlen, "dropped a %d-part event from %s; events are [topic][json]",
                     got, s->endpoint);
            return -EPROTO;
        }
        if (r < 0) {
            snprintf(err, errlen, "receiving events from %s failed: %s", s->endpoint,
                     zmq_strerror(-r));
            return -EIO;
        }
        cJSON *ev = cJSON_ParseWithLength(f[1].data, f[1].len);
        if (!cJSON_IsObject(ev)) {
            snprintf(err, errlen, "dropped an event on topic '%.64s' that is not a JSON object",
                     f[0].data);
            cJSON_Delete(ev);
            free(f[0].data);
            free(f[1].data);
            return -EPROTO;
        }
        if (event)
            *event = ev;
        else
            cJSON_Delete(ev);
        *topic = f[0].data;
        *json = f[1].data;
        return 0;
    }
}
