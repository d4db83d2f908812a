/*
 * ops.c - the CPU backend's element-wise and row-wise ops: get_rows, rmsnorm, rope, swiglu,
 * add, kv_store. Exact HF (FORMATS.md 2.3) semantics in fp32:
 *   rmsnorm  y = w * (x * (1 / sqrtf(mean(x^2) + eps)))  (sum of squares accumulated in double,
 *            then rounded: the fp32 value closest to the true mean)
 *   rope     rotate_half: for i < d/2, a = (float)pos * inv_freq[i],
 *            x'[i] = x[i] cos a - x[i+d/2] sin a, x'[i+d/2] = x[i+d/2] cos a + x[i] sin a
 *   swiglu   out = g / (1 + expf(-g)) * u
 * What not: no matmul or attention (matmul.c, attention.c). Every output element depends only
 * on its own row's inputs, computed in a fixed order, so results do not depend on n or on the
 * thread count. Large element-wise ops are split over the pool in contiguous ranges.
 * Thread: called on the backend's engine thread.
 */
#include <math.h>
#include <string.h>

#include "cpu/cpu_internal.h"

#define PAR_MIN_ELEMS 32768 /* below this, dispatch costs more than it saves */

void qv__cpu_get_rows(qv__cpu_ctx *cx, const qv_tensor *table, const int32_t *ids, int n,
                      float *out) {
    (void)cx;
    const uint8_t *base = table->data;
    for (int i = 0; i < n; i++) {
        QV_ASSERT(ids[i] >= 0 && ids[i] < table->n_rows);
        qv_dequantize_row(table->dtype, base + (size_t)ids[i] * table->row_bytes,
                          out + (size_t)i * (size_t)table->n_cols, table->n_cols);
    }
}

/* ---- rmsnorm: rows in parallel ---- */

struct rms_task {
    const float *x;
    const float *w;
    int n, dim;
    float eps;
    float *y;
};

static void rms_fn(void *arg, int part, int nth) {
    const struct rms_task *t = arg;
    int r0 = (int)((int64_t)t->n * part / nth), r1 = (int)((int64_t)t->n * (part + 1) / nth);
    for (int r = r0; r < r1; r++) {
        const float *x = t->x + (size_t)r * (size_t)t->dim;
        float *y = t->y + (size_t)r * (size_t)t->dim;
        double ss = 0.0;
        for (int i = 0; i < t->dim; i++)
            ss += (double)x[i] * (double)x[i];
        float mean = (float)(ss / (double)t->dim);
        float inv = 1.0f / sqrtf(mean + t->eps);
        for (int i = 0; i < t->dim; i++)
            y[i] = t->w[i] * (x[i] * inv);
    }
}

void qv__cpu_rmsnorm(qv__cpu_ctx *cx, const float *x, const float *w, int n, int dim, float eps,
                     float *y) {
    struct rms_task t = {x, w, n, dim, eps, y};
    if ((size_t)n * (size_t)dim >= PAR_MIN_ELEMS && n > 1)
        qv__cpu_pool_run(cx->pool, rms_fn, &t);
    else
        rms_fn(&t, 0, 1);
}

/* ---- rope ---- */

#define ROPE_MAX_HALF 512

struct rope_task {
    float *x;
    int n, n_heads, head_dim;
    const int32_t *pos;
    const float *inv_freq;
};

static void rope_fn(void *arg, int part, int nth) {
    const struct rope_task *t = arg;
    int half = t->head_dim / 2;
    float cs[ROPE_MAX_HALF], sn[ROPE_MAX_HALF];
    int r0 = (int)((int64_t)t->n * part / nth), r1 = (int)((int64_t)t->n * (part + 1) / nth);
    for (int r = r0; r < r1; r++) {
        for (int i = 0; i < half; i++) {
            float ang = (float)t->pos[r] * t->inv_freq[i];
            cs[i] = cosf(ang);
            sn[i] = sinf(ang);
        }
        float *row = t->x + (size_t)r * (size_t)t->n_heads * (size_t)t->head_dim;
        for (int h = 0; h < t->n_heads; h++) {
            float *v = row + (size_t)h * (size_t)t->head_dim;
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * cs[i] - b * sn[i];
                v[i + half] = b * cs[i] + a * sn[i];
            }
        }
    }
}

