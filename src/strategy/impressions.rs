//! Impressions: synthetic records inverted from a model (after Arya et al.,
//! "Federated Impression for Learning with Distributed Heterogeneous
//! Data", 2024).
//!
//! Inputs start as noise around the consortium's feature mean and are
//! optimised, with Adam, for three things at once:
//! - cross-entropy towards their target labels;
//! - gradient stationarity: the model's last layer is a stationary point
//!   of training on the impressions, so the squared norm of that layer's
//!   mean cross-entropy gradient is driven down;
//! - moments: each feature's mean and variance over the impressions match
//!   the consortium's (the stand-in for the paper's batch-norm statistics:
//!   these models have no normalisation layers).
//!
//! Labels follow the consortium's class histogram. Everything here is a
//! function of the model, the statistics and a public seed: [`synthesise`]
//! takes nothing else, so impressions are a post-processing of DP releases.

use ndarray::{Array2, Axis};

use super::rng_from;
use crate::model::{softmax_rows, Mlp};
use crate::sampling::standard_normal;

/// Adam steps per synthesis.
pub const SYNTHESIS_STEPS: u32 = 200;
/// Adam's step size, in units of each feature's standard deviation.
const STEP_SIZE: f64 = 0.05;
/// Weight of the stationarity term against the cross-entropy.
const STATIONARITY_WEIGHT: f64 = 1.0;
/// Weight of the moment term.
const MOMENT_WEIGHT: f64 = 1.0;
/// Least variance a feature is given (a noisy estimate can fall below 0).
const MIN_VARIANCE: f64 = 1e-4;

/// The consortium's statistics, as decoded from the noisy sum.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsortiumStats {
    /// Each class's share of the records (sums to 1).
    pub class_shares: Vec<f64>,
    pub mean: Vec<f64>,
    pub variance: Vec<f64>,
}

impl ConsortiumStats {
    /// From a decoded sum of (class counts, feature sums, feature square
    /// sums): counts below zero read as none, the variance floored.
    pub fn from_sum(sum: &[f64], classes: usize, inputs: usize) -> ConsortiumStats {
        let counts: Vec<f64> = sum[..classes].iter().map(|c| c.max(0.0)).collect();
        let total: f64 = counts.iter().sum();
        let class_shares = if total > 0.0 {
            counts.iter().map(|c| c / total).collect()
        } else {
            vec![1.0 / classes as f64; classes]
        };
        let n = total.max(1.0);
        let sums = &sum[classes..classes + inputs];
        let squares = &sum[classes + inputs..classes + 2 * inputs];
        let mean: Vec<f64> = sums.iter().map(|s| s / n).collect();
        let variance = squares
            .iter()
            .zip(&mean)
            .map(|(q, m)| (q / n - m * m).max(MIN_VARIANCE))
            .collect();
        ConsortiumStats {
            class_shares,
            mean,
            variance,
        }
    }

    /// As a flat vector (class shares, mean, variance), for saved state.
    pub fn to_flat(&self) -> Vec<f64> {
        let mut v = self.class_shares.clone();
        v.extend(&self.mean);
        v.extend(&self.variance);
        v
    }

    pub fn from_flat(v: &[f64], classes: usize, inputs: usize) -> ConsortiumStats {
        ConsortiumStats {
            class_shares: v[..classes].to_vec(),
            mean: v[classes..classes + inputs].to_vec(),
            variance: v[classes + inputs..classes + 2 * inputs].to_vec(),
        }
    }
}

/// Synthetic records with their target labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Impressions {
    pub features: Vec<Vec<f64>>,
    pub labels: Vec<usize>,
}

/// `n` labels in the proportions `shares` (largest remainders).
pub fn labels_for(shares: &[f64], n: usize) -> Vec<usize> {
    let exact: Vec<f64> = shares.iter().map(|s| s * n as f64).collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| {
        (exact[b] - exact[b].floor())
            .total_cmp(&(exact[a] - exact[a].floor()))
            .then(a.cmp(&b))
    });
    let mut left = n.saturating_sub(counts.iter().sum());
    for &c in order.iter().cycle().take(left.min(shares.len() * n.max(1))) {
        if left == 0 {
            break;
        }
        counts[c] += 1;
        left -= 1;
    }
    counts
        .iter()
        .enumerate()
        .flat_map(|(c, &k)| std::iter::repeat(c).take(k))
        .collect()
}

/// What one synthesis step's objective is made of, for tests and logs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Objective {
    pub cross_entropy: f64,
    /// Squared norm of the last layer's mean gradient.
    pub stationarity: f64,
    /// Mean squared standardised error of the features' mean and variance.
    pub moments: f64,
}

