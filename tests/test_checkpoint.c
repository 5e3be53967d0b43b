/* test_checkpoint — checkpoint_open on the golden checkpoints (tensor list vs
 * weights_index.txt, values vs the raw file bytes read here independently), the errors for
 * missing / misshapen / wrongly typed tensors and missing shards, and the generator binary
 * ($VIGIL_BUILD/bin/vigil-gen-checkpoint): exact upstream file layout, determinism, sharding,
 * dtypes, weight statistics, and a plain f32 forward pass through a 48-layer random model
 * showing the generated weights keep activations finite and well scaled at depth. */
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
#include <sys/wait.h>
#include <unistd.h>

#include "model/checkpoint.h"

#define DENSE_DIR "tests/data/golden/qwen3vl-dense-tiny"
#define MOE_DIR "tests/data/golden/qwen3vl-moe-tiny"

static char tmp_root[] = "/tmp/vigil-test-ckpt-XXXXXX";
static char gen_bin[512];

/* ------------------------------------------------------------------------------------------ */
/* helpers                                                                                    */

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(*len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, *len, f), *len);
    buf[*len] = 0;
    fclose(f);
    return buf;
}

static bool files_equal(const char *a, const char *b)
{
    size_t la, lb;
    uint8_t *x = read_all(a, &la), *y = read_all(b, &lb);
    bool eq = la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return eq;
}

static void copy_file(const char *from_dir, const char *to_dir, const char *name)
{
    char a[600], b[600];
    snprintf(a, sizeof a, "%s/%s", from_dir, name);
    snprintf(b, sizeof b, "%s/%s", to_dir, name);
    size_t len;
    uint8_t *d = read_all(a, &len);
    FILE *f = fopen(b, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(d, 1, len, f), len);
    fclose(f);
    free(d);
}

static void make_dir(const char *name, char *dir, size_t len)
{
    snprintf(dir, len, "%s/%s", tmp_root, name);
    assert_int_equal(mkdir(dir, 0755), 0);
}

static void copy_configs(const char *from_dir, const char *to_dir)
{
    copy_file(from_dir, to_dir, "config.json");
    copy_file(from_dir, to_dir, "generation_config.json");
    copy_file(from_dir, to_dir, "preprocessor_config.json");
    copy_file(from_dir, to_dir, "video_preprocessor_config.json");
}

static void expect_open_error(const char *dir, ...)
{
    checkpoint *ck = (checkpoint *)0x1;
    char err[1024] = "";
    if (checkpoint_open(dir, &ck, err, sizeof err) == 0) {
        checkpoint_close(ck);
        fail_msg("%s: expected an error, it opened", dir);
    }
    assert_null(ck);
    va_list ap;
    va_start(ap, dir);
    for (const char *s = va_arg(ap, const char *); s; s = va_arg(ap, const char *))
        if (!strstr(err, s))
            fail_msg("error '%s' lacks '%s'", err, s);
    va_end(ap);
}

/* Runs the generator with the given arguments; returns its exit status. Output goes to
 * tmp_root/gen.log, which *log receives (malloc'ed) if log is not NULL. */
