#!/usr/bin/env bash
# The local Kubernetes control plane: etcd, kube-apiserver (RBAC on),
# kube-controller-manager and kube-scheduler on 127.0.0.1.
#
#   controlplane.sh up     build if needed, generate certs, start, wait Ready
#   controlplane.sh down   stop everything it started
#   controlplane.sh status
#
# Kubeconfig (admin, system:masters): .stack/kubeconfig.
# Logs: .stack/logs/{etcd,kube-apiserver,kube-controller-manager,kube-scheduler}.log
source "$(dirname "$0")/../lib/common.sh"

K8S_DIR="$STACK_DIR/k8s"
PKI="$K8S_DIR/pki"
KUBECONFIG_FILE="$STACK_DIR/kubeconfig"
APISERVER_PORT="${MILLRACE_APISERVER_PORT:-6443}"
ETCD_CLIENT_PORT=2379
ETCD_PEER_PORT=2380
COMPONENTS=(kube-scheduler kube-controller-manager kube-apiserver etcd)

# write_kubeconfig FILE CERT_NAME: a kubeconfig authenticating with PKI/CERT_NAME.
write_kubeconfig() {
  local file="$1" cert="$2"
  cat > "$file" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: millrace-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $cert
  user:
    client-certificate: $PKI/$cert.crt
    client-key: $PKI/$cert.key
contexts:
- name: millrace-local
  context: {cluster: millrace-local, user: $cert, namespace: default}
current-context: millrace-local
KUBECONFIG
}

kubectl_local() { kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }
apiserver_ready() { kubectl_local get --raw /readyz >/dev/null 2>&1; }
etcd_ready() { curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health" | grep -q '"health":"true"'; }

all_running() {
  local c
  for c in "${COMPONENTS[@]}"; do pid_alive "$c" || return 1; done
  apiserver_ready
}

up() {
  need curl "Install curl (Debian: apt-get install curl)."
  bash "$E2E_DIR/k8s/build.sh"
  ensure_kubectl
  if all_running; then log "control plane already running"; return 0; fi
  # Something is half up (a killed run): stop it all and start over. etcd's
  # data is test data and a stale member dir can refuse to start, so wipe it.
  down
  require_port_free etcd "$ETCD_CLIENT_PORT"
  require_port_free "etcd peer" "$ETCD_PEER_PORT"
  require_port_free kube-apiserver "$APISERVER_PORT"
  require_port_free kube-controller-manager 10257
  require_port_free kube-scheduler 10259
  rm -rf "$K8S_DIR/etcd"
  mkdir -p "$K8S_DIR" "$LOG_DIR"
  bash "$E2E_DIR/k8s/certs.sh" "$PKI"
  write_kubeconfig "$KUBECONFIG_FILE" admin
  write_kubeconfig "$K8S_DIR/controller-manager.kubeconfig" controller-manager
  write_kubeconfig "$K8S_DIR/scheduler.kubeconfig" scheduler

  : > "$LOG_DIR/etcd.log"
  start_bg etcd "$ETCD_BIN/etcd" --name=millrace --data-dir="$K8S_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="millrace=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync=true --quota-backend-bytes=2147483648
  wait_for etcd 30 "$LOG_DIR/etcd.log" etcd_ready || die "etcd did not start; see $LOG_DIR/etcd.log"

  : > "$LOG_DIR/kube-apiserver.log"
  start_bg kube-apiserver "$K8S_BIN/kube-apiserver" \
    --advertise-address=127.0.0.1 --bind-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
    --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true \
    --authorization-mode=RBAC \
    --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --service-account-issuer="https://127.0.0.1:$APISERVER_PORT" \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --api-audiences="https://127.0.0.1:$APISERVER_PORT" \
    --kubelet-client-certificate="$PKI/admin.crt" --kubelet-client-key="$PKI/admin.key" \
    --profiling=false --v=1
  wait_for kube-apiserver 90 "$LOG_DIR/kube-apiserver.log" apiserver_ready \
    || die "kube-apiserver did not become ready; see $LOG_DIR/kube-apiserver.log"

  : > "$LOG_DIR/kube-controller-manager.log"
  start_bg kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$K8S_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$K8S_DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$K8S_DIR/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --controllers='*' \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range=10.0.0.0/24 --profiling=false --v=1
  : > "$LOG_DIR/kube-scheduler.log"
  start_bg kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig="$K8S_DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig="$K8S_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig="$K8S_DIR/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --profiling=false --v=1
  wait_for kube-controller-manager 60 "$LOG_DIR/kube-controller-manager.log" \
    curl -fsSk https://127.0.0.1:10257/healthz || die "kube-controller-manager did not become healthy"
  wait_for kube-scheduler 60 "$LOG_DIR/kube-scheduler.log" \
    curl -fsSk https://127.0.0.1:10259/healthz || die "kube-scheduler did not become healthy"
  # The default namespace's ServiceAccount is made by the controller manager;
  # pods are refused until it exists.
  wait_for "default ServiceAccount" 60 "$LOG_DIR/kube-controller-manager.log" \
    kubectl_local -n default get serviceaccount default || die "the default ServiceAccount never appeared"
  kubectl_local apply -f "$E2E_DIR/k8s/storageclass.yaml" >/dev/null
  log "control plane ready: $(kubectl_local version -o json | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | tail -n1) at https://127.0.0.1:$APISERVER_PORT"
}

down() {
  stop_bg 20 "${COMPONENTS[@]}"
  # Processes whose pid files were lost still hold the ports.
  pkill -KILL -f "$K8S_BIN/kube-" 2>/dev/null || true
  pkill -KILL -f "$ETCD_BIN/etcd" 2>/dev/null || true
}

status() {
  local c
  for c in "${COMPONENTS[@]}"; do pid_alive "$c" && echo "$c running (pid $(cat "$PID_DIR/$c.pid"))"; done
  return 0
}

mkdir -p "$LOG_DIR" "$PID_DIR"
case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  kubeconfig) echo "$KUBECONFIG_FILE" ;;
  *) die "usage: $0 up | down | status | kubeconfig" ;;
esac
