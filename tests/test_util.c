/* test_util.c - see test_util.h. */
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "adapters/adapters.h"

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

qv_adapter *qv_test_make_lora(const qv_model *m, int rank, float scale, float *vals, size_t n_vals,
                              unsigned seed) {
    const qv_model_config *c = &m->cfg;
    qv_adapter *ad = calloc(1, sizeof(*ad));
    if (!ad || !(ad->layers = calloc((size_t)c->n_layers, sizeof(qv_adapter_layer)))) abort();
    ad->kind = QV_ADAPTER_LORA;
    ad->n_layers = c->n_layers;
    ad->dim = c->dim;
    ad->n_vocab = c->n_vocab;
    ad->n_kv_heads = c->n_kv_heads;
    ad->head_dim = c->head_dim;
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < QV_PROJ_COUNT; p++) {
            qv_lora *lo = &ad->layers[l].lora[p];
            lo->rank = rank;
            lo->scale = scale;
            lo->n_in = qv_proj_n_in(c, (enum qv_proj)p);
            lo->n_out = qv_proj_n_out(c, (enum qv_proj)p);
            lo->wtype = QV_DTYPE_F32;
            seed = seed * 1664525u + 1013904223u;
            lo->a = vals + (seed >> 8) % (n_vals - (size_t)rank * (size_t)lo->n_in);
            seed = seed * 1664525u + 1013904223u;
            lo->b = vals + (seed >> 8) % (n_vals - (size_t)lo->n_out * (size_t)rank);
            ad->n_bytes += 4u * (size_t)rank * (size_t)(lo->n_in + lo->n_out);
        }
    return ad;
}

void qv_test_free_lora(qv_adapter *ad) {
    if (!ad) return;
    free(ad->layers);
    free(ad);
}
