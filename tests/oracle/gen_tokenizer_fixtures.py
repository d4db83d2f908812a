#!/usr/bin/env python3
"""Generate the tokenizer golden fixtures under tests/fixtures/tokenizer/ from the Hugging Face
oracle (tokenizers, jinja2, gguf). quiver's C code is never consulted.

Run:  /work/venv-oracle/bin/python tests/oracle/gen_tokenizer_fixtures.py [--gguf PATH]

Larger differential runs (not committed): write a fixture tree elsewhere and point the tests at
it, e.g.
  python gen_tokenizer_fixtures.py --out /tmp/diff/tests/fixtures/tokenizer --random 1500 \
      --random-kind unicode --random-max-len 40
  QV_SOURCE_DIR=/tmp/diff build/tests/test_tokenizer; QV_SOURCE_DIR=/tmp/diff build/tests/test_detok

What it writes (all deterministic; seeds are fixed):
  <name>/tokenizer.json            one tokenizer per pipeline variant (see build_*):
      smollm2   SmolLM2-135M-Instruct rebuilt from its GGUF exactly as TOKENIZER.md 9.2 says
      gpt2      GPT-2 byte-level (ByteLevel use_regex), legacy "a b" merges
      llama3    Llama-3 Split regex + ByteLevel, ignore_merges, BOS TemplateProcessing
      qwen2     NFC + Qwen2 Split regex + ByteLevel, merges as pairs
      llama2    legacy SentencePiece conversion: Prepend/Replace normalizer, byte_fallback,
                fuse_unk, "<s> $A", Replace/ByteFallback/Fuse/Strip decoder
      spmunk    the same without byte tokens: unknown characters become fused <unk>
      metaspace Metaspace(prepend_scheme=first, split=false) instead of the normalizer
      added     GPT-2 + NFC + added tokens with lstrip / rstrip / single_word / normalized
      metaspace_split  Metaspace(prepend_scheme=always, split=true) + Metaspace decoder
      splits    every Split behaviour (string/regex, invert), Digits contiguous, ByteLevel
                add_prefix_space
      gpt2/llama3/qwen2.gguf  the same vocabularies as llama.cpp's converter writes them
                (pre gpt-2 / llama-bpe / qwen2), for the GGUF gpt2-type path
      spm       a SentencePiece vocabulary (scores, no merges) written as spm.gguf, and the HF
                tokenizer transformers' converter builds from it (for the GGUF "llama" path)
  <name>/tokenizer_config.json     bos/eos (+ chat template for smollm2)
  cases_<name>.json                per input string (UTF-8 bytes in hex): ids with and without
                                   add_special_tokens, decode (skip_special on/off), DecodeStream
                                   step outputs (skip on/off), and single-id decodes
  chat.json                        jinja2 renderings of real templates (SmolLM2 from the GGUF;
                                   Llama-3, Llama-2-chat, Mistral-7B-Instruct-v0.2, Qwen2.5 texts
                                   from the sources cited at TEMPLATES below)

The small tokenizers are trained with `tokenizers` BpeTrainer on a fixed corpus (vocab ~600).
"""
import argparse
import json
import os
import random
import sys

import jinja2
import jinja2.ext
import jinja2.sandbox
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
DEFAULT_GGUF = os.path.expanduser("~/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf")

