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

use rand_chacha::rand_core::{OsRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};
use shroud_crypto::message::MessageKind;
use shroud_crypto::{IdentityKey, Party, PartyId};
use zeroize::Zeroizing;

use crate::audit::{self, Canary, PartySample};
use crate::data::Dataset;
use crate::dp::encode::EncodingScheme;
use crate::dp::noise::DiscreteGaussianShare;
use crate::dp::plan::PrivacyPlan;
use crate::job::{job_policy, party_input, rotation_seed};
use crate::net::api::{JobStatus, PartySetup};
use crate::net::auth::Signer;
use crate::net::client::{ok, ok_bytes, Body, Client, ClientError};
use crate::party_session::{Admission, PartySession, SessionState, TaskKind};
use crate::policy::{Policy, Unit};
use crate::strategy::fedavg::FedAvg;
use crate::strategy::{PartyView, Strategy, TaskSpec};

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
    /// demo's dropouts repeat from run to run.
    pub dropout_seed: u64,
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

/// A secret of this party's, bound to one job and one use; wiped on drop.
fn party_secret(seed: &[u8; 32], label: &str, job: &str) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    for part in [label.as_bytes(), seed.as_slice(), job.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    Zeroizing::new(h.finalize().into())
}

/// What a party did in each job, kept in a file (JSON, replaced atomically)
/// and written before the party acts on it.
pub struct SessionJournal {
    path: Option<std::path::PathBuf>,
    jobs: std::collections::BTreeMap<String, SessionState>,
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
        self.jobs.get(job).copied().unwrap_or_default()
    }

    pub fn put(&mut self, job: &str, state: SessionState) -> Result<(), PartyError> {
        self.jobs.insert(job.to_string(), state);
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

/// Everything a party holds for one job.
struct JobContext {
    job: String,
    session: PartySession,
    /// σ of this party's noise share (integer units); `None` without DP.
    noise_std: Option<f64>,
    sample: PartySample,
    training: Dataset,
    strategy: FedAvg,
    rng: ChaCha20Rng,
    audit_seed: u64,
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
    if setup.policy_hash != cfg.policy.hash {
        return Err(PartyError::Refusing(format!(
            "the coordinator runs job `{job}` under policy {}…, this party holds {}…; \
             every member must hold the policy the consortium signed off",
            setup
                .policy_hash
                .chars()
                .take(12)
                .collect::<String>()
                .escape_debug(),
            &cfg.policy.hash[..12]
        )));
    }
    // A job may spend less than the policy allows, never more: the party's
    // noise is sized from these, so it checks them itself.
    let allowed = &cfg.policy.privacy;
    if !(setup.epsilon.is_finite() && setup.epsilon > 0.0 && setup.epsilon <= allowed.epsilon) {
        return Err(PartyError::Refusing(format!(
            "the coordinator asks job `{job}` to spend ε = {}; the policy allows at most {}",
            setup.epsilon, allowed.epsilon
        )));
    }
    if !(1..=allowed.rounds).contains(&setup.rounds) {
        return Err(PartyError::Refusing(format!(
            "the coordinator asks job `{job}` for {} rounds; the policy allows 1 to {}",
            setup.rounds, allowed.rounds
        )));
    }
    let infeasible = |e: crate::dp::plan::PlanError| {
        PartyError::Refusing(format!(
            "job `{job}`'s privacy plan: `{}`: {}",
            e.key, e.message
        ))
    };
    let policy =
        job_policy(&cfg.policy, Some(setup.epsilon), Some(setup.rounds)).map_err(infeasible)?;
    let plan = PrivacyPlan::for_policy(&policy).map_err(infeasible)?;
    if (plan.noise_std_per_party - setup.noise_std_per_party).abs()
        > 1e-9 * plan.noise_std_per_party.max(1.0)
    {
        return Err(PartyError::Refusing(format!(
            "the coordinator asks for noise σ = {} per party; this party's plan says {}",
            setup.noise_std_per_party, plan.noise_std_per_party
        )));
    }
    let (dim, classes) = (policy.strategy.inputs, policy.strategy.classes);
    if cfg.data.dim() != dim {
        return Err(PartyError::Refusing(format!(
            "the data has {} features, the policy's model {dim}",
            cfg.data.dim()
        )));
    }
    let mut canaries = Vec::new();
    for c in &setup.canaries {
        if c.features.len() != dim
            || c.label >= classes
            || !c.features.iter().all(|x| x.is_finite())
        {
            return Err(PartyError::Refusing(
                "the coordinator sent a canary that does not fit the model (length, label or non-finite values)".into(),
            ));
        }
        canaries.push(Canary {
            features: c.features.clone(),
            label: c.label,
            included: true,
            party: cfg.id,
        });
    }
    // The audit sample is drawn from this party's own secret, fixed per job,
    // so a restarted party holds out the same non-members.
    let sample_secret =
        zeroize::Zeroizing::new(party_secret(&cfg.identity_seed, "audit sample", job));
    let sample = audit::draw_sample(cfg.id, &cfg.data, &sample_secret);
    let training = audit::training_set(&cfg.data, &sample, &canaries);
    let noise_std = (policy.privacy.unit != Unit::None).then_some(plan.noise_std_per_party);
    let audit_seed = u64::from_le_bytes(
        party_secret(&cfg.identity_seed, "audit reference", job)[..8]
            .try_into()
            .expect("8 bytes"),
    );
    let mut strategy = FedAvg::for_policy(&policy, 0);
    let ids: Vec<u32> = policy.parties.iter().map(|p| p.id).collect();
    let tasks_per_round = strategy.plan(1, &ids).tasks.len() as u32;
    let audit_len = audit::counts_width(&audit::population_attacks(&policy));
    let session = PartySession::new(
        cfg.id,
        job,
        policy,
        plan,
        tasks_per_round,
        audit_len,
        journal.get(job),
    );
    let mut ctx = JobContext {
        job: job.to_string(),
        strategy,
        session,
        noise_std,
        sample,
        training,
        rng: {
            // The seed's one named copy is wiped once the generator holds it.
            let mut seed = Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(seed.as_mut());
            ChaCha20Rng::from_seed(*seed)
        },
        audit_seed,
    };
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
            return Ok(st.state);
        }
        let Some(live) = st.live else { continue };
        if last == Some((live.round, live.task)) || !live.cohort.contains(&cfg.id) {
            continue;
        }
        last = Some((live.round, live.task));
        // The party's own policy decides; a refused task changes nothing.
        let admission = match ctx.session.admit(&live) {
            Ok(a) => a,
            Err(refusal) => {
                eprintln!(
                    "party {}: refusing round {} task {} of job `{job}`: {refusal}",
                    cfg.id, live.round, live.task
                );
                report.rounds_refused += 1;
                continue;
            }
        };
        ctx.session.start(&admission);
        journal.put(job, ctx.session.state())?;
        match take_part(cfg, client, &mut ctx, journal, &admission).await {
            Ok(true) => report.rounds_contributed += 1,
            Ok(false) => report.rounds_missed += 1,
            Err(PartyError::Refused { status, body })
                if status == StatusCode::CONFLICT || status == StatusCode::NOT_FOUND =>
            {
                // The round moved on (it closed, or the coordinator
                // restarted and aborted it): wait for the next one.
                let _ = body;
                report.rounds_missed += 1;
            }
            Err(e @ PartyError::Unreachable(_)) => return Err(e),
            Err(e) => {
                eprintln!("party {}: round {}: {e}", cfg.id, live.round);
                report.rounds_missed += 1;
            }
        }
    }
}

