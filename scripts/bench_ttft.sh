#!/usr/bin/env bash
# `kvtier bench ttft`: TTFT of kvtier under vLLM (CPU) against vLLM's own baselines.
#   scripts/bench_ttft.sh [--kv-heavy] [--sizes 2048,4096,8192] [--rounds 3] [--arena-bytes 4GiB] [--json] ...
#   (see scripts/bench_ttft.py)
# Builds (or reuses) the vLLM venv and the benchmark model (8 layers, hidden 1024, 8 heads, 2 KV
# heads: 8 KiB of KV per token; with --kv-heavy: 16 layers, 8 KV heads of 128, 64 KiB per token)
# in ${KVTIER_CACHE_DIR:-/var/cache/kvtier}; uses the release kvtier binary and libkvtier.so from
# ${CARGO_TARGET_DIR:-target}/release (or KVTIER_BIN / KVTIER_LIB).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODEL=bench
ARGS=()
for a in "$@"; do
  if [ "$a" = "--kv-heavy" ]; then MODEL=kvheavy; else ARGS+=("$a"); fi
done
PY="$("$ROOT/scripts/vllm_setup.sh" "$MODEL" | tail -n 1)"
CACHE="${KVTIER_CACHE_DIR:-/var/cache/kvtier}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
exec "$PY" "$ROOT/scripts/bench_ttft.py" --model "${KVTIER_VLLM_BENCH_MODEL:-$CACHE/models/$MODEL-llama}" \
  --kvtier-bin "${KVTIER_BIN:-$TARGET/release/kvtier}" --kvtier-lib "${KVTIER_LIB:-$TARGET/release/libkvtier.so}" ${ARGS[@]+"${ARGS[@]}"}
