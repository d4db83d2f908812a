/*
 * sampler.c - token sampling over one row of logits (see sampler.h and docs/sampling.md).
 *
 * Pipeline, in HF transformers 5.x `generate` order:
 *   penalties (repetition, then frequency, then presence; in place, sparse over the context)
 *   -> greedy argmax when temperature == 0
 *   -> temperature (y = x / T, computed on the fly; the row keeps the penalised x)
 *   -> top-k -> top-p -> min-p -> softmax over the survivors -> inverse-CDF draw in id order.
 *
 * Cost: greedy is one max pass plus a find-first pass. Top-k finds the k-th largest value with
 * a k-entry min-heap scan (k <= 256) or a radix select on order-preserving integer keys; never a
 * sort. Top-p never sorts the vocabulary: it collects the tokens whose weight exp(y - max) is
 * above a threshold, checks that they hold at least top_p of the mass (else lowers the
 * threshold), and pops them from a binary max-heap only until the cut is reached. Min-p is a
 * threshold on exp(y - max). Threshold scans reject blocks of 64 by their maximum. All buffers
 * are allocated in qv_sampler_create.
 *
 * What it is not: no batching, no device code, no stop strings.
 * Invariants: state[id] has SEEN_BIT set exactly for the ids listed in seen[0..n_seen).
 * Thread: one sampler per thread at a time; no globals.
 */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SEEN_BIT 0x80000000u
#define COUNT_MASK 0x7fffffffu

/* One surviving token: its id, its tempered logit y and its weight e = expf(y - max_y). */
typedef struct cand {
    int32_t id;
    float y;
    float e;
} cand;

/* Per-call buffers. Owned by one sampler, or shared by several used from one thread at a time
 * (qv_sampler_create_with_scratch). Nothing in them survives a qv_sampler_sample call. */
struct qv_sampler_scratch {
    int n_vocab;
    cand *cand;     /* (n_vocab) candidates of the current row */
    uint32_t *keys; /* (n_vocab) radix-select scratch */
    float *saved;   /* (n_vocab) raw logits of the context ids before penalties (for logprobs) */
};

struct qv_sampler {
    qv_sampling_params p;
    int n_vocab;
    uint64_t rng[4]; /* xoshiro256** state */
    uint32_t *state; /* (n_vocab) SEEN_BIT: in the repetition context; low bits: times generated */
    int32_t *seen;   /* (n_vocab) ids in the repetition context, first-seen order */
    int n_seen;
    int n_accepted;      /* tokens accepted since creation or reset (for min_tokens) */
    qv_token_bias *bias; /* (n_bias) logit_bias, distinct ids */
    int n_bias;
    int32_t *suppress; /* (n_suppress) ids set to -inf while n_accepted < min_tokens */
    int n_suppress;
    int min_tokens;
    uint64_t *allowed;           /* vLLM allowed_token_ids: a bit per id, NULL = all */
    int32_t *bad_ids, *bad_lens; /* vLLM bad_words: n_bad words, their ids one after another */
    int n_bad;
    int32_t hist[QV_SAMPLER_MAX_BAD_LEN]; /* the last accepted ids (ring, n_accepted of them) */
    qv_sampler_scratch *w;                /* per-call buffers; borrowed unless owns_w */
    bool owns_w;
};

/* ---------------------------------------------------------------- parameters ---- */

void qv_sampling_params_default(qv_sampling_params *p) {
    memset(p, 0, sizeof(*p));
    p->temperature = 1.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
    p->presence_penalty = 0.0f;
    p->frequency_penalty = 0.0f;
    p->seed = 0;
    p->n_logprobs = 0;
}

