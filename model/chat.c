/* chat.c — Qwen3-VL chat rendering (see chat.h).
 *
 * A chat_prompt accumulates template tokens and text. Text is held back ("pending") until a
 * template token or the end of a call, then tokenized as one string: upstream tokenizes the
 * whole expanded prompt, and a pre-token can span the seam between template text and message
 * text ("user\n" + "\n..."), so text must never be tokenized in smaller pieces than the runs
 * between template tokens. */
#include "model/chat.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHAT_MAX_PADS (1 << 24)   /* per visual block: far beyond any real image or pair */
/* pend_flags: 0 while the pending text is template text only (it may join message text of
 * either kind), else CHAT_FLAGS_SET | the tokenizer flags of the message text in it. Zero is
 * the "nothing yet" state so a zero-initialised chat_prompt is valid. */
#define CHAT_TEMPLATE_TEXT 0
#define CHAT_FLAGS_SET 0x100

static void chat_seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void chat_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const char *role_name(chat_role r)
{
    switch (r) {
    case CHAT_ROLE_SYSTEM: return "system";
    case CHAT_ROLE_USER: return "user";
    case CHAT_ROLE_ASSISTANT: return "assistant";
    }
    return NULL;
}

chat_options chat_options_default(void)
{
    return (chat_options){ .add_generation_prompt = true, .thinking = false,
                           .add_vision_id = false, .text_mode = CHAT_TEXT_SAFE };
}

/* Tokenizer flags for message text of a role. */
static int text_flags(const chat_options *o, chat_role role)
{
    if (o && o->text_mode == CHAT_TEXT_PARSE_ADDED)
        return 0;
    return role == CHAT_ROLE_ASSISTANT ? TOK_ENCODE_SPECIAL_AS_TEXT : TOK_ENCODE_ADDED_AS_TEXT;
}

int chat_format_init(chat_format *f, const tokenizer *tok, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    if (!tok) {
        chat_seterr(err, errlen, "chat_format_init: no tokenizer");
        return -1;
    }
    f->tok = tok;
    struct { int32_t *dst; const char *s; } req[] = {
        { &f->im_start, "<|im_start|>" },         { &f->im_end, "<|im_end|>" },
        { &f->vision_start, "<|vision_start|>" }, { &f->vision_end, "<|vision_end|>" },
        { &f->image_pad, "<|image_pad|>" },       { &f->video_pad, "<|video_pad|>" },
    };
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++) {
        *req[i].dst = tok_token_id(tok, req[i].s);
        if (*req[i].dst < 0) {
            chat_seterr(err, errlen, "chat: the tokenizer has no %s token; a Qwen3-VL "
                        "tokenizer.json is expected", req[i].s);
            return -1;
        }
    }
    f->think = tok_token_id(tok, "<think>");
    return 0;
}

int chat_format_check_config(const chat_format *f, const model_config *cfg, char *err,
                             size_t errlen)
{
    struct { const char *key, *tok; int cfg_id; int32_t tok_id; } c[] = {
        { "image_token_id", "<|image_pad|>", cfg->image_token_id, f->image_pad },
        { "video_token_id", "<|video_pad|>", cfg->video_token_id, f->video_pad },
        { "vision_start_token_id", "<|vision_start|>", cfg->vision_start_token_id,
          f->vision_start },
        { "vision_end_token_id", "<|vision_end|>", cfg->vision_end_token_id, f->vision_end },
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        if (c[i].cfg_id != c[i].tok_id) {
            chat_seterr(err, errlen, "config.json %s is %d but the tokenizer's %s is %d: the "
                        "checkpoint and tokenizer.json do not belong together", c[i].key,
                        c[i].cfg_id, c[i].tok, (int)c[i].tok_id);
            return -1;
        }
    }
    return 0;
}

int chat_format_timestamp(double t, char *buf, size_t cap)
{
    if (!isfinite(t) || t < 0 || !buf)
        return -1;
    t += 0.0;   /* -0.0 -> 0.0 */
    int n = snprintf(buf, cap, "<%.1f seconds>", t);
    return n < 0 || (size_t)n >= cap ? -1 : n;
}

/* ------------------------------------------------------------------------------------------ */
/* The prompt buffer                                                                          */

void chat_prompt_init(chat_prompt *p)
{
    memset(p, 0, sizeof *p);
    p->pend_flags = CHAT_TEMPLATE_TEXT;
}

