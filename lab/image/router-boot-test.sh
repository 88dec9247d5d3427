#!/usr/bin/env bash
# Boots the lab's router guest (build/router-image, lab/image/build-router.sh)
# under QEMU TCG and measures it (docs/lab.md "Leaves as QEMU guests:
# measured"):
#   boot    seconds from the QEMU command to "metal-router: <host> up" on the
#           console (Redis, sonic-emu, zebra, bgpd, staticd started)
#   idle    the QEMU process's CPU (utime+stime of /proc/<pid>/stat) over
#           IDLE seconds after boot, as % of one core
#   memory  the QEMU process's VmRSS, and the guest's MemTotal/MemAvailable
# With TEST=1 the guest runs the emulation's tests (lab/internal/sonicemu)
# against its own kernel instead and powers off; the test log is printed.
# With DISK=1 it checks the lab disk (docs/lab.md "The lab disk"): a
# directory of settings made into an ext4 image as the lab makes it
# (mkfs.ext4 -d), booted as /dev/vda; the guest takes its host name,
# port names, CONFIG_DB rows and frr.conf from it, writes what it rendered
# back and powers off; the host reads that back with debugfs.
#
# Environment: IMG (default build/router-image), MEM (MiB, default 384:
# at 256 the 91 MB rootfs leaves the guest too little while it unpacks),
# CONSOLE (copy the console log there), IDLE (seconds, default 30), NICS (virtio NICs, default 2), ACCEL (default
# tcg; tcg,tb-size=64 bounds TCG's translation cache), APPEND (more kernel
# command line: metal.bare starts no daemons, for comparison), TEST, DISK
# (1, or an existing lab disk image to boot with), TEST_RUN (a go test -run
# regexp for TEST=1), TIMEOUT (seconds until the marker, default 300).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IMG=${IMG:-$ROOT/build/router-image}
MEM=${MEM:-384}
IDLE=${IDLE:-30}
NICS=${NICS:-2}
ACCEL=${ACCEL:-tcg}
APPEND=${APPEND:-}
TEST=${TEST:-}
DISK=${DISK:-}
HOST=leaf01
WORK=$(mktemp -d)
QPID=
cleanup() {
	[[ -n "$QPID" ]] && kill "$QPID" 2>/dev/null
	wait 2>/dev/null
	[[ -n "${CONSOLE:-}" ]] && cp "$WORK/console" "$CONSOLE"
	rm -rf "$WORK"
}
trap cleanup EXIT

nics=()
for ((i = 0; i < NICS; i++)); do
	# Unconnected NICs (a socket nobody listens on would fail): a hub port
	# each, so the guest has eth0.. as a leaf has its ports.
	nics+=(-netdev "hubport,id=n$i,hubid=$i" -device "virtio-net-pci,netdev=n$i,mac=52:54:00:12:00:$(printf %02x "$i")")
done
append="console=ttyS0 quiet panic=-1 metal.hostname=leaf01 $APPEND"
[[ -n "$TEST" ]] && append+=" metal.router_test${TEST_RUN:+ metal.test_run=$TEST_RUN}"
disk=()
if [[ "$DISK" == 1 ]]; then
	# The lab disk as the lab makes one: every setting a file, and ones that
	# contradict the kernel command line (metal.hostname=leaf01), which the
	# disk's must win over.
	HOST=lab01
	d=$WORK/disk
	mkdir -p "$d"
	echo "$HOST" >"$d/hostname"
	echo "eth0=Ethernet0,eth1=Ethernet4" >"$d/rename"
	cat >"$d/configdb.txt" <<-'ROWS'
		HSET "PORT|Ethernet0" mtu 9000 admin_status up
		HSET "PORT|Ethernet4" mtu 9000 admin_status up
		HSET "VLAN|Vlan4000" vlanid 4000
		HSET "VLAN_MEMBER|Vlan4000|Ethernet0" tagging_mode untagged
		HSET "VLAN_INTERFACE|Vlan4000" NULL NULL
		HSET "VLAN_INTERFACE|Vlan4000|10.255.0.1/24" NULL NULL
	ROWS
	printf 'frr defaults datacenter\nhostname %s-frr\n!\nrouter bgp 4200000001\n bgp router-id 10.0.0.1\n!\n' "$HOST" >"$d/frr.conf"
	echo off >"$d/lldpd"
	mkfs.ext4 -q -d "$d" -F "$WORK/lab.img" 64M
	DISK=$WORK/lab.img
	append+=" metal.show metal.poweroff"
fi
[[ -n "$DISK" ]] && disk=(-drive "file=$DISK,if=virtio,format=raw")
start=$(date +%s.%N)
qemu-system-x86_64 -accel "$ACCEL" -cpu max -m "$MEM" -smp 1 -display none -monitor none \
	-serial "file:$WORK/console" -no-reboot -kernel "$IMG/vmlinuz" -initrd "$IMG/router.cpio.gz" \
	-append "$append" "${nics[@]}" "${disk[@]}" &
