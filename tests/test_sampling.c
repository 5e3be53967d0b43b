/* test_sampling.c — the sampler on hand-made logits (greedy, temperature, top-k, top-p, min-p,
 * repetition and presence penalties, seeds) and the generate loop on the dense tiny checkpoint
 * with its tokenizer (eos, stop strings with held-back streaming text, max tokens, slots,
 * cancellation). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/tokenizer.h"
#include "tests/support/npy.h"

#define SET_DIR "tests/data/golden/qwen3vl-dense-tiny"

static model_sampler *mk(model_sampling p, int vocab) {
    model_sampler *s = NULL;
    char err[256];
    if (model_sampler_create(&p, vocab, &s, err, sizeof err)) fail_msg("%s", err);
    return s;
}

/* Draws `n` tokens from fixed logits, counting how often each id comes up. */
static void draw(model_sampler *s, const float *logits, int vocab, int n, int *count) {
    float *l = malloc(sizeof(float) * (size_t)vocab);
    assert_non_null(l);
    memset(count, 0, sizeof(int) * (size_t)vocab);
    for (int i = 0; i < n; i++) {
        memcpy(l, logits, sizeof(float) * (size_t)vocab);
        int32_t id = model_sampler_sample(s, l);
        assert_true(id >= 0 && id < vocab);
        count[id]++;
    }
    free(l);
}

static void test_greedy(void **state) {
    (void)state;
    float l[6] = { 0.1f, 2.0f, -1.0f, 2.0f, 1.5f, -INFINITY };
    model_sampler *s = mk(model_sampling_default(), 6);
    assert_int_equal(model_sampler_sample(s, l), 1); /* ties: lowest id */
    model_sampler_destroy(s);
}

static void test_temperature_distribution(void **state) {
    (void)state;
    /* p = 0.5, 0.3, 0.2 at temperature 1; at temperature 0.5 p ~ p^2 normalised */
    float l[3] = { logf(0.5f), logf(0.3f), logf(0.2f) };
    int c[3];
    model_sampling p = model_sampling_default();
    p.temperature = 1.0f;
    p.seed = 7;
    model_sampler *s = mk(p, 3);
    draw(s, l, 3, 20000, c);
    model_sampler_destroy(s);
    assert_in_range(c[0], 9600, 10400);
    assert_in_range(c[1], 5650, 6350);
    assert_in_range(c[2], 3700, 4300);
    p.temperature = 0.5f;
    s = mk(p, 3);
    draw(s, l, 3, 20000, c);
    model_sampler_destroy(s);
    /* 0.25/0.38, 0.09/0.38, 0.04/0.38 */
    assert_in_range(c[0], 12700, 13600);
    assert_in_range(c[1], 4350, 5100);
    assert_in_range(c[2], 1800, 2400);
}

static void test_top_k(void **state) {
    (void)state;
    float l[5] = { 1.0f, 3.0f, 2.0f, 0.0f, 2.5f };
    int c[5];
    model_sampling p = model_sampling_default();
    p.temperature = 1.0f;
    p.top_k = 2;
    model_sampler *s = mk(p, 5);
    draw(s, l, 5, 5000, c);
    model_sampler_destroy(s);
    assert_int_equal(c[0] + c[2] + c[3], 0);
    /* renormalised over {1, 4}: e^0.5 : 1 */
    double r = (double)c[1] / c[4];
    assert_true(r > 1.5 && r < 1.8);
    p.top_k = 1;
    s = mk(p, 5);
    draw(s, l, 5, 200, c);
    model_sampler_destroy(s);
    assert_int_equal(c[1], 200);
}

static void test_top_p(void **state) {
    (void)state;
    float l[4] = { logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f) };
    int c[4];
    model_sampling p = model_sampling_default();
    p.temperature = 1.0f;
    p.top_p = 0.79f; /* 0.5 < 0.79 <= 0.8: keeps {0, 1} */
    model_sampler *s = mk(p, 4);
    draw(s, l, 4, 4000, c);
    model_sampler_destroy(s);
    assert_int_equal(c[2] + c[3], 0);
    assert_true(c[0] > c[1] && c[1] > 1000);
    p.top_p = 0.85f; /* keeps {0, 1, 2} */
    s = mk(p, 4);
    draw(s, l, 4, 4000, c);
    model_sampler_destroy(s);
    assert_int_equal(c[3], 0);
    assert_true(c[2] > 300);
    p.top_p = 0.3f; /* the top token alone */
    s = mk(p, 4);
    draw(s, l, 4, 300, c);
    model_sampler_destroy(s);
    assert_int_equal(c[0], 300);
}

