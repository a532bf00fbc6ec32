//! The exact bytes each signature covers.

use crate::agreement::DhPublicKey;
use crate::ids::PartyId;
use crate::session::SessionId;

pub(crate) fn advertisement(
    session: &SessionId,
    party: PartyId,
    enc: &DhPublicKey,
    mask: &DhPublicKey,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(24 + 32 + 4 + 64);
    m.extend_from_slice(b"shroud/v1/advertise-keys");
    m.extend_from_slice(session.as_bytes());
    m.extend_from_slice(&party.0.to_le_bytes());
    m.extend_from_slice(enc.as_bytes());
    m.extend_from_slice(mask.as_bytes());
    m
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
