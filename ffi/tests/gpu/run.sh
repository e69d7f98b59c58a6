#!/usr/bin/env bash
# The CUDA copy engine on a machine with a GPU: builds with the `cuda` feature and runs the
# device tests (gather from device tensors and scatter back, checked against the host copy
# engine). Usage: bash ffi/tests/gpu/run.sh   (from the repository root; needs cargo and a driver)
set -euo pipefail
cd "$(dirname "$0")/../../.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
cargo test -j"$(nproc)" -p kvtier --features cuda --lib gpu:: -- --include-ignored --nocapture
cargo build -j"$(nproc)" -p kvtier-ffi --features cuda
echo "gpu checks passed"
