//! Floating-point draws for data handling and training — partitions,
//! initial weights, Poisson sampling, canaries, simulated dropouts. Never
//! for DP noise, which is integer and comes from opendp.

use rand_chacha::rand_core::RngCore;

/// Uniform in the open interval (0, 1): never zero, so logs are finite.
pub fn uniform_open(rng: &mut impl RngCore) -> f64 {
    ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Standard normal (Box–Muller).
pub fn standard_normal(rng: &mut impl RngCore) -> f64 {
    let (u1, u2) = (uniform_open(rng), uniform_open(rng));
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// True with probability `p`, from 53 random bits.
pub fn bernoulli(rng: &mut impl RngCore, p: f64) -> bool {
    ((rng.next_u64() >> 11) as f64) < p * (1u64 << 53) as f64
}

/// A fair coin.
pub fn fair_coin(rng: &mut impl RngCore) -> bool {
    rng.next_u32() & 1 == 1
}
