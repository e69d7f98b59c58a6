#!/usr/bin/env bash
# Installs the peer stores that `kvtier bench pool` compares against (benches/peers/peer_bench.py
# starts and drives them), one venv per peer since their dependencies differ (LMCache needs torch,
# the others do not):
#   $CACHE/peers/mooncake   Mooncake Store: pip mooncake-transfer-engine-non-cuda (mooncake_master,
#                           mooncake_client, the Python MooncakeDistributedStore client)
#   $CACHE/peers/lmcache    LMCache 0.5.6: lmcache_server and its lm:// remote connector (client)
#   $CACHE/peers/redis      redis-py + hiredis; the server is Debian's redis-server (apt-get)
# CACHE is ${KVTIER_CACHE_DIR:-/var/cache/kvtier}. Usage: scripts/setup_peers.sh [mooncake]
# [lmcache] [redis] (default: all three). Idempotent: a peer whose venv is complete (marker file
# with the pinned spec) is left alone, so a second run is a quick no-op. Runs as root (apt-get).
# The bench is then run with the peer's venv python:
#   $CACHE/peers/<system>/bin/python benches/peers/peer_bench.py --system <system> ...
#
# Why this way (versions as in shared/BENCHMARKS.md, "Peers measured on the same machine"):
# - Mooncake: 0.3.13.post1, not 0.3.13. The 0.3.13 wheel of the *non-cuda* package still links
#   store.so and mooncake_client against libcudart.so.12 (they fail to load without a CUDA
#   runtime); .post1 is the same release without that link. All its binaries need
#   libibverbs.so.1 (Debian libibverbs1) even for the TCP transport.
# - LMCache: its wheel requires torch, cupy-cuda13x, cuda-python, cufile-python, nvtx, grpcio,
#   google-cloud-bigtable, opentelemetry-*, awscrt, ... Most are for GPUs or other backends. We
#   install lmcache with --no-deps, then torch and only the modules that lmcache_server and the
#   lm:// connector + LocalCPUBackend import (found by importing them; the list below, with
#   lmcache's own version bounds). torch is needed by both the server and the client (dtypes,
#   shapes, the CPU buffer). The registry carries only CUDA builds of torch; torch==2.13.0 (the
#   version vllm_setup.sh uses) imports and runs on CPU but pulls its nvidia-* wheels: about 3 GB
#   downloaded, ~5 GB venv. That is the bulk of this script's time and disk.
# - Redis: Debian bookworm's redis-server 7.0; redis-py and hiredis (the C parser) from PyPI.
set -euo pipefail
CACHE="${KVTIER_CACHE_DIR:-/var/cache/kvtier}"
PEERS="$CACHE/peers"
PY_BASE="${KVTIER_PEERS_BASE_PYTHON:-python3}"
MOONCAKE_SPEC="mooncake-transfer-engine-non-cuda==0.3.13.post1"
LMCACHE_SPEC="lmcache==0.5.6"
TORCH_SPEC="torch==2.13.0"
# What lmcache_server and the lm:// client import, with lmcache 0.5.6's bounds.
LMCACHE_DEPS=(pyyaml requests cachetools sortedcontainers "numpy<=2.2.6" numba
  "prometheus_client>=0.18.0,<=0.24.1" py-cpuinfo psutil aiohttp aiofile msgspec
  "pyzmq>=25.0.0" "transformers>=5.4" cryptography)
REDIS_PY_SPEC=(redis hiredis)
APT_PKGS=(redis-server libibverbs1)

WANT=("$@")
[ ${#WANT[@]} -eq 0 ] && WANT=(mooncake lmcache redis)
for w in "${WANT[@]}"; do
  case "$w" in mooncake|lmcache|redis) ;; *) echo "usage: $0 [mooncake] [lmcache] [redis]" >&2; exit 2;; esac
done

mkdir -p "$PEERS"
exec 9>"$CACHE/.peers-setup.lock"
flock 9

say() { echo "setup_peers: $*" >&2; }
PIPQ=(--disable-pip-version-check --quiet)

# venv_ok NAME SPEC: the marker holds the spec it was built with.
venv_ok() { [ -x "$PEERS/$1/bin/python" ] && [ "$(cat "$PEERS/$1/.kvtier-peer-ok" 2>/dev/null)" = "$2" ]; }
new_venv() {
  local v="$PEERS/$1"
  rm -f "$v/.kvtier-peer-ok"
  [ -x "$v/bin/python" ] || "$PY_BASE" -m venv "$v"
  nice "$v/bin/python" -m pip "${PIPQ[@]}" install --upgrade pip
}
mark() { echo "$2" > "$PEERS/$1/.kvtier-peer-ok"; }

