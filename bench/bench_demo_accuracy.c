/* bench_demo_accuracy.c — the demo model's accuracy through the whole product path.
 *
 * For each reliable question type of demo/TASK.md (color, color_now, count, appear), N fresh
 * clips are drawn by vigil-make-clip (new seeds every run unless --seed is given; the truth comes
 * with each clip), encoded to MP4 with FFmpeg, and given to the real vigild as file streams:
 * FFmpeg decode -> 2 fps sampling -> smart_resize -> vision tower -> the stream's incremental
 * KV cache; then the type's question is asked over ZeroMQ and the greedy answer compared with
 * the truth. Accuracy per type is printed beside TASK.md's figures (transformers, same
 * checkpoint: held-out set of 200 and the MP4 round trip of 30 per type).
 *
 * Usage: bench_demo_accuracy [--model DIR] [--clips N] [--seed S] [--threads N] [--keep]
 *   --model    the demo checkpoint (default demo/model)
 *   --clips    clips per type (default 50)
 *   --seed     first seed (default: from the clock; printed, so a run can be repeated)
 *   --keep     keep the clips and the daemon's log (their folder is printed) */
#include <math.h>

#include "bench/bench_vigild.h"

typedef struct qtype {
    const char *name;
    double task_main, task_mp4;  /* demo/TASK.md section 6: bf16 main set, MP4 round trip */
    int right, total;
    double seconds;
} qtype;

static bool wait_ended(const daemon_run *d, const char *stream, int timeout_s) {
    char req[256];
    snprintf(req, sizeof req, "{\"id\":\"s\",\"op\":\"status\",\"stream\":\"%s\"}", stream);
    double deadline = now_s() + timeout_s;
    while (now_s() < deadline) {
        cJSON *r = call(d->ep, req, 10000);
        const cJSON *s = r ? cJSON_GetObjectItemCaseSensitive(r, "stream") : NULL;
        const cJSON *st = s ? cJSON_GetObjectItemCaseSensitive(s, "state") : NULL;
        bool done = cJSON_IsString(st) && (strcmp(st->valuestring, "ended") == 0 || strcmp(st->valuestring, "failed") == 0);
        cJSON_Delete(r);
        if (done) return true;
        usleep(20000);
    }
    return false;
}

/* The clip's question and expected answer from its truth file (caller frees both). */
static void read_truth(const char *path, char **question, char **expected) {
    FILE *f = fopen(path, "r");
    if (!f) die("%s: %s", path, strerror(errno));
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *t = cJSON_Parse(buf);
    cJSON *q = t ? cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(t, "questions"), 0) : NULL;
    const cJSON *qs = q ? cJSON_GetObjectItemCaseSensitive(q, "question") : NULL;
    const cJSON *ex = q ? cJSON_GetObjectItemCaseSensitive(q, "expected") : NULL;
    if (!cJSON_IsString(qs) || !cJSON_IsString(ex)) die("%s: no question/expected answer", path);
    *question = strdup(qs->valuestring);
    *expected = strdup(ex->valuestring);
    cJSON_Delete(t);
}

