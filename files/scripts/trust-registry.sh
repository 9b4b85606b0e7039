#!/usr/bin/env bash
# Makes this host trust the registry: its CA (from CA_FILE) for Docker, containerd/podman and
# the system store, and (when HOSTS_IP is given) its name in /etc/hosts, also after a reboot.
# Idempotent: a second run changes nothing.
# With --forget: the trust for that port goes (the name's system store entry and /etc/hosts
# line stay: the registry's own port uses them).
# Usage: trust-registry.sh NAME PORT CA_FILE [HOSTS_IP] | trust-registry.sh --forget NAME PORT
set -euo pipefail

log() { printf '==> %s\n' "$*"; }

# Where Docker and containerd/podman look for a registry's CA, by name and port.
trust_dirs() { printf '%s\n' "/etc/docker/certs.d/$1:$2" "/etc/containers/certs.d/$1:$2"; }

if [[ "$1" == --forget ]]; then
  mapfile -t dirs < <(trust_dirs "$2" "$3")
  rm -rf "${dirs[@]}"
  log "no trust for $2:$3"
  exit 0
fi

name="$1"
port="$2"
ca_file="$3"
hosts_ip="${4:-}"
marker="# private-registry ${name}"
# DigitalOcean's cloud-init sets manage_etc_hosts: its update_etc_hosts module runs on every boot
# and renders /etc/hosts from /etc/cloud/templates/hosts.<os family>.tmpl, "debian" on Ubuntu
# (cloud-init: cloudinit/config/cc_update_etc_hosts.py, templates/hosts.debian.tmpl, whose
# header says changes persist only in the template). So the entry goes into both.
hosts_template=/etc/cloud/templates/hosts.debian.tmpl

if ! grep -q -- '-----BEGIN CERTIFICATE-----' "$ca_file"; then
  echo "trust-registry: ${ca_file} holds no PEM certificate" >&2
  exit 1
fi

# Installs SOURCE as DEST unless DEST already holds the same bytes; fails (1) when unchanged.
install_if_changed() {
  local source="$1" dest="$2"
  if [[ -f "$dest" ]] && cmp -s "$source" "$dest"; then
    return 1
  fi
  install -D -m 0644 "$source" "$dest"
}

mapfile -t dirs < <(trust_dirs "$name" "$port")
for dir in "${dirs[@]}"; do
  if install_if_changed "$ca_file" "${dir}/ca.crt"; then
    log "trusted the CA in ${dir}"
  fi
done

system_ca="/usr/local/share/ca-certificates/private-registry-${name}.crt"
if install_if_changed "$ca_file" "$system_ca"; then
  log "adding the CA to the system store"
  update-ca-certificates >/dev/null
fi

# Puts ENTRY (marked) into FILE in place of any older marked entry; fails (1) when unchanged.
# Rewritten in place (not by rename): /etc/hosts may be a bind mount.
set_marked_entry() {
  local file="$1" entry="$2" kept
  if grep -qxF -- "$entry" "$file" && (($(grep -cF -- "$marker" "$file") == 1)); then
    return 1
  fi
  kept="$(grep -vF -- "$marker" "$file" || true)"
  printf '%s\n%s\n' "$kept" "$entry" >"$file"
}

if [[ -n "$hosts_ip" ]]; then
  entry="${hosts_ip} ${name} ${marker}"
  if set_marked_entry /etc/hosts "$entry"; then
    log "mapping ${name} to ${hosts_ip} in /etc/hosts"
  fi
  if [[ -f "$hosts_template" ]] && set_marked_entry "$hosts_template" "$entry"; then
    log "keeping the mapping across reboots in ${hosts_template}"
  fi
fi
log "trust for ${name}:${port} in place"
