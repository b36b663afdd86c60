//! One HTTP/1.1 keep-alive connection per caller, with Nagle off so that small writes are not
//! held back waiting for an ACK.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

use crate::requests::RequestSet;

pub type Connection = SendRequest<Full<Bytes>>;

pub async fn connect(addr: SocketAddr) -> anyhow::Result<Connection> {
    connect_from(addr, None).await
}

/// [`connect`] from `source` (a loopback alias such as 127.0.0.2, say), when given.
pub async fn connect_from(addr: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<Connection> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("bind to {source}"))?;
    }
    let stream = socket.connect(addr).await.with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection task ends when the sender is dropped or the peer closes.
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends `request` and reads the whole answer; anything but 2xx is an error carrying the
/// start of the body, so a report shows why a target refused.
pub async fn exchange(connection: &mut Connection, request: Request<Full<Bytes>>) -> anyhow::Result<()> {
    connection.ready().await?;
    let response = connection.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        anyhow::bail!("status {status}: {text}");
    }
    Ok(())
}

/// The test backend's `GET /stats` answer.
pub async fn backend_stats(addr: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let mut connection = connect(addr).await?;
    let request = Request::get("/stats").header(http::header::HOST, addr.to_string()).body(Full::default())?;
    connection.ready().await?;
    let body = connection.send_request(request).await?.into_body().collect().await?.to_bytes();
    serde_json::from_slice(&body).context("the backend's /stats answer is not JSON")
}

/// Keeps a connection for the next request, opening a new one when the last one closed.
pub async fn usable(slot: &mut Option<Connection>, addr: SocketAddr) -> anyhow::Result<&mut Connection> {
    if slot.as_ref().is_none_or(|c| c.is_closed()) {
        *slot = Some(connect(addr).await?);
    }
    Ok(slot.as_mut().expect("set above"))
}

/// Opens `count` connections and sends one request on each before any clock starts, so that
/// neither the handshakes nor the proxy's first upstream connections are measured.
pub async fn warmed_up(addr: SocketAddr, set: &RequestSet, count: usize) -> anyhow::Result<Vec<Connection>> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        let mut connection = connect(addr).await?;
        let request = set.next().context("no request left to warm up with")?;
        exchange(&mut connection, request).await.context("warm-up request")?;
        connections.push(connection);
    }
    Ok(connections)
}
