/*
 * fuzz_proto.c - fuzz target for the HTTP request decoders (proto/): the first input byte
 * picks the endpoint (completions or chat), the rest is the request body. Invariants checked:
 * no crash or sanitizer report; a successful decode yields a consistent struct (exactly one
 * prompt form, non-empty stop strings, ranges the server relies on); a failure carries a
 * message. Successful decodes are also re-encoded through the response encoder.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine/core.h"
#include "proto/proto.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) {                                                                                \
            fprintf(stderr, "fuzz_proto: check failed at line %d: %s\n", __LINE__, #x);            \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int hooked;
    if (!hooked) {
        cJSON_Hooks hooks = {.malloc_fn = qv_malloc, .free_fn = qv_free};
        cJSON_InitHooks(&hooks);
        hooked = 1;
    }
    if (size == 0) return 0;
    enum qv_proto_endpoint ep = (data[0] & 1) ? QV_PROTO_CHAT : QV_PROTO_COMPLETIONS;
    qv_proto_request r;
    qv_proto_error e;
    qv_status s = qv_proto_request_decode(ep, (const char *)data + 1, size - 1, &r, &e);
    if (s != QV_OK) {
        CHECK(s == QV_ERR_INVALID || s == QV_ERR_NOMEM);
        CHECK(e.message[0] != '\0');
    } else {
        if (ep == QV_PROTO_COMPLETIONS) {
            CHECK((r.prompt != NULL) != (r.n_prompt_ids > 0));
            for (size_t i = 0; i < r.n_prompt_ids; i++)
                CHECK(r.prompt_ids[i] >= 0);
        } else {
            CHECK(r.n_messages > 0 && r.messages);
            for (size_t i = 0; i < r.n_messages; i++)
                CHECK(r.messages[i].role && r.messages[i].content);
        }
        CHECK(r.max_tokens == -1 || r.max_tokens >= 1);
        CHECK(r.temperature >= 0.0f && r.top_p > 0.0f && r.top_p <= 1.0f);
        CHECK(r.top_logprobs >= 0 && r.top_logprobs <= QV_PROTO_MAX_LOGPROBS);
        CHECK(r.n_stop <= QV_PROTO_MAX_STOPS);
        for (size_t i = 0; i < r.n_stop; i++)
            CHECK(r.stop[i] && r.stop[i][0]);
        const char *text = ep == QV_PROTO_CHAT ? r.messages[0].content : r.prompt;
        qv_proto_result res = {.endpoint = ep,
                               .id = "x",
                               .model = r.model,
                               .text = text,
                               .text_len = text ? strlen(text) : 0,
                               .usage = true};
        char *out = qv_proto_encode_response(&res);
        CHECK(out != NULL);
        cJSON *back = cJSON_Parse(out);
        CHECK(back != NULL);
        cJSON_Delete(back);
        qv_free(out);
    }
    qv_proto_request_free(&r);
    return 0;
}
