/*
 * backend_cpu.c - the CPU implementation of struct qv_backend_i: creation, the vtable, and
 * 64-byte aligned host allocations. The ops themselves live in matmul.c, ops.c, attention.c.
 *
 * What not: no op logic here. Invariant: ctx->simd and ctx->matmul_simd are fixed at creation
 * (QV_CPU_SIMD=0 in the environment forces the portable kernels, QV_CPU_SIMD=avx2 rules out
 * AVX-512; otherwise the widest the CPU has: AVX2+FMA+F16C, and AVX-512 for the matmul; on
 * aarch64 the matmul's NEON kernels, the other ops portable).
 * Thread: a backend is confined to the engine thread that created it (backend.h).
 */
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "cpu/cpu_internal.h"

#define ALIGN_BYTES 64

static qv__cpu_ctx *ctx_of(qv_backend *be) { return be->ctx; }

static void cpu_destroy(qv_backend *be) {
    if (!be) return;
    qv__cpu_ctx *cx = be->ctx;
    if (cx) {
        qv__cpu_pool_destroy(cx->pool);
        qv_free(cx->scratch);
        qv_free(cx->tiles);
        qv_free(cx->attn_idx);
        qv_free(cx->attn_left);
        qv_free(cx->attn_part);
        qv_free(cx);
    }
    qv_free(be);
}

/* Over-allocates through qv_malloc (so allocation-failure injection applies) and stores the
 * original pointer just below the aligned block. */
static void *cpu_alloc(qv_backend *be, size_t n_bytes) {
    (void)be;
    if (n_bytes > SIZE_MAX - ALIGN_BYTES - sizeof(void *)) return NULL;
    unsigned char *raw = qv_malloc(n_bytes + ALIGN_BYTES + sizeof(void *));
    if (!raw) return NULL;
    uintptr_t a =
        ((uintptr_t)(raw + sizeof(void *)) + ALIGN_BYTES - 1) & ~(uintptr_t)(ALIGN_BYTES - 1);
    void **slot = (void **)a - 1;
    *slot = raw;
    return (void *)a;
}

static void cpu_free(qv_backend *be, void *p) {
    (void)be;
    if (!p) return;
    qv_free(((void **)p)[-1]);
}

static void cpu_get_rows(qv_backend *be, const qv_tensor *table, const int32_t *ids, int n,
                         float *out) {
    qv__cpu_get_rows(ctx_of(be), table, ids, n, out);
}
static void cpu_matmul(qv_backend *be, const qv_tensor *w, const float *x, int n, float *y,
                       const float *bias) {
    qv__cpu_matmul(ctx_of(be), w, x, n, y, bias);
}
static void cpu_rmsnorm(qv_backend *be, const float *x, const float *w, int n, int dim, float eps,
                        float *y) {
    qv__cpu_rmsnorm(ctx_of(be), x, w, n, dim, eps, y);
}
static void cpu_rope(qv_backend *be, float *x, int n, int n_heads, int head_dim, const int32_t *pos,
                     const float *inv_freq) {
    qv__cpu_rope(ctx_of(be), x, n, n_heads, head_dim, pos, inv_freq);
}
static void cpu_swiglu(qv_backend *be, const float *gate, const float *up, float *out,
                       size_t n_elems) {
    qv__cpu_swiglu(ctx_of(be), gate, up, out, n_elems);
}
static void cpu_add(qv_backend *be, float *y, const float *x, size_t n_elems) {
    qv__cpu_add(ctx_of(be), y, x, n_elems);
}
static void cpu_kv_store(qv_backend *be, qv_kv_pool *pool, int layer, const float *k,
                         const float *v, int n, const int32_t *slot_page, const int32_t *slot_off) {
    qv__cpu_kv_store(ctx_of(be), pool, layer, k, v, n, slot_page, slot_off);
}
static void cpu_attention(qv_backend *be, const qv_kv_pool *pool, int layer,
                          const qv_attn_batch *ab, const float *q, float *out) {
    qv__cpu_attention(ctx_of(be), pool, layer, ab, q, out);
}

