//! The demo: a whole consortium job on bundled data, as `shroud demo` runs
//! it. The data set is split and dealt to demo parties, the policy adapted
//! to that roster, and the job run through the job engine — in memory, or
//! with the coordinator serving on a loopback socket (TLS by default) and
//! every party a tokio task with its own connection — ending in the audit
//! report and the release decision. The command line only parses flags and
//! prints; tests call this module directly.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::audit;
use crate::data::{prepare_named, Partition};
use crate::dp::plan::PrivacyPlan;
use crate::job::demo_identity_seed;
use crate::job::local::{self, LocalJob};
use crate::job::session::{party_secret, InputRandomness, Member};
use crate::localnet::{start_coordinator, CoordinatorOptions};
use crate::model::{train_central, Mlp};
use crate::modelnet::partition_dataset;
use crate::net::api::{JobStatus, StartJob};
use crate::net::auth::Signer;
use crate::net::client::Client;
use crate::party::{self, PartyConfig};
use crate::policy::{Policy, Unit};
use crate::release::ReleaseOutcome;
use crate::store::PrivacyLedger;
use rand_core::OsRng;
use shroud_audit::gate::Decision;
use shroud_audit::report::AuditReport;
use shroud_crypto::IdentityKey;

/// What to run: the data, the roster, the policy and its overrides.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Data set: digits, breast_cancer, mnist1d, caravan, wine, or a CSV path.
    pub dataset: String,
    /// Number of parties (default: the policy's roster size).
    pub parties: Option<u32>,
    /// How records are dealt out: dirichlet, iid, pathological, quantity.
    pub partition: String,
    /// Dirichlet concentration α (dirichlet and quantity partitions).
    pub alpha: f64,
    /// Classes per party (pathological partition, ModelNet label sets).
    pub classes_per_party: usize,
    /// Clusters of the class centroids for R, D and S (0: ⌈√classes⌉).
    pub clusters: usize,
    /// Aggregation strategy: fedavg, fedmr or series (default: the
    /// policy's).
    pub strategy: Option<String>,
    /// Series: the number of stages.
    pub stages: Option<u32>,
    /// Records taken from the training split as the public unlabelled set
    /// (`None`: 100 for the ensemble, else none).
    pub public_records: Option<usize>,
    /// Ensemble: aggregate by a noisy vote with this noise std (in votes).
    pub vote_noise_std: Option<f64>,
    /// FedMR: the least number of parties in a layer's group (the policy's
    /// value if it names FedMR).
    pub group_size: Option<u32>,
    /// FedMR: rounds of plain FedAvg before layers are recombined.
    pub warmup_rounds: Option<u32>,
    /// Further `[strategy]` keys to set in the policy (FedImpres' and
    /// FST-CBDG's settings, from a comparison's spec).
    pub strategy_settings: toml::Table,
    /// The policy to run under; `None`: the built-in
    /// `policies/default.toml`.
    pub policy: Option<PathBuf>,
    /// Override the policy's budget ε (the noise is recalibrated if the
    /// policy calibrates).
    pub epsilon: Option<f64>,
    /// Override the policy's number of rounds.
    pub rounds: Option<u32>,
    /// Probability that each party drops out of each round.
    pub dropout: f64,
    /// Seed of the split, the partition, sampling and rounding.
    pub seed: u64,
    /// Run without differential privacy, to measure what privacy costs
    /// (needs --allow-no-dp; the model is never released).
    pub no_dp: bool,
    /// Permit a job without differential privacy.
    pub allow_no_dp: bool,
    /// Output folder for the model and the summary.
    pub out: PathBuf,
    /// Ledger database (default: a fresh OUT/demo.db each run).
    pub db: Option<PathBuf>,
    /// Per-phase deadline in seconds: a silent party is a dropout after it.
    pub phase_timeout: f64,
    /// How the parties reach the coordinator.
    pub transport: Transport,
}

/// How the demo's parties reach its coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// In this process, messages handed over in memory.
    InProcess,
    /// HTTPS on loopback (TLS 1.3, rustls).
    Https,
    /// Plain HTTP on loopback.
    Http,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            dataset: "digits".into(),
            parties: None,
            partition: "dirichlet".into(),
            alpha: 0.5,
            classes_per_party: 2,
            clusters: 0,
            strategy: None,
            group_size: None,
            stages: None,
            public_records: None,
            vote_noise_std: None,
            warmup_rounds: None,
            strategy_settings: toml::Table::new(),
            policy: None,
            epsilon: None,
            rounds: None,
            dropout: 0.05,
            seed: 1,
            no_dp: false,
            allow_no_dp: false,
            out: PathBuf::from("out"),
            db: None,
            phase_timeout: 2.0,
            transport: Transport::Https,
        }
    }
}

