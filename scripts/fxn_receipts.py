"""Verify the signed usage receipts of an fxn node (receipts.enabled), as a gateway would.

A receipt is canonical JSON (the README's Receipts section) signed by the node key with an
EIP-191 personal signature. An answer that is not streamed carries it in two headers,
``X-Fxn-Receipt`` (base64url of the JSON) and ``X-Fxn-Receipt-Signature``; a stream ends with
the comment line ``: fxn-receipt <base64url> <signature>``, which SSE readers (the openai SDK's
too) skip. To read it, keep the raw response:

    import hashlib
    import httpx
    from fxn_gateway_signing import signing_hook
    from fxn_receipts import verify_receipt, receipt_of_stream

    client = httpx.Client(event_hooks={"request": [signing_hook(PRIVATE_KEY)]})
    answer = client.post(f"{NODE}/v1/chat/completions", json={"model": "m", "messages": [...]})
    fields = verify_receipt(answer.headers["x-fxn-receipt"], answer.headers["x-fxn-receipt-signature"])
    assert fields["response_sha256"] == hashlib.sha256(answer.content).hexdigest()

    stream = client.post(f"{NODE}/v1/chat/completions", json={..., "stream": True}).content
    body, encoded, signature = receipt_of_stream(stream)
    fields = verify_receipt(encoded, signature)          # fields["response_sha256"] covers `body`

With the openai SDK, ``client.chat.completions.with_raw_response.create(...)`` gives the headers
of an answer that is not streamed. From the command line:

    python3 scripts/fxn_receipts.py RECEIPT SIGNATURE

Needs ``pip install eth-account``.
"""

import base64
import json
import sys

from eth_account import Account
from eth_account.messages import encode_defunct

# The receipt's keys, in their canonical order.
FIELDS = (
    "version",
    "node",
    "gateway",
    "nonce",
    "timestamp",
    "request_sha256",
    "model",
    "entry",
    "status",
    "response_sha256",
    "prompt_tokens",
    "completion_tokens",
    "ended_at_ms",
)

COMMENT_PREFIX = b": fxn-receipt "


def canonical_json(fields: dict) -> bytes:
    """The exact bytes the node signs: the keys in order, no whitespace, UTF-8 unescaped."""
    ordered = {name: fields[name] for name in FIELDS}
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_receipt(private_key: str, fields: dict) -> tuple[str, str]:
    """What a node with ``private_key`` sends for ``fields``: (base64url, signature hex)."""
    raw = canonical_json(fields)
    signature = Account.sign_message(encode_defunct(primitive=raw), private_key).signature
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode(), bytes(signature).hex()


def verify_receipt(encoded: str, signature: str) -> dict:
    """The receipt's fields, once its signature is the node's it names; ValueError otherwise."""
    raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    fields = json.loads(raw)
    if not isinstance(fields, dict) or tuple(fields) != FIELDS or canonical_json(fields) != raw:
        raise ValueError("not a canonical fxn receipt")
    if fields["version"] != 1:
        raise ValueError(f"receipt version {fields['version']} is not 1")
    signer = Account.recover_message(encode_defunct(primitive=raw), signature=bytes.fromhex(signature.removeprefix("0x")))
    if signer != fields["node"]:
        raise ValueError(f"bad signature: made by {signer}, not by the receipt's node {fields['node']}")
    return fields


def receipt_of_stream(stream: bytes) -> tuple[bytes, str, str]:
    """Splits a stream's body into (the body the receipt covers, receipt, signature)."""
    at = stream.rfind(b"\n" + COMMENT_PREFIX) + 1
    if at == 0 and not stream.startswith(COMMENT_PREFIX):
        raise ValueError("the stream has no receipt comment")
    encoded, signature = stream[at + len(COMMENT_PREFIX) :].split(b"\n", 1)[0].decode().split(" ")
    return stream[:at], encoded, signature


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        print(json.dumps(verify_receipt(sys.argv[1], sys.argv[2]), indent=2, ensure_ascii=False))
    except ValueError as error:
        sys.exit(f"fxn_receipts: {error}")
