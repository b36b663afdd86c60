#!/usr/bin/env bash
# Side-by-side cost of fxn configurations: one node per variant, all running at once on CPU 1
# (the backend and the load generator on CPU 0), measured in turn, round after round, so that
# the machine's drift falls on every variant alike. For each variant it reports the median
# proxy CPU per request at saturation (32 connections, closed loop), and per relayed event and
# the median event delay (500 paced streams). A cost smaller than the spread between rounds is
# not resolved by one run.
#
#   bash benches/e2e/compare.sh NAME=BACKENDS[:CONFIG] ...
#
# BACKENDS is how many backends the variant's one model entry lists (all the same test backend,
# under base paths /r0, /r1, …; policy least_requests); CONFIG is more config.yaml, such as
# 'metrics: {enabled: false}'. Knobs: BENCH_ROUNDS (4), BENCH_DURATION_S (8), BENCH_BODY_BYTES
# (the saturation requests' body, 256; past 65536 it takes the relay path). It measures the
# release binaries in target/release (or $CARGO_TARGET_DIR/release) as they are: build them first
# (`cargo build --release -p fxn-node -p fxn-test-backend -p fxn-bench --bins`).
# FXN_BIN_<NAME> is the `fxn` binary of variant NAME (its name as written: letters, digits, _),
# by default this tree's; the backend and the load generator stay this tree's, so two commits
# are compared on the same load, side by side (the older one must read the variant's config).
# BENCH_INSTRUCTIONS=1 counts instead the instructions each node executes per request, under
# callgrind (repeatable to a few instructions whatever else the machine does, unlike CPU time):
# one connection sends signed requests back to back for BENCH_DURATION_S, with counting on only
# for that window, divided by the requests the node's own fxn_requests_total counted in it. Its
# callgrind.out files are kept in BENCH_CALLGRIND_DIR (default /tmp/fxn-callgrind) for
# callgrind_annotate, which shows where two variants differ.
# Examples, the costs of metrics and of eight backends, of receipts, and a commit against this tree:
#   bash benches/e2e/compare.sh on=1 off=1:'metrics: {enabled: false}' eight=8
#   bash benches/e2e/compare.sh off=1 on=1:'receipts: {enabled: true}'
#   git worktree add /tmp/before COMMIT && (cd /tmp/before && CARGO_TARGET_DIR=target cargo build --release -p fxn-node)
#   FXN_BIN_before=/tmp/before/target/release/fxn bash benches/e2e/compare.sh before=1 after=1
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
ROUNDS=${BENCH_ROUNDS:-4}
DURATION=${BENCH_DURATION_S:-8}
BODY_BYTES=${BENCH_BODY_BYTES:-256}
(($# > 0)) || { sed -n '2,24p' "$0"; exit 2; }
source "$ROOT/benches/e2e/common.sh"
bench_begin fxn-compare
start_backend

declare -A PID PORT METRICS_PORT
CALLGRIND_DIR=${BENCH_CALLGRIND_DIR:-/tmp/fxn-callgrind}
[[ ${BENCH_INSTRUCTIONS:-0} == 1 ]] && mkdir -p "$CALLGRIND_DIR"
NAMES=()
for variant in "$@"; do
    name=${variant%%=*}
    spec=${variant#*=}
    [[ $name =~ ^[A-Za-z0-9_]+$ ]] || { echo "variant name '$name': letters, digits and _ only" >&2; exit 2; }
    fxn_bin_var=FXN_BIN_$name
    fxn_bin=${!fxn_bin_var:-$BIN/fxn}
    [[ -x $fxn_bin ]] || { echo "$fxn_bin_var: $fxn_bin is not an executable" >&2; exit 2; }
    echo "$name: $fxn_bin" >&2
    backends=${spec%%:*}
    extra=""
    [[ $spec == *:* ]] && extra=${spec#*:}
    dir=$WORK/$name
    mkdir -p "$dir"
    PORT[$name]=$(free_port)
    # Each node's metrics on a port of its own, unless the variant sets `metrics` itself.
    if [[ $extra != *metrics:* ]]; then
        METRICS_PORT[$name]=$(free_port)
        extra="metrics: {listenAddress: \"127.0.0.1:${METRICS_PORT[$name]}\"}"$'\n'"$extra"
    fi
    # A key of its own, so that a variant may turn on what needs one (receipts).
    "$BIN/fxn" accounts new --out "$dir/node_key.json" >/dev/null 2>&1
    printf 'node: {listenAddress: "127.0.0.1", listenPort: %s, keyFile: "%s"}\nlogger: {verbosity: "warn"}\nregistry: {static: {gateways: ["%s"]}}\nnonceCache: {maxEntries: 5000000}\n%s\n' \
        "${PORT[$name]}" "$dir/node_key.json" "$SIGNER" "$extra" >"$dir/config.yaml"
    if ((backends == 1)); then
        printf 'models:\n  "fxn/test-model":\n    url: "http://%s"\n' "$BACKEND" >"$dir/model_backend.yaml"
    else
        {
            printf 'models:\n  "fxn/test-model":\n    backends:\n'
            for i in $(seq 0 $((backends - 1))); do printf '      - url: "http://%s/r%s"\n' "$BACKEND" "$i"; done
        } >"$dir/model_backend.yaml"
    fi
    write_server_conf "$dir"
    under=(taskset -c 1)
    [[ ${BENCH_INSTRUCTIONS:-0} == 1 ]] &&
        under+=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$CALLGRIND_DIR/$name.callgrind.out")
    "${under[@]}" "$fxn_bin" start --config "$dir/config.yaml" --model-backend "$dir/model_backend.yaml" \
        -c "$dir/fxn.yaml" >"$dir/fxn.log" 2>&1 &
    PID[$name]=$!
    PIDS+=("$!")
    NAMES+=("$name")
done
sleep 2

if [[ ${BENCH_INSTRUCTIONS:-0} == 1 ]]; then
    requests_counted() {
        curl -s "http://127.0.0.1:${METRICS_PORT[$1]}/metrics" |
            awk '/^fxn_requests_total[{ ]/ { sum += $NF } END { printf "%d\n", sum }'
    }
    # Under callgrind a node starts in seconds, not milliseconds.
    for name in "${NAMES[@]}"; do
        for _ in $(seq 100); do curl -sf "http://127.0.0.1:${PORT[$name]}/health" >/dev/null && break; sleep 0.3; done
    done
    echo "| variant | requests counted | instructions per request |"
    echo "| --- | --- | --- |"
    for name in "${NAMES[@]}"; do
        [[ -n ${METRICS_PORT[$name]:-} ]] || { echo "$name: its config sets metrics itself; not counted" >&2; continue; }
        # Warm the connection pools and caches before counting.
        taskset -c 0 "$BIN/fxn-load" closed --target "127.0.0.1:${PORT[$name]}" --auth sign --duration-s 2 \
            --body-bytes "$BODY_BYTES" >/dev/null
        before=$(requests_counted "$name")
        callgrind_control -i on "${PID[$name]}" >/dev/null
        taskset -c 0 "$BIN/fxn-load" closed --target "127.0.0.1:${PORT[$name]}" --auth sign --duration-s "$DURATION" \
            --body-bytes "$BODY_BYTES" >/dev/null
        callgrind_control -i off "${PID[$name]}" >/dev/null
        requests=$(($(requests_counted "$name") - before))
        kill -INT "${PID[$name]}"
        while kill -0 "${PID[$name]}" 2>/dev/null; do sleep 0.2; done
        out=$CALLGRIND_DIR/$name.callgrind.out
        instructions=$(awk '/^totals:/ { print $2 }' "$out")
        echo "| $name | $requests | $((instructions / requests)) |"
    done
    exit 0
fi

for round in $(seq "$ROUNDS"); do
    for name in "${NAMES[@]}"; do
        common=(--target "127.0.0.1:${PORT[$name]}" --proxy-pid "${PID[$name]}" --auth sign --label "name=$name"
            --label "round=$round")
        taskset -c 0 "$BIN/fxn-load" closed "${common[@]}" --label scenario=saturation --connections 32 \
            --duration-s "$DURATION" --max-rate 15000 --body-bytes "$BODY_BYTES" >>"$RESULTS"
        taskset -c 0 "$BIN/fxn-load" stream "${common[@]}" --label scenario=stream --streams 500 --chunks 150 \
            --interval-ms 20 --ramp-s 1 >>"$RESULTS"
    done
    printf '[%s] round %s of %s done\n' "$(date +%T)" "$round" "$ROUNDS" >&2
done

python3 - "$RESULTS" "${NAMES[@]}" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| variant | CPU/request µs, saturation (median; each round) | CPU/event µs, 500 streams (median; each round) "
      "| event delay p50 µs (median; each round) |")
print("| --- | --- | --- | --- |")
def delay_p50(row):
    return (row.get("event_delay_us") or {}).get("p50")
for name in sys.argv[2:]:
    cells = []
    for scenario, field in (("saturation", lambda r: r.get("cpu_per_request_us")),
                            ("stream", lambda r: r.get("cpu_per_event_us")), ("stream", delay_p50)):
        values = [field(r) for r in rows if r.get("name") == name and r.get("scenario") == scenario and field(r)]
        each = ", ".join(f"{v:.1f}" for v in values)
        cells.append(f"{statistics.median(values):.1f} ({each})" if values else "none")
    print(f"| {name} | {' | '.join(cells)} |")
EOF
