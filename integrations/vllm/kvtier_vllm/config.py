"""What the connector reads: its settings (`kv_connector_extra_config`), the KV shape from vLLM's
KV cache config, and the key namespace of one rank. Pure code, no I/O."""
import os
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

# vLLM torch dtypes by kvtier name (the names `kvtier.Namespace`/`kvtier.Layout` accept).
_DTYPE_NAMES = {
    "torch.float16": "float16",
    "torch.bfloat16": "bfloat16",
    "torch.float32": "float32",
    "torch.float8_e4m3fn": "fp8_e4m3",
    "torch.float8_e5m2": "fp8_e5m2",
}
_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "fp8_e4m3": 1, "fp8_e5m2": 1}


def default_socket() -> str:
    """The agent's default socket, as `kvtier up` picks it."""
    run = os.environ.get("XDG_RUNTIME_DIR")
    if run:
        return os.path.join(run, "kvtier", "agent.sock")
    return f"/tmp/kvtier-{os.getuid()}/agent.sock"


@dataclass(frozen=True)
class Settings:
    """`kv_connector_extra_config` keys. Unknown keys are rejected."""

    # The agent's gRPC socket (what `kvtier up` prints). Default: as `kvtier up`.
    socket: str = ""
    # Model identity in the keys. Default: vLLM's model (path or name).
    model_id: str = ""
    # Weights revision in the keys. Default: vLLM's revision, else "".
    revision: str = ""
    # Deadline of each agent call. Default: 2000.
    timeout_ms: int = 2000
    # Time the agent may spend reading through from its pool per load. Default: 1000.
    load_budget_ms: int = 1000
    # Longest wait for a load before its blocks are recomputed. Default: 10000.
    load_timeout_ms: int = 10000
    # Seconds between attempts to connect while the agent is unreachable. Default: 1.0.
    reconnect_s: float = 1.0
    # Load from kvtier. Default: true.
    load: bool = True
    # Save computed prompt blocks to kvtier. Default: true.
    save: bool = True
    # Load between scheduler steps (the request waits, others run) instead of before the
    # forward that uses the blocks. Default: false (lowest TTFT on an idle engine).
    load_async: bool = False
    # Directory where each connector process writes its counters as JSON. Default: none.
    stats_dir: str = ""
    # Hand each layer's KV to the forward as soon as it is copied (layer i computes while the
    # later layers are copied) instead of waiting for the whole load at the first layer.
    # Default: false (on a CPU engine the copy competes with the forward for its cores).
    layerwise: bool = False
    # Prefill time per token in microseconds, to weigh loading a prefix from the pool against
    # recomputing it (a hit never costs more than a miss). Default: 0, learnt from the engine's
    # own prefill steps.
    prefill_us_per_token: float = 0.0

    @staticmethod
    def from_extra(extra: Optional[Dict[str, Any]]) -> "Settings":
        extra = dict(extra or {})
        known = {f.name: f for f in fields(Settings)}
        unknown = sorted(set(extra) - set(known))
        if unknown:
            raise ValueError(f"kvtier connector: unknown kv_connector_extra_config key(s) {unknown}; "
                             f"known: {sorted(known)}")
        out = {}
        for name, value in extra.items():
            kind = type(known[name].default)
            if kind is bool and not isinstance(value, bool):
                raise ValueError(f"kvtier connector: `{name}` must be true or false, not {value!r}")
            try:
                out[name] = kind(value)
            except (TypeError, ValueError) as e:
                raise ValueError(f"kvtier connector: `{name}` must be a {kind.__name__}, not {value!r}") from e
            if kind in (int, float) and out[name] < 0:
                raise ValueError(f"kvtier connector: `{name}` must not be negative, not {value!r}")
        s = Settings(**out)
        if not s.socket:
            s = Settings(**{**out, "socket": default_socket()})
        return s


def dtype_name(torch_dtype: Any, cache_dtype: str = "auto") -> str:
    """kvtier's name for a KV dtype (vLLM keeps fp8 caches as uint8 tensors)."""
    name = _DTYPE_NAMES.get(str(torch_dtype))
    if name:
        return name
    if str(torch_dtype) == "torch.uint8" and cache_dtype.startswith("fp8"):
        return "fp8_e5m2" if cache_dtype == "fp8_e5m2" else "fp8_e4m3"
    raise ValueError(f"kvtier connector: KV dtype {torch_dtype} (cache_dtype {cache_dtype}) is not supported")


