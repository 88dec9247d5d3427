#!/usr/bin/env bash
# Boots the lab image for real under QEMU (TCG): a raw disk with a GPT
# (ESP vfat + root ext4) holding the unpacked image, as metal-installer
# would leave it.
#   1. direct kernel boot (-kernel/-initrd from the image, root=UUID=...)
#   2. UEFI disk boot (OVMF -> systemd-boot on the ESP, set up the way
#      installer/internal/boot does it), when OVMF is installed
# Each boot powers off once init ran (metal.lab_poweroff); the time to the
# first line of init is printed.
#
# Usage: lab/image/boot-test.sh [image.tar.zst]   (as root; needs qemu-system-x86,
#        e2fsprogs, dosfstools, fdisk; mtools + ovmf for the UEFI boot)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IMAGE=${1:-$ROOT/build/lab-image/metal-lab-image.tar.zst}
TIMEOUT=${TIMEOUT:-240}
OVMF=${OVMF:-/usr/share/ovmf/OVMF.fd}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'boot-test.sh: %s\n' "$*" >&2; exit 1; }
[[ -f "$IMAGE" ]] || die "no image at $IMAGE (make lab-image)"
for t in qemu-system-x86_64 mkfs.ext4 mkfs.vfat sfdisk; do
	command -v "$t" >/dev/null || die "$t missing (apt-get install qemu-system-x86 e2fsprogs dosfstools fdisk)"
done

W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
if [[ -f "$IMAGE.sha256" ]]; then
	(cd "$(dirname "$IMAGE")" && sha256sum -c --quiet "$(basename "$IMAGE").sha256") || die "checksum mismatch"
fi
mkdir -p "$W/root"
tar -C "$W/root" --zstd -xpf "$IMAGE"
KERNEL=$(ls "$W"/root/boot/vmlinuz-* | head -1)
INITRD=$(ls "$W"/root/boot/initrd.img-* | head -1)
[[ -f "$KERNEL" && -f "$INITRD" ]] || die "image without /boot/vmlinuz-* and /boot/initrd.img-*"

ROOT_UUID=$(cat /proc/sys/kernel/random/uuid)
ESP_ID=$(printf '%08X' $((RANDOM * 65536 + RANDOM)))
ESP_UUID="${ESP_ID:0:4}-${ESP_ID:4:4}"
printf 'UUID=%s / ext4 defaults 0 1\nUUID=%s /boot/efi vfat umask=0077 0 2\n' "$ROOT_UUID" "$ESP_UUID" >"$W/root/etc/fstab"
CMDLINE="root=UUID=$ROOT_UUID rw console=ttyS0,115200 panic=1 metal.lab_poweroff"

# Partitions: ESP 64 MiB at 1 MiB, root 512 MiB after it.
ESP_START=2048 ESP_SECTORS=131072
ROOT_START=$((ESP_START + ESP_SECTORS)) ROOT_SECTORS=1048576
truncate -s $(((ROOT_START + ROOT_SECTORS + 2048) * 512)) "$W/disk.raw"
sfdisk -q "$W/disk.raw" <<EOF
label: gpt
start=$ESP_START, size=$ESP_SECTORS, type=U, name=esp
start=$ROOT_START, size=$ROOT_SECTORS, type=L, name=root
EOF
mkfs.ext4 -q -F -d "$W/root" -U "$ROOT_UUID" -L root "$W/root.img" $((ROOT_SECTORS / 2))k
mkfs.vfat -F 32 -i "$ESP_ID" -n ESP -C "$W/esp.img" $((ESP_SECTORS / 2)) >/dev/null
UEFI=0
if [[ -f "$OVMF" ]] && command -v mcopy >/dev/null; then
	# What boot.SetupDisk writes onto the ESP.
	E=$W/esp && mkdir -p "$E/EFI/BOOT" "$E/EFI/systemd" "$E/metal" "$E/loader/entries"
	cp "$W/root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$E/EFI/BOOT/BOOTX64.EFI"
	cp "$W/root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$E/EFI/systemd/systemd-bootx64.efi"
	cp "$KERNEL" "$E/metal/vmlinuz"
	cp "$INITRD" "$E/metal/initrd.img"
	printf 'default metal.conf\ntimeout 0\nconsole-mode keep\neditor no\n' >"$E/loader/loader.conf"
	printf 'title Metalfleet lab\nlinux /metal/vmlinuz\ninitrd /metal/initrd.img\noptions %s\n' "$CMDLINE" >"$E/loader/entries/metal.conf"
	MTOOLS_SKIP_CHECK=1 mcopy -s -i "$W/esp.img" "$E"/* ::/
	UEFI=1
fi
dd if="$W/esp.img" of="$W/disk.raw" bs=512 seek=$ESP_START conv=notrunc status=none
dd if="$W/root.img" of="$W/disk.raw" bs=512 seek=$ROOT_START conv=notrunc status=none
rm -f "$W/root.img" "$W/esp.img"

# boot NAME QEMU-ARGS...: runs QEMU until it powers off; timestamps the
# serial console; prints when init's first line appeared.
boot() {
	local name=$1 start line t first=""
	shift
	say "boot: $name"
	start=${EPOCHREALTIME/./}
	while IFS= read -r line; do
		line=${line%$'\r'}
		t=$(((${EPOCHREALTIME/./} - start) / 10000))
		printf -v t '%d.%02d' $((t / 100)) $((t % 100))
		printf '[%s] %s\n' "$t" "$line" >>"$W/$name.log"
		case "$line" in
		*"metal-lab: init up"*) [[ -n "$first" ]] || first=$t ;;
		esac
	done < <(timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m 512 -smp 1 -nographic -no-reboot \
		-drive file="$W/disk.raw",if=virtio,format=raw \
		-netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0 "$@" 2>&1)
	grep -E 'metal-lab|Kernel panic|not found|cannot mount' "$W/$name.log" >&2 || true
	if [[ -z "$first" ]]; then
		tail -40 "$W/$name.log" >&2
		die "$name: init did not run"
	fi
	grep -q 'metal-lab: metal-lab ready: eth0 10.0.2.15/24' "$W/$name.log" || { tail -20 "$W/$name.log" >&2; die "$name: no DHCP address on eth0"; }
	say "$name: init ran ${first}s after QEMU started; booted: $(grep -m1 'metal-lab initrd: root' "$W/$name.log" | sed 's/^\[[ 0-9.]*\] //')"
}

boot direct -kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE"
if ((UEFI)); then
	cp "$OVMF" "$W/OVMF.fd"
	boot uefi -drive if=pflash,format=raw,file="$W/OVMF.fd"
else
	say "skipping the UEFI boot: needs $OVMF (apt-get install ovmf) and mcopy (mtools)"
fi
say "lab image boots"
