//! What callers may ask of the node: per registered gateway, requests in flight and a request
//! rate, checked once its signature has verified (`gateway.rs`); per peer address, a budget of
//! failed authentications, checked before any signature is (`failures.rs`).

mod failures;
mod gateway;

use std::time::Duration;

pub use failures::AuthFailureLimiter;
pub use gateway::{GatewayLimiter, GatewaySlot};

/// Why a request was refused by a limit; [`Refusal::reason`] is its metric label.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "this gateway started more requests than limits.perGateway allows ({per_second} per second, \
         bursts of {burst}); retry after the seconds of Retry-After"
    )]
    GatewayRate { per_second: f64, burst: u32, retry_after: Duration },
    #[error(
        "this gateway has {max} requests in flight already (limits.perGateway.maxInFlight); retry when one has ended"
    )]
    GatewayInFlight { max: u32 },
    #[error(
        "requests from this address failed authentication more than {max} times within {window} \
         (the last: {last}); until the window ends they are refused unchecked (limits.authFailures)"
    )]
    AuthFailures { max: u32, window: String, last: &'static str, retry_after: Duration },
}

impl Refusal {
    /// The `reason` label of `fxn_rate_limited_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::GatewayRate { .. } => "gateway_rate",
            Self::GatewayInFlight { .. } => "gateway_in_flight",
            Self::AuthFailures { .. } => "auth_failures",
        }
    }

    /// When the caller may try again: `Retry-After`, in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let wait = match self {
            Self::GatewayRate { retry_after, .. } | Self::AuthFailures { retry_after, .. } => *retry_after,
            // A request's end cannot be foreseen; most end within a second or two.
            Self::GatewayInFlight { .. } => Duration::from_secs(1),
        };
        (wait.as_secs_f64().ceil() as u64).max(1)
    }
}
