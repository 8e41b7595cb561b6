//! Read-your-writes over a streaming replica.
//!
//! After every write the store notes the primary's WAL position, taken by a separate statement
//! once the transaction has committed (inside the transaction it would come before the commit
//! record, and a replica that replayed up to it would still miss the row). A read may go to the
//! replica only once the replica has replayed up to the highest position this store noted;
//! it waits for that in short sleeps, up to a bound, then reads from the primary instead.
//!
//! The position is per store instance (per node), which is conservative: a read waits for
//! every write of this node, not only the caller's. With `synchronous_commit` on (the default)
//! `pg_current_wal_lsn()` after the commit returned is at or past the commit record.
//!
//! A replica that did not catch up within the bound is marked lagging: reads then check it
//! once, without waiting, and go to the primary while it is behind, so one slow replica never
//! costs every read the whole wait. The first read that finds it caught up clears the mark.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgPool;
use tokio::time::{Instant, sleep};

use crate::store::{StoreError, StoreResult};

/// How long a read waits for the replica by default before reading from the primary.
const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(500);
const FIRST_PAUSE: Duration = Duration::from_millis(2);
const LONGEST_PAUSE: Duration = Duration::from_millis(50);

/// Where reads went, since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Reads the replica served.
    pub replica_reads: u64,
    /// Reads that went to the primary because the replica was behind or failed.
    pub primary_fallbacks: u64,
}

pub(super) struct ReadRouter {
    replica: Option<PgPool>,
    /// The highest primary WAL position noted after a write of this store; 0 before any.
    last_write: AtomicU64,
    max_wait: Duration,
    lagging: AtomicBool,
    replica_reads: AtomicU64,
    primary_fallbacks: AtomicU64,
}

impl ReadRouter {
    pub fn new(replica: Option<PgPool>) -> ReadRouter {
        ReadRouter {
            replica,
            last_write: AtomicU64::new(0),
            max_wait: DEFAULT_MAX_WAIT,
            lagging: AtomicBool::new(false),
            replica_reads: AtomicU64::new(0),
            primary_fallbacks: AtomicU64::new(0),
        }
    }

    pub fn set_max_wait(&mut self, wait: Duration) {
        self.max_wait = wait;
    }

    pub fn replica(&self) -> Option<&PgPool> {
        self.replica.as_ref()
    }

    pub fn has_replica(&self) -> bool {
        self.replica.is_some()
    }

    pub fn stats(&self) -> ReplicaStats {
        ReplicaStats {
            replica_reads: self.replica_reads.load(Ordering::Relaxed),
            primary_fallbacks: self.primary_fallbacks.load(Ordering::Relaxed),
        }
    }

    /// Notes the primary's WAL position; call it after a write has committed, before the
    /// write returns. Without a replica there is nothing to note.
    pub async fn wrote(&self, primary: &PgPool) -> StoreResult<()> {
        if self.replica.is_none() {
            return Ok(());
        }
        let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text").fetch_one(primary).await?;
        let lsn = parse_lsn(&lsn).ok_or_else(|| StoreError::Corrupt(format!("WAL position {lsn}")))?;
        self.last_write.fetch_max(lsn, Ordering::AcqRel);
        Ok(())
    }

    /// The replica when it holds every write this store made, else `None`: read the primary.
    pub async fn replica_for_read(&self) -> Option<&PgPool> {
        let replica = self.replica.as_ref()?;
        let target = self.last_write.load(Ordering::Acquire);
        if target == 0 {
            self.replica_reads.fetch_add(1, Ordering::Relaxed);
            return Some(replica);
        }
        let wait = if self.lagging.load(Ordering::Relaxed) { Duration::ZERO } else { self.max_wait };
        let deadline = Instant::now() + wait;
        let mut pause = FIRST_PAUSE;
        loop {
            match replayed(replica).await {
                Ok(Some(at)) if at >= target => {
                    self.lagging.store(false, Ordering::Relaxed);
                    self.replica_reads.fetch_add(1, Ordering::Relaxed);
                    return Some(replica);
                }
                // Behind, or not replaying at all (NULL: not a standby): wait or give up.
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "replica position unknown, reading from the primary");
                    self.primary_fallbacks.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                self.lagging.store(true, Ordering::Relaxed);
                self.primary_fallbacks.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }

    /// Counts a read that failed on the replica and was retried on the primary.
    pub fn replica_failed(&self) {
        self.primary_fallbacks.fetch_add(1, Ordering::Relaxed);
    }
}

async fn replayed(replica: &PgPool) -> StoreResult<Option<u64>> {
    let lsn: Option<String> = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn()::text").fetch_one(replica).await?;
    Ok(lsn.as_deref().and_then(parse_lsn))
}

/// `16/B374D848` (high and low 32 bits, in hex) as one number, ordered as PostgreSQL orders
/// `pg_lsn`.
fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let high = u32::from_str_radix(high, 16).ok()?;
    let low = u32::from_str_radix(low, 16).ok()?;
    Some((u64::from(high) << 32) | u64::from(low))
}

#[cfg(test)]
mod tests {
    use super::parse_lsn;

    #[test]
    fn wal_positions_parse_and_order() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert!(parse_lsn("1/0") > parse_lsn("0/FFFFFFFF"));
        assert_eq!(parse_lsn("garbage"), None);
        assert_eq!(parse_lsn("1/xyz"), None);
    }
}
