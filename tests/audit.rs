//! The audit at the end of a job: an overfit model without DP is blocked,
//! the same job with strong DP is released, reports verify against the
//! tamper-evident log, tampering is found, and the HTML page renders.

mod common;
use common::{json, shroud, temp_dir};

use std::path::Path;

#[test]
fn an_overfit_model_without_dp_is_blocked() {
    let dir = temp_dir("overfit");
    let out = dir.display().to_string();
    let (code, stdout, stderr) = shroud(&[
        "demo",
        "--no-dp",
        "--allow-no-dp",
        "--rounds",
        "150",
        "--dropout",
        "0",
        "--json",
        "--out",
        &out,
    ]);
    assert_ne!(code, 0, "a blocked release must fail the command");
    assert!(stderr.contains("release blocked"), "{stderr}");
    let v = json(&stdout);
    assert_eq!(v["decision"], "block");
    assert!(v["auc"].as_f64().unwrap() > 0.75, "{stdout}");
    assert!(v["epsilon_lower_bound"].as_f64().unwrap() > 0.5, "{stdout}");
    assert!(v["model"].is_null());
    let report_json = Path::new(v["report_json"].as_str().unwrap());
    assert!(
        !report_json.with_file_name("model.safetensors").exists(),
        "a blocked model is never written"
    );
    // The report names the failed checks by how much they failed.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report_json).unwrap()).unwrap();
    let failed: Vec<&serde_json::Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .collect();
    assert!(failed
        .iter()
        .any(|c| c["check"] == "epsilon_lower_bound" && c["margin"].as_f64().unwrap() < 0.0));
    assert!(failed.iter().any(|c| c["check"] == "differential_privacy"));
}

#[test]
fn the_same_job_with_strong_dp_is_released_below_its_claimed_epsilon() {
    let dir = temp_dir("strongdp");
    let out = dir.display().to_string();
    let (code, stdout, stderr) = shroud(&[
        "demo",
        "--epsilon",
        "1",
        "--rounds",
        "150",
        "--dropout",
        "0",
        "--json",
        "--out",
        &out,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v = json(&stdout);
    assert_eq!(v["decision"], "release", "{stdout}");
    let claimed = v["epsilon_spent"].as_f64().unwrap();
    assert!(
        v["epsilon_lower_bound"].as_f64().unwrap() < claimed,
        "{stdout}"
    );
    let model = Path::new(v["model"].as_str().unwrap());
    assert!(model.exists());
    // The report carries the released model's hash.
    use sha2::Digest;
    let hash = shroud::policy::hex(&sha2::Sha256::digest(std::fs::read(model).unwrap()));
    assert_eq!(v["model_sha256"], hash.as_str());

    // The report verifies against the log; a tampered copy does not.
    let db = v["db"].as_str().unwrap();
    let report = v["report_json"].as_str().unwrap();
    let (code, stdout, stderr) = shroud(&["report", "verify", report, "--db", db]);
    assert_eq!(code, 0, "{stderr}");
    // The decision is the job's last log entry (after its rounds).
    let entry: i64 = stdout
        .split("matches log entry ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(entry > 40, "{stdout}");
    let forged = dir.join("forged.json");
    let text = std::fs::read_to_string(report)
        .unwrap()
        .replacen("\"release\"", "\"block\"", 1);
    std::fs::write(&forged, text).unwrap();
    let (code, _, stderr) = shroud(&["report", "verify", forged.to_str().unwrap(), "--db", db]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("differs from what log entry {entry} recorded")),
        "{stderr}"
    );

    // Re-rendering from the log gives the same report.
    let again = dir.join("again");
    let (code, _, stderr) = shroud(&[
        "audit",
        "--db",
        db,
        "--job",
        "demo-digits-1",
        "--out",
        again.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read(report).unwrap(),
        std::fs::read(again.join("audit-report.json")).unwrap()
    );

    // A tampered log entry is found, and named.
    let (code, stdout, _) = shroud(&["verify-log", "--db", db]);
    assert_eq!(code, 0);
    assert!(stdout.contains("unbroken"), "{stdout}");
    {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute(
            "UPDATE audit_log SET content = replace(content, 'release', 'blocked') WHERE seq = ?1",
            [entry],
        )
        .unwrap();
    }
    let (code, _, stderr) = shroud(&["verify-log", "--db", db]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("first broken entry is {entry}")),
        "{stderr}"
    );
}

/// Renders a report in headless Chromium and checks that the page shows
/// the decision and the ROC. Ignored (not passed) where Chromium is absent;
/// `.ci/run` installs it.
#[test]
#[cfg_attr(
    not(has_chromium),
    ignore = "needs headless Chromium (Debian package `chromium`)"
)]
fn the_html_report_renders_in_chromium() {
    let dir = temp_dir("chromium");
    let out = dir.display().to_string();
    let (code, stdout, stderr) = shroud(&[
        "demo",
        "--rounds",
        "4",
        "--dropout",
        "0",
        "--json",
        "--out",
        &out,
    ]);
    assert!(code == 0 || stderr.contains("release blocked"), "{stderr}");
    let v = json(&stdout);
    let html = Path::new(v["report_html"].as_str().unwrap())
        .canonicalize()
        .unwrap();
    let shot = dir.join("report.png");
    let dom = common::rendered_dom(&dir, &html, 1280);
    let decision = if v["decision"] == "release" {
        "Decision: RELEASE"
    } else {
        "Decision: BLOCKED"
    };
    assert!(
        dom.contains(decision),
        "the rendered page does not show the decision"
    );
    assert!(
        dom.contains("<svg") && dom.contains("class=\"roc-curve\""),
        "no ROC in the rendered page"
    );
    for part in [
        "id=\"roc-log\"",
        "class=\"dp-bound\"",
        "class=\"histogram\"",
        "id=\"reason\"",
        "id=\"utility\"",
        "DP-noised",
    ] {
        assert!(dom.contains(part), "the rendered page lacks {part}");
    }
    // At 1280 px the page must not scroll sideways.
    let (content, viewport) = common::laid_out_widths(&dir, &html, 1280);
    assert!(
        content <= viewport,
        "the page scrolls sideways at 1280 px: content {content} px wide in {viewport} px"
    );
    let (ok, _, stderr) = common::run_chromium(
        &dir,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,1600".into(),
            format!("file://{}", html.display()),
        ],
    );
    assert!(ok, "{stderr}");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a blank page? {} bytes",
        png.len()
    );
}

