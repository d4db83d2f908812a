/*
 * bench_decode.c - prefill and decode throughput of the engine at batch 1, 8 and 32, each with
 * its ratio to the weight-bandwidth floor measured in the same run (BENCH.md 5.2/7.3).
 *
 * Floor: a decode step must read every projection weight plus the lm_head once, so
 *   floor_tok_s(batch B) = B * read_bandwidth / weight_bytes_per_step,
 * with read_bandwidth from a multi-threaded streaming sum over 512 MiB run just before.
 * Prefill is compute-bound; it is reported in tok/s only.
 *
 * usage: bench_decode [MODEL] [--threads N] [--prompt P] [--gen G] [--batches 1,8,32]
 *                     [--kv-bf16] [--vs-avx2 | --vs-kv-f32]
 * Prints one table and a JSON line per batch size. --kv-bf16: bf16 K/V pages. With --vs-avx2
 * (on a CPU whose matmul runs the AVX-512 kernels), a second engine limited to AVX2
 * (QV_CPU_SIMD=avx2) runs every batch just before the first, and two more columns give the
 * AVX-512 speed-up of prefill and decode; --vs-kv-f32 does the same with a second engine on
 * F32 K/V pages (with --kv-bf16: the speed-up of bf16 pages).
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "bench_util.h"
#include "engine/engine.h"

/* ---- bandwidth probe ----
 * Streaming read of 512 MiB split across the threads, summing 64-bit integers (an associative
 * sum, so the loop is not latency-bound the way an fp32 sum chain is). Best of 5 passes. */
typedef struct probe_arg {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
} probe_arg;

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint64_t *p, size_t n) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_add_epi64(s0, _mm256_loadu_si256((const __m256i *)(const void *)(p + i)));
        s1 = _mm256_add_epi64(s1, _mm256_loadu_si256((const __m256i *)(const void *)(p + i + 4)));
        s2 = _mm256_add_epi64(s2, _mm256_loadu_si256((const __m256i *)(const void *)(p + i + 8)));
        s3 = _mm256_add_epi64(s3, _mm256_loadu_si256((const __m256i *)(const void *)(p + i + 12)));
    }
    s0 = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
    uint64_t t[4];
    _mm256_storeu_si256((__m256i *)(void *)t, s0);
    uint64_t s = t[0] + t[1] + t[2] + t[3];
    for (; i < n; i++)
        s += p[i];
    return s;
}
#endif

static void *probe_worker(void *a) {
    probe_arg *pa = a;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) {
        pa->sum = sum_avx2(pa->p, pa->n);
        return NULL;
    }
#endif
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= pa->n; i += 4) {
        s0 += pa->p[i];
        s1 += pa->p[i + 1];
        s2 += pa->p[i + 2];
        s3 += pa->p[i + 3];
    }
    pa->sum = s0 + s1 + s2 + s3;
    return NULL;
}

static double probe_bandwidth(int n_threads) {
    const size_t n = (size_t)64 << 20; /* 512 MiB of u64 */
    uint64_t *buf = malloc(n * sizeof(uint64_t));
    if (!buf) return 0;
    for (size_t i = 0; i < n; i++)
        buf[i] = i;
    double best = 0;
    uint64_t check = 0;
    if (n_threads > 64) n_threads = 64;
    for (int rep = 0; rep < 5; rep++) {
        pthread_t th[64];
        probe_arg args[64];
        size_t per = n / (size_t)n_threads;
        double t0 = qv_time_s();
        for (int t = 0; t < n_threads; t++) {
            args[t] = (probe_arg){buf + per * (size_t)t, per, 0};
            pthread_create(&th[t], NULL, probe_worker, &args[t]);
        }
        for (int t = 0; t < n_threads; t++)
            pthread_join(th[t], NULL);
        double dt = qv_time_s() - t0;
        double bw = (double)(per * (size_t)n_threads * sizeof(uint64_t)) / dt;
        if (bw > best) best = bw;
        for (int t = 0; t < n_threads; t++)
            check += args[t].sum;
    }
    free(buf);
    if (check == 1) printf(" "); /* keep the sums observable */
    return best;
}

