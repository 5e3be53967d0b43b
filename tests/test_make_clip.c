/* Tests of vigil-make-clip (tools/vigil_make_clip.c): the synthetic clips must follow the demo
 * model's training distribution (demo/TASK.md), or the demo model's answers mean nothing.
 *
 * The checks run the real program and read its output back independently:
 *   - raw rgb24 frames are compared pixel by pixel with a scene painted here from the truth file
 *     with this file's own centre-of-pixel rule, and the noise is measured;
 *   - the MP4 is probed and decoded with the ffmpeg CLI, and the colour of every visible shape, the
 *     background level, the change frame and the appear frame are read from the decoded pixels;
 *   - many seeds' truth files are checked against the distribution's rules (sizes, speeds, bounds,
 *     linear motion, separation, question strings, answers);
 *   - same seed, same bytes; bad options fail with a message naming the option. */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/support/media.h"

#define MAX_OBJ 2

static char g_dir[256];  /* scratch directory, removed at the end */
static char g_bin[512];  /* the vigil-make-clip under test */

/* ---------------------------------------------------------------------------------------------
 * The distribution, written out again here so the test does not trust the generator's tables. */

static const char *const k_colors[4] = {"red", "green", "blue", "yellow"};
static const int k_palette[4][3] = {{220, 40, 40}, {40, 180, 60}, {50, 90, 220}, {230, 210, 40}};
static const char *const k_shapes[3] = {"circle", "square", "triangle"};
static const char *const k_dirs[4] = {"left", "right", "up", "down"};
static const int k_dirvec[4][2] = {{-1, 0}, {1, 0}, {0, -1}, {0, 1}};

static int name_index(const char *const *names, int n, const char *s)
{
    for (int i = 0; s && i < n; i++)
        if (strcmp(names[i], s) == 0)
            return i;
    return -1;
}

static bool inside(int shape, double cx, double cy, double d, double px, double py)
{
    double r = d / 2.0;
    if (shape == 0)
        return (px - cx) * (px - cx) + (py - cy) * (py - cy) <= r * r;
    if (shape == 1)
        return fabs(px - cx) <= r && fabs(py - cy) <= r;
    double t = (py - (cy - r)) / d;
    return t >= 0.0 && t <= 1.0 && fabs(px - cx) <= r * t;
}

/* Pixel (x, y) is inside for all points within m px (checked on a 3x3 grid): the shape's core,
 * away from the chroma blur of yuv420p at the edges. With all = false: inside for any of them. */
static bool inside_margin(int shape, double cx, double cy, double d, int x, int y, double m, bool all)
{
    for (int dy = -1; dy <= 1; dy++)
        for (int dx = -1; dx <= 1; dx++) {
            bool in = inside(shape, cx, cy, d, x + 0.5 + dx * m, y + 0.5 + dy * m);
            if (all && !in)
                return false;
            if (!all && in)
                return true;
        }
    return all;
}

/* ---------------------------------------------------------------------------------------------
 * Truth file. */

typedef struct {
    int shape, color, dir;
    double size, speed, start[2];
    int visible_from;
    bool bounces;
    int *colors; /* per frame */
    double *cx, *cy;
} t_obj;

typedef struct {
    char type[32];
    int frames, fps, width, height, bg;
    double sigma;
    int change_frame, appear_frame; /* -1 when absent */
    int nobj;
    t_obj obj[MAX_OBJ];
    char question[96], expected[48];
} truth;

static void truth_free(truth *t)
{
    for (int i = 0; i < t->nobj; i++) {
        free(t->obj[i].colors);
        free(t->obj[i].cx);
        free(t->obj[i].cy);
    }
    memset(t, 0, sizeof *t);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *nb = realloc(buf, 2 * cap + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf)
        buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

static double jnum(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v))
        fail_msg("truth: field '%s' missing or not a number", key);
    return v->valuedouble;
}

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v))
        fail_msg("truth: field '%s' missing or not a string", key);
    return v->valuestring;
}

static cJSON *json_load(const char *path)
{
    char *text = slurp(path, NULL);
    if (!text)
        fail_msg("cannot read truth file %s", path);
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root)
        fail_msg("truth file %s is not valid JSON", path);
    return root;
}

