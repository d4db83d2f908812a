/*
 * test_tenant.c - tenants (server/tenant.c): --api-keys-file option parsing and agreement
 * between lines, the request and token buckets on a synthetic clock (refusals, their
 * Retry-After, refill, the token debt of generated tokens), the in-flight cap, undoing an
 * arrival, and the fair-share counters (weights, the lift of an idle tenant, the last idle
 * tenant's counter when nobody is busy). Admission order over HTTP: tests/server/test_tenants.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "server/tenant.h"

static char g_msg[256];

static int get(qv_tenants *ts, const char *name) {
    int t = qv_tenants_get(ts, name, g_msg, sizeof g_msg);
    assert_true(t > 0);
    return t;
}

static void opt(qv_tenants *ts, int t, const char *o) {
    assert_true(qv_tenants_option(ts, t, o, g_msg, sizeof g_msg));
}

static void bad_opt(qv_tenants *ts, int t, const char *o, const char *why) {
    g_msg[0] = '\0';
    assert_false(qv_tenants_option(ts, t, o, g_msg, sizeof g_msg));
    if (!strstr(g_msg, why)) fail_msg("'%s': message '%s' lacks '%s'", o, g_msg, why);
}

static void test_options(void **state) {
    (void)state;
    qv_tenants *ts = qv_tenants_create();
    assert_non_null(ts);
    assert_int_equal(qv_tenants_count(ts), 1);
    assert_string_equal(qv_tenants_name(ts, 0), "default");
    qv_tenant_policy p;
    qv_tenants_policy(ts, 0, &p);
    assert_true(p.priority_free);
    assert_true(p.weight == 1.0 && p.rpm == 0 && p.tpm == 0 && p.max_inflight == 0);

    int a = get(ts, "team-a");
    assert_int_equal(qv_tenants_get(ts, "team-a", g_msg, sizeof g_msg), a); /* same tenant */
    assert_int_equal(get(ts, "b.2_x"), a + 1);
    assert_int_equal(qv_tenants_get(ts, "", g_msg, sizeof g_msg), -1);
    assert_int_equal(qv_tenants_get(ts, "a b", g_msg, sizeof g_msg), -1);
    assert_int_equal(qv_tenants_get(ts, "a\"b", g_msg, sizeof g_msg), -1);
    assert_non_null(strstr(g_msg, "not a valid tenant name"));

    qv_tenants_policy(ts, a, &p);
    assert_false(p.priority_free); /* keys-file tenants: floor 0 */
    assert_int_equal(p.priority, 0);
    opt(ts, a, "weight=2.5");
    opt(ts, a, "rpm=120");
    opt(ts, a, "tpm=1000");
    opt(ts, a, "max_inflight=4");
    opt(ts, a, "priority=-3");
    opt(ts, a, "weight=2.5"); /* a second key line may repeat a value */
    qv_tenants_policy(ts, a, &p);
    assert_true(p.weight == 2.5 && p.rpm == 120 && p.tpm == 1000);
    assert_int_equal(p.max_inflight, 4);
    assert_int_equal(p.priority, -3);
    assert_false(p.priority_free);

    bad_opt(ts, a, "weight=3", "has weight=2.5 already");
    bad_opt(ts, a, "weight=0", "weight must be");
    bad_opt(ts, a + 1, "weight=-1", "weight must be");
    bad_opt(ts, a + 1, "weight=nan", "weight must be");
    bad_opt(ts, a + 1, "rpm=", "rate must be");
    bad_opt(ts, a + 1, "rpm=-1", "rate must be");
    bad_opt(ts, a + 1, "tpm=5x", "rate must be");
    bad_opt(ts, a + 1, "max_inflight=1.5", "max_inflight must be");
    bad_opt(ts, a + 1, "priority=0.5", "priority must be");
    bad_opt(ts, a + 1, "priority=2e9", "priority must be");
    bad_opt(ts, a + 1, "burst=3", "unknown option");
    bad_opt(ts, a + 1, "rpm", "unknown option");
    bad_opt(ts, 0, "rpm=5", "tenant 'default' has no limits");
    qv_tenants_destroy(ts);
}

