//! What a host does with the engine's effects: every one applied through
//! the store (the ledger, the rounds, the hash-chained log, the release)
//! before the engine is told to go on. The coordinator service and the
//! in-memory driver apply effects with the same code, so a job leaves the
//! same records however it ran.
//!
//! Creating a job (its budget reserved in the ledger) and resuming one a
//! previous process left active are here too.

use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use rand_core::{OsRng, RngCore};
use serde_json::json;

use super::engine::{Effect, EngineError, ErrorKind, JobEngine, JobSetup, JobState};
use super::task::TaskKind;
use crate::dp::plan::PrivacyPlan;
use crate::net::api::StartJob;
use crate::net::metrics::Metrics;
use crate::policy::{Policy, Unit};
use crate::release::{gate_and_report, ReleaseInputs};
use crate::store::service::{JobRunRecord, ReleaseRecord, SavedRound};
use crate::store::{LedgerError, PrivacyLedger};
use crate::strategy::{coordinator_half, fedavg::FedAvg, round_plan};

/// A finished secure sum as observed at the coordinator, for callers that
/// check sums end to end (tests, benchmarks, the demo's accuracy curve).
#[derive(Debug, Clone)]
pub struct ObservedSum {
    pub job: String,
    pub round: u32,
    pub task: u32,
    pub sum: Vec<u32>,
    pub contributors: Vec<u32>,
    pub bits: u8,
    /// After a training round's last task: the model the job would release.
    pub model_after: Option<Vec<f64>>,
}

impl From<LedgerError> for EngineError {
    fn from(e: LedgerError) -> Self {
        EngineError::new(ErrorKind::Internal, format!("store: {e}"))
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

/// Everything a host applies effects with.
pub struct Host<'a> {
    pub store: &'a mut PrivacyLedger,
    /// Reports and released models go to `out/<job>/`.
    pub out: &'a Path,
    /// The consortium's policy file, quoted in the report.
    pub policy_text: &'a str,
    pub metrics: Option<&'a Metrics>,
    pub observer: Option<&'a mpsc::Sender<ObservedSum>>,
}

impl Host<'_> {
    fn log(
        &mut self,
        kind: &str,
        job: &str,
        content: serde_json::Value,
    ) -> Result<(), LedgerError> {
        self.store.log_append(kind, job, &content.to_string())?;
        Ok(())
    }

    fn count(&self, pick: impl Fn(&Metrics) -> &std::sync::atomic::AtomicU64, n: u64) {
        if let Some(m) = self.metrics {
            Metrics::add(pick(m), n);
        }
    }

    /// Applies every pending effect of `engine`, in order, answering the
    /// charges and the release it waits for. A store that refuses an effect
    /// fails the job (and that is recorded as far as the store allows).
    pub fn drive(&mut self, engine: &mut JobEngine, now: Instant) {
        while let Some(effect) = engine.poll_effect() {
            if let Err(e) = self.apply(engine, effect, now) {
                let reason = format!("the job cannot go on: {e}");
                engine.fail(&reason);
            }
        }
    }