static void truth_from_json(const cJSON *root, truth *t)
{
    memset(t, 0, sizeof *t);
    snprintf(t->type, sizeof t->type, "%s", jstr(root, "type"));
    t->frames = (int)jnum(root, "frames");
    t->fps = (int)jnum(root, "fps");
    t->width = (int)jnum(root, "width");
    t->height = (int)jnum(root, "height");
    assert_true(t->frames >= 1 && t->width >= 16 && t->height >= 16 && t->fps >= 1);
    const cJSON *scene = cJSON_GetObjectItemCaseSensitive(root, "scene");
    assert_non_null(scene);
    t->bg = (int)jnum(scene, "bg");
    t->sigma = jnum(scene, "noise_sigma");
    const cJSON *cf = cJSON_GetObjectItemCaseSensitive(scene, "change_frame");
    t->change_frame = cJSON_IsNumber(cf) ? cf->valueint : -1;
    const cJSON *af = cJSON_GetObjectItemCaseSensitive(scene, "appear_frame");
    t->appear_frame = cJSON_IsNumber(af) ? af->valueint : -1;
    const cJSON *objs = cJSON_GetObjectItemCaseSensitive(scene, "objects");
    assert_true(cJSON_IsArray(objs));
    int n = cJSON_GetArraySize(objs);
    assert_true(n >= 1 && n <= MAX_OBJ);
    for (int i = 0; i < n; i++) {
        const cJSON *jo = cJSON_GetArrayItem(objs, i);
        t_obj *o = &t->obj[i];
        t->nobj = i + 1;
        o->shape = name_index(k_shapes, 3, jstr(jo, "shape"));
        o->color = name_index(k_colors, 4, jstr(jo, "color"));
        o->dir = name_index(k_dirs, 4, jstr(jo, "dir"));
        assert_true(o->shape >= 0 && o->color >= 0 && o->dir >= 0);
        o->size = jnum(jo, "size");
        o->speed = jnum(jo, "speed");
        o->visible_from = (int)jnum(jo, "visible_from_frame");
        o->bounces = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(jo, "bounces"));
        const cJSON *start = cJSON_GetObjectItemCaseSensitive(jo, "start");
        assert_true(cJSON_IsArray(start) && cJSON_GetArraySize(start) == 2);
        o->start[0] = cJSON_GetArrayItem(start, 0)->valuedouble;
        o->start[1] = cJSON_GetArrayItem(start, 1)->valuedouble;
        const cJSON *cpf = cJSON_GetObjectItemCaseSensitive(jo, "colors_per_frame");
        const cJSON *cen = cJSON_GetObjectItemCaseSensitive(jo, "centers");
        assert_int_equal(cJSON_GetArraySize(cpf), t->frames);
        assert_int_equal(cJSON_GetArraySize(cen), t->frames);
        o->colors = calloc((size_t)t->frames, sizeof *o->colors);
        o->cx = calloc((size_t)t->frames, sizeof *o->cx);
        o->cy = calloc((size_t)t->frames, sizeof *o->cy);
        assert_true(o->colors && o->cx && o->cy);
        for (int f = 0; f < t->frames; f++) {
            o->colors[f] = name_index(k_colors, 4, cJSON_GetArrayItem(cpf, f)->valuestring);
            assert_true(o->colors[f] >= 0);
            const cJSON *c = cJSON_GetArrayItem(cen, f);
            assert_true(cJSON_IsArray(c) && cJSON_GetArraySize(c) == 2);
            o->cx[f] = cJSON_GetArrayItem(c, 0)->valuedouble;
            o->cy[f] = cJSON_GetArrayItem(c, 1)->valuedouble;
        }
    }
    const cJSON *qs = cJSON_GetObjectItemCaseSensitive(root, "questions");
    assert_true(cJSON_IsArray(qs) && cJSON_GetArraySize(qs) == 1);
    const cJSON *q = cJSON_GetArrayItem(qs, 0);
    assert_string_equal(jstr(q, "type"), t->type);
    snprintf(t->question, sizeof t->question, "%s", jstr(q, "question"));
    snprintf(t->expected, sizeof t->expected, "%s", jstr(q, "expected"));
}

static void truth_load(const char *path, truth *t)
{
    cJSON *root = json_load(path);
    truth_from_json(root, t);
    cJSON_Delete(root);
}

/* ---------------------------------------------------------------------------------------------
 * Running the program and ffmpeg. */

static int run_status(const char *cmd)
{
    int st = system(cmd);
    if (st == -1 || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

/* Runs vigil-make-clip with ARGS; stdout goes to OUT_PATH (or /dev/null), stderr to a file whose
 * text is returned in err (if not NULL). Returns the exit status. */
static int make_clip(const char *args, const char *out_path, char *err, size_t errlen)
{
    char cmd[2048], errpath[300];
    snprintf(errpath, sizeof errpath, "%s/stderr.txt", g_dir);
    snprintf(cmd, sizeof cmd, "%s %s >%s 2>%s", g_bin, args, out_path ? out_path : "/dev/null",
             errpath);
    int rc = run_status(cmd);
    char *text = slurp(errpath, NULL);
    if (err && errlen) {
        snprintf(err, errlen, "%s", text ? text : "");
    } else if (rc != 0 && text) {
        print_message("vigil-make-clip %s: %s", args, text);
    }
    free(text);
    return rc;
}

static void path_in(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", g_dir, name);
}

/* Generates NAME.json (+ NAME.mp4 when mp4, + NAME.rgb raw frames when raw) and loads the truth. */
static void generate(const char *name, const char *args, bool mp4, bool raw, truth *t)
{
    char all[1024], json[300], vid[300], rgb[300];
    path_in(json, sizeof json, name);
    strcat(json, ".json");
    path_in(vid, sizeof vid, name);
    strcat(vid, ".mp4");
    path_in(rgb, sizeof rgb, name);
    strcat(rgb, ".rgb");
    int n = snprintf(all, sizeof all, "%s --truth %s", args, json);
    if (mp4)
        n += snprintf(all + n, sizeof all - n, " --out %s", vid);
    if (raw)
        snprintf(all + n, sizeof all - n, " --raw");
    int rc = make_clip(all, raw ? rgb : NULL, NULL, 0);
    if (rc != 0)
        fail_msg("vigil-make-clip %s exited with %d", all, rc);
    truth_load(json, t);
}

static uint8_t *load_frames(const char *path, const truth *t)
{
    size_t len = 0;
    char *buf = slurp(path, &len);
    if (!buf)
        fail_msg("cannot read %s", path);
    size_t want = (size_t)t->frames * t->width * t->height * 3;
    if (len != want) {
        free(buf);
        fail_msg("%s: %zu bytes, expected %d frames of %dx%d rgb24 = %zu", path, len, t->frames,
                 t->width, t->height, want);
    }
    return (uint8_t *)buf;
}

typedef struct {
    int width, height, frames;
    char rate[32], codec[32], pix_fmt[32];
} probe_info;

/* ffprobe with frame counting: the stream as a player would see it. */
static void probe(const char *mp4, probe_info *p)
{
    memset(p, 0, sizeof *p);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "ffprobe -v error -select_streams v:0 -count_frames -show_entries "
             "stream=codec_name,width,height,pix_fmt,r_frame_rate,nb_read_frames -of default=nw=1 %s",
             mp4);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    char line[256];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq = '\0';
        const char *v = eq + 1;
        if (!strcmp(line, "width"))
            p->width = atoi(v);
        else if (!strcmp(line, "height"))
            p->height = atoi(v);
        else if (!strcmp(line, "nb_read_frames"))
            p->frames = atoi(v);
        else if (!strcmp(line, "r_frame_rate"))
            snprintf(p->rate, sizeof p->rate, "%s", v);
        else if (!strcmp(line, "codec_name"))
            snprintf(p->codec, sizeof p->codec, "%s", v);
        else if (!strcmp(line, "pix_fmt"))
            snprintf(p->pix_fmt, sizeof p->pix_fmt, "%s", v);
    }
    assert_int_equal(pclose(f), 0);
}

