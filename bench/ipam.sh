#!/usr/bin/env bash
# IPAM throughput, for BENCHMARKS.md: raw single-row INSERTs (pgbench),
# metalfleet's IPAM and go-ipam, at 1 and 64 clients, one after another on one
# throw-away PostgreSQL, so every number comes from the same server, config
# and machine state.
#
# Usage: bash bench/ipam.sh
#   PGBIN          PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#   BENCH_SECONDS  duration of each pgbench and metalfleet measurement (default 15)
#   GOIPAM_OPS     operations per go-ipam measurement (default 500)
# Raw output goes to bench/results/ipam-<UTC time>/.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
secs=${BENCH_SECONDS:-15}
goipam_ops=${GOIPAM_OPS:-500}
out=$root/bench/results/ipam-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/metalfleet-ipam-bench.XXXXXX")
pg_pid=
cleanup() {
	if [[ -n $pg_pid ]] && kill -0 "$pg_pid" 2>/dev/null; then
		kill -INT "$pg_pid" # fast shutdown of the postmaster we started
		for _ in $(seq 300); do
			kill -0 "$pg_pid" 2>/dev/null || break
			sleep 0.1
		done
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

# PostgreSQL refuses to run as root; setpriv execs in place, so $! below is
# the postmaster's own PID.
as_pg=()
if [[ $EUID -eq 0 ]]; then
	as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --)
	chmod 755 "$tmp"
	install -d -o postgres -g postgres -m 700 "$tmp/data" "$tmp/sock"
else
	install -d -m 700 "$tmp/data" "$tmp/sock"
fi

port=
for _ in $(seq 100); do
	p=$((20000 + RANDOM % 40000))
	if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
		port=$p
		break
	fi
done
[[ -n $port ]] || { echo "no free TCP port found" >&2; exit 1; }

"${as_pg[@]}" "$PGBIN/initdb" -D "$tmp/data" -U postgres -A trust -E UTF8 --locale=C >"$out/initdb.log" 2>&1
# Stock settings apart from what the run needs: TCP for go-ipam, and room for
# 64 clients plus the Go pools' spare connections and the admin connections
# that create and drop each benchmark's database.
"${as_pg[@]}" "$PGBIN/postgres" -D "$tmp/data" \
	-c listen_addresses=127.0.0.1 -c port="$port" \
	-c unix_socket_directories="$tmp/sock" -c max_connections=300 \
	>"$out/postgres.log" 2>&1 &
pg_pid=$!
for _ in $(seq 300); do
	"$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres && break
	kill -0 "$pg_pid" 2>/dev/null || { cat "$out/postgres.log" >&2; exit 1; }
	sleep 0.1
done
"$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres

url="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
psql=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres)

{
	echo "date:       $(date -u +%FT%TZ)"
	echo "commit:     $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (dirty tree)')"
	# The tree may have uncommitted changes: fingerprint the code measured.
	echo "ipam code:  sha256 $(cat central/internal/ipam/*.go central/internal/network/*.go central/internal/service/ip.go central/internal/service/network.go central/internal/store/store.go sql/migrations/common/*.sql | sha256sum | cut -c1-12) (ipam/, network/, service/ip.go, service/network.go, store.go, schema)"
	echo "nproc:      $(nproc)"
	echo "cpu:        $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "memory:     $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
	echo "postgres:   $("${psql[@]}" -At -d postgres -c 'SELECT version()')"
	echo "go:         $(go version)"
	echo "settings:   $("${psql[@]}" -At -d postgres -c "SELECT string_agg(name || '=' || setting, ' ') FROM pg_settings WHERE name IN ('fsync','synchronous_commit','full_page_writes','shared_buffers','max_connections','wal_level')")"
} | tee "$out/machine.txt"

# Raw INSERT ceiling: one autocommitted single-row INSERT per
# transaction. Prepared protocol, because pgx prepares its statements too.
"${psql[@]}" -d postgres -c 'CREATE DATABASE raw'
"${psql[@]}" -d raw -c 'CREATE TABLE t (id uuid PRIMARY KEY, v int NOT NULL)'
echo 'INSERT INTO t (id, v) VALUES (gen_random_uuid(), 1);' >"$tmp/insert.sql"
pgbench() {
	"$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -M prepared -f "$tmp/insert.sql" -T "$secs" "$@" raw
}
echo "== pgbench INSERT, 1 client" | tee "$out/pgbench.txt"
pgbench -c 1 -j 1 2>&1 | tee -a "$out/pgbench.txt"
echo "== pgbench INSERT, 64 clients" | tee -a "$out/pgbench.txt"
pgbench -c 64 -j 2 2>&1 | tee -a "$out/pgbench.txt"

