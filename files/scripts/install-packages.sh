#!/usr/bin/env bash
# Installs the given packages from the distribution's archive. Idempotent: a second run only
# confirms they are installed. Waits for cloud-init and for the apt lists and dpkg locks, with a
# bound.
# Usage: install-packages.sh PACKAGE...   (env APT_LOCK_TIMEOUT, seconds, default 900)
set -euo pipefail

log() { printf '==> %s\n' "$*"; }

if (($# == 0)); then
  echo "usage: install-packages.sh PACKAGE..." >&2
  exit 64
fi

lock_timeout="${APT_LOCK_TIMEOUT:-900}"
export DEBIAN_FRONTEND=noninteractive

if command -v cloud-init >/dev/null 2>&1; then
  log "waiting for cloud-init to finish first boot"
  # Exit code 2 means "done, with recoverable errors": the packages can still be installed.
  cloud-init status --wait >/dev/null || [[ $? -eq 2 ]]
fi

apt_get() {
  apt-get -q -o DPkg::Lock::Timeout="$lock_timeout" "$@"
}

missing=()
for package in "$@"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$package")
  fi
done

# `apt-get update` takes the lists lock (/var/lib/apt/lists/lock) without waiting: DPkg::Lock::Timeout
# covers only the dpkg lock, so a concurrent apt-daily run would fail it at once. Retry it while
# some apt lock is held, within the same bound.
update_package_lists() {
  local deadline=$((SECONDS + lock_timeout)) output
  while true; do
    if output="$(apt_get update 2>&1)"; then
      printf '%s\n' "$output"
      return 0
    fi
    if ! grep -q 'Could not get lock' <<<"$output"; then
      printf '%s\n' "$output" >&2
      echo "install-packages: apt-get update failed" >&2
      return 1
    fi
    if ((SECONDS >= deadline)); then
      printf '%s\n' "$output" >&2
      echo "install-packages: the apt lists lock stayed held for ${lock_timeout}s" >&2
      return 1
    fi
    sleep 1
  done
}

if ((${#missing[@]} > 0)); then
  log "updating package lists (waiting up to ${lock_timeout}s for the apt locks)"
  update_package_lists
fi
log "installing: $* (waiting up to ${lock_timeout}s for the dpkg lock)"
# --no-upgrade: a re-run never upgrades an installed package (say docker.io, whose new dockerd
# runs only after a restart); it still waits for the lock and confirms the install.
if ! apt_get install -y --no-install-recommends --no-upgrade "$@"; then
  echo "install-packages: apt-get install failed (or its lock stayed held for ${lock_timeout}s)" >&2
  exit 1
fi
log "installed: $(dpkg-query -W -f='${Package} ${Version}  ' "$@")"
