#!/usr/bin/env bash
# `make bench` (full, manual) and `make bench-quick` (small, in CI): build the
# contenders, make sure Kafka runs, and run the side-by-side comparison.
#   BENCH_ARGS="--records 1000000 --rounds 3" BENCH_STATE_ARGS="--records 1000000" make bench
source "$(dirname "$0")/lib/common.sh"
cd "$REPO_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
build_bench_contenders
bash "$E2E_DIR/kafka/kafka.sh" up single
"$CARGO_TARGET_DIR/release/millrace-bench" run "$@"
# The stateful comparison (bench/README.md); BENCH_STATE_ARGS to size it.
# shellcheck disable=SC2086
"$CARGO_TARGET_DIR/release/millrace-bench" state ${BENCH_STATE_ARGS:-}
# The query benchmark: query latency while a worker drains a backlog, and
# the processing it costs (bench/README.md); BENCH_QUERY_ARGS to size it.
# shellcheck disable=SC2086
"$CARGO_TARGET_DIR/release/millrace-bench" query ${BENCH_QUERY_ARGS:-}
