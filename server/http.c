/*
 * http.c - the HTTP server: libmicrohttpd threads route, authenticate, limit, decode and
 * tokenize requests, then hand them to the engine thread and suspend the connection; the
 * engine thread (a libuv loop on the thread that called qv_http_serve) admits them into the
 * engine, steps it while work exists, turns tokens into text (streaming detokenizer, stop
 * strings) and resumes the connection; the response is written by MHD from the request's
 * buffers (whole JSON, or SSE chunks drained by a content-reader callback).
 *
 * Not here: tensors, JSON layout (proto/), CLI flags (serve.c).
 *
 * Threads and ownership:
 *  - `request` is shared by one HTTP connection and the engine thread. Its `refs` count the
 *    connection context, the engine and the streaming response; the last release frees it.
 *    Fields marked [mu] are guarded by request.mu; [engine] are touched only by the engine
 *    thread; [http] only by MHD callbacks of its connection (one at a time); the rest are
 *    immutable once the request is queued.
 *  - The engine thread owns the engine, the pending FIFO and the running list. HTTP threads
 *    reach it only through the inbox (server.inbox_mu) and uv_async_send.
 *  - A connection is suspended only while request.suspended is set under request.mu and is
 *    resumed by whoever clears it, so suspend and resume always pair.
 *  - Adapters: the store (thread-safe) is read by HTTP threads (name resolution at arrival,
 *    listings, uploads streamed into store transactions). A finished upload is an admin_job:
 *    the engine thread queues it on its libuv worker pool (uv_queue_work), where the store
 *    commit runs the validator (the PEFT / AdapterHub loader against the base model: shapes,
 *    NaN/Inf, rank limit) and publishes; the after-callback, back on the engine thread,
 *    resumes the connection with the result. The registry is confined to the engine thread:
 *    a request naming an adapter acquires its version there (waiting in server.await_head
 *    while it loads; loader workers wake the loop through the same async handle) and releases
 *    it when the engine drops the request. Listings that show residency and deletes run on
 *    the engine thread as admin_jobs (same refcount and suspend/resume rules as `request`).
 *  - libmicrohttpd's own diagnostics go through qv_log (mhd_log): peers that vanish are debug
 *    lines, anything else a warning.
 */
#include "server/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "adapters/adapters.h"
#include "adapters/registry.h"
#include "adapters/store.h"
#include "engine/backend.h"
#include "engine/engine.h"
#include "engine/json_grammar.h"
#include "proto/proto.h"
#include "server/metrics.h"
#include "server/resp_store.h"
#include "server/tenant.h"
#include "qv_version.h" /* generated: QV_VERSION, QV_GIT_COMMIT */

typedef struct server server;
typedef struct log_reader log_reader;

/* One generated token of a TGI request. */
typedef struct gen_tok {
    int32_t id;
    bool special;
    float logprob;
    size_t text_end; /* request.out_len once its text was appended */
    int n_alt;
    int32_t alt_id[QV_PROTO_MAX_LOGPROBS];
    float alt_logprob[QV_PROTO_MAX_LOGPROBS];
} gen_tok;

/* merged_adapters: what a request merges, as resolved at arrival. These bytes are also the
 * registry's merge spec (qv_registry_acquire_merged), read by merge_adapters on a worker. */
typedef struct merge_spec {
    qv_merge_params p;
    char names[QV_MERGE_MAX][QV_STORE_NAME_MAX + 1];
    char versions[QV_MERGE_MAX][QV_STORE_VERSION_LEN + 1];
} merge_spec;

typedef struct request {
    server *srv;
    pthread_mutex_t mu; /* the lead's guards every member of its group (req_lock) */
    int refs;           /* [lead mu] */
    /* A request with n choices is a group of n members, each one engine sequence. The first,
     * the lead, holds the connection (conn, suspended, the stream's frame) and the mutex of
     * them all; every other member holds a reference on it. */
    struct request *lead;     /* itself for the lead */
    struct request **members; /* lead: members[0..n_members), members[0] = lead */
    int n_members;
    int index;          /* its choice index */
    bool counted_done;  /* [lead mu] counted in its lead's n_done_members */
    int n_done_members; /* [lead mu] lead: members done (the tenant place goes with the last) */
    int usage_prompt;   /* lead: prompt tokens of the request (each prompt of a batch once) */
    int prompt_no;      /* which prompt of the request (a batch's) it answers (immutable) */
    /* immutable once queued */
    char id[64];
    char *model_echo;
    char *adapter; /* name as requested (log line, metrics); NULL = base */
    char adapter_version[QV_STORE_VERSION_LEN + 1]; /* version it resolved to at arrival (a
                                                       merge: the merge's key) */
    merge_spec *merge; /* merged_adapters (adapter is then "merged(a+b+...)"), or NULL */
    enum qv_proto_endpoint endpoint;
    bool stream, include_usage, logprobs;
    bool continuous_usage; /* every chunk carries its choice's usage (vLLM) */
    int n_top;             /* alternatives per token in logprobs (0: the chosen token only) */
    int32_t *ids;
    size_t n_ids;
    qv_gen_params gp;
    char **stops;
    size_t n_stops;
    int32_t *stop_ids; /* stop_token_ids */
    size_t n_stop_ids;
    int32_t *allowed_ids;        /* allowed_token_ids (gp.allowed_ids points here) */
    int32_t *bad_ids, *bad_lens; /* bad_words as ids (gp.bad_word_* point here) */
    qv_token_bias *bias; /* logit_bias (gp.logit_bias points here until the engine copies it) */
    enum qv_proto_tool_choice tools; /* chat: the answer is tool calls (gp.json_schema) */
    char *tool_name;                 /* QV_PROTO_TOOLS_NAMED: the function */
    bool mistral_ids;   /* call ids of 9 letters and digits (Mistral's template needs them) */
    bool include_stop;  /* vLLM include_stop_str_in_output */
    bool eog_text;      /* ... with skip_special_tokens false: an end token's text ends it */
    bool tokens_as_ids; /* vLLM return_tokens_as_token_ids: logprobs name "token_id:<id>" */
    bool echo_only;     /* echo with max_tokens 0: the one token the engine makes is dropped */
    char *echo;         /* [mu] echoed prompt text not yet in out (it follows its logprobs) */
    size_t echo_len;
    int64_t created;
    double t_arrival;
    struct MHD_Connection *conn;
    int tenant;   /* server.tenants index */
    int priority; /* lower = admitted sooner */
    /* TGI / LoRAX (endpoint QV_PROTO_GENERATE) */
    bool tgi_details, tgi_in_list;
    char *tgi_inputs; /* return_full_text: the inputs, prepended to generated_text */
    /* [engine] */
    bool tenant_active; /* counted busy for its tenant's fair share (until engine_release) */
    /* [engine] */
    qv_registry_handle *ah; /* the adapter held while the request is queued or running */
    bool retry_on_release;  /* its version did not fit in memory: retry when a handle drops */
    char wait_version[QV_STORE_VERSION_LEN + 1]; /* in srv->await_head: the version (or merge
                                                    key) whose load it waits for */
    int seq_id;
    qv_detok *detok;
    bool in_engine; /* added and not yet cancelled or finished in the engine */
    bool stop_hit;  /* a stop string matched: cancel after this step */
    struct request *next;
    /* [mu] results */
    char *out; /* generated text so far (concatenation of valid UTF-8 pieces) */
    size_t out_len, out_cap;
    qv_proto_logprob *lps;
    size_t n_lps, cap_lps;
    bool prompt_in_lps; /* the prompt's logprobs lead lps (echo, TGI decoder_input_details) */
    bool plp;           /* vLLM prompt_logprobs: each prompt token's logprob and rank in plps */
    int plp_top;        /* ... with this many alternatives */
    qv_proto_logprob *plps;
    size_t n_plps, cap_plps;
    int n_gen;
    int cached;         /* [mu] prompt tokens from the engine's prefix cache (-1: not known yet) */
    const char *finish; /* "stop" / "length" once done */
    bool done, admitted, suspended;
    bool client_gone;    /* [mu] lead: its client closed the connection while it waited (written
                            by the engine thread only) */
    bool tenant_counted; /* holds an in-flight place of its tenant (until done or freed) */
    gen_tok *toks;       /* TGI: every generated token (ids, logprobs, where its text ends) */
    size_t n_toks, cap_toks;
    size_t toks_sent;       /* [http] TGI stream: events sent */
    const char *tgi_finish; /* "length", "eos_token", "stop_sequence" once done */
    int err_status;         /* != 0: the request failed with this HTTP status */
    char err_msg[384];
    const char *err_code;
    double t_first, t_done;
    /* [http] streaming state */
    size_t sent, lps_sent;
    /* "required" and "auto" streams: the client has the calls read from out[0..calls_read)
       (qv_proto_tool_calls_partial; 0: no call piece sent), kept in calls_had[0..n_calls_had) */
    size_t calls_read;
    qv_proto_tool_call *calls_had;
    size_t n_calls_had;
    /* Responses API (lead): the request's settings its response repeats, and what its stream
       has sent */
    char *resp_echo;
    char *resp_items;    /* the conversation's items up to this response's input */
    bool resp_keep;      /* to be kept in srv->resp_store once done */
    char resp_owner[65]; /* a digest of the API key that made it (resp_store's owner) */
    char conv_id[128];   /* `conversation`: its id, "" when none or once its items were added */
    size_t conv_prior;   /* items of resp_items that came from the conversation */
    qv_proto_response_stream rstream;
    /* `background: true` (lead): the request outlives its connection. The server's background
       list (server.bg_head) holds a reference until the engine is done with it; then it is
       kept, logged and counted. */
    bool background;
    bool cancelled;          /* [mu] POST /v1/responses/{id}/cancel (or a DELETE) ended it */
    bool forgotten;          /* [mu] a DELETE: nothing of it is kept */
    struct request *bg_next; /* [server.bg_mu] */
    char xrid[129];          /* background: the X-Request-Id its log line repeats */
    /* [mu] a background stream: every event made so far, in order, so that any client can read
       the stream from any event (GET /v1/responses/{id}?stream=true&starting_after=N); kept
       with the response once it ends */
    char *evlog;
    size_t evlog_len, evlog_cap;
    size_t *ev_at; /* where event i (sequence number i) starts in evlog */
    size_t n_ev, cap_ev;
    bool log_ended;             /* the last event (final or error) is in the log */
    struct log_reader *readers; /* [mu] the connections reading the log */
    bool stream_failed; /* [http] out of memory building a frame: the stream ends in error */
    bool sent_first, sent_finish, sent_usage, sent_done;
    char *frame;
    size_t frame_len, frame_off;
} request;

/* An adapter-administration request that needs the engine thread (residency tiers, deletes)
 * or its libuv worker pool (validating and committing an upload): shared by the connection and
 * the engine like `request`, with the same suspend/resume rule. Fields are immutable once
 * posted except [mu] ones and, until done, those the engine (or the upload's worker) fills. */
enum job_kind { JOB_TIERS = 0, JOB_DELETE, JOB_UPLOAD, JOB_PREFIX_RESET };
enum job_resp {
    RESP_MODELS = 0,
    RESP_LIST,
    RESP_ONE,
    RESP_MODEL, /* GET /v1/models/{adapter} */
    RESP_DELETE,
    RESP_UNLOAD,
    RESP_UPLOAD,
    RESP_PREFIX_RESET
};
typedef struct admin_job {
    pthread_mutex_t mu;
    int refs;             /* [mu] */
    bool done, suspended; /* [mu] */
    struct MHD_Connection *conn;
    server *srv;
    enum job_kind kind;
    enum job_resp resp;
    char name[QV_STORE_NAME_MAX + 1]; /* JOB_DELETE, JOB_UPLOAD */
    qv_store_entry *entries;          /* JOB_TIERS: what is listed (owned) */
    size_t n;
    qv_proto_adapter_info *infos; /* [n] pointing into entries; tier filled by the engine */
    char (*kinds)[32];            /* [n] */
    int status;                   /* JOB_DELETE, JOB_UPLOAD result: HTTP status */
    const char *code;             /* error code of a failed JOB_UPLOAD (static string) */
    char msg[384];
    /* JOB_UPLOAD: the streamed transaction (owned until the worker commits it), whether it is
     * a PUT (the name may exist), and what the worker publishes */
    uv_work_t work;
    qv_store_txn_t *txn;
    bool replace;
    char version[QV_STORE_VERSION_LEN + 1];
    char kind_name[32];
    int rank;
    int pages_freed; /* JOB_PREFIX_RESET */
} admin_job;

typedef struct upload upload;
typedef struct keyring keyring;

typedef struct conn_ctx {
    admin_job *job; /* adapter administration waiting for the engine thread */
    upload *up;     /* multipart adapter upload in progress */
    char *body;
    size_t body_len, body_cap;
    bool too_big;
    int retry_after; /* Retry-After seconds of a 429 / 503 (0: 1) */
    char route[96];  /* "METHOD /path" for the log line of requests that never reach the engine */
    request *req;
    keyring *kr; /* the keys when the request arrived (NULL: no --api-keys-file) */
    bool tgi;    /* a TGI / LoRAX route: errors in TGI's shape */
    int status;
    double t0;
    char xrid[129]; /* the client's (or proxy's) X-Request-Id, when it is 1-128 visible ASCII */
} conn_ctx;

typedef struct inbox_msg {
    enum { MSG_ADD, MSG_CANCEL, MSG_JOB } type;
    request *req;
    admin_job *job;
    struct inbox_msg *next;
} inbox_msg;

/* One key of --api-keys-file: the adapters it may use are those whose names match one of its
 * fnmatch patterns (the base model always); no patterns: every adapter. Its tenant
 * (server.tenants) is the line's tenant=NAME, else 0 ("default"). */
typedef struct api_key_ent {
    char *key;
    char **pat;
    int n_pat;
    int tenant;
    bool manage; /* manage=yes: may upload, replace and delete the adapters its patterns allow */
} api_key_ent;

/* The keys of --api-keys-file as read at start-up or at the last SIGHUP. A connection holds the
 * keyring current when it arrived (conn_ctx.kr) until it completes, so the key indices of one
 * request never change under it; a reload installs a new keyring. */
struct keyring {
    int refs; /* [server.keys_mu] */
    api_key_ent *keys;
    int n_keys, n_manage;
};

struct server {
    const qv_http_config *cfg;
    pthread_mutex_t keys_mu;
    keyring *kr;               /* [keys_mu] --api-keys-file, current */
    qv_tenants *tenants;       /* 0 = "default"; the others come from the keys file */
    qv_resp_store *resp_store; /* Responses API: kept responses; NULL = none kept */
    pthread_mutex_t bg_mu;
    request *bg_head; /* [bg_mu] background responses the engine has not finished with */
    qv_engine *engine;
    const qv_tokenizer *tok;
    const qv_model *model;
    char *base_name; /* model name reported in /v1/models */
    char *file_name; /* basename of the model path */
    struct MHD_Daemon *daemon;
    qv_metrics *metrics;
    atomic_int draining;
    atomic_int n_waiting; /* queued, not yet admitted (inbox + pending) */
    atomic_int n_open;    /* generation requests, uploads and background-stream readers whose
                             connection is not complete, and running background responses */
    atomic_ulong next_id;
    /* inbox: HTTP threads -> engine thread */
    pthread_mutex_t inbox_mu;
    inbox_msg *inbox_head, *inbox_tail; /* [inbox_mu] */
    /* engine thread */
    uv_loop_t loop;
    uv_async_t wake;
    uv_idle_t stepper;
    uv_timer_t drain_timer, close_timer;
    uv_timer_t live_timer;        /* checks the sockets of waiting requests' clients */
    uv_timer_t sweep_timer;       /* --responses-dir: sweeps it every minute */
    uv_work_t sweep_work;         /* the sweep, on the worker pool */
    bool sweeping;                /* [loop] sweep_work is queued or running */
    size_t swept;                 /* files the last sweep removed */
    uint64_t responses_dir_bytes; /* --responses-dir-mb */
    bool stepping, shutting_down, drain_started;
    /* control thread: its own loop owns the signal handles, so a signal is seen at once even
     * while the engine thread is inside a long step */
    uv_loop_t ctl_loop;
    uv_signal_t sigterm, sigint, sighup;
    uv_async_t ctl_stop;
    uv_thread_t ctl_thread;
    bool ctl_running;
    bool loop_closed; /* [inbox_mu] the async handle is closed: post() must not send */
    double shutdown_started;
    request *pending_head, *pending_tail; /* FIFO of requests waiting for admission */
    request *running;                     /* list of requests in the engine */
    /* adapters: the store is thread-safe; the registry and the wait list are engine-thread */
    qv_store_t *store;
    qv_registry_t *reg;
    qv_adapter_limits limits;
    int test_load_delay_ms;   /* QUIVER_TEST_ADAPTER_LOAD_DELAY_MS: slows loads down (tests) */
    int test_upload_delay_ms; /* QUIVER_TEST_UPLOAD_DELAY_MS: slows upload commits (tests) */
    request *await_head;      /* requests whose adapter is loading (any version, newest first) */
    bool released;            /* a handle was released since the last retry_waiters */
};

/* Test hooks only: sleeps `ms` milliseconds on the calling (worker) thread. */
static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- requests ---- */

static void lp_free(qv_proto_logprob *lp) {
    qv_free(lp->token);
    for (int k = 0; k < lp->n_top; k++)
        qv_free(lp->top_token[k]);
}

static void req_lock(request *r) { pthread_mutex_lock(&r->lead->mu); }
static void req_unlock(request *r) { pthread_mutex_unlock(&r->lead->mu); }

static void request_release(request *r) {
    req_lock(r);
    QV_ASSERT(r->refs > 0);
    int left = --r->refs;
    req_unlock(r);
    if (left) return;
    if (r->tenant_counted) qv_tenants_leave(r->srv->tenants, r->tenant);
    request *lead = r->lead;
    pthread_mutex_destroy(&r->mu);
    qv_free(r->members);
    qv_free(r->model_echo);
    qv_free(r->adapter);
    qv_free(r->merge);
    qv_free(r->tgi_inputs);
    qv_free(r->toks);
    qv_free(r->stop_ids);
    qv_free(r->allowed_ids);
    qv_free(r->bad_ids);
    qv_free(r->bad_lens);
    qv_free(r->bias);
    qv_free(r->tool_name);
    qv_proto_tool_calls_free(r->calls_had, r->n_calls_had);
    qv_free(r->resp_echo);
    qv_free(r->resp_items);
    qv_proto_response_stream_free(&r->rstream);
    qv_json_schema_unref(r->gp.json_schema);
    qv_free(r->echo);
    qv_free(r->ids);
    for (size_t i = 0; i < r->n_stops; i++)
        qv_free(r->stops[i]);
    qv_free(r->stops);
    qv_detok_free(r->detok);
    qv_free(r->out);
    for (size_t i = 0; i < r->n_lps; i++)
        lp_free(&r->lps[i]);
    qv_free(r->lps);
    for (size_t i = 0; i < r->n_plps; i++)
        lp_free(&r->plps[i]);
    qv_free(r->plps);
    qv_free(r->frame);
    qv_free(r->evlog);
    qv_free(r->ev_at);
    qv_free(r);
    if (lead != r) request_release(lead); /* a member's reference on its lead */
}

/* The request is over for its tenant's in-flight cap the moment it is done (before its last
 * bytes reach the client, so a client that sends its next request right after the last one
 * ended is never refused). Caller holds r->mu. */
static int n_choices(const request *lead) { return lead->n_members ? lead->n_members : 1; }
static request *choice_at(request *lead, int i) {
    return lead->n_members ? lead->members[i] : lead;
}

static void tenant_leave_locked(request *r) {
    request *l = r->lead; /* the group holds one place, until its last member is done */
    if (r->done && !r->counted_done) {
        r->counted_done = true;
        l->n_done_members++;
    }
    if (l->n_done_members < n_choices(l)) return;
    if (l->tenant_counted) qv_tenants_leave(l->srv->tenants, l->tenant);
    l->tenant_counted = false;
}

/* A connection reading a background stream's event log, from its own place in it. */
struct log_reader {
    request *r; /* holds a reference */
    struct MHD_Connection *conn;
    size_t from;      /* the next event it sends (until off is set from it) */
    size_t off;       /* the next byte of r->evlog it sends; SIZE_MAX until known */
    bool suspended;   /* [r->mu] waiting for events */
    log_reader *next; /* [r->mu] r->readers */
};

/* Resumes the connections that wait for it. Caller holds the lead's mutex. */
static void wake_locked(request *r) {
    request *l = r->lead;
    if (l->suspended) {
        l->suspended = false;
        MHD_resume_connection(l->conn);
    }
    for (log_reader *rd = l->readers; rd; rd = rd->next)
        if (rd->suspended) {
            rd->suspended = false;
            MHD_resume_connection(rd->conn);
        }
}

static bool append_out(request *r, const char *text, size_t len) {
    if (r->out_len + len + 1 > r->out_cap) {
        size_t cap = (r->out_len + len + 1) * 2;
        char *p = qv_realloc(r->out, cap);
        if (!p) return false;
        r->out = p;
        r->out_cap = cap;
    }
    memcpy(r->out + r->out_len, text, len);
    r->out_len += len;
    r->out[r->out_len] = '\0';
    return true;
}

/* Ends a request with an HTTP error (before any byte of a response was sent, or mid-stream
 * where it simply ends the stream). Engine thread. */
static void request_fail(request *r, int status, const char *code, const char *msg) {
    req_lock(r);
    if (!r->done) {
        r->err_status = status;
        r->err_code = code;
        size_t n = strnlen(msg, sizeof(r->err_msg) - 1); /* long messages are cut */
        memcpy(r->err_msg, msg, n);
        r->err_msg[n] = '\0';
        r->done = true;
        r->finish = "stop";
        r->t_done = qv_time_s();
    }
    tenant_leave_locked(r);
    wake_locked(r);
    req_unlock(r);
}

/* Marks the request finished with `finish` ("stop"/"length"). Engine thread. */
static void request_finish(request *r, const char *finish) {
    req_lock(r);
    if (!r->done) {
        r->done = true;
        r->finish = finish;
        r->t_done = qv_time_s();
    }
    tenant_leave_locked(r);
    wake_locked(r);
    req_unlock(r);
}

/* A token's vocabulary text ("</s>", "<|im_end|>"), or its decoded bytes when it has none. */
static char *token_text_raw(const qv_tokenizer *t, int32_t id) {
    size_t len = 0;
    const char *p = qv_tokenizer_token_text(t, id, &len);
    return p ? qv_strndup(p, len) : qv_strdup("");
}

/* Token text for logprobs: the decoded bytes of one id (valid UTF-8). */
static char *token_text(const qv_tokenizer *t, int32_t id) {
    char *s = NULL;
    if (qv_tokenizer_decode(t, &id, 1, false, &s, NULL, NULL) != QV_OK) return qv_strdup("");
    return s;
}

/* TGI: keeps token `id` (its text was just appended to r->out). Caller holds r->mu. */
static bool record_token(request *r, int32_t id, const qv_logprobs *lp) {
    if (r->n_toks == r->cap_toks) {
        size_t cap = r->cap_toks ? r->cap_toks * 2 : 16;
        gen_tok *p = qv_realloc(r->toks, cap * sizeof(*p));
        if (!p) return false;
        r->toks = p;
        r->cap_toks = cap;
    }
    gen_tok *t = &r->toks[r->n_toks++];
    t->id = id;
    t->special = qv_tokenizer_is_special(r->srv->tok, id) || qv_tokenizer_is_eog(r->srv->tok, id);
    t->logprob = lp ? lp->logprob : 0.0f;
    t->text_end = r->out_len;
    t->n_alt = lp ? QV_MIN(QV_MIN(lp->n_top, r->n_top), QV_PROTO_MAX_LOGPROBS) : 0;
    for (int k = 0; k < t->n_alt; k++) {
        t->alt_id[k] = lp->top_ids[k];
        t->alt_logprob[k] = lp->top_logprobs[k];
    }
    return true;
}

/* A logprobs entry's name of token id: its text, or "token_id:<id>" when the request asked for
 * ids (vLLM return_tokens_as_token_ids). */
static char *lp_name(const request *r, int32_t id) {
    if (!r->tokens_as_ids) return token_text(r->srv->tok, id);
    char buf[32];
    snprintf(buf, sizeof(buf), "token_id:%d", (int)id);
    return qv_strdup(buf);
}

/* The wire form of a token's logprobs, its alternatives cut to the request's count. */
static qv_proto_logprob wire_lp(const request *r, int32_t token, const qv_logprobs *lp) {
    qv_proto_logprob plp = {.token = lp_name(r, token), .id = token, .logprob = lp->logprob};
    plp.n_top = QV_MIN(QV_MIN(lp->n_top, r->n_top), QV_PROTO_MAX_LOGPROBS);
    for (int k = 0; k < plp.n_top; k++) {
        plp.top_token[k] = lp_name(r, lp->top_ids[k]);
        plp.top_logprob[k] = lp->top_logprobs[k];
    }
    return plp;
}

/* Appends *plp to a list of logprobs (taking its strings); false when out of memory, and the
 * caller frees them. */
static bool lp_append(qv_proto_logprob **list, size_t *n, size_t *cap,
                      const qv_proto_logprob *plp) {
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        qv_proto_logprob *p = qv_realloc(*list, c * sizeof(*p));
        if (!p) return false;
        *list = p;
        *cap = c;
    }
    (*list)[(*n)++] = *plp;
    return true;
}

/* Appends *plp to the request's logprobs, as lp_append. Caller holds r->mu. */
static bool keep_lp_locked(request *r, const qv_proto_logprob *plp) {
    return lp_append(&r->lps, &r->n_lps, &r->cap_lps, plp);
}

/* vLLM prompt_logprobs' entry for a prompt token: its logprob and rank, and r->plp_top
 * alternatives with their ids. Strings are NULL when out of memory (lp_ok). */
static qv_proto_logprob ranked_lp(const request *r, const qv_logprobs *lp, int rank) {
    qv_proto_logprob plp = {
        .token = lp_name(r, lp->token), .id = lp->token, .logprob = lp->logprob, .rank = rank};
    plp.n_top = QV_MIN(QV_MIN(lp->n_top, r->plp_top), QV_PROTO_MAX_LOGPROBS);
    for (int k = 0; k < plp.n_top; k++) {
        plp.top_id[k] = lp->top_ids[k];
        plp.top_token[k] = lp_name(r, lp->top_ids[k]);
        plp.top_logprob[k] = lp->top_logprobs[k];
    }
    return plp;
}

static bool lp_ok(const qv_proto_logprob *plp) {
    bool ok = plp->none || plp->token;
    for (int k = 0; k < plp->n_top; k++)
        ok = ok && plp->top_token[k];
    return ok;
}

/* Prompt token `index`'s logprobs (engine thread): for echo with logprobs (and TGI's prefill
 * details) into lps, the echoed text following the last of them, so a stream's first chunk
 * carries both; for vLLM's prompt_logprobs into plps, with the token's rank. */
static void on_prompt_lp(void *user, int seq_id, int index, const qv_logprobs *lp, int rank) {
    (void)seq_id;
    request *r = user;
    qv_proto_logprob plp = {0}, ranked = {0};
    if (r->prompt_in_lps) plp = wire_lp(r, lp->token, lp);
    if (r->plp) ranked = ranked_lp(r, lp, rank);
    req_lock(r);
    bool ok = true;
    if (r->prompt_in_lps) {
        const bool kept = !r->done && keep_lp_locked(r, &plp);
        ok = kept;
        if (kept && (size_t)index + 1 == r->n_ids && r->echo) {
            ok = append_out(r, r->echo, r->echo_len);
            qv_free(r->echo);
            r->echo = NULL;
        }
        if (!kept) lp_free(&plp);
    }
    if (r->plp) {
        const bool kept =
            !r->done && lp_ok(&ranked) && lp_append(&r->plps, &r->n_plps, &r->cap_plps, &ranked);
        ok = ok && kept;
        if (!kept) lp_free(&ranked);
    }
    if (!ok && !r->done) {
        r->err_status = 500;
        snprintf(r->err_msg, sizeof(r->err_msg), "out of memory");
        r->done = true;
        r->finish = "stop";
        r->t_done = qv_time_s();
        r->stop_hit = r->in_engine;
        tenant_leave_locked(r);
        wake_locked(r);
    }
    req_unlock(r);
}

static void on_token(void *user, int seq_id, int32_t token, const qv_logprobs *lp,
                     enum qv_finish_reason finish) {
    (void)seq_id;
    request *r = user;
    server *srv = r->srv;
    qv_tenants_served(srv->tenants, r->tenant, 0, 1, qv_time_s());
    if (finish != QV_FINISH_NONE) r->in_engine = false;
    req_lock(r);
    bool done = r->done;
    if (r->cached < 0) r->cached = qv_engine_seq_cached_tokens(srv->engine, seq_id);
    req_unlock(r);
    if (done || r->stop_hit) return;
    if (r->echo_only) { /* max_tokens 0: the prompt's echo and logprobs were all it wanted */
        request_finish(r, "length");
        return;
    }
    bool eog = qv_tokenizer_is_eog(srv->tok, token);
    bool stop_id = false; /* one of the request's stop_token_ids: ends it, adds no text */
    for (size_t i = 0; !eog && i < r->n_stop_ids; i++)
        stop_id = stop_id || r->stop_ids[i] == token;
    const bool push_stop = stop_id && r->include_stop; /* its text ends the answer */
    qv_proto_logprob plp = {0};
    bool have_lp = false;
    if (r->logprobs && lp && !(eog && finish == QV_FINISH_STOP && !r->eog_text) &&
        (!stop_id || push_stop)) {
        plp = wire_lp(r, token, lp);
        have_lp = true;
    }
    const char *text = NULL;
    size_t len = 0;
    bool finished = false;
    /* With ignore_eos an end-of-generation token is only counted: it adds no text and must
     * not end the detokenizer's stream. */
    if (stop_id && !push_stop) { /* what was held back (a possible stop string) is final */
        if (qv_detok_flush(r->detok, &text, &len) != QV_OK) len = 0;
        finished = true;
    } else if (!(eog && r->gp.ignore_eos) &&
               qv_detok_push(r->detok, token, &text, &len, &finished) != QV_OK) {
        len = 0;
    }
    req_lock(r);
    if (r->done) { /* cancelled meanwhile (background responses: from an HTTP thread) */
        req_unlock(r);
        if (have_lp) lp_free(&plp);
        return;
    }
    r->n_gen++;
    if (r->n_gen == 1) r->t_first = qv_time_s();
    bool ok = !len || append_out(r, text, len);
    if ((finish == QV_FINISH_LENGTH || push_stop) && !finished) {
        /* After the push's text is copied: flushing reuses the detokenizer's buffer. */
        const char *tail = NULL;
        size_t tail_len = 0;
        if (qv_detok_flush(r->detok, &tail, &tail_len) == QV_OK && tail_len)
            ok = ok && append_out(r, tail, tail_len);
    }
    if (push_stop) finished = true;
    if (r->endpoint == QV_PROTO_GENERATE && ok) ok = record_token(r, token, lp);
    if (have_lp && keep_lp_locked(r, &plp)) have_lp = false;
    if (!ok) {
        r->err_status = 500;
        snprintf(r->err_msg, sizeof(r->err_msg), "out of memory");
    }
    if (finished && finish == QV_FINISH_NONE) r->stop_hit = true;
    if (finished || finish != QV_FINISH_NONE || !ok) {
        r->done = true;
        r->finish = finish == QV_FINISH_LENGTH && !finished ? "length" : "stop";
        r->tgi_finish = qv_detok_stop_index(r->detok) >= 0 || stop_id ? "stop_sequence"
                        : !strcmp(r->finish, "length")                ? "length"
                                                                      : "eos_token";
        r->t_done = qv_time_s();
        if (!ok) r->stop_hit = r->in_engine;
        tenant_leave_locked(r);
    }
    wake_locked(r);
    req_unlock(r);
    if (have_lp) lp_free(&plp);
}

