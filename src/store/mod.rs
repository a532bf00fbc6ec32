//! Durable state in SQLite (WAL, fsync on every commit).

pub mod ledger;

pub use ledger::{LedgerError, PrivacyLedger};