static void test_table_full(void **state) {
    (void)state;
    qv_tenants *ts = qv_tenants_create();
    char name[32];
    for (int i = 1; i < QV_TENANT_MAX; i++) {
        snprintf(name, sizeof name, "t%d", i);
        assert_int_equal(qv_tenants_get(ts, name, g_msg, sizeof g_msg), i);
    }
    assert_int_equal(qv_tenants_get(ts, "one-more", g_msg, sizeof g_msg), -1);
    assert_non_null(strstr(g_msg, "more than"));
    assert_int_equal(qv_tenants_get(ts, "t7", g_msg, sizeof g_msg), 7); /* existing ones: fine */
    qv_tenants_destroy(ts);
}

static enum qv_tenant_refusal arrive(qv_tenants *ts, int t, int n, double now, int *ra) {
    *ra = -1;
    return qv_tenants_arrive(ts, t, n, now, ra, g_msg, sizeof g_msg);
}

static void test_request_rate(void **state) {
    (void)state;
    qv_tenants *ts = qv_tenants_create();
    int t = get(ts, "r");
    opt(ts, t, "rpm=2");
    int ra;
    const double t0 = 1000.0;
    /* a full bucket: two requests at once, then 30 s (one request's refill) to wait */
    assert_int_equal(arrive(ts, t, 5, t0, &ra), QV_TENANT_OK);
    assert_int_equal(arrive(ts, t, 5, t0 + 0.1, &ra), QV_TENANT_OK);
    assert_int_equal(arrive(ts, t, 5, t0 + 0.2, &ra), QV_TENANT_RATE);
    assert_int_equal(ra, 30); /* (1 - 0.2 * 2 / 60) * 30 s, rounded up */
    assert_non_null(strstr(g_msg, "2 requests per minute"));
    assert_int_equal(arrive(ts, t, 5, t0 + 29.0, &ra), QV_TENANT_RATE);
    assert_int_equal(ra, 1);
    assert_int_equal(arrive(ts, t, 5, t0 + 30.5, &ra), QV_TENANT_OK);
    assert_int_equal(arrive(ts, t, 5, t0 + 31, &ra), QV_TENANT_RATE);
    /* idle for an hour: the bucket holds one minute's allowance, not more */
    assert_int_equal(arrive(ts, t, 5, t0 + 3600, &ra), QV_TENANT_OK);
    assert_int_equal(arrive(ts, t, 5, t0 + 3600, &ra), QV_TENANT_OK);
    assert_int_equal(arrive(ts, t, 5, t0 + 3600, &ra), QV_TENANT_RATE);
    /* an arrival that never got queued gives its request back */
    assert_int_equal(arrive(ts, t, 5, t0 + 7200, &ra), QV_TENANT_OK);
    assert_int_equal(arrive(ts, t, 5, t0 + 7200, &ra), QV_TENANT_OK);
    qv_tenants_unarrive(ts, t, 5);
    assert_int_equal(arrive(ts, t, 5, t0 + 7200, &ra), QV_TENANT_OK);
    assert_int_equal(arrive(ts, t, 5, t0 + 7200, &ra), QV_TENANT_RATE);

    qv_tenant_stats st[4];
    assert_int_equal(qv_tenants_snapshot(ts, st, 4), 2);
    assert_string_equal(st[1].name, "r");
    assert_int_equal(st[1].requests, 7);
    assert_int_equal(st[1].refused[QV_TENANT_RATE], 5);
    assert_int_equal(st[1].prompt_tokens, 35);
    assert_int_equal(st[1].inflight, 7);
    /* a rate below one a minute: one request, then one every 1/rpm minutes */
    int slow = get(ts, "slow");
    opt(ts, slow, "rpm=0.5");
    assert_int_equal(arrive(ts, slow, 1, t0, &ra), QV_TENANT_OK);
    assert_int_equal(arrive(ts, slow, 1, t0 + 1, &ra), QV_TENANT_RATE);
    assert_int_equal(ra, 119);
    assert_int_equal(arrive(ts, slow, 1, t0 + 120, &ra), QV_TENANT_OK);
    /* the default tenant has no limits */
    for (int i = 0; i < 100; i++)
        assert_int_equal(arrive(ts, 0, 1000, t0, &ra), QV_TENANT_OK);
    qv_tenants_destroy(ts);
}

