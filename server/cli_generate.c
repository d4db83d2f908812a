/*
 * cli_generate.c - `quiver generate` (continue a prompt) and `quiver chat` (render a chat
 * template and answer, once or interactively) on the engine, streaming text to stdout.
 *
 * Text goes through the streaming detokenizer, so stdout only ever receives complete UTF-8 and
 * never a partial stop string. Timings go to stderr so stdout stays the pure continuation.
 * Single-threaded caller; the engine's backend uses its own worker threads.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/engine.h"
#include "engine/json_grammar.h"
#include "server/cli.h"

#include "adapters/adapters.h"
#include "adapters/store.h"
#include "engine/adapter_apply.h"

#define MAX_STOPS 16

typedef struct gen_opts {
    const char *model;
    const char *prompt;
    const char *system;
    const char *message;
    const char *chat_template;
    const char *stops[MAX_STOPS];
    int n_stops;
    qv_gen_params gp;
    int n_threads;
    size_t kv_mb;
    const char *device;
    const char *adapter_dir; /* --adapter DIR */
    const char *schema_file; /* --json-schema FILE: compiled into gp.json_schema (owned) */
    qv_adapter *adapter;     /* loaded by open_engine (owned; freed after the engine) */
    int spec[4]; /* --speculative-config: qv_cli_spec_config's draft tokens (0: off), n-grams */
    bool verbose;
    bool add_special;
    bool show_special;
} gen_opts;

static char default_model_buf[4096];

/* $QUIVER_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf (deploy/fetch-model.sh puts it there). */
static const char *default_model(void) {
    const char *home = getenv("QUIVER_HOME");
    if (home && *home) {
        snprintf(default_model_buf, sizeof(default_model_buf),
                 "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", home);
    } else {
        const char *h = getenv("HOME");
        snprintf(default_model_buf, sizeof(default_model_buf),
                 "%s/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf", h ? h : ".");
    }
    return default_model_buf;
}

static void usage(FILE *f, bool chat) {
    if (chat)
        fprintf(f, "usage: quiver chat [--model PATH] [--message TEXT] [--system TEXT]\n"
                   "                   [--chat-template NAME] [sampling options]\n"
                   "  Without --message, reads one user message per line from stdin.\n");
    else
        fprintf(f, "usage: quiver generate [--model PATH] --prompt TEXT [sampling options]\n");
    fprintf(f,
            "  --model PATH            HF model directory or .gguf (default: %s)\n"
            "  --max-tokens N          tokens to generate (default 128)\n"
            "  --temperature T         0 = greedy (default 0)\n"
            "  --top-k K --top-p P --min-p P\n"
            "  --repeat-penalty R --presence-penalty P --frequency-penalty P\n"
            "  --seed S                sampling seed (default 0)\n"
            "  --stop TEXT             stop string (repeatable, up to %d)\n"
            "  --ignore-eos            keep generating past end-of-generation tokens\n"
            "  --json                  JSON mode: the answer is one JSON object\n"
            "  --json-schema FILE      structured output: the answer follows the JSON Schema\n"
            "                          in FILE (docs/http-api.md#structured-output)\n"
            "  --add-special           let the tokenizer add BOS/EOS (generate only)\n"
            "  --threads N             CPU threads (default: the usable CPUs, within a cgroup CPU "
            "limit)\n"
            "  --kv-mb N               KV cache budget in MiB (default 256)\n"
            "  --device cpu|cuda       compute device (default cpu)\n"
            "  --adapter DIR|NAME      PEFT / AdapterHub adapter directory, or a name (alias,\n"
            "                          version) in the adapter store $QUIVER_ADAPTER_STORE\n"
            "                          (default $QUIVER_HOME/adapters) (CPU only)\n"
            "  --speculative-config J  speculative decoding by prompt lookup, vLLM's JSON, e.g.\n"
            "                          {\"method\": \"ngram\", \"num_speculative_tokens\": 4}\n"
            "                          (the same tokens in fewer steps; CPU)\n"
            "  --verbose               log loading details and timings\n",
            default_model(), MAX_STOPS);
}

