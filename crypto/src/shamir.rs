//! Shamir secret sharing over the Ristretto scalar field (prime order
//! `2^252 + 27742317777372353535851937790883648493`). A share held by party
//! `p` is the polynomial evaluated at `x = p + 1`.

use curve25519_dalek::Scalar;
use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::InvalidMessage;
use crate::ids::PartyId;

/// A secret field element: the self-mask scalar `b_u` or a mask-key scalar.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SharedSecret(pub(crate) Scalar);

impl SharedSecret {
    pub fn random(rng: &mut impl CryptoRngCore) -> Self {
        SharedSecret(Scalar::random(rng))
    }

    pub(crate) fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    /// Constant-time equality, for tests and checks.
    pub fn ct_eq(&self, other: &SharedSecret) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}

/// One share: the holder and the polynomial's value at the holder's point.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretShare {
    #[zeroize(skip)]
    pub holder: PartyId,
    pub(crate) value: Scalar,
}

impl SecretShare {
    pub(crate) fn value_bytes(&self) -> [u8; 32] {
        self.value.to_bytes()
    }

    pub(crate) fn from_parts(holder: PartyId, bytes: &[u8; 32]) -> Result<Self, InvalidMessage> {
        let value = Option::<Scalar>::from(Scalar::from_canonical_bytes(*bytes))
            .ok_or(InvalidMessage::NonCanonical("secret share"))?;
        Ok(SecretShare { holder, value })
    }
}

fn point(p: PartyId) -> Scalar {
    Scalar::from(u64::from(p.0) + 1)
}

/// Why a set of shares could not be combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShamirError {
    NotEnoughShares {
        have: usize,
        needed: usize,
    },
    DuplicateHolder(PartyId),
    BadThreshold {
        threshold: usize,
        holders: usize,
    },
    /// An interpolator for `holders` shares was given another number.
    ShareCount {
        given: usize,
        holders: usize,
    },
    /// The share at `position` is not held by the holder expected there.
    WrongHolder {
        position: usize,
        expected: PartyId,
        got: PartyId,
    },
}

impl core::fmt::Display for ShamirError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ShamirError::NotEnoughShares { have, needed } => {
                write!(f, "{have} shares given, {needed} needed")
            }
            ShamirError::DuplicateHolder(p) => write!(f, "two shares held by party {p}"),
            ShamirError::BadThreshold { threshold, holders } => write!(
                f,
                "threshold {threshold} is not between 1 and the {holders} holders"
            ),
            ShamirError::ShareCount { given, holders } => write!(
                f,
                "{given} shares given to an interpolator for exactly {holders} holders"
            ),
            ShamirError::WrongHolder {
                position,
                expected,
                got,
            } => write!(
                f,
                "share {position} is held by party {got}, the interpolator expects party {expected}"
            ),
        }
    }
}

impl std::error::Error for ShamirError {}

