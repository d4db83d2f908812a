#!/usr/bin/env python3
"""Generates the file-format fixtures under tests/fixtures/formats/ (owner: fmt).

Everything here is written by the reference Python packages (safetensors, gguf, transformers),
never by quiver, and the expected values in the *.json files come from those packages too:

  roundtrip.safetensors + roundtrip.st.json    F32/F16/BF16/scalar/empty tensors, __metadata__
  roundtrip.gguf + roundtrip.gguf.json         every KV type, F32/F16/Q8_0/Q4_1 tensors
                                               (expected values = gguf.quants.dequantize)
  quants.gguf + quants.gguf.json               one tensor per block type (Q4_0 ... IQ4_XS) of
                                               random block bytes with sane f16 scales
                                               (expected values = gguf.quants.dequantize)
  llama_tied/        HF LlamaForCausalLM, GQA 4/2, tied embeddings, F32, one safetensors file
  llama_tied.f32.gguf, llama_tied.q8_0.gguf   the same model converted the llama.cpp way
                                               (q/k rows permuted, no output.weight)
  llama_bias/        attention_bias + mlp_bias, untied, llama3 rope_scaling, BF16, 2 shards
  llama_bias.f16.gguf                         with permuted q/k biases and rope_freqs.weight
  qwen2_tiny/        Qwen2ForCausalLM (q/k/v bias), tied, F16
  qwen2_tiny.q4_1.gguf                        qwen2 arch: not permuted
  mistral_tiny/      MistralForCausalLM with sliding_window 32, F32
  <model>.expect.json  config facts, HF rotary inv_freq, and for the quantized GGUFs the
                       expected HF-order bytes of layer-0 q/k (quantize(HF rows), hex)

Run:  /work/venv-oracle/bin/python tests/oracle/gen_formats_fixtures.py
Deterministic (fixed seeds); re-running reproduces the same bytes.
"""
import json
import math
import os
import shutil

import numpy as np
import torch
import gguf
from gguf.quants import quantize, dequantize
from gguf import GGMLQuantizationType as QT
from safetensors.torch import save_file as st_save_torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "formats")


def f32list(a):
    return [float(x) for x in np.asarray(a, dtype=np.float32).reshape(-1)]


