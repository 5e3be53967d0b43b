/* test_safetensors — the safetensors reader and writer: round trips (single file, sharded,
 * F32/F16/BF16 and other dtypes, multi-chunk streaming), the exact header layout upstream
 * writes, dtype conversions, and every malformed-file case, each of which must produce an
 * error naming the file (and the tensor) rather than a crash. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <ftw.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/safetensors.h"
#include "tests/support/npy.h"

static char tmp_root[] = "/tmp/vigil-test-st-XXXXXX";

static void tpath(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmp_root, name);
}

/* Writes a safetensors file by hand: 8-byte length, the header text (space-padded to a
 * multiple of 8 when pad is set, as real files are), data bytes. */
static void write_raw_pad(const char *path, const char *header, bool pad, const void *data,
                          size_t data_len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    char padded[4096];
    snprintf(padded, sizeof padded, "%s", header);
    while (pad && strlen(padded) % 8)
        strcat(padded, " ");
    header = padded;
    uint64_t n = strlen(header);
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)(n >> (8 * i));
    assert_int_equal(fwrite(len8, 1, 8, f), 8);
    assert_int_equal(fwrite(header, 1, n, f), n);
    if (data_len)
        assert_int_equal(fwrite(data, 1, data_len, f), data_len);
    fclose(f);
}

static void write_raw(const char *path, const char *header, const void *data, size_t data_len)
{
    write_raw_pad(path, header, true, data, data_len);
}

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(*len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, *len, f), *len);
    fclose(f);
    return buf;
}

static void write_all(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* Opening must fail with a message holding every given substring. */
static void expect_open_error(int (*open_fn)(const char *, st_archive **, char *, size_t),
                              const char *path, ...)
{
    st_archive *a = (st_archive *)0x1;
    char err[1024] = "";
    int rc = open_fn(path, &a, err, sizeof err);
    if (rc == 0) {
        st_archive_close(a);
        fail_msg("%s: expected an error, it opened", path);
    }
    assert_null(a);
    va_list ap;
    va_start(ap, path);
    for (const char *s = va_arg(ap, const char *); s; s = va_arg(ap, const char *))
        if (!strstr(err, s))
            fail_msg("error '%s' lacks '%s'", err, s);
    va_end(ap);
}

/* ------------------------------------------------------------------------------------------ */

static void test_dtype_conversions(void **state)
{
    (void)state;
    assert_int_equal(st_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(st_f32_to_bf16(-2.0f), 0xc000);
    /* 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even (1.0) */
    assert_int_equal(st_f32_to_bf16(1.00390625f), 0x3f80);
    /* 1 + 3*2^-8 is halfway between 1.0078125 (odd) and 1.015625: rounds up to even */
    assert_int_equal(st_f32_to_bf16(1.01171875f), 0x3f82);
    assert_true(isnan(st_bf16_to_f32(st_f32_to_bf16(NAN))));
    assert_int_equal(st_f32_to_bf16(INFINITY), 0x7f80);
    assert_true(st_bf16_to_f32(0x3f80) == 1.0f);
    assert_true(st_bf16_to_f32(0xc0a0) == -5.0f);

    assert_int_equal(st_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(st_f32_to_f16(-2.5f), 0xc100);
    assert_int_equal(st_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(st_f32_to_f16(65520.0f), 0x7c00);     /* rounds to infinity */
    assert_int_equal(st_f32_to_f16(0x1.0p-24f), 0x0001);   /* smallest subnormal */
    assert_int_equal(st_f32_to_f16(0x1.0p-26f), 0x0000);   /* below half of it */
    assert_int_equal(st_f32_to_f16(0x1.8p-24f), 0x0002);   /* 1.5 ulp: tie to even (2) */
    assert_int_equal(st_f32_to_f16(0x1.0p-14f), 0x0400);   /* smallest normal */
    assert_true(isnan(st_f16_to_f32(st_f32_to_f16(NAN))));
    assert_true(st_f16_to_f32(0x0001) == 0x1.0p-24f);
    assert_true(st_f16_to_f32(0x03ff) == 0x1.ff8p-15f);
    assert_true(st_f16_to_f32(0xfbff) == -65504.0f);
    assert_true(isinf(st_f16_to_f32(0x7c00)));
    /* every finite f16 survives f16 -> f32 -> f16 */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00)
            continue;
        assert_int_equal(st_f32_to_f16(st_f16_to_f32((uint16_t)h)), h);
    }
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7f80) == 0x7f80)
            continue;
        assert_int_equal(st_f32_to_bf16(st_bf16_to_f32((uint16_t)h)), h);
    }
    st_dtype d;
    assert_int_equal(st_dtype_parse("BF16", &d), 0);
    assert_int_equal(d, ST_BF16);
    assert_int_equal(st_dtype_parse("F8_E4M3", &d), 0);
    assert_int_equal(st_dtype_size(d), 1);
    assert_int_equal(st_dtype_parse("bf16", &d), -1);
    assert_string_equal(st_dtype_name(ST_I64), "I64");
    assert_string_equal(st_dtype_name((st_dtype)99), "?");
    assert_int_equal(st_dtype_size((st_dtype)99), 0);
}

