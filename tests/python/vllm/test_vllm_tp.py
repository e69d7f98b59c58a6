"""kvtier under real vLLM with two tensor-parallel workers (CPU backend): each rank saves and
loads its own objects (its rank is in the key namespace), and the scheduler counts a prefix only
when every rank holds it. Run by scripts/vllm_e2e.sh after test_vllm_e2e.py (whose engines are
closed by then)."""
import json
import os
import shutil
import tempfile

import pytest

from harness import Agent, Replica, prompt

from kvtier_vllm import object_bytes

BS = 128
MODEL = os.environ.get("KVTIER_VLLM_MODEL", "")
KVTIER_BIN = os.environ.get("KVTIER_BIN", "")


def test_each_rank_saves_and_loads_its_own_blocks():
    if not MODEL or not KVTIER_BIN:
        pytest.fail("set KVTIER_VLLM_MODEL and KVTIER_BIN (scripts/vllm_e2e.sh does)")
    with open(os.path.join(MODEL, "config.json")) as f:
        cfg = json.load(f)
    head = cfg["hidden_size"] // cfg["num_attention_heads"]
    # Each rank holds half the KV heads: objects of half the size.
    obj = object_bytes(cfg["num_hidden_layers"], BS, cfg["num_key_value_heads"] // 2, head, "float32")
    work = tempfile.mkdtemp(prefix="kvt-vllm-tp-", dir="/tmp")
    socket = os.path.join(work, "agent.sock")
    agent = Agent(KVTIER_BIN, socket, os.path.join(work, "data"), obj, os.path.join(work, "agent.log")).start()
    # Two CPU workers on this machine's cores, one each (vLLM's automatic binding wants NUMA nodes).
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="0|1", VLLM_CPU_NUM_OF_RESERVED_CPU="0")
    r = Replica(os.sys.executable, MODEL, os.path.join(work, "tp.log"), socket, os.path.join(work, "stats"),
                env=env, tp=2)
    try:
        p = prompt(20, 900)
        blocks = len(p) // BS
        miss = r.generate([p])[0]
        assert miss["num_cached_tokens"] == 0
        s0 = r.stats()
        for rank in ("worker0", "worker1"):
            assert s0[rank].get("saved_blocks") == blocks, (rank, s0)
            assert s0[rank].get("save_skipped_blocks", 0) == 0, "the ranks' keys collide"
        hit = r.generate([p])[0]
        assert hit["num_cached_tokens"] == blocks * BS
        assert hit["ids"] == miss["ids"]
        s1 = r.stats()
        for rank in ("worker0", "worker1"):
            assert s1[rank].get("loaded_blocks", 0) - s0[rank].get("loaded_blocks", 0) == blocks, (rank, s1)
            assert s1[rank].get("failed_blocks", 0) == 0
    finally:
        r.close()
        agent.stop()
        if not os.environ.get("KVTIER_KEEP_LOGS"):
            shutil.rmtree(work, ignore_errors=True)
