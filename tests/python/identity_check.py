"""eth-keys on the other side of IDENTITY's signature (an independent implementation).

    identity_check.py recover PUBLIC_KEY_HEX IP SIGNATURE_BASE64 -> prints the signer's checksummed address
    identity_check.py sign PRIVATE_KEY_HEX IP                    -> prints the signature, base64

The signed digest is keccak256(65-byte uncompressed public key || "." || ip), v = 0/1.
"""

import base64
import sys

from eth_keys import keys  # noqa: E402
from eth_utils import keccak, to_checksum_address  # noqa: E402


def digest(public_key_bytes, ip):
    return keccak(public_key_bytes + b"." + ip.encode())


def main(argv):
    if argv[1] == "recover":
        _, _, public_key_hex, ip, signature = argv
        raw = bytes.fromhex(public_key_hex.removeprefix("0x"))
        assert len(raw) == 65 and raw[0] == 4, "the public key must be 65 bytes, uncompressed"
        signature = base64.b64decode(signature, validate=True)
        assert len(signature) == 65, f"signature is {len(signature)} bytes"
        recovered = keys.Signature(signature).recover_public_key_from_msg_hash(digest(raw, ip))
        print(to_checksum_address(recovered.to_checksum_address()))
    elif argv[1] == "sign":
        _, _, private_key, ip = argv
        key = keys.PrivateKey(bytes.fromhex(private_key))
        raw = b"\x04" + key.public_key.to_bytes()
        print(base64.b64encode(key.sign_msg_hash(digest(raw, ip)).to_bytes()).decode())
    else:
        sys.exit(f"unknown mode {argv[1]}")


if __name__ == "__main__":
    main(sys.argv)
