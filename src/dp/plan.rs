//! What a policy implies, computed before anything runs: the scale γ, each
//! party's noise share, the rounding-widened sensitivity, the bits needed,
//! and ε after every round under the policy's accountant — next to the ε an
//! ideal continuous Gaussian with the same noise multiplier would cost.
//!
//! Units: the encoder clips each contribution to L2 norm `c`, divides by γ
//! and rounds to integers, so `c/γ` is the clip norm in integer units.
//! Conditional randomized rounding (Kairouz, Liu, Steinke 2021, Thm 1, with
//! β = e^{-1/2}) bounds the rounded vector's norm by
//! `Δ² = (c/γ)² + d/4 + √(2 ln 1/β)·(c/γ + √d/2)`, and Δ is the sensitivity
//! the accountants use. The total noise std is `z·c/γ` when the worst case of
//! `threshold − max_colluding` honest survivors contribute shares, so each
//! party adds `σ = z·(c/γ)/√(threshold − max_colluding)`.

use serde::Serialize;

use super::accountant::{
    ddg_rho, ddg_round, ideal_round, rdp_curve, rdp_curve_zcdp, rdp_epsilon, zcdp_epsilon,
    zcdp_epsilon_estimate, zcdp_epsilon_of_rho, AccountingError, RoundMeasurement,
};
use super::rotation::padded_len;
use crate::policy::{AccountantKind, Policy, PolicyError, Rotation, StrategyKind, Unit};

/// Probability that any coordinate of the sum wraps around the modulus.
pub const WRAP_PROBABILITY: f64 = 1e-6;
/// ln(1/β) for the conditional rounding.
const ROUNDING_LN_INV_BETA: f64 = 0.5;
/// Widening of the sensitivity by rounding above which `bits` are too few.
const MAX_INFLATION: f64 = 2.0;
/// A calibrated policy spends at most this fraction below its budget short
/// of it: never on the budget, where another accountant's rounding could
/// put it over.
pub const CALIBRATION_MARGIN: f64 = 1e-3;

#[derive(Debug, Clone, PartialEq)]
pub struct PlanError {
    pub key: &'static str,
    pub message: String,
}

impl From<AccountingError> for PlanError {
    fn from(e: AccountingError) -> Self {
        PlanError {
            key: "privacy",
            message: e.to_string(),
        }
    }
}

/// The figures one round costs, as the ledger records them.
#[derive(Debug, Clone, Serialize)]
pub struct RoundCharge {
    /// zCDP ρ of the round (sum-of-discrete-Gaussians bound).
    pub rho: f64,
    /// RDP of the round over the accountant's orders.
    pub rdp: Vec<f64>,
}

impl RoundCharge {
    /// A ρ-zCDP release applied to a Poisson sample at rate `q` (1: all).
    pub fn of_zcdp(rho: f64, q: f64) -> RoundCharge {
        RoundCharge {
            rho,
            rdp: rdp_curve_zcdp(q, rho),
        }
    }

    /// `k` of these releases in sequence.
    pub fn times(&self, k: u32) -> RoundCharge {
        RoundCharge {
            rho: self.rho * f64::from(k),
            rdp: self.rdp.iter().map(|r| r * f64::from(k)).collect(),
        }
    }

    /// This release and `other` in sequence.
    pub fn plus(&self, other: &RoundCharge) -> RoundCharge {
        RoundCharge {
            rho: self.rho + other.rho,
            rdp: self
                .rdp
                .iter()
                .zip(&other.rdp)
                .map(|(a, b)| a + b)
                .collect(),
        }
    }
}

/// One block of counts in the audit's secure sum (see
/// [`crate::audit::count_blocks`]).
#[derive(Debug, Clone, Serialize)]
pub struct BlockNoise {
    /// The population attack whose histograms it holds, or "utility".
    pub block: String,
    /// L2 sensitivity of the block to one unit of privacy, in counts.
    pub sensitivity: f64,
    /// The std of the discrete Gaussian each party adds to every count.
    pub noise_std_per_party: f64,
}

/// The audit's release: after the last training round, one secure sum of
/// every party's binned attack scores, each count noised like a training
/// update and charged like one.
#[derive(Debug, Clone, Serialize)]
pub struct AuditPlan {
    pub blocks: Vec<BlockNoise>,
    /// Share of the job's budget (in zCDP ρ) set aside for it.
    pub budget_share: f64,
    /// What it costs.
    pub charge: RoundCharge,
    /// ε of the audit's release alone, at the policy's δ.
    pub epsilon_alone: f64,
}

