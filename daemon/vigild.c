/* vigild — watches video streams and answers questions about them (Qwen3-VL on the CPU).
 * Configuration: see `vigild --help` and systemd/vigild.json.example; protocol: docs/protocol.md. */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "daemon/daemon.h"
#include "model/model.h"

int main(int argc, char **argv) {
    model_runtime_prepare(argv);
    /* A peer that closes a connection must not kill the daemon (FFmpeg network writes). */
    signal(SIGPIPE, SIG_IGN);
    /* A daemon that runs for months should have flat memory. glibc raises its mmap threshold
     * after the first large free, after which the per-pair buffers (patches, vision features,
     * hundreds of KiB each) come from the heap and fragment it; a fixed threshold keeps them
     * mmap'ed and returned on free. Fewer arenas: fewer half-empty heaps kept per thread. */
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    mallopt(M_ARENA_MAX, 4);
    vd_config cfg;
    char err[1024] = "";
    if (vd_config_init(&cfg, err, sizeof err) != 0) {
        fprintf(stderr, "vigild: %s\n", err);
        return 1;
    }
    int rc = vd_config_from_args(&cfg, argc, argv, err, sizeof err);
    if (rc != 0) {
        if (rc < 0) fprintf(stderr, "vigild: %s\n", err);
        vd_config_free(&cfg);
        return rc < 0 ? 2 : 0;
    }
    vd_log_setup(cfg.log_level, cfg.log_format);
    rc = vd_daemon_run(&cfg);
    vd_config_free(&cfg);
    return rc;
}
