//! Changes stored with the audit record of the request that made them, committed by one writer
//! task a batch at a time. A change and its record always share a transaction (one commit);
//! changes that arrive while a batch is being written go together in the next transaction, so
//! a busy hub pays one trip to SQLite's thread (two context switches and a hand-over per
//! statement's results) and one commit for many requests instead of one each. Every caller
//! still waits for the commit that holds its change, so nothing acknowledged is ever lost, and
//! a change that fails fails alone: a batch that fails is rolled back and its changes are
//! written again one at a time. The writer runs whether or not the caller still waits, so a
//! REST client gone cannot leave a transaction half-done.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::TryStreamExt;
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Either, Executor, Row};
use tokio::sync::{mpsc, oneshot};

use super::SqliteQuery;
use super::audit::{Head, known_head};
use crate::model::AuditEntry;
use crate::model::audit::{GENESIS, chain};
use crate::store::{StoreError, StoreResult, to_millis};

/// Changes waiting for the writer; a full queue makes callers wait (backpressure).
const QUEUE: usize = 4096;
/// Batches of this many changes or fewer keep their prepared statements.
const KEPT_BATCH: usize = 2;
/// Changes per transaction at most: each binds about 25 arguments, far under SQLite's 32,766.
const MAX_BATCH: usize = 64;

/// One record, stored only if the statement before it changed a row (`changes()` is the row
/// count of the connection's last completed statement) and the trail still ends with the hash
/// bound last. Its row is told from the change's rows by its column's name.
const RECORD_IF_CHANGED: &str = "INSERT INTO audit_log (at, subject, role, action, visit_id, target, outcome, prev_hash, hash) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE changes() = 1 AND COALESCE((SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1), ?) = ? RETURNING id AS audit_id";

/// Binds a change's arguments in order; called again when a failed batch is written anew.
pub(super) type Bind = Box<dyn Fn(SqliteQuery) -> SqliteQuery + Send + Sync>;

/// The rows a change's statements returned, and whether its record was stored with it (if
/// not, the caller appends the record itself).
pub(super) type Committed = (Vec<SqliteRow>, bool);

struct Change {
    /// Its statements, joined: the last returns one row when the change took effect; those
    /// before it may return rows only when it does.
    sql: String,
    /// How many there are: the results are told apart by where each statement's end.
    statements: usize,
    bind: Bind,
    entry: AuditEntry,
    done: oneshot::Sender<StoreResult<Committed>>,
}

/// The one writer of changes with their records.
pub(super) struct Committer {
    queue: mpsc::Sender<Change>,
    /// Transactions written, whatever their outcome.
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the tests"))]
    transactions: Arc<AtomicU64>,
}

impl Committer {
    /// Starts the writer on `pool`; it ends when the committer is dropped and its queue drained.
    pub(super) fn start(pool: SqlitePool, head: Head) -> Committer {
        let (queue, mut pending) = mpsc::channel::<Change>(QUEUE);
        let transactions = Arc::new(AtomicU64::new(0));
        let written = transactions.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let mut head = head.lock().await;
                let changes = std::mem::take(&mut batch);
                written.fetch_add(1, Ordering::Relaxed);
                match write(&pool, &mut head, &changes).await {
                    Ok(results) => {
                        for (change, result) in changes.into_iter().zip(results) {
                            // A caller that stopped waiting needs no answer.
                            let _ = change.done.send(Ok(result));
                        }
                    }
                    Err(_) if changes.len() > 1 => {
                        // One change failed them all: each on its own, so only it fails.
                        for change in changes {
                            written.fetch_add(1, Ordering::Relaxed);
                            let result = write(&pool, &mut head, std::slice::from_ref(&change)).await;
                            let _ = change.done.send(result.map(|mut r| r.remove(0)));
                        }
                    }
                    Err(e) => {
                        let change = changes.into_iter().next().expect("one change");
                        let _ = change.done.send(Err(e));
                    }
                }
            }
        });
        Committer { queue, transactions }
    }

    /// Transactions written so far.
    #[cfg(test)]
    pub(super) fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Stores `change`, one statement each (see [`Change::sql`]), and, if it took effect,
    /// `entry` in the same transaction; returns once that transaction committed.
    pub(super) async fn commit(&self, change: &[&str], bind: Bind, entry: AuditEntry) -> StoreResult<Committed> {
        let (done, committed) = oneshot::channel();
        let change = Change { sql: change.join("; "), statements: change.len(), bind, entry, done };
        self.queue.send(change).await.map_err(|_| gone())?;
        committed.await.map_err(|_| gone())?
    }
}

fn gone() -> StoreError {
    StoreError::Unavailable("the store's writer stopped".into())
}

