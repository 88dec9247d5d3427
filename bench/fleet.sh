#!/usr/bin/env bash
# Agent fleet scale, for BENCHMARKS.md: propagation latency with 1,000 and
# 10,000 agents (P1), the largest fleet and RSS per stream (P2), and the
# fleet's return after a central restart (P3). metal-central (with its
# embedded PostgreSQL) and the simulated agents run on this machine.
#
# Usage: bash bench/fleet.sh            (about 15 minutes)
#   P2_AGENTS  fleet size for P2 (default 18500: this machine allows 20000 open
#              files per process and cannot raise it; central and the simulator each
#              need one per agent plus their own)
# Raw output goes to bench/results/fleet-<UTC time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/fleet-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
make -s build
lab=bin/metal-lab
{
	echo "date:    $(date -u +%FT%TZ)"
	echo "commit:  $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- || echo ' (dirty tree)')"
	echo "cores:   $(nproc)   memory: $(free -g | awk '/Mem:/ {print $2}') GiB   go: $(go env GOVERSION)"
} | tee "$out/summary.txt"

run() {
	local name=$1
	shift
	echo "== $name: metal-lab fleet $*" | tee -a "$out/summary.txt"
	"$lab" fleet --json "$out/$name.json" "$@" 2> "$out/$name.log" | tee -a "$out/summary.txt"
}

run p1-1k --agents 1000 --rate 50 --duration 30s --restart=false
run p1p3-10k --agents 10000 --rate 50 --duration 30s --restart
run p2 --agents "${P2_AGENTS:-18500}" --rate 10 --duration 10s --settle 150s --restart=false
echo "results in $out"
