//! `shroud demo`: a whole consortium job on bundled data, in one process.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::audit;
use crate::data::{partition, prepare, Partition};
use crate::dp::plan::PrivacyPlan;
use crate::job::{demo_identity_seed, run_job, JobParty, JobSpec};
use crate::model::{train_central, Mlp};
use crate::policy::{Policy, Unit};
use crate::release::{gate_and_report, ReleaseInputs};
use crate::store::PrivacyLedger;
use crate::strategy::fedavg::FedAvg;
use crate::strategy::Strategy;
use shroud_audit::gate::Decision;
use shroud_audit::report::CohortEntry;

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
    /// Classes per party (pathological partition).
    #[arg(long, default_value_t = 2)]
    classes_per_party: usize,
    /// Aggregation strategy.
    #[arg(long, default_value = "fedavg")]
    strategy: String,
    /// The policy to run under.
    #[arg(long, default_value = "policies/default.toml")]
    policy: PathBuf,
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
}

#[derive(Serialize)]
struct DemoSummary {
    dataset: String,
    train_records: usize,
    test_records: usize,
    parties: usize,
    partition: String,
    alpha: f64,
    strategy: String,
    unit: Unit,
    accountant: &'static str,
    no_dp: bool,
    accuracy: f64,
    epsilon_spent: Option<f64>,
    epsilon_budget: f64,
    delta: f64,
    rounds: u32,
    rounds_aborted: usize,
    dropouts_survived: usize,
    noise_multiplier: f64,
    policy: String,
    policy_hash: String,
    released: bool,
    model: Option<String>,
    model_sha256: Option<String>,
    summary: String,
    db: Option<String>,
    accuracy_by_round: Vec<f64>,
    epsilon_by_round: Vec<Option<f64>>,
    decision: Decision,
    auc: f64,
    epsilon_lower_bound: f64,
    report_html: String,
    report_json: String,
    failed_checks: Vec<String>,
}

fn dataset_path(name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.extension().is_some() || p.components().count() > 1 {
        p.to_path_buf()
    } else {
        Path::new("data").join(format!("{name}.csv"))
    }
}

fn parse_partition(f: &DemoFlags) -> Result<Partition> {
    Ok(match f.partition.as_str() {
        "iid" => Partition::Iid,
        "dirichlet" => Partition::Dirichlet {
            alpha: f.alpha,
            min_records: 10,
        },
        "quantity" => Partition::Quantity {
            alpha: f.alpha,
            min_records: 10,
        },
        "pathological" => Partition::Pathological {
            k: f.classes_per_party,
        },
        other => bail!(
            "--partition must be one of iid, dirichlet, pathological, quantity; got `{other}`"
        ),
    })
}

