/*
 * cuda_emu.cpp - the block scheduler behind cuda_emu.h: every CUDA thread of a block is a
 * ucontext fiber; the scheduler resumes runnable fibers in thread order until each finishes or
 * waits at a barrier, then opens the barriers whose participants have all arrived (a block
 * barrier: every unfinished thread of the block; a warp barrier: every unfinished lane of the
 * warp). Nothing runnable and nothing to open is a deadlock (a barrier in divergent code),
 * reported with the kernel's shape before abort().
 * Under AddressSanitizer the stack switches are announced with the sanitizer's fiber API.
 * On x86-64 a fiber switch is six register pushes and a stack swap (qv_emu_switch below);
 * elsewhere it is swapcontext, which also makes a signal-mask system call per switch.
 */
#include "cuda_emu.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define QV_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define QV_EMU_ASAN 1
#endif
#endif
#ifdef QV_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__)
/* void qv_emu_switch(void **save_sp, void *to_sp): saves the callee-saved registers on the
 * current stack and its stack pointer in *save_sp, then resumes the stack to_sp (one saved by
 * this function or laid out by init_fiber). */
extern "C" void qv_emu_switch(void **save_sp, void *to_sp);
__asm__(".text\n"
        ".globl qv_emu_switch\n"
        ".type qv_emu_switch,@function\n"
        "qv_emu_switch:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
        "  ret\n"
        ".size qv_emu_switch, .-qv_emu_switch\n");
#define QV_EMU_ASM_SWITCH 1
#endif

namespace qv_emu {

launch_dims g_dims;

namespace {

enum fstate { RUN, AT_BLOCK, AT_WARP, DONE };

struct fiber {
#ifdef QV_EMU_ASM_SWITCH
    void *sp;
#else
    ucontext_t ctx;
#endif
    uint3 tid;
    int lin;
    fstate st;
    unsigned n_shfl; /* shuffles so far (selects the slot set) */
    void *stack;
#ifdef QV_EMU_ASAN
    void *fake_stack;
#endif
};

const size_t STACK_BYTES = 256 * 1024;
const int MAX_THREADS = 1024;

#ifdef QV_EMU_ASM_SWITCH
void *g_sched_sp;
#else
ucontext_t g_sched;
#endif
fiber g_fibers[MAX_THREADS];
fiber *g_cur;
const std::function<void()> *g_body;
unsigned char g_shfl[2][MAX_THREADS][16];
/* per warp: unfinished lanes and lanes waiting at a warp barrier; per block: unfinished
 * threads and threads waiting at the block barrier */
int g_warp_live[MAX_THREADS / 32], g_warp_at[MAX_THREADS / 32];
int g_live, g_at_block;
#ifdef QV_EMU_ASAN
const void *g_sched_bottom;
size_t g_sched_size;
void *g_sched_fake;
#endif

void *stack_of(int i) {
    if (!g_fibers[i].stack) {
        void *p = mmap(NULL, STACK_BYTES, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "cuda_emu: cannot map a fiber stack\n");
            abort();
        }
        g_fibers[i].stack = p;
    }
    return g_fibers[i].stack;
}

/* fiber -> scheduler, back when the scheduler resumes this fiber */
void yield_to_scheduler() {
    fiber *f = g_cur;
#ifdef QV_EMU_ASAN
    __sanitizer_start_switch_fiber(&f->fake_stack, g_sched_bottom, g_sched_size);
#endif
#ifdef QV_EMU_ASM_SWITCH
    qv_emu_switch(&f->sp, g_sched_sp);
#else
    swapcontext(&f->ctx, &g_sched);
#endif
#ifdef QV_EMU_ASAN
    __sanitizer_finish_switch_fiber(f->fake_stack, NULL, NULL);
#endif
}

void fiber_entry() {
#ifdef QV_EMU_ASAN
    __sanitizer_finish_switch_fiber(NULL, &g_sched_bottom, &g_sched_size);
#endif
    (*g_body)();
    g_cur->st = DONE;
    g_live--;
    g_warp_live[g_cur->lin >> 5]--;
#ifdef QV_EMU_ASAN
    __sanitizer_start_switch_fiber(NULL, g_sched_bottom, g_sched_size);
#endif
#ifdef QV_EMU_ASM_SWITCH
    void *dead;
    qv_emu_switch(&dead, g_sched_sp); /* never resumed */
    abort();
#endif
    /* returning resumes uc_link, the scheduler */
}

void resume(fiber *f) {
    g_cur = f;
#ifdef QV_EMU_ASAN
    __sanitizer_start_switch_fiber(&g_sched_fake, f->stack, STACK_BYTES);
#endif
#ifdef QV_EMU_ASM_SWITCH
    qv_emu_switch(&g_sched_sp, f->sp);
#else
    swapcontext(&g_sched, &f->ctx);
#endif
#ifdef QV_EMU_ASAN
    __sanitizer_finish_switch_fiber(g_sched_fake, NULL, NULL);
#endif
    g_cur = NULL;
}

/* getcontext returns twice in spirit: kept out of run_block's frame (-Wclobbered) */
__attribute__((noinline)) void init_fiber(int i) {
    fiber *f = &g_fibers[i];
    unsigned bx = g_dims.block_dim.x, by = g_dims.block_dim.y;
    f->lin = i;
    f->tid = make_uint3((unsigned)i % bx, ((unsigned)i / bx) % by, (unsigned)i / (bx * by));
    f->st = RUN;
    f->n_shfl = 0;
#ifdef QV_EMU_ASM_SWITCH
    /* a stack qv_emu_switch can resume: six zero registers, then fiber_entry as the return
     * address, leaving rsp = 8 (mod 16) at its entry as after a call */
    /* stack tops staggered by 64-byte lines so that the fibers' hot frames do not all fall in
     * the same cache sets */
    const size_t stagger = ((size_t)i * 64u * 7u) % 4096u;
    char *top = (char *)stack_of(i) + STACK_BYTES;
#ifdef QV_EMU_ASAN
    /* the last thread on this stack ended inside fiber_entry's frame, which never returns:
     * its redzones are still poisoned */
    __asan_unpoison_memory_region(top - 16384, 16384);
#endif
    void **sp = (void **)(top - 64 - stagger);
    for (int k = 0; k < 6; k++)
        sp[k] = NULL;
    sp[6] = (void *)fiber_entry;
    sp[7] = NULL;
    f->sp = sp;
#else
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = stack_of(i);
    f->ctx.uc_stack.ss_size = STACK_BYTES;
    f->ctx.uc_link = &g_sched;
    makecontext(&f->ctx, fiber_entry, 0);
#endif
}

void run_block(int n, const char *what) {
    for (int i = 0; i < n; i++)
        init_fiber(i);
    const int nw = (n + 31) / 32;
    for (int w = 0; w < nw; w++) {
        g_warp_live[w] = (w + 1) * 32 <= n ? 32 : n - w * 32;
        g_warp_at[w] = 0;
    }
    g_live = n;
    g_at_block = 0;
    while (g_live > 0) {
        int progress = 0;
        /* each warp runs until all its lanes wait at the block barrier or are done; its warp
         * barriers (shuffles) open as soon as every live lane of the warp has arrived */
        for (int w = 0; w < nw; w++) {
            const int lo = w * 32, hi = lo + 32 < n ? lo + 32 : n;
            for (;;) {
                int ran = 0;
                for (int i = lo; i < hi; i++) {
                    if (g_fibers[i].st != RUN) continue;
                    resume(&g_fibers[i]);
                    ran++;
                }
                progress += ran;
                if (g_warp_live[w] > 0 && g_warp_at[w] == g_warp_live[w]) {
                    for (int i = lo; i < hi; i++)
                        if (g_fibers[i].st == AT_WARP) g_fibers[i].st = RUN;
                    g_warp_at[w] = 0;
                    continue;
                }
                if (!ran) break;
            }
        }
        if (g_live > 0 && g_at_block == g_live) {
            for (int i = 0; i < n; i++)
                if (g_fibers[i].st == AT_BLOCK) g_fibers[i].st = RUN;
            g_at_block = 0;
            continue;
        }
        if (g_live > 0 && !progress) {
            fprintf(stderr,
                    "cuda_emu: deadlock in %s, block (%u,%u,%u) of grid (%u,%u,%u), %d threads: "
                    "a barrier some threads never reach\n",
                    what, g_dims.block_idx.x, g_dims.block_idx.y, g_dims.block_idx.z,
                    g_dims.grid_dim.x, g_dims.grid_dim.y, g_dims.grid_dim.z, n);
            abort();
        }
    }
}

} // namespace

