#!/usr/bin/env python3
"""Generate golden outputs for quiver's engine tests from the Hugging Face reference.

What:
  * tests/fixtures/golden/<case>.json for every tiny model variant under tests/fixtures/models/
    (each HF directory and each GGUF file): logits at every prompt position, a 32-token greedy
    continuation (no EOS stop), the logits that produced each greedy token, and the top1-top2
    logit gap per step. For a GGUF file the reference is the HF model (fp32, eager attention)
    run on the file's own dequantized values (gguf.quants.dequantize, Q/K un-permuted for the
    llama arch) — never on quiver's output.
  * tests/fixtures/smollm2/: goldens for the real SmolLM2-135M-Instruct Q4_1 GGUF (see
    gen_smollm2 below), when the model file is present (deploy/fetch-model.sh).
What not: does not build or run quiver.
Invariants: deterministic (fixed seeds, fp32, eager attention, 1 thread); floats written with
9 significant digits.

  * tests/fixtures/http/<model>.json for the tiny models that carry a tokenizer (HTTP_MODELS):
    text prompts through the model's tokenizer (with and without BOS), greedy continuations and
    their text, /detokenize vectors (see gen_http).
Usage: python tests/oracle/gen_golden.py [--only tiny|http|smollm2] [--model PATH]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys
import tempfile
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import FIXTURES, GOLDEN, MODELS, SMOLLM2  # noqa: E402

N_GREEDY = 32
PROMPT_LENGTHS = (1, 7, 19)
PROMPT_SEED = 20261128
CHECK_TOL = 2e-5  # KV-cache vs full recompute self-consistency (relative to max |logit|)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# model construction

def load_hf_dir(path: str):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                             attn_implementation="eager")
    m.eval()
    return m


def model_from_config_and_weights(cfg: dict[str, Any], sd: dict[str, np.ndarray]):
    """Instantiate the HF architecture from a classic config dict and load fp32 weights."""
    from transformers import AutoConfig, AutoModelForCausalLM
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f)
        config = AutoConfig.from_pretrained(d)
    m = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    tsd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    if cfg["tie_word_embeddings"]:
        tsd["lm_head.weight"] = tsd["model.embed_tokens.weight"]
    missing, unexpected = m.load_state_dict(tsd, strict=False)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    if cfg["tie_word_embeddings"]:
        m.tie_weights()
        assert torch.equal(m.lm_head.weight, m.model.embed_tokens.weight)
    m.eval()
    return m


def hf_inv_freq(model) -> np.ndarray:
    return model.model.rotary_emb.inv_freq.detach().cpu().numpy().astype(np.float64)


def base_inv_freq(theta: float, head_dim: int) -> np.ndarray:
    return 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))


def load_gguf_reference(path: str):
    """GGUF -> (HF fp32 model on the dequantized values, metadata, tensor types)."""
    meta, tensors = common.read_gguf(path)
    stem = os.path.basename(path).split(".")[0]
    src_dir = os.path.join(MODELS, stem)
    src_cfg = None
    if os.path.isdir(src_dir):
        with open(os.path.join(src_dir, "config.json")) as f:
            src_cfg = json.load(f)
    rope_scaling = None
    if "rope_freqs.weight" in tensors:
        # llama3 scaling: the GGUF has only per-frequency factors; take the parameters from the
        # source config and check that the factors agree with HF's llama3 inv_freq below.
        assert src_cfg is not None and src_cfg.get("rope_scaling"), "rope_freqs without source"
        rope_scaling = src_cfg["rope_scaling"]
    cfg = common.hf_config_from_gguf(meta, tensors, rope_scaling)
    if src_cfg is not None:
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "head_dim",
                  "max_position_embeddings", "tie_word_embeddings", "model_type",
                  "bos_token_id", "eos_token_id"):
            assert cfg[k] == src_cfg[k], (path, k, cfg[k], src_cfg[k])
        for k in ("rms_norm_eps", "rope_theta"):
            assert abs(cfg[k] - src_cfg[k]) <= 1e-6 * abs(src_cfg[k]), (path, k)
        cfg["rms_norm_eps"] = src_cfg["rms_norm_eps"]  # GGUF stores f32; keep the exact value
    sd = common.hf_state_dict_from_gguf(meta, tensors)
    model = model_from_config_and_weights(cfg, sd)
    if "rope_freqs.weight" in tensors:
        rf = tensors["rope_freqs.weight"][1].astype(np.float64)
        ggml_inv = base_inv_freq(cfg["rope_theta"], cfg["head_dim"]) / rf
        hf = hf_inv_freq(model)
        assert np.allclose(ggml_inv, hf, rtol=1e-6, atol=0), (ggml_inv, hf)
        log(f"  rope_freqs {np.round(rf, 4).tolist()} agree with HF llama3 inv_freq")
    # an F32 file must reproduce the safetensors weights bit for bit (validates the permutation)
    if meta.get("general.file_type") == 0 and os.path.isdir(src_dir):
        ref = load_hf_dir(src_dir).state_dict()
        for k, v in sd.items():
            assert np.array_equal(v, ref[k].numpy()), f"{path}: {k} differs from {src_dir}"
        log("  f32 GGUF == safetensors weights (Q/K un-permutation verified)")
    types = sorted({t.name for t, _ in tensors.values()})
    return model, meta, types


# ---------------------------------------------------------------------------------------------
# golden computation

def run_prompt(model, ids: list[int], n_steps: int = N_GREEDY) -> dict[str, Any]:
    """Prompt logits at every position, greedy continuation with the KV cache, and a
    consistency check against a full no-cache recompute."""
    with torch.no_grad():
        inp = torch.tensor([ids], dtype=torch.long)
        out = model(input_ids=inp, use_cache=True)
        prompt_logits = out.logits[0].to(torch.float32).numpy().copy()
        past = out.past_key_values
        cur = prompt_logits[-1]
        greedy: list[int] = []
        step_logits = []
        gaps = []
        for i in range(n_steps):
            step_logits.append(cur.copy())
            order = np.argsort(-cur.astype(np.float64), kind="stable")
            tok = int(order[0])
            gaps.append(float(cur[order[0]]) - float(cur[order[1]]))
            greedy.append(tok)
            if i + 1 == n_steps:
                break
            out = model(input_ids=torch.tensor([[tok]], dtype=torch.long),
                        past_key_values=past, use_cache=True)
            past = out.past_key_values
            cur = out.logits[0, -1].to(torch.float32).numpy().copy()
        # self-check: teacher-forced full recompute of prompt + greedy[:-1] without a cache
        full = torch.tensor([ids + greedy[:-1]], dtype=torch.long)
        ref = model(input_ids=full, use_cache=False).logits[0].to(torch.float32).numpy()
    got = np.concatenate([prompt_logits, np.stack(step_logits[1:])], axis=0)
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(got - ref).max()) / scale
    assert err < CHECK_TOL, f"KV-cache logits disagree with full recompute: {err}"
    return {
        "ids": [int(x) for x in ids],
        "prompt_logits": prompt_logits,
        "greedy": greedy,
        "step_logits": np.stack(step_logits),
        "top2_gap": gaps,
    }


def prompts_for(vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(PROMPT_SEED)
    return [[int(x) for x in rng.integers(0, vocab, n)] for n in PROMPT_LENGTHS]


def write_case(case: str, model_rel: str, model, extra: dict[str, Any]) -> None:
    vocab = int(model.config.vocab_size)
    prompts = [run_prompt(model, ids) for ids in prompts_for(vocab)]
    doc = {"model": model_rel, "vocab": vocab}
    doc.update(extra)
    doc["prompts"] = prompts
    for p in prompts:
        assert p["prompt_logits"].shape == (len(p["ids"]), vocab)
        assert p["step_logits"].shape == (N_GREEDY, vocab)
    os.makedirs(GOLDEN, exist_ok=True)
    out = os.path.join(GOLDEN, case + ".json")
    with open(out, "w") as f:
        f.write(common.dump_json(doc))
    lg = np.concatenate([p["prompt_logits"] for p in prompts])
    mingap = min(min(p["top2_gap"]) for p in prompts)
    log(f"wrote {out}: logits std {lg.std():.2f} range [{lg.min():.2f}, {lg.max():.2f}], "
        f"min top2 gap {mingap:.2e}, greedy0 {prompts[0]['greedy'][:8]}")


def gen_tiny() -> None:
    torch.set_num_threads(1)
    dirs = sorted(d for d in os.listdir(MODELS)
                  if os.path.isfile(os.path.join(MODELS, d, "config.json"))
                  and d not in HTTP_MODELS)
    for d in dirs:
        path = os.path.join(MODELS, d)
        log(f"case {d} (HF directory)")
        model = load_hf_dir(path)
        extra: dict[str, Any] = {"source": "hf"}
        if model.config.model_type == "llama" and getattr(model.config, "rope_parameters", None) \
                and model.config.rope_parameters.get("rope_type") == "llama3":
            sc = model.config.rope_parameters
            want = base_inv_freq(sc["rope_theta"], model.config.head_dim) / \
                common.llama3_rope_factors(sc["rope_theta"], model.config.head_dim, sc)
            assert np.allclose(hf_inv_freq(model), want, rtol=1e-6), "llama3 scaling not applied"
            assert not np.allclose(hf_inv_freq(model),
                                   base_inv_freq(sc["rope_theta"], model.config.head_dim),
                                   rtol=1e-3), "llama3 scaling has no effect"
        write_case(d, f"models/{d}", model, extra)
    for path in sorted(glob.glob(os.path.join(MODELS, "*.gguf"))):
        base = os.path.basename(path)
        case = base[:-len(".gguf")]
        log(f"case {case} (GGUF)")
        model, meta, types = load_gguf_reference(path)
        extra = {"source": "gguf-dequantized", "tensor_types": types,
                 "file_type": int(meta["general.file_type"])}
        write_case(case, f"models/{base}", model, extra)


# ---------------------------------------------------------------------------------------------
# HTTP fixtures: text in, text out through the model's own tokenizer

HTTP_MODELS = {"tiny-llama-bos"}  # no logits goldens: tests/fixtures/http/<name>.json instead
HTTP_PROMPTS = ["Good morning", "The", "We", "Hello world", "caf\u00e9 na\u00efve 42"]
HTTP_STEPS = 8


def greedy_ids(model, ids: list[int], n: int) -> list[int]:
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids + out])).logits[0, -1]
            out.append(int(torch.argmax(logits)))
    return out


def continuation_text(tok, prompt_ids: list[int], gen: list[int]) -> str:
    """What a server streams for `gen` after `prompt_ids`: the decode of the whole sequence
    minus the decode of the prompt (special tokens skipped), as vLLM's detokenizer yields."""
    full = tok.decode(prompt_ids + gen, skip_special_tokens=True)
    head = tok.decode(prompt_ids, skip_special_tokens=True)
    assert full.startswith(head), (full, head)
    return full[len(head):]


