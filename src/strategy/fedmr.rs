//! FedMR, hardened for secure aggregation (after Hu et al., "Is Aggregation
//! the Only Choice?", KDD 2024).
//!
//! The original hands each party another party's exact layers; secure
//! aggregation forbids seeing any party's layer. The hardened form keeps the
//! idea — every party starts from its own model, whose layers come from
//! different mixes of parties, and only the release is an average:
//! - each round, per layer, the roster is shuffled by a public per-round
//!   seed and dealt into ⌊n / group_size⌋ groups (each at least
//!   `group_size`); each group securely sums its members' slice of their
//!   update with DP noise, and every member starts the next round from the
//!   group's layer;
//! - a group whose sum aborts (too few survivors) falls back to the last
//!   released layer;
//! - the released model is, per layer, the average over the groups — a
//!   post-processing of the same noisy sums;
//! - `warmup_rounds` of plain FedAvg come first.
//!
//! A layer's group starts from the mean of its contributors' layers
//! (public: the coordinator built them); record-level updates take one
//! momentum-SGD step from there with the contributors' averaged momentum,
//! party-level updates add the mean delta. Each layer is clipped to
//! `c·√(d_l/D)`, so a party's layers together stay within `c`: one round
//! costs one FedAvg round.

use super::fedavg::ServerStep;
use super::state::{StateReader, StateWriter};
use super::{CoordinatorHalf, RoundPlan, StateError, TaskResult, TaskSpec};
use crate::model::Mlp;
use crate::network::Network;
use crate::policy::Policy;

const TAG: &[u8] = b"fedmr/1";

/// The groups of `round`: per layer, the roster dealt into groups.
pub fn plan(policy: &Policy, job: &str, round: u32, group_size: usize) -> RoundPlan {
    let parties: Vec<u32> = policy.parties.iter().map(|p| p.id).collect();
    let groups = (parties.len() / group_size).max(1);
    let dims = policy.strategy.layer_dimensions();
    let total = policy.strategy.dimension() as f64;
    let mut tasks = Vec::new();
    let mut offset = 0;
    for (layer, &d) in dims.iter().enumerate() {
        let seed = super::public_seed("fedmr groups", job, round, layer as u32);
        let order = crate::data::shuffled(parties.len(), &mut super::rng_from(&seed));
        for g in 0..groups {
            let mut cohort: Vec<u32> = order
                .iter()
                .skip(g)
                .step_by(groups)
                .map(|&i| parties[i])
                .collect();
            cohort.sort_unstable();
            tasks.push(TaskSpec {
                id: tasks.len() as u32,
                label: format!("layer {layer} group {g}"),
                cohort,
                offset,
                dimension: d,
                clip_norm: policy.privacy.clip_norm * (d as f64 / total).sqrt(),
                sum: crate::strategy::SumKind::Update,
            });
        }
        offset += d;
    }
    RoundPlan { tasks }
}

/// What a group's sum made of one layer, for each of its members.
#[derive(Clone)]
struct GroupLayer {
    params: Vec<f64>,
    velocity: Vec<f64>,
}

pub struct FedMr {
    parties: Vec<u32>,
    /// Layer widths, inputs to classes.
    sizes: Vec<usize>,
    /// (offset, dimension) of each layer in the flat vector.
    layers: Vec<(usize, usize)>,
    warmup_rounds: u32,
    record_level: bool,
    sampling_rate: f64,
    learning_rate: f64,
    momentum: f64,
    /// The warm-up's global model, then the released average.
    global: Vec<f64>,
    /// The warm-up's server step (its momentum).
    server: ServerStep,
    /// Each party's starting parameters and momentum, by roster index.
    models: Vec<Vec<f64>>,
    velocities: Vec<Vec<f64>>,
    /// This round's results, by party index and layer (not saved: a round
    /// interrupted by a restart is abandoned and its state is the last
    /// round's).
    pending: Vec<Vec<Option<GroupLayer>>>,
    /// This round's group layers, by layer, for the release.
    group_layers: Vec<Vec<Vec<f64>>>,
}

impl FedMr {
    pub fn new(
        policy: &Policy,
        seed: u64,
        warmup_rounds: u32,
        saved: Option<&[u8]>,
    ) -> Result<FedMr, StateError> {
        let parties: Vec<u32> = policy.parties.iter().map(|p| p.id).collect();
        let mut layers = Vec::new();
        let mut offset = 0;
        for d in policy.strategy.layer_dimensions() {
            layers.push((offset, d));
            offset += d;
        }
        let global = super::initial_model(policy, seed).to_flat();
        let n = parties.len();
        let s = &policy.strategy;
        let mut f = FedMr {
            sizes: s.sizes(),
            layers,
            warmup_rounds,
            record_level: policy.record_sums(),
            sampling_rate: policy.privacy.sampling_rate,
            learning_rate: s.learning_rate,
            momentum: s.momentum,
            server: ServerStep::new(policy),
            models: vec![global.clone(); n],
            velocities: vec![vec![0.0; global.len()]; n],
            global,
            pending: Vec::new(),
            group_layers: Vec::new(),
            parties,
        };
        f.clear_round();
        if let Some(bytes) = saved {
            f.load(bytes)?;
        }
        Ok(f)
    }