static void test_token_rate(void **state) {
    (void)state;
    qv_tenants *ts = qv_tenants_create();
    int t = get(ts, "tok");
    opt(ts, t, "tpm=60"); /* one token per second */
    int ra;
    const double t0 = 50.0;
    assert_int_equal(arrive(ts, t, 50, t0, &ra), QV_TENANT_OK); /* 10 left */
    /* a prompt larger than what is left is still taken: the bucket goes into debt */
    assert_int_equal(arrive(ts, t, 20, t0, &ra), QV_TENANT_OK); /* -10 */
    assert_int_equal(arrive(ts, t, 1, t0, &ra), QV_TENANT_TOKENS);
    assert_int_equal(ra, 11); /* back to one token */
    assert_non_null(strstr(g_msg, "60 tokens per minute"));
    assert_int_equal(arrive(ts, t, 1, t0 + 10.5, &ra), QV_TENANT_OK); /* 0.5 left, -0.5 after */
    /* generated tokens come out of the same bucket */
    assert_int_equal(arrive(ts, t, 1, t0 + 12, &ra), QV_TENANT_OK); /* 1 - 1 = 0 */
    qv_tenants_served(ts, t, 0, 30, t0 + 12);                       /* -30 */
    assert_int_equal(arrive(ts, t, 1, t0 + 12, &ra), QV_TENANT_TOKENS);
    assert_int_equal(ra, 31);
    assert_int_equal(arrive(ts, t, 1, t0 + 43.5, &ra), QV_TENANT_OK);
    qv_tenant_stats st[2];
    qv_tenants_snapshot(ts, st, 2);
    assert_int_equal(st[1].generation_tokens, 30);
    assert_int_equal(st[1].refused[QV_TENANT_TOKENS], 2);
    qv_tenants_destroy(ts);

    /* limits checked before tokenizing (arrive with 0 tokens), the prompt charged after */
    ts = qv_tenants_create();
    t = get(ts, "late");
    opt(ts, t, "tpm=60");
    assert_int_equal(arrive(ts, t, 0, 0, &ra), QV_TENANT_OK);
    qv_tenants_prompt(ts, t, 70); /* -10 */
    assert_int_equal(arrive(ts, t, 0, 0, &ra), QV_TENANT_TOKENS);
    assert_int_equal(ra, 11);
    qv_tenants_unarrive(ts, t, 70); /* the request never got queued: all of it back */
    assert_int_equal(arrive(ts, t, 0, 0, &ra), QV_TENANT_OK);
    qv_tenants_snapshot(ts, st, 2);
    assert_int_equal(st[1].prompt_tokens, 0);
    assert_int_equal(st[1].requests, 1);
    assert_int_equal(st[1].inflight, 1);
    qv_tenants_destroy(ts);

    /* generated tokens debit a bucket brought up to date first: a full bucket stores no more
     * than a minute, so time spent full is not credited against a later debit */
    ts = qv_tenants_create();
    t = get(ts, "big");
    opt(ts, t, "tpm=6000");
    assert_int_equal(arrive(ts, t, 10, 0, &ra), QV_TENANT_OK);  /* 5990 */
    qv_tenants_served(ts, t, 0, 6000, 0);                       /* -10 */
    assert_int_equal(arrive(ts, t, 10, 61, &ra), QV_TENANT_OK); /* 6000 - 10 = 5990 */
    qv_tenants_served(ts, t, 0, 5000, 61);                      /* 990 */
    qv_tenants_served(ts, t, 0, 5000, 300);                     /* full at 300 s: 1000 */
    assert_int_equal(arrive(ts, t, 10, 300, &ra), QV_TENANT_OK);
    qv_tenants_served(ts, t, 0, 6000, 300); /* -5010 */
    assert_int_equal(arrive(ts, t, 1, 301, &ra), QV_TENANT_TOKENS);
    assert_int_equal(ra, 50); /* (1 + 4910) / 100 per s, rounded up */
    qv_tenants_destroy(ts);
}

