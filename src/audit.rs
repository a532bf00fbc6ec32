//! Membership-inference audits of a trained model, wired into the job.
//!
//! Two audits, neither of which moves a party's records:
//!
//! 1. **Gradient canaries** (the white-box one-run audit of Steinke, Nasr
//!    and Jagielski 2023). Before training the coordinator flips a fair
//!    coin for each of `m` canaries from a secret seed and deals the "in"
//!    ones to the parties. Every training sum carries `m` extra
//!    coordinates, one per canary; a party adds each of its "in" canaries
//!    as one more record — a vector of the task's clip norm in the canary's
//!    own coordinate — through the same clipping, rounding, noise and
//!    secure sum as its real records (sampled at the same rate). The
//!    coordinator adds up each canary's coordinate over the rounds and
//!    turns guesses on those scores into an ε lower bound. A canary is
//!    exactly as private as a record, costs no real record and leaves the
//!    model untouched; `audit.canaries = "auto"` sizes `m` so that the
//!    bound could reach the policy's ε.
//! 2. **Population audit on real records.** Before training each party
//!    splits an audit sample of its records into members and non-members by
//!    coin flip; non-members are held out of training. After training each
//!    party scores its own audit records with the policy's attacks and
//!    contributes only counts per score bin, members and non-members apart,
//!    through secure aggregation. The coordinator turns the summed counts
//!    into the consortium-wide ROC.
//!
//! The same secure sum carries the released model's utility: each party
//! counts the members and non-members of its audit sample (a larger cap)
//! that the model classifies right and wrong. Non-members are records no
//! party trained on, so their accuracy is a test accuracy on the
//! consortium's own data; the member accuracy beside it gives the
//! train/test gap — without a test set ever leaving a party.

use std::collections::BTreeMap;

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::json;
use shroud_audit::canary::{self, CanaryAudit};
use shroud_audit::epsilon::lower_bound;
use shroud_audit::noisy::NoisyCounts;
use shroud_audit::report::{thin, AttackResult, TprAtFpr};
use shroud_audit::stats::{cp_lower, cp_upper};
use shroud_audit::utility::{Utility, UTILITY_COUNTS};
use shroud_audit::Roc;

use sha2::{Digest, Sha256};

use crate::data::Dataset;
use crate::model::{matrix, train_central, Mlp};
use crate::network::Network;
use crate::policy::Policy;
use crate::sampling::fair_coin;

/// Score bins per histogram. The counts carry DP noise, and a point of the
/// ROC sums the bins above a threshold (the totals sum them all), so its
/// noise grows with the square root of the bins summed: few bins, over the
/// range where scores fall.
pub const BINS: usize = 32;
/// Chance that a record enters its party's audit sample.
pub const AUDIT_FRACTION: f64 = 0.3;
/// At most this many sample records of one party are scored into the
/// histograms (those with the smallest selection draw): the cap bounds how
/// far one record can move the counts of the attacks whose scores depend on
/// a party's other records.
pub const AUDIT_SAMPLE_CAP: usize = 64;
/// At most this many sample records of one party are counted for the
/// model's utility (again those with the smallest draws; the scored ones
/// are among them). Accuracy needs no scores from other records, so a
/// larger cap costs no more sensitivity than the loss attack's.
pub const UTILITY_SAMPLE_CAP: usize = 256;
/// Reference models each party trains at home for LiRA and RMIA.
pub const REFERENCE_MODELS: usize = 4;

/// One gradient canary: whether it is trained on, and by which party.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Canary {
    pub included: bool,
    /// The party that adds it, when included.
    pub party: u32,
}

