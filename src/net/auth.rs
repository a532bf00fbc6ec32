//! Request authentication. Every request carries its signer, job, round, a
//! timestamp and a random nonce in headers, and an ed25519 signature over
//! the canonical form of the method, path, body hash and those headers.
//! The coordinator checks the signature against the roster (or the
//! operator's key), the timestamp against a window, and the nonce against
//! the nonces it has seen in that window: a replayed request is refused.

use std::collections::{BTreeMap, HashMap};

use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use shroud_crypto::identity::Signature;
use shroud_crypto::{IdentityKey, IdentityPublicKey};

use crate::policy::{hex, unhex};

pub const SIGNER: &str = "x-shroud-signer";
pub const JOB: &str = "x-shroud-job";
pub const ROUND: &str = "x-shroud-round";
pub const TIMESTAMP: &str = "x-shroud-timestamp";
pub const NONCE: &str = "x-shroud-nonce";
pub const SIGNATURE: &str = "x-shroud-signature";

/// How far a request's timestamp may be from the coordinator's clock.
pub const WINDOW_SECS: u64 = 300;

/// Who signed a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signer {
    Party(u32),
    Operator,
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signer::Party(id) => write!(f, "party:{id}"),
            Signer::Operator => f.write_str("operator"),
        }
    }
}

impl std::str::FromStr for Signer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "operator" {
            return Ok(Signer::Operator);
        }
        s.strip_prefix("party:")
            .and_then(|n| n.parse().ok())
            .map(Signer::Party)
            .ok_or_else(|| format!("`{s}` is neither `operator` nor `party:<id>`"))
    }
}

/// What a signature covers.
pub struct Canonical<'a> {
    pub method: &'a str,
    /// Path and query, exactly as sent.
    pub path: &'a str,
    pub body: &'a [u8],
    pub job: &'a str,
    pub round: u64,
    pub signer: Signer,
    pub timestamp: u64,
    pub nonce: &'a str,
}

impl Canonical<'_> {
    pub fn bytes(&self) -> Vec<u8> {
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.method,
            self.path,
            hex(&Sha256::digest(self.body)),
            self.job,
            self.round,
            self.signer,
            self.timestamp,
            self.nonce
        )
        .into_bytes()
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The headers that authenticate one request.
pub fn sign(
    key: &IdentityKey,
    signer: Signer,
    method: &str,
    path: &str,
    body: &[u8],
    job: &str,
    round: u64,
) -> Vec<(&'static str, String)> {
    let mut nonce = [0u8; 16];
    OsRng.fill_bytes(&mut nonce);
    let nonce = hex(&nonce);
    let timestamp = unix_now();
    let c = Canonical {
        method,
        path,
        body,
        job,
        round,
        signer,
        timestamp,
        nonce: &nonce,
    };
    let sig = key.sign_request(&c.bytes());
    vec![
        (SIGNER, signer.to_string()),
        (JOB, job.to_string()),
        (ROUND, round.to_string()),
        (TIMESTAMP, timestamp.to_string()),
        (NONCE, nonce),
        (SIGNATURE, hex(&sig.to_bytes())),
    ]
}

/// Why a request was not accepted as authentic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing(&'static str),
    Malformed(&'static str, String),
    UnknownSigner(Signer),
    BadSignature,
    Stale { timestamp: u64, now: u64 },
    BeforeRestart,
    Replay,
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Missing(h) => write!(f, "the request is not signed: header `{h}` is missing"),
            AuthError::Malformed(h, why) => write!(f, "header `{h}` is malformed: {why}"),
            AuthError::UnknownSigner(s) => write!(
                f,
                "`{s}` is not in this consortium's roster (or no operator key is configured)"
            ),
            AuthError::BadSignature => f.write_str(
                "the signature does not verify over this method, path, body, job, round, timestamp and nonce",
            ),
            AuthError::Stale { timestamp, now } => write!(
                f,
                "the request's timestamp {timestamp} is more than {WINDOW_SECS} s from the coordinator's clock ({now})"
            ),
            AuthError::BeforeRestart => f.write_str(
                "the request was signed before the coordinator restarted; sign it again",
            ),
            AuthError::Replay => f.write_str("this nonce was already used: the request is a replay"),
        }
    }
}

