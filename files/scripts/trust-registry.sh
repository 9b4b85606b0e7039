#!/usr/bin/env bash
# Makes this host trust the registry: its CA for Docker, containerd/podman and the system
# store, and (when HOSTS_IP is given) its name in /etc/hosts. Idempotent: a second run changes
# nothing. Reads the CA from CA_FILE.
# Usage: trust-registry.sh NAME PORT CA_FILE [HOSTS_IP]
set -euo pipefail

log() { printf '==> %s\n' "$*"; }

name="$1"
port="$2"
ca_file="$3"
hosts_ip="${4:-}"
marker="# private-registry ${name}"

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

for dir in "/etc/docker/certs.d/${name}:${port}" "/etc/containers/certs.d/${name}:${port}"; do
  if install_if_changed "$ca_file" "${dir}/ca.crt"; then
    log "trusted the CA in ${dir}"
  fi
done

system_ca="/usr/local/share/ca-certificates/private-registry-${name}.crt"
if install_if_changed "$ca_file" "$system_ca"; then
  log "adding the CA to the system store"
  update-ca-certificates >/dev/null
fi

if [[ -n "$hosts_ip" ]]; then
  entry="${hosts_ip} ${name} ${marker}"
  if ! grep -qxF -- "$entry" /etc/hosts; then
    log "mapping ${name} to ${hosts_ip} in /etc/hosts"
    # Rewrite in place (not by rename): /etc/hosts may be a bind mount.
    kept="$(grep -vF -- "$marker" /etc/hosts || true)"
    printf '%s\n%s\n' "$kept" "$entry" >/etc/hosts
  fi
fi
log "trust for ${name}:${port} in place"
