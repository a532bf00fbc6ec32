//! Durable state in SQLite (WAL, fsync on every commit).

pub mod ledger;
pub mod log;

pub use ledger::{LedgerError, PrivacyLedger};
