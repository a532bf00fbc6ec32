//! The party client: runs next to a party's data, joins the coordinator's
//! jobs, and for each round computes its update, adds its noise share and
//! takes part in secure aggregation over HTTPS. Its records and its
//! individual update never leave it in the clear.
//!
//! The client is patient: a coordinator that is unreachable or restarting
//! is retried with exponential backoff, and a round that moved on while the
//! party was away is left for the next one.

use std::sync::mpsc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use shroud_crypto::message::MessageKind;
use shroud_crypto::IdentityKey;
use zeroize::Zeroizing;

use crate::data::Dataset;
use crate::job::local::silent_at;
use crate::job::session::{Admission, InputRandomness, Member, PartySession, SessionState};
use crate::net::api::{JobStatus, PartySetup};
use crate::net::auth::Signer;
use crate::net::client::{ok, ok_bytes_at_most, Body, Client, ClientError};
use crate::policy::Policy;

pub use crate::job::session::{ObservedInput, PartyObservation};

pub struct PartyConfig {
    pub policy: Policy,
    pub id: u32,
    pub identity_seed: Zeroizing<[u8; 32]>,
    pub data: Dataset,
    /// Base URL, `https://host:port` (or `http://` with `insecure_http`).
    pub coordinator: String,
    /// Trust for the coordinator's certificate; `None` only for plain HTTP.
    pub tls: Option<rustls::ClientConfig>,
    /// Join only this job.
    pub job: Option<String>,
    /// Stop after one job.
    pub once: bool,
    /// Give up when the coordinator stays unreachable this long.
    pub patience: Duration,
    /// Demo only: the chance of going silent in a round (at a random phase).
    pub dropout: f64,
    /// Seed of those dropout decisions (which rounds, which phases), so a
    /// demo's dropouts repeat from run to run (`job::local::party_dropout_seed`).
    pub dropout_seed: u64,
    /// Where encoding randomness comes from (tests may fix it).
    pub randomness: InputRandomness,
    /// Where the party records which rounds and audit sums it took part in,
    /// so that a restarted party refuses a replay as it would have before.
    /// `None` keeps the record in memory (in-process demos and tests).
    pub journal: Option<std::path::PathBuf>,
    pub tap: Option<mpsc::Sender<PartyObservation>>,
}

/// What the party did.
#[derive(Debug, Default, Clone)]
pub struct PartyReport {
    /// Jobs taken part in, with the state each ended in.
    pub jobs: Vec<(String, String)>,
    pub rounds_contributed: usize,
    /// Rounds the party left (simulated dropout, or errors it reported).
    pub rounds_missed: usize,
    /// Tasks the party refused because its own policy does not allow them.
    pub rounds_refused: usize,
    /// Requests retried after a network failure or a coordinator restart.
    pub retries: usize,
}

/// Why a party stopped.
pub type PartyError = ClientError;

/// What a party did in each job, kept in a file (JSON, replaced atomically)
/// and written before the party acts on it.
pub struct SessionJournal {
    path: Option<std::path::PathBuf>,
    jobs: std::collections::BTreeMap<String, JournalEntry>,
}

/// One job's record: the rules' state and the strategy's home state.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct JournalEntry {
    #[serde(flatten)]
    state: SessionState,
    /// Hex; absent in journals written before strategies had home state.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    home: String,
}

impl SessionJournal {
    pub fn open(path: Option<std::path::PathBuf>) -> Result<SessionJournal, String> {
        let jobs = match &path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("{}: cannot read the party journal: {e}", p.display()))?;
                serde_json::from_str(&text)
                    .map_err(|e| format!("{}: the party journal is not valid: {e}", p.display()))?
            }
            _ => Default::default(),
        };
        Ok(SessionJournal { path, jobs })
    }

    pub fn get(&self, job: &str) -> SessionState {
        self.jobs.get(job).map(|e| e.state).unwrap_or_default()
    }

    /// The strategy's home state kept for `job`, if any.
    pub fn home(&self, job: &str) -> Result<Option<Vec<u8>>, String> {
        match self.jobs.get(job) {
            Some(e) if !e.home.is_empty() => {
                crate::policy::unhex(&e.home).map(Some).ok_or_else(|| {
                    format!("the party journal's home state for job `{job}` is not hex")
                })
            }
            _ => Ok(None),
        }
    }

    /// Records `state` for `job`, keeping its home state.
    pub fn put(&mut self, job: &str, state: SessionState) -> Result<(), PartyError> {
        let home = self
            .jobs
            .get(job)
            .map(|e| e.home.clone())
            .unwrap_or_default();
        self.write(job, JournalEntry { state, home })
    }

    /// Records `state` and the strategy's `home` state for `job`.
    pub fn put_with_home(
        &mut self,
        job: &str,
        state: SessionState,
        home: &[u8],
    ) -> Result<(), PartyError> {
        let home = crate::policy::hex(home);
        self.write(job, JournalEntry { state, home })
    }

    fn write(&mut self, job: &str, entry: JournalEntry) -> Result<(), PartyError> {
        self.jobs.insert(job.to_string(), entry);
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = serde_json::to_string_pretty(&self.jobs).expect("journal serialises");
        crate::keyfile::replace_durably(path, text.as_bytes()).map_err(|e| {
            PartyError::Refusing(format!(
                "{}: cannot record this party's progress ({e}); refusing to go on without it",
                path.display()
            ))
        })
    }
}

