/*
 * engine.c - model + tokenizer + backend + KV cache + the step loop (continuous batching with
 * chunked prefill, admission by free KV pages, preemption by recompute).
 *
 * Each sequence holds its tokens (prompt then generated) and how many of them are already in
 * the KV cache (n_done). A sequence is either waiting (in a slot, no KV pages) or running
 * (admitted, holds pages for every token it has so far).
 *
 * A step:
 *  1. Decodes (one pending token each) of running sequences, oldest admitted first. A decode
 *     whose next position needs a new page takes a free one; when none is free, the most
 *     recently admitted running sequence not yet in this step's batch is preempted (it may be
 *     the one asking), until the page fits.
 *  2. Admission, only when step 1 preempted nothing: waiting sequences in wait order (arrival
 *     order; preempted sequences keep theirs, so they lead) while the pages for all their tokens
 *     fit next to a headroom of QV_ADMIT_HEADROOM_PAGES free pages (no headroom when nothing
 *     runs); the first that does not fit stops admission, so nothing overtakes it. Admission
 *     reserves those pages at once (a prefix-tuning adapter attaches its shared prefix pages).
 *  3. Prefill chunks of running sequences in wait order while the step's token budget lasts;
 *     they never need pages (reserved at admission).
 * Sequences whose chunk reaches their last token get logits, are sampled, and report the token
 * through their callback.
 *
 * Preemption by recompute drops a sequence's KV pages (and its user of the adapter's shared
 * prefix pages) but keeps its tokens, sampler state and callback; it waits again and re-prefills
 * everything once re-admitted. The chunk that reaches its last token samples the next token
 * exactly as the lost decode would have (the forward pass is bitwise batch-invariant), so the
 * client sees nothing but a delay. A sequence that fits the cache alone always completes: the
 * oldest admitted sequence is never preempted for another one.
 *
 * Invariants: a running sequence's page table covers positions [0, n_tokens - 1] at least
 * (all of n_tokens after admission); waiting sequences hold no pages and no prefix users;
 * admission is in wait order, so a sequence waits only behind sequences that arrived before it.
 *
 * Thread: confined to the creating thread.
 */
#include "engine.h"

#include <math.h>
#include <string.h>

#include "backend.h"
#ifdef QV_HAVE_CUDA
#include "cuda/backend_cuda.h"
#endif
#include "adapter_apply.h"
#include "forward.h"
#include "json_grammar.h"
#include "kv_cache.h"

/* Free pages that must stay free after admitting a sequence while others run, so a sequence
 * admitted now can take its first decode page without preempting at once. */
#define QV_ADMIT_HEADROOM_PAGES 1
/* Steps a waiting sequence's admission may be put off while its adapter travels to the device
 * (the converter thread, then the copy); after that its first step loads what is missing. */
#define QV_ADMIT_DEFER_STEPS 64
/* Waiting sequences whose adapters each step prefetches onto the device. */
#define QV_PREFETCH_SEQS 4

/* Masks kept by grammar state (JSON mode, structured output, tool calls); 6 KB each at a 49k
 * vocabulary (1.5 MB in all), 16 KB at 128k: a schema with counted strings or many tools has
 * hundreds of states, and a smaller cache let one grammar evict another's masks. */
#define QV_JSON_MASK_CACHE 256
/* Speculative decoding: steps a sequence proposes no draft after a single draft was wrong. */
#define QV_SPEC_COOL_STEPS 4

typedef struct qv_seq {
    bool used;
    bool started;   /* running: admitted, holds KV pages for its tokens */
    bool preempted; /* waiting again after a preemption (cleared at re-admission) */
    int id;
    int32_t *tokens; /* [cap] prompt followed by generated tokens */
    int n_tokens, cap;
    int n_prompt;
    int n_done; /* tokens whose K/V are stored */
    int n_generated;
    int recompute_end; /* positions below it were computed before a preemption */
    qv_gen_params p;
    qv_sampler *sampler;
    qv_token_cb cb;
    void *user;
    qv_kv_seq kv;
    bool prefix_attached;   /* holds a user of its adapter's shared prefix pages */
    size_t ad_dev_bytes;    /* device adapter pool bytes of its adapter (0 on the CPU) */
    uint64_t order;         /* arrival order = wait order (kept across preemptions) */
    uint64_t admitted;      /* admission stamp: the newest running sequence is preempted first */
    int deferred;           /* steps its admission waited for its adapter to reach the device */
    int n_pre;              /* virtual positions before the prompt (prompt / prefix adapters) */
    int plp_next, plp_end;  /* prompt_lp_cb: positions [plp_next, plp_end) still to report */
    bool reuse;             /* its full pages go to / come from the prefix cache */
    uint64_t reuse_ns;      /* their namespace: 0 (base) or its adapter's uid (an activated
                               LoRA's mixed with its activation position) */
    int32_t alora_from;     /* its adapter acts on positions >= this (0: all; an activated LoRA
                               from its invocation on; INT32_MAX: none) */
    int n_reg;              /* pages [0, n_reg) registered (or adopted); -1: no more */
    int n_cached;           /* prompt tokens taken from the prefix cache at first admission */
    int spec_from;          /* this step: the position of its first draft token (0: none) */
    int spec_m, spec_kept;  /* this step: its drafts, and those kept */
    int spec_k;             /* drafts it may propose now (adapts to how many are kept) */
    int spec_cool;          /* steps left without drafts after drafts that were all wrong */
    qv_json_schema *schema; /* JSON mode / structured output (one reference): js reads the
                               generated bytes, the mask follows it; NULL: free text */
    qv_json_sstate js;
} qv_seq;

struct qv_engine {
    qv_engine_config cfg;
    qv_model *model;
    qv_tokenizer *tok;
    qv_backend *be;
    qv_kv_cache *kv;
    qv_forward *fwd;
    qv_seq *seqs;                        /* [max_seqs] slots */
    qv_sampler_scratch *sampler_scratch; /* shared by every sequence's sampler (one thread) */
    int next_id;
    uint64_t next_order, next_admit;
    uint64_t n_preemptions, n_recomputed; /* counters for qv_engine_get_stats */
    uint64_t n_deferrals;
    uint64_t n_rows_host, n_rows_device;   /* logits rows sampled on the host / picked on device */
    uint64_t n_prefix_query, n_prefix_hit; /* prompt tokens looked up / found in the prefix cache */
    uint64_t n_prefix_waits; /* admissions put off (per sequence and step) for a shared prefix */
    uint64_t n_spec_draft, n_spec_accepted; /* speculative decoding: drafts, kept ones */
    uint64_t n_steps;                       /* steps that ran a forward pass */
    int spec_rows;                          /* logits rows kept for drafts in a step */
    int32_t *match_pages;                   /* [usable pages] admission scratch */
    /* step scratch */
    int32_t *b_tokens, *b_pos, *b_seq, *b_logits_idx; /* [max_batch_tokens] */
    /* logits rows of a step: one per sequence, plus QV_PROMPT_LP_ROWS once a request wanted
     * prompt logprobs (rows_cap) */
    int rows_cap;
    int32_t *b_greedy, *b_order; /* [rows_cap]: device-picked tokens, logits-row reordering */
    bool *b_ondev;               /* [rows_cap] logits row li is picked on the device */
    qv_sample_row *b_srows;      /* [rows_cap] sampling parameters of device-sampled rows */
    qv_logprobs *b_lp;           /* [rows_cap] their tokens and log-probabilities */
    qv_token_count *b_pen;       /* [b_pen_cap] their penalty contexts */
    int b_pen_cap;
    qv_seq **b_owner;                      /* [max_seqs] sequence of batch seq i */
    const qv_kv_seq **b_kv;                /* [max_seqs] */
    int *order_idx;                        /* [max_seqs] used slots, wait order */
    int *run_idx;                          /* [max_seqs] running, admission order */
    bool *in_batch;                        /* [max_seqs] slot has tokens this step */
    float *logits;                         /* (max_seqs, n_vocab) */
    qv_adapter_grouper *grouper;           /* groups a step's tokens by adapter (adapter_apply.h) */
    qv_adapter_prefix_cache *prefix_cache; /* shared prefix-tuning KV pages */
    size_t ad_pool_bytes;                  /* the device adapter pool's size (0: none, CPU) */
    /* JSON mode: every token's bytes (qv_tokenizer_token_bytes), built with the first such
     * request; tb_len -1 = never allowed (special tokens, no bytes) */
    uint32_t *tb_off;  /* [n_vocab] */
    int16_t *tb_len;   /* [n_vocab] */
    int16_t *tb_plain; /* [n_vocab] characters of plain string content, or -1 (the shortcut of
                          qv_json_schema_string_room) */
    uint8_t *tb_bytes; /* [sum of the lengths] */
    /* JSON mode: the masks of recent grammar states (most steps of a string or of a
     * structure seen before repeat a state), one bit per token, least recently used replaced.
     * An entry holds a reference to its schema; requests whose schemas have the same text
     * share one compiled schema (and so these entries). */
    struct json_mask {
        qv_json_schema *schema; /* NULL: empty */
        uint64_t hash;          /* of key, compared first */
        qv_json_sstate key;
        uint64_t stamp;
        uint64_t *bits; /* [(n_vocab + 63) / 64] */
    } jm[QV_JSON_MASK_CACHE];
    uint64_t jm_clock, jm_hits, jm_misses, jm_dead_ends;
    double jm_s;                 /* time computing masks */
    qv_json_schema *json_object; /* {"type": "object"}: JSON mode, compiled once */
    float *jm_raw;               /* [n_vocab] a JSON-mode row before its mask, for its logprobs */
};

