#!/usr/bin/env bash
# Builds the lab's router guest (docs/lab.md "Leaves as QEMU guests"): a
# Debian cloud kernel and one initramfs that holds a whole leaf — busybox,
# iproute2, redis-server (CONFIG_DB), FRR (zebra, bgpd, staticd, vtysh),
# lldpd, ISC's dhcrelay, sonic-emu (the lab's SONiC emulation) and
# metal-core — booted directly with QEMU's -kernel/-initrd; an optional
# ext4 lab disk (/dev/vda) carries its settings and keeps its logs:
#   build/router-image/vmlinuz
#   build/router-image/router.cpio.gz (+ .sha256)
#
# Everything comes from Debian packages (apt-get download, dpkg-deb -x;
# nothing is installed on the build host). The shared libraries of the
# ELF files taken from them are found with ldd, mapped to their Debian
# package with dpkg -S and copied out of that package's .deb, so the
# build host must have the same packages installed (make deps does).
#
# Environment: OUT (default build/router-image), CACHE (kernel, shared with
# the installer and lab image builds), DEBS (downloaded .debs), SONIC_EMU,
# METAL_CORE (the binaries; default bin/), TEST_BIN (a `go test -c` binary
# of lab/internal/sonicemu, run by the guest when the kernel command line
# has metal.router_test), SOURCE_DATE_EPOCH.
#
# Reproducible like the lab image: names sorted, owners root, mtimes
# SOURCE_DATE_EPOCH, cpio --reproducible, gzip -n.
set -euo pipefail
umask 022

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/lab/image
OUT=${OUT:-$ROOT/build/router-image}
CACHE=${CACHE:-$ROOT/.cache/installer}
DEBS=${DEBS:-$ROOT/.cache/lab-image}
SONIC_EMU=${SONIC_EMU:-$ROOT/bin/sonic-emu}
METAL_CORE=${METAL_CORE:-$ROOT/bin/metal-core}
TEST_BIN=${TEST_BIN:-}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct -- lab/image/build-router.sh lab/image/router installer/build/lib.sh 2>/dev/null || true)}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
export SOURCE_DATE_EPOCH

# shellcheck source=installer/build/lib.sh
source "$ROOT/installer/build/lib.sh"
for tool in dpkg-deb dpkg cpio gzip ldd apt-get strip; do
	command -v "$tool" >/dev/null || die "$tool missing"
done
[[ -x "$SONIC_EMU" && -x "$METAL_CORE" ]] || die "build sonic-emu and metal-core first (make build): $SONIC_EMU $METAL_CORE"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT" "$DEBS"

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
unpack() { # unpack PACKAGE -> directory holding its files
	local d=$WORK/pkg/$1
	if [[ ! -d "$d" ]]; then
		mkdir -p "$d"
		dpkg-deb -x "$(deb "$1")" "$d"
	fi
	echo "$d"
}

R=$WORK/root
mkdir -p "$R"/{bin,sbin,etc,dev,proc,sys,run,tmp,var/tmp,root,var/lib,var/log,usr/bin,usr/sbin,usr/local/bin,lib/modules,lib64,usr/lib/x86_64-linux-gnu}
chmod 1777 "$R/tmp" "$R/var/tmp"
ln -s ../run "$R/var/run"
ln -s usr/lib/x86_64-linux-gnu "$R/lib/x86_64-linux-gnu"

# --- busybox ----------------------------------------------------------------------------
BUSYBOX=$(unpack busybox-static)/bin/busybox
install -m 0755 "$BUSYBOX" "$R/bin/busybox"
while IFS= read -r a; do
	[[ "$a" == bin/busybox || -e "$R/$a" || -L "$R/$a" ]] && continue
	mkdir -p "$R/$(dirname "$a")"
	ln -s /bin/busybox "$R/$a"
