#!/usr/bin/env bash
# Builds the memberd VM image (`make vm-image`, root): a GPT disk that boots
# with UEFI (systemd-boot) on any hypervisor, holding Debian 12 with the
# memberd .deb installed, memberd.service enabled and memberd-seed.service
# (first boot, non-interactive). Nothing is mounted: the root filesystem is
# written with `mkfs.ext4 -d`, the EFI partition with mtools, and both are
# copied into the disk file at the offsets sfdisk gives them.
# Usage: packaging/vm/build.sh DEB [OUT_DIR]   (default OUT_DIR: bin/dist)
#   -> OUT_DIR/memberd-vm_<version>_amd64.raw (sparse) and .qcow2 (qemu-img).
# VM_SIZE (default 4G) is the disk size; VM_QCOW2=0 skips the qcow2.
# MEMBERD_VM_CACHE (default ~/.cache/memberd-vm) keeps the debootstrapped base.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
fail() {
	echo "vm-image: $*" >&2
	exit 1
}
deb=${1:?memberd .deb}
out=${2:-bin/dist}
size=${VM_SIZE:-4G}
cache=${MEMBERD_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/memberd-vm}
[[ -f $deb ]] || fail "no .deb at $deb: run make package"
(($(id -u) == 0)) || fail "needs root (debootstrap, chroot, file owners in the image)"
for c in debootstrap mkfs.ext4 mkfs.vfat mcopy sfdisk; do
	command -v "$c" >/dev/null || fail "$c is missing: apt-get install debootstrap e2fsprogs dosfstools mtools fdisk"
done
version=$(dpkg-deb -f "$deb" Version)
name=memberd-vm_${version}_amd64

tarball=$(bash packaging/vm/rootfs.sh "$cache")
echo "vm-image: base $tarball ($(du -m "$tarball" | cut -f1) MB), $(($(date +%s) - start))s" >&2

work=$(mktemp -d "${TMPDIR:-/tmp}/memberd-vm.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir "$root"
tar --numeric-owner -C "$root" -xf "$tarball"

# The package, as an operator would install it (postinstall: memberd user,
# sysctls; in a chroot `sysctl -p` fails and says they apply at boot).
cp "$deb" "$root/tmp/memberd.deb"
chroot "$root" dpkg -i /tmp/memberd.deb >"$work/dpkg.log" 2>&1 || {
	cat "$work/dpkg.log" >&2
	fail "dpkg -i in the image failed"
}
rm "$root/tmp/memberd.deb"
# The image's own files (packaging/vm/root): seed unit and script, the
# memberd.service drop-in, DHCP, the ESP kernel hook.
cp -rT --no-preserve=ownership packaging/vm/root "$root"
install -m 0644 packaging/vm/README.md "$root/usr/share/doc/memberd/vm-image.md"
echo memberd >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tmemberd\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
cat >"$root/etc/fstab" <<'FSTAB'
# memberd VM image (packaging/vm/build.sh). x-systemd.growfs: the root
# filesystem grows to its partition at boot.
LABEL=memberd-root  /          ext4  defaults,x-systemd.growfs  0 1
LABEL=MEMBERD-EFI   /boot/efi  vfat  umask=0077,nofail          0 2
FSTAB
mkdir -p "$root/boot/efi"
# Not a first boot in systemd's sense (an empty machine-id is made at boot
# and committed): systemd-firstboot would otherwise prompt on the console.
: >"$root/etc/machine-id"
chroot "$root" systemctl mask systemd-firstboot.service >/dev/null 2>&1
chroot "$root" systemctl enable memberd.service memberd-seed.service systemd-networkd.service \
	systemd-resolved.service ssh.service >"$work/enable.log" 2>&1 || {
	cat "$work/enable.log" >&2
	fail "systemctl enable in the image failed"
}
ln -sf /run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"

# What the image must hold; packaging/vm/check.sh runs the same checks on
# the built disk (test/vmimage).
for f in usr/bin/memberd usr/lib/systemd/system/memberd.service usr/lib/systemd/system/memberd-relay.service \
	usr/lib/sysctl.d/60-memberd.conf etc/systemd/system/multi-user.target.wants/memberd.service \
	etc/systemd/system/multi-user.target.wants/memberd-seed.service; do
	[[ -e $root/$f || -L $root/$f ]] || fail "image misses /$f"
done
grep -q '^memberd:' "$root/etc/passwd" || fail "image has no memberd user"

kver=$(basename "$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)" | sed 's/^vmlinuz-//')
[[ -f $root/boot/initrd.img-$kver ]] || fail "no initrd for kernel $kver"

# EFI system partition: systemd-boot (from the image's systemd-boot-efi),
# one entry, the kernel and initrd; an empty memberd-seed/ for a seed.
esp=$work/esp.img
truncate -s 256M "$esp"
mkfs.vfat -F 32 -n MEMBERD-EFI "$esp" >/dev/null
cat >"$work/loader.conf" <<'LOADER'
default memberd.conf
timeout 0
editor no
LOADER
cmdline="root=LABEL=memberd-root rw console=tty0 console=ttyS0,115200n8"
cat >"$work/memberd.conf" <<ENTRY
title   memberd (Debian 12, kernel $kver)
linux   /memberd/vmlinuz
initrd  /memberd/initrd.img
options $cmdline
ENTRY
echo "memberd VM image: put a seed's files here (packaging/vm/README.md, First boot)." >"$work/README.txt"
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/memberd ::/memberd-seed
mcopy -i "$esp" "$root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$work/loader.conf" ::/loader/loader.conf
mcopy -i "$esp" "$work/memberd.conf" ::/loader/entries/memberd.conf
mcopy -i "$esp" "$root/boot/vmlinuz-$kver" ::/memberd/vmlinuz
mcopy -i "$esp" "$root/boot/initrd.img-$kver" ::/memberd/initrd.img
mcopy -i "$esp" "$work/README.txt" ::/memberd-seed/README.txt

# Disk: GPT, ESP at 1 MiB, root (type "Linux root x86-64") after it.
disk=$work/disk.raw
truncate -s "$size" "$disk"
sfdisk -q "$disk" <<PARTS
label: gpt
start=1MiB, size=256MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=memberd-root
PARTS
read -r rstart rsize < <(sfdisk -d "$disk" |
	sed -n 's/.*start= *\([0-9]*\), size= *\([0-9]*\),.*name="memberd-root".*/\1 \2/p')
[[ -n $rsize ]] || fail "cannot read the root partition from sfdisk"
rootimg=$work/root.img
truncate -s $((rsize * 512)) "$rootimg"
mkfs.ext4 -q -L memberd-root -d "$root" "$rootimg" || fail "mkfs.ext4 -d failed"
dd if="$esp" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$rootimg" of="$disk" bs=1M seek=$((rstart * 512)) oflag=seek_bytes conv=notrunc,sparse status=none

mkdir -p "$out"
mv "$disk" "$out/$name.raw"
echo "$kver" >"$out/$name.kernel"
if [[ ${VM_QCOW2:-1} != 0 ]] && command -v qemu-img >/dev/null; then
	qemu-img convert -O qcow2 "$out/$name.raw" "$out/$name.qcow2"
fi
echo "vm-image: $out/$name.raw ($size, $(du -m "$out/$name.raw" | cut -f1) MB used), kernel $kver, $(($(date +%s) - start))s" >&2
echo "$out/$name.raw"
