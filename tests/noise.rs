//! The exact discrete Gaussian sampler against the exact distribution and
//! against opendp's sampler: means, variances, χ² on the pmf (tails pooled)
//! or on equal-probability bins, residues mod 7 and mod 16, and tail
//! probabilities at kσ. Fixed seeds; a statistic fails at p ≤ 10⁻⁴. The
//! rare paths (ties resolved by more table bits, big-integer bounds,
//! continued comparisons, uniform rejections) are forced by a test-only
//! setting and held to the same tests.

use shroud::dp::gaussian::{DiscreteGaussian, NoiseBits, NoiseSeed};
use shroud::dp::noise::DiscreteGaussianShare;
use statrs::function::beta::beta_reg;
use statrs::function::erf::erfc;
use statrs::function::gamma::gamma_ur;

const FAIL_AT: f64 = 1e-4;

/// The exact pmf of N_Z(0, σ²) on [−r, r], r = 40σ (the mass beyond is
/// below e^(−800)).
struct Exact {
    radius: i64,
    pmf: Vec<f64>,
}

impl Exact {
    fn new(sigma: u64) -> Exact {
        let s = sigma as f64;
        let radius = 40 * sigma as i64;
        let w: Vec<f64> = (-radius..=radius)
            .map(|x| (-(x as f64).powi(2) / (2.0 * s * s)).exp())
            .collect();
        let z: f64 = w.iter().sum();
        Exact {
            radius,
            pmf: w.into_iter().map(|x| x / z).collect(),
        }
    }

    fn p(&self, x: i64) -> f64 {
        if x.abs() > self.radius {
            0.0
        } else {
            self.pmf[(x + self.radius) as usize]
        }
    }

    fn values(&self) -> impl Iterator<Item = (i64, f64)> + '_ {
        (-self.radius..=self.radius).map(|x| (x, self.p(x)))
    }

    fn variance(&self) -> f64 {
        self.values().map(|(x, p)| p * (x as f64).powi(2)).sum()
    }

    fn fourth_moment(&self) -> f64 {
        self.values().map(|(x, p)| p * (x as f64).powi(4)).sum()
    }

    /// Bins of consecutive integers: one per value while the expected count
    /// is at least 20, tails pooled, or `equal` bins of about equal
    /// probability when the support is wide. Returns the upper ends
    /// (inclusive) and the probabilities.
    fn bins(&self, n: usize, equal: Option<usize>) -> (Vec<i64>, Vec<f64>) {
        let mut ends = Vec::new();
        let mut probs = Vec::new();
        let min_p = match equal {
            Some(b) => 1.0 / b as f64,
            None => 20.0 / n as f64,
        };
        let mut acc = 0.0;
        for (x, p) in self.values() {
            acc += p;
            if acc >= min_p {
                ends.push(x);
                probs.push(acc);
                acc = 0.0;
            }
        }
        // The remainder joins the last bin.
        *probs.last_mut().expect("a bin") += acc;
        *ends.last_mut().expect("a bin") = i64::MAX;
        (ends, probs)
    }
}

fn bin_counts(samples: &[i64], ends: &[i64]) -> Vec<f64> {
    let mut c = vec![0.0; ends.len()];
    for &x in samples {
        let i = ends.partition_point(|&e| e < x);
        c[i] += 1.0;
    }
    c
}

/// Upper tail of χ² with `df` degrees of freedom.
fn chi2_p(stat: f64, df: usize) -> f64 {
    gamma_ur(df as f64 / 2.0, stat / 2.0)
}

fn chi2_goodness(counts: &[f64], probs: &[f64]) -> f64 {
    let n: f64 = counts.iter().sum();
    let stat: f64 = counts
        .iter()
        .zip(probs)
        .map(|(&o, &p)| (o - n * p).powi(2) / (n * p))
        .sum();
    chi2_p(stat, counts.len() - 1)
}

