/*
 * cuda_emu.h - runs quiver's CUDA kernels on the CPU, for tests on machines without a GPU.
 *
 * The kernel sources (the .cu files of engine/cuda/) are compiled as C++ by the host compiler with
 * this header force-included (-include) and QV_CUDA_EMU defined. A launch QV_LAUNCH(grid, block,
 * stream, kernel)(args...) then runs every block of the grid in turn on the calling thread; inside
 * a block each CUDA thread is a fiber (ucontext) with its own stack, and the fibers switch only at
 * __syncthreads(), warp shuffles and __syncwarp(), which are real barriers (block-wide or per
 * 32-lane warp). So block reductions, shared memory tiles, warp shuffles and grid-stride loops
 * execute as written; a barrier that some threads of a block never reach is reported as a deadlock
 * and aborts.
 *
 * What it checks: the kernels' indexing, reductions, tiling and numerics, against the CPU
 * backend, in the gpu tests (tests/CMakeLists.txt builds them as *_emu, label gpuemu). Device
 * memory is host memory (tests/gpu/fake/fake_cudart.c), so an ASan build also checks every
 * kernel access like compute-sanitizer memcheck would.
 * What not: performance, memory-model races between blocks (blocks run one after another),
 * streams, events and graphs (launches are synchronous), inline PTX (compiled out), and
 * anything cuBLAS does (tests/gpu/fake/fake_cublas.c has a reference GemmEx).
 * Thread: launches may come from one thread at a time.
 */
#ifndef QV_CUDA_EMU_H
#define QV_CUDA_EMU_H

#ifdef __cplusplus

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <type_traits>

namespace qv_emu {

struct launch_dims {
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
};
extern launch_dims g_dims;

const uint3 &thread_idx();
void sync_block();
void sync_warp();
int lane_linear(); /* linear thread index in the block */
void shfl_exchange(const void *v, void *out, size_t n, int src_lane); /* src_lane: 0..31 */

/* Runs body once per thread of every block of the grid (fails hard on a bad configuration). */
void run_grid(dim3 grid, dim3 block, const std::function<void()> &body, const char *what);
/* While stream s is being captured (emu_graph.cpp), records step and returns true. */
bool capture(cudaStream_t s, const std::function<void()> &step);

template <typename... KA> struct bound_launch {
    dim3 grid, block;
    cudaStream_t stream;
    void (*kernel)(KA...);
    template <typename... A> void operator()(A... args) const {
        void (*k)(KA...) = kernel;
        const dim3 g = grid, b = block;
        /* arguments converted and copied now, as a launch does */
        std::function<void()> launch = [g, b, k, args...]() {
            run_grid(
                g, b, [&]() { k(static_cast<KA>(args)...); }, "kernel");
        };
        if (!capture(stream, launch)) launch();
    }
};
template <typename... KA>
bound_launch<KA...> bind(dim3 grid, dim3 block, cudaStream_t s, void (*k)(KA...)) {
    return bound_launch<KA...>{grid, block, s, k};
}

template <typename T> static inline T shfl_from(T v, int src_lane) {
    static_assert(sizeof(T) <= 16, "shuffle of a value wider than 16 bytes");
    T r;
    shfl_exchange(&v, &r, sizeof(T), src_lane);
    return r;
}

} // namespace qv_emu

/* the CUDA C++ language, on the host */
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __forceinline__
#undef __launch_bounds__
#undef __noinline__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __constant__ static
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)

#define threadIdx (::qv_emu::thread_idx())
#define blockIdx (::qv_emu::g_dims.block_idx)
#define blockDim (::qv_emu::g_dims.block_dim)
#define gridDim (::qv_emu::g_dims.grid_dim)
#define warpSize 32

#define QV_LAUNCH(grid, block, stream, ...) ::qv_emu::bind((grid), (block), (stream), __VA_ARGS__)

static inline void __syncthreads(void) { ::qv_emu::sync_block(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
    (void)mask;
    ::qv_emu::sync_warp();
}
template <typename T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    (void)mask;
    const int lane = ::qv_emu::lane_linear() & 31;
    int src = lane ^ lane_mask;
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
    return ::qv_emu::shfl_from(v, src);
}
template <typename T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
    (void)mask;
    const int lane = ::qv_emu::lane_linear() & 31;
    int src = lane + (int)d;
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
    return ::qv_emu::shfl_from(v, src);
}
template <typename T>
static inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
    (void)mask;
    const int lane = ::qv_emu::lane_linear() & 31;
    int src = lane - (int)d;
    if (src < (lane & ~(width - 1))) src = lane;
    return ::qv_emu::shfl_from(v, src);
}
template <typename T>
static inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    (void)mask;
    const int lane = ::qv_emu::lane_linear() & 31;
    return ::qv_emu::shfl_from(v, (lane & ~(width - 1)) + (src_lane & (width - 1)));
}
template <typename T> static inline T __ldg(const T *p) { return *p; }
template <typename T> static inline T __ldcs(const T *p) { return *p; }
template <typename T> static inline void __stcs(T *p, T v) { *p = v; }
static inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}
static inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, sizeof(u));
    return u;
}
/* CUDA's integer min/max overloads */
template <typename A, typename B>
static inline typename std::common_type<A, B>::type min(A a, B b) {
    typedef typename std::common_type<A, B>::type T;
    return (T)a < (T)b ? (T)a : (T)b;
}
template <typename A, typename B>
static inline typename std::common_type<A, B>::type max(A a, B b) {
    typedef typename std::common_type<A, B>::type T;
    return (T)a > (T)b ? (T)a : (T)b;
}
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
/* one fiber runs at a time and fibers switch only at barriers: plain read-modify-write is
 * atomic here */
template <typename T> static inline T atomicAdd(T *p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}

#endif /* __cplusplus */
#endif /* QV_CUDA_EMU_H */
