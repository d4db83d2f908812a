/*
 * cpu_internal.h - state and cross-file entry points of the CPU backend (engine/cpu/ only).
 *
 * backend_cpu.c owns the vtable and the context; matmul.c, ops.c and attention.c implement
 * the ops against this context. The `simd` flag selects the AVX2+FMA+F16C kernels or the
 * portable ones, and `matmul_simd` the matmul's widest kernels (portable, AVX2 or AVX-512), for
 * the whole lifetime of a backend instance (chosen at creation from the CPU and the QV_CPU_SIMD
 * environment variable).
 * Thread: a context is used by its engine thread; worker threads only see per-op task structs.
 */
#ifndef QV_CPU_INTERNAL_H
#define QV_CPU_INTERNAL_H

#include <stdatomic.h>

#include "backend.h"
#include "cpu/threadpool.h"

/* Kernel families, narrowest first. */
enum qv__cpu_simd {
    QV_CPU_SIMD_NONE,   /* portable C */
    QV_CPU_SIMD_AVX2,   /* AVX2 + FMA + F16C */
    QV_CPU_SIMD_AVX512, /* AVX-512 F/BW/DQ/VL on top of AVX2 (matmul only) */
    QV_CPU_SIMD_NEON,   /* aarch64 Advanced SIMD (matmul only) */
};

/* Attention's default key segment length (keys). */
#define QV_ATTN_SEG 256

typedef struct qv__cpu_ctx {
    qv__cpu_pool *pool;
    int n_threads;
    bool simd;                     /* AVX2+FMA+F16C kernels (attention, LoRA, matmul) */
    enum qv__cpu_simd matmul_simd; /* the matmul's kernels */
    bool kv_bf16;                  /* K/V pools created now store bf16 (else F32) */
    float *scratch; /* attention score scratch, n_threads * scratch_per_thread floats */
    size_t scratch_per_thread;
    int32_t *tiles; /* attention's token tiles of a step, tiles_cap entries */
    int tiles_cap;
    /* Attention's key segments (attention.c): keys [k S, (k+1) S) of a row form segment k;
     * a row whose keys span several segments gets one partial result per segment, combined
     * in segment order. attn_seg (S) is fixed for a backend's life (a row's arithmetic
     * depends on it); attn_split -1 lets each step choose whether a segment is a work unit of
     * its own (few units) or the unit runs them all (many), 0/1 force it (tests). */
    int attn_seg;
    int attn_split;
    int32_t *attn_idx; /* per step: tokens' partial records and the unit list (attention.c) */
    size_t attn_idx_cap;
    atomic_int *attn_left; /* per step: segment units left per (tile, head group) */
    size_t attn_left_cap;
    float *attn_part; /* partial results of the segments: shared (split) or per thread */
    size_t attn_part_cap;
} qv__cpu_ctx;

/* True when `pool` stores bf16 K/V (its own elem_bytes, or the context's choice when 0). */
static inline bool qv__cpu_pool_bf16(const qv__cpu_ctx *cx, const qv_kv_pool *pool) {
    return pool->elem_bytes ? pool->elem_bytes == 2 : cx->kv_bf16;
}

/* True when the running CPU has AVX2, FMA and F16C. */
bool qv__cpu_has_avx2(void);
/* True when it also has AVX-512 F, BW, DQ and VL with the OS saving the ZMM state. */
bool qv__cpu_has_avx512(void);
/* True on aarch64 (Advanced SIMD is part of the base architecture there). */
bool qv__cpu_has_neon(void);
/* The kernels a backend created now would use: the CPU's widest, capped by QV_CPU_SIMD
 * ("0" portable, "avx2" no AVX-512; unset or anything else: the widest; NEON on aarch64). */
enum qv__cpu_simd qv__cpu_simd_level(void);
const char *qv__cpu_simd_name(enum qv__cpu_simd s);

/* Backend op implementations (semantics in backend.h). */
void qv__cpu_matmul(qv__cpu_ctx *cx, const qv_tensor *w, const float *x, int n, float *y,
                    const float *bias);
void qv__cpu_get_rows(qv__cpu_ctx *cx, const qv_tensor *table, const int32_t *ids, int n,
                      float *out);
void qv__cpu_rmsnorm(qv__cpu_ctx *cx, const float *x, const float *w, int n, int dim, float eps,
                     float *y);
void qv__cpu_rope(qv__cpu_ctx *cx, float *x, int n, int n_heads, int head_dim, const int32_t *pos,
                  const float *inv_freq);
void qv__cpu_swiglu(qv__cpu_ctx *cx, const float *gate, const float *up, float *out,
                    size_t n_elems);
void qv__cpu_add(qv__cpu_ctx *cx, float *y, const float *x, size_t n_elems);
void qv__cpu_kv_store(qv__cpu_ctx *cx, qv_kv_pool *pool, int layer, const float *k, const float *v,
                      int n, const int32_t *slot_page, const int32_t *slot_off);
/* sc[i] = exp(sc[i] - mx) / Σ exp(sc - mx) for i < len (mx: the row's maximum), with the
 * AVX2 kernels (simd) or the portable ones. */
void qv__cpu_softmax(bool simd, float *sc, int len, float mx);
/* The softmax's first half: sc[i] = exp(sc[i] - mx) for i < len; returns their sum (the
 * softmax divides by it). */
float qv__cpu_exp_sum(bool simd, float *sc, int len, float mx);
/* Test hook: the key segment length S (> 0) and the split mode (-1 auto, 0 never, 1 always)
 * of attention; defaults 256 and -1. */
void qv__cpu_set_attn_segments(qv__cpu_ctx *cx, int seg, int split);
void qv__cpu_attention(qv__cpu_ctx *cx, const qv_kv_pool *pool, int layer, const qv_attn_batch *ab,
                       const float *q, float *out);

#endif /* QV_CPU_INTERNAL_H */