# ---------------------------------------------------------------- safetensors round trip
def gen_roundtrip_st():
    g = torch.Generator().manual_seed(1)
    tensors = {
        "a.f32": (torch.arange(15, dtype=torch.float32).reshape(3, 5) * 0.25 - 1.0),
        "b.f16": torch.randn(2, 3, 4, generator=g).to(torch.float16),
        "c.bf16": torch.randn(7, generator=g).to(torch.bfloat16),
        "d.scalar": torch.tensor(3.5, dtype=torch.float32),
        "e.empty": torch.zeros(0, 4, dtype=torch.float32),
        "z.f32": torch.randn(5, 2, generator=g),
    }
    st_save_torch(tensors, os.path.join(OUT, "roundtrip.safetensors"),
                  metadata={"format": "pt", "note": "quiver fixture"})
    exp = {"metadata": {"format": "pt", "note": "quiver fixture"}, "tensors": {}}
    for k, t in tensors.items():
        exp["tensors"][k] = {
            "dtype": {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[t.dtype],
            "shape": list(t.shape),
            "values": f32list(t.float().numpy()),
        }
    with open(os.path.join(OUT, "roundtrip.st.json"), "w") as f:
        json.dump(exp, f, indent=1)


# ---------------------------------------------------------------- GGUF round trip
def gen_roundtrip_gguf():
    rng = np.random.default_rng(2)
    w = gguf.GGUFWriter(os.path.join(OUT, "roundtrip.gguf"), "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 0.15625)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo wörld")
    w.add_uint64("t.u64", 2 ** 40 + 3)
    w.add_int64("t.i64", -(2 ** 40) - 5)
    w.add_float64("t.f64", 1.0 / 3.0)
    w.add_array("t.arr_i32", [1, -2, 3, 100000])
    w.add_array("t.arr_str", ["a", "", "Ġthe", "<|im_end|>"])
    w.add_array("t.arr_f32", [0.5, -1.25, 3.0])
    a = (np.arange(24, dtype=np.float32).reshape(6, 4) - 12.0) / 8.0
    b = rng.standard_normal(32).astype(np.float16)
    c = rng.standard_normal((2, 64)).astype(np.float32)
    d = rng.standard_normal((3, 32)).astype(np.float32)
    cq = quantize(c, QT.Q8_0)
    dq = quantize(d, QT.Q4_1)
    w.add_tensor("a.f32", a)
    w.add_tensor("b.f16", b)
    w.add_tensor("c.q8_0", cq, raw_dtype=QT.Q8_0)
    w.add_tensor("d.q4_1", dq, raw_dtype=QT.Q4_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    exp = {
        "kv": {"t.u8": 200, "t.i8": -100, "t.u16": 60000, "t.i16": -30000, "t.u32": 4000000000,
               "t.i32": -2000000000, "t.f32": 0.15625, "t.bool": True, "t.str": "héllo wörld",
               "t.u64": 2 ** 40 + 3, "t.i64": -(2 ** 40) - 5, "t.f64": 1.0 / 3.0,
               "t.arr_i32": [1, -2, 3, 100000], "t.arr_str": ["a", "", "Ġthe", "<|im_end|>"],
               "t.arr_f32": [0.5, -1.25, 3.0]},
        "tensors": {
            "a.f32": {"type": "F32", "ne": [4, 6], "values": f32list(a)},
            "b.f16": {"type": "F16", "ne": [32], "values": f32list(b.astype(np.float32))},
            "c.q8_0": {"type": "Q8_0", "ne": [64, 2], "values": f32list(dequantize(cq, QT.Q8_0))},
            "d.q4_1": {"type": "Q4_1", "ne": [32, 3], "values": f32list(dequantize(dq, QT.Q4_1))},
        },
    }
    with open(os.path.join(OUT, "roundtrip.gguf.json"), "w") as f:
        json.dump(exp, f, indent=1, ensure_ascii=False)


# ---------------------------------------------------------------- every block type
# type -> (byte offsets of the block's f16 scale fields, columns per row). Every other byte
# of a block is random: all bit patterns of quants and packed sub-scales are valid.
QUANT_FIELDS = {
    QT.Q4_0: ([0], 64), QT.Q5_0: ([0], 64), QT.Q5_1: ([0, 2], 64), QT.IQ4_NL: ([0], 64),
    QT.Q4_K: ([0, 2], 512), QT.Q5_K: ([0, 2], 512), QT.Q6_K: ([208], 512),
    QT.Q2_K: ([80, 82], 512), QT.Q3_K: ([108], 512), QT.IQ4_XS: ([0], 512),
}


def gen_quants_gguf():
    rng = np.random.default_rng(3)
    w = gguf.GGUFWriter(os.path.join(OUT, "quants.gguf"), "llama")
    tensors = {}
    for qt, (fields, cols) in QUANT_FIELDS.items():
        blk, size = gguf.GGML_QUANT_SIZES[qt]
        rows = 3
        nb = rows * cols // blk
        raw = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
        for off in fields:
            d = (0.001 + 0.02 * rng.random(nb)).astype(np.float16)
            raw[:, off:off + 2] = d.view(np.uint8).reshape(nb, 2)
        raw = raw.reshape(rows, cols // blk * size)
        name = "q." + qt.name.lower()
        w.add_tensor(name, raw, raw_dtype=qt)
        tensors[name] = {"type": qt.name, "ne": [cols, rows],
                         "values": f32list(dequantize(raw, qt))}
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(os.path.join(OUT, "quants.gguf.json"), "w") as f:
        json.dump({"kv": {}, "tensors": tensors}, f, indent=1)


# ---------------------------------------------------------------- HF models -> GGUF
def llama_permute(w, n_head):
    """llama.cpp LlamaModel.permute: rows viewed as (heads, 2, d/2, ...), axes 1 and 2 swapped."""
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


HF_TO_GGUF = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.bias", "attn_output.bias"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("mlp.gate_proj.bias", "ffn_gate.bias"),
    ("mlp.up_proj.bias", "ffn_up.bias"),
    ("mlp.down_proj.bias", "ffn_down.bias"),
]


def write_gguf(model, cfg, path, arch, qtype, file_type, permute, rope_freqs=None, vocab_key=True):
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // nh
    w = gguf.GGUFWriter(path, arch)
    w.add_name("quiver " + os.path.basename(path))
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(hd)
    if vocab_key:
        w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(file_type)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["t%d" % i for i in range(cfg.vocab_size)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)

    def add(name, arr, quant):
        arr = np.ascontiguousarray(arr.astype(np.float32))
        if arr.ndim == 1 or not quant:
            if arr.ndim == 2 and qtype == QT.F16:
                w.add_tensor(name, arr.astype(np.float16))
            else:
                w.add_tensor(name, arr)
        else:
            q = quantize(arr, qtype)
            w.add_tensor(name, q, raw_dtype=qtype)

    add("token_embd.weight", sd["model.embed_tokens.weight"], qtype != QT.F32)
    add("output_norm.weight", sd["model.norm.weight"], False)
    if not cfg.tie_word_embeddings:
        add("output.weight", sd["lm_head.weight"], qtype != QT.F32)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, dtype=np.float32))
    for i in range(cfg.num_hidden_layers):
        for hf, gg in HF_TO_GGUF:
            key = "model.layers.%d.%s" % (i, hf)
            if key not in sd:
                continue
            t = sd[key]
            if permute and hf.startswith("self_attn.q_proj"):
                t = llama_permute(t, nh)
            elif permute and hf.startswith("self_attn.k_proj"):
                t = llama_permute(t, nkv)
            add("blk.%d.%s" % (i, gg), t, qtype != QT.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama3_rope_factors(cfg):
    """The converter's generate_extra_tensors for rope_type llama3."""
    rp = cfg.rope_parameters
    base = rp["rope_theta"]
    dim = cfg.hidden_size // cfg.num_attention_heads
    factor, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
    old = rp["original_max_position_embeddings"]
    low_wl, high_wl = old / lo, old / hi
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    out = []
    for fr in freqs.tolist():
        wl = 2 * math.pi / fr
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(factor)
        else:
            s = (old / wl - lo) / (hi - lo)
            out.append(1.0 / ((1 - s) / factor + s))
    return out


def expect(model, cfg, name, inv, extra=None):
    """inv: the fp32 rotary inv_freq captured right after construction (model.to(bf16/f16)
    would round the buffer too)."""
    inv = inv.detach().float().numpy()
    e = {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_parameters["rope_theta"],
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "inv_freq": f32list(inv),
        "n_params": int(sum(p.numel() for p in model.parameters())),
    }
    if extra:
        e.update(extra)
    with open(os.path.join(OUT, name + ".expect.json"), "w") as f:
        json.dump(e, f, indent=1)


def save_hf(model, cfg, dirname, dtype, **kw):
    d = os.path.join(OUT, dirname)
    shutil.rmtree(d, ignore_errors=True)
    model.to(dtype).save_pretrained(d, safe_serialization=True, **kw)
    model.float()
    return d


def q_hex(arr, qtype):
    return quantize(np.ascontiguousarray(arr.astype(np.float32)), qtype).tobytes().hex()


def gen_llama_tied():
    torch.manual_seed(10)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2)
    m = LlamaForCausalLM(cfg).eval()
    inv = m.model.rotary_emb.inv_freq.clone()
    save_hf(m, cfg, "llama_tied", torch.float32)
    write_gguf(m, cfg, os.path.join(OUT, "llama_tied.f32.gguf"), "llama", QT.F32, 0, True,
               vocab_key=False)
    write_gguf(m, cfg, os.path.join(OUT, "llama_tied.q8_0.gguf"), "llama", QT.Q8_0, 7, True)
    sd = {k: v.detach().float().numpy() for k, v in m.state_dict().items()}
    expect(m, cfg, "llama_tied", inv, {
        "q8_0_wq0_hex": q_hex(sd["model.layers.0.self_attn.q_proj.weight"], QT.Q8_0),
        "q8_0_wk0_hex": q_hex(sd["model.layers.0.self_attn.k_proj.weight"], QT.Q8_0),
        "q8_0_wk1_hex": q_hex(sd["model.layers.1.self_attn.k_proj.weight"], QT.Q8_0),
    })


