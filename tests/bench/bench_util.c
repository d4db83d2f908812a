/*
 * bench_util.c - the helpers of bench_util.h.
 */
#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>

const char *bench_default_model(char *buf, size_t cap) {
    const char *home = getenv("QUIVER_HOME");
    if (home)
        snprintf(buf, cap, "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", home);
    else
        snprintf(buf, cap, "%s/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                 getenv("HOME") ? getenv("HOME") : "");
    return buf;
}

int bench_cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof(double), bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