/// What a demo job did, as `summary.json` and the command print it.
#[derive(Clone, Debug, Serialize)]
pub struct DemoSummary {
    pub dataset: String,
    pub train_records: usize,
    pub test_records: usize,
    pub parties: usize,
    pub partition: String,
    pub alpha: f64,
    pub strategy: String,
    pub unit: Unit,
    pub accountant: &'static str,
    pub no_dp: bool,
    pub accuracy: f64,
    /// Two-class data: precision, recall, F1 and AUC of the final model on
    /// the test split, the rarer class positive.
    pub test_metrics: Option<crate::evaluate::BinaryMetrics>,
    pub epsilon_spent: Option<f64>,
    /// Test accuracy of the model before the first round (FST-CBDG's
    /// zero-shot head on the encoder's prototypes).
    pub initial_accuracy: f64,
    pub epsilon_budget: f64,
    pub delta: f64,
    pub rounds: u32,
    pub rounds_aborted: usize,
    pub dropouts_survived: usize,
    pub noise_multiplier: f64,
    pub policy: String,
    pub policy_hash: String,
    pub released: bool,
    pub model: Option<String>,
    pub model_sha256: Option<String>,
    pub summary: String,
    pub db: Option<String>,
    /// How parties reached the coordinator.
    pub transport: String,
    pub accuracy_by_round: Vec<f64>,
    pub epsilon_by_round: Vec<Option<f64>>,
    pub decision: Decision,
    pub auc: f64,
    pub epsilon_lower_bound: f64,
    /// The audit's own utility figures (from the parties' DP-noised counts
    /// on their held-out audit records), beside the demo's test set.
    pub audit_utility: Option<shroud_audit::utility::Utility>,
    /// Transfer: the base and fine-tuned models on the parties' held-out
    /// records, from their noisy confusion counts (the fine-tuned models
    /// never leave the parties).
    pub transfer: Option<TransferSummary>,
    /// Party-level local training: how each party's model, trained
    /// locally from the final model, does on the classes the party lacks.
    pub forgetting: Option<Forgetting>,
    pub report_html: String,
    pub report_json: String,
    /// Membership-inference attacks run, the canary audit counted as one.
    pub attacks_and_canaries: usize,
    pub failed_checks: Vec<String>,
}

/// The transfer's figures: what the consortium sees (the parties' noisy
/// counts on their held-out records), and what the demo measures beside.
#[derive(Clone, Debug, Serialize)]
pub struct TransferSummary {
    pub base: serde_json::Value,
    pub fine_tuned: serde_json::Value,
    /// Std of the noise on each summed count.
    pub noise_std: f64,
    pub counts: crate::audit::TransferCounts,
    /// The fine-tuned models on the demo's test split, by party. They never
    /// leave the parties; the demo holds every party's data, so it repeats
    /// each party's fine-tuning (same algorithm, plan and records, fresh
    /// noise) to measure them.
    pub fine_tuned_test: Vec<FineTunedTest>,
    /// Their mean over the parties.
    pub fine_tuned_test_accuracy: f64,
    pub fine_tuned_test_metrics: Option<crate::evaluate::BinaryMetrics>,
}

/// What local training forgets: every party that lacks some classes
/// starts from the job's final download (model, and impressions where the
/// strategy sends them), trains one round locally as its strategy does,
/// and its model is scored on the test records of the classes it holds no
/// record of. Means over those parties.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Forgetting {
    /// Parties that lack at least one class.
    pub parties: usize,
    /// The final model on those records, before local training.
    pub absent_class_accuracy_global: f64,
    /// The parties' locally trained models on them.
    pub absent_class_accuracy_local: f64,
}

/// One party's fine-tuned model on the demo's test split.
#[derive(Clone, Debug, Serialize)]
pub struct FineTunedTest {
    pub party: u32,
    pub accuracy: f64,
    pub test_metrics: Option<crate::evaluate::BinaryMetrics>,
}

/// `policies/default.toml`, built into the binary so that the demo runs
/// from any folder.
pub const DEFAULT_POLICY: &str = include_str!("../policies/default.toml");

/// The partition a name and its parameters describe (`clusters` for the
/// ModelNet label sets R, D and S; 0 picks a default).
pub fn parse_partition(
    name: &str,
    alpha: f64,
    classes_per_party: usize,
    clusters: usize,
) -> Result<Partition> {
    use crate::data::LabelSets;
    let modelnet = |sets| Partition::ModelNet {
        sets,
        k: classes_per_party,
        clusters,
    };
    Ok(match name {
        "R" | "r" => modelnet(LabelSets::Random),
        "D" | "d" => modelnet(LabelSets::Diverse),
        "S" | "s" => modelnet(LabelSets::Similar),
        "iid" => Partition::Iid,
        "dirichlet" => Partition::Dirichlet {
            alpha,
            min_records: 10,
        },
        "quantity" => Partition::Quantity {
            alpha,
            min_records: 10,
        },
        "pathological" => Partition::Pathological {
            k: classes_per_party,
        },
        other => bail!(
            "--partition must be one of iid, dirichlet, pathological, quantity, R, D, S; got `{other}`"
        ),
    })
}

/// Files the demo wrote for the policy to bind by SHA-256: the public
/// set (the ensemble's) and the frozen encoder (FST-CBDG's).
struct BoundFiles<'a> {
    public: Option<(&'a Path, &'a str)>,
    encoder: Option<(&'a Path, &'a str)>,
}