/// Splits `secret` into one share per holder; any `threshold` of them
/// reconstruct it and fewer reveal nothing.
pub fn split(
    secret: &SharedSecret,
    holders: &[PartyId],
    threshold: usize,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<SecretShare>, ShamirError> {
    if threshold == 0 || threshold > holders.len() {
        return Err(ShamirError::BadThreshold {
            threshold,
            holders: holders.len(),
        });
    }
    check_distinct(holders.iter().copied())?;
    let mut coeffs: Vec<Scalar> = Vec::with_capacity(threshold);
    coeffs.push(secret.0);
    for _ in 1..threshold {
        coeffs.push(Scalar::random(rng));
    }
    let shares = holders
        .iter()
        .map(|&h| {
            let x = point(h);
            // Horner's rule from the highest coefficient down.
            let value = coeffs.iter().rev().fold(Scalar::ZERO, |acc, c| acc * x + c);
            SecretShare { holder: h, value }
        })
        .collect();
    coeffs.zeroize();
    Ok(shares)
}

fn check_distinct(holders: impl Iterator<Item = PartyId>) -> Result<(), ShamirError> {
    let mut seen = std::collections::BTreeSet::new();
    for h in holders {
        if !seen.insert(h) {
            return Err(ShamirError::DuplicateHolder(h));
        }
    }
    Ok(())
}

/// Lagrange coefficients at zero for a fixed set of holders. Computing them
/// is quadratic in the threshold, so the coordinator computes them once per
/// holder set and reuses them for every secret held by the same set.
pub struct Interpolator {
    holders: Vec<PartyId>,
    coeffs: Vec<Scalar>,
}

impl Interpolator {
    /// `holders` must be distinct; exactly these shares will be combined.
    pub fn new(holders: &[PartyId]) -> Result<Self, ShamirError> {
        check_distinct(holders.iter().copied())?;
        let xs: Vec<Scalar> = holders.iter().map(|&h| point(h)).collect();
        let mut nums = Vec::with_capacity(xs.len());
        let mut dens = Vec::with_capacity(xs.len());
        for (i, xi) in xs.iter().enumerate() {
            let mut num = Scalar::ONE;
            let mut den = Scalar::ONE;
            for (j, xj) in xs.iter().enumerate() {
                if i != j {
                    num *= xj;
                    den *= xj - xi;
                }
            }
            nums.push(num);
            dens.push(den);
        }
        // Distinct non-zero points make every denominator non-zero.
        Scalar::batch_invert(&mut dens);
        let coeffs = nums.iter().zip(&dens).map(|(n, d)| n * d).collect();
        Ok(Interpolator {
            holders: holders.to_vec(),
            coeffs,
        })
    }

    pub fn holders(&self) -> &[PartyId] {
        &self.holders
    }

    /// Combines exactly one share per holder, in the holders' order; any
    /// other count or order is refused, since a missing or stray share would
    /// silently give a wrong secret.
    pub fn combine<'a>(
        &self,
        shares: impl IntoIterator<Item = &'a SecretShare>,
    ) -> Result<SharedSecret, ShamirError> {
        let mut acc = Scalar::ZERO;
        let mut given = 0;
        for share in shares {
            let (Some(expected), Some(c)) = (self.holders.get(given), self.coeffs.get(given))
            else {
                given += 1;
                continue;
            };
            if share.holder != *expected {
                acc.zeroize();
                return Err(ShamirError::WrongHolder {
                    position: given,
                    expected: *expected,
                    got: share.holder,
                });
            }
            acc += share.value * c;
            given += 1;
        }
        if given != self.holders.len() {
            acc.zeroize();
            return Err(ShamirError::ShareCount {
                given,
                holders: self.holders.len(),
            });
        }
        Ok(SharedSecret(acc))
    }
}

/// Reconstructs a secret from at least `threshold` shares (the first
/// `threshold` are used). With fewer than `threshold` the secret is
/// information-theoretically hidden, so this refuses.
pub fn reconstruct(shares: &[&SecretShare], threshold: usize) -> Result<SharedSecret, ShamirError> {
    if threshold == 0 || shares.len() < threshold {
        return Err(ShamirError::NotEnoughShares {
            have: shares.len(),
            needed: threshold,
        });
    }
    let used = &shares[..threshold];
    let holders: Vec<PartyId> = used.iter().map(|s| s.holder).collect();
    Interpolator::new(&holders)?.combine(used.iter().copied())
}

/// A secret recovered against a check, and what the check showed about the
/// shares.
pub struct Recovered {
    pub secret: SharedSecret,
    /// Holders whose shares lie off the polynomial that opened the check —
    /// named only when at least `threshold + max_colluding` shares lie on it,
    /// so that it is the dealt polynomial and not one colluders steered to
    /// the right secret through a mix of shares.
    pub bad_holders: Vec<PartyId>,
}

/// Subsets tried beyond the error-correction radius, at most.
const SUBSET_TRIALS: usize = 4096;

