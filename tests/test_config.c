/* test_config — model/config.c against the golden checkpoints' config files (read here with
 * cJSON independently of the loader), upstream defaults, and every kind of bad config. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/config.h"

#define DENSE_DIR "tests/data/golden/qwen3vl-dense-tiny/model"
#define MOE_DIR "tests/data/golden/qwen3vl-moe-tiny/model"

static char tmp_root[] = "/tmp/vigil-test-config-XXXXXX";

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    fclose(f);
}

static cJSON *json_path(cJSON *root, const char *path)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    cJSON *cur = root;
    for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, "."))
        cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
    return cur;
}

static double num_at(cJSON *root, const char *path)
{
    cJSON *v = json_path(root, path);
    if (!cJSON_IsNumber(v))
        fail_msg("golden config has no number at %s", path);
    return v->valuedouble;
}

/* Replaces (or, with item NULL, deletes) the value at a dotted path of a JSON text. */
static char *mutate(const char *text, const char *path, cJSON *item)
{
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    char *last = strrchr(buf, '.');
    cJSON *parent = root;
    const char *key = buf;
    if (last) {
        *last = '\0';
        parent = json_path(root, buf);
        key = last + 1;
    }
    assert_non_null(parent);
    cJSON_DeleteItemFromObjectCaseSensitive(parent, key);
    if (item)
        cJSON_AddItemToObject(parent, key, item);
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    return out;
}

/* The text must fail to parse with a message holding every given substring. */
static void expect_parse_error(const char *text, ...)
{
    model_config cfg;
    char err[512] = "";
    int rc = model_config_parse_json(text, "cfg/config.json", &cfg, err, sizeof err);
    if (rc == 0)
        fail_msg("expected an error, config parsed");
    va_list ap;
    va_start(ap, text);
    for (const char *s = va_arg(ap, const char *); s; s = va_arg(ap, const char *))
        if (!strstr(err, s))
            fail_msg("error message '%s' lacks '%s'", err, s);
    va_end(ap);
    if (strncmp(err, "cfg/config.json: ", 17) != 0)
        fail_msg("error message '%s' does not start with the file name", err);
}

