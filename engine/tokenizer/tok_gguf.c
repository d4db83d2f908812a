/*
 * tok_gguf.c - building a qv_tokenizer from GGUF `tokenizer.ggml.*` metadata (TOKENIZER.md 5):
 * maps llama.cpp's pre-tokenizer names onto the HF pipeline of the same family.
 *
 * "gpt2" vocab: pre smollm (Digits + GPT-2 ByteLevel), llama-bpe/llama3 (Llama-3 Split +
 * ByteLevel, ignore_merges, BOS), qwen2 (NFC + Qwen2 Split + ByteLevel), gpt-2/default (GPT-2
 * ByteLevel). "llama" vocab: SentencePiece-style BPE where merges come from the scores (the
 * pair whose concatenation has the best score merges first, like HF's converter), legacy
 * Prepend/Replace normalizer, byte fallback, fused unk. Anything else is refused.
 * Thread: loading only; the gguf is not retained.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "tok_internal.h"

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

static _Thread_local const float *g_scores; /* qsort context of the loading thread */

static int cmp_score(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (g_scores[x] != g_scores[y]) return g_scores[x] > g_scores[y] ? -1 : 1;
    return x < y ? -1 : 1;
}

static int64_t get_int_or(const qv_gguf *g, const char *key, int64_t dflt) {
    int64_t v;
    return qv_gguf_get_int(g, key, &v) ? v : dflt;
}

static bool get_bool_or(const qv_gguf *g, const char *key, bool dflt) {
    bool v;
    if (qv_gguf_get_bool(g, key, &v)) return v;
    int64_t i;
    return qv_gguf_get_int(g, key, &i) ? i != 0 : dflt;
}

static qv_status set_pre(qv_tokenizer *t, enum qv__pre_kind kind, const char *re, qv_error *err) {
    qv__pre *p = &t->pres[t->n_pres++];
    memset(p, 0, sizeof(*p));
    p->kind = kind;
    p->behavior = QV_SPLIT_ISOLATED;
    if (kind == QV_PRE_DIGITS) p->individual_digits = true;
    if (kind == QV_PRE_BYTELEVEL) p->use_regex = re != NULL;
    if (re) return qv__tok_compile_regex(p, re, strlen(re), err);
    return QV_OK;
}

static qv_status set_dec(qv_tokenizer *t, enum qv__dec_kind kind, const char *a, const char *b) {
    qv__dec *d = &t->decs[t->n_decs++];
    memset(d, 0, sizeof(*d));
    d->kind = kind;
    t->has_decoder = true;
    if (kind == QV_DEC_REPLACE) {
        if (!(d->a = qv_strdup(a)) || !(d->b = qv_strdup(b))) return QV_ERR_NOMEM;
        d->a_len = strlen(a);
        d->b_len = strlen(b);
    }
    if (kind == QV_DEC_STRIP) {
        d->strip_cp = ' ';
        d->strip_start = 1;
    }
    return QV_OK;
}

static qv_status set_norm(qv_tokenizer *t, enum qv__norm_kind kind, const char *a, const char *b) {
    qv__norm *m = &t->norms[t->n_norms++];
    memset(m, 0, sizeof(*m));
    m->kind = kind;
    if (a && !(m->a = qv_strdup(a))) return QV_ERR_NOMEM;
    if (b && !(m->b = qv_strdup(b))) return QV_ERR_NOMEM;
    m->a_len = a ? strlen(a) : 0;
    m->b_len = b ? strlen(b) : 0;
    return QV_OK;
}

