/*
 * proto.c - JSON codecs of the OpenAI-compatible API (see proto.h and proto/openapi.yaml).
 *
 * Decoding parses with cJSON, copies every value the server needs into plain C fields and
 * deletes the tree before returning. Every type or range error names its field. Encoding
 * builds a cJSON tree and prints it unformatted.
 * Not here: limits that need the model or the server's budgets. Thread: pure functions.
 */
#include "proto/proto.h"
#include "proto/proto_internal.h"

#include "adapters/adapters.h"
#include "engine/json_grammar.h"
#include "engine/json_text.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static qv_status fail(qv_proto_error *e, qv_status s, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

qv_status qv__proto_failv(qv_proto_error *e, qv_status s, const char *param, const char *fmt,
                          va_list ap) {
    if (e) {
        e->status = s;
        snprintf(e->param, sizeof(e->param), "%s", param ? param : "");
        vsnprintf(e->message, sizeof(e->message), fmt, ap);
    }
    return s;
}

static qv_status fail(qv_proto_error *e, qv_status s, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    qv__proto_failv(e, s, param, fmt, ap);
    va_end(ap);
    return s;
}

qv_status qv__proto_nomem(qv_proto_error *e) {
    return fail(e, QV_ERR_NOMEM, NULL, "out of memory while decoding the request");
}

const cJSON *qv__proto_field(const cJSON *root, const char *name) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, name);
    return f && !cJSON_IsNull(f) ? f : NULL;
}

static qv_status get_float(const cJSON *root, const char *name, double lo, double hi, float *out,
                           qv_proto_error *e) {
    const cJSON *f = qv__proto_field(root, name);
    if (!f) return QV_OK;
    if (!cJSON_IsNumber(f) || !isfinite(f->valuedouble))
        return fail(e, QV_ERR_INVALID, name, "'%s' must be a number", name);
    if (f->valuedouble < lo || f->valuedouble > hi)
        return fail(e, QV_ERR_INVALID, name, "'%s' must be in [%g, %g], got %g", name, lo, hi,
                    f->valuedouble);
    *out = (float)f->valuedouble;
    return QV_OK;
}

qv_status qv__proto_get_int(const cJSON *root, const char *name, double lo, double hi, int *out,
                            qv_proto_error *e) {
    const cJSON *f = qv__proto_field(root, name);
    if (!f) return QV_OK;
    if (!cJSON_IsNumber(f) || !isfinite(f->valuedouble) || f->valuedouble != floor(f->valuedouble))
        return fail(e, QV_ERR_INVALID, name, "'%s' must be an integer", name);
    if (f->valuedouble < lo || f->valuedouble > hi)
        return fail(e, QV_ERR_INVALID, name, "'%s' must be in [%.0f, %.0f], got %.0f", name, lo, hi,
                    f->valuedouble);
    *out = (int)f->valuedouble;
    return QV_OK;
}

static qv_status get_bool(const cJSON *root, const char *name, bool *out, qv_proto_error *e) {
    const cJSON *f = qv__proto_field(root, name);
    if (!f) return QV_OK;
    if (!cJSON_IsBool(f)) return fail(e, QV_ERR_INVALID, name, "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(f);
    return QV_OK;
}

static qv_status get_string(const cJSON *root, const char *name, char **out, qv_proto_error *e) {
    const cJSON *f = qv__proto_field(root, name);
    if (!f) return QV_OK;
    if (!cJSON_IsString(f)) return fail(e, QV_ERR_INVALID, name, "'%s' must be a string", name);
    *out = qv_strdup(f->valuestring);
    return *out ? QV_OK : qv__proto_nomem(e);
}

/* A list of at most `max` non-empty strings of at most max_bytes (`one`: a single string too):
 * OpenAI stop, vLLM bad_words. */
static qv_status decode_strings(const cJSON *root, const char *name, bool one, int max,
                                int max_bytes, char ***out, size_t *n_out, qv_proto_error *e) {
    const cJSON *f = qv__proto_field(root, name);
    if (!f) return QV_OK;
    const bool str = one && cJSON_IsString(f);
    size_t n = str ? 1 : cJSON_IsArray(f) ? (size_t)cJSON_GetArraySize(f) : 0;
    const char *shape = one ? "a string or a list of strings" : "a list of strings";
    if (!str && !cJSON_IsArray(f))
        return fail(e, QV_ERR_INVALID, name, "'%s' must be %s", name, shape);
    if (n > (size_t)max)
        return fail(e, QV_ERR_INVALID, name, "'%s' has %zu strings; at most %d", name, n, max);
    if (n == 0) return QV_OK;
    if (!(*out = qv_calloc(n, sizeof(**out)))) return qv__proto_nomem(e);
    const cJSON *it = str ? f : f->child;
    for (size_t i = 0; i < n; i++, it = it->next) {
        if (!cJSON_IsString(it))
            return fail(e, QV_ERR_INVALID, name, "'%s' must be %s", name, shape);
        size_t len = strlen(it->valuestring);
        if (len == 0 || len > (size_t)max_bytes)
            return fail(e, QV_ERR_INVALID, name, "each %s string must have 1 to %d bytes", name,
                        max_bytes);
        if (!((*out)[i] = qv_strdup(it->valuestring))) return qv__proto_nomem(e);
        *n_out = i + 1;
    }
    return QV_OK;
}

/* A list of at most `max` token ids (vLLM stop_token_ids, allowed_token_ids) into *ids / *n. */
static qv_status decode_ids(const cJSON *root, const char *name, int max, int32_t **ids,
                            size_t *n_ids, qv_proto_error *e) {
    const cJSON *f = qv__proto_field(root, name);
    if (!f) return QV_OK;
    int n = cJSON_IsArray(f) ? cJSON_GetArraySize(f) : -1;
    if (n < 0 || n > max)
        return fail(e, QV_ERR_INVALID, name, "'%s' must be a list of at most %d token ids", name,
                    max);
    if (n == 0) return QV_OK;
    if (!(*ids = qv_malloc((size_t)n * sizeof(**ids)))) return qv__proto_nomem(e);
    const cJSON *it = f->child;
    for (int i = 0; i < n; i++, it = it->next) {
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
            it->valuedouble < 0 || it->valuedouble > INT32_MAX)
            return fail(e, QV_ERR_INVALID, name, "'%s' must be a list of token ids", name);
        (*ids)[(*n_ids)++] = (int32_t)it->valuedouble;
    }
    return QV_OK;
}

/* OpenAI logit_bias: {"<token id>": bias in [-100, 100], ...}, up to QV_PROTO_MAX_LOGIT_BIAS. */
static qv_status decode_logit_bias(const cJSON *root, qv_proto_request *r, qv_proto_error *e) {
    const cJSON *f = qv__proto_field(root, "logit_bias");
    if (!f || cJSON_IsNull(f)) return QV_OK;
    int n = cJSON_IsObject(f) ? cJSON_GetArraySize(f) : -1;
    if (n < 0 || n > QV_PROTO_MAX_LOGIT_BIAS)
        return fail(e, QV_ERR_INVALID, "logit_bias",
                    "'logit_bias' must be an object of at most %d token ids (as strings) to "
                    "biases",
                    QV_PROTO_MAX_LOGIT_BIAS);
    if (n == 0) return QV_OK;
    r->bias_ids = qv_malloc((size_t)n * sizeof(*r->bias_ids));
    r->bias_values = qv_malloc((size_t)n * sizeof(*r->bias_values));
    if (!r->bias_ids || !r->bias_values) return qv__proto_nomem(e);
    const cJSON *it = f->child;
    for (int i = 0; i < n; i++, it = it->next) {
        const char *k = it->string;
        size_t kl = k ? strlen(k) : 0;
        bool digits = kl > 0 && kl <= 10;
        for (size_t j = 0; digits && j < kl; j++)
            digits = k[j] >= '0' && k[j] <= '9';
        const double id = digits ? strtod(k, NULL) : -1.0;
        if (!digits || id > INT32_MAX)
            return fail(e, QV_ERR_INVALID, "logit_bias",
                        "'logit_bias' keys must be token ids written in decimal");
        if (!cJSON_IsNumber(it) || !(fabs(it->valuedouble) <= QV_PROTO_MAX_BIAS))
            return fail(e, QV_ERR_INVALID, "logit_bias",
                        "each 'logit_bias' value must be a number in [-100, 100]");
        r->bias_ids[i] = (int32_t)id;
        r->bias_values[i] = (float)it->valuedouble;
        r->n_bias = (size_t)i + 1;
    }
    return QV_OK;
}

/* A list of token ids (non-empty). */
static qv_status ids_of(const cJSON *f, int32_t **out, size_t *n_out, const char *shape,
                        qv_proto_error *e) {
    int n = cJSON_IsArray(f) ? cJSON_GetArraySize(f) : -1;
    if (n < 0) return fail(e, QV_ERR_INVALID, "prompt", "%s", shape);
    if (n == 0) return fail(e, QV_ERR_INVALID, "prompt", "'prompt' must not be empty");
    *out = qv_malloc((size_t)n * sizeof(int32_t));
    if (!*out) return qv__proto_nomem(e);
    const cJSON *it = f->child;
    for (int i = 0; i < n; i++, it = it->next) {
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
            it->valuedouble < 0 || it->valuedouble > INT32_MAX)
            return fail(e, QV_ERR_INVALID, "prompt", "%s", shape);
        (*out)[i] = (int32_t)it->valuedouble;
    }
    *n_out = (size_t)n;
    return QV_OK;
}

/* A string, a list of ids, or a batch: a list of strings or a list of id lists. */
static qv_status decode_prompt(const cJSON *root, qv_proto_request *r, qv_proto_error *e) {
    const cJSON *f = qv__proto_field(root, "prompt");
    if (!f) return fail(e, QV_ERR_INVALID, "prompt", "'prompt' is required");
    if (cJSON_IsString(f)) {
        r->prompt_len = strlen(f->valuestring);
        r->prompt = qv_strdup(f->valuestring);
        return r->prompt ? QV_OK : qv__proto_nomem(e);
    }
    const char *shape = "'prompt' must be a string, a list of token ids, or a list of strings or "
                        "of token-id lists";
    if (!cJSON_IsArray(f)) return fail(e, QV_ERR_INVALID, "prompt", "%s", shape);
    const int n = cJSON_GetArraySize(f);
    const bool texts = n > 0 && cJSON_IsString(f->child);
    const bool lists = n > 0 && cJSON_IsArray(f->child);
    if (!texts && !lists) return ids_of(f, &r->prompt_ids, &r->n_prompt_ids, shape, e);
    if (n > QV_PROTO_MAX_CHOICES)
        return fail(e, QV_ERR_INVALID, "prompt", "'prompt' lists %d prompts; at most %d", n,
                    QV_PROTO_MAX_CHOICES);
    if (n > 1 && !(r->more = qv_calloc((size_t)n - 1, sizeof(*r->more)))) return qv__proto_nomem(e);
    const cJSON *it = f->child;
    for (int i = 0; i < n; i++, it = it->next) {
        qv_proto_prompt p = {0};
        qv_status s = QV_OK;
        if (texts && cJSON_IsString(it)) {
            p.len = strlen(it->valuestring);
            if (!(p.text = qv_strdup(it->valuestring))) s = qv__proto_nomem(e);
        } else if (lists && cJSON_IsArray(it)) {
            s = ids_of(it, &p.ids, &p.n_ids, shape, e);
        } else {
            s = fail(e, QV_ERR_INVALID, "prompt", "%s", shape);
        }
        if (i == 0) {
            r->prompt = p.text, r->prompt_len = p.len;
            r->prompt_ids = p.ids, r->n_prompt_ids = p.n_ids;
        } else {
            r->more[r->n_more++] = p;
        }
        if (s) return s;
    }
    return QV_OK;
}

/* Appends `s` to a growing NUL-terminated buffer. */
static bool append(char **buf, size_t *len, const char *s) {
    size_t n = strlen(s);
    char *b = qv_realloc(*buf, *len + n + 1);
    if (!b) return false;
    memcpy(b + *len, s, n + 1);
    *buf = b;
    *len += n;
    return true;
}

/* An assistant message's tool_calls ([{"id", "type": "function", "function": {"name",
 * "arguments": JSON text}}]): their names and argument texts. */
static qv_status decode_calls(const cJSON *calls, size_t i, qv_proto_message *out,
                              qv_proto_error *e) {
    if (!cJSON_IsArray(calls))
        return fail(e, QV_ERR_INVALID, "messages", "messages[%zu].tool_calls must be a list", i);
    const size_t n = (size_t)cJSON_GetArraySize(calls);
    if (!(out->calls = qv_calloc(n, sizeof(*out->calls)))) return qv__proto_nomem(e);
    const cJSON *c;
    cJSON_ArrayForEach(c, calls) {
        const cJSON *fn = cJSON_IsObject(c) ? qv__proto_field(c, "function") : NULL;
        const cJSON *name = fn ? qv__proto_field(fn, "name") : NULL,
                    *args = fn ? qv__proto_field(fn, "arguments") : NULL;
        const cJSON *id = cJSON_IsObject(c) ? qv__proto_field(c, "id") : NULL;
        const cJSON *type = cJSON_IsObject(c) ? qv__proto_field(c, "type") : NULL;
        cJSON *parsed = cJSON_IsString(args) ? cJSON_Parse(args->valuestring) : NULL;
        const bool ok = cJSON_IsString(name) && cJSON_IsObject(parsed) &&
                        (!id || cJSON_IsString(id)) && (!type || cJSON_IsString(type));
        cJSON_Delete(parsed);
        if (!ok)
            return fail(e, QV_ERR_INVALID, "messages",
                        "messages[%zu].tool_calls: each call needs function.name and "
                        "function.arguments (the text of a JSON object); id and type are strings",
                        i);
        qv_proto_call *o = &out->calls[out->n_calls++];
        if (!(o->name = qv_strdup(name->valuestring)) ||
            !(o->arguments = qv_strdup(args->valuestring)) ||
            (id && !(o->id = qv_strdup(id->valuestring))))
            return qv__proto_nomem(e);
    }
    return QV_OK;
}

static qv_status decode_messages(const cJSON *root, qv_proto_request *r, qv_proto_error *e) {
    const cJSON *f = qv__proto_field(root, "messages");
    if (!f) return fail(e, QV_ERR_INVALID, "messages", "'messages' is required");
    if (!cJSON_IsArray(f) || cJSON_GetArraySize(f) == 0)
        return fail(e, QV_ERR_INVALID, "messages", "'messages' must be a non-empty list");
    size_t n = (size_t)cJSON_GetArraySize(f);
    if (n > QV_PROTO_MAX_MESSAGES)
        return fail(e, QV_ERR_INVALID, "messages", "'messages' has %zu entries; at most %d", n,
                    QV_PROTO_MAX_MESSAGES);
    r->messages = qv_calloc(n, sizeof(*r->messages));
    if (!r->messages) return qv__proto_nomem(e);
    const cJSON *m = f->child;
    for (size_t i = 0; i < n; i++, m = m->next) {
        r->n_messages = i + 1;
        qv_proto_message *out = &r->messages[i];
        const cJSON *role = cJSON_IsObject(m) ? qv__proto_field(m, "role") : NULL;
        if (!role || !cJSON_IsString(role))
            return fail(e, QV_ERR_INVALID, "messages",
                        "messages[%zu] must be an object with a string 'role'", i);
        out->role = qv_strdup(role->valuestring);
        if (!out->role) return qv__proto_nomem(e);
        const cJSON *c = qv__proto_field(m, "content");
        size_t len = 0;
        if (!c) {
            out->content = qv_strdup("");
        } else if (cJSON_IsString(c)) {
            out->content = qv_strdup(c->valuestring);
        } else if (cJSON_IsArray(c)) {
            /* Content parts: only text parts are supported; they are concatenated. */
            out->content = qv_strdup("");
            for (const cJSON *p = c->child; p && out->content; p = p->next) {
                const cJSON *type = cJSON_IsObject(p) ? qv__proto_field(p, "type") : NULL;
                const cJSON *text = cJSON_IsObject(p) ? qv__proto_field(p, "text") : NULL;
                if (!type || !cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 ||
                    !text || !cJSON_IsString(text))
                    return fail(e, QV_ERR_INVALID, "messages",
                                "messages[%zu].content: only text parts are supported", i);
                if (!append(&out->content, &len, text->valuestring)) return qv__proto_nomem(e);
            }
        } else {
            return fail(e, QV_ERR_INVALID, "messages",
                        "messages[%zu].content must be a string or a list of text parts", i);
        }
        if (!out->content) return qv__proto_nomem(e);
        const cJSON *tcid = qv__proto_field(m, "tool_call_id");
        if (tcid && !cJSON_IsString(tcid))
            return fail(e, QV_ERR_INVALID, "messages",
                        "messages[%zu].tool_call_id must be a string", i);
        if (tcid && !(out->tool_call_id = qv_strdup(tcid->valuestring))) return qv__proto_nomem(e);
        const cJSON *calls = qv__proto_field(m, "tool_calls");
        if (calls && !(cJSON_IsArray(calls) && cJSON_GetArraySize(calls) == 0)) {
            qv_status st = decode_calls(calls, i, out, e);
            if (st) return st;
        }
    }
    return QV_OK;
}

