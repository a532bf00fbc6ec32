//! Privacy accounting.
//!
//! - **zCDP** (the certified default): each round is an opendp
//!   [`Measurement`] whose privacy map is the bound for a sum of discrete
//!   Gaussians (Kairouz, Liu, Steinke 2021, Prop. 14); rounds are composed
//!   with opendp's `make_composition` and converted to (ε, δ) with
//!   `make_zCDP_to_approxDP` and `make_fix_delta`. zCDP gives sampling no
//!   amplification.
//! - **RDP** of the Poisson-subsampled round, converted to (ε, δ) with the
//!   conversion of Balle et al. 2020 over a grid of orders. The round's base
//!   mechanism is the sum of discrete Gaussians, ρ-zCDP by the bound above,
//!   hence RDP ε(α) = ρα at every order (Bun & Steinke 2016). Subsampling
//!   is bounded by [`rdp_subsampled_zcdp`], a bound for any mechanism with
//!   that RDP curve, derived in docs/privacy.md — not the continuous
//!   Gaussian's formula, which the discrete sum need not obey.

use opendp::combinators::{make_composition, make_fix_delta, make_zCDP_to_approxDP};
use opendp::core::{Function, Measurement, PrivacyMap};
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::L2Distance;

use super::noise::DiscreteGaussianShare;

/// One round as an opendp measurement on integer vectors, at L2 distance.
pub type RoundMeasurement = Measurement<
    VectorDomain<AtomDomain<i64>>,
    L2Distance<f64>,
    ZeroConcentratedDivergence,
    Vec<i64>,
>;

#[derive(Debug, Clone, PartialEq)]
pub struct AccountingError(pub String);

impl std::fmt::Display for AccountingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "privacy accounting failed: {}", self.0)
    }
}

impl std::error::Error for AccountingError {}

fn od_error(variant: opendp::error::ErrorVariant, message: String) -> opendp::error::Error {
    opendp::error::Error {
        variant,
        message: Some(message),
        backtrace: std::backtrace::Backtrace::disabled(),
    }
}

fn od<T>(r: opendp::error::Fallible<T>) -> Result<T, AccountingError> {
    r.map_err(|e| AccountingError(e.to_string()))
}

/// τ of Kairouz–Liu–Steinke: how far a sum of `n` discrete Gaussians of
/// variance σ² each is from one discrete Gaussian.
pub fn ddg_tau(sigma: f64, n: usize) -> f64 {
    let s2 = sigma * sigma;
    10.0 * (1..n)
        .map(|k| (-2.0 * std::f64::consts::PI.powi(2) * s2 * k as f64 / (k as f64 + 1.0)).exp())
        .sum::<f64>()
}

/// ρ (zCDP) of the sum of `n` discrete Gaussian shares of std `sigma` each,
/// at L2 sensitivity `delta2` in `dim` dimensions: ε²/2 with
/// ε = min(√(Δ²/(nσ²) + 2τd), Δ/(√n σ) + τ√d).
pub fn ddg_rho(delta2: f64, sigma: f64, n: usize, dim: usize) -> f64 {
    if delta2 == 0.0 {
        return 0.0;
    }
    let tau = ddg_tau(sigma, n);
    let nf = n as f64;
    let d = dim as f64;
    let e1 = (delta2 * delta2 / (nf * sigma * sigma) + 2.0 * tau * d).sqrt();
    let e2 = delta2 / (nf.sqrt() * sigma) + tau * d.sqrt();
    let e = e1.min(e2);
    e * e / 2.0
}

/// The round measurement: `shares` honest parties each add a discrete
/// Gaussian share of std `sigma`; the map is [`ddg_rho`].
pub fn ddg_round(
    sigma: f64,
    shares: usize,
    dim: usize,
) -> Result<RoundMeasurement, AccountingError> {
    let share = DiscreteGaussianShare::new(sigma).map_err(|e| AccountingError(e.to_string()))?;
    let function = Function::new_fallible(move |x: &Vec<i64>| {
        let mut acc = x.clone();
        for _ in 0..shares {
            share
                .add_to(&mut acc)
                .map_err(|e| od_error(opendp::error::ErrorVariant::FailedFunction, e.0))?;
        }
        Ok(acc)
    });
    let map = PrivacyMap::new_fallible(move |d_in: &f64| {
        if d_in.is_nan() || *d_in < 0.0 {
            return Err(od_error(
                opendp::error::ErrorVariant::FailedMap,
                format!("sensitivity must be non-negative, got {d_in}"),
            ));
        }
        Ok(ddg_rho(*d_in, sigma, shares, dim))
    });
    od(Measurement::new(
        VectorDomain::new(AtomDomain::default()),
        L2Distance::default(),
        ZeroConcentratedDivergence,
        function,
        map,
    ))
}

