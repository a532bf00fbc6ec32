//! `shroud data split`: deals a bundled data set out to parties as CSV
//! files, standardised with the training split's statistics, so that a
//! consortium can be tried out on one machine or several.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::data::partition;

#[derive(clap::Args)]
pub struct SplitFlags {
    /// Data set: digits, breast_cancer, mnist1d, caravan, wine, or a CSV path.
    #[arg(long, default_value = "digits")]
    dataset: String,
    #[arg(long, default_value_t = 8)]
    parties: usize,
    /// dirichlet, iid, pathological or quantity.
    #[arg(long, default_value = "iid")]
    partition: String,
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    #[arg(long, default_value_t = 2)]
    classes_per_party: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Folder for party-<i>.csv and test.csv.
    #[arg(long)]
    out: PathBuf,
}

pub fn split(f: SplitFlags) -> Result<()> {
    if f.parties < 2 {
        bail!("--parties must be at least 2");
    }
    let data = crate::data::prepare_named(&f.dataset, f.seed)?;
    let how = crate::demo::parse_partition(&f.partition, f.alpha, f.classes_per_party)?;
    let parts = partition(
        &data.train.labels,
        data.train.classes,
        f.parties,
        &how,
        f.seed,
    )?;
    std::fs::create_dir_all(&f.out)
        .with_context(|| format!("cannot create {}", f.out.display()))?;
    println!(
        "{}: {} features, {} classes",
        data.name,
        data.train.dim(),
        data.train.classes
    );
    for (i, idx) in parts.iter().enumerate() {
        let p = f.out.join(format!("party-{i}.csv"));
        data.train.subset(idx).write_csv(&p)?;
        println!("{}  {} records", p.display(), idx.len());
    }
    let t = f.out.join("test.csv");
    data.test.write_csv(&t)?;
    println!("{}  {} records (held out)", t.display(), data.test.len());
    Ok(())
}
