/* tokenizer.c — byte-level BPE from a tokenizer.json (see tokenizer.h for the behaviour).
 *
 * Encoding pipeline, per call:
 *   bytes --(WHATWG: invalid UTF-8 -> U+FFFD)--> text
 *   --(added tokens with normalized=false: leftmost-longest trie scan)--> sections and tokens
 *   section --(normalizer: NFC, skipped when every code point is NFC-inert)-->
 *   --(added tokens with normalized=true)--> --(pre-tokenizer steps: regex splits)--> pieces
 *   piece --(per-call cache, else BPE over raw bytes by merge rank)--> ids
 * The byte-level alphabet (GPT-2's bytes_to_unicode) exists only at load time: vocabulary and
 * merges are converted to raw bytes, so encoding never builds the mapped strings.
 *
 * Thread safety comes from keeping every mutable thing (cache, regex match data, scratch) in
 * a per-call context; the tokenizer itself is read-only after tok_load. */
#include "model/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <utf8proc.h>

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOK_MAX_STEPS 8            /* pre-tokenizer steps (Split / ByteLevel) */
#define TOK_MAX_ID (1 << 24)       /* sanity bound on token ids in a file */
#define TOK_INERT_LIMIT 0x40000u   /* NFC-inert bitmap covers planes 0-3 */
#define TOK_BPE_SMALL 64           /* words up to this many bytes use the array BPE */
#define TOK_CACHE_MIN_INPUT 2048   /* inputs shorter than this skip the word cache */
#define TOK_CACHE_MAX_WORD 256     /* as the reference: longer words are not cached */
#define TOK_CACHE_MAX_ENTRIES (1u << 17)

/* ------------------------------------------------------------------------------------------ */
/* Small utilities                                                                            */

static void tok_seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void tok_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t tok_hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    h *= 0x9E3779B97F4A7C15ull;
    h ^= h >> 32;
    return h;
}

static uint64_t tok_hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static size_t tok_pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

/* Growable byte buffer. */
typedef struct tok_buf {
    char *p;
    size_t len, cap;
} tok_buf;

static int tok_buf_reserve(tok_buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) {
        if (cap > SIZE_MAX / 2)
            return -1;
        cap *= 2;
    }
    char *np = realloc(b->p, cap);
    if (!np)
        return -1;
    b->p = np;
    b->cap = cap;
    return 0;
}

static int tok_buf_put(tok_buf *b, const void *data, size_t n)
{
    if (tok_buf_reserve(b, n) != 0)
        return -1;
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* UTF-8                                                                                      */

static const uint8_t tok_fffd[3] = { 0xEF, 0xBF, 0xBD };

/* Length of the valid UTF-8 prefix of s (surrogates and > U+10FFFF are invalid). */
static size_t utf8_valid_prefix(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t v;
            memcpy(&v, s + i, 8);
            if ((v & 0x8080808080808080ull) == 0) {
                i += 8;
                continue;
            }
        }
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0;
            if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90;
            if (c == 0xF4)
                hi = 0x8F;
        } else {
            return i;
        }
        if (i + need >= n)
            return i;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
        i += need + 1;
    }
    return n;
}

/* Appends s to b, replacing each maximal invalid subpart with U+FFFD exactly as the WHATWG
 * UTF-8 decoder (JS TextDecoder, node Buffer) does, so both sides tokenize the same text. */
static int utf8_append_sanitized(tok_buf *b, const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t ok = utf8_valid_prefix(s + i, n - i);
        if (ok && tok_buf_put(b, s + i, ok) != 0)
            return -1;
        i += ok;
        if (i >= n)
            break;
        /* s[i] starts an invalid sequence: find its maximal subpart. */
        uint8_t c = s[i];
        size_t need = 0;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0;
            if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90;
            if (c == 0xF4)
                hi = 0x8F;
        }
        size_t j = i + 1;
        for (size_t k = 0; k < need && j < n; k++) {
            uint8_t cc = s[j];
            if (k == 0 ? (cc < lo || cc > hi) : ((cc & 0xC0) != 0x80))
                break;
            j++;
        }
        if (tok_buf_put(b, tok_fffd, 3) != 0)
            return -1;
        i = j;
    }
    return 0;
}

/* Decodes one code point at s (n > 0); returns its length. Callers only pass text that was
 * sanitized to valid UTF-8; the length checks just keep a cut buffer from being overread. */
static size_t utf8_decode(const uint8_t *s, size_t n, uint32_t *cp)
{
    uint8_t c = s[0];
    if (c < 0x80 || n < 2) {
        *cp = c;
        return 1;
    }
    if (c < 0xE0) {
        *cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (c < 0xF0 || n < 4) {
        if (n < 3) {
            *cp = c;
            return 1;
        }
        *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
          ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

static size_t utf8_encode(uint32_t cp, uint8_t *out)
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* JS whitespace (WhiteSpace + LineTerminator): what the reference's \s, trim() use. */
static bool js_is_space(uint32_t c)
{
    if (c <= 0x20)
        return c == 0x20 || (c >= 0x09 && c <= 0x0D);
    if (c < 0xA0)
        return false;
    return c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000 || c == 0xFEFF;
}

#define JS_SPACE_CLASS \
    "\\t\\n\\x{0B}\\f\\r \\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}" \
    "\\x{205F}\\x{3000}\\x{FEFF}"

/* Bytes of leading JS whitespace in valid UTF-8 s[0..n). */
static size_t js_space_prefix(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t l = utf8_decode(s + i, n - i, &cp);
        if (!js_is_space(cp))
            break;
        i += l;
    }
    return i;
}

/* Bytes of trailing JS whitespace in valid UTF-8 s[0..n). */
static size_t js_space_suffix(const uint8_t *s, size_t n)
{
    size_t end = n;
    while (end > 0) {
        size_t st = end - 1;
        while (st > 0 && (s[st] & 0xC0) == 0x80 && end - st < 4)
            st--;
        uint32_t cp;
        utf8_decode(s + st, end - st, &cp);
        if (!js_is_space(cp))
            break;
        end = st;
    }
    return n - end;
}

/* ------------------------------------------------------------------------------------------ */
/* The tokenizer                                                                              */

enum { TOKF_PRESENT = 1, TOKF_ADDED = 2, TOKF_SPECIAL = 4 };

typedef struct tok_added {
    int32_t id;
    uint32_t off, len;            /* content in the arena */
    bool special, lstrip, rstrip, normalized;
} tok_added;

/* Byte trie over added-token contents: leftmost-longest scan like the reference's
 * DictionarySplitter. Children are sibling lists; there are only a few dozen tokens. */
typedef struct tok_trie_node {
    int32_t child, sibling;
    int32_t added;                /* index into t->added whose content ends here, or -1 */
    uint8_t byte;
} tok_trie_node;

typedef struct tok_trie {
    tok_trie_node *nodes;
    size_t n, cap;
    bool first[256];              /* bytes that can start a token */
    size_t count;                 /* tokens in this trie */
} tok_trie;

enum { TOK_STEP_SPLIT = 0, TOK_STEP_BYTELEVEL = 1 };

typedef struct tok_step {
    int kind;
    pcre2_code *re;               /* Split regex, or ByteLevel's own regex when use_regex */
    bool invert, removed;         /* Split */
    bool add_prefix_space;        /* ByteLevel */
} tok_step;

enum { TOK_NORM_NFC = 1, TOK_NORM_NFD, TOK_NORM_NFKC, TOK_NORM_NFKD };

struct tokenizer {
    char path[512];
    int32_t n_ids;                /* highest id + 1 */
    uint32_t *tok_off, *tok_len;  /* raw bytes of each id in the arena */
    uint8_t *tok_flags;
    char *arena;
    size_t arena_len, arena_cap;

    int32_t *vocab_ht;            /* raw bytes -> id for the BPE vocabulary (not added) */
    size_t vocab_mask;

    uint64_t *merge_key;          /* (left << 32 | right), UINT64_MAX empty */
    uint64_t *merge_val;          /* (rank << 32 | merged id) */
    size_t merge_mask;
    size_t n_merges;

    int32_t byte_id[256];
    bool ignore_merges;

    int norm[4];                  /* normalizer forms applied in order */
    int n_norm;
    uint8_t *nfc_inert;           /* bit per code point < TOK_INERT_LIMIT */

    tok_step steps[TOK_MAX_STEPS];
    int n_steps;

    tok_added *added;
    size_t n_added;
    tok_trie trie_raw, trie_norm; /* normalized=false / normalized=true tokens */
};

static int tok_arena_put(tokenizer *t, const void *p, size_t n, uint32_t *off)
{
    if (t->arena_len + n > UINT32_MAX)
        return -1;
    if (t->arena_len + n > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap : 1 << 20;
        while (cap < t->arena_len + n)
            cap *= 2;
        char *np = realloc(t->arena, cap);
        if (!np)
            return -1;
        t->arena = np;
        t->arena_cap = cap;
    }
    memcpy(t->arena + t->arena_len, p, n);
    *off = (uint32_t)t->arena_len;
    t->arena_len += n;
    return 0;
}

static int32_t vocab_find(const tokenizer *t, const uint8_t *p, size_t n)
{
    size_t i = tok_hash_bytes(p, n) & t->vocab_mask;
    for (;;) {
        int32_t id = t->vocab_ht[i];
        if (id < 0)
            return -1;
        if (t->tok_len[id] == n && memcmp(t->arena + t->tok_off[id], p, n) == 0)
            return id;
        i = (i + 1) & t->vocab_mask;
    }
}

static void vocab_insert(tokenizer *t, int32_t id)
{
    const uint8_t *p = (const uint8_t *)t->arena + t->tok_off[id];
    size_t i = tok_hash_bytes(p, t->tok_len[id]) & t->vocab_mask;
    while (t->vocab_ht[i] >= 0)
        i = (i + 1) & t->vocab_mask;
    t->vocab_ht[i] = id;
}

static inline bool merge_find(const tokenizer *t, int32_t a, int32_t b, uint32_t *rank,
                              int32_t *merged)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = tok_hash_u64(key) & t->merge_mask;
    for (;;) {
        uint64_t k = t->merge_key[i];
        if (k == key) {
            uint64_t v = t->merge_val[i];
            *rank = (uint32_t)(v >> 32);
            *merged = (int32_t)(uint32_t)v;
            return true;
        }
        if (k == UINT64_MAX)
            return false;
        i = (i + 1) & t->merge_mask;
    }
}

/* Later duplicates win, as in the reference (a Map built from the merges list). */
static void merge_insert(tokenizer *t, int32_t a, int32_t b, uint32_t rank, int32_t merged)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = tok_hash_u64(key) & t->merge_mask;
    while (t->merge_key[i] != UINT64_MAX && t->merge_key[i] != key)
        i = (i + 1) & t->merge_mask;
    t->merge_key[i] = key;
    t->merge_val[i] = ((uint64_t)rank << 32) | (uint32_t)merged;
}

