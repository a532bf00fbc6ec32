//! FST-CBDG (after Yan & Guo, "Lightweight Unsupervised Federated Learning
//! with Pretrained Vision Language Model", 2024), under secure aggregation
//! and DP.
//!
//! Parties hold unlabelled records. A frozen encoder, trained on public
//! data (see [`crate::encoder`]), embeds them; only a cosine head — its
//! rows kept at length `scale`, no bias — is trained, started at the
//! encoder's class prototypes (zero-shot).
//!
//! - Each round a party updates each record's soft pseudo-label, a moving
//!   average of the head's predictions (sharpened at temperature
//!   [`SHARPEN_TEMPERATURE`]) kept at home, and self-trains the
//!   head on them plus class-balanced synthetic embeddings drawn from a
//!   Gaussian around each prototype (CBDG). Only the head's update leaves,
//!   in the round's noisy secure sum; the coordinator steps as FedAvg's
//!   and projects the rows back to length `scale`.
//! - Every `prototype_refresh_rounds` the round opens with a statistics
//!   sum of pseudo-label-weighted embeddings and pseudo-label counts,
//!   noisy and charged; the coordinator's new prototypes (the sums'
//!   directions) go out with the head and centre the synthetic samples.
//! - `supervised` trains the same head on the true labels, without
//!   synthetic samples: the linear probe the method is measured against.
//!
//! No label, pseudo-label or embedding ever leaves a party on its own.

use std::sync::Arc;

use ndarray::{Array2, ArrayView2, Axis};

use super::fedavg::ServerStep;
use super::state::{StateReader, StateWriter};
use super::{
    rng_from, Contribution, CoordinatorHalf, PartyHalf, RoundPlan, StateError, SumKind, TaskResult,
    TaskSpec,
};
use crate::data::Dataset;
use crate::encoder::{unit, FrozenEncoder};
use crate::model::{matrix, softmax_rows, Mlp, ModelError, Sgd};
use crate::network::Network;
use crate::policy::{Policy, StrategyKind};
use crate::sampling::{bernoulli, standard_normal};

const TAG: &[u8] = b"fstcbdg/1";
const PARTY_TAG: &[u8] = b"fstcbdg-party/1";

/// Temperature the head's predictions are sharpened at before they enter
/// a pseudo-label's moving average. Unsharpened, a pseudo-label starts as
/// the head's own prediction and soft cross-entropy against it has zero
/// gradient: self-training would never move the head.
pub const SHARPEN_TEMPERATURE: f64 = 0.5;

/// A class's refreshed prototype is kept only where its noisy pseudo-label
/// count reaches this: below, the sum is mostly noise.
const MIN_REFRESH_COUNT: f64 = 5.0;

#[derive(Clone, Copy)]
struct Settings {
    scale: f64,
    pseudo_label_momentum: f64,
    synthetic_per_class: u32,
    synthetic_std: f64,
    supervised: bool,
}

fn settings(policy: &Policy) -> Result<(Settings, Arc<FrozenEncoder>), StateError> {
    let StrategyKind::Fstcbdg {
        scale,
        pseudo_label_momentum,
        synthetic_per_class,
        synthetic_std,
        supervised,
        ..
    } = policy.strategy.kind
    else {
        return Err(StateError("not an FST-CBDG policy".into()));
    };
    let encoder = policy
        .strategy
        .encoder
        .as_ref()
        .map(|e| e.encoder.clone())
        .ok_or_else(|| StateError("an FST-CBDG policy names its encoder".into()))?;
    Ok((
        Settings {
            scale,
            pseudo_label_momentum,
            synthetic_per_class,
            synthetic_std,
            supervised,
        },
        encoder,
    ))
}

/// Whether `round` opens with a prototype refresh: every `refresh` rounds
/// after the first.
fn refreshes(refresh: u32, round: u32) -> bool {
    refresh > 0 && round > 1 && (round - 1) % refresh == 0
}

/// A round's tasks: the head's update, after the prototype refresh sum in
/// the rounds that have one.
pub fn plan(policy: &Policy, round: u32) -> RoundPlan {
    let mut plan = super::fedavg::plan(policy);
    let refresh = match policy.strategy.kind {
        StrategyKind::Fstcbdg {
            prototype_refresh_rounds,
            ..
        } => prototype_refresh_rounds,
        _ => 0,
    };
    if refreshes(refresh, round) {
        plan.open_with_statistics(policy, "pseudo-label-weighted embedding sums and counts");
    }
    plan
}

/// Rows of the head's weights at length `scale`, its bias zero: a cosine
/// classifier with that scale on unit-length embeddings.
pub fn project(head: &mut Mlp, scale: f64) {
    let layer = &mut head.layers[0];
    for mut row in layer.w.axis_iter_mut(Axis(0)) {
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        if n > 0.0 && n.is_finite() {
            row.mapv_inplace(|v| v * scale / n);
        }
    }
    layer.b.fill(0.0);
}

