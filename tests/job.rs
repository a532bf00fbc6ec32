//! Whole jobs in one process: the demo as a user runs it, the secure sum
//! inside a job, dropouts, the ledger's charges and the no-DP switch.

mod common;
use common::{check_sums, inputs_of, json, shroud};

use std::collections::BTreeSet;
use std::path::Path;

use shroud::data::prepare;
use shroud::job::local::{self, LocalJob};
use shroud::job::session::{InputRandomness, Member};
use shroud::job::{demo_identity_seed, demo_public_key_hex};
use shroud::net::api::StartJob;
use shroud::policy::Policy;
use shroud::store::ledger::ChargeKind;
use shroud::store::PrivacyLedger;

fn tmp(name: &str) -> String {
    common::temp_dir(name).display().to_string()
}

#[test]
fn fedavg_without_noise_matches_central_training() {
    let (code, out, err) = shroud(&["demo", "--central", "--json"]);
    assert_eq!(code, 0, "{err}");
    let central = json(&out)["accuracy"].as_f64().unwrap();
    let dir = tmp("nodp");
    let (code, out, err) = shroud(&[
        "demo",
        "--no-dp",
        "--allow-no-dp",
        "--rounds",
        "100",
        "--partition",
        "iid",
        "--dropout",
        "0",
        "--json",
        "--out",
        &dir,
    ]);
    // Without DP the gate always blocks: the command fails, the job ran.
    assert_ne!(code, 0);
    assert!(err.contains("release blocked"), "{err}");
    let v = json(&out);
    let fed = v["accuracy"].as_f64().unwrap();
    assert!(central > 0.93, "central {central}");
    // The test split has 359 records (one is 0.28 points) and randomized
    // rounding makes each federated run differ: ten runs of this command
    // spanned 0.936–0.958 against central 0.964. Broken averaging or
    // decoding lands far below this margin.
    assert!(
        fed > central - 0.04,
        "FedAvg without noise {fed} vs central {central}"
    );
    // Marked as such, and never released.
    assert_eq!(v["no_dp"], true);
    assert_eq!(v["released"], false);
    assert!(v["model"].is_null());
    assert!(!Path::new(&dir).join("model.safetensors").exists());
}

#[test]
fn no_dp_needs_the_explicit_switch() {
    let (code, out, err) = shroud(&["demo", "--no-dp", "--rounds", "2"]);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert!(err.contains("--allow-no-dp"), "{err}");
}

#[test]
fn demo_with_dropouts_finishes_and_charges_every_round() {
    let dir = tmp("dp");
    let (code, out, err) = shroud(&[
        "demo",
        "--rounds",
        "12",
        "--dropout",
        "0.15",
        "--seed",
        "4",
        "--json",
        "--out",
        &dir,
    ]);
    // The job runs to its end whatever the gate decides.
    assert!(code == 0 || err.contains("release blocked"), "{err}");
    let v = json(&out);
    for key in ["accuracy", "epsilon_spent", "delta", "rounds", "parties"] {
        assert!(!v[key].is_null(), "missing {key}: {out}");
    }
    assert_eq!(v["parties"], 8);
    assert_eq!(v["rounds"], 12);
    assert!(v["dropouts_survived"].as_u64().unwrap() > 0, "{out}");
    let eps = v["epsilon_spent"].as_f64().unwrap();
    assert!(eps > 0.0 && eps <= v["epsilon_budget"].as_f64().unwrap() * (1.0 + 1e-9));
    assert!(v["accuracy"].as_f64().unwrap() > 0.5, "{out}");
    let released = v["decision"] == "release";
    assert_eq!(
        v["model"].as_str().is_some_and(|m| Path::new(m).exists()),
        released
    );
    assert!(Path::new(&dir).join("summary.json").exists());
    // In the ledger: at most one charge per round, every finished round
    // charged and released; a round that aborted before its charge point
    // costs nothing, one that aborted after it stays charged. Then one
    // charge for the audit's noisy counts.
    let db = v["db"].as_str().unwrap().to_string();
    let ledger = PrivacyLedger::open(Path::new(&db)).unwrap();
    let charges = ledger.charges(None).unwrap();
    let training: Vec<_> = charges
        .iter()
        .filter(|c| c.kind == ChargeKind::Training)
        .collect();
    let mut rounds: Vec<u32> = training.iter().map(|c| c.round).collect();
    rounds.dedup();
    assert_eq!(rounds.len(), training.len(), "a round charged twice");
    assert!(rounds.iter().all(|r| (1..=12).contains(r)));
    let aborted = v["rounds_aborted"].as_u64().unwrap() as usize;
    assert!(training.iter().filter(|c| c.released).count() >= 12 - aborted);
    assert!(training.iter().filter(|c| !c.released).count() <= aborted);
    let audit: Vec<_> = charges
        .iter()
        .filter(|c| c.kind == ChargeKind::Audit)
        .collect();
    assert_eq!(audit.len(), 1, "{charges:?}");
    assert_eq!(audit[0].round, 13);
    assert!(audit[0].released, "the counts were decoded: {charges:?}");
    // The job's ε is its own charges', the audit's included.
    let spent = ledger.job_spent(&charges[0].job).unwrap();
    assert!((spent - eps).abs() < 1e-9, "{spent} vs {eps}");
}

