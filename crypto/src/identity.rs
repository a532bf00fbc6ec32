//! Long-term ed25519 identity keys. Parties sign their round keys and the
//! survivor list with them; the roster in the policy lists the public halves.

use core::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;

use crate::error::InvalidMessage;

/// A party's secret identity key. No `Clone`, no serde; wiped on drop by
/// `ed25519-dalek`'s own `ZeroizeOnDrop`.
pub struct IdentityKey(SigningKey);

impl IdentityKey {
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        IdentityKey(SigningKey::generate(rng))
    }

    /// Restores a key from its 32-byte seed. The caller should wipe `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        IdentityKey(SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed, for writing the key file. Wipe it after use.
    pub fn to_seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    pub fn public(&self) -> IdentityPublicKey {
        IdentityPublicKey(self.0.verifying_key())
    }

    pub(crate) fn sign(&self, msg: &[u8]) -> Signature {
        Signature(self.0.sign(msg).to_bytes())
    }

    /// Signs a transport request's canonical form. The domain label keeps
    /// these signatures apart from every protocol signature.
    pub fn sign_request(&self, canonical: &[u8]) -> Signature {
        self.sign(&request_transcript(canonical))
    }

    /// Signs a survivor list as the consistency check does.
    pub fn sign_survivor_list(
        &self,
        session: &crate::session::SessionId,
        list: &[crate::ids::PartyId],
    ) -> Signature {
        self.sign(&crate::transcript::survivors(session, list))
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// The public half of an identity key, as listed in the roster.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdentityPublicKey(VerifyingKey);

impl IdentityPublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, InvalidMessage> {
        VerifyingKey::from_bytes(bytes)
            .map(IdentityPublicKey)
            .map_err(|_| InvalidMessage::NonCanonical("ed25519 public key"))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Strict verification: rejects small-order keys and malleable signatures.
    pub(crate) fn verify(&self, msg: &[u8], sig: &Signature) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        self.0.verify_strict(msg, &sig).is_ok()
    }
}

/// A fixed label, then the canonical form: what a signature of one kind
/// covers, so that no other kind's can pass for it.
fn labelled(label: &[u8], canonical: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(label.len() + canonical.len());
    m.extend_from_slice(label);
    m.extend_from_slice(canonical);
    m
}

/// What a request signature covers.
fn request_transcript(canonical: &[u8]) -> Vec<u8> {
    labelled(b"shroud transport request v1\0", canonical)
}

impl IdentityPublicKey {
    /// Checks a request signature made by [`IdentityKey::sign_request`].
    pub fn verify_request(&self, canonical: &[u8], sig: &Signature) -> bool {
        self.verify(&request_transcript(canonical), sig)
    }

    /// Checks a reviewer's sign-off made by [`IdentityKey::sign_sign_off`].
    pub fn verify_sign_off(&self, canonical: &[u8], sig: &Signature) -> bool {
        self.verify(&sign_off_transcript(canonical), sig)
    }
}

/// What a reviewer's sign-off of an audit report covers.
fn sign_off_transcript(canonical: &[u8]) -> Vec<u8> {
    labelled(b"shroud report sign-off v1\0", canonical)
}

impl IdentityKey {
    /// Signs an audit report's sign-off (reviewer, verdict, comment, date,
    /// the report's log entry) in its canonical form.
    pub fn sign_sign_off(&self, canonical: &[u8]) -> Signature {
        self.sign(&sign_off_transcript(canonical))
    }
}

impl fmt::Debug for IdentityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityPublicKey(")?;
        for b in self.0.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// An ed25519 signature as carried on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Signature(pub(crate) [u8; 64]);

impl Signature {
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0
    }

    pub fn from_bytes(bytes: [u8; 64]) -> Self {
        Signature(bytes)
    }
}
