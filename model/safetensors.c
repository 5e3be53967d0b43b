/* safetensors.c — see safetensors.h.
 *
 * File layout: 8-byte little-endian header length N, N bytes of JSON header
 * {"__metadata__": {...}, "name": {"dtype", "shape", "data_offsets": [begin, end]}, ...},
 * then the data section; offsets are relative to its start. A checkpoint file comes from
 * the network, so nothing in it is trusted: every length, offset and shape is checked before
 * a pointer into the mapping is handed out. */
#include "model/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Upstream (Rust safetensors) refuses headers above 100 MB; a real checkpoint's header is a
 * few hundred KB, so anything bigger is a corrupt length, not a big model. */
#define ST_MAX_HEADER (100u * 1000u * 1000u)
/* JSON numbers are doubles: offsets beyond 2^53 cannot be represented exactly. */
#define ST_MAX_JSON_INT 9007199254740992.0

static void st_seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void st_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------------------------------- */
/* dtypes                                                                                   */

static const struct {
    const char *name;
    size_t size;
    int rust_rank;    /* position in Rust safetensors' Dtype enum: its writer sorts by it */
} st_dtypes[ST_DTYPE_COUNT] = {
    [ST_F32] = { "F32", 4, 11 },     [ST_F16] = { "F16", 2, 7 },
    [ST_BF16] = { "BF16", 2, 8 },    [ST_F64] = { "F64", 8, 12 },
    [ST_I64] = { "I64", 8, 13 },     [ST_I32] = { "I32", 4, 9 },
    [ST_I16] = { "I16", 2, 5 },      [ST_I8] = { "I8", 1, 2 },
    [ST_U8] = { "U8", 1, 1 },        [ST_BOOL] = { "BOOL", 1, 0 },
    [ST_U16] = { "U16", 2, 6 },      [ST_U32] = { "U32", 4, 10 },
    [ST_U64] = { "U64", 8, 14 },     [ST_F8_E4M3] = { "F8_E4M3", 1, 4 },
    [ST_F8_E5M2] = { "F8_E5M2", 1, 3 },
};

const char *st_dtype_name(st_dtype t)
{
    return (unsigned)t < ST_DTYPE_COUNT ? st_dtypes[t].name : "?";
}

size_t st_dtype_size(st_dtype t)
{
    return (unsigned)t < ST_DTYPE_COUNT ? st_dtypes[t].size : 0;
}

int st_dtype_parse(const char *name, st_dtype *out)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        if (strcmp(name, st_dtypes[i].name) == 0) {
            *out = (st_dtype)i;
            return 0;
        }
    }
    return -1;
}

uint16_t st_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)            /* NaN: keep it a (quiet) NaN */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);                /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

