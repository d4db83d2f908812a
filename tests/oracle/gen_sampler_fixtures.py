#!/usr/bin/env python3
"""Generates tests/fixtures/sampler/: golden sampling distributions from HF transformers.

For every case a logit row is generated from a seeded integer PRNG (splitmix64; the same
formula is reimplemented in tests/engine/test_sampler.c, and a FNV-1a hash of the float32 bytes
is stored so the C side proves it rebuilt the identical row). The row goes through the logits
processor list that HF `generate` itself builds (`GenerationMixin._get_logits_processor` with
do_sample=True: RepetitionPenalty, Temperature, TopK, TopP, MinP in HF's order), with one extra
processor for the OpenAI presence/frequency penalties (written here from the OpenAI formula,
placed after the repetition penalty and before temperature, as vLLM does), then softmax.
Cases with logit edits also set HF's `sequence_bias` (single-token sequences: the OpenAI
logit_bias, first in HF's list) and `min_new_tokens` with the suppressed ids as its EOS set
(vLLM's min_tokens); `generated` then counts as the new tokens.
The resulting probabilities are the goldens (float32 files, dense, n_vocab values).

Boundary cases are avoided, not hidden: a float64 re-implementation of the same rules must agree
with HF on the kept set, and every filter decision (top-k gap, top-p cumulative mass, min-p
ratio) must clear a margin; otherwise the case's logit seed is bumped (recorded in the JSON).

Also recorded: the raw log-softmax top-20 (torch) and, for each case, the tokens that the
documented draw (xoshiro256** seeded by splitmix64, u = (next >> 11) * 2^-53, first id in
ascending id order whose cumulative probability exceeds u) picks from the HF distribution
(-1 where u falls within 1e-6 of a cumulative boundary).

Run: /work/venv-oracle/bin/python tests/oracle/gen_sampler_fixtures.py
"""
import json
import os
import sys

import numpy as np
import torch
import transformers
from transformers import GenerationConfig
from transformers.generation.logits_process import (LogitsProcessor,
                                                    RepetitionPenaltyLogitsProcessor,
                                                    SequenceBiasLogitsProcessor)
from transformers.generation.utils import GenerationMixin

M64 = (1 << 64) - 1
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "sampler")
N_DRAWS = 16
MARGIN = 1e-5  # logit-space gap for top-k
MASS_MARGIN = 1e-6  # probability-mass margin for draws (float32 cumulative error ~1e-7)
TOPP_MARGIN = 2e-7  # top-p: cumulative masses this close to top_p are "ambiguous"


def splitmix64_stream(seed):
    x = seed & M64
    while True:
        x = (x + 0x9E3779B97F4A7C15) & M64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        yield z ^ (z >> 31)


def gen_logits(seed, n_vocab, scale, n_spikes):
    """Irwin-Hall(4) noise times scale plus a few positive spikes; exact IEEE double arithmetic
    rounded once to float32, so C reproduces it bit for bit."""
    g = splitmix64_stream(seed)
    vals = [0.0] * n_vocab
    for i in range(n_vocab):
        s = 0
        for _ in range(4):
            s += next(g) >> 40
        vals[i] = (s / 16777216.0 - 2.0) * scale
    for _ in range(n_spikes):
        idx = next(g) % n_vocab
        u = (next(g) >> 40) / 16777216.0
        vals[idx] = vals[idx] + (u * 2.0 + 1.0) * scale
    return np.array(vals, dtype=np.float64).astype(np.float32)


def fnv1a(arr):
    h = 0xCBF29CE484222325
    for b in arr.astype("<f4").tobytes():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


class Xoshiro:
    def __init__(self, seed):
        g = splitmix64_stream(seed)
        self.s = [next(g) for _ in range(4)]

    def next(self):
        s = self.s
        rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & M64
        result = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def uniform(self):
        return (self.next() >> 11) * 2.0**-53


class OpenAIPenalties(LogitsProcessor):
    """OpenAI presence/frequency penalties over generated tokens only:
    logit[j] -= frequency * count[j]; logit[j] -= presence * (count[j] > 0)."""

    def __init__(self, generated, n_vocab, presence, frequency):
        counts = np.zeros(n_vocab, dtype=np.float32)
        for t in generated:
            counts[t] += 1
        self.counts = torch.from_numpy(counts)[None, :]
        self.presence = presence
        self.frequency = frequency

    def __call__(self, input_ids, scores):
        scores = scores - self.counts * np.float32(self.frequency).item()
        scores = scores - (self.counts > 0).to(scores.dtype) * np.float32(self.presence).item()
        return scores