/* A seed: an integer of magnitude at most 2^53 (exact in a double), >= 0 unless `negative`. */
static bool seed_ok(const cJSON *f, bool negative) {
    return cJSON_IsNumber(f) && f->valuedouble == floor(f->valuedouble) &&
           (negative || f->valuedouble >= 0) && fabs(f->valuedouble) <= 9007199254740992.0;
}

/* LoRAX's merged_adapters object (`prefix` names it in errors): ids (1..QV_MERGE_MAX adapter
 * names), weights (as many numbers; absent or empty: 1 each), merge_strategy ("linear",
 * "ties", "dare_linear", "dare_ties", and PEFT's "cat"), density ((0, 1], default 1),
 * majority_sign_method ("total" / "frequency") and quiver's seed. Absent or null: nothing. */
static qv_status decode_merged(const cJSON *root, const char *prefix, qv_proto_request *r,
                               qv_proto_error *e) {
    const cJSON *m = qv__proto_field(root, "merged_adapters");
    if (!m) return QV_OK;
    char pm[64];
    snprintf(pm, sizeof(pm), "%smerged_adapters", prefix);
    if (!cJSON_IsObject(m)) return fail(e, QV_ERR_INVALID, pm, "'%s' must be an object", pm);
    const cJSON *ids = qv__proto_field(m, "ids");
    const int n = cJSON_IsArray(ids) ? cJSON_GetArraySize(ids) : -1;
    if (n < 1 || n > QV_MERGE_MAX)
        return fail(e, QV_ERR_INVALID, pm, "'%s.ids' must list 1 to %d adapters", pm, QV_MERGE_MAX);
    const cJSON *w = qv__proto_field(m, "weights");
    const int nw = cJSON_IsArray(w) ? cJSON_GetArraySize(w) : w ? -1 : 0;
    if (nw != 0 && nw != n)
        return fail(e, QV_ERR_INVALID, pm,
                    "'%s.weights' must be a list of as many numbers as 'ids' (%d)", pm, n);
    if (!(r->merge_ids = qv_calloc((size_t)n, sizeof(*r->merge_ids))) ||
        !(r->merge_weights = qv_malloc((size_t)n * sizeof(*r->merge_weights))))
        return qv__proto_nomem(e);
    for (int i = 0; i < n; i++) {
        const cJSON *id = cJSON_GetArrayItem(ids, i), *wi = nw ? cJSON_GetArrayItem(w, i) : NULL;
        if (!cJSON_IsString(id) || !id->valuestring[0])
            return fail(e, QV_ERR_INVALID, pm, "'%s.ids' must hold adapter names", pm);
        if (wi &&
            (!cJSON_IsNumber(wi) || !isfinite(wi->valuedouble) || fabs(wi->valuedouble) > 1e6))
            return fail(e, QV_ERR_INVALID, pm, "'%s.weights' must hold numbers within +-1e6", pm);
        if (!(r->merge_ids[i] = qv_strdup(id->valuestring))) return qv__proto_nomem(e);
        r->n_merge = (size_t)i + 1;
        r->merge_weights[i] = wi ? (float)wi->valuedouble : 1.0f;
    }
    const cJSON *st = qv__proto_field(m, "merge_strategy");
    r->merge_strategy = st ? -1 : QV_MERGE_LINEAR;
    for (int k = 0; cJSON_IsString(st) && k < QV_MERGE_STRATEGY_COUNT; k++)
        if (!strcmp(st->valuestring, qv_merge_strategy_name((enum qv_merge_strategy)k)))
            r->merge_strategy = k;
    if (r->merge_strategy < 0)
        return fail(e, QV_ERR_INVALID, pm,
                    "'%s.merge_strategy' must be \"linear\", \"ties\", \"dare_linear\", "
                    "\"dare_ties\" or \"cat\"",
                    pm);
    const cJSON *d = qv__proto_field(m, "density");
    r->merge_density = cJSON_IsNumber(d) ? d->valuedouble : 1.0;
    if ((d && !cJSON_IsNumber(d)) || !(r->merge_density > 0.0 && r->merge_density <= 1.0))
        return fail(e, QV_ERR_INVALID, pm, "'%s.density' must be a number in (0, 1]", pm);
    const cJSON *sg = qv__proto_field(m, "majority_sign_method");
    const bool freq = cJSON_IsString(sg) && !strcmp(sg->valuestring, "frequency");
    if (sg && !freq && !(cJSON_IsString(sg) && !strcmp(sg->valuestring, "total")))
        return fail(e, QV_ERR_INVALID, pm,
                    "'%s.majority_sign_method' must be \"total\" or \"frequency\"", pm);
    r->merge_sign = freq ? QV_MERGE_SIGN_FREQUENCY : QV_MERGE_SIGN_TOTAL;
    const cJSON *sd = qv__proto_field(m, "seed");
    if (sd && !seed_ok(sd, false))
        return fail(e, QV_ERR_INVALID, pm, "'%s.seed' must be an integer >= 0", pm);
    r->merge_seed = sd ? (uint64_t)sd->valuedouble : 0;
    if (r->adapter)
        return fail(e, QV_ERR_INVALID, pm,
                    "name either one adapter ('%s') or 'merged_adapters', not both",
                    *prefix ? "adapter_id" : "model");
    return QV_OK;
}

static qv_status decode_model(const cJSON *root, qv_proto_request *r, qv_proto_error *e) {
    qv_status s = get_string(root, "model", &r->model, e);
    if (s) return s;
    char *adapter_id = NULL;
    s = get_string(root, "adapter_id", &adapter_id, e);
    if (s) return s;
    if (r->model) {
        const char *colon = strchr(r->model, ':');
        r->base = colon ? qv_strndup(r->model, (size_t)(colon - r->model)) : qv_strdup(r->model);
        if (!r->base) goto oom;
        if (colon && colon[1]) {
            r->adapter = qv_strdup(colon + 1);
            if (!r->adapter) goto oom;
        }
    }
    if (adapter_id && *adapter_id) {
        if (r->adapter && strcmp(r->adapter, adapter_id) != 0) {
            qv_free(adapter_id);
            return fail(e, QV_ERR_INVALID, "adapter_id",
                        "'adapter_id' names another adapter than 'model'");
        }
        qv_free(r->adapter);
        r->adapter = adapter_id;
        adapter_id = NULL;
    }
    qv_free(adapter_id);
    return QV_OK;
oom:
    qv_free(adapter_id);
    return qv__proto_nomem(e);
}

static qv_status decode_logprobs(const cJSON *root, qv_proto_request *r, qv_proto_error *e) {
    const cJSON *f = qv__proto_field(root, "logprobs");
    if (r->endpoint == QV_PROTO_COMPLETIONS) {
        /* completions: logprobs is an integer 0..20 (the number of alternatives). */
        if (!f) return QV_OK;
        int n = 0;
        qv_status s = qv__proto_get_int(root, "logprobs", 0, QV_PROTO_MAX_LOGPROBS, &n, e);
        if (s) return s;
        r->logprobs = true;
        r->top_logprobs = n;
        return QV_OK;
    }
    qv_status s = get_bool(root, "logprobs", &r->logprobs, e);
    if (s) return s;
    const cJSON *t = qv__proto_field(root, "top_logprobs");
    if (!t) return QV_OK;
    s = qv__proto_get_int(root, "top_logprobs", 0, QV_PROTO_MAX_LOGPROBS, &r->top_logprobs, e);
    if (s) return s;
    if (!r->logprobs && r->top_logprobs > 0)
        return fail(e, QV_ERR_INVALID, "top_logprobs",
                    "'top_logprobs' needs 'logprobs' set to true");
    return QV_OK;
}

static qv_status compile_schema(const cJSON *sch, const char *param, unsigned flags,
                                qv_proto_request *r, qv_proto_error *e);
static qv_status compile_regex_doc(const cJSON *re, const char *param, qv_proto_request *r,
                                   qv_proto_error *e);
static qv_status tgi_structured(const cJSON *p, qv_proto_request *r, qv_proto_error *e);

/* Structured output: response_format {"type": "json_schema", "json_schema": {"name": ...,
 * "schema": {...}, "strict": ...}} (OpenAI) or guided_json (vLLM: a schema object or its
 * text), compiled here so that a schema quiver cannot follow is refused with the reason. */
static qv_status decode_json_schema(const cJSON *root, qv_proto_request *r, qv_proto_error *e) {
    /* the ways to ask, at most one per request: a schema, JSON mode, or choices */
    const cJSON *sch = NULL, *choice = NULL;
    const char *param = NULL;
    bool json_mode = false;
    unsigned flags = 0;
    int asked = 0;
    const cJSON *rf = qv__proto_field(root, "response_format"),
                *t = rf ? qv__proto_field(rf, "type") : NULL;
    if (cJSON_IsString(t) && !strcmp(t->valuestring, "json_object")) {
        sch = qv__proto_field(rf, "schema"); /* with a schema: LoRAX's form of json_schema */
        json_mode = !sch;
        param = "response_format";
        asked++;
    } else if (cJSON_IsString(t) && !strcmp(t->valuestring, "json_schema")) {
        const cJSON *js = qv__proto_field(rf, "json_schema"),
                    *name = js ? qv__proto_field(js, "name") : NULL;
        if (!cJSON_IsObject(js))
            return fail(e, QV_ERR_INVALID, "response_format",
                        "'response_format.json_schema' must be an object with a 'schema'");
        if (name && !cJSON_IsString(name))
            return fail(e, QV_ERR_INVALID, "response_format",
                        "'response_format.json_schema.name' must be a string");
        if (!(sch = qv__proto_field(js, "schema")))
            return fail(e, QV_ERR_INVALID, "response_format",
                        "'response_format.json_schema.schema' is missing");
        param = "response_format";
        asked++;
    }
    const cJSON *f;
    if ((f = qv__proto_field(root, "guided_json")) && !cJSON_IsNull(f)) {
        if (!cJSON_IsString(f) && !cJSON_IsObject(f) && !cJSON_IsBool(f))
            return fail(e, QV_ERR_INVALID, "guided_json",
                        "'guided_json' must be a JSON schema (an object or its text)");
        sch = f, param = "guided_json", asked++;
    }
    if ((f = qv__proto_field(root, "guided_choice")) && !cJSON_IsNull(f))
        choice = f, param = "guided_choice", asked++;
    const cJSON *regex = NULL;
    if ((f = qv__proto_field(root, "guided_regex"))) regex = f, param = "guided_regex", asked++;
    const cJSON *so = qv__proto_field(root, "structured_outputs"); /* vLLM's newer spelling */
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so))
            return fail(e, QV_ERR_INVALID, "structured_outputs",
                        "'structured_outputs' must be an object");
        static const char *const refused[] = {"grammar", "structural_tag", "whitespace_pattern"};
        for (size_t i = 0; i < QV_ARRAY_LEN(refused); i++)
            if ((f = qv__proto_field(so, refused[i])) && !cJSON_IsNull(f))
                return fail(e, QV_ERR_INVALID, "structured_outputs",
                            "'structured_outputs.%s' is not supported by quiver (JSON schemas, "
                            "JSON mode, choices and regexes are)",
                            refused[i]);
        if ((f = qv__proto_field(so, "json")) && !cJSON_IsNull(f))
            sch = f, param = "structured_outputs", asked++;
        if ((f = qv__proto_field(so, "choice")) && !cJSON_IsNull(f))
            choice = f, param = "structured_outputs", asked++;
        if ((f = qv__proto_field(so, "regex"))) regex = f, param = "structured_outputs", asked++;
        if (cJSON_IsTrue(qv__proto_field(so, "json_object")))
            json_mode = true, param = "structured_outputs", asked++;
        const cJSON *dw = qv__proto_field(so, "disable_any_whitespace");
        if (dw && !cJSON_IsBool(dw))
            return fail(e, QV_ERR_INVALID, "structured_outputs",
                        "'structured_outputs.disable_any_whitespace' must be a boolean");
        if (cJSON_IsTrue(dw)) flags |= QV_JSON_COMPACT;
    }
    /* vLLM's guided_whitespace_pattern "": no whitespace between JSON tokens (compact); other
     * patterns are refused (refuse_unsupported) */
    if ((f = qv__proto_field(root, "guided_whitespace_pattern")) && cJSON_IsString(f) &&
        !f->valuestring[0])
        flags |= QV_JSON_COMPACT;
    if (asked > 1)
        return fail(e, QV_ERR_INVALID, param,
                    "ask for one structured output: a response_format, guided_json, "
                    "guided_choice, guided_regex or structured_outputs");
    r->json_object = json_mode && !flags;
    if (json_mode && flags) { /* compact JSON mode: the schema JSON mode is */
        qv_error err = {0};
        static const char object[] = "{\"type\":\"object\"}";
        const qv_status st =
            qv_json_schema_compile_flags(object, strlen(object), flags, &r->json_schema, &err);
        return st == QV_OK ? QV_OK : qv__proto_nomem(e);
    }
    if (choice) {
        char *text = cJSON_PrintUnformatted(choice);
        if (!text) return qv__proto_nomem(e);
        qv_error err = {0};
        const qv_status st =
            qv_json_schema_compile_choice(text, strlen(text), &r->json_schema, &err);
        cJSON_free(text);
        if (st == QV_ERR_NOMEM) return qv__proto_nomem(e);
        return st == QV_OK ? QV_OK : fail(e, QV_ERR_INVALID, param, "%s", err.msg);
    }
    if (regex) return compile_regex_doc(regex, param, r, e);
    return sch ? compile_schema(sch, param, flags, r, e) : QV_OK;
}

/* A regex document (guided_regex, structured_outputs.regex, TGI's regex grammar): the
 * answer's whole text matches the pattern, compiled into r->json_schema. */
static qv_status compile_regex_doc(const cJSON *re, const char *param, qv_proto_request *r,
                                   qv_proto_error *e) {
    if (!cJSON_IsString(re)) return fail(e, QV_ERR_INVALID, param, "the regex must be a string");
    qv_error err = {0};
    const qv_status st = qv_json_schema_compile_regex(re->valuestring, strlen(re->valuestring),
                                                      &r->json_schema, &err);
    if (st == QV_ERR_NOMEM) return qv__proto_nomem(e);
    if (st != QV_OK) return fail(e, QV_ERR_INVALID, param, "the regex cannot be used: %s", err.msg);
    return QV_OK;
}

/* Compiles sch (a schema object, true, or a schema's text) into r->json_schema. */
static qv_status compile_schema(const cJSON *sch, const char *param, unsigned flags,
                                qv_proto_request *r, qv_proto_error *e) {
    char *text = cJSON_IsString(sch) ? NULL : cJSON_PrintUnformatted(sch);
    const char *txt = cJSON_IsString(sch) ? sch->valuestring : text;
    if (!txt) return qv__proto_nomem(e);
    qv_error err = {0};
    const qv_status st =
        qv_json_schema_compile_flags(txt, strlen(txt), flags, &r->json_schema, &err);
    cJSON_free(text);
    if (st == QV_ERR_NOMEM) return qv__proto_nomem(e);
    if (st != QV_OK)
        return fail(e, QV_ERR_INVALID, param, "the JSON schema cannot be used: %s", err.msg);
    return QV_OK;
}

/* Fields of the OpenAI and vLLM APIs that would change the answer and that quiver does not
 * implement: refused with a clear 400 rather than ignored like unknown fields (a client asking
 * for JSON mode or tool calls must not get free text as if it had). Values that ask for
 * nothing (empty lists, {"type": "text"}, false, 0, 1) pass. */