# --- Debian packages (redis-server for redis; libibverbs1 for Mooncake's binaries)
need_apt=()
for p in "${APT_PKGS[@]}"; do
  case "$p" in
    redis-server) [[ " ${WANT[*]} " == *" redis "* ]] || continue ;;
    libibverbs1) [[ " ${WANT[*]} " == *" mooncake "* ]] || continue ;;
  esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    say "need root to apt-get install ${need_apt[*]}"; exit 1
  fi
  say "apt-get install ${need_apt[*]}"
  nice apt-get update -qq
  # policy-rc.d 101: do not start the distribution's redis service; the bench starts its own.
  had_policy=0; [ -e /usr/sbin/policy-rc.d ] && had_policy=1
  [ $had_policy = 1 ] || printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d 2>/dev/null || true
  DEBIAN_FRONTEND=noninteractive nice apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null || { [ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d; exit 1; }
  [ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
fi

for w in "${WANT[@]}"; do
  V="$PEERS/$w"
  case "$w" in
    mooncake)
      SPEC="$MOONCAKE_SPEC"
      if ! venv_ok mooncake "$SPEC"; then
        say "building $V ($SPEC, ~50 MB download)"
        new_venv mooncake
        nice "$V/bin/python" -m pip "${PIPQ[@]}" install "$SPEC"
        "$V/bin/python" -c "from mooncake.store import MooncakeDistributedStore"
        "$V/bin/mooncake_master" --version >/dev/null 2>&1 || "$V/bin/mooncake_master" --help >/dev/null 2>&1 \
          || { say "mooncake_master does not run (missing shared library? ldd it)"; exit 1; }
        mark mooncake "$SPEC"
      fi
      ;;
    lmcache)
      SPEC="$LMCACHE_SPEC $TORCH_SPEC ${LMCACHE_DEPS[*]}"
      if ! venv_ok lmcache "$SPEC"; then
        say "building $V ($LMCACHE_SPEC --no-deps + $TORCH_SPEC: ~3 GB download, a few minutes)"
        new_venv lmcache
        if ! "$V/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${TORCH_SPEC#torch==}')" 2>/dev/null; then
          nice "$V/bin/python" -m pip "${PIPQ[@]}" install "$TORCH_SPEC"
        fi
        nice "$V/bin/python" -m pip "${PIPQ[@]}" install --no-deps "$LMCACHE_SPEC"
        # pip then lists lmcache's requirements left out on purpose (see above): drop that list.
        nice "$V/bin/python" -m pip "${PIPQ[@]}" install "$TORCH_SPEC" "${LMCACHE_DEPS[@]}" 2>&1 \
          | sed -e '/^lmcache [0-9.]* requires /d' -e "/^ERROR: pip's dependency resolver does not/d" >&2
        # What peer_bench.py uses, on both sides of the lm:// protocol.
        if ! out="$(LMCACHE_LOG_LEVEL=WARNING "$V/bin/python" -c "
from lmcache import device_ops
from lmcache.v1.storage_backend.connector.lm_connector import LMCServerConnector
from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.metadata import LMCacheMetadata
import lmcache.v1.server.__main__
" 2>&1)"; then
          echo "$out" | tail -5 >&2; say "lmcache does not import in $V"; exit 1
        fi
        [ -x "$V/bin/lmcache_server" ] || { say "lmcache_server missing in $V/bin"; exit 1; }
        mark lmcache "$SPEC"
      fi
      ;;
    redis)
      SPEC="${REDIS_PY_SPEC[*]}"
      if ! venv_ok redis "$SPEC"; then
        say "building $V (${REDIS_PY_SPEC[*]})"
        new_venv redis
        nice "$V/bin/python" -m pip "${PIPQ[@]}" install "${REDIS_PY_SPEC[@]}"
        "$V/bin/python" -c "import redis, hiredis"
        mark redis "$SPEC"
      fi
      command -v redis-server >/dev/null || { say "redis-server not on PATH"; exit 1; }
      ;;
  esac
done

for w in "${WANT[@]}"; do
  V="$PEERS/$w"
  case "$w" in
    mooncake) ver="$(grep -m1 '^Version:' "$V"/lib/python3*/site-packages/mooncake_transfer_engine_non_cuda-*.dist-info/METADATA | cut -d' ' -f2)"
              extra="mooncake_master, mooncake_client in $V/bin" ;;
    lmcache)  ver="$(grep -m1 '^Version:' "$V"/lib/python3*/site-packages/lmcache-*.dist-info/METADATA | cut -d' ' -f2)"
              extra="lmcache_server in $V/bin" ;;
    redis)    ver="redis-py $(grep -m1 '^Version:' "$V"/lib/python3*/site-packages/redis-*.dist-info/METADATA | cut -d' ' -f2)"
              extra="server $(command -v redis-server) ($(redis-server --version | grep -o 'v=[0-9.]*'))" ;;
  esac
  printf 'setup_peers: %-8s %s  python %s  (%s, %s)\n' "$w" "$ver" "$V/bin/python" "$extra" \
    "$(du -sh "$V" 2>/dev/null | cut -f1)"
done
echo "setup_peers: run: \$PEERS/<system>/bin/python benches/peers/peer_bench.py --system <system> --size BYTES --count N --concurrency C --json  (PEERS=$PEERS)"
