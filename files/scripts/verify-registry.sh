#!/usr/bin/env bash
# The proof that the registry works for a client: docker login (password from a 0600 file,
# passed on stdin), then build, push, delete locally and pull back a tiny FROM scratch image,
# and compare digests. Fails (and so fails `pulumi up`) on any error.
# Usage: verify-registry.sh ADDRESS USER PASSWORD_FILE
set -euo pipefail

log() { printf '==> %s\n' "$*"; }

address="$1"
user="$2"
password_file="$3"
host_name="${address%:*}"

log "waiting for ${host_name} to resolve"
for _ in $(seq 1 60); do
  getent hosts "$host_name" >/dev/null && break
  sleep 5
done
getent hosts "$host_name" >/dev/null || { echo "verify-registry: ${host_name} does not resolve" >&2; exit 1; }

systemctl is-active --quiet docker.service || systemctl start docker.service

log "docker login ${address} as ${user}"
docker login --username "$user" --password-stdin "$address" <"$password_file"

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
image="${address}/private-registry/proof:$(hostname)"
printf 'pushed by %s at %s\n' "$(hostname)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"${workdir}/proof.txt"
printf 'FROM scratch\nCOPY proof.txt /proof.txt\n' >"${workdir}/Dockerfile"

log "building ${image} FROM scratch"
docker build --quiet --tag "$image" "$workdir" >/dev/null
log "pushing ${image}"
docker push --quiet "$image"
pushed="$(docker image inspect --format '{{index .RepoDigests 0}}' "$image")"
docker image rm --force "$image" >/dev/null
log "pulling ${image} back"
docker pull --quiet "$image" >/dev/null
pulled="$(docker image inspect --format '{{index .RepoDigests 0}}' "$image")"
if [[ "$pushed" != "$pulled" ]]; then
  echo "verify-registry: pulled ${pulled}, pushed ${pushed}" >&2
  exit 1
fi
log "proof passed: ${pulled}"