def gen_llama_bias():
    torch.manual_seed(11)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=1024,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=True,
                      mlp_bias=True, bos_token_id=5, eos_token_id=[6, 7],
                      rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 256})
    m = LlamaForCausalLM(cfg).eval()
    inv = m.model.rotary_emb.inv_freq.clone()
    with torch.no_grad():  # non-zero biases so the permutation is visible
        for n, p in m.named_parameters():
            if n.endswith(".bias"):
                p.copy_(torch.randn_like(p))
    save_hf(m, cfg, "llama_bias", torch.bfloat16, max_shard_size="40KB")
    # the GGUF carries the bf16-rounded weights, like a converter reading the bf16 checkpoint
    m.to(torch.bfloat16).float()
    write_gguf(m, cfg, os.path.join(OUT, "llama_bias.f16.gguf"), "llama", QT.F16, 1, True,
               rope_freqs=llama3_rope_factors(cfg))
    sd = {k: v.detach().float().numpy() for k, v in m.state_dict().items()}
    expect(m, cfg, "llama_bias", inv, {
        "bq0": f32list(sd["model.layers.0.self_attn.q_proj.bias"]),
        "bk0": f32list(sd["model.layers.0.self_attn.k_proj.bias"]),
        "bo1": f32list(sd["model.layers.1.self_attn.o_proj.bias"]),
        "bdown1": f32list(sd["model.layers.1.mlp.down_proj.bias"]),
        "rope_factors": llama3_rope_factors(cfg),
    })


