/*
 * test_cuda_lora.c - adapters end to end on the CUDA backend (engine/cuda/lora_cuda.c through
 * forward.c): on tiny-llama-gqa with five PEFT LoRA fixtures (q/v rank 4; all seven projections
 * rank 8 with rsLoRA; rank/alpha patterns; MLP rank 16 stored as BF16; rank 1 stored as F16), a
 * PEFT IA3 fixture (k/v output and down_proj input scaling), a PEFT DoRA fixture (rank 4 on
 * k/v/o and the MLP; its o_proj and down_proj outputs leave the fused residual add) and the
 * three AdapterHub bottleneck fixtures (Pfeiffer, Houlsby, parallel), eleven sequences (no
 * adapter and one per adapter) are teacher-forced along the CPU backend's greedy tokens (the
 * CPU adapter path is the reference, itself checked against HF PEFT / AdapterHub by the adapter
 * golden tests):
 *   - alone on the GPU: logits within the bf16 tolerance of the CPU's, argmax equal except at
 *     CPU near ties;
 *   - all eight in mixed batches (prefill chunks next to other sequences' decode tokens, one
 *     segment per sequence, a segment without an adapter among them): each row within the bf16
 *     tolerance of the CPU and of the same sequence's solo GPU run (mixed-batch invariance).
 * The CPU phase also checks that each adapter moves the logits well beyond the tolerance (so a
 * lost or swapped adapter cannot pass), then skips (77) without a device. The same checks run
 * for bottleneck options no fixture has (LayerNorms, channel scaling, residual placements, every
 * activation), for two adaption prompts on tiny-llama (the PEFT fixture and a copy with other
 * gates), and for hand-made adaption-prompt and bottleneck adapters on a model with biases on
 * every projection. LoRA with lora_bias or an embedding LoRA is refused on the GPU with
 * QV_ERR_UNSUPPORTED naming it.
 * CUDA graphs and adapter mixes: a decode batch whose adapters change every step replays the
 * recorded graph (the segment tables are staged device memory) and equals an eager run.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>

#include "adapters/adapters.h"
#ifdef QV_HAVE_CUDA
#include "engine/cuda/backend_cuda.h"
#include "engine/cuda/lora_cuda.h"
#endif
#include "gpu_util.h"
#include "test_util.h"

#define MODEL "tests/fixtures/models/tiny-llama-gqa"
#define AD_DIR "tests/fixtures/adapters/tiny-llama-gqa/"
#define N_SEQ 11
#define N_AD (N_SEQ - 1)
#define STEPS 12
#define PAGE 4
#define TOL_CPU 5e-2
#define TOL_SELF 1e-2
#define MIX_MAX (N_SEQ * 5) /* tokens of a mixed batch: a chunk of <= 5 per sequence */

typedef struct seq {
    const qv_adapter *ad;
    int n_prompt;
    int32_t toks[64];
    float *want; /* (STEPS, V) CPU logits */
    float *solo; /* (STEPS, V) CUDA solo logits */
    qv_kv_seq kv;
    int n_done;
} seq;

static seq S[N_SEQ];
static qv_adapter *ads[N_AD];
static int V;

/* One forward of one or more sequences; segs: one per batch sequence, in order. */
static int feed(gpu_runner *r, const qv_kv_seq *const *seqs, const qv_adapter *const *seg_ad,
                const int32_t *seg_start, int n_seqs, const int32_t *tok, const int32_t *pos,
                const int32_t *sq, int n, const int32_t *li, int nl, float *logits, qv_error *err) {
    bool any = false;
    for (int s = 0; s < n_seqs; s++)
        any |= seg_ad[s] != NULL;
    qv_batch b = {.n_tokens = n,
                  .tokens = tok,
                  .pos = pos,
                  .seq = sq,
                  .n_seqs = n_seqs,
                  .seqs = seqs,
                  .n_logits = nl,
                  .logits_idx = li,
                  .n_segs = any ? n_seqs : 0,
                  .seg_start = seg_start,
                  .seg_adapter = (const struct qv_adapter *const *)seg_ad};
    return qv_forward_run(r->fwd, &b, logits, err) == QV_OK ? 0 : -1;
}

/* Runs sequence i alone, teacher-forced along toks (or greedy when record != 0, filling toks),
 * with adapter `ad`, storing STEPS logits rows into out. */
static void run_solo(gpu_runner *r, int i, const qv_adapter *ad, int record, float *out) {
    seq *q = &S[i];
    qv_kv_seq kv = {0};
    const qv_kv_seq *seqs[1] = {&kv};
    const qv_adapter *sa[1] = {ad};
    int32_t tok[64], pos[64], sq[64], li[1], ss[2];
    int n_in = q->n_prompt, p0 = 0;
    qv_error err = {0};
    for (int st = 0; st < STEPS; st++) {
        assert_int_equal(qv_kv_seq_reserve(r->kv, &kv, p0 + n_in), QV_OK);
        for (int t = 0; t < n_in; t++)
            tok[t] = q->toks[p0 + t], pos[t] = p0 + t, sq[t] = 0;
        li[0] = n_in - 1;
        ss[0] = 0, ss[1] = n_in;
        if (feed(r, seqs, sa, ss, 1, tok, pos, sq, n_in, li, 1, out + (size_t)st * V, &err))
            fail_msg("seq %d step %d on %s: %s", i, st, r->on_cuda ? "cuda" : "cpu", err.msg);
        if (record) q->toks[q->n_prompt + st] = gpu_argmax(out + (size_t)st * V, V, NULL);
        p0 += n_in;
        n_in = 1;
    }
    qv_kv_seq_release(r->kv, &kv);
}

