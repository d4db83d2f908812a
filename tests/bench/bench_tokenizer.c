/*
 * bench_tokenizer.c - encode throughput (MB/s) of quiver's tokenizer on a large, deterministic,
 * mixed text (English-like prose, code, numbers, punctuation, whitespace runs, non-Latin
 * scripts and emoji). Compare with tests/bench/bench_tokenizer_hf.py on the same text.
 *
 * usage: bench_tokenizer [--model PATH] [--mb N] [--runs N] [--write-text FILE] [--adversarial]
 *   --model       tokenizer dir / tokenizer.json / .gguf (default: the SmolLM2 fixture)
 *   --write-text  also write the generated text to FILE (input for the HF script)
 * Two modes: the whole text as one encode call, and "chunked": the text cut after the first
 * newline at or beyond every 4096 bytes (request-sized inputs); each chunk is encoded alone.
 * Prints MB/s of the best run and the id count (the HF script prints its counts too).
 * --adversarial adds inputs a client may send to hurt the server (1 MiB of one letter, of NULs,
 * 10^5 spaces / digits / newlines): MB/s of each, and the time ratio of the whole input to its
 * first eighth, side by side (8 means linear, 64 quadratic).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer.h"

static const char *k_words[] = {
    "the",    "of",     "and",       "to",      "in",         "is",      "that",        "for",
    "it",     "as",     "was",       "with",    "be",         "by",      "on",          "not",
    "he",     "this",   "are",       "or",      "his",        "from",    "at",          "which",
    "but",    "have",   "an",        "had",     "they",       "you",     "were",        "their",
    "one",    "all",    "we",        "can",     "her",        "has",     "there",       "been",
    "if",     "more",   "when",      "will",    "would",      "who",     "so",          "no",
    "model",  "token",  "inference", "adapter", "server",     "quickly", "transformer", "Hello",
    "World",  "The",    "It's",      "don't",   "we'll",      "I'm",     "naïve",       "café",
    "résumé", "Straße", "数据",      "模型",    "こんにちは", "привет",  "мир",         "γειά",
    "नमस्ते",   "مرحبا",  "😀",         "🦙",    "👍🏽",   "Ω",       "€100",
};
static const char *k_seps[] = {" ",  " ",  " ",  " ",  " ",  " ",  ", ",  ". ", "\n", "\n\n",
                               "  ", "\t", "; ", ": ", "! ", "? ", " - ", "(",  ") ", "\""};
static const char *k_code[] = {
    "def f(x):\n    return x ** 2\n",
    "for (int i = 0; i < n; i++) {\n    s += a[i];\n}\n",
    "{\"key\": [1, 2.5, null], \"ok\": true}\n",
    "    if err != nil {\n        return err\n    }\n",
    "x = 3.14159 * r ** 2  # area\n",
    "https://example.com/path?q=1&r=2\n",
};

static char *gen_text(size_t bytes, size_t *out_len) {
    char *buf = malloc(bytes + 256);
    size_t n = 0;
    uint64_t x = 0x2545F4914F6CDD1Dull;
    while (n < bytes) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        unsigned r = (unsigned)(x % 1000);
        const char *s;
        char num[32];
        if (r < 20)
            s = k_code[x / 1000 % (sizeof(k_code) / sizeof(k_code[0]))];
        else if (r < 60) {
            snprintf(num, sizeof(num), "%llu", (unsigned long long)(x / 1000 % 100000));
            s = num;
        } else if (r < 400)
            s = k_seps[x / 1000 % (sizeof(k_seps) / sizeof(k_seps[0]))];
        else
            s = k_words[x / 1000 % (sizeof(k_words) / sizeof(k_words[0]))];
        size_t l = strlen(s);
        memcpy(buf + n, s, l);
        n += l;
    }
    buf[n] = 0;
    *out_len = n;
    return buf;
}

static double best_encode(const qv_tokenizer *t, const char *s, size_t n, int runs, size_t *n_ids) {
    double best = 1e30;
    for (int r = 0; r < runs; r++) {
        int32_t *ids = NULL;
        qv_error err = {0};
        double t0 = qv_time_s();
        if (qv_tokenizer_encode(t, s, n, false, &ids, n_ids, &err)) {
            fprintf(stderr, "encode: %s\n", err.msg);
            exit(1);
        }
        double dt = qv_time_s() - t0;
        if (dt < best) best = dt;
        qv_free(ids);
    }
    return best;
}

static void adversarial(const qv_tokenizer *t, int runs) {
    static const struct {
        const char *what;
        char c;
        size_t n;
    } k_inputs[] = {{"1 MiB 'a'", 'a', 1u << 20},
                    {"1 MiB NUL", 0, 1u << 20},
                    {"1e5 spaces", ' ', 100000},
                    {"1e5 digits", '7', 100000},
                    {"1e5 newlines", '\n', 100000}};
    char *buf = malloc(1u << 20);
    for (size_t i = 0; i < sizeof(k_inputs) / sizeof(k_inputs[0]); i++) {
        memset(buf, k_inputs[i].c, k_inputs[i].n);
        size_t n_ids = 0, n_small = 0;
        double dt = best_encode(t, buf, k_inputs[i].n, runs, &n_ids);
        double ds = best_encode(t, buf, k_inputs[i].n / 8, runs, &n_small);
        printf("quiver encode (%s): %zu ids, %.3f s = %.2f MB/s; whole / first eighth: %.1fx\n",
               k_inputs[i].what, n_ids, dt, (double)k_inputs[i].n / 1e6 / dt,
               ds > 0 ? dt / ds : 0.0);
    }
    free(buf);
}

int main(int argc, char **argv) {
    const char *model = NULL, *dump = NULL;
    bool adv = false;
    double mb = 8;
    int runs = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(argv[i], "--mb") && i + 1 < argc)
            mb = atof(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--write-text") && i + 1 < argc)
            dump = argv[++i];
        else if (!strcmp(argv[i], "--adversarial"))
            adv = true;
        else {
            fprintf(stderr, "usage: bench_tokenizer [--model PATH] [--mb N] [--runs N] "
                            "[--write-text FILE] [--adversarial]\n");
            return 2;
        }
    }
    char def[4096];
    if (!model) {
        snprintf(def, sizeof(def), "%s", __FILE__);
        char *p = strstr(def, "tests/bench/bench_tokenizer.c");
        if (p) strcpy(p, "tests/fixtures/tokenizer/smollm2");
        model = def;
    }
    size_t n = 0;
    char *text = gen_text((size_t)(mb * 1024 * 1024), &n);
    if (dump) {
        FILE *f = fopen(dump, "wb");
        if (!f || fwrite(text, 1, n, f) != n) {
            fprintf(stderr, "cannot write %s\n", dump);
            return 1;
        }
        fclose(f);
    }
    qv_tokenizer *t = NULL;
    qv_error err = {0};
    double t0 = qv_time_s();
    if (qv_tokenizer_load_path(model, &t, &err)) {
        fprintf(stderr, "load: %s\n", err.msg);
        return 1;
    }
    double load_s = qv_time_s() - t0;
    size_t n_ids = 0;
    double best = best_encode(t, text, n, runs, &n_ids);
    printf("quiver encode (one call): %.2f MiB text, %zu ids, best of %d: %.3f s = %.2f MB/s "
           "(load %.3f s, model %s)\n",
           (double)n / 1048576.0, n_ids, runs, best, (double)n / 1e6 / best, load_s, model);
    best = 1e30;
    for (int r = 0; r < runs; r++) {
        size_t start = 0, total = 0;
        t0 = qv_time_s();
        while (start < n) {
            size_t p = start + 4096 < n ? start + 4096 : n;
            while (p < n && text[p] != '\n')
                p++;
            if (p < n) p++;
            int32_t *ids = NULL;
            size_t k = 0;
            if (qv_tokenizer_encode(t, text + start, p - start, false, &ids, &k, &err)) {
                fprintf(stderr, "encode: %s\n", err.msg);
                return 1;
            }
            total += k;
            qv_free(ids);
            start = p;
        }
        double dt = qv_time_s() - t0;
        if (dt < best) best = dt;
        n_ids = total;
    }
    printf("quiver encode (4 KiB chunks): %zu ids, best of %d: %.3f s = %.2f MB/s\n", n_ids, runs,
           best, (double)n / 1e6 / best);
    if (adv) adversarial(t, runs);
    qv_tokenizer_free(t);
    free(text);
    return 0;
}
