#!/usr/bin/env bash
# publicTls, before the registry (re)starts: points nginx's registry listener at the public
# certificate if one was issued and is unexpired, else at the stack's private one, so nginx
# always has a certificate to start with. No network. Idempotent.
# Usage: serve-certificate.sh ACME_SCRIPT   (the placed registry-acme.sh)
set -euo pipefail
exec "$1" serve
