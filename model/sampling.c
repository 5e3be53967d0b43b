/* sampling.c — token selection from logits: penalties (repetition as in HF transformers,
 * presence as in the OpenAI/vLLM APIs), then temperature, top-k, top-p and min-p in HF's
 * warper order, then a draw from the model's own PRNG (xoshiro256**, seeded by splitmix64) so a
 * seed reproduces a run exactly. All filters are exact: no probability mass is dropped by
 * approximation, only by the filters themselves. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/vl_internal.h"

struct model_sampler {
    model_sampling p;
    int vocab;
    uint64_t s[4];
    uint8_t *in_prompt;        /* [vocab] */
    int *out_count;            /* [vocab] */
    int32_t *seen;             /* distinct penalised ids, to visit only those */
    int n_seen;
    float *prob;               /* [vocab] scratch */
    int32_t *cand;             /* [vocab] scratch */
};

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_u64(model_sampler *s) {
    uint64_t *q = s->s;
    const uint64_t r = rotl(q[1] * 5, 7) * 9, t = q[1] << 17;
    q[2] ^= q[0];
    q[3] ^= q[1];
    q[1] ^= q[2];
    q[0] ^= q[3];
    q[2] ^= t;
    q[3] = rotl(q[3], 45);
    return r;
}

model_sampling model_sampling_default(void) {
    model_sampling p = { .temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f,
                         .repetition_penalty = 1.0f, .presence_penalty = 0.0f, .seed = 0 };
    return p;
}

int model_sampler_create(const model_sampling *p, int vocab_size, model_sampler **out,
                         char *err, size_t errlen) {
    if (!p || !out) return vl_err(err, errlen, "sampler: no settings given");
    *out = NULL;
    if (vocab_size <= 0) return vl_err(err, errlen, "sampler: vocab_size %d must be positive", vocab_size);
    if (!isfinite(p->temperature) || p->temperature < 0.0f)
        return vl_err(err, errlen, "sampler: temperature %g must be >= 0 (0 = greedy)", (double)p->temperature);
    if (!(p->top_p > 0.0f) || !isfinite(p->top_p))
        return vl_err(err, errlen, "sampler: top_p %g must be in (0, 1] (1 = off)", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return vl_err(err, errlen, "sampler: min_p %g must be in [0, 1] (0 = off)", (double)p->min_p);
    if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty))
        return vl_err(err, errlen, "sampler: repetition_penalty %g must be > 0 (1 = off)",
                      (double)p->repetition_penalty);
    if (!isfinite(p->presence_penalty))
        return vl_err(err, errlen, "sampler: presence_penalty must be finite");
    model_sampler *s = calloc(1, sizeof *s);
    if (!s) return vl_err(err, errlen, "sampler: out of memory");
    s->p = *p;
    s->vocab = vocab_size;
    s->in_prompt = calloc((size_t)vocab_size, 1);
    s->out_count = calloc((size_t)vocab_size, sizeof(int));
    s->seen = malloc(sizeof(int32_t) * (size_t)vocab_size);
    s->prob = malloc(sizeof(float) * (size_t)vocab_size);
    s->cand = malloc(sizeof(int32_t) * (size_t)vocab_size);
    if (!s->in_prompt || !s->out_count || !s->seen || !s->prob || !s->cand) {
        model_sampler_destroy(s);
        return vl_err(err, errlen, "sampler: out of memory");
    }
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->s[i] = splitmix64(&x);
    *out = s;
    return 0;
}

void model_sampler_destroy(model_sampler *s) {
    if (!s) return;
    free(s->in_prompt);
    free(s->out_count);
    free(s->seen);
    free(s->prob);
    free(s->cand);
    free(s);
}

static void mark_seen(model_sampler *s, int32_t id) {
    if (!s->in_prompt[id] && !s->out_count[id]) s->seen[s->n_seen++] = id;
}

void model_sampler_add_prompt(model_sampler *s, const int32_t *ids, size_t n) {
    if (!s || !ids) return;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= s->vocab) continue;
        mark_seen(s, ids[i]);
        s->in_prompt[ids[i]] = 1;
    }
}

void model_sampler_accept(model_sampler *s, int32_t id) {
    if (!s || id < 0 || id >= s->vocab) return;
    mark_seen(s, id);
    s->out_count[id]++;
}

static int cmp_prob_desc(const void *a, const void *b, void *ctx) {
    const float *p = ctx;
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (p[x] > p[y]) return -1;
    if (p[x] < p[y]) return 1;
    return x < y ? -1 : x > y;
}

