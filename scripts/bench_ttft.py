"""TTFT of kvtier under vLLM's OpenAI server against vLLM's own baselines, on this machine's CPU.

Starts a kvtier agent and vLLM servers itself, then measures the median time to first token over
prompts of each size (fresh random token ids per round), for:
  miss             prefill from scratch (server A, kvtier connector; the save is part of it)
  kvtier_same      kvtier hit on the replica that stored it (server A, prefix caching off)
  kvtier_other     kvtier hit on another replica (server B, same agent)
  kvtier_layerwise kvtier_same with layer-wise loads on: layer i computes while later layers are
                   copied (server W, same agent; kvtier_same waits for the whole load at layer 0)
  kvtier_pool      kvtier hit through an arena smaller than the request (server A, a second agent
                   with --pool-arena-bytes): most blocks come from the pool (the share is reported)
  example          vLLM's ExampleConnector hit (server C, files under a scratch folder)
  prefix_cache     vLLM's in-memory prefix-cache hit (server D, no connector): the floor
Servers A and B run together, then C and D. Two lower bounds go with them: the prompt's KV bytes
over this machine's memory copy bandwidth (bound_copy) and over its disk's read bandwidth
(bound_disk, `kvtier bench disk`).
Run with the vLLM venv's python (scripts/vllm_setup.sh bench builds it and the model, and installs
this checkout's kvtier and kvtier-vllm packages into it, which the servers import):
    python scripts/bench_ttft.py --model DIR --kvtier-bin target/release/kvtier \
        --kvtier-lib target/release/libkvtier.so [--sizes 2048,4096,8192] [--rounds 3] [--json]
Progress goes to stderr; the table (or --json) to stdout."""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CASES = ["miss", "kvtier_same", "kvtier_layerwise", "kvtier_other", "kvtier_pool", "example", "prefix_cache"]
BLOCK = 128


