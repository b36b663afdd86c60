"""Drives a node with the official openai SDK, signing as a gateway: prints one JSON line of
results for the Rust test to check.

    sdk_client.py NODE_URL PRIVATE_KEY MODEL
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))

import httpx  # noqa: E402
import openai  # noqa: E402
from fxn_gateway_signing import signing_hook  # noqa: E402


def main(node_url, private_key, model):
    signed = openai.OpenAI(
        base_url=f"{node_url}/v1",
        api_key="unused",
        max_retries=0,
        http_client=httpx.Client(event_hooks={"request": [signing_hook(private_key)]}),
    )
    results = {}
    chat = signed.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    results["chat"] = chat.choices[0].message.content
    stream = signed.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    results["chat_stream"] = [chunk.choices[0].delta.content for chunk in stream]
    results["completion"] = signed.completions.create(model=model, prompt="hi").choices[0].text
    results["embedding_len"] = len(signed.embeddings.create(model=model, input="hi").data[0].embedding)
    results["models"] = [m.id for m in signed.models.list().data]

    unsigned = openai.OpenAI(base_url=f"{node_url}/v1", api_key="unused", max_retries=0)
    try:
        unsigned.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        results["unsigned"] = "accepted"
    except openai.AuthenticationError as error:
        results["unsigned"] = {"status": error.status_code, "code": error.code, "message": error.message}
    print(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
