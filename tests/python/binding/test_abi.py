"""The ctypes binding against the key vectors and the copy engine. Needs KVTIER_LIB (libkvtier.so;
ffi/tests/python_abi.rs sets it). `python test_abi.py` prints `N passed, N failed`; pytest runs it too."""
import ctypes
import json
import os

from _support import ROOT, checked, import_binding, run_as_script

kvtier = import_binding()


@checked
def test_key_vectors(check):
    with open(os.path.join(ROOT, "docs", "key-vectors.json"), encoding="utf-8") as f:
        vectors = json.load(f)
    check(len(vectors) > 0, "docs/key-vectors.json has vectors")
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


@checked
def test_errors(check):
    try:
        kvtier.Namespace("m", kv_dtype="bf16", layout_id="vllm-cpu", tokens_per_block=4, tp_size=2, tp_rank=5)
        check(False, "bad rank accepted")
    except kvtier.KvtierError as e:
        check(e.status == 2 and "tp_rank" in e.message, "bad rank error: %s" % e)


@checked
def test_copy_engine(check):
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
        check(bytes(dst[l][2 * per_block:3 * per_block]) == bytes(src[l][2 * per_block:3 * per_block]),
              "copied block")
        check(bytes(dst[l][:2 * per_block]) == bytes(2 * per_block), "other blocks untouched")
    try:
        layout.gather([ctypes.addressof(src[0])], 0, ctypes.addressof(obj))
        check(False, "wrong layer count accepted")
    except kvtier.KvtierError as e:
        check("layer" in e.message, "layer count error: %s" % e)


if __name__ == "__main__":
    run_as_script([test_key_vectors, test_errors, test_copy_engine])