/* ------------------------------------------------------------------------------------------ */
/* Byte-level alphabet (GPT-2 bytes_to_unicode)                                               */

/* unicode code point -> byte, -1 when the code point is not in the alphabet (< 324). */
static void bytelevel_tables(uint32_t byte_to_cp[256], int16_t cp_to_byte[324])
{
    for (int i = 0; i < 324; i++)
        cp_to_byte[i] = -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        byte_to_cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
    }
    for (int b = 0; b < 256; b++)
        cp_to_byte[byte_to_cp[b]] = (int16_t)b;
}

/* Converts a byte-level token string to raw bytes; returns the length or -1. */
static long bytelevel_decode(const int16_t cp_to_byte[324], const char *s, uint8_t *out,
                             size_t cap)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t n = strlen(s), i = 0, o = 0;
    if (utf8_valid_prefix(p, n) != n)
        return -1;
    while (i < n) {
        uint32_t cp;
        i += utf8_decode(p + i, n - i, &cp);
        if (cp >= 324 || cp_to_byte[cp] < 0 || o >= cap)
            return -1;
        out[o++] = (uint8_t)cp_to_byte[cp];
    }
    return (long)o;
}

/* ------------------------------------------------------------------------------------------ */
/* Added-token trie                                                                           */

static int trie_add(tok_trie *tr, const uint8_t *s, size_t n, int32_t added_index)
{
    if (tr->n == 0) {
        tr->cap = 64;
        tr->nodes = malloc(tr->cap * sizeof *tr->nodes);
        if (!tr->nodes)
            return -1;
        tr->nodes[0] = (tok_trie_node){ -1, -1, -1, 0 };
        tr->n = 1;
    }
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = tr->nodes[node].child;
        while (c >= 0 && tr->nodes[c].byte != s[i])
            c = tr->nodes[c].sibling;
        if (c < 0) {
            if (tr->n == tr->cap) {
                tok_trie_node *nn = realloc(tr->nodes, 2 * tr->cap * sizeof *nn);
                if (!nn)
                    return -1;
                tr->nodes = nn;
                tr->cap *= 2;
            }
            c = (int32_t)tr->n++;
            tr->nodes[c] = (tok_trie_node){ -1, tr->nodes[node].child, -1, s[i] };
            tr->nodes[node].child = c;
        }
        node = c;
    }
    tr->nodes[node].added = added_index;
    tr->first[s[0]] = true;
    tr->count++;
    return 0;
}

static bool added_allowed(const tok_added *a, unsigned flags)
{
    if (flags & TOK_ENCODE_ADDED_AS_TEXT)
        return false;
    if (a->special && (flags & TOK_ENCODE_SPECIAL_AS_TEXT))
        return false;
    return true;
}

/* Finds the leftmost-longest allowed added token in s[from..n). Returns its index in
 * t->added and sets the match bounds, or -1. */
static int32_t trie_next(const tokenizer *t, const tok_trie *tr, const uint8_t *s, size_t n,
                         size_t from, unsigned flags, size_t *ms, size_t *me)
{
    if (tr->count == 0)
        return -1;
    for (size_t i = from; i < n; i++) {
        if (!tr->first[s[i]])
            continue;
        int32_t node = 0, best = -1;
        size_t best_end = 0;
        for (size_t j = i; j < n; j++) {
            int32_t c = tr->nodes[node].child;
            while (c >= 0 && tr->nodes[c].byte != s[j])
                c = tr->nodes[c].sibling;
            if (c < 0)
                break;
            node = c;
            int32_t a = tr->nodes[node].added;
            if (a >= 0 && added_allowed(&t->added[a], flags)) {
                best = a;
                best_end = j + 1;
            }
        }
        if (best >= 0) {
            *ms = i;
            *me = best_end;
            return best;
        }
    }
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Normalization                                                                              */

/* A code point is NFC-inert when any string made only of inert code points is already NFC:
 * combining class 0, NFC(c) == c, and neither c nor the first code point of its canonical
 * decomposition can be the second element of a composition. Second elements are
 * over-approximated by every non-first code point of every canonical decomposition (this
 * includes Hangul V/T jamo via the algorithmic syllable decompositions). Then each inert
 * character's decomposition starts with a starter that nothing before it can absorb, so every
 * character recomposes on its own, to itself. Text that is all inert (nearly all CJK, Cyrillic,
 * precomposed Latin...) skips utf8proc, which is the slowest stage otherwise. */
static int build_nfc_inert(tokenizer *t)
{
    size_t nbytes = TOK_INERT_LIMIT / 8;
    uint8_t *second = calloc(nbytes, 1);
    t->nfc_inert = calloc(nbytes, 1);
    if (!second || !t->nfc_inert) {
        free(second);
        return -1;
    }
    utf8proc_int32_t buf[32];
    for (uint32_t cp = 0; cp < TOK_INERT_LIMIT; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue;
        int bc = 0;
        utf8proc_ssize_t n = utf8proc_decompose_char((utf8proc_int32_t)cp, buf, 32,
                                                     UTF8PROC_DECOMPOSE, &bc);
        for (utf8proc_ssize_t k = 1; k < n && k < 32; k++)
            if ((uint32_t)buf[k] < TOK_INERT_LIMIT)
                second[buf[k] >> 3] |= (uint8_t)(1u << (buf[k] & 7));
    }
    for (uint32_t cp = 0; cp < TOK_INERT_LIMIT; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue;
        if (utf8proc_get_property((utf8proc_int32_t)cp)->combining_class != 0)
            continue;
        if (second[cp >> 3] & (1u << (cp & 7)))
            continue;
        int bc = 0;
        utf8proc_ssize_t n = utf8proc_decompose_char((utf8proc_int32_t)cp, buf, 32,
                                                     UTF8PROC_DECOMPOSE, &bc);
        if (n < 1 || n > 32)
            continue;
        if (n > 1 || (uint32_t)buf[0] != cp) {
            uint32_t f = (uint32_t)buf[0];
            if (f >= TOK_INERT_LIMIT || (second[f >> 3] & (1u << (f & 7))) ||
                utf8proc_get_property(buf[0])->combining_class != 0)
                continue;
            uint8_t s[4];
            size_t l = utf8_encode(cp, s);
            utf8proc_uint8_t *out = NULL;
            utf8proc_ssize_t r = utf8proc_map(s, (utf8proc_ssize_t)l, &out,
                                              UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            bool same = r == (utf8proc_ssize_t)l && memcmp(out, s, l) == 0;
            free(out);
            if (!same)
                continue;
        }
        t->nfc_inert[cp >> 3] |= (uint8_t)(1u << (cp & 7));
    }
    free(second);
    return 0;
}

static bool nfc_inert(const tokenizer *t, uint32_t cp)
{
    return cp < TOK_INERT_LIMIT && (t->nfc_inert[cp >> 3] & (1u << (cp & 7)));
}

/* NFC (or another utf8proc form) of a short window, appended to out. Uses a stack buffer so
 * the common case (a syllable with a mark or two) does not allocate. */
static int utf8proc_window(tok_buf *out, const uint8_t *s, size_t n, utf8proc_option_t opt)
{
    utf8proc_int32_t stack[256], *buf = stack;
    utf8proc_ssize_t m = utf8proc_decompose(s, (utf8proc_ssize_t)n, buf, 256, opt);
    if (m < 0)
        return -1;
    if (m > 256) {
        buf = malloc((size_t)m * sizeof *buf);
        if (!buf)
            return -1;
        m = utf8proc_decompose(s, (utf8proc_ssize_t)n, buf, m, opt);
    }
    utf8proc_ssize_t r = m < 0 ? m : utf8proc_reencode(buf, m, opt);
    int rc = r < 0 ? -1 : tok_buf_put(out, buf, (size_t)r);
    if (buf != stack)
        free(buf);
    return rc;
}

/* NFC that only touches what can change. An inert character neither changes nor interacts
 * with its neighbours (see build_nfc_inert), so the text is copied as is except for windows
 * [the character before a run of non-inert characters, the end of the run): the character
 * before holds the last starter a mark of the run could compose with, and the inert character
 * after the run starts afresh. Returns 0 when s is already NFC (out untouched), 1 when the
 * result is in out, -1 on error. */
static int nfc_windowed(const tokenizer *t, const uint8_t *s, size_t n, tok_buf *out)
{
    size_t i = 0, prev = 0, flushed = 0;
    bool changed = false;
    while (i < n) {
        if (s[i] < 0x80) {
            prev = i++;
            continue;
        }
        uint32_t cp;
        size_t l = utf8_decode(s + i, n - i, &cp);
        if (nfc_inert(t, cp)) {
            prev = i;
            i += l;
            continue;
        }
        size_t ws = i > 0 ? prev : 0, we = i + l;
        while (we < n) {
            size_t l2 = utf8_decode(s + we, n - we, &cp);
            if (s[we] < 0x80 || nfc_inert(t, cp))
                break;
            we += l2;
        }
        if (!changed) {
            out->len = 0;
            changed = true;
        }
        if (tok_buf_put(out, s + flushed, ws - flushed) != 0 ||
            utf8proc_window(out, s + ws, we - ws, UTF8PROC_STABLE | UTF8PROC_COMPOSE) != 0)
            return -1;
        flushed = we;
        prev = i;
        i = we;
    }
    if (!changed)
        return 0;
    return tok_buf_put(out, s + flushed, n - flushed) == 0 ? 1 : -1;
}

static bool all_ascii(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] >= 0x80)
            return false;
    return true;
}