/// Two-sided p of a standard normal statistic.
fn normal_p(z: f64) -> f64 {
    erfc(z.abs() / std::f64::consts::SQRT_2)
}

/// Two-sided exact binomial p of `k` successes in `n` at rate `p`.
fn binomial_p(k: usize, n: usize, p: f64) -> f64 {
    let (k, n) = (k as f64, n as f64);
    let below = if k >= n {
        1.0
    } else {
        beta_reg(n - k, k + 1.0, 1.0 - p)
    };
    let above = if k <= 0.0 {
        1.0
    } else {
        beta_reg(k, n - k + 1.0, p)
    };
    (2.0 * below.min(above)).min(1.0)
}

fn draw(sampler: &DiscreteGaussian, n: usize, seed: u8) -> Vec<i64> {
    let mut bits = NoiseBits::new(&NoiseSeed::for_testing([seed; 32]), 0);
    (0..n).map(|_| sampler.sample(&mut bits)).collect()
}

/// Every statistic of `samples` against the exact distribution, as
/// (name, p-value).
fn battery(sigma: u64, samples: &[i64]) -> Vec<(String, f64)> {
    let exact = Exact::new(sigma);
    let n = samples.len();
    let nf = n as f64;
    let var = exact.variance();
    let mut out = Vec::new();

    let mean = samples.iter().map(|&x| x as f64).sum::<f64>() / nf;
    out.push(("mean".into(), normal_p(mean / (var / nf).sqrt())));

    let m2 = samples.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / nf;
    let sd_m2 = ((exact.fourth_moment() - var * var) / nf).sqrt();
    out.push(("variance".into(), normal_p((m2 - var) / sd_m2)));

    let wide = sigma >= 1000;
    let (ends, probs) = exact.bins(n, wide.then_some(200));
    let label = if wide {
        "χ² on 200 equal-probability bins"
    } else {
        "χ² on the pmf, tails pooled"
    };
    out.push((
        label.into(),
        chi2_goodness(&bin_counts(samples, &ends), &probs),
    ));

    for m in [7i64, 16] {
        let mut probs = vec![0.0; m as usize];
        for (x, p) in exact.values() {
            probs[x.rem_euclid(m) as usize] += p;
        }
        let mut counts = vec![0.0; m as usize];
        for &x in samples {
            counts[x.rem_euclid(m) as usize] += 1.0;
        }
        out.push((format!("residues mod {m}"), chi2_goodness(&counts, &probs)));
    }

    for k in 1..=4i64 {
        let t = k * sigma as i64;
        let p: f64 = exact
            .values()
            .filter(|(x, _)| x.abs() >= t)
            .map(|(_, p)| p)
            .sum();
        let hits = samples.iter().filter(|x| x.abs() >= t).count();
        out.push((format!("P(|X| ≥ {k}σ)"), binomial_p(hits, n, p)));
    }
    out
}

fn assert_all_pass(what: &str, sigma: u64, results: &[(String, f64)]) {
    let failed: Vec<_> = results.iter().filter(|(_, p)| *p <= FAIL_AT).collect();
    assert!(
        failed.is_empty(),
        "{what} at σ = {sigma}: {failed:?} (all: {results:?})"
    );
}

const SIGMAS: [u64; 6] = [1, 3, 16, 17, 100, 100_000];

#[test]
fn samples_follow_the_exact_distribution() {
    for (i, &sigma) in SIGMAS.iter().enumerate() {
        let sampler = DiscreteGaussian::new(sigma).unwrap();
        let samples = draw(&sampler, 400_000, 10 + i as u8);
        assert_all_pass("exact pmf", sigma, &battery(sigma, &samples));
    }
}

#[test]
fn forced_rare_paths_follow_the_exact_distribution() {
    for (i, &sigma) in SIGMAS.iter().enumerate() {
        let sampler = DiscreteGaussian::forcing_rare_paths(sigma).unwrap();
        let samples = draw(&sampler, 60_000, 30 + i as u8);
        assert_all_pass("forced rare paths", sigma, &battery(sigma, &samples));
    }
}

