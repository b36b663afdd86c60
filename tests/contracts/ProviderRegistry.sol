// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// The providers of the network, each registered for a network model id. The read side matches
/// the network's ProviderRegistry (`getActiveProvidersLive`, same tuple); the writes are what the
/// node's tests need.
contract ProviderRegistry {
    struct Provider {
        address owner;
        bytes id;
        uint256 modelId;
        uint256 registeredAt;
        string metadata;
        bool paused;
    }

    address public immutable admin;
    Provider[] private providers;

    constructor() {
        admin = msg.sender;
    }

    function register(bytes calldata id, uint256 modelId, string calldata metadata) external {
        require(indexOf(id) == type(uint256).max, "provider id already registered");
        providers.push(Provider(msg.sender, id, modelId, block.timestamp, metadata, false));
    }

    function pause(bytes calldata id) external {
        providers[checkedIndex(id)].paused = true;
    }

    function unpause(bytes calldata id) external {
        providers[checkedIndex(id)].paused = false;
    }

    function remove(bytes calldata id) external {
        uint256 index = checkedIndex(id);
        providers[index] = providers[providers.length - 1];
        providers.pop();
    }

    function getActiveProvidersLive() external returns (Provider[] memory) {
        return providers;
    }

    function checkedIndex(bytes calldata id) private view returns (uint256 index) {
        index = indexOf(id);
        require(index != type(uint256).max, "no such provider");
        require(msg.sender == providers[index].owner || msg.sender == admin, "not the owner");
    }

    function indexOf(bytes calldata id) private view returns (uint256) {
        for (uint256 i = 0; i < providers.length; i++) {
            if (keccak256(providers[i].id) == keccak256(id)) return i;
        }
        return type(uint256).max;
    }
}
