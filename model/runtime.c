/* runtime.c — process-level settings the model's math threads need before they exist. */
#include <limits.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>

#include "model/model.h"

/* OpenMP threads that spin at barriers lose badly whenever anything else wants the cores
 * (ingest threads, the event loop, other processes): decode ran 5x slower on a busy 2-core
 * machine. libgomp reads OMP_WAIT_POLICY once, when it loads, so the only way to set it from
 * inside is to re-execute the program with it, unless the caller chose a policy. */
void model_runtime_prepare(char **argv)
{
    if (getenv("OMP_WAIT_POLICY")) return;
    setenv("OMP_WAIT_POLICY", "passive", 1);
    /* Exec the program by its real path: the process name (comm) comes from the path's last
     * component, and "exe" would hide vigild from pkill, ps -C and journald's identifier. */
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n > 0) {
        path[n] = '\0';
        if (!strstr(path, " (deleted)")) execv(path, argv);
    }
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc): carry on with the spinning policy */
}
