//! `shroud policy check`.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::dp::plan::PrivacyPlan;
use crate::policy::{Neighbours, Policy, Rotation, StrategyKind, Unit};
use crate::strategy::{round_plan, Composition};

/// The job id the shown rounds are drawn for (groups are public draws
/// bound to the job and round).
const EXAMPLE_JOB: &str = "example";

#[derive(Serialize)]
struct RoundShown {
    round: u32,
    #[serde(flatten)]
    composition: Composition,
    tasks: Vec<TaskShown>,
}

#[derive(Serialize)]
struct TaskShown {
    label: String,
    cohort: Vec<u32>,
    dimension: usize,
    clip_norm: f64,
}

#[derive(Serialize)]
struct CheckReport<'a> {
    file: String,
    policy_hash: &'a str,
    consortium: &'a str,
    parties: usize,
    threshold: usize,
    max_colluding: usize,
    active: bool,
    neighbors: String,
    unit: Unit,
    accountant: &'static str,
    delta: f64,
    epsilon_budget: f64,
    rounds: u32,
    sampling_rate: f64,
    clip_norm: f64,
    noise_multiplier: f64,
    calibrated: bool,
    model: String,
    dimension: usize,
    padded_dimension: usize,
    rotation: Rotation,
    bits: u8,
    bits_needed: u8,
    gamma: f64,
    scaled_clip: f64,
    sensitivity: f64,
    sensitivity_inflation: f64,
    honest_survivors: usize,
    noise_std_per_party: f64,
    rho_per_round: f64,
    epsilon_by_round: &'a [f64],
    /// Training rounds and the audit's release.
    epsilon_total: f64,
    epsilon_ideal: f64,
    audit: Option<&'a crate::dp::plan::AuditPlan>,
    canaries: CanaryCheck,
    no_dp: bool,
    strategy: StrategyKind,
    /// Training at each party's home (the ensemble's members, the
    /// transfer's fine-tuning).
    home: Option<HomeCheck>,
    /// The ensemble's noisy vote, when the policy asks for one.
    vote: Option<&'a crate::dp::plan::VotePlan>,
    /// FedImpres' one-off sum of class counts and feature moments.
    statistics: Option<&'a crate::dp::plan::StatisticsPlan>,
    /// The tasks of each kind of round, drawn for a job named "example".
    rounds_shown: Vec<RoundShown>,
}

/// What each party's home DP-SGD costs its own records.
#[derive(Serialize)]
struct HomeCheck {
    what: &'static str,
    steps: u32,
    noise_multiplier: f64,
    noise_std: f64,
    rho: f64,
    /// ε of the home training alone, at the policy's δ.
    epsilon_alone: f64,
    /// Ensemble: the public set's records, and what a PATE-style noisy
    /// vote over them (one query per record, noise std one vote) would
    /// cost instead.
    public_records: Option<usize>,
    vote_epsilon: Option<f64>,
}

/// What the one-run canary audit can show under this policy.
#[derive(Serialize)]
struct CanaryCheck {
    count: u32,
    auto: bool,
    /// The largest ε every canary guessed right would certify.
    certifiable_max: f64,
    /// Whether that exceeds the policy's ε: only then can the check
    /// "empirical ε ≤ ε spent" fail.
    can_fail: bool,
}