/// Six parties in memory, a fifth of them going silent at random points,
/// no noise: every secure sum equals the plain sum of its contributors'
/// inputs, and a round either finished with its sum or aborted.
#[test]
fn the_secure_sums_inside_a_job_equal_the_plain_sums() {
    let mut roster = String::new();
    for i in 0..6u32 {
        roster += &format!(
            "[[party]]\nid = {i}\nname = \"p{i}\"\nidentity_key = \"{}\"\n\n",
            demo_public_key_hex(i)
        );
    }
    let text = format!(
        "[consortium]\nid = \"probe\"\nthreshold = 4\nmax_colluding = 1\nactive = true\nphase_timeout_secs = 1.0\n\n{roster}\
         [privacy]\nunit = \"none\"\nepsilon = 1.0\ndelta = 1e-5\naccountant = \"zcdp\"\nclip_norm = 100.0\nrounds = 6\n\n\
         [encoding]\nbits = 24\nrotation = \"none\"\ngamma = 0.125\n\n\
         [strategy]\nkind = \"fedavg\"\nmodel = \"softmax\"\ninputs = 13\nclasses = 3\n"
    );
    let policy = Policy::parse(Path::new("probe.toml"), &text).unwrap();
    let data = prepare(Path::new("data/wine.csv"), 1).unwrap();
    let parties = (0..6u32)
        .map(|i| Member {
            id: i,
            identity_seed: demo_identity_seed(i),
            data: data.train.clone(),
        })
        .collect();
    let dir = tmp("probe");
    let mut ledger = PrivacyLedger::open(&Path::new(&dir).join("l.db")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (tap, seen) = std::sync::mpsc::channel();
    let mut ended = Vec::new();
    let status = local::run(
        LocalJob {
            policy: &policy,
            policy_text: &text,
            request: StartJob {
                job: "probe-job".into(),
                seed: Some(9),
                epsilon: None,
                rounds: None,
            },
            parties,
            allow_no_dp: true,
            dropout: 0.2,
            dropout_seed: 9,
            randomness: InputRandomness::Os,
            out: Path::new(&dir),
            tap: Some(tap),
        },
        &mut ledger,
        Some(&tx),
        &mut |r| ended.push(r),
    )
    .unwrap();
    assert_eq!(ended, (1..=6).collect::<Vec<u32>>());
    // Blocked: a job without DP is never released.
    assert_eq!(status.state, "blocked");
    let sums: Vec<_> = rx
        .try_iter()
        .filter(|s| !s.contributors.is_empty())
        .collect();
    check_sums(&sums, &inputs_of(seen.try_iter()));
    let training: Vec<_> = status.history.iter().filter(|r| r.round <= 6).collect();
    assert_eq!(training.len(), 6);
    let finished = training.iter().filter(|r| r.state == "finished").count();
    assert!(finished >= 3, "{finished} rounds finished");
    assert!(
        training.iter().any(|r| !r.dropped.is_empty()),
        "some party went silent: {training:?}"
    );
}

#[test]
fn party_level_dp_runs_under_its_policy() {
    let dir = tmp("party");
    let (code, out, err) = shroud(&[
        "demo",
        "--policy",
        "policies/party-level.toml",
        "--in-process",
        "--dropout",
        "0",
        "--json",
        "--out",
        &dir,
    ]);
    // Released or blocked, the job ran to its end and was charged.
    assert!(code == 0 || err.contains("release blocked"), "{err}");
    let v = json(&out);
    assert_eq!(v["unit"], "party");
    assert_eq!(v["rounds"], 10);
    let eps = v["epsilon_spent"].as_f64().unwrap();
    assert!(eps > 0.0 && eps <= 6.0, "{eps}");
    let ledger = PrivacyLedger::open(Path::new(v["db"].as_str().unwrap())).unwrap();
    let charges = ledger.charges(None).unwrap();
    // Ten rounds (no dropouts: none aborted) and the audit's counts, whose
    // party-level sensitivity is a whole party's scored sample.
    assert_eq!(charges.len(), 11);
    assert!(charges.iter().all(|c| c.released), "{charges:?}");
    assert_eq!(
        charges
            .iter()
            .filter(|c| c.kind == ChargeKind::Audit)
            .count(),
        1
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(v["report_json"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(
        report["audit_release"]["noise"][0]["sensitivity"],
        serde_json::json!(shroud::audit::AUDIT_SAMPLE_CAP as f64)
    );
}

/// A DP job of eight demo parties holding IID shares of the wine records,
/// in memory, under the policy `text`: its status, the secure sums the
/// coordinator decoded (with contributors), every input the parties made,
/// and the ledger.
fn run_wine_job(text: &str, job: &str, dropout: f64) -> JobRun {
    run_job(text, job, dropout, common::wine_shares(8))
}

type JobRun = (
    shroud::net::api::JobStatus,
    Vec<shroud::coordinator::ObservedSum>,
    Vec<shroud::party::ObservedInput>,
    PrivacyLedger,
);

/// The job's ε in the ledger, checked against what `policy check`
/// predicts for its plan.
fn spent_as_planned(
    ledger: &PrivacyLedger,
    job: &str,
    plan: &shroud::dp::plan::PrivacyPlan,
) -> f64 {
    let spent = ledger.job_spent(job).unwrap();
    assert!(
        (spent - plan.epsilon_total).abs() < 1e-9,
        "ledger {spent} against policy check {}",
        plan.epsilon_total
    );
    spent
}

/// [`run_wine_job`] with the parties holding `shares`.
fn run_job(text: &str, job: &str, dropout: f64, shares: Vec<shroud::data::Dataset>) -> JobRun {
    let policy = Policy::parse(Path::new("job.toml"), text).unwrap();
    let parties = shares
        .into_iter()
        .enumerate()
        .map(|(i, data)| Member {
            id: i as u32,
            identity_seed: demo_identity_seed(i as u32),
            data,
        })
        .collect();
    let dir = tmp(job);
    let mut ledger = PrivacyLedger::open(&Path::new(&dir).join("l.db")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (tap, seen) = std::sync::mpsc::channel();
    let status = local::run(
        LocalJob {
            policy: &policy,
            policy_text: text,
            request: StartJob {
                job: job.into(),
                seed: Some(3),
                epsilon: None,
                rounds: None,
            },
            parties,
            allow_no_dp: false,
            dropout,
            dropout_seed: 11,
            randomness: InputRandomness::Os,
            out: Path::new(&dir),
            tap: Some(tap),
        },
        &mut ledger,
        Some(&tx),
        &mut |_| {},
    )
    .unwrap();
    let sums = rx
        .try_iter()
        .filter(|s| !s.contributors.is_empty())
        .collect();
    (status, sums, inputs_of(seen.try_iter()), ledger)
}

/// FedMR in memory with DP and dropouts: several secure sums per round over
/// disjoint groups, each exact, and still one charge per round.
#[test]
fn fedmr_runs_in_memory_with_one_charge_per_round() {
    let records: Vec<usize> = common::wine_shares(8).iter().map(|d| d.len()).collect();
    let text = common::fedmr_policy_text(&records, 4, 1, 4);
    let policy = Policy::parse(Path::new("fedmr.toml"), &text).unwrap();
    let layers = policy.strategy.layer_dimensions().len();
    let (status, sums, inputs, ledger) = run_wine_job(&text, "fedmr-job", 0.05);
    assert!(
        status.state == "released" || status.state == "blocked",
        "{status:?}"
    );
    check_sums(&sums, &inputs);
    // Round 1 is the warm-up (one task over all); later rounds have one
    // task per layer and group, each over about half the roster.
    for round in 2..=4 {
        let tasks: BTreeSet<u32> = sums
            .iter()
            .filter(|s| s.round == round)
            .map(|s| s.task)
            .collect();
        assert!(tasks.len() <= 2 * layers, "round {round}: {tasks:?}");
        assert!(
            sums.iter()
                .filter(|s| s.round == round)
                .all(|s| s.contributors.len() <= 4),
            "round {round}"
        );
    }
    assert!(sums.iter().filter(|s| s.round == 2).count() >= 2);
    let charges = ledger.charges(Some("fedmr-job")).unwrap();
    let training: Vec<u32> = charges
        .iter()
        .filter(|c| c.kind == ChargeKind::Training)
        .map(|c| c.round)
        .collect();
    let distinct: BTreeSet<u32> = training.iter().copied().collect();
    assert_eq!(distinct.len(), training.len(), "{charges:?}");
    assert!(training.len() <= 4 && training.len() >= 3, "{charges:?}");
    let eps = ledger.job_spent("fedmr-job").unwrap();
    assert!(eps > 0.0 && eps <= 8.0 * (1.0 + 1e-9), "{eps}");
}

/// A series network in memory: each round one exact secure sum of the
/// round's stage, one charge per round, and the ledger's ε for the job is
/// what `policy check` predicts for the policy.
#[test]
fn series_runs_in_memory_with_exact_sums_and_the_predicted_charges() {
    let records: Vec<usize> = common::wine_shares(8).iter().map(|d| d.len()).collect();
    let text = common::series_policy_text(&records, 2, 4);
    let policy = Policy::parse(Path::new("series.toml"), &text).unwrap();
    let (status, sums, inputs, ledger) = run_wine_job(&text, "series-job", 0.0);
    assert!(
        status.state == "released" || status.state == "blocked",
        "{status:?}"
    );
    check_sums(&sums, &inputs);
    // Between two rounds only the stage of the later one moves: stage 0 in
    // round 2, stage 1 (stage 0 frozen as released) in rounds 3 and 4.
    let offsets = policy.strategy.stage_offsets();
    let dims = policy.strategy.stage_dimensions();
    let after = |round: u32| -> Vec<f64> {
        let s = sums
            .iter()
            .find(|s| s.round == round)
            .unwrap_or_else(|| panic!("round {round} summed nothing"));
        s.model_after.clone().expect("the model after the round")
    };
    for round in 2..=4u32 {
        let (before, now) = (after(round - 1), after(round));
        assert_eq!(now.len(), policy.strategy.dimension());
        let trained = usize::from(round > 2);
        for k in 0..2 {
            let slice = offsets[k]..offsets[k] + dims[k];
            let moved = before[slice.clone()] != now[slice];
            assert_eq!(moved, k == trained, "round {round}, stage {k}");
        }
    }
    let charges = ledger.charges(Some("series-job")).unwrap();
    let training: Vec<u32> = charges
        .iter()
        .filter(|c| c.kind == ChargeKind::Training)
        .map(|c| c.round)
        .collect();
    assert_eq!(training, vec![1, 2, 3, 4], "{charges:?}");
    spent_as_planned(
        &ledger,
        "series-job",
        &shroud::dp::plan::PrivacyPlan::for_policy(&policy).unwrap(),
    );
}

/// The bundled data and default policy are in the binary: the demo runs
/// from a folder that holds neither, and says which it used.
#[test]
fn the_demo_runs_from_any_folder() {
    let dir = common::temp_dir("elsewhere");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shroud"))
        .current_dir(&dir)
        .args([
            "demo",
            "--in-process",
            "--dataset",
            "wine",
            "--rounds",
            "2",
            "--dropout",
            "0",
            "--json",
            "--out",
            "o",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("release blocked"),
        "{err}"
    );
    let v = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v["dataset"], "wine");
    assert!(
        v["policy"].as_str().unwrap().contains("(built in)"),
        "{}",
        v["policy"]
    );
    assert!(dir.join("o").join("summary.json").exists());
    // An unknown name lists the bundled ones.
    let (code, _, err) = shroud(&["demo", "--dataset", "nope"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("the bundled ones are breast_cancer, caravan, digits"),
        "{err}"
    );
}

/// The average ensemble in memory: each member trains at home and only the
/// one secure sum of their class probabilities leaves — without noise, each
/// input a plain probability table and the coordinator seeing only the
/// sum. Each party's home training is charged under its own id, the audit
/// under none, and the ledger's ε is what `policy check` predicts: the
/// largest member's plus the audit's.
#[test]
fn ensemble_sums_member_probabilities_without_noise_and_charges_each_member() {
    let records: Vec<usize> = common::wine_shares(8).iter().map(|d| d.len()).collect();
    let public = common::wine_public_set(&common::temp_dir("ensemble-public"));
    let text = common::ensemble_policy_text(&records, &public, 6);
    let policy = Policy::parse(Path::new("ensemble.toml"), &text).unwrap();
    let plan = shroud::dp::plan::PrivacyPlan::for_policy(&policy).unwrap();
    let (status, sums, inputs, ledger) = run_wine_job(&text, "ensemble-job", 0.0);
    assert_eq!(status.state, "released", "{status:?}");
    check_sums(&sums, &inputs);
    let q = policy.strategy.public_set.as_ref().unwrap().records;
    let classes = policy.strategy.classes;
    // One outputs sum, then the audit's.
    let outputs: Vec<_> = sums.iter().filter(|s| s.round == 1).collect();
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].sum.len(), q * classes);
    assert_eq!(outputs[0].contributors.len(), 8);
    // The first attempt succeeded: the audit's sum comes next (round 4,
    // after the three attempts the plan allows).
    let rounds: BTreeSet<u32> = sums.iter().map(|s| s.round).collect();
    assert_eq!(rounds, BTreeSet::from([1, 4]));
    // Each member's input is its probabilities as words, noise-free: every
    // record's row sums to one (to the word grid). What a member sends
    // never reaches the coordinator on its own: it saw only the sum.
    for i in inputs.iter().filter(|i| i.round == 1) {
        let p = shroud::job::task::decode_outputs(&i.words);
        for row in p.chunks(classes) {
            let total: f64 = row.iter().sum();
            assert!((total - 1.0).abs() < 1e-3, "party {}: {row:?}", i.party);
        }
    }
    let summed = shroud::job::task::decode_outputs(&outputs[0].sum);
    for row in summed.chunks(classes) {
        assert!((row.iter().sum::<f64>() - 8.0).abs() < 1e-2, "{row:?}");
    }
    // The members did not all train the same model: their inputs differ.
    let first = &inputs.iter().find(|i| i.round == 1).unwrap().words;
    assert!(inputs
        .iter()
        .filter(|i| i.round == 1)
        .any(|i| &i.words != first));
    let charges = ledger.charges(Some("ensemble-job")).unwrap();
    let home = plan.home_charge().unwrap();
    let members: Vec<u32> = charges
        .iter()
        .filter(|c| c.kind == ChargeKind::Training)
        .map(|c| {
            assert!((c.rho - home.rho).abs() < 1e-12, "{c:?}");
            assert_eq!(c.round, 1);
            c.party.expect("home training is charged to its party")
        })
        .collect();
    assert_eq!(members, (0..8).collect::<Vec<u32>>());
    let audit: Vec<_> = charges
        .iter()
        .filter(|c| c.kind == ChargeKind::Audit)
        .collect();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].party, None);
    let spent = spent_as_planned(&ledger, "ensemble-job", &plan);
    // Eight members each paying ρ in sequence would cost far more.
    let sequential =
        shroud::dp::accountant::zcdp_epsilon_of_rho(8.0 * home.rho, policy.privacy.delta).unwrap();
    assert!(spent < sequential / 2.0, "{spent} vs {sequential}");
}

/// Transfer in memory: the base trains as FedAvg (one shared charge per
/// round, exact sums); the parties fine-tune at home as the audit's counts
/// are taken, each charged under its own id with the audit; the report
/// carries both models' confusion counts; ε is as predicted.
#[test]
fn transfer_trains_a_base_then_fine_tunes_at_home_and_reports_both() {
    let records: Vec<usize> = common::wine_shares(8).iter().map(|d| d.len()).collect();
    let text = common::transfer_policy_text(&records, 4);
    let policy = Policy::parse(Path::new("transfer.toml"), &text).unwrap();
    let plan = shroud::dp::plan::PrivacyPlan::for_policy(&policy).unwrap();
    let (status, sums, inputs, ledger) = run_wine_job(&text, "transfer-job", 0.0);
    assert_eq!(status.state, "released", "{status:?}");
    check_sums(&sums, &inputs);
    let charges = ledger.charges(Some("transfer-job")).unwrap();
    let shared: Vec<u32> = charges
        .iter()
        .filter(|c| c.kind == ChargeKind::Training)
        .map(|c| {
            assert_eq!(c.party, None);
            c.round
        })
        .collect();
    assert_eq!(shared, vec![1, 2, 3, 4], "{charges:?}");
    let home = plan.home_charge().unwrap();
    let tuned: Vec<u32> = charges
        .iter()
        .filter(|c| c.kind == ChargeKind::Audit && c.party.is_some())
        .map(|c| {
            assert!((c.rho - home.rho).abs() < 1e-12, "{c:?}");
            c.party.unwrap()
        })
        .collect();
    assert_eq!(tuned, (0..8).collect::<Vec<u32>>());
    let spent = spent_as_planned(&ledger, "transfer-job", &plan);
    assert!(spent <= 8.0, "{spent}");
    let dir = tmp("transfer-job");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&dir).join("transfer-job/audit-report.json")).unwrap(),
    )
    .unwrap();
    let t = &report["transfer"];
    assert_eq!(t["classes"], 3);
    assert_eq!(t["base"].as_array().unwrap().len(), 9);
    assert_eq!(t["fine_tuned"].as_array().unwrap().len(), 9);
    assert!(t["noise_std"].as_f64().unwrap() > 0.0);
    let html =
        std::fs::read_to_string(Path::new(&dir).join("transfer-job/audit-report.html")).unwrap();
    assert!(html.contains("id=\"transfer\""));
}

