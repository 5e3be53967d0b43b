/* cli_args.c — `vigil` command line: options, values and the request each command sends.
 *
 * Options are GNU style (--name VALUE or --name=VALUE, anywhere after the command words, "--"
 * ends them). Every option name has one arity for all commands, so argv is split into options
 * and positional words in one pass; the words then pick the command, and each command lists
 * the options it accepts. Values are checked for syntax only: ranges are the daemon's to
 * enforce (its limits are configurable), and it names the field when one is off. */
#include "clients/cli.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ------------------------------------------------------------------------------------------ */
/* Commands                                                                                   */

static const char *const cmd_names[CLI_CMD_COUNT_] = {
    [CLI_CMD_NONE] = "",
    [CLI_CMD_VERSION] = "version",
    [CLI_CMD_PING] = "ping",
    [CLI_CMD_STATUS] = "status",
    [CLI_CMD_STREAM] = "stream",
    [CLI_CMD_STREAM_ADD] = "stream add",
    [CLI_CMD_STREAM_RM] = "stream rm",
    [CLI_CMD_STREAM_LS] = "stream ls",
    [CLI_CMD_ASK] = "ask",
    [CLI_CMD_IMAGE] = "image",
    [CLI_CMD_WATCH] = "watch",
    [CLI_CMD_WATCH_ADD] = "watch add",
    [CLI_CMD_WATCH_RM] = "watch rm",
    [CLI_CMD_WATCH_LS] = "watch ls",
    [CLI_CMD_EVENTS] = "events",
};

const char *cli_command_name(cli_command cmd)
{
    return cmd >= 0 && cmd < CLI_CMD_COUNT_ ? cmd_names[cmd] : "";
}

/* ------------------------------------------------------------------------------------------ */
/* Options                                                                                    */

typedef enum opt_id {
    O_HELP, O_VERSION, O_ENDPOINT, O_EVENTS_ENDPOINT, O_SERVER_KEY, O_CLIENT_KEY_FILE, O_TIMEOUT, O_JSON,
    O_QUIET,
    /* stream add */
    O_FPS, O_TOKENS_PER_PAIR, O_MAX_TOKENS_PER_PAIR, O_CACHE_TOKENS, O_CACHE_BYTES,
    O_SYSTEM_PROMPT, O_LOOP, O_REALTIME, O_START, O_RTSP_TRANSPORT, O_DECODER_THREADS,
    O_IO_TIMEOUT,
    /* ask / image / watch add */
    O_WINDOW, O_FROM, O_TO, O_FROM_MEDIA, O_TO_MEDIA, O_MAX_TOKENS, O_NO_STREAM,
    O_TEMPERATURE, O_TOP_K, O_TOP_P, O_MIN_P, O_REPETITION_PENALTY, O_PRESENCE_PENALTY, O_SEED,
    O_STOP,
    /* watch add */
    O_EVERY, O_ON_PAIR, O_NAME, O_EXPECT, O_ALERT_ON, O_ALERT_REPEAT, O_COOLDOWN,
    /* watch ls, status, events */
    O_STREAM, O_WATCH, O_KIND, O_COUNT,
    O_COUNT_
} opt_id;

#define C(x) (1u << (x))
#define ALL_CMDS 0xFFFFFFFFu
#define SAMPLING_CMDS (C(CLI_CMD_ASK) | C(CLI_CMD_IMAGE) | C(CLI_CMD_WATCH_ADD))
#define ANSWER_CMDS (C(CLI_CMD_ASK) | C(CLI_CMD_IMAGE))

typedef struct opt_spec {
    const char *name;
    char short_name;
    bool arg;
    unsigned cmds;              /* C(cmd) bits of the commands that accept it */
} opt_spec;

static const opt_spec opts[O_COUNT_] = {
    [O_HELP] = {"help", 'h', false, ALL_CMDS},
    [O_VERSION] = {"version", 'V', false, ALL_CMDS},
    [O_ENDPOINT] = {"endpoint", 'e', true, ALL_CMDS},
    [O_EVENTS_ENDPOINT] = {"events-endpoint", 0, true, ALL_CMDS},
    [O_SERVER_KEY] = {"server-key", 0, true, ALL_CMDS},
    [O_CLIENT_KEY_FILE] = {"client-key-file", 0, true, ALL_CMDS},
    [O_TIMEOUT] = {"timeout", 0, true, ALL_CMDS},
    [O_JSON] = {"json", 0, false, ALL_CMDS},
    [O_QUIET] = {"quiet", 'q', false, ANSWER_CMDS},
    [O_FPS] = {"fps", 0, true, C(CLI_CMD_STREAM_ADD)},
    [O_TOKENS_PER_PAIR] = {"tokens-per-pair", 0, true, C(CLI_CMD_STREAM_ADD)},
    [O_MAX_TOKENS_PER_PAIR] = {"max-tokens-per-pair", 0, true, C(CLI_CMD_STREAM_ADD)},
    [O_CACHE_TOKENS] = {"cache-tokens", 0, true, C(CLI_CMD_STREAM_ADD)},
    [O_CACHE_BYTES] = {"cache-bytes", 0, true, C(CLI_CMD_STREAM_ADD)},
    [O_SYSTEM_PROMPT] = {"system-prompt", 0, true, C(CLI_CMD_STREAM_ADD)},
    [O_LOOP] = {"loop", 0, false, C(CLI_CMD_STREAM_ADD)},
    [O_REALTIME] = {"realtime", 0, false, C(CLI_CMD_STREAM_ADD)},
    [O_START] = {"start", 0, true, C(CLI_CMD_STREAM_ADD)},
    [O_RTSP_TRANSPORT] = {"rtsp-transport", 0, true, C(CLI_CMD_STREAM_ADD)},
    [O_DECODER_THREADS] = {"decoder-threads", 0, true, C(CLI_CMD_STREAM_ADD)},
    [O_IO_TIMEOUT] = {"io-timeout", 0, true, C(CLI_CMD_STREAM_ADD)},
    [O_WINDOW] = {"window", 'w', true, C(CLI_CMD_ASK) | C(CLI_CMD_WATCH_ADD)},
    [O_FROM] = {"from", 0, true, C(CLI_CMD_ASK)},
    [O_TO] = {"to", 0, true, C(CLI_CMD_ASK)},
    [O_FROM_MEDIA] = {"from-media", 0, true, C(CLI_CMD_ASK)},
    [O_TO_MEDIA] = {"to-media", 0, true, C(CLI_CMD_ASK)},
    [O_MAX_TOKENS] = {"max-tokens", 'n', true, SAMPLING_CMDS},
    [O_NO_STREAM] = {"no-stream", 0, false, ANSWER_CMDS},
    [O_TEMPERATURE] = {"temperature", 't', true, SAMPLING_CMDS},
    [O_TOP_K] = {"top-k", 0, true, SAMPLING_CMDS},
    [O_TOP_P] = {"top-p", 0, true, SAMPLING_CMDS},
    [O_MIN_P] = {"min-p", 0, true, SAMPLING_CMDS},
    [O_REPETITION_PENALTY] = {"repetition-penalty", 0, true, SAMPLING_CMDS},
    [O_PRESENCE_PENALTY] = {"presence-penalty", 0, true, SAMPLING_CMDS},
    [O_SEED] = {"seed", 0, true, SAMPLING_CMDS},
    [O_STOP] = {"stop", 0, true, SAMPLING_CMDS},
    [O_EVERY] = {"every", 0, true, C(CLI_CMD_WATCH_ADD)},
    [O_ON_PAIR] = {"on-pair", 0, false, C(CLI_CMD_WATCH_ADD)},
    [O_NAME] = {"name", 0, true, C(CLI_CMD_WATCH_ADD)},
    [O_EXPECT] = {"expect", 0, true, C(CLI_CMD_WATCH_ADD)},
    [O_ALERT_ON] = {"alert-on", 0, true, C(CLI_CMD_WATCH_ADD)},
    [O_ALERT_REPEAT] = {"alert-repeat", 0, false, C(CLI_CMD_WATCH_ADD)},
    [O_COOLDOWN] = {"cooldown", 0, true, C(CLI_CMD_WATCH_ADD)},
    [O_STREAM] = {"stream", 's', true, C(CLI_CMD_WATCH_LS) | C(CLI_CMD_STATUS) | C(CLI_CMD_EVENTS)},
    [O_WATCH] = {"watch", 0, true, C(CLI_CMD_EVENTS)},
    [O_KIND] = {"kind", 'k', true, C(CLI_CMD_EVENTS)},
    [O_COUNT] = {"count", 'c', true, C(CLI_CMD_EVENTS)},
};

