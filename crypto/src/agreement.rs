//! X25519 key agreement for the two per-round key pairs of each party.
//!
//! The mask key pair is derived from a scalar of the Shamir field
//! (`MaskKeySecret`), because that scalar is what the party secret-shares: a
//! raw X25519 secret does not fit below the field's prime, a derived one can
//! be rebuilt exactly from the reconstructed scalar.

use rand_core::CryptoRngCore;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::ids::PartyId;
use crate::kdf::{derive, Purpose};
use crate::session::SessionId;
use crate::shamir::SharedSecret;

/// A round's X25519 public key as advertised.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DhPublicKey(pub(crate) [u8; 32]);

impl DhPublicKey {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// An X25519 secret; wiped on drop by `x25519-dalek`. No `Clone`, no `Debug`.
pub struct DhSecret(StaticSecret);

impl DhSecret {
    pub fn random(rng: &mut impl CryptoRngCore) -> Self {
        DhSecret(StaticSecret::random_from_rng(rng))
    }

    /// The mask secret key of `owner`, derived from its shared scalar.
    pub(crate) fn from_mask_scalar(session: &SessionId, owner: PartyId, s: &SharedSecret) -> Self {
        let bytes = derive(session, Purpose::MaskKey, &[owner], s.to_bytes().as_ref());
        DhSecret(StaticSecret::from(*bytes))
    }

    pub fn public(&self) -> DhPublicKey {
        DhPublicKey(PublicKey::from(&self.0).to_bytes())
    }

    /// X25519 with a peer's public key. `None` when the result is not
    /// contributory (the peer sent a low-order point), which would make the
    /// "shared" secret public.
    pub(crate) fn agree(&self, peer: &DhPublicKey) -> Option<zeroize::Zeroizing<[u8; 32]>> {
        let shared = self.0.diffie_hellman(&PublicKey::from(peer.0));
        if shared.was_contributory() {
            Some(zeroize::Zeroizing::new(shared.to_bytes()))
        } else {
            None
        }
    }
}

#[cfg(test)]
impl DhSecret {
    /// Test-only: a colluding party handing its secret to the coordinator.
    pub(crate) fn leak(&self) -> DhSecret {
        DhSecret(StaticSecret::from(self.0.to_bytes()))
    }
}

/// Raw X25519 on byte strings, for the RFC 7748 known-answer tests.
#[doc(hidden)]
pub fn x25519_raw(scalar: [u8; 32], point: [u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(scalar, point)
}
