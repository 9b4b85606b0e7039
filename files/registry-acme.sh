#!/usr/bin/env bash
# The registry's publicly trusted certificate (publicTls): issued and renewed on this host by
# certbot with HTTP-01 (the challenge files in a webroot that nginx alone serves on port 80),
# and served by nginx's registry listener. The metrics listener keeps the stack's private one.
#
# Usage: registry-acme.sh serve          choose the served certificate, no network: the public
#                                        one once it exists and is unexpired, else the private
#                                        one the program places (so nginx always has one)
#        registry-acme.sh renew [force]  (registry-acme.timer) issue, or renew once less than a
#                                        third of the lifetime is left (or with `force`), then
#                                        serve and reload nginx gracefully if it changed
# A failed issuance or renewal logs what to check, keeps serving the current certificate, and
# exits 1; so does a failed reload, which stays owed (a marker file) and is retried by the next
# run, even when that run changes nothing; both modes write the served certificate's days left to the metrics file (served at
# /metrics/tls), so a lapse shows before it happens.
# Rendered by the private-registry Pulumi program; do not edit on the host.
set -euo pipefail

name={{public_name}}
directory={{acme_directory}}
acme_dir={{acme_dir}}
webroot={{webroot}}
private_cert={{private_cert}}
private_key={{private_key}}
private_ca={{private_ca}}
served_cert={{served_cert}}
served_key={{served_key}}
served_ca={{served_ca}}
metrics_file={{metrics_file}}
registry_unit={{registry_unit}}

live="${acme_dir}/config/live/registry"
reload_owed="${acme_dir}/reload-owed"
log() { printf 'registry-acme: %s\n' "$*"; }

# Seconds since the epoch of a certificate's notBefore or notAfter.
cert_time() { date -d "$(openssl x509 -noout "-$2" -in "$1" | cut -d= -f2-)" +%s; }

public_is_usable() {
  [[ -s "${live}/fullchain.pem" && -s "${live}/privkey.pem" ]] \
    && openssl x509 -noout -checkend 0 -in "${live}/fullchain.pem" >/dev/null
}

# Less than a third of its lifetime left (Let's Encrypt: 90, then 64, then 45 days).
renewal_due() {
  local start end now
  public_is_usable || return 0
  start="$(cert_time "${live}/fullchain.pem" startdate)"
  end="$(cert_time "${live}/fullchain.pem" enddate)"
  now="$(date +%s)"
  ((end - now < (end - start) / 3))
}

# Copied then renamed into place, the key first: nginx reads both at its next reload.
install_file() {
  local source="$1" target="$2" mode="$3" temporary
  cmp -s "$source" "$target" && return 1
  temporary="$(mktemp "${target}.XXXXXX")"
  cat "$source" >"$temporary"
  chmod "$mode" "$temporary"
  mv -f "$temporary" "$target"
}

# Points nginx's registry listener at the public certificate, or the private one; returns 0
# when the served files changed.
serve() {
  local cert key ca changed=1
  if public_is_usable; then
    cert="${live}/fullchain.pem" key="${live}/privkey.pem" ca="${live}/chain.pem"
  else
    cert="$private_cert" key="$private_key" ca="$private_ca"
  fi
  install_file "$key" "$served_key" 0600 && changed=0
  install_file "$cert" "$served_cert" 0644 && changed=0
  install_file "$ca" "$served_ca" 0644 || true
  return "$changed"
}

