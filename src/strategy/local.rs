//! The party half every current strategy shares: it starts each round from
//! the parameters it is sent, computes one local update per round — one
//! gradient per Poisson-sampled record (record unit) or a few local epochs
//! of training (party unit) — and contributes, per task, the slice of that
//! update the task sums. FedAvg's one task takes the whole update; FedMR's
//! tasks take one layer each.

use super::state::{StateError, StateReader, StateWriter};
use super::{rng_from, Contribution, PartyHalf, TaskSpec};
use crate::data::Dataset;
use crate::model::{matrix, Mlp, ModelError, Sgd};
use crate::policy::Policy;
use crate::sampling::bernoulli;

/// One round's update, computed once and sliced per task; wiped when
/// replaced or dropped.
enum Update {
    PerRecord(Vec<Vec<f64>>),
    Whole(Vec<f64>),
}

impl Drop for Update {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        match self {
            Update::PerRecord(list) => list.iter_mut().for_each(|g| g.zeroize()),
            Update::Whole(v) => v.zeroize(),
        }
    }
}

/// Version tag of the (empty) home state: the model is sent again every
/// round and a round's update follows from the round's secret, so nothing
/// else needs to survive a restart.
const TAG: &[u8] = b"local/1";

pub struct LocalTrainer {
    model: Mlp,
    record_level: bool,
    sampling_rate: f64,
    learning_rate: f64,
    momentum: f64,
    local_epochs: u32,
    /// The update of the round it was computed for.
    cached: Option<(u32, Update)>,
}

impl LocalTrainer {
    pub fn new(policy: &Policy, saved: Option<&[u8]>) -> Result<LocalTrainer, StateError> {
        if let Some(bytes) = saved {
            StateReader::new(bytes, TAG)?.end()?;
        }
        Ok(LocalTrainer::for_sizes(policy, &policy.strategy.sizes()))
    }

    /// A trainer of a model of layer widths `sizes` (one stage of a
    /// series), with the policy's unit and optimiser.
    pub fn for_sizes(policy: &Policy, sizes: &[usize]) -> LocalTrainer {
        let s = &policy.strategy;
        LocalTrainer {
            model: Mlp::new(sizes, 0),
            record_level: policy.record_sums(),
            sampling_rate: policy.privacy.sampling_rate,
            learning_rate: s.learning_rate,
            momentum: s.momentum,
            local_epochs: s.local_epochs,
            cached: None,
        }
    }

    fn update(&self, data: &Dataset, sample_seed: &[u8; 32]) -> Update {
        let mut rng = rng_from(sample_seed);
        if self.record_level {
            let sampled: Vec<usize> = (0..data.len())
                .filter(|_| bernoulli(&mut rng, self.sampling_rate))
                .collect();
            if sampled.is_empty() {
                return Update::PerRecord(Vec::new());
            }
            let x = matrix(data, Some(&sampled));
            let y: Vec<usize> = sampled.iter().map(|&i| data.labels[i]).collect();
            return Update::PerRecord(self.model.per_example_grads(x.view(), &y));
        }
        let mut local = self.model.clone();
        let mut params = local.to_flat();
        let start = params.clone();
        let mut opt = Sgd::new(self.learning_rate, self.momentum, params.len());
        for _ in 0..self.local_epochs {
            let order = crate::data::shuffled(data.len(), &mut rng);
            for chunk in order.chunks(32) {
                let x = matrix(data, Some(chunk));
                let y: Vec<usize> = chunk.iter().map(|&i| data.labels[i]).collect();
                let (_, g) = local.loss_and_grad(x.view(), &y);
                opt.step(&mut params, &g);
                local.set_flat(&params).expect("same dimension");
            }
        }
        Update::Whole(params.iter().zip(&start).map(|(a, b)| a - b).collect())
    }
}

impl PartyHalf for LocalTrainer {
    fn receive(&mut self, round: u32, params: &[f64]) -> Result<(), ModelError> {
        // Every task of a round starts from the same parameters: keep the
        // round's update unless the round or the parameters changed.
        let same_round = self.cached.as_ref().is_some_and(|(r, _)| *r == round);
        if !(same_round && self.model.to_flat() == params) {
            self.cached = None;
        }
        self.model.set_flat(params)
    }

    fn contribute(
        &mut self,
        round: u32,
        task: &TaskSpec,
        data: &Dataset,
        sample_seed: &[u8; 32],
    ) -> Contribution {
        if self.cached.as_ref().map(|(r, _)| *r) != Some(round) {
            self.cached = Some((round, self.update(data, sample_seed)));
        }
        let (_, update) = self.cached.as_ref().expect("computed above");
        let slice = task.offset..task.offset + task.dimension;
        match update {
            Update::PerRecord(list) => {
                Contribution::PerRecord(list.iter().map(|g| g[slice.clone()].to_vec()).collect())
            }
            Update::Whole(v) => Contribution::Whole(v[slice].to_vec()),
        }
    }

    fn save(&self) -> Vec<u8> {
        StateWriter::new(TAG).finish()
    }

    fn model(&self) -> crate::network::Network {
        crate::network::Network::single(self.model.clone())
    }
}
