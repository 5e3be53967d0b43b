/* media.h — test helpers for ingest tests: temporary directories, running the ffmpeg CLI to
 * make test media, background servers on loopback (started in their own process group and
 * always killed), free ports, and the colour code that tells which source frame a sampled
 * frame was. */
#ifndef VIGIL_TESTS_SUPPORT_MEDIA_H
#define VIGIL_TESTS_SUPPORT_MEDIA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Creates /tmp/vigil-media-XXXXXX. Returns 0 or -1. */
int media_tmpdir(char *out, size_t len);
/* Removes a directory made by media_tmpdir (refuses anything else). */
void media_rmtree(const char *dir);

/* Runs a shell command (printf-style); returns its exit status, or -1. The command's output
 * goes to the test log only when it fails. */
int media_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Starts a command in the background in its own process group, output to log_path.
 * Returns the pid or -1. */
pid_t media_spawn(const char *log_path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* SIGTERM to the process group, then SIGKILL after grace_ms; reaps it. pid <= 0 is a no-op. */
void media_kill(pid_t pid, int grace_ms);
/* Kills every process spawned by media_spawn that is still registered (for teardown). */
void media_kill_all(void);

/* A free 127.0.0.1 port for type SOCK_STREAM or SOCK_DGRAM, or -1. */
int media_free_port(int type);
/* Waits until a TCP connect to 127.0.0.1:port succeeds. */
bool media_wait_tcp(int port, int timeout_ms);

/* Is this ffmpeg encoder (e.g. "libx265") / decoder available? */
bool media_have_encoder(const char *name);
bool media_have_decoder(const char *name);

/* The lavfi source for a colour-coded clip: frame N is a flat colour with
 * R = 16*(N mod 16)+8, G = 16*((N/16) mod 16)+8, B = 16*((N/256) mod 16)+8, so up to 4096
 * frames are told apart even after lossy coding. Writes "color=...,geq=..." into buf. */
void media_color_source(char *buf, size_t len, int w, int h, const char *rate, double duration);
/* Decodes the frame index from an RGB24 frame (mean over the central block). */
int media_color_index(const uint8_t *rgb, int h, int w);

/* Writes len bytes to path. 0 or -1. */
int media_write_file(const char *path, const void *data, size_t len);
/* Reads a whole file (malloc'd, caller frees), with a NUL after its len bytes. NULL on error. */
void *media_read_file(const char *path, size_t *len);

/* Monotonic milliseconds. */
int64_t media_now_ms(void);
void media_sleep_ms(int ms);

#endif
