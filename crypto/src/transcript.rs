//! The exact bytes each signature covers.

use crate::agreement::DhPublicKey;
use crate::commitment::SeedCommitment;
use crate::ids::PartyId;
use crate::session::SessionId;

pub(crate) fn advertisement(
    session: &SessionId,
    party: PartyId,
    enc: &DhPublicKey,
    mask: &DhPublicKey,
    seed_commitment: &SeedCommitment,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(24 + 32 + 4 + 96);
    m.extend_from_slice(b"shroud/v1/advertise-keys");
    m.extend_from_slice(session.as_bytes());
    m.extend_from_slice(&party.0.to_le_bytes());
    m.extend_from_slice(enc.as_bytes());
    m.extend_from_slice(mask.as_bytes());
    m.extend_from_slice(seed_commitment.as_bytes());
    m
}

/// The exact bytes of an advertisement's signature.
pub(crate) fn advert(session: &SessionId, a: &crate::message::KeyAdvertisement) -> Vec<u8> {
    advertisement(
        session,
        a.party,
        &a.enc_key,
        &a.mask_key,
        &a.seed_commitment,
    )
}

pub(crate) fn survivors(session: &SessionId, list: &[PartyId]) -> Vec<u8> {
    let mut m = Vec::with_capacity(19 + 32 + 4 + 4 * list.len());
    m.extend_from_slice(b"shroud/v1/survivors");
    m.extend_from_slice(session.as_bytes());
    m.extend_from_slice(&(list.len() as u32).to_le_bytes());
    for p in list {
        m.extend_from_slice(&p.0.to_le_bytes());
    }
    m
}