/* ---- engine thread ---- */

/* Appends r's adapter name to a comma-separated list unless it is there already. */
static void add_name(char *list, size_t cap, const request *r) {
    if (!r->adapter) return;
    size_t n = strlen(r->adapter), len = strlen(list);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && !strncmp(p, r->adapter, n)) return;
        p += l + (e != NULL);
    }
    if (len + n + 2 > cap) return;
    if (len) list[len++] = ',';
    memcpy(list + len, r->adapter, n + 1);
}

static void update_gauges(server *srv) {
    qv_engine_stats es;
    qv_engine_get_stats(srv->engine, &es);
    /* Waiting = the server's queues plus sequences added to the engine but not (or no longer,
     * after a preemption) holding KV pages. */
    qv_metrics_gauges(srv->metrics, atomic_load(&srv->n_waiting) + es.n_waiting, es.n_running,
                      es.kv_pages - es.kv_free_pages, es.kv_pages);
    qv_metrics_scheduler(srv->metrics, es.preemptions, es.recomputed_tokens);
    qv_metrics_prefix(srv->metrics,
                      &(qv_metrics_prefix_cache){.query_tokens = es.prefix_query_tokens,
                                                 .hit_tokens = es.prefix_hit_tokens,
                                                 .evictions = es.prefix_evictions,
                                                 .pages = es.kv_cached_pages,
                                                 .evictable_pages = es.kv_evictable_pages});
    qv_metrics_graphs(srv->metrics, es.graph_captures, es.graph_replays, es.graph_eager_steps,
                      es.graph_mismatches, es.graph_capture_s);
    qv_metrics_sampling(srv->metrics, es.logits_rows_host, es.logits_rows_device,
                        es.json_mask_misses, es.json_mask_hits, es.json_dead_ends);
    qv_metrics_steps(srv->metrics, es.steps, es.spec_draft_tokens, es.spec_accepted_tokens);
    if (!srv->reg) return;
    qv_registry_stats rs;
    qv_registry_get_stats(srv->reg, &rs);
    qv_metrics_adapter_stats st = {.hits = rs.hits,
                                   .misses = rs.misses,
                                   .loads = rs.loads,
                                   .load_failures = rs.load_failures,
                                   .evictions_host = rs.evictions_host,
                                   .evictions_device = rs.evictions_device,
                                   .load_latency_sum_s = rs.load_latency_sum_s,
                                   .load_latency_max_s = rs.load_latency_max_s,
                                   .host_bytes = rs.host_bytes_used,
                                   .device_bytes = rs.device_bytes_used,
                                   .n_entries = rs.n_entries,
                                   .n_loading = rs.n_loading,
                                   .n_host = rs.n_entries - rs.n_loading,
                                   /* the CUDA backend's adapter pool (0 on the CPU) */
                                   .n_device = (unsigned long long)es.dev_adapters_resident,
                                   .n_pinned = (unsigned long long)es.dev_adapter_pinned_resident,
                                   .pinned_bytes = es.dev_adapter_pinned_used_bytes,
                                   .evictions_pinned = es.dev_adapter_pinned_evictions,
                                   .admit_deferrals = es.admit_deferrals};
    st.evictions_device += es.dev_adapter_evictions;
    st.device_bytes += es.dev_adapter_used_bytes; /* the CUDA pool's pages in use */
    char running[1024] = "", waiting[1024] = "";
    for (const request *r = srv->running; r; r = r->next)
        add_name(running, sizeof(running), r);
    for (const request *r = srv->pending_head; r; r = r->next)
        add_name(waiting, sizeof(waiting), r);
    for (const request *r = srv->await_head; r; r = r->next)
        add_name(waiting, sizeof(waiting), r);
    qv_metrics_adapters(srv->metrics, &st, running, waiting,
                        srv->cfg->max_loras > 0 ? srv->cfg->max_loras : srv->cfg->max_seqs);
}

static void pending_push(server *srv, request *r) {
    r->next = NULL;
    if (srv->pending_tail)
        srv->pending_tail->next = r;
    else
        srv->pending_head = r;
    srv->pending_tail = r;
}

/* Removes r from a singly linked list; returns true when it was there. */
static bool list_remove(request **head, request **tail, request *r) {
    request *prev = NULL;
    for (request *it = *head; it; prev = it, it = it->next) {
        if (it != r) continue;
        if (prev)
            prev->next = it->next;
        else
            *head = it->next;
        if (tail && *tail == it) *tail = prev;
        it->next = NULL;
        return true;
    }
    return false;
}

static void maybe_shutdown(server *srv);
static void start_drain(server *srv);

static void bg_end(request *r);

/* Engine thread, done with r: drops its tenant's activity, the adapter handle it holds and the
 * engine's reference; a background response is kept, logged and counted first. */
static void engine_release(request *r) {
    if (r->background) bg_end(r);
    if (r->tenant_active) {
        qv_tenants_deactivate(r->srv->tenants, r->tenant);
        r->tenant_active = false;
    }
    if (r->ah) {
        qv_registry_release(r->ah);
        r->ah = NULL;
        r->srv->released = true;
    }
    request_release(r);
}

/* Removes a leading "<dir>: " or "<dir>/" (a server-side path) from a message, in place. */
static void strip_path(char *msg, const char *dir) {
    size_t n = strlen(dir);
    if (n && !strncmp(msg, dir, n) && (msg[n] == ':' || msg[n] == '/')) {
        size_t skip = n + 1 + (msg[n] == ':' && msg[n + 1] == ' ');
        memmove(msg, msg + skip, strlen(msg + skip) + 1);
    }
}

static int adapter_http_status(qv_status s) {
    return s == QV_ERR_NOT_FOUND                 ? 404
           : s == QV_ERR_NOMEM || s == QV_ERR_IO ? 500
           : s == QV_ERR_BUSY                    ? 503
                                                 : 422;
}

/* Engine thread: puts r on the wait list for the load of `version` (or merge key). */
static void await_load(server *srv, request *r, const char *version) {
    snprintf(r->wait_version, sizeof(r->wait_version), "%s", version);
    r->next = srv->await_head;
    srv->await_head = r;
}

/* Engine thread: acquires r's adapter, or its merge of several (every part held while the
 * merged one is acquired: a merge starts from loaded parts). QV_ERR_BUSY: *wait names the
 * version or merge key to wait for. *full: refused because --max-merging merges are being
 * made (a 503 to retry, not the request's fault). */
static qv_status acquire_adapter(server *srv, request *r, const char **wait, bool *full,
                                 qv_error *err) {
    *wait = r->adapter_version;
    *full = false;
    if (!r->merge) return qv_registry_acquire(srv->reg, r->adapter_version, &r->ah, err);
    const merge_spec *m = r->merge;
    qv_registry_handle *parts[QV_MERGE_MAX];
    qv_status s = QV_OK;
    int held = 0;
    while (held < m->p.n &&
           (s = qv_registry_acquire(srv->reg, m->versions[held], &parts[held], err)) == QV_OK)
        held++;
    if (held < m->p.n)
        *wait = m->versions[held];
    else
        *full = (s = qv_registry_acquire_merged(srv->reg, r->adapter_version, parts, (size_t)held,
                                                m, sizeof(*m), &r->ah, err)) == QV_ERR_LIMIT;
    for (int i = 0; i < held; i++)
        qv_registry_release(parts[i]);
    return s;
}

/* Engine thread: a new request. Base requests go to the pending FIFO; adapter requests
 * acquire their version (or merge) first and wait in srv->await_head while it loads, so a
 * cold adapter never blocks requests behind it. Returns false when the request failed (and
 * was released). */
static bool enqueue(server *srv, request *r) {
    if (!r->adapter) {
        pending_push(srv, r);
        return true;
    }
    qv_error err = {0};
    const char *wait = NULL;
    bool full;
    qv_status s = acquire_adapter(srv, r, &wait, &full, &err);
    if (s == QV_OK) {
        r->gp.adapter = qv_registry_handle_host(r->ah);
        pending_push(srv, r);
        return true;
    }
    if (s == QV_ERR_BUSY) {
        await_load(srv, r, wait);
        return true;
    }
    atomic_fetch_sub(&srv->n_waiting, 1);
    if (full) {
        const size_t n = strlen(err.msg);
        snprintf(err.msg + n, sizeof(err.msg) - n, " (--max-merging)");
    }
    request_fail(r, full ? 503 : adapter_http_status(s),
                 s == QV_ERR_NOT_FOUND ? "model_not_found" : NULL, err.msg);
    engine_release(r);
    return false;
}

/* Engine thread: unlinks from the wait list the requests waiting for `version`, or (version
 * NULL) those waiting for a release, and returns them as a list in arrival order (the wait list
 * is newest first; prepending restores arrival order). */
static request *take_waiters(server *srv, const char *version) {
    request *mine = NULL, **pp = &srv->await_head;
    while (*pp) {
        request *r = *pp;
        bool match = version ? strcmp(r->wait_version, version) == 0 : r->retry_on_release;
        if (!match) {
            pp = &r->next;
            continue;
        }
        *pp = r->next;
        r->next = mine;
        mine = r;
    }
    return mine;
}

/* Engine thread: after handles were released, retries the waiters whose version did not fit
 * in memory (each retry starts a new load, which may find room now). */
static void retry_waiters(server *srv) {
    if (!srv->released) return;
    srv->released = false;
    request *mine = take_waiters(srv, NULL);
    while (mine) {
        request *r = mine;
        mine = r->next;
        r->next = NULL;
        r->retry_on_release = false;
        enqueue(srv, r);
    }
}

/* Engine thread: integrates finished adapter loads and moves (or fails) their waiters. */
static void poll_adapters(server *srv) {
    if (!srv->reg) return;
    qv_registry_event ev[16];
    size_t n;
    while ((n = qv_registry_poll(srv->reg, ev, QV_ARRAY_LEN(ev))) > 0) {
        for (size_t i = 0; i < n; i++) {
            /* (the registry logs failures itself) */
            if (ev[i].kind == QV_REGISTRY_EV_LOADED)
                QV_LOGI("%s %.12s %s",
                        strcmp(ev[i].ref, "(merge)") ? "adapter version" : "merged adapter",
                        ev[i].version, strcmp(ev[i].ref, "(merge)") ? "loaded" : "made");
            /* Take this version's waiters out first, then enqueue them: a waiter that must wait
             * again (its version was evicted at once) goes back to the wait list, not into this
             * scan. */
            request *mine = take_waiters(srv, ev[i].version);
            while (mine) {
                request *r = mine;
                mine = r->next;
                r->next = NULL;
                if (ev[i].kind == QV_REGISTRY_EV_LOADED) {
                    enqueue(srv, r); /* acquires now (or waits for a reload) */
                } else {
                    /* The version resolved, so whatever the loader says is about its files:
                     * unprocessable, unless it is about memory. */
                    qv_status st = ev[i].status;
                    if (st == QV_ERR_BUSY) {
                        /* Did not fit beside the versions in use: wait (still counted as
                         * waiting) for a release. */
                        r->retry_on_release = true;
                        await_load(srv, r, ev[i].version);
                        continue;
                    }
                    atomic_fetch_sub(&srv->n_waiting, 1);
                    int http = st == QV_ERR_NOMEM ? 500 : st == QV_ERR_BUSY ? 503 : 422;
                    char dir[4096];
                    snprintf(dir, sizeof(dir), "%s/objects/%s", qv_store_root(srv->store),
                             ev[i].version);
                    strip_path(ev[i].msg, dir);
                    /* a merge's own failure (not one of its parts'): what was asked cannot be
                     * merged */
                    const bool merge = r->merge && !strcmp(ev[i].version, r->adapter_version);
                    request_fail(r, http, merge ? "adapter_merge_failed" : "adapter_load_failed",
                                 ev[i].msg);
                    engine_release(r);
                }
            }
        }
        if (n < QV_ARRAY_LEN(ev)) break;
    }
}

/* True when admitting `r` keeps the running batch within --max-loras distinct adapters. */
static bool adapter_slot_free(const server *srv, const request *r) {
    int limit = srv->cfg->max_loras;
    if (limit <= 0 || !r->adapter) return true;
    int distinct = 0;
    for (const request *q = srv->running; q; q = q->next) {
        if (!q->adapter || !q->in_engine) continue;
        if (strcmp(q->adapter_version, r->adapter_version) == 0) return true;
        bool seen = false;
        for (const request *p = srv->running; p != q; p = p->next)
            if (p->adapter && p->in_engine && strcmp(p->adapter_version, q->adapter_version) == 0)
                seen = true;
        distinct += !seen;
    }
    return distinct < limit;
}

/* The pending request to admit next: the most urgent priority; among those, the one whose
 * tenant has the smallest virtual token counter (tenant.h); among those, the first to arrive.
 * With one tenant and one priority this is the FIFO head. */
static request *next_pending(server *srv) {
    request *best = NULL;
    double best_vtc = 0;
    for (request *r = srv->pending_head; r; r = r->next) {
        if (best && r->priority > best->priority) continue;
        double vtc = qv_tenants_vtc(srv->tenants, r->tenant);
        if (!best || r->priority < best->priority || vtc < best_vtc) best = r, best_vtc = vtc;
    }
    return best;
}

/* Admits pending requests in next_pending() order while the engine accepts them (and, under
 * --max-loras, while that request's adapter fits the batch; no later one passes it then), so
 * within a priority and a tenant no request waits behind later arrivals. */
static void admit(server *srv) {
    request *r;
    while ((r = next_pending(srv))) {
        if (!adapter_slot_free(srv, r)) break;
        qv_error err = {0};
        qv_status s =
            qv_engine_add(srv->engine, r->ids, r->n_ids, &r->gp, on_token, r, &r->seq_id, &err);
        if (s == QV_ERR_BUSY) break;
        list_remove(&srv->pending_head, &srv->pending_tail, r);
        atomic_fetch_sub(&srv->n_waiting, 1);
        if (s != QV_OK) {
            request_fail(r, s == QV_ERR_NOMEM ? 500 : 400,
                         s == QV_ERR_LIMIT ? "context_length_exceeded" : NULL, err.msg);
            engine_release(r);
            continue;
        }
        qv_tenants_served(srv->tenants, r->tenant, (int)r->n_ids, 0, qv_time_s());
        r->in_engine = true;
        r->next = srv->running;
        srv->running = r;
        req_lock(r);
        r->admitted = true;
        if (r->stream) wake_locked(r);
        req_unlock(r);
    }
}

/* After a step: cancel sequences whose stop string matched, drop finished requests. */
static void sweep(server *srv) {
    request **pp = &srv->running;
    while (*pp) {
        request *r = *pp;
        if (r->stop_hit && r->in_engine) {
            qv_engine_cancel(srv->engine, r->seq_id);
            r->in_engine = false;
        }
        req_lock(r);
        bool done = r->done;
        req_unlock(r);
        if (done && !r->in_engine) {
            *pp = r->next;
            engine_release(r);
        } else {
            pp = &r->next;
        }
    }
}

static void on_step(uv_idle_t *h) {
    server *srv = h->data;
    if (srv->running) {
        qv_error err = {0};
        if (qv_engine_step(srv->engine, &err) != QV_OK) {
            QV_LOGE("engine step failed: %s", err.msg);
            for (request *r = srv->running; r; r = r->next) {
                if (r->in_engine) qv_engine_cancel(srv->engine, r->seq_id);
                r->in_engine = false;
                request_fail(r, 500, NULL, err.msg);
            }
        }
        sweep(srv);
    }
    retry_waiters(srv);
    admit(srv);
    update_gauges(srv);
    if (!srv->running && !srv->pending_head) {
        uv_idle_stop(&srv->stepper);
        srv->stepping = false;
        maybe_shutdown(srv);
    }
}

static void cancel_request(server *srv, request *r) {
    if (list_remove(&srv->pending_head, &srv->pending_tail, r) ||
        list_remove(&srv->await_head, NULL, r)) {
        atomic_fetch_sub(&srv->n_waiting, 1);
        request_finish(r, "stop");
        engine_release(r);
        return;
    }
    for (request *it = srv->running; it; it = it->next) {
        if (it != r) continue;
        if (r->in_engine) qv_engine_cancel(srv->engine, r->seq_id);
        r->in_engine = false;
        request_finish(r, "stop");
        sweep(srv);
        return;
    }
}

static void job_release(admin_job *j) {
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left) return;
    pthread_mutex_destroy(&j->mu);
    qv_store_abort(j->txn);
    qv_free(j->entries);
    qv_free(j->infos);
    qv_free(j->kinds);
    qv_free(j);
}

static const char *tier_name(unsigned t) {
    /* Without a device interface (CPU) the registry reports host entries on both tiers. */
    return t & QV_REGISTRY_TIER_HOST     ? "host"
           : t & QV_REGISTRY_TIER_DEVICE ? "device"
           : t & QV_REGISTRY_LOADING     ? "loading"
                                         : "disk";
}

/* Marks a job done, resumes its connection if it waits and drops the engine's reference. */
static void job_complete(admin_job *j) {
    pthread_mutex_lock(&j->mu);
    j->done = true;
    if (j->suspended) {
        j->suspended = false;
        MHD_resume_connection(j->conn);
    }
    pthread_mutex_unlock(&j->mu);
    job_release(j);
}

static void version_summary(server *srv, const char *version, char kind[32], int *rank);

/* libuv worker thread: validates (the store's validator runs the PEFT / AdapterHub loader
 * against the base model) and publishes an upload, off the HTTP and engine threads. */
static void upload_work(uv_work_t *w) {
    admin_job *j = w->data;
    server *srv = j->srv;
    qv_error err = {0};
    char existing[QV_STORE_VERSION_LEN + 1];
    if (!j->replace && qv_store_resolve(srv->store, j->name, existing, NULL, &err) == QV_OK) {
        j->status = 409;
        j->code = "adapter_exists";
        snprintf(j->msg, sizeof(j->msg),
                 "adapter '%s' already exists; PUT /v1/adapters/%s publishes a new version",
                 j->name, j->name);
        return;
    }
    memset(&err, 0, sizeof(err));
    if (srv->test_upload_delay_ms > 0) sleep_ms(srv->test_upload_delay_ms);
    char *dir = qv_strdup(qv_store_txn_dir(j->txn));
    qv_status s = qv_store_commit(j->txn, j->name, j->version, &err);
    j->txn = NULL;
    if (dir) strip_path(err.msg, dir);
    qv_free(dir);
    if (s != QV_OK) {
        j->status = s == QV_ERR_IO || s == QV_ERR_NOMEM ? 500 : 422;
        j->code = s == QV_ERR_UNSUPPORTED ? "adapter_unsupported" : "adapter_invalid";
        snprintf(j->msg, sizeof(j->msg), "%.380s", err.msg);
        return;
    }
    QV_LOGI("adapter %s published: version %.12s", j->name, j->version);
    version_summary(srv, j->version, j->kind_name, &j->rank);
    j->status = j->replace ? 200 : 201;
}

/* Engine thread: the upload's worker finished (or was cancelled at shutdown). */
static void upload_after(uv_work_t *w, int status) {
    admin_job *j = w->data;
    if (status != 0 && !j->status) {
        j->status = 503;
        j->code = "draining";
        snprintf(j->msg, sizeof(j->msg), "the server is shutting down");
    }
    update_gauges(j->srv);
    job_complete(j);
}

/* Engine thread: residency tiers of listed versions, a delete (running requests of the
 * deleted version keep their handle and finish), or an upload handed to the worker pool.
 * Then resumes the connection (an upload: once its worker is done). */
static void run_job(server *srv, admin_job *j) {
    if (j->kind == JOB_UPLOAD) {
        j->work.data = j;
        if (uv_queue_work(&srv->loop, &j->work, upload_work, upload_after) == 0) return;
        j->status = 500;
        snprintf(j->msg, sizeof(j->msg), "cannot queue the upload's validation");
    } else if (j->kind == JOB_PREFIX_RESET) {
        j->pages_freed = qv_engine_prefix_cache_reset(srv->engine);
        j->status = 200;
        QV_LOGI("prefix cache reset: %d pages freed", j->pages_freed);
    } else if (j->kind == JOB_TIERS) {
        for (size_t i = 0; i < j->n; i++)
            j->infos[i].tier = tier_name(srv->reg && j->infos[i].version[0]
                                             ? qv_registry_tiers(srv->reg, j->infos[i].version)
                                             : 0);
    } else {
        qv_error err = {0};
        qv_status s = srv->reg ? qv_registry_delete(srv->reg, j->name, &err)
                               : qv_errorf(&err, QV_ERR_NOT_FOUND, "no adapter store");
        j->status = s == QV_OK              ? 200
                    : s == QV_ERR_NOT_FOUND ? 404
                    : s == QV_ERR_INVALID   ? 400
                                            : 500;
        if (s == QV_ERR_NOT_FOUND)
            snprintf(j->msg, sizeof(j->msg), "adapter '%s' not found", j->name);
        else
            snprintf(j->msg, sizeof(j->msg), "%.380s", err.msg);
        if (s == QV_OK) QV_LOGI("adapter %s deleted", j->name);
    }
    /* The gauges first: a client that reads /metrics after the answer sees the job's effect
     * (the reset's freed pages, a deleted adapter's entry). */
    update_gauges(srv);
    job_complete(j);
}

static void on_wake(uv_async_t *h) {
    server *srv = h->data;
    pthread_mutex_lock(&srv->inbox_mu);
    inbox_msg *m = srv->inbox_head;
    srv->inbox_head = srv->inbox_tail = NULL;
    pthread_mutex_unlock(&srv->inbox_mu);
    while (m) {
        inbox_msg *next = m->next;
        if (m->type == MSG_ADD) {
            qv_tenants_activate(srv->tenants, m->req->tenant);
            m->req->tenant_active = true;
            enqueue(srv, m->req);
        } else if (m->type == MSG_JOB)
            run_job(srv, m->job);
        else {
            cancel_request(srv, m->req);
            request_release(m->req); /* the message's own reference */
        }
        qv_free(m);
        m = next;
    }
    poll_adapters(srv);
    retry_waiters(srv);
    if (atomic_load(&srv->draining)) start_drain(srv);
    admit(srv);
    update_gauges(srv);
    if ((srv->running || srv->pending_head) && !srv->stepping) {
        uv_idle_start(&srv->stepper, on_step);
        srv->stepping = true;
    }
    maybe_shutdown(srv);
}

static bool post_msg(server *srv, int type, request *r, admin_job *j) {
    inbox_msg *m = qv_calloc(1, sizeof(*m));
    if (!m) return false;
    m->type = type;
    m->req = r;
    m->job = j;
    pthread_mutex_lock(&srv->inbox_mu);
    if (srv->inbox_tail)
        srv->inbox_tail->next = m;
    else
        srv->inbox_head = m;
    srv->inbox_tail = m;
    /* After shutdown the message stays in the inbox and is released at exit. */
    if (!srv->loop_closed) uv_async_send(&srv->wake);
    pthread_mutex_unlock(&srv->inbox_mu);
    return true;
}

static bool post(server *srv, int type, request *r) { return post_msg(srv, type, r, NULL); }

/* Whether the client of lead l closed its connection while the connection is suspended
 * (libmicrohttpd watches no suspended socket): a peek that reads end-of-file or an error.
 * Bytes waiting (a pipelined next request) mean alive. Sets l->client_gone. */
static bool client_gone(request *l) {
    req_lock(l);
    bool gone = l->client_gone;
    if (!gone && l->suspended && l->conn) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(l->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        char b;
        ssize_t k = ci ? recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) : 1;
        gone = k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
        l->client_gone = gone;
    }
    req_unlock(l);
    return gone;
}

/* Engine thread, every QV_LIVENESS_MS: requests queued, waiting for their adapter or running
 * whose client has gone are cancelled like a disconnect seen by libmicrohttpd (their KV pages
 * and queue places are freed, the log line says 499), instead of being computed for nobody. */
#define QV_LIVENESS_MS 250
static void on_live_tick(uv_timer_t *t) {
    server *srv = t->data;
    request *const heads[3] = {srv->pending_head, srv->await_head, srv->running};
    for (int k = 0; k < 3; k++)
        for (request *r = heads[k]; r; r = r->next) {
            /* the lead holds the connection (and lives while a member does); client_gone is
             * written only on this thread, so a gone client is acted on once */
            request *l = r->lead;
            if (l->background || l->client_gone || !client_gone(l)) continue;
            for (int i = 0; i < n_choices(l); i++) { /* cancelled through the inbox */
                request *m = choice_at(l, i);
                req_lock(l);
                const bool live = !m->done;
                if (live) m->refs++;
                req_unlock(l);
                if (live && !post(srv, MSG_CANCEL, m)) request_release(m);
            }
        }
}

/* --responses-dir: its files swept down to --responses-dir-mb on the worker pool (disk work
 * stays off the engine thread), at start and every minute. */
#define QV_RESP_SWEEP_MS 60000
static void sweep_work(uv_work_t *w) {
    server *srv = w->data;
    srv->swept = qv_resp_store_sweep(srv->resp_store, srv->responses_dir_bytes);
}
static void sweep_after(uv_work_t *w, int status) {
    server *srv = w->data;
    (void)status;
    srv->sweeping = false;
    if (srv->swept)
        qv_log_tagged(QV_LOG_INFO, "serve", "--responses-dir: %zu old file(s) removed", srv->swept);
}
static void on_sweep_tick(uv_timer_t *t) {
    server *srv = t->data;
    if (srv->sweeping) return;
    srv->sweeping = true;
    srv->sweep_work.data = srv;
    if (uv_queue_work(&srv->loop, &srv->sweep_work, sweep_work, sweep_after) != 0)
        srv->sweeping = false;
}

static void close_all(server *srv) {
    pthread_mutex_lock(&srv->inbox_mu);
    srv->loop_closed = true;
    pthread_mutex_unlock(&srv->inbox_mu);
    uv_close((uv_handle_t *)&srv->live_timer, NULL);
    uv_close((uv_handle_t *)&srv->sweep_timer, NULL);
    uv_close((uv_handle_t *)&srv->wake, NULL);
    uv_close((uv_handle_t *)&srv->stepper, NULL);
    uv_close((uv_handle_t *)&srv->drain_timer, NULL);
    uv_close((uv_handle_t *)&srv->close_timer, NULL);
}

/* While draining: once the engine is idle, wait (bounded) for open connections to finish
 * writing, then close every handle so uv_run returns. */
static void on_close_tick(uv_timer_t *t) {
    server *srv = t->data;
    if (atomic_load(&srv->n_open) == 0 || qv_time_s() - srv->shutdown_started > 10.0) {
        uv_timer_stop(t);
        close_all(srv);
    }
}

static void maybe_shutdown(server *srv) {
    if (!atomic_load(&srv->draining) || srv->shutting_down) return;
    pthread_mutex_lock(&srv->inbox_mu);
    bool inbox_empty = srv->inbox_head == NULL;
    pthread_mutex_unlock(&srv->inbox_mu);
    if (srv->running || srv->pending_head || srv->await_head || !inbox_empty) return;
    srv->shutting_down = true;
    srv->shutdown_started = qv_time_s();
    uv_timer_stop(&srv->drain_timer);
    QV_LOGI("drained; closing connections");
    uv_timer_start(&srv->close_timer, on_close_tick, 0, 20);
}

static void on_drain_timeout(uv_timer_t *t) {
    server *srv = t->data;
    QV_LOGW("drain timeout: cancelling the requests still running");
    while (srv->pending_head) {
        request *r = srv->pending_head;
        srv->pending_head = r->next;
        atomic_fetch_sub(&srv->n_waiting, 1);
        request_finish(r, "length");
        engine_release(r);
    }
    srv->pending_tail = NULL;
    while (srv->await_head) {
        request *r = srv->await_head;
        srv->await_head = r->next;
        atomic_fetch_sub(&srv->n_waiting, 1);
        request_finish(r, "length");
        engine_release(r);
    }
    for (request *r = srv->running; r; r = r->next) {
        if (r->in_engine) qv_engine_cancel(srv->engine, r->seq_id);
        r->in_engine = false;
        request_finish(r, "length");
    }
    sweep(srv);
    maybe_shutdown(srv);
}

/* Engine thread: the control thread saw a signal. */
static void start_drain(server *srv) {
    if (srv->drain_started) return;
    srv->drain_started = true;
    uv_timer_start(&srv->drain_timer, on_drain_timeout,
                   (uint64_t)(srv->cfg->drain_timeout_s * 1000.0), 0);
    maybe_shutdown(srv);
}

/* Control thread: from here on /ready and new requests see `draining`; the engine thread is
 * told through its async handle. */
static void on_signal(uv_signal_t *h, int signum) {
    server *srv = h->data;
    if (atomic_exchange(&srv->draining, 1)) return;
    QV_LOGI("signal %d: draining (new requests get 503, in-flight ones finish, up to %.0f s)",
            signum, srv->cfg->drain_timeout_s);
    pthread_mutex_lock(&srv->inbox_mu);
    if (!srv->loop_closed) uv_async_send(&srv->wake);
    pthread_mutex_unlock(&srv->inbox_mu);
}

static bool keys_install(server *srv, const char *path, char *msg, size_t msg_len);

/* Control thread: SIGHUP re-reads --api-keys-file (keys, patterns, tenants and their
 * policies); a file that does not load leaves everything as it was. */
static void on_sighup(uv_signal_t *h, int signum) {
    (void)signum;
    server *srv = h->data;
    const char *path = srv->cfg->api_keys_file;
    if (!path || !*path) {
        qv_log_tagged(QV_LOG_WARN, "serve", "SIGHUP: no --api-keys-file to re-read");
        return;
    }
    char msg[512];
    if (keys_install(srv, path, msg, sizeof msg))
        qv_log_tagged(QV_LOG_INFO, "serve", "SIGHUP: --api-keys-file re-read");
    else
        qv_log_tagged(QV_LOG_ERROR, "serve",
                      "SIGHUP: --api-keys-file not re-read, the previous keys stay: %s", msg);
}

static void on_ctl_stop(uv_async_t *h) {
    server *srv = h->data;
    uv_close((uv_handle_t *)&srv->sigterm, NULL);
    uv_close((uv_handle_t *)&srv->sigint, NULL);
    uv_close((uv_handle_t *)&srv->sighup, NULL);
    uv_close((uv_handle_t *)&srv->ctl_stop, NULL);
}

static void ctl_main(void *arg) {
    server *srv = arg;
    uv_run(&srv->ctl_loop, UV_RUN_DEFAULT);
}

/* Starts the control thread and its signal handles. Returns false on failure. */
static bool ctl_start(server *srv) {
    if (uv_loop_init(&srv->ctl_loop) != 0) return false;
    uv_signal_init(&srv->ctl_loop, &srv->sigterm);
    uv_signal_init(&srv->ctl_loop, &srv->sigint);
    uv_signal_init(&srv->ctl_loop, &srv->sighup);
    uv_async_init(&srv->ctl_loop, &srv->ctl_stop, on_ctl_stop);
    srv->sigterm.data = srv->sigint.data = srv->sighup.data = srv->ctl_stop.data = srv;
    uv_signal_start(&srv->sigterm, on_signal, SIGTERM);
    uv_signal_start(&srv->sigint, on_signal, SIGINT);
    uv_signal_start(&srv->sighup, on_sighup, SIGHUP);
    if (uv_thread_create(&srv->ctl_thread, ctl_main, srv) != 0) {
        on_ctl_stop(&srv->ctl_stop);
        uv_run(&srv->ctl_loop, UV_RUN_DEFAULT);
        uv_loop_close(&srv->ctl_loop);
        return false;
    }
    srv->ctl_running = true;
    return true;
}