QPID=$!
pattern="metal-router: $HOST up"
[[ -n "$DISK" && "$append" == *metal.poweroff* ]] && pattern='metal-router: poweroff'
[[ -n "$TEST" ]] && pattern='metal-router: test exit'
until grep -q "$pattern" "$WORK/console" 2>/dev/null; do
	kill -0 "$QPID" 2>/dev/null || { cat "$WORK/console"; echo "QEMU exited before $pattern" >&2; exit 1; }
	if (($(echo "$(date +%s.%N) - $start > ${TIMEOUT:-300}" | bc))); then cat "$WORK/console"; echo "timeout" >&2; exit 1; fi
	sleep 0.05
done
up=$(echo "$(date +%s.%N) - $start" | bc)
hz=$(getconf CLK_TCK)
# The CPU QEMU spent to get there: unlike the wall clock, it does not grow
# when other work shares the cores.
upcpu=$(awk -v hz="$hz" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$QPID/stat" 2>/dev/null || echo "?")
if [[ -n "$TEST" ]]; then
	wait "$QPID" || true
	QPID=
	cat "$WORK/console"
	printf 'tests done %.1f s after QEMU started\n' "$up"
	grep -q 'metal-router: test exit 0' "$WORK/console"
	exit
fi
if [[ "$pattern" == *poweroff* ]]; then
	wait "$QPID" || true
	QPID=
	grep -a 'metal-router' "$WORK/console"
	fail() {
		debugfs -R "cat /log/sonic-emu.log" "$DISK" 2>/dev/null | tail -20 >&2
		echo "lab disk: $*" >&2
		exit 1
	}
	grep -q "metal-router: $HOST up" "$WORK/console" || fail "host name $HOST not taken from the disk"
	show=$(debugfs -R 'cat /log/show.txt' "$DISK" 2>/dev/null)
	echo "$show"
	# The rows of configdb.txt rendered: the port renamed from eth0 and in
	# the VLAN, the SVI with its address.
	grep -Eq '^Vlan4000@Bridge +[A-Z]+ +10\.255\.0\.1/24' <<<"$show" || fail "Vlan4000 with 10.255.0.1/24 not in the guest's show.txt"
	grep -Eq '^Ethernet0 ' <<<"$show" || fail "Ethernet0 (renamed from eth0) missing"
	grep -q "hostname $HOST-frr" <<<"$show" || fail "FRR did not run the disk's frr.conf"
	debugfs -R 'ls -l /log' "$DISK" 2>/dev/null | grep -q 'sonic-emu.log' || fail "no /log/sonic-emu.log written back"
	# The ports' state the emulation wrote into APPL_DB (hub ports have a
	# carrier: both up).
	appl=$(debugfs -R 'cat /log/appl_db.txt' "$DISK" 2>/dev/null)
	echo "$appl"
	for p in Ethernet0 Ethernet4; do
		grep -Eq "^PORT_TABLE:$p .*oper_status up" <<<"$appl" || fail "APPL_DB PORT_TABLE:$p not oper_status up"
	done
	echo "lab disk: OK (host name, CONFIG_DB rows rendered, frr.conf, logs written back)"
	exit 0
fi
grep 'metal-router' "$WORK/console"
printf 'boot: %.2f s from the QEMU command to "%s" (QEMU used %s s of CPU by then; load average %s)\n' "$up" "$pattern" "$upcpu" "$(cut -d' ' -f1 /proc/loadavg)"
ticks() { awk '{print $14 + $15}' "/proc/$QPID/stat"; }
# Let the daemons settle first (rcS prints the guest's memory 5 s after up).
for _ in $(seq 200); do grep -q 'metal-router: memory' "$WORK/console" && break; sleep 0.05; done
grep 'metal-router: memory' "$WORK/console" || true
t0=$(ticks); s0=$(date +%s.%N)
sleep "$IDLE"
t1=$(ticks); s1=$(date +%s.%N)
echo "idle: $(echo "scale=2; ($t1 - $t0) * 100 / $hz / ($s1 - $s0)" | bc) % of one core over ${IDLE} s (QEMU pid $QPID, utime+stime)"
# The guest's own account of its idle time per process (rcS, 30 s).
for _ in $(seq 200); do grep -q 'metal-router: ticks after' "$WORK/console" && break; sleep 0.05; done
grep -a 'metal-router: ticks' "$WORK/console" || true
echo "memory: QEMU VmRSS $(awk '/VmRSS/{print $2, $3}' "/proc/$QPID/status") with -m $MEM"
