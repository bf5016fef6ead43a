#!/usr/bin/env bash
# Checks the container image for real (root, Docker Engine; not part of
# `make test`): builds it without a daemon (make image), `docker load`s it,
# then
#   - `memberd version` runs in it, as the unprivileged user 65532;
#   - the default command refuses the example config with exit 2, naming it;
#   - a relay from the image, on a private Docker network this script
#     creates (10.231.0.0/24), carries a 2-member demo consortium whose
#     appliances run on this host: both reach it over QUIC, their WireGuard
#     peers handshake through it, and their ledger elects a leader.
# Everything it creates (network, container, image, processes, files) is
# removed at exit, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "FAIL: $*" >&2; exit 1; }
tmp=$(mktemp -d)
net=memberd-imgtest-$$
relay=memberd-imgtest-relay-$$
image=
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	docker rm -f "$relay" >/dev/null 2>&1 || true
	docker network rm "$net" >/dev/null 2>&1 || true
	[[ -n $image ]] && docker rmi "$image" >/dev/null 2>&1 || true
	rm -rf "$tmp"
}
trap cleanup EXIT

out=$(make -s image)
tarball=${out% *}
image=${out#* }
echo "== $tarball ($image)"
docker load -i "$tarball" >/dev/null

echo "== memberd version in the image"
v=$(docker run --rm "$image" version) || fail "memberd version: exit $?"
echo "$v"
[[ $v == "memberd $(make -s -f Makefile --eval='pv: ; @echo $(VERSION)' pv) "* ]] || fail "unexpected version line: $v"
[[ $(docker inspect "$image" --format '{{.Config.User}}') == 65532:65532 ]] || fail "image user is not 65532:65532"

echo "== the default command refuses the unfilled example config"
set +e
msg=$(docker run --rm "$image" 2>&1)
rc=$?
set -e
[[ $rc == 2 ]] || fail "default command: exit $rc, want 2 ($msg)"
[[ $msg == *"/etc/memberd/memberd.yaml"*"CHANGE-ME"* ]] || fail "default command message does not name the file and key: $msg"
echo "exit 2: $msg"

echo "== a relay from the image carries a 2-member demo consortium"
docker network create --subnet 10.231.0.0/24 "$net" >/dev/null
bin/memberd demo init --members 2 --relays 1 --dir "$tmp/demo" --hsm soft --relay-addr 10.231.0.10:443 >/dev/null
chown -R 65532:65532 "$tmp/demo/relays"
docker run -d --name "$relay" --network "$net" --ip 10.231.0.10 -v "$tmp/demo/relays:$tmp/demo/relays" \
	"$image" relay --config "$tmp/demo/relays/relay-1/relay.yaml" >/dev/null
admins=()
for m in "$tmp"/demo/members/*/; do
	bin/memberd run --config "$m/memberd.yaml" >"$m/run.log" 2>&1 &
	pids+=($!)
	admins+=("$(sed -n 's/^admin: //p' "$m/memberd.yaml")")
done
ok=
for _ in $(seq 120); do
	ok=1
	for a in "${admins[@]}"; do
		st=$(bin/memberd status --admin "$a" --json 2>/dev/null) || { ok=; break; }
		python3 - "$st" 2>/dev/null <<'PY' || { ok=; break; }
import json, sys
s = json.loads(sys.argv[1])
relays = s["relays"]
assert any(r["state"] == "up" and r["path"] == "quic" for r in relays), relays
peers = s["tunnel"]["peers"]
assert peers and all(p.get("last_handshake") for p in peers), peers
assert s["ledger"]["leader"], s["ledger"]
PY
	done
	[[ -n $ok ]] && break
	sleep 1
done
if [[ -z $ok ]]; then
	docker logs "$relay" 2>&1 | tail -20 >&2
	for m in "$tmp"/demo/members/*/; do tail -20 "$m/run.log" >&2; done
	fail "the members did not connect through the relay in the image within 120 s"
fi
docker logs "$relay" 2>&1 | grep -q 'relay listening' || { docker logs "$relay" 2>&1 | head -5 >&2; fail "relay log has no 'relay listening' line"; }
for a in "${admins[@]}"; do bin/memberd status --admin "$a"; done
echo "PASS: image $image"
