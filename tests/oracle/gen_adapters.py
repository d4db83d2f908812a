#!/usr/bin/env python3
"""Generate quiver's adapter fixtures and their goldens from the Hugging Face / PEFT reference.

What:
  * tests/fixtures/adapters/<base>/<name>/: PEFT adapters (LoRA variants, DoRA, IA3, prefix
    tuning, prompt tuning, P-tuning, adaption prompt) written by PEFT's own
    `save_pretrained(..., safe_serialization=True)` for the tiny base models, with seeded
    NON-trivial weights (PEFT initialises LoRA B / the adaption gate to zero; every trainable
    tensor is overwritten with random values scaled so each adapter changes the logits by a
    few units without blowing activations up), plus AdapterHub bottleneck adapters (seq_bn,
    double_seq_bn, par_bn) written in the exact AdapterHub layout (FORMATS.md 5.1-5.3).
  * tests/fixtures/adapter_golden/<base>__<name>.json: the golden-JSON format of
    tests/fixtures/golden/ (prompt logits at every REAL prompt position, 32 greedy ids with the
    KV cache and no EOS stop, the logits that produced each greedy id, top1-top2 gaps) plus the
    adapter path, its type and the virtual-token semantics, computed by
    `PeftModel.from_pretrained(base_fp32, path)` (eager attention, fp32, 1 thread).
  * --only smollm2: three adapters for the real SmolLM2-135M-Instruct (fp32 from the GGUF via
    transformers' `gguf_file=`) under tests/fixtures/adapters/smollm2/<name>/ and goldens under
    tests/fixtures/adapter_golden/smollm2/ (golden.json + last-position logits as .f32).
What not: the `adapters` (AdapterHub) library is NOT used: adapters 1.3.0 requires
  transformers ~=4.57 and cannot be installed next to transformers 5.24. The bottleneck
  references are HOOK-BASED: the closed-form equations of FORMATS.md 5.4 applied to the HF model
  through forward hooks, with the weights read back from the written adapter.safetensors.
  Does not build or run quiver.
Invariants: deterministic (seeded torch generators, fp32, 1 thread). Floats in the JSON have
  7 significant digits. Every golden is self-checked: KV-cache greedy logits vs a teacher-forced
  no-cache recompute, step_logits[0] == prompt_logits[-1], greedy == argmax(step_logits), and
  the adapter must move the logits away from the base model's (max |delta| >= 0.5).

Usage: python tests/oracle/gen_adapters.py [--only tiny|smollm2] [--model PATH]
       <side venv>/bin/python tests/oracle/gen_adapters.py --only check-adapterhub
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import FIXTURES, MODELS  # noqa: E402

ADAPTERS = os.path.join(FIXTURES, "adapters")
AGOLDEN = os.path.join(FIXTURES, "adapter_golden")
N_GREEDY = 32
PROMPT_LENGTHS = (5, 13)
PROMPT_SEED = 20261204
CHECK_TOL = 2e-5
SIG_DIGITS = 7


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# JSON with 7 significant digits (same layout as common.dump_json)

def dump_json7(obj: Any) -> str:
    def enc(o: Any) -> str:
        if isinstance(o, bool) or o is None:
            return json.dumps(o)
        if isinstance(o, (float, np.floating)):
            x = float(o)
            if not math.isfinite(x):
                raise ValueError("non-finite value in a golden")
            return format(x, f".{SIG_DIGITS}g")
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


# ---------------------------------------------------------------------------------------------
# models

def load_base(name: str):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(os.path.join(MODELS, name), dtype=torch.float32,
                                             attn_implementation="eager")
    m.eval()
    return m


# ---------------------------------------------------------------------------------------------
# perturbation: overwrite every trainable tensor of a fresh PEFT model with sane random values

def _base_weight(peft_model, lora_a_name: str) -> torch.Tensor:
    mod_path = lora_a_name.rsplit(".lora_A", 1)[0] if ".lora_A" in lora_a_name else \
        lora_a_name.rsplit(".lora_embedding_A", 1)[0]
    mod = peft_model.get_submodule(mod_path)
    return mod.base_layer.weight


def perturb_peft(pm, seed: int, rho: float = 0.3) -> None:
    """Random, non-trivial adapter weights. LoRA: A ~ N(0, 1/in) (embeddings: N(0, 1)),
    B scaled so that s * B A has std rho * std(W); lora_B.bias ~ N(0, 0.2/s); DoRA magnitude
    = PEFT's initial row norms * U(0.75, 1.25); modules_to_save copies = W + N(0, rho*std(W));
    IA3 vectors U(0.5, 1.5); prefix K/V N(0, 1); prompt embeddings N(0, 0.4) (the tiny models'
    token embedding scale); P-tuning encoder Xavier-like (its output is rescaled to std 0.4 at
    the end); adaption prompt N(0, 1) and gates +-U(0.5, 1.0)."""
    g = torch.Generator().manual_seed(seed)

    def randn(shape, std):
        return torch.randn(tuple(shape), generator=g, dtype=torch.float32) * std

    def unif(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(tuple(shape), generator=g, dtype=torch.float32)

    params = dict(pm.named_parameters())
    done: set[str] = set()
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            if not p.requires_grad or name in done:
                continue
            if ".lora_A." in name or name.endswith(".lora_embedding_A.default"):
                emb = "lora_embedding_A" in name
                b_name = name.replace("lora_A", "lora_B") if not emb else \
                    name.replace("lora_embedding_A", "lora_embedding_B")
                pb = params[b_name]
                mod_path = name.split(".lora_")[0]
                mod = pm.get_submodule(mod_path)
                w = mod.base_layer.weight
                r = p.shape[0]
                s = float(mod.scaling["default"])
                sa = 1.0 if emb else 1.0 / math.sqrt(p.shape[1])
                sb = rho * float(w.float().std()) / (s * math.sqrt(r) * sa)
                p.copy_(randn(p.shape, sa))
                pb.copy_(randn(pb.shape, sb))
                done.update({name, b_name})
                bias_name = b_name.replace(".weight", ".bias")
                if bias_name in params:
                    params[bias_name].copy_(randn(params[bias_name].shape, 0.2 / s))
                    done.add(bias_name)
            elif "lora_magnitude_vector" in name:
                continue  # after A/B, below
            elif ".modules_to_save." in name:
                p.add_(randn(p.shape, rho * float(p.float().std())))
                done.add(name)
            elif ".ia3_l." in name:
                p.copy_(unif(p.shape, 0.5, 1.5))
                done.add(name)
            elif name.endswith("adaption_prompt"):
                p.copy_(randn(p.shape, 1.0))
                done.add(name)
            elif name.endswith("adaption_gate"):
                sign = 1.0 if int(name.split(".layers.")[1].split(".")[0]) % 2 == 0 else -1.0
                p.copy_(sign * unif(p.shape, 0.5, 1.0))
                done.add(name)
            elif name.startswith("prompt_encoder."):
                continue  # below
            else:
                raise RuntimeError(f"unhandled trainable parameter {name}")
        # DoRA: PEFT initialises m to the row norms of W + s B A at creation (B was zero then);
        # scale them randomly so m/n != 1 everywhere
        for name in sorted(params):
            if "lora_magnitude_vector" in name:
                params[name].mul_(unif(params[name].shape, 0.75, 1.25))
        # prompt learning
        enc = getattr(pm, "prompt_encoder", None)
        if enc is not None and "default" in enc:
            cfg = pm.peft_config["default"]
            e = enc["default"]
            kind = cfg.peft_type.value
            if kind == "PREFIX_TUNING":
                e.embedding.weight.copy_(randn(e.embedding.weight.shape, 1.0))
            elif kind == "PROMPT_TUNING":
                e.embedding.weight.copy_(randn(e.embedding.weight.shape, 0.4))
            elif kind == "P_TUNING":
                for n2, p2 in sorted(e.named_parameters()):
                    if p2.dim() == 2 and "embedding" not in n2:
                        p2.copy_(randn(p2.shape, 1.0 / math.sqrt(p2.shape[1])))
                    elif p2.dim() == 2:
                        p2.copy_(randn(p2.shape, 1.0))
                    else:
                        p2.copy_(randn(p2.shape, 0.1))
                # rescale the last linear layer so the encoder output has std 0.4
                idx = torch.arange(cfg.num_virtual_tokens)
                out = e(idx)
                last = [m for m in e.modules() if isinstance(m, torch.nn.Linear)][-1]
                k = 0.4 / float(out.std())
                last.weight.mul_(k)
                last.bias.mul_(k)
            else:
                raise RuntimeError(kind)


def cast_adapter_params(pm, dtype: torch.dtype) -> None:
    """Store the adapter's trainable tensors in dtype (so save_pretrained writes BF16/F16)."""
    for _, p in pm.named_parameters():
        if p.requires_grad:
            p.data = p.data.to(dtype)


