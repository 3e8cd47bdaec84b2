#!/usr/bin/env bash
# Builds the Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler), etcd and helm from the Go module proxy into the cache.
# Pinned versions live in e2e/lib/common.sh; a second run is a no-op.
source "$(dirname "$0")/../lib/common.sh"

need go "Install Go 1.24 or newer (https://go.dev/doc/install)."

build_kubernetes() {
  local bins=(kube-apiserver kube-controller-manager kube-scheduler)
  local missing=0 b
  for b in "${bins[@]}"; do [[ -x "$K8S_BIN/$b" ]] || missing=1; done
  (( missing )) || return 0
  local minor; minor="$(echo "$KUBERNETES_VERSION" | cut -d. -f2)"
  # The same ldflags as kubernetes' hack/lib/version.sh, so the server reports
  # a real version and kubectl's skew check has something to compare.
  local ldflags="-s -w \
    -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION \
    -X k8s.io/component-base/version.gitMajor=1 \
    -X k8s.io/component-base/version.gitMinor=$minor \
    -X k8s.io/component-base/version.gitTreeState=clean \
    -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION \
    -X k8s.io/client-go/pkg/version.gitMajor=1 \
    -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  log "building Kubernetes $KUBERNETES_VERSION control plane (cold: 10-25 minutes on 2 cores)"
  mkdir -p "$K8S_BIN.tmp"
  (cd "$E2E_DIR/k8s/controlplane" && go build -trimpath -ldflags "$ldflags" -o "$K8S_BIN.tmp/" \
    $(for b in "${bins[@]}"; do printf 'k8s.io/kubernetes/cmd/%s ' "$b"; done))
  rm -rf "$K8S_BIN" && mv "$K8S_BIN.tmp" "$K8S_BIN"
}

build_etcd() {
  [[ -x "$ETCD_BIN/etcd" ]] && return 0
  log "building etcd $ETCD_VERSION"
  mkdir -p "$ETCD_BIN"
  (cd "$E2E_DIR/k8s/etcd" && go build -trimpath -ldflags "-s -w" -o "$ETCD_BIN/etcd.tmp" .)
  mv "$ETCD_BIN/etcd.tmp" "$ETCD_BIN/etcd"
}

build_helm() {
  [[ -x "$HELM_BIN/helm" ]] && return 0
  log "building helm $HELM_VERSION"
  mkdir -p "$HELM_BIN"
  GOBIN="$HELM_BIN" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

build_etcd
build_helm
build_kubernetes
log "control-plane binaries ready in $MILLRACE_CACHE/bin"
