//! `shroud compare` as a consortium runs it: a spec of cells, killed and
//! resumed, its table and its page of plots.

mod common;
use common::temp_dir;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SPEC: &str = r#"
dataset = "wine"
parties = 3
rounds = 2
seeds = [1]
epsilons = [8, "none"]
[[strategy]]
name = "fedavg"
[[partition]]
name = "iid"
"#;

fn compare(spec: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shroud"));
    c.arg("compare").arg(spec).arg("--out").arg(out);
    c
}

fn journal_lines(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("cells.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Killed once its first cell is in the journal, the comparison resumes:
/// the finished cell is kept as it was, not run again, and the table ends
/// with both cells.
#[test]
fn a_killed_comparison_resumes_and_keeps_its_finished_cells() {
    let dir = temp_dir("compare-resume");
    let spec = dir.join("tiny.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let out = dir.join("out");
    let mut child = compare(&spec, &out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while journal_lines(&out).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no cell finished"
        );
        assert!(child.try_wait().unwrap().is_none(), "compare ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = journal_lines(&out);
    assert!(!out.join("results.csv").exists() || before.len() == 2);
    let again = compare(&spec, &out).output().unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.contains(&format!("({} kept", before.len())),
        "{stdout}"
    );
    let after = journal_lines(&out);
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0], before[0], "the finished cell was run again");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(rows[0].starts_with("fedavg,iid,8,1,"), "{csv}");
    assert!(rows[1].starts_with("fedavg,iid,none,1,,"), "{csv}");
    // The ε spent is the ledger's, under the budget.
    let spent: f64 = rows[0].split(',').nth(4).unwrap().parse().unwrap();
    assert!(spent > 7.0 && spent <= 8.0, "{spent}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(v["cells"].as_array().unwrap().len(), 2);
    assert_eq!(v["aggregates"].as_array().unwrap().len(), 2);
    // Other settings are other cells: with another number of rounds
    // nothing is kept, and the table holds the new runs only.
    std::fs::write(&spec, SPEC.replace("rounds = 2", "rounds = 3")).unwrap();
    let changed = compare(&spec, &out).output().unwrap();
    assert!(changed.status.success());
    assert!(
        String::from_utf8_lossy(&changed.stdout).contains("(0 kept"),
        "{}",
        String::from_utf8_lossy(&changed.stdout)
    );
    assert_eq!(journal_lines(&out).len(), 4);
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
}

/// The page renders in headless Chromium with one panel of plots per
/// partition, a dot per cell, and no sideways scroll at 1280 px.
#[test]
#[cfg_attr(
    not(has_chromium),
    ignore = "needs headless Chromium (Debian package `chromium`)"
)]
fn the_comparison_page_renders_its_plots_in_chromium() {
    let dir = temp_dir("compare-html");
    let spec = dir.join("two.toml");
    std::fs::write(
        &spec,
        SPEC.replace("seeds = [1]", "seeds = [1, 2]")
            .replace("epsilons = [8, \"none\"]", "epsilons = [8]")
            + "[[partition]]\nname = \"dirichlet\"\nalpha = 0.5\n",
    )
    .unwrap();
    let out = dir.join("out");
    let run = compare(&spec, &out).output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let html = out.join("compare.html").canonicalize().unwrap();
    let dom = common::rendered_dom(&dir, &html, 1280);
    assert_eq!(
        dom.matches("class=\"panel\"").count(),
        2,
        "one panel per partition"
    );
    assert_eq!(dom.matches("class=\"seed\"").count(), 4, "one dot per cell");
    assert!(dom.contains("class=\"mean\"") && dom.contains("class=\"spread\""));
    assert!(dom.contains("dirichlet(α=0.5)"));
    let (content, viewport) = common::laid_out_widths(&dir, &html, 1280);
    assert!(content <= viewport, "{content} px in {viewport} px");
}

/// The shipped specs parse and between them run every strategy there is:
/// the first on five partitions, four ε settings and three seeds.
#[test]
fn the_shipped_specs_list_every_strategy() {
    let spec = shroud::compare::load_spec(Path::new("specs/mnist1d-heterogeneity.toml")).unwrap();
    let home =
        shroud::compare::load_spec(Path::new("specs/mnist1d-transfer-ensemble.toml")).unwrap();
    let impres = shroud::compare::load_spec(Path::new("specs/mnist1d-fedimpres.toml")).unwrap();
    let fst = shroud::compare::load_spec(Path::new("specs/digits-fstcbdg.toml")).unwrap();
    let mut names: Vec<&str> = spec
        .strategies
        .iter()
        .chain(&home.strategies)
        .chain(&impres.strategies)
        .chain(&fst.strategies)
        .map(|s| s.name.as_str())
        .collect();
    names.sort();
    names.dedup();
    let mut all = shroud::policy::STRATEGIES.to_vec();
    all.sort();
    assert_eq!(names, all);
    assert_eq!(shroud::compare::cells(&spec).len(), 5 * 3 * 4 * 3);
    assert_eq!(shroud::compare::cells(&home).len(), 2 * 3 * 4 * 3);
    assert_eq!(home.public_records, Some(500));
    assert_eq!(shroud::compare::cells(&impres).len(), 2 * 2 * 2 * 5);
    // Three FST-CBDG variants, told apart by their settings and labels.
    let labels: Vec<String> = fst.strategies.iter().map(|s| s.label()).collect();
    assert_eq!(labels, ["self-training", "fst-cbdg", "supervised probe"]);
    assert_eq!(shroud::compare::cells(&fst).len(), 3 * 2 * 2 * 5);
    let local =
        shroud::compare::load_spec(Path::new("specs/mnist1d-fedimpres-local.toml")).unwrap();
    assert_eq!(local.policy, Some("policies/fedimpres-local.toml".into()));
    let longer =
        shroud::compare::load_spec(Path::new("specs/mnist1d-partitions-fedavg-150.toml")).unwrap();
    assert_eq!(shroud::compare::cells(&longer).len(), 5 * 2 * 3);
}