static void test_inflight(void **state) {
    (void)state;
    qv_tenants *ts = qv_tenants_create();
    int t = get(ts, "one-at-a-time");
    opt(ts, t, "max_inflight=2");
    int ra;
    assert_int_equal(arrive(ts, t, 3, 0, &ra), QV_TENANT_OK);
    assert_int_equal(arrive(ts, t, 3, 0, &ra), QV_TENANT_OK);
    assert_int_equal(arrive(ts, t, 3, 0, &ra), QV_TENANT_INFLIGHT);
    assert_int_equal(ra, 1);
    assert_non_null(strstr(g_msg, "2 requests in flight"));
    qv_tenants_leave(ts, t);
    assert_int_equal(arrive(ts, t, 3, 0, &ra), QV_TENANT_OK);
    qv_tenants_unarrive(ts, t, 3);
    assert_int_equal(arrive(ts, t, 3, 0, &ra), QV_TENANT_OK);
    assert_int_equal(arrive(ts, t, 3, 0, &ra), QV_TENANT_INFLIGHT);
    qv_tenant_stats st[2];
    qv_tenants_snapshot(ts, st, 2);
    assert_int_equal(st[1].inflight, 2);
    assert_int_equal(st[1].requests, 3);
    assert_int_equal(st[1].refused[QV_TENANT_INFLIGHT], 2);
    qv_tenants_destroy(ts);
}

static void test_fair_share_counters(void **state) {
    (void)state;
    qv_tenants *ts = qv_tenants_create();
    int a = get(ts, "a"), b = get(ts, "b"), c = get(ts, "c");
    opt(ts, b, "weight=2");
    /* prompt tokens count once, generated ones QV_TENANT_GEN_COST times, over the weight */
    qv_tenants_activate(ts, a);
    qv_tenants_served(ts, a, 10, 5, 0);
    assert_true(qv_tenants_vtc(ts, a) == 10 + 5 * QV_TENANT_GEN_COST);
    /* b arrives while a is busy: lifted to a's counter, then grows at half the rate */
    qv_tenants_activate(ts, b);
    assert_true(qv_tenants_vtc(ts, b) == 20);
    qv_tenants_served(ts, b, 10, 5, 0);
    assert_true(qv_tenants_vtc(ts, b) == 30);
    /* a second request of a busy tenant lifts nothing */
    qv_tenants_served(ts, a, 100, 0, 0);
    qv_tenants_activate(ts, b);
    assert_true(qv_tenants_vtc(ts, b) == 30);
    /* c arrives: lifted to the smallest busy counter (b's 30, not a's 120) */
    qv_tenants_activate(ts, c);
    assert_true(qv_tenants_vtc(ts, c) == 30);
    /* a counter above the busy ones is kept (it was served more) */
    qv_tenants_deactivate(ts, c);
    qv_tenants_served(ts, c, 500, 0, 0);
    qv_tenants_activate(ts, c);
    assert_true(qv_tenants_vtc(ts, c) == 530);
    /* everyone goes idle; the next arrival starts from the last idle tenant's counter */
    qv_tenants_deactivate(ts, c);
    qv_tenants_deactivate(ts, b);
    qv_tenants_deactivate(ts, b);
    qv_tenants_deactivate(ts, a); /* last to leave, at 120 */
    int d = get(ts, "d");
    qv_tenants_activate(ts, d);
    assert_true(qv_tenants_vtc(ts, d) == 120);
    qv_tenants_activate(ts, 0);
    assert_true(qv_tenants_vtc(ts, 0) == 120);
    qv_tenant_stats st[8];
    assert_int_equal(qv_tenants_snapshot(ts, st, 8), 5);
    assert_true(st[b].weight == 2.0 && st[b].vtc == 30.0);
    assert_int_equal(st[a].generation_tokens, 5);
    qv_tenants_destroy(ts);
}