/* Logits error of one row (relative to the row's largest |want|) and the near-tie argmax rule.
 * Returns failures. */
static int check_row(const char *what, int i, int st, const float *got, const float *want,
                     int32_t tok, double tol, double *worst) {
    double e = qv_test_max_rel_err(got, want, (size_t)V);
    if (e > *worst) *worst = e;
    int fails = 0;
    if (!(e <= tol)) {
        qv_test_compare_f32(what, got, want, (size_t)V, 0, tol);
        fprintf(stderr, "%s seq %d step %d: logits error %.3g > %.3g\n", what, i, st, e, tol);
        fails++;
    }
    int g = gpu_argmax(got, V, NULL);
    if (g != tok) {
        float gap;
        (void)gpu_argmax(want, V, &gap);
        double maxabs = 0;
        for (int k = 0; k < V; k++)
            maxabs = fmax(maxabs, fabs((double)got[k] - (double)want[k]));
        if ((double)gap > 2.0 * maxabs) {
            fprintf(stderr, "%s seq %d step %d: token %d != %d (gap %.3g, max |err| %.3g)\n", what,
                    i, st, g, tok, (double)gap, maxabs);
            fails++;
        } else {
            printf("%s seq %d step %d: near tie (gap %.3g)\n", what, i, st, (double)gap);
        }
    }
    return fails;
}

static const char *ad_names[N_AD] = {"lora_qv_r4",    "lora_all_r8_rslora",
                                     "lora_patterns", "lora_r16_mlp_bf16",
                                     "lora_r1_f16",   "ia3",
                                     "dora",          "seq_bn",
                                     "double_seq_bn", "par_bn"};

/* Loads the adapter fixtures of ad_names into ads[] for model m. */
static void load_adapters(const qv_model *m) {
    qv_error err = {0};
    for (int a = 0; a < N_AD; a++) {
        char dir[256];
        snprintf(dir, sizeof dir, "%s%s", AD_DIR, ad_names[a]);
        if (qv_adapter_load(qv_test_path(dir), m, NULL, &ads[a], &err) != QV_OK)
            fail_msg("%s: %s", ad_names[a], err.msg);
    }
}

/* Sequence 0 (no adapter) and one sequence per adapter of list[0..n_ad) on `model`, as the
 * file comment says: CPU reference and effect check, GPU solo, GPU mixed batches. */
