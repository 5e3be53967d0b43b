/* vigil-run — ask a Qwen3-VL checkpoint one question about one image or video, offline.
 *
 *   vigil-run --model DIR (--image FILE | --video FILE) --prompt TEXT [options]
 *
 * Decodes the media with FFmpeg (ingest/), samples a video exactly as the upstream video
 * processor does (so the answer matches transformers on the same file), encodes every frame
 * pair with the vision tower, prefills the chat prompt and streams the answer to stdout.
 * Timings go to stderr. It is the first thing a user with a downloaded checkpoint runs. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ingest/ingest.h"
#include "model/chat.h"
#include "model/model.h"

#define ERRLEN 512

typedef struct run_args {
    const char *model_dir;
    const char *image;
    const char *video;
    const char *prompt;
    const char *system;
    model_compute compute;
    int threads;
    int max_tokens;
    int prefill_chunk;
    bool think;
    double fps;
    long min_pixels, max_pixels;
    model_sampling sampling;
    const char *stops[16];
    int n_stops;
    bool quiet;
    bool autorotate;
} run_args;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: vigil-run --model DIR (--image FILE | --video FILE) --prompt TEXT [options]\n"
        "\n"
        "Answers one question about an image or a video with a Qwen3-VL checkpoint folder as\n"
        "published on Hugging Face (config.json, *.safetensors, tokenizer.json).\n"
        "The answer streams to stdout; timings go to stderr.\n"
        "\n"
        "media:\n"
        "  --image FILE            a still image (any format FFmpeg decodes)\n"
        "  --video FILE            a video file, sampled like the upstream video processor\n"
        "  --fps F                 video sampling rate (default: the checkpoint's, 2)\n"
        "  --min-pixels N          per-image/clip pixel budget floor (default: the checkpoint's)\n"
        "  --max-pixels N          per-image/clip pixel budget ceiling (default: the checkpoint's)\n"
        "  --autorotate            apply a phone video's rotation metadata (upstream readers\n"
        "                          do not, so it is off to give transformers' answer)\n"
        "prompt:\n"
        "  --prompt TEXT           the question\n"
        "  --system TEXT           a system turn (none by default, like upstream)\n"
        "  --think                 open the answer with <think> (Thinking checkpoints)\n"
        "generation:\n"
        "  --max-tokens N          default 256\n"
        "  --temperature F         0 = greedy (default)\n"
        "  --top-k N  --top-p F  --min-p F\n"
        "  --repetition-penalty F  --presence-penalty F\n"
        "  --seed N                sampling seed (default 0)\n"
        "  --stop STR              stop string (repeatable, up to 16)\n"
        "compute:\n"
        "  --compute bf16|f32      bf16 weights on bf16 kernels (default), or f32 (exact)\n"
        "  --threads N             math threads (default: all CPUs)\n"
        "  --prefill-chunk N       tokens per prefill step (default 512)\n"
        "  --quiet                 no timings on stderr\n"
        "\n"
        "exit status: 0 answered, 1 model/media error, 2 usage error\n");
}

static int parse_args(int argc, char **argv, run_args *a)
{
    memset(a, 0, sizeof *a);
    a->compute = MODEL_COMPUTE_BF16;
    a->max_tokens = 256;
    a->prefill_chunk = 512;
    a->sampling = model_sampling_default();
    enum { O_MODEL = 256, O_IMAGE, O_VIDEO, O_PROMPT, O_SYSTEM, O_COMPUTE, O_THREADS, O_MAXTOK,
           O_TEMP, O_TOPK, O_TOPP, O_MINP, O_REP, O_PRES, O_SEED, O_STOP, O_FPS, O_MINPX,
           O_MAXPX, O_CHUNK, O_THINK, O_QUIET, O_ROTATE, O_HELP };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL}, {"image", required_argument, 0, O_IMAGE},
        {"video", required_argument, 0, O_VIDEO}, {"prompt", required_argument, 0, O_PROMPT},
        {"system", required_argument, 0, O_SYSTEM}, {"compute", required_argument, 0, O_COMPUTE},
        {"threads", required_argument, 0, O_THREADS}, {"max-tokens", required_argument, 0, O_MAXTOK},
        {"temperature", required_argument, 0, O_TEMP}, {"top-k", required_argument, 0, O_TOPK},
        {"top-p", required_argument, 0, O_TOPP}, {"min-p", required_argument, 0, O_MINP},
        {"repetition-penalty", required_argument, 0, O_REP},
        {"presence-penalty", required_argument, 0, O_PRES}, {"seed", required_argument, 0, O_SEED},
        {"stop", required_argument, 0, O_STOP}, {"fps", required_argument, 0, O_FPS},
        {"min-pixels", required_argument, 0, O_MINPX}, {"max-pixels", required_argument, 0, O_MAXPX},
        {"prefill-chunk", required_argument, 0, O_CHUNK}, {"think", no_argument, 0, O_THINK},
        {"quiet", no_argument, 0, O_QUIET}, {"autorotate", no_argument, 0, O_ROTATE}, {"help", no_argument, 0, O_HELP}, {0, 0, 0, 0}};
    int c;
    char *end;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        errno = 0;
        end = NULL;
        switch (c) {
        case O_MODEL: a->model_dir = optarg; break;
        case O_IMAGE: a->image = optarg; break;
        case O_VIDEO: a->video = optarg; break;
        case O_PROMPT: a->prompt = optarg; break;
        case O_SYSTEM: a->system = optarg; break;
        case O_COMPUTE:
            if (strcmp(optarg, "bf16") == 0) a->compute = MODEL_COMPUTE_BF16;
            else if (strcmp(optarg, "f32") == 0) a->compute = MODEL_COMPUTE_F32;
            else { fprintf(stderr, "vigil-run: --compute takes bf16 or f32, not '%s'\n", optarg); return -1; }
            break;
        case O_THREADS: a->threads = (int)strtol(optarg, &end, 10); break;
        case O_MAXTOK: a->max_tokens = (int)strtol(optarg, &end, 10); break;
        case O_CHUNK: a->prefill_chunk = (int)strtol(optarg, &end, 10); break;
        case O_TEMP: a->sampling.temperature = strtof(optarg, &end); break;
        case O_TOPK: a->sampling.top_k = (int)strtol(optarg, &end, 10); break;
        case O_TOPP: a->sampling.top_p = strtof(optarg, &end); break;
        case O_MINP: a->sampling.min_p = strtof(optarg, &end); break;
        case O_REP: a->sampling.repetition_penalty = strtof(optarg, &end); break;
        case O_PRES: a->sampling.presence_penalty = strtof(optarg, &end); break;
        case O_SEED: a->sampling.seed = strtoull(optarg, &end, 10); break;
        case O_FPS: a->fps = strtod(optarg, &end); break;
        case O_MINPX: a->min_pixels = strtol(optarg, &end, 10); break;
        case O_MAXPX: a->max_pixels = strtol(optarg, &end, 10); break;
        case O_STOP:
            if (a->n_stops == 16) { fprintf(stderr, "vigil-run: at most 16 --stop strings\n"); return -1; }
            a->stops[a->n_stops++] = optarg;
            break;
        case O_THINK: a->think = true; break;
        case O_QUIET: a->quiet = true; break;
        case O_ROTATE: a->autorotate = true; break;
        case O_HELP: usage(stdout); exit(0);
        default: return -1;
        }
        if (end && (*end != '\0' || end == optarg || errno)) {
            fprintf(stderr, "vigil-run: bad number '%s' for --%s\n", optarg, opts[c - O_MODEL].name);
            return -1;
        }
    }
    if (optind < argc) { fprintf(stderr, "vigil-run: unexpected argument '%s'\n", argv[optind]); return -1; }
    if (!a->model_dir) { fprintf(stderr, "vigil-run: --model DIR is required\n"); return -1; }
    if (!a->prompt) { fprintf(stderr, "vigil-run: --prompt TEXT is required\n"); return -1; }
    if (!a->image == !a->video) { fprintf(stderr, "vigil-run: give exactly one of --image FILE or --video FILE\n"); return -1; }
    if (a->max_tokens < 1 || a->max_tokens > 1000000) { fprintf(stderr, "vigil-run: --max-tokens must be 1..1000000\n"); return -1; }
    if (a->prefill_chunk < 1) { fprintf(stderr, "vigil-run: --prefill-chunk must be >= 1\n"); return -1; }
    if (a->fps < 0 || a->min_pixels < 0 || a->max_pixels < 0) { fprintf(stderr, "vigil-run: --fps/--min-pixels/--max-pixels must be positive\n"); return -1; }
    return 0;
}

/* The decoded media: frame pairs, already resized under the budget. */
typedef struct media {
    ingest_pair **pairs;
    int n_pairs;
    bool is_image;
} media;

