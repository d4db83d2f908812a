/* kernels_emu.cpp - engine/cuda/cuda_kernels.cu compiled by the host compiler for the CPU
 * emulator (tests/gpu/emu/cuda_emu.h is force-included by tests/CMakeLists.txt). */
#include "engine/cuda/cuda_kernels.cu"