/// One party's audit sample, as indices into its records.
#[derive(Clone, Debug)]
pub struct PartySample {
    pub party: u32,
    /// Every sample record the coin made a member (kept in training).
    pub members: Vec<usize>,
    /// Every sample record the coin made a non-member (held out).
    pub non_members: Vec<usize>,
    /// The members and non-members scored into the histograms: the
    /// [`AUDIT_SAMPLE_CAP`] sample records with the smallest draws.
    pub scored_members: Vec<usize>,
    pub scored_non_members: Vec<usize>,
    /// The members and non-members counted for utility: the
    /// [`UTILITY_SAMPLE_CAP`] sample records with the smallest draws.
    pub utility_members: Vec<usize>,
    pub utility_non_members: Vec<usize>,
}

/// What the coordinator's audit works from after training.
pub struct AuditSetup {
    pub canaries: Vec<Canary>,
    /// Each canary's coordinate summed over the training sums, in clip
    /// norms (see [`score_canaries`]).
    pub canary_scores: Vec<f64>,
    /// The secret canary seed, disclosed in the report after training.
    pub canary_seed: u64,
    /// The seed of the audit samples when one party drew them all (the
    /// in-process job); each party draws its own over the network.
    pub sample_seed: Option<u64>,
}

/// Draws `m` canaries from a secret seed: a fair inclusion coin each,
/// dealt round-robin to `parties`.
pub fn draw_canaries(seed: u64, m: usize, parties: &[u32]) -> Vec<Canary> {
    let mut crng = ChaCha20Rng::seed_from_u64(seed);
    (0..m)
        .map(|i| Canary {
            included: fair_coin(&mut crng),
            party: parties[i % parties.len()],
        })
        .collect()
}

/// Adds one decoded training sum's canary coordinates to the scores, in
/// units of the task's clip norm (an "in" canary adds about 1 per sum it
/// was sampled into).
pub fn score_canaries(scores: &mut [f64], canary_block: &[f64], clip_norm: f64) {
    scores
        .iter_mut()
        .zip(canary_block)
        .for_each(|(s, y)| *s += y / clip_norm);
}

/// One party's audit sample, drawn record by record: each record's fate
/// (in the sample or not, member or non-member) is a keyed hash of the
/// record itself under the party's secret, so adding or removing one record
/// changes no other record's fate — which is what bounds the sensitivity of
/// the training set and of the audit's counts to one record.
pub fn draw_sample(party: u32, d: &Dataset, secret: &[u8; 32]) -> PartySample {
    let mut drawn: Vec<(u64, usize, bool)> = Vec::new();
    let threshold = (AUDIT_FRACTION * 2f64.powi(64)) as u64;
    for i in 0..d.len() {
        let mut h = Sha256::new();
        h.update(b"shroud/v1/audit-sample");
        h.update(secret);
        h.update((d.labels[i] as u64).to_le_bytes());
        for x in &d.features[i] {
            h.update(x.to_le_bytes());
        }
        let out: [u8; 32] = h.finalize().into();
        let draw = u64::from_le_bytes(out[..8].try_into().expect("8 bytes"));
        if draw < threshold {
            drawn.push((draw, i, out[8] & 1 == 1));
        }
    }
    let pick = |keep: &dyn Fn(&(u64, usize, bool)) -> bool, list: &[(u64, usize, bool)]| {
        let mut v: Vec<usize> = list.iter().filter(|x| keep(x)).map(|x| x.1).collect();
        v.sort_unstable();
        v
    };
    let members = pick(&|x| x.2, &drawn);
    let non_members = pick(&|x| !x.2, &drawn);
    drawn.sort_unstable();
    drawn.truncate(UTILITY_SAMPLE_CAP);
    let (utility_members, utility_non_members) = (pick(&|x| x.2, &drawn), pick(&|x| !x.2, &drawn));
    drawn.truncate(AUDIT_SAMPLE_CAP);
    PartySample {
        party,
        members,
        non_members,
        scored_members: pick(&|x| x.2, &drawn),
        scored_non_members: pick(&|x| !x.2, &drawn),
        utility_members,
        utility_non_members,
    }
}

