//! One node's buckets of intakes per client address (the cluster keeps them in Redis): a
//! keyed rate limiter whose map is swept of the addresses whose buckets are full again, and
//! capped, so a flood from many addresses cannot grow it without bound.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Takes between two sweeps of the addresses whose buckets are full again (forgotten, since
/// they are as good as new): the map holds at most the addresses seen in the last minute, plus
/// these.
const SWEEP_EVERY: u32 = 4096;

/// The most addresses tracked at once (under 100 bytes each). Past it, intakes go through
/// unchecked until a sweep makes room: a flood from that many addresses within a minute would
/// otherwise grow the map without bound, and refusing instead would turn real patients away.
/// The states' queue caps and busy rates still hold.
const MAX_TRACKED: usize = 100_000;

pub struct AddressBuckets {
    /// Made by the first take, with its quota: one node has one setting.
    limiter: OnceLock<DefaultKeyedRateLimiter<IpAddr>>,
    takes: AtomicU32,
    capacity: usize,
    /// Set while the map is full, so the warning is logged once per episode.
    full: AtomicBool,
}

impl Default for AddressBuckets {
    fn default() -> AddressBuckets {
        AddressBuckets::with_capacity(MAX_TRACKED)
    }
}

impl AddressBuckets {
    fn with_capacity(capacity: usize) -> AddressBuckets {
        AddressBuckets { limiter: OnceLock::new(), takes: AtomicU32::new(0), capacity, full: AtomicBool::new(false) }
    }

    /// Takes one intake from `bucket`'s `per_minute`; `Some(wait)` when it is empty.
    pub fn take(&self, bucket: IpAddr, per_minute: NonZeroU32) -> Option<Duration> {
        let limiter = self.limiter.get_or_init(|| RateLimiter::keyed(Quota::per_minute(per_minute)));
        if self.takes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
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
            return None;
        }
        limiter.check_key(&bucket).err().map(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// How many addresses are tracked now.
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
        let buckets = AddressBuckets::default();
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
        let buckets = AddressBuckets::with_capacity(8);
        for i in 0..7 {
            assert_eq!(buckets.take(ip(i), per_minute(1)), None);
        }
        assert!(buckets.take(ip(0), per_minute(1)).is_some(), "tracked and spent");
        assert_eq!(buckets.take(ip(7), per_minute(1)), None);
        assert_eq!(buckets.take(ip(100), per_minute(1)), None, "full: intakes pass unchecked");
        assert_eq!(buckets.take(ip(0), per_minute(1)), None);
        assert_eq!(buckets.tracked(), 8, "nothing added past the capacity");

        // Buckets refilled in the meantime are swept, and addresses are checked again.
        let buckets = AddressBuckets::with_capacity(8);
        for i in 0..8 {
            assert_eq!(buckets.take(ip(i), per_minute(1_000_000)), None);
        }
        std::thread::sleep(Duration::from_millis(5));
        for _ in 8..SWEEP_EVERY {
            assert_eq!(buckets.take(ip(100), per_minute(1_000_000)), None);
        }
        assert!(buckets.tracked() <= 1, "{} addresses still tracked after the sweep", buckets.tracked());
    }
}