/* A re-read keys file: policies move over by tenant name, indices and counters stay, removed
 * tenants get the default policy, buckets keep what is left within the new allowance. */
static void test_adopt(void **state) {
    (void)state;
    qv_tenants *ts = qv_tenants_create();
    int a = get(ts, "a"), b = get(ts, "b");
    opt(ts, a, "rpm=2");
    opt(ts, b, "weight=3");
    opt(ts, b, "max_inflight=1");
    int ra;
    assert_int_equal(arrive(ts, a, 5, 0, &ra), QV_TENANT_OK);
    assert_int_equal(arrive(ts, a, 5, 0, &ra), QV_TENANT_OK); /* a's bucket is empty */
    qv_tenants_activate(ts, b);
    qv_tenants_served(ts, b, 30, 0, 0); /* b's counter: 10 */

    qv_tenants *from = qv_tenants_create(); /* the new file: c (new), then a; b is gone */
    int fc = get(from, "c"), fa = get(from, "a");
    opt(from, fa, "rpm=60");
    opt(from, fc, "tpm=100");
    int map[QV_TENANT_MAX];
    assert_true(qv_tenants_adopt(ts, from, map, 0, g_msg, sizeof g_msg));
    assert_int_equal(map[0], 0);
    assert_int_equal(map[fa], a);
    assert_int_equal(map[fc], b + 1); /* added after the existing ones */
    assert_int_equal(qv_tenants_count(ts), 4);
    assert_string_equal(qv_tenants_name(ts, map[fc]), "c");
    qv_tenant_policy p;
    qv_tenants_policy(ts, a, &p);
    assert_true(p.rpm == 60);
    /* a's bucket kept what was left (empty): the new rate refills it, one request per s */
    assert_int_equal(arrive(ts, a, 5, 0, &ra), QV_TENANT_RATE);
    assert_int_equal(ra, 1);
    assert_int_equal(arrive(ts, a, 5, 1.0, &ra), QV_TENANT_OK);
    /* b: default policy now, counter and in-flight count kept */
    qv_tenants_policy(ts, b, &p);
    assert_true(p.weight == 1 && p.max_inflight == 0 && !p.priority_free && p.priority == 0);
    assert_true(qv_tenants_vtc(ts, b) == 10);
    /* c: a new limit starts with a full bucket */
    assert_int_equal(arrive(ts, map[fc], 100, 0, &ra), QV_TENANT_OK);
    assert_int_equal(arrive(ts, map[fc], 1, 0, &ra), QV_TENANT_TOKENS);
    qv_tenants_destroy(from);

    /* a file that would overflow the table changes nothing */
    qv_tenants *big = qv_tenants_create();
    char name[32];
    for (int i = 1; i < QV_TENANT_MAX; i++) {
        snprintf(name, sizeof name, "n%d", i);
        get(big, name);
    }
    opt(big, 1, "rpm=1");
    assert_false(qv_tenants_adopt(ts, big, map, 0, g_msg, sizeof g_msg));
    assert_non_null(strstr(g_msg, "more than"));
    assert_int_equal(qv_tenants_count(ts), 4);
    qv_tenants_policy(ts, a, &p);
    assert_true(p.rpm == 60);
    qv_tenants_destroy(big);
    qv_tenants_destroy(ts);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options),      cmocka_unit_test(test_table_full),
        cmocka_unit_test(test_request_rate), cmocka_unit_test(test_token_rate),
        cmocka_unit_test(test_inflight),     cmocka_unit_test(test_fair_share_counters),
        cmocka_unit_test(test_adopt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
