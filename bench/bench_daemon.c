/* bench_daemon.c — what the incremental stream cache buys, measured on the real vigild.
 *
 * For each per-pair token budget (64 and 256 visual tokens, 2 fps sampling):
 *   1. a clip of SECONDS seconds (ffmpeg CLI, testsrc2 at the frame size of the budget) is fed to
 *      the real vigild as a file stream at full speed: the sustained pairs/s is the rate a live
 *      stream could be ingested at (a 2 fps camera needs 1 pair/s);
 *   2. with SECONDS of video cached, questions are asked over the protocol: time to first token
 *      (the daemon's timing.ttft_ms, median of 3);
 *   3. the daemon's resident memory (VmRSS, VmHWM) is read from /proc;
 *   4. for comparison, in this process: a full re-prefill of the same context (the same number
 *      of tokens: prefix, SECONDS/1 pairs with their stamps, question) into an empty cache, as a
 *      stateless server would do per question, in chunks of 2048 tokens; plus re-encoding the
 *      frames (vision tower time of one pair x the number of pairs).
 *
 * Usage: bench_daemon CHECKPOINT_DIR [--seconds S] [--budgets 64,256] [--threads N]
 * (make bench runs it on the generated 2B-shaped checkpoint). The vigild binary is taken from
 * $VIGIL_BUILD/bin, else from the build tree this program lives in. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench/bench_vigild.h"
#include "daemon/daemon.h"

static cJSON *stream_status(const daemon_run *d, cJSON **root) {
    *root = call(d->ep, "{\"id\":\"s\",\"op\":\"status\",\"stream\":\"cam\"}", 30000);
    return *root ? cJSON_GetObjectItemCaseSensitive(*root, "stream") : NULL;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- full re-prefill baseline (in this process) --------------------------------------------------- */

typedef struct baseline {
    double prefill_s;     /* the whole context, chunked, into an empty cache */
    double pair_vision_s; /* vision tower for one pair of this budget */
    int tokens;
} baseline;

