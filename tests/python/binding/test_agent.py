"""Two Python engine processes through a real agent. Needs KVTIER_LIB (libkvtier.so).

    python test_agent.py save|load SOCKET   one engine against a running agent (ffi/tests/python_abi.rs
                                            starts the agent and runs `save`, then `load`)
    pytest test_agent.py                    starts `$KVTIER_BIN up` itself (skipped without KVTIER_BIN)
"""
import ctypes
import os
import socket as sockets
import subprocess
import sys
import tempfile
import time


def engine(role: str, socket: str) -> None:
    from _support import import_binding

    kvtier = import_binding()
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
        # Every block is in the agent's memory: loading beats any recompute time.
        assert client.lookup(keys, recompute_us=1) == 256
        ids = [299 - i for i in range(256)]
        ticket = client.load_start(keys, ids)
        # Layers arrive in order; a layer's wait returns once it is in place for every block.
        for l in range(4):
            ready = ticket.wait_layer(l)
            assert l < ready <= 4, (l, ready)
        try:
            ticket.wait_layer(4)
            raise AssertionError("layer 4 of a 4-layer load was accepted")
        except kvtier.KvtierError as e:
            assert "out of range" in str(e), e
        flags = ticket.wait()
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


def test_one_process_saves_and_another_loads():
    import pytest

    binary = os.environ.get("KVTIER_BIN")
    if not binary:
        pytest.skip("set KVTIER_BIN to the `kvtier` binary (and KVTIER_LIB to libkvtier.so)")
    with tempfile.TemporaryDirectory(prefix="kvt-py-agent-") as work:
        sock = os.path.join(work, "agent.sock")
        # As ffi/tests/common/mod.rs starts it for the C and Python engine tests.
        agent = subprocess.Popen([binary, "up", "--arena-bytes", "24MiB", "--object-bytes", "32KiB",
                                  "--pool-bytes", "64MiB", "--segment-bytes", "4MiB", "--socket", sock,
                                  "--data", os.path.join(work, "data")], stdout=subprocess.DEVNULL)
        try:
            deadline = time.time() + 20
            while not all(_accepts(p) for p in (sock, sock + ".fd")):
                assert agent.poll() is None and time.time() < deadline, "the agent did not come up"
                time.sleep(0.02)
            for role, want in (("save", "saved 256"), ("load", "load ok")):
                out = subprocess.run([sys.executable, os.path.abspath(__file__), role, sock],
                                     capture_output=True, text=True, timeout=120)
                assert out.returncode == 0 and want in out.stdout, out.stdout + out.stderr
        finally:
            agent.kill()
            agent.wait()


def _accepts(path: str) -> bool:
    s = sockets.socket(sockets.AF_UNIX)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: test_agent.py save|load SOCKET")
    engine(sys.argv[1], sys.argv[2])
