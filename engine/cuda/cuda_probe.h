/*
 * cuda_probe.h - the CUDA build's device probe and self-test, callable from C.
 *
 * Not the backend (that is backend_cuda.h): these functions let GPU tests and benchmarks detect
 * a device and check that the toolchain, the architecture list and the runtime agree, by
 * running one small kernel whose result is compared on the host.
 */
#ifndef QV_CUDA_PROBE_H
#define QV_CUDA_PROBE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when there is no device or no driver. Never aborts. */
int qv_cuda_device_count(void);

/* Writes the name and compute capability of device 0 into buf. Returns 0 on success. */
int qv_cuda_device_name(char *buf, size_t len, int *major, int *minor);

/* y[i] = a * x[i] + y[i] on device 0 for n elements (host arrays are copied in and out).
 * Returns 0 on success, -1 on any CUDA error (logged to stderr). */
int qv_cuda_saxpy(float a, const float *x, float *y, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* QV_CUDA_PROBE_H */
