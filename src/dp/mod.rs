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