/// A measurement for accounting alone: the identity function with the
/// given privacy map, so opendp composes and converts the map.
fn accounting_measurement(
    map: impl Fn(&f64) -> f64 + 'static + Send + Sync,
) -> Result<RoundMeasurement, AccountingError> {
    od(Measurement::new(
        VectorDomain::new(AtomDomain::default()),
        L2Distance::default(),
        ZeroConcentratedDivergence,
        Function::new(|x: &Vec<i64>| x.clone()),
        PrivacyMap::new(map),
    ))
}

/// The ideal analysis of the same round: a continuous Gaussian of total std
/// `sigma_total` and no rounding, ρ = Δ²/(2σ²).
pub fn ideal_round(sigma_total: f64) -> Result<RoundMeasurement, AccountingError> {
    accounting_measurement(move |d_in| d_in * d_in / (2.0 * sigma_total * sigma_total))
}

/// ε at `delta` after composing `rounds` copies of `round` at sensitivity
/// `d_in`, all through opendp. Also returns the composed ρ.
pub fn zcdp_epsilon(
    round: &RoundMeasurement,
    rounds: usize,
    d_in: f64,
    delta: f64,
) -> Result<(f64, f64), AccountingError> {
    super::with_opendp(|| {
        let composed = od(make_composition(vec![round.clone(); rounds.max(1)]))?;
        let rho = od(composed.map(&d_in))?;
        let approx = od(make_zCDP_to_approxDP(composed))?;
        let fixed = od(make_fix_delta(&approx, delta))?;
        let (eps, _) = od(fixed.map(&d_in))?;
        Ok((eps, rho))
    })
}

/// ε at `delta` after composing different measurements at sensitivity
/// `d_in`, through opendp. Also returns the composed ρ.
pub fn zcdp_epsilon_of(
    measurements: Vec<RoundMeasurement>,
    d_in: f64,
    delta: f64,
) -> Result<(f64, f64), AccountingError> {
    super::with_opendp(|| {
        let composed = od(make_composition(measurements))?;
        let rho = od(composed.map(&d_in))?;
        let approx = od(make_zCDP_to_approxDP(composed))?;
        let fixed = od(make_fix_delta(&approx, delta))?;
        let (eps, _) = od(fixed.map(&d_in))?;
        Ok((eps, rho))
    })
}

