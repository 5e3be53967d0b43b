/* checkpoint.h — a published Qwen3-VL checkpoint folder, opened and validated.
 * checkpoint_open() reads the configuration, maps the weights and checks every tensor the
 * configuration implies (presence, dtype BF16/F16/F32, shape) before anything uses them;
 * errors name the file, the tensor and what was expected. The same list of expected
 * tensors drives the random-checkpoint generator (tools/), so the two cannot drift apart. */
#ifndef VIGIL_MODEL_CHECKPOINT_H
#define VIGIL_MODEL_CHECKPOINT_H

#include "model/config.h"
#include "model/safetensors.h"

#define CKPT_NAME_MAX 160

/* How the random-checkpoint generator fills a tensor. */
typedef enum {
    CKPT_INIT_NORMAL,   /* weight matrices, embeddings, biases: normal(0, std) */
    CKPT_INIT_ONES,     /* norm weights */
    CKPT_INIT_ZEROS,    /* (not used by the list below: biases get small random values so that
                           a forward pass that drops one is caught) */
} ckpt_init_kind;

typedef struct ckpt_tensor_spec {
    char name[CKPT_NAME_MAX];
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    ckpt_init_kind init;
    int fan_in;                   /* input width, for scaling random weights (0: not a matrix) */
    float std;                    /* for CKPT_INIT_NORMAL: 1/sqrt(fan_in) for matrices, so
                                     activations keep their scale through any depth; 0.02
                                     (upstream's initializer_range) for embeddings and biases */
} ckpt_tensor_spec;

/* Every tensor a checkpoint with this configuration must hold, in HF names
 * (model.visual.*, model.language_model.*, lm_head.weight unless tied), sorted by name.
 * *out is malloc'ed; the caller frees it. Returns 0 or -1 with err. */
int ckpt_expected_tensors(const model_config *cfg, ckpt_tensor_spec **out, size_t *count,
                          char *err, size_t errlen);

typedef struct checkpoint {
    char dir[1024];
    model_config config;
    st_archive *weights;
    ckpt_tensor_spec *expected;   /* ckpt_expected_tensors(&config), sorted by name */
    size_t n_expected;
    size_t n_ignored;             /* tensors in the files the configuration does not imply */
} checkpoint;

/* Reads the configuration (model_config_load), maps the weights (st_archive_open_dir) and
 * checks every expected tensor: present, dtype BF16, F16 or F32, exact shape. Errors name the
 * file and the tensor, e.g. "DIR/model.safetensors: tensor 'model.visual.blocks.0.attn.qkv.weight':
 * expected shape [192, 64], found [64, 192]". */
int checkpoint_open(const char *dir, checkpoint **out, char *err, size_t errlen);
void checkpoint_close(checkpoint *ck);

/* Looks a validated tensor up by printf-style name, e.g.
 * checkpoint_tensor(ck, "model.language_model.layers.%d.self_attn.q_proj.weight", i).
 * Returns NULL only for names the configuration does not imply. */
const st_tensor *checkpoint_tensor(const checkpoint *ck, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The LM head: lm_head.weight, or the token embedding when tie_word_embeddings is set. */
const st_tensor *checkpoint_lm_head(const checkpoint *ck);

/* Total elements of the expected tensors (the model's parameter count). */
size_t ckpt_param_count(const ckpt_tensor_spec *specs, size_t count);

#endif
