/*
 * serve.c - `quiver serve`: parses flags (each with a QUIVER_* environment variable; a flag
 * wins over its variable) into a qv_http_config and runs the HTTP server (server/http.c).
 *
 * Not here: sockets, threads, the engine. Thread: main thread only.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine/core.h"
#include "engine/engine.h"
#include "server/cli.h"
#include "server/http.h"
#include "server/serve.h"

static void usage(FILE *f) {
    fprintf(f, "usage: quiver serve [options]   (every option also reads QUIVER_<NAME>, e.g. "
               "QUIVER_PORT)\n"
               "  --model PATH             HF model directory or .gguf (QUIVER_MODEL; default: "
               "the SmolLM2 GGUF in $QUIVER_HOME/models)\n"
               "  --host H                 IPv4 address to bind (default 127.0.0.1)\n"
               "  --port P                 TCP port, 0 = any free port (default 8000)\n"
               "  --threads N              engine CPU threads (default: the usable CPUs,\n"
               "                           within a cgroup CPU limit)\n"
               "  --http-threads N         HTTP polling threads (default 2)\n"
               "  --kv-mb N                KV cache budget in MiB (default 256)\n"
               "  --prefix-cache 0|1       keep computed prompt-prefix K/V pages for reuse by\n"
               "                           later requests of the same adapter (default 1)\n"
               "  --max-batch-tokens N     tokens per engine step (default 256)\n"
               "  --max-seqs N             concurrently running sequences (default 64)\n"
               "  --max-loras N            distinct adapters in one batch, 0 = any (default 0)\n"
               "  --api-key K              require 'Authorization: Bearer K' (default: none)\n"
               "  --api-keys-file F        more keys, one per line: KEY [ADAPTER-PATTERN...]\n"
               "                           [tenant=NAME] [weight=W] [rpm=N] [tpm=N]\n"
               "                           [max_inflight=N] [priority=P]; a key with patterns\n"
               "                           may use the base model and the adapters whose\n"
               "                           names match one (fnmatch); tenants share the\n"
               "                           engine fairly by weight (docs/http-api.md#tenants)\n"
               "  --max-body-bytes N       request body limit (default 1048576)\n"
               "  --max-prompt-tokens N    prompt token limit (default 8192)\n"
               "  --max-tokens-limit N     largest max_tokens accepted (default 4096)\n"
               "  --queue-limit N          waiting requests before 429 (default 256)\n");
    fprintf(f, "  --responses-store-mb N   memory for responses kept for previous_response_id\n"
               "                           and GET /v1/responses/{id}, and for conversations,\n"
               "                           MiB; the least recently used leave first; 0 = keep\n"
               "                           none (default 64)\n"
               "  --responses-dir DIR      also keep them as files in DIR (created if missing):\n"
               "                           they survive restarts, and replicas that mount the\n"
               "                           same DIR continue each other's (default: none)\n"
               "  --responses-dir-mb N     the oldest files in DIR are removed beyond N MiB\n"
               "                           (checked every minute; default 1024)\n"
               "  --chat-template NAME     chat format instead of the one detected from the\n"
               "                           model's template: chatml, qwen2.5, llama3,\n"
               "                           llama3.1, llama3.2, llama2, llama2-chat, llama2-sys,\n"
               "                           llama2-sys-bos, llama2-sys-strip, mistral-v0.3,\n"
               "                           mistral-nemo, mistral-v1, mistral-v3,\n"
               "                           mistral-v3-tekken, mistral-v7, mistral-v7-tekken\n"
               "  --speculative-config J   speculative decoding by prompt lookup, vLLM's JSON:\n"
               "                           {\"method\": \"ngram\", \"num_speculative_tokens\": K,\n"
               "                           \"prompt_lookup_min\": 3, \"prompt_lookup_max\": 5,\n"
               "                           \"disable_by_batch_size\": 2} (the same tokens in\n"
               "                           fewer steps; default off)\n"
               "  --drain-timeout-s N      on SIGTERM, time given to in-flight requests (default "
               "30)\n"
               "  --device cpu|cuda        compute device (default cpu)\n"
               "  --kv-dtype bf16|f32      K/V page element type (default: bf16 on cuda, f32 on "
               "cpu;\n"
               "                           bf16 holds twice the tokens in the same --kv-mb)\n"
               "  --adapter-store DIR      adapter store root (default $QUIVER_HOME/adapters)\n"
               "  --adapter-host-mb N      host memory for loaded adapters in MiB (default 1024)\n"
               "  --adapter-pool-mb N      --device cuda: device adapter pool in MiB, allocated at "
               "start-up (default 512, at most a quarter of the free memory)\n"
               "  --adapter-pinned-mb N    --device cuda: pinned host memory holding adapters "
               "converted for the device, so reloads are one copy (default 0 = twice the pool, "
               "-1 = none)\n"
               "  --max-rank N             largest LoRA rank accepted, 0 = any (default 0)\n"
               "  --max-merging N          merged_adapters merges made at once; a request for\n"
               "                           another new merge gets 503 (default 4, 0 = any)\n"
               "  --admin-key K            key for adapter uploads and deletes (default: none)\n"
               "  --adapter-load-dir DIR   /v1/load_lora_adapter may read adapters under DIR "
               "(default: off)\n"
               "  --preload NAME=DIR       publish adapter directory DIR as NAME at start-up "
               "(repeatable)\n"
               "  --log-level L            debug|info|warn|error (default info; env\n"
               "                           QUIVER_LOG_LEVEL)\n"
               "  --log-format F           text or json: one JSON object per line with time,\n"
               "                           level, logger, msg (default text; env\n"
               "                           QUIVER_LOG_FORMAT)\n");
}

static char default_model_buf[4096];
static char default_store_buf[4096];

static const char *default_store(void) {
    const char *home = getenv("QUIVER_HOME");
    if (home && *home)
        snprintf(default_store_buf, sizeof(default_store_buf), "%s/adapters", home);
    else
        snprintf(default_store_buf, sizeof(default_store_buf), "%s/.cache/quiver/adapters",
                 getenv("HOME") ? getenv("HOME") : ".");
    return default_store_buf;
}

static const char *default_model(void) {
    const char *home = getenv("QUIVER_HOME");
    if (home && *home)
        snprintf(default_model_buf, sizeof(default_model_buf),
                 "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", home);
    else
        snprintf(default_model_buf, sizeof(default_model_buf),
                 "%s/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                 getenv("HOME") ? getenv("HOME") : ".");
    return default_model_buf;
}

/* Parses an integer flag value in [lo, hi]; prints the error. */
static bool parse_ll(const char *name, const char *v, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "quiver serve: %s expects an integer in [%lld, %lld], got '%s'\n", name, lo,
                hi, v);
        return false;
    }
    *out = x;
    return true;
}

