//go:build tools

// Package controlplane pins the Kubernetes control-plane commands the local
// test bed builds (see ../build.sh). Nothing here is compiled into Millrace.
package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	// Built only when the machine's kubectl is outside the supported skew.
	_ "k8s.io/kubernetes/cmd/kubectl"
)
