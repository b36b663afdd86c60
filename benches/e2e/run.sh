#!/usr/bin/env bash
# End-to-end benchmarks: fxn against a direct connection to the test backend, a bare Pingora
# pass-through, nginx and LiteLLM, in two CPU placements, written to benches/RESULTS.md.
#
# Every knob is an environment variable (defaults keep a full run near 20 minutes on 2 cores):
#   BENCH_DURATION_S    seconds per closed- and open-loop point (5)
#   BENCH_STREAM_S      seconds each 20 ms-paced stream lasts (4)
#   BENCH_HOLD_S        events (one a second) each held-open stream carries (6)
#   BENCH_PLACEMENTS    "A B": A = all on CPU 0; B = proxy alone on CPU 1
#   BENCH_RATES         open-loop rates, req/s ("1000 2000 5000 10000")
#   BENCH_STREAMS       concurrent 20 ms streams ("100 500 750 1000")
#   BENCH_HOLD_STREAMS  streams held open at 1 s between events ("1000 4000 8000 9000")
#   BENCH_TARGETS       which targets run ("direct bare nginx litellm fxn")
#   BENCH_FXN_CONFIG    more lines for fxn's config.yaml (say "metrics: {enabled: false}")
#   BENCH_OUT           report path (benches/RESULTS.md); BENCH_KEEP=1 keeps the work dir
# The load generator's raw reports of the last run stay in benches/e2e/last-run.jsonl.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
E2E=$ROOT/benches/e2e
BIN=$ROOT/target/release
DURATION=${BENCH_DURATION_S:-5}
STREAM_S=${BENCH_STREAM_S:-4}
HOLD_S=${BENCH_HOLD_S:-6}
PLACEMENTS=${BENCH_PLACEMENTS:-"A B"}
RATES=${BENCH_RATES:-"1000 2000 5000 10000"}
STREAM_COUNTS=${BENCH_STREAMS:-"100 500 750 1000"}
HOLD_COUNTS=${BENCH_HOLD_STREAMS:-"1000 4000 8000 9000"}
OUT=${BENCH_OUT:-$ROOT/benches/RESULTS.md}
TARGETS=" ${BENCH_TARGETS:-direct bare nginx litellm fxn} "
# The targets among "$@" that this run measures.
chosen() { local t; for t in "$@"; do [[ $TARGETS == *" $t "* ]] && printf "%s " "$t"; done; return 0; }
WORK=$(mktemp -d /tmp/fxn-bench.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"

# 9,000 held streams need 18,000 descriptors in a proxy; every process started here inherits this.
ulimit -n 20000

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

STARTED=()
# SIGTERM, because background jobs of a script start with SIGINT ignored; the Pingora confs here
# have no grace period, so it stops them at once too.
stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- setup
need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx)
command -v cmake >/dev/null || need_apt+=(cmake) # pingora's zlib-ng, for the release build
if ((${#need_apt[@]})); then
    log "installing ${need_apt[*]}"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null
fi
if [[ -n $(chosen litellm) ]] && ! python3 -c 'import litellm.proxy' 2>/dev/null; then
    log "installing LiteLLM"
    python3 -m pip install -q 'litellm[proxy]' >&2 || log "LiteLLM could not be installed; its rows stay empty"
fi
log "building release binaries"
(cd "$ROOT" && cargo build --locked --release -q -p fxn-node -p fxn-test-backend -p fxn-bench --bins)

# The verification micro-benchmark of the backend in use sets the node's CPU budget (the issue's
# "bare Pingora + 1.25 × verify"); it runs here so the budget comes from the same machine and hour.
log "measuring request verification (criterion)"
VERIFY_BENCH=verify_request/libsecp256k1/x_address_cached_key
# criterion keeps a group's results under its name with the group's own '/' turned into '_'.
VERIFY_ESTIMATES=$ROOT/target/criterion/${VERIFY_BENCH/\//_}/new/estimates.json
rm -f "$VERIFY_ESTIMATES"
(cd "$ROOT" && cargo bench --locked --bench auth -q -- "$VERIFY_BENCH" --warm-up-time 1 --measurement-time 3 \
    >/dev/null 2>&1) || log "verification benchmark failed; the report leaves its budget out"
VERIFY_US=$(python3 -c 'import json,sys
try: print(round(json.load(open(sys.argv[1]))["mean"]["point_estimate"] / 1000, 2))
except Exception: print("None")' "$VERIFY_ESTIMATES")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # host:port, seconds
    local deadline=$((SECONDS + $2))
    until python3 -c "import socket,sys; socket.create_connection(('${1%:*}', ${1#*:}), 1)" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# The process and its descendants (nginx's workers, LiteLLM's server process).
tree_pids() {
    local pid=$1 child
    echo "$pid"
    for child in $(pgrep -P "$pid" || true); do tree_pids "$child"; done
}

SIGNER=$("$BIN/fxn-load" signer-address)
declare -A ADDR PID PORT
AVAILABLE=(direct bare nginx litellm fxn)

start_backend() { # cpu
    taskset -c "$1" "$BIN/fxn-test-backend" --listen 127.0.0.1:0 >"$WORK/backend.out" 2>&1 &
    PID[direct]=$!
    STARTED+=("$!")
    for _ in $(seq 50); do grep -q listening "$WORK/backend.out" && break; sleep 0.1; done
    ADDR[direct]=$(sed -n 's/^listening on //p' "$WORK/backend.out")
    BACKEND=${ADDR[direct]}
}

# Records the just-started process of target NAME and waits up to SECONDS for its port.
track() { # name pid seconds
    PID[$1]=$2
    STARTED+=("$2")
    wait_port "${ADDR[$1]}" "$3"
}

start_bare() { # cpu
    taskset -c "$1" "$BIN/bare-pingora" --listen "127.0.0.1:${PORT[bare]}" --upstream "$BACKEND" \
        --state-dir "$WORK" >"$WORK/bare.log" 2>&1 &
    track bare $! 20
}

start_fxn() { # cpu
    local dir=$WORK/fxn
    mkdir -p "$dir"
    cat >"$dir/config.yaml" <<EOF
node: {listenAddress: "127.0.0.1", listenPort: ${PORT[fxn]}}
logger: {verbosity: "warn"}
registry: {static: {gateways: ["$SIGNER"]}}
nonceCache: {maxEntries: 5000000}
${BENCH_FXN_CONFIG:-}
EOF
    printf 'models:\n  "fxn/test-model":\n    url: "http://%s"\n' "$BACKEND" >"$dir/model_backend.yaml"
    printf 'version: 1\nthreads: 1\npid_file: %s/fxn.pid\nupgrade_sock: %s/upgrade.sock\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\n' \
        "$dir" "$dir" >"$dir/fxn.yaml"
    taskset -c "$1" "$BIN/fxn" start --config "$dir/config.yaml" --model-backend "$dir/model_backend.yaml" \
        -c "$dir/fxn.yaml" >>"$dir/fxn.log" 2>&1 &
    track fxn $! 20
}

start_nginx() { # cpu
    local dir=$WORK/nginx
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 20000; }
http {
    access_log off;
    # Bodies stay in memory (up to 1 MiB here), as in the other proxies.
    client_max_body_size 64m;
    client_body_buffer_size 2m;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    # The load generator keeps its connections for the whole run.
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream backend {
        server $BACKEND;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen ${ADDR[nginx]};
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }
    }
}
EOF
    taskset -c "$1" nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 &
    track nginx $! 20
}

start_litellm() { # cpu; returns 1 when LiteLLM is missing or does not come up
    local dir=$WORK/litellm
    mkdir -p "$dir"
    command -v litellm >/dev/null || return 1
    cat >"$dir/config.yaml" <<EOF
model_list:
  - model_name: fxn/test-model
    litellm_params:
      model: openai/fxn/test-model
      api_base: http://$BACKEND/v1
      api_key: sk-backend
      # LiteLLM refuses 'dimensions' for models it does not know as text-embedding-3.
      allowed_openai_params: ["dimensions"]
EOF
    LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_MASTER_KEY=sk-bench LITELLM_LOG=ERROR \
        taskset -c "$1" litellm --config "$dir/config.yaml" --host 127.0.0.1 --port "${PORT[litellm]}" \
        --num_workers 1 >"$dir/litellm.log" 2>&1 &
    track litellm $! 120 || return 1
    # The port opens before the model list is loaded; one real request proves it serves.
    curl -sf -m 30 "http://${ADDR[litellm]}/v1/chat/completions" -H 'Authorization: Bearer sk-bench' \
        -H 'content-type: application/json' \
        -d '{"model":"fxn/test-model","messages":[{"role":"user","content":"hi"}]}' >/dev/null
}

stop_target() {
    local target=$1 pid
    [[ -n ${PID[$target]:-} ]] || return 0
    # The parent first: nginx's master would replace a worker stopped before it.
    for pid in $(tree_pids "${PID[$target]}"); do stop_pid "$pid"; done
    PID[$target]=
}

start_target() { # target cpu
    case $1 in
        bare) start_bare "$2" ;;
        fxn) start_fxn "$2" ;;
        nginx) start_nginx "$2" ;;
        litellm) start_litellm "$2" ;;
    esac
}

