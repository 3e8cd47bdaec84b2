#!/usr/bin/env bash
# The whole local stack: Kafka (one KRaft node), the Kubernetes control plane
# and the pod runner that plays the kubelet.
#
#   stack.sh up      start what is not running (idempotent); print exports
#   stack.sh down    stop everything; leaves no process of the stack behind
#   stack.sh status
#   stack.sh env     print the exports again
source "$(dirname "$0")/lib/common.sh"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
PODRUNNER="$CARGO_TARGET_DIR/debug/millrace-podrunner"
NODE_NAME=millrace-node
# Which build the worker and operator pods run: debug (tests), or release
# for measurements (`MILLRACE_BUILD_PROFILE=release make stack-up` on a
# stack that is down; docs/testbed.md).
BUILD_PROFILE="${MILLRACE_BUILD_PROFILE:-debug}"
[[ "$BUILD_PROFILE" == debug || "$BUILD_PROFILE" == release ]] \
  || die "MILLRACE_BUILD_PROFILE must be debug or release, not '$BUILD_PROFILE'"

print_env() {
  echo "export KUBECONFIG=$STACK_DIR/kubeconfig"
  echo "export KAFKA_BOOTSTRAP=$(bash "$E2E_DIR/kafka/kafka.sh" bootstrap single)"
  if [[ -x "$K8S_BIN/kubectl" ]] && [[ "$(command -v kubectl)" == "$K8S_BIN/kubectl" ]]; then
    echo "export PATH=$HELM_BIN:$K8S_BIN:\$PATH"
  else
    echo "export PATH=$HELM_BIN:\$PATH"
  fi
}

node_ready() {
  [[ "$(kubectl --kubeconfig "$STACK_DIR/kubeconfig" get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

podrunner_up() {
  if pid_alive podrunner && node_ready; then log "pod runner already running"; return 0; fi
  stop_bg 10 podrunner
  need cargo "Install Rust (https://rustup.rs)."
  log "building the pod runner and the images it runs (cargo build, $BUILD_PROFILE; e2e/images.sh testbed)"
  (cd "$REPO_ROOT" && cargo build -q -p millrace-podrunner -p millrace-images -p millrace-runtime \
    -p millrace-operator -p millrace-example-enricher)
  if [[ "$BUILD_PROFILE" == release ]]; then
    (cd "$REPO_ROOT" && cargo build -q --release -p millrace-runtime -p millrace-operator)
  fi
  MILLRACE_BUILD_PROFILE="$BUILD_PROFILE" bash "$E2E_DIR/images.sh" testbed
  # Pods run their OCI images (docs/testbed.md); `executables` runs the
  # binaries on the host's files instead.
  local table="$E2E_DIR/images.conf"
  case "${MILLRACE_TESTBED_RUNS:-images}" in
    images) ;;
    executables) table="$E2E_DIR/images-executables.conf" ;;
    *) die "MILLRACE_TESTBED_RUNS must be images or executables, not '$MILLRACE_TESTBED_RUNS'" ;;
  esac
  mkdir -p "$STACK_DIR/podrunner" "$LOG_DIR/pods"
  : > "$LOG_DIR/podrunner.log"
  KUBECONFIG="$STACK_DIR/kubeconfig" RUST_LOG="${RUST_LOG:-info}" MILLRACE_BUILD_PROFILE="$BUILD_PROFILE" \
    start_bg podrunner "$PODRUNNER" \
    --node-name "$NODE_NAME" --state-dir "$STACK_DIR/podrunner" --log-dir "$LOG_DIR/pods" \
    --images "$table" --apiserver-port "${MILLRACE_APISERVER_PORT:-6443}"
  wait_for "node $NODE_NAME" 60 "$LOG_DIR/podrunner.log" node_ready || die "the pod runner's node never became Ready"
  log "pod runner ready: node $NODE_NAME"
}

up() {
  bash "$E2E_DIR/kafka/kafka.sh" up single
  bash "$E2E_DIR/k8s/controlplane.sh" up
  podrunner_up
  print_env
}

down() {
  stop_bg 15 podrunner
  # Pod processes carry MILLRACE_PODRUNNER_POD_UID; the runner kills them on
  # SIGTERM, this catches those of a runner that was SIGKILLed.
  local pid
  for pid in $(grep -l MILLRACE_PODRUNNER_POD_UID= /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  pkill -KILL -f "$PODRUNNER" 2>/dev/null || true
  bash "$E2E_DIR/k8s/controlplane.sh" down
  bash "$E2E_DIR/kafka/kafka.sh" down all
  log "stack stopped"
}

status() {
  bash "$E2E_DIR/kafka/kafka.sh" status
  bash "$E2E_DIR/k8s/controlplane.sh" status
  pid_alive podrunner && echo "podrunner running (pid $(cat "$PID_DIR/podrunner.pid"))"
  return 0
}

mkdir -p "$LOG_DIR" "$PID_DIR"
ensure_kubectl
case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) print_env ;;
  *) die "usage: $0 up | down | status | env" ;;
esac
