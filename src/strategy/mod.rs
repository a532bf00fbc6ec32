//! Strategies: what each party computes locally and which secure-sum tasks a
//! round needs. Everything that crosses a party boundary is one of those
//! tasks — a cohort of parties summing one vector under secure aggregation
//! with DP noise — so every strategy runs inside SecAgg and DP by
//! construction.
//!
//! A strategy has two halves with explicit, serialisable state:
//! - the **coordinator half** ([`CoordinatorHalf`]) absorbs each task's
//!   decoded sum, says what each party starts the next round from, and
//!   holds the model the job releases;
//! - the **party half** ([`PartyHalf`]) receives that, computes locally and
//!   contributes one vector (or one per record) per task.
//!
//! Which tasks a round has is a pure function of the policy, the job and
//! the round ([`round_plan`]): the coordinator announces tasks and every
//! party recomputes them from its own policy before it takes part.
//! `docs/architecture.md` shows how a new strategy plugs in.

pub mod ensemble;
pub mod fedavg;
pub mod fedimpres;
pub mod fedmr;
pub mod fstcbdg;
pub mod home;
pub mod impressions;
mod local;
pub mod series;
pub mod state;
pub mod transfer;

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};

use crate::data::Dataset;
use crate::model::{Mlp, ModelError};
use crate::network::Network;
use crate::policy::{Policy, StrategyKind};
pub use local::LocalTrainer;
pub use state::StateError;

/// One secure sum: which parties add which slice of the model's update.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpec {
    /// Task number within the round (bound into the session id).
    pub id: u32,
    /// What the vector is, for logs and reports.
    pub label: String,
    /// The parties that contribute, ascending.
    pub cohort: Vec<u32>,
    /// The slice of the flat parameter vector the task sums.
    pub offset: usize,
    pub dimension: usize,
    /// The L2 clip norm of each contribution to this task: the policy's
    /// for a whole-model task, a share of it for a slice, so that a party's
    /// tasks in one round together stay within the policy's norm.
    pub clip_norm: f64,
    /// What the vector is.
    pub sum: SumKind,
}

/// What a task's vector holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SumKind {
    /// An update of the model (noisy, charged once per round).
    Update,
    /// What models trained at home output on public data (values in
    /// [0, 1]): see [`PartyHalf::outputs`].
    Outputs,
    /// One-off summary statistics (noisy, charged once per job): see
    /// [`PartyHalf::statistics`] and [`crate::dp::statistics`].
    Statistics,
}

/// A round's tasks. Tasks of one round run one after another; each is a
/// secure sum of its own, and the round is charged once (its tasks'
/// cohorts are disjoint or their clip norms split the policy's).
#[derive(Clone, Debug, PartialEq)]
pub struct RoundPlan {
    pub tasks: Vec<TaskSpec>,
}

/// How one round's tasks compose for privacy.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "composition", rename_all = "lowercase")]
pub enum Composition {
    /// One task over the cohort with the policy's whole clip norm.
    Single,
    /// Tasks whose cohorts are disjoint slice by slice and whose clip
    /// norms, over any one party's tasks, square-sum to the policy's: the
    /// concatenation of a party's contributions has the policy's norm and
    /// each noisy sum sees it once, so the round costs one charge.
    Parallel { tasks: usize, slices: usize },
    /// Sums of what models trained at home output: no noise of their own,
    /// paid for by each party's home training.
    Outputs,
}

impl RoundPlan {
    /// Puts the policy's statistics sum (see [`crate::dp::statistics`])
    /// first, over the first task's cohort, as task 0; the other tasks'
    /// ids move up by one.
    pub(crate) fn open_with_statistics(&mut self, policy: &Policy, label: &str) {
        self.tasks.iter_mut().for_each(|t| t.id += 1);
        let cohort = self
            .tasks
            .first()
            .map(|t| t.cohort.clone())
            .unwrap_or_default();
        self.tasks.insert(
            0,
            TaskSpec {
                id: 0,
                label: label.into(),
                cohort,
                offset: 0,
                dimension: crate::dp::statistics::width(&crate::dp::statistics::blocks(policy)),
                clip_norm: 0.0,
                sum: SumKind::Statistics,
            },
        );
    }

