/* bench_ingest.c — what one video stream costs the ingest layer.
 *
 * Makes a 1080p30 H.264 clip with the ffmpeg CLI (cached in /tmp), then ingests it sampled
 * at 2 fps and resized for a 256-token pair budget:
 *   - as fast as possible: pairs per second, frames decoded per second, and CPU time per
 *     second of media (= share of one core a live 1080p30 camera costs), with and without
 *     discarding non-reference frames, with 1 decoder thread and with FFmpeg's default;
 *   - real-time paced (like a camera) for a few seconds: CPU share of one core;
 *   - the torch-matching resize alone (1920x1080 -> the 256-token size).
 * Usage: bench_ingest [seconds_of_clip=10] [paced_seconds=6]
 * Prints "name: value unit" lines. */
#include "ingest/ingest.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru); /* all threads: ingest thread + decoder threads */
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

typedef struct result {
    int pairs;
    double wall, cpu, media;
    unsigned long long decoded, sampled;
    int h, w;
} result;

static int run(const char *clip, bool skip_nonref, int threads, bool realtime, double limit_s,
               result *r)
{
    ingest_options o;
    ingest_options_init(&o);
    snprintf(o.protocols, sizeof(o.protocols), "file");
    ingest_options_set_max_tokens(&o, 256);
    o.min_pixels = 128 * 1024 < o.max_pixels ? 128 * 1024 : o.max_pixels;
    o.skip_nonref = skip_nonref;
    o.decoder_threads = threads;
    o.realtime = realtime;
    o.queue_capacity = 8;
    char err[512];
    ingest_source *s;
    if (ingest_source_create(&s, clip, &o, err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_ingest: %s\n", err);
        return -1;
    }
    memset(r, 0, sizeof(*r));
    double c0 = cpu_s(), t0 = now_s();
    if (ingest_source_start(s, err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_ingest: %s\n", err);
        ingest_source_destroy(s);
        return -1;
    }
    ingest_pair *p;
    int rc;
    while ((rc = ingest_source_pop(s, &p, 1000)) != INGEST_EOF) {
        if (rc)
            continue;
        r->pairs++;
        r->h = p->height;
        r->w = p->width;
        r->media = p->t1;
        ingest_pair_free(p);
        if (limit_s > 0 && r->media >= limit_s)
            break;
    }
    ingest_stats st;
    ingest_source_stats(s, &st);
    r->media = st.media_time > r->media ? st.media_time : r->media;
    ingest_source_stop(s);
    r->wall = now_s() - t0;
    r->cpu = cpu_s() - c0;
    r->decoded = st.frames_decoded;
    r->sampled = st.frames_sampled;
    if (ingest_source_state(s) == INGEST_STATE_FAILED) {
        ingest_source_last_error(s, err, sizeof(err));
        fprintf(stderr, "bench_ingest: %s\n", err);
        ingest_source_destroy(s);
        return -1;
    }
    ingest_source_destroy(s);
    return 0;
}

static void report(const char *name, const result *r)
{
    printf("%s.pairs: %d\n", name, r->pairs);
    printf("%s.pair_size: %dx%d px (%d tokens)\n", name, r->h, r->w, (r->h / 32) * (r->w / 32));
    printf("%s.wall: %.2f s\n", name, r->wall);
    printf("%s.pairs_per_s: %.2f pairs/s\n", name, r->pairs / r->wall);
    printf("%s.frames_decoded_per_s: %.1f frames/s\n", name, r->decoded / r->wall);
    printf("%s.frames_decoded: %llu\n", name, r->decoded);
    printf("%s.speed: %.2f x real time\n", name, r->media / r->wall);
    printf("%s.cpu_per_media_s: %.3f s/s (share of one core for a live 1080p30 stream: %.1f%%)\n",
           name, r->cpu / r->media, 100.0 * r->cpu / r->media);
}

int main(int argc, char **argv)
{
    int secs = argc > 1 ? atoi(argv[1]) : 10;
    double paced = argc > 2 ? atof(argv[2]) : 6;
    if (secs < 2)
        secs = 2;
    char clip[256];
    snprintf(clip, sizeof(clip), "/tmp/vigil-bench-1080p30-%ds.mp4", secs);
    struct stat stt;
    if (stat(clip, &stt) != 0 || stt.st_size == 0) {
        char cmd[1024];
        fprintf(stderr, "bench_ingest: making %s with ffmpeg (once)\n", clip);
        snprintf(cmd, sizeof(cmd),
                 "ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi "
                 "-i testsrc2=s=1920x1080:r=30:d=%d -c:v libx264 -preset veryfast -crf 23 "
                 "-pix_fmt yuv420p -g 60 -bf 2 '%s'", secs, clip);
        if (system(cmd) != 0) {
            fprintf(stderr, "bench_ingest: ffmpeg failed: %s\n", cmd);
            return 1;
        }
    }
    printf("clip: %s (1920x1080 H.264, 30 fps, %d s, B-frames)\n", clip, secs);
    printf("sampling: 2 fps, budget 256 tokens per pair\n");

    result r;
    if (run(clip, true, 0, false, 0, &r))
        return 1;
    report("fast.skip_nonref.threads_auto", &r);
    if (run(clip, false, 0, false, 0, &r))
        return 1;
    report("fast.all_frames.threads_auto", &r);
    if (run(clip, true, 1, false, 0, &r))
        return 1;
    report("fast.skip_nonref.threads_1", &r);
    if (paced > 0) {
        if (run(clip, true, 1, true, fmin(paced, secs), &r))
            return 1;
        report("paced.skip_nonref.threads_1", &r);
    }

    /* the resize alone: 1920x1080 -> the 256-token pair size */
    int dh, dw;
    ingest_smart_resize_image(1080, 1920, 128 * 1024, 256 * 1024, INGEST_RULE_TRANSFORMERS, &dh,
                              &dw, NULL, 0);
    uint8_t *src = malloc((size_t)1080 * 1920 * 3), *dst = malloc((size_t)dh * dw * 3);
    if (!src || !dst)
        return 1;
    for (size_t i = 0; i < (size_t)1080 * 1920 * 3; i++)
        src[i] = (uint8_t)(i * 2654435761u >> 24);
    ingest_resizer *rz;
    if (ingest_resizer_create(&rz, 1080, 1920, dh, dw, NULL, 0))
        return 1;
    int n = 20;
    double t0 = now_s();
    for (int i = 0; i < n; i++)
        ingest_resizer_run(rz, src, (size_t)1920 * 3, dst);
    double per = (now_s() - t0) / n;
    printf("resize.1920x1080_to_%dx%d: %.2f ms/frame\n", dh, dw, per * 1e3);
    ingest_resizer_destroy(rz);
    free(src);
    free(dst);
    return 0;
}
