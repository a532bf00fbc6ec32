//! One job engine for every strategy and every transport.
//!
//! - [`engine`]: the coordinator's side of a job, a sans-IO state machine
//!   that emits effects for its host to apply through the store;
//! - [`session`]: a party's side of a job, also sans-IO: its own policy's
//!   rules, its strategy half, its data, and the protocol machine of the
//!   task it takes part in;
//! - [`host`]: how a host applies the engine's effects to the store (the
//!   ledger, the rounds, the log, the release), shared by both drivers;
//! - [`local`]: the in-memory driver (`demo --in-process`, tests).
//!
//! The HTTP driver is the coordinator service (`crate::coordinator`,
//! `crate::net::server`) and the party client (`crate::party`).

pub mod engine;
pub mod host;
pub mod local;
pub mod session;
pub mod task;

use sha2::{Digest, Sha256};
use shroud_crypto::{
    GraphSpec, IdentityKey, IdentityPublicKey, PartyId, Round, RoundConfig, SessionParams,
};

use crate::dp::plan::PrivacyPlan;
use crate::policy::{Neighbours, Policy, Rotation, Unit};
use crate::strategy::public_seed;

pub use engine::{Effect, EngineError, ErrorKind, JobEngine, JobState};
pub use task::TaskKind;

/// The identity of demo party `i`: derived from a public seed, so that the
/// bundled policies can list the matching public keys. Never use these
/// outside the demo.
pub fn demo_identity_seed(i: u32) -> zeroize::Zeroizing<[u8; 32]> {
    zeroize::Zeroizing::new(Sha256::digest(format!("shroud demo party {i}").as_bytes()).into())
}

/// The roster line (hex public key) of demo party `i`.
pub fn demo_public_key_hex(i: u32) -> String {
    crate::policy::hex(
        &IdentityKey::from_seed(&demo_identity_seed(i))
            .public()
            .to_bytes(),
    )
}

/// The secure-aggregation round of one task: the policy's threshold,
/// collusion bound, neighbour graph, consistency check and deadline over
/// `cohort`, with the graph seed public and bound to the job, round and
/// task. Coordinator and parties build it alike from their own policy and
/// the cohort's public keys; a cohort smaller than the policy's
/// `min_survivors` (at least its threshold) is refused, never run with a
/// smaller threshold.
pub fn protocol_round(
    policy: &Policy,
    job: &str,
    round: u32,
    task: u32,
    cohort: &[(PartyId, IdentityPublicKey)],
    bits: u8,
    len: usize,
) -> Result<Round, shroud_crypto::Error> {
    let n = cohort.len();
    let c = &policy.consortium;
    if n < c.min_survivors {
        return Err(shroud_crypto::Error::Config(format!(
            "the cohort has {n} parties; the policy needs at least {} (threshold {}, min_survivors {})",
            c.min_survivors, c.threshold, c.min_survivors
        )));
    }
    Round::new(RoundConfig {
        session: SessionParams {
            consortium: c.id.clone(),
            job: job.to_string(),
            round: u64::from(round),
            task,
        },
        roster: cohort.iter().copied().collect(),
        threshold: c.threshold,
        max_colluding: c.max_colluding,
        graph: match c.neighbours {
            // A cohort smaller than the graph's degree is complete.
            Neighbours::Fixed(k) if (k as usize) < n.saturating_sub(1) => {
                GraphSpec::Regular { degree: k }
            }
            _ => GraphSpec::Complete,
        },
        graph_seed: public_seed("graph", job, round, task),
        bits,
        len,
        active: c.active,
        phase_timeout: std::time::Duration::from_secs_f64(c.phase_timeout_secs),
    })
}

/// The policy a job runs under: the consortium's policy with the job's own
/// ε and round count when the operator set them (never above the policy's),
/// the noise recalibrated to them when the policy calibrates.
pub fn job_policy(
    policy: &Policy,
    epsilon: Option<f64>,
    rounds: Option<u32>,
) -> Result<Policy, crate::dp::plan::PlanError> {
    let mut p = policy.clone();
    if let Some(e) = epsilon {
        p.privacy.epsilon = e;
    }
    if let Some(r) = rounds {
        p.privacy.rounds = r;
    }
    if p.privacy.calibrated && p.privacy.unit != Unit::None {
        p.privacy.noise_multiplier = PrivacyPlan::calibrate(&p)?;
    }
    Ok(p)
}

/// The rotation seed of one task (public, bound to the job).
pub fn rotation_seed(policy: &Policy, job: &str, round: u32, task: u32) -> Option<[u8; 32]> {
    (policy.encoding.rotation == Rotation::Hadamard)
        .then(|| public_seed("rotation", job, round, task))
}

/// How a training task's vector is encoded: the strategy's slice of the
/// model, rotated by the task's public seed, followed by one plain
/// coordinate per audit canary.
pub fn training_scheme(
    policy: &Policy,
    plan: &crate::dp::plan::PrivacyPlan,
    job: &str,
    round: u32,
    spec: &crate::strategy::TaskSpec,
) -> crate::dp::encode::EncodingScheme {
    crate::dp::encode::EncodingScheme::for_task(
        plan,
        spec.dimension,
        policy.audit.canaries as usize,
        spec.clip_norm,
        rotation_seed(policy, job, round, spec.id),
    )
}