/* Decodes NAME.mp4 to rgb24 with the ffmpeg CLI and checks it has the truth's frames and size. */
static uint8_t *decode(const char *name, const truth *t)
{
    char vid[300], rgb[300], cmd[1024];
    path_in(vid, sizeof vid, name);
    strcat(vid, ".mp4");
    path_in(rgb, sizeof rgb, name);
    strcat(rgb, ".dec.rgb");

    probe_info p;
    probe(vid, &p);
    assert_string_equal(p.codec, "h264");
    assert_string_equal(p.pix_fmt, "yuv420p");
    assert_int_equal(p.width, t->width);
    assert_int_equal(p.height, t->height);
    assert_int_equal(p.frames, t->frames);
    char rate[32];
    snprintf(rate, sizeof rate, "%d/1", t->fps);
    assert_string_equal(p.rate, rate);

    snprintf(cmd, sizeof cmd, "ffmpeg -v error -nostdin -y -i %s -f rawvideo -pix_fmt rgb24 %s", vid,
             rgb);
    assert_int_equal(run_status(cmd), 0);
    return load_frames(rgb, t);
}

/* ---------------------------------------------------------------------------------------------
 * Measurements on frames. */

/* Base colour (before noise) of every pixel of frame f, painted from the truth. */
static void paint(const truth *t, int f, int *base)
{
    size_t n = (size_t)t->width * t->height;
    for (size_t i = 0; i < n * 3; i++)
        base[i] = t->bg;
    for (int k = 0; k < t->nobj; k++) {
        const t_obj *o = &t->obj[k];
        if (f < o->visible_from)
            continue;
        const int *rgb = k_palette[o->colors[f]];
        for (int y = 0; y < t->height; y++)
            for (int x = 0; x < t->width; x++)
                if (inside(o->shape, o->cx[f], o->cy[f], o->size, x + 0.5, y + 0.5))
                    memcpy(base + ((size_t)y * t->width + x) * 3, rgb, 3 * sizeof *rgb);
    }
}

/* Mean colour over the core of object k in frame f (excluding anything the other object covers
 * or nearly covers). Returns the pixel count. */
static int core_mean(const truth *t, const uint8_t *frame, int k, int f, double mean[3], double m)
{
    const t_obj *o = &t->obj[k];
    double sum[3] = {0, 0, 0};
    int n = 0;
    for (int y = 0; y < t->height; y++)
        for (int x = 0; x < t->width; x++) {
            if (!inside_margin(o->shape, o->cx[f], o->cy[f], o->size, x, y, m, true))
                continue;
            bool covered = false;
            for (int j = 0; j < t->nobj; j++) {
                const t_obj *q = &t->obj[j];
                if (j != k && f >= q->visible_from &&
                    inside_margin(q->shape, q->cx[f], q->cy[f], q->size, x, y, m, false))
                    covered = true;
            }
            if (covered)
                continue;
            const uint8_t *p = frame + ((size_t)y * t->width + x) * 3;
            for (int c = 0; c < 3; c++)
                sum[c] += p[c];
            n++;
        }
    for (int c = 0; c < 3; c++)
        mean[c] = n ? sum[c] / n : 0.0;
    return n;
}

static int nearest_palette(const double rgb[3])
{
    int best = -1;
    double bd = 1e30;
    for (int i = 0; i < 4; i++) {
        double d = 0;
        for (int c = 0; c < 3; c++)
            d += (rgb[c] - k_palette[i][c]) * (rgb[c] - k_palette[i][c]);
        if (d < bd) {
            bd = d;
            best = i;
        }
    }
    return best;
}

/* Mean level of the pixels at least m px from every visible shape. */
static double background_mean(const truth *t, const uint8_t *frame, int f, double m)
{
    double sum = 0;
    long n = 0;
    for (int y = 0; y < t->height; y++)
        for (int x = 0; x < t->width; x++) {
            bool near = false;
            for (int k = 0; k < t->nobj && !near; k++) {
                const t_obj *o = &t->obj[k];
                near = f >= o->visible_from &&
                       inside_margin(o->shape, o->cx[f], o->cy[f], o->size, x, y, m, false);
            }
            if (near)
                continue;
            const uint8_t *p = frame + ((size_t)y * t->width + x) * 3;
            sum += p[0] + p[1] + p[2];
            n += 3;
        }
    assert_true(n > 0);
    return sum / n;
}

static double max_abs3(const double a[3], const int b[3])
{
    double m = 0;
    for (int c = 0; c < 3; c++)
        m = fmax(m, fabs(a[c] - b[c]));
    return m;
}