RE_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
RE_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# TOKENIZER.md section 10, all of it.
TRICKY = [
    "", " ", "   ", "\t", "a  b", "a   b", "trailing  ", "  leading", "a\t\tb", "x\n\n\ny",
    "\r\n", "line\r\n\r\n end", "a \n b", "x  \n  y", "tail \n  ", "\n  12 \n\n7", "  ,  x",
    "a ,b",
    "a\u00a0b", "\u00a0\u00a0 x", "x\u3000 y", "\u2028line\u2029para", "a\u0085b", "a\u180eb",
    "a\x0bb", "a\x0cb", "a\x1cb", "\x00x",
    "I'm", "don't", "DON'T", "IT'S 'Ll 'Re", "we'LL they've", "'s", "o'clock", "rock'n'roll",
    "a'\u017f \u212a", "'\u017f",
    "12345678", "3.14159", "1,000,000", "price: $1,234.56", "v1.2.3", "\u0663\u0664\u0665 123",
    "\u00b2\u00b3 x", "\u00bd \u00be1", "\u216b x", "\uff11\uff12\uff13",
    "café", "cafe\u0301 e\u0301\u0301", "naïve", "你好世界", "こんにちは、世界。カタカナ",
    "안녕하세요 세계", "สวัสดี", "مرحبا بالعالم", "नमस्ते दुनिया",
    "😀", "👍🏽🇺🇸 ❤️", "👨\u200d👩\u200d👧", "🦙", "\U0001d800", "龘",
    "<|im_start|>user\nhi<|im_end|>", "a<|endoftext|>b", "<s>hello</s>", "x<|eot_id|>y",
    "<|im_start", "< |im_end|>", "<|im_end|><|im_end|>", " <|im_end|> ", "<s> hi </s>",
    "hi<s>there", "<|begin_of_text|>x", "end<|end_of_text|>",
    "def foo(x):\n    return x ** 2\n", "f(x) = y;\n", '{"a": [1, 2.5, "x\\n"], "b": null}',
    "...!!!???", "(a) [b] {c}", "__init__", "x..y", "email: test@example.com",
    "hello", " hello", "  ", "hello world", "Hello World HELLO", "<mask>", "a <mask> b",
    "x [R]   y", "hello, hello!", "ahello hellob", " wörld", "cafe\u0301!", "  <mask>[R]  z",
    # characters newer than PCRE2's / utf8proc's Unicode tables (Unicode 15/16 digits, letters)
    "\U00011bf4\U0001e5f9 12 \U000105c0x \u1c89y \U00016d72\U00016d73",
]

EDGE_CHARS = list("aZ09 '\t\n\r.,!?-_()$") + [
    "\u00a0", "\u3000", "\u2028", "\u0085", "\u180e", "\x0b", "\x1c", "\x00", "\u017f", "\u212a",
    "\u0663", "\u00b2", "\u00bd", "\u216b", "\uff11", "é", "e\u0301", "你", "ス", "한", "ส", "ب",
    "न", "\u094d", "😀", "🏽", "\u200d", "🦙", "\U0001d800", "<|im_end|>", "<s>", "<|eot_id|>",
    "'s", "'LL", "  ", "<mask>", "[R]", "hello", "▁",
]

INVALID = [b"\xff", b"a\xc3", b"\xe2\x82", b"\xed\xa0\x80x", b"\xf0\x9f\x98x", b"\xc0\xaf",
           b"\xf4\x90\x80\x80", b"ok\x80\x80ok", b"\xe4\xbd\xa0\xe5"]

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 12:30 and we're late!",
    "def tokenize(text):\n    return [t for t in text.split() if t]\n",
    "In 2024, the price was $1,234.56 (about 3.14159 times more).",
    "Hello world! Hello there, how are you doing today? I'm fine, thanks.",
    "café naïve résumé — “quotes” and ‘single’ quotes… 你好世界 こんにちは",
    "    indented code\n\tand tabs\n\n\nmultiple newlines  and   spaces",
    "don't won't can't shouldn't they've we'll I'd you're",
    "email: test@example.com, url: https://example.com/path?q=1&r=2",
    "数字 123 and ٣٤٥ and ½ and Ⅻ and １２３",
    "emoji 😀 👍🏽 🇺🇸 ❤️ 🦙 and more text after them",
]


def corpus():
    rng = random.Random(1234)
    words = " ".join(CORPUS).split()
    lines = list(CORPUS) + TRICKY
    for _ in range(300):
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))))
    return lines


RANDOM = {"n": 60, "kind": "edge", "max_len": 14}


def random_strings(n, seed):
    """Seeded random strings over the edge characters (default) or over arbitrary code points
    (--random-kind unicode: ASCII, BMP and SMP, no surrogates)."""
    rng = random.Random(seed)
    out = []
    for _ in range(RANDOM["n"]):
        k = rng.randint(1, RANDOM["max_len"])
        if RANDOM["kind"] == "edge":
            out.append("".join(rng.choice(EDGE_CHARS) for _ in range(k)))
            continue
        s = []
        for _ in range(k):
            r = rng.random()
            cp = (rng.randint(0x20, 0x7E) if r < 0.3 else rng.randint(0xA0, 0x2FFF) if r < 0.7
                  else rng.randint(0x3000, 0xFFFF) if r < 0.9 else rng.randint(0x10000, 0x1FFFF))
            s.append(chr(0x41 if 0xD800 <= cp <= 0xDFFF else cp))
        out.append("".join(s))
    return out


