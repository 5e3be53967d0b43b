/* npy.h — a small reader for NumPy .npy files (format versions 1.0, 2.0 and 3.0), enough
 * for the golden reference arrays under tests/data/golden/: little-endian float32, float64,
 * int64, int32 and uint8 in C order. Anything else (big-endian, Fortran order, object
 * arrays, structured dtypes) is rejected with a message rather than misread. */
#ifndef VIGIL_TESTS_SUPPORT_NPY_H
#define VIGIL_TESTS_SUPPORT_NPY_H

#include <stddef.h>
#include <stdint.h>

#define NPY_MAX_DIMS 8

typedef enum {
    NPY_F32,    /* '<f4' */
    NPY_F64,    /* '<f8' */
    NPY_I64,    /* '<i8' */
    NPY_I32,    /* '<i4' */
    NPY_U8,     /* '|u1' */
} npy_dtype;

typedef struct npy_array {
    npy_dtype dtype;
    int ndim;                       /* 0 for a scalar array */
    int64_t shape[NPY_MAX_DIMS];
    size_t count;                   /* number of elements: product of shape (1 for ndim 0) */
    size_t elem_size;               /* bytes per element */
    void *data;                     /* count * elem_size bytes, C order, 64-byte aligned */
} npy_array;

/* Reads a whole .npy file. Returns NULL with a message naming the file and the problem in
 * err (which may be NULL) on any error. Free with npy_free. */
npy_array *npy_load(const char *path, char *err, size_t errlen);
void npy_free(npy_array *a);

/* Typed views: the data pointer if the array has that dtype, else NULL. */
const float *npy_f32(const npy_array *a);
const int64_t *npy_i64(const npy_array *a);
const uint8_t *npy_u8(const npy_array *a);

const char *npy_dtype_name(npy_dtype t);    /* "<f4", ... */

#endif