static qv_status grow_rows(qv_engine *e, int rows, qv_error *err);

void qv_engine_config_default(qv_engine_config *c) {
    memset(c, 0, sizeof(*c));
    c->load_tokenizer = true;
}

void qv_gen_params_default(qv_gen_params *p) {
    memset(p, 0, sizeof(*p));
    qv_sampling_params_default(&p->sampling);
    p->max_tokens = 16;
}

const qv_model *qv_engine_model(const qv_engine *e) { return e->model; }

qv_status qv_engine_adapter_supported(const qv_engine *e, const struct qv_adapter *ad,
                                      qv_error *err) {
    return qv_forward_adapter_supported(e->fwd, ad, err);
}
const qv_tokenizer *qv_engine_tokenizer(const qv_engine *e) { return e->tok; }
/* pages sequences can use: the forward pass may hold one for CUDA-graph padding rows */
static int usable_pages(const qv_engine *e) {
    return e->kv->pool.n_pages - qv_forward_kv_reserved_pages(e->fwd);
}
int qv_engine_kv_pages(const qv_engine *e) { return usable_pages(e); }
int qv_engine_kv_page_size(const qv_engine *e) { return e->kv->pool.page_size; }
int qv_engine_kv_free_pages(const qv_engine *e) { return qv_kv_available(e->kv); }
int qv_engine_kv_elem_bytes(const qv_engine *e) { return e->kv->pool.elem_bytes; }

qv_status qv_engine_create(const qv_engine_config *cin, qv_engine **out, qv_error *err) {
    *out = NULL;
    qv_status st;
    qv_engine *e = qv_calloc(1, sizeof(*e));
    if (!e) return qv_errorf(err, QV_ERR_NOMEM, "engine: out of memory");
    e->cfg = *cin;
    qv_engine_config *c = &e->cfg;
    if (!c->kv_bytes) c->kv_bytes = (size_t)256 << 20;
    if (!c->kv_page_size) c->kv_page_size = 16;
    if (!c->max_batch_tokens) c->max_batch_tokens = 256;
    if (!c->max_seqs) c->max_seqs = 64;
    if (c->max_seqs > c->max_batch_tokens) c->max_seqs = c->max_batch_tokens;
    if (c->spec_tokens < 0 || c->spec_tokens > QV_SPEC_MAX_TOKENS || c->spec_ngram_min < 0 ||
        c->spec_ngram_max < 0 || c->spec_max_batch < 0) {
        st = qv_errorf(err, QV_ERR_INVALID,
                       "speculative decoding: draft tokens in [0, %d], n-gram sizes and the batch "
                       "limit not negative",
                       QV_SPEC_MAX_TOKENS);
        goto fail;
    }
    if (!c->spec_ngram_min) c->spec_ngram_min = 3;
    if (!c->spec_ngram_max) c->spec_ngram_max = QV_MAX(5, c->spec_ngram_min);
    if (c->spec_ngram_max < c->spec_ngram_min) {
        st = qv_errorf(err, QV_ERR_INVALID,
                       "speculative decoding: the longest n-gram (%d) is below the shortest (%d)",
                       c->spec_ngram_max, c->spec_ngram_min);
        goto fail;
    }

    if ((st = qv_model_load(c->model_path, &e->model, err)) != QV_OK) goto fail;
    if (c->load_tokenizer) {
        /* A GGUF carries its tokenizer in the metadata the model loader already parsed. */
        st = e->model->gguf ? qv_tokenizer_load_gguf(e->model->gguf, &e->tok, err)
                            : qv_tokenizer_load_path(c->model_path, &e->tok, err);
        if (st != QV_OK) goto fail;
    }
    if (c->device && !strcmp(c->device, "cuda")) {
#ifdef QV_HAVE_CUDA
        qv_cuda_opts co;
        qv_cuda_opts_default(&co);
        co.max_tokens = c->max_batch_tokens;
        /* arena: the KV budget plus the forward pass's scratch and device logits */
        const qv_model_config *mc0 = &e->model->cfg;
        size_t per_tok = (size_t)(3 * mc0->dim + 2 * mc0->n_heads * mc0->head_dim +
                                  2 * mc0->n_kv_heads * mc0->head_dim + 2 * mc0->n_ff + 1);
        co.arena_bytes = c->kv_bytes + (size_t)c->max_batch_tokens * per_tok * sizeof(float) +
                         (size_t)64 * (size_t)mc0->n_vocab * sizeof(float) +
                         (size_t)c->max_batch_tokens * sizeof(qv_logprobs) +
                         (size_t)QV_FORWARD_MAX_PEN * sizeof(float) + ((size_t)16 << 20);
        /* metadata staging: the attention's flattened page tables may take half of it, (the
         * step's sequences, at most max_batch_tokens) x (pages of the longest context the
         * model and the KV budget allow, rounded up to a power of two, as the backend does) */
        const size_t kv_tok_bytes = (size_t)4 * (size_t)mc0->n_layers * (size_t)mc0->n_kv_heads *
                                    (size_t)mc0->head_dim; /* bf16 */
        size_t ctx = kv_tok_bytes ? c->kv_bytes / kv_tok_bytes : 0;
        if (mc0->max_pos > 0 && (size_t)mc0->max_pos < ctx) ctx = (size_t)mc0->max_pos;
        size_t stride = 8;
        while (ctx > 0 &&
               stride < (ctx - 1) / (size_t)c->kv_page_size + 1) /* last position's page */
            stride *= 2;
        const size_t flat = (size_t)c->max_batch_tokens * stride * sizeof(int32_t);
        co.meta_bytes = QV_MAX((size_t)8 << 20, 2 * flat + ((size_t)4 << 20));
        if ((st = qv_backend_cuda_create(e->model, &co, &e->be, err)) != QV_OK) goto fail;
        if (c->kv_f32) { /* before the KV cache exists: its pages are sized by this */
            qv_cuda_tuning t;
            qv_backend_cuda_get_tuning(e->be, &t);
            t.kv_bf16 = 0;
            qv_backend_cuda_set_tuning(e->be, &t);
        }
#else
        st = qv_errorf(err, QV_ERR_UNSUPPORTED, "--device cuda: this build has no CUDA backend");
        goto fail;
#endif
    } else if (c->device && strcmp(c->device, "cpu") != 0) {
        st = qv_errorf(err, QV_ERR_INVALID, "unknown device '%s' (cpu or cuda)", c->device);
        goto fail;
    } else if ((st = qv_backend_cpu_create(c->n_threads, &e->be, err)) != QV_OK) {
        goto fail;
    } else if (c->kv_bf16) { /* before the KV cache exists: its pages are sized by this */
        qv_backend_cpu_set_kv_bf16(e->be, true);
    }

    const qv_model_config *mc = &e->model->cfg;
    size_t page_bytes = qv_kv_cache_bytes_per_token(e->be, mc) * (size_t)c->kv_page_size;
    int n_pages = (int)QV_MIN(c->kv_bytes / page_bytes, (size_t)1 << 24);
    if (n_pages < 1) {
        st = qv_errorf(err, QV_ERR_INVALID, "KV budget of %zu bytes is below one page (%zu bytes)",
                       c->kv_bytes, page_bytes);
        goto fail;
    }
    if ((st = qv_kv_cache_create(e->be, mc, n_pages, c->kv_page_size, &e->kv, err)) != QV_OK)
        goto fail;
    if ((st = qv_forward_create(e->model, e->be, e->kv, c->max_batch_tokens, &e->fwd, err)) !=
        QV_OK)
        goto fail;
    if (!c->no_prefix_cache) { /* after the forward pass took its padding page, if any */
        if ((st = qv_kv_reuse_enable(e->kv, err)) != QV_OK) goto fail;
        if (!(e->match_pages = qv_malloc((size_t)n_pages * sizeof(int32_t)))) {
            st = qv_errorf(err, QV_ERR_NOMEM, "engine: out of memory");
            goto fail;
        }
    }
    /* device backends: the adapter pool is one allocation made now, not on a request */
    const size_t host_bytes = c->adapter_pinned_bytes == 0          ? SIZE_MAX
                              : c->adapter_pinned_bytes == SIZE_MAX ? 0
                                                                    : c->adapter_pinned_bytes;
    if ((st = qv_forward_adapter_pool_init(e->fwd, c->adapter_pool_bytes, host_bytes, err)) !=
        QV_OK)
        goto fail;
    size_t T = (size_t)c->max_batch_tokens, S = (size_t)c->max_seqs;
    e->seqs = qv_calloc(S, sizeof(qv_seq));
    e->b_tokens = qv_malloc(T * sizeof(int32_t));
    e->b_pos = qv_malloc(T * sizeof(int32_t));
    e->b_seq = qv_malloc(T * sizeof(int32_t));
    e->b_logits_idx = qv_malloc(T * sizeof(int32_t));
    e->b_owner = qv_malloc(S * sizeof(*e->b_owner));
    e->b_kv = qv_malloc(S * sizeof(*e->b_kv));
    e->order_idx = qv_malloc(S * sizeof(int));
    e->run_idx = qv_malloc(S * sizeof(int));
    e->in_batch = qv_calloc(S, sizeof(bool));
    e->logits = qv_malloc(S * (size_t)mc->n_vocab * sizeof(float));
    e->b_greedy = qv_malloc(S * sizeof(int32_t));
    e->b_order = qv_malloc(S * sizeof(int32_t));
    e->b_srows = qv_calloc(S, sizeof(*e->b_srows));
    e->b_lp = qv_calloc(S, sizeof(*e->b_lp));
    e->b_ondev = qv_calloc(S, sizeof(bool));
    e->rows_cap = (int)S;
    /* drafts need rows of their own (on device backends too: a drafting sequence's rows that
     * are not plain argmaxes come to the host, see qv_engine_step) */
    if (c->spec_tokens) {
        const int spec_seqs =
            c->spec_max_batch ? QV_MIN(c->max_seqs, c->spec_max_batch) : c->max_seqs;
        e->spec_rows = QV_MIN(spec_seqs * c->spec_tokens, c->max_batch_tokens);
        if ((st = grow_rows(e, c->max_seqs + e->spec_rows, err)) != QV_OK) goto fail;
    }
    if ((st = qv_sampler_scratch_create(mc->n_vocab, &e->sampler_scratch)) != QV_OK) {
        qv_errorf(err, st, "engine: out of memory for the sampler scratch");
        goto fail;
    }
    if (!e->seqs || !e->b_tokens || !e->b_pos || !e->b_seq || !e->b_logits_idx || !e->b_owner ||
        !e->b_kv || !e->order_idx || !e->run_idx || !e->in_batch || !e->logits || !e->b_greedy ||
        !e->b_order || !e->b_srows || !e->b_ondev || !e->b_lp) {
        st = qv_errorf(err, QV_ERR_NOMEM, "engine: out of memory for step buffers");
        goto fail;
    }
    *out = e;
    return QV_OK;
fail:
    qv_engine_destroy(e);
    return st;
}