static void ctl_stop(server *srv) {
    if (!srv->ctl_running) return;
    uv_async_send(&srv->ctl_stop);
    uv_thread_join(&srv->ctl_thread);
    if (uv_loop_close(&srv->ctl_loop) != 0) QV_LOGW("control loop closed with live handles");
    srv->ctl_running = false;
}

/* ---- HTTP side ---- */

/* X-Request-Id on every answer: the request's own when it came with one (a proxy's
 * $request_id, a client's trace id), else the completion id of a generation request. */
static void add_request_id(struct MHD_Response *resp, const conn_ctx *ctx) {
    const char *id = ctx->xrid[0] ? ctx->xrid : ctx->req ? ctx->req->id : NULL;
    if (id && *id) MHD_add_response_header(resp, "X-Request-Id", id);
}

/* Keeps the incoming X-Request-Id if it is 1-128 bytes of visible ASCII (it goes into log
 * lines and back into a header as is); anything else is ignored. */
static void take_request_id(struct MHD_Connection *c, conn_ctx *ctx) {
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
    if (!h) return;
    size_t n = 0;
    for (; h[n]; n++)
        if (n >= sizeof(ctx->xrid) - 1 || (unsigned char)h[n] <= 0x20 ||
            (unsigned char)h[n] >= 0x7f)
            return;
    memcpy(ctx->xrid, h, n + 1);
}

/* Queues an answer: `buf` (malloc'd, taken; NULL: no body) of `content_type` (NULL: none),
 * the headers every answer of this status gets, and `extra` (name, value, ..., NULL) or NULL. */
static enum MHD_Result queue_answer(struct MHD_Connection *c, conn_ctx *ctx, int status,
                                    const char *content_type, char *buf, size_t len,
                                    const char *const *extra) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, buf, buf ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(buf);
        return MHD_NO;
    }
    if (content_type) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    for (size_t i = 0; extra && extra[i]; i += 2)
        MHD_add_response_header(resp, extra[i], extra[i + 1]);
    if (status == 429 || status == 503) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%d", ctx->retry_after > 0 ? ctx->retry_after : 1);
        MHD_add_response_header(resp, "Retry-After", ra);
    }
    if (status == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    add_request_id(resp, ctx);
    ctx->status = status;
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result queue_buf(struct MHD_Connection *c, conn_ctx *ctx, int status,
                                 const char *content_type, char *buf, size_t len) {
    return queue_answer(c, ctx, status, content_type, buf, len, NULL);
}

/* MHD frees MUST_FREE buffers with free(): copy JSON out of qv_malloc'd memory. */
static char *libc_copy(const char *s, size_t *len) {
    size_t n = s ? strlen(s) : 0;
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s ? s : "", n + 1);
    *len = n;
    return p;
}

static enum MHD_Result send_json(struct MHD_Connection *c, conn_ctx *ctx, int status, char *json) {
    size_t len = 0;
    char *p = libc_copy(json ? json : "{}", &len);
    qv_free(json);
    return queue_buf(c, ctx, status, "application/json", p, len);
}

/* TGI's error_type for an HTTP status (its clients map validation, overloaded and generation
 * to exception classes; anything else falls back to the status). */
static const char *tgi_error_type(int status, const char *code) {
    return status == 400 || status == 422   ? "validation"
           : status == 429 || status == 503 ? "overloaded"
           : status >= 500                  ? "generation"
           : code                           ? code
                                            : "error";
}

static enum MHD_Result send_error(struct MHD_Connection *c, conn_ctx *ctx, int status,
                                  const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static enum MHD_Result send_error(struct MHD_Connection *c, conn_ctx *ctx, int status,
                                  const char *param, const char *code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (ctx->tgi) /* TGI / LoRAX routes answer in their clients' error shape */
        return send_json(c, ctx, status,
                         qv_proto_tgi_encode_error(msg, tgi_error_type(status, code)));
    const char *type = status == 401   ? "authentication_error"
                       : status == 404 ? "not_found_error"
                       : status == 429 ? "rate_limit_error"
                       : status == 503 ? "service_unavailable"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    return send_json(c, ctx, status, qv_proto_encode_error(msg, type, param, code));
}

/* A request body the proto decoders refused: 400 naming the field, or 500 out of memory. */
static enum MHD_Result send_proto_error(struct MHD_Connection *c, conn_ctx *ctx,
                                        const qv_proto_error *pe) {
    return pe->status == QV_ERR_NOMEM
               ? send_error(c, ctx, 500, NULL, NULL, "out of memory")
               : send_error(c, ctx, 400, pe->param, "invalid_value", "%s", pe->message);
}

/* Constant-time comparison of a bearer token with a key. */
static bool key_matches(const char *key, const char *tok) {
    size_t kl = strlen(key), tl = strlen(tok);
    unsigned char diff = (unsigned char)(kl != tl);
    for (size_t i = 0; i < kl; i++)
        diff |= (unsigned char)(key[i] ^ (i < tl ? tok[i] : 0));
    return diff == 0;
}

#define AUTH_DENIED (-1) /* no key, or a key the server does not know */
#define AUTH_ANY (-2)    /* --api-key, --admin-key, or no authentication: tenant "default" */

/* Whose a stored response is: a digest of the request's bearer token ("" without one). */
static void key_owner(struct MHD_Connection *c, char out[65]) {
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (h && !strncmp(h, "Bearer ", 7))
        qv_sha256_hex(h + 7, strlen(h + 7), out);
    else
        out[0] = '\0';
}

/* Who the request's bearer key is: AUTH_DENIED, AUTH_ANY, or the index of a --api-keys-file
 * entry. Every known key is compared (in constant time each). */
static int auth_key(server *srv, const conn_ctx *ctx, struct MHD_Connection *c) {
    const keyring *kr = ctx->kr;
    const char *key = srv->cfg->api_key;
    const bool have_key = key && *key;
    if (!have_key && !kr) return AUTH_ANY;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7) != 0) return AUTH_DENIED;
    /* The admin key also opens the inference API. */
    const char *admin = srv->cfg->admin_key;
    int who = AUTH_DENIED;
    if ((have_key && key_matches(key, h + 7)) || (admin && *admin && key_matches(admin, h + 7)))
        who = AUTH_ANY;
    for (int i = 0; kr && i < kr->n_keys; i++)
        if (key_matches(kr->keys[i].key, h + 7) && who == AUTH_DENIED) who = i;
    return who;
}

static bool authorized(server *srv, const conn_ctx *ctx, struct MHD_Connection *c) {
    return auth_key(srv, ctx, c) != AUTH_DENIED;
}

/* Whether key `who` (auth_key, of keyring kr) may use the adapter named `name` as the request
 * named it. */
static bool key_allows(const keyring *kr, int who, const char *name) {
    if (who < 0 || !name || kr->keys[who].n_pat == 0) return true;
    const api_key_ent *k = &kr->keys[who];
    for (int i = 0; i < k->n_pat; i++)
        if (fnmatch(k->pat[i], name, 0) == 0) return true;
    return false;
}

static void keyring_free(keyring *kr) {
    if (!kr) return;
    for (int i = 0; i < kr->n_keys; i++) {
        qv_free(kr->keys[i].key);
        for (int j = 0; j < kr->keys[i].n_pat; j++)
            qv_free(kr->keys[i].pat[j]);
        qv_free(kr->keys[i].pat);
    }
    qv_free(kr->keys);
    qv_free(kr);
}

/* The current keyring, with a reference for the caller (NULL without --api-keys-file). */
static keyring *keyring_acquire(server *srv) {
    pthread_mutex_lock(&srv->keys_mu);
    keyring *kr = srv->kr;
    if (kr) kr->refs++;
    pthread_mutex_unlock(&srv->keys_mu);
    return kr;
}

static void keyring_release(server *srv, keyring *kr) {
    if (!kr) return;
    pthread_mutex_lock(&srv->keys_mu);
    bool last = --kr->refs == 0;
    pthread_mutex_unlock(&srv->keys_mu);
    if (last) keyring_free(kr);
}

/* Reads --api-keys-file: a line is KEY [PATTERN | OPTION=VALUE]... separated by blanks ('#'
 * starts a comment; keys are visible ASCII): adapter name patterns, tenant=NAME, manage=yes|no
 * and the tenant's policy options (tenant.h). The tenants and their policies are built in
 * `tenants` (a table of its own). Returns the keyring (one reference, the caller's), or NULL
 * with a message naming the line on a malformed file. */
static keyring *keys_read(const char *path, qv_tenants *tenants, char *msg, size_t msg_len) {
    char *buf = NULL;
    size_t len = 0;
    qv_error err = {0};
    if (qv_read_file(path, (size_t)1 << 20, &buf, &len, &err) != QV_OK) {
        snprintf(msg, msg_len, "%s", err.msg);
        return NULL;
    }
    keyring *kr = qv_calloc(1, sizeof(*kr));
    bool ok = kr != NULL;
    if (!ok) snprintf(msg, msg_len, "out of memory");
    int line_no = 0;
    for (char *line = buf, *next; ok && line && *line; line = next) {
        line_no++;
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        char *save = NULL, *tok = strtok_r(line, " \t\r", &save);
        if (!tok) continue;
        for (const char *p = tok; *p && ok; p++)
            if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e) {
                snprintf(msg, msg_len, "%s:%d: a key must be visible ASCII", path, line_no);
                ok = false;
            }
        if (!ok) break;
        api_key_ent *grown = qv_realloc(kr->keys, (size_t)(kr->n_keys + 1) * sizeof(*kr->keys));
        if (!grown) {
            snprintf(msg, msg_len, "out of memory");
            ok = false;
            break;
        }
        kr->keys = grown;
        api_key_ent *k = &kr->keys[kr->n_keys++];
        memset(k, 0, sizeof(*k));
        k->key = qv_strdup(tok);
        ok = k->key != NULL;
        if (!ok) snprintf(msg, msg_len, "out of memory");
        /* patterns first, then the tenant (named anywhere on the line), then its options */
        char *opts[16];
        int n_opts = 0;
        char tenant[80] = ""; /* none: the tenant "default" */
        while (ok && (tok = strtok_r(NULL, " \t\r", &save))) {
            if (!strncmp(tok, "tenant=", 7)) {
                snprintf(tenant, sizeof(tenant), "%.79s", tok + 7);
            } else if (!strncmp(tok, "manage=", 7)) {
                ok = !strcmp(tok + 7, "yes") || !strcmp(tok + 7, "no");
                if (!ok) snprintf(msg, msg_len, "%s:%d: manage= takes yes or no", path, line_no);
                k->manage = !strcmp(tok + 7, "yes");
            } else if (strchr(tok, '=')) {
                if (n_opts == (int)QV_ARRAY_LEN(opts)) {
                    snprintf(msg, msg_len, "%s:%d: too many options", path, line_no);
                    ok = false;
                }
                if (ok) opts[n_opts++] = tok;
            } else {
                char **pat = qv_realloc(k->pat, (size_t)(k->n_pat + 1) * sizeof(*k->pat));
                ok = pat != NULL;
                if (ok) k->pat = pat;
                if (ok) ok = (k->pat[k->n_pat] = qv_strdup(tok)) != NULL;
                if (ok) k->n_pat++;
                if (!ok) snprintf(msg, msg_len, "out of memory");
            }
        }
        kr->n_manage += k->manage;
        char why[256] = "";
        if (ok && !tenant[0] && n_opts) {
            snprintf(why, sizeof why, "'%s' needs a tenant: add tenant=NAME", opts[0]);
            ok = false;
        }
        if (ok && tenant[0] && (k->tenant = qv_tenants_get(tenants, tenant, why, sizeof(why))) < 0)
            ok = false;
        for (int i = 0; ok && i < n_opts; i++)
            ok = qv_tenants_option(tenants, k->tenant, opts[i], why, sizeof(why));
        if (why[0]) snprintf(msg, msg_len, "%s:%d: %s", path, line_no, why);
        for (int i = 0; ok && i < kr->n_keys - 1; i++)
            if (!strcmp(kr->keys[i].key, k->key)) {
                snprintf(msg, msg_len, "%s:%d: the key is listed twice", path, line_no);
                ok = false;
            }
    }
    qv_free(buf);
    if (ok && kr->n_keys == 0) {
        snprintf(msg, msg_len, "%s holds no key", path);
        ok = false;
    }
    if (!ok) {
        keyring_free(kr);
        return NULL;
    }
    kr->refs = 1;
    return kr;
}

/* Reads the keys file and installs it: the tenants' policies move to the server's table
 * (indices kept, qv_tenants_adopt), then the new keyring replaces the current one (requests
 * already in hand keep theirs). Logs what it installed. False (nothing changed) with a
 * message. Any thread: start-up, and the control thread on SIGHUP. */
static bool keys_install(server *srv, const char *path, char *msg, size_t msg_len) {
    qv_tenants *tmp = qv_tenants_create();
    if (!tmp) {
        snprintf(msg, msg_len, "out of memory");
        return false;
    }
    keyring *kr = keys_read(path, tmp, msg, msg_len);
    int map[QV_TENANT_MAX];
    char why[256];
    if (kr && !qv_tenants_adopt(srv->tenants, tmp, map, qv_time_s(), why, sizeof why)) {
        snprintf(msg, msg_len, "%s: %s", path, why);
        keyring_release(srv, kr);
        kr = NULL;
    }
    if (!kr) {
        qv_tenants_destroy(tmp);
        return false;
    }
    int limited = 0;
    for (int i = 0; i < kr->n_keys; i++) {
        kr->keys[i].tenant = map[kr->keys[i].tenant];
        limited += kr->keys[i].n_pat > 0;
    }
    qv_log_tagged(QV_LOG_INFO, "serve",
                  "--api-keys-file: %d keys (%d limited to some adapters, %d managing "
                  "adapters), %d tenants",
                  kr->n_keys, limited, kr->n_manage, qv_tenants_count(tmp) - 1);
    for (int t = 1; t < qv_tenants_count(tmp); t++) {
        qv_tenant_policy p;
        qv_tenants_policy(tmp, t, &p);
        char rpm[32] = "none", tpm[32] = "none", inflight[32] = "none";
        if (p.rpm > 0) snprintf(rpm, sizeof rpm, "%g", p.rpm);
        if (p.tpm > 0) snprintf(tpm, sizeof tpm, "%g", p.tpm);
        if (p.max_inflight > 0) snprintf(inflight, sizeof inflight, "%d", p.max_inflight);
        qv_log_tagged(QV_LOG_INFO, "serve",
                      "tenant %s: weight %g, rpm %s, tpm %s, max_inflight %s, priority >= %d",
                      qv_tenants_name(tmp, t), p.weight, rpm, tpm, inflight, p.priority);
    }
    qv_tenants_destroy(tmp);
    pthread_mutex_lock(&srv->keys_mu);
    keyring *old = srv->kr;
    srv->kr = kr;
    pthread_mutex_unlock(&srv->keys_mu);
    keyring_release(srv, old);
    return true;
}

static bool model_matches(server *srv, const char *base) {
    const char *general = srv->model->name;
    return !base || !*base || !strcmp(base, srv->base_name) || !strcmp(base, srv->file_name) ||
           !strcmp(base, srv->cfg->model_path) || (general && !strcmp(base, general));
}

/* Makes `json` (taken; NULL: out of memory) the request's next SSE frame. */
static bool set_frame(request *r, char *json) {
    if (!json) return false;
    qv_free(r->frame);
    r->frame = qv_proto_sse_frame(json, strlen(json), &r->frame_len);
    r->frame_off = 0;
    qv_free(json);
    return r->frame != NULL;
}

/* ---- TGI / LoRAX answers ---- */

/* The texts behind TGI token i of r (owned: free with tgi_view_free). Caller holds r->mu. */
typedef struct tgi_view {
    qv_proto_tgi_token tok;
    char *text;
    char *alt_text[QV_PROTO_MAX_LOGPROBS];
} tgi_view;

static bool tgi_view_make(request *r, size_t i, tgi_view *v) {
    memset(v, 0, sizeof(*v));
    const gen_tok *t = &r->toks[i];
    const size_t from = i ? r->toks[i - 1].text_end : 0;
    /* A special token adds no text: it shows what it is, as in TGI. Unless text held back
     * (a possible stop-string start, an unfinished character) was released with it: then it
     * carries that text and counts as ordinary, so the texts of the non-special tokens still
     * add up to generated_text (what clients concatenate). */
    const bool special = t->special && t->text_end == from;
    v->text = special ? token_text_raw(r->srv->tok, t->id)
                      : qv_strndup(r->out ? r->out + from : "", t->text_end - from);
    bool ok = v->text != NULL;
    for (int k = 0; ok && k < t->n_alt; k++)
        ok = (v->alt_text[k] = token_text(r->srv->tok, t->alt_id[k])) != NULL;
    v->tok = (qv_proto_tgi_token){.id = t->id,
                                  .text = v->text,
                                  .logprob = t->logprob,
                                  .special = special,
                                  .n_alt = t->n_alt,
                                  .alt_id = t->alt_id,
                                  .alt_text = (const char *const *)v->alt_text,
                                  .alt_logprob = t->alt_logprob};
    return ok;
}

static void tgi_view_free(tgi_view *v) {
    qv_free(v->text);
    for (int k = 0; k < QV_PROTO_MAX_LOGPROBS; k++)
        qv_free(v->alt_text[k]);
}

/* The finished generation of r (generated_text in *full, owned). Caller holds r->mu. */
static bool tgi_result(request *r, qv_proto_tgi_result *res, char **full) {
    size_t in_len = r->tgi_inputs ? strlen(r->tgi_inputs) : 0;
    *full = qv_malloc(in_len + r->out_len + 1);
    if (!*full) return false;
    if (in_len) memcpy(*full, r->tgi_inputs, in_len);
    if (r->out_len) memcpy(*full + in_len, r->out, r->out_len);
    (*full)[in_len + r->out_len] = '\0';
    *res = (qv_proto_tgi_result){.generated_text = *full,
                                 .generated_len = in_len + r->out_len,
                                 .finish_reason = r->tgi_finish ? r->tgi_finish : "length",
                                 .prompt_tokens = (int)r->n_ids,
                                 .generated_tokens = r->n_gen,
                                 .has_seed = r->gp.sampling.temperature > 0.0f,
                                 .seed = r->gp.sampling.seed,
                                 .details = r->tgi_details};
    return true;
}

/* POST /generate (and LoRAX's POST / without stream): the whole answer. Caller holds r->mu. */
static char *tgi_response(request *r) {
    qv_proto_tgi_result res;
    char *full = NULL, *json = NULL;
    size_t n = r->tgi_details ? r->n_toks : 0;
    tgi_view *views = n ? qv_calloc(n, sizeof(*views)) : NULL;
    qv_proto_tgi_token *toks = n ? qv_calloc(n, sizeof(*toks)) : NULL;
    bool ok = (!n || (views && toks)) && tgi_result(r, &res, &full);
    for (size_t i = 0; ok && i < n; i++) {
        ok = tgi_view_make(r, i, &views[i]);
        toks[i] = views[i].tok;
    }
    if (ok) {
        res.tokens = toks;
        res.n_tokens = n;
        res.prefill = r->lps; /* decoder_input_details: the prompt's (none otherwise) */
        res.n_prefill = r->n_lps;
        json = qv_proto_tgi_encode_response(&res, r->tgi_in_list);
    }
    for (size_t i = 0; views && i < n; i++)
        tgi_view_free(&views[i]);
    qv_free(views);
    qv_free(toks);
    qv_free(full);
    return json;
}

/* /generate_stream: the next event (one per generated token; the last one carries
 * generated_text and details), an error event, or the end. Caller holds r->mu. */
static bool tgi_next_frame(request *r) {
    char *json = NULL;
    if (r->toks_sent < r->n_toks) {
        size_t i = r->toks_sent++;
        bool last = r->done && !r->err_status && i + 1 == r->n_toks;
        tgi_view v;
        qv_proto_tgi_result res;
        char *full = NULL;
        if (tgi_view_make(r, i, &v) && (!last || tgi_result(r, &res, &full)))
            json = qv_proto_tgi_encode_event(&v.tok, (int)i + 1, last ? &res : NULL);
        tgi_view_free(&v);
        qv_free(full);
        if (last) r->sent_done = true;
    } else if (r->err_status && !r->sent_done) {
        json = qv_proto_tgi_encode_error(r->err_msg, "generation");
        r->sent_done = true;
    } else {
        if (r->done) r->sent_done = true; /* ended without a final token (cancelled) */
        return false;
    }
    return set_frame(r, json);
}

/* Streaming: builds the next SSE frame into r->frame. Caller holds r->mu. Returns false when
 * nothing is ready yet. */
/* Whether every member of the lead's group is done. Caller holds its mutex. */
static bool group_done(request *l) {
    for (int i = 0; i < n_choices(l); i++)
        if (!choice_at(l, i)->done) return false;
    return true;
}

/* Prompt tokens of the group found in the prefix cache (usage.prompt_tokens_details): for each
 * prompt (counted once, like usage.prompt_tokens), the most any of its choices took from the
 * cache; choices after the first usually take the pages the first computed. Caller holds its
 * mutex. */
static int group_cached(request *l) {
    int n = 0, best = 0, prompt = 0;
    for (int i = 0; i < n_choices(l); i++) { /* index order: a prompt's choices are adjacent */
        const request *m = choice_at(l, i);
        if (m->prompt_no != prompt) {
            n += best;
            best = 0;
            prompt = m->prompt_no;
        }
        if (m->cached > best) best = m->cached;
    }
    return n + best;
}

/* Generated tokens over the group (usage.completion_tokens). Caller holds its mutex. */
static int group_generated(request *l) {
    int n = 0;
    for (int i = 0; i < n_choices(l); i++)
        n += choice_at(l, i)->n_gen;
    return n;
}

/* The base of member r's call ids, "<request id's hex>_<choice>": call i is
 * "call_<base>_<i>" (qv_proto_tool_calls_parse). */
static void call_base(const request *l, const request *r, char *buf, size_t cap) {
    const char *sep = strpbrk(l->id, "-_"); /* after "chatcmpl-", "cmpl-" or "resp_" */
    snprintf(buf, cap, "%s_%d", sep ? sep + 1 : l->id, r->index);
}

/* Member r's tool calls read from its finished text (tools != QV_PROTO_TOOLS_NONE): *n = 0 when
 * the text is not whole calls (cut by max_tokens or a stop string), so it goes out as text;
 * false when out of memory. */
static bool member_calls(const request *l, const request *r, qv_proto_tool_call **calls, size_t *n,
                         size_t *content_len) {
    char base[96];
    call_base(l, r, base, sizeof(base));
    const qv_status st = qv_proto_tool_calls_parse(r->tools, r->tool_name, r->out ? r->out : "",
                                                   r->out_len, base, calls, n, content_len);
    if (st != QV_OK) *content_len = r->out_len; /* not calls: all of it is text */
    for (size_t i = 0; st == QV_OK && r->mistral_ids && i < *n; i++)
        qv_proto_mistral_call_id(base, i, (*calls)[i].id); /* "call_..." is longer: fits */
    return st != QV_ERR_NOMEM;
}

/* How much of member r's "auto" text may be streamed before it is done: all but what may be
 * a call. */
static size_t stream_limit(const request *r) {
    return qv_proto_tool_text_len(r->tools, r->out ? r->out : "", r->out_len);
}

/* Call 0's id of a named-function answer (112 bytes: "call_" + a call base + "_0"). */
static void named_call_id(const request *l, const request *r, char id[112]) {
    char base[96];
    call_base(l, r, base, sizeof(base));
    if (r->mistral_ids)
        qv_proto_mistral_call_id(base, 0, id);
    else
        snprintf(id, 112, "call_%s_0", base);
}

/* The calls member r's unfinished answer has begun (qv_proto_tool_calls_partial), with the ids
 * the finished answer will give them. Errors: QV_ERR_NOMEM only. */
static qv_status calls_so_far(const request *l, const request *r, qv_proto_tool_call **calls,
                              size_t *n) {
    char base[96];
    call_base(l, r, base, sizeof(base));
    const qv_status st =
        qv_proto_tool_calls_partial(r->tools, r->out ? r->out : "", r->out_len, base, calls, n);
    for (size_t i = 0; st == QV_OK && r->mistral_ids && i < *n; i++)
        qv_proto_mistral_call_id(base, i, (*calls)[i].id); /* "call_..." is longer: fits */
    return st;
}

/* The fields of member r's stream chunks: those that never change, and with vLLM's
 * continuous_usage_stats its usage so far (its own prompt, its tokens generated so far). */
static qv_proto_result chunk_of(const request *l, const request *r) {
    return (qv_proto_result){.endpoint = r->endpoint,
                             .id = l->id,
                             .model = l->model_echo,
                             .created = l->created,
                             .logprobs = r->logprobs,
                             .index = r->index,
                             .chunk_usage = l->continuous_usage,
                             .prompt_tokens = (int)r->n_ids,
                             .completion_tokens = r->n_gen,
                             .cached_tokens = QV_MAX(r->cached, 0)};
}

/* The pieces that take the calls a client has, had[0..n_had), to now[0..n_now): a new call's
 * id, name and arguments so far, what an older one's arguments gained. False, with no pieces,
 * when now does not extend had (a call's name differs, or its arguments do not continue what
 * was sent). d has room for n_now pieces, which point into now. */
static bool call_pieces(const qv_proto_tool_call *had, size_t n_had, const qv_proto_tool_call *now,
                        size_t n_now, qv_proto_tool_call *d, size_t *nd) {
    *nd = 0;
    for (size_t i = 0; i < n_had && i < n_now; i++)
        if (strcmp(had[i].name, now[i].name) ||
            strncmp(now[i].arguments, had[i].arguments, strlen(had[i].arguments)))
            return false;
    for (size_t i = 0; i < n_now; i++) {
        const size_t a = i < n_had ? strlen(had[i].arguments) : 0;
        if (i >= n_had)
            d[(*nd)++] = (qv_proto_tool_call){.index = (int)i,
                                              .id = now[i].id,
                                              .name = now[i].name,
                                              .arguments = now[i].arguments};
        else if (now[i].arguments[a])
            d[(*nd)++] = (qv_proto_tool_call){.index = (int)i, .arguments = now[i].arguments + a};
    }
    return true;
}

/* tool_choice "required" and "auto" stream their calls as they are written
 * (qv_proto_tool_calls_partial): first "auto"'s text that cannot be a call, as it comes
 * (stream_limit); then a call's index, id, type and name once its name is whole, and its
 * arguments in pieces as they become final; once done, the finished answer's calls
 * (member_calls) complete them, so that the pieces add up to the non-streamed answer's calls,
 * with finish_reason "tool_calls" (finished by stop). Each chunk carries the logprobs not sent
 * yet. What the client has is the reading of out[0..calls_read), kept to check that
 * every piece continues it: a reading that does not (fewer calls, or changed ones) sends
 * nothing. An answer that is not calls when done (cut by max_tokens, or no call after all: a
 * block that is not one, garbage after the calls) goes out as text when no call piece was
 * sent, else ends with the pieces sent and its finish reason, the rest of its text unsent; so
 * does one whose calls do not continue the pieces sent (Llama's "arguments" after a streamed
 * "parameters", Mistral's list alone followed by "[TOOL_CALLS]"). */
static char *calls_chunk(request *l, request *r, bool *oom) {
    qv_proto_result res = chunk_of(l, r);
    const qv_proto_tool_call *had = r->calls_had;
    qv_proto_tool_call *now = NULL, *d = NULL;
    size_t n_had = r->n_calls_had, n = 0, nd = 0,
           upto = r->tools == QV_PROTO_TOOLS_REQUIRED ? 0 : stream_limit(r);
    const char *out = r->out ? r->out : "";
    qv_status st = r->done ? (member_calls(l, r, &now, &n, &upto) ? QV_OK : QV_ERR_NOMEM)
                           : calls_so_far(l, r, &now, &n);
    if (st == QV_OK && n && !(d = qv_calloc(n, sizeof(*d)))) st = QV_ERR_NOMEM;
    /* fewer calls than sent: wait (done: they are not the answer) */
    const bool extends = st == QV_OK && n >= n_had && call_pieces(had, n_had, now, n, d, &nd);
    if (!extends) nd = 0;
    const bool text = !r->calls_read && upto > r->sent; /* the content, before any call */
    char *json = NULL;
    if (st == QV_OK && (text || nd || r->done || !r->sent_first)) {
        const bool last = r->done && (!text || !n); /* the content first, then the calls */
        res.text = out + r->sent;
        res.text_len = text ? upto - r->sent : 0;
        res.text_offset = r->sent;
        res.calls = d;
        res.n_calls = text ? 0 : nd;
        res.lps = r->lps + r->lps_sent;
        res.n_lps = r->n_lps - r->lps_sent;
        if (last)
            res.finish_reason =
                n && extends && !strcmp(r->finish, "stop") ? "tool_calls" : r->finish;
        json = qv_proto_encode_chunk(&res, !r->sent_first);
        st = json ? QV_OK : QV_ERR_NOMEM;
        r->sent_first = true;
        r->lps_sent = r->n_lps;
        if (text) r->sent = upto;
        if (!text && nd) { /* the client has now's calls */
            r->calls_read = r->out_len;
            qv_proto_tool_calls_free(r->calls_had, r->n_calls_had);
            r->calls_had = now;
            r->n_calls_had = n;
            now = NULL;
            n = 0;
        }
        if (last) {
            r->sent = r->out_len;
            r->sent_finish = true;
        }
    }
    qv_free(d);
    qv_proto_tool_calls_free(now, n);
    *oom = st != QV_OK;
    return json;
}

/* Member r's next stream chunk (new text and logprobs, or its finish), or NULL when it has
 * nothing to send now (or no memory: *oom). */
static char *member_chunk(request *l, request *r, bool *oom) {
    qv_proto_result res = chunk_of(l, r);
    if (r->sent_finish) return NULL; /* finished, or the stream ended with an error */
    if (r->tools == QV_PROTO_TOOLS_REQUIRED || r->tools == QV_PROTO_TOOLS_AUTO ||
        r->tools == QV_PROTO_TOOLS_AUTO_JSON || r->tools == QV_PROTO_TOOLS_AUTO_MISTRAL)
        return calls_chunk(l, r, oom);
    /* an echo's prompt logprobs wait for its text, so their text offsets are right */
    bool new_text = !r->echo && (r->out_len > r->sent || r->n_lps > r->lps_sent);
    char *json = NULL;
    char id[112];                                /* "call_" + a call base + "_0" */
    qv_proto_tool_call call = {.arguments = ""}; /* a named call's piece */
    if (r->tools == QV_PROTO_TOOLS_NAMED) {
        res.calls = &call;
        res.n_calls = 1;
        if (!r->sent_first) {
            named_call_id(l, r, id);
            call.id = id;
            call.name = r->tool_name;
        }
    }
    if (new_text || (!r->sent_first && r->endpoint == QV_PROTO_CHAT)) {
        res.text = r->out + r->sent;
        res.text_len = r->out_len - r->sent;
        res.text_offset = r->sent;
        res.lps = r->lps + r->lps_sent;
        res.n_lps = r->n_lps - r->lps_sent;
        res.finish_reason = r->done ? r->finish : NULL;
        char *piece = res.n_calls ? qv_malloc(res.text_len + 1) : NULL;
        if (piece) {
            if (res.text_len) memcpy(piece, res.text, res.text_len);
            piece[res.text_len] = '\0';
            call.arguments = piece;
        }
        json = res.n_calls && !piece ? NULL : qv_proto_encode_chunk(&res, !r->sent_first);
        qv_free(piece);
        r->sent = r->out_len;
        r->lps_sent = r->n_lps;
        r->sent_first = true;
        if (r->done) r->sent_finish = true;
    } else if (r->done && !r->sent_finish) {
        res.text = "";
        res.finish_reason = r->finish;
        res.n_calls = 0; /* the finish alone */
        json = qv_proto_encode_chunk(&res, !r->sent_first);
        r->sent_first = r->sent_finish = true;
    } else {
        return NULL;
    }
    *oom = !json;
    return json;
}

