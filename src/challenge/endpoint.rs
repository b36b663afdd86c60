//! ENDPOINT_REACHABLE: whether a URL the scheduler names answers 2xx (PROTOCOL §3), fetched under
//! bounded timeouts behind a guard that keeps the scheduler from probing the operator's own
//! network: every hop's addresses are checked, and the connection is pinned to them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use url::{Host, Url};

use super::{Answer, Challenge, ChallengeError, Payload};
use crate::config::ChallengeSettings;

const NAME: &str = "ENDPOINT_REACHABLE";

/// Redirects followed before the check gives up.
const MAX_REDIRECTS: usize = 3;

pub(super) struct EndpointReachable {
    connect_timeout: Duration,
    timeout: Duration,
    allow: Vec<IpNet>,
}

impl EndpointReachable {
    pub(super) fn new(settings: &ChallengeSettings) -> Self {
        Self {
            connect_timeout: settings.endpoint_connect_timeout,
            timeout: settings.endpoint_timeout,
            allow: settings.endpoint_allow.clone(),
        }
    }

    /// GETs `target`, following redirects, and answers the final hop's status.
    async fn follow(&self, mut target: Target) -> Result<reqwest::StatusCode, Unreached> {
        for _ in 0..=MAX_REDIRECTS {
            let (status, location) = self.fetch(&target).await?;
            let Some(location) = location else { return Ok(status) };
            let next = target.url.join(&location).map_err(|_| Unreached::InvalidRedirect)?;
            target = Target::of(next).map_err(|_| Unreached::InvalidRedirect)?;
        }
        Err(Unreached::TooManyRedirects)
    }

    /// One hop: its status, and where it redirects to, if it does.
    async fn fetch(&self, target: &Target) -> Result<(reqwest::StatusCode, Option<String>), Unreached> {
        let addrs = self.checked_addrs(target).await?;
        let mut builder = reqwest::Client::builder()
            // An HTTP proxy from the environment would make the connection the guard never saw.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.connect_timeout);
        if let Host::Domain(name) = &target.host {
            // The addresses just checked, so a second lookup cannot answer others (DNS rebinding).
            builder = builder.resolve_to_addrs(name, &addrs);
        }
        // Building a client reads the system's trust store, milliseconds of file reads that would
        // hold up every stream on this proxy thread.
        let client = tokio::task::spawn_blocking(move || builder.build())
            .await
            .map_err(|e| Unreached::Client(e.to_string()))?
            .map_err(|e| Unreached::Client(e.to_string()))?;
        let response = client.get(target.url.clone()).send().await.map_err(|error| {
            log::debug!("{NAME}: {}: {error}", target.url);
            Unreached::from_request(&error)
        })?;
        let status = response.status();
        // Other 3xx (300, 304) name no single place to go: they are the answer.
        let redirects = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
        let location = match response.headers().get(reqwest::header::LOCATION) {
            Some(location) if redirects => Some(location.to_str().map_err(|_| Unreached::InvalidRedirect)?.to_owned()),
            _ => None,
        };
        // The body is dropped unread: the status is all the check needs.
        Ok((status, location))
    }

    /// The addresses `target`'s host stands for, each one allowed by the guard.
    async fn checked_addrs(&self, target: &Target) -> Result<Vec<SocketAddr>, Unreached> {
        let addrs: Vec<SocketAddr> = match &target.host {
            Host::Ipv4(ip) => vec![SocketAddr::new((*ip).into(), target.port)],
            Host::Ipv6(ip) => vec![SocketAddr::new((*ip).into(), target.port)],
            Host::Domain(name) => tokio::net::lookup_host((name.as_str(), target.port))
                .await
                .map_err(|error| {
                    log::debug!("{NAME}: looking up {name}: {error}");
                    Unreached::DnsLookup
                })?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(Unreached::DnsLookup);
        }
        // One refused address refuses the host: the connection could go to any of them.
        for addr in &addrs {
            if let Some(class) = refusal(addr.ip(), &self.allow) {
                log::debug!("{NAME}: refused {} at {} ({class})", target.host, addr.ip());
                return Err(Unreached::NotAllowed);
            }
        }
        Ok(addrs)
    }
}