def gen_http() -> None:
    """tests/fixtures/http/<model>.json: for each text prompt, the ids of the model's tokenizer
    with and without special tokens (BOS), their vocabulary pieces, an 8-step greedy
    continuation from each (no EOS stop) and its text; and /detokenize vectors."""
    from transformers import AutoTokenizer
    torch.set_num_threads(1)
    out_dir = os.path.join(FIXTURES, "http")
    os.makedirs(out_dir, exist_ok=True)
    for name in sorted(HTTP_MODELS):
        path = os.path.join(MODELS, name)
        model = load_hf_dir(path)
        tok = AutoTokenizer.from_pretrained(path)
        cases = []
        for prompt in HTTP_PROMPTS:
            case: dict[str, Any] = {"prompt": prompt}
            for key, special in (("with_special", True), ("plain", False)):
                ids = tok(prompt, add_special_tokens=special)["input_ids"]
                gen = greedy_ids(model, ids, HTTP_STEPS)
                case[key] = {"ids": ids, "token_strs": tok.convert_ids_to_tokens(ids),
                             "greedy": gen, "greedy_text": continuation_text(tok, ids, gen)}
            assert case["with_special"]["ids"][0] == tok.bos_token_id
            assert case["with_special"]["ids"][1:] == case["plain"]["ids"]
            cases.append(case)
        rng = np.random.default_rng(PROMPT_SEED)
        detok = []
        for ids in ([1, 2], [int(x) for x in rng.integers(3, tok.vocab_size, 12)],
                    cases[0]["with_special"]["ids"] + cases[0]["with_special"]["greedy"]):
            detok.append({"tokens": ids, "text": tok.decode(ids)})
        doc = {"model": f"models/{name}", "bos": tok.bos_token_id, "steps": HTTP_STEPS,
               "vocab": int(model.config.vocab_size), "prompts": cases, "detokenize": detok}
        out = os.path.join(out_dir, name + ".json")
        with open(out, "w") as f:
            f.write(common.dump_json(doc))
        log(f"wrote {out}: " + "; ".join(
            f"{c['prompt']!r} -> {c['with_special']['greedy_text']!r} / "
            f"{c['plain']['greedy_text']!r}" for c in cases))


