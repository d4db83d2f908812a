/*
 * http.h - quiver's HTTP server: a libmicrohttpd daemon (internal epoll thread pool,
 * suspend/resume) in front of an engine thread running a libuv loop, serving the
 * OpenAI-compatible API described in proto/openapi.yaml and docs/http-api.md.
 *
 * Not here: command-line parsing (server/serve.c), JSON codecs (proto/).
 * Thread: qv_http_serve runs on the calling thread, which becomes the engine thread.
 */
#ifndef QV_SERVER_HTTP_H
#define QV_SERVER_HTTP_H

#include <stddef.h>

typedef struct qv_http_config {
    const char *model_path;
    const char *device;        /* "cpu" (NULL) or "cuda" */
    const char *host;          /* IPv4 address to bind; "0.0.0.0" = all */
    int port;                  /* 0 = any free port (printed at start-up) */
    int n_threads;             /* engine CPU threads; 0 = all cores */
    int http_threads;          /* libmicrohttpd polling threads */
    size_t kv_mb;              /* KV cache budget in MiB */
    int prefix_cache;          /* 1: the engine's prefix cache is on (0: off) */
    size_t adapter_pool_mb;    /* --device cuda: device adapter pool in MiB; 0 = the engine's
                                  default (512 MiB, at most a quarter of the free memory) */
    const char *kv_dtype;      /* --device cuda: "bf16" (NULL, the default) or "f32" K/V pages */
    const char *chat_template; /* a chat format name (qv_chat_render) instead of the detected
                                  one; NULL = detect from the model's template */
    /* speculative decoding by prompt lookup (qv_engine_config.spec_*; serve.c reads vLLM's
     * --speculative-config JSON into them); spec_tokens 0 = off */
    int spec_tokens, spec_ngram_min, spec_ngram_max, spec_max_batch;
    int adapter_pinned_mb;     /* --device cuda: the pool's pinned host tier in MiB; 0 = the
                                  engine's default (twice the pool), -1 = none */
    int max_batch_tokens;      /* tokens per engine step */
    int max_seqs;              /* concurrently running sequences */
    int max_loras;             /* distinct adapters in one batch; 0 = no limit (1 = one adapter
                                  at a time, the baseline of the load benchmark) */
    const char *api_key;       /* NULL/"" = no authentication */
    const char *api_keys_file; /* more keys, each optionally limited to adapter name patterns */
    size_t max_body_bytes;     /* request body limit (413 beyond) */
    int max_prompt_tokens;     /* prompt token limit (400 beyond) */
    int max_tokens_limit;      /* max_tokens limit (400 beyond); also the chat default */
    int queue_limit;           /* waiting requests before 429 */
    size_t responses_store_mb; /* Responses API: memory for kept responses, MiB; 0 = none */
    const char *responses_dir; /* and a directory of them (shared by replicas); NULL = none */
    size_t responses_dir_mb;   /* the directory's files are swept down to this many MiB */
    double drain_timeout_s;    /* SIGTERM: in-flight requests get this long to finish */
    /* adapters */
    const char *adapter_store;    /* store root (adapters/store.h); NULL = no adapters */
    size_t adapter_host_mb;       /* host-memory budget of loaded adapters, MiB */
    int max_rank;                 /* largest LoRA rank accepted; 0 = no limit */
    int max_merging;              /* merged_adapters merges made at once (503 beyond); 0 = any */
    const char *admin_key;        /* key for adapter uploads/deletes; NULL/"" = those refused */
    const char *adapter_load_dir; /* /v1/load_lora_adapter paths must lie under it; NULL = off */
    const char *const *preload;   /* "NAME=DIR" adapters published into the store at start-up */
    size_t n_preload;
} qv_http_config;

/* Loads the model, serves until SIGTERM/SIGINT, drains and returns the process exit status
 * (0 after a clean drain, 1 when start-up failed). Errors are printed to stderr. */
int qv_http_serve(const qv_http_config *c);

#endif
