/* sgmv_emu.cpp - engine/cuda/sgmv.cu compiled by the host compiler for the CPU emulator
 * (tests/gpu/emu/cuda_emu.h is force-included by tests/CMakeLists.txt). */
#include "engine/cuda/sgmv.cu"
