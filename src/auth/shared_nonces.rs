//! Used nonces in a Redis (or Valkey) that every instance behind one address shares: a request
//! one instance accepted is a replay to all the others. One atomic `SET key 1 NX PX ttl` per
//! request records a nonce, or finds it recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ethers_core::types::Address;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How a nonce fared in the shared store.
#[derive(Debug, PartialEq, Eq)]
pub enum SharedOutcome {
    Recorded,
    Reused,
    /// Redis did not answer in time, or could not be reached.
    Unavailable,
}

pub struct SharedNonceStore {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Made on first use: it spawns its connection's driver on the runtime that makes it, which
    /// must be the proxy's (the server is built before any runtime runs).
    connection: tokio::sync::OnceCell<ConnectionManager>,
    key_prefix: String,
    command_timeout: Duration,
    /// For the log: the server, without its password.
    server: String,
    /// Record nonces in this instance while Redis is unavailable, rather than refuse requests.
    pub(super) falls_back_to_memory: bool,
    /// Set while Redis is unreachable, so each outage is logged once.
    down: AtomicBool,
}

impl SharedNonceStore {
    /// Connects lazily: the node starts, and answers 503, while Redis is still down; only a URL
    /// the client cannot read is an error here.
    pub fn new(
        url: &url::Url,
        key_prefix: &str,
        connect_timeout: Duration,
        command_timeout: Duration,
        falls_back_to_memory: bool,
    ) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(command_timeout))
            // Each request fails fast while Redis is away; the next one tries to reconnect.
            .set_number_of_retries(1)
            .set_max_delay(command_timeout);
        let mut server = url.clone();
        let _ = server.set_password(None);
        Ok(Self {
            client,
            config,
            connection: tokio::sync::OnceCell::new(),
            key_prefix: key_prefix.to_string(),
            command_timeout,
            server: server.to_string(),
            falls_back_to_memory,
            down: AtomicBool::new(false),
        })
    }

    /// Records `nonce` for `signer` for `keep_for`, unless it is recorded already.
    pub async fn record(&self, signer: &Address, nonce: &str, keep_for: Duration) -> SharedOutcome {
        let key = format!("{}{signer:x}:{nonce}", self.key_prefix);
        let millis = keep_for.as_millis().max(1) as u64;
        let made = self.connection.get_or_try_init(|| async {
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
        });
        let mut connection = match made.await {
            Ok(connection) => connection.clone(),
            Err(error) => return self.unavailable(&error.to_string()),
        };
        let command = redis::cmd("SET").arg(key).arg(1).arg("NX").arg("PX").arg(millis).to_owned();
        // The manager's own timeouts bound each attempt; this bounds a reconnect on top of them.
        let answer =
            tokio::time::timeout(self.command_timeout * 2, command.query_async::<Option<String>>(&mut connection))
                .await;
        let outcome = match answer {
            Ok(Ok(Some(_))) => SharedOutcome::Recorded,
            Ok(Ok(None)) => SharedOutcome::Reused,
            Ok(Err(error)) => return self.unavailable(&error.to_string()),
            Err(_) => return self.unavailable("no answer in time"),
        };
        if self.down.swap(false, Ordering::Relaxed) {
            log::info!("nonce store: Redis at {} answers again", self.server);
        }
        outcome
    }

    fn unavailable(&self, reason: &str) -> SharedOutcome {
        if !self.down.swap(true, Ordering::Relaxed) {
            let meanwhile = if self.falls_back_to_memory {
                "recording nonces in this instance only: replay protection is per instance until it returns"
            } else {
                "refusing signed requests with 503 nonce_store_unavailable until it returns"
            };
            log::warn!("nonce store: Redis at {} is unavailable ({reason}); {meanwhile}", self.server);
        }
        SharedOutcome::Unavailable
    }
}