static void run_baseline(model *m, const tokenizer *tok, int pairs, int budget, int side, baseline *out) {
    const model_config *cfg = model_get_config(m);
    char err[512];
    /* vision: one pair at the budget's frame size */
    size_t fb = (size_t)side * side * 3;
    uint8_t *rgb = malloc(2 * fb);
    if (!rgb) die("out of memory");
    for (size_t i = 0; i < 2 * fb; i++) rgb[i] = (uint8_t)((i * 2654435761u) >> 24);
    vd_sctx_options so = { .cache_tokens = budget + 64, .query_reserve = 64, .image_mode = true };
    vd_sctx *s = NULL;
    if (vd_sctx_create(m, tok, &so, &s, err, sizeof err) != 0) die("%s", err);
    ingest_pair p = { .height = side, .width = side, .grid_t = 1, .grid_h = side / 16, .grid_w = side / 16,
                      .tokens = side * side / 1024 };
    p.rgb[0] = rgb;
    p.rgb[1] = rgb + fb;
    vd_features f;
    if (vd_sctx_encode(s, &p, &f, err, sizeof err) != 0) die("%s", err);   /* warm-up */
    model_grid grid = f.grid;
    int hidden = f.vo.hidden, nds = f.vo.num_deepstack;
    vd_features_free(&f);
    double t0 = now_s();
    const int reps = 2;
    for (int i = 0; i < reps; i++) {
        if (vd_sctx_encode(s, &p, &f, err, sizeof err) != 0) die("%s", err);
        vd_features_free(&f);
    }
    out->pair_vision_s = (now_s() - t0) / reps;
    vd_sctx_destroy(s);
    free(rgb);

    /* the context's tokens: prefix, pairs (stamp, vision block), question */
    int32_t prefix[8], q[64], ts[16];
    long np = tok_encode(tok, "<|im_start|>user\n", 17, prefix, 8);
    const char *qt = "What happens in the video?<|im_end|>\n<|im_start|>assistant\n";
    long nq = tok_encode(tok, qt, strlen(qt), q, 64);
    long per_pair = budget + 2 + 8;
    long cap = np + pairs * per_pair + nq + 8;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    model_pos *pos = malloc((size_t)cap * sizeof *pos);
    model_grid *grids = malloc((size_t)pairs * sizeof *grids);
    if (!ids || !pos || !grids) die("out of memory");
    long n = 0;
    for (long i = 0; i < np; i++) ids[n++] = prefix[i];
    for (int k = 0; k < pairs; k++) {
        char stamp[32];
        ingest_format_timestamp(k + 0.25, stamp, sizeof stamp);
        long nt = tok_encode(tok, stamp, strlen(stamp), ts, 16);
        for (long i = 0; i < nt; i++) ids[n++] = ts[i];
        ids[n++] = cfg->vision_start_token_id;
        for (int i = 0; i < budget; i++) ids[n++] = cfg->video_token_id;
        ids[n++] = cfg->vision_end_token_id;
        grids[k] = grid;
    }
    for (long i = 0; i < nq; i++) ids[n++] = q[i];
    if (model_rope_index(cfg, ids, (int)n, NULL, 0, grids, pairs, pos, NULL, err, sizeof err) != 0) die("%s", err);
    /* visual features: their values do not change the cost */
    size_t rows = (size_t)pairs * budget;
    float *emb = malloc(rows * hidden * sizeof(float));
    float *ds = malloc((size_t)(nds > 0 ? nds : 1) * rows * hidden * sizeof(float));
    if (!emb || !ds) die("out of memory for %zu visual rows", rows);
    for (size_t i = 0; i < rows * hidden; i++) emb[i] = (float)((int)(i % 17) - 8) * 0.01f;
    for (size_t i = 0; i < (size_t)nds * rows * hidden; i++) ds[i] = (float)((int)(i % 13) - 6) * 0.01f;
    model_kv *kv = NULL;
    if (model_kv_create(m, (int)n + 16, &kv, err, sizeof err) != 0) die("%s", err);
    float *logits = malloc((size_t)cfg->text.vocab_size * sizeof(float));
    const long chunk = 2048;
    size_t vrow = 0;
    t0 = now_s();
    for (long at = 0; at < n; at += chunk) {
        long c = n - at < chunk ? n - at : chunk;
        int nv = 0;
        for (long i = at; i < at + c; i++) nv += ids[i] == cfg->video_token_id;
        model_visual_rows vis = { .embeds = emb + vrow * hidden, .deepstack = nds ? ds + vrow * hidden : NULL,
                                  .deepstack_stride = rows * hidden, .n = nv };
        if (model_forward_append(m, kv, ids + at, pos + at, (int)c, nv ? &vis : NULL, at + c == n ? logits : NULL,
                                 err, sizeof err) != 0)
            die("re-prefill: %s", err);
        vrow += (size_t)nv;
    }
    out->prefill_s = now_s() - t0;
    out->tokens = (int)n;
    model_kv_destroy(kv);
    free(logits);
    free(emb);
    free(ds);
    free(ids);
    free(pos);
    free(grids);
}

/* ---- main ------------------------------------------------------------------------------------------ */

typedef struct result {
    int budget, pairs;
    double pairs_per_s, ttft_ms, total_ms, prompt_tokens, cached_tokens;
    long rss_kb, hwm_kb;
    baseline base;
} result;

