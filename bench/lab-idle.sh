#!/usr/bin/env bash
# The idle CPU of a lab that is up: every process the lab started
# (state.json) with all its descendants, over SECS seconds (default 60),
# as a share of one core. Run it alone on the machine, after the lab
# settled (machines Waiting, nothing being allocated).
#
#   bash bench/lab-idle.sh /var/lib/metalfleet/lab/fab/state.json
set -euo pipefail
STATE=${1:?usage: lab-idle.sh STATE_JSON}
SECS=${SECS:-60}

python3 - "$STATE" "$SECS" <<'EOF'
import json, os, sys, time

state, secs = sys.argv[1], float(sys.argv[2])
hz = os.sysconf("SC_CLK_TCK")
roots = {p["pid"]: p["name"] for p in json.load(open(state))["procs"] or []}

def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    # comm may hold spaces: the fields after it start at the last ')'.
    rest = s[s.rindex(")") + 2:].split()
    return int(rest[1]), int(rest[11]) + int(rest[12])  # ppid, utime+stime

def sample():
    """CPU ticks per lab process, its descendants added to it."""
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = stat(int(d))
            if st:
                procs[int(d)] = st
    out = {}
    for pid in procs:
        p, owner = pid, None
        while p in procs and p > 1:
            if p in roots:
                owner = roots[p]
                break
            p = procs[p][0]
        if owner:
            out[(owner, pid)] = procs[pid][1]
    return out

a, t0 = sample(), time.monotonic()
time.sleep(secs)
b, t1 = sample(), time.monotonic()
per = {}
for key, ticks in b.items():
    per[key[0]] = per.get(key[0], 0) + ticks - a.get(key, 0)
wall = t1 - t0
total = 0.0
print(f"idle CPU over {wall:.0f} s (% of one core)")
for name in sorted(per, key=lambda n: -per[n]):
    pct = 100 * per[name] / hz / wall
    total += pct
    print(f"  {name:24s} {pct:6.2f} %")
print(f"  {'total':24s} {total:6.2f} %")
EOF
