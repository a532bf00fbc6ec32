//! Membership-inference audits for Shroud: attacks over per-record signals,
//! ROC metrics, empirical-ε bounds, the release gate and report writers.
//!
//! This crate depends on no other Shroud crate: it reads scores, not models.
//! Its contents arrive with the audit work; until then it is empty on
//! purpose, so the workspace layout is fixed from the start.
