/* resize.c — smart_resize (image and video rules of the upstream processors) and the
 * antialiased bicubic resize that reproduces torch's CPU float kernel
 * (`_upsample_bicubic2d_aa`, aten/src/ATen/native/cpu/UpSampleKernel.cpp).
 *
 * Exactness matters here: a resized frame that differs from the reference by one LSB changes
 * pixel_values and therefore every activation downstream, so the arithmetic below follows
 * torch's expression by expression (float vs double promotion included). */
#include "ingest/ingest.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Torch's kernel is built with FMA contraction for its AVX2/AVX512 variants; contraction in
 * our build would be decided by the compiler instead. Keep the compiler out of it: every
 * multiply-add below is written explicitly (see INGEST_MADD). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Python's round(): half to even. nearbyint uses the current rounding mode, which is
 * round-to-nearest-even unless someone changed it; rint-family is exact for doubles. */
static double py_round(double x) { return nearbyint(x); }

static int check_aspect(int height, int width, char *err, size_t errlen)
{
    double hi = height > width ? height : width;
    double lo = height > width ? width : height;
    if (hi / lo > INGEST_MAX_ASPECT) {
        set_err(err, errlen,
                "smart_resize: aspect ratio of %dx%d (h x w) is %.1f; it must not exceed %.0f",
                height, width, hi / lo, INGEST_MAX_ASPECT);
        return INGEST_EINVAL;
    }
    return 0;
}

int ingest_smart_resize_image(int height, int width, long min_pixels, long max_pixels,
                              ingest_resize_rule rule, int *out_h, int *out_w,
                              char *err, size_t errlen)
{
    const double f = INGEST_FACTOR;
    if (height <= 0 || width <= 0) {
        set_err(err, errlen, "smart_resize: image size %dx%d (h x w) must be positive",
                height, width);
        return INGEST_EINVAL;
    }
    if (min_pixels <= 0 || max_pixels <= 0 || min_pixels > max_pixels) {
        set_err(err, errlen,
                "smart_resize: pixel budget min %ld / max %ld invalid (need 0 < min <= max)",
                min_pixels, max_pixels);
        return INGEST_EINVAL;
    }
    int rc = check_aspect(height, width, err, errlen);
    if (rc)
        return rc;

    double h_bar = py_round(height / f) * f;
    double w_bar = py_round(width / f) * f;
    if (rule == INGEST_RULE_QWEN_VL_UTILS) {
        if (h_bar < f) h_bar = f;
        if (w_bar < f) w_bar = f;
    }
    double hw = (double)height * (double)width;
    if (h_bar * w_bar > (double)max_pixels) {
        double beta = sqrt(hw / (double)max_pixels);
        h_bar = floor(height / beta / f) * f;
        w_bar = floor(width / beta / f) * f;
        /* transformers clamps to one factor; qwen-vl-utils does not, but a 0-sized side is
         * unusable, so both get the clamp (only reachable with extreme aspect + tiny max). */
        if (h_bar < f) h_bar = f;
        if (w_bar < f) w_bar = f;
    } else if (h_bar * w_bar < (double)min_pixels) {
        double beta = sqrt((double)min_pixels / hw);
        h_bar = ceil(height * beta / f) * f;
        w_bar = ceil(width * beta / f) * f;
    }
    *out_h = (int)h_bar;
    *out_w = (int)w_bar;
    return 0;
}

