/*
 * tenant.h - tenants: the accounting unit behind API keys (an --api-keys-file line's
 * `tenant=NAME`), and what each gets: a weighted fair share of the engine, request and token
 * rate limits, a cap on requests in flight, and a priority floor.
 *
 * Fair share (S-LoRA's virtual token counter, VTC): every tenant has a counter that grows by
 * (prompt tokens + 2 x generated tokens) / weight as the engine serves it. When the engine has
 * room, the server admits the waiting request of the most urgent priority whose tenant has the
 * smallest counter (arrival order within a tenant, and between equal counters). A tenant that
 * had nothing queued or running is lifted, when a request of its arrives, to the smallest
 * counter of the busy tenants (to the counter of the last one to go idle when none is busy): idle
 * time banks no credit, and a busy tenant cannot starve a newcomer.
 *
 * Limits: request and token rates are token buckets holding one minute's allowance, full at
 * start and refilled continuously. A request is accepted while its tenant's request bucket holds
 * one request and its token bucket is not in debt; its prompt tokens are taken at arrival and
 * its generated tokens as they come (so the token bucket may go into debt, and the next requests
 * wait until it is paid back). Refusals say when to retry.
 *
 * Tenant 0 is "default": the --api-key / --admin-key holders, keys-file keys without a
 * tenant=, or everyone without keys; it has no limits and no priority floor.
 *
 * Thread: every function is safe from any thread (one mutex inside); the server calls the
 * scheduling ones (activate, deactivate, served, vtc) from its engine thread.
 */
#ifndef QV_SERVER_TENANT_H
#define QV_SERVER_TENANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QV_TENANT_NAME_MAX 64 /* [A-Za-z0-9._-], 1-64 characters */
#define QV_TENANT_MAX 256     /* tenants per server (bounded metric labels) */
#define QV_TENANT_GEN_COST 2  /* a generated token counts as two prompt tokens in the VTC */

typedef struct qv_tenants qv_tenants;

/* Owner: caller (qv_tenants_destroy). Holds tenant 0, "default". NULL when out of memory. */
qv_tenants *qv_tenants_create(void);
/* Accepts NULL. */
void qv_tenants_destroy(qv_tenants *ts);

int qv_tenants_count(qv_tenants *ts);
/* The index of the tenant called `name`, created with the default policy when new; -1 with a
 * message when the name is not valid or the table is full. */
int qv_tenants_get(qv_tenants *ts, const char *name, char *msg, size_t msg_len);
/* Applies one "option=value" to tenant t: weight=W (> 0, default 1), rpm=N (requests per
 * minute), tpm=N (tokens per minute), max_inflight=N (queued + running requests), priority=P
 * (the most urgent priority the tenant may ask for, and its requests' default; default 0).
 * N = 0 means no limit; a rate below one a minute still lets one request through (the bucket
 * holds at least one). Tenant 0 ("default") takes no options. A tenant named on several key lines
 * may repeat an option only with the same value. False with a message. */
bool qv_tenants_option(qv_tenants *ts, int t, const char *opt, char *msg, size_t msg_len);
/* The policy's numbers, for start-up lines and tests. */
typedef struct qv_tenant_policy {
    double weight, rpm, tpm;
    int max_inflight;
    int priority;       /* floor and default */
    bool priority_free; /* no floor (tenant 0) */
} qv_tenant_policy;
void qv_tenants_policy(qv_tenants *ts, int t, qv_tenant_policy *out);
/* Tenant t's name (fixed for the table's life). */
const char *qv_tenants_name(const qv_tenants *ts, int t);
/* Takes the policies of `from` (the tenants of a re-read keys file, built with get and option):
 * each of its tenants is found here by name or added, and gets its policy; the tenants here
 * that `from` lacks (tenant 0 aside) get the default policy. Indices, counters and fair-share
 * state are kept (a tenant's buckets keep what is left, within the new allowance), so requests
 * in flight are unaffected. map[i] receives the index here of `from`'s tenant i. False (nothing
 * changed) with a message when the table would exceed QV_TENANT_MAX. */
bool qv_tenants_adopt(qv_tenants *ts, qv_tenants *from, int *map, double now, char *msg,
                      size_t msg_len);

/* Admission limits, checked at a request's arrival. */
enum qv_tenant_refusal {
    QV_TENANT_OK = 0,
    QV_TENANT_RATE,     /* rpm: no request left in the bucket */
    QV_TENANT_TOKENS,   /* tpm: the token bucket is in debt */
    QV_TENANT_INFLIGHT, /* max_inflight requests queued or running */
    QV_TENANT_N_REFUSALS
};
/* A new request with `n_prompt` tokens at time `now` (seconds, monotonic): takes one request,
 * the prompt's tokens and an in-flight place, or (refused) takes nothing and sets
 * *retry_after_s (whole seconds, >= 1) and a message. */
enum qv_tenant_refusal qv_tenants_arrive(qv_tenants *ts, int t, int n_prompt, double now,
                                         int *retry_after_s, char *msg, size_t msg_len);
/* The prompt of an arrival taken with n_prompt 0 (the limits are checked before the prompt is
 * tokenized): its tokens come out of the token bucket (which may go into debt). */
void qv_tenants_prompt(qv_tenants *ts, int t, int n_prompt);
/* Gives back what an accepted arrival took (and n_prompt tokens charged since), for a request
 * that never got queued. */
void qv_tenants_unarrive(qv_tenants *ts, int t, int n_prompt);
/* An accepted request is over (finished, failed or cancelled): frees its in-flight place. */
void qv_tenants_leave(qv_tenants *ts, int t);

/* Fair share. activate: a request of tenant t joined the server's queues (lifts an idle
 * tenant); deactivate: it left them for good. served: the engine took n_prompt prompt tokens
 * and produced n_gen tokens for tenant t (its counter grows; generated tokens also come out of
 * its token bucket). vtc: tenant t's counter now. */
void qv_tenants_activate(qv_tenants *ts, int t);
void qv_tenants_deactivate(qv_tenants *ts, int t);
void qv_tenants_served(qv_tenants *ts, int t, int n_prompt, int n_gen, double now);
double qv_tenants_vtc(qv_tenants *ts, int t);

/* Counters of one tenant for /metrics. */
typedef struct qv_tenant_stats {
    char name[QV_TENANT_NAME_MAX + 1];
    double weight, vtc;
    unsigned long long requests; /* accepted */
    unsigned long long refused[QV_TENANT_N_REFUSALS];
    unsigned long long prompt_tokens, generation_tokens;
    int inflight;
} qv_tenant_stats;
/* Fills up to `cap` rows; returns how many. */
int qv_tenants_snapshot(qv_tenants *ts, qv_tenant_stats *out, int cap);

#endif