static void media_free(media *md)
{
    for (int i = 0; i < md->n_pairs; i++) ingest_pair_free(md->pairs[i]);
    free(md->pairs);
}

/* Local files are what this tool is for, so "file" is allowed here (unlike in the daemon,
 * where a remote client names the URL). */
static void media_options(const run_args *a, const model_config *cfg, ingest_options *opt)
{
    ingest_options_init(opt);
    snprintf(opt->protocols, sizeof opt->protocols, "file");
    opt->sampling = INGEST_SAMPLE_UPSTREAM;
    opt->queue_policy = INGEST_QUEUE_BLOCK;
    opt->autorotate = a->autorotate;
    opt->fps = a->fps > 0 ? a->fps : (cfg->processor.video_fps > 0 ? cfg->processor.video_fps : 2.0);
    if (cfg->processor.video_min_frames > 0) opt->min_frames = cfg->processor.video_min_frames;
    if (cfg->processor.video_max_frames > 0) opt->max_frames = cfg->processor.video_max_frames;
    if (cfg->processor.video_min_pixels > 0) opt->clip_min_pixels = cfg->processor.video_min_pixels;
    if (cfg->processor.video_max_pixels > 0) opt->clip_max_pixels = cfg->processor.video_max_pixels;
    if (cfg->processor.image_min_pixels > 0) opt->image_min_pixels = cfg->processor.image_min_pixels;
    if (cfg->processor.image_max_pixels > 0) opt->image_max_pixels = cfg->processor.image_max_pixels;
    if (a->min_pixels > 0) opt->clip_min_pixels = opt->image_min_pixels = a->min_pixels;
    if (a->max_pixels > 0) opt->clip_max_pixels = opt->image_max_pixels = a->max_pixels;
}

