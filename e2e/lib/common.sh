# Shared settings and helpers for the local stack scripts. Source, don't run.
# shellcheck shell=bash

set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_ROOT="$(cd "$E2E_DIR/.." && pwd)"

# Downloads and builds that outlive a checkout (jars, Go binaries).
MILLRACE_CACHE="${MILLRACE_CACHE:-$HOME/.cache/millrace}"
# Runtime state of the running stack: data dirs, logs, pids, certs, kubeconfig.
STACK_DIR="${MILLRACE_STACK_DIR:-$REPO_ROOT/.stack}"
LOG_DIR="$STACK_DIR/logs"
PID_DIR="$STACK_DIR/pids"

KAFKA_VERSION="4.4.0"
KUBERNETES_VERSION="v1.33.13"
ETCD_VERSION="v3.5.21"
HELM_VERSION="v3.20.2"

K8S_BIN="$MILLRACE_CACHE/bin/kubernetes-$KUBERNETES_VERSION"
ETCD_BIN="$MILLRACE_CACHE/bin/etcd-$ETCD_VERSION"
HELM_BIN="$MILLRACE_CACHE/bin/helm-$HELM_VERSION"

# ensure_kubectl: a kubectl within one minor version of the server on PATH.
# The machine's kubectl is used when it fits; otherwise one is built from the
# same Kubernetes module as the server and put first on PATH.
ensure_kubectl() {
  local server client
  server="$(echo "$KUBERNETES_VERSION" | cut -d. -f2)"
  if command -v kubectl >/dev/null 2>&1; then
    client="$(kubectl version --client -o json 2>/dev/null | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | head -n1)"
    if [[ -n "$client" ]] && (( client >= server - 1 && client <= server + 1 )); then
      return 0
    fi
    log "kubectl 1.${client:-?} is outside the supported skew of the 1.$server API server; using kubectl $KUBERNETES_VERSION"
  fi
  if [[ ! -x "$K8S_BIN/kubectl" ]]; then
    need go "Install Go 1.24 or newer, or kubectl 1.$((server - 1))-1.$((server + 1))."
    log "building kubectl $KUBERNETES_VERSION"
    (cd "$E2E_DIR/k8s/controlplane" && go build -trimpath -ldflags "-s -w \
      -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION \
      -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION" -o "$K8S_BIN/kubectl" k8s.io/kubernetes/cmd/kubectl)
  fi
  export PATH="$K8S_BIN:$PATH"
}

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

need() {
  local tool="$1" hint="$2"
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not installed. $hint"
}

# port_free PORT: true when nothing listens on 127.0.0.1:PORT.
port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# require_port_free NAME PORT: fail with the listener's identity when taken.
require_port_free() {
  local name="$1" port="$2"
  if ! port_free "$port"; then
    local who
    who="$(ss -ltnpH "sport = :$port" 2>/dev/null | sed -E 's/.*users:\(\("([^"]+)",pid=([0-9]+).*/\1 (pid \2)/' | head -n1)"
    die "$name needs 127.0.0.1:$port but it is in use${who:+ by $who}. Stop that process, or run 'make stack-down' if it is a stack left from an earlier run."
  fi
}

# pid_alive NAME: true when the pid file of NAME names a live process.
pid_alive() {
  local f="$PID_DIR/$1.pid"
  [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# start_bg NAME CMD...: start CMD detached in its own session, log to
# $LOG_DIR/NAME.log, remember its pid. setsid makes the pid a process-group
# leader so stop_bg can signal everything it spawned.
start_bg() {
  local name="$1"; shift
  mkdir -p "$LOG_DIR" "$PID_DIR"
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$PID_DIR/$name.pid"
}

# stop_bg GRACE_SECONDS NAME...: SIGTERM every named process group at once,
# SIGKILL what is left after the grace period. Signalling all first matters for
# quorum members (a Kafka controller waits for its peers while they live).
stop_bg() {
  local grace="$1"; shift
  local name pid pids=()
  for name in "$@"; do
    [[ -f "$PID_DIR/$name.pid" ]] || continue
    pid="$(cat "$PID_DIR/$name.pid")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$PID_DIR/$name.pid"
  done
  local deadline=$((SECONDS + grace)) alive
  while :; do
    alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    (( ${#alive[@]} == 0 )) && return 0
    (( SECONDS >= deadline )) && break
    sleep 0.2
  done
  log "pids ${alive[*]} did not stop within ${grace}s; killing them"
  for pid in "${alive[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; done
}

# wait_for DESCRIPTION TIMEOUT_SECONDS LOGFILE CMD...: poll CMD until it
# succeeds; on timeout print the log tail so the reason is visible.
wait_for() {
  local what="$1" timeout="$2" logfile="$3"; shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS >= deadline )); then
      log "$what was not ready after ${timeout}s; last lines of $logfile:"
      tail -n 30 "$logfile" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

# The benchmarks' release binaries and Kafka Streams contender (bench/kstreams),
# on the broker's Kafka version; the harness names it in its reports.
build_bench_contenders() {
  need mvn "Install Maven 3.8+ (Debian: apt-get install maven)."
  need java "Install a Java 17+ runtime."
  need fc-list "Install fontconfig and a font for the charts (Debian: apt-get install fontconfig libfontconfig1-dev libfreetype-dev fonts-dejavu-core)."
  log "building release binaries and the Kafka Streams app"
  cargo build -q --release -p millrace-runtime -p millrace-bench
  export KAFKA_VERSION
  # `clean`: copy-dependencies adds to target/lib, and a classpath of lib/* with
  # two versions of one jar (after a version change) runs whichever comes first.
  if ! mvn -B -q -Dstyle.color=never -Dkafka.version="$KAFKA_VERSION" -f bench/kstreams/pom.xml clean package -DskipTests > "$LOG_DIR/bench-mvn.log" 2>&1; then
    tail -n 20 "$LOG_DIR/bench-mvn.log" >&2
    die "building bench/kstreams failed (log: $LOG_DIR/bench-mvn.log)"
  fi
}