class Stub(GenerationMixin):
    class config:
        is_encoder_decoder = False


def hf_processors(p, seq_len):
    kw = dict(do_sample=True, temperature=p["temperature"], top_k=p["top_k"], top_p=p["top_p"],
              repetition_penalty=p["repetition_penalty"])
    if p["min_p"] > 0:
        kw["min_p"] = p["min_p"]
    if p["logit_bias"]:
        kw["sequence_bias"] = [[[i], b] for i, b in p["logit_bias"]]
    if p["min_tokens"] > 0:
        kw["min_new_tokens"] = p["min_tokens"]
    gc = GenerationConfig(**kw)
    if p["min_tokens"] > 0:  # what generate's _prepare_special_tokens would set
        gc._eos_token_tensor = torch.tensor(p["suppress"], dtype=torch.long)
    return Stub()._get_logits_processor(gc, input_ids_seq_length=seq_len, device="cpu",
                                        model_kwargs={})


def hf_probs(logits, p, prompt, generated):
    ids = torch.tensor([prompt + generated], dtype=torch.long)
    procs = list(hf_processors(p, len(prompt)))  # generated = the new tokens
    if p["presence_penalty"] != 0 or p["frequency_penalty"] != 0:
        kinds = (RepetitionPenaltyLogitsProcessor, SequenceBiasLogitsProcessor)
        pos = 0
        while pos < len(procs) and isinstance(procs[pos], kinds):
            pos += 1
        procs.insert(pos, OpenAIPenalties(generated, len(logits), p["presence_penalty"],
                                          p["frequency_penalty"]))
    scores = torch.from_numpy(logits.copy())[None, :]
    for proc in procs:
        scores = proc(ids, scores)
    names = [type(x).__name__ for x in procs]
    return torch.softmax(scores, dim=-1)[0].numpy(), names


def ref_check(logits, p, prompt, generated, hf):
    """float64 version of the documented rules. Returns (None, n_ambiguous) when it agrees with
    HF, else (reason, 0). A top-p decision is ambiguous when the exclusive cumulative mass is
    within TOPP_MARGIN of top_p; such tokens may differ between float32 and float64 arithmetic,
    so their total probability must stay below 5e-7 (under the 1e-6 test tolerance)."""
    x = logits.astype(np.float64)
    for t, b in p["logit_bias"]:
        x[t] = float(np.float32(x[t]) + np.float32(b))
    if len(generated) < p["min_tokens"]:
        x[p["suppress"]] = -np.inf
    rep = p["repetition_penalty"]
    if rep != 1.0:
        for t in set(prompt + generated):
            x[t] = x[t] * rep if x[t] < 0 else x[t] / rep
    counts = np.zeros(len(x))
    for t in generated:
        counts[t] += 1
    x -= p["frequency_penalty"] * counts
    x -= p["presence_penalty"] * (counts > 0)
    y = x / p["temperature"]
    keep = y > -np.inf  # min_tokens' suppressed ids
    ambiguous = np.zeros(len(y), dtype=bool)
    order = np.lexsort((np.arange(len(y)), -y))  # descending y, lower id first
    k = p["top_k"]
    if 0 < k < len(y):
        ys = y[order]
        if ys[k - 1] - ys[k] < MARGIN:
            return "top-k gap", 0
        keep &= y >= ys[k - 1]
    if p["top_p"] < 1.0:
        e = np.where(keep, np.exp(y - y.max()), 0.0)
        pr = e / e.sum()
        ps = pr[order]
        excl = np.concatenate([[0.0], np.cumsum(ps)[:-1]])
        kept_rank = excl < p["top_p"]
        kept_rank[0] = True
        amb_rank = np.abs(excl - p["top_p"]) < TOPP_MARGIN
        amb_rank[0] = False
        amb_rank &= ps > 0
        if ps[amb_rank].sum() > 2.5 * TOPP_MARGIN:
            return "top-p boundary", 0
        kk = np.zeros(len(y), dtype=bool)
        kk[order[kept_rank]] = True
        keep &= kk
        ambiguous[order[amb_rank]] = True
    if p["min_p"] > 0:
        e = np.exp(y - y.max())
        ratio = e[keep] / p["min_p"]
        if np.min(np.abs(ratio - 1.0)) < 1e-4:
            return "min-p ratio", 0
        keep &= e >= p["min_p"]
    e = np.where(keep, np.exp(y - y.max()), 0.0)
    pr = e / e.sum()
    if np.any((keep != (hf > 0)) & ~ambiguous):
        return "kept set differs from HF", 0
    err = np.max(np.abs(pr - hf))
    if err > 5e-7:
        return f"float64 reference differs from HF by {err}", 0
    return None, int(ambiguous.sum())