static int media_load(const run_args *a, const model_config *cfg, media *md, char *err, size_t errlen)
{
    ingest_options opt;
    media_options(a, cfg, &opt);
    memset(md, 0, sizeof *md);
    if (a->image) {
        md->pairs = calloc(1, sizeof *md->pairs);
        if (!md->pairs) { snprintf(err, errlen, "out of memory"); return -1; }
        if (ingest_image_load(a->image, &opt, &md->pairs[0], err, errlen) != 0) return -1;
        md->n_pairs = 1;
        md->is_image = true;
        return 0;
    }
    ingest_source *src = NULL;
    if (ingest_source_create(&src, a->video, &opt, err, errlen) != 0) return -1;
    if (ingest_source_start(src, err, errlen) != 0) { ingest_source_destroy(src); return -1; }
    int cap = 0, rc;
    ingest_pair *p;
    while ((rc = ingest_source_pop(src, &p, 1000)) != INGEST_EOF) {
        if (rc == INGEST_EAGAIN) continue;
        if (md->n_pairs == cap) {
            cap = cap ? cap * 2 : 16;
            ingest_pair **grown = realloc(md->pairs, (size_t)cap * sizeof *grown);
            if (!grown) { ingest_pair_free(p); media_free(md); ingest_source_destroy(src); snprintf(err, errlen, "out of memory"); return -1; }
            md->pairs = grown;
        }
        md->pairs[md->n_pairs++] = p;
    }
    ingest_state st = ingest_source_state(src);
    if (md->n_pairs == 0 || st == INGEST_STATE_FAILED) {
        char why[256];
        ingest_source_last_error(src, why, sizeof why);
        snprintf(err, errlen, "%s: no frames could be decoded%s%s", a->video, why[0] ? ": " : "", why);
        media_free(md);
        ingest_source_destroy(src);
        return -1;
    }
    ingest_source_destroy(src);
    return 0;
}

