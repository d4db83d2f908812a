/*
 * test_sgmv_plan.c - validation and tmp packing of SGMV segment tables (engine/sgmv_plan.c):
 * packed offsets and launch bounds for plain and fused (several outputs) tables, empty
 * segments, and every refusal (rank range, rows outside the batch, missing weights, ldy,
 * overlapping rows of one output, too many segments).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "engine/sgmv_plan.h"

static float y1[64 * 8], y2[64 * 8];
static const uint16_t wa[4], wb[4];

static qv_sgmv_seg seg(int t0, int n, int rank, float *y, int n_out) {
    return (qv_sgmv_seg){.a = wa,
                         .b = wb,
                         .y = y,
                         .ldy = 8,
                         .t0 = t0,
                         .n = n,
                         .rank = rank,
                         .n_out = n_out,
                         .scale = 0.5f,
                         .reserved = 99};
}

static void test_layout_and_bounds(void **state) {
    (void)state;
    assert_int_equal(sizeof(qv_sgmv_seg), 64);
    qv_sgmv_seg s[5] = {seg(0, 3, 16, y1, 8), seg(3, 0, 256, y1, 8), seg(3, 5, 1, y1, 4),
                        /* fused: a second output over the same rows */
                        seg(0, 3, 7, y2, 6), seg(3, 5, 2, y2, 6)};
    qv_sgmv_plan p;
    qv_error err = {0};
    assert_int_equal(qv_sgmv_plan_build(s, 5, 8, &p, &err), QV_OK);
    assert_int_equal(p.n_segs, 5);
    assert_int_equal(p.max_n, 5);
    assert_int_equal(p.max_rank, 256);
    assert_int_equal(p.max_n_out, 8);
    assert_int_equal(s[0].tmp_off, 0);
    assert_int_equal(s[1].tmp_off, 48);
    assert_int_equal(s[2].tmp_off, 48);
    assert_int_equal(s[3].tmp_off, 53);
    assert_int_equal(s[4].tmp_off, 74);
    assert_int_equal(p.tmp_floats, 84);
    assert_int_equal(s[0].reserved, 0);
    /* no segments: an empty plan */
    assert_int_equal(qv_sgmv_plan_build(NULL, 0, 8, &p, &err), QV_OK);
    assert_int_equal(p.tmp_floats, 0);
    /* an empty segment needs no weights */
    qv_sgmv_seg e = seg(2, 0, 4, NULL, 8);
    e.a = NULL;
    assert_int_equal(qv_sgmv_plan_build(&e, 1, 8, &p, &err), QV_OK);
}

static void refuse(qv_sgmv_seg *s, int n, int n_tokens, const char *what) {
    qv_sgmv_plan p;
    qv_error err = {0};
    assert_int_equal(qv_sgmv_plan_build(s, n, n_tokens, &p, &err), QV_ERR_INVALID);
    assert_non_null(strstr(err.msg, what));
}

static void test_refusals(void **state) {
    (void)state;
    qv_sgmv_seg s[2];
    s[0] = seg(0, 2, 0, y1, 8);
    refuse(s, 1, 8, "rank 0");
    s[0] = seg(0, 2, 257, y1, 8);
    refuse(s, 1, 8, "rank 257");
    s[0] = seg(6, 3, 4, y1, 8);
    refuse(s, 1, 8, "outside");
    s[0] = seg(-1, 1, 4, y1, 8);
    refuse(s, 1, 8, "outside");
    s[0] = seg(0, 1, 4, y1, 8);
    s[0].b = NULL;
    refuse(s, 1, 8, "lacks");
    s[0] = seg(0, 1, 4, y1, 8);
    s[0].ldy = 4;
    refuse(s, 1, 8, "ldy");
    s[0] = seg(0, 4, 4, y1, 8);
    s[1] = seg(3, 2, 4, y1, 8);
    refuse(s, 2, 8, "same rows");
    /* the same rows of different outputs are fine */
    s[1] = seg(3, 2, 4, y2, 8);
    qv_sgmv_plan p;
    qv_error err = {0};
    assert_int_equal(qv_sgmv_plan_build(s, 2, 8, &p, &err), QV_OK);
    refuse(s, QV_SGMV_MAX_SEGS + 1, 8, "segments");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_and_bounds),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