float st_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else {                                        /* subnormal: normalise */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while ((man & 0x400u) == 0);
        u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t st_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t au = u & 0x7fffffffu;
    if (au > 0x7f800000u)
        return sign | 0x7e00u;                      /* NaN */
    if (au >= 0x477ff000u)                          /* rounds to >= 65520: infinity */
        return sign | 0x7c00u;
    if (au < 0x38800000u) {                         /* below the smallest normal f16 */
        if (au < 0x33000000u)                       /* below half the smallest subnormal */
            return sign;
        uint32_t man = (au & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(au >> 23);          /* 14..24 */
        uint32_t half = 1u << (shift - 1);
        uint32_t rest = man & ((1u << shift) - 1u);
        uint32_t r = man >> shift;
        if (rest > half || (rest == half && (r & 1u)))
            r++;
        return sign | (uint16_t)r;
    }
    uint32_t r = au + 0xfffu + ((au >> 13) & 1u);   /* round to nearest even at bit 13 */
    return sign | (uint16_t)((r - 0x38000000u) >> 13);
}

size_t st_tensor_numel(const st_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

int st_tensor_read_f32(const st_tensor *t, size_t first, size_t count, float *dst)
{
    size_t n = st_tensor_numel(t);
    if (first > n || count > n - first)
        return -1;
    const uint8_t *src = (const uint8_t *)t->data;
    switch (t->dtype) {
    case ST_F32:
        memcpy(dst, src + first * 4, count * 4);
        return 0;
    case ST_BF16:
        for (size_t i = 0; i < count; i++) {
            uint16_t h;
            memcpy(&h, src + (first + i) * 2, 2);
            dst[i] = st_bf16_to_f32(h);
        }
        return 0;
    case ST_F16:
        for (size_t i = 0; i < count; i++) {
            uint16_t h;
            memcpy(&h, src + (first + i) * 2, 2);
            dst[i] = st_f16_to_f32(h);
        }
        return 0;
    default:
        return -1;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Reading                                                                                  */

typedef struct st_file {
    char *path;
    uint8_t *map;
    size_t size;
    st_tensor *tensors;           /* sorted by name; the names are owned here */
    size_t ntensors;
} st_file;

struct st_archive {
    st_file *files;
    size_t nfiles;
    st_tensor *tensors;           /* sorted by name; names point into the files' storage */
    size_t ntensors;
};

static void st_file_free(st_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->ntensors; i++)
        free((char *)f->tensors[i].name);
    free(f->tensors);
    if (f->map)
        munmap(f->map, f->size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

static int st_cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int st_cmp_tensor_offset(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if ((const uint8_t *)x->data != (const uint8_t *)y->data)
        return (const uint8_t *)x->data < (const uint8_t *)y->data ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* A JSON number that is a non-negative integer representable exactly. */
static bool st_json_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    if (!(d >= 0) || d > ST_MAX_JSON_INT || d != (double)(uint64_t)d)
        return false;
    *out = (uint64_t)d;
    return true;
}

static void st_format_shape(char *buf, size_t len, const int64_t *shape, int ndim)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "[");
    for (int i = 0; i < ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

/* Parses one tensor entry of a header into t (name not set). */
static int st_parse_entry(const char *path, const char *name, const cJSON *e, size_t data_len,
                          st_tensor *t, uint64_t *begin_out, char *err, size_t errlen)
{
    if (!cJSON_IsObject(e)) {
        st_seterr(err, errlen, "%s: tensor '%s': expected an object with dtype, shape and "
                  "data_offsets", path, name);
        return -1;
    }
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt)) {
        st_seterr(err, errlen, "%s: tensor '%s': missing \"dtype\" string", path, name);
        return -1;
    }
    if (st_dtype_parse(dt->valuestring, &t->dtype) != 0) {
        st_seterr(err, errlen, "%s: tensor '%s': unknown dtype '%.40s' (expected a safetensors "
                  "dtype such as BF16, F16, F32)", path, name, dt->valuestring);
        return -1;
    }
    if (!cJSON_IsArray(sh)) {
        st_seterr(err, errlen, "%s: tensor '%s': missing \"shape\" array", path, name);
        return -1;
    }
    int ndim = cJSON_GetArraySize(sh);
    if (ndim > ST_MAX_DIMS) {
        st_seterr(err, errlen, "%s: tensor '%s': %d dimensions (at most %d supported)", path,
                  name, ndim, ST_MAX_DIMS);
        return -1;
    }
    t->ndim = ndim;
    size_t esz = st_dtype_size(t->dtype);
    uint64_t expect = esz;
    bool overflow = false;
    int i = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, sh) {
        uint64_t v;
        if (!st_json_uint(d, &v)) {
            st_seterr(err, errlen, "%s: tensor '%s': shape must be an array of non-negative "
                      "integers", path, name);
            return -1;
        }
        t->shape[i++] = (int64_t)v;
        if (v != 0 && expect > UINT64_MAX / v)
            overflow = true;
        else
            expect *= v;
    }
    uint64_t b, en;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 ||
        !st_json_uint(cJSON_GetArrayItem(off, 0), &b) ||
        !st_json_uint(cJSON_GetArrayItem(off, 1), &en) || b > en) {
        st_seterr(err, errlen, "%s: tensor '%s': data_offsets must be [begin, end] with "
                  "0 <= begin <= end", path, name);
        return -1;
    }
    char shape[160];
    st_format_shape(shape, sizeof shape, t->shape, t->ndim);
    if (overflow || en - b != expect) {
        st_seterr(err, errlen, "%s: tensor '%s': data size %llu bytes does not match dtype %s "
                  "x shape %s = %s%llu bytes", path, name, (unsigned long long)(en - b),
                  st_dtype_name(t->dtype), shape, overflow ? "more than " : "",
                  (unsigned long long)(overflow ? UINT64_MAX : expect));
        return -1;
    }
    if (en > data_len) {
        st_seterr(err, errlen, "%s: tensor '%s': data_offsets [%llu, %llu] go beyond the data "
                  "section (%zu bytes; is the file truncated?)", path, name,
                  (unsigned long long)b, (unsigned long long)en, data_len);
        return -1;
    }
    t->nbytes = (size_t)(en - b);
    *begin_out = b;
    return 0;
}

static int st_file_open(const char *path, st_file *f, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    cJSON *hdr = NULL;
    st_tensor **by_off = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        st_seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    f->path = strdup(path);
    struct stat stt;
    if (!f->path || fstat(fd, &stt) != 0) {
        st_seterr(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(stt.st_mode)) {
        st_seterr(err, errlen, "%s: not a regular file", path);
        goto fail;
    }
    f->size = (size_t)stt.st_size;
    if (f->size < 8) {
        st_seterr(err, errlen, "%s: truncated file: %zu bytes, but a safetensors file starts "
                  "with an 8-byte header length", path, f->size);
        goto fail;
    }
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        st_seterr(err, errlen, "%s: cannot mmap %zu bytes: %s", path, f->size, strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;

    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | f->map[i];
    if (hlen > f->size - 8) {
        st_seterr(err, errlen, "%s: header length %llu is beyond the end of the file (%zu bytes "
                  "follow the 8-byte length; truncated or not a safetensors file)", path,
                  (unsigned long long)hlen, f->size - 8);
        goto fail;
    }
    if (hlen > ST_MAX_HEADER || hlen < 2) {
        st_seterr(err, errlen, "%s: header length %llu is implausible (expected 2 to %u bytes)",
                  path, (unsigned long long)hlen, ST_MAX_HEADER);
        goto fail;
    }
    const char *json = (const char *)f->map + 8;
    const char *parse_end = NULL;
    hdr = cJSON_ParseWithLengthOpts(json, (size_t)hlen, &parse_end, false);
    if (!hdr) {
        size_t at = parse_end && parse_end >= json ? (size_t)(parse_end - json) : 0;
        st_seterr(err, errlen, "%s: header is not valid JSON (error near byte %zu of %llu)",
                  path, at, (unsigned long long)hlen);
        goto fail;
    }
    /* Only padding may follow the JSON object. */
    for (const char *p = parse_end; p && p < json + hlen; p++) {
        if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t' && *p != '\0') {
            st_seterr(err, errlen, "%s: header has trailing bytes after the JSON object (at "
                      "byte %zu of %llu)", path, (size_t)(p - json), (unsigned long long)hlen);
            goto fail;
        }
    }
    if (!cJSON_IsObject(hdr)) {
        st_seterr(err, errlen, "%s: header is not a JSON object", path);
        goto fail;
    }
    size_t data_len = f->size - 8 - (size_t)hlen;
    const uint8_t *data = f->map + 8 + hlen;
    size_t n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, hdr) {
        if (strcmp(e->string, "__metadata__") != 0)
            n++;
    }
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    by_off = calloc(n ? n : 1, sizeof *by_off);
    if (!f->tensors || !by_off) {
        st_seterr(err, errlen, "%s: out of memory for %zu tensors", path, n);
        goto fail;
    }
    cJSON_ArrayForEach(e, hdr) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(e)) {
                st_seterr(err, errlen, "%s: __metadata__ must be an object", path);
                goto fail;
            }
            continue;
        }
        st_tensor *t = &f->tensors[f->ntensors];
        uint64_t begin;
        if (st_parse_entry(path, e->string, e, data_len, t, &begin, err, errlen) != 0)
            goto fail;
        t->name = strdup(e->string);
        if (!t->name) {
            st_seterr(err, errlen, "%s: out of memory", path);
            goto fail;
        }
        f->ntensors++;
        t->data = data + begin;
        t->file = f->path;
        /* Weights are read through typed pointers (uint16_t *, float *); a misaligned one
         * would be undefined behaviour, so refuse it here, where the message can name it. */
        size_t esz = st_dtype_size(t->dtype);
        if (((uintptr_t)t->data) % esz != 0) {
            st_seterr(err, errlen, "%s: tensor '%s': data offset %llu leaves it misaligned for "
                      "%zu-byte %s elements (header length %llu)", path, t->name,
                      (unsigned long long)begin, esz, st_dtype_name(t->dtype),
                      (unsigned long long)hlen);
            goto fail;
        }
        by_off[f->ntensors - 1] = t;
    }
    /* Overlapping data would let one tensor's bytes be read as another's. */
    qsort(by_off, f->ntensors, sizeof *by_off, st_cmp_tensor_offset);
    for (size_t i = 1; i < f->ntensors; i++) {
        const st_tensor *a = by_off[i - 1], *b = by_off[i];
        const uint8_t *a_end = (const uint8_t *)a->data + a->nbytes;
        if (a->nbytes && b->nbytes && (const uint8_t *)b->data < a_end) {
            st_seterr(err, errlen, "%s: tensors '%s' (bytes %zu-%zu) and '%s' (bytes %zu-%zu) "
                      "overlap in the data section", path, a->name,
                      (size_t)((const uint8_t *)a->data - data), (size_t)(a_end - data),
                      b->name, (size_t)((const uint8_t *)b->data - data),
                      (size_t)((const uint8_t *)b->data - data) + b->nbytes);
            goto fail;
        }
    }
    qsort(f->tensors, f->ntensors, sizeof *f->tensors, st_cmp_tensor_name);
    for (size_t i = 1; i < f->ntensors; i++) {
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
            st_seterr(err, errlen, "%s: tensor '%s' appears twice in the header", path,
                      f->tensors[i].name);
            goto fail;
        }
    }
    free(by_off);
    cJSON_Delete(hdr);
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    free(by_off);
    cJSON_Delete(hdr);
    st_file_free(f);
    return -1;
}

