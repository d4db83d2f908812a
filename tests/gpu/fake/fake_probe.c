/*
 * fake_probe.c - for tests/gpu/fake/run_fake.sh only: the device-name probe of cuda_probe.h
 * (cuda_probe.cu is not built without nvcc), so bench_gpu_lora links against the fake runtime.
 */
#include <stdio.h>

#include "engine/cuda/cuda_probe.h"

int qv_cuda_device_name(char *buf, size_t len, int *major, int *minor) {
    snprintf(buf, len, "fake CUDA runtime (host memory; timings mean nothing)");
    *major = 0;
    *minor = 0;
    return 0;
}