/* Applies the normalizer. *out is s itself when nothing changes, else memory the caller
 * frees when *owned is set. */
static int tok_normalize(const tokenizer *t, const uint8_t *s, size_t n, uint8_t **out,
                         size_t *out_n, bool *owned)
{
    *out = (uint8_t *)s;
    *out_n = n;
    *owned = false;
    for (int k = 0; k < t->n_norm; k++) {
        if (all_ascii(*out, *out_n))
            break;   /* every form leaves ASCII alone */
        tok_buf b = { 0 };
        int rc;
        if (t->norm[k] == TOK_NORM_NFC) {
            rc = nfc_windowed(t, *out, *out_n, &b);
        } else {
            utf8proc_option_t opt = UTF8PROC_STABLE;
            switch (t->norm[k]) {
            case TOK_NORM_NFD: opt |= UTF8PROC_DECOMPOSE; break;
            case TOK_NORM_NFKC: opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
            default: opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
            }
            rc = utf8proc_window(&b, *out, *out_n, opt) == 0 ? 1 : -1;
        }
        if (rc < 0) {
            free(b.p);
            return -1;
        }
        if (rc == 0)
            continue;
        if (*owned)
            free(*out);
        if (!b.p && tok_buf_put(&b, "", 0) != 0)
            return -1;
        *out = (uint8_t *)b.p;
        *out_n = b.len;
        *owned = true;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Regex: the file's pattern, made to mean what it means in the JS reference                  */

static bool regex_is_plain_ascii(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr(" !\"#%&',-/:;<=>@_`~", c) != NULL);
}

/* Rewrites a pattern written for Python/Rust regex engines into PCRE2 syntax with JS
 * semantics: \s and \S become the JS whitespace set, \d/\w the ASCII classes, '.' excludes
 * JS line terminators, and an (?i:...) group of plain ASCII alternatives becomes explicit
 * [xX] classes — the same rewrite the reference applies (its PROBLEMATIC_REGEX_MAP), which
 * also keeps PCRE2's Unicode case folding from matching "'ſ" as "'s". */
static char *regex_translate(const char *src, char *err, size_t errlen)
{
    tok_buf b = { 0 };
    bool in_class = false, class_first = false;
    size_t n = strlen(src);
    for (size_t i = 0; i < n;) {
        char c = src[i];
        int rc = 0;
        if (c == '\\') {
            if (i + 1 >= n) {
                tok_seterr(err, errlen, "pattern ends with a lone backslash");
                free(b.p);
                return NULL;
            }
            char e = src[i + 1];
            const char *rep = NULL;
            if (e == 's')
                rep = in_class ? JS_SPACE_CLASS : "[" JS_SPACE_CLASS "]";
            else if (e == 'd')
                rep = in_class ? "0-9" : "[0-9]";
            else if (e == 'w')
                rep = in_class ? "A-Za-z0-9_" : "[A-Za-z0-9_]";
            else if (!in_class && e == 'S')
                rep = "[^" JS_SPACE_CLASS "]";
            else if (!in_class && e == 'D')
                rep = "[^0-9]";
            else if (!in_class && e == 'W')
                rep = "[^A-Za-z0-9_]";
            else if (in_class && (e == 'S' || e == 'D' || e == 'W')) {
                tok_seterr(err, errlen, "negated class escape \\%c inside [...] is not "
                           "supported", e);
                free(b.p);
                return NULL;
            }
            class_first = false;
            if (rep) {
                rc = tok_buf_put(&b, rep, strlen(rep));
                i += 2;
            } else {
                size_t j = i + 2;
                if ((e == 'p' || e == 'P' || e == 'x' || e == 'u' || e == 'o' || e == 'N') &&
                    j < n && src[j] == '{') {
                    while (j < n && src[j] != '}')
                        j++;
                    if (j < n)
                        j++;
                }
                if (e == 'u' && (j == i + 2)) {
                    /* JS \uXXXX -> PCRE2 \x{XXXX} */
                    if (i + 6 <= n) {
                        char tmp[16];
                        snprintf(tmp, sizeof tmp, "\\x{%.4s}", src + i + 2);
                        rc = tok_buf_put(&b, tmp, strlen(tmp));
                        i += 6;
                        if (rc)
                            break;
                        continue;
                    }
                }
                rc = tok_buf_put(&b, src + i, j - i);
                i = j;
            }
        } else if (in_class) {
            if (c == '[' && i + 1 < n && src[i + 1] == ':') {
                const char *end = strstr(src + i + 2, ":]");
                size_t j = end ? (size_t)(end - src) + 2 : i + 1;
                rc = tok_buf_put(&b, src + i, j - i);
                i = j;
            } else {
                if (c == ']' && !class_first)
                    in_class = false;
                rc = tok_buf_put(&b, &c, 1);
                i++;
            }
            class_first = false;
        } else if (c == '[') {
            in_class = true;
            class_first = true;
            size_t j = i + 1;
            if (j < n && src[j] == '^')
                j++;
            rc = tok_buf_put(&b, src + i, j - i);
            i = j;
        } else if (c == '.') {
            static const char js_dot[] = "[^\\n\\r\\x{2028}\\x{2029}]";
            rc = tok_buf_put(&b, js_dot, sizeof js_dot - 1);
            i++;
        } else if (strncmp(src + i, "(?i:", 4) == 0) {
            size_t j = i + 4;
            bool plain = true;
            while (j < n && src[j] != ')') {
                if (src[j] != '|' && !regex_is_plain_ascii(src[j]))
                    plain = false;
                j++;
            }
            if (plain && j < n) {
                rc = tok_buf_put(&b, "(?:", 3);
                for (size_t k = i + 4; k < j && rc == 0; k++) {
                    char ch = src[k];
                    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) {
                        char cls[4] = { '[', (char)(ch | 0x20), (char)(ch & ~0x20), ']' };
                        rc = tok_buf_put(&b, cls, 4);
                    } else {
                        rc = tok_buf_put(&b, &ch, 1);
                    }
                }
                if (rc == 0)
                    rc = tok_buf_put(&b, ")", 1);
                i = j + 1;
            } else {
                rc = tok_buf_put(&b, src + i, 4);
                i += 4;
            }
        } else {
            rc = tok_buf_put(&b, &c, 1);
            i++;
        }
        if (rc != 0) {
            tok_seterr(err, errlen, "out of memory");
            free(b.p);
            return NULL;
        }
    }
    if (!b.p && tok_buf_put(&b, "", 0) != 0) {
        tok_seterr(err, errlen, "out of memory");
        return NULL;
    }
    return b.p;
}

static pcre2_code *regex_compile(const char *pattern, const char *what, char *err,
                                 size_t errlen)
{
    char terr[256] = "";
    char *pat = regex_translate(pattern, terr, sizeof terr);
    if (!pat) {
        tok_seterr(err, errlen, "%s: %s", what, terr);
        return NULL;
    }
    int ec = 0;
    PCRE2_SIZE eo = 0;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        tok_seterr(err, errlen, "%s: PCRE2 cannot compile it: %s at offset %zu of the "
                   "pattern as rewritten for PCRE2: %s", what, (const char *)msg, (size_t)eo,
                   pat);
        free(pat);
        return NULL;
    }
    free(pat);
    /* JIT is an optimisation only; without it pcre2_match interprets. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    return re;
}

/* ------------------------------------------------------------------------------------------ */
/* Loading                                                                                    */

