/* safetensors.h — read-only, mmapped access to Hugging Face safetensors files: one
 * model.safetensors or shards listed by model.safetensors.index.json. Tensors are never
 * copied: st_tensor.data points into the mapping. Every header is validated (length within
 * the file, JSON, dtype, shape vs byte size, offsets in range and not overlapping, data
 * aligned to its element size so it can be read through typed pointers). */
#ifndef VIGIL_MODEL_SAFETENSORS_H
#define VIGIL_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define ST_MAX_DIMS 8

/* Every dtype of the safetensors format. Only F32/F16/BF16 are model weights here; the
 * others are parsed so that a file holding them (an FP8 checkpoint, an int index tensor) gets
 * a precise message from the checkpoint check instead of "unknown dtype". */
typedef enum {
    ST_F32, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL,
    ST_U16, ST_U32, ST_U64, ST_F8_E4M3, ST_F8_E5M2,
    ST_DTYPE_COUNT
} st_dtype;

typedef struct st_tensor {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;             /* into the read-only mapping, aligned to the element size */
    size_t nbytes;
    const char *file;             /* path of the file it lives in (for error messages) */
} st_tensor;

typedef struct st_archive st_archive;

/* Opens the weights of checkpoint folder `dir`: model.safetensors.index.json and its shards
 * if present, else model.safetensors. With an index, the tensors are exactly those of its
 * weight_map, each looked up in the shard the index names (a shard's other tensors are
 * ignored, as upstream does). Returns 0 or -1 with a message in err naming the file (and the
 * tensor) and what was expected. */
int st_archive_open_dir(const char *dir, st_archive **out, char *err, size_t errlen);
/* Opens a single safetensors file. */
int st_archive_open_file(const char *path, st_archive **out, char *err, size_t errlen);
void st_archive_close(st_archive *a);

/* Lookups are by exact name; st_archive_at iterates in name order. */
const st_tensor *st_archive_find(const st_archive *a, const char *name);
size_t st_archive_count(const st_archive *a);
const st_tensor *st_archive_at(const st_archive *a, size_t i);
/* Number of files mapped (1, or the number of shards) and their total size in bytes. */
size_t st_archive_file_count(const st_archive *a);
size_t st_archive_mapped_bytes(const st_archive *a);

const char *st_dtype_name(st_dtype t);     /* "BF16", ... ; "?" for invalid values */
size_t st_dtype_size(st_dtype t);          /* bytes per element; 0 for invalid values */
/* Parses a safetensors dtype name ("BF16"); returns -1 if unknown. */
int st_dtype_parse(const char *name, st_dtype *out);

/* Elements of a tensor (product of its shape; 1 for a scalar). */
size_t st_tensor_numel(const st_tensor *t);
/* Converts elements [first, first+count) of an F32, F16 or BF16 tensor to f32.
 * Returns 0, or -1 for another dtype or a range beyond the tensor. */
int st_tensor_read_f32(const st_tensor *t, size_t first, size_t count, float *dst);

/* Scalar conversions. bf16/f16 from f32 round to nearest even; NaN stays NaN. */
static inline float st_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
uint16_t st_f32_to_bf16(float f);
float st_f16_to_f32(uint16_t h);
uint16_t st_f32_to_f16(float f);

/* Writing (used by the checkpoint generator and by tests that make bad files). */
typedef struct st_writer st_writer;
st_writer *st_writer_create(void);
/* Adds a tensor whose bytes are produced at save time by fill(ctx, dst, offset, nbytes),
 * called in chunks with increasing offsets (offset and nbytes are whole elements; dst may be
 * unaligned), so multi-GB checkpoints are written without holding them in memory. fill may be NULL with ctx pointing at nbytes of data to copy (it
 * must stay valid until the save). Returns 0, or -1 for invalid arguments (bad dtype, ndim,
 * negative or overflowing shape, empty or duplicate name); the reason is then reported by the
 * next st_writer_save / st_writer_save_sharded. */
typedef void (*st_fill_fn)(void *ctx, void *dst, size_t offset, size_t nbytes);
int st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                  st_fill_fn fill, void *ctx);
/* Total tensor bytes added so far. */
size_t st_writer_total_bytes(const st_writer *w);
/* Writes the file the way upstream (Rust safetensors) does: __metadata__ {"format":"pt"},
 * tensors ordered by dtype (wider first) then name — name order for a single-dtype file —
 * offsets packed, header padded with spaces to a multiple of 8. The file is written as
 * path + ".partial" and renamed on success, so a failed save never leaves a valid-looking
 * file behind. */
int st_writer_save(st_writer *w, const char *path, char *err, size_t errlen);
/* Splits the tensors (in name order) into shards of at most max_shard_bytes (a tensor larger
 * than that gets a shard of its own), written as model-0000i-of-0000n.safetensors in dir,
 * plus model.safetensors.index.json ({"metadata": {"total_size"}, "weight_map"}) as
 * upstream save_pretrained writes it. */
int st_writer_save_sharded(st_writer *w, const char *dir, size_t max_shard_bytes,
                           char *err, size_t errlen);
void st_writer_destroy(st_writer *w);

#endif
