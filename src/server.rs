//! Builds Pingora's server from validated settings and runs it.

use std::sync::Arc;

use pingora::connectors::http::Connector;
use pingora::server::configuration::Opt;
use pingora::server::Server;
use pingora::connectors::ConnectorOptions;

use crate::config::Settings;
use crate::proxy::NodeProxy;
use crate::routing::Router;

/// Runs the node until it is told to stop; Pingora handles `-d`, `-t` and `-u` itself.
pub fn run(settings: Settings, opt: Opt) -> ! {
    let Settings { node, models, mut server } = settings;
    if let Some(pool_size) = node.proxy.max_idle_conns {
        server.upstream_keepalive_pool_size = pool_size;
    }
    let mut pingora_server = Server::new_with_opt_and_conf(opt, server);
    pingora_server.bootstrap();

    let conf = pingora_server.configuration.clone();
    let router = Arc::new(Router::new(&models, &node.proxy));
    let connector = Connector::new(Some(ConnectorOptions::from_server_conf(&conf)));
    let proxy = NodeProxy::new(router, node.limits.clone(), connector);
    let mut service = pingora::proxy::http_proxy_service_with_name(&conf, proxy, "fxn proxy");
    service.add_tcp(&node.listen.to_string());
    pingora_server.add_service(service);
    log::info!(
        "fxn {} listening on {} serving {} model entries",
        env!("CARGO_PKG_VERSION"),
        node.listen,
        models.models.len() + usize::from(models.default.is_some())
    );
    pingora_server.run_forever()
}