static const st_tensor *st_find_in(const st_tensor *ts, size_t n, const char *name)
{
    st_tensor key = { .name = name };
    return bsearch(&key, ts, n, sizeof *ts, st_cmp_tensor_name);
}

int st_archive_open_file(const char *path, st_archive **out, char *err, size_t errlen)
{
    *out = NULL;
    st_archive *a = calloc(1, sizeof *a);
    if (!a || !(a->files = calloc(1, sizeof *a->files))) {
        free(a);
        st_seterr(err, errlen, "%s: out of memory", path);
        return -1;
    }
    if (st_file_open(path, &a->files[0], err, errlen) != 0) {
        st_archive_close(a);
        return -1;
    }
    a->nfiles = 1;
    a->ntensors = a->files[0].ntensors;
    a->tensors = malloc((a->ntensors ? a->ntensors : 1) * sizeof *a->tensors);
    if (!a->tensors) {
        st_seterr(err, errlen, "%s: out of memory", path);
        st_archive_close(a);
        return -1;
    }
    memcpy(a->tensors, a->files[0].tensors, a->ntensors * sizeof *a->tensors);
    *out = a;
    return 0;
}

static char *st_join(const char *dir, const char *name)
{
    size_t dl = strlen(dir);
    bool slash = dl > 0 && dir[dl - 1] == '/';
    size_t len = dl + (slash ? 0 : 1) + strlen(name) + 1;
    char *p = malloc(len);
    if (p)
        snprintf(p, len, "%s%s%s", dir, slash || dl == 0 ? "" : "/", name);
    return p;
}

