#!/usr/bin/env bash
# Makes dockerd use the registry mirror /etc/docker/daemon.json names (placed by the program):
# `registry-mirrors` is one of the options dockerd reloads on SIGHUP (`systemctl reload docker`),
# so no container stops. Docker then pulls Docker Hub images through the mirror, and from Docker
# Hub itself when the mirror fails. Idempotent.
# With --none (hubCache turned off): dockerd stops using any mirror, without a restart (which
# would stop this host's containers: no live-restore here). A reload replaces the mirrors only
# when daemon.json sets the key (moby daemon/reload.go, reloadRegistryConfig: `if
# conf.IsValueSet("registry-mirrors")`), so the file first gets an empty list, dockerd reloads,
# and then the file goes (the program placed it; dockerd had none before).
# Usage: use-registry-mirror.sh MIRROR_URL | use-registry-mirror.sh --none DAEMON_JSON
set -euo pipefail
log() { printf '==> %s\n' "$*"; }
mirrors() { docker info --format '{{json .RegistryConfig.Mirrors}}' 2>/dev/null || true; }
systemctl is-active --quiet docker.service || systemctl start docker.service
if [[ "$1" == --none ]]; then
  daemon_json="$2"
  if [[ "$(mirrors)" != "[]" && "$(mirrors)" != null ]]; then
    log "reloading dockerd without registry mirrors"
    printf '{"registry-mirrors": []}\n' >"$daemon_json"
    systemctl reload docker.service
    for _ in $(seq 1 10); do
      [[ "$(mirrors)" == "[]" || "$(mirrors)" == null ]] && break
      sleep 1
    done
  fi
  if [[ "$(mirrors)" != "[]" && "$(mirrors)" != null ]]; then
    echo "use-registry-mirror: dockerd still lists mirrors ($(mirrors));" \
      "check journalctl -u docker.service" >&2
    exit 1
  fi
  rm -f "$daemon_json"
  log "dockerd pulls Docker Hub images from Docker Hub"
  exit 0
fi
mirror="$1"
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
