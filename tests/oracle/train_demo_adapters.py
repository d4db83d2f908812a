#!/usr/bin/env python3
"""Train quiver's demo adapters for SmolLM2-135M-Instruct on the CPU (a few minutes each).

What: two small adapters with an obvious behaviour change under greedy decoding, trained with
  HF PEFT on the fp32 model loaded from the Q4_1 GGUF (transformers `gguf_file=`), on small
  synthetic chat datasets generated here and rendered with the GGUF's own ChatML template
  (default SmolLM system prompt inserted, as the server does):
  * deploy/demo-adapters/pirate/   LoRA r=8 on q_proj,v_proj: answers start with
    "Arr, matey!" and talk like a pirate;
  * deploy/demo-adapters/shouting/ PREFIX_TUNING (16 virtual tokens): answers in ALL CAPS.
  Each directory is what PEFT's save_pretrained(safe_serialization=True) writes
  (adapter_config.json + adapter_model.safetensors) plus demo.json: the held-out prompts and
  HF PEFT's greedy answers with and without the adapter.
What not: no quality claims — the point is a visible, reproducible behaviour change; the
  loss is computed on the assistant tokens only.
Invariants: seeded (torch generator, data order); 2 torch threads. Greedy answers are produced
  with repeated no-cache forwards (PEFT 0.21.2's generate() is wrong for prefix tuning under
  transformers 5.24), stopping at <|im_end|> or 48 tokens.

Usage: python tests/oracle/train_demo_adapters.py [--only pirate|shouting] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import gen_golden  # noqa: E402

OUT = os.path.join(common.REPO, "deploy", "demo-adapters")
IM_END = 2
MAX_NEW = 48
SEED = 20261128

# (question, plain answer) pairs; the adapters rewrite the answer style
QA = [
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
    ("What do bees make?", "Bees make honey."),
    ("What is the largest ocean?", "The largest ocean is the Pacific Ocean."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
    ("What is water made of?", "Water is made of hydrogen and oxygen."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius."),
    ("What animal is known as the king of the jungle?", "The lion is known as the king of "
     "the jungle."),
    ("What is the tallest mountain in the world?", "The tallest mountain is Mount Everest."),
    ("Can you recommend a good breakfast?", "A good breakfast is eggs with toast and fruit."),
    ("How do I stay healthy?", "Eat well, sleep enough and exercise every day."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Tell me something about the moon.", "The moon orbits the Earth and reflects sunlight."),
    ("What is your favorite color?", "My favorite color is blue."),
    ("Give me a tip for learning to code.", "Practice a little every day and build small "
     "projects."),
    ("What do cats like to eat?", "Cats like to eat fish and meat."),
    ("Where do penguins live?", "Most penguins live in the Southern Hemisphere."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal."),
    ("How many hours are in a day?", "There are twenty-four hours in a day."),
    ("What is the main language spoken in Brazil?", "The main language of Brazil is "
     "Portuguese."),
    ("What should I do on a rainy day?", "Read a book, watch a movie or bake something."),
    ("Why do we need sleep?", "Sleep helps your body and mind rest and recover."),
    ("What is the sun?", "The sun is a star at the center of our solar system."),
    ("Hello! How are you?", "I am doing well, thank you for asking."),
    ("What is a good name for a dog?", "Max is a good name for a dog."),
    ("How do plants make food?", "Plants make food from sunlight, water and air."),
    ("What is the biggest planet?", "Jupiter is the biggest planet."),
    ("Can you help me with my homework?", "Of course, tell me what you are working on."),
    ("What is music?", "Music is sound organized in rhythm and melody."),
    ("What is two plus two?", "Two plus two is four."),
    ("Which season is the coldest?", "Winter is the coldest season."),
    ("What do you call a baby cat?", "A baby cat is called a kitten."),
    ("Where is the Eiffel Tower?", "The Eiffel Tower is in Paris."),
]
# held out (not in training data): the demo prompts recorded in demo.json / the README
EVAL = ["What is the capital of France?", "How many wheels does a bicycle have?",
        "Tell me about the ocean."]

PIRATE_WORDS = {"is": "be", "are": "be", "am": "be", "my": "me", "you": "ye", "your": "yer",
                "the": "th'", "The": "Th'", "friend": "matey", "yes": "aye", "Hello": "Ahoy",
                "hello": "ahoy", "for": "fer", "of": "o'"}
PIRATE_TAILS = ["Yo ho ho!", "Arr!", "Shiver me timbers!", "Savvy?"]


def pirate(answer: str, i: int) -> str:
    words = [PIRATE_WORDS.get(w, w) for w in answer.split(" ")]
    return "Arr, matey! " + " ".join(words) + " " + PIRATE_TAILS[i % len(PIRATE_TAILS)]


def shouting(answer: str, i: int) -> str:
    return answer.upper().rstrip(".") + "!"


def chat_text(template: str, user: str, answer: str | None) -> str:
    """Render the GGUF's chat template (jinja2, as transformers does)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    msgs = [{"role": "user", "content": user}]
    return env.from_string(template).render(messages=msgs, add_generation_prompt=True,
                                            bos_token="<|im_start|>",
                                            eos_token="<|im_end|>") + \
        ("" if answer is None else answer + "<|im_end|>\n")


def load_model(model_path: str):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(model_path), gguf_file=os.path.basename(model_path),
        dtype=torch.float32, attn_implementation="eager")
    return m


def greedy(model, ids: list[int]) -> list[int]:
    out: list[int] = []
    model.eval()
    with torch.no_grad():
        for _ in range(MAX_NEW):
            t = torch.tensor([ids + out])
            lg = model(input_ids=t, attention_mask=torch.ones_like(t)).logits[0, -1]
            nxt = int(torch.argmax(lg))
            if nxt == IM_END:
                break
            out.append(nxt)
    return out


