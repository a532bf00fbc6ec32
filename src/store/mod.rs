//! Durable state in SQLite (WAL, fsync on every commit).

pub mod ledger;
pub mod log;
pub mod service;

pub use ledger::{LedgerError, PrivacyLedger};