typedef struct opt_def {
    const char *flag; /* "--port" */
    const char *env;  /* "QUIVER_PORT" */
    long long lo, hi;
    int kind; /* 0 = int, 1 = size_t, 2 = string, 3 = double (integer seconds) */
    size_t offset;
} opt_def;

#define OFF(f) offsetof(qv_http_config, f)
static const opt_def opts[] = {
    {"--model", "QUIVER_MODEL", 0, 0, 2, OFF(model_path)},
    {"--host", "QUIVER_HOST", 0, 0, 2, OFF(host)},
    {"--port", "QUIVER_PORT", 0, 65535, 0, OFF(port)},
    {"--threads", "QUIVER_THREADS", 0, 1024, 0, OFF(n_threads)},
    {"--http-threads", "QUIVER_HTTP_THREADS", 1, 64, 0, OFF(http_threads)},
    {"--kv-mb", "QUIVER_KV_MB", 1, 1 << 22, 1, OFF(kv_mb)},
    {"--max-batch-tokens", "QUIVER_MAX_BATCH_TOKENS", 1, 1 << 20, 0, OFF(max_batch_tokens)},
    {"--max-seqs", "QUIVER_MAX_SEQS", 1, 1 << 16, 0, OFF(max_seqs)},
    {"--max-loras", "QUIVER_MAX_LORAS", 0, 1 << 16, 0, OFF(max_loras)},
    {"--api-key", "QUIVER_API_KEY", 0, 0, 2, OFF(api_key)},
    {"--api-keys-file", "QUIVER_API_KEYS_FILE", 0, 0, 2, OFF(api_keys_file)},
    {"--max-body-bytes", "QUIVER_MAX_BODY_BYTES", 64, 1ll << 32, 1, OFF(max_body_bytes)},
    {"--max-prompt-tokens", "QUIVER_MAX_PROMPT_TOKENS", 1, 1 << 24, 0, OFF(max_prompt_tokens)},
    {"--max-tokens-limit", "QUIVER_MAX_TOKENS_LIMIT", 1, 1 << 24, 0, OFF(max_tokens_limit)},
    {"--queue-limit", "QUIVER_QUEUE_LIMIT", 0, 1 << 20, 0, OFF(queue_limit)},
    {"--responses-store-mb", "QUIVER_RESPONSES_STORE_MB", 0, 1 << 20, 1, OFF(responses_store_mb)},
    {"--responses-dir", "QUIVER_RESPONSES_DIR", 0, 0, 2, OFF(responses_dir)},
    {"--responses-dir-mb", "QUIVER_RESPONSES_DIR_MB", 1, 1 << 24, 1, OFF(responses_dir_mb)},
    {"--drain-timeout-s", "QUIVER_DRAIN_TIMEOUT_S", 0, 86400, 3, OFF(drain_timeout_s)},
    {"--device", "QUIVER_DEVICE", 0, 0, 2, OFF(device)},
    {"--kv-dtype", "QUIVER_KV_DTYPE", 0, 0, 2, OFF(kv_dtype)},
    {"--chat-template", "QUIVER_CHAT_TEMPLATE", 0, 0, 2, OFF(chat_template)},
    {"--prefix-cache", "QUIVER_PREFIX_CACHE", 0, 1, 0, OFF(prefix_cache)},
    {"--adapter-store", "QUIVER_ADAPTER_STORE", 0, 0, 2, OFF(adapter_store)},
    {"--adapter-host-mb", "QUIVER_ADAPTER_HOST_MB", 1, 1 << 24, 1, OFF(adapter_host_mb)},
    {"--adapter-pool-mb", "QUIVER_ADAPTER_POOL_MB", 0, 1 << 24, 1, OFF(adapter_pool_mb)},
    {"--adapter-pinned-mb", "QUIVER_ADAPTER_PINNED_MB", -1, 1 << 24, 0, OFF(adapter_pinned_mb)},
    {"--max-rank", "QUIVER_MAX_RANK", 0, 1 << 16, 0, OFF(max_rank)},
    {"--max-merging", "QUIVER_MAX_MERGING", 0, 1 << 16, 0, OFF(max_merging)},
    {"--admin-key", "QUIVER_ADMIN_KEY", 0, 0, 2, OFF(admin_key)},
    {"--adapter-load-dir", "QUIVER_ADAPTER_LOAD_DIR", 0, 0, 2, OFF(adapter_load_dir)},
};

