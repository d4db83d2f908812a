/*
 * bench_util.h - what the CPU benchmarks (tests/bench/bench_*.c) share: the default model's
 * path, and medians of timing ratios.
 *
 * Not a library: linked into every benchmark executable only. Thread: any.
 */
#ifndef QV_BENCH_UTIL_H
#define QV_BENCH_UTIL_H

#include <stddef.h>

/* $QUIVER_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf, else under ~/.cache/quiver (where
 * deploy/fetch-model.sh puts it), written to buf[cap]; returns buf. */
const char *bench_default_model(char *buf, size_t cap);

/* qsort comparator of doubles, ascending. */
int bench_cmp_double(const void *a, const void *b);

/* The median of v[n] (n >= 1); sorts v. */
double bench_median(double *v, int n);

#endif /* QV_BENCH_UTIL_H */
