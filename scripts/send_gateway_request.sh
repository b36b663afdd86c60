#!/usr/bin/env bash
# Sends a signed OpenAI request to a node, as a gateway does, and prints the answer as it
# arrives (streamed answers event by event).
#
#   scripts/send_gateway_request.sh ENDPOINT BODY
#   scripts/send_gateway_request.sh /v1/chat/completions '{"model":"fxn/test-model","stream":true,"messages":[{"role":"user","content":"hi"}]}'
#
# BODY is JSON, or @FILE to read it from a file. Environment:
#   PRIVATE_KEY  the gateway's private key, hex (default: scripts/gateway_test_key.json)
#   NODE_URL     the node (default: http://127.0.0.1:8080)
#   FXN          the fxn binary that signs (default: target/release/fxn, else target/debug/fxn, else fxn on PATH)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/signing.sh
source "$here/signing.sh"

[ $# -eq 2 ] || { echo "usage: $0 ENDPOINT BODY" >&2; exit 2; }
send_signed POST "$1" "$2" "$here/gateway_test_key.json"
