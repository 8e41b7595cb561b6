//! The audit trail's records and their hash chain. Each record's hash covers its fields and
//! the previous record's hash, so altering, removing or reordering a stored record breaks the
//! chain at that record.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did what to which visit (or state, or caregiver), when, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub subject: String,
    pub role: String,
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visit_id: Option<String>,
    /// What else the action touched: a state code, a caregiver subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `ok`, or the error code of the refusal.
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEntry {
    /// The chain hash of this entry after `prev_hash`. Every field is length-prefixed, so no
    /// two different records hash the same input.
    pub fn chain_hash(&self, prev_hash: &str) -> String {
        let mut h = Sha256::new();
        let at = self.at.timestamp_millis().to_string();
        let fields = [
            prev_hash,
            &at,
            &self.subject,
            &self.role,
            &self.action,
            self.visit_id.as_deref().unwrap_or(""),
            self.target.as_deref().unwrap_or(""),
            &self.outcome,
        ];
        for field in fields {
            h.update((field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// Records for `entries` in order, each chained to the one before and the first to `prev`;
/// ids are left at 0 for the store to fill in.
pub fn chain(entries: &[AuditEntry], mut prev: String) -> Vec<AuditRecord> {
    entries
        .iter()
        .map(|e| {
            let hash = e.chain_hash(&prev);
            let prev_hash = std::mem::replace(&mut prev, hash.clone());
            AuditRecord { id: 0, entry: e.clone(), prev_hash, hash }
        })
        .collect()
}

/// The first record whose link is broken, if any: its `prev_hash` is not the previous
/// record's hash, or its own hash does not match its fields.
pub fn first_broken<'a>(records: impl IntoIterator<Item = &'a AuditRecord>, mut prev: String) -> Result<String, i64> {
    for r in records {
        if r.prev_hash != prev || r.entry.chain_hash(&r.prev_hash) != r.hash {
            return Err(r.id);
        }
        prev = r.hash.clone();
    }
    Ok(prev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Vec<AuditRecord> {
        let entries: Vec<AuditEntry> = (1..=n as i64)
            .map(|id| AuditEntry {
                at: DateTime::from_timestamp(1_800_000_000 + id, 0).unwrap(),
                subject: "dr-1".into(),
                role: "provider".into(),
                action: "visit.claim".into(),
                visit_id: Some(format!("v{id}")),
                target: None,
                outcome: "ok".into(),
            })
            .collect();
        let mut records = chain(&entries, GENESIS.into());
        for (i, r) in records.iter_mut().enumerate() {
            r.id = i as i64 + 1;
        }
        records
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert!(first_broken(&records(5), GENESIS.into()).is_ok());
    }

    #[test]
    fn an_altered_field_or_a_removed_record_is_found() {
        let mut c = records(5);
        c[2].entry.outcome = "forbidden".into();
        assert_eq!(first_broken(&c, GENESIS.into()), Err(3));
        let mut c = records(5);
        c.remove(1);
        assert_eq!(first_broken(&c, GENESIS.into()), Err(3));
    }

    #[test]
    fn a_batch_continues_the_chain_it_follows() {
        let all = records(4);
        let (first, rest) = all.split_at(2);
        let entries: Vec<AuditEntry> = rest.iter().map(|r| r.entry.clone()).collect();
        let continued = chain(&entries, first[1].hash.clone());
        assert_eq!(
            continued.iter().map(|r| &r.hash).collect::<Vec<_>>(),
            rest.iter().map(|r| &r.hash).collect::<Vec<_>>()
        );
        assert_eq!(continued[0].prev_hash, first[1].hash);
    }
}
