/* fake_cublas.h - half-precision helpers shared by the fake-device sources (fake_cublas.c). */
#ifndef QV_FAKE_CUBLAS_H
#define QV_FAKE_CUBLAS_H

#include <stddef.h>
#include <stdint.h>

/* element i of a bf16 (fp16 = 0) or fp16 array, widened */
float qv_fake_h2f(const void *p, size_t i, int fp16);
/* v rounded to bf16 / fp16 bits */
uint16_t qv_fake_f2h(float v, int fp16);
/* v rounded to bf16 / fp16 and widened back */
float qv_fake_round_h(float v, int fp16);

#endif
