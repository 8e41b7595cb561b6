//! Intakes per client address. Intake is open to anyone (a patient has no token before it), so
//! one address that floods it would fill a state's queue ahead of real patients. Each address
//! gets a bucket of `per_minute` intakes refilled over a minute; IPv6 addresses count by their
//! /64, the block one subscriber is usually given. Behind a load balancer the peer is the
//! balancer itself: the client's address is then the last one the balancer appended to the
//! configured header (never an earlier one, which the client wrote and could forge).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::http::HeaderMap;
use axum::serve::IncomingStream;

use crate::error::{ErrorCode, HubError};
use crate::gateway::read_ahead::ReadAheadListener;
use crate::live::LiveState;

/// The peer address of a connection, as the listener accepted it.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl<L> axum::extract::connect_info::Connected<IncomingStream<'_, ReadAheadListener<L>>> for PeerAddr
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    fn connect_info(stream: IncomingStream<'_, ReadAheadListener<L>>) -> PeerAddr {
        PeerAddr(*stream.remote_addr())
    }
}

pub struct AddressLimit {
    /// None when the limit is off (`per_minute` 0).
    per_minute: Option<NonZeroU32>,
    /// Lower-case name of the header a trusted load balancer appends the client's address to.
    header: Option<String>,
    /// Where the buckets are: this node's memory, or Redis for the whole cluster (a client the
    /// balancer spreads over nodes gets one quota, not one per node).
    live: Arc<dyn LiveState>,
}

impl AddressLimit {
    pub fn new(per_minute: u32, header: Option<&str>, live: Arc<dyn LiveState>) -> AddressLimit {
        AddressLimit {
            per_minute: NonZeroU32::new(per_minute),
            header: header.map(str::trim).filter(|h| !h.is_empty()).map(str::to_ascii_lowercase),
            live,
        }
    }

    /// Takes one intake from the client's bucket: refused `rate_limited` (with how long until
    /// the next one is allowed) when it is empty, `unavailable` when live state cannot be
    /// reached. Allowed when the limit is off or no address is known.
    pub async fn check(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Result<(), HubError> {
        let Some(per_minute) = self.per_minute else { return Ok(()) };
        let Some(client) = self.client(peer, headers) else { return Ok(()) };
        match self.live.address_take(bucket_of(client), per_minute).await {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => {
                Err(HubError::new(ErrorCode::RateLimited, "too many intakes from this address; retry later")
                    .retry_after(wait.as_secs().max(1)))
            }
            Err(e) => Err(HubError::unavailable(e)),
        }
    }

    /// The client's address: the header's last entry when one is configured and present and
    /// parses, else the peer's.
    fn client(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let appended = self.header.as_deref().and_then(|name| {
            let last = headers.get_all(name).iter().next_back()?.to_str().ok()?;
            last.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
        });
        appended.or(peer.map(|p| p.ip()))
    }
}

/// IPv4 addresses count alone; IPv6 ones by their /64 (an IPv4-mapped one as its IPv4).
fn bucket_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::live::MemoryLive;

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 40000))
    }

    fn limit(per_minute: u32, header: Option<&str>) -> AddressLimit {
        AddressLimit::new(per_minute, header, Arc::new(MemoryLive::new()))
    }

    #[tokio::test]
    async fn an_address_gets_its_quota_and_others_are_not_held_back_by_it() {
        let limit = limit(3, None);
        let none = HeaderMap::new();
        for _ in 0..3 {
            assert!(limit.check(peer("198.51.100.7"), &none).await.is_ok());
        }
        let refused = limit.check(peer("198.51.100.7"), &none).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        let wait = refused.retry_after_secs.unwrap();
        assert!((1..=20).contains(&wait), "one intake back in a third of a minute: {wait} s");
        assert!(limit.check(peer("198.51.100.8"), &none).await.is_ok());
    }

    #[tokio::test]
    async fn ipv6_addresses_of_one_64_share_a_bucket() {
        let limit = limit(1, None);
        let none = HeaderMap::new();
        assert!(limit.check(peer("2001:db8:1:2::1"), &none).await.is_ok());
        assert!(limit.check(peer("2001:db8:1:2:ffff::9"), &none).await.is_err(), "same /64");
        assert!(limit.check(peer("2001:db8:1:3::1"), &none).await.is_ok(), "another /64");
        assert!(limit.check(peer("::ffff:198.51.100.7"), &none).await.is_ok());
        assert!(limit.check(peer("198.51.100.7"), &none).await.is_err(), "an IPv4-mapped address is its IPv4");
    }

    #[tokio::test]
    async fn behind_a_balancer_the_client_is_the_last_address_it_appended() {
        let limit = limit(1, Some("X-Forwarded-For"));
        let balancer = peer("10.0.0.2");
        let mut headers = HeaderMap::new();
        // The client forged the first entry; the balancer appended the real one.
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.50, 192.0.2.10"));
        assert!(limit.check(balancer, &headers).await.is_ok());
        assert!(limit.check(balancer, &headers).await.is_err());
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.50, 192.0.2.11"));
        assert!(limit.check(balancer, &headers).await.is_ok(), "another client behind the same balancer");
        // Without the header the peer counts.
        assert!(limit.check(balancer, &HeaderMap::new()).await.is_ok());
        assert!(limit.check(balancer, &HeaderMap::new()).await.is_err());
    }

    #[tokio::test]
    async fn off_lets_everything_through() {
        let limit = limit(0, None);
        for _ in 0..100 {
            assert!(limit.check(peer("198.51.100.7"), &HeaderMap::new()).await.is_ok());
        }
    }
}
