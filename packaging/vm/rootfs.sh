#!/usr/bin/env bash
# Builds (once) the VM image's base: a Debian 12 root filesystem with a
# kernel, systemd and the tools a member host needs, from Debian's packages
# with debootstrap (no image is downloaded). packaging/vm/build.sh copies it,
# installs the memberd .deb and packs the disk.
# Usage: rootfs.sh CACHE_DIR   -> prints the tarball's path.
# The tarball's name carries a hash of this script: a changed package list
# builds a new one; an existing one is reused (about 5 minutes saved).
set -euo pipefail
cache=${1:?cache directory}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Kernel + initramfs (boots on virtio, SATA, NVMe, Xen, Hyper-V: Debian's
# initramfs-tools MODULES=most), systemd-boot's EFI binary (UEFI boot),
# networkd/resolved/timesyncd (DHCP, DNS, time: certificates need a clock),
# ssh for the operator, SoftHSM2 for a software token, pkcs11-tool (opensc)
# for HSM key work.
packages=systemd,systemd-sysv,dbus,udev,kmod,linux-image-amd64,initramfs-tools,systemd-boot-efi,systemd-resolved,systemd-timesyncd,openssh-server,softhsm2,opensc,procps,iproute2,passwd,ca-certificates,less,nano
key=$(sha256sum "$0" | cut -c1-12)
tarball=$cache/debian12-vm-$key.tar
if [[ -s $tarball ]]; then
	echo "$tarball"
	exit 0
fi
command -v debootstrap >/dev/null || {
	echo "vm rootfs: debootstrap is missing: apt-get install debootstrap" >&2
	exit 1
}
mkdir -p "$cache"
root=$(mktemp -d "$cache/rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$root.log" 2>&1 || {
	echo "vm rootfs: debootstrap failed, last lines of $root.log:" >&2
	tail -20 "$root.log" >&2
	exit 1
}
rm -f "$root.log"
[[ -n $(ls "$root"/boot/vmlinuz-* 2>/dev/null) && -n $(ls "$root"/boot/initrd.img-* 2>/dev/null) ]] || {
	echo "vm rootfs: no kernel or initrd in $root/boot after debootstrap" >&2
	exit 1
}
# Each VM makes its own machine-id and ssh host keys at first boot.
rm -f "$root"/etc/machine-id "$root"/var/lib/dbus/machine-id "$root"/etc/ssh/ssh_host_*
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
echo "$tarball"