#[async_trait]
impl Challenge for EndpointReachable {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn answer(&self, payload: Payload) -> Result<Answer, ChallengeError> {
        let url: String = payload.parse(NAME, "a URL string such as \"https://example.com/health\"")?;
        let url = Url::parse(&url).map_err(|e| {
            ChallengeError::payload(
                NAME,
                format!("`{url}` is not a URL ({e}); expected one such as \"https://example.com/health\""),
            )
        })?;
        let target = Target::of(url).map_err(|e| ChallengeError::payload(NAME, e.to_string()))?;
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, self.follow(target)).await.unwrap_or(Err(Unreached::Timeout));
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let json = match outcome {
            Ok(status) => serde_json::json!({
                "reachable": status.is_success(),
                "status": status.as_u16(),
                "latencyMs": latency_ms,
            }),
            // Nothing more: a latency or a reason would tell which addresses exist behind the node.
            Err(Unreached::NotAllowed) => {
                serde_json::json!({"reachable": false, "error": Unreached::NotAllowed.to_string()})
            }
            Err(Unreached::Client(error)) => return Err(ChallengeError::Internal(format!("{NAME} client: {error}"))),
            Err(unreached) => serde_json::json!({
                "reachable": false,
                "error": unreached.to_string(),
                "latencyMs": latency_ms,
            }),
        };
        Ok(json.into())
    }
}

/// A URL the check may fetch: http or https, with a host and no credentials.
struct Target {
    host: Host<String>,
    port: u16,
    url: Url,
}

#[derive(Debug, thiserror::Error)]
enum InvalidTarget {
    #[error("the scheme is `{0}`; only http and https URLs are checked")]
    Scheme(String),
    #[error("the URL carries a user name or password; send one without")]
    UserInfo,
    #[error("the URL has no host")]
    NoHost,
}

impl Target {
    fn of(url: Url) -> Result<Self, InvalidTarget> {
        let default_port = match url.scheme() {
            "http" => 80,
            "https" => 443,
            other => return Err(InvalidTarget::Scheme(other.to_owned())),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(InvalidTarget::UserInfo);
        }
        let host = url.host().ok_or(InvalidTarget::NoHost)?.to_owned();
        let port = url.port().unwrap_or(default_port);
        Ok(Self { host, port, url })
    }
}

/// Why a check reached no final answer; the message is the `error` the scheduler sees, short and
/// fixed so it never carries a library's text (which may name addresses).
#[derive(Debug, thiserror::Error)]
enum Unreached {
    #[error("target not allowed")]
    NotAllowed,
    #[error("timeout")]
    Timeout,
    #[error("connect timeout")]
    ConnectTimeout,
    #[error("dns lookup failed")]
    DnsLookup,
    #[error("connection failed")]
    Connection,
    #[error("request failed")]
    Request,
    #[error("too many redirects")]
    TooManyRedirects,
    #[error("invalid redirect")]
    InvalidRedirect,
    /// The node could not build its HTTP client: its own failure, not the target's.
    #[error("client unavailable")]
    Client(String),
}

impl Unreached {
    fn from_request(error: &reqwest::Error) -> Self {
        match (error.is_connect(), error.is_timeout()) {
            (true, true) => Self::ConnectTimeout,
            (true, false) => Self::Connection,
            (false, true) => Self::Timeout,
            (false, false) => Self::Request,
        }
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)
}

const fn v6(segments: [u16; 8], prefix: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix)
}