#define MAX_PRELOAD 64

static bool set_opt(qv_http_config *c, const opt_def *d, const char *name, const char *v) {
    char *base = (char *)c + d->offset;
    if (d->kind == 2) {
        memcpy(base, &v, sizeof(v));
        return true;
    }
    long long x;
    if (!parse_ll(name, v, d->lo, d->hi, &x)) return false;
    if (d->kind == 0) {
        int i = (int)x;
        memcpy(base, &i, sizeof(i));
    } else if (d->kind == 1) {
        size_t z = (size_t)x;
        memcpy(base, &z, sizeof(z));
    } else {
        double t = (double)x;
        memcpy(base, &t, sizeof(t));
    }
    return true;
}

bool qv_cli_spec_config(const char *text, int spec[4], char *msg, size_t cap) {
    cJSON *j = cJSON_Parse(text);
    bool ok = cJSON_IsObject(j);
    if (!ok)
        snprintf(msg, cap,
                 "expects a JSON object, e.g. {\"method\": \"ngram\", "
                 "\"num_speculative_tokens\": 4}");
    int k = 0, lo = 0, hi = 0, batch = 2;
    const cJSON *f, *items = ok ? j : NULL;
    cJSON_ArrayForEach(f, items) {
        int *dst = !strcmp(f->string, "num_speculative_tokens")  ? &k
                   : !strcmp(f->string, "prompt_lookup_min")     ? &lo
                   : !strcmp(f->string, "prompt_lookup_max")     ? &hi
                   : !strcmp(f->string, "disable_by_batch_size") ? &batch
                                                                 : NULL;
        if (!strcmp(f->string, "method")) {
            ok = cJSON_IsString(f) && !strcmp(f->valuestring, "ngram");
            if (!ok) snprintf(msg, cap, "only the \"ngram\" method (prompt lookup) is supported");
        } else if (!dst) {
            ok = false;
            snprintf(msg, cap, "unknown key '%.64s'", f->string);
        } else if (!cJSON_IsNumber(f) || !(f->valuedouble >= 1 && f->valuedouble <= 65536) ||
                   f->valuedouble != (double)(int)f->valuedouble) {
            ok = false;
            snprintf(msg, cap, "'%s' must be a positive integer", f->string);
        } else {
            *dst = f->valueint;
        }
        if (!ok) break;
    }
    cJSON_Delete(j);
    if (ok && (k < 1 || k > QV_SPEC_MAX_TOKENS)) {
        ok = false;
        snprintf(msg, cap, "'num_speculative_tokens' must be 1..%d", QV_SPEC_MAX_TOKENS);
    }
    if (ok && lo && hi && lo > hi) {
        ok = false;
        snprintf(msg, cap, "'prompt_lookup_min' (%d) is above 'prompt_lookup_max' (%d)", lo, hi);
    }
    if (ok) {
        spec[0] = k;
        spec[1] = lo ? lo : hi ? QV_MIN(3, hi) : 3;
        spec[2] = hi ? hi : QV_MAX(5, spec[1]);
        spec[3] = batch;
    }
    return ok;
}

