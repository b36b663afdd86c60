"""eth-account on the other side of the node's receipts (an independent implementation).

    receipt_check.py verify RECEIPT SIGNATURE [RECEIPT SIGNATURE ...]
        -> one JSON line: [{"signer": the address eth-account recovers, "fields": {...}}, ...]
           (scripts/fxn_receipts.py refuses a receipt that is not canonical or not the node's)
    receipt_check.py sign PRIVATE_KEY FIELDS_JSON   -> {"receipt": base64url, "signature": hex}
"""

import base64
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))

from eth_account import Account  # noqa: E402
from eth_account.messages import encode_defunct  # noqa: E402
from fxn_receipts import sign_receipt, verify_receipt  # noqa: E402


def recovered(encoded, signature):
    raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    return Account.recover_message(encode_defunct(primitive=raw), signature=bytes.fromhex(signature))


def main(argv):
    if argv[1] == "verify":
        pairs = zip(argv[2::2], argv[3::2])
        print(json.dumps([{"signer": recovered(r, s), "fields": verify_receipt(r, s)} for r, s in pairs]))
    elif argv[1] == "sign":
        encoded, signature = sign_receipt(argv[2], json.loads(argv[3]))
        print(json.dumps({"receipt": encoded, "signature": signature}))
    else:
        sys.exit(f"unknown mode {argv[1]}")


if __name__ == "__main__":
    main(sys.argv)
