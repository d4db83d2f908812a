/*
 * attention.c - paged causal attention over the KV pool (HF eager_attention_forward in fp32).
 *
 * Math, per query token t (sequence s, position p) and head h, kv head g = h / (nh / nkv):
 *   j in [j0, p], j0 = window ? max(0, p - window + 1) : 0; key/value j of sequence s live in
 *   page page_table[s][j / page_size], slot j % page_size.
 *   score_j = (q_h · k_j) * scale;  prob_j = exp(score_j - max) / Σ exp(score - max);
 *   out_h = Σ_j prob_j v_j   (j ascending).
 * Parallelisation: over (token, head) pairs pulled in small chunks from an atomic counter;
 * each pair is computed by one thread in a fixed order, so results do not depend on the batch
 * or the thread count. Scores go to a per-thread scratch row owned by the backend context.
 * What not: no KV writes (kv_store in ops.c), no mask tensors: causality comes from positions.
 * Thread: called on the backend's engine thread.
 */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "cpu/cpu_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#define QV_HAVE_X86 1
#include <immintrin.h>
#else
#define QV_HAVE_X86 0
#endif

#define PAIRS_PER_JOB 4

struct attn_task {
    const qv_kv_pool *pool;
    int layer;
    const qv_attn_batch *ab;
    const float *q;
    float *out;
    float *scratch;
    size_t scratch_per_thread;
    bool simd;
    int n_pairs;
    int pairs_per_job; /* 1 for a decode step (few, long pairs), more for big prefill batches */
    atomic_int next;
};

static float dot_portable(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            acc[k] += a[i + k] * b[i + k];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void axpy_portable(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}

#if QV_HAVE_X86
__attribute__((target("avx2,fma"))) static float dot_avx2(const float *a, const float *b, int n) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    float s = _mm_cvtss_f32(s4);
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

__attribute__((target("avx2,fma"))) static void axpy_avx2(float *y, float a, const float *x,
                                                          int n) {
    __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i,
                         _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}
#endif

/* sc[i] = exp(sc[i] - mx) / Σ exp(sc - mx), i < len: sequential sum, per-element division. */
static void softmax_portable(float *sc, int len, float mx) {
    float sum = 0.0f;
    for (int i = 0; i < len; i++) {
        sc[i] = expf(sc[i] - mx);
        sum += sc[i];
    }
    for (int i = 0; i < len; i++)
        sc[i] = sc[i] / sum;
}

#if QV_HAVE_X86
/* Same values as softmax_portable except the sum, which runs in 8 lanes (then the lanes in a
 * fixed order, then the tail): a scalar add chain over a long context cost more than the dot
 * products. The division stays a true division (as HF's softmax). */
__attribute__((target("avx2,fma"))) static void softmax_avx2(float *sc, int len, float mx) {
    for (int i = 0; i < len; i++)
        sc[i] = expf(sc[i] - mx);
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= len; i += 8)
        acc = _mm256_add_ps(acc, _mm256_loadu_ps(sc + i));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    float sum = _mm_cvtss_f32(s4);
    for (; i < len; i++)
        sum += sc[i];
    __m256 vs = _mm256_set1_ps(sum);
    i = 0;
    for (; i + 8 <= len; i += 8)
        _mm256_storeu_ps(sc + i, _mm256_div_ps(_mm256_loadu_ps(sc + i), vs));
    for (; i < len; i++)
        sc[i] = sc[i] / sum;
}
#endif

/* Float offset of position j's slot (all kv heads) in this layer of the pool. */
static inline size_t slot_at(const struct attn_task *tk, const int32_t *pt, int j) {
    const qv_kv_pool *pool = tk->pool;
    size_t kv_dim = (size_t)pool->n_kv_heads * (size_t)pool->head_dim;
    size_t page = (size_t)tk->layer * (size_t)pool->n_pages + (size_t)pt[j / pool->page_size];
    return (page * (size_t)pool->page_size + (size_t)(j % pool->page_size)) * kv_dim;
}

