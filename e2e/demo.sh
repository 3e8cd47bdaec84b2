#!/usr/bin/env bash
# `make demo`: starts the local stack and shows each part working with real
# records and real pods. It grows as the operator and runtime land; today it
# shows the test bed they will run on.
source "$(dirname "$0")/lib/common.sh"
cd "$REPO_ROOT"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Starting the stack (Kafka, Kubernetes control plane, pod runner)"
eval "$(bash "$E2E_DIR/stack.sh" up)"
kubectl get nodes -o wide

step "Kafka: a 3-partition topic, records written in one transaction, read back under read_committed"
topic="demo-orders"
bash "$E2E_DIR/kafka/kafka.sh" topics --create --if-not-exists --topic "$topic" --partitions 3
for i in $(seq 1 9); do echo "order-$i:{\"id\":$i,\"amount\":$((i * 10))}"; done \
  | kcat -b "$KAFKA_BOOTSTRAP" -P -t "$topic" -K: -X transactional.id=millrace-demo
kcat -b "$KAFKA_BOOTSTRAP" -C -t "$topic" -e -q -X isolation.level=read_committed -f 'partition %p offset %o  %k  %s\n' | sort

step "Kubernetes: a StatefulSet of 3 pods, each a local process on its own loopback IP"
kubectl create namespace millrace-demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n millrace-demo apply -f tests/fixtures/web-statefulset.yaml
kubectl -n millrace-demo rollout status statefulset/web --timeout=120s
kubectl -n millrace-demo get pods -o wide
ip="$(kubectl -n millrace-demo get pod web-0 -o jsonpath='{.status.podIP}')"
echo "web-0 answers at http://$ip:8080/hello.txt: $(curl -s "http://$ip:8080/hello.txt")"

step "Scaling the StatefulSet to 1"
kubectl -n millrace-demo scale statefulset/web --replicas=1
kubectl -n millrace-demo wait --for=delete pod/web-1 pod/web-2 --timeout=60s || true
kubectl -n millrace-demo get pods -o wide

step "Done. The stack keeps running; use it with:"
bash "$E2E_DIR/stack.sh" env
echo "Logs: $LOG_DIR (pods: $LOG_DIR/pods/<namespace>/<pod>/<container>.log). Stop it all: make stack-down"
