//! FedAvg, the baseline: one task per round over every party.
//!
//! - Record unit (distributed DP-SGD): each party Poisson-samples its
//!   records at rate q and contributes one gradient per sampled record at
//!   the global model; the coordinator divides the noisy sum by the expected
//!   batch `q · Σ records` and takes one momentum-SGD step.
//! - Party unit (DDGauss): each party trains locally from the global model
//!   and contributes its model delta; the coordinator adds the mean delta.

use rand_chacha::ChaCha20Rng;

use super::{Contribution, PartyView, RoundPlan, Strategy, TaskResult, TaskSpec};
use crate::model::{matrix, Mlp, Sgd};
use crate::policy::Unit;
use crate::sampling::bernoulli;

pub struct FedAvg {
    model: Mlp,
    unit: Unit,
    sampling_rate: f64,
    learning_rate: f64,
    momentum: f64,
    local_epochs: u32,
    server: Sgd,
}

impl FedAvg {
    pub fn new(
        model: Mlp,
        unit: Unit,
        sampling_rate: f64,
        learning_rate: f64,
        momentum: f64,
        local_epochs: u32,
    ) -> FedAvg {
        let dim = model.dimension();
        FedAvg {
            model,
            unit,
            sampling_rate,
            learning_rate,
            momentum,
            local_epochs,
            server: Sgd::new(learning_rate, momentum, dim),
        }
    }

    /// The FedAvg of `policy`, from a model initialised with `seed`.
    pub fn for_policy(policy: &crate::policy::Policy, seed: u64) -> FedAvg {
        let s = &policy.strategy;
        let mut sizes = vec![s.inputs];
        sizes.extend(&s.hidden);
        sizes.push(s.classes);
        FedAvg::new(
            Mlp::new(&sizes, seed),
            policy.privacy.unit,
            policy.privacy.sampling_rate,
            s.learning_rate,
            s.momentum,
            s.local_epochs,
        )
    }

    /// Replaces the global model's parameters (a party receiving the
    /// round's model).
    pub fn set_global(&mut self, params: &[f64]) -> Result<(), crate::model::ModelError> {
        self.model.set_flat(params)
    }

    /// The coordinator's state: parameters, then the momentum buffer.
    pub fn server_state(&self) -> (Vec<f64>, Vec<f64>) {
        (self.model.to_flat(), self.server.velocity().to_vec())
    }

    pub fn restore_server_state(
        &mut self,
        params: &[f64],
        velocity: &[f64],
    ) -> Result<(), crate::model::ModelError> {
        self.model.set_flat(params)?;
        self.server.set_velocity(velocity)
    }

    fn record_level(&self) -> bool {
        self.unit != Unit::Party
    }
}

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        "fedavg"
    }

    fn plan(&mut self, _round: u32, parties: &[u32]) -> RoundPlan {
        RoundPlan {
            tasks: vec![TaskSpec {
                id: 0,
                label: if self.record_level() {
                    "gradient sum"
                } else {
                    "model delta sum"
                }
                .into(),
                cohort: parties.to_vec(),
                dimension: self.model.dimension(),
            }],
        }
    }

    fn contribute(
        &self,
        _task: &TaskSpec,
        party: &PartyView<'_>,
        rng: &mut ChaCha20Rng,
    ) -> Contribution {
        let d = party.data;
        if self.record_level() {
            let sampled: Vec<usize> = (0..d.len())
                .filter(|_| bernoulli(rng, self.sampling_rate))
                .collect();
            if sampled.is_empty() {
                return Contribution::PerRecord(Vec::new());
            }
            let x = matrix(d, Some(&sampled));
            let y: Vec<usize> = sampled.iter().map(|&i| d.labels[i]).collect();
            Contribution::PerRecord(self.model.per_example_grads(x.view(), &y))
        } else {
            let mut local = self.model.clone();
            let mut params = local.to_flat();
            let start = params.clone();
            let mut opt = Sgd::new(self.learning_rate, self.momentum, params.len());
            for _ in 0..self.local_epochs {
                let order = crate::data::shuffled(d.len(), rng);
                for chunk in order.chunks(32) {
                    let x = matrix(d, Some(chunk));
                    let y: Vec<usize> = chunk.iter().map(|&i| d.labels[i]).collect();
                    let (_, g) = local.loss_and_grad(x.view(), &y);
                    opt.step(&mut params, &g);
                    local.set_flat(&params).expect("same dimension");
                }
            }
            Contribution::Whole(params.iter().zip(&start).map(|(a, b)| a - b).collect())
        }
    }

    fn absorb(&mut self, r: TaskResult<'_>) {
        let mut params = self.model.to_flat();
        if self.record_level() {
            let expected_batch =
                (self.sampling_rate * r.records.iter().sum::<usize>() as f64).max(1.0);
            let grad: Vec<f64> = r.sum.iter().map(|g| g / expected_batch).collect();
            self.server.step(&mut params, &grad);
        } else {
            let n = r.contributors.len().max(1) as f64;
            params.iter_mut().zip(&r.sum).for_each(|(p, d)| *p += d / n);
        }
        self.model.set_flat(&params).expect("same dimension");
    }

    fn model(&self) -> &Mlp {
        &self.model
    }
}
