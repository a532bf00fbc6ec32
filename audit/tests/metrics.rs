//! Metrics against hand-computed values.

use shroud_audit::canary::{audit, epsilon_lower_bound};
use shroud_audit::epsilon::Direction;
use shroud_audit::epsilon::{epsilon_at, lower_bound};
use shroud_audit::gate::{evaluate, AttackFigures, Decision, GateLimits};
use shroud_audit::noisy::NoisyCounts;
use shroud_audit::stats::{beta_inc, beta_quantile, binomial_sf, cp_lower, cp_upper, ln_gamma};
use shroud_audit::Roc;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn roc_with_ties_by_hand() {
    // Members 0.9, 0.8, 0.8, 0.3; non-members 0.8, 0.5, 0.1.
    let roc = Roc::from_scores(&[0.9, 0.8, 0.8, 0.3], &[0.8, 0.5, 0.1]);
    let pts: Vec<(f64, f64)> = roc.points.iter().map(|p| (p.fpr, p.tpr)).collect();
    let want = [
        (0.0, 0.0),
        (0.0, 0.25),
        (1.0 / 3.0, 0.75),
        (2.0 / 3.0, 0.75),
        (2.0 / 3.0, 1.0),
        (1.0, 1.0),
    ];
    assert_eq!(pts.len(), want.len());
    for ((a, b), (c, d)) in pts.iter().zip(want) {
        assert!(close(*a, c, 1e-12) && close(*b, d, 1e-12), "{pts:?}");
    }
    // Mann–Whitney: pairs (member > non-member) + ½ ties, over 12 pairs.
    // 0.9 beats 3; each 0.8 beats 2 and ties 1 (2.5 each); 0.3 beats 1 → 9.
    assert!(close(roc.auc(), 9.0 / 12.0, 1e-12), "{}", roc.auc());
    assert!(close(roc.tpr_at_fpr(0.0), 0.25, 1e-12));
    assert!(close(roc.tpr_at_fpr(0.5), 0.75, 1e-12));
    assert!(close(roc.tpr_at_fpr(1.0), 1.0, 1e-12));
}

#[test]
fn binned_counts_give_the_same_curve_as_scores() {
    let members = [0.05, 0.15, 0.15, 0.95, 0.55];
    let non = [0.05, 0.25, 0.35, 0.55];
    let edges: Vec<f64> = (0..10).map(|i| i as f64 / 10.0).collect();
    let bin = |s: &[f64]| {
        let mut c = vec![0u64; 10];
        s.iter().for_each(|v| c[(v * 10.0) as usize] += 1);
        c
    };
    let a = Roc::from_scores(&members, &non);
    let b = Roc::from_counts(&bin(&members), &bin(&non), &edges);
    assert!(close(a.auc(), b.auc(), 1e-12));
    assert_eq!(a.points.len(), b.points.len());
}

#[test]
fn special_functions_match_closed_forms() {
    assert!(close(ln_gamma(5.0), 24f64.ln(), 1e-12));
    assert!(close(
        ln_gamma(0.5),
        std::f64::consts::PI.sqrt().ln(),
        1e-12
    ));
    // I_x(1, 1) = x; I_x(a, 1) = x^a.
    assert!(close(beta_inc(1.0, 1.0, 0.3), 0.3, 1e-12));
    assert!(close(beta_inc(3.0, 1.0, 0.5), 0.125, 1e-12));
    assert!(close(beta_quantile(0.7, 1.0, 1.0), 0.7, 1e-9));
    // P[Bin(4, ½) ≥ 3] = 5/16.
    assert!(close(binomial_sf(3, 4, 0.5), 5.0 / 16.0, 1e-12));
    // Clopper–Pearson with no successes: upper = 1 − α^{1/n}.
    assert!(close(
        cp_upper(0, 50, 0.05),
        1.0 - 0.05f64.powf(1.0 / 50.0),
        1e-9
    ));
    // and with all successes: lower = α^{1/n}.
    assert!(close(
        cp_lower(50, 50, 0.05),
        0.05f64.powf(1.0 / 50.0),
        1e-9
    ));
    assert_eq!(cp_lower(0, 10, 0.05), 0.0);
    assert_eq!(cp_upper(10, 10, 0.05), 1.0);
}

#[test]
fn epsilon_bound_equals_the_formula() {
    // 900 of 1000 members flagged, 100 of 1000 non-members.
    let (alpha, delta) = (0.01, 1e-5);
    let (e, tpr_lo, fpr_hi, _) = epsilon_at(900, 1000, 100, 1000, delta, alpha);
    let want1 = ((cp_lower(900, 1000, alpha) - delta) / cp_upper(100, 1000, alpha)).ln();
    let want2 = ((cp_lower(900, 1000, alpha) - delta) / cp_upper(100, 1000, alpha)).ln();
    assert!(close(e, want1.max(want2), 1e-12));
    assert!(tpr_lo < 0.9 && fpr_hi > 0.1);
    // Roughly ln(0.88/0.12): the counts certify ε ≈ 2.
    assert!(e > 1.8 && e < 2.2, "{e}");
    // A blind attack certifies nothing.
    assert_eq!(epsilon_at(100, 1000, 100, 1000, delta, alpha).0, 0.0);
}

