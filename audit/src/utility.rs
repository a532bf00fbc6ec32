//! Model utility from DP-noised counts: accuracy on the audit's members
//! (records trained on) and non-members (records held out of training), and
//! the gap between them.
//!
//! Each party counts, among its capped audit sample, the members and the
//! non-members the released model classifies right and wrong; only the
//! noisy sum of those four counts reaches the coordinator. An accuracy is
//! `right / (right + wrong)`: it rises with `right` and falls with `wrong`,
//! so its lower bound takes the lowest `right` and the highest `wrong` the
//! noise allows, its upper bound the reverse, each then widened by a
//! Clopper–Pearson bound for the sampling of records (as in
//! [`crate::noisy`]). Both accuracies hold jointly at the stated
//! confidence, and so does the gap interval built from them.

use serde::{Deserialize, Serialize};

use crate::noisy::{chernoff_z, clamp_count as clamp};
use crate::stats::{cp_lower, cp_upper};

/// Counts per block in the audit's sum: members right, members wrong,
/// non-members right, non-members wrong.
pub const UTILITY_COUNTS: usize = 4;

/// One accuracy: the point estimate from the counts clamped at zero and a
/// two-sided interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
    /// Records it is estimated from (the noisy total, clamped at zero).
    pub records: u64,
}

/// The released model's utility, as the reviewer reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Utility {
    /// Accuracy on audit members (records the model trained on).
    pub train: Accuracy,
    /// Accuracy on audit non-members: records no party trained on, a test
    /// set drawn from the consortium's own data.
    pub test: Accuracy,
    /// Train minus test accuracy, with the interval the two give together.
    pub gap: f64,
    pub gap_lower: f64,
    pub gap_upper: f64,
    /// Std of the noise on each count (summed over parties; 0 exact).
    pub noise_std: f64,
    pub confidence: f64,
    /// The four summed counts as decoded: members right, wrong, non-members
    /// right, wrong.
    pub counts: [i64; UTILITY_COUNTS],
}

/// An accuracy from noisy `right` and `wrong` counts, its interval at
/// confidence `1 − alpha`: half of `alpha` covers the noise (both counts,
/// both sides), half the sampling (both sides).
fn accuracy(right: i64, wrong: i64, noise_std: f64, alpha: f64) -> Accuracy {
    let z = if noise_std > 0.0 {
        chernoff_z(alpha / 2.0 / 4.0)
    } else {
        0.0
    };
    let alpha_cp = alpha / 2.0 / 2.0;
    let (r, w) = (right as f64, wrong as f64);
    let spread = z * noise_std;
    let (r_lo, r_hi) = (clamp((r - spread).floor()), clamp((r + spread).ceil()));
    let (w_lo, w_hi) = (clamp((w - spread).floor()), clamp((w + spread).ceil()));
    let (r_hat, w_hat) = (clamp(r), clamp(w));
    let records = r_hat + w_hat;
    Accuracy {
        estimate: if records == 0 {
            0.0
        } else {
            r_hat as f64 / records as f64
        },
        lower: cp_lower(r_lo, r_lo + w_hi, alpha_cp),
        upper: cp_upper(r_hi, r_hi + w_lo, alpha_cp),
        records,
    }
}