    fn apply(
        &mut self,
        engine: &mut JobEngine,
        effect: Effect,
        now: Instant,
    ) -> Result<(), EngineError> {
        let job = engine.id().to_string();
        match effect {
            Effect::TaskStarted { round, task } => {
                tracing::info!(job = %job, round, task, "secure sum started");
                self.store.begin_round(&job, round, task)?
            }
            Effect::PhaseClosed {
                round,
                task,
                next_phase,
                answered,
            } => {
                tracing::info!(job = %job, round, task, phase = next_phase, answered = answered.len(), "phase closed");
                self.store
                    .set_round_phase(&job, round, task, next_phase, &answered)?
            }
            Effect::Charge {
                round,
                task,
                kind,
                charges,
            } => {
                failpoint("before-charge");
                let c = self.store.charge_round(&job, round, task, kind, &charges)?;
                let paid_by: Vec<Option<u32>> = charges.iter().map(|(p, _)| *p).collect();
                let rho: Vec<f64> = charges.iter().map(|(_, c)| c.rho).collect();
                self.log(
                    "round-charged",
                    &job,
                    json!({ "round": round, "task": task, "kind": kind.name(), "charge_id": c.id,
                            "rho": rho, "paid_by": paid_by, "epsilon_after": c.epsilon_after }),
                )?;
                tracing::info!(job = %job, round, task, kind = kind.name(), rho = ?rho,
                    paid_by = ?paid_by, epsilon_after = c.epsilon_after, "charged before decoding");
                failpoint("after-charge");
                engine.charged(now)?;
            }
            Effect::TaskFinished {
                round,
                task,
                kind,
                contributors,
                dropped,
                sum,
                bits,
                round_end,
            } => {
                self.count(|m| &m.rounds_finished, 1);
                self.count(|m| &m.dropouts, dropped.len() as u64);
                tracing::info!(job = %job, round, task, kind = kind.name(),
                    contributors = contributors.len(), dropped = ?dropped, "secure sum decoded");
                if !dropped.is_empty() {
                    tracing::warn!(job = %job, round, task, parties = ?dropped,
                        "parties dropped out: silent past a phase deadline");
                }
                self.store.finish_round(
                    &job,
                    round,
                    task,
                    &contributors,
                    &dropped,
                    round_end.as_ref().map(|r| SavedRound {
                        strategy_state: &r.strategy_state,
                        canary_scores: &r.canary_scores,
                    }),
                )?;
                let spent = match engine.policy().privacy.unit {
                    Unit::None => None,
                    _ => Some(self.store.job_spent(&job)?),
                };
                let (entry, content) = match kind {
                    TaskKind::Audit => (
                        "audit-sum",
                        json!({ "round": round, "contributors": contributors, "dropped": dropped }),
                    ),
                    TaskKind::Training | TaskKind::Outputs | TaskKind::Statistics => (
                        "round-finished",
                        json!({ "round": round, "task": task, "contributors": contributors,
                                "dropped": dropped, "epsilon_spent": spent }),
                    ),
                };
                self.log(entry, &job, content)?;
                if let Some(tx) = self.observer {
                    let _ = tx.send(ObservedSum {
                        job,
                        round,
                        task,
                        sum,
                        contributors,
                        bits,
                        model_after: round_end.map(|r| r.model),
                    });
                }
            }
            Effect::TaskAborted {
                round,
                task,
                kind,
                reason,
                dropped,
                round_end,
            } => {
                self.count(|m| &m.rounds_aborted, 1);
                tracing::warn!(job = %job, round, task, kind = kind.name(), reason = %reason,
                    dropped = ?dropped, "secure sum aborted; its charge, if reached, stays");
                self.store.abort_round(
                    &job,
                    round,
                    task,
                    &reason,
                    &dropped,
                    round_end.as_ref().map(|r| SavedRound {
                        strategy_state: &r.strategy_state,
                        canary_scores: &r.canary_scores,
                    }),
                )?;
                self.log(
                    "round-aborted",
                    &job,
                    json!({ "round": round, "task": task, "kind": kind.name(), "reason": reason,
                            "charge_stays": true }),
                )?;
                if let (Some(tx), Some(end)) = (self.observer, round_end) {
                    let _ = tx.send(ObservedSum {
                        job,
                        round,
                        task,
                        sum: Vec::new(),
                        contributors: Vec::new(),
                        bits: 0,
                        model_after: Some(end.model),
                    });
                }
            }
            Effect::Release(req) => {
                let policy = engine.policy().clone();
                let plan = engine.plan().clone();
                let epsilon_spent = match policy.privacy.unit {
                    Unit::None => None,
                    _ => Some(self.store.job_spent(&job)?),
                };
                let out = self.out.join(&job);
                let release = gate_and_report(
                    ReleaseInputs {
                        policy: &policy,
                        policy_text: self.policy_text.to_string(),
                        job: &job,
                        model: &req.model,
                        findings: req.findings,
                        epsilon_spent,
                        audit_plan: plan.audit.as_ref(),
                        noise_std_per_party: plan.noise_std_per_party,
                        cohort: req.cohort,
                        out: &out,
                    },
                    self.store,
                )
                .map_err(|e| EngineError::new(ErrorKind::Internal, format!("release: {e}")))?;
                let released = release.model.is_some();
                self.store.record_release(
                    &job,
                    &ReleaseRecord {
                        decision: if released { "release" } else { "block" }.into(),
                        model_path: release.model.as_ref().map(|p| p.display().to_string()),
                        model_sha256: release.report.model_sha256.clone().filter(|_| released),
                        report_json: release.report_json.display().to_string(),
                        report_html: release.report_html.display().to_string(),
                    },
                )?;
                tracing::info!(job = %job, decision = if released { "release" } else { "block" },
                    report = %release.report_json.display(), "release gate decided");
                engine.released(released)?;
            }
            Effect::StateChanged { state, reason } => {
                tracing::info!(job = %job, state = state.name(), reason = reason.as_deref().unwrap_or(""),
                    "job state changed");
                self.store
                    .set_job_state(&job, state.name(), reason.as_deref())?;
                match state {
                    JobState::Failed => {
                        self.log("job-failed", &job, json!({ "reason": reason }))?
                    }
                    JobState::Aborted => {
                        self.log("job-aborted", &job, json!({ "reason": reason }))?
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

fn invalid(m: String) -> EngineError {
    EngineError::new(ErrorKind::InvalidRequest, m)
}

/// A job's policy and plan from the consortium's policy and its own terms.
fn job_terms(
    policy: &Policy,
    epsilon: f64,
    rounds: u32,
) -> Result<(Policy, PrivacyPlan), EngineError> {
    let infeasible = |e: crate::dp::plan::PlanError| {
        invalid(format!(
            "this job's privacy settings are infeasible: `{}`: {}",
            e.key, e.message
        ))
    };
    let p = super::job_policy(policy, Some(epsilon), Some(rounds)).map_err(infeasible)?;
    let plan = PrivacyPlan::for_policy(&p).map_err(infeasible)?;
    Ok((p, plan))
}

/// A job ids may name: 1–64 of `[A-Za-z0-9._-]`.
pub fn valid_job_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Checks an operator's request against the consortium's policy without
/// touching any state: the job id, ε and rounds it asks for, and the
/// no-DP switch. Returns the job's ε and rounds.
pub fn check_request(
    policy: &Policy,
    req: &StartJob,
    allow_no_dp: bool,
) -> Result<(f64, u32), EngineError> {
    if !valid_job_id(&req.job) {
        return Err(invalid(format!(
            "job id `{}` must be 1–64 characters of letters, digits, `.`, `_` and `-`",
            req.job.escape_debug()
        )));
    }
    let p = &policy.privacy;
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
    if p.unit == Unit::None && !allow_no_dp {
        return Err(EngineError::new(
            ErrorKind::Forbidden,
            "the policy has privacy.unit = \"none\"; this coordinator was not started with --allow-no-dp",
        ));
    }
    Ok((epsilon, rounds))
}

/// Creates a job under the consortium's `policy`: checks the operator's
/// request, reserves the job's planned charges against the budget (refused
/// when they would exceed it), records the job and logs its start. The
/// engine is returned unstarted.
pub fn create_job(
    store: &mut PrivacyLedger,
    policy: &Policy,
    req: &StartJob,
    allow_no_dp: bool,
) -> Result<JobEngine, EngineError> {
    let (epsilon, rounds) = check_request(policy, req, allow_no_dp)?;
    if store.job_run(&req.job)?.is_some() {
        return Err(EngineError::new(
            ErrorKind::Conflict,
            format!("job `{}` already exists", req.job),
        ));
    }
    let (job_policy, plan) = job_terms(policy, epsilon, rounds)?;
    // One charge per round is sound only if every round's tasks compose
    // in parallel; a strategy whose plan does not is refused outright.
    for round in 1..=rounds {
        round_plan(&job_policy, &req.job, round)
            .composition(job_policy.privacy.clip_norm)
            .map_err(|e| {
                EngineError::new(
                    ErrorKind::Internal,
                    format!("round {round} cannot be charged once: {e}"),
                )
            })?;
    }
    let seed = req.seed.unwrap_or(1);
    let strategy = coordinator_half(&job_policy, seed, None)
        .map_err(|e| EngineError::new(ErrorKind::Internal, e.to_string()))?;
    if job_policy.privacy.unit != Unit::None {
        store.set_budget(
            &job_policy.consortium.id,
            policy.privacy.epsilon,
            job_policy.privacy.delta,
            job_policy.privacy.accountant,
        )?;
        // One charge per training round, however many tasks it has (its
        // tasks' cohorts are disjoint or their norms split the policy's),
        // and the rest of what the plan pays for.
        let planned = plan.planned_charges();
        store
            .begin_job(
                &job_policy.consortium.id,
                &req.job,
                &job_policy.hash,
                &planned,
            )
            .map_err(|e| match e {
                LedgerError::BudgetExceeded { .. } => {
                    EngineError::new(ErrorKind::Conflict, e.to_string())
                }
                other => other.into(),
            })?;
    }
    let canary_seed = OsRng.next_u64();
    store.insert_job_run(&JobRunRecord {
        job: req.job.clone(),
        consortium: policy.consortium.id.clone(),
        policy_hash: policy.hash.clone(),
        state: JobState::Running.name().into(),
        rounds,
        epsilon,
        next_round: 1,
        seed,
        canary_seed,
        strategy_state: strategy.save(),
        canary_scores: Vec::new(),
        reason: None,
    })?;
    let tasks = round_plan(&job_policy, &req.job, 1).tasks.len();
    store.log_append(
        "job-started",
        &req.job,
        &json!({
            "epsilon": epsilon, "delta": job_policy.privacy.delta, "rounds": rounds,
            "seed": seed, "policy_hash": job_policy.hash, "strategy": job_policy.strategy.kind.name(),
            "tasks_in_round_1": tasks,
            "noise_std_per_party": plan.noise_std_per_party, "noise_multiplier": plan.noise_multiplier,
        })
        .to_string(),
    )?;
    Ok(JobEngine::new(
        JobSetup {
            job: req.job.clone(),
            policy: job_policy,
            plan,
            canary_seed,
        },
        strategy,
        1,
        JobState::Running,
    ))
}

/// Resumes a job a previous process left running or auditing: every task
/// it left running is aborted (a charge it reached stays), and the job
/// goes on at its next round from the strategy state saved at the end of
/// its last round. A job whose policy changed under it fails. Returns
/// `None` when the job cannot resume.
pub fn resume_job(
    store: &mut PrivacyLedger,
    policy: &Policy,
    id: &str,
) -> Result<Option<JobEngine>, EngineError> {
    let rec = store
        .job_run(id)?
        .ok_or_else(|| EngineError::new(ErrorKind::UnknownJob, format!("no job `{id}`")))?;
    let fail =
        |store: &mut PrivacyLedger, reason: String| -> Result<Option<JobEngine>, EngineError> {
            store.set_job_state(id, "failed", Some(&reason))?;
            store.log_append("job-failed", id, &json!({ "reason": reason }).to_string())?;
            Ok(None)
        };
    if rec.policy_hash != policy.hash {
        let reason = format!(
            "the coordinator restarted under another policy ({}…, the job ran under {}…); the job cannot resume",
            &policy.hash[..12],
            &rec.policy_hash[..12.min(rec.policy_hash.len())]
        );
        return fail(store, reason);
    }
    for r in store.running_rounds(id)? {
        let reason = format!("the coordinator restarted during phase {}", r.phase);
        store.abort_round(id, r.round, r.task, &reason, &[], None)?;
        store.log_append(
            "round-aborted",
            id,
            &json!({ "round": r.round, "task": r.task, "reason": reason, "charge_id": r.charge_id })
                .to_string(),
        )?;
    }
    let (job_policy, plan) = job_terms(policy, rec.epsilon, rec.rounds)?;
    let strategy = if rec.strategy_state.is_empty() && !rec.legacy_params.is_empty() {
        // Saved before strategies kept their own state: a FedAvg model and
        // its momentum.
        FedAvg::from_parts(&job_policy, &rec.legacy_params, &rec.legacy_velocity)
            .map(|f| Box::new(f) as Box<dyn crate::strategy::CoordinatorHalf>)
    } else {
        coordinator_half(&job_policy, rec.seed, Some(&rec.strategy_state))
    };
    let strategy = match strategy {
        Ok(s) => s,
        Err(e) => return fail(store, format!("the job cannot resume: {e}")),
    };
    let state = JobState::parse(&rec.state).unwrap_or(JobState::Failed);
    // An ensemble whose members' release was charged before the restart
    // resends it: it is not charged again.
    let charges = store.charges(Some(id))?;
    let charged = |kind| charges.iter().any(|c| c.kind == kind);
    let outputs_charged = job_policy.strategy.kind.trains_at_home()
        && charged(crate::store::ledger::ChargeKind::Training);
    let statistics_charged: Vec<u32> = charges
        .iter()
        .filter(|c| c.kind == crate::store::ledger::ChargeKind::Statistics)
        .map(|c| c.round)
        .collect();
    let audit_attempts = store
        .rounds(id)?
        .iter()
        .filter(|r| r.round > job_policy.sum_rounds() && r.state == "aborted")
        .count() as u32;
    store.log_append(
        "job-resumed",
        id,
        &json!({ "next_round": rec.next_round, "state": rec.state }).to_string(),
    )?;
    let mut engine = JobEngine::new(
        JobSetup {
            job: id.to_string(),
            policy: job_policy,
            plan,
            canary_seed: rec.canary_seed,
        },
        strategy,
        rec.next_round,
        state,
    );
    engine.set_audit_attempts(audit_attempts);
    engine.set_outputs_charged(outputs_charged);
    engine.set_statistics_charged(&statistics_charged);
    if let Err(e) = engine.restore_canary_scores(&rec.canary_scores) {
        return fail(store, format!("the job cannot resume: {e}"));
    }
    Ok(Some(engine))
}

/// A job's status as parties and the operator see it.
pub fn status(
    engine: &JobEngine,
    store: &PrivacyLedger,
    version: u64,
) -> Result<crate::net::api::JobStatus, EngineError> {
    let policy = engine.policy();
    let epsilon_spent = match policy.privacy.unit {
        Unit::None => None,
        _ => Some(store.spent(&policy.consortium.id)?.epsilon),
    };
    Ok(crate::net::api::JobStatus {
        job: engine.id().to_string(),
        consortium: policy.consortium.id.clone(),
        policy_hash: policy.hash.clone(),
        state: engine.state().name().into(),
        rounds: engine.rounds(),
        epsilon: policy.privacy.epsilon,
        delta: policy.privacy.delta,
        epsilon_spent,
        noise_std_per_party: engine.plan().noise_std_per_party,
        live: engine.live(),
        history: store.rounds(engine.id())?,
        release: store.release(engine.id())?,
        reason: engine.reason().map(str::to_string),
        version,
    })
}