def draws(probs, seed):
    rng = Xoshiro(seed)
    cum = np.cumsum(probs.astype(np.float64))
    cum /= cum[-1]
    out = []
    for _ in range(N_DRAWS):
        u = rng.uniform()
        j = int(np.searchsorted(cum, u, side="right"))
        j = min(j, len(cum) - 1)
        while probs[j] == 0:  # never land on a zero-probability token
            j -= 1
        lo = cum[j - 1] if j > 0 else 0.0
        ok = (u - lo) > MASS_MARGIN and (cum[j] - u) > MASS_MARGIN
        out.append(j if ok else -1)
    return out


def P(**kw):
    p = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
             presence_penalty=0.0, frequency_penalty=0.0, seed=0, logit_bias=[], min_tokens=0,
             suppress=[])
    p.update(kw)
    return p


CTX_SMALL = dict(prompt=[3, 17, 17, 256, 999, 5, 42], generated=[42, 7, 7, 7, 512, 3])
CTX_LARGE = dict(prompt=[1, 2, 3, 100, 4000, 49151, 4000, 777], generated=[777, 777, 12345, 9, 9, 4000])

CASES = [
    # name, n_vocab, logit seed, scale, spikes, params, context
    ("v1k_plain", 1000, 11, 2.0, 5, P(seed=1), None),
    ("v1k_temp07", 1000, 12, 2.0, 5, P(temperature=0.7, seed=2), None),
    ("v1k_topk20", 1000, 13, 2.0, 5, P(top_k=20, seed=3), None),
    ("v1k_topp09_t08", 1000, 14, 2.0, 8, P(top_p=0.9, temperature=0.8, seed=4), None),
    ("v1k_minp001_t13", 1000, 15, 2.0, 8, P(min_p=0.01, temperature=1.3, seed=5), None),
    ("v1k_k50_p09_minp002_t09", 1000, 16, 2.0, 10,
     P(top_k=50, top_p=0.9, min_p=0.02, temperature=0.9, seed=6), None),
    ("v1k_rep13", 1000, 17, 2.0, 5, P(repetition_penalty=1.3, seed=7), CTX_SMALL),
    ("v1k_rep08_k40", 1000, 18, 2.0, 5, P(repetition_penalty=0.8, top_k=40, seed=8), "auto"),
    ("v1k_pres_freq_rep_p095", 1000, 19, 2.0, 6,
     P(presence_penalty=0.5, frequency_penalty=0.3, repetition_penalty=1.1, temperature=0.8,
       top_p=0.95, seed=9), "auto"),
    ("v1k_neg_pres_freq", 1000, 20, 2.0, 6,
     P(presence_penalty=-0.5, frequency_penalty=-0.2, seed=10), CTX_SMALL),
    ("v1k_topk1", 1000, 21, 2.0, 5, P(top_k=1, seed=11), None),
    ("v1k_topp03_peaked", 1000, 22, 3.0, 12, P(top_p=0.3, seed=12), None),
    ("v49k_plain", 49152, 31, 2.0, 20, P(seed=21), None),
    ("v49k_topk40_t07", 49152, 32, 2.0, 20, P(top_k=40, temperature=0.7, seed=22), None),
    ("v49k_topp095_flat", 49152, 33, 1.0, 0, P(top_p=0.95, seed=23), None),
    ("v49k_topp099_tail", 49152, 37, 3.0, 60, P(top_p=0.99, seed=27), None),
    ("v49k_topp09_rep_pf", 49152, 34, 2.5, 30,
     P(top_p=0.9, repetition_penalty=1.2, presence_penalty=0.4, frequency_penalty=0.2,
       seed=24), "auto"),
    ("v49k_k1000_minp01_t15", 49152, 35, 2.0, 20,
     P(top_k=1000, min_p=0.1, temperature=1.5, seed=25), None),
    ("v49k_all", 49152, 36, 2.5, 40,
     P(top_k=200, top_p=0.9, min_p=0.01, repetition_penalty=1.15, presence_penalty=0.4,
       frequency_penalty=0.2, temperature=0.9, seed=26), "auto"),
    # logit edits, made concrete per row by edits_for
    ("v1k_bias_t09_k50", 1000, 41, 2.0, 6, P(temperature=0.9, top_k=50, seed=41, edits="bias"),
     None),
    ("v1k_bias_min_rep", 1000, 42, 2.0, 6,
     P(repetition_penalty=1.2, presence_penalty=0.3, seed=42, edits="bias+min"), "auto"),
    ("v1k_min_reached", 1000, 43, 2.0, 6, P(top_p=0.95, seed=43, edits="min-reached"), "auto"),
    ("v49k_bias_min_p09", 49152, 44, 2.5, 30,
     P(top_p=0.9, temperature=0.8, seed=44, edits="bias+min"), "auto"),
]


