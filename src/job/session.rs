//! A party's side of one job, sans-IO like the engine: no clock, no network.
//!
//! [`PartyRules`] are the party's own rules. The coordinator announces
//! secure-sum tasks; the party takes part only in what its own policy
//! allows, and derives every parameter that protects it — threshold,
//! collusion bound, graph, cohort, vector shape — from that policy, never
//! from the announcement. [`PartyRules::admit`] checks an announced task
//! and changes nothing; only [`PartyRules::start`] and
//! [`PartyRules::masked_input_sent`] move the state forward, and the host
//! persists [`SessionState`] before it acts (a party restarted mid-job keeps
//! its count).
//!
//! [`PartySession`] is the whole party: its rules, its strategy half, its
//! data and audit sample, and the protocol machine of the task it is in.
//! A driver feeds it the coordinator's downlink and messages and sends what
//! it hands back ([`PartySession::poll_outgoing`]).
//!
//! What a party refuses:
//! - a cohort that does not contain it, names a party outside the roster or
//!   twice, or is smaller than the policy's `min_survivors` (at least its
//!   threshold): a cohort of {victim, colluder} would otherwise run with
//!   t = 2 and a single honest noise share;
//! - a training round outside `1..=rounds` of the job, a task its own
//!   strategy does not plan for that round, a cohort other than the one its
//!   strategy computes for the task, or a (round, task) not after the last
//!   one it took part in — it counts rounds itself;
//! - an audit sum before the last training round, or a second audit sum once
//!   its masked input for one has gone out;
//! - a vector shape (length, bits) other than its own plan gives.

use std::fmt;

use serde::{Deserialize, Serialize};
use shroud_crypto::{IdentityPublicKey, PartyId, Round};

use crate::dp::plan::PrivacyPlan;
use crate::job::{protocol_round, training_scheme};
use crate::net::api::LiveTask;
use crate::policy::Policy;
use crate::strategy::round_plan;

/// What a party has done in one job: all it needs to refuse a replay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// The last training (round, task) it took part in.
    pub last_training: Option<(u32, u32)>,
    /// Its masked input for an audit sum has been sent: it sends no other.
    pub audit_sent: bool,
    /// The last statistics release (see [`crate::dp::statistics::slot`])
    /// its masked input was sent for: it sends none for that release or an
    /// earlier one again, so no two sums over different survivors can be
    /// subtracted to isolate its noisy statistics.
    #[serde(default)]
    pub statistics_sent: Option<u32>,
}

pub use super::task::{TaskKind, AUDIT_BITS, OUTPUT_BITS};
pub use crate::dp::statistics::STATISTICS_BITS;

/// A task the party agreed to take part in, with the parameters it derived
/// itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    pub kind: TaskKind,
    pub round: u32,
    pub task: u32,
    pub cohort: Vec<u32>,
    pub bits: u8,
    pub len: usize,
}