/// The zero-shot head: each class's row its prototype at length `scale`.
pub fn zero_shot_head(prototypes: &[Vec<f64>], scale: f64) -> Mlp {
    let (c, e) = (prototypes.len(), prototypes[0].len());
    let mut head = Mlp::new(&[e, c], 0);
    for (mut row, p) in head.layers[0].w.axis_iter_mut(Axis(0)).zip(prototypes) {
        row.iter_mut().zip(p).for_each(|(w, v)| *w = *v);
    }
    project(&mut head, scale);
    head
}

/// The coordinator's half: the head and the current prototypes.
pub struct FstCbdg {
    head: Mlp,
    server: ServerStep,
    encoder: Arc<FrozenEncoder>,
    prototypes: Vec<Vec<f64>>,
    scale: f64,
}

impl FstCbdg {
    pub fn new(policy: &Policy, saved: Option<&[u8]>) -> Result<FstCbdg, StateError> {
        let (s, encoder) = settings(policy)?;
        let prototypes = encoder.prototypes.clone();
        let mut f = FstCbdg {
            head: zero_shot_head(&prototypes, s.scale),
            server: ServerStep::new(policy),
            encoder,
            prototypes,
            scale: s.scale,
        };
        if let Some(bytes) = saved {
            let dim = f.head.dimension();
            let flat = f.prototypes.concat().len();
            let mut r = StateReader::new(bytes, TAG)?;
            let params = r.f64s_of(dim, "the head")?;
            let velocity = r.f64s_of(dim, "the momentum")?;
            let protos = r.f64s_of(flat, "the prototypes")?;
            r.end()?;
            f.head
                .set_flat(&params)
                .map_err(|e| StateError(format!("head: {e}")))?;
            f.server.set_velocity(&velocity)?;
            let e = f.encoder.dimension();
            f.prototypes = protos.chunks(e).map(<[f64]>::to_vec).collect();
        }
        Ok(f)
    }

    pub fn prototypes(&self) -> &[Vec<f64>] {
        &self.prototypes
    }
}

impl CoordinatorHalf for FstCbdg {
    /// The head, then the prototypes.
    fn downlink(&self, _party: u32) -> Vec<f64> {
        let mut v = self.head.to_flat();
        v.extend(self.prototypes.concat());
        v
    }

    fn absorb(&mut self, _round: u32, r: TaskResult<'_>) {
        if r.task.sum == SumKind::Statistics {
            let (c, e) = (self.prototypes.len(), self.encoder.dimension());
            let (sums, counts) = r.sum.split_at(c * e);
            for (k, proto) in self.prototypes.iter_mut().enumerate() {
                if counts[k] >= MIN_REFRESH_COUNT {
                    let mut p = sums[k * e..(k + 1) * e].to_vec();
                    unit(&mut p);
                    if p.iter().any(|v| *v != 0.0) {
                        *proto = p;
                    }
                }
            }
            return;
        }
        let mut params = self.head.to_flat();
        self.server.apply(&mut params, &r);
        self.head.set_flat(&params).expect("same dimension");
        project(&mut self.head, self.scale);
    }

    fn end_round(&mut self, _round: u32) {}

    fn release_model(&self) -> Network {
        Network::encoded(self.encoder.clone(), self.head.clone())
    }

    fn save(&self) -> Vec<u8> {
        let mut w = StateWriter::new(TAG);
        w.f64s(&self.head.to_flat())
            .f64s(self.server.velocity())
            .f64s(&self.prototypes.concat());
        w.finish()
    }
}

/// A party's half: its records' pseudo-labels (home state), the head and
/// prototypes it was sent, and its self-training.
pub struct FstParty {
    head: Mlp,
    encoder: Arc<FrozenEncoder>,
    prototypes: Vec<Vec<f64>>,
    settings: Settings,
    record_level: bool,
    sampling_rate: f64,
    learning_rate: f64,
    momentum: f64,
    local_epochs: u32,
    /// The round of the last download.
    round: u32,
    /// Each record's soft pseudo-label (records × classes), and the round
    /// it was last updated in.
    pseudo: Option<(u32, Vec<f64>)>,
}

impl FstParty {
    pub fn new(policy: &Policy, saved: Option<&[u8]>) -> Result<FstParty, StateError> {
        let (settings, encoder) = settings(policy)?;
        let mut p = FstParty {
            head: zero_shot_head(&encoder.prototypes, settings.scale),
            prototypes: encoder.prototypes.clone(),
            encoder,
            settings,
            record_level: policy.record_sums(),
            sampling_rate: policy.privacy.sampling_rate,
            learning_rate: policy.strategy.learning_rate,
            momentum: policy.strategy.momentum,
            local_epochs: policy.strategy.local_epochs,
            round: 0,
            pseudo: None,
        };
        if let Some(bytes) = saved {
            let mut r = StateReader::new(bytes, PARTY_TAG)?;
            let round = r.u32()?;
            let labels = r.f64s()?;
            r.end()?;
            if round > 0 {
                p.pseudo = Some((round, labels));
            }
        }
        Ok(p)
    }