void chat_prompt_clear(chat_prompt *p)
{
    p->n_ids = 0;
    p->text_len = 0;
    if (p->text)
        p->text[0] = '\0';
    p->n_spans = 0;
    p->pend_len = 0;
    p->pend_flags = CHAT_TEMPLATE_TEXT;
    p->n_images = 0;
    p->n_videos = 0;
}

void chat_prompt_free(chat_prompt *p)
{
    free(p->ids);
    free(p->text);
    free(p->spans);
    free(p->pend);
    chat_prompt_init(p);
}

static int grow(void **buf, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        if (c > SIZE_MAX / 2 / elem)
            return -1;
        c *= 2;
    }
    void *nb = realloc(*buf, c * elem);
    if (!nb)
        return -1;
    *buf = nb;
    *cap = c;
    return 0;
}

typedef struct chat_ctx {
    const chat_format *f;
    chat_prompt *p;
    char *err;
    size_t errlen;
} chat_ctx;

static int oom(chat_ctx *c)
{
    chat_seterr(c->err, c->errlen, "chat: out of memory");
    return -1;
}

static int add_text_view(chat_ctx *c, const char *s, size_t n)
{
    chat_prompt *p = c->p;
    if (grow((void **)&p->text, &p->text_cap, p->text_len + n + 1, 1) != 0)
        return oom(c);
    if (n)
        memcpy(p->text + p->text_len, s, n);
    p->text_len += n;
    p->text[p->text_len] = '\0';
    return 0;
}

static int add_ids(chat_ctx *c, const int32_t *ids, size_t n)
{
    chat_prompt *p = c->p;
    if (n == 0)
        return 0;
    if (grow((void **)&p->ids, &p->ids_cap, p->n_ids + n, sizeof *p->ids) != 0)
        return oom(c);
    memcpy(p->ids + p->n_ids, ids, n * sizeof *ids);
    p->n_ids += n;
    return 0;
}

/* Tokenizes the pending text. */
static int flush(chat_ctx *c)
{
    chat_prompt *p = c->p;
    if (p->pend_len == 0)
        return 0;
    int32_t *ids = NULL;
    char terr[256] = "";
    unsigned flags = p->pend_flags == CHAT_TEMPLATE_TEXT ? TOK_ENCODE_ADDED_AS_TEXT :
                     (unsigned)(p->pend_flags & ~CHAT_FLAGS_SET);
    long n = tok_encode_alloc(c->f->tok, p->pend, p->pend_len, flags, &ids, terr, sizeof terr);
    if (n < 0) {
        chat_seterr(c->err, c->errlen, "chat: %s", terr);
        return -1;
    }
    int rc = add_ids(c, ids, (size_t)n);
    free(ids);
    p->pend_len = 0;
    p->pend_flags = CHAT_TEMPLATE_TEXT;
    return rc;
}

/* Appends text. Message text carries its tokenizer flags; template text (message = false)
 * joins whatever message text is pending. */
static int put_text(chat_ctx *c, const char *s, size_t n, bool message, int tok_flags)
{
    chat_prompt *p = c->p;
    if (n == 0)
        return 0;
    int flags = message ? (tok_flags | CHAT_FLAGS_SET) : CHAT_TEMPLATE_TEXT;
    if (flags != CHAT_TEMPLATE_TEXT && p->pend_flags != CHAT_TEMPLATE_TEXT &&
        p->pend_flags != flags && flush(c) != 0)
        return -1;
    if (flags != CHAT_TEMPLATE_TEXT)
        p->pend_flags = flags;
    if (grow((void **)&p->pend, &p->pend_cap, p->pend_len + n, 1) != 0)
        return oom(c);
    memcpy(p->pend + p->pend_len, s, n);
    p->pend_len += n;
    return add_text_view(c, s, n);
}

static int put_cstr(chat_ctx *c, const char *s)
{
    return put_text(c, s, strlen(s), false, 0);
}

static int put_token(chat_ctx *c, int32_t id)
{
    size_t l = 0;
    const char *s = tok_token_bytes(c->f->tok, id, &l);
    if (!s) {
        chat_seterr(c->err, c->errlen, "chat: token id %d is not in the tokenizer", (int)id);
        return -1;
    }
    if (flush(c) != 0 || add_ids(c, &id, 1) != 0)
        return -1;
    return add_text_view(c, s, l);
}

