#!/usr/bin/env bash
# A valid gateway's throughput under a bad-signature flood, with the failed-authentication budget
# (limits.authFailures) on and off. Two nodes, one per variant, both on CPU 1 (one worker
# thread each); the backend, the valid load (from 127.0.0.1) and the flood (from 127.0.0.2, the
# registered gateway's address signed over another body, so each costs the node a signature
# check until the budget refuses the address) on CPU 0, the flood at nice 19 so that it takes
# what CPU 0 leaves rather than starve the valid load. For each variant and round: the valid
# closed-loop rate alone, then with the flood running. Prints one line per run and a table of
# medians.
#
#   bash benches/e2e/flood.sh
#
# Knobs: BENCH_ROUNDS (3), BENCH_DURATION_S (5), BENCH_VALID_CONNECTIONS (8),
# BENCH_FLOOD_CONNECTIONS (32). It measures the release binaries in target/release as they are:
# build them first (`cargo build --release -p fxn-node -p fxn-test-backend -p fxn-bench --bins`).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION_S:-5}
VALID_CONNECTIONS=${BENCH_VALID_CONNECTIONS:-8}
FLOOD_CONNECTIONS=${BENCH_FLOOD_CONNECTIONS:-32}
source "$ROOT/benches/e2e/common.sh"
bench_begin fxn-flood
start_backend

declare -A PID PORT
start_fxn() { # name, limits
    local dir=$WORK/$1
    mkdir -p "$dir"
    PORT[$1]=$(free_port)
    cat >"$dir/config.yaml" <<CONF
node: {listenAddress: "127.0.0.1", listenPort: ${PORT[$1]}}
logger: {verbosity: "warn"}
registry: {static: {gateways: ["$SIGNER"]}}
nonceCache: {maxEntries: 5000000}
limits: $2
CONF
    start_single_backend_node "$1"
}
start_fxn budget_on "{authFailures: {enabled: true}}"
start_fxn budget_off "{authFailures: {enabled: false}}"

valid() { # variant, flooded
    taskset -c 0 "$BIN/fxn-load" closed --target "127.0.0.1:${PORT[$1]}" --auth sign --proxy-pid "${PID[$1]}" \
        --connections "$VALID_CONNECTIONS" --duration-s "$DURATION" --max-rate 15000 \
        --label "variant=$1" --label "flooded=$2" --label "round=$round" >>"$RESULTS"
}
for round in $(seq "$ROUNDS"); do
    for variant in budget_on budget_off; do
        valid "$variant" no
        # The flood starts first and outlasts the valid run, which signs its requests before it starts.
        taskset -c 0 nice -n 19 "$BIN/fxn-load" flood --target "127.0.0.1:${PORT[$variant]}" --source 127.0.0.2 --auth forged \
            --connections "$FLOOD_CONNECTIONS" --duration-s "$((DURATION * 3))" \
            --label "variant=$variant" --label "round=$round" >>"$RESULTS" &
        flood=$!
        sleep 1
        valid "$variant" yes
        wait "$flood"
        log "round $round, $variant done"
    done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for r in rows:
    if r["mode"] == "flood":
        print(f"  flood  {r['variant']:10} round {r['round']}: {r['rps']:8.0f} answers/s {r['statuses']} {r.get('first_error') or ''}")
    else:
        print(f"  valid  {r['variant']:10} round {r['round']} flooded={r['flooded']:3}: {r['rps']:8.0f} req/s, "
              f"{r['errors']} errors, node CPU {r['cpu_per_request_us'] or 0:.0f} µs/req")
def med(variant, mode, flooded=None, field="rps"):
    return statistics.median(r[field] for r in rows if r["variant"] == variant and r["mode"] == mode
                             and (flooded is None or r.get("flooded") == flooded))
print()
print("| failure budget | valid req/s alone | valid req/s flooded | flooded / alone | flood answers/s |")
print("| --- | --- | --- | --- | --- |")
for variant, name in (("budget_on", "on (default)"), ("budget_off", "off")):
    alone, flooded = med(variant, "closed", "no"), med(variant, "closed", "yes")
    print(f"| {name} | {alone:.0f} | {flooded:.0f} | {flooded / alone:.2f} | {med(variant, 'flood'):.0f} |")
PY