    /// Each record's unit-length embedding and what it trains towards:
    /// its pseudo-label, moved once per round towards the head's current
    /// prediction (or its true label, for the supervised probe).
    fn targets(&mut self, data: &Dataset) -> (Array2<f64>, Array2<f64>) {
        let e = self.encoder.embed(matrix(data, None).view());
        let classes = self.prototypes.len();
        if self.settings.supervised {
            let mut t = Array2::zeros((data.len(), classes));
            for (i, &y) in data.labels.iter().enumerate() {
                t[[i, y.min(classes - 1)]] = 1.0;
            }
            return (e, t);
        }
        let p = softmax_rows(&(self.head.forward(e.view()) / SHARPEN_TEMPERATURE));
        let m = self.settings.pseudo_label_momentum;
        let q = match self.pseudo.take() {
            Some((r, old)) if old.len() == p.len() && r >= self.round => old,
            Some((_, old)) if old.len() == p.len() => old
                .iter()
                .zip(p.iter())
                .map(|(o, n)| m * o + (1.0 - m) * n)
                .collect(),
            // The first round, or records that changed: the prediction.
            _ => p.iter().copied().collect(),
        };
        let t = Array2::from_shape_vec((data.len(), classes), q.clone()).expect("rows × classes");
        self.pseudo = Some((self.round, q));
        (e, t)
    }

    /// Class-balanced synthetic embeddings: `synthetic_per_class` per
    /// class, a Gaussian of std `synthetic_std` around the prototype,
    /// scaled to unit length; drawn afresh each round from its secret.
    fn synthetic(&self, sample_seed: &[u8; 32]) -> (Array2<f64>, Array2<f64>) {
        let per = if self.settings.supervised {
            0
        } else {
            self.settings.synthetic_per_class as usize
        };
        let (c, e) = (self.prototypes.len(), self.encoder.dimension());
        let mut rng = rng_from(&super::derived_secret("synthetic embeddings", sample_seed));
        let mut x = Array2::zeros((c * per, e));
        let mut t = Array2::zeros((c * per, c));
        for (k, proto) in self.prototypes.iter().enumerate() {
            for i in 0..per {
                let row = k * per + i;
                let mut v: Vec<f64> = proto
                    .iter()
                    .map(|p| p + self.settings.synthetic_std * standard_normal(&mut rng))
                    .collect();
                unit(&mut v);
                x.row_mut(row).iter_mut().zip(&v).for_each(|(a, b)| *a = *b);
                t[[row, k]] = 1.0;
            }
        }
        (x, t)
    }
}

impl PartyHalf for FstParty {
    fn receive(&mut self, round: u32, params: &[f64]) -> Result<(), ModelError> {
        let dim = self.head.dimension();
        let (c, e) = (self.prototypes.len(), self.encoder.dimension());
        self.round = round;
        // The audit's download is the released head alone.
        if params.len() == dim {
            return self.head.set_flat(params);
        }
        ModelError::check_length(params.len(), dim + c * e)?;
        let (head, protos) = params.split_at(dim);
        self.head.set_flat(head)?;
        if protos.iter().any(|v| !v.is_finite()) {
            return Err(ModelError("the prototypes are not finite".into()));
        }
        self.prototypes = protos
            .chunks(e)
            .map(|p| {
                let mut p = p.to_vec();
                unit(&mut p);
                p
            })
            .collect();
        Ok(())
    }