int main(int argc, char **argv) {
    const char *model_dir = "demo/model";
    int clips = 50, threads = 2;
    bool keep = false, seed_given = false;
    unsigned long long seed = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) model_dir = argv[++i];
        else if (strcmp(argv[i], "--clips") == 0 && i + 1 < argc) clips = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10), seed_given = true;
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--keep") == 0) keep = true;
        else die("unknown argument %s (see the comment at the top of bench/bench_demo_accuracy.c)", argv[i]);
    }
    if (clips < 1 || clips > 100000) die("--clips: 1..100000");
    if (!seed_given) seed = (unsigned long long)time(NULL) % 1000000000ULL * 1000ULL;
    char model_abs[PATH_MAX], vigild[PATH_MAX + 32], make_clip[PATH_MAX + 32];
    if (!realpath(model_dir, model_abs)) die("%s: %s", model_dir, strerror(errno));
    bench_program("vigild", vigild, sizeof vigild);
    bench_program("vigil-make-clip", make_clip, sizeof make_clip);

    daemon_run d;
    start_daemon(&d, vigild, model_abs, threads,
                 "\"sources\": {\"allowed_protocols\": \"file\"},\n"
                 " \"stream_defaults\": {\"min_tokens_per_pair\": 4, \"max_tokens_per_pair\": 16, \"cache_tokens\": 4096}");
    printf("demo model %s, %d fresh clips per type (seeds %llu..), through vigild (file streams, 2 fps, "
           "16 tokens per pair, greedy)\n", model_abs, clips, seed);
    fflush(stdout);

    qtype types[] = {
        { "color", 1.000, 1.000, 0, 0, 0 },
        { "color_now", 1.000, 1.000, 0, 0, 0 },
        { "count", 0.935, 0.967, 0, 0, 0 },
        { "appear", 0.855, 0.800, 0, 0, 0 },
    };
    const int n_types = (int)(sizeof types / sizeof types[0]);
    for (int t = 0; t < n_types; t++) {
        qtype *q = &types[t];
        for (int c = 0; c < clips; c++) {
            double t0 = now_s();
            unsigned long long s = seed + (unsigned long long)t * 100000ULL + (unsigned long long)c;
            char mp4[512], truth[512], cmd[PATH_MAX + 1200], stream[64], req[1024];
            snprintf(mp4, sizeof mp4, "%s/%s-%llu.mp4", d.dir, q->name, s);
            snprintf(truth, sizeof truth, "%s/%s-%llu.json", d.dir, q->name, s);
            snprintf(cmd, sizeof cmd, "'%s' --type %s --seed %llu --out '%s' --truth '%s' >/dev/null", make_clip, q->name,
                     s, mp4, truth);
            if (system(cmd) != 0) die("%s failed", cmd);
            char *question, *expected;
            read_truth(truth, &question, &expected);
            snprintf(stream, sizeof stream, "%s-%d", q->name, c);
            snprintf(req, sizeof req, "{\"id\":\"a\",\"op\":\"stream.add\",\"stream\":\"%s\",\"url\":\"%s\"}", stream, mp4);
            cJSON *r = call(d.ep, req, 60000);
            if (!ok(r)) die("stream.add %s failed; see %s", mp4, d.log);
            cJSON_Delete(r);
            if (!wait_ended(&d, stream, 120)) die("%s did not end in 120 s; see %s", stream, d.log);
            snprintf(req, sizeof req, "{\"id\":\"q\",\"op\":\"query\",\"stream\":\"%s\",\"prompt\":\"%s\",\"max_tokens\":8,"
                     "\"stream_tokens\":false}", stream, question);
            r = call(d.ep, req, 60000);
            if (!ok(r)) die("query on %s failed; see %s", stream, d.log);
            const cJSON *text = cJSON_GetObjectItemCaseSensitive(r, "text");
            bool right = cJSON_IsString(text) && strcmp(text->valuestring, expected) == 0;
            q->right += right;
            q->total++;
            if (getenv("VIGIL_BENCH_VERBOSE"))
                printf("  %s seed %llu: %s -> %s (truth %s)\n", q->name, s, question,
                       cJSON_IsString(text) ? text->valuestring : "?", expected);
            cJSON_Delete(r);
            snprintf(req, sizeof req, "{\"id\":\"r\",\"op\":\"stream.remove\",\"stream\":\"%s\"}", stream);
            cJSON_Delete(call(d.ep, req, 60000));
            free(question);
            free(expected);
            if (!keep) {
                unlink(mp4);
                unlink(truth);
            }
            q->seconds += now_s() - t0;
        }
        printf("%-10s %3d/%-3d right: %5.1f%%   TASK.md (transformers): %5.1f%% held-out, %5.1f%% MP4 round trip   "
               "%.2f s per clip (make clip + ingest + ask)\n",
               q->name, q->right, q->total, 100.0 * q->right / q->total, 100 * q->task_main, 100 * q->task_mp4,
               q->seconds / q->total);
        fflush(stdout);
    }
    int right = 0, total = 0;
    for (int t = 0; t < n_types; t++) right += types[t].right, total += types[t].total;
    printf("all        %3d/%-3d right: %5.1f%%\n", right, total, 100.0 * right / total);
    if (keep) {
        printf("clips and the daemon's log kept in %s\n", d.dir);
        kill(d.pid, SIGTERM);
        waitpid(d.pid, NULL, 0);
    } else {
        stop_daemon(&d);
    }
    return 0;
}
