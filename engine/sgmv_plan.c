/*
 * sgmv_plan.c - validation and tmp packing of an SGMV segment table (sgmv_plan.h).
 *
 * The overlap check sorts a copy of (y, t0, n) triples, so it costs O(S log S) for S segments
 * and works for fused tables (several projections, each its own y) as well as plain ones.
 * Thread: any.
 */
#include "sgmv_plan.h"

#include <stdlib.h>
#include <string.h>

typedef struct span {
    uintptr_t y;
    int32_t t0, n;
    int idx;
} span;

static int span_cmp(const void *pa, const void *pb) {
    const span *a = pa, *b = pb;
    if (a->y != b->y) return a->y < b->y ? -1 : 1;
    if (a->t0 != b->t0) return a->t0 < b->t0 ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

qv_status qv_sgmv_plan_build(qv_sgmv_seg *segs, int n_segs, int n_tokens, qv_sgmv_plan *plan,
                             qv_error *err) {
    memset(plan, 0, sizeof(*plan));
    if (n_segs < 0 || n_segs > QV_SGMV_MAX_SEGS)
        return qv_errorf(err, QV_ERR_INVALID, "sgmv: %d segments (limit %d)", n_segs,
                         QV_SGMV_MAX_SEGS);
    if (n_tokens < 0) return qv_errorf(err, QV_ERR_INVALID, "sgmv: %d tokens", n_tokens);
    if (n_segs > 0 && !segs) return qv_errorf(err, QV_ERR_INVALID, "sgmv: no segment table");
    size_t off = 0;
    for (int s = 0; s < n_segs; s++) {
        qv_sgmv_seg *g = &segs[s];
        if (g->rank < 1 || g->rank > QV_SGMV_MAX_RANK)
            return qv_errorf(err, QV_ERR_INVALID, "sgmv: segment %d has rank %d (1..%d)", s,
                             (int)g->rank, QV_SGMV_MAX_RANK);
        if (g->t0 < 0 || g->n < 0 || g->t0 > n_tokens || g->n > n_tokens - g->t0)
            return qv_errorf(err, QV_ERR_INVALID,
                             "sgmv: segment %d rows [%d, %d) outside the batch of %d", s,
                             (int)g->t0, (int)g->t0 + (int)g->n, n_tokens);
        if (g->n_out < 1 || g->ldy < g->n_out)
            return qv_errorf(err, QV_ERR_INVALID, "sgmv: segment %d has n_out %d, ldy %lld", s,
                             (int)g->n_out, (long long)g->ldy);
        if (g->n > 0 && (!g->a || !g->b || !g->y))
            return qv_errorf(err, QV_ERR_INVALID, "sgmv: segment %d lacks A, B or y", s);
        g->reserved = 0;
        g->tmp_off = (int64_t)off;
        off += (size_t)g->n * (size_t)g->rank;
        plan->max_n = QV_MAX(plan->max_n, (int)g->n);
        plan->max_rank = QV_MAX(plan->max_rank, (int)g->rank);
        plan->max_n_out = QV_MAX(plan->max_n_out, (int)g->n_out);
    }
    if (n_segs > 1) {
        span *sp = qv_malloc((size_t)n_segs * sizeof(span));
        if (!sp) return qv_errorf(err, QV_ERR_NOMEM, "sgmv: out of memory");
        int k = 0;
        for (int s = 0; s < n_segs; s++)
            if (segs[s].n > 0) sp[k++] = (span){(uintptr_t)segs[s].y, segs[s].t0, segs[s].n, s};
        qsort(sp, (size_t)k, sizeof(span), span_cmp);
        for (int i = 1; i < k; i++) {
            if (sp[i].y == sp[i - 1].y && sp[i].t0 < sp[i - 1].t0 + sp[i - 1].n) {
                int a = sp[i - 1].idx, b = sp[i].idx;
                qv_free(sp);
                return qv_errorf(err, QV_ERR_INVALID,
                                 "sgmv: segments %d and %d write the same rows of one output", a,
                                 b);
            }
        }
        qv_free(sp);
    }
    plan->n_segs = n_segs;
    plan->tmp_floats = off;
    return QV_OK;
}