static int run_gen(char **log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int run_gen(char **log, const char *fmt, ...)
{
    char args[1024], cmd[4096], logp[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(logp, sizeof logp, "%s/gen.log", tmp_root);
    snprintf(cmd, sizeof cmd, "'%s' %s >'%s' 2>&1", gen_bin, args, logp);
    int st = system(cmd);
    if (log) {
        size_t len;
        *log = (char *)read_all(logp, &len);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void gen_ok(const char *fmt_args, const char *out)
{
    char *log = NULL;
    int rc = run_gen(&log, "%s --out '%s'", fmt_args, out);
    if (rc != 0)
        fail_msg("vigil-gen-checkpoint %s failed (%d): %s", fmt_args, rc, log);
    free(log);
}

/* ------------------------------------------------------------------------------------------ */
/* golden checkpoints                                                                         */

static void parse_shape(const char *s, int64_t *shape, int *ndim)
{
    *ndim = 0;
    assert_true(*s == '[');
    s++;
    while (*s && *s != ']') {
        char *end;
        shape[(*ndim)++] = strtoll(s, &end, 10);
        s = end;
        while (*s == ',' || *s == ' ')
            s++;
    }
}

static void check_golden(const char *set, bool moe)
{
    char dir[256], path[300];
    snprintf(dir, sizeof dir, "%s/model", set);
    checkpoint *ck;
    char err[1024] = "";
    if (checkpoint_open(dir, &ck, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(ck->config.arch, moe ? MODEL_ARCH_MOE : MODEL_ARCH_DENSE);
    assert_int_equal(ck->n_ignored, 0);

    /* every line of weights_index.txt: name, shape, dtype, file */
    snprintf(path, sizeof path, "%s/weights_index.txt", set);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[512];
    size_t lines = 0;
    while (fgets(line, sizeof line, f)) {
        char *name = strtok(line, "\t"), *shape = strtok(NULL, "\t"), *dtype = strtok(NULL, "\t"),
             *file = strtok(NULL, "\t\n");
        assert_non_null(file);
        int64_t want[8];
        int nd;
        parse_shape(shape, want, &nd);
        const st_tensor *t = checkpoint_tensor(ck, "%s", name);
        if (!t)
            fail_msg("%s: tensor %s not found", set, name);
        assert_int_equal(t->ndim, nd);
        for (int d = 0; d < nd; d++)
            assert_int_equal(t->shape[d], want[d]);
        assert_string_equal(st_dtype_name(t->dtype), dtype);
        assert_non_null(strstr(t->file, file));
        /* and the expected list agrees with the file */
        size_t k;
        for (k = 0; k < ck->n_expected; k++)
            if (strcmp(ck->expected[k].name, name) == 0)
                break;
        assert_true(k < ck->n_expected);
        assert_int_equal(ck->expected[k].ndim, nd);
        assert_memory_equal(ck->expected[k].shape, want, (size_t)nd * sizeof(int64_t));
        /* in name order, as the index lists them */
        if (lines > 0)
            assert_true(strcmp(ck->expected[lines - 1].name, ck->expected[lines].name) < 0);
        assert_string_equal(ck->expected[lines].name, name);
        lines++;
    }
    fclose(f);
    assert_int_equal(lines, ck->n_expected);
    assert_int_equal(lines, st_archive_count(ck->weights));

    /* a few elements against the raw bytes, located through a header parsed here */
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    size_t len;
    uint8_t *raw = read_all(path, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | raw[i];
    cJSON *hdr = cJSON_ParseWithLength((const char *)raw + 8, hlen);
    assert_non_null(hdr);
    const char *probe[] = { "model.visual.patch_embed.proj.weight",
                            "model.visual.blocks.3.attn.qkv.bias",
                            "model.language_model.embed_tokens.weight",
                            "model.language_model.layers.2.self_attn.k_norm.weight",
                            moe ? "model.language_model.layers.1.mlp.experts.gate_up_proj"
                                : "model.language_model.layers.1.mlp.down_proj.weight",
                            moe ? "lm_head.weight" : "model.language_model.norm.weight" };
    for (size_t i = 0; i < sizeof probe / sizeof probe[0]; i++) {
        const st_tensor *t = checkpoint_tensor(ck, "%s", probe[i]);
        assert_non_null(t);
        cJSON *off = cJSON_GetObjectItem(cJSON_GetObjectItem(hdr, probe[i]), "data_offsets");
        size_t b = (size_t)cJSON_GetArrayItem(off, 0)->valuedouble;
        size_t e = (size_t)cJSON_GetArrayItem(off, 1)->valuedouble;
        assert_int_equal(e - b, t->nbytes);
        const uint8_t *file_bytes = raw + 8 + hlen + b;
        assert_memory_equal(t->data, file_bytes, t->nbytes);
        size_t n = st_tensor_numel(t), picks[3] = { 0, n / 2, n - 1 };
        for (int k = 0; k < 3; k++) {
            float v;
            assert_int_equal(st_tensor_read_f32(t, picks[k], 1, &v), 0);
            uint32_t u = (uint32_t)(file_bytes[2 * picks[k]] | file_bytes[2 * picks[k] + 1] << 8)
                         << 16;
            float want;
            memcpy(&want, &u, 4);
            assert_true(v == want);
            assert_true(isfinite(v));
        }
    }
    cJSON_Delete(hdr);
    free(raw);

    /* lookups the configuration does not imply */
    assert_null(checkpoint_tensor(ck, "model.language_model.layers.%d.input_layernorm.weight",
                                  ck->config.text.num_hidden_layers));
    assert_null(checkpoint_tensor(ck, "model.visual.deepstack_merger_list.%d.norm.weight",
                                  ck->config.vision.num_deepstack));
    assert_non_null(checkpoint_tensor(ck, "model.language_model.layers.%d.self_attn.q_proj.weight", 3));
    const st_tensor *head = checkpoint_lm_head(ck);
    assert_non_null(head);
    if (moe) {
        assert_string_equal(head->name, "lm_head.weight");
        assert_non_null(checkpoint_tensor(ck, "model.language_model.layers.0.mlp.gate.weight"));
        assert_null(checkpoint_tensor(ck, "model.language_model.layers.0.mlp.gate_proj.weight"));
    } else {
        /* tied: no lm_head.weight in the file, the embedding serves */
        assert_null(checkpoint_tensor(ck, "lm_head.weight"));
        assert_string_equal(head->name, "model.language_model.embed_tokens.weight");
        assert_null(checkpoint_tensor(ck, "model.language_model.layers.0.mlp.gate.weight"));
    }
    checkpoint_close(ck);
}

static void test_golden_dense(void **state)
{
    (void)state;
    check_golden(DENSE_DIR, false);
}

static void test_golden_moe(void **state)
{
    (void)state;
    check_golden(MOE_DIR, true);
}

static void test_param_counts(void **state)
{
    (void)state;
    /* The READMEs give 10356288 and 20278848 parameters in the files. */
    static const struct {
        const char *dir;
        size_t params;
    } sets[] = { { DENSE_DIR "/model", 10356288 }, { MOE_DIR "/model", 20278848 } };
    for (int i = 0; i < 2; i++) {
        checkpoint *ck;
        char err[1024];
        assert_int_equal(checkpoint_open(sets[i].dir, &ck, err, sizeof err), 0);
        assert_int_equal(ckpt_param_count(ck->expected, ck->n_expected), sets[i].params);
        checkpoint_close(ck);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* broken checkpoints, made from the golden dense one                                         */

enum edit { EDIT_NONE, EDIT_DROP, EDIT_TRANSPOSE, EDIT_DTYPE, EDIT_EXTRA };

/* Writes dir/model.safetensors (or shards) with the golden dense tensors, one edited. */
static void write_edited(const char *dir, enum edit ed, const char *target, size_t shard_bytes)
{
    st_archive *src;
    char err[1024], path[600];
    assert_int_equal(st_archive_open_dir(DENSE_DIR "/model", &src, err, sizeof err), 0);
    st_writer *w = st_writer_create();
    for (size_t i = 0; i < st_archive_count(src); i++) {
        const st_tensor *t = st_archive_at(src, i);
        int64_t shape[ST_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        st_dtype dt = t->dtype;
        if (strcmp(t->name, target) == 0) {
            if (ed == EDIT_DROP)
                continue;
            if (ed == EDIT_TRANSPOSE) {
                shape[0] = t->shape[1];
                shape[1] = t->shape[0];
            }
            if (ed == EDIT_DTYPE)
                dt = ST_I16;
        }
        assert_int_equal(st_writer_add(w, t->name, dt, t->ndim, shape, NULL, (void *)t->data), 0);
    }
    static const float extra[3] = { 1, 2, 3 };
    int64_t three = 3;
    if (ed == EDIT_EXTRA)
        assert_int_equal(st_writer_add(w, target, ST_F32, 1, &three, NULL, (void *)extra), 0);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = shard_bytes ? st_writer_save_sharded(w, dir, shard_bytes, err, sizeof err)
                         : st_writer_save(w, path, err, sizeof err);
    if (rc != 0)
        fail_msg("%s", err);
    st_writer_destroy(w);
    st_archive_close(src);
}

static void test_broken_checkpoints(void **state)
{
    (void)state;
    char dir[512], file[600];
    const char *qkv = "model.visual.blocks.0.attn.qkv.weight";

    make_dir("missing_tensor", dir, sizeof dir);
    copy_configs(DENSE_DIR "/model", dir);
    write_edited(dir, EDIT_DROP, qkv, 0);
    snprintf(file, sizeof file, "%s/model.safetensors", dir);
    expect_open_error(dir, file, "tensor 'model.visual.blocks.0.attn.qkv.weight' is missing",
                      "expected shape [192, 64]", NULL);

    make_dir("wrong_shape", dir, sizeof dir);
    copy_configs(DENSE_DIR "/model", dir);
    write_edited(dir, EDIT_TRANSPOSE, qkv, 0);
    snprintf(file, sizeof file, "%s/model.safetensors", dir);
    expect_open_error(dir, file, ": tensor 'model.visual.blocks.0.attn.qkv.weight': expected shape "
                      "[192, 64], found [64, 192]", NULL);

    make_dir("wrong_dtype", dir, sizeof dir);
    copy_configs(DENSE_DIR "/model", dir);
    write_edited(dir, EDIT_DTYPE, "model.language_model.norm.weight", 0);
    snprintf(file, sizeof file, "%s/model.safetensors", dir);
    expect_open_error(dir, file, "tensor 'model.language_model.norm.weight': dtype I16 is not "
                      "supported (expected BF16, F16 or F32)", NULL);

    /* extra tensors are ignored */
    make_dir("extra", dir, sizeof dir);
    copy_configs(DENSE_DIR "/model", dir);
    write_edited(dir, EDIT_EXTRA, "model.visual.something_new.weight", 0);
    checkpoint *ck;
    char err[1024];
    if (checkpoint_open(dir, &ck, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(ck->n_ignored, 1);
    assert_null(checkpoint_tensor(ck, "model.visual.something_new.weight"));
    checkpoint_close(ck);

    /* the configuration decides what must be there: one layer more than the file holds */
    make_dir("config_mismatch", dir, sizeof dir);
    copy_configs(DENSE_DIR "/model", dir);
    write_edited(dir, EDIT_NONE, "", 0);
    snprintf(file, sizeof file, "%s/config.json", dir);
    size_t len;
    char *cfg = (char *)read_all(file, &len);
    char *p = strstr(cfg, "\"num_hidden_layers\": 4");
    assert_non_null(p);
    p[strlen("\"num_hidden_layers\": ")] = '5';
    FILE *f = fopen(file, "wb");
    fwrite(cfg, 1, len, f);
    fclose(f);
    free(cfg);
    expect_open_error(dir, "model.safetensors: tensor 'model.language_model.layers.4.", "is missing",
                      NULL);

    /* sharded, then one shard deleted */
    make_dir("missing_shard", dir, sizeof dir);
    copy_configs(DENSE_DIR "/model", dir);
    write_edited(dir, EDIT_NONE, "", 4000000);
    snprintf(file, sizeof file, "%s/model.safetensors", dir);
    assert_int_not_equal(access(file, F_OK), 0);
    if (checkpoint_open(dir, &ck, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_true(st_archive_file_count(ck->weights) >= 2);
    checkpoint_close(ck);
    snprintf(file, sizeof file, "%s/model-00001-of-00002.safetensors", dir);
    assert_int_equal(unlink(file), 0);
    char index[600];
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
    expect_open_error(dir, index, "shard 'model-00001-of-00002.safetensors' (named for tensor "
                      "'model.language_model.embed_tokens.weight') is missing", NULL);

    /* a shard present but without a tensor the index promises */
    make_dir("wrong_shard", dir, sizeof dir);
    copy_configs(DENSE_DIR "/model", dir);
    write_edited(dir, EDIT_NONE, "", 4000000);
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
    cfg = (char *)read_all(index, &len);
    p = strstr(cfg, "\"model.language_model.norm.weight\": \"model-00002-of-00002");
    assert_non_null(p);
    p[strlen("\"model.language_model.norm.weight\": \"model-0000")] = '1';
    f = fopen(index, "wb");
    fwrite(cfg, 1, len, f);
    fclose(f);
    free(cfg);
    expect_open_error(dir, index, "tensor 'model.language_model.norm.weight' is listed in shard "
                      "'model-00001-of-00002.safetensors'", "has no such tensor", NULL);

    /* no weights at all, no config at all */
    make_dir("no_weights", dir, sizeof dir);
    copy_configs(DENSE_DIR "/model", dir);
    expect_open_error(dir, dir, "no model.safetensors or model.safetensors.index.json", NULL);
    make_dir("no_config", dir, sizeof dir);
    expect_open_error(dir, "config.json: missing", NULL);
    expect_open_error("", "no checkpoint folder", NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* the generator                                                                              */

static void header_bytes(const char *path, uint8_t **out, size_t *len)
{
    size_t flen;
    uint8_t *raw = read_all(path, &flen);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | raw[i];
    assert_true(hlen + 8 <= flen);
    *len = (size_t)hlen + 8;
    *out = raw;
}

static void test_generator_layout(void **state)
{
    (void)state;
    static const struct {
        const char *preset, *golden;
    } sets[] = { { "tiny", DENSE_DIR "/model" }, { "tiny-moe", MOE_DIR "/model" } };
    for (int s = 0; s < 2; s++) {
        char dir[512], a[600], b[600];
        snprintf(dir, sizeof dir, "%s/gen-%s", tmp_root, sets[s].preset);
        char args[64];
        snprintf(args, sizeof args, "--preset %s --seed 7", sets[s].preset);
        gen_ok(args, dir);
        checkpoint *ck;
        char err[1024];
        if (checkpoint_open(dir, &ck, err, sizeof err) != 0)
            fail_msg("%s", err);
        assert_int_equal(ck->n_ignored, 0);
        assert_int_equal(st_archive_count(ck->weights), ck->n_expected);
        /* the generated checkpoint names eos ids, as the published ones do */
        assert_int_equal(ck->config.num_eos, 2);
        assert_int_equal(ck->config.eos_token_ids[0], 151645);
        checkpoint_close(ck);
        /* byte for byte what upstream save_pretrained wrote for the same configuration */
        const char *same[] = { "config.json", "preprocessor_config.json",
                               "video_preprocessor_config.json", "tokenizer.json",
                               "tokenizer_config.json" };
        for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
            snprintf(a, sizeof a, "%s/%s", dir, same[i]);
            snprintf(b, sizeof b, "%s/%s", sets[s].golden, same[i]);
            if (!files_equal(a, b))
                fail_msg("%s differs from %s", a, b);
        }
        /* the safetensors header too (names, shapes, offsets, padding); only data differ */
        snprintf(a, sizeof a, "%s/model.safetensors", dir);
        snprintf(b, sizeof b, "%s/model.safetensors", sets[s].golden);
        uint8_t *ha, *hb;
        size_t la, lb;
        header_bytes(a, &ha, &la);
        header_bytes(b, &hb, &lb);
        assert_int_equal(la, lb);
        assert_memory_equal(ha, hb, la);
        free(ha);
        free(hb);
    }
}

static void test_generator_determinism(void **state)
{
    (void)state;
    char d1[512], d2[512], d3[512], a[600], b[600];
    snprintf(d1, sizeof d1, "%s/det1", tmp_root);
    snprintf(d2, sizeof d2, "%s/det2", tmp_root);
    snprintf(d3, sizeof d3, "%s/det3", tmp_root);
    gen_ok("--preset tiny --seed 42", d1);
    gen_ok("--preset tiny --seed 42", d2);
    gen_ok("--preset tiny --seed 43", d3);
    snprintf(a, sizeof a, "%s/model.safetensors", d1);
    snprintf(b, sizeof b, "%s/model.safetensors", d2);
    assert_true(files_equal(a, b));
    snprintf(b, sizeof b, "%s/model.safetensors", d3);
    assert_false(files_equal(a, b));

    /* sharding changes the files, not the bytes of any tensor */
    char ds[512];
    snprintf(ds, sizeof ds, "%s/det-sharded", tmp_root);
    gen_ok("--preset tiny --seed 42 --shard-mb 3", ds);
    snprintf(b, sizeof b, "%s/model.safetensors.index.json", ds);
    assert_int_equal(access(b, F_OK), 0);
    checkpoint *c1, *cs;
    char err[1024];
    assert_int_equal(checkpoint_open(d1, &c1, err, sizeof err), 0);
    if (checkpoint_open(ds, &cs, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_true(st_archive_file_count(cs->weights) >= 2);
    for (size_t i = 0; i < c1->n_expected; i++) {
        const st_tensor *x = st_archive_find(c1->weights, c1->expected[i].name);
        const st_tensor *y = st_archive_find(cs->weights, c1->expected[i].name);
        assert_int_equal(x->nbytes, y->nbytes);
        assert_memory_equal(x->data, y->data, x->nbytes);
    }
    checkpoint_close(cs);

    /* writing a single file into that folder removes the stale index and shards */
    gen_ok("--preset tiny --seed 42", ds);
    assert_int_not_equal(access(b, F_OK), 0);
    snprintf(b, sizeof b, "%s/model-00001-of-00002.safetensors", ds);
    assert_int_not_equal(access(b, F_OK), 0);
    snprintf(b, sizeof b, "%s/model.safetensors", ds);
    assert_true(files_equal(a, b));

    /* f32 and f16 files hold the same values before rounding */
    char d32[512], d16[512];
    snprintf(d32, sizeof d32, "%s/det-f32", tmp_root);
    snprintf(d16, sizeof d16, "%s/det-f16", tmp_root);
    gen_ok("--preset tiny --seed 42 --dtype f32", d32);
    gen_ok("--preset tiny --seed 42 --dtype f16", d16);
    checkpoint *c32, *c16;
    assert_int_equal(checkpoint_open(d32, &c32, err, sizeof err), 0);
    assert_int_equal(checkpoint_open(d16, &c16, err, sizeof err), 0);
    assert_string_equal(c32->config.torch_dtype, "float32");
    assert_string_equal(c16->config.torch_dtype, "float16");
    for (size_t i = 0; i < c1->n_expected; i++) {
        const char *name = c1->expected[i].name;
        const st_tensor *tb = st_archive_find(c1->weights, name);
        const st_tensor *tf = st_archive_find(c32->weights, name);
        const st_tensor *th = st_archive_find(c16->weights, name);
        assert_int_equal(tb->dtype, ST_BF16);
        assert_int_equal(tf->dtype, ST_F32);
        assert_int_equal(th->dtype, ST_F16);
        size_t n = st_tensor_numel(tb);
        for (size_t k = 0; k < n; k += 1 + n / 64) {
            float f, hv;
            uint16_t bv;
            memcpy(&bv, (const uint8_t *)tb->data + 2 * k, 2);
            assert_int_equal(st_tensor_read_f32(tf, k, 1, &f), 0);
            assert_int_equal(st_tensor_read_f32(th, k, 1, &hv), 0);
            assert_int_equal(st_f32_to_bf16(f), bv);
            assert_true(hv == st_f16_to_f32(st_f32_to_f16(f)));
        }
    }
    checkpoint_close(c1);
    checkpoint_close(c32);
    checkpoint_close(c16);
}

static void test_generator_weight_statistics(void **state)
{
    (void)state;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/stats", tmp_root);
    gen_ok("--preset tiny-moe --seed 5 --dtype f32", dir);
    checkpoint *ck;
    char err[1024];
    assert_int_equal(checkpoint_open(dir, &ck, err, sizeof err), 0);
    int checked = 0;
    for (size_t i = 0; i < ck->n_expected; i++) {
        const ckpt_tensor_spec *s = &ck->expected[i];
        const st_tensor *t = st_archive_find(ck->weights, s->name);
        size_t n = st_tensor_numel(t);
        const float *v = t->data;
        double sum = 0, sq = 0;
        for (size_t k = 0; k < n; k++) {
            if (!isfinite(v[k]))
                fail_msg("%s[%zu] is not finite", s->name, k);
            sum += v[k];
            sq += (double)v[k] * v[k];
        }
        if (s->init == CKPT_INIT_ONES) {
            for (size_t k = 0; k < n; k++)
                assert_true(v[k] == 1.0f);
            continue;
        }
        assert_int_equal(s->init, CKPT_INIT_NORMAL);
        if (s->fan_in > 0)
            assert_true(fabs(s->std - 1.0 / sqrt(s->fan_in)) < 1e-6);
        else
            assert_true(s->std == 0.02f);
        if (n < 4096)
            continue;
        double mean = sum / (double)n, sd = sqrt(sq / (double)n - mean * mean);
        if (fabs(mean) > 5 * s->std / sqrt((double)n) || fabs(sd / s->std - 1) > 0.05)
            fail_msg("%s: mean %g sd %g, expected normal(0, %g)", s->name, mean, sd, s->std);
        checked++;
    }
    assert_true(checked > 20);
    /* biases are small but not zero: a forward pass that drops one must be noticed */
    const st_tensor *b = checkpoint_tensor(ck, "model.visual.blocks.0.attn.qkv.bias");
    double absum = 0;
    for (size_t k = 0; k < st_tensor_numel(b); k++)
        absum += fabs(((const float *)b->data)[k]);
    assert_true(absum / (double)st_tensor_numel(b) > 0.005);
    checkpoint_close(ck);
}

/* ---- a plain f32 forward pass of the text decoder (RoPE left out: a rotation does not
 *      change magnitudes) to show the generated scaling holds up at depth ---- */

static float *weights(const checkpoint *ck, const char *name)
{
    const st_tensor *t = checkpoint_tensor(ck, "%s", name);
    if (!t)
        fail_msg("no tensor %s", name);
    size_t n = st_tensor_numel(t);
    float *w = malloc(n * sizeof *w);
    assert_non_null(w);
    assert_int_equal(st_tensor_read_f32(t, 0, n, w), 0);
    return w;
}

static float *layer_weights(const checkpoint *ck, int layer, const char *suffix)
{
    char name[CKPT_NAME_MAX];
    snprintf(name, sizeof name, "model.language_model.layers.%d.%s", layer, suffix);
    return weights(ck, name);
}

static void rmsnorm(float *out, const float *x, const float *w, int n, double eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++)
        out[i] = x[i] * r * w[i];
}

/* y[o] = sum_i W[o][i] x[i]  (W row-major [out, in], the Linear layout) */
static void linear(float *y, const float *w, const float *x, int out, int in)
{
    for (int o = 0; o < out; o++) {
        double s = 0;
        for (int i = 0; i < in; i++)
            s += (double)w[(size_t)o * in + i] * x[i];
        y[o] = (float)s;
    }
}

static float silu(float x)
{
    return x / (1.0f + expf(-x));
}

static double rms(const float *x, int n)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    return sqrt(ss / n);
}

static void forward_depth_check(const char *dir)
{
    checkpoint *ck;
    char err[1024];
    if (checkpoint_open(dir, &ck, err, sizeof err) != 0)
        fail_msg("%s", err);
    const model_text_config *c = &ck->config.text;
    enum { T = 6 };
    const int H = c->hidden_size, L = c->num_hidden_layers, NH = c->num_attention_heads,
              KV = c->num_key_value_heads, HD = c->head_dim, V = c->vocab_size;
    const int32_t ids[T] = { 151644, 872, 198, 9707, 0, 151643 };
    float *x = calloc((size_t)T * H, sizeof *x), *h = malloc((size_t)H * sizeof *h);
    float *q = malloc((size_t)T * NH * HD * sizeof *q), *k = malloc((size_t)T * KV * HD * sizeof *k);
    float *v = malloc((size_t)T * KV * HD * sizeof *v), *att = malloc((size_t)NH * HD * sizeof *att);
    float *tmp = malloc((size_t)(H > NH * HD ? H : NH * HD) * 4 * sizeof *tmp);
    float *emb = weights(ck, "model.language_model.embed_tokens.weight");
    for (int t = 0; t < T; t++)
        memcpy(x + (size_t)t * H, emb + (size_t)ids[t] * H, (size_t)H * sizeof *x);
    double first_rms = 0, last_rms = 0;
    for (int l = 0; l < L; l++) {
        float *ln1 = layer_weights(ck, l, "input_layernorm.weight");
        float *wq = layer_weights(ck, l, "self_attn.q_proj.weight");
        float *wk = layer_weights(ck, l, "self_attn.k_proj.weight");
        float *wv = layer_weights(ck, l, "self_attn.v_proj.weight");
        float *wo = layer_weights(ck, l, "self_attn.o_proj.weight");
        float *qn = layer_weights(ck, l, "self_attn.q_norm.weight");
        float *kn = layer_weights(ck, l, "self_attn.k_norm.weight");
        float *ln2 = layer_weights(ck, l, "post_attention_layernorm.weight");
        for (int t = 0; t < T; t++) {
            rmsnorm(h, x + (size_t)t * H, ln1, H, c->rms_norm_eps);
            linear(q + (size_t)t * NH * HD, wq, h, NH * HD, H);
            linear(k + (size_t)t * KV * HD, wk, h, KV * HD, H);
            linear(v + (size_t)t * KV * HD, wv, h, KV * HD, H);
            for (int j = 0; j < NH; j++)
                rmsnorm(q + ((size_t)t * NH + j) * HD, q + ((size_t)t * NH + j) * HD, qn, HD,
                        c->rms_norm_eps);
            for (int j = 0; j < KV; j++)
                rmsnorm(k + ((size_t)t * KV + j) * HD, k + ((size_t)t * KV + j) * HD, kn, HD,
                        c->rms_norm_eps);
        }
        for (int t = 0; t < T; t++) {
            for (int j = 0; j < NH; j++) {
                int g = j / (NH / KV);
                float sc[T], mx = -INFINITY, den = 0;
                for (int s = 0; s <= t; s++) {
                    double d = 0;
                    for (int e = 0; e < HD; e++)
                        d += (double)q[((size_t)t * NH + j) * HD + e] * k[((size_t)s * KV + g) * HD + e];
                    sc[s] = (float)(d / sqrt(HD));
                    mx = fmaxf(mx, sc[s]);
                }
                for (int s = 0; s <= t; s++)
                    den += sc[s] = expf(sc[s] - mx);
                for (int e = 0; e < HD; e++) {
                    double o = 0;
                    for (int s = 0; s <= t; s++)
                        o += (double)sc[s] / den * v[((size_t)s * KV + g) * HD + e];
                    att[j * HD + e] = (float)o;
                }
            }
            linear(tmp, wo, att, H, NH * HD);
            for (int i = 0; i < H; i++)
                x[(size_t)t * H + i] += tmp[i];
        }
        /* MLP or MoE block */
        if (c->layer_is_moe[l]) {
            const int E = c->num_experts, K = c->num_experts_per_tok, MI = c->moe_intermediate_size;
            float *gate = layer_weights(ck, l, "mlp.gate.weight");
            float *gu = layer_weights(ck, l, "mlp.experts.gate_up_proj");
            float *dn = layer_weights(ck, l, "mlp.experts.down_proj");
            float *logit = malloc((size_t)E * sizeof *logit), *y = malloc((size_t)H * sizeof *y);
            float *mid = malloc((size_t)2 * MI * sizeof *mid);
            for (int t = 0; t < T; t++) {
                rmsnorm(h, x + (size_t)t * H, ln2, H, c->rms_norm_eps);
                linear(logit, gate, h, E, H);
                float mx = -INFINITY, den = 0;
                for (int e = 0; e < E; e++)
                    mx = fmaxf(mx, logit[e]);
                for (int e = 0; e < E; e++)
                    den += logit[e] = expf(logit[e] - mx);
                memset(y, 0, (size_t)H * sizeof *y);
                float wsum = 0;
                int chosen[16];
                for (int kk = 0; kk < K; kk++) {
                    int best = -1;
                    for (int e = 0; e < E; e++) {
                        bool used = false;
                        for (int u = 0; u < kk; u++)
                            used |= chosen[u] == e;
                        if (!used && (best < 0 || logit[e] > logit[best]))
                            best = e;
                    }
                    chosen[kk] = best;
                    wsum += logit[best] / den;
                }
                for (int kk = 0; kk < K; kk++) {
                    int e = chosen[kk];
                    float wgt = logit[e] / den / wsum;
                    /* right-multiplied: mid = h @ gate_up_proj[e]  ([H, 2*MI]) */
                    for (int m = 0; m < 2 * MI; m++) {
                        double s = 0;
                        for (int i = 0; i < H; i++)
                            s += (double)h[i] * gu[((size_t)e * H + i) * 2 * MI + m];
                        mid[m] = (float)s;
                    }
                    for (int m = 0; m < MI; m++)
                        mid[m] = silu(mid[m]) * mid[MI + m];
                    for (int i = 0; i < H; i++) {
                        double s = 0;
                        for (int m = 0; m < MI; m++)
                            s += (double)mid[m] * dn[((size_t)e * MI + m) * H + i];
                        y[i] += wgt * (float)s;
                    }
                }
                for (int i = 0; i < H; i++)
                    x[(size_t)t * H + i] += y[i];
            }
            free(gate);
            free(gu);
            free(dn);
            free(logit);
            free(y);
            free(mid);
        } else {
            const int I = c->intermediate_size;
            float *wg = layer_weights(ck, l, "mlp.gate_proj.weight");
            float *wu = layer_weights(ck, l, "mlp.up_proj.weight");
            float *wd = layer_weights(ck, l, "mlp.down_proj.weight");
            float *a = malloc((size_t)I * sizeof *a), *b = malloc((size_t)I * sizeof *b);
            for (int t = 0; t < T; t++) {
                rmsnorm(h, x + (size_t)t * H, ln2, H, c->rms_norm_eps);
                linear(a, wg, h, I, H);
                linear(b, wu, h, I, H);
                for (int i = 0; i < I; i++)
                    a[i] = silu(a[i]) * b[i];
                linear(tmp, wd, a, H, I);
                for (int i = 0; i < H; i++)
                    x[(size_t)t * H + i] += tmp[i];
            }
            free(wg);
            free(wu);
            free(wd);
            free(a);
            free(b);
        }
        for (int i = 0; i < T * H; i++)
            if (!isfinite(x[i]))
                fail_msg("%s: layer %d output not finite", dir, l);
        last_rms = rms(x, T * H);
        if (l == 0)
            first_rms = last_rms;
        free(ln1);
        free(wq);
        free(wk);
        free(wv);
        free(wo);
        free(qn);
        free(kn);
        free(ln2);
    }
    /* The residual stream grows like sqrt(depth), not exponentially. */
    if (!(first_rms > 0.1 && last_rms < 4.0 * sqrt((double)L) && last_rms > first_rms))
        fail_msg("%s: residual RMS %g after layer 0, %g after layer %d", dir, first_rms, last_rms,
                 L - 1);
    print_message("%s: %d layers, residual RMS %.3g after layer 0, %.3g after layer %d\n", dir,
                  L, first_rms, last_rms, L - 1);
    float *fn = weights(ck, "model.language_model.norm.weight");
    const st_tensor *head_t = checkpoint_lm_head(ck);
    float *head = c->tie_word_embeddings ? emb : weights(ck, "lm_head.weight");
    assert_non_null(head_t);
    float *logits = malloc((size_t)V * sizeof *logits);
    for (int t = 0; t < T; t++) {
        rmsnorm(h, x + (size_t)t * H, fn, H, c->rms_norm_eps);
        linear(logits, head, h, V, H);
        double sd = rms(logits, V);
        for (int i = 0; i < V; i++)
            if (!isfinite(logits[i]))
                fail_msg("%s: logit %d of token %d not finite", dir, i, t);
        if (!(sd > 0.05 && sd < 20))
            fail_msg("%s: logits RMS %g at token %d", dir, sd, t);
        if (t == T - 1)
            print_message("%s: logits RMS %.3g at the last token\n", dir, sd);
    }
    free(logits);
    if (head != emb)
        free(head);
    free(fn);
    free(emb);
    free(x);
    free(h);
    free(q);
    free(k);
    free(v);
    free(att);
    free(tmp);
    checkpoint_close(ck);
}

static void test_generator_deep_forward_stays_finite(void **state)
{
    (void)state;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/deep-dense", tmp_root);
    gen_ok("--preset tiny --layers 48 --dtype f32 --seed 11", dir);
    forward_depth_check(dir);
    snprintf(dir, sizeof dir, "%s/deep-moe", tmp_root);
    gen_ok("--preset tiny-moe --layers 48 --seed 12", dir);
    forward_depth_check(dir);
}

static void test_generator_arguments(void **state)
{
    (void)state;
    char *log;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/args", tmp_root);
    assert_int_equal(run_gen(&log, "--preset huge --out '%s'", dir), 2);
    assert_non_null(strstr(log, "--preset: unknown 'huge'"));
    free(log);
    assert_int_equal(run_gen(&log, "--preset tiny"), 2);
    assert_non_null(strstr(log, "--preset and --out are required"));
    free(log);
    assert_int_equal(run_gen(&log, "--preset tiny --out '%s' --layers 0", dir), 2);
    assert_non_null(strstr(log, "--layers: expected an integer from 1 to 256, got '0'"));
    free(log);
    assert_int_equal(run_gen(&log, "--preset tiny --out '%s' --dtype int8", dir), 2);
    assert_non_null(strstr(log, "--dtype: expected bf16, f16 or f32"));
    free(log);
    assert_int_equal(run_gen(&log, "--preset tiny --out '%s' --bogus 1", dir), 2);
    assert_non_null(strstr(log, "unknown option --bogus"));
    free(log);
    assert_int_equal(run_gen(&log, "--preset tiny --out '%s' --tokenizer /nonexistent/t.json", dir),
                     1);
    assert_non_null(strstr(log, "/nonexistent/t.json: cannot open"));
    free(log);
    assert_int_equal(run_gen(&log, "--help"), 0);
    assert_non_null(strstr(log, "30b-a3b-reduced"));
    free(log);
    /* The real-size presets, without writing gigabytes: their parameter counts are those
     * of the published checkpoints (2.13B, 4.44B, 8.77B, 31.07B), which pins every shape. */
    static const struct {
        const char *args;
        const char *want;
    } sizes[] = {
        { "--preset 2b", "625 tensors, 2127532032 parameters, 4255064064 bytes" },
        { "--preset 4b", "713 tensors, 4437815808 parameters" },
        { "--preset 8b", "750 tensors, 8767123696 parameters, 17534247392 bytes of weights in 5 files" },
        { "--preset 30b-a3b-reduced --layers 48", "882 tensors, 31070754032 parameters" },
        { "--preset 30b-a3b-reduced", "4 text layers, BF16, 398 tensors" },
        { "--preset 8b --dtype f32 --shard-mb 100000", "35068494784 bytes of weights in 1 file" },
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        assert_int_equal(run_gen(&log, "%s --dry-run", sizes[i].args), 0);
        if (!strstr(log, sizes[i].want))
            fail_msg("%s --dry-run printed '%s', expected '%s'", sizes[i].args, log, sizes[i].want);
        free(log);
    }

    /* --layers shapes the config and the tensors; the tokenizer folder form works */
    assert_int_equal(run_gen(&log, "--preset tiny --layers 2 --tokenizer '%s' --out '%s'",
                             DENSE_DIR "/model", dir), 0);
    assert_non_null(strstr(log, "wrote"));
    free(log);
    checkpoint *ck;
    char err[1024];
    assert_int_equal(checkpoint_open(dir, &ck, err, sizeof err), 0);
    assert_int_equal(ck->config.text.num_hidden_layers, 2);
    assert_null(checkpoint_tensor(ck, "model.language_model.layers.2.input_layernorm.weight"));
    checkpoint_close(ck);
}

/* ------------------------------------------------------------------------------------------ */

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
    if (!mkdtemp(tmp_root))
        return -1;
    /* The generator of this build; the sanitizer build may not have its own copy. */
    const char *build = getenv("VIGIL_BUILD");
    snprintf(gen_bin, sizeof gen_bin, "%s/bin/vigil-gen-checkpoint", build ? build : "build");
    if (access(gen_bin, X_OK) != 0) {
        fprintf(stderr, "note: %s not built, using build/bin/vigil-gen-checkpoint\n", gen_bin);
        snprintf(gen_bin, sizeof gen_bin, "build/bin/vigil-gen-checkpoint");
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int need_generator(void **state)
{
    (void)state;
    if (access(gen_bin, X_OK) != 0) {
        fprintf(stderr, "%s is missing: build it with make %s\n", gen_bin, gen_bin);
        return -1;
    }
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_dense),
        cmocka_unit_test(test_golden_moe),
        cmocka_unit_test(test_param_counts),
        cmocka_unit_test(test_broken_checkpoints),
        cmocka_unit_test_setup(test_generator_layout, need_generator),
        cmocka_unit_test_setup(test_generator_determinism, need_generator),
        cmocka_unit_test_setup(test_generator_weight_statistics, need_generator),
        cmocka_unit_test_setup(test_generator_deep_forward_stays_finite, need_generator),
        cmocka_unit_test_setup(test_generator_arguments, need_generator),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
