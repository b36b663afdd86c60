//! fxn-node: the Function Network's provider node, an authenticating OpenAI-compatible proxy
//! in front of an operator's inference servers, built on Pingora.

pub mod auth;
pub mod challenge;
pub mod cli;
pub mod config;
mod init;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod receipt;
pub mod registry;
pub mod routing;
mod server;
