/* test_util.c - see test_util.h. */
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

const char *qv_test_path(const char *rel) {
    static char bufs[8][4096];
    static int next;
    char *b = bufs[next++ & 7];
    const char *root = getenv("QV_SOURCE_DIR");
    if (!root) root = QV_SOURCE_DIR;
    snprintf(b, 4096, "%s/%s", root, rel);
    return b;
}

bool qv_test_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

size_t qv_test_compare_f32(const char *label, const float *got, const float *want, size_t n,
                           double atol, double rtol) {
    size_t fails = 0, worst = 0;
    double worst_excess = -1.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        double tol = atol + rtol * fabs((double)want[i]);
        bool bad = !(d <= tol); /* NaN counts as a failure */
        if (bad) fails++;
        double excess = isnan(d) ? (double)INFINITY : d - tol;
        if (excess > worst_excess) {
            worst_excess = excess;
            worst = i;
        }
    }
    if (n) {
        double d = fabs((double)got[worst] - (double)want[worst]);
        fprintf(fails ? stderr : stdout,
                "%s: %zu/%zu outside tolerance; worst [%zu] got %.9g want %.9g abs %.3g rel %.3g\n",
                label, fails, n, worst, (double)got[worst], (double)want[worst], d,
                d / fmax(fabs((double)want[worst]), 1e-30));
    }
    return fails;
}

double qv_test_max_rel_err(const float *got, const float *want, size_t n) {
    double scale = 1e-30, worst = 0.0;
    for (size_t i = 0; i < n; i++)
        scale = fmax(scale, fabs((double)want[i]));
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (isnan(d)) return (double)INFINITY;
        worst = fmax(worst, d / scale);
    }
    return worst;
}
