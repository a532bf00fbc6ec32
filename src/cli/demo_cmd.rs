//! `shroud demo`: flags in, a printed summary out. The demo itself lives in
//! the library (`crate::demo`).

use std::path::PathBuf;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shroud_audit::gate::Decision;

use crate::demo::{Demo, DemoConfig, DemoSummary, Transport};
use crate::policy::Unit;

#[derive(clap::Args)]
pub struct DemoFlags {
    /// Data set: digits, breast_cancer, mnist1d, caravan, wine, or a CSV path.
    #[arg(long, default_value = "digits")]
    dataset: String,
    /// Number of parties (default: the policy's roster size).
    #[arg(long)]
    parties: Option<u32>,
    /// How records are dealt out: dirichlet, iid, pathological, quantity.
    #[arg(long, default_value = "dirichlet")]
    partition: String,
    /// Dirichlet concentration α (dirichlet and quantity partitions).
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// Classes per party (pathological partition, R, D and S).
    #[arg(long, default_value_t = 2)]
    classes_per_party: usize,
    /// R, D and S: clusters of the class centroids (0: ⌈√classes⌉).
    #[arg(long, default_value_t = 0)]
    clusters: usize,
    /// Aggregation strategy: fedavg, fedmr, series, transfer, ensemble,
    /// fedimpres, or fstcbdg (digits only: its frozen encoder reads the
    /// digits' 64 counts)
    /// (default: the policy's).
    #[arg(long)]
    strategy: Option<String>,
    /// Records taken out of the training split before it is dealt, as the
    /// public unlabelled set (written to OUT/public.csv); the ensemble
    /// needs them, and other strategies given the same number train on
    /// the same records (default: 100 for the ensemble, else 0).
    #[arg(long)]
    public_records: Option<usize>,
    /// Ensemble: aggregate by a PATE-style noisy vote, with this noise std
    /// (in votes) on each summed vote count; members then train without
    /// noise and the vote pays.
    #[arg(long)]
    vote_noise_std: Option<f64>,
    /// Series: the number of stages (the policy's value if it names a
    /// series); the rounds must split evenly over them.
    #[arg(long)]
    stages: Option<u32>,
    /// FedMR: the least number of parties in a layer's group (the policy's
    /// value if it names FedMR).
    #[arg(long)]
    group_size: Option<u32>,
    /// FedMR: rounds of plain FedAvg before layers are recombined.
    #[arg(long)]
    warmup_rounds: Option<u32>,
    /// The policy to run under (default: policies/default.toml, built in).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Override the policy's budget ε (the noise is recalibrated if the
    /// policy calibrates).
    #[arg(long)]
    epsilon: Option<f64>,
    /// Override the policy's number of rounds.
    #[arg(long)]
    rounds: Option<u32>,
    /// Probability that each party drops out of each round.
    #[arg(long, default_value_t = 0.05)]
    dropout: f64,
    /// Seed of the split, the partition, sampling and rounding.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run without differential privacy, to measure what privacy costs
    /// (needs --allow-no-dp; the model is never released).
    #[arg(long)]
    no_dp: bool,
    /// Permit a job without differential privacy.
    #[arg(long)]
    allow_no_dp: bool,
    /// Train one model centrally instead, on the records the parties would
    /// train on, pooled (no DP, no federation): the reference point.
    #[arg(long)]
    central: bool,
    /// Output folder for the model and the summary.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Ledger database (default: a fresh OUT/demo.db each run).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Run every party and the coordinator in this process without the
    /// network (the protocol, noise and ledger are the same).
    #[arg(long)]
    in_process: bool,
    /// Serve plain HTTP on loopback instead of TLS.
    #[arg(long, conflicts_with = "in_process")]
    insecure_http: bool,
    /// Per-phase deadline in seconds: a silent party is a dropout after it.
    #[arg(long, default_value_t = 2.0)]
    phase_timeout: f64,
}

impl DemoFlags {
    fn config(&self) -> DemoConfig {
        DemoConfig {
            dataset: self.dataset.clone(),
            parties: self.parties,
            partition: self.partition.clone(),
            alpha: self.alpha,
            classes_per_party: self.classes_per_party,
            clusters: self.clusters,
            strategy: self.strategy.clone(),
            group_size: self.group_size,
            stages: self.stages,
            public_records: self.public_records,
            vote_noise_std: self.vote_noise_std,
            warmup_rounds: self.warmup_rounds,
            strategy_settings: toml::Table::new(),
            policy: self.policy.clone(),
            epsilon: self.epsilon,
            rounds: self.rounds,
            dropout: self.dropout,
            seed: self.seed,
            no_dp: self.no_dp,
            allow_no_dp: self.allow_no_dp,
            out: self.out.clone(),
            db: self.db.clone(),
            phase_timeout: self.phase_timeout,
            transport: if self.in_process {
                Transport::InProcess
            } else if self.insecure_http {
                Transport::Http
            } else {
                Transport::Https
            },
        }
    }
}

