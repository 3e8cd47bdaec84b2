# Millrace: the two commands a fresh machine needs are `make demo` and
# `make test`; everything else here is for working on the stack by hand.
SHELL := /bin/bash

.PHONY: demo test images stack-up stack-down stack-status lint unit build bench bench-quick bench-operator bench-scale bench-scale-quick autoscale-report

## demo: start the local stack and show it working (see README)
demo:
	@bash e2e/demo.sh

## test: lint, start the stack, run every test against it, check the stack scripts
test:
	@bash e2e/test.sh

## images: OCI image archives of the operator and runtime in target/images/ (docs/images.md)
images:
	@bash e2e/images.sh release

## stack-up: Kafka + Kubernetes control plane + pod runner; prints the exports
stack-up:
	@bash e2e/stack.sh up

## stack-down: stop the whole stack; leaves no process behind
stack-down:
	@bash e2e/stack.sh down

stack-status:
	@bash e2e/stack.sh status

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

## unit: tests that need no running stack
unit:
	cargo test --workspace --bins --lib

build:
	cargo build --workspace

## bench: Millrace vs Kafka Streams vs the raw limit (manual; minutes). BENCH_ARGS to tune.
bench:
	@bash e2e/bench.sh $(BENCH_ARGS)

## bench-quick: the same harness on a small input, one round (CI proves it works)
bench-quick:
	@BENCH_STATE_ARGS="--records 20000 --keys 2000 --groups 200 --rounds 1 --warmup-rounds 0 --recovery-keys 20000 --results $${TMPDIR:-/tmp}/millrace-bench" \
	  BENCH_QUERY_ARGS="--records 20000 --keys 2000 --rounds 1 --results $${TMPDIR:-/tmp}/millrace-bench" \
	  bash e2e/bench.sh --records 20000 --rounds 1 --latency-loads 0.5 --latency-runs 1 --latency-seconds 5 --results $${TMPDIR:-/tmp}/millrace-bench

## bench-operator: the operator holding 1,000 StreamApps on the test bed (manual; minutes)
bench-operator:
	@bash e2e/bench-operator.sh $(BENCH_OPERATOR_ARGS)

## bench-scale: a stateful app scaled 1 -> 4 workers, Millrace on the test bed vs Kafka Streams (manual; minutes)
bench-scale:
	@bash e2e/bench-scale.sh $(BENCH_SCALE_ARGS)

## bench-scale-quick: the same on a small state (CI proves it works)
bench-scale-quick:
	@bash e2e/bench-scale.sh --keys 16000 --rate 500 --steady-seconds 3 --timeout-seconds 300 --results $${TMPDIR:-/tmp}/millrace-bench

## autoscale-report: rerun the autoscaling simulator, rewrite docs/autoscaling-sim.md
autoscale-report:
	@MILLRACE_UPDATE_GOLDEN=1 cargo test -q -p millrace-operator --lib autoscale::sim::tests::the_report_in_the_docs_is_current
	@cat docs/autoscaling-sim.md
