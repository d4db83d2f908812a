/*
 * fake_ops.c - for tests/gpu/fakeops/run.sh only: the semantics of every launcher of
 * engine/cuda/cuda_kernels.h in plain C (as their header comments state them), cuBLAS GemmEx,
 * and the CUDA runtime calls of backend_cuda.c that tests/gpu/fake/fake_cudart.c lacks. With
 * fake_cudart.c it runs the REAL backend_cuda.c (deferred launches, fusions, switches, staging,
 * launch counting) under test_cuda_ops and test_cuda_forward on a machine without a GPU.
 * What not: nothing here checks a kernel (tests/gpu/run.sh on a GPU does); graphs are not
 * faked (run with QV_CUDA_GRAPHS=0). Launches run synchronously, in stream order.
 */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cuda/cuda_kernels.h"
#include "engine/dtype.h"

/* ---- runtime and cuBLAS calls backend_cuda.c needs beyond fake_cudart.c ---- */

cudaError_t cudaSetDevice(int d) {
    (void)d;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties_v2(struct cudaDeviceProp *p, int d);
cudaError_t cudaGetDeviceProperties_v2(struct cudaDeviceProp *p, int d) {
    (void)d;
    memset(p, 0, sizeof(*p));
    strcpy(p->name, "fake device");
    p->major = 9;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d);
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d) {
    return cudaGetDeviceProperties_v2(p, d);
}
cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    (void)a;
    (void)b;
    *ms = 0.0f;
    return cudaSuccess;
}
cudaError_t cudaMemset(void *p, int v, size_t n) {
    memset(p, v, n);
    return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode m) {
    (void)s;
    (void)m;
    return cudaErrorNotSupported;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
    (void)s;
    *g = NULL;
    return cudaErrorNotSupported;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long f) {
    (void)g;
    (void)f;
    *e = NULL;
    return cudaErrorNotSupported;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    (void)g;
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
    (void)e;
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
    (void)e;
    (void)s;
    return cudaErrorNotSupported;
}

static int blas_token;
cublasStatus_t cublasCreate_v2(cublasHandle_t *h) {
    *h = (cublasHandle_t)(void *)&blas_token;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
    (void)h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s) {
    (void)h;
    (void)s;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t h, void *w, size_t n) {
    (void)h;
    (void)w;
    (void)n;
    return CUBLAS_STATUS_SUCCESS;
}

static float h2f(const void *p, size_t i, int fp16) {
    const uint16_t v = ((const uint16_t *)p)[i];
    return fp16 ? qv_f16_to_f32(v) : qv_bf16_to_f32(v);
}
static uint16_t f2h(float v, int fp16) { return fp16 ? qv_f32_to_f16(v) : qv_f32_to_bf16(v); }
static float round_h(float v, int fp16) {
    const uint16_t h = f2h(v, fp16);
    return h2f(&h, 0, fp16);
}

/* Only the call shape backend_cuda.c uses: C (m, n) = A(k, m)ᵀ · B (k, n) + beta C, column-major.
 */
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType_t at,
                            int lda, const void *B, cudaDataType_t bt, int ldb, const void *beta,
                            void *C, cudaDataType_t ct, int ldc, cublasComputeType_t cty,
                            cublasGemmAlgo_t algo) {
    (void)h, (void)ta, (void)tb, (void)bt, (void)ct, (void)cty, (void)algo;
    const int fp16 = at == CUDA_R_16F;
    const float al = *(const float *)alpha, be = *(const float *)beta;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float s = 0.0f;
            for (int c = 0; c < k; c++)
                s += h2f(A, (size_t)i * (size_t)lda + (size_t)c, fp16) *
                     h2f(B, (size_t)j * (size_t)ldb + (size_t)c, fp16);
            float *o = (float *)C + (size_t)j * (size_t)ldc + (size_t)i;
            *o = al * s + (be != 0.0f ? be * *o : 0.0f);
        }
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- launchers ---- */

void qv_cuda_set_pdl(int on) { (void)on; }

long qv_fake_launches; /* every launcher call */
long qv_fake_rope_kv;
#define L() (qv_fake_launches++)