static void test_min_p(void **state) {
    (void)state;
    float l[4] = { logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f) };
    int c[4];
    model_sampling p = model_sampling_default();
    p.temperature = 1.0f;
    p.min_p = 0.2f; /* floor 0.1: keeps {0, 1, 2} */
    model_sampler *s = mk(p, 4);
    draw(s, l, 4, 4000, c);
    model_sampler_destroy(s);
    assert_int_equal(c[3], 0);
    assert_true(c[2] > 300);
    p.min_p = 0.5f; /* floor 0.25: keeps {0, 1} */
    s = mk(p, 4);
    draw(s, l, 4, 4000, c);
    model_sampler_destroy(s);
    assert_int_equal(c[2] + c[3], 0);
    assert_true(c[1] > 1000);
}

/* A full-size vocabulary: top-p keeps exactly the nucleus computed here by sorting. */
static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static void test_top_p_large_vocab(void **state) {
    (void)state;
    const int V = 151936;
    float *l = malloc(sizeof(float) * V), *pr = malloc(sizeof(float) * V), *srt = malloc(sizeof(float) * V);
    int *c = malloc(sizeof(int) * V);
    assert_true(l && pr && srt && c);
    uint64_t x = 99;
    for (int i = 0; i < V; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        l[i] = 6.0f * (float)((double)(x >> 40) / (1 << 24)); /* a long flat tail */
    }
    double sum = 0;
    float mx = l[0];
    for (int i = 1; i < V; i++) mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < V; i++) sum += pr[i] = expf(l[i] - mx);
    for (int i = 0; i < V; i++) srt[i] = pr[i] = (float)(pr[i] / sum);
    qsort(srt, (size_t)V, sizeof(float), cmp_desc);
    double cum = 0;
    int keep = 0;
    while (cum < 0.3) cum += srt[keep++];
    const float cut = srt[keep - 1];
    model_sampling p = model_sampling_default();
    p.temperature = 1.0f;
    p.top_p = 0.3f;
    p.seed = 3;
    model_sampler *s = mk(p, V);
    draw(s, l, V, 300, c);
    model_sampler_destroy(s);
    int distinct = 0;
    for (int i = 0; i < V; i++) {
        if (!c[i]) continue;
        distinct++;
        if (pr[i] < cut) fail_msg("token %d (p=%.3g) is outside the top-p nucleus (cut %.3g)", i, pr[i], cut);
    }
    assert_true(distinct > 100); /* a real distribution, not a collapse to the top token */
    free(l);
    free(pr);
    free(srt);
    free(c);
}

static void test_seed_determinism(void **state) {
    (void)state;
    const int V = 1000;
    float *l = malloc(sizeof(float) * V), *w = malloc(sizeof(float) * V);
    assert_true(l && w);
    for (int i = 0; i < V; i++) l[i] = sinf((float)i) * 3.0f;
    model_sampling p = model_sampling_default();
    p.temperature = 0.9f;
    p.top_k = 50;
    p.top_p = 0.95f;
    p.seed = 42;
    int32_t a[100], b[100], c[100];
    for (int run = 0; run < 3; run++) {
        p.seed = run == 2 ? 43 : 42;
        model_sampler *s = mk(p, V);
        for (int i = 0; i < 100; i++) {
            memcpy(w, l, sizeof(float) * V);
            int32_t id = model_sampler_sample(s, w);
            (run == 0 ? a : run == 1 ? b : c)[i] = id;
        }
        model_sampler_destroy(s);
    }
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
    free(l);
    free(w);
}

