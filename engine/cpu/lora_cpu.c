/*
 * lora_cpu.c - segmented LoRA shrink/expand on the host (see lora_cpu.h).
 *
 * Work is cut into items that each own whole output elements: shrink items are token rows,
 * expand items are (token row, block of 128 outputs), fused items (qv__lora_apply) are token
 * rows doing both. Items are dealt to the pool's parts in contiguous ranges cut by cost (the
 * weight elements an item reads), so a part holding q rows and one holding k/v rows of a fused
 * q,k,v call do the same work. Each element's dot product runs in one fixed order (below), so
 * results are bitwise independent of batch composition, thread count and entry point.
 *
 * Decode with many distinct adapters is bound by reading their weights (every row of every
 * segment reads its own A and B); 16-bit adapters halve that traffic. The conversion to F32 is
 * exact, so a 16-bit weight gives the F32 kernel's result bit for bit. Each decode row reads a
 * few short arrays (9-50 KB) that the hardware prefetcher ramps up on too late, so the AVX2
 * kernels prefetch PF_AHEAD bytes ahead along the item's weight stream (A, then B, then the
 * next segment's A): 1.7x (F32) to 2.6x (BF16) faster on the decode pass of bench_lora.
 * What not: no quantized adapter weights; no reuse of A across rows of a segment beyond what
 * the caches give (prefill rows of one segment re-read the same A/B from L1/L2).
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
#define PF_AHEAD 8192    /* bytes: software prefetch distance along a weight stream */
#define ITEM_OVERHEAD 64 /* cost units added per item (loop and locate overhead) */

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

