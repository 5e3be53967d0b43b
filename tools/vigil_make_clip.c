/* vigil-make-clip: synthetic coloured-shape clips drawn from the distribution the demo model was
 * trained on (demo/TASK.md sections 1 and 2), with a JSON truth file that states the scene, the
 * question and the expected answer.
 *
 * The demo model only answers reliably on its own distribution, so every rule of TASK.md is
 * followed literally for the defaults (128x128, 2 fps, 8..16 frames). The extra options exist for
 * live-stream and ingest tests (long clips, other frame rates, a known change time); where they
 * leave the distribution, the behaviour is chosen so the scene stays well defined:
 *   - Time is kept in "scene frames" of the 2 fps distribution (scene frame = seconds * 2), so a
 *     clip at --fps 10 shows the same motion per second and the same change times as at 2 fps.
 *   - When a path cannot fit in the frame (long clips), the shape bounces between the edge limits
 *     instead of leaving the picture; the truth file lists every frame's centre.
 * Randomness comes from an own PRNG (xoshiro256**) so a seed gives the same clip on every machine.
 * Encoding pipes raw rgb24 into the ffmpeg CLI exactly like TASK.md's MP4 round trip. */

#include <cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MC_PROG "vigil-make-clip"
#define MC_MAX_FRAMES 3600
#define MC_MIN_SIDE 16
#define MC_MAX_SIDE 4096
#define MC_MAX_FPS 60
#define MC_MAX_OBJECTS 2
#define MC_PLACE_ATTEMPTS 20000
/* Seeds are written to JSON as numbers; doubles hold integers exactly up to 2^53. */
#define MC_MAX_SEED 9007199254740991ULL

/* ---------------------------------------------------------------------------------------------
 * Vocabulary of the distribution (TASK.md section 1 and 2). */

enum { MC_RED, MC_GREEN, MC_BLUE, MC_YELLOW, MC_NCOLORS };
enum { MC_CIRCLE, MC_SQUARE, MC_TRIANGLE, MC_NSHAPES };
enum { MC_LEFT, MC_RIGHT, MC_UP, MC_DOWN, MC_NDIRS };
enum { MC_T_COLOR, MC_T_SHAPE, MC_T_COUNT, MC_T_DIRECTION, MC_T_EXISTS, MC_T_COLOR_NOW,
       MC_T_APPEAR, MC_NTYPES };

static const char *const mc_color_names[MC_NCOLORS] = {"red", "green", "blue", "yellow"};
static const uint8_t mc_palette[MC_NCOLORS][3] = {
    {220, 40, 40}, {40, 180, 60}, {50, 90, 220}, {230, 210, 40}};
static const char *const mc_shape_names[MC_NSHAPES] = {"circle", "square", "triangle"};
static const char *const mc_dir_names[MC_NDIRS] = {"left", "right", "up", "down"};
static const int mc_dir_vec[MC_NDIRS][2] = {{-1, 0}, {1, 0}, {0, -1}, {0, 1}};
static const char *const mc_type_names[MC_NTYPES] = {
    "color", "shape", "count", "direction", "exists", "color_now", "appear"};

/* ---------------------------------------------------------------------------------------------
 * PRNG: splitmix64-seeded xoshiro256**. Independent streams for the scene and for the noise, so
 * the scene of a seed does not depend on how many frames of noise are drawn. */

typedef struct {
    uint64_t s[4];
    bool has_spare;
    double spare;
} mc_rng;

static uint64_t mc_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void mc_rng_seed(mc_rng *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ (stream * 0xd1342543de82ef95ULL);
    for (int i = 0; i < 4; i++)
        r->s[i] = mc_splitmix64(&x);
    r->has_spare = false;
    r->spare = 0.0;
}