static char *st_read_text(const char *path, size_t max, size_t *len_out, char *err,
                          size_t errlen)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        st_seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 65536 + 1 > cap) {
            cap = cap ? cap * 2 : 131072;
            char *nb = realloc(buf, cap);
            if (!nb) {
                st_seterr(err, errlen, "%s: out of memory", path);
                goto fail;
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, 65536, fp);
        len += got;
        if (len > max) {
            st_seterr(err, errlen, "%s: larger than %zu bytes, not a plausible index", path, max);
            goto fail;
        }
        if (got < 65536) {
            if (ferror(fp)) {
                st_seterr(err, errlen, "%s: read error: %s", path, strerror(errno));
                goto fail;
            }
            break;
        }
    }
    buf[len] = '\0';
    fclose(fp);
    *len_out = len;
    return buf;
fail:
    free(buf);
    fclose(fp);
    return NULL;
}

static int st_open_index(const char *dir, const char *index_path, st_archive **out, char *err,
                         size_t errlen)
{
    st_archive *a = NULL;
    cJSON *root = NULL;
    char *shard_path = NULL;
    size_t len;
    char *text = st_read_text(index_path, ST_MAX_HEADER, &len, err, errlen);
    if (!text)
        return -1;
    root = cJSON_ParseWithLength(text, len);
    if (!root || !cJSON_IsObject(root)) {
        st_seterr(err, errlen, "%s: not a valid JSON object", index_path);
        goto fail;
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        st_seterr(err, errlen, "%s: expected a \"weight_map\" object mapping tensor names to "
                  "shard files", index_path);
        goto fail;
    }
    size_t n = (size_t)cJSON_GetArraySize(wm);
    if (n == 0) {
        st_seterr(err, errlen, "%s: \"weight_map\" is empty", index_path);
        goto fail;
    }
    a = calloc(1, sizeof *a);
    if (!a || !(a->files = calloc(n, sizeof *a->files)) ||
        !(a->tensors = calloc(n, sizeof *a->tensors))) {
        st_seterr(err, errlen, "%s: out of memory", index_path);
        goto fail;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e) || e->valuestring[0] == '\0') {
            st_seterr(err, errlen, "%s: weight_map entry '%s': expected a shard file name",
                      index_path, e->string);
            goto fail;
        }
        const char *shard = e->valuestring;
        /* The index comes with the download: it must not name files outside the folder. */
        if (strchr(shard, '/') || strcmp(shard, ".") == 0 || strcmp(shard, "..") == 0) {
            st_seterr(err, errlen, "%s: weight_map entry '%s': shard '%s' must be a plain file "
                      "name inside the checkpoint folder", index_path, e->string, shard);
            goto fail;
        }
        free(shard_path);
        shard_path = st_join(dir, shard);
        if (!shard_path) {
            st_seterr(err, errlen, "%s: out of memory", index_path);
            goto fail;
        }
        st_file *f = NULL;
        for (size_t i = 0; i < a->nfiles; i++) {
            if (strcmp(a->files[i].path, shard_path) == 0) {
                f = &a->files[i];
                break;
            }
        }
        if (!f) {
            if (access(shard_path, F_OK) != 0) {
                st_seterr(err, errlen, "%s: shard '%s' (named for tensor '%s') is missing: %s: "
                          "%s", index_path, shard, e->string, shard_path, strerror(errno));
                goto fail;
            }
            f = &a->files[a->nfiles];
            if (st_file_open(shard_path, f, err, errlen) != 0)
                goto fail;
            a->nfiles++;
        }
        const st_tensor *t = st_find_in(f->tensors, f->ntensors, e->string);
        if (!t) {
            st_seterr(err, errlen, "%s: tensor '%s' is listed in shard '%s', but %s has no such "
                      "tensor", index_path, e->string, shard, f->path);
            goto fail;
        }
        a->tensors[a->ntensors++] = *t;
    }
    qsort(a->tensors, a->ntensors, sizeof *a->tensors, st_cmp_tensor_name);
    for (size_t i = 1; i < a->ntensors; i++) {
        if (strcmp(a->tensors[i - 1].name, a->tensors[i].name) == 0) {
            st_seterr(err, errlen, "%s: tensor '%s' appears twice in weight_map", index_path,
                      a->tensors[i].name);
            goto fail;
        }
    }
    free(shard_path);
    cJSON_Delete(root);
    free(text);
    *out = a;
    return 0;
