"""kvtier under real vLLM (CPU backend), end to end. Run by scripts/vllm_e2e.sh, which builds the
venv and the model and sets KVTIER_BIN, KVTIER_LIB and KVTIER_VLLM_MODEL.

Three engines start once for the module: a reference without kvtier, and two replicas with the
kvtier connector on the same agent socket (r1 loads synchronously, before the forward that uses
the blocks; r2 asynchronously, between scheduler steps). Each test starts its own agent (fresh pool directory)
on that socket, so every test also exercises the connector's reconnection to a new agent.
Generated ids are always compared with the reference's; `num_cached_tokens` counts only tokens
from kvtier (vLLM's prefix caching is off)."""
import json
import os
import shutil
import signal
import tempfile
import time

import pytest

from harness import Agent, Replica, corrupt, find_records, prompt

from kvtier_vllm import object_bytes
from kvtier_vllm.common import KeyMaker
from kvtier_vllm.config import NamespaceSpec

BS = 128
MODEL = os.environ.get("KVTIER_VLLM_MODEL", "")
KVTIER_BIN = os.environ.get("KVTIER_BIN", "")

SHARED = prompt(2, 600)
PROMPTS = {
    "same": prompt(1, 700),
    "exact": prompt(13, 640),  # whole blocks only
    "shared1": SHARED + prompt(3, 300),
    "shared2": SHARED + prompt(4, 200),
    "replica": prompt(5, 900),
    "killed_a": prompt(6, 800),
    "killed_b": prompt(7, 500),
    "killed_c": prompt(8, 650),
    "killed_after": prompt(9, 700),
    "corrupt1": prompt(10, 1000),
    "filler": prompt(11, 1100),
    "corrupt2": prompt(12, 700),
    "larger_than_arena": prompt(14, 1500),
}


def full_blocks(name):
    return len(PROMPTS[name]) // BS


@pytest.fixture(scope="module")
def env():
    if not MODEL or not KVTIER_BIN:
        pytest.fail("set KVTIER_VLLM_MODEL and KVTIER_BIN (scripts/vllm_e2e.sh does)")
    with open(os.path.join(MODEL, "config.json")) as f:
        cfg = json.load(f)
    head = cfg["hidden_size"] // cfg["num_attention_heads"]
    obj = object_bytes(cfg["num_hidden_layers"], BS, cfg["num_key_value_heads"], head, "float32")
    work = tempfile.mkdtemp(prefix="kvt-vllm-", dir="/tmp")  # short: Unix socket paths are limited
    keep = os.environ.get("KVTIER_KEEP_LOGS")
    socket = os.path.join(work, "agent.sock")
    t0 = time.time()
    replicas = []
    boot = None
    try:
        # The reference first, alone (less memory at once on a small machine).
        ref = Replica(_python(), MODEL, os.path.join(work, "ref.log"))
        replicas.append(ref)
        # One prompt per call, as in the tests (batching can change the numerics).
        refs = {name: ref.generate([p])[0]["ids"] for name, p in PROMPTS.items()}
        ref.close()
        print(f"\nreference engine: {time.time() - t0:.1f}s (logs in {work})")
        # An agent while the replicas start: an engine that finds none at start-up waits
        # reconnect_s before it tries again, and a test's first request could fall in that
        # window. Connected once, engines reconnect by themselves to each test's fresh agent.
        boot = Agent(KVTIER_BIN, socket, os.path.join(work, "data-boot"), obj,
                     os.path.join(work, "agent.log")).start()
        # r1 loads synchronously, layer by layer; r2 asynchronously.
        r1 = Replica(_python(), MODEL, os.path.join(work, "r1.log"), socket, os.path.join(work, "stats1"),
                     layerwise=True)
        replicas.append(r1)
        r2 = Replica(_python(), MODEL, os.path.join(work, "r2.log"), socket, os.path.join(work, "stats2"),
                     load_async=True)
        replicas.append(r2)
        r1.wait_ready()
        r2.wait_ready()
        boot.stop()
        print(f"two kvtier replicas up: {time.time() - t0:.1f}s")
        yield dict(work=work, socket=socket, obj=obj, refs=refs, r1=r1, r2=r2)
    finally:
        if boot:
            boot.stop()  # safe twice; here if the replicas did not start
        for r in replicas:
            r.close()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def agent(env, request):
    data = os.path.join(env["work"], f"data-{request.node.name}")
    a = Agent(KVTIER_BIN, env["socket"], data, env["obj"], os.path.join(env["work"], "agent.log")).start()
    yield a
    a.stop()


