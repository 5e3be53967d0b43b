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
    char rope_type[16];           /* "default": the only RoPE Qwen3-VL uses (others are refused) */
    int mrope_section[3];         /* T, H, W frequency counts; sum == head_dim / 2 */
    bool mrope_interleaved;
    bool attention_bias;
    bool tie_word_embeddings;     /* top-level key first (what upstream uses), else text_config's */
    char hidden_act[32];          /* "silu" (checked: the only activation implemented) */
    /* MoE (model_type qwen3_vl_moe); num_experts == 0 for dense checkpoints */
    int num_experts;
    int num_experts_per_tok;
    int moe_intermediate_size;
    bool norm_topk_prob;
    int decoder_sparse_step;
    bool layer_is_moe[MODEL_MAX_LAYERS]; /* derived from decoder_sparse_step and mlp_only_layers */
    int num_moe_layers;           /* count of layer_is_moe */
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
    char hidden_act[32];          /* "gelu_pytorch_tanh" (checked: the only one implemented) */
    int head_dim;                 /* derived: hidden_size / num_heads */
} model_vision_config;

/* Qwen processor settings (preprocessor_config.json / video_preprocessor_config.json).
 * Defaults when a file or key is absent: images use the values every published Qwen3-VL
 * preprocessor_config.json holds (65536 / 16777216 pixels; the image processor class's own
 * defaults are Qwen2-VL's 14-px ones and would not fit this model), videos use
 * Qwen3VLVideoProcessor's class defaults (131072 / 786432 pixels, fps 2, 4..768 frames).
 * patch/temporal/merge sizes in these files must agree with vision_config. */
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
    float video_mean[3];
    float video_std[3];
    int patch_size;               /* = vision_config.patch_size */
    int temporal_patch_size;      /* = vision_config.temporal_patch_size */
    int merge_size;               /* = vision_config.spatial_merge_size */
} model_processor_config;

/* generation_config.json sampling defaults (upstream GenerationConfig defaults when absent:
 * greedy, temperature 1, top_k 50, top_p 1, repetition_penalty 1). */
typedef struct model_generation_config {
    bool do_sample;
    double temperature;
    int top_k;
    double top_p;
    double repetition_penalty;
    int bos_token_id;             /* -1 when not given */
    int pad_token_id;             /* -1 when not given */
} model_generation_config;

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
    /* generation_config.json's eos_token_id (an int or a list); when that file has none,
     * config.json's (top level, then text_config), as upstream's from_model_config does;
     * empty when no file names one. */
    int num_eos;
    int eos_token_ids[MODEL_MAX_EOS];
    char torch_dtype[16];         /* "bfloat16", ... as written in config.json ("dtype" or
                                     "torch_dtype"); empty when absent */
    model_generation_config generation;
} model_config;

/* Reads the configuration files of checkpoint folder `dir`. config.json is required;
 * generation_config.json and the processor files are optional (upstream defaults apply).
 * Both the v4 layout (text_config.rope_scaling + rope_theta) and the v5 one
 * (text_config.rope_parameters) are read. Everything is validated (types, ranges, head
 * counts, mrope_section vs head_dim, DeepStack indexes vs depth, token ids vs vocab).
 * Returns 0, or -1 with a message naming the file and the key in err. */
int model_config_load(const char *dir, model_config *cfg, char *err, size_t errlen);

/* Parses a config.json text (used by the loader and by the checkpoint generator's tests).
 * The processor and generation settings get their defaults; eos ids come from config.json's
 * eos_token_id if it has one. */
int model_config_parse_json(const char *json_text, const char *filename, model_config *cfg,
                            char *err, size_t errlen);

/* Applies a generation_config.json / preprocessor_config.json / video_preprocessor_config.json
 * text to a parsed configuration (filename is used in messages). */
int model_config_parse_generation(const char *json_text, const char *filename, model_config *cfg,
                                  char *err, size_t errlen);
int model_config_parse_processor(const char *json_text, const char *filename, bool video,
                                 model_config *cfg, char *err, size_t errlen);

/* Whether text decoder layer i has a sparse MoE block (false for out-of-range i). */
bool model_config_layer_is_moe(const model_config *cfg, int layer);

#endif
