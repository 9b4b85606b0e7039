#!/usr/bin/env bash
# Releases the registry's data volume before it is detached: stops the registry, syncs and
# unmounts the filesystem. Idempotent; succeeds when nothing is mounted or the unit is absent.
# (Placeholder with the agreed signature; the host scripts' branch owns the body.)
# Usage: release-data-volume.sh MOUNT_POINT
set -euo pipefail

mount_point="$1"

if systemctl list-unit-files registry.service >/dev/null 2>&1; then
  systemctl stop registry.service
fi
sync
if mountpoint -q "$mount_point"; then
  umount "$mount_point"
fi
