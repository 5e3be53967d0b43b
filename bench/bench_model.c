/* bench_model.c — speed of the Qwen3-VL forward on a checkpoint with real shapes (e.g. the 2B
 * preset of vigil-gen-checkpoint), next to the measured ceilings of this machine:
 *   - compute ceiling: a oneDNN bf16 GEMM of 2048^3 (the same primitive path the model uses);
 *   - memory ceiling: a streaming read of 1 GiB with the same number of threads.
 * Reported: ViT ms per frame pair at 64, 256 and 720 merged tokens (with GFLOP/s and the ratio
 * to the GEMM rate), prefill tokens/s for 512 tokens into an empty 4096-slot cache and with
 * 3584 tokens already cached, decode tokens/s at 4096 cached tokens (with the bandwidth bound:
 * weight + KV bytes per token / measured bandwidth), and peak RSS.
 * Usage: bench_model CHECKPOINT_DIR [--threads N] [--compute bf16|f32] [--quick]
 *                    [--vision-only | --text-only] */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "model/dnnl_ops.h"
#include "model/model.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double peak_rss_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

/* The two ceilings, kept ready so they can be re-measured next to every figure: on a shared
 * machine the load changes during a run, and a ratio is only fair against the ceiling of the
 * same moment (each figure is printed with the mean of the ceilings measured just before and
 * just after it). */
typedef struct ceilings {
    vl_dnnl *d;
    vl_linear l;              /* 2048 x 2048 bf16, packed like the model's weights */
    uint16_t *x;
    float *y;
    uint8_t *buf;             /* 1 GiB for the streaming read */
    size_t bytes;
} ceilings;

static int ceilings_init(ceilings *c) {
    char err[256];
    memset(c, 0, sizeof *c);
    const int n = 2048;
    if (vl_dnnl_create(&c->d, err, sizeof err)) return -1;
    uint16_t *w = malloc((size_t)n * n * 2);
    c->x = malloc((size_t)n * n * 2);
    c->y = malloc((size_t)n * n * sizeof(float));
    c->bytes = (size_t)1 << 30;
    c->buf = vl_big_alloc(c->bytes); /* huge pages, like the weights */
    if (!w || !c->x || !c->y || !c->buf) return -1;
    for (size_t i = 0; i < (size_t)n * n; i++) {
        w[i] = vl_f32_bf16((float)((i * 7919) % 1000) * 1e-3f - 0.5f);
        c->x[i] = vl_f32_bf16((float)((i * 104729) % 1000) * 1e-3f - 0.5f);
    }
    memset(c->buf, 1, c->bytes);
    vl_wpart p = { w, ST_BF16, n, VL_OUT_IN, NULL };
    int rc = vl_linear_init(&c->l, true, n, &p, 1, err, sizeof err);
    free(w);
    return rc;
}

static void ceilings_free(ceilings *c) {
    vl_linear_free(&c->l);
    free(c->x);
    free(c->y);
    vl_big_free(c->buf, c->bytes);
    vl_dnnl_destroy(c->d);
}

/* GFLOP/s of a 2048^3 bf16 GEMM through the model's own matmul path (best of reps). */
static double gemm_rate(ceilings *c, int reps) {
    char err[256];
    const int n = 2048;
    double best = 0.0;
    for (int it = 0; it < reps; it++) {
        double t0 = now();
        if (vl_linear_fwd(c->d, &c->l, n, c->x, n, c->y, n, VL_ACT_NONE, false, err, sizeof err)) return 0.0;
        double r = 2.0 * n * n * n / (now() - t0) / 1e9;
        if (r > best) best = r;
    }
    return best;
}

/* GB/s of a streaming read of 1 GiB by all OpenMP threads (best of reps). */
static double read_bandwidth(ceilings *c, int reps) {
    const uint8_t *buf = c->buf;
    const size_t bytes = c->bytes;
    double best = 0.0;
    volatile float sink = 0.0f;
    for (int it = 0; it < reps; it++) {
        double t0 = now();
        float total = 0.0f;
#pragma omp parallel reduction(+ : total)
        {
            const int nt = omp_get_num_threads(), id = omp_get_thread_num();
            const size_t per = bytes / 64 / nt * 64, a = per * id, b = id == nt - 1 ? bytes / 64 * 64 : a + per;
            __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
            size_t i = a;
            for (; i + 256 <= b; i += 256) {
                s0 = _mm512_add_ps(s0, _mm512_load_ps((const float *)(buf + i)));
                s1 = _mm512_add_ps(s1, _mm512_load_ps((const float *)(buf + i + 64)));
                s2 = _mm512_add_ps(s2, _mm512_load_ps((const float *)(buf + i + 128)));
                s3 = _mm512_add_ps(s3, _mm512_load_ps((const float *)(buf + i + 192)));
            }
            total += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
        }
        double r = (double)bytes / (now() - t0) / 1e9;
        sink += total;
        if (r > best) best = r;
    }
    (void)sink;
    return best;
}

