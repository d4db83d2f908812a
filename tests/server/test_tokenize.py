#!/usr/bin/env python3
"""test_tokenize.py - text prompts through the model's own tokenizer over HTTP, against Hugging
Face: the special tokens (BOS) of completion prompts, POST /tokenize and /detokenize.

Goldens: tests/fixtures/http/tiny-llama-bos.json (tests/oracle/gen_golden.py --only http: HF
tokenizers + transformers on tests/fixtures/models/tiny-llama-bos, a tiny random Llama carrying
the llama2 fixture tokenizer, which adds <s>) and tests/fixtures/smollm2/golden.json.

1. tiny-llama-bos: /tokenize of each prompt equals HF's ids with <s> (default, as HF and vLLM
   encode a completion prompt) and without it (add_special_tokens false), token_strs equal HF's
   convert_ids_to_tokens; a greedy completion (ignore_eos, 8 tokens) counts those prompt ids
   in usage and continues exactly as HF's greedy run from them (text compared where HF's text has
   no U+FFFD, i.e. no token ends inside a UTF-8 character: a server never streams half a
   character), streamed or not; a prompt given as token ids gets nothing added; /detokenize
   equals HF's decode; bad input is 400/404/405.
2. SmolLM2 (chat template): /tokenize of chat messages equals the oracle's chat prompt ids, and
   a chat completion of the same messages counts the same number of prompt tokens;
   continue_final_message ends the prompt inside a final assistant message (the oracle's chat
   prompt + that text's ids), and a chat completion then continues it.

Usage: test_tokenize.py <quiver-binary>. Exit 77 when SmolLM2 has not been fetched.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_http_api as T  # noqa: E402 - the shared Server class, check() and failures

check = T.check
FIX = os.path.join(T.ROOT, "tests", "fixtures")
GOLD = json.load(open(os.path.join(FIX, "http", "tiny-llama-bos.json")))
TINY = os.path.join(FIX, GOLD["model"])


def post(srv, path, body, key=T.KEY):
    st, _, data = srv.raw("POST", path, body, key=key)
    return st, json.loads(data)


def complete(srv, prompt, **kw):
    body = dict(prompt=prompt, max_tokens=GOLD["steps"], temperature=0, ignore_eos=True, **kw)
    st, out = post(srv, "/v1/completions", body)
    assert st == 200, (st, out)
    return out["choices"][0]["text"], out["usage"]["prompt_tokens"]


def stream_text(srv, prompt):
    client = srv.client()
    parts = []
    for chunk in client.completions.create(model="tiny-llama-bos", prompt=prompt,
                                           max_tokens=GOLD["steps"], temperature=0, stream=True,
                                           extra_body={"ignore_eos": True}):
        parts += [c.text for c in chunk.choices if c.text]
    return "".join(parts)


def tiny_checks(srv):
    compared = {"with_special": 0, "plain": 0}
    for case in GOLD["prompts"]:
        p = case["prompt"]
        for key, special in (("with_special", True), ("plain", False)):
            want = case[key]
            body = {"prompt": p, "return_token_strs": True}
            if not special:
                body["add_special_tokens"] = False
            st, out = post(srv, "/tokenize", body)
            check(st == 200 and out["tokens"] == want["ids"] and out["count"] == len(want["ids"])
                  and out["token_strs"] == want["token_strs"] and out["max_model_len"] == 256,
                  f"/tokenize {p!r} ({key}): {out.get('tokens')} {out.get('token_strs')} "
                  f"== HF {want['ids']} {want['token_strs']}")
            kw = {} if special else {"add_special_tokens": False}
            text, n_prompt = complete(srv, p, **kw)
            check(n_prompt == len(want["ids"]),
                  f"completion {p!r} ({key}): {n_prompt} prompt tokens == HF's {len(want['ids'])}")
            if "\ufffd" not in want["greedy_text"]:
                compared[key] += 1
                check(text == want["greedy_text"],
                      f"completion {p!r} ({key}): {text!r} == HF greedy {want['greedy_text']!r}")
            # the same ids given as a token prompt: nothing is added
            text_ids, n_ids = complete(srv, want["ids"])
            check(n_ids == len(want["ids"]) and (
                "\ufffd" in want["greedy_text"] or text_ids == want["greedy_text"]),
                f"token-id prompt {want['ids']}: {n_ids} tokens, {text_ids!r}")
        if "\ufffd" not in case["with_special"]["greedy_text"]:
            s = stream_text(srv, p)
            check(s == case["with_special"]["greedy_text"],
                  f"streamed completion {p!r}: {s!r} == HF greedy with BOS")
    check(all(n >= 3 for n in compared.values()),
          f"greedy texts compared with and without BOS: {compared}")
    differ = sum(1 for c in GOLD["prompts"]
                 if c["with_special"]["greedy"] != c["plain"]["greedy"])
    check(differ >= 3, f"the BOS changes the continuation of {differ} prompts (the test can fail)")

    for v in GOLD["detokenize"]:
        st, out = post(srv, "/detokenize", {"tokens": v["tokens"]})
        check(st == 200 and out["prompt"] == v["text"],
              f"/detokenize {v['tokens'][:6]}...: {out.get('prompt')!r} == HF {v['text']!r}")
    st, out = post(srv, "/tokenize", {"prompt": "x", "return_token_strs": False})
    check(st == 200 and out["token_strs"] is None, "token_strs is null unless asked for")

    for path, body, status, param in (
            ("/detokenize", {"tokens": [GOLD["vocab"]]}, 400, "tokens"),
            ("/detokenize", {"tokens": "1 2"}, 400, "tokens"),
            ("/detokenize", {"tokens": [1.5]}, 400, "tokens"),
            ("/tokenize", {}, 400, "prompt"),
            ("/tokenize", {"prompt": [1, 2]}, 400, "prompt"),
            ("/tokenize", {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, 400,
             "prompt"),
            ("/tokenize", {"prompt": "x", "add_special_tokens": "yes"}, 400,
             "add_special_tokens"),
            ("/tokenize", {"prompt": "x", "model": "no-such-model"}, 404, "model")):
        T.expect_error(srv, f"POST {path} {json.dumps(body)}", status, "POST", path, body,
                       param=param)
    T.expect_error(srv, "GET /tokenize", 405, "GET", "/tokenize")
    T.expect_error(srv, "/tokenize without the key", 401, "POST", "/tokenize", {"prompt": "x"},
                   key=None)
    # the llama2 fixture tokenizer has no chat template: chat messages are a clear 400
    T.expect_error(srv, "/tokenize messages without a chat template", 400, "POST", "/tokenize",
                   {"messages": [{"role": "user", "content": "hi"}]}, param="messages")


def smollm2_checks(srv):
    golden = json.load(open(os.path.join(FIX, "smollm2", "golden.json")))
    want = golden["prompts"][2]["ids"]  # the oracle's chat-rendered prompt
    msgs = [{"role": "user", "content": "What is the capital of France? Answer briefly."}]
    st, out = post(srv, "/tokenize", {"messages": msgs})
    check(st == 200 and out["tokens"] == want,
          f"/tokenize chat messages == the oracle's chat prompt ids ({len(want)} ids)")
    st, out = post(srv, "/v1/chat/completions", {"messages": msgs, "max_tokens": 1})
    check(st == 200 and out["usage"]["prompt_tokens"] == len(want),
          f"chat completion counts the same {len(want)} prompt tokens")
    st, out = post(srv, "/tokenize", {"messages": msgs, "add_generation_prompt": False})
    tail = [1, 520, 9531, 198]  # "<|im_start|>assistant\n"
    check(st == 200 and out["tokens"] == want[:-len(tail)] and want[-len(tail):] == tail,
          "add_generation_prompt false leaves out the assistant header")

    # continue_final_message: the prompt ends inside the assistant's message (ChatML: its
    # header and text, no <|im_end|>), so the model continues it
    head = "The capital of France is"
    st, text_ids = post(srv, "/tokenize", {"prompt": head, "add_special_tokens": False})
    cont = msgs + [{"role": "assistant", "content": head}]
    st, out = post(srv, "/tokenize", {"messages": cont, "continue_final_message": True})
    check(st == 200 and out["tokens"] == want + text_ids["tokens"],
          "continue_final_message: the oracle's chat prompt + the assistant's text, no end token")
    st, out = post(srv, "/tokenize", {"messages": cont + [], "continue_final_message": True,
                                      "add_generation_prompt": False})
    check(st == 200 and out["tokens"] == want + text_ids["tokens"],
          "add_generation_prompt false given explicitly: the same")
    st, out = post(srv, "/v1/chat/completions", {"messages": cont, "max_tokens": 8,
                                                 "temperature": 0,
                                                 "continue_final_message": True})
    st2, ref = post(srv, "/v1/completions", {"prompt": want + text_ids["tokens"],
                                             "max_tokens": 8, "temperature": 0})
    check(st == 200 and st2 == 200 and
          out["choices"][0]["message"]["content"] == ref["choices"][0]["text"],
          f"a chat completion continues the message: {out['choices'][0]['message']['content']!r}")
    for body, why in (({"messages": msgs, "continue_final_message": True}, "assistant"),
                      ({"messages": cont, "continue_final_message": True,
                        "add_generation_prompt": True}, "cannot both be true")):
        st, out = post(srv, "/v1/chat/completions", dict(body, max_tokens=2))
        check(st == 400 and why in out["error"]["message"] and
              out["error"]["param"] == "continue_final_message",
              f"continue_final_message refused: {why} ({st})")


def main():
    if not os.path.isfile(T.MODEL):
        print(f"SKIP: {T.MODEL} not found (run deploy/fetch-model.sh)")
        return 77
    srv = T.Server("--api-key", T.KEY, model=TINY)
    try:
        tiny_checks(srv)
    finally:
        check(srv.stop() == 0, "tiny-llama-bos server exits 0")
    srv2 = T.Server("--api-key", T.KEY)
    try:
        smollm2_checks(srv2)
    finally:
        check(srv2.stop() == 0, "SmolLM2 server exits 0")
    return T.report([srv, srv2])


if __name__ == "__main__":
    sys.exit(main())