/// An ensemble whose sum keeps aborting (every member silent each round)
/// tries it in each of its three rounds, then fails with the reason; the
/// audit never runs and nothing is released.
#[test]
fn an_ensemble_whose_sum_never_completes_fails_after_three_attempts() {
    let records: Vec<usize> = common::wine_shares(8).iter().map(|d| d.len()).collect();
    let public = common::wine_public_set(&common::temp_dir("ensemble-dropped-public"));
    let text = common::ensemble_policy_text(&records, &public, 4);
    let (status, sums, _, ledger) = run_wine_job(&text, "ensemble-dropped", 1.0);
    assert_eq!(status.state, "failed", "{status:?}");
    let reason = status.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("member probabilities") && reason.contains("aborted 3 times"),
        "{reason}"
    );
    assert!(
        sums.is_empty(),
        "a sum completed: {:?}",
        sums.iter()
            .map(|s| (s.round, s.contributors.clone()))
            .collect::<Vec<_>>()
    );
    let attempts: BTreeSet<u32> = status.history.iter().map(|r| r.round).collect();
    assert_eq!(attempts, BTreeSet::from([1, 2, 3]), "{:?}", status.history);
    assert!(ledger
        .charges(Some("ensemble-dropped"))
        .unwrap()
        .iter()
        .all(|c| c.kind == ChargeKind::Training));
}

