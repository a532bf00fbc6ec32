//! The one-run canary audit of Steinke, Nasr and Jagielski (2023), with its
//! δ term.
//!
//! `m` canaries are each included in training with probability ½; afterwards
//! the auditor guesses on every canary: "in" above a threshold, "out" below.
//! The threshold comes from the scores alone (two-means in one dimension),
//! never from the inclusion coins, so the guesses are a post-processing of
//! what training released, as the theorem requires. If the training is (ε, δ)-DP with respect to each
//! canary, the number `W` of correct guesses out of `r` satisfies, for every
//! `v` (their Theorem 3.3 / Algorithm 2),
//!
//! `P[W ≥ v] ≤ β + 2mδ·α`, with `β = P[Bin(r, q) ≥ v]`, `q = e^ε/(1+e^ε)`,
//! and `α = max_{1≤i≤v} P[v > Bin(r, q) ≥ v−i] / i`.
//!
//! So `v` correct guesses reject every ε whose p-value is below
//! `1 − confidence`: the largest such ε is the audit's lower bound. One
//! guess count, fixed before training, so no correction for choosing it.
//!
//! Even a perfect attack certifies only so much with `m` canaries; the δ
//! term caps what any number can certify (roughly `ε < ln((1−c)/(2δ))`).
//! [`canaries_to_certify`] sizes `m` from the policy's ε, δ and confidence.

use serde::{Deserialize, Serialize};

use crate::stats::binomial_sf;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CanaryAudit {
    pub canaries: usize,
    pub included: usize,
    /// Guesses made and how many were right.
    pub guesses: usize,
    pub correct: usize,
    pub epsilon_lower_bound: f64,
    pub confidence: f64,
    /// The δ of the bound (the policy's).
    #[serde(default)]
    pub delta: f64,
    /// The largest ε these canaries could certify at all: every guess right.
    pub certifiable_max: f64,
}

/// The p-value of `v` correct guesses out of `r` among `m` canaries under
/// the hypothesis that training is (ε, δ)-DP.
pub fn p_value(m: usize, r: usize, v: usize, eps: f64, delta: f64) -> f64 {
    assert!(v <= r && r <= m, "need v ≤ r ≤ m (v {v}, r {r}, m {m})");
    let q = 1.0 / (1.0 + (-eps).exp());
    let beta = binomial_sf(v as u64, r as u64, q);
    if delta == 0.0 || v == 0 {
        return beta.min(1.0);
    }
    // pmf(k) of Bin(r, q) by the ratio pmf(k−1)/pmf(k) = k/(r−k+1)·(1−q)/q,
    // in logs, from pmf(v−1) downwards.
    let (lq, lp) = (q.ln(), (-q).ln_1p());
    let ln_choose = |n: usize, k: usize| {
        crate::stats::ln_gamma(n as f64 + 1.0)
            - crate::stats::ln_gamma(k as f64 + 1.0)
            - crate::stats::ln_gamma((n - k) as f64 + 1.0)
    };
    let mut ln_pmf = {
        let k = v - 1;
        ln_choose(r, k) + k as f64 * lq + (r - k) as f64 * lp
    };
    let (mut alpha, mut sum) = (0.0f64, 0.0f64);
    for i in 1..=v {
        let k = v - i;
        sum += ln_pmf.exp();
        alpha = alpha.max(sum / i as f64);
        // The running sum never exceeds 1, so no later i can beat 1/i.
        if 1.0 / ((i + 1) as f64) <= alpha || k == 0 {
            break;
        }
        ln_pmf += (k as f64 / (r - k + 1) as f64).ln() + lp - lq;
    }
    (beta + 2.0 * m as f64 * delta * alpha).min(1.0)
}

