#!/usr/bin/env bash
# publicTls, once the registry runs: asks for the public certificate now (the unit runs
# registry-acme.sh renew, which does nothing while the certificate has more than a third of its
# lifetime left). A failure does not fail `pulumi up`: the registry keeps serving the current
# certificate (the private one until a first issuance), the timer retries twice a day, and the
# unit's last log lines, printed here, say what to fix.
# It enables the renewal timer itself: replacing this command (a changed file re-runs it) first
# deletes the previous one, whose delete disables the timer.
# Usage: issue-certificate.sh UNIT TIMER   (registry-acme.service registry-acme.timer)
set -euo pipefail

unit="$1"
timer="$2"
systemctl enable --now --quiet "$timer"
if systemctl start "$unit"; then
  printf '==> %s: done\n' "$unit"
else
  printf 'issue-certificate: WARNING: %s failed; the registry serves its current certificate\n' \
    "$unit" >&2
  journalctl --unit "$unit" --lines 10 --no-pager --output cat >&2 || true
fi