/* ------------------------------------------------------------------------------------------ */
/* Help                                                                                       */

static const char usage_conn[] =
    "Connection (every command; also from the environment):\n"
    "  -e, --endpoint E        vigild's request socket (VIGIL_ENDPOINT; default\n"
    "                          " PROTO_DEFAULT_ENDPOINT ")\n"
    "      --events-endpoint E its event socket (VIGIL_EVENTS_ENDPOINT; default: events.sock\n"
    "                          beside an ipc:// vigild.sock endpoint)\n"
    "      --server-key K      vigild's CURVE public key, Z85 or a key file (VIGIL_SERVER_KEY)\n"
    "      --client-key-file F this client's CURVE secret key file (VIGIL_CLIENT_KEY_FILE;\n"
    "                          VIGIL_CLIENT_SECRET_KEY gives the Z85 key itself); its public key\n"
    "                          must be in vigild's curve.client_keys\n"
    "      --timeout D         wait at most D for each reply (VIGIL_TIMEOUT; default 5s;\n"
    "                          ask/image: 5s to reach vigild, then 300s for each part of the\n"
    "                          answer)\n"
    "      --json              print the daemon's reply as JSON, for scripts\n"
    "  -h, --help              this help;  -V, --version  this program's version\n";

static const char usage_exit[] =
    "Exit status:\n"
    "  0  success\n"
    "  1  vigild answered with an error (its code and message are printed)\n"
    "  2  usage error: bad command line, unreadable file or key\n"
    "  3  vigild not reachable: no answer in time (not running? wrong endpoint or key?)\n"
    "  4  interrupted (Ctrl-C) or the answer was cancelled\n"
    "  5  vigild's reply did not follow the protocol, or out of memory\n";

static const char usage_sampling[] =
    "Answer options:\n"
    "  -n, --max-tokens N      longest answer in tokens (daemon default 512)\n"
    "  -t, --temperature T     0 = greedy (default); with --top-k, --top-p, --min-p,\n"
    "                          --repetition-penalty, --presence-penalty, --seed N\n"
    "      --stop S            end the answer at S (repeatable)\n";

