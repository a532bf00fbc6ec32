//! The distributed-DP pipeline and the accountants.

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use shroud::dp::accountant::{
    ddg_rho, ddg_round, rdp_curve, rdp_epsilon, rdp_subsampled_gaussian, zcdp_epsilon,
    zcdp_epsilon_estimate, zcdp_epsilon_of_rho,
};
use shroud::dp::encode::{clip, randomized_round, EncodingScheme};
use shroud::dp::noise::DiscreteGaussianShare;
use shroud::dp::rotation::{rotate, unrotate};

fn scheme(dimension: usize, gamma: f64, bits: u8, rotation: bool) -> EncodingScheme {
    let padded = if rotation {
        dimension.next_power_of_two()
    } else {
        dimension
    };
    EncodingScheme {
        dimension,
        plain: 0,
        padded,
        rotated: padded,
        clip_norm: 1e9,
        gamma,
        bits,
        rotation_seed: rotation.then_some([9; 32]),
        rounding_bound_sq: f64::INFINITY,
    }
}

#[test]
fn rotation_is_exactly_invertible_and_preserves_norm() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for dim in [1usize, 7, 64, 100, 1000] {
        let x: Vec<f64> = (0..dim)
            .map(|_| (rand_core::RngCore::next_u32(&mut rng) as f64 / u32::MAX as f64) - 0.5)
            .collect();
        let y = rotate(&x, [3; 32]);
        assert_eq!(y.len(), dim.next_power_of_two());
        let nx: f64 = x.iter().map(|a| a * a).sum();
        let ny: f64 = y.iter().map(|a| a * a).sum();
        assert!((nx - ny).abs() < 1e-12 * nx.max(1.0), "{dim}");
        let back = unrotate(&y, [3; 32], dim);
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() < 1e-12, "{dim}: {a} vs {b}");
        }
        // Another seed gives another rotation (a 1-vector has only two).
        if dim > 8 {
            assert_ne!(rotate(&x, [4; 32]), y);
        }
    }
}

#[test]
fn clipping_is_exact() {
    let mut v = vec![3.0, 4.0];
    clip(&mut v, 1.0);
    assert!((v[0] - 0.6).abs() < 1e-15 && (v[1] - 0.8).abs() < 1e-15);
    let mut small = vec![0.3, 0.4];
    clip(&mut small, 1.0);
    assert_eq!(small, vec![0.3, 0.4]);
}

#[test]
fn randomized_rounding_is_unbiased() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let x = [0.3, -1.75, 2.5, 7.0, -0.01];
    let n = 200_000;
    let mut sums = [0i64; 5];
    for _ in 0..n {
        for (s, r) in sums.iter_mut().zip(randomized_round(&x, &mut rng)) {
            *s += r;
        }
    }
    for (i, s) in sums.iter().enumerate() {
        let mean = *s as f64 / n as f64;
        // Std of the mean is at most 0.5/√n ≈ 0.0011; allow 5 of them.
        assert!(
            (mean - x[i]).abs() < 0.0056,
            "coordinate {i}: mean {mean} vs {}",
            x[i]
        );
    }
    // Integers are never moved.
    assert_eq!(randomized_round(&[3.0, -2.0], &mut rng), vec![3, -2]);
}

#[test]
fn encoding_without_noise_decodes_exactly() {
    // Inputs on the γ grid: quantize, wrap, sum mod 2^bits, decode gives
    // the exact sum, negative values included.
    let s = scheme(5, 0.25, 16, false);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let a = [1.0, -2.5, 0.0, 3.75, -0.25];
    let b = [-4.0, 0.5, 1.25, -3.75, 0.0];
    let qa = s.quantize(&a, &mut rng).unwrap();
    let qb = s.quantize(&b, &mut rng).unwrap();
    let mask = (1u32 << 16) - 1;
    let sum: Vec<u32> = s
        .wrap(&qa)
        .iter()
        .zip(s.wrap(&qb))
        .map(|(x, y)| x.wrapping_add(y) & mask)
        .collect();
    let decoded = s.decode(&sum);
    let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_eq!(decoded, want);
}