/// Two-sample χ² of homogeneity on bins of about equal exact probability,
/// and two-sample tests of the mean and the second moment.
#[test]
fn samples_match_opendps_sampler() {
    for (i, &sigma) in SIGMAS.iter().enumerate() {
        let ours = draw(
            &DiscreteGaussian::new(sigma).unwrap(),
            200_000,
            50 + i as u8,
        );
        let share = DiscreteGaussianShare::new(sigma as f64).unwrap();
        let mut theirs = vec![0i64; 20_000];
        share.add_to_with_opendp(&mut theirs).unwrap();

        let exact = Exact::new(sigma);
        let (ends, _) = exact.bins(theirs.len(), Some(if sigma == 1 { 5 } else { 20 }));
        let (a, b) = (bin_counts(&ours, &ends), bin_counts(&theirs, &ends));
        let (na, nb) = (ours.len() as f64, theirs.len() as f64);
        let mut stat = 0.0;
        for (x, y) in a.iter().zip(&b) {
            let pooled = (x + y) / (na + nb);
            stat += (x - na * pooled).powi(2) / (na * pooled);
            stat += (y - nb * pooled).powi(2) / (nb * pooled);
        }
        let moments = |v: &[i64], pow: i32| -> (f64, f64) {
            let n = v.len() as f64;
            let xs: Vec<f64> = v.iter().map(|&x| (x as f64).powi(pow)).collect();
            let m = xs.iter().sum::<f64>() / n;
            let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
            (m, var / n)
        };
        let mut results = vec![("χ² homogeneity".to_string(), chi2_p(stat, a.len() - 1))];
        for (name, pow) in [("mean", 1), ("second moment", 2)] {
            let ((ma, va), (mb, vb)) = (moments(&ours, pow), moments(&theirs, pow));
            results.push((name.into(), normal_p((ma - mb) / (va + vb).sqrt())));
        }
        assert_all_pass("against opendp", sigma, &results);
    }
}

#[test]
fn every_vector_draws_a_fresh_stream_and_threads_their_own() {
    let share = DiscreteGaussianShare::new(1000.0).unwrap();
    // Long enough to be split over threads.
    let (mut a, mut b) = (vec![0i64; 1 << 17], vec![0i64; 1 << 17]);
    share.add_to(&mut a).unwrap();
    share.add_to(&mut b).unwrap();
    assert_ne!(a, b, "two shares from the same stream");
    // Threads sharing a key read different streams of it.
    let seed = NoiseSeed::for_testing([3; 32]);
    let g = DiscreteGaussian::new(1000).unwrap();
    let stream = |i| {
        let mut bits = NoiseBits::new(&seed, i);
        (0..64).map(|_| g.sample(&mut bits)).collect::<Vec<_>>()
    };
    assert_ne!(stream(0), stream(1));
    // And the vector is what the key says: reproducible for the tests.
    let mut c = vec![0i64; 1 << 17];
    share.add_to_with_seed(&mut c, &seed).unwrap();
    let mut d = vec![0i64; 1 << 17];
    share.add_to_with_seed(&mut d, &seed).unwrap();
    assert_eq!(c, d);
}

#[test]
fn noise_scales_the_sampler_cannot_honour_are_refused() {
    for bad in [0.0, 0.5, 2.5, f64::NAN, f64::INFINITY, -3.0] {
        let e = DiscreteGaussianShare::new(bad).err().expect("refused");
        assert!(e.to_string().contains("whole number"), "{bad}: {e}");
    }
    let e = DiscreteGaussianShare::new(2f64.powi(31))
        .err()
        .expect("refused");
    assert!(e.to_string().contains("exceeds the sampler's limit"), "{e}");
}
