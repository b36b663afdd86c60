#!/usr/bin/env bash
# Runs the whole test suite, installing what a fresh machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)   # pingora's zlib-ng
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

cargo test --locked --all-targets "$@"