static bool parse_num(const char *flag, const char *v, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || *end || end == v || d < lo || d > hi) {
        fprintf(stderr, "quiver: %s expects a number in [%g, %g], got '%s'\n", flag, lo, hi, v);
        return false;
    }
    *out = d;
    return true;
}

/* Returns 0 on success, 2 on a usage error, -1 when --help was printed. */
static int parse_opts(int argc, char **argv, bool chat, gen_opts *o) {
    memset(o, 0, sizeof(*o));
    qv_gen_params_default(&o->gp);
    o->gp.max_tokens = 128;
    o->gp.sampling.temperature = 0.0f;
    o->model = default_model();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        double d;
#define NEED_VALUE                                                                                 \
    do {                                                                                           \
        if (!v) {                                                                                  \
            fprintf(stderr, "quiver: %s needs a value\n", a);                                      \
            return 2;                                                                              \
        }                                                                                          \
        i++;                                                                                       \
    } while (0)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout, chat);
            return -1;
        } else if (!strcmp(a, "--model")) {
            NEED_VALUE;
            o->model = v;
        } else if (!strcmp(a, "--prompt") && !chat) {
            NEED_VALUE;
            o->prompt = v;
        } else if (!strcmp(a, "--message") && chat) {
            NEED_VALUE;
            o->message = v;
        } else if (!strcmp(a, "--system") && chat) {
            NEED_VALUE;
            o->system = v;
        } else if (!strcmp(a, "--chat-template") && chat) {
            NEED_VALUE;
            o->chat_template = v;
        } else if (!strcmp(a, "--max-tokens")) {
            NEED_VALUE;
            if (!parse_num(a, v, 1, 1e7, &d)) return 2;
            o->gp.max_tokens = (int)d;
        } else if (!strcmp(a, "--temperature")) {
            NEED_VALUE;
            if (!parse_num(a, v, 0, 100, &d)) return 2;
            o->gp.sampling.temperature = (float)d;
        } else if (!strcmp(a, "--top-k")) {
            NEED_VALUE;
            if (!parse_num(a, v, 0, 1e9, &d)) return 2;
            o->gp.sampling.top_k = (int)d;
        } else if (!strcmp(a, "--top-p")) {
            NEED_VALUE;
            if (!parse_num(a, v, 0, 1, &d)) return 2;
            o->gp.sampling.top_p = (float)d;
        } else if (!strcmp(a, "--min-p")) {
            NEED_VALUE;
            if (!parse_num(a, v, 0, 1, &d)) return 2;
            o->gp.sampling.min_p = (float)d;
        } else if (!strcmp(a, "--repeat-penalty")) {
            NEED_VALUE;
            if (!parse_num(a, v, 0, 100, &d)) return 2;
            o->gp.sampling.repetition_penalty = (float)d;
        } else if (!strcmp(a, "--presence-penalty")) {
            NEED_VALUE;
            if (!parse_num(a, v, -2, 2, &d)) return 2;
            o->gp.sampling.presence_penalty = (float)d;
        } else if (!strcmp(a, "--frequency-penalty")) {
            NEED_VALUE;
            if (!parse_num(a, v, -2, 2, &d)) return 2;
            o->gp.sampling.frequency_penalty = (float)d;
        } else if (!strcmp(a, "--seed")) {
            NEED_VALUE;
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || *end || end == v) {
                fprintf(stderr, "quiver: --seed expects a non-negative integer\n");
                return 2;
            }
            o->gp.sampling.seed = s;
        } else if (!strcmp(a, "--stop")) {
            NEED_VALUE;
            if (o->n_stops == MAX_STOPS || !*v) {
                fprintf(stderr, "quiver: --stop takes a non-empty string, at most %d times\n",
                        MAX_STOPS);
                return 2;
            }
            o->stops[o->n_stops++] = v;
        } else if (!strcmp(a, "--ignore-eos")) {
            o->gp.ignore_eos = true;
        } else if (!strcmp(a, "--json")) {
            o->gp.json_object = true;
        } else if (!strcmp(a, "--json-schema")) {
            NEED_VALUE;
            o->schema_file = v;
        } else if (!strcmp(a, "--add-special") && !chat) {
            o->add_special = true;
        } else if (!strcmp(a, "--threads")) {
            NEED_VALUE;
            if (!parse_num(a, v, 0, 1024, &d)) return 2;
            o->n_threads = (int)d;
        } else if (!strcmp(a, "--kv-mb")) {
            NEED_VALUE;
            if (!parse_num(a, v, 1, 1 << 20, &d)) return 2;
            o->kv_mb = (size_t)d;
        } else if (!strcmp(a, "--device")) {
            NEED_VALUE;
            if (strcmp(v, "cpu") != 0 && strcmp(v, "cuda") != 0) {
                fprintf(stderr, "quiver: --device expects cpu or cuda\n");
                return 2;
            }
            o->device = v;
        } else if (!strcmp(a, "--adapter")) {
            NEED_VALUE;
            o->adapter_dir = v;
        } else if (!strcmp(a, "--speculative-config")) {
            NEED_VALUE;
            char msg[160];
            if (!qv_cli_spec_config(v, o->spec, msg, sizeof msg)) {
                fprintf(stderr, "quiver: --speculative-config: %s\n", msg);
                return 2;
            }
        } else if (!strcmp(a, "--verbose")) {
            o->verbose = true;
        } else {
            fprintf(stderr, "quiver %s: unknown option '%s' (see --help)\n", argv[0], a);
            return 2;
        }