/// The ensemble by noisy vote in memory: members train without noise, and
/// the vote — one-hot votes plus each party's share of the vote's noise —
/// is the one release: exact sums, one shared charge of the planned ρ, no
/// party charged on its own, and the ledger's ε as predicted.
#[test]
fn a_voting_ensemble_pays_once_for_its_noisy_vote() {
    let records: Vec<usize> = common::wine_shares(8).iter().map(|d| d.len()).collect();
    let public = common::wine_public_set(&common::temp_dir("vote-public"));
    let text = common::ensemble_policy_text(&records, &public, 6).replace(
        "student_epochs = 30\n",
        "student_epochs = 30\nvote_noise_std = 40.0\n",
    );
    let policy = Policy::parse(Path::new("vote.toml"), &text).unwrap();
    let plan = shroud::dp::plan::PrivacyPlan::for_policy(&policy).unwrap();
    let vote = plan.vote.clone().expect("a vote plan");
    assert!(plan.home_charge().is_none());
    let (status, sums, inputs, ledger) = run_wine_job(&text, "vote-job", 0.0);
    assert_eq!(status.state, "released", "{status:?}");
    check_sums(&sums, &inputs);
    // Each member's input is its votes plus noise: signed counts, not a
    // probability table.
    let q = policy.strategy.public_set.as_ref().unwrap().records;
    let round1: Vec<_> = inputs.iter().filter(|i| i.round == 1).collect();
    assert_eq!(round1.len(), 8);
    for i in &round1 {
        assert_eq!(i.words.len(), q * 3);
        let signed: Vec<i64> = i.words.iter().map(|&w| i64::from(w as i32)).collect();
        assert!(
            signed.iter().any(|v| !(0..=1).contains(v)),
            "no noise on party {}",
            i.party
        );
    }
    let charges = ledger.charges(Some("vote-job")).unwrap();
    let training: Vec<_> = charges
        .iter()
        .filter(|c| c.kind == ChargeKind::Training)
        .collect();
    assert_eq!(training.len(), 1, "{charges:?}");
    assert_eq!(training[0].party, None);
    assert!((training[0].rho - vote.charge.rho).abs() < 1e-12);
    let spent = spent_as_planned(&ledger, "vote-job", &plan);
    assert!(spent < 8.0, "{spent}");
}