def hexs(s):
    return s.encode("utf-8").hex()


def with_legacy_merges(tok):
    j = json.loads(tok.to_str())
    j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    return Tokenizer.from_str(json.dumps(j))


def train_bytelevel(pre, specials, normalizer=None, vocab_size=600):
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                             show_progress=False)
    tok.train_from_iterator(corpus(), tr)
    return tok


def build_gpt2():
    tok = train_bytelevel(pre_tokenizers.ByteLevel(add_prefix_space=False), ["<|endoftext|>"])
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return with_legacy_merges(tok), {"bos_token": None, "eos_token": "<|endoftext|>"}


def build_llama3():
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(RE_LLAMA3), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok = train_bytelevel(pre, specials)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    # ignore_merges: add whole-word tokens that the merges cannot build.
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = True
    j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    vocab = j["model"]["vocab"]
    nxt = max(max(vocab.values()), max(a["id"] for a in j["added_tokens"])) + 1
    for w in ["Ġzebra", "hello", "Ġquick", "Ġworld", "ĠHELLO", "ĠÃ©"]:
        if w not in vocab:
            vocab[w] = nxt
            nxt += 1
    return Tokenizer.from_str(json.dumps(j)), {"bos_token": "<|begin_of_text|>",
                                               "eos_token": "<|eot_id|>"}


def build_qwen2():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(RE_QWEN2), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok = train_bytelevel(pre, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                          normalizer=normalizers.NFC())
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    j = json.loads(tok.to_str())
    j["model"]["merges"] = [m.split(" ") if isinstance(m, str) else m for m in j["model"]["merges"]]
    return Tokenizer.from_str(json.dumps(j)), {"bos_token": None, "eos_token": "<|im_end|>"}