#if QV_HAVE_X86
/* o = Σ_j prob_j v_j for head_dim a multiple of 64: 64 output columns at a time live in eight
 * registers across the whole j loop. Same per-element operation order as axpy_avx2 (one fma
 * per j, j ascending, from zero), so both give identical bits. */
__attribute__((target("avx2,fma"))) static void wsum64_avx2(const struct attn_task *tk,
                                                            const int32_t *pt, int j0, int p,
                                                            size_t head_off, const float *prob,
                                                            float *o, int hd) {
    for (int c0 = 0; c0 < hd; c0 += 64) {
        __m256 acc[8];
        _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
        for (int j = j0; j <= p; j++) {
            const float *vp = tk->pool->v + slot_at(tk, pt, j) + head_off + c0;
            __m256 pj = _mm256_set1_ps(prob[j - j0]);
            _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) acc[k] =
                _mm256_fmadd_ps(pj, _mm256_loadu_ps(vp + 8 * k), acc[k]);
        }
        _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++)
            _mm256_storeu_ps(o + c0 + 8 * k, acc[k]);
    }
}

/* sc[j - j0] = (q · k_j) * scale for j in [j0, p], head_dim a multiple of 8: eight keys at a
 * time, each with its own accumulator over head_dim, reduced together by a transpose-hadd tree.
 * Every key goes through exactly the same operations whatever its slot in the group (a short
 * last group repeats its last key), so a score depends only on q and k_j. */
__attribute__((target("avx2,fma"))) static float scores8_avx2(const struct attn_task *tk,
                                                              const int32_t *pt, int j0, int p,
                                                              size_t head_off, const float *q,
                                                              int hd, float scale, float *sc) {
    float mx = -INFINITY;
    __m256 vscale = _mm256_set1_ps(scale);
    for (int j = j0; j <= p; j += 8) {
        const float *kp[8];
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) kp[i] =
            tk->pool->k + slot_at(tk, pt, QV_MIN(j + i, p)) + head_off;
        __m256 acc[8];
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
        for (int d = 0; d < hd; d += 8) {
            __m256 qd = _mm256_loadu_ps(q + d);
            _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) acc[i] =
                _mm256_fmadd_ps(qd, _mm256_loadu_ps(kp[i] + d), acc[i]);
        }
        __m256 s01 = _mm256_hadd_ps(acc[0], acc[1]), s23 = _mm256_hadd_ps(acc[2], acc[3]);
        __m256 s45 = _mm256_hadd_ps(acc[4], acc[5]), s67 = _mm256_hadd_ps(acc[6], acc[7]);
        __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
        __m256 lo = _mm256_permute2f128_ps(s0123, s4567, 0x20);
        __m256 hi = _mm256_permute2f128_ps(s0123, s4567, 0x31);
        __m256 dots = _mm256_mul_ps(_mm256_add_ps(lo, hi), vscale);
        float tmp[8];
        _mm256_storeu_ps(tmp, dots);
        int nk = QV_MIN(8, p - j + 1);
        for (int i = 0; i < nk; i++) {
            sc[j - j0 + i] = tmp[i];
            if (tmp[i] > mx) mx = tmp[i];
        }
    }
    return mx;
}
#endif

