/* checkpoint.c — see checkpoint.h.
 *
 * The expected-tensor list mirrors the upstream module tree (modeling_qwen3_vl.py,
 * modeling_qwen3_vl_moe.py) and the names save_pretrained writes:
 *   model.visual.patch_embed.proj.{weight [vh, C, tp, p, p], bias}
 *   model.visual.pos_embed.weight [num_position_embeddings, vh]
 *   model.visual.blocks.N.{norm1,norm2}.{weight,bias}, attn.qkv, attn.proj, mlp.linear_fc1/2
 *   model.visual.merger.{norm [vh], linear_fc1 [4vh, 4vh], linear_fc2 [out, 4vh]}
 *   model.visual.deepstack_merger_list.K.{norm [4vh], linear_fc1, linear_fc2}
 *   model.language_model.embed_tokens, layers.N.{input_layernorm, post_attention_layernorm,
 *     self_attn.{q,k,v,o}_proj (+ biases with attention_bias), self_attn.{q,k}_norm,
 *     mlp.{gate,up,down}_proj | mlp.gate + mlp.experts.{gate_up_proj, down_proj}}, norm
 *   lm_head.weight unless tie_word_embeddings. */
#include "model/checkpoint.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Upstream's initializer_range: the std of embeddings in a freshly initialised model. */
#define CKPT_EMBED_STD 0.02f
/* Small random biases: large enough that a forward pass which forgets one is visibly off. */
#define CKPT_BIAS_STD 0.02f

typedef struct ckpt_list {
    ckpt_tensor_spec *v;
    size_t n, cap;
    int failed;
} ckpt_list;

static void ckpt_add(ckpt_list *l, ckpt_init_kind init, int fan_in, int ndim, const int64_t *shape,
                     const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void ckpt_add(ckpt_list *l, ckpt_init_kind init, int fan_in, int ndim, const int64_t *shape,
                     const char *fmt, ...)
{
    if (l->failed)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        ckpt_tensor_spec *nv = realloc(l->v, cap * sizeof *nv);
        if (!nv) {
            l->failed = 1;
            return;
        }
        l->v = nv;
        l->cap = cap;
    }
    ckpt_tensor_spec *s = &l->v[l->n++];
    memset(s, 0, sizeof *s);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        s->shape[i] = shape[i];
    s->init = init;
    s->fan_in = fan_in;
    if (init == CKPT_INIT_NORMAL)
        s->std = fan_in > 0 ? (float)(1.0 / sqrt((double)fan_in)) : CKPT_EMBED_STD;
}

/* A Linear layer: weight [out, in] (normal, 1/sqrt(in)) and optionally bias [out]. */
static void ckpt_linear(ckpt_list *l, const char *prefix, int64_t out, int64_t in, int bias)
{
    int64_t w[2] = { out, in };
    ckpt_add(l, CKPT_INIT_NORMAL, (int)in, 2, w, "%s.weight", prefix);
    if (bias) {
        ckpt_add(l, CKPT_INIT_NORMAL, 0, 1, &out, "%s.bias", prefix);
        if (!l->failed)
            l->v[l->n - 1].std = CKPT_BIAS_STD;
    }
}

/* A norm: weight [dim] of ones, plus a bias for LayerNorm. */
static void ckpt_norm(ckpt_list *l, const char *prefix, int64_t dim, int bias)
{
    ckpt_add(l, CKPT_INIT_ONES, 0, 1, &dim, "%s.weight", prefix);
    if (bias) {
        ckpt_add(l, CKPT_INIT_NORMAL, 0, 1, &dim, "%s.bias", prefix);
        if (!l->failed)
            l->v[l->n - 1].std = CKPT_BIAS_STD;
    }
}

static int ckpt_cmp_spec(const void *a, const void *b)
{
    return strcmp(((const ckpt_tensor_spec *)a)->name, ((const ckpt_tensor_spec *)b)->name);
}

