/* cli.h — the pieces of the `vigil` command-line client (clients/vigil.c is its main).
 *
 * cli_parse turns argv (plus the VIGIL_* environment) into an invocation: which command, the
 * connection settings, and the protocol request it will send, already built as JSON. Nothing
 * is sent while parsing, so the tests check every option against the protocol's own parser.
 * cli_conn_* / cli_call talk to vigild through protocol.h's client helpers; cli_print_* turn
 * replies and events into text for people. Every function that can fail returns one of the
 * exit codes below and writes a message an operator can act on into err. */
#ifndef VIGIL_CLIENTS_CLI_H
#define VIGIL_CLIENTS_CLI_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "protocol/protocol.h"

/* Exit codes scripts can rely on (documented in `vigil --help` and vigil(1)). */
enum cli_exit {
    CLI_EXIT_OK = 0,
    CLI_EXIT_DAEMON = 1,        /* vigild answered with an error (code and message printed) */
    CLI_EXIT_USAGE = 2,         /* bad command line, unreadable file or key */
    CLI_EXIT_UNREACHABLE = 3,   /* no answer from vigild in time (not running? wrong endpoint/key?) */
    CLI_EXIT_INTERRUPTED = 4,   /* Ctrl-C, or the answer was cancelled */
    CLI_EXIT_PROTOCOL = 5,      /* vigild's reply was not what the protocol promises; out of memory */
};

#define CLI_DEFAULT_TIMEOUT_S 5.0       /* control requests, and "is vigild there?" */
#define CLI_DEFAULT_ANSWER_TIMEOUT_S 300.0 /* ask/image: longest wait for the next frame */

typedef enum cli_command {
    CLI_CMD_NONE = 0,           /* `vigil` alone, or `vigil --help` */
    CLI_CMD_VERSION,
    CLI_CMD_PING,
    CLI_CMD_STATUS,
    CLI_CMD_STREAM,             /* `vigil stream` without a verb: help only */
    CLI_CMD_STREAM_ADD,
    CLI_CMD_STREAM_RM,
    CLI_CMD_STREAM_LS,
    CLI_CMD_ASK,
    CLI_CMD_IMAGE,
    CLI_CMD_WATCH,              /* `vigil watch` without a verb: help only */
    CLI_CMD_WATCH_ADD,
    CLI_CMD_WATCH_RM,
    CLI_CMD_WATCH_LS,
    CLI_CMD_EVENTS,
    CLI_CMD_COUNT_
} cli_command;

/* Where vigild is and how to authenticate. Strings point into argv or the environment. */
typedef struct cli_conn_opts {
    const char *endpoint;          /* --endpoint, VIGIL_ENDPOINT, PROTO_DEFAULT_ENDPOINT */
    const char *events_endpoint;   /* --events-endpoint, VIGIL_EVENTS_ENDPOINT; NULL: derived */
    const char *server_key;        /* --server-key, VIGIL_SERVER_KEY: Z85 public key or a file */
    const char *client_key_file;   /* --client-key-file, VIGIL_CLIENT_KEY_FILE */
    const char *client_secret;     /* VIGIL_CLIENT_SECRET_KEY: Z85 secret key */
    double timeout_s;              /* --timeout, VIGIL_TIMEOUT; wait for each frame */
    bool timeout_given;
} cli_conn_opts;

/* events --kind bits; 0 = every kind. */
enum {
    CLI_KIND_STATE = 1u << 0,      /* topic "stream.<id>" */
    CLI_KIND_WATCH = 1u << 1,      /* topic "watch.<id>" */
    CLI_KIND_ALERT = 1u << 2,      /* topic "alert.<id>" */
    CLI_KIND_DAEMON = 1u << 3,     /* topic "daemon" */
};

typedef struct cli_invocation {
    cli_command cmd;
    bool help;                     /* --help: print cli_usage(cmd) and exit 0 */
    cli_conn_opts conn;
    bool json;                     /* machine-readable output */
    bool quiet;                    /* ask/image: no timing line */
    bool no_stream;                /* ask/image: one final answer instead of tokens */
    cJSON *request;                /* owned; the request minus "v"/"id"; NULL for local commands
                                      and events */
    /* events */
    const char *events_stream;     /* --stream: only events about this stream */
    const char *events_watch;      /* --watch: only events of this watch */
    unsigned events_kinds;         /* CLI_KIND_* bits; 0 = all */
    long events_count;             /* --count: stop after this many events; 0 = follow */
} cli_invocation;

/* Parses argv[1..argc) (argv[0] is the program). Returns CLI_EXIT_OK with *out filled (free
 * with cli_invocation_free, also on error), or CLI_EXIT_USAGE with err saying which argument
 * is wrong and what was expected. Reads the VIGIL_* environment variables and, for `image`,
 * the image file. */
int cli_parse(int argc, char **argv, cli_invocation *out, char *err, size_t errlen);
void cli_invocation_free(cli_invocation *inv);