/* ---- engine runs ---- */
typedef struct counter {
    int n_first; /* sequences that produced their first token */
    int n_tokens;
} counter;

/* One request's callback state: its first token ends its prefill. */
typedef struct seq_state {
    counter *c;
    bool started;
} seq_state;

static void on_tok(void *user, int seq, int32_t tok, const qv_logprobs *lp,
                   enum qv_finish_reason fin) {
    (void)seq;
    (void)tok;
    (void)lp;
    (void)fin;
    seq_state *st = user;
    st->c->n_tokens++;
    if (!st->started) {
        st->started = true;
        st->c->n_first++;
    }
}

typedef struct result {
    double prefill_tok_s, decode_tok_s;
} result;

static int run_batch(qv_engine *e, int batch, int n_prompt, int n_gen, result *r) {
    const qv_model *m = qv_engine_model(e);
    int32_t *prompt = malloc(sizeof(int32_t) * (size_t)n_prompt);
    uint32_t s = 77;
    counter c = {0};
    qv_gen_params gp;
    qv_gen_params_default(&gp);
    gp.max_tokens = n_gen;
    gp.ignore_eos = true;
    gp.sampling.temperature = 0;
    qv_error err = {0};
    seq_state *st = calloc((size_t)batch, sizeof *st);
    int rc = -1;
    for (int b = 0; b < batch; b++) {
        for (int i = 0; i < n_prompt; i++) {
            s = s * 1664525u + 1013904223u;
            prompt[i] = (int32_t)((s >> 8) % (uint32_t)m->cfg.n_vocab);
        }
        st[b].c = &c;
        if (qv_engine_add(e, prompt, (size_t)n_prompt, &gp, on_tok, &st[b], NULL, &err) != QV_OK) {
            fprintf(stderr, "add: %s\n", err.msg);
            goto out;
        }
    }
    /* Prefill phase: until every sequence has its first token (the first ones to get theirs
     * decode meanwhile; their tokens count for neither phase). */
    double t0 = qv_time_s();
    while (c.n_first < batch)
        if (qv_engine_step(e, &err) != QV_OK) goto out;
    double t1 = qv_time_s();
    int tokens_at_t1 = c.n_tokens;
    while (qv_engine_n_active(e) > 0)
        if (qv_engine_step(e, &err) != QV_OK) goto out;
    double t2 = qv_time_s();
    r->prefill_tok_s = (double)(batch * n_prompt) / (t1 - t0);
    r->decode_tok_s = (double)(c.n_tokens - tokens_at_t1) / (t2 - t1);
    rc = 0;
out:
    free(st);
    free(prompt);
    return rc;
}

