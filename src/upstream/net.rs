//! Upstream addressing: asynchronous, cached DNS and pingora peers.
//!
//! `HttpPeer::new("host:port")` would resolve with blocking `getaddrinfo` on a runtime thread and
//! panic when resolution fails, so peers are always built from a `SocketAddr` resolved here.

use crate::config::{Timeouts, UpstreamUrl};
use parking_lot::Mutex;
use pingora::upstreams::peer::HttpPeer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a resolved address is reused. Short enough to follow DNS-based failover of hosted
/// APIs, long enough that lookups are rare next to requests.
const DNS_TTL: Duration = Duration::from_secs(30);
/// How long a pooled upstream connection may idle; below the ~60 s keep-alive of common LBs so
/// the gateway, not the peer, closes it.
pub const POOL_IDLE: Duration = Duration::from_secs(50);

/// Addresses of one `(host, port)` and when they were looked up.
type Resolved = (Vec<SocketAddr>, Instant);

#[derive(Default)]
pub struct Resolver {
    cache: Mutex<HashMap<(String, u16), Resolved>>,
}

impl Resolver {
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = (host.to_owned(), port);
        if let Some((addrs, at)) = self.cache.lock().get(&key) {
            if at.elapsed() < DNS_TTL {
                if let Some(a) = addrs.first() {
                    return Ok(*a);
                }
            }
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        // Prefer IPv4: many sidecar environments have no IPv6 route even when AAAA exists.
        let mut ordered: Vec<SocketAddr> =
            found.iter().copied().filter(SocketAddr::is_ipv4).collect();
        ordered.extend(found.iter().copied().filter(SocketAddr::is_ipv6));
        let first = *ordered
            .first()
            .ok_or_else(|| format!("cannot resolve {host}: no addresses"))?;
        self.cache.lock().insert(key, (ordered, Instant::now()));
        Ok(first)
    }
}

/// A peer for one upstream call: TLS with SNI and hostname verification when the URL is https.
pub fn peer(url: &UpstreamUrl, addr: SocketAddr, timeouts: &Timeouts) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, url.tls, url.host.clone());
    peer.options.connection_timeout = Some(timeouts.connect);
    peer.options.total_connection_timeout = Some(timeouts.connect);
    peer.options.idle_timeout = Some(POOL_IDLE);
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_ip_literals_and_localhost() {
        let r = Resolver::default();
        assert_eq!(
            r.resolve("127.0.0.1", 80).await.unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(r.resolve("localhost", 81).await.unwrap().port(), 81);
        assert!(r.resolve("no-such-host.invalid", 80).await.is_err());
    }
}
