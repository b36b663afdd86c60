//! Used nonces in a Redis (or Valkey) that every instance behind one address shares: a request
//! one instance accepted is a replay to all the others. One atomic `SET key 1 NX PX ttl` per
//! request records a nonce, or finds it recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use ethers_core::types::Address;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};

/// How a nonce fared in the shared store.
#[derive(Debug, PartialEq, Eq)]
pub enum SharedOutcome {
    Recorded,
    Reused,
    /// Redis did not answer in time, or could not be reached.
    Unavailable,
}

/// Where the store is: one server, the nodes of a Redis Cluster, or the master that Sentinels name.
pub enum RedisServers<'a> {
    Single(&'a url::Url),
    Cluster(&'a [url::Url]),
    Sentinel { nodes: &'a [url::Url], master_name: &'a str, master_password: Option<&'a str>, master_db: i64 },
}

enum Client {
    Single(redis::Client, ConnectionManagerConfig),
    Cluster(ClusterClient),
    /// Asked for the master's address on every new connection; locked because a lookup takes
    /// `&mut` (it caches its connections to the Sentinels).
    Sentinel(tokio::sync::Mutex<SentinelClient>, ConnectionManagerConfig),
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
    /// must be the proxy's (the server is built before any runtime runs). Forgotten when a
    /// Sentinel-named master fails, so that the next request asks the Sentinels again.
    connection: ArcSwapOption<Connection>,
    /// One request connects while the others wait for its connection.
    connecting: tokio::sync::Mutex<()>,
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
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(command_timeout))
            // Each request fails fast while Redis is away; the next one tries to reconnect.
            .set_number_of_retries(1)
            .set_max_delay(command_timeout);
        let (client, server) = match servers {
            RedisServers::Single(url) => {
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
            RedisServers::Sentinel { nodes, master_name, master_password, master_db } => {
                let mut master = redis::RedisConnectionInfo::default().set_db(master_db);
                if let Some(password) = master_password {
                    master = master.set_password(password);
                }
                let mut to_master = SentinelNodeConnectionInfo::default().set_redis_connection_info(master);
                if nodes.iter().any(|node| node.scheme() == "rediss") {
                    to_master = to_master.set_tls_mode(redis::TlsMode::Secure);
                }
                let urls = nodes.iter().map(url::Url::as_str).collect();
                let client = SentinelClient::build(urls, master_name, Some(to_master), SentinelServerType::Master)?;
                let shown: Vec<String> = nodes.iter().map(without_password).collect();
                let server = format!("master {master_name} of sentinels {}", shown.join(", "));
                (Client::Sentinel(tokio::sync::Mutex::new(client), config), server)
            }
        };
        Ok(Self {
            client,
            connection: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
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
        let mut used = None;
        let answer = tokio::time::timeout(self.command_timeout * 2, async {
            let connection = used.insert(self.connection().await?);
            match connection.as_ref().clone() {
                Connection::Single(mut connection) => command.query_async::<Option<String>>(&mut connection).await,
                Connection::Cluster(mut connection) => command.query_async::<Option<String>>(&mut connection).await,
            }
        })
        .await;
        let outcome = match answer {
            Ok(Ok(Some(_))) => SharedOutcome::Recorded,
            Ok(Ok(None)) => SharedOutcome::Reused,
            Ok(Err(error)) => return self.unavailable(&error.to_string(), used),
            Err(_) => return self.unavailable("no answer in time", used),
        };
        if self.down.swap(false, Ordering::Relaxed) {
            log::info!("nonce store: Redis at {} answers again", self.server);
        }
        outcome
    }

    async fn connection(&self) -> redis::RedisResult<Arc<Connection>> {
        if let Some(connection) = self.connection.load_full() {
            return Ok(connection);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(connection) = self.connection.load_full() {
            return Ok(connection);
        }
        let connection = Arc::new(self.connect().await?);
        self.connection.store(Some(connection.clone()));
        Ok(connection)
    }

    /// A single server's connection is made without waiting; a cluster's first connection learns the
    /// slot map, and is tried again by the next request when that fails; a Sentinel is asked
    /// which server is the master.
    async fn connect(&self) -> redis::RedisResult<Connection> {
        match &self.client {
            Client::Single(client, config) => {
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone()).map(Connection::Single)
            }
            Client::Cluster(client) => client.get_async_connection().await.map(Connection::Cluster),
            Client::Sentinel(sentinels, config) => {
                let master = sentinels.lock().await.async_get_client().await?;
                ConnectionManager::new_lazy_with_config(master, config.clone()).map(Connection::Single)
            }
        }
    }

    /// `failed` is the connection the request used, if it got one.
    fn unavailable(&self, reason: &str, failed: Option<Arc<Connection>>) -> SharedOutcome {
        // A Sentinel-named master may be down or no longer the master: the next request asks the
        // Sentinels again (the others reconnect to the same address by themselves). Only the
        // connection that failed is forgotten, not a newer one another request made meanwhile.
        if let (Client::Sentinel(..), Some(failed)) = (&self.client, failed) {
            self.connection.compare_and_swap(&Some(failed), None);
        }
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