/* A Responses API answer as it stands (member r, one per request): its text so far that is
 * surely the message, and its calls: once done those of the finished answer, before that the
 * calls read so far (qv_proto_tool_calls_partial; a named function's: the text so far). *calls
 * gets what the caller must free (qv_proto_tool_calls_free). False when out of memory. */
static bool response_out(request *r, qv_proto_response_out *o, qv_proto_tool_call **calls,
                         size_t *n_calls) {
    *calls = NULL;
    *n_calls = 0;
    const bool automatic = r->tools == QV_PROTO_TOOLS_AUTO ||
                           r->tools == QV_PROTO_TOOLS_AUTO_JSON ||
                           r->tools == QV_PROTO_TOOLS_AUTO_MISTRAL;
    size_t text = r->tools == QV_PROTO_TOOLS_NONE ? r->out_len : automatic ? stream_limit(r) : 0;
    const char *out = r->out ? r->out : "";
    if (r->done && r->tools) {
        if (!member_calls(r, r, calls, n_calls, &text)) return false;
    } else if (r->tools == QV_PROTO_TOOLS_NAMED && r->out_len) {
        qv_proto_tool_call *c = qv_calloc(1, sizeof(*c));
        if (!c) return false;
        *calls = c;
        *n_calls = 1;
        if (!(c->id = qv_malloc(112)) || !(c->name = qv_strdup(r->tool_name)) ||
            !(c->arguments = qv_strndup(out, r->out_len)))
            return false;
        named_call_id(r, r, c->id);
    } else if (r->tools && r->tools != QV_PROTO_TOOLS_NAMED) {
        if (calls_so_far(r, r, calls, n_calls) != QV_OK) return false;
    }
    *o = (qv_proto_response_out){.id = r->id,
                                 .model = r->model_echo,
                                 .created = r->created,
                                 .completed_at = r->done ? (int64_t)time(NULL) : 0,
                                 .echo = r->resp_echo,
                                 .done = r->done,
                                 .finish = r->finish,
                                 .text = out,
                                 .text_len = *n_calls || !r->done ? text : r->out_len,
                                 .logprobs = r->logprobs,
                                 .lps = r->lps,
                                 .n_lps = r->n_lps,
                                 .calls = *calls,
                                 .n_calls = *n_calls,
                                 .input_tokens = r->usage_prompt,
                                 .output_tokens = r->n_gen,
                                 .cached_tokens = QV_MAX(r->cached, 0)};
    if (r->background) { /* its states beyond in_progress / completed / incomplete */
        o->status = r->cancelled    ? "cancelled"
                    : r->err_status ? "failed"
                    : r->done       ? NULL
                    : r->admitted   ? "in_progress"
                                    : "queued";
        if (r->err_status && !r->cancelled) {
            o->error_code = r->err_code ? r->err_code : "server_error";
            o->error_message = r->err_msg;
        }
    }
    return true;
}

/* Random hex digits filling out[0..cap-1) (64 bits at a time from getrandom; a clock mix if
 * that fails), NUL-terminated: the unguessable part of the ids of kept records. */
static void random_hex(char *out, size_t cap) {
    for (size_t at = 0; at + 1 < cap; at += 16) {
        uint64_t v;
        if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
            v = qv_fmix64((uint64_t)(uintptr_t)&v ^ (uint64_t)(qv_time_s() * 1e9) ^ at);
        char hex[17];
        snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)v);
        const size_t n = QV_MIN((size_t)16, cap - 1 - at);
        memcpy(out + at, hex, n);
        out[at + n] = '\0';
    }
}

/* resp_store edits: the conversation's items followed by a response's new ones. */
typedef struct join_items_ctx {
    const char *more; /* a JSON array of items */
    size_t from;      /* the first of more's items to add */
} join_items_ctx;

static qv_status join_items(const char *response, const char *items, void *user,
                            char **new_response, char **new_items) {
    (void)response;
    const join_items_ctx *j = user;
    *new_response = NULL;
    return (*new_items = qv_proto_items_join(items, j->more, j->from)) ? QV_OK : QV_ERR_NOMEM;
}

/* Keeps a finished response (once) for previous_response_id and GET /v1/responses/{id}: the
 * response object (encoded, the caller's; NULL: encoded here) and the conversation up to its
 * output. */
static void keep_response(request *r, const qv_proto_response_out *o, const char *encoded) {
    const bool keep = r->resp_keep, append = r->conv_id[0] != '\0';
    if ((!keep && !append) || !r->srv->resp_store) return;
    r->resp_keep = false;
    char *conv = qv_proto_response_conversation(r->resp_items, o);
    if (append) { /* the conversation gets this response's input and output items */
        join_items_ctx j = {.more = conv, .from = r->conv_prior};
        const qv_status st =
            conv ? qv_resp_store_edit(r->srv->resp_store, r->conv_id, r->resp_owner, join_items, &j)
                 : QV_ERR_NOMEM;
        if (st != QV_OK)
            QV_LOGW("response %s: its items were not added to conversation %s (%s)", r->id,
                    r->conv_id,
                    st == QV_ERR_NOT_FOUND ? "deleted meanwhile"
                    : st == QV_ERR_LIMIT   ? "too large for --responses-store-mb"
                                           : "out of memory");
        r->conv_id[0] = '\0';
    }
    if (keep) {
        char *own = encoded ? NULL : qv_proto_response_encode(o);
        const char *json = encoded ? encoded : own;
        if (!json || !conv ||
            !qv_resp_store_put(r->srv->resp_store, r->id, r->resp_owner, json, conv))
            QV_LOGW("response %s not kept (too large for --responses-store-mb, or out of memory)",
                    r->id);
        qv_free(own);
    }
    qv_free(conv);
}

/* A generation request's metrics and log line, once it is over: when its connection completes,
 * or (background) when the engine is done with it. */
static void account_request(server *srv, request *r, int status, const char *note, double total,
                            const char *xrid) {
    req_lock(r);
    const int n_out = group_generated(r), n_cached = group_cached(r), n_in = r->usage_prompt;
    const double ttft = r->t_first > 0 ? r->t_first - r->t_arrival : -1;
    const double tpot =
        r->n_gen > 1 && r->t_done > 0 ? (r->t_done - r->t_first) / (r->n_gen - 1) : -1;
    req_unlock(r);
    qv_metrics_request(srv->metrics, status, n_in, n_out, ttft, tpot, total);
    qv_metrics_adapter_request(srv->metrics, r->adapter, n_in, n_out, ttft, tpot);
    QV_LOGI("request %s adapter=%s status=%d tokens_in=%d tokens_cached=%d tokens_out=%d "
            "ttft=%.3fs total=%.3fs%s%s%s",
            r->id, r->adapter ? r->adapter : "-", status, n_in, n_cached, n_out, ttft, total, note,
            xrid[0] ? " x-request-id=" : "", xrid);
}

/* A Responses API stream's events since the last call: its typed events, or an error event.
 * "" (*len 0) when there is nothing new, NULL when out of memory; *end once the stream's last
 * event is made. A finished response is kept. Caller holds r->mu. */
static char *response_events_now(request *r, size_t *len, bool *end) {
    char *ev = NULL;
    *len = 0;
    if (r->err_status) {
        ev = qv_proto_response_error_event(&r->rstream, r->err_code ? r->err_code : "server_error",
                                           r->err_msg, len);
    } else {
        qv_proto_response_out o;
        qv_proto_tool_call *calls;
        size_t n_calls;
        if (response_out(r, &o, &calls, &n_calls))
            ev = qv_proto_response_events(&r->rstream, &o, len);
        if (ev && r->rstream.finished) keep_response(r, &o, NULL);
        qv_proto_tool_calls_free(calls, n_calls);
    }
    *end = r->rstream.finished || !ev;
    return ev;
}

/* A Responses API stream's next frame (one connection's stream). */
static bool response_next_frame(request *r) {
    if (r->sent_done) return false;
    size_t len;
    bool end;
    char *ev = response_events_now(r, &len, &end);
    if (ev && !len) { /* nothing new */
        qv_free(ev);
        return false;
    }
    r->sent_done = end;
    r->stream_failed = !ev; /* its events are lost: end the stream in error */
    r->frame = ev;
    r->frame_len = len;
    r->frame_off = 0;
    return ev != NULL;
}

/* A background stream: adds the events since the last call to its log, indexing where each
 * begins (an event ends with a blank line: its JSON holds no raw newline). False when there
 * was nothing new or the log has ended. Out of memory ends the log (readers end in error).
 * Caller holds r->mu. */
static bool log_more(request *r) {
    if (r->log_ended) return false;
    size_t len;
    bool end;
    char *ev = response_events_now(r, &len, &end);
    bool ok = ev != NULL;
    if (ok && len && r->evlog_len + len + 1 > r->evlog_cap) {
        const size_t cap = (r->evlog_len + len + 1) * 2;
        char *p = qv_realloc(r->evlog, cap);
        ok = p != NULL;
        if (p) r->evlog = p, r->evlog_cap = cap;
    }
    for (size_t i = 0; ok && i < len;) {
        if (r->n_ev == r->cap_ev) {
            const size_t cap = r->cap_ev ? r->cap_ev * 2 : 64;
            size_t *p = qv_realloc(r->ev_at, cap * sizeof(*p));
            if (!(ok = p != NULL)) break;
            r->ev_at = p, r->cap_ev = cap;
        }
        r->ev_at[r->n_ev++] = r->evlog_len + i;
        const char *blank = strstr(ev + i, "\n\n");
        i = blank ? (size_t)(blank - ev) + 2 : len;
    }
    if (ok && len) {
        memcpy(r->evlog + r->evlog_len, ev, len);
        r->evlog_len += len;
        r->evlog[r->evlog_len] = '\0';
    }
    qv_free(ev);
    if (!ok) {
        r->n_ev = 0; /* what was indexed past the log's end is dropped with it */
        r->evlog_len = 0;
    }
    r->log_ended = end || !ok;
    return ok && len;
}

static ssize_t log_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    log_reader *rd = cls;
    request *r = rd->r;
    req_lock(r);
    for (;;) {
        if (rd->off == SIZE_MAX && rd->from < r->n_ev) rd->off = r->ev_at[rd->from];
        if (rd->off != SIZE_MAX && rd->off < r->evlog_len) {
            const size_t n = QV_MIN(max, r->evlog_len - rd->off);
            memcpy(buf, r->evlog + rd->off, n);
            rd->off += n;
            req_unlock(r);
            return (ssize_t)n;
        }
        if (log_more(r)) continue;
        if (r->log_ended) {
            const bool whole = r->n_ev > 0 && r->evlog_len; /* an out-of-memory log is empty */
            req_unlock(r);
            return whole ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
        }
        rd->suspended = true;
        MHD_suspend_connection(rd->conn);
        req_unlock(r);
        return 0;
    }
}

static void log_reader_free(void *cls) {
    log_reader *rd = cls;
    request *r = rd->r;
    req_lock(r);
    log_reader **pp = &r->readers;
    while (*pp != rd)
        pp = &(*pp)->next;
    *pp = rd->next;
    req_unlock(r);
    atomic_fetch_sub(&r->srv->n_open, 1);
    request_release(r);
    qv_free(rd);
}

/* Answers c with a Server-Sent Events stream that `reader` writes from cls (freed by
 * free_cb, at once when the answer cannot be made). */
static enum MHD_Result send_sse(struct MHD_Connection *c, conn_ctx *ctx,
                                MHD_ContentReaderCallback reader, void *cls,
                                MHD_ContentReaderFreeCallback free_cb) {
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, reader, cls, free_cb);
    if (!resp) {
        free_cb(cls);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    add_request_id(resp, ctx);
    ctx->status = 200;
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Answers connection c with r's event log from event `from` on (a background stream, live). */
static enum MHD_Result send_log(struct MHD_Connection *c, conn_ctx *ctx, request *r, size_t from) {
    log_reader *rd = qv_calloc(1, sizeof(*rd));
    if (!rd) return send_error(c, ctx, 500, NULL, NULL, "out of memory");
    *rd = (log_reader){.r = r, .conn = c, .from = from, .off = SIZE_MAX};
    req_lock(r);
    r->refs++;
    rd->next = r->readers;
    r->readers = rd;
    req_unlock(r);
    atomic_fetch_add(&r->srv->n_open, 1); /* a drain lets it finish writing */
    return send_sse(c, ctx, log_read, rd, log_reader_free);
}

/* ---- background responses ---- */

/* The store's id of a background stream's events: "sse_" and the response's id without
 * "resp_" (no route reads it as a response or a conversation). */
static void sse_id(char *out, size_t cap, const char *resp_id) {
    snprintf(out, cap, "sse_%s", resp_id + (strncmp(resp_id, "resp_", 5) ? 0 : 5));
}

/* A background response's object as it stands (queued, in progress with the output so far, or
 * final), and with conv (non-NULL) the conversation up to it (input_items). NULL when out of
 * memory. */
static char *bg_snapshot(request *r, char **conv) {
    req_lock(r);
    qv_proto_response_out o;
    qv_proto_tool_call *calls;
    size_t n_calls;
    char *json = NULL;
    if (response_out(r, &o, &calls, &n_calls)) {
        json = qv_proto_response_encode(&o);
        if (conv && json && !(*conv = qv_proto_response_conversation(r->resp_items, &o)))
            json = (qv_free(json), NULL);
    }
    qv_proto_tool_calls_free(calls, n_calls);
    req_unlock(r);
    return json;
}

/* The background response `id` of owner that the engine has not finished with (and that was
 * not deleted), with a reference (request_release), or NULL. */
static request *bg_find(server *srv, const char *id, const char *owner) {
    pthread_mutex_lock(&srv->bg_mu);
    request *r = srv->bg_head;
    while (r && (strcmp(r->id, id) || strcmp(r->resp_owner, owner)))
        r = r->bg_next;
    bool found = false;
    if (r) {
        req_lock(r);
        found = !r->forgotten; /* deleted: gone at once, though the engine may still hold it */
        if (found) r->refs++;
        req_unlock(r);
    }
    pthread_mutex_unlock(&srv->bg_mu);
    return found ? r : NULL;
}

/* Ends a background response that has not finished: no token is taken after this, its status
 * is "cancelled", and the engine frees its sequence (a message to the engine thread). `forget`
 * (a DELETE): it is not kept either. Any thread. */
static void bg_cancel(server *srv, request *r, bool forget) {
    req_lock(r);
    const bool live = !r->done;
    if (forget) {
        r->forgotten = true;
        r->resp_keep = false;
        r->conv_id[0] = '\0';
    }
    if (live) {
        r->done = r->cancelled = true;
        r->finish = "stop";
        r->t_done = qv_time_s();
        r->refs++; /* the message's */
        tenant_leave_locked(r);
        wake_locked(r); /* a stream ends with response.cancelled */
    }
    req_unlock(r);
    if (live && !post(srv, MSG_CANCEL, r)) request_release(r);
}

/* Engine thread, from engine_release: a background response is over. It is kept (a cancelled
 * or failed one too, so that polling sees its end; only a completed or incomplete one adds its
 * turn to its conversation), logged, counted, and leaves the background list. */
static void bg_end(request *r) {
    server *srv = r->srv;
    req_lock(r);
    if (r->cancelled || r->err_status) r->conv_id[0] = '\0';
    const bool keep_log = r->stream && !r->forgotten;
    while (r->stream && log_more(r)) /* a stream's events to the end, for its readers to come */
        ;
    qv_proto_response_out o;
    qv_proto_tool_call *calls;
    size_t n_calls;
    if (response_out(r, &o, &calls, &n_calls))
        keep_response(r, &o, NULL);
    else if (r->resp_keep)
        QV_LOGW("response %s not kept (out of memory)", r->id);
    qv_proto_tool_calls_free(calls, n_calls);
    char sse[sizeof(r->id) + 8];
    sse_id(sse, sizeof(sse), r->id);
    if (keep_log &&
        (!r->n_ev || !qv_resp_store_put(srv->resp_store, sse, r->resp_owner, r->evlog, "")))
        QV_LOGW("response %s: its stream's events were not kept (too large for "
                "--responses-store-mb, or out of memory)",
                r->id);
    const bool cancelled = r->cancelled;
    const int status = cancelled ? 499 : r->err_status ? r->err_status : 200;
    req_unlock(r);
    account_request(srv, r, status, cancelled ? " (background, cancelled)" : " (background)",
                    qv_time_s() - r->t_arrival, r->xrid);
    pthread_mutex_lock(&srv->bg_mu);
    request **pp = &srv->bg_head;
    while (*pp && *pp != r)
        pp = &(*pp)->bg_next;
    if (*pp) *pp = r->bg_next;
    pthread_mutex_unlock(&srv->bg_mu);
    atomic_fetch_sub(&srv->n_open, 1);
    request_release(r); /* the list's reference */
}

/* Builds the group's next SSE frame into the lead's frame buffer: the members' chunks in
 * index order, then (all finished) the usage chunk and [DONE]; an error ends the stream.
 * False when there is nothing to send now. Caller holds the lead's mutex. */
static bool next_frame(request *l) {
    if (l->endpoint == QV_PROTO_GENERATE) return tgi_next_frame(l);
    if (l->endpoint == QV_PROTO_RESPONSES) return response_next_frame(l);
    bool all_sent = true, oom = false;
    for (int i = 0; i < n_choices(l); i++) {
        request *r = choice_at(l, i);
        if (r->err_status && !l->sent_usage) {
            for (int k = 0; k < n_choices(l); k++)
                choice_at(l, k)->sent_finish = true;
            l->sent_usage = true;
            return set_frame(l,
                             qv_proto_encode_error(r->err_msg, "server_error", NULL, r->err_code));
        }
        char *json = member_chunk(l, r, &oom);
        if (json || oom) return set_frame(l, json);
        all_sent = all_sent && r->sent_finish;
    }
    if (!all_sent) return false;
    if (!l->sent_usage) {
        l->sent_usage = true;
        if (!l->include_usage) return next_frame(l);
        qv_proto_result res = {.endpoint = l->endpoint,
                               .id = l->id,
                               .model = l->model_echo,
                               .created = l->created,
                               .usage = true,
                               .prompt_tokens = l->usage_prompt,
                               .cached_tokens = group_cached(l),
                               .completion_tokens = group_generated(l)};
        return set_frame(l, qv_proto_encode_chunk(&res, false));
    }
    if (!l->sent_done) {
        l->sent_done = true;
        l->frame = qv_strdup(QV_PROTO_SSE_DONE);
        l->frame_len = l->frame ? strlen(l->frame) : 0;
        l->frame_off = 0;
        return l->frame != NULL;
    }
    return false;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    request *r = cls;
    req_lock(r);
    for (;;) {
        if (r->frame && r->frame_off < r->frame_len) {
            size_t n = QV_MIN(max, r->frame_len - r->frame_off);
            memcpy(buf, r->frame + r->frame_off, n);
            r->frame_off += n;
            req_unlock(r);
            return (ssize_t)n;
        }
        qv_free(r->frame);
        r->frame = NULL;
        if (next_frame(r)) continue;
        if (r->stream_failed) {
            req_unlock(r);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (r->sent_done) {
            req_unlock(r);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (group_done(r) && !r->frame) { /* out of memory building a frame */
            req_unlock(r);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        r->suspended = true;
        MHD_suspend_connection(r->conn);
        req_unlock(r);
        return 0;
    }
}

static void stream_free(void *cls) { request_release(cls); }

/* Called again after the engine resumed the connection. */
static enum MHD_Result respond(struct MHD_Connection *c, conn_ctx *ctx) {
    request *r = ctx->req;
    req_lock(r);
    request *bad = NULL; /* a failed member fails the whole answer (before a stream starts) */
    for (int i = 0; i < n_choices(r) && !bad; i++)
        if (choice_at(r, i)->err_status) bad = choice_at(r, i);
    if (bad && !(r->stream && r->admitted)) {
        int st = bad->err_status;
        char msg[384];
        snprintf(msg, sizeof(msg), "%s", bad->err_msg);
        const char *code = bad->err_code;
        req_unlock(r);
        return send_error(c, ctx, st, NULL, code, "%s", msg);
    }
    if (r->stream && r->background && (r->admitted || r->done)) {
        req_unlock(r);
        return send_log(c, ctx, r, 0); /* the log other connections may read too */
    }
    if (r->stream && (r->admitted || r->done)) {
        r->refs++;
        req_unlock(r);
        return send_sse(c, ctx, stream_reader, r, stream_free);
    }
    if (!r->stream && r->done && r->endpoint == QV_PROTO_GENERATE) {
        char *json = tgi_response(r);
        req_unlock(r);
        if (!json) return send_error(c, ctx, 500, NULL, NULL, "out of memory");
        return send_json(c, ctx, 200, json);
    }
    if (!r->stream && r->done && r->endpoint == QV_PROTO_RESPONSES) {
        qv_proto_response_out o;
        qv_proto_tool_call *calls;
        size_t n_calls;
        char *json = response_out(r, &o, &calls, &n_calls) ? qv_proto_response_encode(&o) : NULL;
        if (json) keep_response(r, &o, json);
        qv_proto_tool_calls_free(calls, n_calls);
        req_unlock(r);
        if (!json) return send_error(c, ctx, 500, NULL, NULL, "out of memory");
        return send_json(c, ctx, 200, json);
    }
    if (!r->stream && group_done(r)) {
        qv_proto_result res[QV_PROTO_MAX_CHOICES];
        qv_proto_tool_call *calls[QV_PROTO_MAX_CHOICES] = {0};
        size_t n_calls[QV_PROTO_MAX_CHOICES] = {0};
        bool oom = false;
        const int n = n_choices(r);
        for (int i = 0; i < n; i++) {
            const request *m = choice_at(r, i);
            size_t content = m->out_len;
            if (m->tools && !member_calls(r, m, &calls[i], &n_calls[i], &content)) oom = true;
            res[i] = (qv_proto_result){.endpoint = r->endpoint,
                                       .id = r->id,
                                       .model = r->model_echo,
                                       .created = r->created,
                                       .index = m->index,
                                       .text = m->out ? m->out : "",
                                       .text_len = m->out_len,
                                       .finish_reason = m->finish,
                                       .logprobs = m->logprobs,
                                       .lps = m->lps,
                                       .n_lps = m->n_lps,
                                       .usage = true,
                                       .prompt_tokens = r->usage_prompt,
                                       .cached_tokens = group_cached(r),
                                       .completion_tokens = group_generated(r),
                                       .calls = calls[i],
                                       .n_calls = n_calls[i],
                                       .prompt_logprobs = m->plp,
                                       .plps = m->plps,
                                       .n_plps = m->n_plps};
            if (n_calls[i]) res[i].text_len = content; /* "auto": the text before the calls */
            if (m->tools != QV_PROTO_TOOLS_NAMED && n_calls[i] && !strcmp(m->finish, "stop"))
                res[i].finish_reason = "tool_calls";
        }
        char *json = oom ? NULL : qv_proto_encode_response_choices(res, (size_t)n);
        for (int i = 0; i < n; i++)
            qv_proto_tool_calls_free(calls[i], n_calls[i]);
        req_unlock(r);
        if (!json) return send_error(c, ctx, 500, NULL, NULL, "out of memory");
        return send_json(c, ctx, 200, json);
    }
    /* Not ready (a wake-up raced ahead): wait again. */
    r->suspended = true;
    MHD_suspend_connection(c);
    req_unlock(r);
    return MHD_YES;
}

/* Last path component, ignoring trailing slashes. Owner: caller (qv_free). */
static char *basename_of(const char *p) {
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && p[b - 1] != '/')
        b--;
    return qv_strndup(p + b, n - b);
}

/* One adapter name a request uses: allowed to key `who` (else 403; a key limited to some
 * adapters learns nothing of the others, not even existence) and present in the store (else
 * 404; *version is what it resolves to now). `param` names the field in errors; `part` words
 * the 404 for a part of merged_adapters. Otherwise sends the error (*ret), returns false. */
static bool resolve_adapter(server *srv, struct MHD_Connection *c, conn_ctx *ctx, int who,
                            const char *name, const char *param, bool part,
                            char version[QV_STORE_VERSION_LEN + 1], enum MHD_Result *ret) {
    if (!key_allows(ctx->kr, who, name)) {
        *ret = send_error(c, ctx, 403, param, "permission_denied",
                          "this API key may not use adapter '%.128s'", name);
        return false;
    }
    qv_error rerr = {0};
    qv_status rs = QV_ERR_NOT_FOUND;
    if (srv->store && (qv_store_name_valid(name) || qv_store_version_valid(name)))
        rs = qv_store_resolve(srv->store, name, version, NULL, &rerr);
    if (rs == QV_ERR_NOT_FOUND || rs == QV_ERR_INVALID) {
        if (part)
            *ret = send_error(c, ctx, 404, param, "model_not_found",
                              "adapter '%.128s' of 'merged_adapters' not found (see GET "
                              "/v1/adapters)",
                              name);
        else
            *ret = send_error(c, ctx, 404, param, "model_not_found",
                              "model or adapter '%.128s' not found (base model '%s'; see GET "
                              "/v1/models)",
                              name, srv->base_name);
        return false;
    }
    if (rs != QV_OK) {
        *ret = send_error(c, ctx, 500, param, NULL, "%s", rerr.msg);
        return false;
    }
    return true;
}

/* The model a request names: the base model (*aname stays NULL), "<base>:<adapter>",
 * adapter_id, or "<adapter>" alone in place of the base, which must exist in the store and be
 * allowed to key `who` (*aname, and the version it resolves to now). Otherwise sends the error
 * (*ret) and returns false. */
static bool resolve_model(server *srv, struct MHD_Connection *c, conn_ctx *ctx,
                          const qv_proto_request *pr, int who, const char **aname,
                          char aversion[QV_STORE_VERSION_LEN + 1], enum MHD_Result *ret) {
    if (pr->adapter && !model_matches(srv, pr->base)) {
        *ret =
            send_error(c, ctx, 404, "model", "model_not_found",
                       "model '%s' not found (this server serves '%s')", pr->base, srv->base_name);
        return false;
    }
    if (!pr->adapter && model_matches(srv, pr->base)) return true;
    const char *name = pr->adapter ? pr->adapter : pr->base;
    if (!resolve_adapter(srv, c, ctx, who, name, pr->adapter ? "adapter_id" : "model", false,
                         aversion, ret))
        return false;
    *aname = name;
    return true;
}

/* merged_adapters: every part must exist and be allowed to key `who` (as resolve_model
 * checks one adapter) and `model` must name the base. Fills *m, the merge's key (a digest of
 * the parts' versions and the parameters: the registry caches the merged adapter under it)
 * and its display name ("merged(a+b+...)", for logs and metrics). Otherwise sends the
 * error. */
static bool resolve_merge(server *srv, struct MHD_Connection *c, conn_ctx *ctx,
                          const qv_proto_request *pr, int who, merge_spec *m,
                          char key[QV_STORE_VERSION_LEN + 1], char *name, size_t name_cap,
                          enum MHD_Result *ret) {
    if (!model_matches(srv, pr->base)) {
        *ret = send_error(c, ctx, 400, "model", "invalid_value",
                          "with 'merged_adapters', 'model' must name the base model ('%s') or "
                          "be left out",
                          srv->base_name);
        return false;
    }
    memset(m, 0, sizeof(*m));
    m->p.n = (int)pr->n_merge;
    m->p.strategy = (enum qv_merge_strategy)pr->merge_strategy;
    m->p.density = pr->merge_density;
    m->p.sign = (enum qv_merge_sign)pr->merge_sign;
    m->p.seed = pr->merge_seed;
    qv_sha256 h;
    qv_sha256_init(&h);
    static const char tag[] = "quiver merged_adapters 1";
    qv_sha256_update(&h, tag, sizeof(tag));
    snprintf(name, name_cap, "merged(");
    for (size_t i = 0; i < pr->n_merge; i++) {
        const char *id = pr->merge_ids[i];
        if (!resolve_adapter(srv, c, ctx, who, id, "merged_adapters", true, m->versions[i], ret))
            return false;
        snprintf(m->names[i], sizeof(m->names[i]), "%s", id);
        m->p.weights[i] = pr->merge_weights[i];
        qv_sha256_update(&h, m->versions[i], QV_STORE_VERSION_LEN);
        qv_sha256_update(&h, &m->p.weights[i], sizeof(m->p.weights[i]));
        const size_t len = strlen(name);
        snprintf(name + len, name_cap - len, "%s%s", i ? "+" : "", id);
    }
    const size_t len = strlen(name);
    snprintf(name + len, name_cap - len, ")");
    const int32_t e[2] = {(int32_t)m->p.strategy, (int32_t)m->p.sign};
    qv_sha256_update(&h, e, sizeof(e));
    qv_sha256_update(&h, &m->p.density, sizeof(m->p.density));
    qv_sha256_update(&h, &m->p.seed, sizeof(m->p.seed));
    uint8_t d[32];
    qv_sha256_final(&h, d);
    for (int i = 0; i < 32; i++)
        snprintf(key + 2 * i, 3, "%02x", d[i]);
    return true;
}

/* continue_final_message as transformers does it: cuts the rendered chat right after the last
 * occurrence of the final message's text (else of that text without surrounding blanks, which
 * templates often trim). The message is the last one, so only the tail is searched (its text
 * plus 256 bytes of closing markers): linear time whatever the input. False when absent. */
static bool cut_after_last(char *rendered, const char *msg) {
    const size_t hl = strlen(rendered);
    const char *b = msg, *e = msg + strlen(msg);
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            while (b < e && strchr(" \t\r\n", *b))
                b++;
            while (e > b && strchr(" \t\r\n", e[-1]))
                e--;
        }
        const size_t n = (size_t)(e - b);
        if (n == 0 || n > hl) continue;
        const size_t lo = hl - n > 256 ? hl - n - 256 : 0;
        for (size_t i = hl - n + 1; i-- > lo;)
            if (!memcmp(rendered + i, b, n)) {
                rendered[i + n] = '\0';
                return true;
            }
    }
    return false;
}

/* The field that holds the prompt in an endpoint's requests. */
static const char *prompt_param(enum qv_proto_endpoint ep) {
    return ep == QV_PROTO_CHAT        ? "messages"
           : ep == QV_PROTO_RESPONSES ? "input"
           : ep == QV_PROTO_GENERATE  ? "inputs"
                                      : "prompt";
}

/* The ids of a request's text: its chat messages rendered with the model's template
 * (*prompt, owned by the caller), or its text prompt; add_special_tokens as the request says.
 * Otherwise sends the error (*ret) and returns false. */
static bool encode_text(server *srv, struct MHD_Connection *c, conn_ctx *ctx,
                        const qv_proto_request *pr, char **prompt, int32_t **ids, size_t *n_ids,
                        enum MHD_Result *ret) {
    qv_error err = {0};
    const char *src = pr->prompt;
    size_t src_len = pr->prompt_len;
    if (pr->n_messages && pr->tmpl_unrendered &&
        qv_chat_template_reads(srv->tok, srv->cfg->chat_template, pr->tmpl_unrendered)) {
        *ret = send_error(c, ctx, 400, "chat_template_kwargs", NULL,
                          "'chat_template_kwargs.%s' asks for what quiver's rendering of this "
                          "chat template lacks (it renders tools_in_user_message true, no "
                          "builtin_tools or custom_tools)",
                          pr->tmpl_unrendered);
        return false;
    }
    if (pr->n_messages) {
        qv_chat_msg *msgs = qv_calloc(pr->n_messages, sizeof(*msgs));
        if (!msgs) {
            *ret = send_error(c, ctx, 500, NULL, NULL, "out of memory");
            return false;
        }
        size_t n_calls = 0;
        for (size_t i = 0; i < pr->n_messages; i++)
            n_calls += pr->messages[i].n_calls;
        qv_chat_call *calls = n_calls ? qv_calloc(n_calls, sizeof(*calls)) : NULL;
        if (n_calls && !calls) {
            qv_free(msgs);
            *ret = send_error(c, ctx, 500, NULL, NULL, "out of memory");
            return false;
        }
        for (size_t i = 0, k = 0; i < pr->n_messages; i++) {
            const qv_proto_message *pm = &pr->messages[i];
            msgs[i].role = pm->role;
            msgs[i].content = pm->content;
            msgs[i].calls = calls + k;
            msgs[i].n_calls = pm->n_calls;
            msgs[i].tool_call_id = pm->tool_call_id;
            for (size_t j = 0; j < pm->n_calls; j++, k++)
                calls[k] = (qv_chat_call){.name = pm->calls[j].name,
                                          .arguments = pm->calls[j].arguments,
                                          .id = pm->calls[j].id};
        }
        qv_status s = qv_chat_render_kw(srv->tok, srv->cfg->chat_template, msgs, pr->n_messages,
                                        pr->tools_text, pr->tools_len, pr->add_generation_prompt,
                                        NULL, pr->tmpl_date_string, prompt, &err);
        qv_free(calls);
        qv_free(msgs);
        if (s != QV_OK) {
            *ret = send_error(c, ctx, s == QV_ERR_NOMEM ? 500 : 400,
                              pr->endpoint == QV_PROTO_RESPONSES ? "input" : "messages", NULL, "%s",
                              err.msg);
            return false;
        }
        if (pr->continue_final_message &&
            !cut_after_last(*prompt, pr->messages[pr->n_messages - 1].content)) {
            *ret = send_error(c, ctx, 400, "continue_final_message", "invalid_value",
                              "the chat template does not show the last message's text");
            return false;
        }
        src = *prompt;
        src_len = strlen(*prompt);
    }
    if (qv_tokenizer_encode(srv->tok, src, src_len, pr->add_special_tokens, ids, n_ids, &err)) {
        *ret = send_error(c, ctx, 400,
                          pr->n_messages && pr->endpoint != QV_PROTO_RESPONSES
                              ? "messages"
                              : prompt_param(pr->endpoint),
                          NULL, "%s", err.msg);
        return false;
    }
    return true;
}

/* Whether a prompt of n tokens fits: within --max-prompt-tokens and leaving the model's
 * context room for max_tokens (at least one token when unset). */
static bool prompt_fits(const server *srv, const qv_proto_request *pr, size_t n) {
    const int64_t need = pr->max_tokens > 0 ? pr->max_tokens : 1;
    return (int64_t)n <= srv->cfg->max_prompt_tokens &&
           (int64_t)n + need <= srv->model->cfg.max_pos;
}

/* encode_text for a Responses request, with `truncation: "auto"` (truncate): when the prompt
 * does not fit (prompt_fits), the conversation's earliest turns are left out, the fewest that
 * make it fit. A turn is a user message and what follows it up to the next one; the system
 * messages before the first turn (instructions) stay, and so does the last turn: when it alone
 * does not fit, its prompt is the answer and the usual length checks refuse it. Leaving out
 * more turns never lengthens the prompt, so a binary search renders O(log turns) prompts.
 * *n_left: the messages left out (0 when nothing was). */
static bool encode_fitted(server *srv, struct MHD_Connection *c, conn_ctx *ctx,
                          qv_proto_request *pr, bool truncate, char **prompt, int32_t **ids,
                          size_t *n_ids, size_t *n_left, enum MHD_Result *ret) {
    *n_left = 0;
    if (!encode_text(srv, c, ctx, pr, prompt, ids, n_ids, ret)) return false;
    if (!truncate || prompt_fits(srv, pr, *n_ids)) return true;
    const size_t n = pr->n_messages;
    size_t lead = 0; /* leading system messages */
    while (lead < n && !strcmp(pr->messages[lead].role, "system"))
        lead++;
    size_t *turn = qv_malloc((n + 1) * sizeof(*turn)), n_turns = 0;
    qv_proto_message *view = qv_malloc((n + 1) * sizeof(*view)), *all = pr->messages;
    if (!turn || !view) {
        qv_free(turn);
        qv_free(view);
        *ret = send_error(c, ctx, 500, NULL, NULL, "out of memory");
        return false;
    }
    for (size_t i = lead; i < n; i++)
        if (i == lead || !strcmp(pr->messages[i].role, "user")) turn[n_turns++] = i;
    memcpy(view, all, lead * sizeof(*view));
    size_t lo = 1, hi = n_turns ? n_turns - 1 : 0; /* turns to leave out: the answer in [lo, hi] */
    bool ok = true;
    while (ok && lo <= hi) {
        const size_t k = lo + (hi - lo) / 2, from = turn[k];
        memcpy(view + lead, all + from, (n - from) * sizeof(*view));
        pr->messages = view; /* encode_text only reads the messages */
        pr->n_messages = lead + n - from;
        char *p2 = NULL;
        int32_t *ids2 = NULL;
        size_t n2 = 0;
        ok = encode_text(srv, c, ctx, pr, &p2, &ids2, &n2, ret);
        pr->messages = all;
        pr->n_messages = n;
        if (!ok) break;
        const bool fits = prompt_fits(srv, pr, n2);
        if (fits || k == n_turns - 1) { /* the fewest turns that fit; or all but the last */
            qv_free(*prompt);
            qv_free(*ids);
            *prompt = p2;
            *ids = ids2;
            *n_ids = n2;
            *n_left = from - lead;
        } else {
            qv_free(p2);
            qv_free(ids2);
        }
        if (fits)
            hi = k - 1;
        else
            lo = k + 1;
    }
    qv_free(turn);
    qv_free(view);
    return ok;
}

/* A Responses request's earlier conversation (*prior, the caller's to free; NULL when none is
 * named): the kept one that its previous_response_id names, or the items of the conversation
 * that its `conversation` names (conv: that id, "" otherwise), looked up for owner. Naming both
 * reads neither (the decoder refuses it). Otherwise sends the 404 (or 500) as *ret and returns
 * false. */
static bool responses_prior(server *srv, struct MHD_Connection *c, conn_ctx *ctx, const char *owner,
                            char **prior, char conv[128], enum MHD_Result *ret) {
    char prev[160];
    const char *body = ctx->body ? ctx->body : "";
    *prior = NULL;
    conv[0] = '\0';
    const bool has_prev = qv_proto_responses_previous(body, ctx->body_len, prev, sizeof(prev));
    const bool has_conv = qv_proto_responses_conversation(body, ctx->body_len, conv, 128);
    if (has_prev == has_conv) { /* neither; or both, which the decoder refuses */
        conv[0] = '\0';
        return true;
    }
    const char *id = has_prev ? prev : conv;
    const qv_status gs = srv->resp_store && !strncmp(id, has_prev ? "resp_" : "conv_", 5)
                             ? qv_resp_store_get(srv->resp_store, id, owner, NULL, prior)
                             : QV_ERR_NOT_FOUND;
    if (gs == QV_OK) return true;
    conv[0] = '\0';
    request *live = has_prev && gs == QV_ERR_NOT_FOUND ? bg_find(srv, id, owner) : NULL;
    if (live) { /* a background response that has not finished: nothing to continue yet */
        request_release(live);
        *ret = send_error(c, ctx, 400, "previous_response_id", "invalid_value",
                          "previous response '%.100s' is still in progress: wait until its "
                          "status is completed",
                          id);
        return false;
    }
    *ret = gs == QV_ERR_NOMEM
               ? send_error(c, ctx, 500, NULL, NULL, "out of memory")
               : send_error(c, ctx, 404, has_prev ? "previous_response_id" : "conversation",
                            has_prev ? "previous_response_not_found" : "conversation_not_found",
                            "%s '%.100s' not found%s",
                            has_prev ? "previous response" : "conversation", id,
                            srv->resp_store ? ""
                                            : " (this server keeps none: "
                                              "--responses-store-mb 0)");
    return false;
}

/* Item references ({"type": "item_reference", "id"}) read items of the responses kept for
 * owner: an id made here ("msg_" / "fc_" / "fco_", a response's id without "resp_", then
 * "_..." or nothing) names its response; found in that response's conversation. Failing that,
 * among the items of the conversation the request continues (its `conversation`, or its
 * previous response's): items the Conversations API added, and turns not kept on their own. */
typedef struct ref_lookup {
    server *srv;
    const char *owner;
    const char *prior; /* the continued conversation's items (a JSON array), or NULL */
} ref_lookup;

static char *lookup_item(void *user, const char *id, bool *nomem) {
    const ref_lookup *rl = user;
    const char *p = strchr(id, '_');
    const size_t n = p ? strcspn(p + 1, "_") : 0;
    char rid[160], *items = NULL;
    bool found = false;
    *nomem = false;
    if (n && n + 6 <= sizeof(rid) && rl->srv->resp_store) {
        snprintf(rid, sizeof(rid), "resp_%.*s", (int)n, p + 1);
        const qv_status st = qv_resp_store_get(rl->srv->resp_store, rid, rl->owner, NULL, &items);
        if ((*nomem = st == QV_ERR_NOMEM)) return NULL;
    }
    char *item = items ? qv_proto_items_find(items, id, false, &found) : NULL;
    qv_free(items);
    if (!found && rl->prior) item = qv_proto_items_find(rl->prior, id, false, &found);
    *nomem = found && !item;
    return item;
}

/* The body with its item references resolved (*out, or NULL when it has none), prior: the items
 * of the conversation it continues. Otherwise sends the 400 (or 500) as *ret and returns
 * false. */
static bool resolve_refs(server *srv, struct MHD_Connection *c, conn_ctx *ctx, const char *owner,
                         const char *prior, char **out, enum MHD_Result *ret) {
    qv_proto_error pe;
    ref_lookup rl = {.srv = srv, .owner = owner, .prior = prior};
    if (qv_proto_responses_resolve(ctx->body ? ctx->body : "", ctx->body_len, lookup_item, &rl, out,
                                   &pe) == QV_OK)
        return true;
    *ret = send_proto_error(c, ctx, &pe);
    return false;
}

/* A Responses body decoded for owner (POST /v1/responses and its input_tokens): the
 * conversation it continues (responses_prior; conv: the `conversation` it names, "" when none),
 * its item references resolved, then qv_proto_responses_decode into *pr and *rx. Otherwise
 * sends the error as *ret and returns false (*pr and *rx then hold nothing to free). */
static bool decode_responses(server *srv, struct MHD_Connection *c, conn_ctx *ctx,
                             const char *owner, char conv[128], qv_proto_request *pr,
                             qv_proto_responses_extra *rx, enum MHD_Result *ret) {
    char *prior = NULL, *resolved = NULL;
    qv_proto_error pe;
    bool ok = responses_prior(srv, c, ctx, owner, &prior, conv, ret) &&
              resolve_refs(srv, c, ctx, owner, prior, &resolved, ret);
    if (ok && qv_proto_responses_decode(resolved    ? resolved
                                        : ctx->body ? ctx->body
                                                    : "",
                                        resolved ? strlen(resolved) : ctx->body_len, prior,
                                        srv->resp_store != NULL, pr, rx, &pe) != QV_OK) {
        *ret = send_proto_error(c, ctx, &pe);
        ok = false;
    }
    qv_free(prior);
    qv_free(resolved);
    return ok;
}

/* 405 with the methods the route allows. */
static enum MHD_Result send_405(struct MHD_Connection *c, conn_ctx *ctx, const char *allow) {
    char *json = ctx->tgi ? qv_proto_tgi_encode_error("method not allowed", "method_not_allowed")
                          : qv_proto_encode_error("method not allowed", "invalid_request_error",
                                                  NULL, "method_not_allowed");
    size_t len = 0;
    char *p = libc_copy(json ? json : "{}", &len);
    qv_free(json);
    if (!p) return MHD_NO;
    const char *const extra[] = {MHD_HTTP_HEADER_ALLOW, allow, NULL};
    return queue_answer(c, ctx, 405, "application/json", p, len, extra);
}

/* resp_store edits of a conversation (qv_resp_store_edit), with what the answer needs. */
typedef struct conv_edit {
    const char *body; /* POST /v1/conversations/{id}: the new metadata */
    size_t body_len;
    const char *added;   /* POST .../items: the new items (a JSON array) */
    const char *item_id; /* DELETE .../items/{item_id} */
    qv_proto_error pe;
    bool item_missing;
    char *conv; /* the conversation object after the edit (a copy, the caller's) */
} conv_edit;

static qv_status edit_conversation(const char *conv, const char *items, void *user, char **new_conv,
                                   char **new_items) {
    conv_edit *ed = user;
    *new_conv = *new_items = NULL;
    qv_status st = QV_OK;
    if (ed->body) {
        st = qv_proto_conversation_update(ed->body, ed->body_len, conv, new_conv, &ed->pe);
    } else if (ed->added) {
        if (!(*new_items = qv_proto_items_join(items, ed->added, 0))) st = QV_ERR_NOMEM;
    } else {
        bool found;
        *new_items = qv_proto_items_find(items, ed->item_id, true, &found);
        ed->item_missing = !found;
        st = !found ? QV_ERR_NOT_FOUND : *new_items ? QV_OK : QV_ERR_NOMEM;
    }
    if (st == QV_OK && !(ed->conv = qv_strdup(*new_conv ? *new_conv : conv))) st = QV_ERR_NOMEM;
    if (st != QV_OK) {
        qv_free(*new_conv);
        qv_free(*new_items);
        *new_conv = *new_items = NULL;
    }
    return st;
}

/* GET /v1/responses/{id}?stream=true[&starting_after=N]: a background stream's events after
 * sequence number N (from the first without it). A running response's are read from its log as
 * they come (live: a reference, released here); an ended one's from the store. */
static enum MHD_Result resume_stream(server *srv, struct MHD_Connection *c, conn_ctx *ctx,
                                     const char *id, const char *owner, request *live) {
    const char *after = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "starting_after");
    char *end = NULL;
    errno = 0;
    const long long n = after ? strtoll(after, &end, 10) : -1;
    if (after && (end == after || *end || errno || n < -1 || n > INT32_MAX)) {
        if (live) request_release(live);
        return send_error(c, ctx, 400, "starting_after", "invalid_value",
                          "'starting_after' must be an event's sequence number");
    }
    const size_t from = (size_t)(n + 1);
    if (live && live->stream) {
        const enum MHD_Result ret = send_log(c, ctx, live, from);
        request_release(live);
        return ret;
    }
    char sse[160], *log = NULL;
    sse_id(sse, sizeof(sse), id);
    qv_status st = QV_ERR_NOT_FOUND;
    if (!live && srv->resp_store && !strncmp(id, "resp_", 5))
        st = qv_resp_store_get(srv->resp_store, sse, owner, &log, NULL);
    if (live) request_release(live);
    if (st == QV_ERR_NOMEM) return send_error(c, ctx, 500, NULL, NULL, "out of memory");
    if (st != QV_OK) {
        const bool exists =
            live || (srv->resp_store && !strncmp(id, "resp_", 5) &&
                     qv_resp_store_get(srv->resp_store, id, owner, NULL, NULL) == QV_OK);
        return exists
                   ? send_error(c, ctx, 400, "stream", "invalid_value",
                                "response '%.100s' has no stream to read: only responses "
                                "created with 'background' and 'stream' true have one (an "
                                "ended one's is kept beside it while the store has room)",
                                id)
                   : send_error(c, ctx, 404, NULL, "not_found", "response '%.100s' not found", id);
    }
    const char *at = log; /* event `from` begins after `from` blank lines */
    for (size_t i = 0; i < from && at; i++)
        if ((at = strstr(at, "\n\n"))) at += 2;
    size_t len = 0;
    char *body = libc_copy(at ? at : "", &len);
    qv_free(log);
    return queue_buf(c, ctx, 200, "text/event-stream", body, len);
}