int ingest_smart_resize_video(int num_frames, int height, int width, long min_pixels,
                              long max_pixels, int *out_h, int *out_w, char *err, size_t errlen)
{
    const double f = INGEST_FACTOR;
    const int temporal = 2;
    if (num_frames < temporal) {
        set_err(err, errlen, "smart_resize: video has %d frame(s); at least %d are needed",
                num_frames, temporal);
        return INGEST_EINVAL;
    }
    if (height <= 0 || width <= 0) {
        set_err(err, errlen, "smart_resize: video size %dx%d (h x w) must be positive",
                height, width);
        return INGEST_EINVAL;
    }
    if (min_pixels <= 0 || max_pixels <= 0 || min_pixels > max_pixels) {
        set_err(err, errlen,
                "smart_resize: clip pixel budget min %ld / max %ld invalid (need 0 < min <= max)",
                min_pixels, max_pixels);
        return INGEST_EINVAL;
    }
    /* Frames smaller than one factor are scaled up first (as current transformers does)
     * instead of refusing them like v4.57 did: a 24-pixel-high stream is still a stream. */
    if (height < f || width < f) {
        double scale = fmax(f / height, f / width);
        height = (int)(height * scale);
        width = (int)(width * scale);
    }
    int rc = check_aspect(height, width, err, errlen);
    if (rc)
        return rc;

    double h_bar = py_round(height / f) * f;
    double w_bar = py_round(width / f) * f;
    double t_bar = py_round((double)num_frames / temporal) * temporal;
    double thw = (double)num_frames * height * width;
    if (t_bar * h_bar * w_bar > (double)max_pixels) {
        double beta = sqrt(thw / (double)max_pixels);
        h_bar = fmax(f, floor(height / beta / f) * f);
        w_bar = fmax(f, floor(width / beta / f) * f);
    } else if (t_bar * h_bar * w_bar < (double)min_pixels) {
        double beta = sqrt((double)min_pixels / thw);
        h_bar = ceil(height * beta / f) * f;
        w_bar = ceil(width * beta / f) * f;
    }
    *out_h = (int)h_bar;
    *out_w = (int)w_bar;
    return 0;
}

double ingest_qvu_frame_max_pixels(int nframes, long min_pixels, long max_pixels,
                                   double total_pixels)
{
    if (total_pixels <= 0)
        total_pixels = 128000.0 * 1024.0 * 0.9;
    if (nframes < 1)
        nframes = 1;
    double m = fmin((double)max_pixels, total_pixels / nframes * 2);
    return fmax(m, 1.05 * (double)min_pixels);
}

/* ---- antialiased bicubic ------------------------------------------------------------ */

/* One axis: for each output index, the first source index and its taps. */
typedef struct axis_weights {
    int out_size;
    int max_taps;       /* slots per output (torch's interp_size) */
    int *xmin;
    int *xsize;
    float *w;           /* out_size * max_taps */
} axis_weights;

/* GCC/Clang vector types. Lane-wise + and * are plain IEEE float ops, so using them does
 * not change any value; the "u" variants allow unaligned loads and stores. */
typedef float v4f __attribute__((vector_size(16)));
typedef float v4fu __attribute__((vector_size(16), aligned(4), may_alias));
typedef float v8f __attribute__((vector_size(32)));
typedef float v8fu __attribute__((vector_size(32), aligned(4), may_alias));

struct ingest_resizer {
    int src_h, src_w, dst_h, dst_w;
    bool identity;
    axis_weights ax_w;  /* horizontal (applied first, like torch) */
    axis_weights ax_h;
    float *tmp;         /* src_h * dst_w * 3 (+1 pad) after the horizontal pass */
    float *rowf;        /* one source row as floats (+1 pad) */
};

/* PIL/torch cubic convolution, a = -0.5. The two branches promote differently in torch's
 * C++: the first is evaluated in double ((a + 2.0) is double), the second in float until the
 * final "* a". Reproduced literally. */
static float cubic_filter(float x)
{
    const double a = -0.5;
    if (x < 0.0f)
        x = -x;
    if (x < 1.0f)
        return (float)(((a + 2.0) * x - (a + 3.0)) * x * x + 1);
    if (x < 2.0f)
        return (float)((((x - 5) * x + 8) * x - 4) * a);
    return 0.0f;
}

