#!/usr/bin/env bash
# Builds the installer's kernel and initramfs (docs/installer.md):
#   build/installer/vmlinuz, build/installer/initramfs.cpio.gz (+ .sha256)
#
# Environment:
#   KERNEL=<vmlinuz> MODULES=<lib/modules/<version> dir>  use this kernel instead
#                             of Debian's linux-image-cloud-amd64
#   OUT=<dir>                 output (default build/installer)
#   CACHE=<dir>               downloaded kernel packages (default .cache/installer)
#   VERSION=<string>          installer version (default: git describe)
#   COMPRESS=gzip|xz          initramfs compression (default gzip; the kernel reads both)
#
# Reproducible for the same tree, kernel and build host: Go builds with
# -trimpath and without VCS stamps (the version is given), u-root writes
# its cpio with zero mtimes and inode numbers, gzip without name and time.
set -euo pipefail
umask 022
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/build/installer}
CACHE=${CACHE:-$ROOT/.cache/installer}
COMPRESS=${COMPRESS:-gzip}
VERSION=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
GO=${GO:-go}

# shellcheck source=installer/build/lib.sh
source "$ROOT/installer/build/lib.sh"

for tool in "$GO" dpkg-deb cpio gzip; do
	command -v "$tool" >/dev/null || die "$tool missing (apt-get install dpkg cpio gzip; Go from go.dev)"
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT" "$CACHE"

# --- 1. kernel ---------------------------------------------------------------
fetch_kernel
say "kernel $KVER"

# --- 2. modules ----------------------------------------------------------------
# What the installer needs to see disks and NICs and to make file systems,
# where this kernel has it as a module (the cloud kernel builds ext4 in
# and has no ahci or e1000).
select_modules "$WORK/root/lib/modules" \
	virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
	failover net_failover virtio_net virtio_blk virtio_scsi virtio_rng \
	e1000 e1000e igb ixgbe \
	scsi_mod sd_mod libahci ahci \
	md_mod raid0 raid1 dm_mod \
	crc16 mbcache jbd2 ext4 fat vfat nls_cp437 nls_iso8859_1 nls_ascii nls_utf8 efivarfs
echo "$KVER" >"$WORK/root/lib/modules/kernel.version"
say "modules (${#MODS_LOADED[@]}): ${MODS_LOADED[*]}"
((${#MODS_MISSING[@]} == 0)) || say "not in this kernel (neither module nor built in): ${MODS_MISSING[*]}"

# --- 3. metal-phonehome ---------------------------------------------------------
FILES=(-files "$WORK/root/lib/modules:lib/modules")
if [[ -d agents/phonehome/cmd/metal-phonehome ]]; then
	say "building metal-phonehome (static)"
	CGO_ENABLED=0 "$GO" build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=$VERSION" -o "$WORK/metal-phonehome" ./agents/phonehome/cmd/metal-phonehome
	FILES+=(-files "$WORK/metal-phonehome:usr/local/bin/metal-phonehome")
else
	say "agents/phonehome/cmd/metal-phonehome does not exist: the installer carries no metal-phonehome"
fi

# --- 4. host tools the disk package runs -------------------------------------------
# u-root's -files adds their shared libraries (ldd). They go to /usr/sbin,
# which is on metal-installer's PATH.
TOOLS=()
for t in mkfs.ext4 mkfs.ext3 mkfs.vfat mkfs.xfs mkswap blkid mdadm lvm dmsetup; do
	if p=$(PATH=/usr/sbin:/sbin:$PATH command -v "$t"); then
		# mkfs.ext4 -> mke2fs, mkfs.vfat -> mkfs.fat: the program itself
		# goes in under the name it is called by (mke2fs reads its argv[0]).
		FILES+=(-files "$(readlink -f "$p"):usr/sbin/$t")
		TOOLS+=("$t")
	else
		case $t in mkfs.ext4 | mkfs.vfat | mkswap | blkid) die "$t missing on the build host (apt-get install e2fsprogs dosfstools util-linux)" ;; esac
	fi
done
[[ -f /etc/mke2fs.conf ]] && FILES+=(-files "/etc/mke2fs.conf:etc/mke2fs.conf")
say "tools: ${TOOLS[*]}"

# --- 5. initramfs -------------------------------------------------------------------
# metal-installer is /init (PID 1); gosh, ls, cat, ip and dmesg are for a
# debug shell (metal.shell on the kernel command line).
say "building the initramfs with u-root"
echo "$VERSION" >"$WORK/version"
FILES+=(-files "$WORK/version:etc/metal-installer-version")
"$GO" tool u-root -o "$WORK/initramfs.cpio" -build=bb \
	-initcmd=metal-installer -uinitcmd="" -defaultsh=gosh \
	"${FILES[@]}" \
	github.com/u-root/u-root/cmds/core/gosh \
	github.com/u-root/u-root/cmds/core/ls \
	github.com/u-root/u-root/cmds/core/cat \
	github.com/u-root/u-root/cmds/core/ip \
	github.com/u-root/u-root/cmds/core/dmesg \
	./installer/cmd/metal-installer 2> >(grep -v 'recommended Go versions' >&2)

case $COMPRESS in
gzip) gzip -9 -n -c "$WORK/initramfs.cpio" >"$OUT/initramfs.cpio.gz.tmp" ;;
xz) xz -9 --check=crc32 -c "$WORK/initramfs.cpio" >"$OUT/initramfs.cpio.gz.tmp" ;;
*) die "COMPRESS=$COMPRESS: gzip or xz" ;;
esac
mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
cp "$KERNEL" "$OUT/vmlinuz"
(cd "$OUT" && sha256sum vmlinuz >vmlinuz.sha256 && sha256sum initramfs.cpio.gz >initramfs.cpio.gz.sha256)

# --- 6. report --------------------------------------------------------------------------
size() { stat -c %s "$1"; }
mb() { awk -v b="$1" 'BEGIN{printf "%.1f MB", b/1e6}'; }
say "kernel $KVER: $OUT/vmlinuz $(mb "$(size "$OUT/vmlinuz")")"
say "initramfs: $OUT/initramfs.cpio.gz $(mb "$(size "$OUT/initramfs.cpio.gz")") ($(mb "$(size "$WORK/initramfs.cpio")") uncompressed)"
say "largest parts (uncompressed):"
mkdir -p "$WORK/x" && (cd "$WORK/x" && cpio -idm --quiet <"$WORK/initramfs.cpio")
(cd "$WORK/x" && find . -type f -printf '%s %p\n' | sort -rn | head -8 | awk '{printf "    %7.1f MB  %s\n", $1/1e6, $2}') >&2
LIMIT=25000000
if (($(size "$OUT/initramfs.cpio.gz") > LIMIT)); then
	die "initramfs larger than the 25 MB target"
fi
