#!/usr/bin/env bash
# Makes the registry's data volume safe to detach: stops registry.service (compose down: nothing
# writes to the volume any more), flushes every write, and unmounts MOUNT_POINT. Runs before any
# detach (destroy, droplet or volume replacement). Idempotent: with nothing mounted, or no
# registry.service, it succeeds and changes nothing.
# Usage: release-data-volume.sh MOUNT_POINT
#   (env RELEASE_ATTEMPTS, default 10: unmount attempts one second apart while it is busy)
set -euo pipefail

log() { printf '==> %s\n' "$*"; }

mount_point="$1"
attempts="${RELEASE_ATTEMPTS:-10}"

if systemctl cat registry.service >/dev/null 2>&1; then
  log "stopping registry.service"
  systemctl stop registry.service
fi
sync

if ! mountpoint -q "$mount_point"; then
  log "${mount_point} is not mounted: nothing to release"
  exit 0
fi
log "unmounting ${mount_point}"
for ((attempt = 1; attempt <= attempts; attempt++)); do
  if umount "$mount_point" 2>/dev/null; then
    log "${mount_point} released: the volume can be detached"
    exit 0
  fi
  sleep 1
done
echo "release-data-volume: ${mount_point} is still busy after ${attempts} attempts;" \
  "not detaching a mounted volume. Processes using it:" >&2
fuser -vm "$mount_point" >&2 || true
exit 1
