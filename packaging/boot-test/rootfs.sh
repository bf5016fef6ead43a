#!/usr/bin/env bash
# Builds (once) a Debian 12 root filesystem tarball with systemd and SoftHSM2
# from Debian's packages with debootstrap, for packaging/boot-test/run.sh.
# Usage: rootfs.sh CACHE_DIR   -> prints the tarball's path.
# The tarball's name carries a hash of this script, so a change to the
# package list builds a new one; an existing one is reused (about 2 minutes
# saved per run).
set -euo pipefail
cache=${1:?cache directory}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=systemd,systemd-sysv,dbus,softhsm2,procps,iproute2,passwd,ca-certificates
key=$(sha256sum "$0" | cut -c1-12)
tarball=$cache/debian12-systemd-$key.tar
if [[ -s $tarball ]]; then
	echo "$tarball"
	exit 0
fi
command -v debootstrap >/dev/null || {
	echo "rootfs: debootstrap is missing: apt-get install debootstrap" >&2
	exit 1
}
mkdir -p "$cache"
root=$(mktemp -d "$cache/rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$root.log" 2>&1 || {
	echo "rootfs: debootstrap failed, last lines of $root.log:" >&2
	tail -20 "$root.log" >&2
	exit 1
}
rm -f "$root.log"
# A container, not a machine: no getty, no udev-driven units, no random
# machine-id shared between images (systemd makes one at boot).
rm -f "$root"/etc/machine-id "$root"/var/lib/dbus/machine-id
: >"$root"/etc/machine-id
chroot "$root" systemctl mask getty.target console-getty.service systemd-udevd.service \
	systemd-udev-trigger.service systemd-timesyncd.service systemd-resolved.service >/dev/null 2>&1 || true
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
echo "$tarball"
