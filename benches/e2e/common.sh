# Sourced by the e2e scripts (compare.sh, flood.sh, nonce_store.sh): their work folder, removed
# on exit together with every process they started; the test backend, pinned to CPU 0 with the
# load; and single-backend nodes pinned to CPU 1. The caller sets BIN first.

# A work folder /tmp/PREFIX.XXXXXX, and the fd limit the load needs.
bench_begin() {
    WORK=$(mktemp -d "/tmp/$1.XXXXXX")
    RESULTS=$WORK/results.jsonl
    PIDS=()
    ulimit -n 20000
    export RUST_BACKTRACE=0
    trap bench_end EXIT
}

bench_end() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# The test backend on CPU 0: sets BACKEND (its address) and SIGNER (the address fxn-load signs as).
start_backend() {
    taskset -c 0 "$BIN/fxn-test-backend" --listen 127.0.0.1:0 >"$WORK/backend.out" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 50); do grep -q listening "$WORK/backend.out" && break; sleep 0.1; done
    BACKEND=$(sed -n 's/^listening on //p' "$WORK/backend.out")
    SIGNER=$("$BIN/fxn-load" signer-address)
}

# The Pingora conf of a node in DIR: one worker, no grace period.
write_server_conf() {
    printf 'version: 1\nthreads: 1\npid_file: %s/fxn.pid\nupgrade_sock: %s/upgrade.sock\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\n' \
        "$1" "$1" >"$1/fxn.yaml"
}

# Node NAME on CPU 1, from $WORK/NAME/config.yaml (the caller's, listening on PORT[NAME]) and one
# model entry on the backend; sets PID[NAME] and returns once it listens.
start_single_backend_node() {
    local dir=$WORK/$1
    printf 'models:\n  "fxn/test-model":\n    url: "http://%s"\n' "$BACKEND" >"$dir/model_backend.yaml"
    write_server_conf "$dir"
    taskset -c 1 "$BIN/fxn" start --config "$dir/config.yaml" --model-backend "$dir/model_backend.yaml" \
        -c "$dir/fxn.yaml" >"$dir/fxn.log" 2>&1 &
    PID[$1]=$!
    PIDS+=("$!")
    wait_port "${PORT[$1]}"
}