pub fn run(f: DemoFlags) -> Result<()> {
    let demo = Demo::prepare(f.config())?;
    if f.central {
        let c = demo.central();
        if f.json {
            println!("{}", serde_json::to_string(&c)?);
        } else {
            println!(
                "central training on {} ({} records, {:?}): test accuracy {:.2} %",
                c.dataset,
                c.train_records,
                c.model,
                100.0 * c.accuracy
            );
        }
        return Ok(());
    }
    let bar = ProgressBar::new(u64::from(demo.policy().privacy.rounds));
    if f.json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{bar:30} round {pos:>3}/{len} {msg}")
            .expect("valid template"),
    );
    let summary = demo.run(&mut |_, aborted| {
        bar.inc(1);
        if aborted {
            bar.set_message("round aborted, still charged");
        }
    })?;
    bar.finish();
    if f.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    summary.blocked()
}

fn print_summary(s: &DemoSummary) {
    println!(
        "{} parties on {} ({} training / {} test records), {} partition{}",
        s.parties,
        s.dataset,
        s.train_records,
        s.test_records,
        s.partition,
        if matches!(s.partition.as_str(), "dirichlet" | "quantity") {
            format!(" α = {}", s.alpha)
        } else {
            String::new()
        }
    );
    if s.strategy == "ensemble" {
        println!(
            "ensemble: {} home steps per member, one secure sum of their outputs",
            s.rounds
        );
    } else {
        println!(
            "{} under secure aggregation, {} rounds",
            s.strategy, s.rounds
        );
    }
    println!("test accuracy       {:.2} %", 100.0 * s.accuracy);
    if s.strategy == "fstcbdg" {
        println!(
            "zero-shot           {:.2} % (the head at the encoder's prototypes, before round 1)",
            100.0 * s.initial_accuracy
        );
    }
    if let Some(f) = &s.forgetting {
        println!(
            "absent classes      {:.1} % → {:.1} % after a round of local training ({} parties lack some class)",
            100.0 * f.absent_class_accuracy_global,
            100.0 * f.absent_class_accuracy_local,
            f.parties
        );
    }
    let pct = |v: &serde_json::Value| {
        v.as_f64()
            .map_or("—".to_string(), |x| format!("{:.1} %", 100.0 * x))
    };
    if let Some(t) = &s.transfer {
        println!(
            "transfer            held-out accuracy base {} → fine-tuned {}, from the parties' noisy counts (noise std {:.1} per count)",
            pct(&t.base["accuracy"]),
            pct(&t.fine_tuned["accuracy"]),
            t.noise_std
        );
    }
    if let Some(u) = &s.audit_utility {
        println!(
            "audited utility     test {:.1} % ({:.1}–{:.1}), train/test gap {:+.1} pt, from the parties' noisy counts",
            100.0 * u.test.estimate,
            100.0 * u.test.lower,
            100.0 * u.test.upper,
            100.0 * u.gap
        );
    }
    match s.epsilon_spent {
        Some(e) => println!(
            "privacy spent       ε = {e:.3} of {} at δ = {} ({}-level, {} accountant)",
            s.epsilon_budget,
            s.delta,
            match s.unit {
                Unit::Record => "record",
                Unit::Party => "party",
                Unit::None => "no",
            },
            s.accountant
        ),
        None => println!(
            "privacy spent       NONE — trained without differential privacy; not released"
        ),
    }
    println!(
        "dropouts survived   {} ({} rounds aborted, still charged)",
        s.dropouts_survived, s.rounds_aborted
    );
    println!("transport           {}", s.transport);
    match (&s.model, &s.model_sha256) {
        (Some(p), Some(h)) => println!("model               {p} (sha256 {})", &h[..16]),
        _ => println!("model               not released"),
    }
    println!(
        "audit               AUC {:.3} (highest of {} attacks), empirical ε ≥ {:.3}",
        s.auc, s.attacks_and_canaries, s.epsilon_lower_bound
    );
    println!(
        "decision            {}",
        match s.decision {
            Decision::Release => "RELEASE: every gate check passed",
            Decision::Block => "BLOCKED: the model was not written",
        }
    );
    println!(
        "report              {} (and {})",
        s.report_html, s.report_json
    );
    println!("summary             {}", s.summary);
    println!(
        "ledger and log      {}",
        s.db.as_deref().unwrap_or_default()
    );
}
