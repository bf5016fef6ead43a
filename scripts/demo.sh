#!/usr/bin/env bash
# make demo: part 1 walks through an HSM identity by hand (SoftHSM2 token,
# member CA, keygen, CSR, certificate, selftest); part 2 tells the whole
# story of a consortium on loopback with `memberd demo --ci` (real relay and
# member processes, SoftHSM2 identities; see README "Demo").
#
#   scripts/demo.sh [path/to/memberd]      (KEEP=1 keeps the demo directory)
#   MEMBERS=5 RELAYS=3 FOREGROUND=1 scripts/demo.sh   (stay up until Ctrl-C)
#
# Exits non-zero only if something that exists fails.
set -euo pipefail
bin=$(realpath "${1:-bin/memberd}")
[ -x "$bin" ] || { echo "demo: $bin is not an executable; run 'make build' first" >&2; exit 1; }
command -v softhsm2-util >/dev/null || { echo "demo: softhsm2-util missing: apt-get install softhsm2 (or run 'make deps')" >&2; exit 1; }

module=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so /usr/lib64/pkcs11/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
  [ -e "$m" ] && { module=$m; break; }
done
[ -n "$module" ] || { echo "demo: libsofthsm2.so not found: apt-get install softhsm2" >&2; exit 1; }

work=$(mktemp -d /tmp/memberd-demo.XXXXXX)
# Kept with KEEP=1 or when something failed (the logs say why).
trap 'rc=$?; if [ "${KEEP:-}" = 1 ] || [ $rc -ne 0 ]; then echo "(demo files kept in $work)"; else rm -rf "$work"; fi' EXIT

step() { echo; echo "== $*"; "$@"; }

# A fresh SoftHSM2 token, used only by this demo.
mkdir -p "$work/tokens" "$work/identity"
export SOFTHSM2_CONF=$work/softhsm2.conf
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$work/tokens" >"$SOFTHSM2_CONF"
(umask 077; printf '1234\n' >"$work/user.pin")
softhsm2-util --init-token --free --label demo-member-a --pin 1234 --so-pin 5678 >/dev/null
echo "== SoftHSM2 token \"demo-member-a\" created in $work/tokens (PIN in $work/user.pin, mode 0600)"

q="?module-path=$module&pin-source=file:$work/user.pin"
token="pkcs11:token=demo-member-a"
ca_key="$token;object=member-ca$q"
node_key="$token;object=node1-tls$q"

step "$bin" version
step "$bin" ca init --key "$ca_key" --generate-key --cn "Member A CA" --org "Member A" --out "$work/ca.pem"
step "$bin" hsm keygen --key "$node_key"
step "$bin" hsm list --key "$token$q"
step "$bin" hsm csr --key "$node_key" --cn node1.member-a --org "Member A" --dns node1.member-a --out "$work/node1.csr"
if command -v openssl >/dev/null; then
  step openssl req -verify -noout -in "$work/node1.csr"
fi
step "$bin" ca sign --key "$ca_key" --ca-cert "$work/ca.pem" --csr "$work/node1.csr" --out "$work/identity/node1.pem"
if command -v openssl >/dev/null; then
  step openssl verify -CAfile "$work/ca.pem" "$work/identity/node1.pem"
fi
printf 'keys:\n  - "%s"\n' "$node_key" >"$work/identity/identity.yaml"
echo; echo "== identity folder $work/identity: identity.yaml + node1.pem (the format hsm.IdentityProvider watches)"
step "$bin" hsm selftest --key "$node_key"

echo
echo "demo: HSM identity OK (token, member CA, keygen, list, CSR, certificate, selftest)."

# Part 2: the whole story with real processes (memberd demo --ci): 2 relays
# and 3 members from `memberd demo init`, transactions, a governance change,
# a relay killed under traffic, an identity key rotated; every step verified.
# Logs go to files in the demo folder. FOREGROUND=1 runs instead the
# in-process consortium and stays up until Ctrl-C.
if [ "${FOREGROUND:-}" = 1 ]; then
  step "$bin" demo --members "${MEMBERS:-3}" --relays "${RELAYS:-2}" --dir "$work/consortium" --hsm softhsm
  exit 0
fi
echo
echo "== $bin demo --ci --dir $work/story"
"$bin" demo --ci --dir "$work/story"
