/* config.c — see config.h.
 *
 * Defaults are upstream's (transformers v4.57 Qwen3VLConfig / Qwen3VLTextConfig /
 * Qwen3VLMoeTextConfig / Qwen3VLVisionConfig, Qwen3VLVideoProcessor, GenerationConfig) and
 * apply only where a key is absent (or null, which upstream treats the same way). Every value
 * present is type- and range-checked; a message names the file, the dotted key and what was
 * expected, because a config.json is often edited by hand. */
#include "model/config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CFG_MAX_FILE (16u << 20)

typedef struct cfg_ctx {
    const char *file;
    char *err;
    size_t errlen;
} cfg_ctx;

static void cfg_seterr(const cfg_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void cfg_seterr(const cfg_ctx *c, const char *fmt, ...)
{
    if (!c->err || c->errlen == 0)
        return;
    int n = snprintf(c->err, c->errlen, "%s: ", c->file);
    if (n < 0 || (size_t)n >= c->errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

/* "text_config.hidden_size" or "image_token_id". */
static const char *cfg_key(char *buf, size_t len, const char *obj, const char *key)
{
    if (obj && obj[0])
        snprintf(buf, len, "%s.%s", obj, key);
    else
        snprintf(buf, len, "%s", key);
    return buf;
}

/* What a JSON value is, for "found ..." in messages. */
static const char *cfg_found(const cJSON *v, char *buf, size_t len)
{
    if (cJSON_IsString(v))
        snprintf(buf, len, "the string \"%.40s\"", v->valuestring);
    else if (cJSON_IsNumber(v))
        snprintf(buf, len, "%.17g", v->valuedouble);
    else if (cJSON_IsBool(v))
        snprintf(buf, len, "%s", cJSON_IsTrue(v) ? "true" : "false");
    else if (cJSON_IsArray(v))
        snprintf(buf, len, "an array");
    else if (cJSON_IsObject(v))
        snprintf(buf, len, "an object");
    else
        snprintf(buf, len, "null");
    return buf;
}

static const cJSON *cfg_item(const cJSON *obj, const char *key)
{
    const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static int cfg_int_value(const cfg_ctx *c, const cJSON *v, const char *name, long min, long max,
                         long *out)
{
    char f[64];
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
        v->valuedouble < (double)min || v->valuedouble > (double)max) {
        if (max == 2147483647L || max == 0x7fffffffffffffffL)
            cfg_seterr(c, "%s: expected an integer >= %ld, found %s", name, min,
                       cfg_found(v, f, sizeof f));
        else
            cfg_seterr(c, "%s: expected an integer from %ld to %ld, found %s", name, min, max,
                       cfg_found(v, f, sizeof f));
        return -1;
    }
    *out = (long)v->valuedouble;
    return 0;
}

/* An integer key; absent -> def, or an error when required. */
static int cfg_int(const cfg_ctx *c, const cJSON *obj, const char *objname, const char *key,
                   bool required, long def, long min, long max, long *out)
{
    char name[96];
    cfg_key(name, sizeof name, objname, key);
    const cJSON *v = cfg_item(obj, key);
    if (!v) {
        if (required) {
            cfg_seterr(c, "%s: missing (expected an integer)", name);
            return -1;
        }
        *out = def;
        return 0;
    }
    return cfg_int_value(c, v, name, min, max, out);
}

static int cfg_i32(const cfg_ctx *c, const cJSON *obj, const char *objname, const char *key,
                   long def, long min, int *out)
{
    long v;
    if (cfg_int(c, obj, objname, key, false, def, min, 2147483647L, &v) != 0)
        return -1;
    *out = (int)v;
    return 0;
}

static int cfg_double(const cfg_ctx *c, const cJSON *obj, const char *objname, const char *key,
                      double def, bool positive, double *out)
{
    char name[96], f[64];
    cfg_key(name, sizeof name, objname, key);
    const cJSON *v = cfg_item(obj, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || (positive && v->valuedouble <= 0)) {
        cfg_seterr(c, "%s: expected a %snumber, found %s", name, positive ? "positive " : "",
                   cfg_found(v, f, sizeof f));
        return -1;
    }
    *out = v->valuedouble;
    return 0;
}

static int cfg_bool(const cfg_ctx *c, const cJSON *obj, const char *objname, const char *key,
                    bool def, bool *out)
{
    char name[96], f[64];
    cfg_key(name, sizeof name, objname, key);
    const cJSON *v = cfg_item(obj, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) {
        cfg_seterr(c, "%s: expected true or false, found %s", name, cfg_found(v, f, sizeof f));
        return -1;
    }
    *out = cJSON_IsTrue(v);
    return 0;
}

static int cfg_string(const cfg_ctx *c, const cJSON *obj, const char *objname, const char *key,
                      const char *def, char *out, size_t outlen)
{
    char name[96], f[64];
    cfg_key(name, sizeof name, objname, key);
    const cJSON *v = cfg_item(obj, key);
    if (!v) {
        snprintf(out, outlen, "%s", def);
        return 0;
    }
    if (!cJSON_IsString(v)) {
        cfg_seterr(c, "%s: expected a string, found %s", name, cfg_found(v, f, sizeof f));
        return -1;
    }
    if (strlen(v->valuestring) >= outlen) {
        cfg_seterr(c, "%s: \"%.40s...\" is longer than %zu characters", name, v->valuestring,
                   outlen - 1);
        return -1;
    }
    snprintf(out, outlen, "%s", v->valuestring);
    return 0;
}

static int cfg_object(const cfg_ctx *c, const cJSON *obj, const char *objname, const char *key,
                      const cJSON **out)
{
    char name[96], f[64];
    cfg_key(name, sizeof name, objname, key);
    const cJSON *v = cfg_item(obj, key);
    *out = NULL;
    if (!v)
        return 0;
    if (!cJSON_IsObject(v)) {
        cfg_seterr(c, "%s: expected an object, found %s", name, cfg_found(v, f, sizeof f));
        return -1;
    }
    *out = v;
    return 0;
}

/* An array of integers; absent -> def (ndef values). *n gets the count. */
static int cfg_int_array(const cfg_ctx *c, const cJSON *obj, const char *objname,
                         const char *key, const int *def, int ndef, int maxn, long min,
                         long max, int *vals, int *n)
{
    char name[96], f[64], elem[112];
    cfg_key(name, sizeof name, objname, key);
    const cJSON *v = cfg_item(obj, key);
    if (!v) {
        for (int i = 0; i < ndef; i++)
            vals[i] = def[i];
        *n = ndef;
        return 0;
    }
    if (!cJSON_IsArray(v)) {
        cfg_seterr(c, "%s: expected an array of integers, found %s", name,
                   cfg_found(v, f, sizeof f));
        return -1;
    }
    int cnt = cJSON_GetArraySize(v);
    if (cnt > maxn) {
        cfg_seterr(c, "%s: %d entries, at most %d supported", name, cnt, maxn);
        return -1;
    }
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        long x;
        snprintf(elem, sizeof elem, "%s[%d]", name, i);
        if (cfg_int_value(c, e, elem, min, max, &x) != 0)
            return -1;
        vals[i++] = (int)x;
    }
    *n = cnt;
    return 0;
}

static cJSON *cfg_parse_text(const cfg_ctx *c, const char *text)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, true);
    if (!root) {
        size_t at = end && end >= text ? (size_t)(end - text) : 0;
        int line = 1;
        for (size_t i = 0; i < at && text[i]; i++)
            line += text[i] == '\n';
        cfg_seterr(c, "not valid JSON (error at line %d, byte %zu)", line, at);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cfg_seterr(c, "expected a JSON object at the top level");
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* eos_token_id: an int or a list of ints. Returns 1 if the key was there. */
static int cfg_eos(const cfg_ctx *c, const cJSON *obj, const char *objname, model_config *cfg)
{
    char name[96], f[64];
    cfg_key(name, sizeof name, objname, "eos_token_id");
    const cJSON *v = cfg_item(obj, "eos_token_id");
    if (!v)
        return 0;
    if (cJSON_IsNumber(v)) {
        long x;
        if (cfg_int_value(c, v, name, 0, 2147483647L, &x) != 0)
            return -1;
        cfg->num_eos = 1;
        cfg->eos_token_ids[0] = (int)x;
        return 1;
    }
    if (!cJSON_IsArray(v)) {
        cfg_seterr(c, "%s: expected an integer or a list of integers, found %s", name,
                   cfg_found(v, f, sizeof f));
        return -1;
    }
    int n;
    if (cfg_int_array(c, obj, objname, "eos_token_id", NULL, 0, MODEL_MAX_EOS, 0, 2147483647L,
                      cfg->eos_token_ids, &n) != 0)
        return -1;
    cfg->num_eos = n;
    return 1;
}

static void cfg_processor_defaults(model_config *cfg)
{
    model_processor_config *p = &cfg->processor;
    /* Published Qwen3-VL preprocessor_config.json values (see config.h for why not the
     * image processor class defaults). */
    p->image_min_pixels = 65536;
    p->image_max_pixels = 16777216;
    /* Qwen3VLVideoProcessor class defaults. */
    p->video_min_pixels = 128L * 32 * 32;
    p->video_max_pixels = 768L * 32 * 32;
    p->video_fps = 2.0;
    p->video_min_frames = 4;
    p->video_max_frames = 768;
    for (int i = 0; i < 3; i++) {
        p->image_mean[i] = p->image_std[i] = 0.5f;
        p->video_mean[i] = p->video_std[i] = 0.5f;
    }
    p->patch_size = cfg->vision.patch_size;
    p->temporal_patch_size = cfg->vision.temporal_patch_size;
    p->merge_size = cfg->vision.spatial_merge_size;
}

static void cfg_generation_defaults(model_config *cfg)
{
    model_generation_config *g = &cfg->generation;
    g->do_sample = false;
    g->temperature = 1.0;
    g->top_k = 50;
    g->top_p = 1.0;
    g->repetition_penalty = 1.0;
    g->bos_token_id = -1;
    g->pad_token_id = -1;
}

static int cfg_parse_rope(const cfg_ctx *c, const cJSON *tc, model_text_config *t)
{
    /* v5 writes text_config.rope_parameters {rope_type, rope_theta, mrope_section, ...};
     * v4 writes rope_theta next to rope_scaling {rope_type, mrope_section, ...}. */
    const cJSON *rp, *rs;
    if (cfg_object(c, tc, "text_config", "rope_parameters", &rp) != 0 ||
        cfg_object(c, tc, "text_config", "rope_scaling", &rs) != 0)
        return -1;
    const cJSON *r = rp ? rp : rs;
    const char *rname = rp ? "text_config.rope_parameters" : "text_config.rope_scaling";
    if (cfg_double(c, tc, "text_config", "rope_theta", 5000000.0, true, &t->rope_theta) != 0)
        return -1;
    if (rp && cfg_item(rp, "rope_theta") &&
        cfg_double(c, rp, rname, "rope_theta", t->rope_theta, true, &t->rope_theta) != 0)
        return -1;
    /* "type" is the old spelling upstream still accepts. */
    const char *type_key = r && !cfg_item(r, "rope_type") && cfg_item(r, "type") ? "type"
                                                                               : "rope_type";
    if (cfg_string(c, r, rname, type_key, "default", t->rope_type, sizeof t->rope_type) != 0)
        return -1;
    if (strcmp(t->rope_type, "default") != 0) {
        cfg_seterr(c, "%s.%s: \"%s\" is not supported (expected \"default\", the RoPE every "
                   "Qwen3-VL checkpoint uses)", rname, type_key, t->rope_type);
        return -1;
    }
    static const int def_section[3] = { 24, 20, 20 };
    int n;
    if (cfg_int_array(c, r, rname, "mrope_section", def_section, 3, 3, 0, 4096,
                      t->mrope_section, &n) != 0)
        return -1;
    if (n != 3) {
        cfg_seterr(c, "%s.mrope_section: expected 3 integers (T, H, W), found %d", rname, n);
        return -1;
    }
    if (cfg_bool(c, r, rname, "mrope_interleaved", true, &t->mrope_interleaved) != 0)
        return -1;
    int sum = t->mrope_section[0] + t->mrope_section[1] + t->mrope_section[2];
    if (sum * 2 != t->head_dim) {
        cfg_seterr(c, "%s.mrope_section: [%d, %d, %d] sums to %d, expected head_dim/2 = %d "
                   "(text_config.head_dim %d)", rname, t->mrope_section[0], t->mrope_section[1],
                   t->mrope_section[2], sum, t->head_dim / 2, t->head_dim);
        return -1;
    }
    return 0;
}

static int cfg_parse_text_config(const cfg_ctx *c, const cJSON *root, const cJSON *tc,
                                 model_config *cfg)
{
    model_text_config *t = &cfg->text;
    const char *tn = "text_config";
    bool moe = cfg->arch == MODEL_ARCH_MOE;
    /* The two text configs have different upstream defaults. */
    if (cfg_i32(c, tc, tn, "vocab_size", 151936, 1, &t->vocab_size) ||
        cfg_i32(c, tc, tn, "hidden_size", moe ? 2048 : 4096, 1, &t->hidden_size) ||
        cfg_i32(c, tc, tn, "intermediate_size", moe ? 5632 : 22016, 1, &t->intermediate_size) ||
        cfg_i32(c, tc, tn, "num_hidden_layers", moe ? 24 : 32, 1, &t->num_hidden_layers) ||
        cfg_i32(c, tc, tn, "num_attention_heads", moe ? 16 : 32, 1, &t->num_attention_heads) ||
        cfg_i32(c, tc, tn, "num_key_value_heads", t->num_attention_heads, 1,
                &t->num_key_value_heads) ||
        cfg_i32(c, tc, tn, "head_dim", moe ? t->hidden_size / t->num_attention_heads : 128, 1,
                &t->head_dim) ||
        cfg_i32(c, tc, tn, "max_position_embeddings", 128000, 1, &t->max_position_embeddings) ||
        cfg_double(c, tc, tn, "rms_norm_eps", 1e-6, true, &t->rms_norm_eps) ||
        cfg_bool(c, tc, tn, "attention_bias", false, &t->attention_bias) ||
        cfg_string(c, tc, tn, "hidden_act", "silu", t->hidden_act, sizeof t->hidden_act))
        return -1;
    if (t->num_hidden_layers > MODEL_MAX_LAYERS) {
        cfg_seterr(c, "text_config.num_hidden_layers: %d, at most %d supported",
                   t->num_hidden_layers, MODEL_MAX_LAYERS);
        return -1;
    }
    if (t->num_attention_heads % t->num_key_value_heads != 0) {
        cfg_seterr(c, "text_config.num_key_value_heads: %d does not divide num_attention_heads "
                   "%d (expected grouped-query attention groups of equal size)",
                   t->num_key_value_heads, t->num_attention_heads);
        return -1;
    }
    if (t->head_dim % 2 != 0) {
        cfg_seterr(c, "text_config.head_dim: %d, expected an even number (rotary embedding "
                   "rotates halves)", t->head_dim);
        return -1;
    }
    if (strcmp(t->hidden_act, "silu") != 0) {
        cfg_seterr(c, "text_config.hidden_act: \"%s\" is not supported (expected \"silu\", the "
                   "activation of every Qwen3-VL decoder)", t->hidden_act);
        return -1;
    }
    if (cfg_parse_rope(c, tc, t) != 0)
        return -1;

    /* The LM head follows the top-level tie_word_embeddings (what upstream's
     * PreTrainedModel ties on); text_config's is the fallback. */
    bool tie_text;
    if (cfg_bool(c, tc, tn, "tie_word_embeddings", false, &tie_text) ||
        cfg_bool(c, root, "", "tie_word_embeddings", tie_text, &t->tie_word_embeddings))
        return -1;

    memset(t->layer_is_moe, 0, sizeof t->layer_is_moe);
    t->num_moe_layers = 0;
    t->num_experts = 0;
    t->num_experts_per_tok = 0;
    t->moe_intermediate_size = 0;
    t->norm_topk_prob = false;
    t->decoder_sparse_step = 1;
    if (!moe)
        return 0;
    if (cfg_i32(c, tc, tn, "num_experts", 60, 0, &t->num_experts) ||
        cfg_i32(c, tc, tn, "num_experts_per_tok", 4, 1, &t->num_experts_per_tok) ||
        cfg_i32(c, tc, tn, "moe_intermediate_size", 1408, 1, &t->moe_intermediate_size) ||
        cfg_i32(c, tc, tn, "decoder_sparse_step", 1, 1, &t->decoder_sparse_step) ||
        cfg_bool(c, tc, tn, "norm_topk_prob", true, &t->norm_topk_prob))
        return -1;
    if (t->num_experts > 0 && t->num_experts_per_tok > t->num_experts) {
        cfg_seterr(c, "text_config.num_experts_per_tok: %d, expected at most num_experts (%d)",
                   t->num_experts_per_tok, t->num_experts);
        return -1;
    }
    int mlp_only[MODEL_MAX_LAYERS], n_mlp_only;
    if (cfg_int_array(c, tc, tn, "mlp_only_layers", NULL, 0, MODEL_MAX_LAYERS, 0,
                      t->num_hidden_layers - 1, mlp_only, &n_mlp_only) != 0)
        return -1;
    /* Upstream: layer_idx not in mlp_only_layers and num_experts > 0 and
     * (layer_idx + 1) % decoder_sparse_step == 0. */
    for (int i = 0; i < t->num_hidden_layers; i++) {
        bool dense_only = false;
        for (int k = 0; k < n_mlp_only; k++)
            dense_only |= mlp_only[k] == i;
        t->layer_is_moe[i] = !dense_only && t->num_experts > 0 &&
                             (i + 1) % t->decoder_sparse_step == 0;
        t->num_moe_layers += t->layer_is_moe[i];
    }
    return 0;
}

static int cfg_parse_vision_config(const cfg_ctx *c, const cJSON *vc, model_config *cfg)
{
    model_vision_config *v = &cfg->vision;
    const char *vn = "vision_config";
    if (cfg_i32(c, vc, vn, "depth", 27, 1, &v->depth) ||
        cfg_i32(c, vc, vn, "hidden_size", 1152, 1, &v->hidden_size) ||
        cfg_i32(c, vc, vn, "num_heads", 16, 1, &v->num_heads) ||
        cfg_i32(c, vc, vn, "intermediate_size", 4304, 1, &v->intermediate_size) ||
        cfg_i32(c, vc, vn, "patch_size", 16, 1, &v->patch_size) ||
        cfg_i32(c, vc, vn, "temporal_patch_size", 2, 1, &v->temporal_patch_size) ||
        cfg_i32(c, vc, vn, "spatial_merge_size", 2, 1, &v->spatial_merge_size) ||
        cfg_i32(c, vc, vn, "in_channels", 3, 1, &v->in_channels) ||
        cfg_i32(c, vc, vn, "out_hidden_size", 3584, 1, &v->out_hidden_size) ||
        cfg_i32(c, vc, vn, "num_position_embeddings", 2304, 1, &v->num_position_embeddings) ||
        cfg_string(c, vc, vn, "hidden_act", "gelu_pytorch_tanh", v->hidden_act,
                   sizeof v->hidden_act))
        return -1;
    if (v->hidden_size % v->num_heads != 0 || (v->hidden_size / v->num_heads) % 4 != 0) {
        cfg_seterr(c, "vision_config.num_heads: %d does not split hidden_size %d into heads of a "
                   "multiple of 4 dimensions (the 2D rotary embedding needs head_dim/2 even)",
                   v->num_heads, v->hidden_size);
        return -1;
    }
    v->head_dim = v->hidden_size / v->num_heads;
    int side = (int)lround(sqrt((double)v->num_position_embeddings));
    if (side * side != v->num_position_embeddings) {
        cfg_seterr(c, "vision_config.num_position_embeddings: %d, expected a square number (the "
                   "position table is a square grid)", v->num_position_embeddings);
        return -1;
    }
    if (strcmp(v->hidden_act, "gelu_pytorch_tanh") != 0) {
        cfg_seterr(c, "vision_config.hidden_act: \"%s\" is not supported (expected "
                   "\"gelu_pytorch_tanh\", the activation of every Qwen3-VL vision tower)",
                   v->hidden_act);
        return -1;
    }
    static const int def_ds[3] = { 8, 16, 24 };
    if (cfg_int_array(c, vc, vn, "deepstack_visual_indexes", def_ds, 3, MODEL_MAX_DEEPSTACK, 0,
                      v->depth - 1, v->deepstack_visual_indexes, &v->num_deepstack) != 0)
        return -1;
    return 0;
}

static int cfg_check_token(const cfg_ctx *c, const char *name, int id, int vocab)
{
    if (id < 0 || id >= vocab) {
        cfg_seterr(c, "%s: %d is outside the vocabulary (text_config.vocab_size %d)", name, id,
                   vocab);
        return -1;
    }
    return 0;
}

int model_config_parse_json(const char *json_text, const char *filename, model_config *cfg,
                            char *err, size_t errlen)
{
    cfg_ctx c = { filename ? filename : "config.json", err, errlen };
    memset(cfg, 0, sizeof *cfg);
    if (!json_text) {
        cfg_seterr(&c, "no text");
        return -1;
    }
    cJSON *root = cfg_parse_text(&c, json_text);
    if (!root)
        return -1;
    int rc = -1;
    const cJSON *tc, *vc;
    if (cfg_string(&c, root, "", "model_type", "", cfg->model_type, sizeof cfg->model_type))
        goto out;
    if (strcmp(cfg->model_type, "qwen3_vl") == 0) {
        cfg->arch = MODEL_ARCH_DENSE;
    } else if (strcmp(cfg->model_type, "qwen3_vl_moe") == 0) {
        cfg->arch = MODEL_ARCH_MOE;
    } else {
        cfg_seterr(&c, "model_type: %s%s%s, expected \"qwen3_vl\" or \"qwen3_vl_moe\" (a Qwen3-VL "
                   "checkpoint)", cfg->model_type[0] ? "unknown \"" : "missing",
                   cfg->model_type, cfg->model_type[0] ? "\"" : "");
        goto out;
    }
    if (cfg_object(&c, root, "", "text_config", &tc) || cfg_object(&c, root, "", "vision_config",
                                                                   &vc))
        goto out;
    if (!tc || !vc) {
        cfg_seterr(&c, "%s: missing (expected the nested %s object of a Qwen3-VL config)",
                   !tc ? "text_config" : "vision_config", !tc ? "text model" : "vision tower");
        goto out;
    }
    if (cfg_parse_text_config(&c, root, tc, cfg) || cfg_parse_vision_config(&c, vc, cfg))
        goto out;
    if (cfg->vision.out_hidden_size != cfg->text.hidden_size) {
        cfg_seterr(&c, "vision_config.out_hidden_size: %d, expected text_config.hidden_size %d "
                   "(visual features replace token embeddings)", cfg->vision.out_hidden_size,
                   cfg->text.hidden_size);
        goto out;
    }
    if (cfg_i32(&c, root, "", "image_token_id", 151655, 0, &cfg->image_token_id) ||
        cfg_i32(&c, root, "", "video_token_id", 151656, 0, &cfg->video_token_id) ||
        cfg_i32(&c, root, "", "vision_start_token_id", 151652, 0, &cfg->vision_start_token_id) ||
        cfg_i32(&c, root, "", "vision_end_token_id", 151653, 0, &cfg->vision_end_token_id))
        goto out;
    int vocab = cfg->text.vocab_size;
    if (cfg_check_token(&c, "image_token_id", cfg->image_token_id, vocab) ||
        cfg_check_token(&c, "video_token_id", cfg->video_token_id, vocab) ||
        cfg_check_token(&c, "vision_start_token_id", cfg->vision_start_token_id, vocab) ||
        cfg_check_token(&c, "vision_end_token_id", cfg->vision_end_token_id, vocab))
        goto out;
    /* v4.56+ writes "dtype", older versions "torch_dtype"; either may sit in text_config. */
    const char *dk = cfg_item(root, "dtype") ? "dtype" : "torch_dtype";
    const cJSON *dobj = root;
    const char *dobjname = "";
    if (!cfg_item(root, dk)) {
        dk = cfg_item(tc, "dtype") ? "dtype" : "torch_dtype";
        dobj = tc;
        dobjname = "text_config";
    }
    if (cfg_string(&c, dobj, dobjname, dk, "", cfg->torch_dtype, sizeof cfg->torch_dtype))
        goto out;
    int got = cfg_eos(&c, root, "", cfg);
    if (got == 0)
        got = cfg_eos(&c, tc, "text_config", cfg);
    if (got < 0)
        goto out;
    for (int i = 0; i < cfg->num_eos; i++) {
        char name[48];
        snprintf(name, sizeof name, "eos_token_id[%d]", i);
        if (cfg_check_token(&c, name, cfg->eos_token_ids[i], vocab))
            goto out;
    }
    cfg_processor_defaults(cfg);
    cfg_generation_defaults(cfg);
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

int model_config_parse_generation(const char *json_text, const char *filename, model_config *cfg,
                                  char *err, size_t errlen)
{
    cfg_ctx c = { filename ? filename : "generation_config.json", err, errlen };
    cJSON *root = cfg_parse_text(&c, json_text ? json_text : "");
    if (!root)
        return -1;
    int rc = -1;
    model_generation_config *g = &cfg->generation;
    long bos, pad;
    if (cfg_bool(&c, root, "", "do_sample", g->do_sample, &g->do_sample) ||
        cfg_double(&c, root, "", "temperature", g->temperature, false, &g->temperature) ||
        cfg_i32(&c, root, "", "top_k", g->top_k, 0, &g->top_k) ||
        cfg_double(&c, root, "", "top_p", g->top_p, true, &g->top_p) ||
        cfg_double(&c, root, "", "repetition_penalty", g->repetition_penalty, true,
                   &g->repetition_penalty) ||
        cfg_int(&c, root, "", "bos_token_id", false, g->bos_token_id, 0, 2147483647L, &bos) ||
        cfg_int(&c, root, "", "pad_token_id", false, g->pad_token_id, 0, 2147483647L, &pad))
        goto out;
    g->bos_token_id = (int)bos;
    g->pad_token_id = (int)pad;
    if (g->temperature < 0) {
        cfg_seterr(&c, "temperature: %g, expected a number >= 0", g->temperature);
        goto out;
    }
    if (g->top_p > 1.0) {
        cfg_seterr(&c, "top_p: %g, expected a number in (0, 1]", g->top_p);
        goto out;
    }
    /* This file, when present, decides the eos ids (an absent key means none). */
    model_config saved = *cfg;
    cfg->num_eos = 0;
    int got = cfg_eos(&c, root, "", cfg);
    if (got < 0) {
        *cfg = saved;
        goto out;
    }
    for (int i = 0; i < cfg->num_eos; i++) {
        char name[48];
        snprintf(name, sizeof name, "eos_token_id[%d]", i);
        if (cfg_check_token(&c, name, cfg->eos_token_ids[i], cfg->text.vocab_size)) {
            *cfg = saved;
            goto out;
        }
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

static int cfg_float3(const cfg_ctx *c, const cJSON *obj, const char *key, float *vals)
{
    const cJSON *v = cfg_item(obj, key);
    char f[64];
    if (!v)
        return 0;
    /* upstream also accepts one number for all channels */
    if (cJSON_IsNumber(v)) {
        for (int i = 0; i < 3; i++)
            vals[i] = (float)v->valuedouble;
        return 0;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 3) {
        cfg_seterr(c, "%s: expected 3 numbers (one per RGB channel), found %s", key,
                   cfg_found(v, f, sizeof f));
        return -1;
    }
    for (int i = 0; i < 3; i++) {
        const cJSON *e = cJSON_GetArrayItem(v, i);
        if (!cJSON_IsNumber(e)) {
            cfg_seterr(c, "%s[%d]: expected a number, found %s", key, i,
                       cfg_found(e, f, sizeof f));
            return -1;
        }
        vals[i] = (float)e->valuedouble;
    }
    return 0;
}

static int cfg_match_vision(const cfg_ctx *c, const cJSON *root, const char *key, int expected,
                            const char *vision_key)
{
    long v;
    if (cfg_int(c, root, "", key, false, expected, 1, 2147483647L, &v) != 0)
        return -1;
    if (v != expected) {
        cfg_seterr(c, "%s: %ld, expected %d to match config.json vision_config.%s", key, v,
                   expected, vision_key);
        return -1;
    }
    return 0;
}

int model_config_parse_processor(const char *json_text, const char *filename, bool video,
                                 model_config *cfg, char *err, size_t errlen)
{
    cfg_ctx c = { filename ? filename : (video ? "video_preprocessor_config.json"
                                               : "preprocessor_config.json"), err, errlen };
    cJSON *root = cfg_parse_text(&c, json_text ? json_text : "");
    if (!root)
        return -1;
    int rc = -1;
    model_processor_config p = cfg->processor;
    long *minp = video ? &p.video_min_pixels : &p.image_min_pixels;
    long *maxp = video ? &p.video_max_pixels : &p.image_max_pixels;
    const cJSON *size;
    if (cfg_object(&c, root, "", "size", &size))
        goto out;
    if (size) {
        /* Upstream refuses a size without both keys. */
        if (cfg_int(&c, size, "size", "shortest_edge", true, 0, 1, 0x7fffffffffffffffL, minp) ||
            cfg_int(&c, size, "size", "longest_edge", true, 0, 1, 0x7fffffffffffffffL, maxp))
            goto out;
    } else {
        /* Older files carry min_pixels / max_pixels at the top level instead. */
        if (cfg_int(&c, root, "", "min_pixels", false, *minp, 1, 0x7fffffffffffffffL, minp) ||
            cfg_int(&c, root, "", "max_pixels", false, *maxp, 1, 0x7fffffffffffffffL, maxp))
            goto out;
    }
    if (*minp > *maxp) {
        cfg_seterr(&c, "size: shortest_edge (min pixels) %ld exceeds longest_edge (max pixels) "
                   "%ld", *minp, *maxp);
        goto out;
    }
    if (cfg_float3(&c, root, "image_mean", video ? p.video_mean : p.image_mean) ||
        cfg_float3(&c, root, "image_std", video ? p.video_std : p.image_std))
        goto out;
    for (int i = 0; i < 3; i++) {
        float s = video ? p.video_std[i] : p.image_std[i];
        if (!(s > 0)) {
            cfg_seterr(&c, "image_std[%d]: %g, expected a positive number", i, (double)s);
            goto out;
        }
    }
    if (cfg_match_vision(&c, root, "patch_size", cfg->vision.patch_size, "patch_size") ||
        cfg_match_vision(&c, root, "temporal_patch_size", cfg->vision.temporal_patch_size,
                         "temporal_patch_size") ||
        cfg_match_vision(&c, root, "merge_size", cfg->vision.spatial_merge_size,
                         "spatial_merge_size"))
        goto out;
    if (video) {
        long minf, maxf;
        if (cfg_double(&c, root, "", "fps", p.video_fps, true, &p.video_fps) ||
            cfg_int(&c, root, "", "min_frames", false, p.video_min_frames, 1, 2147483647L,
                    &minf) ||
            cfg_int(&c, root, "", "max_frames", false, p.video_max_frames, 1, 2147483647L, &maxf))
            goto out;
        if (minf > maxf) {
            cfg_seterr(&c, "min_frames %ld exceeds max_frames %ld", minf, maxf);
            goto out;
        }
        p.video_min_frames = (int)minf;
        p.video_max_frames = (int)maxf;
    }
    cfg->processor = p;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

bool model_config_layer_is_moe(const model_config *cfg, int layer)
{
    if (!cfg || layer < 0 || layer >= cfg->text.num_hidden_layers || layer >= MODEL_MAX_LAYERS)
        return false;
    return cfg->text.layer_is_moe[layer];
}

/* Reads dir/name into a malloc'ed string. Returns NULL with *missing set when the file does
 * not exist, NULL with err set on other failures. */
static char *cfg_read_file(const char *dir, const char *name, char *path, size_t pathlen,
                           bool *missing, char *err, size_t errlen)
{
    size_t dl = strlen(dir);
    snprintf(path, pathlen, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", name);
    *missing = false;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) {
            *missing = true;
        } else if (err && errlen) {
            snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        }
        return NULL;
    }
    char *buf = malloc(CFG_MAX_FILE + 1);
    if (!buf) {
        fclose(f);
        if (err && errlen)
            snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    size_t n = fread(buf, 1, CFG_MAX_FILE + 1, f);
    bool bad = ferror(f);
    fclose(f);
    if (bad || n > CFG_MAX_FILE) {
        if (err && errlen)
            snprintf(err, errlen, "%s: %s", path, bad ? "read error"
                                                      : "larger than 16 MiB, not a config file");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    if (strlen(buf) != n) {
        if (err && errlen)
            snprintf(err, errlen, "%s: contains a NUL byte, not a JSON text file", path);
        free(buf);
        return NULL;
    }
    return buf;
}

int model_config_load(const char *dir, model_config *cfg, char *err, size_t errlen)
{
    char path[4096];
    bool missing;
    if (!dir || !cfg) {
        if (err && errlen)
            snprintf(err, errlen, "model_config_load: no folder given");
        return -1;
    }
    char *text = cfg_read_file(dir, "config.json", path, sizeof path, &missing, err, errlen);
    if (!text) {
        if (missing && err && errlen)
            snprintf(err, errlen, "%s: missing (expected the config.json of a Hugging Face "
                     "Qwen3-VL checkpoint folder)", path);
        return -1;
    }
    int rc = model_config_parse_json(text, path, cfg, err, errlen);
    free(text);
    if (rc != 0)
        return -1;
    static const struct {
        const char *name;
        int kind;     /* 0 generation, 1 image processor, 2 video processor */
    } optional[] = {
        { "generation_config.json", 0 },
        { "preprocessor_config.json", 1 },
        { "video_preprocessor_config.json", 2 },
    };
    for (size_t i = 0; i < sizeof optional / sizeof optional[0]; i++) {
        text = cfg_read_file(dir, optional[i].name, path, sizeof path, &missing, err, errlen);
        if (!text) {
            if (missing)
                continue;
            return -1;
        }
        if (optional[i].kind == 0)
            rc = model_config_parse_generation(text, path, cfg, err, errlen);
        else
            rc = model_config_parse_processor(text, path, optional[i].kind == 2, cfg, err,
                                              errlen);
        free(text);
        if (rc != 0)
            return -1;
    }
    return 0;
}