/* 0 for p >= 1/2, 1 for [1/4, 1/2), ...; 255 for zero and the smallest values. */
static inline int prob_bucket(float p) {
    union { float f; uint32_t u; } v = { .f = p };
    const int e = (int)((v.u >> 23) & 0xff); /* biased exponent: 126 for [0.5, 1) */
    int b = 126 - e;
    return b < 0 ? 0 : b > 255 ? 255 : b;
}

/* Sorts candidates by probability (descending, ties by id) without a global order. */
static void sort_cand(int32_t *c, int n, const float *p) {
    qsort_r(c, (size_t)n, sizeof *c, cmp_prob_desc, (void *)p);
}

int32_t model_sampler_sample(model_sampler *s, float *logits) {
    const int V = s->vocab;
    const model_sampling *p = &s->p;
    /* penalties on the tokens seen so far */
    for (int i = 0; i < s->n_seen; i++) {
        const int32_t id = s->seen[i];
        float *l = &logits[id];
        if (p->repetition_penalty != 1.0f)
            *l = *l > 0.0f ? *l / p->repetition_penalty : *l * p->repetition_penalty;
        if (p->presence_penalty != 0.0f && s->out_count[id] > 0) *l -= p->presence_penalty;
    }
    int32_t best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best] || (isnan(logits[best]) && !isnan(logits[i]))) best = i;
    if (p->temperature <= 0.0f || !isfinite(logits[best])) return best;

    /* temperature, then softmax over the vocabulary */
    const float invt = 1.0f / p->temperature;
    const float mx = logits[best] * invt;
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        float l = logits[i] * invt;
        logits[i] = l;
        float e = isnan(l) ? 0.0f : expf(l - mx);
        s->prob[i] = e;
        sum += e;
    }
    for (int i = 0; i < V; i++) s->prob[i] = (float)(s->prob[i] / sum);

    const int k = p->top_k > 0 && p->top_k < V ? p->top_k : V;
    if (k == V && p->top_p >= 1.0f && p->min_p <= 0.0f) {
        /* no filter: draw from the whole distribution, no ordering needed */
        const double u = (double)(next_u64(s) >> 11) * 0x1.0p-53;
        double cum = 0.0;
        int32_t last = best;
        for (int i = 0; i < V; i++) {
            if (s->prob[i] <= 0.0f) continue;
            cum += s->prob[i];
            last = i;
            if (u < cum) return i;
        }
        return last;
    }

    /* Candidates, most probable first. Only the head of the distribution is sorted: tokens are
     * bucketed by the binary exponent of their probability, and the candidates are the buckets
     * from the top down to the first one where the filters are certainly satisfied (enough
     * tokens for top-k, enough mass for top-p, below the min-p floor). */
    double bmass[256] = { 0 };
    int bcount[256] = { 0 };
    for (int i = 0; i < V; i++) {
        const int b = prob_bucket(s->prob[i]);
        bmass[b] += s->prob[i];
        bcount[b]++;
    }
    const float floor_p = p->min_p > 0.0f ? p->min_p * s->prob[best] : 0.0f;
    int last = 255;
    {
        double cum = 0.0;
        int cnt = 0;
        for (int b = 0; b < 256; b++) {
            cum += bmass[b];
            cnt += bcount[b];
            bool ok = k < V ? cnt >= k
                            : p->top_p < 1.0f ? cum >= p->top_p
                                              : b >= prob_bucket(floor_p);
            if (ok) {
                last = b;
                break;
            }
        }
    }
    int n = 0;
    for (int i = 0; i < V; i++)
        if (prob_bucket(s->prob[i]) <= last) s->cand[n++] = i;
    sort_cand(s->cand, n, s->prob);
    if (n > k) n = k;
    /* top-k then renormalise for top-p (HF applies each warper to the previous one's output) */
    double mass = 0.0;
    for (int i = 0; i < n; i++) mass += s->prob[s->cand[i]];
    if (p->top_p < 1.0f) {
        double cum = 0.0;
        int keep = 0;
        while (keep < n) {
            cum += s->prob[s->cand[keep]] / mass;
            keep++;
            if (cum >= p->top_p) break;
        }
        n = keep;
    }
    if (p->min_p > 0.0f) {
        const float floor_p = p->min_p * s->prob[s->cand[0]];
        int keep = 1;
        while (keep < n && s->prob[s->cand[keep]] >= floor_p) keep++;
        n = keep;
    }
    mass = 0.0;
    for (int i = 0; i < n; i++) mass += s->prob[s->cand[i]];
    const double u = (double)(next_u64(s) >> 11) * 0x1.0p-53 * mass;
    double cum = 0.0;
    for (int i = 0; i < n; i++) {
        cum += s->prob[s->cand[i]];
        if (u < cum) return s->cand[i];
    }
    return s->cand[n - 1];
}
