/* model.h — Qwen3-VL (dense and MoE) inference on the CPU: the public forward API.
 *
 * Data flow, as the daemon uses it:
 *   u8 RGB frames (already resized, HWC) --model_patchify--> patch rows [N,1536]
 *   --model_vision_encode--> merged visual embeddings + DeepStack features (model_vision_out)
 *   token ids + (T,H,W) positions + KV slots (+ visual rows) --model_forward--> KV cache, logits
 *   logits --model_sampler / model_generate--> tokens and streamed text.
 *
 * Positions are MRoPE (T,H,W) triples computed by the caller (model_rope_index for a whole
 * prompt the upstream get_rope_index way, or model_pos_text/model_pos_visual incrementally).
 * The next position is NOT the number of cached tokens: a visual block of r x c merged tokens
 * advances it by max(r, c) only.
 *
 * Compute modes: MODEL_COMPUTE_BF16 keeps the checkpoint's bf16 weights and runs bf16 matmuls
 * with f32 accumulation (the fast path); MODEL_COMPUTE_F32 upcasts every weight to f32 once at
 * model_create (2x the weight memory) and is the exact-comparison mode against the reference.
 * Norms, softmax, RoPE, routing and residual sums are f32 in both modes.
 *
 * Threading: a model and its KV caches are used by one thread at a time (scratch buffers live
 * in the model); the math inside a call runs on opts.num_threads OpenMP threads.
 *
 * Errors: functions return 0 (or a count) on success and a negative value on failure with a
 * message in the caller's err buffer naming the argument/tensor and what was expected. Bad input
 * never crashes. */
#ifndef VIGIL_MODEL_MODEL_H
#define VIGIL_MODEL_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/tokenizer.h"

/* ------------------------------------------------------------------------------------------ */
/* Model                                                                                      */

typedef enum {
    MODEL_COMPUTE_BF16 = 0,   /* bf16 weights and matmul inputs, f32 accumulation; KV cache bf16 */
    MODEL_COMPUTE_F32 = 1,    /* everything f32 (weights upcast at load); KV cache f32 */
} model_compute;

typedef struct model_options {
    model_compute compute;
    int num_threads;          /* math threads; <= 0 means one per online CPU */
} model_options;

typedef struct model model;

/* Call first thing in main(): re-executes the program with OMP_WAIT_POLICY=passive unless the
 * environment names a policy (spinning OpenMP threads starve everything else on small
 * machines, and the runtime reads the policy only at load). Returns only if no re-exec happened. */
void model_runtime_prepare(char **argv);

/* Builds the model on an opened checkpoint (which must outlive it). Checks every tensor the
 * forward pass uses (presence, dtype, shape), prepares the weights for the compute mode. */
int model_create(const checkpoint *ck, const model_options *opts, model **out,
                 char *err, size_t errlen);
void model_destroy(model *m);

const model_config *model_get_config(const model *m);
model_compute model_get_compute(const model *m);
/* Bytes of weights as the compute kernels read them (the bf16 mapping, or the f32 copies). */
size_t model_weight_bytes(const model *m);

/* Optional inspection hook for tests and debugging: called with every intermediate the forward
 * passes produce, in f32, row-major [rows, cols]. Names and index meanings:
 *   "vision.patch_embed"   0      [patches, vision hidden]   patch embedding before pos_embed
 *   "vision.block"         i      [patches, vision hidden]   output of vision block i
 *   "vision.deepstack"     k      [tokens, text hidden]      DeepStack merger k output
 *   "vision.merger"        0      [tokens, text hidden]      main merger output
 *   "text.layer_input"     i      [batch, hidden]            input of decoder layer i
 *   "text.layer_output"    i      [batch, hidden]            output of layer i (before DeepStack add)
 *   "text.moe_router_logits" i    [batch, experts]           router logits of MoE layer i
 *   "text.moe_topk_ids"    i      [batch, top_k]             chosen experts (ids as floats), descending
 *   "text.moe_topk_weights" i     [batch, top_k]             their (renormalised) weights
 *   "text.moe_output"      i      [batch, hidden]            MoE block output before the residual add
 *   "text.final_norm"      0      [batch, hidden]            final RMSNorm output
 * The pointer is valid only during the call. NULL fn turns tracing off. */
