#!/usr/bin/env bash
# TLS material and a SCRAM password for the single node's SSL and SASL_SSL
# listeners, generated on the fly into DIR (a fresh `kafka.sh up single`
# makes new ones):
#   ca.crt, ca.key                 the test CA
#   broker.pem                     the broker's key and certificate (SAN
#                                  127.0.0.1, localhost), one PEM keystore
#   client.crt, client.key         a client certificate for mutual TLS
#   expired.crt, expired.key       a client certificate that expired in 2020
#   other-ca.crt                   a CA that signed nothing here (an unknown CA)
#   scram-password                 the password of the SCRAM-SHA-512 user `millrace`
source "$(dirname "$0")/../lib/common.sh"
need openssl "Install openssl (Debian: apt-get install openssl)."
dir="${1:?usage: tls.sh DIR}"
mkdir -p "$dir" && cd "$dir"

key() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=millrace-test-kafka-ca" -out ca.crt 2>/dev/null
key other-ca.key
openssl req -x509 -new -key other-ca.key -sha256 -days 3650 -subj "/CN=some-other-ca" -out other-ca.crt 2>/dev/null

# sign NAME CN EXTENSIONS: NAME.key and NAME.crt, signed by the CA.
sign() {
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -sha256 \
    -extfile <(printf '%s\n' "$3") -out "$1.crt" 2>/dev/null
}
sign broker localhost "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth,clientAuth"
cat broker.key broker.crt > broker.pem
sign client millrace-client "extendedKeyUsage=clientAuth"

# A certificate whose validity ended in 2020: `openssl ca` takes explicit dates.
key expired.key
openssl req -new -key expired.key -subj "/CN=millrace-expired" -out expired.csr 2>/dev/null
: > index.txt; echo 1000 > serial
cat > ca.cnf <<CNF
[ca]
default_ca = test
[test]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any
[any]
commonName = supplied
CNF
openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -in expired.csr -out expired.crt \
  -startdate 20200101000000Z -enddate 20200102000000Z -notext 2>/dev/null
rm -f ./*.csr index.txt* serial* ca.cnf ./1000.pem ca.srl

openssl rand -hex 16 > scram-password
chmod 600 ./*.key scram-password broker.pem
