/*
 * fake_cudart.c - a host-memory stand-in for the CUDA runtime calls of engine/cuda/adapter_pool.c
 * and the gpu tests, plus the semantics of the SGMV launchers (sgmv.h) in plain C, so that the
 * host logic around the kernels (the pool's staging and layout, segment tables, the tests'
 * harness) runs on a machine without a GPU. Used only by tests/gpu/fake/run_fake.sh; never part
 * of a real build (it would clash with libcudart). Device memory is host memory; streams are
 * no-ops; events report "not ready" two queries in three so the pool's waiting paths run.
 * What not: it says nothing about the kernels themselves (tests/gpu/run.sh on a GPU does).
 */
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cuda/sgmv.h"
#include "engine/dtype.h"

int qv_cuda_device_count(void);

cudaError_t cudaMalloc(void **p, size_t n) {
    *p = calloc(1, n ? n : 1);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void *p) {
    free(p);
    return cudaSuccess;
}
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned int flags) {
    (void)flags;
    *p = malloc(n);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeHost(void *p) {
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void *d, const void *s, size_t n, enum cudaMemcpyKind k) {
    (void)k;
    memcpy(d, s, n);
    return cudaSuccess;
}
/* Host-to-device bytes copied asynchronously (the adapter pool's uploads), for fake tests. */
unsigned long long qv_fake_h2d_bytes;
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, enum cudaMemcpyKind k,
                            cudaStream_t st) {
    (void)st;
    if (k == cudaMemcpyHostToDevice) qv_fake_h2d_bytes += n;
    memcpy(d, s, n);
    return cudaSuccess;
}
static int stream_token;
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
    (void)flags;
    *s = (cudaStream_t)(void *)&stream_token;
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    (void)s;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    (void)s;
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags) {
    (void)flags;
    *e = (cudaEvent_t)malloc(8);
    return *e ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    free(e);
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    (void)e;
    (void)s;
    return cudaSuccess;
}
static unsigned queries;
cudaError_t cudaEventQuery(cudaEvent_t e) {
    (void)e;
    return (++queries % 3) ? cudaErrorNotReady : cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    (void)e;
    return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int flags) {
    (void)s;
    (void)e;
    (void)flags;
    return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t s, enum cudaStreamCaptureStatus *c) {
    (void)s;
    *c = cudaStreamCaptureStatusNone;
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
    *free_b = (size_t)8 << 30;
    *total_b = *free_b;
    return cudaSuccess;
}
const char *cudaGetErrorString(cudaError_t e) {
    (void)e;
    return "fake runtime error";
}
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
int qv_cuda_device_count(void) { return 1; }

static float h2f(uint16_t v, int f16) { return f16 ? qv_f16_to_f32(v) : qv_bf16_to_f32(v); }

/* sgmv.h semantics, sums in double (a different order than both the kernels and the CPU). */
int qv_cuda_sgmv_shrink(const qv_sgmv_args *g, const void *x, int64_t ldx, int n_in, float *tmp,
                        cudaStream_t s) {
    (void)s;
    const uint16_t *xh = x;
    for (int i = 0; i < g->plan.n_segs; i++) {
        const qv_sgmv_seg *sg = &g->segs[i];
        const uint16_t *a = sg->a;
        for (int t = 0; t < sg->n; t++)
            for (int r = 0; r < sg->rank; r++) {
                double acc = 0;
                for (int k = 0; k < n_in; k++)
                    acc +=
                        (double)h2f(xh[(size_t)(sg->t0 + t) * (size_t)ldx + (size_t)k], g->fp16) *
                        (double)h2f(a[(size_t)r * (size_t)n_in + (size_t)k], g->fp16);
                tmp[(size_t)sg->tmp_off + (size_t)t * (size_t)sg->rank + (size_t)r] = (float)acc;
            }
    }
    return 0;
}

int qv_cuda_sgmv_expand(const qv_sgmv_args *g, const float *tmp, cudaStream_t s) {
    (void)s;
    for (int i = 0; i < g->plan.n_segs; i++) {
        const qv_sgmv_seg *sg = &g->segs[i];
        const uint16_t *b = sg->b;
        for (int t = 0; t < sg->n; t++)
            for (int o = 0; o < sg->n_out; o++) {
                double acc = 0;
                for (int r = 0; r < sg->rank; r++)
                    acc +=
                        (double)h2f(b[(size_t)o * (size_t)sg->rank + (size_t)r], g->fp16) *
                        (double)tmp[(size_t)sg->tmp_off + (size_t)t * (size_t)sg->rank + (size_t)r];
                sg->y[(size_t)(sg->t0 + t) * (size_t)sg->ldy + (size_t)o] += sg->scale * (float)acc;
            }
    }
    return 0;
}
