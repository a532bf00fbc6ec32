//! Helpers shared by the integration tests that run the `shroud` binary.
#![allow(dead_code)] // each test crate uses its own share of the helpers

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

/// The inputs among what the parties saw.
pub fn inputs_of(
    seen: impl IntoIterator<Item = shroud::party::PartyObservation>,
) -> Vec<shroud::party::ObservedInput> {
    seen.into_iter()
        .filter_map(|o| match o {
            shroud::party::PartyObservation::Input(i) => Some(i),
            _ => None,
        })
        .collect()
}

/// Every aggregate equals the sum, mod 2^bits, of the inputs its
/// contributors made for that round and task.
pub fn check_sums(
    sums: &[shroud::coordinator::ObservedSum],
    inputs: &[shroud::party::ObservedInput],
) {
    assert!(!sums.is_empty());
    for s in sums {
        let mask = if s.bits == 32 {
            u32::MAX
        } else {
            (1u32 << s.bits) - 1
        };
        let mut want = vec![0u32; s.sum.len()];
        for c in &s.contributors {
            let x = inputs
                .iter()
                .find(|i| i.party == *c && i.round == s.round && i.task == s.task && i.job == s.job)
                .unwrap_or_else(|| panic!("no input observed for party {c} round {}", s.round));
            for (w, v) in want.iter_mut().zip(&x.words) {
                *w = w.wrapping_add(*v) & mask;
            }
        }
        assert_eq!(
            s.sum, want,
            "round {} task {}: secure sum differs",
            s.round, s.task
        );
    }
}