static char *read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        tok_seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        tok_seterr(err, errlen, "%s: cannot seek: %s", path, strerror(errno));
        fclose(f);
        return NULL;
    }
    long sz = ftell(f);
    if (sz < 0 || sz > (1L << 30)) {
        tok_seterr(err, errlen, "%s: unexpected size %ld (expected a tokenizer.json below "
                   "1 GiB)", path, sz);
        fclose(f);
        return NULL;
    }
    rewind(f);
    char *buf = malloc((size_t)sz + 1);
    if (!buf) {
        tok_seterr(err, errlen, "%s: out of memory reading %ld bytes", path, sz);
        fclose(f);
        return NULL;
    }
    size_t got = fread(buf, 1, (size_t)sz, f);
    fclose(f);
    if (got != (size_t)sz) {
        tok_seterr(err, errlen, "%s: short read (%zu of %ld bytes)", path, got, sz);
        free(buf);
        return NULL;
    }
    buf[sz] = '\0';
    *len = (size_t)sz;
    return buf;
}

static bool json_bool(const cJSON *obj, const char *key, bool dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsBool(v))
        return cJSON_IsTrue(v);
    return dflt;
}

static const char *json_str(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool json_int(const cJSON *v, long *out)
{
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    if (d != (double)(long)d)
        return false;
    *out = (long)d;
    return true;
}

/* A tokenizer.json component that may be {"type": "Sequence", "<list_key>": [...]}: each member
 * is loaded with load (members may be Sequences again). Returns 1 when node was a Sequence (all
 * loaded), 0 when it is a single component for the caller, -1 on error. */
typedef int (*tok_component_loader)(tokenizer *t, const cJSON *node, char *err, size_t errlen);

static int load_sequence(tokenizer *t, const cJSON *node, const char *component, const char *list_key,
                         tok_component_loader load, char *err, size_t errlen)
{
    const char *type = json_str(node, "type");
    if (!type || strcmp(type, "Sequence") != 0)
        return 0;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(node, list_key);
    const cJSON *it;
    if (!cJSON_IsArray(list)) {
        tok_seterr(err, errlen, "%s: %s.%s: expected an array", t->path, component, list_key);
        return -1;
    }
    cJSON_ArrayForEach(it, list) {
        if (load(t, it, err, errlen) != 0)
            return -1;
    }
    return 1;
}

static int load_normalizer(tokenizer *t, const cJSON *nz, char *err, size_t errlen)
{
    if (!nz || cJSON_IsNull(nz))
        return 0;
    int seq = load_sequence(t, nz, "normalizer", "normalizers", load_normalizer, err, errlen);
    if (seq != 0)
        return seq < 0 ? -1 : 0;
    const char *type = json_str(nz, "type");
    int form = 0;
    if (type && strcmp(type, "NFC") == 0)
        form = TOK_NORM_NFC;
    else if (type && strcmp(type, "NFD") == 0)
        form = TOK_NORM_NFD;
    else if (type && strcmp(type, "NFKC") == 0)
        form = TOK_NORM_NFKC;
    else if (type && strcmp(type, "NFKD") == 0)
        form = TOK_NORM_NFKD;
    if (!form || t->n_norm >= 4) {
        tok_seterr(err, errlen, "%s: normalizer type \"%s\" is not supported (expected NFC, "
                   "NFD, NFKC, NFKD or a Sequence of them)", t->path, type ? type : "(none)");
        return -1;
    }
    t->norm[t->n_norm++] = form;
    if (form == TOK_NORM_NFC && !t->nfc_inert && build_nfc_inert(t) != 0) {
        tok_seterr(err, errlen, "%s: out of memory", t->path);
        return -1;
    }
    return 0;
}

static const char *const gpt2_pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int load_pretokenizer(tokenizer *t, const cJSON *pt, char *err, size_t errlen)
{
    if (!pt || cJSON_IsNull(pt))
        return 0;
    int seq = load_sequence(t, pt, "pre_tokenizer", "pretokenizers", load_pretokenizer, err, errlen);
    if (seq != 0)
        return seq < 0 ? -1 : 0;
    const char *type = json_str(pt, "type");
    if (t->n_steps >= TOK_MAX_STEPS) {
        tok_seterr(err, errlen, "%s: pre_tokenizer: more than %d steps", t->path,
                   TOK_MAX_STEPS);
        return -1;
    }
    tok_step *st = &t->steps[t->n_steps];
    memset(st, 0, sizeof *st);
    char what[600];
    if (type && strcmp(type, "Split") == 0) {
        st->kind = TOK_STEP_SPLIT;
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(pt, "pattern");
        const char *rx = pat ? json_str(pat, "Regex") : NULL;
        const char *lit = pat ? json_str(pat, "String") : NULL;
        snprintf(what, sizeof what, "%s: pre_tokenizer Split pattern", t->path);
        if (rx) {
            st->re = regex_compile(rx, what, err, errlen);
        } else if (lit) {
            /* A literal: quote it for PCRE2. */
            tok_buf q = { 0 };
            int rc = tok_buf_put(&q, "\\Q", 2);
            for (const char *p = lit; *p && rc == 0; p++) {
                if (p[0] == '\\' && p[1] == 'E')
                    rc = tok_buf_put(&q, "\\E\\\\E\\Q", 8), p++;
                else
                    rc = tok_buf_put(&q, p, 1);
            }
            if (rc == 0)
                rc = tok_buf_put(&q, "\\E", 2);
            int ec;
            PCRE2_SIZE eo;
            st->re = rc ? NULL : pcre2_compile((PCRE2_SPTR)q.p, PCRE2_ZERO_TERMINATED,
                                               PCRE2_UTF, &ec, &eo, NULL);
            free(q.p);
            if (!st->re)
                tok_seterr(err, errlen, "%s: cannot compile the literal", what);
        } else {
            tok_seterr(err, errlen, "%s: expected pattern.Regex or pattern.String", what);
        }
        if (!st->re)
            return -1;
        st->invert = json_bool(pt, "invert", false);
        const char *beh = json_str(pt, "behavior");
        if (!beh || strcmp(beh, "Isolated") == 0) {
            st->removed = false;
        } else if (strcmp(beh, "Removed") == 0) {
            st->removed = true;
        } else {
            tok_seterr(err, errlen, "%s: pre_tokenizer Split behavior \"%s\" is not "
                       "supported (expected Isolated or Removed)", t->path, beh);
            pcre2_code_free(st->re);
            st->re = NULL;
            return -1;
        }
    } else if (type && strcmp(type, "ByteLevel") == 0) {
        st->kind = TOK_STEP_BYTELEVEL;
        st->add_prefix_space = json_bool(pt, "add_prefix_space", false);
        if (json_bool(pt, "use_regex", true)) {
            snprintf(what, sizeof what, "%s: ByteLevel regex", t->path);
            st->re = regex_compile(gpt2_pattern, what, err, errlen);
            if (!st->re)
                return -1;
        }
    } else {
        tok_seterr(err, errlen, "%s: pre_tokenizer type \"%s\" is not supported (expected "
                   "Split, ByteLevel or a Sequence of them)", t->path,
                   type ? type : "(none)");
        return -1;
    }
    t->n_steps++;
    return 0;
}

static int load_model(tokenizer *t, const cJSON *model, const cJSON *added_list, char *err,
                      size_t errlen)
{
    const char *type = json_str(model, "type");
    if (type && strcmp(type, "BPE") != 0) {
        tok_seterr(err, errlen, "%s: model.type is \"%s\"; only BPE is supported", t->path,
                   type);
        return -1;
    }
    if (json_bool(model, "byte_fallback", false)) {
        tok_seterr(err, errlen, "%s: model.byte_fallback is true; only byte-level BPE "
                   "(byte_fallback false) is supported", t->path);
        return -1;
    }
    const char *cs = json_str(model, "continuing_subword_prefix");
    const char *ew = json_str(model, "end_of_word_suffix");
    if ((cs && *cs) || (ew && *ew)) {
        tok_seterr(err, errlen, "%s: model.continuing_subword_prefix/end_of_word_suffix "
                   "are not supported (expected empty or null)", t->path);
        return -1;
    }
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0) {
        tok_seterr(err, errlen, "%s: model.dropout %g is not supported (expected null)",
                   t->path, dropout->valuedouble);
        return -1;
    }
    t->ignore_merges = json_bool(model, "ignore_merges", false);

    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsObject(vocab)) {
        tok_seterr(err, errlen, "%s: model.vocab: expected an object mapping token -> id",
                   t->path);
        return -1;
    }
    if (!cJSON_IsArray(merges)) {
        tok_seterr(err, errlen, "%s: model.merges: expected an array", t->path);
        return -1;
    }

    /* Ids: the vocabulary and the added tokens. */
    long max_id = -1;
    size_t n_vocab = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        long id = 0;
        if (!json_int(it, &id) || id < 0 || id >= TOK_MAX_ID) {
            tok_seterr(err, errlen, "%s: model.vocab[\"%s\"]: expected an integer id in "
                       "[0, %d)", t->path, it->string ? it->string : "", TOK_MAX_ID);
            return -1;
        }
        if (id > max_id)
            max_id = id;
        n_vocab++;
    }
    size_t n_added = 0;
    if (added_list && !cJSON_IsNull(added_list)) {
        if (!cJSON_IsArray(added_list)) {
            tok_seterr(err, errlen, "%s: added_tokens: expected an array", t->path);
            return -1;
        }
        size_t k = 0;
        cJSON_ArrayForEach(it, added_list) {
            long id = 0;
            const char *content = json_str(it, "content");
            if (!json_int(cJSON_GetObjectItemCaseSensitive(it, "id"), &id) || id < 0 ||
                id >= TOK_MAX_ID || !content || !*content) {
                tok_seterr(err, errlen, "%s: added_tokens[%zu]: expected an integer \"id\" "
                           "in [0, %d) and a non-empty \"content\"", t->path, k, TOK_MAX_ID);
                return -1;
            }
            if (id > max_id)
                max_id = id;
            n_added++;
            k++;
        }
    }
    if (max_id < 0) {
        tok_seterr(err, errlen, "%s: model.vocab is empty", t->path);
        return -1;
    }
    t->n_ids = (int32_t)(max_id + 1);
    t->tok_off = calloc((size_t)t->n_ids, sizeof *t->tok_off);
    t->tok_len = calloc((size_t)t->n_ids, sizeof *t->tok_len);
    t->tok_flags = calloc((size_t)t->n_ids, 1);
    t->vocab_mask = tok_pow2_at_least(n_vocab * 2) - 1;
    t->vocab_ht = malloc((t->vocab_mask + 1) * sizeof *t->vocab_ht);
    if (!t->tok_off || !t->tok_len || !t->tok_flags || !t->vocab_ht) {
        tok_seterr(err, errlen, "%s: out of memory", t->path);
        return -1;
    }
    memset(t->vocab_ht, 0xff, (t->vocab_mask + 1) * sizeof *t->vocab_ht);

    uint32_t byte_to_cp[256];
    int16_t cp_to_byte[324];
    bytelevel_tables(byte_to_cp, cp_to_byte);
    uint8_t raw[4096];
    cJSON_ArrayForEach(it, vocab) {
        long id = 0;
        json_int(it, &id);
        long n = bytelevel_decode(cp_to_byte, it->string, raw, sizeof raw);
        if (n <= 0) {
            tok_seterr(err, errlen, "%s: model.vocab[\"%s\"] (id %ld) is not a byte-level "
                       "token (a character outside GPT-2's bytes_to_unicode alphabet, or "
                       "empty)", t->path, it->string, id);
            return -1;
        }
        if (t->tok_flags[id] & TOKF_PRESENT) {
            tok_seterr(err, errlen, "%s: model.vocab: id %ld is used twice (\"%s\")", t->path,
                       id, it->string);
            return -1;
        }
        if (tok_arena_put(t, raw, (size_t)n, &t->tok_off[id]) != 0) {
            tok_seterr(err, errlen, "%s: out of memory", t->path);
            return -1;
        }
        t->tok_len[id] = (uint32_t)n;
        t->tok_flags[id] = TOKF_PRESENT;
        if (vocab_find(t, raw, (size_t)n) >= 0) {
            tok_seterr(err, errlen, "%s: model.vocab: token \"%s\" appears twice", t->path,
                       it->string);
            return -1;
        }
        vocab_insert(t, (int32_t)id);
    }
    for (int b = 0; b < 256; b++) {
        uint8_t c = (uint8_t)b;
        t->byte_id[b] = vocab_find(t, &c, 1);
        if (t->byte_id[b] < 0) {
            tok_seterr(err, errlen, "%s: model.vocab lacks the byte-level token for byte "
                       "0x%02X (U+%04X); a byte-level BPE needs all 256", t->path, b,
                       byte_to_cp[b]);
            return -1;
        }
    }

    /* Merges: pairs of byte-level strings, ["a", "b"] (tokenizers >= 0.20) or "a b". */
    size_t n_merges = (size_t)cJSON_GetArraySize(merges);
    t->merge_mask = tok_pow2_at_least(n_merges * 2 + 2) - 1;
    t->merge_key = malloc((t->merge_mask + 1) * sizeof *t->merge_key);
    t->merge_val = malloc((t->merge_mask + 1) * sizeof *t->merge_val);
    if (!t->merge_key || !t->merge_val) {
        tok_seterr(err, errlen, "%s: out of memory", t->path);
        return -1;
    }
    memset(t->merge_key, 0xff, (t->merge_mask + 1) * sizeof *t->merge_key);
    uint32_t rank = 0;
    cJSON_ArrayForEach(it, merges) {
        const char *a = NULL, *b = NULL;
        char pairbuf[1024];
        if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 &&
            cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
            cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            a = cJSON_GetArrayItem(it, 0)->valuestring;
            b = cJSON_GetArrayItem(it, 1)->valuestring;
        } else if (cJSON_IsString(it) && strlen(it->valuestring) < sizeof pairbuf) {
            strcpy(pairbuf, it->valuestring);
            char *sp = strchr(pairbuf, ' ');
            if (sp) {
                *sp = '\0';
                a = pairbuf;
                b = sp + 1;
            }
        }
        if (!a || !b) {
            tok_seterr(err, errlen, "%s: model.merges[%u]: expected [\"left\", \"right\"] "
                       "or \"left right\"", t->path, rank);
            return -1;
        }
        uint8_t ra[2048], rb[2048], rab[4096];
        long na = bytelevel_decode(cp_to_byte, a, ra, sizeof ra);
        long nb = bytelevel_decode(cp_to_byte, b, rb, sizeof rb);
        int32_t ia = na > 0 ? vocab_find(t, ra, (size_t)na) : -1;
        int32_t ib = nb > 0 ? vocab_find(t, rb, (size_t)nb) : -1;
        if (ia < 0 || ib < 0) {
            tok_seterr(err, errlen, "%s: model.merges[%u] (\"%s\" \"%s\"): %s is not in "
                       "model.vocab", t->path, rank, a, b, ia < 0 ? "the left part" :
                       "the right part");
            return -1;
        }
        memcpy(rab, ra, (size_t)na);
        memcpy(rab + na, rb, (size_t)nb);
        int32_t iab = vocab_find(t, rab, (size_t)(na + nb));
        if (iab < 0) {
            tok_seterr(err, errlen, "%s: model.merges[%u] (\"%s\" \"%s\"): the merged token "
                       "\"%s%s\" is not in model.vocab", t->path, rank, a, b, a, b);
            return -1;
        }
        merge_insert(t, ia, ib, rank, iab);
        rank++;
    }
    t->n_merges = rank;

    /* Added tokens: their text is matched as is, and decodes to itself. */
    if (n_added) {
        t->added = calloc(n_added, sizeof *t->added);
        if (!t->added) {
            tok_seterr(err, errlen, "%s: out of memory", t->path);
            return -1;
        }
        cJSON_ArrayForEach(it, added_list) {
            long id = 0;
            json_int(cJSON_GetObjectItemCaseSensitive(it, "id"), &id);
            const char *content = json_str(it, "content");
            size_t cl = strlen(content);
            tok_added *a = &t->added[t->n_added];
            a->id = (int32_t)id;
            a->special = json_bool(it, "special", false);
            a->lstrip = json_bool(it, "lstrip", false);
            a->rstrip = json_bool(it, "rstrip", false);
            a->normalized = json_bool(it, "normalized", !a->special);
            if (utf8_valid_prefix((const uint8_t *)content, cl) != cl ||
                tok_arena_put(t, content, cl, &a->off) != 0) {
                tok_seterr(err, errlen, "%s: added_tokens: \"%s\" (id %ld): invalid UTF-8 "
                           "or out of memory", t->path, content, id);
                return -1;
            }
            a->len = (uint32_t)cl;
            t->tok_off[id] = a->off;
            t->tok_len[id] = a->len;
            t->tok_flags[id] = TOKF_PRESENT | TOKF_ADDED | (a->special ? TOKF_SPECIAL : 0);
            tok_trie *tr = a->normalized && t->n_norm ? &t->trie_norm : &t->trie_raw;
            if (trie_add(tr, (const uint8_t *)content, cl, (int32_t)t->n_added) != 0) {
                tok_seterr(err, errlen, "%s: out of memory", t->path);
                return -1;
            }
            t->n_added++;
        }
    }
    return 0;
}

