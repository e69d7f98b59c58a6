"""The scheduler side (vLLM's EngineCore process): looks up how many leading blocks of a prompt
kvtier holds for every rank, plans their load into the blocks vLLM allocated, and plans the
save of every prompt block once it is computed."""
import collections
import time
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Tuple

import kvtier

from .common import Agent, BlockOp, KeyMaker, Stats, log, request_key_inputs
from .config import KvShape, Settings, namespace_spec


@dataclass
class _Req:
    request: Any
    # From the last lookup: the block-aligned local hit it was given, and the blocks stored.
    local_tokens: int = 0
    hit_blocks: int = 0
    # Prompt blocks [0, saved) are stored in kvtier (or planned to be).
    saved: int = 0
    seen: bool = False


class SchedulerSide:
    def __init__(self, vllm_config: Any, settings: Settings, shape: KvShape):
        self.settings = settings
        self.shape = shape
        self.bs = shape.block_size
        tp = vllm_config.parallel_config.tensor_parallel_size
        # A rank may have lost blocks the others hold: a prefix counts only when every rank has it.
        self.key_makers = [KeyMaker(namespace_spec(vllm_config, settings, shape, r)) for r in range(tp)]
        self.stats = Stats(settings.stats_dir, "scheduler")
        self.agent = Agent(settings, shape, "vllm scheduler", self.stats)
        self.kv_cache_manager: Any = None
        self._reqs: Dict[str, _Req] = {}
        self._loads: Dict[str, BlockOp] = {}
        self.prefill = PrefillRate(settings.prefill_us_per_token)
        # Steps planned and not yet back: (when planned, tokens scheduled).
        self._steps: Deque[Tuple[float, int]] = collections.deque(maxlen=8)

    # -- lookups --------------------------------------------------------------------------

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> Tuple[int, bool]:
        st = self._reqs.get(request.request_id)
        if st is None:
            st = self._reqs[request.request_id] = _Req(request)
        st.local_tokens, st.hit_blocks = num_computed_tokens, 0
        if not self.settings.load:
            return 0, False
        prompt = request.prompt_token_ids or []
        max_blocks = len(prompt) // self.bs
        if max_blocks * self.bs <= num_computed_tokens:
            return 0, False
        client = self.agent.client()
        if client is None:
            return 0, False
        salt, lora, mm = request_key_inputs(request)
        tokens = list(prompt[:max_blocks * self.bs])
        hit = max_blocks
        # What recomputing every candidate block would take: a prefix from the pool is counted
        # only as far as loading it is faster.
        recompute_us = self.prefill.us_for(max_blocks * self.bs)
        t0 = time.monotonic()
        try:
            for km in self.key_makers:
                hit = min(hit, client.lookup(km.keys(tokens, salt, lora, mm), recompute_us))
                if hit * self.bs <= num_computed_tokens:
                    break
        except kvtier.KvtierError as e:
            self.agent.failed("lookup_errors", e)
            return 0, False
        self.agent.ok()
        self.stats.add("lookups")
        self.stats.add("lookup_us", int((time.monotonic() - t0) * 1e6))
        # vLLM must compute at least one token to sample from: at most num_tokens - 1 tokens come
        # from outside (the last loaded block then holds one slot that vLLM recomputes).
        hit_tokens = min(hit * self.bs, request.num_tokens - 1)
        external = hit_tokens - num_computed_tokens
        if external <= 0:
            return 0, False
        st.hit_blocks = hit
        return external, self.settings.load_async

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        st = self._reqs.get(request.request_id)
        if st is None:
            st = self._reqs[request.request_id] = _Req(request)
        if num_external_tokens <= 0:
            return
        start = st.local_tokens // self.bs
        end = -(-(st.local_tokens + num_external_tokens) // self.bs)
        if end > st.hit_blocks:
            log.error("kvtier: vLLM asked for %d external tokens of request %s, more than the %d "
                      "blocks found; not loading", num_external_tokens, request.request_id, st.hit_blocks)
            self.stats.add("internal_errors")
            end = start
        block_ids = list(blocks.get_block_ids()[0])
        if len(block_ids) < end:
            log.error("kvtier: request %s has %d blocks, %d to load; not loading",
                      request.request_id, len(block_ids), end)
            self.stats.add("internal_errors")
            end = start
        salt, lora, mm = request_key_inputs(request)
        self._loads[request.request_id] = BlockOp(
            req_id=request.request_id, token_ids=list(request.prompt_token_ids[:end * self.bs]), start=start,
            block_ids=block_ids[start:end], salt=salt, lora=lora, mm=mm, is_async=self.settings.load_async)
        st.saved = max(st.saved, end)
        self.stats.add("planned_load_blocks", end - start)
        self.stats.add("hit_requests")

    # -- per step ---------------------------------------------------------------------------

    def build_meta(self, scheduler_output: Any) -> Tuple[List[BlockOp], List[BlockOp]]:
        self._steps.append((time.monotonic(), int(getattr(scheduler_output, "total_num_scheduled_tokens", 0))))
        loads = list(self._loads.values())
        self._loads.clear()
        saves: List[BlockOp] = []
        if self.settings.save:
            n_sched = scheduler_output.num_scheduled_tokens
            for new in scheduler_output.scheduled_new_reqs:
                self._plan_save(new.req_id, new.num_computed_tokens, n_sched.get(new.req_id, 0), saves)
            cached = scheduler_output.scheduled_cached_reqs
            for i, req_id in enumerate(cached.req_ids):
                self._plan_save(req_id, cached.num_computed_tokens[i], n_sched.get(req_id, 0), saves)
        self.stats.flush()
        return loads, saves

    def _plan_save(self, req_id: str, computed: int, scheduled: int, out: List[BlockOp]) -> None:
        st = self._reqs.get(req_id)
        if st is None:
            return
        if not st.seen:
            # Blocks already computed when first scheduled came from vLLM's prefix cache (stored
            # when they were computed) or from kvtier.
            st.seen = True
            st.saved = max(st.saved, computed // self.bs)
        prompt = st.request.prompt_token_ids or []
        full = min(computed + scheduled, len(prompt)) // self.bs
        if full <= st.saved:
            return
        if self.kv_cache_manager is None:
            return
        block_ids = list(self.kv_cache_manager.get_block_ids(req_id)[0])
        if len(block_ids) < full:
            log.error("kvtier: request %s has %d blocks, %d computed; not saving", req_id, len(block_ids), full)
            self.stats.add("internal_errors")
            return
        salt, lora, mm = request_key_inputs(st.request)
        out.append(BlockOp(req_id=req_id, token_ids=list(prompt[:full * self.bs]), start=st.saved,
                           block_ids=block_ids[st.saved:full], salt=salt, lora=lora, mm=mm))
        self.stats.add("planned_save_blocks", full - st.saved)
        st.saved = full

    def step_done(self) -> None:
        """The output of the oldest step planned is back: its time per token teaches the
        prefill rate (steps of at least a block of tokens: prefills, not decodes)."""
        if not self._steps:
            return
        started, tokens = self._steps.popleft()
        if tokens >= max(self.bs, PrefillRate.MIN_TOKENS) and self.prefill.learn(tokens, time.monotonic() - started):
            self.stats.add("prefill_samples")

    def request_finished(self, request: Any) -> None:
        self._reqs.pop(request.request_id, None)
        self._loads.pop(request.request_id, None)


class PrefillRate:
    """The engine's prefill time per token, learnt from its own steps (a moving average over
    steps that computed at least MIN_TOKENS tokens), or fixed by the operator."""

    MIN_TOKENS = 256
    WEIGHT = 0.3  # of the newest step

    def __init__(self, fixed_us_per_token: float = 0.0):
        self.fixed = fixed_us_per_token > 0
        self.us_per_token = fixed_us_per_token

    def learn(self, tokens: int, seconds: float) -> bool:
        """Counts a step of `tokens` tokens that took `seconds`; whether it was used."""
        if self.fixed or tokens <= 0 or seconds <= 0:
            return False
        sample = seconds * 1e6 / tokens
        self.us_per_token = sample if self.us_per_token <= 0 else (
            self.WEIGHT * sample + (1 - self.WEIGHT) * self.us_per_token)
        return True

    def us_for(self, tokens: int) -> int:
        """Estimated microseconds to prefill `tokens` tokens; 0 while unknown."""
        return int(self.us_per_token * tokens)
