//! Distributed differential privacy: the encoding each party applies before
//! secure aggregation, the noise shares (exact discrete Gaussians), the
//! accountants and the privacy plan a policy implies.
//!
//! No floating-point noise is drawn anywhere: noise is integer from an exact
//! integer-arithmetic sampler (`gaussian`), checked against opendp's in the
//! tests; opendp remains the certified accountant. Floating point only
//! carries the data (clipping, rotation, scaling) and the accounting.

pub mod accountant;
pub mod encode;
pub mod gaussian;
pub mod noise;
pub mod plan;
pub mod rotation;
pub mod statistics;

/// Runs `f`, which calls into opendp, with no other opendp call running.
///
/// opendp's arithmetic silences the process's panic hook around some
/// operations by swapping it out and back; two threads doing so at once can
/// leave the silent hook installed for good, after which every panic in the
/// process prints nothing. Serialising the calls keeps the swaps nested.
pub(crate) fn with_opendp<R>(f: impl FnOnce() -> R) -> R {
    static OPENDP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = OPENDP.lock().unwrap_or_else(|e| e.into_inner());
    f()
}
