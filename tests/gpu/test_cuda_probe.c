/*
 * test_cuda_probe.c - the CUDA build runs code on the device: saxpy on the GPU equals the
 * host computation exactly. Skips (77) when built without CUDA or when no device is present.
 */
#include <stdio.h>
#include <stdlib.h>

#ifdef QV_HAVE_CUDA
#include "engine/cuda/cuda_probe.h"
#endif

int main(void) {
#ifndef QV_HAVE_CUDA
    printf("SKIP: built without CUDA (-DQV_CUDA=OFF)\n");
    return 77;
#else
    int n_dev = qv_cuda_device_count();
    if (n_dev == 0) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    char name[256];
    int major = 0, minor = 0;
    if (qv_cuda_device_name(name, sizeof(name), &major, &minor) == 0)
        printf("device 0: %s (sm_%d%d), %d device(s)\n", name, major, minor, n_dev);
    const size_t n = 1000003;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float)),
          *want = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        x[i] = (float)(i % 1000) * 0.25f;
        y[i] = (float)(i % 7) - 3.0f;
        want[i] = 1.5f * x[i] + y[i];
    }
    if (qv_cuda_saxpy(1.5f, x, y, n) != 0) {
        fprintf(stderr, "FAIL: saxpy on the device failed\n");
        return 1;
    }
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += y[i] != want[i];
    free(x);
    free(y);
    free(want);
    if (bad) {
        fprintf(stderr, "FAIL: %zu of %zu elements differ\n", bad, n);
        return 1;
    }
    printf("saxpy: %zu elements identical to the host\n", n);
    return 0;
#endif
}