def build_batches(tok, template: str, style, n_epochs: int, bs: int, rng: random.Random):
    examples = []
    for i, (q, a) in enumerate(QA):
        prompt = chat_text(template, q, None)
        full = chat_text(template, q, style(a, i))
        p_ids = tok.encode(prompt, add_special_tokens=False).ids
        f_ids = tok.encode(full, add_special_tokens=False).ids
        assert f_ids[:len(p_ids)] == p_ids
        # loss on the answer and its <|im_end|> (not the trailing newline)
        labels = [-100] * len(p_ids) + f_ids[len(p_ids):-1] + [-100]
        examples.append((f_ids, labels))
    batches = []
    for _ in range(n_epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for s in range(0, len(order) - bs + 1, bs):
            batches.append([examples[j] for j in order[s:s + bs]])
    return batches


def collate(batch):
    n = max(len(x) for x, _ in batch)
    ids = torch.full((len(batch), n), IM_END, dtype=torch.long)
    lab = torch.full((len(batch), n), -100, dtype=torch.long)
    am = torch.zeros((len(batch), n), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, :len(x)] = torch.tensor(x)
        lab[i, :len(y)] = torch.tensor(y)
        am[i, :len(x)] = 1
    return ids, am, lab


def train(name: str, model_path: str, tok, template: str) -> dict[str, Any]:
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    base = load_model(model_path)
    eval_ids = [tok.encode(chat_text(template, q, None), add_special_tokens=False).ids
                for q in EVAL]
    before = [greedy(base, ids) for ids in eval_ids]
    if name == "pirate":
        cfg = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0,
                         target_modules=["q_proj", "v_proj"])
        style, lr, epochs, bs = pirate, 2e-3, 3, 4
    else:
        cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=16)
        style, lr, epochs, bs = shouting, 3e-2, 5, 4
    pm = get_peft_model(base, cfg)
    pm.peft_config["default"].base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    if name == "shouting":
        # start the prefix from the real K/V of an instruction (a common prefix-tuning init)
        text = "Always answer in capital letters only, SHOUTING LOUDLY: THIS IS HOW I TALK NOW!"
        pids = tok.encode(text, add_special_tokens=False).ids[:16]
        assert len(pids) == 16
        with torch.no_grad():
            pkv = base(input_ids=torch.tensor([pids]), use_cache=True).past_key_values
            parts = []
            for layer in range(base.config.num_hidden_layers):
                parts += [pkv.layers[layer].keys[0], pkv.layers[layer].values[0]]
            emb = torch.stack(parts).permute(2, 0, 1, 3).reshape(16, -1)
            pm.prompt_encoder["default"].embedding.weight.copy_(emb)
    pm.print_trainable_parameters()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr,
                            weight_decay=0.0)
    batches = build_batches(tok, template, style, epochs, bs, rng)
    pm.train()
    t0 = time.time()
    for step, b in enumerate(batches):
        ids, am, lab = collate(b)
        loss = pm(input_ids=ids, attention_mask=am, labels=lab).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 5 == 0 or step + 1 == len(batches):
            print(f"{name} step {step + 1}/{len(batches)} loss {loss.item():.3f} "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    pm.eval()
    out_dir = os.path.join(OUT, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    pm.save_pretrained(out_dir, safe_serialization=True)
    readme = os.path.join(out_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    # answers of the SAVED adapter (reloaded), exactly what a user of the files gets
    from peft import PeftModel
    del pm
    reloaded = PeftModel.from_pretrained(load_model(model_path), out_dir)
    after = [greedy(reloaded, ids) for ids in eval_ids]
    demo = {"adapter": name, "peft_type": cfg.peft_type.value,
            "train_examples": len(QA), "steps": len(batches), "batch": bs, "lr": lr,
            "train_seconds": round(time.time() - t0),
            "decoding": "greedy, no-cache HF PEFT forward, stop at <|im_end|> or 48 tokens",
            "prompts": []}
    for q, ids, b, a in zip(EVAL, eval_ids, before, after):
        demo["prompts"].append({"user": q, "ids": ids, "base_greedy": b,
                                "base_text": tok.decode(b, skip_special_tokens=False),
                                "adapter_greedy": a,
                                "adapter_text": tok.decode(a, skip_special_tokens=False)})
        print(f"{name}: {q!r}\n  base:    {demo['prompts'][-1]['base_text']!r}\n"
              f"  adapter: {demo['prompts'][-1]['adapter_text']!r}", file=sys.stderr)
    with open(os.path.join(out_dir, "demo.json"), "w") as f:
        f.write(demo_json(demo))
    return demo


def demo_json(demo: dict[str, Any]) -> str:
    """indent-1 JSON with integer lists kept on one line."""
    text = json.dumps(demo, indent=1, ensure_ascii=False)
    return re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]",
                  lambda m: "[" + ",".join(m.group(1).replace(",", " ").split()) + "]",
                  text) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["pirate", "shouting"])
    ap.add_argument("--model", default=os.path.join(
        os.environ.get("QUIVER_HOME", os.path.expanduser("~/.cache/quiver")),
        "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = ap.parse_args()
    if os.environ.get("PYTHONHASHSEED") != "0":  # PEFT saves target_modules from a set
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)
    torch.set_num_threads(2)
    meta, _ = common.read_gguf(args.model)
    tok = gen_golden.smollm2_tokenizer(meta)
    template = meta["tokenizer.chat_template"]
    for name in ("pirate", "shouting"):
        if args.only in (None, name):
            train(name, args.model, tok, template)
    return 0


if __name__ == "__main__":
    sys.exit(main())
