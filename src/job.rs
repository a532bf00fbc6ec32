//! The whole job in one process: every party and the coordinator driven
//! through complete rounds with the real encoding, noise shares, masks,
//! unmasking, decoding and ledger charges, and dropouts injected on
//! request. The networked service runs the same steps over HTTP.
//!
//! Order of a round, per task: parties compute, encode and add noise →
//! secure aggregation, charged in the ledger (committed, fsynced) once the
//! masked inputs are in and before any unmask request → check the secure
//! sum against the plain sum of the contributors' inputs → decode → the
//! strategy absorbs the result → the charge is marked released. A round
//! that aborts after its charge point stays charged; one that aborts
//! before it costs nothing.

use std::collections::{BTreeMap, BTreeSet};

use rand_chacha::rand_core::{OsRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use shroud_crypto::sim::{plain_sum, NoMeter, Sim};
use shroud_crypto::{
    GraphSpec, IdentityKey, IdentityPublicKey, PartyId, Phase, Round, RoundConfig, SessionParams,
};

use crate::data::Dataset;
use crate::dp::encode::EncodingScheme;
use crate::dp::noise::DiscreteGaussianShare;
use crate::dp::plan::PrivacyPlan;
use crate::policy::{Neighbours, Policy, Rotation, Unit};
use crate::store::ledger::ChargeKind;
use crate::store::PrivacyLedger;
use crate::strategy::{Contribution, PartyView, Strategy, TaskResult, TaskSpec};

/// One member as the in-process job holds it.
pub struct JobParty {
    pub id: u32,
    pub identity_seed: zeroize::Zeroizing<[u8; 32]>,
    pub data: Dataset,
}

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

pub struct JobSpec<'a> {
    pub job_id: String,
    pub policy: &'a Policy,
    pub plan: &'a PrivacyPlan,
    pub parties: Vec<JobParty>,
    pub test: &'a Dataset,
    /// Probability that a party drops out of a round (at a random phase).
    pub dropout: f64,
    pub seed: u64,
    /// Required to run a policy with `unit = "none"`.
    pub allow_no_dp: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundOutcome {
    pub round: u32,
    pub accuracy: f64,
    /// ε this job has spent after this round (`None` without DP).
    pub epsilon_spent: Option<f64>,
    pub contributors: usize,
    pub dropped: Vec<u32>,
    /// Why the round aborted, if it did; it stays charged.
    pub aborted: Option<String>,
}

pub struct JobOutcome {
    pub rounds: Vec<RoundOutcome>,
    pub accuracy: f64,
    pub epsilon_spent: Option<f64>,
    pub delta: f64,
    /// Party dropouts in rounds that still completed.
    pub dropouts_survived: usize,
    pub aborted_rounds: usize,
    pub no_dp: bool,
}

#[derive(Debug)]
pub enum JobError {
    NoDpNotAllowed,
    IdentityMismatch {
        party: u32,
    },
    Ledger(crate::store::LedgerError),
    Encode(crate::dp::encode::EncodeError),
    Noise(crate::dp::noise::NoiseError),
    Protocol(shroud_crypto::Error),
    /// The secure sum differed from the plain sum: a bug, never expected.
    SecureSumMismatch {
        round: u32,
        task: u32,
    },
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::NoDpNotAllowed => f.write_str(
                "the policy has privacy.unit = \"none\" (no differential privacy); \
                 such a job only runs with --allow-no-dp, and its model is never released",
            ),
            JobError::IdentityMismatch { party } => write!(
                f,
                "party {party}'s identity key does not match its roster entry in the policy"
            ),
            JobError::Ledger(e) => e.fmt(f),
            JobError::Encode(e) => write!(f, "encoding failed: {e}"),
            JobError::Noise(e) => e.fmt(f),
            JobError::Protocol(e) => write!(f, "secure aggregation failed: {e}"),
            JobError::SecureSumMismatch { round, task } => write!(
                f,
                "round {round} task {task}: the secure sum differs from the plain sum"
            ),
        }
    }
}

impl std::error::Error for JobError {}

impl From<crate::store::LedgerError> for JobError {
    fn from(e: crate::store::LedgerError) -> Self {
        JobError::Ledger(e)
    }
}

/// Fresh 256-bit randomness for one round's party secrets.
pub fn master_secret() -> zeroize::Zeroizing<[u8; 32]> {
    let mut m = zeroize::Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(m.as_mut());
    m
}