static int put_pads(chat_ctx *c, int32_t pad, int n, chat_part_kind kind, size_t msg,
                    size_t part, int pair, double ts)
{
    chat_prompt *p = c->p;
    size_t l = 0;
    const char *s = tok_token_bytes(c->f->tok, pad, &l);
    if (!s || flush(c) != 0)
        return -1;
    if (grow((void **)&p->spans, &p->spans_cap, p->n_spans + 1, sizeof *p->spans) != 0 ||
        grow((void **)&p->ids, &p->ids_cap, p->n_ids + (size_t)n, sizeof *p->ids) != 0 ||
        grow((void **)&p->text, &p->text_cap, p->text_len + (size_t)n * l + 1, 1) != 0)
        return oom(c);
    p->spans[p->n_spans++] = (chat_vision_span){ kind, msg, part, pair, ts, p->n_ids,
                                                 (size_t)n };
    for (int i = 0; i < n; i++) {
        p->ids[p->n_ids++] = pad;
        memcpy(p->text + p->text_len, s, l);
        p->text_len += l;
    }
    p->text[p->text_len] = '\0';
    return 0;
}

static int check_pads(chat_ctx *c, int n, const char *what)
{
    if (n < 1 || n > CHAT_MAX_PADS) {
        chat_seterr(c->err, c->errlen, "chat: %s has %d visual tokens; expected 1..%d", what,
                    n, CHAT_MAX_PADS);
        return -1;
    }
    return 0;
}

static int vision_id(chat_ctx *c, const chat_options *o, bool video)
{
    if (!o || !o->add_vision_id)
        return 0;
    char buf[48];
    int k = video ? ++c->p->n_videos : ++c->p->n_images;
    snprintf(buf, sizeof buf, video ? "Video %d: " : "Picture %d: ", k);
    return put_cstr(c, buf);
}

static int image_block(chat_ctx *c, int n, const chat_options *o, size_t msg, size_t part)
{
    if (check_pads(c, n, "an image") != 0)
        return -1;
    if (vision_id(c, o, false) != 0 || put_token(c, c->f->vision_start) != 0 ||
        put_pads(c, c->f->image_pad, n, CHAT_PART_IMAGE, msg, part, 0, 0.0) != 0 ||
        put_token(c, c->f->vision_end) != 0)
        return -1;
    return 0;
}

static int video_pair_block(chat_ctx *c, double ts, int n, int pair, size_t msg, size_t part)
{
    char what[64], buf[64];
    snprintf(what, sizeof what, "video frame pair %d", pair);
    if (check_pads(c, n, what) != 0)
        return -1;
    if (chat_format_timestamp(ts, buf, sizeof buf) < 0) {
        chat_seterr(c->err, c->errlen, "chat: %s has timestamp %g; expected a finite number "
                    "of seconds >= 0", what, ts);
        return -1;
    }
    if (put_cstr(c, buf) != 0 || put_token(c, c->f->vision_start) != 0 ||
        put_pads(c, c->f->video_pad, n, CHAT_PART_VIDEO, msg, part, pair, ts) != 0 ||
        put_token(c, c->f->vision_end) != 0)
        return -1;
    return 0;
}

static int turn_open(chat_ctx *c, chat_role role)
{
    const char *name = role_name(role);
    if (!name) {
        chat_seterr(c->err, c->errlen, "chat: role %d is not system, user or assistant",
                    (int)role);
        return -1;
    }
    if (put_token(c, c->f->im_start) != 0 || put_cstr(c, name) != 0 || put_cstr(c, "\n") != 0)
        return -1;
    return 0;
}

static int turn_close(chat_ctx *c)
{
    return put_token(c, c->f->im_end) == 0 && put_cstr(c, "\n") == 0 ? 0 : -1;
}

static int generation_prompt(chat_ctx *c, const chat_options *o)
{
    if (turn_open(c, CHAT_ROLE_ASSISTANT) != 0)
        return -1;
    if (o && o->thinking) {
        if (c->f->think < 0) {
            chat_seterr(c->err, c->errlen, "chat: thinking was asked for but the tokenizer "
                        "has no <think> token");
            return -1;
        }
        if (put_token(c, c->f->think) != 0 || put_cstr(c, "\n") != 0)
            return -1;
    }
    return 0;
}

static int text_part(chat_ctx *c, const char *s, size_t n, int flags, const char *where)
{
    if (!s && n > 0) {
        chat_seterr(c->err, c->errlen, "chat: %s: text is NULL with length %zu", where, n);
        return -1;
    }
    return put_text(c, s, n, true, flags);
}

