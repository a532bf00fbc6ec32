//! Empirical ε lower bounds from an attack's operating points.
//!
//! An (ε, δ)-DP mechanism forces every membership test to satisfy
//! `TPR ≤ e^ε·FPR + δ` and `TNR ≤ e^ε·FNR + δ`. Given `tp` of `m` members
//! and `fp` of `n` non-members flagged at a threshold, one-sided
//! Clopper–Pearson bounds turn the counts into a statement that holds with
//! the chosen confidence:
//!
//! `ε ≥ ln((TPR_lo − δ) / FPR_hi)` and `ε ≥ ln((TNR_lo − δ) / FNR_hi)`.
//!
//! Choosing the best threshold on the same data is paid for with a
//! Bonferroni correction: the error budget `1 − confidence` is split over
//! every threshold tried and the four bounds each uses.

use serde::{Deserialize, Serialize};

use crate::roc::Roc;
use crate::stats::{cp_lower, cp_upper};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpsilonBound {
    /// The lower bound on ε (0 when nothing can be certified).
    pub epsilon: f64,
    /// The threshold that gave it (none when nothing was certified), and
    /// in which direction.
    pub threshold: Option<f64>,
    pub direction: Direction,
    /// The two rates the bound came from, in its direction: TPR lower and
    /// FPR upper bounds when flagging members, TNR lower and FNR upper
    /// bounds when flagging non-members.
    pub tpr_lower: f64,
    pub fpr_upper: f64,
    /// Thresholds the Bonferroni correction covered.
    pub thresholds_tried: usize,
    /// The largest ε these sample sizes could certify at all: a perfect
    /// attack under the same correction.
    pub certifiable_max: f64,
}

impl EpsilonBound {
    /// Nothing certified yet, over `thresholds_tried` thresholds.
    pub(crate) fn none(thresholds_tried: usize, certifiable_max: f64) -> Self {
        EpsilonBound {
            epsilon: 0.0,
            threshold: None,
            direction: Direction::Members,
            tpr_lower: 0.0,
            fpr_upper: 1.0,
            thresholds_tried,
            certifiable_max,
        }
    }

    /// Keeps the bound at `threshold` if it certifies more.
    pub(crate) fn keep_larger(
        &mut self,
        epsilon: f64,
        threshold: f64,
        direction: Direction,
        tpr_lower: f64,
        fpr_upper: f64,
    ) {
        if epsilon > self.epsilon {
            self.epsilon = epsilon;
            self.threshold = Some(threshold);
            self.direction = direction;
            self.tpr_lower = tpr_lower;
            self.fpr_upper = fpr_upper;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Flags members: TPR against FPR.
    Members,
    /// Flags non-members: TNR against FNR.
    NonMembers,
}

/// ε from one operating point's counts at per-bound error `alpha`, with
/// the two rates it came from in its direction.
pub fn epsilon_at(
    tp: u64,
    m: u64,
    fp: u64,
    n: u64,
    delta: f64,
    alpha: f64,
) -> (f64, f64, f64, Direction) {
    let tpr_lo = cp_lower(tp, m, alpha);
    let fpr_hi = cp_upper(fp, n, alpha);
    let tnr_lo = cp_lower(n - fp, n, alpha);
    let fnr_hi = cp_upper(m - tp, m, alpha);
    let e1 = if tpr_lo > delta {
        ((tpr_lo - delta) / fpr_hi).ln()
    } else {
        0.0
    };
    let e2 = if tnr_lo > delta {
        ((tnr_lo - delta) / fnr_hi).ln()
    } else {
        0.0
    };
    if e1 >= e2 {
        (e1.max(0.0), tpr_lo, fpr_hi, Direction::Members)
    } else {
        (e2.max(0.0), tnr_lo, fnr_hi, Direction::NonMembers)
    }
}

/// The best ε lower bound over every threshold of `roc`, at `confidence`.
pub fn lower_bound(roc: &Roc, delta: f64, confidence: f64) -> EpsilonBound {
    // Interior thresholds only: flagging nothing or everything proves nothing.
    let tried: Vec<_> = roc
        .points
        .iter()
        .filter(|p| p.true_positives + p.false_positives > 0)
        .filter(|p| p.true_positives < roc.members || p.false_positives < roc.non_members)
        .collect();
    let k = tried.len().max(1);
    let alpha = (1.0 - confidence) / (4.0 * k as f64);
    let (m, n) = (roc.members, roc.non_members);
    let mut best = EpsilonBound::none(k, epsilon_at(m, m, 0, n, delta, alpha).0);
    for p in tried {
        let (e, tpr_lo, fpr_hi, dir) =
            epsilon_at(p.true_positives, m, p.false_positives, n, delta, alpha);
        best.keep_larger(e, p.threshold, dir, tpr_lo, fpr_hi);
    }
    best
}