/* Drops every KV page of s and its user of the adapter's shared prefix pages. */
static void drop_kv(qv_engine *e, qv_seq *s) {
    if (s->kv.pages) qv_kv_seq_release(e->kv, &s->kv);
    if (s->prefix_attached) qv_adapter_prefix_detach(e->prefix_cache, e->kv, s->p.adapter, 1);
    s->prefix_attached = false;
}

static void seq_free(qv_engine *e, qv_seq *s) {
    /* Before its adapter may be freed (the caller releases it): no background conversion may
     * still read it. Not while another sequence holds the same adapter (it stays alive, and
     * that sequence may want the conversion). */
    if (s->p.adapter) {
        bool shared = false;
        for (int i = 0; i < e->cfg.max_seqs && !shared; i++)
            shared = &e->seqs[i] != s && e->seqs[i].used && e->seqs[i].p.adapter == s->p.adapter;
        if (!shared) qv_forward_adapter_forget(e->fwd, s->p.adapter);
    }
    drop_kv(e, s);
    qv_sampler_free(s->sampler);
    qv_free(s->tokens);
    qv_json_schema_unref(s->schema);
    memset(s, 0, sizeof(*s));
}

void qv_engine_destroy(qv_engine *e) {
    if (!e) return;
    if (e->seqs && e->kv)
        for (int i = 0; i < e->cfg.max_seqs; i++)
            if (e->seqs[i].used) seq_free(e, &e->seqs[i]);
    if (e->kv) qv_adapter_prefix_cache_free(e->prefix_cache, e->kv);
    qv_free(e->seqs);
    qv_free(e->match_pages);
    qv_forward_destroy(e->fwd);
    qv_kv_cache_destroy(e->kv);
    if (e->be) e->be->iface->destroy(e->be);
    qv_sampler_scratch_free(e->sampler_scratch);
    qv_tokenizer_free(e->tok);
    qv_model_free(e->model);
    qv_free(e->b_tokens);
    qv_free(e->b_pos);
    qv_free(e->b_seq);
    qv_free(e->b_logits_idx);
    qv_free(e->b_owner);
    qv_free(e->b_kv);
    qv_free(e->order_idx);
    qv_free(e->run_idx);
    qv_free(e->in_batch);
    qv_free(e->logits);
    qv_free(e->b_greedy);
    qv_free(e->b_order);
    qv_free(e->b_srows);
    qv_free(e->b_lp);
    qv_free(e->b_ondev);
    qv_free(e->b_pen);
    qv_adapter_grouper_free(e->grouper);
    qv_free(e->tb_off);
    qv_free(e->tb_len);
    qv_free(e->tb_plain);
    qv_free(e->tb_bytes);
    for (int i = 0; i < QV_JSON_MASK_CACHE; i++) {
        qv_free(e->jm[i].bits);
        qv_json_schema_unref(e->jm[i].schema);
    }
    qv_json_schema_unref(e->json_object);
    qv_free(e->jm_raw);
    qv_free(e);
}

/* The token bytes table of JSON mode, once. */
static qv_status token_bytes_build(qv_engine *e, qv_error *err) {
    if (e->tb_len) return QV_OK;
    const int V = e->model->cfg.n_vocab;
    const int n_tok = qv_tokenizer_n_vocab(e->tok);
    uint32_t *off = qv_malloc((size_t)V * sizeof(*off));
    int16_t *len = qv_malloc((size_t)V * sizeof(*len));
    size_t cap = (size_t)V * 8, used = 0;
    uint8_t *bytes = qv_malloc(cap);
    for (int v = 0; v < V && off && len && bytes; v++) {
        uint8_t buf[256];
        size_t n = 0;
        off[v] = (uint32_t)used;
        len[v] = -1;
        if (v >= n_tok || !qv_tokenizer_token_bytes(e->tok, v, buf, sizeof buf, &n) || !n) continue;
        if (used + n > cap) {
            uint8_t *nb = qv_realloc(bytes, cap * 2);
            if (!nb) {
                qv_free(bytes);
                bytes = NULL;
                break;
            }
            bytes = nb;
            cap *= 2;
        }
        memcpy(bytes + used, buf, n);
        len[v] = (int16_t)n;
        used += n;
    }
    const size_t words = ((size_t)V + 63) / 64;
    bool bits_ok = e->jm_raw || (e->jm_raw = qv_malloc((size_t)V * sizeof(float)));
    for (int i = 0; i < QV_JSON_MASK_CACHE && bits_ok; i++)
        bits_ok = e->jm[i].bits || (e->jm[i].bits = qv_malloc(words * sizeof(uint64_t)));
    int16_t *plain = qv_malloc((size_t)V * sizeof(*plain));
    if (!off || !len || !bytes || !bits_ok || !plain) {
        qv_free(off);
        qv_free(len);
        qv_free(bytes);
        qv_free(plain);
        return qv_errorf(err, QV_ERR_NOMEM, "out of memory for the JSON mode token table");
    }
    for (int v = 0; v < V; v++)
        plain[v] = (int16_t)(len[v] > 0 ? qv_json_plain_chars(bytes + off[v], (size_t)len[v]) : -1);
    e->tb_off = off;
    e->tb_len = len;
    e->tb_plain = plain;
    e->tb_bytes = bytes;
    return QV_OK;
}

/* The mask of grammar state js: bit v set when token v may come next (the end-of-generation
 * tokens exactly when the object is closed). From the cache, else computed into the least
 * recently used entry. */
static const uint64_t *json_mask_bits(qv_engine *e, qv_json_schema *sch, const qv_json_sstate *js) {
    struct json_mask *m = &e->jm[0];
    uint64_t h = 1469598103934665603ull; /* FNV-1a of the state's bytes */
    for (size_t i = 0; i < sizeof(*js); i++)
        h = (h ^ ((const uint8_t *)js)[i]) * 1099511628211ull;
    for (int i = 0; i < QV_JSON_MASK_CACHE; i++) {
        struct json_mask *c = &e->jm[i];
        if (c->hash == h && c->schema == sch && !memcmp(&c->key, js, sizeof(*js))) {
            c->stamp = ++e->jm_clock;
            e->jm_hits++;
            return c->bits;
        }
        if (c->stamp < m->stamp) m = c;
    }
    e->jm_misses++;
    const double t0 = qv_time_s();
    const int V = e->model->cfg.n_vocab;
    const bool done = qv_json_schema_done(sch, js), closed = js->depth == 0;
    memset(m->bits, 0, ((size_t)V + 63) / 64 * sizeof(uint64_t));
    /* first[c]: 0 unknown, 1 the byte c may come next, 2 it may not (then no token starting
     * with c is tried: in most states outside strings that rules out nearly all of them) */
    uint8_t first[256] = {0};
    const int32_t room = qv_json_schema_string_room(sch, js);
    for (int v = 0; v < V; v++) {
        bool ok;
        if (qv_tokenizer_is_eog(e->tok, v)) {
            ok = done;
        } else if (closed || e->tb_len[v] < 0) {
            ok = false;
        } else {
            const uint8_t *b = e->tb_bytes + e->tb_off[v];
            if (room >= 0 && e->tb_plain[v] >= 0) { /* most tokens inside a string */
                ok = e->tb_plain[v] <= room;
                if (ok) m->bits[v >> 6] |= (uint64_t)1 << (v & 63);
                continue;
            }
            if (!first[b[0]]) first[b[0]] = qv_json_schema_accepts(sch, js, b, 1) ? 1 : 2;
            ok = first[b[0]] == 1 && qv_json_schema_accepts(sch, js, b, (size_t)e->tb_len[v]);
        }
        if (ok) m->bits[v >> 6] |= (uint64_t)1 << (v & 63);
    }
    if (m->schema != sch) {
        qv_json_schema_unref(m->schema);
        m->schema = qv_json_schema_ref(sch);
    }
    m->key = *js;
    m->hash = h;
    m->stamp = ++e->jm_clock;
    e->jm_s += qv_time_s() - t0;
    return m->bits;
}

