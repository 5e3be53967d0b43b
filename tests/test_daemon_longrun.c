/* test_daemon_longrun.c — a stream runs for many times its cache cap in the real vigild (15x in
 * make test; VIGIL_LONGRUN_CAPS=N for longer: make soak runs 400x):
 * a looping file (as fast as the model takes it) into a 1024-token context with a low position
 * limit, so that the oldest pairs are evicted and the cached keys re-rotated again and again.
 * Checked along the way: the context stays under its cap, questions keep getting answered from
 * what is cached, evictions and position shifts happen, and the daemon's memory stays flat once
 * the cap is reached. Flat is judged on RssAnon (/proc/PID/status: heap, KV caches, buffers):
 * VmRSS also counts the pages of the memory-mapped checkpoint, which grow as new token ids are
 * looked up in the embedding table — clean file pages, bounded by the checkpoint's size. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tests/test_daemon_util.h"

#define MAX_SAMPLES 200000
static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return x < y ? -1 : x > y;
}

/* Median RSS of the samples taken while pairs were in [lo, hi). */
static long median_rss(const double *pairs, const long *rss, int n, double lo, double hi) {
    static long v[MAX_SAMPLES];
    int k = 0;
    for (int i = 0; i < n && k < MAX_SAMPLES; i++)
        if (pairs[i] >= lo && pairs[i] < hi) v[k++] = rss[i];
    if (k == 0) return -1;
    qsort(v, (size_t)k, sizeof v[0], cmp_long);
    return v[k / 2];
}

static double s_pairs[MAX_SAMPLES];
static long s_rss[MAX_SAMPLES];

