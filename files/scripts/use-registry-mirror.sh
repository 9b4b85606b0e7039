#!/usr/bin/env bash
# Makes dockerd use the registry mirror /etc/docker/daemon.json names (placed by the program):
# `registry-mirrors` is one of the options dockerd reloads on SIGHUP (`systemctl reload docker`),
# so no container stops. Docker then pulls Docker Hub images through the mirror, and from Docker
# Hub itself when the mirror fails. Idempotent.
# Usage: use-registry-mirror.sh MIRROR_URL
set -euo pipefail
log() { printf '==> %s\n' "$*"; }
mirror="$1"
mirrors() { docker info --format '{{json .RegistryConfig.Mirrors}}' 2>/dev/null || true; }
systemctl is-active --quiet docker.service || systemctl start docker.service
if [[ "$(mirrors)" != *"\"${mirror}/\""* ]]; then
  log "reloading dockerd to use the registry mirror ${mirror}"
  systemctl reload docker.service
  for _ in $(seq 1 10); do
    [[ "$(mirrors)" == *"\"${mirror}/\""* ]] && break
    sleep 1
  done
fi
if [[ "$(mirrors)" != *"\"${mirror}/\""* ]]; then
  echo "use-registry-mirror: dockerd does not list ${mirror} as a mirror ($(mirrors));" \
    "check /etc/docker/daemon.json and journalctl -u docker.service" >&2
  exit 1
fi
log "dockerd pulls Docker Hub images through ${mirror}"