#[test]
fn lower_bound_pays_for_the_thresholds_tried() {
    let members: Vec<f64> = (0..500).map(|i| 1.0 + i as f64).collect();
    let non: Vec<f64> = (0..500).map(|i| -(i as f64)).collect();
    let roc = Roc::from_scores(&members, &non);
    let b = lower_bound(&roc, 1e-5, 0.95);
    assert!(b.epsilon > 0.0);
    // Perfect separation reaches the sample's limit, which is modest with
    // 500 + 500 records.
    assert!(close(b.epsilon, b.certifiable_max, 1e-9), "{b:?}");
    assert!(b.certifiable_max < 8.0, "{}", b.certifiable_max);
    let random = Roc::from_scores(&[0.1, 0.5, 0.9, 0.3], &[0.2, 0.6, 0.8, 0.4]);
    assert_eq!(lower_bound(&random, 1e-5, 0.95).epsilon, 0.0);
}

#[test]
fn canary_bounds() {
    // All of 100 guesses right, pure ε (δ = 0):
    // P[Bin(100, p) = 100] = p^100 = 0.05 → p = 0.05^{1/100}.
    let e = epsilon_lower_bound(100, 100, 100, 0.0, 0.95);
    let p = 0.05f64.powf(0.01);
    assert!(close(e, (p / (1.0 - p)).ln(), 1e-6), "{e}");
    // The δ term only takes away.
    assert!(epsilon_lower_bound(100, 100, 100, 1e-5, 0.95) < e);
    // Half right is chance: nothing certified.
    assert_eq!(epsilon_lower_bound(100, 100, 50, 1e-5, 0.95), 0.0);
    // A perfect attack on 400 canaries.
    let included: Vec<bool> = (0..400).map(|i| i % 2 == 0).collect();
    let scores: Vec<f64> = included
        .iter()
        .map(|&b| if b { 1.0 } else { 0.0 })
        .collect();
    let a = audit(&scores, &included, 1e-5, 0.95);
    assert_eq!(a.correct, a.guesses);
    assert!(a.epsilon_lower_bound > 1.0);
    let blind: Vec<f64> = (0..400).map(|i| ((i * 7919) % 400) as f64).collect();
    assert!(audit(&blind, &included, 1e-5, 0.95).epsilon_lower_bound < 0.5);
}

#[test]
fn gate_blocks_on_any_breach_and_names_it() {
    let limits = GateLimits {
        max_auc: 0.6,
        max_tpr_at_fpr: Some((0.01, 0.05)),
        max_epsilon_lower_bound: 2.0,
    };
    let ok = [AttackFigures {
        attack: "loss",
        auc: Some(0.52),
        tpr_at_fpr: Some(0.012),
        epsilon_lower_bound: 0.1,
        auc_ceiling: Some(0.9),
        tpr_ceiling: None,
        // Even a perfect attack would certify only 1.5 < 2: this check
        // cannot fail and is flagged.
        epsilon_ceiling: Some(1.5),
        lower_bounds: true,
    }];
    let (checks, d) = evaluate(&limits, &ok);
    assert_eq!(d, Decision::Release);
    assert_eq!(checks.len(), 3);
    assert!(checks[0].could_fail && checks[1].could_fail);
    assert!(!checks[2].could_fail);
    // Figures from noisy counts are named as the bounds they are.
    assert_eq!(checks[0].check, "auc_lower_bound");
    assert_eq!(checks[1].check, "tpr_lower_bound_at_fpr_0.01");
    let bad = [
        AttackFigures {
            attack: "loss",
            auc: Some(0.52),
            tpr_at_fpr: Some(0.012),
            epsilon_lower_bound: 0.1,
            auc_ceiling: None,
            tpr_ceiling: None,
            epsilon_ceiling: None,
            lower_bounds: true,
        },
        AttackFigures {
            attack: "canary",
            auc: None,
            tpr_at_fpr: None,
            epsilon_lower_bound: 2.5,
            auc_ceiling: None,
            tpr_ceiling: None,
            epsilon_ceiling: Some(6.0),
            lower_bounds: false,
        },
    ];
    let (checks, d) = evaluate(&limits, &bad);
    assert_eq!(d, Decision::Block);
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].attack, "canary");
    assert!(close(failed[0].margin, -0.5, 1e-12));
}

