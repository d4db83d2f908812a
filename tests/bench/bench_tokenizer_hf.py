#!/usr/bin/env python3
"""HF `tokenizers` single-threaded encode throughput on the same text as bench_tokenizer.c.

usage:
  build/tests/bench_tokenizer --write-text /tmp/bench.txt          # quiver numbers + the text
  RAYON_NUM_THREADS=1 /work/venv-oracle/bin/python tests/bench/bench_tokenizer_hf.py \
      --text /tmp/bench.txt [--tokenizer tests/fixtures/tokenizer/smollm2/tokenizer.json]

`Tokenizer.encode` of one string runs on one thread (rayon is only used by encode_batch);
RAYON_NUM_THREADS=1 and TOKENIZERS_PARALLELISM=false make sure of it. Prints MB/s of the best
run and the id count, which must equal the count bench_tokenizer prints.
"""
import argparse
import os
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import Tokenizer  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", required=True)
    ap.add_argument("--tokenizer",
                    default=os.path.join(ROOT, "tests/fixtures/tokenizer/smollm2/tokenizer.json"))
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    raw = open(a.text, "rb").read()
    text = raw.decode("utf-8")
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(a.tokenizer)
    load = time.perf_counter() - t0
    best, n = 1e30, 0
    for _ in range(a.runs):
        t0 = time.perf_counter()
        n = len(tok.encode(text, add_special_tokens=False).ids)
        best = min(best, time.perf_counter() - t0)
    print("HF tokenizers encode (one call): %.2f MiB text, %d ids, best of %d: %.3f s = %.2f MB/s "
          "(load %.3f s)" % (len(raw) / 1048576, n, a.runs, best, len(raw) / 1e6 / best, load))
    # the same 4 KiB-chunk cut as bench_tokenizer.c (byte offsets, then decoded per chunk)
    chunks, start = [], 0
    while start < len(raw):
        p = min(start + 4096, len(raw))
        while p < len(raw) and raw[p] != 0x0A:
            p += 1
        if p < len(raw):
            p += 1
        chunks.append(raw[start:p].decode("utf-8"))
        start = p
    best = 1e30
    for _ in range(a.runs):
        t0 = time.perf_counter()
        n = sum(len(tok.encode(c, add_special_tokens=False).ids) for c in chunks)
        best = min(best, time.perf_counter() - t0)
    print("HF tokenizers encode (4 KiB chunks): %d ids, best of %d: %.3f s = %.2f MB/s"
          % (n, a.runs, best, len(raw) / 1e6 / best))


if __name__ == "__main__":
    main()