int tok_load(const char *path, tokenizer **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!path) {
        tok_seterr(err, errlen, "tok_load: no tokenizer.json path given");
        return -1;
    }
    size_t len = 0;
    char *text = read_file(path, &len, err, errlen);
    if (!text)
        return -1;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) {
        tok_seterr(err, errlen, "%s: not valid JSON (tokenizer.json expected)", path);
        return -1;
    }
    tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        cJSON_Delete(root);
        tok_seterr(err, errlen, "%s: out of memory", path);
        return -1;
    }
    snprintf(t->path, sizeof t->path, "%s", path);
    int rc = -1;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *decoder = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    const char *dtype = decoder ? json_str(decoder, "type") : NULL;
    if (!cJSON_IsObject(model)) {
        tok_seterr(err, errlen, "%s: no \"model\" object (is this a tokenizer.json?)", path);
        goto done;
    }
    if (!dtype || strcmp(dtype, "ByteLevel") != 0) {
        tok_seterr(err, errlen, "%s: decoder.type is \"%s\"; only ByteLevel is supported",
                   path, dtype ? dtype : "(none)");
        goto done;
    }
    if (load_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), err,
                        errlen) != 0)
        goto done;
    if (load_pretokenizer(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), err,
                          errlen) != 0)
        goto done;
    if (t->n_steps == 0 || t->steps[t->n_steps - 1].kind != TOK_STEP_BYTELEVEL) {
        tok_seterr(err, errlen, "%s: pre_tokenizer must end with ByteLevel (byte-level BPE)",
                   path);
        goto done;
    }
    for (int k = 0; k + 1 < t->n_steps; k++) {
        if (t->steps[k].kind == TOK_STEP_BYTELEVEL) {
            tok_seterr(err, errlen, "%s: pre_tokenizer: ByteLevel must be the last step",
                       path);
            goto done;
        }
    }
    if (load_model(t, model, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), err,
                   errlen) != 0)
        goto done;
    rc = 0;
