"""The connector's pure pieces (no vLLM engine): settings, extra keys, object size, and keys
through libkvtier (namespaces per rank, salt and LoRA)."""
import pytest

from kvtier_vllm.common import BlockOp, KeyMaker
from kvtier_vllm.config import NamespaceSpec, Settings, block_extras, object_bytes


def test_settings_reject_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown"):
        Settings.from_extra({"sockett": "/x"})
    with pytest.raises(ValueError, match="true or false"):
        Settings.from_extra({"load_async": "yes"})
    with pytest.raises(ValueError, match="negative"):
        Settings.from_extra({"timeout_ms": -1})
    s = Settings.from_extra({"socket": "/run/a.sock", "timeout_ms": "500"})
    assert (s.socket, s.timeout_ms, s.load, s.save) == ("/run/a.sock", 500, True, True)
    assert Settings.from_extra(None).socket.endswith("agent.sock")


def test_block_extras():
    assert block_extras(4, 16, None, ()) is None
    ex = block_extras(4, 16, "adapter", (("img", 20, 20),))
    assert all(b"lora:adapter" in e for e in ex)
    assert [b"mm:img" in e for e in ex] == [False, True, True, False]  # tokens 20..39: blocks 1, 2


def test_object_bytes():
    # BENCHMARKS.md's model: 8 layers, 2 KV heads of 128, bf16: 8 KiB per token.
    assert object_bytes(8, 128, 2, 128, "bfloat16") == 8192 * 128


def spec(rank=0):
    return NamespaceSpec(model="m", revision="", kv_dtype="bfloat16", layout_id="vllm-cpu",
                         tokens_per_block=16, tp_size=2, tp_rank=rank)


def test_keys_depend_on_rank_salt_lora_and_prefix():
    tokens = list(range(3, 3 + 16 * 4 + 5))
    k0 = KeyMaker(spec(0)).keys(tokens, None, None, ())
    assert len(k0) == 4 and len(set(k0)) == 4
    assert KeyMaker(spec(0)).keys(tokens, None, None, ()) == k0
    for other in (KeyMaker(spec(1)).keys(tokens, None, None, ()),
                  KeyMaker(spec(0)).keys(tokens, "tenant", None, ()),
                  KeyMaker(spec(0)).keys(tokens, None, "adapter", ())):
        assert not set(other) & set(k0)
    # Chained: a different token in block 2 changes blocks 2 and 3 only.
    changed = list(tokens)
    changed[40] += 1
    k1 = KeyMaker(spec(0)).keys(changed, None, None, ())
    assert k1[:2] == k0[:2] and k1[2] != k0[2] and k1[3] != k0[3]
    op = BlockOp(req_id="r", token_ids=tokens[:48], start=1, block_ids=[7, 9])
    assert KeyMaker(spec(0)).op_keys(op) == k0[1:3]


def test_prefill_rate_is_learnt_or_fixed():
    from kvtier_vllm.scheduler import PrefillRate

    r = PrefillRate()
    assert r.us_for(1000) == 0, "unknown until a step was measured"
    assert not r.learn(0, 1.0) and not r.learn(100, 0.0)
    assert r.learn(1000, 0.5)  # 500 us per token
    assert r.us_for(2000) == 1_000_000
    assert r.learn(1000, 1.0)  # moves a part of the way towards 1000 us per token
    assert 500 < r.us_per_token < 1000
    fixed = PrefillRate(250.0)
    assert not fixed.learn(1000, 5.0), "a rate the operator set is kept"
    assert fixed.us_for(4) == 1000