done < <("$BUSYBOX" --list-full)
# busybox's ip has no vrf, vxlan or bridge vlan: iproute2's replaces it.
rm -f "$R/sbin/ip" "$R/bin/ip" "$R/sbin/bridge"
ln -s sbin/init "$R/init"

# --- ELF files from packages, with their libraries ------------------------------------
# libpkg LIBPATH -> the Debian package that ships it.
libpkg() {
	local p=$1 q
	for q in "$p" "${p#/usr}" "/usr$p" "$(readlink -f "$p")" "$(readlink -f "$p" | sed 's,^/usr,,')"; do
		dpkg -S "$q" 2>/dev/null | head -1 | cut -d: -f1 && return 0
	done
	return 1
}
declare -A LIBDONE=()
# take PKG SRC [DST]: copy SRC (a path inside PKG) to DST in the root and
# every library it needs, each from its own package.
take() {
	local pkg=$1 src=$2 dst=${3:-$2} dir lib path lpkg ldir f
	# ldd lists every library, those of the libraries included.
	dir=$(unpack "$pkg")
	[[ -e "$dir$src" ]] || die "$pkg has no $src"
	mkdir -p "$R$(dirname "$dst")"
	cp -L "$dir$src" "$R$dst"
	[[ "$(head -c4 "$R$dst" | tail -c3)" == ELF ]] || return 0
	while read -r lib path; do
		[[ -n "$path" ]] || continue
		[[ "$path" == "not" ]] && die "$src: library $lib not found on the build host (install $pkg)"
		[[ -n "${LIBDONE[$lib]:-}" ]] && continue
		LIBDONE[$lib]=1
		if [[ "$path" == "$dir"/* ]]; then
			# A library of the package itself (liblldpctl of lldpd).
			install -D -m 0755 "$(readlink -f "$path")" "$R/usr/lib/x86_64-linux-gnu/$lib"
			continue
		fi
		lpkg=$(libpkg "$path") || die "no Debian package ships $path ($src)"
		ldir=$(unpack "$lpkg")
		f=$(find "$ldir" -name "$lib" \( -type f -o -type l \) | head -1)
		[[ -n "$f" ]] || die "$lpkg has no $lib"
		install -D -m 0755 "$(readlink -f "$f")" "$R/usr/lib/x86_64-linux-gnu/$lib"
	done < <(LD_LIBRARY_PATH=$dir/usr/lib/x86_64-linux-gnu:$dir/usr/lib/x86_64-linux-gnu/frr ldd "$R$dst" 2>/dev/null | awk '/=>/{print $1, $3} /ld-linux/{print "ld-linux-x86-64.so.2", $1}')
}
# The dynamic loader: libc6's, where every binary looks for it.
LIBC=$(unpack libc6)
install -m 0755 "$(readlink -f "$(find "$LIBC" -name 'ld-linux-x86-64.so.2' | head -1)")" "$R/lib64/ld-linux-x86-64.so.2"
LIBDONE[ld-linux-x86-64.so.2]=1

take iproute2 /bin/ip /sbin/ip
take iproute2 /sbin/bridge /sbin/bridge
mkdir -p "$R/etc/iproute2"
cp -a "$(unpack iproute2)/etc/iproute2/." "$R/etc/iproute2/" 2>/dev/null || cp -a "$(unpack iproute2)/usr/share/iproute2/." "$R/etc/iproute2/"
take redis-tools /usr/bin/redis-check-rdb /usr/bin/redis-server
take redis-tools /usr/bin/redis-cli
for d in zebra bgpd staticd; do take frr /usr/lib/frr/$d; done
# SONiC runs zebra and bgpd with FRR's SNMP module (-M snmp), and its
# frr.conf (metal-core's) says `agentx`: a daemon without the module
# refuses that line and every frr-reload.py fails.
for d in zebra bgpd; do take frr-snmp /usr/lib/x86_64-linux-gnu/frr/modules/${d}_snmp.so; done
take frr /usr/bin/vtysh
# LLDP as SONiC's lldp container: lldpd, and lldpcli, which configures it
# and which sonic-emu reads the neighbours from.
take lldpd /usr/sbin/lldpd
take lldpd /usr/sbin/lldpcli
# lldpcli links libxml2 (for -f xml), which links ICU, whose
# libicudata.so.72 is 31 MB of locale tables — half the image again.
# Nothing the guest runs converts text with ICU (lldpcli prints JSON), so
# a stub with the one symbol libicuuc needs to load stands in for it
# (docs/lab.md). Without a C compiler the real one stays.
if [[ -f "$R/usr/lib/x86_64-linux-gnu/libicudata.so.72" ]] && command -v cc >/dev/null; then
	printf '/* stands in for ICU data the router guest never reads */\n__attribute__((aligned(16))) const unsigned char icudt72_dat[32];\n' >"$WORK/icustub.c"
	cc -shared -fPIC -O2 -s -Wl,-soname,libicudata.so.72 -Wl,--build-id=none -o "$R/usr/lib/x86_64-linux-gnu/libicudata.so.72" "$WORK/icustub.c"
	say "libicudata.so.72: a stub (lldpcli never uses ICU)"
fi
# DHCP relay, as SONiC's dhcp_relay container: sonic-emu runs it per VLAN.
take isc-dhcp-relay /usr/sbin/dhcrelay

# FRR's own reload, frr-reload.py (metal-core's default --frr-reload), with
# Debian's python3.11 and the part of its standard library the script
# imports: found by running it on the build host (-X importtime, --test
# against two files; isolated, so nothing of the host's site-packages),
# each module copied out of its package and compiled (unchecked-hash .pyc:
# no mtimes, reproducible). FRR_RELOAD_PY=0 leaves Python out (docs/lab.md
# has what it costs).
if [[ "${FRR_RELOAD_PY:-1}" == 1 ]]; then
	PY=/usr/bin/python3.11
	[[ -x "$PY" ]] || die "$PY missing on the build host (make deps: python3-minimal)"
	take python3.11-minimal /usr/bin/python3.11
	ln -sf python3.11 "$R/usr/bin/python3"
	take frr-pythontools /usr/lib/frr/frr-reload.py
	chmod 0755 "$R/usr/lib/frr/frr-reload.py"
	mkdir -p "$WORK/frr-reload" "$R/usr/lib/python3.11/lib-dynload"
	printf 'frr defaults datacenter\n!\nrouter bgp 65000\n!\nrouter bgp 65000 vrf Vrf1\n!\n' >"$WORK/frr-reload/running.conf"
	printf 'frr defaults datacenter\n!\nrouter bgp 65000\n!\nrouter bgp 65000 vrf Vrf2\n!\n' >"$WORK/frr-reload/new.conf"
	(cd "$WORK/frr-reload" && "$PY" -I -X importtime /usr/lib/frr/frr-reload.py --test --input running.conf new.conf >/dev/null 2>imports.txt) ||
		die "frr-reload.py --test failed on the build host: $(tail -3 "$WORK/frr-reload/imports.txt")"
	# os.py is Python's landmark of its library (frozen, but looked for).
	n=0
	while IFS= read -r f; do
		take "$(libpkg "$f")" "$f"
		n=$((n + 1))
	done < <(awk -F'|' '/^import time:/ && !/self \[us\]/ {gsub(/ /, "", $3); print $3}' "$WORK/frr-reload/imports.txt" |
		"$PY" -I -c '
import sys, importlib.util
out = {"/usr/lib/python3.11/os.py"}
for name in sys.stdin.read().split():
    try:
        spec = importlib.util.find_spec(name)
    except Exception:
        continue
    if spec and spec.origin and spec.origin.startswith("/usr/lib/python3.11/"):
        out.add(spec.origin)
print("\n".join(sorted(out)))')
	PYTHONHASHSEED=0 "$PY" -I -m compileall -q --invalidation-mode unchecked-hash -s "$R" -p / "$R/usr/lib/python3.11" >/dev/null
	say "frr-reload.py with python3.11 and $n of its modules"
fi

install -m 0755 "$SONIC_EMU" "$R/usr/local/bin/sonic-emu"
install -m 0755 "$METAL_CORE" "$R/usr/local/bin/metal-core"
# Symbols and debug info are two thirds of it and the guest never needs it.
strip "$R/usr/local/bin/metal-core"
# metal-core may be linked against libc (cgo): its libraries too.
while read -r lib path; do
	[[ -z "$path" || -n "${LIBDONE[$lib]:-}" ]] && continue
	LIBDONE[$lib]=1
	lpkg=$(libpkg "$path") || die "no package ships $path"
	f=$(find "$(unpack "$lpkg")" -name "$lib" | head -1)
	install -D -m 0755 "$(readlink -f "$f")" "$R/usr/lib/x86_64-linux-gnu/$lib"
done < <(ldd "$METAL_CORE" 2>/dev/null | awk '/=>/{print $1, $3}')
if [[ -n "$TEST_BIN" ]]; then
	install -m 0755 "$TEST_BIN" "$R/usr/local/bin/sonicemu.test"
	# Its golden files, read from the working directory.
	mkdir -p "$R/usr/local/share/sonicemu"
	cp -a "$ROOT/lab/internal/sonicemu/testdata" "$R/usr/local/share/sonicemu/"
fi

# --- kernel modules ------------------------------------------------------------------------
select_modules "$R/lib/modules" virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
	failover net_failover virtio_net virtio_rng \
	llc stp garp mrp 8021q bridge udp_tunnel ip6_udp_tunnel vxlan vrf dummy veth \
	virtio_blk crc16 mbcache jbd2 crc32c_generic libcrc32c ext4
say "modules (${#MODS_LOADED[@]}): ${MODS_LOADED[*]}"
[[ ${#MODS_MISSING[@]} == 0 ]] || die "modules missing from $KVER: ${MODS_MISSING[*]}"

# --- configuration -------------------------------------------------------------------------
cp -a "$HERE/router/." "$R/"
printf 'root::0:0:root:/root:/bin/sh\nfrr:x:100:101:frr:/run/frr:/bin/false\nredis:x:101:102:redis:/var/lib/redis:/bin/false\n_lldpd:x:102:104:lldpd:/run/lldpd:/bin/false\n' >"$R/etc/passwd"
printf 'root:x:0:\nfrr:x:101:frr\nfrrvty:x:102:frr\nredis:x:103:\n_lldpd:x:104:\n' >"$R/etc/group"
ln -s sonic/frr "$R/etc/frr"
cat >"$R/etc/os-release" <<OS
NAME="Metalfleet lab router"
ID=metalfleet-lab-router
ID_LIKE=debian
PRETTY_NAME="Metalfleet lab router (busybox, iproute2, redis, FRR $(dpkg-deb -f "$(deb frr)" Version), Linux $KVER)"
OS

# --- pack ----------------------------------------------------------------------------------------
find "$R" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$R" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --reproducible --quiet) | gzip -6 -n >"$OUT/router.cpio.gz.tmp"
mv "$OUT/router.cpio.gz.tmp" "$OUT/router.cpio.gz"
install -m 0644 "$KERNEL" "$OUT/vmlinuz"
(cd "$OUT" && sha256sum router.cpio.gz vmlinuz >router.sha256)
say "$OUT/router.cpio.gz: $(awk -v b="$(stat -c %s "$OUT/router.cpio.gz")" 'BEGIN{printf "%.1f MB", b/1e6}') (unpacked $(du -sh --apparent-size "$R" | cut -f1)), sha256 $(sha256sum "$OUT/router.cpio.gz" | cut -c1-16)"
