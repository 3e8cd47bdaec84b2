#!/usr/bin/env bash
# `make bench-scale` (manual): a stateful app scaled from one worker to four
# while input flows, Millrace on the test bed beside Kafka Streams adding
# instances (bench/README.md). For release figures start the stack with
# MILLRACE_BUILD_PROFILE=release (the pods run the stack's build).
#   BENCH_SCALE_ARGS="--keys 1600000 --rate 4000" make bench-scale
source "$(dirname "$0")/lib/common.sh"
cd "$REPO_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
eval "$(bash "$E2E_DIR/stack.sh" up)"
log "installing the chart (the operator runs as a pod of the test bed)"
helm upgrade --install millrace charts/millrace -n millrace-system --create-namespace --wait --timeout 120s >/dev/null
build_bench_contenders
"$CARGO_TARGET_DIR/release/millrace-bench" scale "$@"
