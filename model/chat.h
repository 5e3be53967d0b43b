/* chat.h — Qwen3-VL chat prompts, rendered the way the upstream chat template and processor
 * write them, as token ids plus the place of every run of vision pad tokens.
 *
 *   <|im_start|>system\n{text}<|im_end|>\n            (only if the caller gives one)
 *   <|im_start|>user\n{parts}<|im_end|>\n
 *   <|im_start|>assistant\n{text}<|im_end|>\n         (earlier answers)
 *   <|im_start|>assistant\n[<think>\n]                 (generation prompt; <think>\n opens the
 *                                                       answer of Thinking checkpoints)
 * Parts: text as is; an image is <|vision_start|> N x <|image_pad|> <|vision_end|>; a video is,
 * for each frame pair k, "<%.1f seconds>" <|vision_start|> N_k x <|video_pad|> <|vision_end|>
 * (timestamp = mean time of the pair's two frames, formatted like Python's "%.1f": the exact
 * binary value rounded half to even). There is no default system prompt.
 *
 * Token ids come from the tokenizer (looked up by their text), never from constants.
 *
 * Text and ids: each run of text between two template tokens is tokenized as one string, so
 * the ids equal upstream's tokenization of the expanded prompt text. Message text is only
 * text by default: "<|im_end|>" typed by a user is tokenized as characters, not as the
 * control token (CHAT_TEXT_PARSE_ADDED restores upstream's behaviour of recognising it).
 *
 * Piece-wise building (the daemon): chat_append_prefix, then chat_append_video_pair /
 * chat_append_image per visual block as frames arrive, then chat_append_question. Each call
 * tokenizes its own text and appends to the same chat_prompt; the result equals chat_render
 * of the whole conversation whenever a piece boundary touches a template token or the
 * "\n<" between "user\n" and a timestamp, which covers prefix + any visual blocks + question.
 * (A question starting with a line break directly after the prefix tokenizes that break on
 * its own instead of joining it with the "\n" of "user\n".) */
#ifndef VIGIL_MODEL_CHAT_H
#define VIGIL_MODEL_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/config.h"
#include "model/tokenizer.h"

/* The template tokens of one tokenizer. */
typedef struct chat_format {
    const tokenizer *tok;
    int32_t im_start, im_end;             /* <|im_start|>, <|im_end|> */
    int32_t vision_start, vision_end;     /* <|vision_start|>, <|vision_end|> */
    int32_t image_pad, video_pad;         /* <|image_pad|>, <|video_pad|> */
    int32_t think;                        /* <think>, or -1 if the tokenizer has none */
} chat_format;

/* Looks the template tokens up in tok (which must outlive f). Returns 0, or -1 naming the
 * missing token. */
int chat_format_init(chat_format *f, const tokenizer *tok, char *err, size_t errlen);
/* Checks that the checkpoint's config.json names the same ids for image/video pads and
 * vision start/end as the tokenizer does. */
int chat_format_check_config(const chat_format *f, const model_config *cfg, char *err,
                             size_t errlen);

typedef enum { CHAT_ROLE_SYSTEM = 0, CHAT_ROLE_USER, CHAT_ROLE_ASSISTANT } chat_role;
typedef enum { CHAT_PART_TEXT = 0, CHAT_PART_IMAGE, CHAT_PART_VIDEO } chat_part_kind;

typedef struct chat_part {
    chat_part_kind kind;
    /* CHAT_PART_TEXT: UTF-8 text of text_len bytes (any bytes; invalid UTF-8 is handled as
     * the tokenizer does). */
    const char *text;
    size_t text_len;
    /* CHAT_PART_IMAGE: merged visual tokens (grid t*h*w / merge^2; 1 <= n). */
    int image_tokens;
    /* CHAT_PART_VIDEO: n_pairs frame pairs, pair k with pair_tokens[k] merged tokens and
     * timestamp timestamps[k] seconds (finite, >= 0). */
    int n_pairs;
    const int *pair_tokens;
    const double *timestamps;
} chat_part;

typedef struct chat_message {
    chat_role role;
    const chat_part *parts;
    size_t n_parts;
} chat_message;

typedef enum {
    /* Message text is text: no added token is recognised in user/system text; in assistant
     * text only non-special added tokens (<think>, </think>, <tool_call>...) are, as the
     * model wrote them. */
    CHAT_TEXT_SAFE = 0,
    /* As upstream, which tokenizes the rendered string: every added token string in any
     * message is the token. */
    CHAT_TEXT_PARSE_ADDED = 1,
} chat_text_mode;

