/* model.c — model_create/destroy: reads the checkpoint's tensors (model.visual.*,
 * model.language_model.*, lm_head) into the structures the forward passes use. In bf16 mode
 * the matmul weights are packed once into oneDNN's blocked bf16 layout; in f32 mode they are
 * upcast to f32. Norm weights, biases, the vision position table and the MoE router are f32
 * in both modes (they feed f32 math). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model/kernels.h"

/* ---- tensor access with shape checks ----------------------------------------------------- */

typedef struct vl_loader {
    model *m;
    char *err;
    size_t errlen;
} vl_loader;

static const st_tensor *get_tensor(vl_loader *L, int ndim, const int64_t *shape, const char *name) {
    const st_tensor *t = checkpoint_tensor(L->m->ck, "%s", name);
    if (!t) {
        vl_err(L->err, L->errlen, "%s: tensor %s is missing (the configuration implies it)",
               L->m->ck->dir, name);
        return NULL;
    }
    if (t->dtype != ST_BF16 && t->dtype != ST_F16 && t->dtype != ST_F32) {
        vl_err(L->err, L->errlen, "%s: tensor %s has dtype %s; expected BF16, F16 or F32",
               t->file ? t->file : L->m->ck->dir, name, st_dtype_name(t->dtype));
        return NULL;
    }
    bool ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char want[128] = "", got[128] = "";
        for (int i = 0, o = 0; i < ndim; i++)
            o += snprintf(want + o, sizeof want - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
        for (int i = 0, o = 0; i < t->ndim; i++)
            o += snprintf(got + o, sizeof got - o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        vl_err(L->err, L->errlen, "%s: tensor %s has shape [%s]; the configuration expects [%s]",
               t->file ? t->file : L->m->ck->dir, name, got, want);
        return NULL;
    }
    return t;
}

static const st_tensor *get1(vl_loader *L, int64_t a, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static const st_tensor *get2(vl_loader *L, int64_t a, int64_t b, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static const st_tensor *get3(vl_loader *L, int64_t a, int64_t b, int64_t c, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#define VL_NAME(buf, fmt)                      \
    do {                                       \
        va_list ap;                            \
        va_start(ap, fmt);                     \
        vsnprintf(buf, sizeof buf, fmt, ap);   \
        va_end(ap);                            \
    } while (0)

static const st_tensor *get1(vl_loader *L, int64_t a, const char *fmt, ...) {
    char name[CKPT_NAME_MAX];
    VL_NAME(name, fmt);
    int64_t s[1] = { a };
    return get_tensor(L, 1, s, name);
}
static const st_tensor *get2(vl_loader *L, int64_t a, int64_t b, const char *fmt, ...) {
    char name[CKPT_NAME_MAX];
    VL_NAME(name, fmt);
    int64_t s[2] = { a, b };
    return get_tensor(L, 2, s, name);
}
static const st_tensor *get3(vl_loader *L, int64_t a, int64_t b, int64_t c, const char *fmt, ...) {
    char name[CKPT_NAME_MAX];
    VL_NAME(name, fmt);
    int64_t s[3] = { a, b, c };
    return get_tensor(L, 3, s, name);
}

/* Once a tensor is packed, its pages in the read-only mapping are not needed any more:
 * dropping them keeps the resident size near one copy of the weights (they are re-read from
 * the file if anything touches them again). */
static void release_pages(const st_tensor *t) {
    if (!t || !t->data || t->nbytes < (2u << 20)) return;
    long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0) return;
    uintptr_t a = ((uintptr_t)t->data + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
    uintptr_t b = ((uintptr_t)t->data + t->nbytes) & ~((uintptr_t)pg - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

static float *to_f32(vl_loader *L, const st_tensor *t, size_t count, size_t offset) {
    float *p = malloc(sizeof(float) * (count ? count : 1));
    if (!p) {
        vl_err(L->err, L->errlen, "out of memory converting %s", t->name ? t->name : "tensor");
        return NULL;
    }
    for (size_t i = 0; i < count; i++) p[i] = vl_load_f32(t->data, t->dtype, offset + i);
    L->m->weight_bytes += sizeof(float) * count;
    return p;
}

static int load_norm(vl_loader *L, vl_norm *n, int dim, bool bias, const char *prefix) {
    n->dim = dim;
    const st_tensor *w = get1(L, dim, "%s.weight", prefix);
    if (!w || !(n->weight = to_f32(L, w, (size_t)dim, 0))) return -1;
    if (bias) {
        const st_tensor *b = get1(L, dim, "%s.bias", prefix);
        if (!b || !(n->bias = to_f32(L, b, (size_t)dim, 0))) return -1;
    }
    return 0;
}

static void free_norm(vl_norm *n) {
    free(n->weight);
    free(n->bias);
    memset(n, 0, sizeof *n);
}

static int pack(vl_loader *L, vl_linear *l, int K, const vl_wpart *parts, int nparts,
                const char *what) {
    char e[256];
    if (vl_linear_init(l, L->m->compute == MODEL_COMPUTE_BF16, K, parts, nparts, e, sizeof e))
        return vl_err(L->err, L->errlen, "%s: %s", what, e);
    L->m->weight_bytes += l->bytes;
    return 0;
}

/* A torch Linear `prefix`.weight [n, K] (+ bias [n]). */
static int load_linear(vl_loader *L, vl_linear *l, int K, int n, bool bias, const char *prefix) {
    const st_tensor *w = get2(L, n, K, "%s.weight", prefix);
    if (!w) return -1;
    const st_tensor *b = NULL;
    if (bias && !(b = get1(L, n, "%s.bias", prefix))) return -1;
    if (b && b->dtype != w->dtype)
        return vl_err(L->err, L->errlen, "%s: bias dtype %s differs from weight dtype %s", prefix,
                      st_dtype_name(b->dtype), st_dtype_name(w->dtype));
    vl_wpart p = { w->data, w->dtype, n, VL_OUT_IN, b ? b->data : NULL };
    if (pack(L, l, K, &p, 1, prefix)) return -1;
    release_pages(w);
    return 0;
}

/* ---- vision ------------------------------------------------------------------------------ */

static int load_merger(vl_loader *L, vl_merger *mg, bool postshuffle, const char *prefix) {
    const vl_vision *v = &L->m->vis;
    const int h4 = v->hidden * v->merge * v->merge;
    char name[CKPT_NAME_MAX];
    mg->postshuffle = postshuffle;
    snprintf(name, sizeof name, "%s.norm", prefix);
    if (load_norm(L, &mg->norm, postshuffle ? h4 : v->hidden, true, name)) return -1;
    snprintf(name, sizeof name, "%s.linear_fc1", prefix);
    if (load_linear(L, &mg->fc1, h4, h4, true, name)) return -1;
    snprintf(name, sizeof name, "%s.linear_fc2", prefix);
    return load_linear(L, &mg->fc2, h4, v->out_hidden, true, name);
}

static void free_merger(vl_merger *mg) {
    free_norm(&mg->norm);
    vl_linear_free(&mg->fc1);
    vl_linear_free(&mg->fc2);
}

int vl_vision_load(model *m, char *err, size_t errlen) {
    vl_loader L = { m, err, errlen };
    const model_vision_config *c = &m->cfg.vision;
    vl_vision *v = &m->vis;
    v->hidden = c->hidden_size;
    v->heads = c->num_heads;
    v->inter = c->intermediate_size;
    v->depth = c->depth;
    v->merge = c->spatial_merge_size;
    v->patch = c->patch_size;
    v->tpatch = c->temporal_patch_size;
    v->in_ch = c->in_channels;
    v->out_hidden = c->out_hidden_size;
    v->patch_dim = model_patch_dim(&m->cfg);
    if (v->heads <= 0 || v->hidden % v->heads || (v->hidden / v->heads) % 4)
        return vl_err(err, errlen, "%s: vision_config hidden_size %d and num_heads %d do not give "
                      "a head_dim divisible by 4", m->ck->dir, v->hidden, v->heads);
    v->head_dim = v->hidden / v->heads;
    v->grid_side = (int)lround(sqrt((double)c->num_position_embeddings));
    if (v->grid_side < 2 || v->grid_side * v->grid_side != c->num_position_embeddings)
        return vl_err(err, errlen, "%s: vision_config.num_position_embeddings %d is not a square "
                      "of at least 4", m->ck->dir, c->num_position_embeddings);
    if (strcmp(c->hidden_act, "gelu_pytorch_tanh") != 0 && strcmp(c->hidden_act, "gelu") != 0)
        return vl_err(err, errlen, "%s: vision_config.hidden_act \"%s\" is not supported "
                      "(expected gelu_pytorch_tanh or gelu)", m->ck->dir, c->hidden_act);
    if (v->depth <= 0 || v->merge <= 0 || v->patch <= 0 || v->tpatch <= 0 || v->in_ch != 3)
        return vl_err(err, errlen, "%s: vision_config has depth %d, spatial_merge_size %d, "
                      "patch_size %d, temporal_patch_size %d, in_channels %d", m->ck->dir,
                      v->depth, v->merge, v->patch, v->tpatch, v->in_ch);

    /* patch_embed.proj: Conv3d weight [hidden, C, T, P, P] is a Linear over the flattened patch. */
    {
        char name[] = "model.visual.patch_embed.proj.weight";
        const st_tensor *w = checkpoint_tensor(m->ck, "%s", name);
        int64_t shape[5] = { v->hidden, v->in_ch, v->tpatch, v->patch, v->patch };
        if (!get_tensor(&L, 5, shape, name)) return -1;
        const st_tensor *b = get1(&L, v->hidden, "model.visual.patch_embed.proj.bias");
        if (!b) return -1;
        vl_wpart p = { w->data, w->dtype, v->hidden, VL_OUT_IN, b->data };
        if (b->dtype != w->dtype)
            return vl_err(err, errlen, "model.visual.patch_embed.proj: bias dtype differs from weight");
        if (pack(&L, &v->patch_embed, v->patch_dim, &p, 1, "model.visual.patch_embed.proj")) return -1;
    }
    const st_tensor *pe = get2(&L, c->num_position_embeddings, v->hidden, "model.visual.pos_embed.weight");
    if (!pe || !(v->pos_embed = to_f32(&L, pe, (size_t)c->num_position_embeddings * v->hidden, 0)))
        return -1;

    /* Vision RoPE: dim = head_dim/2, inv_freq = 1 / 10000^(arange(0, dim, 2)/dim) in f32. */
    const int rdim = v->head_dim / 2;
    v->rope_inv_freq = malloc(sizeof(float) * (size_t)(rdim / 2));
    if (!v->rope_inv_freq) return vl_err(err, errlen, "out of memory");
    for (int j = 0; j < rdim / 2; j++) {
        float e = (float)(2 * j) / (float)rdim;
        v->rope_inv_freq[j] = (float)(1.0 / (double)powf(10000.0f, e));
    }

    v->blocks = calloc((size_t)v->depth, sizeof *v->blocks);
    if (!v->blocks) return vl_err(err, errlen, "out of memory");
    for (int i = 0; i < v->depth; i++) {
        vl_vision_block *b = &v->blocks[i];
        char p[CKPT_NAME_MAX];
        snprintf(p, sizeof p, "model.visual.blocks.%d.norm1", i);
        if (load_norm(&L, &b->norm1, v->hidden, true, p)) return -1;
        snprintf(p, sizeof p, "model.visual.blocks.%d.norm2", i);
        if (load_norm(&L, &b->norm2, v->hidden, true, p)) return -1;
        snprintf(p, sizeof p, "model.visual.blocks.%d.attn.qkv", i);
        if (load_linear(&L, &b->qkv, v->hidden, 3 * v->hidden, true, p)) return -1;
        snprintf(p, sizeof p, "model.visual.blocks.%d.attn.proj", i);
        if (load_linear(&L, &b->proj, v->hidden, v->hidden, true, p)) return -1;
        snprintf(p, sizeof p, "model.visual.blocks.%d.mlp.linear_fc1", i);
        if (load_linear(&L, &b->fc1, v->hidden, v->inter, true, p)) return -1;
        snprintf(p, sizeof p, "model.visual.blocks.%d.mlp.linear_fc2", i);
        if (load_linear(&L, &b->fc2, v->inter, v->hidden, true, p)) return -1;
    }
    if (load_merger(&L, &v->merger, false, "model.visual.merger")) return -1;
    v->num_deepstack = c->num_deepstack;
    for (int k = 0; k < c->num_deepstack; k++) {
        v->deepstack_index[k] = c->deepstack_visual_indexes[k];
        if (v->deepstack_index[k] < 0 || v->deepstack_index[k] >= v->depth)
            return vl_err(err, errlen, "%s: vision_config.deepstack_visual_indexes[%d] = %d is "
                          "outside the %d vision blocks", m->ck->dir, k, v->deepstack_index[k],
                          v->depth);
        char p[CKPT_NAME_MAX];
        snprintf(p, sizeof p, "model.visual.deepstack_merger_list.%d", k);
        if (load_merger(&L, &v->deepstack[k], true, p)) return -1;
    }
    return 0;
}

void vl_vision_free(vl_vision *v) {
    vl_linear_free(&v->patch_embed);
    free(v->pos_embed);
    free(v->rope_inv_freq);
    if (v->blocks) {
        for (int i = 0; i < v->depth; i++) {
            vl_vision_block *b = &v->blocks[i];
            free_norm(&b->norm1);
            free_norm(&b->norm2);
            vl_linear_free(&b->qkv);
            vl_linear_free(&b->proj);
            vl_linear_free(&b->fc1);
            vl_linear_free(&b->fc2);
        }
        free(v->blocks);
    }
    free_merger(&v->merger);
    for (int k = 0; k < MODEL_MAX_DEEPSTACK; k++) free_merger(&v->deepstack[k]);
    memset(v, 0, sizeof *v);
}

/* ---- text -------------------------------------------------------------------------------- */

static int load_text_layer(vl_loader *L, int i) {
    vl_text *t = &L->m->txt;
    vl_text_layer *ly = &t->layer[i];
    const model_text_config *c = &L->m->cfg.text;
    const int H = t->hidden, hd = t->head_dim, qn = t->heads * hd, kvn = t->kv_heads * hd;
    char p[CKPT_NAME_MAX];
    snprintf(p, sizeof p, "model.language_model.layers.%d.input_layernorm", i);
    if (load_norm(L, &ly->input_norm, H, false, p)) return -1;
    snprintf(p, sizeof p, "model.language_model.layers.%d.post_attention_layernorm", i);
    if (load_norm(L, &ly->post_norm, H, false, p)) return -1;
    snprintf(p, sizeof p, "model.language_model.layers.%d.self_attn.q_norm", i);
    if (load_norm(L, &ly->q_norm, hd, false, p)) return -1;
    snprintf(p, sizeof p, "model.language_model.layers.%d.self_attn.k_norm", i);
    if (load_norm(L, &ly->k_norm, hd, false, p)) return -1;

    const st_tensor *q, *k, *v, *qb = NULL, *kb = NULL, *vb = NULL;
    q = get2(L, qn, H, "model.language_model.layers.%d.self_attn.q_proj.weight", i);
    k = get2(L, kvn, H, "model.language_model.layers.%d.self_attn.k_proj.weight", i);
    v = get2(L, kvn, H, "model.language_model.layers.%d.self_attn.v_proj.weight", i);
    if (!q || !k || !v) return -1;
    if (c->attention_bias) {
        qb = get1(L, qn, "model.language_model.layers.%d.self_attn.q_proj.bias", i);
        kb = get1(L, kvn, "model.language_model.layers.%d.self_attn.k_proj.bias", i);
        vb = get1(L, kvn, "model.language_model.layers.%d.self_attn.v_proj.bias", i);
        if (!qb || !kb || !vb) return -1;
    }
    vl_wpart parts[3] = {
        { q->data, q->dtype, qn, VL_OUT_IN, qb ? qb->data : NULL },
        { k->data, k->dtype, kvn, VL_OUT_IN, kb ? kb->data : NULL },
        { v->data, v->dtype, kvn, VL_OUT_IN, vb ? vb->data : NULL },
    };
    snprintf(p, sizeof p, "model.language_model.layers.%d.self_attn.{q,k,v}_proj", i);
    if (pack(L, &ly->qkv, H, parts, 3, p)) return -1;
    release_pages(q);
    release_pages(k);
    release_pages(v);
    snprintf(p, sizeof p, "model.language_model.layers.%d.self_attn.o_proj", i);
    if (load_linear(L, &ly->o_proj, qn, H, c->attention_bias, p)) return -1;

    ly->moe = t->experts > 0 && c->layer_is_moe[i];
    if (!ly->moe) {
        const int I = t->inter;
        const st_tensor *g = get2(L, I, H, "model.language_model.layers.%d.mlp.gate_proj.weight", i);
        const st_tensor *u = get2(L, I, H, "model.language_model.layers.%d.mlp.up_proj.weight", i);
        if (!g || !u) return -1;
        vl_wpart gu[2] = { { g->data, g->dtype, I, VL_OUT_IN, NULL },
                           { u->data, u->dtype, I, VL_OUT_IN, NULL } };
        snprintf(p, sizeof p, "model.language_model.layers.%d.mlp.{gate,up}_proj", i);
        if (pack(L, &ly->gate_up, H, gu, 2, p)) return -1;
        release_pages(g);
        release_pages(u);
        snprintf(p, sizeof p, "model.language_model.layers.%d.mlp.down_proj", i);
        return load_linear(L, &ly->down, I, H, false, p);
    }
    const int E = t->experts, I = t->moe_inter;
    const st_tensor *r = get2(L, E, H, "model.language_model.layers.%d.mlp.gate.weight", i);
    if (!r) return -1;
    {
        /* f32 even in bf16 mode: a bf16 router flips near-tied expert choices */
        char e[256];
        vl_wpart pr = { r->data, r->dtype, E, VL_OUT_IN, NULL };
        if (vl_linear_init(&ly->router, false, H, &pr, 1, e, sizeof e))
            return vl_err(L->err, L->errlen, "model.language_model.layers.%d.mlp.gate: %s", i, e);
        L->m->weight_bytes += ly->router.bytes;
    }
    const st_tensor *gu = get3(L, E, H, 2 * I, "model.language_model.layers.%d.mlp.experts.gate_up_proj", i);
    const st_tensor *dn = get3(L, E, I, H, "model.language_model.layers.%d.mlp.experts.down_proj", i);
    if (!gu || !dn) return -1;
    ly->exp_gate_up = calloc((size_t)E, sizeof(vl_linear));
    ly->exp_down = calloc((size_t)E, sizeof(vl_linear));
    if (!ly->exp_gate_up || !ly->exp_down) return vl_err(L->err, L->errlen, "out of memory");
    const size_t esz = st_dtype_size(gu->dtype);
    for (int e = 0; e < E; e++) {
        /* Stored right-multiplied: gu = x @ gate_up_proj[e] (gate half first), y = . @ down_proj[e]. */
        vl_wpart pg = { (const uint8_t *)gu->data + (size_t)e * H * 2 * I * esz, gu->dtype, 2 * I,
                        VL_IN_OUT, NULL };
        snprintf(p, sizeof p, "model.language_model.layers.%d.mlp.experts.gate_up_proj[%d]", i, e);
        if (pack(L, &ly->exp_gate_up[e], H, &pg, 1, p)) return -1;
        vl_wpart pd = { (const uint8_t *)dn->data + (size_t)e * I * H * st_dtype_size(dn->dtype),
                        dn->dtype, H, VL_IN_OUT, NULL };
        snprintf(p, sizeof p, "model.language_model.layers.%d.mlp.experts.down_proj[%d]", i, e);
        if (pack(L, &ly->exp_down[e], I, &pd, 1, p)) return -1;
    }
    release_pages(gu);
    release_pages(dn);
    return 0;
}

int vl_text_load(model *m, char *err, size_t errlen) {
    vl_loader L = { m, err, errlen };
    const model_text_config *c = &m->cfg.text;
    vl_text *t = &m->txt;
    t->hidden = c->hidden_size;
    t->layers = c->num_hidden_layers;
    t->heads = c->num_attention_heads;
    t->kv_heads = c->num_key_value_heads;
    t->head_dim = c->head_dim;
    t->inter = c->intermediate_size;
    t->vocab = c->vocab_size;
    t->experts = m->cfg.arch == MODEL_ARCH_MOE ? c->num_experts : 0;
    t->top_k = c->num_experts_per_tok;
    t->moe_inter = c->moe_intermediate_size;
    t->norm_topk = c->norm_topk_prob;
    t->rms_eps = (float)c->rms_norm_eps;
    if (t->layers <= 0 || t->layers > MODEL_MAX_LAYERS || t->hidden <= 0 || t->vocab <= 0)
        return vl_err(err, errlen, "%s: text_config has num_hidden_layers %d, hidden_size %d, "
                      "vocab_size %d", m->ck->dir, t->layers, t->hidden, t->vocab);
    if (t->heads <= 0 || t->kv_heads <= 0 || t->heads % t->kv_heads || t->head_dim <= 0 ||
        t->head_dim % 2 || t->head_dim / 2 > 512)
        return vl_err(err, errlen, "%s: text_config num_attention_heads %d, num_key_value_heads "
                      "%d, head_dim %d are not a valid GQA layout", m->ck->dir, t->heads,
                      t->kv_heads, t->head_dim);
    if (t->experts > 0 && (t->top_k <= 0 || t->top_k > t->experts || t->moe_inter <= 0))
        return vl_err(err, errlen, "%s: text_config num_experts %d, num_experts_per_tok %d, "
                      "moe_intermediate_size %d are inconsistent", m->ck->dir, t->experts,
                      t->top_k, t->moe_inter);
    const int half = t->head_dim / 2;
    const int *sec = c->mrope_section;
    if (sec[0] < 0 || sec[1] < 0 || sec[2] < 0 || sec[0] + sec[1] + sec[2] != half)
        return vl_err(err, errlen, "%s: text_config.rope_scaling.mrope_section [%d, %d, %d] must "
                      "sum to head_dim/2 = %d", m->ck->dir, sec[0], sec[1], sec[2], half);
    t->rope_inv_freq = malloc(sizeof(float) * (size_t)half);
    if (!t->rope_inv_freq) return vl_err(err, errlen, "out of memory");
    for (int j = 0; j < half; j++) {
        float e = (float)(2 * j) / (float)t->head_dim;
        t->rope_inv_freq[j] = (float)(1.0 / (double)(float)pow(c->rope_theta, (double)e));
        if (c->mrope_interleaved) {
            /* Interleaved MRoPE: T H W T H W ... for the first 3*section entries, then T. */
            t->rope_axis[j] = (j % 3 == 1 && j < 3 * sec[1]) ? 1 : (j % 3 == 2 && j < 3 * sec[2]) ? 2 : 0;
        } else {
            t->rope_axis[j] = j < sec[0] ? 0 : j < sec[0] + sec[1] ? 1 : 2;
        }
    }

    int64_t eshape[2] = { t->vocab, t->hidden };
    if (!(t->embed = get_tensor(&L, 2, eshape, "model.language_model.embed_tokens.weight"))) return -1;
    t->layer = calloc((size_t)t->layers, sizeof *t->layer);
    if (!t->layer) return vl_err(err, errlen, "out of memory");
    for (int i = 0; i < t->layers; i++)
        if (load_text_layer(&L, i)) return -1;
    if (load_norm(&L, &t->norm, t->hidden, false, "model.language_model.norm")) return -1;
    if (c->tie_word_embeddings) {
        vl_wpart p = { t->embed->data, t->embed->dtype, t->vocab, VL_OUT_IN, NULL };
        if (pack(&L, &t->lm_head, t->hidden, &p, 1, "lm_head (tied to embed_tokens)")) return -1;
    } else if (load_linear(&L, &t->lm_head, t->hidden, t->vocab, false, "lm_head")) {
        return -1;
    }
    release_pages(t->embed);
    return 0;
}

void vl_text_free(vl_text *t) {
    if (t->layer) {
        for (int i = 0; i < t->layers; i++) {
            vl_text_layer *ly = &t->layer[i];
            free_norm(&ly->input_norm);
            free_norm(&ly->post_norm);
            free_norm(&ly->q_norm);
            free_norm(&ly->k_norm);
            vl_linear_free(&ly->qkv);
            vl_linear_free(&ly->o_proj);
            vl_linear_free(&ly->gate_up);
            vl_linear_free(&ly->down);
            vl_linear_free(&ly->router);
            if (ly->exp_gate_up)
                for (int e = 0; e < t->experts; e++) vl_linear_free(&ly->exp_gate_up[e]);
            if (ly->exp_down)
                for (int e = 0; e < t->experts; e++) vl_linear_free(&ly->exp_down[e]);
            free(ly->exp_gate_up);
            free(ly->exp_down);
        }
        free(t->layer);
    }
    free_norm(&t->norm);
    vl_linear_free(&t->lm_head);
    free(t->rope_inv_freq);
    memset(t, 0, sizeof *t);
}

int vl_lin(model *m, const vl_linear *l, const float *x, int M, int ldx, float *y, int ldy,
           vl_act act, bool accumulate, char *err, size_t errlen) {
    if (M <= 0) return 0;
    if (!l->bf16) return vl_linear_fwd(m->dnnl, l, M, x, ldx, y, ldy, act, accumulate, err, errlen);
    uint16_t *b = vl_buf_get(&m->scratch[VL_S_BF16], 2 * (size_t)M * l->K);
    if (!b) return vl_err(err, errlen, "out of memory (bf16 activations, %d x %d)", M, l->K);
#pragma omp parallel for schedule(static) if (M > 8)
    for (int r = 0; r < M; r++) vl_f32_to_bf16(x + (size_t)r * ldx, b + (size_t)r * l->K, (size_t)l->K);
    return vl_linear_fwd(m->dnnl, l, M, b, l->K, y, ldy, act, accumulate, err, errlen);
}

/* ---- model ------------------------------------------------------------------------------- */

int model_create(const checkpoint *ck, const model_options *opts, model **out,
                 char *err, size_t errlen) {
    if (!ck || !out) return vl_err(err, errlen, "model_create: no checkpoint given");
    *out = NULL;
    model *m = calloc(1, sizeof *m);
    if (!m) return vl_err(err, errlen, "out of memory");
    m->ck = ck;
    m->cfg = ck->config;
    m->compute = opts ? opts->compute : MODEL_COMPUTE_BF16;
    if (m->compute != MODEL_COMPUTE_BF16 && m->compute != MODEL_COMPUTE_F32) {
        int mode = (int)m->compute;
        free(m);
        return vl_err(err, errlen, "model_create: unknown compute mode %d", mode);
    }
    m->threads = opts && opts->num_threads > 0 ? opts->num_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (m->threads <= 0) m->threads = 1;
    /* oneDNN (built on OpenMP in Debian) and our kernels share the one OpenMP pool. */
    omp_set_num_threads(m->threads);
    char e[512] = "";
    if (vl_dnnl_create(&m->dnnl, e, sizeof e) || vl_vision_load(m, e, sizeof e) ||
        vl_text_load(m, e, sizeof e)) {
        vl_err(err, errlen, "%s", e);
        model_destroy(m);
        return -1;
    }
    *out = m;
    return 0;
}

void model_destroy(model *m) {
    if (!m) return;
    vl_vision_free(&m->vis);
    vl_text_free(&m->txt);
    vl_dnnl_destroy(m->dnnl);
    for (size_t i = 0; i < sizeof m->scratch / sizeof m->scratch[0]; i++) vl_buf_free(&m->scratch[i]);
    free(m);
}

const model_config *model_get_config(const model *m) { return &m->cfg; }
model_compute model_get_compute(const model *m) { return m->compute; }
size_t model_weight_bytes(const model *m) { return m->weight_bytes; }

void model_set_trace(model *m, model_trace_fn fn, void *ctx) {
    m->trace = fn;
    m->trace_ctx = ctx;
}
