//! Test-set figures of a trained network beyond accuracy: for two-class
//! data, precision, recall, F1 and the ROC AUC of the positive class.

use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::model::matrix;
use crate::network::Network;

/// Two-class figures, the positive class named.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    pub positive_class: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Area under the ROC curve of the positive class's probability.
    pub auc: f64,
}

/// The rarer label of `d` (the lower one on a tie): the class a two-class
/// task is usually about (malignant tumours, buyers).
pub fn minority_class(d: &Dataset) -> usize {
    let mut counts = vec![0usize; d.classes.max(1)];
    d.labels.iter().for_each(|&y| counts[y] += 1);
    (0..counts.len())
        .min_by_key(|&c| (counts[c], c))
        .unwrap_or(0)
}

/// Precision, recall, F1 and AUC of `net` on `d` with `positive` the
/// positive class; `None` unless `d` has two classes and records.
pub fn binary_metrics(net: &Network, d: &Dataset, positive: usize) -> Option<BinaryMetrics> {
    if d.classes != 2 || d.is_empty() || positive > 1 {
        return None;
    }
    let p = net.probabilities(matrix(d, None).view());
    let scores: Vec<f64> = p.column(positive).to_vec();
    let predicted: Vec<usize> = (0..d.len())
        .map(|i| {
            if scores[i] >= 0.5 {
                positive
            } else {
                1 - positive
            }
        })
        .collect();
    let count = |pred: bool, actual: bool| {
        (0..d.len())
            .filter(|&i| (predicted[i] == positive) == pred && (d.labels[i] == positive) == actual)
            .count() as f64
    };
    let (tp, fp, fne) = (count(true, true), count(true, false), count(false, true));
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fne);
    let pick = |want: bool| -> Vec<f64> {
        (0..d.len())
            .filter(|&i| (d.labels[i] == positive) == want)
            .map(|i| scores[i])
            .collect()
    };
    Some(BinaryMetrics {
        positive_class: positive,
        precision,
        recall,
        f1: ratio(2.0 * precision * recall, precision + recall),
        auc: shroud_audit::Roc::from_scores(&pick(true), &pick(false)).auc(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mlp;

    /// A softmax model that puts class 0 on records whose one feature is
    /// negative: precision, recall and F1 of a known confusion matrix.
    #[test]
    fn figures_of_a_known_confusion_matrix() {
        let mut m = Mlp::new(&[1, 2], 0);
        // logit0 = −10x, logit1 = 10x.
        m.set_flat(&[-10.0, 10.0, 0.0, 0.0]).unwrap();
        let net = Network::single(m);
        let d = Dataset {
            // Labels 0 0 0 1 1 1 1; predictions 0 0 1 0 1 1 1.
            features: [-1.0, -2.0, 0.5, -0.5, 1.0, 2.0, 3.0]
                .iter()
                .map(|&x| vec![x])
                .collect(),
            labels: vec![0, 0, 0, 1, 1, 1, 1],
            classes: 2,
            feature_names: vec!["x".into()],
        };
        assert_eq!(minority_class(&d), 0);
        let b = binary_metrics(&net, &d, 0).unwrap();
        // tp 2, fp 1, fn 1.
        assert!((b.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((b.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((b.f1 - 2.0 / 3.0).abs() < 1e-12);
        // Scores for class 0 fall with x: of 3 × 4 pairs, only (0.5, −0.5)
        // is ordered wrongly.
        assert!((b.auc - 11.0 / 12.0).abs() < 1e-12, "{}", b.auc);
        let three = Dataset {
            classes: 3,
            ..d.clone()
        };
        assert!(binary_metrics(&net, &three, 0).is_none());
    }
}