/* ------------------------------------------------------------------------------------------ */

typedef struct fill_log {
    st_dtype dtype;
    size_t next_offset;
    int calls;
    int bad;
} fill_log;

static float pattern(size_t i)
{
    /* at most 7 significant bits: exact in bf16 and f16 */
    return (float)((int)(i % 61) - 30) * 0.25f;
}

/* Writes pattern(i) for each element, checking the writer's chunking contract. */
static void fill_pattern(void *ctx, void *dst, size_t offset, size_t nbytes)
{
    fill_log *l = ctx;
    size_t esz = st_dtype_size(l->dtype);
    if (offset != l->next_offset || offset % esz || nbytes % esz)
        l->bad++;
    l->next_offset = offset + nbytes;
    l->calls++;
    uint8_t *d = dst;
    for (size_t k = 0; k < nbytes / esz; k++) {
        float v = pattern(offset / esz + k);
        if (l->dtype == ST_F32) {
            memcpy(d + k * 4, &v, 4);
        } else {
            uint16_t h = l->dtype == ST_BF16 ? st_f32_to_bf16(v) : st_f32_to_f16(v);
            memcpy(d + k * 2, &h, 2);
        }
    }
}

static void test_round_trip(void **state)
{
    (void)state;
    char path[512];
    tpath(path, sizeof path, "rt.safetensors");
    st_writer *w = st_writer_create();
    assert_non_null(w);
    fill_log lf32 = { ST_F32, 0, 0, 0 }, lbf = { ST_BF16, 0, 0, 0 }, lf16 = { ST_F16, 0, 0, 0 };
    int64_t big[2] = { 2500, 2000 };       /* 20 MB of F32: more than one 16 MiB write buffer */
    int64_t odd[1] = { 7 }, mat[2] = { 3, 5 };
    static const int64_t ids[4] = { -1, 0, 1, INT64_MAX };
    static const uint8_t bytes[3] = { 1, 2, 255 };
    int64_t n4 = 4, n3 = 3;
    assert_int_equal(st_writer_add(w, "b.big", ST_F32, 2, big, fill_pattern, &lf32), 0);
    assert_int_equal(st_writer_add(w, "a.bf16", ST_BF16, 1, odd, fill_pattern, &lbf), 0);
    assert_int_equal(st_writer_add(w, "c.f16", ST_F16, 2, mat, fill_pattern, &lf16), 0);
    assert_int_equal(st_writer_add(w, "d.ids", ST_I64, 1, &n4, NULL, (void *)ids), 0);
    assert_int_equal(st_writer_add(w, "e.u8", ST_U8, 1, &n3, NULL, (void *)bytes), 0);
    assert_int_equal(st_writer_add(w, "f.scalar", ST_F32, 0, NULL, fill_pattern,
                                   &(fill_log){ ST_F32, 0, 0, 0 }), 0);
    assert_int_equal(st_writer_total_bytes(w), 20000000u + 14 + 30 + 32 + 3 + 4);
    char err[1024] = "";
    if (st_writer_save(w, path, err, sizeof err) != 0)
        fail_msg("%s", err);
    st_writer_destroy(w);
    assert_int_equal(lf32.bad + lbf.bad + lf16.bad, 0);
    assert_true(lf32.calls >= 2);
    assert_int_equal(lf32.next_offset, 20000000u);
    char partial[600];
    snprintf(partial, sizeof partial, "%s.partial", path);
    assert_int_not_equal(access(partial, F_OK), 0);

    st_archive *a;
    if (st_archive_open_file(path, &a, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(st_archive_count(a), 6);
    assert_int_equal(st_archive_file_count(a), 1);
    /* iteration is in name order */
    for (size_t i = 1; i < st_archive_count(a); i++)
        assert_true(strcmp(st_archive_at(a, i - 1)->name, st_archive_at(a, i)->name) < 0);
    assert_null(st_archive_at(a, 6));
    assert_null(st_archive_find(a, "nope"));

    const st_tensor *t = st_archive_find(a, "b.big");
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_F32);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 2500);
    assert_int_equal(t->shape[1], 2000);
    assert_int_equal(t->nbytes, 20000000u);
    assert_string_equal(t->file, path);
    assert_int_equal(st_tensor_numel(t), 5000000u);
    const float *fp = t->data;
    for (size_t i = 0; i < 5000000u; i += 9973)
        assert_true(fp[i] == pattern(i));
    assert_true(fp[4999999] == pattern(4999999));

    float buf[15];
    t = st_archive_find(a, "a.bf16");
    assert_int_equal(t->dtype, ST_BF16);
    assert_int_equal(st_tensor_read_f32(t, 0, 7, buf), 0);
    for (int i = 0; i < 7; i++)
        assert_true(buf[i] == pattern((size_t)i));      /* multiples of 1/8: exact in bf16 */
    assert_int_equal(st_tensor_read_f32(t, 5, 3, buf), -1);   /* beyond the tensor */
    assert_int_equal(st_tensor_read_f32(t, 8, 0, buf), -1);
    t = st_archive_find(a, "c.f16");
    assert_int_equal(t->dtype, ST_F16);
    assert_int_equal(st_tensor_read_f32(t, 2, 13, buf), 0);
    for (int i = 0; i < 13; i++)
        assert_true(buf[i] == pattern((size_t)i + 2));
    t = st_archive_find(a, "d.ids");
    assert_int_equal(t->dtype, ST_I64);
    assert_memory_equal(t->data, ids, sizeof ids);
    assert_int_equal(st_tensor_read_f32(t, 0, 1, buf), -1);    /* not a float dtype */
    t = st_archive_find(a, "e.u8");
    assert_memory_equal(t->data, bytes, 3);
    t = st_archive_find(a, "f.scalar");
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->nbytes, 4);
    assert_int_equal(st_tensor_numel(t), 1);
    /* every tensor aligned to its element size */
    for (size_t i = 0; i < st_archive_count(a); i++) {
        t = st_archive_at(a, i);
        assert_int_equal((uintptr_t)t->data % st_dtype_size(t->dtype), 0);
    }
    st_archive_close(a);

    /* The layout upstream writes: header padded with spaces to 8, __metadata__ first, wider
     * dtypes first (I64, F32, then BF16, F16, then U8), names ascending within a dtype. */
    size_t len;
    uint8_t *raw = read_all(path, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | raw[i];
    assert_int_equal(hlen % 8, 0);
    char *hdr = strndup((const char *)raw + 8, hlen);
    assert_true(strncmp(hdr, "{\"__metadata__\":{\"format\":\"pt\"},\"d.ids\":", 40) == 0);
    const char *order[] = { "\"d.ids\"", "\"b.big\"", "\"f.scalar\"", "\"a.bf16\"", "\"c.f16\"",
                            "\"e.u8\"" };
    for (int i = 1; i < 6; i++)
        assert_true(strstr(hdr, order[i - 1]) < strstr(hdr, order[i]));
    assert_non_null(strstr(hdr, "\"d.ids\":{\"dtype\":\"I64\",\"shape\":[4],\"data_offsets\":[0,32]}"));
    assert_non_null(strstr(hdr, "\"f.scalar\":{\"dtype\":\"F32\",\"shape\":[],"));
    assert_int_equal(len, 8 + hlen + 20000083u);
    free(hdr);
    free(raw);
}

