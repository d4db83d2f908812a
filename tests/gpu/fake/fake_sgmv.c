/*
 * fake_sgmv.c - the semantics of the SGMV launchers (engine/cuda/sgmv.h) in plain C, for
 * tests/gpu/fake/run_fake.sh: sums in double, an order different from both the kernels and the
 * CPU. The emulated gpu tests (tests/gpu/emu/) run the real kernels instead.
 */
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "engine/cuda/sgmv.h"
#include "engine/dtype.h"

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