void qv__cpu_rope(qv__cpu_ctx *cx, float *x, int n, int n_heads, int head_dim, const int32_t *pos,
                  const float *inv_freq) {
    QV_ASSERT(head_dim % 2 == 0 && head_dim / 2 <= ROPE_MAX_HALF);
    struct rope_task t = {x, n, n_heads, head_dim, pos, inv_freq};
    if ((size_t)n * (size_t)n_heads * (size_t)head_dim >= PAR_MIN_ELEMS && n > 1)
        qv__cpu_pool_run(cx->pool, rope_fn, &t);
    else
        rope_fn(&t, 0, 1);
}

/* ---- swiglu / add: contiguous element ranges ---- */

struct ew_task {
    const float *a;
    const float *b;
    float *out;
    size_t n;
};

static void range_of(size_t n, int part, int nth, size_t *i0, size_t *i1) {
    /* Ranges rounded to 16 floats so threads never share a cache line of the output. */
    size_t per = (n / (size_t)nth + 15) & ~(size_t)15;
    *i0 = QV_MIN(n, per * (size_t)part);
    *i1 = part == nth - 1 ? n : QV_MIN(n, per * (size_t)(part + 1));
}

static void swiglu_fn(void *arg, int part, int nth) {
    const struct ew_task *t = arg;
    size_t i0, i1;
    range_of(t->n, part, nth, &i0, &i1);
    for (size_t i = i0; i < i1; i++) {
        float g = t->a[i];
        t->out[i] = g / (1.0f + expf(-g)) * t->b[i];
    }
}

void qv__cpu_swiglu(qv__cpu_ctx *cx, const float *gate, const float *up, float *out,
                    size_t n_elems) {
    struct ew_task t = {gate, up, out, n_elems};
    if (n_elems >= PAR_MIN_ELEMS)
        qv__cpu_pool_run(cx->pool, swiglu_fn, &t);
    else
        swiglu_fn(&t, 0, 1);
}

static void add_fn(void *arg, int part, int nth) {
    const struct ew_task *t = arg;
    size_t i0, i1;
    range_of(t->n, part, nth, &i0, &i1);
    for (size_t i = i0; i < i1; i++)
        t->out[i] += t->a[i];
}

void qv__cpu_add(qv__cpu_ctx *cx, float *y, const float *x, size_t n_elems) {
    struct ew_task t = {x, NULL, y, n_elems};
    if (n_elems >= 4 * PAR_MIN_ELEMS)
        qv__cpu_pool_run(cx->pool, add_fn, &t);
    else
        add_fn(&t, 0, 1);
}

/* ---- kv_store ---- */

void qv__cpu_kv_store(qv__cpu_ctx *cx, qv_kv_pool *pool, int layer, const float *k, const float *v,
                      int n, const int32_t *slot_page, const int32_t *slot_off) {
    QV_ASSERT(layer >= 0 && layer < pool->n_layers);
    const bool bf16 = qv__cpu_pool_bf16(cx, pool);
    size_t kv_dim = (size_t)pool->n_kv_heads * (size_t)pool->head_dim;
    for (int i = 0; i < n; i++) {
        QV_ASSERT(slot_page[i] >= 0 && slot_page[i] < pool->n_pages);
        QV_ASSERT(slot_off[i] >= 0 && slot_off[i] < pool->page_size);
        size_t at = (((size_t)layer * (size_t)pool->n_pages + (size_t)slot_page[i]) *
                         (size_t)pool->page_size +
                     (size_t)slot_off[i]) *
                    kv_dim;
        const float *ki = k + (size_t)i * kv_dim, *vi = v + (size_t)i * kv_dim;
        if (bf16) { /* round to nearest even, as the CUDA backend's bf16 pages */
            uint16_t *kd = (uint16_t *)(void *)pool->k + at, *vd = (uint16_t *)(void *)pool->v + at;
            for (size_t c = 0; c < kv_dim; c++) {
                kd[c] = qv_f32_to_bf16(ki[c]);
                vd[c] = qv_f32_to_bf16(vi[c]);
            }
        } else {
            memcpy(pool->k + at, ki, kv_dim * sizeof(float));
            memcpy(pool->v + at, vi, kv_dim * sizeof(float));
        }
    }
}