#undef NEED_VALUE
    }
    if ((o->gp.json_object || o->schema_file) && o->gp.ignore_eos) {
        fprintf(stderr, "quiver: --json and --json-schema end at the value's close: no "
                        "--ignore-eos with them\n");
        return 2;
    }
    if (o->schema_file) {
        char *text = NULL;
        size_t len = 0;
        qv_error err = {0};
        qv_status st = qv_read_file(o->schema_file, QV_JSON_SCHEMA_MAX_BYTES, &text, &len, &err);
        if (st == QV_OK) st = qv_json_schema_compile(text, len, &o->gp.json_schema, &err);
        qv_free(text);
        if (st != QV_OK) {
            fprintf(stderr, "quiver: --json-schema %s: %s\n", o->schema_file, err.msg);
            return 2;
        }
    }
    return 0;
}

static void opts_free(gen_opts *o) {
    qv_adapter_free(o->adapter);
    qv_json_schema_unref(o->gp.json_schema);
}

typedef struct run_state {
    qv_detok *detok;
    enum qv_finish_reason finish;
    int n_generated;
    bool stopped_by_text;
    double t_first;
    const qv_tokenizer *tok;
    bool ignore_eos;
    char *reply; /* everything written to stdout, kept for the chat history */
    size_t reply_len, reply_cap;
} run_state;

static void emit(run_state *rs, const char *text, size_t len) {
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    if (rs->reply_len + len + 1 > rs->reply_cap) {
        size_t cap = (rs->reply_len + len + 1) * 2;
        char *r = qv_realloc(rs->reply, cap);
        if (!r) return; /* the history just misses this piece; output is unaffected */
        rs->reply = r;
        rs->reply_cap = cap;
    }
    memcpy(rs->reply + rs->reply_len, text, len);
    rs->reply_len += len;
    rs->reply[rs->reply_len] = '\0';
}

