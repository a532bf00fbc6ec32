//! The tamper-evident audit log: an append-only table in which every entry
//! holds the SHA-256 of the previous entry, so changing, removing or
//! reordering any entry breaks every hash after it.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::LedgerError;
use super::ledger::PrivacyLedger;
use crate::policy::hex;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    pub seq: i64,
    pub created_at: String,
    pub kind: String,
    pub job: String,
    pub content: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of an entry: SHA-256 over its fields, length-prefixed.
pub fn entry_hash(
    seq: i64,
    created_at: &str,
    kind: &str,
    job: &str,
    content: &str,
    prev_hash: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        seq.to_le_bytes().as_slice(),
        created_at.as_bytes(),
        kind.as_bytes(),
        job.as_bytes(),
        content.as_bytes(),
        prev_hash.as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    hex(&h.finalize())
}

/// Appends an entry and returns it; one transaction, fsynced on commit.
pub fn append(
    conn: &mut Connection,
    kind: &str,
    job: &str,
    content: &str,
) -> Result<LogEntry, LedgerError> {
    let tx = conn.transaction()?;
    let last: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (seq, prev_hash) = match last {
        Some((s, h)) => (s + 1, h),
        None => (1, GENESIS.to_string()),
    };
    let created_at: String =
        tx.query_row("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')", [], |r| {
            r.get(0)
        })?;
    let hash = entry_hash(seq, &created_at, kind, job, content, &prev_hash);
    tx.execute(
        "INSERT INTO audit_log (seq, created_at, kind, job, content, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![seq, created_at, kind, job, content, prev_hash, hash],
    )?;
    tx.commit()?;
    Ok(LogEntry {
        seq,
        created_at,
        kind: kind.into(),
        job: job.into(),
        content: content.into(),
        prev_hash,
        hash,
    })
}

pub fn entries(conn: &Connection) -> Result<Vec<LogEntry>, LedgerError> {
    let mut stmt = conn.prepare(
        "SELECT seq, created_at, kind, job, content, prev_hash, hash FROM audit_log ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(LogEntry {
            seq: r.get(0)?,
            created_at: r.get(1)?,
            kind: r.get(2)?,
            job: r.get(3)?,
            content: r.get(4)?,
            prev_hash: r.get(5)?,
            hash: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Why the chain is broken at an entry.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Break {
    pub seq: i64,
    pub reason: String,
}

/// Checks the whole chain; `Ok(count)` or the first broken entry.
pub fn verify(conn: &Connection) -> Result<Result<usize, Break>, LedgerError> {
    let all = entries(conn)?;
    let mut prev = GENESIS.to_string();
    for (i, e) in all.iter().enumerate() {
        if e.seq != i as i64 + 1 {
            return Ok(Err(Break {
                seq: e.seq,
                reason: format!(
                    "expected entry {} here; entries were removed or reordered",
                    i + 1
                ),
            }));
        }
        if e.prev_hash != prev {
            return Ok(Err(Break {
                seq: e.seq,
                reason: "its previous-entry hash does not match the entry before it".into(),
            }));
        }
        let want = entry_hash(
            e.seq,
            &e.created_at,
            &e.kind,
            &e.job,
            &e.content,
            &e.prev_hash,
        );
        if want != e.hash {
            return Ok(Err(Break {
                seq: e.seq,
                reason: "its contents do not match its hash (the entry was altered)".into(),
            }));
        }
        prev = e.hash.clone();
    }
    Ok(Ok(all.len()))
}

/// The log as the ledger's owner reaches it.
impl PrivacyLedger {
    /// The store's UTC clock, as log entries are dated.
    pub fn clock(&self) -> Result<String, LedgerError> {
        Ok(self
            .conn
            .query_row("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')", [], |r| {
                r.get(0)
            })?)
    }

    /// Appends an entry to the tamper-evident log.
    pub fn log_append(
        &mut self,
        kind: &str,
        job: &str,
        content: &str,
    ) -> Result<LogEntry, LedgerError> {
        append(&mut self.conn, kind, job, content)
    }

    pub fn log_entries(&self) -> Result<Vec<LogEntry>, LedgerError> {
        entries(&self.conn)
    }

    /// `Ok(entries)` when the chain holds, else the first broken entry.
    pub fn log_verify(&self) -> Result<Result<usize, Break>, LedgerError> {
        verify(&self.conn)
    }
}
