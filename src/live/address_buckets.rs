//! One node's buckets of intakes per client address and per block of addresses (the cluster
//! keeps them in Redis): keyed rate limiters whose maps are swept of the keys whose buckets are
//! full again, and capped, so a flood from many addresses cannot grow them without bound.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::{AddressKey, AddressQuota};

/// Takes between two sweeps of the keys whose buckets are full again (forgotten, since they
/// are as good as new): a map holds at most the keys seen in the last minute, plus these.
const SWEEP_EVERY: u32 = 4096;

/// The most keys each map tracks at once (under 100 bytes each). Past it, that map's check is
/// skipped until a sweep makes room: a flood from that many addresses within a minute would
/// otherwise grow it without bound, and refusing instead would turn real patients away. A full
/// map of addresses still leaves the blocks checked (an IPv6 /48 spreading over its /64s fills
/// the first, not the second); past both, the states' queue caps and busy rates still hold.
const MAX_TRACKED: usize = 100_000;

pub struct AddressBuckets {
    addresses: Buckets,
    blocks: Buckets,
}

impl Default for AddressBuckets {
    fn default() -> AddressBuckets {
        AddressBuckets::with_capacity(MAX_TRACKED)
    }
}

impl AddressBuckets {
    fn with_capacity(capacity: usize) -> AddressBuckets {
        AddressBuckets { addresses: Buckets::new("addresses", capacity), blocks: Buckets::new("blocks", capacity) }
    }

    /// Takes one intake from the address's bucket, then from its block's; `Some(wait)` when
    /// one is empty.
    pub fn take(&self, key: AddressKey, quota: AddressQuota) -> Option<Duration> {
        self.addresses.take(key.address, quota.address).or_else(|| self.blocks.take(key.block, quota.block))
    }
}

struct Buckets {
    /// What is counted, for the log.
    what: &'static str,
    /// Made by the first take, with its quota: one node has one setting.
    limiter: OnceLock<DefaultKeyedRateLimiter<IpAddr>>,
    takes: AtomicU32,
    capacity: usize,
    /// Set while the map is full, so the warning is logged once per episode.
    full: AtomicBool,
}

impl Buckets {
    fn new(what: &'static str, capacity: usize) -> Buckets {
        Buckets { what, limiter: OnceLock::new(), takes: AtomicU32::new(0), capacity, full: AtomicBool::new(false) }
    }

    /// Takes one intake from `key`'s bucket of `per_minute`; `Some(wait)` when it is empty.
    fn take(&self, key: IpAddr, per_minute: NonZeroU32) -> Option<Duration> {
        let limiter = self.limiter.get_or_init(|| RateLimiter::keyed(Quota::per_minute(per_minute)));
        if self.takes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let full = limiter.len() >= self.capacity;
        if self.full.swap(full, Ordering::Relaxed) != full {
            match full {
                true => {
                    tracing::warn!(tracked = self.capacity, what = self.what, "intake address limit full: not checked")
                }
                false => tracing::info!(what = self.what, "intake address limit has room again"),
            }
        }
        if full {
            return None;
        }
        limiter.check_key(&key).err().map(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// How many keys are tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.limiter.get().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::from(Ipv4Addr::from(0x0a02_0000 + i))
    }

    fn per_minute(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn addresses_whose_buckets_refilled_are_forgotten() {
        let buckets = Buckets::new("addresses", MAX_TRACKED);
        for i in 0..SWEEP_EVERY - 1 {
            assert_eq!(buckets.take(ip(i), per_minute(1_000_000)), None);
        }
        assert_eq!(buckets.tracked(), SWEEP_EVERY as usize - 1);
        // A million a minute refills one intake in 60 µs: by the sweep, all are full again.
        std::thread::sleep(Duration::from_millis(5));
        // The take that sweeps.
        assert_eq!(buckets.take(ip(100_000), per_minute(1_000_000)), None);
        assert!(buckets.tracked() <= 1, "{} addresses still tracked after the sweep", buckets.tracked());
    }

    #[test]
    fn a_full_map_tracks_no_more_addresses_until_a_sweep_makes_room() {
        let buckets = Buckets::new("addresses", 8);
        for i in 0..7 {
            assert_eq!(buckets.take(ip(i), per_minute(1)), None);
        }
        assert!(buckets.take(ip(0), per_minute(1)).is_some(), "tracked and spent");
        assert_eq!(buckets.take(ip(7), per_minute(1)), None);
        assert_eq!(buckets.take(ip(100), per_minute(1)), None, "full: intakes pass unchecked");
        assert_eq!(buckets.take(ip(0), per_minute(1)), None);
        assert_eq!(buckets.tracked(), 8, "nothing added past the capacity");

        // Buckets refilled in the meantime are swept, and addresses are checked again.
        let buckets = Buckets::new("addresses", 8);
        for i in 0..8 {
            assert_eq!(buckets.take(ip(i), per_minute(1_000_000)), None);
        }
        std::thread::sleep(Duration::from_millis(5));
        for _ in 8..SWEEP_EVERY {
            assert_eq!(buckets.take(ip(100), per_minute(1_000_000)), None);
        }
        assert!(buckets.tracked() <= 1, "{} addresses still tracked after the sweep", buckets.tracked());
    }

    #[test]
    fn a_full_map_of_addresses_still_checks_their_blocks() {
        let buckets = AddressBuckets::with_capacity(8);
        let quota = AddressQuota { address: per_minute(1), block: per_minute(4) };
        let block = |b: u32| IpAddr::from(Ipv4Addr::from(0x0a02_0000 + (b << 8)));
        let from = |b: u32, i: u32| AddressKey {
            address: IpAddr::from(Ipv4Addr::from(0x0a02_0000 + (b << 8) + i)),
            block: block(b),
        };
        for i in 0..4 {
            assert_eq!(buckets.take(from(0, i), quota), None, "block 0, address {i}");
        }
        for i in 0..3 {
            assert_eq!(buckets.take(from(1, i), quota), None, "block 1, address {i}");
        }
        let spent = buckets.take(from(1, 0), quota).expect("the address spent its one");
        assert!(spent > Duration::from_secs(50), "refused by the address, not its block: {spent:?}");
        assert_eq!(buckets.take(from(1, 3), quota), None, "the block's fourth");
        assert_eq!(buckets.addresses.tracked(), 8, "the map of addresses is full");

        let refused = buckets.take(from(0, 200), quota).expect("a new address in a spent block is refused");
        assert!(
            refused > Duration::from_secs(10) && refused <= Duration::from_secs(15),
            "a quarter of a minute: {refused:?}"
        );
        assert_eq!(buckets.take(from(2, 1), quota), None, "another block");
        assert_eq!(buckets.take(from(2, 2), quota), None);
        assert_eq!(buckets.take(from(2, 2), quota), None, "addresses are not checked while their map is full");
        assert_eq!(buckets.take(from(2, 3), quota), None);
        assert!(buckets.take(from(2, 4), quota).is_some(), "but their blocks are: four taken");
    }
}
