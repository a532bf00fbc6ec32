//! Models and data: gradients against finite differences, central training
//! on real data, safetensors round trips, CSV errors and partitioners.

mod common;

use std::path::Path;

use shroud::data::{parse_csv, partition, prepare, Partition};
use shroud::model::{matrix, train_central, Mlp};

#[test]
fn gradients_match_finite_differences() {
    let d = prepare(Path::new("data/wine.csv"), 1).unwrap();
    let idx: Vec<usize> = (0..12).collect();
    let x = matrix(&d.train, Some(&idx));
    let y: Vec<usize> = idx.iter().map(|&i| d.train.labels[i]).collect();
    for sizes in [
        vec![d.train.dim(), d.train.classes],
        vec![d.train.dim(), 7, 5, d.train.classes],
    ] {
        let model = Mlp::new(&sizes, 3);
        let (_, grad) = model.loss_and_grad(x.view(), &y);
        let params = model.to_flat();
        let h = 1e-6;
        // Every 7th parameter, so the test stays quick on big inputs.
        for k in (0..params.len()).step_by(7) {
            let mut plus = model.clone();
            let mut p = params.clone();
            p[k] += h;
            plus.set_flat(&p).unwrap();
            let mut minus = model.clone();
            p[k] -= 2.0 * h;
            minus.set_flat(&p).unwrap();
            let lp: f64 = plus.losses(x.view(), &y).iter().sum::<f64>() / y.len() as f64;
            let lm: f64 = minus.losses(x.view(), &y).iter().sum::<f64>() / y.len() as f64;
            let fd = (lp - lm) / (2.0 * h);
            assert!(
                (fd - grad[k]).abs() < 1e-5 * (1.0 + fd.abs()),
                "param {k}: fd {fd} vs {}",
                grad[k]
            );
        }
        // Per-example gradients average to the batch gradient.
        let per = model.per_example_grads(x.view(), &y);
        for k in 0..params.len() {
            let mean = per.iter().map(|g| g[k]).sum::<f64>() / per.len() as f64;
            assert!((mean - grad[k]).abs() < 1e-10, "param {k}");
        }
    }
}

#[test]
fn a_centrally_trained_mlp_learns_digits() {
    let d = prepare(Path::new("data/digits.csv"), 7).unwrap();
    let mut model = Mlp::new(&[64, 32, 10], 7);
    let before = model.accuracy(&d.test);
    train_central(&mut model, &d.train, 20, 32, 0.05, 0.9, 7);
    let after = model.accuracy(&d.test);
    assert!(
        after > 0.93,
        "test accuracy {after} (before training {before})"
    );
}