/// Why a party refused an announced task.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    UnknownKind(String),
    NotInCohort,
    /// The cohort names a party twice or out of order.
    MalformedCohort,
    NotInRoster(u32),
    CohortTooSmall {
        size: usize,
        needed: usize,
    },
    RoundOutOfRange {
        round: u32,
        rounds: u32,
    },
    NotAfterLast {
        round: u32,
        task: u32,
        last: (u32, u32),
    },
    UnknownTask {
        task: u32,
        tasks: u32,
    },
    /// The announced cohort is not the one the party's own strategy draws
    /// for this task.
    CohortMismatch {
        task: u32,
    },
    AuditBeforeTrainingEnds {
        round: u32,
        rounds: u32,
    },
    AuditAlreadySent,
    StatisticsAlreadySent,
    /// The announced kind is not the one the party's strategy plans for
    /// the task.
    WrongKind {
        task: u32,
        announced: &'static str,
    },
    WrongShape {
        len: usize,
        bits: u8,
        expected_len: usize,
        expected_bits: u8,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnknownKind(k) => write!(f, "unknown task kind `{}`", k.escape_debug()),
            Refusal::NotInCohort => f.write_str("this party is not in the task's cohort"),
            Refusal::MalformedCohort => {
                f.write_str("the cohort is not a strictly increasing list of party ids")
            }
            Refusal::NotInRoster(p) => write!(f, "the cohort names party {p}, not in the roster"),
            Refusal::CohortTooSmall { size, needed } => write!(
                f,
                "the cohort has {size} parties; this party's policy needs at least {needed} \
                 (min_survivors, at least the threshold)"
            ),
            Refusal::RoundOutOfRange { round, rounds } => write!(
                f,
                "training round {round} is outside the job's rounds 1..={rounds}"
            ),
            Refusal::NotAfterLast { round, task, last } => write!(
                f,
                "round {round} task {task} does not come after round {} task {}, \
                 the last this party took part in",
                last.0, last.1
            ),
            Refusal::UnknownTask { task, tasks } => write!(
                f,
                "task {task} does not exist: the strategy plans {tasks} task(s) for this round"
            ),
            Refusal::WrongKind { task, announced } => write!(
                f,
                "task {task} is announced as a{} {announced} sum; this party's strategy plans \
                 another kind for it",
                if announced.starts_with(['a', 'o']) {
                    "n"
                } else {
                    ""
                }
            ),
            Refusal::CohortMismatch { task } => write!(
                f,
                "the cohort of task {task} is not the one this party's policy draws for it"
            ),
            Refusal::AuditBeforeTrainingEnds { round, rounds } => write!(
                f,
                "an audit sum in round {round} comes before the job's last training round {rounds}"
            ),
            Refusal::AuditAlreadySent => {
                f.write_str("this party has already sent its masked input for this job's audit sum")
            }
            Refusal::StatisticsAlreadySent => f.write_str(
                "this party has already sent its masked input for this statistics release (or a \
                 later one) of the job",
            ),
            Refusal::WrongShape {
                len,
                bits,
                expected_len,
                expected_bits,
            } => write!(
                f,
                "the task expects {len} words of {bits} bits; this party's plan gives \
                 {expected_len} of {expected_bits}"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// One party's rules for one job.
pub struct PartyRules {
    me: u32,
    job: String,
    /// The job's policy as this party derived it (its own file, with the
    /// job's ε and rounds, each checked against it).
    policy: Policy,
    plan: PrivacyPlan,
    roster: std::collections::BTreeMap<u32, IdentityPublicKey>,
    audit_len: usize,
    state: SessionState,
}

impl PartyRules {
    pub fn new(
        me: u32,
        job: &str,
        policy: Policy,
        plan: PrivacyPlan,
        state: SessionState,
    ) -> PartyRules {
        let audit_len = crate::audit::counts_width(&policy);
        PartyRules {
            me,
            job: job.to_string(),
            roster: policy.roster_keys(),
            policy,
            plan,
            audit_len,
            state,
        }
    }

    pub fn job(&self) -> &str {
        &self.job
    }

    pub fn state(&self) -> SessionState {
        self.state
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn plan(&self) -> &PrivacyPlan {
        &self.plan
    }

    /// The smallest cohort this party accepts.
    pub fn min_cohort(&self) -> usize {
        self.policy.consortium.min_survivors
    }

    /// Checks an announced task against this party's policy and what it
    /// has done so far. Changes nothing.
    pub fn admit(&self, live: &LiveTask) -> Result<Admission, Refusal> {
        let kind = match live.kind.as_str() {
            "training" => TaskKind::Training,
            "outputs" => TaskKind::Outputs,
            "audit" => TaskKind::Audit,
            "statistics" => TaskKind::Statistics,
            other => return Err(Refusal::UnknownKind(other.to_string())),
        };
        if live.cohort.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Refusal::MalformedCohort);
        }
        if live.cohort.binary_search(&self.me).is_err() {
            return Err(Refusal::NotInCohort);
        }
        if let Some(p) = live.cohort.iter().find(|p| !self.roster.contains_key(p)) {
            return Err(Refusal::NotInRoster(*p));
        }
        let needed = self.min_cohort();
        if live.cohort.len() < needed {
            return Err(Refusal::CohortTooSmall {
                size: live.cohort.len(),
                needed,
            });
        }
        let rounds = self.policy.sum_rounds();
        let (round, task) = (live.round, live.task);
        let (expected_len, expected_bits) = match kind {
            TaskKind::Training | TaskKind::Outputs | TaskKind::Statistics => {
                if !(1..=rounds).contains(&round) {
                    return Err(Refusal::RoundOutOfRange { round, rounds });
                }
                let plan = round_plan(&self.policy, &self.job, round);
                let Some(spec) = plan.tasks.iter().find(|t| t.id == task) else {
                    return Err(Refusal::UnknownTask {
                        task,
                        tasks: plan.tasks.len() as u32,
                    });
                };
                if spec.cohort != live.cohort {
                    return Err(Refusal::CohortMismatch { task });
                }
                // An outputs sum carries no noise and a statistics sum is
                // charged once: a coordinator must not pass a training
                // update off as either, nor the reverse.
                if TaskKind::of(spec) != kind {
                    return Err(Refusal::WrongKind {
                        task,
                        announced: kind.name(),
                    });
                }
                if let Some(last) = self.state.last_training {
                    if (round, task) <= last {
                        return Err(Refusal::NotAfterLast { round, task, last });
                    }
                }
                match kind {
                    TaskKind::Outputs => (spec.dimension, OUTPUT_BITS),
                    TaskKind::Statistics
                        if self.state.statistics_sent.is_some_and(|last| {
                            crate::dp::statistics::slot(&self.policy, round) <= last
                        }) =>
                    {
                        return Err(Refusal::StatisticsAlreadySent)
                    }
                    TaskKind::Statistics => (spec.dimension, STATISTICS_BITS),
                    _ => {
                        let scheme =
                            training_scheme(&self.policy, &self.plan, &self.job, round, spec);
                        (scheme.padded, self.plan.bits)
                    }
                }
            }
            TaskKind::Audit => {
                if round <= rounds {
                    return Err(Refusal::AuditBeforeTrainingEnds { round, rounds });
                }
                if self.state.audit_sent {
                    return Err(Refusal::AuditAlreadySent);
                }
                (self.audit_len, AUDIT_BITS)
            }
        };
        if live.len != expected_len || live.bits != expected_bits {
            return Err(Refusal::WrongShape {
                len: live.len,
                bits: live.bits,
                expected_len,
                expected_bits,
            });
        }
        Ok(Admission {
            kind,
            round,
            task,
            cohort: live.cohort.clone(),
            bits: expected_bits,
            len: expected_len,
        })
    }

    /// The secure-sum round of an admitted task, from this party's policy.
    pub fn protocol_round(&self, a: &Admission) -> Result<Round, shroud_crypto::Error> {
        let cohort: Vec<(PartyId, IdentityPublicKey)> = a
            .cohort
            .iter()
            .map(|p| (PartyId(*p), self.roster[p]))
            .collect();
        protocol_round(
            &self.policy,
            &self.job,
            a.round,
            a.task,
            &cohort,
            a.bits,
            a.len,
        )
    }

    /// The party starts on an admitted task: that training (round, task) is
    /// used up, whatever happens to it.
    pub fn start(&mut self, a: &Admission) {
        if a.kind != TaskKind::Audit {
            self.state.last_training = Some((a.round, a.task));
        }
    }

    /// The party is about to send its masked input for `a`: after an audit
    /// (statistics) sum's, no other audit (statistics) sum.
    pub fn masked_input_sent(&mut self, a: &Admission) {
        match a.kind {
            TaskKind::Audit => self.state.audit_sent = true,
            TaskKind::Statistics => {
                self.state.statistics_sent =
                    Some(crate::dp::statistics::slot(&self.policy, a.round))
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------- the party

use rand_chacha::rand_core::{OsRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};
use shroud_crypto::message::MessageKind;
use shroud_crypto::session::SessionId;
use shroud_crypto::{IdentityKey, Party};
use zeroize::Zeroizing;

use crate::audit::{self, PartySample};
use crate::data::Dataset;
use crate::dp::gaussian::NoiseSeed;
use crate::dp::noise::DiscreteGaussianShare;
use crate::net::api::PartySetup;
use crate::policy::Unit;
use crate::strategy::{party_half, Contribution, PartyHalf};

/// What a party saw, for callers that check the protocol end to end
/// (tests, benchmarks).
#[derive(Debug, Clone)]
pub enum PartyObservation {
    /// The words it put into a secure sum.
    Input(ObservedInput),
    /// An unmask request reached it: from here on the round's result could
    /// be decoded, so the round must already be charged.
    UnmaskRequest {
        party: u32,
        job: String,
        round: u32,
        task: u32,
    },
}

/// One party's input to one secure sum, as observed at the party.
#[derive(Debug, Clone)]
pub struct ObservedInput {
    pub party: u32,
    pub job: String,
    pub round: u32,
    pub task: u32,
    pub words: Vec<u32>,
}

/// Who a party is and what it holds. None of it leaves the party.
pub struct Member {
    pub id: u32,
    pub identity_seed: Zeroizing<[u8; 32]>,
    pub data: Dataset,
}

/// Where a party's encoding randomness (rounding, noise) comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputRandomness {
    /// Fresh from the operating system for every task.
    Os,
    /// Tests only: derived from this seed, the job, the round and the task,
    /// so that two runs of a job produce the same inputs.
    #[doc(hidden)]
    Seeded(u64),
    /// The library's own tests only (absent from every other build):
    /// seeded as `Seeded`, with the party's noise share `divisor` times too
    /// small — broken noise, for the audit to catch.
    #[cfg(test)]
    WeakNoise { seed: u64, divisor: u32 },
}

impl InputRandomness {
    /// The std of the party's noise share under a plan that asks for
    /// `std`: the plan's, except in the library's broken-noise tests.
    fn noise_std(self, std: f64) -> f64 {
        match self {
            #[cfg(test)]
            InputRandomness::WeakNoise { divisor, .. } => (std / f64::from(divisor)).round(),
            _ => std,
        }
    }

    /// The test seed, if the randomness is seeded (`None`: the OS's).
    fn test_seed(self) -> Option<u64> {
        match self {
            InputRandomness::Os => None,
            InputRandomness::Seeded(s) => Some(s),
            #[cfg(test)]
            InputRandomness::WeakNoise { seed, .. } => Some(seed),
        }
    }

    /// The generator for randomized rounding of the input `label` names.
    fn rounding_rng(self, label: &str) -> ChaCha20Rng {
        match self.test_seed() {
            None => {
                let mut seed = Zeroizing::new([0u8; 32]);
                OsRng.fill_bytes(seed.as_mut());
                ChaCha20Rng::from_seed(*seed)
            }
            Some(s) => ChaCha20Rng::from_seed(*party_secret(
                &[7; 32],
                "test rounding",
                &format!("{label}/{s}"),
            )),
        }
    }

    /// The key of the noise on the input `label` names.
    fn noise_seed(self, label: &str) -> NoiseSeed {
        match self.test_seed() {
            None => NoiseSeed::from_os(),
            Some(s) => NoiseSeed::for_testing(*party_secret(
                &[7; 32],
                "test noise",
                &format!("{label}/{s}"),
            )),
        }
    }
}

/// A secret of this party's, bound to one job and one use; wiped on drop.
pub fn party_secret(seed: &[u8; 32], label: &str, job: &str) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    for part in [label.as_bytes(), seed.as_slice(), job.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    Zeroizing::new(h.finalize().into())
}

/// The task a party is taking part in.
struct Taking {
    admission: Admission,
    protocol: Party,
    session: SessionId,
}

/// One party's whole side of one job.
pub struct PartySession {
    rules: PartyRules,
    member: Member,
    half: Box<dyn PartyHalf>,
    /// The records it trains on: its data less its audit non-members.
    training: Dataset,
    /// The audit canaries it adds to every training sum (indices).
    canaries: Vec<usize>,
    sample: PartySample,
    noise: Option<DiscreteGaussianShare>,
    audit_seed: u64,
    randomness: InputRandomness,
    taking: Option<Taking>,
}

impl PartySession {
    /// Joins a job on the coordinator's terms, each checked against this
    /// party's own policy: the same policy, an ε and a round count it
    /// allows, the noise its own plan gives, data of the model's shape and
    /// canaries that fit it. The audit sample is drawn from the party's own
    /// secret, fixed per job, so a restarted party holds out the same
    /// non-members.
    pub fn join(
        member: Member,
        own: &Policy,
        setup: &PartySetup,
        state: SessionState,
        home: Option<&[u8]>,
        randomness: InputRandomness,
    ) -> Result<PartySession, String> {
        let job = setup.job.as_str();
        if setup.policy_hash != own.hash {
            return Err(format!(
                "the coordinator runs job `{}` under policy {}…, this party holds {}…; \
                 every member must hold the policy the consortium signed off",
                job.escape_debug(),
                setup
                    .policy_hash
                    .chars()
                    .take(12)
                    .collect::<String>()
                    .escape_debug(),
                &own.hash[..12]
            ));
        }
        let allowed = &own.privacy;
        if !(setup.epsilon.is_finite() && setup.epsilon > 0.0 && setup.epsilon <= allowed.epsilon) {
            return Err(format!(
                "the coordinator asks job `{}` to spend ε = {}; the policy allows at most {}",
                job.escape_debug(),
                setup.epsilon,
                allowed.epsilon
            ));
        }
        if !(1..=allowed.rounds).contains(&setup.rounds) {
            return Err(format!(
                "the coordinator asks job `{}` for {} rounds; the policy allows 1 to {}",
                job.escape_debug(),
                setup.rounds,
                allowed.rounds
            ));
        }
        let infeasible = |e: crate::dp::plan::PlanError| {
            format!(
                "job `{}`'s privacy plan: `{}`: {}",
                job.escape_debug(),
                e.key,
                e.message
            )
        };
        let policy = crate::job::job_policy(own, Some(setup.epsilon), Some(setup.rounds))
            .map_err(infeasible)?;
        let plan = PrivacyPlan::for_policy(&policy).map_err(infeasible)?;
        if (plan.noise_std_per_party - setup.noise_std_per_party).abs()
            > 1e-9 * plan.noise_std_per_party.max(1.0)
        {
            return Err(format!(
                "the coordinator asks for noise σ = {} per party; this party's plan says {}",
                setup.noise_std_per_party, plan.noise_std_per_party
            ));
        }
        let dim = policy.strategy.inputs;
        if member.data.dim() != dim {
            return Err(format!(
                "the data has {} features, the policy's model {dim}",
                member.data.dim()
            ));
        }
        let canaries = own_canaries(&setup.canaries, policy.audit.canaries, member.id, &policy)?;
        let sample_secret = party_secret(&member.identity_seed, "audit sample", job);
        let sample = audit::draw_sample(member.id, &member.data, &sample_secret);
        let training = audit::training_set(&member.data, &sample);
        let audit_seed = u64::from_le_bytes(
            party_secret(&member.identity_seed, "audit reference", job)[..8]
                .try_into()
                .expect("8 bytes"),
        );
        let noise = party_noise(&policy, &plan, randomness)?;
        let half = party_half(&policy, home).map_err(|e| {
            format!(
                "this party's saved state for job `{}` cannot be restored: {e}",
                job.escape_debug()
            )
        })?;
        Ok(PartySession {
            half,
            rules: PartyRules::new(member.id, job, policy, plan, state),
            member,
            training,
            canaries,
            sample,
            noise,
            audit_seed,
            randomness,
            taking: None,
        })
    }

    pub fn rules(&self) -> &PartyRules {
        &self.rules
    }

    pub fn state(&self) -> SessionState {
        self.rules.state()
    }

    /// The strategy's home state on this party, to journal with
    /// [`PartySession::state`] and pass back to [`PartySession::join`].
    pub fn home_state(&self) -> Vec<u8> {
        self.half.save()
    }

    /// Checks an announced task against this party's rules; changes nothing.
    pub fn admit(&self, live: &LiveTask) -> Result<Admission, Refusal> {
        self.rules.admit(live)
    }

    /// Takes part in an admitted task: the task is used up (persist
    /// [`PartySession::state`] before acting), the input is computed — the
    /// whole noisy vector, before any of the round's messages — and the
    /// protocol starts. Returns the input words (for observers).
    pub fn begin(&mut self, a: &Admission, downlink: &[f64]) -> Result<Vec<u32>, String> {
        self.taking = None;
        self.rules.start(a);
        self.half
            .receive(a.round, downlink)
            .map_err(|e| format!("the coordinator's model: {e}"))?;
        let words = match a.kind {
            TaskKind::Training => self.training_input(a)?,
            TaskKind::Outputs => self.outputs_input(a)?,
            TaskKind::Statistics => self.statistics_input(a)?,
            TaskKind::Audit => {
                let attacks = audit::population_attacks(self.rules.policy());
                let layout = audit::block_layout(self.rules.policy());
                let model = self.half.model();
                let mut counts = audit::party_counts(
                    &model,
                    &self.member.data,
                    &self.sample,
                    &attacks,
                    &layout,
                    self.audit_seed,
                );
                // Transfer: the fine-tuned model is trained here, at home,
                // and only its counts leave, in this noisy sum.
                let plan = self.rules.plan();
                let mut home =
                    self.home_noise(plan.finetune.as_deref().unwrap_or(plan), a, "finetune")?;
                if let Some(tuned) = self.half.fine_tune(&self.training, &mut home) {
                    let tuned = tuned.map_err(|e| format!("home fine-tuning: {e}"))?;
                    counts.extend(audit::transfer_counts(
                        &model,
                        &tuned,
                        &self.member.data,
                        &self.sample,
                    ));
                }
                let randomness = self.randomness;
                let label = format!("{}/{}/audit/{}", self.rules.job(), a.round, self.member.id);
                let stds = self.rules.plan().audit.as_ref().map(|a| a.noise_stds());
                audit::party_input(&counts, &layout, &stds.unwrap_or_default(), |k| {
                    randomness.noise_seed(&format!("{label}/{k}"))
                })
                .map_err(|e| e.to_string())?
            }
        };
        if words.len() != a.len {
            return Err(format!(
                "this party's input has {} words, the round expects {}",
                words.len(),
                a.len
            ));
        }
        let round = self
            .rules
            .protocol_round(a)
            .map_err(|e| format!("round setup: {e}"))?;
        let session = *round.session();
        let protocol = Party::new(
            round,
            PartyId(self.member.id),
            IdentityKey::from_seed(&self.member.identity_seed),
            words.clone(),
            &mut OsRng,
        )
        .map_err(|e| e.to_string())?;
        self.taking = Some(Taking {
            admission: a.clone(),
            protocol,
            session,
        });
        Ok(words)
    }

    /// The strategy's contribution to a training task, encoded: rotated,
    /// clipped and rounded (each record's vector on its own), the party's
    /// noise share added, wrapped to words mod 2^bits.
    fn training_input(&mut self, a: &Admission) -> Result<Vec<u32>, String> {
        use zeroize::Zeroize;
        let spec = self.task_spec(a)?;
        let (policy, plan, job) = (self.rules.policy(), self.rules.plan(), self.rules.job());
        let scheme = training_scheme(policy, plan, job, a.round, &spec);
        let sample_seed = party_secret(
            &self.member.identity_seed,
            "round sample",
            &format!("{job}/{}", a.round),
        );
        let label = format!("{job}/{}/{}/{}", a.round, a.task, self.member.id);
        let mut rng = self.randomness.rounding_rng(&label);
        let noise_seed = self.randomness.noise_seed(&label);
        let enc = |e: crate::dp::encode::EncodeError| format!("encoding failed: {e}");
        // The update, its quantized form and the sum are wiped once used.
        let mut acc: Zeroizing<Vec<i64>> = Zeroizing::new(vec![0i64; scheme.padded]);
        match self
            .half
            .contribute(a.round, &spec, &self.training, &sample_seed)
        {
            Contribution::PerRecord(mut list) => {
                for g in list.iter_mut() {
                    let q = scheme.quantize_into(g, &mut rng, &mut acc).map_err(enc);
                    g.zeroize();
                    q?;
                }
            }
            Contribution::Whole(mut v) => {
                let q = scheme.quantize_into(&v, &mut rng, &mut acc).map_err(enc);
                v.zeroize();
                q?;
            }
        }
        // Each of its canaries as one more record, sampled at the records'
        // rate by a secret of its own.
        let canary_secret = party_secret(
            &self.member.identity_seed,
            "canary sample",
            &format!("{job}/{}/{}", a.round, a.task),
        );
        let mut canary_rng = ChaCha20Rng::from_seed(*canary_secret);
        for &i in &self.canaries {
            if crate::sampling::bernoulli(&mut canary_rng, policy.privacy.sampling_rate) {
                scheme
                    .quantize_plain_into(i, spec.clip_norm, &mut rng, &mut acc)
                    .map_err(enc)?;
            }
        }
        if let Some(n) = &self.noise {
            n.add_to_with_seed(&mut acc, &noise_seed)
                .map_err(|e| e.to_string())?;
        }
        Ok(scheme.wrap(&acc))
    }

    /// The strategy's statistics, clipped block by block, summed, rounded
    /// and noised as the plan says (no noise without DP).
    fn statistics_input(&mut self, a: &Admission) -> Result<Vec<u32>, String> {
        use zeroize::Zeroize;
        let spec = self.task_spec(a)?;
        let blocks = crate::dp::statistics::blocks(self.rules.policy());
        let mut vectors = match self.half.statistics(&spec, &self.training)? {
            Contribution::PerRecord(list) => list,
            Contribution::Whole(v) => vec![v],
        };
        let stds = match (&self.noise, &self.rules.plan().statistics) {
            (Some(_), Some(s)) => s
                .noise_stds()
                .into_iter()
                .map(|std| self.randomness.noise_std(std))
                .collect(),
            _ => Vec::new(),
        };
        let randomness = self.randomness;
        let label = format!(
            "{}/{}/statistics/{}",
            self.rules.job(),
            a.round,
            self.member.id
        );
        let words = crate::dp::statistics::party_input(&vectors, &blocks, &stds, |k| {
            randomness.noise_seed(&format!("{label}/{k}"))
        });
        vectors.iter_mut().for_each(|v| v.zeroize());
        words
    }

    /// The admitted task as this party's own strategy plans it.
    fn task_spec(&self, a: &Admission) -> Result<crate::strategy::TaskSpec, String> {
        round_plan(self.rules.policy(), self.rules.job(), a.round)
            .tasks
            .into_iter()
            .find(|t| t.id == a.task)
            .ok_or_else(|| "the task left the plan".to_string())
    }

    /// The noisy sums of this party's home DP-SGD under `plan` (the
    /// ensemble's: the job's; the transfer's: its fine-tuning's).
    fn home_noise(
        &self,
        plan: &PrivacyPlan,
        a: &Admission,
        what: &str,
    ) -> Result<HomeNoise, String> {
        HomeNoise::new(
            plan,
            self.rules.policy(),
            self.rules.job(),
            a.round,
            self.member.id,
            &self.member.identity_seed,
            what,
            self.randomness,
        )
    }

    /// An outputs task: the member trains at home, then its outputs on the
    /// public data are written as words. No noise: they are computed from
    /// a DP release only.
    fn outputs_input(&mut self, a: &Admission) -> Result<Vec<u32>, String> {
        // A later attempt at the sum sends the first attempt's words: the
        // same release, paid once.
        if let Some(words) = self.half.kept_outputs() {
            return Ok(words);
        }
        let words = self.fresh_outputs(a)?;
        self.half.keep_outputs(&words);
        Ok(words)
    }

    fn fresh_outputs(&mut self, a: &Admission) -> Result<Vec<u32>, String> {
        let spec = self.task_spec(a)?;
        let mut home = self.home_noise(self.rules.plan(), a, "member")?;
        let out = self
            .half
            .outputs(a.round, &spec, &self.training, &mut home)?;
        if out.len() != spec.dimension {
            return Err(format!(
                "this party's outputs have {} values, the task {}",
                out.len(),
                spec.dimension
            ));
        }
        let Some(vote) = &self.rules.plan().vote else {
            return Ok(crate::job::task::encode_outputs(&out));
        };
        // A noisy vote: one-hot votes from a member trained without noise,
        // and this party's share of the vote's noise.
        let classes = self.rules.policy().strategy.classes;
        let mut votes: Zeroizing<Vec<i64>> = Zeroizing::new(vec![0; out.len()]);
        for (r, row) in out.chunks(classes).enumerate() {
            let best = crate::model::argmax(row);
            votes[r * classes + best] = 1;
        }
        let label = format!("{}/{}/vote/{}", self.rules.job(), a.round, self.member.id);
        DiscreteGaussianShare::new(vote.noise_std_per_party)
            .and_then(|n| n.add_to_with_seed(&mut votes, &self.randomness.noise_seed(&label)))
            .map_err(|e| e.to_string())?;
        Ok(votes.iter().map(|&v| v as u32).collect())
    }

    /// A message from the coordinator for the task being taken part in.
    pub fn handle(&mut self, bytes: &[u8]) -> Result<(), String> {
        let t = self
            .taking
            .as_mut()
            .ok_or("no task is being taken part in")?;
        t.protocol
            .handle_bytes(bytes, &mut OsRng)
            .map_err(|e| format!("the coordinator's message: {e}"))
    }

    /// The next message to send, encoded, with its kind. Before a masked
    /// input leaves, an audit sum is marked sent (persist the state before
    /// sending it).
    pub fn poll_outgoing(&mut self) -> Option<(MessageKind, Vec<u8>)> {
        let t = self.taking.as_mut()?;
        let m = t.protocol.poll_outgoing()?;
        let kind = m.kind();
        if kind == MessageKind::MaskedInput {
            self.rules.masked_input_sent(&t.admission);
        }
        Some((kind, m.encode(&t.session)))
    }

    /// The task is over for this party.
    pub fn is_done(&self) -> bool {
        self.taking.as_ref().map_or(true, |t| t.protocol.is_done())
    }

    /// Leaves the task (it went silent, or the round moved on).
    pub fn leave(&mut self) {
        self.taking = None;
    }
}

/// The noise share a party adds to what it computes under `plan`: none
/// without DP, and none for a voting ensemble's members, whose training the
/// vote pays for (the vote's noise is its own, `plan.vote`).
fn party_noise(
    policy: &Policy,
    plan: &PrivacyPlan,
    randomness: InputRandomness,
) -> Result<Option<DiscreteGaussianShare>, String> {
    (policy.privacy.unit != Unit::None && plan.vote.is_none())
        .then(|| DiscreteGaussianShare::new(randomness.noise_std(plan.noise_std_per_party)))
        .transpose()
        .map_err(|e| e.to_string())
}

/// A party's home DP-SGD sums: its gradients clipped and rounded on its
/// home plan's grid, its whole discrete Gaussian added (no other party's
/// noise joins it), decoded. Randomness as the party's secure-sum inputs.
pub struct HomeNoise {
    scheme: crate::dp::encode::EncodingScheme,
    noise: Option<DiscreteGaussianShare>,
    randomness: InputRandomness,
    /// Keys the record samples; wiped on drop.
    secret: Zeroizing<[u8; 32]>,
    label: String,
}

impl HomeNoise {
    /// The home sums of party `member` in `round` of `job` under `plan`,
    /// `what` naming the training ("member", "finetune"): its record
    /// samples keyed by its identity seed, its noise the plan's.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plan: &PrivacyPlan,
        policy: &Policy,
        job: &str,
        round: u32,
        member: u32,
        identity_seed: &[u8; 32],
        what: &str,
        randomness: InputRandomness,
    ) -> Result<HomeNoise, String> {
        let rotation = (policy.encoding.rotation == crate::policy::Rotation::Hadamard)
            .then(|| crate::strategy::public_seed("home rotation", job, round, member));
        Ok(HomeNoise {
            scheme: crate::dp::encode::EncodingScheme::for_task(
                plan,
                plan.dimension,
                0,
                plan.clip_norm,
                rotation,
            ),
            noise: party_noise(policy, plan, randomness)?,
            randomness,
            secret: party_secret(
                identity_seed,
                "home sample",
                &format!("{job}/{round}/{what}"),
            ),
            label: format!("{job}/{round}/{what}/{member}"),
        })
    }
}

impl crate::strategy::home::NoisySum for HomeNoise {
    fn noisy_sum(&mut self, step: u32, mut grads: Vec<Vec<f64>>) -> Result<Vec<f64>, String> {
        use zeroize::Zeroize;
        let label = format!("{}/{step}", self.label);
        let mut rng = self.randomness.rounding_rng(&label);
        let mut acc: Zeroizing<Vec<i64>> = Zeroizing::new(vec![0i64; self.scheme.padded]);
        for g in grads.iter_mut() {
            let q = self.scheme.quantize_into(g, &mut rng, &mut acc);
            g.zeroize();
            q.map_err(|e| format!("encoding failed: {e}"))?;
        }
        if let Some(n) = &self.noise {
            n.add_to_with_seed(&mut acc, &self.randomness.noise_seed(&label))
                .map_err(|e| e.to_string())?;
        }
        Ok(self.scheme.decode(&self.scheme.wrap(&acc)))
    }

    fn sample_seed(&mut self, step: u32) -> Zeroizing<[u8; 32]> {
        party_secret(&self.secret, "home step", &step.to_string())
    }
}

/// The canaries the coordinator deals this party, checked against the
/// public dealing rule: `m` of them, round-robin over the roster in order,
/// each once. Canaries carry no data, but a coordinator could otherwise
/// load one party with all of them.
fn own_canaries(dealt: &[u32], m: u32, party: u32, policy: &Policy) -> Result<Vec<usize>, String> {
    let roster: Vec<u32> = policy.parties.iter().map(|p| p.id).collect();
    let position = roster
        .iter()
        .position(|&p| p == party)
        .ok_or("this party is not on the policy's roster")?;
    let mut last: Option<u32> = None;
    for &i in dealt {
        if i >= m || last.is_some_and(|l| i <= l) || i as usize % roster.len() != position {
            return Err(format!(
                "the coordinator dealt canary {i}, which is not this party's: the policy's {m} \
                 canaries are dealt round-robin over the roster, each once, in order"
            ));
        }
        last = Some(i);
    }
    Ok(dealt.iter().map(|&i| i as usize).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::home::NoisySum;

    /// A home step's sum carries the party's whole noise: with nothing to
    /// sum, what comes back is that noise alone, of std σ·γ per coordinate
    /// in the model's units; and each step's noise is fresh.
    #[test]
    fn a_home_step_carries_the_partys_whole_noise() {
        let dir = std::env::temp_dir().join(format!("shroud-home-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rows: String = (0..20)
            .map(|i| format!("{}\n", vec![format!("{i}"); 13].join(",")))
            .collect();
        std::fs::write(dir.join("public.csv"), &rows).unwrap();
        let sha = crate::policy::hex(&Sha256::digest(rows.as_bytes()));
        let mut text = "[consortium]\nid = \"c\"\nthreshold = 3\nmax_colluding = 1\n\
                        neighbors = \"all\"\n\n"
            .to_string();
        for i in 0..4u32 {
            text += &format!(
                "[[party]]\nid = {i}\nname = \"p{i}\"\nidentity_key = \"{}\"\nrecords = 30\n\n",
                crate::job::demo_public_key_hex(i)
            );
        }
        text += &format!(
            "[privacy]\nunit = \"record\"\nepsilon = 2.0\ndelta = 1e-5\naccountant = \"zcdp\"\n\
             clip_norm = 1.0\ncalibrate = true\nrounds = 10\nsampling_rate = 1.0\n\n\
             [encoding]\nbits = 24\nrotation = \"hadamard\"\n\n\
             [strategy]\nkind = \"ensemble\"\npublic_set = \"public.csv\"\n\
             public_set_sha256 = \"{sha}\"\nmodel = \"mlp\"\ninputs = 13\nhidden = [16]\n\
             classes = 3\n\n[audit]\nattacks = [\"loss\"]\ncanaries = 0\n"
        );
        let policy = Policy::parse(&dir.join("e.toml"), &text).unwrap();
        let plan = PrivacyPlan::for_policy(&policy).unwrap();
        assert!(plan.at_home);
        let mut home = HomeNoise {
            scheme: crate::dp::encode::EncodingScheme::for_task(
                &plan,
                plan.dimension,
                0,
                plan.clip_norm,
                Some([3; 32]),
            ),
            noise: Some(DiscreteGaussianShare::new(plan.noise_std_per_party).unwrap()),
            randomness: InputRandomness::Seeded(1),
            secret: Zeroizing::new([9; 32]),
            label: "t".into(),
        };
        let a = home.noisy_sum(0, Vec::new()).unwrap();
        let b = home.noisy_sum(1, Vec::new()).unwrap();
        assert_eq!(a.len(), plan.dimension);
        assert_ne!(a, b, "the noise must be fresh each step");
        let want = plan.noise_std_per_party * plan.gamma;
        for v in [&a, &b] {
            let sd = (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
            assert!(
                (sd / want - 1.0).abs() < 0.25,
                "noise std {sd}, the plan's {want}"
            );
        }
        // The noise is z times the clip norm, at the party alone.
        assert!((want / (plan.noise_multiplier * plan.clip_norm) - 1.0).abs() < 0.05);
        assert_ne!(*home.sample_seed(0), *home.sample_seed(1));
    }
}
