/*
 * tenant.c - tenants (tenant.h): policies parsed from --api-keys-file options, token buckets
 * for request and token rates, in-flight counts, and the virtual token counters of the fair
 * share. One mutex guards the table; every operation is a few arithmetic steps under it.
 */
#include "server/tenant.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/core.h"

enum { OPT_WEIGHT = 0, OPT_RPM, OPT_TPM, OPT_INFLIGHT, OPT_PRIORITY, N_OPTS };
static const char *const opt_names[N_OPTS] = {"weight", "rpm", "tpm", "max_inflight", "priority"};

typedef struct tenant {
    char name[QV_TENANT_NAME_MAX + 1];
    double opt[N_OPTS]; /* the policy, indexed by OPT_* */
    bool opt_set[N_OPTS];
    bool priority_free;
    /* buckets: what is left, and when they were last refilled (< 0: never, i.e. full) */
    double req_left, tok_left, refilled;
    int inflight;
    /* fair share */
    int active; /* requests in the server's queues or in the engine */
    double vtc;
    /* counters */
    unsigned long long requests, refused[QV_TENANT_N_REFUSALS], prompt_tokens, gen_tokens;
} tenant;

struct qv_tenants {
    pthread_mutex_t mu;
    tenant *t; /* QV_TENANT_MAX entries, allocated once: an index is valid for the table's life */
    int n;
    double last_idle_vtc; /* the counter of the last tenant that went idle */
};