#[test]
fn safetensors_round_trip_with_pytorch_names() {
    let model = Mlp::new(&[5, 4, 3], 1);
    let dir = std::env::temp_dir().join(format!("shroud-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.safetensors");
    model.save_safetensors(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(names, vec!["0.bias", "0.weight", "2.bias", "2.weight"]);
    assert_eq!(st.tensor("0.weight").unwrap().shape(), &[4, 5]);
    let back = Mlp::load_safetensors(&path).unwrap();
    for (a, b) in model.to_flat().iter().zip(back.to_flat()) {
        assert!((a - b).abs() < 1e-6 * (1.0 + a.abs()));
    }
}

#[test]
fn bad_csv_files_name_file_line_and_column() {
    let p = Path::new("bad.csv");
    let e = parse_csv(p, "a,b,label\n1,2,0\n3,4\n").err().unwrap();
    assert_eq!(e.to_string(), "bad.csv:3: has 2 cells, the header has 3");
    let e = parse_csv(p, "a,b,label\n1,2,0\n3,x,1\n").err().unwrap();
    assert_eq!(e.to_string(), "bad.csv:3: column `b`: `x` is not a number");
    let e = parse_csv(p, "a,b,label\n1,2,0\n3,4,cat\n").err().unwrap();
    assert!(
        e.to_string()
            .starts_with("bad.csv:3: column `label`: `cat` is not a class label"),
        "{e}"
    );
    let e = parse_csv(p, "a,b,label\n1,2,0\n3,4,2\n").err().unwrap();
    assert!(e.to_string().contains("class 1 never appears"), "{e}");
    let e = parse_csv(p, "a,b,target\n1,2,0\n").err().unwrap();
    assert!(
        e.to_string().contains("must end with a `label` column"),
        "{e}"
    );
    let e = parse_csv(p, "a,label,split\n1,0,train\n2,1,val\n")
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "bad.csv:3: column `split`: `val` is not `train` or `test`"
    );
}

#[test]
fn mnist1d_uses_its_own_split_and_standardises_on_train() {
    let d = prepare(Path::new("data/mnist1d.csv"), 1).unwrap();
    assert_eq!(d.train.len(), 4000);
    assert_eq!(d.test.len(), 1000);
    for j in 0..d.train.dim() {
        let m = d.train.features.iter().map(|r| r[j]).sum::<f64>() / 4000.0;
        assert!(m.abs() < 1e-9, "feature {j} mean {m}");
    }
}

#[test]
fn partitions_are_reproducible_and_complete() {
    let d = prepare(Path::new("data/digits.csv"), 1).unwrap();
    let labels = &d.train.labels;
    let kinds = [
        Partition::Iid,
        Partition::Dirichlet {
            alpha: 0.5,
            min_records: 20,
        },
        Partition::Dirichlet {
            alpha: 0.1,
            min_records: 10,
        },
        Partition::Pathological { k: 2 },
        Partition::Quantity {
            alpha: 1.0,
            min_records: 30,
        },
    ];
    for how in kinds {
        let a = partition(labels, 10, 8, &how, 5).unwrap();
        let b = partition(labels, 10, 8, &how, 5).unwrap();
        assert!(a == b, "{how:?} not reproducible");
        let c = partition(labels, 10, 8, &how, 6).unwrap();
        assert!(a != c, "{how:?} ignores the seed");
        let mut all: Vec<usize> = a.iter().flatten().copied().collect();
        all.sort();
        assert!(
            all == (0..labels.len()).collect::<Vec<_>>(),
            "{how:?} loses or repeats records"
        );
        if let Partition::Pathological { k } = how {
            for part in &a {
                let mut cls: Vec<usize> = part.iter().map(|&i| labels[i]).collect();
                cls.sort();
                cls.dedup();
                assert!(cls.len() <= k, "{cls:?}");
            }
        }
        if let Partition::Dirichlet { min_records, .. } | Partition::Quantity { min_records, .. } =
            how
        {
            assert!(a.iter().all(|p| p.len() >= min_records));
        }
    }
    // Strong skew: with α = 0.1 most parties are dominated by few classes.
    let skew = partition(
        labels,
        10,
        8,
        &Partition::Dirichlet {
            alpha: 0.1,
            min_records: 10,
        },
        5,
    )
    .unwrap();
    let dominated = skew
        .iter()
        .filter(|p| {
            let mut counts = [0usize; 10];
            p.iter().for_each(|&i| counts[labels[i]] += 1);
            *counts.iter().max().unwrap() * 2 > p.len()
        })
        .count();
    assert!(dominated >= 4, "{dominated}");
    assert!(partition(
        labels,
        10,
        8,
        &Partition::Dirichlet {
            alpha: -1.0,
            min_records: 1
        },
        1
    )
    .is_err());
    assert!(partition(labels, 10, 3, &Partition::Pathological { k: 2 }, 1).is_err());
}

#[test]
fn a_partys_records_are_checked_against_the_policys_model() {
    use shroud::data::parse_party_csv;
    let p = Path::new("party.csv");
    // Label skew: classes 0, 1 and 3 of five, class 2 and 4 missing.
    let d = parse_party_csv(p, "a,b,label\n1,2,0\n3,4,3\n5,6,1\n", 2, 5).unwrap();
    assert_eq!(d.classes, 5);
    assert_eq!(d.len(), 3);
    // A class the model does not have, on its line.
    let e = parse_party_csv(p, "a,b,label\n1,2,0\n3,4,5\n", 2, 5)
        .err()
        .unwrap();
    assert!(
        e.to_string().starts_with("party.csv:3: column `label`: `5` is not a class label (an integer from 0 to 4, the policy's strategy.classes)"),
        "{e}"
    );
    // Another number of features than the model takes.
    let e = parse_party_csv(p, "a,b,c,label\n1,2,3,0\n", 2, 5)
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("has 3 feature columns; the policy's model takes 2"),
        "{e}"
    );
}

/// `shroud data partition --stats` deals the ModelNet label sets and saves
/// the statistics a benchmark reports; the deal files match them, and an
/// impossible diverse deal is refused with the reason.
#[test]
fn data_partition_reports_and_saves_the_modelnet_statistics() {
    let dir = std::env::temp_dir().join(format!("shroud-partition-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.to_str().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_shroud"))
            .args(args)
            .output()
            .unwrap()
    };
    // D: three classes each over four clusters of the class centroids.
    let deal = |parties: &str, extra: &[&str]| {
        let mut args = vec![
            "data",
            "partition",
            "--dataset",
            "mnist1d",
            "--parties",
            parties,
            "--partition",
            "D",
            "--classes-per-party",
            "3",
            "--clusters",
            "4",
            "--stats",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let o = deal("5", &["--seed", "2", "--out", out]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("coverage    1.000"), "{text}");
    assert!(text.contains("never reaches a coordinator"), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("partition-stats.json")).unwrap())
            .unwrap();
    assert_eq!(v["coverage"], 1.0);
    let sets = v["label_sets"].as_array().unwrap();
    assert_eq!(sets.len(), 5);
    // Each party's CSV holds exactly the records the statistics count.
    for (p, set) in sets.iter().enumerate() {
        assert_eq!(set.as_array().unwrap().len(), 3);
        let csv = std::fs::read_to_string(dir.join(format!("party-{p}.csv"))).unwrap();
        assert_eq!(
            csv.lines().count() - 1,
            v["sizes"][p].as_u64().unwrap() as usize,
            "party {p}"
        );
    }
    let graph = v["pairwise_overlap"].as_array().unwrap();
    assert_eq!(graph.len(), 5);
    // Two parties cannot hold enough classes of ten.
    let o = deal("2", &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("every class a holder"));
}

/// The shipped encoder is exactly what `shroud data encoder` makes from
/// the shipped public set with its defaults: the command reproduces it
/// byte for byte.
#[test]
fn the_shipped_encoder_is_what_the_command_makes() {
    let dir = common::temp_dir("encoder");
    let out = dir.join("encoder.safetensors");
    let (code, stdout, err) = common::shroud(&["data", "encoder", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("64 → 32"), "{stdout}");
    let made = std::fs::read(&out).unwrap();
    let shipped = std::fs::read("data/digits-encoder.safetensors").unwrap();
    assert!(made == shipped, "the command made another encoder");
    assert_eq!(shroud::encoder::DIGITS_ENCODER, shipped.as_slice());
}
