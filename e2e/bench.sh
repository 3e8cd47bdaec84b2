#!/usr/bin/env bash
# `make bench` (full, manual) and `make bench-quick` (small, in CI): build the
# contenders, make sure Kafka runs, and run the side-by-side comparison.
#   BENCH_ARGS="--records 1000000 --rounds 3" BENCH_STATE_ARGS="--records 1000000" make bench
source "$(dirname "$0")/lib/common.sh"
cd "$REPO_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
need mvn "Install Maven 3.8+ (Debian: apt-get install maven)."
need java "Install a Java 17+ runtime."
need fc-list "Install fontconfig and a font for the charts (Debian: apt-get install fontconfig libfontconfig1-dev libfreetype-dev fonts-dejavu-core)."
log "building release binaries and the Kafka Streams app"
cargo build -q --release -p millrace-runtime -p millrace-bench
# The Kafka Streams contender on the broker's version (e2e/lib/common.sh); the
# harness names it in its reports.
export KAFKA_VERSION
# `clean`: copy-dependencies adds to target/lib, and a classpath of lib/* with
# two versions of one jar (after a version change) runs whichever comes first.
if ! mvn -B -q -Dstyle.color=never -Dkafka.version="$KAFKA_VERSION" -f bench/kstreams/pom.xml clean package -DskipTests > "$LOG_DIR/bench-mvn.log" 2>&1; then
  tail -n 20 "$LOG_DIR/bench-mvn.log" >&2
  die "building bench/kstreams failed (log: $LOG_DIR/bench-mvn.log)"
fi
bash "$E2E_DIR/kafka/kafka.sh" up single
"$CARGO_TARGET_DIR/release/millrace-bench" run "$@"
# The stateful comparison (bench/README.md); BENCH_STATE_ARGS to size it.
# shellcheck disable=SC2086
"$CARGO_TARGET_DIR/release/millrace-bench" state ${BENCH_STATE_ARGS:-}
# The query benchmark: query latency while a worker drains a backlog, and
# the processing it costs (bench/README.md); BENCH_QUERY_ARGS to size it.
# shellcheck disable=SC2086
"$CARGO_TARGET_DIR/release/millrace-bench" query ${BENCH_QUERY_ARGS:-}
