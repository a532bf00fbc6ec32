//! Strategies: what each party computes locally and which secure-sum tasks a
//! round needs. Everything that crosses a party boundary is one of those
//! tasks — a cohort of parties summing one vector under secure aggregation
//! with DP noise — so every strategy runs inside SecAgg and DP by
//! construction. `docs/architecture.md` maps each planned strategy onto
//! this trait.

pub mod fedavg;

use rand_chacha::ChaCha20Rng;

use crate::data::Dataset;
use crate::model::Mlp;

/// One party as a strategy sees it: its id and its private records.
pub struct PartyView<'a> {
    pub id: u32,
    pub data: &'a Dataset,
}

/// One secure sum: which parties add which vector.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    /// Task number within the round (bound into the session id).
    pub id: u32,
    /// What the vector is, for logs and reports.
    pub label: String,
    /// The parties that contribute.
    pub cohort: Vec<u32>,
    /// Length of the vector before padding.
    pub dimension: usize,
}

/// A round's tasks. Tasks of one round are independent and may run
/// concurrently; each is charged to the ledger on its own.
#[derive(Clone, Debug)]
pub struct RoundPlan {
    pub tasks: Vec<TaskSpec>,
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

pub trait Strategy {
    fn name(&self) -> &'static str;

    /// The tasks of `round` over the parties still in the job.
    fn plan(&mut self, round: u32, parties: &[u32]) -> RoundPlan;

    /// Party side: the local computation for one task.
    fn contribute(
        &self,
        task: &TaskSpec,
        party: &PartyView<'_>,
        rng: &mut ChaCha20Rng,
    ) -> Contribution;

    /// Coordinator side: fold one task's decoded sum into the global state.
    fn absorb(&mut self, result: TaskResult<'_>);

    /// The model the job releases.
    fn model(&self) -> &Mlp;
}
