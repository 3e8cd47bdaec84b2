#!/usr/bin/env bash
# `make test`: lint, bring the stack up, run every Rust test (unit and
# integration against the real broker and API server), then check the stack
# scripts themselves (which ends with the stack stopped).
source "$(dirname "$0")/lib/common.sh"
cd "$REPO_ROOT"
started=$SECONDS

log "lint: cargo fmt --check, cargo clippy -D warnings"
cargo fmt --all --check || die "code is not formatted: run 'cargo fmt --all'"
cargo clippy -q --workspace --all-targets -- -D warnings

eval "$(bash "$E2E_DIR/stack.sh" up)"
# Pods run images of the binaries in target/ (e2e/images.conf): build both
# from this tree (the pod runner unpacks a changed image again).
cargo build -q --workspace --bins
bash "$E2E_DIR/images.sh" testbed
log "cargo test --workspace (KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP KUBECONFIG=$KUBECONFIG)"
cargo test --workspace

log "benchmark harness, quick variant (proves it works; figures come from make bench)"
make -s bench-quick >/dev/null
make -s bench-scale-quick >/dev/null

log "images: make images, inspected with skopeo, reproducible, run from their own files"
bash "$E2E_DIR/tests/images.sh"

log "stack scripts: idempotent up, recovery, three-node cluster, clean down"
bash "$E2E_DIR/tests/stack-lifecycle.sh"
log "all tests passed in $((SECONDS - started))s"