/* A reference to sch, or to a compiled schema of the same text that the mask cache already
 * holds (so that requests sending the same schema share their masks); NULL for NULL. */
static qv_json_schema *json_schema_shared(qv_engine *e, qv_json_schema *sch) {
    if (!sch) return NULL;
    for (int i = 0; i < QV_JSON_MASK_CACHE; i++) {
        qv_json_schema *c = e->jm[i].schema;
        if (c && c != sch && qv_json_schema_hash(c) == qv_json_schema_hash(sch) &&
            !strcmp(qv_json_schema_text(c), qv_json_schema_text(sch)))
            return qv_json_schema_ref(c);
    }
    return qv_json_schema_ref(sch);
}

/* JSON mode: sets to -inf the logits of the tokens that cannot come next. Returns how many
 * finite logits remain. */
static int json_mask(qv_engine *e, const qv_seq *s, float *row) {
    const uint64_t *bits = json_mask_bits(e, s->schema, &s->js);
    const int V = e->model->cfg.n_vocab;
    int n_ok = 0;
    for (int v = 0; v < V; v++) {
        if (!((bits[v >> 6] >> (v & 63)) & 1u))
            row[v] = -INFINITY;
        else
            n_ok += row[v] > -INFINITY;
    }
    return n_ok;
}

static int pages_for(const qv_engine *e, int n_tokens) {
    return (n_tokens + e->kv->pool.page_size - 1) / e->kv->pool.page_size;
}

/* Preempted sequences waiting for re-admission. */
static int n_preempted_waiting(const qv_engine *e) {
    int n = 0;
    for (int i = 0; i < e->cfg.max_seqs; i++)
        n += e->seqs[i].used && e->seqs[i].preempted;
    return n;
}

/* Grows the per-row step buffers to `rows` rows (prompt logprobs). On failure the grown
 * ones stay grown and rows_cap is unchanged. */
static qv_status grow_rows(qv_engine *e, int rows, qv_error *err) {
    if (rows <= e->rows_cap) return QV_OK;
    const size_t R = (size_t)rows, V = (size_t)e->model->cfg.n_vocab;
    float *lg = qv_realloc(e->logits, R * V * sizeof(float));
    if (lg) e->logits = lg;
    int32_t *gr = lg ? qv_realloc(e->b_greedy, R * sizeof(int32_t)) : NULL;
    if (gr) e->b_greedy = gr;
    int32_t *od = gr ? qv_realloc(e->b_order, R * sizeof(int32_t)) : NULL;
    if (od) e->b_order = od;
    bool *dv = od ? qv_realloc(e->b_ondev, R * sizeof(bool)) : NULL;
    if (dv) e->b_ondev = dv;
    qv_sample_row *sr = dv ? qv_realloc(e->b_srows, R * sizeof(*sr)) : NULL;
    if (sr) e->b_srows = sr;
    qv_logprobs *lp = sr ? qv_realloc(e->b_lp, R * sizeof(*lp)) : NULL;
    if (lp) e->b_lp = lp;
    if (!lp)
        return qv_errorf(err, QV_ERR_NOMEM, "out of memory for %d prompt-logprob rows (%zu MB)",
                         rows, R * V * sizeof(float) >> 20);
    e->rows_cap = rows;
    return QV_OK;
}

/* The request's logit_bias, min_tokens, allowed ids and bad words, into its sampler. min_tokens
 * suppresses the end-of-generation ids (the tokenizer's, else the model's) and the caller's stop
 * ids. */
static qv_status set_edits(const qv_engine *e, qv_sampler *smp, const qv_gen_params *p,
                           qv_error *err) {
    if (p->n_logit_bias == 0 && p->min_tokens == 0 && p->n_allowed_ids == 0 && p->n_bad_words == 0)
        return QV_OK;
    const int32_t *eog = NULL;
    int n_eog = 0;
    int32_t model_eos[QV_MAX_EOS];
    if (p->ignore_eos) {
        /* end-of-generation ids end nothing: min_tokens leaves them alone (vLLM) */
    } else if (e->tok) {
        n_eog = qv_tokenizer_eog_ids(e->tok, &eog);
    } else {
        for (int j = 0; j < e->model->cfg.n_eos; j++)
            model_eos[j] = e->model->cfg.eos_ids[j];
        n_eog = e->model->cfg.n_eos;
        eog = model_eos;
    }
    const int n_sup = p->min_tokens > 0 ? n_eog + p->n_min_tokens_ids : 0;
    int32_t *sup = n_sup ? qv_malloc((size_t)n_sup * sizeof(*sup)) : NULL;
    if (n_sup && !sup) return qv_errorf(err, QV_ERR_NOMEM, "out of memory for min_tokens");
    if (n_sup) {
        if (n_eog) memcpy(sup, eog, (size_t)n_eog * sizeof(*sup));
        if (p->n_min_tokens_ids)
            memcpy(sup + n_eog, p->min_tokens_ids, (size_t)p->n_min_tokens_ids * sizeof(*sup));
    }
    qv_status st =
        qv_sampler_set_edits(smp, p->logit_bias, p->n_logit_bias, p->min_tokens, sup, n_sup, err);
    qv_free(sup);
    if (!st) st = qv_sampler_set_allowed(smp, p->allowed_ids, p->n_allowed_ids, err);
    if (!st)
        st = qv_sampler_set_bad_words(smp, p->bad_word_ids, p->bad_word_lens, p->n_bad_words, err);
    return st;
}

