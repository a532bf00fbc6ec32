//! FedAvg, the baseline: one task per round, the whole model over every
//! party.
//!
//! - Record unit (distributed DP-SGD): each party Poisson-samples its
//!   records at rate q and contributes one gradient per sampled record at
//!   the global model; the coordinator divides the noisy sum by the expected
//!   batch `q · Σ records` and takes one momentum-SGD step.
//! - Party unit (DDGauss): each party trains locally from the global model
//!   and contributes its model delta; the coordinator adds the mean delta.

use super::state::{StateReader, StateWriter};
use super::{CoordinatorHalf, RoundPlan, StateError, TaskResult, TaskSpec};
use crate::model::{Mlp, Sgd};
use crate::network::Network;
use crate::policy::Policy;

const TAG: &[u8] = b"fedavg/1";

/// The one task of a FedAvg round.
pub fn plan(policy: &Policy) -> RoundPlan {
    RoundPlan {
        tasks: vec![TaskSpec {
            id: 0,
            label: if policy.record_sums() {
                "gradient sum"
            } else {
                "model delta sum"
            }
            .into(),
            cohort: policy.parties.iter().map(|p| p.id).collect(),
            offset: 0,
            dimension: policy.strategy.dimension(),
            clip_norm: policy.privacy.clip_norm,
            sum: crate::strategy::SumKind::Update,
        }],
    }
}

/// The server's step on one whole-model sum: a momentum-SGD step on the
/// mean gradient (record unit) or the mean delta added (party unit). FedMR
/// runs the same step in its warm-up rounds.
pub struct ServerStep {
    record_level: bool,
    sampling_rate: f64,
    sgd: Sgd,
}

impl ServerStep {
    pub fn new(policy: &Policy) -> ServerStep {
        ServerStep::with_dimension(policy, policy.strategy.dimension())
    }

    /// A step on `dimension` parameters (one stage of a series).
    pub fn with_dimension(policy: &Policy, dimension: usize) -> ServerStep {
        let s = &policy.strategy;
        ServerStep {
            record_level: policy.record_sums(),
            sampling_rate: policy.privacy.sampling_rate,
            sgd: Sgd::new(s.learning_rate, s.momentum, dimension),
        }
    }

    pub fn velocity(&self) -> &[f64] {
        self.sgd.velocity()
    }

    pub fn set_velocity(&mut self, v: &[f64]) -> Result<(), StateError> {
        self.sgd
            .set_velocity(v)
            .map_err(|e| StateError(format!("momentum: {e}")))
    }

    pub fn apply(&mut self, params: &mut [f64], r: &TaskResult<'_>) {
        if self.record_level {
            let expected_batch =
                (self.sampling_rate * r.records.iter().sum::<usize>() as f64).max(1.0);
            let grad: Vec<f64> = r.sum.iter().map(|g| g / expected_batch).collect();
            self.sgd.step(params, &grad);
        } else {
            let n = r.contributors.len().max(1) as f64;
            params.iter_mut().zip(&r.sum).for_each(|(p, d)| *p += d / n);
        }
    }
}

pub struct FedAvg {
    model: Mlp,
    server: ServerStep,
}

impl FedAvg {
    pub fn new(policy: &Policy, seed: u64, saved: Option<&[u8]>) -> Result<FedAvg, StateError> {
        let mut f = FedAvg {
            model: super::initial_model(policy, seed),
            server: ServerStep::new(policy),
        };
        if let Some(bytes) = saved {
            let d = f.model.dimension();
            let mut r = StateReader::new(bytes, TAG)?;
            let params = r.f64s_of(d, "the model")?;
            let velocity = r.f64s_of(d, "the momentum")?;
            r.end()?;
            f.restore(&params, &velocity)?;
        }
        Ok(f)
    }

    /// A state saved before strategies kept their own (the model and the
    /// server's momentum as two vectors).
    pub fn from_parts(
        policy: &Policy,
        params: &[f64],
        velocity: &[f64],
    ) -> Result<FedAvg, StateError> {
        let mut f = FedAvg {
            model: super::initial_model(policy, 0),
            server: ServerStep::new(policy),
        };
        f.restore(params, velocity)?;
        Ok(f)
    }

    fn restore(&mut self, params: &[f64], velocity: &[f64]) -> Result<(), StateError> {
        self.model
            .set_flat(params)
            .map_err(|e| StateError(format!("model: {e}")))?;
        self.server.set_velocity(velocity)
    }
}

impl CoordinatorHalf for FedAvg {
    fn downlink(&self, _party: u32) -> Vec<f64> {
        self.model.to_flat()
    }

    fn absorb(&mut self, _round: u32, r: TaskResult<'_>) {
        let mut params = self.model.to_flat();
        self.server.apply(&mut params, &r);
        self.model.set_flat(&params).expect("same dimension");
    }

    fn end_round(&mut self, _round: u32) {}

    fn release_model(&self) -> Network {
        Network::single(self.model.clone())
    }

    fn save(&self) -> Vec<u8> {
        let mut w = StateWriter::new(TAG);
        w.f64s(&self.model.to_flat()).f64s(self.server.velocity());
        w.finish()
    }
}
