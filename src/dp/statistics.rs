//! Statistics sums: one-off noisy secure sums of summary statistics (class
//! counts, feature moments) that a strategy needs besides its updates —
//! FedImpres matches its impressions to them.
//!
//! The vector is a concatenation of blocks. One unit of privacy (a record;
//! a party under party-level DP) moves block `b` by at most `bound_b` in
//! L2: the encoder clips each record's block to it (a party's whole vector
//! under party-level DP), so the bound holds whatever a strategy hands it.
//! A party sums its clipped vectors, divides block `b` by its grid step
//! `γ_b = bound_b / (GRID·√width_b)` and rounds to the nearest integer.
//! Rounding moves each coordinate by less than one step, so one unit moves
//! the rounded block by at most `GRID·√w + √w` steps: the sensitivity the
//! noise is sized for. Each block gets an equal part of the sum's ρ and
//! each party adds its share of the block's discrete Gaussian, as the
//! audit's counts do.

use serde::Serialize;
use zeroize::Zeroizing;

use super::gaussian::NoiseSeed;
use super::noise::DiscreteGaussianShare;
use crate::policy::{Policy, StrategyKind};

/// Bits of a statistics word (sums mod 2^32).
pub const STATISTICS_BITS: u8 = 32;

/// Grid steps per clip bound, per √width: rounding widens a block's
/// sensitivity by 1/GRID.
const GRID: f64 = 64.0;

/// One block of a statistics vector.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatisticsBlock {
    pub name: String,
    pub width: usize,
    /// L2 bound of one unit's contribution to the block.
    pub bound: f64,
}

impl StatisticsBlock {
    /// The grid step: one integer unit is worth γ.
    pub fn gamma(&self) -> f64 {
        self.bound / (GRID * (self.width as f64).sqrt())
    }

    /// L2 sensitivity of the rounded block to one unit, in grid steps.
    pub fn sensitivity(&self) -> f64 {
        (GRID + 1.0) * (self.width as f64).sqrt()
    }
}

/// The statistics a policy's strategy sums: empty for strategies without.
///
/// FedImpres: each record's one-hot class (bound 1), its features clamped
/// to ±b (d features: bound b·√d) and their squares (bound b²·√d).
pub fn blocks(policy: &Policy) -> Vec<StatisticsBlock> {
    let s = &policy.strategy;
    match s.kind {
        StrategyKind::Fedimpres { feature_bound, .. } => {
            let d = s.inputs;
            let root = (d as f64).sqrt();
            vec![
                StatisticsBlock {
                    name: "class counts".into(),
                    width: s.classes,
                    bound: 1.0,
                },
                StatisticsBlock {
                    name: "feature sums".into(),
                    width: d,
                    bound: feature_bound * root,
                },
                StatisticsBlock {
                    name: "feature square sums".into(),
                    width: d,
                    bound: feature_bound * feature_bound * root,
                },
            ]
        }
        StrategyKind::Fstcbdg { .. } => {
            let e = s.encoder.as_ref().map_or(0, |e| e.encoder.dimension());
            // A record's pseudo-label q (‖q‖ ≤ 1) times its unit-length
            // embedding, and q itself.
            vec![
                StatisticsBlock {
                    name: "pseudo-label-weighted embedding sums".into(),
                    width: s.classes * e,
                    bound: 1.0,
                },
                StatisticsBlock {
                    name: "pseudo-label counts".into(),
                    width: s.classes,
                    bound: 1.0,
                },
            ]
        }
        _ => Vec::new(),
    }
}

/// The statistics sums a job under `policy` releases, each charged once:
/// FedImpres' one (however many attempts carry it), or each of
/// FST-CBDG's prototype refreshes.
pub fn sums(policy: &Policy) -> u32 {
    match policy.strategy.kind {
        StrategyKind::Fedimpres { .. } => 1,
        StrategyKind::Fstcbdg {
            prototype_refresh_rounds: r,
            ..
        } if r > 0 => policy.privacy.rounds.saturating_sub(1) / r,
        _ => 0,
    }
}

/// Which of the job's statistics releases a statistics sum in `round`
/// is: FedImpres' attempts are all its one release (0); each FST-CBDG
/// refresh is its own (its round).
pub fn slot(policy: &Policy, round: u32) -> u32 {
    match policy.strategy.kind {
        StrategyKind::Fedimpres { .. } => 0,
        _ => round,
    }
}

/// Total width of the blocks.
pub fn width(blocks: &[StatisticsBlock]) -> usize {
    blocks.iter().map(|b| b.width).sum()
}

/// Scales `v` (one block) down to L2 norm `bound` if it is longer.
fn clip(v: &mut [f64], bound: f64) {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > bound {
        let k = bound / norm;
        v.iter_mut().for_each(|x| *x *= k);
    } else if !norm.is_finite() {
        v.iter_mut().for_each(|x| *x = 0.0);
    }
}