    fn contribute(
        &mut self,
        _round: u32,
        _task: &TaskSpec,
        data: &Dataset,
        sample_seed: &[u8; 32],
    ) -> Contribution {
        let (e, q) = self.targets(data);
        let (sx, st) = self.synthetic(sample_seed);
        if self.record_level {
            let mut rng = rng_from(sample_seed);
            let sampled: Vec<usize> = (0..data.len())
                .filter(|_| bernoulli(&mut rng, self.sampling_rate))
                .collect();
            let x = e.select(Axis(0), &sampled);
            let t = q.select(Axis(0), &sampled);
            let mut grads = self.head.per_example_grads_soft(x.view(), t.view());
            // The synthetic samples are drawn from released prototypes:
            // extra rows, each clipped like a record's.
            grads.extend(self.head.per_example_grads_soft(sx.view(), st.view()));
            return Contribution::PerRecord(grads);
        }
        let x = ndarray::concatenate(Axis(0), &[e.view(), sx.view()]).expect("same width");
        let t = ndarray::concatenate(Axis(0), &[q.view(), st.view()]).expect("same width");
        let mut local = self.head.clone();
        let mut params = local.to_flat();
        let start = params.clone();
        let mut opt = Sgd::new(self.learning_rate, self.momentum, params.len());
        let mut rng = rng_from(sample_seed);
        for _ in 0..self.local_epochs {
            let order = crate::data::shuffled(x.nrows(), &mut rng);
            for chunk in order.chunks(32) {
                let (xb, tb) = (x.select(Axis(0), chunk), t.select(Axis(0), chunk));
                let (_, g) = local.loss_and_grad_soft(xb.view(), tb.view());
                opt.step(&mut params, &g);
                local.set_flat(&params).expect("same dimension");
                project(&mut local, self.settings.scale);
                params = local.to_flat();
            }
        }
        Contribution::Whole(params.iter().zip(&start).map(|(a, b)| a - b).collect())
    }

    fn statistics(&mut self, _task: &TaskSpec, data: &Dataset) -> Result<Contribution, String> {
        let (e, q) = self.targets(data);
        let rows = statistics_rows(e.view(), q.view());
        if self.record_level {
            return Ok(Contribution::PerRecord(rows));
        }
        let n = rows.len().max(1) as f64;
        let mut mean = vec![0.0; rows.first().map_or(0, Vec::len)];
        for r in &rows {
            mean.iter_mut().zip(r).for_each(|(m, v)| *m += v / n);
        }
        Ok(Contribution::Whole(mean))
    }

    fn model(&self) -> Network {
        Network::encoded(self.encoder.clone(), self.head.clone())
    }

    fn save(&self) -> Vec<u8> {
        let mut w = StateWriter::new(PARTY_TAG);
        match &self.pseudo {
            Some((round, q)) => w.u32(*round).f64s(q),
            None => w.u32(0).f64s(&[]),
        };
        w.finish()
    }
}

/// One record's statistics: its pseudo-label times its embedding (class
/// by class), then its pseudo-label.
fn statistics_rows(e: ArrayView2<f64>, q: ArrayView2<f64>) -> Vec<Vec<f64>> {
    e.outer_iter()
        .zip(q.outer_iter())
        .map(|(er, qr)| {
            let mut v = Vec::with_capacity(qr.len() * (er.len() + 1));
            for &w in qr.iter() {
                v.extend(er.iter().map(|x| w * x));
            }
            v.extend(qr.iter());
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prototypes() -> Vec<Vec<f64>> {
        vec![
            vec![1.0, 0.0, 0.0],
            vec![0.0, 0.6, 0.8],
            vec![0.0, -1.0, 0.0],
        ]
    }

    #[test]
    fn the_zero_shot_head_is_a_cosine_classifier_on_the_prototypes() {
        let head = zero_shot_head(&prototypes(), 10.0);
        for row in head.layers[0].w.outer_iter() {
            let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!((n - 10.0).abs() < 1e-12);
        }
        assert!(head.layers[0].b.iter().all(|b| *b == 0.0));
        // A prototype is classified as its own class, with logit 10.
        let x = Array2::from_shape_vec((3, 3), prototypes().concat()).unwrap();
        let logits = head.forward(x.view());
        assert_eq!(crate::model::argmax_rows(&logits), vec![0, 1, 2]);
        assert!((logits[[1, 1]] - 10.0).abs() < 1e-12);
    }

    #[test]
    fn a_projected_head_keeps_its_directions_at_the_scale() {
        let mut head = Mlp::new(&[3, 2], 4);
        head.layers[0].b.fill(0.7);
        let before = head.layers[0].w.clone();
        project(&mut head, 5.0);
        for (r, b) in head.layers[0].w.outer_iter().zip(before.outer_iter()) {
            let n = b.iter().map(|v| v * v).sum::<f64>().sqrt();
            for (x, y) in r.iter().zip(b.iter()) {
                assert!((x - y * 5.0 / n).abs() < 1e-12);
            }
        }
        assert!(head.layers[0].b.iter().all(|b| *b == 0.0));
    }

    #[test]
    fn statistics_rows_weigh_the_embedding_by_each_pseudo_label() {
        let e = Array2::from_shape_vec((1, 2), vec![0.6, 0.8]).unwrap();
        let q = Array2::from_shape_vec((1, 3), vec![0.5, 0.5, 0.0]).unwrap();
        let rows = statistics_rows(e.view(), q.view());
        assert_eq!(rows[0], vec![0.3, 0.4, 0.3, 0.4, 0.0, 0.0, 0.5, 0.5, 0.0]);
        // Within the blocks' bounds of 1.
        let n: f64 = rows[0][..6].iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!(n <= 1.0);
    }
}
