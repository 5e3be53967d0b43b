/* config.h — a Qwen3-VL checkpoint's configuration, read from the files a published
 * Hugging Face checkpoint folder holds: config.json (text_config, vision_config, token ids),
 * generation_config.json, preprocessor_config.json and video_preprocessor_config.json.
 * Every value comes from those files; nothing model-specific is hard-coded. */
#ifndef VIGIL_MODEL_CONFIG_H
#define VIGIL_MODEL_CONFIG_H

#include <stddef.h>
#include <stdbool.h>

#define MODEL_MAX_LAYERS 256
#define MODEL_MAX_DEEPSTACK 16
#define MODEL_MAX_EOS 8

typedef enum { MODEL_ARCH_DENSE = 0, MODEL_ARCH_MOE = 1 } model_arch;

typedef struct model_text_config {
    int hidden_size;
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads;
    int head_dim;
    int intermediate_size;        /* dense MLP width (unused by sparse MoE layers) */
    int vocab_size;
    int max_position_embeddings;
    double rms_norm_eps;
    double rope_theta;
    int mrope_section[3];         /* T, H, W frequency counts */
    bool mrope_interleaved;
    bool attention_bias;
    bool tie_word_embeddings;
    /* MoE (model_type qwen3_vl_moe); num_experts == 0 for dense checkpoints */
    int num_experts;
    int num_experts_per_tok;
    int moe_intermediate_size;
    bool norm_topk_prob;
    int decoder_sparse_step;
    bool layer_is_moe[MODEL_MAX_LAYERS]; /* derived from decoder_sparse_step and mlp_only_layers */
} model_text_config;

typedef struct model_vision_config {
    int depth;
    int hidden_size;
    int num_heads;
    int intermediate_size;
    int patch_size;
    int temporal_patch_size;
    int spatial_merge_size;
    int in_channels;
    int out_hidden_size;
    int num_position_embeddings;
    int num_deepstack;
    int deepstack_visual_indexes[MODEL_MAX_DEEPSTACK];
    char hidden_act[32];          /* "gelu_pytorch_tanh" in every published checkpoint */
} model_vision_config;

/* Qwen processor settings (preprocessor_config.json / video_preprocessor_config.json). */
typedef struct model_processor_config {
    long image_min_pixels;        /* size.shortest_edge */
    long image_max_pixels;        /* size.longest_edge */
    long video_min_pixels;
    long video_max_pixels;
    double video_fps;             /* sampling fps, default 2 */
    int video_min_frames;         /* default 4 */
    int video_max_frames;         /* default 768 */
    float image_mean[3];
    float image_std[3];
} model_processor_config;

typedef struct model_config {
    char model_type[32];          /* "qwen3_vl" or "qwen3_vl_moe" */
    model_arch arch;
    model_text_config text;
    model_vision_config vision;
    model_processor_config processor;
    int image_token_id;
    int video_token_id;
    int vision_start_token_id;
    int vision_end_token_id;
    int num_eos;                  /* from generation_config.json; empty when it names none */
    int eos_token_ids[MODEL_MAX_EOS];
    char torch_dtype[16];         /* "bfloat16", ... as written in config.json */
} model_config;

/* Reads the configuration files of checkpoint folder `dir`. config.json is required;
 * generation_config.json and the processor files are optional (upstream defaults apply).
 * Returns 0, or -1 with a message naming the file and the key in err. */
int model_config_load(const char *dir, model_config *cfg, char *err, size_t errlen);

/* Parses a config.json text (used by the loader and by the checkpoint generator's tests). */
int model_config_parse_json(const char *json_text, const char *filename, model_config *cfg,
                            char *err, size_t errlen);

#endif