/// IPv4 ranges the check never reaches unless allowed, each with the class it names in the log.
/// The metadata services come before the ranges that hold them, so the log names them.
const REFUSED_V4: &[(Ipv4Net, &str)] = &[
    (v4(169, 254, 169, 254, 32), "cloud metadata"),
    (v4(100, 100, 100, 200, 32), "cloud metadata"),
    (v4(0, 0, 0, 0, 8), "this network"),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(10, 0, 0, 0, 8), "private"),
    (v4(172, 16, 0, 0, 12), "private"),
    (v4(192, 168, 0, 0, 16), "private"),
    (v4(100, 64, 0, 0, 10), "shared address space (CGNAT)"),
    (v4(169, 254, 0, 0, 16), "link-local"),
    (v4(192, 0, 0, 0, 24), "IETF protocol assignments"),
    (v4(192, 0, 2, 0, 24), "documentation"),
    (v4(198, 51, 100, 0, 24), "documentation"),
    (v4(203, 0, 113, 0, 24), "documentation"),
    (v4(198, 18, 0, 0, 15), "benchmarking"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(255, 255, 255, 255, 32), "broadcast"),
    (v4(240, 0, 0, 0, 4), "reserved"),
];

const REFUSED_V6: &[(Ipv6Net, &str)] = &[
    (v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128), "cloud metadata"),
    (v6([0; 8], 128), "unspecified"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    // The operator's own translator (RFC 8215). Where it puts the IPv4 address depends on the
    // prefix length the operator chose, which the node cannot know, so the range is refused whole.
    (v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), "local-use NAT64"),
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), "site-local"),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "unique-local"),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
    (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), "documentation"),
];

const IPV4_MAPPED: Ipv6Net = v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96);
const IPV4_COMPATIBLE: Ipv6Net = v6([0; 8], 96);
const NAT64_WELL_KNOWN: Ipv6Net = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const SIX_TO_FOUR: Ipv6Net = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);

/// The class that refuses `ip` (none when the check may reach it). A range in `allow` lets an
/// address through whatever its class, matched against the address and any IPv4 it carries.
fn refusal(ip: IpAddr, allow: &[IpNet]) -> Option<&'static str> {
    let embedded = match ip {
        IpAddr::V4(_) => None,
        IpAddr::V6(ip) => embedded_ipv4(ip),
    };
    let allowed = |ip: IpAddr| allow.iter().any(|net| net.contains(&ip));
    if allowed(ip) || embedded.is_some_and(|v4| allowed(v4.into())) {
        return None;
    }
    let class = match ip {
        IpAddr::V4(ip) => REFUSED_V4.iter().find(|(net, _)| net.contains(&ip)).map(|(_, class)| *class),
        IpAddr::V6(ip) => REFUSED_V6.iter().find(|(net, _)| net.contains(&ip)).map(|(_, class)| *class),
    };
    class.or_else(|| refusal(embedded?.into(), &[]))
}