static void test_writer_errors(void **state)
{
    (void)state;
    char path[512], err[1024] = "";
    tpath(path, sizeof path, "werr.safetensors");
    static const float data[4] = { 0 };
    int64_t s2[1] = { 2 }, neg[1] = { -3 };
    st_writer *w = st_writer_create();
    assert_int_equal(st_writer_add(w, "x", ST_F32, 1, s2, NULL, (void *)data), 0);
    assert_int_equal(st_writer_add(w, "x", ST_F32, 1, s2, NULL, (void *)data), -1);
    assert_int_equal(st_writer_add(w, "y", ST_F32, 1, neg, NULL, (void *)data), -1);
    assert_int_equal(st_writer_add(w, "", ST_F32, 1, s2, NULL, (void *)data), -1);
    assert_int_equal(st_writer_add(w, "z", (st_dtype)77, 1, s2, NULL, (void *)data), -1);
    assert_int_equal(st_writer_add(w, "z", ST_F32, 9, s2, NULL, (void *)data), -1);
    assert_int_equal(st_writer_add(w, "z", ST_F32, 1, s2, NULL, NULL), -1);
    assert_int_equal(st_writer_save(w, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "tensor 'x' added twice"));     /* the first failure */
    assert_non_null(strstr(err, path));
    assert_int_not_equal(access(path, F_OK), 0);
    st_writer_destroy(w);

    w = st_writer_create();
    assert_int_equal(st_writer_add(w, "x", ST_F32, 1, s2, NULL, (void *)data), 0);
    snprintf(path, sizeof path, "%s/no/such/dir/x.safetensors", tmp_root);
    assert_int_equal(st_writer_save(w, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot create"));
    st_writer_destroy(w);
    st_writer_destroy(NULL);
}

static void test_sharded(void **state)
{
    (void)state;
    char dir[512], err[1024] = "";
    tpath(dir, sizeof dir, "sharded");
    assert_int_equal(mkdir(dir, 0755), 0);
    st_writer *w = st_writer_create();
    /* 6 tensors of 400 bytes and one of 2000 (larger than a shard) with a 1000-byte cap:
     * t0 t1 | t2 t3 | t4 t5 | zbig -> 4 shards */
    static float vals[7][500];
    char names[7][32];
    for (int i = 0; i < 7; i++) {
        for (int k = 0; k < 500; k++)
            vals[i][k] = (float)(i * 1000 + k);
        snprintf(names[i], sizeof names[i], i < 6 ? "t%d.weight" : "zbig", i);
        int64_t shape[1] = { i < 6 ? 100 : 500 };
        assert_int_equal(st_writer_add(w, names[i], ST_F32, 1, shape, NULL, vals[i]), 0);
    }
    if (st_writer_save_sharded(w, dir, 1000, err, sizeof err) != 0)
        fail_msg("%s", err);
    st_writer_destroy(w);

    char path[600];
    for (int s = 1; s <= 4; s++) {
        snprintf(path, sizeof path, "%s/model-%05d-of-00004.safetensors", dir, s);
        assert_int_equal(access(path, F_OK), 0);
    }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    size_t len;
    char *idx = (char *)read_all(path, &len);
    idx[len] = '\0';
    cJSON *j = cJSON_Parse(idx);
    assert_non_null(j);
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "metadata"), "total_size")
                         ->valuedouble, 6 * 400 + 2000);
    cJSON *wm = cJSON_GetObjectItem(j, "weight_map");
    assert_int_equal(cJSON_GetArraySize(wm), 7);
    assert_string_equal(cJSON_GetObjectItem(wm, "t0.weight")->valuestring,
                        "model-00001-of-00004.safetensors");
    assert_string_equal(cJSON_GetObjectItem(wm, "t3.weight")->valuestring,
                        "model-00002-of-00004.safetensors");
    assert_string_equal(cJSON_GetObjectItem(wm, "zbig")->valuestring,
                        "model-00004-of-00004.safetensors");
    cJSON_Delete(j);
    /* upstream's formatting: indent 2, sorted keys, trailing newline */
    const char *want = "{\n  \"metadata\": {\n    \"total_size\": 4400\n  },\n  \"weight_map\": "
                       "{\n    \"t0.weight\": \"model-00001-of-00004.safetensors\",\n";
    if (strncmp(idx, want, strlen(want)) != 0)
        fail_msg("index starts: %.130s", idx);
    assert_true(idx[len - 1] == '\n');
    free(idx);

    st_archive *a;
    if (st_archive_open_dir(dir, &a, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(st_archive_count(a), 7);
    assert_int_equal(st_archive_file_count(a), 4);
    for (int i = 0; i < 7; i++) {
        const st_tensor *t = st_archive_find(a, names[i]);
        assert_non_null(t);
        assert_memory_equal(t->data, vals[i], t->nbytes);
        assert_non_null(strstr(t->file, i < 2 ? "model-00001" : i < 4 ? "model-00002"
                                         : i < 6 ? "model-00003" : "model-00004"));
    }
    st_archive_close(a);

    /* a single model.safetensors in the same folder is ignored when an index exists */
    char single[600];
    snprintf(single, sizeof single, "%s/model.safetensors", dir);
    write_raw(single, "{}      ", NULL, 0);
    assert_int_equal(st_archive_open_dir(dir, &a, err, sizeof err), 0);
    assert_int_equal(st_archive_count(a), 7);
    st_archive_close(a);
}

/* ------------------------------------------------------------------------------------------ */
/* Malformed single files                                                                     */

static void test_bad_files(void **state)
{
    (void)state;
    char p[512];
    uint8_t zeros[64] = { 0 };
#define OPEN_ERR(...) expect_open_error(st_archive_open_file, p, p, __VA_ARGS__, NULL)

    tpath(p, sizeof p, "short.safetensors");
    write_all(p, "\x10\x00\x00", 3);
    OPEN_ERR("truncated file: 3 bytes", "8-byte header length");

    tpath(p, sizeof p, "empty.safetensors");
    write_all(p, "", 0);
    OPEN_ERR("truncated file: 0 bytes");

    tpath(p, sizeof p, "hlen.safetensors");
    write_all(p, "\xff\x00\x00\x00\x00\x00\x00\x00{}", 10);
    OPEN_ERR("header length 255 is beyond the end of the file (2 bytes");

    tpath(p, sizeof p, "hlen_huge.safetensors");
    write_all(p, "\xff\xff\xff\xff\xff\xff\xff\xff{}", 10);
    OPEN_ERR("header length 18446744073709551615 is beyond the end of the file");

    tpath(p, sizeof p, "badjson.safetensors");
    write_raw(p, "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]  ", zeros, 4);
    OPEN_ERR("header is not valid JSON");

    tpath(p, sizeof p, "notobj.safetensors");
    write_raw(p, "[1, 2, 3]", NULL, 0);
    OPEN_ERR("header is not a JSON object");

    tpath(p, sizeof p, "trailing.safetensors");
    write_raw(p, "{} garbage", NULL, 0);
    OPEN_ERR("trailing bytes after the JSON object");

    tpath(p, sizeof p, "entry.safetensors");
    write_raw(p, "{\"w\": 5}", NULL, 0);
    OPEN_ERR("tensor 'w': expected an object with dtype, shape and data_offsets");

    tpath(p, sizeof p, "nodtype.safetensors");
    write_raw(p, "{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", zeros, 4);
    OPEN_ERR("tensor 'w': missing \"dtype\"");

    tpath(p, sizeof p, "dtype.safetensors");
    write_raw(p, "{\"w\": {\"dtype\": \"Q4_K\", \"shape\": [1], \"data_offsets\": [0, 4]}}", zeros, 4);
    OPEN_ERR("tensor 'w': unknown dtype 'Q4_K'");

    tpath(p, sizeof p, "shape.safetensors");
    write_raw(p, "{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", zeros, 4);
    OPEN_ERR("tensor 'w': shape must be an array of non-negative integers");

    tpath(p, sizeof p, "shape2.safetensors");
    write_raw(p, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", zeros, 4);
    OPEN_ERR("shape must be an array of non-negative integers");

    tpath(p, sizeof p, "dims.safetensors");
    write_raw(p, "{\"w\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 1]}}",
              zeros, 1);
    OPEN_ERR("tensor 'w': 9 dimensions (at most 8");

    tpath(p, sizeof p, "offsets.safetensors");
    write_raw(p, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}}", zeros, 8);
    OPEN_ERR("tensor 'w': data_offsets must be [begin, end]");

    tpath(p, sizeof p, "offsets3.safetensors");
    write_raw(p, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", zeros, 8);
    OPEN_ERR("tensor 'w': data_offsets must be [begin, end]");

    tpath(p, sizeof p, "size.safetensors");
    write_raw(p, "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 12]}}", zeros, 16);
    OPEN_ERR("tensor 'w': data size 12 bytes does not match dtype F32 x shape [2, 2] = 16 bytes");

    tpath(p, sizeof p, "overflow.safetensors");
    write_raw(p, "{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], \"data_offsets\": [0, 16]}}",
              zeros, 16);
    OPEN_ERR("tensor 'w': data size 16 bytes does not match", "more than");

    tpath(p, sizeof p, "range.safetensors");
    write_raw(p, "{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [8, 24]}}", zeros, 16);
    OPEN_ERR("tensor 'w': data_offsets [8, 24] go beyond the data section (16 bytes");

    tpath(p, sizeof p, "overlap.safetensors");
    write_raw(p, "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                 " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}    ", zeros, 16);
    OPEN_ERR("tensors 'a' (bytes 0-8) and 'b' (bytes 4-12) overlap");

    tpath(p, sizeof p, "dup.safetensors");
    write_raw(p, "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
                 " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", zeros, 8);
    OPEN_ERR("tensor 'a' appears twice");

    tpath(p, sizeof p, "misaligned.safetensors");
    /* an unpadded header of odd length puts the F32 data at an odd file offset */
    char mis[128] = "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}";
    if (strlen(mis) % 2 == 0)
        strcat(mis, " ");
    write_raw_pad(p, mis, false, zeros, 4);
    OPEN_ERR("tensor 'w': data offset 0 leaves it misaligned for 4-byte F32 elements");

    tpath(p, sizeof p, "meta.safetensors");
    write_raw(p, "{\"__metadata__\": 7}     ", NULL, 0);
    OPEN_ERR("__metadata__ must be an object");

    /* A valid file whose data is cut short, as an interrupted download leaves it. */
    tpath(p, sizeof p, "cut.safetensors");
    st_writer *w = st_writer_create();
    static const float v[64] = { 1 };
    int64_t s64[1] = { 64 }, s8[1] = { 8 };
    st_writer_add(w, "first", ST_F32, 1, s8, NULL, (void *)v);
    st_writer_add(w, "second", ST_F32, 1, s64, NULL, (void *)v);
    char err[1024];
    assert_int_equal(st_writer_save(w, p, err, sizeof err), 0);
    st_writer_destroy(w);
    size_t len;
    uint8_t *raw = read_all(p, &len);
    write_all(p, raw, len - 10);
    OPEN_ERR("tensor 'second': data_offsets [32, 288] go beyond the data section (278 bytes",
             "truncated");
    free(raw);

    tpath(p, sizeof p, "does-not-exist.safetensors");
    OPEN_ERR("cannot open", "No such file");
    tpath(p, sizeof p, "");
    OPEN_ERR("not a regular file");
#undef OPEN_ERR
}

/* Random corruption of a valid file's header and length must never crash. */
static void test_corruption_never_crashes(void **state)
{
    (void)state;
    char p[512], err[1024];
    tpath(p, sizeof p, "fuzz.safetensors");
    st_writer *w = st_writer_create();
    static const uint16_t v[256] = { 0x3f80 };
    int64_t s[2] = { 16, 16 }, s1[1] = { 3 };
    st_writer_add(w, "model.a.weight", ST_BF16, 2, s, NULL, (void *)v);
    st_writer_add(w, "model.b.bias", ST_F32, 1, s1, NULL, (void *)v);
    assert_int_equal(st_writer_save(w, p, err, sizeof err), 0);
    st_writer_destroy(w);
    size_t len;
    uint8_t *orig = read_all(p, &len);
    uint8_t *buf = malloc(len);
    uint64_t rng = 0x1234567;
    int opened = 0, failed = 0;
    for (int iter = 0; iter < 400; iter++) {
        memcpy(buf, orig, len);
        size_t n = len;
        int flips = 1 + iter % 4;
        for (int k = 0; k < flips; k++) {
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            size_t pos = (size_t)(rng >> 33) % (iter % 3 == 0 ? 8 : (len < 200 ? len : 200));
            buf[pos] = (uint8_t)(rng >> 20);
        }
        if (iter % 5 == 0) {
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            n = (size_t)(rng >> 33) % len;
        }
        write_all(p, buf, n);
        st_archive *a;
        if (st_archive_open_file(p, &a, err, sizeof err) == 0) {
            /* whatever opened must be self-consistent */
            for (size_t i = 0; i < st_archive_count(a); i++) {
                const st_tensor *t = st_archive_at(a, i);
                assert_int_equal(t->nbytes, st_tensor_numel(t) * st_dtype_size(t->dtype));
                volatile uint8_t sink = 0;
                for (size_t b = 0; b < t->nbytes; b++)
                    sink ^= ((const uint8_t *)t->data)[b];
                (void)sink;
            }
            st_archive_close(a);
            opened++;
        } else {
            assert_non_null(strstr(err, p));
            failed++;
        }
    }
    assert_true(failed > 100);
    assert_true(opened > 10);
    free(buf);
    free(orig);
}

/* ------------------------------------------------------------------------------------------ */
/* Malformed folders and indexes                                                              */

static void make_shard(const char *dir, const char *name, const char *tensor)
{
    char path[600], err[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    st_writer *w = st_writer_create();
    static const float v[4] = { 1, 2, 3, 4 };
    int64_t s[1] = { 4 };
    st_writer_add(w, tensor, ST_F32, 1, s, NULL, (void *)v);
    assert_int_equal(st_writer_save(w, path, err, sizeof err), 0);
    st_writer_destroy(w);
}

static void index_case(const char *name, const char *index_json, const char *err1,
                       const char *err2)
{
    char dir[512], path[600];
    tpath(dir, sizeof dir, name);
    assert_int_equal(mkdir(dir, 0755), 0);
    make_shard(dir, "model-00001-of-00002.safetensors", "a.weight");
    make_shard(dir, "model-00002-of-00002.safetensors", "b.weight");
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    write_all(path, index_json, strlen(index_json));
    if (!err1) {
        st_archive *a;
        char err[1024];
        if (st_archive_open_dir(dir, &a, err, sizeof err) != 0)
            fail_msg("%s", err);
        assert_int_equal(st_archive_count(a), 2);
        st_archive_close(a);
        return;
    }
    expect_open_error(st_archive_open_dir, dir, path, err1, err2, NULL);
}

static void test_bad_index(void **state)
{
    (void)state;
    index_case("idx_ok", "{\"weight_map\": {\"a.weight\": \"model-00001-of-00002.safetensors\","
                         " \"b.weight\": \"model-00002-of-00002.safetensors\"}}", NULL, NULL);
    index_case("idx_missing_shard",
               "{\"weight_map\": {\"a.weight\": \"model-00001-of-00002.safetensors\","
               " \"c.weight\": \"model-00003-of-00003.safetensors\"}}",
               "shard 'model-00003-of-00003.safetensors' (named for tensor 'c.weight') is missing",
               "No such file");
    index_case("idx_wrong_shard",
               "{\"weight_map\": {\"a.weight\": \"model-00002-of-00002.safetensors\"}}",
               "tensor 'a.weight' is listed in shard 'model-00002-of-00002.safetensors'",
               "has no such tensor");
    index_case("idx_json", "{\"weight_map\": {", "not a valid JSON object", "");
    index_case("idx_no_map", "{\"metadata\": {\"total_size\": 32}}", "expected a \"weight_map\"",
               "");
    index_case("idx_empty", "{\"weight_map\": {}}", "\"weight_map\" is empty", "");
    index_case("idx_type", "{\"weight_map\": {\"a.weight\": 3}}",
               "weight_map entry 'a.weight': expected a shard file name", "");
    index_case("idx_escape", "{\"weight_map\": {\"a.weight\": \"../x/model.safetensors\"}}",
               "must be a plain file name inside the checkpoint folder", "");
    index_case("idx_dotdot", "{\"weight_map\": {\"a.weight\": \"..\"}}",
               "must be a plain file name", "");

    /* a shard that is itself broken: the message names the shard file */
    char dir[512], path[600];
    tpath(dir, sizeof dir, "idx_bad_shard");
    assert_int_equal(mkdir(dir, 0755), 0);
    make_shard(dir, "model-00001-of-00002.safetensors", "a.weight");
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    write_all(path, "\x05\x00\x00\x00\x00\x00\x00\x00{", 9);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    const char *idx = "{\"weight_map\": {\"a.weight\": \"model-00001-of-00002.safetensors\","
                      " \"b.weight\": \"model-00002-of-00002.safetensors\"}}";
    write_all(path, idx, strlen(idx));
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    expect_open_error(st_archive_open_dir, dir, path, "header length 5 is beyond the end", NULL);

    /* folder without weights */
    tpath(dir, sizeof dir, "no_weights");
    assert_int_equal(mkdir(dir, 0755), 0);
    expect_open_error(st_archive_open_dir, dir, dir,
                      "no model.safetensors or model.safetensors.index.json", NULL);
    tpath(dir, sizeof dir, "not_there");
    expect_open_error(st_archive_open_dir, dir, dir, "cannot open checkpoint folder", NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* tests/support/npy: the .npy reader the golden comparisons use                              */

static void write_npy(const char *path, int version, const char *dict, const void *data,
                      size_t len)
{
    /* header padded with spaces and a newline so data starts on a 64-byte boundary */
    size_t pre = version == 1 ? 10 : 12;
    char hdr[256];
    snprintf(hdr, sizeof hdr, "%s", dict);
    while ((pre + strlen(hdr) + 1) % 64)
        strcat(hdr, " ");
    strcat(hdr, "\n");
    size_t hl = strlen(hdr);
    uint8_t head[12] = { 0x93, 'N', 'U', 'M', 'P', 'Y', (uint8_t)version, 0,
                         (uint8_t)hl, (uint8_t)(hl >> 8), 0, 0 };
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(head, 1, pre, f);
    fwrite(hdr, 1, hl, f);
    if (len)
        fwrite(data, 1, len, f);
    fclose(f);
}

static void expect_npy_error(const char *path, const char *what)
{
    char err[512] = "";
    npy_array *a = npy_load(path, err, sizeof err);
    if (a) {
        npy_free(a);
        fail_msg("%s: expected an error", path);
    }
    if (!strstr(err, path) || !strstr(err, what))
        fail_msg("error '%s' should name %s and say '%s'", err, path, what);
}

static void test_npy_reader(void **state)
{
    (void)state;
    char p[512], err[512];
    /* golden arrays, checked against values the golden README states */
    npy_array *a = npy_load("tests/data/golden/qwen3vl-dense-tiny/img_input_ids.npy", err,
                            sizeof err);
    if (!a)
        fail_msg("%s", err);
    assert_int_equal(a->dtype, NPY_I64);
    assert_int_equal(a->ndim, 2);
    assert_int_equal(a->shape[0], 1);
    assert_int_equal(a->shape[1], 84);
    assert_int_equal(a->count, 84);
    assert_int_equal(npy_i64(a)[0], 151644);                 /* <|im_start|> */
    assert_null(npy_f32(a));
    int pads = 0;
    for (int i = 0; i < 84; i++)
        pads += npy_i64(a)[i] == 151655;                     /* <|image_pad|> */
    assert_int_equal(pads, 70);                              /* "vision tokens 70" */
    npy_free(a);
    a = npy_load("tests/data/golden/qwen3vl-dense-tiny/img_rope_deltas.npy", err, sizeof err);
    assert_non_null(a);
    assert_int_equal(npy_i64(a)[0], -60);
    npy_free(a);
    a = npy_load("tests/data/golden/qwen3vl-dense-tiny/input_image_hwc_u8.npy", err, sizeof err);
    assert_non_null(a);
    assert_int_equal(a->dtype, NPY_U8);
    assert_int_equal(a->ndim, 3);
    assert_int_equal(a->shape[0], 160);
    const uint8_t *px = npy_u8(a);
    /* R = (x*255)//223, G = (y*255)//159, B = ((x + 2*y)*3) % 256 at y = 100, x = 50 */
    size_t at = ((size_t)100 * 224 + 50) * 3;
    assert_int_equal(px[at], 50 * 255 / 223);
    assert_int_equal(px[at + 1], 100 * 255 / 159);
    assert_int_equal(px[at + 2], ((50 + 200) * 3) % 256);
    npy_free(a);

    /* hand-written files, v1 and v2 headers */
    float f[6] = { 1, 2, 3, 4, 5, 6.5f };
    tpath(p, sizeof p, "a.npy");
    write_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", f, sizeof f);
    a = npy_load(p, err, sizeof err);
    assert_non_null(a);
    assert_int_equal(a->dtype, NPY_F32);
    assert_int_equal(a->count, 6);
    assert_int_equal(a->elem_size, 4);
    assert_true(npy_f32(a)[5] == 6.5f);
    assert_int_equal((uintptr_t)a->data % 64, 0);
    npy_free(a);
    tpath(p, sizeof p, "v2.npy");
    write_npy(p, 2, "{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }", "abc", 3);
    a = npy_load(p, err, sizeof err);
    assert_non_null(a);
    assert_int_equal(a->ndim, 1);
    assert_memory_equal(a->data, "abc", 3);
    npy_free(a);
    tpath(p, sizeof p, "scalar.npy");
    write_npy(p, 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (), }", "\x07\0\0\0\0\0\0\0",
              8);
    a = npy_load(p, err, sizeof err);
    assert_non_null(a);
    assert_int_equal(a->ndim, 0);
    assert_int_equal(a->count, 1);
    assert_int_equal(npy_i64(a)[0], 7);
    npy_free(a);

    tpath(p, sizeof p, "big_endian.npy");
    write_npy(p, 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", f, 8);
    expect_npy_error(p, "dtype '>f4' not supported");
    tpath(p, sizeof p, "fortran.npy");
    write_npy(p, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", f, sizeof f);
    expect_npy_error(p, "Fortran-order arrays are not supported");
    tpath(p, sizeof p, "struct.npy");
    write_npy(p, 1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", f, 8);
    expect_npy_error(p, "no 'descr' string");
    tpath(p, sizeof p, "short.npy");
    write_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", f, 20);
    expect_npy_error(p, "truncated data");
    tpath(p, sizeof p, "shape.npy");
    write_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }", f, 8);
    expect_npy_error(p, "malformed 'shape'");
    tpath(p, sizeof p, "magic.npy");
    static const char zip[] = "PK\x03\x04 not numpy";
    write_all(p, zip, sizeof zip - 1);
    expect_npy_error(p, "not a .npy file");
    tpath(p, sizeof p, "missing.npy");
    expect_npy_error(p, "cannot open");
    assert_null(npy_load(p, NULL, 0));
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(tmp_root) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_conversions),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_sharded),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_corruption_never_crashes),
        cmocka_unit_test(test_bad_index),
        cmocka_unit_test(test_npy_reader),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
