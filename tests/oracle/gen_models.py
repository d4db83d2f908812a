#!/usr/bin/env python3
"""Generate quiver's tiny random-weight model fixtures under tests/fixtures/models/.

What: builds small Llama-family models with transformers (fp32, seeded weights scaled so logits
vary by a few units), saves them with save_pretrained (safetensors), plus a sharded copy, BF16
and F16 copies, and GGUF files written with the gguf package the way llama.cpp's converter does
(llama arch: Q/K rows permuted; llama3 rope scaling as an F32 rope_freqs tensor; output.weight
omitted when tied; norms/biases F32).
What not: no goldens (gen_golden.py does that), no tokenizer files (the tiny models are tested at
the token-id level), except tiny-llama-bos, which carries the llama2 fixture tokenizer (adds a
BOS) for the HTTP tests of text prompts.
Invariants: deterministic — fixed torch/numpy seeds; running it twice gives identical files
(safetensors and GGUF writers are deterministic for identical tensors).

Usage: python tests/oracle/gen_models.py [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any

import numpy as np
import torch

import gguf
from gguf import GGMLQuantizationType as QT

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import MODELS  # noqa: E402

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

# name -> spec. "hf": written as an HF directory; "gguf": list of GGUF variants.
SPECS: dict[str, dict[str, Any]] = {
    "tiny-llama": dict(model_type="llama", vocab=256, hidden=64, ff=160, layers=2, heads=4,
                       kv=4, head_dim=16, tied=False, theta=10000.0, scaling=None, eps=1e-5,
                       seed=1001, hf=True, gguf=["f32", "f16", "q8_0", "q4_1"]),
    "tiny-llama-gqa": dict(model_type="llama", vocab=288, hidden=64, ff=128, layers=3, heads=8,
                           kv=2, head_dim=16, tied=True, theta=10000.0, scaling=LLAMA3_SCALING,
                           eps=1e-5, seed=1002, hf=True, gguf=["f32", "f16", "q8_0", "q4_1"]),
    "tiny-qwen2": dict(model_type="qwen2", vocab=320, hidden=64, ff=192, layers=2, heads=4,
                       kv=2, head_dim=16, tied=True, theta=1000000.0, scaling=None, eps=1e-6,
                       seed=1003, hf=True, gguf=["f32", "f16", "q8_0", "q4_1"]),
    "tiny-mistral": dict(model_type="mistral", vocab=256, hidden=64, ff=128, layers=2, heads=4,
                         kv=2, head_dim=16, tied=False, theta=10000.0, scaling=None, eps=1e-5,
                         seed=1004, hf=True, gguf=[]),
    # With the llama2 fixture tokenizer (959 pieces, adds BOS): the HTTP tests of BOS handling,
    # /tokenize and /detokenize (tests/fixtures/http/, gen_golden.py gen_http).
    "tiny-llama-bos": dict(model_type="llama", vocab=960, hidden=64, ff=128, layers=2, heads=4,
                           kv=2, head_dim=16, tied=True, theta=10000.0, scaling=None, eps=1e-5,
                           seed=1006, hf=True, gguf=[], tokenizer="llama2"),
    # K-quant model: only the GGUFs are committed (an fp32 HF copy would be ~5 MB). "kmix"
    # holds every other block type (Q2_K, Q3_K, Q5_K, IQ4_NL, IQ4_XS), see KMIX.
    "tiny-llama-k": dict(model_type="llama", vocab=256, hidden=256, ff=512, layers=2, heads=16,
                         kv=4, head_dim=16, tied=False, theta=10000.0, scaling=None, eps=1e-5,
                         seed=1005, hf=False, gguf=["q4_k_m", "kmix"]),
}

OUT_GAIN = 4.0
BOS_ID = 1
EOS_ID = 2
MAX_POS = 256

FILE_TYPE = {"f32": 0, "f16": 1, "q4_1": 3, "q8_0": 7, "q4_k_m": 15, "kmix": 17}

# The "kmix" variant: each of these block types on several kinds of tensor (layer 0 / layer 1),
# so one small file runs every one of them through embedding lookups and the matmuls.
KMIX = {
    "token_embd.weight": QT.IQ4_NL, "output.weight": QT.IQ4_XS,
    "attn_q": (QT.Q2_K, QT.IQ4_NL), "attn_k": (QT.Q3_K, QT.Q5_K), "attn_v": (QT.Q5_K, QT.Q2_K),
    "attn_output": (QT.IQ4_XS, QT.Q3_K), "ffn_gate": (QT.Q5_K, QT.Q2_K),
    "ffn_up": (QT.Q3_K, QT.IQ4_XS), "ffn_down": (QT.Q2_K, QT.Q5_K),
}


def build_config(spec: dict[str, Any]):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config
    common_kw = dict(
        vocab_size=spec["vocab"], hidden_size=spec["hidden"], intermediate_size=spec["ff"],
        num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
        num_key_value_heads=spec["kv"], head_dim=spec["head_dim"],
        max_position_embeddings=MAX_POS, rms_norm_eps=spec["eps"],
        tie_word_embeddings=spec["tied"], bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        pad_token_id=None, hidden_act="silu",
    )
    rope = {"rope_type": "default", "rope_theta": spec["theta"]}
    if spec["scaling"] is not None:
        rope = dict(spec["scaling"], rope_theta=spec["theta"])
    mt = spec["model_type"]
    if mt == "llama":
        cfg = LlamaConfig(**common_kw, rope_parameters=rope, attention_bias=False, mlp_bias=False)
    elif mt == "qwen2":
        cfg = Qwen2Config(**common_kw, rope_parameters=rope, use_sliding_window=False,
                          sliding_window=None)
    elif mt == "mistral":
        cfg = MistralConfig(**common_kw, rope_parameters=rope, sliding_window=None)
    else:
        raise ValueError(mt)
    return cfg


def init_weights(model: torch.nn.Module, spec: dict[str, Any]) -> None:
    """Seeded, well-conditioned init: logits vary by a few units, attention is not uniform."""
    g = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                p.copy_(0.75 + 0.5 * torch.rand(p.shape, generator=g))
            elif name.endswith("embed_tokens.weight") or name == "lm_head.weight":
                p.copy_(0.4 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 2:
                # residual-writing projections get a larger gain so the layers (not the token's
                # own embedding) dominate the final state: with tied embeddings a small gain
                # makes greedy decoding repeat the last token forever.
                fan_in = p.shape[1]
                gain = OUT_GAIN if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
                p.copy_(gain * torch.randn(p.shape, generator=g) / (fan_in ** 0.5))
            else:
                raise ValueError(f"unexpected parameter {name}")


def rewrite_config(path: str, classic: bool) -> None:
    """transformers 5 writes rope_parameters; real checkpoints mostly carry the classic
    rope_theta + rope_scaling keys (FORMATS.md 2.1). classic=True converts to those."""
    with open(path) as f:
        cfg = json.load(f)
    if classic:
        rp = cfg.pop("rope_parameters")
        cfg["rope_theta"] = rp["rope_theta"]
        scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
        cfg["rope_scaling"] = None if scaling.get("rope_type") == "default" else scaling
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def state_dict_np(model: torch.nn.Module) -> dict[str, np.ndarray]:
    sd = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        sd[k] = v.detach().to(torch.float32).cpu().numpy().copy()
    return sd


def tensor_type(variant: str, gname: str, ndim: int) -> QT:
    if ndim == 1:
        return QT.F32
    if variant == "f32":
        return QT.F32
    if variant == "f16":
        return QT.F16
    if variant == "q8_0":
        return QT.Q8_0
    if variant == "q4_1":
        # like the real SmolLM2 Q4_1 file: token_embd (and an untied output) stay Q8_0
        if gname in ("token_embd.weight", "output.weight"):
            return QT.Q8_0
        return QT.Q4_1
    if variant == "kmix":
        if gname in KMIX:
            return KMIX[gname]
        layer, kind = gname.split(".")[1], gname.split(".")[2]   # blk.<i>.<kind>.weight
        return KMIX[kind][int(layer) % 2]
    if variant == "q4_k_m":
        if ".attn_" in gname:
            return QT.Q4_K
        if gname.endswith("ffn_down.weight"):
            return QT.Q6_K
        return QT.Q8_0
    raise ValueError(variant)


def write_gguf(path: str, name: str, spec: dict[str, Any], sd: dict[str, np.ndarray],
               variant: str) -> None:
    mt = spec["model_type"]
    arch = "qwen2" if mt == "qwen2" else "llama"   # mistral converts as llama (not written here)
    w = gguf.GGUFWriter(path, arch)
    w.add_type("model")
    w.add_name(name)
    w.add_context_length(MAX_POS)
    w.add_embedding_length(spec["hidden"])
    w.add_block_count(spec["layers"])
    w.add_feed_forward_length(spec["ff"])
    w.add_head_count(spec["heads"])
    w.add_head_count_kv(spec["kv"])
    w.add_layer_norm_rms_eps(spec["eps"])
    w.add_rope_freq_base(spec["theta"])
    w.add_rope_dimension_count(spec["head_dim"])
    if spec["head_dim"] != spec["hidden"] // spec["heads"]:
        w.add_key_length(spec["head_dim"])
        w.add_value_length(spec["head_dim"])
    w.add_vocab_size(spec["vocab"])
    w.add_file_type(FILE_TYPE[variant])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)

    if spec["scaling"] is not None and spec["scaling"]["rope_type"] == "llama3":
        rf = common.llama3_rope_factors(spec["theta"], spec["head_dim"], spec["scaling"])
        w.add_tensor("rope_freqs.weight", rf)

    order = ["model.embed_tokens.weight"]
    for i in range(spec["layers"]):
        for suffix in ("input_layernorm.weight", "self_attn.q_proj.weight",
                       "self_attn.q_proj.bias", "self_attn.k_proj.weight",
                       "self_attn.k_proj.bias", "self_attn.v_proj.weight",
                       "self_attn.v_proj.bias", "self_attn.o_proj.weight",
                       "post_attention_layernorm.weight", "mlp.gate_proj.weight",
                       "mlp.up_proj.weight", "mlp.down_proj.weight"):
            k = f"model.layers.{i}.{suffix}"
            if k in sd:
                order.append(k)
    order += ["model.norm.weight"]
    if not spec["tied"]:
        order.append("lm_head.weight")
    assert set(order) == set(sd.keys()), set(sd.keys()) ^ set(order)

    for k in order:
        t = sd[k]
        g = common.hf_to_gguf_name(k)
        if arch == "llama" and ".attn_q." in g:
            t = common.permute_rows(t, spec["heads"])
        elif arch == "llama" and ".attn_k." in g:
            t = common.permute_rows(t, spec["kv"])
        qt = tensor_type(variant, g, t.ndim)
        if qt == QT.F32:
            w.add_tensor(g, np.ascontiguousarray(t, dtype=np.float32))
        elif qt == QT.F16:
            w.add_tensor(g, np.ascontiguousarray(t, dtype=np.float16))
        else:
            w.add_tensor(g, common.quantize(t, qt), raw_dtype=qt)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    verify_gguf(path, spec, sd, variant, order)


def verify_gguf(path: str, spec: dict[str, Any], sd: dict[str, np.ndarray], variant: str,
                order: list[str]) -> None:
    """Re-read the file with gguf's reader: keys, tensor names/types/shapes, alignment."""
    r = gguf.GGUFReader(path)
    arch = r.fields["general.architecture"].contents()
    want = {
        f"{arch}.context_length": MAX_POS, f"{arch}.embedding_length": spec["hidden"],
        f"{arch}.block_count": spec["layers"], f"{arch}.feed_forward_length": spec["ff"],
        f"{arch}.attention.head_count": spec["heads"],
        f"{arch}.attention.head_count_kv": spec["kv"],
        f"{arch}.rope.dimension_count": spec["head_dim"], f"{arch}.vocab_size": spec["vocab"],
        "general.file_type": FILE_TYPE[variant], "general.quantization_version": 2,
        "tokenizer.ggml.bos_token_id": BOS_ID, "tokenizer.ggml.eos_token_id": EOS_ID,
    }
    for k, v in want.items():
        assert r.fields[k].contents() == v, (path, k, r.fields[k].contents(), v)
    assert abs(r.fields[f"{arch}.rope.freq_base"].contents() - spec["theta"]) < 1e-3
    assert abs(r.fields[f"{arch}.attention.layer_norm_rms_epsilon"].contents()
               - spec["eps"]) < 1e-9
    names = [t.name for t in r.tensors]
    expect = [common.hf_to_gguf_name(k) for k in order]
    if "rope_freqs.weight" in names:
        expect = ["rope_freqs.weight"] + expect
    assert names == expect, (names, expect)
    for t in r.tensors:
        assert t.data_offset % 32 == 0
        if t.name == "rope_freqs.weight":
            assert t.tensor_type == QT.F32 and list(t.shape) == [spec["head_dim"] // 2]
            continue
        hf = sd[common.gguf_to_hf_name(t.name)]
        assert list(t.shape) == list(reversed(hf.shape)), (t.name, t.shape, hf.shape)
        assert t.tensor_type == tensor_type(variant, t.name, hf.ndim), t.name


def save_hf(model, out: str, classic: bool, **kw) -> None:
    if os.path.isdir(out):
        shutil.rmtree(out)
    model.save_pretrained(out, **kw)
    rewrite_config(os.path.join(out, "config.json"), classic)


def check_reload(out: str, ref: dict[str, np.ndarray], rtol: float = 0.0) -> None:
    """Reload with transformers and check weights (and thus the config rewrite) round-trip."""
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    got = state_dict_np(m)
    assert set(got) == set(ref), set(got) ^ set(ref)
    for k in ref:
        if rtol == 0.0:
            assert np.array_equal(got[k], ref[k]), k
        else:
            assert np.allclose(got[k], ref[k], rtol=rtol, atol=0), k


def main() -> int:
    from transformers import AutoModelForCausalLM
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=sorted(SPECS), help="write this model only")
    args = ap.parse_args()
    os.makedirs(MODELS, exist_ok=True)
    torch.manual_seed(0)
    for name, spec in SPECS.items():
        if args.only and name != args.only:
            continue
        cfg = build_config(spec)
        cfg.architectures = [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                              "mistral": "MistralForCausalLM"}[spec["model_type"]]]
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        init_weights(model, spec)
        if spec["tied"]:
            assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        model.eval()
        sd = state_dict_np(model)
        # tiny-mistral keeps transformers 5's native rope_parameters config layout so the
        # loader sees both layouts; the others use the classic rope_theta/rope_scaling keys.
        classic = spec["model_type"] != "mistral"

        if spec["hf"]:
            out = os.path.join(MODELS, name)
            save_hf(model, out, classic)
            check_reload(out, sd)
            if spec.get("tokenizer"):
                src = os.path.join(common.FIXTURES, "tokenizer", spec["tokenizer"])
                for f in ("tokenizer.json", "tokenizer_config.json"):
                    shutil.copyfile(os.path.join(src, f), os.path.join(out, f))
            print(f"wrote {out}")
        if name == "tiny-llama":
            out = os.path.join(MODELS, "tiny-llama-sharded")
            save_hf(model, out, classic, max_shard_size="300KB")
            shards = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
            assert shards == ["model-00001-of-00002.safetensors",
                              "model-00002-of-00002.safetensors"], shards
            assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
            check_reload(out, sd)
            print(f"wrote {out} ({len(shards)} shards)")
        if name == "tiny-llama-gqa":
            for suffix, dt in (("bf16", torch.bfloat16), ("f16", torch.float16)):
                out = os.path.join(MODELS, f"{name}-{suffix}")
                m2 = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
                m2.load_state_dict(model.state_dict())
                m2 = m2.to(dt)
                save_hf(m2, out, classic)
                ref = {k: torch.from_numpy(v).to(dt).to(torch.float32).numpy()
                       for k, v in sd.items()}
                check_reload(out, ref)
                print(f"wrote {out}")
        for variant in spec["gguf"]:
            path = os.path.join(MODELS, f"{name}.{variant}.gguf")
            write_gguf(path, name, spec, sd, variant)
            print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