static void test_long_run_flat_memory(void **state) {
    (void)state;
    char dir[256], clip[512];
    assert_int_equal(media_tmpdir(dir, sizeof dir), 0);
    snprintf(clip, sizeof clip, "%s/clip.mp4", dir);
    assert_int_equal(td_make_clip(clip, 128, 128, 4, 8), 0);
    char extra[2048];
    snprintf(extra, sizeof extra,
             "\"sources\": {\"allowed_protocols\": \"file\"},\n"
             " \"limits\": {\"max_tokens\": 64, \"default_max_tokens\": 16},\n"
             " \"memory\": {\"query_reserve_tokens\": 256, \"position_limit\": 1000},\n"
             " \"streams\": [{\"stream\": \"loop\", \"url\": \"%s\", \"cache_tokens\": 1024,"
             " \"tokens_per_pair\": {\"min\": 4, \"max\": 16}, \"options\": {\"loop\": true}}]", clip);
    /* ASan keeps freed memory in quarantine (256 MiB by default), which would read as growth */
    char asan[1024];
    const char *prev = getenv("ASAN_OPTIONS");
    snprintf(asan, sizeof asan, "ASAN_OPTIONS=%s%squarantine_size_mb=4", prev ? prev : "", prev && *prev ? ":" : "");
    const char *env[] = { asan, NULL };
    td t;
    assert_int_equal(td_start(&t, NULL, extra, NULL, env), 0);

    /* A pair is "<t seconds>" (6-8 tokens) + 2 + 16 visual tokens: about 40 pairs fill the cap.
     * Memory is compared between 5x and 15x the cap: before that the process is still warming up
     * (allocator arenas, kernels for new batch shapes as the timestamps gain a digit at 100 s). */
    int caps = getenv("VIGIL_LONGRUN_CAPS") ? atoi(getenv("VIGIL_LONGRUN_CAPS")) : 15;
    if (caps < 15) caps = 15;
    const int cap = 1024, per_cap = 40, ref_at = 5 * per_cap, total = caps * per_cap;
    long rss_max = -1;
    int n_samples = 0;
    int queries = 0, last_q = 0;
    double pairs = 0;
    int64_t deadline = media_now_ms() + 600000 + (int64_t)caps * 4000;   /* the runner's limit decides */
    while (pairs < total && media_now_ms() < deadline && td_alive(&t)) {
        cJSON *root;
        cJSON *s = td_stream_status(&t, "loop", &root);
        assert_non_null(s);
        pairs = td_num(s, "pairs_encoded");
        double used = td_num(s, "cache_tokens_used");
        if (used > cap) fail_msg("context holds %.0f tokens, over its cap of %d", used, cap);
        cJSON_Delete(root);
        long rss = td_proc_kb(t.pid, "RssAnon:");
        if (getenv("TD_TRACE_RSS")) printf("pairs %.0f anon %ld vmrss %ld\n", pairs, rss, td_rss_kb(t.pid));
        if (pairs >= ref_at && n_samples < MAX_SAMPLES) {
            s_pairs[n_samples] = pairs;
            s_rss[n_samples++] = rss;
            if (rss > rss_max) rss_max = rss;
        }
        /* every ~40 pairs a question on whatever the context holds now */
        if (pairs - last_q >= per_cap) {
            last_q = (int)pairs;
            cJSON *r = td_call(&t, "{\"id\":\"q\",\"op\":\"query\",\"stream\":\"loop\",\"prompt\":\"What now?\","
                                   "\"max_tokens\":8,\"stream_tokens\":false}", 60000);
            if (!td_ok(r)) {
                char *txt = r ? cJSON_PrintUnformatted(r) : NULL;
                td_dump_log(&t);
                fail_msg("question after %.0f pairs: %s", pairs, txt ? txt : "no reply");
            }
            cJSON *u = cJSON_GetObjectItemCaseSensitive(r, "usage");
            assert_true(td_num(u, "cached_tokens") <= cap);
            assert_true(td_num(u, "cached_tokens") > 16);
            cJSON_Delete(r);
            queries++;
        }
        media_sleep_ms(50);
    }
    if (pairs < total) {
        td_dump_log(&t);
        fail_msg("only %.0f pairs ingested in time (wanted %d)", pairs, total);
    }
    cJSON *root;
    cJSON *s = td_stream_status(&t, "loop", &root);
    double evicted = td_num(s, "pairs_evicted"), shifts = td_num(s, "position_shifts");
    double encoded = td_num(s, "pairs_encoded");
    cJSON_Delete(root);
    /* Memory in the first and the second half of the run after 5x the cap: medians, since
     * every pair and question briefly needs a few MiB of working buffers, and the allocator's
     * arenas breathe by a few MiB over thousands of pairs without a trend. */
    const int mid = (ref_at + total) / 2;
    long rss_ref = median_rss(s_pairs, s_rss, n_samples, ref_at, mid);
    long rss_end = median_rss(s_pairs, s_rss, n_samples, mid, 1e9);
    printf("%.0f pairs (%.1fx the cap), %.0f evicted, %.0f position shifts, %d questions; RssAnon (median) over "
           "%d-%dx the cap %ld KiB, over %d-%dx %ld KiB; highest sample %ld KiB; VmRSS at the end %ld KiB\n", encoded,
           encoded / per_cap, evicted, shifts, queries, ref_at / per_cap, mid / per_cap, rss_ref, mid / per_cap,
           total / per_cap, rss_end, rss_max, td_rss_kb(t.pid));
    assert_true(encoded >= total);
    assert_true(evicted >= encoded - per_cap - 2);
    assert_true(shifts >= 1);
    assert_true(queries >= 5);
    assert_true(rss_ref > 0 && rss_end > 0);
    /* flat: the second half may not sit 3 MiB above the first (a leak of 1 KiB per pair shows
     * over 6000 pairs: make soak); transients stay bounded.
     * Under ASan the sanitizer's allocator (quarantine, redzones, shadow) owns the heap, so
     * RssAnon measures it rather than the daemon: there the run checks the rest (no crash,
     * leak or error over 15 caps) and the memory bound is the normal build's to check. */
#if defined(__SANITIZE_ADDRESS__)
    const bool measure_memory = false;
#else
    const bool measure_memory = true;
#endif
    if (measure_memory && rss_end > rss_ref + 3072)
        fail_msg("anonymous memory grew from %ld KiB to %ld KiB (medians of the two halves of %d pairs after 5x the cap)",
                 rss_ref, rss_end, total - ref_at);
    if (measure_memory && rss_max > rss_ref + 16384) fail_msg("an anonymous memory peak of %ld KiB (median %ld KiB)", rss_max, rss_ref);
    assert_int_equal(td_stop(&t), 0);
    td_cleanup(&t);
    media_rmtree(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_long_run_flat_memory),
    };
    return cmocka_run_group_tests_name("daemon_longrun", tests, NULL, NULL);
}