/// The party's secret for its audit sample in one job, from a public
/// in-process seed (the networked party uses its own identity secret).
pub fn sample_secret(seed: u64, party: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"shroud/v1/in-process-audit-sample");
    h.update(seed.to_le_bytes());
    h.update(party.to_le_bytes());
    h.finalize().into()
}

/// One block of counts in the audit's secure sum.
pub struct CountBlock {
    /// The population attack whose histograms it holds, or [`UTILITY`].
    pub name: String,
    /// L2 sensitivity of the block to one unit of privacy, in counts.
    pub sensitivity: f64,
    /// Counts in the block.
    pub width: usize,
}

/// The name of the utility block.
pub const UTILITY: &str = "utility";

/// The blocks of the audit's secure sum, in order — one per population
/// attack (both histograms), then the utility counts — with their L2
/// sensitivity to one unit of privacy: what the privacy plan sizes each
/// block's noise by.
///
/// - Record unit. A record enters its own bin (and, the sample being capped,
///   may push one other counted record out): √2 for the loss attack and
///   for utility, whose counts depend on nothing but the model and the
///   record. LiRA's reference models train on the party's other records and
///   RMIA compares each record with the party's held-out non-members, so
///   one record can move every scored record of its party to another bin:
///   √2·(cap + 1).
/// - Party unit. A party's block holds at most `cap` records: `cap` (L2 of
///   counts summing to at most `cap`).
pub fn count_blocks(policy: &Policy) -> Vec<CountBlock> {
    let party_unit = policy.privacy.unit == crate::policy::Unit::Party;
    let cap = AUDIT_SAMPLE_CAP as f64;
    let mut blocks: Vec<CountBlock> = population_attacks(policy)
        .into_iter()
        .map(|a| {
            let sensitivity = match (party_unit, a.as_str()) {
                (true, _) => cap,
                (_, "loss") => std::f64::consts::SQRT_2,
                _ => std::f64::consts::SQRT_2 * (cap + 1.0),
            };
            CountBlock {
                name: a,
                sensitivity,
                width: 2 * BINS,
            }
        })
        .collect();
    blocks.push(CountBlock {
        name: UTILITY.into(),
        sensitivity: if party_unit {
            UTILITY_SAMPLE_CAP as f64
        } else {
            std::f64::consts::SQRT_2
        },
        width: UTILITY_COUNTS,
    });
    if matches!(
        policy.strategy.kind,
        crate::policy::StrategyKind::Transfer { .. }
    ) {
        // A held-out record sits in one cell of each matrix. The records
        // the fine-tuning trained on move the fine-tuned matrix through
        // the model, which their home DP-SGD already pays for.
        blocks.push(CountBlock {
            name: TRANSFER.into(),
            sensitivity: std::f64::consts::SQRT_2,
            width: transfer_width(policy.strategy.classes),
        });
    }
    blocks
}

/// The transfer's block: how the base and the fine-tuned model classify
/// each party's held-out records.
pub const TRANSFER: &str = "transfer";

/// Two confusion matrices (true class × predicted class, row-major): the
/// base model's, then the fine-tuned model's.
pub fn transfer_width(classes: usize) -> usize {
    2 * classes * classes
}

/// A party's transfer counts on its held-out utility records.
pub fn transfer_counts(
    base: &Network,
    tuned: &Network,
    d: &Dataset,
    sample: &PartySample,
) -> Vec<u32> {
    let classes = d.classes;
    let mut counts = vec![0u32; transfer_width(classes)];
    let idx = &sample.utility_non_members;
    if idx.is_empty() {
        return counts;
    }
    let x = crate::model::matrix(d, Some(idx));
    for (m, model) in [base, tuned].into_iter().enumerate() {
        let predicted = model.predict(x.view());
        for (&i, &p) in idx.iter().zip(&predicted) {
            counts[m * classes * classes + d.labels[i] * classes + p] += 1;
        }
    }
    counts
}

