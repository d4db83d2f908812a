#!/usr/bin/env python3
"""Cross-check the committed goldens with an independent float64 NumPy forward pass written
from the spec (FORMATS.md), not from transformers.

What: for every tests/fixtures/golden/*.json, reads the model the way quiver's C loaders are
specified to (own safetensors parser incl. shards and BF16/F16; GGUF via gguf.GGUFReader +
gguf.quants.dequantize), runs the FORMATS.md 2.3 forward pass teacher-forced on
prompt + greedy[:-1] and compares with prompt_logits / step_logits.
For llama-arch GGUFs it deliberately keeps the file's permuted Q/K rows and uses ggml's NORM
rope with rope_freqs (FORMATS.md 3.6 strategy B) — so the check validates the permutation and
the rope_freqs tensor independently of the un-permute used to make the goldens.
For the SmolLM2 golden it checks the last-position and step-8 logits the same way (slow: the
whole 135M model in float64, ~1 min).
What not: writes nothing. Exit status 0 = all agree.

Usage: python tests/oracle/check_spec.py [--skip-smollm2]
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import FIXTURES, GOLDEN, SMOLLM2  # noqa: E402

import gguf  # noqa: E402

TOL = 1e-4  # max |diff| / max(1, max |logit|)


# ----------------------------------------------------------------------------- safetensors
def read_safetensors(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    data = buf[8 + n:]
    out = {}
    ends = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = np.frombuffer(data[b:e], dtype=np.uint8)
        dt = info["dtype"]
        if dt == "F32":
            a = raw.view("<f4").astype(np.float64)
        elif dt == "F16":
            a = raw.view("<f2").astype(np.float64)
        elif dt == "BF16":
            a = (raw.view("<u2").astype(np.uint32) << 16).view("<f4").astype(np.float64)
        else:
            raise ValueError(dt)
        out[name] = a.reshape(info["shape"])
        ends.append((b, e))
    ends.sort()
    pos = 0
    for b, e in ends:
        assert b == pos, "gap/overlap"
        pos = e
    assert pos == len(data), "trailing bytes"
    return out


def read_hf_dir(d: str) -> tuple[dict, dict[str, np.ndarray]]:
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    idx = os.path.join(d, "model.safetensors.index.json")
    w: dict[str, np.ndarray] = {}
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        for shard in sorted(set(wm.values())):
            w.update(read_safetensors(os.path.join(d, shard)))
        assert set(w) == set(wm), "index/shard mismatch"
    else:
        w = read_safetensors(os.path.join(d, "model.safetensors"))
    return cfg, w


# ----------------------------------------------------------------------------- model params
class Params:
    pass


def params_from_hf(cfg: dict, w: dict[str, np.ndarray]) -> Params:
    p = Params()
    p.arch = cfg["model_type"]
    p.H = cfg["hidden_size"]
    p.L = cfg["num_hidden_layers"]
    p.nh = cfg["num_attention_heads"]
    p.nkv = cfg.get("num_key_value_heads") or p.nh
    p.d = cfg.get("head_dim") or p.H // p.nh
    p.eps = cfg["rms_norm_eps"]
    rp = cfg.get("rope_parameters")
    if rp is not None:                      # transformers >= 5 layout
        theta = rp["rope_theta"]
        scaling = None if rp.get("rope_type", "default") == "default" else rp
    else:                                   # classic layout
        theta = cfg.get("rope_theta", 10000.0)
        scaling = cfg.get("rope_scaling")
    inv = 1.0 / theta ** (np.arange(0, p.d, 2, dtype=np.float64) / p.d)
    if scaling is not None:
        assert scaling.get("rope_type", scaling.get("type")) == "llama3"
        old = scaling["original_max_position_embeddings"]
        lf, hf, fac = scaling["low_freq_factor"], scaling["high_freq_factor"], scaling["factor"]
        low_wl, high_wl = old / lf, old / hf
        new = []
        for f in inv:
            wl = 2 * math.pi / f
            if wl < high_wl:
                new.append(f)
            elif wl > low_wl:
                new.append(f / fac)
            else:
                s = (old / wl - lf) / (hf - lf)
                new.append((1 - s) * f / fac + s * f)
        inv = np.asarray(new)
    p.inv_freq = inv
    p.rope = "neox"
    p.emb = w["model.embed_tokens.weight"]
    p.out = p.emb if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    p.norm = w["model.norm.weight"]
    p.layers = []
    for i in range(p.L):
        g = lambda s: w.get(f"model.layers.{i}.{s}")  # noqa: E731
        p.layers.append(dict(
            an=g("input_layernorm.weight"), fn=g("post_attention_layernorm.weight"),
            q=g("self_attn.q_proj.weight"), k=g("self_attn.k_proj.weight"),
            v=g("self_attn.v_proj.weight"), o=g("self_attn.o_proj.weight"),
            qb=g("self_attn.q_proj.bias"), kb=g("self_attn.k_proj.bias"),
            vb=g("self_attn.v_proj.bias"),
            gate=g("mlp.gate_proj.weight"), up=g("mlp.up_proj.weight"),
            down=g("mlp.down_proj.weight")))
    return p


def params_from_gguf(path: str) -> Params:
    r = gguf.GGUFReader(path)
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")
          and k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                        "tokenizer.ggml.token_type", "tokenizer.ggml.scores")}
    t = {}
    for ti in r.tensors:
        a = gguf.quants.dequantize(np.asarray(ti.data), gguf.GGMLQuantizationType(ti.tensor_type))
        t[ti.name] = a.astype(np.float64).reshape(tuple(int(x) for x in reversed(ti.shape)))
    arch = kv["general.architecture"]
    a = arch + "."
    p = Params()
    p.arch = arch
    p.H = kv[a + "embedding_length"]
    p.L = kv[a + "block_count"]
    p.nh = kv[a + "attention.head_count"]
    p.nkv = kv.get(a + "attention.head_count_kv", p.nh)
    p.d = kv.get(a + "attention.key_length", p.H // p.nh)
    assert kv[a + "rope.dimension_count"] == p.d
    p.eps = float(kv[a + "attention.layer_norm_rms_epsilon"])
    theta = float(kv.get(a + "rope.freq_base", 10000.0))
    # ggml: theta_i = p * base^(-2i/n_dims) / rope_freqs[i]
    inv = theta ** (-np.arange(0, p.d, 2, dtype=np.float64) / p.d)
    if "rope_freqs.weight" in t:
        inv = inv / t["rope_freqs.weight"]
    p.inv_freq = inv
    p.rope = "norm" if arch == "llama" else "neox"   # llama arch: permuted Q/K kept as is
    p.emb = t["token_embd.weight"]
    p.out = t.get("output.weight", p.emb)
    p.norm = t["output_norm.weight"]
    p.layers = []
    for i in range(p.L):
        g = lambda s: t.get(f"blk.{i}.{s}")  # noqa: E731
        p.layers.append(dict(
            an=g("attn_norm.weight"), fn=g("ffn_norm.weight"), q=g("attn_q.weight"),
            k=g("attn_k.weight"), v=g("attn_v.weight"), o=g("attn_output.weight"),
            qb=g("attn_q.bias"), kb=g("attn_k.bias"), vb=g("attn_v.bias"),
            gate=g("ffn_gate.weight"), up=g("ffn_up.weight"), down=g("ffn_down.weight")))
    return p


# ----------------------------------------------------------------------------- forward
def rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, pos, inv, mode):
    """x [T, heads, d]."""
    ang = pos[:, None] * inv[None, :]            # [T, d/2]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    y = x.copy()
    if mode == "neox":
        h = x.shape[-1] // 2
        x0, x1 = x[..., :h], x[..., h:]
        y[..., :h] = x0 * c - x1 * s
        y[..., h:] = x1 * c + x0 * s
    else:
        x0, x1 = x[..., 0::2], x[..., 1::2]
        y[..., 0::2] = x0 * c - x1 * s
        y[..., 1::2] = x0 * s + x1 * c
    return y


def forward(p: Params, ids: list[int]) -> np.ndarray:
    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    x = p.emb[np.asarray(ids)]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    g = p.nh // p.nkv
    for ly in p.layers:
        a = rmsnorm(x, ly["an"], p.eps)
        q = a @ ly["q"].T + (ly["qb"] if ly["qb"] is not None else 0)
        k = a @ ly["k"].T + (ly["kb"] if ly["kb"] is not None else 0)
        v = a @ ly["v"].T + (ly["vb"] if ly["vb"] is not None else 0)
        q = rope(q.reshape(T, p.nh, p.d), pos, p.inv_freq, p.rope)
        k = rope(k.reshape(T, p.nkv, p.d), pos, p.inv_freq, p.rope)
        v = v.reshape(T, p.nkv, p.d)
        o = np.empty((T, p.nh, p.d))
        for j in range(p.nh):
            s = q[:, j] @ k[:, j // g].T / math.sqrt(p.d) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            o[:, j] = s @ v[:, j // g]
        x = x + o.reshape(T, p.nh * p.d) @ ly["o"].T
        m = rmsnorm(x, ly["fn"], p.eps)
        gt = m @ ly["gate"].T
        x = x + ((gt / (1 + np.exp(-gt))) * (m @ ly["up"].T)) @ ly["down"].T
    return rmsnorm(x, p.norm, p.eps) @ p.out.T


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max()) / max(1.0, float(np.abs(ref).max()))


def check_case(path: str) -> float:
    with open(path) as f:
        doc = json.load(f)
    mpath = os.path.join(FIXTURES, doc["model"])
    if mpath.endswith(".gguf"):
        p = params_from_gguf(mpath)
    else:
        p = params_from_hf(*read_hf_dir(mpath))
    worst = 0.0
    for pr in doc["prompts"]:
        ids = pr["ids"] + pr["greedy"][:-1]
        got = forward(p, ids)
        n = len(pr["ids"])
        ref = np.concatenate([np.asarray(pr["prompt_logits"]),
                              np.asarray(pr["step_logits"])[1:]])
        assert np.array_equal(np.asarray(pr["step_logits"][0]), np.asarray(pr["prompt_logits"][-1]))
        worst = max(worst, rel_err(got, ref))
        assert got.shape[0] == n + len(pr["greedy"]) - 1
    return worst


def check_smollm2() -> float:
    gpath = os.path.join(SMOLLM2, "golden.json")
    with open(gpath) as f:
        doc = json.load(f)
    model = os.path.join(os.environ.get("QUIVER_HOME", os.path.expanduser("~/.cache/quiver")),
                         "models", doc["model"])
    if not os.path.exists(model):
        print(f"skip SmolLM2: {model} missing")
        return 0.0
    p = params_from_gguf(model)
    worst = 0.0
    for pr in doc["prompts"]:
        got = forward(p, pr["ids"] + pr["greedy"][:8])
        last = np.fromfile(os.path.join(SMOLLM2, pr["last_logits_file"]), "<f4")
        step = np.fromfile(os.path.join(SMOLLM2, pr["step8_logits_file"]), "<f4")
        e = max(rel_err(got[len(pr["ids"]) - 1], last), rel_err(got[-1], step))
        print(f"  smollm2 {pr['last_logits_file']}: rel err {e:.2e}")
        worst = max(worst, e)
    return worst


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-smollm2", action="store_true")
    args = ap.parse_args()
    bad = 0
    for path in sorted(glob.glob(os.path.join(GOLDEN, "*.json"))):
        e = check_case(path)
        ok = e < TOL
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {os.path.basename(path)}: max rel err {e:.2e}")
    if not args.skip_smollm2:
        e = check_smollm2()
        ok = e < TOL
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} smollm2: max rel err {e:.2e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
