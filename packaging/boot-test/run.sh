#!/usr/bin/env bash
# Boot test (`make boot-test`, root, Docker Engine): the .deb under a real
# systemd. Three Debian 12 "hosts" (a root filesystem debootstrapped from
# Debian's packages, docker import'ed) boot systemd as PID 1 in unprivileged
# containers on a private Docker network; the .deb is installed with dpkg -i;
# a 2-member demo consortium (memberd demo init, SoftHSM2 tokens) is put in
# place: memberd.service on two hosts, memberd-relay.service on the third.
# Checked: Type=notify readiness, memberd status, WireGuard handshakes and
# ledger replication over the relay, restart keeps the ledger, kill -9 is
# restarted, stop is clean, the journal holds JSON lines, and
# systemd-analyze security of both units. Every step prints its timing.
# Usage: packaging/boot-test/run.sh [DEB]   (default: newest bin/dist/*.deb)
# MEMBERD_BOOTTEST_KEEP=1 leaves the containers running (debugging).
set -euo pipefail
cd "$(dirname "$0")/../.."

start=$(date +%s%N)
last=$start
passed=0 # steps done; the closing line counts them
step() {
	local now
	passed=$((passed + 1))
	now=$(date +%s%N)
	printf 'boot-test [%6.1fs total, %5.1fs last step] %s\n' \
		"$(((now - start) / 1000000))e-3" "$(((now - last) / 1000000))e-3" "$*"
	last=$now
}
fail() {
	echo "boot-test: FAIL: $*" >&2
	echo "boot-test: $passed passed, 1 failed"
	exit 1
}

deb=${1:-$(ls -t bin/dist/memberd_*.deb 2>/dev/null | head -1)}
[[ -f $deb ]] || fail "no .deb: run make package (or give its path)"
[[ -x bin/memberd ]] || fail "bin/memberd missing: make build"
command -v softhsm2-util >/dev/null || fail "softhsm2-util missing on this host: apt-get install softhsm2"
cache=${MEMBERD_BOOTTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/memberd-boottest}
# A /24 private to this test: MEMBERD_BOOTTEST_SUBNET, else the first of
# 10.232.0 .. 10.239.0 no other network uses (a parallel run has one).
subnets=${MEMBERD_BOOTTEST_SUBNET:-$(echo 10.{232..239}.0)}
tag=memberd-boottest-$$
net=$tag
hosts=(relay member-a member-b)
work=$(mktemp -d)

cleanup() {
	rc=$?
	if ((rc != 0)); then
		for h in "${hosts[@]}"; do
			docker exec "$tag-$h" journalctl --no-pager -n 40 -u memberd -u memberd-relay 2>/dev/null |
				sed "s/^/  $h journal: /" >&2 || true
		done
	fi
	if [[ -n ${MEMBERD_BOOTTEST_KEEP:-} ]]; then
		echo "boot-test: MEMBERD_BOOTTEST_KEEP set: containers $tag-* and network $net left running" >&2
		exit $rc
	fi
	for h in "${hosts[@]}"; do docker rm -f "$tag-$h" >/dev/null 2>&1 || true; done
	docker network rm "$net" >/dev/null 2>&1 || true
	rm -rf "$work"
	exit $rc
}
trap cleanup EXIT

# on HOST CMD...: run a command on a host.
on() {
	local h=$1
	shift
	docker exec "$tag-$h" "$@"
}

step "start: $deb"
tarball=$(bash packaging/boot-test/rootfs.sh "$cache")
step "root filesystem: $tarball ($(du -m "$tarball" | cut -f1) MB)"
image=memberd-boottest:$(basename "$tarball" .tar | sed 's/^debian12-systemd-//')
if ! docker image inspect "$image" >/dev/null 2>&1; then
	docker import "$tarball" "$image" >/dev/null
fi
step "image $image"

for subnet in $subnets; do
	docker network create --subnet "$subnet.0/24" "$net" >/dev/null 2>"$work/net.err" && break
	subnet=
