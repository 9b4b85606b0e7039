#!/usr/bin/env bash
# Starts the registry service, or applies changed files to the running one: services whose
# definition changed are recreated, and nginx reloads certificates, htpasswd and its config
# gracefully (in-flight pulls finish; the registry keeps running). Idempotent.
# Then waits until the TLS front answers /v2/ with 401 for the registry's name.
# Usage: activate-registry.sh SERVER_NAME PORT
set -euo pipefail

log() { printf '==> %s\n' "$*"; }

server_name="$1"
port="$2"

systemctl daemon-reload
systemctl enable --quiet docker.service registry.service
# Garbage collection on its schedule; restarting the timer applies a changed gcSchedule now.
systemctl enable --quiet registry-gc.timer
systemctl restart registry-gc.timer
if systemctl is-active --quiet registry.service; then
  log "registry.service is running: applying changes and reloading nginx"
  systemctl reload registry.service
else
  log "starting registry.service (first start pulls the images)"
  systemctl start registry.service
fi

log "waiting for https://${server_name}:${port}/v2/ to ask for credentials"
status=000
for _ in $(seq 1 60); do
  status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
    --resolve "${server_name}:${port}:127.0.0.1" \
    --cacert /etc/registry/tls/ca.crt "https://${server_name}:${port}/v2/" || true)"
  [[ "$status" == 401 ]] && break
  sleep 2
done
if [[ "$status" != 401 ]]; then
  echo "activate-registry: expected 401 from /v2/, got ${status}" >&2
  docker compose --file /etc/registry/compose.yaml ps >&2 || true
  docker compose --file /etc/registry/compose.yaml logs --tail 50 >&2 || true
  exit 1
fi
log "registry is up: TLS verified against the stack's CA, /v2/ answers 401"