/* Every decoded frame: each visible shape's core has its truth colour, the background its level. */
static void check_decoded(const truth *t, const uint8_t *frames, double *worst_color, double *worst_bg)
{
    size_t fsz = (size_t)t->width * t->height * 3;
    for (int f = 0; f < t->frames; f++) {
        const uint8_t *fr = frames + f * fsz;
        for (int k = 0; k < t->nobj; k++) {
            const t_obj *o = &t->obj[k];
            if (f < o->visible_from)
                continue;
            double mean[3];
            int n = core_mean(t, fr, k, f, mean, 3.0);
            if (n < 20)
                fail_msg("frame %d object %d: only %d core pixels", f, k, n);
            int got = nearest_palette(mean);
            double dev = max_abs3(mean, k_palette[o->colors[f]]);
            if (got != o->colors[f] || dev > 12.0)
                fail_msg("frame %d object %d: decoded core mean (%.1f,%.1f,%.1f) is %s, %.1f off; "
                         "truth says %s", f, k, mean[0], mean[1], mean[2], k_colors[got], dev,
                         k_colors[o->colors[f]]);
            *worst_color = fmax(*worst_color, dev);
        }
        double bg = background_mean(t, fr, f, 4.0);
        if (fabs(bg - t->bg) > 2.0)
            fail_msg("frame %d: background mean %.2f, truth bg %d", f, bg, t->bg);
        *worst_bg = fmax(*worst_bg, fabs(bg - t->bg));
    }
}

/* ---------------------------------------------------------------------------------------------
 * Tests. */

/* Raw frames against the scene painted here: every pixel within 7 sigma of its base colour (the
 * classes are >= 120 apart on some channel, so one wrong pixel of geometry fails), and the noise
 * is zero-mean with the truth's sigma. */
static void test_raw_frames_match_painted_scene(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"raw_color", "--type color --seed 11"},
        {"raw_count", "--type count --seed 12 --count 2 --shapes triangle,square"},
        {"raw_now", "--type color_now --seed 13 --shapes circle"},
        {"raw_appear", "--type appear --seed 14 --size 96x160"},
        {"raw_odd", "--type color --seed 15 --size 97x61 --shapes triangle"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        truth t;
        generate(cases[c][0], cases[c][1], false, true, &t);
        char rgb[300];
        path_in(rgb, sizeof rgb, cases[c][0]);
        strcat(rgb, ".rgb");
        uint8_t *frames = load_frames(rgb, &t);
        size_t fsz = (size_t)t.width * t.height * 3;
        int *base = malloc(fsz * sizeof *base);
        assert_non_null(base);
        double sum = 0, sum2 = 0;
        long n = 0;
        long shape_px = 0;
        for (int f = 0; f < t.frames; f++) {
            paint(&t, f, base);
            const uint8_t *fr = frames + f * fsz;
            for (size_t i = 0; i < fsz; i++) {
                double r = (double)fr[i] - base[i];
                if (fabs(r) > 7.0 * t.sigma + 1.0)
                    fail_msg("%s frame %d pixel (%zu,%zu) channel %zu: %d, painted base %d, sigma %.2f",
                             cases[c][0], f, (i / 3) % t.width, (i / 3) / t.width, i % 3, fr[i],
                             base[i], t.sigma);
                if (base[i] != t.bg)
                    shape_px++;
                if (fr[i] == 0 || fr[i] == 255)
                    continue; /* clipped: not a sample of the noise */
                sum += r;
                sum2 += r * r;
                n++;
            }
        }
        assert_true(shape_px > 0);
        double mean = sum / n, sd = sqrt(sum2 / n - mean * mean);
        double want = sqrt(t.sigma * t.sigma + 1.0 / 12.0); /* rounding adds 1/12 */
        if (fabs(mean) > 0.05 || fabs(sd / want - 1.0) > 0.03)
            fail_msg("%s: noise mean %.3f sd %.3f, expected 0 and %.3f", cases[c][0], mean, sd, want);
        print_message("%s: %dx%d, %d frames, noise sd %.3f (truth %.3f)\n", cases[c][0], t.width,
                      t.height, t.frames, sd, want);
        free(base);
        free(frames);
        truth_free(&t);
    }
}