static uint64_t mc_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t mc_rng_next(mc_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = mc_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = mc_rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double mc_rng_unit(mc_rng *r) { return (double)(mc_rng_next(r) >> 11) * 0x1.0p-53; }

static double mc_rng_range(mc_rng *r, double lo, double hi)
{
    return lo + (hi - lo) * mc_rng_unit(r);
}

/* Uniform integer in [lo, hi], without modulo bias (rejection of the short last bucket). */
static int mc_rng_int(mc_rng *r, int lo, int hi)
{
    uint64_t n = (uint64_t)((int64_t)hi - lo + 1);
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = mc_rng_next(r);
    while (x >= limit);
    return lo + (int)(x % n);
}

/* Standard normal, Marsaglia polar method. */
static double mc_rng_gauss(mc_rng *r)
{
    if (r->has_spare) {
        r->has_spare = false;
        return r->spare;
    }
    double u, v, s;
    do {
        u = 2.0 * mc_rng_unit(r) - 1.0;
        v = 2.0 * mc_rng_unit(r) - 1.0;
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    double m = sqrt(-2.0 * log(s) / s);
    r->spare = v * m;
    r->has_spare = true;
    return u * m;
}

/* ---------------------------------------------------------------------------------------------
 * Scene. */

typedef struct {
    int shape;
    int color;        /* colour before the change (the only colour when there is none) */
    int color_after;  /* colour from change_frame on */
    int change_frame; /* output frame of the colour change, -1 for none */
    int visible_from; /* first output frame the object is drawn in */
    double size;      /* d, px */
    int dir;
    double speed;   /* px per scene frame (i.e. per frame at 2 fps) */
    double x0, y0;  /* centre at scene frame 0 (before any bounce) */
    double lo[2];   /* centre limits, x then y: 2 + d/2 from each edge */
    double hi[2];
    bool bounces;   /* the path is longer than the room on the moving axis */
} mc_object;

typedef struct {
    int type;
    uint64_t seed;
    int width, height, fps, frames;
    int bg;
    double sigma;
    int nobj;
    mc_object obj[MC_MAX_OBJECTS];
    int event_frame; /* color_now: change frame; appear: first frame of shape 2; else -1 */
    char question[64];
    char answer[32];
} mc_scene;

/* Command-line choices that pin parts of the scene. -1 means "draw it". */
typedef struct {
    int type;
    uint64_t seed;
    int frames;
    int width, height;
    int fps;
    int change_at;
    int appear_at;
    int ncolors, colors[MC_MAX_OBJECTS];
    int nshapes, shapes[MC_MAX_OBJECTS];
    int count;
    int batch; /* > 0: truth only, for seeds seed .. seed + batch - 1 */
    const char *out;
    const char *truth;
    bool raw;
} mc_options;

/* Scene time of an output frame: the distribution is defined at 2 fps. */
static double mc_scene_frame(const mc_scene *sc, int i) { return (double)i * 2.0 / sc->fps; }

/* Folds an unbounded coordinate into [lo, hi] as a ball bouncing between two walls. Inside the
 * range (every in-distribution path) this is the identity, so linear motion is unchanged. */
static double mc_reflect(double u, double lo, double hi)
{
    double len = hi - lo;
    if (len <= 0.0)
        return lo;
    double t = fmod(u - lo, 2.0 * len);
    if (t < 0.0)
        t += 2.0 * len;
    return t <= len ? lo + t : hi - (t - len);
}

static void mc_object_center(const mc_scene *sc, const mc_object *o, int frame, double *cx,
                             double *cy)
{
    double s = mc_scene_frame(sc, frame);
    double x = o->x0 + mc_dir_vec[o->dir][0] * o->speed * s;
    double y = o->y0 + mc_dir_vec[o->dir][1] * o->speed * s;
    *cx = mc_reflect(x, o->lo[0], o->hi[0]);
    *cy = mc_reflect(y, o->lo[1], o->hi[1]);
}

static int mc_object_color_at(const mc_object *o, int frame)
{
    return (o->change_frame >= 0 && frame >= o->change_frame) ? o->color_after : o->color;
}

/* The centre-of-pixel rule of TASK.md: pixel (x, y) belongs to the shape when its centre does. */
static bool mc_inside(int shape, double cx, double cy, double d, double px, double py)
{
    double r = d / 2.0;
    switch (shape) {
    case MC_CIRCLE:
        return (px - cx) * (px - cx) + (py - cy) * (py - cy) <= r * r;
    case MC_SQUARE:
        return fabs(px - cx) <= r && fabs(py - cy) <= r;
    default: {
        double t = (py - (cy - r)) / d;
        return t >= 0.0 && t <= 1.0 && fabs(px - cx) <= r * t;
    }
    }
}

static double mc_scene_span(const mc_scene *sc)
{
    /* Scene frames between the first and the last output frame. */
    return sc->frames > 1 ? mc_scene_frame(sc, sc->frames - 1) : 0.0;
}

static double mc_size_cap(int width, int height)
{
    return 0.42 * (double)(width < height ? width : height);
}

/* Size, then the trajectory (direction, speed, start) of TASK.md's motion rules. */
static void mc_draw_size(mc_rng *r, const mc_scene *sc, mc_object *o)
{
    double d = mc_rng_range(r, 30.0, 45.0);
    double cap = mc_size_cap(sc->width, sc->height);
    o->size = d < cap ? d : cap;
    o->lo[0] = o->lo[1] = 2.0 + o->size / 2.0;
    o->hi[0] = sc->width - 2.0 - o->size / 2.0;
    o->hi[1] = sc->height - 2.0 - o->size / 2.0;
}

static void mc_draw_trajectory(mc_rng *r, const mc_scene *sc, mc_object *o)
{
    o->dir = mc_rng_int(r, 0, MC_NDIRS - 1);
    int axis = mc_dir_vec[o->dir][0] != 0 ? 0 : 1;
    int extent = axis == 0 ? sc->width : sc->height;
    double span = mc_scene_span(sc);
    double cap = span > 0.0 ? ((double)extent - o->size - 4.0) / span : 6.0;
    double vmax = cap < 6.0 ? cap : 6.0;
    if (vmax < 2.5)
        vmax = 2.5;
    o->speed = mc_rng_range(r, 2.5, vmax);

    double travel = o->speed * span;
    double lo = o->lo[axis], hi = o->hi[axis];
    int sign = axis == 0 ? mc_dir_vec[o->dir][0] : mc_dir_vec[o->dir][1];
    double start;
    if (travel <= hi - lo) {
        o->bounces = false;
        start = sign > 0 ? mc_rng_range(r, lo, hi - travel) : mc_rng_range(r, lo + travel, hi);
    } else {
        o->bounces = true;
        start = mc_rng_range(r, lo, hi);
    }
    double other = mc_rng_range(r, o->lo[1 - axis], o->hi[1 - axis]);
    o->x0 = axis == 0 ? start : other;
    o->y0 = axis == 0 ? other : start;
}

static bool mc_separated(const mc_scene *sc)
{
    const mc_object *a = &sc->obj[0], *b = &sc->obj[1];
    double min_dist = 1.15 * (a->size + b->size) / 2.0 + 3.0;
    for (int f = 0; f < sc->frames; f++) {
        if (f < a->visible_from || f < b->visible_from)
            continue;
        double ax, ay, bx, by;
        mc_object_center(sc, a, f, &ax, &ay);
        mc_object_center(sc, b, f, &bx, &by);
        if (hypot(ax - bx, ay - by) <= min_dist)
            return false;
    }
    return true;
}

/* A new object with a drawn colour and shape, unless the options pin them. The draws happen in
 * any case so that pinning one property leaves the others of the same seed unchanged. */
static void mc_new_object(mc_rng *r, const mc_options *opt, const mc_scene *sc, int index,
                          mc_object *o)
{
    memset(o, 0, sizeof *o);
    o->color = mc_rng_int(r, 0, MC_NCOLORS - 1);
    o->shape = mc_rng_int(r, 0, MC_NSHAPES - 1);
    if (index < opt->ncolors)
        o->color = opt->colors[index];
    if (index < opt->nshapes)
        o->shape = opt->shapes[index];
    o->color_after = o->color;
    o->change_frame = -1;
    o->visible_from = 0;
    mc_draw_size(r, sc, o);
}

static int mc_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* Builds the whole scene for the options. Returns 0, or -1 with a message in err. */
static int mc_scene_build(const mc_options *opt, mc_scene *sc, char *err, size_t errlen)
{
    memset(sc, 0, sizeof *sc);
    mc_rng rng;
    mc_rng_seed(&rng, opt->seed, 1);

    sc->type = opt->type;
    sc->seed = opt->seed;
    sc->width = opt->width;
    sc->height = opt->height;
    sc->fps = opt->fps;
    sc->event_frame = -1;
    /* T in {8..16 even} is drawn at 2 fps; at another rate the clip keeps that duration. */
    int t2 = 2 * mc_rng_int(&rng, 4, 8);
    sc->frames = opt->frames > 0 ? opt->frames : t2 * opt->fps / 2;
    if (sc->frames < 1)
        sc->frames = 1;
    sc->bg = mc_rng_int(&rng, 30, 60);
    sc->sigma = mc_rng_range(&rng, 2.0, 6.0);

    int nobj = 1;
    int count_draw = mc_rng_int(&rng, 1, 2); /* drawn for every type: keeps streams aligned */
    if (opt->type == MC_T_COUNT || opt->type == MC_T_EXISTS) {
        nobj = count_draw;
        if (opt->ncolors == 2 || opt->nshapes == 2)
            nobj = 2;
        if (opt->count > 0)
            nobj = opt->count;
    } else if (opt->type == MC_T_APPEAR) {
        nobj = 2;
    }
    sc->nobj = nobj;
    for (int i = 0; i < nobj; i++)
        mc_new_object(&rng, opt, sc, i, &sc->obj[i]);
    if (nobj == 2) {
        /* The two shapes never share both colour and shape; redraw whatever was not pinned. */
        int guard = 0;
        while (sc->obj[1].color == sc->obj[0].color && sc->obj[1].shape == sc->obj[0].shape) {
            bool color_pinned = opt->ncolors >= 2, shape_pinned = opt->nshapes >= 2;
            if ((color_pinned && shape_pinned) || ++guard > 1000)
                return mc_fail(err, errlen,
                               "--colors/--shapes: the two shapes must differ in colour or "
                               "shape (both are %s %s)",
                               mc_color_names[sc->obj[0].color], mc_shape_names[sc->obj[0].shape]);
            if (!color_pinned)
                sc->obj[1].color = mc_rng_int(&rng, 0, MC_NCOLORS - 1);
            if (!shape_pinned)
                sc->obj[1].shape = mc_rng_int(&rng, 0, MC_NSHAPES - 1);
            sc->obj[1].color_after = sc->obj[1].color;
        }
    }

    /* Events sit at a pair boundary of the 2 fps sampling, i.e. at a whole second k, with k from
     * 1 to the last second that still has a frame (TASK.md: k uniform in 1..P-1). */
    int kmax = (sc->frames - 1) / sc->fps;
    if (opt->type == MC_T_COLOR_NOW || opt->type == MC_T_APPEAR) {
        int pinned = opt->type == MC_T_COLOR_NOW ? opt->change_at : opt->appear_at;
        const char *flag = opt->type == MC_T_COLOR_NOW ? "--change-at-frame" : "--appear-at-frame";
        int k = kmax >= 1 ? mc_rng_int(&rng, 1, kmax) : 0;
        if (pinned >= 0) {
            if (pinned < 1 || pinned > sc->frames - 1)
                return mc_fail(err, errlen, "%s: expected a frame in [1, %d] for a %d-frame clip, got %d",
                               flag, sc->frames - 1, sc->frames, pinned);
            sc->event_frame = pinned;
        } else {
            if (kmax < 1)
                return mc_fail(err, errlen,
                               "--type %s: the clip needs at least %d frames at %d fps so the event "
                               "can happen after the first second, got %d",
                               mc_type_names[opt->type], sc->fps + 1, sc->fps, sc->frames);
            sc->event_frame = k * sc->fps;
        }
    }
    if (opt->type == MC_T_COLOR_NOW) {
        mc_object *o = &sc->obj[0];
        int shift = mc_rng_int(&rng, 1, MC_NCOLORS - 1);
        o->color_after = (o->color + shift) % MC_NCOLORS;
        if (opt->ncolors == 2) {
            o->color_after = opt->colors[1];
            if (o->color_after == o->color)
                return mc_fail(err, errlen, "--colors: color_now needs two different colours, got %s,%s",
                               mc_color_names[o->color], mc_color_names[o->color_after]);
        }
        o->change_frame = sc->event_frame;
    } else if (opt->type == MC_T_APPEAR) {
        sc->obj[1].visible_from = sc->event_frame;
    }

    /* Trajectories, redrawn until two shapes keep their distance wherever both are visible. */
    int attempt = 0;
    for (;;) {
        for (int i = 0; i < nobj; i++)
            mc_draw_trajectory(&rng, sc, &sc->obj[i]);
        if (nobj < 2 || mc_separated(sc))
            break;
        if (++attempt >= MC_PLACE_ATTEMPTS)
            return mc_fail(err, errlen,
                           "could not place two shapes that stay apart over %d frames at %dx%d "
                           "after %d tries; use fewer frames or a larger --size",
                           sc->frames, sc->width, sc->height, attempt);
    }
    if (opt->type == MC_T_DIRECTION && sc->obj[0].bounces)
        return mc_fail(err, errlen, "--type direction: the path does not fit in %dx%d over %d frames, "
                       "so the shape would bounce and have no single direction; use fewer frames",
                       sc->width, sc->height, sc->frames);

    /* Question and answer (TASK.md section 2, exact strings). */
    const mc_object *o0 = &sc->obj[0];
    switch (opt->type) {
    case MC_T_COLOR:
        snprintf(sc->question, sizeof sc->question, "What color is the shape?");
        snprintf(sc->answer, sizeof sc->answer, "%s", mc_color_names[o0->color]);
        break;
    case MC_T_SHAPE:
        snprintf(sc->question, sizeof sc->question, "What shape is it?");
        snprintf(sc->answer, sizeof sc->answer, "%s", mc_shape_names[o0->shape]);
        break;
    case MC_T_COUNT:
        snprintf(sc->question, sizeof sc->question, "How many shapes are there?");
        snprintf(sc->answer, sizeof sc->answer, "%s", nobj == 1 ? "one" : "two");
        break;
    case MC_T_DIRECTION:
        snprintf(sc->question, sizeof sc->question, "Which way is the shape moving?");
        snprintf(sc->answer, sizeof sc->answer, "%s", mc_dir_names[o0->dir]);
        break;
    case MC_T_EXISTS: {
        bool present[MC_NCOLORS][MC_NSHAPES] = {{false}};
        for (int i = 0; i < nobj; i++)
            present[sc->obj[i].color][sc->obj[i].shape] = true;
        int ask_c, ask_s;
        bool yes = mc_rng_int(&rng, 0, 1) == 1;
        if (yes) {
            const mc_object *p = &sc->obj[mc_rng_int(&rng, 0, nobj - 1)];
            ask_c = p->color;
            ask_s = p->shape;
        } else {
            /* 75% hard negatives: absent, but sharing the colour or the shape of a present one. */
            bool hard = mc_rng_unit(&rng) < 0.75;
            int cand[MC_NCOLORS * MC_NSHAPES], ncand = 0;
            for (int c = 0; c < MC_NCOLORS; c++)
                for (int s = 0; s < MC_NSHAPES; s++) {
                    if (present[c][s])
                        continue;
                    bool shares = false;
                    for (int i = 0; i < nobj; i++)
                        shares |= sc->obj[i].color == c || sc->obj[i].shape == s;
                    if (!hard || shares)
                        cand[ncand++] = c * MC_NSHAPES + s;
                }
            int pick = cand[mc_rng_int(&rng, 0, ncand - 1)];
            ask_c = pick / MC_NSHAPES;
            ask_s = pick % MC_NSHAPES;
        }
        snprintf(sc->question, sizeof sc->question, "Is there a %s %s?", mc_color_names[ask_c],
                 mc_shape_names[ask_s]);
        snprintf(sc->answer, sizeof sc->answer, "%s", yes ? "yes" : "no");
        break;
    }
    case MC_T_COLOR_NOW:
        snprintf(sc->question, sizeof sc->question, "What color is the shape now?");
        snprintf(sc->answer, sizeof sc->answer, "%s", mc_color_names[o0->color_after]);
        break;
    case MC_T_APPEAR: {
        snprintf(sc->question, sizeof sc->question, "When did the second shape appear?");
        if (sc->event_frame % sc->fps == 0)
            snprintf(sc->answer, sizeof sc->answer, "at %d seconds", sc->event_frame / sc->fps);
        else
            snprintf(sc->answer, sizeof sc->answer, "at %.1f seconds",
                     (double)sc->event_frame / sc->fps);
        break;
    }
    default:
        return mc_fail(err, errlen, "internal: unknown question type %d", opt->type);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Rendering. */

static void mc_draw_object(const mc_scene *sc, const mc_object *o, int frame, double *img)
{
    if (frame < o->visible_from)
        return;
    double cx, cy;
    mc_object_center(sc, o, frame, &cx, &cy);
    const uint8_t *rgb = mc_palette[mc_object_color_at(o, frame)];
    double r = o->size / 2.0;
    int x0 = (int)floor(cx - r - 1.0), x1 = (int)ceil(cx + r + 1.0);
    int y0 = (int)floor(cy - r - 1.0), y1 = (int)ceil(cy + r + 1.0);
    if (x0 < 0)
        x0 = 0;
    if (y0 < 0)
        y0 = 0;
    if (x1 > sc->width - 1)
        x1 = sc->width - 1;
    if (y1 > sc->height - 1)
        y1 = sc->height - 1;
    for (int y = y0; y <= y1; y++)
        for (int x = x0; x <= x1; x++) {
            if (!mc_inside(o->shape, cx, cy, o->size, x + 0.5, y + 0.5))
                continue;
            double *p = img + ((size_t)y * sc->width + x) * 3;
            p[0] = rgb[0];
            p[1] = rgb[1];
            p[2] = rgb[2];
        }
}

/* One frame: background, shapes in order (the second on top), then noise over everything,
 * rounded and clipped (TASK.md's order). */
static void mc_render_frame(const mc_scene *sc, int frame, mc_rng *noise, double *img, uint8_t *out)
{
    size_t n = (size_t)sc->width * sc->height * 3;
    for (size_t i = 0; i < n; i++)
        img[i] = sc->bg;
    for (int i = 0; i < sc->nobj; i++)
        mc_draw_object(sc, &sc->obj[i], frame, img);
    for (size_t i = 0; i < n; i++) {
        double v = nearbyint(img[i] + sc->sigma * mc_rng_gauss(noise));
        out[i] = (uint8_t)(v < 0.0 ? 0.0 : v > 255.0 ? 255.0 : v);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Outputs. */

/* Single-quotes a path for /bin/sh: ' becomes '\''. */
static char *mc_shell_quote(const char *s)
{
    size_t n = 3;
    for (const char *p = s; *p; p++)
        n += *p == '\'' ? 4 : 1;
    char *q = malloc(n);
    if (!q)
        return NULL;
    char *w = q;
    *w++ = '\'';
    for (const char *p = s; *p; p++) {
        if (*p == '\'') {
            memcpy(w, "'\\''", 4);
            w += 4;
        } else {
            *w++ = *p;
        }
    }
    *w++ = '\'';
    *w = '\0';
    return q;
}

static int mc_write_all(FILE *f, const uint8_t *buf, size_t n)
{
    return fwrite(buf, 1, n, f) == n ? 0 : -1;
}

static int mc_render_all(const mc_scene *sc, const mc_options *opt, char *err, size_t errlen)
{
    size_t n = (size_t)sc->width * sc->height * 3;
    double *img = malloc(n * sizeof *img);
    uint8_t *out = malloc(n);
    FILE *ff = NULL;
    char *cmd = NULL, *quoted = NULL;
    int rc = -1;
    if (!img || !out) {
        mc_fail(err, errlen, "out of memory for a %dx%d frame", sc->width, sc->height);
        goto done;
    }
    if (opt->out) {
        quoted = mc_shell_quote(opt->out);
        size_t cmdlen = (quoted ? strlen(quoted) : 0) + 512;
        cmd = malloc(cmdlen);
        if (!quoted || !cmd) {
            mc_fail(err, errlen, "out of memory");
            goto done;
        }
        /* The same encoder settings as TASK.md's MP4 round trip. */
        snprintf(cmd, cmdlen,
                 "ffmpeg -hide_banner -loglevel error -nostats -y -f rawvideo -pix_fmt rgb24 "
                 "-s %dx%d -r %d -i - -an -c:v libx264 -pix_fmt yuv420p -crf 23 -r %d %s",
                 sc->width, sc->height, sc->fps, sc->fps, quoted);
        fflush(stdout);
        ff = popen(cmd, "w");
        if (!ff) {
            mc_fail(err, errlen, "cannot start ffmpeg for %s: %s", opt->out, strerror(errno));
            goto done;
        }
    }
    mc_rng noise;
    mc_rng_seed(&noise, sc->seed, 2);
    for (int f = 0; f < sc->frames; f++) {
        mc_render_frame(sc, f, &noise, img, out);
        if (ff && mc_write_all(ff, out, n) != 0) {
            mc_fail(err, errlen, "writing frame %d to ffmpeg for %s failed: %s (see ffmpeg's "
                    "message above)", f, opt->out, strerror(errno));
            goto done;
        }
        if (opt->raw && mc_write_all(stdout, out, n) != 0) {
            mc_fail(err, errlen, "writing raw frame %d to stdout failed: %s", f, strerror(errno));
            goto done;
        }
    }
    if (opt->raw && fflush(stdout) != 0) {
        mc_fail(err, errlen, "writing raw frames to stdout failed: %s", strerror(errno));
        goto done;
    }
    rc = 0;
done:
    if (ff) {
        int st = pclose(ff);
        if (rc == 0 && (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)) {
            if (st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 127)
                mc_fail(err, errlen, "ffmpeg not found (install the ffmpeg package) while writing %s",
                        opt->out);
            else if (st != -1 && WIFEXITED(st))
                mc_fail(err, errlen, "ffmpeg failed to encode %s (exit status %d; see its message "
                        "above)", opt->out, WEXITSTATUS(st));
            else
                mc_fail(err, errlen, "ffmpeg was killed or could not be waited for while encoding %s",
                        opt->out);
            rc = -1;
        }
    }
    free(cmd);
    free(quoted);
    free(out);
    free(img);
    return rc;
}

static cJSON *mc_json_pair(double a, double b)
{
    cJSON *arr = cJSON_CreateArray();
    if (arr) {
        cJSON_AddItemToArray(arr, cJSON_CreateNumber(a));
        cJSON_AddItemToArray(arr, cJSON_CreateNumber(b));
    }
    return arr;
}

/* The truth file mirrors one clip entry of demo/clips/answers.json (file, frames, fps, width,
 * height, scene, questions) so the same reader handles both, plus the exact geometry per frame. */
static cJSON *mc_truth_json(const mc_scene *sc, const mc_options *opt)
{
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    cJSON_AddStringToObject(root, "generator", MC_PROG);
    cJSON_AddNumberToObject(root, "seed", (double)sc->seed);
    cJSON_AddStringToObject(root, "type", mc_type_names[sc->type]);
    if (opt->out) {
        const char *base = strrchr(opt->out, '/');
        cJSON_AddStringToObject(root, "file", base ? base + 1 : opt->out);
    } else {
        cJSON_AddNullToObject(root, "file");
    }
    cJSON_AddNumberToObject(root, "frames", sc->frames);
    cJSON_AddNumberToObject(root, "fps", sc->fps);
    cJSON_AddNumberToObject(root, "width", sc->width);
    cJSON_AddNumberToObject(root, "height", sc->height);
    cJSON_AddNumberToObject(root, "duration_s", (double)sc->frames / sc->fps);

    cJSON *scene = cJSON_AddObjectToObject(root, "scene");
    cJSON_AddNumberToObject(scene, "bg", sc->bg);
    cJSON_AddNumberToObject(scene, "noise_sigma", sc->sigma);
    if (sc->type == MC_T_COLOR_NOW) {
        cJSON_AddNumberToObject(scene, "change_frame", sc->event_frame);
        cJSON_AddNumberToObject(scene, "change_time_s", (double)sc->event_frame / sc->fps);
    }
    if (sc->type == MC_T_APPEAR) {
        cJSON_AddNumberToObject(scene, "appear_frame", sc->event_frame);
        cJSON_AddNumberToObject(scene, "appear_time_s", (double)sc->event_frame / sc->fps);
    }
    cJSON *objs = cJSON_AddArrayToObject(scene, "objects");
    for (int i = 0; i < sc->nobj; i++) {
        const mc_object *o = &sc->obj[i];
        cJSON *jo = cJSON_CreateObject();
        cJSON_AddItemToArray(objs, jo);
        cJSON_AddStringToObject(jo, "shape", mc_shape_names[o->shape]);
        cJSON_AddStringToObject(jo, "color", mc_color_names[o->color]);
        cJSON *cpf = cJSON_AddArrayToObject(jo, "colors_per_frame");
        cJSON *centers = cJSON_CreateArray();
        for (int f = 0; f < sc->frames; f++) {
            cJSON_AddItemToArray(cpf, cJSON_CreateString(mc_color_names[mc_object_color_at(o, f)]));
            double cx, cy;
            mc_object_center(sc, o, f, &cx, &cy);
            cJSON_AddItemToArray(centers, mc_json_pair(cx, cy));
        }
        cJSON_AddNumberToObject(jo, "size", o->size);
        cJSON_AddStringToObject(jo, "dir", mc_dir_names[o->dir]);
        cJSON_AddNumberToObject(jo, "speed", o->speed);
        cJSON_AddNumberToObject(jo, "speed_px_per_s", o->speed * 2.0);
        cJSON_AddItemToObject(jo, "start", mc_json_pair(o->x0, o->y0));
        cJSON_AddNumberToObject(jo, "visible_from_frame", o->visible_from);
        cJSON_AddBoolToObject(jo, "bounces", o->bounces);
        cJSON_AddItemToObject(jo, "centers", centers);
    }
    cJSON *qs = cJSON_AddArrayToObject(root, "questions");
    cJSON *q = cJSON_CreateObject();
    cJSON_AddItemToArray(qs, q);
    cJSON_AddStringToObject(q, "type", mc_type_names[sc->type]);
    cJSON_AddStringToObject(q, "question", sc->question);
    cJSON_AddStringToObject(q, "expected", sc->answer);
    return root;
}

/* Writes and frees the JSON document. */
static int mc_write_json(cJSON *root, const mc_options *opt, FILE *f, char *err, size_t errlen)
{
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text)
        return mc_fail(err, errlen, "out of memory while formatting %s", opt->truth);
    int rc = 0;
    size_t len = strlen(text);
    bool ok = fwrite(text, 1, len, f) == len && fputc('\n', f) != EOF;
    if (fflush(f) != 0 || !ok)
        rc = mc_fail(err, errlen, "--truth: writing %s failed: %s", opt->truth, strerror(errno));
    cJSON_free(text);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Command line. */

static void mc_usage(FILE *f)
{
    fprintf(f,
            "usage: " MC_PROG " --type TYPE [options]\n"
            "Draws a synthetic coloured-shape clip from the demo model's distribution (demo/TASK.md).\n"
            "\n"
            "  --type T              color|shape|count|direction|exists|color_now|appear\n"
            "  --seed N              PRNG seed, 0..2^53-1 (default 0); same seed, same clip\n"
            "  --frames N            frames, 1..%d (default: drawn from 8,10,..,16 at 2 fps)\n"
            "  --size WxH            frame size (default 128x128); even sides in [%d, %d] for MP4\n"
            "  --fps N               frame rate, 1..%d (default 2); motion and event times are\n"
            "                        kept per second, as at 2 fps\n"
            "  --out FILE.mp4        encode with ffmpeg: libx264, yuv420p, crf 23\n"
            "  --truth FILE.json     write the scene, the question and the expected answer\n"
            "  --raw                 write raw rgb24 frames to stdout\n"
            "  --change-at-frame F   color_now: the frame the colour changes at\n"
            "  --appear-at-frame F   appear: the first frame of the second shape\n"
            "  --colors A[,B]        colours (red|green|blue|yellow): of shape 1 and 2, or for\n"
            "                        color_now the colour before and after the change\n"
            "  --shapes A[,B]        shapes (circle|square|triangle) of shape 1 and 2\n"
            "  --count N             count/exists: 1 or 2 shapes (default: drawn 50/50)\n"
            "  --batch N             with --truth only: write a JSON array of the truths of\n"
            "                        seeds SEED .. SEED+N-1 (evaluation sets, distribution checks)\n"
            "At least one of --out, --truth, --raw is needed.\n",
            MC_MAX_FRAMES, MC_MIN_SIDE, MC_MAX_SIDE, MC_MAX_FPS);
}

static int mc_parse_int(const char *flag, const char *s, long lo, long hi, int *out, char *err,
                        size_t errlen)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < lo || v > hi)
        return mc_fail(err, errlen, "%s: expected an integer in [%ld, %ld], got '%s'", flag, lo, hi, s);
    *out = (int)v;
    return 0;
}

static int mc_lookup(const char *const *names, int n, const char *s, size_t len)
{
    for (int i = 0; i < n; i++)
        if (strlen(names[i]) == len && strncmp(names[i], s, len) == 0)
            return i;
    return -1;
}

/* "A" or "A,B" from a fixed vocabulary. */
static int mc_parse_list(const char *flag, const char *s, const char *const *names, int n,
                         int *out, int *count, char *err, size_t errlen)
{
    char expected[128] = "";
    for (int i = 0; i < n; i++) {
        strncat(expected, names[i], sizeof expected - strlen(expected) - 1);
        if (i + 1 < n)
            strncat(expected, "|", sizeof expected - strlen(expected) - 1);
    }
    int k = 0;
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        int v = mc_lookup(names, n, p, len);
        if (v < 0 || k >= MC_MAX_OBJECTS)
            return mc_fail(err, errlen, "%s: expected one or two of %s separated by a comma, got '%s'",
                           flag, expected, s);
        out[k++] = v;
        if (!comma)
            break;
        p = comma + 1;
    }
    *count = k;
    return 0;
}

static int mc_parse_args(int argc, char **argv, mc_options *opt, char *err, size_t errlen)
{
    enum { O_TYPE = 1, O_SEED, O_FRAMES, O_SIZE, O_FPS, O_OUT, O_TRUTH, O_RAW, O_CHANGE, O_APPEAR,
           O_COLORS, O_SHAPES, O_COUNT, O_BATCH, O_HELP };
    static const struct option longopts[] = {
        {"type", required_argument, NULL, O_TYPE},
        {"seed", required_argument, NULL, O_SEED},
        {"frames", required_argument, NULL, O_FRAMES},
        {"size", required_argument, NULL, O_SIZE},
        {"fps", required_argument, NULL, O_FPS},
        {"out", required_argument, NULL, O_OUT},
        {"truth", required_argument, NULL, O_TRUTH},
        {"raw", no_argument, NULL, O_RAW},
        {"change-at-frame", required_argument, NULL, O_CHANGE},
        {"appear-at-frame", required_argument, NULL, O_APPEAR},
        {"colors", required_argument, NULL, O_COLORS},
        {"shapes", required_argument, NULL, O_SHAPES},
        {"count", required_argument, NULL, O_COUNT},
        {"batch", required_argument, NULL, O_BATCH},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    memset(opt, 0, sizeof *opt);
    opt->type = -1;
    opt->frames = -1;
    opt->width = opt->height = 128;
    opt->fps = 2;
    opt->change_at = opt->appear_at = -1;
    opt->count = -1;

    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case O_TYPE:
            opt->type = mc_lookup(mc_type_names, MC_NTYPES, optarg, strlen(optarg));
            if (opt->type < 0)
                return mc_fail(err, errlen, "--type: expected color|shape|count|direction|exists|"
                               "color_now|appear, got '%s'", optarg);
            break;
        case O_SEED: {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end != '\0' || optarg[0] == '-' || v > MC_MAX_SEED)
                return mc_fail(err, errlen, "--seed: expected an integer in [0, %llu], got '%s'",
                               MC_MAX_SEED, optarg);
            opt->seed = v;
            break;
        }
        case O_FRAMES:
            if (mc_parse_int("--frames", optarg, 1, MC_MAX_FRAMES, &opt->frames, err, errlen))
                return -1;
            break;
        case O_SIZE: {
            char *end;
            errno = 0;
            long w = strtol(optarg, &end, 10);
            long h = -1;
            if (!errno && end != optarg && *end == 'x') {
                char *hs = end + 1;
                h = strtol(hs, &end, 10);
                if (errno || end == hs || *end != '\0')
                    h = -1;
            }
            if (h < MC_MIN_SIDE || h > MC_MAX_SIDE || w < MC_MIN_SIDE || w > MC_MAX_SIDE)
                return mc_fail(err, errlen, "--size: expected WxH with W and H in [%d, %d], got '%s'",
                               MC_MIN_SIDE, MC_MAX_SIDE, optarg);
            opt->width = (int)w;
            opt->height = (int)h;
            break;
        }
        case O_FPS:
            if (mc_parse_int("--fps", optarg, 1, MC_MAX_FPS, &opt->fps, err, errlen))
                return -1;
            break;
        case O_OUT:
            opt->out = optarg;
            break;
        case O_TRUTH:
            opt->truth = optarg;
            break;
        case O_RAW:
            opt->raw = true;
            break;
        case O_CHANGE:
            if (mc_parse_int("--change-at-frame", optarg, 0, MC_MAX_FRAMES, &opt->change_at, err, errlen))
                return -1;
            break;
        case O_APPEAR:
            if (mc_parse_int("--appear-at-frame", optarg, 0, MC_MAX_FRAMES, &opt->appear_at, err, errlen))
                return -1;
            break;
        case O_COLORS:
            if (mc_parse_list("--colors", optarg, mc_color_names, MC_NCOLORS, opt->colors,
                              &opt->ncolors, err, errlen))
                return -1;
            break;
        case O_SHAPES:
            if (mc_parse_list("--shapes", optarg, mc_shape_names, MC_NSHAPES, opt->shapes,
                              &opt->nshapes, err, errlen))
                return -1;
            break;
        case O_COUNT:
            if (mc_parse_int("--count", optarg, 1, 2, &opt->count, err, errlen))
                return -1;
            break;
        case O_BATCH:
            if (mc_parse_int("--batch", optarg, 1, 100000, &opt->batch, err, errlen))
                return -1;
            break;
        case O_HELP:
            mc_usage(stdout);
            exit(0);
        default:
            if (optopt)
                return mc_fail(err, errlen, "option '%s' needs a value", argv[optind - 1]);
            return mc_fail(err, errlen, "unknown option '%s' (see --help)", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return mc_fail(err, errlen, "unexpected argument '%s' (see --help)", argv[optind]);
    if (opt->type < 0)
        return mc_fail(err, errlen, "--type is required (color|shape|count|direction|exists|"
                       "color_now|appear)");
    if (!opt->out && !opt->truth && !opt->raw)
        return mc_fail(err, errlen, "nothing to write: give --out FILE.mp4, --truth FILE.json "
                       "and/or --raw");
    if (opt->batch > 0 && (!opt->truth || opt->out || opt->raw))
        return mc_fail(err, errlen, "--batch writes truth files only: give --truth and neither "
                       "--out nor --raw");
    if (opt->batch > 0 && opt->seed + (uint64_t)opt->batch - 1 > MC_MAX_SEED)
        return mc_fail(err, errlen, "--batch: seeds past %llu", MC_MAX_SEED);
    if (opt->out && (opt->width % 2 || opt->height % 2))
        return mc_fail(err, errlen, "--size: H.264 in yuv420p needs even sides, got %dx%d",
                       opt->width, opt->height);
    if (opt->raw && isatty(STDOUT_FILENO))
        return mc_fail(err, errlen, "--raw: refusing to write binary frames to a terminal; "
                       "pipe or redirect stdout");

    /* Options that only make sense for some question types. */
    bool two_ok = opt->type == MC_T_COUNT || opt->type == MC_T_EXISTS || opt->type == MC_T_APPEAR;
    if (opt->change_at >= 0 && opt->type != MC_T_COLOR_NOW)
        return mc_fail(err, errlen, "--change-at-frame applies to --type color_now only");
    if (opt->appear_at >= 0 && opt->type != MC_T_APPEAR)
        return mc_fail(err, errlen, "--appear-at-frame applies to --type appear only");
    if (opt->count > 0 && opt->type != MC_T_COUNT && opt->type != MC_T_EXISTS)
        return mc_fail(err, errlen, "--count applies to --type count and exists only");
    if (opt->ncolors == 2 && !two_ok && opt->type != MC_T_COLOR_NOW)
        return mc_fail(err, errlen, "--colors: --type %s has one shape of one colour; give one colour",
                       mc_type_names[opt->type]);
    if (opt->nshapes == 2 && !two_ok)
        return mc_fail(err, errlen, "--shapes: --type %s has one shape; give one shape",
                       mc_type_names[opt->type]);
    if (opt->count == 1 && (opt->ncolors == 2 || opt->nshapes == 2))
        return mc_fail(err, errlen, "--count 1 conflicts with two entries in --colors/--shapes");
    return 0;
}

int main(int argc, char **argv)
{
    char err[512];
    mc_options opt;
    if (mc_parse_args(argc, argv, &opt, err, sizeof err) != 0) {
        fprintf(stderr, MC_PROG ": %s\n", err);
        return 2;
    }
    /* A dead ffmpeg or a closed stdout must come back as a write error, not kill us silently. */
    signal(SIGPIPE, SIG_IGN);

    /* Scenes first: a rule that cannot be met is a usage error (2) and creates no file. */
    mc_scene sc;
    cJSON *doc = NULL;
    if (opt.batch > 0) {
        doc = cJSON_CreateArray();
        for (int i = 0; doc && i < opt.batch; i++) {
            mc_options one = opt;
            one.seed = opt.seed + (uint64_t)i;
            if (mc_scene_build(&one, &sc, err, sizeof err) != 0) {
                fprintf(stderr, MC_PROG ": seed %" PRIu64 ": %s\n", one.seed, err);
                cJSON_Delete(doc);
                return 2;
            }
            cJSON_AddItemToArray(doc, mc_truth_json(&sc, &one));
        }
    } else if (mc_scene_build(&opt, &sc, err, sizeof err) != 0) {
        fprintf(stderr, MC_PROG ": %s\n", err);
        return 2;
    } else if (opt.truth) {
        doc = mc_truth_json(&sc, &opt);
    }
    if (opt.truth && !doc) {
        fprintf(stderr, MC_PROG ": out of memory while building %s\n", opt.truth);
        return 1;
    }

    /* Both outputs are created before the work starts, so a bad path fails at once with our own
     * message, and a failure later never leaves one of them behind. */
    FILE *truth = NULL;
    if (opt.truth && !(truth = fopen(opt.truth, "w"))) {
        fprintf(stderr, MC_PROG ": --truth: cannot create %s: %s\n", opt.truth, strerror(errno));
        cJSON_Delete(doc);
        return 1;
    }
    if (opt.out) {
        FILE *probe = fopen(opt.out, "wb");
        if (!probe) {
            fprintf(stderr, MC_PROG ": --out: cannot create %s: %s\n", opt.out, strerror(errno));
            if (truth) {
                fclose(truth);
                unlink(opt.truth);
            }
            cJSON_Delete(doc);
            return 1;
        }
        fclose(probe);
    }
    int rc = 0;
    if ((opt.out || opt.raw) && mc_render_all(&sc, &opt, err, sizeof err) != 0)
        rc = 1;
    if (truth) {
        if (rc == 0 && mc_write_json(doc, &opt, truth, err, sizeof err) != 0)
            rc = 1;
        else if (rc != 0)
            cJSON_Delete(doc);
        if (fclose(truth) != 0 && rc == 0) {
            snprintf(err, sizeof err, "--truth: writing %s failed: %s", opt.truth, strerror(errno));
            rc = 1;
        }
    }
    if (rc != 0) {
        fprintf(stderr, MC_PROG ": %s\n", err);
        if (opt.truth)
            unlink(opt.truth);
        if (opt.out)
            unlink(opt.out);
    }
    return rc;
}
