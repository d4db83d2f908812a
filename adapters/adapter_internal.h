/*
 * adapter_internal.h - helpers shared by the adapter loaders (adapter.c, peft.c, bottleneck.c):
 * the load context, tracked F32 / 16-bit allocations, tensor shape checks + conversion, JSON
 * accessors and HF module path parsing.
 *
 * Not public: only files under adapters/ include it. Single-threaded per load context.
 */
#ifndef QV_ADAPTER_INTERNAL_H
#define QV_ADAPTER_INTERNAL_H

#include <cjson/cJSON.h>

#include "adapters/adapters.h"
#include "engine/safetensors.h"

typedef struct qv__adapter_ctx {
    qv_adapter *ad;
    const qv_model *base;  /* NULL when loading for inspection only */
    qv_adapter_limits lim; /* zeros = no limits */
    const qv_st_file *st;  /* the weights */
    const cJSON *cfg;      /* the config root (PEFT) or its "config" object (AdapterHub) */
    const cJSON *root;     /* the config root */
    qv_error *err;
} qv__adapter_ctx;

/* A process-unique adapter uid (qv_adapter.uid), never 0. Any thread. */
uint64_t qv__adapter_next_uid(void);
/* The first part a LoRA adapter has beyond low-rank deltas on the decoder projections, as
 * words for an error ("DoRA", "embedding LoRA", "lm_head LoRA", "modules_to_save", "trainable
 * tokens"), or NULL. lora_bias and aLoRA are the callers' to weigh. */
const char *qv__adapter_lora_extra(const qv_adapter *ad);
/* Allocates n floats owned by ctx->ad (freed by qv_adapter_free). NULL + err on failure. */
float *qv__adapter_alloc(qv__adapter_ctx *c, size_t n);
/* Frees a temporary array of n floats obtained from qv__adapter_alloc / qv__adapter_take. */
void qv__adapter_release(qv__adapter_ctx *c, float *p, size_t n);
/* Registers p (from qv_malloc) as owned by ad. Frees p and returns QV_ERR_NOMEM on failure. */
qv_status qv__adapter_own(qv_adapter *ad, void *p);

/* Checks that t has exactly the given shape (n_dims entries) and converts it to a new F32
 * array owned by ad, refusing non-finite values. Errors name the tensor, expected and actual. */
qv_status qv__adapter_take(qv__adapter_ctx *c, const qv_st_tensor *t, int n_dims,
                           const int64_t *shape, float **out);
/* The same for a tensor stored as F16 or BF16 (t->dtype must be one of them), keeping its raw
 * 16-bit values: a new array of n_elems uint16_t owned by ad. */
qv_status qv__adapter_take16(qv__adapter_ctx *c, const qv_st_tensor *t, int n_dims,
                             const int64_t *shape, uint16_t **out);
/* Formats t's shape as "[a, b]" into buf. */
const char *qv__adapter_shape_str(const qv_st_tensor *t, char *buf, size_t n);

/* Config accessors. Absent or JSON null -> default (returns QV_OK). Wrong type -> QV_ERR_INVALID
 * naming the key. */
qv_status qv__cfg_int(qv__adapter_ctx *c, const cJSON *o, const char *key, int def, int *out);
qv_status qv__cfg_num(qv__adapter_ctx *c, const cJSON *o, const char *key, double def, double *out);
qv_status qv__cfg_bool(qv__adapter_ctx *c, const cJSON *o, const char *key, bool def, bool *out);
/* String value or NULL when absent/null; QV_ERR_INVALID when present but not a string. */
qv_status qv__cfg_str(qv__adapter_ctx *c, const cJSON *o, const char *key, const char **out);
/* True when key is present with a value other than null / false / 0 / "" / [] / {}. */
bool qv__cfg_set(const cJSON *o, const char *key);

/* Removes a leading "base_model.model." from a PEFT key. */
const char *qv__adapter_strip_prefix(const char *key);
/* Parses "<...>layers.N.(self_attn|mlp).<x>_proj" at the start of path. On success stores the
 * layer and projection and returns the rest of the path after the projection name (possibly
 * ""); NULL when path is not a decoder projection. */
const char *qv__adapter_parse_proj(const char *path, int *layer, enum qv_proj *proj);
/* Expected (n_out, n_in) of a projection for the base (or for dims taken from the adapter). */
void qv__adapter_proj_dims(const qv_adapter *ad, const qv_model *base, enum qv_proj p, int *n_out,
                           int *n_in);
/* Ensures ad->layers has at least n layers (grows when loading without a base). */
qv_status qv__adapter_ensure_layers(qv__adapter_ctx *c, int n);

/* Format loaders (peft.c, bottleneck.c): fill c->ad from c->cfg and c->st. */
qv_status qv__adapter_load_peft(qv__adapter_ctx *c);
qv_status qv__adapter_load_bottleneck(qv__adapter_ctx *c);

#endif