done:
    cJSON_Delete(root);
    if (rc != 0) {
        tok_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

void tok_free(tokenizer *t)
{
    if (!t)
        return;
    for (int k = 0; k < TOK_MAX_STEPS; k++)
        if (t->steps[k].re)
            pcre2_code_free(t->steps[k].re);
    free(t->tok_off);
    free(t->tok_len);
    free(t->tok_flags);
    free(t->arena);
    free(t->vocab_ht);
    free(t->merge_key);
    free(t->merge_val);
    free(t->nfc_inert);
    free(t->added);
    free(t->trie_raw.nodes);
    free(t->trie_norm.nodes);
    free(t);
}

/* ------------------------------------------------------------------------------------------ */
/* Encoding                                                                                   */

/* Per-call word cache: piece bytes -> ids. */
typedef struct tok_cache_entry {
    uint64_t hash;
    uint32_t key_off, key_len;
    uint32_t val_off, val_n;
} tok_cache_entry;

typedef struct tok_cache {
    tok_cache_entry *e;
    size_t mask, count;
    tok_buf keys;
    int32_t *vals;
    size_t vals_n, vals_cap;
} tok_cache;

typedef struct bpe_sym {
    int32_t id, prev, next;
} bpe_sym;

typedef struct bpe_entry {
    uint32_t rank, pos;
    int32_t left, right;
} bpe_entry;

typedef struct enc_ctx {
    const tokenizer *t;
    unsigned flags;
    int32_t *ids;
    size_t cap, n;
    bool grow;
    pcre2_match_data *md[TOK_MAX_STEPS];
    tok_cache *cache;
    bpe_sym *syms;
    bpe_entry *heap;
    int32_t *bpe_out;
    size_t scratch_cap;
    tok_buf prefix;
    char *err;
    size_t errlen;
    int failed;
} enc_ctx;

static void enc_fail(enc_ctx *c, const char *msg)
{
    if (!c->failed)
        tok_seterr(c->err, c->errlen, "tok_encode: %s", msg);
    c->failed = 1;
}

static void emit(enc_ctx *c, int32_t id)
{
    if (c->n >= c->cap && c->grow && !c->failed) {
        size_t ncap = c->cap ? c->cap * 2 : 256;
        int32_t *np = realloc(c->ids, ncap * sizeof *np);
        if (!np) {
            enc_fail(c, "out of memory");
            return;
        }
        c->ids = np;
        c->cap = ncap;
    }
    if (c->n < c->cap)
        c->ids[c->n] = id;
    c->n++;
}

static int scratch_reserve(enc_ctx *c, size_t n)
{
    if (n <= c->scratch_cap)
        return 0;
    size_t cap = c->scratch_cap ? c->scratch_cap : 256;
    while (cap < n)
        cap *= 2;
    bpe_sym *s = realloc(c->syms, cap * sizeof *s);
    if (s)
        c->syms = s;
    bpe_entry *h = realloc(c->heap, 3 * cap * sizeof *h);
    if (h)
        c->heap = h;
    int32_t *o = realloc(c->bpe_out, cap * sizeof *o);
    if (o)
        c->bpe_out = o;
    if (!s || !h || !o)
        return -1;
    c->scratch_cap = cap;
    return 0;
}

/* BPE for short words: ids and pair ranks in arrays; each step merges the lowest-ranked,
 * leftmost pair and re-ranks only its two neighbours. */
static size_t bpe_small(const tokenizer *t, const uint8_t *p, size_t n, int32_t *out)
{
    int32_t ids[TOK_BPE_SMALL], nid[TOK_BPE_SMALL];
    uint32_t rank[TOK_BPE_SMALL];
    for (size_t i = 0; i < n; i++)
        ids[i] = t->byte_id[p[i]];
    size_t m = n;
    for (size_t i = 0; i + 1 < m; i++)
        if (!merge_find(t, ids[i], ids[i + 1], &rank[i], &nid[i]))
            rank[i] = UINT32_MAX;
    while (m > 1) {
        uint32_t best = UINT32_MAX;
        size_t bi = 0;
        for (size_t i = 0; i + 1 < m; i++) {
            if (rank[i] < best) {
                best = rank[i];
                bi = i;
            }
        }
        if (best == UINT32_MAX)
            break;
        ids[bi] = nid[bi];
        /* ids after the pair shift left by one; so do the ranks of the pairs after it. */
        size_t tail = m - bi - 2;
        size_t tail_pairs = tail > 0 ? tail - 1 : 0;
        memmove(ids + bi + 1, ids + bi + 2, tail * sizeof *ids);
        memmove(rank + bi + 1, rank + bi + 2, tail_pairs * sizeof *rank);
        memmove(nid + bi + 1, nid + bi + 2, tail_pairs * sizeof *nid);
        m--;
        if (bi > 0 && !merge_find(t, ids[bi - 1], ids[bi], &rank[bi - 1], &nid[bi - 1]))
            rank[bi - 1] = UINT32_MAX;
        if (bi + 1 < m && !merge_find(t, ids[bi], ids[bi + 1], &rank[bi], &nid[bi]))
            rank[bi] = UINT32_MAX;
    }
    memcpy(out, ids, m * sizeof *ids);
    return m;
}

static bool heap_less(const bpe_entry *a, const bpe_entry *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(bpe_entry *h, size_t *n, bpe_entry e)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static bpe_entry heap_pop(bpe_entry *h, size_t *n)
{
    bpe_entry top = h[0];
    bpe_entry last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= *n)
            break;
        size_t s = l + 1 < *n && heap_less(&h[l + 1], &h[l]) ? l + 1 : l;
        if (!heap_less(&h[s], &last))
            break;
        h[i] = h[s];
        i = s;
    }
    if (*n > 0)
        h[i] = last;
    return top;
}

/* BPE for long words (long runs of letters or spaces): a linked list of symbols and a heap
 * of candidate merges ordered by (rank, position), stale entries skipped on pop: O(n log n)
 * where the array method would be quadratic. Same merge order as bpe_small. */