@dataclass(frozen=True)
class KvShape:
    """One rank's KV cache as kvtier sees it: one block object = one vLLM block, all layers."""

    kind: str  # "vllm-cpu" or "vllm-flash"
    num_layers: int
    num_blocks: int
    block_size: int
    num_kv_heads: int
    head_size: int
    dtype: str
    layer_names: Tuple[str, ...]

    @property
    def object_bytes(self) -> int:
        """Payload bytes of one block object: what `kvtier up --object-bytes` must be."""
        return object_bytes(self.num_layers, self.block_size, self.num_kv_heads, self.head_size, self.dtype)

    def layout_args(self) -> Dict[str, Any]:
        return dict(num_layers=self.num_layers, num_blocks=self.num_blocks, block_size=self.block_size,
                    num_kv_heads=self.num_kv_heads, head_size=self.head_size, dtype=self.dtype)

    def expected_tensor_shape(self) -> Tuple[int, ...]:
        if self.kind == "vllm-cpu":
            return (self.num_blocks, self.num_kv_heads, self.block_size, 2 * self.head_size)
        return (2, self.num_blocks, self.block_size, self.num_kv_heads, self.head_size)


def object_bytes(num_layers: int, block_size: int, num_kv_heads: int, head_size: int, dtype: str) -> int:
    """Payload bytes of one block object (K and V of every layer of one rank)."""
    return num_layers * 2 * block_size * num_kv_heads * head_size * _DTYPE_BYTES[dtype]


def kv_shape(vllm_config: Any, kv_cache_config: Any) -> KvShape:
    """The KV shape of one rank, from vLLM's KV cache config. Raises ValueError for what kvtier
    cannot hold (several KV cache groups, MLA, sliding windows, per-layer head sizes)."""
    groups = kv_cache_config.kv_cache_groups
    if len(groups) != 1:
        raise ValueError(f"{len(groups)} KV cache groups (hybrid models are not supported)")
    spec = groups[0].kv_cache_spec
    kind_name = type(spec).__name__
    if kind_name != "FullAttentionSpec":
        raise ValueError(f"KV cache spec {kind_name} is not supported (full attention only)")
    if getattr(spec, "head_size_v", spec.head_size) != spec.head_size:
        raise ValueError("different K and V head sizes are not supported")
    device = str(getattr(vllm_config.device_config, "device_type", "cpu"))
    kind = "vllm-cpu" if device == "cpu" else "vllm-flash"
    return KvShape(kind=kind, num_layers=len(groups[0].layer_names), num_blocks=kv_cache_config.num_blocks,
                   block_size=spec.block_size, num_kv_heads=spec.num_kv_heads, head_size=spec.head_size,
                   dtype=dtype_name(spec.dtype, str(vllm_config.cache_config.cache_dtype)),
                   layer_names=tuple(groups[0].layer_names))


@dataclass(frozen=True)
class NamespaceSpec:
    """Everything in a rank's key namespace except the per-request salt."""

    model: str
    revision: str
    kv_dtype: str
    layout_id: str
    tokens_per_block: int
    tp_size: int
    tp_rank: int


def namespace_spec(vllm_config: Any, settings: Settings, shape: KvShape, tp_rank: int) -> NamespaceSpec:
    mc = vllm_config.model_config
    return NamespaceSpec(
        model=settings.model_id or str(mc.model),
        revision=settings.revision or str(getattr(mc, "revision", None) or ""),
        kv_dtype=shape.dtype, layout_id=shape.kind, tokens_per_block=shape.block_size,
        tp_size=vllm_config.parallel_config.tensor_parallel_size, tp_rank=tp_rank)


def block_extras(n_blocks: int, block_size: int, lora: Optional[str],
                 mm: Sequence[Tuple[str, int, int]]) -> Optional[List[List[bytes]]]:
    """Extra key items per block: the LoRA adapter's name on every block, and each multimodal
    item's hash on the blocks its placeholder tokens occupy. None when there are none."""
    if not lora and not mm:
        return None
    extras: List[List[bytes]] = [[] for _ in range(n_blocks)]
    if lora:
        item = b"lora:" + lora.encode()
        for e in extras:
            e.append(item)
    for ident, offset, length in mm:
        if length <= 0:
            continue
        first, last = offset // block_size, (offset + length - 1) // block_size
        for i in range(first, min(last, n_blocks - 1) + 1):
            extras[i].append(b"mm:" + ident.encode())
    return extras