/// A reviewer key made by `shroud keygen`: its file and public key hex.
fn reviewer_key(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(format!("{name}.key"));
    let (code, out, err) = shroud(&["keygen", "--out", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let hex = out
        .split("identity_key = \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no key in {out}"))
        .to_string();
    (path.display().to_string(), hex)
}

/// Sign-off: only a listed reviewer with their own key can sign; a signed
/// report verifies, an altered one does not; approval follows the log, so
/// a report file that leaves out a rejection is still not approved.
#[test]
fn reviewers_sign_off_reports_and_approval_follows_the_log() {
    let dir = temp_dir("sign-off");
    let (alice_key, alice_pub) = reviewer_key(&dir, "alice");
    let (bob_key, bob_pub) = reviewer_key(&dir, "bob");
    let policy = std::fs::read_to_string("policies/default.toml")
        .unwrap()
        .replace("max_auc = 0.6", "max_auc = 0.95\nrequire_sign_off = true")
        + &format!(
            "\n[[reviewer]]\nid = \"alice\"\nname = \"Alice Reviewer\"\nidentity_key = \"{alice_pub}\"\n\n\
             [[reviewer]]\nid = \"bob\"\nname = \"Bob Reviewer\"\nidentity_key = \"{bob_pub}\"\n"
        );
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let out_dir = dir.join("out");
    let (code, out, err) = shroud(&[
        "demo",
        "--policy",
        policy_path.to_str().unwrap(),
        "--in-process",
        "--rounds",
        "3",
        "--dropout",
        "0",
        "--json",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    let report = v["report_json"].as_str().unwrap().to_string();
    let db = v["db"].as_str().unwrap().to_string();
    let verify = || shroud(&["report", "verify", &report, "--db", &db]);
    let sign = |key: &str, who: &str, verdict: &str, comment: &str| {
        shroud(&[
            "report",
            "sign",
            &report,
            "--db",
            &db,
            "--key",
            key,
            "--reviewer",
            who,
            "--verdict",
            verdict,
            "--comment",
            comment,
        ])
    };
    // Released by the gate, but the policy wants a sign-off first.
    let (code, out, err) = verify();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("NOT approved: the policy requires a sign-off"),
        "{out}"
    );
    // Someone else's key, or someone not listed, cannot sign.
    let (code, _, err) = sign(&bob_key, "alice", "accepted", "ok");
    assert_ne!(code, 0);
    assert!(
        err.contains("not the one the policy lists for reviewer `alice`"),
        "{err}"
    );
    let (code, _, err) = sign(&alice_key, "carol", "accepted", "ok");
    assert_ne!(code, 0);
    assert!(
        err.contains("`carol` is not a reviewer the job's policy lists (it lists: alice, bob)"),
        "{err}"
    );
    // Alice accepts: approved, and the report shows it.
    let (code, out, err) = sign(&alice_key, "alice", "accepted", "checked the audit");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("signed off by alice"), "{out}");
    let (code, out, err) = verify();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("approved: released by the gate and accepted by alice"),
        "{out}"
    );
    let html = std::fs::read_to_string(Path::new(&report).with_extension("html")).unwrap();
    assert!(html.contains("checked the audit") && html.contains("accepted"));
    // An altered sign-off does not verify.
    let signed = std::fs::read_to_string(&report).unwrap();
    std::fs::write(&report, signed.replace("checked the audit", "did not look")).unwrap();
    let (code, _, err) = verify();
    assert_ne!(code, 0);
    assert!(err.contains("does not verify"), "{err}");
    // Bob rejects; a copy of the report without his rejection is still
    // not approved, because approval is read from the log.
    std::fs::write(&report, &signed).unwrap();
    let (code, _, err) = sign(&bob_key, "bob", "rejected", "canary bound too close");
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = verify();
    assert_eq!(code, 0);
    assert!(out.contains("NOT approved: rejected by `bob`"), "{out}");
    std::fs::write(&report, &signed).unwrap();
    let (code, out, _) = verify();
    assert_eq!(code, 0);
    assert!(out.contains("NOT approved: rejected by `bob`"), "{out}");
    let (code, out, err) = shroud(&["verify-log", "--db", &db]);
    assert_eq!(code, 0, "{out}{err}");
}
