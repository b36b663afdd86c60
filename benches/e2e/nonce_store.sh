#!/usr/bin/env bash
# What the shared nonce store costs: fxn with nonceCache.backend memory against redis, at 1 and
# 32 requests in flight, beside one loopback Redis round trip (redis-benchmark, same run).
# Placement B: each fxn alone on CPU 1; backend, Redis and the load generator on CPU 0.
# Writes benches/NONCE_STORE.md. Knobs: BENCH_DURATION_S (5), BENCH_ROUNDS (3).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=$ROOT/target/release
DURATION=${BENCH_DURATION_S:-5}
ROUNDS=${BENCH_ROUNDS:-3}
OUT=$ROOT/benches/NONCE_STORE.md
source "$ROOT/benches/e2e/common.sh"
bench_begin fxn-nonce-bench

command -v redis-server >/dev/null || {
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null
}
command -v cmake >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q cmake >/dev/null
log "building release binaries"
(cd "$ROOT" && cargo build --locked --release -q -p fxn-node -p fxn-test-backend -p fxn-bench --bins)

REDIS_PORT=$(free_port)
taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$REDIS_PORT"
start_backend

declare -A PORT PID
start_fxn() { # store
    local dir=$WORK/$1 nonce_cache="nonceCache: {maxEntries: 5000000}"
    mkdir -p "$dir"
    PORT[$1]=$(free_port)
    [[ $1 == redis ]] && nonce_cache="nonceCache: {backend: redis, redis: {url: \"redis://127.0.0.1:$REDIS_PORT\"}}"
    cat >"$dir/config.yaml" <<CONF
node: {listenAddress: "127.0.0.1", listenPort: ${PORT[$1]}}
logger: {verbosity: "warn"}
registry: {static: {gateways: ["$SIGNER"]}}
$nonce_cache
CONF
    start_single_backend_node "$1"
}
start_fxn memory
start_fxn redis

RESULTS=$WORK/results.jsonl
for round in $(seq "$ROUNDS"); do
    for connections in 1 32; do
        for store in memory redis; do
            taskset -c 0 "$BIN/fxn-load" closed --target "127.0.0.1:${PORT[$store]}" --auth sign --backend "$BACKEND" \
                --proxy-pid "${PID[$store]}" --path /v1/chat/completions --body-bytes 256 \
                --connections "$connections" --duration-s "$DURATION" --max-rate 18000 \
                --label "store=$store" --label "connections=$connections" --label "round=$round" >>"$RESULTS"
            log "round $round, $connections in flight, $store done"
        done
    done
done
# One SET round trip on loopback, one client at a time, from the node's core (CPU 1) to Redis's
# (CPU 0), as the node's own round trips cross between them.
RTT=$(taskset -c 1 redis-benchmark -p "$REDIS_PORT" -t set -n 50000 -c 1 -q 2>/dev/null | tr '\r' '\n' | grep -o 'p50=[0-9.]*' | tail -1 | cut -d= -f2)
# The same through the node's own client crate, connection manager and command.
CRATE_RTT=$(taskset -c 1 "$BIN/fxn-load" redis-round-trip --url "redis://127.0.0.1:$REDIS_PORT" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["latency_us"]["p50"])')

python3 - "$RESULTS" "$RTT" "$CRATE_RTT" "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
rtt_ms, crate_rtt_us, out = float(sys.argv[2] or "nan"), float(sys.argv[3]), sys.argv[4]
def median(store, connections, field):
    values = [r[field] if field != "p50" else r["latency_us"]["p50"] for r in rows
              if r["store"] == store and r["connections"] == str(connections)]
    return statistics.median(values)
lines = ["# Nonce store: memory against Redis", "",
         f"`benches/e2e/nonce_store.sh`; medians of {len(rows) // 4} rounds; one loopback Redis SET round trip "
         f"from the node's core, p50, one at a time: {rtt_ms * 1000:.0f} µs with redis-benchmark, "
         f"{crate_rtt_us:.0f} µs through the node's client crate (`fxn-load redis-round-trip`).", "",
         "| in flight | store | req/s | CPU µs/req | p50 µs |", "| --- | --- | --- | --- | --- |"]
for connections in (1, 32):
    for store in ("memory", "redis"):
        lines.append(f"| {connections} | {store} | {median(store, connections, 'rps'):.0f} | "
                     f"{median(store, connections, 'cpu_per_request_us'):.1f} | {median(store, connections, 'p50'):.0f} |")
added_p50 = median("redis", 1, "p50") - median("memory", 1, "p50")
ratio = median("redis", 32, "rps") / median("memory", 32, "rps")
lines += ["", f"Added p50 at 1 in flight: {added_p50:.0f} µs (target: at most one round trip, "
          f"{rtt_ms * 1000:.0f} µs by redis-benchmark, {crate_rtt_us:.0f} µs by the crate).",
          f"Throughput with Redis at 32 in flight: {ratio:.2f} of the memory store's (target: at least 0.80)."]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
