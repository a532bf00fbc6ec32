//! ROC curves from raw scores or from binned counts, AUC and TPR at fixed
//! false-positive rates. Ties are handled exactly: records with equal
//! scores move together, so the curve has one point per distinct score and
//! the AUC equals the Mann–Whitney statistic with ties counted as ½.

use serde::{Deserialize, Serialize};

/// One operating point: flag as member every record scoring at least
/// `threshold`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RocPoint {
    pub threshold: f64,
    pub fpr: f64,
    pub tpr: f64,
    /// Members and non-members flagged at this threshold.
    pub true_positives: u64,
    pub false_positives: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Roc {
    /// From the strictest threshold (nothing flagged) to the loosest
    /// (everything flagged).
    pub points: Vec<RocPoint>,
    pub members: u64,
    pub non_members: u64,
}

impl Roc {
    /// From raw scores.
    pub fn from_scores(members: &[f64], non_members: &[f64]) -> Roc {
        let mut all: Vec<(f64, bool)> = members
            .iter()
            .map(|&s| (s, true))
            .chain(non_members.iter().map(|&s| (s, false)))
            .filter(|(s, _)| !s.is_nan())
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut points = vec![point(f64::INFINITY, 0, 0, 1, 1)];
        let (m, n) = (members.len() as u64, non_members.len() as u64);
        let (mut tp, mut fp) = (0u64, 0u64);
        let mut i = 0;
        while i < all.len() {
            let s = all[i].0;
            while i < all.len() && all[i].0 == s {
                if all[i].1 {
                    tp += 1;
                } else {
                    fp += 1;
                }
                i += 1;
            }
            points.push(point(s, tp, fp, m, n));
        }
        Roc {
            points,
            members: m,
            non_members: n,
        }
    }

    /// From counts per score bin, bins ordered by increasing score; bin
    /// `i` is taken to hold scores in `[edges[i], edges[i+1])`.
    pub fn from_counts(member_bins: &[u64], non_member_bins: &[u64], lower_edges: &[f64]) -> Roc {
        assert_eq!(member_bins.len(), non_member_bins.len());
        assert_eq!(member_bins.len(), lower_edges.len());
        let m: u64 = member_bins.iter().sum();
        let n: u64 = non_member_bins.iter().sum();
        let mut points = vec![point(f64::INFINITY, 0, 0, 1, 1)];
        let (mut tp, mut fp) = (0u64, 0u64);
        for i in (0..member_bins.len()).rev() {
            if member_bins[i] == 0 && non_member_bins[i] == 0 {
                continue;
            }
            tp += member_bins[i];
            fp += non_member_bins[i];
            points.push(point(lower_edges[i], tp, fp, m, n));
        }
        Roc {
            points,
            members: m,
            non_members: n,
        }
    }

    /// Area under the curve (trapezoids; ½ credit for ties).
    pub fn auc(&self) -> f64 {
        self.points
            .windows(2)
            .map(|w| (w[1].fpr - w[0].fpr) * (w[1].tpr + w[0].tpr) / 2.0)
            .sum()
    }

    /// Highest TPR among thresholds whose FPR is at most `fpr`.
    pub fn tpr_at_fpr(&self, fpr: f64) -> f64 {
        self.points
            .iter()
            .filter(|p| p.fpr <= fpr + 1e-12)
            .map(|p| p.tpr)
            .fold(0.0, f64::max)
    }
}

fn point(threshold: f64, tp: u64, fp: u64, m: u64, n: u64) -> RocPoint {
    RocPoint {
        threshold,
        fpr: if n == 0 { 0.0 } else { fp as f64 / n as f64 },
        tpr: if m == 0 { 0.0 } else { tp as f64 / m as f64 },
        true_positives: tp,
        false_positives: fp,
    }
}
