/* tokenizer.h — the Qwen byte-level BPE tokenizer, loaded from a checkpoint's tokenizer.json:
 * NFC normalization (utf8proc), the pre-tokenizer regex from the file (PCRE2 with Unicode
 * properties), byte-level mapping, BPE by merge rank, added/special tokens matched before
 * anything else and never split. Decoding maps ids back to bytes; tok_stream_decoder emits
 * text for streaming output without ever cutting a UTF-8 sequence.
 *
 * Reference behaviour: the JS tokenizer of transformers.js (@lenml/tokenizers 3.7.2), which
 * tests/test_tokenizer.c compares against id for id. Where that reference and the Rust
 * `tokenizers` library differ we follow the reference, and say so here:
 *  - Input bytes that are not valid UTF-8 are decoded the WHATWG way (what a JS TextDecoder and
 *    node's Buffer do): each maximal invalid subpart becomes U+FFFD, then it is tokenized.
 *  - Regex `\s` means the JS set: ASCII TAB..CR, space, U+00A0, U+1680, U+2000-200A, U+2028,
 *    U+2029, U+202F, U+205F, U+3000 and U+FEFF (U+0085 is not whitespace). `(?i:...)` groups of
 *    plain ASCII alternatives match ASCII case variants only (no U+017F long s).
 *  - Added tokens' `single_word` flag is ignored; `lstrip`/`rstrip` drop the JS whitespace next
 *    to the token. Tokens with `normalized: true` are matched on the normalized text (Rust
 *    semantics; the reference matches every added token on the raw text — the same result for
 *    Qwen, whose added tokens are all `normalized: false`).
 *  - Decoding skips ids that name no token (as the Rust library does): a model may emit any id
 *    below its embedding size (151936), and the tokenizer knows 151669 of them.
 * Unicode tables are the system's: PCRE2 10.42 (Unicode 14) for \p{L}/\p{N}, utf8proc 2.8
 * (Unicode 15) for NFC. Letters and numbers assigned after Unicode 14 are treated as
 * unassigned symbols, so text in those scripts may split differently from a newer reference.
 *
 * Thread safety: a loaded tokenizer is immutable; any number of threads may encode and decode
 * with it at once. A tok_stream_decoder belongs to one thread. */
#ifndef VIGIL_MODEL_TOKENIZER_H
#define VIGIL_MODEL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

typedef struct tokenizer tokenizer;

/* Loads tokenizer.json. Returns 0, or -1 with a message naming the file and the field that is
 * missing or unsupported in err. */
int tok_load(const char *tokenizer_json_path, tokenizer **out, char *err, size_t errlen);
void tok_free(tokenizer *t);

/* Encodes UTF-8 text (any bytes: invalid sequences are handled as the reference does).
 * Special/added tokens in the text are recognised. Returns the number of ids, writing at most
 * cap of them into ids (call with cap 0 to size), or -1 on error. */
long tok_encode(const tokenizer *t, const char *text, size_t len, int32_t *ids, size_t cap);

/* Flags for tok_encode_ex. */
enum {
    /* Special added tokens (e.g. "<|im_start|>") in the text are ordinary text; non-special
     * added tokens ("<think>") are still recognised. Like HF's split_special_tokens. */
    TOK_ENCODE_SPECIAL_AS_TEXT = 1u << 0,
    /* No added token at all is recognised: the text is only text. For untrusted content that
     * must not be able to inject control tokens. */
    TOK_ENCODE_ADDED_AS_TEXT = 1u << 1,
};

/* tok_encode with flags and an error message (err may be NULL). */
long tok_encode_ex(const tokenizer *t, const char *text, size_t len, unsigned flags,
                   int32_t *ids, size_t cap, char *err, size_t errlen);
/* Encodes into a malloc'ed array (*ids; NULL when the result is empty). Returns the count or
 * -1 with err. */
long tok_encode_alloc(const tokenizer *t, const char *text, size_t len, unsigned flags,
                      int32_t **ids, char *err, size_t errlen);

/* Decodes ids to UTF-8 into a malloc'ed NUL-terminated string. skip_special drops
 * special tokens from the output. Byte tokens that do not form valid UTF-8 become U+FFFD
 * (WHATWG rule); added tokens are written as their text. NULL only when out of memory.
 * If out_len is not NULL it receives the length (the text may contain NUL bytes). */
char *tok_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special);
char *tok_decode_len(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                     size_t *out_len);

int tok_vocab_size(const tokenizer *t);            /* incl. added tokens: highest id + 1 */
/* Id of a token by its exact string (e.g. "<|im_end|>"), or -1. Added tokens are looked up by
 * their text, vocabulary tokens by their raw bytes ("hello", " world"). */
int32_t tok_token_id(const tokenizer *t, const char *token);
/* The raw bytes of one token (byte-level decoded); *len set. NULL for unknown ids. */
const char *tok_token_bytes(const tokenizer *t, int32_t id, size_t *len);
bool tok_is_special(const tokenizer *t, int32_t id);
bool tok_is_added(const tokenizer *t, int32_t id);  /* added token (special or not) */

/* Streaming decoder: feed ids one by one; each call returns the newly completed text
 * (possibly empty), never a partial UTF-8 sequence. The concatenation of all pushes and the
 * finish equals tok_decode of the same ids. */
typedef struct tok_stream_decoder tok_stream_decoder;
tok_stream_decoder *tok_stream_create(const tokenizer *t, bool skip_special);
/* Returns a pointer valid until the next call (NULL only when out of memory); *len set.
 * Unknown ids produce nothing; special tokens produce nothing when skip_special. */
const char *tok_stream_push(tok_stream_decoder *d, int32_t id, size_t *len);
/* Flushes what is left (invalid trailing bytes become U+FFFD). */
const char *tok_stream_finish(tok_stream_decoder *d, size_t *len);
/* Forgets pending bytes so the decoder can start a new text. */
void tok_stream_reset(tok_stream_decoder *d);
void tok_stream_free(tok_stream_decoder *d);

#endif
