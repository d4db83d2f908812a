"""Shared helpers for quiver's oracle scripts (gen_models.py, gen_golden.py).

What: paths, the HF <-> GGUF tensor-name map, the llama.cpp Q/K row permutation (FORMATS.md
3.6), GGUF -> HF state-dict loading (dequantize with gguf.quants, un-permute), simple K-quant
and IQ4 quantizers (gguf-py 0.19 can dequantize them but not quantize them), llama3 rope
factors as llama.cpp's converter computes them, and the golden-JSON float formatting.
What not: no quiver code is imported or run here — everything is the Python reference.
Invariants: deterministic (no global RNG use; callers pass seeded generators).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
MODELS = os.path.join(FIXTURES, "models")
GOLDEN = os.path.join(FIXTURES, "golden")
SMOLLM2 = os.path.join(FIXTURES, "smollm2")


# ---------------------------------------------------------------------------------------------
# Q/K permutation (llama.cpp conversion/llama.py LlamaModel.permute)

def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF layout -> GGUF (llama arch) layout: GGUF_row[h*d + 2j + t] = HF_row[h*d + t*d/2 + j]."""
    shape = w.shape
    d = shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF (llama arch) layout -> HF layout (inverse of permute_rows)."""
    shape = w.shape
    d = shape[0] // n_head
    return w.reshape(n_head, d // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Tensor names (FORMATS.md 3.4)

_LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_MAP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def hf_to_gguf_name(name: str) -> str:
    if name in _GLOBAL_MAP:
        return _GLOBAL_MAP[name]
    parts = name.split(".")
    if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers":
        rest = ".".join(parts[3:])
        if rest in _LAYER_MAP:
            return f"blk.{parts[2]}.{_LAYER_MAP[rest]}"
    raise KeyError(f"no GGUF name for HF tensor {name}")


def gguf_to_hf_name(name: str) -> str:
    for k, v in _GLOBAL_MAP.items():
        if v == name:
            return k
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "blk":
        rest = ".".join(parts[2:])
        for k, v in _LAYER_MAP.items():
            if v == rest:
                return f"model.layers.{parts[1]}.{k}"
    raise KeyError(f"no HF name for GGUF tensor {name}")


# ---------------------------------------------------------------------------------------------
# llama3 rope factors exactly as llama.cpp's converter (LlamaModel.generate_extra_tensors)

def llama3_rope_factors(rope_theta: float, head_dim: int, scaling: dict[str, Any]) -> np.ndarray:
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old = float(scaling.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    low_wl = old / low
    high_wl = old / high
    out = []
    for f in freqs.astype(np.float64):
        wl = 2 * math.pi / f
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(factor)
        else:
            s = (old / wl - low) / (high - low)
            out.append(1.0 / ((1.0 - s) / factor + s))
    return np.asarray(out, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# K-quant quantizers (own, simple; validity is what matters — goldens use the dequantized
# values produced by gguf.quants.dequantize, never these functions' idea of the values)

def _f16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float16)


def quantize_q4_k(w: np.ndarray) -> np.ndarray:
    """[rows, cols] f32 (cols % 256 == 0) -> [rows, cols/256*144] uint8 Q4_K blocks."""
    rows, cols = w.shape
    assert cols % 256 == 0
    x = w.astype(np.float32).reshape(-1, 8, 32)  # blocks, sub-blocks, elems
    nb = x.shape[0]
    mn = np.minimum(x.min(axis=2), 0.0)           # llama.cpp clamps the min to <= 0
    mx = x.max(axis=2)
    scale = (mx - mn) / 15.0                      # per sub-block
    minv = -mn                                    # >= 0
    d = _f16(scale.max(axis=1) / 63.0)
    dmin = _f16(minv.max(axis=1) / 63.0)
    d32 = d.astype(np.float32)[:, None]
    dm32 = dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scale / d32), 0).clip(0, 63).astype(np.uint8)
        mq = np.where(dm32 > 0, np.rint(minv / dm32), 0).clip(0, 63).astype(np.uint8)
        eff_s = d32 * sc.astype(np.float32)
        eff_m = dm32 * mq.astype(np.float32)
        q = np.where(eff_s[:, :, None] > 0,
                     np.rint((x + eff_m[:, :, None]) / eff_s[:, :, None]), 0)
    q = q.clip(0, 15).astype(np.uint8)
    scales = np.zeros((nb, 12), dtype=np.uint8)
    for j in range(4):
        scales[:, j] = (sc[:, j] & 63) | ((sc[:, j + 4] >> 4) << 6)
        scales[:, j + 4] = (mq[:, j] & 63) | ((mq[:, j + 4] >> 4) << 6)
        scales[:, j + 8] = (sc[:, j + 4] & 0xF) | ((mq[:, j + 4] & 0xF) << 4)
    qs = np.zeros((nb, 4, 32), dtype=np.uint8)
    for c in range(4):
        qs[:, c, :] = q[:, 2 * c, :] | (q[:, 2 * c + 1, :] << 4)
    out = np.concatenate([
        d.reshape(nb, 1).view(np.uint8),
        dmin.reshape(nb, 1).view(np.uint8),
        scales,
        qs.reshape(nb, 128),
    ], axis=1)
    assert out.shape[1] == 144
    return out.reshape(rows, cols // 256 * 144)


def quantize_q6_k(w: np.ndarray) -> np.ndarray:
    """[rows, cols] f32 (cols % 256 == 0) -> [rows, cols/256*210] uint8 Q6_K blocks."""
    rows, cols = w.shape
    assert cols % 256 == 0
    x = w.astype(np.float32).reshape(-1, 16, 16)
    nb = x.shape[0]
    s = np.abs(x).max(axis=2) / 31.0
    d = _f16(s.max(axis=1) / 127.0)
    d32 = d.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(s / d32), 0).clip(-128, 127).astype(np.int8)
        eff = d32 * sc.astype(np.float32)
        q = np.where(eff[:, :, None] > 0, np.rint(x / eff[:, :, None]), 0)
    q = (q.clip(-32, 31) + 32).astype(np.uint8).reshape(nb, 256)
    ql = np.zeros((nb, 128), dtype=np.uint8)
    qh = np.zeros((nb, 64), dtype=np.uint8)
    for h in range(2):
        y = q[:, 128 * h:128 * h + 128]
        for l in range(32):
            q1, q2, q3, q4 = y[:, l], y[:, l + 32], y[:, l + 64], y[:, l + 96]
            ql[:, 64 * h + l] = (q1 & 0xF) | ((q3 & 0xF) << 4)
            ql[:, 64 * h + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4)
            qh[:, 32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
    out = np.concatenate([ql, qh, sc.view(np.uint8), d.reshape(nb, 1).view(np.uint8)], axis=1)
    assert out.shape[1] == 210
    return out.reshape(rows, cols // 256 * 210)


def _symmetric_scales(s: np.ndarray, top: int):
    """Per-sub-block scales s [blocks, subs] (>= 0) as integers 0..top of an f16 super-scale d
    = max(s) / top. Returns (d as f16 [blocks], the integer scales [blocks, subs] int32, and
    the effective scales d * sc as f32 [blocks, subs, 1])."""
    d = _f16(s.max(axis=1) / float(top))
    d32 = d.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(s / d32), 0).clip(0, top).astype(np.int32)
    return d, sc, (d32 * sc.astype(np.float32))[:, :, None]


def _pack_k4_scales(sc: np.ndarray, mq: np.ndarray) -> np.ndarray:
    """8 six-bit scales and 8 six-bit mins per block -> the 12 packed bytes of Q4_K/Q5_K."""
    scales = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    for j in range(4):
        scales[:, j] = (sc[:, j] & 63) | ((sc[:, j + 4] >> 4) << 6)
        scales[:, j + 4] = (mq[:, j] & 63) | ((mq[:, j + 4] >> 4) << 6)
        scales[:, j + 8] = (sc[:, j + 4] & 0xF) | ((mq[:, j + 4] & 0xF) << 4)
    return scales


def _affine_levels(x: np.ndarray, levels: int, sub_bits: int):
    """Asymmetric quantization of sub-blocks x [blocks, subs, elems] to 0..levels with a
    non-negative min; sub-block scales/mins quantized to sub_bits against f16 super-scales.
    Returns (d, dmin, sc, mq, q)."""
    top = (1 << sub_bits) - 1
    mn = np.minimum(x.min(axis=2), 0.0)
    scale = (x.max(axis=2) - mn) / levels
    minv = -mn
    d = _f16(scale.max(axis=1) / top)
    dmin = _f16(minv.max(axis=1) / top)
    d32 = d.astype(np.float32)[:, None]
    dm32 = dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scale / d32), 0).clip(0, top).astype(np.uint8)
        mq = np.where(dm32 > 0, np.rint(minv / dm32), 0).clip(0, top).astype(np.uint8)
        eff_s = (d32 * sc.astype(np.float32))[:, :, None]
        eff_m = (dm32 * mq.astype(np.float32))[:, :, None]
        q = np.where(eff_s > 0, np.rint((x + eff_m) / eff_s), 0)
    return d, dmin, sc, mq, q.clip(0, levels).astype(np.uint8)


def quantize_q5_k(w: np.ndarray) -> np.ndarray:
    """[rows, cols] f32 (cols % 256 == 0) -> Q5_K blocks (176 bytes per 256)."""
    rows, cols = w.shape
    x = w.astype(np.float32).reshape(-1, 8, 32)
    nb = x.shape[0]
    d, dmin, sc, mq, q = _affine_levels(x, 31, 6)
    qh = np.zeros((nb, 32), dtype=np.uint8)
    qs = np.zeros((nb, 4, 32), dtype=np.uint8)
    for s in range(8):
        qh |= ((q[:, s, :] >> 4) & 1) << s
    for c in range(4):
        qs[:, c, :] = (q[:, 2 * c, :] & 0xF) | ((q[:, 2 * c + 1, :] & 0xF) << 4)
    out = np.concatenate([d.reshape(nb, 1).view(np.uint8), dmin.reshape(nb, 1).view(np.uint8),
                          _pack_k4_scales(sc, mq), qh, qs.reshape(nb, 128)], axis=1)
    assert out.shape[1] == 176
    return out.reshape(rows, cols // 256 * 176)


def quantize_q2_k(w: np.ndarray) -> np.ndarray:
    """[rows, cols] f32 (cols % 256 == 0) -> Q2_K blocks (84 bytes per 256)."""
    rows, cols = w.shape
    x = w.astype(np.float32).reshape(-1, 16, 16)
    nb = x.shape[0]
    d, dmin, sc, mq, q = _affine_levels(x, 3, 4)
    qf = q.reshape(nb, 2, 4, 32)               # element 128h + 32j + l
    qs = np.zeros((nb, 2, 32), dtype=np.uint8)
    for j in range(4):
        qs |= qf[:, :, j, :] << (2 * j)
    out = np.concatenate([sc | (mq << 4), qs.reshape(nb, 64), d.reshape(nb, 1).view(np.uint8),
                          dmin.reshape(nb, 1).view(np.uint8)], axis=1)
    assert out.shape[1] == 84
    return out.reshape(rows, cols // 256 * 84)


def quantize_q3_k(w: np.ndarray) -> np.ndarray:
    """[rows, cols] f32 (cols % 256 == 0) -> Q3_K blocks (110 bytes per 256): q in -4..3."""
    rows, cols = w.shape
    x = w.astype(np.float32).reshape(-1, 16, 16)
    nb = x.shape[0]
    d, sc, eff = _symmetric_scales(np.abs(x).max(axis=2) / 4.0, 31)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(eff > 0, np.rint(x / eff), 0).clip(-4, 3).astype(np.int32) + 4  # 0..7
    q = q.reshape(nb, 8, 32)                   # [4h + j, l]
    hmask = np.zeros((nb, 32), dtype=np.uint8)
    qs = np.zeros((nb, 2, 32), dtype=np.uint8)
    for b in range(8):
        hmask |= ((q[:, b, :] >> 2) << b).astype(np.uint8)
        qs[:, b // 4, :] |= ((q[:, b, :] & 3) << (2 * (b % 4))).astype(np.uint8)
    v = (sc + 32).astype(np.uint8)             # stored 6-bit scales
    scales = np.zeros((nb, 12), dtype=np.uint8)
    for k in range(16):
        scales[:, k % 8] |= (v[:, k] & 0xF) << (4 * (k // 8))
        scales[:, 8 + k % 4] |= (v[:, k] >> 4) << (2 * (k // 4))
    out = np.concatenate([hmask, qs.reshape(nb, 64), scales, d.reshape(nb, 1).view(np.uint8)],
                         axis=1)
    assert out.shape[1] == 110
    return out.reshape(rows, cols // 256 * 110)


IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                      dtype=np.float32)


def _iq4_index(x: np.ndarray, dl: np.ndarray) -> np.ndarray:
    """Nearest IQ4 value index of x [..., 32] for the scales dl [..., 1]."""
    err = np.abs(x[..., None] - dl[..., None] * IQ4_VALUES)
    return err.argmin(axis=-1).astype(np.uint8)


def _iq4_pack(idx: np.ndarray) -> np.ndarray:
    """[..., 32] indices -> [..., 16] bytes (elements 0..15 low nibbles, 16..31 high)."""
    return idx[..., :16] | (idx[..., 16:] << 4)


def quantize_iq4_nl(w: np.ndarray) -> np.ndarray:
    """[rows, cols] f32 (cols % 32 == 0) -> IQ4_NL blocks (18 bytes per 32)."""
    rows, cols = w.shape
    x = w.astype(np.float32).reshape(-1, 32)
    nb = x.shape[0]
    d = _f16(np.abs(x).max(axis=1) / 127.0)
    idx = _iq4_index(x, d.astype(np.float32)[:, None])
    out = np.concatenate([d.reshape(nb, 1).view(np.uint8), _iq4_pack(idx)], axis=1)
    return out.reshape(rows, cols // 32 * 18)


def quantize_iq4_xs(w: np.ndarray) -> np.ndarray:
    """[rows, cols] f32 (cols % 256 == 0) -> IQ4_XS blocks (136 bytes per 256)."""
    rows, cols = w.shape
    x = w.astype(np.float32).reshape(-1, 8, 32)
    nb = x.shape[0]
    d, ls, eff = _symmetric_scales(np.abs(x).max(axis=2) / 127.0, 31)
    idx = _iq4_index(x, eff)
    v = (ls + 32).astype(np.uint16)
    sh = np.zeros(nb, dtype=np.uint16)
    sl = np.zeros((nb, 4), dtype=np.uint8)
    for sb in range(8):
        sh |= (v[:, sb] >> 4) << (2 * sb)
        sl[:, sb // 2] |= ((v[:, sb] & 0xF) << (4 * (sb % 2))).astype(np.uint8)
    out = np.concatenate([d.reshape(nb, 1).view(np.uint8), sh.reshape(nb, 1).view(np.uint8), sl,
                          _iq4_pack(idx).reshape(nb, 128)], axis=1)
    assert out.shape[1] == 136
    return out.reshape(rows, cols // 256 * 136)


OWN_QUANTIZERS = {QT.Q4_K: quantize_q4_k, QT.Q6_K: quantize_q6_k, QT.Q5_K: quantize_q5_k,
                  QT.Q2_K: quantize_q2_k, QT.Q3_K: quantize_q3_k, QT.IQ4_NL: quantize_iq4_nl,
                  QT.IQ4_XS: quantize_iq4_xs}


def quantize(w: np.ndarray, qtype: QT) -> np.ndarray:
    """Quantize a 2-D f32 array the way the GGUF writer expects (byte-shaped for block types)."""
    if qtype in OWN_QUANTIZERS:
        return OWN_QUANTIZERS[qtype](w)
    return gguf.quants.quantize(np.ascontiguousarray(w, dtype=np.float32), qtype)


# ---------------------------------------------------------------------------------------------
# GGUF -> HF

def read_gguf(path: str) -> tuple[dict[str, Any], dict[str, tuple[QT, np.ndarray]]]:
    """Return (metadata dict of scalar/str fields, {name: (type, dequantized f32 [rows, cols] or [n])})."""
    r = gguf.GGUFReader(path)
    meta: dict[str, Any] = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        try:
            meta[k] = f.contents()
        except Exception:  # pragma: no cover - exotic field
            continue
    tensors: dict[str, tuple[QT, np.ndarray]] = {}
    for t in r.tensors:
        qt = QT(t.tensor_type)
        deq = gguf.quants.dequantize(np.asarray(t.data), qt).astype(np.float32)
        # GGUF ne = [cols, rows]; numpy shape is reversed (rows, cols)
        shape = tuple(int(x) for x in reversed(t.shape))
        tensors[t.name] = (qt, deq.reshape(shape))
    return meta, tensors


def hf_config_from_gguf(meta: dict[str, Any], tensors: dict[str, Any],
                        rope_scaling: dict[str, Any] | None) -> dict[str, Any]:
    """Build an HF config dict from GGUF metadata alone (rope_scaling must come from the
    source config when a rope_freqs tensor is present; it is cross-checked by the caller)."""
    arch = meta["general.architecture"]
    a = arch + "."
    n_embd = int(meta[a + "embedding_length"])
    n_head = int(meta[a + "attention.head_count"])
    head_dim = int(meta.get(a + "attention.key_length", n_embd // n_head))
    vocab = int(meta.get(a + "vocab_size", tensors["token_embd.weight"][1].shape[0]))
    cfg: dict[str, Any] = {
        "model_type": {"llama": "llama", "qwen2": "qwen2"}[arch],
        "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]],
        "vocab_size": vocab,
        "hidden_size": n_embd,
        "intermediate_size": int(meta[a + "feed_forward_length"]),
        "num_hidden_layers": int(meta[a + "block_count"]),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(meta.get(a + "attention.head_count_kv", n_head)),
        "head_dim": head_dim,
        "max_position_embeddings": int(meta[a + "context_length"]),
        "rms_norm_eps": float(meta[a + "attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(meta.get(a + "rope.freq_base", 10000.0)),
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
    }
    if arch == "qwen2":
        cfg["use_sliding_window"] = False
        cfg["sliding_window"] = None
    return cfg


def hf_state_dict_from_gguf(meta: dict[str, Any],
                            tensors: dict[str, tuple[QT, np.ndarray]]) -> dict[str, np.ndarray]:
    """Dequantized GGUF tensors -> HF names/layout (llama arch: Q/K rows un-permuted)."""
    arch = meta["general.architecture"]
    n_head = int(meta[arch + ".attention.head_count"])
    n_kv = int(meta.get(arch + ".attention.head_count_kv", n_head))
    sd: dict[str, np.ndarray] = {}
    for name, (_, w) in tensors.items():
        if name == "rope_freqs.weight":
            continue
        hf = gguf_to_hf_name(name)
        if arch == "llama" and (name.endswith("attn_q.weight") or name.endswith("attn_q.bias")):
            w = unpermute_rows(w, n_head)
        elif arch == "llama" and (name.endswith("attn_k.weight") or name.endswith("attn_k.bias")):
            w = unpermute_rows(w, n_kv)
        sd[hf] = np.ascontiguousarray(w, dtype=np.float32)
    return sd


# ---------------------------------------------------------------------------------------------
# JSON with 9 significant digits

def fmt_float(x: float) -> str:
    if not math.isfinite(x):
        raise ValueError(f"non-finite value {x} in a golden")
    s = format(float(x), ".9g")
    return s


def dump_json(obj: Any) -> str:
    """Compact JSON; floats (Python float / numpy floating) with 9 significant digits."""
    def enc(o: Any) -> str:
        if isinstance(o, bool) or o is None:
            return json.dumps(o)
        if isinstance(o, (float, np.floating)):
            return fmt_float(float(o))
        if isinstance(o, (int, np.integer)):
            return str(int(o))
        if isinstance(o, str):
            return json.dumps(o, ensure_ascii=False)
        if isinstance(o, dict):
            return "{" + ",".join(json.dumps(str(k)) + ":" + enc(v) for k, v in o.items()) + "}"
        if isinstance(o, np.ndarray):
            return enc(o.tolist())
        if isinstance(o, (list, tuple)):
            sep = ",\n" if o and isinstance(o[0], (list, tuple, np.ndarray)) else ","
            return "[" + sep.join(enc(v) for v in o) + "]"
        raise TypeError(f"cannot encode {type(o)}")
    return enc(obj) + "\n"
