/*
 * bench_sgmv.c - achieved bandwidth of the SGMV shrink and expand kernels (engine/cuda/sgmv.cu)
 * at decode shapes of the ~1B config (hidden 2048 -> 2048, rank 16, bf16), with 1, 8, 32 and
 * 128 distinct adapters, against the HBM copy bandwidth measured in the same run
 * (qv_cuda_measure_d2d_bandwidth, read + write bytes) and against a loop of cublasGemmEx calls,
 * one shrink and one expand GEMM per adapter (the naive multi-adapter baseline).
 *
 * Two batch shapes per adapter count D: "distinct" (D tokens, one per adapter: the decode kernels)
 * and "batch 128" (128 tokens in D equal segments). Bytes counted are those that must move
 * once: shrink reads A (D x r x 2048 halfs) and x, writes tmp (fp32); expand reads B and tmp,
 * reads and writes y (fp32). The adapters' weights rotate through a 512 MiB region so that
 * repeated iterations cannot be served from L2. Times are CUDA-event means over REPS launches.
 * Usage: bench_sgmv [reps]   (built only with -DQV_CUDA=ON; run by tests/gpu/run.sh)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "engine/cuda/backend_cuda.h"
#include "engine/cuda/cuda_kernels.h"
#include "engine/cuda/sgmv.h"

#define N_IN 2048
#define N_OUT 2048
#define RANK 16
#define REGION ((size_t)512 << 20)
#define MAX_SETS 4096

#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "FAIL: %s: %s (line %d)\n", #call, cudaGetErrorString(e_), __LINE__);  \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
#define BK(call)                                                                                   \
    do {                                                                                           \
        cublasStatus_t e_ = (call);                                                                \
        if (e_ != CUBLAS_STATUS_SUCCESS) {                                                         \
            fprintf(stderr, "FAIL: %s: cublas %d (line %d)\n", #call, (int)e_, __LINE__);          \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static unsigned char *region;
static cudaStream_t stream;
static cublasHandle_t blas;

typedef struct setup {
    int D, T, n_sets;
    qv_sgmv_seg *dev;  /* n_sets tables of D segments, device */
    qv_sgmv_seg *host; /* the same on the host */
    qv_sgmv_plan plan;
} setup;

/* Adapter d of set k: A then B, per_adapter bytes, placed round-robin in the region. */
static void build(setup *s, int D, int T, void *x, float *y) {
    (void)x;
    memset(s, 0, sizeof(*s));
    s->D = D;
    s->T = T;
    const size_t per = (size_t)RANK * (N_IN + N_OUT) * 2;
    size_t per_set = per * (size_t)D;
    s->n_sets = (int)(REGION / per_set);
    if (s->n_sets > MAX_SETS) s->n_sets = MAX_SETS;
    if (s->n_sets < 1) s->n_sets = 1;
    s->host = calloc((size_t)s->n_sets * (size_t)D, sizeof(qv_sgmv_seg));
    for (int k = 0; k < s->n_sets; k++) {
        qv_sgmv_seg *h = s->host + (size_t)k * (size_t)D;
        for (int d = 0, t0 = 0; d < D; d++) {
            size_t off = (((size_t)k * (size_t)D + (size_t)d) * per) % (REGION - per);
            int n = T / D + (d < T % D ? 1 : 0);
            h[d] = (qv_sgmv_seg){.a = region + off,
                                 .b = region + off + (size_t)RANK * N_IN * 2,
                                 .y = y,
                                 .ldy = N_OUT,
                                 .t0 = t0,
                                 .n = n,
                                 .rank = RANK,
                                 .n_out = N_OUT,
                                 .scale = 0.5f};
            t0 += n;
        }
        qv_error err = {0};
        if (qv_sgmv_plan_build(h, D, T, &s->plan, &err) != QV_OK) {
            fprintf(stderr, "FAIL: plan: %s\n", err.msg);
            exit(1);
        }
    }
    const size_t tb = (size_t)s->n_sets * (size_t)D * sizeof(qv_sgmv_seg);
    CK(cudaMalloc((void **)&s->dev, tb));
    CK(cudaMemcpy(s->dev, s->host, tb, cudaMemcpyHostToDevice));
}

static void release(setup *s) {
    CK(cudaFree(s->dev));
    free(s->host);
}

