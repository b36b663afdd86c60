#!/usr/bin/env bash
# Runs the whole test suite, installing what a fresh machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)   # pingora's zlib-ng
command -v curl >/dev/null || need_apt+=(curl)     # the request scripts
command -v redis-server >/dev/null || need_apt+=(redis-server) # the shared nonce store's tests
command -v npm >/dev/null || need_apt+=(npm)       # anvil and solc for the chain tests
# A real Prometheus scrapes a node and answers the README's queries (tests/prometheus.rs);
# without recommends, which would add exporters and their services.
need_prometheus=()
command -v prometheus >/dev/null || need_prometheus+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ] || [ ${#need_prometheus[@]} -gt 0 ]; then
    apt-get update -qq
    [ ${#need_apt[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    [ ${#need_prometheus[@]} -eq 0 ] ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_prometheus[@]}" >/dev/null
fi

# The independent signer and ABI decoder (eth-account, eth-abi) and the official OpenAI client
# the tests drive the node with.
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    "eth-account>=0.13,<0.15" "eth-abi>=5,<7" "openai>=1.50,<4" "httpx>=0.27,<1"
# The chain tests' anvil and solc (npm), into tests/contracts/node_modules (ignored by git).
[ -x tests/contracts/node_modules/.bin/solcjs ] && [ -d tests/contracts/node_modules/@foundry-rs/anvil-linux-amd64 ] ||
    npm ci --prefix tests/contracts --no-audit --no-fund --loglevel=error >/dev/null

cargo fmt --all --check
# The test backend is a crate of its own; the node's tests start its binary.
cargo build --locked -p fxn-test-backend
cargo test --locked --all-targets "$@"
# The benchmark harness builds, so it cannot rot unnoticed (it runs with benches/e2e/run.sh).
cargo build --locked -p fxn-bench
# The portable k256 verification backend, against the same vectors as the default libsecp256k1.
cargo test --locked --lib --no-default-features "$@"
