//! Durable state in SQLite (WAL, fsync on every commit).

pub mod error;
pub mod ledger;
pub mod log;
mod schema;
pub mod service;

pub use error::LedgerError;
pub use ledger::PrivacyLedger;