static long vit_flops(const model_config *c, long N) {
    const long D = c->vision.hidden_size, I = c->vision.intermediate_size, OUT = c->vision.out_hidden_size;
    const long D4 = D * c->vision.spatial_merge_size * c->vision.spatial_merge_size, T = N / 4;
    const long pd = (long)c->vision.in_channels * c->vision.temporal_patch_size * c->vision.patch_size * c->vision.patch_size;
    long f = 2 * N * pd * D;
    f += (long)c->vision.depth * (2 * N * (3 * D * D + D * D + 2 * D * I) + 4 * N * N * D);
    f += (1 + c->vision.num_deepstack) * 2 * T * (D4 * D4 + D4 * OUT);
    return f;
}

static double text_linear_params(const model_config *c) {
    const model_text_config *t = &c->text;
    const double H = t->hidden_size, hd = t->head_dim;
    double attn = H * hd * (t->num_attention_heads * 2 + t->num_key_value_heads * 2);
    double mlp = t->num_experts ? 3.0 * H * t->moe_intermediate_size * t->num_experts_per_tok + H * t->num_experts
                                : 3.0 * H * t->intermediate_size;
    return t->num_hidden_layers * (attn + mlp);
}

static double prefill_flops(const model_config *c, int n, int cached) {
    const model_text_config *t = &c->text;
    double f = 2.0 * n * text_linear_params(c);
    /* scores and values over cached + causal batch keys */
    double keys = (double)n * cached + (double)n * (n + 1) / 2.0;
    f += t->num_hidden_layers * 4.0 * keys * t->head_dim * t->num_attention_heads;
    f += 2.0 * t->hidden_size * t->vocab_size; /* lm_head for the last row */
    return f;
}

static int fill(model *m, model_kv *kv, int from, int n, int *next, uint64_t *rng, float *logits, double *secs) {
    char err[512];
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    model_pos *pos = malloc(sizeof(model_pos) * (size_t)n);
    if (!ids || !pos) return -1;
    for (int i = 0; i < n; i++) {
        *rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL;
        ids[i] = (int32_t)(1000 + (*rng >> 33) % 100000);
    }
    model_pos_text(next, n, pos);
    (void)from;
    double t0 = now();
    int rc = model_forward_append(m, kv, ids, pos, n, NULL, logits, err, sizeof err);
    if (secs) *secs = now() - t0;
    if (rc) fprintf(stderr, "forward: %s\n", err);
    free(ids);
    free(pos);
    return rc;
}