static size_t bpe_large(enc_ctx *c, const uint8_t *p, size_t n, int32_t *out)
{
    const tokenizer *t = c->t;
    bpe_sym *s = c->syms;
    bpe_entry *h = c->heap;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++)
        s[i] = (bpe_sym){ t->byte_id[p[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1 };
    for (size_t i = 0; i + 1 < n; i++) {
        uint32_t r;
        int32_t m;
        if (merge_find(t, s[i].id, s[i + 1].id, &r, &m))
            heap_push(h, &hn, (bpe_entry){ r, (uint32_t)i, s[i].id, s[i + 1].id });
    }
    while (hn > 0) {
        bpe_entry e = heap_pop(h, &hn);
        int32_t L = (int32_t)e.pos;
        int32_t R = s[L].next;
        if (s[L].id != e.left || R < 0 || s[R].id != e.right)
            continue;   /* stale: one side has merged since */
        uint32_t r;
        int32_t merged = -1;
        if (!merge_find(t, e.left, e.right, &r, &merged))
            continue;   /* cannot happen: the pair was found when pushed */
        s[L].id = merged;
        s[L].next = s[R].next;
        if (s[R].next >= 0)
            s[s[R].next].prev = L;
        s[R].id = -1;
        int32_t P = s[L].prev, N = s[L].next, unused;
        if (P >= 0 && merge_find(t, s[P].id, s[L].id, &r, &unused))
            heap_push(h, &hn, (bpe_entry){ r, (uint32_t)P, s[P].id, s[L].id });
        if (N >= 0 && merge_find(t, s[L].id, s[N].id, &r, &unused))
            heap_push(h, &hn, (bpe_entry){ r, (uint32_t)L, s[L].id, s[N].id });
    }
    size_t m = 0;
    for (int32_t i = 0; i >= 0; i = s[i].next)
        out[m++] = s[i].id;
    return m;
}

static tok_cache *cache_create(void)
{
    tok_cache *k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
    k->mask = 4096 - 1;
    k->e = calloc(k->mask + 1, sizeof *k->e);
    if (!k->e) {
        free(k);
        return NULL;
    }
    return k;
}

static void cache_free(tok_cache *k)
{
    if (!k)
        return;
    free(k->e);
    free(k->keys.p);
    free(k->vals);
    free(k);
}

static const tok_cache_entry *cache_get(const tok_cache *k, const uint8_t *p, size_t n,
                                        uint64_t h)
{
    size_t i = h & k->mask;
    for (;;) {
        const tok_cache_entry *e = &k->e[i];
        if (e->key_len == 0)
            return NULL;
        if (e->hash == h && e->key_len == n && memcmp(k->keys.p + e->key_off, p, n) == 0)
            return e;
        i = (i + 1) & k->mask;
    }
}

static void cache_put(tok_cache *k, const uint8_t *p, size_t n, uint64_t h,
                      const int32_t *ids, size_t m)
{
    if (k->count >= TOK_CACHE_MAX_ENTRIES || k->keys.len + n > UINT32_MAX / 2)
        return;
    if ((k->count + 1) * 2 > k->mask + 1) {
        size_t nmask = (k->mask + 1) * 2 - 1;
        tok_cache_entry *ne = calloc(nmask + 1, sizeof *ne);
        if (!ne)
            return;
        for (size_t i = 0; i <= k->mask; i++) {
            if (k->e[i].key_len == 0)
                continue;
            size_t j = k->e[i].hash & nmask;
            while (ne[j].key_len)
                j = (j + 1) & nmask;
            ne[j] = k->e[i];
        }
        free(k->e);
        k->e = ne;
        k->mask = nmask;
    }
    if (k->vals_n + m > k->vals_cap) {
        size_t cap = k->vals_cap ? k->vals_cap : 4096;
        while (cap < k->vals_n + m)
            cap *= 2;
        int32_t *nv = realloc(k->vals, cap * sizeof *nv);
        if (!nv)
            return;
        k->vals = nv;
        k->vals_cap = cap;
    }
    size_t key_off = k->keys.len;
    if (tok_buf_put(&k->keys, p, n) != 0)
        return;
    memcpy(k->vals + k->vals_n, ids, m * sizeof *ids);
    size_t i = h & k->mask;
    while (k->e[i].key_len)
        i = (i + 1) & k->mask;
    k->e[i] = (tok_cache_entry){ h, (uint32_t)key_off, (uint32_t)n, (uint32_t)k->vals_n,
                                 (uint32_t)m };
    k->vals_n += m;
    k->count++;
}

/* One pre-token (raw bytes) -> ids. */
static void encode_piece(enc_ctx *c, const uint8_t *p, size_t n)
{
    const tokenizer *t = c->t;
    if (n == 0 || c->failed)
        return;
    if (n == 1) {
        emit(c, t->byte_id[p[0]]);
        return;
    }
    if (t->ignore_merges) {
        int32_t id = vocab_find(t, p, n);
        if (id >= 0) {
            emit(c, id);
            return;
        }
    }
    uint64_t h = 0;
    bool use_cache = c->cache && n <= TOK_CACHE_MAX_WORD;
    if (use_cache) {
        h = tok_hash_bytes(p, n);
        const tok_cache_entry *e = cache_get(c->cache, p, n, h);
        if (e) {
            for (uint32_t i = 0; i < e->val_n; i++)
                emit(c, c->cache->vals[e->val_off + i]);
            return;
        }
    }
    size_t m;
    if (n <= TOK_BPE_SMALL) {
        int32_t out[TOK_BPE_SMALL];
        m = bpe_small(t, p, n, out);
        for (size_t i = 0; i < m; i++)
            emit(c, out[i]);
        if (use_cache)
            cache_put(c->cache, p, n, h, out, m);
        return;
    }
    if (scratch_reserve(c, n) != 0) {
        enc_fail(c, "out of memory");
        return;
    }
    m = bpe_large(c, p, n, c->bpe_out);
    for (size_t i = 0; i < m; i++)
        emit(c, c->bpe_out[i]);
    if (use_cache)
        cache_put(c->cache, p, n, h, c->bpe_out, m);
}

static void run_steps(enc_ctx *c, int k, const uint8_t *p, size_t n);

/* Iterates the matches of re over p, calling run_steps(k+1) on the pieces a Split (or the
 * ByteLevel regex) keeps, with the reference's rules: gaps between matches are pieces unless
 * the behaviour is Removed; an inverted split (and ByteLevel's regex) keeps only matches. */
static void split_regex(enc_ctx *c, int k, const pcre2_code *re, bool keep_gaps,
                        bool keep_matches, const uint8_t *p, size_t n, int next)
{
    pcre2_match_data *md = c->md[k];
    size_t off = 0, prev = 0;
    while (off <= n && !c->failed) {
        int rc = pcre2_match(re, p, n, off, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            char buf[256];
            snprintf(buf, sizeof buf, "pre-tokenizer regex failed: %s", (const char *)msg);
            enc_fail(c, buf);
            return;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (ms > prev && keep_gaps)
            run_steps(c, next, p + prev, ms - prev);
        if (me > ms && keep_matches)
            run_steps(c, next, p + ms, me - ms);
        prev = me;
        if (me > ms) {
            off = me;
        } else {
            if (me >= n)
                break;
            uint32_t cp;
            off = me + utf8_decode(p + me, n - me, &cp);
        }
    }
    if (prev < n && keep_gaps && !c->failed)
        run_steps(c, next, p + prev, n - prev);
}

static void run_steps(enc_ctx *c, int k, const uint8_t *p, size_t n)
{
    if (n == 0 || c->failed)
        return;
    if (k >= c->t->n_steps) {
        encode_piece(c, p, n);
        return;
    }
    const tok_step *st = &c->t->steps[k];
    if (st->kind == TOK_STEP_SPLIT) {
        split_regex(c, k, st->re, !st->invert && !st->removed, !st->removed || st->invert, p,
                    n, k + 1);
        return;
    }
    /* ByteLevel: optional prefix space, optional GPT-2 split (matches only), then BPE. */
    if (st->add_prefix_space && p[0] != ' ') {
        tok_buf *b = &c->prefix;
        size_t base = b->len;
        if (tok_buf_put(b, " ", 1) != 0 || tok_buf_put(b, p, n) != 0) {
            enc_fail(c, "out of memory");
            return;
        }
        /* The buffer may move while nested pieces run, so work on a private copy. */
        uint8_t *copy = malloc(n + 1);
        if (!copy) {
            enc_fail(c, "out of memory");
            return;
        }
        memcpy(copy, b->p + base, n + 1);
        b->len = base;
        if (st->re)
            split_regex(c, k, st->re, false, true, copy, n + 1, k + 1);
        else
            encode_piece(c, copy, n + 1);
        free(copy);
        return;
    }
    if (st->re)
        split_regex(c, k, st->re, false, true, p, n, k + 1);
    else
        encode_piece(c, p, n);
}

typedef void (*section_fn)(enc_ctx *c, const uint8_t *p, size_t n);

/* Splits p on the tokens of trie tr: text sections go to fn, tokens are emitted. lstrip /
 * rstrip trim JS whitespace off the neighbouring text sections, like the reference. */
static void split_added(enc_ctx *c, const tok_trie *tr, const uint8_t *p, size_t n,
                        section_fn fn)
{
    const tokenizer *t = c->t;
    size_t cur = 0;
    bool strip_left = false;   /* previous token had rstrip */
    while (!c->failed) {
        size_t ms = n, me = n;
        int32_t a = trie_next(t, tr, p, n, cur, c->flags, &ms, &me);
        size_t s0 = cur, s1 = a >= 0 ? ms : n;
        if (strip_left)
            s0 += js_space_prefix(p + s0, s1 - s0);
        if (a >= 0 && t->added[a].lstrip)
            s1 -= js_space_suffix(p + s0, s1 - s0);
        if (s1 > s0)
            fn(c, p + s0, s1 - s0);
        if (a < 0)
            break;
        emit(c, t->added[a].id);
        strip_left = t->added[a].rstrip;
        cur = me;
    }
}

static void pretokenize_section(enc_ctx *c, const uint8_t *p, size_t n)
{
    run_steps(c, 0, p, n);
}

static void normalize_section(enc_ctx *c, const uint8_t *p, size_t n)
{
    uint8_t *q;
    size_t qn;
    bool owned;
    if (tok_normalize(c->t, p, n, &q, &qn, &owned) != 0) {
        enc_fail(c, "normalization failed");
        return;
    }
    if (c->t->trie_norm.count && !(c->flags & TOK_ENCODE_ADDED_AS_TEXT))
        split_added(c, &c->t->trie_norm, q, qn, pretokenize_section);
    else
        pretokenize_section(c, q, qn);
    if (owned)
        free(q);
}

static long encode_impl(const tokenizer *t, const char *text, size_t len, unsigned flags,
                        int32_t *ids, size_t cap, bool grow, int32_t **grown, char *err,
                        size_t errlen)
{
    if (!t || (!text && len > 0)) {
        tok_seterr(err, errlen, "tok_encode: %s", !t ? "no tokenizer" : "NULL text");
        return -1;
    }
    if (len > (size_t)LONG_MAX / 8) {
        tok_seterr(err, errlen, "tok_encode: input of %zu bytes is too large", len);
        return -1;
    }
    enc_ctx c = { 0 };
    c.t = t;
    c.flags = flags;
    c.ids = ids;
    c.cap = ids ? cap : 0;
    c.grow = grow;
    c.err = err;
    c.errlen = errlen;
    const uint8_t *p = (const uint8_t *)text;
    tok_buf clean = { 0 };
    if (len > 0 && utf8_valid_prefix(p, len) != len) {
        if (utf8_append_sanitized(&clean, p, len) != 0) {
            free(clean.p);
            tok_seterr(err, errlen, "tok_encode: out of memory");
            return -1;
        }
        p = (const uint8_t *)clean.p;
        len = clean.len;
    }
    for (int k = 0; k < t->n_steps; k++) {
        const pcre2_code *re = t->steps[k].re;
        if (re && !(c.md[k] = pcre2_match_data_create_from_pattern(re, NULL)))
            enc_fail(&c, "out of memory");
    }
    if (len >= TOK_CACHE_MIN_INPUT && !c.failed)
        c.cache = cache_create();   /* a missing cache only costs speed */
    if (!c.failed && len > 0)
        split_added(&c, &t->trie_raw, p, len, t->n_norm ? normalize_section :
                    pretokenize_section);
    for (int k = 0; k < t->n_steps; k++)
        pcre2_match_data_free(c.md[k]);
    cache_free(c.cache);
    free(c.syms);
    free(c.heap);
    free(c.bpe_out);
    free(c.prefix.p);
    free(clean.p);
    if (c.failed) {
        if (grow)
            free(c.ids);
        return -1;
    }
    if (grow) {
        if (c.n == 0) {
            free(c.ids);
            c.ids = NULL;
        }
        *grown = c.ids;
    }
    return (long)c.n;
}

long tok_encode_ex(const tokenizer *t, const char *text, size_t len, unsigned flags,
                   int32_t *ids, size_t cap, char *err, size_t errlen)
{
    return encode_impl(t, text, len, flags, ids, cap, false, NULL, err, errlen);
}

long tok_encode(const tokenizer *t, const char *text, size_t len, int32_t *ids, size_t cap)
{
    return encode_impl(t, text, len, 0, ids, cap, false, NULL, NULL, 0);
}

long tok_encode_alloc(const tokenizer *t, const char *text, size_t len, unsigned flags,
                      int32_t **ids, char *err, size_t errlen)
{
    *ids = NULL;
    return encode_impl(t, text, len, flags, NULL, 0, true, ids, err, errlen);
}

/* ------------------------------------------------------------------------------------------ */
/* Lookups                                                                                    */

int tok_vocab_size(const tokenizer *t)
{
    return t ? t->n_ids : 0;
}

static bool tok_known(const tokenizer *t, int32_t id)
{
    return t && id >= 0 && id < t->n_ids && (t->tok_flags[id] & TOKF_PRESENT);
}

int32_t tok_token_id(const tokenizer *t, const char *token)
{
    if (!t || !token)
        return -1;
    size_t n = strlen(token);
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && memcmp(t->arena + t->added[i].off, token, n) == 0)
            return t->added[i].id;
    int32_t id = n ? vocab_find(t, (const uint8_t *)token, n) : -1;
    return id >= 0 && !(t->tok_flags[id] & TOKF_ADDED) ? id : -1;
}

const char *tok_token_bytes(const tokenizer *t, int32_t id, size_t *len)
{
    if (!tok_known(t, id)) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = t->tok_len[id];
    return t->arena + t->tok_off[id];
}

bool tok_is_special(const tokenizer *t, int32_t id)
{
    return tok_known(t, id) && (t->tok_flags[id] & TOKF_SPECIAL);
}

bool tok_is_added(const tokenizer *t, int32_t id)
{
    return tok_known(t, id) && (t->tok_flags[id] & TOKF_ADDED);
}

/* ------------------------------------------------------------------------------------------ */
/* Decoding                                                                                   */

char *tok_decode_len(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                     size_t *out_len)
{
    tok_buf out = { 0 }, pend = { 0 };
    int rc = tok_buf_put(&out, "", 0);
    if (!ids)
        n = 0;
    for (size_t i = 0; i < n && rc == 0 && t; i++) {
        int32_t id = ids[i];
        if (!tok_known(t, id))
            continue;   /* ids beyond the tokenizer (up to the embedding size) decode to "" */
        uint8_t f = t->tok_flags[id];
        if ((f & TOKF_SPECIAL) && skip_special)
            continue;
        const char *b = t->arena + t->tok_off[id];
        if (f & TOKF_ADDED) {
            /* Byte tokens before an added token are decoded on their own (reference). */
            rc = utf8_append_sanitized(&out, (const uint8_t *)pend.p, pend.len);
            pend.len = 0;
            if (rc == 0)
                rc = tok_buf_put(&out, b, t->tok_len[id]);
        } else {
            rc = tok_buf_put(&pend, b, t->tok_len[id]);
        }
    }
    if (rc == 0)
        rc = utf8_append_sanitized(&out, (const uint8_t *)pend.p, pend.len);
    free(pend.p);
    if (rc != 0) {
        free(out.p);
        return NULL;
    }
    if (out_len)
        *out_len = out.len;
    return out.p;
}

char *tok_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special)
{
    return tok_decode_len(t, ids, n, skip_special, NULL);
}

