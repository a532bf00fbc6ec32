//! Binned counts released with differential-privacy noise — the audit's
//! population histograms — and what can honestly be said from them.
//!
//! Every count carries independent noise that is sub-Gaussian with variance
//! proxy `noise_std²` (a sum of discrete Gaussians is: Canonne, Kamath,
//! Steinke 2020). A ROC point sums the bins above a threshold, so its count
//! of flagged members (or non-members) is off by noise of scale
//! `noise_std·√k` after `k` bins; the totals by `noise_std·√bins`.
//!
//! Point estimates use the counts clamped at zero. Bounds hold jointly at the
//! stated confidence: half the error budget covers the noise (Chernoff:
//! `P[N > z·s] ≤ e^{−z²/2}`, so `z = √(2 ln(1/α))`), half the sampling of
//! records (one-sided Clopper–Pearson), each split evenly (Bonferroni) over
//! every bound at every threshold. A rate's lower bound takes the lowest
//! count the noise allows over the highest total, its upper bound the
//! reverse; both stay valid since the Clopper–Pearson bounds are monotone in
//! the count and the total.
//!
//! From the per-threshold bounds come the ε lower bound (both directions,
//! as in [`crate::epsilon`]), a lower bound on the AUC (the area under the
//! staircase of (FPR upper, TPR lower) points, below which the true curve
//! cannot pass) and bounds on TPR at a fixed FPR.

use serde::{Deserialize, Serialize};

use crate::epsilon::{Direction, EpsilonBound};
use crate::roc::Roc;
use crate::stats::{cp_lower, cp_upper};

/// Two histograms of one attack's scores, bins by increasing score.
pub struct NoisyCounts<'a> {
    pub members: &'a [i64],
    pub non_members: &'a [i64],
    pub lower_edges: &'a [f64],
    /// The std (sub-Gaussian scale) of the noise on each count; 0 for exact
    /// counts.
    pub noise_std: f64,
}

/// Bounds at one threshold: "flag every record scoring at least
/// `threshold`".
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThresholdBounds {
    pub threshold: f64,
    pub tpr_lower: f64,
    pub tpr_upper: f64,
    pub fpr_lower: f64,
    pub fpr_upper: f64,
    pub tnr_lower: f64,
    pub fnr_upper: f64,
}

/// Everything the audit reports about one noisy attack.
#[derive(Clone, Debug)]
pub struct NoisyAnalysis {
    /// The ROC of the counts clamped at zero (a point estimate).
    pub roc: Roc,
    pub thresholds: Vec<ThresholdBounds>,
    pub epsilon: EpsilonBound,
    /// Lower confidence bound on the AUC.
    pub auc_lower: f64,
    /// Estimated members and non-members (noisy totals, clamped).
    pub members: u64,
    pub non_members: u64,
}

/// `z` with `P[N > z·s] ≤ alpha` for sub-Gaussian noise of scale `s`.
pub(crate) fn chernoff_z(alpha: f64) -> f64 {
    (2.0 * (1.0 / alpha).ln()).sqrt()
}

/// A noisy count as a count: negatives are 0. Callers pass whole numbers
/// (counts, or bounds already floored or ceiled).
pub(crate) fn clamp_count(x: f64) -> u64 {
    if x <= 0.0 {
        0
    } else {
        x as u64
    }
}

