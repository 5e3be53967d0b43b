/* npy.c — see npy.h. The header is a Python dict literal written by numpy, e.g.
 *   {'descr': '<f4', 'fortran_order': False, 'shape': (84, 64), }
 * It is parsed key by key rather than with a general Python-literal parser: numpy always
 * writes these three keys, and anything unexpected is reported instead of guessed at. */
#include "tests/support/npy.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void npy_seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void npy_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

const char *npy_dtype_name(npy_dtype t)
{
    switch (t) {
    case NPY_F32: return "<f4";
    case NPY_F64: return "<f8";
    case NPY_I64: return "<i8";
    case NPY_I32: return "<i4";
    case NPY_U8: return "|u1";
    }
    return "?";
}

static const struct {
    const char *descr;
    npy_dtype dtype;
    size_t size;
} npy_descrs[] = {
    { "<f4", NPY_F32, 4 }, { "<f8", NPY_F64, 8 }, { "<i8", NPY_I64, 8 },
    { "<i4", NPY_I32, 4 }, { "|u1", NPY_U8, 1 },  { "<u1", NPY_U8, 1 },
};

/* Finds 'key': in the header and returns the position just after the colon. */
static const char *npy_find_key(const char *hdr, const char *key)
{
    char quoted[32];
    snprintf(quoted, sizeof quoted, "'%s'", key);
    const char *p = strstr(hdr, quoted);
    if (!p)
        return NULL;
    p += strlen(quoted);
    while (*p == ' ')
        p++;
    if (*p != ':')
        return NULL;
    p++;
    while (*p == ' ')
        p++;
    return p;
}

static int npy_parse_header(const char *path, const char *hdr, npy_array *a, char *err,
                            size_t errlen)
{
    const char *p = npy_find_key(hdr, "descr");
    if (!p || *p != '\'') {
        npy_seterr(err, errlen, "%s: header has no 'descr' string (structured dtypes are not "
                   "supported): %s", path, hdr);
        return -1;
    }
    p++;
    const char *end = strchr(p, '\'');
    if (!end || end - p > 15) {
        npy_seterr(err, errlen, "%s: malformed 'descr' in header: %s", path, hdr);
        return -1;
    }
    char descr[16];
    memcpy(descr, p, (size_t)(end - p));
    descr[end - p] = '\0';
    size_t i;
    for (i = 0; i < sizeof npy_descrs / sizeof npy_descrs[0]; i++)
        if (strcmp(descr, npy_descrs[i].descr) == 0)
            break;
    if (i == sizeof npy_descrs / sizeof npy_descrs[0]) {
        npy_seterr(err, errlen, "%s: dtype '%s' not supported (expected one of <f4 <f8 <i8 <i4 "
                   "|u1, little-endian)", path, descr);
        return -1;
    }
    a->dtype = npy_descrs[i].dtype;
    a->elem_size = npy_descrs[i].size;

    p = npy_find_key(hdr, "fortran_order");
    if (!p) {
        npy_seterr(err, errlen, "%s: header has no 'fortran_order': %s", path, hdr);
        return -1;
    }
    if (strncmp(p, "True", 4) == 0) {
        npy_seterr(err, errlen, "%s: Fortran-order arrays are not supported (expected C order)",
                   path);
        return -1;
    }
    if (strncmp(p, "False", 5) != 0) {
        npy_seterr(err, errlen, "%s: malformed 'fortran_order' in header: %s", path, hdr);
        return -1;
    }

    p = npy_find_key(hdr, "shape");
    if (!p || *p != '(') {
        npy_seterr(err, errlen, "%s: header has no 'shape' tuple: %s", path, hdr);
        return -1;
    }
    p++;
    a->ndim = 0;
    a->count = 1;
    for (;;) {
        while (*p == ' ' || *p == ',')
            p++;
        if (*p == ')')
            break;
        if (*p < '0' || *p > '9') {
            npy_seterr(err, errlen, "%s: malformed 'shape' in header: %s", path, hdr);
            return -1;
        }
        if (a->ndim == NPY_MAX_DIMS) {
            npy_seterr(err, errlen, "%s: more than %d dimensions", path, NPY_MAX_DIMS);
            return -1;
        }
        char *num_end;
        errno = 0;
        long long d = strtoll(p, &num_end, 10);
        if (errno || d < 0) {
            npy_seterr(err, errlen, "%s: bad dimension in 'shape': %s", path, hdr);
            return -1;
        }
        if (d > 0 && a->count > SIZE_MAX / a->elem_size / (size_t)d) {
            npy_seterr(err, errlen, "%s: shape too large: %s", path, hdr);
            return -1;
        }
        a->shape[a->ndim++] = d;
        a->count *= (size_t)d;
        p = num_end;
    }
    return 0;
}

npy_array *npy_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        npy_seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    npy_array *a = NULL;
    char *hdr = NULL;
    unsigned char pre[12];
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        npy_seterr(err, errlen, "%s: not a .npy file (expected the \\x93NUMPY magic)", path);
        goto fail;
    }
    size_t hlen;
    if (pre[6] == 1) {
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
    } else if (pre[6] == 2 || pre[6] == 3) {
        if (fread(pre + 10, 1, 2, f) != 2) {
            npy_seterr(err, errlen, "%s: truncated header", path);
            goto fail;
        }
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 |
               (size_t)pre[11] << 24;
    } else {
        npy_seterr(err, errlen, "%s: .npy format version %d.%d not supported (expected 1.0-3.0)",
                   path, pre[6], pre[7]);
        goto fail;
    }
    if (hlen > (1u << 24)) {
        npy_seterr(err, errlen, "%s: header length %zu is implausible", path, hlen);
        goto fail;
    }
    hdr = malloc(hlen + 1);
    a = calloc(1, sizeof *a);
    if (!hdr || !a) {
        npy_seterr(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    if (fread(hdr, 1, hlen, f) != hlen) {
        npy_seterr(err, errlen, "%s: truncated header (expected %zu bytes)", path, hlen);
        goto fail;
    }
    hdr[hlen] = '\0';
    if (npy_parse_header(path, hdr, a, err, errlen) != 0)
        goto fail;
    size_t nbytes = a->count * a->elem_size;
    /* Rounded up so aligned_alloc accepts it and an empty array still has a pointer. */
    a->data = aligned_alloc(64, (nbytes + 63) / 64 * 64 + 64);
    if (!a->data) {
        npy_seterr(err, errlen, "%s: out of memory for %zu bytes", path, nbytes);
        goto fail;
    }
    if (fread(a->data, 1, nbytes, f) != nbytes) {
        npy_seterr(err, errlen, "%s: truncated data (expected %zu bytes for the shape in the "
                   "header)", path, nbytes);
        goto fail;
    }
    free(hdr);
    fclose(f);
    return a;
fail:
    free(hdr);
    npy_free(a);
    fclose(f);
    return NULL;
}

void npy_free(npy_array *a)
{
    if (!a)
        return;
    free(a->data);
    free(a);
}

const float *npy_f32(const npy_array *a)
{
    return a && a->dtype == NPY_F32 ? a->data : NULL;
}

const int64_t *npy_i64(const npy_array *a)
{
    return a && a->dtype == NPY_I64 ? a->data : NULL;
}

const uint8_t *npy_u8(const npy_array *a)
{
    return a && a->dtype == NPY_U8 ? a->data : NULL;
}
