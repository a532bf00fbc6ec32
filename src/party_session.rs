//! A party's own rules for one job. The coordinator announces secure-sum
//! tasks; the party takes part only in what its own policy allows, and
//! derives every parameter that protects it — threshold, collusion bound,
//! graph, vector shape — from that policy, never from the announcement.
//!
//! Sans-IO: no clock, no network. [`PartySession::admit`] checks an
//! announced task against borrowed state and changes nothing; only
//! [`PartySession::start`] and [`PartySession::masked_input_sent`] move the
//! state forward, and the host persists [`SessionState`] before it acts
//! (a party restarted mid-job keeps its count).
//!
//! What a party refuses:
//! - a cohort that does not contain it, names a party outside the roster or
//!   twice, or is smaller than the policy's `min_survivors` (at least its
//!   threshold): a cohort of {victim, colluder} would otherwise run with
//!   t = 2 and a single honest noise share;
//! - a training round outside `1..=rounds` of the job, or a (round, task)
//!   not after the last one it took part in — it counts rounds itself;
//! - an audit sum before the last training round, or a second audit sum once
//!   its masked input for one has gone out;
//! - a vector shape (length, bits) other than its own plan gives.

use std::fmt;

use serde::{Deserialize, Serialize};
use shroud_crypto::{IdentityPublicKey, PartyId, Round};

use crate::dp::encode::EncodingScheme;
use crate::dp::plan::PrivacyPlan;
use crate::job::{protocol_round, rotation_seed};
use crate::net::api::LiveTask;
use crate::policy::Policy;

/// What a party has done in one job: all it needs to refuse a replay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// The last training (round, task) it took part in.
    pub last_training: Option<(u32, u32)>,
    /// Its masked input for an audit sum has been sent: it sends no other.
    pub audit_sent: bool,
}

/// The kind of secure sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// A training update (noisy, charged per round).
    Training,
    /// The audit's bin counts, once, after the last training round.
    Audit,
}

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
    AuditBeforeTrainingEnds {
        round: u32,
        rounds: u32,
    },
    AuditAlreadySent,
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
                "task {task} does not exist: the strategy plans {tasks} task(s) per round"
            ),
            Refusal::AuditBeforeTrainingEnds { round, rounds } => write!(
                f,
                "an audit sum in round {round} comes before the job's last training round {rounds}"
            ),
            Refusal::AuditAlreadySent => {
                f.write_str("this party has already sent its masked input for this job's audit sum")
            }
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

/// Bits of an audit count word (the counts are summed mod 2^32).
pub const AUDIT_BITS: u8 = 32;

/// One party's view of one job.
pub struct PartySession {
    me: u32,
    job: String,
    /// The job's policy as this party derived it (its own file, with the
    /// job's ε and rounds, each checked against it).
    policy: Policy,
    plan: PrivacyPlan,
    roster: std::collections::BTreeMap<u32, IdentityPublicKey>,
    tasks_per_round: u32,
    audit_len: usize,
    state: SessionState,
}

impl PartySession {
    pub fn new(
        me: u32,
        job: &str,
        policy: Policy,
        plan: PrivacyPlan,
        tasks_per_round: u32,
        audit_len: usize,
        state: SessionState,
    ) -> PartySession {
        PartySession {
            me,
            job: job.to_string(),
            roster: policy.roster_keys(),
            policy,
            plan,
            tasks_per_round,
            audit_len,
            state,
        }
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
            "audit" => TaskKind::Audit,
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
        let rounds = self.policy.privacy.rounds;
        let (round, task) = (live.round, live.task);
        let (expected_len, expected_bits) = match kind {
            TaskKind::Training => {
                if !(1..=rounds).contains(&round) {
                    return Err(Refusal::RoundOutOfRange { round, rounds });
                }
                if task >= self.tasks_per_round {
                    return Err(Refusal::UnknownTask {
                        task,
                        tasks: self.tasks_per_round,
                    });
                }
                if let Some(last) = self.state.last_training {
                    if (round, task) <= last {
                        return Err(Refusal::NotAfterLast { round, task, last });
                    }
                }
                let scheme = EncodingScheme::from_plan(
                    &self.plan,
                    rotation_seed(&self.policy, &self.job, round, task),
                );
                (scheme.padded, self.plan.bits)
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
        if a.kind == TaskKind::Training {
            self.state.last_training = Some((a.round, a.task));
        }
    }

    /// The party is about to send its masked input for `a`: after an audit
    /// sum's, no other audit sum.
    pub fn masked_input_sent(&mut self, a: &Admission) {
        if a.kind == TaskKind::Audit {
            self.state.audit_sent = true;
        }
    }
}