done
[[ -n $subnet ]] || fail "docker network create (subnets $subnets): $(cat "$work/net.err")"
declare -A ip=([relay]=$subnet.10 [member-a]=$subnet.11 [member-b]=$subnet.12)
step "network $net: $subnet.0/24"

bin/memberd demo init --dir "$work/demo" --members 2 --relays 1 --hsm softhsm \
	--relay-addr "${ip[relay]}:443" >"$work/demo-init.log" 2>&1 || {
	cat "$work/demo-init.log" >&2
	fail "memberd demo init"
}
step "demo consortium (memberd demo init --members 2 --relays 1, SoftHSM2)"

for h in "${hosts[@]}"; do
	docker run -d --name "$tag-$h" --hostname "$h" --network "$net" --ip "${ip[$h]}" \
		--tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:rw -e container=docker \
		--stop-signal SIGRTMIN+3 "$image" /sbin/init >/dev/null
done
for h in "${hosts[@]}"; do
	s=$(timeout 120 docker exec "$tag-$h" systemctl is-system-running --wait 2>&1) || true
	[[ $s == running || $s == degraded ]] || fail "$h: systemd did not boot: is-system-running says '$s'"
	[[ $(on "$h" cat /proc/1/comm) == systemd ]] || fail "$h: PID 1 is not systemd"
	[[ $s == running ]] || echo "  $h: degraded: $(on "$h" systemctl --failed --no-legend --plain | tr '\n' ' ')"
done
step "3 hosts booted, systemd $(on relay systemctl --version | head -1 | cut -d' ' -f2) as PID 1"

for h in "${hosts[@]}"; do
	docker cp "$deb" "$tag-$h:/tmp/memberd.deb"
	on "$h" dpkg -i /tmp/memberd.deb >"$work/dpkg-$h.log" 2>&1 || {
		cat "$work/dpkg-$h.log" >&2
		fail "$h: dpkg -i"
	}
	on "$h" id memberd >/dev/null || fail "$h: no memberd user after dpkg -i"
done
step "dpkg -i $(basename "$deb") on 3 hosts"

bash packaging/boot-test/stage.sh "$work/demo" "$work/stage"
for h in "${hosts[@]}"; do
	tar -C "$work/stage/$h" -cf - etc var setup.sh | docker exec -i "$tag-$h" tar --no-same-owner --no-overwrite-dir -C / -xf -
	on "$h" bash /setup.sh || fail "$h: setup"
done
step "configs, PINs and SoftHSM2 tokens in place"

on relay systemctl start memberd-relay || fail "relay: systemctl start memberd-relay"
[[ $(on relay systemctl is-active memberd-relay) == active ]] || fail "relay: memberd-relay not active"
step "relay: systemctl start memberd-relay: active"

# A member is READY only with a relay connected and the ledger caught up,
# which takes a raft leader, which takes both members: start without
# waiting, then watch them go from activating to active.
on member-a systemctl start --no-block memberd
sleep 3
s=$(on member-a systemctl is-active memberd) || true
st=$(on member-a systemctl show -p StatusText --value memberd)
[[ $s == activating && $st == waiting:* ]] ||
	fail "member-a alone (no raft quorum): '$s' '$st', want activating and a 'waiting: ...' status"
echo "  member-a alone: $s, STATUS=$st"
on member-b systemctl start --no-block memberd
for h in member-a member-b; do
	s=
	for _ in $(seq 120); do
		s=$(on "$h" systemctl is-active memberd) || true
		[[ $s == active || $s == failed ]] && break
		sleep 0.5
	done
	[[ $s == active ]] || fail "$h: memberd is '$s' (not active) after 60s: $(on "$h" systemctl show -p StatusText memberd)"
	echo "  $h: $(on "$h" systemctl show -p StatusText --value memberd), $(on "$h" systemctl show -p WatchdogUSec memberd)"
