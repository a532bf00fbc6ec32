//! The networked service: the HTTP API, request authentication, TLS and
//! metrics. The job logic lives in [`crate::coordinator`] and
//! [`crate::party`]; this module only carries it.

pub mod api;
pub mod auth;
pub mod client;
pub mod metrics;
pub mod server;
pub mod tls;