qv_status qv_sampling_params_validate(const qv_sampling_params *p, qv_error *err) {
    if (!p) return qv_errorf(err, QV_ERR_INVALID, "sampling parameters missing");
    if (!isfinite(p->temperature) || p->temperature < 0.0f)
        return qv_errorf(err, QV_ERR_INVALID, "temperature must be a finite number >= 0, got %g",
                         (double)p->temperature);
    if (p->top_k < -1)
        return qv_errorf(err, QV_ERR_INVALID, "top_k must be >= 0 (0 or -1 = off), got %d",
                         p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return qv_errorf(err, QV_ERR_INVALID, "top_p must be in (0, 1], got %g", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return qv_errorf(err, QV_ERR_INVALID, "min_p must be in [0, 1], got %g", (double)p->min_p);
    if (!isfinite(p->repetition_penalty) || !(p->repetition_penalty > 0.0f))
        return qv_errorf(err, QV_ERR_INVALID,
                         "repetition_penalty must be a finite number > 0, got %g",
                         (double)p->repetition_penalty);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        return qv_errorf(err, QV_ERR_INVALID, "presence_penalty must be in [-2, 2], got %g",
                         (double)p->presence_penalty);
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return qv_errorf(err, QV_ERR_INVALID, "frequency_penalty must be in [-2, 2], got %g",
                         (double)p->frequency_penalty);
    if (p->n_logprobs < 0 || p->n_logprobs > QV_SAMPLER_MAX_LOGPROBS)
        return qv_errorf(err, QV_ERR_INVALID, "logprobs must be in [0, %d], got %d",
                         QV_SAMPLER_MAX_LOGPROBS, p->n_logprobs);
    return QV_OK;
}

/* ---------------------------------------------------------------- PRNG ---- */

static uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4]) {
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

/* Uniform double in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4]) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

static void rng_seed(uint64_t s[4], uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        s[i] = qv_splitmix64(&x);
}

/* ---------------------------------------------------------------- lifetime ---- */

qv_status qv_sampler_scratch_create(int n_vocab, qv_sampler_scratch **out) {
    *out = NULL;
    if (n_vocab <= 0) return QV_ERR_INVALID;
    qv_sampler_scratch *w = qv_calloc(1, sizeof(*w));
    if (!w) return QV_ERR_NOMEM;
    size_t n = (size_t)n_vocab;
    w->n_vocab = n_vocab;
    w->cand = qv_malloc(n * sizeof(*w->cand));
    w->keys = qv_malloc(n * sizeof(*w->keys));
    w->saved = qv_malloc(n * sizeof(*w->saved));
    if (!w->cand || !w->keys || !w->saved) {
        qv_sampler_scratch_free(w);
        return QV_ERR_NOMEM;
    }
    *out = w;
    return QV_OK;
}

void qv_sampler_scratch_free(qv_sampler_scratch *w) {
    if (!w) return;
    qv_free(w->cand);
    qv_free(w->keys);
    qv_free(w->saved);
    qv_free(w);
}

qv_status qv_sampler_create_with_scratch(const qv_sampling_params *p, int n_vocab,
                                         qv_sampler_scratch *scratch, qv_sampler **out) {
    *out = NULL;
    if (qv_sampling_params_validate(p, NULL) != QV_OK || n_vocab <= 0) return QV_ERR_INVALID;
    if (scratch && scratch->n_vocab < n_vocab) return QV_ERR_INVALID;
    qv_sampler *s = qv_calloc(1, sizeof(*s));
    if (!s) return QV_ERR_NOMEM;
    size_t n = (size_t)n_vocab;
    s->p = *p;
    s->n_vocab = n_vocab;
    s->state = qv_calloc(n, sizeof(*s->state));
    s->seen = qv_malloc(n * sizeof(*s->seen));
    if (!s->state || !s->seen) goto fail;
    if (scratch) {
        s->w = scratch;
    } else {
        if (qv_sampler_scratch_create(n_vocab, &s->w) != QV_OK) goto fail;
        s->owns_w = true;
    }
    rng_seed(s->rng, p->seed);
    *out = s;
    return QV_OK;
fail:
    qv_sampler_free(s);
    return QV_ERR_NOMEM;
}

qv_status qv_sampler_create(const qv_sampling_params *p, int n_vocab, qv_sampler **out) {
    return qv_sampler_create_with_scratch(p, n_vocab, NULL, out);
}

void qv_sampler_free(qv_sampler *s) {
    if (!s) return;
    qv_free(s->state);
    qv_free(s->seen);
    qv_free(s->bias);
    qv_free(s->suppress);
    qv_free(s->allowed);
    qv_free(s->bad_ids);
    qv_free(s->bad_lens);
    if (s->owns_w) qv_sampler_scratch_free(s->w);
    qv_free(s);
}

void qv_sampler_reset(qv_sampler *s) {
    memset(s->state, 0, (size_t)s->n_vocab * sizeof(*s->state));
    s->n_seen = 0;
    s->n_accepted = 0;
    rng_seed(s->rng, s->p.seed);
}

static void remember(qv_sampler *s, int32_t id) {
    if (!(s->state[id] & SEEN_BIT)) {
        s->state[id] |= SEEN_BIT;
        s->seen[s->n_seen++] = id;
    }
}

void qv_sampler_add_prompt(qv_sampler *s, const int32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < s->n_vocab) remember(s, ids[i]);
}

