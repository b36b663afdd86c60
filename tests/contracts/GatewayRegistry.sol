// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// The gateways a node accepts signed requests from. Only the read side is what the network's
/// GatewayRegistry exposes (`getActiveGatewaysLive`, same tuple); register, pause and remove are
/// the minimum the node's tests need to change it on a running chain.
contract GatewayRegistry {
    struct Gateway {
        address owner;
        bytes id;
        uint256 registeredAt;
        string metadata;
        bool paused;
    }

    address public immutable admin;
    /// While true every read reverts, so tests see a real revert from the EVM.
    bool public halted;
    Gateway[] private gateways;

    constructor() {
        admin = msg.sender;
    }

    function register(bytes calldata id, string calldata metadata) external {
        require(indexOf(id) == type(uint256).max, "gateway id already registered");
        gateways.push(Gateway(msg.sender, id, block.timestamp, metadata, false));
    }

    function pause(bytes calldata id) external {
        gateways[checkedIndex(id)].paused = true;
    }

    function unpause(bytes calldata id) external {
        gateways[checkedIndex(id)].paused = false;
    }

    function remove(bytes calldata id) external {
        uint256 index = checkedIndex(id);
        gateways[index] = gateways[gateways.length - 1];
        gateways.pop();
    }

    function halt(bool on) external {
        require(msg.sender == admin, "only the admin halts");
        halted = on;
    }

    function getActiveGatewaysLive() external returns (Gateway[] memory) {
        require(!halted, "registry halted");
        return gateways;
    }

    function checkedIndex(bytes calldata id) private view returns (uint256 index) {
        index = indexOf(id);
        require(index != type(uint256).max, "no such gateway");
        require(msg.sender == gateways[index].owner || msg.sender == admin, "not the owner");
    }

    function indexOf(bytes calldata id) private view returns (uint256) {
        for (uint256 i = 0; i < gateways.length; i++) {
            if (keccak256(gateways[i].id) == keccak256(id)) return i;
        }
        return type(uint256).max;
    }
}
