//! `shroud policy check` and `shroud budget show` as a reviewer runs them.

mod common;
use common::shroud;

#[test]
fn policy_check_json_has_the_promised_figures() {
    let (code, stdout, stderr) = shroud(&["policy", "check", "policies/default.toml", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for key in [
        "accountant",
        "noise_std_per_party",
        "gamma",
        "bits_needed",
        "epsilon_by_round",
        "epsilon_total",
        "epsilon_ideal",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    let by_round = v["epsilon_by_round"].as_array().unwrap();
    assert_eq!(by_round.len() as u64, v["rounds"].as_u64().unwrap());
    let total = v["epsilon_total"].as_f64().unwrap();
    assert!(total <= v["epsilon_budget"].as_f64().unwrap());
    assert!(v["epsilon_ideal"].as_f64().unwrap() <= total);
    assert!(v["noise_std_per_party"].as_f64().unwrap() > 1.0);
    assert_eq!(v["accountant"], "zcdp");
}

#[test]
fn policy_check_refuses_a_bad_file_with_its_name() {
    let dir = std::env::temp_dir().join(format!("shroud-policy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    let text = std::fs::read_to_string("policies/default.toml")
        .unwrap()
        .replace("threshold = 6 ", "threshold = 12 ");
    std::fs::write(&path, text).unwrap();
    let (code, stdout, stderr) = shroud(&["policy", "check", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("bad.toml") && stderr.contains("consortium.threshold"),
        "{stderr}"
    );
    let (code, _, stderr) = shroud(&["policy", "check", "no/such/file.toml"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("cannot read the policy file"), "{stderr}");
}

#[test]
fn budget_show_reads_the_ledger() {
    use shroud::dp::plan::RoundCharge;
    use shroud::store::PrivacyLedger;
    let dir = std::env::temp_dir().join(format!("shroud-budget-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("ledger.db");
    let _ = std::fs::remove_file(&db);
    {
        let mut l = PrivacyLedger::open(&db).unwrap();
        l.set_budget("demo", 4.0, 1e-6, shroud::policy::AccountantKind::Zcdp)
            .unwrap();
        let c = RoundCharge::of_zcdp(0.0625, 1.0);
        l.begin_job("demo", "job-1", "abc", &[c.clone(), c.clone()])
            .unwrap();
        use shroud::store::ledger::ChargeKind;
        l.charge("job-1", 1, 0, ChargeKind::Training, &c).unwrap();
        l.charge("job-1", 2, 0, ChargeKind::Audit, &c).unwrap();
    }
    let (code, stdout, stderr) =
        shroud(&["budget", "show", "--db", db.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let c = &v["consortia"][0];
    assert_eq!(c["consortium"], "demo");
    assert!((c["epsilon"].as_f64().unwrap() - 2.41909).abs() < 1e-4);
    assert_eq!(v["charges"].as_array().unwrap().len(), 2);
    // The audit's charge is shown as such.
    assert_eq!(v["charges"][1]["kind"], "audit");
    let (code, stdout, _) = shroud(&["budget", "show", "--db", db.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains("demo: spent ε = 2.4191 of 4"), "{stdout}");
    let (code, _, stderr) = shroud(&["budget", "show", "--db", "/nonexistent/x.db"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no such database"), "{stderr}");
}

#[test]
fn policy_check_shows_a_fedmr_rounds_tasks_cohorts_and_composition() {
    let (code, stdout, stderr) = shroud(&["policy", "check", "policies/fedmr.toml", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["strategy"]["kind"], "fedmr");
    let round = &v["rounds_shown"][0];
    assert_eq!(round["composition"], "parallel");
    let tasks = round["tasks"].as_array().unwrap();
    // Two layers, ⌊10 / 3⌋ = 3 groups each.
    assert_eq!(tasks.len(), 6);
    assert_eq!(round["slices"], 2);
    let mut members: Vec<u64> = tasks[..3]
        .iter()
        .flat_map(|t| {
            t["cohort"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().unwrap())
        })
        .collect();
    members.sort_unstable();
    assert_eq!(members, (0..10).collect::<Vec<u64>>());
    let sq: f64 = [0, 3]
        .iter()
        .map(|&i| tasks[i]["clip_norm"].as_f64().unwrap().powi(2))
        .sum();
    assert!((sq - 1.0).abs() < 1e-9, "{sq}");
    // The human form names the composition the charge relies on.
    let (code, stdout, _) = shroud(&["policy", "check", "policies/fedmr.toml"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("parallel composition"), "{stdout}");
    assert!(stdout.contains("one charge per round"), "{stdout}");
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    use std::process::{Command, Stdio};
    // As `shroud policy check … | head -0`: the pipe is closed before the
    // command writes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_shroud"))
        .args(["policy", "check", "policies/default.toml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "{err}");
}
