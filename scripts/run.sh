#!/usr/bin/env bash
# Builds fxn and runs it on the shipped config.yaml, model_backend.yaml and conf/fxn.yaml.
# Unless FXN_TEST_BACKEND=0, it first starts the repository's OpenAI-compatible test backend on
# 127.0.0.1:8000, the backend the shipped model_backend.yaml names, so the node answers at once.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cmake >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
fi
cargo build --locked --release -p fxn-node -p fxn-test-backend --bins

if [ "${FXN_TEST_BACKEND:-1}" != 0 ]; then
    ./target/release/fxn-test-backend --listen 127.0.0.1:8000 &
    backend=$!
    trap 'kill $backend 2>/dev/null' EXIT
fi
./target/release/fxn start "$@"