/// δ(ε) of a ρ-zCDP mechanism: the bound opendp's `make_zCDP_to_approxDP`
/// proves (Canonne, Kamath & Steinke 2020, Corollary 13), in plain f64 with
/// the same search over the order. For searching only: callers certify the
/// value they settle on with opendp ([`zcdp_epsilon_of_rho`]).
fn cdp_delta_estimate(rho: f64, eps: f64) -> f64 {
    if rho <= 0.0 {
        return 0.0;
    }
    let (mut lo, mut hi) = (1.01f64, (eps + 1.0) / (2.0 * rho) + 2.0);
    loop {
        let mid = lo + (hi - lo) / 2.0;
        if mid == lo || mid == hi {
            break;
        }
        let deriv = (2.0 * mid - 1.0) * rho - eps + (-1.0 / mid).ln_1p();
        if deriv < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let a = hi;
    let log_delta = (a - 1.0) * (a * rho - eps) + a * (-1.0 / a).ln_1p() - (a - 1.0).ln();
    log_delta.exp().min(1.0)
}

/// ε at `delta` for total ρ by [`cdp_delta_estimate`]: microseconds where
/// opendp's conversion, in arbitrary precision, takes milliseconds.
/// For searching and projections only.
pub fn zcdp_epsilon_estimate(rho: f64, delta: f64) -> f64 {
    if rho <= 0.0 {
        return 0.0;
    }
    let (mut lo, mut hi) = (0.0f64, rho + 2.0 * (rho * (1.0 / delta).ln()).sqrt() + 1.0);
    while cdp_delta_estimate(rho, hi) > delta {
        hi *= 2.0;
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if mid == lo || mid == hi {
            break;
        }
        if cdp_delta_estimate(rho, mid) > delta {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// A release that costs `rho` at sensitivity `d` (and scales as the square
/// of the distance): how a release with its own sensitivity, such as the
/// audit's counts, joins the training rounds' composition.
pub fn fixed_rho_measurement(rho: f64, d: f64) -> Result<RoundMeasurement, AccountingError> {
    accounting_measurement(move |d_in| rho * (d_in / d).powi(2))
}

/// ε at `delta` for a total ρ, through opendp's conversion: the ledger's
/// view of everything charged so far.
pub fn zcdp_epsilon_of_rho(rho: f64, delta: f64) -> Result<f64, AccountingError> {
    if rho == 0.0 {
        return Ok(0.0);
    }
    // A unit-sensitivity measurement whose map is the charged ρ.
    let m = accounting_measurement(move |d_in| rho * d_in * d_in)?;
    super::with_opendp(|| {
        let approx = od(make_zCDP_to_approxDP(m))?;
        let fixed = od(make_fix_delta(&approx, delta))?;
        Ok(od(fixed.map(&1.0))?.0)
    })
}

// ------------------------------------------------------------------- RDP

/// Orders α at which RDP is tracked: 1.1 to 10.9 in steps of 0.1, every
/// integer from 11 to 64, then up to 1024 for small budgets (whose best
/// order is large: roughly 1 + √(ln(1/δ)/ρ)).
pub fn orders() -> Vec<f64> {
    let mut v: Vec<f64> = (1..100).map(|x| 1.0 + f64::from(x) / 10.0).collect();
    v.extend((11..=64).map(f64::from));
    v.extend(
        [
            72, 80, 88, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024,
        ]
        .map(f64::from),
    );
    v
}

/// RDP at integer order `alpha ≥ 2` of a mechanism that is `rho`-zCDP
/// (so `E_q[r^ℓ] ≤ e^{ℓ(ℓ−1)ρ}` for the likelihood ratio `r = p/q` of
/// neighbours), applied to a Poisson sample of rate `q`, under add/remove
/// neighbours. The larger of the two directions' bounds, each the
/// `(α−1)`-th power of e^{ε} (docs/privacy.md derives both):
///
/// - `D_α(mix ‖ q)`, by the binomial expansion, exactly:
///   `(1−q)^{α−1}(1 + (α−1)q) + Σ_{ℓ≥2} C(α,ℓ)(1−q)^{α−ℓ} q^ℓ E_q[r^ℓ]`;
/// - `D_α(q ‖ mix)`, expanding `q/mix = 1 + q(1−r)/mix` and using
///   `mix ≥ (1−q)q`: `1 + Σ_{ℓ≥2} C(α,ℓ) q^ℓ (1−q)^{1−ℓ} E_q|1−r|^ℓ`, with
///   `E_q(1−r)² ≤ e^{2ρ} − 1` and, for ℓ ≥ 3, the smaller of
///   `1 + e^{ℓ(ℓ−1)ρ}` and `(e^{2ρ}−1) + (e^{ℓ(ℓ−1)ρ}−1) + (e^{(ℓ−2)(ℓ−3)ρ}−1)`
///   (from `|1−r|^ℓ ≤ (1−r)²(1 + r^{ℓ−2})` and `E_q r^{ℓ−1} ≥ 1`), which
///   vanishes with ρ.
pub fn rdp_subsampled_zcdp(q: f64, rho: f64, alpha: u64) -> f64 {
    assert!(
        alpha >= 2,
        "the subsampled bound holds at integer orders from 2"
    );
    if q <= 0.0 || rho == 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return rho * alpha as f64;
    }
    let (lq, l1q) = (q.ln(), (-q).ln_1p());
    let a = alpha as f64;
    // Direction 1: the mixture against the base.
    let mut d1 = (a - 1.0) * l1q + ((a - 1.0) * q).ln_1p();
    for l in 2..=alpha {
        let lf = l as f64;
        let t = ln_binom_int(alpha, l) + (a - lf) * l1q + lf * lq + (lf - 1.0) * lf * rho;
        d1 = log_add(d1, t);
    }
    // Direction 2: the base against the mixture.
    let chi2 = log_expm1(2.0 * rho);
    let mut d2 = log_add(0.0, ln_binom_int(alpha, 2) + 2.0 * lq - l1q + chi2);
    for l in 3..=alpha {
        let lf = l as f64;
        let crude = log_add(0.0, (lf - 1.0) * lf * rho);
        let quadratic = log_add(
            log_add(chi2, log_expm1((lf - 1.0) * lf * rho)),
            log_expm1((lf - 2.0) * (lf - 3.0) * rho),
        );
        let moment = crude.min(quadratic);
        let t = ln_binom_int(alpha, l) + lf * lq + (1.0 - lf) * l1q + moment;
        d2 = log_add(d2, t);
    }
    d1.max(d2) / (a - 1.0)
}

/// ln(e^x − 1) for x ≥ 0 (−∞ at 0), without overflow.
fn log_expm1(x: f64) -> f64 {
    if x <= 0.0 {
        f64::NEG_INFINITY
    } else if x > 30.0 {
        x + (-(-x).exp()).ln_1p()
    } else {
        x.exp_m1().ln()
    }
}

/// One round's RDP over [`orders`] for a `rho`-zCDP base mechanism under
/// Poisson sampling at rate `q`. Without sampling the curve is ρα at every
/// order; with sampling the bound holds at integer orders, and a
/// fractional order takes the bound of the next integer (RDP does not
/// decrease with the order).
pub fn rdp_curve_zcdp(q: f64, rho: f64) -> Vec<f64> {
    orders()
        .into_iter()
        .map(|a| {
            if q >= 1.0 {
                rho * a
            } else {
                rdp_subsampled_zcdp(q, rho, (a.ceil() as u64).max(2))
            }
        })
        .collect()
}

fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

fn log_sub(a: f64, b: f64) -> f64 {
    // log(e^a − e^b), a ≥ b.
    if b == f64::NEG_INFINITY {
        return a;
    }
    if a <= b {
        return f64::NEG_INFINITY;
    }
    a + (-(b - a).exp()).ln_1p()
}

fn ln_binom_int(n: u64, k: u64) -> f64 {
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

fn ln_gamma(x: f64) -> f64 {
    libm::lgamma(x)
}

/// log(erfc(x)), accurate in the far tail.
fn log_erfc(x: f64) -> f64 {
    if x < 20.0 {
        libm::erfc(x).ln()
    } else {
        let x2 = x * x;
        -x2 - x.ln() - 0.5 * std::f64::consts::PI.ln()
            + (1.0 - 1.0 / (2.0 * x2) + 3.0 / (4.0 * x2 * x2)).ln()
    }
}

/// Generalised binomial coefficient C(α, i) for real α, with its sign.
fn binom_real(alpha: f64, i: u64) -> f64 {
    let mut c = 1.0;
    for j in 0..i {
        c *= (alpha - j as f64) / (j as f64 + 1.0);
    }
    c
}

fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let mut log_a = f64::NEG_INFINITY;
    for i in 0..=alpha {
        let coef = ln_binom_int(alpha, i) + i as f64 * q.ln() + (alpha - i) as f64 * (1.0 - q).ln();
        let s = coef + (i * i - i) as f64 / (2.0 * sigma * sigma);
        log_a = log_add(log_a, s);
    }
    log_a
}

fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let mut i = 0u64;
    loop {
        let coef = binom_real(alpha, i);
        let log_coef = coef.abs().ln();
        let j = alpha - i as f64;
        let fi = i as f64;
        let log_t0 = log_coef + fi * q.ln() + j * (1.0 - q).ln();
        let log_t1 = log_coef + j * q.ln() + fi * (1.0 - q).ln();
        let log_e0 = 0.5f64.ln() + log_erfc((fi - z0) / (2f64.sqrt() * sigma));
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / (2f64.sqrt() * sigma));
        let log_s0 = log_t0 + (fi * fi - fi) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        if coef > 0.0 {
            log_a0 = log_add(log_a0, log_s0);
            log_a1 = log_add(log_a1, log_s1);
        } else {
            log_a0 = log_sub(log_a0, log_s0);
            log_a1 = log_sub(log_a1, log_s1);
        }
        i += 1;
        if log_s0.max(log_s1) < -30.0 || i > 10_000 {
            break;
        }
    }
    log_add(log_a0, log_a1)
}

/// RDP at order `alpha` of one step of the Poisson-subsampled Gaussian with
/// sampling rate `q` and noise multiplier `z`.
pub fn rdp_subsampled_gaussian(q: f64, z: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if z == 0.0 {
        return f64::INFINITY;
    }
    if q >= 1.0 {
        return alpha / (2.0 * z * z);
    }
    let log_a = if alpha.fract() == 0.0 {
        log_a_int(q, z, alpha as u64)
    } else {
        log_a_frac(q, z, alpha)
    };
    log_a / (alpha - 1.0)
}

/// One step's RDP over [`orders`].
pub fn rdp_curve(q: f64, z: f64) -> Vec<f64> {
    orders()
        .into_iter()
        .map(|a| rdp_subsampled_gaussian(q, z, a))
        .collect()
}

/// (ε, α) at `delta` for a total RDP curve over [`orders`]:
/// ε = min_α RDP(α) + log((α−1)/α) − (log δ + log α)/(α−1).
pub fn rdp_epsilon(curve: &[f64], delta: f64) -> (f64, f64) {
    let mut best = (f64::INFINITY, f64::NAN);
    for (a, r) in orders().into_iter().zip(curve) {
        let eps = r + ((a - 1.0) / a).ln() - (delta.ln() + a.ln()) / (a - 1.0);
        if eps < best.0 {
            best = (eps.max(0.0), a);
        }
    }
    best
}
