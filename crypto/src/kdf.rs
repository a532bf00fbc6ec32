//! HKDF-SHA256 with the session digest as salt and a purpose label plus the
//! parties concerned as info, so every derived key is unique to its use.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::ids::PartyId;
use crate::session::SessionId;

#[derive(Clone, Copy)]
pub(crate) enum Purpose {
    /// AEAD key for shares sent from the first party to the second.
    ShareKey,
    /// Pairwise mask seed of an unordered pair.
    PairwiseMask,
    /// A party's self-mask seed, from its shared scalar `b_u`.
    SelfMask,
    /// A party's X25519 mask secret, from its shared scalar.
    MaskKey,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::ShareKey => b"shroud/v1/share-key",
            Purpose::PairwiseMask => b"shroud/v1/pairwise-mask",
            Purpose::SelfMask => b"shroud/v1/self-mask",
            Purpose::MaskKey => b"shroud/v1/mask-key",
        }
    }
}

pub(crate) fn derive(
    session: &SessionId,
    purpose: Purpose,
    parties: &[PartyId],
    ikm: &[u8],
) -> Zeroizing<[u8; 32]> {
    let mut info = Vec::with_capacity(32 + 4 * parties.len());
    info.extend_from_slice(purpose.label());
    for p in parties {
        info.extend_from_slice(&p.0.to_le_bytes());
    }
    let hk = Hkdf::<Sha256>::new(Some(session.as_bytes()), ikm);
    let mut okm = Zeroizing::new([0u8; 32]);
    hk.expand(&info, okm.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}
