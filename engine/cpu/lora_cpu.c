/*
 * lora_cpu.c - segmented LoRA shrink/expand on the host (see lora_cpu.h).
 *
 * Work is cut into items that each own whole output elements: shrink items are token rows,
 * expand items are (token row, block of 128 outputs). Items are dealt to the pool's threads in
 * contiguous ranges. Each element's dot product runs in qv__lora_dot's fixed order, so results
 * are bitwise independent of batch composition and thread count.
 * What not: no fp16/bf16 adapters (the loader converts everything to F32).
 * Thread: the engine thread; the pool's workers only run the items.
 */
#include "cpu/lora_cpu.h"

#include <string.h>

#include "cpu/cpu_internal.h"

#if defined(__x86_64__)
#define QV_LORA_X86 1
#include <immintrin.h>
#else
#define QV_LORA_X86 0
#endif

#define EXPAND_BLOCK 128

float qv__lora_dot(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    for (; i < n; i++)
        acc[i & 7] += a[i] * b[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* Sequential dot of the n < 8 leftover elements after the vector part. Never inlined, so one
 * body serves every caller (no FMA contraction differences between call sites). */
__attribute__((noinline)) static float tail_dot_body(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* The call is skipped when there is no tail (the common n_in % 8 == 0, rank % 8 == 0 case). */
static inline float tail_dot(const float *a, const float *b, int n) {
    return n ? tail_dot_body(a, b, n) : 0.0f;
}

#if QV_LORA_X86
#define QV_AVX2 __attribute__((target("avx2,fma")))

static inline __attribute__((always_inline, target("avx2,fma"))) float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* out[r] = x · A[r] for r < rank. Each out[r] is one 8-lane FMA chain over the vector part, a
 * fixed horizontal sum, plus the sequential tail: the same sequence whether r is computed in a
 * block of 4 or alone. */
QV_AVX2 static void shrink_row_avx2(const float *x, const float *a, int rank, int n_in,
                                    float *out) {
    const int nv = n_in & ~7;
    const size_t ld = (size_t)n_in;
    int r = 0;
    for (; r + 4 <= rank; r += 4) {
        const float *a0 = a + (size_t)r * ld, *a1 = a0 + ld, *a2 = a1 + ld, *a3 = a2 + ld;
        __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
        for (int i = 0; i < nv; i += 8) {
            const __m256 xv = _mm256_loadu_ps(x + i);
            c0 = _mm256_fmadd_ps(_mm256_loadu_ps(a0 + i), xv, c0);
            c1 = _mm256_fmadd_ps(_mm256_loadu_ps(a1 + i), xv, c1);
            c2 = _mm256_fmadd_ps(_mm256_loadu_ps(a2 + i), xv, c2);
            c3 = _mm256_fmadd_ps(_mm256_loadu_ps(a3 + i), xv, c3);
        }
        out[r] = hsum8(c0) + tail_dot(a0 + nv, x + nv, n_in - nv);
        out[r + 1] = hsum8(c1) + tail_dot(a1 + nv, x + nv, n_in - nv);
        out[r + 2] = hsum8(c2) + tail_dot(a2 + nv, x + nv, n_in - nv);
        out[r + 3] = hsum8(c3) + tail_dot(a3 + nv, x + nv, n_in - nv);
    }
    for (; r < rank; r++) {
        const float *a0 = a + (size_t)r * ld;
        __m256 c0 = _mm256_setzero_ps();
        for (int i = 0; i < nv; i += 8)
            c0 = _mm256_fmadd_ps(_mm256_loadu_ps(a0 + i), _mm256_loadu_ps(x + i), c0);
        out[r] = hsum8(c0) + tail_dot(a0 + nv, x + nv, n_in - nv);
    }
}

/* y[o] += scale * (B[o] · z + bias[o]) for o in [o0, o1). When rank % 8 == 0, outputs go in
 * groups of 8 (o0 is a multiple of 8: blocks are 128 wide): 8 FMA chains reduced together by a
 * fixed hadd tree; the last n_out % 8 outputs (and every output of other ranks) take the
 * one-output path. Which path an output takes depends only on o and the shapes. */
QV_AVX2 static void expand_row_avx2(const float *b, const float *z, int rank, const float *bias,
                                    float scale, float *y, int o0, int o1) {
    const int nv = rank & ~7;
    const size_t ld = (size_t)rank;
    int o = o0;
    if (nv == rank && rank > 0) {
        const __m256 vs = _mm256_set1_ps(scale);
        for (; o + 8 <= o1; o += 8) {
            __m256 acc[8];
            for (int j = 0; j < 8; j++)
                acc[j] = _mm256_setzero_ps();
            for (int k = 0; k < rank; k += 8) {
                const __m256 zv = _mm256_loadu_ps(z + k);
                for (int j = 0; j < 8; j++)
                    acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(b + (size_t)(o + j) * ld + (size_t)k),
                                             zv, acc[j]);
            }
            const __m256 t0 = _mm256_hadd_ps(acc[0], acc[1]), t1 = _mm256_hadd_ps(acc[2], acc[3]);
            const __m256 t2 = _mm256_hadd_ps(acc[4], acc[5]), t3 = _mm256_hadd_ps(acc[6], acc[7]);
            const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
            __m256 d = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                                     _mm256_permute2f128_ps(u0, u1, 0x31));
            if (bias) d = _mm256_add_ps(d, _mm256_loadu_ps(bias + o));
            _mm256_storeu_ps(y + o, _mm256_add_ps(_mm256_loadu_ps(y + o), _mm256_mul_ps(vs, d)));
        }
    }
    for (; o < o1; o++) {
        const float *bo = b + (size_t)o * ld;
        __m256 c = _mm256_setzero_ps();
        for (int k = 0; k < nv; k += 8)
            c = _mm256_fmadd_ps(_mm256_loadu_ps(bo + k), _mm256_loadu_ps(z + k), c);
        float d = hsum8(c) + tail_dot(bo + nv, z + nv, rank - nv);
        if (bias) d += bias[o];
        y[o] += scale * d;
    }
}
#endif

size_t qv__lora_tmp_floats(const qv__lora_seg *segs, int n_segs) {
    size_t n = 0;
    for (int s = 0; s < n_segs; s++)
        n += (size_t)segs[s].n * (size_t)segs[s].rank;
    return n;
}

typedef struct lora_task {
    const qv__lora_seg *segs;
    int n_segs;
    const float *x; /* shrink input (segments without their own x) */
    size_t ldx;
    int n_in;
    float *tmp_w;       /* shrink output */
    const float *tmp_r; /* expand input */
    int n_out;          /* expand (segments without their own y) */
    float *y;
    size_t ldy;
    bool expand;  /* items are (row, 128-output block) pairs */
    bool simd;    /* AVX2+FMA row kernels (fixed per backend, so per row) */
    long n_items; /* shrink: rows; expand: sum over segments of n * blocks */
} lora_task;

/* Effective input/output geometry of a segment (its own, or the call's). */
static const float *seg_x(const lora_task *t, const qv__lora_seg *g, size_t *ld, int *n_in) {
    *ld = g->x ? g->ldx : t->ldx;
    *n_in = g->x ? g->n_in : t->n_in;
    return g->x ? g->x : t->x;
}
static float *seg_y(const lora_task *t, const qv__lora_seg *g, size_t *ld, int *n_out) {
    *ld = g->y ? g->ldy : t->ldy;
    *n_out = g->y ? g->n_out : t->n_out;
    return g->y ? g->y : t->y;
}
static int seg_blocks(const lora_task *t, const qv__lora_seg *g) {
    if (!t->expand) return 1;
    int n_out = g->y ? g->n_out : t->n_out;
    return (n_out + EXPAND_BLOCK - 1) / EXPAND_BLOCK;
}

/* Finds the segment of work item `item` (items numbered through the segments in order), the
 * row inside it, its output block and the packed tmp offset of that row. Segments are few; a
 * linear walk is cheap next to the dots. */
static int locate(const lora_task *t, long item, int *seg, int *blk, size_t *tmp_off) {
    size_t off = 0;
    for (int s = 0; s < t->n_segs; s++) {
        const qv__lora_seg *g = &t->segs[s];
        const long nb = seg_blocks(t, g), n_it = (long)g->n * nb;
        if (item < n_it) {
            *seg = s;
            *blk = (int)(item % nb);
            const int row = (int)(item / nb);
            *tmp_off = off + (size_t)row * (size_t)g->rank;
            return row;
        }
        item -= n_it;
        off += (size_t)g->n * (size_t)g->rank;
    }
    return -1;
}

static void shrink_item(const lora_task *t, long item) {
    int s = 0, blk = 0;
    size_t off = 0;
    int r = locate(t, item, &s, &blk, &off);
    QV_ASSERT(r >= 0);
    const qv__lora_seg *g = &t->segs[s];
    size_t ldx;
    int n_in;
    const float *x = seg_x(t, g, &ldx, &n_in) + (size_t)(g->t0 + r) * ldx;
    float *out = t->tmp_w + off;
#if QV_LORA_X86
    if (t->simd) {
        shrink_row_avx2(x, g->a, g->rank, n_in, out);
        return;
    }
#endif
    for (int k = 0; k < g->rank; k++)
        out[k] = qv__lora_dot(x, g->a + (size_t)k * (size_t)n_in, n_in);
}

static void expand_item(const lora_task *t, long item) {
    int s = 0, blk = 0;
    size_t off = 0;
    int r = locate(t, item, &s, &blk, &off);
    QV_ASSERT(r >= 0);
    const qv__lora_seg *g = &t->segs[s];
    const float *z = t->tmp_r + off;
    size_t ldy;
    int n_out;
    float *y = seg_y(t, g, &ldy, &n_out) + (size_t)(g->t0 + r) * ldy;
    int o1 = QV_MIN(n_out, (blk + 1) * EXPAND_BLOCK);
#if QV_LORA_X86
    if (t->simd) {
        expand_row_avx2(g->b, z, g->rank, g->b_bias, g->scale, y, blk * EXPAND_BLOCK, o1);
        return;
    }
#endif
    for (int o = blk * EXPAND_BLOCK; o < o1; o++) {
        float d = qv__lora_dot(g->b + (size_t)o * (size_t)g->rank, z, g->rank);
        if (g->b_bias) d += g->b_bias[o];
        y[o] += g->scale * d;
    }
}

static void run_items(lora_task *t, int shrink, int part, int nth) {
    long per = (t->n_items + nth - 1) / nth;
    long i0 = (long)part * per, i1 = QV_MIN(t->n_items, i0 + per);
    for (long i = i0; i < i1; i++) {
        if (shrink)
            shrink_item(t, i);
        else
            expand_item(t, i);
    }
}

static void shrink_fn(void *arg, int part, int nth) { run_items(arg, 1, part, nth); }
static void expand_fn(void *arg, int part, int nth) { run_items(arg, 0, part, nth); }

static void dispatch(qv_backend *be, lora_task *t, qv__cpu_task_fn fn) {
    /* Only the CPU backend exposes a pool; its ctx is a qv__cpu_ctx. */
    qv__cpu_ctx *cx = (be && !be->iface->download) ? be->ctx : NULL;
    t->simd = cx && cx->simd;
    if (!cx || !cx->pool || cx->n_threads <= 1 || t->n_items < 2)
        fn(t, 0, 1);
    else
        qv__cpu_pool_run(cx->pool, fn, t);
}

static long count_items(const lora_task *t) {
    long n = 0;
    for (int s = 0; s < t->n_segs; s++)
        n += (long)t->segs[s].n * seg_blocks(t, &t->segs[s]);
    return n;
}

void qv__lora_shrink(qv_backend *be, const qv__lora_seg *segs, int n_segs, const float *x,
                     size_t ldx, int n_in, float *tmp) {
    lora_task t = {.segs = segs, .n_segs = n_segs, .x = x, .ldx = ldx, .n_in = n_in, .tmp_w = tmp};
    t.n_items = count_items(&t);
    if (t.n_items > 0) dispatch(be, &t, shrink_fn);
}

void qv__lora_expand(qv_backend *be, const qv__lora_seg *segs, int n_segs, const float *tmp,
                     int n_out, float *y, size_t ldy) {
    lora_task t = {.segs = segs,
                   .n_segs = n_segs,
                   .tmp_r = tmp,
                   .n_out = n_out,
                   .y = y,
                   .ldy = ldy,
                   .expand = true};
    t.n_items = count_items(&t);
    if (t.n_items > 0) dispatch(be, &t, expand_fn);
}