static void suite(const char *what, const char *model, qv_adapter *const *list,
                  const char *const *names, int n_ad, const int *lens, uint32_t rng) {
    const int n_seq = n_ad + 1;
    QV_ASSERT(n_seq <= N_SEQ);
    gpu_runner cpu, cu;
    const int n_pages = n_seq * (64 / PAGE + 2) + 8;
    assert_int_equal(gpu_runner_open(&cpu, qv_test_path(model), 0, n_pages, PAGE, 32), 0);
    V = cpu.m->cfg.n_vocab;
    qv_error err = {0};
    float *base = malloc(sizeof(float) * (size_t)V * STEPS);
    for (int i = 0; i < n_seq; i++) {
        memset(&S[i], 0, sizeof(S[i]));
        S[i].ad = i ? list[i - 1] : NULL;
        S[i].n_prompt = lens[i];
        for (int t = 0; t < lens[i]; t++)
            S[i].toks[t] = (int32_t)(((uint32_t)((gpu_randf(&rng) + 1.0f) * 1e6f)) % (uint32_t)V);
        S[i].want = malloc(sizeof(float) * (size_t)V * STEPS);
        S[i].solo = malloc(sizeof(float) * (size_t)V * STEPS);
        run_solo(&cpu, i, S[i].ad, 1, S[i].want);
        if (!S[i].ad) continue;
        /* the adapter must matter: the base model on the same tokens differs a lot */
        run_solo(&cpu, i, NULL, 0, base);
        double effect = 0;
        for (int st = 0; st < STEPS; st++)
            effect = fmax(effect, qv_test_max_rel_err(base + (size_t)st * V,
                                                      S[i].want + (size_t)st * V, (size_t)V));
        printf("%s: %s: largest logits change over the base %.3g (tolerance %.3g)\n", what,
               names[i - 1], effect, TOL_CPU);
        if (!(effect > 3 * TOL_CPU)) fail_msg("%s: too weak to test with", names[i - 1]);
    }
    free(base);
    gpu_runner_close(&cpu); /* the adapters hold no pointer into the model */

    gpu_require_device(); /* exits 77 without one */
    assert_int_equal(gpu_runner_open(&cu, qv_test_path(model), 1, n_pages, PAGE, MIX_MAX), 0);
    int fails = 0;
    double worst_solo = 0, worst_mixed_cpu = 0, worst_mixed_self = 0;
    for (int i = 0; i < n_seq; i++) {
        run_solo(&cu, i, S[i].ad, 0, S[i].solo);
        for (int st = 0; st < STEPS; st++)
            fails +=
                check_row("solo", i, st, S[i].solo + (size_t)st * V, S[i].want + (size_t)st * V,
                          S[i].toks[S[i].n_prompt + st], TOL_CPU, &worst_solo);
    }
    /* mixed batches: every unfinished sequence contributes a prefill chunk (<= 5) or a token */
    float *buf = malloc(sizeof(float) * (size_t)V * MIX_MAX);
    int32_t tok[MIX_MAX], pos[MIX_MAX], sq[MIX_MAX], li[MIX_MAX], ss[N_SEQ + 1];
    int steps = 0;
    while (!fails) {
        int n = 0, nb = 0, nl = 0, owner[N_SEQ], lrow[MIX_MAX];
        const qv_kv_seq *seqs[N_SEQ];
        const qv_adapter *sa[N_SEQ];
        for (int k = 0; k < n_seq; k++) {
            int i = (k + steps) % n_seq;
            seq *q = &S[i];
            if (q->n_done >= q->n_prompt + STEPS - 1) continue;
            int chunk = q->n_done < q->n_prompt ? QV_MIN(5, q->n_prompt - q->n_done) : 1;
            assert_int_equal(qv_kv_seq_reserve(cu.kv, &q->kv, q->n_done + chunk), QV_OK);
            owner[nb] = i;
            seqs[nb] = &q->kv;
            sa[nb] = q->ad;
            ss[nb] = n;
            for (int t = 0; t < chunk; t++) {
                int p = q->n_done + t;
                tok[n] = q->toks[p], pos[n] = p, sq[n] = nb;
                if (p >= q->n_prompt - 1) {
                    lrow[nl] = p - (q->n_prompt - 1);
                    li[nl++] = n;
                }
                n++;
            }
            nb++;
        }
        if (n == 0) break;
        ss[nb] = n;
        if (feed(&cu, seqs, sa, ss, nb, tok, pos, sq, n, li, nl, buf, &err))
            fail_msg("mixed step %d: %s", steps, err.msg);
        for (int j = 0; j < nl; j++) {
            int i = owner[sq[li[j]]], st = lrow[j];
            int32_t want_tok = S[i].toks[S[i].n_prompt + st];
            fails += check_row("mixed vs cpu", i, st, buf + (size_t)j * V,
                               S[i].want + (size_t)st * V, want_tok, TOL_CPU, &worst_mixed_cpu);
            /* against the solo GPU run, whose own argmax is the reference token */
            const float *solo_row = S[i].solo + (size_t)st * V;
            fails += check_row("mixed vs solo", i, st, buf + (size_t)j * V, solo_row,
                               gpu_argmax(solo_row, V, NULL), TOL_SELF, &worst_mixed_self);
        }
        for (int t = 0; t < n; t++)
            S[owner[sq[t]]].n_done++;
        steps++;
    }
    printf("%s: worst logits error solo vs cpu %.3g, mixed vs cpu %.3g, mixed vs solo %.3g "
           "(%d mixed batches), %d failures\n",
           what, worst_solo, worst_mixed_cpu, worst_mixed_self, steps, fails);
    for (int i = 0; i < n_seq; i++) {
        qv_kv_seq_release(cu.kv, &S[i].kv);
        free(S[i].want);
        free(S[i].solo);
    }
    free(buf);
    gpu_runner_close(&cu);
    if (fails) fail_msg("%s: %d failures", what, fails);
}

static void test_lora_end_to_end(void **state) {
    (void)state;
    gpu_runner cpu;
    assert_int_equal(gpu_runner_open(&cpu, qv_test_path(MODEL), 0, 16, PAGE, 8), 0);
    load_adapters(cpu.m);
    gpu_runner_close(&cpu);
    static const int lens[N_SEQ] = {4, 9, 6, 13, 7, 3, 8, 5, 11, 2, 6};
    suite("cuda adapters", MODEL, ads, ad_names, N_AD, lens, 4242);
    for (int a = 0; a < N_AD; a++)
        qv_adapter_free(ads[a]);
}

/* n random floats, offset + spread * U(-1, 1), owned by the caller. */
static float *rand_vec(size_t n, float offset, float spread, uint32_t *rng) {
    float *v = malloc(n * sizeof(float));
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = offset + spread * gpu_randf(rng);
    return v;
}

#define MAX_OWNED 256
static float *owned[MAX_OWNED];
static int n_owned;
static float *own_vec(size_t n, float offset, float spread, uint32_t *rng) {
    assert_true(n_owned < MAX_OWNED);
    return owned[n_owned++] = rand_vec(n, offset, spread, rng);
}
static void free_owned(void) {
    for (int i = 0; i < n_owned; i++)
        free(owned[i]);
    n_owned = 0;
}

/* Bottleneck options no AdapterHub fixture uses (the CPU bottleneck path, checked against
 * AdapterHub on the seq_bn / double_seq_bn / par_bn fixtures, is the reference): the fixtures'
 * weights with LayerNorms before and after (random affine), the residual taken after the
 * LayerNorm or before it, LN(u + residual), channel scaling, original_ln_before /
 * original_ln_after switched, and the other activations. */