impl Utility {
    /// From the four summed counts (see [`UTILITY_COUNTS`]) and the std of
    /// the noise on each.
    pub fn from_counts(counts: [i64; UTILITY_COUNTS], noise_std: f64, confidence: f64) -> Utility {
        // Two accuracies, each at half the error budget: jointly at
        // `confidence`.
        let alpha = (1.0 - confidence) / 2.0;
        let train = accuracy(counts[0], counts[1], noise_std, alpha);
        let test = accuracy(counts[2], counts[3], noise_std, alpha);
        Utility {
            train,
            test,
            gap: train.estimate - test.estimate,
            gap_lower: train.lower - test.upper,
            gap_upper: train.upper - test.lower,
            noise_std,
            confidence,
            counts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_counts_give_the_plain_rates_inside_their_intervals() {
        let u = Utility::from_counts([90, 10, 70, 30], 0.0, 0.95);
        assert!((u.train.estimate - 0.9).abs() < 1e-12);
        assert!((u.test.estimate - 0.7).abs() < 1e-12);
        assert!((u.gap - 0.2).abs() < 1e-12);
        assert_eq!((u.train.records, u.test.records), (100, 100));
        for a in [u.train, u.test] {
            assert!(a.lower < a.estimate && a.estimate < a.upper);
        }
        assert!(u.gap_lower < u.gap && u.gap < u.gap_upper);
        // Without noise the interval is Clopper–Pearson alone: 90/100 at a
        // one-sided 1.25 % lies near 0.81.
        assert!((0.79..0.84).contains(&u.train.lower), "{}", u.train.lower);
    }

    #[test]
    fn noise_widens_the_intervals() {
        let exact = Utility::from_counts([90, 10, 70, 30], 0.0, 0.95);
        let noisy = Utility::from_counts([90, 10, 70, 30], 5.0, 0.95);
        assert_eq!(exact.test.estimate, noisy.test.estimate);
        assert!(noisy.test.lower < exact.test.lower);
        assert!(noisy.test.upper > exact.test.upper);
        assert!(noisy.gap_upper - noisy.gap_lower > exact.gap_upper - exact.gap_lower);
    }

    #[test]
    fn negative_noisy_counts_are_clamped_not_trusted() {
        let u = Utility::from_counts([-3, 40, 0, -2], 2.0, 0.95);
        assert_eq!(u.train.estimate, 0.0);
        assert_eq!(u.test.records, 0);
        assert_eq!(u.test.estimate, 0.0);
        assert!(u.test.lower >= 0.0 && u.test.upper <= 1.0);
    }

    /// The interval covers the true accuracy at least as often as promised
    /// when counts are drawn binomially and noised.
    #[test]
    fn intervals_cover_the_true_accuracy() {
        // splitmix64: a fixed, dependency-free stream of uniforms.
        let mut state = 7u64;
        let mut uniform = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as f64 / 2f64.powi(64)
        };
        let (p, n, std) = (0.8, 200u32, 4.0);
        let mut missed = 0;
        let trials = 400;
        for _ in 0..trials {
            let right = (0..n).filter(|_| uniform() < p).count() as i64;
            // A sum of 12 uniforms: near-Gaussian of std `std`.
            let mut noise = || ((0..12).map(|_| uniform()).sum::<f64>() - 6.0) * std;
            let r = right + noise().round() as i64;
            let w = (i64::from(n) - right) + noise().round() as i64;
            let u = Utility::from_counts([r, w, r, w], std, 0.9);
            if !(u.test.lower <= p && p <= u.test.upper) {
                missed += 1;
            }
        }
        assert!(missed <= trials / 20, "missed {missed} of {trials}");
    }
}

/// The transfer's summed confusion matrices (true × predicted, row-major),
/// each count carrying discrete Gaussian noise of std `noise_std`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TransferCounts {
    pub classes: usize,
    pub base: Vec<i64>,
    pub fine_tuned: Vec<i64>,
    pub noise_std: f64,
}

impl TransferCounts {
    /// Accuracy, and for two classes precision, recall and F1 with
    /// `positive` the positive class, of one matrix (negative noisy counts
    /// read as 0).
    pub fn figures(matrix: &[i64], classes: usize, positive: usize) -> serde_json::Value {
        let at = |t: usize, p: usize| matrix[t * classes + p].max(0) as f64;
        let total: f64 = (0..classes)
            .flat_map(|t| (0..classes).map(move |p| (t, p)))
            .map(|(t, p)| at(t, p))
            .sum();
        let right: f64 = (0..classes).map(|c| at(c, c)).sum();
        let ratio = |a: f64, b: f64| if b > 0.0 { Some(a / b) } else { None };
        let mut v = serde_json::json!({ "records": total, "accuracy": ratio(right, total) });
        if classes == 2 {
            let tp = at(positive, positive);
            let fp = at(1 - positive, positive);
            let fneg = at(positive, 1 - positive);
            let precision = ratio(tp, tp + fp);
            let recall = ratio(tp, tp + fneg);
            let f1 = match (precision, recall) {
                (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
                _ => None,
            };
            v["precision"] = serde_json::json!(precision);
            v["recall"] = serde_json::json!(recall);
            v["f1"] = serde_json::json!(f1);
        }
        v
    }
}
