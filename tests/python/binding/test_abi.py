"""The ctypes binding against the key vectors and the copy engine. Run with KVTIER_LIB set
(ffi/tests/python_abi.rs does that); prints `N passed, N failed`."""
import ctypes
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import kvtier  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what, file=sys.stderr)


with open(os.path.join(ROOT, "docs", "key-vectors.json"), encoding="utf-8") as f:
    vectors = json.load(f)
for v in vectors:
    n = v["namespace"]
    ns = kvtier.Namespace(n["model"], revision=n["revision"], kv_dtype=n["kv_dtype"],
                          layout_id=n["layout_id"], tokens_per_block=n["tokens_per_block"],
                          tp_size=n["tp_size"], tp_rank=n["tp_rank"], pp_size=n["pp_size"],
                          pp_rank=n["pp_rank"], salt=bytes.fromhex(n["salt_hex"]))
    extras = [[bytes.fromhex(e) for e in block] for block in v["extras"]]
    keys = ["%032x" % k for k in ns.block_keys(v["tokens"], extras)]
    check("%032x" % ns.digest == v["namespace_digest"], v["name"] + " namespace")
    check(keys == v["keys"], v["name"] + " keys")

try:
    kvtier.Namespace("m", kv_dtype="bf16", layout_id="vllm-cpu", tokens_per_block=4, tp_size=2, tp_rank=5)
    check(False, "bad rank accepted")
except kvtier.KvtierError as e:
    check(e.status == 2 and "tp_rank" in e.message, "bad rank error: %s" % e)

layout = kvtier.Layout("vllm-cpu", num_layers=2, num_blocks=4, block_size=16, num_kv_heads=2,
                       head_size=8, dtype="bfloat16")
src = [(ctypes.c_uint8 * layout.layer_bytes)(*[(i * 7 + l) % 251 for i in range(layout.layer_bytes)])
       for l in range(2)]
dst = [(ctypes.c_uint8 * layout.layer_bytes)() for _ in range(2)]
obj = (ctypes.c_uint8 * layout.object_len)()
layout.gather([ctypes.addressof(b) for b in src], 2, ctypes.addressof(obj))
layout.scatter([ctypes.addressof(b) for b in dst], 2, ctypes.addressof(obj))
per_block = layout.layer_bytes // 4
for l in range(2):
    check(bytes(dst[l][2 * per_block:3 * per_block]) == bytes(src[l][2 * per_block:3 * per_block]), "copied block")
    check(bytes(dst[l][:2 * per_block]) == bytes(2 * per_block), "other blocks untouched")
try:
    layout.gather([ctypes.addressof(src[0])], 0, ctypes.addressof(obj))
    check(False, "wrong layer count accepted")
except kvtier.KvtierError as e:
    check("layer" in e.message, "layer count error: %s" % e)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