fail:
    free(shard_path);
    cJSON_Delete(root);
    free(text);
    st_archive_close(a);
    return -1;
}

int st_archive_open_dir(const char *dir, st_archive **out, char *err, size_t errlen)
{
    *out = NULL;
    char *index = st_join(dir, "model.safetensors.index.json");
    char *single = st_join(dir, "model.safetensors");
    int rc = -1;
    if (!index || !single) {
        st_seterr(err, errlen, "%s: out of memory", dir);
    } else if (access(index, F_OK) == 0) {
        rc = st_open_index(dir, index, out, err, errlen);
    } else if (access(single, F_OK) == 0) {
        rc = st_archive_open_file(single, out, err, errlen);
    } else {
        struct stat stt;
        if (stat(dir, &stt) != 0)
            st_seterr(err, errlen, "%s: cannot open checkpoint folder: %s", dir, strerror(errno));
        else
            st_seterr(err, errlen, "%s: no model.safetensors or model.safetensors.index.json "
                      "(expected a Hugging Face checkpoint folder)", dir);
    }
    free(index);
    free(single);
    return rc;
}

void st_archive_close(st_archive *a)
{
    if (!a)
        return;
    if (a->files)
        for (size_t i = 0; i < a->nfiles; i++)
            st_file_free(&a->files[i]);
    free(a->files);
    free(a->tensors);
    free(a);
}

const st_tensor *st_archive_find(const st_archive *a, const char *name)
{
    if (!a || !name)
        return NULL;
    return st_find_in(a->tensors, a->ntensors, name);
}

