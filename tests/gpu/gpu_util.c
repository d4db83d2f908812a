/*
 * gpu_util.c - helpers of the gpu-labelled tests (gpu_util.h).
 */
#include "gpu_util.h"

#include <math.h>

#include "test_util.h"

#ifdef QV_HAVE_CUDA
#include "engine/cuda/backend_cuda.h"
#include "engine/cuda/cuda_probe.h"
#endif

void gpu_require_device(void) {
#ifndef QV_HAVE_CUDA
    printf("SKIP: built without CUDA (-DQV_CUDA=OFF)\n");
    exit(77);
#else
    if (qv_cuda_device_count() == 0) {
        printf("SKIP: no CUDA device\n");
        exit(77);
    }
#endif
}

qv_backend *gpu_cuda_empty(size_t weight_bytes, size_t arena_bytes) {
#ifdef QV_HAVE_CUDA
    qv_error err = {0};
    qv_cuda_opts o;
    qv_cuda_opts_default(&o);
    o.max_tokens = 256;
    o.arena_bytes = arena_bytes;
    qv_backend *be = NULL;
    if (qv_backend_cuda_create_empty(weight_bytes, &o, &be, &err) == QV_OK) return be;
    fprintf(stderr, "cuda backend: %s\n", err.msg);
#else
    (void)weight_bytes;
    (void)arena_bytes;
#endif
    return NULL;
}

float gpu_randf(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) * (2.0f / 16777216.0f) - 1.0f;
}

int gpu_runner_open(gpu_runner *r, const char *path, int cuda, int n_pages, int page_size,
                    int max_tokens) {
    memset(r, 0, sizeof(*r));
    qv_error err = {0};
    qv_status st = qv_model_load(path, &r->m, &err);
    if (st == QV_OK) {
        if (cuda) {
#ifdef QV_HAVE_CUDA
            qv_cuda_opts o;
            qv_cuda_opts_default(&o);
            o.max_tokens = max_tokens;
            o.arena_bytes = (size_t)64 << 20;
            st = qv_backend_cuda_create(r->m, &o, &r->be, &err);
            r->on_cuda = 1;
#else
            st = qv_errorf(&err, QV_ERR_UNSUPPORTED, "no CUDA in this build");
#endif
        } else {
            st = qv_backend_cpu_create(2, &r->be, &err);
        }
    }
    if (st == QV_OK) st = qv_kv_cache_create(r->be, &r->m->cfg, n_pages, page_size, &r->kv, &err);
    if (st == QV_OK) st = qv_forward_create(r->m, r->be, r->kv, max_tokens, &r->fwd, &err);
    if (st != QV_OK) {
        fprintf(stderr, "open %s on %s: %s\n", path, cuda ? "cuda" : "cpu", err.msg);
        gpu_runner_close(r);
        return -1;
    }
    return 0;
}

void gpu_runner_close(gpu_runner *r) {
    qv_forward_destroy(r->fwd);
    qv_kv_cache_destroy(r->kv);
    if (r->be) r->be->iface->destroy(r->be);
    qv_model_free(r->m);
    memset(r, 0, sizeof(*r));
}

int gpu_argmax(const float *x, int n, float *gap) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    float second = -3.4e38f;
    for (int i = 0; i < n; i++)
        if (i != b && x[i] > second) second = x[i];
    if (gap) *gap = x[b] - second;
    return b;
}

#define CHK_SEQS 3
#define CHK_MAX_STEPS 64
#define CHK_PAGE 4

typedef struct chk_seq {
    int32_t toks[128]; /* prompt then the CPU's greedy tokens */
    int n_prompt;
    float *want; /* (n_steps, V) CPU logits */
    qv_kv_seq kv;
    int n_done; /* tokens fed */
} chk_seq;