def spm_vocab():
    """Train a SentencePiece-style BPE on ▁-joined text and lay out Llama-2's id space."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tr = trainers.BpeTrainer(vocab_size=700, limit_alphabet=120, show_progress=False)
    tok.train_from_iterator(corpus(), tr)
    j = json.loads(tok.to_str())
    trained = sorted(j["model"]["vocab"].items(), key=lambda kv: kv[1])
    merges = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    return trained, merges


def build_spm(kind):
    trained, merges = spm_vocab()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    if kind != "spmunk":
        for b in range(256):
            vocab["<0x%02X>" % b] = len(vocab)
    for t, _ in trained:
        if t not in vocab:
            vocab[t] = len(vocab)
    model = models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges],
                       unk_token="<unk>", fuse_unk=True, byte_fallback=(kind != "spmunk"))
    tok = Tokenizer(model)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in
                            ["<unk>", "<s>", "</s>"]])
    if kind == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                     split=False)
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", 1)])
    return with_legacy_merges(tok), {"bos_token": "<s>", "eos_token": "</s>"}


def build_spm_gguf():
    """A tiny GGUF with a SentencePiece ("llama") vocabulary: tokens, scores, token types; and
    the HF tokenizer transformers' LlamaConverter would build from it (legacy normalizer,
    merges from SentencePieceExtractor: every split of every piece into two vocab pieces,
    ordered by the piece's score). quiver's GGUF path derives its merges from the scores."""
    import gguf
    trained, _ = spm_vocab()
    toks, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        toks.append("<0x%02X>" % b)
        scores.append(0.0)
        types.append(6)
    seen = set(toks)
    for t, _ in trained:
        if t not in seen:
            seen.add(t)
            toks.append(t)
            scores.append(-float(len(toks)))  # earlier pieces score higher, like SentencePiece
            types.append(1)
    vocab = {t: i for i, t in enumerate(toks)}
    # transformers SentencePieceExtractor.extract(vocab_scores)
    merges = []
    for piece, score in sorted(((t, s) for t, s, ty in zip(toks, scores, types) if ty == 1),
                               key=lambda x: -x[1]):
        local = [(piece[:i], piece[i:]) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        merges.extend(sorted(local, key=lambda lr: (vocab[lr[0]], vocab[lr[1]])))
    model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                       byte_fallback=True)
    tok = Tokenizer(model)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in
                            ["<unk>", "<s>", "</s>"]])
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", 1)])
    path = os.path.join(OUT, "spm.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return with_legacy_merges(tok), {"bos_token": "<s>", "eos_token": "</s>"}


def build_metaspace_split():
    """Older Metaspace form: prepend always, split on ▁ (MergedWithNext), Metaspace decoder."""
    tok, cfg = build_spm("metaspace")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always",
                                                 split=True)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Metaspace(replacement="▁", prepend_scheme="always",
                                                        split=True)])
    return tok, cfg


def build_splits():
    """Every Split behaviour, string and regex patterns, invert; then byte-level BPE."""
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r"\d+"), behavior="removed"),
        pre_tokenizers.Split(",", behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"[aeiouAEIOU]"), behavior="contiguous", invert=True),
        pre_tokenizers.Split(Regex(r"\s"), behavior="isolated", invert=True),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)])
    tok = train_bytelevel(pre, ["<|endoftext|>"])
    return with_legacy_merges(tok), {"bos_token": None, "eos_token": "<|endoftext|>"}


def write_bpe_gguf(name, tok, pre, add_bos, bos=None, eos=None):
    """The GGUF metadata llama.cpp's converter writes for a gpt2-type (byte-level BPE) vocab:
    tokens by id, token types (CONTROL for special added tokens), "a b" merges, pre name."""
    import gguf
    j = json.loads(tok.to_str())
    vocab = dict(j["model"]["vocab"])
    special = set()
    for a in j["added_tokens"]:
        vocab[a["content"]] = a["id"]
        if a["special"]:
            special.add(a["id"])
    n = max(vocab.values()) + 1
    toks = ["[PAD%d]" % i for i in range(n)]
    for t, i in vocab.items():
        toks[i] = t
    types = [3 if i in special else 1 for i in range(n)]
    merges = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    w = gguf.GGUFWriter(os.path.join(OUT, name + ".gguf"), arch="llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if bos is not None:
        w.add_bos_token_id(tok.token_to_id(bos))
    if eos is not None:
        w.add_eos_token_id(tok.token_to_id(eos))
    w.add_add_bos_token(add_bos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def build_added():
    tok = train_bytelevel(pre_tokenizers.ByteLevel(add_prefix_space=False), ["<|endoftext|>"],
                          normalizer=normalizers.NFC())
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])
    tok.add_tokens([AddedToken("[R]", rstrip=True, normalized=False),
                    AddedToken("hello", single_word=True, normalized=False),
                    AddedToken(" wörld", normalized=True),
                    AddedToken("cafe\u0301!", normalized=True)])
    return with_legacy_merges(tok), {"bos_token": None, "eos_token": "<|endoftext|>"}


def gguf_field(r, key):
    f = r.fields[key]
    return [f.parts[i] for i in f.data]


def build_smollm2(path):
    import gguf
    r = gguf.GGUFReader(path)
    toks = [bytes(p).decode("utf-8") for p in gguf_field(r, "tokenizer.ggml.tokens")]
    types = [int(p[0]) for p in gguf_field(r, "tokenizer.ggml.token_type")]
    merges = []
    for p in gguf_field(r, "tokenizer.ggml.merges"):
        s = bytes(p).decode("utf-8")
        i = s.index(" ", 1)
        merges.append((s[:i], s[i + 1:]))
    vocab = {t: i for i, t in enumerate(toks)}
    model = models.BPE(vocab=vocab, merges=merges, unk_token=None, byte_fallback=False,
                       fuse_unk=False, ignore_merges=False)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.add_special_tokens([AddedToken(toks[i], special=True, normalized=False)
                            for i in range(len(toks)) if types[i] == 3])
    tmpl = bytes(gguf_field(r, "tokenizer.chat_template")[0]).decode("utf-8")
    bos = toks[int(gguf_field(r, "tokenizer.ggml.bos_token_id")[0][0])]
    eos = toks[int(gguf_field(r, "tokenizer.ggml.eos_token_id")[0][0])]
    return with_legacy_merges(tok), {"bos_token": bos, "eos_token": eos, "chat_template": tmpl}


def stream(tok, ids, skip):
    ds = decoders.DecodeStream(skip_special_tokens=skip)
    out = []
    for i in ids:
        s = ds.step(tok, i)
        out.append(None if s is None else hexs(s))
    return out


def cases_for(name, tok):
    texts = TRICKY + random_strings(RANDOM["n"], seed=len(name) * 7919)
    cases = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        ids_sp = tok.encode(t, add_special_tokens=True).ids
        tok.encode_special_tokens = True  # split_special_tokens: specials as plain text
        ids_plain = tok.encode(t, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        cases.append({"ids_plain": ids_plain,
            "hex": hexs(t), "ids": ids, "ids_special": ids_sp,
            "dec": hexs(tok.decode(ids_sp, skip_special_tokens=False)),
            "dec_skip": hexs(tok.decode(ids_sp, skip_special_tokens=True)),
            "stream": stream(tok, ids, False), "stream_skip": stream(tok, ids, True),
        })
    for b in INVALID:
        t = b.decode("utf-8", errors="replace")
        cases.append({"hex": b.hex(), "ids": tok.encode(t, add_special_tokens=False).ids,
                      "ids_special": tok.encode(t, add_special_tokens=True).ids})
    n = tok.get_vocab_size(with_added_tokens=True)
    step = max(1, n // 600)
    single = []
    for i in list(range(0, min(n, 300))) + list(range(300, n, step)):
        a = hexs(tok.decode([i], skip_special_tokens=False))
        b = hexs(tok.decode([i], skip_special_tokens=True))
        single.append([i, a, None if a == b else b])  # None: same as without skipping
    # A long, mixed document (also the benchmark's kind of text) for whole-pipeline coverage.
    rng = random.Random(7)
    doc = "".join(rng.choice(CORPUS + TRICKY) + rng.choice([" ", "\n", "", "  "])
                  for _ in range(400))
    long_case = {"hex": hexs(doc), "ids": tok.encode(doc, add_special_tokens=False).ids}
    return {"tokenizer": name, "cases": cases, "single": single, "long": long_case}


# ---- chat templates ----
# Sources (fetched as text; see docs/tokenizer.md):
#  - SmolLM2: the GGUF's tokenizer.chat_template (read at run time).
#  - Llama-3-Instruct: Meta-Llama-3-8B-Instruct tokenizer_config.json, the string quoted verbatim
#    in many public repos (e.g. vLLM logs "Using default chat template", model cards).
#  - Llama-2-chat and Mistral-7B-Instruct-v0.1/v0.2: tokenizer_config.json strings as quoted in
#    llama.cpp tests/test-chat-template.cpp and public training scripts.
#  - Qwen2.5-Instruct: the Qwen2.5 template (as published with Qwen2.5-Math-7B and quoted in an
#    opencompass config) with Qwen2.5-Instruct's default system prompt.
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content']"
          " | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content"
          " %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
          "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set "
          "system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
          "{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if "
          "(message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation"
          " roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
          "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + "
          "system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = "
          "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + "
          "'[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ "
          "' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
           "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
           "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ "
           "'[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' "
           "%}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and "
           "assistant roles are supported!') }}{% endif %}{% endfor %}")
QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

CONVS = {
    "one": [{"role": "user", "content": "Hi"}],
    "sys_multi": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "Hello"},
                  {"role": "assistant", "content": "Hi!"},
                  {"role": "user", "content": "Bye"}],
    "multi": [{"role": "user", "content": "What is 2+2?"},
              {"role": "assistant", "content": "4"},
              {"role": "user", "content": "And 3+3?"}],
    "empty": [{"role": "user", "content": ""}],
    "specials": [{"role": "user", "content": "a<|im_end|>b [INST] <s> <|eot_id|>"}],
    "unicode": [{"role": "user", "content": "Grüß dich 👋 你好\nnew line"}],
    "spaces": [{"role": "user", "content": "  \t padded \n\x1c"},
               {"role": "assistant", "content": "\n  answer  "},
               {"role": "user", "content": " x "}],
    "ends_assistant": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
    "none": [],
}


def render(tmpl, msgs, gen, bos, eos):
    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                      extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(tmpl).render(messages=msgs, add_generation_prompt=gen,
                                        bos_token=bos or "", eos_token=eos or "")


def chat_cases(smol_tmpl):
    tmpls = [("smollm2", smol_tmpl, None, "<|im_end|>", "chatml"),
             ("qwen25", QWEN25, None, "<|im_end|>", "qwen2.5"),
             ("llama3", LLAMA3, "<|begin_of_text|>", "<|eot_id|>", "llama3"),
             ("llama2", LLAMA2, "<s>", "</s>", "llama2-chat"),
             ("mistral", MISTRAL, "<s>", "</s>", "llama2")]
    out = []
    for name, tmpl, bos, eos, fam in tmpls:
        for cname, msgs in CONVS.items():
            for gen in (False, True):
                if fam in ("llama2", "llama2-chat") and gen:
                    continue  # these templates ignore add_generation_prompt
                if fam == "llama2" and msgs and (msgs[0]["role"] == "system" or
                                        msgs[-1]["role"] == "assistant" and gen):
                    continue
                try:
                    exp = render(tmpl, msgs, gen, bos, eos)
                except jinja2.exceptions.TemplateError:
                    continue
                out.append({"template_name": name, "family": fam,
                            "bos_token": bos, "eos_token": eos, "conversation": cname,
                            "messages": msgs, "add_generation_prompt": gen, "expected": exp})
    return {"templates": {name: tmpl for name, tmpl, _, _, _ in tmpls}, "cases": out}


def save(name, tok, cfg):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"), pretty=False)
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)
    with open(os.path.join(OUT, "cases_%s.json" % name), "w", encoding="utf-8") as f:
        json.dump(cases_for(name, tok), f, ensure_ascii=False, separators=(",", ":"))


def main():
    global OUT
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--out", default=OUT, help="fixture directory (default: the committed one)")
    ap.add_argument("--random", type=int, default=60, help="random strings per tokenizer")
    ap.add_argument("--random-kind", choices=["edge", "unicode"], default="edge")
    ap.add_argument("--random-max-len", type=int, default=14)
    args = ap.parse_args()
    OUT = args.out
    RANDOM.update(n=args.random, kind=args.random_kind, max_len=args.random_max_len)
    os.makedirs(OUT, exist_ok=True)
    smol, smol_cfg = build_smollm2(args.gguf)
    save("smollm2", smol, smol_cfg)
    for name, fn in [("gpt2", build_gpt2), ("llama3", build_llama3), ("qwen2", build_qwen2),
                     ("llama2", lambda: build_spm("llama2")),
                     ("spmunk", lambda: build_spm("spmunk")),
                     ("metaspace", lambda: build_spm("metaspace")), ("added", build_added),
                     ("spm", build_spm_gguf), ("metaspace_split", build_metaspace_split),
                     ("splits", build_splits)]:
        tok, cfg = fn()
        save(name, tok, cfg)
        if name == "gpt2":
            write_bpe_gguf(name, tok, "gpt-2", False, eos="<|endoftext|>")
        elif name == "llama3":
            write_bpe_gguf(name, tok, "llama-bpe", True, bos="<|begin_of_text|>", eos="<|eot_id|>")
        elif name == "qwen2":
            write_bpe_gguf(name, tok, "qwen2", False, eos="<|im_end|>")
    with open(os.path.join(OUT, "chat.json"), "w", encoding="utf-8") as f:
        json.dump(chat_cases(smol_cfg["chat_template"]), f, ensure_ascii=False, indent=0,
                  separators=(",", ":"))
    # Spot checks quoted in TOKENIZER.md that hold for the real SmolLM2 vocabulary.
    assert smol.encode("<|im_start|>user\nhi<|im_end|>").ids[0] == 1
    print("wrote", OUT, file=sys.stderr)


if __name__ == "__main__":
    main()
