//! FedImpres (after Arya et al., "Federated Impression for Learning with
//! Distributed Heterogeneous Data", 2024), under secure aggregation and DP.
//!
//! Parties whose labels are skewed forget, while training locally, the
//! classes they lack. FedImpres runs FedAvg, and the coordinator inverts
//! the model it sends into synthetic "impressions" (see [`super::impressions`])
//! that every party trains on beside its own records.
//!
//! - Round 1 opens with one noisy secure sum of each party's class counts
//!   and feature first and second moments (a statistics sum, charged once
//!   per job). Should it abort before its charge point, rounds 2 and 3
//!   try again; a party sends its statistics at most once.
//! - From the end of round `warmup_rounds` and every `refresh_rounds`
//!   after, the coordinator synthesises impressions from the model it is
//!   about to send — a DP release — and those statistics, and sends them
//!   with the model. That is post-processing: it costs nothing.
//! - A party trains, as FedAvg's party does, on its records plus
//!   `impression_ratio` impressions per record, drawn afresh each round.
//!   The coordinator averages the updates as FedAvg.

use super::fedavg::ServerStep;
use super::impressions::{synthesise, ConsortiumStats, Impressions};
use super::local::LocalTrainer;
use super::state::{StateReader, StateWriter};
use super::{
    public_seed, rng_from, Contribution, CoordinatorHalf, PartyHalf, RoundPlan, StateError,
    SumKind, TaskResult, TaskSpec,
};
use crate::data::Dataset;
use crate::model::{Mlp, ModelError};
use crate::network::Network;
use crate::policy::{Policy, StrategyKind};

const TAG: &[u8] = b"fedimpres/1";
const PARTY_TAG: &[u8] = b"fedimpres-party/1";

/// Rounds whose first task is the statistics sum, until one is in.
pub const STATISTICS_ATTEMPTS: u32 = 3;

struct Settings {
    warmup_rounds: u32,
    refresh_rounds: u32,
    impressions: usize,
    impression_ratio: f64,
    feature_bound: f64,
}

fn settings(policy: &Policy) -> Result<Settings, StateError> {
    match policy.strategy.kind {
        StrategyKind::Fedimpres {
            warmup_rounds,
            refresh_rounds,
            impressions,
            impression_ratio,
            feature_bound,
            ..
        } => Ok(Settings {
            warmup_rounds,
            refresh_rounds,
            impressions: impressions as usize,
            impression_ratio,
            feature_bound,
        }),
        _ => Err(StateError("not a FedImpres policy".into())),
    }
}

/// A round's tasks: FedAvg's one update, after the statistics sum in the
/// first [`STATISTICS_ATTEMPTS`] rounds.
pub fn plan(policy: &Policy, round: u32) -> RoundPlan {
    let mut plan = super::fedavg::plan(policy);
    if round <= STATISTICS_ATTEMPTS.min(policy.privacy.rounds) {
        plan.open_with_statistics(policy, "class counts and feature moments");
    }
    plan
}

/// The coordinator's half: FedAvg's model and step, the consortium's
/// statistics once summed, and the impressions it sends.
pub struct FedImpres {
    model: Mlp,
    server: ServerStep,
    settings: Settings,
    seed: u64,
    stats: Option<ConsortiumStats>,
    /// The impressions and the round after which they were made.
    impressions: Option<(u32, Impressions)>,
}

impl FedImpres {
    pub fn new(policy: &Policy, seed: u64, saved: Option<&[u8]>) -> Result<FedImpres, StateError> {
        let mut f = FedImpres {
            model: super::initial_model(policy, seed),
            server: ServerStep::new(policy),
            settings: settings(policy)?,
            seed,
            stats: None,
            impressions: None,
        };
        let Some(bytes) = saved else {
            return Ok(f);
        };
        let (classes, d) = (policy.strategy.classes, policy.strategy.inputs);
        let dim = f.model.dimension();
        let mut r = StateReader::new(bytes, TAG)?;
        let params = r.f64s_of(dim, "the model")?;
        let velocity = r.f64s_of(dim, "the momentum")?;
        let stats = r.f64s()?;
        let made = r.u32()?;
        let features = r.f64s()?;
        let labels = r.f64s()?;
        r.end()?;
        f.model
            .set_flat(&params)
            .map_err(|e| StateError(format!("model: {e}")))?;
        f.server.set_velocity(&velocity)?;
        if !stats.is_empty() {
            if stats.len() != classes + 2 * d {
                return Err(StateError("the statistics have the wrong length".into()));
            }
            f.stats = Some(ConsortiumStats::from_flat(&stats, classes, d));
        }
        if made > 0 {
            f.impressions = Some((made, parse_impressions(&features, &labels, d, classes)?));
        }
        Ok(f)
    }

