#!/bin/sh
# Development certificates for the Envoy TLS listener (NOT for production).
#
#   envoy/gen-dev-certs.sh [out-dir] [extra SAN, e.g. DNS:sync.example.test]
#
# Writes into out-dir (default: envoy/certs, mounted at /etc/envoy/certs by docker-compose.yml):
#   ca.crt / ca.key          a throwaway CA: give ca.crt to agents as their trusted root
#   server.crt / server.key  the listener's cert (SAN localhost, envoy, 127.0.0.1, ::1)
set -eu
out=${1:-"$(dirname "$0")/certs"}
extra=${2:-}
san="DNS:localhost,DNS:envoy,IP:127.0.0.1,IP:::1${extra:+,$extra}"
mkdir -p "$out"
cd "$out"
umask 077

openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout ca.key -out ca.crt -days 825 -subj "/CN=branchsync dev CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null

cat > server.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san
EXT
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
  -out server.crt -days 825 -extfile server.ext 2>/dev/null
rm -f server.csr server.ext ca.srl

# Envoy drops root and runs as uid 101 in the official image: it must be able to read the key.
chmod 644 ca.crt server.crt server.key
echo "wrote $(pwd)/{ca.crt,server.crt,server.key} (SAN $san)"
