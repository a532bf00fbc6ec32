//! Request authentication. Every request carries in its headers its
//! signer, the consortium, the coordinator's name (as the client reached
//! it), job, round, a timestamp, a random nonce, the SHA-256 of its body,
//! and an ed25519 signature over the canonical form of the method, path and
//! all of those. The coordinator checks everything from the headers alone —
//! signer in the roster (or the operator), signature, timestamp window,
//! consortium, its own name, nonce not seen in the window — before it
//! reads a byte of body or gives the request a body slot; the body is then
//! checked against its signed hash. A request signed for another
//! consortium or another coordinator, or replayed, is refused.

use std::collections::{BTreeMap, HashMap};

use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use shroud_crypto::identity::Signature;
use shroud_crypto::{IdentityKey, IdentityPublicKey};

use crate::policy::{hex, unhex};

pub const SIGNER: &str = "x-shroud-signer";
pub const CONSORTIUM: &str = "x-shroud-consortium";
pub const COORDINATOR: &str = "x-shroud-coordinator";
pub const CONTENT_SHA256: &str = "x-shroud-content-sha256";
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
    /// Hex SHA-256 of the body.
    pub body_sha256: &'a str,
    pub consortium: &'a str,
    /// The coordinator's host name as the client reached it (and, over
    /// TLS, authenticated it).
    pub coordinator: &'a str,
    pub job: &'a str,
    pub round: u64,
    pub signer: Signer,
    pub timestamp: u64,
    pub nonce: &'a str,
}

impl Canonical<'_> {
    pub fn bytes(&self) -> Vec<u8> {
        format!(
            "shroud/v2/request\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.method,
            self.path,
            self.body_sha256,
            self.consortium,
            self.coordinator,
            self.job,
            self.round,
            self.signer,
            self.timestamp,
            self.nonce
        )
        .into_bytes()
    }
}

/// The hex SHA-256 of a body, as signed.
pub fn body_hash(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// Where a request is going: the consortium and the coordinator's name.
#[derive(Clone, Debug)]
pub struct Audience {
    pub consortium: String,
    pub coordinator: String,
}

impl Audience {
    /// The consortium, and the host of `base` (an `https://host:port` URL)
    /// as the coordinator's name.
    pub fn for_url(consortium: &str, base: &str) -> Audience {
        let rest = base.split_once("://").map_or(base, |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or(rest);
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        Audience {
            consortium: consortium.to_string(),
            coordinator: host.to_ascii_lowercase(),
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The headers that authenticate one request.
#[allow(clippy::too_many_arguments)]
pub fn sign(
    key: &IdentityKey,
    signer: Signer,
    audience: &Audience,
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
    let body_sha256 = body_hash(body);
    let c = Canonical {
        method,
        path,
        body_sha256: &body_sha256,
        consortium: &audience.consortium,
        coordinator: &audience.coordinator,
        job,
        round,
        signer,
        timestamp,
        nonce: &nonce,
    };
    let sig = key.sign_request(&c.bytes());
    vec![
        (SIGNER, signer.to_string()),
        (CONSORTIUM, audience.consortium.clone()),
        (COORDINATOR, audience.coordinator.clone()),
        (JOB, job.to_string()),
        (ROUND, round.to_string()),
        (TIMESTAMP, timestamp.to_string()),
        (NONCE, nonce),
        (CONTENT_SHA256, body_sha256),
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
    Stale {
        timestamp: u64,
        now: u64,
    },
    BeforeRestart,
    Replay,
    /// Signed for another consortium.
    WrongConsortium {
        signed: String,
        ours: String,
    },
    /// Signed for a coordinator of another name.
    WrongCoordinator {
        signed: String,
    },
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
            AuthError::WrongConsortium { signed, ours } => write!(
                f,
                "the request is signed for consortium `{}`; this coordinator serves `{}`",
                signed.escape_debug(),
                ours.escape_debug()
            ),
            AuthError::WrongCoordinator { signed } => write!(
                f,
                "the request is signed for a coordinator named `{}`, not this one",
                signed.escape_debug()
            ),
        }
    }
}

/// The signed fields of a request, read from its headers.
pub struct Claimed {
    pub signer: Signer,
    pub consortium: String,
    pub coordinator: String,
    pub body_sha256: String,
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
        let consortium = need(CONSORTIUM)?;
        let coordinator = need(COORDINATOR)?;
        let body_sha256 = need(CONTENT_SHA256)?;
        if body_sha256.len() != 64 || unhex(&body_sha256).is_none() {
            return Err(AuthError::Malformed(
                CONTENT_SHA256,
                "not 32 bytes of hex".into(),
            ));
        }
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
            consortium,
            coordinator,
            body_sha256: body_sha256.to_ascii_lowercase(),
            job,
            round,
            timestamp,
            nonce,
            signature: Signature::from_bytes(sig),
        })
    }
}

/// Which coordinator names a request may be signed for.
pub enum CoordinatorNames {
    /// Names the coordinator's TLS certificate is valid for: a request
    /// signed for any other name was meant for another coordinator.
    Certificate(rustls::pki_types::CertificateDer<'static>),
    /// Plain HTTP (tests and loopback demos only): the name must be the
    /// host the request was sent to.
    HostHeader,
}

impl CoordinatorNames {
    fn accepts(&self, name: &str, host_header: Option<&str>) -> bool {
        match self {
            CoordinatorNames::Certificate(der) => {
                let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
                    return false;
                };
                let Ok(server) = rustls::pki_types::ServerName::try_from(name) else {
                    return false;
                };
                cert.verify_is_valid_for_subject_name(&server).is_ok()
            }
            CoordinatorNames::HostHeader => host_header
                .is_some_and(|h| Audience::for_url("", &format!("http://{h}")).coordinator == name),
        }
    }
}

/// The keys a coordinator accepts and the nonces it has seen.
pub struct Verifier {
    parties: BTreeMap<u32, IdentityPublicKey>,
    operator: Option<IdentityPublicKey>,
    consortium: String,
    names: CoordinatorNames,
    /// Requests signed before this instant were signed for an earlier
    /// process, whose nonce memory is gone: refused.
    started: u64,
    seen: HashMap<(Signer, String), u64>,
}

impl Verifier {
    pub fn new(
        parties: BTreeMap<u32, IdentityPublicKey>,
        operator: Option<IdentityPublicKey>,
        consortium: &str,
        names: CoordinatorNames,
        started: u64,
    ) -> Verifier {
        Verifier {
            parties,
            operator,
            consortium: consortium.to_string(),
            names,
            started,
            seen: HashMap::new(),
        }
    }

    /// Checks the claim against `method` and `path` at `now`, from the
    /// headers alone; on success remembers the nonce. The body, read
    /// afterwards, must then hash to `claim.body_sha256`.
    pub fn verify(
        &mut self,
        claim: &Claimed,
        method: &str,
        path: &str,
        host_header: Option<&str>,
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
            body_sha256: &claim.body_sha256,
            consortium: &claim.consortium,
            coordinator: &claim.coordinator,
            job: &claim.job,
            round: claim.round,
            signer: claim.signer,
            timestamp: claim.timestamp,
            nonce: &claim.nonce,
        };
        if !key.verify_request(&c.bytes(), &claim.signature) {
            return Err(AuthError::BadSignature);
        }
        if claim.consortium != self.consortium {
            return Err(AuthError::WrongConsortium {
                signed: claim.consortium.clone(),
                ours: self.consortium.clone(),
            });
        }
        if !self.names.accepts(&claim.coordinator, host_header) {
            return Err(AuthError::WrongCoordinator {
                signed: claim.coordinator.clone(),
            });
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