/// FedImpres in memory. Round 1 opens with the one statistics sum (exact,
/// every party's input noisy), charged once under its own kind; rounds 2
/// and 3 pass it over. Every round is otherwise FedAvg's, charged once.
/// The impressions the coordinator sends are exactly what the synthesiser
/// makes from released state alone: the model the last round released,
/// the decoded statistics sum and the public seed. The ledger's ε is what
/// `policy check` predicts.
#[test]
fn fedimpres_sums_statistics_once_and_impresses_only_released_state() {
    use shroud::dp::statistics;
    use shroud::strategy::fedimpres::FedImpres;
    use shroud::strategy::impressions::{synthesise, ConsortiumStats};
    let records: Vec<usize> = common::wine_shares(8).iter().map(|d| d.len()).collect();
    let text = common::fedimpres_policy_text(&records, 5);
    let policy = Policy::parse(Path::new("fedimpres.toml"), &text).unwrap();
    let plan = shroud::dp::plan::PrivacyPlan::for_policy(&policy).unwrap();
    let (status, sums, inputs, ledger) = run_wine_job(&text, "fedimpres-job", 0.0);
    assert_eq!(status.state, "released", "{status:?}");
    check_sums(&sums, &inputs);
    let tasks: Vec<(u32, u32)> = sums
        .iter()
        .filter(|s| s.round <= 5)
        .map(|s| (s.round, s.task))
        .collect();
    assert_eq!(tasks, vec![(1, 0), (1, 1), (2, 1), (3, 1), (4, 0), (5, 0)]);
    let blocks = statistics::blocks(&policy);
    let stats_sum = &sums[0];
    assert_eq!(stats_sum.bits, 32);
    assert_eq!(stats_sum.sum.len(), statistics::width(&blocks));
    // A party's statistics are noisy: its class counts are not whole.
    let (classes, d) = (policy.strategy.classes, policy.strategy.inputs);
    for i in inputs.iter().filter(|i| (i.round, i.task) == (1, 0)) {
        let counts = &statistics::decode(&i.words, &blocks)[..classes];
        let whole: f64 = counts.iter().map(|c| (c - c.round()).abs()).sum();
        assert!(whole > 1e-3, "party {}: {counts:?}", i.party);
    }
    // Charges: the statistics once, then one per training round.
    let charges = ledger.charges(Some("fedimpres-job")).unwrap();
    let kinds: Vec<(u32, u32, ChargeKind)> =
        charges.iter().map(|c| (c.round, c.task, c.kind)).collect();
    assert_eq!(
        &kinds[..6],
        &[
            (1, 0, ChargeKind::Statistics),
            (1, 1, ChargeKind::Training),
            (2, 1, ChargeKind::Training),
            (3, 1, ChargeKind::Training),
            (4, 0, ChargeKind::Training),
            (5, 0, ChargeKind::Training),
        ]
    );
    let st = plan.statistics.as_ref().unwrap();
    assert!((charges[0].rho - st.charge.rho).abs() < 1e-15);
    let spent = spent_as_planned(&ledger, "fedimpres-job", &plan);
    assert!(spent < 8.0, "{spent}");
    // The impressions sent after round 5 (made after round 4, refreshed
    // every 2 rounds from round 2), recomputed from released state only.
    let rec = ledger.job_run("fedimpres-job").unwrap().unwrap();
    let half =
        shroud::strategy::coordinator_half(&policy, rec.seed, Some(&rec.strategy_state)).unwrap();
    let downlink = half.downlink(0);
    let dim = policy.strategy.dimension();
    assert_eq!(downlink[dim], 30.0);
    let stats = ConsortiumStats::from_sum(&statistics::decode(&stats_sum.sum, &blocks), classes, d);
    let released = sums
        .iter()
        .find(|s| (s.round, s.task) == (4, 0))
        .and_then(|s| s.model_after.clone())
        .unwrap();
    let mut model = shroud::strategy::initial_model(&policy, 0);
    model.set_flat(&released).unwrap();
    let want = synthesise(&model, &stats, 30, &FedImpres::synthesis_seed(rec.seed, 4));
    let mut expected = want.features.concat();
    expected.extend(want.labels.iter().map(|&l| l as f64));
    assert_eq!(&downlink[dim + 1..], expected.as_slice());
    // The labels follow the consortium's noisy class histogram.
    let shares = &stats.class_shares;
    for (c, share) in shares.iter().enumerate() {
        let k = want.labels.iter().filter(|&&l| l == c).count() as f64;
        assert!(
            (k - 30.0 * share).abs() <= 1.0,
            "class {c}: {k} of 30 at {share}"
        );
    }
}

