//! What a round is bound to. Every signature, key derivation and wire message
//! carries the digest of the round's parameters, so nothing from one
//! consortium, job, round or task can be replayed into another.

use sha2::{Digest, Sha256};

/// Identifies one secure-sum task of one round of one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionParams {
    pub consortium: String,
    pub job: String,
    pub round: u64,
    pub task: u32,
}

/// SHA-256 over the session parameters and every round setting that both
/// sides must agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; 32]);

impl SessionId {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Length-prefixed hashing, so that no two field sequences collide.
pub(crate) struct Transcript(Sha256);

impl Transcript {
    pub(crate) fn new(label: &str) -> Self {
        let mut t = Transcript(Sha256::new());
        t.bytes(label.as_bytes());
        t
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.update(v.to_le_bytes());
        self
    }

    pub(crate) fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}