impl NoisyCounts<'_> {
    /// The analysis a perfect attack would get with these sample sizes and
    /// this noise: every member in the top bin, every non-member in the
    /// bottom one, noise-free counts. Its bounds are the most the audit
    /// could show, so a limit at or above them is one the check cannot
    /// exceed.
    pub fn perfect(&self, delta: f64, confidence: f64) -> NoisyAnalysis {
        let bins = self.members.len();
        let total = |v: &[i64]| v.iter().map(|&c| c.max(0)).sum::<i64>();
        let mut members = vec![0i64; bins];
        let mut non_members = vec![0i64; bins];
        if bins > 0 {
            members[bins - 1] = total(self.members);
            non_members[0] = total(self.non_members);
        }
        NoisyCounts {
            members: &members,
            non_members: &non_members,
            lower_edges: self.lower_edges,
            noise_std: self.noise_std,
        }
        .analyse(delta, confidence)
    }

    pub fn analyse(&self, delta: f64, confidence: f64) -> NoisyAnalysis {
        assert_eq!(self.members.len(), self.non_members.len());
        assert_eq!(self.members.len(), self.lower_edges.len());
        let bins = self.members.len();
        let clamp = |v: &[i64]| v.iter().map(|&c| c.max(0) as u64).collect::<Vec<_>>();
        let roc = Roc::from_counts(
            &clamp(self.members),
            &clamp(self.non_members),
            self.lower_edges,
        );
        // Thresholds: the top k bins flagged, k = 1 .. bins−1.
        let k_max = bins.saturating_sub(1).max(1);
        let alpha = 1.0 - confidence;
        let alpha_noise = alpha / 2.0 / (6.0 * k_max as f64 + 4.0);
        let alpha_cp = alpha / 2.0 / (6.0 * k_max as f64);
        let z = if self.noise_std > 0.0 {
            chernoff_z(alpha_noise)
        } else {
            0.0
        };
        let sum = |v: &[i64]| v.iter().map(|&c| c as f64).sum::<f64>();
        let (m_hat, n_hat) = (sum(self.members), sum(self.non_members));
        let s_total = self.noise_std * (bins as f64).sqrt();
        let m_lo = clamp_count((m_hat - z * s_total).floor());
        let m_hi = clamp_count((m_hat + z * s_total).ceil()).max(1);
        let n_lo = clamp_count((n_hat - z * s_total).floor()).max(1);
        let n_hi = clamp_count((n_hat + z * s_total).ceil()).max(1);
        let mut thresholds = Vec::with_capacity(k_max);
        let (mut tp, mut fp) = (0.0f64, 0.0f64);
        for k in 1..=k_max {
            let i = bins - k;
            tp += self.members[i] as f64;
            fp += self.non_members[i] as f64;
            let (s_in, s_out) = (
                self.noise_std * (k as f64).sqrt(),
                self.noise_std * ((bins - k) as f64).sqrt(),
            );
            let (tn, fneg) = (n_hat - fp, m_hat - tp);
            let lo = |x: f64, s: f64| clamp_count((x - z * s).floor());
            let hi = |x: f64, s: f64| clamp_count((x + z * s).ceil());
            let tp_lo = lo(tp, s_in).min(m_hi);
            let tp_hi = hi(tp, s_in);
            let fp_lo = lo(fp, s_in);
            let fp_hi = hi(fp, s_in);
            let tn_lo = lo(tn, s_out).min(n_hi);
            let fn_hi = hi(fneg, s_out);
            thresholds.push(ThresholdBounds {
                threshold: self.lower_edges[i],
                tpr_lower: cp_lower(tp_lo, m_hi, alpha_cp),
                tpr_upper: if m_lo == 0 {
                    1.0
                } else {
                    cp_upper(tp_hi.min(m_lo), m_lo, alpha_cp)
                },
                fpr_lower: cp_lower(fp_lo.min(n_hi), n_hi, alpha_cp),
                fpr_upper: cp_upper(fp_hi.min(n_lo), n_lo, alpha_cp),
                tnr_lower: cp_lower(tn_lo, n_hi, alpha_cp),
                fnr_upper: if m_lo == 0 {
                    1.0
                } else {
                    cp_upper(fn_hi.min(m_lo), m_lo, alpha_cp)
                },
            });
        }
        let epsilon = epsilon_bound(&thresholds, delta, k_max, {
            // The best any attack could certify from these totals: every
            // member and no non-member in the top bin, seen through the
            // noise of one bin.
            let s1 = self.noise_std;
            let tp_lo = clamp_count((m_hat - z * s1).floor()).min(m_hi);
            let fp_hi = clamp_count((z * s1).ceil()).min(n_lo);
            let tpr = cp_lower(tp_lo, m_hi, alpha_cp);
            let fpr = cp_upper(fp_hi, n_lo, alpha_cp);
            if tpr > delta {
                ((tpr - delta) / fpr).ln().max(0.0)
            } else {
                0.0
            }
        });
        let auc_lower = staircase_area(&thresholds);
        NoisyAnalysis {
            roc,
            thresholds,
            epsilon,
            auc_lower,
            members: clamp_count(m_hat.round()),
            non_members: clamp_count(n_hat.round()),
        }
    }
}

fn epsilon_bound(
    thresholds: &[ThresholdBounds],
    delta: f64,
    tried: usize,
    certifiable_max: f64,
) -> EpsilonBound {
    let mut best = EpsilonBound::none(tried, certifiable_max);
    for t in thresholds {
        let e1 = if t.tpr_lower > delta {
            ((t.tpr_lower - delta) / t.fpr_upper).ln()
        } else {
            0.0
        };
        let e2 = if t.tnr_lower > delta {
            ((t.tnr_lower - delta) / t.fnr_upper).ln()
        } else {
            0.0
        };
        let (e, dir, lo, hi) = if e1 >= e2 {
            (e1, Direction::Members, t.tpr_lower, t.fpr_upper)
        } else {
            (e2, Direction::NonMembers, t.tnr_lower, t.fnr_upper)
        };
        best.keep_larger(e, t.threshold, dir, lo, hi);
    }
    best
}

/// The area under the staircase through (FPR upper, TPR lower): with every
/// bound holding, the true ROC lies on or above it.
fn staircase_area(thresholds: &[ThresholdBounds]) -> f64 {
    let mut pts: Vec<(f64, f64)> = thresholds
        .iter()
        .map(|t| (t.fpr_upper, t.tpr_lower))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut area, mut level, mut x) = (0.0, 0.0f64, 0.0);
    for (fpr, tpr) in pts {
        area += (fpr - x) * level;
        x = fpr;
        level = level.max(tpr);
    }
    area + (1.0 - x) * level
}

impl NoisyAnalysis {
    /// (lower, upper) confidence bounds on the best TPR at FPR ≤ `fpr`.
    pub fn tpr_bounds_at_fpr(&self, fpr: f64) -> (f64, f64) {
        let lower = self
            .thresholds
            .iter()
            .filter(|t| t.fpr_upper <= fpr + 1e-12)
            .map(|t| t.tpr_lower)
            .fold(0.0, f64::max);
        // A threshold whose FPR could be at most `fpr` may reach at most
        // its TPR's upper bound.
        let upper = self
            .thresholds
            .iter()
            .filter(|t| t.fpr_lower <= fpr + 1e-12)
            .map(|t| t.tpr_upper)
            .fold(0.0, f64::max);
        (lower, upper.max(lower))
    }
}