/// FST-CBDG in memory, parties holding digits with the labels unused. A
/// party sends only the head's update (the plan's length for a 32 × 10
/// head) and, every 2 rounds, its noisy pseudo-label sums; each refresh is
/// charged once under its own kind, and the ledger's ε is the plan's. The
/// refreshed prototypes moved from the encoder's; the released network
/// carries the frozen encoder.
#[test]
fn fstcbdg_sends_only_the_head_and_noisy_prototype_sums() {
    use shroud::dp::statistics;
    let shares = common::raw_digits_shares(8);
    let records: Vec<usize> = shares.iter().map(|d| d.len()).collect();
    let text = common::fstcbdg_policy_text(&records, 5);
    let policy = Policy::parse(Path::new("fstcbdg.toml"), &text).unwrap();
    let plan = shroud::dp::plan::PrivacyPlan::for_policy(&policy).unwrap();
    let (status, sums, inputs, ledger) = run_job(&text, "fst-job", 0.0, shares.clone());
    assert_eq!(status.state, "released", "{status:?}");
    check_sums(&sums, &inputs);
    let tasks: Vec<(u32, u32)> = sums
        .iter()
        .filter(|s| s.round <= 5)
        .map(|s| (s.round, s.task))
        .collect();
    assert_eq!(
        tasks,
        vec![(1, 0), (2, 0), (3, 0), (3, 1), (4, 0), (5, 0), (5, 1)]
    );
    let blocks = statistics::blocks(&policy);
    let (classes, e) = (10, shroud::encoder::EMBEDDING);
    assert_eq!(statistics::width(&blocks), classes * e + classes);
    for i in inputs.iter().filter(|i| i.round <= 5) {
        let spec = shroud::strategy::round_plan(&policy, "fst-job", i.round)
            .tasks
            .into_iter()
            .find(|t| t.id == i.task)
            .unwrap();
        match spec.sum {
            shroud::strategy::SumKind::Update => {
                let scheme =
                    shroud::job::training_scheme(&policy, &plan, "fst-job", i.round, &spec);
                assert_eq!(spec.dimension, e * classes + classes);
                assert_eq!(i.words.len(), scheme.padded);
            }
            shroud::strategy::SumKind::Statistics => {
                // Pseudo-label counts of a party's records would sum to
                // its record count; its noisy ones do not.
                let decoded = statistics::decode(&i.words, &blocks);
                let counts: f64 = decoded[classes * e..].iter().sum();
                let n = records[i.party as usize] as f64;
                assert!(
                    (counts - n).abs() > 0.01,
                    "party {}: {counts} of {n}",
                    i.party
                );
            }
            other => panic!("a party sent a {other:?} sum"),
        }
    }
    let charges = ledger.charges(Some("fst-job")).unwrap();
    let refreshes: Vec<(u32, u32)> = charges
        .iter()
        .filter(|c| c.kind == ChargeKind::Statistics)
        .map(|c| (c.round, c.task))
        .collect();
    assert_eq!(refreshes, vec![(3, 0), (5, 0)]);
    let spent = spent_as_planned(&ledger, "fst-job", &plan);
    assert!(spent < 8.0, "{spent}");
    let rec = ledger.job_run("fst-job").unwrap().unwrap();
    let state = rec.strategy_state.clone();
    let half = shroud::strategy::fstcbdg::FstCbdg::new(&policy, Some(&state)).unwrap();
    let initial = &policy.strategy.encoder.as_ref().unwrap().encoder.prototypes;
    assert_ne!(half.prototypes(), initial.as_slice());
    let released = shroud::strategy::coordinator_half(&policy, rec.seed, Some(&state))
        .unwrap()
        .release_model();
    assert!(released.encoder().is_some());
    let dir = tmp("fst-job");
    let saved = shroud::network::Network::load_safetensors(
        &Path::new(&dir).join("fst-job/model.safetensors"),
    )
    .unwrap();
    let test = &shares[0];
    assert_eq!(
        saved
            .predict(shroud::model::matrix(test, None).view())
            .len(),
        test.len()
    );
    assert!((saved.accuracy(test) - released.accuracy(test)).abs() < 0.02);
}
