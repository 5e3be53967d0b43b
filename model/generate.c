/* generate.c — the decode loop: sample, stream text, stop, feed the token back. */
#include <stdio.h>
#include <stdlib.h>

#include "model/vl_internal.h"

typedef struct gen_text {
    char *s;
    size_t len, cap;
} gen_text;

static int text_append(gen_text *t, const char *p, size_t n) {
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + n + 1) cap *= 2;
        char *q = realloc(t->s, cap);
        if (!q) return -1;
        t->s = q;
        t->cap = cap;
    }
    if (n) memcpy(t->s + t->len, p, n);
    t->len += n;
    t->s[t->len] = '\0';
    return 0;
}

/* Earliest occurrence of any stop string that ends after `from` (new text only). */
static long find_stop(const gen_text *t, size_t from, const char *const *stops, int nstops) {
    long best = -1;
    for (int i = 0; i < nstops; i++) {
        size_t sl = strlen(stops[i]);
        if (sl == 0 || sl > t->len) continue;
        size_t start = from >= sl - 1 ? from - (sl - 1) : 0;
        for (size_t p = start; p + sl <= t->len; p++) {
            if (memcmp(t->s + p, stops[i], sl) == 0) {
                if (best < 0 || (long)p < best) best = (long)p;
                break;
            }
        }
    }
    return best;
}

/* Length of the longest suffix of the text that is a proper prefix of a stop string: that
 * text may still become a stop string, so it is held back. */
static size_t holdback(const gen_text *t, const char *const *stops, int nstops) {
    size_t hb = 0;
    for (int i = 0; i < nstops; i++) {
        size_t sl = strlen(stops[i]);
        for (size_t k = sl > 0 ? sl - 1 : 0; k > hb; k--) {
            if (k <= t->len && memcmp(t->s + t->len - k, stops[i], k) == 0) {
                hb = k;
                break;
            }
        }
    }
    return hb;
}

void model_generate_result_free(model_generate_result *r) {
    if (!r) return;
    free(r->ids);
    free(r->text);
    memset(r, 0, sizeof *r);
}