static int feed(gpu_runner *r, const qv_kv_seq *const *seqs, int n_seqs, const int32_t *tok,
                const int32_t *pos, const int32_t *sq, int n, const int32_t *li, int nl,
                float *logits) {
    qv_error err = {0};
    qv_batch b = {.n_tokens = n,
                  .tokens = tok,
                  .pos = pos,
                  .seq = sq,
                  .n_seqs = n_seqs,
                  .seqs = seqs,
                  .n_logits = nl,
                  .logits_idx = li};
    if (qv_forward_run(r->fwd, &b, logits, &err) != QV_OK) {
        fprintf(stderr, "forward: %s\n", err.msg);
        return -1;
    }
    return 0;
}

/* Compares one logits row; returns failures. */
static int compare_row(const char *what, int s, int step, const float *got, const float *want,
                       int V, int32_t cpu_tok, double tol, double *worst, int *ties) {
    int fails = 0;
    double e = qv_test_max_rel_err(got, want, (size_t)V);
    if (e > *worst) *worst = e;
    if (!(e <= tol)) {
        fprintf(stderr, "%s seq %d step %d: logits error %.3g > %.3g\n", what, s, step, e, tol);
        qv_test_compare_f32(what, got, want, (size_t)V, 0, tol);
        fails++;
    }
    int g = gpu_argmax(got, V, NULL);
    if (g != cpu_tok) {
        float gap;
        (void)gpu_argmax(want, V, &gap);
        double maxabs = 0;
        for (int i = 0; i < V; i++) {
            double d = fabs((double)got[i] - (double)want[i]);
            if (d > maxabs) maxabs = d;
        }
        if ((double)gap <= 2.0 * maxabs) {
            printf("%s seq %d step %d: near tie (CPU top-2 gap %.3g, max |err| %.3g): cuda %d cpu "
                   "%d\n",
                   what, s, step, (double)gap, maxabs, g, cpu_tok);
            (*ties)++;
        } else {
            fprintf(stderr,
                    "%s seq %d step %d: cuda token %d != cpu %d (gap %.3g, max |err| %.3g)\n", what,
                    s, step, g, cpu_tok, (double)gap, maxabs);
            fails++;
        }
    }
    return fails;
}