/// The policy, adapted to the demo's data and roster: demo identities for
/// every party, their actual record counts, the data set's shape, and the
/// overrides given on the command line. It is validated like any policy.
fn adapt_policy(
    f: &DemoFlags,
    mut t: toml::Table,
    parties: &[(u32, usize)],
    inputs: usize,
    classes: usize,
) -> Result<Policy> {
    let n_policy = t
        .get("party")
        .and_then(|p| p.as_array())
        .map_or(0, |a| a.len());
    let n = parties.len();
    if let Some(c) = t.get_mut("consortium").and_then(|c| c.as_table_mut()) {
        if n != n_policy && n_policy > 0 {
            // Keep the policy's proportions on a roster of another size.
            let thr = c.get("threshold").and_then(|v| v.as_integer()).unwrap_or(2) as f64;
            let col = c
                .get("max_colluding")
                .and_then(|v| v.as_integer())
                .unwrap_or(0) as f64;
            let mut t2 = ((thr / n_policy as f64) * n as f64).round().max(2.0) as i64;
            if c.get("active").and_then(|v| v.as_bool()).unwrap_or(false) {
                t2 = t2.max(n as i64 / 2 + 1);
            }
            let t2 = t2.min(n as i64);
            let c2 = (((col / n_policy as f64) * n as f64).floor() as i64).min(t2 - 1);
            c.insert("threshold".into(), t2.into());
            c.insert("max_colluding".into(), c2.into());
            c.insert("neighbors".into(), "all".into());
        }
    }
    let old: Vec<toml::Value> = t
        .get("party")
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap_or_default();
    let unit_is_party = t
        .get("privacy")
        .and_then(|p| p.get("unit"))
        .and_then(|u| u.as_str())
        == Some("party");
    let roster: Vec<toml::Value> = parties
        .iter()
        .map(|&(id, records)| {
            let mut e = toml::Table::new();
            let name = old
                .get(id as usize)
                .and_then(|p| p.get("name"))
                .and_then(|v| v.as_str())
                .map_or(format!("demo-party-{id}"), str::to_string);
            let key = crate::job::demo_public_key_hex(id);
            e.insert("id".into(), i64::from(id).into());
            e.insert("name".into(), name.into());
            e.insert("identity_key".into(), key.into());
            if !unit_is_party {
                e.insert("records".into(), (records as i64).into());
            }
            toml::Value::Table(e)
        })
        .collect();
    t.insert("party".into(), toml::Value::Array(roster));
    if let Some(s) = t.get_mut("strategy").and_then(|s| s.as_table_mut()) {
        s.insert("inputs".into(), (inputs as i64).into());
        s.insert("classes".into(), (classes as i64).into());
        s.insert("name".into(), f.strategy.clone().into());
    }
    if let Some(p) = t.get_mut("privacy").and_then(|p| p.as_table_mut()) {
        if let Some(e) = f.epsilon {
            p.insert("epsilon".into(), e.into());
        }
        if let Some(r) = f.rounds {
            p.insert("rounds".into(), i64::from(r).into());
        }
        if f.no_dp {
            p.insert("unit".into(), "none".into());
        }
    }
    let adapted = toml::to_string(&t)?;
    let label = PathBuf::from(format!("{} (adapted for the demo)", f.policy.display()));
    Ok(Policy::parse(&label, &adapted)?)
}

