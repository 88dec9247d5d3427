#!/usr/bin/env bash
# Builds the Metalfleet lab image (docs/lab-image.md): a small bootable OS
# from Debian packages, as the rootfs tarball metal-installer streams:
#   build/lab-image/metal-lab-image.tar.zst (+ .sha256)
#
# busybox-static (init, getty, ifup, udhcpc), Debian's cloud kernel with the
# modules it needs, a tiny busybox initrd that mounts root=UUID=..., and
# systemd-boot's EFI binary for disk boot on UEFI machines.
#
# Environment: OUT (default build/lab-image), CACHE (kernel, shared with
# the installer build, default .cache/installer), KERNEL= MODULES= (another
# kernel), IMAGE_VERSION (default 1), SOURCE_DATE_EPOCH (every file's
# mtime; default: the last commit of the image's sources).
#
# Reproducible: the same sources, packages and kernel give the same bytes
# (names sorted, owners root, mtimes SOURCE_DATE_EPOCH, gzip without name
# and time; zstd writes no time), so the sha256 only changes with them.
set -euo pipefail
umask 022

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/lab/image
OUT=${OUT:-$ROOT/build/lab-image}
CACHE=${CACHE:-$ROOT/.cache/installer}
DEBS=${DEBS:-$ROOT/.cache/lab-image}
IMAGE_VERSION=${IMAGE_VERSION:-1}
NAME=metal-lab-image
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct -- lab/image installer/build/lib.sh 2>/dev/null || true)}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
export SOURCE_DATE_EPOCH

# shellcheck source=installer/build/lib.sh
source "$ROOT/installer/build/lib.sh"
for tool in dpkg-deb cpio gzip zstd tar; do
	command -v "$tool" >/dev/null || die "$tool missing (apt-get install dpkg cpio gzip zstd tar)"
done
[[ $(id -u) == 0 ]] || die "run as root: the tarball's files must belong to root"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT" "$DEBS"

# --- Debian packages ------------------------------------------------------------
fetch_kernel
say "kernel $KVER"
deb() { # deb PACKAGE -> path of its cached .deb
	local f
	f=$(ls "$DEBS"/"$1"_*.deb 2>/dev/null | head -1 || true)
	if [[ -z "$f" ]]; then
		say "downloading $1"
		(cd "$DEBS" && apt-get download "$1" 2>&1 | grep -v unsandboxed >&2 || true)
		f=$(ls "$DEBS"/"$1"_*.deb 2>/dev/null | head -1 || true)
		[[ -n "$f" ]] || die "apt-get download $1 failed"
	fi
	echo "$f"
}
mkdir -p "$WORK/bb" "$WORK/sdboot"
dpkg-deb -x "$(deb busybox-static)" "$WORK/bb"
dpkg-deb -x "$(deb systemd-boot-efi)" "$WORK/sdboot"
BUSYBOX=$WORK/bb/bin/busybox
[[ -x "$BUSYBOX" ]] || die "no busybox in busybox-static"

# busybox_tree DIR: busybox and a symlink per applet at its usual place.
busybox_tree() {
	local dir=$1 a
	install -D -m 0755 "$BUSYBOX" "$dir/bin/busybox"
	while IFS= read -r a; do
		[[ "$a" == bin/busybox || -e "$dir/$a" || -L "$dir/$a" ]] && continue
		mkdir -p "$dir/$(dirname "$a")"
		ln -s /bin/busybox "$dir/$a"
	done < <("$BUSYBOX" --list-full)
}

# --- root file system -------------------------------------------------------------
R=$WORK/rootfs
mkdir -p "$R"/{bin,sbin,etc,dev,proc,sys,run,tmp,root,home,mnt,var/lib,var/log,usr/bin,usr/sbin,usr/local/bin,boot/efi,lib/modules}
chmod 1777 "$R/tmp"
chmod 0700 "$R/root"
ln -s ../run "$R/var/run"
busybox_tree "$R"
cp -a "$HERE/rootfs/." "$R/"