static int cpu_kv_elem_bytes(qv_backend *be) { return ctx_of(be)->kv_bf16 ? 2 : 4; }

static const struct qv_backend_i cpu_iface = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .get_rows = cpu_get_rows,
    .matmul = cpu_matmul,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .kv_elem_bytes = cpu_kv_elem_bytes,
};

void qv_backend_cpu_set_kv_bf16(qv_backend *be, bool on) { ctx_of(be)->kv_bf16 = on; }

bool qv__cpu_has_avx2(void) {
#if defined(__x86_64__) || defined(__i386__)
    /* AVX2 and FMA through the compiler's probe (which also checks OS support of the YMM
     * state); F16C from CPUID leaf 1, ECX bit 29, since clang 14 has no "f16c" probe. */
    unsigned a, b, c, d;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return false;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    return (c >> 29) & 1u;
#else
    return false;
#endif
}

bool qv__cpu_has_avx512(void) {
#if defined(__x86_64__) || defined(__i386__)
    /* The compiler's probe also checks that the OS saves the opmask and ZMM state (XCR0). */
    __builtin_cpu_init();
    return qv__cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
#else
    return false;
#endif
}

bool qv__cpu_has_neon(void) {
#if defined(__aarch64__) && defined(__ARM_NEON)
    return true;
#else
    return false;
#endif
}

enum qv__cpu_simd qv__cpu_simd_level(void) {
    const char *env = getenv("QV_CPU_SIMD");
    if (qv__cpu_has_neon())
        return env && strcmp(env, "0") == 0 ? QV_CPU_SIMD_NONE : QV_CPU_SIMD_NEON;
    if ((env && strcmp(env, "0") == 0) || !qv__cpu_has_avx2()) return QV_CPU_SIMD_NONE;
    if ((env && strcmp(env, "avx2") == 0) || !qv__cpu_has_avx512()) return QV_CPU_SIMD_AVX2;
    return QV_CPU_SIMD_AVX512;
}

const char *qv__cpu_simd_name(enum qv__cpu_simd s) {
    return s == QV_CPU_SIMD_AVX512 ? "avx512"
           : s == QV_CPU_SIMD_AVX2 ? "avx2"
           : s == QV_CPU_SIMD_NEON ? "neon"
                                   : "portable";
}

const char *qv_backend_cpu_kernels(void) { return qv__cpu_simd_name(qv__cpu_simd_level()); }

qv_status qv_backend_cpu_create(int n_threads, qv_backend **out, qv_error *err) {
    *out = NULL;
    qv_status st;
    if (n_threads < 0)
        return qv_errorf(err, QV_ERR_INVALID, "cpu backend: n_threads %d < 0", n_threads);
    if (n_threads == 0) n_threads = QV_MIN(qv_cpus_available(NULL, 0), 256);
    qv_backend *be = qv_calloc(1, sizeof *be);
    qv__cpu_ctx *cx = qv_calloc(1, sizeof *cx);
    if (!be || !cx) {
        qv_free(be);
        qv_free(cx);
        return qv_errorf(err, QV_ERR_NOMEM, "cpu backend: out of memory");
    }
    be->iface = &cpu_iface;
    be->ctx = cx;
    cx->n_threads = n_threads;
    cx->matmul_simd = qv__cpu_simd_level();
    cx->simd = cx->matmul_simd == QV_CPU_SIMD_AVX2 || cx->matmul_simd == QV_CPU_SIMD_AVX512;
    cx->attn_seg = QV_ATTN_SEG;
    cx->attn_split = -1;
    st = qv__cpu_pool_create(n_threads, &cx->pool, err);
    if (st != QV_OK) goto fail;
    QV_LOGD("cpu backend: %d threads, %s kernels (matmul %s)", n_threads,
            cx->simd ? "avx2" : "portable", qv__cpu_simd_name(cx->matmul_simd));
    *out = be;
    return QV_OK;
fail:
    cpu_destroy(be);
    return st;
}
