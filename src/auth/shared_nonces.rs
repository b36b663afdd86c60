//! Used nonces in a Redis (or Valkey) that every instance behind one address shares: a request
//! one instance accepted is a replay to all the others. One atomic `SET key 1 NX PX ttl` per
//! request records a nonce, or finds it recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ethers_core::types::Address;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

/// How a nonce fared in the shared store.
#[derive(Debug, PartialEq, Eq)]
pub enum SharedOutcome {
    Recorded,
    Reused,
    /// Redis did not answer in time, or could not be reached.
    Unavailable,
}

/// Where the store is: one server, or the nodes of a Redis Cluster.
pub enum RedisServers<'a> {
    Single(&'a url::Url),
    Cluster(&'a [url::Url]),
}

enum Client {
    Single(redis::Client, ConnectionManagerConfig),
    Cluster(ClusterClient),
}

/// Both reconnect by themselves and multiplex concurrent requests over their connections.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

pub struct SharedNonceStore {
    client: Client,
    /// Made on first use: it spawns its connection's driver on the runtime that makes it, which
    /// must be the proxy's (the server is built before any runtime runs).
    connection: tokio::sync::OnceCell<Connection>,
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
        servers: RedisServers<'_>,
        key_prefix: &str,
        connect_timeout: Duration,
        command_timeout: Duration,
        falls_back_to_memory: bool,
    ) -> redis::RedisResult<Self> {
        let without_password = |url: &url::Url| {
            let mut shown = url.clone();
            let _ = shown.set_password(None);
            shown.to_string()
        };
        let (client, server) = match servers {
            RedisServers::Single(url) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(command_timeout))
                    // Each request fails fast while Redis is away; the next one tries to reconnect.
                    .set_number_of_retries(1)
                    .set_max_delay(command_timeout);
                (Client::Single(redis::Client::open(url.as_str())?, config), without_password(url))
            }
            RedisServers::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.iter().map(url::Url::as_str))
                    .connection_timeout(connect_timeout)
                    .response_timeout(command_timeout)
                    .retries(1)
                    .build()?;
                let shown: Vec<String> = nodes.iter().map(without_password).collect();
                (Client::Cluster(client), format!("cluster {}", shown.join(", ")))
            }
        };
        Ok(Self {
            client,
            connection: tokio::sync::OnceCell::new(),
            key_prefix: key_prefix.to_string(),
            command_timeout,
            server,
            falls_back_to_memory,
            down: AtomicBool::new(false),
        })
    }

    /// The server or cluster, without passwords, for the log.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Records `nonce` for `signer` for `keep_for`, unless it is recorded already.
    pub async fn record(&self, signer: &Address, nonce: &str, keep_for: Duration) -> SharedOutcome {
        let key = format!("{}{signer:x}:{nonce}", self.key_prefix);
        let millis = keep_for.as_millis().max(1) as u64;
        let command = redis::cmd("SET").arg(key).arg(1).arg("NX").arg("PX").arg(millis).to_owned();
        // The clients' own timeouts bound each attempt; this bounds a reconnect on top of them.
        let answer = tokio::time::timeout(self.command_timeout * 2, async {
            match self.connection.get_or_try_init(|| self.connect()).await?.clone() {
                Connection::Single(mut connection) => command.query_async::<Option<String>>(&mut connection).await,
                Connection::Cluster(mut connection) => command.query_async::<Option<String>>(&mut connection).await,
            }
        })
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

    /// A single server's connection is made without waiting; a cluster's first connection learns the
    /// slot map, and is tried again by the next request when that fails.
    async fn connect(&self) -> redis::RedisResult<Connection> {
        match &self.client {
            Client::Single(client, config) => {
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone()).map(Connection::Single)
            }
            Client::Cluster(client) => client.get_async_connection().await.map(Connection::Cluster),
        }
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
