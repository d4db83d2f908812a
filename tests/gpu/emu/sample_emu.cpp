/* sample_emu.cpp - engine/cuda/sample.cu compiled by the host compiler for the CPU emulator
 * (tests/gpu/emu/cuda_emu.h is force-included by tests/CMakeLists.txt). */
#include "engine/cuda/sample.cu"