    /// The public seed of the impressions made after `round`.
    pub fn synthesis_seed(seed: u64, round: u32) -> [u8; 32] {
        public_seed("impressions", &seed.to_string(), round, 0)
    }
}

fn parse_impressions(
    features: &[f64],
    labels: &[f64],
    d: usize,
    classes: usize,
) -> Result<Impressions, StateError> {
    let n = labels.len();
    if n == 0 || features.len() != n * d {
        return Err(StateError(format!(
            "{} feature values for {n} impressions of {d} features",
            features.len()
        )));
    }
    if let Some(l) = labels
        .iter()
        .find(|l| !(l.fract() == 0.0 && **l >= 0.0 && **l < classes as f64))
    {
        return Err(StateError(format!(
            "an impression's label {l} is not a class"
        )));
    }
    if features.iter().any(|v| !v.is_finite()) {
        return Err(StateError("an impression's feature is not finite".into()));
    }
    Ok(Impressions {
        features: features.chunks(d).map(<[f64]>::to_vec).collect(),
        labels: labels.iter().map(|&l| l as usize).collect(),
    })
}

impl CoordinatorHalf for FedImpres {
    /// The model, then (once made) the number of impressions, their
    /// features row by row and their labels.
    fn downlink(&self, _party: u32) -> Vec<f64> {
        let mut v = self.model.to_flat();
        if let Some((_, imp)) = &self.impressions {
            v.push(imp.labels.len() as f64);
            v.extend(imp.features.iter().flatten());
            v.extend(imp.labels.iter().map(|&l| l as f64));
        }
        v
    }

    fn wants(&self, task: &TaskSpec) -> bool {
        task.sum != SumKind::Statistics || self.stats.is_none()
    }

    fn absorb(&mut self, _round: u32, r: TaskResult<'_>) {
        if r.task.sum == SumKind::Statistics {
            let (classes, d) = (
                self.model.sizes().last().copied().unwrap_or(2),
                self.model.sizes()[0],
            );
            self.stats = Some(ConsortiumStats::from_sum(&r.sum, classes, d));
            return;
        }
        let mut params = self.model.to_flat();
        self.server.apply(&mut params, &r);
        self.model.set_flat(&params).expect("same dimension");
    }

    fn end_round(&mut self, round: u32) {
        let Some(stats) = &self.stats else {
            return;
        };
        let s = &self.settings;
        let due = match &self.impressions {
            None => round >= s.warmup_rounds,
            Some((made, _)) => round >= made + s.refresh_rounds,
        };
        if due {
            let seed = FedImpres::synthesis_seed(self.seed, round);
            let imp = synthesise(&self.model, stats, s.impressions, &seed);
            self.impressions = Some((round, imp));
        }
    }

    fn release_model(&self) -> Network {
        Network::single(self.model.clone())
    }

    fn save(&self) -> Vec<u8> {
        let mut w = StateWriter::new(TAG);
        w.f64s(&self.model.to_flat()).f64s(self.server.velocity());
        w.f64s(&self.stats.as_ref().map(|s| s.to_flat()).unwrap_or_default());
        match &self.impressions {
            Some((made, imp)) => {
                let features: Vec<f64> = imp.features.iter().flatten().copied().collect();
                let labels: Vec<f64> = imp.labels.iter().map(|&l| l as f64).collect();
                w.u32(*made).f64s(&features).f64s(&labels);
            }
            None => {
                w.u32(0).f64s(&[]).f64s(&[]);
            }
        }
        w.finish()
    }
}

/// A party's half: FedAvg's party on its records plus impressions, and
/// its statistics for the one-off sum.
pub struct FedImpresParty {
    local: LocalTrainer,
    dimension: usize,
    inputs: usize,
    classes: usize,
    impression_ratio: f64,
    feature_bound: f64,
    /// How many impressions the policy has the coordinator send.
    count: usize,
    party_level: bool,
    impressions: Option<Impressions>,
}

