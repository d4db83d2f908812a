#!/usr/bin/env python3
"""Golden SHA-256 vectors for adapters/store.c, computed with Python's hashlib.

Writes tests/fixtures/store/sha256_vectors.txt with lines:
  msg <n> <hex digest>        message = bytes((7*i + 3) % 256 for i in range(n))
  rep <n> <byte> <hex digest> message = bytes([byte]) * n
  dir <case> <hex digest>     version id of the adapter directory <case> (see DIR_CASES), using
                              the store's definition: files sorted by name; for each: name bytes,
                              NUL, size as 8 bytes little endian, contents.
Run: /work/venv-oracle/bin/python tests/oracle/gen_store_vectors.py
"""
import hashlib
import os
import struct


def pattern(n):
    return bytes((7 * i + 3) % 256 for i in range(n))


# name -> list of (filename, contents); the C test rebuilds the same directories.
DIR_CASES = {
    "config_only": [("adapter_config.json", b'{"peft_type": "LORA", "r": 8}\n')],
    "lora": [
        ("adapter_config.json", b'{"peft_type": "LORA", "r": 8}\n'),
        ("adapter_model.safetensors", pattern(100000)),
    ],
    "both": [
        ("adapter_model.safetensors", pattern(3)),
        ("adapter.safetensors", b""),
        ("adapter_config.json", b"{}"),
    ],
}


def dir_hash(files):
    h = hashlib.sha256()
    for name, data in sorted(files, key=lambda f: f[0].encode()):
        h.update(name.encode() + b"\0" + struct.pack("<Q", len(data)))
        h.update(data)
    return h.hexdigest()


def main():
    out = os.path.join(os.path.dirname(__file__), "..", "fixtures", "store", "sha256_vectors.txt")
    lines = []
    for n in list(range(0, 130)) + [1000, 4096, 65535, 65536, 65537, 300001]:
        lines.append(f"msg {n} {hashlib.sha256(pattern(n)).hexdigest()}")
    lines.append(f"rep 1000000 97 {hashlib.sha256(b'a' * 1000000).hexdigest()}")
    lines.append(f"rep 3 0 {hashlib.sha256(bytes(3)).hexdigest()}")
    for case, files in DIR_CASES.items():
        lines.append(f"dir {case} {dir_hash(files)}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} vectors to {out}")


if __name__ == "__main__":
    main()
