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

typedef enum {
    CKPT_INIT_NORMAL,   /* weight matrices, embeddings: normal(0, std) */
    CKPT_INIT_ONES,     /* norm weights */
    CKPT_INIT_ZEROS,    /* biases */
} ckpt_init_kind;

typedef struct ckpt_tensor_spec {
    char name[CKPT_NAME_MAX];
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    ckpt_init_kind init;
    int fan_in;                   /* input width, for scaling random weights */
} ckpt_tensor_spec;

/* Every tensor a checkpoint with this configuration must hold, in HF names
 * (model.visual.*, model.language_model.*, lm_head.weight unless tied).
 * *out is malloc'ed; the caller frees it. Returns 0 or -1 with err. */
int ckpt_expected_tensors(const model_config *cfg, ckpt_tensor_spec **out, size_t *count,
                          char *err, size_t errlen);

typedef struct checkpoint {
    char dir[1024];
    model_config config;
    st_archive *weights;
} checkpoint;

int checkpoint_open(const char *dir, checkpoint **out, char *err, size_t errlen);
void checkpoint_close(checkpoint *ck);

/* Looks a validated tensor up by printf-style name, e.g.
 * checkpoint_tensor(ck, "model.language_model.layers.%d.self_attn.q_proj.weight", i).
 * Returns NULL only for names the configuration does not imply. */
const st_tensor *checkpoint_tensor(const checkpoint *ck, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