static void on_token(void *user, int seq_id, int32_t token, const qv_logprobs *lp,
                     enum qv_finish_reason finish) {
    (void)seq_id;
    (void)lp;
    run_state *rs = user;
    if (rs->n_generated++ == 0) rs->t_first = qv_time_s();
    rs->finish = finish;
    /* With --ignore-eos an end-of-generation token is neither shown nor an end. */
    if (rs->ignore_eos && qv_tokenizer_is_eog(rs->tok, token)) return;
    const char *text = NULL;
    size_t len = 0;
    bool done = false;
    if (qv_detok_push(rs->detok, token, &text, &len, &done) == QV_OK && len) emit(rs, text, len);
    if (done && finish == QV_FINISH_NONE) rs->stopped_by_text = true;
}

/* Generates from prompt ids until a stop condition; streams text to stdout. When reply is not
 * NULL it receives the generated text (caller frees). Returns 0/1. */
static int run_generation(qv_engine *e, const gen_opts *o, const int32_t *ids, size_t n_ids,
                          bool verbose, char **reply) {
    const qv_model *m = qv_engine_model(e);
    qv_gen_params gp = o->gp;
    int room = m->cfg.max_pos - (int)n_ids - qv_adapter_n_prefix_positions(gp.adapter);
    if (room <= 0) {
        fprintf(stderr, "quiver: the prompt (%zu tokens) fills the context (%d)\n", n_ids,
                m->cfg.max_pos);
        return 1;
    }
    if (gp.max_tokens > room) gp.max_tokens = room;
    run_state rs = {0};
    rs.tok = qv_engine_tokenizer(e);
    rs.ignore_eos = gp.ignore_eos;
    qv_error err = {0};
    if (qv_detok_create(qv_engine_tokenizer(e), o->stops, (size_t)o->n_stops, true, &rs.detok) !=
        QV_OK) {
        fprintf(stderr, "quiver: cannot create the detokenizer\n");
        return 1;
    }
    if (qv_detok_prime(rs.detok, ids, n_ids) != QV_OK) { /* decode in the prompt's context */
        fprintf(stderr, "quiver: out of memory\n");
        qv_detok_free(rs.detok);
        return 1;
    }
    int seq = -1;
    double t0 = qv_time_s();
    if (qv_engine_add(e, ids, n_ids, &gp, on_token, &rs, &seq, &err) != QV_OK) {
        fprintf(stderr, "quiver: %s\n", err.msg);
        qv_detok_free(rs.detok);
        return 1;
    }
    while (qv_engine_n_active(e) > 0) {
        if (qv_engine_step(e, &err) != QV_OK) {
            fprintf(stderr, "quiver: %s\n", err.msg);
            qv_detok_free(rs.detok);
            qv_free(rs.reply);
            return 1;
        }
        if (rs.stopped_by_text) qv_engine_cancel(e, seq);
    }
    const char *text = NULL;
    size_t len = 0;
    if (!rs.stopped_by_text && qv_detok_flush(rs.detok, &text, &len) == QV_OK && len)
        emit(&rs, text, len);
    fputc('\n', stdout);
    fflush(stdout);
    double t_end = qv_time_s();
    if (verbose) {
        double prefill = rs.t_first - t0, decode = t_end - rs.t_first;
        fprintf(stderr,
                "quiver: prompt %zu tokens in %.3f s (%.1f tok/s), generated %d tokens, "
                "decode %.1f tok/s, finish=%s\n",
                n_ids, prefill, (double)n_ids / (prefill > 0 ? prefill : 1e-9), rs.n_generated,
                rs.n_generated > 1 ? (double)(rs.n_generated - 1) / (decode > 0 ? decode : 1e-9)
                                   : 0.0,
                rs.stopped_by_text              ? "stop"
                : rs.finish == QV_FINISH_STOP   ? "stop"
                : rs.finish == QV_FINISH_LENGTH ? "length"
                                                : "cancelled");
        qv_engine_stats es;
        qv_engine_get_stats(e, &es);
        if (es.spec_draft_tokens)
            fprintf(stderr, "quiver: speculative decoding: %llu of %llu draft tokens kept\n",
                    (unsigned long long)es.spec_accepted_tokens,
                    (unsigned long long)es.spec_draft_tokens);
    }
    qv_detok_free(rs.detok);
    if (reply)
        *reply = rs.reply ? rs.reply : qv_strdup("");
    else
        qv_free(rs.reply);
    return 0;
}