static qv_status refuse_unsupported(const cJSON *root, enum qv_proto_endpoint ep,
                                    qv_proto_error *e) {
    static const char *const always[] = {"guided_grammar"};
    for (size_t i = 0; i < QV_ARRAY_LEN(always); i++)
        if (qv__proto_field(root, always[i]))
            return fail(e, QV_ERR_INVALID, always[i],
                        "'%s' is not supported by quiver (no guided decoding)", always[i]);
    const cJSON *f = qv__proto_field(root, "response_format");
    if (f) {
        const cJSON *t = cJSON_IsObject(f) ? qv__proto_field(f, "type") : NULL;
        if (!t || !cJSON_IsString(t) ||
            (strcmp(t->valuestring, "text") != 0 && strcmp(t->valuestring, "json_object") != 0 &&
             strcmp(t->valuestring, "json_schema") != 0))
            return fail(e, QV_ERR_INVALID, "response_format",
                        "'response_format' must be {\"type\": \"text\"}, {\"type\": "
                        "\"json_object\"} (JSON mode) or {\"type\": \"json_schema\", "
                        "\"json_schema\": {\"name\": ..., \"schema\": {...}}}");
    }
    if ((f = qv__proto_field(root, "functions")) &&
        !(cJSON_IsArray(f) && cJSON_GetArraySize(f) == 0))
        return fail(e, QV_ERR_INVALID, "functions",
                    "'functions' (deprecated by OpenAI) is not supported by quiver; use 'tools'");
    if (ep != QV_PROTO_CHAT && (f = qv__proto_field(root, "tools")) &&
        !(cJSON_IsArray(f) && cJSON_GetArraySize(f) == 0))
        return fail(e, QV_ERR_INVALID, "tools", "'tools' is only supported on chat completions");
    if ((f = qv__proto_field(root, "suffix")) && !(cJSON_IsString(f) && !f->valuestring[0]))
        return fail(e, QV_ERR_INVALID, "suffix", "'suffix' is not supported by quiver");
    if ((f = qv__proto_field(root, "best_of")) && !(cJSON_IsNumber(f) && f->valuedouble == 1))
        return fail(e, QV_ERR_INVALID, "best_of", "'best_of' must be 1 (one sequence per request)");
    /* OpenAI's other outputs and tools: text is all quiver writes */
    if ((f = qv__proto_field(root, "modalities"))) {
        bool text_only = cJSON_IsArray(f);
        const cJSON *m;
        cJSON_ArrayForEach(m, f) text_only =
            text_only && cJSON_IsString(m) && !strcmp(m->valuestring, "text");
        if (!text_only)
            return fail(e, QV_ERR_INVALID, "modalities",
                        "'modalities' may only be [\"text\"] (quiver writes no audio)");
    }
    if ((f = qv__proto_field(root, "audio")) && !(cJSON_IsObject(f) && !f->child))
        return fail(e, QV_ERR_INVALID, "audio", "'audio' output is not supported by quiver");
    if ((f = qv__proto_field(root, "web_search_options")))
        return fail(e, QV_ERR_INVALID, "web_search_options",
                    "'web_search_options' is not supported by quiver (no web search)");
    /* vLLM's other request options that change the answer, where they ask for something */
    static const struct {
        const char *name, *why;
    } k_vllm[] = {
        {"use_beam_search", "no beam search"},
        {"logits_processors", "no custom logits processors"},
        {"chat_template", "name a built-in format with quiver serve --chat-template"},
        {"documents", "the chat templates write no documents"},
        {"guided_whitespace_pattern",
         "JSON may have whitespace between tokens, or none with the pattern \"\""},
    };
    for (size_t i = 0; i < QV_ARRAY_LEN(k_vllm); i++) {
        f = qv__proto_field(root, k_vllm[i].name);
        const bool empty = !f || cJSON_IsFalse(f) ||
                           ((cJSON_IsArray(f) || cJSON_IsObject(f)) && !f->child) ||
                           (cJSON_IsString(f) && !f->valuestring[0]);
        if (!empty)
            return fail(e, QV_ERR_INVALID, k_vllm[i].name, "'%s' is not supported by quiver (%s)",
                        k_vllm[i].name, k_vllm[i].why);
    }
    return QV_OK;
}

/* Whether s is a function name OpenAI accepts: 1..64 of a-z, A-Z, 0-9, '_' and '-'. */
static bool tool_name_ok(const char *s) {
    size_t n = 0;
    for (; s[n]; n++)
        if (!isalnum((unsigned char)s[n]) && s[n] != '_' && s[n] != '-') return false;
    return n >= 1 && n <= 64;
}

/* The function name of a `tools` or allowed_tools entry ({"function": {"name"}}), or NULL. */
static const char *function_name(const cJSON *t) {
    const cJSON *n = qv__proto_field(qv__proto_field(t, "function"), "name");
    return cJSON_IsString(n) ? n->valuestring : NULL;
}

/* tool_choice {"type": "allowed_tools", "allowed_tools": {"mode", "tools": [{"type":
 * "function", "function": {"name"}}, ...]}}: its list of tools, or NULL for any other
 * tool_choice. */
static const cJSON *allowed_tools(const cJSON *tc) {
    const cJSON *t = cJSON_IsObject(tc) ? qv__proto_field(tc, "type") : NULL;
    if (!cJSON_IsString(t) || strcmp(t->valuestring, "allowed_tools")) return NULL;
    const cJSON *at = qv__proto_field(tc, "allowed_tools");
    return cJSON_IsObject(at) ? qv__proto_field(at, "tools") : NULL;
}

/* Whether tool_choice lets the answer call `name` (any name unless it is allowed_tools). */
static bool tool_allowed(const cJSON *tc, const char *name) {
    const cJSON *list = allowed_tools(tc), *a;
    if (!list) return true;
    cJSON_ArrayForEach(a, list) {
        const char *n = function_name(a);
        if (n && !strcmp(n, name)) return true;
    }
    return false;
}

/* Checks an allowed_tools tool_choice (its mode, the names it lists, each one in `tools`) and
 * gives its mode. */
static qv_status check_allowed(const cJSON *tc, const cJSON *tools, const char **mode,
                               qv_proto_error *e) {
    const cJSON *at = qv__proto_field(tc, "allowed_tools"), *list = allowed_tools(tc), *a;
    const cJSON *m = cJSON_IsObject(at) ? qv__proto_field(at, "mode") : NULL;
    const int n = cJSON_IsArray(list) ? cJSON_GetArraySize(list) : 0;
    if (!cJSON_IsString(m) ||
        (strcmp(m->valuestring, "auto") && strcmp(m->valuestring, "required")) || n < 1 ||
        n > QV_PROTO_MAX_TOOLS)
        return fail(e, QV_ERR_INVALID, "tool_choice",
                    "'tool_choice' {\"type\": \"allowed_tools\"} needs \"allowed_tools\": "
                    "{\"mode\": \"auto\" or \"required\", \"tools\": [{\"type\": "
                    "\"function\", \"function\": {\"name\": ...}}, ...]}");
    cJSON_ArrayForEach(a, list) {
        const cJSON *t = cJSON_IsObject(a) ? qv__proto_field(a, "type") : NULL;
        const char *name = function_name(a);
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "function") || !name)
            return fail(e, QV_ERR_INVALID, "tool_choice",
                        "'tool_choice.allowed_tools.tools' lists {\"type\": \"function\", "
                        "\"function\": {\"name\": ...}} entries");
        bool found = false;
        const cJSON *t2;
        cJSON_ArrayForEach(t2, tools) {
            const char *n2 = function_name(t2);
            found = found || (n2 && !strcmp(n2, name));
        }
        if (!found)
            return fail(e, QV_ERR_INVALID, "tool_choice",
                        "'tool_choice' allows '%.64s', which is not in 'tools'", name);
    }
    *mode = m->valuestring;
    return QV_OK;
}

/* Chat: tools, tool_choice and parallel_tool_calls (OpenAI). tool_choice "required" or
 * {"type": "function", "function": {"name"}} constrains the answer to tool calls (its schema
 * goes in r->json_schema); "none": text; "auto", the default with tools: free text whose
 * <tool_call> blocks become calls, which the server accepts only with a chat template that
 * writes tools. {"type": "allowed_tools", "allowed_tools": {"mode", "tools"}} is its mode
 * ("auto" or "required") over the tools it lists: the others are left out of the calls'
 * schema and of the template's tools. */
static qv_status decode_tools(const cJSON *root, qv_proto_request *r, qv_proto_error *e) {
    const cJSON *tools = qv__proto_field(root, "tools"), *tc = qv__proto_field(root, "tool_choice");
    r->parallel_tool_calls = true;
    qv_status s = get_bool(root, "parallel_tool_calls", &r->parallel_tool_calls, e);
    if (s) return s;
    if (tools && !cJSON_IsArray(tools))
        return fail(e, QV_ERR_INVALID, "tools", "'tools' must be a list of functions");
    const int n = tools ? cJSON_GetArraySize(tools) : 0;
    if (n > QV_PROTO_MAX_TOOLS)
        return fail(e, QV_ERR_INVALID, "tools", "'tools' has %d functions; at most %d", n,
                    QV_PROTO_MAX_TOOLS);
    const cJSON *want = NULL; /* the named function */
    const char *mode = n ? "auto" : "none";
    if (cJSON_IsString(tc)) {
        mode = tc->valuestring;
        if (strcmp(mode, "none") && strcmp(mode, "auto") && strcmp(mode, "required"))
            return fail(e, QV_ERR_INVALID, "tool_choice",
                        "'tool_choice' must be \"none\", \"auto\", \"required\" or "
                        "{\"type\": \"function\", \"function\": {\"name\": ...}}");
    } else if (tc && allowed_tools(tc) != NULL) {
        mode = NULL; /* checked once the tools are */
    } else if (tc) {
        const cJSON *t = cJSON_IsObject(tc) ? qv__proto_field(tc, "type") : NULL;
        const cJSON *fn = cJSON_IsObject(tc) ? qv__proto_field(tc, "function") : NULL;
        want = fn ? qv__proto_field(fn, "name") : NULL;
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "function") || !cJSON_IsString(want))
            return fail(e, QV_ERR_INVALID, "tool_choice",
                        "'tool_choice' must be \"none\", \"auto\", \"required\", "
                        "{\"type\": \"function\", \"function\": {\"name\": ...}} or "
                        "{\"type\": \"allowed_tools\", ...}");
        mode = "named";
    }
    const cJSON *named = NULL; /* want's entry in tools */
    for (int i = 0; i < n; i++) {
        const cJSON *t = cJSON_GetArrayItem(tools, i);
        const cJSON *type = cJSON_IsObject(t) ? qv__proto_field(t, "type") : NULL;
        const cJSON *fn = cJSON_IsObject(t) ? qv__proto_field(t, "function") : NULL;
        const cJSON *name = cJSON_IsObject(fn) ? qv__proto_field(fn, "name") : NULL;
        const cJSON *desc = cJSON_IsObject(fn) ? qv__proto_field(fn, "description") : NULL;
        const cJSON *params = cJSON_IsObject(fn) ? qv__proto_field(fn, "parameters") : NULL;
        const cJSON *strict = cJSON_IsObject(fn) ? qv__proto_field(fn, "strict") : NULL;
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "function") || !cJSON_IsString(name))
            return fail(e, QV_ERR_INVALID, "tools",
                        "tools[%d] must be {\"type\": \"function\", \"function\": {\"name\": "
                        "..., \"parameters\": {...}}}",
                        i);
        if (!tool_name_ok(name->valuestring))
            return fail(e, QV_ERR_INVALID, "tools",
                        "tools[%d].function.name must be 1 to 64 letters, digits, '_' or '-'", i);
        if ((desc && !cJSON_IsString(desc)) || (params && !cJSON_IsObject(params)) ||
            (strict && !cJSON_IsBool(strict)))
            return fail(e, QV_ERR_INVALID, "tools",
                        "tools[%d].function: 'description' must be a string, 'parameters' a "
                        "JSON schema object and 'strict' a boolean",
                        i);
        for (int k = 0; k < i; k++)
            if (!strcmp(function_name(cJSON_GetArrayItem(tools, k)), name->valuestring))
                return fail(e, QV_ERR_INVALID, "tools",
                            "tools[%d]: the function '%s' is declared twice", i, name->valuestring);
        if (want && !strcmp(name->valuestring, want->valuestring)) named = fn;
    }
    if (!mode && (s = check_allowed(tc, tools, &mode, e))) return s;
    if (!strcmp(mode, "none")) return QV_OK;
    if (!n) return fail(e, QV_ERR_INVALID, "tool_choice", "'tool_choice' needs 'tools'");
    if (want && !named)
        return fail(e, QV_ERR_INVALID, "tool_choice",
                    "'tool_choice' names '%s', which is not in 'tools'", want->valuestring);
    if (r->json_object || r->json_schema)
        return fail(e, QV_ERR_INVALID, "tool_choice",
                    "tool calls cannot be combined with another structured output "
                    "(response_format, guided_json, guided_choice or structured_outputs)");
    if (!strcmp(mode, "auto")) { /* the server refuses it unless the template writes tools */
        r->tool_choice = QV_PROTO_TOOLS_AUTO;
        return QV_OK;
    }
    qv_error err = {0};
    qv_status st;
    if (named) {
        r->tool_choice = QV_PROTO_TOOLS_NAMED;
        if (!(r->tool_name = qv_strdup(want->valuestring))) return qv__proto_nomem(e);
        const cJSON *params = qv__proto_field(named, "parameters");
        char *text = params && params->child ? cJSON_PrintUnformatted(params) : NULL;
        const char *txt = params && params->child ? text /* {}: any object; absent: none */
                          : params                ? "{\"type\":\"object\"}"
                                                  : "{\"type\":\"object\",\"properties\":{}}";
        if (!txt) return qv__proto_nomem(e);
        st = qv_json_schema_compile_flags(txt, strlen(txt), QV_JSON_COMPACT, &r->json_schema, &err);
        cJSON_free(text);
        if (st == QV_OK && !qv_json_schema_object_only(r->json_schema))
            st = qv_errorf(&err, QV_ERR_INVALID, "the parameters must be an object schema");
    } else {
        r->tool_choice = QV_PROTO_TOOLS_REQUIRED;
        /* the tools the answer may call: all of them, or those allowed_tools lists */
        cJSON *list = NULL;
        if (allowed_tools(tc)) {
            if (!(list = cJSON_CreateArray())) return qv__proto_nomem(e);
            const cJSON *t;
            cJSON_ArrayForEach(t, tools) {
                if (tool_allowed(tc, function_name(t)) &&
                    !cJSON_AddItemToArray(list, cJSON_Duplicate(t, true))) {
                    cJSON_Delete(list);
                    return qv__proto_nomem(e);
                }
            }
        }
        char *text = cJSON_PrintUnformatted(list ? list : tools);
        cJSON_Delete(list);
        if (!text) return qv__proto_nomem(e);
        st = qv_json_schema_compile_calls(text, strlen(text), r->parallel_tool_calls,
                                          QV_JSON_COMPACT, &r->json_schema, &err);
        cJSON_free(text);
    }
    if (st == QV_ERR_NOMEM) return qv__proto_nomem(e);
    if (st != QV_OK) {
        qv_json_schema_unref(r->json_schema);
        r->json_schema = NULL;
        return fail(e, QV_ERR_INVALID, "tools", "the tools' parameters cannot be used: %s",
                    err.msg);
    }
    return QV_OK;
}

/* The raw text of a non-empty `tools` list (chat, /tokenize with messages), for templates
 * that write tools byte for byte as sent; under an allowed_tools tool_choice, of the tools it
 * allows (their items as sent, joined by ", "). */