impl AuditPlan {
    /// Each block's noise std per party, in the order of
    /// [`crate::audit::count_blocks`].
    pub fn noise_stds(&self) -> Vec<f64> {
        self.blocks.iter().map(|a| a.noise_std_per_party).collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PrivacyPlan {
    pub unit: Unit,
    pub accountant: AccountantKind,
    /// Parameters per update, and after padding for the rotation.
    pub dimension: usize,
    pub padded_dimension: usize,
    pub clip_norm: f64,
    pub noise_multiplier: f64,
    pub sampling_rate: f64,
    pub rounds: u32,
    pub delta: f64,
    pub bits: u8,
    /// γ: one integer unit is worth γ in the model's units.
    pub gamma: f64,
    /// `c/γ`: the clip norm in integer units.
    pub scaled_clip: f64,
    /// Δ: the L2 sensitivity after rounding, in integer units.
    pub sensitivity: f64,
    /// Δ / (c/γ): how much rounding widens the sensitivity.
    pub sensitivity_inflation: f64,
    /// Honest survivors whose shares alone meet the budget.
    pub honest_survivors: usize,
    /// The std of the discrete Gaussian each party adds, in integer units.
    pub noise_std_per_party: f64,
    /// Largest magnitude a coordinate of the sum reaches except with
    /// probability `WRAP_PROBABILITY`, in integer units.
    pub coordinate_bound: f64,
    /// Fewest bits at which the rounding widens the sensitivity by at most
    /// 1 % (γ derived from bits) or at which the sum cannot wrap (γ fixed).
    pub bits_needed: u8,
    /// The per-round cost.
    pub charge: RoundCharge,
    pub epsilon_by_round: Vec<f64>,
    pub epsilon_total: f64,
    /// ε of the ideal continuous Gaussian with the same noise multiplier,
    /// sampling rate and rounds under the same accountant, no rounding.
    pub epsilon_ideal: f64,
    pub epsilon_budget: f64,
    /// The audit's noisy release, when the policy runs population attacks
    /// with DP; its charge is in `epsilon_total`, not `epsilon_by_round`.
    pub audit: Option<AuditPlan>,
    /// Transfer: each party's home fine-tuning, a DP-SGD of its own whose
    /// rounds are its steps. Only that party's records pay it; its charge
    /// is in `epsilon_total`.
    pub finetune: Option<Box<PrivacyPlan>>,
    /// The rounds are steps of each party's own DP-SGD at home (the
    /// ensemble's members): noise comes from the party alone and only its
    /// records pay.
    pub at_home: bool,
    /// The ensemble's noisy vote, when the policy asks for one: members
    /// then train at home without noise and the vote alone pays.
    pub vote: Option<VotePlan>,
    /// The strategy's one-off statistics sum (FedImpres' class counts and
    /// feature moments); its charge is in `epsilon_total`.
    pub statistics: Option<StatisticsPlan>,
}

/// A one-off noisy secure sum of summary statistics (see
/// [`super::statistics`]), charged once per job.
#[derive(Debug, Clone, Serialize)]
pub struct StatisticsPlan {
    pub blocks: Vec<StatisticsNoise>,
    /// How many statistics sums the job releases, each charged `charge`.
    pub sums: u32,
    /// Share of the job's budget (in zCDP ρ) they spend together.
    pub budget_share: f64,
    /// What one sum costs.
    pub charge: RoundCharge,
    /// ε of one sum alone, at the policy's δ.
    pub epsilon_alone: f64,
}

/// One block of a statistics sum and its noise.
#[derive(Debug, Clone, Serialize)]
pub struct StatisticsNoise {
    #[serde(flatten)]
    pub block: super::statistics::StatisticsBlock,
    /// L2 sensitivity of the rounded block, in grid steps.
    pub sensitivity: f64,
    /// The std of the discrete Gaussian each party adds, in grid steps.
    pub noise_std_per_party: f64,
}

impl StatisticsPlan {
    pub fn noise_stds(&self) -> Vec<f64> {
        self.blocks.iter().map(|b| b.noise_std_per_party).collect()
    }
}

/// A PATE-style noisy vote: each member's one-hot votes on the public set's
/// `queries` records, summed with discrete Gaussian noise. One record can
/// change its member's every vote, so the L2 sensitivity is √(2·queries).
#[derive(Debug, Clone, Serialize)]
pub struct VotePlan {
    pub queries: usize,
    pub sensitivity: f64,
    /// The std the policy asks for on each summed vote count; each party's
    /// share is rounded up to whole votes, so the honest survivors' shares
    /// sum to at least this.
    pub noise_std: f64,
    pub noise_std_per_party: f64,
    pub charge: RoundCharge,
    /// ε of the vote alone, at the policy's δ.
    pub epsilon_alone: f64,
}

impl PrivacyPlan {
    /// What every party's home training costs its own records, in total:
    /// the ensemble members' steps, or the transfer's fine-tuning.
    pub fn home_charge(&self) -> Option<RoundCharge> {
        if self.unit == Unit::None || self.vote.is_some() {
            return None;
        }
        if self.at_home {
            return Some(self.charge.times(self.rounds));
        }
        self.finetune.as_ref().map(|f| f.charge.times(f.rounds))
    }

    /// Every release a job under this plan pays for, as a job's admission
    /// reserves them: one charge per training round (the ensemble's
    /// members' steps), or the ensemble's one vote; the audit's counts;
    /// and the transfer's fine-tuning, once (every party's is the same, so
    /// the largest party's total is one of them).
    pub fn planned_charges(&self) -> Vec<RoundCharge> {
        let mut planned = match &self.vote {
            // A voting ensemble's members spend nothing: its vote pays.
            Some(v) => vec![v.charge.clone()],
            None => vec![self.charge.clone(); self.rounds as usize],
        };
        planned.extend(self.audit.as_ref().map(|a| a.charge.clone()));
        if let Some(s) = &self.statistics {
            planned.extend(std::iter::repeat(s.charge.clone()).take(s.sums as usize));
        }
        if !self.at_home {
            planned.extend(self.home_charge());
        }
        planned
    }
}

struct Shape {
    dimension: usize,
    /// Plain coordinates every training task carries after the model's.
    canaries: usize,
    /// Coordinates one party puts into one round's secure sums, after
    /// padding: the `d` of the round's privacy bound.
    padded: usize,
    /// One party's tasks in the costliest round: (share of the clip norm,
    /// padded length). FedAvg has one task with the whole norm.
    tasks: Vec<(f64, usize)>,
    parties: usize,
    honest: usize,
    /// Most contributions summed in one round (parties or sampled records).
    contributions: f64,
    rotation: bool,
    /// One party's own DP-SGD step: its noise whole, its sum alone.
    home: bool,
}

fn shape(policy: &Policy) -> Shape {
    shape_of(policy, policy.strategy.kind.trains_at_home())
}

/// The shape of a round, `home` when it is one party's own DP-SGD step: the
/// noise is that party's alone, whole, on its own sum.
fn shape_of(policy: &Policy, home: bool) -> Shape {
    let dimension = policy.strategy.dimension();
    let rotation = policy.encoding.rotation == Rotation::Hadamard;
    let pad = |d: usize| if rotation { padded_len(d) } else { d };
    // Each task carries its share of the clip norm (a FedMR layer of d of
    // the model's D parameters is clipped to c·√(d/D)), so a party's tasks
    // in one round together stay within c. Every task also carries one
    // coordinate per audit canary. The round is bounded by its costliest
    // shape: the most padded coordinates.
    let canaries = policy.audit.canaries as usize;
    let tasks: Vec<(f64, usize)> = policy
        .strategy
        .round_shapes()
        .into_iter()
        .map(|dims| {
            dims.iter()
                .map(|&(d, share)| (share, pad(d) + canaries))
                .collect::<Vec<_>>()
        })
        .max_by_key(|t| t.iter().map(|(_, p)| p).sum::<usize>())
        .expect("a strategy has at least one round shape");
    let padded = tasks.iter().map(|(_, p)| p).sum();
    let parties = policy.parties();
    let contributions = match policy.record_sums() {
        true => {
            // Poisson sampling: the expected batch plus a wide tail margin.
            let n = policy.total_records().unwrap_or(0) as f64;
            let mean = policy.privacy.sampling_rate * n;
            (mean + 7.0 * mean.sqrt() + 7.0).min(n.max(1.0))
        }
        false => parties as f64,
    };
    Shape {
        dimension,
        canaries,
        padded,
        tasks,
        parties: if home { 1 } else { parties },
        honest: if home { 1 } else { policy.honest_survivors() },
        contributions,
        rotation,
        home,
    }
}

/// Two-sided Gaussian tail multiplier for probability `p` (Chernoff bound).
fn tail(p: f64) -> f64 {
    (2.0 * (2.0 / p).ln()).sqrt()
}

struct Encoding {
    gamma: f64,
    bound: f64,
}

/// Per-coordinate bound of the sum, in integer units, for a given γ: signal
/// (every contribution aligned), rounding (one unit per contribution) and
/// noise (every party's share).
fn coordinate_bound(policy: &Policy, s: &Shape, z: f64, gamma: f64) -> f64 {
    let c = policy.privacy.clip_norm / gamma;
    let t = tail(WRAP_PROBABILITY / s.padded as f64);
    let per_coord_signal = if s.rotation {
        // A rotated vector's coordinates are sub-Gaussian with variance
        // proxy ‖x‖²/d: the task with the largest clip per coordinate.
        s.tasks
            .iter()
            .map(|&(share, p)| c * share * t / ((p - s.canaries) as f64).sqrt())
            .fold(0.0, f64::max)
    } else {
        c
    };
    // A canary's coordinate (not rotated) holds one canary at most.
    let canary_signal = if s.canaries > 0 { c + 1.0 } else { 0.0 };
    let signal = (s.contributions * (per_coord_signal + 1.0)).max(canary_signal);
    let noise = if policy.privacy.unit == Unit::None {
        0.0
    } else {
        let sigma_party = z * c / (s.honest as f64).sqrt();
        sigma_party * (s.parties as f64).sqrt() * t
    };
    signal + noise
}

fn choose_gamma(policy: &Policy, s: &Shape, z: f64, bits: u8) -> Result<Encoding, PlanError> {
    let half = 2f64.powi(i32::from(bits) - 1) - 1.0;
    if let Some(gamma) = policy.encoding.gamma {
        let bound = coordinate_bound(policy, s, z, gamma);
        if bound > half {
            return Err(PlanError {
                key: "encoding.bits",
                message: format!(
                    "{bits} bits are too few for gamma = {gamma}: a coordinate of the sum reaches \
                     {bound:.0} with probability above {WRAP_PROBABILITY:e}, beyond ±{half:.0}; \
                     use at least {} bits or a larger gamma",
                    bits_for(bound)
                ),
            });
        }
        return Ok(Encoding { gamma, bound });
    }
    // The bound is A/γ + R (R: rounding); solve A/γ + R = half for γ.
    let r = coordinate_bound(policy, s, z, f64::INFINITY);
    let a = coordinate_bound(policy, s, z, 1.0) - r;
    if half <= r {
        return Err(PlanError {
            key: "encoding.bits",
            message: format!(
                "{bits} bits are too few: rounding alone can move a coordinate of the sum by {r:.0}, \
                 beyond ±{half:.0}; use at least {} bits",
                bits_for(2.0 * r)
            ),
        });
    }
    let gamma = a / (half - r);
    Ok(Encoding {
        gamma,
        bound: coordinate_bound(policy, s, z, gamma),
    })
}

fn bits_for(bound: f64) -> u8 {
    ((2.0 * bound + 1.0).log2().ceil() as u8).clamp(8, 64)
}

/// Δ from Thm 1 of Kairouz, Liu, Steinke (2021).
pub fn rounded_sensitivity(scaled_clip: f64, padded: usize) -> f64 {
    let d = padded as f64;
    let k = (2.0 * ROUNDING_LN_INV_BETA).sqrt();
    (scaled_clip * scaled_clip + d / 4.0 + k * (scaled_clip + d.sqrt() / 2.0)).sqrt()
}

/// Δ of one party's whole round: its tasks' rounded vectors are bounded
/// one by one, so the concatenation's squared norm is their sum.
fn round_sensitivity(scaled_clip: f64, s: &Shape) -> f64 {
    s.tasks
        .iter()
        .map(|&(share, p)| rounded_sensitivity(scaled_clip * share, p).powi(2))
        .sum::<f64>()
        .sqrt()
}

struct Core {
    enc: Encoding,
    scaled_clip: f64,
    sensitivity: f64,
    sigma_party: f64,
    charge: RoundCharge,
}

fn core(policy: &Policy, s: &Shape, z: f64, bits: u8) -> Result<Core, PlanError> {
    let enc = choose_gamma(policy, s, z, bits)?;
    let scaled_clip = policy.privacy.clip_norm / enc.gamma;
    let sensitivity = round_sensitivity(scaled_clip, s);
    // Rounded up to a whole number of integer units: more noise, never
    // less, and an integer scale keeps opendp's exact sampler in small
    // rationals (a fractional f64 scale makes it several times slower).
    let sigma_party = (z * scaled_clip / (s.honest as f64).sqrt()).ceil();
    let inflation = sensitivity / scaled_clip;
    if inflation > MAX_INFLATION && policy.encoding.gamma.is_some() {
        return Err(PlanError {
            key: "encoding.gamma",
            message: format!(
                "gamma = {} is too coarse: rounding to its grid widens the sensitivity \
                 {inflation:.2}-fold; use a gamma of at most {:.3e}",
                enc.gamma,
                policy.privacy.clip_norm / (s.padded as f64).sqrt()
            ),
        });
    }
    if inflation > MAX_INFLATION {
        return Err(PlanError {
            key: "encoding.bits",
            message: format!(
                "{bits} bits are too few: rounding to the integer grid they allow (γ = {:.3e}) \
                 widens the sensitivity {inflation:.2}-fold; use at least {} bits",
                enc.gamma,
                (bits..=32)
                    .find(|&b| choose_gamma(policy, s, z, b)
                        .map(
                            |e| round_sensitivity(policy.privacy.clip_norm / e.gamma, s) * e.gamma
                                / policy.privacy.clip_norm
                                <= MAX_INFLATION
                        )
                        .unwrap_or(false))
                    .unwrap_or(32)
            ),
        });
    }
    let rho = ddg_rho(sensitivity, sigma_party, s.honest, s.padded);
    Ok(Core {
        enc,
        scaled_clip,
        sensitivity,
        sigma_party,
        charge: RoundCharge::of_zcdp(rho, policy.privacy.sampling_rate),
    })
}

/// The zCDP ρ whose conversion spends exactly `epsilon` at `delta`.
pub fn rho_for_epsilon(epsilon: f64, delta: f64) -> Result<f64, PlanError> {
    if !(epsilon.is_finite() && epsilon > 0.0) {
        return Err(PlanError {
            key: "privacy.epsilon",
            message: format!("must be a positive number, got {epsilon}"),
        });
    }
    // Locate ρ with the fast estimate of opendp's conversion, to a relative
    // 10⁻¹²; then step down until opendp itself certifies it.
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while zcdp_epsilon_estimate(hi, delta) < epsilon {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..200 {
        if hi - lo <= 1e-12 * hi {
            break;
        }
        let mid = 0.5 * (lo + hi);
        if zcdp_epsilon_estimate(mid, delta) > epsilon {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let mut rho = lo;
    for _ in 0..100 {
        if zcdp_epsilon_of_rho(rho, delta)? <= epsilon {
            return Ok(rho);
        }
        rho *= 1.0 - 1e-9;
    }
    Err(PlanError {
        key: "privacy.epsilon",
        message: format!("opendp could not certify a ρ for ε = {epsilon} at δ = {delta}"),
    })
}

/// The audit's noise: each block of counts (a population attack's
/// histograms, the utility counts) gets an equal part of the audit's ρ, and
/// each party's share of a block's noise is the smallest whole number of
/// counts whose sum over the honest survivors meets that part.
fn audit_plan(policy: &Policy) -> Result<Option<AuditPlan>, PlanError> {
    let blocks = crate::audit::count_blocks(policy);
    if policy.privacy.unit == Unit::None || blocks.is_empty() {
        return Ok(None);
    }
    let share = policy.audit.budget_share;
    let rho_target = share * rho_for_epsilon(policy.privacy.epsilon, policy.privacy.delta)?;
    let per_block = rho_target / blocks.len() as f64;
    // The audit is a secure sum over the consortium even when training is
    // at home.
    let honest = policy.honest_survivors();
    let mut noise = Vec::new();
    let mut rho = 0.0;
    for block in blocks {
        let sensitivity = block.sensitivity;
        let sigma = block_sigma(sensitivity, block.width, per_block, honest);
        rho += ddg_rho(sensitivity, sigma, honest, block.width);
        noise.push(BlockNoise {
            block: block.name,
            sensitivity,
            noise_std_per_party: sigma,
        });
    }
    Ok(Some(AuditPlan {
        blocks: noise,
        budget_share: share,
        epsilon_alone: zcdp_epsilon_of_rho(rho, policy.privacy.delta)?,
        // Every record of the audit sample enters: no sampling.
        charge: RoundCharge::of_zcdp(rho, 1.0),
    }))
}

/// The least whole std per party at which `honest` survivors' shares
/// keep a block of `width` counts at L2 sensitivity `sensitivity` within
/// `rho`.
fn block_sigma(sensitivity: f64, width: usize, rho: f64, honest: usize) -> f64 {
    let continuous = sensitivity / (2.0 * rho).sqrt() / (honest as f64).sqrt();
    let mut sigma = continuous.ceil().max(1.0);
    while ddg_rho(sensitivity, sigma, honest, width) > rho {
        sigma += 1.0;
    }
    sigma
}

/// The strategy's statistics sum: each block an equal part of the share's
/// ρ, noised like the audit's counts; refused when its words could wrap.
fn statistics_plan(policy: &Policy) -> Result<Option<StatisticsPlan>, PlanError> {
    let blocks = super::statistics::blocks(policy);
    let sums = super::statistics::sums(policy);
    let statistics_share = match policy.strategy.kind {
        StrategyKind::Fedimpres {
            statistics_share, ..
        }
        | StrategyKind::Fstcbdg {
            statistics_share, ..
        } => statistics_share,
        _ => return Ok(None),
    };
    if blocks.is_empty() || sums == 0 || policy.privacy.unit == Unit::None {
        return Ok(None);
    }
    // The share is split evenly over the job's sums, then over the blocks.
    let rho_target = statistics_share
        * rho_for_epsilon(policy.privacy.epsilon, policy.privacy.delta)?
        / f64::from(sums);
    let per_block = rho_target / blocks.len() as f64;
    let honest = policy.honest_survivors();
    // Most units one coordinate can hold: every record (or party).
    let units = match policy.record_sums() {
        false => policy.parties() as f64,
        true => policy.total_records().map_or(f64::INFINITY, |n| n as f64),
    };
    let half = 2f64.powi(i32::from(super::statistics::STATISTICS_BITS) - 1) - 1.0;
    let mut noise = Vec::new();
    let mut rho = 0.0;
    for block in blocks {
        let sensitivity = block.sensitivity();
        let sigma = block_sigma(sensitivity, block.width, per_block, honest);
        rho += ddg_rho(sensitivity, sigma, honest, block.width);
        let t = tail(WRAP_PROBABILITY / block.width as f64);
        let bound = units * (sensitivity - (block.width as f64).sqrt())
            + sigma * (policy.parties() as f64).sqrt() * t;
        if bound > half {
            return Err(PlanError {
                key: "strategy.feature_bound",
                message: format!(
                    "the statistics sum's {} could reach {bound:.3e} grid steps, beyond a \
                     32-bit word's ±{half:.0}: the roster must state every party's records, \
                     and there may be at most {:.0} of them",
                    block.name,
                    (half - sigma * (policy.parties() as f64).sqrt() * t)
                        / (sensitivity - (block.width as f64).sqrt())
                ),
            });
        }
        noise.push(StatisticsNoise {
            block,
            sensitivity,
            noise_std_per_party: sigma,
        });
    }
    Ok(Some(StatisticsPlan {
        blocks: noise,
        sums,
        budget_share: statistics_share,
        epsilon_alone: zcdp_epsilon_of_rho(rho, policy.privacy.delta)?,
        // Every record enters: no sampling.
        charge: RoundCharge::of_zcdp(rho, 1.0),
    }))
}

/// The audit's release as an opendp measurement on the training rounds'
/// input metric: it costs its fixed ρ at the training sensitivity `d`.
fn audit_measurement(rho: f64, d: f64) -> Result<RoundMeasurement, PlanError> {
    Ok(super::accountant::fixed_rho_measurement(rho, d)?)
}

/// How an ε is computed: `Certified` through opendp's composition and
/// conversion (what plans report and budgets check), `Estimate` by the same
/// conversion formula in plain f64 (searches and per-round projections).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Conversion {
    Certified,
    Estimate,
}

/// ε after `k` training rounds of the real mechanism, and the audit's
/// release when `audit` is given.
fn epsilon_after(
    policy: &Policy,
    s: &Shape,
    c: &Core,
    k: usize,
    audit: Option<&RoundCharge>,
    conversion: Conversion,
) -> Result<f64, PlanError> {
    let delta = policy.privacy.delta;
    Ok(match policy.privacy.accountant {
        AccountantKind::Zcdp if conversion == Conversion::Estimate => {
            // zCDP composes by adding ρ.
            let rho = c.charge.rho * k as f64 + audit.map_or(0.0, |a| a.rho);
            zcdp_epsilon_estimate(rho, delta)
        }
        AccountantKind::Zcdp => {
            let round = ddg_round(c.sigma_party, s.honest, s.padded)?;
            let mut all = vec![round; k];
            if let Some(a) = audit {
                all.push(audit_measurement(a.rho, c.sensitivity)?);
            }
            super::accountant::zcdp_epsilon_of(all, c.sensitivity, delta)?.0
        }
        AccountantKind::Rdp => {
            let mut total: Vec<f64> = c.charge.rdp.iter().map(|r| r * k as f64).collect();
            if let Some(a) = audit {
                total.iter_mut().zip(&a.rdp).for_each(|(t, r)| *t += r);
            }
            rdp_epsilon(&total, delta).0
        }
    })
}

fn epsilon_ideal(policy: &Policy, z: f64) -> Result<f64, PlanError> {
    let p = &policy.privacy;
    Ok(match p.accountant {
        AccountantKind::Zcdp => {
            // Sensitivity 1 and total std z: ρ = 1/(2z²) per round.
            let round = ideal_round(z)?;
            zcdp_epsilon(&round, p.rounds as usize, 1.0, p.delta)?.0
        }
        AccountantKind::Rdp => {
            let curve: Vec<f64> = rdp_curve(p.sampling_rate, z)
                .into_iter()
                .map(|r| r * f64::from(p.rounds))
                .collect();
            rdp_epsilon(&curve, p.delta).0
        }
    })
}

impl PrivacyPlan {
    /// The plan, or why the policy cannot be honoured.
    pub fn for_policy(policy: &Policy) -> Result<PrivacyPlan, PlanError> {
        let s = shape(policy);
        let audit = audit_plan(policy)?;
        if let Some(vote) = vote_plan(policy)? {
            return plan_vote(policy, &s, audit, vote);
        }
        let fixed = FixedReleases {
            audit,
            ..FixedReleases::of(policy)?
        };
        plan_with(policy, &s, fixed)
    }
}

/// The ensemble's noisy vote, when the policy asks for one.
fn vote_plan(policy: &Policy) -> Result<Option<VotePlan>, PlanError> {
    let StrategyKind::Ensemble {
        vote_noise_std: Some(std),
        ..
    } = policy.strategy.kind
    else {
        return Ok(None);
    };
    if policy.privacy.unit == Unit::None {
        return Ok(None);
    }
    VotePlan::with_std(policy, std).map(Some)
}

impl VotePlan {
    /// What a noisy vote over the policy's public set with summed noise std
    /// `std` (in votes) would cost, whether or not the policy votes.
    pub fn with_std(policy: &Policy, std: f64) -> Result<VotePlan, PlanError> {
        let queries = policy.strategy.public_set.as_ref().map_or(0, |p| p.records);
        let honest = policy.honest_survivors();
        let sensitivity = (2.0 * queries as f64).sqrt();
        // A whole number of votes per party, rounded up: more noise, never
        // less, and the exact sampler's integer scale.
        let per_party = (std / (honest as f64).sqrt()).ceil().max(1.0);
        let rho = ddg_rho(
            sensitivity,
            per_party,
            honest,
            queries * policy.strategy.classes,
        );
        Ok(VotePlan {
            queries,
            sensitivity,
            noise_std: std,
            noise_std_per_party: per_party,
            charge: RoundCharge::of_zcdp(rho, 1.0),
            epsilon_alone: zcdp_epsilon_of_rho(rho, policy.privacy.delta)?,
        })
    }
}

/// ε of a vote and the audit together.
fn vote_epsilon(
    policy: &Policy,
    vote: &VotePlan,
    audit: Option<&AuditPlan>,
) -> Result<f64, PlanError> {
    let p = &policy.privacy;
    let total = match audit {
        Some(a) => vote.charge.plus(&a.charge),
        None => vote.charge.clone(),
    };
    Ok(epsilon_of_total(
        p.accountant,
        total.rho,
        &total.rdp,
        p.delta,
    )?)
}

/// ε of releases whose costs add up to `rho` (zCDP) and the RDP curve
/// `rdp`, under `accountant` at `delta`: what the ledger reports as spent.
pub fn epsilon_of_total(
    accountant: AccountantKind,
    rho: f64,
    rdp: &[f64],
    delta: f64,
) -> Result<f64, AccountingError> {
    Ok(match accountant {
        AccountantKind::Zcdp => zcdp_epsilon_of_rho(rho, delta)?,
        // Nothing charged yet spends nothing.
        AccountantKind::Rdp if rdp.iter().all(|r| *r == 0.0) => 0.0,
        AccountantKind::Rdp => rdp_epsilon(rdp, delta).0,
    })
}

/// The plan of a voting ensemble: members train at home without noise
/// (their steps spend nothing), the vote and the audit pay, and a vote
/// whose noise is too small for the budget is refused.
fn plan_vote(
    policy: &Policy,
    s: &Shape,
    audit: Option<AuditPlan>,
    vote: VotePlan,
) -> Result<PrivacyPlan, PlanError> {
    let p = &policy.privacy;
    let epsilon_total = vote_epsilon(policy, &vote, audit.as_ref())?;
    if epsilon_total >= p.epsilon {
        // The least std, to a tenth of a vote, whose vote fits beside the
        // audit: from the continuous estimate Δ/√(2ρ) up, by the same bound.
        let room = rho_for_epsilon(p.epsilon * (1.0 - CALIBRATION_MARGIN), p.delta)?
            - audit.as_ref().map_or(0.0, |a| a.charge.rho);
        let mut least = "a larger budget".to_string();
        if room > 0.0 {
            let mut std = (10.0 * vote.sensitivity / (2.0 * room).sqrt()).ceil() / 10.0;
            for _ in 0..10_000 {
                let v = VotePlan::with_std(policy, std)?;
                if vote_epsilon(policy, &v, audit.as_ref())? < p.epsilon {
                    least = format!("a std of at least {std:.1} votes");
                    break;
                }
                std += 0.1;
            }
        }
        return Err(PlanError {
            key: "strategy.vote_noise_std",
            message: format!(
                "a noisy vote over {} public records with noise std {} votes costs ε = {:.1} \
                 with the audit at δ = {}, reaching the budget ε = {}: one record can change its \
                 member's every vote; use {least}, fewer public records, or no vote_noise_std \
                 (members then train with DP and their probabilities are summed)",
                vote.queries, vote.noise_std, epsilon_total, p.delta, p.epsilon
            ),
        });
    }
    Ok(PrivacyPlan {
        unit: p.unit,
        charge: vote.charge.clone(),
        // The members' steps release nothing.
        epsilon_by_round: vec![0.0; p.rounds as usize],
        epsilon_total,
        epsilon_ideal: epsilon_total,
        audit,
        at_home: true,
        vote: Some(vote),
        ..noiseless_plan(policy, s)?
    })
}

/// A plan that adds no noise: the integer grid for `bits`, and no ε
/// claimed (every figure infinite) unless the caller sets what pays.
fn noiseless_plan(policy: &Policy, s: &Shape) -> Result<PrivacyPlan, PlanError> {
    let p = &policy.privacy;
    let bits = policy.encoding.bits;
    let enc = choose_gamma(policy, s, 0.0, bits)?;
    let scaled_clip = p.clip_norm / enc.gamma;
    Ok(PrivacyPlan {
        unit: p.unit,
        accountant: p.accountant,
        dimension: s.dimension,
        padded_dimension: s.padded,
        clip_norm: p.clip_norm,
        noise_multiplier: 0.0,
        sampling_rate: p.sampling_rate,
        rounds: p.rounds,
        delta: p.delta,
        bits,
        gamma: enc.gamma,
        scaled_clip,
        sensitivity: round_sensitivity(scaled_clip, s),
        sensitivity_inflation: round_sensitivity(scaled_clip, s) / scaled_clip,
        honest_survivors: s.honest,
        noise_std_per_party: 0.0,
        coordinate_bound: enc.bound,
        bits_needed: bits_for(enc.bound).min(32),
        charge: RoundCharge {
            rho: f64::INFINITY,
            rdp: vec![f64::INFINITY; super::accountant::orders().len()],
        },
        epsilon_by_round: vec![f64::INFINITY; p.rounds as usize],
        epsilon_total: f64::INFINITY,
        epsilon_ideal: f64::INFINITY,
        epsilon_budget: p.epsilon,
        audit: None,
        finetune: None,
        at_home: s.home,
        vote: None,
        statistics: None,
    })
}

/// The transfer's home fine-tuning: `finetune_steps` DP-SGD steps at one
/// party, noise of its own, calibrated to `finetune_share` of the job's ρ.
fn finetune_plan(policy: &Policy) -> Result<Option<Box<PrivacyPlan>>, PlanError> {
    let StrategyKind::Transfer {
        finetune_steps,
        finetune_share,
        ..
    } = policy.strategy.kind
    else {
        return Ok(None);
    };
    if policy.privacy.unit == Unit::None {
        return Ok(None);
    }
    let delta = policy.privacy.delta;
    let rho = finetune_share * rho_for_epsilon(policy.privacy.epsilon, delta)?;
    let mut home = policy.clone();
    home.strategy.kind = StrategyKind::Fedavg;
    home.privacy.rounds = finetune_steps;
    home.privacy.epsilon = zcdp_epsilon_of_rho(rho, delta)?;
    home.audit.canaries = 0;
    let s = shape_of(&home, true);
    home.privacy.noise_multiplier = calibrate_z(&home, &s, None).map_err(|e| PlanError {
        key: "strategy.finetune_steps",
        message: format!("the home fine-tuning: {}", e.message),
    })?;
    let plan = plan_with(&home, &s, FixedReleases::none())?;
    Ok(Some(Box::new(plan)))
}

/// The releases whose cost is fixed whatever the noise multiplier: the
/// audit's counts, the transfer's home fine-tuning and a strategy's
/// statistics sum.
struct FixedReleases {
    audit: Option<AuditPlan>,
    finetune: Option<Box<PrivacyPlan>>,
    statistics: Option<StatisticsPlan>,
}

impl FixedReleases {
    fn none() -> FixedReleases {
        FixedReleases {
            audit: None,
            finetune: None,
            statistics: None,
        }
    }

    fn of(policy: &Policy) -> Result<FixedReleases, PlanError> {
        Ok(FixedReleases {
            audit: audit_plan(policy)?,
            finetune: finetune_plan(policy)?,
            statistics: statistics_plan(policy)?,
        })
    }

    /// What they cost together.
    fn charge(&self) -> Option<RoundCharge> {
        [
            self.audit.as_ref().map(|a| a.charge.clone()),
            self.finetune.as_ref().map(|f| f.charge.times(f.rounds)),
            self.statistics.as_ref().map(|s| s.charge.times(s.sums)),
        ]
        .into_iter()
        .flatten()
        .reduce(|a, b| a.plus(&b))
    }
}

fn plan_with(policy: &Policy, s: &Shape, fixed: FixedReleases) -> Result<PrivacyPlan, PlanError> {
    let p = &policy.privacy;
    let z = p.noise_multiplier;
    let bits = policy.encoding.bits;
    if p.unit == Unit::None {
        return noiseless_plan(policy, s);
    }
    let fixed_charge = fixed.charge();
    let audit_charge = fixed_charge.as_ref();
    let FixedReleases {
        audit,
        finetune,
        statistics,
    } = fixed;
    let c = core(policy, s, z, bits)?;
    let inflation = c.sensitivity / c.scaled_clip;
    let rounds = p.rounds as usize;
    let mut epsilon_by_round = Vec::with_capacity(rounds);
    // The projection round by round is estimated; the total, which
    // the budget is held to, comes from opendp.
    for k in 1..rounds {
        epsilon_by_round.push(epsilon_after(policy, s, &c, k, None, Conversion::Estimate)?);
    }
    epsilon_by_round.push(epsilon_after(
        policy,
        s,
        &c,
        rounds,
        None,
        Conversion::Certified,
    )?);
    let epsilon_total = match audit_charge {
        Some(a) => epsilon_after(policy, s, &c, rounds, Some(a), Conversion::Certified)?,
        None => *epsilon_by_round.last().expect("at least one round"),
    };
    if epsilon_total >= p.epsilon {
        let max_rounds = (1..=rounds)
            .take_while(|&k| {
                epsilon_after(policy, s, &c, k, audit_charge, Conversion::Estimate)
                    .is_ok_and(|e| e < p.epsilon)
            })
            .count();
        let z_needed = calibrate_z(policy, s, audit_charge).ok();
        return Err(PlanError {
                key: "privacy.rounds",
                message: format!(
                    "{rounds} rounds{} would spend ε = {epsilon_total:.3} ({}) at δ = {}, reaching the budget \
                     ε = {}; use at most {max_rounds} rounds{}",
                    match &audit {
                        Some(a) => format!(
                            " and the audit's noisy counts ({:.0} % of the budget's ρ)",
                            100.0 * a.budget_share
                        ),
                        None => String::new(),
                    },
                    p.accountant.name(),
                    p.delta,
                    p.epsilon,
                    match z_needed {
                        Some(zn) => format!(", or a noise_multiplier of at least {zn:.3}, or calibrate = true"),
                        None => String::new(),
                    }
                ),
            });
    }
    Ok(PrivacyPlan {
        unit: p.unit,
        accountant: p.accountant,
        dimension: s.dimension,
        padded_dimension: s.padded,
        clip_norm: p.clip_norm,
        noise_multiplier: z,
        sampling_rate: p.sampling_rate,
        rounds: p.rounds,
        delta: p.delta,
        bits,
        gamma: c.enc.gamma,
        scaled_clip: c.scaled_clip,
        sensitivity: c.sensitivity,
        sensitivity_inflation: inflation,
        honest_survivors: s.honest,
        noise_std_per_party: c.sigma_party,
        coordinate_bound: c.enc.bound,
        bits_needed: bits_needed(policy, s, z).unwrap_or(32),
        charge: c.charge,
        epsilon_by_round,
        epsilon_total,
        epsilon_ideal: epsilon_ideal(policy, z)?,
        epsilon_budget: p.epsilon,
        audit,
        finetune,
        at_home: s.home,
        vote: None,
        statistics,
    })
}

impl PrivacyPlan {
    /// The noise multiplier that spends exactly the budget over the rounds.
    pub fn calibrate(policy: &Policy) -> Result<f64, PlanError> {
        if vote_plan(policy)?.is_some() {
            // The vote's noise is the policy's; the members add none.
            return Ok(0.0);
        }
        let fixed = FixedReleases::of(policy)?;
        calibrate_z(policy, &shape(policy), fixed.charge().as_ref())
    }
}

/// ε after all rounds and the audit at noise multiplier `z`; a cost too
/// large for the conversion to represent counts as infinite.
fn total_epsilon(
    policy: &Policy,
    s: &Shape,
    z: f64,
    audit: Option<&RoundCharge>,
    conversion: Conversion,
) -> Result<f64, PlanError> {
    let c = core(policy, s, z, policy.encoding.bits)?;
    Ok(epsilon_after(
        policy,
        s,
        &c,
        policy.privacy.rounds as usize,
        audit,
        conversion,
    )
    .unwrap_or(f64::INFINITY))
}

/// The smallest noise multiplier (to 10⁻⁶ relative) whose rounds and audit
/// spend at most the budget less [`CALIBRATION_MARGIN`]: searched with the
/// estimate, then raised until opendp certifies it.
fn calibrate_z(policy: &Policy, s: &Shape, audit: Option<&RoundCharge>) -> Result<f64, PlanError> {
    let target = policy.privacy.epsilon * (1.0 - CALIBRATION_MARGIN);
    let estimate = |z: f64| total_epsilon(policy, s, z, audit, Conversion::Estimate);
    let (mut lo, mut hi) = (0.25f64, 0.25f64);
    while estimate(hi)? > target {
        lo = hi;
        hi *= 2.0;
        if hi > 1e4 {
            return Err(PlanError {
                key: "privacy.calibrate",
                message: format!(
                    "no noise multiplier up to 10⁴ meets ε = {target} over {} rounds; \
                     raise the budget or lower the rounds",
                    policy.privacy.rounds
                ),
            });
        }
    }
    if lo == hi {
        lo = 0.0;
    }
    // ε falls as z grows: bisect to a z that spends at most the budget.
    for _ in 0..50 {
        let mid = 0.5 * (lo + hi);
        if mid <= 0.0 || estimate(mid)? > target {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-6 * hi {
            break;
        }
    }
    for _ in 0..100 {
        if total_epsilon(policy, s, hi, audit, Conversion::Certified)? <= target {
            return Ok(hi);
        }
        hi *= 1.0 + 1e-6;
    }
    Err(PlanError {
        key: "privacy.calibrate",
        message: format!("opendp could not certify a noise multiplier for ε = {target}"),
    })
}

fn bits_needed(policy: &Policy, s: &Shape, z: f64) -> Option<u8> {
    (8u8..=32).find(|&b| match policy.encoding.gamma {
        Some(_) => choose_gamma(policy, s, z, b).is_ok(),
        None => core(policy, s, z, b)
            .map(|c| c.sensitivity / c.scaled_clip <= 1.01)
            .unwrap_or(false),
    })
}

/// Reading a policy: its terms (`policy`), then what they imply here — the
/// noise multiplier calibrated to the budget when the policy asks, and a
/// plan that can be honoured — or a refusal naming the key at fault.
impl Policy {
    /// Parses, validates and plans policy text; `path` names it in errors.
    pub fn parse(path: &std::path::Path, text: &str) -> Result<Policy, PolicyError> {
        let mut policy = Policy::parse_terms(path, text)?;
        let refuse = |e: PlanError| crate::policy::error_at(path, text, e.key, e.message);
        if policy.privacy.calibrated && policy.privacy.unit != Unit::None {
            policy.privacy.noise_multiplier = PrivacyPlan::calibrate(&policy).map_err(refuse)?;
        }
        PrivacyPlan::for_policy(&policy).map_err(refuse)?;
        Ok(policy)
    }

    /// Reads and parses a policy file.
    pub fn load(path: &std::path::Path) -> Result<Policy, PolicyError> {
        Policy::parse(path, &crate::policy::read_policy_file(path)?)
    }
}
