/*
 * test_batch_invariance.c - a sequence's logits are the same alone or inside a mixed batch.
 *
 * 8 sequences with prompts of different lengths plus 4 teacher-forced decode tokens each are
 * run (a) one at a time, whole prompt then one token per step, on 1 thread, and (b) all
 * together on 2 threads with chunked prefill under a 16-token step budget (chunks of at most 5),
 * decode tokens of some sequences sharing steps with prefill chunks of others, page size 4, and
 * every page reused from earlier sequences (the pool is dirtied first). Logits at every
 * position from the last prompt token on must agree within 1e-5 (the backend contract makes
 * them bitwise equal; the maximum difference is printed).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>

#include "golden_util.h"
#include "test_util.h"

#define N_SEQ 8
#define N_DEC 4

static uint32_t rng = 12345;
static uint32_t next_rand(void) {
    rng = rng * 1664525u + 1013904223u;
    return rng >> 8;
}

typedef struct tseq {
    int32_t tokens[64];
    int n_prompt, n_total, n_done;
    float *want; /* (N_DEC + 1, V) solo logits at positions n_prompt-1 ... */
    float *got;
    int n_got;
    qv_kv_seq kv;
} tseq;

static void run_model(const char *rel) {
    golden_runner solo, bat;
    assert_int_equal(golden_open(&solo, qv_test_path(rel), 1, 64, 4, 64), 0);
    assert_int_equal(golden_open(&bat, qv_test_path(rel), 2, 64, 4, 16), 0);
    const int V = solo.m->cfg.n_vocab;
    static const int lens[N_SEQ] = {1, 23, 7, 2, 13, 5, 17, 9};
    tseq s[N_SEQ];
    memset(s, 0, sizeof(s));
    float *buf = malloc(sizeof(float) * (size_t)V * 64);
    for (int i = 0; i < N_SEQ; i++) {
        s[i].n_prompt = lens[i];
        s[i].n_total = lens[i] + N_DEC;
        for (int t = 0; t < s[i].n_total; t++)
            s[i].tokens[t] = (int32_t)(next_rand() % (uint32_t)V);
        s[i].want = malloc(sizeof(float) * (size_t)V * (N_DEC + 1));
        s[i].got = malloc(sizeof(float) * (size_t)V * (N_DEC + 1));
        /* (a) solo */
        qv_kv_seq kv = {0};
        assert_int_equal(golden_feed(&solo, &kv, s[i].tokens, s[i].n_prompt, 0, 0, s[i].want), 0);
        for (int d = 0; d < N_DEC; d++)
            assert_int_equal(golden_feed(&solo, &kv, &s[i].tokens[s[i].n_prompt + d], 1,
                                         s[i].n_prompt + d, 0, s[i].want + (size_t)(d + 1) * V),
                             0);
        qv_kv_seq_release(solo.kv, &kv);
    }
    /* Dirty every page of the batch pool with unrelated K/V, then release them for reuse. */
    {
        qv_kv_seq junk = {0};
        int32_t ids[16];
        for (int off = 0; off < 64 * 4 - 16; off += 16) {
            for (int t = 0; t < 16; t++)
                ids[t] = (int32_t)(next_rand() % (uint32_t)V);
            assert_int_equal(golden_feed(&bat, &junk, ids, 16, off, 0, buf), 0);
        }
        qv_kv_seq_release(bat.kv, &junk);
    }
    /* (b) mixed batches. */
    int32_t tok[16], pos[16], sq[16], li[16];
    const qv_kv_seq *seqs[N_SEQ];
    int owner[N_SEQ], start = 0, steps = 0;
    for (;;) {
        int n = 0, nb = 0, nl = 0;
        for (int k = 0; k < N_SEQ && n < 16; k++) {
            tseq *q = &s[(start + k) % N_SEQ];
            int pending = q->n_total - q->n_done;
            if (pending <= 0) continue;
            /* prefill in chunks of <= 5; decode tokens one per step */
            int chunk = q->n_done < q->n_prompt ? q->n_prompt - q->n_done : 1;
            if (chunk > 5) chunk = 5;
            if (chunk > 16 - n) chunk = 16 - n;
            assert_int_equal(qv_kv_seq_reserve(bat.kv, &q->kv, q->n_done + chunk), QV_OK);
            owner[nb] = (start + k) % N_SEQ;
            seqs[nb] = &q->kv;
            for (int t = 0; t < chunk; t++) {
                int p = q->n_done + t;
                tok[n] = q->tokens[p];
                pos[n] = p;
                sq[n] = nb;
                if (p >= q->n_prompt - 1) li[nl++] = n;
                n++;
            }
            nb++;
        }
        if (n == 0) break;
        qv_error err = {0};
        qv_batch b = {.n_tokens = n,
                      .tokens = tok,
                      .pos = pos,
                      .seq = sq,
                      .n_seqs = nb,
                      .seqs = seqs,
                      .n_logits = nl,
                      .logits_idx = li};
        assert_int_equal(qv_forward_run(bat.fwd, &b, buf, &err), QV_OK);
        for (int j = 0; j < nl; j++) {
            tseq *q = &s[owner[sq[li[j]]]];
            memcpy(q->got + (size_t)q->n_got * V, buf + (size_t)j * V, sizeof(float) * (size_t)V);
            q->n_got++;
        }
        for (int t = 0; t < n; t++)
            s[owner[sq[t]]].n_done++;
        start = (start + 3) % N_SEQ; /* rotate who goes first so chunk boundaries vary */
        steps++;
    }
    double worst = 0;
    for (int i = 0; i < N_SEQ; i++) {
        assert_int_equal(s[i].n_got, N_DEC + 1);
        for (int d = 0; d <= N_DEC; d++) {
            const float *w = s[i].want + (size_t)d * V, *g = s[i].got + (size_t)d * V;
            double e = qv_test_max_rel_err(g, w, (size_t)V);
            if (e > worst) worst = e;
            if (e > 1e-5) {
                qv_test_compare_f32("batch vs solo", g, w, (size_t)V, 0, 1e-5);
                fail_msg("%s seq %d (prompt %d) position %d: batch differs from solo by %.3g", rel,
                         i, s[i].n_prompt, s[i].n_prompt - 1 + d, e);
            }
        }
        qv_kv_seq_release(bat.kv, &s[i].kv);
        free(s[i].want);
        free(s[i].got);
    }
    printf("%s: %d mixed steps, worst batch-vs-solo difference %.3g\n", rel, steps, worst);
    free(buf);
    golden_close(&solo);
    golden_close(&bat);
}

static void test_tiny_llama_gqa_q4_1(void **state) {
    (void)state;
    run_model("tests/fixtures/models/tiny-llama-gqa.q4_1.gguf");
}

static void test_tiny_qwen2_hf(void **state) {
    (void)state;
    run_model("tests/fixtures/models/tiny-qwen2");
}

static void test_tiny_llama_f32(void **state) {
    (void)state;
    run_model("tests/fixtures/models/tiny-llama");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_llama_gqa_q4_1),
        cmocka_unit_test(test_tiny_qwen2_hf),
        cmocka_unit_test(test_tiny_llama_f32),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