/// Runs the party until its job ends (`once`) or forever.
pub async fn run(cfg: PartyConfig) -> Result<PartyReport, PartyError> {
    if !cfg.policy.parties.iter().any(|p| p.id == cfg.id) {
        return Err(PartyError::Refusing(format!(
            "party {} is not in the policy's roster",
            cfg.id
        )));
    }
    let key = IdentityKey::from_seed(&cfg.identity_seed);
    if cfg.policy.roster_keys().get(&cfg.id) != Some(&key.public()) {
        return Err(PartyError::Refusing(format!(
            "this key file's public key is not the one the policy lists for party {}",
            cfg.id
        )));
    }
    let mut client = Client::new(
        &cfg.coordinator,
        cfg.tls.clone(),
        key,
        Signer::Party(cfg.id),
        cfg.patience,
    )?
    .for_consortium(&cfg.policy.consortium.id);
    let mut journal = SessionJournal::open(cfg.journal.clone()).map_err(PartyError::Refusing)?;
    let mut report = PartyReport::default();
    let mut done: Vec<String> = Vec::new();
    loop {
        let jobs: Vec<JobStatus> = client.json("/v1/jobs", "").await?;
        // The one job asked for has already ended: nothing to join.
        if let Some(ended) = jobs.iter().find(|j| {
            cfg.job.as_ref() == Some(&j.job) && j.state != "running" && j.state != "auditing"
        }) {
            report.jobs.push((ended.job.clone(), ended.state.clone()));
            report.retries = client.retries();
            return Ok(report);
        }
        let next = jobs.into_iter().find(|j| {
            !done.contains(&j.job)
                && cfg.job.as_ref().map_or(true, |want| *want == j.job)
                && (j.state == "running" || j.state == "auditing")
        });
        let Some(job) = next else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let state = run_job(&cfg, &mut client, &mut journal, &job.job, &mut report).await?;
        report.jobs.push((job.job.clone(), state));
        done.push(job.job);
        if cfg.once {
            report.retries = client.retries();
            return Ok(report);
        }
    }
}

