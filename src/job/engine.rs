//! The coordinator's side of one job as a sans-IO state machine, in the
//! manner of quinn-proto's `Connection`: protocol bytes and the time come
//! in ([`JobEngine::handle`], [`JobEngine::handle_timeout`]), and out come
//! messages for parties ([`JobEngine::next_message`]), the next deadline
//! ([`JobEngine::poll_timeout`]) and [`Effect`]s that the host applies
//! through its store ([`JobEngine::poll_effect`]). The engine reads no
//! clock, draws no randomness and touches no file: the same engine runs a
//! job in memory (`job::local`) and behind the HTTP service
//! (`coordinator`), and it runs any strategy through its
//! [`CoordinatorHalf`].
//!
//! A job runs its training rounds one after another — each round's tasks
//! (secure sums, from [`round_plan`]) one after another — then one secure
//! sum of the audit's noisy bin counts, then the release gate. Two effects
//! wait for the host before the engine moves on: [`Effect::Charge`] (no
//! unmask request leaves before [`JobEngine::charged`]) and
//! [`Effect::Release`] ([`JobEngine::released`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use shroud_audit::report::CohortEntry;
use shroud_crypto::{Coordinator, Error as ProtocolError, Event, IdentityPublicKey, PartyId};

use super::task::{decode_outputs, TaskKind, AUDIT_BITS, OUTPUT_BITS};
use super::{protocol_round, training_scheme};
use crate::audit::{self, AuditSetup, Canary, Findings};
use crate::dp::encode::EncodingScheme;
use crate::dp::plan::{PrivacyPlan, RoundCharge};
use crate::dp::statistics::{self, STATISTICS_BITS};
use crate::net::api::{LiveTask, PartySetup};
use crate::network::Network;
use crate::policy::{Policy, Unit};
use crate::store::ledger::ChargeKind;
use crate::strategy::{round_plan, CoordinatorHalf, RoundPlan, TaskResult, TaskSpec};

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    Auditing,
    Released,
    Blocked,
    Aborted,
    Failed,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Auditing => "auditing",
            JobState::Released => "released",
            JobState::Blocked => "blocked",
            JobState::Aborted => "aborted",
            JobState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
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

    /// Still collecting secure sums.
    pub fn active(self) -> bool {
        matches!(self, JobState::Running | JobState::Auditing)
    }
}

/// The strategy's state at the end of a round, for the host to keep with
/// the round's last task.
#[derive(Debug, Clone)]
pub struct RoundEnd {
    pub round: u32,
    pub strategy_state: Vec<u8>,
    /// The audit canaries' scores so far (see [`audit::score_canaries`]).
    pub canary_scores: Vec<f64>,
    /// The parameters of the model the job would release now.
    pub model: Vec<f64>,
}

/// What the host must do with its store, in order.
#[derive(Debug)]
pub enum Effect {
    /// A secure sum starts: record it as running, not yet charged.
    TaskStarted { round: u32, task: u32 },
    /// A phase closed; `answered` took part in it.
    PhaseClosed {
        round: u32,
        task: u32,
        next_phase: &'static str,
        answered: Vec<u32>,
    },
    /// The sum's masked inputs are in and nothing of it can be decoded yet:
    /// record these charges durably, in one transaction, then call
    /// [`JobEngine::charged`]. Each is paid by every record (`None`) or by
    /// one party's records (its home training).
    Charge {
        round: u32,
        task: u32,
        kind: ChargeKind,
        charges: Vec<(Option<u32>, RoundCharge)>,
    },
    /// The sum was decoded and absorbed.
    TaskFinished {
        round: u32,
        task: u32,
        kind: TaskKind,
        contributors: Vec<u32>,
        dropped: Vec<u32>,
        /// The unmasked words, for callers that check sums end to end.
        sum: Vec<u32>,
        bits: u8,
        round_end: Option<RoundEnd>,
    },
    /// The sum produced nothing; a charge it reached stays.
    TaskAborted {
        round: u32,
        task: u32,
        kind: TaskKind,
        reason: String,
        dropped: Vec<u32>,
        round_end: Option<RoundEnd>,
    },
    /// The audit is done: gate, report and (on a pass) write the model,
    /// then call [`JobEngine::released`].
    Release(Box<ReleaseRequest>),
    /// The job moved to another state.
    StateChanged {
        state: JobState,
        reason: Option<String>,
    },
}