/* Consistency of one truth file with the rules of TASK.md sections 1 and 2 (2 fps clips). */
static void check_truth_rules(const truth *t, const char *type)
{
    assert_string_equal(t->type, type);
    assert_true(t->bg >= 30 && t->bg <= 60);
    assert_true(t->sigma >= 2.0 && t->sigma <= 6.0);
    double cap = 0.42 * fmin(t->width, t->height);
    for (int k = 0; k < t->nobj; k++) {
        const t_obj *o = &t->obj[k];
        assert_true(o->size >= fmin(30.0, cap) - 1e-9 && o->size <= fmin(45.0, cap) + 1e-9);
        int axis = k_dirvec[o->dir][0] ? 0 : 1;
        double extent = axis == 0 ? t->width : t->height;
        double vcap = (extent - o->size - 4.0) / (t->frames - 1);
        assert_true(o->speed >= 2.5 - 1e-9 && o->speed <= fmax(2.5, fmin(6.0, vcap)) + 1e-9);
        assert_false(o->bounces);
        double lo = 2.0 + o->size / 2.0;
        for (int f = 0; f < t->frames; f++) {
            double ex = o->start[0] + k_dirvec[o->dir][0] * o->speed * f;
            double ey = o->start[1] + k_dirvec[o->dir][1] * o->speed * f;
            if (fabs(o->cx[f] - ex) > 1e-6 || fabs(o->cy[f] - ey) > 1e-6)
                fail_msg("seed clip %s: object %d frame %d centre (%.3f,%.3f) is off the line "
                         "(%.3f,%.3f)", type, k, f, o->cx[f], o->cy[f], ex, ey);
            assert_true(o->cx[f] >= lo - 1e-6 && o->cx[f] <= t->width - lo + 1e-6);
            assert_true(o->cy[f] >= lo - 1e-6 && o->cy[f] <= t->height - lo + 1e-6);
        }
        for (int f = 0; f < t->frames; f++)
            assert_int_equal(o->colors[f], (t->change_frame >= 0 && f >= t->change_frame)
                                               ? o->colors[t->frames - 1] : o->color);
    }
    if (t->nobj == 2) {
        const t_obj *a = &t->obj[0], *b = &t->obj[1];
        assert_false(a->color == b->color && a->shape == b->shape);
        double min_d = 1.15 * (a->size + b->size) / 2.0 + 3.0;
        for (int f = 0; f < t->frames; f++)
            if (f >= a->visible_from && f >= b->visible_from)
                assert_true(hypot(a->cx[f] - b->cx[f], a->cy[f] - b->cy[f]) > min_d);
    }
    const t_obj *o = &t->obj[0];
    char want[64];
    if (!strcmp(type, "color")) {
        assert_int_equal(t->nobj, 1);
        assert_string_equal(t->question, "What color is the shape?");
        assert_string_equal(t->expected, k_colors[o->color]);
    } else if (!strcmp(type, "shape")) {
        assert_int_equal(t->nobj, 1);
        assert_string_equal(t->question, "What shape is it?");
        assert_string_equal(t->expected, k_shapes[o->shape]);
    } else if (!strcmp(type, "count")) {
        assert_string_equal(t->question, "How many shapes are there?");
        assert_string_equal(t->expected, t->nobj == 1 ? "one" : "two");
    } else if (!strcmp(type, "direction")) {
        assert_int_equal(t->nobj, 1);
        assert_string_equal(t->question, "Which way is the shape moving?");
        assert_string_equal(t->expected, k_dirs[o->dir]);
    } else if (!strcmp(type, "exists")) {
        char c[16], s[16];
        assert_int_equal(sscanf(t->question, "Is there a %15s %15[a-z]?", c, s), 2);
        snprintf(want, sizeof want, "Is there a %s %s?", c, s);
        assert_string_equal(t->question, want);
        int ci = name_index(k_colors, 4, c), si = name_index(k_shapes, 3, s);
        assert_true(ci >= 0 && si >= 0);
        bool present = false;
        for (int k = 0; k < t->nobj; k++)
            present |= t->obj[k].color == ci && t->obj[k].shape == si;
        assert_string_equal(t->expected, present ? "yes" : "no");
    } else if (!strcmp(type, "color_now")) {
        assert_int_equal(t->nobj, 1);
        assert_string_equal(t->question, "What color is the shape now?");
        int k = t->change_frame / 2;
        assert_true(t->change_frame % 2 == 0 && k >= 1 && k <= t->frames / 2 - 1);
        assert_int_not_equal(o->colors[t->frames - 1], o->color);
        assert_string_equal(t->expected, k_colors[o->colors[t->frames - 1]]);
    } else if (!strcmp(type, "appear")) {
        assert_int_equal(t->nobj, 2);
        assert_string_equal(t->question, "When did the second shape appear?");
        int k = t->appear_frame / 2;
        assert_true(t->appear_frame % 2 == 0 && k >= 1 && k <= t->frames / 2 - 1);
        assert_int_equal(t->obj[0].visible_from, 0);
        assert_int_equal(t->obj[1].visible_from, t->appear_frame);
        snprintf(want, sizeof want, "at %d seconds", k);
        assert_string_equal(t->expected, want);
    }
}

/* Many seeds of every type: each truth obeys the rules, and together they cover the distribution
 * (all colours, shapes, directions, lengths; count and exists near 50/50; mostly hard negatives). */
