/*
 * fake_cublas.c - the CUDA runtime and cuBLAS calls of engine/cuda/backend_cuda.c that
 * tests/gpu/fake/fake_cudart.c lacks, on host memory: device properties, events' elapsed time,
 * memset, and a reference cublasGemmEx for the one call shape the backend uses (recorded instead
 * of run while its stream is being captured; tests/gpu/emu/emu_graph.cpp emulates graphs).
 * Linked by the emulated gpu tests (tests/gpu/emu/, label gpuemu) and tests/gpu/fake/run_fake.sh;
 * never part of a real build.
 */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/dtype.h"
#include "fake_cublas.h"

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
/* a handle is its stream */
cublasStatus_t cublasCreate_v2(cublasHandle_t *h) {
    *h = (cublasHandle_t)calloc(1, sizeof(cudaStream_t));
    return *h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s) {
    *(cudaStream_t *)(void *)h = s;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t h, void *w, size_t n) {
    (void)h;
    (void)w;
    (void)n;
    return CUBLAS_STATUS_SUCCESS;
}

float qv_fake_h2f(const void *p, size_t i, int fp16) {
    const uint16_t v = ((const uint16_t *)p)[i];
    return fp16 ? qv_f16_to_f32(v) : qv_bf16_to_f32(v);
}
uint16_t qv_fake_f2h(float v, int fp16) { return fp16 ? qv_f32_to_f16(v) : qv_f32_to_bf16(v); }
float qv_fake_round_h(float v, int fp16) {
    const uint16_t h = qv_fake_f2h(v, fp16);
    return qv_fake_h2f(&h, 0, fp16);
}

int qv_fake_capturing(cudaStream_t s);
void qv_fake_record(void (*fn)(void *), const void *arg, size_t n);

struct gemm {
    int m, n, k, lda, ldb, ldc, fp16;
    float alpha, beta;
    const void *A, *B;
    void *C;
};
/* sums in float in k order */
static void run_gemm(void *arg) {
    const struct gemm *g = arg;
    for (int j = 0; j < g->n; j++)
        for (int i = 0; i < g->m; i++) {
            float s = 0.0f;
            for (int c = 0; c < g->k; c++)
                s += qv_fake_h2f(g->A, (size_t)i * (size_t)g->lda + (size_t)c, g->fp16) *
                     qv_fake_h2f(g->B, (size_t)j * (size_t)g->ldb + (size_t)c, g->fp16);
            float *o = (float *)g->C + (size_t)j * (size_t)g->ldc + (size_t)i;
            *o = g->alpha * s + (g->beta != 0.0f ? g->beta * *o : 0.0f);
        }
}

/* Only the call shape backend_cuda.c uses: C (m, n) = A(k, m)ᵀ · B (k, n) + beta C, column-major.
 * alpha and beta are read at the call (host pointer mode), the matrices when it runs. */
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType_t at,
                            int lda, const void *B, cudaDataType_t bt, int ldb, const void *beta,
                            void *C, cudaDataType_t ct, int ldc, cublasComputeType_t cty,
                            cublasGemmAlgo_t algo) {
    (void)ta, (void)tb, (void)bt, (void)ct, (void)cty, (void)algo;
    struct gemm g = {
        m, n, k, lda, ldb, ldc, at == CUDA_R_16F, *(const float *)alpha, *(const float *)beta,
        A, B, C};
    if (qv_fake_capturing(*(cudaStream_t *)(void *)h))
        qv_fake_record(run_gemm, &g, sizeof(g));
    else
        run_gemm(&g);
    return CUBLAS_STATUS_SUCCESS;
}
