//! A commitment to a party's self-mask scalar `b_u`, published (signed) with
//! its round keys, so that the coordinator can tell a correctly
//! reconstructed `b_u` from one spoiled by a bad share.
//!
//! `b_u` is a uniform scalar of the Ristretto field (≈ 2^252 values), so a
//! hash of it hides it without a separate blinding value; SHA-256's collision
//! resistance binds the party to it. The mask key needs no commitment of its
//! own: its advertised X25519 public key already is one.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::PartyId;
use crate::session::SessionId;
use crate::shamir::SharedSecret;

/// `SHA-256("shroud/v1/self-mask-commitment" ‖ session ‖ owner ‖ b_u)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SeedCommitment(pub(crate) [u8; 32]);

impl SeedCommitment {
    pub(crate) fn to(session: &SessionId, owner: PartyId, seed: &SharedSecret) -> Self {
        let mut h = Sha256::new();
        h.update(b"shroud/v1/self-mask-commitment");
        h.update(session.as_bytes());
        h.update(owner.0.to_le_bytes());
        h.update(seed.to_bytes().as_ref());
        SeedCommitment(h.finalize().into())
    }

    /// Whether `seed` is the scalar this commits `owner` to (constant time).
    pub(crate) fn opens_to(
        &self,
        session: &SessionId,
        owner: PartyId,
        seed: &SharedSecret,
    ) -> bool {
        let other = SeedCommitment::to(session, owner, seed);
        self.0.ct_eq(&other.0).into()
    }

    /// A commitment as received (only [`SeedCommitment::opens_to`] trusts it).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SeedCommitment(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}