/// Where each block of the policy's audit sum lies in the count vector.
pub fn block_layout(policy: &Policy) -> Vec<std::ops::Range<usize>> {
    count_blocks(policy)
        .iter()
        .scan(0, |at, b| {
            let start = *at;
            *at += b.width;
            Some(start..*at)
        })
        .collect()
}

/// What a party trains on: its records without the audit non-members.
pub fn training_set(d: &Dataset, sample: &PartySample) -> Dataset {
    let held_out: std::collections::BTreeSet<usize> = sample.non_members.iter().copied().collect();
    let keep: Vec<usize> = (0..d.len()).filter(|i| !held_out.contains(i)).collect();
    d.subset(&keep)
}

/// Fixed score ranges for the bins, per attack; scores outside fall into
/// the end bins.
fn range(attack: &str) -> (f64, f64) {
    match attack {
        // −ln(loss): losses from e^3 down to e^-13 (0.5 per bin).
        "loss" => (-3.0, 13.0),
        "lira" => (-8.0, 8.0),
        _ => (0.0, 1.0),
    }
}

fn bin(attack: &str, s: f64) -> usize {
    let (lo, hi) = range(attack);
    let t = ((s - lo) / (hi - lo) * BINS as f64).floor();
    if t.is_nan() {
        0
    } else {
        (t.max(0.0) as usize).min(BINS - 1)
    }
}

fn lower_edges(attack: &str) -> Vec<f64> {
    let (lo, hi) = range(attack);
    (0..BINS)
        .map(|i| lo + (hi - lo) * i as f64 / BINS as f64)
        .collect()
}

/// Per-record loss of the true class.
fn losses(model: &Network, d: &Dataset, idx: &[usize]) -> Vec<f64> {
    if idx.is_empty() {
        return Vec::new();
    }
    let x = matrix(d, Some(idx));
    let y: Vec<usize> = idx.iter().map(|&i| d.labels[i]).collect();
    model.losses(x.view(), &y)
}

/// Logit-scaled confidence ln(p/(1−p)) of the true class, from its loss.
fn logit_conf(loss: f64) -> f64 {
    -loss - (-(-loss).exp_m1()).max(1e-300).ln()
}

