/*
 * tok_internal.h - internal structures of the tokenizer shared by the files in
 * engine/tokenizer/: the loaded pipeline description, hash maps, UTF-8 helpers.
 *
 * Not a public API: only the engine/tokenizer sources and the tokenizer tests include it.
 * Invariants: everything reachable from a qv_tokenizer is immutable after load (regexes are
 * compiled once; per-call scratch such as pcre2_match_data is allocated per call).
 * Thread: read-only sharing across threads is safe.
 */
#ifndef QV_TOK_INTERNAL_H
#define QV_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "tokenizer.h"

/* ---- growable byte buffer ---- */
typedef struct qv__buf {
    char *p;
    size_t len, cap;
} qv__buf;

qv_status qv__buf_reserve(qv__buf *b, size_t extra);
qv_status qv__buf_put(qv__buf *b, const void *s, size_t n);
qv_status qv__buf_putc(qv__buf *b, char c);
/* Appends the UTF-8 encoding of code point cp. */
qv_status qv__buf_put_cp(qv__buf *b, uint32_t cp);
void qv__buf_free(qv__buf *b);

/* ---- UTF-8 ---- */
/* Decodes one code point at s[0..n); returns its byte length (1..4) or 0 when the sequence is
 * invalid (then *cp is undefined). */
size_t qv__utf8_decode(const char *s, size_t n, uint32_t *cp);
/* Length of the maximal prefix of an invalid sequence (Unicode "maximal subpart"), >= 1. */
size_t qv__utf8_invalid_len(const char *s, size_t n);
/* True when s[0..n) is valid UTF-8. */
bool qv__utf8_valid(const char *s, size_t n);
/* Appends s with every maximal invalid subsequence replaced by U+FFFD. */
qv_status qv__utf8_repair(const char *s, size_t n, qv__buf *out);
/* Number of bytes at the end of s[0..n) that form an incomplete (but so far valid) sequence. */
size_t qv__utf8_incomplete_tail(const char *s, size_t n);

/* Unicode classes as HF uses them (Rust char methods / regex \s \w). */
bool qv__uc_is_whitespace(uint32_t cp); /* White_Space property */
bool qv__uc_is_numeric(uint32_t cp);    /* Rust char::is_numeric: Nd, Nl, No */
bool qv__uc_is_word(uint32_t cp);       /* Rust regex \w */

/* GPT-2 byte <-> char tables (TOKENIZER.md section 3). */
uint32_t qv__byte_to_cp(uint8_t b);
int qv__cp_to_byte(uint32_t cp); /* -1 when cp is not in the map */

/* ---- hash maps ---- */
/* String -> int32 map; keys are borrowed (they must outlive the map). */
typedef struct qv__strmap {
    const char **keys;
    uint32_t *key_lens;
    int32_t *vals;
    size_t cap, n; /* cap is a power of two */
} qv__strmap;

qv_status qv__strmap_init(qv__strmap *m, size_t expected);
/* Inserts or overwrites. */
qv_status qv__strmap_set(qv__strmap *m, const char *key, size_t len, int32_t val);
/* Returns the value or -1. */
int32_t qv__strmap_get(const qv__strmap *m, const char *key, size_t len);
void qv__strmap_free(qv__strmap *m);

/* (left id, right id) -> (rank, merged id). */
typedef struct qv__pairmap {
    uint64_t *keys; /* UINT64_MAX = empty */
    int32_t *ranks;
    int32_t *merged;
    size_t cap, n;
} qv__pairmap;

qv_status qv__pairmap_init(qv__pairmap *m, size_t expected);
qv_status qv__pairmap_set(qv__pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged);
bool qv__pairmap_get(const qv__pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged);
void qv__pairmap_free(qv__pairmap *m);

/* ---- pipeline description ---- */
enum qv__norm_kind {
    QV_NORM_NFC,
    QV_NORM_NFD,
    QV_NORM_NFKC,
    QV_NORM_NFKD,
    QV_NORM_PREPEND,
    QV_NORM_REPLACE
};
typedef struct qv__norm {
    enum qv__norm_kind kind;
    char *a; /* PREPEND: prepend text; REPLACE: pattern (literal) */
    char *b; /* REPLACE: content */
    size_t a_len, b_len;
} qv__norm;

enum qv__split_behavior {
    QV_SPLIT_REMOVED,
    QV_SPLIT_ISOLATED,
    QV_SPLIT_MERGED_PREV,
    QV_SPLIT_MERGED_NEXT,
    QV_SPLIT_CONTIGUOUS
};
enum qv__pre_kind { QV_PRE_SPLIT, QV_PRE_BYTELEVEL, QV_PRE_DIGITS, QV_PRE_METASPACE };
enum qv__prepend { QV_PREPEND_ALWAYS, QV_PREPEND_FIRST, QV_PREPEND_NEVER };
typedef struct qv__pre {
    enum qv__pre_kind kind;
    pcre2_code *re; /* SPLIT (regex form), BYTELEVEL with use_regex */
    char *literal;  /* SPLIT (string form) */
    size_t literal_len;
    enum qv__split_behavior behavior;
    bool invert;
    bool use_regex, add_prefix_space; /* BYTELEVEL */
    bool individual_digits;           /* DIGITS */
    char replacement[8];              /* METASPACE: UTF-8 of the replacement char */
    size_t replacement_len;
    enum qv__prepend prepend_scheme;
    bool split;
} qv__pre;

