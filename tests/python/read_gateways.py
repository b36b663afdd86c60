"""Reads a GatewayRegistry's active gateways with eth_call and decodes them with eth-abi,
independently of the node's ethers-core decoder. Prints them as JSON.

usage: read_gateways.py RPC_URL REGISTRY_ADDRESS
"""
import json
import sys
import urllib.request

from eth_abi import decode
from eth_utils import keccak, to_checksum_address

rpc_url, registry = sys.argv[1], sys.argv[2]
selector = "0x" + keccak(text="getActiveGatewaysLive()")[:4].hex()
request = {"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": [{"to": registry, "data": selector}, "latest"]}
post = urllib.request.Request(rpc_url, json.dumps(request).encode(), {"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(post, timeout=10))
(gateways,) = decode(["(address,bytes,uint256,string,bool)[]"], bytes.fromhex(answer["result"][2:]))
print(json.dumps([
    {"owner": to_checksum_address(owner), "id": "0x" + id_.hex(), "registeredAt": registered_at,
     "metadata": metadata, "paused": paused}
    for owner, id_, registered_at, metadata, paused in gateways
]))
