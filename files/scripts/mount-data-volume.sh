#!/usr/bin/env bash
# Mounts the DigitalOcean block storage volume that holds the registry's data at MOUNT_POINT,
# and only there, in /etc/fstab by UUID (so a reboot mounts it before registry.service, whose
# RequiresMountsFor names it); grows the filesystem when the volume was resized. Idempotent.
#
# Never formats: DigitalOcean formats the volume once, when it is created (the program sets
# initial_filesystem_type ext4), so a volume without a filesystem is an error to look at, never
# a blank to fill: no code path here can erase a volume that holds images.
#
# Usage: mount-data-volume.sh VOLUME_NAME MOUNT_POINT DATA_DIR
#   (env VOLUME_DEVICE_DIR: where the volume's link lives, default /dev/disk/by-id; for tests)
set -euo pipefail

log() { printf '==> %s\n' "$*"; }
fail() { echo "mount-data-volume: $*" >&2; exit 1; }

volume_name="$1"
mount_point="$2"
data_dir="$3"
device="${VOLUME_DEVICE_DIR:-/dev/disk/by-id}/scsi-0DO_Volume_${volume_name}"

log "waiting for volume ${volume_name} to be attached"
for _ in $(seq 1 120); do
  [[ -b "$device" ]] && break
  sleep 1
done
[[ -b "$device" ]] || fail "${device} did not appear within 120s"
kernel_device="$(readlink -f "$device")"

# A low-level probe (-p), not blkid's cache: what is on the device now.
fs_type="$(blkid -p -o value -s TYPE "$device" || true)"
if [[ -z "$fs_type" ]]; then
  fail "${device} has no filesystem. DigitalOcean formats a volume when it is created" \
    "(initial_filesystem_type ext4); this one was not, or its filesystem is damaged." \
    "Refusing to format it: it may hold data. Inspect it (blkid -p, e2fsck -n)."
fi
[[ "$fs_type" == ext4 ]] || fail "${device} holds a ${fs_type} filesystem, expected ext4"
uuid="$(blkid -p -o value -s UUID "$device")"
[[ -n "$uuid" ]] || fail "${device}: its ext4 filesystem has no UUID"

# Whether a mount source (fstab's first field, a unit's What=) names this volume.
names_this_volume() {
  local source="$1"
  [[ "$source" == "UUID=${uuid}" || "$source" == "/dev/disk/by-uuid/${uuid}" ||
    "$source" == "$device" || "$source" == "$kernel_device" ||
    "$source" == "/dev/disk/by-id/scsi-0DO_Volume_${volume_name}" ]]
}

# DigitalOcean auto-mounts a volume it formatted at /mnt/<volume name> (hyphens become
# underscores) through a mount unit in /etc/systemd/system (mnt-<name>.mount;
# docs.digitalocean.com/products/volumes/details/naming-conventions, "Automatic Mount Point" and
# "Mount Unit File"), and its manual instructions add an fstab line instead. Either mounts the
# data a second time, after every reboot too: this script owns the one mount, so both go, found
# by what they mount rather than by name. (`disable --now` may find the unit stopped already.)
config_changed=false
for unit_file in /etc/systemd/system/*.mount; do
  [[ -f "$unit_file" ]] || continue
  what="$(sed -n 's/^What=//p' "$unit_file" | tail -n 1)"
  where="$(sed -n 's/^Where=//p' "$unit_file" | tail -n 1)"
  if names_this_volume "$what" && [[ "$where" != "$mount_point" ]]; then
    unit="$(basename "$unit_file")"
    log "removing ${unit}: the volume is mounted at ${mount_point} only"
    systemctl disable --now "$unit" || true
    rm -f "$unit_file"
    config_changed=true
  fi
done

fstab_line="UUID=${uuid} ${mount_point} ext4 defaults,nofail,discard,noatime 0 2"
kept_fstab=""
while IFS= read -r line || [[ -n "$line" ]]; do
  read -r source target _ <<<"$line" || true
  if [[ -n "$source" && "$source" != \#* ]] &&
    { [[ "$target" == "$mount_point" ]] || names_this_volume "$source"; }; then
    continue  # ours (added back below), a stale one for this mount point, or another mount of it
  fi
  kept_fstab+="${line}"$'\n'
done </etc/fstab
new_fstab="${kept_fstab}${fstab_line}"$'\n'
if ! cmp -s <(printf '%s' "$new_fstab") /etc/fstab; then
  log "mounting ${volume_name} at ${mount_point} only, by UUID, in /etc/fstab"
  # Rewritten in place: /etc/fstab keeps its owner and mode.
  printf '%s' "$new_fstab" >/etc/fstab
  config_changed=true
fi
if [[ "$config_changed" == true ]]; then
  systemctl daemon-reload
fi

# Any other place the volume is mounted (the auto-mount): unmounted.
while IFS= read -r target; do
  if [[ -n "$target" && "$target" != "$mount_point" ]]; then
    log "unmounting the volume from ${target}"
    umount "$target"
  fi
done < <(findmnt -rn -o TARGET --source "$kernel_device" || true)

mkdir -p "$mount_point"
if mountpoint -q "$mount_point"; then
  mounted="$(findmnt -n -o SOURCE --mountpoint "$mount_point")"
  [[ "$(readlink -f "$mounted")" == "$kernel_device" ]] ||
    fail "${mount_point} holds ${mounted}, not the volume ${volume_name}; unmount it first"
else
  log "mounting ${device} at ${mount_point}"
  mount "$mount_point"
fi

# Resizing a DigitalOcean volume grows the block device only; ext4 grows online, mounted.
block_size="$(tune2fs -l "$device" | sed -n 's/^Block size: *//p')"
block_count="$(tune2fs -l "$device" | sed -n 's/^Block count: *//p')"
device_bytes="$(blockdev --getsize64 "$device")"
# resize2fs may leave a tail smaller than a block group unused: grow only for more than 16 MiB
# (DigitalOcean resizes in whole GiB), so a re-run after growing changes nothing.
if ((device_bytes - block_size * block_count > 16 * 1024 * 1024)); then
  log "the volume grew to ${device_bytes} bytes: growing its filesystem"
  resize2fs "$device"
fi

mkdir -p "$data_dir"
log "registry data on $(findmnt -n -o SOURCE,SIZE,AVAIL --target "$data_dir" | tr -s ' ')"