/* Streams the answer as it is decoded. */
static int print_token(void *ctx, int32_t id, const char *text, size_t len)
{
    (void)ctx;
    (void)id;
    if (len) {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv)
{
    model_runtime_prepare(argv);
    run_args a;
    if (parse_args(argc, argv, &a) != 0) { fprintf(stderr, "Try 'vigil-run --help'.\n"); return 2; }

    char err[ERRLEN] = "";
    int status = 1;
    checkpoint *ck = NULL;
    model *m = NULL;
    tokenizer *tok = NULL;
    model_kv *kv = NULL;
    media md = {0};
    float *rows = NULL, *logits = NULL;
    model_vision_out *vis = NULL;
    chat_format cf;
    chat_prompt cp;
    chat_prompt_init(&cp);
    model_pos *pos = NULL;
    int32_t *slots = NULL;
    model_generate_result res = {0};

    double t_start = now_s();
    if (checkpoint_open(a.model_dir, &ck, err, sizeof err) != 0) goto fail;
    const model_config *cfg = &ck->config;
    model_options mo = {.compute = a.compute, .num_threads = a.threads};
    if (model_create(ck, &mo, &m, err, sizeof err) != 0) goto fail;
    char tok_path[PATH_MAX];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", a.model_dir);
    if (tok_load(tok_path, &tok, err, sizeof err) != 0) goto fail;
    double t_loaded = now_s();

    if (media_load(&a, cfg, &md, err, sizeof err) != 0) goto fail;
    double t_decoded = now_s();

    /* Vision: one frame pair at a time (attention never crosses pairs, so this is exact). */
    vis = calloc((size_t)md.n_pairs, sizeof *vis);
    if (!vis) { snprintf(err, sizeof err, "out of memory"); goto fail; }
    int patch_dim = model_patch_dim(cfg);
    int vis_tokens = 0;
    for (int i = 0; i < md.n_pairs; i++) {
        ingest_pair *p = md.pairs[i];
        size_t n_rows = (size_t)p->grid_t * p->grid_h * p->grid_w;
        float *grown = realloc(rows, n_rows * (size_t)patch_dim * sizeof *rows);
        if (!grown) { snprintf(err, sizeof err, "out of memory"); goto fail; }
        rows = grown;
        const uint8_t *frames[2] = {p->rgb[0], p->rgb[1]};
        model_grid g;
        if (model_patchify(cfg, frames, 2, p->height, p->width, 0, rows, n_rows, &g, err, sizeof err) < 0) goto fail;
        if (model_vision_encode(m, rows, n_rows, &g, 1, &vis[i], err, sizeof err) != 0) goto fail;
        vis_tokens += vis[i].n_tokens;
    }
    double t_vision = now_s();

    /* Prompt: one image block, or one timestamped block per video frame pair. */
    if (chat_format_init(&cf, tok, err, sizeof err) != 0) goto fail;
    if (chat_format_check_config(&cf, cfg, err, sizeof err) != 0) goto fail;
    chat_options co = chat_options_default();
    co.add_generation_prompt = true;
    co.thinking = a.think;
    if (chat_append_prefix(&cf, a.system, a.system ? strlen(a.system) : 0, &co, &cp, err, sizeof err) != 0) goto fail;
    for (int i = 0; i < md.n_pairs; i++) {
        int rc = md.is_image
            ? chat_append_image(&cf, vis[i].n_tokens, &co, &cp, err, sizeof err)
            : chat_append_video_pair(&cf, md.pairs[i]->timestamp, vis[i].n_tokens, i, &cp, err, sizeof err);
        if (rc != 0) goto fail;
    }
    if (chat_append_question(&cf, a.prompt, strlen(a.prompt), &co, &cp, err, sizeof err) != 0) goto fail;
    int n_prompt = (int)cp.n_ids;
    const int32_t *ids = cp.ids;

    /* Positions the upstream way: one grid per image, or the video's grid with t = pairs. */
    pos = malloc((size_t)n_prompt * sizeof *pos);
    if (!pos) { snprintf(err, sizeof err, "out of memory"); goto fail; }
    model_grid grid = {md.n_pairs, md.pairs[0]->grid_h, md.pairs[0]->grid_w};
    int rope_delta = 0;
    if (model_rope_index(cfg, ids, n_prompt, md.is_image ? &grid : NULL, md.is_image ? 1 : 0,
                         md.is_image ? NULL : &grid, md.is_image ? 0 : 1, pos, &rope_delta,
                         err, sizeof err) != 0) goto fail;

    int capacity = n_prompt + a.max_tokens;
    if (model_kv_create(m, capacity, &kv, err, sizeof err) != 0) goto fail;
    logits = malloc((size_t)cfg->text.vocab_size * sizeof *logits);
    if (!logits) { snprintf(err, sizeof err, "out of memory"); goto fail; }

    /* Prefill in chunks; each chunk consumes the visual rows of the pads it holds. */
    int pair_i = 0, pair_row = 0;
    for (int start = 0; start < n_prompt; start += a.prefill_chunk) {
        int n = n_prompt - start < a.prefill_chunk ? n_prompt - start : a.prefill_chunk;
        /* Rows for this chunk may span pairs; gather them into one contiguous block. */
        int n_pads = 0;
        for (int k = 0; k < n; k++)
            if (ids[start + k] == cfg->image_token_id || ids[start + k] == cfg->video_token_id) n_pads++;
        model_visual_rows vr = {0};
        float *chunk_rows = NULL;
        if (n_pads > 0) {
            int hidden = vis[0].hidden, nds = vis[0].num_deepstack;
            chunk_rows = malloc((size_t)n_pads * hidden * (1 + nds) * sizeof *chunk_rows);
            if (!chunk_rows) { snprintf(err, sizeof err, "out of memory"); goto fail; }
            for (int r = 0; r < n_pads; r++) {
                if (pair_i >= md.n_pairs) { free(chunk_rows); snprintf(err, sizeof err, "prompt has more visual pads than encoded tokens"); goto fail; }
                model_vision_out *vo = &vis[pair_i];
                memcpy(chunk_rows + (size_t)r * hidden, vo->embeds + (size_t)pair_row * hidden, (size_t)hidden * sizeof(float));
                for (int d = 0; d < nds; d++)
                    memcpy(chunk_rows + (size_t)n_pads * hidden * (1 + d) + (size_t)r * hidden,
                           vo->deepstack + ((size_t)d * vo->n_tokens + pair_row) * hidden,
                           (size_t)hidden * sizeof(float));
                if (++pair_row == vo->n_tokens) { pair_i++; pair_row = 0; }
            }
            vr.embeds = chunk_rows;
            vr.deepstack = nds ? chunk_rows + (size_t)n_pads * hidden : NULL;
            vr.deepstack_stride = (size_t)n_pads * hidden;
            vr.n = n_pads;
        }
        int rc = model_forward_append(m, kv, ids + start, pos + start, n, n_pads ? &vr : NULL,
                                      start + n == n_prompt ? logits : NULL, err, sizeof err);
        free(chunk_rows);
        if (rc != 0) goto fail;
    }
    double t_prefill = now_s();

    /* Decode: generated tokens go into the slots after the prompt, text positions continue
     * from max position + 1 (not from the prompt length: visual blocks advance it less). */
    slots = malloc((size_t)a.max_tokens * sizeof *slots);
    if (!slots) { snprintf(err, sizeof err, "out of memory"); goto fail; }
    for (int k = 0; k < a.max_tokens; k++) slots[k] = n_prompt + k;
    int next_pos = n_prompt + rope_delta;
    model_generate_params gp = {
        .sampling = a.sampling, .max_tokens = a.max_tokens, .stop_strings = a.stops,
        .n_stop_strings = a.n_stops, .skip_special = true, .on_token = print_token, .ctx = NULL};
    if (model_generate(m, kv, tok, &gp, ids, (size_t)n_prompt, logits, slots, a.max_tokens,
                       &next_pos, &res, err, sizeof err) != 0) goto fail;
    double t_done = now_s();
    fputc('\n', stdout);
    fflush(stdout);

    if (!a.quiet) {
        double vision_ms = (t_vision - t_decoded) * 1e3;
        fprintf(stderr, "load: %.0f ms (%s compute, %.1f MB weights)\n", (t_loaded - t_start) * 1e3,
                a.compute == MODEL_COMPUTE_F32 ? "f32" : "bf16", (double)model_weight_bytes(m) / 1e6);
        fprintf(stderr, "media: %d %s, %dx%d, decoded in %.0f ms\n", md.n_pairs,
                md.is_image ? "image" : "frame pairs", md.pairs[0]->width, md.pairs[0]->height,
                (t_decoded - t_loaded) * 1e3);
        fprintf(stderr, "vision: %.1f ms per pair (%d visual tokens)\n", vision_ms / md.n_pairs, vis_tokens);
        fprintf(stderr, "prefill: %d tokens, %.1f tokens/s\n", n_prompt, n_prompt / (t_prefill - t_vision));
        fprintf(stderr, "decode: %d tokens, %.1f tokens/s\n", res.n_ids,
                res.n_ids > 1 ? (res.n_ids - 1) / (t_done - t_prefill) : 0.0);
    }
    status = 0;
    goto out;

fail:
    fprintf(stderr, "vigil-run: %s\n", err[0] ? err : "failed");
out:
    model_generate_result_free(&res);
    free(slots);
    free(pos);
    chat_prompt_free(&cp);
    if (vis) for (int i = 0; i < md.n_pairs; i++) model_vision_out_free(&vis[i]);
    free(vis);
    free(rows);
    free(logits);
    media_free(&md);
    model_kv_destroy(kv);
    tok_free(tok);
    model_destroy(m);
    checkpoint_close(ck);
    return status;
}
