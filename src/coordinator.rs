//! The coordinator service's job engine. Like the protocol state machines
//! it drives, it does no I/O of its own beyond the store: the HTTP layer
//! hands it authenticated requests and the current time, and reads back
//! answers, queued messages and status. Everything it decides that must
//! survive a crash is committed to the store before it is acted on.
//!
//! A job runs its training rounds one after another (each strategy task a
//! secure sum under the policy's threshold, graph and deadlines), then one
//! more secure sum for the audit's bin counts, then the release gate.
//! Restarted with the same store, the engine aborts every round left
//! running (its charge stays) and resumes each job at its next round from
//! the model saved with the last finished round.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use rand_core::{OsRng, RngCore};
use serde_json::json;
use shroud_audit::report::CohortEntry;
use shroud_crypto::{Coordinator, Error as ProtocolError, Event, IdentityPublicKey, PartyId};

use crate::audit::{self, AuditSetup, Canary};
use crate::dp::encode::EncodingScheme;
use crate::dp::plan::PrivacyPlan;
use crate::job::{job_policy, protocol_round, rotation_seed};
use crate::net::api::{CanaryRecord, JobStatus, LiveTask, PartySetup, StartJob};
use crate::net::metrics::Metrics;
use crate::policy::{Policy, Unit};
use crate::store::ledger::ChargeKind;
use crate::store::service::{JobRunRecord, ReleaseRecord};
use crate::store::{LedgerError, PrivacyLedger};
use crate::strategy::fedavg::FedAvg;
use crate::strategy::{RoundPlan, Strategy, TaskResult, TaskSpec};

/// What went wrong with a request, by kind; the HTTP layer maps each kind
/// to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    UnknownJob,
    WrongRound,
    WrongPhase,
    InvalidMessage,
    InvalidRequest,
    Conflict,
    Forbidden,
    Internal,
}