typedef void (*model_trace_fn)(void *ctx, const char *name, int index, const float *data,
                               int rows, int cols);
void model_set_trace(model *m, model_trace_fn fn, void *ctx);

/* ------------------------------------------------------------------------------------------ */
/* Vision input: patchify                                                                     */

/* A visual grid in patches (t = frame pairs, h/w = 16-px patches), as upstream's grid_thw. */
typedef struct model_grid {
    int t, h, w;
} model_grid;

/* Number of patch rows and merged tokens of a grid. */
long model_grid_patches(const model_grid *g);
long model_grid_tokens(const model_config *cfg, const model_grid *g);

/* Width of one patch row: in_channels * temporal_patch_size * patch_size^2 (1536). */
int model_patch_dim(const model_config *cfg);

/* Normalises and patchifies nframes already-resized RGB frames (u8, HWC, height x width, rows
 * `stride` bytes apart; stride 0 = width*3) into patch rows [patches, patch_dim] in the order
 * upstream's processor writes pixel_values: (t, h_block, w_block, h_in, w_in) with the 2x2 merge
 * blocks, each row [channel][t_in][py][px], value (u8 - mean*255)/(std*255) (the exact upstream
 * float result for mean = std = 0.5: (u8 - 127.5f) / 127.5f). nframes must be a positive multiple
 * of temporal_patch_size (a still image: pass the same frame pointer twice), height and width
 * multiples of patch_size*spatial_merge_size. `out` holds out_rows rows; *grid is set.
 * Returns the number of rows written or -1. */
long model_patchify(const model_config *cfg, const uint8_t *const *frames, int nframes,
                    int height, int width, size_t stride, float *out, size_t out_rows,
                    model_grid *grid, char *err, size_t errlen);

/* ------------------------------------------------------------------------------------------ */
/* Vision tower                                                                               */

typedef struct model_vision_out {
    int n_tokens;             /* merged tokens (sum over grids of t*h*w/merge^2) */
    int hidden;               /* text hidden size (vision out_hidden_size) */
    int num_deepstack;        /* = vision_config.deepstack_visual_indexes count */
    float *embeds;            /* [n_tokens, hidden]: replaces the image/video pad embeddings */
    float *deepstack;         /* [num_deepstack, n_tokens, hidden]: feature k added after layer k */
} model_vision_out;

/* Encodes patch rows of one or more grids (rows of grid 0 first). Attention is restricted to
 * each frame pair (block-diagonal), so encoding pairs one at a time gives the same result as
 * one call over the whole video. Checks n_rows against the grids and the grids against the
 * merge size. On success *out owns malloc'ed arrays (free with model_vision_out_free). */
int model_vision_encode(model *m, const float *patch_rows, size_t n_rows,
                        const model_grid *grids, int n_grids, model_vision_out *out,
                        char *err, size_t errlen);
void model_vision_out_free(model_vision_out *o);

/* ------------------------------------------------------------------------------------------ */
/* Positions (MRoPE T,H,W)                                                                    */

typedef struct model_pos {
    int32_t t, h, w;
} model_pos;

/* Position ids of a whole prompt exactly as upstream get_rope_index: ids contain
 * <|vision_start|> followed by runs of image/video pad tokens; image_grids / video_grids (in
 * patches) are consumed in order of appearance (a video grid with t frame pairs covers t
 * consecutive vision blocks of h*w/merge^2 pads each, as the processor writes them with a
 * timestamp before each pair). Writes n positions and, if rope_delta is not NULL,
 * (max position + 1) - n: decode step k then uses position n + k + rope_delta on all axes.
 * Errors when the pads do not match the grids. */
int model_rope_index(const model_config *cfg, const int32_t *ids, int n,
                     const model_grid *image_grids, int n_images,
                     const model_grid *video_grids, int n_videos,
                     model_pos *pos, int *rope_delta, char *err, size_t errlen);

/* Incremental positions for the daemon: *next is the next free position.
 * n text tokens get (p,p,p), p = *next, *next+1, ...; *next advances by n. */
void model_pos_text(int *next, int n, model_pos *out);
/* One visual block of grid g (in patches): merged token (ti,r,c) gets
 * (s+ti, s+r, s+c) with s = *next; *next becomes s + max(t, rows, cols) merged.
 * Writes model_grid_tokens(g) positions; returns that count or -1 for a bad grid. */
