/* sampling.c — the upstream whole-file sampling plan (transformers Qwen3VLVideoProcessor
 * sample_frames + Qwen3VLProcessor._calculate_timestamps) and the timestamp text. */
#include "ingest/ingest.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int ingest_sample_plan_make(ingest_sample_plan *plan, int64_t total_frames, double source_fps,
                            double fps, int min_frames, int max_frames,
                            char *err, size_t errlen)
{
    memset(plan, 0, sizeof(*plan));
    if (total_frames <= 0) {
        set_err(err, errlen, "sampling: the video has no frames (total_frames %lld)",
                (long long)total_frames);
        return INGEST_EINVAL;
    }
    if (!(source_fps > 0) || !isfinite(source_fps)) {
        set_err(err, errlen, "sampling: source frame rate %g is not a positive number", source_fps);
        return INGEST_EINVAL;
    }
    if (!(fps > 0) || !isfinite(fps)) {
        set_err(err, errlen, "sampling: target fps %g is not a positive number", fps);
        return INGEST_EINVAL;
    }
    if (min_frames < 1 || max_frames < min_frames) {
        set_err(err, errlen, "sampling: min_frames %d / max_frames %d invalid (need 1 <= min <= max)",
                min_frames, max_frames);
        return INGEST_EINVAL;
    }
    /* num_frames = int(total / fps_in * fps); min(max(n, min_frames), max_frames, total) */
    double nd = (double)total_frames / source_fps * fps;
    int64_t n = nd >= 9e18 ? INT64_MAX : (int64_t)nd;
    if (n < min_frames)
        n = min_frames;
    if (n > max_frames)
        n = max_frames;
    if (n > total_frames)
        n = total_frames;

    int64_t padded = n + (n & 1);
    plan->indices = malloc(sizeof(int64_t) * (size_t)padded);
    plan->timestamps = malloc(sizeof(double) * (size_t)(padded / 2));
    if (!plan->indices || !plan->timestamps) {
        ingest_sample_plan_free(plan);
        set_err(err, errlen, "sampling: out of memory");
        return INGEST_ENOMEM;
    }
    /* np.linspace(0, total-1, n): y[i] = i * step, step = (stop-start)/(n-1); y[-1] = stop.
     * .round() is half to even. */
    double stop = (double)(total_frames - 1);
    if (n == 1) {
        plan->indices[0] = 0;
    } else {
        double step = stop / (double)(n - 1);
        for (int64_t i = 0; i < n; i++) {
            double y = (step == 0.0) ? (double)i / (double)(n - 1) * stop : (double)i * step;
            if (i == n - 1)
                y = stop;
            plan->indices[i] = (int64_t)nearbyint(y);
        }
    }
    if (n & 1)
        plan->indices[n] = plan->indices[n - 1];
    plan->num_frames = (int)n;
    plan->num_indices = (int)padded;
    plan->num_pairs = (int)(padded / 2);
    for (int p = 0; p < plan->num_pairs; p++) {
        double a = (double)plan->indices[2 * p] / source_fps;
        double b = (double)plan->indices[2 * p + 1] / source_fps;
        plan->timestamps[p] = (a + b) / 2;
    }
    return 0;
}

void ingest_sample_plan_free(ingest_sample_plan *plan)
{
    if (!plan)
        return;
    free(plan->indices);
    free(plan->timestamps);
    memset(plan, 0, sizeof(*plan));
}

void ingest_format_timestamp(double seconds, char *buf, size_t buflen)
{
    /* glibc's printf rounds the exact binary value correctly (ties to even), as Python's
     * "%.1f" does, so "<0.2 seconds>" for 0.25 comes out the same. */
    snprintf(buf, buflen, "<%.1f seconds>", seconds);
}