void qv_sampler_accept(qv_sampler *s, int32_t token) {
    s->hist[s->n_accepted % QV_SAMPLER_MAX_BAD_LEN] = token;
    if (s->n_accepted < INT32_MAX) s->n_accepted++;
    if (token < 0 || token >= s->n_vocab) return;
    remember(s, token);
    if ((s->state[token] & COUNT_MASK) != COUNT_MASK) s->state[token]++;
}

qv_status qv_sampler_set_edits(qv_sampler *s, const qv_token_bias *bias, int n_bias, int min_tokens,
                               const int32_t *suppress, int n_suppress, qv_error *err) {
    if (n_bias < 0 || n_suppress < 0 || min_tokens < 0 || (n_bias && !bias) ||
        (n_suppress && !suppress))
        return qv_errorf(err, QV_ERR_INVALID, "sampler: bad edit lists");
    for (int j = 0; j < n_bias; j++) {
        const float b = bias[j].bias;
        if (bias[j].id < 0 || bias[j].id >= s->n_vocab)
            return qv_errorf(err, QV_ERR_INVALID, "logit_bias token id %d is outside [0, %d)",
                             (int)bias[j].id, s->n_vocab);
        if (!(b >= -QV_SAMPLER_MAX_BIAS && b <= QV_SAMPLER_MAX_BIAS))
            return qv_errorf(err, QV_ERR_INVALID, "logit_bias of token %d is %g, not in [%g, %g]",
                             (int)bias[j].id, (double)b, -(double)QV_SAMPLER_MAX_BIAS,
                             (double)QV_SAMPLER_MAX_BIAS);
    }
    for (int j = 0; j < n_suppress; j++)
        if (suppress[j] < 0 || suppress[j] >= s->n_vocab)
            return qv_errorf(err, QV_ERR_INVALID, "suppressed token id %d is outside [0, %d)",
                             (int)suppress[j], s->n_vocab);
    qv_token_bias *nb = n_bias ? qv_malloc((size_t)n_bias * sizeof(*nb)) : NULL;
    int32_t *ns = n_suppress ? qv_malloc((size_t)n_suppress * sizeof(*ns)) : NULL;
    if ((n_bias && !nb) || (n_suppress && !ns)) {
        qv_free(nb);
        qv_free(ns);
        return qv_errorf(err, QV_ERR_NOMEM, "sampler: no memory for %d biases", n_bias);
    }
    /* distinct ids, the last entry of each winning (as a JSON object read by Python) */
    int nd = 0;
    for (int j = 0; j < n_bias; j++) {
        int k = 0;
        while (k < nd && nb[k].id != bias[j].id)
            k++;
        nb[k] = bias[j];
        nd += k == nd;
    }
    if (n_suppress) memcpy(ns, suppress, (size_t)n_suppress * sizeof(*ns));
    qv_free(s->bias);
    qv_free(s->suppress);
    s->bias = nb;
    s->n_bias = nd;
    s->suppress = ns;
    s->n_suppress = n_suppress;
    s->min_tokens = min_tokens;
    return QV_OK;
}

qv_status qv_sampler_set_allowed(qv_sampler *s, const int32_t *ids, int n, qv_error *err) {
    if (n < 0 || (n && !ids)) return qv_errorf(err, QV_ERR_INVALID, "sampler: bad allowed list");
    for (int j = 0; j < n; j++)
        if (ids[j] < 0 || ids[j] >= s->n_vocab)
            return qv_errorf(err, QV_ERR_INVALID, "allowed token id %d is outside [0, %d)",
                             (int)ids[j], s->n_vocab);
    uint64_t *bits = NULL;
    if (n) {
        if (!(bits = qv_calloc(((size_t)s->n_vocab + 63) / 64, sizeof(*bits))))
            return qv_errorf(err, QV_ERR_NOMEM, "sampler: no memory for the allowed ids");
        for (int j = 0; j < n; j++)
            bits[ids[j] >> 6] |= (uint64_t)1 << (ids[j] & 63);
    }
    qv_free(s->allowed);
    s->allowed = bits;
    return QV_OK;
}

