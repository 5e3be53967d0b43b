/* vigild_proc.h — test helper: the real vigild as a child process, on ipc:// endpoints in a
 * temporary directory, with the tiny golden checkpoint (tests/data/golden/qwen3vl-dense-tiny)
 * and, made once per start with the ffmpeg CLI, a short clip (file streams: the test
 * configuration allows "file") and a small PNG image. */
#ifndef VIGIL_TESTS_SUPPORT_VIGILD_PROC_H
#define VIGIL_TESTS_SUPPORT_VIGILD_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct vigild_opts {
    /* Extra top-level members of the configuration file, JSON text without braces
     * ("\"watchdog_stall_seconds\": 2"); NULL for none. */
    const char *extra_config;
    /* Extra environment, "NAME=value" strings, NULL-terminated; NULL for none. */
    const char *const *env;
    /* Do not wait for a ping to succeed (the caller watches start-up itself). */
    bool no_wait;
} vigild_opts;

typedef struct vigild_proc vigild_proc;

/* The build tree of the programs under test: $VIGIL_BUILD or "build". */
const char *vigild_build_dir(void);

/* Starts build/bin/vigild --config DIR/vigild.json. Unless opts->no_wait, waits (up to 3 min,
 * for sanitizer builds) until it answers ping. Returns NULL with err on failure (the daemon's
 * log tail is printed to stderr). */
vigild_proc *vigild_start(const vigild_opts *opts, char *err, size_t errlen);
/* SIGTERM, waits up to 30 s (then SIGKILL), removes the directory. Returns the exit status
 * (0..255), 128 + signal when killed by one, -1 if it had to be killed. NULL is a no-op (-1). */
int vigild_stop(vigild_proc *p);

pid_t vigild_pid(const vigild_proc *p);
const char *vigild_dir(const vigild_proc *p);
const char *vigild_endpoint(const vigild_proc *p);
const char *vigild_events_endpoint(const vigild_proc *p);
const char *vigild_log_path(const vigild_proc *p);
/* An 8 s 128x128 H.264 clip at 4 fps (absolute path), and a 96x64 PNG. */
const char *vigild_clip(const vigild_proc *p);
const char *vigild_image(const vigild_proc *p);

/* Waits until stream has at least n frame pairs encoded (status "pairs_encoded"). */
bool vigild_wait_pairs(vigild_proc *p, const char *stream, int n, int timeout_ms);
/* Whether the process is still running (not exited). */
bool vigild_alive(vigild_proc *p);
/* Prints the last lines of the daemon's log to stderr (for failure reports). */
void vigild_dump_log(const vigild_proc *p);

#endif
