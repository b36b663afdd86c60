//! fxn-node: the Function Network's provider node, an authenticating OpenAI-compatible proxy
//! in front of an operator's inference servers, built on Pingora.

pub mod cli;
pub mod config;
pub mod proxy;
pub mod routing;
pub mod server;
