// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// Where the registries are. A node reads only the two getters, on every refresh, so pointing
/// the Router at a new registry moves every node to it.
contract Router {
    address public immutable admin;
    address public gatewayRegistry;
    address public providerRegistry;

    constructor(address gateways, address providers) {
        admin = msg.sender;
        gatewayRegistry = gateways;
        providerRegistry = providers;
    }

    function setGatewayRegistry(address registry) external {
        require(msg.sender == admin, "only the admin moves registries");
        gatewayRegistry = registry;
    }

    function setProviderRegistry(address registry) external {
        require(msg.sender == admin, "only the admin moves registries");
        providerRegistry = registry;
    }
}
