/* stream_ctx.c — a stream's incrementally extended KV cache (see daemon.h for the layout).
 *
 * Invariants:
 *  - slot ownership is tracked here (owner[]), not by the KV cache's FREE state: slots reserved
 *    for a query are FREE in the cache until written but belong to the query.
 *  - the prefix is always VISIBLE; which other slots are visible depends on the "view":
 *      STREAM view (a pair's prefill): every live segment; zombies and query slots hidden.
 *      QUERY view (a question or decode step): the segments selected at the fork (zombies
 *      included) and the query's own tokens; segments appended since the fork are hidden.
 *    Attention depends only on visibility, so both lines of computation stay exact.
 *  - positions: the stream's line continues at next_pos; a query continues its own line from
 *    the fork's next_pos. A pair appended during a query starts at the stream's next_pos, the
 *    same number the question started at: neither sees the other, so there is no conflict.
 */
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/daemon.h"
#include "model/chat.h"

enum { OWN_FREE = 0, OWN_PREFIX, OWN_SEGMENT, OWN_QUERY };
enum { VIEW_STREAM = 0, VIEW_QUERY };

typedef struct vd_run {
    int32_t first, count;
} vd_run;

typedef struct vd_seg {
    uint64_t seq;
    int n_tokens;
    int pos_start, pos_next;
    double t0, t1, ts, wall;
    vd_run *runs;
    int n_runs;
    int32_t *ids;
    bool zombie;                  /* evicted while the query that sees it runs */
    bool in_query;                /* selected by the running query's window */
} vd_seg;

struct vd_sctx {
    model *m;
    const tokenizer *tok;
    const model_config *cfg;
    vd_sctx_options opt;
    model_kv *kv;
    int capacity;
    uint8_t *owner;
    int n_owned;                  /* slots not OWN_FREE */
    int32_t *prefix_ids;
    int n_prefix;
    vd_seg **segs;                /* oldest first; live and zombie */
    int n_segs, cap_segs;
    int tokens_used;              /* prefix + live segments */
    int next_pos;
    int position_limit;
    int view;
    vd_query *query;              /* the running query, or NULL */
    int32_t im_start_id, im_end_id;
    chat_format chat;             /* the template's tokens (model/chat.h renders the pieces) */
    chat_options chat_opts;
    chat_prompt piece;            /* scratch: one piece at a time */
    int32_t eos[MODEL_MAX_EOS + 2];
    int n_eos;
    uint64_t pairs_appended, pairs_evicted, shifts;
    int64_t shifted_total;
    /* reusable batch buffers */
    int32_t *b_ids, *b_slots;
    model_pos *b_pos;
    int b_cap;
};

struct vd_query {
    int32_t *q_ids;
    int n_q;
    int32_t *slots;
    int n_slots;
    int n_fed;
    int pos_first, pos_next;
    int max_tokens;
    model_sampler *sampler;
    tok_stream_decoder *dec;
    float *logits;
    int vocab;
    bool keep_logits;
    float *kept;
    int n_kept, cap_kept;
    char **stop;
    int n_stop;
    size_t max_stop_len;
    char *text;
    size_t len, cap, emitted;
    int32_t *gen;
    int n_gen, cap_gen;
    int32_t pending;              /* sampled, not yet fed; -1 before the prefill */
    bool started;
    bool done;
    proto_finish finish;
    _Atomic int cancel;
    proto_usage usage;
    int steps;
    double media_time;
    int window_segments;
};

