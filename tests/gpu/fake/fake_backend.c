/*
 * fake_backend.c - for tests/gpu/fake/run_fake.sh only: a "cuda" backend that is the CPU backend
 * under the name "cuda" with a matmul_acc entry (so forward.c takes its CUDA LoRA path), and
 * qv_backend_cuda_sgmv computed on the host with the x rounding of the real one (bf16). With
 * fake_cudart.c it runs engine/cuda/lora_cuda.c, engine/cuda/adapter_pool.c and forward.c's
 * LoRA hooks end to end on a machine without a GPU. With QV_FAKE_DEVICE_OPS=1 it also has the
 * device-only entries (download, gather_rows, argmax) and the stats calls that bench_gpu_lora
 * uses (with fake_probe.c), so the benchmark's host logic runs too (its timings mean nothing).
 */
#include <stdlib.h>
#include <string.h>

#include "engine/cuda/backend_cuda.h"
#include "engine/dtype.h"

static struct qv_backend_i fake_iface;
static void (*cpu_matmul)(qv_backend *, const qv_tensor *, const float *, int, float *,
                          const float *);

static void fake_matmul_acc(qv_backend *be, const qv_tensor *w, const float *x, int n, float *y,
                            const float *bias) {
    float *t = malloc(sizeof(float) * (size_t)n * (size_t)w->n_rows);
    cpu_matmul(be, w, x, n, t, bias);
    for (size_t i = 0; i < (size_t)n * (size_t)w->n_rows; i++)
        y[i] += t[i];
    free(t);
}

/* Device-style entries (QV_FAKE_DEVICE_OPS=1): forward.c then takes its device path
 * (qv_forward_run_greedy, device logits), as bench_gpu_lora does on a GPU. */
static qv_status fake_download(qv_backend *be, void *dst, const void *src, size_t n_bytes,
                               qv_error *err) {
    (void)be;
    (void)err;
    if (n_bytes) memcpy(dst, src, n_bytes);
    return QV_OK;
}
static void fake_gather_rows(qv_backend *be, const float *src, const int32_t *idx, int n, int width,
                             float *dst) {
    (void)be;
    for (int i = 0; i < n; i++) /* dst may alias src rows below i (forward.c: distinct) */
        memmove(dst + (size_t)i * (size_t)width, src + (size_t)idx[i] * (size_t)width,
                sizeof(float) * (size_t)width);
}
static void fake_argmax(qv_backend *be, const float *x, int n, int width, int32_t *out) {
    (void)be;
    for (int i = 0; i < n; i++) {
        const float *r = x + (size_t)i * (size_t)width;
        int best = 0;
        for (int j = 1; j < width; j++)
            if (r[j] > r[best]) best = j;
        out[i] = best;
    }
}

static size_t fake_weight_bytes;

size_t qv_backend_cuda_weight_bytes(const qv_backend *be) {
    (void)be;
    return fake_weight_bytes;
}

void qv_backend_cuda_stats(const qv_backend *be, qv_cuda_stats *out) {
    (void)be;
    memset(out, 0, sizeof(*out));
}

void qv_cuda_opts_default(qv_cuda_opts *o) { memset(o, 0, sizeof(*o)); }

qv_status qv_backend_cuda_create(const qv_model *m, const qv_cuda_opts *o, qv_backend **out,
                                 qv_error *err) {
    (void)o;
    qv_status st = qv_backend_cpu_create(2, out, err);
    if (st != QV_OK) return st;
    fake_iface = *(*out)->iface;
    fake_iface.name = "cuda";
    cpu_matmul = fake_iface.matmul;
    fake_iface.matmul_acc = fake_matmul_acc;
    const char *dev = getenv("QV_FAKE_DEVICE_OPS");
    if (dev && strcmp(dev, "1") == 0) {
        fake_iface.download = fake_download;
        fake_iface.gather_rows = fake_gather_rows;
        fake_iface.argmax = fake_argmax;
    }
    fake_weight_bytes = 0;
    for (int l = 0; m && l < m->cfg.n_layers; l++) {
        const qv_layer_weights *w = &m->layers[l];
        const qv_tensor *ts[7] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w_gate, &w->w_up, &w->w_down};
        for (int k = 0; k < 7; k++)
            fake_weight_bytes += (size_t)ts[k]->n_rows * ts[k]->row_bytes;
    }
    (*out)->iface = &fake_iface;
    return QV_OK;
}

int qv_backend_cuda_act_fp16(const qv_backend *be) {
    (void)be;
    return 0;
}

void *qv_backend_cuda_stream(const qv_backend *be) {
    (void)be;
    return NULL;
}

void qv_backend_cuda_sgmv(qv_backend *be, const qv_sgmv_seg *segs, const qv_sgmv_plan *plan,
                          const float *x, int n, int n_in, float *tmp) {
    (void)be;
    (void)n;
    for (int i = 0; i < plan->n_segs; i++) {
        const qv_sgmv_seg *sg = &segs[i];
        const uint16_t *a = sg->a;
        for (int t = 0; t < sg->n; t++)
            for (int r = 0; r < sg->rank; r++) {
                float acc = 0;
                for (int k = 0; k < n_in; k++)
                    acc += qv_bf16_to_f32(
                               qv_f32_to_bf16(x[(size_t)(sg->t0 + t) * (size_t)n_in + (size_t)k])) *
                           qv_bf16_to_f32(a[(size_t)r * (size_t)n_in + (size_t)k]);
                tmp[(size_t)sg->tmp_off + (size_t)t * (size_t)sg->rank + (size_t)r] = acc;
            }
    }
    for (int i = 0; i < plan->n_segs; i++) {
        const qv_sgmv_seg *sg = &segs[i];
        const uint16_t *b = sg->b;
        for (int t = 0; t < sg->n; t++)
            for (int o = 0; o < sg->n_out; o++) {
                float acc = 0;
                for (int r = 0; r < sg->rank; r++)
                    acc += qv_bf16_to_f32(b[(size_t)o * (size_t)sg->rank + (size_t)r]) *
                           tmp[(size_t)sg->tmp_off + (size_t)t * (size_t)sg->rank + (size_t)r];
                sg->y[(size_t)(sg->t0 + t) * (size_t)sg->ldy + (size_t)o] += sg->scale * acc;
            }
    }
}