static void test_penalties(void **state) {
    (void)state;
    model_sampling p = model_sampling_default();
    p.repetition_penalty = 1.25f;
    model_sampler *s = mk(p, 4);
    int32_t prompt[1] = { 0 };
    model_sampler_add_prompt(s, prompt, 1);
    model_sampler_accept(s, 2);
    float l[4] = { 2.0f, 1.9f, -1.0f, -1.2f };
    assert_int_equal(model_sampler_sample(s, l), 1);
    assert_float_equal(l[0], 1.6f, 1e-6f);  /* positive: divided */
    assert_float_equal(l[2], -1.25f, 1e-6f); /* negative: multiplied */
    assert_float_equal(l[3], -1.2f, 1e-6f);  /* unseen: untouched */
    model_sampler_destroy(s);

    p = model_sampling_default();
    p.presence_penalty = 0.5f;
    s = mk(p, 4);
    model_sampler_add_prompt(s, prompt, 1); /* presence applies to generated tokens only */
    model_sampler_accept(s, 1);
    model_sampler_accept(s, 1);
    float m[4] = { 1.0f, 1.2f, 0.0f, 0.0f };
    assert_int_equal(model_sampler_sample(s, m), 0);
    assert_float_equal(m[1], 0.7f, 1e-6f); /* once, however often it appeared */
    assert_float_equal(m[0], 1.0f, 0.0f);
    model_sampler_destroy(s);
}

static void test_bad_settings(void **state) {
    (void)state;
    char err[256];
    model_sampler *s = NULL;
    model_sampling p = model_sampling_default();
    p.temperature = -1.0f;
    assert_int_equal(model_sampler_create(&p, 10, &s, err, sizeof err), -1);
    assert_non_null(strstr(err, "temperature"));
    p = model_sampling_default();
    p.top_p = 0.0f;
    assert_int_equal(model_sampler_create(&p, 10, &s, err, sizeof err), -1);
    assert_non_null(strstr(err, "top_p"));
    p = model_sampling_default();
    p.min_p = 1.5f;
    assert_int_equal(model_sampler_create(&p, 10, &s, err, sizeof err), -1);
    assert_non_null(strstr(err, "min_p"));
    p = model_sampling_default();
    p.repetition_penalty = 0.0f;
    assert_int_equal(model_sampler_create(&p, 10, &s, err, sizeof err), -1);
    assert_non_null(strstr(err, "repetition_penalty"));
    assert_null(s);
}

/* ------------------------------------------------------------------------------------------ */
/* generate on the tiny checkpoint                                                            */

typedef struct gen_env {
    checkpoint *ck;
    model *m;
    tokenizer *tok;
    int32_t ids[128];
    model_pos pos[128];
    int n;
    float *logits;             /* after the text-only prompt */
} gen_env;

static gen_env G;

static int gen_setup(void **state) {
    (void)state;
    char err[512];
    if (checkpoint_open(SET_DIR "/model", &G.ck, err, sizeof err)) goto bad;
    model_options o = { .compute = MODEL_COMPUTE_F32, .num_threads = 2 };
    if (model_create(G.ck, &o, &G.m, err, sizeof err)) goto bad;
    if (tok_load(SET_DIR "/model/tokenizer.json", &G.tok, err, sizeof err)) goto bad;
    const char *prompt = "<|im_start|>user\nWrite a short poem about rivers.<|im_end|>\n<|im_start|>assistant\n";
    G.n = (int)tok_encode(G.tok, prompt, strlen(prompt), G.ids, 128);
    if (G.n <= 0) {
        snprintf(err, sizeof err, "tokenizer failed");
        goto bad;
    }
    int next = 0;
    model_pos_text(&next, G.n, G.pos);
    G.logits = malloc(sizeof(float) * (size_t)model_get_config(G.m)->text.vocab_size);
    return G.logits ? 0 : -1;
bad:
    fprintf(stderr, "%s\n", err);
    return -1;
}

static int gen_teardown(void **state) {
    (void)state;
    free(G.logits);
    tok_free(G.tok);
    model_destroy(G.m);
    checkpoint_close(G.ck);
    return 0;
}