# ---------------------------------------------------------------------------------------------
# golden computation

def _forward_logits(model, seq: list[int], rows: int) -> np.ndarray:
    t = torch.tensor([seq], dtype=torch.long)
    with torch.no_grad():
        lg = model(input_ids=t, attention_mask=torch.ones_like(t)).logits[0].float()
    assert lg.shape[0] == len(seq) + rows, (lg.shape, len(seq), rows)
    return lg[rows:].numpy().copy()


def generate_logits(model, ids: list[int], n_steps: int) -> tuple[list[int], np.ndarray]:
    """HF generate() with the KV cache (greedy, no EOS stop): (ids, raw logits per step)."""
    from transformers import GenerationConfig
    for holder in (model, getattr(model, "base_model", None)):
        if holder is not None and getattr(holder, "generation_config", None) is not None:
            holder.generation_config.eos_token_id = None  # the model's config names eos 2
    gc = GenerationConfig(max_new_tokens=n_steps, min_new_tokens=0, do_sample=False,
                          eos_token_id=None, pad_token_id=0, bos_token_id=None,
                          output_logits=True, return_dict_in_generate=True)
    inp = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        gen = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp),
                             generation_config=gc)
    seq = gen.sequences[0].tolist()
    assert seq[:len(ids)] == ids and len(seq) == len(ids) + n_steps
    return seq[len(ids):], np.stack([x[0].float().numpy() for x in gen.logits])


def prefix_cache_logits(base, prompt_embeddings: torch.Tensor, n_kv: int, head_dim: int,
                        seq: list[int]) -> np.ndarray:
    """Independent KV-cache path for prefix tuning written from FORMATS.md 4.3: the prefix K/V
    (flat index ((l*2+s)*Hkv+h)*d+i) pre-filled into an HF DynamicCache, real tokens at
    positions nvt.., all-ones mask over prefix + real tokens; the base model (no PEFT)."""
    from transformers import DynamicCache
    nvt = prompt_embeddings.shape[0]
    L = int(base.config.num_hidden_layers)
    x = prompt_embeddings.float().view(nvt, L * 2, n_kv, head_dim).permute(1, 2, 0, 3)
    cache = DynamicCache()
    for layer in range(L):
        cache.update(x[2 * layer][None].clone(), x[2 * layer + 1][None].clone(), layer)
    T = len(seq)
    with torch.no_grad():
        o = base(input_ids=torch.tensor([seq]), past_key_values=cache,
                 attention_mask=torch.ones(1, nvt + T, dtype=torch.long),
                 position_ids=torch.arange(nvt, nvt + T)[None], use_cache=True)
    return o.logits[0].float().numpy()


def run_prompt(model, ids: list[int], rows: int, n_steps: int = N_GREEDY,
               kv_check: str | Callable[[list[int]], np.ndarray] = "generate"
               ) -> dict[str, Any]:
    """Reference run. model: a PeftModel (or a hooked base model). rows: leading logit rows of
    virtual tokens (prompt tuning / P-tuning), dropped.

    Greedy ids and step logits come from full no-cache forwards of the model on
    prompt + greedy[:i] (for PEFT: PeftModel.forward, which prepends the virtual tokens /
    prefix itself). They are cross-checked against a KV-cache path: HF generate() (greedy, no
    EOS) by default, or kv_check(seq) -> logits of seq for prompt learning (PEFT 0.21.2's
    generate() is wrong for prefix and prompt tuning under transformers 5.24, see the README)."""
    T = len(ids)
    prompt_logits = _forward_logits(model, ids, rows)
    greedy: list[int] = []
    step_logits = []
    gaps = []
    cur = prompt_logits[-1]
    for i in range(n_steps):
        step_logits.append(cur)
        order = np.argsort(-cur.astype(np.float64), kind="stable")
        greedy.append(int(order[0]))
        gaps.append(float(cur[order[0]]) - float(cur[order[1]]))
        if i + 1 < n_steps:
            cur = _forward_logits(model, ids + greedy, rows)[-1]
    step = np.stack(step_logits)
    scale = max(1.0, float(np.abs(step).max()))
    if kv_check == "generate":
        g_ids, g_logits = generate_logits(model, ids, n_steps)
        err = float(np.abs(g_logits - step).max()) / scale
        assert err < CHECK_TOL, f"generate() (KV cache) disagrees with the no-cache forward: {err}"
        assert g_ids == greedy, "generate() greedy ids differ"
    elif kv_check is not None:
        ref = kv_check(ids + greedy[:-1])
        got = np.concatenate([prompt_logits, step[1:]], axis=0)
        err = float(np.abs(got - ref).max()) / scale
        assert err < CHECK_TOL, f"independent KV-cache path disagrees: {err}"
    return {"ids": [int(x) for x in ids], "prompt_logits": prompt_logits, "greedy": greedy,
            "step_logits": step, "top2_gap": gaps}