/* GET / DELETE /v1/responses/{id}, GET .../input_items, POST .../cancel: a kept response, or a
 * background one the engine still runs (its object as it stands). */
static enum MHD_Result handle_response_id(server *srv, struct MHD_Connection *c, conn_ctx *ctx,
                                          const char *method, const char *url) {
    const bool get = !strcmp(method, MHD_HTTP_METHOD_GET) || !strcmp(method, MHD_HTTP_METHOD_HEAD),
               del = !strcmp(method, MHD_HTTP_METHOD_DELETE),
               post_m = !strcmp(method, MHD_HTTP_METHOD_POST);
    char id[128];
    const char *slash = strchr(url + 14, '/');
    const size_t id_len = slash ? (size_t)(slash - (url + 14)) : strlen(url + 14);
    const bool inputs = slash && !strcmp(slash, "/input_items"),
               cancel = slash && !strcmp(slash, "/cancel");
    if ((slash && !inputs && !cancel) || id_len >= sizeof(id))
        return send_error(c, ctx, 404, NULL, "not_found", "no route for %s %.200s", method, url);
    if (cancel ? !post_m : !get && (inputs || !del))
        return send_405(c, ctx, cancel ? "POST" : inputs ? "GET" : "GET, DELETE");
    memcpy(id, url + 14, id_len);
    id[id_len] = '\0';
    char owner[65], *json = NULL, *items = NULL;
    key_owner(c, owner);
    const bool kept = srv->resp_store && !strncmp(id, "resp_", 5); /* not a conversation */
    request *live = kept ? bg_find(srv, id, owner) : NULL;
    const char *stream =
        get && !inputs ? MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "stream") : NULL;
    const bool resume = stream && (!strcmp(stream, "true") || !strcmp(stream, "1"));
    if (stream && !resume && strcmp(stream, "false") && strcmp(stream, "0")) {
        if (live) request_release(live);
        return send_error(c, ctx, 400, "stream", "invalid_value", "'stream' must be true or false");
    }
    if (resume) /* a background stream, (re)read */
        return resume_stream(srv, c, ctx, id, owner, live);
    qv_status st = QV_ERR_NOT_FOUND;
    if (live) { /* background, still running: cancel or forget it first, then read it */
        if (cancel || del) bg_cancel(srv, live, del);
        json = del ? NULL : bg_snapshot(live, inputs ? &items : NULL);
        request_release(live);
        st = del || json ? QV_OK : QV_ERR_NOMEM;
        if (del) qv_resp_store_delete(srv->resp_store, id, owner); /* kept meanwhile */
    } else if (kept && del) {
        st = qv_resp_store_delete(srv->resp_store, id, owner) ? QV_OK : QV_ERR_NOT_FOUND;
    } else if (kept) {
        st = qv_resp_store_get(srv->resp_store, id, owner, &json, inputs ? &items : NULL);
    }
    if (st == QV_ERR_NOMEM) return send_error(c, ctx, 500, NULL, NULL, "out of memory");
    if (st != QV_OK)
        return send_error(c, ctx, 404, NULL, "not_found", "response '%.100s' not found%s", id,
                          srv->resp_store ? "" : " (this server keeps none)");
    if (cancel && !live) { /* over already: a background one answers its final object again */
        if (!qv_proto_response_background(json)) {
            qv_free(json);
            return send_error(c, ctx, 400, NULL, "invalid_value",
                              "response '%.100s' was not created with 'background': only "
                              "background responses can be cancelled",
                              id);
        }
    }
    if (inputs) { /* one page of the items it was generated from */
        const qv_proto_items_query q = {
            .after = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "after"),
            .before = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "before"),
            .limit = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "limit"),
            .order = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "order")};
        qv_proto_error pe = {0};
        char *page = qv_proto_response_input_items(json, items, &q, &pe);
        qv_free(json);
        qv_free(items);
        if (!page) return send_proto_error(c, ctx, &pe);
        return send_json(c, ctx, 200, page);
    }
    if (!del) return send_json(c, ctx, 200, json);
    char sse[sizeof(id) + 8];
    sse_id(sse, sizeof(sse), id);
    qv_resp_store_delete(srv->resp_store, sse, owner); /* a background stream's events */
    char *out = qv_proto_response_deleted(id);
    return out ? send_json(c, ctx, 200, out) : send_error(c, ctx, 500, NULL, NULL, "out of memory");
}

/* The Conversations API (docs/http-api.md#conversations): conversations kept in resp_store
 * under "conv_" ids, owned like responses by a digest of the API key. url starts with
 * /v1/conversations. HTTP thread. */
static enum MHD_Result handle_conversations(server *srv, struct MHD_Connection *c, conn_ctx *ctx,
                                            const char *method, const char *url) {
    const bool get = !strcmp(method, MHD_HTTP_METHOD_GET),
               post = !strcmp(method, MHD_HTTP_METHOD_POST),
               del = !strcmp(method, MHD_HTTP_METHOD_DELETE);
    const char *rest = url + strlen("/v1/conversations");
    char id[128] = "", item[128] = "", owner[65];
    const char *sub = ""; /* after the id: "", "/items" or "/items/{item}" */
    if (*rest) {
        const size_t n = strcspn(rest + 1, "/");
        sub = rest + 1 + n;
        const bool items_sub = !strncmp(sub, "/items", 6) && (!sub[6] || sub[6] == '/');
        const char *it = items_sub && sub[6] ? sub + 7 : NULL;
        if (!n || n >= sizeof(id) || (*sub && !items_sub) ||
            (it && (!*it || strlen(it) >= sizeof(item) || strchr(it, '/'))))
            return send_error(c, ctx, 404, NULL, "not_found", "no route for %s %.200s", method,
                              url);
        memcpy(id, rest + 1, n);
        if (it) memcpy(item, it, strlen(it) + 1);
    }
    const bool one_item = item[0] != '\0', items_route = *sub && !one_item;
    const char *allow = !*rest        ? "POST"
                        : one_item    ? "GET, DELETE"
                        : items_route ? "GET, POST"
                                      : "GET, POST, DELETE";
    if ((!*rest && !post) || (one_item && !get && !del) || (items_route && !get && !post) ||
        (!get && !post && !del))
        return send_405(c, ctx, allow);
    key_owner(c, owner);
    if (!srv->resp_store)
        return send_error(c, ctx, 404, NULL, "not_found",
                          "this server keeps no conversations (--responses-store-mb 0)");
    const char *body = ctx->body ? ctx->body : "";
    qv_proto_error pe = {0};
    char nonce[17]; /* ids of the items a create or an upload brings */
    if (post && (!*rest || items_route)) random_hex(nonce, sizeof(nonce));
    if (!*rest) { /* POST /v1/conversations: a new one */
        char cid[5 + 32 + 1] = "conv_", *conv = NULL, *items = NULL;
        random_hex(cid + 5, sizeof(cid) - 5);
        if (qv_proto_conversation_create(body, ctx->body_len, cid, (int64_t)time(NULL), nonce,
                                         &conv, &items, &pe))
            return send_proto_error(c, ctx, &pe);
        const bool kept = qv_resp_store_put(srv->resp_store, cid, owner, conv, items);
        qv_free(items);
        if (!kept) {
            qv_free(conv);
            return send_error(c, ctx, 400, "items", "invalid_value",
                              "the conversation does not fit in --responses-store-mb (or out of "
                              "memory)");
        }
        return send_json(c, ctx, 200, conv);
    }
    qv_status st = QV_ERR_NOT_FOUND;
    char *conv = NULL, *items = NULL, *added = NULL, *out = NULL;
    const bool known = !strncmp(id, "conv_", 5);
    enum MHD_Result ret;
    if (get && known) { /* read: the object, a page of its items, or one item */
        st = qv_resp_store_get(srv->resp_store, id, owner, *sub ? NULL : &conv,
                               *sub ? &items : NULL);
        if (st == QV_OK && one_item) {
            bool found;
            out = qv_proto_items_find(items, item, false, &found);
            if (!found) goto item_missing;
            if (!out) st = QV_ERR_NOMEM;
        } else if (st == QV_OK && items_route) {
            const qv_proto_items_query q = {
                .after = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "after"),
                .limit = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "limit"),
                .order = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "order")};
            if (!(out = qv_proto_conversation_items(items, &q, &pe))) {
                ret = send_proto_error(c, ctx, &pe);
                goto done;
            }
        } else if (st == QV_OK) {
            out = conv;
            conv = NULL;
        }
    } else if (del && known && !one_item) { /* forget it */
        st = qv_resp_store_delete(srv->resp_store, id, owner) ? QV_OK : QV_ERR_NOT_FOUND;
        if (st == QV_OK && !(out = qv_proto_conversation_deleted(id))) st = QV_ERR_NOMEM;
    } else if (known) { /* change it: metadata, new items, an item less */
        conv_edit ed = {.item_id = item};
        if (post && items_route) {
            if (qv_proto_conversation_add(body, ctx->body_len, nonce, &added, &pe)) {
                ret = send_proto_error(c, ctx, &pe);
                goto done;
            }
            ed.added = added;
        } else if (post) {
            ed.body = body;
            ed.body_len = ctx->body_len;
        }
        st = qv_resp_store_edit(srv->resp_store, id, owner, edit_conversation, &ed);
        if (ed.body && st == QV_ERR_INVALID) {
            ret = send_proto_error(c, ctx, &ed.pe);
            goto done;
        }
        if (ed.item_missing) goto item_missing;
        if (st == QV_OK && ed.added) { /* the items added, as a list */
            const qv_proto_items_query all = {.order = "asc", .limit = "100"};
            if (!(out = qv_proto_conversation_items(added, &all, &pe))) st = QV_ERR_NOMEM;
        } else if (st == QV_OK) {
            out = ed.conv;
            ed.conv = NULL;
        }
        qv_free(ed.conv);
    }
    if (st == QV_ERR_LIMIT)
        ret = send_error(c, ctx, 400, "items", "invalid_value",
                         "the conversation would outgrow --responses-store-mb");
    else if (st == QV_ERR_NOT_FOUND)
        ret = send_error(c, ctx, 404, NULL, "not_found", "conversation '%.100s' not found", id);
    else if (st != QV_OK)
        ret = send_error(c, ctx, 500, NULL, NULL, "out of memory");
    else {
        ret = send_json(c, ctx, 200, out);
        out = NULL;
    }
    goto done;
item_missing:
    ret = send_error(c, ctx, 404, NULL, "not_found", "no item '%.100s' in conversation '%.100s'",
                     item, id);
done:
    qv_free(conv);
    qv_free(items);
    qv_free(added);
    qv_free(out);
    return ret;
}

/* POST /v1/responses/input_tokens (client.responses.input_tokens.count): the input tokens
 * that POST /v1/responses with the same body would report (usage.input_tokens): its
 * conversation (previous_response_id's included), tools and format rendered and tokenized as
 * a generation would, without generating. HTTP thread, like /tokenize. */
static enum MHD_Result handle_input_tokens(server *srv, struct MHD_Connection *c, conn_ctx *ctx) {
    qv_proto_request pr;
    qv_proto_responses_extra rx = {0};
    enum MHD_Result ret;
    char owner[65], conv[128], *prompt = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    memset(&pr, 0, sizeof(pr));
    key_owner(c, owner);
    if (!decode_responses(srv, c, ctx, owner, conv, &pr, &rx, &ret)) goto done;
    const char *aname = NULL;
    char aversion[QV_STORE_VERSION_LEN + 1] = "";
    if (!resolve_model(srv, c, ctx, &pr, auth_key(srv, ctx, c), &aname, aversion, &ret)) goto done;
    size_t n_left;
    if (!encode_fitted(srv, c, ctx, &pr, rx.truncate, &prompt, &ids, &n_ids, &n_left, &ret))
        goto done;
    ret = send_json(c, ctx, 200, qv_proto_response_input_tokens(n_ids));
done:
    qv_free(ids);
    qv_free(prompt);
    qv_free(rx.echo);
    qv_free(rx.items);
    qv_proto_request_free(&pr);
    return ret;
}

/* POST /tokenize and /detokenize (vLLM's shapes): the server's tokenizer, which the base model
 * and every adapter share, on a completion prompt or chat messages, and back. HTTP thread. */