static qv_status tools_text(const cJSON *root, const char *body, size_t len, qv_proto_request *r,
                            qv_proto_error *e) {
    const cJSON *tools = qv__proto_field(root, "tools"), *tc = qv__proto_field(root, "tool_choice");
    if (!tools || (cJSON_IsArray(tools) && cJSON_GetArraySize(tools) == 0)) return QV_OK;
    size_t off = 0, n = 0;
    if (!cJSON_IsArray(tools) || !qv_json_member_span(body, len, "tools", &off, &n))
        return fail(e, QV_ERR_INVALID, "tools", "'tools' must be a list of functions");
    /* (the allowed items and ", " between them fit in the list's length plus 2 per item) */
    if (!(r->tools_text = qv_malloc(n + 2 * QV_PROTO_MAX_TOOLS + 3))) return qv__proto_nomem(e);
    if (!allowed_tools(tc)) {
        memcpy(r->tools_text, body + off, n);
        r->tools_text[n] = '\0';
        r->tools_len = n;
        return QV_OK;
    }
    size_t io[QV_PROTO_MAX_TOOLS], in[QV_PROTO_MAX_TOOLS], at = 0;
    const size_t k = qv_json_list_items(body + off, n, io, in, QV_PROTO_MAX_TOOLS);
    r->tools_text[at++] = '[';
    for (size_t i = 0; i < k && i < QV_PROTO_MAX_TOOLS; i++) {
        const char *name = function_name(cJSON_GetArrayItem(tools, (int)i));
        if (!name || !tool_allowed(tc, name)) continue;
        if (at > 1) memcpy(r->tools_text + at, ", ", 2), at += 2;
        memcpy(r->tools_text + at, body + off + io[i], in[i]);
        at += in[i];
    }
    r->tools_text[at++] = ']';
    r->tools_text[at] = '\0';
    r->tools_len = at;
    return QV_OK;
}

/* vLLM's chat_template_kwargs, the template's variables: add_generation_prompt and
 * continue_final_message override the request's (as vLLM's dict update does); date_string is
 * kept for the templates that print it; tools_in_user_message false and non-empty
 * builtin_tools / custom_tools ask for what quiver's Llama 3.1 / 3.2 rendering lacks (the
 * server refuses them with such a template); the variables the template gives itself are
 * refused; any other is read by none of quiver's templates and changes nothing, as in Jinja. */
static qv_status decode_template_kwargs(const cJSON *kw, qv_proto_request *r, qv_proto_error *e) {
    static const char *const own[] = {"messages",      "tools",     "documents",
                                      "chat_template", "bos_token", "eos_token"};
    const cJSON *f;
    if (!cJSON_IsObject(kw))
        return fail(e, QV_ERR_INVALID, "chat_template_kwargs",
                    "'chat_template_kwargs' must be an object");
    cJSON_ArrayForEach(f, kw) {
        const char *k = f->string;
        bool bad = false;
        for (size_t i = 0; i < QV_ARRAY_LEN(own); i++)
            bad = bad || !strcmp(k, own[i]);
        if (bad)
            return fail(e, QV_ERR_INVALID, "chat_template_kwargs",
                        "'chat_template_kwargs.%s' is given by the request itself", k);
        if (!strcmp(k, "date_string")) {
            if (!cJSON_IsString(f))
                return fail(e, QV_ERR_INVALID, "chat_template_kwargs",
                            "'chat_template_kwargs.date_string' must be a string");
            qv_free(r->tmpl_date_string);
            if (!(r->tmpl_date_string = qv_strdup(f->valuestring))) return qv__proto_nomem(e);
        } else if (!strcmp(k, "tools_in_user_message")) {
            if (cJSON_IsFalse(f)) r->tmpl_unrendered = "tools_in_user_message";
        } else if (!strcmp(k, "builtin_tools") || !strcmp(k, "custom_tools")) {
            if (!cJSON_IsNull(f) && !(cJSON_IsArray(f) && !f->child))
                r->tmpl_unrendered = !strcmp(k, "builtin_tools") ? "builtin_tools" : "custom_tools";
        }
    }
    return QV_OK;
}

/* Chat: add_generation_prompt (default true) and continue_final_message (vLLM / transformers:
 * the prompt ends inside the last message, an assistant's, so the model continues it; then
 * add_generation_prompt defaults to false and may not be true). Both may also come
 * in chat_template_kwargs, which override them. */
static qv_status decode_turn_options(const cJSON *root, qv_proto_request *r, qv_proto_error *e) {
    const cJSON *kw = qv__proto_field(root, "chat_template_kwargs");
    qv_status s = kw ? decode_template_kwargs(kw, r, e) : QV_OK;
    if (s) return s;
    if ((s = get_bool(root, "continue_final_message", &r->continue_final_message, e))) return s;
    if (kw && (s = get_bool(kw, "continue_final_message", &r->continue_final_message, e))) {
        snprintf(e->param, sizeof(e->param), "chat_template_kwargs");
        return s;
    }
    r->add_generation_prompt = !r->continue_final_message;
    if ((s = get_bool(root, "add_generation_prompt", &r->add_generation_prompt, e))) return s;
    if (kw && (s = get_bool(kw, "add_generation_prompt", &r->add_generation_prompt, e))) {
        snprintf(e->param, sizeof(e->param), "chat_template_kwargs");
        return s;
    }
    if (r->continue_final_message && r->add_generation_prompt)
        return fail(e, QV_ERR_INVALID, "continue_final_message",
                    "'continue_final_message' and 'add_generation_prompt' cannot both be true");
    if (r->continue_final_message &&
        (strcmp(r->messages[r->n_messages - 1].role, "assistant") != 0 ||
         !r->messages[r->n_messages - 1].content[0]))
        return fail(e, QV_ERR_INVALID, "continue_final_message",
                    "'continue_final_message' needs a last message from the assistant, with "
                    "text");
    return QV_OK;
}

/* /tokenize (`prompt` text or `messages`) and /detokenize (`tokens`). */
static qv_status decode_tokenize(const cJSON *root, qv_proto_request *r, qv_proto_error *e) {
    qv_status s;
    if (r->endpoint == QV_PROTO_DETOKENIZE) {
        const cJSON *f = qv__proto_field(root, "tokens");
        if (!f || !cJSON_IsArray(f))
            return fail(e, QV_ERR_INVALID, "tokens", "'tokens' must be a list of token ids");
        int n = cJSON_GetArraySize(f);
        r->prompt_ids = qv_malloc((size_t)QV_MAX(n, 1) * sizeof(int32_t));
        if (!r->prompt_ids) return qv__proto_nomem(e);
        const cJSON *it = f->child;
        for (int i = 0; i < n; i++, it = it->next) {
            if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
                it->valuedouble < 0 || it->valuedouble > INT32_MAX)
                return fail(e, QV_ERR_INVALID, "tokens", "'tokens' must be a list of token ids");
            r->prompt_ids[i] = (int32_t)it->valuedouble;
        }
        r->n_prompt_ids = (size_t)n;
        return QV_OK;
    }
    const bool chat = qv__proto_field(root, "messages") != NULL;
    if (chat && qv__proto_field(root, "prompt"))
        return fail(e, QV_ERR_INVALID, "prompt", "give 'prompt' or 'messages', not both");
    if (chat) {
        s = decode_messages(root, r, e);
    } else {
        const cJSON *p = qv__proto_field(root, "prompt");
        s = p && cJSON_IsString(p) ? decode_prompt(root, r, e)
                                   : fail(e, QV_ERR_INVALID, "prompt",
                                          "'prompt' (a string) or 'messages' is required");
    }
    if (s) return s;
    r->add_special_tokens = !chat;
    if ((s = get_bool(root, "add_special_tokens", &r->add_special_tokens, e))) return s;
    if (chat && (s = decode_turn_options(root, r, e))) return s;
    return get_bool(root, "return_token_strs", &r->return_token_strs, e);
}

qv_status qv_proto_request_decode(enum qv_proto_endpoint endpoint, const char *body, size_t len,
                                  qv_proto_request *r, qv_proto_error *e) {
    memset(r, 0, sizeof(*r));
    r->endpoint = endpoint;
    r->max_tokens = -1;
    r->temperature = 1.0f;
    r->top_p = 1.0f;
    r->repetition_penalty = 1.0f;
    if (e) memset(e, 0, sizeof(*e));
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return fail(e, QV_ERR_INVALID, NULL, "the request body is not valid JSON");
    qv_status s = QV_OK;
    if (!cJSON_IsObject(root)) {
        s = fail(e, QV_ERR_INVALID, NULL, "the request body must be a JSON object");
        goto done;
    }
    if ((s = decode_model(root, r, e))) goto done;
    if (endpoint != QV_PROTO_TOKENIZE && endpoint != QV_PROTO_DETOKENIZE &&
        (s = decode_merged(root, "", r, e)))
        goto done;
    if ((endpoint == QV_PROTO_COMPLETIONS || endpoint == QV_PROTO_CHAT) &&
        (s = refuse_unsupported(root, endpoint, e)))
        goto done;
    if (endpoint == QV_PROTO_TOKENIZE || endpoint == QV_PROTO_DETOKENIZE) {
        s = decode_tokenize(root, r, e);
        if (!s && r->n_messages) s = tools_text(root, body, len, r, e);
        goto done;
    }
    s = endpoint == QV_PROTO_CHAT ? decode_messages(root, r, e) : decode_prompt(root, r, e);
    if (s) goto done;
    r->add_special_tokens = endpoint != QV_PROTO_CHAT;
    r->add_generation_prompt = true;
    if ((s = get_bool(root, "add_special_tokens", &r->add_special_tokens, e))) goto done;
    if (endpoint == QV_PROTO_CHAT && (s = decode_turn_options(root, r, e))) goto done;
    r->n = 1;
    if ((s = qv__proto_get_int(root, "n", 1, QV_PROTO_MAX_CHOICES, &r->n, e))) goto done;
    if ((1 + r->n_more) * (size_t)r->n > QV_PROTO_MAX_CHOICES) {
        s = fail(e, QV_ERR_INVALID, "n", "%zu prompts times n = %d is over %d choices",
                 1 + r->n_more, r->n, QV_PROTO_MAX_CHOICES);
        goto done;
    }
    const char *mt =
        qv__proto_field(root, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    if ((s = get_bool(root, "echo", endpoint == QV_PROTO_CHAT ? &r->chat_echo : &r->echo, e)))
        goto done;
    /* max_tokens 0: the prompt's echo (and logprobs) only */
    if ((s = qv__proto_get_int(root, mt, r->echo ? 0 : 1, 1e9, &r->max_tokens, e))) goto done;
    if ((s = get_float(root, "temperature", 0, 100, &r->temperature, e))) goto done;
    if ((s = get_float(root, "top_p", 0, 1, &r->top_p, e))) goto done;
    if (qv__proto_field(root, "top_p") && r->top_p <= 0.0f) {
        s = fail(e, QV_ERR_INVALID, "top_p", "'top_p' must be in (0, 1]");
        goto done;
    }
    if ((s = qv__proto_get_int(root, "top_k", -1, 1e9, &r->top_k, e))) goto done;
    if (r->top_k < 0) r->top_k = 0;
    if ((s = get_float(root, "min_p", 0, 1, &r->min_p, e))) goto done;
    if ((s = get_float(root, "presence_penalty", -2, 2, &r->presence_penalty, e))) goto done;
    if ((s = get_float(root, "frequency_penalty", -2, 2, &r->frequency_penalty, e))) goto done;
    if ((s = get_float(root, "repetition_penalty", 0, 100, &r->repetition_penalty, e))) goto done;
    if (qv__proto_field(root, "repetition_penalty") && r->repetition_penalty <= 0.0f) {
        s = fail(e, QV_ERR_INVALID, "repetition_penalty", "'repetition_penalty' must be > 0");
        goto done;
    }
    const cJSON *seed = qv__proto_field(root, "seed");
    if (seed) {
        if (!seed_ok(seed, true)) {
            s = fail(e, QV_ERR_INVALID, "seed", "'seed' must be an integer");
            goto done;
        }
        r->has_seed = true;
        /* Negative seeds (allowed by OpenAI) wrap to their two's-complement value. */
        r->seed = (uint64_t)(int64_t)seed->valuedouble;
    }
    if ((s = decode_strings(root, "stop", true, QV_PROTO_MAX_STOPS, QV_PROTO_MAX_STOP_BYTES,
                            &r->stop, &r->n_stop, e)))
        goto done;
    if ((s = decode_strings(root, "bad_words", false, QV_PROTO_MAX_BAD_WORDS,
                            QV_PROTO_MAX_STOP_BYTES, &r->bad_words, &r->n_bad_words, e)))
        goto done;
    if ((s = decode_ids(root, "stop_token_ids", QV_PROTO_MAX_STOP_IDS, &r->stop_ids, &r->n_stop_ids,
                        e)))
        goto done;
    if ((s = decode_ids(root, "allowed_token_ids", QV_PROTO_MAX_ALLOWED_IDS, &r->allowed_ids,
                        &r->n_allowed_ids, e)))
        goto done;
    if ((s = decode_logit_bias(root, r, e))) goto done;
    if ((s = qv__proto_get_int(root, "min_tokens", 0, 1e9, &r->min_tokens, e))) goto done;
    if ((s = decode_json_schema(root, r, e))) goto done; /* refuse_unsupported checked types */
    if (endpoint == QV_PROTO_CHAT && (s = decode_tools(root, r, e))) goto done;
    if (endpoint == QV_PROTO_CHAT && (s = tools_text(root, body, len, r, e))) goto done;
    if ((s = decode_logprobs(root, r, e))) goto done;
    if ((s = get_bool(root, "stream", &r->stream, e))) goto done;
    if ((s = get_bool(root, "ignore_eos", &r->ignore_eos, e))) goto done;
    r->skip_special_tokens = true;
    if ((s = get_bool(root, "skip_special_tokens", &r->skip_special_tokens, e))) goto done;
    if ((s = get_bool(root, "include_stop_str_in_output", &r->include_stop_str, e))) goto done;
    if ((s = get_bool(root, "return_tokens_as_token_ids", &r->tokens_as_ids, e))) goto done;
    bool spaces = true; /* HF's slow tokenizers only: the fast ones (quiver's) ignore it */
    if ((s = get_bool(root, "spaces_between_special_tokens", &spaces, e))) goto done;
    if ((s = qv__proto_get_int(root, "truncate_prompt_tokens", -1, 1e9, &r->truncate_prompt_tokens,
                               e)))
        goto done;
    if (qv__proto_field(root, "truncate_prompt_tokens") && r->truncate_prompt_tokens == 0) {
        s = fail(e, QV_ERR_INVALID, "truncate_prompt_tokens",
                 "'truncate_prompt_tokens' must be -1 (the context) or at least 1");
        goto done;
    }
    if ((s = qv__proto_get_int(root, "priority", -1e9, 1e9, &r->priority, e))) goto done;
    r->has_priority = qv__proto_field(root, "priority") != NULL;
    const cJSON *so = qv__proto_field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so)) {
            s = fail(e, QV_ERR_INVALID, "stream_options", "'stream_options' must be an object");
            goto done;
        }
        if ((s = get_bool(so, "include_usage", &r->include_usage, e))) {
            snprintf(e->param, sizeof(e->param), "stream_options.include_usage");
            goto done;
        }
        bool cu = false;
        if ((s = get_bool(so, "continuous_usage_stats", &cu, e))) {
            snprintf(e->param, sizeof(e->param), "stream_options.continuous_usage_stats");
            goto done;
        }
        r->continuous_usage = cu && r->include_usage;
    }
    if ((r->prompt_lps = qv__proto_field(root, "prompt_logprobs") != NULL)) {
        if ((s = qv__proto_get_int(root, "prompt_logprobs", 0, QV_PROTO_MAX_LOGPROBS,
                                   &r->prompt_logprobs, e)))
            goto done;
        if (r->stream) {
            s = fail(e, QV_ERR_INVALID, "prompt_logprobs",
                     "'prompt_logprobs' is not available when streaming");
            goto done;
        }
    }
    if (r->chat_echo && r->tool_choice != QV_PROTO_TOOLS_NONE) {
        s = fail(e, QV_ERR_INVALID, "echo",
                 "'echo' on chat cannot be combined with tools (the answer may be calls)");
        goto done;
    }
    if (r->n_allowed_ids && (r->json_object || r->json_schema))
        s = fail(e, QV_ERR_INVALID, "allowed_token_ids",
                 "'allowed_token_ids' cannot be combined with JSON mode, structured output or "
                 "constrained tool calls (they choose the tokens)");
done:
    cJSON_Delete(root);
    return s;
}