    /// Checks that the round can be charged once at `clip_norm` and says
    /// why: refused when a party would take part twice in one slice or its
    /// tasks' clip norms would square-sum above the policy's.
    pub fn composition(&self, clip_norm: f64) -> Result<Composition, String> {
        // A statistics sum is charged on its own, not as the round's.
        let tasks: Vec<&TaskSpec> = self
            .tasks
            .iter()
            .filter(|t| t.sum != SumKind::Statistics)
            .collect();
        if !tasks.is_empty() && tasks.iter().all(|t| t.sum == SumKind::Outputs) {
            return Ok(Composition::Outputs);
        }
        if tasks.iter().any(|t| t.sum == SumKind::Outputs) {
            return Err("a round mixes outputs sums with noisy updates".into());
        }
        if let [t] = tasks.as_slice() {
            if t.clip_norm <= clip_norm {
                return Ok(Composition::Single);
            }
        }
        let mut slices = std::collections::BTreeMap::<usize, Vec<u32>>::new();
        let mut norm2 = std::collections::BTreeMap::<u32, f64>::new();
        for t in &tasks {
            let members = slices.entry(t.offset).or_default();
            for p in &t.cohort {
                if members.contains(p) {
                    return Err(format!(
                        "party {p} is in two tasks summing parameters from offset {}",
                        t.offset
                    ));
                }
                members.push(*p);
                *norm2.entry(*p).or_default() += t.clip_norm * t.clip_norm;
            }
        }
        // Rounding slack of the √(d/D) shares.
        let limit = clip_norm * clip_norm * (1.0 + 1e-9);
        if let Some((p, n2)) = norm2.iter().find(|(_, &n2)| n2 > limit) {
            return Err(format!(
                "party {p}'s clip norms in one round square-sum to {n2}, above the policy's {}",
                clip_norm * clip_norm
            ));
        }
        Ok(Composition::Parallel {
            tasks: tasks.len(),
            slices: slices.len(),
        })
    }
}

/// What a party hands the encoder for one task.
pub enum Contribution {
    /// One vector per record; each is clipped and rounded on its own and
    /// the party sends their sum (record-level DP).
    PerRecord(Vec<Vec<f64>>),
    /// One vector for the whole party (party-level DP).
    Whole(Vec<f64>),
}

/// The decoded, noisy sum of one task, with who contributed.
pub struct TaskResult<'a> {
    pub task: &'a TaskSpec,
    pub sum: Vec<f64>,
    pub contributors: &'a [u32],
    /// Records each contributor holds (public metadata, used to scale).
    pub records: &'a [usize],
}

/// The coordinator's half of a strategy.
pub trait CoordinatorHalf: Send {
    /// The parameters `party` starts the current round from.
    fn downlink(&self, party: u32) -> Vec<f64>;

    /// Whether the task is still needed: a task the strategy no longer
    /// wants (a one-off statistics sum already in) is not run.
    fn wants(&self, _task: &TaskSpec) -> bool {
        true
    }

    /// One task's decoded sum.
    fn absorb(&mut self, round: u32, result: TaskResult<'_>);

    /// A task that produced no sum (too few survivors).
    fn task_aborted(&mut self, _round: u32, _task: &TaskSpec) {}

    /// Why the job cannot go on, once a task it needed aborted (the
    /// ensemble's last attempt at its one sum).
    fn failure(&self) -> Option<String> {
        None
    }

    /// Training is over before the planned rounds are (the ensemble, once
    /// its one sum is in): the job goes on to its audit.
    fn done(&self) -> bool {
        false
    }

    /// Every task of `round` has finished or aborted.
    fn end_round(&mut self, round: u32);

    /// The model the job audits and releases.
    fn release_model(&self) -> Network;

    /// The state to keep between rounds, as bytes (restored by
    /// [`coordinator_half`]).
    fn save(&self) -> Vec<u8>;
}

/// A party's half of a strategy.
pub trait PartyHalf: Send {
    /// The parameters the coordinator sent for `round`.
    fn receive(&mut self, round: u32, params: &[f64]) -> Result<(), ModelError>;

