/*
 * launch.cuh - QV_LAUNCH(grid, block, stream, kernel)(args...): a kernel launch, written so
 * that the same source also runs on the CPU under tests/gpu/emu/cuda_emu.h, which defines its
 * own QV_LAUNCH (a <<< >>> launch is not C++ a host compiler accepts).
 */
#ifndef QV_CUDA_LAUNCH_CUH
#define QV_CUDA_LAUNCH_CUH

#ifndef QV_LAUNCH
#define QV_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<(grid), (block), 0, (stream)>>>
#endif

#endif