static int axis_weights_init(axis_weights *ax, int in_size, int out_size)
{
    /* area_pixel_compute_scale<float>(in, out, align_corners=false, no scale):
     * static_cast<float>(input_size) / output_size */
    float scale = (float)in_size / (float)out_size;
    const int interp_size = 4; /* bicubic */
    float support = (scale >= 1.0f) ? (float)((interp_size * 0.5) * scale) : (float)(interp_size * 0.5);
    int max_taps = (int)ceilf(support) * 2 + 1;

    ax->out_size = out_size;
    ax->max_taps = max_taps;
    ax->xmin = malloc(sizeof(int) * (size_t)out_size);
    ax->xsize = malloc(sizeof(int) * (size_t)out_size);
    ax->w = calloc((size_t)out_size * (size_t)max_taps, sizeof(float));
    if (!ax->xmin || !ax->xsize || !ax->w)
        return INGEST_ENOMEM;

    float invscale = (scale >= 1.0f) ? (float)(1.0 / scale) : 1.0f;
    for (int i = 0; i < out_size; i++) {
        float center = (float)(scale * (i + 0.5));
        float total_w = 0.0f;
        int64_t xmin = (int64_t)((double)(center - support) + 0.5);
        if (xmin < 0)
            xmin = 0;
        int64_t xmax = (int64_t)((double)(center + support) + 0.5);
        if (xmax > in_size)
            xmax = in_size;
        int64_t xsize = xmax - xmin;
        if (xsize > max_taps)
            xsize = max_taps; /* cannot happen with these bounds; guards the buffer */
        float *wt = ax->w + (size_t)i * (size_t)max_taps;
        for (int64_t j = 0; j < xsize; j++) {
            /* (j + xmin - center + 0.5) * invscale: int64 - float is float, + 0.5 double */
            float arg = (float)(((double)((float)(j + xmin) - center) + 0.5) * invscale);
            float w = cubic_filter(arg);
            wt[j] = w;
            total_w += w;
        }
        for (int64_t j = 0; j < xsize; j++)
            if (total_w != 0.0f)
                wt[j] /= total_w;
        ax->xmin[i] = (int)xmin;
        ax->xsize[i] = (int)xsize;
    }
    return 0;
}

static void axis_weights_free(axis_weights *ax)
{
    free(ax->xmin);
    free(ax->xsize);
    free(ax->w);
    memset(ax, 0, sizeof(*ax));
}

int ingest_resizer_create(ingest_resizer **out, int src_h, int src_w, int dst_h, int dst_w,
                          char *err, size_t errlen)
{
    *out = NULL;
    if (src_h <= 0 || src_w <= 0 || dst_h <= 0 || dst_w <= 0) {
        set_err(err, errlen, "resize: sizes %dx%d -> %dx%d (h x w) must be positive",
                src_h, src_w, dst_h, dst_w);
        return INGEST_EINVAL;
    }
    if ((size_t)dst_h * (size_t)dst_w > (size_t)1 << 28 ||
        (size_t)src_h * (size_t)dst_w > (size_t)1 << 28) {
        set_err(err, errlen, "resize: %dx%d -> %dx%d is too large", src_h, src_w, dst_h, dst_w);
        return INGEST_EINVAL;
    }
    ingest_resizer *r = calloc(1, sizeof(*r));
    if (!r) {
        set_err(err, errlen, "resize: out of memory");
        return INGEST_ENOMEM;
    }
    r->src_h = src_h;
    r->src_w = src_w;
    r->dst_h = dst_h;
    r->dst_w = dst_w;
    r->identity = (src_h == dst_h && src_w == dst_w);
    if (!r->identity) {
        if (axis_weights_init(&r->ax_w, src_w, dst_w) ||
            axis_weights_init(&r->ax_h, src_h, dst_h) ||
            !(r->tmp = malloc(sizeof(float) * ((size_t)src_h * (size_t)dst_w * 3 + 4))) ||
            !(r->rowf = malloc(sizeof(float) * ((size_t)src_w * 3 + 4)))) {
            ingest_resizer_destroy(r);
            set_err(err, errlen, "resize: out of memory for %dx%d -> %dx%d", src_h, src_w,
                    dst_h, dst_w);
            return INGEST_ENOMEM;
        }
    }
    *out = r;
    return 0;
}

void ingest_resizer_destroy(ingest_resizer *r)
{
    if (!r)
        return;
    axis_weights_free(&r->ax_w);
    axis_weights_free(&r->ax_h);
    free(r->tmp);
    free(r->rowf);
    free(r);
}