size_t st_archive_count(const st_archive *a)
{
    return a ? a->ntensors : 0;
}

const st_tensor *st_archive_at(const st_archive *a, size_t i)
{
    return a && i < a->ntensors ? &a->tensors[i] : NULL;
}

size_t st_archive_file_count(const st_archive *a)
{
    return a ? a->nfiles : 0;
}

size_t st_archive_mapped_bytes(const st_archive *a)
{
    size_t n = 0;
    for (size_t i = 0; a && i < a->nfiles; i++)
        n += a->files[i].size;
    return n;
}

/* ---------------------------------------------------------------------------------------- */
/* Writing                                                                                  */

typedef struct st_wtensor {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t nbytes;
    st_fill_fn fill;
    void *ctx;
} st_wtensor;

struct st_writer {
    st_wtensor *t;
    size_t n, cap;
    size_t total;
    char add_error[256];          /* first st_writer_add failure, reported by the save */
};

/* Writes go through one big buffer that fill callbacks write into directly. */
#define ST_WRITE_BUF (16u << 20)

st_writer *st_writer_create(void)
{
    return calloc(1, sizeof(st_writer));
}

void st_writer_destroy(st_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++)
        free(w->t[i].name);
    free(w->t);
    free(w);
}

size_t st_writer_total_bytes(const st_writer *w)
{
    return w ? w->total : 0;
}

int st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                  st_fill_fn fill, void *ctx)
{
    if (!w)
        return -1;
#define ST_ADD_FAIL(...)                                                                   \
    do {                                                                                   \
        if (!w->add_error[0])                                                              \
            snprintf(w->add_error, sizeof w->add_error, __VA_ARGS__);                      \
        return -1;                                                                         \
    } while (0)
    if (!name || !name[0])
        ST_ADD_FAIL("st_writer_add: empty tensor name");
    if ((unsigned)dtype >= ST_DTYPE_COUNT)
        ST_ADD_FAIL("st_writer_add: tensor '%s': invalid dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > ST_MAX_DIMS || (ndim > 0 && !shape))
        ST_ADD_FAIL("st_writer_add: tensor '%s': ndim %d out of range 0..%d", name, ndim,
                    ST_MAX_DIMS);
    if (!fill && !ctx)
        ST_ADD_FAIL("st_writer_add: tensor '%s': neither a fill function nor data", name);
    size_t nbytes = st_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            ST_ADD_FAIL("st_writer_add: tensor '%s': negative dimension %lld", name,
                        (long long)shape[i]);
        if (shape[i] && nbytes > SIZE_MAX / 2 / (uint64_t)shape[i])
            ST_ADD_FAIL("st_writer_add: tensor '%s': shape too large", name);
        nbytes *= (size_t)shape[i];
    }
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            ST_ADD_FAIL("st_writer_add: tensor '%s' added twice", name);
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        st_wtensor *nt = realloc(w->t, cap * sizeof *nt);
        if (!nt)
            ST_ADD_FAIL("st_writer_add: out of memory");
        w->t = nt;
        w->cap = cap;
    }
    st_wtensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name)))
        ST_ADD_FAIL("st_writer_add: out of memory");
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->nbytes = nbytes;
    t->fill = fill;
    t->ctx = ctx;
    w->n++;
    w->total += nbytes;
    return 0;
#undef ST_ADD_FAIL
}

/* A growable string for headers and the index. */
typedef struct st_sb {
    char *p;
    size_t len, cap;
    bool oom;
} st_sb;

