/*
 * lora_cpu.c - segmented LoRA shrink/expand on the host (see lora_cpu.h).
 *
 * Work is cut into items that each own whole output elements: shrink items are token rows,
 * expand items are (token row, block of 128 outputs). Items are dealt to the pool's threads in
 * contiguous ranges. Each element's dot product runs in qv__lora_dot's fixed order, so results
 * are bitwise independent of batch composition and thread count.
 * What not: no fp16/bf16 adapters (the loader converts everything to F32).
 * Thread: the engine thread; the pool's workers only run the items.
 */
#include "cpu/lora_cpu.h"

#include <string.h>

#include "cpu/cpu_internal.h"

#define EXPAND_BLOCK 128

float qv__lora_dot(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    for (; i < n; i++) acc[i & 7] += a[i] * b[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

size_t qv__lora_tmp_floats(const qv__lora_seg *segs, int n_segs) {
    size_t n = 0;
    for (int s = 0; s < n_segs; s++) n += (size_t)segs[s].n * (size_t)segs[s].rank;
    return n;
}

typedef struct lora_task {
    const qv__lora_seg *segs;
    int n_segs;
    const float *x; /* shrink input */
    size_t ldx;
    int n_in;
    float *tmp_w;       /* shrink output */
    const float *tmp_r; /* expand input */
    int n_out;
    float *y;
    size_t ldy;
    int n_blocks;  /* expand: output blocks per row (1 for shrink) */
    long n_items;  /* rows * n_blocks */
} lora_task;

/* Finds the segment of global row `row` (rows numbered through the segments in order) and the
 * packed tmp offset of that row. Segments are few; a linear walk is cheap next to the dots. */
static int locate(const lora_task *t, long row, int *seg, size_t *tmp_off) {
    size_t off = 0;
    for (int s = 0; s < t->n_segs; s++) {
        if (row < t->segs[s].n) {
            *seg = s;
            *tmp_off = off + (size_t)row * (size_t)t->segs[s].rank;
            return (int)row;
        }
        row -= t->segs[s].n;
        off += (size_t)t->segs[s].n * (size_t)t->segs[s].rank;
    }
    return -1;
}

static void shrink_item(const lora_task *t, long item) {
    int s = 0;
    size_t off = 0;
    int r = locate(t, item, &s, &off);
    QV_ASSERT(r >= 0);
    const qv__lora_seg *g = &t->segs[s];
    const float *x = t->x + (size_t)(g->t0 + r) * t->ldx;
    float *out = t->tmp_w + off;
    for (int k = 0; k < g->rank; k++)
        out[k] = qv__lora_dot(x, g->a + (size_t)k * (size_t)t->n_in, t->n_in);
}

static void expand_item(const lora_task *t, long item) {
    int s = 0;
    size_t off = 0;
    long row = item / t->n_blocks;
    int blk = (int)(item % t->n_blocks);
    int r = locate(t, row, &s, &off);
    QV_ASSERT(r >= 0);
    const qv__lora_seg *g = &t->segs[s];
    const float *z = t->tmp_r + off;
    float *y = t->y + (size_t)(g->t0 + r) * t->ldy;
    int o1 = QV_MIN(t->n_out, (blk + 1) * EXPAND_BLOCK);
    for (int o = blk * EXPAND_BLOCK; o < o1; o++) {
        float d = qv__lora_dot(g->b + (size_t)o * (size_t)g->rank, z, g->rank);
        if (g->b_bias) d += g->b_bias[o];
        y[o] += g->scale * d;
    }
}

static void run_items(lora_task *t, int shrink, int part, int nth) {
    long per = (t->n_items + nth - 1) / nth;
    long i0 = (long)part * per, i1 = QV_MIN(t->n_items, i0 + per);
    for (long i = i0; i < i1; i++) {
        if (shrink)
            shrink_item(t, i);
        else
            expand_item(t, i);
    }
}

static void shrink_fn(void *arg, int part, int nth) { run_items(arg, 1, part, nth); }
static void expand_fn(void *arg, int part, int nth) { run_items(arg, 0, part, nth); }

static void dispatch(qv_backend *be, lora_task *t, qv__cpu_task_fn fn) {
    /* Only the CPU backend exposes a pool; its ctx is a qv__cpu_ctx. */
    qv__cpu_ctx *cx = (be && !be->iface->download) ? be->ctx : NULL;
    if (!cx || !cx->pool || cx->n_threads <= 1 || t->n_items < 2)
        fn(t, 0, 1);
    else
        qv__cpu_pool_run(cx->pool, fn, t);
}

static long total_rows(const qv__lora_seg *segs, int n_segs) {
    long n = 0;
    for (int s = 0; s < n_segs; s++) n += segs[s].n;
    return n;
}

void qv__lora_shrink(qv_backend *be, const qv__lora_seg *segs, int n_segs, const float *x,
                     size_t ldx, int n_in, float *tmp) {
    lora_task t = {.segs = segs, .n_segs = n_segs, .x = x, .ldx = ldx, .n_in = n_in,
                   .tmp_w = tmp, .n_blocks = 1, .n_items = total_rows(segs, n_segs)};
    if (t.n_items > 0) dispatch(be, &t, shrink_fn);
}

void qv__lora_expand(qv_backend *be, const qv__lora_seg *segs, int n_segs, const float *tmp,
                     int n_out, float *y, size_t ldy) {
    int nb = (n_out + EXPAND_BLOCK - 1) / EXPAND_BLOCK;
    lora_task t = {.segs = segs, .n_segs = n_segs, .tmp_r = tmp, .n_out = n_out, .y = y,
                   .ldy = ldy, .n_blocks = nb, .n_items = total_rows(segs, n_segs) * nb};
    if (t.n_items > 0) dispatch(be, &t, expand_fn);
}
