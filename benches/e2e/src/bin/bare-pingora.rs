//! The baseline Pingora proxy: every request passes through unchanged to one fixed upstream
//! (no auth, no routing, no body handling), so the difference between it and fxn is what fxn adds.

use std::net::SocketAddr;

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::upstreams::peer::HttpPeer;

#[derive(Parser)]
#[command(about = "Pass-through Pingora proxy to one upstream, one worker thread")]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    upstream: SocketAddr,
    /// Where Pingora keeps its pid file and upgrade socket.
    #[arg(long, default_value = "/tmp")]
    state_dir: String,
}

struct Passthrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Self::CTX) -> Result<Box<HttpPeer>> {
        // A SocketAddr needs no resolution, so building the peer per request costs no lookup.
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args = Args::parse();
    // Same process shape as fxn's benchmark conf: one worker, no grace period on shutdown;
    // the default upstream keep-alive pool (128) stays on.
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: format!("{}/bare-pingora.pid", args.state_dir),
        upgrade_sock: format!("{}/bare-pingora-upgrade.sock", args.state_dir),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut service =
        pingora::proxy::http_proxy_service(&server.configuration, Passthrough { upstream: args.upstream });
    service.add_tcp(&args.listen.to_string());
    server.add_service(service);
    server.run_forever()
}