def progress(msg: str) -> None:
    print(f"[bench ttft] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(port: int, path: str) -> bool:
    """Whether GET `path` on 127.0.0.1:`port` answers 200."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", path)
        return c.getresponse().status == 200
    except OSError:
        return False


class Server:
    """One `vllm.entrypoints.openai.api_server` process."""

    def __init__(self, name: str, a, work: str, env: dict, kv_config, prefix_caching: bool):
        self.name, self.port = name, free_port()
        self.log_path = os.path.join(work, f"{name}.log")
        args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", a.model,
                "--port", str(self.port), "--host", "127.0.0.1", "--dtype", "bfloat16", "--enforce-eager",
                "--block-size", str(BLOCK), "--max-model-len", str(max(a.sizes) + a.extra_tokens + 256),
                "--max-num-batched-tokens", str(a.max_num_batched_tokens), "--uvicorn-log-level", "warning",
                "--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching", "--seed", "0"]
        if kv_config:
            args += ["--kv-transfer-config", json.dumps(kv_config)]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server {self.name} exited ({self.proc.returncode}); see {self.log_path}")
            if http_ok(self.port, "/health"):
                return
            time.sleep(1)
        raise RuntimeError(f"vLLM server {self.name} not ready within {timeout}s; see {self.log_path}")

    def ttft(self, prompt, model: str) -> float:
        """Seconds from sending a streamed completion request to its first token."""
        body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 2, "temperature": 0.0,
                           "stream": True, "ignore_eos": True})
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        t0 = time.perf_counter()
        c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError(f"{self.name}: HTTP {r.status}: {r.read()[:500]!r}")
        first = None
        for line in r:
            if line.startswith(b"data: ") and first is None and line.strip() != b"data: [DONE]":
                first = time.perf_counter() - t0
        c.close()
        if first is None:
            raise RuntimeError(f"{self.name}: no token streamed")
        return first

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._log.close()


def kvtier_config(sock: str, stats_dir: str, layerwise: bool = False) -> dict:
    return {"kv_connector": "KvtierConnector", "kv_connector_module_path": "kvtier_vllm.connector",
            "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": {"socket": sock, "reconnect_s": 0.5, "stats_dir": stats_dir,
                                          "layerwise": layerwise}}


def connector_counts(stats_dir: str) -> dict:
    """The connector's counters of one server, summed over its processes."""
    out = {}
    for name in os.listdir(stats_dir) if os.path.isdir(stats_dir) else []:
        if name.endswith(".json"):
            try:
                with open(os.path.join(stats_dir, name)) as f:
                    for k, v in json.load(f).items():
                        out[k] = out.get(k, 0) + v
            except (OSError, ValueError):
                pass
    return out


# Connector timings reported per hit (microseconds, summed over the request's steps).
TIMINGS = ("lookup_us", "load_wait_us", "load_finish_us", "save_us")


def scrape_hits(port: int) -> dict:
    """The agent's kvtier_hits_total by tier."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("kvtier_hits_total{"):
            tier = line.split('tier="', 1)[1].split('"', 1)[0]
            out[tier] = float(line.rsplit(" ", 1)[1])
    return out


def copy_bandwidth() -> float:
    """Bytes per second of one large memory copy (best of 5)."""
    src, dst = bytearray(256 << 20), bytearray(256 << 20)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        dst[:] = src
        best = max(best, len(src) / (time.perf_counter() - t0))
    return best


def disk_read_bandwidth(kvtier_bin: str, work: str) -> float:
    """Bytes per second of O_DIRECT reads on the scratch folder's disk (`kvtier bench disk`)."""
    out = subprocess.run([kvtier_bin, "bench", "disk", "--dir", work, "--total", "1GiB", "--rounds", "1",
                          "--json"], check=True, capture_output=True, text=True).stdout
    phases = {p["name"]: p["gbps"] for p in json.loads(out)["phases"]}
    return phases["raw_read"] * 1e9


def object_bytes(model: str) -> int:
    with open(os.path.join(model, "config.json")) as f:
        c = json.load(f)
    head = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return c["num_hidden_layers"] * 2 * BLOCK * c["num_key_value_heads"] * head * 2  # bf16


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="model directory (scripts/vllm_setup.sh bench)")
    ap.add_argument("--kvtier-bin", required=True, help="the `kvtier` binary")
    ap.add_argument("--kvtier-lib", required=True, help="libkvtier.so")
    ap.add_argument("--sizes", default="2048,4096,8192", help="prompt sizes in tokens, comma-separated")
    ap.add_argument("--rounds", type=int, default=3, help="prompts per size (medians are reported)")
    ap.add_argument("--extra-tokens", type=int, default=0,
                    help="tokens added to each prompt size. At a multiple of the block size (128) "
                         "vLLM's prefix cache recomputes the whole last block while a connector "
                         "loads it and computes one token; 1 makes both compute one token")
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--arena-bytes", default="4GiB", help="the agent's arena (kvtier_same, kvtier_other)")
    ap.add_argument("--pool-arena-bytes", default="64MiB",
                    help="the arena of the second agent (kvtier_pool): smaller than the prompts' KV")
    ap.add_argument("--kv-cache-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE of each server")
    ap.add_argument("--startup-timeout", type=float, default=600)
    ap.add_argument("--cases", default=",".join(CASES), help=f"subset of {','.join(CASES)}")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    a.sizes = [int(s) for s in a.sizes.split(",") if s]
    cases = [c for c in a.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        ap.error(f"unknown cases {sorted(unknown)}")
    with open(os.path.join(a.model, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]

    work = tempfile.mkdtemp(prefix="kvtier-ttft-", dir="/tmp")
    env = dict(os.environ)
    env.update({
        "KVTIER_LIB": os.path.abspath(a.kvtier_lib),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_TARGET_DEVICE": "cpu",
        "TMPDIR": work, "VLLM_CACHE_ROOT": os.path.join(work, "vllm-cache"), "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CPU_KVCACHE_SPACE": str(a.kv_cache_gib),
        # Same thread count with and without a connector (vLLM reserves a core for connectors).
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "1",
    })
    sock = os.path.join(work, "agent.sock")
    stats_of = {n: os.path.join(work, f"connector-stats-{n}") for n in ("A", "B", "W")}
    agent = None
    results = {c: {} for c in cases}

    def prompt_for(size: int, r: int):
        rng = random.Random(size * 1000 + r)
        return [rng.randrange(3, vocab) for _ in range(size + (a.extra_tokens if r >= 0 else 0))]

    def phase(specs, passes) -> None:
        """Starts `specs` (name, kv config, prefix caching) together; for each of `passes`
        (setup, measure), runs `setup(servers)` then `measure(servers, prompt)` on every prompt;
        then stops them (two servers at a time fit a small machine)."""
        servers = {}
        try:
            for name, kv, pc in specs:
                servers[name] = Server(name, a, work, env, kv, prefix_caching=pc)
            t0 = time.time()
            for srv in servers.values():
                progress(f"waiting for vLLM server {srv.name} (log {srv.log_path})")
                srv.wait_ready(a.startup_timeout)
            progress(f"servers {', '.join(servers)} up in {time.time() - t0:.0f}s")
            for srv in servers.values():  # the first request of a server pays one-time costs
                srv.ttft(prompt_for(256, -1), a.model)
            for setup, measure in passes:
                if setup:
                    setup(servers)
                for size in a.sizes:
                    for r in range(a.rounds):
                        got = measure(servers, prompt_for(size, r))
                        for c, v in got.items():
                            results.setdefault(c, {}).setdefault(size, []).append(v)
                        progress(f"{size} tokens, round {r + 1}/{a.rounds}: " +
                                 ", ".join(f"{c} {v * 1000:.0f} ms" for c, v in got.items()))
        finally:
            for srv in servers.values():
                srv.stop()

    timings = {}  # case -> timing -> size -> [us per hit]
    hits_measured = [0]

    def timed_hit(case, srv, prompt):
        before = connector_counts(stats_of[srv.name])
        t = srv.ttft(prompt, a.model)
        after = connector_counts(stats_of[srv.name])
        size = len(prompt) - a.extra_tokens
        for k in TIMINGS:
            timings.setdefault(case, {}).setdefault(k, {}).setdefault(size, []).append(
                after.get(k, 0) - before.get(k, 0))
        return t

    def measure_kvtier(servers, prompt):
        got = {}
        got["miss"] = servers["A"].ttft(prompt, a.model)  # prefill; its blocks are saved to kvtier
        # The two hits from the arena take turns going first.
        hits = [("kvtier_same", "A"), ("kvtier_layerwise", "W")]
        if hits_measured[0] % 2:
            hits.reverse()
        hits_measured[0] += 1
        for case, name in hits:
            if case in cases:
                got[case] = timed_hit(case, servers[name], prompt)
        if "B" in servers:
            got["kvtier_other"] = timed_hit("kvtier_other", servers["B"], prompt)
        return got

    pool_share = {}

    def measure_pool(servers, prompt):
        servers["A"].ttft(prompt, a.model)  # a miss on this agent: saved through its small arena
        before = scrape_hits(agent_port)
        got = {"kvtier_pool": timed_hit("kvtier_pool", servers["A"], prompt)}
        after = scrape_hits(agent_port)
        d = {t: after.get(t, 0) - before.get(t, 0) for t in after}
        total = sum(d.values())
        pool_share.setdefault(len(prompt) - a.extra_tokens, []).append(d.get("pool", 0) / total if total else 0.0)
        return got

    def measure_vllm(servers, prompt):
        got = {}
        if "C" in servers:
            servers["C"].ttft(prompt, a.model)  # stores its files
            got["example"] = servers["C"].ttft(prompt, a.model)
        if "D" in servers:
            servers["D"].ttft(prompt, a.model)  # fills the prefix cache
            got["prefix_cache"] = servers["D"].ttft(prompt, a.model)
        return got

    agent_port = 0  # the running agent's metrics port

    def start_agent(arena: str, data: str):
        nonlocal agent, agent_port
        port = agent_port = free_port()
        progress(f"starting a kvtier agent: arena {arena}, {object_bytes(a.model) >> 10} KiB objects")
        agent = subprocess.Popen([a.kvtier_bin, "up", "--socket", sock, "--data", os.path.join(work, data),
                                  "--arena-bytes", arena, "--object-bytes", str(object_bytes(a.model)),
                                  "--pool-bytes", "16GiB", "--metrics-addr", f"127.0.0.1:{port}"],
                                 stdout=open(os.path.join(work, f"agent-{data}.log"), "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            if agent.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"kvtier agent did not start; see {work}/agent-{data}.log")
            if http_ok(port, "/readyz"):
                return
            time.sleep(0.1)

    def stop_agent():
        nonlocal agent
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(60)
            except subprocess.TimeoutExpired:
                agent.kill()
            agent = None

    def small_arena(servers):
        """The second agent on the same socket; the connector reconnects to it by itself."""
        stop_agent()
        start_agent(a.pool_arena_bytes, "pool-small-arena")
        warm = prompt_for(256, -2)
        deadline = time.time() + 60
        while True:  # until the connector has reconnected: a repeated prompt hits
            servers["A"].ttft(warm, a.model)
            before = scrape_hits(agent_port)
            servers["A"].ttft(warm, a.model)
            if sum(scrape_hits(agent_port).values()) > sum(before.values()):
                return
            if time.time() > deadline:
                raise RuntimeError("the connector did not reconnect to the second agent")

    try:
        kvtier_cases = {"miss", "kvtier_same", "kvtier_layerwise", "kvtier_other"} & set(cases)
        passes = []
        if kvtier_cases:
            start_agent(a.arena_bytes, "pool")  # before the servers: they connect at start
            passes.append((None, measure_kvtier))
        if "kvtier_pool" in cases:
            if kvtier_cases:
                passes.append((small_arena, measure_pool))
            else:
                start_agent(a.pool_arena_bytes, "pool-small-arena")
                passes.append((None, measure_pool))
        if passes:
            # Prefix caching off: a repeated prompt can only hit through the connector.
            specs = [("A", kvtier_config(sock, stats_of["A"]), False)]
            if "kvtier_layerwise" in cases:
                specs.append(("W", kvtier_config(sock, stats_of["W"], layerwise=True), False))
            if "kvtier_other" in cases:
                specs.append(("B", kvtier_config(sock, stats_of["B"]), False))
            phase(specs, passes)
            stop_agent()
        specs = []
        if "example" in cases:
            store = os.path.join(work, "example-store")
            os.makedirs(store)
            specs.append(("C", {"kv_connector": "ExampleConnector", "kv_role": "kv_both",
                                "kv_connector_extra_config": {"shared_storage_path": store}}, False))
        if "prefix_cache" in cases:
            specs.append(("D", None, True))  # no connector: vLLM alone, its prefix cache on
        if specs:
            phase(specs, [(None, measure_vllm)])
        copy_bw = copy_bandwidth()
        disk_bw = disk_read_bandwidth(a.kvtier_bin, work)
        progress(f"memory copy {copy_bw / 1e9:.1f} GB/s, disk read {disk_bw / 1e9:.2f} GB/s")
    finally:
        stop_agent()
        if a.keep:
            progress(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    med = {c: {size: statistics.median(v) for size, v in results[c].items()} for c in cases}
    floor = med.get("prefix_cache", {})
    obj = object_bytes(a.model)
    kv = {size: (size // BLOCK) * obj for size in a.sizes}  # bytes of the prompt's whole blocks
    bounds = {"bound_copy": {size: kv[size] / copy_bw for size in a.sizes},
              "bound_disk": {size: kv[size] / disk_bw for size in a.sizes}}
    share = {size: statistics.median(v) for size, v in pool_share.items()}
    # Median connector time per hit, ms: case -> timing -> size.
    tmed = {c: {k: {size: statistics.median(v) / 1000 for size, v in d.items()} for k, d in t.items()}
            for c, t in timings.items()}
    if a.json:
        print(json.dumps({"model": a.model, "rounds": a.rounds, "sizes": a.sizes,
                          "extra_tokens": a.extra_tokens, "arena_bytes": a.arena_bytes,
                          "pool_arena_bytes": a.pool_arena_bytes,
                          "kv_bytes": {str(k): v for k, v in kv.items()},
                          "copy_bytes_per_s": copy_bw, "disk_read_bytes_per_s": disk_bw,
                          "bounds_s": {b: {str(k): v for k, v in d.items()} for b, d in bounds.items()},
                          "kvtier_pool_share_from_pool": {str(k): v for k, v in share.items()},
                          "connector_ms_per_hit": {c: {k: {str(size): v for size, v in d.items()}
                                                       for k, d in t.items()} for c, t in tmed.items()},
                          "median_ttft_s": {
            c: {str(size): v for size, v in med[c].items()} for c in cases},
            "samples_s": {c: {str(size): v for size, v in results[c].items()} for c in cases},
            "ratio_to_prefix_cache": {c: {str(size): v / floor[size] for size, v in med[c].items() if size in floor}
                                      for c in cases}}, indent=1))
    else:
        print(f"median TTFT, {a.rounds} rounds ({a.model}), prompts of SIZE+{a.extra_tokens} tokens; "
              f"(x floor) = ratio to prefix_cache")
        print("case            " + "".join(f"{size:>20}" for size in a.sizes))
        for c in cases + list(bounds):
            row = ""
            for size in a.sizes:
                v = med[c].get(size) if c in med else bounds[c][size]
                ratio = f" ({v / floor[size]:.2f}x)" if v is not None and size in floor else ""
                row += f"{(f'{v * 1000:.0f} ms' + ratio) if v is not None else '-':>20}"
            print(f"{c:<16}{row}")
        print("KV bytes        " + "".join(f"{f'{kv[size] / 2**20:.0f} MiB':>20}" for size in a.sizes))
        for c, t in tmed.items():
            print(f"{c}: connector ms per hit (" + " / ".join(TIMINGS) + "): " + ", ".join(
                f"{size}: " + " / ".join(f"{t[k].get(size, 0):.0f}" for k in TIMINGS) for size in a.sizes))
        if share:
            print("kvtier_pool: share of blocks from the pool " +
                  ", ".join(f"{size}: {share[size]:.0%}" for size in a.sizes if size in share))
        print(f"memory copy {copy_bw / 1e9:.1f} GB/s, disk read {disk_bw / 1e9:.2f} GB/s "
              f"(kvtier bench disk), arena {a.arena_bytes}, small arena {a.pool_arena_bytes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
