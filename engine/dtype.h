/*
 * dtype.h - element types of weights and activations, their block layouts, and the tensor view
 * that the loaders produce and the backends consume.
 *
 * Quantized types are stored in ggml block layouts (FORMATS.md 3.2): a row of n_cols elements
 * is n_cols / block_elems blocks of block_bytes each; blocks never straddle rows.
 * Pure data: no state, callable from any thread.
 */
#ifndef QV_DTYPE_H
#define QV_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum qv_dtype {
    QV_DTYPE_F32 = 0,
    QV_DTYPE_F16,
    QV_DTYPE_BF16,
    QV_DTYPE_Q8_0,
    QV_DTYPE_Q4_0,
    QV_DTYPE_Q4_1,
    QV_DTYPE_Q5_0,
    QV_DTYPE_Q5_1,
    QV_DTYPE_Q4_K,
    QV_DTYPE_Q6_K,
    QV_DTYPE_Q2_K,
    QV_DTYPE_Q3_K,
    QV_DTYPE_Q5_K,
    QV_DTYPE_IQ4_NL,
    QV_DTYPE_IQ4_XS,
    QV_DTYPE_COUNT
};

/* Name as written in files and logs ("F32", "Q4_1", ...). */
const char *qv_dtype_name(enum qv_dtype t);
/* Elements per block (1 for float types, 32 or 256 for quantized ones). */
int qv_dtype_block_elems(enum qv_dtype t);
/* Bytes per block. */
int qv_dtype_block_bytes(enum qv_dtype t);
/* Bytes of one row of n_cols elements; n_cols must be a multiple of the block size. */
size_t qv_dtype_row_bytes(enum qv_dtype t, int64_t n_cols);

/* Scalar conversions (exact IEEE conversions, round-to-nearest-even for f32 -> f16/bf16). */
float qv_f16_to_f32(uint16_t h);
uint16_t qv_f32_to_f16(float f);
float qv_bf16_to_f32(uint16_t h);
uint16_t qv_f32_to_bf16(float f);

/* The 16 values a 4-bit IQ4_NL / IQ4_XS index stands for. */
extern const int8_t qv_iq4_values[16];

/* Dequantizes one row (n_cols elements) of any dtype to f32. Reference path used by tests
 * and by code that needs a few rows (embedding lookups); not the matmul hot path. */
void qv_dequantize_row(enum qv_dtype t, const void *row, float *out, int64_t n_cols);

/*
 * A 2-D weight matrix view in the PyTorch [n_rows, n_cols] sense: row r holds the n_cols input
 * weights of output r, contiguous, row_bytes apart. 1-D tensors have n_rows = 1.
 * The view does not own `data` (it points into an mmapped file or a buffer owned by the model).
 */
typedef struct qv_tensor {
    enum qv_dtype dtype;
    int64_t n_rows;
    int64_t n_cols;
    size_t row_bytes;
    const void *data; /* NULL when the tensor is absent (e.g. no bias) */
} qv_tensor;

#ifdef __cplusplus
}
#endif
#endif /* QV_DTYPE_H */
