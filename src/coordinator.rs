//! The coordinator service: the consortium's jobs, each a [`JobEngine`],
//! over one store. The HTTP layer hands it authenticated requests and the
//! current time and reads back answers, queued messages and status; every
//! effect an engine emits is applied through the store (`job::host`)
//! before the engine goes on, so everything that must survive a crash is
//! committed before it is acted on.
//!
//! Restarted with the same store, the service aborts every task left
//! running (its charge stays) and resumes each job at its next round from
//! the strategy state saved at the end of its last round.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use crate::job::host::{self, Host};
use crate::job::JobEngine;
use crate::net::api::{JobStatus, PartySetup, StartJob};
use crate::net::metrics::Metrics;
use crate::policy::Policy;
use crate::store::PrivacyLedger;

pub use crate::job::engine::{EngineError as ServiceError, ErrorKind};
pub use crate::job::host::ObservedSum;

pub struct EngineConfig {
    pub policy: Policy,
    pub policy_text: String,
    /// Where reports and released models go (one folder per job).
    pub out: PathBuf,
    /// Serve jobs under `privacy.unit = "none"` (never released).
    pub allow_no_dp: bool,
    pub observer: Option<mpsc::Sender<ObservedSum>>,
}

pub struct Engine {
    policy: Policy,
    policy_text: String,
    store: PrivacyLedger,
    out: PathBuf,
    allow_no_dp: bool,
    jobs: BTreeMap<String, JobEngine>,
    /// Bumped whenever anything a watcher waits for changed.
    version: u64,
    /// The engines' generations the version last accounted for.
    seen: BTreeMap<String, u64>,
    metrics: Arc<Metrics>,
    observer: Option<mpsc::Sender<ObservedSum>>,
}

impl Engine {
    /// Opens the service over `store`, aborting every task a previous
    /// process left running and resuming its jobs.
    pub fn open(
        cfg: EngineConfig,
        mut store: PrivacyLedger,
        metrics: Arc<Metrics>,
        now: Instant,
    ) -> Result<Engine, ServiceError> {
        store.register_consortium(&cfg.policy, &cfg.policy_text)?;
        let mut e = Engine {
            policy: cfg.policy,
            policy_text: cfg.policy_text,
            store,
            out: cfg.out,
            allow_no_dp: cfg.allow_no_dp,
            jobs: BTreeMap::new(),
            version: 0,
            seen: BTreeMap::new(),
            metrics,
            observer: cfg.observer,
        };
        for id in e.store.job_runs_in(&["running", "auditing"])? {
            let aborted = e.store.running_rounds(&id)?.len() as u64;
            Metrics::add(&e.metrics.rounds_aborted, aborted);
            if let Some(engine) = host::resume_job(&mut e.store, &e.policy, &id)? {
                e.jobs.insert(id.clone(), engine);
                e.run(&id, now, |j, now| j.start(now))?;
            }
        }
        Ok(e)
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn store(&self) -> &PrivacyLedger {
        &self.store
    }

    /// Runs `step` on a job's engine, applies what it emitted, and bumps
    /// the version if anything visible changed.
    fn run<T>(
        &mut self,
        id: &str,
        now: Instant,
        step: impl FnOnce(&mut JobEngine, Instant) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let job = self.jobs.get_mut(id).ok_or_else(|| unknown_job(id))?;
        let out = step(job, now);
        let mut host = Host {
            store: &mut self.store,
            out: &self.out,
            policy_text: &self.policy_text,
            metrics: Some(&self.metrics),
            observer: self.observer.as_ref(),
        };
        host.drive(job, now);
        let generation = job.generation();
        if self.seen.insert(id.to_string(), generation) != Some(generation) {
            self.version += 1;
        }
        out
    }

    // ---- operator requests -------------------------------------------

    pub fn start_job(&mut self, req: StartJob, now: Instant) -> Result<JobStatus, ServiceError> {
        // A malformed request is told what is wrong with it before it is
        // told to wait its turn.
        host::check_request(&self.policy, &req, self.allow_no_dp)?;
        if let Some(j) = self.jobs.values().find(|j| j.state().active()) {
            return Err(ServiceError::new(
                ErrorKind::Conflict,
                format!(
                    "job `{}` is still {}; one job runs at a time (abort it or wait)",
                    j.id(),
                    j.state().name()
                ),
            ));
        }
        let engine = host::create_job(&mut self.store, &self.policy, &req, self.allow_no_dp)?;
        Metrics::add(&self.metrics.jobs_started, 1);
        self.jobs.insert(req.job.clone(), engine);
        self.run(&req.job, now, |j, now| j.start(now))?;
        self.status(&req.job)
    }

    pub fn abort_job(&mut self, id: &str) -> Result<JobStatus, ServiceError> {
        let now = Instant::now();
        self.run(id, now, |j, _| j.abort("aborted by the operator"))?;
        self.status(id)
    }

    // ---- party requests ----------------------------------------------

    pub fn setup(&self, id: &str, party: u32) -> Result<PartySetup, ServiceError> {
        Ok(self.job(id)?.setup(party))
    }

    /// The parameters `party` starts `round` from.
    pub fn model(&self, id: &str, party: u32, round: u32) -> Result<Vec<f64>, ServiceError> {
        self.job(id)?.downlink(party, round)
    }

    /// A protocol message from `party` for `round`. Refused messages change
    /// nothing.
    pub fn post_message(
        &mut self,
        id: &str,
        party: u32,
        round: u32,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), ServiceError> {
        self.run(id, now, |j, now| j.handle(now, party, round, bytes))
    }

    /// The next message queued for `party` after the ones it acknowledges
    /// (`after`), with its sequence number.
    pub fn next_message(
        &mut self,
        id: &str,
        party: u32,
        round: u32,
        after: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, ServiceError> {
        self.jobs
            .get_mut(id)
            .ok_or_else(|| unknown_job(id))?
            .next_message(party, round, after)
    }

    /// Closes every phase whose deadline has passed.
    pub fn tick(&mut self, now: Instant) {
        let due: Vec<String> = self
            .jobs
            .values()
            .filter(|j| j.poll_timeout().is_some_and(|t| t <= now))
            .map(|j| j.id().to_string())
            .collect();
        for id in due {
            if let Err(e) = self.run(&id, now, |j, now| j.handle_timeout(now)) {
                let reason = e.to_string();
                let _ = self.run(&id, now, |j, _| {
                    j.fail(&reason);
                    Ok(())
                });
            }
        }
    }

    /// The earliest phase deadline of any job.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.jobs.values().filter_map(|j| j.poll_timeout()).min()
    }

    // ---- status --------------------------------------------------------

    pub fn jobs(&self) -> Result<Vec<JobStatus>, ServiceError> {
        self.jobs.keys().map(|id| self.status(id)).collect()
    }

    pub fn status(&self, id: &str) -> Result<JobStatus, ServiceError> {
        host::status(self.job(id)?, &self.store, self.version)
    }

    /// The model a job would release now (for the demo's evaluation).
    pub fn model_params(&self, id: &str) -> Result<Vec<f64>, ServiceError> {
        Ok(self.job(id)?.release_model().to_flat())
    }

    fn job(&self, id: &str) -> Result<&JobEngine, ServiceError> {
        self.jobs.get(id).ok_or_else(|| unknown_job(id))
    }
}

fn unknown_job(id: &str) -> ServiceError {
    ServiceError::new(
        ErrorKind::UnknownJob,
        format!("no job `{}` on this coordinator", id.escape_debug()),
    )
}