    fn load(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let d = self.global.len();
        let mut r = StateReader::new(bytes, TAG)?;
        let n = r.u32()? as usize;
        if n != self.parties.len() {
            return Err(StateError(format!(
                "saved for {n} parties, the roster has {}",
                self.parties.len()
            )));
        }
        self.global = r.f64s_of(d, "the released model")?;
        let velocity = r.f64s_of(d, "the warm-up momentum")?;
        self.server.set_velocity(&velocity)?;
        for i in 0..n {
            self.models[i] = r.f64s_of(d, "a party's model")?;
            self.velocities[i] = r.f64s_of(d, "a party's momentum")?;
        }
        r.end()
    }

    fn clear_round(&mut self) {
        self.pending = vec![vec![None; self.layers.len()]; self.parties.len()];
        self.group_layers = vec![Vec::new(); self.layers.len()];
    }

    fn index(&self, party: u32) -> Option<usize> {
        self.parties.iter().position(|&p| p == party)
    }

    fn layer_of(&self, task: &TaskSpec) -> usize {
        self.layers
            .iter()
            .position(|&(o, _)| o == task.offset)
            .expect("a task covers one layer")
    }

    fn mean_slice(rows: &[&Vec<f64>], offset: usize, d: usize) -> Vec<f64> {
        let mut m = vec![0.0; d];
        for row in rows {
            m.iter_mut()
                .zip(&row[offset..offset + d])
                .for_each(|(a, b)| *a += b);
        }
        let n = rows.len().max(1) as f64;
        m.iter_mut().for_each(|a| *a /= n);
        m
    }
}

impl CoordinatorHalf for FedMr {
    fn downlink(&self, party: u32) -> Vec<f64> {
        match self.index(party) {
            Some(i) => self.models[i].clone(),
            None => self.global.clone(),
        }
    }

    fn absorb(&mut self, round: u32, r: TaskResult<'_>) {
        if round <= self.warmup_rounds {
            self.server.apply(&mut self.global, &r);
            return;
        }
        let l = self.layer_of(r.task);
        let (offset, d) = self.layers[l];
        let members: Vec<usize> = r
            .contributors
            .iter()
            .filter_map(|&p| self.index(p))
            .collect();
        let starts: Vec<&Vec<f64>> = members.iter().map(|&i| &self.models[i]).collect();
        let mut params = Self::mean_slice(&starts, offset, d);
        let mut velocity = vec![0.0; d];
        if self.record_level {
            let vels: Vec<&Vec<f64>> = members.iter().map(|&i| &self.velocities[i]).collect();
            velocity = Self::mean_slice(&vels, offset, d);
            let batch = (self.sampling_rate * r.records.iter().sum::<usize>() as f64).max(1.0);
            for ((p, v), g) in params.iter_mut().zip(velocity.iter_mut()).zip(&r.sum) {
                *v = self.momentum * *v + g / batch;
                *p -= self.learning_rate * *v;
            }
        } else {
            let n = r.contributors.len().max(1) as f64;
            params.iter_mut().zip(&r.sum).for_each(|(p, s)| *p += s / n);
        }
        // Every member of the group, dropped or not, takes the group's layer.
        for &p in &r.task.cohort {
            if let Some(i) = self.index(p) {
                self.pending[i][l] = Some(GroupLayer {
                    params: params.clone(),
                    velocity: velocity.clone(),
                });
            }
        }
        self.group_layers[l].push(params);
    }

    fn task_aborted(&mut self, round: u32, task: &TaskSpec) {
        if round <= self.warmup_rounds {
            return;
        }
        // The group falls back to the last released layer, momentum reset.
        let l = self.layer_of(task);
        let (offset, d) = self.layers[l];
        let fallback = GroupLayer {
            params: self.global[offset..offset + d].to_vec(),
            velocity: vec![0.0; d],
        };
        for &p in &task.cohort {
            if let Some(i) = self.index(p) {
                self.pending[i][l] = Some(fallback.clone());
            }
        }
    }

    fn end_round(&mut self, round: u32) {
        if round <= self.warmup_rounds {
            for i in 0..self.parties.len() {
                self.models[i].clone_from(&self.global);
                self.velocities[i].copy_from_slice(self.server.velocity());
            }
            return;
        }
        for (l, &(offset, d)) in self.layers.iter().enumerate() {
            for i in 0..self.parties.len() {
                let layer = self.pending[i][l].take().unwrap_or_else(|| GroupLayer {
                    params: self.global[offset..offset + d].to_vec(),
                    velocity: vec![0.0; d],
                });
                self.models[i][offset..offset + d].copy_from_slice(&layer.params);
                self.velocities[i][offset..offset + d].copy_from_slice(&layer.velocity);
            }
            let groups: Vec<&Vec<f64>> = self.group_layers[l].iter().collect();
            if !groups.is_empty() {
                let mean = Self::mean_slice(&groups, 0, d);
                self.global[offset..offset + d].copy_from_slice(&mean);
            }
        }
        self.clear_round();
    }

    fn release_model(&self) -> Network {
        let mut m = Mlp::new(&self.sizes, 0);
        m.set_flat(&self.global).expect("the model's own shape");
        Network::single(m)
    }

    fn save(&self) -> Vec<u8> {
        let mut w = StateWriter::new(TAG);
        w.u32(self.parties.len() as u32)
            .f64s(&self.global)
            .f64s(self.server.velocity());
        for i in 0..self.parties.len() {
            w.f64s(&self.models[i]).f64s(&self.velocities[i]);
        }
        w.finish()
    }
}