cat >"$R/etc/os-release" <<EOF
NAME="Metalfleet lab"
ID=metalfleet-lab
ID_LIKE=debian
VERSION_ID="$IMAGE_VERSION"
PRETTY_NAME="Metalfleet lab $IMAGE_VERSION (busybox $("$BUSYBOX" | head -1 | awk '{print $2}'), Linux $KVER)"
HOME_URL="https://github.com/metalfleet/metalfleet"
EOF
echo metal-lab >"$R/etc/hostname"
# Lab only: root logs in on the console without a password.
printf 'root::0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\ntty:x:5:\n' >"$R/etc/group"
printf 'root::19000:0:99999:7:::\n' >"$R/etc/shadow"
chmod 0600 "$R/etc/shadow"
printf '/bin/sh\n' >"$R/etc/shells"
printf '# written by metal-installer from the layout\n' >"$R/etc/fstab"
# The installer replaces this with the allocation's addresses.
mkdir -p "$R/etc/network"
printf 'auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n' >"$R/etc/network/interfaces"
mkdir -p "$R/etc/network/if-up.d" "$R/etc/network/if-pre-up.d" "$R/etc/network/if-down.d" "$R/etc/network/if-post-down.d"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tmetal-lab\n' >"$R/etc/hosts"
printf 'Metalfleet lab \\n \\l\n\n' >"$R/etc/issue"

# Kernel, modules, systemd-boot.
install -D -m 0644 "$KERNEL" "$R/boot/vmlinuz-$KVER"
MODDIR=$R/lib/modules/$KVER
SYSTEM_MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
	failover net_failover virtio_net virtio_blk virtio_scsi scsi_mod sd_mod virtio_rng
	e1000 e1000e igb ixgbe fat vfat nls_cp437 nls_iso8859_1 nls_ascii nls_utf8 efivarfs)
select_modules "$MODDIR" "${SYSTEM_MODULES[@]}"
say "system modules (${#MODS_LOADED[@]}): ${MODS_LOADED[*]}"
cp "$MODULES/modules.builtin" "$MODULES/modules.order" "$MODDIR/" 2>/dev/null || true
install -D -m 0644 "$WORK/sdboot/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$R/usr/lib/systemd/boot/efi/systemd-bootx64.efi"

# --- initrd ------------------------------------------------------------------------------
I=$WORK/initrd
mkdir -p "$I"/{bin,dev,proc,sys,newroot,lib/modules}
install -m 0755 "$BUSYBOX" "$I/bin/busybox"
for a in sh mount umount insmod findfs switch_root sleep cat echo mkdir ls; do ln -s busybox "$I/bin/$a"; done
install -m 0755 "$HERE/initrd-init" "$I/init"
select_modules "$I/lib/modules" virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
	virtio_blk virtio_scsi scsi_mod sd_mod ext4
say "initrd modules (${#MODS_LOADED[@]}): ${MODS_LOADED[*]}"
find "$I" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$I" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --reproducible --quiet) | gzip -9 -n >"$R/boot/initrd.img-$KVER"
ln -s "vmlinuz-$KVER" "$R/boot/vmlinuz"
ln -s "initrd.img-$KVER" "$R/boot/initrd.img"

# --- tarball ----------------------------------------------------------------------------------
say "packing"
tar --format=gnu --sort=name --numeric-owner --owner=0 --group=0 --mtime="@$SOURCE_DATE_EPOCH" \
	-C "$R" -c . | zstd -q -19 -T0 --no-progress >"$OUT/$NAME.tar.zst.tmp"
mv "$OUT/$NAME.tar.zst.tmp" "$OUT/$NAME.tar.zst"
(cd "$OUT" && sha256sum "$NAME.tar.zst" >"$NAME.tar.zst.sha256")
say "$OUT/$NAME.tar.zst: $(awk -v b="$(stat -c %s "$OUT/$NAME.tar.zst")" 'BEGIN{printf "%.1f MB", b/1e6}') (unpacked $(du -sh --apparent-size "$R" | cut -f1)), sha256 $(cut -d' ' -f1 "$OUT/$NAME.tar.zst.sha256")"