/// One party's scores for its audit sample, per attack: (members, non-members).
fn party_scores(
    model: &Network,
    d: &Dataset,
    sample: &PartySample,
    attacks: &[String],
    seed: u64,
) -> BTreeMap<String, (Vec<f64>, Vec<f64>)> {
    let mut out = BTreeMap::new();
    let lm = losses(model, d, &sample.scored_members);
    let ln = losses(model, d, &sample.scored_non_members);
    let need_refs = attacks.iter().any(|a| a == "lira" || a == "rmia");
    // Reference models, trained at home on random halves of the records
    // outside the audit sample: every audit record is "out" for them.
    // Reference models copy a one-stage model's shape (the policy refuses
    // these attacks for a series network).
    let ref_sizes = model.as_single().map(Mlp::sizes);
    let refs: Vec<Network> = if let (true, Some(sizes)) = (need_refs, ref_sizes) {
        let in_sample: std::collections::BTreeSet<usize> = sample
            .members
            .iter()
            .chain(&sample.non_members)
            .copied()
            .collect();
        let pool: Vec<usize> = (0..d.len()).filter(|i| !in_sample.contains(i)).collect();
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ u64::from(sample.party));
        (0..REFERENCE_MODELS)
            .map(|k| {
                let half: Vec<usize> = pool
                    .iter()
                    .copied()
                    .filter(|_| fair_coin(&mut rng))
                    .collect();
                let mut m = Mlp::new(&sizes, seed ^ (k as u64 + 1));
                if !half.is_empty() {
                    train_central(
                        &mut m,
                        &d.subset(&half),
                        20,
                        16,
                        0.05,
                        0.9,
                        seed ^ (k as u64 + 7),
                    );
                }
                Network::single(m)
            })
            .collect()
    } else {
        Vec::new()
    };
    // Every reference model's losses on the sample, computed once for both
    // attacks that use them (empty without reference models).
    let ref_losses =
        |idx: &[usize]| -> Vec<Vec<f64>> { refs.iter().map(|r| losses(r, d, idx)).collect() };
    let (rm, rn) = (
        ref_losses(&sample.scored_members),
        ref_losses(&sample.scored_non_members),
    );
    for a in attacks {
        match a.as_str() {
            "loss" => {
                let s = |l: &[f64]| l.iter().map(|x| -(x.max(1e-30)).ln()).collect::<Vec<_>>();
                out.insert(a.clone(), (s(&lm), s(&ln)));
            }
            "lira" => {
                // Offline LiRA with a fixed variance: one σ pooled over all
                // reference confidences of the sample.
                let all: Vec<f64> = rm
                    .iter()
                    .chain(&rn)
                    .flatten()
                    .map(|l| logit_conf(*l))
                    .collect();
                let mean_all = all.iter().sum::<f64>() / all.len().max(1) as f64;
                let sigma = (all.iter().map(|v| (v - mean_all).powi(2)).sum::<f64>()
                    / all.len().max(2) as f64)
                    .sqrt()
                    .max(1e-3);
                let score = |target: &[f64], r: &[Vec<f64>]| -> Vec<f64> {
                    target
                        .iter()
                        .enumerate()
                        .map(|(i, l)| {
                            let mu =
                                r.iter().map(|rl| logit_conf(rl[i])).sum::<f64>() / r.len() as f64;
                            (logit_conf(*l) - mu) / sigma
                        })
                        .collect()
                };
                out.insert(a.clone(), (score(&lm, &rm), score(&ln, &rn)));
            }
            "rmia" => {
                // Pr(x|θ) / Pr(x), Pr(x) averaged over the reference models.
                let ratio = |target: &[f64], r: &[Vec<f64>]| -> Vec<f64> {
                    target
                        .iter()
                        .enumerate()
                        .map(|(i, l)| {
                            let p_ref =
                                r.iter().map(|rl| (-rl[i]).exp()).sum::<f64>() / r.len() as f64;
                            (-l).exp() / p_ref.max(1e-300)
                        })
                        .collect()
                };
                let (qm, qn) = (ratio(&lm, &rm), ratio(&ln, &rn));
                // Population z: the party's held-out non-members (leaving
                // the record itself out); score = share of z it dominates.
                let dominated = |q: f64, skip: Option<usize>| -> f64 {
                    let zs: Vec<f64> = qn
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| Some(*j) != skip)
                        .map(|(_, v)| *v)
                        .collect();
                    if zs.is_empty() {
                        return 0.5;
                    }
                    zs.iter().filter(|&&z| q >= z).count() as f64 / zs.len() as f64
                };
                let sm = qm.iter().map(|&q| dominated(q, None)).collect();
                let sn = qn
                    .iter()
                    .enumerate()
                    .map(|(i, &q)| dominated(q, Some(i)))
                    .collect();
                out.insert(a.clone(), (sm, sn));
            }
            _ => {}
        }
    }
    out
}

/// What the audit found.
pub struct Findings {
    pub attacks: Vec<AttackResult>,
    pub canary: Option<CanaryAudit>,
    /// The released model's accuracy on audit members and non-members;
    /// `None` when the audit summed nothing.
    pub utility: Option<Utility>,
    /// Transfer: the base and fine-tuned models' noisy confusion counts
    /// over the parties' held-out records.
    pub transfer: Option<TransferCounts>,
}

pub use shroud_audit::utility::TransferCounts;

/// The attacks scored on real records: the policy's list without "canary".
pub fn population_attacks(policy: &Policy) -> Vec<String> {
    policy
        .audit
        .attacks
        .iter()
        .filter(|a| a.as_str() != "canary")
        .cloned()
        .collect()
}

