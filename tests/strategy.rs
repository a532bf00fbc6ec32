//! Strategies on their own: the tasks FedMR plans (who sums what, with
//! which clip norm) and the coordinator half's state surviving a restart.

mod common;
use common::fedmr_policy_text;

use std::collections::BTreeSet;
use std::path::Path;

use shroud::policy::Policy;
use shroud::strategy::{coordinator_half, round_plan, TaskResult};

fn policy(n: usize, group_size: usize, warmup: u32) -> Policy {
    let text = fedmr_policy_text(&vec![20; n], group_size, warmup, 12);
    Policy::parse(Path::new("fedmr.toml"), &text).unwrap()
}

#[test]
fn fedmr_groups_cover_the_roster_once_per_layer_and_change_each_round() {
    let p = policy(10, 3, 2);
    let layers = p.strategy.layer_dimensions();
    let total: usize = layers.iter().sum();
    // Warm-up rounds are FedAvg: one task, everyone, the whole model.
    for round in 1..=2 {
        let plan = round_plan(&p, "job", round);
        assert_eq!(plan.tasks.len(), 1);
        assert_eq!(plan.tasks[0].cohort, (0..10).collect::<Vec<u32>>());
        assert_eq!(plan.tasks[0].dimension, total);
        assert_eq!(plan.tasks[0].clip_norm, 1.0);
    }
    let mut draws = BTreeSet::new();
    for round in 3..=8 {
        let plan = round_plan(&p, "job", round);
        // ⌊10 / 3⌋ = 3 groups for each layer.
        assert_eq!(plan.tasks.len(), 3 * layers.len());
        let ids: Vec<u32> = plan.tasks.iter().map(|t| t.id).collect();
        assert_eq!(ids, (0..plan.tasks.len() as u32).collect::<Vec<_>>());
        let mut offset = 0;
        for (l, &d) in layers.iter().enumerate() {
            let tasks: Vec<_> = plan.tasks.iter().filter(|t| t.offset == offset).collect();
            assert_eq!(tasks.len(), 3, "layer {l}");
            let mut seen: Vec<u32> = Vec::new();
            for t in &tasks {
                assert_eq!(t.dimension, d);
                assert!(t.cohort.len() >= 3, "{:?}", t.cohort);
                assert!(t.cohort.windows(2).all(|w| w[0] < w[1]));
                seen.extend(&t.cohort);
                // The layer's share of the clip norm: √(d_l / D).
                let share = (d as f64 / total as f64).sqrt();
                assert!((t.clip_norm - share).abs() < 1e-12);
            }
            seen.sort_unstable();
            assert_eq!(
                seen,
                (0..10).collect::<Vec<u32>>(),
                "layer {l}: disjoint cover"
            );
            draws.insert(tasks.iter().map(|t| t.cohort.clone()).collect::<Vec<_>>());
            offset += d;
        }
        // A party's clip norms over the round's tasks: squares sum to C².
        for party in 0..10 {
            let sq: f64 = plan
                .tasks
                .iter()
                .filter(|t| t.cohort.contains(&party))
                .map(|t| t.clip_norm * t.clip_norm)
                .sum();
            assert!((sq - 1.0).abs() < 1e-12, "party {party}: {sq}");
        }
        // Public and reproducible: a party recomputes the same plan.
        assert_eq!(plan, round_plan(&p, "job", round));
    }
    // Fresh groups: 6 rounds × 2 layers drew many different splits.
    assert!(draws.len() >= 10, "{} distinct splits", draws.len());
    // Another job draws other groups.
    assert_ne!(round_plan(&p, "job", 5), round_plan(&p, "other", 5));
}

/// Feeds the half one round of made-up sums, one group's task aborting.
fn feed(half: &mut dyn shroud::strategy::CoordinatorHalf, p: &Policy, round: u32) {
    let plan = round_plan(p, "job", round);
    for t in &plan.tasks {
        if round == 4 && t.id == 1 {
            half.task_aborted(round, t);
            continue;
        }
        let sum: Vec<f64> = (0..t.dimension)
            .map(|i| ((i as f64 + 1.0) * (round as f64 + t.id as f64)).sin())
            .collect();
        let records = vec![20; t.cohort.len()];
        half.absorb(
            round,
            TaskResult {
                task: t,
                sum,
                contributors: &t.cohort,
                records: &records,
            },
        );
    }
    half.end_round(round);
}