static void test_bottleneck_variants(void **state) {
    (void)state;
    enum { NV = 5 };
    static const char *names[NV] = {
        "seq_bn ln_before+ln_after gelu", "seq_bn ln_after(u+res) channel tanh orig_ln_before",
        "seq_bn res_after_ln no orig_ln_after sigmoid", "par_bn ln_after gelu_tanh channel",
        "double_seq_bn ln_before leaky_relu, identity"};
    static const char *src[NV] = {"seq_bn", "seq_bn", "seq_bn", "par_bn", "double_seq_bn"};
    gpu_runner cpu;
    assert_int_equal(gpu_runner_open(&cpu, qv_test_path(MODEL), 0, 16, PAGE, 8), 0);
    const int dim = cpu.m->cfg.dim;
    qv_adapter *vs[NV];
    uint32_t rng = 1234;
    for (int a = 0; a < NV; a++) {
        char dir[256];
        qv_error err = {0};
        snprintf(dir, sizeof dir, "%s%s", AD_DIR, src[a]);
        if (qv_adapter_load(qv_test_path(dir), cpu.m, NULL, &vs[a], &err) != QV_OK)
            fail_msg("%s: %s", src[a], err.msg);
        qv_adapter *ad = vs[a];
        for (int l = 0; l < ad->n_layers; l++) {
            qv_bn_unit *us[2] = {&ad->layers[l].bn_attn, &ad->layers[l].bn_ffn};
            for (int w = 0; w < 2; w++) {
                qv_bn_unit *u = us[w];
                if (u->d <= 0) continue;
                const bool lnb = a == 0 || a == 4, lna = a <= 1 || a == 3, ch = a == 1 || a == 3;
                if (lnb) {
                    u->ln_before_w = own_vec((size_t)dim, 1.0f, 0.3f, &rng);
                    u->ln_before_b = own_vec((size_t)dim, 0.0f, 0.2f, &rng);
                }
                if (lna) {
                    u->ln_after_w = own_vec((size_t)dim, 1.0f, 0.3f, &rng);
                    u->ln_after_b = own_vec((size_t)dim, 0.0f, 0.2f, &rng);
                }
                if (ch) u->scaling_ch = own_vec((size_t)dim, 1.0f, 0.5f, &rng);
                if (a == 4 && l % 2) u->ln_before_w = u->ln_before_b = NULL; /* per unit */
            }
        }
        ad->bn_ln_before = a == 0 || a == 4;
        ad->bn_ln_after = a <= 1 || a == 3;
        switch (a) {
        case 0: ad->bn_act = QV_BN_ACT_GELU; break;
        case 1:
            ad->bn_act = QV_BN_ACT_TANH;
            ad->bn_adapter_residual_before_ln = true;
            ad->bn_original_ln_before = !ad->bn_original_ln_before;
            break;
        case 2:
            ad->bn_act = QV_BN_ACT_SIGMOID;
            ad->bn_residual = QV_BN_RES_AFTER_LN;
            ad->bn_original_ln_before = true;
            ad->bn_original_ln_after = false;
            break;
        case 3: ad->bn_act = QV_BN_ACT_GELU_TANH; break;
        case 4: ad->bn_act = QV_BN_ACT_LEAKY_RELU; break;
        }
    }
    gpu_runner_close(&cpu);
    static const int lens[NV + 1] = {5, 3, 8, 4, 6, 7};
    suite("cuda bottleneck variants", MODEL, vs, names, NV, lens, 99);
    vs[4]->bn_act = QV_BN_ACT_IDENTITY; /* the last activation, alone */
    static const char *last[1] = {"double_seq_bn ln_before identity"};
    suite("cuda bottleneck identity", MODEL, &vs[4], last, 1, lens, 98);
    for (int a = 0; a < NV; a++) {
        for (int l = 0; l < vs[a]->n_layers; l++) {
            qv_bn_unit *us[2] = {&vs[a]->layers[l].bn_attn, &vs[a]->layers[l].bn_ffn};
            for (int w = 0; w < 2; w++)
                us[w]->ln_before_w = us[w]->ln_before_b = us[w]->ln_after_w = us[w]->ln_after_b =
                    us[w]->scaling_ch = NULL;
        }
        qv_adapter_free(vs[a]);
    }
    free_owned();
}

/* Adaption prompts (PEFT LLaMA-Adapter) on tiny-llama: the PEFT fixture, and a second adapter
 * from the same files with other gates (negated and doubled per layer), so that two prompt
 * adapters share batches. */
static void test_adaption_prompt(void **state) {
    (void)state;
    const char *model = "tests/fixtures/models/tiny-llama";
    gpu_runner cpu;
    assert_int_equal(gpu_runner_open(&cpu, qv_test_path(model), 0, 16, PAGE, 8), 0);
    qv_adapter *ap[2];
    for (int a = 0; a < 2; a++) {
        qv_error err = {0};
        if (qv_adapter_load(qv_test_path("tests/fixtures/adapters/tiny-llama/adaption_prompt"),
                            cpu.m, NULL, &ap[a], &err) != QV_OK)
            fail_msg("adaption_prompt: %s", err.msg);
    }
    for (int l = 0; l < ap[1]->ap_n_layers; l++)
        ap[1]->ap_gate[l] *= l % 2 ? 2.0f : -1.5f;
    gpu_runner_close(&cpu);
    static const char *names[2] = {"adaption_prompt", "adaption_prompt, other gates"};
    static const int lens[3] = {6, 9, 4};
    suite("cuda adaption prompt", model, ap, names, 2, lens, 31);
    qv_adapter_free(ap[0]);
    qv_adapter_free(ap[1]);
}

/* A model with biases on every projection (tests/fixtures/formats/llama_bias: q/k/v/o and MLP
 * biases, n_ff == dim) and hand-made adapters: an adaption prompt over both layers (its keys and
 * values take the k/v biases; the o_proj bias counts twice, as PEFT computes it) and a bottleneck
 * adapter of size 64 (= n_ff, the largest the CUDA kernel takes here) on both sub-blocks. */