/// The largest ε that `v` correct out of `r` guesses among `m` canaries
/// rejects at error `1 − confidence` (0 when none).
pub fn epsilon_lower_bound(m: usize, r: usize, v: usize, delta: f64, confidence: f64) -> f64 {
    let alpha = 1.0 - confidence;
    if r == 0 || p_value(m, r, v, 0.0, delta) >= alpha {
        return 0.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while p_value(m, r, v, hi, delta) < alpha && hi < 100.0 {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..50 {
        let mid = 0.5 * (lo + hi);
        if p_value(m, r, v, mid, delta) < alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The largest ε `m` canaries can certify: every one guessed right.
pub fn certifiable_max(m: usize, delta: f64, confidence: f64) -> f64 {
    epsilon_lower_bound(m, m, m, delta, confidence)
}

/// How many canaries the audit needs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanarySizing {
    pub canaries: usize,
    /// The largest ε that many can certify.
    pub certifiable_max: f64,
    /// Whether that reaches the target.
    pub reaches_target: bool,
}

/// The fewest canaries (at most `cap`) whose perfect guessing certifies at
/// least `target`; when none does — the δ term caps every count — the
/// count (on a grid up to the cap) that certifies the most.
pub fn canaries_to_certify(target: f64, delta: f64, confidence: f64, cap: usize) -> CanarySizing {
    let reach = |m: usize| certifiable_max(m, delta, confidence);
    if reach(cap) < target {
        let mut best = (cap, reach(cap));
        let mut m = 100usize;
        while m < cap {
            let e = reach(m);
            if e > best.1 {
                best = (m, e);
            }
            m = (m * 5 / 4) & !1;
        }
        return CanarySizing {
            canaries: best.0,
            certifiable_max: best.1,
            reaches_target: false,
        };
    }
    // What a count certifies rises with it until the δ term takes over:
    // search the rising stretch below the cap.
    let (mut lo, mut hi) = (1usize, cap);
    while hi - lo > (lo / 100).max(1) {
        let mid = lo + (hi - lo) / 2;
        if reach(mid) >= target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    // Even, so that the guesses split evenly.
    let m = (hi + 1) & !1;
    let m = m.min(cap);
    CanarySizing {
        canaries: m,
        certifiable_max: reach(m),
        reaches_target: reach(m) >= target,
    }
}

/// The two-means threshold of `scores`: starting halfway between the
/// extremes, the midpoint of the means above and below, until it settles.
pub fn split_threshold(scores: &[f64]) -> f64 {
    let lo = scores.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !(lo.is_finite() && hi.is_finite()) {
        return 0.0;
    }
    let mut t = 0.5 * (lo + hi);
    for _ in 0..100 {
        let (hi, lo): (Vec<f64>, Vec<f64>) = scores.iter().partition(|&&s| s > t);
        if hi.is_empty() || lo.is_empty() {
            break;
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let next = 0.5 * (mean(&hi) + mean(&lo));
        if next == t {
            break;
        }
        t = next;
    }
    t
}

/// `scores[i]` is the audit's score of canary `i` (higher: more likely
/// in), `included[i]` whether it was trained on. Guesses on every canary:
/// "in" above [`split_threshold`], "out" otherwise.
pub fn audit(scores: &[f64], included: &[bool], delta: f64, confidence: f64) -> CanaryAudit {
    assert_eq!(scores.len(), included.len());
    let m = scores.len();
    let t = split_threshold(scores);
    let correct = scores
        .iter()
        .zip(included)
        .filter(|(&s, &inc)| (s > t) == inc)
        .count();
    CanaryAudit {
        canaries: m,
        included: included.iter().filter(|&&b| b).count(),
        guesses: m,
        correct,
        epsilon_lower_bound: epsilon_lower_bound(m, m, correct, delta, confidence),
        confidence,
        delta,
        certifiable_max: certifiable_max(m, delta, confidence),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The p-value by its definition, summed in full (small cases).
    fn p_value_direct(m: usize, r: usize, v: usize, eps: f64, delta: f64) -> f64 {
        let q = 1.0 / (1.0 + (-eps).exp());
        let pmf = |k: usize| {
            (crate::stats::ln_gamma(r as f64 + 1.0)
                - crate::stats::ln_gamma(k as f64 + 1.0)
                - crate::stats::ln_gamma((r - k) as f64 + 1.0)
                + k as f64 * q.ln()
                + (r - k) as f64 * (1.0 - q).ln())
            .exp()
        };
        let beta: f64 = (v..=r).map(pmf).sum();
        let mut alpha = 0.0f64;
        let mut sum = 0.0;
        for i in 1..=v {
            sum += pmf(v - i);
            alpha = alpha.max(sum / i as f64);
        }
        (beta + 2.0 * m as f64 * delta * alpha).min(1.0)
    }

    #[test]
    fn p_value_matches_its_definition() {
        for &(m, r, v, eps, delta) in &[
            (100, 100, 90, 1.0, 1e-5),
            (100, 50, 50, 3.0, 1e-3),
            (400, 400, 300, 0.5, 1e-4),
            (60, 60, 31, 0.0, 1e-2),
        ] {
            let (a, b) = (
                p_value(m, r, v, eps, delta),
                p_value_direct(m, r, v, eps, delta),
            );
            assert!(
                (a - b).abs() <= 1e-9 * b.max(1e-12),
                "{m} {r} {v}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn the_delta_term_caps_what_any_count_certifies() {
        // Pure ε: more canaries certify more without end.
        assert!(certifiable_max(20_000, 0.0, 0.95) > certifiable_max(2_000, 0.0, 0.95) + 2.0);
        // With δ = 1e-3 the term 2mδ·α holds every count near ln(0.05/2e-3) ≈ 3.2,
        // and past a few hundred more canaries only lose.
        for m in [200, 2_000, 20_000] {
            assert!(certifiable_max(m, 1e-3, 0.95) < 3.6, "{m}");
        }
        assert!(certifiable_max(20_000, 1e-3, 0.95) < certifiable_max(2_000, 1e-3, 0.95));
    }

    #[test]
    fn sizing_reaches_the_target_with_the_fewest_canaries() {
        let s = canaries_to_certify(4.0, 1e-5, 0.95, 50_000);
        assert!(s.reaches_target && s.certifiable_max >= 4.0);
        assert!(certifiable_max(s.canaries * 97 / 100, 1e-5, 0.95) < 4.0);
        // Out of reach: the count that certifies the most, well under the cap.
        let none = canaries_to_certify(9.0, 1e-3, 0.95, 5_000);
        assert!(!none.reaches_target && none.canaries < 1_000, "{none:?}");
        assert!(none.certifiable_max >= certifiable_max(5_000, 1e-3, 0.95));
    }

    #[test]
    fn a_perfect_attack_reaches_the_certifiable_maximum_and_chance_certifies_nothing() {
        let m = 1_000;
        // Not an even split: the guesses must follow the scores, not halves.
        let included: Vec<bool> = (0..m).map(|i| i % 3 != 0).collect();
        let perfect: Vec<f64> = included.iter().map(|&b| f64::from(u8::from(b))).collect();
        let a = audit(&perfect, &included, 1e-5, 0.95);
        assert_eq!(a.correct, m);
        assert!((a.epsilon_lower_bound - a.certifiable_max).abs() < 1e-9);
        assert!(a.epsilon_lower_bound > 5.0);
        // Scores unrelated to inclusion: about half right, nothing certified.
        let blind: Vec<f64> = (0..m).map(|i| ((i * 7919) % 1000) as f64).collect();
        let b = audit(&blind, &included, 1e-5, 0.95);
        assert!(b.epsilon_lower_bound < 0.3, "{}", b.epsilon_lower_bound);
    }
}