# ---------------------------------------------------------------------------------------------
# SmolLM2 (real model)

SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_STEP = 8   # step8 logits: the logits that produced greedy[8] (after prompt + greedy[:8])

SMOLLM2_TEXTS = [
    "The capital of France is",
    "def fibonacci(n):",
    None,  # chat-rendered, see smollm2_chat_prompt
    "In 2023, the city had 8,045,311 residents; 12.5% were over 65 and 1 in 4 was under 18.",
    "The history of the printing press begins in the fifteenth century, when Johannes "
    "Gutenberg combined movable metal type, oil-based ink and a wooden screw press. Within a "
    "few decades printing shops had spread across Europe, books became cheaper, and ideas "
    "travelled faster than ever before. Scholars could compare identical copies of a text, "
    "which helped standardize spelling and grammar, while pamphlets carried news and "
    "arguments to readers far from the",
]
SMOLLM2_CHAT = [{"role": "user", "content": "What is the capital of France? Answer briefly."}]


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def smollm2_tokenizer(meta: dict[str, Any]):
    """HF tokenizer rebuilt from the GGUF vocabulary exactly as TOKENIZER.md 9.2 / 2.4 say
    (NOT transformers' gguf conversion)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta["tokenizer.ggml.token_type"])
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    assert all(len(m) == 2 for m in merges)
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate token strings"
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=None, byte_fallback=False,
                     fuse_unk=False, ignore_merges=False)
    tok = Tokenizer(bpe)
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [i for i, t in enumerate(types) if t == 3]
    assert specials == list(range(17)), specials
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i in specials])
    for i in specials:
        assert tok.token_to_id(tokens[i]) == i
    return tok


def smollm2_chat_prompt(template: str) -> str:
    """Render the GGUF's own chat template with jinja2 the way transformers does."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    env.globals["raise_exception"] = raise_exception
    text = env.from_string(template).render(messages=SMOLLM2_CHAT, add_generation_prompt=True,
                                            bos_token="<|im_start|>", eos_token="<|im_end|>")
    want = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
            "Hugging Face<|im_end|>\n<|im_start|>user\n" + SMOLLM2_CHAT[0]["content"] +
            "<|im_end|>\n<|im_start|>assistant\n")
    assert text == want, repr(text)
    return text