impl FedImpresParty {
    pub fn new(policy: &Policy, saved: Option<&[u8]>) -> Result<FedImpresParty, StateError> {
        if let Some(bytes) = saved {
            // The impressions come with every round's model.
            StateReader::new(bytes, PARTY_TAG)?.end()?;
        }
        let s = settings(policy)?;
        Ok(FedImpresParty {
            local: LocalTrainer::for_sizes(policy, &policy.strategy.sizes()),
            dimension: policy.strategy.dimension(),
            inputs: policy.strategy.inputs,
            classes: policy.strategy.classes,
            impression_ratio: s.impression_ratio,
            feature_bound: s.feature_bound,
            count: s.impressions,
            party_level: !policy.record_sums(),
            impressions: None,
        })
    }

    /// The party's records and `impression_ratio` impressions per record,
    /// drawn with replacement by the round's secret.
    fn training_set(&self, data: &Dataset, sample_seed: &[u8; 32]) -> Option<Dataset> {
        let imp = self.impressions.as_ref()?;
        let k = (self.impression_ratio * data.len() as f64).round() as usize;
        if k == 0 {
            return None;
        }
        let mut rng = rng_from(&super::derived_secret("impression draw", sample_seed));
        let mut set = data.clone();
        for _ in 0..k {
            let i = (rand_chacha::rand_core::RngCore::next_u64(&mut rng) % imp.labels.len() as u64)
                as usize;
            set.features.push(imp.features[i].clone());
            set.labels.push(imp.labels[i]);
        }
        Some(set)
    }

    /// One record's statistics: its one-hot class, its features clamped
    /// to ±b and their squares.
    fn record_statistics(&self, features: &[f64], label: usize) -> Vec<f64> {
        let b = self.feature_bound;
        let mut v = vec![0.0; self.classes + 2 * self.inputs];
        if label < self.classes {
            v[label] = 1.0;
        }
        for (j, x) in features.iter().enumerate().take(self.inputs) {
            let x = if x.is_finite() { x.clamp(-b, b) } else { 0.0 };
            v[self.classes + j] = x;
            v[self.classes + self.inputs + j] = x * x;
        }
        v
    }
}

impl PartyHalf for FedImpresParty {
    fn receive(&mut self, round: u32, params: &[f64]) -> Result<(), ModelError> {
        let (model, rest) = params.split_at(self.dimension.min(params.len()));
        self.local.receive(round, model)?;
        self.impressions = None;
        let Some((&n, rest)) = rest.split_first() else {
            return Ok(());
        };
        let (d, c) = (self.inputs, self.classes);
        let count = self.count;
        if n != count as f64 || rest.len() != count * (d + 1) {
            return Err(ModelError(format!(
                "the impressions after the model are malformed: {} values announced as {n} \
                 impressions; the policy sends {count} of {d} features and a label",
                rest.len()
            )));
        }
        let (features, labels) = rest.split_at(count * d);
        self.impressions =
            Some(parse_impressions(features, labels, d, c).map_err(|e| ModelError(e.to_string()))?);
        Ok(())
    }

    fn contribute(
        &mut self,
        round: u32,
        task: &TaskSpec,
        data: &Dataset,
        sample_seed: &[u8; 32],
    ) -> Contribution {
        match self.training_set(data, sample_seed) {
            Some(set) => self.local.contribute(round, task, &set, sample_seed),
            None => self.local.contribute(round, task, data, sample_seed),
        }
    }

    fn statistics(&mut self, _task: &TaskSpec, data: &Dataset) -> Result<Contribution, String> {
        let rows: Vec<Vec<f64>> = data
            .features
            .iter()
            .zip(&data.labels)
            .map(|(x, &y)| self.record_statistics(x, y))
            .collect();
        if !self.party_level {
            return Ok(Contribution::PerRecord(rows));
        }
        // Party-level DP: the party's means, each block within its bound.
        let n = rows.len().max(1) as f64;
        let mut mean = vec![0.0; self.classes + 2 * self.inputs];
        for r in &rows {
            mean.iter_mut().zip(r).for_each(|(m, v)| *m += v / n);
        }
        Ok(Contribution::Whole(mean))
    }

    fn model(&self) -> Network {
        self.local.model()
    }

    fn save(&self) -> Vec<u8> {
        StateWriter::new(PARTY_TAG).finish()
    }
}