enum qv__dec_kind {
    QV_DEC_BYTELEVEL,
    QV_DEC_REPLACE,
    QV_DEC_BYTEFALLBACK,
    QV_DEC_FUSE,
    QV_DEC_STRIP,
    QV_DEC_METASPACE
};
typedef struct qv__dec {
    enum qv__dec_kind kind;
    char *a, *b; /* REPLACE pattern/content */
    size_t a_len, b_len;
    uint32_t strip_cp; /* STRIP content char */
    int strip_start, strip_stop;
    char replacement[8]; /* METASPACE */
    size_t replacement_len;
    enum qv__prepend prepend_scheme;
} qv__dec;

typedef struct qv__added {
    char *content;
    size_t len;
    char *ncontent; /* normalized content (phase-2 match key), NULL when equal to content */
    size_t nlen;
    int32_t id;
    bool special, normalized, lstrip, rstrip, single_word;
} qv__added;

#define QV_TOK_MAX_STEPS 8
#define QV_TOK_MAX_POST 8
#define QV_TOK_MAX_EOG 16

struct qv_tokenizer {
    /* model vocab: id -> string (pool), string -> id */
    char **vocab;        /* [cap_vocab] NUL-terminated, NULL where no token has that id */
    uint32_t *vocab_len; /* [cap_vocab] */
    int n_vocab;         /* max id + 1 over model vocab and added tokens */
    int cap_vocab;
    qv__strmap vocab_map; /* model vocab only */
    qv__pairmap merges;
    bool spm_merges;     /* GGUF "llama": merges derived from scores (rank_by_id) */
    int32_t *rank_by_id; /* spm: rank of the merged token by score order */

    /* BPE flags */
    bool byte_fallback, fuse_unk, ignore_merges;
    int32_t unk_id;        /* -1 when unk_token is null */
    int32_t byte_tok[256]; /* byte_fallback: id of "<0xXX>" or -1 */

    /* added tokens, sorted for matching: by first byte, longest first */
    qv__added *added; /* sorted by (first byte, length descending) after finish */
    size_t n_added, cap_added;
    /* matchers: order[p] lists added-token indices for phase p (0 raw, 1 normalized), sorted
     * by first byte then length descending; first[p][b]..first[p][b+1] start with byte b */
    uint32_t *order[2];
    uint32_t first[2][257];
    qv__strmap added_map;          /* content -> id */
    uint8_t *is_special;           /* [n_vocab] 1 = special added token (skipped when skipping) */
    const qv__added **added_by_id; /* [n_vocab] or NULL entries */
    bool has_normalized_added;

    qv__norm norms[QV_TOK_MAX_STEPS];
    int n_norms;
    qv__pre pres[QV_TOK_MAX_STEPS];
    int n_pres;
    bool bytelevel_last;   /* last pre step is ByteLevel: map bytes inside BPE */
    int32_t byte_sym[256]; /* id of the byte-level char of each byte, -1 = missing */

    /* post-processor (TemplateProcessing single): ids before and after $A */
    int32_t post_pre[QV_TOK_MAX_POST], post_post[QV_TOK_MAX_POST];
    int n_post_pre, n_post_post;

    qv__dec decs[QV_TOK_MAX_STEPS];
    int n_decs;
    bool has_decoder;

    int32_t bos_id, eos_id;
    int32_t eog[QV_TOK_MAX_EOG];
    int n_eog;
    char *chat_template;
    char *bos_text, *eos_text; /* strings templates use for bos_token / eos_token */
};

/* tok_load.c helpers shared with tok_gguf.c */
qv_status qv__tok_alloc(qv_tokenizer **out);
qv_status qv__tok_set_vocab(qv_tokenizer *t, int32_t id, const char *s, size_t len);
qv_status qv__tok_add_added(qv_tokenizer *t, const char *s, size_t len, int32_t id, bool special,
                            bool normalized, bool lstrip, bool rstrip, bool single_word);
qv_status qv__tok_add_merge(qv_tokenizer *t, const char *a, size_t a_len, const char *b,
                            size_t b_len, int32_t rank, qv_error *err);
qv_status qv__tok_compile_regex(qv__pre *p, const char *pattern, size_t len, qv_error *err);
/* Called once everything is set: builds derived tables (byte_sym, eog, sorted added). */
qv_status qv__tok_finish(qv_tokenizer *t, qv_error *err);

/* The GPT-2 / Llama-3 / Qwen2 split regexes (TOKENIZER.md section 2). */
extern const char qv__re_gpt2[];
extern const char qv__re_llama3[];
extern const char qv__re_qwen2[];

/* tok_encode.c: applies the normalizer chain (appends to out); builds the added matchers. */
qv_status qv__tok_normalize(const qv_tokenizer *t, const char *s, size_t n, qv__buf *out);
qv_status qv__tok_build_matchers(qv_tokenizer *t);
/* tok_gguf.c: opens a .gguf file and loads its tokenizer metadata. */
qv_status qv__tok_load_gguf_file(const char *path, qv_tokenizer **out, qv_error *err);

/* tok_decode.c: decodes into buf (appends). */
qv_status qv__tok_decode_buf(const qv_tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                             qv__buf *out);

#endif /* QV_TOK_INTERNAL_H */
