#!/usr/bin/env bash
# End-to-end tests of the vLLM connector on real vLLM (CPU backend): tests/python/vllm/.
#   scripts/vllm_e2e.sh [pytest args...]
# Builds (or reuses) the vLLM venv and the tiny test model in ${KVTIER_CACHE_DIR:-/var/cache/kvtier}
# and installs this checkout's kvtier and kvtier-vllm packages into the venv, which the tests
# import (scripts/vllm_setup.sh), and uses the release `kvtier` binary and libkvtier.so from
# ${CARGO_TARGET_DIR:-target}/release, built (or found up to date) first; KVTIER_BIN + KVTIER_LIB override.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="$(scripts/vllm_setup.sh tiny | tail -n 1)"
CACHE="${KVTIER_CACHE_DIR:-/var/cache/kvtier}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ -z "${KVTIER_BIN:-}" ] || [ -z "${KVTIER_LIB:-}" ]; then
  # Up to date with the checkout (a no-op when nothing changed).
  echo "vllm_e2e: building the release kvtier binary and libkvtier" >&2
  cargo build --release -p kvtier -p kvtier-ffi -j2 --target-dir "$TARGET"
fi
export KVTIER_BIN="${KVTIER_BIN:-$TARGET/release/kvtier}"
export KVTIER_LIB="${KVTIER_LIB:-$TARGET/release/libkvtier.so}"
export KVTIER_VLLM_MODEL="${KVTIER_VLLM_MODEL:-$CACHE/models/tiny-llama}"
# vLLM offline on the CPU: no hub, its scratch files in one folder, a small KV cache, and the same
# thread count with and without a connector (vLLM reserves a core for connectors otherwise).
WORK="$(mktemp -d /tmp/kvtier-vllm-e2e.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_TARGET_DEVICE=cpu
export TMPDIR="$WORK" VLLM_CACHE_ROOT="$WORK/vllm-cache"
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" VLLM_CPU_NUM_OF_RESERVED_CPU=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 PYTHONFAULTHANDLER=1
"$PY" -m pytest -p no:cacheprovider -s -v "$ROOT/tests/python/vllm" "$@"
