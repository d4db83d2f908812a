#!/usr/bin/env python3
"""Spot-check goldens for the adapter loader (tests/adapters/test_adapter_load.c).

For every real adapter under tests/fixtures/adapters/<model>/<name>/ (written by PEFT /
AdapterHub, see gen_adapters.py of the peft-oracle), compute with PyTorch + PEFT's own helpers
what quiver's loader must produce:
  - LoRA: per-module rank and scale (PEFT get_pattern_key, alpha/r or alpha/sqrt(r)), sample
    A/B/bias/magnitude values, DoRA m/||W + s*B*A|| rows using the base model's weights;
  - IA3: sample values and input-vs-output scaling;
  - prefix tuning: K/V samples via PEFT's get_prompt view/permute (per layer, KV head);
  - prompt / p-tuning: sample embedding values;
  - adaption prompt: prompt samples and raw gates;
  - bottleneck: bottleneck size D = int(H // rf), sample weights, scaling.
Output: tests/fixtures/adapters_bad/checks.json (small). Run with /work/venv-oracle.
"""
import json
import math
import os
import random
import sys

import torch
from safetensors.torch import load_file
from peft.utils.other import get_pattern_key

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures", "adapters")
MODELS = os.path.join(ROOT, "tests", "fixtures", "models")
OUT = os.path.join(ROOT, "tests", "fixtures", "adapters_bad", "checks.json")

PROJ = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
        "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
rng = random.Random(1234)


def samples(t, n=4):
    """n (flat index, value) pairs of tensor t, first and last element included."""
    flat = t.float().reshape(-1)
    idx = {0, flat.numel() - 1}
    while len(idx) < min(n, flat.numel()):
        idx.add(rng.randrange(flat.numel()))
    return [[i, float(flat[i])] for i in sorted(idx)]


def lora_checks(cfg, w, base):
    out = []
    rank_keys = list((cfg.get("rank_pattern") or {}).keys())
    alpha_keys = list((cfg.get("alpha_pattern") or {}).keys())
    for k in sorted(w):
        if not k.endswith(".lora_A.weight") and not k.endswith(".lora_embedding_A"):
            continue
        emb = k.endswith(".lora_embedding_A")
        path = k[len("base_model.model."):].rsplit(".lora_", 1)[0]
        a = w[k]
        b = w[k.replace("lora_A", "lora_B").replace("lora_embedding_A", "lora_embedding_B")]
        r = cfg["rank_pattern"][get_pattern_key(rank_keys, path)] if rank_keys and \
            get_pattern_key(rank_keys, path) in cfg["rank_pattern"] else cfg["r"]
        alpha = cfg["alpha_pattern"][get_pattern_key(alpha_keys, path)] if alpha_keys and \
            get_pattern_key(alpha_keys, path) in cfg["alpha_pattern"] else cfg["lora_alpha"]
        assert a.shape[0] == r, (k, a.shape, r)
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        c = {"path": path, "rank": r, "scale": scale, "a": samples(a), "b": samples(b)}
        bias = None if emb else w.get(k.replace("lora_A.weight", "lora_B.bias"))
        if bias is not None:
            c["bias"] = samples(bias)
        mag = None if emb else w.get(k.replace("lora_A.weight", "lora_magnitude_vector"))
        if mag is not None and not emb:
            wb = base[path + ".weight"].double()
            wc = wb + scale * (b.double() @ a.double())
            ds = mag.double() / wc.norm(dim=1)
            c["dora_scale"] = samples(ds)
        out.append(c)
    return out


