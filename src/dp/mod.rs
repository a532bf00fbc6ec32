//! Distributed differential privacy: the encoding each party applies before
//! secure aggregation, the noise shares (exact discrete Gaussians from
//! opendp), the accountants and the privacy plan a policy implies.
//!
//! No floating-point noise is drawn anywhere: noise is integer from opendp's
//! exact sampler; floating point only carries the data (clipping, rotation,
//! scaling) and the accounting.

pub mod accountant;
pub mod encode;
pub mod noise;
pub mod plan;
pub mod rotation;