/// A canary lives in its own plain coordinate: a record leaves the plain
/// block untouched, a canary touches nothing but its coordinate, and both
/// decode back where they were put.
#[test]
fn plain_coordinates_carry_canaries_apart_from_the_rotated_model() {
    let mut s = scheme(100, 1e-4, 32, true);
    s.plain = 5;
    s.padded = s.rotated + 5;
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let record: Vec<f64> = (0..100).map(|i| (i as f64 * 0.11).cos() * 0.01).collect();
    let mut acc = vec![0i64; s.padded];
    s.quantize_into(&record, &mut rng, &mut acc).unwrap();
    assert!(
        acc[s.rotated..].iter().all(|&v| v == 0),
        "a record reached the canaries"
    );
    let mut canary = vec![0.0; 105];
    canary[100 + 3] = 0.5;
    let before = acc.clone();
    s.quantize_into(&canary, &mut rng, &mut acc).unwrap();
    let changed: Vec<usize> = (0..acc.len()).filter(|&i| acc[i] != before[i]).collect();
    assert_eq!(changed, vec![s.rotated + 3]);
    // Given by index, the same canary lands on the same coordinate alone.
    let mut by_index = before.clone();
    s.quantize_plain_into(3, 0.5, &mut rng, &mut by_index)
        .unwrap();
    let changed: Vec<usize> = (0..acc.len())
        .filter(|&i| by_index[i] != before[i])
        .collect();
    assert_eq!(changed, vec![s.rotated + 3]);
    assert!(s
        .quantize_plain_into(5, 0.5, &mut rng, &mut by_index)
        .is_err());
    let back = s.decode(&s.wrap(&acc));
    assert_eq!(back.len(), 105);
    assert!((back[103] - 0.5).abs() <= 1e-4, "{}", back[103]);
    for (a, b) in back[..100].iter().zip(&record) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }
}

#[test]
fn rotated_encoding_round_trips_within_rounding() {
    let s = scheme(100, 1e-4, 32, true);
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let x: Vec<f64> = (0..100).map(|i| (i as f64 * 0.37).sin()).collect();
    let q = s.quantize(&x, &mut rng).unwrap();
    let back = s.decode(&s.wrap(&q));
    let err: f64 = back
        .iter()
        .zip(&x)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    // Rounding error per coordinate is below γ, so the norm is below γ√d.
    assert!(err < 1e-4 * (128f64).sqrt(), "{err}");
}

#[test]
fn bad_updates_are_refused() {
    let s = scheme(3, 0.1, 16, false);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    assert!(s.quantize(&[1.0, 2.0], &mut rng).is_err());
    let e = s.quantize(&[1.0, f64::NAN, 2.0], &mut rng).unwrap_err();
    assert_eq!(e.to_string(), "update value 1 is not finite");
}

/// Parties holding zero vectors each add a noise share; the decoded sum's
/// coordinates must have variance n·σ²·γ² (rotation keeps iid noise iid).
/// d = 65 536 coordinates give a relative standard error of √(2/d) ≈ 0.55 %
/// on the variance; the tolerance is 4 %. The noise comes from opendp's
/// OpenSSL-backed sampler, which cannot be seeded.
#[test]
fn decoded_noisy_sum_has_the_analytic_variance() {
    let (n, sigma, gamma, dim) = (4usize, 13.0, 0.01, 65_536usize);
    let s = scheme(dim, gamma, 24, true);
    let share = DiscreteGaussianShare::new(sigma).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let mask = (1u32 << 24) - 1;
    let mut sum = vec![0u32; dim];
    for _ in 0..n {
        let q = s.quantize(&vec![0.0; dim], &mut rng).unwrap();
        let words = s.finish(q, &share).unwrap();
        for (acc, w) in sum.iter_mut().zip(words) {
            *acc = acc.wrapping_add(w) & mask;
        }
    }
    let decoded = s.decode(&sum);
    let mean = decoded.iter().sum::<f64>() / dim as f64;
    let var = decoded.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (dim as f64 - 1.0);
    let want = n as f64 * sigma * sigma * gamma * gamma;
    assert!(
        (var / want - 1.0).abs() < 0.04,
        "variance {var}, expected {want}"
    );
    assert!(mean.abs() < 4.0 * (want / dim as f64).sqrt(), "mean {mean}");
}