/// A party's input: each vector of `vectors` (one per record, or the
/// party's one) clipped block by block and summed, rounded to each block's
/// grid, its share of each block's noise (`stds`, in grid steps; none when
/// empty) added from `seed(k)` for block `k`, wrapped to 32-bit words.
pub fn party_input(
    vectors: &[Vec<f64>],
    blocks: &[StatisticsBlock],
    stds: &[f64],
    seed: impl Fn(usize) -> NoiseSeed,
) -> Result<Vec<u32>, String> {
    let total = width(blocks);
    let mut sum: Zeroizing<Vec<f64>> = Zeroizing::new(vec![0.0; total]);
    let mut row: Zeroizing<Vec<f64>> = Zeroizing::new(vec![0.0; total]);
    for v in vectors {
        if v.len() != total {
            return Err(format!(
                "a statistics vector has {} values, the sum {total}",
                v.len()
            ));
        }
        row.copy_from_slice(v);
        let mut at = 0;
        for b in blocks {
            clip(&mut row[at..at + b.width], b.bound);
            at += b.width;
        }
        sum.iter_mut().zip(row.iter()).for_each(|(s, x)| *s += x);
    }
    let mut words: Zeroizing<Vec<i64>> = Zeroizing::new(Vec::with_capacity(total));
    for (b, chunk) in blocks.iter().zip(split(&sum, blocks)) {
        let g = b.gamma();
        words.extend(chunk.iter().map(|x| (x / g).round() as i64));
    }
    if !stds.is_empty() {
        let mut at = 0;
        for (k, (b, &std)) in blocks.iter().zip(stds).enumerate() {
            DiscreteGaussianShare::new(std)
                .and_then(|n| n.add_to_with_seed(&mut words[at..at + b.width], &seed(k)))
                .map_err(|e| e.to_string())?;
            at += b.width;
        }
    }
    Ok(words.iter().map(|&w| w as u32).collect())
}

/// The summed words, read back in each block's units.
pub fn decode(words: &[u32], blocks: &[StatisticsBlock]) -> Vec<f64> {
    let mut out = Vec::with_capacity(words.len());
    let mut at = 0;
    for b in blocks {
        let g = b.gamma();
        out.extend(
            words[at..at + b.width]
                .iter()
                .map(|&w| f64::from(w as i32) * g),
        );
        at += b.width;
    }
    out
}

/// `v` cut into the blocks' slices.
fn split<'a>(v: &'a [f64], blocks: &[StatisticsBlock]) -> Vec<&'a [f64]> {
    let mut out = Vec::with_capacity(blocks.len());
    let mut at = 0;
    for b in blocks {
        out.push(&v[at..at + b.width]);
        at += b.width;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks2() -> Vec<StatisticsBlock> {
        vec![
            StatisticsBlock {
                name: "a".into(),
                width: 2,
                bound: 1.0,
            },
            StatisticsBlock {
                name: "b".into(),
                width: 3,
                bound: 3.0,
            },
        ]
    }

    #[test]
    fn without_noise_a_sum_decodes_to_the_clipped_sum_within_rounding() {
        let b = blocks2();
        let vectors = vec![
            vec![0.6, 0.8, 1.0, -2.0, 0.5],
            // Its first block is clipped from norm 5 to 1.
            vec![3.0, 4.0, 0.0, 0.0, 0.0],
        ];
        let words = party_input(&vectors, &b, &[], |_| unreachable!()).unwrap();
        let got = decode(&words, &b);
        let want = [1.2, 1.6, 1.0, -2.0, 0.5];
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            let step = if k < 2 { b[0].gamma() } else { b[1].gamma() };
            assert!((g - w).abs() <= step / 2.0 + 1e-12, "{k}: {g} vs {w}");
        }
    }

    #[test]
    fn one_unit_moves_a_rounded_block_by_at_most_its_sensitivity() {
        let b = blocks2();
        let base = vec![vec![0.1, -0.3, 0.7, 1.1, -0.2]];
        let mut more = base.clone();
        more.push(vec![9.0, -9.0, 9.0, 9.0, -9.0]);
        let x = party_input(&base, &b, &[], |_| unreachable!()).unwrap();
        let y = party_input(&more, &b, &[], |_| unreachable!()).unwrap();
        let mut at = 0;
        for blk in &b {
            let d: f64 = (at..at + blk.width)
                .map(|i| (f64::from(y[i] as i32) - f64::from(x[i] as i32)).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                d <= blk.sensitivity(),
                "{}: {d} > {}",
                blk.name,
                blk.sensitivity()
            );
            // The clip holds it near the bound, not above.
            assert!(d * blk.gamma() <= blk.bound * 1.05);
            at += blk.width;
        }
    }
}