#[test]
fn a_restored_fedmr_half_continues_exactly_where_it_stopped() {
    let p = policy(8, 4, 1);
    let mut a = coordinator_half(&p, 5, None).unwrap();
    for round in 1..=4 {
        feed(a.as_mut(), &p, round);
    }
    // After recombination the parties start from different models.
    let starts: BTreeSet<Vec<u64>> = (0..8)
        .map(|i| a.downlink(i).iter().map(|x| x.to_bits()).collect())
        .collect();
    assert!(starts.len() > 1, "every party got the same model");
    let saved = a.save();
    let mut b = coordinator_half(&p, 99, Some(&saved)).unwrap();
    for round in 5..=6 {
        feed(a.as_mut(), &p, round);
        feed(b.as_mut(), &p, round);
    }
    for i in 0..8 {
        assert_eq!(a.downlink(i), b.downlink(i), "party {i}");
    }
    assert_eq!(a.release_model().to_flat(), b.release_model().to_flat());
    assert_eq!(a.save(), b.save());
    // Bytes from another strategy, or cut short, are refused.
    let fedavg = Policy::parse(
        Path::new("fedavg.toml"),
        &fedmr_policy_text(&[20; 8], 4, 1, 12).replace(
            "kind = \"fedmr\"\ngroup_size = 4\nwarmup_rounds = 1\n",
            "kind = \"fedavg\"\n",
        ),
    )
    .unwrap();
    assert!(coordinator_half(&fedavg, 5, Some(&saved)).is_err());
    assert!(coordinator_half(&p, 5, Some(&saved[..saved.len() - 3])).is_err());
}

#[test]
fn a_round_is_charged_once_only_when_its_tasks_compose_in_parallel() {
    use shroud::strategy::{Composition, RoundPlan, TaskSpec};
    let task = |id: u32, cohort: &[u32], offset: usize, clip_norm: f64| TaskSpec {
        id,
        label: format!("t{id}"),
        cohort: cohort.to_vec(),
        offset,
        dimension: 4,
        clip_norm,
        sum: shroud::strategy::SumKind::Update,
    };
    let half = 0.5f64.sqrt();
    let good = RoundPlan {
        tasks: vec![
            task(0, &[0, 1], 0, half),
            task(1, &[2, 3], 0, half),
            task(2, &[0, 2], 4, half),
            task(3, &[1, 3], 4, half),
        ],
    };
    assert_eq!(
        good.composition(1.0),
        Ok(Composition::Parallel {
            tasks: 4,
            slices: 2
        })
    );
    // A party in two groups of one slice would be counted twice.
    let mut twice = good.clone();
    twice.tasks[1].cohort = vec![1, 3];
    assert!(twice.composition(1.0).unwrap_err().contains("party 1"));
    // Clip norms that add up to more than the policy's.
    let mut loud = good.clone();
    loud.tasks[2].clip_norm = 0.9;
    assert!(loud.composition(1.0).unwrap_err().contains("party 0"));
    let whole = RoundPlan {
        tasks: vec![task(0, &[0, 1, 2], 0, 1.0)],
    };
    assert_eq!(whole.composition(1.0), Ok(Composition::Single));
    assert!(whole.composition(0.5).is_err());
}

#[test]
fn a_party_half_restores_only_its_own_state() {
    let p = policy(8, 4, 1);
    let half = shroud::strategy::party_half(&p, None).unwrap();
    let saved = half.save();
    assert!(shroud::strategy::party_half(&p, Some(&saved)).is_ok());
    // The coordinator's state, or garbage, is refused.
    let coordinator = coordinator_half(&p, 5, None).unwrap().save();
    assert!(shroud::strategy::party_half(&p, Some(&coordinator)).is_err());
    assert!(shroud::strategy::party_half(&p, Some(b"x")).is_err());
}

fn series_policy(stages: u32, rounds: u32) -> Policy {
    let text = common::series_policy_text(&[20; 6], stages, rounds);
    Policy::parse(Path::new("series.toml"), &text).unwrap()
}

