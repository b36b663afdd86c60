//! The connector path: forwards a request whose body is larger than Pingora's 64 KiB retry
//! buffer. Pingora 0.9 replays a body read in `request_filter` only from that buffer, so such
//! a body would never reach the backend through `upstream_peer`; here the node drives the
//! backend connection itself, from the same pool settings, and relays the response as it comes.

use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora_proxy::Session;

/// Where a relay failed, which decides what the caller can still be told.
pub enum RelayError {
    /// Nothing was sent to the caller yet: answer with an error response.
    BeforeResponse(Box<pingora::Error>),
    /// The response had begun (or the caller left): the connection can only be closed.
    AfterResponse(Box<pingora::Error>),
}

pub async fn relay(
    connector: &Connector,
    session: &mut Session,
    peer: &HttpPeer,
    request: RequestHeader,
    body: Bytes,
    idle_timeout: Duration,
) -> Result<(), RelayError> {
    let mut upstream = send_request(connector, peer, request, body).await.map_err(RelayError::BeforeResponse)?;
    let Some(response) = upstream.response_header().cloned() else {
        return Err(RelayError::BeforeResponse(pingora::Error::explain(
            pingora::ErrorType::InvalidHTTPHeader,
            "backend sent no response header",
        )));
    };
    session.write_response_header(Box::new(response), false).await.map_err(RelayError::AfterResponse)?;
    loop {
        // Dropping `upstream` on any error closes the backend connection, which cancels the
        // backend's work when the caller has gone.
        let chunk = upstream.read_response_body().await.map_err(|e| RelayError::AfterResponse(e.into_up()))?;
        let end = chunk.is_none();
        session.write_response_body(chunk, end).await.map_err(RelayError::AfterResponse)?;
        if end {
            break;
        }
    }
    if upstream.response_done() {
        connector.release_http_session(upstream, peer, Some(idle_timeout)).await;
    }
    Ok(())
}

/// Sends the request and reads the response header. A pooled connection may have been closed
/// by the backend while idle; the whole body is in memory, so that case is retried once on a
/// fresh connection.
async fn send_request(
    connector: &Connector,
    peer: &HttpPeer,
    request: RequestHeader,
    body: Bytes,
) -> pingora::Result<HttpSession> {
    let mut attempt_on_fresh = false;
    loop {
        let (mut upstream, reused) = connector.get_http_session(peer).await?;
        // Pingora's own path applies these per request; a session from the connector does not.
        upstream.set_read_timeout(peer.options.read_timeout);
        upstream.set_write_timeout(peer.options.write_timeout);
        let sent = async {
            upstream.write_request_header(Box::new(request.clone())).await?;
            upstream.write_request_body(body.clone(), true).await?;
            upstream.finish_request_body().await?;
            upstream.read_response_header().await
        }
        .await;
        match sent {
            Ok(()) => return Ok(upstream),
            Err(mut error) => {
                error.retry.decide_reuse(reused);
                if reused && error.retry() && !attempt_on_fresh {
                    attempt_on_fresh = true;
                    continue;
                }
                return Err(error.into_up());
            }
        }
    }
}