/// The policy, adapted to the demo's data and roster: demo identities for
/// every party, their actual record counts, the data set's shape, and the
/// overrides given on the command line. It is validated like any policy.
fn adapt_policy(
    f: &DemoConfig,
    source: &str,
    mut t: toml::Table,
    parties: &[(u32, usize)],
    inputs: usize,
    classes: usize,
    files: BoundFiles<'_>,
) -> Result<(Policy, String)> {
    let BoundFiles { public, encoder } = files;
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
        if let Some(kind) = &f.strategy {
            // Switching strategy drops the policy's settings of the other.
            if kind != "fedmr" {
                s.remove("group_size");
            }
            if kind != "fedmr" && kind != "fedimpres" {
                s.remove("warmup_rounds");
            }
            if kind != "fedimpres" {
                for key in [
                    "refresh_rounds",
                    "impressions",
                    "impression_ratio",
                    "feature_bound",
                ] {
                    s.remove(key);
                }
            }
            if kind != "fedimpres" && kind != "fstcbdg" {
                s.remove("statistics_share");
            }
            if kind != "fstcbdg" {
                for key in [
                    "encoder",
                    "encoder_sha256",
                    "scale",
                    "pseudo_label_momentum",
                    "synthetic_per_class",
                    "synthetic_std",
                    "prototype_refresh_rounds",
                    "supervised",
                ] {
                    s.remove(key);
                }
            }
            if kind == "fstcbdg" {
                // A linear head on the encoder's embeddings.
                s.insert("model".into(), "softmax".into());
                s.remove("hidden");
            }
            if kind != "series" {
                s.remove("stages");
            }
            if kind != "ensemble" {
                for key in [
                    "public_set",
                    "public_set_sha256",
                    "student_epochs",
                    "vote_noise_std",
                ] {
                    s.remove(key);
                }
            }
            if kind != "transfer" {
                s.remove("finetune_steps");
                s.remove("finetune_share");
            }
            s.insert("kind".into(), kind.clone().into());
        }
        if let Some((path, sha)) = public {
            if s.get("kind").and_then(|k| k.as_str()) == Some("ensemble") {
                s.insert("public_set".into(), path.display().to_string().into());
                s.insert("public_set_sha256".into(), sha.to_string().into());
            }
        }
        if let Some(g) = f.group_size {
            s.insert("group_size".into(), i64::from(g).into());
        }
        if let Some(w) = f.warmup_rounds {
            s.insert("warmup_rounds".into(), i64::from(w).into());
        }
        if let Some(k) = f.stages {
            s.insert("stages".into(), i64::from(k).into());
        }
        if let Some(v) = f.vote_noise_std {
            s.insert("vote_noise_std".into(), v.into());
        }
        if let Some((path, sha)) = encoder {
            s.insert("encoder".into(), path.display().to_string().into());
            s.insert("encoder_sha256".into(), sha.to_string().into());
        }
        for (k, v) in &f.strategy_settings {
            s.insert(k.clone(), v.clone());
        }
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
    if let Some(c) = t.get_mut("consortium").and_then(|c| c.as_table_mut()) {
        c.insert("phase_timeout_secs".into(), f.phase_timeout.into());
    }
    let kind = t
        .get("strategy")
        .and_then(|s| s.get("kind"))
        .and_then(|k| k.as_str())
        .map(str::to_string);
    let audit = t.get_mut("audit").and_then(|a| a.as_table_mut());
    match (kind.as_deref(), audit) {
        // Reference models copy one network's shape; a head on a frozen
        // encoder is audited with the loss attack and canaries.
        (Some("fstcbdg"), Some(a)) => {
            if let Some(list) = a.get_mut("attacks").and_then(|l| l.as_array_mut()) {
                list.retain(|v| !matches!(v.as_str(), Some("lira" | "rmia")));
            }
        }
        // The ensemble's members train at home: no training sum for
        // gradient canaries to ride in.
        (Some("ensemble"), Some(a)) => {
            if let Some(list) = a.get_mut("attacks").and_then(|l| l.as_array_mut()) {
                list.retain(|v| v.as_str() != Some("canary"));
            }
            a.insert("canaries".into(), 0i64.into());
        }
        _ => {}
    }
    let adapted = toml::to_string(&t)?;
    let label = PathBuf::from(format!("{source} (adapted for the demo)"));
    let policy = Policy::parse(&label, &adapted)?;
    Ok((policy, adapted))
}

/// Public records the ensemble's demo sets aside unless told otherwise.
pub const DEFAULT_PUBLIC_RECORDS: usize = 100;

