#!/usr/bin/env python3
"""Generate the fixtures of quiver's adapter merging (LoRAX's merged_adapters) from PEFT.

What:
  * tests/fixtures/adapters/tiny-llama-gqa/merge_{a,b,c}/: three PEFT LoRA adapters of rank 8
    for the tiny GQA model with different target modules and scales (a: q/k/v/o, alpha 16;
    b: q/v/gate/up/down, alpha 8; c: all seven projections, alpha 32 with rsLoRA), written by
    PEFT's save_pretrained with seeded random weights (gen_adapters.perturb_peft).
  * tests/fixtures/adapter_merge/cases.json and <case>.safetensors: for each merge case (the
    adapters, weights, strategy, density, majority sign method, seed) the merged lora_A / lora_B
    of every adapted projection ("layers.L.PROJ.A" / ".B", F32) with its scale, and the merged
    adapter's logits: every prompt position of two prompts and 8 greedy steps (teacher-forced
    no-cache forwards, cross-checked with generate()).
How (the semantics quiver documents in adapters/adapters.h, qv_adapter_merge):
  * each projection's A and B are merged separately over the adapters that adapt it, with PEFT
    0.21.2's own peft.utils.merge_utils: task_arithmetic (linear), ties (magnitude pruning,
    sign election, disjoint mean); DARE's random drop is quiver's counter-based hash (below,
    re-implemented here with numpy) with PEFT's rescale by 1/density, then task_arithmetic or
    ties with density 1 (no further pruning);
  * the merged projection's scale is PEFT's `scaling` of the first adapter (in order) that
    adapts it;
  * logits come from a PEFT model whose LoRA weights and scaling are set to the merged ones;
  * "cat" cases are PEFT's own add_weighted_adapter(combination_type="cat") end to end: the
    merged adapter's A / B read back from the PEFT model (its zero padding up to the sum of
    every part's rank cut off) and its logits; their first part is not rsLoRA (PEFT's merged
    config inherits use_rslora from the first adapter, which would scale the exact sum by
    sqrt(rank); quiver keeps the scale 1).
What not: does not build or run quiver.
Invariants: deterministic (seeded, fp32, 1 thread).

Usage: .venv-oracle/bin/python tests/oracle/gen_merge_fixtures.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_adapters as ga  # noqa: E402
from common import FIXTURES  # noqa: E402

BASE = "tiny-llama-gqa"
OUT = os.path.join(FIXTURES, "adapter_merge")
PROJS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
N_STEPS = 8

SOURCES = [
    dict(name="merge_a", seed=41,
         cfg=lambda: ga.lora(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj",
                                                                 "o_proj"])),
    dict(name="merge_b", seed=42,
         cfg=lambda: ga.lora(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj",
                                                                "up_proj", "down_proj"])),
    dict(name="merge_c", seed=43,
         cfg=lambda: ga.lora(r=8, lora_alpha=32, use_rslora=True, target_modules=PROJS)),
]

CASES = [
    dict(name="linear_abc", ids=["merge_a", "merge_b", "merge_c"], weights=[0.5, 1.0, -0.3],
         strategy="linear", density=1.0, sign="total", seed=0),
    dict(name="ties_cab", ids=["merge_c", "merge_a", "merge_b"], weights=[1.0, 0.8, 0.6],
         strategy="ties", density=0.4, sign="total", seed=0),
    dict(name="ties_freq_ac", ids=["merge_a", "merge_c"], weights=[1.0, 1.0],
         strategy="ties", density=0.7, sign="frequency", seed=0),
    dict(name="dare_linear_ab", ids=["merge_a", "merge_b"], weights=[0.6, 0.9],
         strategy="dare_linear", density=0.5, sign="total", seed=7),
    dict(name="dare_ties_bca", ids=["merge_b", "merge_c", "merge_a"], weights=[1.0, 0.5, 0.5],
         strategy="dare_ties", density=0.6, sign="frequency", seed=123),
    dict(name="linear_f16_rslora", ids=["lora_all_r8_f16", "lora_all_r8_rslora"],
         weights=[0.7, 0.5], strategy="linear", density=1.0, sign="total", seed=0),
    dict(name="cat_abc", ids=["merge_a", "merge_b", "merge_c"], weights=[0.5, 1.0, -0.3],
         strategy="cat", density=1.0, sign="total", seed=0),
    dict(name="cat_mixed_ranks", ids=["lora_qv_r4", "lora_r16_mlp_bf16", "lora_patterns"],
         weights=[1.0, 0.5, 0.8], strategy="cat", density=1.0, sign="total", seed=0),
]

M64 = (1 << 64) - 1


def mix64(x):
    """SplitMix64's output function on numpy uint64 arrays (wrapping arithmetic)."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(M64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def dare_drop(t: torch.Tensor, density: float, seed: int, i: int, layer: int, proj: int,
              which: int) -> torch.Tensor:
    """quiver's DARE mask: element e kept when u(e) < density, then divided by density."""
    with np.errstate(over="ignore"):
        stream = np.uint64((((i * 65536 + layer) * 8 + proj) * 2 + which))
        base = mix64(np.uint64(seed) ^ mix64(stream))
        e = np.arange(t.numel(), dtype=np.uint64)
        u = (mix64(base + e) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    keep = torch.from_numpy((u < density).reshape(tuple(t.shape)))
    return torch.where(keep, t, torch.zeros_like(t)) / density


def make_sources() -> None:
    from peft import get_peft_model
    for spec in SOURCES:
        out_dir = os.path.join(ga.ADAPTERS, BASE, spec["name"])
        shutil.rmtree(out_dir, ignore_errors=True)
        pm = get_peft_model(ga.load_base(BASE), spec["cfg"]())
        pm.peft_config["default"].base_model_name_or_path = BASE
        ga.perturb_peft(pm, 7000 + spec["seed"])
        pm.save_pretrained(out_dir, safe_serialization=True)
        readme = os.path.join(out_dir, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        # PEFT writes target_modules in set order (hash-seeded): sort it, so reruns are equal
        cfg_path = os.path.join(out_dir, "adapter_config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        cfg["target_modules"] = sorted(cfg["target_modules"])
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
        ga.log(f"{BASE}/{spec['name']}: written")


def lora_modules(name: str) -> dict[tuple[int, int], dict]:
    """(layer, proj) -> {A, B (fp32), scale} of a fixture adapter, as PEFT loads it."""
    from peft import PeftModel
    pm = PeftModel.from_pretrained(ga.load_base(BASE), os.path.join(ga.ADAPTERS, BASE, name))
    mods = {}
    for mname, mod in pm.named_modules():
        if not hasattr(mod, "lora_A") or "default" not in mod.lora_A:
            continue
        parts = mname.split(".")
        layer = int(parts[parts.index("layers") + 1])
        proj = PROJS.index(parts[-1])
        mods[(layer, proj)] = dict(A=mod.lora_A["default"].weight.detach().float().clone(),
                                   B=mod.lora_B["default"].weight.detach().float().clone(),
                                   scale=float(mod.scaling["default"]))
    return mods


def merge_case(case: dict, sources: dict[str, dict]) -> dict[tuple[int, int], dict]:
    from peft.utils.merge_utils import task_arithmetic, ties
    merged = {}
    keys = sorted({k for n in case["ids"] for k in sources[n]})
    for key in keys:
        have = [i for i, n in enumerate(case["ids"]) if key in sources[case["ids"][i]]]
        w = torch.tensor([case["weights"][i] for i in have])
        out = {"scale": sources[case["ids"][have[0]]][key]["scale"]}
        for which, ab in enumerate(("A", "B")):
            ts = [sources[case["ids"][i]][key][ab] for i in have]
            st, d = case["strategy"], case["density"]
            if st.startswith("dare") and d < 1.0:
                ts = [dare_drop(t, d, case["seed"], i, key[0], key[1], which)
                      for t, i in zip(ts, have)]
            if st in ("linear", "dare_linear"):
                out[ab] = task_arithmetic(ts, w)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # density 1: "no pruning will be performed"
                    out[ab] = ties(ts, w, d if st == "ties" else 1.0, case["sign"])
        merged[key] = out
    return merged


def peft_cat(case: dict, sources: dict[str, dict]):
    """PEFT's add_weighted_adapter(combination_type="cat"): (merged modules, model)."""
    from peft import PeftModel
    dirs = [os.path.join(ga.ADAPTERS, BASE, n) for n in case["ids"]]
    pm = PeftModel.from_pretrained(ga.load_base(BASE), dirs[0], adapter_name="p0")
    for i, d in enumerate(dirs[1:], 1):
        pm.load_adapter(d, adapter_name=f"p{i}")
    pm.add_weighted_adapter([f"p{i}" for i in range(len(dirs))], case["weights"], "merged",
                            combination_type="cat")
    pm.set_adapter("merged")
    pm.eval()
    merged = {}
    for mname, mod in pm.named_modules():
        if not hasattr(mod, "lora_A") or "merged" not in mod.lora_A:
            continue
        parts = mname.split(".")
        key = (int(parts[parts.index("layers") + 1]), PROJS.index(parts[-1]))
        used = sum(int(sources[n][key]["A"].shape[0]) for n in case["ids"] if key in sources[n])
        if used == 0:
            continue
        a = mod.lora_A["merged"].weight.detach().float()
        b = mod.lora_B["merged"].weight.detach().float()
        assert not a[used:].any() and not b[:, used:].any(), "PEFT pads with zeros"
        merged[key] = dict(A=a[:used].clone(), B=b[:, :used].clone(),
                           scale=float(mod.scaling["merged"]))
    return merged, pm


def merged_model(merged: dict[tuple[int, int], dict]):
    """A PEFT model over the base with the merged LoRA weights and scales."""
    from peft import get_peft_model
    targets = sorted({PROJS[p] for (_, p) in merged})
    pm = get_peft_model(ga.load_base(BASE), ga.lora(r=8, lora_alpha=8, target_modules=targets))
    for mname, mod in pm.named_modules():
        if not hasattr(mod, "lora_A") or "default" not in mod.lora_A:
            continue
        parts = mname.split(".")
        key = (int(parts[parts.index("layers") + 1]), PROJS.index(parts[-1]))
        with torch.no_grad():
            if key in merged:
                mod.lora_A["default"].weight.copy_(merged[key]["A"])
                mod.lora_B["default"].weight.copy_(merged[key]["B"])
                mod.scaling["default"] = merged[key]["scale"]
            else:  # a projection no merged adapter adapts in this layer
                mod.lora_B["default"].weight.zero_()
    pm.eval()
    return pm


def main() -> int:
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    make_sources()
    names = sorted({n for c in CASES for n in c["ids"]})
    sources = {n: lora_modules(n) for n in names}
    os.makedirs(OUT, exist_ok=True)
    vocab = int(ga.load_base(BASE).config.vocab_size)
    doc = {"model": f"models/{BASE}", "vocab": vocab,
           "reference": "PEFT 0.21.2 peft.utils.merge_utils (task_arithmetic, ties) on each "
                        "projection's lora_A and lora_B; DARE's drop by quiver's documented "
                        "hash with PEFT's rescale; logits of a PEFT model holding the merged "
                        "weights and scales (fp32, eager attention, no-cache forwards, "
                        "cross-checked with generate())",
           "cases": []}
    for case in CASES:
        if case["strategy"] == "cat":
            merged, model = peft_cat(case, sources)
        else:
            merged = merge_case(case, sources)
            model = merged_model(merged)
        tensors = {}
        for (layer, p), m in merged.items():
            tensors[f"layers.{layer}.{PROJS[p]}.A"] = m["A"].contiguous()
            tensors[f"layers.{layer}.{PROJS[p]}.B"] = m["B"].contiguous()
        save_file(tensors, os.path.join(OUT, f"{case['name']}.safetensors"))
        prompts = []
        max_delta = 0.0
        for ids in ga.prompts_for(vocab):
            r = ga.run_prompt(model, ids, 0, n_steps=N_STEPS)
            b = ga.base_logits(BASE, ids)
            max_delta = max(max_delta, float(np.abs(r["prompt_logits"] - b).max()))
            prompts.append({k: r[k] for k in ("ids", "prompt_logits", "greedy", "step_logits",
                                              "top2_gap")})
        assert max_delta >= 0.5, f"{case['name']}: the merge barely changes the logits"
        entry = {k: case[k] for k in ("name", "ids", "weights", "strategy", "density", "sign",
                                      "seed")}
        entry["adapters"] = [f"adapters/{BASE}/{n}" for n in case["ids"]]
        entry["tensors"] = f"adapter_merge/{case['name']}.safetensors"
        entry["scales"] = {f"layers.{layer}.{PROJS[p]}": m["scale"]
                           for (layer, p), m in sorted(merged.items())}
        entry["max_abs_delta_vs_base"] = max_delta
        entry["prompts"] = prompts
        doc["cases"].append(entry)
        ga.log(f"{case['name']}: {len(merged)} projections, max |delta vs base| {max_delta:.2f},"
               f" greedy {prompts[1]['greedy']}")
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        f.write(ga.dump_json7(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
