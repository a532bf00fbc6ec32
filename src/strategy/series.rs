//! The series network (after Pomerat & Segev, "A Comparison of Methods for
//! Neural Network Aggregation", 2023), under secure aggregation and DP.
//!
//! The original trains one party's network, hands it to the next party,
//! which trains a second network on its records plus the first network's
//! outputs, and so on: each hand-over shows a party another party's model.
//! Here every stage is trained by the whole consortium as FedAvg trains a
//! model — one DP secure sum of the stage's update over every party per
//! round — and stage `k` reads each record's features followed by the class
//! probabilities of stages `0 … k−1`, frozen at what the consortium
//! released for them. The rounds are split evenly: stage `k` trains in
//! rounds `k·R/S + 1 … (k+1)·R/S`, so it starts only once stage `k−1` is
//! final. A round sums one stage with the policy's whole clip norm and is
//! charged once: the job's ε composes over every stage's rounds.
//!
//! The released model is the whole series; it predicts with its last stage.

use super::fedavg::ServerStep;
use super::local::LocalTrainer;
use super::state::{StateReader, StateWriter};
use super::{
    Contribution, CoordinatorHalf, PartyHalf, RoundPlan, StateError, TaskResult, TaskSpec,
};
use crate::data::Dataset;
use crate::model::ModelError;
use crate::network::{series_stage_sizes, Network};
use crate::policy::{Policy, Strategy};

const TAG: &[u8] = b"series/1";
const PARTY_TAG: &[u8] = b"series-party/1";

/// The one task of `round`: the stage it trains, over every party.
pub fn plan(policy: &Policy, round: u32) -> RoundPlan {
    let s = &policy.strategy;
    let k = s.stage_of_round(round, policy.privacy.rounds);
    RoundPlan {
        tasks: vec![TaskSpec {
            id: 0,
            label: format!(
                "stage {k} {}",
                if policy.record_sums() {
                    "gradient sum"
                } else {
                    "delta sum"
                }
            ),
            cohort: policy.parties.iter().map(|p| p.id).collect(),
            offset: s.stage_offsets()[k],
            dimension: s.stage_dimensions()[k],
            clip_norm: policy.privacy.clip_norm,
            sum: crate::strategy::SumKind::Update,
        }],
    }
}

/// A fresh series of the policy's shape.
pub fn initial_network(policy: &Policy, seed: u64) -> Network {
    let s = &policy.strategy;
    Network::series(s.inputs, &s.hidden, s.classes, s.stages(), seed)
}

pub struct Series {
    network: Network,
    rounds: u32,
    /// One server optimiser per stage: a stage starts with no momentum.
    servers: Vec<ServerStep>,
    strategy: Strategy,
}

impl Series {
    pub fn new(policy: &Policy, seed: u64, saved: Option<&[u8]>) -> Result<Series, StateError> {
        let mut s = Series {
            network: initial_network(policy, seed),
            rounds: policy.privacy.rounds,
            servers: policy
                .strategy
                .stage_dimensions()
                .into_iter()
                .map(|d| ServerStep::with_dimension(policy, d))
                .collect(),
            strategy: policy.strategy.clone(),
        };
        if let Some(bytes) = saved {
            let mut r = StateReader::new(bytes, TAG)?;
            let params = r.f64s_of(s.network.dimension(), "the series")?;
            s.network
                .set_flat(&params)
                .map_err(|e| StateError(format!("the series: {e}")))?;
            for (k, server) in s.servers.iter_mut().enumerate() {
                let d = s.network.stages()[k].dimension();
                server.set_velocity(&r.f64s_of(d, &format!("stage {k}'s momentum"))?)?;
            }
            r.end()?;
        }
        Ok(s)
    }

    /// The stage `round` trains (the last one after training).
    pub fn stage_of(&self, round: u32) -> usize {
        self.strategy.stage_of_round(round, self.rounds)
    }
}

impl CoordinatorHalf for Series {
    fn downlink(&self, _party: u32) -> Vec<f64> {
        self.network.to_flat()
    }

    fn absorb(&mut self, round: u32, r: TaskResult<'_>) {
        let k = self.stage_of(round);
        let range = self.network.stage_range(k);
        // The plan sums exactly the round's stage; anything else would
        // train a stage out of turn.
        assert!(
            r.task.offset == range.start && r.sum.len() == range.len(),
            "round {round} trains stage {k} (values {range:?}), not offset {} ({} values)",
            r.task.offset,
            r.sum.len()
        );
        let mut params = self.network.to_flat();
        self.servers[k].apply(&mut params[range], &r);
        self.network.set_flat(&params).expect("same dimension");
    }

    fn end_round(&mut self, _round: u32) {}

    fn release_model(&self) -> Network {
        self.network.clone()
    }

    fn save(&self) -> Vec<u8> {
        let mut w = StateWriter::new(TAG);
        w.f64s(&self.network.to_flat());
        for server in &self.servers {
            w.f64s(server.velocity());
        }
        w.finish()
    }
}

/// A party's half: it holds the series it was sent and trains the round's
/// stage on its records extended by the earlier stages' probabilities, as
/// FedAvg's party trains its model.
pub struct SeriesParty {
    network: Network,
    rounds: u32,
    strategy: Strategy,
    /// One trainer per stage, each of its stage's shape.
    trainers: Vec<LocalTrainer>,
}

impl SeriesParty {
    pub fn new(policy: &Policy, saved: Option<&[u8]>) -> Result<SeriesParty, StateError> {
        if let Some(bytes) = saved {
            // Nothing lives at home between rounds: the series is sent
            // again each round and a round's update follows from its secret.
            StateReader::new(bytes, PARTY_TAG)?.end()?;
        }
        let s = &policy.strategy;
        let trainers = (0..s.stages())
            .map(|k| {
                LocalTrainer::for_sizes(
                    policy,
                    &series_stage_sizes(s.inputs, &s.hidden, s.classes, k),
                )
            })
            .collect();
        Ok(SeriesParty {
            network: initial_network(policy, 0),
            rounds: policy.privacy.rounds,
            strategy: s.clone(),
            trainers,
        })
    }

    fn stage(&self, round: u32) -> usize {
        self.strategy.stage_of_round(round, self.rounds)
    }
}

impl PartyHalf for SeriesParty {
    fn receive(&mut self, round: u32, params: &[f64]) -> Result<(), ModelError> {
        self.network.set_flat(params)?;
        let k = self.stage(round);
        self.trainers[k].receive(round, &params[self.network.stage_range(k)])
    }

    fn contribute(
        &mut self,
        round: u32,
        task: &TaskSpec,
        data: &Dataset,
        sample_seed: &[u8; 32],
    ) -> Contribution {
        let k = self.stage(round);
        let offset = self.network.stage_range(k).start;
        // The stage's view of the records, through the frozen stages.
        let view = self.network.stage_dataset(data, k);
        let within_stage = TaskSpec {
            offset: task.offset - offset,
            ..task.clone()
        };
        self.trainers[k].contribute(round, &within_stage, &view, sample_seed)
    }

    fn model(&self) -> Network {
        self.network.clone()
    }

    fn save(&self) -> Vec<u8> {
        StateWriter::new(PARTY_TAG).finish()
    }
}