/// The signed fields of a request, read from its headers.
pub struct Claimed {
    pub signer: Signer,
    pub job: String,
    pub round: u64,
    pub timestamp: u64,
    pub nonce: String,
    pub signature: Signature,
}

impl Claimed {
    pub fn from_headers(
        get: impl Fn(&'static str) -> Option<String>,
    ) -> Result<Claimed, AuthError> {
        let need = |h: &'static str| get(h).ok_or(AuthError::Missing(h));
        let signer: Signer = need(SIGNER)?
            .parse()
            .map_err(|e| AuthError::Malformed(SIGNER, e))?;
        let job = need(JOB)?;
        let round = need(ROUND)?
            .parse()
            .map_err(|_| AuthError::Malformed(ROUND, "not an unsigned integer".into()))?;
        let timestamp = need(TIMESTAMP)?
            .parse()
            .map_err(|_| AuthError::Malformed(TIMESTAMP, "not unix seconds".into()))?;
        let nonce = need(NONCE)?;
        if nonce.len() != 32 || unhex(&nonce).is_none() {
            return Err(AuthError::Malformed(NONCE, "not 16 bytes of hex".into()));
        }
        let sig: [u8; 64] = unhex(&need(SIGNATURE)?)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| AuthError::Malformed(SIGNATURE, "not 64 bytes of hex".into()))?;
        Ok(Claimed {
            signer,
            job,
            round,
            timestamp,
            nonce,
            signature: Signature::from_bytes(sig),
        })
    }
}

/// The keys a coordinator accepts and the nonces it has seen.
pub struct Verifier {
    parties: BTreeMap<u32, IdentityPublicKey>,
    operator: Option<IdentityPublicKey>,
    /// Requests signed before this instant were signed for an earlier
    /// process, whose nonce memory is gone: refused.
    started: u64,
    seen: HashMap<(Signer, String), u64>,
}

impl Verifier {
    pub fn new(
        parties: BTreeMap<u32, IdentityPublicKey>,
        operator: Option<IdentityPublicKey>,
        started: u64,
    ) -> Verifier {
        Verifier {
            parties,
            operator,
            started,
            seen: HashMap::new(),
        }
    }

    /// Checks the claim against `method`, `path` and `body` at `now`; on
    /// success remembers the nonce.
    pub fn verify(
        &mut self,
        claim: &Claimed,
        method: &str,
        path: &str,
        body: &[u8],
        now: u64,
    ) -> Result<Signer, AuthError> {
        let key = match claim.signer {
            Signer::Party(id) => self.parties.get(&id),
            Signer::Operator => self.operator.as_ref(),
        }
        .ok_or(AuthError::UnknownSigner(claim.signer))?;
        let c = Canonical {
            method,
            path,
            body,
            job: &claim.job,
            round: claim.round,
            signer: claim.signer,
            timestamp: claim.timestamp,
            nonce: &claim.nonce,
        };
        if !key.verify_request(&c.bytes(), &claim.signature) {
            return Err(AuthError::BadSignature);
        }
        if claim.timestamp.saturating_add(WINDOW_SECS) < now
            || claim.timestamp > now.saturating_add(WINDOW_SECS)
        {
            return Err(AuthError::Stale {
                timestamp: claim.timestamp,
                now,
            });
        }
        if claim.timestamp < self.started {
            return Err(AuthError::BeforeRestart);
        }
        // Forget nonces that the window refuses anyway.
        if self.seen.len() > 4096 {
            self.seen
                .retain(|_, ts| ts.saturating_add(WINDOW_SECS) >= now);
        }
        let k = (claim.signer, claim.nonce.clone());
        if self.seen.contains_key(&k) {
            return Err(AuthError::Replay);
        }
        self.seen.insert(k, claim.timestamp);
        Ok(claim.signer)
    }
}