pub fn check(file: &Path, json: bool) -> Result<()> {
    let policy = Policy::load(file)?;
    let plan = PrivacyPlan::for_policy(&policy)
        .map_err(|e| anyhow::anyhow!("{}: `{}`: {}", file.display(), e.key, e.message))?;
    let s = &policy.strategy;
    let mut widths = vec![s.inputs];
    widths.extend(&s.hidden);
    widths.push(s.classes);
    let mut model = format!(
        "{} {}",
        s.model,
        widths
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join("-")
    );
    if let Some(e) = &s.encoder {
        model = format!(
            "frozen encoder {}-{} ({}, sha256 {}…) then a cosine head {}-{}",
            e.encoder.inputs(),
            e.encoder.dimension(),
            e.path.display(),
            &e.sha256[..16],
            e.encoder.dimension(),
            s.classes
        );
    }
    if s.stages() > 1 {
        model += &format!(
            " × {} stages (stage k reads {} + k·{} inputs)",
            s.stages(),
            s.inputs,
            s.classes
        );
    }
    let mut shown_rounds = vec![1];
    match s.kind {
        StrategyKind::Fedmr { warmup_rounds, .. } => {
            if warmup_rounds > 0 && warmup_rounds < policy.privacy.rounds {
                shown_rounds.push(warmup_rounds + 1);
            }
        }
        StrategyKind::Series { stages } => {
            // The first round of every stage.
            let per_stage = policy.privacy.rounds / stages;
            shown_rounds.extend((1..stages).map(|k| k * per_stage + 1));
        }
        StrategyKind::Fedimpres { warmup_rounds, .. } => {
            // The statistics attempts open the first rounds.
            let after = crate::strategy::fedimpres::STATISTICS_ATTEMPTS.max(warmup_rounds) + 1;
            if after <= policy.privacy.rounds {
                shown_rounds.push(after);
            }
        }
        StrategyKind::Fstcbdg {
            prototype_refresh_rounds: r,
            ..
        } => {
            if r > 0 && r < policy.privacy.rounds {
                shown_rounds.push(r + 1);
            }
        }
        StrategyKind::Fedavg | StrategyKind::Transfer { .. } | StrategyKind::Ensemble { .. } => {}
    }
    let rounds_shown = shown_rounds
        .into_iter()
        .map(|round| {
            let plan = round_plan(&policy, EXAMPLE_JOB, round);
            let composition = plan
                .composition(policy.privacy.clip_norm)
                .map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
            Ok(RoundShown {
                round,
                composition,
                tasks: plan
                    .tasks
                    .into_iter()
                    .map(|t| TaskShown {
                        label: t.label,
                        cohort: t.cohort,
                        dimension: t.dimension,
                        clip_norm: t.clip_norm,
                    })
                    .collect(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let home = match (plan.home_charge(), policy.strategy.kind) {
        (Some(charge), kind) => {
            let (what, p) = match kind {
                StrategyKind::Ensemble { .. } => ("ensemble members", &plan),
                _ => (
                    "fine-tuning",
                    plan.finetune
                        .as_deref()
                        .expect("a home charge outside the ensemble"),
                ),
            };
            let delta = policy.privacy.delta;
            let public_records = policy.strategy.public_set.as_ref().map(|p| p.records);
            Some(HomeCheck {
                what,
                steps: p.rounds,
                noise_multiplier: p.noise_multiplier,
                noise_std: p.noise_std_per_party,
                rho: charge.rho,
                epsilon_alone: crate::dp::accountant::zcdp_epsilon_of_rho(charge.rho, delta)?,
                public_records,
                // What the policy's vote_noise_std would cost at a std of
                // one vote, by the bound a voting policy is held to.
                vote_epsilon: match public_records {
                    Some(_) => Some(
                        crate::dp::plan::VotePlan::with_std(&policy, 1.0)
                            .map_err(|e| anyhow::anyhow!("{}", e.message))?
                            .epsilon_alone,
                    ),
                    None => None,
                },
            })
        }
        _ => None,
    };
    let report = CheckReport {
        home,
        vote: plan.vote.as_ref(),
        statistics: plan.statistics.as_ref(),
        file: file.display().to_string(),
        policy_hash: &policy.hash,
        consortium: &policy.consortium.id,
        parties: policy.parties(),
        threshold: policy.consortium.threshold,
        max_colluding: policy.consortium.max_colluding,
        active: policy.consortium.active,
        neighbors: match policy.consortium.neighbours {
            Neighbours::All => "all".into(),
            Neighbours::Fixed(k) => k.to_string(),
        },
        unit: policy.privacy.unit,
        accountant: policy.privacy.accountant.name(),
        delta: policy.privacy.delta,
        epsilon_budget: policy.privacy.epsilon,
        rounds: policy.privacy.rounds,
        sampling_rate: policy.privacy.sampling_rate,
        clip_norm: policy.privacy.clip_norm,
        noise_multiplier: plan.noise_multiplier,
        calibrated: policy.privacy.calibrated,
        model,
        dimension: plan.dimension,
        padded_dimension: plan.padded_dimension,
        rotation: policy.encoding.rotation,
        bits: plan.bits,
        bits_needed: plan.bits_needed,
        gamma: plan.gamma,
        scaled_clip: plan.scaled_clip,
        sensitivity: plan.sensitivity,
        sensitivity_inflation: plan.sensitivity_inflation,
        honest_survivors: plan.honest_survivors,
        noise_std_per_party: plan.noise_std_per_party,
        rho_per_round: plan.charge.rho,
        epsilon_by_round: &plan.epsilon_by_round,
        epsilon_total: plan.epsilon_total,
        epsilon_ideal: plan.epsilon_ideal,
        audit: plan.audit.as_ref(),
        canaries: {
            let a = &policy.audit;
            let certifiable_max = shroud_audit::canary::certifiable_max(
                a.canaries as usize,
                policy.privacy.delta,
                a.confidence,
            );
            CanaryCheck {
                count: a.canaries,
                auto: a.canaries_auto,
                certifiable_max,
                can_fail: certifiable_max > policy.privacy.epsilon,
            }
        },
        no_dp: policy.privacy.unit == Unit::None,
        strategy: s.kind,
        rounds_shown,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let r = &report;
    println!("policy      {} (sha256 {})", r.file, &r.policy_hash[..16]);
    println!(
        "consortium  {}: {} parties, threshold {}, at most {} colluding, neighbours {}{}",
        r.consortium,
        r.parties,
        r.threshold,
        r.max_colluding,
        r.neighbors,
        if r.active {
            ", active (signed survivor lists)"
        } else {
            ""
        }
    );
    if r.no_dp {
        println!("privacy     NONE: no differential privacy; such a model is never released");
        return Ok(());
    }
    println!(
        "privacy     unit {}, accountant {}, budget ε = {} at δ = {}, {} rounds{}",
        match r.unit {
            Unit::Record => "record",
            Unit::Party => "party",
            Unit::None => "none",
        },
        r.accountant,
        r.epsilon_budget,
        r.delta,
        r.rounds,
        if r.unit == Unit::Record {
            format!(", Poisson sampling q = {}", r.sampling_rate)
        } else {
            String::new()
        }
    );
    println!(
        "model       {}: {} parameters ({} on the wire, {:?} rotation)",
        r.model, r.dimension, r.padded_dimension, r.rotation
    );
    println!(
        "noise       clip norm {}, noise multiplier {:.4}{}; sized for {} honest survivors",
        r.clip_norm,
        r.noise_multiplier,
        if r.calibrated {
            " (calibrated to the budget)"
        } else {
            ""
        },
        r.honest_survivors
    );
    println!(
        "            each party adds a discrete Gaussian of std {:.2} integer units",
        r.noise_std_per_party
    );
    println!(
        "encoding    {} bits (at least {} needed), γ = {:.4e}; clip {:.1} integer units, \
         sensitivity after rounding {:.1} (×{:.4})",
        r.bits, r.bits_needed, r.gamma, r.scaled_clip, r.sensitivity, r.sensitivity_inflation
    );
    print_rounds(r);
    println!(
        "ρ per round {:.6} (zCDP, sum of discrete Gaussians; one charge per round)",
        r.rho_per_round
    );
    let n = r.epsilon_by_round.len();
    let shown: Vec<usize> = if n <= 12 {
        (0..n).collect()
    } else {
        let mut v: Vec<usize> = (0..5).collect();
        v.extend([n / 4, n / 2, 3 * n / 4, n - 2, n - 1]);
        v.dedup();
        v
    };
    println!("ε by round  ({} accountant)", r.accountant);
    for i in shown {
        println!(
            "  after round {:>5}: ε = {:.4}",
            i + 1,
            r.epsilon_by_round[i]
        );
    }
    match r.audit {
        Some(a) => {
            println!(
                "audit       the attacks' and the utility's counts, noised after the last round: {:.0} % of the budget's ρ, \
                 ε {:.4} alone, ρ {:.6}",
                100.0 * a.budget_share,
                a.epsilon_alone,
                a.charge.rho
            );
            for n in &a.blocks {
                println!(
                    "            {}: sensitivity {:.3} counts, each party adds std {:.0} per count",
                    n.block, n.sensitivity, n.noise_std_per_party
                );
            }
        }
        None => println!("audit       no DP: the attacks' and the utility's counts are summed exact, nothing charged"),
    }
    let c = &r.canaries;
    if c.count == 0 {
        println!(
            "canaries    none: the one-run audit does not run (set audit.canaries = \"auto\")"
        );
    } else {
        println!(
            "canaries    {} gradient canaries ({}): one coordinate each in every training sum; \
             every guess right would certify ε = {:.2} at δ = {}",
            c.count,
            if c.auto { "auto" } else { "set by the policy" },
            c.certifiable_max,
            r.delta,
        );
        if c.can_fail {
            println!(
                "            above the claimed ε {}: the check \"empirical ε ≤ ε spent\" can fail",
                r.epsilon_budget
            );
        } else {
            println!(
                "  warning   that does not exceed the claimed ε {}: the canary check cannot fail{}",
                r.epsilon_budget,
                if c.auto {
                    " — no count can, at this δ and confidence (the bound's δ term); \
                     a smaller δ or a lower confidence would let it"
                } else {
                    " — use audit.canaries = \"auto\""
                }
            );
        }
    }
    println!(
        "ε total     {:.4} of budget {}, rounds, audit and any fine-tuning or statistics (ideal \
         continuous Gaussian, rounds only, same accountant: {:.4})",
        r.epsilon_total, r.epsilon_budget, r.epsilon_ideal
    );
    Ok(())
}

fn print_rounds(r: &CheckReport<'_>) {
    match r.strategy {
        StrategyKind::Fedavg => {
            println!("strategy    fedavg: one secure sum of the whole model per round")
        }
        StrategyKind::Fedmr {
            group_size,
            warmup_rounds,
        } => println!(
            "strategy    fedmr: per layer, groups of at least {group_size} drawn afresh each round \
             (public seed of job and round); {warmup_rounds} FedAvg warm-up rounds"
        ),
        StrategyKind::Series { stages } => println!(
            "strategy    series: {stages} stages of {} rounds each, one after another; stage k \
             reads the features and the class probabilities of stages 0..k-1, frozen; one \
             secure sum of the stage per round, so ε composes over every stage's rounds",
            r.rounds / stages
        ),
        StrategyKind::Transfer {
            finetune_steps,
            finetune_share,
            finetune_learning_rate,
        } => println!(
            "strategy    transfer: the base trains as fedavg and is released; then each party \
             fine-tunes it at home, {finetune_steps} DP-SGD steps (learning rate \
             {finetune_learning_rate}) on {:.0} % of the job's ρ, and only noisy counts of base \
             and fine-tuned predictions on its held-out records leave, in the audit's sum",
            100.0 * finetune_share
        ),
        StrategyKind::Ensemble {
            student_epochs,
            vote_noise_std: Some(_),
        } => println!(
            "strategy    ensemble by noisy vote: each party trains its member at home, {} steps \
             without noise (the rounds); one noisy secure sum of the members' one-hot votes on \
             the public set; a student distilled from the vote counts for {student_epochs} \
             epochs is released",
            r.rounds
        ),
        StrategyKind::Fedimpres {
            warmup_rounds,
            refresh_rounds,
            impressions,
            impression_ratio,
            feature_bound,
            ..
        } => println!(
            "strategy    fedimpres: fedavg; after round {warmup_rounds} and every \
             {refresh_rounds} rounds the coordinator inverts the model it sends into \
             {impressions} impressions matched to the consortium's noisy class histogram and \
             feature moments (features clamped to ±{feature_bound}), sent with the model; each \
             party trains on its records plus {impression_ratio} impressions per record"
        ),
        StrategyKind::Fstcbdg {
            supervised: true,
            scale,
            ..
        } => println!(
            "strategy    fstcbdg, supervised: a linear probe — a cosine head (scale {scale}) on \
             the frozen encoder's embeddings trained on the parties' true labels, averaged as \
             fedavg; the reference unlabelled FST-CBDG is measured against"
        ),
        StrategyKind::Fstcbdg {
            scale,
            pseudo_label_momentum,
            synthetic_per_class,
            synthetic_std,
            prototype_refresh_rounds,
            ..
        } => println!(
            "strategy    fstcbdg: the parties' records are unlabelled; a cosine head (scale \
             {scale}) on the frozen encoder's embeddings, started at its class prototypes, is \
             self-trained on soft pseudo-labels (moving average, {pseudo_label_momentum} on the \
             old) plus {synthetic_per_class} synthetic embeddings per class (std \
             {synthetic_std} around each prototype) and averaged as fedavg; {}",
            if prototype_refresh_rounds > 0 {
                format!(
                    "every {prototype_refresh_rounds} rounds a noisy sum of pseudo-label-weighted \
                     embeddings refreshes the prototypes"
                )
            } else {
                "the prototypes are never refreshed".into()
            }
        ),
        StrategyKind::Ensemble { student_epochs, .. } => println!(
            "strategy    ensemble: each party trains its member at home, {} DP-SGD steps (the \
             rounds); one secure sum, without noise, of the members' class probabilities on the \
             public set; a student distilled from them for {student_epochs} epochs is released",
            r.rounds
        ),
    }
    if let Some(st) = r.statistics {
        println!(
            "statistics  {} noisy secure sum(s), {:.0} % of the job's ρ together: ρ = {:.5} and \
             ε {:.4} each on its own",
            st.sums,
            100.0 * st.budget_share,
            st.charge.rho,
            st.epsilon_alone
        );
        for b in &st.blocks {
            println!(
                "            {:<20} {:>4} values, one {} moves it at most {:.3} (L2), grid step \
                 {:.3e}, noise std {} steps per party",
                b.block.name,
                b.block.width,
                if r.unit == Unit::Party {
                    "party"
                } else {
                    "record"
                },
                b.block.bound,
                b.block.gamma(),
                b.noise_std_per_party
            );
        }
    }
    if let Some(v) = r.vote {
        println!(
            "vote        the members train at home without noise; one secure sum of their one-hot \
             votes on the {} public records, noise std {} votes ({:.3} per party, the honest \
             survivors' shares meeting it); one record can change its member's every vote: L2 sensitivity {:.2}; \
             ρ = {:.5}, ε {:.4} on its own",
            v.queries,
            v.noise_std,
            v.noise_std_per_party,
            v.sensitivity,
            v.charge.rho,
            v.epsilon_alone
        );
    }
    if let Some(h) = &r.home {
        println!(
            "home        {}: {} steps, noise multiplier {:.4}, std {} per step, all the party's own; \
             ρ = {:.5} paid by that party's records alone (ε {:.4} on its own); every record lives \
             at one party, so the consortium pays the largest party's (parallel composition)",
            h.what, h.steps, h.noise_multiplier, h.noise_std, h.rho, h.epsilon_alone
        );
        if let (Some(q), Some(e)) = (h.public_records, h.vote_epsilon) {
            println!(
                "public set  {q} records; a PATE-style noisy vote over them instead \
                 (vote_noise_std, one query per record) would cost ε = {e:.1} at a noise std of \
                 one vote{}",
                if e > r.epsilon_budget {
                    format!(", above the budget {}", r.epsilon_budget)
                } else {
                    String::new()
                }
            );
        }
    }
    for shown in &r.rounds_shown {
        let how = match shown.composition {
            Composition::Single => "one task".to_string(),
            Composition::Outputs => {
                "one sum of home models' outputs, no noise of its own: paid by each party's \
                 home training"
                    .to_string()
            }
            Composition::Parallel { tasks, slices } => format!(
                "{tasks} tasks over {slices} slices, disjoint cohorts per slice, clip norms \
                 square-summing to {}²: parallel composition",
                r.clip_norm
            ),
        };
        // A statistics sum is charged on its own, not as the round's.
        let statistics = shown.tasks.len()
            > match shown.composition {
                Composition::Parallel { tasks, .. } => tasks,
                _ => 1,
            };
        let how = match statistics {
            true => format!("the statistics sum (its own charge), then {how}"),
            false => how,
        };
        println!("  round {} (job `{EXAMPLE_JOB}`): {how}", shown.round);
        for t in &shown.tasks {
            println!(
                "    {:<20} {:>6} values, clip {:.4}, cohort {:?}",
                t.label, t.dimension, t.clip_norm, t.cohort
            );
        }
    }
}