qv_status qv_sampler_set_bad_words(qv_sampler *s, const int32_t *ids, const int32_t *lens,
                                   int n_words, qv_error *err) {
    if (n_words < 0 || (n_words && (!ids || !lens)))
        return qv_errorf(err, QV_ERR_INVALID, "sampler: bad word lists");
    size_t total = 0;
    for (int w = 0; w < n_words; w++) {
        if (lens[w] < 1 || lens[w] > QV_SAMPLER_MAX_BAD_LEN)
            return qv_errorf(err, QV_ERR_INVALID, "bad word %d has %d tokens (1 to %d)", w,
                             (int)lens[w], QV_SAMPLER_MAX_BAD_LEN);
        for (int j = 0; j < lens[w]; j++)
            if (ids[total + (size_t)j] < 0 || ids[total + (size_t)j] >= s->n_vocab)
                return qv_errorf(err, QV_ERR_INVALID, "bad word token id %d is outside [0, %d)",
                                 (int)ids[total + (size_t)j], s->n_vocab);
        total += (size_t)lens[w];
    }
    int32_t *ni = total ? qv_malloc(total * sizeof(*ni)) : NULL;
    int32_t *nl = n_words ? qv_malloc((size_t)n_words * sizeof(*nl)) : NULL;
    if ((total && !ni) || (n_words && !nl)) {
        qv_free(ni);
        qv_free(nl);
        return qv_errorf(err, QV_ERR_NOMEM, "sampler: no memory for %d bad words", n_words);
    }
    if (total) memcpy(ni, ids, total * sizeof(*ni));
    if (n_words) memcpy(nl, lens, (size_t)n_words * sizeof(*nl));
    qv_free(s->bad_ids);
    qv_free(s->bad_lens);
    s->bad_ids = ni;
    s->bad_lens = nl;
    s->n_bad = n_words;
    return QV_OK;
}

bool qv_sampler_has_edits(const qv_sampler *s) {
    return s->n_bias > 0 || (s->n_suppress > 0 && s->n_accepted < s->min_tokens) || s->allowed ||
           s->n_bad > 0;
}

/* vLLM bad_words: the last id of each word whose other ids end the accepted tokens. */
static void apply_bad_words(const qv_sampler *s, float *x) {
    const int32_t *w = s->bad_ids;
    for (int k = 0; k < s->n_bad; w += s->bad_lens[k], k++) {
        const int n = s->bad_lens[k] - 1; /* ids that must come before the banned one */
        bool match = n <= s->n_accepted;
        for (int j = 0; j < n && match; j++) /* hist of accepted token n_accepted - n + j */
            match = s->hist[(s->n_accepted - n + j) % QV_SAMPLER_MAX_BAD_LEN] == w[j];
        if (match) x[w[n]] = -INFINITY;
    }
}

/* ---------------------------------------------------------------- processing ---- */

/* allowed_token_ids' -inf, bad_words' -inf, logit_bias (float addition, as torch's scores +
 * bias), then min_tokens' -inf. */
static void apply_edits(const qv_sampler *s, float *x) {
    for (int v = 0; s->allowed && v < s->n_vocab; v++)
        if (!((s->allowed[v >> 6] >> (v & 63)) & 1u)) x[v] = -INFINITY;
    apply_bad_words(s, x);
    for (int j = 0; j < s->n_bias; j++)
        x[s->bias[j].id] += s->bias[j].bias;
    if (s->n_accepted < s->min_tokens)
        for (int j = 0; j < s->n_suppress; j++)
            x[s->suppress[j]] = -INFINITY;
}

static bool penalties_active(const qv_sampler *s) {
    return s->p.repetition_penalty != 1.0f || s->p.frequency_penalty != 0.0f ||
           s->p.presence_penalty != 0.0f;
}

/* HF RepetitionPenaltyLogitsProcessor once per context id, then vLLM's order for the OpenAI
 * penalties: x -= frequency * count; x -= presence * (count > 0). Float arithmetic as torch. */
static void apply_penalties(qv_sampler *s, float *x) {
    const float rep = s->p.repetition_penalty;
    const float freq = s->p.frequency_penalty, pres = s->p.presence_penalty;
    for (int j = 0; j < s->n_seen; j++) {
        int32_t id = s->seen[j];
        float v = x[id];
        if (rep != 1.0f) v = v < 0.0f ? v * rep : v / rep;
        uint32_t c = s->state[id] & COUNT_MASK;
        if (c) {
            v = v - freq * (float)c;
            v = v - pres;
        }
        x[id] = v;
    }
}

/* Threshold scans test a whole block against its (vectorised) maximum first: with real logits
 * almost every block lies entirely below a top-k / min-p / top-p threshold. Division and
 * subtraction are monotone, so the block test never rejects a block holding a passing token. */
#define BLOCK 64

/* Largest value ignoring NaN; -INFINITY when there is none. Eight independent lanes let the
 * compiler vectorise the loop at -O2 (a single running maximum is a serial dependency chain;
 * this is ~10x faster at n_vocab 152064). */