/// Reconstructs a secret from `shares` (distinct holders, at least
/// `threshold` of them) that `accept` recognises — a commitment or an
/// advertised public key. First the first `threshold` shares; when they do
/// not open the check, Berlekamp–Welch decoding corrects up to
/// ⌊(k − t)/2⌋ bad shares among the k given; beyond that, other subsets of
/// `threshold` shares are tried (a bounded number). `None` when nothing
/// tried opens the check.
pub fn recover(
    shares: &[SecretShare],
    threshold: usize,
    max_colluding: usize,
    mut accept: impl FnMut(&SharedSecret) -> bool,
) -> Result<Option<Recovered>, ShamirError> {
    let k = shares.len();
    if threshold == 0 || k < threshold {
        return Err(ShamirError::NotEnoughShares {
            have: k,
            needed: threshold,
        });
    }
    check_distinct(shares.iter().map(|s| s.holder))?;
    let holders: Vec<PartyId> = shares[..threshold].iter().map(|s| s.holder).collect();
    let first = Interpolator::new(&holders)?.combine(&shares[..threshold])?;
    if accept(&first) {
        return Ok(Some(Recovered {
            secret: first,
            bad_holders: Vec::new(),
        }));
    }
    let xs: Vec<Scalar> = shares.iter().map(|s| point(s.holder)).collect();
    let ys: zeroize::Zeroizing<Vec<Scalar>> =
        zeroize::Zeroizing::new(shares.iter().map(|s| s.value).collect());
    let named = |poly: &Poly| -> Option<Recovered> {
        let secret = SharedSecret(poly.0.first().copied().unwrap_or(Scalar::ZERO));
        let on: Vec<bool> = xs
            .iter()
            .zip(ys.iter())
            .map(|(x, y)| poly.eval(x) == *y)
            .collect();
        let agreeing = on.iter().filter(|b| **b).count();
        let bad_holders = if agreeing >= threshold + max_colluding {
            shares
                .iter()
                .zip(&on)
                .filter(|(_, on)| !**on)
                .map(|(s, _)| s.holder)
                .collect()
        } else {
            Vec::new()
        };
        Some(Recovered {
            secret,
            bad_holders,
        })
    };
    let errors = (k - threshold) / 2;
    if errors > 0 {
        if let Some(poly) = berlekamp_welch(&xs, &ys, threshold, errors) {
            let secret = SharedSecret(poly.0.first().copied().unwrap_or(Scalar::ZERO));
            if accept(&secret) {
                return Ok(named(&poly));
            }
        }
    }
    let mut subset: Vec<usize> = (0..threshold).collect();
    for _ in 0..SUBSET_TRIALS {
        if !next_subset(&mut subset, k) {
            break;
        }
        let sub_x: Vec<Scalar> = subset.iter().map(|&i| xs[i]).collect();
        let sub_y: zeroize::Zeroizing<Vec<Scalar>> =
            zeroize::Zeroizing::new(subset.iter().map(|&i| ys[i]).collect());
        let Some(poly) = interpolate(&sub_x, &sub_y) else {
            continue;
        };
        let secret = SharedSecret(poly.0.first().copied().unwrap_or(Scalar::ZERO));
        if accept(&secret) {
            return Ok(named(&poly));
        }
    }
    Ok(None)
}

/// The next `m`-subset of `0..k` in lexicographic order; `false` after the last.
fn next_subset(idx: &mut [usize], k: usize) -> bool {
    let m = idx.len();
    let mut i = m;
    while i > 0 {
        i -= 1;
        if idx[i] < k - m + i {
            idx[i] += 1;
            for j in i + 1..m {
                idx[j] = idx[j - 1] + 1;
            }
            return true;
        }
    }
    false
}

/// A polynomial by its coefficients, lowest degree first. Its coefficients
/// determine a secret, so they are wiped on drop.
struct Poly(Vec<Scalar>);