/* ------------------------------------------------------------------------------------------ */
/* Whole conversations                                                                        */

static int render_part(chat_ctx *c, const chat_message *m, size_t i, size_t j,
                       const chat_options *o)
{
    const chat_part *pt = &m->parts[j];
    char where[64];
    snprintf(where, sizeof where, "message %zu part %zu", i, j);
    switch (pt->kind) {
    case CHAT_PART_TEXT:
        return text_part(c, pt->text, pt->text_len, text_flags(o, m->role), where);
    case CHAT_PART_IMAGE:
        if (image_block(c, pt->image_tokens, o, i, j) != 0) {
            chat_seterr(c->err, c->errlen, "chat: %s: image with %d visual tokens; expected "
                        "1..%d", where, pt->image_tokens, CHAT_MAX_PADS);
            return -1;
        }
        return 0;
    case CHAT_PART_VIDEO:
        if (pt->n_pairs < 1 || !pt->pair_tokens || !pt->timestamps) {
            chat_seterr(c->err, c->errlen, "chat: %s: a video needs n_pairs >= 1 (got %d) "
                        "with pair_tokens and timestamps", where, pt->n_pairs);
            return -1;
        }
        if (vision_id(c, o, true) != 0)
            return -1;
        for (int k = 0; k < pt->n_pairs; k++) {
            if (video_pair_block(c, pt->timestamps[k], pt->pair_tokens[k], k, i, j) != 0) {
                char inner[256];
                snprintf(inner, sizeof inner, "%s", c->err ? c->err : "");
                chat_seterr(c->err, c->errlen, "%s (%s)", inner, where);
                return -1;
            }
        }
        return 0;
    }
    chat_seterr(c->err, c->errlen, "chat: %s: unknown part kind %d", where, (int)pt->kind);
    return -1;
}