/* mode 0: shrink, 1: expand, 2: cuBLAS loop (both GEMMs per adapter). Returns us per call. */
static double time_it(setup *s, int mode, int reps, const void *x, float *tmp, void *tmp16) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    const float one = 1.0f, zero = 0.0f;
    for (int it = -10; it < reps; it++) {
        if (it == 0) CK(cudaEventRecord(e0, stream));
        int k = (it + 10) % s->n_sets;
        qv_sgmv_args g = {.segs = s->dev + (size_t)k * (size_t)s->D, .plan = s->plan, .fp16 = 0};
        if (mode == 0) {
            if (qv_cuda_sgmv_shrink(&g, x, N_IN, N_IN, tmp, stream)) exit(1);
        } else if (mode == 1) {
            if (qv_cuda_sgmv_expand(&g, tmp, stream)) exit(1);
        } else {
            for (int d = 0; d < s->D; d++) {
                const qv_sgmv_seg *h = &s->host[(size_t)k * (size_t)s->D + (size_t)d];
                if (h->n == 0) continue;
                const unsigned short *xs = (const unsigned short *)x + (size_t)h->t0 * N_IN;
                unsigned short *ts = (unsigned short *)tmp16 + (size_t)h->t0 * RANK;
                /* tmp (n, r) = x · Aᵀ, then y (n, n_out) += scale * tmp · Bᵀ (column-major view) */
                BK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, RANK, h->n, N_IN, &one, h->a,
                                CUDA_R_16BF, N_IN, xs, CUDA_R_16BF, N_IN, &zero, ts, CUDA_R_16BF,
                                RANK, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
                BK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, N_OUT, h->n, RANK, &h->scale, h->b,
                                CUDA_R_16BF, RANK, ts, CUDA_R_16BF, RANK, &one,
                                h->y + (size_t)h->t0 * N_OUT, CUDA_R_32F, N_OUT, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
            }
        }
    }
    CK(cudaEventRecord(e1, stream));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    return (double)ms * 1000.0 / reps;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 200;
    if (reps < 1) reps = 1;
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    double bw = qv_cuda_measure_d2d_bandwidth((size_t)256 << 20, 5);
    if (bw <= 0) {
        fprintf(stderr, "FAIL: bandwidth measurement\n");
        return 1;
    }
    CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    BK(cublasCreate(&blas));
    BK(cublasSetStream(blas, stream));
    CK(cudaMalloc((void **)&region, REGION));
    if (qv_cuda_fill_random_half(region, REGION / 2, 0, 7, 0.05f, stream)) return 1;
    const int maxT = 128;
    void *x, *tmp16;
    float *y, *tmp;
    CK(cudaMalloc(&x, (size_t)maxT * N_IN * 2));
    CK(cudaMalloc((void **)&y, (size_t)maxT * N_OUT * 4));
    CK(cudaMalloc((void **)&tmp, (size_t)maxT * RANK * 4));
    CK(cudaMalloc(&tmp16, (size_t)maxT * RANK * 2));
    if (qv_cuda_fill_random_half(x, (size_t)maxT * N_IN, 0, 9, 1.0f, stream)) return 1;
    if (qv_cuda_fill_f32(y, (size_t)maxT * N_OUT, 0.0f, stream)) return 1;
    CK(cudaStreamSynchronize(stream));
    printf("SGMV decode shapes: %d -> rank %d -> %d, bf16 weights, fp32 tmp/y; HBM copy "
           "bandwidth %.0f GB/s (read + write)\n",
           N_IN, RANK, N_OUT, bw / 1e9);
    printf("| adapters | tokens | shrink us | shrink GB/s | %% of copy bw | expand us | expand "
           "GB/s | %% of copy bw | cuBLAS loop us | SGMV speed-up |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|\n");
    static const int Ds[4] = {1, 8, 32, 128};
    for (int shape = 0; shape < 2; shape++) {
        for (int i = 0; i < 4; i++) {
            const int D = Ds[i], T = shape == 0 ? D : maxT;
            setup s;
            build(&s, D, T, x, y);
            double ts = time_it(&s, 0, reps, x, tmp, tmp16);
            double te = time_it(&s, 1, reps, x, tmp, tmp16);
            double tb = time_it(&s, 2, reps / 4 > 0 ? reps / 4 : 1, x, tmp, tmp16);
            double bs = (double)D * RANK * N_IN * 2 + (double)T * N_IN * 2 + (double)T * RANK * 4;
            double be = (double)D * RANK * N_OUT * 2 + (double)T * RANK * 4 + (double)T * N_OUT * 8;
            double gs = bs / (ts * 1e-6), ge = be / (te * 1e-6);
            printf("| %d | %d | %.2f | %.0f | %.0f%% | %.2f | %.0f | %.0f%% | %.2f | %.1fx |\n", D,
                   T, ts, gs / 1e9, 100.0 * gs / bw, te, ge / 1e9, 100.0 * ge / bw, tb,
                   tb / (ts + te));
            release(&s);
        }
    }
    CK(cudaStreamSynchronize(stream));
    CK(cudaGetLastError());
    CK(cudaFree(x));
    CK(cudaFree(y));
    CK(cudaFree(tmp));
    CK(cudaFree(tmp16));
    CK(cudaFree(region));
    BK(cublasDestroy(blas));
    CK(cudaStreamDestroy(stream));
    return 0;
}