/// Stage k's rounds come after all of stage k−1's, each round one task
/// over everyone summing exactly the stage's slice with the whole clip norm.
#[test]
fn series_stages_train_in_turn_each_with_the_whole_clip_norm() {
    let p = series_policy(3, 12);
    let dims = p.strategy.stage_dimensions();
    // Stage k reads 13 features and k·3 probabilities: 8 hidden, 3 classes.
    assert_eq!(
        dims,
        (0..3)
            .map(|k| (13 + 3 * k) * 8 + 8 + 8 * 3 + 3)
            .collect::<Vec<_>>()
    );
    assert_eq!(p.strategy.dimension(), dims.iter().sum::<usize>());
    let offsets = p.strategy.stage_offsets();
    let mut stage_by_round = Vec::new();
    for round in 1..=12 {
        let plan = round_plan(&p, "job", round);
        assert_eq!(plan.tasks.len(), 1);
        let t = &plan.tasks[0];
        let k = offsets.iter().position(|&o| o == t.offset).unwrap();
        assert_eq!(t.dimension, dims[k]);
        assert_eq!(t.clip_norm, 1.0);
        assert_eq!(t.cohort, (0..6).collect::<Vec<u32>>());
        assert_eq!(
            plan.composition(1.0),
            Ok(shroud::strategy::Composition::Single)
        );
        stage_by_round.push(k);
    }
    assert_eq!(stage_by_round, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
    // The privacy plan bounds a round by the largest stage.
    let plan = shroud::dp::plan::PrivacyPlan::for_policy(&p).unwrap();
    assert_eq!(plan.rounds, 12);
    assert!(plan.epsilon_total <= 8.0);
}

/// A series policy states its stages, splits its rounds evenly and is
/// audited only by attacks that need no reference network.
#[test]
fn series_policies_are_checked_with_located_errors() {
    let text = common::series_policy_text(&[20; 6], 3, 12);
    let err = |t: &str| {
        Policy::parse(Path::new("s.toml"), t)
            .unwrap_err()
            .to_string()
    };
    assert!(err(&text.replace("rounds = 12", "rounds = 10")).contains("privacy.rounds"));
    assert!(err(&text.replace("stages = 3", "stages = 1")).contains("strategy.stages"));
    assert!(err(&text.replace("stages = 3\n", "")).contains("strategy.stages"));
    let lira = err(&text.replace("attacks = [\"loss\"]", "attacks = [\"loss\", \"lira\"]"));
    assert!(lira.contains("audit.attacks[1]"), "{lira}");
    let fedavg = common::fedmr_policy_text(&[20; 6], 3, 0, 12).replace(
        "kind = \"fedmr\"\ngroup_size = 3\nwarmup_rounds = 0\n",
        "kind = \"fedavg\"\nstages = 2\n",
    );
    assert!(err(&fedavg).contains("strategy.stages"));
}

/// Feeds a series half made-up sums for `rounds`.
fn feed_series(
    half: &mut dyn shroud::strategy::CoordinatorHalf,
    p: &Policy,
    rounds: std::ops::RangeInclusive<u32>,
) {
    for round in rounds {
        feed(half, p, round);
    }
}

/// While stage k trains, every earlier stage stays as released and every
/// later one untouched; a restored half continues identically.
#[test]
fn a_series_half_trains_one_stage_at_a_time_and_restores_exactly() {
    let p = series_policy(3, 6);
    let offsets = p.strategy.stage_offsets();
    let dims = p.strategy.stage_dimensions();
    let stage = |v: &[f64], k: usize| v[offsets[k]..offsets[k] + dims[k]].to_vec();
    let mut a = coordinator_half(&p, 5, None).unwrap();
    let start = a.downlink(0);
    feed_series(a.as_mut(), &p, 1..=2);
    let after0 = a.downlink(0);
    assert_ne!(stage(&after0, 0), stage(&start, 0));
    assert_eq!(stage(&after0, 1), stage(&start, 1), "stage 1 trained early");
    assert_eq!(stage(&after0, 2), stage(&start, 2), "stage 2 trained early");
    feed_series(a.as_mut(), &p, 3..=3);
    let mid1 = a.downlink(0);
    assert_eq!(
        stage(&mid1, 0),
        stage(&after0, 0),
        "stage 0 moved after release"
    );
    assert_ne!(stage(&mid1, 1), stage(&start, 1));
    assert_eq!(stage(&mid1, 2), stage(&start, 2));
    let saved = a.save();
    let mut b = coordinator_half(&p, 99, Some(&saved)).unwrap();
    feed_series(a.as_mut(), &p, 4..=6);
    feed_series(b.as_mut(), &p, 4..=6);
    assert_eq!(a.downlink(0), b.downlink(0));
    assert_eq!(a.save(), b.save());
    let released = a.release_model();
    assert_eq!(released.stages().len(), 3);
    assert_eq!(released.to_flat(), a.downlink(0));
    assert_eq!(stage(&released.to_flat(), 1), stage(&a.downlink(0), 1));
    // Another strategy's bytes are refused.
    let fedmr = policy(6, 3, 0);
    assert!(coordinator_half(&fedmr, 5, Some(&saved)).is_err());
}

/// A party trains the round's stage on its records extended by the
/// earlier stages' class probabilities: its per-record contributions are
/// exactly the stage's gradients on that input.
#[test]
fn a_series_party_trains_its_stage_on_the_earlier_stages_outputs() {
    use shroud::model::matrix;
    use shroud::strategy::{party_half, Contribution};
    let p = series_policy(2, 4);
    let data = common::wine_shares(6).remove(0);
    let network = shroud::strategy::initial_network(&p, 7);
    let mut half = party_half(&p, None).unwrap();
    // Round 3 trains stage 1.
    half.receive(3, &network.to_flat()).unwrap();
    let task = round_plan(&p, "job", 3).tasks.remove(0);
    let Contribution::PerRecord(grads) = half.contribute(3, &task, &data, &[4; 32]) else {
        panic!("record-level contributions");
    };
    // Sampling rate 1: every record, in order.
    assert_eq!(grads.len(), data.len());
    let x = matrix(&data, None);
    let input = network.stage_input(x.view(), 1);
    assert_eq!(input.ncols(), 13 + 3);
    let want = network.stages()[1].per_example_grads(input.view(), &data.labels);
    assert_eq!(grads, want);
    assert_eq!(grads[0].len(), task.dimension);
    // Stage 0 alone (without the earlier outputs) would give other gradients.
    let plain = network.stages()[0].per_example_grads(x.view(), &data.labels);
    assert_ne!(plain[0].len(), grads[0].len());
}

/// Ensemble and transfer policies: a public set bound by its SHA-256, the
/// keys of each kind only on that kind, record-level DP (training happens
/// at home), no gradient canaries for the ensemble; each error names its
/// key and line.
#[test]
fn ensemble_and_transfer_policies_are_checked_with_located_errors() {
    let dir = common::temp_dir("ensemble-policy");
    let public = common::wine_public_set(&dir);
    let text = common::ensemble_policy_text(&[20; 6], &public, 10);
    let err = |t: &str| {
        Policy::parse(&dir.join("e.toml"), t)
            .unwrap_err()
            .to_string()
    };
    let p = Policy::parse(&dir.join("e.toml"), &text).unwrap();
    let set = p.strategy.public_set.as_ref().unwrap();
    assert_eq!(set.records * 13, set.features.len());
    // The plan: one outputs task; a member's ten steps at home.
    let plan = round_plan(&p, "job", 1);
    assert_eq!(plan.tasks[0].sum, shroud::strategy::SumKind::Outputs);
    assert_eq!(plan.tasks[0].dimension, set.records * 3);
    assert_eq!(
        plan.composition(1.0),
        Ok(shroud::strategy::Composition::Outputs)
    );
    assert_eq!(p.sum_rounds(), shroud::policy::ENSEMBLE_SUM_ATTEMPTS);
    let pp = shroud::dp::plan::PrivacyPlan::for_policy(&p).unwrap();
    assert!(pp.at_home && pp.honest_survivors == 1 && pp.rounds == 10);
    // A member's noise is its own, whole: z·c/γ, not shared out.
    assert!((pp.noise_std_per_party - (pp.noise_multiplier * pp.scaled_clip).ceil()).abs() < 1e-9);

    let changed = err(&text.replace(&public.1, &"0".repeat(64)));
    assert!(
        changed.contains("strategy.public_set_sha256") && changed.contains("changed"),
        "{changed}"
    );
    let line = text
        .lines()
        .position(|l| l.starts_with("public_set_sha256"))
        .unwrap()
        + 1;
    assert!(changed.contains(&format!("e.toml:{line}:")), "{changed}");
    assert!(
        err(&text.replace("public_set_sha256", "# public_set_sha256"))
            .contains("strategy.public_set_sha256")
    );
    let missing = err(&text.replace(&public.0.display().to_string(), "/nonexistent/p.csv"));
    assert!(
        missing.contains("strategy.public_set") && missing.contains("cannot read"),
        "{missing}"
    );
    // Rows of the wrong width are refused with their line.
    let narrow = dir.join("narrow.csv");
    std::fs::write(&narrow, "1,2,3\n").unwrap();
    let sha = shroud::policy::hex(&<sha2::Sha256 as sha2::Digest>::digest(b"1,2,3\n"));
    let bad = err(&text
        .replace(
            &public.0.display().to_string(),
            &narrow.display().to_string(),
        )
        .replace(&public.1, &sha));
    assert!(bad.contains("line 1") && bad.contains("13"), "{bad}");
    // A file too large to be a public set is refused before it is read.
    let huge = dir.join("huge.csv");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let big = err(&text.replace(&public.0.display().to_string(), &huge.display().to_string()));
    assert!(big.contains("bytes, more than"), "{big}");
    std::fs::remove_file(&huge).unwrap();
    let canary = err(&text.replace("attacks = [\"loss\"]", "attacks = [\"loss\", \"canary\"]"));
    assert!(canary.contains("audit.attacks[1]"), "{canary}");
    assert!(err(&text.replace("canaries = 0", "canaries = 10")).contains("audit.canaries"));
    let party = err(&text
        .replace("unit = \"record\"", "unit = \"party\"")
        .replace("sampling_rate = 1.0\n", ""));
    assert!(party.contains("privacy.unit"), "{party}");

    let transfer = common::transfer_policy_text(&[20; 6], 4);
    let t = Policy::parse(&dir.join("t.toml"), &transfer).unwrap();
    let tp = shroud::dp::plan::PrivacyPlan::for_policy(&t).unwrap();
    let ft = tp.finetune.as_ref().unwrap();
    assert!(ft.at_home && ft.rounds == 5);
    // The base, the audit and the fine-tuning together stay in budget.
    assert!(
        tp.epsilon_total <= 8.0 && tp.epsilon_total > 7.9,
        "{}",
        tp.epsilon_total
    );
    assert!(Policy::parse(
        &dir.join("t.toml"),
        &transfer.replace("finetune_share = 0.2", "finetune_share = 0.7")
    )
    .unwrap_err()
    .to_string()
    .contains("strategy.finetune_share"));
    let misplaced = common::transfer_policy_text(&[20; 6], 4).replace(
        "finetune_steps = 5\n",
        "finetune_steps = 5\nstudent_epochs = 3\n",
    );
    assert!(Policy::parse(&dir.join("t.toml"), &misplaced)
        .unwrap_err()
        .to_string()
        .contains("strategy.student_epochs"));
}

/// The student learns the members' averaged probabilities: the soft labels
/// are the sum renormalised per record, and a restored half is the same.
#[test]
fn the_ensemble_student_learns_the_summed_probabilities_and_restores_exactly() {
    let dir = common::temp_dir("ensemble-student");
    let public = common::wine_public_set(&dir);
    let text = common::ensemble_policy_text(&[20; 6], &public, 10);
    let p = Policy::parse(&dir.join("e.toml"), &text).unwrap();
    let q = p.strategy.public_set.as_ref().unwrap().records;
    let plan = round_plan(&p, "job", 1);
    let mut half = coordinator_half(&p, 5, None).unwrap();
    // Six members that all give each record's true class probability 0.9
    // (the public set is the wine test split, in order).
    let labels = shroud::data::prepare(Path::new("data/wine.csv"), 2)
        .unwrap()
        .test
        .labels;
    assert_eq!(labels.len(), q);
    let sum: Vec<f64> = labels
        .iter()
        .flat_map(|&y| (0..3).map(move |c| if c == y { 6.0 * 0.9 } else { 6.0 * 0.05 }))
        .collect();
    let soft = shroud::strategy::ensemble::Ensemble::soft_labels(&sum, 3);
    assert!((soft[labels[0]] - 0.9).abs() < 1e-12);
    assert!((soft.iter().take(3).sum::<f64>() - 1.0).abs() < 1e-12);
    half.absorb(
        1,
        TaskResult {
            task: &plan.tasks[0],
            sum,
            contributors: &[0, 1, 2, 3, 4, 5],
            records: &[20; 6],
        },
    );
    half.end_round(1);
    let student = half.release_model();
    let set = p.strategy.public_set.as_ref().unwrap().dataset(13, 3);
    let x = shroud::model::matrix(&set, None);
    let agree = student
        .predict(x.view())
        .iter()
        .zip(&labels)
        .filter(|(c, y)| c == y)
        .count();
    assert!(agree as f64 > 0.8 * q as f64, "{agree} of {q}");
    let restored = coordinator_half(&p, 5, Some(&half.save())).unwrap();
    assert_eq!(restored.release_model().to_flat(), student.to_flat());
    assert_eq!(restored.downlink(0), half.downlink(0));
}

/// A noisy vote whose noise is too small for the budget is refused at its
/// key, naming the least std that fits, and that std is accepted.
#[test]
fn a_vote_too_noisy_for_nothing_is_refused_with_the_std_that_fits() {
    let dir = common::temp_dir("vote-policy");
    let public = common::wine_public_set(&dir);
    let text = |std: f64| {
        common::ensemble_policy_text(&[20; 6], &public, 10).replace(
            "student_epochs = 30\n",
            &format!("student_epochs = 30\nvote_noise_std = {std}\n"),
        )
    };
    let err = Policy::parse(&dir.join("v.toml"), &text(1.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("strategy.vote_noise_std"), "{err}");
    let least: f64 = err
        .split("at least ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no least std in: {err}"));
    let p = Policy::parse(&dir.join("v.toml"), &text(least)).unwrap();
    let plan = shroud::dp::plan::PrivacyPlan::for_policy(&p).unwrap();
    assert!(plan.epsilon_total < 8.0);
    assert_eq!(plan.noise_multiplier, 0.0, "members train without noise");
    let vote = plan.vote.unwrap();
    // One record can change its member's every vote.
    assert!((vote.sensitivity - (2.0 * vote.queries as f64).sqrt()).abs() < 1e-12);
    assert!(Policy::parse(
        &dir.join("f.toml"),
        &common::transfer_policy_text(&[20; 6], 4).replace(
            "finetune_steps = 5\n",
            "finetune_steps = 5\nvote_noise_std = 9.0\n"
        )
    )
    .unwrap_err()
    .to_string()
    .contains("strategy.vote_noise_std"));
}

/// FedImpres' and FST-CBDG's keys are checked where they stand: a changed
/// encoder, an encoder without its digest, a hidden layer under the head,
/// keys on the wrong kind, and shares outside (0, 0.5].
#[test]
fn fedimpres_and_fstcbdg_policies_are_checked_with_located_errors() {
    let dir = common::temp_dir("synthetic-policy");
    let err = |t: &str| {
        Policy::parse(&dir.join("s.toml"), t)
            .unwrap_err()
            .to_string()
    };
    let fst = common::fstcbdg_policy_text(&[150; 8], 6);
    let p = Policy::parse(&dir.join("s.toml"), &fst).unwrap();
    // The head reads the encoder's 32-wide embeddings.
    assert_eq!(p.strategy.sizes(), vec![32, 10]);
    assert_eq!(p.strategy.dimension(), 330);
    let sha = fst
        .lines()
        .find_map(|l| l.strip_prefix("encoder_sha256 = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    let changed = err(&fst.replace(&sha, &"0".repeat(64)));
    assert!(
        changed.contains("strategy.encoder_sha256") && changed.contains("changed"),
        "{changed}"
    );
    let unbound = err(&fst.replace(&format!("encoder_sha256 = \"{sha}\"\n"), ""));
    assert!(unbound.contains("strategy.encoder_sha256"), "{unbound}");
    let hidden = err(&fst.replace("model = \"softmax\"", "model = \"mlp\"\nhidden = [8]"));
    assert!(hidden.contains("strategy.model"), "{hidden}");
    let lira = err(&fst.replace("attacks = [\"loss\"]", "attacks = [\"loss\", \"lira\"]"));
    assert!(lira.contains("audit.attacks[1]"), "{lira}");
    let impres = common::fedimpres_policy_text(&[20; 8], 6);
    Policy::parse(&dir.join("s.toml"), &impres).unwrap();
    let misplaced = err(&impres.replace("impressions = 30\n", "impressions = 30\nscale = 3.0\n"));
    assert!(
        misplaced.contains("strategy.scale") && misplaced.contains("fstcbdg"),
        "{misplaced}"
    );
    let share = err(&impres.replace("impressions = 30\n", "statistics_share = 0.9\n"));
    assert!(share.contains("strategy.statistics_share"), "{share}");
    let on_fedmr = err(&common::fedmr_policy_text(&[20; 8], 3, 0, 6).replace(
        "warmup_rounds = 0\n",
        "warmup_rounds = 0\nstatistics_share = 0.1\n",
    ));
    assert!(on_fedmr.contains("strategy.statistics_share"), "{on_fedmr}");
}
