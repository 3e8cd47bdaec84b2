#!/usr/bin/env bash
# Builds the comparison once per engine from an empty target directory
# (its time is the engine's build cost on this machine) and runs each on the
# same workload. Results: one JSON line per engine on stdout.
#   bash bench/store-compare/run.sh [work dir]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-${TMPDIR:-/tmp}/millrace-store-compare}"
mkdir -p "$work"
for engine in redb fjall; do
  target="$work/target-$engine"
  rm -rf "$target"
  start=$SECONDS
  cargo build -q --release --manifest-path "$here/Cargo.toml" --target-dir "$target" --features "$engine" >&2
  echo "{\"engine\":\"$engine\",\"release_build_s_from_empty_target\":$((SECONDS - start))}"
  "$target/release/store-compare" "$engine" "$work/data-$engine"
done
# fjall's journal keeps every commit a process crash leaves in the OS, so
# it can also run without any fsync (a machine crash then loses a tail the
# changelog replays); redb cannot (a commit never made durable is lost).
STORE_DURABLE_EVERY=0 "$work/target-fjall/release/store-compare" fjall "$work/data-fjall-nosync"
