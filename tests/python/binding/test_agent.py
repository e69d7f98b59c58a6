"""Two Python engine processes through a real agent: `test_agent.py save|load SOCKET`.
Run by ffi/tests/python_abi.rs with KVTIER_LIB set."""
import ctypes
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import kvtier  # noqa: E402

role, socket = sys.argv[1], sys.argv[2]
# The same layout as the C test (32 KiB objects), so the agent started for it fits.
layout = kvtier.Layout("vllm-cpu", num_layers=4, num_blocks=300, block_size=16, num_kv_heads=2,
                       head_size=64, dtype="bfloat16")
ns = kvtier.Namespace("python-test/model", kv_dtype="bfloat16", layout_id="vllm-cpu", tokens_per_block=16)
tokens = [(i * 7919) % 128000 for i in range(256 * 16)]
keys = ns.block_keys(tokens)
assert len(keys) == 256
block_bytes = layout.layer_bytes // 300


def pattern(layer, i):
    return ((i * 2654435761) >> 7 ^ layer * 37) & 0xFF


layers = [(ctypes.c_uint8 * layout.layer_bytes)() for _ in range(4)]
client = kvtier.Client(socket, layout, engine="python " + role)
client.register_kv([ctypes.addressof(l) for l in layers])
if role == "save":
    for l, buf in enumerate(layers):
        ctypes.memmove(buf, bytes(pattern(l, i) for i in range(layout.layer_bytes)), layout.layer_bytes)
    stored = client.save(keys, list(range(256)))
    assert stored == 256, stored
    assert client.save(keys, list(range(256))) == 0, "dedup"
    print("saved", stored)
elif role == "load":
    assert client.lookup(keys) == 256
    ids = [299 - i for i in range(256)]
    flags = client.load(keys, ids)
    assert all(flags), flags
    for l, buf in enumerate(layers):
        data = bytes(buf)
        for i, b in enumerate(ids):
            got = data[b * block_bytes:(b + 1) * block_bytes]
            want = bytes(pattern(l, i * block_bytes + j) for j in range(block_bytes))
            assert got == want, f"layer {l} block {i}"
    print("load ok")
else:
    sys.exit("usage: test_agent.py save|load SOCKET")
