//! Membership-inference audits for Shroud: metrics over per-record attack
//! scores, empirical-ε lower bounds, the release gate and the report
//! writers.
//!
//! This crate depends on no other Shroud crate: it reads scores (or binned
//! counts of scores), not models. Convention throughout: a **higher score
//! means "more likely a member"**.

pub mod canary;
pub mod epsilon;
pub mod gate;
pub mod noisy;
pub mod report;
pub mod roc;
pub mod stats;
pub mod utility;

pub use gate::{Decision, GateCheck, GateLimits};
pub use roc::Roc;
