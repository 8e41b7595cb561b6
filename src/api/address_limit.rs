//! Intakes per client address. Intake is open to anyone (a patient has no token before it), so
//! one address that floods it would fill a state's queue ahead of real patients. Each address
//! gets a bucket of `per_minute` intakes refilled over a minute; IPv6 addresses count by their
//! /64, the block one subscriber is usually given. The block around an address (an IPv4 /24,
//! an IPv6 /48: one site) gets `network_share` addresses' worth (16 by default), so a site
//! cannot multiply its quota by spreading over its addresses. Behind a load balancer the peer is the
//! balancer itself: the client's address is then the last one the balancer appended to the
//! configured header (never an earlier one, which the client wrote and could forge).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::http::HeaderMap;
use axum::serve::IncomingStream;

use crate::error::{ErrorCode, HubError};
use crate::gateway::read_ahead::ReadAheadListener;
use crate::live::{AddressKey, AddressQuota, LiveState};

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
    quota: Option<AddressQuota>,
    /// Lower-case name of the header a trusted load balancer appends the client's address to.
    header: Option<String>,
    /// Where the buckets are: this node's memory, or Redis for the whole cluster (a client the
    /// balancer spreads over nodes gets one quota, not one per node).
    live: Arc<dyn LiveState>,
}

impl AddressLimit {
    /// `per_minute` intakes per address, `network_share` times that per block (at least one).
    pub fn new(per_minute: u32, network_share: u32, header: Option<&str>, live: Arc<dyn LiveState>) -> AddressLimit {
        let share = NonZeroU32::new(network_share).unwrap_or(NonZeroU32::MIN);
        AddressLimit {
            quota: NonZeroU32::new(per_minute)
                .map(|address| AddressQuota { address, block: address.saturating_mul(share) }),
            header: header.map(str::trim).filter(|h| !h.is_empty()).map(str::to_ascii_lowercase),
            live,
        }
    }

    /// Takes one intake from the client's bucket and its block's: refused `rate_limited` (with
    /// how long until the next one is allowed) when one is empty, `unavailable` when live state
    /// cannot be reached. Allowed when the limit is off or no address is known.
    pub async fn check(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Result<(), HubError> {
        let Some(quota) = self.quota else { return Ok(()) };
        let Some(client) = self.client(peer, headers) else { return Ok(()) };
        match self.live.address_take(key_of(client), quota).await {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => Err(HubError::new(
                ErrorCode::RateLimited,
                "too many intakes from this address or its network; retry later",
            )
            .retry_after(wait.as_secs().max(1))),
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

/// An IPv4 address counts alone, in its /24; an IPv6 one by its /64, in its /48 (an
/// IPv4-mapped one as its IPv4).
fn key_of(ip: IpAddr) -> AddressKey {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            AddressKey { address: IpAddr::V4(v4), block: IpAddr::V4(Ipv4Addr::from(u32::from(v4) & !0xff)) }
        }
        IpAddr::V6(v6) => {
            let prefix = |bits: u32| IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> bits)));
            AddressKey { address: prefix(64), block: prefix(48) }
        }
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
        AddressLimit::new(per_minute, 16, header, Arc::new(MemoryLive::new()))
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
    async fn the_addresses_of_one_block_share_its_sixteen_quotas() {
        let limit = limit(1, None);
        let none = HeaderMap::new();
        for i in 0..16 {
            assert!(limit.check(peer(&format!("2001:db8:7:{i:x}::1")), &none).await.is_ok(), "/64 number {i}");
        }
        let refused = limit.check(peer("2001:db8:7:ff::1"), &none).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited, "a 17th /64 of the same /48");
        assert!(limit.check(peer("2001:db8:8::1"), &none).await.is_ok(), "another /48");

        for i in 0..16 {
            assert!(limit.check(peer(&format!("198.51.100.{i}")), &none).await.is_ok(), "address number {i}");
        }
        let refused = limit.check(peer("198.51.100.250"), &none).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited, "a 17th address of the same /24");
        assert!(limit.check(peer("::ffff:198.51.100.251"), &none).await.is_err(), "IPv4-mapped: the same /24");
        assert!(limit.check(peer("198.51.101.1"), &none).await.is_ok(), "another /24");
    }

    #[tokio::test]
    async fn a_network_holds_as_many_quotas_as_its_share() {
        let limit = AddressLimit::new(2, 3, None, Arc::new(MemoryLive::new()));
        let none = HeaderMap::new();
        for i in 0..3 {
            for _ in 0..2 {
                assert!(limit.check(peer(&format!("203.0.113.{i}")), &none).await.is_ok(), "address number {i}");
            }
        }
        let refused = limit.check(peer("203.0.113.200"), &none).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited, "a fourth address's intake from a share of three");
        assert!(limit.check(peer("203.0.114.1"), &none).await.is_ok(), "another /24");
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