static bool parse_level(const char *name, const char *v, enum qv_log_level *out) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int l = 0; l < 4; l++)
        if (!strcmp(v, names[l])) {
            *out = (enum qv_log_level)l;
            return true;
        }
    fprintf(stderr, "quiver serve: %s expects debug|info|warn|error, got '%s'\n", name, v);
    return false;
}

static bool parse_format(const char *name, const char *v, bool *json) {
    if (strcmp(v, "text") != 0 && strcmp(v, "json") != 0) {
        fprintf(stderr, "quiver serve: %s expects text or json, got '%s'\n", name, v);
        return false;
    }
    *json = !strcmp(v, "json");
    return true;
}

int qv_cli_serve(int argc, char **argv) {
    qv_http_config c = {
        .model_path = default_model(),
        .host = "127.0.0.1",
        .port = 8000,
        .http_threads = 2,
        .kv_mb = 256,
        .prefix_cache = 1,
        .max_batch_tokens = 256,
        .max_seqs = 64,
        .max_body_bytes = 1 << 20,
        .max_prompt_tokens = 8192,
        .max_tokens_limit = 4096,
        .queue_limit = 256,
        .responses_store_mb = 64,
        .responses_dir_mb = 1024,
        .drain_timeout_s = 30,
        .adapter_store = default_store(),
        .adapter_host_mb = 1024,
        .max_merging = 4,
    };
    static const char *preload[MAX_PRELOAD];
    enum qv_log_level level = QV_LOG_INFO;
    bool json = false;
    const char *lv_env = getenv("QUIVER_LOG_LEVEL"), *lf_env = getenv("QUIVER_LOG_FORMAT");
    const char *spec = getenv("QUIVER_SPECULATIVE_CONFIG");
    if (lv_env && *lv_env && !parse_level("QUIVER_LOG_LEVEL", lv_env, &level)) return 2;
    if (lf_env && *lf_env && !parse_format("QUIVER_LOG_FORMAT", lf_env, &json)) return 2;
    for (size_t i = 0; i < QV_ARRAY_LEN(opts); i++) {
        const char *v = getenv(opts[i].env);
        if (v && *v && !set_opt(&c, &opts[i], opts[i].env, v)) return 2;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--log-level")) {
            if (!v) goto need_value;
            i++;
            if (!parse_level(a, v, &level)) return 2;
            continue;
        }
        if (!strcmp(a, "--log-format")) {
            if (!v) goto need_value;
            i++;
            if (!parse_format(a, v, &json)) return 2;
            continue;
        }
        if (!strcmp(a, "--speculative-config")) {
            if (!v) goto need_value;
            spec = argv[++i];
            continue;
        }
        if (!strcmp(a, "--preload")) {
            if (!v) goto need_value;
            i++;
            if (!strchr(v, '=') || c.n_preload == MAX_PRELOAD) {
                fprintf(stderr, "quiver serve: --preload expects NAME=DIR (at most %d)\n",
                        MAX_PRELOAD);
                return 2;
            }
            preload[c.n_preload++] = v;
            c.preload = preload;
            continue;
        }
        const opt_def *d = NULL;
        for (size_t k = 0; k < QV_ARRAY_LEN(opts); k++)
            if (!strcmp(a, opts[k].flag)) d = &opts[k];
        if (!d) {
            fprintf(stderr, "quiver serve: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        if (!v) goto need_value;
        i++;
        if (!set_opt(&c, d, a, v)) return 2;
        continue;
    need_value:
        fprintf(stderr, "quiver serve: %s needs a value\n", a);
        return 2;
    }
    if (c.device && strcmp(c.device, "cpu") != 0 && strcmp(c.device, "cuda") != 0) {
        fprintf(stderr, "quiver serve: --device expects cpu or cuda\n");
        return 2;
    }
    char msg[160];
    int sp[4] = {0};
    if (spec && *spec && !qv_cli_spec_config(spec, sp, msg, sizeof msg)) {
        fprintf(stderr, "quiver serve: --speculative-config: %s\n", msg);
        return 2;
    }
    c.spec_tokens = sp[0], c.spec_ngram_min = sp[1], c.spec_ngram_max = sp[2];
    c.spec_max_batch = sp[3];
    qv_log_set_level(level);
    qv_log_set_json(json);
    return qv_http_serve(&c);
}