# Starts the backend and every proxy for a placement; a proxy that does not come up is dropped.
start_placement() { # placement
    local target
    PLACEMENT=$1
    if [[ $PLACEMENT == A ]]; then PROXY_CPU=0; else PROXY_CPU=1; fi
    start_backend 0
    AVAILABLE=(direct)
    for target in $(chosen bare nginx litellm fxn); do
        PORT[$target]=$(free_port)
        ADDR[$target]=127.0.0.1:${PORT[$target]}
        if start_target "$target" "$PROXY_CPU"; then
            AVAILABLE+=("$target")
        else
            log "$target did not start in placement $PLACEMENT; its rows are unavailable"
            stop_target "$target"
        fi
    done
}

stop_placement() {
    local target
    for target in bare nginx litellm fxn direct; do stop_target "$target"; done
}

# Fresh streaming proxies, so that RSS counts only what the held streams cost: memory freed after
# an earlier run stays with the process, and fxn's nonce store would hold every earlier nonce.
restart_proxies() {
    local target
    for target in "${STREAMING[@]}"; do
        [[ $target != direct ]] && is_available "$target" || continue
        stop_target "$target"
        start_target "$target" "$PROXY_CPU" || log "$target did not restart"
    done
}

is_available() { [[ " ${AVAILABLE[*]} " == *" $1 "* ]]; }

