# Shared by the send_*_request.sh scripts: signs a body with `fxn sign` and sends it with curl.

find_fxn() {
    local root; root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [ -n "${FXN:-}" ]; then echo "$FXN"
    elif [ -x "$root/target/release/fxn" ]; then echo "$root/target/release/fxn"
    elif [ -x "$root/target/debug/fxn" ]; then echo "$root/target/debug/fxn"
    else command -v fxn || { echo "no fxn binary: build it with cargo build --release" >&2; return 1; }
    fi
}

# send_signed METHOD PATH BODY DEFAULT_KEY_FILE
send_signed() {
    local method=$1 path=$2 body=$3 default_key=$4 fxn body_file
    fxn="$(find_fxn)"
    body_file="$(mktemp)"
    trap 'rm -f "$body_file"' RETURN
    if [[ $body == @* ]]; then cp "${body:1}" "$body_file"; else printf '%s' "$body" > "$body_file"; fi
    if [ -z "${PRIVATE_KEY:-}" ]; then
        PRIVATE_KEY="$(sed -n 's/.*"private_key": *"\([0-9a-fA-Fx]*\)".*/\1/p' "$default_key")"
    fi
    local headers=() line
    while IFS= read -r line; do headers+=(-H "$line"); done < <(PRIVATE_KEY="$PRIVATE_KEY" "$fxn" sign --body-file "$body_file")
    [ ${#headers[@]} -gt 0 ] || { echo "signing failed" >&2; return 1; }
    curl -sS --no-buffer -X "$method" "${NODE_URL:-http://127.0.0.1:8080}$path" \
        -H 'Content-Type: application/json' "${headers[@]}" --data-binary @"$body_file"
    echo
}