int main(int argc, char **argv) {
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: %s CHECKPOINT_DIR [--seconds S] [--budgets 64,256] [--threads N]\n", argv[0]);
        return 2;
    }
    const char *model_dir = argv[1];
    int seconds = 60, threads = 0;
    char budgets_arg[64] = "64,256";
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) seconds = atoi(argv[++i]);
        else if (strcmp(argv[i], "--budgets") == 0 && i + 1 < argc) snprintf(budgets_arg, sizeof budgets_arg, "%s", argv[++i]);
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = atoi(argv[++i]);
        else die("unknown argument %s", argv[i]);
    }
    if (seconds < 4) die("--seconds: at least 4");
    char model_abs[PATH_MAX];
    if (!realpath(model_dir, model_abs)) die("%s: %s", model_dir, strerror(errno));
    char vigild[PATH_MAX + 32];
    bench_program("vigild", vigild, sizeof vigild);
    if (access(vigild, X_OK) != 0) die("%s: %s (build it first)", vigild, strerror(errno));
    int pairs = seconds;   /* 2 fps: one pair per second */
    printf("bench_daemon: %s, %d s of video at 2 fps (%d pairs) per budget, vigild %s\n", model_abs, seconds, pairs,
           vigild);

    result res[4];
    int nres = 0;
    char *save = NULL;
    for (char *b = strtok_r(budgets_arg, ",", &save); b && nres < 4; b = strtok_r(NULL, ",", &save)) {
        result *r = &res[nres++];
        memset(r, 0, sizeof *r);
        r->budget = atoi(b);
        int side = (int)lround(sqrt(r->budget * 1024.0) / 32) * 32;   /* 64 -> 256 px, 256 -> 512 px */
        if (side * side / 1024 != r->budget) die("budget %d: use a square number of tokens x 1024 px", r->budget);
        daemon_run d;
        char extra[512];
        snprintf(extra, sizeof extra,
                 "\"sources\": {\"allowed_protocols\": \"file\"},\n"
                 " \"limits\": {\"max_tokens\": 64, \"default_max_tokens\": 16},\n"
                 " \"memory\": {\"query_reserve_tokens\": 512},\n"
                 " \"stream_defaults\": {\"min_tokens_per_pair\": %d, \"max_tokens_per_pair\": %d, \"cache_tokens\": 65536}",
                 r->budget, r->budget);
        start_daemon(&d, vigild, model_abs, threads, extra);
        char clip[400], cmd[1024];
        snprintf(clip, sizeof clip, "%s/clip.mp4", d.dir);
        snprintf(cmd, sizeof cmd, "ffmpeg -nostdin -v error -y -f lavfi -i testsrc2=size=%dx%d:rate=4 -t %d "
                 "-c:v libx264 -pix_fmt yuv420p '%s'", side, side, seconds, clip);
        if (system(cmd) != 0) die("ffmpeg failed: %s", cmd);
        char req[1024];
        snprintf(req, sizeof req, "{\"id\":\"a\",\"op\":\"stream.add\",\"stream\":\"cam\",\"url\":\"%s\",\"fps\":2}", clip);
        cJSON *rr = call(d.ep, req, 600000);
        if (!ok(rr)) die("stream.add failed; see %s", d.log);
        cJSON_Delete(rr);
        /* sustained ingest: from the first pair to the last */
        double t_first = -1, t_last = -1;
        int first_n = 0, last_n = 0;
        double deadline = now_s() + 3600;
        while (now_s() < deadline) {
            cJSON *root;
            cJSON *s = stream_status(&d, &root);
            int n = (int)num(s, "pairs_encoded");
            cJSON_Delete(root);
            if (n >= 1 && t_first < 0) {
                t_first = now_s();
                first_n = n;
            }
            if (n >= pairs) {
                t_last = now_s();
                last_n = n;
                break;
            }
            usleep(100000);
        }
        if (t_last < 0) die("the daemon did not ingest %d pairs in an hour", pairs);
        r->pairs = last_n;
        r->pairs_per_s = t_last > t_first ? (last_n - first_n) / (t_last - t_first) : 0;
        /* questions on the cached minute */
        double ttft[3], total[3];
        for (int i = 0; i < 3; i++) {
            cJSON *q = call(d.ep, "{\"id\":\"q\",\"op\":\"query\",\"stream\":\"cam\",\"prompt\":\"What happens in the "
                                  "video?\",\"max_tokens\":4,\"stream_tokens\":false}", 600000);
            if (!ok(q)) die("query failed; see %s", d.log);
            cJSON *tm = cJSON_GetObjectItemCaseSensitive(q, "timing"), *u = cJSON_GetObjectItemCaseSensitive(q, "usage");
            ttft[i] = num(tm, "ttft_ms");
            total[i] = num(tm, "total_ms");
            r->prompt_tokens = num(u, "prompt_tokens");
            r->cached_tokens = num(u, "cached_tokens");
            cJSON_Delete(q);
        }
        qsort(ttft, 3, sizeof ttft[0], cmp_d);
        qsort(total, 3, sizeof total[0], cmp_d);
        r->ttft_ms = ttft[1];
        r->total_ms = total[1];
        r->rss_kb = proc_kb(d.pid, "VmRSS:");
        r->hwm_kb = proc_kb(d.pid, "VmHWM:");
        printf("budget %d tokens/pair (%dx%d px): ingested %d pairs at %.2f pairs/s; TTFT %.0f ms (answer of 4 "
               "tokens %.0f ms) over %.0f tokens (%.0f cached); vigild RSS %.0f MiB (peak %.0f MiB)\n",
               r->budget, side, side, r->pairs, r->pairs_per_s, r->ttft_ms, r->total_ms, r->prompt_tokens,
               r->cached_tokens, r->rss_kb / 1024.0, r->hwm_kb / 1024.0);
        fflush(stdout);
        stop_daemon(&d);
    }

    /* the stateless alternative, in this process (the daemon is gone: the cores are free) */
    checkpoint *ck = NULL;
    model *m = NULL;
    tokenizer *tok = NULL;
    char err[512], path[PATH_MAX + 32];
    if (checkpoint_open(model_abs, &ck, err, sizeof err) != 0) die("%s", err);
    snprintf(path, sizeof path, "%s/tokenizer.json", model_abs);
    if (tok_load(path, &tok, err, sizeof err) != 0) die("%s", err);
    model_options mo = { .compute = MODEL_COMPUTE_BF16, .num_threads = threads };
    if (model_create(ck, &mo, &m, err, sizeof err) != 0) die("%s", err);
    for (int i = 0; i < nres; i++) {
        result *r = &res[i];
        int side = (int)lround(sqrt(r->budget * 1024.0) / 32) * 32;
        run_baseline(m, tok, pairs, r->budget, side, &r->base);
        printf("budget %d: full re-prefill of %d tokens %.1f s; re-encoding %d pairs %.1f s (%.2f s each)\n", r->budget,
               r->base.tokens, r->base.prefill_s, pairs, pairs * r->base.pair_vision_s, r->base.pair_vision_s);
        fflush(stdout);
    }
    model_destroy(m);
    tok_free(tok);
    checkpoint_close(ck);

    printf("\n| tokens/pair | context (60 s) | TTFT, incremental cache | full re-prefill | + re-encode frames | speed-up "
           "| sustained ingest | real time at 2 fps | vigild RSS |\n|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < nres; i++) {
        result *r = &res[i];
        double full = r->base.prefill_s + pairs * r->base.pair_vision_s;
        printf("| %d | %.0f tokens | %.0f ms | %.1f s | %.1f s | %.0fx (%.0fx with encode) | %.2f pairs/s | %s | %.0f MiB |\n",
               r->budget, r->prompt_tokens, r->ttft_ms, r->base.prefill_s, full, r->base.prefill_s * 1000 / r->ttft_ms,
               full * 1000 / r->ttft_ms, r->pairs_per_s, r->pairs_per_s >= 1.0 ? "yes" : "no (drops pairs)",
               r->rss_kb / 1024.0);
    }
    return 0;
}
