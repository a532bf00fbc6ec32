//! Share ciphertexts: ChaCha20-Poly1305 under a key derived from X25519 of
//! the two parties' share-encryption keys. The key is bound to the session
//! and the direction (sender, recipient), and each key encrypts exactly one
//! message, so the all-zero nonce is never reused under one key.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::Zeroizing;

use crate::agreement::{DhPublicKey, DhSecret};
use crate::ids::PartyId;
use crate::kdf::{derive, Purpose};
use crate::session::SessionId;
use crate::shamir::SecretShare;

/// Plaintext: sender, recipient, share of the mask key, share of `b_u`.
pub const PLAINTEXT_LEN: usize = 4 + 4 + 32 + 32;
pub const CIPHERTEXT_LEN: usize = PLAINTEXT_LEN + 16;

/// The pair of shares one party gives one holder.
pub struct SharePair {
    pub key_share: SecretShare,
    pub seed_share: SecretShare,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Agreement with the peer's key is not contributory.
    WeakKey,
    /// Authentication failed or the header names other parties.
    Forged,
}

/// The X25519 result of two parties' share-encryption keys. One agreement
/// serves both directions; the direction is bound in when keys are derived.
pub(crate) struct ShareSecret(Zeroizing<[u8; 32]>);

impl ShareSecret {
    pub(crate) fn agree(own: &DhSecret, peer: &DhPublicKey) -> Result<Self, OpenError> {
        own.agree(peer).map(ShareSecret).ok_or(OpenError::WeakKey)
    }
}

fn cipher(
    session: &SessionId,
    shared: &ShareSecret,
    from: PartyId,
    to: PartyId,
) -> ChaCha20Poly1305 {
    let key = derive(session, Purpose::ShareKey, &[from, to], shared.0.as_ref());
    ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
}

fn aad(session: &SessionId, from: PartyId, to: PartyId) -> [u8; 40] {
    let mut a = [0u8; 40];
    a[..32].copy_from_slice(session.as_bytes());
    a[32..36].copy_from_slice(&from.0.to_le_bytes());
    a[36..].copy_from_slice(&to.0.to_le_bytes());
    a
}

pub(crate) fn seal(
    session: &SessionId,
    shared: &ShareSecret,
    from: PartyId,
    to: PartyId,
    pair: &SharePair,
) -> Vec<u8> {
    let c = cipher(session, shared, from, to);
    let mut pt = Zeroizing::new([0u8; PLAINTEXT_LEN]);
    pt[..4].copy_from_slice(&from.0.to_le_bytes());
    pt[4..8].copy_from_slice(&to.0.to_le_bytes());
    pt[8..40].copy_from_slice(&pair.key_share.value_bytes());
    pt[40..].copy_from_slice(&pair.seed_share.value_bytes());
    let aad = aad(session, from, to);
    let ct = c
        .encrypt(
            Nonce::from_slice(&[0u8; 12]),
            Payload {
                msg: pt.as_ref(),
                aad: &aad,
            },
        )
        .expect("ChaCha20-Poly1305 encryption of 72 bytes cannot fail");
    ct
}

/// Opens a ciphertext that `from` addressed to `to` (the caller). The shares
/// come back as held by `to`.
pub(crate) fn open(
    session: &SessionId,
    shared: &ShareSecret,
    from: PartyId,
    to: PartyId,
    ct: &[u8],
) -> Result<SharePair, OpenError> {
    let c = cipher(session, shared, from, to);
    let aad = aad(session, from, to);
    let pt = Zeroizing::new(
        c.decrypt(
            Nonce::from_slice(&[0u8; 12]),
            Payload { msg: ct, aad: &aad },
        )
        .map_err(|_| OpenError::Forged)?,
    );
    if pt.len() != PLAINTEXT_LEN
        || pt[..4] != from.0.to_le_bytes()
        || pt[4..8] != to.0.to_le_bytes()
    {
        return Err(OpenError::Forged);
    }
    let key_bytes: Zeroizing<[u8; 32]> = Zeroizing::new(pt[8..40].try_into().expect("32 bytes"));
    let seed_bytes: Zeroizing<[u8; 32]> = Zeroizing::new(pt[40..].try_into().expect("32 bytes"));
    let key_share = SecretShare::from_parts(to, &key_bytes).map_err(|_| OpenError::Forged)?;
    let seed_share = SecretShare::from_parts(to, &seed_bytes).map_err(|_| OpenError::Forged)?;
    Ok(SharePair {
        key_share,
        seed_share,
    })
}

/// Raw ChaCha20-Poly1305 sealing, for the RFC 8439 known-answer test.
#[doc(hidden)]
pub fn aead_seal_raw(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], msg: &[u8]) -> Vec<u8> {
    ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(Nonce::from_slice(nonce), Payload { msg, aad })
        .expect("encryption does not fail")
}
