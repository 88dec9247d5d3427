#!/usr/bin/env bash
# Boots build/installer/{vmlinuz,initramfs.cpio.gz} once under QEMU (TCG)
# with a central that cannot be reached, and checks on the serial console
# that the modules load, the facts are collected (UUID, disk, NIC), DHCP
# gives an address and the installer says clearly that central is
# unreachable. Prints the time to the installer's first log line.
#
# Usage: installer/build/boot-test.sh   (needs qemu-system-x86)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIR=${DIR:-$ROOT/build/installer}
TIMEOUT=${TIMEOUT:-120}
UUID=${UUID:-8d3f6a2e-5b1c-4e7a-9c0d-1f2e3a4b5c6d}

die() { printf 'boot-test.sh: %s\n' "$*" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (apt-get install qemu-system-x86)"
[[ -f "$DIR/vmlinuz" && -f "$DIR/initramfs.cpio.gz" ]] || die "no installer in $DIR (make installer-image)"

W=$(mktemp -d)
QPID=
cleanup() {
	[[ -n "$QPID" ]] && kill "$QPID" 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT
truncate -s 2G "$W/disk.raw"
LOG=$W/serial.log

# metal.plaintext: no CA pin, so that the installer gets as far as dialing
# central (127.0.0.1:1, which nothing answers).
CMDLINE="console=ttyS0 panic=1 metal.central=127.0.0.1:1 metal.partition=p metal.plaintext=1 metal.boot_token=boot-test"
start=${EPOCHREALTIME/./}
coproc QEMU { exec timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m 1024 -nographic -no-reboot \
	-kernel "$DIR/vmlinuz" -initrd "$DIR/initramfs.cpio.gz" -append "$CMDLINE" \
	-smbios type=1,uuid="$UUID" \
	-netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56 \
	-drive file="$W/disk.raw",if=virtio,format=raw 2>&1; }
QPID=$QEMU_PID
first="" done=""
while IFS= read -r line <&"${QEMU[0]}"; do
	line=${line%$'\r'}
	t=$(((${EPOCHREALTIME/./} - start) / 10000))
	printf -v t '%d.%02d' $((t / 100)) $((t % 100))
	printf '[%6s] %s\n' "$t" "$line" >>"$LOG"
	case "$line" in
	*"metal-installer up"*) first=$t ;;
	*"central unreachable"*)
		done=$t
		break
		;;
	esac
done
kill "$QPID" 2>/dev/null || true
wait "$QPID" 2>/dev/null || true
QPID=

grep -E 'metal-installer|msg=machine|network up|central unreachable|level=(WARN|ERROR)|Kernel panic' "$LOG" | cut -c1-400 >&2 || true
check() { grep -qE "$1" "$LOG" || { tail -30 "$LOG" >&2; die "$2"; }; }
check 'metal-installer up.*modules=[1-9]' "modules not loaded"
check "msg=machine uuid=$UUID" "DMI UUID not collected"
check 'msg=machine .*disks=vda\(2147MB\)' "disk not collected"
check 'msg=machine .*nics="?eth0=52:54:00:12:34:56' "NIC not collected"
check 'msg="network up" interface=eth0 .*address=10.0.2.15/24' "no DHCP lease"
[[ -n "$done" ]] || die "no 'central unreachable' line within ${TIMEOUT}s"
echo "installer: first log line ${first}s after QEMU started; 'central unreachable' at ${done}s" >&2
