//! `shroud keygen`, `shroud serve`, `shroud party` and `shroud job`: the
//! networked service from the command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shroud_crypto::IdentityKey;

use crate::coordinator::{Engine, EngineConfig};
use crate::dp::plan::PrivacyPlan;
use crate::net::api::JobStatus;
use crate::net::auth::Signer;
use crate::net::client::Client;
use crate::net::metrics::Metrics;
use crate::net::server::{self, AppState, Listen};
use crate::net::tls;
use crate::party::{self, PartyConfig};
use crate::policy::Policy;
use crate::store::PrivacyLedger;

#[derive(clap::Args)]
pub struct KeygenFlags {
    /// Where to write the key (refuses to overwrite). With --tls, the
    /// prefix of FILE.crt and FILE.key.
    #[arg(long)]
    out: PathBuf,
    /// Make a self-signed TLS certificate and key instead, for trying the
    /// service out.
    #[arg(long)]
    tls: bool,
    /// Host names or IP addresses the certificate is for (with --tls).
    #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    names: Vec<String>,
}

pub fn keygen(f: KeygenFlags) -> Result<()> {
    if f.tls {
        let (cert, key) = tls::self_signed(&f.names).map_err(anyhow::Error::msg)?;
        let crt = f.out.with_extension("crt");
        let keyp = f.out.with_extension("key");
        for p in [&crt, &keyp] {
            if p.exists() {
                bail!("{}: already exists; refusing to overwrite", p.display());
            }
        }
        std::fs::write(&crt, cert).with_context(|| format!("cannot write {}", crt.display()))?;
        crate::keyfile::write_secret(&keyp, key.as_bytes()).map_err(anyhow::Error::msg)?;
        println!(
            "certificate  {}  (give it to every party: --ca)",
            crt.display()
        );
        println!(
            "private key  {}  (the coordinator's: --tls-key)",
            keyp.display()
        );
        println!("valid for    {}", f.names.join(", "));
        return Ok(());
    }
    let public = crate::keyfile::generate(&f.out).map_err(anyhow::Error::msg)?;
    let pub_path = f.out.with_extension("pub");
    crate::keyfile::write_public(&pub_path, &public).map_err(anyhow::Error::msg)?;
    println!("wrote {} (keep it secret)", f.out.display());
    println!(
        "wrote {} (the public key: for the roster, or `serve --operator-public-key`)",
        pub_path.display()
    );
    println!("roster line for the policy:");
    println!("identity_key = \"{public}\"");
    Ok(())
}

#[derive(clap::Args)]
pub struct ServeFlags {
    /// The consortium's policy.
    #[arg(long)]
    policy: PathBuf,
    /// The coordinator's SQLite store (ledger, jobs, rounds, audit log).
    #[arg(long)]
    db: PathBuf,
    /// Address to listen on, e.g. 0.0.0.0:8443.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP: only on a trusted network or behind a TLS proxy.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    insecure_http: bool,
    /// The operator's public identity key: 64 hex characters, or the
    /// `.pub` file `shroud keygen` wrote beside the operator's key. Requests
    /// signed with the matching private key may start and abort jobs; the
    /// private key itself stays with the operator.
    #[arg(long)]
    operator_public_key: Option<String>,
    /// Refused: the coordinator takes the operator's public key only.
    #[arg(long, hide = true)]
    operator_key: Option<PathBuf>,
    /// Folder for audit reports and released models.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Serve jobs under a policy without differential privacy (never
    /// released).
    #[arg(long)]
    allow_no_dp: bool,
    /// Serve /metrics (plain HTTP) on this address only, e.g.
    /// 10.0.0.5:9100, and not on the API's.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    log: LogFlags,
}

/// How `serve` and `party` log (to standard error).
#[derive(clap::Args)]
pub struct LogFlags {
    /// Log lines as text or as one JSON object each; the level comes from
    /// RUST_LOG (default info), e.g. RUST_LOG=warn or RUST_LOG=shroud=debug.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

impl LogFlags {
    /// Installs the process's log subscriber.
    fn init(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false);
        // A second subscriber (tests calling twice) is refused harmlessly.
        let _ = if self.log_format == "json" {
            builder.json().try_init()
        } else {
            builder.try_init()
        };
    }
}