#[test]
fn noise_shares_are_integers_with_the_requested_spread() {
    let share = DiscreteGaussianShare::new(3.0).unwrap();
    let mut v = vec![0i64; 40_000];
    share.add_to(&mut v).unwrap();
    let var = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64;
    // Relative standard error √(2/40000) ≈ 0.7 %; tolerance 5 %.
    assert!((var / 9.0 - 1.0).abs() < 0.05, "{var}");
    // opendp's own map for one share: ρ = Δ²/(2σ²).
    assert!((share.rho(3.0).unwrap() - 0.5).abs() < 1e-12);
    assert!(DiscreteGaussianShare::new(0.0).is_err());
    assert!(DiscreteGaussianShare::new(f64::NAN).is_err());
}

#[test]
fn the_fast_conversion_estimate_tracks_opendps() {
    // Plans search with the estimate and certify with opendp; the search
    // lands where opendp agrees.
    for rho in [1e-4, 0.01, 0.125, 1.0, 5.0] {
        for delta in [1e-5, 1e-8] {
            let certified = zcdp_epsilon_of_rho(rho, delta).unwrap();
            let estimate = zcdp_epsilon_estimate(rho, delta);
            assert!(
                (estimate / certified - 1.0).abs() < 1e-6,
                "ρ {rho} δ {delta}: {estimate} vs {certified}"
            );
        }
    }
}

#[test]
fn zcdp_conversion_matches_opendp_known_value() {
    let eps = zcdp_epsilon_of_rho(0.125, 1e-6).unwrap();
    assert!((eps - 2.41909).abs() < 1e-4, "{eps}");
}

#[test]
fn rdp_of_the_gaussian_over_100_rounds() {
    let curve: Vec<f64> = rdp_curve(1.0, 1.0).into_iter().map(|r| 100.0 * r).collect();
    let (eps, alpha) = rdp_epsilon(&curve, 1e-5);
    assert!((eps - 96.12).abs() < 0.01, "ε = {eps} at α = {alpha}");
}

#[test]
fn subsampling_amplifies_and_orders_agree() {
    let full = rdp_subsampled_gaussian(1.0, 1.1, 8.0);
    let sampled = rdp_subsampled_gaussian(0.01, 1.1, 8.0);
    assert!(sampled < full / 50.0, "{sampled} vs {full}");
    // The fractional-order formula agrees with the integer one nearby.
    let int = rdp_subsampled_gaussian(0.05, 1.5, 3.0);
    let frac = rdp_subsampled_gaussian(0.05, 1.5, 3.0 + 1e-7);
    assert!((int - frac).abs() < 1e-4 * int, "{int} vs {frac}");
    // At α = 2 the sum has a closed form: ln(1 + q²(e^{1/σ²} − 1)).
    for (q, sigma) in [(1e-3, 2.0), (0.1, 0.8), (0.5, 3.0)] {
        let r = rdp_subsampled_gaussian(q, sigma, 2.0);
        let exact = (q * q * ((1.0 / (sigma * sigma)).exp() - 1.0)).ln_1p();
        assert!((r / exact - 1.0).abs() < 1e-9, "{r} vs {exact}");
    }
}

#[test]
fn sum_of_discrete_gaussians_approaches_the_ideal_bound() {
    // With large shares, τ vanishes and ρ = Δ²/(2nσ²).
    let rho = ddg_rho(100.0, 50.0, 4, 1024);
    let ideal = 100.0f64.powi(2) / (2.0 * 4.0 * 2500.0);
    assert!((rho - ideal).abs() < 1e-9, "{rho} vs {ideal}");
    // Tiny shares pay the τ term.
    assert!(ddg_rho(1.0, 0.3, 4, 1024) > 1.0 / (2.0 * 4.0 * 0.09));
    // Composition through opendp adds ρ.
    let round = ddg_round(50.0, 4, 1024).unwrap();
    let (_, rho10) = zcdp_epsilon(&round, 10, 100.0, 1e-5).unwrap();
    assert!((rho10 - 10.0 * rho).abs() < 1e-9);
}
