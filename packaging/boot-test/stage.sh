#!/usr/bin/env bash
# Lays out what each boot-test host gets, from a `memberd demo init` folder,
# as an operator following packaging/README.md "Setting up" would:
#   STAGE/<host>/etc/memberd/...      config, identity, CA, genesis block, PIN
#   STAGE/<host>/var/lib/...          the signed policy; a member's SoftHSM2 token
#   STAGE/<host>/setup.sh             owners and modes, systemctl daemon-reload
# demo init writes configs for loopback with relative paths; the units make
# /etc/memberd read-only, so the folders the appliance writes move under
# /var/lib, the PIN becomes the systemd credential hsm-pin, and the admin
# and ledger ports become memberd's defaults (memberd status, ledger submit).
# Usage: stage.sh DEMO_DIR STAGE_DIR
set -euo pipefail
demo=${1:?demo folder}
stage=${2:?stage folder}

fail() {
	echo "stage: $*" >&2
	exit 1
}
# sub FILE SED-EXPR GREP: edit FILE and check the edit took (demo init's
# layout changed otherwise).
sub() {
	sed -E -i "$2" "$1"
	grep -qE "$3" "$1" || fail "$1: expected '$3' after '$2': has memberd demo init's layout changed?"
}

# setup HOSTDIR PIN OWNED: HOSTDIR/setup.sh gives /etc/memberd to root,
# readable by group memberd, the PIN file to root only, OWNED (the state
# folder first, 0750) to memberd.
setup() {
	cat >"$1/setup.sh" <<EOF
set -e
chown -R root:memberd /etc/memberd
chmod -R g+rX,g-w,o-rwx /etc/memberd
chown root:root /etc/memberd/$2
chmod 0600 /etc/memberd/$2
chown -R memberd:memberd $3
chmod 0750 ${3%% *}
systemctl daemon-reload
EOF
}

for m in $(ls "$demo/members"); do # member-a member-b in the boot test
	src=$demo/members/$m
	dst=$stage/$m
	mkdir -p "$dst/etc/memberd/identity" "$dst/var/lib/memberd/policy" "$dst/var/lib/memberd/state" \
		"$dst/var/lib/softhsm/tokens" "$dst/etc/systemd/system/memberd.service.d"
	cp "$src/memberd.yaml" "$src/ca.pem" "$src/genesis.block" "$dst/etc/memberd/"
	cp "$src/identity/"* "$dst/etc/memberd/identity/"
	cp "$src/policy/genesis.yaml" "$dst/var/lib/memberd/policy/"
	install -m 0600 "$src/pin" "$dst/etc/memberd/hsm.pin"
	y=$dst/etc/memberd/memberd.yaml
	sub "$y" 's#^admin: .*#admin: 127.0.0.1:9464#' '^admin: 127.0.0.1:9464$'
	sub "$y" 's#^(    data_dir: ).*#\1/var/lib/memberd/ledger#' 'data_dir: /var/lib/memberd/ledger$'
	sub "$y" 's#^(    listen: )127\.0\.0\.1:[0-9]+$#\1127.0.0.1:7050#' '^    listen: 127.0.0.1:7050$'
	sub "$y" 's#^(    dir: )policy$#\1/var/lib/memberd/policy#' 'dir: /var/lib/memberd/policy$'
	sub "$y" 's#^(    state_dir: )state$#\1/var/lib/memberd/state#' 'state_dir: /var/lib/memberd/state$'
	id=$dst/etc/memberd/identity/identity.yaml
	uri=$(grep -oE 'pkcs11:[^ ]+' "$id" | head -1)
	sub "$id" 's#pin-source=file:[^& ]+#pin-source=cred:hsm-pin#' 'pin-source=cred:hsm-pin'
	# The command line (root, outside the unit) reads the PIN file itself.
	sed -E 's#pin-source=file:[^& ]+#pin-source=file:/etc/memberd/hsm.pin#' <<<"$uri" >"$dst/etc/memberd/cli-key.uri"
	# This member's token only (its label is in token.object).
	tok=$(grep -laF "$m" "$demo"/tokens/*/token.object | head -1)
	[[ -n $tok ]] || fail "no SoftHSM2 token labelled $m in $demo/tokens"
	cp -r "$(dirname "$tok")" "$dst/var/lib/softhsm/tokens/"
	# packaging/README.md "Hardening": SoftHSM2 needs its token folder.
	cat >"$dst/etc/systemd/system/memberd.service.d/softhsm.conf" <<'EOF'
[Service]
ReadWritePaths=/var/lib/softhsm/tokens
SupplementaryGroups=softhsm
EOF
	setup "$dst" hsm.pin "/var/lib/memberd /var/lib/softhsm/tokens/*"
done

src=$demo/relays/relay-1
dst=$stage/relay
mkdir -p "$dst/etc/memberd" "$dst/var/lib/memberd-relay/policy" "$dst/var/lib/memberd-relay/state"
cp "$src/relay.yaml" "$src/relay.crt" "$src/key.pem" "$dst/etc/memberd/"
cp "$src/policy/genesis.yaml" "$dst/var/lib/memberd-relay/policy/"
# The demo relay's key is a file (insecure_dev_key); the unit still wants
# its credential.
echo unused >"$dst/etc/memberd/relay.pin"
y=$dst/etc/memberd/relay.yaml
sub "$y" 's#^admin: .*#admin: 127.0.0.1:9464#' '^admin: 127.0.0.1:9464$'
sub "$y" 's#^policy_dir: policy$#policy_dir: /var/lib/memberd-relay/policy#' '^policy_dir: /var/lib/memberd-relay/policy$'
sub "$y" 's#^state_dir: state$#state_dir: /var/lib/memberd-relay/state#' '^state_dir: /var/lib/memberd-relay/state$'
setup "$dst" relay.pin /var/lib/memberd-relay