pub fn serve(f: ServeFlags) -> Result<()> {
    f.log.init();
    let (listen, names) = match (&f.tls_cert, &f.tls_key, f.insecure_http) {
        (Some(c), Some(k), false) => (
            Listen::Tls({
                warn_if_exposed(k);
                tls::server_config(c, k).map_err(anyhow::Error::msg)?
            }),
            tls::coordinator_names(c).map_err(anyhow::Error::msg)?,
        ),
        (None, None, true) => (
            Listen::InsecureHttp,
            crate::net::auth::CoordinatorNames::HostHeader,
        ),
        _ => bail!(
            "give --tls-cert and --tls-key (make a self-signed pair with `shroud keygen --tls --out server`), \
             or --insecure-http to serve plain HTTP"
        ),
    };
    let text = std::fs::read_to_string(&f.policy)
        .with_context(|| format!("{}: cannot read the policy file", f.policy.display()))?;
    let policy = Policy::parse(&f.policy, &text)?;
    let plan = PrivacyPlan::for_policy(&policy)
        .map_err(|e| anyhow::anyhow!("{}: `{}`: {}", f.policy.display(), e.key, e.message))?;
    if let Some(p) = &f.operator_key {
        bail!(
            "--operator-key {}: the coordinator takes the operator's public key, not its private key; \
             give --operator-public-key the `.pub` file `shroud keygen` wrote beside it (or its hex)",
            p.display()
        );
    }
    let operator = match &f.operator_public_key {
        Some(v) => Some(crate::keyfile::load_public(v).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let store = PrivacyLedger::open(&f.db)
        .with_context(|| format!("{}: cannot open the store", f.db.display()))?;
    let metrics = Arc::new(Metrics::default());
    let limit = server::body_limit(&policy, &plan);
    let engine = Engine::open(
        EngineConfig {
            policy,
            policy_text: text,
            out: f.out.clone(),
            allow_no_dp: f.allow_no_dp,
            observer: None,
        },
        store,
        metrics.clone(),
        Instant::now(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut state = AppState::new(engine, operator, names, metrics.clone(), limit);
    // Bound now, so that an address in use is an error at start.
    let metrics_listener = match f.metrics_listen {
        Some(addr) => {
            state = state.with_metrics_elsewhere();
            Some(
                std::net::TcpListener::bind(addr)
                    .with_context(|| format!("cannot listen for metrics on {addr}"))?,
            )
        }
        None => None,
    };
    // Engine calls take one lock in turn: a few blocking threads serve
    // them all, and each idle one would keep its own allocator arena.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()?;
    rt.block_on(async move {
        let handle = axum_server::Handle::new();
        let h2 = handle.clone();
        let tls = matches!(listen, Listen::Tls(_));
        tokio::spawn(async move {
            if let Some(addr) = h2.listening().await {
                tracing::info!(%addr, tls, store = %f.db.display(), "coordinator listening");
                eprintln!(
                    "shroud coordinator on {}://{addr} (store {}){}",
                    if tls { "https" } else { "http" },
                    f.db.display(),
                    if operator.is_none() {
                        "; no --operator-public-key: jobs cannot be started"
                    } else {
                        ""
                    }
                );
            }
        });
        let h3 = handle.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            h3.graceful_shutdown(Some(Duration::from_secs(5)));
        });
        if let Some(listener) = metrics_listener {
            let h4 = handle.clone();
            tokio::spawn(async move {
                let addr = listener.local_addr().ok();
                tracing::info!(addr = ?addr, "metrics listening");
                if let Err(e) = server::serve_metrics(metrics, listener, h4).await {
                    tracing::error!(addr = ?addr, error = %e, "metrics listener failed");
                }
            });
        }
        server::serve(state, f.listen, listen, handle).await
    })?;
    Ok(())
}

#[derive(clap::Args)]
pub struct PartyFlags {
    /// The consortium's policy (the same file the coordinator runs).
    #[arg(long)]
    policy: PathBuf,
    /// This party's id in the policy's roster.
    #[arg(long)]
    id: u32,
    /// This party's identity key file (from `shroud keygen`).
    #[arg(long)]
    key: PathBuf,
    /// This party's records: CSV with feature columns then `label`,
    /// preprocessed as the consortium agreed.
    #[arg(long)]
    data: PathBuf,
    /// The coordinator's URL, e.g. https://coordinator.example:8443.
    #[arg(long)]
    coordinator: String,
    /// The coordinator's certificate (or its CA), PEM.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Join only this job.
    #[arg(long)]
    job: Option<String>,
    /// Exit after one job instead of waiting for the next.
    #[arg(long)]
    once: bool,
    /// Give up when the coordinator stays unreachable this many seconds.
    #[arg(long, default_value_t = 600)]
    patience_secs: u64,
    /// Where this party records the rounds and audit sums it took part in,
    /// so that after a restart it still refuses a replayed round or a second
    /// audit sum. Default: beside the key file, `<key>.journal.json`.
    #[arg(long)]
    journal: Option<PathBuf>,
    #[command(flatten)]
    log: LogFlags,
}

fn client_tls(url: &str, ca: Option<&Path>) -> Result<Option<rustls::ClientConfig>> {
    match (url.starts_with("https://"), ca) {
        (true, Some(ca)) => Ok(Some(tls::client_config(ca).map_err(anyhow::Error::msg)?)),
        (true, None) => bail!("{url} is https: give the coordinator's certificate with --ca"),
        (false, _) if url.starts_with("http://") => Ok(None),
        _ => bail!("--coordinator must be an https:// (or http://) URL, got `{url}`"),
    }
}

pub fn party(f: PartyFlags) -> Result<()> {
    f.log.init();
    let policy = Policy::load(&f.policy)?;
    let seed = load_key(&f.key)?;
    let data =
        crate::data::load_party_csv(&f.data, policy.strategy.inputs, policy.strategy.classes)?;
    let tls = client_tls(&f.coordinator, f.ca.as_deref())?;
    let cfg = PartyConfig {
        randomness: crate::job::session::InputRandomness::Os,
        policy,
        id: f.id,
        identity_seed: seed,
        data,
        coordinator: f.coordinator,
        tls,
        job: f.job,
        once: f.once,
        patience: Duration::from_secs(f.patience_secs),
        dropout: 0.0,
        dropout_seed: 0,
        journal: Some(
            f.journal
                .unwrap_or_else(|| f.key.with_extension("journal.json")),
        ),
        tap: None,
    };
    let id = cfg.id;
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(party::run(cfg))?;
    for (job, state) in &report.jobs {
        println!("party {id}: job {job} ended {state}");
    }
    println!(
        "party {id}: {} rounds contributed, {} missed, {} refused, {} requests retried",
        report.rounds_contributed, report.rounds_missed, report.rounds_refused, report.retries
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct JobFlags {
    /// The coordinator's URL.
    #[arg(long)]
    coordinator: String,
    /// The operator's identity key file.
    #[arg(long)]
    key: PathBuf,
    /// The coordinator's certificate (or its CA), PEM.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
pub enum JobCommand {
    /// Start a job under the coordinator's policy.
    Start {
        #[command(flatten)]
        conn: JobFlags,
        /// Job id (letters, digits, `.`, `_`, `-`).
        #[arg(long)]
        job: String,
        /// The job's ε, at most the policy's budget.
        #[arg(long)]
        epsilon: Option<f64>,
        /// Rounds, at most the policy's.
        #[arg(long)]
        rounds: Option<u32>,
        /// Seed of the initial model.
        #[arg(long)]
        seed: Option<u64>,
        /// Wait until the job ends and print its final status.
        #[arg(long)]
        wait: bool,
    },
    /// Show a job (or every job).
    Status {
        #[command(flatten)]
        conn: JobFlags,
        #[arg(long)]
        job: Option<String>,
    },
    /// Abort a running job; its charged rounds stay charged.
    Abort {
        #[command(flatten)]
        conn: JobFlags,
        #[arg(long)]
        job: String,
    },
}

fn operator_client(c: &JobFlags) -> Result<Client> {
    let seed = load_key(&c.key)?;
    let tls = client_tls(&c.coordinator, c.ca.as_deref())?;
    Ok(Client::new(
        &c.coordinator,
        tls,
        IdentityKey::from_seed(&seed),
        Signer::Operator,
        Duration::from_secs(30),
    )?)
}

fn print_status(s: &JobStatus, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    let training = || s.history.iter().filter(|r| r.round <= s.rounds);
    let finished = training().filter(|r| r.state == "finished").count();
    let aborted = training().filter(|r| r.state == "aborted").count();
    println!("job {} ({}): {}", s.job, s.consortium, s.state);
    println!(
        "rounds   {finished} finished, {aborted} aborted (charged), of {} (then the audit's sum)",
        s.rounds
    );
    if let Some(l) = &s.live {
        println!("now      {}", progress(s, l));
    }
    match s.epsilon_spent {
        Some(e) => println!(
            "privacy  ε spent {e:.4} (job budget {}, δ = {})",
            s.epsilon, s.delta
        ),
        None => println!("privacy  no DP (never released)"),
    }
    if let Some(r) = &s.release {
        println!("decision {}", r.decision);
        println!("report   {}", r.report_html);
        if let (Some(p), Some(h)) = (&r.model_path, &r.model_sha256) {
            println!("model    {p} (sha256 {h})");
        }
    }
    if let Some(r) = &s.reason {
        println!("reason   {r}");
    }
    Ok(())
}

/// Where a running job stands: the round of how many, the phase, how many
/// of the cohort answered the phase before, and ε spent so far.
fn progress(s: &JobStatus, l: &crate::net::api::LiveTask) -> String {
    let answered = s
        .history
        .iter()
        .find(|r| r.round == l.round && r.task == l.task)
        .map_or(0, |r| r.survivors.len());
    let round = if l.kind == "audit" {
        "the audit's sum".to_string()
    } else {
        format!("round {} of {}", l.round, s.rounds)
    };
    let spent = s
        .epsilon_spent
        .map_or(String::new(), |e| format!("; ε spent {e:.4}"));
    format!(
        "{round} (task {}), phase {}: {} of {} parties answered the last phase{spent}",
        l.task,
        l.phase,
        if answered == 0 {
            l.cohort.len()
        } else {
            answered
        },
        l.cohort.len()
    )
}

pub fn job(cmd: JobCommand) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        match cmd {
            JobCommand::Start {
                conn,
                job,
                epsilon,
                rounds,
                seed,
                wait,
            } => {
                let mut c = operator_client(&conn)?;
                let body = serde_json::json!({ "job": job, "epsilon": epsilon, "rounds": rounds, "seed": seed });
                let mut s: JobStatus = c.post_json("/v1/jobs", &job, &body).await?;
                let mut shown = String::new();
                while wait && (s.state == "running" || s.state == "auditing") {
                    // Progress on standard error, one line per change.
                    if let Some(l) = &s.live {
                        let line = progress(&s, l);
                        if line != shown {
                            eprintln!("{line}");
                            shown = line;
                        }
                    }
                    s = c
                        .json(&format!("/v1/jobs/{job}?after={}&wait_ms=10000", s.version), &job)
                        .await?;
                }
                print_status(&s, conn.json)
            }
            JobCommand::Status { conn, job } => {
                let mut c = operator_client(&conn)?;
                match job {
                    Some(j) => {
                        let s: JobStatus = c.json(&format!("/v1/jobs/{j}"), &j).await?;
                        print_status(&s, conn.json)
                    }
                    None => {
                        let all: Vec<JobStatus> = c.json("/v1/jobs", "").await?;
                        if conn.json {
                            println!("{}", serde_json::to_string_pretty(&all)?);
                        } else if all.is_empty() {
                            println!("no jobs");
                        }
                        if !conn.json {
                            for s in &all {
                                print_status(s, false)?;
                            }
                        }
                        Ok(())
                    }
                }
            }
            JobCommand::Abort { conn, job } => {
                let mut c = operator_client(&conn)?;
                let s: JobStatus = c
                    .post_json(&format!("/v1/jobs/{job}/abort"), &job, &serde_json::json!({}))
                    .await?;
                print_status(&s, conn.json)
            }
        }
    })
}

/// Reads an identity key file, warning first if others can read it.
fn load_key(path: &std::path::Path) -> Result<zeroize::Zeroizing<[u8; 32]>> {
    warn_if_exposed(path);
    crate::keyfile::load(path).map_err(anyhow::Error::msg)
}

fn warn_if_exposed(path: &std::path::Path) {
    if let Some(why) = crate::keyfile::exposure(path) {
        eprintln!("warning: {why}");
    }
}