static void test_biased_model(void **state) {
    (void)state;
    const char *model = "tests/fixtures/formats/llama_bias";
    gpu_runner cpu;
    assert_int_equal(gpu_runner_open(&cpu, qv_test_path(model), 0, 16, PAGE, 8), 0);
    const qv_model_config *c = &cpu.m->cfg;
    qv_model_config cfg = *c;
    gpu_runner_close(&cpu);
    uint32_t rng = 555;
    qv_adapter *ad[2];
    for (int a = 0; a < 2; a++) {
        ad[a] = calloc(1, sizeof(qv_adapter));
        assert_non_null(ad[a]);
        ad[a]->n_layers = cfg.n_layers;
        ad[a]->dim = cfg.dim;
        ad[a]->n_vocab = cfg.n_vocab;
        ad[a]->n_kv_heads = cfg.n_kv_heads;
        ad[a]->head_dim = cfg.head_dim;
        ad[a]->layers = calloc((size_t)cfg.n_layers, sizeof(qv_adapter_layer));
        assert_non_null(ad[a]->layers);
    }
    qv_adapter *p = ad[0];
    p->kind = QV_ADAPTER_ADAPTION_PROMPT;
    p->ap_n_layers = cfg.n_layers;
    p->ap_first_layer = 0;
    p->ap_len = 7;
    p->ap_prompt = own_vec((size_t)cfg.n_layers * 7u * (size_t)cfg.dim, 0.0f, 3.0f, &rng);
    p->ap_gate = own_vec((size_t)cfg.n_layers, 0.0f, 2.0f, &rng);
    qv_adapter *bn = ad[1];
    bn->kind = QV_ADAPTER_BOTTLENECK;
    bn->bn_act = QV_BN_ACT_SILU;
    bn->bn_original_ln_after = true;
    bn->bn_residual = QV_BN_RES_BEFORE_LN;
    const int d = cfg.n_ff;
    for (int l = 0; l < cfg.n_layers; l++) {
        qv_bn_unit *us[2] = {&bn->layers[l].bn_attn, &bn->layers[l].bn_ffn};
        for (int w = 0; w < 2; w++) {
            qv_bn_unit *u = us[w];
            u->d = d;
            u->down_w = own_vec((size_t)d * (size_t)cfg.dim, 0.0f, 0.3f, &rng);
            u->down_b = own_vec((size_t)d, 0.0f, 0.1f, &rng);
            u->up_w = own_vec((size_t)d * (size_t)cfg.dim, 0.0f, 0.3f, &rng);
            u->up_b = own_vec((size_t)cfg.dim, 0.0f, 0.1f, &rng);
            u->scaling = 1.0f;
        }
    }
    static const char *names[2] = {"hand-made adaption prompt", "hand-made bottleneck d=n_ff"};
    static const int lens[3] = {5, 8, 3};
    suite("cuda adapters on a biased model", model, ad, names, 2, lens, 77);
    for (int a = 0; a < 2; a++) {
        free(ad[a]->layers);
        free(ad[a]);
    }
    free_owned();
}

/* Kinds and features the CUDA path does not run are refused with a message naming them. */
static void test_refusals(void **state) {
    (void)state;
    gpu_require_device();
    gpu_runner cu;
    assert_int_equal(gpu_runner_open(&cu, qv_test_path(MODEL), 1, 16, PAGE, 8), 0);
    static const char *names[2] = {"lora_embed_lm_head", "lora_bias"};
    static const char *want[2] = {"embedding LoRA", "lora_bias"};
    for (int a = 0; a < 2; a++) {
        char dir[256];
        snprintf(dir, sizeof dir, "%s%s", AD_DIR, names[a]);
        qv_adapter *ad = NULL;
        qv_error err = {0};
        if (qv_adapter_load(qv_test_path(dir), cu.m, NULL, &ad, &err) != QV_OK)
            fail_msg("%s: %s", names[a], err.msg);
        qv_kv_seq kv = {0};
        assert_int_equal(qv_kv_seq_reserve(cu.kv, &kv, 2), QV_OK);
        const qv_kv_seq *seqs[1] = {&kv};
        const qv_adapter *sa[1] = {ad};
        int32_t tok[2] = {5, 6}, pos[2] = {0, 1}, sq[2] = {0, 0}, li[1] = {1}, ss[2] = {0, 2};
        float *logits = malloc(sizeof(float) * (size_t)cu.m->cfg.n_vocab);
        V = cu.m->cfg.n_vocab;
        assert_int_not_equal(feed(&cu, seqs, sa, ss, 1, tok, pos, sq, 2, li, 1, logits, &err), 0);
        assert_int_equal(err.status, QV_ERR_UNSUPPORTED);
        printf("%s refused: %s\n", names[a], err.msg);
        assert_non_null(strstr(err.msg, want[a]));
        /* the backend is still usable: the base model runs */
        const qv_adapter *none[1] = {NULL};
        assert_int_equal(feed(&cu, seqs, none, ss, 1, tok, pos, sq, 2, li, 1, logits, &err), 0);
#ifdef QV_HAVE_CUDA
        /* prefetch refuses it the same way */
        qv_cuda_lora_rt *rt = NULL;
        assert_int_equal(qv_cuda_lora_rt_create(cu.m, cu.be, 8, (size_t)4 << 20, &rt, &err), QV_OK);
        assert_int_equal(qv_cuda_lora_rt_prefetch(rt, ad, &err), QV_ERR_UNSUPPORTED);
        qv_adapter *ok = NULL;
        assert_int_equal(qv_adapter_load(qv_test_path(AD_DIR "lora_qv_r4"), cu.m, NULL, &ok, &err),
                         QV_OK);
        assert_int_equal(qv_cuda_lora_rt_prefetch(rt, ok, &err), QV_OK);
        assert_int_equal(qv_cuda_lora_rt_prefetch(rt, ok, &err), QV_OK); /* resident: a hit */
        qv_cuda_lora_rt_destroy(rt);
        qv_adapter_free(ok);
#endif
        free(logits);
        qv_kv_seq_release(cu.kv, &kv);
        qv_adapter_free(ad);
    }
    gpu_runner_close(&cu);
}