def main():
    checks = []
    for model in sorted(os.listdir(FIX)):
        # Tiny models live in the repo; SmolLM2 is the downloaded GGUF (not needed here: its
        # adapters have no DoRA and no adaption prompt, the only checks that read the base).
        mdir = os.path.join(MODELS, model)
        base = load_file(os.path.join(mdir, "model.safetensors")) if os.path.isdir(mdir) else None
        mcfg = json.load(open(os.path.join(mdir, "config.json"))) if base is not None else None
        for name in sorted(os.listdir(os.path.join(FIX, model))):
            d = os.path.join(FIX, model, name)
            cfg = json.load(open(os.path.join(d, "adapter_config.json")))
            wf = "adapter.safetensors" if "config" in cfg and "peft_type" not in cfg \
                else "adapter_model.safetensors"
            w = load_file(os.path.join(d, wf))
            e = {"model": model, "name": name, "dir": f"tests/fixtures/adapters/{model}/{name}"}
            if "peft_type" not in cfg:
                c = cfg["config"]
                e["kind"] = "BOTTLENECK"
                H = cfg["hidden_size"]
                rf = c["reduction_factor"]
                e["d"] = max(1, int(H // rf))
                e["scaling"] = c["scaling"] if isinstance(c["scaling"], (int, float)) else 1.0
                e["act"] = c["non_linearity"]
                e["parallel"] = bool(c["is_parallel"])
                e["units"] = []
                for k in sorted(w):
                    if k.endswith("adapter_down.0.weight") or k.endswith("adapter_up.weight"):
                        layer = int(k.split("layers.")[1].split(".")[0])
                        loc = "ffn" if ".output_adapters." in k else "attn"
                        e["units"].append({"layer": layer, "loc": loc,
                                           "what": "down_w" if "down" in k else "up_w",
                                           "v": samples(w[k])})
            else:
                pt = cfg["peft_type"]
                e["kind"] = pt
                if pt == "LORA":
                    e["lora"] = lora_checks(cfg, w, base)
                    if "base_model.model.lm_head.weight" in w and cfg.get("modules_to_save"):
                        e["lm_head_replace"] = samples(w["base_model.model.lm_head.weight"], 6)
                elif pt == "IA3":
                    e["ia3"] = []
                    for k in sorted(w):
                        path = k[len("base_model.model."):-len(".ia3_l")]
                        e["ia3"].append({"path": path, "input": w[k].shape[0] == 1,
                                         "v": samples(w[k])})
                elif pt == "PREFIX_TUNING":
                    p = w["prompt_embeddings"].float()
                    nvt, L, H = cfg["num_virtual_tokens"], cfg["num_layers"], cfg["num_attention_heads"]
                    hd = cfg["token_dim"] // H
                    # PeftModel.get_prompt: view (b, nvt, L*2, H, hd) -> permute [L*2, b, H, nvt, hd]
                    kv = p.view(1, nvt, L * 2, H, hd).permute(2, 0, 3, 1, 4)
                    e["nvt"] = nvt
                    e["prefix"] = []
                    for _ in range(8):
                        l, s, h, t, i = (rng.randrange(L), rng.randrange(2), rng.randrange(H),
                                         rng.randrange(nvt), rng.randrange(hd))
                        # quiver layout: (n_layers, nvt, n_kv*hd) with column h*hd + i
                        e["prefix"].append({"layer": l, "v": s, "t": t, "col": h * hd + i,
                                            "val": float(kv[l * 2 + s, 0, h, t, i])})
                elif pt in ("PROMPT_TUNING", "P_TUNING"):
                    e["nvt"] = cfg["num_virtual_tokens"]
                    e["prompt"] = samples(w["prompt_embeddings"], 6)
                elif pt == "ADAPTION_PROMPT":
                    L = mcfg["num_hidden_layers"]
                    n = cfg["adapter_layers"]
                    e["first_layer"] = L - n
                    e["len"] = cfg["adapter_len"]
                    e["ap"] = []
                    for i in range(L - n, L):
                        pre = f"base_model.model.model.layers.{i}.self_attn."
                        e["ap"].append({"layer": i, "gate": float(w[pre + "adaption_gate"][0]),
                                        "prompt": samples(w[pre + "adaption_prompt"])})
            checks.append(e)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(checks, f, separators=(",", ":"))
    print(f"wrote {OUT}: {len(checks)} adapters", file=sys.stderr)


if __name__ == "__main__":
    main()
