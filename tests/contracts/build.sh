#!/usr/bin/env bash
# Compiles the test contracts with solc from npm into OUT_DIR (default target/contracts) and,
# with --write-abi, writes their ABIs into abi/, which the node reads.
set -euo pipefail
cd "$(dirname "$0")"
out=../../target/contracts
write_abi=false
for arg in "$@"; do
    case "$arg" in
        --write-abi) write_abi=true ;;
        *) out=$arg ;;
    esac
done
[ -x node_modules/.bin/solcjs ] || npm ci --no-audit --no-fund --loglevel=error >/dev/null
mkdir -p "$out"
# solcjs prints warnings and errors alike on stdout: shown only when it fails.
if ! log=$(node_modules/.bin/solcjs --abi --bin -o "$out" Router.sol GatewayRegistry.sol ProviderRegistry.sol 2>&1); then
    echo "$log" >&2
    exit 1
fi
if $write_abi; then
    for name in Router GatewayRegistry ProviderRegistry; do
        python3 -m json.tool --indent 2 "$out/${name}_sol_${name}.abi" > "../../abi/$name.json"
    done
fi
