//! docs/operations.md, run as written: scripts/consortium-walkthrough.sh
//! makes keys, splits data, writes the policy, serves, runs eight
//! `shroud party` processes and a job, and the reviewer's checks pass.

mod common;

#[test]
fn the_operations_guide_runs_end_to_end() {
    let dir = common::temp_dir("walkthrough").join("w");
    let port = shroud::localnet::free_port().unwrap();
    let out = std::process::Command::new("bash")
        .arg("scripts/consortium-walkthrough.sh")
        .arg(&dir)
        .env("SHROUD", env!("CARGO_BIN_EXE_shroud"))
        .env("PORT", port.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("form an unbroken chain"), "{stdout}");
    assert!(stdout.contains("matches log entry"), "{stdout}");
    // `job start --wait` showed the job's progress as it ran.
    assert!(stderr.contains("round 1 of 20 (task 0), phase"), "{stderr}");
    assert!(
        stderr.contains("of 8 parties answered the last phase"),
        "{stderr}"
    );
    // Every party took part to the end.
    for i in 0..8 {
        let log = std::fs::read_to_string(dir.join(format!("party-{i}.log"))).unwrap();
        assert!(log.contains("job digits-1 ended"), "party {i}: {log}");
    }
}