static enum MHD_Result handle_tokenize(server *srv, struct MHD_Connection *c, conn_ctx *ctx,
                                       enum qv_proto_endpoint ep) {
    qv_proto_request pr;
    qv_proto_error pe;
    enum MHD_Result ret;
    char *prompt = NULL, *text = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    char **strs = NULL; /* [n_ids] vocabulary pieces */
    qv_error err = {0};
    if (qv_proto_request_decode(ep, ctx->body ? ctx->body : "", ctx->body_len, &pr, &pe) != QV_OK) {
        ret = send_proto_error(c, ctx, &pe);
        goto done;
    }
    const char *aname = NULL;
    char aversion[QV_STORE_VERSION_LEN + 1] = "";
    if (!resolve_model(srv, c, ctx, &pr, auth_key(srv, ctx, c), &aname, aversion, &ret)) goto done;
    if (ep == QV_PROTO_DETOKENIZE) {
        const int n_vocab = qv_tokenizer_n_vocab(srv->tok);
        for (size_t i = 0; i < pr.n_prompt_ids; i++)
            if (pr.prompt_ids[i] >= n_vocab) {
                ret = send_error(c, ctx, 400, "tokens", "invalid_value",
                                 "token id %d is outside the vocabulary (%d)",
                                 (int)pr.prompt_ids[i], n_vocab);
                goto done;
            }
        if (qv_tokenizer_decode(srv->tok, pr.prompt_ids, pr.n_prompt_ids, false, &text, NULL,
                                &err) != QV_OK) {
            ret = send_error(c, ctx, 500, NULL, NULL, "%s", err.msg);
            goto done;
        }
        ret = send_json(c, ctx, 200, qv_proto_encode_detokenize(text));
        goto done;
    }
    if (!encode_text(srv, c, ctx, &pr, &prompt, &ids, &n_ids, &ret)) goto done;
    if (pr.return_token_strs && n_ids) {
        strs = qv_calloc(n_ids, sizeof(*strs));
        if (!strs) {
            ret = send_error(c, ctx, 500, NULL, NULL, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < n_ids; i++) {
            size_t len = 0;
            const char *piece = qv_tokenizer_token_text(srv->tok, ids[i], &len);
            if (!(strs[i] = qv_strndup(piece ? piece : "", piece ? len : 0))) {
                ret = send_error(c, ctx, 500, NULL, NULL, "out of memory");
                goto done;
            }
        }
    }
    static const char *const no_strs[1] = {NULL};
    ret = send_json(c, ctx, 200,
                    qv_proto_encode_tokenize(ids, n_ids, srv->model->cfg.max_pos,
                                             !pr.return_token_strs ? NULL
                                             : strs                ? (const char *const *)strs
                                                                   : no_strs));
done:
    for (size_t i = 0; strs && i < n_ids; i++)
        qv_free(strs[i]);
    qv_free(strs);
    qv_free(ids);
    qv_free(prompt);
    qv_free(text);
    qv_proto_request_free(&pr);
    return ret;
}

/* A generation request: OpenAI completions or chat, or TGI / LoRAX (QV_PROTO_GENERATE, whose
 * tgi_stream is 0 for /generate, 1 for /generate_stream, -1 for LoRAX's POST / where the body's
 * `stream` decides and a whole answer is a one-element list). */
/* The prompt's logprobs (completions' echo, TGI's decoder_input_details): the first token's
 * entry, which has none, and the engine's callback for the others. False when out of
 * memory. */
static bool prompt_lps_setup(request *r) {
    qv_proto_logprob first = {.token = lp_name(r, r->ids[0]), .id = r->ids[0], .none = true};
    if (!first.token || !keep_lp_locked(r, &first)) {
        qv_free(first.token);
        return false;
    }
    r->prompt_in_lps = true;
    if (r->n_ids > 1) r->gp.prompt_lp_cb = on_prompt_lp;
    return true;
}

/* vLLM prompt_logprobs with n_top alternatives: null for the first token, the engine's callback
 * for the others. False when out of memory. */
static bool prompt_logprobs_setup(request *r, int n_top) {
    qv_proto_logprob first = {.id = r->ids[0], .none = true};
    if (!lp_append(&r->plps, &r->n_plps, &r->cap_plps, &first)) return false;
    r->plp = true;
    r->plp_top = n_top;
    r->gp.prompt_n_logprobs = n_top;
    if (r->n_ids > 1) r->gp.prompt_lp_cb = on_prompt_lp;
    return true;
}

/* Completions' echo: the text starts with the prompt (as sent, or decoded from its ids); with
 * logprobs the prompt tokens lead them, the first with none, and the engine reports the rest
 * (on_prompt_lp), which the echoed text then follows. False when out of memory. */
static bool echo_setup(request *r, const char *prompt, size_t prompt_len) {
    char *text = NULL;
    size_t len = 0;
    qv_error err = {0};
    if (prompt) {
        len = prompt_len;
        if ((text = qv_malloc(len + 1))) memcpy(text, prompt, len + 1);
    } else if (qv_tokenizer_decode(r->srv->tok, r->ids, r->n_ids, true, &text, &len, &err) !=
               QV_OK) {
        text = NULL;
    }
    if (!text) return false;
    if (r->logprobs && !prompt_lps_setup(r)) {
        qv_free(text);
        return false;
    }
    if (r->logprobs && r->n_ids > 1) {
        r->echo = text;
        r->echo_len = len;
        return true;
    }
    const bool ok = append_out(r, text, len);
    qv_free(text);
    return ok;
}

/* vLLM bad_words as token ids, tokenized as vLLM does: each word without its leading
 * whitespace, and once more after a space when that gives other ids of the same count. *ids /
 * *lens (qv_free) hold *n words one after another. False with msg[cap] for a word of more
 * than QV_SAMPLER_MAX_BAD_LEN ids, or when out of memory (*oom). */
static bool bad_word_ids(const qv_tokenizer *tok, char *const *words, size_t n_words, int32_t **ids,
                         int32_t **lens, int *n, bool *oom, char *msg, size_t cap) {
    size_t n_ids = 0, cap_ids = 0;
    *ids = NULL;
    *n = 0;
    *oom = false;
    if (!n_words) return true;
    if (!(*lens = qv_malloc(2 * n_words * sizeof(**lens)))) return !(*oom = true);
    for (size_t w = 0; w < n_words; w++) {
        const char *s = words[w] + qv_py_lstrip_len(words[w], strlen(words[w])); /* lstrip() */
        int32_t *v[2] = {NULL, NULL};
        size_t nv[2] = {0, 0};
        char *spaced = qv_malloc(strlen(s) + 2);
        bool ok = spaced != NULL;
        if (ok) {
            spaced[0] = ' ';
            memcpy(spaced + 1, s, strlen(s) + 1);
        }
        ok = ok && !qv_tokenizer_encode(tok, s, strlen(s), false, &v[0], &nv[0], NULL) &&
             !qv_tokenizer_encode(tok, spaced, strlen(spaced), false, &v[1], &nv[1], NULL);
        qv_free(spaced);
        const int k = ok && nv[0] && nv[1] == nv[0] && v[1][0] != v[0][0] ? 2 : 1;
        for (int j = 0; ok && j < k; j++) {
            if (!nv[j] || nv[j] > QV_SAMPLER_MAX_BAD_LEN) {
                snprintf(msg, cap, "bad_words[%zu] encodes to %zu tokens (1 to %d)", w, nv[j],
                         QV_SAMPLER_MAX_BAD_LEN);
                qv_free(v[0]);
                qv_free(v[1]);
                return false;
            }
            if (n_ids + nv[j] > cap_ids) {
                cap_ids = 2 * (n_ids + nv[j]);
                int32_t *g = qv_realloc(*ids, cap_ids * sizeof(*g));
                if (!g)
                    ok = false;
                else
                    *ids = g;
            }
            if (ok) {
                memcpy(*ids + n_ids, v[j], nv[j] * sizeof(**ids));
                n_ids += nv[j];
                (*lens)[(*n)++] = (int32_t)nv[j];
            }
        }
        qv_free(v[0]);
        qv_free(v[1]);
        if (!ok) return !(*oom = true);
    }
    return true;
}

/* One prompt of a request: its ids, and its text as sent (NULL: ids sent, or chat). */
typedef struct prompt_in {
    int32_t *ids;
    size_t n_ids;
    bool own_ids; /* tokenized here (freed with the request's other scratch) */
    const char *text;
    size_t len;
} prompt_in;

/* What every member (choice) of a generation request is made from. */
typedef struct member_spec {
    enum qv_proto_endpoint ep;
    const qv_proto_request *pr;
    const qv_proto_tgi *tgi; /* TGI / LoRAX requests */
    bool tgi_in_list;
    int max_tokens; /* 0: echo only */
    int tenant, priority;
    const char *adapter; /* NULL: the base model */
    const char *adapter_version;
    const merge_spec *merge; /* merged_adapters, or NULL */
    double t_arrival;
    int64_t created;
    char id[64];
    uint64_t seed;                     /* choice j of each prompt samples with seed + j */
    const int32_t *bad_ids, *bad_lens; /* bad_words as ids: n_bad words one after another */
    int n_bad;
} member_spec;

/* Engine parameters of a prompt's choice j (pointers into the member left NULL); false with
 * *err when the sampling parameters are out of range. */
static bool member_params(const member_spec *ms, int j, qv_gen_params *gp, qv_error *err) {
    const qv_proto_request *pr = ms->pr;
    qv_gen_params_default(gp);
    gp->max_tokens = ms->max_tokens ? ms->max_tokens : 1; /* echo only: its token is dropped */
    gp->ignore_eos = pr->ignore_eos;
    gp->min_tokens = pr->min_tokens;
    gp->json_object = pr->json_object;
    gp->json_schema = pr->json_schema; /* member_new takes a reference */
    qv_sampling_params *sp = &gp->sampling;
    sp->temperature = pr->temperature;
    sp->top_k = pr->top_k;
    sp->top_p = pr->top_p;
    sp->min_p = pr->min_p;
    sp->presence_penalty = pr->presence_penalty;
    sp->frequency_penalty = pr->frequency_penalty;
    sp->repetition_penalty = pr->repetition_penalty;
    sp->seed = ms->seed + (uint64_t)j;
    /* logprobs with 0 alternatives still reports the chosen tokens: the engine computes
     * log-probabilities only when asked for at least one alternative; TGI tokens always carry
     * theirs */
    sp->n_logprobs = ms->tgi        ? QV_MAX(ms->tgi->n_alternatives, 1)
                     : pr->logprobs ? QV_MAX(pr->top_logprobs, 1)
                                    : 0;
    return qv_sampling_params_validate(sp, err) == QV_OK;
}

/* A new member (choice `index`, the j-th of prompt *pin; lead NULL: the lead itself) holding
 * one reference (its connection's) and, for the other members, one on the lead; NULL when
 * out of memory. */
static request *member_new(server *srv, const member_spec *ms, request *lead, int index, int j,
                           const prompt_in *pin) {
    const qv_proto_request *pr = ms->pr;
    request *r = qv_calloc(1, sizeof(*r));
    if (!r) return NULL;
    pthread_mutex_init(&r->mu, NULL);
    r->lead = lead ? lead : r;
    if (lead) { /* first: request_release gives it back */
        req_lock(lead);
        lead->refs++;
        req_unlock(lead);
    }
    r->refs = 1;
    r->srv = srv;
    r->index = index;
    r->cached = -1;
    r->seq_id = -1;
    r->endpoint = ms->ep;
    r->stream = pr->stream;
    r->include_usage = pr->include_usage;
    r->continuous_usage = pr->continuous_usage;
    r->logprobs = pr->logprobs;
    r->t_arrival = ms->t_arrival;
    r->created = ms->created;
    r->tenant = ms->tenant;
    r->priority = ms->priority;
    memcpy(r->id, ms->id, sizeof(r->id));
    r->echo_only = ms->max_tokens == 0;
    qv_error err = {0};
    member_params(ms, j, &r->gp, &err); /* validated by the caller */
    if (r->gp.json_schema) qv_json_schema_ref(r->gp.json_schema);
    r->n_top = ms->tgi ? ms->tgi->n_alternatives : pr->top_logprobs;
    bool ok = (r->model_echo = qv_strdup(pr->model && *pr->model ? pr->model : srv->base_name));
    if (ok && ms->adapter) {
        ok = (r->adapter = qv_strdup(ms->adapter));
        snprintf(r->adapter_version, sizeof(r->adapter_version), "%s", ms->adapter_version);
    }
    if (ok && ms->merge && (ok = (r->merge = qv_malloc(sizeof(*r->merge)))))
        memcpy(r->merge, ms->merge, sizeof(*r->merge));
    r->tools = pr->tool_choice;
    const qv_chat_tool_format tf = qv_chat_tools_format(srv->tok, srv->cfg->chat_template);
    if (r->tools == QV_PROTO_TOOLS_AUTO && tf == QV_CHAT_TOOLS_LLAMA_JSON)
        r->tools = QV_PROTO_TOOLS_AUTO_JSON; /* the template's own call format */
    if (r->tools == QV_PROTO_TOOLS_AUTO && tf == QV_CHAT_TOOLS_MISTRAL)
        r->tools = QV_PROTO_TOOLS_AUTO_MISTRAL;
    r->mistral_ids = tf == QV_CHAT_TOOLS_MISTRAL;
    if (ok && pr->tool_name) ok = (r->tool_name = qv_strdup(pr->tool_name));
    if (ok && ms->tgi) {
        r->tgi_details = ms->tgi->details;
        r->tgi_in_list = ms->tgi_in_list;
        if (ms->tgi->return_full_text) ok = (r->tgi_inputs = qv_strdup(pr->prompt));
    }
    if (ok && (r->ids = qv_malloc(pin->n_ids * sizeof(*r->ids)))) {
        memcpy(r->ids, pin->ids, pin->n_ids * sizeof(*r->ids));
        r->n_ids = pin->n_ids;
    } else {
        ok = false;
    }
    if (ok && pr->n_stop && (r->stops = qv_calloc(pr->n_stop, sizeof(*r->stops))))
        for (; r->n_stops < pr->n_stop && ok; r->n_stops++)
            ok = (r->stops[r->n_stops] = qv_strdup(pr->stop[r->n_stops]));
    ok = ok && (!pr->n_stop || r->stops);
    if (ok && pr->n_stop_ids &&
        (ok = (r->stop_ids = qv_malloc(pr->n_stop_ids * sizeof(*r->stop_ids))))) {
        memcpy(r->stop_ids, pr->stop_ids, pr->n_stop_ids * sizeof(*r->stop_ids));
        r->n_stop_ids = pr->n_stop_ids;
    }
    if (ok && pr->n_bias && (ok = (r->bias = qv_malloc(pr->n_bias * sizeof(*r->bias)))))
        for (size_t i = 0; i < pr->n_bias; i++)
            r->bias[i] = (qv_token_bias){pr->bias_ids[i], pr->bias_values[i]};
    r->gp.logit_bias = r->bias;
    r->gp.n_logit_bias = (int)pr->n_bias;
    r->gp.min_tokens_ids = r->stop_ids;
    r->gp.n_min_tokens_ids = (int)r->n_stop_ids;
    size_t n_bad_ids = 0;
    for (int w = 0; w < ms->n_bad; w++)
        n_bad_ids += (size_t)ms->bad_lens[w];
    if (ok && ms->n_bad &&
        (ok = (r->bad_ids = qv_malloc(n_bad_ids * sizeof(int32_t))) &&
              (r->bad_lens = qv_malloc((size_t)ms->n_bad * sizeof(int32_t))))) {
        memcpy(r->bad_ids, ms->bad_ids, n_bad_ids * sizeof(int32_t));
        memcpy(r->bad_lens, ms->bad_lens, (size_t)ms->n_bad * sizeof(int32_t));
        r->gp.bad_word_ids = r->bad_ids;
        r->gp.bad_word_lens = r->bad_lens;
        r->gp.n_bad_words = ms->n_bad;
    }
    if (ok && pr->n_allowed_ids &&
        (ok = (r->allowed_ids = qv_malloc(pr->n_allowed_ids * sizeof(*r->allowed_ids))))) {
        memcpy(r->allowed_ids, pr->allowed_ids, pr->n_allowed_ids * sizeof(*r->allowed_ids));
        r->gp.allowed_ids = r->allowed_ids;
        r->gp.n_allowed_ids = (int)pr->n_allowed_ids;
    }
    r->include_stop = pr->include_stop_str;
    r->eog_text = pr->include_stop_str && !pr->skip_special_tokens;
    r->tokens_as_ids = pr->tokens_as_ids;
    ok = ok && !qv_detok_create(srv->tok, (const char *const *)r->stops, r->n_stops,
                                pr->skip_special_tokens, &r->detok);
    ok = ok && !qv_detok_prime(r->detok, r->ids, r->n_ids);
    if (ok) qv_detok_set_min_tokens(r->detok, (size_t)pr->min_tokens);
    if (ok) qv_detok_set_include_stop(r->detok, pr->include_stop_str);
    ok = ok && (!pr->echo || echo_setup(r, pin->text, pin->len));
    const qv_proto_message *last = pr->n_messages ? &pr->messages[pr->n_messages - 1] : NULL;
    if (ok && pr->chat_echo && last && last->content && !strcmp(last->role, "assistant"))
        ok = append_out(r, last->content, strlen(last->content)); /* vLLM: the same role's */
    ok = ok && (!pr->prompt_lps || prompt_logprobs_setup(r, pr->prompt_logprobs));
    ok = ok && (!ms->tgi || !ms->tgi->details || !ms->tgi->decoder_input_details ||
                prompt_lps_setup(r)); /* prefill is part of the details */
    if (!ok) {
        request_release(r);
        return NULL;
    }
    return r;
}

/* Drops the connection's references on every member of the lead's group, the lead last. */
static void group_release(request *l) {
    for (int i = l->n_members - 1; i >= 1; i--)
        request_release(l->members[i]);
    request_release(l);
}

static enum MHD_Result handle_generate(server *srv, struct MHD_Connection *c, conn_ctx *ctx,
                                       enum qv_proto_endpoint ep, int tgi_stream) {
    const qv_http_config *cfg = srv->cfg;
    if (atomic_load(&srv->draining))
        return send_error(c, ctx, 503, NULL, "draining", "the server is shutting down");
    qv_proto_request pr;
    qv_proto_error pe;
    qv_proto_tgi tgi = {0};
    bool arrived = false; /* holds a place of its tenant not yet handed to a queued request */
    int charged = 0;      /* prompt tokens taken from the tenant's tpm bucket */
    int tenant = 0;
    char *prompt = NULL;
    int32_t *ids = NULL, *bad_ids = NULL, *bad_lens = NULL;
    size_t n_ids = 0;
    prompt_in pin[QV_PROTO_MAX_CHOICES] = {0}; /* the prompts: ids[0] is `ids` */
    size_t n_prompts = 1;
    request *r = NULL;
    qv_proto_responses_extra rx = {0}; /* Responses API: echo, conversation, keep */
    char owner[65] = "", conv[128] = "";
    enum MHD_Result ret;
    const char *body = ctx->body ? ctx->body : "";
    memset(&pr, 0, sizeof(pr));
    if (ep == QV_PROTO_RESPONSES) {
        key_owner(c, owner);
        if (!decode_responses(srv, c, ctx, owner, conv, &pr, &rx, &ret)) goto done;
    } else if ((ep == QV_PROTO_GENERATE
                    ? qv_proto_tgi_decode(body, ctx->body_len, &pr, &tgi, &pe)
                    : qv_proto_request_decode(ep, body, ctx->body_len, &pr, &pe)) != QV_OK) {
        ret = send_proto_error(c, ctx, &pe);
        goto done;
    }
    /* the key's tenant, and the priority it may ask for */
    const int who = auth_key(srv, ctx, c);
    tenant = who >= 0 ? ctx->kr->keys[who].tenant : 0;
    qv_tenant_policy pol;
    qv_tenants_policy(srv->tenants, tenant, &pol);
    if (pr.has_priority && !pol.priority_free && pr.priority < pol.priority) {
        ret =
            send_error(c, ctx, 403, "priority", "permission_denied",
                       "this API key's requests may not ask for a priority below %d", pol.priority);
        goto done;
    }
    const char *aname = NULL;
    char aversion[QV_STORE_VERSION_LEN + 1] = "";
    merge_spec merge;
    char merge_name[QV_MERGE_MAX * 32];
    if (pr.n_merge) {
        if (!resolve_merge(srv, c, ctx, &pr, who, &merge, aversion, merge_name, sizeof(merge_name),
                           &ret))
            goto done;
        aname = merge_name;
    } else if (!resolve_model(srv, c, ctx, &pr, who, &aname, aversion, &ret)) {
        goto done;
    }
    /* the tenant's limits before any tokenizing: a refused request costs next to nothing */
    char why[256];
    enum qv_tenant_refusal refusal =
        qv_tenants_arrive(srv->tenants, tenant, 0, qv_time_s(), &ctx->retry_after, why, sizeof why);
    if (refusal != QV_TENANT_OK) {
        ret = send_error(c, ctx, 429, NULL,
                         refusal == QV_TENANT_INFLIGHT ? "concurrency_limit_exceeded"
                                                       : "rate_limit_exceeded",
                         "%s; retry in %d s", why, ctx->retry_after);
        goto done;
    }
    arrived = true; /* given back at done: unless the request gets queued */
    qv_error err = {0};
    if (pr.n_messages || pr.prompt) {
        size_t n_left;
        if (!encode_fitted(srv, c, ctx, &pr, rx.truncate, &prompt, &ids, &n_ids, &n_left, &ret))
            goto done;
        if (n_left)
            QV_LOGD("truncation auto: %zu of %zu messages left out, %zu prompt tokens", n_left,
                    pr.n_messages, n_ids);
    } else {
        int n_vocab = srv->model->cfg.n_vocab;
        for (size_t i = 0; i < pr.n_prompt_ids; i++)
            if (pr.prompt_ids[i] >= n_vocab) {
                ret = send_error(c, ctx, 400, "prompt", "invalid_value",
                                 "prompt token id %d is outside the vocabulary (%d)",
                                 (int)pr.prompt_ids[i], n_vocab);
                goto done;
            }
        ids = pr.prompt_ids;
        n_ids = pr.n_prompt_ids;
        pr.prompt_ids = NULL;
        pr.n_prompt_ids = 0;
    }
    if (ep == QV_PROTO_GENERATE) {
        if (tgi_stream >= 0) pr.stream = tgi_stream == 1;
        if (tgi.decoder_input_details && pr.stream) {
            ret = send_error(c, ctx, 400, "parameters.decoder_input_details", "invalid_value",
                             "'decoder_input_details' is not supported when streaming tokens");
            goto done;
        }
        if (tgi.truncate > 0 && n_ids > (size_t)tgi.truncate) { /* keep the last ids */
            memmove(ids, ids + n_ids - (size_t)tgi.truncate, (size_t)tgi.truncate * sizeof(*ids));
            n_ids = (size_t)tgi.truncate;
        }
    }
    if (pr.truncate_prompt_tokens && pr.echo) {
        ret = send_error(c, ctx, 400, "truncate_prompt_tokens", "invalid_value",
                         "'truncate_prompt_tokens' cannot be combined with 'echo'");
        goto done;
    }
    /* a completions batch: its further prompts, tokenized as the first */
    pin[0] = (prompt_in){.ids = ids, .n_ids = n_ids, .text = pr.prompt, .len = pr.prompt_len};
    n_prompts = 1 + pr.n_more;
    for (size_t p = 1; p < n_prompts; p++) {
        const qv_proto_prompt *q = &pr.more[p - 1];
        pin[p] = (prompt_in){.ids = q->ids, .n_ids = q->n_ids, .text = q->text, .len = q->len};
        if (q->text) {
            pin[p].own_ids = true;
            if (qv_tokenizer_encode(srv->tok, q->text, q->len, pr.add_special_tokens, &pin[p].ids,
                                    &pin[p].n_ids, &err)) {
                ret = send_error(c, ctx, 400, "prompt", NULL, "prompt %zu: %s", p, err.msg);
                goto done;
            }
        }
    }
    const int ctx_len = srv->model->cfg.max_pos;
    int room = ctx_len; /* the least any prompt leaves */
    for (size_t p = 0; p < n_prompts; p++) {
        /* vLLM truncate_prompt_tokens: keep the last ids (-1: the most the context holds) */
        const size_t keep = pr.truncate_prompt_tokens < 0 ? (size_t)(ctx_len - 1)
                                                          : (size_t)pr.truncate_prompt_tokens;
        if (pr.truncate_prompt_tokens && pin[p].n_ids > keep) {
            memmove(pin[p].ids, pin[p].ids + pin[p].n_ids - keep, keep * sizeof(*pin[p].ids));
            pin[p].n_ids = keep;
        }
        const size_t n_p = pin[p].n_ids;
        qv_tenants_prompt(srv->tenants, tenant, (int)n_p); /* its tokens count towards tpm */
        charged += (int)n_p;
        for (size_t i = 0; p > 0 && i < n_p; i++)
            if (pin[p].ids[i] >= srv->model->cfg.n_vocab) {
                ret = send_error(c, ctx, 400, "prompt", "invalid_value",
                                 "prompt %zu: token id %d is outside the vocabulary (%d)", p,
                                 (int)pin[p].ids[i], srv->model->cfg.n_vocab);
                goto done;
            }
        if (n_p == 0) {
            ret =
                send_error(c, ctx, 400, prompt_param(ep), NULL, "the prompt encodes to no tokens");
            goto done;
        }
        if ((int64_t)n_p > cfg->max_prompt_tokens) {
            ret = send_error(c, ctx, 400, prompt_param(ep), "context_length_exceeded",
                             "the prompt has %zu tokens; this server accepts at most %d", n_p,
                             cfg->max_prompt_tokens);
            goto done;
        }
        if ((int)n_p >= ctx_len) {
            ret = send_error(c, ctx, 400, prompt_param(ep), "context_length_exceeded",
                             "the prompt has %zu tokens; the model's context is %d", n_p, ctx_len);
            goto done;
        }
        room = QV_MIN(room, ctx_len - (int)n_p);
    }
    int max_tokens = pr.max_tokens;
    const char *mt_name = ep == QV_PROTO_RESPONSES ? "max_output_tokens" : "max_tokens";
    if (max_tokens > cfg->max_tokens_limit) {
        ret = send_error(c, ctx, 400, mt_name, "invalid_value",
                         "'%s' is %d; this server allows at most %d", mt_name, max_tokens,
                         cfg->max_tokens_limit);
        goto done;
    }
    if (max_tokens < 0) {
        max_tokens = ep == QV_PROTO_COMPLETIONS ? 16 : cfg->max_tokens_limit;
        if (max_tokens > room) max_tokens = room;
    } else if (max_tokens > room) {
        ret = send_error(c, ctx, 400, mt_name, "context_length_exceeded",
                         "the prompt (%d tokens) plus %s (%d) exceed the model's "
                         "context (%d)",
                         ctx_len - room, mt_name, max_tokens, ctx_len);
        goto done;
    }
    /* what needs the model: ids in the vocabulary, and the sampling parameters */
    const int n_vocab = srv->model->cfg.n_vocab;
    const struct {
        const char *param, *what;
        const int32_t *ids;
        size_t n;
    } lists[] = {{"stop_token_ids", "stop token", pr.stop_ids, pr.n_stop_ids},
                 {"allowed_token_ids", "allowed token", pr.allowed_ids, pr.n_allowed_ids},
                 {"logit_bias", "logit_bias token", pr.bias_ids, pr.n_bias}};
    for (size_t l = 0; l < QV_ARRAY_LEN(lists); l++)
        for (size_t i = 0; i < lists[l].n; i++)
            if (lists[l].ids[i] >= n_vocab) {
                ret = send_error(c, ctx, 400, lists[l].param, "invalid_value",
                                 "%s id %d is outside the vocabulary (%d)", lists[l].what,
                                 (int)lists[l].ids[i], n_vocab);
                goto done;
            }
    if (pr.tool_choice == QV_PROTO_TOOLS_AUTO &&
        !qv_chat_renders_tools(srv->tok, srv->cfg->chat_template)) {
        const char *fam =
            srv->cfg->chat_template ? srv->cfg->chat_template : qv_chat_detect(srv->tok);
        ret = send_error(c, ctx, 400, "tool_choice", "invalid_value",
                         "'tool_choice' \"auto\" (the default with 'tools') needs a chat template "
                         "that shows the model the tools and reads its calls (Qwen2.5's, Llama "
                         "3.1's or 3.2's, Mistral v0.3's or Nemo's); this model's is %s: send "
                         "\"required\", a named function or \"none\"",
                         fam ? fam : "unknown");
        goto done;
    }
    if ((pr.json_object || pr.json_schema) && (pr.min_tokens > 0 || pr.ignore_eos)) {
        const bool calls =
            pr.tool_choice == QV_PROTO_TOOLS_NAMED || pr.tool_choice == QV_PROTO_TOOLS_REQUIRED;
        ret = send_error(c, ctx, 400,
                         calls                      ? "tool_choice"
                         : ep == QV_PROTO_RESPONSES ? "text.format"
                                                    : "response_format",
                         "invalid_value",
                         "%s ends when the JSON closes: it cannot be combined with %s",
                         calls ? "a constrained tool call" : "JSON mode",
                         pr.ignore_eos ? "'ignore_eos'" : "'min_tokens'");
        goto done;
    }
    if (pr.min_tokens > max_tokens) {
        ret = send_error(c, ctx, 400, "min_tokens", "invalid_value",
                         "'min_tokens' (%d) must not exceed max_tokens (%d)", pr.min_tokens,
                         max_tokens);
        goto done;
    }
    member_spec ms = {.ep = ep,
                      .pr = &pr,
                      .tgi = ep == QV_PROTO_GENERATE ? &tgi : NULL,
                      .tgi_in_list = tgi_stream < 0 && !pr.stream,
                      .max_tokens = max_tokens,
                      .tenant = tenant,
                      .priority = pr.has_priority     ? pr.priority
                                  : pol.priority_free ? 0
                                                      : pol.priority,
                      .adapter = aname,
                      .adapter_version = aversion,
                      .merge = pr.n_merge ? &merge : NULL,
                      .t_arrival = ctx->t0,
                      .created = (int64_t)time(NULL)};
    const unsigned long serial = atomic_fetch_add(&srv->next_id, 1);
    snprintf(ms.id, sizeof(ms.id), "%s%lx%04lx",
             ep == QV_PROTO_CHAT        ? "chatcmpl-"
             : ep == QV_PROTO_RESPONSES ? "resp_"
                                        : "cmpl-",
             (unsigned long)ms.created, serial);
    if (ep == QV_PROTO_RESPONSES) /* an id that reads a kept response: not guessable */
        random_hex(ms.id + strlen(ms.id), QV_MIN((size_t)17, sizeof(ms.id) - strlen(ms.id)));
    /* a drawn seed fits 53 bits: reported back (TGI details.seed), it survives JSON doubles;
     * choice j of each prompt samples with seed + j */
    ms.seed = pr.has_seed ? pr.seed
                          : ((uint64_t)serial * 0x9E3779B97F4A7C15ull + (uint64_t)time(NULL)) &
                                ((1ull << 53) - 1);
    bool oom = false;
    char bmsg[160];
    if (!bad_word_ids(srv->tok, pr.bad_words, pr.n_bad_words, &bad_ids, &bad_lens, &ms.n_bad, &oom,
                      bmsg, sizeof(bmsg))) {
        ret = oom ? send_error(c, ctx, 500, NULL, NULL, "out of memory")
                  : send_error(c, ctx, 400, "bad_words", "invalid_value", "%s", bmsg);
        goto done;
    }
    ms.bad_ids = bad_ids;
    ms.bad_lens = bad_lens;
    qv_gen_params probe;
    if (!member_params(&ms, 0, &probe, &err)) {
        ret = send_error(c, ctx, 400, NULL, "invalid_value", "%s", err.msg);
        goto done;
    }
    const int n_per = ep == QV_PROTO_GENERATE ? 1 : pr.n; /* choices per prompt */
    const int n_members = (int)n_prompts * n_per;
    r = member_new(srv, &ms, NULL, 0, 0, &pin[0]);
    if (r && n_members > 1 && !(r->members = qv_calloc((size_t)n_members, sizeof(*r->members)))) {
        request_release(r);
        r = NULL;
    }
    if (!r) {
        ret = send_error(c, ctx, 500, NULL, NULL, "out of memory");
        goto done;
    }
    r->conn = c;
    r->resp_echo = rx.echo;
    r->resp_items = rx.items;
    r->resp_keep = rx.store;
    memcpy(r->resp_owner, owner, sizeof(owner));
    memcpy(r->conv_id, conv, sizeof(conv));
    r->conv_prior = rx.n_prior;
    r->background = rx.background;
    memcpy(r->xrid, ctx->xrid, sizeof(r->xrid));
    rx.echo = rx.items = NULL;
    for (size_t p = 0; p < n_prompts; p++)
        r->usage_prompt += (int)pin[p].n_ids;
    if (n_members > 1) {
        r->members[0] = r;
        r->n_members = 1;
        for (int i = 1; i < n_members; i++) {
            request *m = member_new(srv, &ms, r, i, i % n_per, &pin[i / n_per]);
            if (!m) {
                ret = send_error(c, ctx, 500, NULL, NULL, "out of memory");
                goto done; /* r's release frees the members made so far */
            }
            m->prompt_no = i / n_per;
            r->members[r->n_members++] = m;
        }
    }
    if (n_members > 1 && n_members > cfg->queue_limit) { /* never fits: no use retrying */
        ret = send_error(c, ctx, 400, "n", "invalid_value",
                         "the request asks for %d sequences; this server queues at most %d",
                         n_members, cfg->queue_limit);
        goto done;
    }
    if (atomic_fetch_add(&srv->n_waiting, n_members) + n_members > cfg->queue_limit) {
        atomic_fetch_sub(&srv->n_waiting, n_members);
        ret = send_error(c, ctx, 429, NULL, "queue_full",
                         "the request queue is full (%d waiting); retry later", cfg->queue_limit);
        goto done;
    }
    r->tenant_counted = true; /* the group now owns its tenant's in-flight place */
    arrived = false;
    /* Each member: one reference for the connection (already counted), one for the engine;
     * a background response one more for the background list, which it joins before the
     * engine can end it. Its answer does not wait unless it streams. */
    const bool wait = !r->background || r->stream;
    req_lock(r);
    for (int i = 0; i < n_choices(r); i++)
        choice_at(r, i)->refs++;
    if (r->background) r->refs++;
    if (wait) {
        r->suspended = true;
        MHD_suspend_connection(c);
    }
    req_unlock(r);
    ctx->req = r;
    atomic_fetch_add(&srv->n_open, 1);
    if (r->background) {
        atomic_fetch_add(&srv->n_open, 1); /* a drain waits for it too */
        pthread_mutex_lock(&srv->bg_mu);
        r->bg_next = srv->bg_head;
        srv->bg_head = r;
        pthread_mutex_unlock(&srv->bg_mu);
    }
    for (int i = 0; i < n_choices(r); i++) {
        request *m = choice_at(r, i);
        if (!post(srv, MSG_ADD, m)) {
            /* Cannot reach the engine: finish it here with an error and resume. */
            atomic_fetch_sub(&srv->n_waiting, 1);
            request_fail(m, 500, NULL, "out of memory");
            if (m->background) bg_end(m); /* as the engine would have */
            request_release(m);
        }
    }
    ret = MHD_YES;
    if (!wait) { /* background: the response as it stands (queued) */
        char *json = bg_snapshot(r, NULL);
        ret = json ? send_json(c, ctx, 200, json)
                   : send_error(c, ctx, 500, NULL, NULL, "out of memory");
    }
    r = NULL;
done:
    if (arrived) qv_tenants_unarrive(srv->tenants, tenant, charged);
    if (r) group_release(r);
    for (size_t p = 1; p < n_prompts; p++)
        if (pin[p].own_ids) qv_free(pin[p].ids);
    qv_free(ids);
    qv_free(bad_ids);
    qv_free(bad_lens);
    qv_free(prompt);
    qv_free(rx.echo);
    qv_free(rx.items);
    qv_proto_request_free(&pr);
    return ret;
}

/* ---- adapter administration (HTTP side) ---- */

static qv_status preload_one(server *srv, const char *name, const char *dir, char version[65],
                             qv_error *err);

/* 0 when the connection carries the admin key, else the HTTP status to answer (403 when the
 * server has no admin key or the key is another one, 401 when none is sent). */
static int admin_auth(server *srv, const conn_ctx *ctx, struct MHD_Connection *c, int *who) {
    const keyring *kr = ctx->kr;
    const char *key = srv->cfg->admin_key;
    const bool have_admin = key && *key;
    *who = AUTH_DENIED;
    if (!have_admin && !(kr && kr->n_manage)) return 403;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7) != 0 || !h[7]) return 401;
    if (have_admin && key_matches(key, h + 7)) *who = AUTH_ANY;
    for (int i = 0; kr && i < kr->n_keys; i++) /* every key compared: constant time */
        if (key_matches(kr->keys[i].key, h + 7) && kr->keys[i].manage && *who == AUTH_DENIED)
            *who = i;
    return *who == AUTH_DENIED ? 403 : 0;
}