#[derive(Debug, Clone)]
pub struct ServiceError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ServiceError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> ServiceError {
        ServiceError {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<LedgerError> for ServiceError {
    fn from(e: LedgerError) -> Self {
        ServiceError::new(ErrorKind::Internal, format!("store: {e}"))
    }
}

/// A finished secure sum as observed at the coordinator, for callers that
/// check sums end to end (tests, benchmarks).
#[derive(Debug, Clone)]
pub struct ObservedSum {
    pub job: String,
    pub round: u32,
    pub task: u32,
    pub sum: Vec<u32>,
    pub contributors: Vec<u32>,
    pub bits: u8,
    /// The global model's parameters after a training sum was absorbed.
    pub model_after: Option<Vec<f64>>,
}

pub struct EngineConfig {
    pub policy: Policy,
    pub policy_text: String,
    /// Where reports and released models go (one folder per job).
    pub out: PathBuf,
    /// Serve jobs under `privacy.unit = "none"` (never released).
    pub allow_no_dp: bool,
    pub observer: Option<mpsc::Sender<ObservedSum>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JobState {
    Running,
    Auditing,
    Released,
    Blocked,
    Aborted,
    Failed,
}

impl JobState {
    fn name(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Auditing => "auditing",
            JobState::Released => "released",
            JobState::Blocked => "blocked",
            JobState::Aborted => "aborted",
            JobState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<JobState> {
        [
            JobState::Running,
            JobState::Auditing,
            JobState::Released,
            JobState::Blocked,
            JobState::Aborted,
            JobState::Failed,
        ]
        .into_iter()
        .find(|j| j.name() == s)
    }

    fn active(self) -> bool {
        matches!(self, JobState::Running | JobState::Auditing)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TaskKind {
    Training,
    Audit,
}

/// The secure sum being collected.
struct Live {
    round: u32,
    plan: RoundPlan,
    /// Index into `plan.tasks`.
    index: usize,
    kind: TaskKind,
    protocol: Coordinator,
    scheme: Option<EncodingScheme>,
    bits: u8,
    len: usize,
    /// Encoded messages waiting for each party.
    /// Until the party acknowledges them by sequence number: a response lost
    /// on the way is fetched again.
    outbox: BTreeMap<u32, VecDeque<(u64, Vec<u8>)>>,
    /// Sequence number of the last message queued.
    sent: u64,
    /// Who answered in each phase.
    answered: BTreeMap<&'static str, BTreeSet<u32>>,
}

impl Live {
    fn task(&self) -> &TaskSpec {
        &self.plan.tasks[self.index]
    }
}

struct Job {
    id: String,
    policy: Policy,
    plan: PrivacyPlan,
    state: JobState,
    strategy: FedAvg,
    rounds: u32,
    next_round: u32,
    canaries: Vec<Canary>,
    canary_seed: u64,
    live: Option<Live>,
    reason: Option<String>,
}

pub struct Engine {
    policy: Policy,
    policy_text: String,
    roster: BTreeMap<u32, IdentityPublicKey>,
    store: PrivacyLedger,
    out: PathBuf,
    allow_no_dp: bool,
    jobs: BTreeMap<String, Job>,
    version: u64,
    metrics: Arc<Metrics>,
    observer: Option<mpsc::Sender<ObservedSum>>,
}

fn valid_job_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Engine {
    /// Opens the engine over `store`, aborting every round a previous
    /// process left running and resuming its jobs.
    pub fn open(
        cfg: EngineConfig,
        mut store: PrivacyLedger,
        metrics: Arc<Metrics>,
        now: Instant,
    ) -> Result<Engine, ServiceError> {
        store.register_consortium(&cfg.policy, &cfg.policy_text)?;
        let mut e = Engine {
            roster: cfg.policy.roster_keys(),
            policy: cfg.policy,
            policy_text: cfg.policy_text,
            store,
            out: cfg.out,
            allow_no_dp: cfg.allow_no_dp,
            jobs: BTreeMap::new(),
            version: 0,
            metrics,
            observer: cfg.observer,
        };
        for id in e.store.job_runs_in(&["running", "auditing"])? {
            e.resume(&id, now)?;
        }
        Ok(e)
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn bump(&mut self) {
        self.version += 1;
    }

    fn log(
        &mut self,
        kind: &str,
        job: &str,
        content: serde_json::Value,
    ) -> Result<(), ServiceError> {
        self.store.log_append(kind, job, &content.to_string())?;
        Ok(())
    }

    fn build_job(
        &self,
        rec: &JobRunRecord,
        epsilon: f64,
    ) -> Result<(Policy, PrivacyPlan, FedAvg, Vec<Canary>), ServiceError> {
        let infeasible = |e: crate::dp::plan::PlanError| {
            ServiceError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "this job's privacy settings are infeasible: `{}`: {}",
                    e.key, e.message
                ),
            )
        };
        let policy =
            job_policy(&self.policy, Some(epsilon), Some(rec.rounds)).map_err(infeasible)?;
        let plan = PrivacyPlan::for_policy(&policy).map_err(|e| {
            ServiceError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "this job's privacy settings are infeasible: `{}`: {}",
                    e.key, e.message
                ),
            )
        })?;
        let strategy = FedAvg::for_policy(&policy, rec.seed);
        let ids: Vec<u32> = policy.parties.iter().map(|p| p.id).collect();
        let canaries = audit::draw_canaries(
            rec.canary_seed,
            policy.audit.canaries as usize,
            policy.strategy.inputs,
            policy.strategy.classes,
            &ids,
        );
        Ok((policy, plan, strategy, canaries))
    }

    fn resume(&mut self, id: &str, now: Instant) -> Result<(), ServiceError> {
        let rec = self.store.job_run(id)?.expect("listed job exists");
        if rec.policy_hash != self.policy.hash {
            let reason = format!(
                "the coordinator restarted under another policy ({}…, the job ran under {}…); the job cannot resume",
                &self.policy.hash[..12],
                &rec.policy_hash[..12.min(rec.policy_hash.len())]
            );
            self.store.set_job_state(id, "failed", Some(&reason))?;
            self.log("job-failed", id, json!({ "reason": reason }))?;
            return Ok(());
        }
        for r in self.store.running_rounds(id)? {
            let reason = format!("the coordinator restarted during phase {}", r.phase);
            self.store.abort_round(id, r.round, r.task, &reason, &[])?;
            self.log(
                "round-aborted",
                id,
                json!({ "round": r.round, "task": r.task, "reason": reason, "charge_id": r.charge_id }),
            )?;
            Metrics::add(&self.metrics.rounds_aborted, 1);
        }
        let (policy, plan, mut strategy, canaries) = self.build_job(&rec, rec.epsilon)?;
        strategy
            .restore_server_state(&rec.params, &rec.velocity)
            .map_err(|e| ServiceError::new(ErrorKind::Internal, format!("saved model: {e}")))?;
        let state = JobState::parse(&rec.state).unwrap_or(JobState::Failed);
        self.jobs.insert(
            id.to_string(),
            Job {
                id: id.to_string(),
                policy,
                plan,
                state,
                strategy,
                rounds: rec.rounds,
                next_round: rec.next_round,
                canaries,
                canary_seed: rec.canary_seed,
                live: None,
                reason: None,
            },
        );
        self.log(
            "job-resumed",
            id,
            json!({ "next_round": rec.next_round, "state": rec.state }),
        )?;
        self.advance(id, now)
    }

    // ---- operator requests -------------------------------------------

    pub fn start_job(&mut self, req: StartJob, now: Instant) -> Result<JobStatus, ServiceError> {
        let invalid = |m: String| ServiceError::new(ErrorKind::InvalidRequest, m);
        if !valid_job_id(&req.job) {
            return Err(invalid(format!(
                "job id `{}` must be 1–64 characters of letters, digits, `.`, `_` and `-`",
                req.job.escape_debug()
            )));
        }
        let p = &self.policy.privacy;
        let epsilon = match req.epsilon {
            None => p.epsilon,
            Some(e) if e.is_finite() && e > 0.0 && e <= p.epsilon => e,
            Some(e) => {
                return Err(invalid(format!(
                    "epsilon must be a finite number in (0, {}] (the policy's budget), got {e}",
                    p.epsilon
                )))
            }
        };
        let rounds = match req.rounds {
            None => p.rounds,
            Some(r) if (1..=p.rounds).contains(&r) => r,
            Some(r) => {
                return Err(invalid(format!(
                    "rounds must be in 1..={} (the policy's), got {r}",
                    p.rounds
                )))
            }
        };
        if p.unit == Unit::None && !self.allow_no_dp {
            return Err(ServiceError::new(
                ErrorKind::Forbidden,
                "the policy has privacy.unit = \"none\"; this coordinator was not started with --allow-no-dp",
            ));
        }
        if self.store.job_run(&req.job)?.is_some() {
            return Err(ServiceError::new(
                ErrorKind::Conflict,
                format!("job `{}` already exists", req.job),
            ));
        }
        if let Some(j) = self.jobs.values().find(|j| j.state.active()) {
            return Err(ServiceError::new(
                ErrorKind::Conflict,
                format!(
                    "job `{}` is still {}; one job runs at a time (abort it or wait)",
                    j.id,
                    j.state.name()
                ),
            ));
        }
        let rec = JobRunRecord {
            job: req.job.clone(),
            consortium: self.policy.consortium.id.clone(),
            policy_hash: self.policy.hash.clone(),
            state: "running".into(),
            rounds,
            epsilon,
            next_round: 1,
            seed: req.seed.unwrap_or(1),
            canary_seed: OsRng.next_u64(),
            params: Vec::new(),
            velocity: Vec::new(),
            reason: None,
        };
        let (policy, plan, mut strategy, canaries) = self.build_job(&rec, epsilon)?;
        let ids: Vec<u32> = policy.parties.iter().map(|p| p.id).collect();
        let tasks = strategy.plan(1, &ids).tasks.len();
        if policy.privacy.unit != Unit::None {
            self.store.set_budget(
                &policy.consortium.id,
                self.policy.privacy.epsilon,
                policy.privacy.delta,
                policy.privacy.accountant,
            )?;
            let mut planned = vec![plan.charge.clone(); rounds as usize * tasks];
            planned.extend(plan.audit.as_ref().map(|a| a.charge.clone()));
            self.store
                .begin_job(&policy.consortium.id, &req.job, &policy.hash, &planned)
                .map_err(|e| match e {
                    LedgerError::BudgetExceeded { .. } => {
                        ServiceError::new(ErrorKind::Conflict, e.to_string())
                    }
                    other => other.into(),
                })?;
        }
        let (params, velocity) = strategy.server_state();
        self.store.insert_job_run(&JobRunRecord {
            params,
            velocity,
            ..rec.clone()
        })?;
        self.log(
            "job-started",
            &req.job,
            json!({
                "epsilon": epsilon, "delta": policy.privacy.delta, "rounds": rounds,
                "seed": rec.seed, "policy_hash": policy.hash,
                "noise_std_per_party": plan.noise_std_per_party, "noise_multiplier": plan.noise_multiplier,
            }),
        )?;
        Metrics::add(&self.metrics.jobs_started, 1);
        self.jobs.insert(
            req.job.clone(),
            Job {
                id: req.job.clone(),
                policy,
                plan,
                state: JobState::Running,
                strategy,
                rounds,
                next_round: 1,
                canaries,
                canary_seed: rec.canary_seed,
                live: None,
                reason: None,
            },
        );
        self.advance(&req.job, now)?;
        self.status(&req.job)
    }

    pub fn abort_job(&mut self, id: &str) -> Result<JobStatus, ServiceError> {
        let job = self.job_mut(id)?;
        if !job.state.active() {
            return Err(ServiceError::new(
                ErrorKind::Conflict,
                format!("job `{id}` is already {}", job.state.name()),
            ));
        }
        let live = job.live.take();
        job.state = JobState::Aborted;
        job.reason = Some("aborted by the operator".into());
        if let Some(l) = live {
            self.store.abort_round(
                id,
                l.round,
                l.task().id,
                "the job was aborted by the operator",
                &[],
            )?;
            Metrics::add(&self.metrics.rounds_aborted, 1);
        }
        self.store
            .set_job_state(id, "aborted", Some("aborted by the operator"))?;
        self.log(
            "job-aborted",
            id,
            json!({ "reason": "aborted by the operator" }),
        )?;
        self.bump();
        self.status(id)
    }

    // ---- party requests ----------------------------------------------

    pub fn setup(&self, id: &str, party: u32) -> Result<PartySetup, ServiceError> {
        let job = self.job(id)?;
        Ok(PartySetup {
            job: id.to_string(),
            policy_hash: job.policy.hash.clone(),
            epsilon: job.policy.privacy.epsilon,
            rounds: job.rounds,
            noise_std_per_party: job.plan.noise_std_per_party,
            canaries: job
                .canaries
                .iter()
                .filter(|c| c.included && c.party == party)
                .map(|c| CanaryRecord {
                    features: c.features.clone(),
                    label: c.label,
                })
                .collect(),
        })
    }

    fn live_for(&mut self, id: &str, round: u32) -> Result<&mut Live, ServiceError> {
        let job = self.job_mut(id)?;
        let state = job.state;
        match job.live.as_mut() {
            Some(l) if l.round == round => Ok(l),
            Some(l) => Err(ServiceError::new(
                ErrorKind::WrongRound,
                format!(
                    "job `{id}` is collecting round {}; this request is for round {round}",
                    l.round
                ),
            )),
            None => Err(ServiceError::new(
                ErrorKind::WrongRound,
                format!(
                    "job `{id}` is {} and collects no round now; this request is for round {round}",
                    state.name()
                ),
            )),
        }
    }

    /// The global model parameters a round starts from.
    pub fn model(&mut self, id: &str, round: u32) -> Result<Vec<f64>, ServiceError> {
        self.live_for(id, round)?;
        Ok(self.job(id)?.strategy.server_state().0)
    }

    /// A protocol message from `party` for `round`. Refused messages change
    /// nothing: the protocol state machine checks before it mutates, and
    /// nothing here is written before it accepts.
    pub fn post_message(
        &mut self,
        id: &str,
        party: u32,
        round: u32,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), ServiceError> {
        let live = self.live_for(id, round)?;
        if !live.task().cohort.contains(&party) {
            return Err(ServiceError::new(
                ErrorKind::Forbidden,
                format!("party {party} is not in the cohort of round {round}"),
            ));
        }
        let phase = live.protocol.phase();
        live.protocol
            .handle_bytes(now, PartyId(party), bytes)
            .map_err(protocol_refusal)?;
        if let Some(ph) = phase {
            live.answered.entry(ph.name()).or_default().insert(party);
        }
        self.drain(id, now)
    }

    /// The next message queued for `party` after the ones it acknowledges
    /// (`after`: the sequence number of the last message it received), with
    /// its sequence number. Acknowledged messages are dropped; the next one
    /// stays until acknowledged, so asking again gives it again.
    pub fn next_message(
        &mut self,
        id: &str,
        party: u32,
        round: u32,
        after: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, ServiceError> {
        let live = self.live_for(id, round)?;
        let Some(queue) = live.outbox.get_mut(&party) else {
            return Ok(None);
        };
        while queue.front().is_some_and(|(seq, _)| *seq <= after) {
            queue.pop_front();
        }
        Ok(queue.front().cloned())
    }

    /// Closes every phase whose deadline has passed.
    pub fn tick(&mut self, now: Instant) {
        let due: Vec<String> = self
            .jobs
            .values()
            .filter(|j| {
                j.live
                    .as_ref()
                    .and_then(|l| l.protocol.poll_timeout())
                    .is_some_and(|t| t <= now)
            })
            .map(|j| j.id.clone())
            .collect();
        for id in due {
            if let Some(l) = self.jobs.get_mut(&id).and_then(|j| j.live.as_mut()) {
                l.protocol.handle_timeout(now);
            }
            if let Err(e) = self.drain(&id, now) {
                self.fail(&id, &e.to_string());
            }
        }
    }

    /// The earliest phase deadline of any job.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.jobs
            .values()
            .filter_map(|j| j.live.as_ref()?.protocol.poll_timeout())
            .min()
    }

    // ---- status --------------------------------------------------------

    pub fn jobs(&self) -> Result<Vec<JobStatus>, ServiceError> {
        let mut ids: Vec<&String> = self.jobs.keys().collect();
        ids.sort();
        ids.into_iter().map(|id| self.status(id)).collect()
    }

    pub fn status(&self, id: &str) -> Result<JobStatus, ServiceError> {
        let job = self.job(id)?;
        let no_dp = job.policy.privacy.unit == Unit::None;
        let epsilon_spent = if no_dp {
            None
        } else {
            Some(self.store.spent(&job.policy.consortium.id)?.epsilon)
        };
        let live = job.live.as_ref().map(|l| LiveTask {
            round: l.round,
            task: l.task().id,
            kind: match l.kind {
                TaskKind::Training => "training",
                TaskKind::Audit => "audit",
            }
            .into(),
            phase: l.protocol.phase().map_or("closed", |p| p.name()).into(),
            cohort: l.task().cohort.clone(),
            bits: l.bits,
            len: l.len,
        });
        let history = self.store.rounds(id)?;
        let release = self.store.release(id)?;
        Ok(JobStatus {
            job: id.to_string(),
            consortium: job.policy.consortium.id.clone(),
            policy_hash: job.policy.hash.clone(),
            state: job.state.name().into(),
            rounds: job.rounds,
            epsilon: job.policy.privacy.epsilon,
            delta: job.policy.privacy.delta,
            epsilon_spent,
            noise_std_per_party: job.plan.noise_std_per_party,
            live,
            history,
            release,
            reason: job.reason.clone(),
            version: self.version,
        })
    }

    /// The global model of a job (for the demo's evaluation).
    pub fn model_params(&self, id: &str) -> Result<Vec<f64>, ServiceError> {
        Ok(self.job(id)?.strategy.server_state().0)
    }

    pub fn store(&self) -> &PrivacyLedger {
        &self.store
    }

    // ---- internals -----------------------------------------------------

    fn job(&self, id: &str) -> Result<&Job, ServiceError> {
        self.jobs.get(id).ok_or_else(|| unknown_job(id))
    }

    fn job_mut(&mut self, id: &str) -> Result<&mut Job, ServiceError> {
        self.jobs.get_mut(id).ok_or_else(|| unknown_job(id))
    }

    fn fail(&mut self, id: &str, reason: &str) {
        if let Some(j) = self.jobs.get_mut(id) {
            j.state = JobState::Failed;
            j.live = None;
            j.reason = Some(reason.to_string());
        }
        let _ = self.store.set_job_state(id, "failed", Some(reason));
        let _ = self.log("job-failed", id, json!({ "reason": reason }));
        self.bump();
    }

    /// Starts whatever comes next for a job: its next training round, the
    /// audit's sum, or nothing.
    fn advance(&mut self, id: &str, now: Instant) -> Result<(), ServiceError> {
        let job = self.job_mut(id)?;
        if job.live.is_some() || !job.state.active() {
            return Ok(());
        }
        if job.state == JobState::Running && job.next_round > job.rounds {
            job.state = JobState::Auditing;
            self.store.set_job_state(id, "auditing", None)?;
        }
        let job = self.job_mut(id)?;
        let round = job.next_round.max(if job.state == JobState::Auditing {
            job.rounds + 1
        } else {
            1
        });
        let ids: Vec<u32> = job.policy.parties.iter().map(|p| p.id).collect();
        match job.state {
            JobState::Running => {
                let plan = job.strategy.plan(round, &ids);
                self.start_task(id, round, plan, 0, TaskKind::Training, now)
            }
            JobState::Auditing => {
                let attacks = audit::population_attacks(&job.policy);
                if attacks.is_empty() {
                    return self.finish_audit(id, &[], 0);
                }
                let plan = RoundPlan {
                    tasks: vec![TaskSpec {
                        id: 0,
                        label: "audit bin counts".into(),
                        cohort: ids,
                        dimension: audit::counts_width(&attacks),
                    }],
                };
                self.start_task(id, round, plan, 0, TaskKind::Audit, now)
            }
            _ => Ok(()),
        }
    }

    fn start_task(
        &mut self,
        id: &str,
        round: u32,
        plan: RoundPlan,
        index: usize,
        kind: TaskKind,
        now: Instant,
    ) -> Result<(), ServiceError> {
        let job = self.jobs.get(id).expect("job exists");
        let task = plan.tasks[index].clone();
        let (scheme, bits, len) = match kind {
            TaskKind::Training => {
                let scheme = EncodingScheme::from_plan(
                    &job.plan,
                    rotation_seed(&job.policy, id, round, task.id),
                );
                let len = scheme.padded;
                (Some(scheme), job.plan.bits, len)
            }
            TaskKind::Audit => (None, 32, task.dimension),
        };
        let cohort: Vec<(PartyId, IdentityPublicKey)> = task
            .cohort
            .iter()
            .filter_map(|p| self.roster.get(p).map(|k| (PartyId(*p), *k)))
            .collect();
        let round_cfg = protocol_round(&job.policy, id, round, task.id, &cohort, bits, len)
            .map_err(|e| ServiceError::new(ErrorKind::Internal, format!("round setup: {e}")))?;
        // Recorded as running; charged at its charge point, once the
        // masked inputs are in and before any unmask request goes out.
        self.store.begin_round(id, round, task.id)?;
        let job = self.jobs.get_mut(id).expect("job exists");
        job.next_round = round + 1;
        job.live = Some(Live {
            round,
            plan,
            index,
            kind,
            protocol: Coordinator::new(round_cfg, now),
            scheme,
            bits,
            len,
            outbox: BTreeMap::new(),
            sent: 0,
            answered: BTreeMap::new(),
        });
        self.bump();
        Ok(())
    }

    /// Moves queued messages to the outboxes and acts on the protocol's
    /// events.
    fn drain(&mut self, id: &str, now: Instant) -> Result<(), ServiceError> {
        loop {
            let Some(live) = self.jobs.get_mut(id).and_then(|j| j.live.as_mut()) else {
                return Ok(());
            };
            let mut moved = false;
            while let Some((to, msg)) = live.protocol.poll_outgoing() {
                let bytes = msg.encode(live.protocol.round().session());
                live.sent += 1;
                let seq = live.sent;
                live.outbox.entry(to.0).or_default().push_back((seq, bytes));
                moved = true;
            }
            let event = live.protocol.poll_event();
            let (round, task) = (live.round, live.task().id);
            let next = live.protocol.phase().map_or("closed", |p| p.name());
            let closed: Option<Vec<u32>> = match &event {
                Some(Event::PhaseClosed { phase, .. }) => Some(
                    live.answered
                        .get(phase.name())
                        .map(|s| s.iter().copied().collect())
                        .unwrap_or_default(),
                ),
                _ => None,
            };
            if moved {
                self.bump();
            }
            match event {
                None => return Ok(()),
                Some(Event::PhaseClosed { .. }) => {
                    let survivors = closed.unwrap_or_default();
                    self.store
                        .set_round_phase(id, round, task, next, &survivors)?;
                    self.bump();
                }
                Some(Event::ReadyToUnmask { .. }) => {
                    self.charge_point(id, round, task, now)?;
                    self.bump();
                }
                Some(Event::Finished(agg)) => {
                    let live = self.take_live(id);
                    return self.finish_task(id, live, agg, now);
                }
                Some(Event::Aborted(e)) => {
                    let live = self.take_live(id);
                    return self.abort_task(id, live, &e, now);
                }
            }
        }
    }

    /// The round's masked inputs are in: charge it durably, then let the
    /// unmask requests go. Nothing of the round can be decoded before this
    /// charge commits; a crash after it over-counts, never under-counts.
    fn charge_point(
        &mut self,
        id: &str,
        round: u32,
        task: u32,
        now: Instant,
    ) -> Result<(), ServiceError> {
        let job = self.jobs.get(id).expect("job exists");
        let live = job.live.as_ref().expect("a live task");
        let charge = match (job.policy.privacy.unit, live.kind) {
            (Unit::None, _) => None,
            (_, TaskKind::Training) => Some((ChargeKind::Training, job.plan.charge.clone())),
            (_, TaskKind::Audit) => job
                .plan
                .audit
                .as_ref()
                .map(|a| (ChargeKind::Audit, a.charge.clone())),
        };
        failpoint("before-charge");
        if let Some((kind, charge)) = charge {
            let c = self.store.charge_round(id, round, task, kind, &charge)?;
            self.log(
                "round-charged",
                id,
                json!({ "round": round, "task": task, "kind": kind.name(), "charge_id": c.id,
                        "rho": c.rho, "epsilon_after": c.epsilon_after }),
            )?;
        }
        failpoint("after-charge");
        let live = self
            .jobs
            .get_mut(id)
            .and_then(|j| j.live.as_mut())
            .expect("a live task");
        live.protocol
            .confirm_unmask(now)
            .map_err(|e| ServiceError::new(ErrorKind::Internal, format!("unmask: {e}")))
    }

    /// The task that just ended, off its job.
    fn take_live(&mut self, id: &str) -> Live {
        self.jobs
            .get_mut(id)
            .and_then(|j| j.live.take())
            .expect("a live task ended")
    }

    fn finish_task(
        &mut self,
        id: &str,
        live: Live,
        agg: shroud_crypto::Aggregate,
        now: Instant,
    ) -> Result<(), ServiceError> {
        let contributors: Vec<u32> = agg.contributors.iter().map(|p| p.0).collect();
        let dropped: Vec<u32> = live
            .task()
            .cohort
            .iter()
            .copied()
            .filter(|p| !contributors.contains(p))
            .collect();
        Metrics::add(&self.metrics.rounds_finished, 1);
        Metrics::add(&self.metrics.dropouts, dropped.len() as u64);
        let observed = ObservedSum {
            job: id.to_string(),
            round: live.round,
            task: live.task().id,
            sum: if self.observer.is_some() {
                agg.sum.clone()
            } else {
                Vec::new()
            },
            contributors: contributors.clone(),
            bits: agg.bits,
            model_after: None,
        };
        if live.kind == TaskKind::Audit {
            if let Some(tx) = &self.observer {
                let _ = tx.send(observed);
            }
            self.store
                .finish_round(id, live.round, 0, &contributors, &dropped, None)?;
            self.log(
                "audit-sum",
                id,
                json!({ "round": live.round, "contributors": contributors, "dropped": dropped }),
            )?;
            return self.finish_audit(id, &agg.sum, contributors.len());
        }
        let job = self.jobs.get_mut(id).expect("job exists");
        let records: Vec<usize> = contributors
            .iter()
            .map(|c| {
                job.policy
                    .parties
                    .iter()
                    .find(|p| p.id == *c)
                    .and_then(|p| p.records)
                    .unwrap_or(0) as usize
            })
            .collect();
        let sum = live
            .scheme
            .as_ref()
            .expect("training scheme")
            .decode(&agg.sum);
        job.strategy.absorb(TaskResult {
            task: live.task(),
            sum,
            contributors: &contributors,
            records: &records,
        });
        let (params, velocity) = job.strategy.server_state();
        if let Some(tx) = &self.observer {
            let _ = tx.send(ObservedSum {
                model_after: Some(params.clone()),
                ..observed
            });
        }
        self.store.finish_round(
            id,
            live.round,
            live.task().id,
            &contributors,
            &dropped,
            Some((&params, &velocity)),
        )?;
        let spent = if self.jobs[id].policy.privacy.unit == Unit::None {
            None
        } else {
            Some(self.store.spent(&self.policy.consortium.id)?.epsilon)
        };
        self.log(
            "round-finished",
            id,
            json!({
                "round": live.round, "task": live.task().id, "contributors": contributors,
                "dropped": dropped, "epsilon_spent": spent,
            }),
        )?;
        self.next_task(id, live, now)
    }

    fn abort_task(
        &mut self,
        id: &str,
        live: Live,
        e: &ProtocolError,
        now: Instant,
    ) -> Result<(), ServiceError> {
        let reason = e.to_string();
        let answered: BTreeSet<u32> = live.answered.values().flatten().copied().collect();
        let dropped: Vec<u32> = live
            .task()
            .cohort
            .iter()
            .copied()
            .filter(|p| !answered.contains(p))
            .collect();
        self.store
            .abort_round(id, live.round, live.task().id, &reason, &dropped)?;
        self.log(
            "round-aborted",
            id,
            json!({ "round": live.round, "task": live.task().id, "reason": reason, "charge_stays": live.kind == TaskKind::Training }),
        )?;
        Metrics::add(&self.metrics.rounds_aborted, 1);
        if live.kind == TaskKind::Audit {
            // A fresh sum (new round number, fresh keys) with whoever is
            // there, a few times; then the job fails unreleased.
            let rounds = self.jobs[id].rounds;
            let attempts = self
                .store
                .rounds(id)?
                .iter()
                .filter(|r| r.round > rounds)
                .count();
            if attempts >= AUDIT_ATTEMPTS {
                let reason = format!(
                    "the audit's secure sum aborted {attempts} times (last: {reason}); the model is not released"
                );
                self.fail(id, &reason);
                return Ok(());
            }
            self.bump();
            return self.advance(id, now);
        }
        self.next_task(id, live, now)
    }

    fn next_task(&mut self, id: &str, live: Live, now: Instant) -> Result<(), ServiceError> {
        self.bump();
        if live.index + 1 < live.plan.tasks.len() {
            return self.start_task(
                id,
                live.round,
                live.plan,
                live.index + 1,
                TaskKind::Training,
                now,
            );
        }
        self.advance(id, now)
    }

    /// The audit's findings, the gate, the report, and the release.
    fn finish_audit(
        &mut self,
        id: &str,
        summed: &[u32],
        contributors: usize,
    ) -> Result<(), ServiceError> {
        let job = self.jobs.get(id).expect("job exists");
        let setup = AuditSetup {
            canaries: job.canaries.clone(),
            samples: Vec::new(),
            canary_seed: job.canary_seed,
            sample_seed: None,
        };
        let model = job.strategy.model().clone();
        let attacks = audit::population_attacks(&job.policy).len();
        let counts =
            audit::SummedCounts::new(summed, job.plan.audit.as_ref(), contributors, attacks);
        let findings = audit::findings(
            &model,
            &setup,
            &counts,
            &job.policy,
            job.policy.privacy.delta,
        );
        let no_dp = job.policy.privacy.unit == Unit::None;
        let epsilon_spent = if no_dp {
            None
        } else {
            Some(self.store.job_spent(id)?)
        };
        let cohort = job
            .policy
            .parties
            .iter()
            .map(|p| CohortEntry {
                party: p.id,
                name: p.name.clone(),
                records: p.records.unwrap_or(0) as usize,
                audit_members: None,
                audit_non_members: None,
            })
            .collect();
        let out = self.out.join(id);
        let policy = job.policy.clone();
        let noise = job.plan.noise_std_per_party;
        let audit_plan = job.plan.audit.clone();
        let release = crate::release::gate_and_report(
            crate::release::ReleaseInputs {
                policy: &policy,
                policy_text: self.policy_text.clone(),
                job: id,
                model: &model,
                findings,
                epsilon_spent,
                audit_plan: audit_plan.as_ref(),
                noise_std_per_party: noise,
                cohort,
                out: &out,
            },
            &mut self.store,
        )
        .map_err(|e| ServiceError::new(ErrorKind::Internal, format!("release: {e}")))?;
        let released = release.model.is_some();
        let rec = ReleaseRecord {
            decision: if released { "release" } else { "block" }.into(),
            model_path: release.model.as_ref().map(|p| p.display().to_string()),
            model_sha256: if released {
                release.report.model_sha256.clone()
            } else {
                None
            },
            report_json: release.report_json.display().to_string(),
            report_html: release.report_html.display().to_string(),
        };
        self.store.record_release(id, &rec)?;
        let state = if released {
            JobState::Released
        } else {
            JobState::Blocked
        };
        self.store.set_job_state(id, state.name(), None)?;
        let job = self.jobs.get_mut(id).expect("job exists");
        job.state = state;
        self.bump();
        Ok(())
    }
}

/// Test hook: `SHROUD_FAILPOINT=<name>` makes the process abort — no
/// destructor, no flush, like a kill -9 — when it reaches the named point,
/// so tests can crash the coordinator at exactly the instants that matter
/// to the ledger.
fn failpoint(name: &str) {
    if std::env::var("SHROUD_FAILPOINT").is_ok_and(|v| v == name) {
        std::process::abort();
    }
}

/// How many times the audit's secure sum is tried before the job fails.
const AUDIT_ATTEMPTS: usize = 3;

fn unknown_job(id: &str) -> ServiceError {
    ServiceError::new(
        ErrorKind::UnknownJob,
        format!("no job `{}` on this coordinator", id.escape_debug()),
    )
}

/// How a refused protocol message is answered.
fn protocol_refusal(e: ProtocolError) -> ServiceError {
    use shroud_crypto::Misbehaviour as M;
    let kind = match &e {
        ProtocolError::InvalidMessage(_) => ErrorKind::InvalidMessage,
        ProtocolError::UnexpectedMessage { .. } | ProtocolError::Closed => ErrorKind::WrongPhase,
        ProtocolError::PeerMisbehaved { kind, .. } => match kind {
            M::WrongSession => ErrorKind::WrongRound,
            M::Replay => ErrorKind::WrongPhase,
            M::UnexpectedParty(_) => ErrorKind::Forbidden,
            _ => ErrorKind::InvalidMessage,
        },
        _ => ErrorKind::InvalidMessage,
    };
    ServiceError::new(kind, format!("message refused: {e}"))
}
