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
    NotEnoughShares { have: usize, needed: usize },
    DuplicateHolder(PartyId),
    BadThreshold { threshold: usize, holders: usize },
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

    /// Combines shares given in the same order as the holders.
    pub fn combine<'a>(&self, shares: impl IntoIterator<Item = &'a SecretShare>) -> SharedSecret {
        let mut acc = Scalar::ZERO;
        for (share, c) in shares.into_iter().zip(&self.coeffs) {
            debug_assert!(self.holders.contains(&share.holder));
            acc += share.value * c;
        }
        SharedSecret(acc)
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
    Ok(Interpolator::new(&holders)?.combine(used.iter().copied()))
}
