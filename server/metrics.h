/*
 * metrics.h - the server's Prometheus metrics: request counts by HTTP status, TTFT / TPOT /
 * end-to-end latency histograms, token counters and gauges (queue depth, running sequences,
 * KV pages), rendered as Prometheus text exposition format.
 *
 * Not here: HTTP or engine access; callers push numbers in.
 * Thread: every function may be called from any thread (one mutex inside).
 */
#ifndef QV_SERVER_METRICS_H
#define QV_SERVER_METRICS_H

#include <stddef.h>

typedef struct qv_metrics qv_metrics;

/* Owner: caller (qv_metrics_destroy). Returns NULL when out of memory. */
qv_metrics *qv_metrics_create(void);
/* Accepts NULL. */
void qv_metrics_destroy(qv_metrics *m);

/* One finished HTTP request on a generation endpoint (or any endpoint: ttft_s/tpot_s < 0
 * skip those histograms). */
void qv_metrics_request(qv_metrics *m, int http_status, int n_in, int n_out, double ttft_s,
                        double tpot_s, double e2e_s);
/* Gauges, overwritten by the engine thread after each step. */
void qv_metrics_gauges(qv_metrics *m, int queue_depth, int running, int kv_used, int kv_total);

/* Renders the exposition text. Owner: caller (qv_free). NULL when out of memory. */
char *qv_metrics_render(qv_metrics *m, size_t *len);

#endif
