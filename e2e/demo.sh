#!/usr/bin/env bash
# `make demo`: starts the local stack, installs the chart, applies the
# orders-router example, and shows real records routed exactly once by the
# workers the operator runs (pods are local processes of the pod runner).
source "$(dirname "$0")/lib/common.sh"
cd "$REPO_ROOT"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Starting the stack (Kafka, Kubernetes control plane, pod runner)"
eval "$(bash "$E2E_DIR/stack.sh" up)"
cargo build -q --workspace --bins
kubectl get nodes -o wide

step "Kafka: fresh topics for the example, and orders written in one transaction"
# A clean slate: an earlier demo's app and topics (tests use them too).
kubectl -n shop delete streamapp orders-router --ignore-not-found --wait=true >/dev/null 2>&1 || true
bash "$E2E_DIR/kafka/kafka.sh" topics --delete --if-exists --topic 'orders.*' 2>/dev/null || true
create_topic() {
  for _ in $(seq 1 30); do
    bash "$E2E_DIR/kafka/kafka.sh" topics --create --if-not-exists --topic "$1" --partitions "$2" 2>/dev/null && return 0
    sleep 1 # still being deleted
  done
  die "could not create topic $1"
}
create_topic orders 4
for t in orders-large orders-eu orders-other orders-dlq; do create_topic "$t" 1; done
for i in $(seq 1 8); do
  region=$([[ $((i % 2)) == 0 ]] && echo eu || echo us)
  echo "order-$i:{\"id\":$i,\"status\":\"paid\",\"amount\":$((i * 250)),\"region\":\"$region\"}"
done | kcat -b "$KAFKA_BOOTSTRAP" -P -t orders -K: -X transactional.id=millrace-demo
kcat -b "$KAFKA_BOOTSTRAP" -C -t orders -e -q -X isolation.level=read_committed -f 'partition %p offset %o  %k  %s\n' | sort

step "helm install millrace charts/millrace"
helm upgrade --install millrace charts/millrace -n millrace-system --create-namespace --wait --timeout 120s
kubectl -n millrace-system get pods -o wide

step "kubectl apply -f examples/orders-router.yaml"
kubectl create namespace shop --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n shop apply -f examples/orders-router.yaml
kubectl -n shop wait streamapp/orders-router --for=condition=Ready --timeout=120s
kubectl -n shop get streamapps
kubectl -n shop get pods -o wide
kubectl -n shop get statefulsets,configmaps,services,poddisruptionbudgets,serviceaccounts,roles -l millrace.dev/app=orders-router
kubectl -n shop get streamapp orders-router \
  -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}) {.message}{"\n"}{end}'

step "Routed, exactly once (read_committed): large orders, EU orders, the rest, and a malformed one"
echo 'bad-1:this is not JSON' | kcat -b "$KAFKA_BOOTSTRAP" -P -t orders -K:
sleep 3
for t in orders-large orders-eu orders-other orders-dlq; do
  echo "-- $t"
  kcat -b "$KAFKA_BOOTSTRAP" -C -t "$t" -e -q -X isolation.level=read_committed \
    -f '%k  %s  %h\n' 
done

step "kubectl scale streamapp/orders-router --replicas=3"
kubectl -n shop scale streamapp/orders-router --replicas=3
sleep 3
kubectl -n shop get statefulset orders-router
kubectl -n shop get events --field-selector involvedObject.kind=StreamApp

step "Task placement: which worker runs which task (the operator's placement ConfigMap)"
sleep 5
kubectl -n shop get configmap orders-router-placement -o jsonpath='{.data.placement\.json}'; echo
kubectl -n shop get streamapp orders-router -o jsonpath='{.status.placement}'; echo

step "Lag-driven autoscaling: 50 records/s per worker, then a backlog of 3,000 orders"
kubectl -n shop patch streamapp orders-router --type merge -p '{"spec":{"autoscaling":{"mode":"Lag","minReplicas":1,"pollInterval":"3s","targetDrainTime":"15s","scaleDown":{"stabilizationWindow":"20s"},"cooldown":"5s"},"pipeline":{"maxRecordsPerSecond":50}}}'
sleep 10
for i in $(seq 1 3000); do
  echo "bulk-$i:{\"id\":$i,\"status\":\"paid\",\"amount\":$((i % 2000)),\"region\":\"eu\"}"
done | kcat -b "$KAFKA_BOOTSTRAP" -P -t orders -K:
for _ in $(seq 1 16); do
  kubectl -n shop get streamapp orders-router --no-headers
  sleep 5
done
kubectl -n shop get events --field-selector involvedObject.kind=StreamApp -o custom-columns=REASON:.reason,MESSAGE:.message | grep -E 'Scaled|Limited' || true

step "Done. The stack keeps running; use it with:"
bash "$E2E_DIR/stack.sh" env
echo "Logs: $LOG_DIR (pods: $LOG_DIR/pods/<namespace>/<pod>/<container>.log). Stop it all: make stack-down"