int chat_render(const chat_format *f, const chat_message *msgs, size_t n_msgs,
                const chat_options *opts, chat_prompt *out, char *err, size_t errlen)
{
    chat_options dflt = chat_options_default();
    const chat_options *o = opts ? opts : &dflt;
    chat_prompt_clear(out);
    if (!f || !f->tok || (!msgs && n_msgs > 0)) {
        chat_seterr(err, errlen, "chat_render: %s", !f || !f->tok ? "no chat_format" :
                    "messages is NULL");
        return -1;
    }
    chat_ctx c = { f, out, err, errlen };
    for (size_t i = 0; i < n_msgs; i++) {
        const chat_message *m = &msgs[i];
        if (!role_name(m->role)) {
            chat_seterr(err, errlen, "chat: message %zu: role %d is not system, user or "
                        "assistant", i, (int)m->role);
            goto fail;
        }
        if (!m->parts && m->n_parts > 0) {
            chat_seterr(err, errlen, "chat: message %zu: parts is NULL with n_parts %zu", i,
                        m->n_parts);
            goto fail;
        }
        if (turn_open(&c, m->role) != 0)
            goto fail;
        for (size_t j = 0; j < m->n_parts; j++)
            if (render_part(&c, m, i, j, o) != 0)
                goto fail;
        if (turn_close(&c) != 0)
            goto fail;
    }
    if (o->add_generation_prompt && generation_prompt(&c, o) != 0)
        goto fail;
    if (flush(&c) != 0)
        goto fail;
    return 0;
fail:
    chat_prompt_clear(out);
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Pieces                                                                                     */

typedef struct chat_mark {
    size_t n_ids, text_len, n_spans;
    int n_images, n_videos;
} chat_mark;

static int piece_begin(const chat_format *f, chat_prompt *out, chat_ctx *c, chat_mark *mk,
                       char *err, size_t errlen)
{
    if (!f || !f->tok || !out) {
        chat_seterr(err, errlen, "chat: no chat_format or prompt");
        return -1;
    }
    *c = (chat_ctx){ f, out, err, errlen };
    *mk = (chat_mark){ out->n_ids, out->text_len, out->n_spans, out->n_images, out->n_videos };
    if (out->pend_len)   /* only chat_render leaves text pending, and never on return */
        return flush(c);
    return 0;
}

/* Finishes a piece: tokenizes its text, or rolls the prompt back to where it was. */
static int piece_end(chat_ctx *c, const chat_mark *mk, int rc)
{
    if (rc == 0)
        rc = flush(c);
    if (rc != 0) {
        chat_prompt *p = c->p;
        p->n_ids = mk->n_ids;
        p->text_len = mk->text_len;
        if (p->text)
            p->text[p->text_len] = '\0';
        p->n_spans = mk->n_spans;
        p->n_images = mk->n_images;
        p->n_videos = mk->n_videos;
        p->pend_len = 0;
        p->pend_flags = CHAT_TEMPLATE_TEXT;
    }
    return rc;
}

int chat_append_prefix(const chat_format *f, const char *system, size_t system_len,
                       const chat_options *opts, chat_prompt *out, char *err, size_t errlen)
{
    chat_ctx c;
    chat_mark mk;
    if (piece_begin(f, out, &c, &mk, err, errlen) != 0)
        return -1;
    int rc = 0;
    if (system) {
        rc = turn_open(&c, CHAT_ROLE_SYSTEM);
        if (rc == 0)
            rc = text_part(&c, system, system_len, text_flags(opts, CHAT_ROLE_SYSTEM),
                           "system prompt");
        if (rc == 0)
            rc = turn_close(&c);
    }
    if (rc == 0)
        rc = turn_open(&c, CHAT_ROLE_USER);
    return piece_end(&c, &mk, rc);
}

int chat_append_image(const chat_format *f, int n_tokens, const chat_options *opts,
                      chat_prompt *out, char *err, size_t errlen)
{
    chat_ctx c;
    chat_mark mk;
    if (piece_begin(f, out, &c, &mk, err, errlen) != 0)
        return -1;
    return piece_end(&c, &mk, image_block(&c, n_tokens, opts, SIZE_MAX, SIZE_MAX));
}

int chat_append_video_pair(const chat_format *f, double timestamp, int n_tokens, int pair,
                           chat_prompt *out, char *err, size_t errlen)
{
    chat_ctx c;
    chat_mark mk;
    if (piece_begin(f, out, &c, &mk, err, errlen) != 0)
        return -1;
    return piece_end(&c, &mk, video_pair_block(&c, timestamp, n_tokens, pair, SIZE_MAX,
                                               SIZE_MAX));
}

int chat_append_text(const chat_format *f, chat_role role, const char *text, size_t len,
                     const chat_options *opts, chat_prompt *out, char *err, size_t errlen)
{
    chat_ctx c;
    chat_mark mk;
    if (piece_begin(f, out, &c, &mk, err, errlen) != 0)
        return -1;
    if (!role_name(role)) {
        chat_seterr(err, errlen, "chat: role %d is not system, user or assistant", (int)role);
        return piece_end(&c, &mk, -1);
    }
    return piece_end(&c, &mk, text_part(&c, text, len, text_flags(opts, role), "text"));
}

int chat_append_question(const chat_format *f, const char *question, size_t len,
                         const chat_options *opts, chat_prompt *out, char *err, size_t errlen)
{
    chat_options dflt = chat_options_default();
    const chat_options *o = opts ? opts : &dflt;
    chat_ctx c;
    chat_mark mk;
    if (piece_begin(f, out, &c, &mk, err, errlen) != 0)
        return -1;
    int rc = text_part(&c, question, len, text_flags(o, CHAT_ROLE_USER), "question");
    if (rc == 0)
        rc = turn_close(&c);
    if (rc == 0 && o->add_generation_prompt)
        rc = generation_prompt(&c, o);
    return piece_end(&c, &mk, rc);
}

int chat_append_turn_open(const chat_format *f, chat_role role, chat_prompt *out, char *err,
                          size_t errlen)
{
    chat_ctx c;
    chat_mark mk;
    if (piece_begin(f, out, &c, &mk, err, errlen) != 0)
        return -1;
    return piece_end(&c, &mk, turn_open(&c, role));
}

int chat_append_turn_close(const chat_format *f, chat_prompt *out, char *err, size_t errlen)
{
    chat_ctx c;
    chat_mark mk;
    if (piece_begin(f, out, &c, &mk, err, errlen) != 0)
        return -1;
    return piece_end(&c, &mk, turn_close(&c));
}

int chat_append_generation_prompt(const chat_format *f, const chat_options *opts,
                                  chat_prompt *out, char *err, size_t errlen)
{
    chat_ctx c;
    chat_mark mk;
    if (piece_begin(f, out, &c, &mk, err, errlen) != 0)
        return -1;
    return piece_end(&c, &mk, generation_prompt(&c, opts));
}
