//! DP-SGD at a party's home: the ensemble's members and the transfer's
//! fine-tuning train on their own records only, with noise of their own.
//!
//! A step Poisson-samples the records, takes one gradient per sampled
//! record and asks [`NoisySum`] for their noisy sum: each gradient clipped
//! and rounded to the plan's integer grid, the party's whole discrete
//! Gaussian added (nobody else's noise joins it), decoded. The step is the
//! coordinator's FedAvg step in miniature — the mean over the expected
//! batch, then momentum SGD — so a home step costs what one FedAvg round
//! costs, with one honest party. What the noise is and how it is sampled
//! lives with the party's session; this module only trains.

use super::rng_from;
use crate::data::Dataset;
use crate::model::{matrix, Mlp, Sgd};
use crate::policy::Policy;
use crate::sampling::bernoulli;

/// The noisy sums of a party's home training.
pub trait NoisySum {
    /// The sum of `grads` (one per sampled record, each clipped and
    /// rounded on its own), plus the party's noise for step `step`,
    /// decoded to the model's units. The gradients are wiped.
    fn noisy_sum(&mut self, step: u32, grads: Vec<Vec<f64>>) -> Result<Vec<f64>, String>;

    /// The secret seed of step `step`'s record sample.
    fn sample_seed(&mut self, step: u32) -> zeroize::Zeroizing<[u8; 32]>;
}

/// How a party trains at home.
#[derive(Clone, Copy, Debug)]
pub struct HomeSgd {
    pub steps: u32,
    pub sampling_rate: f64,
    pub learning_rate: f64,
    pub momentum: f64,
}

impl HomeSgd {
    /// `steps` steps with the policy's sampling rate and optimiser.
    pub fn for_policy(policy: &Policy, steps: u32) -> HomeSgd {
        HomeSgd {
            steps,
            sampling_rate: policy.privacy.sampling_rate,
            learning_rate: policy.strategy.learning_rate,
            momentum: policy.strategy.momentum,
        }
    }

    /// Trains `model` on `data` in place.
    pub fn train(
        &self,
        model: &mut Mlp,
        data: &Dataset,
        home: &mut dyn NoisySum,
    ) -> Result<(), String> {
        let mut params = model.to_flat();
        let mut opt = Sgd::new(self.learning_rate, self.momentum, params.len());
        // Divided by the expected batch, not the drawn one: the drawn size
        // depends on the records and is not noised.
        let expected = (self.sampling_rate * data.len() as f64).max(1.0);
        for step in 0..self.steps {
            let mut rng = rng_from(&home.sample_seed(step));
            let sampled: Vec<usize> = (0..data.len())
                .filter(|_| bernoulli(&mut rng, self.sampling_rate))
                .collect();
            let grads = if sampled.is_empty() {
                Vec::new()
            } else {
                let x = matrix(data, Some(&sampled));
                let y: Vec<usize> = sampled.iter().map(|&i| data.labels[i]).collect();
                model.per_example_grads(x.view(), &y)
            };
            let sum = home.noisy_sum(step, grads)?;
            if sum.len() != params.len() {
                return Err(format!(
                    "a home step's sum has {} values, the model {}",
                    sum.len(),
                    params.len()
                ));
            }
            let grad: Vec<f64> = sum.iter().map(|g| g / expected).collect();
            opt.step(&mut params, &grad);
            model
                .set_flat(&params)
                .map_err(|e| format!("home step {step}: {e}"))?;
        }
        Ok(())
    }
}
