#!/usr/bin/env bash
# `make demo`: starts the local stack, installs the chart, and applies the
# orders-router example against real Kafka topics. It grows as the runtime
# lands (issue #4): today the operator reconciles the app into workers, the
# workers are not ready yet, and the StreamApp's status says so.
source "$(dirname "$0")/lib/common.sh"
cd "$REPO_ROOT"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Starting the stack (Kafka, Kubernetes control plane, pod runner)"
eval "$(bash "$E2E_DIR/stack.sh" up)"
cargo build -q --workspace --bins
kubectl get nodes -o wide

step "Kafka: the example's topics, and records written in one transaction"
bash "$E2E_DIR/kafka/kafka.sh" topics --create --if-not-exists --topic orders --partitions 4
for t in orders-large orders-eu orders-other orders-dlq; do
  bash "$E2E_DIR/kafka/kafka.sh" topics --create --if-not-exists --topic "$t" --partitions 1
done
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
for _ in $(seq 1 60); do
  [[ "$(kubectl -n shop get streamapp orders-router -o jsonpath='{.status.tasks}')" == 4 ]] && break
  sleep 1
done
kubectl -n shop get streamapps
kubectl -n shop get statefulsets,configmaps,services,poddisruptionbudgets,serviceaccounts,roles -l millrace.dev/app=orders-router
kubectl -n shop get streamapp orders-router \
  -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}) {.message}{"\n"}{end}'

step "kubectl scale streamapp/orders-router --replicas=3"
kubectl -n shop scale streamapp/orders-router --replicas=3
sleep 3
kubectl -n shop get statefulset orders-router
kubectl -n shop get events --field-selector involvedObject.kind=StreamApp

step "Done. The stack keeps running; use it with:"
bash "$E2E_DIR/stack.sh" env
echo "Logs: $LOG_DIR (pods: $LOG_DIR/pods/<namespace>/<pod>/<container>.log). Stop it all: make stack-down"