int gpu_check_model(const char *path, int n_steps, double tol) {
    if (n_steps > CHK_MAX_STEPS) n_steps = CHK_MAX_STEPS;
    gpu_runner cpu, cu;
    const int n_pages = 3 * (23 + CHK_MAX_STEPS + CHK_PAGE) / CHK_PAGE + 8;
    if (gpu_runner_open(&cpu, path, 0, n_pages, CHK_PAGE, 32) != 0) return 1;
    if (gpu_runner_open(&cu, path, 1, n_pages, CHK_PAGE, 32) != 0) {
        gpu_runner_close(&cpu);
        return 1;
    }
    const int V = cpu.m->cfg.n_vocab;
    static const int lens[CHK_SEQS] = {1, 11, 23};
    chk_seq s[CHK_SEQS];
    memset(s, 0, sizeof(s));
    uint32_t rng = 777;
    float *buf = malloc(sizeof(float) * (size_t)V * 32);
    int fails = 0, ties = 0;
    double worst_alone = 0, worst_mixed = 0;
    int32_t tok[32], pos[32], sq[32], li[32];
    /* CPU reference: solo greedy */
    for (int i = 0; i < CHK_SEQS; i++) {
        s[i].n_prompt = lens[i];
        for (int t = 0; t < lens[i]; t++)
            s[i].toks[t] = (int32_t)(((uint32_t)((gpu_randf(&rng) + 1.0f) * 1e6f)) % (uint32_t)V);
        s[i].want = malloc(sizeof(float) * (size_t)V * (size_t)n_steps);
        qv_kv_seq kv = {0};
        const qv_kv_seq *seqs[1] = {&kv};
        int n_in = lens[i], p0 = 0;
        for (int st = 0; st < n_steps && !fails; st++) {
            if (qv_kv_seq_reserve(cpu.kv, &kv, p0 + n_in) != QV_OK) fails++;
            for (int t = 0; t < n_in; t++)
                tok[t] = s[i].toks[p0 + t], pos[t] = p0 + t, sq[t] = 0;
            li[0] = n_in - 1;
            if (fails ||
                feed(&cpu, seqs, 1, tok, pos, sq, n_in, li, 1, s[i].want + (size_t)st * V)) {
                fails++;
                break;
            }
            s[i].toks[lens[i] + st] = gpu_argmax(s[i].want + (size_t)st * V, V, NULL);
            p0 += n_in;
            n_in = 1;
        }
        qv_kv_seq_release(cpu.kv, &kv);
    }
    /* (a) CUDA, one sequence at a time, teacher-forced */
    for (int i = 0; i < CHK_SEQS && !fails; i++) {
        qv_kv_seq kv = {0};
        const qv_kv_seq *seqs[1] = {&kv};
        int n_in = lens[i], p0 = 0;
        for (int st = 0; st < n_steps; st++) {
            if (qv_kv_seq_reserve(cu.kv, &kv, p0 + n_in) != QV_OK) {
                fails++;
                break;
            }
            for (int t = 0; t < n_in; t++)
                tok[t] = s[i].toks[p0 + t], pos[t] = p0 + t, sq[t] = 0;
            li[0] = n_in - 1;
            if (feed(&cu, seqs, 1, tok, pos, sq, n_in, li, 1, buf)) {
                fails++;
                break;
            }
            fails += compare_row("alone", i, st, buf, s[i].want + (size_t)st * V, V,
                                 s[i].toks[lens[i] + st], tol, &worst_alone, &ties);
            p0 += n_in;
            n_in = 1;
        }
        qv_kv_seq_release(cu.kv, &kv);
    }
    /* (b) CUDA, mixed batches: prefill chunks of <= 5 next to decode tokens */
    int steps = 0;
    while (!fails) {
        int n = 0, nb = 0, nl = 0, owner[CHK_SEQS], lrow[32];
        const qv_kv_seq *seqs[CHK_SEQS];
        for (int k = 0; k < CHK_SEQS; k++) {
            int i = (k + steps) % CHK_SEQS;
            chk_seq *q = &s[i];
            int total = q->n_prompt + n_steps - 1; /* tokens to feed */
            if (q->n_done >= total) continue;
            int chunk = q->n_done < q->n_prompt ? QV_MIN(5, q->n_prompt - q->n_done) : 1;
            if (qv_kv_seq_reserve(cu.kv, &q->kv, q->n_done + chunk) != QV_OK) {
                fails++;
                break;
            }
            owner[nb] = i;
            seqs[nb] = &q->kv;
            for (int t = 0; t < chunk; t++) {
                int p = q->n_done + t;
                tok[n] = q->toks[p], pos[n] = p, sq[n] = nb;
                if (p >= q->n_prompt - 1) {
                    lrow[nl] = p - (q->n_prompt - 1); /* step index */
                    li[nl++] = n;
                }
                n++;
            }
            nb++;
        }
        if (n == 0 || fails) break;
        if (feed(&cu, seqs, nb, tok, pos, sq, n, li, nl, buf)) {
            fails++;
            break;
        }
        for (int j = 0; j < nl; j++) {
            int i = owner[sq[li[j]]], st = lrow[j];
            fails += compare_row("mixed", i, st, buf + (size_t)j * V, s[i].want + (size_t)st * V, V,
                                 s[i].toks[s[i].n_prompt + st], tol, &worst_mixed, &ties);
        }
        for (int t = 0; t < n; t++)
            s[owner[sq[t]]].n_done++;
        steps++;
    }
    printf("%s: %d steps x %d seqs, worst logits error alone %.3g, mixed %.3g (%d mixed batches), "
           "%d near ties, %d failures\n",
           path, n_steps, CHK_SEQS, worst_alone, worst_mixed, steps, ties, fails);
    for (int i = 0; i < CHK_SEQS; i++) {
        qv_kv_seq_release(cu.kv, &s[i].kv);
        free(s[i].want);
    }
    free(buf);
    gpu_runner_close(&cu);
    gpu_runner_close(&cpu);
    return fails;
}
