#!/usr/bin/env python3
"""make_adapters.py - writes N random, deterministic PEFT LoRA adapters for SmolLM2-135M.

Each adapter is a PEFT directory (adapter_config.json + adapter_model.safetensors, F32 unless
--dtype says F16 or BF16) with
rank-R LoRA on all seven projections of every decoder layer (q, k, v, o, gate, up, down), the
key names and shapes PEFT's save_pretrained writes for LlamaForCausalLM (FORMATS.md 4.1).
Adapter i uses numpy seed `seed + i`, so reruns produce byte-identical files.

The weights are random, not trained: A ~ U(-1/sqrt(in), 1/sqrt(in)) (the scale of PEFT's
kaiming init) and B ~ N(0, b_std), small enough that the model still writes text. They only
exist to load the server with distinct adapters of the real size (9.77 MB of parameters per
adapter at rank 16, BENCH.md 4.2).

Not here: training, other architectures (the shapes are SmolLM2-135M's unless overridden).

Usage: make_adapters.py OUT_DIR [--count 8] [--rank 16] [--alpha 32] [--seed 1234] [--dtype F32]
       prints one "name=dir" line per adapter (the form `quiver serve --preload` takes).
"""
import argparse
import json
import os
import struct

import numpy as np

# SmolLM2-135M (config.json of HuggingFaceTB/SmolLM2-135M-Instruct).
HIDDEN = 576
KV_DIM = 192  # 3 KV heads x head_dim 64
FFN = 1536
LAYERS = 30

# (module path inside a layer, in_features, out_features)
PROJECTIONS = [
    ("self_attn.q_proj", HIDDEN, HIDDEN),
    ("self_attn.k_proj", HIDDEN, KV_DIM),
    ("self_attn.v_proj", HIDDEN, KV_DIM),
    ("self_attn.o_proj", HIDDEN, HIDDEN),
    ("mlp.gate_proj", HIDDEN, FFN),
    ("mlp.up_proj", HIDDEN, FFN),
    ("mlp.down_proj", FFN, HIDDEN),
]


def to_dtype_bytes(arr, dtype):
    """float32 ndarray -> little-endian bytes of F32, F16 or BF16 (round to nearest even)."""
    if dtype == "F32":
        return arr.astype("<f4").tobytes()
    if dtype == "F16":
        return arr.astype("<f2").tobytes()
    bits = arr.astype("<f4").view("<u4").astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # finite inputs only
    return bits.astype("<u2").tobytes()


def write_safetensors(path, tensors, dtype="F32"):
    """Writes {name: float32 ndarray} as a safetensors file of `dtype` (F32, F16, BF16): 8-byte
    LE header length, JSON header padded with spaces to a multiple of 8, then the raw data."""
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    width = 4 if dtype == "F32" else 2
    for name, arr in tensors.items():
        assert arr.dtype == np.float32 and arr.flags["C_CONTIGUOUS"]
        nbytes = arr.size * width
        header[name] = {
            "dtype": dtype,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in tensors.values():
            f.write(to_dtype_bytes(arr, dtype))
    os.replace(tmp, path)


def make_adapter(out_dir, seed, rank, alpha, b_std, layers, dtype="F32"):
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(layers):
        for module, d_in, d_out in PROJECTIONS:
            key = f"base_model.model.model.layers.{layer}.{module}"
            bound = 1.0 / np.sqrt(d_in)
            a = rng.uniform(-bound, bound, size=(rank, d_in)).astype(np.float32)
            b = (rng.standard_normal(size=(d_out, rank)) * b_std).astype(np.float32)
            tensors[key + ".lora_A.weight"] = np.ascontiguousarray(a)
            tensors[key + ".lora_B.weight"] = np.ascontiguousarray(b)
    config = {
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": rank,
        "rank_pattern": {},
        "alpha_pattern": {},
        "target_modules": [m.split(".")[1] for m, _, _ in PROJECTIONS],
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    write_safetensors(os.path.join(out_dir, "adapter_model.safetensors"), tensors, dtype)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--b-std", type=float, default=0.01, help="std of the lora_B entries")
    ap.add_argument("--layers", type=int, default=LAYERS)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--prefix", default="lora", help="adapter names are PREFIX0..PREFIX{N-1}")
    ap.add_argument("--dtype", default="F32", choices=["F32", "F16", "BF16"],
                    help="tensor dtype in the file (PEFT saves F32 by default; BF16 when trained "
                         "in the model's dtype)")
    args = ap.parse_args()
    for i in range(args.count):
        name = f"{args.prefix}{i}"
        d = os.path.join(args.out_dir, name)
        make_adapter(d, args.seed + i, args.rank, args.alpha, args.b_std, args.layers, args.dtype)
        print(f"{name}={d}")


if __name__ == "__main__":
    main()