def gen_smollm2(model_path: str) -> None:
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(1)  # reproducible reduction order
    sha = sha256_file(model_path)
    assert sha == SMOLLM2_SHA256, f"unexpected model hash {sha}"
    meta, tensors = common.read_gguf(model_path)
    counts: dict[str, int] = {}
    for t, _ in tensors.values():
        counts[t.name] = counts.get(t.name, 0) + 1
    log(f"SmolLM2: file_type {meta['general.file_type']}, tensor types {counts}, "
        f"pre {meta['tokenizer.ggml.pre']}, add_bos {meta.get('tokenizer.ggml.add_bos_token')}, "
        f"bos/eos/unk/pad {meta.get('tokenizer.ggml.bos_token_id')}/"
        f"{meta.get('tokenizer.ggml.eos_token_id')}/{meta.get('tokenizer.ggml.unknown_token_id')}/"
        f"{meta.get('tokenizer.ggml.padding_token_id')}, output.weight "
        f"{'present' if 'output.weight' in tensors else 'absent (tied)'}")

    # reference model: transformers' own GGUF loader (fp32, eager) ...
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(model_path), gguf_file=os.path.basename(model_path),
        dtype=torch.float32, attn_implementation="eager")
    model.eval()
    c = model.config
    log(f"transformers config: rope_theta {c.rope_parameters.get('rope_theta')}, eps "
        f"{c.rms_norm_eps}, tie {c.tie_word_embeddings}, heads {c.num_attention_heads}/"
        f"{c.num_key_value_heads}, head_dim {getattr(c, 'head_dim', None)}, vocab {c.vocab_size}")
    assert c.num_attention_heads == 9 and c.num_key_value_heads == 3 and c.vocab_size == 49152
    assert abs(c.rope_parameters["rope_theta"] - 100000.0) < 1e-3
    assert c.tie_word_embeddings
    # ... checked against our own dequantize + un-permute of every tensor
    ours = common.hf_state_dict_from_gguf(meta, tensors)
    theirs = model.state_dict()
    for k, v in ours.items():
        t = theirs[k].numpy()
        if not np.array_equal(v, t):
            perm_ok = False
            if ".q_proj." in k or ".k_proj." in k:
                heads = 9 if ".q_proj." in k else 3
                perm_ok = np.array_equal(common.permute_rows(v, heads), t)
            raise AssertionError(f"transformers' GGUF weights differ from ours at {k} "
                                 f"(still permuted: {perm_ok})")
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    log("transformers' GGUF load == our dequantize + Q/K un-permute for all "
        f"{len(ours)} tensors")

    tok = smollm2_tokenizer(meta)
    texts = list(SMOLLM2_TEXTS)
    texts[2] = smollm2_chat_prompt(meta["tokenizer.chat_template"])
    os.makedirs(SMOLLM2, exist_ok=True)
    for f in glob.glob(os.path.join(SMOLLM2, "p*.f32")):
        os.remove(f)
    prompts = []
    for i, text in enumerate(texts):
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text, "round trip"
        r = run_prompt(model, ids)
        last = r["prompt_logits"][-1].astype("<f4")
        step = r["step_logits"][SMOLLM2_STEP].astype("<f4")
        last_name, step_name = f"p{i}.f32", f"p{i}.step{SMOLLM2_STEP}.f32"
        last.tofile(os.path.join(SMOLLM2, last_name))
        step.tofile(os.path.join(SMOLLM2, step_name))
        greedy_text = tok.decode(r["greedy"], skip_special_tokens=False)
        prompts.append({
            "text": text, "ids": r["ids"], "greedy": r["greedy"], "greedy_text": greedy_text,
            "top2_gap": r["top2_gap"], "last_logits_file": last_name,
            "step8_logits_file": step_name,
        })
        log(f"p{i}: {len(ids)} ids, greedy {greedy_text!r}, min gap {min(r['top2_gap']):.3g}")
    doc = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "model_sha256": sha,
        "vocab": 49152,
        "reference": "transformers GGUF load (fp32, eager attention), KV-cache greedy, no EOS stop",
        "logits_format": "49152 float32 little-endian per file",
        "step8_note": "step8 logits produced greedy[8], i.e. after prompt + greedy[0:8]",
        "prompts": prompts,
    }
    with open(os.path.join(SMOLLM2, "golden.json"), "w") as f:
        f.write(common.dump_json(doc))
    log(f"wrote {SMOLLM2}/golden.json")