/// Takes part in one secure sum the session admitted. `Ok(false)`: went
/// silent (simulated).
async fn take_part(
    cfg: &PartyConfig,
    client: &mut Client,
    ctx: &mut JobContext,
    journal: &mut SessionJournal,
    task: &Admission,
) -> Result<bool, PartyError> {
    let job = ctx.job.clone();
    let base = format!("/v1/jobs/{job}/rounds/{}", task.round);
    let r = client
        .send(
            Method::GET,
            &format!("{base}/model"),
            &job,
            task.round,
            Body::Empty,
        )
        .await?;
    let bytes = ok_bytes(r).await?;
    let dimension = ctx.strategy.model().dimension();
    if bytes.len() != dimension * 8 {
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
    ctx.strategy
        .set_global(&params)
        .map_err(|e| PartyError::Refusing(e.to_string()))?;

    // The party's input: its noisy update, or its audit counts.
    // CPU work (local training, noise, masking) runs where it does not stall
    // the async workers.
    let words = tokio::task::block_in_place(|| -> Result<Vec<u32>, PartyError> {
        let policy = ctx.session.policy();
        Ok(match task.kind {
            TaskKind::Audit => {
                // The strategy holds the final model (set from `params`
                // above); the counts leave with this party's noise share.
                let attacks = audit::population_attacks(policy);
                let counts = audit::party_counts(
                    ctx.strategy.model(),
                    &cfg.data,
                    &ctx.sample,
                    &attacks,
                    ctx.audit_seed,
                );
                audit::party_input(&counts, ctx.session.plan().audit.as_ref())
                    .map_err(|e| PartyError::Refusing(e.to_string()))?
            }
            TaskKind::Training => {
                let spec = TaskSpec {
                    id: task.task,
                    label: "update".into(),
                    cohort: task.cohort.clone(),
                    dimension,
                };
                let scheme = EncodingScheme::from_plan(
                    ctx.session.plan(),
                    rotation_seed(policy, &job, task.round, task.task),
                );
                let view = PartyView {
                    id: cfg.id,
                    data: &ctx.training,
                };
                // The sampler is built here, on this thread: it is not Send.
                let noise = ctx
                    .noise_std
                    .map(DiscreteGaussianShare::new)
                    .transpose()
                    .map_err(|e| PartyError::Refusing(e.to_string()))?;
                party_input(
                    &ctx.strategy,
                    &spec,
                    &view,
                    &scheme,
                    noise.as_ref(),
                    &mut ctx.rng,
                )
                .map_err(|e| PartyError::Refusing(e.to_string()))?
            }
        })
    })?;
    if words.len() != task.len {
        return Err(PartyError::Refusing(format!(
            "this party's input has {} words, the round expects {}",
            words.len(),
            task.len
        )));
    }
    if let Some(tap) = &cfg.tap {
        let _ = tap.send(PartyObservation::Input(ObservedInput {
            party: cfg.id,
            job: job.clone(),
            round: task.round,
            task: task.task,
            words: words.clone(),
        }));
    }

    let round = ctx
        .session
        .protocol_round(task)
        .map_err(|e| PartyError::Refusing(format!("round setup: {e}")))?;
    let session = *round.session();
    let mut party = Party::new(
        round,
        PartyId(cfg.id),
        IdentityKey::from_seed(&cfg.identity_seed),
        words,
        &mut OsRng,
    )
    .map_err(|e| PartyError::Refusing(e.to_string()))?;
    let mut drng = ChaCha20Rng::seed_from_u64(
        cfg.dropout_seed ^ (u64::from(task.round) << 32) ^ u64::from(task.task),
    );
    let silent_at = (cfg.dropout > 0.0 && crate::sampling::bernoulli(&mut drng, cfg.dropout))
        .then(|| (drng.next_u32() % 5) as usize);
    let mut batch = 0usize;
    // The sequence number of the last message received: each fetch
    // acknowledges it, and a fetch whose answer was lost is answered again.
    let mut received = 0u64;
    loop {
        let mut outgoing = Vec::new();
        let mut masked = false;
        while let Some(m) = party.poll_outgoing() {
            masked |= m.kind() == MessageKind::MaskedInput;
            outgoing.push(m.encode(&session));
        }
        if !outgoing.is_empty() {
            if silent_at == Some(batch) {
                return Ok(false);
            }
            batch += 1;
            if masked {
                // Recorded before it leaves: an audit's counts go out once.
                ctx.session.masked_input_sent(task);
                journal.put(&job, ctx.session.state())?;
            }
            for bytes in outgoing {
                let r = client
                    .send(
                        Method::POST,
                        &format!("{base}/messages"),
                        &job,
                        task.round,
                        Body::Octets(bytes.into()),
                    )
                    .await?;
                ok(r).await?;
            }
        }
        if party.is_done() {
            return Ok(true);
        }
        let r = client
            .send(
                Method::GET,
                &format!("{base}/messages?after={received}&wait_ms=10000"),
                &job,
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
                    job: job.clone(),
                    round: task.round,
                    task: task.task,
                });
            }
        }
        tokio::task::block_in_place(|| party.handle_bytes(&bytes, &mut OsRng))
            .map_err(|e| PartyError::Refusing(format!("the coordinator's message: {e}")))?;
    }
}