struct tok_stream_decoder {
    const tokenizer *t;
    bool skip_special;
    tok_buf pend;   /* bytes of an incomplete (so far valid) UTF-8 sequence */
    tok_buf out;
};

tok_stream_decoder *tok_stream_create(const tokenizer *t, bool skip_special)
{
    if (!t)
        return NULL;
    tok_stream_decoder *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->t = t;
    d->skip_special = skip_special;
    return d;
}

/* Bytes at the end of s that begin a UTF-8 sequence which is valid so far but incomplete:
 * they must wait for the next token. Anything else can be decoded now (invalid bytes become
 * U+FFFD exactly as a one-shot WHATWG decode would produce them, because a new lead byte
 * always ends the previous sequence). */
static size_t utf8_incomplete_tail(const uint8_t *s, size_t n)
{
    for (size_t back = 1; back <= 4 && back <= n; back++) {
        uint8_t c = s[n - back];
        if ((c & 0xC0) == 0x80)
            continue;   /* continuation: keep looking for the lead */
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        } else {
            return 0;
        }
        size_t have = back - 1;
        if (have >= need)
            return 0;   /* complete (or overlong run): nothing to wait for */
        if (have >= 1 && (s[n - back + 1] < lo || s[n - back + 1] > hi))
            return 0;
        return back;
    }
    return 0;
}

const char *tok_stream_push(tok_stream_decoder *d, int32_t id, size_t *len)
{
    *len = 0;
    if (!d)
        return "";
    d->out.len = 0;
    if (tok_buf_put(&d->out, "", 0) != 0)
        return NULL;
    if (!tok_known(d->t, id))
        return d->out.p;
    uint8_t f = d->t->tok_flags[id];
    if ((f & TOKF_SPECIAL) && d->skip_special)
        return d->out.p;
    const char *b = d->t->arena + d->t->tok_off[id];
    size_t bl = d->t->tok_len[id];
    int rc;
    if (f & TOKF_ADDED) {
        rc = utf8_append_sanitized(&d->out, (const uint8_t *)d->pend.p, d->pend.len);
        d->pend.len = 0;
        if (rc == 0)
            rc = tok_buf_put(&d->out, b, bl);
    } else {
        rc = tok_buf_put(&d->pend, b, bl);
        if (rc == 0) {
            size_t keep = utf8_incomplete_tail((const uint8_t *)d->pend.p, d->pend.len);
            size_t ready = d->pend.len - keep;
            rc = utf8_append_sanitized(&d->out, (const uint8_t *)d->pend.p, ready);
            memmove(d->pend.p, d->pend.p + ready, keep);
            d->pend.len = keep;
        }
    }
    if (rc != 0)
        return NULL;
    *len = d->out.len;
    return d->out.p;
}

const char *tok_stream_finish(tok_stream_decoder *d, size_t *len)
{
    *len = 0;
    if (!d)
        return "";
    d->out.len = 0;
    if (tok_buf_put(&d->out, "", 0) != 0 ||
        utf8_append_sanitized(&d->out, (const uint8_t *)d->pend.p, d->pend.len) != 0)
        return NULL;
    d->pend.len = 0;
    *len = d->out.len;
    return d->out.p;
}

void tok_stream_reset(tok_stream_decoder *d)
{
    if (d) {
        d->pend.len = 0;
        d->out.len = 0;
    }
}

void tok_stream_free(tok_stream_decoder *d)
{
    if (!d)
        return;
    free(d->pend.p);
    free(d->out.p);
    free(d);
}