def prompts_for(vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(PROMPT_SEED)
    return [[int(x) for x in rng.integers(3, vocab, n)] for n in PROMPT_LENGTHS]


def base_logits(base_name: str, ids: list[int]) -> np.ndarray:
    m = load_base(base_name)
    with torch.no_grad():
        return m(input_ids=torch.tensor([ids])).logits[0].float().numpy()


# ---------------------------------------------------------------------------------------------
# PEFT adapter specs

def lora(**kw):
    from peft import LoraConfig
    return LoraConfig(task_type="CAUSAL_LM", **kw)


ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_specs() -> list[dict[str, Any]]:
    from peft import (AdaptionPromptConfig, IA3Config, PrefixTuningConfig, PromptEncoderConfig,
                      PromptTuningConfig)
    G = "tiny-llama-gqa"
    return [
        dict(base=G, name="lora_qv_r4", seed=1,
             cfg=lambda: lora(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
        dict(base=G, name="lora_all_r8_rslora", seed=2,
             cfg=lambda: lora(r=8, lora_alpha=16, use_rslora=True, target_modules=ALL7)),
        dict(base=G, name="lora_patterns", seed=3,
             cfg=lambda: lora(r=4, lora_alpha=8, target_modules=ALL7,
                              rank_pattern={"layers.1.self_attn.q_proj": 2, "down_proj": 6,
                                            "model.layers.2.mlp.up_proj": 12},
                              alpha_pattern={"v_proj": 32, "layers.0.self_attn.o_proj": 3})),
        dict(base=G, name="lora_bias", seed=4,
             cfg=lambda: lora(r=4, lora_alpha=4, lora_bias=True,
                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])),
        dict(base=G, name="dora", seed=5,
             cfg=lambda: lora(r=4, lora_alpha=8, use_dora=True,
                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                              "down_proj"])),
        dict(base=G, name="lora_embed_lm_head", seed=6,
             cfg=lambda: lora(r=4, lora_alpha=8, target_modules=["embed_tokens", "lm_head"])),
        dict(base=G, name="lora_mts_lm_head", seed=7,
             cfg=lambda: lora(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                              modules_to_save=["lm_head"])),
        dict(base=G, name="lora_r1_f16", seed=8, dtype=torch.float16,
             cfg=lambda: lora(r=1, lora_alpha=2, target_modules=["q_proj", "k_proj", "v_proj",
                                                                  "o_proj"])),
        dict(base=G, name="lora_r16_mlp_bf16", seed=9, dtype=torch.bfloat16,
             cfg=lambda: lora(r=16, lora_alpha=16, target_modules=["gate_proj", "up_proj",
                                                                   "down_proj"])),
        # F16 on all seven projections at rank 8: quiver keeps these A/B in F16 and runs the
        # 8-output expand groups and the fused q,k,v / gate,up calls on them
        dict(base=G, name="lora_all_r8_f16", seed=20, dtype=torch.float16,
             cfg=lambda: lora(r=8, lora_alpha=16, target_modules=ALL7)),
        # activated LoRA: acts from the last occurrence of [240, 184] in the prompt on (the
        # second golden prompt holds it at position 6; the first lacks it: the base model)
        dict(base=G, name="alora", seed=21,
             cfg=lambda: lora(r=8, lora_alpha=16, target_modules=ALL7,
                              alora_invocation_tokens=[240, 184])),
        dict(base=G, name="ia3", seed=10, cfg=lambda: IA3Config(task_type="CAUSAL_LM")),
        dict(base=G, name="prefix_nvt5", seed=11,
             cfg=lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)),
        dict(base=G, name="prefix_nvt5_bf16", seed=12, dtype=torch.bfloat16,
             cfg=lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)),
        dict(base=G, name="prompt_nvt4", seed=13,
             cfg=lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)),
        dict(base=G, name="ptuning_nvt3", seed=14,
             cfg=lambda: PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=3,
                                             encoder_hidden_size=32)),
        dict(base="tiny-llama", name="adaption_prompt", seed=15,
             cfg=lambda: AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=6,
                                              adapter_layers=2)),
        dict(base="tiny-llama", name="lora_embed_lm_head", seed=16,
             cfg=lambda: lora(r=4, lora_alpha=8, target_modules=["embed_tokens", "lm_head",
                                                                  "q_proj"])),
        dict(base="tiny-llama", name="prefix_nvt5", seed=17,
             cfg=lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)),
        dict(base="tiny-qwen2", name="lora_all_r8", seed=18,
             cfg=lambda: lora(r=8, lora_alpha=16, target_modules=ALL7)),
        dict(base="tiny-mistral", name="lora_qkvo_r4", seed=19,
             cfg=lambda: lora(r=4, lora_alpha=8,
                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])),
    ]


def virtual_info(cfg) -> dict[str, Any]:
    kind = cfg.peft_type.value
    if kind == "PREFIX_TUNING":
        return {"n_virtual": int(cfg.num_virtual_tokens), "position_offset": int(
            cfg.num_virtual_tokens), "virtual_note":
            "prefix K/V occupy KV-cache slots 0..n_virtual-1 (no RoPE on them); real tokens are "
            "at positions n_virtual.. ; no logit rows for the prefix"}
    if kind in ("PROMPT_TUNING", "P_TUNING"):
        return {"n_virtual": int(cfg.num_virtual_tokens), "position_offset": int(
            cfg.num_virtual_tokens), "virtual_note":
            "prompt_embeddings are input embeddings at positions 0..n_virtual-1; real tokens at "
            "positions n_virtual.. ; logits of the virtual positions are NOT recorded "
            "(prompt_logits[i] is real token i)"}
    return {"n_virtual": 0, "position_offset": 0}