int ckpt_expected_tensors(const model_config *cfg, ckpt_tensor_spec **out, size_t *count,
                          char *err, size_t errlen)
{
    *out = NULL;
    *count = 0;
    const model_vision_config *v = &cfg->vision;
    const model_text_config *t = &cfg->text;
    if (v->depth <= 0 || v->hidden_size <= 0 || t->num_hidden_layers <= 0 ||
        t->num_hidden_layers > MODEL_MAX_LAYERS || t->hidden_size <= 0 || t->vocab_size <= 0 ||
        v->num_deepstack < 0 || v->num_deepstack > MODEL_MAX_DEEPSTACK) {
        if (err && errlen)
            snprintf(err, errlen, "ckpt_expected_tensors: configuration not loaded or invalid "
                     "(vision depth %d, text layers %d)", v->depth, t->num_hidden_layers);
        return -1;
    }
    ckpt_list l = { 0 };
    char p[CKPT_NAME_MAX];

    /* Vision tower. */
    int64_t vh = v->hidden_size, merged = vh * v->spatial_merge_size * v->spatial_merge_size;
    int64_t pe[5] = { vh, v->in_channels, v->temporal_patch_size, v->patch_size, v->patch_size };
    ckpt_add(&l, CKPT_INIT_NORMAL, (int)(pe[1] * pe[2] * pe[3] * pe[4]), 5, pe,
             "model.visual.patch_embed.proj.weight");
    ckpt_add(&l, CKPT_INIT_NORMAL, 0, 1, &vh, "model.visual.patch_embed.proj.bias");
    if (!l.failed)
        l.v[l.n - 1].std = CKPT_BIAS_STD;
    int64_t pos[2] = { v->num_position_embeddings, vh };
    ckpt_add(&l, CKPT_INIT_NORMAL, 0, 2, pos, "model.visual.pos_embed.weight");
    for (int b = 0; b < v->depth; b++) {
        snprintf(p, sizeof p, "model.visual.blocks.%d.norm1", b);
        ckpt_norm(&l, p, vh, 1);
        snprintf(p, sizeof p, "model.visual.blocks.%d.norm2", b);
        ckpt_norm(&l, p, vh, 1);
        snprintf(p, sizeof p, "model.visual.blocks.%d.attn.qkv", b);
        ckpt_linear(&l, p, 3 * vh, vh, 1);
        snprintf(p, sizeof p, "model.visual.blocks.%d.attn.proj", b);
        ckpt_linear(&l, p, vh, vh, 1);
        snprintf(p, sizeof p, "model.visual.blocks.%d.mlp.linear_fc1", b);
        ckpt_linear(&l, p, v->intermediate_size, vh, 1);
        snprintf(p, sizeof p, "model.visual.blocks.%d.mlp.linear_fc2", b);
        ckpt_linear(&l, p, vh, v->intermediate_size, 1);
    }
    /* The main merger normalises each patch before grouping (norm over vh); the DeepStack
     * mergers group first (norm over 4*vh). */
    ckpt_norm(&l, "model.visual.merger.norm", vh, 1);
    ckpt_linear(&l, "model.visual.merger.linear_fc1", merged, merged, 1);
    ckpt_linear(&l, "model.visual.merger.linear_fc2", v->out_hidden_size, merged, 1);
    for (int k = 0; k < v->num_deepstack; k++) {
        snprintf(p, sizeof p, "model.visual.deepstack_merger_list.%d.norm", k);
        ckpt_norm(&l, p, merged, 1);
        snprintf(p, sizeof p, "model.visual.deepstack_merger_list.%d.linear_fc1", k);
        ckpt_linear(&l, p, merged, merged, 1);
        snprintf(p, sizeof p, "model.visual.deepstack_merger_list.%d.linear_fc2", k);
        ckpt_linear(&l, p, v->out_hidden_size, merged, 1);
    }

    /* Text decoder. */
    int64_t h = t->hidden_size, hd = t->head_dim;
    int64_t q_out = (int64_t)t->num_attention_heads * hd, kv_out = (int64_t)t->num_key_value_heads * hd;
    int64_t emb[2] = { t->vocab_size, h };
    ckpt_add(&l, CKPT_INIT_NORMAL, 0, 2, emb, "model.language_model.embed_tokens.weight");
    for (int i = 0; i < t->num_hidden_layers; i++) {
        snprintf(p, sizeof p, "model.language_model.layers.%d.input_layernorm", i);
        ckpt_norm(&l, p, h, 0);
        snprintf(p, sizeof p, "model.language_model.layers.%d.post_attention_layernorm", i);
        ckpt_norm(&l, p, h, 0);
        snprintf(p, sizeof p, "model.language_model.layers.%d.self_attn.q_proj", i);
        ckpt_linear(&l, p, q_out, h, t->attention_bias);
        snprintf(p, sizeof p, "model.language_model.layers.%d.self_attn.k_proj", i);
        ckpt_linear(&l, p, kv_out, h, t->attention_bias);
        snprintf(p, sizeof p, "model.language_model.layers.%d.self_attn.v_proj", i);
        ckpt_linear(&l, p, kv_out, h, t->attention_bias);
        snprintf(p, sizeof p, "model.language_model.layers.%d.self_attn.o_proj", i);
        ckpt_linear(&l, p, h, q_out, t->attention_bias);
        snprintf(p, sizeof p, "model.language_model.layers.%d.self_attn.q_norm", i);
        ckpt_norm(&l, p, hd, 0);
        snprintf(p, sizeof p, "model.language_model.layers.%d.self_attn.k_norm", i);
        ckpt_norm(&l, p, hd, 0);
        if (t->layer_is_moe[i]) {
            /* Router Linear(hidden, E, bias=False); experts fused and right-multiplied:
             * x @ gate_up_proj[e] -> [gate | up], (silu(gate) * up) @ down_proj[e]. */
            int64_t e = t->num_experts, mi = t->moe_intermediate_size;
            snprintf(p, sizeof p, "model.language_model.layers.%d.mlp.gate", i);
            ckpt_linear(&l, p, e, h, 0);
            int64_t gu[3] = { e, h, 2 * mi }, dn[3] = { e, mi, h };
            ckpt_add(&l, CKPT_INIT_NORMAL, (int)h, 3, gu,
                     "model.language_model.layers.%d.mlp.experts.gate_up_proj", i);
            ckpt_add(&l, CKPT_INIT_NORMAL, (int)mi, 3, dn,
                     "model.language_model.layers.%d.mlp.experts.down_proj", i);
        } else {
            int64_t im = t->intermediate_size;
            snprintf(p, sizeof p, "model.language_model.layers.%d.mlp.gate_proj", i);
            ckpt_linear(&l, p, im, h, 0);
            snprintf(p, sizeof p, "model.language_model.layers.%d.mlp.up_proj", i);
            ckpt_linear(&l, p, im, h, 0);
            snprintf(p, sizeof p, "model.language_model.layers.%d.mlp.down_proj", i);
            ckpt_linear(&l, p, h, im, 0);
        }
    }
    ckpt_norm(&l, "model.language_model.norm", h, 0);
    if (!t->tie_word_embeddings)
        ckpt_linear(&l, "lm_head", t->vocab_size, h, 0);

    if (l.failed) {
        free(l.v);
        if (err && errlen)
            snprintf(err, errlen, "ckpt_expected_tensors: out of memory");
        return -1;
    }
    qsort(l.v, l.n, sizeof *l.v, ckpt_cmp_spec);
    *out = l.v;
    *count = l.n;
    return 0;
}