void qv_proto_request_free(qv_proto_request *r) {
    if (!r) return;
    qv_free(r->model);
    qv_free(r->base);
    qv_free(r->adapter);
    for (size_t i = 0; i < r->n_merge; i++)
        qv_free(r->merge_ids[i]);
    qv_free(r->merge_ids);
    qv_free(r->merge_weights);
    qv_free(r->prompt);
    qv_free(r->prompt_ids);
    for (size_t i = 0; i < r->n_messages; i++) {
        qv_free(r->messages[i].role);
        qv_free(r->messages[i].content);
        for (size_t k = 0; k < r->messages[i].n_calls; k++) {
            qv_free(r->messages[i].calls[k].name);
            qv_free(r->messages[i].calls[k].arguments);
            qv_free(r->messages[i].calls[k].id);
        }
        qv_free(r->messages[i].calls);
        qv_free(r->messages[i].tool_call_id);
    }
    qv_free(r->messages);
    for (size_t i = 0; i < r->n_stop; i++)
        qv_free(r->stop[i]);
    for (size_t i = 0; i < r->n_bad_words; i++)
        qv_free(r->bad_words[i]);
    qv_free(r->bad_words);
    qv_free(r->stop);
    for (size_t i = 0; i < r->n_more; i++) {
        qv_free(r->more[i].text);
        qv_free(r->more[i].ids);
    }
    qv_free(r->more);
    qv_free(r->stop_ids);
    qv_free(r->allowed_ids);
    qv_free(r->bias_ids);
    qv_free(r->bias_values);
    qv_json_schema_unref(r->json_schema);
    qv_free(r->tool_name);
    qv_free(r->tools_text);
    qv_free(r->tmpl_date_string);
    memset(r, 0, sizeof(*r));
}

void qv_proto_tool_calls_free(qv_proto_tool_call *calls, size_t n) {
    for (size_t i = 0; calls && i < n; i++) {
        qv_free(calls[i].id);
        qv_free(calls[i].name);
        qv_free(calls[i].arguments);
    }
    qv_free(calls);
}

/* One call from the JSON text of {"name": ..., "arguments": {...}} (text[0..len); Llama's
 * {"name": ..., "parameters": {...}} when `parameters`, "arguments" first if both are there,
 * as vLLM reads it): its name and its arguments as Python writes them compactly.
 * QV_ERR_INVALID when it is not one. */
static qv_status call_from(const char *text, size_t len, bool parameters, qv_proto_tool_call *c) {
    qv_status st = qv_json_text_check(text, len, false);
    if (st) return st;
    cJSON *o = cJSON_ParseWithLength(text, len);
    if (!o) return QV_ERR_NOMEM; /* the text was checked: only memory can fail */
    const bool obj = cJSON_IsObject(o);
    const cJSON *nm = obj ? qv__proto_field(o, "name") : NULL;
    const char *key =
        parameters && obj && !qv__proto_field(o, "arguments") ? "parameters" : "arguments";
    const cJSON *args = obj ? qv__proto_field(o, key) : NULL;
    size_t off = 0, n = 0;
    st = cJSON_IsString(nm) && cJSON_IsObject(args) && qv_json_member_span(text, len, key, &off, &n)
             ? QV_OK
             : QV_ERR_INVALID;
    if (!st) st = (c->name = qv_strdup(nm->valuestring)) ? QV_OK : QV_ERR_NOMEM;
    cJSON_Delete(o);
    if (!st) st = qv_json_py_dumps(text + off, n, true, &c->arguments, NULL);
    return st == QV_ERR_LIMIT ? QV_ERR_INVALID : st;
}

/* The first occurrence of the NUL-terminated needle in h[0..n), or NULL. */
static const char *find_in(const char *h, size_t n, const char *needle, size_t k) {
    for (size_t i = 0; k <= n && i <= n - k; i++)
        if (h[i] == needle[0] && !memcmp(h + i, needle, k)) return h + i;
    return NULL;
}

#define CALL_OPEN "<tool_call>"
#define CALL_CLOSE "</tool_call>"
#define PYTHON_TAG "<|python_tag|>"

/* Where Llama JSON calls would begin in text[0..len): after whitespace and the python tag. */
static size_t json_calls_start(const char *text, size_t len) {
    size_t i = 0;
    while (i < len && strchr(" \t\r\n", text[i]))
        i++;
    const size_t k = strlen(PYTHON_TAG);
    if (len - i >= k && !memcmp(text + i, PYTHON_TAG, k)) i += k;
    while (i < len && strchr(" \t\r\n", text[i]))
        i++;
    return i;
}

/* The Llama JSON calls of text[0..len): objects separated by ';' and whitespace, nothing else.
 * Their count (0 when the text is not such calls) and, for the first max, their spans. */
static size_t json_calls(const char *text, size_t len, size_t *off, size_t *n, size_t max) {
    size_t i = json_calls_start(text, len), k = 0;
    if (i == len || text[i] != '{') return 0;
    for (;;) {
        size_t o = 0, m = 0;
        if (!qv_json_value_span(text + i, len - i, &o, &m) || text[i + o] != '{') return 0;
        if (k < max) off[k] = i + o, n[k] = m;
        k++;
        i += o + m;
        while (i < len && strchr(" \t\r\n", text[i]))
            i++;
        if (i == len) return k;
        if (text[i++] != ';') return 0;
    }
}

#define MISTRAL_CALLS "[TOOL_CALLS]"

/* Where Mistral's call list is in text[0..len): *content the length of the text before it
 * ("[TOOL_CALLS]" and the content before it, or nothing when the answer is the list alone),
 * *at and *n the list's span. False when the answer does not end with such a list. */
static bool mistral_list(const char *text, size_t len, size_t *content, size_t *at, size_t *n) {
    const char *p = find_in(text, len, MISTRAL_CALLS, strlen(MISTRAL_CALLS));
    *content = p ? (size_t)(p - text) : 0;
    bool blank = true; /* whitespace before the marker is no content */
    for (size_t i = 0; i < *content && blank; i++)
        blank = strchr(" \t\r\n", text[i]) != NULL;
    if (blank) *content = 0;
    const size_t from = p ? (size_t)(p - text) + strlen(MISTRAL_CALLS) : 0;
    size_t o = 0;
    if (!qv_json_value_span(text + from, len - from, &o, n) || text[from + o] != '[') return false;
    *at = from + o;
    for (size_t i = *at + *n; i < len; i++)
        if (!text[i] || !strchr(" \t\r\n", text[i])) return false;
    return true;
}

