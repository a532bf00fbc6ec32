//! The encoding each party applies before secure aggregation, and the
//! coordinator's decoding of the unmasked sum.
//!
//! Party: flatten → (optional) randomized Hadamard rotation from the round's
//! public seed → clip the L2 norm to `c` → scale by `1/γ` → conditional
//! randomized rounding to integers → add the party's discrete Gaussian noise
//! share → wrap to `[0, 2^bits)`. Coordinator: unwrap to signed → times γ →
//! inverse rotation.
//!
//! A task may carry `plain` coordinates after the model's: the audit's
//! canaries, one coordinate each, neither rotated nor padded. A record has
//! nothing there and a canary nothing in the model's coordinates, so each
//! is rounded only where it is non-zero (a zero rounds to zero), which
//! keeps a record's cost independent of the number of canaries.

use rand_core::{CryptoRng, RngCore};

use super::noise::{DiscreteGaussianShare, NoiseError};
use super::plan::{rounded_sensitivity, PrivacyPlan};
use super::rotation;

/// Everything both sides need to encode and decode one task of one round.
#[derive(Clone, Debug)]
pub struct EncodingScheme {
    /// Model coordinates (rotated).
    pub dimension: usize,
    /// Coordinates after them, carried as they are (the canaries).
    pub plain: usize,
    /// Length on the wire: `dimension` (or the next power of two if
    /// rotated) plus `plain`.
    pub padded: usize,
    /// The rotated block's length on the wire.
    pub rotated: usize,
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
        Self::for_task(plan, plan.dimension, 0, plan.clip_norm, rotation_seed)
    }

    /// One task of `dimension` values clipped to `clip_norm`, on the plan's
    /// grid (γ, bits): a strategy's slice of the model, or the whole of it.
    pub fn for_task(
        plan: &PrivacyPlan,
        dimension: usize,
        plain: usize,
        clip_norm: f64,
        rotation_seed: Option<[u8; 32]>,
    ) -> Self {
        let rotated = if rotation_seed.is_some() {
            rotation::padded_len(dimension)
        } else {
            dimension
        };
        let padded = rotated + plain;
        let b = rounded_sensitivity(clip_norm / plan.gamma, padded);
        EncodingScheme {
            dimension,
            plain,
            padded,
            rotated,
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
    /// `x` holds the model's coordinates, optionally followed by the plain
    /// ones (zero when absent).
    pub fn quantize<R: RngCore + CryptoRng>(
        &self,
        x: &[f64],
        rng: &mut R,
    ) -> Result<Vec<i64>, EncodeError> {
        let mut out = vec![0i64; self.padded];
        self.quantize_into(x, rng, &mut out)?;
        Ok(out)
    }

    /// [`EncodingScheme::quantize`], added into `acc` (of the wire length):
    /// only the blocks where `x` is non-zero are rounded and touched.
    pub fn quantize_into<R: RngCore + CryptoRng>(
        &self,
        x: &[f64],
        rng: &mut R,
        acc: &mut [i64],
    ) -> Result<(), EncodeError> {
        if x.len() != self.dimension && x.len() != self.dimension + self.plain {
            return Err(EncodeError::WrongDimension {
                expected: self.dimension,
                got: x.len(),
            });
        }
        if let Some(index) = x.iter().position(|v| !v.is_finite()) {
            return Err(EncodeError::NonFinite { index });
        }
        let (head, tail) = x.split_at(self.dimension.min(x.len()));
        let tail: Vec<(usize, f64)> = tail
            .iter()
            .enumerate()
            .filter(|(_, &v)| v != 0.0)
            .map(|(i, &v)| (i, v))
            .collect();
        self.quantize_parts(head, &tail, rng, acc)
    }

    /// A contribution of `value` in plain coordinate `index` and nothing
    /// else (an audit canary), added into `acc` like
    /// [`EncodingScheme::quantize_into`] would, without spelling out the
    /// zeros.
    pub fn quantize_plain_into<R: RngCore + CryptoRng>(
        &self,
        index: usize,
        value: f64,
        rng: &mut R,
        acc: &mut [i64],
    ) -> Result<(), EncodeError> {
        if index >= self.plain {
            return Err(EncodeError::WrongDimension {
                expected: self.dimension + self.plain,
                got: self.dimension + index + 1,
            });
        }
        if !value.is_finite() {
            return Err(EncodeError::NonFinite {
                index: self.dimension + index,
            });
        }
        self.quantize_parts(&[], &[(index, value)], rng, acc)
    }

    /// Clips, scales, rotates and rounds a contribution given as its model
    /// coordinates (`head`; empty or all zero: untouched) and its non-zero
    /// plain coordinates (`tail`, by index), then adds it into `acc`.
    fn quantize_parts<R: RngCore + CryptoRng>(
        &self,
        head: &[f64],
        tail: &[(usize, f64)],
        rng: &mut R,
        acc: &mut [i64],
    ) -> Result<(), EncodeError> {
        assert_eq!(acc.len(), self.padded, "an accumulator of the wire length");
        let norm = head
            .iter()
            .chain(tail.iter().map(|(_, v)| v))
            .map(|a| a * a)
            .sum::<f64>()
            .sqrt();
        // Clipping and scaling as one factor (the rotation keeps norms).
        let factor = clip_factor(norm, self.clip_norm) / self.gamma;
        // The update and every copy of it are wiped once done with.
        let head_scaled: Option<zeroize::Zeroizing<Vec<f64>>> =
            head.iter().any(|&v| v != 0.0).then(|| {
                let mut v = zeroize::Zeroizing::new(match self.rotation_seed {
                    Some(seed) => rotation::rotate(head, seed),
                    None => head.to_vec(),
                });
                v.iter_mut().for_each(|a| *a *= factor);
                v
            });
        // Conditional randomized rounding: unbiased per coordinate; redrawn
        // until the norm meets the bound (each draw succeeds with
        // probability at least 1 − β ≈ 0.39).
        for _ in 0..200 {
            let mut r = match &head_scaled {
                Some(v) => randomized_round(v, rng),
                None => Vec::new(),
            };
            let t: Vec<(usize, i64)> = tail
                .iter()
                .map(|&(i, a)| (i, round_one(a * factor, rng)))
                .collect();
            let norm_sq: f64 = r
                .iter()
                .chain(t.iter().map(|(_, a)| a))
                .map(|&a| (a as f64) * (a as f64))
                .sum();
            if norm_sq <= self.rounding_bound_sq {
                acc[..r.len()].iter_mut().zip(&r).for_each(|(a, b)| *a += b);
                for (i, a) in t {
                    acc[self.rotated + i] += a;
                }
                zeroize::Zeroize::zeroize(&mut r);
                return Ok(());
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
        let (head, tail) = signed.split_at(self.rotated);
        let mut out = match self.rotation_seed {
            Some(seed) => rotation::unrotate(head, seed, self.dimension),
            None => head[..self.dimension].to_vec(),
        };
        out.extend_from_slice(tail);
        out
    }
}

/// Scales `v` down so that its L2 norm is at most `c`.
pub fn clip(v: &mut [f64], c: f64) {
    let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let s = clip_factor(norm, c);
    if s < 1.0 {
        v.iter_mut().for_each(|a| *a *= s);
    }
}

/// What a vector of L2 norm `norm` is multiplied by to clip it to `c`.
fn clip_factor(norm: f64, c: f64) -> f64 {
    if norm > c {
        c / norm
    } else {
        1.0
    }
}

/// Rounds each coordinate up with probability equal to its fractional part,
/// so `E[round(x)] = x`.
pub fn randomized_round<R: RngCore>(v: &[f64], rng: &mut R) -> Vec<i64> {
    v.iter().map(|&a| round_one(a, rng)).collect()
}

fn round_one<R: RngCore>(a: f64, rng: &mut R) -> i64 {
    let fl = a.floor();
    let frac = a - fl;
    // 53 random bits give a uniform double in [0, 1).
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    fl as i64 + i64::from(u < frac)
}
