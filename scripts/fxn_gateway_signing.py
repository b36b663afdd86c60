"""Sign OpenAI SDK requests for an fxn node, the way a Function Network gateway does.

Every request gets X-Address, X-Timestamp, X-Nonce and X-Signature: an EIP-191 personal
signature over ``sha256_hex(body) + "." + timestamp + "." + nonce``. Use it as an httpx
request hook:

    import httpx
    from openai import OpenAI
    from fxn_gateway_signing import signing_hook

    client = OpenAI(
        base_url="http://127.0.0.1:8080/v1",
        api_key="unused",  # the node authenticates the signature, not an API key
        http_client=httpx.Client(event_hooks={"request": [signing_hook(PRIVATE_KEY)]}),
    )
    client.chat.completions.create(model="fxn/test-model", messages=[{"role": "user", "content": "hi"}])

Needs ``pip install eth-account httpx``.
"""

import hashlib
import secrets
import time

import httpx
from eth_account import Account
from eth_account.messages import encode_defunct


def signed_headers(private_key: str, body: bytes, timestamp: int | None = None, nonce: str | None = None) -> dict:
    """The four signing headers for ``body``."""
    account = Account.from_key(private_key)
    timestamp = int(time.time()) if timestamp is None else timestamp
    nonce = secrets.token_hex(8) if nonce is None else nonce
    message = f"{hashlib.sha256(body).hexdigest()}.{timestamp}.{nonce}"
    signature = account.sign_message(encode_defunct(text=message)).signature
    return {
        "X-Address": account.address,
        "X-Timestamp": str(timestamp),
        "X-Nonce": nonce,
        "X-Signature": bytes(signature).hex(),
    }


def signing_hook(private_key: str):
    """An httpx request hook that signs each request's body."""

    def sign(request: httpx.Request) -> None:
        request.headers.update(signed_headers(private_key, request.read()))

    return sign