/// Everything the release gate and the report need from the engine.
pub struct ReleaseRequest {
    pub model: Network,
    pub findings: Findings,
    pub cohort: Vec<CohortEntry>,
}

impl std::fmt::Debug for ReleaseRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseRequest")
            .field("attacks", &self.findings.attacks.len())
            .field("canary", &self.findings.canary.is_some())
            .finish_non_exhaustive()
    }
}

/// What went wrong with a party's request, by kind; hosts map each kind to
/// an answer (an HTTP status).
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
pub struct EngineError {
    pub kind: ErrorKind,
    pub message: String,
}

impl EngineError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> EngineError {
        EngineError {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EngineError {}

/// How many times the audit's secure sum is tried before the job fails.
pub const AUDIT_ATTEMPTS: u32 = 3;

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
    /// Encoded messages waiting for each party, with their sequence
    /// numbers, until the party acknowledges them: a response lost on the
    /// way is fetched again.
    outbox: BTreeMap<u32, VecDeque<(u64, Vec<u8>)>>,
    /// Sequence number of the last message queued.
    sent: u64,
    /// Who answered in each phase.
    answered: BTreeMap<&'static str, BTreeSet<u32>>,
    /// A charge was asked for and not yet recorded.
    awaiting_charge: bool,
}

impl Live {
    fn task(&self) -> &TaskSpec {
        &self.plan.tasks[self.index]
    }
}

/// A job's fixed parameters.
pub struct JobSetup {
    pub job: String,
    /// The job's policy: the consortium's, with the job's ε and rounds.
    pub policy: Policy,
    pub plan: PrivacyPlan,
    pub canary_seed: u64,
}

pub struct JobEngine {
    id: String,
    policy: Policy,
    plan: PrivacyPlan,
    roster: BTreeMap<u32, IdentityPublicKey>,
    strategy: Box<dyn CoordinatorHalf>,
    state: JobState,
    reason: Option<String>,
    next_round: u32,
    canaries: Vec<Canary>,
    canary_seed: u64,
    /// Each canary's coordinate summed over the decoded training sums.
    canary_scores: Vec<f64>,
    live: Option<Live>,
    /// Training rounds whose charge is recorded: a round is charged once,
    /// by its first task to reach the charge point.
    charged_rounds: BTreeSet<u32>,
    /// An outputs sum reached its charge point: the members' release is
    /// paid, and a later attempt sends the same words again.
    outputs_charged: bool,
    /// The statistics releases (see [`statistics::slot`]) whose sum reached
    /// its charge point: each is paid once, and not tried again.
    statistics_charged: BTreeSet<u32>,
    audit_attempts: u32,
    /// Waiting for the host's release decision.
    releasing: bool,
    effects: VecDeque<Effect>,
    /// Counts every change a watcher could see (tasks, phases, messages).
    generation: u64,
}

impl JobEngine {
    /// An engine for a job starting at `next_round` in `state` with the
    /// strategy as given (fresh, or restored by the host).
    pub fn new(
        setup: JobSetup,
        strategy: Box<dyn CoordinatorHalf>,
        next_round: u32,
        state: JobState,
    ) -> JobEngine {
        let ids: Vec<u32> = setup.policy.parties.iter().map(|p| p.id).collect();
        let canaries = audit::draw_canaries(
            setup.canary_seed,
            setup.policy.audit.canaries as usize,
            &ids,
        );
        let canary_scores = vec![0.0; canaries.len()];
        JobEngine {
            id: setup.job,
            roster: setup.policy.roster_keys(),
            policy: setup.policy,
            plan: setup.plan,
            strategy,
            state,
            reason: None,
            next_round: next_round.max(1),
            canaries,
            canary_seed: setup.canary_seed,
            canary_scores,
            live: None,
            charged_rounds: BTreeSet::new(),
            outputs_charged: false,
            statistics_charged: BTreeSet::new(),
            audit_attempts: 0,
            releasing: false,
            effects: VecDeque::new(),
            generation: 0,
        }
    }

    // ---- reading -------------------------------------------------------

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn state(&self) -> JobState {
        self.state
    }

    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn plan(&self) -> &PrivacyPlan {
        &self.plan
    }