done
step "members: systemctl start memberd: active (READY=1 seen by systemd)"

status() { on "$1" memberd status --json | tr -d " \n"; } # compact: one line, no blanks
# field HOST REGEX: the first match of REGEX in HOST's status document.
field() {
	local st
	st=$(status "$1")
	grep -m1 -oE "$2" <<<"$st" | head -1
}
for h in member-a member-b; do
	on "$h" memberd status >"$work/status-$h.txt" || fail "$h: memberd status"
	st=$(status "$h")
	grep -q '"state":"up"' <<<"$st" || fail "$h: no relay up in memberd status: $st"
	grep -qE '"last_handshake":"[0-9]' <<<"$st" || {
		sleep 3
		st=$(status "$h")
		grep -qE '"last_handshake":"[0-9]' <<<"$st" || fail "$h: no WireGuard handshake with the other member: $st"
	}
done
on relay memberd status >"$work/status-relay.txt" || fail "relay: memberd status"
grep -q member-a "$work/status-relay.txt" && grep -q member-b "$work/status-relay.txt" ||
	fail "relay: status does not list both members: $(cat "$work/status-relay.txt")"
step "memberd status: relay up and a WireGuard handshake on both members, both attached to the relay"

height() { field "$1" '"height":[0-9]+' | cut -d: -f2; }
submit() {
	on "$1" memberd ledger submit --channel demo --msp-id "$1MSP" --cert /etc/memberd/identity/cert.pem \
		--tls-ca /etc/memberd/ca.pem --key "$(on "$1" cat /etc/memberd/cli-key.uri)" --data "$2" >/dev/null
}
# wait_height HOST N: until HOST's ledger height is N (30s).
wait_height() {
	for _ in $(seq 60); do
		[[ $(height "$1") == "$2" ]] && return 0
		sleep 0.5
	done
	fail "$1: ledger height $(height "$1"), want $2"
}
h0=$(height member-a)
submit member-a "boot-test tx 1" || fail "member-a: memberd ledger submit"
submit member-b "boot-test tx 2" || fail "member-b: memberd ledger submit"
h1=$((h0 + 2))
wait_height member-a "$h1"
wait_height member-b "$h1"
step "ledger: 2 envelopes submitted (one per member), height $h0 -> $h1 on both (raft over the tunnel)"

on member-a systemctl restart memberd || fail "member-a: systemctl restart memberd"
[[ $(height member-a) == "$h1" ]] || fail "member-a: height $(height member-a) after restart, want $h1 (data lost?)"
submit member-a "boot-test tx 3" || fail "member-a: submit after restart"
wait_height member-b $((h1 + 1))
wait_height member-a $((h1 + 1))
step "systemctl restart memberd (member-a): height $h1 kept, a new envelope commits on both"

# signal_restarted SIGNAL: sends SIGNAL to member-b's main PID and waits
# (30s) until systemd has restarted memberd once: sets pid, p2, n0, n1.
signal_restarted() {
	pid=$(on member-b systemctl show -p MainPID --value memberd)
	n0=$(on member-b systemctl show -p NRestarts --value memberd)
	on member-b kill "-$1" "$pid"
	for _ in $(seq 60); do
		p2=$(on member-b systemctl show -p MainPID --value memberd)
		s=$(on member-b systemctl is-active memberd) || true
		[[ $s == active && $p2 != 0 && $p2 != "$pid" ]] && break
		sleep 0.5
	done
	n1=$(on member-b systemctl show -p NRestarts --value memberd)
	[[ $s == active && $p2 != "$pid" ]] && ((n1 == n0 + 1)) ||
		fail "member-b: after kill -$1 of $pid: '$s', main PID $p2, NRestarts $n0 -> $n1 (want one restart)"
}
signal_restarted 9
wait_height member-b $((h1 + 1))
step "kill -9 of member-b's main PID $pid: restarted by systemd (PID $p2, NRestarts $n0 -> $n1), height kept"