static void test_truth_follows_distribution(void **state)
{
    (void)state;
    static const char *const types[] = {"color", "shape", "count", "direction", "exists",
                                        "color_now", "appear"};
    /* count and exists get more seeds: their 50/50 and 75% rules are checked as rates. */
    enum { SEEDS = 50, RATE_SEEDS = 200 };
    int seen_color[4] = {0}, seen_shape[3] = {0}, seen_dir[4] = {0}, seen_len[17] = {0};
    int count_two = 0, count_n = 0, exists_yes = 0, exists_n = 0, hard_no = 0, no_n = 0;
    for (size_t ty = 0; ty < sizeof types / sizeof types[0]; ty++) {
        bool rates = !strcmp(types[ty], "count") || !strcmp(types[ty], "exists");
        int nseeds = rates ? RATE_SEEDS : SEEDS;
        char args[640], path[300];
        path_in(path, sizeof path, "dist.json");
        snprintf(args, sizeof args, "--type %s --seed 1000 --batch %d --truth %s", types[ty], nseeds,
                 path);
        assert_int_equal(make_clip(args, NULL, NULL, 0), 0);
        cJSON *batch = json_load(path);
        assert_int_equal(cJSON_GetArraySize(batch), nseeds);
        for (int s = 0; s < nseeds; s++) {
            truth t;
            const cJSON *item = cJSON_GetArrayItem(batch, s);
            truth_from_json(item, &t);
            assert_int_equal((int)jnum(item, "seed"), 1000 + s);
            assert_true(t.frames % 2 == 0 && t.frames >= 8 && t.frames <= 16);
            assert_int_equal(t.width, 128);
            assert_int_equal(t.height, 128);
            assert_int_equal(t.fps, 2);
            check_truth_rules(&t, types[ty]);
            seen_len[t.frames]++;
            for (int k = 0; k < t.nobj; k++) {
                seen_color[t.obj[k].color]++;
                seen_shape[t.obj[k].shape]++;
                seen_dir[t.obj[k].dir]++;
            }
            if (!strcmp(types[ty], "count")) {
                count_n++;
                count_two += t.nobj == 2;
            }
            if (!strcmp(types[ty], "exists")) {
                exists_n++;
                if (!strcmp(t.expected, "yes")) {
                    exists_yes++;
                } else {
                    char c[16], sh[16];
                    assert_int_equal(sscanf(t.question, "Is there a %15s %15[a-z]?", c, sh), 2);
                    bool shares = false;
                    for (int k = 0; k < t.nobj; k++)
                        shares |= !strcmp(k_colors[t.obj[k].color], c) ||
                                  !strcmp(k_shapes[t.obj[k].shape], sh);
                    if (t.nobj == 1) {
                        no_n++;
                        hard_no += shares;
                    }
                }
            }
            truth_free(&t);
        }
        cJSON_Delete(batch);
    }
    for (int i = 0; i < 4; i++)
        assert_true(seen_color[i] > 0 && seen_dir[i] > 0);
    for (int i = 0; i < 3; i++)
        assert_true(seen_shape[i] > 0);
    for (int len = 8; len <= 16; len += 2)
        assert_true(seen_len[len] > 0);
    print_message("count two %d/%d, exists yes %d/%d, one-shape negatives sharing %d/%d\n", count_two, count_n,
                  exists_yes, exists_n, hard_no, no_n);
    /* Binomial(200, 0.5) stays in [76, 124] with probability > 0.999. */
    assert_true(count_two >= 76 && count_two <= 124);
    assert_true(exists_yes >= 76 && exists_yes <= 124);
    /* With one shape present, 5 of the 11 absent pairs share its colour or shape: without the 75%
     * hard-negative rule ~45% of the "no" questions would share, with it 0.75 + 0.25 * 5/11 = 86%. */
    assert_true(no_n >= 10 && hard_no >= 0.65 * no_n);
}

/* The MP4 round trip: stream properties, colours of every shape in every frame, background. */
static void test_mp4_decodes_to_truth(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"mp4_color", "--type color --seed 21"},
        {"mp4_count", "--type count --seed 22 --count 2"},
        {"mp4_exists", "--type exists --seed 23"},
        {"mp4_big", "--type shape --seed 24 --size 192x96"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        truth t;
        generate(cases[c][0], cases[c][1], true, false, &t);
        uint8_t *frames = decode(cases[c][0], &t);
        double wc = 0, wb = 0;
        check_decoded(&t, frames, &wc, &wb);
        print_message("%s: %d frames %dx%d, worst core colour error %.1f, worst bg error %.2f\n",
                      cases[c][0], t.frames, t.width, t.height, wc, wb);
        free(frames);
        truth_free(&t);
    }
}

/* color_now: the decoded colour switches exactly at the truth's change frame, drawn or pinned. */
static void test_color_change_frame(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"now_drawn", "--type color_now --seed 31"},
        {"now_pinned", "--type color_now --seed 32 --frames 16 --change-at-frame 6 --colors yellow,blue"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        truth t;
        generate(cases[c][0], cases[c][1], true, false, &t);
        assert_true(t.change_frame >= 1 && t.change_frame < t.frames);
        if (c == 1) {
            assert_int_equal(t.change_frame, 6);
            assert_int_equal(t.obj[0].color, 3);
            assert_string_equal(t.expected, "blue");
        } else {
            check_truth_rules(&t, "color_now");
        }
        uint8_t *frames = decode(cases[c][0], &t);
        size_t fsz = (size_t)t.width * t.height * 3;
        int before = t.obj[0].color, after = t.obj[0].colors[t.frames - 1];
        assert_int_not_equal(before, after);
        for (int f = 0; f < t.frames; f++) {
            double mean[3];
            assert_true(core_mean(&t, frames + f * fsz, 0, f, mean, 3.0) > 20);
            int want = f < t.change_frame ? before : after;
            if (nearest_palette(mean) != want)
                fail_msg("%s frame %d: decoded %s, expected %s (change at %d)", cases[c][0], f,
                         k_colors[nearest_palette(mean)], k_colors[want], t.change_frame);
        }
        free(frames);
        truth_free(&t);
    }
}

/* appear: shape 2's place is background before its frame and its colour from then on. */
static void test_appear_frame(void **state)
{
    (void)state;
    truth t;
    generate("appear", "--type appear --seed 41", true, false, &t);
    check_truth_rules(&t, "appear");
    uint8_t *frames = decode("appear", &t);
    size_t fsz = (size_t)t.width * t.height * 3;
    const t_obj *o = &t.obj[1];
    for (int f = 0; f < t.frames; f++) {
        double mean[3];
        assert_true(core_mean(&t, frames + f * fsz, 1, f, mean, 3.0) > 20);
        if (f < t.appear_frame) {
            int bgi[3] = {t.bg, t.bg, t.bg};
            if (max_abs3(mean, bgi) > 4.0)
                fail_msg("frame %d (before appear frame %d): shape 2's place has (%.1f,%.1f,%.1f), "
                         "background is %d", f, t.appear_frame, mean[0], mean[1], mean[2], t.bg);
        } else {
            assert_int_equal(nearest_palette(mean), o->colors[f]);
            assert_true(max_abs3(mean, k_palette[o->colors[f]]) <= 12.0);
        }
    }
    double wc = 0, wb = 0;
    check_decoded(&t, frames, &wc, &wb);
    free(frames);
    truth_free(&t);
}