/// Writes `changes` in one transaction and one trip: `BEGIN`, each change followed by its
/// record, `COMMIT`. The records are chained in order; one whose change did not take effect is
/// not stored, and then neither are the records after it (their guard expects it at the end of
/// the trail), which their callers append apart.
async fn write(pool: &SqlitePool, head: &mut Option<String>, changes: &[Change]) -> StoreResult<Vec<Committed>> {
    let mut conn = pool.acquire().await?;
    let prev = match known_head(&mut conn, head).await {
        Ok(prev) => prev,
        Err(e) => {
            *head = None;
            return Err(e);
        }
    };
    let entries: Vec<AuditEntry> = changes.iter().map(|c| c.entry.clone()).collect();
    let records = chain(&entries, prev);
    let mut sql = String::from("BEGIN; ");
    for change in changes {
        sql.push_str(&change.sql);
        sql.push_str("; ");
        sql.push_str(RECORD_IF_CHANGED);
        sql.push_str("; ");
    }
    sql.push_str("COMMIT");
    // A change alone, or two together, reuse their prepared statements (a few kinds of change
    // make few such texts; preparing them again was 2.6 % of the hub's CPU at 120 visits/s).
    // Longer batches are a new mix each time, and kept they would push those out of the cache.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(changes.len() <= KEPT_BATCH);
    for (change, record) in changes.iter().zip(&records) {
        let e = &record.entry;
        query = (change.bind)(query)
            .bind(to_millis(e.at))
            .bind(e.subject.clone())
            .bind(e.role.clone())
            .bind(e.action.clone())
            .bind(e.visit_id.clone())
            .bind(e.target.clone())
            .bind(e.outcome.clone())
            .bind(record.prev_hash.clone())
            .bind(record.hash.clone())
            .bind(GENESIS)
            .bind(record.prev_hash.clone());
    }
    let results = match run(&mut conn, query).await {
        Ok(results) => results,
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            *head = None;
            return Err(e);
        }
    };
    // Each statement ends with one `Left`: BEGIN's first, then each change's, then COMMIT's.
    let mut results = results.into_iter().skip(1);
    let mut committed = Vec::with_capacity(changes.len());
    let mut stale = false;
    for (change, record) in changes.iter().zip(records) {
        let (mut rows, mut ends) = (Vec::new(), 0);
        while ends <= change.statements {
            match results.next() {
                Some(Either::Left(_)) => ends += 1,
                Some(Either::Right(row)) => rows.push(row),
                None => return Err(crate::store::corrupt("a batch's results ended early")),
            }
        }
        let recorded = rows.last().is_some_and(|row| row.try_column("audit_id").is_ok());
        if recorded {
            rows.pop();
            *head = Some(record.hash);
        } else if !rows.is_empty() {
            // The change took effect, its record did not: the head was stale, or a change
            // before it in the batch stored no record. Read the trail's end again next time.
            stale = true;
        }
        committed.push((rows, recorded));
    }
    if stale {
        *head = None;
    }
    Ok(committed)
}

async fn run(
    conn: &mut SqliteConnection,
    query: SqliteQuery,
) -> StoreResult<Vec<Either<sqlx::sqlite::SqliteQueryResult, SqliteRow>>> {
    Ok(conn.fetch_many(query).try_collect().await?)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use futures_util::future::join_all;

    use crate::model::audit::first_broken;
    use crate::model::{Actor, UsState, Visit, VisitStatus};
    use crate::store::{SqliteStore, Store};

    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    #[tokio::test]
    async fn changes_sent_together_share_a_transaction_each_with_its_record() {
        let store = SqliteStore::in_memory().await.unwrap();
        let admin = Actor { subject: "admin-1".into(), role: "admin" };
        let ids: Vec<String> = (0..20).map(|i| format!("v-{i}")).collect();
        for id in &ids {
            let visit = Visit {
                id: id.clone(),
                state: UsState::parse("WA").unwrap(),
                display_name: "P".into(),
                reason: "r".into(),
                status: VisitStatus::Waiting,
                created_at: at(0),
                estimated_wait_secs: None,
                waited_secs: None,
                provider: None,
                reported_state: None,
            };
            store.insert_visit(&visit, &admin, None).await.unwrap();
        }
        let record = |id: &String| AuditEntry {
            at: at(10),
            subject: "admin-1".into(),
            role: "admin".into(),
            action: "visit.transition".into(),
            visit_id: Some(id.clone()),
            target: None,
            outcome: "ok".into(),
        };
        let records: Vec<AuditEntry> = ids.iter().map(record).collect();
        let before = store.commits.transactions();
        let step = (VisitStatus::Waiting, VisitStatus::Cancelled);
        let moved = join_all(
            ids.iter().zip(&records).map(|(id, r)| store.transition_visit_recorded(id, step, &admin, at(10), r)),
        )
        .await;
        assert!(moved.iter().all(|m| matches!(m, Ok((true, true)))), "{moved:?}");
        let transactions = store.commits.transactions() - before;
        assert!(transactions < 20, "20 changes sent together took {transactions} transactions");
        let trail = store.audit_trail(0, 100).await.unwrap();
        assert_eq!(trail.len(), 20);
        let order: Vec<&str> = trail.iter().filter_map(|r| r.entry.visit_id.as_deref()).collect();
        assert_eq!(order, ids.iter().map(String::as_str).collect::<Vec<_>>(), "chained in the order sent");
        assert!(first_broken(&trail, GENESIS.into()).is_ok());
    }
}
