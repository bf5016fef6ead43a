#!/usr/bin/env bash
# Builds the packages (make package) and checks them without touching this
# host's root: control fields, file list, conffiles, the units (systemd-analyze
# verify + security --offline), an unpack into a throwaway dpkg root, the
# packaged binary's version, and the postinstall logic with stubbed commands.
# Usage: bash packaging/test.sh        (from the repo root; needs dpkg-deb)
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok   $*"; }

command -v dpkg-deb >/dev/null || fail "dpkg-deb not installed"
tmp=$(mktemp -d /tmp/memberd-pkgtest.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

out=$(make -s package 2>"$tmp/make.log") || { cat "$tmp/make.log" >&2; fail "make package"; }
deb=$(grep '\.deb$' <<<"$out") || fail "no .deb in: $out"
rpm=$(grep '\.rpm$' <<<"$out") || fail "no .rpm in: $out"
[[ -s $deb && -s $rpm ]] || fail "package files missing"
ok "built $deb $rpm"

# Control fields.
ctl=$(dpkg-deb -f "$deb")
want_version=$(dpkg-deb -f "$deb" Version)
grep -q '^Package: memberd$' <<<"$ctl" || fail "control: Package"
[[ $want_version =~ ^[0-9] ]] || fail "control: Version $want_version does not start with a digit"
grep -q "^Architecture: $(go env GOARCH)$" <<<"$ctl" || fail "control: Architecture"
ok "control: memberd $want_version"

# File list and modes.
list=$(dpkg-deb -c "$deb")
for want in \
	'-rwxr-xr-x root/root .* ./usr/bin/memberd$' \
	'-rw-r--r-- root/root .* ./usr/lib/systemd/system/memberd.service$' \
	'-rw-r--r-- root/root .* ./usr/lib/systemd/system/memberd-relay.service$' \
	'-rw-r--r-- root/root .* ./usr/lib/sysctl.d/60-memberd.conf$' \
	'-rw-r----- root/root .* ./etc/memberd/memberd.yaml$' \
	'-rw-r----- root/root .* ./etc/memberd/relay.yaml$' \
	'./usr/share/doc/memberd/README.md$'; do
	grep -Eq -- "$want" <<<"$list" || fail "file list lacks $want"
done
ok "file list"

# Config files are conffiles (edits survive upgrades).
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles >"$tmp/conffiles"
diff <(sort "$tmp/conffiles") <(printf '%s\n' /etc/memberd/memberd.yaml /etc/memberd/relay.yaml) ||
	fail "conffiles"
ok "conffiles: $(tr '\n' ' ' <"$tmp/conffiles")"

# Unpack into a throwaway dpkg root (no maintainer scripts run: the package
# has no preinst, and --unpack does not run postinst).
root=$tmp/root
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
dpkg --root="$root" --force-depends --force-not-root --unpack "$deb" >"$tmp/dpkg.log" 2>&1 ||
	{ cat "$tmp/dpkg.log" >&2; fail "dpkg --root --unpack"; }
dpkg --root="$root" -s memberd | grep -q '^Status: install ok unpacked' || fail "dpkg status in throwaway root"
[[ -x $root/usr/bin/memberd ]] || fail "binary not unpacked"
cmp -s "$root/usr/share/doc/memberd/README.md" packaging/README.md || fail "packaged README differs from packaging/README.md"
ok "dpkg --root unpack"

# The packaged binary carries the Makefile's ldflags version.
got=$("$root/usr/bin/memberd" version 2>&1 || true)
gv=$(git describe --tags --always --dirty)
grep -qF "$gv" <<<"$got" || fail "memberd version: want $gv in: $got"
ok "binary version: $(head -1 <<<"$got")"

# Units: required settings, then systemd's own checks.
unit=$root/usr/lib/systemd/system
req_common=(
	'User=memberd' 'DynamicUser=no' 'NoNewPrivileges=yes' 'ProtectSystem=strict'
	'ProtectHome=yes' 'PrivateTmp=yes' 'ConfigurationDirectory=memberd'
	'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK'
	'SystemCallFilter=@system-service' 'Restart=on-failure'
	'ExecReload=/bin/kill -HUP $MAINPID'
	'Type=notify' 'NotifyAccess=main' 'WatchdogSec=30s' 'ConfigurationDirectoryMode=0750'
)
for u in memberd memberd-relay; do
	for l in "${req_common[@]}"; do
		grep -qxF -- "$l" "$unit/$u.service" || fail "$u.service lacks $l"
	done
done
grep -qxF 'ExecStart=/usr/bin/memberd run --config /etc/memberd/memberd.yaml --log-format json' "$unit/memberd.service" || fail "memberd.service ExecStart"
grep -qxF 'ExecStart=/usr/bin/memberd relay --config /etc/memberd/relay.yaml' "$unit/memberd-relay.service" || fail "memberd-relay.service ExecStart"
grep -qxF 'LoadCredential=hsm-pin:/etc/memberd/hsm.pin' "$unit/memberd.service" || fail "memberd.service LoadCredential"
grep -qxF 'StateDirectory=memberd' "$unit/memberd.service" || fail "memberd.service StateDirectory"
grep -qxF 'CapabilityBoundingSet=CAP_NET_BIND_SERVICE' "$unit/memberd-relay.service" || fail "relay bounding set"
grep -qxF 'AmbientCapabilities=CAP_NET_BIND_SERVICE' "$unit/memberd-relay.service" || fail "relay ambient caps"
grep -q '^AmbientCapabilities=CAP' "$unit/memberd.service" && fail "memberd.service must not get capabilities"
# The flags the units pass exist.
"$root/usr/bin/memberd" run --help | grep -q -- '--log-format' || fail "memberd run has no --log-format"
"$root/usr/bin/memberd" relay --help | grep -q -- '--config' || fail "memberd relay has no --config"
ok "unit settings"

if command -v systemd-analyze >/dev/null; then
	# Checked on a copy whose ExecStart names the unpacked binary (verify
	# wants the command to exist; --root would also need /bin/kill and the
	# targets inside the throwaway root).
	mkdir -p "$tmp/units"
	for u in memberd memberd-relay; do
		sed "s#^ExecStart=/usr/bin/memberd #ExecStart=$root/usr/bin/memberd #" "$unit/$u.service" >"$tmp/units/$u.service"
		if ! systemd-analyze verify "$tmp/units/$u.service" >"$tmp/verify" 2>&1; then
			cat "$tmp/verify" >&2; fail "systemd-analyze verify $u.service"
		fi
		[[ -s $tmp/verify ]] && { cat "$tmp/verify" >&2; fail "systemd-analyze verify $u.service warned"; }
		score=$(systemd-analyze security --offline=true "$tmp/units/$u.service" 2>/dev/null |
			sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
		ok "systemd-analyze verify $u.service; security exposure ${score:-?} (0 = best, 10 = worst)"
	done
else
	echo "skip systemd-analyze: not installed"
fi

# The example configs pass memberd's own config checks (no unknown keys, all
# values valid) once the genesis placeholder is filled: what stops them then
# is the missing identity folder / relay certificate, i.e. files the operator
# provides. (Unpacked, not configured: dpkg leaves conffiles as .dpkg-new.)
h=$(printf '%064d' 0)
mkdir -p "$tmp/etc"
sed "s/sha256:CHANGE-ME/sha256:$h/" "$root/etc/memberd/memberd.yaml.dpkg-new" >"$tmp/etc/memberd.yaml"
sed "s/^genesis: \"CHANGE-ME\"/genesis: \"sha256:$h\"/" "$root/etc/memberd/relay.yaml.dpkg-new" >"$tmp/etc/relay.yaml"
e=$(cd / && timeout 10 "$root/usr/bin/memberd" run --config "$tmp/etc/memberd.yaml" --log-format text 2>&1 || true)
grep -qF "open $tmp/etc/identity/identity.yaml: no such file" <<<"$e" || fail "example memberd.yaml: $e"
e=$(cd / && timeout 10 "$root/usr/bin/memberd" relay --config "$tmp/etc/relay.yaml" 2>&1 || true)
grep -qF "open $tmp/etc/relay.crt: no such file" <<<"$e" || fail "example relay.yaml: $e"
ok "example configs pass memberd's config checks (stop at the operator's identity/certificate)"

# sysctl.d: quic-go's buffers.
for k in net.core.rmem_max net.core.wmem_max; do
	v=$(sed -n "s/^$k *= *//p" "$root/usr/lib/sysctl.d/60-memberd.conf")
	[[ -n $v && $v -ge 7340032 ]] || fail "sysctl $k=$v < 7 MiB"
done
ok "sysctl.d: rmem_max/wmem_max"

# postinstall logic with every system command stubbed (records the calls;
# nothing touches this host's users, sysctls or systemd).
stub=$tmp/stub
mkdir -p "$stub"
for c in getent groupadd useradd sysctl chown chmod chgrp systemctl; do
	printf '#!/bin/sh\necho "%s $*" >>"%s"\n[ "%s" = getent ] && exit 2\nexit 0\n' "$c" "$tmp/calls" "$c" >"$stub/$c"
	chmod +x "$stub/$c"
done
PATH=$stub:/usr/bin:/bin sh "$root/var/lib/dpkg/info/memberd.postinst" configure >/dev/null 2>&1 ||
	fail "postinst configure"
grep -q '^groupadd --system memberd$' "$tmp/calls" || fail "postinst: no groupadd"
grep -q '^useradd --system --gid memberd .*--shell /usr/sbin/nologin .* memberd$' "$tmp/calls" || fail "postinst: no useradd"
grep -q '^sysctl -q -p /usr/lib/sysctl.d/60-memberd.conf$' "$tmp/calls" || fail "postinst: no sysctl -p"
: >"$tmp/calls"
PATH=$stub:/usr/bin:/bin sh "$root/var/lib/dpkg/info/memberd.postinst" abort-upgrade >/dev/null 2>&1 || fail "postinst abort-upgrade"
[[ ! -s $tmp/calls ]] || fail "postinst abort-upgrade ran: $(cat "$tmp/calls")"
ok "postinst: creates the memberd system user and applies the sysctls"

# The real postinst (real groupadd/useradd, sysctl stubbed: the UDP buffer
# sysctls are global, not per network namespace) against a COPY of /etc
# bind-mounted over /etc in a private mount namespace; run twice (install,
# then upgrade) to show it is idempotent. The host's /etc is not touched.
if [[ $(id -u) == 0 ]] && command -v unshare >/dev/null && command -v useradd >/dev/null; then
	cp -a /etc "$tmp/etc-copy" 2>/dev/null || true
	mkdir -p "$tmp/etc-copy/memberd"
	cp "$root/etc/memberd/memberd.yaml.dpkg-new" "$tmp/etc-copy/memberd/memberd.yaml"
	mkdir -p "$tmp/stub-sysctl-only"
	printf '#!/bin/sh\necho "sysctl $*" >>"%s"\n' "$tmp/sysctl.calls" >"$tmp/stub-sysctl-only/sysctl"
	chmod +x "$tmp/stub-sysctl-only/sysctl"
	: >"$tmp/sysctl.calls"
	post=$root/var/lib/dpkg/info/memberd.postinst
	unshare -m --propagation private sh -c '
		set -e
		mount --bind "$1" /etc
		PATH=$2:/usr/sbin:/usr/bin:/sbin:/bin sh "$3" configure
		PATH=$2:/usr/sbin:/usr/bin:/sbin:/bin sh "$3" configure 0.0.1
		getent passwd memberd
		getent group memberd
		stat -c "%U:%G %a %n" /etc/memberd /etc/memberd/memberd.yaml
	' sh "$tmp/etc-copy" "$tmp/stub-sysctl-only" "$post" >"$tmp/postinst.out" 2>"$tmp/postinst.err" ||
		{ cat "$tmp/postinst.err" >&2; fail "real postinst in a mount namespace"; }
	grep -q '^memberd:x:[0-9]*:[0-9]*:memberd appliance:/var/lib/memberd:/usr/sbin/nologin$' "$tmp/postinst.out" || fail "postinst user: $(cat "$tmp/postinst.out")"
	grep -qx 'root:memberd 750 /etc/memberd' "$tmp/postinst.out" || fail "postinst /etc/memberd: $(cat "$tmp/postinst.out")"
	grep -q '^root:memberd .* /etc/memberd/memberd.yaml$' "$tmp/postinst.out" || fail "postinst memberd.yaml group"
	[[ $(grep -c '^sysctl -q -p /usr/lib/sysctl.d/60-memberd.conf$' "$tmp/sysctl.calls") == 2 ]] || fail "postinst sysctl calls: $(cat "$tmp/sysctl.calls")"
	ok "real postinst (mount namespace, copy of /etc): memberd system user, /etc/memberd root:memberd 0750, idempotent"
else
	echo "skip real postinst: needs root, unshare and useradd"
fi

# The .rpm: with rpm installed, its header and file list; else its magic.
if command -v rpm >/dev/null; then
	rpm -qp --qf '%{NAME} %{VERSION}-%{RELEASE} %{ARCH}\n' "$rpm"
	rl=$(rpm -qpl "$rpm")
	for f in /usr/bin/memberd /usr/lib/systemd/system/memberd.service /usr/lib/systemd/system/memberd-relay.service \
		/usr/lib/sysctl.d/60-memberd.conf /etc/memberd/memberd.yaml /etc/memberd/relay.yaml; do
		grep -qxF "$f" <<<"$rl" || fail "rpm lacks $f"
	done
	rpm -qpc "$rpm" | grep -qxF /etc/memberd/memberd.yaml || fail "rpm: memberd.yaml not %config"
	rpm -qp --scripts "$rpm" | grep -q 'useradd --system' || fail "rpm: no postinstall"
	ok "rpm: header, file list, %config, scripts"
else
	[[ $(head -c4 "$rpm" | od -An -tx1 | tr -d ' \n') == edabeedb ]] || fail "rpm magic"
	echo "skip rpm contents: rpm not installed (only the lead magic was checked)"
fi
echo PASS