pub fn run(f: DemoFlags) -> Result<()> {
    if !(0.0..1.0).contains(&f.dropout) {
        bail!("--dropout must be in [0, 1), got {}", f.dropout);
    }
    if f.no_dp && !f.allow_no_dp {
        bail!("--no-dp trains without differential privacy; add --allow-no-dp to confirm (the model is never released)");
    }
    let path = dataset_path(&f.dataset);
    let data = prepare(&path, f.seed)?;
    // The policy file, read once: the demo adapts it to its roster and data.
    let policy_text = std::fs::read_to_string(&f.policy)
        .with_context(|| format!("{}: cannot read the policy file", f.policy.display()))?;
    let policy_table: toml::Table = policy_text
        .parse()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{}: {}", f.policy.display(), e.message()))?;

    let n_parties = match f.parties {
        Some(n) => n as usize,
        None => policy_table
            .get("party")
            .and_then(|p| p.as_array())
            .map_or(8, |a| a.len()),
    };
    if n_parties < 2 {
        bail!("--parties must be at least 2");
    }
    let how = parse_partition(&f)?;
    let parts = partition(
        &data.train.labels,
        data.train.classes,
        n_parties,
        &how,
        f.seed,
    )?;
    let counts: Vec<(u32, usize)> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u32, p.len()))
        .collect();
    let policy = adapt_policy(
        &f,
        policy_table,
        &counts,
        data.train.dim(),
        data.train.classes,
    )?;
    let plan = PrivacyPlan::for_policy(&policy)
        .map_err(|e| anyhow::anyhow!("{}: `{}`: {}", policy.source.display(), e.key, e.message))?;

    std::fs::create_dir_all(&f.out)
        .with_context(|| format!("cannot create {}", f.out.display()))?;
    let db = f.db.clone().unwrap_or_else(|| f.out.join("demo.db"));
    if f.db.is_none() {
        // A fresh demo ledger each run, so repeated demos do not exhaust one
        // budget; pass --db to keep a ledger across jobs.
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
    }
    let mut ledger = PrivacyLedger::open(&db)?;
    let job_id = format!("demo-{}-{}", data.name, f.seed);
    // The audit is set up before training: canaries drawn and coins flipped
    // for every party's audit sample; non-members never reach training.
    let party_data: Vec<crate::data::Dataset> =
        parts.iter().map(|idx| data.train.subset(idx)).collect();
    let views: Vec<(u32, &crate::data::Dataset)> = party_data
        .iter()
        .enumerate()
        .map(|(i, d)| (i as u32, d))
        .collect();
    let (audit_setup, training) = audit::prepare(&views, policy.audit.canaries as usize, f.seed);
    if f.central {
        // The reference: the same records the parties train on (audit
        // non-members held out, "in" canaries added), pooled, no DP.
        let mut pooled = training[0].clone();
        for t in &training[1..] {
            pooled.features.extend(t.features.iter().cloned());
            pooled.labels.extend(&t.labels);
        }
        let mut sizes = vec![data.train.dim()];
        sizes.extend(&policy.strategy.hidden);
        sizes.push(data.train.classes);
        let mut model = Mlp::new(&sizes, f.seed);
        train_central(&mut model, &pooled, 30, 32, 0.05, 0.9, f.seed);
        let acc = model.accuracy(&data.test);
        if f.json {
            println!(
                "{}",
                serde_json::json!({"central": true, "dataset": data.name, "accuracy": acc, "model": sizes, "train_records": pooled.len()})
            );
        } else {
            println!(
                "central training on {} ({} records, {sizes:?}): test accuracy {:.2} %",
                data.name,
                pooled.len(),
                100.0 * acc
            );
        }
        return Ok(());
    }
    let parties: Vec<JobParty> = training
        .into_iter()
        .enumerate()
        .map(|(i, d)| JobParty {
            id: i as u32,
            identity_seed: demo_identity_seed(i as u32),
            data: d,
        })
        .collect();
    let s = &policy.strategy;
    let mut sizes = vec![s.inputs];
    sizes.extend(&s.hidden);
    sizes.push(s.classes);
    let mut strategy = FedAvg::new(
        Mlp::new(&sizes, f.seed),
        policy.privacy.unit,
        policy.privacy.sampling_rate,
        s.learning_rate,
        s.momentum,
        s.local_epochs,
    );
    let rounds = policy.privacy.rounds;
    let bar = ProgressBar::new(u64::from(rounds));
    if f.json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{bar:30} round {pos:>3}/{len} {msg}")
            .expect("valid template"),
    );
    let spec = JobSpec {
        job_id: job_id.clone(),
        policy: &policy,
        plan: &plan,
        parties,
        test: &data.test,
        dropout: f.dropout,
        seed: f.seed,
        allow_no_dp: f.allow_no_dp,
    };
    let outcome = run_job(spec, &mut strategy, &mut ledger, &mut |r| {
        let eps = r
            .epsilon_spent
            .map_or("no DP".to_string(), |e| format!("ε {e:.3}"));
        let note = if r.aborted.is_some() {
            "  (round aborted, still charged)"
        } else {
            ""
        };
        bar.set_message(format!("accuracy {:.1} %  {eps}{note}", 100.0 * r.accuracy));
        bar.inc(1);
    })?;
    bar.finish();

    // The audit, the gate and the report; the model leaves only on a pass.
    let seeds: Vec<zeroize::Zeroizing<[u8; 32]>> =
        (0..n_parties as u32).map(demo_identity_seed).collect();
    let audit_parties: Vec<audit::AuditParty<'_>> = party_data
        .iter()
        .enumerate()
        .map(|(i, d)| audit::AuditParty {
            id: i as u32,
            identity_seed: &seeds[i],
            data: d,
        })
        .collect();
    let findings = audit::run(
        strategy.model(),
        &audit_setup,
        &audit_parties,
        &policy,
        &job_id,
        policy.privacy.delta,
    )
    .map_err(anyhow::Error::msg)?;
    let cohort = policy
        .parties
        .iter()
        .zip(&audit_setup.samples)
        .map(|(p, s)| CohortEntry {
            party: p.id,
            name: p.name.clone(),
            records: party_data[p.id as usize].len(),
            audit_members: Some(s.members.len()),
            audit_non_members: Some(s.non_members.len()),
        })
        .collect();
    let release = gate_and_report(
        ReleaseInputs {
            policy: &policy,
            policy_text,
            job: &job_id,
            model: strategy.model(),
            findings,
            epsilon_spent: outcome.epsilon_spent,
            noise_std_per_party: plan.noise_std_per_party,
            cohort,
            out: &f.out,
        },
        &mut ledger,
    )
    .map_err(anyhow::Error::msg)?;
    let report = &release.report;
    let released = release.model.is_some();
    let model_path = release.model.as_ref().map(|p| p.display().to_string());
    let model_hash = if released {
        report.model_sha256.clone()
    } else {
        None
    };
    let auc = report
        .attacks
        .iter()
        .map(|a| a.auc)
        .fold(f64::NAN, f64::max);
    let epsilon_lower_bound = report
        .attacks
        .iter()
        .map(|a| a.epsilon.epsilon)
        .chain(report.canary.as_ref().map(|c| c.epsilon_lower_bound))
        .fold(0.0, f64::max);
    let summary_path = f.out.join("summary.json");
    let summary = DemoSummary {
        dataset: data.name.clone(),
        train_records: data.train.len(),
        test_records: data.test.len(),
        parties: n_parties,
        partition: f.partition.clone(),
        alpha: f.alpha,
        strategy: f.strategy.clone(),
        unit: policy.privacy.unit,
        accountant: policy.privacy.accountant.name(),
        no_dp: outcome.no_dp,
        accuracy: outcome.accuracy,
        epsilon_spent: outcome.epsilon_spent,
        epsilon_budget: policy.privacy.epsilon,
        delta: outcome.delta,
        rounds,
        rounds_aborted: outcome.aborted_rounds,
        dropouts_survived: outcome.dropouts_survived,
        noise_multiplier: plan.noise_multiplier,
        policy: policy.source.display().to_string(),
        policy_hash: policy.hash.clone(),
        released,
        model: model_path.clone(),
        model_sha256: model_hash.clone(),
        summary: summary_path.display().to_string(),
        db: Some(db.display().to_string()),
        accuracy_by_round: outcome.rounds.iter().map(|r| r.accuracy).collect(),
        epsilon_by_round: outcome.rounds.iter().map(|r| r.epsilon_spent).collect(),
        decision: report.decision,
        auc,
        epsilon_lower_bound,
        report_html: release.report_html.display().to_string(),
        report_json: release.report_json.display().to_string(),
        failed_checks: report
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| {
                format!(
                    "{} ({}): {:.4} above the limit {:.4} by {:.4}",
                    c.check, c.attack, c.value, c.limit, -c.margin
                )
            })
            .collect(),
    };
    std::fs::write(&summary_path, serde_json::to_string_pretty(&summary)?)?;
    if f.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return blocked(&summary);
    }
    println!(
        "{} parties on {} ({} training / {} test records), {} partition{}",
        n_parties,
        data.name,
        data.train.len(),
        data.test.len(),
        f.partition,
        if matches!(
            how,
            Partition::Dirichlet { .. } | Partition::Quantity { .. }
        ) {
            format!(" α = {}", f.alpha)
        } else {
            String::new()
        }
    );
    println!("{} under secure aggregation, {} rounds", f.strategy, rounds);
    println!("test accuracy       {:.2} %", 100.0 * outcome.accuracy);
    match outcome.epsilon_spent {
        Some(e) => println!(
            "privacy spent       ε = {e:.3} of {} at δ = {} ({}-level, {} accountant)",
            policy.privacy.epsilon,
            outcome.delta,
            match policy.privacy.unit {
                Unit::Record => "record",
                Unit::Party => "party",
                Unit::None => "no",
            },
            policy.privacy.accountant.name()
        ),
        None => println!(
            "privacy spent       NONE — trained without differential privacy; not released"
        ),
    }
    println!(
        "dropouts survived   {} ({} rounds aborted, still charged)",
        outcome.dropouts_survived, outcome.aborted_rounds
    );
    match (&model_path, &model_hash) {
        (Some(p), Some(h)) => println!("model               {p} (sha256 {})", &h[..16]),
        _ => println!("model               not released"),
    }
    println!(
        "audit               AUC {:.3} (highest of {} attacks), empirical ε ≥ {:.3}",
        summary.auc,
        report.attacks.len() + usize::from(report.canary.is_some()),
        summary.epsilon_lower_bound
    );
    println!(
        "decision            {}",
        match summary.decision {
            Decision::Release => "RELEASE: every gate check passed",
            Decision::Block => "BLOCKED: the model was not written",
        }
    );
    println!(
        "report              {} (and {})",
        summary.report_html, summary.report_json
    );
    println!("summary             {}", summary_path.display());
    println!("ledger and log      {}", db.display());
    blocked(&summary)
}

/// A blocked release is a failure of the command: say which checks failed.
fn blocked(s: &DemoSummary) -> Result<()> {
    if s.decision == Decision::Block {
        bail!("release blocked: {}", s.failed_checks.join("; "));
    }
    Ok(())
}