# OpenAI logit_bias / vLLM min_tokens on SmolLM2: HF generate's own processors
# (SequenceBiasLogitsProcessor with one-token sequences, MinNewTokensLengthLogitsProcessor
# with the end-of-generation ids), greedy, stopping at those ids as a server does.

SMOLLM2_EOG_TEXTS = ["<|im_end|>", "<|endoftext|>"]  # TOKENIZER.md: the EOG set of SmolLM2
EDIT_MIN_GAP = 0.01  # each greedy step's top-2 gap (processed scores) must clear this


def gen_smollm2_edits(model_path: str) -> None:
    """tests/fixtures/smollm2/edits.json: greedy continuations under logit_bias / min_tokens,
    with the generated ids, their text, and whether an end-of-generation id ended them."""
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(1)
    assert sha256_file(model_path) == SMOLLM2_SHA256
    meta, _ = common.read_gguf(model_path)
    tok = smollm2_tokenizer(meta)
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(model_path), gguf_file=os.path.basename(model_path),
        dtype=torch.float32, attn_implementation="eager")
    model.eval()
    eog = [tok.token_to_id(t) for t in SMOLLM2_EOG_TEXTS]
    golden = json.load(open(os.path.join(SMOLLM2, "golden.json")))
    g0, g2 = golden["prompts"][0], golden["prompts"][2]

    def tid(text: str) -> int:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert len(ids) == 1, (text, ids)
        return ids[0]

    cases = [
        # the likeliest first token banned (" Paris")
        ("ban_first", 0, {g0["greedy"][0]: -100.0}, 0, 12),
        # pulled towards another city, plus a pushed-down article
        ("pull_london", 0, {tid(" London"): 6.0, tid(" the"): -3.0}, 0, 12),
        # the chat answer ends after a few tokens; min_tokens keeps it going
        ("chat_min", 2, {}, 20, 40),
        # both at once, with a bias on the end-of-turn token itself
        ("chat_min_bias", 2, {tid(" Paris"): -100.0, eog[0]: 2.0}, 12, 40),
    ]
    out = []
    for name, pi, bias, min_tokens, max_new in cases:
        g = golden["prompts"][pi]
        kw: dict[str, Any] = dict(do_sample=False, max_new_tokens=max_new, eos_token_id=eog,
                                  pad_token_id=eog[0], return_dict_in_generate=True,
                                  output_scores=True, top_k=None, top_p=None, temperature=None)
        if bias:
            kw["sequence_bias"] = {(i,): float(b) for i, b in bias.items()}
        if min_tokens:
            kw["min_new_tokens"] = min_tokens
        with torch.no_grad():
            r = model.generate(torch.tensor([g["ids"]]), **kw)
        gen = [int(t) for t in r.sequences[0, len(g["ids"]):]]
        gaps = []
        for sc in r.scores:
            top = torch.topk(sc[0].to(torch.float64), 2).values
            gaps.append(float(top[0] - top[1]))
        assert min(gaps) > EDIT_MIN_GAP, (name, min(gaps))
        eos_end = bool(gen) and gen[-1] in eog
        text_ids = gen[:-1] if eos_end else gen
        text = tok.decode(g["ids"] + text_ids, skip_special_tokens=True)[
            len(tok.decode(g["ids"], skip_special_tokens=True)):]
        out.append({"name": name, "prompt": pi, "logit_bias": {str(k): v for k, v in bias.items()},
                    "min_tokens": min_tokens, "max_tokens": max_new, "ids": gen,
                    "ended_by_eog": eos_end, "text": text, "min_gap": min(gaps)})
        log(f"{name}: {len(gen)} tokens, eog {eos_end}, min gap {min(gaps):.3g}: {text!r}")
    # prompt logprobs (completions echo + logprobs): log-softmax of every prompt position's
    # logits, float64, for the token that follows and the two likeliest
    scoring = []
    for pi in (0, 1, 3, 4):  # p4 has more positions than a step's QV_PROMPT_LP_ROWS (64)
        ids = golden["prompts"][pi]["ids"]
        with torch.no_grad():
            lsm = torch.log_softmax(model(torch.tensor([ids])).logits[0].to(torch.float64), -1)
        rows = []
        for j in range(1, len(ids)):
            top = torch.topk(lsm[j - 1], 2)
            rows.append({"logprob": float(lsm[j - 1, ids[j]]),
                         "top_ids": [int(i) for i in top.indices],
                         "top_logprobs": [float(v) for v in top.values]})
        scoring.append({"prompt": pi, "rows": rows})
        log(f"prompt logprobs p{pi}: {len(rows)} positions, sum {sum(r['logprob'] for r in rows):.4f}")
    doc = {"model": golden["model"], "model_sha256": SMOLLM2_SHA256, "eog": eog,
           "reference": "transformers generate (GGUF load, fp32, eager), greedy, sequence_bias "
                        "/ min_new_tokens, stops at the eog ids; prompt_logprobs: one forward "
                        "pass, log_softmax in float64", "cases": out,
           "prompt_logprobs": scoring}
    with open(os.path.join(SMOLLM2, "edits.json"), "w") as f:
        f.write(common.dump_json(doc))
    log(f"wrote {SMOLLM2}/edits.json")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["tiny", "http", "smollm2", "smollm2-edits"])
    ap.add_argument("--model", default=os.path.join(
        os.environ.get("QUIVER_HOME", os.path.expanduser("~/.cache/quiver")),
        "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = ap.parse_args()
    if args.only in (None, "tiny"):
        gen_tiny()
    if args.only in (None, "http"):
        gen_http()
    if args.only in (None, "smollm2"):
        if not os.path.exists(args.model):
            log(f"{args.model} missing (run deploy/fetch-model.sh); SmolLM2 goldens skipped")
            return 1 if args.only == "smollm2" else 0
        gen_smollm2(args.model)
    if args.only in (None, "smollm2-edits"):
        if not os.path.exists(args.model):
            log(f"{args.model} missing (run deploy/fetch-model.sh); SmolLM2 edits skipped")
            return 1 if args.only == "smollm2-edits" else 0
        gen_smollm2_edits(args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