/* The runner's CUDA-graph counters: steps replayed, recorded, refused. */
static void graph_stats(gpu_runner *cu, long *replays, long *captures, long *mism) {
#ifdef QV_HAVE_CUDA
    qv_cuda_stats st;
    qv_backend_cuda_stats(cu->be, &st);
    *replays = st.replays, *captures = st.captures, *mism = st.mismatches;
#else
    (void)cu;
    *replays = *captures = *mism = 0;
#endif
}

/* Four sequences decode together for GM_STEPS steps (1-token prompts, so every step is the
 * same batch shape); at step t sequence j runs kind (j + t) % (n_kinds + 1) of {none, ads[first],
 * ..., ads[first + n_kinds - 1]}, so the adapter mix changes every step. Two families: the
 * seven LoRA / IA3 / DoRA fixtures (the projections touched and the rank bucket stay within a
 * few shapes), and the three bottleneck fixtures (with 4 sequences and 4 kinds every step has
 * all of them). Run once with CUDA graphs and once eagerly
 * (QV_CUDA_GRAPHS=0): the graph run must replay recorded graphs for most steps, never find a
 * recording that differs from the step (a mismatch would rerun it eagerly), and give the eager
 * run's logits. */
#define GM_SEQS 4
#define GM_STEPS 24
static void graph_mix_run(int graphs, int first, int n_kinds, float *out, long *replays,
                          long *captures, long *mism) {
    if (!graphs) setenv("QV_CUDA_GRAPHS", "0", 1);
    gpu_runner cu;
    assert_int_equal(gpu_runner_open(&cu, qv_test_path(MODEL), 1, 64, PAGE, 32), 0);
    if (!graphs) unsetenv("QV_CUDA_GRAPHS");
    V = cu.m->cfg.n_vocab;
    qv_kv_seq kv[GM_SEQS] = {0};
    const qv_kv_seq *seqs[GM_SEQS];
    int32_t tok[GM_SEQS], pos[GM_SEQS], sq[GM_SEQS], li[GM_SEQS], ss[GM_SEQS + 1];
    qv_error err = {0};
    for (int t = 0; t < GM_STEPS; t++) {
        const qv_adapter *sa[GM_SEQS];
        for (int j = 0; j < GM_SEQS; j++) {
            assert_int_equal(qv_kv_seq_reserve(cu.kv, &kv[j], t + 1), QV_OK);
            seqs[j] = &kv[j];
            const int a = (j + t) % (n_kinds + 1);
            sa[j] = a ? ads[first + a - 1] : NULL;
            tok[j] = (int32_t)((7 * j + 13 * t + 3) % V);
            pos[j] = t, sq[j] = j, li[j] = j, ss[j] = j;
        }
        ss[GM_SEQS] = GM_SEQS;
        if (feed(&cu, seqs, sa, ss, GM_SEQS, tok, pos, sq, GM_SEQS, li, GM_SEQS,
                 out + (size_t)t * GM_SEQS * V, &err))
            fail_msg("graph mix step %d: %s", t, err.msg);
    }
    graph_stats(&cu, replays, captures, mism);
    for (int j = 0; j < GM_SEQS; j++)
        qv_kv_seq_release(cu.kv, &kv[j]);
    gpu_runner_close(&cu);
}

static void graph_mix(int first, int n_kinds, const char *what) {
    const size_t n = (size_t)GM_STEPS * GM_SEQS * (size_t)V;
    float *g = malloc(n * sizeof(float)), *e = malloc(n * sizeof(float));
    long rep, cap, mis, rep0, cap0, mis0;
    graph_mix_run(1, first, n_kinds, g, &rep, &cap, &mis);
    graph_mix_run(0, first, n_kinds, e, &rep0, &cap0, &mis0);
    double worst = 0;
    for (size_t r = 0; r < (size_t)GM_STEPS * GM_SEQS; r++)
        worst = fmax(worst, qv_test_max_rel_err(g + r * (size_t)V, e + r * (size_t)V, (size_t)V));
    printf("graph mix (%s): %d steps of %d sequences with rotating adapters: %ld captures, %ld "
           "replays, %ld mismatches; worst logits error vs eager %.3g\n",
           what, GM_STEPS, GM_SEQS, cap, rep, mis, worst);
    free(g);
    free(e);
    assert_int_equal(rep0 + cap0, 0);
    assert_int_equal(mis, 0);
    assert_true(rep >= GM_STEPS / 2);
    assert_true(worst <= 1e-5);
}

/* The graph tests' fixtures: the adapters loaded against the model, and its vocabulary size. */
static void graph_setup(void) {
    gpu_require_device();
    gpu_runner cpu;
    assert_int_equal(gpu_runner_open(&cpu, qv_test_path(MODEL), 0, 16, PAGE, 8), 0);
    load_adapters(cpu.m);
    V = cpu.m->cfg.n_vocab;
    gpu_runner_close(&cpu);
}

