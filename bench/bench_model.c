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

/* GFLOP/s of y[M,N] = x[M,K] W[K,N] in bf16 through the model's own matmul path. */
static double gemm_rate(int M, int K, int N) {
    char err[256];
    vl_dnnl *d;
    if (vl_dnnl_create(&d, err, sizeof err)) return 0.0;
    uint16_t *w = calloc((size_t)K * N, 2), *x = calloc((size_t)M * K, 2);
    float *y = calloc((size_t)M * N, sizeof(float));
    for (size_t i = 0; i < (size_t)K * N; i++) w[i] = vl_f32_bf16((float)((i * 7919) % 1000) * 1e-3f - 0.5f);
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = vl_f32_bf16((float)((i * 104729) % 1000) * 1e-3f - 0.5f);
    vl_linear l;
    vl_wpart p = { w, ST_BF16, N, VL_OUT_IN, NULL };
    double best = 0.0;
    if (vl_linear_init(&l, true, K, &p, 1, err, sizeof err) == 0) {
        for (int it = 0; it < 8; it++) {
            double t0 = now();
            if (vl_linear_fwd(d, &l, M, x, K, y, N, VL_ACT_NONE, false, err, sizeof err)) break;
            double r = 2.0 * M * K * N / (now() - t0) / 1e9;
            if (it > 0 && r > best) best = r;
        }
        vl_linear_free(&l);
    }
    free(w);
    free(x);
    free(y);
    vl_dnnl_destroy(d);
    return best;
}

/* GB/s of a streaming read of `bytes` by all OpenMP threads (best of several passes). */
static double read_bandwidth(size_t bytes) {
    uint8_t *buf = vl_big_alloc(bytes); /* huge pages, like the weights */
    if (!buf) return 0.0;
    memset(buf, 1, bytes);
    double best = 0.0;
    volatile float sink = 0.0f;
    for (int it = 0; it < 6; it++) {
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
        if (it > 0 && r > best) best = r;
    }
    (void)sink;
    vl_big_free(buf, bytes);
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
    /* OpenMP threads that spin at barriers lose badly whenever anything else wants the two
     * cores (ingest, other processes): decode ran 5x slower on a busy machine. libgomp reads
     * the policy once at load, so the bench re-executes itself with the passive policy the
     * daemon should use too, unless the caller chose one. */
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        execv("/proc/self/exe", argv);
    }
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
    const double gemm = gemm_rate(2048, 2048, 2048);
    const double bw = read_bandwidth((size_t)1 << 30);
    printf("ceiling  bf16 GEMM 2048^3 (oneDNN): %8.1f GFLOP/s\n", gemm);
    printf("ceiling  streaming read 1 GiB:      %8.1f GB/s\n", bw);

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
    printf("load     %.1f s, %.2f GB of prepared weights, peak RSS %.0f MiB\n", now() - t0,
           (double)model_weight_bytes(m) / 1e9, peak_rss_mib());

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
        const double gf = (double)vit_flops(cfg, N) / best / 1e9;
        printf("vision   %3ld tokens (%4ld patches): %8.1f ms/pair  %6.1f GFLOP/s  %5.1f%% of GEMM\n",
               model_grid_tokens(cfg, &g), N, best * 1e3, gf, 100.0 * gf / gemm);
        free(rows);
    }

    if (!text) {
        printf("memory   peak RSS %.0f MiB\n", peak_rss_mib());
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
    if (fill(m, kv, 0, 512, &next, &rng, logits, &secs)) return 1;
    double pf = prefill_flops(cfg, 512, 0) / secs / 1e9;
    printf("prefill  512 tokens, empty 4096-slot cache: %7.1f tok/s  %6.1f GFLOP/s  %5.1f%% of GEMM\n",
           512 / secs, pf, 100.0 * pf / gemm);
    if (!quick) {
        for (int c = 512; c < 3584; c += 512)
            if (fill(m, kv, c, 512, &next, &rng, logits, NULL)) return 1;
        if (fill(m, kv, 3584, 512, &next, &rng, logits, &secs)) return 1;
        pf = prefill_flops(cfg, 512, 3584) / secs / 1e9;
        printf("prefill  512 tokens after 3584 cached:      %7.1f tok/s  %6.1f GFLOP/s  %5.1f%% of GEMM\n",
               512 / secs, pf, 100.0 * pf / gemm);
    }
    /* decode at 4096 cached (or what is cached in quick mode) */
    const int cached = model_kv_seq_len(kv);
    double dt = 0.0;
    const int steps = 8;
    for (int s = 0; s < steps + 1; s++) {
        double t;
        if (fill(m, kv, cached + s, 1, &next, &rng, logits, &t)) return 1;
        if (s > 0) dt += t;
    }
    dt /= steps;
    const double kv_bytes = (double)model_kv_bytes_per_slot(kv) * (cached + steps / 2);
    const double tl = text_linear_params(cfg) * (compute == MODEL_COMPUTE_BF16 ? 2 : 4);
    const double head = (double)cfg->text.hidden_size * V * (compute == MODEL_COMPUTE_BF16 ? 2 : 4);
    const double bytes = tl + head + kv_bytes;
    const double bound = bytes / (bw * 1e9);
    printf("decode   at %d cached: %7.2f ms/token = %6.2f tok/s; reads %.2f GB/token (weights %.2f + KV %.2f) "
           "-> bound %.2f ms at %.1f GB/s: %5.1f%% of the bandwidth bound\n",
           cached, dt * 1e3, 1.0 / dt, bytes / 1e9, (tl + head) / 1e9, kv_bytes / 1e9, bound * 1e3, bw,
           100.0 * bound / dt);
    printf("memory   peak RSS %.0f MiB (KV cache %d slots x %zu KiB)\n", peak_rss_mib(), model_kv_capacity(kv),
           model_kv_bytes_per_slot(kv) / 1024);
    model_kv_destroy(kv);
    free(logits);
    model_destroy(m);
    checkpoint_close(ck);
    return 0;
}
