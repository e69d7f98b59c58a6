"""`KvtierConnector`: vLLM's KVConnectorBase_V1 over libkvtier. Select it with

    --kv-transfer-config '{"kv_connector": "KvtierConnector",
                           "kv_connector_module_path": "kvtier_vllm.connector",
                           "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
                           "kv_connector_extra_config": {"socket": "/run/kvtier/agent.sock"}}'

A cache may miss, never be wrong or stuck: every agent failure is a miss (lookups) or a load
error (the blocks are recomputed, which needs `kv_load_failure_policy: recompute`), and the engine
keeps serving. See integrations/vllm/README.md."""
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, List, Optional, Set, Tuple

import torch  # noqa: F401  (vLLM's interface types)
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.v1.metrics.cache_hit_source import CacheHitSource

from .common import BlockOp, log
from .config import Settings, kv_shape
from .scheduler import SchedulerSide
from .worker import WorkerSide

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request


@dataclass
class KvtierConnectorMetadata(KVConnectorMetadata):
    """One step's plan: blocks to load before (or, async, beside) the forward, blocks to save
    after it."""

    loads: List[BlockOp] = field(default_factory=list)
    saves: List[BlockOp] = field(default_factory=list)


class KvtierConnector(KVConnectorBase_V1):
    _cache_hit_source = CacheHitSource.HOST

    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole, kv_cache_config: "KVCacheConfig"):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self._settings = Settings.from_extra(self._kv_transfer_config.kv_connector_extra_config)
        policy = getattr(self._kv_transfer_config, "kv_load_failure_policy", "recompute")
        if policy != "recompute":
            log.warning("kvtier: kv_load_failure_policy is %r: a block that fails to load (agent gone, "
                        "checksum failure) fails its request instead of being recomputed; set "
                        "\"kv_load_failure_policy\": \"recompute\"", policy)
        self._scheduler: Optional[SchedulerSide] = None
        self._worker: Optional[WorkerSide] = None
        try:
            shape = kv_shape(vllm_config, kv_cache_config)
            if vllm_config.parallel_config.pipeline_parallel_size != 1:
                raise ValueError("pipeline parallelism is not supported")
        except ValueError as e:
            log.error("kvtier: disabled: %s", e)
            return
        if role == KVConnectorRole.SCHEDULER:
            self._scheduler = SchedulerSide(vllm_config, self._settings, shape)
        else:
            self._worker = WorkerSide(vllm_config, self._settings, shape)

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a dropped save is a future miss

    # ==== worker side ====

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        if self._worker is not None:
            self._worker.register_kv_caches(kv_caches)

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        meta = self._connector_metadata
        if self._worker is not None and isinstance(meta, KvtierConnectorMetadata) and meta.loads:
            self._worker.start_load_kv(meta.loads)

    def wait_for_layer_load(self, layer_name: str) -> None:
        if self._worker is not None:
            self._worker.wait_for_layer_load(layer_name)

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: "AttentionMetadata",
                      **kwargs: Any) -> None:
        # Block objects hold every layer: a step's blocks are saved whole in wait_for_save, one
        # copy per block into the agent's arena (see docs/vllm.md, "Layer-wise loads").
        return

    def wait_for_save(self) -> None:
        meta = self._connector_metadata
        if self._worker is not None:
            saves = meta.saves if isinstance(meta, KvtierConnectorMetadata) else []
            self._worker.wait_for_save(saves)

    def get_finished(self, finished_req_ids: Set[str]) -> Tuple[Optional[Set[str]], Optional[Set[str]]]:
        if self._worker is None:
            return None, None
        return self._worker.get_finished(finished_req_ids)

    def get_block_ids_with_load_errors(self) -> Set[int]:
        if self._worker is None:
            return set()
        return self._worker.get_block_ids_with_load_errors()

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.shutdown()

    # ==== scheduler side ====

    def bind_kv_cache_manager(self, kv_cache_manager: Any) -> None:
        super().bind_kv_cache_manager(kv_cache_manager)
        if self._scheduler is not None:
            self._scheduler.kv_cache_manager = kv_cache_manager

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> Tuple[int, bool]:
        if self._scheduler is None:
            return 0, False
        return self._scheduler.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks", num_external_tokens: int):
        if self._scheduler is not None:
            self._scheduler.update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        if self._scheduler is None:
            return KvtierConnectorMetadata()
        loads, saves = self._scheduler.build_meta(scheduler_output)
        return KvtierConnectorMetadata(loads=loads, saves=saves)

    def update_connector_output(self, connector_output: Any) -> None:
        super().update_connector_output(connector_output)
        if self._scheduler is not None:
            self._scheduler.step_done()

    def request_finished(self, request: "Request", block_ids: list[int]) -> Tuple[bool, Optional[dict]]:
        if self._scheduler is not None:
            self._scheduler.request_finished(request)
        return False, None  # saves finish within the step that computed the blocks