static void test_graph_adapter_mix(void **state) {
    (void)state;
    graph_setup();
    graph_mix(0, 7, "LoRA, IA3, DoRA");
    graph_mix(7, 3, "bottleneck");
    for (int a = 0; a < N_AD; a++)
        qv_adapter_free(ads[a]);
}

/* Decode steps whose batch size drifts (3 to 8 of 8 sequences, drawn at random, each at its own
 * position) with changing LoRA adapters (every 7th step one adapter for all), the rows grouped
 * by adapter into one segment per adapter as the engine does: with CUDA graphs each step is padded
 * to its bucket (4 or 8) with one segment per token, so most steps replay a recorded graph; the
 * logits equal the eager run's (no graphs, no padding) within the mixed-batch tolerance, and
 * without padding (QV_CUDA_GRAPH_PAD=0) the same schedule replays less. */
#define BD_SEQS 8
#define BD_STEPS 40
static int bd_size(int t) { return 3 + (int)(((uint32_t)t * 2654435761u >> 13) % 6u); }
static void drift_run(int graphs, int pad, float *out, long *replays, long *captures, long *mism) {
    if (!graphs) setenv("QV_CUDA_GRAPHS", "0", 1);
    if (!pad) setenv("QV_CUDA_GRAPH_PAD", "0", 1);
    gpu_runner cu;
    assert_int_equal(gpu_runner_open(&cu, qv_test_path(MODEL), 1, 96, PAGE, 32), 0);
    unsetenv("QV_CUDA_GRAPHS");
    unsetenv("QV_CUDA_GRAPH_PAD");
    qv_kv_seq kv[BD_SEQS] = {0};
    int cnt[BD_SEQS] = {0};
    qv_error err = {0};
    float *buf = malloc(sizeof(float) * BD_SEQS * (size_t)V);
    for (int t = 0; t < BD_STEPS; t++) {
        const int n = bd_size(t);
        const qv_kv_seq *seqs[BD_SEQS];
        const qv_adapter *sa[BD_SEQS];
        int32_t tok[BD_SEQS], pos[BD_SEQS], sq[BD_SEQS], li[BD_SEQS], ss[BD_SEQS + 1];
        int js[BD_SEQS], as[BD_SEQS], k = 0;
        /* rows in adapter order (a = 0: none), one segment per adapter present */
        for (int a = 0; a < 4; a++)
            for (int i = 0; i < n; i++) {
                const int j = (i * 3 + t) % BD_SEQS; /* a different subset each step */
                /* none, or one of the first three LoRAs; every 7th step one LoRA for all */
                const int aj = t % 7 == 6 ? 2 : (j + t / 5) % 4;
                if (aj == a) js[k] = j, as[k++] = a;
            }
        int nseg = 0;
        for (int r = 0; r < n; r++) {
            const int j = js[r];
            assert_int_equal(qv_kv_seq_reserve(cu.kv, &kv[j], cnt[j] + 1), QV_OK);
            seqs[r] = &kv[j];
            tok[r] = (int32_t)((11 * j + 5 * t + 1) % V);
            pos[r] = cnt[j]++;
            sq[r] = r, li[r] = r;
            if (r == 0 || as[r] != as[r - 1]) {
                ss[nseg] = r;
                sa[nseg++] = as[r] ? ads[as[r] - 1] : NULL;
            }
        }
        ss[nseg] = n;
        qv_batch b = {.n_tokens = n,
                      .tokens = tok,
                      .pos = pos,
                      .seq = sq,
                      .n_seqs = n,
                      .seqs = seqs,
                      .n_logits = n,
                      .logits_idx = li,
                      .n_segs = nseg,
                      .seg_start = ss,
                      .seg_adapter = (const struct qv_adapter *const *)sa};
        if (qv_forward_run(cu.fwd, &b, buf, &err) != QV_OK)
            fail_msg("drift step %d: %s", t, err.msg);
        float *rows = out + (size_t)t * BD_SEQS * (size_t)V;
        for (int r = 0; r < n; r++) /* by sequence, whatever the row order */
            memcpy(rows + (size_t)js[r] * (size_t)V, buf + (size_t)r * (size_t)V,
                   sizeof(float) * (size_t)V);
    }
    free(buf);
    graph_stats(&cu, replays, captures, mism);
    for (int j = 0; j < BD_SEQS; j++)
        qv_kv_seq_release(cu.kv, &kv[j]);
    gpu_runner_close(&cu);
}

