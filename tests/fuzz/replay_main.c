/*
 * replay_main.c - a libFuzzer-compatible driver for builds without libFuzzer.
 *
 * Runs LLVMFuzzerTestOneInput on every file of the corpus directory given as argv[1], then on
 * QV_FUZZ_ITERS (default 2000) seeded random mutations of those files (byte flips, truncation,
 * insertion, splicing). Deterministic: the seed is fixed unless QV_FUZZ_SEED is set. Any crash
 * or sanitizer report fails the ctest run.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    uint8_t *data;
    size_t size;
} blob;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

int main(int argc, char **argv) {
    blob *seeds = NULL;
    size_t n_seeds = 0;
    if (argc > 1) {
        DIR *d = opendir(argv[1]);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d))) {
                if (e->d_name[0] == '.') continue;
                char path[4096];
                snprintf(path, sizeof(path), "%s/%s", argv[1], e->d_name);
                FILE *f = fopen(path, "rb");
                if (!f) continue;
                fseek(f, 0, SEEK_END);
                long n = ftell(f);
                fseek(f, 0, SEEK_SET);
                if (n < 0 || n > (64 << 20)) {
                    fclose(f);
                    continue;
                }
                uint8_t *buf = malloc((size_t)n + 1);
                if (fread(buf, 1, (size_t)n, f) != (size_t)n) n = 0;
                fclose(f);
                seeds = realloc(seeds, (n_seeds + 1) * sizeof(*seeds));
                seeds[n_seeds].data = buf;
                seeds[n_seeds].size = (size_t)n;
                n_seeds++;
            }
            closedir(d);
        }
    }
    for (size_t i = 0; i < n_seeds; i++)
        LLVMFuzzerTestOneInput(seeds[i].data, seeds[i].size);
    const char *it = getenv("QV_FUZZ_ITERS");
    long iters = it ? atol(it) : 2000;
    const char *sd = getenv("QV_FUZZ_SEED");
    if (sd) rng_state = strtoull(sd, NULL, 10) | 1;
    uint8_t empty = 0;
    for (long k = 0; k < iters; k++) {
        blob s = n_seeds ? seeds[rnd() % n_seeds] : (blob){&empty, 0};
        size_t cap = s.size + 64;
        uint8_t *buf = malloc(cap);
        memcpy(buf, s.data, s.size);
        size_t n = s.size;
        int n_mut = 1 + (int)(rnd() % 8);
        for (int m = 0; m < n_mut; m++) {
            switch (rnd() % 5) {
            case 0:
                if (n) buf[rnd() % n] ^= (uint8_t)(1u << (rnd() % 8));
                break;
            case 1:
                if (n) buf[rnd() % n] = (uint8_t)rnd();
                break;
            case 2:
                if (n) n = rnd() % n;
                break;
            case 3:
                if (n < cap) {
                    size_t p = n ? rnd() % n : 0;
                    memmove(buf + p + 1, buf + p, n - p);
                    buf[p] = (uint8_t)rnd();
                    n++;
                }
                break;
            case 4:
                if (n >= 8) {
                    size_t p = rnd() % (n - 7);
                    uint64_t v = rnd() % 3 == 0 ? ~0ull : rnd();
                    memcpy(buf + p, &v, 8);
                }
                break;
            }
        }
        LLVMFuzzerTestOneInput(buf, n);
        free(buf);
    }
    printf("replayed %zu seeds and %ld mutations\n", n_seeds, iters);
    for (size_t i = 0; i < n_seeds; i++)
        free(seeds[i].data);
    free(seeds);
    return 0;
}