    /// This party's contribution to one task of `round`. `sample_seed`
    /// is the party's secret for the round: its record sample and local
    /// shuffles follow from it, the same for every task of the round.
    fn contribute(
        &mut self,
        round: u32,
        task: &TaskSpec,
        data: &Dataset,
        sample_seed: &[u8; 32],
    ) -> Contribution;

    /// For a statistics task: this party's statistics, one vector per
    /// record (or one for the party under party-level DP), laid out as
    /// [`crate::dp::statistics::blocks`] says. The encoder clips each
    /// block to its bound. Only strategies that plan statistics are asked.
    fn statistics(&mut self, _task: &TaskSpec, _data: &Dataset) -> Result<Contribution, String> {
        Err("this strategy plans no statistics sum".into())
    }

    /// For an outputs task: trains at home with DP-SGD, each step's noisy
    /// gradient sum from `home`, then returns what the home model outputs
    /// (values in [0, 1]). Only strategies that plan outputs tasks are
    /// asked.
    fn outputs(
        &mut self,
        _round: u32,
        _task: &TaskSpec,
        _data: &Dataset,
        _home: &mut dyn home::NoisySum,
    ) -> Result<Vec<f64>, String> {
        Err("this strategy plans no outputs task".into())
    }

    /// The words this party sent for an earlier attempt at an outputs sum,
    /// kept in its home state: a retry sends the same release again rather
    /// than training (and paying) afresh.
    fn kept_outputs(&self) -> Option<Vec<u32>> {
        None
    }

    /// Keeps the words of an outputs sum for [`PartyHalf::kept_outputs`].
    fn keep_outputs(&mut self, _words: &[u32]) {}

    /// Transfer: fine-tunes the model at home with DP-SGD (each step's
    /// noisy gradient sum from `home`) and returns the fine-tuned model,
    /// which never leaves the party. `None` for other strategies.
    fn fine_tune(
        &mut self,
        _data: &Dataset,
        _home: &mut dyn home::NoisySum,
    ) -> Option<Result<Network, String>> {
        None
    }

    /// The model the party holds (after the audit round's download: the
    /// released model, which it scores its audit sample with).
    fn model(&self) -> Network;