impl Drop for Poly {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Poly {
    fn eval(&self, x: &Scalar) -> Scalar {
        self.0.iter().rev().fold(Scalar::ZERO, |acc, c| acc * x + c)
    }
}

/// Solves `a · v = b` over the field by Gaussian elimination, free
/// variables set to zero; `None` when the system is inconsistent. `a` has
/// `b.len()` rows of `cols` entries each. The system is built from secret
/// shares, so every copy is wiped before returning.
fn solve(mut a: Vec<Vec<Scalar>>, mut b: Vec<Scalar>, cols: usize) -> Option<Vec<Scalar>> {
    let rows = b.len();
    let mut pivots = Vec::with_capacity(cols);
    let mut r = 0;
    for c in 0..cols {
        if r == rows {
            break;
        }
        let Some(p) = (r..rows).find(|&i| a[i][c] != Scalar::ZERO) else {
            continue;
        };
        a.swap(r, p);
        b.swap(r, p);
        let inv = a[r][c].invert();
        a[r][c..].iter_mut().for_each(|x| *x *= inv);
        b[r] *= inv;
        let mut pivot: Vec<Scalar> = a[r][c..].to_vec();
        let pivot_b = b[r];
        for (i, (row, bi)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
            let f = row[c];
            if i == r || f == Scalar::ZERO {
                continue;
            }
            row[c..]
                .iter_mut()
                .zip(&pivot)
                .for_each(|(x, p)| *x -= f * p);
            *bi -= f * pivot_b;
        }
        pivot.zeroize();
        pivots.push((r, c));
        r += 1;
    }
    let consistent = b[r..].iter().all(|x| *x == Scalar::ZERO);
    let mut v = vec![Scalar::ZERO; cols];
    if consistent {
        for (row, col) in pivots {
            v[col] = b[row];
        }
    }
    a.iter_mut().for_each(|row| row.zeroize());
    b.zeroize();
    consistent.then_some(v)
}

/// The polynomial of degree below `xs.len()` through the points.
fn interpolate(xs: &[Scalar], ys: &[Scalar]) -> Option<Poly> {
    let n = xs.len();
    let rows = xs
        .iter()
        .map(|x| {
            let mut row = Vec::with_capacity(n);
            let mut p = Scalar::ONE;
            for _ in 0..n {
                row.push(p);
                p *= x;
            }
            row
        })
        .collect();
    solve(rows, ys.to_vec(), n).map(Poly)
}

/// Berlekamp–Welch: the polynomial of degree below `t` that agrees with all
/// but at most `e` of the points, when `k ≥ t + 2e`. Finds `E` (monic,
/// degree `e`) and `Q` (degree below `t + e`) with `Q(x_i) = y_i E(x_i)`,
/// then divides; any solution gives the same quotient.
fn berlekamp_welch(xs: &[Scalar], ys: &[Scalar], t: usize, e: usize) -> Option<Poly> {
    let k = xs.len();
    if k < t + 2 * e {
        return None;
    }
    let (nq, cols) = (t + e, t + 2 * e);
    let mut rows = Vec::with_capacity(k);
    let mut rhs = Vec::with_capacity(k);
    for (x, y) in xs.iter().zip(ys) {
        let mut row = Vec::with_capacity(cols);
        let mut p = Scalar::ONE;
        let mut powers = Vec::with_capacity(nq + 1);
        for _ in 0..=nq {
            powers.push(p);
            p *= x;
        }
        row.extend_from_slice(&powers[..nq]);
        row.extend(powers[..e].iter().map(|p| -(y * p)));
        rows.push(row);
        rhs.push(y * powers[e]);
    }
    let mut v = solve(rows, rhs, cols)?;
    let q = v[..nq].to_vec();
    let mut ecoef = v[nq..].to_vec();
    v.zeroize();
    ecoef.push(Scalar::ONE);
    // Long division of Q by the monic E.
    let mut rem = q;
    let mut quot = vec![Scalar::ZERO; nq.saturating_sub(e).max(1)];
    for d in (e..nq).rev() {
        let c = rem[d];
        if c == Scalar::ZERO {
            continue;
        }
        quot[d - e] = c;
        for (j, ej) in ecoef.iter().enumerate() {
            let d2 = c * ej;
            rem[d - e + j] -= d2;
        }
    }
    let exact = rem.iter().all(|c| *c == Scalar::ZERO);
    rem.zeroize();
    ecoef.zeroize();
    if !exact {
        return None;
    }
    quot.truncate(t);
    Some(Poly(quot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn dealt(k: u32, t: usize, seed: u64) -> (SharedSecret, Vec<SecretShare>) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let secret = SharedSecret::random(&mut rng);
        let holders: Vec<PartyId> = (0..k).map(|i| PartyId(3 * i + 1)).collect();
        let shares = split(&secret, &holders, t, &mut rng).unwrap();
        (secret, shares)
    }

    fn spoil(s: &mut SecretShare) {
        s.value += Scalar::ONE;
    }

    #[test]
    fn combine_refuses_a_share_count_other_than_its_holders() {
        let (secret, shares) = dealt(6, 4, 1);
        let holders: Vec<PartyId> = shares[..4].iter().map(|s| s.holder).collect();
        let i = Interpolator::new(&holders).unwrap();
        assert!(i.combine(&shares[..4]).unwrap().ct_eq(&secret));
        assert_eq!(
            i.combine(&shares[..3]).err(),
            Some(ShamirError::ShareCount {
                given: 3,
                holders: 4
            })
        );
        assert_eq!(
            i.combine(&shares[..5]).err(),
            Some(ShamirError::ShareCount {
                given: 5,
                holders: 4
            })
        );
        let swapped = [&shares[1], &shares[0], &shares[2], &shares[3]];
        assert!(matches!(
            i.combine(swapped),
            Err(ShamirError::WrongHolder { position: 0, .. })
        ));
    }

    #[test]
    fn recover_corrects_bad_shares_within_the_radius_and_names_them() {
        // k = 11, t = 5: up to three bad shares are corrected by decoding.
        for bad in [vec![0], vec![2, 7], vec![0, 4, 10]] {
            let (secret, mut shares) = dealt(11, 5, 2);
            for &i in &bad {
                spoil(&mut shares[i]);
            }
            let r = recover(&shares, 5, 0, |s| s.ct_eq(&secret))
                .unwrap()
                .unwrap();
            assert!(r.secret.ct_eq(&secret));
            let expect: Vec<PartyId> = bad.iter().map(|&i| shares[i].holder).collect();
            assert_eq!(r.bad_holders, expect);
        }
    }

    #[test]
    fn recover_beyond_the_radius_tries_other_subsets() {
        // k = t + 1: no redundancy to decode with, but leaving each share out
        // in turn finds the secret the check recognises.
        let (secret, mut shares) = dealt(6, 5, 3);
        spoil(&mut shares[2]);
        let r = recover(&shares, 5, 0, |s| s.ct_eq(&secret))
            .unwrap()
            .unwrap();
        assert!(r.secret.ct_eq(&secret));
        assert_eq!(r.bad_holders, vec![shares[2].holder]);
        // Two bad shares among six: no five are all good.
        spoil(&mut shares[4]);
        assert!(recover(&shares, 5, 0, |s| s.ct_eq(&secret))
            .unwrap()
            .is_none());
    }

    #[test]
    fn colluders_steering_a_mixed_subset_frame_nobody() {
        // Two colluders (holders 0 and 1) shift their shares so that the
        // subset {0, 1, 2, 3} still interpolates to the true secret while an
        // honest share lies off the polynomial it gives. With max_colluding
        // = 2 nobody may be named from such a fit.
        let (secret, mut shares) = dealt(5, 4, 4);
        let xs: Vec<Scalar> = shares[..4].iter().map(|s| point(s.holder)).collect();
        let lagrange_at_zero = |i: usize| {
            let mut num = Scalar::ONE;
            let mut den = Scalar::ONE;
            for (j, xj) in xs.iter().enumerate() {
                if j != i {
                    num *= xj;
                    den *= xj - xs[i];
                }
            }
            num * den.invert()
        };
        // d0·λ0 + d1·λ1 = 0.
        let d0 = Scalar::from(7u64);
        let d1 = -(d0 * lagrange_at_zero(0)) * lagrange_at_zero(1).invert();
        shares[0].value += d0;
        shares[1].value += d1;
        // The honest share of holder 4 comes before holder 3's, so the
        // first subset tried fails and the steered one is found next.
        shares.swap(3, 4);
        let honest = shares[3].holder;
        // Counting colluders as possible liars, the fit frames nobody...
        let r = recover(&shares, 4, 2, |s| s.ct_eq(&secret))
            .unwrap()
            .unwrap();
        assert!(r.secret.ct_eq(&secret));
        assert!(r.bad_holders.is_empty(), "{:?}", r.bad_holders);
        // ...while trusting four agreeing shares would blame the honest one.
        let r = recover(&shares, 4, 0, |s| s.ct_eq(&secret))
            .unwrap()
            .unwrap();
        assert_eq!(r.bad_holders, vec![honest]);
    }
}