def gen_peft_case(spec: dict[str, Any]) -> None:
    from peft import PeftModel, get_peft_model
    base, name = spec["base"], spec["name"]
    out_dir = os.path.join(ADAPTERS, base, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    cfg = spec["cfg"]()
    pm = get_peft_model(load_base(base), cfg)
    pm.peft_config["default"].base_model_name_or_path = base
    perturb_peft(pm, 7000 + spec["seed"])
    if spec.get("dtype") is not None:
        cast_adapter_params(pm, spec["dtype"])
    pm.save_pretrained(out_dir, safe_serialization=True)
    # the written config must name the base by its fixture name only (no absolute path)
    with open(os.path.join(out_dir, "adapter_config.json")) as f:
        saved_cfg = json.load(f)
    assert saved_cfg["base_model_name_or_path"] == base
    readme = os.path.join(out_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)  # PEFT's model-card template, not needed
    del pm

    from safetensors import safe_open
    with safe_open(os.path.join(out_dir, "adapter_model.safetensors"), "pt") as f:
        dtypes = sorted({str(f.get_tensor(k).dtype).replace("torch.", "") for k in f.keys()})
        nkeys = len(list(f.keys()))

    model = PeftModel.from_pretrained(load_base(base), out_dir)
    model.eval()
    vinfo = virtual_info(model.peft_config["default"])
    rows = vinfo["n_virtual"] if saved_cfg["peft_type"] in ("PROMPT_TUNING", "P_TUNING") else 0
    kv_check: Any = "generate"
    if saved_cfg["peft_type"] == "PREFIX_TUNING":
        kv_check = prefix_kv_check(load_base(base), out_dir)
    elif rows:
        kv_check = "prompt"
    write_golden(base, name, model, rows, {
        "adapter": f"adapters/{base}/{name}", "base_model": f"models/{base}",
        "peft_type": saved_cfg["peft_type"], "adapter_dtypes": dtypes,
        "reference": "PEFT 0.21.2 PeftModel.from_pretrained on the fp32 base, transformers "
                     "5.24 eager attention, fp32; greedy by repeated no-cache PeftModel.forward "
                     "(no EOS stop), cross-checked against a KV-cache path",
        "kv_check": {"PREFIX_TUNING": "base model + DynamicCache pre-filled with the prefix "
                                      "(FORMATS.md 4.3), positions from n_virtual",
                     "PROMPT_TUNING": "base model, inputs_embeds prefill + cached decode",
                     "P_TUNING": "base model, inputs_embeds prefill + cached decode"
                     }.get(saved_cfg["peft_type"], "PEFT generate() with the KV cache"),
        **vinfo}, nkeys, kv_check)


def prompt_cache_logits(base, prompt_embeddings: torch.Tensor, n_prompt: int,
                        seq: list[int]) -> np.ndarray:
    """Independent KV-cache path for prompt tuning / P-tuning written from FORMATS.md 4.4: the
    base model (no PEFT) prefilled with inputs_embeds = [prompt_embeddings; E[seq[:n_prompt]]]
    (positions 0..), then the remaining ids one at a time through the cache. Returns the
    logits of the real tokens only."""
    from transformers import DynamicCache
    nvt = prompt_embeddings.shape[0]
    emb = base.get_input_embeddings()
    cache = DynamicCache()
    out = []
    with torch.no_grad():
        x = torch.cat([prompt_embeddings.float(), emb(torch.tensor(seq[:n_prompt]))])[None]
        o = base(inputs_embeds=x, past_key_values=cache, use_cache=True,
                 attention_mask=torch.ones(1, nvt + n_prompt, dtype=torch.long))
        out.append(o.logits[0, nvt:].float())
        for j in range(n_prompt, len(seq)):
            o = base(input_ids=torch.tensor([[seq[j]]]), past_key_values=cache, use_cache=True,
                     attention_mask=torch.ones(1, nvt + j + 1, dtype=torch.long))
            out.append(o.logits[0].float())
    return torch.cat(out).numpy()


def prompt_kv_check(base_model, adapter_dir: str, n_prompt: int):
    from safetensors.torch import load_file
    pe = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))["prompt_embeddings"]
    return lambda seq: prompt_cache_logits(base_model, pe, n_prompt, seq)