async fn run_job(
    cfg: &PartyConfig,
    client: &mut Client,
    journal: &mut SessionJournal,
    job: &str,
    report: &mut PartyReport,
) -> Result<String, PartyError> {
    let setup: PartySetup = client.json(&format!("/v1/jobs/{job}/setup"), job).await?;
    if setup.job != job {
        return Err(PartyError::Refusing(format!(
            "asked to set up job `{}`, the coordinator answered for `{}`",
            job.escape_debug(),
            setup.job.escape_debug()
        )));
    }
    let member = Member {
        id: cfg.id,
        identity_seed: cfg.identity_seed.clone(),
        data: cfg.data.clone(),
    };
    // Computing the plan and the audit sample is CPU work: off the async
    // workers.
    let mut session = tokio::task::block_in_place(|| {
        let home = journal.home(job)?;
        PartySession::join(
            member,
            &cfg.policy,
            &setup,
            journal.get(job),
            home.as_deref(),
            cfg.randomness,
        )
    })
    .map_err(PartyError::Refusing)?;
    tracing::info!(party = cfg.id, job = %job, epsilon = setup.epsilon, rounds = setup.rounds,
        "joined job");
    let mut version = u64::MAX;
    let mut last: Option<(u32, u32)> = None;
    loop {
        let path = if version == u64::MAX {
            format!("/v1/jobs/{job}")
        } else {
            format!("/v1/jobs/{job}?after={version}&wait_ms=10000")
        };
        let st: JobStatus = client.json(&path, job).await?;
        version = st.version;
        if st.state != "running" && st.state != "auditing" {
            tracing::info!(party = cfg.id, job = %job, state = %st.state, "job ended");
            return Ok(st.state);
        }
        let Some(live) = st.live else { continue };
        if last == Some((live.round, live.task)) || !live.cohort.contains(&cfg.id) {
            continue;
        }
        last = Some((live.round, live.task));
        // The party's own policy decides; a refused task changes nothing.
        let admission = match session.admit(&live) {
            Ok(a) => a,
            Err(refusal) => {
                tracing::warn!(party = cfg.id, job = %job, round = live.round, task = live.task,
                    reason = %refusal, "refusing a task its own policy does not allow");
                report.rounds_refused += 1;
                continue;
            }
        };
        match take_part(cfg, client, &mut session, journal, job, &admission).await {
            Ok(true) => {
                tracing::info!(party = cfg.id, job = %job, round = live.round, task = live.task,
                    "contributed");
                report.rounds_contributed += 1
            }
            Ok(false) => report.rounds_missed += 1,
            Err(PartyError::Refused { status, body })
                if status == StatusCode::CONFLICT || status == StatusCode::NOT_FOUND =>
            {
                // The round moved on (it closed, or the coordinator
                // restarted and aborted it): wait for the next one.
                tracing::info!(party = cfg.id, job = %job, round = live.round, task = live.task,
                    code = %body.error, "the round moved on without this party");
                report.rounds_missed += 1;
            }
            Err(e @ PartyError::Unreachable(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(party = cfg.id, job = %job, round = live.round, task = live.task,
                    error = %e, "left the round");
                report.rounds_missed += 1;
            }
        }
        session.leave();
    }
}

/// Takes part in one secure sum the session admitted. `Ok(false)`: went
/// silent (simulated).
async fn take_part(
    cfg: &PartyConfig,
    client: &mut Client,
    session: &mut PartySession,
    journal: &mut SessionJournal,
    job: &str,
    task: &Admission,
) -> Result<bool, PartyError> {
    let base = format!("/v1/jobs/{job}/rounds/{}", task.round);
    let r = client
        .send(
            Method::GET,
            &format!("{base}/model"),
            job,
            task.round,
            Body::Empty,
        )
        .await?;
    // The model, and what the strategy sends with it (FedImpres'
    // impressions): at most what the policy allows, its shape checked by
    // the strategy's half.
    let most = crate::strategy::max_downlink(session.rules().policy());
    let bytes = ok_bytes_at_most(r, most * 8).await?;
    let dimension = session.rules().policy().strategy.dimension();
    if bytes.len() % 8 != 0 || bytes.len() < dimension * 8 {
        return Err(PartyError::Refusing(format!(
            "the coordinator sent a model of {} bytes; the policy's model has {dimension} parameters",
            bytes.len()
        )));
    }
    let params: Vec<f64> = bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    if !params.iter().all(|x| x.is_finite()) {
        return Err(PartyError::Refusing(
            "the coordinator sent a model with non-finite parameters".into(),
        ));
    }
    // The task is used up before anything of it is computed or sent; the
    // input (local training, noise) is CPU work, off the async workers.
    let words = {
        let words = tokio::task::block_in_place(|| session.begin(task, &params))
            .map_err(PartyError::Refusing);
        journal.put_with_home(job, session.state(), &session.home_state())?;
        words?
    };
    if let Some(tap) = &cfg.tap {
        let _ = tap.send(PartyObservation::Input(ObservedInput {
            party: cfg.id,
            job: job.to_string(),
            round: task.round,
            task: task.task,
            words,
        }));
    }
    let silent = silent_at(cfg.dropout, cfg.dropout_seed, task.round, task.task);
    let mut batch = 0usize;
    // The sequence number of the last message received: each fetch
    // acknowledges it, and a fetch whose answer was lost is answered again.
    let mut received = 0u64;
    loop {
        let mut outgoing = Vec::new();
        let mut masked = false;
        while let Some((kind, bytes)) = session.poll_outgoing() {
            masked |= kind == MessageKind::MaskedInput;
            outgoing.push(bytes);
        }
        if !outgoing.is_empty() {
            if silent == Some(batch) {
                return Ok(false);
            }
            batch += 1;
            if masked {
                // Recorded before it leaves: an audit's counts go out once.
                journal.put_with_home(job, session.state(), &session.home_state())?;
            }
            for bytes in outgoing {
                let r = client
                    .send(
                        Method::POST,
                        &format!("{base}/messages"),
                        job,
                        task.round,
                        Body::Octets(bytes.into()),
                    )
                    .await?;
                ok(r).await?;
            }
        }
        if session.is_done() {
            return Ok(true);
        }
        let r = client
            .send(
                Method::GET,
                &format!("{base}/messages?after={received}&wait_ms=10000"),
                job,
                task.round,
                Body::Empty,
            )
            .await?;
        let r = ok(r).await?;
        if r.status() == StatusCode::NO_CONTENT {
            continue;
        }
        let seq = r
            .headers()
            .get(crate::net::server::MESSAGE_SEQ)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                PartyError::Refusing("the coordinator's message has no sequence number".into())
            })?;
        if seq <= received {
            // Already handled (an acknowledgement that did not arrive).
            continue;
        }
        received = seq;
        let bytes = r
            .bytes()
            .await
            .map_err(|e| PartyError::Unreachable(e.to_string()))?;
        if let Some(tap) = &cfg.tap {
            if bytes.get(1) == Some(&(MessageKind::UnmaskRequest as u8)) {
                let _ = tap.send(PartyObservation::UnmaskRequest {
                    party: cfg.id,
                    job: job.to_string(),
                    round: task.round,
                    task: task.task,
                });
            }
        }
        tokio::task::block_in_place(|| session.handle(&bytes)).map_err(PartyError::Refusing)?;
    }
}
