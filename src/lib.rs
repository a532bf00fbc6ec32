//! Shroud: federated training for a consortium under secure aggregation and
//! distributed differential privacy.
//!
//! The protocol lives in `shroud-crypto`; this crate joins it with
//! policies, privacy accounting, models and the service. `cli` sits on top
//! and nothing depends on it.

pub mod audit;
pub mod cli;
pub mod compare;
pub mod coordinator;
pub mod data;
pub mod demo;
pub mod dp;
pub mod encoder;
pub mod evaluate;
pub mod job;
pub mod keyfile;
pub mod localnet;
pub mod model;
pub mod modelnet;
pub mod net;
pub mod network;
pub mod party;
pub mod policy;
pub mod release;
pub mod sampling;
pub mod secagg_sim;
pub mod signoff;
pub mod store;
pub mod strategy;
