//! The encoding each party applies before secure aggregation, and the
//! coordinator's decoding of the unmasked sum.
//!
//! Party: flatten → (optional) randomized Hadamard rotation from the round's
//! public seed → clip the L2 norm to `c` → scale by `1/γ` → conditional
//! randomized rounding to integers → add the party's discrete Gaussian noise
//! share → wrap to `[0, 2^bits)`. Coordinator: unwrap to signed → times γ →
//! inverse rotation.

use rand_core::{CryptoRng, RngCore};

use super::noise::{DiscreteGaussianShare, NoiseError};
use super::plan::{rounded_sensitivity, PrivacyPlan};
use super::rotation;

/// Everything both sides need to encode and decode one task of one round.
#[derive(Clone, Debug)]
pub struct EncodingScheme {
    pub dimension: usize,
    /// Length on the wire: `dimension`, or the next power of two if rotated.
    pub padded: usize,
    pub clip_norm: f64,
    pub gamma: f64,
    pub bits: u8,
    /// Public seed of this round's rotation; `None` without rotation.
    pub rotation_seed: Option<[u8; 32]>,
    /// Rounded vectors are redrawn until their squared norm is at most this.
    pub rounding_bound_sq: f64,
}

#[derive(Debug)]
pub enum EncodeError {
    WrongDimension {
        expected: usize,
        got: usize,
    },
    NonFinite {
        index: usize,
    },
    Noise(NoiseError),
    /// Conditional rounding failed to land inside its bound (probability
    /// below 1e-30 for a correct scheme).
    Rounding,
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::WrongDimension { expected, got } => {
                write!(f, "update has {got} values, the model has {expected}")
            }
            EncodeError::NonFinite { index } => write!(f, "update value {index} is not finite"),
            EncodeError::Noise(e) => e.fmt(f),
            EncodeError::Rounding => f.write_str("randomized rounding did not meet its norm bound"),
        }
    }
}

impl std::error::Error for EncodeError {}

impl EncodingScheme {
    /// The whole-model task of a plan.
    pub fn from_plan(plan: &PrivacyPlan, rotation_seed: Option<[u8; 32]>) -> Self {
        Self::for_task(plan, plan.dimension, plan.clip_norm, rotation_seed)
    }

    /// One task of `dimension` values clipped to `clip_norm`, on the plan's
    /// grid (γ, bits): a strategy's slice of the model, or the whole of it.
    pub fn for_task(
        plan: &PrivacyPlan,
        dimension: usize,
        clip_norm: f64,
        rotation_seed: Option<[u8; 32]>,
    ) -> Self {
        let padded = if rotation_seed.is_some() {
            rotation::padded_len(dimension)
        } else {
            dimension
        };
        let b = rounded_sensitivity(clip_norm / plan.gamma, padded);
        EncodingScheme {
            dimension,
            padded,
            clip_norm,
            gamma: plan.gamma,
            bits: plan.bits,
            rotation_seed,
            rounding_bound_sq: b * b,
        }
    }

    fn modulus_mask(&self) -> u64 {
        if self.bits >= 64 {
            u64::MAX
        } else {
            (1u64 << self.bits) - 1
        }
    }

    /// Rotates (if configured), clips and scales one contribution, then
    /// rounds it to integers. The result's norm is at most the sensitivity.
    pub fn quantize<R: RngCore + CryptoRng>(
        &self,
        x: &[f64],
        rng: &mut R,
    ) -> Result<Vec<i64>, EncodeError> {
        if x.len() != self.dimension {
            return Err(EncodeError::WrongDimension {
                expected: self.dimension,
                got: x.len(),
            });
        }
        if let Some(index) = x.iter().position(|v| !v.is_finite()) {
            return Err(EncodeError::NonFinite { index });
        }
        // The update and every copy of it are wiped once done with.
        let mut v = zeroize::Zeroizing::new(match self.rotation_seed {
            Some(seed) => rotation::rotate(x, seed),
            None => x.to_vec(),
        });
        clip(&mut v, self.clip_norm);
        v.iter_mut().for_each(|a| *a /= self.gamma);
        // Conditional randomized rounding: unbiased per coordinate; redrawn
        // until the norm meets the bound (each draw succeeds with
        // probability at least 1 − β ≈ 0.39).
        for _ in 0..200 {
            let mut r = randomized_round(&v, rng);
            let norm_sq: f64 = r.iter().map(|&a| (a as f64) * (a as f64)).sum();
            if norm_sq <= self.rounding_bound_sq {
                return Ok(r);
            }
            zeroize::Zeroize::zeroize(&mut r);
        }
        Err(EncodeError::Rounding)
    }

    /// Adds the party's noise share and wraps to words mod `2^bits`.
    pub fn finish(
        &self,
        mut sum: Vec<i64>,
        noise: &DiscreteGaussianShare,
    ) -> Result<Vec<u32>, EncodeError> {
        noise.add_to(&mut sum).map_err(EncodeError::Noise)?;
        Ok(self.wrap(&sum))
    }

    /// Words mod `2^bits`; the modular wrap is ours, not opendp's.
    pub fn wrap(&self, v: &[i64]) -> Vec<u32> {
        let mask = self.modulus_mask();
        v.iter().map(|&a| (a as u64 & mask) as u32).collect()
    }

    /// Decodes an unmasked sum: signed in `[−2^(bits−1), 2^(bits−1))`,
    /// times γ, rotated back, padding dropped.
    pub fn decode(&self, sum: &[u32]) -> Vec<f64> {
        let half = 1i64 << (self.bits - 1);
        let modulus = 1i64 << self.bits;
        let signed: Vec<f64> = sum
            .iter()
            .map(|&w| {
                let w = i64::from(w);
                let s = if w >= half { w - modulus } else { w };
                s as f64 * self.gamma
            })
            .collect();
        match self.rotation_seed {
            Some(seed) => rotation::unrotate(&signed, seed, self.dimension),
            None => {
                let mut s = signed;
                s.truncate(self.dimension);
                s
            }
        }
    }
}

/// Scales `v` down so that its L2 norm is at most `c`.
pub fn clip(v: &mut [f64], c: f64) {
    let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
    if norm > c {
        let s = c / norm;
        v.iter_mut().for_each(|a| *a *= s);
    }
}

/// Rounds each coordinate up with probability equal to its fractional part,
/// so `E[round(x)] = x`.
pub fn randomized_round<R: RngCore>(v: &[f64], rng: &mut R) -> Vec<i64> {
    v.iter()
        .map(|&a| {
            let fl = a.floor();
            let frac = a - fl;
            // 53 random bits give a uniform double in [0, 1).
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            fl as i64 + i64::from(u < frac)
        })
        .collect()
}
