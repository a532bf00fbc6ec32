//! Policy files: TOML, parsed raw (every key known, nothing defaulted that
//! matters) and then validated into a [`Policy`]. Every error names the
//! file, the key and what would be valid, with line and column where the
//! TOML parser reports them. A policy that could not be honoured — too few
//! parties, a budget its rounds would exceed, too few bits — is refused here,
//! before anything runs.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A policy error: where, which key, what is wrong and what would be valid.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
    pub line_col: Option<(usize, usize)>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((l, c)) = self.line_col {
            write!(f, ":{l}:{c}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for PolicyError {}

// ---------------------------------------------------------------- raw form

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    consortium: RawConsortium,
    #[serde(rename = "party", default)]
    parties: Vec<RawParty>,
    privacy: RawPrivacy,
    encoding: RawEncoding,
    strategy: RawStrategy,
    #[serde(default)]
    audit: Option<RawAudit>,
    #[serde(rename = "reviewer", default)]
    reviewers: Vec<RawReviewer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReviewer {
    id: String,
    name: String,
    identity_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsortium {
    id: String,
    threshold: i64,
    max_colluding: i64,
    #[serde(default)]
    min_survivors: Option<i64>,
    #[serde(default)]
    active: bool,
    #[serde(default)]
    neighbors: Option<toml::Value>,
    #[serde(default)]
    phase_timeout_secs: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParty {
    id: i64,
    name: String,
    identity_key: String,
    #[serde(default)]
    records: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    unit: String,
    epsilon: f64,
    delta: f64,
    accountant: String,
    clip_norm: f64,
    #[serde(default)]
    noise_multiplier: Option<f64>,
    #[serde(default)]
    calibrate: bool,
    rounds: i64,
    #[serde(default)]
    sampling_rate: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEncoding {
    bits: i64,
    rotation: String,
    #[serde(default)]
    gamma: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStrategy {
    kind: String,
    model: String,
    inputs: i64,
    classes: i64,
    #[serde(default)]
    hidden: Vec<i64>,
    #[serde(default)]
    learning_rate: Option<f64>,
    #[serde(default)]
    momentum: Option<f64>,
    #[serde(default)]
    local_epochs: Option<i64>,
    #[serde(default)]
    group_size: Option<i64>,
    #[serde(default)]
    warmup_rounds: Option<i64>,
    #[serde(default)]
    stages: Option<i64>,
    #[serde(default)]
    public_set: Option<String>,
    #[serde(default)]
    public_set_sha256: Option<String>,
    #[serde(default)]
    student_epochs: Option<i64>,
    #[serde(default)]
    vote_noise_std: Option<f64>,
    #[serde(default)]
    finetune_steps: Option<i64>,
    #[serde(default)]
    finetune_share: Option<f64>,
    #[serde(default)]
    finetune_learning_rate: Option<f64>,
    #[serde(default)]
    refresh_rounds: Option<i64>,
    #[serde(default)]
    impressions: Option<i64>,
    #[serde(default)]
    impression_ratio: Option<f64>,
    #[serde(default)]
    statistics_share: Option<f64>,
    #[serde(default)]
    feature_bound: Option<f64>,
    #[serde(default)]
    encoder: Option<String>,
    #[serde(default)]
    encoder_sha256: Option<String>,
    #[serde(default)]
    scale: Option<f64>,
    #[serde(default)]
    pseudo_label_momentum: Option<f64>,
    #[serde(default)]
    synthetic_per_class: Option<i64>,
    #[serde(default)]
    synthetic_std: Option<f64>,
    #[serde(default)]
    prototype_refresh_rounds: Option<i64>,
    #[serde(default)]
    supervised: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default)]
    attacks: Vec<String>,
    #[serde(default)]
    max_auc: Option<f64>,
    #[serde(default)]
    max_tpr_at_fpr: Option<RawTprAtFpr>,
    #[serde(default)]
    max_epsilon_lower_bound: Option<f64>,
    #[serde(default)]
    confidence: Option<f64>,
    #[serde(default)]
    canaries: Option<RawCanaries>,
    #[serde(default)]
    budget_share: Option<f64>,
    #[serde(default)]
    require_sign_off: Option<bool>,
}

/// `canaries = 2000` or `canaries = "auto"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawCanaries {
    Count(i64),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTprAtFpr {
    fpr: f64,
    tpr: f64,
}

// ------------------------------------------------------------ typed policy

/// Whose contribution the noise hides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// One record of the union (distributed DP-SGD).
    Record,
    /// One party's whole update.
    Party,
    /// No DP at all; only accepted behind an explicit switch, never released.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountantKind {
    /// zCDP through opendp's maps, composition and conversion.
    Zcdp,
    /// Rényi DP of the Poisson-subsampled Gaussian.
    Rdp,
}

impl AccountantKind {
    pub fn name(self) -> &'static str {
        match self {
            AccountantKind::Zcdp => "zcdp",
            AccountantKind::Rdp => "rdp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rotation {
    Hadamard,
    None,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum Neighbours {
    All,
    Fixed(u32),
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Consortium {
    pub id: String,
    pub threshold: usize,
    pub max_colluding: usize,
    pub min_survivors: usize,
    pub active: bool,
    pub neighbours: Neighbours,
    pub phase_timeout_secs: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PartyEntry {
    pub id: u32,
    pub name: String,
    /// Hex of the 32-byte ed25519 public key.
    pub identity_key: String,
    pub records: Option<u64>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Privacy {
    pub unit: Unit,
    pub epsilon: f64,
    pub delta: f64,
    pub accountant: AccountantKind,
    pub clip_norm: f64,
    /// Total noise standard deviation over the clip norm, with the worst-case
    /// number of honest survivors contributing shares.
    pub noise_multiplier: f64,
    pub calibrated: bool,
    pub rounds: u32,
    /// Poisson sampling rate per record (record unit); 1 for the party unit.
    pub sampling_rate: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Encoding {
    pub bits: u8,
    pub rotation: Rotation,
    /// Fixed scale γ, or `None` to derive it from `bits`.
    pub gamma: Option<f64>,
}

/// Which aggregation strategy a job runs, with its own settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StrategyKind {
    /// One secure sum of the whole model over every party per round.
    Fedavg,
    /// Layer-wise recombination: per layer, parties drawn into groups of at
    /// least `group_size`, each group securely averaging that layer; plain
    /// FedAvg for the first `warmup_rounds`.
    Fedmr {
        group_size: usize,
        warmup_rounds: u32,
    },
    /// A series network: `stages` MLPs trained one after another, each for
    /// an equal share of the rounds and each as FedAvg trains a model (one
    /// secure sum of the stage over every party per round); stage `k`
    /// reads the features and the class probabilities of the stages
    /// already trained, frozen.
    Series { stages: u32 },
    /// Transfer learning: the base model is trained as FedAvg and
    /// released; then each party fine-tunes it at home with DP-SGD for
    /// `finetune_steps` steps on `finetune_share` of the job's ρ, and only
    /// counts of the base and fine-tuned models' predictions on its
    /// held-out records leave it, in the audit's noisy sum.
    Transfer {
        finetune_steps: u32,
        finetune_share: f64,
        /// Fine-tuning moves from the base in smaller steps than training
        /// from scratch: a tenth of `learning_rate` unless set.
        finetune_learning_rate: f64,
    },
    /// The average ensemble: each party trains its own model at home with
    /// DP-SGD (`rounds` steps); the members' class probabilities on the
    /// public unlabelled set are securely summed, and a student trained
    /// for `student_epochs` on the averaged soft labels is released.
    /// With `vote_noise_std`, PATE-style instead: members train at home
    /// without noise and their one-hot votes are summed with discrete
    /// Gaussian noise of that std (in votes) — the vote alone pays.
    Ensemble {
        student_epochs: u32,
        vote_noise_std: Option<f64>,
    },
    /// Federated impressions (after Arya et al. 2024): FedAvg whose parties
    /// also train on synthetic "impressions" the coordinator inverts from
    /// the model it sends, matched to the consortium's class histogram and
    /// feature moments. Those come from one noisy secure sum at the start
    /// of the job (`statistics_share` of its ρ, each feature clamped to
    /// ±`feature_bound`); impressions are made first after
    /// `warmup_rounds`, again every `refresh_rounds`, and a party trains
    /// on `impression_ratio` impressions per record of its own.
    Fedimpres {
        warmup_rounds: u32,
        refresh_rounds: u32,
        impressions: u32,
        impression_ratio: f64,
        statistics_share: f64,
        feature_bound: f64,
    },
    /// FST-CBDG (after Yan & Guo 2024): parties hold unlabelled records; a
    /// frozen public encoder embeds them and only a cosine head (rows of
    /// length `scale`, no bias), started at the encoder's class
    /// prototypes, is trained and averaged. Each party self-trains on soft
    /// pseudo-labels (a moving average, weight `pseudo_label_momentum` on
    /// the old, of the head's predictions, kept at home) plus
    /// `synthetic_per_class` class-balanced samples per class drawn from a
    /// Gaussian of std `synthetic_std` around each prototype. Every
    /// `prototype_refresh_rounds` (0: never) the prototypes are refreshed
    /// from a noisy secure sum of pseudo-label-weighted embeddings and
    /// counts, on `statistics_share` of the job's ρ in all. `supervised`
    /// trains the same head on the true labels instead: the linear probe
    /// a reviewer compares with.
    Fstcbdg {
        scale: f64,
        pseudo_label_momentum: f64,
        synthetic_per_class: u32,
        synthetic_std: f64,
        prototype_refresh_rounds: u32,
        statistics_share: f64,
        supervised: bool,
    },
}

impl StrategyKind {
    pub fn name(&self) -> &'static str {
        match self {
            StrategyKind::Fedavg => "fedavg",
            StrategyKind::Fedmr { .. } => "fedmr",
            StrategyKind::Series { .. } => "series",
            StrategyKind::Transfer { .. } => "transfer",
            StrategyKind::Ensemble { .. } => "ensemble",
            StrategyKind::Fedimpres { .. } => "fedimpres",
            StrategyKind::Fstcbdg { .. } => "fstcbdg",
        }
    }

    /// Whether the job's rounds are steps of each party's home DP-SGD
    /// rather than secure sums: the ensemble's members train at home.
    pub fn trains_at_home(&self) -> bool {
        matches!(self, StrategyKind::Ensemble { .. })
    }
}

/// A public, unlabelled set of records every party and the coordinator
/// hold alike: the ensemble's members label it, its student learns from
/// it. Its SHA-256 is in the policy, so every member reads the same
/// records.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PublicSet {
    pub path: PathBuf,
    pub sha256: String,
    pub records: usize,
    /// Row-major features, `records × inputs`.
    #[serde(skip)]
    pub features: std::sync::Arc<Vec<f64>>,
}

impl PublicSet {
    /// The records as a dataset without labels (every label 0).
    pub fn dataset(&self, inputs: usize, classes: usize) -> crate::data::Dataset {
        crate::data::Dataset {
            features: self.features.chunks(inputs).map(<[f64]>::to_vec).collect(),
            labels: vec![0; self.records],
            classes,
            feature_names: (0..inputs).map(|i| format!("x{i}")).collect(),
        }
    }
}

/// Rounds the ensemble has to get its one sum of outputs.
pub const ENSEMBLE_SUM_ATTEMPTS: u32 = 3;

/// Most records a public set may hold: the ensemble's secure sum carries
/// one probability per record and class.
pub const MAX_PUBLIC_RECORDS: usize = 20_000;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Strategy {
    pub kind: StrategyKind,
    pub model: String,
    pub inputs: usize,
    pub classes: usize,
    pub hidden: Vec<usize>,
    pub learning_rate: f64,
    pub momentum: f64,
    pub local_epochs: u32,
    /// The ensemble's public unlabelled set.
    pub public_set: Option<PublicSet>,
    /// FST-CBDG's frozen encoder.
    pub encoder: Option<EncoderFile>,
}

/// A frozen encoder the policy binds by its SHA-256.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EncoderFile {
    pub path: PathBuf,
    pub sha256: String,
    #[serde(skip)]
    pub encoder: std::sync::Arc<crate::encoder::FrozenEncoder>,
}

impl Strategy {
    /// Layer widths from the inputs to the classes (of the first stage, for
    /// a series; of the head on the encoder's embeddings, for FST-CBDG).
    pub fn sizes(&self) -> Vec<usize> {
        if let Some(e) = &self.encoder {
            return vec![e.encoder.dimension(), self.classes];
        }
        let mut sizes = vec![self.inputs];
        sizes.extend(&self.hidden);
        sizes.push(self.classes);
        sizes
    }

    /// Number of model parameters (of every stage, for a series): the
    /// length of the parameters the coordinator sends.
    pub fn dimension(&self) -> usize {
        self.stage_dimensions().iter().sum()
    }

    /// Stages of the network: 1 except for a series.
    pub fn stages(&self) -> usize {
        match self.kind {
            StrategyKind::Series { stages } => stages as usize,
            _ => 1,
        }
    }

    /// Parameters of each stage, in the order they lie in the flat vector.
    pub fn stage_dimensions(&self) -> Vec<usize> {
        if self.encoder.is_some() {
            return vec![layer_parameters(&self.sizes()).iter().sum()];
        }
        (0..self.stages())
            .map(|k| {
                layer_parameters(&crate::network::series_stage_sizes(
                    self.inputs,
                    &self.hidden,
                    self.classes,
                    k,
                ))
                .iter()
                .sum()
            })
            .collect()
    }

    /// Where each stage's parameters start in the flat vector.
    pub fn stage_offsets(&self) -> Vec<usize> {
        self.stage_dimensions()
            .iter()
            .scan(0, |at, d| {
                let start = *at;
                *at += d;
                Some(start)
            })
            .collect()
    }

    /// The stage a series trains in `round` (1-based) of `rounds`: equal
    /// runs of rounds, stage after stage (0 for other strategies).
    pub fn stage_of_round(&self, round: u32, rounds: u32) -> usize {
        let stages = self.stages() as u32;
        let per_stage = (rounds / stages).max(1);
        (round.saturating_sub(1) / per_stage).min(stages - 1) as usize
    }

    /// Parameters of each dense layer (weights and biases) of the first
    /// stage, in the order they lie in the flat parameter vector.
    pub fn layer_dimensions(&self) -> Vec<usize> {
        layer_parameters(&self.sizes())
    }

    /// The vectors one party puts into secure sums in one round, as
    /// (dimension, share of the clip norm), for every kind of round the
    /// strategy runs: the privacy plan bounds a round by the costliest of
    /// them. The shares of one round square-sum to at most 1.
    pub fn round_shapes(&self) -> Vec<Vec<(usize, f64)>> {
        let whole = |d: usize| vec![(d, 1.0)];
        match self.kind {
            StrategyKind::Fedavg => vec![whole(self.dimension())],
            StrategyKind::Fedmr { warmup_rounds, .. } => {
                // A layer of d of the model's D parameters is clipped to
                // c·√(d/D).
                let total = self.dimension() as f64;
                let mut shapes = vec![self
                    .layer_dimensions()
                    .into_iter()
                    .map(|d| (d, (d as f64 / total).sqrt()))
                    .collect()];
                if warmup_rounds > 0 {
                    shapes.push(whole(self.dimension()));
                }
                shapes
            }
            // One stage per round, with the whole clip norm.
            StrategyKind::Series { .. } => self.stage_dimensions().into_iter().map(whole).collect(),
            // A base round is a FedAvg round; an ensemble member's home
            // step is one DP-SGD step of the whole model.
            StrategyKind::Transfer { .. }
            | StrategyKind::Ensemble { .. }
            | StrategyKind::Fedimpres { .. }
            | StrategyKind::Fstcbdg { .. } => {
                vec![whole(self.dimension())]
            }
        }
    }
}

/// Weights and biases of each dense layer of widths `sizes`.
fn layer_parameters(sizes: &[usize]) -> Vec<usize> {
    sizes.windows(2).map(|w| w[0] * w[1] + w[1]).collect()
}

/// Most canaries a policy may ask for.
pub const MAX_CANARIES: u32 = 100_000;
/// Most canaries `"auto"` picks: each adds a coordinate to every training
/// sum.
pub const AUTO_CANARY_CAP: usize = 30_000;
/// `"auto"` without DP, where no ε is claimed: enough canaries to show
/// what training without noise gives away (ε ≈ 5.8 at δ = 10⁻⁵ if all are
/// guessed right).
pub const UNCLAIMED_CANARIES: u32 = 1_000;
/// `"auto"` sizes for ε a little above the claim, so that a perfect attack
/// lands strictly above it.
pub const CANARY_MARGIN: f64 = 1.01;

#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditPolicy {
    pub attacks: Vec<String>,
    pub max_auc: f64,
    pub max_tpr_at_fpr: Option<(f64, f64)>,
    /// `None`: the ε the ledger says was spent.
    pub max_epsilon_lower_bound: Option<f64>,
    pub confidence: f64,
    /// Gradient canaries for the one-run audit: the policy's count, or the
    /// count `"auto"` resolved to (see [`AuditPolicy::canaries_auto`]).
    pub canaries: u32,
    /// `canaries = "auto"`: sized so that the one-run audit can certify the
    /// policy's ε at its δ and confidence (or as near as any count can).
    pub canaries_auto: bool,
    /// Share of the job's budget (zCDP ρ) set aside for the noise on the
    /// population attacks' counts.
    pub budget_share: f64,
    /// A released model is approved only once a listed reviewer has signed
    /// off its report as accepted (and none has rejected it).
    pub require_sign_off: bool,
}

/// A compliance reviewer who may sign off audit reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Reviewer {
    pub id: String,
    pub name: String,
    /// Hex of the 32-byte ed25519 public key.
    pub identity_key: String,
}

/// A validated policy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Policy {
    pub source: PathBuf,
    /// SHA-256 of the file's bytes, hex.
    pub hash: String,
    pub consortium: Consortium,
    pub parties: Vec<PartyEntry>,
    pub privacy: Privacy,
    pub encoding: Encoding,
    pub strategy: Strategy,
    pub audit: AuditPolicy,
    pub reviewers: Vec<Reviewer>,
}

pub const STRATEGIES: &[&str] = &[
    "fedavg",
    "fedmr",
    "series",
    "transfer",
    "ensemble",
    "fedimpres",
    "fstcbdg",
];
/// Most impressions a FedImpres job synthesises (each is sent to every
/// party with the model).
pub const MAX_IMPRESSIONS: i64 = 10_000;
/// Largest encoder file a policy reads.
pub const MAX_ENCODER_BYTES: u64 = 64 << 20;
/// Most stages a series network may have.
pub const MAX_STAGES: i64 = 8;
pub const MODELS: &[&str] = &["softmax", "mlp"];
pub const ATTACKS: &[&str] = &["loss", "lira", "rmia", "canary"];

impl Policy {
    /// The roster's public identity keys by party id.
    pub fn roster_keys(&self) -> std::collections::BTreeMap<u32, shroud_crypto::IdentityPublicKey> {
        self.parties
            .iter()
            .map(|p| {
                let bytes: [u8; 32] = unhex(&p.identity_key)
                    .and_then(|b| b.try_into().ok())
                    .expect("validated policy");
                (
                    p.id,
                    shroud_crypto::IdentityPublicKey::from_bytes(&bytes).expect("validated policy"),
                )
            })
            .collect()
    }

    /// Parses and validates the terms of policy text on their own; `path`
    /// names it in errors. [`Policy::parse`] (with the privacy plan, in
    /// `dp::plan`) also calibrates the noise and refuses terms whose plan
    /// cannot be honoured: use that.
    pub fn parse_terms(path: &Path, text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| toml_error(path, text, e))?;
        Validator { path, text }.validate(raw)
    }

    /// The roster size.
    pub fn parties(&self) -> usize {
        self.parties.len()
    }

    /// Honest survivors whose noise shares alone must meet the budget.
    pub fn honest_survivors(&self) -> usize {
        self.consortium.threshold - self.consortium.max_colluding
    }

    /// Rounds of secure sums a job runs before its audit: the policy's
    /// rounds, except for the ensemble, whose rounds are its members' home
    /// DP-SGD steps and which needs one sum: it has
    /// [`ENSEMBLE_SUM_ATTEMPTS`] rounds to get it (a sum that aborts —
    /// too few survivors, a coordinator restart — is tried again, each
    /// member sending the words it sent before, paid once).
    pub fn sum_rounds(&self) -> u32 {
        match self.strategy.kind.trains_at_home() {
            true => ENSEMBLE_SUM_ATTEMPTS,
            false => self.privacy.rounds,
        }
    }

    /// Whether a round sums one vector per record (DP-SGD's per-record
    /// gradients) rather than one per party (an update after local
    /// training). Record-level DP sums records and party-level DP parties;
    /// without DP, records where the roster states their counts (which
    /// the expected batch needs), else parties.
    pub fn record_sums(&self) -> bool {
        match self.privacy.unit {
            Unit::Record => true,
            Unit::None => self.total_records().is_some(),
            Unit::Party => false,
        }
    }

    /// Records across the roster, where the policy states them.
    pub fn total_records(&self) -> Option<u64> {
        self.parties.iter().map(|p| p.records).sum()
    }
}

fn toml_error(path: &Path, text: &str, e: toml::de::Error) -> PolicyError {
    let line_col = e.span().map(|s| line_col(text, s.start));
    // The parser's message already names the key and the valid choices
    // (`unknown field `x`, expected one of ...`).
    PolicyError {
        file: path.to_path_buf(),
        key: String::new(),
        message: e.message().trim().to_string(),
        line_col,
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Validator<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> PolicyError {
        PolicyError {
            file: self.path.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
            line_col: self.locate(key),
        }
    }

    /// Finds the line where the last segment of a dotted key is assigned,
    /// inside its section, so errors point at the offending line.
    fn locate(&self, key: &str) -> Option<(usize, usize)> {
        let mut parts = key.split('.');
        let section = parts.next()?;
        let name = key.rsplit('.').next()?;
        let name = name.split('[').next()?;
        let mut in_section = false;
        let mut offset = 0;
        for line in self.text.split_inclusive('\n') {
            let t = line.trim_start();
            if t.starts_with('[') {
                let header = t.trim_matches(|c| c == '[' || c == ']' || c == '\n' || c == ' ');
                in_section = header.trim_end_matches(']').trim() == section;
            } else if in_section {
                if let Some(rest) = t.strip_prefix(name) {
                    if rest.trim_start().starts_with('=') {
                        let col = line.len() - t.len() + 1;
                        return Some((self.text[..offset].matches('\n').count() + 1, col));
                    }
                }
            }
            offset += line.len();
        }
        None
    }

    /// An ed25519 public key in hex, as `shroud keygen` prints it.
    fn public_key(&self, key: &str, hex: &str) -> Result<(), PolicyError> {
        let bytes = unhex(hex).filter(|b| b.len() == 32).ok_or_else(|| {
            self.err(
                key,
                "must be 64 hex characters (a 32-byte ed25519 public key, as `shroud keygen` prints)",
            )
        })?;
        let arr: [u8; 32] = bytes.try_into().expect("length checked");
        shroud_crypto::IdentityPublicKey::from_bytes(&arr)
            .map(|_| ())
            .map_err(|_| self.err(key, "is not a valid ed25519 public key"))
    }

    /// The ensemble's public set: a CSV of `inputs` numbers per line (a
    /// first line that is not numbers is a header), relative to the policy
    /// file, whose SHA-256 must be the policy's.
    fn public_set(
        &self,
        file: Option<&str>,
        sha256: Option<&str>,
        inputs: usize,
    ) -> Result<PublicSet, PolicyError> {
        let key = "strategy.public_set";
        let file = file.ok_or_else(|| {
            self.err(
                key,
                "kind = \"ensemble\" needs a public unlabelled set: a CSV file of features, \
                 one record per line, that is no party's data",
            )
        })?;
        // Bounded before it is read: at most MAX_PUBLIC_RECORDS lines of
        // features, each number in a few dozen characters.
        let limit = (MAX_PUBLIC_RECORDS * inputs * 32 + 4096) as u64;
        let (path, bytes, digest) = self.bound_file(
            (key, "strategy.public_set_sha256"),
            file,
            sha256,
            limit,
            &format!("{MAX_PUBLIC_RECORDS} records of {inputs} features"),
            "binds every member to the same records",
        )?;
        let text = String::from_utf8(bytes)
            .map_err(|_| self.err(key, format!("{} is not UTF-8 text", path.display())))?;
        let mut features = Vec::new();
        let mut records = 0;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row: Result<Vec<f64>, _> =
                line.split(',').map(|v| v.trim().parse::<f64>()).collect();
            let row = match row {
                Err(_) if i == 0 => continue,
                Err(_) => {
                    return Err(self.err(
                        key,
                        format!("{} line {}: not a list of numbers", path.display(), i + 1),
                    ))
                }
                Ok(r) => r,
            };
            if row.len() != inputs || row.iter().any(|v| !v.is_finite()) {
                return Err(self.err(
                    key,
                    format!(
                        "{} line {}: {} values, the model reads {inputs} finite features",
                        path.display(),
                        i + 1,
                        row.len()
                    ),
                ));
            }
            features.extend(row);
            records += 1;
        }
        if !(1..=MAX_PUBLIC_RECORDS).contains(&records) {
            return Err(self.err(
                key,
                format!(
                    "{} holds {records} records; a public set holds 1 to {MAX_PUBLIC_RECORDS}",
                    path.display()
                ),
            ));
        }
        Ok(PublicSet {
            path,
            sha256: digest,
            records,
            features: std::sync::Arc::new(features),
        })
    }

    /// A file the policy names (relative to the policy's folder) and binds
    /// by its SHA-256 under `keys.1`: its path, bytes and digest. Refused
    /// when it is above `limit` bytes (checked before reading), unreadable,
    /// or not the file the policy's digest names.
    fn bound_file(
        &self,
        keys: (&str, &str),
        file: &str,
        sha256: Option<&str>,
        limit: u64,
        most: &str,
        why: &str,
    ) -> Result<(PathBuf, Vec<u8>, String), PolicyError> {
        let (key, sha_key) = keys;
        let path = match self.path.parent() {
            Some(dir) if Path::new(file).is_relative() => dir.join(file),
            _ => PathBuf::from(file),
        };
        let cannot =
            |e: std::io::Error| self.err(key, format!("cannot read {}: {e}", path.display()));
        let size = std::fs::metadata(&path).map_err(cannot)?.len();
        if size > limit {
            return Err(self.err(
                key,
                format!(
                    "{} is {size} bytes, more than {most} can take ({limit} bytes)",
                    path.display()
                ),
            ));
        }
        let bytes = std::fs::read(&path).map_err(cannot)?;
        let digest = hex(&Sha256::digest(&bytes));
        match sha256 {
            None => Err(self.err(
                sha_key,
                format!("the SHA-256 {why}; {} has {digest}", path.display()),
            )),
            Some(h) if !h.trim().eq_ignore_ascii_case(&digest) => Err(self.err(
                sha_key,
                format!(
                    "{} has SHA-256 {digest}, not the policy's {}: the file changed since \
                     the policy was signed off",
                    path.display(),
                    h.trim()
                ),
            )),
            Some(_) => Ok((path, bytes, digest)),
        }
    }

    /// FST-CBDG's frozen encoder: bound by its SHA-256, and fitting the
    /// policy's features and classes.
    fn encoder(
        &self,
        file: Option<&str>,
        sha256: Option<&str>,
        inputs: usize,
        classes: usize,
    ) -> Result<EncoderFile, PolicyError> {
        let key = "strategy.encoder";
        let file = file.ok_or_else(|| {
            self.err(
                key,
                "kind = \"fstcbdg\" needs a frozen encoder: a safetensors file such as the one \
                 `shroud data encoder` trains on public data",
            )
        })?;
        let (path, bytes, digest) = self.bound_file(
            (key, "strategy.encoder_sha256"),
            file,
            sha256,
            MAX_ENCODER_BYTES,
            "an encoder",
            "binds every party to the same encoder",
        )?;
        let encoder = crate::encoder::FrozenEncoder::from_bytes(&bytes)
            .map_err(|e| self.err(key, format!("{}: {e}", path.display())))?;
        if encoder.inputs() != inputs || encoder.classes() != classes {
            return Err(self.err(
                key,
                format!(
                    "{} reads {} features into prototypes of {} classes; the policy has {inputs} \
                     features and {classes} classes",
                    path.display(),
                    encoder.inputs(),
                    encoder.classes()
                ),
            ));
        }
        Ok(EncoderFile {
            path,
            sha256: digest,
            encoder: std::sync::Arc::new(encoder),
        })
    }

    fn positive_int(&self, key: &str, v: i64, min: i64, max: i64) -> Result<u64, PolicyError> {
        if v < min || v > max {
            return Err(self.err(
                key,
                format!("must be an integer from {min} to {max}, got {v}"),
            ));
        }
        Ok(v as u64)
    }

    fn finite_in(
        &self,
        key: &str,
        v: f64,
        lo: f64,
        hi: f64,
        what: &str,
    ) -> Result<f64, PolicyError> {
        if !v.is_finite() || v <= lo || v > hi {
            return Err(self.err(key, format!("must be {what}, got {v}")));
        }
        Ok(v)
    }

    fn choice<T: Copy>(&self, key: &str, v: &str, options: &[(&str, T)]) -> Result<T, PolicyError> {
        options
            .iter()
            .find(|(name, _)| *name == v)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let valid: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                self.err(
                    key,
                    format!("must be one of {}, got \"{v}\"", valid.join(", ")),
                )
            })
    }

    fn validate(&self, raw: RawPolicy) -> Result<Policy, PolicyError> {
        let hash = hex(&Sha256::digest(self.text.as_bytes()));

        // [consortium]
        let c = raw.consortium;
        if c.id.trim().is_empty() || c.id.len() > 128 {
            return Err(self.err(
                "consortium.id",
                "must be a non-empty name of at most 128 characters",
            ));
        }
        let n = raw.parties.len();
        if n < 2 {
            return Err(self.err(
                "party",
                format!("the roster needs at least 2 [[party]] entries, it has {n}"),
            ));
        }
        let threshold = self.positive_int("consortium.threshold", c.threshold, 2, 65_536)? as usize;
        if threshold > n {
            return Err(self.err(
                "consortium.threshold",
                format!("{threshold} is above the roster size ({n} parties); use 2 to {n}"),
            ));
        }
        let max_colluding =
            self.positive_int("consortium.max_colluding", c.max_colluding, 0, 65_536)? as usize;
        if max_colluding >= threshold {
            return Err(self.err(
                "consortium.max_colluding",
                format!(
                    "{max_colluding} must be below the threshold ({threshold}): the honest survivors' \
                     noise must cover the budget, so use 0 to {}",
                    threshold - 1
                ),
            ));
        }
        let min_survivors = match c.min_survivors {
            None => threshold,
            Some(m) => {
                let m = self.positive_int("consortium.min_survivors", m, 1, n as i64)? as usize;
                if m < threshold {
                    return Err(self.err(
                        "consortium.min_survivors",
                        format!("{m} is below the threshold ({threshold}); use {threshold} to {n}"),
                    ));
                }
                m
            }
        };
        let neighbours = match &c.neighbors {
            None => Neighbours::All,
            Some(toml::Value::String(s)) if s == "all" => Neighbours::All,
            Some(toml::Value::Integer(k)) if *k >= 1 && (*k as usize) < n => {
                Neighbours::Fixed(*k as u32)
            }
            Some(other) => {
                return Err(self.err(
                    "consortium.neighbors",
                    format!(
                        "must be \"all\" or an integer from 1 to {}, got {other}",
                        n - 1
                    ),
                ))
            }
        };
        if let Neighbours::Fixed(k) = neighbours {
            if threshold > k as usize + 1 {
                return Err(self.err(
                    "consortium.threshold",
                    format!(
                        "{threshold} is above the neighbourhood size ({} = {k} neighbours + the party)",
                        k + 1
                    ),
                ));
            }
        }
        let holders = match neighbours {
            Neighbours::All => n,
            Neighbours::Fixed(k) => k as usize + 1,
        };
        // A coordinator that shows two camps of holders two survivor lists
        // collects at most holders + max_colluding shares of a party's two
        // secrets together: 2·threshold must exceed that.
        if c.active
            && shroud_crypto::config::check_collusion(threshold, holders, max_colluding, true)
                .is_err()
        {
            return Err(self.err(
                "consortium.threshold",
                format!(
                    "active mode needs 2·threshold > holders + max_colluding ({holders} + {max_colluding} \
                     in each neighbourhood); got threshold {threshold}: use at least {}, or lower max_colluding",
                    (holders + max_colluding) / 2 + 1
                ),
            ));
        }
        let phase_timeout_secs = match c.phase_timeout_secs {
            None => 60.0,
            Some(t) => self.finite_in(
                "consortium.phase_timeout_secs",
                t,
                0.0,
                86_400.0,
                "a number of seconds in (0, 86400]",
            )?,
        };

        // [[party]]
        let mut parties = Vec::with_capacity(n);
        let mut ids = std::collections::BTreeSet::new();
        for (i, p) in raw.parties.into_iter().enumerate() {
            let key = |k: &str| format!("party[{i}].{k}");
            let id = self.positive_int(&key("id"), p.id, 0, i64::from(u32::MAX))? as u32;
            if !ids.insert(id) {
                return Err(self.err(
                    &key("id"),
                    format!("party id {id} appears twice in the roster"),
                ));
            }
            if p.name.trim().is_empty() {
                return Err(self.err(&key("name"), "must not be empty"));
            }
            self.public_key(&key("identity_key"), &p.identity_key)?;
            let records = match p.records {
                None => None,
                Some(r) => Some(self.positive_int(&key("records"), r, 1, 1 << 40)?),
            };
            parties.push(PartyEntry {
                id,
                name: p.name,
                identity_key: p.identity_key.to_lowercase(),
                records,
            });
        }

        // [privacy]
        let pr = raw.privacy;
        let unit = self.choice(
            "privacy.unit",
            &pr.unit,
            &[
                ("record", Unit::Record),
                ("party", Unit::Party),
                ("none", Unit::None),
            ],
        )?;
        let accountant = self.choice(
            "privacy.accountant",
            &pr.accountant,
            &[("zcdp", AccountantKind::Zcdp), ("rdp", AccountantKind::Rdp)],
        )?;
        let epsilon = self.finite_in(
            "privacy.epsilon",
            pr.epsilon,
            0.0,
            100.0,
            "a number in (0, 100]",
        )?;
        let delta = self.finite_in("privacy.delta", pr.delta, 0.0, 0.1, "a number in (0, 0.1]")?;
        let clip_norm = self.finite_in(
            "privacy.clip_norm",
            pr.clip_norm,
            0.0,
            1e6,
            "a positive number",
        )?;
        let rounds = self.positive_int("privacy.rounds", pr.rounds, 1, 100_000)? as u32;
        let sampling_rate = match (unit, pr.sampling_rate) {
            (Unit::Record, Some(q)) => self.finite_in("privacy.sampling_rate", q, 0.0, 1.0, "a probability in (0, 1]")?,
            (Unit::Record, None) => {
                return Err(self.err(
                    "privacy.sampling_rate",
                    "is required with unit = \"record\": the Poisson sampling rate per record, in (0, 1]",
                ))
            }
            // Without DP the rate still sets the record-level batches.
            (Unit::None, Some(q)) => self.finite_in("privacy.sampling_rate", q, 0.0, 1.0, "a probability in (0, 1]")?,
            (_, Some(_)) => {
                return Err(self.err(
                    "privacy.sampling_rate",
                    "applies only to unit = \"record\"; remove it for unit = \"party\"",
                ))
            }
            (_, None) => 1.0,
        };
        let noise_multiplier = match (pr.noise_multiplier, pr.calibrate && unit != Unit::None) {
            (Some(_), true) => {
                return Err(self.err(
                    "privacy.calibrate",
                    "give either noise_multiplier or calibrate = true, not both",
                ))
            }
            // No DP: no noise, whatever else the file says.
            (_, false) if unit == Unit::None => 0.0,
            (Some(z), false) => {
                self.finite_in("privacy.noise_multiplier", z, 0.0, 1e4, "a positive number")?
            }
            // Filled in by calibration below.
            (None, true) => f64::NAN,
            (None, false) => {
                return Err(self.err(
                    "privacy.noise_multiplier",
                    "is required (or set calibrate = true to derive it from the budget)",
                ))
            }
        };
        // δ must be well below one over the records it protects.
        let protected = match unit {
            Unit::Record => parties
                .iter()
                .map(|p| p.records)
                .sum::<Option<u64>>()
                .ok_or_else(|| {
                    self.err(
                    "party",
                    "with unit = \"record\" every [[party]] needs `records` (its record count), \
                     so that delta can be checked against the number of records",
                )
                })?,
            _ => n as u64,
        };
        if unit != Unit::None && delta > 0.1 / protected as f64 {
            return Err(self.err(
                "privacy.delta",
                format!(
                    "{delta} is not far below one over the {protected} protected {}: use at most {:.1e}",
                    if unit == Unit::Record { "records" } else { "parties" },
                    0.1 / protected as f64
                ),
            ));
        }

        // [encoding]
        let e = raw.encoding;
        let bits = self.positive_int("encoding.bits", e.bits, 8, 32)? as u8;
        let rotation = self.choice(
            "encoding.rotation",
            &e.rotation,
            &[("hadamard", Rotation::Hadamard), ("none", Rotation::None)],
        )?;
        let gamma = match e.gamma {
            None => None,
            Some(g) => Some(self.finite_in("encoding.gamma", g, 0.0, 1e6, "a positive number")?),
        };

        // [strategy]
        let s = raw.strategy;
        if !STRATEGIES.contains(&s.kind.as_str()) {
            return Err(self.err(
                "strategy.kind",
                format!("must be one of {STRATEGIES:?}, got \"{}\"", s.kind),
            ));
        }
        if !MODELS.contains(&s.model.as_str()) {
            return Err(self.err(
                "strategy.model",
                format!("must be one of {MODELS:?}, got \"{}\"", s.model),
            ));
        }
        let inputs = self.positive_int("strategy.inputs", s.inputs, 1, 1 << 20)? as usize;
        let classes = self.positive_int("strategy.classes", s.classes, 2, 1 << 16)? as usize;
        let mut hidden = Vec::new();
        for (i, h) in s.hidden.iter().enumerate() {
            hidden.push(
                self.positive_int(&format!("strategy.hidden[{i}]"), *h, 1, 1 << 16)? as usize,
            );
        }
        if s.model == "softmax" && !hidden.is_empty() {
            return Err(self.err("strategy.hidden", "must be empty for model = \"softmax\""));
        }
        if s.model == "mlp" && hidden.is_empty() {
            return Err(self.err(
                "strategy.hidden",
                "must list at least one layer width for model = \"mlp\"",
            ));
        }
        let learning_rate = match s.learning_rate {
            None => 0.1,
            Some(v) => {
                self.finite_in("strategy.learning_rate", v, 0.0, 100.0, "a positive number")?
            }
        };
        let momentum = match s.momentum {
            None => 0.9,
            Some(v) if (0.0..1.0).contains(&v) => v,
            Some(v) => {
                return Err(self.err("strategy.momentum", format!("must be in [0, 1), got {v}")))
            }
        };
        let local_epochs = match s.local_epochs {
            None => 1,
            Some(v) => self.positive_int("strategy.local_epochs", v, 1, 1000)? as u32,
        };
        // Keys that only some kinds read: anywhere else they are refused,
        // so that a policy never says what it does not do.
        let only: [(&str, bool, &[&str]); 23] = [
            ("strategy.stages", s.stages.is_some(), &["series"]),
            ("strategy.group_size", s.group_size.is_some(), &["fedmr"]),
            (
                "strategy.warmup_rounds",
                s.warmup_rounds.is_some(),
                &["fedmr", "fedimpres"],
            ),
            (
                "strategy.statistics_share",
                s.statistics_share.is_some(),
                &["fedimpres", "fstcbdg"],
            ),
            ("strategy.public_set", s.public_set.is_some(), &["ensemble"]),
            (
                "strategy.vote_noise_std",
                s.vote_noise_std.is_some(),
                &["ensemble"],
            ),
            (
                "strategy.public_set_sha256",
                s.public_set_sha256.is_some(),
                &["ensemble"],
            ),
            (
                "strategy.student_epochs",
                s.student_epochs.is_some(),
                &["ensemble"],
            ),
            (
                "strategy.finetune_steps",
                s.finetune_steps.is_some(),
                &["transfer"],
            ),
            (
                "strategy.finetune_share",
                s.finetune_share.is_some(),
                &["transfer"],
            ),
            (
                "strategy.finetune_learning_rate",
                s.finetune_learning_rate.is_some(),
                &["transfer"],
            ),
            (
                "strategy.refresh_rounds",
                s.refresh_rounds.is_some(),
                &["fedimpres"],
            ),
            (
                "strategy.impressions",
                s.impressions.is_some(),
                &["fedimpres"],
            ),
            (
                "strategy.impression_ratio",
                s.impression_ratio.is_some(),
                &["fedimpres"],
            ),
            ("strategy.encoder", s.encoder.is_some(), &["fstcbdg"]),
            (
                "strategy.encoder_sha256",
                s.encoder_sha256.is_some(),
                &["fstcbdg"],
            ),
            ("strategy.scale", s.scale.is_some(), &["fstcbdg"]),
            (
                "strategy.pseudo_label_momentum",
                s.pseudo_label_momentum.is_some(),
                &["fstcbdg"],
            ),
            (
                "strategy.synthetic_per_class",
                s.synthetic_per_class.is_some(),
                &["fstcbdg"],
            ),
            (
                "strategy.synthetic_std",
                s.synthetic_std.is_some(),
                &["fstcbdg"],
            ),
            (
                "strategy.prototype_refresh_rounds",
                s.prototype_refresh_rounds.is_some(),
                &["fstcbdg"],
            ),
            ("strategy.supervised", s.supervised.is_some(), &["fstcbdg"]),
            (
                "strategy.feature_bound",
                s.feature_bound.is_some(),
                &["fedimpres"],
            ),
        ];
        for (key, set, kinds) in only {
            if set && !kinds.contains(&s.kind.as_str()) {
                let names: Vec<String> = kinds.iter().map(|k| format!("\"{k}\"")).collect();
                return Err(self.err(
                    key,
                    format!("applies only to kind = {}", names.join(" or ")),
                ));
            }
        }
        if matches!(s.kind.as_str(), "transfer" | "ensemble") && unit == Unit::Party {
            return Err(self.err(
                "privacy.unit",
                format!(
                    "kind = \"{}\" trains at each party's home with record-level DP-SGD; \
                     use unit = \"record\"",
                    s.kind
                ),
            ));
        }
        let public_set = match s.kind.as_str() {
            "ensemble" => Some(self.public_set(
                s.public_set.as_deref(),
                s.public_set_sha256.as_deref(),
                inputs,
            )?),
            _ => None,
        };
        let encoder = match s.kind.as_str() {
            "fstcbdg" => {
                if s.model != "softmax" || !hidden.is_empty() {
                    return Err(self.err(
                        "strategy.model",
                        "kind = \"fstcbdg\" trains a linear head on the frozen encoder's \
                         embeddings: use model = \"softmax\" and no hidden layers",
                    ));
                }
                Some(self.encoder(
                    s.encoder.as_deref(),
                    s.encoder_sha256.as_deref(),
                    inputs,
                    classes,
                )?)
            }
            _ => None,
        };
        let kind = match s.kind.as_str() {
            "fedavg" => StrategyKind::Fedavg,
            "fstcbdg" => StrategyKind::Fstcbdg {
                scale: match s.scale {
                    None => 10.0,
                    Some(v) => self.finite_in(
                        "strategy.scale",
                        v,
                        0.0,
                        1000.0,
                        "a positive scale of the cosine head's logits, at most 1000",
                    )?,
                },
                pseudo_label_momentum: match s.pseudo_label_momentum {
                    None => 0.8,
                    Some(v) if (0.0..1.0).contains(&v) => v,
                    Some(v) => {
                        return Err(self.err(
                            "strategy.pseudo_label_momentum",
                            format!(
                                "must be in [0, 1): the weight of a record's old pseudo-label \
                                 in its moving average, got {v}"
                            ),
                        ))
                    }
                },
                synthetic_per_class: match s.synthetic_per_class {
                    None => 10,
                    Some(v) => {
                        self.positive_int("strategy.synthetic_per_class", v, 0, 10_000)? as u32
                    }
                },
                synthetic_std: match s.synthetic_std {
                    None => 0.1,
                    Some(v) => self.finite_in(
                        "strategy.synthetic_std",
                        v,
                        0.0,
                        10.0,
                        "a positive std of the samples drawn around each prototype",
                    )?,
                },
                prototype_refresh_rounds: match s.prototype_refresh_rounds {
                    None => 0,
                    Some(v) => self.positive_int(
                        "strategy.prototype_refresh_rounds",
                        v,
                        0,
                        i64::from(rounds),
                    )? as u32,
                },
                statistics_share: match s.statistics_share {
                    None => 0.05,
                    Some(v) if v > 0.0 && v <= 0.5 => v,
                    Some(v) => {
                        return Err(self.err(
                            "strategy.statistics_share",
                            format!(
                                "must be in (0, 0.5]: the share of the job's ρ the prototype \
                                 refresh sums spend together, got {v}"
                            ),
                        ))
                    }
                },
                supervised: s.supervised.unwrap_or(false),
            },
            "transfer" => StrategyKind::Transfer {
                finetune_steps: match s.finetune_steps {
                    None => 20,
                    Some(v) => self.positive_int("strategy.finetune_steps", v, 1, 100_000)? as u32,
                },
                finetune_share: match s.finetune_share {
                    None => 0.2,
                    Some(v) if v > 0.0 && v <= 0.5 => v,
                    Some(v) => {
                        return Err(self.err(
                            "strategy.finetune_share",
                            format!(
                                "must be in (0, 0.5]: the share of the job's ρ each party's \
                                 home fine-tuning spends, got {v}"
                            ),
                        ))
                    }
                },
                finetune_learning_rate: match s.finetune_learning_rate {
                    None => learning_rate / 10.0,
                    Some(v) => self.finite_in(
                        "strategy.finetune_learning_rate",
                        v,
                        0.0,
                        100.0,
                        "a positive number",
                    )?,
                },
            },
            "ensemble" => StrategyKind::Ensemble {
                student_epochs: match s.student_epochs {
                    None => 50,
                    Some(v) => self.positive_int("strategy.student_epochs", v, 1, 10_000)? as u32,
                },
                vote_noise_std: match s.vote_noise_std {
                    None => None,
                    Some(v) => Some(self.finite_in(
                        "strategy.vote_noise_std",
                        v,
                        0.0,
                        1e6,
                        "a positive std, in votes, of the noise on each summed vote count",
                    )?),
                },
            },
            "fedimpres" => {
                let warmup_rounds = match s.warmup_rounds {
                    None => (rounds / 10).max(1),
                    Some(w) => {
                        self.positive_int("strategy.warmup_rounds", w, 1, i64::from(rounds))? as u32
                    }
                };
                StrategyKind::Fedimpres {
                    warmup_rounds,
                    refresh_rounds: match s.refresh_rounds {
                        None => (rounds / 10).max(1),
                        Some(v) => {
                            self.positive_int("strategy.refresh_rounds", v, 1, i64::from(rounds))?
                                as u32
                        }
                    },
                    impressions: match s.impressions {
                        None => 20 * classes as u32,
                        Some(v) => self.positive_int(
                            "strategy.impressions",
                            v,
                            classes as i64,
                            MAX_IMPRESSIONS,
                        )? as u32,
                    },
                    impression_ratio: match s.impression_ratio {
                        None => 0.5,
                        Some(v) => self.finite_in(
                            "strategy.impression_ratio",
                            v,
                            0.0,
                            10.0,
                            "a positive number of impressions per local record, at most 10",
                        )?,
                    },
                    statistics_share: match s.statistics_share {
                        None => 0.05,
                        Some(v) if v > 0.0 && v <= 0.5 => v,
                        Some(v) => {
                            return Err(self.err(
                                "strategy.statistics_share",
                                format!(
                                    "must be in (0, 0.5]: the share of the job's ρ the one-off \
                                     sum of class counts and feature moments spends, got {v}"
                                ),
                            ))
                        }
                    },
                    feature_bound: match s.feature_bound {
                        None => 4.0,
                        Some(v) => self.finite_in(
                            "strategy.feature_bound",
                            v,
                            0.0,
                            1e6,
                            "a positive bound on each feature's magnitude in the statistics",
                        )?,
                    },
                }
            }
            "series" => {
                let Some(k) = s.stages else {
                    return Err(self.err(
                        "strategy.stages",
                        format!("kind = \"series\" needs a number of stages, 2 to {MAX_STAGES}"),
                    ));
                };
                let stages = self.positive_int("strategy.stages", k, 2, MAX_STAGES)? as u32;
                if rounds % stages != 0 {
                    return Err(self.err(
                        "privacy.rounds",
                        format!(
                            "{rounds} rounds do not split evenly over {stages} stages; use a \
                             multiple of {stages} (each stage trains rounds / stages rounds)"
                        ),
                    ));
                }
                StrategyKind::Series { stages }
            }
            _ => {
                // A group must be able to run a secure sum on its own (at
                // least min_survivors, hence the threshold) and keep two
                // honest members beyond the colluders.
                let least = min_survivors.max(max_colluding + 2);
                // ⌊n/group_size⌋ groups: above half the roster there is
                // one group per layer, which is FedAvg.
                let most = n / 2;
                let why = format!(
                    "a group needs at least max_colluding + 2 = {} members and at least \
                     min_survivors = {min_survivors} to sum alone, and at most half the roster \
                     ({most}) for two groups per layer",
                    max_colluding + 2
                );
                if least > most {
                    return Err(self.err(
                        "strategy.group_size",
                        format!(
                            "kind = \"fedmr\" cannot split {n} parties: {why}; lower \
                             consortium.threshold (or min_survivors, max_colluding) or add parties"
                        ),
                    ));
                }
                let Some(g) = s.group_size else {
                    return Err(self.err(
                        "strategy.group_size",
                        format!(
                            "kind = \"fedmr\" needs a group size: {why}; use {least} to {most}"
                        ),
                    ));
                };
                let group_size = self.positive_int("strategy.group_size", g, 1, n as i64)? as usize;
                if !(least..=most).contains(&group_size) {
                    return Err(self.err(
                        "strategy.group_size",
                        format!("{group_size} does not fit: {why}; use {least} to {most}"),
                    ));
                }
                // Active mode needs no check of its own here: a group's
                // neighbourhoods are no larger than the roster's, which
                // the consortium's threshold already satisfies.
                let warmup_rounds = match s.warmup_rounds {
                    None => 0,
                    Some(w) => {
                        self.positive_int("strategy.warmup_rounds", w, 0, i64::from(rounds))? as u32
                    }
                };
                StrategyKind::Fedmr {
                    group_size,
                    warmup_rounds,
                }
            }
        };
        let strategy = Strategy {
            kind,
            model: s.model,
            inputs,
            classes,
            hidden,
            learning_rate,
            momentum,
            local_epochs,
            public_set,
            encoder,
        };
        if strategy.dimension() > 1 << 26 {
            return Err(self.err(
                "strategy.hidden",
                format!(
                    "the model has {} parameters; the limit is 2^26",
                    strategy.dimension()
                ),
            ));
        }

        // [audit]
        let a = raw.audit.unwrap_or(RawAudit {
            attacks: vec!["loss".into()],
            max_auc: None,
            max_tpr_at_fpr: None,
            max_epsilon_lower_bound: None,
            confidence: None,
            canaries: None,
            budget_share: None,
            require_sign_off: None,
        });
        for (i, name) in a.attacks.iter().enumerate() {
            if !ATTACKS.contains(&name.as_str()) {
                return Err(self.err(
                    &format!("audit.attacks[{i}]"),
                    format!("must be one of {ATTACKS:?}, got \"{name}\""),
                ));
            }
            if strategy.kind.trains_at_home() && name == "canary" {
                return Err(self.err(
                    &format!("audit.attacks[{i}]"),
                    "gradient canaries ride in training sums, and the ensemble's members train \
                     at home: kind = \"ensemble\" is audited with \"loss\", \"lira\" or \"rmia\"",
                ));
            }
            if matches!(
                strategy.kind,
                StrategyKind::Series { .. } | StrategyKind::Fstcbdg { .. }
            ) && matches!(name.as_str(), "lira" | "rmia")
            {
                return Err(self.err(
                    &format!("audit.attacks[{i}]"),
                    format!(
                        "\"{name}\" trains reference models of one network's shape; \
                         kind = \"{}\" is audited with \"loss\" and \"canary\"",
                        strategy.kind.name()
                    ),
                ));
            }
        }
        let max_auc = match a.max_auc {
            None => 0.6,
            Some(v) if (0.5..=1.0).contains(&v) => v,
            Some(v) => {
                return Err(self.err("audit.max_auc", format!("must be in [0.5, 1], got {v}")))
            }
        };
        let max_tpr_at_fpr = match a.max_tpr_at_fpr {
            None => None,
            Some(t) => {
                if !(t.fpr > 0.0 && t.fpr < 1.0) {
                    return Err(self.err(
                        "audit.max_tpr_at_fpr.fpr",
                        format!("must be in (0, 1), got {}", t.fpr),
                    ));
                }
                if !(t.tpr >= t.fpr && t.tpr <= 1.0) {
                    return Err(self.err(
                        "audit.max_tpr_at_fpr.tpr",
                        format!("must be in [fpr, 1], got {}", t.tpr),
                    ));
                }
                Some((t.fpr, t.tpr))
            }
        };
        let max_epsilon_lower_bound = match a.max_epsilon_lower_bound {
            None => None,
            Some(v) => Some(self.finite_in(
                "audit.max_epsilon_lower_bound",
                v,
                0.0,
                100.0,
                "a positive number",
            )?),
        };
        let confidence = match a.confidence {
            None => 0.95,
            Some(v) if v > 0.5 && v < 1.0 => v,
            Some(v) => {
                return Err(self.err("audit.confidence", format!("must be in (0.5, 1), got {v}")))
            }
        };
        let canaries = match a.canaries {
            None => Some(0),
            Some(RawCanaries::Count(v)) => {
                Some(self.positive_int("audit.canaries", v, 0, MAX_CANARIES as i64)? as u32)
            }
            Some(RawCanaries::Word(w)) if w == "auto" => None,
            Some(RawCanaries::Word(w)) => {
                return Err(self.err(
                    "audit.canaries",
                    format!("must be a count from 0 to {MAX_CANARIES} or \"auto\", got \"{w}\""),
                ))
            }
        };
        let canaries_auto = canaries.is_none();
        let canaries = canaries.unwrap_or_else(|| {
            if unit == Unit::None {
                // Nothing is claimed, so nothing to certify: enough to show
                // what the model gives away.
                return UNCLAIMED_CANARIES;
            }
            shroud_audit::canary::canaries_to_certify(
                epsilon * CANARY_MARGIN,
                delta,
                confidence,
                AUTO_CANARY_CAP,
            )
            .canaries as u32
        });
        if strategy.kind.trains_at_home() && canaries > 0 {
            return Err(self.err(
                "audit.canaries",
                "gradient canaries ride in training sums, and the ensemble's members train at \
                 home: use 0",
            ));
        }
        let budget_share = match a.budget_share {
            None => 0.1,
            Some(v) => self.finite_in(
                "audit.budget_share",
                v,
                0.0,
                0.5,
                "a share of the budget in (0, 0.5]",
            )?,
        };

        // [[reviewer]]
        let mut reviewers: Vec<Reviewer> = Vec::new();
        for (i, r) in raw.reviewers.into_iter().enumerate() {
            let key = |k: &str| format!("reviewer[{i}].{k}");
            if r.id.trim().is_empty() || r.id.len() > 64 {
                return Err(self.err(&key("id"), "must be 1 to 64 characters"));
            }
            if reviewers.iter().any(|o| o.id == r.id) {
                return Err(self.err(&key("id"), format!("reviewer `{}` appears twice", r.id)));
            }
            if r.name.trim().is_empty() {
                return Err(self.err(&key("name"), "must not be empty"));
            }
            self.public_key(&key("identity_key"), &r.identity_key)?;
            reviewers.push(Reviewer {
                id: r.id,
                name: r.name,
                identity_key: r.identity_key.to_lowercase(),
            });
        }
        let require_sign_off = a.require_sign_off.unwrap_or(false);
        if require_sign_off && reviewers.is_empty() {
            return Err(self.err(
                "audit.require_sign_off",
                "needs at least one [[reviewer]] (id, name, identity_key) who may sign off",
            ));
        }
        let policy = Policy {
            source: self.path.to_path_buf(),
            hash,
            consortium: Consortium {
                id: c.id,
                threshold,
                max_colluding,
                min_survivors,
                active: c.active,
                neighbours,
                phase_timeout_secs,
            },
            parties,
            privacy: Privacy {
                unit,
                epsilon,
                delta,
                accountant,
                clip_norm,
                noise_multiplier,
                calibrated: pr.calibrate,
                rounds,
                sampling_rate,
            },
            encoding: Encoding {
                bits,
                rotation,
                gamma,
            },
            strategy,
            audit: AuditPolicy {
                attacks: a.attacks,
                max_auc,
                max_tpr_at_fpr,
                max_epsilon_lower_bound,
                confidence,
                canaries,
                canaries_auto,
                budget_share,
                require_sign_off,
            },
            reviewers,
        };
        Ok(policy)
    }
}

/// The text of a policy file.
pub fn read_policy_file(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|e| PolicyError {
        file: path.to_path_buf(),
        key: String::new(),
        message: format!("cannot read the policy file: {e}"),
        line_col: None,
    })
}

/// An error about `key` of the policy `text`, pointing at the line where
/// the key is set.
pub fn error_at(path: &Path, text: &str, key: &str, message: impl Into<String>) -> PolicyError {
    Validator { path, text }.err(key, message)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}