qv_status qv_tokenizer_load_gguf(const struct qv_gguf *g, qv_tokenizer **out, qv_error *err) {
    qv_tokenizer *t = NULL;
    qv_status st;
    const char *s;
    size_t sl;
    char model[32] = "", pre[64] = "default";
    int32_t *types = NULL;
    float *scores = NULL;
    int32_t *order = NULL;
    *out = NULL;
    if (!qv_gguf_get_str(g, "tokenizer.ggml.model", &s, &sl))
        return qv_errorf(err, QV_ERR_NOT_FOUND, "GGUF has no tokenizer.ggml.model");
    snprintf(model, sizeof(model), "%.*s", (int)QV_MIN(sl, sizeof(model) - 1), s);
    if (qv_gguf_get_str(g, "tokenizer.ggml.pre", &s, &sl))
        snprintf(pre, sizeof(pre), "%.*s", (int)QV_MIN(sl, sizeof(pre) - 1), s);
    bool bpe = !strcmp(model, "gpt2"), spm = !strcmp(model, "llama");
    if (!bpe && !spm)
        return qv_errorf(err, QV_ERR_UNSUPPORTED,
                         "GGUF tokenizer model '%s' is not supported "
                         "(gpt2 and llama only)",
                         model);
    enum qv_gguf_type et;
    uint64_t n_tok = 0, n_types = 0, n_merges = 0, n_scores = 0;
    if (!qv_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n_tok) || et != QV_GGUF_STRING ||
        n_tok == 0 || n_tok > 0x7FFFFFF)
        return qv_errorf(err, QV_ERR_INVALID, "GGUF tokenizer.ggml.tokens is missing or bad");
    if ((st = qv__tok_alloc(&t))) goto fail;
    types = qv_calloc(n_tok, sizeof(*types));
    scores = qv_calloc(n_tok, sizeof(*scores));
    if (!types || !scores) {
        st = QV_ERR_NOMEM;
        goto fail;
    }
    bool have_types =
        qv_gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &n_types) && n_types == n_tok;
    bool have_scores =
        qv_gguf_get_arr(g, "tokenizer.ggml.scores", &et, &n_scores) && n_scores == n_tok;
    if ((st = qv__strmap_init(&t->vocab_map, n_tok))) goto fail;
    for (uint64_t i = 0; i < n_tok; i++) {
        int64_t ty = TT_NORMAL;
        double sc = 0;
        if (!qv_gguf_arr_str(g, "tokenizer.ggml.tokens", i, &s, &sl)) {
            st = qv_errorf(err, QV_ERR_INVALID, "GGUF token %llu is unreadable",
                           (unsigned long long)i);
            goto fail;
        }
        if (have_types) qv_gguf_arr_int(g, "tokenizer.ggml.token_type", i, &ty);
        if (have_scores) qv_gguf_arr_float(g, "tokenizer.ggml.scores", i, &sc);
        types[i] = (int32_t)ty;
        scores[i] = (float)sc;
        if ((st = qv__tok_set_vocab(t, (int32_t)i, s, sl))) goto fail;
        if (sl && (ty == TT_CONTROL || ty == TT_USER || (spm && ty == TT_UNKNOWN))) {
            st = qv__tok_add_added(t, s, sl, (int32_t)i, ty != TT_USER, false, false, false, false);
            if (st) goto fail;
        }
    }
    t->bos_id = (int32_t)get_int_or(g, "tokenizer.ggml.bos_token_id", spm ? 1 : -1);
    t->eos_id = (int32_t)get_int_or(g, "tokenizer.ggml.eos_token_id", spm ? 2 : -1);
    if (t->bos_id >= (int32_t)n_tok) t->bos_id = -1;
    if (t->eos_id >= (int32_t)n_tok) t->eos_id = -1;
    bool add_bos = get_bool_or(g, "tokenizer.ggml.add_bos_token", spm);
    bool add_eos = get_bool_or(g, "tokenizer.ggml.add_eos_token", false);

    if (bpe) {
        if (!qv_gguf_get_arr(g, "tokenizer.ggml.merges", &et, &n_merges) || et != QV_GGUF_STRING) {
            st =
                qv_errorf(err, QV_ERR_INVALID, "GGUF gpt2 tokenizer without tokenizer.ggml.merges");
            goto fail;
        }
        if ((st = qv__pairmap_init(&t->merges, n_merges + 1))) goto fail;
        for (uint64_t i = 0; i < n_merges; i++) {
            if (!qv_gguf_arr_str(g, "tokenizer.ggml.merges", i, &s, &sl)) {
                st = qv_errorf(err, QV_ERR_INVALID, "GGUF merge %llu is unreadable",
                               (unsigned long long)i);
                goto fail;
            }
            const char *sp = sl > 1 ? memchr(s + 1, ' ', sl - 1) : NULL;
            if (!sp) {
                st = qv_errorf(err, QV_ERR_INVALID, "GGUF merge %llu has no space",
                               (unsigned long long)i);
                goto fail;
            }
            st = qv__tok_add_merge(t, s, (size_t)(sp - s), sp + 1, sl - (size_t)(sp - s) - 1,
                                   (int32_t)i, err);
            if (st) goto fail;
        }
        if (!strcmp(pre, "smollm")) {
            if ((st = set_pre(t, QV_PRE_DIGITS, NULL, err))) goto fail;
            if ((st = set_pre(t, QV_PRE_BYTELEVEL, qv__re_gpt2, err))) goto fail;
        } else if (!strcmp(pre, "llama-bpe") || !strcmp(pre, "llama3")) {
            if ((st = set_pre(t, QV_PRE_SPLIT, qv__re_llama3, err))) goto fail;
            if ((st = set_pre(t, QV_PRE_BYTELEVEL, NULL, err))) goto fail;
            t->ignore_merges = true;
        } else if (!strcmp(pre, "qwen2")) {
            if ((st = set_norm(t, QV_NORM_NFC, NULL, NULL))) goto fail;
            if ((st = set_pre(t, QV_PRE_SPLIT, qv__re_qwen2, err))) goto fail;
            if ((st = set_pre(t, QV_PRE_BYTELEVEL, NULL, err))) goto fail;
        } else if (!strcmp(pre, "gpt-2") || !strcmp(pre, "gpt2") || !strcmp(pre, "default")) {
            if (!strcmp(pre, "default"))
                QV_LOGW("GGUF tokenizer.ggml.pre is 'default': using the GPT-2 pre-tokenizer");
            if ((st = set_pre(t, QV_PRE_BYTELEVEL, qv__re_gpt2, err))) goto fail;
        } else {
            st = qv_errorf(err, QV_ERR_UNSUPPORTED,
                           "GGUF tokenizer.ggml.pre '%s' is not supported "
                           "(smollm, llama-bpe, llama3, qwen2, gpt-2, default)",
                           pre);
            goto fail;
        }
        if ((st = set_dec(t, QV_DEC_BYTELEVEL, NULL, NULL))) goto fail;
    } else {
        bool space_prefix = get_bool_or(g, "tokenizer.ggml.add_space_prefix", true);
        if (space_prefix && (st = set_norm(t, QV_NORM_PREPEND, "\xE2\x96\x81", NULL))) goto fail;
        if ((st = set_norm(t, QV_NORM_REPLACE, " ", "\xE2\x96\x81"))) goto fail;
        t->byte_fallback = true;
        t->fuse_unk = true;
        t->unk_id = (int32_t)get_int_or(g, "tokenizer.ggml.unknown_token_id", 0);
        if (t->unk_id >= (int32_t)n_tok) t->unk_id = -1;
        t->spm_merges = true;
        t->rank_by_id = qv_malloc(n_tok * sizeof(int32_t));
        order = qv_malloc(n_tok * sizeof(int32_t));
        if (!t->rank_by_id || !order) {
            st = QV_ERR_NOMEM;
            goto fail;
        }
        for (uint64_t i = 0; i < n_tok; i++)
            order[i] = (int32_t)i;
        g_scores = scores;
        qsort(order, n_tok, sizeof(int32_t), cmp_score);
        g_scores = NULL;
        for (uint64_t r = 0; r < n_tok; r++) {
            int32_t id = order[r];
            int ty = types[id];
            t->rank_by_id[id] = (ty == TT_NORMAL || ty == TT_USER || ty == 0) ? (int32_t)r : -1;
        }
        if ((st = set_dec(t, QV_DEC_REPLACE, "\xE2\x96\x81", " "))) goto fail;
        if ((st = set_dec(t, QV_DEC_BYTEFALLBACK, NULL, NULL))) goto fail;
        if ((st = set_dec(t, QV_DEC_FUSE, NULL, NULL))) goto fail;
        if (space_prefix && (st = set_dec(t, QV_DEC_STRIP, NULL, NULL))) goto fail;
    }
    if (add_bos && t->bos_id >= 0) t->post_pre[t->n_post_pre++] = t->bos_id;
    if (add_eos && t->eos_id >= 0) t->post_post[t->n_post_post++] = t->eos_id;
    if (qv_gguf_get_str(g, "tokenizer.chat_template", &s, &sl) &&
        !(t->chat_template = qv_strndup(s, sl))) {
        st = QV_ERR_NOMEM;
        goto fail;
    }
    if ((st = qv__tok_finish(t, err))) goto fail;
    {
        int32_t eot = (int32_t)get_int_or(g, "tokenizer.ggml.eot_token_id", -1);
        int32_t eom = (int32_t)get_int_or(g, "tokenizer.ggml.eom_token_id", -1);
        for (int k = 0; k < 2; k++) {
            int32_t id = k ? eom : eot;
            if (id < 0 || id >= t->n_vocab || qv_tokenizer_is_eog(t, id)) continue;
            if (t->n_eog < QV_TOK_MAX_EOG) t->eog[t->n_eog++] = id;
        }
    }
    qv_free(types);
    qv_free(scores);
    qv_free(order);
    *out = t;
    return QV_OK;
fail:
    if (st == QV_ERR_NOMEM && err) qv_errorf(err, st, "out of memory loading the GGUF tokenizer");
    qv_free(types);
    qv_free(scores);
    qv_free(order);
    qv_tokenizer_free(t);
    return st;
}

qv_status qv__tok_load_gguf_file(const char *path, qv_tokenizer **out, qv_error *err) {
    qv_gguf *g = NULL;
    qv_status st = qv_gguf_open(path, &g, err);
    if (st) return st;
    st = qv_tokenizer_load_gguf(g, out, err);
    if (st) qv_error_prefix(err, "%s", path);
    qv_gguf_close(g);
    return st;
}