/// Public per-round randomness (graph and rotation seeds), bound to the job.
fn public_seed(label: &str, job: &str, round: u32, task: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        label.as_bytes(),
        job.as_bytes(),
        &round.to_le_bytes(),
        &task.to_le_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

pub fn run_job(
    spec: JobSpec<'_>,
    strategy: &mut dyn Strategy,
    ledger: &mut PrivacyLedger,
    progress: &mut dyn FnMut(&RoundOutcome),
) -> Result<JobOutcome, JobError> {
    let policy = spec.policy;
    let plan = spec.plan;
    let no_dp = policy.privacy.unit == Unit::None;
    if no_dp && !spec.allow_no_dp {
        return Err(JobError::NoDpNotAllowed);
    }
    // Every party's key must be the one the roster lists.
    let roster = policy.roster_keys();
    for p in &spec.parties {
        if roster.get(&p.id) != Some(&IdentityKey::from_seed(&p.identity_seed).public()) {
            return Err(JobError::IdentityMismatch { party: p.id });
        }
    }
    let ids: Vec<u32> = spec.parties.iter().map(|p| p.id).collect();
    let records: BTreeMap<u32, usize> = spec.parties.iter().map(|p| (p.id, p.data.len())).collect();
    let tasks_per_round = strategy.plan(0, &ids).tasks.len();
    let rounds = policy.privacy.rounds;
    if !no_dp {
        ledger.set_budget(
            &policy.consortium.id,
            policy.privacy.epsilon,
            policy.privacy.delta,
            policy.privacy.accountant,
        )?;
        let mut planned = vec![plan.charge.clone(); rounds as usize * tasks_per_round];
        planned.extend(plan.audit.as_ref().map(|a| a.charge.clone()));
        ledger.begin_job(&policy.consortium.id, &spec.job_id, &policy.hash, &planned)?;
    }
    let noise = if no_dp {
        None
    } else {
        Some(DiscreteGaussianShare::new(plan.noise_std_per_party).map_err(JobError::Noise)?)
    };
    let mut rng = ChaCha20Rng::seed_from_u64(spec.seed ^ 0x00a0_b0c0);
    let mut outcomes = Vec::with_capacity(rounds as usize);
    for round in 1..=rounds {
        let round_plan = strategy.plan(round, &ids);
        let mut outcome = RoundOutcome {
            round,
            accuracy: 0.0,
            epsilon_spent: None,
            contributors: 0,
            dropped: Vec::new(),
            aborted: None,
        };
        for task in &round_plan.tasks {
            // Charged at the round's charge point, durably, before anything
            // of it can be decoded: a crash from there on over-counts, and
            // a round that aborts before it costs nothing.
            let mut charge = || -> Result<Option<i64>, crate::store::LedgerError> {
                if no_dp {
                    return Ok(None);
                }
                let c = ledger.charge(
                    &spec.job_id,
                    round,
                    task.id,
                    ChargeKind::Training,
                    &plan.charge,
                )?;
                Ok(Some(c.id))
            };
            match run_task(
                &spec,
                plan,
                noise.as_ref(),
                strategy,
                task,
                round,
                &records,
                &mut rng,
                &mut charge,
            )? {
                TaskOutcome::Done {
                    contributors,
                    dropped,
                    charge_id,
                } => {
                    outcome.contributors = outcome.contributors.max(contributors);
                    outcome.dropped.extend(dropped);
                    if let Some(id) = charge_id {
                        ledger.mark_released(id)?;
                    }
                }
                TaskOutcome::Aborted { reason, dropped } => {
                    outcome.dropped.extend(dropped);
                    outcome.aborted = Some(reason);
                }
            }
        }
        outcome.dropped.sort_unstable();
        outcome.dropped.dedup();
        outcome.accuracy = strategy.model().accuracy(spec.test);
        if !no_dp {
            outcome.epsilon_spent = Some(ledger.job_spent(&spec.job_id)?);
        }
        progress(&outcome);
        outcomes.push(outcome);
    }
    let epsilon_spent = if no_dp {
        None
    } else {
        Some(ledger.job_spent(&spec.job_id)?)
    };
    Ok(JobOutcome {
        accuracy: strategy.model().accuracy(spec.test),
        epsilon_spent,
        delta: policy.privacy.delta,
        dropouts_survived: outcomes
            .iter()
            .filter(|o| o.aborted.is_none())
            .map(|o| o.dropped.len())
            .sum(),
        aborted_rounds: outcomes.iter().filter(|o| o.aborted.is_some()).count(),
        rounds: outcomes,
        no_dp,
    })
}

enum TaskOutcome {
    Done {
        contributors: usize,
        dropped: Vec<u32>,
        /// The round's charge, when DP charged it.
        charge_id: Option<i64>,
    },
    Aborted {
        reason: String,
        dropped: Vec<u32>,
    },
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

/// Party side of one task: the local computation, each vector rotated,
/// clipped and rounded, the party's discrete Gaussian noise share added,
/// and the result wrapped to words mod 2^bits for secure aggregation.
pub fn party_input(
    strategy: &dyn Strategy,
    task: &TaskSpec,
    view: &PartyView<'_>,
    scheme: &EncodingScheme,
    noise: Option<&DiscreteGaussianShare>,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<u32>, JobError> {
    use zeroize::{Zeroize, Zeroizing};
    // The update, its quantized form and the sum are wiped once used.
    let mut acc: Zeroizing<Vec<i64>> = match strategy.contribute(task, view, rng) {
        Contribution::PerRecord(mut list) => {
            let mut acc = Zeroizing::new(vec![0i64; scheme.padded]);
            for g in list.iter_mut() {
                let q = Zeroizing::new(scheme.quantize(g, rng).map_err(JobError::Encode)?);
                g.zeroize();
                acc.iter_mut().zip(q.iter()).for_each(|(a, b)| *a += b);
            }
            acc
        }
        Contribution::Whole(mut v) => {
            let q = scheme.quantize(&v, rng).map_err(JobError::Encode);
            v.zeroize();
            Zeroizing::new(q?)
        }
    };
    if let Some(n) = noise {
        n.add_to(&mut acc).map_err(JobError::Noise)?;
    }
    Ok(scheme.wrap(&acc))
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

#[allow(clippy::too_many_arguments)]
fn run_task(
    spec: &JobSpec<'_>,
    plan: &PrivacyPlan,
    noise: Option<&DiscreteGaussianShare>,
    strategy: &mut dyn Strategy,
    task: &TaskSpec,
    round: u32,
    records: &BTreeMap<u32, usize>,
    rng: &mut ChaCha20Rng,
    charge: &mut dyn FnMut() -> Result<Option<i64>, crate::store::LedgerError>,
) -> Result<TaskOutcome, JobError> {
    let policy = spec.policy;
    let rotation = rotation_seed(policy, &spec.job_id, round, task.id);
    let scheme = EncodingScheme::from_plan(plan, rotation);

    // Parties: local computation, encoding and noise share.
    let cohort: BTreeSet<u32> = task.cohort.iter().copied().collect();
    let mut inputs: BTreeMap<PartyId, Vec<u32>> = BTreeMap::new();
    let mut identities = Vec::new();
    for p in spec.parties.iter().filter(|p| cohort.contains(&p.id)) {
        let mut prng = ChaCha20Rng::seed_from_u64(rng.next_u64());
        let view = PartyView {
            id: p.id,
            data: &p.data,
        };
        let words = party_input(&*strategy, task, &view, &scheme, noise, &mut prng)?;
        inputs.insert(PartyId(p.id), words);
        identities.push((PartyId(p.id), IdentityKey::from_seed(&p.identity_seed)));
    }

    // Secure aggregation over the cohort.
    let publics: Vec<(PartyId, IdentityPublicKey)> =
        identities.iter().map(|(id, k)| (*id, k.public())).collect();
    let crypto_round = protocol_round(
        policy,
        &spec.job_id,
        round,
        task.id,
        &publics,
        plan.bits,
        scheme.padded,
    )
    .map_err(JobError::Protocol)?;
    let mut sim = Sim::with_master_secret(
        crypto_round,
        identities,
        inputs.clone(),
        &master_secret(),
        NoMeter,
    )
    .map_err(JobError::Protocol)?;
    sim.set_threads(1);
    let mut dropped = Vec::new();
    for &p in &task.cohort {
        if spec.dropout > 0.0 && crate::sampling::bernoulli(rng, spec.dropout) {
            let phase = Phase::ALL[(rng.next_u32() % 5) as usize];
            sim.drop_party(PartyId(p), phase);
            dropped.push(p);
        }
    }
    let (mut charge_id, mut ledger_error) = (None, None);
    let result = sim.run_charged(|_| match charge() {
        Ok(id) => {
            charge_id = id;
            Ok(())
        }
        Err(e) => {
            ledger_error = Some(e);
            Err(shroud_crypto::Error::Config(
                "the ledger could not record the round's charge".into(),
            ))
        }
    });
    if let Some(e) = ledger_error {
        return Err(JobError::Ledger(e));
    }
    let agg = match result {
        Ok(a) => a,
        Err(e) => {
            return Ok(TaskOutcome::Aborted {
                reason: e.to_string(),
                dropped,
            })
        }
    };
    if agg.sum != plain_sum(&inputs, &agg.contributors, plan.bits) {
        return Err(JobError::SecureSumMismatch {
            round,
            task: task.id,
        });
    }
    let contributors: Vec<u32> = agg.contributors.iter().map(|p| p.0).collect();
    let recs: Vec<usize> = contributors.iter().map(|p| records[p]).collect();
    let sum = scheme.decode(&agg.sum);
    strategy.absorb(TaskResult {
        task,
        sum,
        contributors: &contributors,
        records: &recs,
    });
    Ok(TaskOutcome::Done {
        contributors: contributors.len(),
        dropped,
        charge_id,
    })
}