/* A fresh cache with the prompt; *logits set; returns the cache. */
static model_kv *prefill(float *logits, int *next) {
    char err[512];
    model_kv *kv;
    assert_int_equal(model_kv_create(G.m, G.n + 64, &kv, err, sizeof err), 0);
    if (model_forward_append(G.m, kv, G.ids, G.pos, G.n, NULL, logits, err, sizeof err)) fail_msg("%s", err);
    *next = G.n;
    return kv;
}

typedef struct stream_rec {
    char text[4096];
    size_t len;
    int calls, cancel_after, last_id;
} stream_rec;

static int on_token(void *ctx, int32_t id, const char *text, size_t len) {
    stream_rec *r = ctx;
    assert_true(r->len + len < sizeof r->text);
    memcpy(r->text + r->len, text, len);
    r->len += len;
    r->text[r->len] = '\0';
    r->calls++;
    r->last_id = id;
    return r->cancel_after && r->calls >= r->cancel_after;
}

static void test_generate_stops(void **state) {
    (void)state;
    char err[512];
    const int V = model_get_config(G.m)->text.vocab_size;
    float *lg = malloc(sizeof(float) * (size_t)V);
    assert_non_null(lg);
    int32_t slots[64];
    for (int i = 0; i < 64; i++) slots[i] = G.n + i;

    /* reference run: 12 greedy tokens, streamed text equals the result and the decoded ids */
    int next;
    model_kv *kv = prefill(lg, &next);
    stream_rec rec = { .len = 0 };
    model_generate_params gp = { .sampling = model_sampling_default(), .max_tokens = 12, .on_token = on_token, .ctx = &rec };
    model_generate_result full;
    assert_int_equal(model_generate(G.m, kv, G.tok, &gp, G.ids, (size_t)G.n, lg, slots, 64, &next, &full, err, sizeof err), 0);
    assert_int_equal(full.reason, MODEL_STOP_MAX_TOKENS);
    assert_int_equal(full.n_ids, 12);
    assert_int_equal(full.n_fed, 11);
    assert_int_equal(next, G.n + 11);
    assert_int_equal(model_kv_seq_len(kv), G.n + 11);
    char *dec = tok_decode(G.tok, full.ids, 12, false);
    assert_string_equal(full.text, dec);
    assert_string_equal(rec.text, dec);
    free(dec);
    assert_true(strlen(full.text) > 8);
    model_kv_destroy(kv);

    /* stop string: a piece from the middle of that text; output cut before it */
    const size_t L = strlen(full.text);
    char stop[8];
    memcpy(stop, full.text + L / 2, 3);
    stop[3] = '\0';
    const char *cut = strstr(full.text, stop);
    assert_non_null(cut);
    const char *stops[2] = { "\x01never", stop };
    kv = prefill(lg, &next);
    memset(&rec, 0, sizeof rec);
    gp.stop_strings = stops;
    gp.n_stop_strings = 2;
    model_generate_result r;
    assert_int_equal(model_generate(G.m, kv, G.tok, &gp, G.ids, (size_t)G.n, lg, slots, 64, &next, &r, err, sizeof err), 0);
    assert_int_equal(r.reason, MODEL_STOP_STRING);
    assert_int_equal(strlen(r.text), (size_t)(cut - full.text));
    assert_memory_equal(r.text, full.text, strlen(r.text));
    assert_string_equal(rec.text, r.text); /* nothing of the stop string was streamed */
    assert_true(r.n_ids <= 12);
    assert_memory_equal(r.ids, full.ids, sizeof(int32_t) * (size_t)r.n_ids);
    model_generate_result_free(&r);
    model_kv_destroy(kv);

    /* eos: <|im_end|> forced as the most likely first token */
    kv = prefill(lg, &next);
    const int32_t im_end = tok_token_id(G.tok, "<|im_end|>");
    assert_true(im_end > 0);
    lg[im_end] = 1e4f;
    memset(&rec, 0, sizeof rec);
    gp.stop_strings = NULL;
    gp.n_stop_strings = 0;
    assert_int_equal(model_generate(G.m, kv, G.tok, &gp, G.ids, (size_t)G.n, lg, slots, 64, &next, &r, err, sizeof err), 0);
    assert_int_equal(r.reason, MODEL_STOP_EOS);
    assert_int_equal(r.n_ids, 1);
    assert_int_equal(r.ids[0], im_end);
    assert_int_equal(r.n_fed, 0);
    assert_string_equal(r.text, "");
    assert_int_equal(rec.last_id, im_end);
    model_generate_result_free(&r);
    model_kv_destroy(kv);

    /* out of slots, then cancellation */
    kv = prefill(lg, &next);
    assert_int_equal(model_generate(G.m, kv, G.tok, &gp, G.ids, (size_t)G.n, lg, slots, 2, &next, &r, err, sizeof err), 0);
    assert_int_equal(r.reason, MODEL_STOP_NO_SLOTS);
    assert_int_equal(r.n_ids, 3);
    assert_int_equal(r.n_fed, 2);
    assert_memory_equal(r.ids, full.ids, sizeof(int32_t) * 3);
    model_generate_result_free(&r);
    model_kv_destroy(kv);
    kv = prefill(lg, &next);
    memset(&rec, 0, sizeof rec);
    rec.cancel_after = 4;
    assert_int_equal(model_generate(G.m, kv, G.tok, &gp, G.ids, (size_t)G.n, lg, slots, 64, &next, &r, err, sizeof err), 0);
    assert_int_equal(r.reason, MODEL_STOP_CANCELLED);
    assert_int_equal(r.n_ids, 4);
    model_generate_result_free(&r);
    model_kv_destroy(kv);

    /* sampling with a seed is reproducible through the whole loop */
    gp.sampling.temperature = 0.8f;
    gp.sampling.top_p = 0.9f;
    gp.sampling.seed = 5;
    gp.on_token = NULL;
    model_generate_result a, b;
    kv = prefill(lg, &next);
    assert_int_equal(model_generate(G.m, kv, G.tok, &gp, G.ids, (size_t)G.n, lg, slots, 64, &next, &a, err, sizeof err), 0);
    model_kv_destroy(kv);
    kv = prefill(lg, &next);
    assert_int_equal(model_generate(G.m, kv, G.tok, &gp, G.ids, (size_t)G.n, lg, slots, 64, &next, &b, err, sizeof err), 0);
    model_kv_destroy(kv);
    assert_int_equal(a.n_ids, b.n_ids);
    assert_memory_equal(a.ids, b.ids, sizeof(int32_t) * (size_t)a.n_ids);
    assert_string_equal(a.text, b.text);
    model_generate_result_free(&a);
    model_generate_result_free(&b);

    /* bad parameters */
    gp.max_tokens = 0;
    assert_int_equal(model_generate(G.m, kv = prefill(lg, &next), G.tok, &gp, NULL, 0, lg, slots, 64, &next, &r, err, sizeof err), -1);
    assert_non_null(strstr(err, "max_tokens"));
    gp.max_tokens = 4;
    const char *empty[1] = { "" };
    gp.stop_strings = empty;
    gp.n_stop_strings = 1;
    assert_int_equal(model_generate(G.m, kv, G.tok, &gp, NULL, 0, lg, slots, 64, &next, &r, err, sizeof err), -1);
    assert_non_null(strstr(err, "stop string 0"));
    gp.n_stop_strings = 0;
    slots[0] = 1 << 20;
    assert_int_equal(model_generate(G.m, kv, G.tok, &gp, NULL, 0, lg, slots, 64, &next, &r, err, sizeof err), -1);
    assert_non_null(strstr(err, "outside"));
    model_kv_destroy(kv);
    model_generate_result_free(&full);
    free(lg);
}

int main(void) {
    const struct CMUnitTest sampler[] = {
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_temperature_distribution),
        cmocka_unit_test(test_top_k),
        cmocka_unit_test(test_top_p),
        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_top_p_large_vocab),
        cmocka_unit_test(test_seed_determinism),
        cmocka_unit_test(test_penalties),
        cmocka_unit_test(test_bad_settings),
    };
    const struct CMUnitTest gen[] = {
        cmocka_unit_test(test_generate_stops),
    };
    int rc = cmocka_run_group_tests_name("sampler", sampler, NULL, NULL);
    rc |= cmocka_run_group_tests_name("generate", gen, gen_setup, gen_teardown);
    return rc;
}
