//! Intakes per client address. Intake is open to anyone (a patient has no token before it), so
//! one address that floods it would fill a state's queue ahead of real patients. Each address
//! gets a bucket of `per_minute` intakes refilled over a minute; IPv6 addresses count by their
//! /64, the block one subscriber is usually given. Behind a load balancer the peer is the
//! balancer itself: the client's address is then the last one the balancer appended to the
//! configured header (never an earlier one, which the client wrote and could forge).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::serve::IncomingStream;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::gateway::read_ahead::ReadAheadListener;

/// Checks between two sweeps of the addresses whose buckets are full again (forgotten, since
/// they are as good as new): the map holds at most the addresses seen in the last minute, plus
/// these.
const SWEEP_EVERY: u32 = 4096;

/// The most addresses tracked at once (under 100 bytes each). Past it, intakes go through
/// unchecked until a sweep makes room: a flood from that many addresses within a minute would
/// otherwise grow the map without bound, and refusing instead would turn real patients away.
/// The states' queue caps and busy rates still hold.
const MAX_TRACKED: usize = 100_000;

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
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Lower-case name of the header a trusted load balancer appends the client's address to.
    header: Option<String>,
    checks: AtomicU32,
    capacity: usize,
    /// Set while the map is full, so the warning is logged once per episode.
    full: AtomicBool,
}

impl AddressLimit {
    pub fn new(per_minute: u32, header: Option<&str>) -> AddressLimit {
        AddressLimit::with_capacity(per_minute, header, MAX_TRACKED)
    }

    fn with_capacity(per_minute: u32, header: Option<&str>, capacity: usize) -> AddressLimit {
        let limiter = NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)));
        AddressLimit {
            limiter,
            header: header.map(str::trim).filter(|h| !h.is_empty()).map(str::to_ascii_lowercase),
            checks: AtomicU32::new(0),
            capacity,
            full: AtomicBool::new(false),
        }
    }

    /// Takes one intake from the client's bucket; `Err` says how long until the next one is
    /// allowed. Allowed when the limit is off or no address is known.
    pub fn check(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        let Some(client) = self.client(peer, headers) else { return Ok(()) };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let full = limiter.len() >= self.capacity;
        if self.full.swap(full, Ordering::Relaxed) != full {
            match full {
                true => tracing::warn!(tracked = self.capacity, "intake address limit full: intakes pass unchecked"),
                false => tracing::info!("intake address limit has room again"),
            }
        }
        if full {
            return Ok(());
        }
        limiter.check_key(&bucket_of(client)).map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
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

    /// How many addresses are tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
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

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 40000))
    }

    #[test]
    fn an_address_gets_its_quota_and_others_are_not_held_back_by_it() {
        let limit = AddressLimit::new(3, None);
        let none = HeaderMap::new();
        for _ in 0..3 {
            assert!(limit.check(peer("198.51.100.7"), &none).is_ok());
        }
        let wait = limit.check(peer("198.51.100.7"), &none).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "one intake back in a third of a minute: {wait:?}"
        );
        assert!(limit.check(peer("198.51.100.8"), &none).is_ok());
    }

    #[test]
    fn ipv6_addresses_of_one_64_share_a_bucket() {
        let limit = AddressLimit::new(1, None);
        let none = HeaderMap::new();
        assert!(limit.check(peer("2001:db8:1:2::1"), &none).is_ok());
        assert!(limit.check(peer("2001:db8:1:2:ffff::9"), &none).is_err(), "same /64");
        assert!(limit.check(peer("2001:db8:1:3::1"), &none).is_ok(), "another /64");
    }

    #[test]
    fn behind_a_balancer_the_client_is_the_last_address_it_appended() {
        let limit = AddressLimit::new(1, Some("X-Forwarded-For"));
        let balancer = peer("10.0.0.2");
        let mut headers = HeaderMap::new();
        // The client forged the first entry; the balancer appended the real one.
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.50, 192.0.2.10"));
        assert!(limit.check(balancer, &headers).is_ok());
        assert!(limit.check(balancer, &headers).is_err());
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.50, 192.0.2.11"));
        assert!(limit.check(balancer, &headers).is_ok(), "another client behind the same balancer");
        // Without the header the peer counts.
        assert!(limit.check(balancer, &HeaderMap::new()).is_ok());
        assert!(limit.check(balancer, &HeaderMap::new()).is_err());
    }

    #[test]
    fn off_lets_everything_through_and_tracks_nothing() {
        let limit = AddressLimit::new(0, None);
        for _ in 0..100 {
            assert!(limit.check(peer("198.51.100.7"), &HeaderMap::new()).is_ok());
        }
        assert_eq!(limit.tracked(), 0);
    }

    #[test]
    fn addresses_whose_buckets_refilled_are_forgotten() {
        let limit = AddressLimit::new(1_000_000, None);
        let none = HeaderMap::new();
        for i in 0..SWEEP_EVERY - 1 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(u32::from_be_bytes([10, 1, 0, 0]) + i));
            assert!(limit.check(Some(SocketAddr::new(ip, 1)), &none).is_ok());
        }
        assert_eq!(limit.tracked(), SWEEP_EVERY as usize - 1);
        // A million a minute refills one intake in 60 µs: by the sweep, all are full again.
        std::thread::sleep(Duration::from_millis(5));
        // The check that sweeps.
        assert!(limit.check(peer("198.51.100.7"), &none).is_ok());
        assert!(limit.tracked() <= 1, "{} addresses still tracked after the sweep", limit.tracked());
    }

    #[test]
    fn a_full_map_tracks_no_more_addresses_until_a_sweep_makes_room() {
        let limit = AddressLimit::with_capacity(1, None, 8);
        let none = HeaderMap::new();
        let ip = |i: u32| Some(SocketAddr::new(IpAddr::from(std::net::Ipv4Addr::from(0x0a02_0000 + i)), 1));
        for i in 0..7 {
            assert!(limit.check(ip(i), &none).is_ok());
        }
        assert!(limit.check(ip(0), &none).is_err(), "tracked and spent");
        assert!(limit.check(ip(7), &none).is_ok());
        assert!(limit.check(ip(100), &none).is_ok(), "full: intakes pass unchecked");
        assert!(limit.check(ip(0), &none).is_ok());
        assert_eq!(limit.tracked(), 8, "nothing added past the capacity");

        // Buckets refilled in the meantime are swept, and addresses are checked again.
        let limit = AddressLimit::with_capacity(1_000_000, None, 8);
        for i in 0..8 {
            assert!(limit.check(ip(i), &none).is_ok());
        }
        std::thread::sleep(Duration::from_millis(5));
        for _ in 8..SWEEP_EVERY {
            assert!(limit.check(ip(100), &none).is_ok());
        }
        assert!(limit.tracked() <= 1, "{} addresses still tracked after the sweep", limit.tracked());
    }
}