# metalfleet, then go-ipam: same benchmark names and prefix sizes.
# go-ipam gets a fixed count instead of a duration: it rewrites the whole
# prefix per allocation, so it slows down as the prefix fills, and the
# testing package's b.N ramp-up would overshoot into many minutes. A short
# run from an empty prefix is its best case.
gobench=(go test -run '^$' -bench '^BenchmarkAcquire' -count 1 -timeout 30m)
echo "== metalfleet" | tee "$out/metalfleet.txt"
METALFLEET_BENCH_DB_URL=$url "${gobench[@]}" -benchtime "${secs}s" ./central/internal/ipam 2>&1 | tee -a "$out/metalfleet.txt"
# The API's own IP and child network allocation (concurrent calls combined
# into shared statements, fallback to the single-call transaction), without
# gRPC: what a client of metalfleet gets.
METALFLEET_BENCH_DB_URL=$url go test -run '^$' -bench '^BenchmarkAllocate(IP|ChildNetwork)$' -count 1 -timeout 30m \
	-benchtime "${secs}s" ./central/internal/service 2>&1 | tee -a "$out/metalfleet.txt"
echo "== go-ipam" | tee "$out/goipam.txt"
(cd bench/goipam && METALFLEET_BENCH_DB_URL=$url GOWORK=off "${gobench[@]}" -benchtime "${goipam_ops}x" . 2>&1) | tee -a "$out/goipam.txt"

# Summary.
tps() { # pgbench block header -> tps
	awk -v h="$1" '$0 == h {f = 1; next} /^==/ {f = 0} f && /^tps = / {printf "%.1f\n", $3; exit}' "$out/pgbench.txt"
}
opss() { # results file, benchmark name -> ops/s
	awk -v n="$2" '$1 ~ "^" n "(-[0-9]+)?$" {for (i = 2; i < NF; i++) if ($(i + 1) == "ops/s") {print $i; exit}}' "$1"
}
raw1=$(tps "== pgbench INSERT, 1 client")
raw64=$(tps "== pgbench INSERT, 64 clients")
# A measurement that produced no number must not read as 0 ops/s.
val() {
	if [[ -n $1 && $1 != 0 && $1 != 0.000000 ]]; then
		echo "$1"
	else
		echo "MISSING"
	fi
}
row() { printf '%-36s %14s %14s\n' "$@"; }
{
	echo
	echo "IPAM throughput, ops/s (pgbench and metalfleet ${secs}s each, go-ipam ${goipam_ops} ops each; one PostgreSQL, $(nproc) cores)"
	row "scenario" "clients=1" "clients=64"
	row "pgbench INSERT (ceiling)" "$(val "$raw1")" "$(val "$raw64")"
	mf() { val "$(opss "$out/metalfleet.txt" "$1")"; }
	gi() { val "$(opss "$out/goipam.txt" "$1")"; }
	row "metalfleet AcquireIP (API)" "$(mf BenchmarkAllocateIP/clients=1)" "$(mf BenchmarkAllocateIP/clients=64)"
	row "metalfleet AcquireIP (tx)" "$(mf BenchmarkAcquireIP/clients=1)" "$(mf BenchmarkAcquireIP/clients=64)"
	row "go-ipam AcquireIP" "$(gi BenchmarkAcquireIP/clients=1)" "$(gi BenchmarkAcquireIP/clients=64)"
	row "metalfleet AcquireChildPrefix (API)" "$(mf BenchmarkAllocateChildNetwork/clients=1)" "$(mf BenchmarkAllocateChildNetwork/clients=64)"
	row "metalfleet AcquireChildPrefix (tx)" "$(mf BenchmarkAcquireChildPrefix/clients=1)" "$(mf BenchmarkAcquireChildPrefix/clients=64)"
	row "go-ipam AcquireChildPrefix" "$(gi BenchmarkAcquireChildPrefix/clients=1)" "$(gi BenchmarkAcquireChildPrefix/clients=64)"
	echo
	echo "(API) = IPService.Allocate / NetworkService.Allocate without gRPC, concurrent calls combined into shared statements;"
	echo "(tx) = one store.Tx per operation: ipam.Acquire + ips INSERT / ipam.Acquire + pool + prefixes row"
	for b in "AcquireIP (API):AllocateIP:AcquireIP" "AcquireIP (tx):AcquireIP:AcquireIP" "AcquireChildPrefix (API):AllocateChildNetwork:AcquireChildPrefix" "AcquireChildPrefix (tx):AcquireChildPrefix:AcquireChildPrefix"; do
		IFS=: read -r name mb gb <<<"$b"
		m=$(val "$(opss "$out/metalfleet.txt" "Benchmark$mb/clients=64")")
		g=$(val "$(opss "$out/goipam.txt" "Benchmark$gb/clients=64")")
		r=$(val "$raw64")
		if [[ $m == MISSING || $g == MISSING || $r == MISSING ]]; then
			echo "$name at 64 clients: cannot compare, a measurement is missing"
			continue
		fi
		awk -v b="$name" -v m="$m" -v g="$g" -v r="$r" 'BEGIN {
			pct = 100 * m / r
			printf "%s at 64 clients: %.1f%% of raw INSERT (target >= 50%%: %s), %.1fx go-ipam\n",
				b, pct, (pct >= 50 ? "MET" : "MISSED"), m / g
		}'
	done
} | tee "$out/summary.txt"
echo "raw output: ${out#"$root"/}"
if grep -q MISSING "$out/summary.txt"; then
	echo "some measurements are missing; see the raw output" >&2
	exit 1
fi