/// The IPv4 address an IPv6 address stands for, in the forms a host or a translator turns into
/// an IPv4 connection, so a refused IPv4 address cannot be reached dressed as IPv6.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = ip.octets();
    // `::` and `::1` lie in the IPv4-compatible range but are IPv6's own (RFC 4291).
    let compatible = IPV4_COMPATIBLE.contains(&ip) && !matches!(ip, Ipv6Addr::UNSPECIFIED | Ipv6Addr::LOCALHOST);
    if IPV4_MAPPED.contains(&ip) || compatible || NAT64_WELL_KNOWN.contains(&ip) {
        Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    } else if SIX_TO_FOUR.contains(&ip) {
        Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str, allow: &[&str]) -> Option<&'static str> {
        let allow: Vec<IpNet> = allow.iter().map(|net| net.parse().unwrap()).collect();
        refusal(ip.parse().unwrap(), &allow)
    }

    #[test]
    fn the_guard_refuses_every_class_inside_the_operators_network() {
        for (ip, class) in [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("::1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.1.1", "link-local"),
            ("fe80::1", "link-local"),
            ("fec0::1", "site-local"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("100.64.0.1", "shared address space (CGNAT)"),
            ("100.127.255.255", "shared address space (CGNAT)"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("0.0.0.0", "this network"),
            ("0.1.2.3", "this network"),
            ("::", "unspecified"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.1", "documentation"),
            ("203.0.113.1", "documentation"),
            ("2001:db8::1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("240.0.0.1", "reserved"),
            ("192.0.0.8", "IETF protocol assignments"),
            ("169.254.169.254", "cloud metadata"),
            ("fd00:ec2::254", "cloud metadata"),
            ("100.100.100.200", "cloud metadata"),
            // IPv4 dressed as IPv6.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            ("::10.0.0.1", "private"),
            ("64:ff9b::10.0.0.1", "private"),
            ("64:ff9b::a9fe:a9fe", "cloud metadata"),
            ("64:ff9b:1::8.8.8.8", "local-use NAT64"),
            ("64:ff9b:1:7f00:1::", "local-use NAT64"),
            ("2002:7f00:1::", "loopback"),
            ("2002:a9fe:a9fe::1", "cloud metadata"),
        ] {
            assert_eq!(refused(ip, &[]), Some(class), "{ip}");
        }
    }

    #[test]
    fn the_guard_lets_public_addresses_through() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ] {
            assert_eq!(refused(ip, &[]), None, "{ip}");
        }
    }

    #[test]
    fn an_allowed_range_lets_its_addresses_through_whatever_their_class() {
        assert_eq!(refused("10.1.2.3", &["10.0.0.0/8"]), None);
        assert_eq!(refused("127.0.0.1", &["127.0.0.1/32"]), None);
        assert_eq!(refused("fd00::5", &["fd00::/8"]), None);
        // Matched against the IPv4 an IPv6 address carries, too.
        assert_eq!(refused("::ffff:10.1.2.3", &["10.0.0.0/8"]), None);
        assert_eq!(refused("64:ff9b::10.1.2.3", &["10.0.0.0/8"]), None);
        // Only the range given.
        assert_eq!(refused("10.1.2.3", &["10.0.0.0/16"]), Some("private"));
        assert_eq!(refused("127.0.0.2", &["127.0.0.1/32"]), Some("loopback"));
        assert_eq!(refused("169.254.169.254", &["10.0.0.0/8"]), Some("cloud metadata"));
        // IPv6's own loopback and unspecified addresses carry no IPv4 an IPv4 range could allow.
        assert_eq!(refused("::1", &["0.0.0.0/0"]), Some("loopback"));
        assert_eq!(refused("::", &["0.0.0.0/0"]), Some("unspecified"));
    }

    async fn answer(payload: &str) -> Result<Answer, ChallengeError> {
        EndpointReachable::new(&ChallengeSettings::default()).answer(Payload::from_json(payload.to_owned())).await
    }

    #[tokio::test]
    async fn payloads_other_than_an_http_url_are_refused_with_what_was_expected() {
        for (payload, expected) in [
            (r#"{"url": "https://example.com"}"#, "expected a URL string such as"),
            ("null", "expected a URL string such as"),
            (r#""not a url""#, "is not a URL"),
            (r#""ftp://example.com/file""#, "the scheme is `ftp`"),
            (r#""file:///etc/passwd""#, "the scheme is `file`"),
            (r#""http://user:pw@example.com/""#, "user name or password"),
            (r#""https://user@example.com/""#, "user name or password"),
        ] {
            let error = answer(payload).await.unwrap_err();
            assert!(matches!(error, ChallengeError::InvalidPayload { challenge: NAME, .. }), "{payload}: {error}");
            assert!(error.to_string().contains(expected), "{payload}: {error}");
        }
    }

    #[tokio::test]
    async fn a_refused_target_answers_that_and_nothing_more() {
        for url in [
            "http://127.0.0.1:1/",
            "http://[::1]/",
            "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
            // The URL parser reads these hosts as the IPv4 addresses browsers do.
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0251.0376.0251.0376/",
        ] {
            let answer = answer(&format!("\"{url}\"")).await.unwrap();
            assert_eq!(answer.json, serde_json::json!({"reachable": false, "error": "target not allowed"}), "{url}");
        }
    }
}
