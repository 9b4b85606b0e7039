#!/usr/bin/env bash
# Removes the Docker Hub cache from the registry host once hubCache is turned off (run when its
# command leaves the stack; the activation before it has taken the service out of compose.yaml,
# and `up --remove-orphans` its container): any container of the service still there, its socket
# volume, its env file (with the Docker Hub token) and config directory, and its content on the
# data volume (public images only, fetched again should the cache come back). Idempotent.
# Usage: remove-hub-cache.sh PROJECT SERVICE SOCKET_VOLUME ENV_FILE CONFIG_DIR DATA_DIR
set -euo pipefail

log() { printf '==> %s\n' "$*"; }

project="$1"
service="$2"
socket_volume="$3"
env_file="$4"
config_dir="$5"
data_dir="$6"
project_label="label=com.docker.compose.project=${project}"

mapfile -t containers < <(docker ps --all --quiet --filter "$project_label" \
  --filter "label=com.docker.compose.service=${service}")
if ((${#containers[@]} > 0)); then
  log "removing the ${service} container"
  docker rm --force "${containers[@]}" >/dev/null
fi
mapfile -t volumes < <(docker volume ls --quiet --filter "$project_label" \
  --filter "label=com.docker.compose.volume=${socket_volume}")
if ((${#volumes[@]} > 0)); then
  log "removing the ${socket_volume} volume"
  docker volume rm "${volumes[@]}" >/dev/null
fi
rm -f "$env_file"
rm -rf "$config_dir"
if [[ -d "$data_dir" ]]; then
  bytes="$(du -s --block-size=1 "$data_dir" | cut -f1)"
  rm -rf "$data_dir"
  log "removed the cached Docker Hub content: ${bytes} bytes"
fi
log "no Docker Hub cache on this host"