/// Width of the count vector each party contributes.
pub fn counts_width(policy: &Policy) -> usize {
    count_blocks(policy).iter().map(|b| b.width).sum()
}

/// Members right, members wrong, non-members right, non-members wrong:
/// how the released model classifies the party's utility sample.
pub fn utility_counts(model: &Network, d: &Dataset, sample: &PartySample) -> [u32; UTILITY_COUNTS] {
    let right_wrong = |idx: &[usize]| -> (u32, u32) {
        if idx.is_empty() {
            return (0, 0);
        }
        let right = crate::model::hits(|x| model.predict(x), d, Some(idx)) as u32;
        (right, idx.len() as u32 - right)
    };
    let (mr, mw) = right_wrong(&sample.utility_members);
    let (nr, nw) = right_wrong(&sample.utility_non_members);
    [mr, mw, nr, nw]
}

/// Party side: scores the party's scored audit records with every attack
/// and bins the scores, members then non-members per attack, then appends
/// the utility counts, each block where the policy's [`block_layout`]
/// puts it.
pub fn party_counts(
    model: &Network,
    d: &Dataset,
    sample: &PartySample,
    attacks: &[String],
    layout: &[std::ops::Range<usize>],
    seed: u64,
) -> Vec<u32> {
    let scores = party_scores(model, d, sample, attacks, seed);
    let utility = layout[attacks.len()].clone();
    let mut counts = vec![0u32; utility.end];
    for (a, range) in attacks.iter().zip(layout) {
        let (m, n) = &scores[a];
        let base = range.start;
        m.iter().for_each(|&s| counts[base + bin(a, s)] += 1);
        n.iter().for_each(|&s| counts[base + BINS + bin(a, s)] += 1);
    }
    counts[utility].copy_from_slice(&utility_counts(model, d, sample));
    counts
}

/// What a party puts into the audit's secure sum: its counts plus its
/// discrete Gaussian share of each block's noise (from the privacy plan),
/// wrapped to 32-bit words. Only these noisy words leave the party, and
/// only inside a secure sum, one noise std per block of [`count_blocks`];
/// with none (no DP) the counts go as they are.
///
/// `noise_seed(k)` keys the noise on block `k`'s counts: a fresh key from
/// the operating system for each, except in reproducible test runs.
pub fn party_input(
    counts: &[u32],
    layout: &[std::ops::Range<usize>],
    noise_stds: &[f64],
    mut noise_seed: impl FnMut(usize) -> crate::dp::gaussian::NoiseSeed,
) -> Result<Vec<u32>, crate::dp::noise::NoiseError> {
    let mut v: zeroize::Zeroizing<Vec<i64>> =
        zeroize::Zeroizing::new(counts.iter().map(|&c| i64::from(c)).collect());
    for (k, (&std, range)) in noise_stds.iter().zip(layout.iter().cloned()).enumerate() {
        let share = crate::dp::noise::DiscreteGaussianShare::new(std)?;
        share.add_to_with_seed(&mut v[range], &noise_seed(k))?;
    }
    Ok(v.iter().map(|&x| x as u32).collect())
}

/// The summed words as signed noisy counts (the sum is far inside ±2^31).
pub fn decode_counts(summed: &[u32]) -> Vec<i64> {
    summed.iter().map(|&w| i64::from(w as i32)).collect()
}

/// The audit's decoded sum and the noise each of its counts carries.
pub struct SummedCounts {
    pub counts: Vec<i64>,
    /// Per block of [`count_blocks`]: the std of the noise on each count,
    /// summed over the parties that contributed (0 without DP).
    pub noise_std: Vec<f64>,
}

impl SummedCounts {
    pub fn new(
        summed: &[u32],
        noise_stds: &[f64],
        contributors: usize,
        blocks: usize,
    ) -> SummedCounts {
        SummedCounts {
            counts: decode_counts(summed),
            noise_std: if noise_stds.is_empty() {
                vec![0.0; blocks]
            } else {
                noise_stds
                    .iter()
                    .map(|s| s * (contributors as f64).sqrt())
                    .collect()
            },
        }
    }
}