def prefix_kv_check(base_model, adapter_dir: str):
    """kv_check callable for a prefix-tuning adapter directory (see prefix_cache_logits)."""
    from safetensors.torch import load_file
    pe = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))["prompt_embeddings"]
    c = base_model.config
    n_kv = int(c.num_key_value_heads)
    hd = int(getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
    return lambda seq: prefix_cache_logits(base_model, pe, n_kv, hd, seq)


def write_golden(base: str, name: str, model, rows: int, extra: dict[str, Any],
                 nkeys: int, kv_check: Any = "generate") -> None:
    vocab = int(load_base(base).config.vocab_size)
    prompts = []
    max_delta = 0.0
    for ids in prompts_for(vocab):
        kv = kv_check
        if kv == "prompt":
            kv = prompt_kv_check(load_base(base), os.path.join(ADAPTERS, base, name), len(ids))
        r = run_prompt(model, ids, rows, kv_check=kv)
        b = base_logits(base, ids)
        r["base_greedy0"] = int(np.argmax(b[-1]))
        max_delta = max(max_delta, float(np.abs(r["prompt_logits"] - b).max()))
        prompts.append(r)
    assert max_delta >= 0.5, f"{base}/{name}: adapter barely changes the logits ({max_delta})"
    doc = {"model": extra.pop("base_model"), "vocab": vocab, "source": "hf"}
    doc.update(extra)
    doc["max_abs_delta_vs_base"] = max_delta
    doc["prompts"] = [{k: p[k] for k in ("ids", "prompt_logits", "greedy", "step_logits",
                                         "top2_gap")} for p in prompts]
    os.makedirs(AGOLDEN, exist_ok=True)
    out = os.path.join(AGOLDEN, f"{base}__{name}.json")
    with open(out, "w") as f:
        f.write(dump_json7(doc))
    lg = np.concatenate([p["prompt_logits"] for p in prompts])
    mingap = min(min(p["top2_gap"]) for p in prompts)
    log(f"{base}/{name}: {nkeys} tensors {extra.get('adapter_dtypes')}, logits std "
        f"{lg.std():.2f} range [{lg.min():.1f}, {lg.max():.1f}], max |delta vs base| "
        f"{max_delta:.2f}, min gap {mingap:.1e}, greedy {prompts[1]['greedy'][:8]}")


# ---------------------------------------------------------------------------------------------
# AdapterHub bottleneck adapters (files written by hand in the library's layout; hook-based
# reference, see the module docstring)

ADAPTERS_VERSION = "adapters.1.3.0"

# BnConfig dataclass fields in adapters 1.3.0 (no "architecture" key: it is a plain class
# attribute of AdapterConfig, so dataclasses.asdict leaves it out — checked with the library)
_BN_DEFAULTS: dict[str, Any] = {
    "original_ln_before": False, "original_ln_after": True,
    "ln_before": False, "ln_after": False, "init_weights": "bert", "init_weights_seed": None,
    "is_parallel": False, "scaling": 1.0, "use_gating": False, "residual_before_ln": True,
    "adapter_residual_before_ln": False, "inv_adapter": None,
    "inv_adapter_reduction_factor": None, "cross_adapter": False, "leave_out": [],
    "dropout": 0.0, "phm_layer": False, "phm_dim": 4, "factorized_phm_W": True,
    "shared_W_phm": False, "shared_phm_rule": True, "factorized_phm_rule": False,
    "phm_c_init": "normal", "phm_init_range": 0.0001, "learn_phm": True,
    "hypercomplex_nonlinearity": "glorot-uniform", "phm_rank": 1, "phm_bias": True,
    "stochastic_depth": 0.0,
}

# SeqBnConfig / DoubleSeqBnConfig / ParBnConfig (adapters 1.3.0 configuration/adapter_config.py)
BN_PRESETS: dict[str, dict[str, Any]] = {
    "seq_bn": {"original_ln_before": True, "original_ln_after": True,
               "residual_before_ln": True, "adapter_residual_before_ln": False,
               "ln_before": False, "ln_after": False, "mh_adapter": False,
               "output_adapter": True, "non_linearity": "relu", "reduction_factor": 16},
    "double_seq_bn": {"original_ln_before": False, "original_ln_after": True,
                      "residual_before_ln": True, "adapter_residual_before_ln": False,
                      "ln_before": False, "ln_after": False, "mh_adapter": True,
                      "output_adapter": True, "non_linearity": "swish",
                      "reduction_factor": 16},
    "par_bn": {"original_ln_before": False, "original_ln_after": True, "ln_before": False,
               "ln_after": False, "mh_adapter": False, "output_adapter": True,
               "non_linearity": "relu", "reduction_factor": 2, "init_weights": "mam_adapter",
               "is_parallel": True, "scaling": 4.0},
}


def bn_config(preset: str) -> dict[str, Any]:
    c = dict(_BN_DEFAULTS)
    c.update(BN_PRESETS[preset])
    return c


def _act(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return {"relu": torch.relu, "swish": torch.nn.functional.silu,
            "silu": torch.nn.functional.silu}[name]


def write_bn_adapter(base: str, preset: str, adapter_name: str, seed: int) -> str:
    from safetensors.torch import save_file
    m = load_base(base)
    H = int(m.config.hidden_size)
    L = int(m.config.num_hidden_layers)
    c = bn_config(preset)
    D = max(1, int(H // c["reduction_factor"]))
    g = torch.Generator().manual_seed(8000 + seed)
    sd: dict[str, torch.Tensor] = {}
    locs = (["attention_adapters"] if c["mh_adapter"] else []) + \
        (["output_adapters"] if c["output_adapter"] else [])
    s = float(c["scaling"])
    for i in range(L):
        if i in c["leave_out"]:
            continue
        for loc in locs:
            p = f"model.layers.{i}.{loc}.adapters.{adapter_name}."
            sd[p + "adapter_down.0.weight"] = torch.randn(D, H, generator=g) / math.sqrt(H)
            sd[p + "adapter_down.0.bias"] = torch.randn(D, generator=g) * 0.1
            sd[p + "adapter_up.weight"] = torch.randn(H, D, generator=g) * (0.6 / s) / \
                math.sqrt(D)
            sd[p + "adapter_up.bias"] = torch.randn(H, generator=g) * 0.05
    out_dir = os.path.join(ADAPTERS, base, preset)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    save_file({k: v.contiguous() for k, v in sorted(sd.items())},
              os.path.join(out_dir, "adapter.safetensors"))
    full = {"config": c, "hidden_size": H, "model_class": type(m).__name__,
            "model_name": base, "model_type": m.config.model_type, "name": adapter_name,
            "version": ADAPTERS_VERSION}
    with open(os.path.join(out_dir, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(full, f, indent=2, sort_keys=True)
    return out_dir


def hooked_bn_model(base: str, out_dir: str):
    """Base HF model + forward hooks applying the FORMATS.md 5.4 closed forms with the weights
    read back from out_dir/adapter.safetensors."""
    from safetensors.torch import load_file
    with open(os.path.join(out_dir, "adapter_config.json")) as f:
        full = json.load(f)
    c, name = full["config"], full["name"]
    assert not (c["ln_before"] or c["ln_after"] or c["use_gating"] or c["inv_adapter"] or
                c["phm_layer"]), "unsupported BnConfig feature in the hook reference"
    sd = load_file(os.path.join(out_dir, "adapter.safetensors"))
    m = load_base(base)
    act = _act(c["non_linearity"])
    s = float(c["scaling"])

    def adapter_delta(prefix: str, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        wd, bd = sd[prefix + "adapter_down.0.weight"], sd[prefix + "adapter_down.0.bias"]
        wu, bu = sd[prefix + "adapter_up.weight"], sd[prefix + "adapter_up.bias"]
        if c["is_parallel"]:
            a = x                                     # ParallelAdapter: input = block residual
        elif c["original_ln_before"]:
            a = h + x                                 # 5.4 step 2 (Llama: no base LN)
        else:
            a = h
        return s * torch.nn.functional.linear(
            act(torch.nn.functional.linear(a, wd, bd)), wu, bu)

    for i, layer in enumerate(m.model.layers):
        state: dict[str, torch.Tensor] = {}

        def pre_layer(mod, args, kwargs, st=state):
            st["x"] = args[0] if args else kwargs["hidden_states"]

        def pre_post_ln(mod, args, st=state):
            st["x1"] = args[0]

        layer.register_forward_pre_hook(pre_layer, with_kwargs=True)
        layer.post_attention_layernorm.register_forward_pre_hook(pre_post_ln)
        pa = f"model.layers.{i}.attention_adapters.adapters.{name}."
        po = f"model.layers.{i}.output_adapters.adapters.{name}."
        if pa + "adapter_up.weight" in sd:
            def attn_hook(mod, args, output, st=state, pa=pa):
                h = output[0]
                return (h + adapter_delta(pa, h, st["x"]),) + tuple(output[1:])
            layer.self_attn.register_forward_hook(attn_hook)
        if po + "adapter_up.weight" in sd:
            def mlp_hook(mod, args, output, st=state, po=po):
                return output + adapter_delta(po, output, st["x1"])
            layer.mlp.register_forward_hook(mlp_hook)
    return m


def gen_bn_case(base: str, preset: str, seed: int) -> None:
    adapter_name = preset
    out_dir = write_bn_adapter(base, preset, adapter_name, seed)
    model = hooked_bn_model(base, out_dir)
    closed = {"seq_bn": "out = x + h + s*Up(relu(Down(h + x))) at the FFN location only",
              "double_seq_bn": "out = x + h + s*Up(silu(Down(h))) at the attention and FFN "
                               "locations",
              "par_bn": "out = x + h + s*Up(relu(Down(x))) at the FFN location (x = residual "
                        "entering the FFN sub-block), s = 4"}[preset]
    write_golden(base, preset, model, 0, {
        "adapter": f"adapters/{base}/{preset}", "base_model": f"models/{base}",
        "peft_type": "ADAPTERHUB_BOTTLENECK", "adapterhub_preset": preset,
        "adapter_dtypes": ["float32"],
        "kv_check": "HF generate() with the KV cache (hooks active)",
        "reference": "HOOK-BASED (not the adapters library, which needs transformers 4.57): "
                     "FORMATS.md 5.4 closed form applied to the transformers 5.24 fp32 model "
                     "via forward hooks: " + closed + ". Cross-checked against the real adapters "
                     "1.3.0 library (transformers 4.57.6, side venv; gen_adapters.py --only "
                     "check-adapterhub): logits agree to 1.1e-5, its save_adapter writes "
                     "identical files", "n_virtual": 0, "position_offset": 0},
        len(list(__import__("safetensors").safe_open(
            os.path.join(out_dir, "adapter.safetensors"), "pt").keys())))


def gen_tiny(only_names: list[str] | None) -> None:
    torch.set_num_threads(1)
    for spec in peft_specs():
        if only_names and spec["name"] not in only_names:
            continue
        gen_peft_case(spec)
    for i, preset in enumerate(("seq_bn", "double_seq_bn", "par_bn")):
        if only_names and preset not in only_names:
            continue
        gen_bn_case("tiny-llama-gqa", preset, 30 + i)


# ---------------------------------------------------------------------------------------------
# SmolLM2 (real model) with three PEFT adapters

SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_GREEDY = 32
SMOLLM2_PREFIX_TEXT = "Answer like a sailor on a ship at sea."


def load_smollm2(model_path: str):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(model_path), gguf_file=os.path.basename(model_path),
        dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def smollm2_specs():
    from peft import IA3Config, PrefixTuningConfig
    layers = list(range(0, 30, 3))
    return [
        # r=8 on all seven projections of every third layer (keeps the BF16 file < 2 MB; also
        # exercises layers without LoRA tensors, config `layers_to_transform`)
        ("lora_r8_all", lambda: lora(r=8, lora_alpha=16, target_modules=ALL7,
                                     layers_to_transform=layers), torch.bfloat16),
        ("prefix_nvt8", lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8),
         None),
        ("ia3", lambda: IA3Config(task_type="CAUSAL_LM"), None),
    ]


def gen_smollm2(model_path: str) -> None:
    from peft import PeftModel, get_peft_model
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gen_golden
    torch.set_num_threads(2)
    assert gen_golden.sha256_file(model_path) == SMOLLM2_SHA256
    meta, _ = common.read_gguf(model_path)
    tok = gen_golden.smollm2_tokenizer(meta)
    texts = [gen_golden.SMOLLM2_TEXTS[0], gen_golden.smollm2_chat_prompt(
        meta["tokenizer.chat_template"])]
    out_g = os.path.join(AGOLDEN, "smollm2")
    shutil.rmtree(out_g, ignore_errors=True)
    os.makedirs(out_g)
    base = load_smollm2(model_path)
    base_runs = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        base_runs.append(run_prompt(base, ids, 0, SMOLLM2_GREEDY))
    # realistic prefix K/V: the (post-RoPE, as cached) keys/values of a real 8-token text
    pids = tok.encode(SMOLLM2_PREFIX_TEXT, add_special_tokens=False).ids[:8]
    assert len(pids) == 8
    with torch.no_grad():
        pkv = base(input_ids=torch.tensor([pids]), use_cache=True).past_key_values
    del base
    cases = []
    for name, mk, dtype in smollm2_specs():
        out_dir = os.path.join(ADAPTERS, "smollm2", name)
        shutil.rmtree(out_dir, ignore_errors=True)
        cfg = mk()
        pm = get_peft_model(load_smollm2(model_path), cfg)
        pm.peft_config["default"].base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
        if cfg.peft_type.value == "PREFIX_TUNING":
            # rows: [nvt, L*2*Hkv*d], flat index ((l*2+s)*Hkv+h)*d+i (FORMATS.md 4.3)
            g = torch.Generator().manual_seed(9100)
            parts = []
            for layer in range(30):
                k = pkv.layers[layer].keys[0] if hasattr(pkv, "layers") else pkv[layer][0][0]
                v = pkv.layers[layer].values[0] if hasattr(pkv, "layers") else pkv[layer][1][0]
                parts += [k, v]                                  # [Hkv, nvt, d] each
            kv = torch.stack(parts)                              # [L*2, Hkv, nvt, d]
            emb = kv.permute(2, 0, 1, 3).reshape(8, -1)
            emb = emb + torch.randn(emb.shape, generator=g) * 0.1 * emb.std()
            with torch.no_grad():
                pm.prompt_encoder["default"].embedding.weight.copy_(emb)
        else:
            perturb_peft(pm, 9000 + len(cases), rho=0.08)
            if name == "ia3":
                with torch.no_grad():
                    for n, p in pm.named_parameters():
                        if ".ia3_l." in n:
                            p.copy_(1.0 + (p - 1.0) * 0.3)  # U(0.85, 1.15)
        if dtype is not None:
            cast_adapter_params(pm, dtype)
        pm.save_pretrained(out_dir, safe_serialization=True)
        readme = os.path.join(out_dir, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        del pm
        model = PeftModel.from_pretrained(load_smollm2(model_path), out_dir)
        model.eval()
        vinfo = virtual_info(model.peft_config["default"])
        kv: Any = "generate"
        if cfg.peft_type.value == "PREFIX_TUNING":
            kv = prefix_kv_check(load_smollm2(model_path), out_dir)
        prompts = []
        for i, text in enumerate(texts):
            ids = tok.encode(text, add_special_tokens=False).ids
            r = run_prompt(model, ids, 0, SMOLLM2_GREEDY, kv_check=kv)
            fn = f"{name}.p{i}.f32"
            r["prompt_logits"][-1].astype("<f4").tofile(os.path.join(out_g, fn))
            prompts.append({
                "text": text, "ids": r["ids"], "greedy": r["greedy"],
                "greedy_text": tok.decode(r["greedy"], skip_special_tokens=False),
                "top2_gap": r["top2_gap"], "last_logits_file": fn,
                "base_greedy": base_runs[i]["greedy"],
                "base_greedy_text": tok.decode(base_runs[i]["greedy"],
                                               skip_special_tokens=False),
                "max_abs_last_delta_vs_base": float(np.abs(
                    r["prompt_logits"][-1] - base_runs[i]["prompt_logits"][-1]).max()),
            })
            log(f"smollm2/{name} p{i}: {prompts[-1]['greedy_text']!r} (base "
                f"{prompts[-1]['base_greedy_text']!r}), min gap {min(r['top2_gap']):.2g}")
        with open(os.path.join(out_dir, "adapter_config.json")) as f:
            ptype = json.load(f)["peft_type"]
        cases.append({"adapter": f"adapters/smollm2/{name}", "peft_type": ptype, **vinfo,
                      "prompts": prompts})
        del model
    doc = {"model": "SmolLM2-135M-Instruct.Q4_1.gguf", "model_sha256": SMOLLM2_SHA256,
           "vocab": 49152,
           "reference": "transformers 5.24 GGUF load (fp32, eager) + PEFT 0.21.2 "
                        "PeftModel.from_pretrained; greedy by repeated no-cache forward (no EOS "
                        "stop), cross-checked against a KV-cache path (generate(); for prefix "
                        "tuning a DynamicCache pre-filled with the prefix)",
           "logits_format": "last prompt position, 49152 float32 little-endian per file",
           "cases": cases}
    with open(os.path.join(out_g, "golden.json"), "w") as f:
        f.write(dump_json7(doc))
    log(f"wrote {out_g}/golden.json")


# ---------------------------------------------------------------------------------------------
# independent check: FORMATS.md section 4 applied to the files as a loader would (no PEFT)

def _pattern_value(patterns: dict[str, Any], key: str, default: Any) -> Any:
    """FORMATS.md 4.1: first key K (JSON order) with re.match(r"(.*\.)?(K)$", key)."""
    import re
    for k, v in patterns.items():
        if re.match(rf"(.*\.)?({k})$", key):
            return v
    return default


def spec_model(base: str, adir: str):
    """The base HF model with every PEFT adapter type of this fixture set applied through
    forward hooks written from FORMATS.md 4.1/4.5/4.6 (LoRA, rsLoRA, patterns, lora_bias,
    DoRA, embedding/lm_head LoRA, modules_to_save, IA3, adaption prompt). Prompt-learning
    types are checked by run_prompt's kv_check paths instead."""
    from safetensors.torch import load_file
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    with open(os.path.join(adir, "adapter_config.json")) as f:
        cfg = json.load(f)
    sd = {k.removeprefix("base_model.model."): v.float()
          for k, v in load_file(os.path.join(adir, "adapter_model.safetensors")).items()}
    if cfg.get("alora_invocation_tokens"):
        return None  # activated LoRA: checked by run_prompt's generate() cross-check instead
    m = load_base(base)
    kind = cfg["peft_type"]
    F = torch.nn.functional
    if kind == "LORA":
        mods = sorted({k.split(".lora_")[0] for k in sd if ".lora_" in k})
        for path in mods:
            mod = m.get_submodule(path)
            emb = path + ".lora_embedding_A" in sd
            A = sd[path + (".lora_embedding_A" if emb else ".lora_A.weight")]
            B = sd[path + (".lora_embedding_B" if emb else ".lora_B.weight")]
            r = A.shape[0]
            assert r == _pattern_value(cfg["rank_pattern"], path, cfg["r"]), (path, r)
            alpha = _pattern_value(cfg["alpha_pattern"], path, cfg["lora_alpha"])
            s = alpha / math.sqrt(r) if cfg["use_rslora"] else alpha / r
            bB = sd.get(path + ".lora_B.bias")
            mag = sd.get(path + ".lora_magnitude_vector")
            if emb:
                def hook(mod, args, out, A=A, B=B, s=s):
                    return out + s * (A.t()[args[0]] @ B.t())
            elif mag is not None:
                W = mod.weight.detach()
                scale = mag / torch.linalg.norm(W + s * (B @ A), dim=1)

                def hook(mod, args, out, A=A, B=B, s=s, scale=scale):
                    x = args[0]
                    b = mod.bias if mod.bias is not None else 0.0
                    return scale * (out - b + s * ((x @ A.t()) @ B.t())) + b
            else:
                def hook(mod, args, out, A=A, B=B, s=s, bB=bB):
                    d = (args[0] @ A.t()) @ B.t()
                    return out + s * (d + bB if bB is not None else d)
            mod.register_forward_hook(hook)
        for k, v in sd.items():
            if k.endswith(".base_layer.weight"):      # embedding side-files: must be redundant
                assert torch.equal(v, m.get_submodule(k[:-len(".base_layer.weight")]).weight)
            elif ".lora_" not in k:                  # modules_to_save: full replacement
                path = k.rsplit(".", 1)[0]
                assert path in (cfg["modules_to_save"] or []) or \
                    path.split(".")[-1] in (cfg["modules_to_save"] or []), k
                m.get_submodule(path).register_forward_hook(
                    lambda mod, args, out, W=v: F.linear(args[0], W))
    elif kind == "IA3":
        for k, v in sd.items():
            path = k.removesuffix(".ia3_l")
            mod = m.get_submodule(path)
            ff = any(path.endswith(x) for x in cfg["feedforward_modules"])
            assert ff == (v.shape[0] == 1), k
            if ff:
                mod.register_forward_pre_hook(lambda mod, args, l=v: (args[0] * l[0],))
            else:
                mod.register_forward_hook(lambda mod, args, out, l=v: out * l[:, 0])
    elif kind == "ADAPTION_PROMPT":
        c = m.config
        nh, d = c.num_attention_heads, c.head_dim
        L = c.num_hidden_layers
        for i in range(L - cfg["adapter_layers"], L):
            P = sd[f"model.layers.{i}.self_attn.adaption_prompt"][0]
            gate = sd[f"model.layers.{i}.self_attn.adaption_gate"]
            attn = m.model.layers[i].self_attn

            def hook(mod, args, kwargs, out, P=P, gate=gate):
                a = args[0] if args else kwargs["hidden_states"]
                cos, sin = kwargs["position_embeddings"]
                T = a.shape[1]
                q = mod.q_proj(a).view(1, T, nh, d).transpose(1, 2)
                q, _ = apply_rotary_pos_emb(q, q, cos, sin)
                nkv = c.num_key_value_heads
                ka = mod.k_proj(P).view(-1, nkv, d).transpose(0, 1)       # [nkv, len, d]
                va = mod.v_proj(P).view(-1, nkv, d).transpose(0, 1)
                ka = ka.repeat_interleave(nh // nkv, dim=0)[None]
                va = va.repeat_interleave(nh // nkv, dim=0)[None]
                sc = torch.softmax((q @ ka.transpose(-1, -2)) / math.sqrt(d), dim=-1)
                u = (gate * sc) @ va                                     # [1, nh, T, d]
                u = u.transpose(1, 2).reshape(1, T, nh * d)
                return (out[0] + mod.o_proj(u),) + tuple(out[1:])
            attn.register_forward_hook(hook, with_kwargs=True)
    else:
        return None
    return m


def check_spec() -> int:
    torch.set_num_threads(1)
    bad = 0
    for spec in peft_specs():
        base, name = spec["base"], spec["name"]
        adir = os.path.join(ADAPTERS, base, name)
        m = spec_model(base, adir)
        if m is None:
            continue
        with open(os.path.join(AGOLDEN, f"{base}__{name}.json")) as f:
            gold = json.load(f)
        worst = 0.0
        for p in gold["prompts"]:
            seq = p["ids"] + p["greedy"][:-1]
            with torch.no_grad():
                lg = m(input_ids=torch.tensor([seq])).logits[0].float().numpy()
            ref = np.concatenate([np.array(p["prompt_logits"]), np.array(p["step_logits"])[1:]])
            worst = max(worst, float(np.abs(lg - ref).max()) / max(1.0, float(np.abs(ref).max())))
        ok = worst < 2e-5
        bad += not ok
        log(f"spec check {base}/{name}: max |diff| / max |logit| = {worst:.2e} "
            f"{'ok' if ok else 'MISMATCH'}")
    return 1 if bad else 0


def check_adapterhub() -> int:
    """Cross-check the hand-written AdapterHub fixtures and their hook-based goldens against
    the real `adapters` library. Needs a SEPARATE environment (adapters 1.3.0 pins
    transformers ~=4.57), see tests/oracle/README.md. Loads each bottleneck adapter with
    `load_adapter(use_safetensors=True)`, compares teacher-forced logits with the golden, and
    re-saves it with `save_adapter` to compare the files (config except model_name, tensors)."""
    import tempfile
    import adapters
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(1)
    bad = 0
    for preset in BN_PRESETS:
        base = "tiny-llama-gqa"
        m = AutoModelForCausalLM.from_pretrained(os.path.join(MODELS, base),
                                                 dtype=torch.float32,
                                                 attn_implementation="eager").eval()
        adapters.init(m)
        adir = os.path.join(ADAPTERS, base, preset)
        name = m.load_adapter(adir, use_safetensors=True)
        m.set_active_adapters(name)
        with open(os.path.join(AGOLDEN, f"{base}__{preset}.json")) as f:
            gold = json.load(f)
        worst, greedy_ok = 0.0, True
        for p in gold["prompts"]:
            seq = p["ids"] + p["greedy"][:-1]
            with torch.no_grad():
                lg = m(input_ids=torch.tensor([seq])).logits[0].float().numpy()
            ref = np.concatenate([np.array(p["prompt_logits"]), np.array(p["step_logits"])[1:]])
            worst = max(worst, float(np.abs(lg - ref).max()))
            T = len(p["ids"])
            greedy_ok &= all(int(np.argmax(lg[T - 1 + i])) == g or p["top2_gap"][i] < 1e-4
                             for i, g in enumerate(p["greedy"]))
        with tempfile.TemporaryDirectory() as d:
            m.save_adapter(d, name, use_safetensors=True)
            with open(os.path.join(d, "adapter_config.json")) as f:
                lib_cfg = json.load(f)
            with open(os.path.join(adir, "adapter_config.json")) as f:
                our_cfg = json.load(f)
            lib_cfg.pop("model_name")
            our_cfg.pop("model_name")
            with safe_open(os.path.join(d, "adapter.safetensors"), "pt") as f1, \
                    safe_open(os.path.join(adir, "adapter.safetensors"), "pt") as f2:
                same = sorted(f1.keys()) == sorted(f2.keys()) and all(
                    torch.equal(f1.get_tensor(k), f2.get_tensor(k)) for k in f1.keys())
        if lib_cfg != our_cfg:
            diff = {k: (our_cfg.get(k), lib_cfg.get(k)) for k in set(our_cfg) | set(lib_cfg)
                    if our_cfg.get(k) != lib_cfg.get(k)}
            log(f"  config differs (ours, library): {diff}")
        ok = worst < 5e-5 and greedy_ok and same and lib_cfg == our_cfg
        bad += not ok
        log(f"{preset}: adapters {adapters.__version__} vs hook golden max |diff| {worst:.2e}, "
            f"greedy {'ok' if greedy_ok else 'DIFFERS'}, files "
            f"{'identical' if same and lib_cfg == our_cfg else 'DIFFER'}")
    return 1 if bad else 0


def main() -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # PEFT writes target_modules from a Python set: fix the hash seed so the saved
        # adapter_config.json files are byte-for-byte reproducible
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["tiny", "smollm2", "check-adapterhub", "check-spec"])
    ap.add_argument("--names", nargs="*", help="tiny: only these adapter names")
    ap.add_argument("--model", default=os.path.join(
        os.environ.get("QUIVER_HOME", os.path.expanduser("~/.cache/quiver")),
        "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = ap.parse_args()
    if args.only == "check-adapterhub":
        return check_adapterhub()
    if args.only == "check-spec":
        return check_spec()
    if args.only in (None, "tiny"):
        gen_tiny(args.names)
    if args.only in (None, "smollm2"):
        if not os.path.exists(args.model):
            log(f"{args.model} missing (run deploy/fetch-model.sh); SmolLM2 part skipped")
            return 1 if args.only == "smollm2" else 0
        gen_smollm2(args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