def _python():
    import sys
    return sys.executable


def run(env, replica, name):
    """Generates for prompt `name` on `replica`; checks the ids against the reference."""
    out = env[replica].generate([PROMPTS[name]])[0]
    assert out["ids"] == env["refs"][name], f"{name} on {replica}: ids differ from the run without kvtier"
    return out["num_cached_tokens"]


def delta(before, after, role, key):
    return after.get(role, {}).get(key, 0) - before.get(role, {}).get(key, 0)


def test_same_prompt_twice_loads_from_kvtier(env, agent):
    r1 = env["r1"]
    s0 = r1.stats()
    assert run(env, "r1", "same") == 0, "a fresh agent cannot hit"
    s1 = r1.stats()
    assert delta(s0, s1, "worker0", "saved_blocks") == full_blocks("same")
    # The 700-token prefill taught the scheduler its prefill rate (lookups weigh loads with it).
    assert delta(s0, s1, "scheduler", "prefill_samples") >= 1
    assert run(env, "r1", "same") == full_blocks("same") * BS
    s2 = r1.stats()
    assert delta(s1, s2, "worker0", "loaded_blocks") == full_blocks("same")
    assert delta(s1, s2, "worker0", "failed_blocks") == 0
    # Loaded layer by layer (the ids above match the run without kvtier); whether the forward
    # reached layer 0 before the last layer landed depends on timing: reported, not asserted.
    print(f"\nfirst-layer waits that returned before the last layer: "
          f"{delta(s1, s2, 'worker0', 'layer_waits_early')}")
    # A prompt of whole blocks: all of them load and vLLM computes only the last token.
    assert run(env, "r1", "exact") == 0
    assert run(env, "r1", "exact") == len(PROMPTS["exact"]) - 1


def test_a_prompt_larger_than_the_arena_loads_every_block(env):
    # An arena of 4 objects; the prompt's KV is 11 of them. Saves stream through the arena to the
    # pool, and the second run loads every full block back through it, window by window.
    record = (env["obj"] + 64 + 4095) // 4096 * 4096
    data = os.path.join(env["work"], "data-small-arena")
    a = Agent(KVTIER_BIN, env["socket"], data, env["obj"], os.path.join(env["work"], "agent.log"),
              arena_bytes=str(4 * record)).start()
    try:
        r1 = env["r1"]
        n = full_blocks("larger_than_arena")
        assert n * env["obj"] > 4 * record, "the prompt's KV must not fit in the arena"
        s0 = r1.stats()
        t = time.time()
        assert run(env, "r1", "larger_than_arena") == 0
        cold = time.time() - t
        s1 = r1.stats()
        assert delta(s0, s1, "worker0", "saved_blocks") == n
        t = time.time()
        assert run(env, "r1", "larger_than_arena") == n * BS
        warm = time.time() - t
        s2 = r1.stats()
        assert delta(s1, s2, "worker0", "loaded_blocks") == n
        assert delta(s1, s2, "worker0", "failed_blocks") == 0
        # Reported, not asserted (timings are for benchmarks): request time of the cold run and
        # of the run that loaded every block through the small arena.
        print(f"\nprompt of {n} blocks through an arena of 4: cold {cold * 1000:.0f} ms, "
              f"loaded from kvtier {warm * 1000:.0f} ms")
    finally:
        a.stop()


