//! The average ensemble (after Pomerat & Segev, "A Comparison of Methods
//! for Neural Network Aggregation", 2023), under secure aggregation and DP.
//!
//! In the original each party's model labels data and the predictions are
//! averaged in the open. Here each party trains its own member at home with
//! DP-SGD (the job's rounds are its steps; noise and ledger entry its own),
//! then the members' class probabilities on the policy's public unlabelled
//! set are summed in one secure sum. That sum is a function of DP releases
//! only, so it carries no further noise, and no member's probabilities are
//! ever seen on their own. The coordinator trains a student on the averaged
//! soft labels and releases it. Every record lives at one party, so the
//! release costs the largest member's ε (parallel composition).

use super::home::{HomeSgd, NoisySum};
use super::state::{StateReader, StateWriter};
use super::{
    Contribution, CoordinatorHalf, PartyHalf, RoundPlan, StateError, TaskResult, TaskSpec,
};
use crate::data::Dataset;
use crate::model::{matrix, Mlp, ModelError, Sgd};
use crate::network::Network;
use crate::policy::{Policy, PublicSet, StrategyKind, ENSEMBLE_SUM_ATTEMPTS};

const TAG: &[u8] = b"ensemble/1";
const MEMBER_TAG: &[u8] = b"ensemble-member/2";

fn public_set(policy: &Policy) -> &PublicSet {
    policy
        .strategy
        .public_set
        .as_ref()
        .expect("an ensemble policy names its public set")
}

/// The one task of every round (each round is one attempt, until a sum is
/// in): every member's class probabilities on the public set.
pub fn plan(policy: &Policy) -> RoundPlan {
    let records = public_set(policy).records;
    RoundPlan {
        tasks: vec![TaskSpec {
            id: 0,
            label: "member probabilities on the public set".into(),
            cohort: policy.parties.iter().map(|p| p.id).collect(),
            offset: 0,
            dimension: records * policy.strategy.classes,
            // One probability vector per record, each of norm at most 1.
            clip_norm: (records as f64).sqrt(),
            sum: super::SumKind::Outputs,
        }],
    }
}

/// The coordinator's half: it sends the members their common starting
/// point and trains the student on the averaged probabilities.
pub struct Ensemble {
    /// What every member starts from.
    initial: Mlp,
    student: Mlp,
    public: Dataset,
    epochs: u32,
    learning_rate: f64,
    momentum: f64,
    /// Members whose probabilities the student learned from (0: not yet).
    members: u32,
    failure: Option<String>,
}

impl Ensemble {
    pub fn new(policy: &Policy, seed: u64, saved: Option<&[u8]>) -> Result<Ensemble, StateError> {
        let s = &policy.strategy;
        let StrategyKind::Ensemble { student_epochs, .. } = s.kind else {
            return Err(StateError("not an ensemble policy".into()));
        };
        let initial = super::initial_model(policy, seed);
        let mut e = Ensemble {
            student: initial.clone(),
            initial,
            public: public_set(policy).dataset(s.inputs, s.classes),
            epochs: student_epochs,
            learning_rate: s.learning_rate,
            momentum: s.momentum,
            members: 0,
            failure: None,
        };
        if let Some(bytes) = saved {
            let mut r = StateReader::new(bytes, TAG)?;
            let params = r.f64s_of(e.student.dimension(), "the student")?;
            let members = r.f64s_of(1, "the members counted")?[0];
            r.end()?;
            e.student
                .set_flat(&params)
                .map_err(|err| StateError(format!("the student: {err}")))?;
            e.members = members as u32;
        }
        Ok(e)
    }

    /// The averaged soft labels: each record's summed probabilities (or
    /// noisy vote counts) over the contributors, renormalised (rounding to
    /// the word grid moves a sum by at most one step per member).
    pub fn soft_labels(sum: &[f64], classes: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(sum.len());
        for row in sum.chunks(classes) {
            // Noisy vote counts can fall below zero: read those as none.
            let row: Vec<f64> = row.iter().map(|v| v.max(0.0)).collect();
            let total: f64 = row.iter().sum();
            if total > 0.0 {
                out.extend(row.iter().map(|v| v / total));
            } else {
                out.extend(std::iter::repeat(1.0 / classes as f64).take(classes));
            }
        }
        out
    }

    /// Distils the soft labels into the student: full-batch momentum
    /// gradient descent on the soft cross-entropy over the public set, one
    /// step per epoch, with the policy's optimiser (the step FedAvg's
    /// coordinator takes on the consortium's mean gradient).
    fn train_student(&mut self, soft: &[f64]) {
        let classes = self.student.sizes().last().copied().unwrap_or(2);
        let n = self.public.len();
        let targets = ndarray::Array2::from_shape_vec((n, classes), soft.to_vec())
            .expect("one row per public record");
        let x = matrix(&self.public, None);
        let mut params = self.student.to_flat();
        let mut opt = Sgd::new(self.learning_rate, self.momentum, params.len());
        for _ in 0..self.epochs {
            let (_, g) = self.student.loss_and_grad_soft(x.view(), targets.view());
            opt.step(&mut params, &g);
            self.student.set_flat(&params).expect("same dimension");
        }
    }
}

