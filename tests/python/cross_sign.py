"""eth-account on the other side of the node's signatures (an independent implementation).

    cross_sign.py sign PRIVATE_KEY BODY_FILE TIMESTAMP NONCE   -> prints the four headers as JSON
    cross_sign.py recover BODY_FILE TIMESTAMP NONCE SIGNATURE  -> prints the signer's address
"""

import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))

from eth_account import Account  # noqa: E402
from eth_account.messages import encode_defunct  # noqa: E402
from fxn_gateway_signing import signed_headers  # noqa: E402


def main(argv):
    if argv[1] == "sign":
        _, _, key, body_file, timestamp, nonce = argv
        body = open(body_file, "rb").read()
        print(json.dumps(signed_headers(key, body, int(timestamp), nonce)))
    elif argv[1] == "recover":
        _, _, body_file, timestamp, nonce, signature = argv
        body = open(body_file, "rb").read()
        message = f"{hashlib.sha256(body).hexdigest()}.{timestamp}.{nonce}"
        print(Account.recover_message(encode_defunct(text=message), signature=bytes.fromhex(signature)))
    else:
        sys.exit(f"unknown mode {argv[1]}")


if __name__ == "__main__":
    main(sys.argv)