/// The objective at `x` and its gradient with respect to `x`.
pub fn objective(
    model: &Mlp,
    stats: &ConsortiumStats,
    x: &Array2<f64>,
    labels: &[usize],
) -> (Objective, Array2<f64>) {
    let (n, d) = x.dim();
    let nf = n as f64;
    let (inputs, logits) = model.forward_cached(x.view());
    let p = softmax_rows(&logits);
    let mut delta = p.clone();
    let mut cross_entropy = 0.0;
    for (i, &y) in labels.iter().enumerate() {
        cross_entropy -= p[[i, y]].max(1e-300).ln() / nf;
        delta[[i, y]] -= 1.0;
    }
    let last = model.layers.len() - 1;
    let h = &inputs[last];
    // The last layer's mean gradient G = (P − Y)ᵀH/n, g = Σ(P − Y)/n.
    let gw = delta.t().dot(h) / nf;
    let gb = delta.sum_axis(Axis(0)) / nf;
    let stationarity = gw.iter().chain(gb.iter()).map(|v| v * v).sum::<f64>();
    // ∂S/∂p_i = 2(G h_i + g)/n, through the softmax's Jacobian.
    let mut u = h.dot(&gw.t());
    u += &gb;
    u *= 2.0 / nf;
    let mut dz = &delta / nf;
    for ((mut dz_row, u_row), p_row) in dz
        .axis_iter_mut(Axis(0))
        .zip(u.axis_iter(Axis(0)))
        .zip(p.axis_iter(Axis(0)))
    {
        let pu: f64 = p_row.iter().zip(u_row.iter()).map(|(a, b)| a * b).sum();
        for ((z, &pk), &uk) in dz_row.iter_mut().zip(p_row.iter()).zip(u_row.iter()) {
            *z += STATIONARITY_WEIGHT * pk * (uk - pu);
        }
    }
    // S also depends on H directly: ∂S/∂H = 2(P − Y)G/n.
    let mut g = dz.dot(&model.layers[last].w) + delta.dot(&gw) * (STATIONARITY_WEIGHT * 2.0 / nf);
    for i in (0..last).rev() {
        // inputs[i + 1] = ReLU(layer i's output).
        g.zip_mut_with(&inputs[i + 1], |gv, a| {
            if *a <= 0.0 {
                *gv = 0.0
            }
        });
        g = g.dot(&model.layers[i].w);
    }
    // Moments, standardised per feature and averaged over features.
    let mean = x.mean_axis(Axis(0)).expect("at least one impression");
    let centred = x - &mean;
    let var = centred.mapv(|v| v * v).mean_axis(Axis(0)).expect("rows");
    let mut moments = 0.0;
    let df = d as f64;
    for j in 0..d {
        let s2 = stats.variance[j];
        let em = mean[j] - stats.mean[j];
        let ev = var[j] - s2;
        moments += (em * em / s2 + ev * ev / (s2 * s2)) / df;
        let dm = 2.0 * em / s2 / nf / df;
        let dv = 2.0 * ev / (s2 * s2) / df;
        for i in 0..n {
            g[[i, j]] += MOMENT_WEIGHT * (dm + dv * 2.0 * centred[[i, j]] / nf);
        }
    }
    (
        Objective {
            cross_entropy,
            stationarity,
            moments,
        },
        g,
    )
}

