"""Pieces both sides share: the block operations sent from the scheduler to the workers, key
computation through libkvtier (the key spec lives only in Rust), a lazily (re)connecting agent
client, and counters."""
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import kvtier

from .config import KvShape, NamespaceSpec, Settings, block_extras

# A child of "vllm" so that vLLM's log configuration shows these lines.
log = logging.getLogger("vllm.kvtier")


@dataclass
class BlockOp:
    """Blocks `[start, end)` of one request to load or save, `end = len(token_ids) // block_size`.
    The worker computes the keys in its own rank's namespace."""

    req_id: str
    token_ids: List[int]
    start: int
    block_ids: List[int]
    salt: Optional[str] = None
    lora: Optional[str] = None
    mm: Tuple[Tuple[str, int, int], ...] = ()
    is_async: bool = False


def request_key_inputs(request: Any) -> Tuple[Optional[str], Optional[str], Tuple[Tuple[str, int, int], ...]]:
    """(cache_salt, LoRA name, multimodal items) of a vLLM request: what goes into its keys
    besides the tokens."""
    salt = getattr(request, "cache_salt", None) or None
    lora_req = getattr(request, "lora_request", None)
    lora = getattr(lora_req, "lora_name", None) if lora_req is not None else None
    mm = []
    for f in getattr(request, "mm_features", None) or []:
        pos = f.mm_position
        mm.append((str(f.identifier), int(pos.offset), int(pos.length)))
    return salt, lora, tuple(mm)


class KeyMaker:
    """Block keys of one rank, one libkvtier namespace per cache salt."""

    def __init__(self, spec: NamespaceSpec):
        self.spec = spec
        self._ns: Dict[Optional[str], kvtier.Namespace] = {}

    def _namespace(self, salt: Optional[str]) -> kvtier.Namespace:
        ns = self._ns.get(salt)
        if ns is None:
            s = self.spec
            ns = kvtier.Namespace(s.model, revision=s.revision, kv_dtype=s.kv_dtype, layout_id=s.layout_id,
                                  tokens_per_block=s.tokens_per_block, tp_size=s.tp_size, tp_rank=s.tp_rank,
                                  salt=(salt or "").encode())
            if len(self._ns) > 1024:  # many tenants: keep the map bounded
                self._ns.clear()
            self._ns[salt] = ns
        return ns

    def keys(self, token_ids: List[int], salt: Optional[str], lora: Optional[str],
             mm: Tuple[Tuple[str, int, int], ...]) -> List[int]:
        """Keys of every full block of `token_ids`."""
        bs = self.spec.tokens_per_block
        n = len(token_ids) // bs
        return self._namespace(salt).block_keys(token_ids[:n * bs], block_extras(n, bs, lora, mm))

    def op_keys(self, op: BlockOp) -> List[int]:
        return self.keys(op.token_ids, op.salt, op.lora, op.mm)[op.start:]


class Agent:
    """A kvtier client that connects on first use and, while the agent is unreachable, tries
    again at most every `settings.reconnect_s` (calls in between fail fast as misses). Once
    connected, libkvtier reconnects by itself after an agent restart."""

    def __init__(self, settings: Settings, shape: KvShape, engine: str, stats: "Stats"):
        self.settings = settings
        self.shape = shape
        self.engine = engine
        self.stats = stats
        self.layout = kvtier.Layout(shape.kind, **shape.layout_args())
        self.on_connect = None  # called with the new client (the worker registers its memory)
        self._client: Optional[kvtier.Client] = None
        self._next_try = 0.0
        self._down_logged = False

    def client(self) -> Optional[kvtier.Client]:
        if self._client is not None:
            return self._client
        now = time.monotonic()
        if now < self._next_try:
            return None
        self._next_try = now + self.settings.reconnect_s
        try:
            c = kvtier.Client(self.settings.socket, self.layout, engine=self.engine,
                              timeout_ms=self.settings.timeout_ms, load_budget_ms=self.settings.load_budget_ms)
            if self.on_connect is not None:
                self.on_connect(c)
        except kvtier.KvtierError as e:
            self.stats.add("connect_errors")
            if not self._down_logged:
                log.warning("kvtier: agent at %s not reachable (%s); serving without it, retrying every %.1fs",
                            self.settings.socket, e, self.settings.reconnect_s)
                self._down_logged = True
            return None
        if self._down_logged:
            log.warning("kvtier: connected to the agent at %s", self.settings.socket)
        self._down_logged = False
        self._client = c
        return c

    def failed(self, what: str, e: Exception) -> None:
        """Counts a failed call; logs the first of a run of failures."""
        self.stats.add(what)
        if not self._down_logged:
            log.warning("kvtier: agent call failed (%s: %s); misses until it answers again", what, e)
            self._down_logged = True

    def ok(self) -> None:
        if self._down_logged:
            log.warning("kvtier: agent calls succeed again")
        self._down_logged = False


class Stats:
    """Counters of one connector process, written as JSON to `stats_dir/ROLE-PID.json` when they
    changed (for tests and operators; nothing is written without `stats_dir`)."""

    def __init__(self, stats_dir: str, role: str):
        self.counts: Dict[str, int] = {}
        self._lock = threading.Lock()
        self._dirty = False
        self._path = os.path.join(stats_dir, f"{role}-{os.getpid()}.json") if stats_dir else ""
        if stats_dir:
            os.makedirs(stats_dir, exist_ok=True)
            self._dirty = True
            self.flush()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n
            self._dirty = True

    def flush(self) -> None:
        if not self._path or not self._dirty:
            return
        with self._lock:
            data = json.dumps(self.counts, sort_keys=True)
            self._dirty = False
        tmp = self._path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(data)
            os.replace(tmp, self._path)
        except OSError as e:
            log.warning("kvtier: cannot write stats to %s: %s", self._path, e)
