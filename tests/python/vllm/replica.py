"""One vLLM engine (a "replica") driven over stdin/stdout by the end-to-end tests.

    python replica.py --model DIR [--socket SOCK --stats-dir DIR] [--dtype float32]

Reads one JSON command per line on stdin; answers one line on stdout starting with `@@ `:
  {"op": "generate", "prompts": [[token ids], ...], "max_tokens": 8}
      -> {"outputs": [{"ids": [...], "num_cached_tokens": N}, ...]}
  {"op": "quit"} -> {"ok": true}, then exits.
Without --socket the engine runs without a KV connector (the reference)."""
import argparse
import json
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--socket", default="")
    ap.add_argument("--stats-dir", default="")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--load-async", action="store_true")
    ap.add_argument("--layerwise", action="store_true")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    a = ap.parse_args()

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kw = {}
    if a.socket:
        extra = {"socket": a.socket, "load_async": a.load_async, "layerwise": a.layerwise, "timeout_ms": 5000, "reconnect_s": 0.5}
        if a.stats_dir:
            extra["stats_dir"] = a.stats_dir
        kw["kv_transfer_config"] = {
            "kv_connector": "KvtierConnector",
            "kv_connector_module_path": "kvtier_vllm.connector",
            "kv_role": "kv_both",
            "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": extra,
        }
    llm = LLM(model=a.model, dtype=a.dtype, enforce_eager=True, enable_prefix_caching=False,
              max_model_len=a.max_model_len, block_size=a.block_size,
              max_num_batched_tokens=a.max_model_len, seed=0, tensor_parallel_size=a.tp, **kw)
    reply({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            reply({"ok": True})
            break
        if cmd["op"] == "generate":
            sp = SamplingParams(max_tokens=cmd.get("max_tokens", 8), temperature=0.0, ignore_eos=True)
            outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in cmd["prompts"]], sp, use_tqdm=False)
            reply({"outputs": [{"ids": list(o.outputs[0].token_ids), "num_cached_tokens": o.num_cached_tokens or 0}
                                for o in outs]})
        else:
            reply({"error": f"unknown op {cmd['op']}"})


def reply(obj) -> None:
    sys.stdout.write("@@ " + json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
