//! Transfer learning (after Pomerat & Segev, "A Comparison of Methods for
//! Neural Network Aggregation", 2023), under secure aggregation and DP.
//!
//! In the original one party's trained model is handed to another, which
//! fine-tunes it. Here the base is trained by the whole consortium as
//! FedAvg trains a model and released; each party then fine-tunes it at
//! home with DP-SGD (noise and ledger entry its own, on `finetune_share` of
//! the job's ρ), and the fine-tuned model never leaves the party. Only
//! counts of how the base and the fine-tuned model classify the party's
//! held-out records leave it, in the audit's noisy secure sum.

use super::home::{HomeSgd, NoisySum};
use super::local::LocalTrainer;
use super::state::{StateReader, StateWriter};
use super::{Contribution, PartyHalf, StateError, TaskSpec};
use crate::data::Dataset;
use crate::model::ModelError;
use crate::network::Network;
use crate::policy::{Policy, StrategyKind};

const TAG: &[u8] = b"transfer-party/1";

/// A party's half: FedAvg's party for the base rounds, then the home
/// fine-tuning.
pub struct TransferParty {
    base: LocalTrainer,
    sgd: HomeSgd,
}

impl TransferParty {
    pub fn new(policy: &Policy, saved: Option<&[u8]>) -> Result<TransferParty, StateError> {
        if let Some(bytes) = saved {
            // Fine-tuning happens within the audit's task; nothing of it
            // outlives that task.
            StateReader::new(bytes, TAG)?.end()?;
        }
        let StrategyKind::Transfer {
            finetune_steps,
            finetune_learning_rate,
            ..
        } = policy.strategy.kind
        else {
            return Err(StateError("not a transfer policy".into()));
        };
        Ok(TransferParty {
            base: LocalTrainer::for_sizes(policy, &policy.strategy.sizes()),
            sgd: HomeSgd {
                learning_rate: finetune_learning_rate,
                ..HomeSgd::for_policy(policy, finetune_steps)
            },
        })
    }
}

impl PartyHalf for TransferParty {
    fn receive(&mut self, round: u32, params: &[f64]) -> Result<(), ModelError> {
        self.base.receive(round, params)
    }

    fn contribute(
        &mut self,
        round: u32,
        task: &TaskSpec,
        data: &Dataset,
        sample_seed: &[u8; 32],
    ) -> Contribution {
        self.base.contribute(round, task, data, sample_seed)
    }

    fn fine_tune(
        &mut self,
        data: &Dataset,
        home: &mut dyn NoisySum,
    ) -> Option<Result<Network, String>> {
        let base = self.base.model();
        let mut model = base.as_single().expect("the base is one network").clone();
        Some(
            self.sgd
                .train(&mut model, data, home)
                .map(|()| Network::single(model)),
        )
    }

    fn model(&self) -> Network {
        self.base.model()
    }

    fn save(&self) -> Vec<u8> {
        StateWriter::new(TAG).finish()
    }
}