/* Element i of weight array w of dtype wt, widened to F32 (exact). */
static inline float w_at(const void *w, size_t i, enum qv_dtype wt) {
    if (wt == QV_DTYPE_F32) return ((const float *)w)[i];
    const uint16_t h = ((const uint16_t *)w)[i];
    if (wt == QV_DTYPE_F16) return qv_f16_to_f32(h);
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* qv__lora_dot(x, w) with w of dtype wt: the same order, so the same bits as on widened w. */
static float dot_w(const float *x, const void *w, enum qv_dtype wt, int n) {
    if (wt == QV_DTYPE_F32) return qv__lora_dot(x, w, n);
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += x[i + j] * w_at(w, (size_t)(i + j), wt);
    for (; i < n; i++)
        acc[i & 7] += x[i] * w_at(w, (size_t)i, wt);
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* Sequential dot of the n < 8 leftover elements after the vector part: weights w from element
 * i0 on, activations x. Never inlined, so one body serves every caller (no FMA contraction
 * differences between call sites). */
__attribute__((noinline)) static float tail_dot_body(const void *w, size_t i0, enum qv_dtype wt,
                                                     const float *x, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += w_at(w, i0 + (size_t)i, wt) * x[i];
    return s;
}

/* The call is skipped when there is no tail (the common n_in % 8 == 0, rank % 8 == 0 case). */
static inline float tail_dot(const void *w, size_t i0, enum qv_dtype wt, const float *x, int n) {
    return n ? tail_dot_body(w, i0, wt, x, n) : 0.0f;
}

#if QV_LORA_X86
#define QV_AVX2 __attribute__((target("avx2,fma,f16c")))
#define QV_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

QV_AVX2_INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The weights an item reads, in order, for software prefetch: n bytes at w, then `next` (the
 * weights read after them, or NULL). */
typedef struct pf_stream {
    const char *w;
    size_t n;
    const char *next;
} pf_stream;

/* Prefetches bytes [off, off + len) of the stream (hints only: addresses past the end of `next`
 * are harmless). */
QV_AVX2_INLINE void pf_range(const pf_stream *ps, size_t off, size_t len) {
    if (!ps->w) return;       /* weights already in this core's caches */
    if (off + len <= ps->n) { /* the common case: straight-line prefetches (len is a constant) */
        for (size_t q = 0; q < len; q += 64)
            _mm_prefetch(ps->w + off + q, _MM_HINT_T0);
        return;
    }
    for (size_t q = off & ~(size_t)63; q < off + len; q += 64) {
        if (q < ps->n)
            _mm_prefetch(ps->w + q, _MM_HINT_T0);
        else if (ps->next)
            _mm_prefetch(ps->next + (q - ps->n), _MM_HINT_T0);
    }
}

/* Elements i .. i+7 of w (dtype wt, a compile-time constant after inlining) as 8 floats. */
QV_AVX2_INLINE __m256 load8(const void *w, size_t i, enum qv_dtype wt) {
    if (wt == QV_DTYPE_F32) return _mm256_loadu_ps((const float *)w + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (wt == QV_DTYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* out[r] = x · A[r] for r < rank. Each out[r] is one 8-lane FMA chain over the vector part, a
 * fixed horizontal sum, plus the sequential tail: the same sequence whether r is computed in a
 * block of 4 or alone. */
QV_AVX2_INLINE void shrink_row_t(const float *x, const void *a, enum qv_dtype wt, int rank,
                                 int n_in, float *out, const pf_stream *ps) {
    const int nv = n_in & ~7;
    const size_t ld = (size_t)n_in, esz = wt == QV_DTYPE_F32 ? 4 : 2;
    int r = 0;
    for (; r + 4 <= rank; r += 4) {
        const size_t o0 = (size_t)r * ld, o1 = o0 + ld, o2 = o1 + ld, o3 = o2 + ld;
        __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
        for (int i = 0; i < nv; i += 8) {
            /* the 4 rows stream 32 elements per step: keep PF_AHEAD bytes ahead of them */
            pf_range(ps, (o0 + 4 * (size_t)i) * esz + PF_AHEAD, 32 * esz);
            const __m256 xv = _mm256_loadu_ps(x + i);
            c0 = _mm256_fmadd_ps(load8(a, o0 + (size_t)i, wt), xv, c0);
            c1 = _mm256_fmadd_ps(load8(a, o1 + (size_t)i, wt), xv, c1);
            c2 = _mm256_fmadd_ps(load8(a, o2 + (size_t)i, wt), xv, c2);
            c3 = _mm256_fmadd_ps(load8(a, o3 + (size_t)i, wt), xv, c3);
        }
        out[r] = hsum8(c0) + tail_dot(a, o0 + (size_t)nv, wt, x + nv, n_in - nv);
        out[r + 1] = hsum8(c1) + tail_dot(a, o1 + (size_t)nv, wt, x + nv, n_in - nv);
        out[r + 2] = hsum8(c2) + tail_dot(a, o2 + (size_t)nv, wt, x + nv, n_in - nv);
        out[r + 3] = hsum8(c3) + tail_dot(a, o3 + (size_t)nv, wt, x + nv, n_in - nv);
    }
    for (; r < rank; r++) {
        const size_t o0 = (size_t)r * ld;
        __m256 c0 = _mm256_setzero_ps();
        for (int i = 0; i < nv; i += 8) {
            pf_range(ps, (o0 + (size_t)i) * esz + PF_AHEAD, 8 * esz);
            c0 = _mm256_fmadd_ps(load8(a, o0 + (size_t)i, wt), _mm256_loadu_ps(x + i), c0);
        }
        out[r] = hsum8(c0) + tail_dot(a, o0 + (size_t)nv, wt, x + nv, n_in - nv);
    }
}

QV_AVX2 static void shrink_row_avx2(const float *x, const void *a, enum qv_dtype wt, int rank,
                                    int n_in, float *out, const pf_stream *ps) {
    switch (wt) {
    case QV_DTYPE_F16: shrink_row_t(x, a, QV_DTYPE_F16, rank, n_in, out, ps); break;
    case QV_DTYPE_BF16: shrink_row_t(x, a, QV_DTYPE_BF16, rank, n_in, out, ps); break;
    default: shrink_row_t(x, a, QV_DTYPE_F32, rank, n_in, out, ps); break;
    }
}

/* y[o] += scale * (B[o] · z + bias[o]) for o in [o0, o1). When rank % 8 == 0, outputs go in
 * groups of 8 (o0 is a multiple of 8: blocks are 128 wide): 8 FMA chains reduced together by a
 * fixed hadd tree; the last n_out % 8 outputs (and every output of other ranks) take the
 * one-output path. Which path an output takes depends only on o and the shapes. */
QV_AVX2_INLINE void expand_row_t(const void *b, enum qv_dtype wt, const float *z, int rank,
                                 const float *bias, float scale, float *y, int o0, int o1,
                                 const pf_stream *ps) {
    const int nv = rank & ~7;
    const size_t ld = (size_t)rank, esz = wt == QV_DTYPE_F32 ? 4 : 2;
    int o = o0;
    if (nv == rank && rank > 0) {
        const __m256 vs = _mm256_set1_ps(scale);
        for (; o + 8 <= o1; o += 8) {
            const size_t r0 = (size_t)o * ld;
            pf_range(ps, r0 * esz + PF_AHEAD, 8 * ld * esz);
            /* Eight named accumulators: an array of them stays on the stack at -O2. */
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
                   a7 = a0;
            for (int k = 0; k < rank; k += 8) {
                const __m256 zv = _mm256_loadu_ps(z + k);
                const size_t i = r0 + (size_t)k;
                a0 = _mm256_fmadd_ps(load8(b, i, wt), zv, a0);
                a1 = _mm256_fmadd_ps(load8(b, i + ld, wt), zv, a1);
                a2 = _mm256_fmadd_ps(load8(b, i + 2 * ld, wt), zv, a2);
                a3 = _mm256_fmadd_ps(load8(b, i + 3 * ld, wt), zv, a3);
                a4 = _mm256_fmadd_ps(load8(b, i + 4 * ld, wt), zv, a4);
                a5 = _mm256_fmadd_ps(load8(b, i + 5 * ld, wt), zv, a5);
                a6 = _mm256_fmadd_ps(load8(b, i + 6 * ld, wt), zv, a6);
                a7 = _mm256_fmadd_ps(load8(b, i + 7 * ld, wt), zv, a7);
            }
            const __m256 t0 = _mm256_hadd_ps(a0, a1), t1 = _mm256_hadd_ps(a2, a3);
            const __m256 t2 = _mm256_hadd_ps(a4, a5), t3 = _mm256_hadd_ps(a6, a7);
            const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
            __m256 d = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                                     _mm256_permute2f128_ps(u0, u1, 0x31));
            if (bias) d = _mm256_add_ps(d, _mm256_loadu_ps(bias + o));
            _mm256_storeu_ps(y + o, _mm256_add_ps(_mm256_loadu_ps(y + o), _mm256_mul_ps(vs, d)));
        }
    }
    for (; o < o1; o++) {
        const size_t bo = (size_t)o * ld;
        if (((o - o0) & 7) == 0) pf_range(ps, bo * esz + PF_AHEAD, 8 * ld * esz);
        __m256 c = _mm256_setzero_ps();
        for (int k = 0; k < nv; k += 8)
            c = _mm256_fmadd_ps(load8(b, bo + (size_t)k, wt), _mm256_loadu_ps(z + k), c);
        float d = hsum8(c) + tail_dot(b, bo + (size_t)nv, wt, z + nv, rank - nv);
        if (bias) d += bias[o];
        y[o] += scale * d;
    }
}

QV_AVX2 static void expand_row_avx2(const void *b, enum qv_dtype wt, const float *z, int rank,
                                    const float *bias, float scale, float *y, int o0, int o1,
                                    const pf_stream *ps) {
    switch (wt) {
    case QV_DTYPE_F16: expand_row_t(b, QV_DTYPE_F16, z, rank, bias, scale, y, o0, o1, ps); break;
    case QV_DTYPE_BF16: expand_row_t(b, QV_DTYPE_BF16, z, rank, bias, scale, y, o0, o1, ps); break;
    default: expand_row_t(b, QV_DTYPE_F32, z, rank, bias, scale, y, o0, o1, ps); break;
    }
}
#endif

size_t qv__lora_tmp_floats(const qv__lora_seg *segs, int n_segs) {
    size_t n = 0;
    for (int s = 0; s < n_segs; s++)
        n += (size_t)segs[s].n * (size_t)segs[s].rank;
    return n;
}

enum lora_mode { MODE_SHRINK, MODE_EXPAND, MODE_FUSED };

typedef struct lora_task {
    const qv__lora_seg *segs;
    int n_segs;
    enum lora_mode mode;
    const float *x; /* shrink input (segments without their own x) */
    size_t ldx;
    int n_in;
    float *tmp;
    int n_out; /* expand (segments without their own y) */
    float *y;
    size_t ldy;
    bool simd;     /* AVX2+FMA+F16C row kernels (fixed per backend, so per row) */
    int64_t total; /* sum of item costs */
} lora_task;

static const void *seg_a(const qv__lora_seg *g) {
    return g->wtype == QV_DTYPE_F32 ? (const void *)g->a : (const void *)g->a16;
}
static const void *seg_b(const qv__lora_seg *g) {
    return g->wtype == QV_DTYPE_F32 ? (const void *)g->b : (const void *)g->b16;
}

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

/* Items per row of a segment (output blocks in expand mode, else 1). */
static int seg_blocks(const lora_task *t, const qv__lora_seg *g) {
    if (t->mode != MODE_EXPAND) return 1;
    int n_out = g->y ? g->n_out : t->n_out;
    return (n_out + EXPAND_BLOCK - 1) / EXPAND_BLOCK;
}

/* Cost of one item of a segment: the weight elements it reads, plus a fixed overhead. */
static int64_t item_cost(const lora_task *t, const qv__lora_seg *g) {
    size_t ld;
    int n_in = 0, n_out = 0;
    if (t->mode != MODE_EXPAND) (void)seg_x(t, g, &ld, &n_in);
    if (t->mode == MODE_EXPAND) n_out = EXPAND_BLOCK;
    if (t->mode == MODE_FUSED) (void)seg_y(t, g, &ld, &n_out);
    return (int64_t)g->rank * (int64_t)(n_in + n_out) + ITEM_OVERHEAD;
}

#if QV_LORA_X86
static size_t w_bytes(const qv__lora_seg *g, int n) {
    return (size_t)g->rank * (size_t)n * (g->wtype == QV_DTYPE_F32 ? 4 : 2);
}
#endif

/* Shrink of one row; cold: the first row of the segment this thread computes (its weights are
 * not in this core's caches yet), which prefetches along A and on into B (read next by a fused
 * item). */
static void shrink_one(const lora_task *t, const qv__lora_seg *g, int row, float *out, bool cold) {
    size_t ldx;
    int n_in;
    const float *x = seg_x(t, g, &ldx, &n_in) + (size_t)(g->t0 + row) * ldx;
    const void *a = seg_a(g);
#if QV_LORA_X86
    if (t->simd) {
        const pf_stream ps = {cold ? a : NULL, w_bytes(g, n_in),
                              t->mode == MODE_FUSED ? seg_b(g) : NULL};
        shrink_row_avx2(x, a, g->wtype, g->rank, n_in, out, &ps);
        return;
    }
#else
    (void)cold;
#endif
    for (int k = 0; k < g->rank; k++)
        out[k] = dot_w(
            x, (const char *)a + (size_t)k * (size_t)n_in * (g->wtype == QV_DTYPE_F32 ? 4 : 2),
            g->wtype, n_in);
}

/* Outputs [o0, min(o1, n_out)) of one row; o1 < 0 means n_out. pf: prefetch along B (the
 * thread's first row of the segment) and on into `next`, the weights read after this (its last
 * row; NULL: none). */
static void expand_one(const lora_task *t, const qv__lora_seg *g, int row, const float *z, int o0,
                       int o1, bool pf, const void *next) {
    size_t ldy;
    int n_out;
    float *y = seg_y(t, g, &ldy, &n_out) + (size_t)(g->t0 + row) * ldy;
    const void *b = seg_b(g);
    if (o1 < 0 || o1 > n_out) o1 = n_out;
#if QV_LORA_X86
    if (t->simd) {
        const pf_stream ps = {pf ? b : NULL, w_bytes(g, n_out), next};
        expand_row_avx2(b, g->wtype, z, g->rank, g->b_bias, g->scale, y, o0, o1, &ps);
        return;
    }
#else
    (void)pf;
    (void)next;
#endif
    const size_t esz = g->wtype == QV_DTYPE_F32 ? 4 : 2;
    for (int o = o0; o < o1; o++) {
        float d = dot_w(z, (const char *)b + (size_t)o * (size_t)g->rank * esz, g->wtype, g->rank);
        if (g->b_bias) d += g->b_bias[o];
        y[o] += g->scale * d;
    }
}

static int64_t ceil_div(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }

/* Part `part` of `nth` owns the items whose cost-prefix start lies in [lo, hi), lo and hi the
 * part's share of the total rounded up. One walk over the segments per part. */
static void run_part(const lora_task *t, int part, int nth) {
    const int64_t lo = ceil_div(t->total * part, nth), hi = ceil_div(t->total * (part + 1), nth);
    int64_t c0 = 0; /* cost before the segment */
    size_t off = 0; /* packed tmp offset of the segment */
    for (int s = 0; s < t->n_segs && c0 < hi; s++) {
        const qv__lora_seg *g = &t->segs[s];
        const int64_t c = item_cost(t, g), nb = seg_blocks(t, g), n_it = (int64_t)g->n * nb;
        const int64_t i0 = QV_MIN(n_it, ceil_div(lo - c0, c)),
                      i1 = QV_MIN(n_it, ceil_div(hi - c0, c));
        for (int64_t i = i0; i < i1; i++) {
            const int row = (int)(i / nb), blk = (int)(i % nb);
            float *z = t->tmp + off + (size_t)row * (size_t)g->rank;
            /* first: the thread's first row of this segment (its weights are not in this core's
             * caches yet: prefetch); last: its last row (prefetch the next segment's A) */
            const bool first = row == (int)(i0 / nb), last = i == i1 - 1;
            switch (t->mode) {
            case MODE_SHRINK: shrink_one(t, g, row, z, first); break;
            case MODE_EXPAND:
                expand_one(t, g, row, z, blk * EXPAND_BLOCK, (blk + 1) * EXPAND_BLOCK, first, NULL);
                break;
            case MODE_FUSED: /* the last row runs on into the next segment's A */
                shrink_one(t, g, row, z, first);
                expand_one(t, g, row, z, 0, -1, first || last,
                           last && s + 1 < t->n_segs ? seg_a(g + 1) : NULL);
                break;
            }
        }
        c0 += c * n_it;
        off += (size_t)g->n * (size_t)g->rank;
    }
}

static void task_fn(void *arg, int part, int nth) { run_part(arg, part, nth); }

/* The CPU backend's context, or NULL (a device backend or none: single-threaded, portable). */
static qv__cpu_ctx *cpu_ctx(qv_backend *be) {
    /* Only the CPU backend exposes a pool; its ctx is a qv__cpu_ctx. */
    return (be && !be->iface->download) ? be->ctx : NULL;
}

static void run_task(qv_backend *be, lora_task *t) {
    qv__cpu_ctx *cx = cpu_ctx(be);
    t->simd = cx && cx->simd;
    t->total = 0;
    int64_t n_items = 0;
    for (int s = 0; s < t->n_segs; s++) {
        const int64_t n_it = (int64_t)t->segs[s].n * seg_blocks(t, &t->segs[s]);
        t->total += item_cost(t, &t->segs[s]) * n_it;
        n_items += n_it;
    }
    if (n_items == 0) return;
    if (!cx || !cx->pool || cx->n_threads <= 1 || n_items < 2)
        task_fn(t, 0, 1);
    else
        qv__cpu_pool_run(cx->pool, task_fn, t);
}

void qv__lora_shrink(qv_backend *be, const qv__lora_seg *segs, int n_segs, const float *x,
                     size_t ldx, int n_in, float *tmp) {
    lora_task t = {.segs = segs,
                   .n_segs = n_segs,
                   .mode = MODE_SHRINK,
                   .x = x,
                   .ldx = ldx,
                   .n_in = n_in,
                   .tmp = tmp};
    run_task(be, &t);
}

void qv__lora_expand(qv_backend *be, const qv__lora_seg *segs, int n_segs, const float *tmp,
                     int n_out, float *y, size_t ldy) {
    lora_task t = {.segs = segs,
                   .n_segs = n_segs,
                   .mode = MODE_EXPAND,
                   .tmp = (float *)(uintptr_t)tmp, /* only read in expand mode */
                   .n_out = n_out,
                   .y = y,
                   .ldy = ldy};
    run_task(be, &t);
}

void qv__lora_apply(qv_backend *be, const qv__lora_seg *segs, int n_segs, const float *x,
                    size_t ldx, int n_in, float *tmp, int n_out, float *y, size_t ldy) {
    const qv__cpu_ctx *cx = cpu_ctx(be);
    const int nth = cx && cx->pool ? cx->n_threads : 1;
    int64_t n_rows = 0;
    for (int s = 0; s < n_segs; s++)
        n_rows += segs[s].n;
    /* Too few rows to share between the threads: two runs, the expand split by output blocks. */
    if (nth > 1 && n_rows < 2 * (int64_t)nth) {
        qv__lora_shrink(be, segs, n_segs, x, ldx, n_in, tmp);
        qv__lora_expand(be, segs, n_segs, tmp, n_out, y, ldy);
        return;
    }
    lora_task t = {.segs = segs,
                   .n_segs = n_segs,
                   .mode = MODE_FUSED,
                   .x = x,
                   .ldx = ldx,
                   .n_in = n_in,
                   .tmp = tmp,
                   .n_out = n_out,
                   .y = y,
                   .ldy = ldy};
    run_task(be, &t);
}
