#!/usr/bin/env bash
# `make bench-operator` (manual): the operator holding many StreamApps on the
# test bed (bench/README.md). For release figures start the stack with
# MILLRACE_BUILD_PROFILE=release (the report names the operator's binary).
#   BENCH_OPERATOR_ARGS="--apps 1000 --sample-seconds 60" make bench-operator
source "$(dirname "$0")/lib/common.sh"
cd "$REPO_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
eval "$(bash "$E2E_DIR/stack.sh" up)"
log "installing the chart (the operator runs as a pod of the test bed)"
helm upgrade --install millrace charts/millrace -n millrace-system --create-namespace --wait --timeout 120s >/dev/null
cargo build -q --release -p millrace-bench
export KAFKA_VERSION
"$CARGO_TARGET_DIR/release/millrace-bench" operator "$@"