def edits_for(kind, order, n_vocab):
    """Concrete logit_bias / min_tokens for a row whose ids by descending logit are `order`:
    the likeliest token pushed down, mid-ranked ones pulled up, the 2nd and 3rd suppressed
    while fewer than min_tokens tokens are generated ("auto" contexts have generated 5)."""
    bias = [[order[0], -2.5], [order[6], 2.0], [order[40], 3.5], [n_vocab - 1, -30.0],
            [order[6], 1.25]]  # a repeated id: the later entry wins (a JSON object in Python)
    if kind == "bias":
        return dict(logit_bias=bias)
    sup = [order[1], order[2]]
    if kind == "bias+min":
        return dict(logit_bias=bias, min_tokens=8, suppress=sup)
    return dict(min_tokens=5, suppress=sup)  # "min-reached": 5 generated, nothing suppressed


def dedup(p):
    """The parameters HF is given: logit_bias as a dict (the last entry of an id wins)."""
    return dict(p, logit_bias=[[i, b] for i, b in dict((i, b) for i, b in p["logit_bias"]).items()])


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    out_cases = []
    for name, nv, lseed, scale, spikes, p, ctx in CASES:
        for bump in range(200):
            seed = lseed + 1000 * bump
            logits = gen_logits(seed, nv, scale, spikes)
            prompt = ctx["prompt"] if isinstance(ctx, dict) else []
            generated = ctx["generated"] if isinstance(ctx, dict) else []
            if ctx == "auto":  # penalise the likeliest tokens so the penalties move the cut
                o = [int(i) for i in np.lexsort((np.arange(nv), -logits))[:4]]
                prompt = [o[0], o[2], 5, 17, 5]
                generated = [o[0], o[1], o[1], o[3], 9]
            if "edits" in p:
                o = [int(i) for i in np.lexsort((np.arange(nv), -logits))]
                p = dict(p, **edits_for(p["edits"], o, nv))
            probs, names = hf_probs(logits, dedup(p), prompt, generated)
            why, n_amb = ref_check(logits, dedup(p), prompt, generated, probs)
            if why is None:
                break
            print(f"{name}: logit seed {seed} rejected ({why})", file=sys.stderr)
        else:
            raise SystemExit(f"{name}: no usable logit seed")
        probs = probs.astype(np.float32)
        probs.astype("<f4").tofile(os.path.join(OUT, name + ".f32"))
        lsm = torch.log_softmax(torch.from_numpy(logits), dim=-1)
        top = torch.topk(lsm, 20)
        out_cases.append(dict(
            name=name, n_vocab=nv, logit_seed=seed, scale=scale, n_spikes=spikes,
            logits_fnv1a=f"{fnv1a(logits):016x}", params=p, prompt=prompt, generated=generated,
            processors=names, n_kept=int((probs > 0).sum()), n_ambiguous=n_amb,
            raw_top_ids=[int(i) for i in top.indices], raw_top_logprobs=[float(v) for v in top.values],
            draws=draws(probs, p["seed"])))
        print(f"{name}: seed {seed} kept {int((probs > 0).sum())} ambiguous {n_amb} procs {names}", file=sys.stderr)
    doc = dict(generator="tests/oracle/gen_sampler_fixtures.py",
               transformers=transformers.__version__, torch=torch.__version__,
               cases=out_cases)
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
