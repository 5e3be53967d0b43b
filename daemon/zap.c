/* zap.c — ZeroMQ Authentication Protocol handler (RFC 27) for CURVE: a thread with a REP socket
 * on inproc://zeromq.zap.01 in the daemon's context. libzmq asks it about every CURVE handshake
 * on the ROUTER and PUB sockets; a client is accepted only if its long-term public key is one
 * of the operator's allowed keys. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "daemon/vd_internal.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"

typedef struct vd_zap {
    void *sock;
    pthread_t thread;
    uint8_t (*keys)[32];
    int n_keys;
} vd_zap;

static int recv_frame(void *s, zmq_msg_t *m) {
    zmq_msg_init(m);
    if (zmq_msg_recv(m, s, 0) < 0) {
        zmq_msg_close(m);
        return -1;
    }
    return 0;
}

static void send_str(void *s, const void *p, size_t n, bool more) {
    zmq_send(s, p, n, more ? ZMQ_SNDMORE : 0);
}

static void *zap_main(void *arg) {
    vd_zap *z = arg;
    for (;;) {
        /* version, request id, domain, address, identity, mechanism, credentials... */
        zmq_msg_t f[8];
        int n = 0;
        bool fail = false;
        for (;;) {
            if (n < 8) {
                if (recv_frame(z->sock, &f[n]) != 0) {
                    fail = true;
                    break;
                }
                n++;
            } else {
                zmq_msg_t extra;
                if (recv_frame(z->sock, &extra) != 0) {
                    fail = true;
                    break;
                }
                zmq_msg_close(&extra);
            }
            int more = 0;
            size_t sz = sizeof more;
            zmq_getsockopt(z->sock, ZMQ_RCVMORE, &more, &sz);
            if (!more) break;
        }
        if (fail) {
            for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
            if (errno == ETERM || errno == ENOTSOCK) break;
            continue;
        }
        const char *status = "400", *text = "bad ZAP request";
        char user[64] = "";
        if (n >= 6 && zmq_msg_size(&f[0]) == 3 && memcmp(zmq_msg_data(&f[0]), "1.0", 3) == 0) {
            size_t ml = zmq_msg_size(&f[5]);
            const char *mech = zmq_msg_data(&f[5]);
            if (ml == 5 && memcmp(mech, "CURVE", 5) == 0 && n >= 7 && zmq_msg_size(&f[6]) == 32) {
                const uint8_t *key = zmq_msg_data(&f[6]);
                text = "client key not allowed";
                for (int k = 0; k < z->n_keys; k++)
                    if (memcmp(z->keys[k], key, 32) == 0) {
                        status = "200";
                        text = "OK";
                        zmq_z85_encode(user, key, 32);
                        break;
                    }
                if (status[0] != '2') {
                    char z85[41];
                    zmq_z85_encode(z85, key, 32);
                    vd_log(VD_LOG_WARNING, "CURVE: refused a client with public key %s", z85);
                }
            } else {
                text = "only CURVE is accepted";
            }
        }
        if (n >= 2) {
            send_str(z->sock, "1.0", 3, true);
            zmq_send(z->sock, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
            send_str(z->sock, status, 3, true);
            send_str(z->sock, text, strlen(text), true);
            send_str(z->sock, user, strlen(user), true);
            send_str(z->sock, "", 0, false);
        }
        for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
    }
    zmq_close(z->sock);
    return NULL;
}

/* Binds the handler in ctx; must run before any CURVE socket binds. */
void *vd_zap_start(void *ctx, char *const *client_keys, int n, char *err, size_t errlen) {
    vd_zap *z = calloc(1, sizeof *z);
    if (!z) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    z->keys = calloc((size_t)(n > 0 ? n : 1), 32);
    if (!z->keys) {
        free(z);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        if (!zmq_z85_decode(z->keys[z->n_keys], client_keys[i])) {
            snprintf(err, errlen, "CURVE client key %d is not valid Z85", i);
            free(z->keys);
            free(z);
            return NULL;
        }
        z->n_keys++;
    }
    z->sock = zmq_socket(ctx, ZMQ_REP);
    int linger = 0;
    if (!z->sock || zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_bind(z->sock, ZAP_ENDPOINT) != 0) {
        snprintf(err, errlen, "cannot start the CURVE authentication handler (%s): %s", ZAP_ENDPOINT,
                 zmq_strerror(zmq_errno()));
        if (z->sock) zmq_close(z->sock);
        free(z->keys);
        free(z);
        return NULL;
    }
    int rc = pthread_create(&z->thread, NULL, zap_main, z);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the CURVE authentication thread: %s", strerror(rc));
        zmq_close(z->sock);
        free(z->keys);
        free(z);
        return NULL;
    }
    return z;
}

/* After zmq_ctx_term (or shutdown) has made the handler's socket return ETERM. */
void vd_zap_join(void *handle) {
    vd_zap *z = handle;
    if (!z) return;
    pthread_join(z->thread, NULL);
    free(z->keys);
    free(z);
}
