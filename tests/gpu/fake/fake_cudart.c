/*
 * fake_cudart.c - a host-memory stand-in for the CUDA runtime calls of engine/cuda/adapter_pool.c
 * and the gpu tests, so that the host logic around the kernels (the pool's staging and layout,
 * segment tables, the tests' harness) runs on a machine without a GPU: with fake_sgmv.c (the
 * SGMV launchers' semantics) in tests/gpu/fake/run_fake.sh, with the real kernels on the CPU in
 * the emulated gpu tests (tests/gpu/emu/). Never part of a real build (it would clash with
 * libcudart). Device memory is host memory; streams are
 * no-ops; events report "not ready" two queries in three so the pool's waiting paths run.
 * What not: it says nothing about the kernels themselves (tests/gpu/run.sh on a GPU does).
 */
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/dtype.h"

int qv_cuda_device_count(void);

/* Stream capture, for a graph emulation (tests/gpu/emu/emu_graph.cpp provides the strong
 * definitions): qv_fake_capturing(s) says whether work enqueued on s is being recorded;
 * qv_fake_record(fn, arg, n) records fn(copy of the n bytes at arg) for replay. Without the
 * emulation nothing is ever captured. */
int qv_fake_capturing(cudaStream_t s);
void qv_fake_record(void (*fn)(void *), const void *arg, size_t n);
__attribute__((weak)) int qv_fake_capturing(cudaStream_t s) {
    (void)s;
    return 0;
}
__attribute__((weak)) void qv_fake_record(void (*fn)(void *), const void *arg, size_t n) {
    (void)fn, (void)arg, (void)n;
    abort();
}

/* Device memory starts as NaN (all-ones bytes: NaN in f32, bf16 and fp16), as garbage does on
 * a GPU, so a kernel that reads memory nothing wrote shows up in the results. Above 64 MiB
 * (the adapter pool's region) only the first and last MiB, to keep tests fast. */
cudaError_t cudaMalloc(void **p, size_t n) {
    *p = NULL;
    if (n > (size_t)8 << 30) return cudaErrorMemoryAllocation; /* cudaMemGetInfo's device */
    *p = malloc(n ? n : 1);
    if (!*p) return cudaErrorMemoryAllocation;
    const size_t mib = (size_t)1 << 20;
    if (n <= 64 * mib) {
        memset(*p, 0xff, n);
    } else {
        memset(*p, 0xff, mib);
        memset((char *)*p + n - mib, 0xff, mib);
    }
    return cudaSuccess;
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
    if (qv_fake_capturing((cudaStream_t)0)) return cudaErrorStreamCaptureImplicit;
    memcpy(d, s, n);
    return cudaSuccess;
}
/* Host-to-device bytes copied asynchronously (the adapter pool's uploads), for fake tests. */
unsigned long long qv_fake_h2d_bytes;
struct fake_copy {
    void *d;
    const void *s;
    size_t n;
};
static void run_copy(void *a) {
    const struct fake_copy *c = a;
    memcpy(c->d, c->s, c->n);
}
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, enum cudaMemcpyKind k,
                            cudaStream_t st) {
    if (k == cudaMemcpyHostToDevice) qv_fake_h2d_bytes += n;
    if (qv_fake_capturing(st)) {
        if (k == cudaMemcpyDeviceToHost) return cudaErrorStreamCaptureUnsupported;
        struct fake_copy c = {d, s, n}; /* a graph's copy node reads src when replayed */
        qv_fake_record(run_copy, &c, sizeof(c));
        return cudaSuccess;
    }
    memcpy(d, s, n);
    return cudaSuccess;
}
/* every stream its own token, so that capture on one stream does not catch another's work */
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
    (void)flags;
    *s = (cudaStream_t)malloc(8);
    return *s ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    free(s);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (qv_fake_capturing(s)) return cudaErrorStreamCaptureUnsupported;
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; } /* every copy is synchronous */
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
    *c = qv_fake_capturing(s) ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
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