void qv_proto_mistral_call_id(const char *base, size_t i, char out[10]) {
    static const char k_alnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    uint64_t h = 1469598103934665603ull; /* FNV-1a over the base, then the index */
    for (const char *p = base ? base : ""; *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    h = (h ^ (uint64_t)i) * 1099511628211ull;
    for (int k = 0; k < 9; k++)
        out[k] = k_alnum[qv_splitmix64(&h) % 62];
    out[9] = '\0';
}

/* The length of text[0..len) before `marker`, or before an end that may begin it. */
static size_t before_marker(const char *text, size_t len, const char *marker) {
    const size_t k = strlen(marker);
    const char *p = find_in(text, len, marker, k);
    if (p) return (size_t)(p - text);
    for (size_t j = QV_MIN(len, k - 1); j > 0; j--)
        if (!memcmp(text + len - j, marker, j)) return len - j;
    return len;
}

size_t qv_proto_tool_text_len(enum qv_proto_tool_choice how, const char *text, size_t len) {
    if (how == QV_PROTO_TOOLS_AUTO_MISTRAL) {
        size_t i = 0;
        while (i < len && strchr(" \t\r\n", text[i]))
            i++;
        if (i == len || text[i] == '[') return 0; /* the list alone, or [TOOL_CALLS] */
        return before_marker(text, len, MISTRAL_CALLS);
    }
    if (how == QV_PROTO_TOOLS_AUTO_JSON) { /* a call is the whole answer: undecided until then */
        const size_t i = json_calls_start(text, len);
        const size_t k = strlen(PYTHON_TAG);
        if (i == len || text[i] == '{') return 0;
        if (text[i] == '<' && len - i < k && !memcmp(text + i, PYTHON_TAG, len - i)) return 0;
        return len;
    }
    return how == QV_PROTO_TOOLS_AUTO ? before_marker(text, len, CALL_OPEN) : len;
}

qv_status qv_proto_tool_calls_parse(enum qv_proto_tool_choice how, const char *name,
                                    const char *text, size_t len, const char *id_base,
                                    qv_proto_tool_call **calls, size_t *n, size_t *content_len) {
    *calls = NULL;
    *n = 0;
    if (content_len) *content_len = 0;
    /* where each call's JSON text is */
    size_t k = 0, *off = NULL, *lens = NULL, mcontent = 0, mat = 0, mlen = 0;
    if (how == QV_PROTO_TOOLS_NAMED) {
        if (!name) return QV_ERR_INVALID;
        k = 1;
    } else if (how == QV_PROTO_TOOLS_REQUIRED) {
        k = qv_json_list_items(text, len, NULL, NULL, 0);
        if (k == SIZE_MAX || k == 0) return QV_ERR_INVALID;
    } else if (how == QV_PROTO_TOOLS_AUTO) { /* Hermes: <tool_call>JSON</tool_call> blocks */
        for (const char *p = text;
             (p = find_in(p, len - (size_t)(p - text), CALL_OPEN, strlen(CALL_OPEN))); p++)
            k++;
        if (!k) return QV_ERR_INVALID;
    } else if (how == QV_PROTO_TOOLS_AUTO_JSON) {
        k = json_calls(text, len, NULL, NULL, 0);
        if (!k) return QV_ERR_INVALID;
    } else if (how == QV_PROTO_TOOLS_AUTO_MISTRAL) {
        if (!mistral_list(text, len, &mcontent, &mat, &mlen)) return QV_ERR_INVALID;
        k = qv_json_list_items(text + mat, mlen, NULL, NULL, 0);
        if (k == SIZE_MAX || k == 0) return QV_ERR_INVALID;
    } else {
        return QV_ERR_INVALID;
    }
    off = qv_malloc(2 * k * sizeof(size_t));
    qv_proto_tool_call *c = qv_calloc(k, sizeof(*c));
    if (!off || !c) {
        qv_free(off);
        qv_free(c);
        return QV_ERR_NOMEM;
    }
    lens = off + k;
    if (how == QV_PROTO_TOOLS_NAMED) {
        off[0] = 0, lens[0] = len;
    } else if (how == QV_PROTO_TOOLS_REQUIRED) {
        qv_json_list_items(text, len, off, lens, k);
    } else if (how == QV_PROTO_TOOLS_AUTO_JSON) {
        json_calls(text, len, off, lens, k);
    } else if (how == QV_PROTO_TOOLS_AUTO_MISTRAL) {
        qv_json_list_items(text + mat, mlen, off, lens, k);
        for (size_t i = 0; i < k; i++)
            off[i] += mat;
        if (content_len) *content_len = mcontent;
    } else {
        const char *p = find_in(text, len, CALL_OPEN, strlen(CALL_OPEN));
        if (content_len) *content_len = (size_t)(p - text);
        for (size_t i = 0; i < k; i++) {
            const char *b = p + strlen(CALL_OPEN), *end = text + len;
            const char *next = find_in(b, (size_t)(end - b), CALL_OPEN, strlen(CALL_OPEN));
            const char *close = find_in(b, (size_t)(end - b), CALL_CLOSE, strlen(CALL_CLOSE));
            const char *e = close && (!next || close < next) ? close : next ? next : end;
            off[i] = (size_t)(b - text);
            lens[i] = (size_t)(e - b);
            p = next;
        }
    }
    qv_status st = QV_OK;
    for (size_t i = 0; i < k && st == QV_OK; i++) {
        char id[96];
        snprintf(id, sizeof(id), "call_%s_%zu", id_base ? id_base : "", i);
        c[i].index = (int)i;
        if (!(c[i].id = qv_strdup(id))) st = QV_ERR_NOMEM;
        if (st) break;
        if (how == QV_PROTO_TOOLS_NAMED) { /* the arguments as the model wrote them */
            st = qv_json_text_check(text, len, false);
            cJSON *doc = st ? NULL : cJSON_ParseWithLength(text, len);
            if (!st && !cJSON_IsObject(doc)) st = doc ? QV_ERR_INVALID : QV_ERR_NOMEM;
            cJSON_Delete(doc);
            if (!st && (!(c[i].name = qv_strdup(name)) || !(c[i].arguments = qv_malloc(len + 1))))
                st = QV_ERR_NOMEM;
            if (!st) {
                memcpy(c[i].arguments, text, len);
                c[i].arguments[len] = '\0';
            }
        } else {
            st = call_from(text + off[i], lens[i], how == QV_PROTO_TOOLS_AUTO_JSON, &c[i]);
        }
    }
    qv_free(off);
    if (st != QV_OK) {
        if (content_len) *content_len = 0;
        qv_proto_tool_calls_free(c, k);
        return st;
    }
    *calls = c;
    *n = k;
    return QV_OK;
}

static bool json_ws(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

static size_t utf8_seq_len(const unsigned char *s);

/* The value of the 4 hex digits at s[0..n): *v; 0 when they are not all there yet, SIZE_MAX
 * when one is not a hex digit, else 4. */
static size_t hex4(const char *s, size_t n, unsigned *v) {
    *v = 0;
    for (size_t i = 0; i < 4; i++) {
        if (i >= n) return 0;
        const char c = s[i];
        const unsigned d = c >= '0' && c <= '9'   ? (unsigned)(c - '0')
                           : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                           : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10)
                                                  : 16u;
        if (d == 16) return SIZE_MAX;
        *v = *v * 16 + d;
    }
    return 4;
}

/* Bytes of the escape at s[0..n) (s[0] == '\\'): 2, 6, or 12 for a surrogate pair; 0 while it
 * is not complete; SIZE_MAX when it is not a valid one (a lone surrogate included). */
static size_t escape_len(const char *s, size_t n) {
    if (n < 2) return 0;
    if (s[1] && strchr("\"\\/bfnrt", s[1])) return 2;
    unsigned hi = 0, lo = 0;
    size_t h = s[1] == 'u' ? hex4(s + 2, n - 2, &hi) : SIZE_MAX;
    if (h != 4) return h;
    if (hi >= 0xDC00 && hi <= 0xDFFF) return SIZE_MAX;
    if (hi < 0xD800 || hi > 0xDBFF) return 6;
    if (n < 8) return n >= 7 && s[6] != '\\' ? SIZE_MAX : 0;
    if (s[6] != '\\' || s[7] != 'u') return SIZE_MAX;
    h = hex4(s + 8, n - 8, &lo);
    if (h != 4) return h;
    return lo >= 0xDC00 && lo <= 0xDFFF ? 12 : SIZE_MAX;
}

/* The stable beginning of a call's arguments being written (a[0..n), a JSON object not yet
 * complete) as the finished call will write it: the text up to the last point where it can be
 * closed (after an opening bracket or a complete value, inside a string value), closed,
 * re-written by qv_json_py_dumps (compact, as call_from), without the closing characters. The
 * scan follows JSON's grammar and stops where the text leaves it (so a cut always closes into
 * valid JSON) or where a token is not complete yet. *out is "" when nothing is stable. */
static qv_status partial_args(const char *a, size_t n, char **out) {
    enum { VALUE, VALUE_OR_END, KEY, KEY_OR_END, COLON, COMMA_OR_END, DONE } expect = VALUE;
    char stack[QV_JSON_MAX_DEPTH + 2], closers[QV_JSON_MAX_DEPTH + 3];
    size_t depth = 0, cut = 0, n_close = 0, j = 0;
    *out = NULL;
    while (j < n) {
        const char c = a[j];
        const bool value = expect == VALUE || expect == VALUE_OR_END;
        if (json_ws(c)) {
            j++;
            continue;
        }
        if (c == '"' && (value || expect == KEY || expect == KEY_OR_END)) { /* a string */
            size_t k = j + 1;
            bool closed = false, bad = false;
            if (value) { /* inside a value: a cut after each whole character */
                cut = k;
                n_close = 0;
                closers[n_close++] = '"';
                for (size_t d = depth; d > 0; d--)
                    closers[n_close++] = stack[d - 1];
            }
            while (k < n && !closed && !bad) {
                const unsigned char u = (unsigned char)a[k];
                size_t m = u == '\\'  ? escape_len(a + k, n - k)
                           : u == '"' ? 1
                           : u < 0x20 ? SIZE_MAX
                                      : (u < 0xC0   ? 1
                                         : u < 0xE0 ? 2
                                         : u < 0xF0 ? 3
                                                    : 4);
                if (m == 0 || (m != SIZE_MAX && k + m > n)) break; /* not complete yet */
                if (m == SIZE_MAX ||
                    (u >= 0x80 && utf8_seq_len((const unsigned char *)a + k) != m)) {
                    bad = true;
                    break;
                }
                closed = u == '"';
                k += m;
                if (value && !closed) cut = k;
            }
            if (!closed) break;
            j = k;
            if (!value) {
                expect = COLON; /* no cut between a key and its value */
                continue;
            }
        } else if ((c == '{' || c == '[') && value) {
            if (depth == QV_JSON_MAX_DEPTH) break;
            stack[depth++] = c == '{' ? '}' : ']';
            expect = c == '{' ? KEY_OR_END : VALUE_OR_END;
            j++;
            cut = j;
            n_close = 0;
            for (size_t d = depth; d > 0; d--)
                closers[n_close++] = stack[d - 1];
            continue;
        } else if ((c == '}' || c == ']') && depth && stack[depth - 1] == c &&
                   (expect == COMMA_OR_END || expect == (c == '}' ? KEY_OR_END : VALUE_OR_END))) {
            depth--;
            j++;
        } else if (c == ':' && expect == COLON) {
            expect = VALUE;
            j++;
            continue; /* no cut after a separator */
        } else if (c == ',' && expect == COMMA_OR_END) {
            expect = stack[depth - 1] == '}' ? KEY : VALUE;
            j++;
            continue;
        } else if (value && c != '"' && c != '}' && c != ']' && c != ',' && c != ':') {
            size_t k = j; /* a number or a literal: whole once something follows it */
            while (k < n &&
                   (isalnum((unsigned char)a[k]) || a[k] == '+' || a[k] == '-' || a[k] == '.'))
                k++;
            if (k == n || k == j || qv_json_text_check(a + j, k - j, false) != QV_OK) break;
            j = k;
        } else {
            break; /* not JSON */
        }
        expect = depth ? COMMA_OR_END : DONE; /* a value ended */
        cut = j;
        n_close = 0;
        for (size_t d = depth; d > 0; d--)
            closers[n_close++] = stack[d - 1];
    }
    size_t m = 0;
    char *text = cut ? qv_malloc(cut + n_close) : NULL, *py = NULL;
    if (cut && !text) return QV_ERR_NOMEM;
    if (text) {
        memcpy(text, a, cut);
        memcpy(text + cut, closers, n_close);
        qv_status st = qv_json_py_dumps(text, cut + n_close, true, &py, &m);
        qv_free(text);
        if (st == QV_ERR_NOMEM) return st;
        /* the closers come out as written; anything else keeps nothing */
        if (st == QV_OK && (m < n_close || memcmp(py + m - n_close, closers, n_close)))
            m = 0;
        else if (st == QV_OK)
            m -= n_close;
        else
            m = 0;
    }
    if (!py && !(py = qv_malloc(1))) return QV_ERR_NOMEM;
    py[m] = '\0';
    *out = py;
    return QV_OK;
}

/* The decoded JSON string token text[0..n), or NULL (*st QV_ERR_NOMEM when out of memory,
 * left alone when the token is not a valid string). */
static char *json_string_at(const char *text, size_t n, qv_status *st) {
    if (qv_json_text_check(text, n, false) != QV_OK) return NULL;
    cJSON *s = cJSON_ParseWithLength(text, n);
    char *out = cJSON_IsString(s) ? qv_strdup(s->valuestring) : NULL;
    if (!out && (!s || cJSON_IsString(s))) *st = QV_ERR_NOMEM;
    cJSON_Delete(s);
    return out;
}

static size_t skip_ws(const char *text, size_t len, size_t i) {
    while (i < len && json_ws(text[i]))
        i++;
    return i;
}

/* One call object at o[0..len) (o[0] == '{'), perhaps still being written, as far as it is
 * final: *m its length once whole (0 before), *name once the name is whole (NULL before, *args
 * then too), *args the stable beginning of its arguments (partial_args) or, whole, the call as
 * call_from reads it. Members count as cJSON finds them in call_from: the first "name", the
 * first "arguments", else (Llama's `parameters`) the first "parameters". QV_ERR_INVALID when it
 * is not a call (a whole object call_from refuses, a name that is not a string, arguments that
 * are not an object). */
static qv_status call_partial(const char *o, size_t len, bool parameters, size_t *m, char **name,
                              char **args) {
    size_t off = 0, n = 0;
    *m = 0;
    *name = *args = NULL;
    if (qv_json_value_span(o, len, &off, &n)) { /* whole: as the finished answer has it */
        qv_proto_tool_call c = {0};
        const qv_status st = call_from(o, n, parameters, &c);
        if (st != QV_OK) {
            qv_free(c.name);
            qv_free(c.arguments);
            return st;
        }
        *m = n, *name = c.name, *args = c.arguments;
        return QV_OK;
    }
    /* its members so far: the name once whole, the arguments begun */
    size_t p = 1, at = SIZE_MAX, at_n = 0, alt = SIZE_MAX, alt_n = 0; /* _n: a whole value's */
    bool named = false;
    qv_status st = QV_OK;
    for (;;) {
        while (p < len && (json_ws(o[p]) || o[p] == ','))
            p++;
        size_t ko = 0, kn = 0, vo = 0, vn = 0;
        if (p == len || o[p] != '"' || !qv_json_value_span(o + p, len - p, &ko, &kn)) break;
        char *key = json_string_at(o + p, kn, &st); /* escapes decoded */
        if (!key) break;
        const bool is_name = !named && !strcmp(key, "name");
        const bool is_args = at == SIZE_MAX && !strcmp(key, "arguments");
        const bool is_alt = parameters && alt == SIZE_MAX && !strcmp(key, "parameters");
        qv_free(key);
        p += kn;
        while (p < len && (json_ws(o[p]) || o[p] == ':'))
            p++;
        if (p == len) break;
        const bool whole = qv_json_value_span(o + p, len - p, &vo, &vn);
        if ((is_name && o[p] != '"') || (is_args && o[p] != '{')) {
            st = QV_ERR_INVALID;
            break;
        }
        if (is_args) at = p, at_n = whole ? vn : 0;
        if (is_alt) alt = p, alt_n = whole ? vn : 0;
        named = named || is_name;
        if (!whole || (is_name && !(*name = json_string_at(o + p, vn, &st)))) break;
        p += vn;
    }
    if (at == SIZE_MAX && alt != SIZE_MAX && o[alt] == '{') at = alt, at_n = alt_n;
    if (st == QV_OK && *name && at == SIZE_MAX)
        st = (*args = qv_strdup("")) ? QV_OK : QV_ERR_NOMEM;
    else if (st == QV_OK && *name && at_n)
        st = qv_json_py_dumps(o + at, at_n, true, args, NULL);
    else if (st == QV_OK && *name)
        st = partial_args(o + at, len - at, args);
    if (st == QV_ERR_LIMIT) st = QV_ERR_INVALID;
    if (st != QV_OK) {
        qv_free(*name);
        *name = NULL;
    }
    return st;
}

/* Where the list of Mistral's calls begins in the unfinished text[0..len), as far as it is
 * known: the "[" of a list alone (the answer begins with "[" that does not begin the marker),
 * else what follows the first "[TOOL_CALLS]"; SIZE_MAX before either is there. The choice
 * never changes as the text grows. */
static size_t mistral_start(const char *text, size_t len) {
    const size_t k = strlen(MISTRAL_CALLS), i = skip_ws(text, len, 0);
    if (i < len && text[i] == '[' && memcmp(text + i, MISTRAL_CALLS, QV_MIN(len - i, k)) != 0)
        return i;
    const char *p = find_in(text, len, MISTRAL_CALLS, k);
    return p ? skip_ws(text, len, (size_t)(p - text) + k) : SIZE_MAX;
}

/* Hermes: the block after the "<tool_call>" at text[b] ends at its "</tool_call>", at the next
 * "<tool_call>", or, not closed yet, before an end that may begin either; what is after that end
 * never changes what is before it. */
static size_t block_end(const char *text, size_t len, size_t b) {
    return b + QV_MIN(before_marker(text + b, len - b, CALL_CLOSE),
                      before_marker(text + b, len - b, CALL_OPEN));
}

qv_status qv_proto_tool_calls_partial(enum qv_proto_tool_choice how, const char *text, size_t len,
                                      const char *id_base, qv_proto_tool_call **calls, size_t *n) {
    *calls = NULL;
    *n = 0;
    const bool hermes = how == QV_PROTO_TOOLS_AUTO, llama = how == QV_PROTO_TOOLS_AUTO_JSON;
    const char sep = llama ? ';' : ','; /* between calls, but Hermes' blocks */
    size_t i = 0, b = 0, cap = 0;       /* b: Hermes' search for the next block */
    if (how == QV_PROTO_TOOLS_REQUIRED || how == QV_PROTO_TOOLS_AUTO_MISTRAL) { /* a list */
        i = how == QV_PROTO_TOOLS_REQUIRED ? skip_ws(text, len, 0) : mistral_start(text, len);
        if (i >= len || text[i] != '[') return QV_OK;
        i++;
    } else if (llama) {
        i = json_calls_start(text, len);
    } else if (!hermes) {
        return QV_OK;
    }
    qv_status st = QV_OK;
    for (size_t k = 0; st == QV_OK; k++) {
        size_t end = len, m = 0;
        if (hermes) {
            const char *p = find_in(text + b, len - b, CALL_OPEN, strlen(CALL_OPEN));
            if (!p) break;
            b = (size_t)(p - text) + strlen(CALL_OPEN);
            end = block_end(text, len, b);
            i = skip_ws(text, end, b);
        } else {
            i = skip_ws(text, len, i);
            if (k && (i == len || text[i] != sep)) break;
            if (k) i = skip_ws(text, len, i + 1);
        }
        if (i == end || text[i] != '{') break;
        char *name = NULL, *args = NULL;
        st = call_partial(text + i, end - i, llama, &m, &name, &args);
        if (st == QV_ERR_INVALID) st = QV_OK; /* not a call: the calls end before it */
        if (st != QV_OK || !name) break;
        if (*n == cap) {
            cap = cap ? 2 * cap : 4;
            qv_proto_tool_call *q = qv_realloc(*calls, cap * sizeof(*q));
            if (!q) {
                qv_free(name);
                qv_free(args);
                st = QV_ERR_NOMEM;
                break;
            }
            *calls = q;
        }
        char id[96];
        snprintf(id, sizeof(id), "call_%s_%zu", id_base ? id_base : "", k);
        qv_proto_tool_call *c = &(*calls)[(*n)++];
        *c = (qv_proto_tool_call){.index = (int)k, .name = name, .arguments = args};
        if (!(c->id = qv_strdup(id))) st = QV_ERR_NOMEM;
        if (!m) break; /* the call being written is the last one begun */
        i += m;
    }
    if (st != QV_OK) {
        qv_proto_tool_calls_free(*calls, *n);
        *calls = NULL;
        *n = 0;
    }
    return st;
}

/* ---- encoders ---- */

bool qv__proto_put_item(cJSON *obj, const char *key, cJSON *item) {
    if (!item) return false;
    if (!cJSON_AddItemToObject(obj, key, item)) {
        cJSON_Delete(item);
        return false;
    }
    return true;
}

cJSON *qv__proto_add_text(cJSON *obj, const char *name, const char *text, size_t len) {
    char *tmp = qv_strndup(text ? text : "", text ? len : 0);
    if (!tmp) return NULL;
    cJSON *s = cJSON_AddStringToObject(obj, name, tmp);
    qv_free(tmp);
    return s;
}

static bool add_usage(cJSON *obj, const qv_proto_result *r) {
    cJSON *u = cJSON_AddObjectToObject(obj, "usage");
    cJSON *d = NULL;
    return u && cJSON_AddNumberToObject(u, "prompt_tokens", r->prompt_tokens) &&
           cJSON_AddNumberToObject(u, "completion_tokens", r->completion_tokens) &&
           cJSON_AddNumberToObject(u, "total_tokens", r->prompt_tokens + r->completion_tokens) &&
           (d = cJSON_AddObjectToObject(u, "prompt_tokens_details")) &&
           cJSON_AddNumberToObject(d, "cached_tokens", r->cached_tokens);
}

static cJSON *bytes_array(const char *s) {
    cJSON *a = cJSON_CreateArray();
    for (const unsigned char *p = (const unsigned char *)s; a && *p; p++)
        if (!cJSON_AddItemToArray(a, cJSON_CreateNumber(*p))) {
            cJSON_Delete(a);
            return NULL;
        }
    return a;
}

cJSON *qv__proto_logprobs_list(const qv_proto_logprob *lps, size_t n) {
    cJSON *content = cJSON_CreateArray();
    if (!content) return NULL;
    for (size_t i = 0; i < n; i++) {
        const qv_proto_logprob *lp = &lps[i];
        cJSON *t = cJSON_CreateObject();
        if (!t || !cJSON_AddItemToArray(content, t)) goto oom;
        cJSON *top;
        if (!cJSON_AddStringToObject(t, "token", lp->token) ||
            !cJSON_AddNumberToObject(t, "logprob", (double)lp->logprob) ||
            !qv__proto_put_item(t, "bytes", bytes_array(lp->token)) ||
            !(top = cJSON_AddArrayToObject(t, "top_logprobs")))
            goto oom;
        for (int k = 0; k < lp->n_top; k++) {
            cJSON *a = cJSON_CreateObject();
            if (!a || !cJSON_AddItemToArray(top, a) ||
                !cJSON_AddStringToObject(a, "token", lp->top_token[k]) ||
                !cJSON_AddNumberToObject(a, "logprob", (double)lp->top_logprob[k]) ||
                !qv__proto_put_item(a, "bytes", bytes_array(lp->top_token[k])))
                goto oom;
        }
    }
    return content;
oom:
    cJSON_Delete(content);
    return NULL;
}

/* Chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}. */
static cJSON *chat_logprobs(const qv_proto_result *r) {
    cJSON *o = cJSON_CreateObject();
    if (o && qv__proto_put_item(o, "content", qv__proto_logprobs_list(r->lps, r->n_lps))) return o;
    cJSON_Delete(o);
    return NULL;
}

/* Completions: {"tokens", "token_logprobs", "top_logprobs": [{tok: lp}], "text_offset"}. */
static cJSON *completion_logprobs(const qv_proto_result *r) {
    cJSON *o = cJSON_CreateObject();
    cJSON *toks = o ? cJSON_AddArrayToObject(o, "tokens") : NULL;
    cJSON *lps = o ? cJSON_AddArrayToObject(o, "token_logprobs") : NULL;
    cJSON *tops = o ? cJSON_AddArrayToObject(o, "top_logprobs") : NULL;
    cJSON *offs = o ? cJSON_AddArrayToObject(o, "text_offset") : NULL;
    if (!toks || !lps || !tops || !offs) goto oom;
    size_t off = r->text_offset;
    for (size_t i = 0; i < r->n_lps; i++) {
        const qv_proto_logprob *lp = &r->lps[i];
        cJSON *top = lp->none ? cJSON_CreateNull() : cJSON_CreateObject();
        if (!top || !cJSON_AddItemToArray(tops, top)) {
            cJSON_Delete(top);
            goto oom;
        }
        if (!cJSON_AddItemToArray(toks, cJSON_CreateString(lp->token)) ||
            !cJSON_AddItemToArray(lps, lp->none ? cJSON_CreateNull()
                                                : cJSON_CreateNumber((double)lp->logprob)) ||
            !cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off)))
            goto oom;
        for (int k = 0; k < lp->n_top && !lp->none; k++)
            if (!cJSON_GetObjectItemCaseSensitive(top, lp->top_token[k]) &&
                !cJSON_AddNumberToObject(top, lp->top_token[k], (double)lp->top_logprob[k]))
                goto oom;
        off += strlen(lp->token);
    }
    return o;
oom:
    cJSON_Delete(o);
    return NULL;
}

/* One prompt_logprobs entry: {"<id>": {"logprob", "rank", "decoded_token"}} for `id`. */
static bool add_ranked(cJSON *pos, int32_t id, float logprob, int rank, const char *text) {
    char key[16];
    snprintf(key, sizeof(key), "%d", (int)id);
    cJSON *o = cJSON_AddObjectToObject(pos, key);
    return o && cJSON_AddNumberToObject(o, "logprob", (double)logprob) &&
           cJSON_AddNumberToObject(o, "rank", rank) &&
           cJSON_AddStringToObject(o, "decoded_token", text);
}