qv_status qv_engine_add(qv_engine *e, const int32_t *prompt, size_t n_prompt,
                        const qv_gen_params *p, qv_token_cb cb, void *user, int *seq_id,
                        qv_error *err) {
    const qv_model_config *mc = &e->model->cfg;
    if (n_prompt == 0) return qv_errorf(err, QV_ERR_INVALID, "empty prompt");
    if (p->max_tokens <= 0) return qv_errorf(err, QV_ERR_INVALID, "max_tokens must be > 0");
    if (p->min_tokens < 0 || p->min_tokens > p->max_tokens || p->n_logit_bias < 0 ||
        p->n_min_tokens_ids < 0 || p->n_allowed_ids < 0 || p->n_bad_words < 0)
        return qv_errorf(err, QV_ERR_INVALID, "min_tokens %d outside [0, max_tokens %d]",
                         p->min_tokens, p->max_tokens);
    qv_status st = qv_sampling_params_validate(&p->sampling, err);
    if (st != QV_OK) return st;
    if (p->json_object || p->json_schema) {
        if (!e->tok)
            return qv_errorf(err, QV_ERR_UNSUPPORTED, "JSON mode needs the model's tokenizer");
        if (p->ignore_eos || p->min_tokens > 0)
            return qv_errorf(err, QV_ERR_INVALID,
                             "JSON mode ends at the value's close: no ignore_eos or min_tokens");
        if (p->n_allowed_ids)
            return qv_errorf(err, QV_ERR_INVALID,
                             "JSON mode chooses the tokens itself: no allowed token ids");
        if ((st = token_bytes_build(e, err)) != QV_OK) return st;
        if (!p->json_schema && !e->json_object) {
            static const char any_object[] = "{\"type\":\"object\"}";
            if ((st = qv_json_schema_compile(any_object, sizeof(any_object) - 1, &e->json_object,
                                             err)) != QV_OK)
                return st;
        }
    }
    for (size_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= mc->n_vocab)
            return qv_errorf(err, QV_ERR_INVALID, "prompt token %d out of range [0, %d)", prompt[i],
                             mc->n_vocab);
    /* Prompt/P-tuning virtual tokens (ids -1-k) and prefix-tuning K/V take the first n_pre
     * positions; they lead the token array so positions stay equal to indices. */
    const qv_adapter *ad = p->adapter;
    const int n_pre = qv_adapter_n_prefix_positions(ad);
    if (ad && (st = qv_adapter_check_model(ad, e->model, err)) != QV_OK) return st;
    /* device backends run only some kinds (see qv_forward_adapter_check), from a fixed pool */
    size_t ad_dev_bytes = 0;
    if (ad &&
        (st = qv_forward_adapter_check(e->fwd, ad, &ad_dev_bytes, &e->ad_pool_bytes, err)) != QV_OK)
        return st;
    if (p->prompt_n_logprobs < 0 || p->prompt_n_logprobs > QV_SAMPLER_MAX_LOGPROBS)
        return qv_errorf(err, QV_ERR_INVALID, "prompt_n_logprobs %d out of range [0, %d]",
                         p->prompt_n_logprobs, QV_SAMPLER_MAX_LOGPROBS);
    if (p->prompt_lp_cb &&
        (st = grow_rows(e, e->cfg.max_seqs + e->spec_rows + QV_PROMPT_LP_ROWS, err)) != QV_OK)
        return st;
    size_t total = (size_t)n_pre + n_prompt + (size_t)p->max_tokens;
    if (mc->max_pos > 0 && total > (size_t)mc->max_pos)
        return qv_errorf(err, QV_ERR_LIMIT,
                         "prompt (%zu tokens) + max_tokens (%d) exceeds the context length %d",
                         n_prompt, p->max_tokens, mc->max_pos);
    if (total > (size_t)usable_pages(e) * (size_t)e->kv->pool.page_size)
        return qv_errorf(err, QV_ERR_LIMIT,
                         "prompt + max_tokens (%zu tokens) exceeds the KV cache (%d tokens)", total,
                         usable_pages(e) * e->kv->pool.page_size);
    /* Preempted sequences arrived before anything new: a new arrival waits outside until they
     * run again, so it cannot overtake them. */
    int n_pw = n_preempted_waiting(e);
    if (n_pw > 0)
        return qv_errorf(err, QV_ERR_BUSY, "%d preempted sequence(s) wait for KV pages", n_pw);
    qv_seq *s = NULL;
    for (int i = 0; i < e->cfg.max_seqs; i++)
        if (!e->seqs[i].used) {
            s = &e->seqs[i];
            break;
        }
    if (!s) return qv_errorf(err, QV_ERR_BUSY, "all %d sequence slots are busy", e->cfg.max_seqs);
    memset(s, 0, sizeof(*s));
    s->ad_dev_bytes = ad_dev_bytes;
    s->cap = (int)total;
    s->tokens = qv_malloc((size_t)s->cap * sizeof(int32_t));
    if (!s->tokens) return qv_errorf(err, QV_ERR_NOMEM, "out of memory for the prompt");
    if ((st = qv_sampler_create_with_scratch(&p->sampling, mc->n_vocab, e->sampler_scratch,
                                             &s->sampler)) != QV_OK) {
        qv_free(s->tokens);
        s->tokens = NULL;
        return qv_errorf(err, st, "cannot create the sampler");
    }
    if ((st = set_edits(e, s->sampler, p, err)) != QV_OK) {
        qv_sampler_free(s->sampler);
        s->sampler = NULL;
        qv_free(s->tokens);
        s->tokens = NULL;
        return st;
    }
    for (int k = 0; k < n_pre; k++)
        s->tokens[k] = -1 - k;
    memcpy(s->tokens + n_pre, prompt, n_prompt * sizeof(int32_t));
    qv_sampler_add_prompt(s->sampler, prompt, n_prompt);
    s->used = true;
    s->id = e->next_id++;
    s->n_tokens = s->n_prompt = n_pre + (int)n_prompt;
    s->n_pre = n_pre;
    /* the row at position q gives the logprobs of the token at q + 1: prompt tokens 1.. */
    s->plp_next = n_pre;
    s->plp_end = p->prompt_lp_cb ? s->n_prompt - 1 : n_pre;
    s->p = *p;
    /* K/V are a function of the tokens, positions and adapter: reusable across sequences of
     * the same adapter version (uid, never reused), except prefix tuning's attached pages and
     * hand-built adapters (uid 0) */
    s->reuse = e->match_pages && (!ad || (ad->uid != 0 && ad->kind != QV_ADAPTER_PREFIX_TUNING));
    s->reuse_ns = ad ? ad->uid : 0;
    s->alora_from = qv_adapter_alora_start(ad, prompt, n_prompt);
    if (s->alora_from == INT32_MAX) /* the adapter never acts: the base model's K/V */
        s->reuse_ns = 0;
    else if (s->alora_from > 0) /* K/V before and after its activation position */
        s->reuse_ns = qv_fmix64(ad->uid ^ ((uint64_t)s->alora_from << 40));
    s->n_reg = -1;
    s->schema = json_schema_shared(e, p->json_schema   ? p->json_schema
                                      : p->json_object ? e->json_object
                                                       : NULL);
    if (s->schema) qv_json_schema_init(s->schema, &s->js);
    s->p.json_schema = NULL; /* s->schema holds the reference */
    s->p.logit_bias = NULL;  /* copied into the sampler */
    s->p.min_tokens_ids = NULL;
    s->p.allowed_ids = NULL;
    s->p.bad_word_ids = s->p.bad_word_lens = NULL;
    s->cb = cb;
    s->user = user;
    s->spec_k = e->cfg.spec_tokens;
    s->order = e->next_order++;
    if (seq_id) *seq_id = s->id;
    return QV_OK;
}

static qv_seq *find_seq(qv_engine *e, int id) {
    for (int i = 0; i < e->cfg.max_seqs; i++)
        if (e->seqs[i].used && e->seqs[i].id == id) return &e->seqs[i];
    return NULL;
}

void qv_engine_cancel(qv_engine *e, int seq_id) {
    qv_seq *s = find_seq(e, seq_id);
    if (s) seq_free(e, s);
}

int qv_engine_n_active(const qv_engine *e) {
    int n = 0;
    for (int i = 0; i < e->cfg.max_seqs; i++)
        n += e->seqs[i].used;
    return n;
}

enum qv_seq_state qv_engine_seq_state(const qv_engine *e, int seq_id) {
    for (int i = 0; i < e->cfg.max_seqs; i++) {
        const qv_seq *s = &e->seqs[i];
        if (!s->used || s->id != seq_id) continue;
        return s->started ? QV_SEQ_RUNNING : s->preempted ? QV_SEQ_PREEMPTED : QV_SEQ_WAITING;
    }
    return QV_SEQ_UNKNOWN;
}

int qv_engine_seq_cached_tokens(const qv_engine *e, int seq_id) {
    for (int i = 0; i < e->cfg.max_seqs; i++)
        if (e->seqs[i].used && e->seqs[i].id == seq_id)
            return QV_MAX(0, e->seqs[i].n_cached - e->seqs[i].n_pre);
    return 0;
}

int qv_engine_prefix_cache_reset(qv_engine *e) { return qv_kv_reuse_clear(e->kv); }

void qv_engine_get_stats(const qv_engine *e, qv_engine_stats *out) {
    memset(out, 0, sizeof(*out));
    out->preemptions = e->n_preemptions;
    out->recomputed_tokens = e->n_recomputed;
    for (int i = 0; i < e->cfg.max_seqs; i++) {
        const qv_seq *s = &e->seqs[i];
        if (!s->used) continue;
        if (s->started)
            out->n_running++;
        else
            out->n_waiting++;
        out->n_waiting_preempted += s->preempted;
    }
    out->kv_pages = usable_pages(e);
    out->kv_free_pages = qv_kv_available(e->kv);
    out->kv_cached_pages = e->kv->n_registered;
    out->kv_evictable_pages = e->kv->n_evictable;
    out->prefix_query_tokens = e->n_prefix_query;
    out->prefix_hit_tokens = e->n_prefix_hit;
    out->prefix_evictions = e->kv->n_evicted;
    out->prefix_waits = e->n_prefix_waits;
    out->json_mask_hits = e->jm_hits;
    out->json_mask_misses = e->jm_misses;
    out->json_dead_ends = e->jm_dead_ends;
    out->steps = e->n_steps;
    out->spec_draft_tokens = e->n_spec_draft;
    out->spec_accepted_tokens = e->n_spec_accepted;
    out->json_mask_s = e->jm_s;
    qv_forward_adapter_stats fs;
    qv_forward_adapter_stats_get(e->fwd, &fs);
    out->dev_adapters_resident = fs.resident;
    out->dev_adapter_loads = fs.loads;
    out->dev_adapter_hits = fs.hits;
    out->dev_adapter_evictions = fs.evictions;
    out->dev_adapter_bytes = fs.bytes_copied;
    out->dev_adapter_prefetches = fs.prefetches;
    out->dev_adapter_pool_bytes = fs.pool_bytes;
    out->dev_adapter_used_bytes = fs.used_bytes;
    out->dev_adapter_pinned_bytes = fs.host_bytes;
    out->dev_adapter_pinned_used_bytes = fs.host_used_bytes;
    out->dev_adapter_pinned_resident = fs.host_resident;
    out->dev_adapter_pinned_hits = fs.host_hits;
    out->dev_adapter_pinned_fills_async = fs.host_fills_async;
    out->dev_adapter_pinned_fills_sync = fs.host_fills_sync;
    out->dev_adapter_pinned_evictions = fs.host_evictions;
    out->admit_deferrals = e->n_deferrals;
    out->logits_rows_host = e->n_rows_host;
    out->logits_rows_device = e->n_rows_device;
#ifdef QV_HAVE_CUDA
    if (strcmp(e->be->iface->name, "cuda") == 0) {
        qv_cuda_stats cs;
        qv_backend_cuda_stats(e->be, &cs);
        out->graph_captures = (uint64_t)cs.captures;
        out->graph_replays = (uint64_t)cs.replays;
        out->graph_eager_steps = (uint64_t)cs.eager_steps;
        out->graph_mismatches = (uint64_t)cs.mismatches;
        out->graph_capture_s = cs.instantiate_s;
    }
#endif
}

qv_status qv_engine_warmup(qv_engine *e, int *n_shapes, double *seconds, qv_error *err) {
    const double t0 = qv_time_s();
    qv_status st = qv_forward_warmup_graphs(
        e->fwd, QV_MIN(e->cfg.max_seqs, e->cfg.max_batch_tokens), n_shapes, err);
    *seconds = qv_time_s() - t0;
    return st;
}