int main(int argc, char **argv) {
    /* The passive OpenMP wait policy the daemon uses too, unless the caller chose one. */
    model_runtime_prepare(argv);
    const char *dir = NULL;
    int threads = 2;
    bool quick = false, vision = true, text = true;
    model_compute compute = MODEL_COMPUTE_BF16;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--compute") && i + 1 < argc) compute = !strcmp(argv[++i], "f32") ? MODEL_COMPUTE_F32 : MODEL_COMPUTE_BF16;
        else if (!strcmp(argv[i], "--quick")) quick = true;
        else if (!strcmp(argv[i], "--vision-only")) text = false;
        else if (!strcmp(argv[i], "--text-only")) vision = false;
        else if (argv[i][0] != '-') dir = argv[i];
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "usage: %s CHECKPOINT_DIR [--threads N] [--compute bf16|f32] [--quick]\n"
                        "  (make one with: build/bin/vigil-gen-checkpoint --preset 2b --out DIR)\n", argv[0]);
        return 2;
    }
    omp_set_num_threads(threads);
    printf("bench_model: %s, %d threads, %s compute, OMP_WAIT_POLICY=%s\n", dir, threads,
           compute == MODEL_COMPUTE_BF16 ? "bf16" : "f32", getenv("OMP_WAIT_POLICY"));
    ceilings ceil;
    if (ceilings_init(&ceil)) {
        fprintf(stderr, "out of memory for the ceiling measurements\n");
        return 1;
    }
    gemm_rate(&ceil, 2); /* warm-up: primitive creation, page faults */
    printf("ceiling  bf16 GEMM 2048^3 (oneDNN):    %8.1f GFLOP/s\n", gemm_rate(&ceil, 8));
    printf("ceiling  streaming read 1 GiB:          %8.1f GB/s\n", read_bandwidth(&ceil, 6));
    printf("(each figure below is compared with the ceiling re-measured around it)\n");

    char err[512];
    checkpoint *ck;
    double t0 = now();
    if (checkpoint_open(dir, &ck, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    model_options o = { .compute = compute, .num_threads = threads };
    model *m;
    if (model_create(ck, &o, &m, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const model_config *cfg = model_get_config(m);
    printf("load     %.1f s, %.2f GB of prepared weights, peak RSS %.0f MiB (incl. 1 GiB probe)\n",
           now() - t0, (double)model_weight_bytes(m) / 1e9, peak_rss_mib());

    /* ---- vision: one frame pair per call, as the daemon encodes them ---- */
    const int merged[3][2] = { { 8, 8 }, { 16, 16 }, { 24, 30 } }; /* 64, 256, 720 tokens */
    const int PD = model_patch_dim(cfg);
    for (int k = 0; vision && k < 3; k++) {
        model_grid g = { 1, merged[k][0] * 2, merged[k][1] * 2 };
        const long N = model_grid_patches(&g);
        float *rows = malloc(sizeof(float) * (size_t)N * PD);
        for (long i = 0; i < N * PD; i++) rows[i] = sinf((float)i * 0.001f);
        model_vision_out vo;
        double best = 1e30;
        double gemm = gemm_rate(&ceil, 4);
        const int reps = quick ? 2 : 3;
        for (int r = 0; r < reps; r++) {
            double t = now();
            if (model_vision_encode(m, rows, (size_t)N, &g, 1, &vo, err, sizeof err)) {
                fprintf(stderr, "vision: %s\n", err);
                return 1;
            }
            t = now() - t;
            model_vision_out_free(&vo);
            if (r > 0 && t < best) best = t;
        }
        gemm = 0.5 * (gemm + gemm_rate(&ceil, 4));
        const double gf = (double)vit_flops(cfg, N) / best / 1e9;
        printf("vision   %3ld tokens (%4ld patches): %8.1f ms/pair  %6.1f GFLOP/s  %5.1f%% of GEMM (%.0f)\n",
               model_grid_tokens(cfg, &g), N, best * 1e3, gf, 100.0 * gf / gemm, gemm);
        free(rows);
    }

    if (!text) {
        printf("memory   peak RSS %.0f MiB (incl. the 1 GiB bandwidth probe)\n", peak_rss_mib());
        ceilings_free(&ceil);
        model_destroy(m);
        checkpoint_close(ck);
        return 0;
    }
    /* ---- prefill and decode ---- */
    const int V = cfg->text.vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)V);
    uint64_t rng = 1;
    int next = 0;
    model_kv *kv;
    if (model_kv_create(m, 4096 + 16, &kv, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    double secs;
    if (fill(m, kv, 0, 512, &next, &rng, logits, &secs)) return 1; /* warm-up: primitives */
    model_kv_truncate(kv, 0);
    next = 0;
    double gemm = gemm_rate(&ceil, 4);
    if (fill(m, kv, 0, 512, &next, &rng, logits, &secs)) return 1;
    gemm = 0.5 * (gemm + gemm_rate(&ceil, 4));
    double pf = prefill_flops(cfg, 512, 0) / secs / 1e9;
    printf("prefill  512 tokens, empty 4096-slot cache: %7.1f tok/s  %6.1f GFLOP/s  %5.1f%% of GEMM (%.0f)\n",
           512 / secs, pf, 100.0 * pf / gemm, gemm);
    if (!quick) {
        for (int c = 512; c < 3584; c += 512)
            if (fill(m, kv, c, 512, &next, &rng, logits, NULL)) return 1;
        gemm = gemm_rate(&ceil, 4);
        if (fill(m, kv, 3584, 512, &next, &rng, logits, &secs)) return 1;
        gemm = 0.5 * (gemm + gemm_rate(&ceil, 4));
        pf = prefill_flops(cfg, 512, 3584) / secs / 1e9;
        printf("prefill  512 tokens after 3584 cached:      %7.1f tok/s  %6.1f GFLOP/s  %5.1f%% of GEMM (%.0f)\n",
               512 / secs, pf, 100.0 * pf / gemm, gemm);
    }
    /* decode at 4096 cached (or what is cached in quick mode) */
    const int cached = model_kv_seq_len(kv);
    double dt = 0.0;
    const int steps = 8;
    double bw = read_bandwidth(&ceil, 3);
    for (int s = 0; s < steps + 1; s++) {
        double t;
        if (fill(m, kv, cached + s, 1, &next, &rng, logits, &t)) return 1;
        if (s > 0) dt += t;
    }
    dt /= steps;
    bw = 0.5 * (bw + read_bandwidth(&ceil, 3));
    const double kv_bytes = (double)model_kv_bytes_per_slot(kv) * (cached + steps / 2);
    const double tl = text_linear_params(cfg) * (compute == MODEL_COMPUTE_BF16 ? 2 : 4);
    const double head = (double)cfg->text.hidden_size * V * (compute == MODEL_COMPUTE_BF16 ? 2 : 4);
    const double bytes = tl + head + kv_bytes;
    const double bound = bytes / (bw * 1e9);
    printf("decode   at %d cached: %7.2f ms/token = %6.2f tok/s; reads %.2f GB/token (weights %.2f + KV %.2f) "
           "-> bound %.2f ms at %.1f GB/s: %5.1f%% of the bandwidth bound\n",
           cached, dt * 1e3, 1.0 / dt, bytes / 1e9, (tl + head) / 1e9, kv_bytes / 1e9, bound * 1e3, bw,
           100.0 * bound / dt);
    printf("memory   peak RSS %.0f MiB, i.e. %.0f MiB without the bench's 1 GiB bandwidth probe "
           "(KV cache %d slots x %zu KiB)\n", peak_rss_mib(), peak_rss_mib() - 1024.0,
           model_kv_capacity(kv), model_kv_bytes_per_slot(kv) / 1024);
    model_kv_destroy(kv);
    free(logits);
    model_destroy(m);
    checkpoint_close(ck);
    ceilings_free(&ceil);
    return 0;
}
