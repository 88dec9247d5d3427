# Shared by installer/build/build.sh and lab/image/build.sh (sourced).
# Needs: ROOT, WORK; uses CACHE (default $ROOT/.cache/installer).

say() { printf '==> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# fetch_kernel sets KVER, KERNEL (vmlinuz) and MODULES (lib/modules/<KVER>):
# the operator's (KERNEL= and MODULES= given) or Debian's
# linux-image-cloud-amd64, taken out of its .deb without installing it and
# cached in $CACHE.
fetch_kernel() {
	local cache=${CACHE:-$ROOT/.cache/installer} pkg kdir deb
	if [[ -n "${KERNEL:-}" || -n "${MODULES:-}" ]]; then
		[[ -f "${KERNEL:-}" && -d "${MODULES:-}" ]] || die "KERNEL must be a file and MODULES a lib/modules/<version> directory"
		KVER=$(basename "$MODULES")
		return
	fi
	command -v apt-cache >/dev/null || die "apt-cache missing: give KERNEL= and MODULES="
	pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
	[[ -n "$pkg" ]] || die "cannot resolve linux-image-cloud-amd64 (run apt-get update)"
	KVER=${pkg#linux-image-}
	kdir=$cache/$pkg
	if [[ ! -f "$kdir/boot/vmlinuz-$KVER" ]]; then
		mkdir -p "$cache/debs"
		deb=$(ls "$cache"/debs/"${pkg}"_*.deb 2>/dev/null | head -1 || true)
		if [[ -z "$deb" ]]; then
			say "downloading $pkg"
			(cd "$cache/debs" && apt-get download "$pkg" 2>&1 | grep -v 'unsandboxed' >&2 || true)
			deb=$(ls "$cache"/debs/"${pkg}"_*.deb 2>/dev/null | head -1 || true)
			[[ -n "$deb" ]] || die "apt-get download $pkg failed"
		fi
		rm -rf "$kdir.tmp" && mkdir -p "$kdir.tmp"
		dpkg-deb -x "$deb" "$kdir.tmp"
		rm -rf "$kdir" && mv "$kdir.tmp" "$kdir"
	else
		say "kernel $pkg from the cache ($kdir)"
	fi
	KERNEL=$kdir/boot/vmlinuz-$KVER
	MODULES=$kdir/lib/modules/$KVER
	[[ -d "$MODULES" ]] || MODULES=$kdir/usr/lib/modules/$KVER
	[[ -f "$KERNEL" && -d "$MODULES" ]] || die "no vmlinuz or modules in $kdir"
}

# select_modules OUTDIR NAME... copies the named modules that exist in
# $MODULES (decompressed) and everything they depend on into OUTDIR, and
# writes OUTDIR/load.order in dependency order (from each module's own
# "depends=" in .modinfo: the .deb has no modules.dep, depmod never ran).
# Names built into the kernel are skipped silently, names in neither place
# are reported. Sets MODS_LOADED and MODS_MISSING.
select_modules() {
	local out=$1 n f d
	shift
	mkdir -p "$out"
	declare -gA _KO=() _BUILTIN=() _DONE=()
	MODS_LOADED=() MODS_MISSING=()
	while IFS= read -r f; do
		n=$(basename "$f"); n=${n%%.ko*}; _KO[${n//-/_}]=$f
	done < <(find "$MODULES" \( -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz' \))
	if [[ -f "$MODULES/modules.builtin" ]]; then
		while IFS= read -r f; do
			n=$(basename "$f"); n=${n%.ko}; _BUILTIN[${n//-/_}]=1
		done <"$MODULES/modules.builtin"
	fi
	_visit() {
		local n=$1 src dst d
		[[ -n "${_DONE[$n]:-}" ]] && return
		_DONE[$n]=1
		src=${_KO[$n]:-}
		[[ -n "$src" ]] || return 0
		dst=$out/$n.ko
		case "$src" in
		*.xz) xz -dc "$src" >"$dst" ;;
		*.zst) zstd -qdc "$src" >"$dst" ;;
		*.gz) gzip -dc "$src" >"$dst" ;;
		*) cp "$src" "$dst" ;;
		esac
		for d in $(grep -a -o 'depends=[A-Za-z0-9_,-]*' "$dst" | head -1 | cut -d= -f2 | tr ',-' ' _'); do
			_visit "$d"
		done
		MODS_LOADED+=("$n")
	}
	for n in "$@"; do
		n=${n//-/_}
		if [[ -n "${_KO[$n]:-}" ]]; then
			_visit "$n"
		elif [[ -z "${_BUILTIN[$n]:-}" ]]; then
			MODS_MISSING+=("$n")
		fi
	done
	{
		echo "# kernel $KVER: modules in dependency order (one file per line)"
		for n in "${MODS_LOADED[@]}"; do echo "$n.ko"; done
	} >"$out/load.order"
}
