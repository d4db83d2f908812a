/*
 * adapters.h - parameter-efficient adapters (FORMATS.md 4 and 5): load one adapter from disk or
 * from memory, validate it against the base model, and hold it as host arrays in HF layout
 * ready for the forward pass: F32, except the LoRA A/B matrices of the decoder projections,
 * which stay in the file's F16 or BF16 when the file stores them so (half the memory and half
 * the bytes read per decode step; widening to F32 is exact, so nothing is lost).
 *
 * What it is: the on-disk formats of PEFT (LoRA incl. rsLoRA, rank/alpha patterns, DoRA,
 * lora_bias, embedding / lm_head LoRA, modules_to_save, trainable tokens; IA3; prefix tuning;
 * prompt tuning; P-tuning; adaption prompt) and AdapterHub bottleneck adapters (seq_bn,
 * double_seq_bn, par_bn). Pickle files are refused, never parsed.
 * What it is not: the store, the registry or the device pool; it never runs the model.
 * Invariants: a loaded qv_adapter is immutable, every array holds finite values, every shape
 * fits the base model it was loaded against (when one was given). All fields below are
 * read-only for users; only qv_adapter_free releases them.
 * Threads: loading and freeing may run on any thread (worker pool); a loaded adapter may be read
 * by any number of threads.
 */
#ifndef QV_ADAPTERS_H
#define QV_ADAPTERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/core.h"
#include "engine/model.h"