/* vLLM prompt_logprobs: null for the first prompt token, then for each one its own entry and
 * its alternatives' (ranks 1..n_top), keyed by id; the token itself, when it is one of them,
 * takes that place's rank, as vLLM's dict does. */
static cJSON *prompt_logprobs(const qv_proto_result *r) {
    cJSON *list = cJSON_CreateArray();
    for (size_t i = 0; list && i < r->n_plps; i++) {
        const qv_proto_logprob *lp = &r->plps[i];
        cJSON *pos = lp->none ? cJSON_CreateNull() : cJSON_CreateObject();
        if (!pos || !cJSON_AddItemToArray(list, pos)) {
            cJSON_Delete(pos);
            goto oom;
        }
        if (lp->none) continue;
        int rank = lp->rank;
        for (int k = 0; k < lp->n_top; k++)
            if (lp->top_id[k] == lp->id) rank = k + 1;
        if (!add_ranked(pos, lp->id, lp->logprob, rank, lp->token)) goto oom;
        for (int k = 0; k < lp->n_top; k++)
            if (lp->top_id[k] != lp->id &&
                !add_ranked(pos, lp->top_id[k], lp->top_logprob[k], k + 1, lp->top_token[k]))
                goto oom;
    }
    return list;
oom:
    cJSON_Delete(list);
    return NULL;
}

static cJSON *header(const qv_proto_result *r, const char *object) {
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "id", r->id ? r->id : "") ||
        !cJSON_AddStringToObject(o, "object", object) ||
        !cJSON_AddNumberToObject(o, "created", (double)r->created) ||
        !cJSON_AddStringToObject(o, "model", r->model ? r->model : "")) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static bool add_finish(cJSON *choice, const char *finish) {
    return finish ? cJSON_AddStringToObject(choice, "finish_reason", finish) != NULL
                  : cJSON_AddNullToObject(choice, "finish_reason") != NULL;
}

static char *print_and_delete(cJSON *o) {
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

/* message.tool_calls [{"id", "type", "function": {"name", "arguments"}}], or a chunk's
 * delta.tool_calls, where each also has its index and a call's continuations have only
 * function.arguments. */
static cJSON *tool_calls(const qv_proto_result *r, bool chunk) {
    cJSON *list = cJSON_CreateArray();
    for (size_t i = 0; list && i < r->n_calls; i++) {
        const qv_proto_tool_call *c = &r->calls[i];
        cJSON *o = cJSON_CreateObject(), *fn = NULL;
        bool ok = o && cJSON_AddItemToArray(list, o);
        if (!ok) cJSON_Delete(o);
        ok = ok && (!chunk || cJSON_AddNumberToObject(o, "index", c->index));
        ok = ok && (!c->id || (cJSON_AddStringToObject(o, "id", c->id) &&
                               cJSON_AddStringToObject(o, "type", "function")));
        ok = ok && (fn = cJSON_AddObjectToObject(o, "function"));
        ok = ok && (!c->name || cJSON_AddStringToObject(fn, "name", c->name));
        ok = ok && qv__proto_add_text(fn, "arguments", c->arguments ? c->arguments : "",
                                      c->arguments ? strlen(c->arguments) : 0);
        if (!ok) {
            cJSON_Delete(list);
            return NULL;
        }
    }
    return list;
}

/* One choice of a response or chunk. */
static cJSON *choice(const qv_proto_result *r, bool chunk, bool first) {
    cJSON *c = cJSON_CreateObject();
    if (!c || !cJSON_AddNumberToObject(c, "index", r->index)) goto oom;
    if (r->endpoint == QV_PROTO_COMPLETIONS) {
        if (!qv__proto_add_text(c, "text", r->text, r->text_len)) goto oom;
        if (!qv__proto_put_item(c, "logprobs",
                                r->logprobs ? completion_logprobs(r) : cJSON_CreateNull()))
            goto oom;
        if (!chunk && r->prompt_logprobs &&
            !qv__proto_put_item(c, "prompt_logprobs", prompt_logprobs(r)))
            goto oom;
    } else {
        cJSON *m = cJSON_AddObjectToObject(c, chunk ? "delta" : "message");
        if (!m) goto oom;
        if ((!chunk || first) && !cJSON_AddStringToObject(m, "role", "assistant")) goto oom;
        if (r->n_calls) { /* content: the text before the calls ("auto"), else null */
            if (r->text_len ? !qv__proto_add_text(m, "content", r->text, r->text_len)
                            : !chunk && !cJSON_AddNullToObject(m, "content"))
                goto oom;
            if (!qv__proto_put_item(m, "tool_calls", tool_calls(r, chunk))) goto oom;
        } else if ((!chunk || r->text_len || first) &&
                   !qv__proto_add_text(m, "content", r->text, r->text_len)) {
            goto oom;
        }
        if (!qv__proto_put_item(c, "logprobs", r->logprobs ? chat_logprobs(r) : cJSON_CreateNull()))
            goto oom;
    }
    if (!add_finish(c, r->finish_reason)) goto oom;
    return c;
oom:
    cJSON_Delete(c);
    return NULL;
}

char *qv_proto_encode_response(const qv_proto_result *r) {
    return qv_proto_encode_response_choices(r, 1);
}

char *qv_proto_encode_response_choices(const qv_proto_result *r, size_t n) {
    cJSON *o = header(r, r->endpoint == QV_PROTO_CHAT ? "chat.completion" : "text_completion");
    cJSON *choices = o ? cJSON_AddArrayToObject(o, "choices") : NULL;
    for (size_t i = 0; i < n; i++) {
        cJSON *c = choices ? choice(&r[i], false, false) : NULL;
        if (!c || !cJSON_AddItemToArray(choices, c)) {
            cJSON_Delete(c);
            cJSON_Delete(o);
            return NULL;
        }
    }
    if (!add_usage(o, r) || (r->endpoint == QV_PROTO_CHAT && r->prompt_logprobs &&
                             !qv__proto_put_item(o, "prompt_logprobs", prompt_logprobs(r)))) {
        cJSON_Delete(o);
        return NULL;
    }
    return print_and_delete(o);
}

char *qv_proto_encode_chunk(const qv_proto_result *r, bool first) {
    cJSON *o =
        header(r, r->endpoint == QV_PROTO_CHAT ? "chat.completion.chunk" : "text_completion");
    cJSON *choices = o ? cJSON_AddArrayToObject(o, "choices") : NULL;
    if (!choices) goto oom;
    if (r->usage) {
        if (!add_usage(o, r)) goto oom;
    } else {
        cJSON *c = choice(r, true, first);
        if (!c) goto oom;
        if (!cJSON_AddItemToArray(choices, c)) {
            cJSON_Delete(c);
            goto oom;
        }
        if (r->chunk_usage && !add_usage(o, r)) goto oom;
    }
    return print_and_delete(o);
oom:
    cJSON_Delete(o);
    return NULL;
}

/* Length of the valid UTF-8 sequence at s (1-4), or 0 when the bytes there are not one
 * (overlong forms, surrogates and code points above U+10FFFF are not). */
static size_t utf8_seq_len(const unsigned char *s) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t n = c >= 0xC2 && c <= 0xDF   ? 2
               : c >= 0xE0 && c <= 0xEF ? 3
               : c >= 0xF0 && c <= 0xF4 ? 4
                                        : 0;
    if (!n) return 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && s[1] < 0xA0) return 0;  /* overlong */
    if (c == 0xED && s[1] >= 0xA0) return 0; /* surrogate */
    if (c == 0xF0 && s[1] < 0x90) return 0;  /* overlong */
    if (c == 0xF4 && s[1] >= 0x90) return 0; /* above U+10FFFF */
    return n;
}

/* Copy of s with every byte that is not part of valid UTF-8 replaced by U+FFFD: messages echo
 * client input (names, paths) cut to a byte limit, which may split a character, and JSON text
 * must be UTF-8. Owner: caller (qv_free). */