void cli_usage(cli_command cmd, FILE *out)
{
    switch (cmd) {
    case CLI_CMD_NONE:
    case CLI_CMD_VERSION:
        fprintf(out,
                "usage: vigil [options] COMMAND [ARGS]\n"
                "Ask vigild (the vigil daemon) questions about the video streams it watches.\n\n"
                "Commands:\n"
                "  stream add ID URL       watch a camera, file or device (vigil stream --help)\n"
                "  stream rm ID            stop watching it\n"
                "  stream ls               the streams and their state\n"
                "  ask STREAM QUESTION     ask about what a stream has shown\n"
                "  image FILE QUESTION     ask about one image file\n"
                "  watch add STREAM PROMPT ask again and again; answers and alerts are events\n"
                "  watch rm ID, watch ls   remove / list standing watches\n"
                "  events                  follow the daemon's events until Ctrl-C\n"
                "  status [STREAM]         frame rates, drops, cache fill, latencies\n"
                "  ping                    is vigild there?\n"
                "  version                 this program's version\n\n"
                "`vigil COMMAND --help` describes each command.\n\n%s\n%s",
                usage_conn, usage_exit);
        return;
    case CLI_CMD_PING:
        fprintf(out, "usage: vigil ping [options]\n"
                     "Checks that vigild answers and prints the round trip time.\n\n%s\n%s",
                usage_conn, usage_exit);
        return;
    case CLI_CMD_STATUS:
        fprintf(out,
                "usage: vigil status [STREAM] [options]\n"
                "The daemon and its streams: state, frames in, frame pairs encoded, drops, cache\n"
                "fill, visual tokens per pair, query latency percentiles. --json for scripts.\n\n"
                "  -s, --stream ID         only this stream (same as the STREAM argument)\n\n%s\n%s",
                usage_conn, usage_exit);
        return;
    case CLI_CMD_STREAM:
    case CLI_CMD_STREAM_ADD:
    case CLI_CMD_STREAM_RM:
    case CLI_CMD_STREAM_LS:
        fprintf(out,
                "usage: vigil stream add ID URL [options]\n"
                "       vigil stream rm ID\n"
                "       vigil stream ls [--json]\n"
                "ID: 1-64 characters of A-Z a-z 0-9 _ . -. URL: rtsp://, http(s)://, udp://, srt://\n"
                "..., a V4L2 device (/dev/video0) or a file path, as the daemon's allowed protocols\n"
                "permit.\n\n"
                "stream add options:\n"
                "      --fps F             frames sampled per second (daemon default 2)\n"
                "      --tokens-per-pair N visual tokens per frame pair: N, or a range MIN-MAX;\n"
                "                          sets the frame size (N x 1024 pixels per frame)\n"
                "      --max-tokens-per-pair N  only the upper bound\n"
                "      --cache-tokens N    context cap in tokens; the oldest pairs are evicted\n"
                "      --cache-bytes SIZE  the same as a KV cache size: 512M, 2G ...\n"
                "      --system-prompt S   system prompt for every question on this stream\n"
                "      --loop              restart a file at its end\n"
                "      --realtime          play a file at its native rate (default: as fast as\n"
                "                          the model encodes)\n"
                "      --start D           start this far into a file (90s, 1m30s)\n"
                "      --rtsp-transport tcp|udp\n"
                "      --decoder-threads N FFmpeg decoder threads (0 = automatic)\n"
                "      --io-timeout D      network read timeout (default 10s)\n\n%s\n%s",
                usage_conn, usage_exit);
        return;
    case CLI_CMD_ASK:
        fprintf(out,
                "usage: vigil ask STREAM QUESTION [options]\n"
                "Answers from what the stream has shown so far (its cached frame pairs), printing\n"
                "the answer as it is generated; then a timing line on stderr (queue wait, time to\n"
                "first token, tokens/s). Ctrl-C cancels the answer (exit status 4).\n\n"
                "Window (default: everything in the stream's context):\n"
                "  -w, --window D          the last D of video: 30s, 5m\n"
                "      --from T --to T     wall-clock times: 10:02, 10:02:30 (local, today),\n"
                "                          2025-01-31T10:02:00Z, @1738317720 (either may be left\n"
                "                          out for an open end)\n"
                "      --from-media D --to-media D  times since the stream began: 90s, 1m30s\n\n"
                "%s"
                "      --no-stream         print the answer once it is complete\n"
                "  -q, --quiet             no timing line\n"
                "      --json              print the final reply (text, finish_reason, usage,\n"
                "                          timing) as JSON\n\n%s\n%s",
                usage_sampling, usage_conn, usage_exit);
        return;
    case CLI_CMD_IMAGE:
        fprintf(out,
                "usage: vigil image FILE QUESTION [options]\n"
                "Asks about one image (JPEG, PNG, ... anything FFmpeg decodes). The file is read\n"
                "here and sent to vigild, so the daemon needs no access to it.\n\n"
                "%s"
                "      --no-stream         print the answer once it is complete\n"
                "  -q, --quiet             no timing line\n"
                "      --json              print the final reply as JSON\n\n%s\n%s",
                usage_sampling, usage_conn, usage_exit);
        return;
    case CLI_CMD_WATCH:
    case CLI_CMD_WATCH_ADD:
    case CLI_CMD_WATCH_RM:
    case CLI_CMD_WATCH_LS:
        fprintf(out,
                "usage: vigil watch add STREAM PROMPT (--every D | --on-pair) [options]\n"
                "       vigil watch rm ID\n"
                "       vigil watch ls [--stream ID] [--json]\n"
                "A watch asks PROMPT about STREAM repeatedly and publishes each answer as an\n"
                "event (vigil events); with --expect, answers are matched to values and some\n"
                "values raise alerts. `watch add` prints the watch's ID.\n\n"
                "watch add options:\n"
                "      --every D           ask every D of wall time (10s, 1m)\n"
                "      --on-pair           ask after every new frame pair\n"
                "      --name ID           the watch's ID (default: the daemon picks one)\n"
                "      --expect yes_no     the answer is yes or no; \"yes\" alerts\n"
                "      --expect enum:A,B,C the answer is one of these values\n"
                "      --alert-on A,B      values that raise an alert (enum: required for alerts)\n"
                "      --alert-repeat      alert on every alerting answer, not only on a change\n"
                "      --cooldown D        at least D between two alerts\n"
                "  -w, --window D          look at the last D of video only\n"
                "%s\n%s\n%s",
                usage_sampling, usage_conn, usage_exit);
        return;
    case CLI_CMD_EVENTS:
        fprintf(out,
                "usage: vigil events [options]\n"
                "Prints vigild's events as they happen (stream state changes, watch answers,\n"
                "alerts), one line each (--json: one JSON object per line), until Ctrl-C (exit\n"
                "status 0).\n\n"
                "  -s, --stream ID         only events about this stream\n"
                "      --watch ID          only answers and alerts of this watch\n"
                "  -k, --kind K[,K]        state, watch, alert, daemon (default: all)\n"
                "  -c, --count N           exit after N events\n\n%s\n%s",
                usage_conn, usage_exit);
        return;
    case CLI_CMD_COUNT_:
        break;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Value parsers                                                                              */

int cli_parse_duration(const char *s, double *seconds)
{
    if (!s || !*s)
        return -1;
    double total = 0;
    const char *p = s;
    bool any = false;
    while (*p) {
        if (!isdigit((unsigned char)*p) && *p != '.')
            return -1;
        char *end;
        errno = 0;
        double v = strtod(p, &end);
        if (end == p || errno || !isfinite(v) || v < 0)
            return -1;
        p = end;
        double unit;
        if (strncmp(p, "ms", 2) == 0) {
            unit = 1e-3;
            p += 2;
        } else if (*p == 's') {
            unit = 1;
            p++;
        } else if (*p == 'm') {
            unit = 60;
            p++;
        } else if (*p == 'h') {
            unit = 3600;
            p++;
        } else if (*p == 'd') {
            unit = 86400;
            p++;
        } else if (*p == '\0' && !any) {
            unit = 1;             /* a bare number is seconds, but "1m30" is ambiguous */
        } else {
            return -1;
        }
        total += v * unit;
        any = true;
    }
    if (!isfinite(total))
        return -1;
    *seconds = total;
    return 0;
}

int cli_parse_size(const char *s, uint64_t *bytes)
{
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || !isfinite(v) || v < 0)
        return -1;
    double mult = 1;
    switch (toupper((unsigned char)*end)) {
    case '\0': break;
    case 'K': mult = 1024.0; end++; break;
    case 'M': mult = 1024.0 * 1024; end++; break;
    case 'G': mult = 1024.0 * 1024 * 1024; end++; break;
    case 'T': mult = 1024.0 * 1024 * 1024 * 1024; end++; break;
    case 'B': break;
    default: return -1;
    }
    /* "2G", "2GB", "2GiB" all mean 2 * 2^30: a KV cache is sized in binary units. */
    if (strcmp(end, "iB") == 0 || strcmp(end, "ib") == 0 || strcmp(end, "B") == 0 ||
        strcmp(end, "b") == 0)
        end += strlen(end);
    if (*end)
        return -1;
    double b = v * mult;
    if (b >= 18446744073709551616.0 || b != floor(b))
        return -1;
    *bytes = (uint64_t)b;
    return 0;
}

/* "H:MM", "HH:MM" or "HH:MM:SS": strict digits, so "10:2" is not quietly 10:02. */
static int parse_clock(const char *s, int *h, int *m, int *sec)
{
    int v[3] = {0, 0, 0}, n = 0;
    const char *p = s;
    for (; n < 3; n++) {
        int digits = 0, x = 0;
        while (isdigit((unsigned char)*p) && digits < 3) {
            x = x * 10 + (*p++ - '0');
            digits++;
        }
        if (digits == 0 || digits > 2 || (n > 0 && digits != 2))
            return -1;
        v[n] = x;
        if (*p != ':')
            break;
        p++;
    }
    if (*p || n < 1 || n > 2 || v[0] > 23 || v[1] > 59 || v[2] > 60)
        return -1;
    *h = v[0];
    *m = v[1];
    *sec = v[2];
    return 0;
}

int cli_parse_wall_time(const char *s, double now_epoch, double *epoch)
{
    if (!s || !*s)
        return -1;
    if (s[0] == '@') {
        char *end;
        errno = 0;
        double v = strtod(s + 1, &end);
        if (end == s + 1 || *end || errno || !isfinite(v) || v < 0)
            return -1;
        *epoch = v;
        return 0;
    }
    int h, m, sec;
    if (parse_clock(s, &h, &m, &sec) == 0) {
        time_t now = (time_t)now_epoch;
        struct tm tm;
        if (!localtime_r(&now, &tm))
            return -1;
        /* Asked at 00:05 about "23:50", the user means yesterday's: take the latest
         * occurrence that is not in the future (a minute of slack for clock skew). */
        for (int back = 0; back < 2; back++) {
            struct tm t = tm;
            t.tm_mday -= back;
            t.tm_hour = h;
            t.tm_min = m;
            t.tm_sec = sec;
            t.tm_isdst = -1;
            time_t v = mktime(&t);
            if (v == (time_t)-1)
                return -1;
            if ((double)v <= now_epoch + 60 || back == 1) {
                *epoch = (double)v;
                return 0;
            }
        }
        return -1;
    }
    return proto_parse_rfc3339(s, epoch);
}

static bool key_chars_ok(const char *k, size_t n)
{
    char buf[PROTO_Z85_KEY_LEN + 1];
    if (n != PROTO_Z85_KEY_LEN)
        return false;
    memcpy(buf, k, n);
    buf[n] = '\0';
    return proto_curve_key_valid(buf);
}

int cli_read_key(const char *value, bool want_secret, char out[PROTO_Z85_KEY_LEN + 1],
                 char *err, size_t errlen)
{
    const char *what = want_secret ? "secret" : "public";
    if (!value || !*value) {
        snprintf(err, errlen, "empty CURVE %s key", what);
        return CLI_EXIT_USAGE;
    }
    if (key_chars_ok(value, strlen(value))) {
        memcpy(out, value, PROTO_Z85_KEY_LEN + 1);
        return CLI_EXIT_OK;
    }
    FILE *f = fopen(value, "r");
    if (!f) {
        snprintf(err, errlen, "'%s' is neither a CURVE %s key (40 Z85 characters) nor a "
                 "readable key file: %s", value, what, strerror(errno));
        return CLI_EXIT_USAGE;
    }
    /* A bare key line, or a ZeroMQ certificate (zcert) with  public-key = "..." lines. */
    const char *field = want_secret ? "secret-key" : "public-key";
    char line[512];
    bool found = false;
    int bare = 0;
    char bare_key[PROTO_Z85_KEY_LEN + 1] = "";
    while (!found && fgets(line, sizeof line, f)) {
        char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        size_t n = strlen(p);
        while (n && isspace((unsigned char)p[n - 1]))
            p[--n] = '\0';
        if (!*p || *p == '#')
            continue;
        if (strncmp(p, field, strlen(field)) == 0) {
            char *q = strchr(p, '"');
            char *e = q ? strchr(q + 1, '"') : NULL;
            if (q && e && key_chars_ok(q + 1, (size_t)(e - q - 1))) {
                memcpy(out, q + 1, PROTO_Z85_KEY_LEN);
                out[PROTO_Z85_KEY_LEN] = '\0';
                found = true;
            }
        } else if (key_chars_ok(p, n)) {
            if (bare++ == 0)
                memcpy(bare_key, p, PROTO_Z85_KEY_LEN + 1);
        }
    }
    fclose(f);
    if (found)
        return CLI_EXIT_OK;
    if (bare == 1) {
        memcpy(out, bare_key, PROTO_Z85_KEY_LEN + 1);
        return CLI_EXIT_OK;
    }
    snprintf(err, errlen, "key file '%s' has no CURVE %s key: expected a line with 40 Z85 "
             "characters or a ZeroMQ certificate line %s = \"...\"", value, what, field);
    return CLI_EXIT_USAGE;
}

/* ------------------------------------------------------------------------------------------ */
/* Parsing                                                                                    */

typedef struct pstate {
    cli_invocation *inv;
    const char *given[O_COUNT_];    /* last value (or "" for flags) of each option given */
    const char **stops;             /* every --stop, in order */
    size_t n_stops;
    char *err;
    size_t errlen;
} pstate;

static int usage_err(pstate *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage_err(pstate *ps, const char *fmt, ...)
{
    const char *cmd = cli_command_name(ps->inv->cmd);
    int n = snprintf(ps->err, ps->errlen, "%s%s", cmd, *cmd ? ": " : "");
    if (n < 0 || (size_t)n >= ps->errlen)
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->err + n, ps->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return CLI_EXIT_USAGE;
}

static int find_long(const char *name, size_t n)
{
    for (int i = 0; i < O_COUNT_; i++)
        if (strlen(opts[i].name) == n && strncmp(opts[i].name, name, n) == 0)
            return i;
    return -1;
}

static int find_short(char c)
{
    for (int i = 0; i < O_COUNT_; i++)
        if (opts[i].short_name == c)
            return i;
    return -1;
}

static int bad_value(pstate *ps, opt_id id, const char *what)
{
    return usage_err(ps, "--%s expects %s, got \"%s\"", opts[id].name, what, ps->given[id]);
}

static int get_double(pstate *ps, opt_id id, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(ps->given[id], &end);
    if (end == ps->given[id] || *end || errno || !isfinite(v))
        return bad_value(ps, id, "a number");
    *out = v;
    return 0;
}

static int get_int(pstate *ps, opt_id id, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(ps->given[id], &end, 10);
    if (end == ps->given[id] || *end || errno || v < lo || v > hi) {
        char what[96];
        snprintf(what, sizeof what, "an integer in [%lld, %lld]", lo, hi);
        return bad_value(ps, id, what);
    }
    *out = v;
    return 0;
}

static int get_duration(pstate *ps, opt_id id, bool positive, double *out)
{
    if (cli_parse_duration(ps->given[id], out) < 0 || (positive && !(*out > 0)))
        return bad_value(ps, id, positive ? "a duration above zero such as 30s, 5m or 1h30m"
                                          : "a duration such as 30s, 5m or 1h30m");
    return 0;
}

/* Adds a number member; returns -1 on OOM (reported by the caller). */
static int add_num(cJSON *o, const char *key, double v)
{
    return cJSON_AddNumberToObject(o, key, v) ? 0 : -1;
}

#define OOM(ps) usage_err((ps), "out of memory")
#define NUM_OPT(ps, obj, id, key)                                                   \
    do {                                                                            \
        if ((ps)->given[id]) {                                                      \
            double v_;                                                              \
            if (get_double((ps), (id), &v_))                                        \
                return CLI_EXIT_USAGE;                                              \
            if (add_num((obj), (key), v_))                                          \
                return OOM(ps);                                                     \
        }                                                                           \
    } while (0)
#define INT_OPT(ps, obj, id, key, lo, hi)                                           \
    do {                                                                            \
        if ((ps)->given[id]) {                                                      \
            long long v_;                                                           \
            if (get_int((ps), (id), (lo), (hi), &v_))                               \
                return CLI_EXIT_USAGE;                                              \
            if (add_num((obj), (key), (double)v_))                                  \
                return OOM(ps);                                                     \
        }                                                                           \
    } while (0)

/* The largest integer a JSON number carries exactly (the protocol's bound for seeds). */
#define JSON_INT_MAX 9007199254740991LL

static int build_sampling(pstate *ps, cJSON *req)
{
    static const opt_id ids[] = {O_TEMPERATURE, O_TOP_K, O_TOP_P, O_MIN_P,
                                 O_REPETITION_PENALTY, O_PRESENCE_PENALTY, O_SEED, O_STOP};
    bool any = false;
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        any |= ps->given[ids[i]] != NULL;
    INT_OPT(ps, req, O_MAX_TOKENS, "max_tokens", 1, INT32_MAX);
    if (!any)
        return 0;
    cJSON *s = cJSON_AddObjectToObject(req, "sampling");
    if (!s)
        return OOM(ps);
    NUM_OPT(ps, s, O_TEMPERATURE, "temperature");
    INT_OPT(ps, s, O_TOP_K, "top_k", 0, INT32_MAX);
    NUM_OPT(ps, s, O_TOP_P, "top_p");
    NUM_OPT(ps, s, O_MIN_P, "min_p");
    NUM_OPT(ps, s, O_REPETITION_PENALTY, "repetition_penalty");
    NUM_OPT(ps, s, O_PRESENCE_PENALTY, "presence_penalty");
    INT_OPT(ps, s, O_SEED, "seed", 0, JSON_INT_MAX);
    if (ps->n_stops) {
        cJSON *a = cJSON_AddArrayToObject(s, "stop");
        if (!a)
            return OOM(ps);
        for (size_t i = 0; i < ps->n_stops; i++) {
            cJSON *str = cJSON_CreateString(ps->stops[i]);
            if (!str || !cJSON_AddItemToArray(a, str)) {
                cJSON_Delete(str);
                return OOM(ps);
            }
        }
    }
    return 0;
}

static int add_str(pstate *ps, cJSON *o, const char *key, const char *v)
{
    return cJSON_AddStringToObject(o, key, v) ? 0 : OOM(ps);
}

static int build_stream_add(pstate *ps, cJSON *req, char **pos)
{
    if (add_str(ps, req, "stream", pos[0]) || add_str(ps, req, "url", pos[1]))
        return CLI_EXIT_USAGE;
    NUM_OPT(ps, req, O_FPS, "fps");
    if (ps->given[O_TOKENS_PER_PAIR] && ps->given[O_MAX_TOKENS_PER_PAIR])
        return usage_err(ps, "give --tokens-per-pair or --max-tokens-per-pair, not both");
    if (ps->given[O_TOKENS_PER_PAIR]) {
        const char *v = ps->given[O_TOKENS_PER_PAIR];
        long long lo, hi;
        int n = 0;
        if (sscanf(v, "%lld-%lld%n", &lo, &hi, &n) == 2 && v[n] == '\0') {
            /* a range */
        } else if (sscanf(v, "%lld%n", &lo, &n) == 1 && v[n] == '\0') {
            hi = lo;
        } else {
            return bad_value(ps, O_TOKENS_PER_PAIR, "a number of tokens N or a range MIN-MAX");
        }
        if (lo < 1 || hi < lo || hi > INT32_MAX)
            return bad_value(ps, O_TOKENS_PER_PAIR, "N >= 1, or MIN-MAX with 1 <= MIN <= MAX");
        cJSON *t = cJSON_AddObjectToObject(req, "tokens_per_pair");
        if (!t || add_num(t, "min", (double)lo) || add_num(t, "max", (double)hi))
            return OOM(ps);
    }
    INT_OPT(ps, req, O_MAX_TOKENS_PER_PAIR, "max_tokens_per_pair", 1, INT32_MAX);
    if (ps->given[O_CACHE_TOKENS] && ps->given[O_CACHE_BYTES])
        return usage_err(ps, "give --cache-tokens or --cache-bytes, not both");
    INT_OPT(ps, req, O_CACHE_TOKENS, "cache_tokens", 1, JSON_INT_MAX);
    if (ps->given[O_CACHE_BYTES]) {
        uint64_t b;
        if (cli_parse_size(ps->given[O_CACHE_BYTES], &b) < 0 || b == 0 ||
            b > (uint64_t)JSON_INT_MAX)
            return bad_value(ps, O_CACHE_BYTES, "a size such as 512M, 2G or 1073741824");
        if (add_num(req, "cache_bytes", (double)b))
            return OOM(ps);
    }
    if (ps->given[O_SYSTEM_PROMPT] && add_str(ps, req, "system_prompt", ps->given[O_SYSTEM_PROMPT]))
        return CLI_EXIT_USAGE;

    bool any = ps->given[O_LOOP] || ps->given[O_REALTIME] || ps->given[O_START] ||
               ps->given[O_RTSP_TRANSPORT] || ps->given[O_DECODER_THREADS] ||
               ps->given[O_IO_TIMEOUT];
    if (!any)
        return 0;
    cJSON *o = cJSON_AddObjectToObject(req, "options");
    if (!o)
        return OOM(ps);
    if (ps->given[O_LOOP] && !cJSON_AddTrueToObject(o, "loop"))
        return OOM(ps);
    if (ps->given[O_REALTIME] && !cJSON_AddTrueToObject(o, "realtime"))
        return OOM(ps);
    if (ps->given[O_START]) {
        double d;
        if (get_duration(ps, O_START, false, &d) || add_num(o, "start_offset", d))
            return CLI_EXIT_USAGE;
    }
    if (ps->given[O_RTSP_TRANSPORT]) {
        const char *t = ps->given[O_RTSP_TRANSPORT];
        if (strcmp(t, "tcp") != 0 && strcmp(t, "udp") != 0)
            return bad_value(ps, O_RTSP_TRANSPORT, "tcp or udp");
        if (add_str(ps, o, "rtsp_transport", t))
            return CLI_EXIT_USAGE;
    }
    INT_OPT(ps, o, O_DECODER_THREADS, "decoder_threads", 0, INT32_MAX);
    if (ps->given[O_IO_TIMEOUT]) {
        double d;
        if (get_duration(ps, O_IO_TIMEOUT, true, &d))
            return CLI_EXIT_USAGE;
        if (d * 1000 > INT32_MAX)
            return bad_value(ps, O_IO_TIMEOUT, "a duration such as 10s");
        if (add_num(o, "timeout_ms", floor(d * 1000 + 0.5)))
            return OOM(ps);
    }
    return 0;
}

/* --window / --from --to / --from-media --to-media. watch add accepts only --window: the
 * option table rejects the others for it. */
static int build_window(pstate *ps, cJSON *req)
{
    bool last = ps->given[O_WINDOW] != NULL;
    bool wall = ps->given[O_FROM] || ps->given[O_TO];
    bool media = ps->given[O_FROM_MEDIA] || ps->given[O_TO_MEDIA];
    if (last + wall + media == 0)
        return 0;
    if (last + wall + media > 1)
        return usage_err(ps, "give one of --window, --from/--to (wall clock) and "
                             "--from-media/--to-media, not several");
    cJSON *w = cJSON_AddObjectToObject(req, "window");
    if (!w)
        return OOM(ps);
    if (last) {
        double d;
        if (get_duration(ps, O_WINDOW, true, &d) || add_num(w, "last_seconds", d))
            return CLI_EXIT_USAGE;
        return 0;
    }
    static const struct { opt_id id; const char *key; bool wall; } ends[] = {
        {O_FROM, "from_wall", true}, {O_TO, "to_wall", true},
        {O_FROM_MEDIA, "from_media", false}, {O_TO_MEDIA, "to_media", false},
    };
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double now = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
    double v[2] = {0, 0};
    int k = 0;
    for (size_t i = 0; i < 4; i++) {
        if (!ps->given[ends[i].id])
            continue;
        double t;
        if (ends[i].wall) {
            if (cli_parse_wall_time(ps->given[ends[i].id], now, &t) < 0)
                return bad_value(ps, ends[i].id, "a time: HH:MM[:SS] (local), an RFC 3339 "
                                 "date-time such as 2025-01-31T10:02:00Z, or @UNIX_SECONDS");
        } else if (get_duration(ps, ends[i].id, false, &t)) {
            return CLI_EXIT_USAGE;
        }
        if (add_num(w, ends[i].key, t))
            return OOM(ps);
        v[k++ % 2] = t;
    }
    if (k == 2 && !(v[0] < v[1]))
        return usage_err(ps, "the window ends (%s) before it begins (%s)",
                         ps->given[wall ? O_TO : O_TO_MEDIA], ps->given[wall ? O_FROM : O_FROM_MEDIA]);
    return 0;
}

static int build_answer_opts(pstate *ps, cJSON *req)
{
    if (build_sampling(ps, req))
        return CLI_EXIT_USAGE;
    /* --json prints only the final frame: the tokens need not travel one by one. */
    if ((ps->inv->no_stream || ps->inv->json) && !cJSON_AddFalseToObject(req, "stream_tokens"))
        return OOM(ps);
    return 0;
}

static char *base64_encode(const unsigned char *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1);
    if (!out)
        return NULL;
    char *o = out;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

/* Far above any daemon's max_image_bytes: only guards against reading a disk image. */
#define CLI_IMAGE_FILE_MAX (256u << 20)

static int build_image(pstate *ps, cJSON *req, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return usage_err(ps, "cannot open image file '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return usage_err(ps, "'%s' is not a regular file", path);
    }
    if ((uint64_t)st.st_size > CLI_IMAGE_FILE_MAX || st.st_size == 0) {
        fclose(f);
        return usage_err(ps, "image file '%s' is %lld bytes; expected 1 byte to %u MiB", path,
                         (long long)st.st_size, CLI_IMAGE_FILE_MAX >> 20);
    }
    size_t n = (size_t)st.st_size;
    unsigned char *data = malloc(n);
    if (!data) {
        fclose(f);
        return OOM(ps);
    }
    size_t got = fread(data, 1, n, f);
    int rerr = ferror(f);
    fclose(f);
    if (got != n || rerr) {
        free(data);
        return usage_err(ps, "cannot read image file '%s'%s", path,
                         rerr ? ": read error" : ": it shrank while being read");
    }
    char *b64 = base64_encode(data, n);
    free(data);
    if (!b64)
        return OOM(ps);
    cJSON *s = cJSON_CreateString(b64);
    free(b64);
    if (!s || !cJSON_AddItemToObject(req, "data_base64", s)) {
        cJSON_Delete(s);
        return OOM(ps);
    }
    return 0;
}

/* "a,b,c" -> a JSON array of strings; empty items are an error. */
static int add_list(pstate *ps, cJSON *o, const char *key, opt_id id, const char *list)
{
    cJSON *a = cJSON_AddArrayToObject(o, key);
    if (!a)
        return OOM(ps);
    const char *p = list;
    for (;;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 0)
            return bad_value(ps, id, "a comma-separated list of values without empty items");
        char *item = strndup(p, n);
        cJSON *s = item ? cJSON_CreateString(item) : NULL;
        free(item);
        if (!s || !cJSON_AddItemToArray(a, s)) {
            cJSON_Delete(s);
            return OOM(ps);
        }
        if (!e)
            break;
        p = e + 1;
    }
    return 0;
}

static int build_watch_add(pstate *ps, cJSON *req, char **pos)
{
    if (add_str(ps, req, "stream", pos[0]) || add_str(ps, req, "prompt", pos[1]))
        return CLI_EXIT_USAGE;
    if (ps->given[O_NAME] && add_str(ps, req, "name", ps->given[O_NAME]))
        return CLI_EXIT_USAGE;
    if (!!ps->given[O_EVERY] == !!ps->given[O_ON_PAIR])
        return usage_err(ps, "give exactly one of --every D (ask every D of wall time) and "
                             "--on-pair (ask after every new frame pair)");
    if (ps->given[O_EVERY]) {
        double d;
        if (get_duration(ps, O_EVERY, true, &d) || add_num(req, "every_seconds", d))
            return CLI_EXIT_USAGE;
    } else if (!cJSON_AddTrueToObject(req, "on_pair")) {
        return OOM(ps);
    }
    if (build_window(ps, req) || build_sampling(ps, req))
        return CLI_EXIT_USAGE;

    const char *ex = ps->given[O_EXPECT];
    if (!ex) {
        static const opt_id need[] = {O_ALERT_ON, O_ALERT_REPEAT, O_COOLDOWN};
        for (size_t i = 0; i < 3; i++)
            if (ps->given[need[i]])
                return usage_err(ps, "--%s needs --expect (yes_no or enum:A,B,...)",
                                 opts[need[i]].name);
        return 0;
    }
    cJSON *e = cJSON_AddObjectToObject(req, "expect");
    if (!e)
        return OOM(ps);
    if (strcmp(ex, "yes_no") == 0 || strcmp(ex, "yes-no") == 0) {
        if (add_str(ps, e, "type", "yes_no"))
            return CLI_EXIT_USAGE;
    } else if (strncmp(ex, "enum:", 5) == 0) {
        if (add_str(ps, e, "type", "enum") || add_list(ps, e, "values", O_EXPECT, ex + 5))
            return CLI_EXIT_USAGE;
    } else {
        return bad_value(ps, O_EXPECT, "yes_no or enum:A,B,...");
    }
    if (ps->given[O_ALERT_ON] && add_list(ps, e, "alert_on", O_ALERT_ON, ps->given[O_ALERT_ON]))
        return CLI_EXIT_USAGE;
    if (ps->given[O_ALERT_REPEAT] && !cJSON_AddTrueToObject(e, "alert_repeat"))
        return OOM(ps);
    if (ps->given[O_COOLDOWN]) {
        double d;
        if (get_duration(ps, O_COOLDOWN, false, &d) || add_num(e, "cooldown_seconds", d))
            return CLI_EXIT_USAGE;
    }
    return 0;
}

static int parse_kinds(pstate *ps, const char *list, unsigned *out)
{
    static const struct { const char *name; unsigned bit; } kinds[] = {
        {"state", CLI_KIND_STATE}, {"watch", CLI_KIND_WATCH}, {"alert", CLI_KIND_ALERT},
        {"daemon", CLI_KIND_DAEMON},
    };
    *out = 0;
    const char *p = list;
    for (;;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        unsigned bit = 0;
        for (size_t i = 0; i < 4; i++)
            if (strlen(kinds[i].name) == n && strncmp(kinds[i].name, p, n) == 0)
                bit = kinds[i].bit;
        if (!bit)
            return bad_value(ps, O_KIND, "state, watch, alert or daemon (comma-separated)");
        *out |= bit;
        if (!e)
            return 0;
        p = e + 1;
    }
}

/* The command named by the leading words; *used = how many words it took. */
static cli_command command_of(char **pos, size_t npos, size_t *used, bool *unknown_verb)
{
    static const struct { const char *word; cli_command cmd; } simple[] = {
        {"ask", CLI_CMD_ASK}, {"image", CLI_CMD_IMAGE}, {"events", CLI_CMD_EVENTS},
        {"status", CLI_CMD_STATUS}, {"ping", CLI_CMD_PING}, {"version", CLI_CMD_VERSION},
    };
    static const struct { const char *word; cli_command group, add, rm, ls; } groups[] = {
        {"stream", CLI_CMD_STREAM, CLI_CMD_STREAM_ADD, CLI_CMD_STREAM_RM, CLI_CMD_STREAM_LS},
        {"watch", CLI_CMD_WATCH, CLI_CMD_WATCH_ADD, CLI_CMD_WATCH_RM, CLI_CMD_WATCH_LS},
    };
    *used = 0;
    *unknown_verb = false;
    if (npos == 0)
        return CLI_CMD_NONE;
    for (size_t i = 0; i < sizeof simple / sizeof simple[0]; i++)
        if (strcmp(pos[0], simple[i].word) == 0) {
            *used = 1;
            return simple[i].cmd;
        }
    for (size_t i = 0; i < 2; i++) {
        if (strcmp(pos[0], groups[i].word) != 0)
            continue;
        *used = 1;
        if (npos < 2)
            return groups[i].group;
        const char *v = pos[1];
        *used = 2;
        if (strcmp(v, "add") == 0)
            return groups[i].add;
        if (strcmp(v, "rm") == 0 || strcmp(v, "remove") == 0)
            return groups[i].rm;
        if (strcmp(v, "ls") == 0 || strcmp(v, "list") == 0)
            return groups[i].ls;
        *used = 1;
        *unknown_verb = true;
        return groups[i].group;
    }
    return CLI_CMD_COUNT_;
}

static int check_positionals(pstate *ps, size_t n, size_t lo, size_t hi, const char *shape)
{
    if (n >= lo && n <= hi)
        return 0;
    return usage_err(ps, "%s arguments; usage: vigil %s%s%s (vigil %s --help)",
                     n < lo ? "missing" : "too many", cli_command_name(ps->inv->cmd),
                     *shape ? " " : "", shape, cli_command_name(ps->inv->cmd));
}

static int parse_conn(pstate *ps)
{
    cli_conn_opts *c = &ps->inv->conn;
    const char *env;
    c->endpoint = PROTO_DEFAULT_ENDPOINT;
    if ((env = getenv("VIGIL_ENDPOINT")) && *env)
        c->endpoint = env;
    if ((env = getenv("VIGIL_EVENTS_ENDPOINT")) && *env)
        c->events_endpoint = env;
    if ((env = getenv("VIGIL_SERVER_KEY")) && *env)
        c->server_key = env;
    if ((env = getenv("VIGIL_CLIENT_KEY_FILE")) && *env)
        c->client_key_file = env;
    if ((env = getenv("VIGIL_CLIENT_SECRET_KEY")) && *env)
        c->client_secret = env;
    c->timeout_s = CLI_DEFAULT_TIMEOUT_S;
    if ((env = getenv("VIGIL_TIMEOUT")) && *env) {
        if (cli_parse_duration(env, &c->timeout_s) < 0 || !(c->timeout_s > 0))
            return usage_err(ps, "VIGIL_TIMEOUT expects a duration above zero such as 5s, got "
                             "\"%s\"", env);
        c->timeout_given = true;
    }
    if (ps->given[O_ENDPOINT])
        c->endpoint = ps->given[O_ENDPOINT];
    if (ps->given[O_EVENTS_ENDPOINT])
        c->events_endpoint = ps->given[O_EVENTS_ENDPOINT];
    if (ps->given[O_SERVER_KEY])
        c->server_key = ps->given[O_SERVER_KEY];
    if (ps->given[O_CLIENT_KEY_FILE]) {
        c->client_key_file = ps->given[O_CLIENT_KEY_FILE];
        c->client_secret = NULL;    /* the flag beats the environment's key */
    }
    if (ps->given[O_TIMEOUT]) {
        if (get_duration(ps, O_TIMEOUT, true, &c->timeout_s))
            return CLI_EXIT_USAGE;
        c->timeout_given = true;
    }
    if (!*c->endpoint)
        return usage_err(ps, "the endpoint is empty; expected e.g. " PROTO_DEFAULT_ENDPOINT
                             " or tcp://127.0.0.1:5555");
    return 0;
}

static int build_request(pstate *ps, char **pos, size_t npos)
{
    cli_invocation *inv = ps->inv;
    static const char *const ops[CLI_CMD_COUNT_] = {
        [CLI_CMD_PING] = "ping", [CLI_CMD_STATUS] = "status",
        [CLI_CMD_STREAM_ADD] = "stream.add", [CLI_CMD_STREAM_RM] = "stream.remove",
        [CLI_CMD_STREAM_LS] = "stream.list", [CLI_CMD_ASK] = "query", [CLI_CMD_IMAGE] = "image",
        [CLI_CMD_WATCH_ADD] = "watch.add", [CLI_CMD_WATCH_RM] = "watch.remove",
        [CLI_CMD_WATCH_LS] = "watch.list",
    };
    if (!ops[inv->cmd])
        return 0;
    cJSON *req = inv->request = cJSON_CreateObject();
    if (!req || add_str(ps, req, "op", ops[inv->cmd]))
        return OOM(ps);
    switch (inv->cmd) {
    case CLI_CMD_STATUS:
    case CLI_CMD_WATCH_LS: {
        const char *s = npos ? pos[0] : ps->given[O_STREAM];
        if (npos && ps->given[O_STREAM] && strcmp(pos[0], ps->given[O_STREAM]) != 0)
            return usage_err(ps, "the STREAM argument and --stream name different streams");
        return s ? add_str(ps, req, "stream", s) : 0;
    }
    case CLI_CMD_STREAM_ADD:
        return build_stream_add(ps, req, pos);
    case CLI_CMD_STREAM_RM:
        return add_str(ps, req, "stream", pos[0]);
    case CLI_CMD_WATCH_RM:
        return add_str(ps, req, "watch", pos[0]);
    case CLI_CMD_ASK:
        if (add_str(ps, req, "stream", pos[0]) || add_str(ps, req, "prompt", pos[1]) ||
            build_window(ps, req))
            return CLI_EXIT_USAGE;
        return build_answer_opts(ps, req);
    case CLI_CMD_IMAGE:
        if (build_image(ps, req, pos[0]) || add_str(ps, req, "prompt", pos[1]))
            return CLI_EXIT_USAGE;
        return build_answer_opts(ps, req);
    case CLI_CMD_WATCH_ADD:
        return build_watch_add(ps, req, pos);
    default:
        return 0;
    }
}

static int parse_args(pstate *ps, int argc, char **argv, char **pos, size_t *npos)
{
    bool only_pos = false;
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (only_pos || a[0] != '-' || a[1] == '\0') {
            pos[(*npos)++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_pos = true;
            continue;
        }
        int id;
        const char *inline_val = NULL;
        if (a[1] == '-') {
            const char *name = a + 2, *eq = strchr(name, '=');
            size_t n = eq ? (size_t)(eq - name) : strlen(name);
            id = find_long(name, n);
            if (id < 0)
                return usage_err(ps, "unknown option --%.*s (vigil --help lists them)", (int)n,
                                 name);
            if (eq)
                inline_val = eq + 1;
        } else {
            id = find_short(a[1]);
            if (id < 0)
                return usage_err(ps, "unknown option -%c (vigil --help lists them)", a[1]);
            if (a[2]) {
                if (!opts[id].arg)
                    return usage_err(ps, "-%c takes no value; got \"%s\"", a[1], a);
                inline_val = a + 2;
            }
        }
        const char *val = "";
        if (opts[id].arg) {
            if (inline_val) {
                val = inline_val;
            } else if (i + 1 < argc) {
                val = argv[++i];
            } else {
                return usage_err(ps, "--%s needs a value", opts[id].name);
            }
        } else if (inline_val) {
            return usage_err(ps, "--%s takes no value; got \"%s\"", opts[id].name, a);
        }
        ps->given[id] = val;
        if (id == O_STOP)
            ps->stops[ps->n_stops++] = val;
    }
    return 0;
}

int cli_parse(int argc, char **argv, cli_invocation *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (errlen)
        err[0] = '\0';
    pstate ps = {.inv = out, .err = err, .errlen = errlen};
    char **pos = calloc((size_t)(argc > 0 ? argc : 1), sizeof *pos);
    ps.stops = calloc((size_t)(argc > 0 ? argc : 1), sizeof *ps.stops);
    int rc = CLI_EXIT_OK;
    size_t npos = 0;
    if (!pos || !ps.stops) {
        rc = OOM(&ps);
        goto done;
    }
    if ((rc = parse_args(&ps, argc, argv, pos, &npos)))
        goto done;

    size_t used;
    bool unknown_verb;
    cli_command cmd = command_of(pos, npos, &used, &unknown_verb);
    out->help = ps.given[O_HELP] != NULL;
    if (cmd == CLI_CMD_COUNT_ && strcmp(pos[0], "help") == 0) {
        /* `vigil help [COMMAND...]` is `vigil [COMMAND...] --help`. */
        cmd = command_of(pos + 1, npos - 1, &used, &unknown_verb);
        out->help = true;
        if (cmd == CLI_CMD_COUNT_) {
            rc = usage_err(&ps, "no help for '%s': unknown command (vigil --help lists them)",
                           pos[1]);
            goto done;
        }
        used++;
    }
    if (cmd == CLI_CMD_COUNT_) {
        rc = usage_err(&ps, "unknown command '%s'; expected stream, ask, image, watch, events, "
                       "status, ping or version (vigil --help)", pos[0]);
        goto done;
    }
    if (ps.given[O_VERSION] && !out->help) {
        cmd = CLI_CMD_VERSION;      /* `vigil --version`, like every other tool */
        used = npos;
    }
    out->cmd = cmd;
    if (unknown_verb && cmd != CLI_CMD_VERSION) {
        rc = usage_err(&ps, "unknown subcommand '%s'; expected add, rm or ls", pos[used]);
        goto done;
    }
    for (int id = 0; id < O_COUNT_; id++)
        if (ps.given[id] && !(opts[id].cmds & C(cmd)))
            if (!(out->help && id == O_HELP)) {
                rc = usage_err(&ps, "--%s does not apply here (vigil %s --help)",
                               opts[id].name, cli_command_name(cmd));
                goto done;
            }
    if ((rc = parse_conn(&ps)))
        goto done;
    out->json = ps.given[O_JSON] != NULL;
    out->quiet = ps.given[O_QUIET] != NULL;
    out->no_stream = ps.given[O_NO_STREAM] != NULL;
    if (out->help)
        goto done;

    char **args = pos + used;
    size_t nargs = npos - used;
    switch (cmd) {
    case CLI_CMD_NONE:
        rc = usage_err(&ps, "no command given (vigil --help lists them)");
        goto done;
    case CLI_CMD_STREAM:
    case CLI_CMD_WATCH:
        rc = usage_err(&ps, "expected add, rm or ls after '%s'", cli_command_name(cmd));
        goto done;
    case CLI_CMD_STREAM_ADD: rc = check_positionals(&ps, nargs, 2, 2, "ID URL"); break;
    case CLI_CMD_STREAM_RM: rc = check_positionals(&ps, nargs, 1, 1, "ID"); break;
    case CLI_CMD_WATCH_RM: rc = check_positionals(&ps, nargs, 1, 1, "ID"); break;
    case CLI_CMD_ASK: rc = check_positionals(&ps, nargs, 2, 2, "STREAM \"QUESTION\""); break;
    case CLI_CMD_IMAGE: rc = check_positionals(&ps, nargs, 2, 2, "FILE \"QUESTION\""); break;
    case CLI_CMD_WATCH_ADD:
        rc = check_positionals(&ps, nargs, 2, 2, "STREAM \"PROMPT\" (--every D | --on-pair)");
        break;
    case CLI_CMD_STATUS: rc = check_positionals(&ps, nargs, 0, 1, "[STREAM]"); break;
    case CLI_CMD_WATCH_LS: rc = check_positionals(&ps, nargs, 0, 1, "[STREAM]"); break;
    default: rc = check_positionals(&ps, nargs, 0, 0, ""); break;
    }
    if (rc)
        goto done;
    if (cmd == CLI_CMD_EVENTS) {
        out->events_stream = ps.given[O_STREAM];
        out->events_watch = ps.given[O_WATCH];
        if (ps.given[O_KIND] && (rc = parse_kinds(&ps, ps.given[O_KIND], &out->events_kinds)))
            goto done;
        if (ps.given[O_COUNT]) {
            long long n;
            if ((rc = get_int(&ps, O_COUNT, 1, LONG_MAX, &n)))
                goto done;
            out->events_count = (long)n;
        }
    }
    rc = build_request(&ps, args, nargs);
done:
    free(pos);
    free(ps.stops);
    return rc;
}

void cli_invocation_free(cli_invocation *inv)
{
    if (!inv)
        return;
    cJSON_Delete(inv->request);
    inv->request = NULL;
}