static void check_against_golden(const char *dir, const model_config *c)
{
    char path[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text = read_text(path);
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    const model_text_config *t = &c->text;
    const model_vision_config *v = &c->vision;
    assert_string_equal(c->model_type, json_path(j, "model_type")->valuestring);
    assert_int_equal(t->hidden_size, num_at(j, "text_config.hidden_size"));
    assert_int_equal(t->num_hidden_layers, num_at(j, "text_config.num_hidden_layers"));
    assert_int_equal(t->num_attention_heads, num_at(j, "text_config.num_attention_heads"));
    assert_int_equal(t->num_key_value_heads, num_at(j, "text_config.num_key_value_heads"));
    assert_int_equal(t->head_dim, num_at(j, "text_config.head_dim"));
    assert_int_equal(t->intermediate_size, num_at(j, "text_config.intermediate_size"));
    assert_int_equal(t->vocab_size, num_at(j, "text_config.vocab_size"));
    assert_int_equal(t->max_position_embeddings,
                     num_at(j, "text_config.max_position_embeddings"));
    assert_true(t->rms_norm_eps == num_at(j, "text_config.rms_norm_eps"));
    assert_true(t->rope_theta == num_at(j, "text_config.rope_theta"));
    cJSON *sec = json_path(j, "text_config.rope_scaling.mrope_section");
    for (int i = 0; i < 3; i++)
        assert_int_equal(t->mrope_section[i], cJSON_GetArrayItem(sec, i)->valuedouble);
    assert_true(t->mrope_interleaved);
    assert_string_equal(t->rope_type, "default");
    assert_false(t->attention_bias);
    assert_int_equal(t->tie_word_embeddings,
                     cJSON_IsTrue(json_path(j, "tie_word_embeddings")));
    assert_string_equal(t->hidden_act, "silu");
    assert_int_equal(v->depth, num_at(j, "vision_config.depth"));
    assert_int_equal(v->hidden_size, num_at(j, "vision_config.hidden_size"));
    assert_int_equal(v->num_heads, num_at(j, "vision_config.num_heads"));
    assert_int_equal(v->head_dim, v->hidden_size / v->num_heads);
    assert_int_equal(v->intermediate_size, num_at(j, "vision_config.intermediate_size"));
    assert_int_equal(v->patch_size, num_at(j, "vision_config.patch_size"));
    assert_int_equal(v->temporal_patch_size, num_at(j, "vision_config.temporal_patch_size"));
    assert_int_equal(v->spatial_merge_size, num_at(j, "vision_config.spatial_merge_size"));
    assert_int_equal(v->in_channels, num_at(j, "vision_config.in_channels"));
    assert_int_equal(v->out_hidden_size, num_at(j, "vision_config.out_hidden_size"));
    assert_int_equal(v->num_position_embeddings,
                     num_at(j, "vision_config.num_position_embeddings"));
    cJSON *ds = json_path(j, "vision_config.deepstack_visual_indexes");
    assert_int_equal(v->num_deepstack, cJSON_GetArraySize(ds));
    for (int i = 0; i < v->num_deepstack; i++)
        assert_int_equal(v->deepstack_visual_indexes[i], cJSON_GetArrayItem(ds, i)->valuedouble);
    assert_string_equal(v->hidden_act, "gelu_pytorch_tanh");
    assert_int_equal(c->image_token_id, num_at(j, "image_token_id"));
    assert_int_equal(c->video_token_id, num_at(j, "video_token_id"));
    assert_int_equal(c->vision_start_token_id, num_at(j, "vision_start_token_id"));
    assert_int_equal(c->vision_end_token_id, num_at(j, "vision_end_token_id"));
    assert_string_equal(c->torch_dtype, json_path(j, "dtype")->valuestring);
    cJSON_Delete(j);
    free(text);

    /* Processor files: size from the files, the rest upstream defaults (absent keys). */
    snprintf(path, sizeof path, "%s/preprocessor_config.json", dir);
    text = read_text(path);
    j = cJSON_Parse(text);
    assert_int_equal(c->processor.image_min_pixels, num_at(j, "size.shortest_edge"));
    assert_int_equal(c->processor.image_max_pixels, num_at(j, "size.longest_edge"));
    cJSON_Delete(j);
    free(text);
    snprintf(path, sizeof path, "%s/video_preprocessor_config.json", dir);
    text = read_text(path);
    j = cJSON_Parse(text);
    assert_int_equal(c->processor.video_min_pixels, num_at(j, "size.shortest_edge"));
    assert_int_equal(c->processor.video_max_pixels, num_at(j, "size.longest_edge"));
    assert_null(json_path(j, "fps"));
    cJSON_Delete(j);
    free(text);
    assert_true(c->processor.video_fps == 2.0);
    assert_int_equal(c->processor.video_min_frames, 4);
    assert_int_equal(c->processor.video_max_frames, 768);
    for (int i = 0; i < 3; i++) {
        assert_true(c->processor.image_mean[i] == 0.5f && c->processor.image_std[i] == 0.5f);
        assert_true(c->processor.video_mean[i] == 0.5f && c->processor.video_std[i] == 0.5f);
    }
    assert_int_equal(c->processor.patch_size, 16);
    assert_int_equal(c->processor.merge_size, 2);
    /* generation_config.json names no eos id (nor does config.json). */
    assert_int_equal(c->num_eos, 0);
}

static void test_golden_dense(void **state)
{
    (void)state;
    model_config c;
    char err[512] = "";
    if (model_config_load(DENSE_DIR, &c, err, sizeof err) != 0)
        fail_msg("%s", err);
    check_against_golden(DENSE_DIR, &c);
    assert_int_equal(c.arch, MODEL_ARCH_DENSE);
    assert_true(c.text.tie_word_embeddings);
    assert_int_equal(c.text.num_experts, 0);
    assert_int_equal(c.text.num_moe_layers, 0);
    for (int i = 0; i < c.text.num_hidden_layers; i++)
        assert_false(model_config_layer_is_moe(&c, i));
}

static void test_golden_moe(void **state)
{
    (void)state;
    model_config c;
    char err[512] = "";
    if (model_config_load(MOE_DIR, &c, err, sizeof err) != 0)
        fail_msg("%s", err);
    check_against_golden(MOE_DIR, &c);
    char *text = read_text(MOE_DIR "/config.json");
    cJSON *j = cJSON_Parse(text);
    assert_int_equal(c.arch, MODEL_ARCH_MOE);
    assert_false(c.text.tie_word_embeddings);
    assert_int_equal(c.text.num_experts, num_at(j, "text_config.num_experts"));
    assert_int_equal(c.text.num_experts_per_tok, num_at(j, "text_config.num_experts_per_tok"));
    assert_int_equal(c.text.moe_intermediate_size,
                     num_at(j, "text_config.moe_intermediate_size"));
    assert_int_equal(c.text.decoder_sparse_step, num_at(j, "text_config.decoder_sparse_step"));
    assert_true(c.text.norm_topk_prob);
    /* decoder_sparse_step 1, mlp_only_layers []: every layer sparse */
    assert_int_equal(c.text.num_moe_layers, c.text.num_hidden_layers);
    for (int i = 0; i < c.text.num_hidden_layers; i++)
        assert_true(model_config_layer_is_moe(&c, i));
    assert_false(model_config_layer_is_moe(&c, c.text.num_hidden_layers));
    assert_false(model_config_layer_is_moe(&c, -1));
    cJSON_Delete(j);
    free(text);
}

static void test_defaults(void **state)
{
    (void)state;
    model_config c;
    char err[512] = "";
    /* Upstream's dense defaults (Qwen3VLTextConfig / Qwen3VLVisionConfig); only the vision
     * output width is given, since the defaults alone do not fit together. */
    const char *dense = "{\"model_type\": \"qwen3_vl\", \"text_config\": {},"
                        " \"vision_config\": {\"out_hidden_size\": 4096}}";
    if (model_config_parse_json(dense, "config.json", &c, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(c.text.vocab_size, 151936);
    assert_int_equal(c.text.hidden_size, 4096);
    assert_int_equal(c.text.intermediate_size, 22016);
    assert_int_equal(c.text.num_hidden_layers, 32);
    assert_int_equal(c.text.num_attention_heads, 32);
    assert_int_equal(c.text.num_key_value_heads, 32);
    assert_int_equal(c.text.head_dim, 128);
    assert_int_equal(c.text.max_position_embeddings, 128000);
    assert_true(c.text.rms_norm_eps == 1e-6);
    assert_true(c.text.rope_theta == 5000000.0);
    assert_int_equal(c.text.mrope_section[0], 24);
    assert_int_equal(c.text.mrope_section[1], 20);
    assert_int_equal(c.text.mrope_section[2], 20);
    assert_false(c.text.tie_word_embeddings);
    assert_int_equal(c.vision.depth, 27);
    assert_int_equal(c.vision.hidden_size, 1152);
    assert_int_equal(c.vision.num_heads, 16);
    assert_int_equal(c.vision.intermediate_size, 4304);
    assert_int_equal(c.vision.num_position_embeddings, 2304);
    assert_int_equal(c.vision.num_deepstack, 3);
    assert_int_equal(c.vision.deepstack_visual_indexes[2], 24);
    assert_int_equal(c.image_token_id, 151655);
    assert_int_equal(c.video_token_id, 151656);
    assert_int_equal(c.vision_start_token_id, 151652);
    assert_int_equal(c.vision_end_token_id, 151653);
    assert_string_equal(c.torch_dtype, "");
    assert_int_equal(c.num_eos, 0);
    /* processor defaults without any processor file */
    assert_int_equal(c.processor.image_min_pixels, 65536);
    assert_int_equal(c.processor.image_max_pixels, 16777216);
    assert_int_equal(c.processor.video_min_pixels, 131072);
    assert_int_equal(c.processor.video_max_pixels, 786432);
    assert_true(c.processor.video_fps == 2.0);
    assert_int_equal(c.processor.video_min_frames, 4);
    assert_int_equal(c.processor.video_max_frames, 768);
    /* generation defaults */
    assert_false(c.generation.do_sample);
    assert_int_equal(c.generation.top_k, 50);
    assert_int_equal(c.generation.bos_token_id, -1);

    /* MoE defaults (Qwen3VLMoeTextConfig): head_dim = hidden / heads when absent. */
    const char *moe = "{\"model_type\": \"qwen3_vl_moe\", \"text_config\": {\"hidden_size\": 1024,"
                      " \"num_attention_heads\": 8, \"num_hidden_layers\": 6,"
                      " \"rope_scaling\": {\"mrope_section\": [24, 20, 20]}},"
                      " \"vision_config\": {\"out_hidden_size\": 1024}}";
    if (model_config_parse_json(moe, "config.json", &c, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(c.text.head_dim, 128);
    assert_int_equal(c.text.num_key_value_heads, 8);
    assert_int_equal(c.text.num_experts, 60);
    assert_int_equal(c.text.num_experts_per_tok, 4);
    assert_int_equal(c.text.moe_intermediate_size, 1408);
    assert_int_equal(c.text.intermediate_size, 5632);
    assert_int_equal(c.text.decoder_sparse_step, 1);
    assert_true(c.text.norm_topk_prob);
    assert_int_equal(c.text.num_moe_layers, 6);
}

static void test_moe_layer_rule(void **state)
{
    (void)state;
    model_config c;
    char err[512] = "";
    /* (i + 1) % 2 == 0 -> layers 1, 3, 5; mlp_only_layers removes 3. */
    const char *text = "{\"model_type\": \"qwen3_vl_moe\", \"text_config\": {\"hidden_size\": 256,"
                       " \"num_attention_heads\": 4, \"head_dim\": 16, \"num_hidden_layers\": 6,"
                       " \"decoder_sparse_step\": 2, \"mlp_only_layers\": [3], \"num_experts\": 4,"
                       " \"num_experts_per_tok\": 2, \"rope_scaling\": {\"mrope_section\": [4, 2, 2]}},"
                       " \"vision_config\": {\"out_hidden_size\": 256}}";
    if (model_config_parse_json(text, "config.json", &c, err, sizeof err) != 0)
        fail_msg("%s", err);
    static const bool expect[6] = { false, true, false, false, false, true };
    for (int i = 0; i < 6; i++)
        assert_int_equal(c.text.layer_is_moe[i], expect[i]);
    assert_int_equal(c.text.num_moe_layers, 2);

    /* num_experts 0: a MoE model_type with only dense layers */
    char *zero = mutate(text, "text_config.num_experts", cJSON_CreateNumber(0));
    if (model_config_parse_json(zero, "config.json", &c, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(c.text.num_moe_layers, 0);
    free(zero);
}

static void test_tie_and_rope_variants(void **state)
{
    (void)state;
    char *golden = read_text(DENSE_DIR "/config.json");
    model_config c;
    char err[512] = "";
    /* top-level wins over text_config */
    char *a = mutate(golden, "tie_word_embeddings", cJSON_CreateFalse());
    assert_int_equal(model_config_parse_json(a, "config.json", &c, err, sizeof err), 0);
    assert_false(c.text.tie_word_embeddings);
    /* without the top-level key, text_config's applies */
    char *b = mutate(golden, "tie_word_embeddings", NULL);
    assert_int_equal(model_config_parse_json(b, "config.json", &c, err, sizeof err), 0);
    assert_true(c.text.tie_word_embeddings);
    /* neither: upstream default false */
    char *b2 = mutate(b, "text_config.tie_word_embeddings", NULL);
    assert_int_equal(model_config_parse_json(b2, "config.json", &c, err, sizeof err), 0);
    assert_false(c.text.tie_word_embeddings);
    /* v5 layout: rope_parameters holds rope_theta and the sections */
    cJSON *rp = cJSON_Parse("{\"rope_type\": \"default\", \"rope_theta\": 1000000.0,"
                            " \"mrope_section\": [2, 3, 3], \"mrope_interleaved\": true}");
    char *d1 = mutate(golden, "text_config.rope_scaling", NULL);
    char *d2 = mutate(d1, "text_config.rope_parameters", rp);
    if (model_config_parse_json(d2, "config.json", &c, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_true(c.text.rope_theta == 1000000.0);
    assert_int_equal(c.text.mrope_section[0], 2);
    assert_int_equal(c.text.mrope_section[1], 3);
    /* torch_dtype (older spelling) inside text_config */
    char *e1 = mutate(golden, "dtype", NULL);
    char *e2 = mutate(e1, "text_config.torch_dtype", cJSON_CreateString("float16"));
    assert_int_equal(model_config_parse_json(e2, "config.json", &c, err, sizeof err), 0);
    assert_string_equal(c.torch_dtype, "float16");
    /* eos ids from config.json when there is no generation_config.json */
    char *f1 = mutate(golden, "text_config.eos_token_id", cJSON_CreateNumber(151645));
    assert_int_equal(model_config_parse_json(f1, "config.json", &c, err, sizeof err), 0);
    assert_int_equal(c.num_eos, 1);
    assert_int_equal(c.eos_token_ids[0], 151645);
    free(a);
    free(b);
    free(b2);
    free(d1);
    free(d2);
    free(e1);
    free(e2);
    free(f1);
    free(golden);
}

static void test_config_errors(void **state)
{
    (void)state;
    char *g = read_text(DENSE_DIR "/config.json");
    char *t;
#define CASE(path, item, ...)                                                              \
    do {                                                                                   \
        t = mutate(g, path, item);                                                         \
        expect_parse_error(t, __VA_ARGS__, NULL);                                          \
        free(t);                                                                           \
    } while (0)
    CASE("text_config", NULL, "text_config: missing");
    CASE("vision_config", NULL, "vision_config: missing");
    CASE("text_config", cJSON_CreateString("x"), "text_config: expected an object");
    CASE("model_type", cJSON_CreateString("llava"), "model_type", "unknown \"llava\"",
         "\"qwen3_vl\"");
    CASE("model_type", NULL, "model_type: missing");
    CASE("model_type", cJSON_CreateNumber(3), "model_type: expected a string, found 3");
    CASE("text_config.hidden_size", cJSON_CreateString("64"), "text_config.hidden_size",
         "expected an integer", "found the string \"64\"");
    CASE("text_config.hidden_size", cJSON_CreateNumber(64.5), "text_config.hidden_size",
         "expected an integer", "64.5");
    CASE("text_config.num_hidden_layers", cJSON_CreateNumber(0),
         "text_config.num_hidden_layers: expected an integer >= 1, found 0");
    CASE("text_config.num_hidden_layers", cJSON_CreateNumber(1000), "num_hidden_layers",
         "at most 256");
    CASE("tie_word_embeddings", cJSON_CreateString("yes"),
         "tie_word_embeddings: expected true or false");
    CASE("text_config.rms_norm_eps", cJSON_CreateNumber(-1), "text_config.rms_norm_eps",
         "positive number");
    CASE("text_config.rope_scaling.mrope_section", cJSON_CreateIntArray((int[]){ 4, 2, 4 }, 3),
         "mrope_section", "[4, 2, 4] sums to 10", "expected head_dim/2 = 8");
    CASE("text_config.rope_scaling.mrope_section", cJSON_CreateIntArray((int[]){ 4, 4 }, 2),
         "mrope_section", "expected 3 integers");
    CASE("text_config.rope_scaling.rope_type", cJSON_CreateString("yarn"), "rope_type",
         "\"yarn\" is not supported");
    CASE("text_config.num_key_value_heads", cJSON_CreateNumber(3), "num_key_value_heads",
         "does not divide");
    CASE("text_config.hidden_act", cJSON_CreateString("gelu"), "text_config.hidden_act",
         "expected \"silu\"");
    CASE("vision_config.hidden_act", cJSON_CreateString("relu"), "vision_config.hidden_act");
    CASE("vision_config.deepstack_visual_indexes", cJSON_CreateIntArray((int[]){ 1, 4 }, 2),
         "vision_config.deepstack_visual_indexes[1]", "from 0 to 3");
    CASE("vision_config.num_position_embeddings", cJSON_CreateNumber(60),
         "num_position_embeddings", "square");
    CASE("vision_config.num_heads", cJSON_CreateNumber(3), "vision_config.num_heads");
    CASE("vision_config.out_hidden_size", cJSON_CreateNumber(128), "out_hidden_size",
         "text_config.hidden_size 64");
    CASE("image_token_id", cJSON_CreateNumber(200000), "image_token_id",
         "outside the vocabulary");
    CASE("text_config.eos_token_id", cJSON_CreateString("x"), "text_config.eos_token_id",
         "an integer or a list");
#undef CASE
    expect_parse_error("{\"model_type\": \"qwen3_vl\",", "not valid JSON", "line 1", NULL);
    expect_parse_error("[1, 2]", "JSON object", NULL);

    char *m = read_text(MOE_DIR "/config.json");
    t = mutate(m, "text_config.num_experts_per_tok", cJSON_CreateNumber(9));
    expect_parse_error(t, "num_experts_per_tok: 9", "at most num_experts (8)", NULL);
    free(t);
    t = mutate(m, "text_config.mlp_only_layers", cJSON_CreateIntArray((int[]){ 7 }, 1));
    expect_parse_error(t, "text_config.mlp_only_layers[0]", "from 0 to 3", NULL);
    free(t);
    t = mutate(m, "text_config.decoder_sparse_step", cJSON_CreateNumber(0));
    expect_parse_error(t, "decoder_sparse_step", ">= 1", NULL);
    free(t);
    free(m);
    free(g);
}

/* A checkpoint folder in the temp dir: golden config.json plus the given extra files. */
static void make_dir(const char *name, char *dir, size_t len)
{
    snprintf(dir, len, "%s/%s", tmp_root, name);
    assert_int_equal(mkdir(dir, 0755), 0);
    char *cfg = read_text(DENSE_DIR "/config.json");
    write_text(dir, "config.json", cfg);
    free(cfg);
}

static void expect_load_error(const char *dir, const char *file, const char *what)
{
    model_config c;
    char err[512] = "";
    assert_int_not_equal(model_config_load(dir, &c, err, sizeof err), 0);
    char fpath[512];
    snprintf(fpath, sizeof fpath, "%s/%s", dir, file);
    if (!strstr(err, fpath) || !strstr(err, what))
        fail_msg("error '%s' should name %s and say '%s'", err, fpath, what);
}

static void test_load_files(void **state)
{
    (void)state;
    char dir[256];
    model_config c;
    char err[512] = "";

    make_dir("eos_list", dir, sizeof dir);
    write_text(dir, "generation_config.json",
               "{\"bos_token_id\": 151643, \"do_sample\": true, \"eos_token_id\": [151645, 151643],"
               " \"pad_token_id\": 151643, \"temperature\": 0.7, \"top_k\": 20, \"top_p\": 0.8,"
               " \"repetition_penalty\": 1.05}");
    if (model_config_load(dir, &c, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(c.num_eos, 2);
    assert_int_equal(c.eos_token_ids[0], 151645);
    assert_int_equal(c.eos_token_ids[1], 151643);
    assert_true(c.generation.do_sample);
    assert_true(c.generation.temperature == 0.7);
    assert_int_equal(c.generation.top_k, 20);
    assert_true(c.generation.top_p == 0.8);
    assert_true(c.generation.repetition_penalty == 1.05);
    assert_int_equal(c.generation.bos_token_id, 151643);
    assert_int_equal(c.generation.pad_token_id, 151643);

    make_dir("eos_int", dir, sizeof dir);
    write_text(dir, "generation_config.json", "{\"eos_token_id\": 151645}");
    if (model_config_load(dir, &c, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(c.num_eos, 1);
    assert_int_equal(c.eos_token_ids[0], 151645);

    /* video processor values, incl. legacy min/max_pixels and fps/frames keys */
    make_dir("video", dir, sizeof dir);
    write_text(dir, "video_preprocessor_config.json",
               "{\"min_pixels\": 8192, \"max_pixels\": 65536, \"fps\": 1.5, \"min_frames\": 2,"
               " \"max_frames\": 100, \"patch_size\": 16, \"image_mean\": [0.1, 0.2, 0.3]}");
    write_text(dir, "preprocessor_config.json",
               "{\"size\": {\"shortest_edge\": 4096, \"longest_edge\": 1048576}}");
    if (model_config_load(dir, &c, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(c.processor.video_min_pixels, 8192);
    assert_int_equal(c.processor.video_max_pixels, 65536);
    assert_true(c.processor.video_fps == 1.5);
    assert_int_equal(c.processor.video_min_frames, 2);
    assert_int_equal(c.processor.video_max_frames, 100);
    assert_true(c.processor.video_mean[2] == 0.3f);
    assert_true(c.processor.image_mean[2] == 0.5f);
    assert_int_equal(c.processor.image_min_pixels, 4096);
    assert_int_equal(c.processor.image_max_pixels, 1048576);

    /* errors name the file */
    make_dir("bad_gen", dir, sizeof dir);
    write_text(dir, "generation_config.json", "{\"eos_token_id\": \"<|im_end|>\"}");
    expect_load_error(dir, "generation_config.json", "eos_token_id: expected an integer or a list");
    make_dir("bad_gen_json", dir, sizeof dir);
    write_text(dir, "generation_config.json", "{\"eos_token_id\": [1,}");
    expect_load_error(dir, "generation_config.json", "not valid JSON");
    make_dir("bad_eos_range", dir, sizeof dir);
    write_text(dir, "generation_config.json", "{\"eos_token_id\": [151645, 999999]}");
    expect_load_error(dir, "generation_config.json", "eos_token_id[1]: 999999 is outside");
    make_dir("bad_size", dir, sizeof dir);
    write_text(dir, "preprocessor_config.json", "{\"size\": {\"shortest_edge\": 4096}}");
    expect_load_error(dir, "preprocessor_config.json", "size.longest_edge: missing");
    make_dir("bad_patch", dir, sizeof dir);
    write_text(dir, "video_preprocessor_config.json", "{\"patch_size\": 14}");
    expect_load_error(dir, "video_preprocessor_config.json",
                      "patch_size: 14, expected 16 to match config.json vision_config.patch_size");
    make_dir("bad_frames", dir, sizeof dir);
    write_text(dir, "video_preprocessor_config.json", "{\"min_frames\": 10, \"max_frames\": 4}");
    expect_load_error(dir, "video_preprocessor_config.json", "min_frames 10 exceeds max_frames 4");
    make_dir("bad_std", dir, sizeof dir);
    write_text(dir, "preprocessor_config.json", "{\"image_std\": [0.5, 0, 0.5]}");
    expect_load_error(dir, "preprocessor_config.json", "image_std[1]");

    snprintf(dir, sizeof dir, "%s/no_such_dir", tmp_root);
    expect_load_error(dir, "config.json", "missing");
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
        cmocka_unit_test(test_golden_dense),
        cmocka_unit_test(test_golden_moe),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_moe_layer_rule),
        cmocka_unit_test(test_tie_and_rope_variants),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_load_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
