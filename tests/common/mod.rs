//! Helpers shared by the integration tests that run the `shroud` binary.

use std::process::Command;

/// Runs `shroud` with `args`: exit code, stdout, stderr.
pub fn shroud(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shroud"))
        .args(args)
        .output()
        .expect("run shroud");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh folder under the system's temporary directory.
#[allow(dead_code)]
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("shroud-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Parses one JSON object printed by `shroud`.
#[allow(dead_code)]
pub fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}
