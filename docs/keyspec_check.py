#!/usr/bin/env python3
"""An independent implementation of docs/key-spec.md, written from the document alone.

    python3 docs/keyspec_check.py check      # verify docs/key-vectors.json (exit 1 on mismatch)
    python3 docs/keyspec_check.py generate   # rewrite docs/key-vectors.json from the cases below

Needs the `xxhash` package (pip install xxhash) for XXH3-128.
"""
import json
import os
import struct
import sys

import xxhash

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "key-vectors.json")


def u32le(x):
    return struct.pack("<I", x)


def bstr(b):
    return u32le(len(b)) + b


def namespace(ns):
    enc = b"kvtier-namespace" + u32le(1)
    for field in ("model", "revision", "kv_dtype", "layout_id"):
        enc += bstr(ns[field].encode("utf-8"))
    for field in ("tokens_per_block", "tp_size", "tp_rank", "pp_size", "pp_rank"):
        enc += u32le(ns[field])
    enc += bstr(bytes.fromhex(ns["salt_hex"]))
    return xxhash.xxh3_128_intdigest(enc)


def block_keys(ns, tokens, extras):
    b = ns["tokens_per_block"]
    prev = namespace(ns)
    keys = []
    for i in range(len(tokens) // b):
        msg = prev.to_bytes(16, "little")
        msg += b"".join(u32le(t) for t in tokens[i * b:(i + 1) * b])
        if i < len(extras):
            msg += b"".join(bstr(bytes.fromhex(e)) for e in extras[i])
        prev = xxhash.xxh3_128_intdigest(msg)
        keys.append(prev)
    return keys


def hex128(k):
    return "%032x" % k


BASE = {
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "revision": "0e9e39f249a16976918f6564b8830bc894c89659",
    "kv_dtype": "bfloat16",
    "layout_id": "vllm-flash",
    "tokens_per_block": 4,
    "tp_size": 1,
    "tp_rank": 0,
    "pp_size": 1,
    "pp_rank": 0,
    "salt_hex": "",
}
TOKENS = [128000, 9906, 11, 1268, 527, 499, 30, 358, 1097, 264, 11190, 18328, 13, 1102, 0, 4294967295, 7, 7, 7, 7, 42, 43]
LORA = "lora:sql-adapter".encode().hex()
IMG = "a3f1c2d4e5b60718293a4b5c6d7e8f90".lower()


def ns(**changes):
    d = dict(BASE)
    d.update(changes)
    return d


def cases():
    out = [
        ("empty prompt", ns(), [], []),
        ("partial block only", ns(), TOKENS[:3], []),
        ("exactly one block", ns(), TOKENS[:4], []),
        ("two blocks and a partial block", ns(), TOKENS[:10], []),
        ("base", ns(), TOKENS, []),
        ("model changed", ns(model="meta-llama/Llama-3.1-70B-Instruct"), TOKENS, []),
        ("revision changed", ns(revision="main"), TOKENS, []),
        ("revision empty", ns(revision=""), TOKENS, []),
        ("kv_dtype changed", ns(kv_dtype="float16"), TOKENS, []),
        ("layout changed", ns(layout_id="vllm-cpu"), TOKENS, []),
        ("tokens_per_block 2", ns(tokens_per_block=2), TOKENS, []),
        ("tp 2 rank 0", ns(tp_size=2), TOKENS, []),
        ("tp 2 rank 1", ns(tp_size=2, tp_rank=1), TOKENS, []),
        ("pp 2 rank 1", ns(pp_size=2, pp_rank=1), TOKENS, []),
        ("salt tenant-a", ns(salt_hex=b"tenant-a".hex()), TOKENS, []),
        ("salt tenant-b", ns(salt_hex=b"tenant-b".hex()), TOKENS, []),
        ("lora on every block", ns(), TOKENS, [[LORA]] * 5),
        ("image hash on block 2", ns(), TOKENS, [[], [], [IMG]]),
        ("empty extra item on block 1", ns(), TOKENS, [[], [""]]),
        ("two extra items on block 1", ns(), TOKENS, [[], [LORA, IMG]]),
        ("two extra items swapped", ns(), TOKENS, [[], [IMG, LORA]]),
        ("extra on the partial block only", ns(), TOKENS, [[], [], [], [], [], [IMG]]),
        ("one token per block", ns(tokens_per_block=1), TOKENS[:6], []),
        ("16-token blocks", ns(tokens_per_block=16, layout_id="vllm-cpu"), list(range(1000, 1100)), []),
        ("unicode model id", ns(model="日本語-モデル/ß"), TOKENS[:8], []),
        ("last token changed", ns(), TOKENS[:-3] + [44] + TOKENS[-2:], []),
    ]
    return out


def generate():
    vectors = []
    for name, n, tokens, extras in cases():
        vectors.append({
            "name": name,
            "namespace": n,
            "tokens": tokens,
            "extras": extras,
            "namespace_digest": hex128(namespace(n)),
            "keys": [hex128(k) for k in block_keys(n, tokens, extras)],
        })
    with open(VECTORS, "w", encoding="utf-8") as f:
        json.dump(vectors, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(vectors)} vectors to {VECTORS}")


def check():
    with open(VECTORS, encoding="utf-8") as f:
        vectors = json.load(f)
    bad = 0
    for v in vectors:
        digest = hex128(namespace(v["namespace"]))
        keys = [hex128(k) for k in block_keys(v["namespace"], v["tokens"], v["extras"])]
        if digest != v["namespace_digest"] or keys != v["keys"]:
            bad += 1
            print(f"MISMATCH: {v['name']}", file=sys.stderr)
    print(f"{len(vectors) - bad} passed, {bad} failed")
    return 1 if bad or not vectors else 0


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "check"
    if mode == "generate":
        generate()
    elif mode == "check":
        sys.exit(check())
    else:
        sys.exit(f"usage: {sys.argv[0]} check|generate")