#[test]
fn the_bound_reports_the_rates_of_its_own_direction() {
    // 100 members, 100 non-members; flagging the top bin catches 95
    // non-members' complement: the non-member direction wins.
    let (tp, m, fp, n, alpha) = (95, 100, 50, 100, 0.01);
    let (e, lo, hi, dir) = epsilon_at(tp, m, fp, n, 0.0, alpha);
    assert_eq!(dir, Direction::NonMembers);
    assert!(close(lo, cp_lower(n - fp, n, alpha), 1e-12), "{lo}");
    assert!(close(hi, cp_upper(m - tp, m, alpha), 1e-12), "{hi}");
    assert!(close(e, (lo / hi).ln(), 1e-12));
}

/// Deterministic pseudo-Gaussian noise (sum of 12 uniforms − 6).
fn noise(state: &mut u64, std: f64) -> f64 {
    let mut acc = 0.0;
    for _ in 0..12 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        acc += (*state >> 11) as f64 / (1u64 << 53) as f64;
    }
    (acc - 6.0) * std
}

fn noisy(counts: &[i64], std: f64, seed: &mut u64) -> Vec<i64> {
    counts
        .iter()
        .map(|&c| c + noise(seed, std).round() as i64)
        .collect()
}

#[test]
fn exact_counts_give_bounds_no_stronger_than_the_point_figures() {
    let members: Vec<i64> = (0..20).map(|i| 5 + i / 2).collect();
    let non_members: Vec<i64> = (0..20).map(|i| 15 - i / 2).collect();
    let edges: Vec<f64> = (0..20).map(f64::from).collect();
    let a = NoisyCounts {
        members: &members,
        non_members: &non_members,
        lower_edges: &edges,
        noise_std: 0.0,
    }
    .analyse(1e-5, 0.95);
    assert!(a.auc_lower < a.roc.auc(), "{} {}", a.auc_lower, a.roc.auc());
    assert!(a.roc.auc() > 0.6);
    let (lo, hi) = a.tpr_bounds_at_fpr(0.1);
    assert!(lo <= a.roc.tpr_at_fpr(0.1) && a.roc.tpr_at_fpr(0.1) <= hi);
    let exact = lower_bound(
        &Roc::from_counts(
            &members.iter().map(|&c| c as u64).collect::<Vec<_>>(),
            &non_members.iter().map(|&c| c as u64).collect::<Vec<_>>(),
            &edges,
        ),
        1e-5,
        0.95,
    );
    assert!(a.epsilon.epsilon <= exact.epsilon + 1e-12);
}

#[test]
fn strong_leakage_shows_through_modest_noise_and_not_through_heavy_noise() {
    // 400 members all in the top bins, 400 non-members all in the bottom,
    // over 32 bins as the audit uses.
    let mut members = vec![0i64; 32];
    let mut non_members = vec![0i64; 32];
    members[27..].iter_mut().for_each(|c| *c = 80);
    non_members[..5].iter_mut().for_each(|c| *c = 80);
    let edges: Vec<f64> = (0..32).map(f64::from).collect();
    let mut seed = 7;
    let analyse = |std: f64, seed: &mut u64| {
        NoisyCounts {
            members: &noisy(&members, std, seed),
            non_members: &noisy(&non_members, std, seed),
            lower_edges: &edges,
            noise_std: std,
        }
        .analyse(1e-5, 0.95)
    };
    let modest = analyse(3.0, &mut seed);
    assert!(modest.auc_lower > 0.6, "{}", modest.auc_lower);
    assert!(modest.epsilon.epsilon > 1.0, "{:?}", modest.epsilon);
    let heavy = analyse(200.0, &mut seed);
    assert!(heavy.auc_lower < 0.5, "{}", heavy.auc_lower);
    assert!(heavy.epsilon.epsilon < 0.5, "{:?}", heavy.epsilon);
}

#[test]
fn noise_alone_rarely_certifies_leakage() {
    // Members and non-members drawn alike: any ε above zero or AUC lower
    // bound above ½ is a false alarm; at 95 % confidence at most 5 % of
    // trials may raise one (Bonferroni makes it far fewer).
    let edges: Vec<f64> = (0..40).map(f64::from).collect();
    let mut seed = 11;
    let mut false_alarms = 0;
    for _ in 0..200 {
        let base: Vec<i64> = (0..40)
            .map(|_| 10 + noise(&mut seed, 2.0).round() as i64)
            .collect();
        let base2: Vec<i64> = (0..40)
            .map(|_| 10 + noise(&mut seed, 2.0).round() as i64)
            .collect();
        let a = NoisyCounts {
            members: &noisy(&base, 4.0, &mut seed),
            non_members: &noisy(&base2, 4.0, &mut seed),
            lower_edges: &edges,
            noise_std: 4.0,
        }
        .analyse(1e-5, 0.95);
        if a.epsilon.epsilon > 0.2 || a.auc_lower > 0.5 {
            false_alarms += 1;
        }
    }
    assert!(false_alarms <= 10, "{false_alarms} false alarms in 200");
}