impl CoordinatorHalf for Ensemble {
    fn downlink(&self, _party: u32) -> Vec<f64> {
        // Members start from the job's initial model; after the sum (the
        // audit's download) this is what parties score: the student.
        if self.members > 0 {
            self.student.to_flat()
        } else {
            self.initial.to_flat()
        }
    }

    fn absorb(&mut self, _round: u32, r: TaskResult<'_>) {
        assert_eq!(
            r.task.sum,
            super::SumKind::Outputs,
            "the ensemble sums only outputs"
        );
        let classes = self.student.sizes().last().copied().unwrap_or(2);
        let soft = Ensemble::soft_labels(&r.sum, classes);
        self.train_student(&soft);
        self.members = r.contributors.len() as u32;
    }

    fn task_aborted(&mut self, round: u32, task: &TaskSpec) {
        if round >= ENSEMBLE_SUM_ATTEMPTS {
            self.failure = Some(format!(
                "the secure sum of the {} aborted {round} times: without it there is no \
                 student to release",
                task.label
            ));
        }
    }

    fn failure(&self) -> Option<String> {
        self.failure.clone()
    }

    fn done(&self) -> bool {
        self.members > 0
    }

    fn end_round(&mut self, _round: u32) {}

    fn release_model(&self) -> Network {
        Network::single(self.student.clone())
    }

    fn save(&self) -> Vec<u8> {
        let mut w = StateWriter::new(TAG);
        w.f64s(&self.student.to_flat());
        w.f64s(&[f64::from(self.members)]);
        w.finish()
    }
}

/// A party's half: its member, trained at home, and its probabilities on
/// the public set.
pub struct Member {
    model: Mlp,
    sgd: HomeSgd,
    public: Dataset,
    /// The words sent for the first attempt at the sum: the member's one
    /// release, sent again if the sum is tried again.
    sent: Option<Vec<u32>>,
}

impl Member {
    pub fn new(policy: &Policy, saved: Option<&[u8]>) -> Result<Member, StateError> {
        let s = &policy.strategy;
        let mut m = Member {
            model: super::initial_model(policy, 0),
            sgd: HomeSgd::for_policy(policy, policy.privacy.rounds),
            public: public_set(policy).dataset(s.inputs, s.classes),
            sent: None,
        };
        if let Some(bytes) = saved {
            let mut r = StateReader::new(bytes, MEMBER_TAG)?;
            let kept = r.f64s_of(1, "whether words were kept")?[0];
            if kept != 0.0 {
                let len = public_set(policy).records * s.classes;
                let words = r.f64s_of(len, "the kept words")?;
                m.sent = Some(words.iter().map(|&w| w as u32).collect());
            }
            r.end()?;
        }
        Ok(m)
    }
}

impl PartyHalf for Member {
    fn receive(&mut self, _round: u32, params: &[f64]) -> Result<(), ModelError> {
        self.model.set_flat(params)
    }

    fn contribute(
        &mut self,
        _round: u32,
        _task: &TaskSpec,
        _data: &Dataset,
        _sample_seed: &[u8; 32],
    ) -> Contribution {
        // The ensemble plans no training sum; an empty vector fails the
        // session's shape check.
        Contribution::Whole(Vec::new())
    }

    fn outputs(
        &mut self,
        _round: u32,
        _task: &TaskSpec,
        data: &Dataset,
        home: &mut dyn NoisySum,
    ) -> Result<Vec<f64>, String> {
        let mut member = self.model.clone();
        self.sgd.train(&mut member, data, home)?;
        // The session checks the length against the task it admitted.
        let p = Network::single(member).probabilities(matrix(&self.public, None).view());
        Ok(p.iter().copied().collect())
    }

    fn kept_outputs(&self) -> Option<Vec<u32>> {
        self.sent.clone()
    }

    fn keep_outputs(&mut self, words: &[u32]) {
        self.sent = Some(words.to_vec());
    }

    fn model(&self) -> Network {
        Network::single(self.model.clone())
    }

    fn save(&self) -> Vec<u8> {
        let mut w = StateWriter::new(MEMBER_TAG);
        match &self.sent {
            // Words are 32-bit: exact as f64.
            Some(words) => {
                w.f64s(&[1.0]);
                w.f64s(&words.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
            }
            None => {
                w.f64s(&[0.0]);
            }
        }
        w.finish()
    }
}