size_t ckpt_param_count(const ckpt_tensor_spec *specs, size_t count)
{
    size_t total = 0;
    for (size_t i = 0; i < count; i++) {
        size_t n = 1;
        for (int d = 0; d < specs[i].ndim; d++)
            n *= (size_t)specs[i].shape[d];
        total += n;
    }
    return total;
}

static void ckpt_format_shape(char *buf, size_t len, const int64_t *shape, int ndim)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "[");
    for (int i = 0; i < ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

/* The file a message about a missing tensor should name: the index when there is one. */
static void ckpt_weights_file(const char *dir, char *buf, size_t len)
{
    size_t dl = strlen(dir);
    const char *sep = dl && dir[dl - 1] == '/' ? "" : "/";
    snprintf(buf, len, "%s%smodel.safetensors.index.json", dir, sep);
    if (access(buf, F_OK) != 0)
        snprintf(buf, len, "%s%smodel.safetensors", dir, sep);
}

static int ckpt_validate(checkpoint *ck, char *err, size_t errlen)
{
    char where[1200], want[160], found[160];
    size_t matched = 0;
    for (size_t i = 0; i < ck->n_expected; i++) {
        const ckpt_tensor_spec *s = &ck->expected[i];
        const st_tensor *t = st_archive_find(ck->weights, s->name);
        ckpt_format_shape(want, sizeof want, s->shape, s->ndim);
        if (!t) {
            ckpt_weights_file(ck->dir, where, sizeof where);
            if (err && errlen)
                snprintf(err, errlen, "%s: tensor '%s' is missing (expected shape %s, which "
                         "config.json implies)", where, s->name, want);
            return -1;
        }
        if (t->dtype != ST_BF16 && t->dtype != ST_F16 && t->dtype != ST_F32) {
            if (err && errlen)
                snprintf(err, errlen, "%s: tensor '%s': dtype %s is not supported (expected "
                         "BF16, F16 or F32)", t->file, s->name, st_dtype_name(t->dtype));
            return -1;
        }
        bool same = t->ndim == s->ndim;
        for (int d = 0; same && d < s->ndim; d++)
            same = t->shape[d] == s->shape[d];
        if (!same) {
            ckpt_format_shape(found, sizeof found, t->shape, t->ndim);
            if (err && errlen)
                snprintf(err, errlen, "%s: tensor '%s': expected shape %s, found %s", t->file,
                         s->name, want, found);
            return -1;
        }
        matched++;
    }
    ck->n_ignored = st_archive_count(ck->weights) - matched;
    return 0;
}

int checkpoint_open(const char *dir, checkpoint **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!dir || !dir[0]) {
        if (err && errlen)
            snprintf(err, errlen, "checkpoint_open: no checkpoint folder given");
        return -1;
    }
    checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck) {
        if (err && errlen)
            snprintf(err, errlen, "%s: out of memory", dir);
        return -1;
    }
    if (strlen(dir) >= sizeof ck->dir) {
        if (err && errlen)
            snprintf(err, errlen, "checkpoint folder path longer than %zu bytes", sizeof ck->dir);
        free(ck);
        return -1;
    }
    snprintf(ck->dir, sizeof ck->dir, "%s", dir);
    if (model_config_load(dir, &ck->config, err, errlen) != 0 ||
        ckpt_expected_tensors(&ck->config, &ck->expected, &ck->n_expected, err, errlen) != 0 ||
        st_archive_open_dir(dir, &ck->weights, err, errlen) != 0 ||
        ckpt_validate(ck, err, errlen) != 0) {
        checkpoint_close(ck);
        return -1;
    }
    *out = ck;
    return 0;
}

void checkpoint_close(checkpoint *ck)
{
    if (!ck)
        return;
    st_archive_close(ck->weights);
    free(ck->expected);
    free(ck);
}

const st_tensor *checkpoint_tensor(const checkpoint *ck, const char *fmt, ...)
{
    if (!ck || !fmt)
        return NULL;
    ckpt_tensor_spec key;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(key.name, sizeof key.name, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof key.name)
        return NULL;
    if (!bsearch(&key, ck->expected, ck->n_expected, sizeof *ck->expected, ckpt_cmp_spec))
        return NULL;
    return st_archive_find(ck->weights, key.name);
}

const st_tensor *checkpoint_lm_head(const checkpoint *ck)
{
    if (!ck)
        return NULL;
    if (ck->config.text.tie_word_embeddings)
        return checkpoint_tensor(ck, "model.language_model.embed_tokens.weight");
    return checkpoint_tensor(ck, "lm_head.weight");
}