/// Takes the first `n` records of the (shuffled) training split as the
/// public unlabelled set: their features go to OUT/public.csv, their
/// labels nowhere. Returns the file and its SHA-256.
fn split_public(
    data: &mut crate::data::Prepared,
    n: usize,
    out: &Path,
) -> Result<(PathBuf, String)> {
    let train = &data.train;
    if n + 2 * 10 > train.len() {
        bail!(
            "--public-records {n} leaves too few of the {} training records to deal",
            train.len()
        );
    }
    let mut text = String::new();
    for row in &train.features[..n] {
        let line: Vec<String> = row.iter().map(|v| format!("{v}")).collect();
        text += &line.join(",");
        text.push('\n');
    }
    let path = std::fs::canonicalize(out)
        .with_context(|| format!("cannot resolve {}", out.display()))?
        .join("public.csv");
    std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    let sha = crate::policy::hex(&<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
    let rest: Vec<usize> = (n..train.len()).collect();
    data.train = train.subset(&rest);
    Ok((path, sha))
}

/// A demo ready to run: the data dealt to its parties and the policy
/// adapted to them.
pub struct Demo {
    cfg: DemoConfig,
    data: crate::data::Prepared,
    policy: Policy,
    policy_text: String,
    plan: PrivacyPlan,
    party_data: Vec<crate::data::Dataset>,
    job_id: String,
    db: PathBuf,
}

/// Central training on the parties' pooled records: the reference point.
#[derive(Clone, Debug, Serialize)]
pub struct CentralResult {
    pub central: bool,
    pub dataset: String,
    pub accuracy: f64,
    /// As [`DemoSummary::test_metrics`].
    pub test_metrics: Option<crate::evaluate::BinaryMetrics>,
    pub model: Vec<usize>,
    pub train_records: usize,
}

impl Demo {
    /// Checks the configuration, loads and deals the data and adapts the
    /// policy; creates the output folder and, unless a ledger was named,
    /// starts a fresh one.
    pub fn prepare(cfg: DemoConfig) -> Result<Demo> {
        let f = &cfg;
        if !(f.phase_timeout > 0.0 && f.phase_timeout <= 3600.0) {
            bail!(
                "--phase-timeout must be in (0, 3600] seconds, got {}",
                f.phase_timeout
            );
        }
        if !(0.0..1.0).contains(&f.dropout) {
            bail!("--dropout must be in [0, 1), got {}", f.dropout);
        }
        if f.no_dp && !f.allow_no_dp {
            bail!("--no-dp trains without differential privacy; add --allow-no-dp to confirm (the model is never released)");
        }
        let data = prepare_named(&f.dataset, f.seed)?;
        // The policy file, read once: the demo adapts it to its roster and data.
        let (source, policy_text) = match &f.policy {
            Some(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p)
                    .with_context(|| format!("{}: cannot read the policy file", p.display()))?,
            ),
            None => (
                "policies/default.toml (built in)".to_string(),
                DEFAULT_POLICY.to_string(),
            ),
        };
        let policy_table: toml::Table = policy_text
            .parse()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{source}: {}", e.message()))?;
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
        let mut data = data;
        let kind = f.strategy.clone().or_else(|| {
            policy_table
                .get("strategy")
                .and_then(|s| s.get("kind"))
                .and_then(|k| k.as_str())
                .map(str::to_string)
        });
        let fstcbdg = kind.as_deref() == Some("fstcbdg");
        if fstcbdg {
            // The frozen encoder reads the features as they are (digits'
            // counts), standardised with its own public statistics.
            data.standardizer.revert(&mut data.train);
            data.standardizer.revert(&mut data.test);
        }
        let public_records =
            f.public_records
                .unwrap_or(if f.strategy.as_deref() == Some("ensemble") {
                    DEFAULT_PUBLIC_RECORDS
                } else {
                    0
                });
        std::fs::create_dir_all(&f.out)
            .with_context(|| format!("cannot create {}", f.out.display()))?;
        let public = if public_records > 0 {
            Some(split_public(&mut data, public_records, &f.out)?)
        } else {
            None
        };
        let encoder = if fstcbdg {
            let path = std::fs::canonicalize(&f.out)
                .with_context(|| format!("cannot resolve {}", f.out.display()))?
                .join("encoder.safetensors");
            std::fs::write(&path, crate::encoder::DIGITS_ENCODER)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let sha = crate::policy::hex(&<sha2::Sha256 as sha2::Digest>::digest(
                crate::encoder::DIGITS_ENCODER,
            ));
            Some((path, sha))
        } else {
            None
        };
        let how = parse_partition(&f.partition, f.alpha, f.classes_per_party, f.clusters)?;
        let parts = partition_dataset(&data.train, n_parties, &how, f.seed)?;
        let counts: Vec<(u32, usize)> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32, p.len()))
            .collect();
        let (policy, adapted_text) = adapt_policy(
            f,
            &source,
            policy_table,
            &counts,
            data.train.dim(),
            data.train.classes,
            BoundFiles {
                public: public.as_ref().map(|(p, h)| (p.as_path(), h.as_str())),
                encoder: encoder.as_ref().map(|(p, h)| (p.as_path(), h.as_str())),
            },
        )?;
        let plan = PrivacyPlan::for_policy(&policy).map_err(|e| {
            anyhow::anyhow!("{}: `{}`: {}", policy.source.display(), e.key, e.message)
        })?;
        std::fs::create_dir_all(&f.out)
            .with_context(|| format!("cannot create {}", f.out.display()))?;
        let db = f.db.clone().unwrap_or_else(|| f.out.join("demo.db"));
        if f.db.is_none() {
            // A fresh demo ledger each run, so repeated demos do not exhaust
            // one budget; name a ledger to keep it across jobs.
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
        }
        let job_id = format!("demo-{}-{}", data.name, f.seed);
        let party_data = parts.iter().map(|idx| data.train.subset(idx)).collect();
        Ok(Demo {
            cfg,
            data,
            policy,
            policy_text: adapted_text,
            plan,
            party_data,
            job_id,
            db,
        })
    }

    /// The policy as adapted to the demo's roster and data.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The reference: one model trained centrally on the records the
    /// parties train on (each party's audit non-members held out, drawn as
    /// the party draws them), pooled, no DP, no canaries.
    pub fn central(&self) -> CentralResult {
        let mut pooled = crate::data::Dataset {
            features: Vec::new(),
            labels: Vec::new(),
            classes: self.data.train.classes,
            feature_names: self.data.train.feature_names.clone(),
        };
        for (i, d) in self.party_data.iter().enumerate() {
            let secret = party_secret(&demo_identity_seed(i as u32), "audit sample", &self.job_id);
            let sample = audit::draw_sample(i as u32, d, &secret);
            let t = audit::training_set(d, &sample);
            pooled.features.extend(t.features);
            pooled.labels.extend(t.labels);
        }
        let sizes = self.policy.strategy.sizes();
        let seed = self.cfg.seed;
        let mut model = Mlp::new(&sizes, seed);
        train_central(&mut model, &pooled, 30, 32, 0.05, 0.9, seed);
        let network = crate::network::Network::single(model);
        CentralResult {
            central: true,
            dataset: self.data.name.clone(),
            accuracy: network.accuracy(&self.data.test),
            test_metrics: crate::evaluate::binary_metrics(
                &network,
                &self.data.test,
                crate::evaluate::minority_class(&self.data.train),
            ),
            model: sizes,
            train_records: pooled.len(),
        }
    }

    /// Runs the job to its end and writes `summary.json`. `on_round` hears
    /// of each training round as it ends (and whether it aborted, where
    /// the transport tells). A blocked release is not an error here: see
    /// [`DemoSummary::blocked`].
    pub fn run(&self, on_round: &mut dyn FnMut(u32, bool)) -> Result<DemoSummary> {
        let (f, policy, data) = (&self.cfg, &self.policy, &self.data);
        let job = DemoJob {
            f,
            policy,
            policy_text: &self.policy_text,
            test: &data.test,
            positive: crate::evaluate::minority_class(&data.train),
            party_data: &self.party_data,
            job_id: &self.job_id,
        };
        let (outcome, release) = match f.transport {
            Transport::InProcess => job.in_process(&self.db, on_round)?,
            Transport::Https | Transport::Http => job.networked(&self.db, on_round)?,
        };
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
            parties: self.party_data.len(),
            partition: f.partition.clone(),
            alpha: f.alpha,
            strategy: policy.strategy.kind.name().to_string(),
            unit: policy.privacy.unit,
            accountant: policy.privacy.accountant.name(),
            no_dp: outcome.no_dp,
            accuracy: outcome.accuracy,
            test_metrics: outcome.test_metrics,
            epsilon_spent: outcome.epsilon_spent,
            initial_accuracy: crate::strategy::initial_network(policy, f.seed).accuracy(&data.test),
            epsilon_budget: policy.privacy.epsilon,
            delta: outcome.delta,
            rounds: policy.privacy.rounds,
            rounds_aborted: outcome.rounds_aborted,
            dropouts_survived: outcome.dropouts_survived,
            noise_multiplier: self.plan.noise_multiplier,
            policy: policy.source.display().to_string(),
            policy_hash: policy.hash.clone(),
            released,
            model: model_path,
            model_sha256: model_hash,
            summary: summary_path.display().to_string(),
            db: Some(self.db.display().to_string()),
            transport: outcome.transport.clone(),
            accuracy_by_round: outcome.accuracy_by_round.clone(),
            epsilon_by_round: outcome.epsilon_by_round.clone(),
            decision: report.decision,
            auc,
            epsilon_lower_bound,
            audit_utility: report.utility.clone(),
            transfer: match report.transfer.clone() {
                Some(t) => Some(self.transfer_summary(t, &outcome.model)?),
                None => None,
            },
            forgetting: self.forgetting()?,
            report_html: release.report_html.display().to_string(),
            report_json: release.report_json.display().to_string(),
            attacks_and_canaries: report.attacks.len() + usize::from(report.canary.is_some()),
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
        Ok(summary)
    }
}

