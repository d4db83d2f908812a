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

Usage: python tests/oracle/gen_golden.py [--only tiny|smollm2] [--model PATH]
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
                  if os.path.isfile(os.path.join(MODELS, d, "config.json")))
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
# SmolLM2 (real model)

def gen_smollm2(model_path: str) -> None:
    raise NotImplementedError("SmolLM2 goldens: not written yet")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["tiny", "smollm2"])
    ap.add_argument("--model", default=os.path.join(
        os.environ.get("QUIVER_HOME", os.path.expanduser("~/.cache/quiver")),
        "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = ap.parse_args()
    if args.only in (None, "tiny"):
        gen_tiny()
    if args.only in (None, "smollm2"):
        if not os.path.exists(args.model):
            log(f"{args.model} missing (run deploy/fetch-model.sh); SmolLM2 goldens skipped")
            return 1 if args.only == "smollm2" else 0
        gen_smollm2(args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