/* torch accumulates output = t0*w0; output += tj*wj in float, tap order 0..n-1. */
static inline float madd(float acc, float t, float w)
{
    float p = t * w;
    return acc + p;
}

static inline uint8_t to_u8(float v)
{
    /* clamp [0,255] then round half to even (torch.round), then cast */
    if (!(v > 0.0f))
        return 0; /* also maps NaN to 0 */
    if (v > 255.0f)
        v = 255.0f;
    return (uint8_t)nearbyintf(v);
}

void ingest_resizer_run(ingest_resizer *r, const uint8_t *src, size_t src_stride, uint8_t *dst)
{
    const int sh = r->src_h, sw = r->src_w, dh = r->dst_h, dw = r->dst_w;
    if (r->identity) {
        for (int y = 0; y < sh; y++)
            memcpy(dst + (size_t)y * (size_t)dw * 3, src + (size_t)y * src_stride, (size_t)sw * 3);
        return;
    }
    const size_t rowlen = (size_t)dw * 3;

    /* Horizontal pass (the contiguous dim first, as torch does): src rows -> tmp[sh][dw][3].
     * The three channels of a pixel ride in one 4-lane vector, so each output value gets
     * exactly torch's sequence of float multiplies and adds, in tap order. The 4th lane is
     * junk that the next pixel's store overwrites (hence one float of padding). */
    const axis_weights *ax = &r->ax_w;
    float *rowf = r->rowf;
    for (int y = 0; y < sh; y++) {
        const uint8_t *row = src + (size_t)y * src_stride;
        for (size_t i = 0; i < (size_t)sw * 3; i++)
            rowf[i] = (float)row[i];
        rowf[(size_t)sw * 3] = 0.0f;
        float *out = r->tmp + (size_t)y * rowlen;
        for (int ox = 0; ox < dw; ox++) {
            const float *wt = ax->w + (size_t)ox * (size_t)ax->max_taps;
            const float *p = rowf + (size_t)ax->xmin[ox] * 3;
            int n = ax->xsize[ox];
            v4f acc = *(const v4fu *)p * wt[0];
            for (int j = 1; j < n; j++) {
                v4f t = *(const v4fu *)(p + (size_t)j * 3) * wt[j];
                acc = acc + t;
            }
            *(v4fu *)(out + (size_t)ox * 3) = acc;
        }
    }

    /* Vertical pass: tmp -> dst, eight values side by side, taps in torch's order. */
    const axis_weights *ay = &r->ax_h;
    for (int oy = 0; oy < dh; oy++) {
        const float *wt = ay->w + (size_t)oy * (size_t)ay->max_taps;
        const float *base = r->tmp + (size_t)ay->xmin[oy] * rowlen;
        int n = ay->xsize[oy];
        uint8_t *o = dst + (size_t)oy * rowlen;
        size_t x = 0;
        for (; x + 8 <= rowlen; x += 8) {
            v8f acc = *(const v8fu *)(base + x) * wt[0];
            for (int j = 1; j < n; j++) {
                v8f t = *(const v8fu *)(base + (size_t)j * rowlen + x) * wt[j];
                acc = acc + t;
            }
            for (int k = 0; k < 8; k++)
                o[x + k] = to_u8(acc[k]);
        }
        for (; x < rowlen; x++) {
            float a = base[x] * wt[0];
            for (int j = 1; j < n; j++)
                a = madd(a, base[(size_t)j * rowlen + x], wt[j]);
            o[x] = to_u8(a);
        }
    }
}

int ingest_resize_rgb24(const uint8_t *src, int src_h, int src_w, size_t src_stride,
                        uint8_t *dst, int dst_h, int dst_w, char *err, size_t errlen)
{
    ingest_resizer *r;
    int rc = ingest_resizer_create(&r, src_h, src_w, dst_h, dst_w, err, errlen);
    if (rc)
        return rc;
    ingest_resizer_run(r, src, src_stride, dst);
    ingest_resizer_destroy(r);
    return 0;
}
