#!/usr/bin/env bash
# Sends a signed challenge to a node, as the scheduler does.
#
#   scripts/send_challenge_request.sh '{"type":"IDENTITY","payload":{}}'
#   scripts/send_challenge_request.sh '{"type":"MATRIX_MULTIPLICATION","payload":{"size":256}}'
#   scripts/send_challenge_request.sh '{"type":"MATRIX_MULTIPLICATION","payload":{"A":[[1,2]],"B":[[3],[4]]}}'
#   scripts/send_challenge_request.sh '{"type":"ENDPOINT_REACHABLE","payload":"https://example.com/"}'
#   scripts/send_challenge_request.sh '{"type":"PROXY","payload":{"model":"fxn/test-model","maxTokens":8}}'
#
# BODY is JSON, or @FILE. Environment as for send_gateway_request.sh, with PRIVATE_KEY the
# scheduler's key (default: scripts/scheduler_test_key.json).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/signing.sh
source "$here/signing.sh"

[ $# -eq 1 ] || { echo "usage: $0 BODY" >&2; exit 2; }
send_signed POST /challenge "$1" "$here/scheduler_test_key.json"
