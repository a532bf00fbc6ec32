//! The one-run canary audit of Steinke, Nasr and Jagielski (2023): `m`
//! canaries are each included in training with probability ½; afterwards
//! the auditor guesses "in" for the `k₊` highest-scoring and "out" for the
//! `k₋` lowest-scoring canaries and abstains on the rest. Under ε-DP the
//! number of correct guesses is stochastically dominated by
//! `Bin(k, e^ε/(1+e^ε))`, so `r` correct guesses out of `k` reject every ε
//! whose tail `P[Bin(k, e^ε/(1+e^ε)) ≥ r]` is below `1 − confidence`. The
//! guess counts tried are paid for with a Bonferroni correction. This is
//! the pure-ε form of their bound: it takes the δ term as zero.

use serde::{Deserialize, Serialize};

use crate::stats::binomial_sf;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CanaryAudit {
    pub canaries: usize,
    pub included: usize,
    /// Guesses made (`k₊ + k₋`) and correct, for the count that gave the bound.
    pub guesses: usize,
    pub correct: usize,
    pub epsilon_lower_bound: f64,
    pub confidence: f64,
    /// The guess counts tried (each split evenly between "in" and "out").
    pub guess_counts_tried: Vec<usize>,
    /// The largest ε that many canaries could certify (every guess right).
    pub certifiable_max: f64,
}

/// The largest ε rejected by `r` correct out of `k` at error `alpha`.
pub fn epsilon_from_guesses(k: usize, r: usize, alpha: f64) -> f64 {
    if k == 0 {
        return 0.0;
    }
    let tail = |eps: f64| {
        let p = 1.0 / (1.0 + (-eps).exp());
        binomial_sf(r as u64, k as u64, p)
    };
    if tail(0.0) > alpha {
        return 0.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while tail(hi) <= alpha && hi < 100.0 {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if tail(mid) <= alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// `scores[i]` is the attack's score of canary `i` (higher: more likely
/// in), `included[i]` whether it was trained on.
pub fn audit(scores: &[f64], included: &[bool], confidence: f64) -> CanaryAudit {
    assert_eq!(scores.len(), included.len());
    let m = scores.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let counts: Vec<usize> = [20, 10, 5, 2]
        .iter()
        .map(|d| (m / d) & !1)
        .filter(|&k| k >= 2)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let alpha = (1.0 - confidence) / counts.len().max(1) as f64;
    let mut best = (0.0, 0, 0);
    for &k in &counts {
        let half = k / 2;
        let correct = order[..half].iter().filter(|&&i| included[i]).count()
            + order[m - half..].iter().filter(|&&i| !included[i]).count();
        let e = epsilon_from_guesses(k, correct, alpha);
        if e > best.0 || best.1 == 0 {
            best = (e, k, correct);
        }
    }
    let max_k = counts.iter().copied().max().unwrap_or(0);
    CanaryAudit {
        canaries: m,
        included: included.iter().filter(|&&b| b).count(),
        guesses: best.1,
        correct: best.2,
        epsilon_lower_bound: best.0,
        confidence,
        guess_counts_tried: counts,
        certifiable_max: epsilon_from_guesses(max_k, max_k, alpha),
    }
}
