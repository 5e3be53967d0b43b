/* golden.h — what the golden tests (tests/test_golden_*.c) share: they run the Qwen3-VL forward
 * against the upstream Hugging Face reference arrays of one set directory under
 * tests/data/golden/ (see its READMEs). Here: loading a case's arrays, relative-error checks, a
 * checker for the model's trace points, the model fixture, and one whole case run end to end.
 * Every check fails the running cmocka test with a message naming the case and the tensor; none
 * returns an error. What a set checks beyond that (the MoE router) comes in through
 * golden_case_hooks; its tolerances come in as golden_tolerances. */
#ifndef VIGIL_TESTS_SUPPORT_GOLDEN_H
#define VIGIL_TESTS_SUPPORT_GOLDEN_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "model/tokenizer.h"
#include "tests/support/npy.h"

/* Reference arrays: <set_dir>/<kase>_<what>.npy (<set_dir>/<what>.npy for kase ""). _opt returns
 * NULL when the file does not exist; both fail the test on a file that does not load. */
npy_array *golden_load_opt(const char *set_dir, const char *kase, const char *what);
npy_array *golden_load(const char *set_dir, const char *kase, const char *what);

/* Max abs error over max abs reference (the max abs error itself if the reference is all zero);
 * a NaN in got gives NaN, which no tolerance accepts. */
double golden_rel_err(const float *got, const float *ref, size_t n);
void golden_expect_close(const char *what, const float *got, const float *ref, size_t n, double tol);

/* Trace checker: every expected (name, index) of model_set_trace must be produced exactly once
 * with the expected shape and within tolerance. Install with
 * model_set_trace(m, golden_trace_record, &checker). */
#define GOLDEN_MAX_TRACES 64

typedef struct golden_trace_expect {
    const char *name;
    int index;
    const float *ref; /* rows x cols, borrowed */
    int rows, cols;
    int seen;         /* filled in by golden_trace_record */
    double err;
} golden_trace_expect;

typedef struct golden_trace_checker {
    golden_trace_expect expect[GOLDEN_MAX_TRACES];
    int n;
    model_trace_fn also; /* if set, also called with also_ctx for every trace point */
    void *also_ctx;
} golden_trace_checker;

void golden_expect_trace(golden_trace_checker *c, const char *name, int index, const float *ref, int rows,
                         int cols);
void golden_trace_record(void *checker, const char *name, int index, const float *data, int rows, int cols);
void golden_check_traces(const golden_trace_checker *c, double tol);

/* The set's checkpoint, model and tokenizer in one compute mode. open returns 0, or -1 with a
 * message on stderr (for a cmocka group setup); close is safe on a partly opened fixture. */
typedef struct golden_model {
    const char *set_dir;
    checkpoint *ck;
    model *m;
    tokenizer *tok;
    model_compute compute;
} golden_model;

int golden_model_open(golden_model *g, const char *set_dir, model_compute compute);
void golden_model_close(golden_model *g);

typedef struct golden_tolerances {
    double f32;            /* relative: every traced tensor, the logits and greedy step logits in f32 */
    double bf16;           /* relative: the last prompt position's logits in bf16 */
    double pair_deepstack; /* relative: deepstack of a frame pair encoded alone vs. the whole video */
    float top5_abs;        /* absolute: top-5 logit values at every prompt position (f32), and the gap
                              between neighbouring reference values that counts as clearly apart */
} golden_tolerances;

/* One case's prompt and visual input, built up by golden_run_case. Arrays given to
 * golden_case_keep stay loaded until the case ends. */
#define GOLDEN_MAX_KEPT 48

typedef struct golden_case {
    const char *name; /* "img", "vid", "mix": the file prefix in the set directory */
    int n;            /* prompt length */
    int32_t *ids;     /* the reference prompt ids */
    model_grid img[4], vid[4];
    int n_img, n_vid;
    model_visual_rows visual;
    float *embeds, *deepstack;
    npy_array *kept[GOLDEN_MAX_KEPT];
    int n_kept;
} golden_case;

const float *golden_case_keep(golden_case *c, npy_array *a);

/* What a set checks beyond the common case. Either function may be NULL. */
typedef struct golden_case_hooks {
    /* f32 only, before the prompt forward: add the set's own expected text traces to checker (and
     * set checker->also to see every trace point); arrays to keep go to golden_case_keep. */
    void (*expect_text_traces)(void *ctx, const golden_model *g, golden_case *c, golden_trace_checker *checker);
    /* after the prompt forward and its traces were checked */
    void (*after_prompt_forward)(void *ctx, const golden_model *g, const golden_case *c);
    void *ctx;
} golden_case_hooks;

/* The whole case: prompt ids (tokenizer on the expanded prompt and the chat renderer, both
 * exact), pixel values and grids exact, vision traces (f32) and frame pairs encoded one at a time
 * against the whole video, MRoPE positions and rope delta exact, the prompt forward with all
 * text traces (f32), the last position's logits, top-5 logits at every position (f32), and 8
 * greedy ids (with per-step logits where the set has them, f32). hooks may be NULL. */
void golden_run_case(const golden_model *g, const char *kase, const golden_tolerances *tol,
                     const golden_case_hooks *hooks);

#endif
