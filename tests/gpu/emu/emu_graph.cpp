/*
 * emu_graph.cpp - CUDA graphs for the emulated gpu tests: cudaStreamBeginCapture starts
 * recording what is enqueued on that stream (kernel launches from cuda_emu.h, cudaMemcpyAsync
 * of fake_cudart.c, cublasGemmEx of fake_cublas.c) instead of running it; the graph is the list
 * of recorded steps, instantiation copies it, cudaGraphLaunch runs the steps in order. As on a
 * GPU, a replay reads memory (a copy's source, a kernel's inputs) when it runs, with the
 * arguments fixed at capture; a synchronous call on the capturing stream fails.
 * What not: one capture at a time, no graph updates, no cross-stream dependencies.
 */
#include <cuda_runtime_api.h>

#include <stdlib.h>
#include <string.h>

#include <functional>
#include <vector>

#include "cuda_emu.h"

typedef std::vector<std::function<void()>> step_list;

static step_list *g_rec; /* the capture under way, or NULL */
static cudaStream_t g_rec_stream;

extern "C" int qv_fake_capturing(cudaStream_t s) { return g_rec && s == g_rec_stream; }

extern "C" void qv_fake_record(void (*fn)(void *), const void *arg, size_t n) {
    std::vector<unsigned char> copy((const unsigned char *)arg, (const unsigned char *)arg + n);
    g_rec->push_back([fn, copy]() mutable { fn(copy.data()); });
}

namespace qv_emu {
bool capture(cudaStream_t s, const std::function<void()> &step) {
    if (!qv_fake_capturing(s)) return false;
    g_rec->push_back(step);
    return true;
}
} // namespace qv_emu

extern "C" cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode m) {
    (void)m;
    if (g_rec) return cudaErrorIllegalState;
    g_rec = new step_list();
    g_rec_stream = s;
    return cudaSuccess;
}

extern "C" cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
    if (!g_rec || s != g_rec_stream) {
        *g = NULL;
        return cudaErrorIllegalState;
    }
    *g = (cudaGraph_t)(void *)g_rec;
    g_rec = NULL;
    return cudaSuccess;
}

extern "C" cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g,
                                            unsigned long long flags) {
    (void)flags;
    *e = (cudaGraphExec_t)(void *)new step_list(*(step_list *)(void *)g);
    return cudaSuccess;
}

extern "C" cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    delete (step_list *)(void *)g;
    return cudaSuccess;
}

extern "C" cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
    delete (step_list *)(void *)e;
    return cudaSuccess;
}

extern "C" cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
    if (qv_fake_capturing(s)) return cudaErrorIllegalState;
    for (auto &step : *(step_list *)(void *)e)
        step();
    return cudaSuccess;
}