impl Demo {
    /// See [`Forgetting`]: for strategies whose download is one whole
    /// model (FedAvg, FedImpres, the transfer's base). Each party trains
    /// for the policy's local epochs, as under party-level DP, whatever
    /// the job's unit: a record-level job's parties take one gradient per
    /// record each round and so never train locally during the job.
    fn forgetting(&self) -> Result<Option<Forgetting>> {
        use crate::policy::StrategyKind;
        use crate::strategy::{coordinator_half, party_half, round_plan, Contribution, SumKind};
        if !matches!(
            self.policy.strategy.kind,
            StrategyKind::Fedavg | StrategyKind::Fedimpres { .. } | StrategyKind::Transfer { .. }
        ) {
            return Ok(None);
        }
        let policy = &self.policy;
        let mut local_policy = policy.clone();
        local_policy.privacy.unit = Unit::Party;
        if policy.record_sums() {
            // A record-level job's learning rate is the coordinator's step
            // on the mean gradient, not a step of local SGD on small
            // batches: local training takes a tenth of it (the transfer's
            // fine-tuning default).
            local_policy.strategy.learning_rate = policy.strategy.learning_rate / 10.0;
        }
        let store = PrivacyLedger::open(&self.db)?;
        let Some(rec) = store.job_run(&self.job_id)? else {
            return Ok(None);
        };
        let coordinator = coordinator_half(policy, rec.seed, Some(&rec.strategy_state))
            .map_err(|e| anyhow::anyhow!("the job's saved state: {e}"))?;
        let round = policy.privacy.rounds + 1;
        let plan = round_plan(policy, &self.job_id, policy.privacy.rounds);
        let Some(task) = plan.tasks.iter().find(|t| t.sum == SumKind::Update) else {
            return Ok(None);
        };
        let test = &self.data.test;
        let (mut global, mut local, mut parties) = (0.0, 0.0, 0usize);
        for (i, data) in self.party_data.iter().enumerate() {
            let held: std::collections::BTreeSet<usize> = data.labels.iter().copied().collect();
            let absent: Vec<usize> = (0..test.len())
                .filter(|&r| !held.contains(&test.labels[r]))
                .collect();
            if absent.is_empty() {
                continue;
            }
            let records = test.subset(&absent);
            let mut half =
                party_half(&local_policy, None).map_err(|e| anyhow::anyhow!("party {i}: {e}"))?;
            let downlink = coordinator.downlink(i as u32);
            half.receive(round, &downlink)
                .map_err(|e| anyhow::anyhow!("party {i}: {e}"))?;
            let start = half.model();
            let seed = party_secret(&demo_identity_seed(i as u32), "forgetting", &self.job_id);
            let Contribution::Whole(delta) = half.contribute(round, task, data, &seed) else {
                return Ok(None);
            };
            let mut trained = start.to_flat();
            trained.iter_mut().zip(&delta).for_each(|(p, d)| *p += d);
            let mut after = start.clone();
            after
                .set_flat(&trained)
                .map_err(|e| anyhow::anyhow!("party {i}: {e}"))?;
            global += start.accuracy(&records);
            local += after.accuracy(&records);
            parties += 1;
        }
        Ok((parties > 0).then(|| Forgetting {
            parties,
            absent_class_accuracy_global: global / parties as f64,
            absent_class_accuracy_local: local / parties as f64,
        }))
    }