/// `n` impressions of `model` matched to `stats`, from the public `seed`.
pub fn synthesise(model: &Mlp, stats: &ConsortiumStats, n: usize, seed: &[u8; 32]) -> Impressions {
    let d = stats.mean.len();
    let labels = labels_for(&stats.class_shares, n);
    let sd: Vec<f64> = stats.variance.iter().map(|v| v.sqrt()).collect();
    let mut rng = rng_from(seed);
    // Optimised in standardised units u: x = mean + sd·u.
    let mut u = Array2::from_shape_simple_fn((n, d), || standard_normal(&mut rng));
    let to_x = |u: &Array2<f64>| {
        let mut x = u.clone();
        for mut row in x.axis_iter_mut(Axis(0)) {
            for (j, v) in row.iter_mut().enumerate() {
                *v = stats.mean[j] + sd[j] * *v;
            }
        }
        x
    };
    let (b1, b2, eps) = (0.9, 0.999, 1e-8);
    let mut m = Array2::<f64>::zeros((n, d));
    let mut v = Array2::<f64>::zeros((n, d));
    for t in 1..=SYNTHESIS_STEPS {
        let x = to_x(&u);
        let (_, mut g) = objective(model, stats, &x, &labels);
        for mut row in g.axis_iter_mut(Axis(0)) {
            for (j, gv) in row.iter_mut().enumerate() {
                *gv *= sd[j];
            }
        }
        m = &m * b1 + &g * (1.0 - b1);
        v = &v * b2 + &g.mapv(|a| a * a) * (1.0 - b2);
        let c1 = 1.0 - b1.powi(t as i32);
        let c2 = 1.0 - b2.powi(t as i32);
        for ((uv, &mv), &vv) in u.iter_mut().zip(m.iter()).zip(v.iter()) {
            *uv -= STEP_SIZE * (mv / c1) / ((vv / c2).sqrt() + eps);
        }
    }
    let x = to_x(&u);
    Impressions {
        features: x.axis_iter(Axis(0)).map(|r| r.to_vec()).collect(),
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(d: usize, classes: usize) -> ConsortiumStats {
        ConsortiumStats {
            class_shares: vec![1.0 / classes as f64; classes],
            mean: (0..d).map(|j| j as f64 * 0.1).collect(),
            variance: vec![0.5; d],
        }
    }

    /// The analytic gradient matches finite differences of the objective,
    /// for a softmax model and a two-hidden-layer MLP.
    #[test]
    fn the_gradient_matches_finite_differences() {
        for sizes in [vec![5, 3], vec![5, 4, 4, 3]] {
            let model = Mlp::new(&sizes, 3);
            let s = stats(5, 3);
            let mut rng = rng_from(&[1; 32]);
            let x = Array2::from_shape_simple_fn((6, 5), || standard_normal(&mut rng));
            let labels = vec![0, 1, 2, 0, 1, 2];
            let total = |o: Objective| o.cross_entropy + o.stationarity + o.moments;
            let (_, g) = objective(&model, &s, &x, &labels);
            let h = 1e-6;
            for i in 0..6 {
                for j in 0..5 {
                    let mut a = x.clone();
                    a[[i, j]] += h;
                    let mut b = x.clone();
                    b[[i, j]] -= h;
                    let fd = (total(objective(&model, &s, &a, &labels).0)
                        - total(objective(&model, &s, &b, &labels).0))
                        / (2.0 * h);
                    assert!(
                        (fd - g[[i, j]]).abs() < 1e-5 * (1.0 + fd.abs()),
                        "{sizes:?} ({i},{j}): {fd} vs {}",
                        g[[i, j]]
                    );
                }
            }
        }
    }

    #[test]
    fn synthesis_lowers_every_term_and_labels_follow_the_histogram() {
        let model = Mlp::new(&[6, 8, 3], 7);
        let s = ConsortiumStats {
            class_shares: vec![0.5, 0.3, 0.2],
            ..stats(6, 3)
        };
        let imp = synthesise(&model, &s, 40, &[9; 32]);
        let counts: Vec<usize> = (0..3)
            .map(|c| imp.labels.iter().filter(|&&l| l == c).count())
            .collect();
        assert_eq!(counts, vec![20, 12, 8]);
        let mut rng = rng_from(&[9; 32]);
        let start = Array2::from_shape_simple_fn((40, 6), || standard_normal(&mut rng))
            * s.variance[0].sqrt()
            + Array2::from_shape_fn((40, 6), |(_, j)| s.mean[j]);
        let (before, _) = objective(&model, &s, &start, &imp.labels);
        let x = Array2::from_shape_vec((40, 6), imp.features.concat()).unwrap();
        let (after, _) = objective(&model, &s, &x, &imp.labels);
        assert!(
            after.cross_entropy < before.cross_entropy,
            "{after:?} {before:?}"
        );
        assert!(
            after.stationarity < before.stationarity,
            "{after:?} {before:?}"
        );
        assert!(after.moments < 0.05, "{after:?}");
        // The model now predicts the targets for most impressions.
        let hits = crate::model::argmax_rows(&model.forward(x.view()))
            .iter()
            .zip(&imp.labels)
            .filter(|(a, b)| a == b)
            .count();
        assert!(hits >= 36, "{hits} of 40");
        // The same inputs give the same impressions.
        assert_eq!(imp, synthesise(&model, &s, 40, &[9; 32]));
    }

    #[test]
    fn labels_follow_shares_exactly_in_total() {
        assert_eq!(labels_for(&[0.5, 0.5], 3).len(), 3);
        assert_eq!(labels_for(&[1.0, 0.0, 0.0], 4), vec![0, 0, 0, 0]);
        assert_eq!(
            labels_for(&[0.25, 0.25, 0.5], 8),
            vec![0, 0, 1, 1, 2, 2, 2, 2]
        );
    }
}