    /// The home state to keep between rounds (a fine-tuned model, pseudo
    /// labels), as bytes the party's journal keeps; restored by
    /// [`party_half`]. What the coordinator sends again each round, or the
    /// party can recompute from its round secret, is not home state.
    fn save(&self) -> Vec<u8>;
}

/// The tasks of `round` (1-based) of `job` under `policy`: a pure function
/// of public inputs, so that parties can recompute what they are asked.
pub fn round_plan(policy: &Policy, job: &str, round: u32) -> RoundPlan {
    match policy.strategy.kind {
        StrategyKind::Fedavg => fedavg::plan(policy),
        StrategyKind::Fedmr {
            group_size,
            warmup_rounds,
        } => {
            if round <= warmup_rounds {
                fedavg::plan(policy)
            } else {
                fedmr::plan(policy, job, round, group_size)
            }
        }
        StrategyKind::Series { .. } => series::plan(policy, round),
        StrategyKind::Transfer { .. } => fedavg::plan(policy),
        StrategyKind::Ensemble { .. } => ensemble::plan(policy),
        StrategyKind::Fedimpres { .. } => fedimpres::plan(policy, round),
        StrategyKind::Fstcbdg { .. } => fstcbdg::plan(policy, round),
    }
}

/// The coordinator half for `policy`, its model initialised from `seed`,
/// or restored from saved state.
pub fn coordinator_half(
    policy: &Policy,
    seed: u64,
    saved: Option<&[u8]>,
) -> Result<Box<dyn CoordinatorHalf>, StateError> {
    Ok(match policy.strategy.kind {
        StrategyKind::Fedavg => Box::new(fedavg::FedAvg::new(policy, seed, saved)?),
        StrategyKind::Fedmr { warmup_rounds, .. } => {
            Box::new(fedmr::FedMr::new(policy, seed, warmup_rounds, saved)?)
        }
        StrategyKind::Series { .. } => Box::new(series::Series::new(policy, seed, saved)?),
        // The base is trained and released as FedAvg trains its model.
        StrategyKind::Transfer { .. } => Box::new(fedavg::FedAvg::new(policy, seed, saved)?),
        StrategyKind::Ensemble { .. } => Box::new(ensemble::Ensemble::new(policy, seed, saved)?),
        StrategyKind::Fedimpres { .. } => Box::new(fedimpres::FedImpres::new(policy, seed, saved)?),
        // The head starts at the encoder's prototypes: no seed.
        StrategyKind::Fstcbdg { .. } => Box::new(fstcbdg::FstCbdg::new(policy, saved)?),
    })
}

/// The party half for `policy`, fresh or restored from its saved home
/// state.
pub fn party_half(policy: &Policy, saved: Option<&[u8]>) -> Result<Box<dyn PartyHalf>, StateError> {
    Ok(match policy.strategy.kind {
        StrategyKind::Series { .. } => Box::new(series::SeriesParty::new(policy, saved)?),
        StrategyKind::Transfer { .. } => Box::new(transfer::TransferParty::new(policy, saved)?),
        StrategyKind::Ensemble { .. } => Box::new(ensemble::Member::new(policy, saved)?),
        StrategyKind::Fedimpres { .. } => Box::new(fedimpres::FedImpresParty::new(policy, saved)?),
        StrategyKind::Fstcbdg { .. } => Box::new(fstcbdg::FstParty::new(policy, saved)?),
        _ => Box::new(LocalTrainer::new(policy, saved)?),
    })
}

/// Most values a coordinator's download can hold under `policy`: the
/// model, and FedImpres' impressions (their count, features and labels)
/// or FST-CBDG's prototypes.
pub fn max_downlink(policy: &Policy) -> usize {
    let s = &policy.strategy;
    match s.kind {
        StrategyKind::Fedimpres { impressions, .. } => {
            s.dimension() + 1 + impressions as usize * (s.inputs + 1)
        }
        StrategyKind::Fstcbdg { .. } => {
            s.dimension() + s.classes * s.encoder.as_ref().map_or(0, |e| e.encoder.dimension())
        }
        _ => s.dimension(),
    }
}

/// A fresh model of the policy's shape (of its first stage, for a series).
pub fn initial_model(policy: &Policy, seed: u64) -> Mlp {
    Mlp::new(&policy.strategy.sizes(), seed)
}

/// A fresh network of the policy's shape: what its coordinator sends.
pub fn initial_network(policy: &Policy, seed: u64) -> Network {
    match policy.strategy.kind {
        StrategyKind::Series { .. } => series::initial_network(policy, seed),
        // The zero-shot head on the frozen encoder.
        StrategyKind::Fstcbdg { .. } => fstcbdg::FstCbdg::new(policy, None)
            .expect("a validated FST-CBDG policy has its encoder")
            .release_model(),
        _ => Network::single(initial_model(policy, seed)),
    }
}

/// Public randomness bound to a job, a round and an index (graph and
/// rotation seeds, group draws): length-prefixed SHA-256.
pub fn public_seed(label: &str, job: &str, round: u32, index: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        label.as_bytes(),
        job.as_bytes(),
        &round.to_le_bytes(),
        &index.to_le_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// A secret for one use (`label`) derived from a party's round secret, so
/// that each use draws its own stream; wiped on drop.
pub(crate) fn derived_secret(label: &str, secret: &[u8; 32]) -> zeroize::Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update((label.len() as u64).to_le_bytes());
    h.update(label.as_bytes());
    h.update(secret);
    zeroize::Zeroizing::new(h.finalize().into())
}

/// A generator from a 32-byte seed.
pub(crate) fn rng_from(seed: &[u8; 32]) -> ChaCha20Rng {
    ChaCha20Rng::from_seed(*seed)
}
