/*
 * proto_internal.h - helpers proto.c shares with responses.c (not part of the wire contract).
 */
#ifndef QV_PROTO_INTERNAL_H
#define QV_PROTO_INTERNAL_H

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdbool.h>

#include "proto/proto.h"

/* Fills *e (may be NULL) with s, param and the formatted message; returns s. */
qv_status qv__proto_failv(qv_proto_error *e, qv_status s, const char *param, const char *fmt,
                          va_list ap) __attribute__((format(printf, 4, 0)));
/* e as QV_ERR_NOMEM ("out of memory while decoding the request"); returns it. */
qv_status qv__proto_nomem(qv_proto_error *e);
/* Member `name` of an object; JSON null counts as absent, as in the OpenAI API. */
const cJSON *qv__proto_field(const cJSON *root, const char *name);
/* Member `name` (absent: *out untouched, QV_OK) as an integer in [lo, hi]; otherwise 400 naming
 * it. */
qv_status qv__proto_get_int(const cJSON *root, const char *name, double lo, double hi, int *out,
                            qv_proto_error *e);
/* Adds item under key; on failure (NULL item, or the key copy failing) frees the item. */
bool qv__proto_put_item(cJSON *obj, const char *key, cJSON *item);
/* Adds a string of known length (it may hold bytes cJSON would stop at: copy first). */
cJSON *qv__proto_add_text(cJSON *obj, const char *name, const char *text, size_t len);
/* [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]: chat's
 * logprobs.content and the Responses API's output_text.logprobs. NULL when out of memory. */
cJSON *qv__proto_logprobs_list(const qv_proto_logprob *lps, size_t n);

#endif