def gen_qwen2():
    torch.manual_seed(12)
    cfg = Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                      bos_token_id=None, eos_token_id=3)
    m = Qwen2ForCausalLM(cfg).eval()
    inv = m.model.rotary_emb.inv_freq.clone()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(".bias"):
                p.copy_(torch.randn_like(p))
    save_hf(m, cfg, "qwen2_tiny", torch.float16)
    m.to(torch.float16).float()
    write_gguf(m, cfg, os.path.join(OUT, "qwen2_tiny.q4_1.gguf"), "qwen2", QT.Q4_1, 3, False)
    sd = {k: v.detach().float().numpy() for k, v in m.state_dict().items()}
    expect(m, cfg, "qwen2_tiny", inv, {
        "bq0": f32list(sd["model.layers.0.self_attn.q_proj.bias"]),
        "q4_1_wq0_hex": q_hex(sd["model.layers.0.self_attn.q_proj.weight"], QT.Q4_1),
        "q4_1_wk0_hex": q_hex(sd["model.layers.0.self_attn.k_proj.weight"], QT.Q4_1),
    })


def gen_mistral():
    torch.manual_seed(13)
    cfg = MistralConfig(vocab_size=32, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                        max_position_embeddings=128, sliding_window=32, rope_theta=10000.0,
                        tie_word_embeddings=False)
    m = MistralForCausalLM(cfg).eval()
    inv = m.model.rotary_emb.inv_freq.clone()
    save_hf(m, cfg, "mistral_tiny", torch.float32)
    expect(m, cfg, "mistral_tiny", inv, {"sliding_window": 32, "head_dim": 8})


def gen_smollm2_facts():
    """Facts of the real SmolLM2 GGUF as the Python gguf reader sees them (skipped when the
    file is absent): every tensor's type and shape, key metadata, and sha256 of layer q/k bytes
    after llama.cpp's inverse permutation (done here with numpy reshapes)."""
    import hashlib
    path = os.path.expanduser("~/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        print("skip smollm2 facts: no", path)
        return
    r = gguf.GGUFReader(path)

    def field(k):
        f = r.fields[k]
        v = f.contents()
        return v

    tensors = {}
    sha = {}
    for t in r.tensors:
        tensors[t.name] = {"type": t.tensor_type.name, "ne": [int(x) for x in t.shape]}
        if t.name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.29.attn_q.weight",
                      "blk.29.attn_k.weight", "blk.0.attn_v.weight"):
            raw = np.asarray(t.data).reshape(int(t.shape[1]), -1)  # rows of quantized bytes
            n_head = 9 if "attn_q" in t.name else 3
            if "attn_v" not in t.name:
                rows, rb = raw.shape
                raw = raw.reshape(n_head, rows // n_head // 2, 2, rb).swapaxes(1, 2).reshape(rows, rb)
            sha[t.name] = hashlib.sha256(np.ascontiguousarray(raw).tobytes()).hexdigest()
    facts = {
        "file_size": os.path.getsize(path),
        "general.architecture": field("general.architecture"),
        "general.file_type": int(field("general.file_type")),
        "tokenizer.ggml.model": field("tokenizer.ggml.model"),
        "tokenizer.ggml.pre": field("tokenizer.ggml.pre"),
        "n_tokens": len(r.fields["tokenizer.ggml.tokens"].data),
        "tensors": tensors,
        "hf_order_sha256": sha,
    }
    with open(os.path.join(OUT, "smollm2.expect.json"), "w") as f:
        json.dump(facts, f, indent=1)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    gen_roundtrip_st()
    gen_roundtrip_gguf()
    gen_quants_gguf()
    gen_llama_tied()
    gen_llama_bias()
    gen_qwen2()
    gen_mistral()
    gen_smollm2_facts()
    print("wrote", OUT)
