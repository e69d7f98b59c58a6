#!/usr/bin/env bash
# Fetches the public traces of the Mooncake repository's FAST25 release into a cache folder
# outside the checkout (default /var/cache/kvtier/traces), for `kvtier sim --sweep` on the
# full traces (docs/sim.md, docs/benchmarks.md). The test suite needs none of them: it runs
# offline on the conversation trace and the sample committed under tests/data.
#
#   scripts/fetch_traces.sh [DIR]
#
# MOONCAKE_REPO overrides where the Mooncake repository is cloned from (a mirror, or a local
# clone's path).
set -euo pipefail
dir="${1:-/var/cache/kvtier/traces}"
repo="${MOONCAKE_REPO:-https://github.com/kvcache-ai/Mooncake.git}"
mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Only the release folder's files: a blobless, sparse, shallow clone.
git clone --quiet --depth 1 --filter=blob:none --sparse "$repo" "$tmp/mooncake"
git -C "$tmp/mooncake" sparse-checkout set FAST25-release
for f in traces/conversation_trace.jsonl traces/toolagent_trace.jsonl \
    traces/synthetic_trace.jsonl arxiv-trace/mooncake_trace.jsonl; do
    src="$tmp/mooncake/FAST25-release/$f"
    name="$(basename "$f")"
    [ "$name" = mooncake_trace.jsonl ] && name=arxiv_trace.jsonl
    cp "$src" "$dir/$name"
    echo "$dir/$name: $(wc -l < "$dir/$name") requests"
done