static float row_max(const float *x, int n) {
    float a[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY,
                  -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            a[j] = x[i + j] > a[j] ? x[i + j] : a[j];
    float m = -INFINITY;
    for (int j = 0; j < 8; j++)
        m = a[j] > m ? a[j] : m;
    for (; i < n; i++)
        m = x[i] > m ? x[i] : m;
    return m;
}

/* Argmax with the lowest id on ties; 0 when no logit is above -inf. One pass over the row:
 * block maxima (vectorised), remembering the first block that holds the running maximum, then a
 * find-first inside that block only. */
static int32_t argmax_first(const float *x, int n) {
    float m = -INFINITY;
    int best = -1;
    for (int i0 = 0; i0 < n; i0 += BLOCK) {
        float bm = row_max(x + i0, QV_MIN(BLOCK, n - i0));
        if (bm > m) {
            m = bm;
            best = i0;
        }
    }
    if (best < 0) return 0;
    for (int i = best; i < n; i++)
        if (x[i] == m) return i;
    return 0;
}

/* Order-preserving map float -> uint32 (NaN sorts lowest). */
static uint32_t float_key(float f) {
    uint32_t b;
    if (isnan(f)) return 0;
    memcpy(&b, &f, sizeof(b));
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

static float key_float(uint32_t k) {
    uint32_t b = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    float f;
    memcpy(&f, &b, sizeof(f));
    return f;
}

/* Picks the byte bucket (from the top) that holds the *need-th largest key; updates *need to
 * the rank inside that bucket. */
static uint32_t pick_bucket(const uint32_t hist[256], uint32_t *need) {
    for (int b = 255; b > 0; b--) {
        if (hist[b] >= *need) return (uint32_t)b;
        *need -= hist[b];
    }
    return 0;
}

/* The k-th largest of x[0..n) (1 <= k <= n) by 8-bit radix select: one histogram pass over
 * the row, one compaction pass, then three passes over the (usually tiny) matching bucket. */
static float kth_largest(qv_sampler *s, const float *x, int n, int k) {
    uint32_t hist[256] = {0};
    uint32_t need = (uint32_t)k;
    for (int i = 0; i < n; i++)
        hist[float_key(x[i]) >> 24]++;
    uint32_t prefix = pick_bucket(hist, &need) << 24;
    uint32_t *keys = s->w->keys;
    size_t m = 0;
    for (int i = 0; i < n; i++) {
        uint32_t key = float_key(x[i]);
        if ((key >> 24) == (prefix >> 24)) keys[m++] = key;
    }
    for (int shift = 16; shift >= 0; shift -= 8) {
        memset(hist, 0, sizeof(hist));
        for (size_t i = 0; i < m; i++)
            hist[(keys[i] >> shift) & 0xffu]++;
        uint32_t b = pick_bucket(hist, &need);
        size_t w = 0;
        for (size_t i = 0; i < m; i++)
            if (((keys[i] >> shift) & 0xffu) == b) keys[w++] = keys[i];
        m = w;
        prefix |= b << shift;
    }
    if (prefix == 0) return -INFINITY; /* the k-th largest is a NaN: keep every number */
    return key_float(prefix);
}

/* Below this k the k-th largest value comes from a k-entry min-heap scan (most elements are
 * rejected 64 at a time by one vectorised block maximum); above it from the radix select. */
#define TOPK_HEAP_MAX 256

static void minheap_sift_down(float *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && h[l] < h[m]) m = l;
        if (r < n && h[r] < h[m]) m = r;
        if (m == i) return;
        float t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static float kth_largest_heap(const float *x, int n, int k) {
    float heap[TOPK_HEAP_MAX];
    int h = 0, i = 0;
    for (; i < n && h < k; i++) {
        if (isnan(x[i])) continue;
        int j = h++;
        heap[j] = x[i];
        while (j > 0 && heap[(j - 1) / 2] > heap[j]) {
            float t = heap[j];
            heap[j] = heap[(j - 1) / 2];
            heap[(j - 1) / 2] = t;
            j = (j - 1) / 2;
        }
    }
    if (h < k) return -INFINITY; /* fewer than k numbers: keep them all */
    float hmin = heap[0];
    for (; i + BLOCK <= n; i += BLOCK) {
        if (!(row_max(x + i, BLOCK) > hmin)) continue;
        for (int j = 0; j < BLOCK; j++)
            if (x[i + j] > hmin) {
                heap[0] = x[i + j];
                minheap_sift_down(heap, k, 0);
                hmin = heap[0];
            }
    }
    for (; i < n; i++)
        if (x[i] > hmin) {
            heap[0] = x[i];
            minheap_sift_down(heap, k, 0);
            hmin = heap[0];
        }
    return hmin;
}

/* The smallest float xlo with xlo / t >= xk / t, so that {x : x / t >= yk} = {x >= xlo} (division
 * is monotone but not injective). NAN when it is not found within a few ulps (absurd
 * temperatures); callers then divide per element. */
static float raw_threshold(float xk, float t) {
    if (!isfinite(xk)) return xk;
    const float yk = xk / t;
    float lo = xk;
    for (int steps = 0; steps < 64; steps++) {
        float d = nextafterf(lo, -INFINITY);
        if (!(d / t >= yk)) return lo;
        lo = d;
    }
    return NAN;
}

/* Heap order: larger y first, lower id first on ties (the documented top-p tie rule). */
static bool cand_before(const cand *a, const cand *b) {
    return a->y > b->y || (a->y == b->y && a->id < b->id);
}

static void sift_down(cand *h, size_t n, size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, best = i;
        if (l < n && cand_before(&h[l], &h[best])) best = l;
        if (r < n && cand_before(&h[r], &h[best])) best = r;
        if (best == i) return;
        cand t = h[i];
        h[i] = h[best];
        h[best] = t;
        i = best;
    }
}

/* HF TopPLogitsWarper: keeps, in descending order, every token whose preceding mass is below
 * top_p * z (so the token crossing top_p is kept, and always the first). Pops a max-heap only as
 * far as the cut. Moves the kept tokens to c[0..kept) and returns kept. */
static size_t top_p_cut(cand *c, size_t n, double z, float top_p) {
    if (n == 0) return 0;
    for (size_t i = n / 2; i-- > 0;)
        sift_down(c, n, i);
    const double limit = (double)top_p * z;
    double mass = 0.0;
    size_t h = n, kept = 0;
    while (h > 0 && (kept == 0 || mass < limit)) {
        cand t = c[0];
        mass += (double)t.e;
        c[0] = c[h - 1];
        c[h - 1] = t;
        h--;
        sift_down(c, h, 0);
        kept++;
    }
    memmove(c, c + h, kept * sizeof(*c));
    return kept;
}

static int cmp_cand_id(const void *a, const void *b) {
    int32_t x = ((const cand *)a)->id, y = ((const cand *)b)->id;
    return (x > y) - (x < y);
}

/* Sum over the row of expf(x / t - m). Four partial sums: one running double sum is a serial
 * add chain slower than expf itself. */
static double sum_weights(const float *x, int n, float t, float m) {
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++)
            acc[j] += (double)expf(x[i + j] / t - m);
    for (; i < n; i++)
        acc[0] += (double)expf(x[i] / t - m);
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

/* Collects into c, in id order, every token with weight e = expf(x / t - m) >= thr and e > 0;
 * *mass receives the sum of their weights. expf(d) >= thr implies d >= logf(thr) up to
 * rounding, so d >= logf(thr) - 0.01 is a superset prefilter (first per block of BLOCK, on the
 * block maximum) and the exact test decides. It compares differences, not y >= m + logf(thr):
 * m may be large enough that the sum loses the margin to rounding. */
static size_t collect_above(cand *c, const float *x, int n, float t, float m, float thr,
                            double *mass) {
    const float lo = thr > 0.0f ? logf(thr) - 0.01f : -INFINITY;
    size_t nc = 0;
    double sum = 0.0;
    for (int i0 = 0; i0 < n; i0 += BLOCK) {
        const int i1 = QV_MIN(i0 + BLOCK, n);
        if (!(row_max(x + i0, i1 - i0) / t - m >= lo)) continue;
        for (int i = i0; i < i1; i++) {
            float y = x[i] / t;
            if (y - m >= lo) {
                float e = expf(y - m);
                if (e >= thr && e > 0.0f) {
                    c[nc++] = (cand){i, y, e};
                    sum += (double)e;
                }
            }
        }
    }
    *mass = sum;
    return nc;
}

/* Builds the kept candidates of a (penalised) row for temperature > 0: s->w->cand[0..return), in
 * ascending id order, weights e = expf(y - max_y) > 0, with *w_out = sum of e. */
static size_t build_candidates(qv_sampler *s, const float *x, double *w_out) {
    const int n = s->n_vocab;
    const float t = s->p.temperature;
    const bool use_k = s->p.top_k > 0 && s->p.top_k < n;
    const bool use_p = s->p.top_p < 1.0f;
    const bool use_min_p = s->p.min_p > 0.0f;
    cand *c = s->w->cand;
    size_t nc = 0;
    double z = 0.0;
    bool min_p_done = false, id_order = true;
    *w_out = 0.0;

    /* Division is monotone, so the tempered maximum is the raw maximum over t. */
    const float m = row_max(x, n) / t;
    if (!(m > -INFINITY)) return 0;

    if (use_k) {
        /* HF keeps every tempered score >= the k-th largest tempered score. */
        const int k = s->p.top_k;
        const float xk = k <= TOPK_HEAP_MAX ? kth_largest_heap(x, n, k) : kth_largest(s, x, n, k);
        const float yk = xk / t, xlo = raw_threshold(xk, t);
        const bool exact = !isnan(xlo);
        for (int i0 = 0; i0 < n; i0 += BLOCK) {
            const int i1 = QV_MIN(i0 + BLOCK, n);
            if (exact && !(row_max(x + i0, i1 - i0) >= xlo)) continue;
            for (int i = i0; i < i1; i++) {
                if (exact ? x[i] >= xlo : x[i] / t >= yk) {
                    float y = x[i] / t;
                    float e = expf(y - m);
                    if (e > 0.0f) {
                        c[nc++] = (cand){i, y, e};
                        z += (double)e;
                    }
                }
            }
        }
    } else if (use_p) {
        /* The top-p cut is relative to the whole vocabulary's mass z, so every weight is summed
         * once; only tokens above a weight threshold are kept as candidates. If they hold less
         * than top_p of the mass the cut lies below the threshold: lower it and collect again
         * (rare; each retry is a comparison pass plus expf on the new candidates only). */
        static const float thresholds[] = {1e-4f, 1e-9f, 0.0f};
        z = sum_weights(x, n, t, m);
        const double limit = (double)s->p.top_p * z;
        double mass = 0.0;
        for (size_t ti = 0; ti < QV_ARRAY_LEN(thresholds) && !(mass >= limit); ti++)
            nc = collect_above(c, x, n, t, m, thresholds[ti], &mass);
    } else if (use_min_p) {
        /* HF MinPLogitsWarper: drop p < min_p * p_max, i.e. expf(y - m) < min_p. */
        double mass;
        nc = collect_above(c, x, n, t, m, s->p.min_p, &mass);
        min_p_done = true;
    } else {
        for (int i = 0; i < n; i++) {
            float y = x[i] / t;
            float e = expf(y - m);
            if (e > 0.0f) c[nc++] = (cand){i, y, e};
        }
    }

    if (use_p) {
        nc = top_p_cut(c, nc, z, s->p.top_p);
        id_order = false;
    }
    if (use_min_p && !min_p_done) {
        /* The maximum always survives top-k and top-p, so weights stay relative to it. */
        size_t w = 0;
        for (size_t j = 0; j < nc; j++)
            if (c[j].e >= s->p.min_p) c[w++] = c[j];
        nc = w;
    }
    if (!id_order) qsort(c, nc, sizeof(*c), cmp_cand_id);
    /* Partial sums again (long serial chains dominate at 152k candidates). The draw walks the
     * candidates with one running sum, which can end a rounding step below u * w: it then
     * takes the last candidate. */
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    size_t j = 0;
    for (; j + 4 <= nc; j += 4)
        for (size_t q = 0; q < 4; q++)
            acc[q] += (double)c[j + q].e;
    for (; j < nc; j++)
        acc[0] += (double)c[j].e;
    *w_out = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    return nc;
}

static bool is_greedy(const qv_sampler *s) { return s->p.temperature < QV_SAMPLER_MIN_TEMPERATURE; }

/* Log-softmax statistics of the raw row: log of the partition function and the n largest. */
static double raw_log_z(const float *x, int n, qv_logprobs *lp, int n_top) {
    const float m = row_max(x, n);
    int nt = 0;
    for (int i = 0; i < n && n_top > 0; i++) {
        float v = x[i];
        if (isnan(v)) continue;
        /* Insertion into a short descending list; equal values keep the earlier (lower) id. */
        if (nt < n_top || v > lp->top_logprobs[nt - 1]) {
            int j = nt < n_top ? nt++ : nt - 1;
            while (j > 0 && v > lp->top_logprobs[j - 1]) {
                lp->top_logprobs[j] = lp->top_logprobs[j - 1];
                lp->top_ids[j] = lp->top_ids[j - 1];
                j--;
            }
            lp->top_logprobs[j] = v;
            lp->top_ids[j] = i;
        }
    }
    lp->n_top = nt;
    if (!(m > -INFINITY)) return (double)INFINITY; /* every logprob is -inf */
    /* Four partial sums: one running double sum is a serial add chain slower than expf. */
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++)
            acc[j] += (double)expf(x[i + j] - m);
    for (; i < n; i++)
        acc[0] += (double)expf(x[i] - m);
    return (double)m + log((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

int32_t qv_sampler_sample(qv_sampler *s, float *logits, qv_logprobs *lp) {
    const bool pen = penalties_active(s), edit = qv_sampler_has_edits(s);
    double log_z = 0.0;
    if (lp) {
        int n_top = QV_MIN(s->p.n_logprobs, s->n_vocab);
        log_z = raw_log_z(logits, s->n_vocab, lp, n_top);
        for (int j = 0; j < lp->n_top; j++)
            lp->top_logprobs[j] = (float)((double)lp->top_logprobs[j] - log_z);
        /* the chosen token's raw logit: with edits, the whole raw row is kept (edits may touch
         * any id); with penalties alone, the context ids' values */
        if (edit)
            memcpy(s->w->saved, logits, (size_t)s->n_vocab * sizeof(*logits));
        else if (pen)
            for (int j = 0; j < s->n_seen; j++)
                s->w->saved[j] = logits[s->seen[j]];
    }
    if (edit) apply_edits(s, logits);
    if (pen) apply_penalties(s, logits);

    int32_t tok;
    if (is_greedy(s)) {
        tok = argmax_first(logits, s->n_vocab);
    } else {
        double w;
        size_t nc = build_candidates(s, logits, &w);
        if (nc == 0) {
            tok = argmax_first(logits, s->n_vocab);
        } else {
            double target = rng_uniform(s->rng) * w, acc = 0.0;
            tok = s->w->cand[nc - 1].id;
            for (size_t j = 0; j < nc; j++) {
                acc += (double)s->w->cand[j].e;
                if (acc > target) {
                    tok = s->w->cand[j].id;
                    break;
                }
            }
        }
    }

    if (lp) {
        float raw = edit ? s->w->saved[tok] : logits[tok];
        if (!edit && pen && (s->state[tok] & SEEN_BIT))
            for (int j = 0; j < s->n_seen; j++)
                if (s->seen[j] == tok) {
                    raw = s->w->saved[j];
                    break;
                }
        lp->token = tok;
        lp->logprob = (float)((double)raw - log_z);
    }
    return tok;
}

void qv_logprobs_of_row(const float *row, int n_vocab, int32_t token, int n_top, qv_logprobs *lp) {
    n_top = QV_MAX(0, QV_MIN(QV_MIN(n_top, n_vocab), QV_SAMPLER_MAX_LOGPROBS));
    const double log_z = raw_log_z(row, n_vocab, lp, n_top);
    for (int j = 0; j < lp->n_top; j++)
        lp->top_logprobs[j] = (float)((double)lp->top_logprobs[j] - log_z);
    lp->token = token;
    lp->logprob = token >= 0 && token < n_vocab ? (float)((double)row[token] - log_z) : -INFINITY;
}

int qv_logprob_rank(const float *row, int n_vocab, int32_t token) {
    QV_ASSERT(token >= 0 && token < n_vocab);
    const float v = row[token];
    int rank = 1;
    for (int j = 0; j < n_vocab; j++)
        rank += row[j] > v;
    return rank;
}

const qv_sampling_params *qv_sampler_params(const qv_sampler *s) { return &s->p; }

bool qv_sampler_has_penalties(const qv_sampler *s) { return penalties_active(s); }

double qv_sampler_next_uniform(qv_sampler *s) { return rng_uniform(s->rng); }

int qv_sampler_context_size(const qv_sampler *s) { return s->n_seen; }

int qv_sampler_context(const qv_sampler *s, qv_token_count *out, int cap) {
    const int n = QV_MIN(cap, s->n_seen);
    for (int j = 0; j < n; j++) {
        const int32_t id = s->seen[j];
        out[j] = (qv_token_count){id, s->state[id] & COUNT_MASK};
    }
    return n;
}

void qv_sampler_probs(qv_sampler *s, float *logits, float *probs) {
    memset(probs, 0, (size_t)s->n_vocab * sizeof(*probs));
    if (qv_sampler_has_edits(s)) apply_edits(s, logits);
    if (penalties_active(s)) apply_penalties(s, logits);
    if (is_greedy(s)) {
        probs[argmax_first(logits, s->n_vocab)] = 1.0f;
        return;
    }
    double w;
    size_t nc = build_candidates(s, logits, &w);
    if (nc == 0) {
        probs[argmax_first(logits, s->n_vocab)] = 1.0f;
        return;
    }
    for (size_t j = 0; j < nc; j++)
        probs[s->w->cand[j].id] = (float)((double)s->w->cand[j].e / w);
}