/* 403 for a manage= key administering an adapter its patterns do not cover. */
static bool admin_denied(server *srv, struct MHD_Connection *c, conn_ctx *ctx, int who,
                         const char *name, const char *param, enum MHD_Result *ret) {
    (void)srv;
    if (key_allows(ctx->kr, who, name)) return false;
    *ret = send_error(c, ctx, 403, param, "permission_denied",
                      "this API key may not administer adapter '%.128s'", name);
    return true;
}

static enum MHD_Result send_admin_refusal(struct MHD_Connection *c, conn_ctx *ctx, server *srv,
                                          int st) {
    if (st == 401)
        return send_error(c, ctx, 401, NULL, "invalid_api_key",
                          "adapter administration needs the admin key "
                          "('Authorization: Bearer <admin key>')");
    if ((!srv->cfg->admin_key || !*srv->cfg->admin_key) && !(ctx->kr && ctx->kr->n_manage))
        return send_error(c, ctx, 403, NULL, "admin_disabled",
                          "adapter administration is disabled (start the server with --admin-key)");
    return send_error(c, ctx, 403, NULL, "forbidden", "this key may not administer adapters");
}

/* Reads kind and rank from a published version's adapter_config.json (best effort). */
static void version_summary(server *srv, const char *version, char kind[32], int *rank) {
    kind[0] = '\0';
    *rank = 0;
    if (!version[0]) return;
    char path[4096];
    snprintf(path, sizeof(path), "%s/objects/%s/adapter_config.json", qv_store_root(srv->store),
             version);
    char *text = NULL;
    size_t len = 0;
    qv_error err = {0};
    if (qv_read_file(path, 1 << 20, &text, &len, &err) != QV_OK) return;
    qv_proto_adapter_config_summary(text, len, kind, 32, rank);
    qv_free(text);
}

/* Fills a JOB_TIERS job with every store entry (one == NULL) or the one `one` resolves to.
 * Returns the HTTP status of a failure (404 unknown, 500), or 0. */
static int job_gather(server *srv, admin_job *j, const char *one, char *msg, size_t msg_cap) {
    qv_error err = {0};
    if (!srv->store) {
        j->n = 0;
        if (!one) return 0;
        snprintf(msg, msg_cap, "adapter '%s' not found (no adapter store)", one);
        return 404;
    }
    if (one) {
        j->entries = qv_calloc(1, sizeof(*j->entries));
        if (!j->entries) return 500;
        qv_status s = qv_store_resolve(srv->store, one, j->entries[0].version, NULL, &err);
        if (s != QV_OK) {
            if (s != QV_ERR_NOT_FOUND) snprintf(msg, msg_cap, "%.380s", err.msg);
            if (s == QV_ERR_NOT_FOUND) snprintf(msg, msg_cap, "adapter '%s' not found", one);
            return s == QV_ERR_NOT_FOUND ? 404 : 500;
        }
        snprintf(j->entries[0].name, sizeof(j->entries[0].name), "%s", one);
        j->n = 1;
    } else if (qv_store_list(srv->store, &j->entries, &j->n, &err) != QV_OK) {
        snprintf(msg, msg_cap, "%.380s", err.msg);
        return 500;
    }
    if (j->n) {
        j->infos = qv_calloc(j->n, sizeof(*j->infos));
        j->kinds = qv_calloc(j->n, sizeof(*j->kinds));
        if (!j->infos || !j->kinds) return 500;
    }
    for (size_t i = 0; i < j->n; i++) {
        qv_store_entry *e = &j->entries[i];
        int rank = 0;
        version_summary(srv, e->version, j->kinds[i], &rank);
        j->infos[i] = (qv_proto_adapter_info){.name = e->name,
                                              .version = e->version,
                                              .kind = j->kinds[i][0] ? j->kinds[i] : NULL,
                                              .rank = rank,
                                              .tier = "disk",
                                              .alias_of = e->is_alias ? e->target : NULL};
    }
    return 0;
}

/* Hands a job to the engine thread and suspends the connection until it is done. */
static enum MHD_Result job_start(server *srv, struct MHD_Connection *c, conn_ctx *ctx,
                                 admin_job *j) {
    j->conn = c;
    j->refs = 2;
    pthread_mutex_lock(&j->mu);
    j->suspended = true;
    MHD_suspend_connection(c);
    pthread_mutex_unlock(&j->mu);
    ctx->job = j;
    if (!post_msg(srv, MSG_JOB, NULL, j)) {
        pthread_mutex_lock(&j->mu);
        j->refs--;
        j->done = true;
        j->status = 500;
        snprintf(j->msg, sizeof(j->msg), "out of memory");
        if (j->suspended) {
            j->suspended = false;
            MHD_resume_connection(c);
        }
        pthread_mutex_unlock(&j->mu);
    }
    return MHD_YES;
}

static admin_job *job_new(server *srv, enum job_kind kind, enum job_resp resp) {
    admin_job *j = qv_calloc(1, sizeof(*j));
    if (!j) return NULL;
    pthread_mutex_init(&j->mu, NULL);
    j->refs = 1;
    j->srv = srv;
    j->kind = kind;
    j->resp = resp;
    return j;
}

/* Starts a listing (models, adapters, one adapter) or a delete. */
static enum MHD_Result admin_begin(server *srv, struct MHD_Connection *c, conn_ctx *ctx,
                                   enum job_kind kind, enum job_resp resp, const char *name) {
    admin_job *j = job_new(srv, kind, resp);
    if (!j) return send_error(c, ctx, 500, NULL, NULL, "out of memory");
    if (kind == JOB_TIERS) {
        char msg[384] = "out of memory";
        int st = job_gather(srv, j, name, msg, sizeof(msg));
        if (st) {
            job_release(j);
            if (st == 404 && resp == RESP_MODEL)
                return send_error(c, ctx, 404, NULL, "model_not_found", "model '%s' not found",
                                  name);
            return send_error(c, ctx, st, NULL, st == 404 ? "adapter_not_found" : NULL, "%s", msg);
        }
    } else if (name) {
        snprintf(j->name, sizeof(j->name), "%s", name);
    }
    return job_start(srv, c, ctx, j);
}

/* Called again once the engine finished the job. */
static uint64_t fnv1a(uint64_t h, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

/* A listing (GET /v1/models, /v1/adapters) with two validators for routers and caches:
 * ETag, the hash of the body (If-None-Match with it answers 304, no body), and
 * X-Quiver-Catalog, the hash of the listed name -> version pairs alone: it changes with every
 * publish, delete or alias move, not with residency, and is the same on every replica that
 * sees the same store (so a router can tell replicas that lag behind a shared store). */
static enum MHD_Result send_listing(struct MHD_Connection *c, conn_ctx *ctx, char *json,
                                    const qv_proto_adapter_info *a, size_t n) {
    if (!json) return send_error(c, ctx, 500, NULL, NULL, "out of memory");
    uint64_t cat = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) {
        cat = fnv1a(cat, a[i].name, strlen(a[i].name) + 1);
        cat = fnv1a(cat, a[i].version ? a[i].version : "",
                    strlen(a[i].version ? a[i].version : "") + 1);
    }
    char etag[24], catalog[20];
    snprintf(etag, sizeof etag, "\"%016" PRIx64 "\"",
             fnv1a(14695981039346656037ull, json, strlen(json)));
    snprintf(catalog, sizeof catalog, "%016" PRIx64, cat);
    const char *inm =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
    const bool same = inm && (strstr(inm, etag) || !strcmp(inm, "*"));
    size_t len = 0;
    char *p = same ? NULL : libc_copy(json, &len);
    qv_free(json);
    if (!same && !p) return MHD_NO;
    const char *const extra[] = {MHD_HTTP_HEADER_ETAG, etag, "X-Quiver-Catalog", catalog, NULL};
    return queue_answer(c, ctx, same ? 304 : 200, same ? NULL : "application/json", p, len, extra);
}

static enum MHD_Result admin_respond(server *srv, struct MHD_Connection *c, conn_ctx *ctx) {
    admin_job *j = ctx->job;
    pthread_mutex_lock(&j->mu);
    if (!j->done) {
        j->suspended = true;
        MHD_suspend_connection(c);
        pthread_mutex_unlock(&j->mu);
        return MHD_YES;
    }
    pthread_mutex_unlock(&j->mu);
    if (j->status >= 400)
        return send_error(c, ctx, j->status, NULL,
                          j->code            ? j->code
                          : j->status == 404 ? "adapter_not_found"
                                             : NULL,
                          "%s", j->msg);
    /* A key limited to some adapters sees only those (listings) and no other (404). */
    size_t n_shown = j->n;
    const int who = auth_key(srv, ctx, c);
    if (who >= 0 && j->resp <= RESP_MODEL) { /* the listings and one adapter or model */
        n_shown = 0;
        for (size_t i = 0; i < j->n; i++) /* infos own nothing: compacted in place */
            if (key_allows(ctx->kr, who, j->infos[i].name)) j->infos[n_shown++] = j->infos[i];
        if (j->resp == RESP_ONE && n_shown == 0) /* as for a name the store lacks */
            return send_error(c, ctx, 404, NULL, "adapter_not_found", "adapter '%s' not found",
                              j->n ? j->infos[0].name : "");
        if (j->resp == RESP_MODEL && n_shown == 0)
            return send_error(c, ctx, 404, NULL, "model_not_found", "model '%s' not found",
                              j->n ? j->infos[0].name : "");
    }
    switch (j->resp) {
    case RESP_MODELS:
        return send_listing(c, ctx,
                            qv_proto_encode_model_list(srv->base_name, j->infos, n_shown, 0),
                            j->infos, n_shown);
    case RESP_LIST:
        return send_listing(c, ctx, qv_proto_encode_adapter_list(j->infos, n_shown), j->infos,
                            n_shown);
    case RESP_ONE: return send_json(c, ctx, 200, qv_proto_encode_adapter(j->infos));
    case RESP_MODEL:
        return send_json(c, ctx, 200, qv_proto_encode_model(srv->base_name, j->infos, 0));
    case RESP_DELETE: {
        char buf[256];
        snprintf(buf, sizeof(buf),
                 "{\"object\":\"adapter.deleted\",\"name\":\"%s\",\"deleted\":true}",
                 j->name); /* names are [A-Za-z0-9._-]: no escaping needed */
        return send_json(c, ctx, 200, qv_strdup(buf));
    }
    case RESP_UPLOAD: {
        qv_proto_adapter_info info = {.name = j->name,
                                      .version = j->version,
                                      .kind = j->kind_name[0] ? j->kind_name : NULL,
                                      .rank = j->rank,
                                      .tier = "disk"};
        return send_json(c, ctx, j->status, qv_proto_encode_adapter(&info));
    }
    case RESP_PREFIX_RESET: {
        char buf[96];
        snprintf(buf, sizeof(buf), "{\"object\":\"prefix_cache.reset\",\"pages_freed\":%d}",
                 j->pages_freed);
        return send_json(c, ctx, 200, qv_strdup(buf));
    }
    case RESP_UNLOAD: {
        char buf[256];
        snprintf(buf, sizeof(buf), "Success: LoRA adapter '%s' removed successfully.", j->name);
        size_t len = 0;
        char *p = libc_copy(buf, &len);
        return p ? queue_buf(c, ctx, 200, "text/plain", p, len) : MHD_NO;
    }
    }
    return MHD_NO;
}

/* ---- multipart uploads: POST /v1/adapters, PUT /v1/adapters/{name} ---- */

struct upload {
    server *srv;
    struct MHD_PostProcessor *pp;
    qv_store_txn_t *txn;
    bool replace;                     /* PUT: the name comes from the URL, may exist */
    char name[QV_STORE_NAME_MAX + 2]; /* one more byte to notice names that are too long */
    size_t name_len;
    bool have_config, have_weights;
    int status; /* != 0: the first error, answered once the body is consumed */
    char msg[384];
    const char *code;
    int who;           /* admin_auth: the admin key (AUTH_ANY) or a manage= key */
    const keyring *kr; /* the connection's keys (conn_ctx.kr, outlives the upload) */
};

static void upload_fail(upload *u, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void upload_fail(upload *u, int status, const char *code, const char *fmt, ...) {
    if (u->status) return;
    u->status = status;
    u->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(u->msg, sizeof(u->msg), fmt, ap);
    va_end(ap);
}

static bool pickle_name(const char *f) {
    static const char *const ext[] = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"};
    size_t n = strlen(f);
    for (size_t i = 0; i < QV_ARRAY_LEN(ext); i++) {
        size_t e = strlen(ext[i]);
        if (n >= e && !strcmp(f + n - e, ext[i])) return true;
    }
    return false;
}

/* MHD post-processor iterator: form field `name`, and files streamed into the transaction. */
static enum MHD_Result upload_iter(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *filename, const char *content_type,
                                   const char *transfer_encoding, const char *data, uint64_t off,
                                   size_t size) {
    (void)kind;
    (void)content_type;
    (void)transfer_encoding;
    (void)off;
    upload *u = cls;
    if (u->status) return MHD_YES;
    if (!filename) {
        if (key && !strcmp(key, "name") && !u->replace) {
            if (u->name_len + size >= sizeof(u->name)) {
                upload_fail(u, 400, "invalid_value", "the adapter name is longer than %d bytes",
                            QV_STORE_NAME_MAX);
                return MHD_YES;
            }
            memcpy(u->name + u->name_len, data, size);
            u->name_len += size;
            u->name[u->name_len] = '\0';
        }
        return MHD_YES;
    }
    const char *base = strrchr(filename, '/');
    base = base ? base + 1 : filename;
    const char *target = key && qv_store_filename_valid(key) ? key
                         : qv_store_filename_valid(base)     ? base
                                                             : NULL;
    if (!target) {
        if (pickle_name(base) || (key && pickle_name(key)))
            upload_fail(u, 400, "pickle_refused",
                        "'%.128s' is a pickle file; quiver never loads pickles: upload "
                        "adapter_model.safetensors instead",
                        key && pickle_name(key) ? key : base);
        else
            upload_fail(u, 400, "invalid_value",
                        "unexpected file '%.128s' (expected adapter_config.json and "
                        "adapter_model.safetensors or adapter.safetensors)",
                        base);
        return MHD_YES;
    }
    /* a manage= key limited to some names is refused before anything reaches the disk
     * (when the form gives the name first, as clients do; else at the end) */
    if (!u->txn && u->name_len && !key_allows(u->kr, u->who, u->name)) {
        upload_fail(u, 403, "permission_denied", "this API key may not administer adapter '%.128s'",
                    u->name);
        return MHD_YES;
    }
    qv_error err = {0};
    if (!u->txn && qv_store_begin(u->srv->store, &u->txn, &err) != QV_OK) {
        upload_fail(u, 500, NULL, "%s", err.msg);
        return MHD_YES;
    }
    if (!strcmp(target, "adapter_config.json"))
        u->have_config = true;
    else
        u->have_weights = true;
    if (size) {
        qv_status s = qv_store_txn_write(u->txn, target, data, size, &err);
        if (s != QV_OK)
            upload_fail(u,
                        s == QV_ERR_LIMIT     ? 413
                        : s == QV_ERR_INVALID ? 400
                                              : 500,
                        NULL, "%s", err.msg);
    }
    return MHD_YES;
}

static void upload_free(upload *u) {
    if (!u) return;
    if (u->pp) MHD_destroy_post_processor(u->pp);
    qv_store_abort(u->txn);
    qv_free(u);
}

/* First call of an upload route: checks the admin key and the store, sets up the post
 * processor. Refusals are answered after the body was read (and discarded). */
static upload *upload_new(server *srv, const conn_ctx *ctx, struct MHD_Connection *c,
                          const char *name) {
    upload *u = qv_calloc(1, sizeof(*u));
    if (!u) return NULL;
    u->srv = srv;
    if (name) {
        u->replace = true;
        snprintf(u->name, sizeof(u->name), "%s", name);
        u->name_len = strlen(u->name);
    }
    u->kr = ctx->kr;
    int st = admin_auth(srv, ctx, c, &u->who);
    if (st)
        u->status = st; /* message written by send_admin_refusal */
    else if (name && !key_allows(ctx->kr, u->who, u->name))
        upload_fail(u, 403, "permission_denied", "this API key may not administer adapter '%.128s'",
                    u->name);
    else if (!srv->store)
        upload_fail(u, 404, NULL, "this server has no adapter store");
    else if (!(u->pp = MHD_create_post_processor(c, 64 * 1024, upload_iter, u)))
        upload_fail(u, 400, "invalid_value",
                    "expected a multipart/form-data body (fields: name, adapter_config.json, "
                    "adapter_model.safetensors)");
    return u;
}

/* The body is consumed: answers a refusal at once, or hands the transaction to the engine
 * thread, whose worker pool validates and commits it (the connection waits suspended). */
static enum MHD_Result upload_finish(server *srv, struct MHD_Connection *c, conn_ctx *ctx) {
    upload *u = ctx->up;
    if (u->pp) {
        MHD_destroy_post_processor(u->pp);
        u->pp = NULL;
    }
    if ((u->status == 401 || u->status == 403) && !u->msg[0])
        return send_admin_refusal(c, ctx, srv, u->status);
    if (!u->status && !u->name_len)
        upload_fail(u, 400, "invalid_value", "the form has no 'name' field");
    if (!u->status && !qv_store_name_valid(u->name))
        upload_fail(u, 400, "invalid_value",
                    "'%.128s' is not a valid adapter name ([A-Za-z0-9][A-Za-z0-9._-]*, at most "
                    "%d bytes, no '..')",
                    u->name, QV_STORE_NAME_MAX);
    if (!u->status && !key_allows(ctx->kr, u->who, u->name))
        upload_fail(u, 403, "permission_denied", "this API key may not administer adapter '%.128s'",
                    u->name);
    if (!u->status && !u->have_config)
        upload_fail(u, 400, "invalid_value", "the upload has no adapter_config.json");
    if (!u->status && !u->have_weights)
        upload_fail(u, 400, "invalid_value",
                    "the upload has no adapter_model.safetensors (or adapter.safetensors)");
    if (u->status)
        return send_error(c, ctx, u->status, u->status == 403 ? "name" : NULL, u->code, "%s",
                          u->msg);
    admin_job *j = job_new(srv, JOB_UPLOAD, RESP_UPLOAD);
    if (!j) return send_error(c, ctx, 500, NULL, NULL, "out of memory");
    memcpy(j->name, u->name, QV_MIN(strlen(u->name), (size_t)QV_STORE_NAME_MAX)); /* valid */
    j->replace = u->replace;
    j->txn = u->txn;
    u->txn = NULL;
    atomic_fetch_add(&srv->n_open, 1); /* a drain waits for its answer to be written */
    return job_start(srv, c, ctx, j);
}

/* ---- vLLM-compatible /v1/load_lora_adapter and /v1/unload_lora_adapter ---- */

static enum MHD_Result handle_lora_load(server *srv, struct MHD_Connection *c, conn_ctx *ctx,
                                        int who) {
    char *name = NULL, *path = NULL, *real = NULL, *root = NULL;
    qv_proto_error pe;
    enum MHD_Result ret;
    if (qv_proto_lora_request_decode(ctx->body ? ctx->body : "", ctx->body_len, &name, &path,
                                     &pe) != QV_OK) {
        ret = send_proto_error(c, ctx, &pe);
        goto done;
    }
    if (!qv_store_name_valid(name)) {
        ret = send_error(c, ctx, 400, "lora_name", "invalid_value",
                         "'%.128s' is not a valid adapter name", name);
        goto done;
    }
    if (admin_denied(srv, c, ctx, who, name, "lora_name", &ret)) goto done;
    const char *dir = srv->cfg->adapter_load_dir;
    if (!dir || !*dir) {
        ret = send_error(c, ctx, 403, "lora_path", "forbidden",
                         "loading adapters from server paths is disabled (start the server with "
                         "--adapter-load-dir DIR)");
        goto done;
    }
    real = realpath(path, NULL);
    root = realpath(dir, NULL);
    size_t rl = root ? strlen(root) : 0;
    if (!real || !root || strncmp(real, root, rl) != 0 || (real[rl] != '/' && real[rl] != '\0')) {
        ret = send_error(c, ctx, real ? 403 : 404, "lora_path", real ? "forbidden" : "not_found",
                         real ? "lora_path '%.200s' is not under the adapter load directory"
                              : "lora_path '%.200s' does not exist",
                         path);
        goto done;
    }
    qv_error err = {0};
    char version[QV_STORE_VERSION_LEN + 1];
    qv_status s = preload_one(srv, name, real, version, &err);
    if (s != QV_OK) {
        ret = send_error(c, ctx, s == QV_ERR_IO || s == QV_ERR_NOMEM ? 500 : 422, NULL,
                         "adapter_invalid", "%s", err.msg);
        goto done;
    }
    QV_LOGI("adapter %s published from %s: version %.12s", name, real, version);
    char buf[256];
    snprintf(buf, sizeof(buf), "Success: LoRA adapter '%s' added successfully.", name);
    size_t len = 0;
    char *p = libc_copy(buf, &len);
    ret = p ? queue_buf(c, ctx, 200, "text/plain", p, len) : MHD_NO;
done:
    free(real);
    free(root);
    qv_free(name);
    qv_free(path);
    return ret;
}

static enum MHD_Result handle_lora_unload(server *srv, struct MHD_Connection *c, conn_ctx *ctx,
                                          int who) {
    char *name = NULL;
    qv_proto_error pe;
    if (qv_proto_lora_request_decode(ctx->body ? ctx->body : "", ctx->body_len, &name, NULL, &pe) !=
        QV_OK)
        return send_proto_error(c, ctx, &pe);
    enum MHD_Result ret;
    if (!qv_store_name_valid(name))
        ret = send_error(c, ctx, 400, "lora_name", "invalid_value",
                         "'%.128s' is not a valid adapter name", name);
    else if (!admin_denied(srv, c, ctx, who, name, "lora_name", &ret))
        ret = admin_begin(srv, c, ctx, JOB_DELETE, RESP_UNLOAD, name);
    qv_free(name);
    return ret;
}

/* "METHOD /path" for the log line, with bytes outside printable ASCII (control characters,
 * newlines, UTF-8 a byte limit could split) percent-encoded, so a client cannot forge or break
 * log lines; long paths are cut at a whole escape. */
static void set_route(conn_ctx *ctx, const char *method, const char *url) {
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0, cap = sizeof(ctx->route);
    const char *parts[] = {method, " ", url};
    for (size_t k = 0; k < QV_ARRAY_LEN(parts); k++) {
        for (const unsigned char *p = (const unsigned char *)parts[k]; *p; p++) {
            bool plain = (*p > 0x20 && *p < 0x7f) || k == 1;
            if (o + (plain ? 1 : 3) + 1 > cap) break;
            if (plain) {
                ctx->route[o++] = (char)*p;
            } else {
                ctx->route[o++] = '%';
                ctx->route[o++] = hex[*p >> 4];
                ctx->route[o++] = hex[*p & 15];
            }
        }
    }
    ctx->route[o] = '\0';
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
    (void)version;
    server *srv = cls;
    conn_ctx *ctx = *con_cls;
    if (!ctx) {
        ctx = qv_calloc(1, sizeof(*ctx));
        if (!ctx) return MHD_NO;
        ctx->t0 = qv_time_s();
        ctx->kr = keyring_acquire(srv);
        *con_cls = ctx;
        take_request_id(c, ctx);
        bool put = !strcmp(method, MHD_HTTP_METHOD_PUT);
        if ((!strcmp(method, MHD_HTTP_METHOD_POST) && !strcmp(url, "/v1/adapters")) ||
            (put && !strncmp(url, "/v1/adapters/", 13) && url[13])) {
            set_route(ctx, method, url);
            if (!(ctx->up = upload_new(srv, ctx, c, put ? url + 13 : NULL))) return MHD_NO;
        }
        return MHD_YES;
    }
    if (ctx->job) return admin_respond(srv, c, ctx); /* resumed: the job is done */
    if (ctx->up) {
        upload *u = ctx->up;
        if (!*upload_data_size) return upload_finish(srv, c, ctx);
        if (u->pp && !u->status &&
            MHD_post_process(u->pp, upload_data, *upload_data_size) != MHD_YES)
            upload_fail(u, 400, "invalid_value", "malformed multipart/form-data body");
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (ctx->too_big || ctx->body_len + n > srv->cfg->max_body_bytes) {
            ctx->too_big = true;
            qv_free(ctx->body);
            ctx->body = NULL;
            ctx->body_len = ctx->body_cap = 0;
            return MHD_YES;
        }
        if (ctx->body_len + n + 1 > ctx->body_cap) {
            size_t cap = QV_MAX(ctx->body_cap * 2, ctx->body_len + n + 1);
            char *b = qv_realloc(ctx->body, cap);
            if (!b) return MHD_NO;
            ctx->body = b;
            ctx->body_cap = cap;
        }
        memcpy(ctx->body + ctx->body_len, upload_data, n);
        ctx->body_len += n;
        ctx->body[ctx->body_len] = '\0';
        return MHD_YES;
    }
    if (ctx->req) return respond(c, ctx);
    set_route(ctx, method, url);
    bool get = !strcmp(method, MHD_HTTP_METHOD_GET), post_m = !strcmp(method, MHD_HTTP_METHOD_POST);
    if (!strcmp(url, "/health")) {
        if (!get) goto bad_method;
        return send_json(c, ctx, 200, qv_strdup("{\"status\":\"ok\"}"));
    }
    if (!strcmp(url, "/version")) {
        if (!get) goto bad_method;
        char buf[160];
        snprintf(buf, sizeof buf, "{\"version\":\"%s\",\"commit\":\"%s\"}", QV_VERSION,
                 QV_GIT_COMMIT);
        return send_json(c, ctx, 200, qv_strdup(buf));
    }
    if (!strcmp(url, "/ready")) {
        if (!get) goto bad_method;
        if (atomic_load(&srv->draining))
            return send_json(c, ctx, 503, qv_strdup("{\"status\":\"draining\"}"));
        return send_json(c, ctx, 200, qv_strdup("{\"status\":\"ready\"}"));
    }
    bool adapters_route = !strcmp(url, "/v1/adapters") || !strncmp(url, "/v1/adapters/", 13);
    bool lora_route =
        !strcmp(url, "/v1/load_lora_adapter") || !strcmp(url, "/v1/unload_lora_adapter");
    bool tok_route = !strcmp(url, "/tokenize") || !strcmp(url, "/detokenize");
    if (!strcmp(url, "/reset_prefix_cache")) { /* vLLM's route; the --admin-key only */
        if (!post_m) goto bad_method;
        int who;
        int st = admin_auth(srv, ctx, c, &who);
        if (st) return send_admin_refusal(c, ctx, srv, st);
        if (who != AUTH_ANY)
            return send_error(c, ctx, 403, NULL, "forbidden",
                              "resetting the prefix cache needs the admin key");
        return admin_begin(srv, c, ctx, JOB_PREFIX_RESET, RESP_PREFIX_RESET, NULL);
    }
    bool tgi_route =
        !strcmp(url, "/generate") || !strcmp(url, "/generate_stream") || !strcmp(url, "/");
    ctx->tgi = tgi_route;
    bool known = !strcmp(url, "/v1/models") || (!strncmp(url, "/v1/models/", 11) && url[11]) ||
                 (!strncmp(url, "/v1/responses/", 14) && url[14]) || !strcmp(url, "/metrics") ||
                 (!strncmp(url, "/v1/conversations", 17) && (!url[17] || url[17] == '/')) ||
                 !strcmp(url, "/v1/completions") || !strcmp(url, "/v1/chat/completions") ||
                 !strcmp(url, "/v1/responses") || adapters_route || lora_route || tok_route ||
                 tgi_route;
    if (!known)
        return send_error(c, ctx, 404, NULL, "not_found", "no route for %s %s", method, url);
    if (adapters_route || lora_route) {
        const char *name = !strncmp(url, "/v1/adapters/", 13) ? url + 13 : NULL;
        bool del = !strcmp(method, MHD_HTTP_METHOD_DELETE);
        if (lora_route || (del && name)) {
            if (lora_route && !post_m) goto bad_method;
            int who;
            int st = admin_auth(srv, ctx, c, &who);
            if (st) return send_admin_refusal(c, ctx, srv, st);
            if (ctx->too_big)
                return send_error(c, ctx, 413, NULL, "body_too_large",
                                  "the request body exceeds %zu bytes", srv->cfg->max_body_bytes);
            if (lora_route)
                return !strcmp(url, "/v1/load_lora_adapter") ? handle_lora_load(srv, c, ctx, who)
                                                             : handle_lora_unload(srv, c, ctx, who);
            if (!qv_store_name_valid(name))
                return send_error(c, ctx, 400, NULL, "invalid_value",
                                  "'%.128s' is not a valid adapter name", name);
            enum MHD_Result ret;
            if (admin_denied(srv, c, ctx, who, name, NULL, &ret)) return ret;
            return admin_begin(srv, c, ctx, JOB_DELETE, RESP_DELETE, name);
        }
        if (!get) goto bad_method;
        if (!authorized(srv, ctx, c))
            return send_error(c, ctx, 401, NULL, "invalid_api_key",
                              "missing or wrong API key (send 'Authorization: Bearer <key>')");
        if (!name) return admin_begin(srv, c, ctx, JOB_TIERS, RESP_LIST, NULL);
        if (!qv_store_name_valid(name) && !qv_store_version_valid(name))
            return send_error(c, ctx, 400, NULL, "invalid_value",
                              "'%.128s' is not a valid adapter name", name);
        return admin_begin(srv, c, ctx, JOB_TIERS, RESP_ONE, name);
    }
    if (!authorized(srv, ctx, c))
        return send_error(c, ctx, 401, NULL, "invalid_api_key",
                          "missing or wrong API key (send 'Authorization: Bearer <key>')");
    if (ctx->too_big)
        return send_error(c, ctx, 413, NULL, "body_too_large", "the request body exceeds %zu bytes",
                          srv->cfg->max_body_bytes);
    if (!strcmp(url, "/v1/models")) {
        if (!get) goto bad_method;
        return admin_begin(srv, c, ctx, JOB_TIERS, RESP_MODELS, NULL);
    }
    if (!strncmp(url, "/v1/conversations", 17) && (!url[17] || url[17] == '/'))
        return handle_conversations(srv, c, ctx, method, url);
    if (!strcmp(url, "/v1/responses/input_tokens")) { /* no response's id: ids start resp_ */
        if (!post_m) goto bad_method;
        return handle_input_tokens(srv, c, ctx);
    }
    if (!strncmp(url, "/v1/responses/", 14)) /* a kept or background response */
        return handle_response_id(srv, c, ctx, method, url);
    if (!strncmp(url, "/v1/models/", 11)) { /* one model: the base, "base:adapter" or an adapter */
        if (!get) goto bad_method;
        const char *id = url + 11, *colon = strchr(id, ':');
        if (model_matches(srv, id))
            return send_json(c, ctx, 200, qv_proto_encode_model(srv->base_name, NULL, 0));
        char base[256];
        if (colon && (size_t)(colon - id) < sizeof(base)) {
            memcpy(base, id, (size_t)(colon - id));
            base[colon - id] = '\0';
        }
        const char *name = !colon ? id
                           : (size_t)(colon - id) < sizeof(base) && model_matches(srv, base)
                               ? colon + 1
                               : NULL;
        if (!name || (!qv_store_name_valid(name) && !qv_store_version_valid(name)))
            return send_error(c, ctx, 404, NULL, "model_not_found", "model '%.200s' not found", id);
        return admin_begin(srv, c, ctx, JOB_TIERS, RESP_MODEL, name);
    }
    if (!strcmp(url, "/metrics")) {
        if (!get) goto bad_method;
        size_t len = 0, n_kept = 0, kept_bytes = 0;
        if (srv->resp_store) qv_resp_store_stats(srv->resp_store, &n_kept, &kept_bytes);
        qv_metrics_resp_store(srv->metrics, n_kept, kept_bytes,
                              srv->resp_store ? qv_resp_store_max_bytes(srv->resp_store) : 0,
                              srv->resp_store ? qv_resp_store_evictions(srv->resp_store) : 0);
        qv_tenant_stats *rows = qv_malloc(QV_TENANT_MAX * sizeof(*rows));
        if (rows)
            qv_metrics_tenants(srv->metrics, rows,
                               qv_tenants_snapshot(srv->tenants, rows, QV_TENANT_MAX));
        qv_free(rows);
        char *text = qv_metrics_render(srv->metrics, &len);
        char *p = text ? libc_copy(text, &len) : NULL;
        qv_free(text);
        if (!p) return MHD_NO;
        return queue_buf(c, ctx, 200, "text/plain; version=0.0.4", p, len);
    }
    if (!post_m) goto bad_method;
    if (tok_route)
        return handle_tokenize(srv, c, ctx,
                               url[1] == 't' ? QV_PROTO_TOKENIZE : QV_PROTO_DETOKENIZE);
    if (tgi_route)
        return handle_generate(srv, c, ctx, QV_PROTO_GENERATE,
                               !strcmp(url, "/generate")          ? 0
                               : !strcmp(url, "/generate_stream") ? 1
                                                                  : -1);
    return handle_generate(srv, c, ctx,
                           !strcmp(url, "/v1/completions") ? QV_PROTO_COMPLETIONS
                           : !strcmp(url, "/v1/responses") ? QV_PROTO_RESPONSES
                                                           : QV_PROTO_CHAT,
                           0);
bad_method:;
    /* Reached from routes decided before lora_route is set (/health, /ready): test the URL. */
    const char *allow =
        !strcmp(url, "/v1/completions") || !strcmp(url, "/v1/chat/completions") ||
                !strcmp(url, "/v1/responses") || !strcmp(url, "/v1/responses/input_tokens") ||
                !strcmp(url, "/v1/load_lora_adapter") || !strcmp(url, "/v1/unload_lora_adapter") ||
                !strcmp(url, "/tokenize") || !strcmp(url, "/detokenize") ||
                !strcmp(url, "/generate") || !strcmp(url, "/generate_stream") ||
                !strcmp(url, "/") || !strcmp(url, "/reset_prefix_cache")
            ? "POST"
        : !strcmp(url, "/v1/adapters")       ? "GET, POST"
        : !strncmp(url, "/v1/adapters/", 13) ? "GET, PUT, DELETE"
                                             : "GET";
    return send_405(c, ctx, allow);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)c;
    server *srv = cls;
    conn_ctx *ctx = *con_cls;
    if (!ctx) return;
    *con_cls = NULL;
    double now = qv_time_s();
    if (ctx->job) {
        admin_job *j = ctx->job;
        pthread_mutex_lock(&j->mu);
        j->suspended = false; /* a completed connection is never resumed again */
        pthread_mutex_unlock(&j->mu);
        if (j->kind == JOB_UPLOAD) atomic_fetch_sub(&srv->n_open, 1);
        job_release(j);
    }
    upload_free(ctx->up);
    request *r = ctx->req;
    if (r && r->background) { /* it runs on: logged and counted when the engine is done */
        req_lock(r);
        r->suspended = false;
        r->conn = NULL;
        req_unlock(r);
        atomic_fetch_sub(&srv->n_open, 1);
        group_release(r);
    } else if (r) {
        req_lock(r);
        r->suspended = false; /* a completed connection is never resumed again */
        int status = r->err_status && !(r->stream && r->admitted) ? r->err_status : ctx->status;
        for (int i = 0; i < n_choices(r); i++)
            status = choice_at(r, i)->err_status && !(r->stream && r->admitted)
                         ? choice_at(r, i)->err_status
                         : status;
        const bool ok = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && !r->client_gone;
        req_unlock(r);
        /* Client gone, or the answer was an error while other choices still ran: cancel the
         * sequences (frees their KV pages) on the engine thread. */
        for (int i = 0; i < n_choices(r); i++) {
            request *m = choice_at(r, i);
            req_lock(r);
            const bool running = !m->done;
            if (running) m->refs++;
            req_unlock(r);
            if (running && !post(srv, MSG_CANCEL, m)) request_release(m);
        }
        if (!ok) status = 499; /* nginx's "client closed request" */
        account_request(srv, r, status, ok ? "" : " (client disconnected)", now - ctx->t0,
                        ctx->xrid);
        atomic_fetch_sub(&srv->n_open, 1);
        group_release(r);
    } else if (ctx->status) {
        qv_metrics_request(srv->metrics, ctx->status, 0, 0, -1, -1, now - ctx->t0);
        /* Probes and scrapes stay quiet; everything else (errors included) gets its line. */
        if (strcmp(ctx->route, "GET /health") != 0 && strcmp(ctx->route, "GET /ready") != 0 &&
            strcmp(ctx->route, "GET /metrics") != 0)
            QV_LOGI("request - %s status=%d total=%.3fs%s%s", ctx->route, ctx->status,
                    now - ctx->t0, ctx->xrid[0] ? " x-request-id=" : "", ctx->xrid);
    }
    keyring_release(srv, ctx->kr);
    qv_free(ctx->body);
    qv_free(ctx);
}