int main(int argc, char **argv) {
    const char *model = NULL;
    int n_threads = 0, n_prompt = 64, n_gen = 64;
    int batches[8] = {1, 8, 32};
    int n_batches = 3;
    bool vs_avx2 = false, vs_f32 = false, kv_bf16 = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--vs-avx2"))
            vs_avx2 = true;
        else if (!strcmp(argv[i], "--vs-kv-f32"))
            vs_f32 = true;
        else if (!strcmp(argv[i], "--kv-bf16"))
            kv_bf16 = true;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            n_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--prompt") && i + 1 < argc)
            n_prompt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gen") && i + 1 < argc)
            n_gen = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batches") && i + 1 < argc) {
            n_batches = 0;
            for (char *t = strtok(argv[++i], ","); t && n_batches < 8; t = strtok(NULL, ","))
                batches[n_batches++] = atoi(t);
        } else
            model = argv[i];
    }
    static char def[4096];
    if (!model) model = bench_default_model(def, sizeof(def));
    int threads = n_threads ? n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    qv_log_set_level(QV_LOG_WARN);
    qv_engine_config cfg;
    qv_engine_config_default(&cfg);
    cfg.model_path = model;
    cfg.n_threads = n_threads;
    cfg.load_tokenizer = false;
    cfg.max_batch_tokens = 512;
    cfg.max_seqs = 64;
    cfg.kv_bytes = (size_t)1 << 30;
    cfg.kv_bf16 = kv_bf16;
    qv_engine *e = NULL;
    qv_error err = {0};
    if (qv_engine_create(&cfg, &e, &err) != QV_OK) {
        fprintf(stderr, "bench_decode: %s\n", err.msg);
        return 1;
    }
    const char *kernels = qv_backend_cpu_kernels();
    qv_engine *e2 = NULL; /* the comparison engine of --vs-avx2 / --vs-kv-f32 */
    if (vs_avx2 && strcmp(kernels, "avx512") != 0) {
        fprintf(stderr, "bench_decode: --vs-avx2: the matmul runs %s kernels, not avx512\n",
                kernels);
        return 1;
    }
    if (vs_avx2 || vs_f32) {
        if (vs_avx2) setenv("QV_CPU_SIMD", "avx2", 1);
        if (vs_f32) cfg.kv_bf16 = false;
        qv_status st = qv_engine_create(&cfg, &e2, &err);
        unsetenv("QV_CPU_SIMD");
        if (st != QV_OK) {
            fprintf(stderr, "bench_decode: %s\n", err.msg);
            return 1;
        }
    }
    const qv_model *m = qv_engine_model(e);
    size_t step_bytes = m->n_weight_bytes;
    if (!m->cfg.tie_embeddings) /* the input embedding is only gathered, not streamed */
        step_bytes -= (size_t)m->tok_embd.n_rows * m->tok_embd.row_bytes;
    double bw = probe_bandwidth(threads);
    double floor1 = bw / (double)step_bytes;
    printf("model %s (%s), %d threads, %s kernels, %s K/V pages, prompt %d, generate %d\n",
           m->name ? m->name : model, qv_dtype_name(m->main_dtype), threads, kernels,
           kv_bf16 ? "bf16" : "f32", n_prompt, n_gen);
    printf("read bandwidth %.2f GB/s, weight bytes per decode step %.1f MB -> batch-1 floor "
           "%.1f tok/s\n\n",
           bw / 1e9, (double)step_bytes / 1e6, floor1);
    printf("| batch | prefill tok/s | decode tok/s (aggregate) | floor tok/s | decode / floor | "
           "vs batch 1 |%s\n|---|---|---|---|---|---|%s\n",
           !e2       ? ""
           : vs_avx2 ? " prefill vs avx2 | decode vs avx2 |"
                     : " prefill vs f32 K/V | decode vs f32 K/V |",
           e2 ? "---|---|" : "");
    double dec1 = 0;
    for (int i = 0; i < n_batches; i++) {
        result r, r2 = {0, 0};
        /* warm-up once at the first size so page faults and thread start-up are excluded */
        if (i == 0 && run_batch(e, batches[0], 8, 4, &r) != 0) return 1;
        if (i == 0 && e2 && run_batch(e2, batches[0], 8, 4, &r2) != 0) return 1;
        if ((e2 && run_batch(e2, batches[i], n_prompt, n_gen, &r2) != 0) ||
            run_batch(e, batches[i], n_prompt, n_gen, &r) != 0) {
            fprintf(stderr, "bench_decode: run failed: %s\n", err.msg);
            return 1;
        }
        if (batches[i] == 1) dec1 = r.decode_tok_s;
        double fl = floor1 * batches[i];
        printf("| %d | %.1f | %.1f | %.1f | %.2f | %s%.2fx |", batches[i], r.prefill_tok_s,
               r.decode_tok_s, fl, r.decode_tok_s / fl, dec1 > 0 ? "" : "n/a ",
               dec1 > 0 ? r.decode_tok_s / dec1 : 0.0);
        if (e2)
            printf(" %.2fx | %.2fx |", r.prefill_tok_s / r2.prefill_tok_s,
                   r.decode_tok_s / r2.decode_tok_s);
        printf("\n");
        fprintf(stderr,
                "{\"batch\":%d,\"prefill_tok_s\":%.2f,\"decode_tok_s\":%.2f,\"floor_tok_s\":%.2f,"
                "\"bandwidth_gb_s\":%.3f}\n",
                batches[i], r.prefill_tok_s, r.decode_tok_s, fl, bw / 1e9);
    }
    if (e2) qv_engine_destroy(e2);
    qv_engine_destroy(e);
    return 0;
}