int model_generate(model *m, model_kv *kv, const tokenizer *tok, const model_generate_params *p,
                   const int32_t *prompt_ids, size_t n_prompt, float *logits,
                   const int32_t *slots, int n_slots, int *next_pos,
                   model_generate_result *res, char *err, size_t errlen) {
    if (!res) return vl_err(err, errlen, "generate: no result given");
    memset(res, 0, sizeof *res);
    if (!m || !kv || !p || !logits || !next_pos)
        return vl_err(err, errlen, "generate: model, cache, parameters, logits and next_pos are required");
    if (p->max_tokens <= 0) return vl_err(err, errlen, "generate: max_tokens %d must be positive", p->max_tokens);
    if (n_slots < 0 || (n_slots > 0 && !slots)) return vl_err(err, errlen, "generate: bad slot list");
    if (p->n_stop_strings < 0 || (p->n_stop_strings > 0 && !p->stop_strings))
        return vl_err(err, errlen, "generate: bad stop string list");
    if (p->n_stop_strings > 0 && !tok)
        return vl_err(err, errlen, "generate: stop strings need a tokenizer to decode text");
    for (int i = 0; i < p->n_stop_strings; i++)
        if (!p->stop_strings[i] || !p->stop_strings[i][0])
            return vl_err(err, errlen, "generate: stop string %d is empty", i);
    for (int i = 0; i < n_slots; i++)
        if (slots[i] < 0 || slots[i] >= kv->capacity)
            return vl_err(err, errlen, "generate: slot %d (%d) is outside the cache's %d slots",
                          i, slots[i], kv->capacity);

    const int V = m->txt.vocab;
    int32_t eos[MODEL_MAX_EOS + 1];
    int neos = 0;
    for (int i = 0; i < m->cfg.num_eos && i < MODEL_MAX_EOS; i++) eos[neos++] = m->cfg.eos_token_ids[i];
    if (tok) {
        int32_t im_end = tok_token_id(tok, "<|im_end|>");
        if (im_end >= 0) eos[neos++] = im_end;
    }
    model_sampler *smp = NULL;
    if (model_sampler_create(&p->sampling, V, &smp, err, errlen)) return -1;
    model_sampler_add_prompt(smp, prompt_ids, prompt_ids ? n_prompt : 0);
    tok_stream_decoder *dec = tok ? tok_stream_create(tok, p->skip_special) : NULL;
    res->ids = malloc(sizeof(int32_t) * (size_t)p->max_tokens);
    gen_text text = { 0 };
    int rc = -1;
    if ((tok && !dec) || !res->ids || text_append(&text, "", 0)) {
        vl_err(err, errlen, "generate: out of memory");
        goto done;
    }
    size_t emitted = 0;
    bool cancelled = false;
    for (;;) {
        const int32_t id = model_sampler_sample(smp, logits);
        model_sampler_accept(smp, id);
        res->ids[res->n_ids++] = id;
        bool is_eos = false;
        for (int i = 0; i < neos; i++) is_eos |= id == eos[i];
        if (is_eos) {
            res->reason = MODEL_STOP_EOS;
            if (p->on_token) p->on_token(p->ctx, id, "", 0); /* ends anyway */
            break;
        }
        if (dec) {
            size_t plen = 0;
            const char *piece = tok_stream_push(dec, id, &plen);
            size_t before = text.len;
            if (plen && text_append(&text, piece, plen)) {
                vl_err(err, errlen, "generate: out of memory");
                goto done;
            }
            long at = find_stop(&text, before, p->stop_strings, p->n_stop_strings);
            if (at >= 0) {
                text.len = (size_t)at;
                text.s[text.len] = '\0';
                if (p->on_token) p->on_token(p->ctx, id, text.s + emitted, text.len - emitted);
                emitted = text.len;
                res->reason = MODEL_STOP_STRING;
                break;
            }
            size_t safe = text.len - holdback(&text, p->stop_strings, p->n_stop_strings);
            if (safe < emitted) safe = emitted;
            if (p->on_token && p->on_token(p->ctx, id, text.s + emitted, safe - emitted)) {
                emitted = safe;
                res->reason = MODEL_STOP_CANCELLED;
                cancelled = true;
                break;
            }
            emitted = safe;
        } else if (p->on_token && p->on_token(p->ctx, id, "", 0)) {
            res->reason = MODEL_STOP_CANCELLED;
            cancelled = true;
            break;
        }
        if (res->n_ids >= p->max_tokens) {
            res->reason = MODEL_STOP_MAX_TOKENS;
            break;
        }
        if (res->n_fed >= n_slots) {
            res->reason = MODEL_STOP_NO_SLOTS;
            break;
        }
        model_pos pos;
        model_pos_text(next_pos, 1, &pos);
        const int32_t row = 0;
        model_batch b = { .n = 1, .ids = &id, .pos = &pos, .slots = &slots[res->n_fed],
                          .n_logits = 1, .logit_rows = &row, .logits = logits };
        if (model_forward(m, kv, &b, err, errlen)) {
            (*next_pos)--;
            goto done;
        }
        res->n_fed++;
    }
    if (cancelled) res->reason = MODEL_STOP_CANCELLED;
    if (dec && res->reason != MODEL_STOP_STRING && res->reason != MODEL_STOP_CANCELLED) {
        /* flush the decoder's tail and any text held back for a stop string that never came */
        size_t plen = 0;
        const char *tail = tok_stream_finish(dec, &plen);
        if (plen && text_append(&text, tail, plen)) {
            vl_err(err, errlen, "generate: out of memory");
            goto done;
        }
        if (text.len > emitted && p->on_token) p->on_token(p->ctx, -1, text.s + emitted, text.len - emitted);
        emitted = text.len;
    }
    res->text = text.s;
    text.s = NULL;
    rc = 0;
done:
    free(text.s);
    if (dec) tok_stream_free(dec);
    model_sampler_destroy(smp);
    if (rc) model_generate_result_free(res);
    return rc;
}