/* A long clip for live-stream tests: 240 frames, a change at a known odd frame; the path cannot fit
 * so the shape bounces, but it stays inside the limits and the colours switch where asked. */
static void test_long_clip(void **state)
{
    (void)state;
    truth t;
    generate("long", "--type color_now --seed 51 --frames 240 --change-at-frame 101 --colors red,green",
             true, false, &t);
    assert_int_equal(t.frames, 240);
    assert_int_equal(t.change_frame, 101);
    assert_string_equal(t.expected, "green");
    const t_obj *o = &t.obj[0];
    assert_true(o->bounces);
    double lo = 2.0 + o->size / 2.0;
    double moved = 0;
    for (int f = 0; f < t.frames; f++) {
        assert_true(o->cx[f] >= lo - 1e-6 && o->cx[f] <= t.width - lo + 1e-6);
        assert_true(o->cy[f] >= lo - 1e-6 && o->cy[f] <= t.height - lo + 1e-6);
        if (f > 0) {
            /* constant speed along the path, even through a bounce */
            double step = hypot(o->cx[f] - o->cx[f - 1], o->cy[f] - o->cy[f - 1]);
            assert_true(step <= o->speed + 1e-6);
            moved += step;
        }
    }
    assert_true(moved > 0.9 * o->speed * (t.frames - 1));
    uint8_t *frames = decode("long", &t);
    size_t fsz = (size_t)t.width * t.height * 3;
    for (int f = 0; f < t.frames; f++) {
        double mean[3];
        assert_true(core_mean(&t, frames + f * fsz, 0, f, mean, 3.0) > 20);
        assert_int_equal(nearest_palette(mean), f < 101 ? 0 : 1);
    }
    free(frames);
    truth_free(&t);
}

/* Another frame rate keeps motion and event times per second: at 10 fps the shape moves a fifth
 * of the 2 fps step per frame and shape 2 appears on a whole second. */
static void test_fps_option(void **state)
{
    (void)state;
    truth t;
    generate("fps10", "--type appear --seed 61 --fps 10 --frames 60", true, false, &t);
    assert_int_equal(t.fps, 10);
    assert_int_equal(t.frames, 60);
    assert_true(t.appear_frame % 10 == 0 && t.appear_frame >= 10 && t.appear_frame <= 50);
    char want[32];
    snprintf(want, sizeof want, "at %d seconds", t.appear_frame / 10);
    assert_string_equal(t.expected, want);
    for (int k = 0; k < t.nobj; k++) {
        const t_obj *o = &t.obj[k];
        assert_false(o->bounces);
        for (int f = 0; f < t.frames; f++) {
            assert_true(fabs(o->cx[f] - (o->start[0] + k_dirvec[o->dir][0] * o->speed * f * 0.2)) < 1e-6);
            assert_true(fabs(o->cy[f] - (o->start[1] + k_dirvec[o->dir][1] * o->speed * f * 0.2)) < 1e-6);
        }
    }
    uint8_t *frames = decode("fps10", &t);
    double wc = 0, wb = 0;
    check_decoded(&t, frames, &wc, &wb);
    free(frames);
    truth_free(&t);
}

static bool files_equal(const char *a, const char *b)
{
    size_t la, lb;
    char *x = slurp(a, &la), *y = slurp(b, &lb);
    bool eq = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return eq;
}

/* Same seed and options, same bytes; another seed, another clip. */
static void test_deterministic(void **state)
{
    (void)state;
    truth a, b, c;
    generate("det_a", "--type appear --seed 77", false, true, &a);
    generate("det_b", "--type appear --seed 77", false, true, &b);
    generate("det_c", "--type appear --seed 78", false, true, &c);
    char pa[300], pb[300], pc[300];
    path_in(pa, sizeof pa, "det_a.rgb");
    path_in(pb, sizeof pb, "det_b.rgb");
    path_in(pc, sizeof pc, "det_c.rgb");
    assert_true(files_equal(pa, pb));
    assert_false(files_equal(pa, pc));
    path_in(pa, sizeof pa, "det_a.json");
    path_in(pb, sizeof pb, "det_b.json");
    path_in(pc, sizeof pc, "det_c.json");
    assert_true(files_equal(pa, pb));
    assert_false(files_equal(pa, pc));
    assert_true(a.obj[1].cx[0] != c.obj[1].cx[0] || a.bg != c.bg || a.frames != c.frames);
    truth_free(&a);
    truth_free(&b);
    truth_free(&c);

    /* --batch gives exactly the truths of the single runs. */
    char args[512], batch_path[300];
    path_in(batch_path, sizeof batch_path, "det_batch.json");
    snprintf(args, sizeof args, "--type appear --seed 76 --batch 3 --truth %s", batch_path);
    assert_int_equal(make_clip(args, NULL, NULL, 0), 0);
    cJSON *batch = json_load(batch_path);
    cJSON *single = json_load(pa); /* seed 77, no --out */
    assert_int_equal(cJSON_GetArraySize(batch), 3);
    assert_true(cJSON_Compare(cJSON_GetArrayItem(batch, 1), single, true));
    assert_false(cJSON_Compare(cJSON_GetArrayItem(batch, 0), single, true));
    cJSON_Delete(single);
    cJSON_Delete(batch);
}