/* Help text of a command (CLI_CMD_NONE: the overview with the exit codes). */
void cli_usage(cli_command cmd, FILE *out);
/* "stream add", "ask" ... */
const char *cli_command_name(cli_command cmd);

/* ---- value parsers (exported for the tests) --------------------------------------------- */

/* Durations: "30", "30s", "500ms", "5m", "1h30m", "2.5h", "1d". Returns 0 or -1. */
int cli_parse_duration(const char *s, double *seconds);
/* Byte sizes: "1048576", "512K", "64M", "2G", "2GiB", "1T" (binary multiples). Returns 0 or -1. */
int cli_parse_size(const char *s, uint64_t *bytes);
/* Wall-clock times: RFC 3339 ("2025-01-31T10:02:00Z"), "@1738317720" (Unix seconds), or
 * "HH:MM[:SS]" in local time: its latest occurrence not more than a minute after now.
 * Returns 0 or -1. */
int cli_parse_wall_time(const char *s, double now_epoch, double *epoch);
/* A CURVE key given as 40 Z85 characters, or as a file holding one: a bare key line, or a
 * ZeroMQ certificate line `public-key = "..."` / `secret-key = "..."` (want_secret picks
 * which). Returns 0 or CLI_EXIT_USAGE with err. */
int cli_read_key(const char *value, bool want_secret, char out[PROTO_Z85_KEY_LEN + 1],
                 char *err, size_t errlen);

/* ---- talking to vigild --------------------------------------------------------------------- */

typedef struct cli_conn cli_conn;

/* The CURVE keys opts asks for: *use false when no key is set (plain connection). With
 * CURVE both the server's public key and this client's secret key are needed. */
int cli_conn_keys(const cli_conn_opts *opts, proto_curve_keys *keys, bool *use,
                  char *err, size_t errlen);
/* Connects (does not wait for the daemon). A missing ipc:// socket file is reported at once
 * as CLI_EXIT_UNREACHABLE. interrupted (may be NULL) is polled while waiting: when it becomes
 * nonzero the wait ends with CLI_EXIT_INTERRUPTED. */
int cli_conn_open(const cli_conn_opts *opts, const volatile sig_atomic_t *interrupted,
                  cli_conn **out, char *err, size_t errlen);
void cli_conn_close(cli_conn *c);

/* Called with each intermediate frame (a "token" event) of a request. Return nonzero to stop
 * (the request is then cancelled as for Ctrl-C). */
typedef int (*cli_frame_fn)(void *user, const cJSON *frame);

/* Sends request (a copy gets "v" and a fresh "id"), waits for its final frame and returns it
 * in *final (cJSON_Delete). timeout_s bounds the wait for each frame. cancellable: on
 * interruption, send query.cancel for it and wait briefly for the daemon to confirm.
 * Returns CLI_EXIT_OK when a final frame arrived (which may still be an error reply: see
 * cli_reply_check), or CLI_EXIT_UNREACHABLE / CLI_EXIT_INTERRUPTED / CLI_EXIT_PROTOCOL. */
int cli_call(cli_conn *c, const cJSON *request, double timeout_s, bool cancellable,
             cli_frame_fn on_frame, void *user, cJSON **final, char *err, size_t errlen);
/* CLI_EXIT_OK for an ok reply; for an error reply CLI_EXIT_DAEMON (CLI_EXIT_INTERRUPTED for
 * code "cancelled") with err = "<code>: <message> (field <field>)". */
int cli_reply_check(const cJSON *final, char *err, size_t errlen);
/* The events endpoint: opts->events_endpoint, or derived from an ipc:// request endpoint
 * ending in "vigild.sock" (same directory, "events.sock"), or the default when the request
 * endpoint is the default. Returns 0, or CLI_EXIT_USAGE when it cannot be derived. */
int cli_events_endpoint(const cli_conn_opts *opts, char *buf, size_t size, char *err,
                        size_t errlen);

/* ---- output ---------------------------------------------------------------------------------- */

/* The stderr line after an answer: "queue 3 ms, first token 120 ms, 24 tokens in 1.52 s
 * (15.8 tokens/s), stop". */
void cli_print_timing(FILE *out, const cJSON *done);
/* Tables for people. */
void cli_print_status(FILE *out, const cJSON *reply);
void cli_print_streams(FILE *out, const cJSON *reply);
void cli_print_watches(FILE *out, const cJSON *reply);
/* One line for an event: "10:02:03 cam1 state running", "10:02:05 ALERT door on cam1: yes". */
void cli_print_event(FILE *out, const char *topic, const cJSON *event);
/* Whether an event passes the --stream/--watch/--kind filters of inv. */
bool cli_event_wanted(const cli_invocation *inv, const char *topic, const cJSON *event);
/* The topic prefixes to subscribe for inv (at most 4); returns how many (0 = everything). */
size_t cli_event_topics(const cli_invocation *inv, char topics[4][PROTO_NAME_MAX + 16]);

#endif