def test_shared_prefix_hits_the_shared_blocks(env, agent):
    assert run(env, "r1", "shared1") == 0
    # 600 shared tokens: 4 whole blocks; the 5th block differs.
    assert run(env, "r1", "shared2") == (len(SHARED) // BS) * BS


def test_other_replica_hits_what_the_first_stored(env, agent):
    r2 = env["r2"]
    assert run(env, "r1", "replica") == 0
    s0 = r2.stats()
    assert run(env, "r2", "replica") == full_blocks("replica") * BS
    s1 = r2.stats()
    assert delta(s0, s1, "worker0", "loaded_blocks") == full_blocks("replica")
    assert delta(s0, s1, "worker0", "failed_blocks") == 0


def test_agent_killed_while_serving_recomputes(env, agent):
    r1 = env["r1"]
    assert run(env, "r1", "killed_a") == 0
    # Kill the agent while a batch that hits (killed_a) and misses is being served.
    names = ["killed_a", "killed_b", "killed_c"]
    r1.send({"op": "generate", "prompts": [PROMPTS[n] for n in names], "max_tokens": 8})
    time.sleep(0.1)
    agent.kill()
    for n, out in zip(names, r1.result()):
        assert out["ids"] == env["refs"][n], f"{n}: wrong ids after the agent died"
    # With the agent gone: every request misses, answers correctly and promptly.
    t = time.time()
    assert run(env, "r1", "killed_a") == 0
    assert run(env, "r1", "killed_b") == 0
    assert time.time() - t < 30, "requests were held up by the dead agent"
    # A new agent on the same socket: the connector reconnects, stores and hits again.
    agent.start()
    # The connector retries a failed connection at most every reconnect_s: until it has, a
    # request misses and saves nothing. Run the prompt until its second run hits (bounded).
    deadline = time.time() + 60
    while True:
        run(env, "r1", "killed_after")
        if run(env, "r1", "killed_after") == full_blocks("killed_after") * BS:
            break
        assert time.time() < deadline, "the connector never reconnected to the new agent"


def test_corrupted_pool_objects_are_misses(env, agent):
    # corrupt1 then filler fill the first 4 MiB segment (sealed: recovery trusts its record
    # headers, so the damage is found by the checksum on load); corrupt2 lands in an unsealed
    # segment (recovery verifies it in full and drops the damaged record).
    for name in ("corrupt1", "filler", "corrupt2"):
        assert run(env, "r1", name) == 0
    agent.stop()  # SIGTERM: the write-behind queue is drained to the segment files
    records = find_records(agent.data)
    spec = NamespaceSpec(model=MODEL, revision="", kv_dtype="float32", layout_id="vllm-cpu",
                         tokens_per_block=BS, tp_size=1, tp_rank=0)
    damaged = {"corrupt1": 3, "corrupt2": 2}
    for name, block in damaged.items():
        keys = KeyMaker(spec).keys(PROMPTS[name], None, None, ())
        assert len(keys) == full_blocks(name)
        missing = [i for i, k in enumerate(keys) if k not in records]
        assert not missing, f"{name}: blocks {missing} not in the pool files after a clean stop"
        for path, off, length in records[keys[block]]:
            corrupt(path, off + length // 2)
    agent.start()
    r2 = env["r2"]
    for name, block in damaged.items():
        s0 = r2.stats()
        cached = run(env, "r2", name)  # ids equal the reference's: nothing corrupt was used
        s1 = r2.stats()
        failed = delta(s0, s1, "worker0", "failed_blocks")
        loaded = delta(s0, s1, "worker0", "loaded_blocks")
        if cached == block * BS:
            # Dropped on recovery: the stored prefix ends before the damaged block.
            assert failed == 0 and loaded == block, (name, cached, failed, loaded)
        else:
            # Found on load: the block fails its checksum and vLLM recomputes from it.
            assert cached == full_blocks(name) * BS, (name, cached)
            assert failed >= 1 and loaded >= block, (name, failed, loaded)
        print(f"{name}: {cached} tokens from kvtier, {loaded} blocks loaded, {failed} failed")