/* Fills idx with the slots selected by `running` (true: running, false: every used slot),
 * sorted by admission stamp (running) or arrival order (insertion sort; max_seqs is small). */
static int collect(const qv_engine *e, bool running, int *idx) {
    int n = 0;
    for (int i = 0; i < e->cfg.max_seqs; i++) {
        const qv_seq *s = &e->seqs[i];
        if (!s->used || (running && !s->started)) continue;
        uint64_t key = running ? s->admitted : s->order;
        int j = n++;
        while (j > 0) {
            const qv_seq *q = &e->seqs[idx[j - 1]];
            if ((running ? q->admitted : q->order) <= key) break;
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = i;
    }
    return n;
}

/* Preemption by recompute: s gives back its pages and waits again at its arrival rank; its
 * tokens, sampler and callback stay, so it resumes where it was. */
static void preempt(qv_engine *e, qv_seq *s) {
    QV_ASSERT(s->started);
    if (s->n_done > s->recompute_end) s->recompute_end = s->n_done;
    drop_kv(e, s);
    s->n_done = 0;
    s->started = false;
    s->preempted = true;
    e->n_preemptions++;
    QV_LOGD("engine: preempted sequence %d (%d tokens kept for recompute, %d KV pages free)", s->id,
            s->n_tokens, qv_kv_available(e->kv));
}

/* Device adapter pool room for s beside the running sequences: the distinct adapters of a step
 * are held in the pool together, each on one contiguous run of pages, so their bytes may take at
 * most half of the pool (the rest is headroom against fragmentation) unless s's adapter would be
 * the only one. True on the CPU and for sequences without an adapter or with a running one. */
static bool adapter_room(const qv_engine *e, const qv_seq *s) {
    const qv_adapter *ad = s->p.adapter;
    if (!ad || s->ad_dev_bytes == 0) return true;
    size_t held = s->ad_dev_bytes;
    int others = 0;
    for (int i = 0; i < e->cfg.max_seqs; i++) {
        const qv_seq *t = &e->seqs[i];
        if (!t->used || !t->started || !t->p.adapter || t->ad_dev_bytes == 0) continue;
        if (t->p.adapter == ad) return true; /* resident and held already */
        bool seen = false;                   /* count each distinct adapter once */
        for (int j = 0; j < i && !seen; j++)
            seen = e->seqs[j].used && e->seqs[j].started && e->seqs[j].p.adapter == t->p.adapter;
        if (seen) continue;
        held += t->ad_dev_bytes;
        others++;
    }
    return others == 0 || held <= e->ad_pool_bytes / 2;
}

/* The cached prefix a waiting sequence would adopt now: n_pages pages (their ids in
 * e->match_pages), n_evictable of them held by no sequence; limit: the tokens that may come
 * from the cache at most (all but the last, whose logits are needed, and none at or after its
 * first prompt-logprob row). All 0 for a sequence outside the prefix cache. */
typedef struct prefix_hit {
    int n_pages, n_evictable, limit;
} prefix_hit;

static prefix_hit prefix_match(qv_engine *e, const qv_seq *s) {
    prefix_hit h = {0, 0, 0};
    if (!s->reuse) return h;
    h.limit = s->n_tokens - 1;
    if (s->plp_end > s->plp_next) h.limit = QV_MIN(h.limit, s->plp_next);
    h.n_pages = qv_kv_reuse_match(e->kv, s->reuse_ns, s->tokens, h.limit,
                                  h.limit / e->kv->pool.page_size, e->match_pages, &h.n_evictable);
    return h;
}

/* Whether waiting sequence s (cached prefix h) should wait for a running sequence that is
 * computing the next full page s would share with it (same namespace, same tokens up to that
 * page's end): once that page is computed and registered, s adopts it instead of computing it
 * too. */
static bool prefix_in_flight(const qv_engine *e, const qv_seq *s, const prefix_hit *h) {
    if (!s->reuse || s->preempted) return false;
    const int end = (h->n_pages + 1) * e->kv->pool.page_size; /* the next page's end */
    if (end > h->limit) return false;
    for (int i = 0; i < e->cfg.max_seqs; i++) {
        const qv_seq *t = &e->seqs[i];
        if (!t->used || !t->started || t == s || t->n_reg < 0 || t->reuse_ns != s->reuse_ns ||
            t->n_done >= end || t->n_tokens < end)
            continue;
        if (memcmp(t->tokens, s->tokens, (size_t)end * sizeof(int32_t)) == 0) return true;
    }
    return false;
}

/* Admits s when the pages for all its tokens fit (with the headroom unless nothing runs; the
 * pages of its cached prefix h are adopted, not reserved) and, on a device backend, its adapter
 * has pool room (adapter_room), and reserves them. Returns
 * QV_ERR_BUSY (nothing held) when they do not fit. */
static qv_status admit(qv_engine *e, qv_seq *s, const prefix_hit *h, bool others_run,
                       qv_error *err) {
    /* The full pages of its prefix found in the prefix cache (h) are adopted, not computed. An
     * adopted page held by nobody else stops being evictable, so it counts against the pages
     * available. */
    const int n_match = h->n_pages, n_match_ev = h->n_evictable;
    /* Counts the shared prefix pages as new even when the adapter's entry holds them already:
     * an over-estimate by at most n_virtual / page_size pages, exact when nothing runs. */
    int need = pages_for(e, s->n_tokens) - n_match + (others_run ? QV_ADMIT_HEADROOM_PAGES : 0);
    if (need > qv_kv_available(e->kv) - n_match_ev) return QV_ERR_BUSY;
    if (!adapter_room(e, s)) return QV_ERR_BUSY;
    if (n_match > 0) {
        if (qv_kv_seq_adopt(e->kv, &s->kv, e->match_pages, n_match) != QV_OK)
            return qv_errorf(err, QV_ERR_NOMEM, "engine: out of memory");
        s->n_done = n_match * e->kv->pool.page_size;
    }
    if (!s->preempted) {
        s->n_cached = s->n_done;
        e->n_prefix_query += (uint64_t)s->n_prompt;
        e->n_prefix_hit += (uint64_t)s->n_done;
    }
    s->n_reg = s->reuse ? n_match : -1;
    const qv_adapter *ad = s->p.adapter;
    if (ad && ad->kind == QV_ADAPTER_PREFIX_TUNING) { /* prefix K/V fill positions 0..nvt-1 */
        qv_status st = qv_adapter_prefix_attach(&e->prefix_cache, e->be, e->kv, &s->kv, ad, err);
        if (st != QV_OK) return st;
        s->prefix_attached = true;
        s->n_done = ad->n_virtual;
    }
    qv_status st = qv_kv_seq_reserve(e->kv, &s->kv, s->n_tokens);
    if (st != QV_OK) {
        drop_kv(e, s);
        s->n_done = 0;
        return st == QV_ERR_BUSY ? st
                                 : qv_errorf(err, st, "KV reserve failed for sequence %d", s->id);
    }
    s->started = true;
    s->preempted = false;
    s->admitted = e->next_admit++;
    return QV_OK;
}

/* Whether a sequence's next token is more than a plain argmax (it is sampled, or wants logprobs
 * or penalties): a device backend picks plain argmaxes always, the others when it samples
 * (qv_forward_device_sampling). */
static bool needs_logits(const qv_seq *s) {
    const qv_sampling_params *p = &s->p.sampling;
    return p->temperature >= QV_SAMPLER_MIN_TEMPERATURE || p->n_logprobs > 0 ||
           p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f ||
           p->frequency_penalty != 0.0f || qv_sampler_has_edits(s->sampler) || s->schema;
}

/* qv_adapter_of_fn over the current step's batch sequences (an activated LoRA from its
 * activation position on). */
static const qv_adapter *adapter_of(void *ctx, int bs, int32_t pos) {
    const qv_seq *s = ((qv_engine *)ctx)->b_owner[bs];
    return pos >= s->alora_from ? s->p.adapter : NULL;
}

static bool is_decode(const qv_seq *s) {
    return s->n_tokens - s->n_done == 1 && s->n_done >= s->n_prompt;
}

/* Appends tokens [n_done, n_done + chunk) of s to the step's batch. */
static void batch_add(qv_engine *e, qv_seq *s, int chunk, int *n, int *n_bs, int *n_logits) {
    int bs = (*n_bs)++;
    e->b_owner[bs] = s;
    e->b_kv[bs] = &s->kv;
    e->in_batch[s - e->seqs] = true;
    for (int i = 0; i < chunk; i++) {
        const int pos = s->n_done + i;
        e->b_tokens[*n] = s->tokens[pos];
        e->b_pos[*n] = pos;
        e->b_seq[*n] = bs;
        if (pos >= s->plp_next && pos < s->plp_end) e->b_logits_idx[(*n_logits)++] = *n;
        (*n)++;
    }
    if (s->n_done + chunk == s->n_tokens) e->b_logits_idx[(*n_logits)++] = *n - 1;
}

/* Prompt lookup: the tokens that followed the latest earlier occurrence of s's last g tokens (g
 * from spec_ngram_max down to spec_ngram_min) in its prompt and output, at most max; virtual
 * positions are not looked at. */
static int spec_propose(const qv_engine *e, const qv_seq *s, int max, int32_t *out) {
    const int32_t *t = s->tokens + s->n_pre;
    const int len = s->n_tokens - s->n_pre;
    for (int g = QV_MIN(e->cfg.spec_ngram_max, len - 1); g >= e->cfg.spec_ngram_min; g--) {
        const int32_t *tail = t + len - g;
        for (int i = len - g - 1; i >= 0; i--) /* a token follows every candidate */
            if (t[i] == tail[0] && !memcmp(t + i, tail, (size_t)g * sizeof(int32_t))) {
                const int m = QV_MIN(max, len - i - g);
                memcpy(out, t + i + g, (size_t)m * sizeof(int32_t));
                return m;
            }
    }
    return 0;
}

/* Draft tokens for decoding sequence s (just added to the batch with its pending token, as
 * batch sequence bs), each with a logits row: the row of draft i counts only if drafts 0..i-1
 * turn out to be the tokens the sequence picks. Rows are read in order, each after the tokens
 * before it were accepted (sampler context and random draws, structured-output state), so
 * sampling, penalties, edits, logprobs and masks apply to each as in a step of its own, and a
 * sampled sequence draws the same numbers as without drafts: its tokens are the same. Their K/V
 * pages come only from free pages that leave one for every running sequence, so a draft never
 * causes a preemption. */
static void spec_add(qv_engine *e, qv_seq *s, int bs, int n_run, int *n, int *n_logits, int *budget,
                     int *rows_left) {
    if (s->spec_cool > 0) {
        s->spec_cool--;
        return;
    }
    int max = QV_MIN(QV_MIN(QV_MAX(s->spec_k, 1), *budget), *rows_left);
    max = QV_MIN(max, s->p.max_tokens - s->n_generated - 1); /* beyond, nothing is emitted */
    int32_t d[QV_SPEC_MAX_TOKENS];
    int m = max > 0 ? spec_propose(e, s, max, d) : 0;
    for (; m > 0; m--) {
        const int need = qv_kv_seq_pages_needed(e->kv, &s->kv, s->n_done + 1 + m);
        if (!need || qv_kv_available(e->kv) - need >= n_run) break;
    }
    if (m <= 0 || qv_kv_seq_reserve(e->kv, &s->kv, s->n_done + 1 + m) != QV_OK) return;
    s->spec_from = s->n_done + 1;
    s->spec_m = m;
    s->spec_kept = 0;
    for (int i = 0; i < m; i++) {
        e->b_tokens[*n] = d[i];
        e->b_pos[*n] = s->n_done + 1 + i;
        e->b_seq[*n] = bs;
        e->b_logits_idx[(*n_logits)++] = *n;
        (*n)++;
    }
    *budget -= m;
    *rows_left -= m;
    e->n_spec_draft += (uint64_t)m;
}

/* After a step with drafts: the next proposal may be longer when all were kept, as long as the
 * number kept plus one when some were, half as long when none was; after one wrong draft
 * alone, none for QV_SPEC_COOL_STEPS steps. Only the speed changes: the tokens never do. */
static void spec_adapt(const qv_engine *e, qv_seq *s) {
    if (s->spec_kept == s->spec_m)
        s->spec_k = QV_MIN(e->cfg.spec_tokens, 2 * s->spec_k);
    else if (s->spec_kept > 0)
        s->spec_k = s->spec_kept + 1;
    else if (s->spec_k > 1)
        s->spec_k /= 2;
    else
        s->spec_cool = QV_SPEC_COOL_STEPS;
}

qv_status qv_engine_step(qv_engine *e, qv_error *err) {
    const int budget_total = e->cfg.max_batch_tokens;
    const int n_vocab = e->model->cfg.n_vocab;
    if (qv_engine_n_active(e) == 0) return QV_OK;
    memset(e->in_batch, 0, (size_t)e->cfg.max_seqs * sizeof(bool));
    int n = 0, n_bs = 0, n_logits = 0, budget = budget_total;
    qv_status st;

    /* 1. Decodes, oldest admitted first; a missing page preempts the newest admitted sequence
     * not yet in the batch (run_idx is in admission order, so that is the last one still
     * running at index >= k, possibly s itself). */
    int n_run = collect(e, true, e->run_idx);
    bool preempted_now = false;
    int n_decoding = 0, spec_rows_left = e->spec_rows;
    for (int k = 0; e->spec_rows > 0 && e->cfg.spec_max_batch && k < n_run; k++)
        n_decoding += e->seqs[e->run_idx[k]].started && is_decode(&e->seqs[e->run_idx[k]]);
    const bool spec =
        e->spec_rows > 0 && (!e->cfg.spec_max_batch || n_decoding <= e->cfg.spec_max_batch);
    for (int k = 0; k < n_run && budget > 0; k++) {
        qv_seq *s = &e->seqs[e->run_idx[k]];
        if (!s->started || !is_decode(s)) continue;
        while (qv_kv_seq_pages_needed(e->kv, &s->kv, s->n_done + 1) > qv_kv_available(e->kv)) {
            int j = n_run - 1;
            while (!e->seqs[e->run_idx[j]].started)
                j--;
            QV_ASSERT(j >= k);
            preempt(e, &e->seqs[e->run_idx[j]]);
            preempted_now = true;
            if (j == k) break;
        }
        if (!s->started) continue;
        if ((st = qv_kv_seq_reserve(e->kv, &s->kv, s->n_done + 1)) != QV_OK)
            return qv_errorf(err, st, "KV reserve failed for sequence %d", s->id);
        batch_add(e, s, 1, &n, &n_bs, &n_logits);
        budget--;
        if (spec) spec_add(e, s, n_bs - 1, n_run, &n, &n_logits, &budget, &spec_rows_left);
    }

    /* 2. Admission in wait order, none after a preemption (the pages just freed go to the
     * preempted sequences first, at their rank). */
    int n_used = collect(e, false, e->order_idx);
    if (!preempted_now) {
        int n_running = 0;
        for (int k = 0; k < n_used; k++)
            n_running += e->seqs[e->order_idx[k]].started;
        for (int k = 0; k < n_used; k++) {
            qv_seq *s = &e->seqs[e->order_idx[k]];
            if (s->started) continue;
            /* Device backends: while others run, a sequence whose adapter is still on its way
             * to the device (prefetched below) waits, so that no step waits for its copy;
             * bounded, after which its first step loads it. Later sequences may go first. */
            if (n_running > 0 && s->p.adapter && s->deferred < QV_ADMIT_DEFER_STEPS &&
                !qv_forward_adapter_ready(e->fwd, s->p.adapter)) {
                s->deferred++;
                e->n_deferrals++;
                continue;
            }
            /* Prefix cache: while a running sequence computes the next full page this one
             * shares with it, this one waits for it (bounded; later sequences may go first). */
            const prefix_hit h = prefix_match(e, s);
            if (s->deferred < QV_ADMIT_DEFER_STEPS && prefix_in_flight(e, s, &h)) {
                s->deferred++;
                e->n_prefix_waits++;
                continue;
            }
            st = admit(e, s, &h, n_running > 0, err);
            if (st == QV_ERR_BUSY) break;
            if (st != QV_OK) return st;
            n_running++;
        }
    }

    /* 3. Prefill chunks in wait order under the remaining budget; their pages are reserved.
     * Chunks holding prompt-logprob rows end where the step's QV_PROMPT_LP_ROWS run out. */
    int plp_left = e->rows_cap - e->cfg.max_seqs - e->spec_rows;
    for (int k = 0; k < n_used && budget > 0; k++) {
        qv_seq *s = &e->seqs[e->order_idx[k]];
        if (!s->started || e->in_batch[s - e->seqs] || is_decode(s) || s->n_done >= s->n_tokens)
            continue;
        int chunk = QV_MIN(s->n_tokens - s->n_done, budget);
        const int first = QV_MAX(s->n_done, s->plp_next);
        const int rows = QV_MIN(s->n_done + chunk, s->plp_end) - first;
        if (rows > 0) {
            if (rows > plp_left) chunk = first + plp_left - s->n_done;
            if (chunk <= 0) continue;
            plp_left -= QV_MIN(rows, plp_left);
        }
        QV_ASSERT(qv_kv_seq_pages_needed(e->kv, &s->kv, s->n_done + chunk) == 0);
        batch_add(e, s, chunk, &n, &n_bs, &n_logits);
        budget -= chunk;
    }
    if (n == 0) return QV_OK; /* everything waits for KV pages */
    e->n_steps++;

    qv_batch b = {
        .n_tokens = n,
        .tokens = e->b_tokens,
        .pos = e->b_pos,
        .seq = e->b_seq,
        .n_seqs = n_bs,
        .seqs = e->b_kv,
        .n_logits = n_logits,
        .logits_idx = e->b_logits_idx,
    };
    st = qv_adapter_group_batch(&e->grouper, &b, e->b_tokens, e->b_pos, e->b_seq, e->b_logits_idx,
                                adapter_of, e, err);
    if (st != QV_OK) return st;
    /* Device backends: the adapters of the first sequences still waiting (new or preempted,
     * in wait order) are copied to the device while this step runs (a no-op on the CPU). */
    for (int k = 0, n_pf = 0; k < n_used && n_pf < QV_PREFETCH_SEQS; k++) {
        const qv_seq *s = &e->seqs[e->order_idx[k]];
        if (s->used && !s->started && s->p.adapter &&
            !qv_forward_adapter_ready(e->fwd, s->p.adapter)) {
            qv_error pe = {0};
            n_pf += qv_forward_prefetch_adapter(e->fwd, s->p.adapter, &pe) == QV_OK;
        }
    }
    /* Device backends: a row whose token the device can pick is picked there: a plain argmax
     * always; with device sampling (CUDA, unless host_sampling) every row, logprobs included,
     * as long as the step's penalty contexts fit QV_FORWARD_MAX_PEN ids. Only the other rows'
     * logits are copied to the host; they go first in logits_idx. A device row draws its
     * uniform number from its own sampler, as qv_sampler_sample would. */
    int n_full = n_logits;
    if (qv_forward_device_logits(e->fwd)) {
        const bool dev_sample = !e->cfg.host_sampling && qv_forward_device_sampling(e->fwd);
        int n_pen = 0;
        for (int li = 0; li < n_logits; li++) {
            const qv_seq *s = e->b_owner[e->b_seq[e->b_logits_idx[li]]];
            if (e->b_pos[e->b_logits_idx[li]] < s->n_tokens - 1) { /* a prompt-logprob row */
                e->b_ondev[li] = false;
                continue;
            }
            bool dev = !needs_logits(s);
            /* A drafting sequence's rows are read in order, each after the tokens before it
             * (sampler context, random draws): the device samples none of them, so all are
             * plain argmaxes on the device or all full rows here, in their order. */
            if (!dev && dev_sample && !s->spec_from && !qv_sampler_has_edits(s->sampler) &&
                !s->schema) {
                const int ctx =
                    qv_sampler_has_penalties(s->sampler) ? qv_sampler_context_size(s->sampler) : 0;
                dev = ctx <= QV_FORWARD_MAX_PEN - n_pen;
                if (dev) n_pen += ctx;
            }
            e->b_ondev[li] = dev;
        }
        if (n_pen > e->b_pen_cap) {
            int cap = QV_MAX(1024, e->b_pen_cap);
            while (cap < n_pen)
                cap *= 2;
            qv_token_count *np = qv_realloc(e->b_pen, (size_t)cap * sizeof(*np));
            if (!np) return qv_errorf(err, QV_ERR_NOMEM, "engine: no memory for penalty contexts");
            e->b_pen = np;
            e->b_pen_cap = cap;
        }
        int k = 0;
        for (int pass = 0; pass < 2; pass++) {
            for (int li = 0; li < n_logits; li++)
                if (e->b_ondev[li] == (pass == 1)) e->b_order[k++] = e->b_logits_idx[li];
            if (pass == 0) n_full = k;
        }
        memcpy(e->b_logits_idx, e->b_order, (size_t)n_logits * sizeof(int32_t));
        n_pen = 0;
        for (int li = n_full; dev_sample && li < n_logits; li++) {
            qv_seq *s = e->b_owner[e->b_seq[e->b_logits_idx[li]]];
            const qv_sampling_params *p = &s->p.sampling;
            qv_sample_row *r = &e->b_srows[li - n_full];
            *r = (qv_sample_row){.temperature = p->temperature,
                                 .top_p = p->top_p,
                                 .min_p = p->min_p,
                                 .repetition_penalty = p->repetition_penalty,
                                 .presence_penalty = p->presence_penalty,
                                 .frequency_penalty = p->frequency_penalty,
                                 .top_k = p->top_k,
                                 .n_logprobs = p->n_logprobs};
            if (p->temperature < QV_SAMPLER_MIN_TEMPERATURE)
                r->temperature = 0.0f; /* greedy: no draw */
            else
                r->u = qv_sampler_next_uniform(s->sampler);
            if (qv_sampler_has_penalties(s->sampler)) {
                r->pen_off = n_pen;
                r->pen_n = qv_sampler_context(s->sampler, e->b_pen + n_pen, e->b_pen_cap - n_pen);
                n_pen += r->pen_n;
            }
        }
        st = qv_forward_run_sample(e->fwd, &b, n_full, e->logits, dev_sample ? e->b_srows : NULL,
                                   e->b_pen, n_pen, e->b_greedy, e->b_lp, err);
    } else {
        st = qv_forward_run(e->fwd, &b, e->logits, err);
    }
    if (st != QV_OK) return st;
    e->n_rows_host += (uint64_t)n_full;
    e->n_rows_device += (uint64_t)(n_logits - n_full);

    /* Account processed tokens, then sample for the sequences that got logits. */
    for (int i = 0; i < n; i++) {
        qv_seq *s = e->b_owner[e->b_seq[i]];
        if (s->spec_from && e->b_pos[i] >= s->spec_from) continue; /* a draft: counted if kept */
        s->n_done++;
        e->n_recomputed += e->b_pos[i] < s->recompute_end;
    }
    for (int bs = 0; bs < n_bs; bs++) { /* pages just completed go to the prefix cache */
        qv_seq *s = e->b_owner[bs];
        if (s->n_reg >= 0)
            qv_kv_reuse_register(e->kv, &s->kv, s->reuse_ns, s->tokens, s->n_done, &s->n_reg);
    }
    for (int li = 0; li < n_logits; li++) {
        qv_seq *s = e->b_owner[e->b_seq[e->b_logits_idx[li]]];
        qv_logprobs lp;
        const int pos = e->b_pos[e->b_logits_idx[li]];
        if (!s->used) continue; /* finished by an earlier row of this step (drafts follow) */
        if (s->spec_from && pos >= s->spec_from) {
            /* the row of a draft: it stands when every token before it, the draft itself
             * included, is the one the model picked (its K/V are then the right ones) */
            if (pos != s->n_tokens - 1 || e->b_tokens[e->b_logits_idx[li]] != s->tokens[pos])
                continue;
            s->n_done++;
            s->spec_kept++;
            e->n_spec_accepted++;
        }
        if (pos < s->n_tokens - 1) { /* the logprobs of prompt token pos + 1 - n_pre */
            const float *row = e->logits + (size_t)li * (size_t)n_vocab;
            qv_logprobs_of_row(row, n_vocab, s->tokens[pos + 1],
                               QV_MAX(s->p.sampling.n_logprobs, s->p.prompt_n_logprobs), &lp);
            s->plp_next = pos + 1;
            s->p.prompt_lp_cb(s->user, s->id, pos + 1 - s->n_pre, &lp,
                              qv_logprob_rank(row, n_vocab, s->tokens[pos + 1]));
            continue;
        }
        bool want_lp = s->p.sampling.n_logprobs > 0;
        int32_t tok;
        if (li < n_full) {
            float *row = e->logits + (size_t)li * (size_t)n_vocab;
            if (!s->schema) {
                tok = qv_sampler_sample(s->sampler, row, want_lp ? &lp : NULL);
            } else {
                /* logprobs stay the model's (the raw row), as with logit_bias */
                if (want_lp) memcpy(e->jm_raw, row, (size_t)n_vocab * sizeof(float));
                /* a dead end: no allowed token has a finite logit (a vocabulary without the
                 * bytes needed), or the request's own edits (bad_words, a ban) removed every
                 * one the grammar allows, so the sampler's fallback is not one of them: end
                 * here, counted and logged */
                bool dead = json_mask(e, s, row) <= 0;
                if (!dead) {
                    tok = qv_sampler_sample(s->sampler, row, NULL);
                    dead = !(row[tok] > -INFINITY);
                }
                if (dead) {
                    const int32_t *eog;
                    tok = qv_tokenizer_eog_ids(e->tok, &eog) > 0 ? eog[0] : 0;
                    e->jm_dead_ends++;
                    QV_LOGW("engine: sequence %d: no token the request allows continues its "
                            "structured output; it ends here, unfinished",
                            s->id);
                }
                if (want_lp)
                    qv_logprobs_of_row(e->jm_raw, n_vocab, tok, s->p.sampling.n_logprobs, &lp);
            }
        } else {
            tok = e->b_greedy[li - n_full]; /* the sampler's choice, made on the device */
            if (want_lp) lp = e->b_lp[li - n_full];
        }
        qv_sampler_accept(s->sampler, tok);
        if (s->schema && tok >= 0 && tok < n_vocab && e->tb_len[tok] > 0)
            qv_json_schema_feed(s->schema, &s->js, e->tb_bytes + e->tb_off[tok],
                                (size_t)e->tb_len[tok]);
        s->tokens[s->n_tokens++] = tok;
        s->n_generated++;
        enum qv_finish_reason fin = QV_FINISH_NONE;
        if (!s->p.ignore_eos && e->tok && qv_tokenizer_is_eog(e->tok, tok))
            fin = QV_FINISH_STOP;
        else if (!s->p.ignore_eos && !e->tok) {
            for (int j = 0; j < e->model->cfg.n_eos; j++)
                if (tok == e->model->cfg.eos_ids[j]) fin = QV_FINISH_STOP;
        }
        if (fin == QV_FINISH_NONE && s->n_generated >= s->p.max_tokens) fin = QV_FINISH_LENGTH;
        if (s->cb) s->cb(s->user, s->id, tok, want_lp ? &lp : NULL, fin);
        if (fin != QV_FINISH_NONE) seq_free(e, s);
    }
    for (int bs = 0; bs < n_bs; bs++) {
        qv_seq *s = e->b_owner[bs];
        if (s->used && s->spec_from) spec_adapt(e, s);
        s->spec_from = 0;
    }
    return QV_OK;
}
