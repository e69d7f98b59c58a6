"""The worker side (one per rank): registers the rank's KV tensors with the agent, runs the loads
and saves the scheduler planned, and reports blocks that did not load so vLLM recomputes them."""
import time
from typing import Any, Dict, List, Optional, Set, Tuple

import kvtier

from .common import Agent, BlockOp, KeyMaker, Stats, log
from .config import KvShape, Settings, namespace_spec

_KVT_ERR_TIMEOUT = 7


class WorkerSide:
    def __init__(self, vllm_config: Any, settings: Settings, shape: KvShape):
        self.settings = settings
        self.shape = shape
        self.vllm_config = vllm_config
        tp_rank = _tp_rank()
        self.stats = Stats(settings.stats_dir, f"worker{tp_rank}")
        self.key_maker = KeyMaker(namespace_spec(vllm_config, settings, shape, tp_rank))
        self.agent = Agent(settings, shape, f"vllm worker {tp_rank}", self.stats)
        self.agent.on_connect = self._register
        self._layers: Optional[List[Any]] = None
        self._device: Optional[int] = None  # CUDA device index; None: host memory
        self._disabled = False
        self._sync: List[Tuple[BlockOp, Optional[kvtier.LoadTicket]]] = []
        self._async: Dict[str, List[Tuple[BlockOp, Optional[kvtier.LoadTicket]]]] = {}
        self._errors: Set[int] = set()
        self._layer_index = {name: i for i, name in enumerate(shape.layer_names)}
        self._sync_deadline = 0.0

    # -- registration -------------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: Dict[str, Any]) -> None:
        s = self.shape
        missing = [n for n in s.layer_names if n not in kv_caches]
        if missing:
            return self._disable(f"KV caches of layers {missing[:3]} were not given")
        layers = [kv_caches[n] for n in s.layer_names]
        want = s.expected_tensor_shape()
        for name, t in zip(s.layer_names, layers):
            if tuple(t.shape) != want or not t.is_contiguous():
                return self._disable(f"layer {name} has KV shape {tuple(t.shape)} (contiguous: "
                                     f"{t.is_contiguous()}), not {want} of the {s.kind} layout; the "
                                     f"attention backend is not one kvtier knows")
        dev = layers[0].device
        self._device = dev.index if dev.type == "cuda" else None
        if dev.type not in ("cpu", "cuda"):
            return self._disable(f"KV caches on {dev.type} are not supported")
        self._layers = layers
        log.info("kvtier: %d layers of %s KV, %d-byte block objects, agent %s", s.num_layers, s.kind,
                 s.object_bytes, self.settings.socket)
        self.agent.client()  # connect now if the agent is up (registers the tensors)

    def _register(self, client: kvtier.Client) -> None:
        if self._layers is None:
            raise kvtier.KvtierError(2, "no KV caches registered yet")
        ptrs = [t.data_ptr() for t in self._layers]
        if self._device is None:
            client.register_kv(ptrs)
        else:
            client.register_kv_device(ptrs, self._device)

    def _disable(self, why: str) -> None:
        log.error("kvtier: disabled on this worker: %s; every kvtier hit will be recomputed", why)
        self.stats.add("disabled")
        self._disabled = True

    def _client(self) -> Optional[kvtier.Client]:
        if self._disabled or self._layers is None:
            return None
        return self.agent.client()

    # -- loads ----------------------------------------------------------------------------------

    def start_load_kv(self, loads: List[BlockOp]) -> None:
        self._sync_deadline = time.monotonic() + self.settings.load_timeout_ms / 1000
        for op in loads:
            self.stats.add("load_blocks", len(op.block_ids))
            ticket = None
            client = self._client()
            if client is not None:
                try:
                    keys = self.key_maker.op_keys(op)
                    if len(keys) != len(op.block_ids):
                        raise ValueError(f"{len(keys)} keys for {len(op.block_ids)} blocks")
                    ticket = client.load_start(keys, op.block_ids)
                except (kvtier.KvtierError, ValueError) as e:
                    self.agent.failed("load_errors", e)
            (self._async.setdefault(op.req_id, []) if op.is_async else self._sync).append((op, ticket))

    def wait_for_layer_load(self, layer_name: str) -> None:
        """Waits until this layer of every block of this step's loads is in place: libkvtier
        copies a load layer by layer, so the forward computes layer i while later layers are
        copied. Without `layerwise`, the first layer waits for the whole load."""
        if not self._sync:
            return
        t0 = time.monotonic()
        try:
            layer = self._layer_index.get(layer_name)
            if not self.settings.layerwise or layer is None:
                return self._finish_sync(timed=False)
            for _, ticket in self._sync:
                if ticket is None:
                    continue
                try:
                    ready = ticket.wait_layer(layer, self._remaining_ms())
                except kvtier.KvtierError:
                    # Timed out or failed: settle the whole load now (its blocks are recomputed).
                    return self._finish_sync(timed=False)
                if layer == 0 and ready < self.shape.num_layers:
                    self.stats.add("layer_waits_early")  # the forward started before the last layer
        finally:
            # Time the forward stood still waiting for loaded KV.
            self.stats.add("load_wait_us", int((time.monotonic() - t0) * 1e6))

    def _remaining_ms(self) -> int:
        return max(0, int((self._sync_deadline - time.monotonic()) * 1000))

    def _finish_sync(self, timed: bool = True) -> None:
        """Settles this step's synchronous loads; `timed`: counted as load_finish_us (a wait
        inside wait_for_layer_load counts as load_wait_us instead)."""
        if self._sync:
            t0 = time.monotonic()
            self._finish(self._sync, self._remaining_ms())
            self._sync = []
            if timed:
                self.stats.add("load_finish_us", int((time.monotonic() - t0) * 1e6))

    def _finish(self, pending: List[Tuple[BlockOp, Optional[kvtier.LoadTicket]]], timeout_ms: int) -> None:
        for op, ticket in pending:
            flags = [False] * len(op.block_ids)
            if ticket is not None:
                try:
                    flags = ticket.wait(timeout_ms)
                    self.agent.ok()
                except kvtier.KvtierError as e:
                    # On a timeout the load goes on; dropping the ticket (below, with `pending`)
                    # cancels it and returns once no copy into these blocks is in progress.
                    self.agent.failed("load_errors", e)
            self._settle(op, flags)

    def _settle(self, op: BlockOp, flags: List[bool]) -> None:
        failed = [b for b, ok in zip(op.block_ids, flags) if not ok]
        self.stats.add("loaded_blocks", len(op.block_ids) - len(failed))
        if failed:
            self.stats.add("failed_blocks", len(failed))
            log.warning("kvtier: %d of %d blocks of request %s did not load; vLLM recomputes them",
                        len(failed), len(op.block_ids), op.req_id)
            self._errors.update(failed)

    def get_finished(self, finished_req_ids: Set[str]) -> Tuple[Optional[Set[str]], Optional[Set[str]]]:
        done: Set[str] = set()
        for req_id in list(self._async):
            still = []
            for op, ticket in self._async[req_id]:
                flags = [False] * len(op.block_ids)
                if ticket is not None:
                    try:
                        flags = ticket.wait(0)
                    except kvtier.KvtierError as e:
                        if e.status == _KVT_ERR_TIMEOUT:
                            still.append((op, ticket))
                            continue
                        self.agent.failed("load_errors", e)
                self._settle(op, flags)
            if still:
                self._async[req_id] = still
            else:
                del self._async[req_id]
                done.add(req_id)
        self.stats.flush()
        return None, (done or None)

    def get_block_ids_with_load_errors(self) -> Set[int]:
        errors, self._errors = self._errors, set()
        return errors

    # -- saves ----------------------------------------------------------------------------------

    def wait_for_save(self, saves: List[BlockOp]) -> None:
        self._finish_sync()  # every load of the step is settled (and a forward that skipped attention)
        if not saves:
            self.stats.flush()
            return
        client = self._client()
        if client is not None:
            if self._device is not None:
                import torch
                torch.cuda.current_stream().synchronize()  # this step's KV is written
            t0 = time.monotonic()
            for op in saves:
                try:
                    keys = self.key_maker.op_keys(op)
                    if len(keys) != len(op.block_ids):
                        raise ValueError(f"{len(keys)} keys for {len(op.block_ids)} blocks")
                    stored = client.save(keys, op.block_ids)
                    self.agent.ok()
                    self.stats.add("saved_blocks", stored)
                    self.stats.add("save_skipped_blocks", len(keys) - stored)
                except (kvtier.KvtierError, ValueError) as e:
                    self.agent.failed("save_errors", e)
            self.stats.add("save_us", int((time.monotonic() - t0) * 1e6))
        else:
            self.stats.add("save_unavailable_blocks", sum(len(op.block_ids) for op in saves))
        self.stats.flush()

    def shutdown(self) -> None:
        self._sync = []  # dropping a ticket cancels its load
        self._async.clear()
        c = self.agent._client
        if c is not None:
            c.close()


def _tp_rank() -> int:
    try:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank
        return get_tensor_model_parallel_rank()
    except Exception:  # not initialized (single process)
        return 0