long model_pos_visual(const model_config *cfg, int *next, const model_grid *g, model_pos *out);

/* ------------------------------------------------------------------------------------------ */
/* KV cache                                                                                   */

/* An array of `capacity` slots; each slot holds one token's K and V for every layer (bf16 in
 * bf16 compute mode, f32 in f32 mode) plus the (T,H,W) position its key was rotated with.
 * A slot is FREE, VISIBLE or HIDDEN. A forward batch attends to every VISIBLE slot plus its own
 * tokens causally (token i sees batch tokens 0..i); afterwards the batch's slots are VISIBLE.
 * Attention depends only on visibility, never on slot order. */
typedef struct model_kv model_kv;

typedef enum { MODEL_SLOT_FREE = 0, MODEL_SLOT_VISIBLE = 1, MODEL_SLOT_HIDDEN = 2 } model_slot_state;

int model_kv_create(const model *m, int capacity, model_kv **out, char *err, size_t errlen);
void model_kv_destroy(model_kv *kv);
int model_kv_capacity(const model_kv *kv);
size_t model_kv_bytes_per_slot(const model_kv *kv);
int model_kv_count(const model_kv *kv, model_slot_state state);   /* slots in that state */
model_slot_state model_kv_state(const model_kv *kv, int slot);     /* FREE for out-of-range */
/* Position a used slot's key was rotated with (after any shifts). -1 if free/out of range. */
int model_kv_slot_pos(const model_kv *kv, int slot, model_pos *pos);

/* Range operations on slots [first, first+count). hide/show apply to used slots only (free
 * slots in the range are left free); release frees the slots (their contents are dropped). */
int model_kv_hide(model_kv *kv, int first, int count, char *err, size_t errlen);
int model_kv_show(model_kv *kv, int first, int count, char *err, size_t errlen);
int model_kv_release(model_kv *kv, int first, int count, char *err, size_t errlen);
/* Re-rotates the cached keys of the used slots in the range as if they had been written at
 * position + delta on all three axes (RoPE rotations compose), so a long-running stream can be
 * renumbered before it reaches max_position_embeddings. Values are unaffected. */
int model_kv_shift(model *m, model_kv *kv, int first, int count, int delta,
                   char *err, size_t errlen);

/* Sequential use (vigil-run, tests): the sequence occupies slots 0..len-1. */
int model_kv_seq_len(const model_kv *kv);          /* leading used slots */
int model_kv_truncate(model_kv *kv, int n);        /* frees every slot >= n */

/* ------------------------------------------------------------------------------------------ */
/* Text forward                                                                               */

/* Visual feature rows consumed by the batch's image/video pad tokens, in order. Row r of the
 * embeddings is embeds + r*hidden; DeepStack feature k of row r is
 * deepstack + k*deepstack_stride + r*hidden. From a model_vision_out starting at row r0:
 * { vo.embeds + r0*hidden, vo.deepstack + r0*hidden, vo.n_tokens*hidden, count }. */
typedef struct model_visual_rows {
    const float *embeds;
    const float *deepstack;       /* may be NULL only when the model has no DeepStack */
    size_t deepstack_stride;
    int n;
} model_visual_rows;

typedef struct model_batch {
    int n;                        /* tokens in the batch (>= 1) */
    const int32_t *ids;           /* [n] token ids; pad tokens take the next visual row */
    const model_pos *pos;         /* [n] MRoPE positions */
    const int32_t *slots;         /* [n] destination KV slots: distinct, not VISIBLE */
    model_visual_rows visual;     /* rows for the pad tokens (n == number of pads), or zeroed */
    int n_logits;                 /* batch rows whose logits are wanted (0: none) */
    const int32_t *logit_rows;    /* [n_logits] indices into the batch */
    float *logits;                /* [n_logits, vocab_size] output */
} model_batch;

/* Runs the decoder over the batch: embeddings (visual rows replace pad embeddings), every layer
 * with its K/V written to the batch's slots, DeepStack feature k added at visual rows after
 * layer k, final norm, lm_head for the requested rows. Validates everything first: on a
 * validation error the cache is unchanged; if the computation itself fails (out of memory)
 * the batch's destination slots are released. Batches of up to 8 tokens attend straight from
 * the cache (decode); larger ones gather the visible K/V and use matmuls (prefill). */