# The watchdog: a stopped (SIGSTOP) appliance sends no WATCHDOG=1; systemd
# aborts it (SIGABRT: the Go runtime writes its goroutines to the journal)
# and restarts it. WatchdogSec=5s in a drop-in keeps the wait short.
on member-b mkdir -p /run/systemd/system/memberd.service.d
on member-b sh -c 'printf "[Service]\nWatchdogSec=5s\n" >/run/systemd/system/memberd.service.d/boot-test.conf'
on member-b systemctl daemon-reload
on member-b systemctl restart memberd || fail "member-b: restart with WatchdogSec=5s"
since=$(on member-b date '+%Y-%m-%d %H:%M:%S')
signal_restarted STOP
j=$(on member-b journalctl --no-pager -u memberd --since "$since") # the goroutine dump: not piped into grep -q
grep -q 'Watchdog timeout' <<<"$j" ||
	fail "member-b: no 'Watchdog timeout' in the journal after SIGSTOP"
on member-b rm /run/systemd/system/memberd.service.d/boot-test.conf
on member-b systemctl daemon-reload
wait_height member-b $((h1 + 1))
step "watchdog: SIGSTOP of member-b's PID $pid: 'Watchdog timeout', restarted (PID $p2, NRestarts $n0 -> $n1)"

since=$(on member-a date '+%Y-%m-%d %H:%M:%S')
on member-a systemctl stop memberd || fail "member-a: systemctl stop"
res=$(on member-a systemctl show -p Result -p ExecMainStatus memberd | tr '\n' ' ')
[[ $res == *Result=success* && $res == *ExecMainStatus=0* ]] || fail "member-a: stop not clean: $res"
j=$(on member-a journalctl --no-pager -u memberd --since "$since")
grep -qiE 'SIGKILL|timed out|Killing process' <<<"$j" && fail "member-a: stop needed SIGKILL: $j"
grep -q 'Main process exited' <<<"$j" && fail "member-a: exit status not 0 at stop: $j"
grep -q 'Deactivated successfully' <<<"$j" || fail "member-a: no 'Deactivated successfully' at stop: $j"
grep -q '"appliance stopped"' <<<"$j" || fail "member-a: no 'appliance stopped' line in the journal"
step "systemctl stop memberd (member-a): $res, no SIGKILL"

on member-a journalctl --no-pager -u memberd -o cat >"$work/journal.txt"
python3 - "$work/journal.txt" <<'EOF' || fail "member-a: journal lines are not readable JSON logs"
import json, sys
n = bad = dup = 0
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue  # systemd's own lines (Started, Stopping, ...)
    n += 1
    try:
        pairs = json.loads(line, object_pairs_hook=lambda p: p)
        keys = [k for k, _ in pairs]
        assert {"time", "level", "msg"} <= set(keys)
        dup += len(keys) != len(set(keys))
    except Exception:
        bad += 1
        print("  not a JSON log line:", line.rstrip()[:200])
print(f"  journalctl -u memberd -o cat: {n} JSON lines from memberd, {bad} unreadable, {dup} with a repeated key (issue #13 'Logs and status')")
sys.exit(1 if bad or n < 5 else 0)
EOF
step "journalctl -u memberd: JSON log lines"

for u in memberd memberd-relay; do
	h=member-b
	[[ $u == memberd-relay ]] && h=relay
	echo "  systemd-analyze security $u.service ($h): $(on "$h" systemd-analyze security "$u.service" --no-pager | tail -1 | sed 's/^→ //')"
done
on relay systemctl stop memberd-relay || fail "relay: systemctl stop memberd-relay"
res=$(on relay systemctl show -p Result -p ExecMainStatus memberd-relay | tr '\n' ' ')
[[ $res == *Result=success* && $res == *ExecMainStatus=0* ]] || fail "relay: stop not clean: $res"
step "systemd-analyze security; relay stopped cleanly ($res)"
echo "boot-test: $passed passed, 0 failed"
