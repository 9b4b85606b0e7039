#!/usr/bin/env bash
# Starts the registry service, or applies changed files to the running one: services whose
# definition changed are recreated, and nginx reloads certificates, htpasswd and its config
# gracefully (in-flight pulls finish; the registry keeps running). Idempotent.
# First makes sure dockerd runs with live-restore (from /etc/docker/daemon.json, placed by the
# program), so a dockerd restart or upgrade leaves the containers running.
# Then waits until the TLS front answers /v2/ with 401 for the registry's name, verified
# against CA_FILE.
# Usage: activate-registry.sh SERVER_NAME PORT COMPOSE_FILE CA_FILE [UNIT...]
#   UNIT: systemd units of the host to enable and restart (the request counter; the timers of
#   garbage collection and the disk check)
#   (env ACTIVATE_WAIT_ATTEMPTS, default 60: tries of the 401 wait; ACTIVATE_WAIT_SECONDS,
#   default 2: the interval of that wait and of the live-restore check; for tests)
set -euo pipefail

log() { printf '==> %s\n' "$*"; }

server_name="$1"
port="$2"
compose_file="$3"
ca_file="$4"
units=("${@:5}")
wait_attempts="${ACTIVATE_WAIT_ATTEMPTS:-60}"
wait_seconds="${ACTIVATE_WAIT_SECONDS:-2}"

live_restore() { docker info --format '{{.LiveRestoreEnabled}}' 2>/dev/null || true; }

systemctl daemon-reload
systemctl enable --quiet docker.service registry.service
# The host's own units; a restart applies a changed script or schedule.
if ((${#units[@]} > 0)); then
  systemctl enable --quiet "${units[@]}"
  systemctl restart "${units[@]}"
fi
systemctl is-active --quiet docker.service || systemctl start docker.service
# dockerd reads daemon.json at start; a running one applies live-restore on reload (SIGHUP),
# without stopping any container (docs.docker.com/engine/daemon/live-restore). Then a dockerd
# stop, restart or patch upgrade leaves the containers running and the new dockerd reattaches;
# should it not (the docs promise patch-to-patch upgrades only), the containers still run, and
# the compose restart policy covers a container that did stop.
if [[ "$(live_restore)" != true ]]; then
  log "reloading dockerd to enable live-restore"
  systemctl reload docker.service
  for _ in $(seq 1 10); do
    [[ "$(live_restore)" == true ]] && break
    sleep "$wait_seconds"
  done
  if [[ "$(live_restore)" != true ]]; then
    echo "activate-registry: dockerd did not enable live-restore; check /etc/docker/daemon.json" \
      "and journalctl -u docker.service" >&2
    exit 1
  fi
fi

if systemctl is-active --quiet registry.service; then
  log "registry.service is running: applying changes and reloading nginx"
  systemctl reload registry.service
else
  log "starting registry.service (first start pulls the images)"
  systemctl start registry.service
fi

log "waiting for https://${server_name}:${port}/v2/ to ask for credentials"
status=000
for _ in $(seq 1 "$wait_attempts"); do
  status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
    --resolve "${server_name}:${port}:127.0.0.1" \
    --cacert "$ca_file" "https://${server_name}:${port}/v2/" || true)"
  [[ "$status" == 401 ]] && break
  sleep "$wait_seconds"
done
if [[ "$status" != 401 ]]; then
  echo "activate-registry: expected 401 from /v2/, got ${status}" >&2
  docker compose --file "$compose_file" ps >&2 || true
  docker compose --file "$compose_file" logs --tail 50 >&2 || true
  exit 1
fi
log "registry is up: TLS verified against the stack's CA, /v2/ answers 401"
