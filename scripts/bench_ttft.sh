#!/usr/bin/env bash
# `kvtier bench ttft`: TTFT of kvtier under vLLM (CPU) against vLLM's own baselines.
#   scripts/bench_ttft.sh [--sizes 2048,4096,8192] [--rounds 3] [--json] ...  (see scripts/bench_ttft.py)
# Builds (or reuses) the vLLM venv and the benchmark model (8 layers, hidden 1024, 8 heads, 2 KV
# heads: 8 KiB of KV per token) in ${KVTIER_CACHE_DIR:-/var/cache/kvtier}; uses the release kvtier
# binary and libkvtier.so from ${CARGO_TARGET_DIR:-target}/release (or KVTIER_BIN / KVTIER_LIB).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$("$ROOT/scripts/vllm_setup.sh" bench | tail -n 1)"
CACHE="${KVTIER_CACHE_DIR:-/var/cache/kvtier}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
exec "$PY" "$ROOT/scripts/bench_ttft.py" --model "${KVTIER_VLLM_BENCH_MODEL:-$CACHE/models/bench-llama}" \
  --kvtier-bin "${KVTIER_BIN:-$TARGET/release/kvtier}" --kvtier-lib "${KVTIER_LIB:-$TARGET/release/libkvtier.so}" "$@"
