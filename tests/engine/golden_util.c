/* golden_util.c - see golden_util.h. */
#include "golden_util.h"

#include "test_util.h"

int golden_open(golden_runner *r, const char *path, int n_threads, int n_pages, int page_size,
                int max_tokens) {
    return golden_open_kv(r, path, n_threads, n_pages, page_size, max_tokens, false);
}

int golden_open_kv(golden_runner *r, const char *path, int n_threads, int n_pages, int page_size,
                   int max_tokens, bool kv_bf16) {
    memset(r, 0, sizeof(*r));
    qv_error err = {0};
    if (qv_model_load(path, &r->m, &err) != QV_OK) {
        fprintf(stderr, "load %s: %s\n", path, err.msg);
        return -1;
    }
    if (qv_backend_cpu_create(n_threads, &r->be, &err) != QV_OK) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    qv_backend_cpu_set_kv_bf16(r->be, kv_bf16);
    if (qv_kv_cache_create(r->be, &r->m->cfg, n_pages, page_size, &r->kv, &err) != QV_OK ||
        qv_forward_create(r->m, r->be, r->kv, max_tokens, &r->fwd, &err) != QV_OK) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    return 0;
}

void golden_close(golden_runner *r) {
    qv_forward_destroy(r->fwd);
    qv_kv_cache_destroy(r->kv);
    if (r->be) r->be->iface->destroy(r->be);
    qv_model_free(r->m);
    memset(r, 0, sizeof(*r));
}

/* Feeds tokens [pos0, pos0+n) of one sequence; logits of every fed token when all_logits,
 * else only of the last one. Returns 0 on success. */
int golden_feed(golden_runner *r, qv_kv_seq *seq, const int32_t *ids, int n, int pos0,
                int all_logits, float *logits) {
    return golden_feed_adapter(r, seq, NULL, 0, ids, n, pos0, all_logits, logits);
}

int golden_feed_adapter(golden_runner *r, qv_kv_seq *seq, const struct qv_adapter *ad, int act,
                        const int32_t *ids, int n, int pos0, int all_logits, float *logits) {
    qv_error err = {0};
    if (qv_kv_seq_reserve(r->kv, seq, pos0 + n) != QV_OK) return -1;
    int32_t *pos = malloc((size_t)n * sizeof(int32_t));
    int32_t *sq = calloc((size_t)n, sizeof(int32_t));
    int32_t *li = malloc((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) {
        pos[i] = pos0 + i;
        li[i] = i;
    }
    const qv_kv_seq *seqs[1] = {seq};
    /* positions before act in a segment without the adapter, the rest in one with it */
    const int n_base = ad ? QV_MAX(0, QV_MIN(n, act - pos0)) : 0;
    const int32_t seg_start[3] = {0, n_base ? n_base : n, n};
    const struct qv_adapter *seg_ad[2] = {n_base ? NULL : ad, ad};
    qv_batch b = {.n_tokens = n,
                  .tokens = ids,
                  .pos = pos,
                  .seq = sq,
                  .n_seqs = 1,
                  .seqs = seqs,
                  .n_logits = all_logits ? n : 1,
                  .logits_idx = all_logits ? li : li + (n - 1),
                  .n_segs = !ad                    ? 0
                            : n_base && n_base < n ? 2
                                                   : 1,
                  .seg_start = ad ? seg_start : NULL,
                  .seg_adapter = ad ? seg_ad : NULL};
    qv_status st = qv_forward_run(r->fwd, &b, logits, &err);
    if (st != QV_OK) fprintf(stderr, "forward: %s\n", err.msg);
    free(pos);
    free(sq);
    free(li);
    return st == QV_OK ? 0 : -1;
}

int json_f32_array(const cJSON *a, float *out, int n) {
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != n) return -1;
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, a) out[i++] = (float)it->valuedouble;
    return 0;
}

int32_t *json_i32_array(const cJSON *a, int *n) {
    if (!cJSON_IsArray(a)) return NULL;
    *n = cJSON_GetArraySize(a);
    int32_t *v = malloc((size_t)(*n ? *n : 1) * sizeof(int32_t));
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, a) v[i++] = (int32_t)it->valueint;
    return v;
}

int argmax_f32(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

cJSON *json_read_fixture(const char *rel) {
    char *text = NULL;
    qv_error err = {0};
    if (qv_read_file(qv_test_path(rel), 64u << 20, &text, NULL, &err) != QV_OK) {
        fprintf(stderr, "%s: %s\n", rel, err.msg);
        return NULL;
    }
    cJSON *root = cJSON_Parse(text);
    qv_free(text);
    if (!root) fprintf(stderr, "%s: not JSON\n", rel);
    return root;
}

size_t hex_decode(const char *h, uint8_t *out, size_t cap) {
    const size_t n = strlen(h) / 2;
    if (n > cap || strlen(h) % 2) return SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(h + 2 * i, "%2x", &v) != 1) return SIZE_MAX;
        out[i] = (uint8_t)v;
    }
    return n;
}