    /// Rounds of secure sums before the audit (the ensemble's one sum of
    /// outputs; the policy's rounds are then its members' home steps).
    pub fn rounds(&self) -> u32 {
        self.policy.sum_rounds()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The model the job would release now.
    pub fn release_model(&self) -> Network {
        self.strategy.release_model()
    }

    /// The secure sum being collected, as parties see it.
    pub fn live(&self) -> Option<LiveTask> {
        self.live.as_ref().map(|l| LiveTask {
            round: l.round,
            task: l.task().id,
            kind: l.kind.name().into(),
            phase: l.protocol.phase().map_or("closed", |p| p.name()).into(),
            cohort: l.task().cohort.clone(),
            bits: l.bits,
            len: l.len,
        })
    }

    /// What `party` needs before its first round: the job's terms, to check
    /// against its own policy, and its own canaries.
    pub fn setup(&self, party: u32) -> PartySetup {
        PartySetup {
            job: self.id.clone(),
            policy_hash: self.policy.hash.clone(),
            epsilon: self.policy.privacy.epsilon,
            rounds: self.policy.privacy.rounds,
            noise_std_per_party: self.plan.noise_std_per_party,
            canaries: self
                .canaries
                .iter()
                .enumerate()
                .filter(|(_, c)| c.included && c.party == party)
                .map(|(i, _)| i as u32)
                .collect(),
        }
    }

    /// The parameters `party` starts `round` from: its strategy's downlink,
    /// or the model under audit for the audit's sum.
    pub fn downlink(&self, party: u32, round: u32) -> Result<Vec<f64>, EngineError> {
        let live = self.live_for(round)?;
        Ok(match live.kind {
            TaskKind::Training | TaskKind::Outputs | TaskKind::Statistics => {
                self.strategy.downlink(party)
            }
            TaskKind::Audit => self.strategy.release_model().to_flat(),
        })
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When [`JobEngine::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.live.as_ref().and_then(|l| l.protocol.poll_timeout())
    }

    // ---- driving -------------------------------------------------------

    /// Starts (or, after a restart, resumes) the job: its next secure sum.
    pub fn start(&mut self, now: Instant) -> Result<(), EngineError> {
        self.advance(now)
    }

    /// A protocol message from `party` for `round`. Refused messages change
    /// nothing: the protocol checks before it mutates.
    pub fn handle(
        &mut self,
        now: Instant,
        party: u32,
        round: u32,
        bytes: &[u8],
    ) -> Result<(), EngineError> {
        let live = self.live_for_mut(round)?;
        if !live.task().cohort.contains(&party) {
            return Err(EngineError::new(
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
        self.drain(now)
    }

    /// Closes the phase whose deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), EngineError> {
        if let Some(l) = self.live.as_mut() {
            if l.protocol.poll_timeout().is_some_and(|t| t <= now) {
                l.protocol.handle_timeout(now);
            }
        }
        self.drain(now)
    }

    /// The next message queued for `party` after the ones it acknowledges
    /// (`after`: the sequence number of the last message it received), with
    /// its sequence number. Acknowledged messages are dropped; the next one
    /// stays until acknowledged, so asking again gives it again.
    pub fn next_message(
        &mut self,
        party: u32,
        round: u32,
        after: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, EngineError> {
        let live = self.live_for_mut(round)?;
        let Some(queue) = live.outbox.get_mut(&party) else {
            return Ok(None);
        };
        while queue.front().is_some_and(|(seq, _)| *seq <= after) {
            queue.pop_front();
        }
        Ok(queue.front().cloned())
    }

    /// The host recorded the charge [`Effect::Charge`] asked for: the
    /// unmask requests may go.
    pub fn charged(&mut self, now: Instant) -> Result<(), EngineError> {
        let Some(live) = self.live.as_mut().filter(|l| l.awaiting_charge) else {
            return Err(EngineError::new(
                ErrorKind::Internal,
                "no charge was asked for",
            ));
        };
        live.awaiting_charge = false;
        let (kind, round) = (live.kind, live.round);
        match kind {
            TaskKind::Training => {
                self.charged_rounds.insert(round);
            }
            TaskKind::Outputs => self.outputs_charged = true,
            TaskKind::Statistics => {
                self.statistics_charged
                    .insert(statistics::slot(&self.policy, round));
            }
            TaskKind::Audit => {}
        }
        self.confirm_unmask(now)
    }

    /// Restores the canaries' scores saved with the last finished round.
    pub fn restore_canary_scores(&mut self, scores: &[f64]) -> Result<(), EngineError> {
        if !scores.is_empty() && scores.len() != self.canaries.len() {
            return Err(EngineError::new(
                ErrorKind::Internal,
                format!(
                    "the store holds {} canary scores, the policy has {} canaries",
                    scores.len(),
                    self.canaries.len()
                ),
            ));
        }
        if !scores.is_empty() {
            self.canary_scores = scores.to_vec();
        }
        Ok(())
    }

    /// After a restart: audit sums already tried (each aborted).
    pub fn set_audit_attempts(&mut self, attempts: u32) {
        self.audit_attempts = attempts;
    }

    /// After a restart: an outputs sum was already charged, so the
    /// members' release is paid (their later attempts resend it).
    pub fn set_outputs_charged(&mut self, charged: bool) {
        self.outputs_charged = charged;
    }

    /// After a restart: the statistics sums charged in these rounds are
    /// paid, and their releases not tried again.
    pub fn set_statistics_charged(&mut self, rounds: &[u32]) {
        self.statistics_charged = rounds
            .iter()
            .map(|&r| statistics::slot(&self.policy, r))
            .collect();
    }

    /// The host applied the release gate: `released` says whether the model
    /// left.
    pub fn released(&mut self, released: bool) -> Result<(), EngineError> {
        if !self.releasing {
            return Err(EngineError::new(
                ErrorKind::Internal,
                "no release was asked for",
            ));
        }
        self.releasing = false;
        self.set_state(
            if released {
                JobState::Released
            } else {
                JobState::Blocked
            },
            None,
        );
        Ok(())
    }

    /// Stops the job: the task being collected is abandoned (a charge it
    /// reached stays).
    pub fn abort(&mut self, reason: &str) -> Result<(), EngineError> {
        if !self.state.active() {
            return Err(EngineError::new(
                ErrorKind::Conflict,
                format!("job `{}` is already {}", self.id, self.state.name()),
            ));
        }
        if let Some(l) = self.live.take() {
            self.effects.push_back(Effect::TaskAborted {
                round: l.round,
                task: l.task().id,
                kind: l.kind,
                reason: reason.to_string(),
                dropped: Vec::new(),
                round_end: None,
            });
        }
        self.set_state(JobState::Aborted, Some(reason.to_string()));
        Ok(())
    }

    /// The job cannot go on (the host could not apply an effect).
    pub fn fail(&mut self, reason: &str) {
        self.live = None;
        self.releasing = false;
        self.set_state(JobState::Failed, Some(reason.to_string()));
    }

    // ---- internals -----------------------------------------------------

    fn set_state(&mut self, state: JobState, reason: Option<String>) {
        self.state = state;
        self.reason.clone_from(&reason);
        self.generation += 1;
        self.effects
            .push_back(Effect::StateChanged { state, reason });
    }

    fn live_for(&self, round: u32) -> Result<&Live, EngineError> {
        match self.live.as_ref() {
            Some(l) if l.round == round => Ok(l),
            other => Err(self.wrong_round(other.map(|l| l.round), round)),
        }
    }

    fn live_for_mut(&mut self, round: u32) -> Result<&mut Live, EngineError> {
        let current = self.live.as_ref().map(|l| l.round);
        if current != Some(round) {
            return Err(self.wrong_round(current, round));
        }
        Ok(self.live.as_mut().expect("checked above"))
    }

    fn wrong_round(&self, current: Option<u32>, round: u32) -> EngineError {
        EngineError::new(
            ErrorKind::WrongRound,
            match current {
                Some(c) => format!(
                    "job `{}` is collecting round {c}; this request is for round {round}",
                    self.id
                ),
                None => format!(
                    "job `{}` is {} and collects no round now; this request is for round {round}",
                    self.id,
                    self.state.name()
                ),
            },
        )
    }

    /// Starts whatever comes next: the next training round, the audit's
    /// sum, or the release.
    fn advance(&mut self, now: Instant) -> Result<(), EngineError> {
        if self.live.is_some() || !self.state.active() || self.releasing {
            return Ok(());
        }
        let rounds = self.rounds();
        if self.state == JobState::Running && (self.next_round > rounds || self.strategy.done()) {
            self.set_state(JobState::Auditing, None);
        }
        match self.state {
            JobState::Running => {
                let round = self.next_round;
                let plan = round_plan(&self.policy, &self.id, round);
                self.start_task(round, plan, 0, now)
            }
            JobState::Auditing => {
                let round = self.next_round.max(rounds + 1);
                let plan = RoundPlan {
                    tasks: vec![TaskSpec {
                        id: 0,
                        label: "audit bin counts".into(),
                        cohort: self.roster.keys().copied().collect(),
                        offset: 0,
                        dimension: audit::counts_width(&self.policy),
                        clip_norm: 0.0,
                        sum: crate::strategy::SumKind::Update,
                    }],
                };
                self.start_kind(round, plan, 0, TaskKind::Audit, now)
            }
            _ => Ok(()),
        }
    }

    /// Starts task `index` of a training round (an update, the outputs of
    /// models trained at home, statistics), or the first task after it
    /// that is still needed: a statistics sum the strategy has, or whose
    /// one release was charged, is passed over. A round's last task always
    /// runs.
    fn start_task(
        &mut self,
        round: u32,
        plan: RoundPlan,
        mut index: usize,
        now: Instant,
    ) -> Result<(), EngineError> {
        let slot = statistics::slot(&self.policy, round);
        let passed_over = |t: &TaskSpec| {
            !self.strategy.wants(t)
                || (TaskKind::of(t) == TaskKind::Statistics
                    && self.statistics_charged.contains(&slot))
        };
        while index + 1 < plan.tasks.len() && passed_over(&plan.tasks[index]) {
            index += 1;
        }
        let kind = TaskKind::of(&plan.tasks[index]);
        self.start_kind(round, plan, index, kind, now)
    }

    fn start_kind(
        &mut self,
        round: u32,
        plan: RoundPlan,
        index: usize,
        kind: TaskKind,
        now: Instant,
    ) -> Result<(), EngineError> {
        let task = plan.tasks[index].clone();
        let (scheme, bits, len) = match kind {
            TaskKind::Training => {
                let scheme = training_scheme(&self.policy, &self.plan, &self.id, round, &task);
                let len = scheme.padded;
                (Some(scheme), self.plan.bits, len)
            }
            TaskKind::Outputs => (None, OUTPUT_BITS, task.dimension),
            TaskKind::Statistics => (None, STATISTICS_BITS, task.dimension),
            TaskKind::Audit => (None, AUDIT_BITS, task.dimension),
        };
        let cohort: Vec<(PartyId, IdentityPublicKey)> = task
            .cohort
            .iter()
            .filter_map(|p| self.roster.get(p).map(|k| (PartyId(*p), *k)))
            .collect();
        let round_cfg = protocol_round(&self.policy, &self.id, round, task.id, &cohort, bits, len)
            .map_err(|e| EngineError::new(ErrorKind::Internal, format!("round setup: {e}")))?;
        self.next_round = round + 1;
        self.effects.push_back(Effect::TaskStarted {
            round,
            task: task.id,
        });
        self.live = Some(Live {
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
            awaiting_charge: false,
        });
        self.generation += 1;
        Ok(())
    }

    /// Moves queued messages to the outboxes and acts on the protocol's
    /// events.
    fn drain(&mut self, now: Instant) -> Result<(), EngineError> {
        loop {
            let Some(live) = self.live.as_mut() else {
                return Ok(());
            };
            while let Some((to, msg)) = live.protocol.poll_outgoing() {
                let bytes = msg.encode(live.protocol.round().session());
                live.sent += 1;
                let seq = live.sent;
                live.outbox.entry(to.0).or_default().push_back((seq, bytes));
                self.generation += 1;
            }
            let Some(event) = live.protocol.poll_event() else {
                return Ok(());
            };
            let (round, task) = (live.round, live.task().id);
            match event {
                Event::PhaseClosed { phase, .. } => {
                    let answered = live
                        .answered
                        .get(phase.name())
                        .map(|s| s.iter().copied().collect())
                        .unwrap_or_default();
                    let next_phase = live.protocol.phase().map_or("closed", |p| p.name());
                    self.effects.push_back(Effect::PhaseClosed {
                        round,
                        task,
                        next_phase,
                        answered,
                    });
                    self.generation += 1;
                }
                Event::ReadyToUnmask { .. } => self.charge_point(now)?,
                Event::Finished(agg) => {
                    let live = self.live.take().expect("a live task");
                    self.finish_task(live, agg, now)?;
                }
                Event::Aborted(e) => {
                    let live = self.live.take().expect("a live task");
                    self.abort_task(live, &e, now)?;
                }
            }
        }
    }

    /// The sum's masked inputs are in: ask the host to charge it (once per
    /// training round, once per audit sum), or let the unmask requests go
    /// when there is nothing to charge.
    fn charge_point(&mut self, now: Instant) -> Result<(), EngineError> {
        let live = self.live.as_mut().expect("a live task");
        // What every party's home training costs its own records; charged
        // for the whole roster, whoever survived the sum: a member that
        // dropped out may still have trained.
        let home = |charge: Option<RoundCharge>| -> Vec<(Option<u32>, RoundCharge)> {
            charge
                .map(|c| self.roster.keys().map(|p| (Some(*p), c.clone())).collect())
                .unwrap_or_default()
        };
        let charge = match (self.policy.privacy.unit, live.kind) {
            (Unit::None, _) => None,
            (_, TaskKind::Training) if self.charged_rounds.contains(&live.round) => None,
            // One release of the members, however many attempts carry it.
            (_, TaskKind::Outputs) if self.outputs_charged => None,
            (_, TaskKind::Training) => {
                Some((ChargeKind::Training, vec![(None, self.plan.charge.clone())]))
            }
            (_, TaskKind::Outputs) => Some((
                ChargeKind::Training,
                match &self.plan.vote {
                    // The noisy vote is a release of every member's votes.
                    Some(v) => vec![(None, v.charge.clone())],
                    None => home(self.plan.home_charge()),
                },
            )),
            (_, TaskKind::Statistics)
                if self
                    .statistics_charged
                    .contains(&statistics::slot(&self.policy, live.round)) =>
            {
                None
            }
            (_, TaskKind::Statistics) => self
                .plan
                .statistics
                .as_ref()
                .map(|s| (ChargeKind::Statistics, vec![(None, s.charge.clone())])),
            (_, TaskKind::Audit) => {
                // The transfer's fine-tuning happens as the audit's counts
                // are taken: charged with them.
                let mut charges: Vec<_> = self
                    .plan
                    .audit
                    .as_ref()
                    .map(|a| (None, a.charge.clone()))
                    .into_iter()
                    .collect();
                if !self.plan.at_home {
                    charges.extend(home(self.plan.home_charge()));
                }
                Some((ChargeKind::Audit, charges))
            }
        };
        match charge.filter(|(_, c)| !c.is_empty()) {
            Some((kind, charges)) => {
                live.awaiting_charge = true;
                self.effects.push_back(Effect::Charge {
                    round: live.round,
                    task: live.task().id,
                    kind,
                    charges,
                });
                self.generation += 1;
                Ok(())
            }
            None => self.confirm_unmask(now),
        }
    }

    fn confirm_unmask(&mut self, now: Instant) -> Result<(), EngineError> {
        let live = self.live.as_mut().expect("a live task");
        live.protocol
            .confirm_unmask(now)
            .map_err(|e| EngineError::new(ErrorKind::Internal, format!("unmask: {e}")))?;
        self.drain(now)
    }

    /// Records per contributor, from the roster (public metadata).
    fn records(&self, contributors: &[u32]) -> Vec<usize> {
        contributors
            .iter()
            .map(|c| {
                self.policy
                    .parties
                    .iter()
                    .find(|p| p.id == *c)
                    .and_then(|p| p.records)
                    .unwrap_or(0) as usize
            })
            .collect()
    }

    /// Ends the round after its last task: the strategy's state to keep.
    fn round_end(&mut self, live: &Live) -> Option<RoundEnd> {
        if live.kind == TaskKind::Audit || live.index + 1 < live.plan.tasks.len() {
            return None;
        }
        self.strategy.end_round(live.round);
        Some(RoundEnd {
            round: live.round,
            strategy_state: self.strategy.save(),
            canary_scores: self.canary_scores.clone(),
            model: self.strategy.release_model().to_flat(),
        })
    }

    fn finish_task(
        &mut self,
        live: Live,
        agg: shroud_crypto::Aggregate,
        now: Instant,
    ) -> Result<(), EngineError> {
        let contributors: Vec<u32> = agg.contributors.iter().map(|p| p.0).collect();
        let dropped: Vec<u32> = live
            .task()
            .cohort
            .iter()
            .copied()
            .filter(|p| !contributors.contains(p))
            .collect();
        self.generation += 1;
        if live.kind == TaskKind::Audit {
            self.effects.push_back(Effect::TaskFinished {
                round: live.round,
                task: live.task().id,
                kind: live.kind,
                contributors: contributors.clone(),
                dropped,
                sum: agg.sum.clone(),
                bits: agg.bits,
                round_end: None,
            });
            self.finish_audit(&agg.sum, contributors.len());
            return Ok(());
        }
        let records = self.records(&contributors);
        let sum = match live.kind {
            TaskKind::Outputs if self.plan.vote.is_some() => audit::decode_counts(&agg.sum)
                .into_iter()
                .map(|c| c as f64)
                .collect(),
            TaskKind::Outputs => decode_outputs(&agg.sum),
            TaskKind::Statistics => statistics::decode(&agg.sum, &statistics::blocks(&self.policy)),
            _ => {
                let mut sum = live
                    .scheme
                    .as_ref()
                    .expect("a training task has a scheme")
                    .decode(&agg.sum);
                // The canaries' coordinates follow the model's: scored,
                // then cut off.
                let dimension = live.task().dimension;
                audit::score_canaries(
                    &mut self.canary_scores,
                    &sum[dimension..],
                    live.task().clip_norm,
                );
                sum.truncate(dimension);
                sum
            }
        };
        self.strategy.absorb(
            live.round,
            TaskResult {
                task: live.task(),
                sum,
                contributors: &contributors,
                records: &records,
            },
        );
        let round_end = self.round_end(&live);
        self.effects.push_back(Effect::TaskFinished {
            round: live.round,
            task: live.task().id,
            kind: live.kind,
            contributors,
            dropped,
            sum: agg.sum,
            bits: agg.bits,
            round_end,
        });
        self.next_task(live, now)
    }

    fn abort_task(
        &mut self,
        live: Live,
        e: &ProtocolError,
        now: Instant,
    ) -> Result<(), EngineError> {
        let reason = e.to_string();
        let answered: BTreeSet<u32> = live.answered.values().flatten().copied().collect();
        let dropped: Vec<u32> = live
            .task()
            .cohort
            .iter()
            .copied()
            .filter(|p| !answered.contains(p))
            .collect();
        self.generation += 1;
        if live.kind == TaskKind::Audit {
            self.effects.push_back(Effect::TaskAborted {
                round: live.round,
                task: live.task().id,
                kind: live.kind,
                reason: reason.clone(),
                dropped,
                round_end: None,
            });
            // A fresh sum (new round number, fresh keys) with whoever is
            // there, a few times; then the job fails unreleased.
            self.audit_attempts += 1;
            if self.audit_attempts >= AUDIT_ATTEMPTS {
                self.fail(&format!(
                    "the audit's secure sum aborted {} times (last: {reason}); the model is not released",
                    self.audit_attempts
                ));
                return Ok(());
            }
            return self.advance(now);
        }
        self.strategy.task_aborted(live.round, live.task());
        let round_end = self.round_end(&live);
        self.effects.push_back(Effect::TaskAborted {
            round: live.round,
            task: live.task().id,
            kind: live.kind,
            reason,
            dropped,
            round_end,
        });
        if let Some(why) = self.strategy.failure() {
            self.fail(&why);
            return Ok(());
        }
        self.next_task(live, now)
    }

    fn next_task(&mut self, live: Live, now: Instant) -> Result<(), EngineError> {
        if live.index + 1 < live.plan.tasks.len() {
            return self.start_task(live.round, live.plan, live.index + 1, now);
        }
        self.advance(now)
    }

    /// The audit's findings (pure), then the host's gate and report.
    fn finish_audit(&mut self, summed: &[u32], contributors: usize) {
        let setup = AuditSetup {
            canaries: self.canaries.clone(),
            canary_scores: self.canary_scores.clone(),
            canary_seed: self.canary_seed,
            sample_seed: None,
        };
        let model = self.strategy.release_model();
        let blocks = audit::count_blocks(&self.policy).len();
        let counts = audit::SummedCounts::new(
            summed,
            &self
                .plan
                .audit
                .as_ref()
                .map(|a| a.noise_stds())
                .unwrap_or_default(),
            contributors,
            blocks,
        );
        let findings = audit::findings(&setup, &counts, &self.policy, self.policy.privacy.delta);
        let cohort = self
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
        self.releasing = true;
        self.generation += 1;
        self.effects
            .push_back(Effect::Release(Box::new(ReleaseRequest {
                model,
                findings,
                cohort,
            })));
    }
}

/// How a refused protocol message is answered.
fn protocol_refusal(e: ProtocolError) -> EngineError {
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
    EngineError::new(kind, format!("message refused: {e}"))
}