/* Pinned colours, shapes and counts end up in the scene and the answer. */
static void test_pinned_options(void **state)
{
    (void)state;
    truth t;
    generate("pin1", "--type color --seed 81 --colors green --shapes square", false, false, &t);
    assert_int_equal(t.obj[0].color, 1);
    assert_int_equal(t.obj[0].shape, 1);
    assert_string_equal(t.expected, "green");
    truth_free(&t);

    generate("pin2", "--type count --seed 82 --count 1", false, false, &t);
    assert_int_equal(t.nobj, 1);
    assert_string_equal(t.expected, "one");
    truth_free(&t);

    generate("pin3", "--type exists --seed 83 --colors blue,yellow --shapes circle,circle", false,
             false, &t);
    assert_int_equal(t.nobj, 2);
    assert_int_equal(t.obj[0].color, 2);
    assert_int_equal(t.obj[1].color, 3);
    assert_int_equal(t.obj[0].shape, 0);
    assert_int_equal(t.obj[1].shape, 0);
    check_truth_rules(&t, "exists");
    truth_free(&t);

    generate("pin4", "--type appear --seed 84 --frames 12 --appear-at-frame 4", false, false, &t);
    assert_int_equal(t.appear_frame, 4);
    assert_int_equal(t.obj[1].visible_from, 4);
    assert_string_equal(t.expected, "at 2 seconds");
    truth_free(&t);
}

/* Bad input: exit status 2 (usage) or 1 (I/O), a message naming the option or file, no output. */
static void test_bad_arguments(void **state)
{
    (void)state;
    static const struct {
        const char *args;
        int status;
        const char *needle;
    } cases[] = {
        {"--seed 1 --truth X.json", 2, "--type"},
        {"--type colour --truth X.json", 2, "--type"},
        {"--type color --seed -3 --truth X.json", 2, "--seed"},
        {"--type color --seed 12abc --truth X.json", 2, "--seed"},
        {"--type color --frames 0 --truth X.json", 2, "--frames"},
        {"--type color --frames 100000 --truth X.json", 2, "--frames"},
        {"--type color --size 12x --truth X.json", 2, "--size"},
        {"--type color --size 128 --truth X.json", 2, "--size"},
        {"--type color --size 8x8 --truth X.json", 2, "--size"},
        {"--type color --size 97x61 --out X.mp4", 2, "even"},
        {"--type color --fps 0 --truth X.json", 2, "--fps"},
        {"--type color --colors purple --truth X.json", 2, "--colors"},
        {"--type color --colors red,blue --truth X.json", 2, "--colors"},
        {"--type color --shapes hexagon --truth X.json", 2, "--shapes"},
        {"--type color_now --colors red,red --truth X.json", 2, "different"},
        {"--type color_now --frames 12 --change-at-frame 12 --truth X.json", 2, "--change-at-frame"},
        {"--type color_now --frames 2 --truth X.json", 2, "frames"},
        {"--type color --change-at-frame 4 --truth X.json", 2, "--change-at-frame"},
        {"--type count --count 3 --truth X.json", 2, "--count"},
        {"--type count --count 1 --colors red,blue --truth X.json", 2, "--count"},
        {"--type count --colors red,red --shapes square,square --truth X.json", 2, "differ"},
        {"--type direction --frames 200 --truth X.json", 2, "direction"},
        {"--type color", 2, "nothing to write"},
        {"--type color --truth X.json stray", 2, "stray"},
        {"--type color --bogus --truth X.json", 2, "--bogus"},
        {"--type color --truth", 2, "--truth"},
        {"--type color --batch 3 --out X.mp4", 2, "--batch"},
        {"--type color --batch 0 --truth X.json", 2, "--batch"},
        {"--type color --out /nonexistent-dir/x.mp4", 1, "/nonexistent-dir/x.mp4"},
        {"--type color --truth /nonexistent-dir/x.json", 1, "/nonexistent-dir/x.json"},
    };
    char x_json[300], x_mp4[300];
    path_in(x_json, sizeof x_json, "X.json");
    path_in(x_mp4, sizeof x_mp4, "X.mp4");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* X.json / X.mp4 stand for paths in the scratch directory. */
        char args[1024] = "";
        const char *p = cases[i].args;
        while (*p) {
            if (!strncmp(p, "X.json", 6)) {
                strcat(args, x_json);
                p += 6;
            } else if (!strncmp(p, "X.mp4", 5)) {
                strcat(args, x_mp4);
                p += 5;
            } else {
                size_t l = strlen(args);
                args[l] = *p++;
                args[l + 1] = '\0';
            }
        }
        char err[1024];
        int rc = make_clip(args, NULL, err, sizeof err);
        if (rc != cases[i].status || !strstr(err, cases[i].needle) ||
            strncmp(err, "vigil-make-clip: ", 17) != 0)
            fail_msg("'%s': exit %d (expected %d), stderr '%s' (expected to mention '%s')",
                     cases[i].args, rc, cases[i].status, err, cases[i].needle);
        assert_int_not_equal(access(x_json, F_OK), 0);
        assert_int_not_equal(access(x_mp4, F_OK), 0);
    }
}

static int setup(void **state)
{
    (void)state;
    const char *build = getenv("VIGIL_BUILD");
    snprintf(g_bin, sizeof g_bin, "%s/bin/vigil-make-clip", build && *build ? build : "build");
    if (access(g_bin, X_OK) != 0) {
        fprintf(stderr, "%s not found: build it with make %s\n", g_bin, g_bin);
        return -1;
    }
    if (media_tmpdir(g_dir, sizeof g_dir) != 0) {
        fprintf(stderr, "cannot make a temporary directory: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    media_rmtree(g_dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_raw_frames_match_painted_scene),
        cmocka_unit_test(test_truth_follows_distribution),
        cmocka_unit_test(test_mp4_decodes_to_truth),
        cmocka_unit_test(test_color_change_frame),
        cmocka_unit_test(test_appear_frame),
        cmocka_unit_test(test_long_clip),
        cmocka_unit_test(test_fps_option),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_pinned_options),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
