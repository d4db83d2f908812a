/*
 * model.h - the loaded base model: configuration plus weight views, in Hugging Face layout.
 *
 * Loaders (model.c) read an HF model directory (config.json + model.safetensors or a sharded
 * index) or a GGUF file, validate every shape against the configuration, and produce this one
 * structure. GGUF llama-arch Q/K rows are un-permuted at load (FORMATS.md 3.6, option A) so the
 * forward pass always uses HF rotate_half RoPE and HF-trained adapters apply unchanged.
 *
 * Weights stay in their stored dtype (mmapped; only q/k of permuted GGUF files and small 1-D
 * tensors are copied). 1-D tensors (norm weights, biases) are always converted to F32.
 * Immutable after load: any thread may read it; only the owner frees it.
 */
#ifndef QV_MODEL_H
#define QV_MODEL_H

#include <stdbool.h>
#include <stdio.h>

#include "core.h"
#include "dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

enum qv_arch { QV_ARCH_LLAMA = 0, QV_ARCH_MISTRAL, QV_ARCH_QWEN2 };
enum qv_rope_scaling { QV_ROPE_NONE = 0, QV_ROPE_LINEAR, QV_ROPE_LLAMA3, QV_ROPE_DYNAMIC };
enum qv_model_format { QV_FORMAT_SAFETENSORS = 0, QV_FORMAT_GGUF };

#define QV_MAX_EOS 8

typedef struct qv_model_config {
    enum qv_arch arch;
    int n_vocab;      /* rows of the embedding / lm_head */
    int dim;          /* hidden_size */
    int n_ff;         /* intermediate_size */
    int n_layers;     /* num_hidden_layers */
    int n_heads;      /* num_attention_heads */
    int n_kv_heads;   /* num_key_value_heads (GQA when < n_heads) */
    int head_dim;     /* config head_dim or dim / n_heads */
    int max_pos;      /* max_position_embeddings (context_length) */
    float norm_eps;   /* rms_norm_eps */
    float rope_theta; /* rope base */
    enum qv_rope_scaling rope_scaling;
    float rope_factor;                                 /* linear / llama3 / dynamic factor */
    float rope_low_freq_factor, rope_high_freq_factor; /* llama3 */
    int rope_orig_max_pos;                             /* llama3 original_max_position_embeddings */
    int sliding_window;                                /* 0 = full attention */
    bool tie_embeddings;
    bool qkv_bias; /* q/k/v projections carry a bias (qwen2, or llama attention_bias) */
    bool o_bias;   /* o_proj bias (llama attention_bias) */
    bool mlp_bias; /* gate/up/down bias (llama mlp_bias) */
    int bos_id;    /* -1 when unknown */
    int eos_ids[QV_MAX_EOS];
    int n_eos;
    int pad_id; /* -1 when unknown */
} qv_model_config;

typedef struct qv_layer_weights {
    qv_tensor attn_norm;            /* (dim) F32 */
    qv_tensor wq;                   /* (n_heads*head_dim, dim), HF row order */
    qv_tensor wk;                   /* (n_kv_heads*head_dim, dim), HF row order */
    qv_tensor wv;                   /* (n_kv_heads*head_dim, dim) */
    qv_tensor wo;                   /* (dim, n_heads*head_dim) */
    qv_tensor bq, bk, bv, bo;       /* F32 biases; data == NULL when absent */
    qv_tensor ffn_norm;             /* (dim) F32 */
    qv_tensor w_gate;               /* (n_ff, dim) */
    qv_tensor w_up;                 /* (n_ff, dim) */
    qv_tensor w_down;               /* (dim, n_ff) */
    qv_tensor b_gate, b_up, b_down; /* F32; data == NULL when absent */
} qv_layer_weights;

typedef struct qv_model {
    qv_model_config cfg;
    enum qv_model_format format;
    char *path;                 /* the path given to qv_model_load (owned) */
    char *name;                 /* general.name / _name_or_path / directory name (owned) */
    qv_tensor tok_embd;         /* (n_vocab, dim) */
    qv_tensor out_norm;         /* (dim) F32 */
    qv_tensor lm_head;          /* (n_vocab, dim); same data as tok_embd when tied */
    qv_layer_weights *layers;   /* [n_layers] (owned array) */
    float *rope_inv_freq;       /* [head_dim/2] final inverse frequencies incl. scaling (owned) */
    size_t n_weight_bytes;      /* bytes of all weight tensors as stored */
    size_t n_params;            /* number of weight elements */
    enum qv_dtype main_dtype;   /* dtype of most projection weights (for reporting) */
    struct qv_gguf *gguf;       /* open GGUF file (tokenizer metadata lives there) or NULL */
    char *dir;                  /* HF directory (tokenizer.json lives there) or NULL */
    struct qv_model_priv *priv; /* loader-private: mmaps, owned buffers */
} qv_model;

/* Loads a model from an HF directory or a .gguf file. On success *out owns everything and must
 * be released with qv_model_free. On failure returns the status and fills err with a one-line
 * message naming the file and the problem; nothing is leaked. Any thread; slow (mmaps files). */
qv_status qv_model_load(const char *path, qv_model **out, qv_error *err);

/* Releases a model and everything it owns. Accepts NULL. */
void qv_model_free(qv_model *m);

/* Prints architecture, sizes, dtypes and memory use (the `quiver info` report). */
void qv_model_print_info(const qv_model *m, FILE *f);

const char *qv_arch_name(enum qv_arch a);

#ifdef __cplusplus
}
#endif
#endif /* QV_MODEL_H */