const uint3 &thread_idx() { return g_cur->tid; }
int lane_linear() { return g_cur->lin; }

void sync_block() {
    g_cur->st = AT_BLOCK;
    g_at_block++;
    yield_to_scheduler();
}

void sync_warp() {
    g_cur->st = AT_WARP;
    g_warp_at[g_cur->lin >> 5]++;
    yield_to_scheduler();
}

void shfl_exchange(const void *v, void *out, size_t n, int src_lane) {
    /* two slot sets used alternately: a lane writes set p of its k-th shuffle only after the
     * barrier of its (k-1)-th, which every lane passes after reading set p at shuffle k-2, so
     * one barrier per shuffle suffices */
    fiber *f = g_cur;
    const int me = f->lin, p = f->n_shfl++ & 1;
    memcpy(g_shfl[p][me], v, n);
    sync_warp(); /* every lane has published */
    int src = (me & ~31) + src_lane;
    /* a lane past the block's end: real hardware leaves the result undefined. (A lane that has
     * already finished after this barrier still has its value in the slot.) */
    if (src >= (int)(g_dims.block_dim.x * g_dims.block_dim.y * g_dims.block_dim.z)) src = me;
    memcpy(out, g_shfl[p][src], n);
}

void run_grid(dim3 grid, dim3 block, const std::function<void()> &body, const char *what) {
    const unsigned long long nt = (unsigned long long)block.x * block.y * block.z;
    if (g_cur) {
        fprintf(stderr, "cuda_emu: a launch from inside a kernel\n");
        abort();
    }
    if (nt == 0 || nt > (unsigned long long)MAX_THREADS || block.z > 64 || grid.x == 0 ||
        grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu) {
        fprintf(stderr, "cuda_emu: invalid launch of %s: grid (%u,%u,%u) block (%u,%u,%u)\n", what,
                grid.x, grid.y, grid.z, block.x, block.y, block.z);
        abort();
    }
    const std::function<void()> *saved = g_body;
    g_body = &body;
    g_dims.grid_dim = grid;
    g_dims.block_dim = block;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                g_dims.block_idx = make_uint3(x, y, z);
                run_block((int)nt, what);
            }
    g_body = saved;
}

} // namespace qv_emu