static qv_status resolve_adapter(const char *arg, char **path, qv_error *err);

static qv_engine *open_engine(gen_opts *o) {
    if (!o->verbose) qv_log_set_level(QV_LOG_WARN);
    qv_engine_config c;
    qv_engine_config_default(&c);
    c.model_path = o->model;
    c.n_threads = o->n_threads;
    if (o->kv_mb) c.kv_bytes = o->kv_mb << 20;
    c.device = o->device;
    c.spec_tokens = o->spec[0];
    c.spec_ngram_min = o->spec[1];
    c.spec_ngram_max = o->spec[2];
    qv_engine *e = NULL;
    qv_error err = {0};
    if (qv_engine_create(&c, &e, &err) != QV_OK) {
        fprintf(stderr, "quiver: %s\n", err.msg);
        return NULL;
    }
    if (o->adapter_dir) {
        char *path = NULL;
        if (resolve_adapter(o->adapter_dir, &path, &err) != QV_OK ||
            qv_adapter_load(path, qv_engine_model(e), NULL, &o->adapter, &err) != QV_OK) {
            fprintf(stderr, "quiver: %s\n", err.msg);
            qv_free(path);
            qv_engine_destroy(e);
            return NULL;
        }
        qv_free(path);
        o->gp.adapter = o->adapter;
    }
    return e;
}

/* --adapter: an existing directory is used as is; anything else that is a valid store name or
 * version id is resolved through the adapter store (the one `quiver serve` uses by default).
 * *path is owned by the caller (qv_free). */
static qv_status resolve_adapter(const char *arg, char **path, qv_error *err) {
    struct stat st;
    if (stat(arg, &st) == 0 && S_ISDIR(st.st_mode)) {
        *path = qv_strdup(arg);
        return *path ? QV_OK : qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    }
    if (!qv_store_name_valid(arg) && !qv_store_version_valid(arg))
        return qv_errorf(err, QV_ERR_NOT_FOUND, "--adapter %s: no such directory", arg);
    char root[4096];
    const char *env = getenv("QUIVER_ADAPTER_STORE"), *home = getenv("QUIVER_HOME");
    if (env && *env)
        snprintf(root, sizeof(root), "%s", env);
    else if (home && *home)
        snprintf(root, sizeof(root), "%s/adapters", home);
    else
        snprintf(root, sizeof(root), "%s/.cache/quiver/adapters",
                 getenv("HOME") ? getenv("HOME") : ".");
    if (stat(root, &st) != 0)
        return qv_errorf(err, QV_ERR_NOT_FOUND,
                         "--adapter %s: no such directory (and no adapter store at %s)", arg, root);
    qv_store_t *store = NULL;
    char version[QV_STORE_VERSION_LEN + 1];
    qv_status s = qv_store_open(root, NULL, &store, err);
    if (s == QV_OK) s = qv_store_resolve(store, arg, version, path, err);
    qv_store_close(store);
    if (s == QV_ERR_NOT_FOUND)
        return qv_errorf(err, s, "--adapter %s: no such directory or adapter in the store %s", arg,
                         root);
    return s;
}

