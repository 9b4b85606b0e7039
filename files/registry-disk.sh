#!/usr/bin/env bash
# The data volume's usage, every few minutes (registry-disk.timer): a Prometheus text file that
# nginx's metrics listener serves (/metrics/disk), one line in the journal, and a WARNING line
# while the usage is at or above the threshold (the diskAlertPercent setting).
# Rendered by the private-registry Pulumi program; do not edit on the host.
set -euo pipefail

data_mount={{data_mount}}
metrics_file={{metrics_file}}
threshold_percent={{threshold_percent}}
# The Docker Hub cache's directory on the volume (empty: no cache), whose share is reported too.
hub_cache_dir={{hub_cache_dir}}

log() { printf 'registry-disk: %s\n' "$*"; }

# Written whole, then renamed into place: the scraper never reads half a file.
write_metrics() {
  local temporary
  install -d -m 0755 "$(dirname "$metrics_file")"
  temporary="$(mktemp "${metrics_file}.XXXXXX")"
  cat >"$temporary"
  chmod 0644 "$temporary"
  mv -f "$temporary" "$metrics_file"
}

if ! mountpoint -q "$data_mount"; then
  write_metrics <<METRICS
# HELP registry_data_volume_mounted Whether the data volume is mounted at ${data_mount}.
# TYPE registry_data_volume_mounted gauge
registry_data_volume_mounted 0
METRICS
  log "ERROR: no volume is mounted at ${data_mount}: the registry's data has nowhere to go"
  exit 1
fi

read -r size used available < <(df --block-size=1 --output=size,used,avail "$data_mount" | tail -n 1)
# As df's Use%: used over what non-root users can have (reserved blocks excluded), rounded up.
percent=$(((used * 100 + used + available - 1) / (used + available)))
hub_cache_metrics=""
if [[ -n "$hub_cache_dir" ]]; then
  hub_cache_bytes=0
  if [[ -d "$hub_cache_dir" ]]; then
    hub_cache_bytes="$(du -s --block-size=1 "$hub_cache_dir" | cut -f1)"
  fi
  hub_cache_metrics="# HELP registry_hub_cache_used_bytes Bytes the Docker Hub cache uses on the data volume.
# TYPE registry_hub_cache_used_bytes gauge
registry_hub_cache_used_bytes ${hub_cache_bytes}"
  log "Docker Hub cache ${hub_cache_dir}: ${hub_cache_bytes} bytes"
fi

write_metrics <<METRICS
# HELP registry_data_volume_mounted Whether the data volume is mounted at ${data_mount}.
# TYPE registry_data_volume_mounted gauge
registry_data_volume_mounted 1
# HELP registry_data_volume_size_bytes Size of the data volume's file system.
# TYPE registry_data_volume_size_bytes gauge
registry_data_volume_size_bytes ${size}
# HELP registry_data_volume_used_bytes Bytes used on the data volume.
# TYPE registry_data_volume_used_bytes gauge
registry_data_volume_used_bytes ${used}
# HELP registry_data_volume_available_bytes Bytes the registry can still write.
# TYPE registry_data_volume_available_bytes gauge
registry_data_volume_available_bytes ${available}
# HELP registry_data_volume_used_percent Usage as df shows it (Use%).
# TYPE registry_data_volume_used_percent gauge
registry_data_volume_used_percent ${percent}
# HELP registry_data_volume_threshold_percent The usage that logs a warning.
# TYPE registry_data_volume_threshold_percent gauge
registry_data_volume_threshold_percent ${threshold_percent}
${hub_cache_metrics}
METRICS

if ((percent >= threshold_percent)); then
  log "WARNING: data volume ${data_mount} is ${percent}% full (threshold ${threshold_percent}%)," \
    "${available} bytes left: delete unused images (garbage collection frees them) or raise" \
    "volumeSizeGb"
else
  log "data volume ${data_mount}: ${percent}% used, ${available} bytes available"
fi