static void test_graph_batch_drift(void **state) {
    (void)state;
    graph_setup();
    const size_t n = (size_t)BD_STEPS * BD_SEQS * (size_t)V;
    float *g = calloc(n, sizeof(float)), *e = calloc(n, sizeof(float)),
          *u = calloc(n, sizeof(float));
    long rep, cap, mis, rep0, cap0, mis0, repu, capu, misu;
    drift_run(1, 1, g, &rep, &cap, &mis);
    drift_run(0, 1, e, &rep0, &cap0, &mis0);
    drift_run(1, 0, u, &repu, &capu, &misu);
    double worst = 0;
    int rows = 0;
    for (int t = 0; t < BD_STEPS; t++)
        for (int j = 0; j < BD_SEQS; j++) {
            const size_t r = ((size_t)t * BD_SEQS + (size_t)j) * (size_t)V;
            if (e[r] == 0.0f && e[r + 1] == 0.0f) continue; /* j did not run at step t */
            worst = fmax(worst, qv_test_max_rel_err(g + r, e + r, (size_t)V));
            rows++;
        }
    assert_true(rows > BD_STEPS * 3);
    printf("batch drift: %d decode steps of 3..8 sequences, changing adapters: padded graphs %ld "
           "captures, %ld replays, %ld mismatches (worst logits error vs eager %.3g); without "
           "padding %ld captures, %ld replays\n",
           BD_STEPS, cap, rep, mis, worst, capu, repu);
    free(g);
    free(e);
    free(u);
    for (int a = 0; a < N_AD; a++)
        qv_adapter_free(ads[a]);
    assert_int_equal(rep0 + cap0, 0);
    assert_int_equal(mis, 0);
    assert_true(rep >= BD_STEPS / 2);
    assert_true(rep > repu);
    assert_true(worst <= TOL_SELF);
}

/* DoRA on a model with projection biases (tiny-qwen2: q/k/v biases), where the rescaling must
 * keep the base bias out: the PEFT LoRA fixture of tiny-qwen2 gets DoRA scales drawn in
 * [0.7, 1.3] (the CPU's DoRA path, checked against PEFT on tiny-llama-gqa, is the reference);
 * one sequence is teacher-forced along the CPU's 12 greedy tokens on the GPU. The scales must
 * move the CPU logits well beyond the tolerance. */
static void test_dora_with_bias(void **state) {
    (void)state;
    gpu_runner cpu, cu;
    assert_int_equal(
        gpu_runner_open(&cpu, qv_test_path("tests/fixtures/models/tiny-qwen2"), 0, 32, PAGE, 32),
        0);
    V = cpu.m->cfg.n_vocab;
    qv_adapter *ad = NULL;
    qv_error err = {0};
    if (qv_adapter_load(qv_test_path("tests/fixtures/adapters/tiny-qwen2/lora_all_r8"), cpu.m, NULL,
                        &ad, &err) != QV_OK)
        fail_msg("tiny-qwen2 lora_all_r8: %s", err.msg);
    uint32_t rng = 777;
    float *scales[64 * QV_PROJ_COUNT] = {NULL};
    assert_true(ad->n_layers <= 64);
    float *plain = malloc(sizeof(float) * (size_t)V * STEPS);
    seq *q = &S[0];
    memset(q, 0, sizeof(*q));
    q->n_prompt = 6;
    for (int t = 0; t < q->n_prompt; t++)
        q->toks[t] = (int32_t)(((uint32_t)((gpu_randf(&rng) + 1.0f) * 1e6f)) % (uint32_t)V);
    q->want = malloc(sizeof(float) * (size_t)V * STEPS);
    q->solo = malloc(sizeof(float) * (size_t)V * STEPS);
    run_solo(&cpu, 0, ad, 1, plain); /* plain LoRA, for the effect check */
    for (int l = 0; l < ad->n_layers; l++)
        for (int p = 0; p < QV_PROJ_COUNT; p++) {
            qv_lora *lo = &ad->layers[l].lora[p];
            if (lo->rank <= 0) continue;
            float *v = malloc(sizeof(float) * (size_t)lo->n_out);
            for (int o = 0; o < lo->n_out; o++)
                v[o] = 1.0f + 0.3f * gpu_randf(&rng);
            lo->dora_scale = scales[l * QV_PROJ_COUNT + p] = v;
        }
    run_solo(&cpu, 0, ad, 1, q->want);
    double effect = 0;
    for (int st = 0; st < STEPS; st++)
        effect = fmax(effect, qv_test_max_rel_err(plain + (size_t)st * V, q->want + (size_t)st * V,
                                                  (size_t)V));
    printf("dora scales on tiny-qwen2: largest logits change over plain LoRA %.3g\n", effect);
    assert_true(effect > 3 * TOL_CPU);
    gpu_runner_close(&cpu);
    gpu_require_device();
    assert_int_equal(
        gpu_runner_open(&cu, qv_test_path("tests/fixtures/models/tiny-qwen2"), 1, 32, PAGE, 32), 0);
    run_solo(&cu, 0, ad, 0, q->solo);
    int fails = 0;
    double worst = 0;
    for (int st = 0; st < STEPS; st++)
        fails += check_row("dora+bias", 0, st, q->solo + (size_t)st * V, q->want + (size_t)st * V,
                           q->toks[q->n_prompt + st], TOL_CPU, &worst);
    printf("cuda dora on a biased model: worst logits error vs cpu %.3g, %d failures\n", worst,
           fails);
    gpu_runner_close(&cu);
    for (int l = 0; l < ad->n_layers; l++)
        for (int p = 0; p < QV_PROJ_COUNT; p++) {
            ad->layers[l].lora[p].dora_scale = NULL;
            free(scales[l * QV_PROJ_COUNT + p]);
        }
    qv_adapter_free(ad);
    free(plain);
    free(q->want);
    free(q->solo);
    if (fails) fail_msg("%d failures", fails);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lora_end_to_end),   cmocka_unit_test(test_bottleneck_variants),
        cmocka_unit_test(test_adaption_prompt),   cmocka_unit_test(test_biased_model),
        cmocka_unit_test(test_refusals),          cmocka_unit_test(test_graph_adapter_mix),
        cmocka_unit_test(test_graph_batch_drift), cmocka_unit_test(test_dora_with_bias),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