int qv_cli_generate(int argc, char **argv) {
    gen_opts o;
    int rc = parse_opts(argc, argv, false, &o);
    if (rc) return rc < 0 ? 0 : rc;
    if (!o.prompt) {
        fprintf(stderr, "quiver generate: --prompt is required (see --help)\n");
        opts_free(&o);
        return 2;
    }
    qv_engine *e = open_engine(&o);
    if (!e) {
        opts_free(&o);
        return 1;
    }
    int32_t *ids = NULL;
    size_t n_ids = 0;
    qv_error err = {0};
    if (qv_tokenizer_encode(qv_engine_tokenizer(e), o.prompt, strlen(o.prompt), o.add_special, &ids,
                            &n_ids, &err) != QV_OK) {
        fprintf(stderr, "quiver: %s\n", err.msg);
        qv_engine_destroy(e);
        opts_free(&o);
        return 1;
    }
    if (n_ids == 0) {
        fprintf(stderr, "quiver: the prompt encodes to no tokens\n");
        rc = 1;
    } else {
        rc = run_generation(e, &o, ids, n_ids, o.verbose, NULL);
    }
    qv_free(ids);
    qv_engine_destroy(e);
    opts_free(&o);
    return rc;
}

/* Conversation history for interactive chat. */
typedef struct history {
    qv_chat_msg *msgs;
    size_t n, cap;
} history;

static bool history_push(history *h, const char *role, const char *content) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 8;
        qv_chat_msg *m = qv_realloc(h->msgs, cap * sizeof(*m));
        if (!m) return false;
        h->msgs = m;
        h->cap = cap;
    }
    char *r = qv_strdup(role), *c = qv_strdup(content);
    if (!r || !c) {
        qv_free(r);
        qv_free(c);
        return false;
    }
    h->msgs[h->n] = (qv_chat_msg){.role = r, .content = c};
    h->n++;
    return true;
}

static void history_free(history *h) {
    for (size_t i = 0; i < h->n; i++) {
        qv_free((char *)(uintptr_t)h->msgs[i].role);
        qv_free((char *)(uintptr_t)h->msgs[i].content);
    }
    qv_free(h->msgs);
}

/* Captures the assistant's reply while streaming it, so it can join the history. */
static int chat_turn(qv_engine *e, const gen_opts *o, history *h) {
    char *prompt = NULL;
    qv_error err = {0};
    if (qv_chat_render(qv_engine_tokenizer(e), o->chat_template, h->msgs, h->n, true, &prompt,
                       &err) != QV_OK) {
        fprintf(stderr, "quiver: %s\n", err.msg);
        return 1;
    }
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = 1;
    /* The rendered template already contains its BOS/control tokens as text. */
    if (qv_tokenizer_encode(qv_engine_tokenizer(e), prompt, strlen(prompt), false, &ids, &n_ids,
                            &err) != QV_OK) {
        fprintf(stderr, "quiver: %s\n", err.msg);
        goto done;
    }
    char *reply = NULL;
    rc = run_generation(e, o, ids, n_ids, o->verbose, &reply);
    if (rc == 0 && !history_push(h, "assistant", reply)) rc = 1;
    qv_free(reply);
done:
    qv_free(ids);
    qv_free(prompt);
    return rc;
}

int qv_cli_chat(int argc, char **argv) {
    gen_opts o;
    int rc = parse_opts(argc, argv, true, &o);
    if (rc) return rc < 0 ? 0 : rc;
    qv_engine *e = open_engine(&o);
    if (!e) {
        opts_free(&o);
        return 1;
    }
    history h = {0};
    if (o.system && !history_push(&h, "system", o.system)) rc = 1;
    if (!rc && o.message) {
        rc = history_push(&h, "user", o.message) ? chat_turn(e, &o, &h) : 1;
    } else if (!rc) {
        char line[16384];
        fprintf(stderr, "quiver chat: type a message and press Enter (Ctrl-D to quit)\n");
        for (;;) {
            fputs("> ", stderr);
            if (!fgets(line, sizeof(line), stdin)) break;
            size_t len = strlen(line);
            while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
                line[--len] = 0;
            if (!len) continue;
            if (!history_push(&h, "user", line) || chat_turn(e, &o, &h)) {
                rc = 1;
                break;
            }
        }
    }
    history_free(&h);
    qv_engine_destroy(e);
    opts_free(&o);
    return rc;
}
