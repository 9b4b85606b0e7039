#!/usr/bin/env bash
# Mounts the DigitalOcean block storage volume that holds the registry's data. Idempotent.
# Never formats a volume that already has a filesystem: data survives a replaced droplet.
# Usage: mount-data-volume.sh VOLUME_NAME MOUNT_POINT DATA_DIR
set -euo pipefail

log() { printf '==> %s\n' "$*"; }

volume_name="$1"
mount_point="$2"
data_dir="$3"
device="/dev/disk/by-id/scsi-0DO_Volume_${volume_name}"

log "waiting for volume ${volume_name} to be attached"
for _ in $(seq 1 120); do
  [[ -b "$device" ]] && break
  sleep 1
done
if [[ ! -b "$device" ]]; then
  echo "mount-data-volume: ${device} did not appear within 120s" >&2
  exit 1
fi

if ! blkid -o value -s TYPE "$device" >/dev/null 2>&1; then
  log "volume has no filesystem yet: creating ext4"
  mkfs.ext4 -q -L registry-data "$device"
fi

uuid="$(blkid -o value -s UUID "$device")"
fstab_line="UUID=${uuid} ${mount_point} ext4 defaults,nofail,discard,noatime 0 2"
mkdir -p "$mount_point"
if ! grep -qF "$fstab_line" /etc/fstab; then
  log "adding ${mount_point} to /etc/fstab"
  # Drop a stale entry for this mount point (a previous volume), then add ours.
  sed -i "\\#[[:space:]]${mount_point}[[:space:]]#d" /etc/fstab
  printf '%s\n' "$fstab_line" >>/etc/fstab
  systemctl daemon-reload
fi
if ! mountpoint -q "$mount_point"; then
  log "mounting ${device} at ${mount_point}"
  mount "$mount_point"
fi
mkdir -p "$data_dir"
log "registry data on $(findmnt -n -o SOURCE,SIZE,AVAIL --target "$data_dir" | tr -s ' ')"