#ifdef __cplusplus
extern "C" {
#endif

enum qv_adapter_kind {
    QV_ADAPTER_LORA = 0,        /* PEFT LORA (incl. DoRA, rsLoRA) */
    QV_ADAPTER_IA3,             /* PEFT IA3 */
    QV_ADAPTER_PREFIX_TUNING,   /* PEFT PREFIX_TUNING */
    QV_ADAPTER_PROMPT_TUNING,   /* PEFT PROMPT_TUNING */
    QV_ADAPTER_P_TUNING,        /* PEFT P_TUNING */
    QV_ADAPTER_ADAPTION_PROMPT, /* PEFT ADAPTION_PROMPT (LLaMA-Adapter) */
    QV_ADAPTER_BOTTLENECK,      /* AdapterHub seq_bn / double_seq_bn / par_bn */
    QV_ADAPTER_KIND_COUNT
};

/* Per-layer projections an adapter may act on, in HF naming. */
enum qv_proj {
    QV_PROJ_Q = 0, /* self_attn.q_proj (n_heads*head_dim, dim) */
    QV_PROJ_K,     /* self_attn.k_proj (n_kv_heads*head_dim, dim) */
    QV_PROJ_V,     /* self_attn.v_proj (n_kv_heads*head_dim, dim) */
    QV_PROJ_O,     /* self_attn.o_proj (dim, n_heads*head_dim) */
    QV_PROJ_GATE,  /* mlp.gate_proj (n_ff, dim) */
    QV_PROJ_UP,    /* mlp.up_proj (n_ff, dim) */
    QV_PROJ_DOWN,  /* mlp.down_proj (dim, n_ff) */
    QV_PROJ_COUNT
};

/* Bottleneck activation functions (transformers get_activation names). */
enum qv_bn_act {
    QV_BN_ACT_RELU = 0,
    QV_BN_ACT_SILU,      /* "swish" / "silu": x*sigmoid(x) */
    QV_BN_ACT_GELU,      /* erf form */
    QV_BN_ACT_GELU_TANH, /* "gelu_new": tanh approximation */
    QV_BN_ACT_TANH,
    QV_BN_ACT_SIGMOID,
    QV_BN_ACT_LEAKY_RELU, /* slope 0.01 */
    QV_BN_ACT_IDENTITY    /* "linear" / "identity" */
};

/* residual_before_ln of BnConfig. */
enum qv_bn_residual { QV_BN_RES_AFTER_LN = 0, QV_BN_RES_BEFORE_LN, QV_BN_RES_POST_ADD };

typedef struct qv_adapter_limits {
    int max_rank;          /* largest LoRA rank accepted; 0 = no limit */
    int max_virtual;       /* largest num_virtual_tokens / adapter_len; 0 = no limit */
    size_t max_n_bytes;    /* largest host size of the loaded adapter (n_bytes); 0 = no limit */
    bool strict_base_name; /* refuse (instead of warn) when the base model name clearly differs */
} qv_adapter_limits;

/* One LoRA delta on a linear map W (n_out, n_in): y += scale * (B (A x) + b_bias).
 * rank == 0 means "no LoRA on this projection" and every pointer is NULL.
 * A and B are held in `wtype`: QV_DTYPE_F32 in a / b (always so for embed_lora and
 * lm_head_lora), or QV_DTYPE_F16 / QV_DTYPE_BF16 in a16 / b16 (raw IEEE half / bfloat16 bits)
 * for a decoder projection whose file stores both lora_A and lora_B in that dtype; the other
 * pair of pointers is NULL. qv_lora_a_at / qv_lora_b_at read either. Everything else is F32. */
typedef struct qv_lora {
    int rank;
    float scale; /* alpha/r, or alpha/sqrt(r) with use_rslora; patterns applied */
    int n_in, n_out;
    enum qv_dtype wtype; /* dtype of A and B: F32, F16 or BF16 (see above) */
    float *a;            /* (rank, n_in); for embeddings (rank, n_vocab) = lora_embedding_A */
    float *b;            /* (n_out, rank); for embeddings (dim, rank) = lora_embedding_B */
    uint16_t *a16;       /* (rank, n_in) when wtype is F16 / BF16, else NULL */
    uint16_t *b16;       /* (n_out, rank) when wtype is F16 / BF16, else NULL */
    float *b_bias;       /* (n_out) lora_B.bias (lora_bias=true) or NULL */
    float *magnitude;    /* (n_out) DoRA lora_magnitude_vector or NULL */
    float *dora_scale;   /* (n_out) m / ||W + scale*B*A||_row (precomputed with the base) or NULL */
} qv_lora;

/* One bottleneck adapter at one location of one layer (FORMATS.md 5.3). */
typedef struct qv_bn_unit {
    int d;                            /* bottleneck size D; 0 = no adapter here */
    float *down_w;                    /* (d, dim) */
    float *down_b;                    /* (d) */
    float *up_w;                      /* (dim, d) */
    float *up_b;                      /* (dim) */
    float *ln_before_w, *ln_before_b; /* (dim) each, when ln_before; else NULL */
    float *ln_after_w, *ln_after_b;   /* (dim) each, when ln_after; else NULL */
    float scaling;                    /* fixed or learned scalar (1.0 when channel) */
    float *scaling_ch;                /* (dim) channel scaling or NULL */
} qv_bn_unit;

typedef struct qv_adapter_layer {
    qv_lora lora[QV_PROJ_COUNT];
    float *ia3[QV_PROJ_COUNT]; /* (n_out) output scaling, or (n_in) when ia3_input; or NULL */
    bool ia3_input[QV_PROJ_COUNT];
    qv_bn_unit bn_attn; /* after the attention sub-block (mh_adapter) */
    qv_bn_unit bn_ffn;  /* after the FFN sub-block (output_adapter) */
} qv_adapter_layer;

typedef struct qv_adapter {
    enum qv_adapter_kind kind;
    char *base_name;  /* base_model_name_or_path / model_name from the config, or NULL (owned) */
    char *name;       /* AdapterHub adapter name, or NULL (owned) */
    int n_layers;     /* layers of the base (or inferred from keys when loaded without a base) */
    int dim, n_vocab; /* base hidden size / vocab (0 when unknown) */
    int n_kv_heads, head_dim;
    qv_adapter_layer *layers; /* [n_layers] (owned) */

    /* ---- LoRA extras ---- */
    bool use_rslora, use_dora, lora_bias;
    qv_lora embed_lora;     /* a: (rank, n_vocab), b: (dim, rank); rank 0 when absent */
    qv_lora lm_head_lora;   /* a: (rank, dim), b: (n_vocab, rank); rank 0 when absent */
    float *embed_replace;   /* (n_vocab, dim) modules_to_save embed_tokens or NULL */
    float *lm_head_replace; /* (n_vocab, dim) modules_to_save lm_head or NULL */
    int n_trainable_tokens;
    int32_t *trainable_ids; /* [n_trainable_tokens] token ids */
    float *trainable_rows;  /* (n_trainable_tokens, dim) new embedding rows */
    /* activated LoRA (alora_invocation_tokens): the LoRA acts from the start of the last
     * occurrence of these tokens in a request's prompt on (qv_adapter_alora_start) */
    int n_alora_tokens;    /* 0: an ordinary adapter */
    int32_t *alora_tokens; /* [n_alora_tokens] */

    /* ---- prompt learning ---- */
    int n_virtual;      /* virtual tokens (prefix / prompt / p-tuning) */
    float *prefix_k;    /* (n_layers, n_virtual, n_kv_heads*head_dim), raw (no RoPE) */
    float *prefix_v;    /* (n_layers, n_virtual, n_kv_heads*head_dim) */
    float *prompt_embd; /* (n_virtual, dim) prompt / p-tuning input embeddings */

    /* ---- adaption prompt: layers ap_first_layer .. n_layers-1 ---- */
    int ap_n_layers, ap_len, ap_first_layer;
    float *ap_prompt; /* (ap_n_layers, ap_len, dim) */
    float *ap_gate;   /* (ap_n_layers) raw gates (no tanh) */

    /* ---- bottleneck (per-layer units live in layers[i].bn_*) ---- */
    bool bn_parallel, bn_mh_adapter, bn_output_adapter;
    bool bn_original_ln_before, bn_original_ln_after, bn_ln_before, bn_ln_after;
    bool bn_adapter_residual_before_ln;
    enum qv_bn_residual bn_residual;
    enum qv_bn_act bn_act;
    char bn_scaling_mode[16]; /* "fixed", "learned" or "channel" */

    size_t n_bytes;     /* bytes of all weight arrays owned (F32 and 16-bit) */
    uint64_t uid;       /* process-unique, never reused, from 1 for every loaded adapter (0: one
                           built by hand); names its K/V in the engine's prefix reuse */
    bool has_base;      /* validated (and DoRA precomputed) against a base model */
    void **priv_allocs; /* internal: every array above, for qv_adapter_free */
    size_t priv_n, priv_cap;
} qv_adapter;

/*
 * Loads the adapter in directory `dir` (adapter_config.json + adapter_model.safetensors, or
 * AdapterHub adapter_config.json + adapter.safetensors). `base` may be NULL (inspection only:
 * shapes are checked for internal consistency, DoRA scales are not computed); otherwise every
 * shape is checked against it. `lim` may be NULL (no limits).
 * Owner: on success *out belongs to the caller (qv_adapter_free). On failure nothing is leaked,
 * *out is NULL and err holds one line naming the file, tensor or option at fault:
 * QV_ERR_NOT_FOUND (missing file or tensor), QV_ERR_INVALID (malformed, shape mismatch,
 * non-finite values, unexpected keys), QV_ERR_UNSUPPORTED (pickle files, unknown kinds,
 * options quiver does not implement), QV_ERR_LIMIT (rank / size limits), QV_ERR_NOMEM.
 * Thread: any (slow; meant for the worker pool).
 */
qv_status qv_adapter_load(const char *dir, const qv_model *base, const qv_adapter_limits *lim,
                          qv_adapter **out, qv_error *err);

/* Same from memory: the config JSON text (config_len bytes, need not be NUL-terminated) and the
 * safetensors bytes. The buffers are only read during the call. Errors as qv_adapter_load
 * (messages name no file). */
qv_status qv_adapter_load_buffer(const char *config, size_t config_len, const void *weights,
                                 size_t weights_len, const qv_model *base,
                                 const qv_adapter_limits *lim, qv_adapter **out, qv_error *err);

/* Releases an adapter and everything it owns. Accepts NULL. */
void qv_adapter_free(qv_adapter *ad);

/* Bytes of host memory held by the adapter's arrays. */
size_t qv_adapter_n_bytes(const qv_adapter *ad);

/* Prints kind, targets, ranks, scales, virtual tokens, sizes and whether it was validated
 * against a base model. Any thread. */
void qv_adapter_describe(const qv_adapter *ad, FILE *f);

#define QV_ALORA_MAX_TOKENS 64 /* alora_invocation_tokens accepted */

/* Activated LoRA (PEFT's aLoRA): the position from which adapter `ad` acts on a sequence whose
 * prompt is prompt[0..n): the start of the last occurrence of its invocation tokens in the
 * prompt; the adapter then acts on every later prompt position and every generated token, and
 * earlier positions see the base model. INT32_MAX when the prompt lacks them (the adapter never
 * acts, as in PEFT), 0 for an adapter that is not an aLoRA (or NULL). Any thread. */
int32_t qv_adapter_alora_start(const qv_adapter *ad, const int32_t *prompt, size_t n);

/* ---- merging (LoRAX's merged_adapters, PEFT's merge_utils) ---- */

#define QV_MERGE_MAX 16 /* adapters one merge combines */

enum qv_merge_strategy {
    QV_MERGE_LINEAR = 0, /* sum of w_i * t_i */
    QV_MERGE_TIES,       /* magnitude-pruned, sign-elected, disjoint mean (TIES-Merging) */
    QV_MERGE_DARE_LINEAR,
    QV_MERGE_DARE_TIES, /* random drop with rescale (DARE), then linear / ties */
    QV_MERGE_CAT,       /* PEFT's "cat": the ranks side by side, the exact sum of w_i s_i B_i A_i */
    QV_MERGE_STRATEGY_COUNT
};

enum qv_merge_sign { QV_MERGE_SIGN_TOTAL = 0, QV_MERGE_SIGN_FREQUENCY };

typedef struct qv_merge_params {
    int n;                       /* adapters, 1..QV_MERGE_MAX */
    float weights[QV_MERGE_MAX]; /* finite */
    enum qv_merge_strategy strategy;
    double density;          /* (0, 1]: the fraction ties / dare keep (1: no pruning) */
    enum qv_merge_sign sign; /* ties / dare_ties: how the majority sign is elected */
    uint64_t seed;           /* dare: the drop mask's seed */
} qv_merge_params;

/*
 * Merges n LoRA adapters into a new LoRA adapter the way LoRAX's merged_adapters does: for
 * every decoder projection, lora_A and lora_B are each combined over the adapters that adapt it
 * (with their weights), by PEFT's merge_utils semantics:
 *   linear      sum_i w_i t_i
 *   ties        t_i pruned to its int(density * numel) largest magnitudes (lowest index first
 *               among equal ones); the majority sign per element elected on the unweighted
 *               t_i (total: sign of sum_i t_i; frequency: of sum_i sign t_i; 0 counts as +);
 *               sum of w_i t_i over the t_i of that sign, divided by their count (at least 1)
 *   dare_linear t_i with each element kept when u < density (u from mix64, below) and divided
 *               by density, then linear
 *   dare_ties   the same drop, then ties' election and disjoint mean
 * (density 1: no pruning). The merged projection's scale is the first adapter's (in order) that
 * adapts it; its rank must be the same in every adapter that adapts it. Or
 *   cat         PEFT's add_weighted_adapter "cat": the adapters' ranks side by side, A's rows
 *               of adapter i times w_i * scale_i, B's columns as they are, scale 1: exactly
 *               sum_i w_i scale_i B_i A_i; ranks may differ, the merged rank is their sum
 *               (density and sign unused).
 * A and B are F32.
 * u of element e (row-major) of tensor `which` (0 = A, 1 = B) of projection p of layer l of the
 * i-th adapter: mix64(mix64(seed ^ mix64(((i * 65536 + l) * 8 + p) * 2 + which)) + e) >> 11,
 * times 2^-53, where mix64 is SplitMix64's output function (x += 0x9E3779B97F4A7C15, then the
 * two xor-shift-multiply rounds and a final xor-shift).
 * Refused (QV_ERR_UNSUPPORTED): adapters other than plain LoRA (DoRA, lora_bias, embedding /
 * lm_head LoRA, modules_to_save, trainable tokens, other kinds); QV_ERR_INVALID: different
 * ranks on one projection, different base models, bad params; errors name the adapter by its
 * position (from 1). Owner: *out belongs to the caller (qv_adapter_free); a new uid.
 * Thread: any (reads the inputs only; time linear in their size).
 */
qv_status qv_adapter_merge(const qv_adapter *const *ads, const qv_merge_params *p, qv_adapter **out,
                           qv_error *err);

/* "linear", "ties", "dare_linear", "dare_ties", "cat"; NULL when out of range. */
const char *qv_merge_strategy_name(enum qv_merge_strategy s);

/* Element i (row-major) of lo's A (rank, n_in) / B (n_out, rank) as F32, whatever lo->wtype.
 * The caller keeps i in range. Any thread. */
float qv_lora_a_at(const qv_lora *lo, size_t i);
float qv_lora_b_at(const qv_lora *lo, size_t i);

/* Output and input widths of projection p in a model of config c (the weight is (n_out, n_in)).
 * Any thread. */
void qv_proj_dims(const qv_model_config *c, enum qv_proj p, int *n_out, int *n_in);
int qv_proj_n_in(const qv_model_config *c, enum qv_proj p);
int qv_proj_n_out(const qv_model_config *c, enum qv_proj p);

/* Names ("LORA", "q_proj", "relu", ...). Never NULL. */
const char *qv_adapter_kind_name(enum qv_adapter_kind k);
const char *qv_proj_name(enum qv_proj p);
const char *qv_bn_act_name(enum qv_bn_act a);

#ifdef __cplusplus
}
#endif
#endif /* QV_ADAPTERS_H */
