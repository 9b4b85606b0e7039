#!/usr/bin/env bash
# Garbage collection of the registry's storage; run by registry-gc.service (registry-gc.timer).
# Rendered by the private-registry Pulumi program; do not edit on the host.
#  1. The registry restarts read-only (storage.maintenance.readonly): pulls keep working, pushes
#     fail at once with "405 Method Not Allowed", nothing can link a blob GC is about to delete.
#  2. `garbage-collect --dry-run` (logged), then the real run, in a one-off container on the same
#     storage.
#  3. The registry restarts read-write and nginx reloads: ALWAYS, even when GC failed.
#  4. What was freed (bytes, blobs) and the disk usage go to the journal.
set -euo pipefail

compose_file={{compose_file}}
blobs_dir={{data_dir}}/docker/registry/v2/blobs
data_mount={{data_mount}}
config_in_container={{registry_config}}
registry_unit={{registry_unit}}
registry_service={{registry_service}}
nginx_service={{nginx_service}}
nginx_conf={{nginx_conf}}
gc_flags=({{gc_flags}})

log() { printf 'registry-gc: %s\n' "$*"; }

# Total bytes and count of the stored blobs (each blob is one `data` file).
blob_usage() {
  find "$blobs_dir" -type f -name data -printf '%s\n' 2>/dev/null \
    | awk '{bytes += $1; count += 1} END {printf "%d %d\n", bytes, count}'
}

compose() { docker compose --file "$compose_file" "$@"; }

reload_nginx() {
  # The registry container was recreated: nginx resolves `registry` again on reload.
  compose exec -T "$nginx_service" nginx -c "$nginx_conf" -s reload
}

if ! systemctl is-active --quiet "$registry_unit"; then
  log "${registry_unit} is not running: nothing to collect now"
  exit 0
fi

read -r bytes_before blobs_before < <(blob_usage)
log "before: ${blobs_before} blobs, ${bytes_before} bytes; disk: $(df -h --output=used,avail,pcent "$data_mount" | tail -n 1)"

override="$(mktemp --suffix=.yaml)"
restore() {
  local status=$?
  rm -f "$override"
  log "back to read-write"
  if ! systemctl reload "$registry_unit"; then
    log "ERROR: could not restart the registry read-write; run: systemctl reload ${registry_unit}"
    exit 1
  fi
  exit "$status"
}
trap restore EXIT

cat >"$override" <<YAML
services:
  ${registry_service}:
    environment:
      REGISTRY_STORAGE_MAINTENANCE_READONLY: '{"enabled": true}'
YAML
log "registry read-only (pulls work, pushes are refused) for the collection"
compose --file "$override" up --detach --wait --no-deps "$registry_service"
reload_nginx

log "dry run (${gc_flags[*]:-no flags}):"
compose run --rm --no-deps -T "$registry_service" garbage-collect --dry-run "${gc_flags[@]}" "$config_in_container"
log "collecting"
compose run --rm --no-deps -T "$registry_service" garbage-collect "${gc_flags[@]}" "$config_in_container"

read -r bytes_after blobs_after < <(blob_usage)
log "freed $((bytes_before - bytes_after)) bytes in $((blobs_before - blobs_after)) blobs"
log "after: ${blobs_after} blobs, ${bytes_after} bytes; disk: $(df -h --output=used,avail,pcent "$data_mount" | tail -n 1)"