int model_forward(model *m, model_kv *kv, const model_batch *b, char *err, size_t errlen);

/* Sequential helper: appends n tokens at slots seq_len..seq_len+n-1 (all must be free) and,
 * if logits_last is not NULL, writes the last token's logits [vocab_size]. */
int model_forward_append(model *m, model_kv *kv, const int32_t *ids, const model_pos *pos, int n,
                         const model_visual_rows *visual, float *logits_last,
                         char *err, size_t errlen);

/* ------------------------------------------------------------------------------------------ */
/* Sampling and generation                                                                    */

typedef struct model_sampling {
    float temperature;            /* <= 0: greedy (argmax after penalties) */
    int top_k;                    /* <= 0: off */
    float top_p;                  /* >= 1: off */
    float min_p;                  /* <= 0: off; keeps p >= min_p * p_max */
    float repetition_penalty;     /* 1: off; HF rule over prompt + generated tokens */
    float presence_penalty;       /* 0: off; subtracted once from every generated token's logit */
    uint64_t seed;                /* same seed, same logits -> same tokens */
} model_sampling;

/* Neutral settings: greedy, no filters, no penalties. */
model_sampling model_sampling_default(void);

typedef struct model_sampler model_sampler;

int model_sampler_create(const model_sampling *p, int vocab_size, model_sampler **out,
                         char *err, size_t errlen);
void model_sampler_destroy(model_sampler *s);
/* Marks prompt tokens (subject to the repetition penalty only). */
void model_sampler_add_prompt(model_sampler *s, const int32_t *ids, size_t n);
/* Records a generated token (repetition and presence penalties). */
void model_sampler_accept(model_sampler *s, int32_t id);
/* Picks a token from logits [vocab_size]; logits are modified in place (penalties,
 * temperature). Does not call accept. */
int32_t model_sampler_sample(model_sampler *s, float *logits);

typedef enum {
    MODEL_STOP_EOS = 0,
    MODEL_STOP_STRING,
    MODEL_STOP_MAX_TOKENS,
    MODEL_STOP_CANCELLED,
    MODEL_STOP_NO_SLOTS,          /* ran out of the slots the caller supplied */
} model_stop_reason;

/* Streaming callback: id is the token just generated (the eos token too, with empty text),
 * text the newly final output text (may be empty; text that could still begin a stop string is
 * held back until it cannot). A last call with id -1 flushes text still held back when
 * generation ends without a stop string. Return nonzero to cancel. */
typedef int (*model_token_fn)(void *ctx, int32_t id, const char *text, size_t len);

typedef struct model_generate_params {
    model_sampling sampling;
    int max_tokens;                   /* > 0 */
    const char *const *stop_strings;  /* matched on the decoded text; not included in the output */
    int n_stop_strings;
    bool skip_special;                /* drop special tokens from the text */
    model_token_fn on_token;          /* may be NULL */
    void *ctx;
} model_generate_params;

typedef struct model_generate_result {
    model_stop_reason reason;
    int n_ids;
    int32_t *ids;                     /* malloc'ed generated ids (incl. the eos id if any) */
    char *text;                       /* malloc'ed output text (stop string cut off) */
    int n_fed;                        /* tokens written to the cache (slots[0..n_fed-1]) */
} model_generate_result;

/* Generates from `logits` (the prompt's last-position logits, [vocab_size], modified): samples a
 * token, and while no stop condition holds feeds it at slots[k] with text position *next_pos
 * (advanced) to get the next logits. Stops on eos (the config's generation eos ids and
 * <|im_end|>), a stop string, max_tokens, cancellation, or when n_slots are used up. The
 * tokenizer may be NULL (no text, no stop strings). The prompt ids for the repetition penalty
 * are given in prompt_ids (may be NULL). */
int model_generate(model *m, model_kv *kv, const tokenizer *tok, const model_generate_params *p,
                   const int32_t *prompt_ids, size_t n_prompt, float *logits,
                   const int32_t *slots, int n_slots, int *next_pos,
                   model_generate_result *res, char *err, size_t errlen);
void model_generate_result_free(model_generate_result *r);

#endif
