#!/usr/bin/env bash
# The stack scripts themselves, on the real processes: `up` is idempotent,
# recovers from a killed run, refuses a taken port with a clear message, the
# three-node Kafka cluster comes up, and `down` leaves no process behind.
# Ends with the stack stopped.
source "$(dirname "$0")/../lib/common.sh"

fail() { log "FAIL: $*"; exit 1; }
pass() { log "ok: $*"; }

# stack_processes: pids of anything the stack runs (brokers, control plane,
# pod runner, pod processes).
stack_processes() {
  {
    pgrep -f "kafka.Kafka $STACK_DIR/" || true
    pgrep -f "$MILLRACE_CACHE/bin/" || true
    pgrep -f "millrace-podrunner --node-name" || true
    grep -l MILLRACE_PODRUNNER_POD_UID= /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 || true
  } | sort -u
}

bash "$E2E_DIR/stack.sh" up >/dev/null
pids_before="$(stack_processes)"
out="$(bash "$E2E_DIR/stack.sh" up 2>&1)" || fail "second 'stack.sh up' failed: $out"
grep -q "already running" <<<"$out" || fail "second 'up' restarted something: $out"
[[ "$(stack_processes)" == "$pids_before" ]] || fail "second 'up' changed the set of processes"
grep -q '^export KUBECONFIG=' <<<"$out" && grep -q '^export KAFKA_BOOTSTRAP=' <<<"$out" || fail "'up' did not print the exports"
pass "stack-up twice: same processes, exports printed"

# A broker killed with SIGKILL leaves a pid file and a data dir behind.
broker_pid="$(cat "$PID_DIR/kafka-single-1.pid")"
kill -KILL "$broker_pid"
timeout 30 tail --pid="$broker_pid" -f /dev/null || fail "the SIGKILLed broker did not exit"
bash "$E2E_DIR/stack.sh" up >/dev/null 2>&1 || fail "'up' did not recover from a killed broker"
kcat -b 127.0.0.1:9092 -L -m 5 >/dev/null 2>&1 || fail "broker not answering after recovery"
pass "recovered from a SIGKILLed broker"

bash "$E2E_DIR/kafka/kafka.sh" up cluster >/dev/null 2>&1 || fail "three-node cluster did not start"
brokers="$(kcat -b "$(bash "$E2E_DIR/kafka/kafka.sh" bootstrap cluster)" -L -m 5 | grep -c '^  broker ')"
[[ "$brokers" == 3 ]] || fail "cluster metadata lists $brokers brokers, expected 3"
bash "$E2E_DIR/kafka/kafka.sh" down cluster
pass "three-node cluster up with 3 brokers, then down"

bash "$E2E_DIR/stack.sh" down >/dev/null 2>&1
left="$(stack_processes)"
[[ -z "$left" ]] || fail "processes left after stack-down: $(ps -o pid=,args= -p "$(tr '\n' ',' <<<"$left" | sed 's/,$//')")"
pass "stack-down left no process"

# A port taken by something else is named, with the fix.
# The squatter says "bound" only once it listens; reading that line (not a
# sleep) is what orders the check after the bind on a loaded machine.
coproc SQUAT { exec python3 -c 'import socket,sys,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 9092)); s.listen(); print("bound", flush=True); time.sleep(120)'; }
squatter=$SQUAT_PID
read -r -t 30 bound <&"${SQUAT[0]}" || true
[[ "${bound:-}" == bound ]] || { kill "$squatter" 2>/dev/null; fail "the port squatter never bound 127.0.0.1:9092"; }
if out="$(bash "$E2E_DIR/kafka/kafka.sh" up single 2>&1)"; then
  kill "$squatter"; bash "$E2E_DIR/kafka/kafka.sh" down all; fail "kafka started although 9092 was taken"
fi
kill "$squatter" 2>/dev/null || true
grep -q "127.0.0.1:9092 but it is in use" <<<"$out" || fail "port-in-use message unclear: $out"
pass "a taken port is refused with: $(grep error <<<"$out")"