/// Coordinator side: the consortium-wide ROC of every attack from the
/// summed counts, and the canary audit from the canaries it drew.
pub fn findings(
    setup: &AuditSetup,
    summed: &SummedCounts,
    policy: &Policy,
    delta: f64,
) -> Findings {
    let attacks = population_attacks(policy);
    let confidence = policy.audit.confidence;
    let mut results = Vec::new();
    let ranges = block_layout(policy);
    for (k, a) in attacks.iter().enumerate() {
        let base = ranges[k].start;
        let edges = lower_edges(a);
        let counts = NoisyCounts {
            members: &summed.counts[base..base + BINS],
            non_members: &summed.counts[base + BINS..base + 2 * BINS],
            lower_edges: &edges,
            noise_std: summed.noise_std[k],
        };
        let analysis = counts.analyse(delta, confidence);
        let perfect = counts.perfect(delta, confidence);
        let parameters = match a.as_str() {
            "loss" => {
                json!({"score": "-ln(cross-entropy loss)", "threshold": "every bin edge", "bins": BINS, "sample_seed": setup.sample_seed})
            }
            "lira" => {
                json!({"variant": "offline", "reference_models_per_party": REFERENCE_MODELS, "reference_training": "random halves of the party's records outside its audit sample, 20 epochs", "statistic": "logit-scaled confidence ln(p/(1-p))", "variance": "fixed, pooled per party", "bins": BINS, "sample_seed": setup.sample_seed})
            }
            _ => {
                json!({"variant": "offline", "reference_models_per_party": REFERENCE_MODELS, "gamma": 1.0, "population": "the party's held-out audit non-members, leave-one-out", "bins": BINS, "sample_seed": setup.sample_seed})
            }
        };
        let mut result = noisy_attack_result(
            a,
            parameters,
            &analysis,
            &perfect,
            summed.noise_std[k],
            policy,
        );
        result.histogram = Some(shroud_audit::report::ScoreHistogram {
            lower_edges: edges.clone(),
            members: counts.members.to_vec(),
            non_members: counts.non_members.to_vec(),
        });
        results.push(result);
    }
    let transfer = count_blocks(policy)
        .iter()
        .position(|b| b.name == TRANSFER)
        .and_then(|k| {
            let c = summed.counts.get(ranges[k].clone())?;
            let half = c.len() / 2;
            Some(TransferCounts {
                classes: policy.strategy.classes,
                base: c[..half].to_vec(),
                fine_tuned: c[half..].to_vec(),
                noise_std: summed.noise_std.get(k).copied().unwrap_or(0.0),
            })
        });
    let utility = summed.counts.get(ranges[attacks.len()].clone()).map(|c| {
        Utility::from_counts(
            c.try_into().expect("the utility block's width"),
            summed.noise_std[attacks.len()],
            confidence,
        )
    });
    let canary = if setup.canaries.is_empty() {
        None
    } else {
        let scores = &setup.canary_scores;
        let included: Vec<bool> = setup.canaries.iter().map(|c| c.included).collect();
        // The canaries as one more attack: their own ROC and bounds.
        let pick = |want: bool| -> Vec<f64> {
            scores
                .iter()
                .zip(&included)
                .filter(|(_, &b)| b == want)
                .map(|(s, _)| *s)
                .collect()
        };
        let roc = Roc::from_scores(&pick(true), &pick(false));
        results.push(attack_result(
            "canary",
            json!({"canaries": setup.canaries.len(), "kind": "white-box gradient canaries: one coordinate each, appended to every training sum", "contribution": "the task's clip norm in the canary's coordinate, as one more record (sampled, rounded and noised like one)", "inclusion": "fair coin each", "score": "the canary's coordinate summed over the decoded training sums, in clip norms", "guesses": "every canary: the higher half in, the lower half out", "canary_seed": setup.canary_seed}),
            &roc,
            delta,
            confidence,
            policy,
        ));
        Some(canary::audit(scores, &included, delta, confidence))
    };
    Findings {
        attacks: results,
        canary,
        utility,
        transfer,
    }
}