    fn transfer_summary(
        &self,
        t: crate::audit::TransferCounts,
        base: &crate::network::Network,
    ) -> Result<TransferSummary> {
        let positive = crate::evaluate::minority_class(&self.data.train);
        let fine_tuned_test = self.fine_tuned_test(base, positive)?;
        let n = fine_tuned_test.len().max(1) as f64;
        let mean = |f: &dyn Fn(&crate::evaluate::BinaryMetrics) -> f64| -> Option<f64> {
            let v: Vec<f64> = fine_tuned_test
                .iter()
                .filter_map(|p| p.test_metrics.as_ref().map(f))
                .collect();
            (v.len() == fine_tuned_test.len() && !v.is_empty())
                .then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let fine_tuned_test_metrics = match (
            mean(&|m| m.precision),
            mean(&|m| m.recall),
            mean(&|m| m.f1),
            mean(&|m| m.auc),
        ) {
            (Some(precision), Some(recall), Some(f1), Some(auc)) => {
                Some(crate::evaluate::BinaryMetrics {
                    positive_class: positive,
                    precision,
                    recall,
                    f1,
                    auc,
                })
            }
            _ => None,
        };
        Ok(TransferSummary {
            base: crate::audit::TransferCounts::figures(&t.base, t.classes, positive),
            fine_tuned: crate::audit::TransferCounts::figures(&t.fine_tuned, t.classes, positive),
            noise_std: t.noise_std,
            counts: t,
            fine_tuned_test_accuracy: fine_tuned_test.iter().map(|p| p.accuracy).sum::<f64>() / n,
            fine_tuned_test_metrics,
            fine_tuned_test,
        })
    }

    /// Each party's fine-tuning of `base`, repeated here as the party runs
    /// it, scored on the test split.
    fn fine_tuned_test(
        &self,
        base: &crate::network::Network,
        positive: usize,
    ) -> Result<Vec<FineTunedTest>> {
        let policy = &self.policy;
        let plan = self.plan.finetune.as_deref().unwrap_or(&self.plan);
        let round = policy.sum_rounds() + 1;
        let mut out = Vec::new();
        for (i, d) in self.party_data.iter().enumerate() {
            let id = i as u32;
            let seed = demo_identity_seed(id);
            let sample =
                audit::draw_sample(id, d, &party_secret(&seed, "audit sample", &self.job_id));
            let training = audit::training_set(d, &sample);
            let mut home = crate::job::session::HomeNoise::new(
                plan,
                policy,
                &format!("{} (measured)", self.job_id),
                round,
                id,
                &seed,
                "finetune",
                InputRandomness::Os,
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            let mut party = crate::strategy::party_half(policy, None)?;
            party.receive(round, &base.to_flat())?;
            let tuned = party
                .fine_tune(&training, &mut home)
                .context("the strategy does not fine-tune")?
                .map_err(|e| anyhow::anyhow!(e))?;
            out.push(FineTunedTest {
                party: id,
                accuracy: tuned.accuracy(&self.data.test),
                test_metrics: crate::evaluate::binary_metrics(&tuned, &self.data.test, positive),
            });
        }
        Ok(out)
    }
}

impl DemoSummary {
    /// A blocked release is a failure of the command: says which checks
    /// failed.
    pub fn blocked(&self) -> Result<()> {
        if self.decision == Decision::Block {
            bail!("release blocked: {}", self.failed_checks.join("; "));
        }
        Ok(())
    }
}

/// What the demo reports of a job, however it ran.
struct DemoOutcome {
    /// The model after the last round.
    model: crate::network::Network,
    accuracy: f64,
    test_metrics: Option<crate::evaluate::BinaryMetrics>,
    epsilon_spent: Option<f64>,
    delta: f64,
    rounds_aborted: usize,
    dropouts_survived: usize,
    no_dp: bool,
    accuracy_by_round: Vec<f64>,
    epsilon_by_round: Vec<Option<f64>>,
    transport: String,
}

/// The demo's parties as in-process members: party `i` holds share `i`
/// under the demo's identity for `i`.
fn demo_members(party_data: &[crate::data::Dataset]) -> Vec<Member> {
    party_data
        .iter()
        .enumerate()
        .map(|(i, d)| Member {
            id: i as u32,
            identity_seed: demo_identity_seed(i as u32),
            data: d.clone(),
        })
        .collect()
}

struct DemoJob<'a> {
    f: &'a DemoConfig,
    policy: &'a Policy,
    policy_text: &'a str,
    test: &'a crate::data::Dataset,
    /// The positive class of two-class figures.
    positive: usize,
    party_data: &'a [crate::data::Dataset],
    job_id: &'a str,
}

impl DemoJob<'_> {
    /// Every party and the coordinator in this process, no network: the
    /// same engine and sessions, driven in memory.
    fn in_process(
        &self,
        db: &Path,
        on_round: &mut dyn FnMut(u32, bool),
    ) -> Result<(DemoOutcome, ReleaseOutcome)> {
        let f = self.f;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut ledger = PrivacyLedger::open(db)?;
        let parties = demo_members(self.party_data);
        let status = local::run(
            LocalJob {
                policy: self.policy,
                policy_text: self.policy_text,
                request: StartJob {
                    job: self.job_id.to_string(),
                    seed: Some(f.seed),
                    epsilon: None,
                    rounds: None,
                },
                parties,
                allow_no_dp: f.allow_no_dp,
                dropout: f.dropout,
                dropout_seed: f.seed,
                randomness: InputRandomness::Os,
                out: &f.out,
                tap: None,
            },
            &mut ledger,
            Some(&tx),
            &mut |r| on_round(r, false),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        drop(ledger);
        self.outcome(status, rx, db, "in process (no network)".into())
    }

    /// The coordinator serving on loopback (TLS unless --insecure-http),
    /// each party a tokio task with its own connection and its own records.
    fn networked(
        &self,
        db: &Path,
        on_round: &mut dyn FnMut(u32, bool),
    ) -> Result<(DemoOutcome, ReleaseOutcome)> {
        let (f, policy) = (self.f, self.policy);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let status = rt.block_on(async {
            let operator = IdentityKey::generate(&mut OsRng);
            let tls_dir = f.out.join("tls");
            let c = start_coordinator(CoordinatorOptions {
                policy: policy.clone(),
                policy_text: self.policy_text.to_string(),
                db,
                out: &f.out,
                tls_dir: (f.transport == Transport::Https).then_some(tls_dir.as_path()),
                operator: operator.public(),
                allow_no_dp: f.allow_no_dp,
                observer: Some(tx),
            })
            .await
            .map_err(anyhow::Error::msg)?;
            let tls = c.client_tls().map_err(anyhow::Error::msg)?;
            let parties: Vec<_> = self
                .party_data
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    tokio::spawn(party::run(PartyConfig {
                        policy: policy.clone(),
                        id: i as u32,
                        identity_seed: demo_identity_seed(i as u32),
                        data: d.clone(),
                        coordinator: c.url.clone(),
                        tls: tls.clone(),
                        job: Some(self.job_id.to_string()),
                        once: true,
                        patience: std::time::Duration::from_secs(60),
                        dropout: f.dropout,
                        dropout_seed: local::party_dropout_seed(f.seed, i as u32),
                        randomness: InputRandomness::Os,
                        journal: None,
                        tap: None,
                    }))
                })
                .collect();
            let mut op = Client::new(
                &c.url,
                tls,
                operator,
                Signer::Operator,
                std::time::Duration::from_secs(60),
            )?;
            let mut s: JobStatus = op
                .post_json(
                    "/v1/jobs",
                    self.job_id,
                    &serde_json::json!({ "job": self.job_id, "seed": f.seed }),
                )
                .await?;
            let mut shown = 0;
            while s.state == "running" || s.state == "auditing" {
                s = op
                    .json(
                        &format!("/v1/jobs/{}?after={}&wait_ms=10000", self.job_id, s.version),
                        self.job_id,
                    )
                    .await?;
                let done: Vec<_> = s
                    .history
                    .iter()
                    .filter(|r| r.round <= s.rounds && r.state != "running")
                    .collect();
                for r in &done[shown.min(done.len())..] {
                    on_round(r.round, r.state == "aborted");
                }
                shown = done.len();
            }
            for p in parties {
                match p.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => eprintln!("a party stopped: {e}"),
                    Err(e) => eprintln!("a party task failed: {e}"),
                }
            }
            c.shutdown().await;
            anyhow::Ok(s)
        })?;
        let transport = format!(
            "{} on loopback: {} parties, each a task with its own connection",
            if f.transport == Transport::Http {
                "HTTP"
            } else {
                "HTTPS (TLS 1.3, rustls)"
            },
            self.party_data.len()
        );
        self.outcome(status, rx, db, transport)
    }

    /// What the demo reports of a job that ended, however it ran: the
    /// accuracy after each round from the models the coordinator produced
    /// (the test split never leaves this process), ε from the ledger, and
    /// the report.
    fn outcome(
        &self,
        status: JobStatus,
        rx: std::sync::mpsc::Receiver<crate::coordinator::ObservedSum>,
        db: &Path,
        transport: String,
    ) -> Result<(DemoOutcome, ReleaseOutcome)> {
        let policy = self.policy;
        if !matches!(status.state.as_str(), "released" | "blocked") {
            bail!(
                "job {} ended {}: {}",
                status.job,
                status.state,
                status.reason.unwrap_or_default()
            );
        }
        let mut model = crate::strategy::initial_network(policy, self.f.seed);
        let mut by_round: std::collections::BTreeMap<u32, f64> = Default::default();
        for o in rx.try_iter() {
            if let Some(p) = o.model_after {
                model.set_flat(&p)?;
                by_round.insert(o.round, model.accuracy(self.test));
            }
        }
        let ledger = PrivacyLedger::open(db)?;
        let charges = ledger.charges(Some(self.job_id))?;
        let mut accuracy = by_round.values().next().copied().unwrap_or(0.0);
        let mut accuracy_by_round = Vec::new();
        let mut epsilon_by_round = Vec::new();
        for r in 1..=status.rounds {
            accuracy = by_round.get(&r).copied().unwrap_or(accuracy);
            accuracy_by_round.push(accuracy);
            epsilon_by_round.push(
                charges
                    .iter()
                    .rev()
                    .find(|c| c.round <= r)
                    .map(|c| c.epsilon_after),
            );
        }
        let release = status
            .release
            .as_ref()
            .context("the job ended without a release decision")?;
        let report_json = PathBuf::from(&release.report_json);
        let report: AuditReport = serde_json::from_str(
            &std::fs::read_to_string(&report_json)
                .with_context(|| format!("cannot read {}", report_json.display()))?,
        )?;
        // A round aborted when any of its tasks did; its dropouts count
        // when all of them finished.
        let mut rounds: std::collections::BTreeMap<u32, (bool, usize)> = Default::default();
        for r in status.history.iter().filter(|r| r.round <= status.rounds) {
            let e = rounds.entry(r.round).or_default();
            e.0 |= r.state == "aborted";
            e.1 += r.dropped.len();
        }
        let outcome = DemoOutcome {
            accuracy,
            test_metrics: crate::evaluate::binary_metrics(&model, self.test, self.positive),
            model,
            epsilon_spent: match policy.privacy.unit {
                Unit::None => None,
                _ => Some(ledger.job_spent(self.job_id)?),
            },
            delta: status.delta,
            rounds_aborted: rounds.values().filter(|r| r.0).count(),
            dropouts_survived: rounds.values().filter(|r| !r.0).map(|r| r.1).sum(),
            no_dp: policy.privacy.unit == Unit::None,
            accuracy_by_round,
            epsilon_by_round,
            transport,
        };
        Ok((
            outcome,
            ReleaseOutcome {
                report,
                report_json,
                report_html: PathBuf::from(&release.report_html),
                model: release.model_path.as_ref().map(PathBuf::from),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the demo's job in memory with the parties' randomness given,
    /// and reads back its report.
    fn run_with(randomness: InputRandomness, name: &str) -> (JobStatus, AuditReport) {
        let (status, report, _) = run_demo_job(randomness, name);
        (status, report)
    }

    /// The same, also handing back the demo (its parties' data) and where
    /// the job wrote its files.
    fn run_demo_job(
        randomness: InputRandomness,
        name: &str,
    ) -> (JobStatus, AuditReport, (Demo, PathBuf)) {
        let out = std::env::temp_dir().join(format!("shroud-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let demo = Demo::prepare(DemoConfig {
            rounds: Some(10),
            dropout: 0.0,
            out: out.clone(),
            transport: Transport::InProcess,
            ..DemoConfig::default()
        })
        .unwrap();
        let parties = demo_members(&demo.party_data);
        let mut ledger = PrivacyLedger::open(&demo.db).unwrap();
        let status = local::run(
            LocalJob {
                policy: &demo.policy,
                policy_text: &demo.policy_text,
                request: StartJob {
                    job: demo.job_id.clone(),
                    seed: Some(1),
                    epsilon: None,
                    rounds: None,
                },
                parties,
                allow_no_dp: false,
                dropout: 0.0,
                dropout_seed: 1,
                randomness,
                out: &out,
                tap: None,
            },
            &mut ledger,
            None,
            &mut |_| {},
        )
        .unwrap();
        let dir = out.join(&demo.job_id);
        let text = std::fs::read_to_string(dir.join("audit-report.json")).unwrap();
        (status, serde_json::from_str(&text).unwrap(), (demo, dir))
    }

    /// The report's utility is the parties' own right/wrong counts on their
    /// audit samples under the released model, summed with noise: each
    /// noisy count lies within the noise of the plain sum, and the plain
    /// accuracies lie inside the report's intervals.
    #[test]
    fn the_reported_utility_is_the_parties_counts_under_noise() {
        let (status, report, (demo, dir)) = run_demo_job(InputRandomness::Seeded(3), "utility");
        assert_eq!(status.state, "released", "{status:?}");
        let model =
            crate::network::Network::load_safetensors(&dir.join("model.safetensors")).unwrap();
        let mut plain = [0i64; 4];
        for (i, d) in demo.party_data.iter().enumerate() {
            let secret = party_secret(&demo_identity_seed(i as u32), "audit sample", &demo.job_id);
            let sample = audit::draw_sample(i as u32, d, &secret);
            for (p, c) in plain
                .iter_mut()
                .zip(audit::utility_counts(&model, d, &sample))
            {
                *p += i64::from(c);
            }
        }
        let u = report.utility.expect("the report's utility");
        assert!(u.noise_std > 0.0);
        for (noisy, exact) in u.counts.iter().zip(plain) {
            assert!(
                (noisy - exact).abs() as f64 <= 6.0 * u.noise_std,
                "noisy {:?} against plain {plain:?} (noise std {})",
                u.counts,
                u.noise_std
            );
        }
        let rate = |r: i64, w: i64| r as f64 / (r + w) as f64;
        let (train, test) = (rate(plain[0], plain[1]), rate(plain[2], plain[3]));
        assert!(u.train.lower <= train && train <= u.train.upper, "{u:?}");
        assert!(u.test.lower <= test && test <= u.test.upper, "{u:?}");
        // Held-out audit records are a test set: their plain accuracy is
        // near the model's on the demo's own test split.
        let held_out = model.accuracy(&demo.data.test);
        assert!((test - held_out).abs() < 0.1, "{test} vs {held_out}");
    }

    /// The canaries ride the same noise as the records: with every party's
    /// noise share a tenth of the calibrated σ, the one-run bound exceeds
    /// the ε the ledger charged and the gate blocks; with the calibrated
    /// noise the same job passes that check.
    #[test]
    fn the_canary_audit_blocks_noise_a_tenth_of_the_calibrated() {
        let (status, report) = run_with(
            InputRandomness::WeakNoise {
                seed: 5,
                divisor: 10,
            },
            "weak-noise",
        );
        assert_eq!(status.state, "blocked", "{status:?}");
        let spent = report.epsilon_spent.unwrap();
        let canary = report.canary.as_ref().unwrap();
        assert!(canary.certifiable_max > spent, "{canary:?} vs {spent}");
        assert!(canary.epsilon_lower_bound > spent, "{canary:?} vs {spent}");
        let failed: Vec<_> = report.checks.iter().filter(|c| !c.passed).collect();
        assert!(
            failed
                .iter()
                .any(|c| c.attack.starts_with("canary") && c.check == "epsilon_lower_bound"),
            "{failed:?}"
        );

        let (_, honest) = run_with(InputRandomness::Seeded(5), "honest-noise");
        let c = honest.canary.as_ref().unwrap();
        assert!(
            c.epsilon_lower_bound < honest.epsilon_spent.unwrap(),
            "{c:?}"
        );
        let check = honest
            .checks
            .iter()
            .find(|k| k.attack.starts_with("canary (one-run") && k.check == "epsilon_lower_bound")
            .unwrap();
        assert!(check.passed && check.could_fail, "{check:?}");
    }

    /// The gate decides on confidence bounds, so fresh noise, canaries and
    /// rounding do not flip its decision: the same job run three times, each
    /// with fresh randomness from the operating system, is released three
    /// times, and the population attack's checks keep their margin.
    #[test]
    fn one_job_rerun_gets_one_decision() {
        let decisions: Vec<(String, f64)> = (0..3)
            .map(|i| {
                let (status, report) = run_with(InputRandomness::Os, &format!("rerun-{i}"));
                let auc = report
                    .checks
                    .iter()
                    .find(|c| c.check == "auc_lower_bound")
                    .map_or(f64::NAN, |c| c.value);
                (status.state, auc)
            })
            .collect();
        assert!(
            decisions.iter().all(|(d, _)| d == "released"),
            "{decisions:?}"
        );
    }
}
