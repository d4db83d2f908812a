/*
 * cuda_probe.cu - device probe and a saxpy self-test (see cuda_probe.h).
 *
 * Math: y = a*x + y, one thread per element, 256 threads per block (any size works; 256 keeps
 * the grid small for the test's sizes). Every CUDA call is checked; errors are reported and
 * returned, never fatal, because callers use this to decide whether to skip.
 */
#include <stdio.h>

#include <cuda_runtime.h>

#include "cuda_probe.h"

#define QV_CUDA_TRY(call)                                                                          \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "quiver cuda: %s failed: %s (%s:%d)\n", #call, cudaGetErrorString(e_), \
                    __FILE__, __LINE__);                                                           \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

static __global__ void saxpy_kernel(float a, const float *x, float *y, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}

extern "C" int qv_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the non-sticky "no device" error */
        return 0;
    }
    return n;
}

extern "C" int qv_cuda_device_name(char *buf, size_t len, int *major, int *minor) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) return -1;
    snprintf(buf, len, "%s", p.name);
    *major = p.major;
    *minor = p.minor;
    return 0;
}

extern "C" int qv_cuda_saxpy(float a, const float *x, float *y, size_t n) {
    float *dx = NULL, *dy = NULL;
    int rc = -1;
    const unsigned threads = 256;
    const unsigned blocks = (unsigned)((n + threads - 1) / threads);
    QV_CUDA_TRY(cudaMalloc((void **)&dx, n * sizeof(float)));
    QV_CUDA_TRY(cudaMalloc((void **)&dy, n * sizeof(float)));
    QV_CUDA_TRY(cudaMemcpy(dx, x, n * sizeof(float), cudaMemcpyHostToDevice));
    QV_CUDA_TRY(cudaMemcpy(dy, y, n * sizeof(float), cudaMemcpyHostToDevice));
    saxpy_kernel<<<blocks, threads>>>(a, dx, dy, n);
    QV_CUDA_TRY(cudaGetLastError());
    QV_CUDA_TRY(cudaMemcpy(y, dy, n * sizeof(float), cudaMemcpyDeviceToHost));
    rc = 0;
fail:
    cudaFree(dx);
    cudaFree(dy);
    return rc;
}