typedef struct chat_options {
    bool add_generation_prompt;   /* end with "<|im_start|>assistant\n" */
    bool thinking;                /* ...followed by "<think>\n" (Thinking checkpoints) */
    bool add_vision_id;           /* "Picture k: " / "Video k: " before each visual part */
    chat_text_mode text_mode;
} chat_options;

/* Defaults: generation prompt on, no thinking, no vision ids, CHAT_TEXT_SAFE. */
chat_options chat_options_default(void);

/* A run of pad tokens in a prompt: ids[first .. first+count) are image or video pads of one
 * image or one video frame pair. */
typedef struct chat_vision_span {
    chat_part_kind kind;          /* CHAT_PART_IMAGE or CHAT_PART_VIDEO */
    size_t message, part;         /* origin in chat_render's input; SIZE_MAX for pieces */
    int pair;                     /* frame pair index within its video, 0 for images */
    double timestamp;             /* video pairs: seconds; images: 0 */
    size_t first, count;
} chat_vision_span;

/* A prompt being built. Zero-initialise (or chat_prompt_init) before use; the public fields
 * are valid after every successful call. */
typedef struct chat_prompt {
    int32_t *ids;
    size_t n_ids;
    char *text;                   /* the expanded prompt text, NUL-terminated */
    size_t text_len;
    chat_vision_span *spans;
    size_t n_spans;
    /* private */
    size_t ids_cap, text_cap, spans_cap;
    char *pend;                   /* text not yet tokenized */
    size_t pend_len, pend_cap;
    int pend_flags;               /* 0, or 0x100 | tokenizer flags of pending message text */
    int n_images, n_videos;       /* for add_vision_id */
} chat_prompt;

void chat_prompt_init(chat_prompt *p);
void chat_prompt_clear(chat_prompt *p);   /* empties it, keeps the memory */
void chat_prompt_free(chat_prompt *p);

/* Renders a whole conversation into out (cleared first). Returns 0, or -1 with a message
 * naming the message/part and what was expected; out is then empty. */
int chat_render(const chat_format *f, const chat_message *msgs, size_t n_msgs,
                const chat_options *opts, chat_prompt *out, char *err, size_t errlen);

/* Piece-wise building: each call appends to out and tokenizes its own text. On error out is
 * left as it was. */

/* [<|im_start|>system\n{system}<|im_end|>\n] <|im_start|>user\n   (system may be NULL) */
int chat_append_prefix(const chat_format *f, const char *system, size_t system_len,
                       const chat_options *opts, chat_prompt *out, char *err, size_t errlen);
/* <|vision_start|> n x <|image_pad|> <|vision_end|> */
int chat_append_image(const chat_format *f, int n_tokens, const chat_options *opts,
                      chat_prompt *out, char *err, size_t errlen);
/* <t seconds><|vision_start|> n x <|video_pad|> <|vision_end|>; pair is recorded in the span */
int chat_append_video_pair(const chat_format *f, double timestamp, int n_tokens, int pair,
                           chat_prompt *out, char *err, size_t errlen);
/* Text inside the current turn (role decides which added tokens count, see chat_text_mode). */
int chat_append_text(const chat_format *f, chat_role role, const char *text, size_t len,
                     const chat_options *opts, chat_prompt *out, char *err, size_t errlen);
/* {question}<|im_end|>\n and, if opts->add_generation_prompt, the generation prompt. */
int chat_append_question(const chat_format *f, const char *question, size_t len,
                         const chat_options *opts, chat_prompt *out, char *err, size_t errlen);
/* <|im_start|>{role}\n  and  <|im_end|>\n  for other layouts (multi-turn). */
int chat_append_turn_open(const chat_format *f, chat_role role, chat_prompt *out, char *err,
                          size_t errlen);
int chat_append_turn_close(const chat_format *f, chat_prompt *out, char *err, size_t errlen);
/* <|im_start|>assistant\n [<think>\n] */
int chat_append_generation_prompt(const chat_format *f, const chat_options *opts,
                                  chat_prompt *out, char *err, size_t errlen);

/* Writes "<%.1f seconds>" for t into buf (Python's rounding of the binary value, which is
 * also C's). Returns the length, or -1 if t is not finite and >= 0 or buf is too small. */
int chat_format_timestamp(double t, char *buf, size_t cap);

#endif