int qv_cuda_f32_to_half(const float *x, void *y, size_t n, int fp16, cudaStream_t s) {
    (void)s, L();
    for (size_t i = 0; i < n; i++)
        ((uint16_t *)y)[i] = f2h(x[i], fp16);
    return 0;
}
int qv_cuda_get_rows(const void *table, int fp16, const int32_t *ids, int n, int cols, float *out,
                     cudaStream_t s) {
    (void)s, L();
    for (int i = 0; i < n; i++)
        for (int c = 0; c < cols; c++)
            out[(size_t)i * cols + c] = h2f(table, (size_t)ids[i] * cols + c, fp16);
    return 0;
}
static void rms(const float *x, const float *w, int n, int dim, float eps, float *y, void *yh,
                int fp16) {
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * dim;
        double ss = 0.0;
        for (int i = 0; i < dim; i++)
            ss += (double)xr[i] * (double)xr[i];
        const float inv = 1.0f / sqrtf((float)(ss / (double)dim) + eps);
        for (int i = 0; i < dim; i++) {
            const float v = w[i] * (xr[i] * inv);
            y[(size_t)r * dim + i] = v;
            if (yh) ((uint16_t *)yh)[(size_t)r * dim + i] = f2h(v, fp16);
        }
    }
}
int qv_cuda_rmsnorm(const float *x, const float *w, int n, int dim, float eps, float *y,
                    cudaStream_t s) {
    (void)s, L();
    rms(x, w, n, dim, eps, y, NULL, 0);
    return 0;
}
int qv_cuda_rmsnorm_half(const float *x, const float *w, int n, int dim, float eps, float *y,
                         void *yh, int fp16, cudaStream_t s) {
    (void)s, L();
    rms(x, w, n, dim, eps, y, yh, fp16);
    return 0;
}
static float silu_mul(float a, float u) { return a / (1.0f + expf(-a)) * u; }
int qv_cuda_swiglu_half(const float *gate, const float *up, float *out, void *oh, int fp16,
                        size_t n, cudaStream_t s) {
    (void)s, L();
    for (size_t i = 0; i < n; i++) {
        out[i] = silu_mul(gate[i], up[i]);
        ((uint16_t *)oh)[i] = f2h(out[i], fp16);
    }
    return 0;
}
static void rope_rows(float *x, int n, int heads, int hd, const int32_t *pos, const float *inv) {
    const int half = hd / 2;
    for (int t = 0; t < n; t++)
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++) {
                float *v = x + ((size_t)t * heads + h) * hd;
                const float ang = (float)pos[t] * inv[i];
                const float sn = sinf(ang), cs = cosf(ang), a = v[i], b = v[i + half];
                v[i] = a * cs - b * sn;
                v[i + half] = b * cs + a * sn;
            }
}
int qv_cuda_rope(float *x, int n, int n_heads, int head_dim, const int32_t *pos,
                 const float *inv_freq, cudaStream_t s) {
    (void)s, L();
    rope_rows(x, n, n_heads, head_dim, pos, inv_freq);
    return 0;
}
int qv_cuda_rope2(float *x1, int h1, float *x2, int h2, int n, int head_dim, const int32_t *pos,
                  const float *inv_freq, cudaStream_t s) {
    (void)s, L();
    rope_rows(x1, n, h1, head_dim, pos, inv_freq);
    rope_rows(x2, n, h2, head_dim, pos, inv_freq);
    return 0;
}
int qv_cuda_swiglu(const float *gate, const float *up, float *out, size_t n, cudaStream_t s) {
    (void)s, L();
    for (size_t i = 0; i < n; i++)
        out[i] = silu_mul(gate[i], up[i]);
    return 0;
}
int qv_cuda_add(float *y, const float *x, size_t n, cudaStream_t s) {
    (void)s, L();
    for (size_t i = 0; i < n; i++)
        y[i] += x[i];
    return 0;
}
int qv_cuda_add_bias(float *y, const float *bias, int n_rows, int n_cols, cudaStream_t s) {
    (void)s, L();
    for (int r = 0; r < n_rows; r++)
        for (int c = 0; c < n_cols; c++)
            y[(size_t)r * n_cols + c] += bias[c];
    return 0;
}
static void kv_put(float *base, size_t i, float v, int kv_bf16) {
    if (kv_bf16)
        ((uint16_t *)base)[i] = qv_f32_to_bf16(v);
    else
        base[i] = v;
}
static float kv_get(const float *base, size_t i, int kv_bf16) {
    return kv_bf16 ? qv_bf16_to_f32(((const uint16_t *)base)[i]) : base[i];
}
int qv_cuda_kv_store(float *k_layer, float *v_layer, int page_size, int kv_dim, const float *k,
                     const float *v, int n, const int32_t *page, const int32_t *off, int kv_bf16,
                     cudaStream_t s) {
    (void)s, L();
    for (int t = 0; t < n; t++) {
        const size_t d = ((size_t)page[t] * page_size + off[t]) * kv_dim;
        for (int i = 0; i < kv_dim; i++) {
            kv_put(k_layer, d + i, k[(size_t)t * kv_dim + i], kv_bf16);
            kv_put(v_layer, d + i, v[(size_t)t * kv_dim + i], kv_bf16);
        }
    }
    return 0;
}
int qv_cuda_rope2_kv_store(float *q, int hq, float *k, int hk, const float *v, int n, int head_dim,
                           const int32_t *pos, const float *inv_freq, float *k_layer,
                           float *v_layer, int page_size, const int32_t *page, const int32_t *off,
                           int kv_bf16, cudaStream_t s) {
    (void)s;
    qv_fake_rope_kv++;
    rope_rows(q, n, hq, head_dim, pos, inv_freq);
    rope_rows(k, n, hk, head_dim, pos, inv_freq);
    qv_cuda_kv_store(k_layer, v_layer, page_size, hk * head_dim, k, v, n, page, off, kv_bf16, s);
    return 0; /* one launch: counted by kv_store */
}
int qv_cuda_gather_rows(const float *src, const int32_t *idx, int n, int width, float *dst,
                        cudaStream_t s) {
    (void)s, L();
    for (int i = 0; i < n; i++)
        memcpy(dst + (size_t)i * width, src + (size_t)idx[i] * width, sizeof(float) * width);
    return 0;
}
int qv_cuda_argmax(const float *x, int n, int width, int32_t *out, cudaStream_t s) {
    (void)s, L();
    for (int i = 0; i < n; i++) {
        int b = 0;
        for (int j = 1; j < width; j++)
            if (x[(size_t)i * width + j] > x[(size_t)i * width + b]) b = j;
        out[i] = b;
    }
    return 0;
}
int qv_cuda_fill_random_half(void *dst, size_t n, int fp16, uint64_t seed, float scale,
                             cudaStream_t s) {
    (void)s, L();
    uint64_t r = seed | 1u;
    for (size_t i = 0; i < n; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        ((uint16_t *)dst)[i] = f2h(((float)(r >> 40) / 16777216.0f * 2.0f - 1.0f) * scale, fp16);
    }
    return 0;
}
int qv_cuda_fill_f32(float *dst, size_t n, float value, cudaStream_t s) {
    (void)s, L();
    for (size_t i = 0; i < n; i++)
        dst[i] = value;
    return 0;
}
static void gemv_seg(const void *w, float *y, int rows, const void *xh, int cols, int n, float beta,
                     int fp16) {
    for (int t = 0; t < n; t++)
        for (int r = 0; r < rows; r++) {
            float acc = 0.0f;
            for (int c = 0; c < cols; c++)
                acc += h2f(w, (size_t)r * cols + c, fp16) * h2f(xh, (size_t)t * cols + c, fp16);
            float *o = y + (size_t)t * rows + r;
            *o = beta != 0.0f ? acc + beta * *o : acc;
        }
}
int qv_cuda_gemv(const void *w, const void *x, float *y, int rows, int cols, int n, float beta,
                 int fp16, cudaStream_t s) {
    (void)s, L();
    gemv_seg(w, y, rows, x, cols, n, beta, fp16);
    return 0;
}
int qv_cuda_gemv_multi(const qv_cuda_gemv_segs *g, const void *x, int cols, int n, float beta,
                       int fp16, cudaStream_t s) {
    (void)s, L();
    for (int i = 0; i < g->n_segs; i++)
        gemv_seg(g->w[i], g->y[i], g->rows[i], x, cols, n, beta, fp16);
    return 0;
}
long qv_fake_gemv2_norm, qv_fake_gemv2_swiglu; /* fused launches seen */
static void report(void) {
    fprintf(stderr, "fake_ops: %ld launches; fused: %ld norm+gemv, %ld gemv+swiglu, %ld rope+kv\n",
            qv_fake_launches, qv_fake_gemv2_norm, qv_fake_gemv2_swiglu, qv_fake_rope_kv);
}
__attribute__((constructor)) static void init_report(void) { atexit(report); }
int qv_cuda_gemv2(const qv_cuda_gemv2_args *a, cudaStream_t s) {
    (void)s, L();
    if (a->n <= 0) return 0;
    if (a->n > QV_CUDA_GEMV_MAX_N || a->cols % 8 ||
        (a->swiglu_out && (a->g.n_segs != 2 || a->g.rows[0] != a->g.rows[1] || a->beta != 0.0f)))
        return -1;
    const int cols = a->cols, n = a->n;
    /* the kernel's preconditions (a GPU would fault or race where the fake would not) */
    const size_t xb = (size_t)n * cols;
#define ALIGNED(p) (((uintptr_t)(p)&15) == 0)
#define OVERLAP(p, pb, q, qb)                                                                      \
    ((const char *)(p) < (const char *)(q) + (qb) && (const char *)(q) < (const char *)(p) + (pb))
    if (!(a->norm_w ? ALIGNED(a->x) && ALIGNED(a->norm_w) : ALIGNED(a->xh))) return -1;
    for (int i = 0; i < a->g.n_segs; i++)
        if (!ALIGNED(a->g.w[i])) return -1;
    if (a->norm_w && a->norm_y && OVERLAP(a->norm_y, xb * 4, a->x, xb * 4)) return -1;
    if (a->swiglu_out) {
        const size_t ob = (size_t)n * a->g.rows[0] * 2;
        if (!a->norm_w && OVERLAP(a->swiglu_oh, ob, a->xh, xb * 2)) return -1;
        if (a->norm_yh && OVERLAP(a->swiglu_oh, ob, a->norm_yh, xb * 2)) return -1;
    }
    /* the input as the kernel sees it: half values */
    uint16_t *xin = malloc(sizeof(uint16_t) * (size_t)n * cols);
    if (a->norm_w) {
        qv_fake_gemv2_norm++;
        float *y = malloc(sizeof(float) * (size_t)n * cols);
        rms(a->x, a->norm_w, n, cols, a->eps, y, xin, a->fp16);
        if (a->norm_y) memcpy(a->norm_y, y, sizeof(float) * (size_t)n * cols);
        if (a->norm_yh) memcpy(a->norm_yh, xin, sizeof(uint16_t) * (size_t)n * cols);
        free(y);
    } else {
        memcpy(xin, a->xh, sizeof(uint16_t) * (size_t)n * cols);
    }
    for (int i = 0; i < a->g.n_segs; i++)
        gemv_seg(a->g.w[i], a->g.y[i], a->g.rows[i], xin, cols, n, a->beta, a->fp16);
    if (a->swiglu_out) {
        qv_fake_gemv2_swiglu++;
        const size_t ne = (size_t)n * a->g.rows[0];
        for (size_t i = 0; i < ne; i++) {
            a->swiglu_out[i] = silu_mul(a->g.y[0][i], a->g.y[1][i]);
            ((uint16_t *)a->swiglu_oh)[i] = f2h(a->swiglu_out[i], a->fp16);
        }
    }
    free(xin);
    (void)round_h;
    return 0;
}
int qv_cuda_attention(const qv_cuda_attn_args *a, cudaStream_t s) {
    (void)s, L();
    const int hd = a->head_dim, kv_dim = a->n_kv_heads * hd;
    float *sc = NULL;
    for (int t = 0; t < a->n_tokens; t++) {
        const int pos = a->tok_pos[t];
        const int32_t *tab = a->tables + (size_t)a->tok_seq[t] * a->table_stride;
        const int j0 = a->window > 0 && pos - a->window + 1 > 0 ? pos - a->window + 1 : 0;
        sc = realloc(sc, sizeof(float) * (size_t)(pos + 1));
        for (int h = 0; h < a->n_heads; h++) {
            const int g = h / (a->n_heads / a->n_kv_heads);
            const float *q = a->q + ((size_t)t * a->n_heads + h) * hd;
            float m = -INFINITY, l = 0.0f;
            for (int j = j0; j <= pos; j++) {
                const size_t kb =
                    ((size_t)tab[j / a->page_size] * a->page_size + j % a->page_size) * kv_dim +
                    (size_t)g * hd;
                float d = 0.0f;
                for (int i = 0; i < hd; i++)
                    d += q[i] * kv_get(a->k_layer, kb + i, a->kv_bf16);
                sc[j] = d * a->scale;
                if (sc[j] > m) m = sc[j];
            }
            for (int j = j0; j <= pos; j++) {
                sc[j] = expf(sc[j] - m);
                l += sc[j];
            }
            const size_t ob = ((size_t)t * a->n_heads + h) * hd;
            for (int i = 0; i < hd; i++) {
                float acc = 0.0f;
                for (int j = j0; j <= pos; j++) {
                    const size_t vb =
                        ((size_t)tab[j / a->page_size] * a->page_size + j % a->page_size) * kv_dim +
                        (size_t)g * hd;
                    acc += sc[j] * kv_get(a->v_layer, vb + i, a->kv_bf16);
                }
                a->out[ob + i] = acc / l;
                if (a->out_half) ((uint16_t *)a->out_half)[ob + i] = f2h(acc / l, a->fp16);
            }
        }
    }
    free(sc);
    return 0;
}