/* ---- start-up ---- */

/* libmicrohttpd's own diagnostics, through quiver's logger. A peer that goes away (reset,
 * broken pipe, timeout, a failed send) is routine for a server, so those lines are debug; the
 * rest (listen, resources, protocol errors) are warnings. Any MHD thread. */
static void mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    static const char *const routine[] = {
        "Failed to send",   "Failed to receive", "no longer available", "reset by peer",
        "Connection reset", "Broken pipe",       "timed out",           "timeout",
        "closed by",        "disconnected"};
    bool quiet = false;
    for (size_t i = 0; i < QV_ARRAY_LEN(routine) && !quiet; i++)
        quiet = strstr(msg, routine[i]) != NULL;
    if (quiet)
        QV_LOGD("http: %s", msg);
    else
        QV_LOGW("http: %s", msg);
}

/* Store validator: a version is published only if it loads against this base model and the
 * engine's backend runs its kind and features (--device cuda lacks a few LoRA extras). */
static qv_status validate_adapter_dir(const char *dir, void *user, qv_error *err) {
    server *srv = user;
    qv_adapter *ad = NULL;
    qv_status s = qv_adapter_load(dir, srv->model, &srv->limits, &ad, err);
    if (s == QV_OK && srv->engine) s = qv_engine_adapter_supported(srv->engine, ad, err);
    qv_adapter_free(ad);
    return s;
}

/* Registry loader (worker threads): the PEFT / AdapterHub loader against the base model. */
static qv_status load_adapter(void *user, const char *path, const char *version, void **obj,
                              uint64_t *n_bytes, qv_error *err) {
    (void)version;
    server *srv = user;
    qv_adapter *ad = NULL;
    if (srv->test_load_delay_ms > 0) sleep_ms(srv->test_load_delay_ms);
    qv_status s = qv_adapter_load(path, srv->model, &srv->limits, &ad, err);
    if (s != QV_OK) return s;
    *obj = ad;
    *n_bytes = QV_MAX(qv_adapter_n_bytes(ad), (size_t)1);
    return QV_OK;
}

/* Registry worker: the merged adapter of a request's merged_adapters (spec: its merge_spec). */
static qv_status merge_adapters(void *user, void *const *objs, size_t n, const void *spec,
                                void **obj, uint64_t *n_bytes, qv_error *err) {
    const server *srv = user;
    const merge_spec *m = spec;
    const qv_adapter *ads[QV_MERGE_MAX];
    for (size_t i = 0; i < n && i < QV_MERGE_MAX; i++)
        ads[i] = objs[i];
    qv_adapter *ad = NULL;
    qv_status s = qv_adapter_merge(ads, &m->p, &ad, err);
    if (s == QV_OK && srv->limits.max_n_bytes && ad->n_bytes > srv->limits.max_n_bytes)
        s = qv_errorf(err, QV_ERR_LIMIT, "the merged adapter needs %zu bytes, more than %zu",
                      ad->n_bytes, srv->limits.max_n_bytes);
    for (int l = 0; s == QV_OK && srv->limits.max_rank && l < ad->n_layers; l++)
        for (int p = 0; p < QV_PROJ_COUNT; p++) /* "cat" adds the parts' ranks */
            if (ad->layers[l].lora[p].rank > srv->limits.max_rank) {
                s = qv_errorf(err, QV_ERR_LIMIT,
                              "the merged adapter has rank %d on layers.%d.%s, more than "
                              "--max-rank %d",
                              ad->layers[l].lora[p].rank, l, qv_proj_name((enum qv_proj)p),
                              srv->limits.max_rank);
                break;
            }
    if (s != QV_OK) {
        qv_adapter_free(ad);
        char names[QV_MERGE_MAX * 32] = "";
        for (int i = 0; i < m->p.n; i++) {
            const size_t len = strlen(names);
            snprintf(names + len, sizeof(names) - len, "%s'%.24s'", i ? ", " : "", m->names[i]);
        }
        qv_error_prefix(err, "merged_adapters [%s]", names);
        return s;
    }
    *obj = ad;
    *n_bytes = QV_MAX(qv_adapter_n_bytes(ad), (size_t)1);
    return QV_OK;
}

static void free_adapter(void *user, void *obj) {
    (void)user;
    qv_adapter_free(obj);
}

static void notify_adapter(void *user) {
    server *srv = user;
    pthread_mutex_lock(&srv->inbox_mu);
    if (!srv->loop_closed) uv_async_send(&srv->wake);
    pthread_mutex_unlock(&srv->inbox_mu);
}

/* Publishes the adapter directory `dir` as `name` (the --preload flag). */
static qv_status preload_one(server *srv, const char *name, const char *dir, char version[65],
                             qv_error *err) {
    static const char *const files[] = {"adapter_config.json", "adapter_model.safetensors",
                                        "adapter.safetensors"};
    qv_store_txn_t *txn = NULL;
    FILE *f = NULL;
    char *buf = qv_malloc(1 << 20);
    qv_status s = QV_ERR_NOMEM;
    if (!buf) goto fail;
    if ((s = qv_store_begin(srv->store, &txn, err)) != QV_OK) goto fail;
    for (size_t i = 0; i < QV_ARRAY_LEN(files); i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        f = fopen(path, "rb");
        if (!f) continue;
        size_t n;
        while ((n = fread(buf, 1, 1 << 20, f)) > 0)
            if ((s = qv_store_txn_write(txn, files[i], buf, n, err)) != QV_OK) goto fail;
        if (ferror(f)) {
            s = qv_errorf(err, QV_ERR_IO, "%s: read error", path);
            goto fail;
        }
        fclose(f);
        f = NULL;
    }
    s = qv_store_commit(txn, name, version, err);
    txn = NULL;
fail:
    if (f) fclose(f);
    qv_store_abort(txn);
    qv_free(buf);
    return s;
}

/* Opens the store, publishes --preload directories and creates the registry. Returns false
 * (after printing why) when any of it fails; the server then does not start. */
static bool adapters_start(server *srv) {
    const qv_http_config *cfg = srv->cfg;
    qv_error err = {0};
    srv->limits.max_rank = cfg->max_rank;
    const char *delay = getenv("QUIVER_TEST_ADAPTER_LOAD_DELAY_MS");
    srv->test_load_delay_ms = delay ? atoi(delay) : 0;
    delay = getenv("QUIVER_TEST_UPLOAD_DELAY_MS");
    srv->test_upload_delay_ms = delay ? atoi(delay) : 0;
    if (!cfg->adapter_store || !*cfg->adapter_store) return cfg->n_preload == 0;
    if (qv_store_open(cfg->adapter_store, NULL, &srv->store, &err) != QV_OK) {
        qv_log_tagged(QV_LOG_ERROR, "serve", "adapter store: %s", err.msg);
        return false;
    }
    qv_store_set_validator(srv->store, validate_adapter_dir, srv);
    for (size_t i = 0; i < cfg->n_preload; i++) {
        const char *eq = strchr(cfg->preload[i], '=');
        char name[QV_STORE_NAME_MAX + 1];
        size_t nl = (size_t)(eq - cfg->preload[i]);
        if (nl > QV_STORE_NAME_MAX) nl = QV_STORE_NAME_MAX;
        memcpy(name, cfg->preload[i], nl);
        name[nl] = '\0';
        char version[65];
        if (!qv_store_name_valid(name)) {
            qv_log_tagged(QV_LOG_ERROR, "serve", "--preload: '%s' is not a valid adapter name",
                          name);
            return false;
        }
        if (preload_one(srv, name, eq + 1, version, &err) != QV_OK) {
            qv_log_tagged(QV_LOG_ERROR, "serve", "--preload %s: %s", cfg->preload[i], err.msg);
            return false;
        }
        qv_log_tagged(QV_LOG_INFO, "serve", "adapter '%s' = %.12s (from %s)", name, version,
                      eq + 1);
    }
    qv_registry_loader loader = {.load = load_adapter,
                                 .free = free_adapter,
                                 .notify = notify_adapter,
                                 .merge = merge_adapters,
                                 .user = srv};
    qv_registry_budgets b = {.host_bytes = (uint64_t)cfg->adapter_host_mb << 20,
                             .n_workers = 2,
                             .max_merging = cfg->max_merging};
    if (qv_registry_create(srv->store, &loader, &b, NULL, &srv->reg, &err) != QV_OK) {
        qv_log_tagged(QV_LOG_ERROR, "serve", "adapter registry: %s", err.msg);
        return false;
    }
    return true;
}

int qv_http_serve(const qv_http_config *cfg) {
    server srv_storage;
    server *srv = &srv_storage;
    memset(srv, 0, sizeof(*srv));
    srv->cfg = cfg;
    int rc = 1;
    bool loop_ok = false;
    signal(SIGPIPE, SIG_IGN);
    pthread_mutex_init(&srv->inbox_mu, NULL);
    pthread_mutex_init(&srv->keys_mu, NULL);
    pthread_mutex_init(&srv->bg_mu, NULL);

    srv->tenants = qv_tenants_create();
    const char *rdir = cfg->responses_dir && *cfg->responses_dir ? cfg->responses_dir : NULL;
    if (rdir && cfg->responses_store_mb) {
        struct stat sb;
        if ((mkdir(rdir, 0700) != 0 && errno != EEXIST) || stat(rdir, &sb) != 0 ||
            !S_ISDIR(sb.st_mode) || access(rdir, R_OK | W_OK | X_OK) != 0) {
            qv_log_tagged(QV_LOG_ERROR, "serve",
                          "--responses-dir %s: not a directory it can "
                          "write (%s)",
                          rdir, strerror(errno));
            goto out;
        }
        srv->responses_dir_bytes = (uint64_t)cfg->responses_dir_mb << 20;
        qv_log_tagged(QV_LOG_INFO, "serve",
                      "responses: kept in memory (%zu MiB) and as files in %s (up to %zu MiB)",
                      cfg->responses_store_mb, rdir, cfg->responses_dir_mb);
    }
    if (cfg->responses_store_mb &&
        !(srv->resp_store = qv_resp_store_create_dir(cfg->responses_store_mb << 20, rdir)))
        srv->tenants = (qv_tenants_destroy(srv->tenants), NULL);
    if (!srv->tenants) {
        qv_log_tagged(QV_LOG_ERROR, "serve", "out of memory");
        goto out;
    }
    if (cfg->api_keys_file && *cfg->api_keys_file) {
        char msg[512];
        if (!keys_install(srv, cfg->api_keys_file, msg, sizeof msg)) {
            qv_log_tagged(QV_LOG_ERROR, "serve", "--api-keys-file: %s", msg);
            goto out;
        }
    }
    qv_engine_config ec;
    qv_engine_config_default(&ec);
    ec.model_path = cfg->model_path;
    /* the default follows the CPUs the process may use (a container's CPU limit), not the
     * host's count; the start-up line says why */
    char threads_why[160] = "--threads";
    const int n_threads =
        cfg->n_threads > 0 ? cfg->n_threads : qv_cpus_available(threads_why, sizeof threads_why);
    ec.n_threads = n_threads;
    ec.kv_bytes = cfg->kv_mb << 20;
    ec.no_prefix_cache = cfg->prefix_cache == 0;
    ec.max_batch_tokens = cfg->max_batch_tokens;
    ec.max_seqs = cfg->max_seqs;
    ec.device = cfg->device;
    if (cfg->kv_dtype && strcmp(cfg->kv_dtype, "bf16") != 0 && strcmp(cfg->kv_dtype, "f32") != 0) {
        qv_log_tagged(QV_LOG_ERROR, "serve", "--kv-dtype expects bf16 or f32, got '%s'",
                      cfg->kv_dtype);
        goto out;
    }
    ec.kv_f32 = cfg->kv_dtype && strcmp(cfg->kv_dtype, "f32") == 0;
    ec.kv_bf16 = cfg->kv_dtype && strcmp(cfg->kv_dtype, "bf16") == 0;
    ec.spec_tokens = cfg->spec_tokens;
    ec.spec_ngram_min = cfg->spec_ngram_min;
    ec.spec_ngram_max = cfg->spec_ngram_max;
    ec.spec_max_batch = cfg->spec_max_batch;
    if (ec.spec_tokens)
        qv_log_tagged(QV_LOG_INFO, "serve",
                      "speculative decoding: prompt lookup, up to %d draft tokens from n-grams of "
                      "%d..%d tokens, in steps of at most %d decoding sequences",
                      ec.spec_tokens, ec.spec_ngram_min, ec.spec_ngram_max, ec.spec_max_batch);
    ec.adapter_pool_bytes = cfg->adapter_pool_mb << 20;
    ec.adapter_pinned_bytes = cfg->adapter_pinned_mb < 0    ? SIZE_MAX
                              : cfg->adapter_pinned_mb == 0 ? 0
                                                            : (size_t)cfg->adapter_pinned_mb << 20;
    qv_error err = {0};
    double t0 = qv_time_s();
    if (qv_engine_create(&ec, &srv->engine, &err) != QV_OK) {
        qv_log_tagged(QV_LOG_ERROR, "serve", "%s", err.msg);
        goto out;
    }
    srv->model = qv_engine_model(srv->engine);
    /* --device cuda: the decode graphs recorded before the first request (time printed) */
    int n_graphs = 0;
    double t_graphs = 0.0;
    if (qv_engine_warmup(srv->engine, &n_graphs, &t_graphs, &err) != QV_OK) {
        qv_log_tagged(QV_LOG_ERROR, "serve", "CUDA graph warm-up: %s", err.msg);
        goto out; /* a device failure: the engine cannot serve */
    }
    if (n_graphs)
        qv_log_tagged(QV_LOG_INFO, "serve",
                      "CUDA graphs: %d decode-step shapes (1..%d sequences) recorded "
                      "at start-up in %.0f ms",
                      n_graphs, QV_MIN(cfg->max_seqs, cfg->max_batch_tokens), t_graphs * 1e3);
    srv->tok = qv_engine_tokenizer(srv->engine);
    if (cfg->chat_template) { /* a name the renderer knows */
        char *probe = NULL;
        qv_error terr = {0};
        const qv_status ts =
            qv_chat_render(srv->tok, cfg->chat_template, NULL, 0, true, &probe, &terr);
        qv_free(probe);
        if (ts != QV_OK) {
            qv_log_tagged(QV_LOG_ERROR, "serve", "--chat-template: %s", terr.msg);
            goto out;
        }
    }
    srv->file_name = basename_of(cfg->model_path);
    /* The id clients see: the file name without ".gguf" (HF directories: their name), which,
     * unlike general.name, has no spaces and no ':'. */
    srv->base_name = srv->file_name ? qv_strdup(srv->file_name) : NULL;
    if (srv->base_name) {
        size_t bl = strlen(srv->base_name);
        if (bl > 5 && !strcmp(srv->base_name + bl - 5, ".gguf")) srv->base_name[bl - 5] = '\0';
    }
    srv->metrics = qv_metrics_create();
    if (!srv->file_name || !srv->base_name || !srv->metrics) {
        qv_log_tagged(QV_LOG_ERROR, "serve", "out of memory");
        goto out;
    }
    qv_metrics_build_info(srv->metrics, QV_VERSION, QV_GIT_COMMIT,
                          cfg->device && *cfg->device ? cfg->device : "cpu");
    if (uv_loop_init(&srv->loop) != 0) goto out;
    loop_ok = true;
    uv_async_init(&srv->loop, &srv->wake, on_wake);
    uv_idle_init(&srv->loop, &srv->stepper);
    uv_timer_init(&srv->loop, &srv->drain_timer);
    uv_timer_init(&srv->loop, &srv->close_timer);
    uv_timer_init(&srv->loop, &srv->live_timer);
    uv_timer_init(&srv->loop, &srv->sweep_timer);
    srv->wake.data = srv->stepper.data = srv;
    srv->drain_timer.data = srv->close_timer.data = srv->live_timer.data = srv;
    srv->sweep_timer.data = srv;
    uv_timer_start(&srv->live_timer, on_live_tick, QV_LIVENESS_MS, QV_LIVENESS_MS);
    if (srv->resp_store && cfg->responses_dir && *cfg->responses_dir)
        uv_timer_start(&srv->sweep_timer, on_sweep_tick, 0, QV_RESP_SWEEP_MS);
    if (!adapters_start(srv)) {
        close_all(srv);
        uv_run(&srv->loop, UV_RUN_DEFAULT);
        goto out;
    }

    struct sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)cfg->port);
    if (inet_pton(AF_INET, cfg->host, &addr.sin_addr) != 1) {
        qv_log_tagged(QV_LOG_ERROR, "serve", "--host '%s' is not an IPv4 address", cfg->host);
        close_all(srv);
        uv_run(&srv->loop, UV_RUN_DEFAULT);
        goto out;
    }
    srv->daemon = MHD_start_daemon(
        MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0, NULL, NULL,
        on_request, srv, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, srv, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&addr, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)QV_MAX(cfg->http_threads, 1), MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600, MHD_OPTION_END);
    if (!srv->daemon) {
        qv_log_tagged(QV_LOG_ERROR, "serve", "cannot listen on %s:%d (%s)", cfg->host, cfg->port,
                      strerror(errno));
        close_all(srv);
        uv_run(&srv->loop, UV_RUN_DEFAULT);
        goto out;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    int port = di ? di->port : cfg->port;
    const qv_model *m = srv->model;
    qv_log_tagged(QV_LOG_INFO, "serve",
                  "quiver %s (commit %s), model '%s' (%s) loaded in %.2f s: %d layers, hidden "
                  "%d, vocab %d, context %d",
                  QV_VERSION, QV_GIT_COMMIT, srv->base_name, cfg->model_path, qv_time_s() - t0,
                  m->cfg.n_layers, m->cfg.dim, m->cfg.n_vocab, m->cfg.max_pos);
    qv_log_tagged(
        QV_LOG_INFO, "serve",
        "budgets: kv %zu MiB = %d pages x %d tokens (%s), prefix cache %s, max-batch-tokens %d, "
        "max-seqs %d, max-loras %d, threads %d (%s; %s kernels), http-threads %d, "
        "max-body-bytes %zu, "
        "max-prompt-tokens %d, "
        "max-tokens-limit %d, queue-limit %d, drain-timeout %.0f s, api-key %s",
        cfg->kv_mb, qv_engine_kv_pages(srv->engine), qv_engine_kv_page_size(srv->engine),
        qv_engine_kv_elem_bytes(srv->engine) == 2 ? "bf16" : "f32",
        cfg->prefix_cache ? "on" : "off", cfg->max_batch_tokens, cfg->max_seqs, cfg->max_loras,
        n_threads, threads_why,
        cfg->device && !strcmp(cfg->device, "cuda") ? "cuda" : qv_backend_cpu_kernels(),
        cfg->http_threads, cfg->max_body_bytes, cfg->max_prompt_tokens, cfg->max_tokens_limit,
        cfg->queue_limit, cfg->drain_timeout_s,
        (cfg->api_key && *cfg->api_key) || srv->kr ? "required" : "off");
    qv_engine_stats es0;
    qv_engine_get_stats(srv->engine, &es0);
    if (es0.dev_adapter_pool_bytes)
        qv_log_tagged(QV_LOG_INFO, "serve",
                      "device adapter pool %.1f MiB (--adapter-pool-mb), pinned host "
                      "tier %.1f MiB (--adapter-pinned-mb)",
                      (double)es0.dev_adapter_pool_bytes / 1048576.0,
                      (double)es0.dev_adapter_pinned_bytes / 1048576.0);
    /* The host memory the budgets may take, against a container's memory limit: weights and
     * KV pages (CPU), loaded adapters (an LRU bound that fills under load) and the pinned tier
     * (CUDA, allocated now). Past the limit the kernel kills the process under load. */
    const uint64_t mem_limit = qv_cgroup_memory_limit(NULL);
    if (mem_limit) {
        const bool on_cuda = cfg->device && !strcmp(cfg->device, "cuda");
        const double mib = 1048576.0, lim = (double)mem_limit / mib;
        const double w = on_cuda ? 0 : (double)m->n_weight_bytes / mib;
        const double kv = on_cuda ? 0 : (double)cfg->kv_mb;
        const double ah = (double)cfg->adapter_host_mb;
        const double pin = (double)es0.dev_adapter_pinned_bytes / mib;
        const double need = w + kv + ah + pin, room = 128;
        if (need + room > lim)
            qv_log_tagged(
                QV_LOG_WARN, "serve",
                "warning: the host budgets (weights %.0f + kv %.0f + adapter "
                "host %.0f + pinned %.0f MiB = %.0f MiB) and %.0f MiB of working room exceed "
                "the cgroup memory limit of %.0f MiB: under load the kernel may kill the "
                "process; lower --adapter-host-mb%s or raise the limit",
                w, kv, ah, pin, need, room, lim, on_cuda ? " / --adapter-pinned-mb" : " / --kv-mb");
        else
            qv_log_tagged(QV_LOG_INFO, "serve",
                          "memory: host budgets %.0f MiB within the cgroup limit of %.0f "
                          "MiB",
                          need, lim);
    }
    if (!ctl_start(srv)) {
        qv_log_tagged(QV_LOG_ERROR, "serve", "cannot start the signal thread");
        MHD_stop_daemon(srv->daemon);
        srv->daemon = NULL;
        close_all(srv);
        goto out;
    }
    qv_log_tagged(QV_LOG_INFO, "serve", "listening on http://%s:%d", cfg->host, port);
    fflush(stderr);
    update_gauges(srv);

    uv_run(&srv->loop, UV_RUN_DEFAULT);
    ctl_stop(srv);
    MHD_stop_daemon(srv->daemon);
    srv->daemon = NULL;
    qv_log_tagged(QV_LOG_INFO, "serve", "stopped");
    rc = 0;
out:
    if (loop_ok) {
        uv_run(&srv->loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&srv->loop) != 0) QV_LOGW("libuv loop closed with live handles");
    }
    /* Requests left behind only if the drain bound expired with connections open. */
    while (srv->pending_head) {
        request *r = srv->pending_head;
        srv->pending_head = r->next;
        engine_release(r);
    }
    while (srv->await_head) {
        request *r = srv->await_head;
        srv->await_head = r->next;
        engine_release(r);
    }
    while (srv->running) {
        request *r = srv->running;
        srv->running = r->next;
        engine_release(r);
    }
    pthread_mutex_lock(&srv->inbox_mu);
    while (srv->inbox_head) {
        inbox_msg *msg = srv->inbox_head;
        srv->inbox_head = msg->next;
        if (msg->type == MSG_JOB)
            job_release(msg->job);
        else
            request_release(msg->req);
        qv_free(msg);
    }
    pthread_mutex_unlock(&srv->inbox_mu);
    qv_engine_destroy(srv->engine);
    qv_registry_destroy(srv->reg);
    qv_store_close(srv->store);
    qv_metrics_destroy(srv->metrics);
    keyring_release(srv, srv->kr);
    srv->kr = NULL;
    qv_tenants_destroy(srv->tenants);
    qv_resp_store_free(srv->resp_store);
    pthread_mutex_destroy(&srv->keys_mu);
    pthread_mutex_destroy(&srv->bg_mu);
    qv_free(srv->base_name);
    qv_free(srv->file_name);
    pthread_mutex_destroy(&srv->inbox_mu);
    return rc;
}