static int sc_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int sc_err(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* ---- slots --------------------------------------------------------------------------------- */

/* First fit from slot 0: keeps the touched part of the cache as small as the peak use, so the
 * resident memory of a stream stops growing once its cap is reached. Returns the run count or
 * -1 when fewer than n slots are free. */
static int slots_alloc(vd_sctx *s, int n, int kind, vd_run **runs_out, int32_t *list) {
    if (s->capacity - s->n_owned < n) return -1;
    int n_runs = 0, cap_runs = 4;
    vd_run *runs = runs_out ? malloc((size_t)cap_runs * sizeof *runs) : NULL;
    if (runs_out && !runs) return -1;
    int got = 0;
    for (int i = 0; i < s->capacity && got < n; i++) {
        if (s->owner[i] != OWN_FREE) continue;
        s->owner[i] = (uint8_t)kind;
        if (list) list[got] = i;
        got++;
        if (runs) {
            if (n_runs > 0 && runs[n_runs - 1].first + runs[n_runs - 1].count == i) {
                runs[n_runs - 1].count++;
            } else {
                if (n_runs == cap_runs) {
                    cap_runs *= 2;
                    vd_run *r2 = realloc(runs, (size_t)cap_runs * sizeof *runs);
                    if (!r2) {
                        /* undo: the caller sees a failed allocation and nothing owned */
                        for (int k = 0; k < n_runs; k++)
                            memset(s->owner + runs[k].first, OWN_FREE, (size_t)runs[k].count);
                        s->owner[i] = OWN_FREE;
                        free(runs);
                        return -1;
                    }
                    runs = r2;
                }
                runs[n_runs++] = (vd_run){ i, 1 };
            }
        }
    }
    s->n_owned += n;
    if (runs_out) *runs_out = runs;
    return n_runs;
}

static void slots_free_runs(vd_sctx *s, const vd_run *runs, int n_runs) {
    for (int k = 0; k < n_runs; k++) {
        model_kv_release(s->kv, runs[k].first, runs[k].count, NULL, 0);
        memset(s->owner + runs[k].first, OWN_FREE, (size_t)runs[k].count);
        s->n_owned -= runs[k].count;
    }
}

static void runs_set_visible(vd_sctx *s, const vd_run *runs, int n_runs, bool visible) {
    for (int k = 0; k < n_runs; k++) {
        if (visible) model_kv_show(s->kv, runs[k].first, runs[k].count, NULL, 0);
        else model_kv_hide(s->kv, runs[k].first, runs[k].count, NULL, 0);
    }
}

/* Query slots are a sorted list; the fed ones are slots[0..n_fed). */
static void query_slots_set_visible(vd_sctx *s, const vd_query *q, bool visible) {
    int k = 0;
    while (k < q->n_fed) {
        int first = q->slots[k], count = 1;
        while (k + count < q->n_fed && q->slots[k + count] == first + count) count++;
        if (visible) model_kv_show(s->kv, first, count, NULL, 0);
        else model_kv_hide(s->kv, first, count, NULL, 0);
        k += count;
    }
}

static void set_view(vd_sctx *s, int view) {
    if (s->view == view) return;
    vd_query *q = s->query;
    for (int i = 0; i < s->n_segs; i++) {
        vd_seg *g = s->segs[i];
        bool vis = view == VIEW_STREAM ? !g->zombie : g->in_query;
        runs_set_visible(s, g->runs, g->n_runs, vis);
    }
    if (q) query_slots_set_visible(s, q, view == VIEW_QUERY);
    s->view = view;
}

/* ---- batches ------------------------------------------------------------------------------- */

static int batch_reserve(vd_sctx *s, int n) {
    if (n <= s->b_cap) return 0;
    int cap = n + 64;
    int32_t *ids = realloc(s->b_ids, (size_t)cap * sizeof *ids);
    if (ids) s->b_ids = ids;
    int32_t *sl = realloc(s->b_slots, (size_t)cap * sizeof *sl);
    if (sl) s->b_slots = sl;
    model_pos *pos = realloc(s->b_pos, (size_t)cap * sizeof *pos);
    if (pos) s->b_pos = pos;
    if (!ids || !sl || !pos) return -1;
    s->b_cap = cap;
    return 0;
}

/* The ids of the piece just rendered into s->piece, copied (malloc'ed). */
static long piece_ids(const vd_sctx *s, int32_t **out) {
    int32_t *ids = malloc((s->piece.n_ids + 1) * sizeof *ids);
    if (!ids) return -1;
    memcpy(ids, s->piece.ids, s->piece.n_ids * sizeof *ids);
    *out = ids;
    return (long)s->piece.n_ids;
}

/* ---- create / destroy ---------------------------------------------------------------------- */

size_t vd_sctx_bytes_for(const model *m, const vd_sctx_options *opt) {
    const model_config *cfg = model_get_config(m);
    size_t elt = model_get_compute(m) == MODEL_COMPUTE_F32 ? 4 : 2;
    size_t per_slot = 2 * (size_t)cfg->text.num_hidden_layers * (size_t)cfg->text.num_key_value_heads *
                      (size_t)cfg->text.head_dim * elt + sizeof(model_pos) + 2;
    size_t slots = (size_t)opt->cache_tokens + (size_t)opt->query_reserve + (size_t)opt->ingest_headroom;
    return slots * per_slot;
}

int vd_sctx_create(model *m, const tokenizer *tok, const vd_sctx_options *opt, vd_sctx **out,
                   char *err, size_t errlen) {
    *out = NULL;
    if (!m || !tok || !opt) return sc_err(err, errlen, "stream context: model, tokenizer and options are required");
    if (opt->cache_tokens < 16)
        return sc_err(err, errlen, "stream context: cache_tokens %d is too small (at least 16)", opt->cache_tokens);
    if (opt->query_reserve < 2)
        return sc_err(err, errlen, "stream context: query_reserve %d is too small (at least 2)", opt->query_reserve);
    if (opt->ingest_headroom < 0)
        return sc_err(err, errlen, "stream context: ingest_headroom %d is negative", opt->ingest_headroom);
    const model_config *cfg = model_get_config(m);
    long capl = (long)opt->cache_tokens + opt->query_reserve + opt->ingest_headroom;
    if (capl > (1L << 30)) return sc_err(err, errlen, "stream context: %ld slots is too many", capl);

    vd_sctx *s = calloc(1, sizeof *s);
    if (!s) return sc_err(err, errlen, "stream context: out of memory");
    s->m = m;
    s->tok = tok;
    s->cfg = cfg;
    s->opt = *opt;
    s->opt.system_prompt = NULL;      /* not kept: the prefix is tokenized below */
    s->capacity = (int)capl;
    s->view = VIEW_STREAM;
    s->position_limit = opt->position_limit > 0 ? opt->position_limit : cfg->text.max_position_embeddings;
    if (s->position_limit > cfg->text.max_position_embeddings)
        s->position_limit = cfg->text.max_position_embeddings;

    chat_prompt_init(&s->piece);
    if (chat_format_init(&s->chat, tok, err, errlen) != 0 || chat_format_check_config(&s->chat, cfg, err, errlen) != 0) {
        vd_sctx_destroy(s);
        return -1;
    }
    s->chat_opts = chat_options_default();
    s->chat_opts.thinking = opt->thinking;
    s->im_start_id = s->chat.im_start;
    s->im_end_id = s->chat.im_end;
    for (int i = 0; i < cfg->num_eos && i < MODEL_MAX_EOS; i++) s->eos[s->n_eos++] = cfg->eos_token_ids[i];
    s->eos[s->n_eos++] = s->im_end_id;
    s->owner = calloc((size_t)s->capacity, 1);
    if (!s->owner) {
        vd_sctx_destroy(s);
        return sc_err(err, errlen, "stream context: out of memory for %d slots", s->capacity);
    }
    if (model_kv_create(m, s->capacity, &s->kv, err, errlen) != 0) {
        vd_sctx_destroy(s);
        return -1;
    }

    /* Prefix: the system turn (if any) and the opening of the user turn, as the chat template
     * writes them; the frames follow as the user message's content. */
    /* The system turn (if any) and the opening of the user turn; the frames follow as the
     * user message's content. */
    const char *sys = opt->system_prompt && *opt->system_prompt ? opt->system_prompt : NULL;
    long np = -1;
    if (chat_append_prefix(&s->chat, sys, sys ? strlen(sys) : 0, &s->chat_opts, &s->piece, err, errlen) == 0)
        np = piece_ids(s, &s->prefix_ids);
    if (np <= 0) {
        vd_sctx_destroy(s);
        if (err && errlen && !err[0]) snprintf(err, errlen, "stream context: could not tokenize the prefix");
        return -1;
    }
    s->n_prefix = (int)np;
    if (s->n_prefix + 8 > opt->cache_tokens) {
        int n = s->n_prefix;
        vd_sctx_destroy(s);
        return sc_err(err, errlen, "stream context: the prefix (system prompt) takes %d tokens, "
                      "more than cache_tokens %d allows", n, opt->cache_tokens);
    }
    if (s->n_prefix + opt->query_reserve + 64 > s->position_limit) {
        int lim = s->position_limit;
        vd_sctx_destroy(s);
        return sc_err(err, errlen, "stream context: position_limit %d leaves no room for the prefix, "
                      "a pair and a query reserve of %d", lim, opt->query_reserve);
    }
    if (batch_reserve(s, s->n_prefix) != 0 || slots_alloc(s, s->n_prefix, OWN_PREFIX, NULL, s->b_slots) < 0) {
        vd_sctx_destroy(s);
        return sc_err(err, errlen, "stream context: out of memory");
    }
    model_pos_text(&s->next_pos, s->n_prefix, s->b_pos);
    model_batch b = { .n = s->n_prefix, .ids = s->prefix_ids, .pos = s->b_pos, .slots = s->b_slots };
    if (model_forward(m, s->kv, &b, err, errlen) != 0) {
        vd_sctx_destroy(s);
        return -1;
    }
    s->tokens_used = s->n_prefix;
    *out = s;
    return 0;
}

static void seg_free(vd_seg *g) {
    if (!g) return;
    free(g->runs);
    free(g->ids);
    free(g);
}

void vd_sctx_destroy(vd_sctx *s) {
    if (!s) return;
    if (s->query) vd_query_end(s, s->query);
    for (int i = 0; i < s->n_segs; i++) seg_free(s->segs[i]);
    free(s->segs);
    model_kv_destroy(s->kv);
    free(s->owner);
    free(s->prefix_ids);
    chat_prompt_free(&s->piece);
    free(s->b_ids);
    free(s->b_slots);
    free(s->b_pos);
    free(s);
}

/* ---- encode ---------------------------------------------------------------------------------- */

void vd_features_free(vd_features *f) {
    if (!f) return;
    model_vision_out_free(&f->vo);
    memset(f, 0, sizeof *f);
}

int vd_sctx_encode(vd_sctx *s, const ingest_pair *p, vd_features *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    if (!p || !p->rgb[0] || !p->rgb[1] || p->height <= 0 || p->width <= 0)
        return sc_err(err, errlen, "encode: the frame pair is empty");
    int pd = model_patch_dim(s->cfg);
    int ps = s->cfg->vision.patch_size;
    size_t rows = (size_t)(p->height / ps) * (size_t)(p->width / ps) *
                  (size_t)(2 / (s->cfg->vision.temporal_patch_size > 0 ? s->cfg->vision.temporal_patch_size : 2));
    if (rows == 0) return sc_err(err, errlen, "encode: pair of %dx%d px is smaller than one patch", p->width, p->height);
    float *patches = malloc(rows * (size_t)pd * sizeof(float));
    if (!patches) return sc_err(err, errlen, "encode: out of memory for %zu patch rows", rows);
    const uint8_t *frames[2] = { p->rgb[0], p->rgb[1] };
    long got = model_patchify(s->cfg, frames, 2, p->height, p->width, 0, patches, rows, &out->grid, err, errlen);
    if (got < 0) {
        free(patches);
        return -1;
    }
    int rc = model_vision_encode(s->m, patches, (size_t)got, &out->grid, 1, &out->vo, err, errlen);
    free(patches);
    if (rc != 0) return -1;
    out->seq = p->seq;
    out->t0 = p->t0;
    out->t1 = p->t1;
    out->timestamp = p->timestamp;
    /* Files and images carry no wall time: the pair's arrival here stands for it. */
    if (p->wall_time > 0) {
        out->wall = p->wall_time;
    } else {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        out->wall = (double)now.tv_sec + now.tv_nsec * 1e-9;
    }
    out->is_image = p->is_image || s->opt.image_mode;
    return 0;
}

/* ---- eviction and position shift ------------------------------------------------------------ */

static void seg_remove_at(vd_sctx *s, int i) {
    seg_free(s->segs[i]);
    memmove(s->segs + i, s->segs + i + 1, (size_t)(s->n_segs - i - 1) * sizeof *s->segs);
    s->n_segs--;
}

static int oldest_live(const vd_sctx *s) {
    for (int i = 0; i < s->n_segs; i++)
        if (!s->segs[i]->zombie) return i;
    return -1;
}

/* Evicts the oldest live segment. One the running query sees becomes a zombie (its slots stay
 * until the query ends); any other is released now. */
static void evict_oldest(vd_sctx *s) {
    int i = oldest_live(s);
    if (i < 0) return;
    vd_seg *g = s->segs[i];
    s->tokens_used -= g->n_tokens;
    s->pairs_evicted++;
    if (s->query && g->in_query) {
        g->zombie = true;
        if (s->view == VIEW_STREAM) runs_set_visible(s, g->runs, g->n_runs, false);
        return;
    }
    slots_free_runs(s, g->runs, g->n_runs);
    seg_remove_at(s, i);
}

/* Closes the gap that evictions left between the prefix and the oldest segment: the remaining
 * segments' keys are re-rotated by delta (RoPE rotations compose) and the stream's position line
 * moves back by the same amount. Only without a running query (its positions are its own). */
static int shift_positions(vd_sctx *s, char *err, size_t errlen) {
    int i = oldest_live(s);
    if (i < 0) {
        s->next_pos = s->n_prefix;
        return 0;
    }
    int delta = s->n_prefix - s->segs[i]->pos_start;
    if (delta >= 0) return 0;
    for (; i < s->n_segs; i++) {
        vd_seg *g = s->segs[i];
        for (int k = 0; k < g->n_runs; k++)
            if (model_kv_shift(s->m, s->kv, g->runs[k].first, g->runs[k].count, delta, err, errlen) != 0)
                return -1;
        g->pos_start += delta;
        g->pos_next += delta;
    }
    s->next_pos += delta;
    s->shifts++;
    s->shifted_total += -delta;
    return 0;
}

/* ---- append ---------------------------------------------------------------------------------- */

int vd_sctx_append(vd_sctx *s, const vd_features *f, char *err, size_t errlen) {
    const model_config *cfg = s->cfg;
    if (!f || f->vo.n_tokens <= 0 || !f->vo.embeds)
        return sc_err(err, errlen, "append: no visual features");
    long n_vis = model_grid_tokens(cfg, &f->grid);
    if (n_vis != f->vo.n_tokens || f->grid.t != 1)
        return sc_err(err, errlen, "append: grid (%d,%d,%d) does not match %d visual tokens of one pair",
                      f->grid.t, f->grid.h, f->grid.w, f->vo.n_tokens);

    /* Token ids of the segment: ["<t seconds>"] <|vision_start|> pads <|vision_end|> */
    int32_t *seg_ids = NULL;
    chat_prompt_clear(&s->piece);
    int rc = s->opt.image_mode ? chat_append_image(&s->chat, (int)n_vis, &s->chat_opts, &s->piece, err, errlen)
                               : chat_append_video_pair(&s->chat, f->timestamp, (int)n_vis, (int)(f->seq & 0x7fffffff),
                                                        &s->piece, err, errlen);
    long n_all = rc == 0 ? piece_ids(s, &seg_ids) : -1;
    if (n_all < n_vis + 2) {
        free(seg_ids);
        if (err && errlen && !err[0]) snprintf(err, errlen, "append: could not render the pair's tokens");
        return -1;
    }
    long n_ts = n_all - 2 - n_vis;
    int n = (int)n_all;
    if (s->n_prefix + n > s->opt.cache_tokens) {
        free(seg_ids);
        return sc_err(err, errlen, "append: a pair of %d tokens does not fit the cache cap of %d tokens "
                      "(prefix %d)", n, s->opt.cache_tokens, s->n_prefix);
    }
    const int m = cfg->vision.spatial_merge_size;
    int rows = f->grid.h / m, cols = f->grid.w / m;
    int span = (int)n_ts + 2 + (rows > cols ? rows : cols);

    /* Would the evictions this pair needs free enough slots now? Segments the running query
     * sees only become zombies, so during a query the pair may have to wait. */
    int need_evict_tokens = s->tokens_used + n - s->opt.cache_tokens;
    int free_now = s->capacity - s->n_owned, freed = 0;
    for (int i = 0; i < s->n_segs && need_evict_tokens > 0; i++) {
        vd_seg *g = s->segs[i];
        if (g->zombie) continue;
        need_evict_tokens -= g->n_tokens;
        if (!(s->query && g->in_query)) freed += g->n_tokens;
    }
    if (free_now + freed < n) {
        free(seg_ids);
        return -EAGAIN;
    }
    /* Positions: keep room for a whole query after this pair. */
    int reserve_pos = s->opt.query_reserve + span;
    if (s->next_pos + reserve_pos > s->position_limit && s->query) {
        if (s->next_pos + span > s->position_limit) {
            free(seg_ids);
            return -EAGAIN;   /* shift once the query has ended */
        }
    }

    while (s->tokens_used + n > s->opt.cache_tokens && oldest_live(s) >= 0) evict_oldest(s);
    if (!s->query) {
        while (s->next_pos + reserve_pos > s->position_limit) {
            if (shift_positions(s, err, errlen) != 0) {
                free(seg_ids);
                return -1;
            }
            if (s->next_pos + reserve_pos <= s->position_limit) break;
            if (oldest_live(s) < 0) {
                free(seg_ids);
                return sc_err(err, errlen, "append: position_limit %d is too small for a pair "
                              "spanning %d positions plus a query reserve", s->position_limit, span);
            }
            evict_oldest(s);
        }
    }

    vd_seg *g = calloc(1, sizeof *g);
    if (!g || batch_reserve(s, n) != 0) {
        free(g);
        free(seg_ids);
        return sc_err(err, errlen, "append: out of memory");
    }
    g->ids = seg_ids;
    g->n_runs = slots_alloc(s, n, OWN_SEGMENT, &g->runs, s->b_slots);
    if (g->n_runs < 0) {
        seg_free(g);
        return sc_err(err, errlen, "append: out of memory");
    }
    int pos = s->next_pos;
    g->pos_start = pos;
    model_pos_text(&pos, (int)n_ts + 1, s->b_pos);
    model_pos_visual(cfg, &pos, &f->grid, s->b_pos + n_ts + 1);
    model_pos_text(&pos, 1, s->b_pos + n - 1);
    g->pos_next = pos;

    if (s->query) set_view(s, VIEW_STREAM);
    model_batch b = {
        .n = n, .ids = g->ids, .pos = s->b_pos, .slots = s->b_slots,
        .visual = { .embeds = f->vo.embeds, .deepstack = f->vo.deepstack,
                    .deepstack_stride = (size_t)f->vo.n_tokens * (size_t)f->vo.hidden,
                    .n = f->vo.n_tokens },
    };
    if (model_forward(s->m, s->kv, &b, err, errlen) != 0) {
        for (int r = 0; r < g->n_runs; r++) {
            memset(s->owner + g->runs[r].first, OWN_FREE, (size_t)g->runs[r].count);
            s->n_owned -= g->runs[r].count;
        }
        seg_free(g);
        return -1;
    }
    g->seq = f->seq;
    g->n_tokens = n;
    g->t0 = f->t0;
    g->t1 = f->t1;
    g->ts = f->timestamp;
    g->wall = f->wall;
    g->in_query = false;
    if (s->n_segs == s->cap_segs) {
        int nc = s->cap_segs ? s->cap_segs * 2 : 64;
        vd_seg **ns = realloc(s->segs, (size_t)nc * sizeof *ns);
        if (!ns) {
            slots_free_runs(s, g->runs, g->n_runs);
            seg_free(g);
            return sc_err(err, errlen, "append: out of memory");
        }
        s->segs = ns;
        s->cap_segs = nc;
    }
    s->segs[s->n_segs++] = g;
    s->tokens_used += n;
    s->next_pos = pos;
    s->pairs_appended++;
    return 0;
}

/* ---- inspection ----------------------------------------------------------------------------- */

void vd_sctx_get_stats(const vd_sctx *s, vd_sctx_stats *st) {
    memset(st, 0, sizeof *st);
    st->prefix_tokens = s->n_prefix;
    st->tokens_used = s->tokens_used;
    st->cache_tokens = s->opt.cache_tokens;
    st->capacity = s->capacity;
    st->next_pos = s->next_pos;
    st->pairs_appended = s->pairs_appended;
    st->pairs_evicted = s->pairs_evicted;
    st->shifts = s->shifts;
    st->shifted_total = s->shifted_total;
    st->oldest_media = st->newest_media = -1;
    st->oldest_wall = st->newest_wall = -1;
    for (int i = 0; i < s->n_segs; i++) {
        const vd_seg *g = s->segs[i];
        if (g->zombie) continue;
        if (st->segments == 0) {
            st->oldest_media = g->ts;
            st->oldest_wall = g->wall;
        }
        st->newest_media = g->ts;
        st->newest_wall = g->wall;
        st->segments++;
    }
    st->kv_bytes = (size_t)s->capacity * model_kv_bytes_per_slot(s->kv);
}

int vd_sctx_segment_count(const vd_sctx *s) {
    return s->n_segs;
}

int vd_sctx_segment(const vd_sctx *s, int i, vd_segment_info *out) {
    if (i < 0 || i >= s->n_segs) return -1;
    const vd_seg *g = s->segs[i];
    *out = (vd_segment_info){ .seq = g->seq, .n_tokens = g->n_tokens, .pos_start = g->pos_start,
                              .pos_next = g->pos_next, .t0 = g->t0, .t1 = g->t1,
                              .timestamp = g->ts, .wall = g->wall, .zombie = g->zombie };
    return 0;
}

int vd_sctx_segment_slots(const vd_sctx *s, int i, int32_t *slots, int cap) {
    if (i < 0 || i >= s->n_segs) return -1;
    const vd_seg *g = s->segs[i];
    int k = 0;
    for (int r = 0; r < g->n_runs; r++)
        for (int j = 0; j < g->runs[r].count; j++) {
            if (k < cap) slots[k] = g->runs[r].first + j;
            k++;
        }
    return k;
}

int vd_sctx_segment_ids(const vd_sctx *s, int i, const int32_t **ids) {
    if (i < 0 || i >= s->n_segs) return -1;
    *ids = s->segs[i]->ids;
    return s->segs[i]->n_tokens;
}

int vd_sctx_prefix_ids(const vd_sctx *s, const int32_t **ids) {
    *ids = s->prefix_ids;
    return s->n_prefix;
}

model_kv *vd_sctx_kv(vd_sctx *s) {
    return s->kv;
}

/* ---- queries -------------------------------------------------------------------------------- */

static bool seg_in_window(const vd_seg *g, const proto_window *w, double newest_t1) {
    switch (w->kind) {
    case PROTO_WINDOW_ALL:
        return true;
    case PROTO_WINDOW_LAST:
        return g->t1 >= newest_t1 - w->last_seconds;
    case PROTO_WINDOW_MEDIA:
        return (!w->has_from || g->t1 >= w->from) && (!w->has_to || g->t0 <= w->to);
    case PROTO_WINDOW_WALL: {
        /* A pair's wall time is the mean arrival of its frames: give it its media duration. */
        double half = (g->t1 - g->t0) / 2;
        return (!w->has_from || g->wall + half >= w->from) && (!w->has_to || g->wall - half <= w->to);
    }
    }
    return false;
}

static void query_free(vd_query *q) {
    if (!q) return;
    free(q->q_ids);
    free(q->slots);
    model_sampler_destroy(q->sampler);
    if (q->dec) tok_stream_free(q->dec);
    free(q->logits);
    free(q->kept);
    for (int i = 0; i < q->n_stop; i++) free(q->stop[i]);
    free(q->stop);
    free(q->text);
    free(q->gen);
    free(q);
}

int vd_query_begin(vd_sctx *s, const vd_query_params *p, vd_query **out, proto_errc *code,
                   char *err, size_t errlen) {
    *out = NULL;
    *code = PROTO_E_INTERNAL;
    if (s->query) return sc_err(err, errlen, "query: another query is running on this stream");
    if (!p || !p->prompt || p->max_tokens < 1) {
        *code = PROTO_E_BAD_REQUEST;
        return sc_err(err, errlen, "query: a prompt and max_tokens >= 1 are required");
    }
    /* The window: "last N seconds" counts back from the newest pair. */
    double newest_t1 = 0;
    for (int i = 0; i < s->n_segs; i++)
        if (!s->segs[i]->zombie) newest_t1 = s->segs[i]->t1;
    int selected = 0, sel_tokens = 0;
    double media_time = -1;
    for (int i = 0; i < s->n_segs; i++) {
        vd_seg *g = s->segs[i];
        g->in_query = !g->zombie && seg_in_window(g, &p->window, newest_t1);
        if (g->in_query) {
            selected++;
            sel_tokens += g->n_tokens;
            media_time = g->ts;
        }
    }
    /* A window without frames answers from the prefix alone (docs/protocol.md): usage shows
     * what was seen. */
    vd_query *q = calloc(1, sizeof *q);
    if (!q) return sc_err(err, errlen, "query: out of memory");
    q->pending = -1;
    q->max_tokens = p->max_tokens;
    q->keep_logits = p->keep_logits;
    q->media_time = media_time;
    q->window_segments = selected;
    q->vocab = s->cfg->text.vocab_size;

    /* The user's question closes the user turn, then the assistant turn opens. Special-token
     * text in the prompt is recognised, exactly as upstream's tokenizer does with the template's
     * output. */
    /* The question closes the user turn and the assistant turn opens (with "<think>\n" for
     * Thinking checkpoints). The prompt is plain text: special-token text stays text. */
    long nq = -1;
    chat_prompt_clear(&s->piece);
    char cerr[256] = "";
    if (chat_append_question(&s->chat, p->prompt, strlen(p->prompt), &s->chat_opts, &s->piece, cerr, sizeof cerr) == 0)
        nq = piece_ids(s, &q->q_ids);
    if (nq <= 0) {
        query_free(q);
        *code = PROTO_E_BAD_REQUEST;
        return sc_err(err, errlen, "query: the prompt could not be tokenized%s%s", cerr[0] ? ": " : "", cerr);
    }
    q->n_q = (int)nq;
    if (q->n_q + 1 > s->opt.query_reserve) {
        int n = q->n_q;
        query_free(q);
        *code = PROTO_E_LIMIT_EXCEEDED;
        return sc_err(err, errlen, "query: the prompt is %d tokens; the stream reserves %d slots for a "
                      "question and its answer (query_reserve_tokens)", n, s->opt.query_reserve);
    }
    /* The last sampled token is never fed back, hence max_tokens - 1. */
    long want = (long)q->n_q + p->max_tokens - 1;
    if (want > s->opt.query_reserve) want = s->opt.query_reserve;
    int free_slots = s->capacity - s->n_owned;
    if (want > free_slots) want = free_slots;
    if (want < q->n_q) {
        query_free(q);
        *code = PROTO_E_LIMIT_EXCEEDED;
        return sc_err(err, errlen, "query: no free cache slots for the question");
    }
    q->n_slots = (int)want;
    q->slots = malloc((size_t)q->n_slots * sizeof *q->slots);
    q->logits = malloc((size_t)q->vocab * sizeof *q->logits);
    q->cap_gen = 64;
    q->gen = malloc((size_t)q->cap_gen * sizeof *q->gen);
    q->cap = 256;
    q->text = malloc(q->cap);
    if (!q->slots || !q->logits || !q->gen || !q->text) {
        query_free(q);
        return sc_err(err, errlen, "query: out of memory");
    }
    q->text[0] = 0;
    if (p->n_stop > 0) {
        q->stop = calloc((size_t)p->n_stop, sizeof *q->stop);
        if (!q->stop) {
            query_free(q);
            return sc_err(err, errlen, "query: out of memory");
        }
        for (int i = 0; i < p->n_stop; i++) {
            if (!p->stop[i] || !*p->stop[i]) continue;
            q->stop[q->n_stop] = strdup(p->stop[i]);
            if (!q->stop[q->n_stop]) {
                query_free(q);
                return sc_err(err, errlen, "query: out of memory");
            }
            size_t l = strlen(p->stop[i]);
            if (l > q->max_stop_len) q->max_stop_len = l;
            q->n_stop++;
        }
    }
    if (model_sampler_create(&p->sampling, q->vocab, &q->sampler, err, errlen) != 0) {
        query_free(q);
        *code = PROTO_E_BAD_REQUEST;
        return -1;
    }
    /* Repetition penalty over everything the answer attends to, as upstream applies it to the
     * whole input_ids. */
    model_sampler_add_prompt(q->sampler, s->prefix_ids, (size_t)s->n_prefix);
    for (int i = 0; i < s->n_segs; i++)
        if (s->segs[i]->in_query) model_sampler_add_prompt(q->sampler, s->segs[i]->ids, (size_t)s->segs[i]->n_tokens);
    model_sampler_add_prompt(q->sampler, q->q_ids, (size_t)q->n_q);
    q->dec = tok_stream_create(s->tok, true);
    if (!q->dec) {
        query_free(q);
        return sc_err(err, errlen, "query: out of memory");
    }
    if (slots_alloc(s, q->n_slots, OWN_QUERY, NULL, q->slots) < 0) {
        query_free(q);
        return sc_err(err, errlen, "query: no free cache slots");
    }
    q->pos_first = q->pos_next = s->next_pos;
    q->usage.cached_tokens = s->n_prefix + sel_tokens;
    q->usage.prompt_tokens = q->usage.cached_tokens + q->n_q;
    s->query = q;
    *out = q;
    *code = PROTO_OK;
    return 0;
}

void vd_query_cancel(vd_query *q) {
    atomic_store(&q->cancel, 1);
}

static int text_append(vd_query *q, const char *t, size_t n) {
    if (q->len + n + 1 > q->cap) {
        size_t nc = (q->len + n + 1) * 2;
        char *p = realloc(q->text, nc);
        if (!p) return -1;
        q->text = p;
        q->cap = nc;
    }
    memcpy(q->text + q->len, t, n);
    q->len += n;
    q->text[q->len] = 0;
    return 0;
}

/* Longest suffix of text that is a proper prefix of a stop string: it must be held back until
 * the next token shows whether the stop string follows. */
static size_t stop_holdback(const vd_query *q) {
    size_t best = 0;
    for (int i = 0; i < q->n_stop; i++) {
        size_t sl = strlen(q->stop[i]);
        for (size_t k = sl - 1; k > best; k--) {
            if (k > q->len) continue;
            if (memcmp(q->text + q->len - k, q->stop[i], k) == 0) {
                best = k;
                break;
            }
        }
    }
    return best;
}

static int emit(vd_query *q, size_t upto, vd_text_fn on_text, void *ctx) {
    if (upto <= q->emitted) return 0;
    /* Never split a UTF-8 sequence between two frames. */
    size_t n = proto_utf8_complete_prefix(q->text + q->emitted, upto - q->emitted);
    if (n == 0) return 0;
    int rc = on_text ? on_text(ctx, q->text + q->emitted, n) : 0;
    q->emitted += n;
    return rc;
}

static void finish(vd_query *q, proto_finish f) {
    q->done = true;
    q->finish = f;
    q->usage.completion_tokens = q->n_gen;
}

static bool is_eos(const vd_sctx *s, int32_t id) {
    for (int i = 0; i < s->n_eos; i++)
        if (s->eos[i] == id) return true;
    return false;
}

/* After a forward: sample, account, emit; decides whether another step follows. */
static int sample_and_emit(vd_sctx *s, vd_query *q, vd_text_fn on_text, void *ctx, char *err, size_t errlen) {
    if (q->keep_logits) {
        if (q->n_kept == q->cap_kept) {
            int nc = q->cap_kept ? q->cap_kept * 2 : 8;
            float *k = realloc(q->kept, (size_t)nc * (size_t)q->vocab * sizeof *k);
            if (!k) return sc_err(err, errlen, "query: out of memory");
            q->kept = k;
            q->cap_kept = nc;
        }
        memcpy(q->kept + (size_t)q->n_kept * (size_t)q->vocab, q->logits, (size_t)q->vocab * sizeof(float));
        q->n_kept++;
    }
    int32_t id = model_sampler_sample(q->sampler, q->logits);
    model_sampler_accept(q->sampler, id);
    if (q->n_gen == q->cap_gen) {
        int nc = q->cap_gen * 2;
        int32_t *g = realloc(q->gen, (size_t)nc * sizeof *g);
        if (!g) return sc_err(err, errlen, "query: out of memory");
        q->gen = g;
        q->cap_gen = nc;
    }
    q->gen[q->n_gen++] = id;
    int cancel = 0;
    if (is_eos(s, id)) {
        size_t n;
        const char *t = tok_stream_finish(q->dec, &n);
        if (n && text_append(q, t, n) != 0) return sc_err(err, errlen, "query: out of memory");
        finish(q, PROTO_FINISH_STOP);
        emit(q, q->len, on_text, ctx);
        return 0;
    }
    size_t n;
    const char *t = tok_stream_push(q->dec, id, &n);
    size_t before = q->len;
    if (n && text_append(q, t, n) != 0) return sc_err(err, errlen, "query: out of memory");
    if (q->n_stop > 0 && q->len > before) {
        size_t from = before > q->max_stop_len ? before - q->max_stop_len : 0;
        size_t cut = (size_t)-1;
        for (int i = 0; i < q->n_stop; i++) {
            const char *hit = strstr(q->text + from, q->stop[i]);
            if (hit && (size_t)(hit - q->text) < cut) cut = (size_t)(hit - q->text);
        }
        if (cut != (size_t)-1) {
            if (cut < q->emitted) cut = q->emitted;   /* cannot happen: the holdback prevents it */
            q->len = cut;
            q->text[cut] = 0;
            finish(q, PROTO_FINISH_STOP_STRING);
            emit(q, q->len, on_text, ctx);
            return 0;
        }
    }
    bool last = q->n_gen >= q->max_tokens || q->n_fed >= q->n_slots;
    if (last) {
        const char *rest = tok_stream_finish(q->dec, &n);
        if (n && text_append(q, rest, n) != 0) return sc_err(err, errlen, "query: out of memory");
        finish(q, q->n_gen >= q->max_tokens ? PROTO_FINISH_LENGTH : PROTO_FINISH_CONTEXT);
        emit(q, q->len, on_text, ctx);
        return 0;
    }
    cancel = emit(q, q->len - stop_holdback(q), on_text, ctx);
    if (cancel) {
        finish(q, PROTO_FINISH_CANCELLED);
        return 0;
    }
    q->pending = id;
    return 1;
}

int vd_query_step(vd_sctx *s, vd_query *q, vd_text_fn on_text, void *ctx, char *err, size_t errlen) {
    if (q != s->query) return sc_err(err, errlen, "query: not the running query of this stream");
    if (q->done) return 0;
    if (atomic_load(&q->cancel)) {
        finish(q, PROTO_FINISH_CANCELLED);
        return 0;
    }
    set_view(s, VIEW_QUERY);
    int n = q->started ? 1 : q->n_q;
    if (batch_reserve(s, n) != 0) return sc_err(err, errlen, "query: out of memory");
    const int32_t *ids = q->started ? &q->pending : q->q_ids;
    model_pos_text(&q->pos_next, n, s->b_pos);
    int32_t last_row = n - 1;
    model_batch b = { .n = n, .ids = ids, .pos = s->b_pos, .slots = q->slots + q->n_fed,
                      .n_logits = 1, .logit_rows = &last_row, .logits = q->logits };
    if (model_forward(s->m, s->kv, &b, err, errlen) != 0) {
        q->pos_next -= n;
        return -1;
    }
    q->n_fed += n;
    q->started = true;
    q->steps++;
    return sample_and_emit(s, q, on_text, ctx, err, errlen);
}

void vd_query_get_result(const vd_query *q, vd_query_result *r) {
    memset(r, 0, sizeof *r);
    r->text = q->text;
    r->text_len = q->len;
    r->finish = q->finish;
    r->done = q->done;
    r->n_ids = q->n_gen;
    r->ids = q->gen;
    r->usage = q->usage;
    r->usage.completion_tokens = q->n_gen;
    r->steps = q->steps;
    r->n_logits = q->n_kept;
    r->logits = q->kept;
    r->media_time = q->media_time;
    r->window_segments = q->window_segments;
}

int vd_query_prompt_ids(const vd_query *q, const int32_t **ids) {
    *ids = q->q_ids;
    return q->n_q;
}

void vd_query_positions(const vd_query *q, int *first, int *next) {
    if (first) *first = q->pos_first;
    if (next) *next = q->pos_next;
}

void vd_query_end(vd_sctx *s, vd_query *q) {
    if (!q) return;
    if (s && s->query == q) {
        /* Back to the stream's view first, then drop the query's slots and the zombies. */
        set_view(s, VIEW_STREAM);
        for (int k = 0; k < q->n_slots;) {
            int first = q->slots[k], count = 1;
            while (k + count < q->n_slots && q->slots[k + count] == first + count) count++;
            model_kv_release(s->kv, first, count, NULL, 0);
            memset(s->owner + first, OWN_FREE, (size_t)count);
            s->n_owned -= count;
            k += count;
        }
        for (int i = 0; i < s->n_segs;) {
            vd_seg *g = s->segs[i];
            g->in_query = false;
            if (g->zombie) {
                slots_free_runs(s, g->runs, g->n_runs);
                seg_remove_at(s, i);
            } else {
                i++;
            }
        }
        s->query = NULL;
    }
    query_free(q);
}