# One load-generator run against a target; its JSON report, labelled, goes to $RESULTS.
# A target that did not start is skipped (the report marks its rows).
load() { # scenario target mode args...
    local scenario=$1 target=$2 mode=$3
    shift 3
    LAST=
    is_available "$target" || return 0
    local args=(--target "${ADDR[$target]}" --label "scenario=$scenario" --label "placement=$PLACEMENT"
        --label "name=$target")
    case $target in
        fxn) args+=(--auth sign) ;;
        litellm) args+=(--auth bearer:sk-bench) ;;
    esac
    if [[ $target != direct ]]; then
        args+=(--backend "$BACKEND")
        local pid
        for pid in $(tree_pids "${PID[$target]}"); do args+=(--proxy-pid "$pid"); done
    fi
    local line
    if line=$(taskset -c 0 "$BIN/fxn-load" "$mode" "${args[@]}" "$@" 2>>"$WORK/load.err"); then
        echo "$line" >>"$RESULTS"
        log "$PLACEMENT $scenario $target $*: $(summary "$line")"
        LAST=$line
    else
        log "$PLACEMENT $scenario $target $*: load generator failed:"
        tail -n 3 "$WORK/load.err" >&2
        printf '{"scenario":"%s","placement":"%s","name":"%s","failed":true}\n' \
            "$scenario" "$PLACEMENT" "$target" >>"$RESULTS"
    fi
}

summary() {
    python3 -c 'import json, sys
r = json.loads(sys.argv[1])
l = r.get("latency_us") or r.get("event_delay_us") or {}
rate, failed = r.get("rps", r.get("events_per_s", 0)), r.get("errors", r.get("streams_failed"))
print("%.0f/s p50 %s p99 %s errors %s" % (rate, l.get("p50"), l.get("p99"), failed))' "$1"
}