/// The FPRs at which every attack reports its TPR: the standard three and
/// the policy's own.
fn report_fprs(policy: &Policy) -> Vec<f64> {
    let mut fprs = vec![0.001, 0.01, 0.1];
    if let Some((f, _)) = policy.audit.max_tpr_at_fpr {
        if !fprs.iter().any(|x| (x - f).abs() < 1e-12) {
            fprs.push(f);
        }
    }
    fprs
}

/// One population attack's figures from noisy counts: point estimates from
/// the clamped counts, bounds that account for the noise.
fn noisy_attack_result(
    attack: &str,
    parameters: serde_json::Value,
    a: &shroud_audit::noisy::NoisyAnalysis,
    perfect: &shroud_audit::noisy::NoisyAnalysis,
    noise_std: f64,
    policy: &Policy,
) -> AttackResult {
    let tpr_at_fpr = report_fprs(policy)
        .into_iter()
        .map(|fpr| {
            let (lo, hi) = a.tpr_bounds_at_fpr(fpr);
            TprAtFpr {
                fpr,
                tpr: a.roc.tpr_at_fpr(fpr),
                tpr_lower: lo,
                tpr_upper: hi,
                tpr_lower_ceiling: Some(perfect.tpr_bounds_at_fpr(fpr).0),
            }
        })
        .collect();
    let pts: Vec<(f64, f64)> = a.roc.points.iter().map(|p| (p.fpr, p.tpr)).collect();
    AttackResult {
        attack: attack.to_string(),
        parameters,
        members: a.members,
        non_members: a.non_members,
        auc: a.roc.auc(),
        auc_lower: Some(a.auc_lower),
        auc_lower_ceiling: Some(perfect.auc_lower),
        noise_std: Some(noise_std),
        tpr_at_fpr,
        epsilon: a.epsilon,
        roc: thin(&pts, 400),
        band: a
            .thresholds
            .iter()
            .map(|t| (t.fpr_lower, t.fpr_upper, t.tpr_lower, t.tpr_upper))
            .collect(),
        histogram: None,
    }
}

/// AUC, TPR at the standard FPRs (and the policy's), the ε lower bound and
/// a thinned curve for one attack.
fn attack_result(
    attack: &str,
    parameters: serde_json::Value,
    roc: &Roc,
    delta: f64,
    confidence: f64,
    policy: &Policy,
) -> AttackResult {
    let eps = lower_bound(roc, delta, confidence);
    let alpha = (1.0 - confidence) / 2.0;
    let tpr_at_fpr = report_fprs(policy)
        .iter()
        .map(|&fpr| {
            let tp = roc
                .points
                .iter()
                .filter(|p| p.fpr <= fpr + 1e-12)
                .map(|p| p.true_positives)
                .max()
                .unwrap_or(0);
            TprAtFpr {
                fpr,
                tpr: roc.tpr_at_fpr(fpr),
                tpr_lower: cp_lower(tp, roc.members, alpha),
                tpr_upper: cp_upper(tp, roc.members, alpha),
                tpr_lower_ceiling: Some(cp_lower(roc.members, roc.members, alpha)),
            }
        })
        .collect();
    let pts: Vec<(f64, f64)> = roc.points.iter().map(|p| (p.fpr, p.tpr)).collect();
    AttackResult {
        attack: attack.to_string(),
        parameters,
        members: roc.members,
        non_members: roc.non_members,
        auc: roc.auc(),
        auc_lower: None,
        auc_lower_ceiling: None,
        noise_std: None,
        tpr_at_fpr,
        epsilon: eps,
        roc: thin(&pts, 400),
        band: Vec::new(),
        histogram: None,
    }
}
