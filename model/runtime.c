/* runtime.c — process-level settings the model's math threads need before they exist. */
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
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc): carry on with the spinning policy */
}