p99_of() { python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print((r.get("latency_us") or {}).get("p99", 10**9))' "$1"; }

# ---------------------------------------------------------------- scenarios
# Each scenario runs target after target at every point, so slow drift of the machine hits
# every target alike.
CHAT=(--path /v1/chat/completions --body-bytes 256)
read -ra NON_STREAMING <<<"$(chosen direct bare nginx litellm fxn)"
read -ra STREAMING <<<"$(chosen direct bare nginx fxn)"

run_placement() {
    local target n size dims rate
    for target in "${NON_STREAMING[@]}"; do
        load latency "$target" closed "${CHAT[@]}" --connections 1 --duration-s "$DURATION" --max-rate 15000
    done
    for target in "${NON_STREAMING[@]}"; do
        load saturation "$target" closed "${CHAT[@]}" --connections 32 --duration-s "$DURATION" --max-rate 18000
    done
    # Signing hashes the whole body once per request: bigger bodies get fewer signed requests,
    # bounded by what one connection can send.
    local -A max_rate=([1024]=12000 [10240]=10000 [102400]=4000 [1048576]=1000)
    for size in 1024 10240 102400 1048576; do
        for target in "${NON_STREAMING[@]}"; do
            load "body-$size" "$target" closed --body-bytes "$size" --connections 1 \
                --duration-s "$DURATION" --max-rate "${max_rate[$size]}"
        done
    done
    for dims in 1536 3072; do
        for target in "${NON_STREAMING[@]}"; do
            load "embeddings-$dims" "$target" closed --path /v1/embeddings \
                --embedding-dimensions "$dims" --connections 1 --duration-s "$DURATION" --max-rate 10000
        done
    done
    # Open loop: once a target's p99 passes 10 ms, higher rates are only worse; they are skipped.
    declare -A saturated=()
    for rate in $RATES; do
        for target in "${STREAMING[@]}"; do
            [[ -z ${saturated[$target]:-} ]] || continue
            load "open-$rate" "$target" open "${CHAT[@]}" --rate "$rate" --connections 64 --duration-s "$DURATION"
            if [[ -n $LAST ]] && (($(p99_of "$LAST") >= 10000)); then saturated[$target]=1; fi
        done
    done
    for n in $STREAM_COUNTS; do
        for target in "${STREAMING[@]}"; do
            load "stream-$n" "$target" stream --streams "$n" --interval-ms 20 \
                --chunks $((STREAM_S * 50)) --ramp-s 1
        done
    done
    for n in $HOLD_COUNTS; do
        restart_proxies
        for target in "${STREAMING[@]}"; do
            load "hold-$n" "$target" stream --streams "$n" --interval-ms 1000 \
                --chunks "$HOLD_S" --ramp-s 3
        done
    done
}

# ---------------------------------------------------------------- run
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
BEGIN=$SECONDS
for placement in $PLACEMENTS; do
    log "placement $placement"
    start_placement "$placement"
    run_placement
    stop_placement
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

litellm_version=$(python3 -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null || echo "not installed")
rev=$(git -C "$ROOT" rev-parse --short HEAD)
git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml || rev="$rev (with uncommitted changes)"
python3 - "$WORK/meta.json" <<EOF
import json, sys
json.dump({
    "date": "$(date -u '+%Y-%m-%d %H:%M UTC')",
    "nproc": "$(nproc)",
    "cpu": "$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)",
    "kernel": "$(uname -r)",
    "rustc": "$(rustc --version)",
    "nginx": "$(nginx -v 2>&1 | sed 's/^nginx version: //')",
    "litellm": "$litellm_version",
    "fxn": "$rev",
    "load_before": "$LOAD_BEFORE",
    "load_after": "$LOAD_AFTER",
    "elapsed_s": $((SECONDS - BEGIN)),
    "verify_us": $VERIFY_US, "verify_bench": "$VERIFY_BENCH",
    "duration_s": "$DURATION", "stream_s": "$STREAM_S", "hold_s": "$HOLD_S",
}, open(sys.argv[1], "w"))
EOF
python3 "$E2E/report.py" "$WORK/meta.json" "$RESULTS" >"$OUT"
cp "$RESULTS" "$E2E/last-run.jsonl"
log "wrote $OUT (raw reports: $E2E/last-run.jsonl) in $((SECONDS - BEGIN)) s"
