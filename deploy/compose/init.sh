#!/bin/sh
# The compose file's one-shot `init` service (gateway image, uid 10001, no network): creates the
# certificates and keys the other services need, once. Every later run keeps what is there, renews
# the mTLS certificates when they near their end, and refuses to replace a partial set of audit keys.
#
# Volume (mount point here)           what it receives                      who mounts it
# worker-tls   (/run/warden/worker-tls)   ca.pem worker.pem worker-key.pem       worker, read-only
# gateway-tls  (/run/warden/gateway-tls)  ca.pem gateway-client.pem              gateway, read-only
#                                         gateway-client-key.pem
# gateway-keys (/run/warden/gateway-keys) auditor-public.pem signing-key.pem     gateway, read-only
#                                         jwt-public.pem env/WARDEN_GATEWAY_*
# auditor      (/run/warden/auditor)      auditor-key.pem (under the             tools, read-only
#                                         auditor_passphrase secret)
#                                         auditor-public.pem signing-public.pem
#                                         audit-hmac-key
# dev-token    (/run/warden/dev-token)    jwt-private.pem jwt-public.pem         tools, read-only
#
# env/WARDEN_GATEWAY_* hold the gateway's secret settings, one per file named after its variable
# (the audit HMAC key, the cache keys); the gateway's entrypoint exports them at start.
# The CA's private key is never stored: renewing issues a new CA with both certificates.
# WARDEN_INIT_ROOT prefixes every path (the tests run this script in a temporary directory).
set -eu
umask 077

root=${WARDEN_INIT_ROOT:-}
worker_tls=$root/run/warden/worker-tls
gateway_tls=$root/run/warden/gateway-tls
gateway_keys=$root/run/warden/gateway-keys
auditor=$root/run/warden/auditor
dev_token=$root/run/warden/dev-token
passphrase_file=$root/run/secrets/auditor_passphrase
# The certificates live 30 days; a run with fewer than this many left issues new ones.
renew_days=${WARDEN_INIT_RENEW_DAYS:-7}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say() { printf 'init: %s\n' "$*"; }
fail() { printf 'init: error: %s\n' "$*" >&2; exit 1; }
present() { for file in "$@"; do [ -e "$file" ] || return 1; done; }
absent() { for file in "$@"; do [ ! -e "$file" ] || return 1; done; }

# -- mTLS between the gateway and the worker ------------------------------------------------------
# Kept while both sides hold a complete set from the same CA that is valid for long enough.
certs_current() {
  present "$worker_tls/ca.pem" "$worker_tls/worker.pem" "$worker_tls/worker-key.pem" \
    "$gateway_tls/ca.pem" "$gateway_tls/gateway-client.pem" "$gateway_tls/gateway-client-key.pem" \
    || return 1
  python - "$renew_days" "$worker_tls" "$gateway_tls" <<'PY'
import datetime as dt
import sys
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

days, worker, gateway = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
horizon = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
try:
    ca_pem = (worker / "ca.pem").read_bytes()
    if (gateway / "ca.pem").read_bytes() != ca_pem:
        sys.exit(1)
    ca = x509.load_pem_x509_certificate(ca_pem)
    for leaf in (worker / "worker.pem", gateway / "gateway-client.pem"):
        cert = x509.load_pem_x509_certificate(leaf.read_bytes())
        cert.verify_directly_issued_by(ca)
        if cert.not_valid_after_utc < horizon:
            sys.exit(1)
except (ValueError, TypeError, InvalidSignature):
    sys.exit(1)
PY
}

if certs_current; then
  say "mTLS certificates kept (valid for more than $renew_days days)"
else
  python -m gateway certs init "$work/pki" --name worker
  install -m 0644 "$work/pki/ca.pem" "$work/pki/worker.pem" "$worker_tls/"
  install -m 0600 "$work/pki/worker-key.pem" "$worker_tls/"
  install -m 0644 "$work/pki/ca.pem" "$work/pki/gateway-client.pem" "$gateway_tls/"
  install -m 0600 "$work/pki/gateway-client-key.pem" "$gateway_tls/"
  say "mTLS certificates issued (restart worker and gateway if they were running)"
fi

# -- audit log keys -------------------------------------------------------------------------------
set -- "$gateway_keys/auditor-public.pem" "$gateway_keys/signing-key.pem" \
  "$auditor/auditor-key.pem" "$auditor/auditor-public.pem" "$auditor/signing-public.pem"
if present "$@"; then
  say "audit keys kept"
elif absent "$@"; then
  [ -s "$passphrase_file" ] || fail "the auditor_passphrase secret is missing or empty"
  python -m gateway audit keygen "$work/audit" --passphrase-file "$passphrase_file"
  install -m 0644 "$work/audit/auditor-public.pem" "$gateway_keys/"
  install -m 0600 "$work/audit/signing-key.pem" "$gateway_keys/"
  install -m 0600 "$work/audit/auditor-key.pem" "$auditor/"
  install -m 0644 "$work/audit/auditor-public.pem" "$work/audit/signing-public.pem" "$auditor/"
  say "audit keys created (the auditors' private key is encrypted under the auditor_passphrase secret)"
else
  fail "a partial set of audit keys: expected all or none of $*;" \
    "replacing them would leave the existing audit log unreadable or unverifiable, so restore the" \
    "missing files (or remove the audit-log, gateway-keys and auditor volumes to start afresh)"
fi

# -- the gateway's secret settings: audit HMAC key, response cache keys ---------------------------
new_secret() { python -c 'import secrets; print(secrets.token_urlsafe(32), end="")' > "$1"; }
mkdir -p "$gateway_keys/env"
hmac_key=$gateway_keys/env/WARDEN_GATEWAY_AUDIT__HMAC_KEY
# The auditors hold a copy of the HMAC key, to match hashed prompts and outputs.
if [ ! -s "$hmac_key" ] && [ -s "$auditor/audit-hmac-key" ]; then
  install -m 0600 "$auditor/audit-hmac-key" "$hmac_key"
fi
for name in WARDEN_GATEWAY_AUDIT__HMAC_KEY WARDEN_GATEWAY_CACHE__KEY_SECRET \
  WARDEN_GATEWAY_CACHE__ENCRYPTION_KEYS__1; do
  if [ ! -s "$gateway_keys/env/$name" ]; then
    new_secret "$work/secret"
    install -m 0600 "$work/secret" "$gateway_keys/env/$name"
    say "created $name"
  fi
done
[ -s "$auditor/audit-hmac-key" ] || install -m 0600 "$hmac_key" "$auditor/audit-hmac-key"

# -- development tokens ---------------------------------------------------------------------------
# A signing key for `python -m gateway token mint` and the public half the gateway trusts
# (issuer https://dev-issuer.warden.local in gateway.yaml). Replace with your identity provider.
if present "$dev_token/jwt-private.pem" "$dev_token/jwt-public.pem"; then
  say "development token key kept"
else
  python -m gateway token keygen "$work/jwt" --alg ES256
  install -m 0600 "$work/jwt/jwt-private.pem" "$dev_token/"
  install -m 0644 "$work/jwt/jwt-public.pem" "$dev_token/"
  install -m 0644 "$work/jwt/jwt-public.pem" "$gateway_keys/"
  say "development token key created"
fi
[ -e "$gateway_keys/jwt-public.pem" ] || install -m 0644 "$dev_token/jwt-public.pem" "$gateway_keys/"

say "done"
