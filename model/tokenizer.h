/* tokenizer.h — the Qwen byte-level BPE tokenizer, loaded from a checkpoint's tokenizer.json:
 * NFC normalization (utf8proc), the pre-tokenizer regex from the file (PCRE2 with Unicode
 * properties), byte-level mapping, BPE by merge rank, added/special tokens matched before
 * anything else and never split. Decoding maps ids back to bytes; tok_stream_decoder emits
 * text for streaming output without ever cutting a UTF-8 sequence. */
#ifndef VIGIL_MODEL_TOKENIZER_H
#define VIGIL_MODEL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

typedef struct tokenizer tokenizer;

int tok_load(const char *tokenizer_json_path, tokenizer **out, char *err, size_t errlen);
void tok_free(tokenizer *t);

/* Encodes UTF-8 text (any bytes: invalid sequences are handled as the reference does).
 * Special/added tokens in the text are recognised. Returns the number of ids, writing at most
 * cap of them into ids (call with cap 0 to size), or -1 on error. */
long tok_encode(const tokenizer *t, const char *text, size_t len, int32_t *ids, size_t cap);

/* Decodes ids to UTF-8 into a malloc'ed NUL-terminated string. skip_special drops
 * special tokens from the output. */
char *tok_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special);

int tok_vocab_size(const tokenizer *t);            /* incl. added tokens */
/* Id of a token by its exact string (e.g. "<|im_end|>"), or -1. */
int32_t tok_token_id(const tokenizer *t, const char *token);
/* The raw bytes of one token (byte-level decoded); *len set. NULL for unknown ids. */
const char *tok_token_bytes(const tokenizer *t, int32_t id, size_t *len);
bool tok_is_special(const tokenizer *t, int32_t id);

/* Streaming decoder: feed ids one by one; each call returns the newly completed text
 * (possibly empty), never a partial UTF-8 sequence. */
typedef struct tok_stream_decoder tok_stream_decoder;
tok_stream_decoder *tok_stream_create(const tokenizer *t, bool skip_special);
/* Returns a pointer valid until the next call; *len set. */
const char *tok_stream_push(tok_stream_decoder *d, int32_t id, size_t *len);
/* Flushes what is left (invalid trailing bytes become U+FFFD). */
const char *tok_stream_finish(tok_stream_decoder *d, size_t *len);
void tok_stream_free(tok_stream_decoder *d);

#endif
