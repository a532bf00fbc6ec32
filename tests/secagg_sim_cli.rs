//! `shroud secagg-sim` as a user runs it: one JSON object for a good round,
//! a clear error and a non-zero exit for bad arguments.

mod common;
use common::shroud;

#[test]
fn json_report_of_an_exact_round() {
    for neighbours in ["all", "4"] {
        let (code, stdout, stderr) = shroud(&[
            "secagg-sim",
            "--parties",
            "20",
            "--len",
            "500",
            "--dropout",
            "0.1",
            "--neighbors",
            neighbours,
            "--bits",
            "20",
            "--seed",
            "3",
            "--threads",
            "2",
            "--json",
        ]);
        assert_eq!(code, 0, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
        for key in [
            "parties",
            "len",
            "neighbors",
            "threshold",
            "dropped",
            "exact",
            "client_ms_mean",
            "server_ms",
            "keystream_bytes_server",
            "raw_keystream_gb_per_s",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {stdout}");
        }
        assert_eq!(v["exact"], true);
        assert_eq!(v["parties"], 20);
        assert_eq!(v["len"], 500);
        assert_eq!(v["dropped"], 2);
        assert_eq!(v["contributors"], 18);
        // Dropping before the masked input forces the coordinator to
        // regenerate the dropouts' pairwise masks as well as self-masks.
        let streams = v["keystream_bytes_server"].as_u64().unwrap() / (500 * 4);
        assert!(streams > 18, "{streams} streams regenerated");
        assert!(v["raw_keystream_gb_per_s"].as_f64().unwrap() > 0.0);
        if neighbours == "all" {
            assert_eq!(v["neighbors"], 19);
        }
    }
}

#[test]
fn auto_graph_is_sparse_with_a_majority_threshold() {
    let (code, stdout, stderr) = shroud(&[
        "secagg-sim",
        "--parties",
        "100",
        "--len",
        "50",
        "--dropout",
        "0.1",
        "--neighbors",
        "auto",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let k = v["neighbors"].as_u64().unwrap();
    let t = v["threshold"].as_u64().unwrap();
    assert!(k < 99 && k % 2 == 0, "{k}");
    assert!(2 * t > k + 1 && t <= k + 1, "k={k} t={t}");
    assert_eq!(v["exact"], true);
    // Too few parties for the security target: a clear refusal.
    let (code, _, stderr) = shroud(&[
        "secagg-sim",
        "--parties",
        "20",
        "--dropout",
        "0.1",
        "--neighbors",
        "auto",
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("no sparse graph fits 20 parties"),
        "{stderr}"
    );
}

#[test]
fn dropouts_in_every_phase_and_active_mode() {
    for phase in [
        "advertise-keys",
        "share-keys",
        "masked-input",
        "consistency-check",
        "unmasking",
        "random",
    ] {
        let (code, stdout, stderr) = shroud(&[
            "secagg-sim",
            "--parties",
            "12",
            "--len",
            "64",
            "--dropout",
            "0.25",
            "--drop-phase",
            phase,
            "--threshold",
            "7",
            "--active",
            "--json",
        ]);
        assert_eq!(code, 0, "{phase}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["exact"], true, "{phase}");
        assert_eq!(v["dropped"], 3, "{phase}");
    }
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--parties", "5", "--threshold", "6"],
            "--threshold 6 is above --parties 5",
        ),
        (&["--bits", "40"], "--bits must be between 8 and 32"),
        (&["--bits", "4"], "--bits must be between 8 and 32"),
        (&["--parties", "1"], "--parties must be at least 2"),
        (&["--len", "0"], "--len must be at least 1"),
        (&["--dropout", "1.5"], "--dropout must be in [0, 1)"),
        (
            &["--parties", "10", "--dropout", "0.6"],
            "leaving fewer than --threshold",
        ),
        (
            &["--neighbors", "many"],
            "--neighbors must be a number, `all` or `auto`",
        ),
        (
            &["--parties", "10", "--neighbors", "10"],
            "--neighbors must be between 1 and 9",
        ),
        (
            &["--parties", "9", "--neighbors", "3"],
            "even number of parties",
        ),
        (&["--drop-phase", "lunch"], "--drop-phase must be one of"),
        (
            &["--parties", "10", "--threshold", "1"],
            "--threshold must be between 2",
        ),
        (
            &["--parties", "10", "--threshold", "4", "--active"],
            "2·threshold > holders + max_colluding",
        ),
        (
            &[
                "--parties",
                "8",
                "--threshold",
                "5",
                "--colluding",
                "2",
                "--active",
            ],
            "2·threshold > holders + max_colluding",
        ),
        (
            &["--parties", "8", "--threshold", "3", "--colluding", "3"],
            "must be below the threshold",
        ),
        (&["--threads", "0"], "--threads must be at least 1"),
    ];
    for (args, want) in cases {
        let mut full = vec!["secagg-sim"];
        full.extend_from_slice(args);
        let (code, stdout, stderr) = shroud(&full);
        assert_ne!(code, 0, "{args:?} succeeded: {stdout}");
        assert!(
            stderr.contains(want),
            "{args:?}: expected `{want}` in `{stderr}`"
        );
        assert!(stdout.is_empty(), "{args:?} printed a report");
    }
}