static char *utf8_repair(const char *s) {
    size_t len = strlen(s);
    char *out = qv_malloc(len * 3 + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq_len((const unsigned char *)s + i);
        if (n) {
            memcpy(out + o, s + i, n);
            o += n;
            i += n;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = '\0';
    return out;
}

/* A JSON string of s (NULL: "") with invalid UTF-8 replaced (utf8_repair). NULL on OOM. */
static cJSON *repaired_string(const char *s) {
    char *fixed = utf8_repair(s ? s : "");
    cJSON *item = fixed ? cJSON_CreateString(fixed) : NULL;
    qv_free(fixed);
    return item;
}

/* Adds repaired_string(s) under name; false (nothing added) on OOM. */
static bool add_repaired(cJSON *obj, const char *name, const char *s) {
    return qv__proto_put_item(obj, name, repaired_string(s));
}

char *qv_proto_encode_error(const char *message, const char *type, const char *param,
                            const char *code) {
    char *msg = utf8_repair(message ? message : "");
    if (!msg) return NULL;
    cJSON *o = cJSON_CreateObject();
    cJSON *e = o ? cJSON_AddObjectToObject(o, "error") : NULL;
    bool ok = e && cJSON_AddStringToObject(e, "message", msg);
    qv_free(msg);
    if (!ok || !cJSON_AddStringToObject(e, "type", type ? type : "invalid_request_error") ||
        !(param && *param ? cJSON_AddStringToObject(e, "param", param)
                          : cJSON_AddNullToObject(e, "param")) ||
        !(code ? cJSON_AddStringToObject(e, "code", code) : cJSON_AddNullToObject(e, "code"))) {
        cJSON_Delete(o);
        return NULL;
    }
    return print_and_delete(o);
}

char *qv_proto_encode_tokenize(const int32_t *ids, size_t n, int max_model_len,
                               const char *const *strs) {
    cJSON *o = cJSON_CreateObject();
    cJSON *toks = NULL, *st = NULL;
    if (!o || !cJSON_AddNumberToObject(o, "count", (double)n) ||
        !cJSON_AddNumberToObject(o, "max_model_len", max_model_len) ||
        !(toks = cJSON_AddArrayToObject(o, "tokens")))
        goto oom;
    for (size_t i = 0; i < n; i++)
        if (!cJSON_AddItemToArray(toks, cJSON_CreateNumber(ids[i]))) goto oom;
    if (!strs) {
        if (!cJSON_AddNullToObject(o, "token_strs")) goto oom;
    } else {
        if (!(st = cJSON_AddArrayToObject(o, "token_strs"))) goto oom;
        for (size_t i = 0; i < n; i++) {
            cJSON *item = repaired_string(strs[i]);
            if (!cJSON_AddItemToArray(st, item)) {
                cJSON_Delete(item);
                goto oom;
            }
        }
    }
    return print_and_delete(o);
oom:
    cJSON_Delete(o);
    return NULL;
}

char *qv_proto_encode_detokenize(const char *text) {
    cJSON *o = cJSON_CreateObject();
    if (!o || !add_repaired(o, "prompt", text)) {
        cJSON_Delete(o);
        return NULL;
    }
    return print_and_delete(o);
}

char *qv_proto_encode_models(const char *const *ids, size_t n, int64_t created,
                             const char *owned_by) {
    cJSON *o = cJSON_CreateObject();
    cJSON *data = NULL;
    if (!o || !cJSON_AddStringToObject(o, "object", "list") ||
        !(data = cJSON_AddArrayToObject(o, "data")))
        goto oom;
    for (size_t i = 0; i < n; i++) {
        cJSON *m = cJSON_CreateObject();
        if (!m || !cJSON_AddItemToArray(data, m)) {
            cJSON_Delete(m);
            goto oom;
        }
        if (!cJSON_AddStringToObject(m, "id", ids[i]) ||
            !cJSON_AddStringToObject(m, "object", "model") ||
            !cJSON_AddNumberToObject(m, "created", (double)created) ||
            !cJSON_AddStringToObject(m, "owned_by", owned_by ? owned_by : "quiver"))
            goto oom;
    }
    return print_and_delete(o);
oom:
    cJSON_Delete(o);
    return NULL;
}

/* Adds the adapter fields of `a` to object o; false when out of memory. */
static bool add_adapter_fields(cJSON *o, const qv_proto_adapter_info *a) {
    if (!cJSON_AddStringToObject(o, "version", a->version ? a->version : "")) return false;
    if (!(a->kind ? cJSON_AddStringToObject(o, "kind", a->kind) : cJSON_AddNullToObject(o, "kind")))
        return false;
    if (!(a->rank > 0 ? cJSON_AddNumberToObject(o, "rank", a->rank)
                      : cJSON_AddNullToObject(o, "rank")))
        return false;
    if (!cJSON_AddStringToObject(o, "tier", a->tier ? a->tier : "disk")) return false;
    if (a->alias_of && !cJSON_AddStringToObject(o, "alias_of", a->alias_of)) return false;
    return true;
}

static cJSON *adapter_object(const qv_proto_adapter_info *a) {
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "object", "adapter") ||
        !cJSON_AddStringToObject(o, "name", a->name) || !add_adapter_fields(o, a)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* One model object: the base (a == NULL) or an adapter of it. */
static cJSON *model_obj(const char *base, const qv_proto_adapter_info *a, int64_t created) {
    cJSON *m = cJSON_CreateObject(), *ad = NULL;
    if (!m || !cJSON_AddStringToObject(m, "id", a ? a->name : base) ||
        !cJSON_AddStringToObject(m, "object", "model") ||
        !cJSON_AddNumberToObject(m, "created", (double)created) ||
        !cJSON_AddStringToObject(m, "owned_by", "quiver"))
        goto oom;
    if (a && (!(ad = cJSON_AddObjectToObject(m, "adapter")) ||
              !cJSON_AddStringToObject(m, "parent", base) ||
              !cJSON_AddStringToObject(m, "root", base) || !add_adapter_fields(ad, a)))
        goto oom;
    return m;
oom:
    cJSON_Delete(m);
    return NULL;
}

char *qv_proto_encode_model_list(const char *base, const qv_proto_adapter_info *a, size_t n,
                                 int64_t created) {
    cJSON *o = cJSON_CreateObject();
    cJSON *data = NULL;
    if (!o || !cJSON_AddStringToObject(o, "object", "list") ||
        !(data = cJSON_AddArrayToObject(o, "data")))
        goto oom;
    for (size_t i = 0; i <= n; i++) {
        cJSON *m = model_obj(base, i ? &a[i - 1] : NULL, created);
        if (!m || !cJSON_AddItemToArray(data, m)) {
            cJSON_Delete(m);
            goto oom;
        }
    }
    return print_and_delete(o);
oom:
    cJSON_Delete(o);
    return NULL;
}

char *qv_proto_encode_model(const char *base, const qv_proto_adapter_info *a, int64_t created) {
    return print_and_delete(model_obj(base, a, created));
}

char *qv_proto_encode_adapter_list(const qv_proto_adapter_info *a, size_t n) {
    cJSON *o = cJSON_CreateObject();
    cJSON *data = NULL;
    if (!o || !cJSON_AddStringToObject(o, "object", "list") ||
        !(data = cJSON_AddArrayToObject(o, "data")))
        goto oom;
    for (size_t i = 0; i < n; i++) {
        cJSON *m = adapter_object(&a[i]);
        if (!m || !cJSON_AddItemToArray(data, m)) {
            cJSON_Delete(m);
            goto oom;
        }
    }
    return print_and_delete(o);
oom:
    cJSON_Delete(o);
    return NULL;
}

char *qv_proto_encode_adapter(const qv_proto_adapter_info *a) {
    cJSON *o = adapter_object(a);
    return o ? print_and_delete(o) : NULL;
}

qv_status qv_proto_adapter_config_summary(const char *json, size_t len, char *kind, size_t kind_cap,
                                          int *rank) {
    if (kind_cap) kind[0] = '\0';
    *rank = 0;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return QV_ERR_INVALID;
    }
    const cJSON *pt = qv__proto_field(root, "peft_type");
    const cJSON *r = qv__proto_field(root, "r");
    if (cJSON_IsString(pt)) {
        snprintf(kind, kind_cap, "%s", pt->valuestring);
        if (!strcmp(pt->valuestring, "LORA") && cJSON_IsNumber(r) && r->valuedouble > 0 &&
            r->valuedouble < 1e9)
            *rank = (int)r->valuedouble;
    } else if (qv__proto_field(root, "architecture") || qv__proto_field(root, "config")) {
        snprintf(kind, kind_cap, "BOTTLENECK");
    }
    cJSON_Delete(root);
    return QV_OK;
}

/* A required non-empty string field copied into *out. */
static qv_status lora_string(const cJSON *root, const char *name, char **out, qv_proto_error *e) {
    const cJSON *f = qv__proto_field(root, name);
    if (!cJSON_IsString(f) || !*f->valuestring) {
        e->status = QV_ERR_INVALID;
        snprintf(e->message, sizeof(e->message), "'%s' must be a non-empty string", name);
        snprintf(e->param, sizeof(e->param), "%s", name);
        return QV_ERR_INVALID;
    }
    if (!(*out = qv_strdup(f->valuestring))) {
        e->status = QV_ERR_NOMEM;
        snprintf(e->message, sizeof(e->message), "out of memory");
        return QV_ERR_NOMEM;
    }
    return QV_OK;
}

qv_status qv_proto_lora_request_decode(const char *body, size_t len, char **name, char **path,
                                       qv_proto_error *e) {
    memset(e, 0, sizeof(*e));
    *name = NULL;
    if (path) *path = NULL;
    cJSON *root = cJSON_ParseWithLength(body, len);
    qv_status s = QV_ERR_INVALID;
    if (!cJSON_IsObject(root)) {
        e->status = QV_ERR_INVALID;
        snprintf(e->message, sizeof(e->message), "the request body is not a JSON object");
        goto out;
    }
    if ((s = lora_string(root, "lora_name", name, e)) != QV_OK) goto out;
    if (path && (s = lora_string(root, "lora_path", path, e)) != QV_OK) goto out;
out:
    cJSON_Delete(root);
    if (s != QV_OK) {
        qv_free(*name);
        *name = NULL;
    }
    return s;
}

/* ---- TGI / LoRAX ---- */

/* A parameters.<name> helper's failure: the param names the nesting. */
static qv_status in_params(qv_status s, qv_proto_error *e) {
    if (s && e && e->param[0] && strncmp(e->param, "parameters.", 11) != 0) {
        char p[sizeof(e->param)];
        snprintf(p, sizeof(p), "parameters.%.52s", e->param);
        memcpy(e->param, p, sizeof(p));
    }
    return s;
}

static qv_status tgi_refuse(const cJSON *p, const char *name, bool allowed, const char *why,
                            qv_proto_error *e) {
    if (!qv__proto_field(p, name) || allowed) return QV_OK;
    return fail(e, QV_ERR_INVALID, name, "'parameters.%s' is not supported by quiver%s%s", name,
                why ? ": " : "", why ? why : "");
}

static qv_status tgi_params(const cJSON *p, qv_proto_request *r, qv_proto_tgi *t,
                            qv_proto_error *e) {
    qv_status s;
    if ((s = get_string(p, "adapter_id", &r->adapter, e))) return s;
    if (r->adapter && !*r->adapter) {
        qv_free(r->adapter);
        r->adapter = NULL;
    }
    const cJSON *src = qv__proto_field(p, "adapter_source");
    if (src && (!cJSON_IsString(src) ||
                (strcmp(src->valuestring, "hub") != 0 && strcmp(src->valuestring, "local") != 0)))
        return fail(e, QV_ERR_INVALID, "adapter_source",
                    "'parameters.adapter_source' may be 'hub' or 'local' (an adapter name of "
                    "quiver's adapter store; upload adapters with POST /v1/adapters)");
    const cJSON *f;
    bool sampling = false;
    if ((s = get_bool(p, "do_sample", &sampling, e))) return s;
    if ((s = qv__proto_get_int(p, "max_new_tokens", 1, 1e9, &r->max_tokens, e))) return s;
    if ((s = get_bool(p, "ignore_eos_token", &r->ignore_eos, e))) return s;
    if ((s = get_float(p, "repetition_penalty", 0, 100, &r->repetition_penalty, e))) return s;
    if (qv__proto_field(p, "repetition_penalty") && r->repetition_penalty <= 0)
        return fail(e, QV_ERR_INVALID, "repetition_penalty", "'repetition_penalty' must be > 0");
    if ((s = get_float(p, "frequency_penalty", -2, 2, &r->frequency_penalty, e))) return s;
    if ((s = get_float(p, "presence_penalty", -2, 2, &r->presence_penalty, e))) return s;
    if ((s = get_bool(p, "return_full_text", &t->return_full_text, e))) return s;
    if ((s = decode_strings(p, "stop", true, QV_PROTO_MAX_STOPS, QV_PROTO_MAX_STOP_BYTES, &r->stop,
                            &r->n_stop, e)))
        return s;
    if ((f = qv__proto_field(p, "seed"))) {
        if (!seed_ok(f, false))
            return fail(e, QV_ERR_INVALID, "seed", "'seed' must be an integer >= 0");
        r->has_seed = true;
        r->seed = (uint64_t)f->valuedouble;
    }
    if ((s = get_float(p, "temperature", 0, 100, &r->temperature, e))) return s;
    if ((s = qv__proto_get_int(p, "top_k", 1, 1e9, &r->top_k, e))) return s;
    if ((s = get_float(p, "top_p", 0, 1, &r->top_p, e))) return s;
    if (qv__proto_field(p, "top_p") && r->top_p <= 0)
        return fail(e, QV_ERR_INVALID, "top_p", "'top_p' must be in (0, 1]");
    if ((s = qv__proto_get_int(p, "truncate", 1, 1e9, &t->truncate, e))) return s;
    if ((s = get_bool(p, "details", &t->details, e))) return s;
    if ((s = qv__proto_get_int(p, "return_k_alternatives", 1, QV_PROTO_MAX_LOGPROBS,
                               &t->n_alternatives, e)))
        return s;
    /* what quiver does not do is refused, never silently ignored */
    if ((s = get_bool(p, "decoder_input_details", &t->decoder_input_details, e))) return s;
    bool watermark = false;
    if ((s = get_bool(p, "watermark", &watermark, e))) return s;
    int best_of = 1, top_n = 0;
    if ((s = qv__proto_get_int(p, "best_of", 1, 1e9, &best_of, e))) return s;
    if ((s = qv__proto_get_int(p, "top_n_tokens", 0, 1e9, &top_n, e))) return s;
    if ((s = tgi_refuse(p, "watermark", !watermark, NULL, e)) ||
        (s = tgi_refuse(p, "best_of", best_of == 1, "one sequence per request", e)) ||
        (s = tgi_refuse(p, "top_n_tokens", top_n == 0, "use return_k_alternatives", e)) ||
        (s = tgi_refuse(p, "typical_p", false, NULL, e)) ||
        (s = decode_merged(p, "parameters.", r, e)) || (s = tgi_structured(p, r, e)))
        return s;
    /* TGI samples when asked to or when a sampling parameter is set; otherwise greedy */
    sampling = sampling || qv__proto_field(p, "temperature") || qv__proto_field(p, "top_k") ||
               qv__proto_field(p, "top_p");
    if (!sampling) r->temperature = 0.0f;
    return QV_OK;
}

/* TGI's grammar {"type": "json", "value": schema} or {"type": "regex", "value": pattern}, and
 * LoRAX's response_format {"type": "json_object", "schema": schema} (without a schema: JSON
 * mode). */
static qv_status tgi_structured(const cJSON *p, qv_proto_request *r, qv_proto_error *e) {
    const cJSON *g = qv__proto_field(p, "grammar"), *f = qv__proto_field(p, "response_format");
    const cJSON *gt = cJSON_IsObject(g) ? qv__proto_field(g, "type") : NULL;
    const cJSON *ft = cJSON_IsObject(f) ? qv__proto_field(f, "type") : NULL;
    if (g && !cJSON_IsNull(g)) {
        const bool regex = cJSON_IsString(gt) && !strcmp(gt->valuestring, "regex");
        if (!cJSON_IsString(gt) || (strcmp(gt->valuestring, "json") != 0 && !regex) ||
            !qv__proto_field(g, "value"))
            return fail(e, QV_ERR_INVALID, "grammar",
                        "'parameters.grammar' must be {\"type\": \"json\", \"value\": "
                        "<JSON schema>} or {\"type\": \"regex\", \"value\": <pattern>}");
        if (f && !cJSON_IsNull(f))
            return fail(e, QV_ERR_INVALID, "grammar",
                        "give either 'grammar' or 'response_format', not both");
        return regex ? compile_regex_doc(qv__proto_field(g, "value"), "grammar", r, e)
                     : compile_schema(qv__proto_field(g, "value"), "grammar", 0, r, e);
    }
    if (!f || cJSON_IsNull(f)) return QV_OK;
    if (cJSON_IsString(ft) && !strcmp(ft->valuestring, "text")) return QV_OK;
    if (!cJSON_IsString(ft) || strcmp(ft->valuestring, "json_object") != 0)
        return fail(e, QV_ERR_INVALID, "response_format",
                    "'parameters.response_format' must be {\"type\": \"json_object\"} with an "
                    "optional \"schema\"");
    if (!qv__proto_field(f, "schema")) {
        r->json_object = true;
        return QV_OK;
    }
    return compile_schema(qv__proto_field(f, "schema"), "response_format", 0, r, e);
}

qv_status qv_proto_tgi_decode(const char *body, size_t len, qv_proto_request *r, qv_proto_tgi *t,
                              qv_proto_error *e) {
    memset(r, 0, sizeof(*r));
    memset(t, 0, sizeof(*t));
    r->endpoint = QV_PROTO_GENERATE;
    r->max_tokens = 20; /* TGI's and LoRAX's default max_new_tokens */
    r->temperature = 1.0f;
    r->top_p = 1.0f;
    r->repetition_penalty = 1.0f;
    r->add_special_tokens = true;
    r->skip_special_tokens = true; /* TGI's generated_text has no special tokens either */
    if (e) memset(e, 0, sizeof(*e));
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return fail(e, QV_ERR_INVALID, NULL, "the request body is not valid JSON");
    qv_status s = QV_OK;
    const cJSON *in = cJSON_IsObject(root) ? qv__proto_field(root, "inputs") : NULL;
    if (!cJSON_IsObject(root)) {
        s = fail(e, QV_ERR_INVALID, NULL, "the request body must be a JSON object");
    } else if (!in || !cJSON_IsString(in)) {
        s = fail(e, QV_ERR_INVALID, "inputs", "'inputs' (a string) is required");
    } else {
        r->prompt_len = strlen(in->valuestring);
        r->prompt = qv_strdup(in->valuestring);
        s = r->prompt ? get_bool(root, "stream", &r->stream, e) : qv__proto_nomem(e);
    }
    const cJSON *p = s ? NULL : qv__proto_field(root, "parameters");
    if (!s && p && !cJSON_IsObject(p))
        s = fail(e, QV_ERR_INVALID, "parameters", "'parameters' must be an object");
    if (!s && p) s = in_params(tgi_params(p, r, t, e), e);
    cJSON_Delete(root);
    return s;
}

static cJSON *tgi_token(const qv_proto_tgi_token *t) {
    cJSON *o = cJSON_CreateObject();
    bool ok = o && cJSON_AddNumberToObject(o, "id", t->id) && add_repaired(o, "text", t->text) &&
              cJSON_AddNumberToObject(o, "logprob", (double)t->logprob) &&
              cJSON_AddBoolToObject(o, "special", t->special);
    cJSON *alts = ok && t->n_alt > 0 ? cJSON_AddArrayToObject(o, "alternative_tokens") : NULL;
    if (ok && t->n_alt > 0 && !alts) ok = false;
    for (int i = 0; ok && i < t->n_alt; i++) {
        cJSON *a = cJSON_CreateObject();
        ok = a && cJSON_AddNumberToObject(a, "id", t->alt_id[i]) &&
             add_repaired(a, "text", t->alt_text[i]) &&
             cJSON_AddNumberToObject(a, "logprob", (double)t->alt_logprob[i]) &&
             cJSON_AddItemToArray(alts, a);
        if (!ok) cJSON_Delete(a);
    }
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* The details object; with_tokens: /generate's (prefill, tokens), else the stream's. */
static bool tgi_details(cJSON *o, const qv_proto_tgi_result *r, bool with_tokens) {
    cJSON *d = cJSON_AddObjectToObject(o, "details");
    if (!d || !cJSON_AddStringToObject(d, "finish_reason", r->finish_reason) ||
        !cJSON_AddNumberToObject(d, "prompt_tokens", r->prompt_tokens) ||
        !cJSON_AddNumberToObject(d, "generated_tokens", r->generated_tokens) ||
        !(r->has_seed ? cJSON_AddNumberToObject(d, "seed", (double)r->seed)
                      : cJSON_AddNullToObject(d, "seed")))
        return false;
    if (!with_tokens) return true;
    cJSON *toks = NULL, *pre = cJSON_AddArrayToObject(d, "prefill");
    if (!pre || !(toks = cJSON_AddArrayToObject(d, "tokens"))) return false;
    for (size_t i = 0; i < r->n_prefill; i++) {
        const qv_proto_logprob *lp = &r->prefill[i];
        cJSON *t = cJSON_CreateObject();
        if (!t || !cJSON_AddItemToArray(pre, t)) {
            cJSON_Delete(t);
            return false;
        }
        if (!cJSON_AddNumberToObject(t, "id", lp->id) || !add_repaired(t, "text", lp->token) ||
            !(lp->none ? cJSON_AddNullToObject(t, "logprob")
                       : cJSON_AddNumberToObject(t, "logprob", (double)lp->logprob)))
            return false;
    }
    for (size_t i = 0; i < r->n_tokens; i++) {
        cJSON *t = tgi_token(&r->tokens[i]);
        if (!t || !cJSON_AddItemToArray(toks, t)) {
            cJSON_Delete(t);
            return false;
        }
    }
    return true;
}

static bool tgi_text(cJSON *o, const qv_proto_tgi_result *r) {
    char *text = qv_strndup(r->generated_text ? r->generated_text : "", r->generated_len);
    bool ok = text && add_repaired(o, "generated_text", text);
    qv_free(text);
    return ok;
}

char *qv_proto_tgi_encode_response(const qv_proto_tgi_result *r, bool in_list) {
    cJSON *o = cJSON_CreateObject();
    if (!o || !tgi_text(o, r) || (r->details && !tgi_details(o, r, true))) {
        cJSON_Delete(o);
        return NULL;
    }
    if (!in_list) return print_and_delete(o);
    cJSON *list = cJSON_CreateArray();
    if (!list || !cJSON_AddItemToArray(list, o)) {
        cJSON_Delete(list);
        cJSON_Delete(o);
        return NULL;
    }
    return print_and_delete(list);
}

char *qv_proto_tgi_encode_event(const qv_proto_tgi_token *tok, int index,
                                const qv_proto_tgi_result *final) {
    cJSON *o = cJSON_CreateObject();
    cJSON *t = tgi_token(tok);
    bool ok = o && t && cJSON_AddNumberToObject(o, "index", index) &&
              cJSON_AddItemToObject(o, "token", t);
    if (!ok) cJSON_Delete(t);
    if (ok && final)
        ok = tgi_text(o, final) && (final->details ? tgi_details(o, final, false)
                                                   : cJSON_AddNullToObject(o, "details") != NULL);
    else if (ok)
        ok = cJSON_AddNullToObject(o, "generated_text") && cJSON_AddNullToObject(o, "details");
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return print_and_delete(o);
}

char *qv_proto_tgi_encode_error(const char *message, const char *error_type) {
    cJSON *o = cJSON_CreateObject();
    bool ok = o && add_repaired(o, "error", message) &&
              cJSON_AddStringToObject(o, "error_type", error_type ? error_type : "validation");
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return print_and_delete(o);
}

char *qv_proto_sse_frame(const char *payload, size_t payload_len, size_t *out_len) {
    static const char pre[] = "data: ";
    size_t n = sizeof(pre) - 1 + payload_len + 2;
    char *b = qv_malloc(n + 1);
    if (!b) return NULL;
    memcpy(b, pre, sizeof(pre) - 1);
    memcpy(b + sizeof(pre) - 1, payload, payload_len);
    memcpy(b + n - 2, "\n\n", 3);
    if (out_len) *out_len = n;
    return b;
}