write_metrics() {
  local failed="$1" public=0 end temporary
  public_is_usable && cmp -s "${live}/fullchain.pem" "$served_cert" && public=1
  end="$(cert_time "$served_cert" enddate)"
  install -d -m 0755 "$(dirname "$metrics_file")"
  temporary="$(mktemp "${metrics_file}.XXXXXX")"
  cat >"$temporary" <<METRICS
# HELP registry_tls_certificate_public Whether the registry listener serves the ACME certificate (1) or the stack's private one (0).
# TYPE registry_tls_certificate_public gauge
registry_tls_certificate_public ${public}
# HELP registry_tls_certificate_expiry_timestamp_seconds When the served certificate expires.
# TYPE registry_tls_certificate_expiry_timestamp_seconds gauge
registry_tls_certificate_expiry_timestamp_seconds ${end}
# HELP registry_tls_certificate_days_left Whole days until the served certificate expires.
# TYPE registry_tls_certificate_days_left gauge
registry_tls_certificate_days_left $(((end - $(date +%s)) / 86400))
# HELP registry_tls_renewal_failed Whether the last issuance or renewal attempt failed.
# TYPE registry_tls_renewal_failed gauge
registry_tls_renewal_failed ${failed}
METRICS
  chmod 0644 "$temporary"
  mv -f "$temporary" "$metrics_file"
}

# What to fix, from the CA's last ACME error in certbot's log of this run (RFC 8555 error types).
what_to_fix() {
  local log="${acme_dir}/logs/letsencrypt.log" problem detail
  problem="$(grep -oE 'urn:ietf:params:acme:error:[A-Za-z]+' "$log" 2>/dev/null | tail -n 1)" || true
  detail="$(grep -E '^ +Detail: ' "$log" 2>/dev/null | tail -n 1 | sed -E 's/^ +Detail: //')" || true
  case "${problem##*:}" in
    dns)
      echo "${name} does not resolve for the CA: the domain's NS records must point at" \
        "ns1.digitalocean.com, ns2.digitalocean.com and ns3.digitalocean.com." ;;
    connection | unauthorized | incorrectResponse)
      echo "The CA could not fetch http://${name}/.well-known/acme-challenge/ from this" \
        "droplet: check that ${name} resolves to its public address and that port 80 is open" \
        "to the Internet." ;;
    rateLimited)
      echo "Let's Encrypt's rate limit (letsencrypt.org/docs/rate-limits): the timer retries" \
        "twice a day; do not force renewals meanwhile." ;;
    *)
      echo "Check that ${name} resolves to this droplet (the domain's NS records point at" \
        "DigitalOcean), that port 80 is open to the Internet, and Let's Encrypt's rate limits." ;;
  esac
  detail="${detail:-$problem}"
  echo "The CA said: ${detail:-nothing} (${log})."
}

case "${1:-}" in
  serve)
    serve || true
    write_metrics 0
    ;;
  renew)
    failed=0
    if [[ "${2:-}" == force ]] || renewal_due; then
      log "requesting a certificate for ${name} from ${directory}"
      install -d -m 0755 "$webroot"
      if certbot certonly --non-interactive --quiet --agree-tos \
        --register-unsafely-without-email --server "$directory" \
        --config-dir "${acme_dir}/config" --work-dir "${acme_dir}/work" \
        --logs-dir "${acme_dir}/logs" --cert-name registry --domain "$name" \
        --key-type ecdsa --elliptic-curve secp256r1 --force-renewal \
        --webroot --webroot-path "$webroot"; then
        log "issued: $(openssl x509 -noout -enddate -in "${live}/fullchain.pem")"
      else
        failed=1
      fi
    fi
    reload_failed=0
    if serve || [[ -e "$reload_owed" ]]; then
      log "serving the $(public_is_usable && echo public || echo private) certificate:" \
        "reloading nginx"
      touch "$reload_owed"
      if systemctl reload "$registry_unit"; then
        rm -f "$reload_owed"
      else
        reload_failed=1
      fi
    fi
    write_metrics "$((failed || reload_failed))"
    if ((failed)); then
      log "ERROR: no certificate from ${directory} for ${name}; still serving the current one" \
        "($(openssl x509 -noout -enddate -in "$served_cert")). $(what_to_fix)"
      exit 1
    fi
    if ((reload_failed)); then
      log "ERROR: reloading ${registry_unit} failed: nginx may still serve the previous" \
        "certificate; the next run (the timer's, twice a day) reloads again. Check" \
        "journalctl -u ${registry_unit}."
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 serve | renew [force]" >&2
    exit 2
    ;;
esac