static bool name_valid(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > QV_TENANT_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* The default policy: weight 1, no limits, priority floor 0 (tenant 0: no floor). */
static void policy_reset(tenant *t, bool is_default) {
    memset(t->opt, 0, sizeof(t->opt));
    memset(t->opt_set, 0, sizeof(t->opt_set));
    t->opt[OPT_WEIGHT] = 1.0;
    t->priority_free = is_default;
}

static int add_locked(qv_tenants *ts, const char *name) {
    if (ts->n == QV_TENANT_MAX) return -1;
    tenant *t = &ts->t[ts->n];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    policy_reset(t, ts->n == 0);
    t->refilled = -1.0;
    return ts->n++;
}

qv_tenants *qv_tenants_create(void) {
    qv_tenants *ts = qv_calloc(1, sizeof(*ts));
    if (!ts) return NULL;
    pthread_mutex_init(&ts->mu, NULL);
    ts->t = qv_calloc(QV_TENANT_MAX, sizeof(*ts->t));
    if (!ts->t || add_locked(ts, "default") != 0) {
        qv_tenants_destroy(ts);
        return NULL;
    }
    return ts;
}

void qv_tenants_destroy(qv_tenants *ts) {
    if (!ts) return;
    pthread_mutex_destroy(&ts->mu);
    qv_free(ts->t);
    qv_free(ts);
}

int qv_tenants_count(qv_tenants *ts) {
    pthread_mutex_lock(&ts->mu);
    int n = ts->n;
    pthread_mutex_unlock(&ts->mu);
    return n;
}

int qv_tenants_get(qv_tenants *ts, const char *name, char *msg, size_t msg_len) {
    if (!name_valid(name)) {
        snprintf(msg, msg_len, "'%.80s' is not a valid tenant name (1-%d of A-Z a-z 0-9 . _ -)",
                 name, QV_TENANT_NAME_MAX);
        return -1;
    }
    pthread_mutex_lock(&ts->mu);
    int found = -1;
    for (int i = 0; i < ts->n && found < 0; i++)
        if (!strcmp(ts->t[i].name, name)) found = i;
    if (found < 0 && (found = add_locked(ts, name)) < 0)
        snprintf(msg, msg_len, "more than %d tenants", QV_TENANT_MAX);
    pthread_mutex_unlock(&ts->mu);
    return found;
}

bool qv_tenants_option(qv_tenants *ts, int t, const char *opt, char *msg, size_t msg_len) {
    const char *eq = strchr(opt, '=');
    int k = -1;
    for (int i = 0; eq && i < N_OPTS; i++)
        if (strlen(opt_names[i]) == (size_t)(eq - opt) && !strncmp(opt, opt_names[i], eq - opt))
            k = i;
    if (k < 0) {
        snprintf(msg, msg_len,
                 "unknown option '%.80s' (tenant=, weight=, rpm=, tpm=, max_inflight=, "
                 "priority=)",
                 opt);
        return false;
    }
    char *end = NULL;
    double v = strtod(eq + 1, &end);
    bool ok = eq[1] && end && !*end && isfinite(v);
    if (ok && k == OPT_WEIGHT) ok = v > 0 && v <= 1e6;
    if (ok && (k == OPT_RPM || k == OPT_TPM)) ok = v >= 0 && v <= 1e12;
    if (ok && (k == OPT_INFLIGHT || k == OPT_PRIORITY)) ok = v == floor(v);
    if (ok && k == OPT_INFLIGHT) ok = v >= 0 && v <= INT_MAX;
    if (ok && k == OPT_PRIORITY) ok = fabs(v) <= 1e9;
    if (!ok) {
        snprintf(msg, msg_len, "'%.80s': %s", opt,
                 k == OPT_WEIGHT     ? "weight must be a number in (0, 1e6]"
                 : k == OPT_PRIORITY ? "priority must be an integer in [-1e9, 1e9]"
                 : k == OPT_INFLIGHT ? "max_inflight must be a whole number >= 0"
                                     : "the rate must be a number >= 0");
        return false;
    }
    pthread_mutex_lock(&ts->mu);
    tenant *tn = &ts->t[t];
    if (t == 0) {
        snprintf(msg, msg_len,
                 "tenant 'default' has no limits; name another tenant for %s=", opt_names[k]);
        pthread_mutex_unlock(&ts->mu);
        return false;
    }
    ok = !tn->opt_set[k] || tn->opt[k] == v;
    if (ok) {
        tn->opt[k] = v;
        tn->opt_set[k] = true;
        if (k == OPT_PRIORITY) tn->priority_free = false;
    } else {
        snprintf(msg, msg_len, "tenant '%s' has %s=%g already", tn->name, opt_names[k], tn->opt[k]);
    }
    pthread_mutex_unlock(&ts->mu);
    return ok;
}

void qv_tenants_policy(qv_tenants *ts, int t, qv_tenant_policy *out) {
    pthread_mutex_lock(&ts->mu);
    const tenant *tn = &ts->t[t];
    out->weight = tn->opt[OPT_WEIGHT];
    out->rpm = tn->opt[OPT_RPM];
    out->tpm = tn->opt[OPT_TPM];
    out->max_inflight = (int)tn->opt[OPT_INFLIGHT];
    out->priority = (int)tn->opt[OPT_PRIORITY];
    out->priority_free = tn->priority_free;
    pthread_mutex_unlock(&ts->mu);
}

const char *qv_tenants_name(const qv_tenants *ts, int t) { return ts->t[t].name; }

/* The request bucket's size: one minute's allowance, and at least one request (rpm=0.5 is one
 * request every two minutes). */
static double req_cap(const tenant *t) { return QV_MAX(t->opt[OPT_RPM], 1.0); }

/* Brings both buckets up to `now`: each holds at most one minute's allowance. Every change of
 * a bucket (arrival, generated tokens, a new policy) refills it first, so time that a full
 * bucket could not store is never credited later. */
static void refill(tenant *t, double now) {
    const double rpm = t->opt[OPT_RPM], tpm = t->opt[OPT_TPM];
    if (t->refilled < 0) {
        t->req_left = req_cap(t);
        t->tok_left = tpm;
    } else if (now > t->refilled) {
        const double dt = now - t->refilled;
        t->req_left = QV_MIN(req_cap(t), t->req_left + dt * rpm / 60.0);
        t->tok_left = QV_MIN(tpm, t->tok_left + dt * tpm / 60.0);
    }
    t->refilled = QV_MAX(now, t->refilled);
}

bool qv_tenants_adopt(qv_tenants *ts, qv_tenants *from, int *map, double now, char *msg,
                      size_t msg_len) {
    pthread_mutex_lock(&from->mu);
    pthread_mutex_lock(&ts->mu);
    bool ok = true;
    int n_new = 0;
    for (int i = 1; i < from->n; i++) {
        bool known = false;
        for (int j = 1; j < ts->n && !known; j++)
            known = !strcmp(ts->t[j].name, from->t[i].name);
        n_new += !known;
    }
    if (ts->n + n_new > QV_TENANT_MAX) {
        snprintf(msg, msg_len, "more than %d tenants since start-up (restart to forget old ones)",
                 QV_TENANT_MAX);
        ok = false;
    }
    bool kept[QV_TENANT_MAX] = {false};
    map[0] = 0;
    for (int i = 1; ok && i < from->n; i++) {
        int j = 1;
        while (j < ts->n && strcmp(ts->t[j].name, from->t[i].name) != 0)
            j++;
        if (j == ts->n) j = add_locked(ts, from->t[i].name);
        tenant *dst = &ts->t[j];
        const tenant *src = &from->t[i];
        if (dst->refilled >= 0) refill(dst, now); /* the old rates up to now */
        const double old_rpm = dst->opt[OPT_RPM], old_tpm = dst->opt[OPT_TPM];
        memcpy(dst->opt, src->opt, sizeof(dst->opt));
        memcpy(dst->opt_set, src->opt_set, sizeof(dst->opt_set));
        dst->priority_free = src->priority_free;
        /* a bucket keeps what is left, within the new allowance; a new limit starts full */
        dst->req_left = old_rpm > 0 ? QV_MIN(dst->req_left, req_cap(dst)) : req_cap(dst);
        dst->tok_left = old_tpm > 0 ? QV_MIN(dst->tok_left, src->opt[OPT_TPM]) : src->opt[OPT_TPM];
        kept[j] = true;
        map[i] = j;
    }
    for (int j = 1; ok && j < ts->n; j++)
        if (!kept[j]) policy_reset(&ts->t[j], false);
    pthread_mutex_unlock(&ts->mu);
    pthread_mutex_unlock(&from->mu);
    return ok;
}

/* Whole seconds (>= 1) until a bucket refilled at `per_min` goes from `left` to `need`. */
static int wait_s(double left, double need, double per_min) {
    double s = (need - left) * 60.0 / per_min;
    return s < 1 ? 1 : s > 86400 ? 86400 : (int)ceil(s);
}

enum qv_tenant_refusal qv_tenants_arrive(qv_tenants *ts, int t, int n_prompt, double now,
                                         int *retry_after_s, char *msg, size_t msg_len) {
    pthread_mutex_lock(&ts->mu);
    tenant *tn = &ts->t[t];
    refill(tn, now);
    const double rpm = tn->opt[OPT_RPM], tpm = tn->opt[OPT_TPM];
    const int max_inflight = (int)tn->opt[OPT_INFLIGHT];
    enum qv_tenant_refusal why = QV_TENANT_OK;
    if (max_inflight > 0 && tn->inflight >= max_inflight) {
        why = QV_TENANT_INFLIGHT;
        *retry_after_s = 1;
        snprintf(msg, msg_len,
                 "tenant '%s' has %d requests in flight, its limit; retry when one finishes",
                 tn->name, tn->inflight);
    } else if (rpm > 0 && tn->req_left < 1.0) {
        why = QV_TENANT_RATE;
        *retry_after_s = wait_s(tn->req_left, 1.0, rpm);
        snprintf(msg, msg_len, "tenant '%s' is over its limit of %g requests per minute", tn->name,
                 rpm);
    } else if (tpm > 0 && tn->tok_left <= 0) {
        why = QV_TENANT_TOKENS;
        *retry_after_s = wait_s(tn->tok_left, 1.0, tpm);
        snprintf(msg, msg_len, "tenant '%s' is over its limit of %g tokens per minute", tn->name,
                 tpm);
    }
    if (why == QV_TENANT_OK) {
        if (rpm > 0) tn->req_left -= 1.0;
        if (tpm > 0) tn->tok_left -= n_prompt;
        tn->inflight++;
        tn->requests++;
        tn->prompt_tokens += (unsigned long long)n_prompt;
    } else {
        tn->refused[why]++;
    }
    pthread_mutex_unlock(&ts->mu);
    return why;
}

void qv_tenants_prompt(qv_tenants *ts, int t, int n_prompt) {
    pthread_mutex_lock(&ts->mu);
    tenant *tn = &ts->t[t];
    if (tn->opt[OPT_TPM] > 0) tn->tok_left -= n_prompt;
    tn->prompt_tokens += (unsigned long long)n_prompt;
    pthread_mutex_unlock(&ts->mu);
}

void qv_tenants_unarrive(qv_tenants *ts, int t, int n_prompt) {
    pthread_mutex_lock(&ts->mu);
    tenant *tn = &ts->t[t];
    if (tn->opt[OPT_RPM] > 0) tn->req_left += 1.0;
    if (tn->opt[OPT_TPM] > 0) tn->tok_left += n_prompt;
    tn->inflight--;
    tn->requests--;
    tn->prompt_tokens -= (unsigned long long)n_prompt;
    pthread_mutex_unlock(&ts->mu);
}

void qv_tenants_leave(qv_tenants *ts, int t) {
    pthread_mutex_lock(&ts->mu);
    QV_ASSERT(ts->t[t].inflight > 0);
    ts->t[t].inflight--;
    pthread_mutex_unlock(&ts->mu);
}

void qv_tenants_activate(qv_tenants *ts, int t) {
    pthread_mutex_lock(&ts->mu);
    tenant *tn = &ts->t[t];
    if (tn->active == 0) {
        double floor_vtc = ts->last_idle_vtc;
        bool busy = false;
        for (int i = 0; i < ts->n; i++)
            if (i != t && ts->t[i].active > 0) {
                floor_vtc = busy ? QV_MIN(floor_vtc, ts->t[i].vtc) : ts->t[i].vtc;
                busy = true;
            }
        tn->vtc = QV_MAX(tn->vtc, floor_vtc);
    }
    tn->active++;
    pthread_mutex_unlock(&ts->mu);
}

void qv_tenants_deactivate(qv_tenants *ts, int t) {
    pthread_mutex_lock(&ts->mu);
    tenant *tn = &ts->t[t];
    QV_ASSERT(tn->active > 0);
    if (--tn->active == 0) ts->last_idle_vtc = tn->vtc;
    pthread_mutex_unlock(&ts->mu);
}

void qv_tenants_served(qv_tenants *ts, int t, int n_prompt, int n_gen, double now) {
    pthread_mutex_lock(&ts->mu);
    tenant *tn = &ts->t[t];
    tn->vtc += ((double)n_prompt + QV_TENANT_GEN_COST * (double)n_gen) / tn->opt[OPT_WEIGHT];
    if (tn->opt[OPT_TPM] > 0 && n_gen) {
        refill(tn, now);
        tn->tok_left -= n_gen;
    }
    tn->gen_tokens += (unsigned long long)n_gen;
    pthread_mutex_unlock(&ts->mu);
}

double qv_tenants_vtc(qv_tenants *ts, int t) {
    pthread_mutex_lock(&ts->mu);
    double v = ts->t[t].vtc;
    pthread_mutex_unlock(&ts->mu);
    return v;
}

int qv_tenants_snapshot(qv_tenants *ts, qv_tenant_stats *out, int cap) {
    pthread_mutex_lock(&ts->mu);
    int n = QV_MIN(cap, ts->n);
    for (int i = 0; i < n; i++) {
        const tenant *tn = &ts->t[i];
        qv_tenant_stats *s = &out[i];
        memcpy(s->name, tn->name, sizeof(s->name));
        s->weight = tn->opt[OPT_WEIGHT];
        s->vtc = tn->vtc;
        s->requests = tn->requests;
        memcpy(s->refused, tn->refused, sizeof(s->refused));
        s->prompt_tokens = tn->prompt_tokens;
        s->generation_tokens = tn->gen_tokens;
        s->inflight = tn->inflight;
    }
    pthread_mutex_unlock(&ts->mu);
    return n;
}