static void attn_pair(const struct attn_task *tk, int pair, float *sc) {
    const qv_attn_batch *ab = tk->ab;
    const qv_kv_pool *pool = tk->pool;
    int t = pair / ab->n_heads, h = pair % ab->n_heads;
    int hd = ab->head_dim;
    int s = ab->tok_seq[t], p = ab->tok_pos[t];
    int j0 = ab->window > 0 ? QV_MAX(0, p - ab->window + 1) : 0;
    int g = h / (ab->n_heads / ab->n_kv_heads);
    const int32_t *pt = ab->page_table[s];
    const float *qv = tk->q + ((size_t)t * (size_t)ab->n_heads + (size_t)h) * (size_t)hd;
    float *o = tk->out + ((size_t)t * (size_t)ab->n_heads + (size_t)h) * (size_t)hd;

    float mx = -INFINITY;
#if QV_HAVE_X86
    if (tk->simd && hd % 8 == 0)
        mx = scores8_avx2(tk, pt, j0, p, (size_t)g * (size_t)hd, qv, hd, ab->scale, sc);
    else
#endif
        for (int j = j0; j <= p; j++) {
            const float *kp = pool->k + slot_at(tk, pt, j) + (size_t)g * (size_t)hd;
#if QV_HAVE_X86
            float d = tk->simd ? dot_avx2(qv, kp, hd) : dot_portable(qv, kp, hd);
#else
        float d = dot_portable(qv, kp, hd);
#endif
            float v = d * ab->scale;
            sc[j - j0] = v;
            if (v > mx) mx = v;
        }
#if QV_HAVE_X86
    if (tk->simd)
        softmax_avx2(sc, p - j0 + 1, mx);
    else
#endif
        softmax_portable(sc, p - j0 + 1, mx);
#if QV_HAVE_X86
    if (tk->simd && hd % 64 == 0) {
        wsum64_avx2(tk, pt, j0, p, (size_t)g * (size_t)hd, sc, o, hd);
        return;
    }
#endif
    memset(o, 0, (size_t)hd * sizeof(float));
    for (int j = j0; j <= p; j++) {
        const float *vp = pool->v + slot_at(tk, pt, j) + (size_t)g * (size_t)hd;
#if QV_HAVE_X86
        if (tk->simd)
            axpy_avx2(o, sc[j - j0], vp, hd);
        else
            axpy_portable(o, sc[j - j0], vp, hd);
#else
        axpy_portable(o, sc[j - j0], vp, hd);
#endif
    }
}

static void attn_fn(void *arg, int part, int nth) {
    (void)nth;
    struct attn_task *tk = arg;
    float *sc = tk->scratch + (size_t)part * tk->scratch_per_thread;
    for (;;) {
        int job = atomic_fetch_add_explicit(&tk->next, tk->pairs_per_job, memory_order_relaxed);
        if (job >= tk->n_pairs) break;
        int end = QV_MIN(job + tk->pairs_per_job, tk->n_pairs);
        for (int pr = job; pr < end; pr++)
            attn_pair(tk, pr, sc);
    }
}

void qv__cpu_attention(qv__cpu_ctx *cx, const qv_kv_pool *pool, int layer, const qv_attn_batch *ab,
                       const float *q, float *out) {
    QV_ASSERT(layer >= 0 && layer < pool->n_layers);
    QV_ASSERT(ab->n_kv_heads == pool->n_kv_heads && ab->head_dim == pool->head_dim);
    QV_ASSERT(ab->n_kv_heads > 0 && ab->n_heads % ab->n_kv_heads == 0);
    if (ab->n_tokens == 0) return;
    size_t need = 1;
    for (int t = 0; t < ab->n_tokens; t++) {
        QV_ASSERT(ab->tok_pos[t] >= 0 && ab->tok_seq[t] >= 0 && ab->tok_seq[t] < ab->n_seqs);
        size_t span = (size_t)ab->tok_pos[t] + 1;
        if (ab->window > 0) span = QV_MIN(span, (size_t)ab->window);
        need = QV_MAX(need, span);
    }
    if (need > cx->scratch_per_thread) {
        size_t grow = QV_MAX(need, 2 * cx->scratch_per_thread);
        float *s = qv_malloc(grow * (size_t)cx->n_threads * sizeof(float));
        QV_ASSERT(s != NULL); /* a few floats per context position; no graceful path here */
        qv_free(cx->scratch);
        cx->scratch = s;
        cx->scratch_per_thread = grow;
    }
    struct attn_task tk = {
        .pool = pool,
        .layer = layer,
        .ab = ab,
        .q = q,
        .out = out,
        .scratch = cx->scratch,
        .scratch_per_thread = cx->scratch_per_thread,
        .simd = cx->simd,
        .n_pairs = ab->n_tokens * ab->n_heads,
        .pairs_per_job = ab->n_tokens * ab->n_heads >= 256 ? PAIRS_PER_JOB : 1,
    };
    atomic_init(&tk.next, 0);
    if (tk.n_pairs == 1)
        attn_fn(&tk, 0, 1);
    else
        qv__cpu_pool_run(cx->pool, attn_fn, &tk);
}
