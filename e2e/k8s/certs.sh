#!/usr/bin/env bash
# Generates the local control plane's PKI with openssl into DIR (idempotent):
# a CA, the API server's serving cert, client certs for admin (system:masters),
# the controller manager and the scheduler, and the service-account key pair.
source "$(dirname "$0")/../lib/common.sh"
need openssl "Install openssl (Debian: apt-get install openssl)."

dir="${1:?usage: certs.sh DIR}"
mkdir -p "$dir" && cd "$dir"
[[ -f .complete ]] && exit 0

openssl genrsa -out ca.key 2048 2>/dev/null
openssl req -x509 -new -nodes -key ca.key -sha256 -days 3650 -subj "/CN=millrace-local-ca" -out ca.crt 2>/dev/null

# issue NAME SUBJECT EXTENSIONS: a key and a CA-signed cert valid for 10 years.
issue() {
  local name="$1" subj="$2" ext="$3"
  openssl genrsa -out "$name.key" 2048 2>/dev/null
  openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr" 2>/dev/null
  printf '%s\n' "$ext" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

client_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
# 10.0.0.1 is the ClusterIP of the 'kubernetes' Service in 10.0.0.0/24.
issue apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
issue admin "/O=system:masters/CN=millrace-admin" "$client_ext"
issue controller-manager "/CN=system:kube-controller-manager" "$client_ext"
issue scheduler "/CN=system:kube-scheduler" "$client_ext"
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
chmod 600 ./*.key
touch .complete