static void st_sb_put(st_sb *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void st_sb_put(st_sb *s, const char *fmt, ...)
{
    if (s->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(s->p ? s->p + s->len : NULL, s->p ? s->cap - s->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            s->oom = true;
            return;
        }
        if (s->p && s->len + (size_t)n < s->cap) {
            s->len += (size_t)n;
            return;
        }
        size_t cap = s->cap ? s->cap : 4096;
        while (cap <= s->len + (size_t)n)
            cap *= 2;
        char *np = realloc(s->p, cap);
        if (!np) {
            s->oom = true;
            return;
        }
        s->p = np;
        s->cap = cap;
    }
}

static void st_sb_json_string(st_sb *s, const char *str)
{
    st_sb_put(s, "\"");
    for (const unsigned char *c = (const unsigned char *)str; *c; c++) {
        if (*c == '"' || *c == '\\')
            st_sb_put(s, "\\%c", *c);
        else if (*c < 0x20)
            st_sb_put(s, "\\u%04x", *c);
        else
            st_sb_put(s, "%c", *c);
    }
    st_sb_put(s, "\"");
}

static int st_cmp_wt_layout(const void *a, const void *b)
{
    const st_wtensor *x = *(const st_wtensor *const *)a, *y = *(const st_wtensor *const *)b;
    int rx = st_dtypes[x->dtype].rust_rank, ry = st_dtypes[y->dtype].rust_rank;
    if (rx != ry)
        return ry - rx;
    return strcmp(x->name, y->name);
}

static int st_cmp_wt_name(const void *a, const void *b)
{
    const st_wtensor *x = *(const st_wtensor *const *)a, *y = *(const st_wtensor *const *)b;
    return strcmp(x->name, y->name);
}

static int st_write_all(int fd, const void *buf, size_t len, const char *path, char *err,
                        size_t errlen)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            st_seterr(err, errlen, "%s: write failed: %s", path, n < 0 ? strerror(errno) :
                      "no progress");
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Writes the tensors list[0..n) (any order; sorted here) into one file at path. */
static int st_write_file(st_wtensor **list, size_t n, const char *path, char *err, size_t errlen)
{
    st_wtensor **order = malloc((n ? n : 1) * sizeof *order);
    size_t plen = strlen(path) + sizeof ".partial";
    char *tmp = malloc(plen);
    uint8_t *buf = NULL;
    st_sb h = { 0 };
    int fd = -1, rc = -1;
    if (!order || !tmp) {
        st_seterr(err, errlen, "%s: out of memory", path);
        goto out;
    }
    memcpy(order, list, n * sizeof *order);
    qsort(order, n, sizeof *order, st_cmp_wt_layout);
    snprintf(tmp, plen, "%s.partial", path);

    st_sb_put(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const st_wtensor *t = order[i];
        st_sb_put(&h, ",");
        st_sb_json_string(&h, t->name);
        st_sb_put(&h, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            st_sb_put(&h, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        st_sb_put(&h, "],\"data_offsets\":[%zu,%zu]}", off, off + t->nbytes);
        off += t->nbytes;
    }
    st_sb_put(&h, "}");
    while (!h.oom && h.len % 8 != 0)
        st_sb_put(&h, " ");
    if (h.oom) {
        st_seterr(err, errlen, "%s: out of memory for the header", path);
        goto out;
    }
    buf = malloc(ST_WRITE_BUF);
    if (!buf) {
        st_seterr(err, errlen, "%s: out of memory for the write buffer", path);
        goto out;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        st_seterr(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        goto out;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)h.len >> (8 * i));
    if (st_write_all(fd, len8, 8, tmp, err, errlen) != 0 ||
        st_write_all(fd, h.p, h.len, tmp, err, errlen) != 0)
        goto out;
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        const st_wtensor *t = order[i];
        size_t done = 0, esz = st_dtype_size(t->dtype);
        while (done < t->nbytes) {
            /* Chunks hold whole elements, so fill callbacks never see half a value. */
            size_t chunk = t->nbytes - done, room = ST_WRITE_BUF - used;
            if (chunk > room)
                chunk = room - room % esz;
            if (chunk == 0) {
                if (st_write_all(fd, buf, used, tmp, err, errlen) != 0)
                    goto out;
                used = 0;
                continue;
            }
            if (t->fill)
                t->fill(t->ctx, buf + used, done, chunk);
            else
                memcpy(buf + used, (const uint8_t *)t->ctx + done, chunk);
            used += chunk;
            done += chunk;
            if (used == ST_WRITE_BUF) {
                if (st_write_all(fd, buf, used, tmp, err, errlen) != 0)
                    goto out;
                used = 0;
            }
        }
    }
    if (used && st_write_all(fd, buf, used, tmp, err, errlen) != 0)
        goto out;
    if (close(fd) != 0) {
        fd = -1;
        st_seterr(err, errlen, "%s: close failed: %s", tmp, strerror(errno));
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        st_seterr(err, errlen, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    if (rc != 0 && tmp)
        unlink(tmp);
    free(buf);
    free(h.p);
    free(tmp);
    free(order);
    return rc;
}

static int st_writer_check(st_writer *w, const char *path, char *err, size_t errlen)
{
    if (!w) {
        st_seterr(err, errlen, "%s: no writer", path);
        return -1;
    }
    if (w->add_error[0]) {
        st_seterr(err, errlen, "%s: not written: %s", path, w->add_error);
        return -1;
    }
    return 0;
}

int st_writer_save(st_writer *w, const char *path, char *err, size_t errlen)
{
    if (st_writer_check(w, path, err, errlen) != 0)
        return -1;
    st_wtensor **list = malloc((w->n ? w->n : 1) * sizeof *list);
    if (!list) {
        st_seterr(err, errlen, "%s: out of memory", path);
        return -1;
    }
    for (size_t i = 0; i < w->n; i++)
        list[i] = &w->t[i];
    int rc = st_write_file(list, w->n, path, err, errlen);
    free(list);
    return rc;
}

int st_writer_save_sharded(st_writer *w, const char *dir, size_t max_shard_bytes,
                           char *err, size_t errlen)
{
    if (st_writer_check(w, dir, err, errlen) != 0)
        return -1;
    if (w->n == 0) {
        st_seterr(err, errlen, "%s: no tensors to write", dir);
        return -1;
    }
    if (max_shard_bytes == 0)
        max_shard_bytes = 1;
    int rc = -1;
    st_wtensor **list = malloc(w->n * sizeof *list);
    size_t *shard_of = malloc(w->n * sizeof *shard_of);
    char *path = NULL;
    st_sb idx = { 0 };
    if (!list || !shard_of) {
        st_seterr(err, errlen, "%s: out of memory", dir);
        goto out;
    }
    for (size_t i = 0; i < w->n; i++)
        list[i] = &w->t[i];
    qsort(list, w->n, sizeof *list, st_cmp_wt_name);
    size_t nshards = 0, cur = 0;
    for (size_t i = 0; i < w->n; i++) {
        if (nshards == 0 || (cur > 0 && cur + list[i]->nbytes > max_shard_bytes)) {
            nshards++;
            cur = 0;
        }
        shard_of[i] = nshards - 1;
        cur += list[i]->nbytes;
    }
    if (nshards > 99999) {
        st_seterr(err, errlen, "%s: %zu shards exceed the 5-digit shard naming", dir, nshards);
        goto out;
    }
    char name[64];
    size_t first = 0;
    for (size_t s = 0; s < nshards; s++) {
        size_t last = first;
        while (last < w->n && shard_of[last] == s)
            last++;
        snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, nshards);
        free(path);
        path = st_join(dir, name);
        if (!path) {
            st_seterr(err, errlen, "%s: out of memory", dir);
            goto out;
        }
        if (st_write_file(list + first, last - first, path, err, errlen) != 0)
            goto out;
        first = last;
    }
    /* The index as upstream writes it: json.dumps(indent=2, sort_keys=True) + "\n". */
    st_sb_put(&idx, "{\n  \"metadata\": {\n    \"total_size\": %zu\n  },\n  \"weight_map\": {\n",
              w->total);
    for (size_t i = 0; i < w->n; i++) {
        snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", shard_of[i] + 1,
                 nshards);
        st_sb_put(&idx, "    ");
        st_sb_json_string(&idx, list[i]->name);
        st_sb_put(&idx, ": \"%s\"%s\n", name, i + 1 < w->n ? "," : "");
    }
    st_sb_put(&idx, "  }\n}\n");
    if (idx.oom) {
        st_seterr(err, errlen, "%s: out of memory for the index", dir);
        goto out;
    }
    free(path);
    path = st_join(dir, "model.safetensors.index.json.partial");
    char *final = st_join(dir, "model.safetensors.index.json");
    if (!path || !final) {
        free(final);
        st_seterr(err, errlen, "%s: out of memory", dir);
        goto out;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        st_seterr(err, errlen, "%s: cannot create: %s", path, strerror(errno));
        free(final);
        goto out;
    }
    int wr = st_write_all(fd, idx.p, idx.len, path, err, errlen);
    if (close(fd) != 0 && wr == 0) {
        st_seterr(err, errlen, "%s: close failed: %s", path, strerror(errno));
        wr = -1;
    }
    if (wr == 0 && rename(path, final) != 0) {
        st_seterr(err, errlen, "%s: cannot rename to %s: %s", path, final, strerror(errno));
        wr = -1;
    }
    if (wr != 0)
        unlink(path);
    free(final);
    if (wr != 0)
        goto out;
    rc = 0;
out:
    free(idx.p);
    free(path);
    free(shard_of);
    free(list);
    return rc;
}
