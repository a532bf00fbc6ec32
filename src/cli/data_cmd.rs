//! `shroud data split` and `shroud data partition`: deal a bundled data set
//! out to parties as CSV files, standardised with the training split's
//! statistics, so that a consortium can be tried out on one machine or
//! several; `partition --stats` says what the party subsets look like.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::modelnet::partition_dataset;

#[derive(clap::Args)]
pub struct SplitFlags {
    /// Data set: digits, breast_cancer, mnist1d, caravan, wine, or a CSV path.
    #[arg(long, default_value = "digits")]
    dataset: String,
    #[arg(long, default_value_t = 8)]
    parties: usize,
    /// dirichlet, iid, pathological, quantity, or the ModelNet label sets
    /// R (random), D (diverse), S (similar).
    #[arg(long, default_value = "iid")]
    partition: String,
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// Classes per party (pathological, R, D, S).
    #[arg(long, default_value_t = 2)]
    classes_per_party: usize,
    /// R, D and S: clusters of the class centroids (0: ⌈√classes⌉).
    #[arg(long, default_value_t = 0)]
    clusters: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Folder for party-<i>.csv and test.csv (`split`: required).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the subsets' statistics (class occurrence, coverage, Jaccard
    /// overlap, the client graph, diversity) and save them as JSON
    /// (`partition-stats.json` in `--out`, or `--stats-json`).
    #[arg(long)]
    stats: bool,
    /// Where to save the statistics as JSON.
    #[arg(long)]
    stats_json: Option<PathBuf>,
}

pub fn split(f: SplitFlags) -> Result<()> {
    if f.out.is_none() {
        bail!("--out is required: the folder for party-<i>.csv and test.csv");
    }
    partition(f)
}

pub fn partition(f: SplitFlags) -> Result<()> {
    if f.parties < 2 {
        bail!("--parties must be at least 2");
    }
    let data = crate::data::prepare_named(&f.dataset, f.seed)?;
    let how = crate::demo::parse_partition(&f.partition, f.alpha, f.classes_per_party, f.clusters)?;
    let parts = partition_dataset(&data.train, f.parties, &how, f.seed)?;
    println!(
        "{}: {} features, {} classes; {} partition, seed {}",
        data.name,
        data.train.dim(),
        data.train.classes,
        f.partition,
        f.seed
    );
    if let Some(out) = &f.out {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        for (i, idx) in parts.iter().enumerate() {
            let p = out.join(format!("party-{i}.csv"));
            data.train.subset(idx).write_csv(&p)?;
            println!("{}  {} records", p.display(), idx.len());
        }
        let t = out.join("test.csv");
        data.test.write_csv(&t)?;
        println!("{}  {} records (held out)", t.display(), data.test.len());
    }
    if f.stats || f.stats_json.is_some() {
        let s = crate::modelnet::stats(&data.train, &parts);
        println!(
            "coverage    {:.3} of {} classes held by some party",
            s.coverage, s.classes
        );
        println!(
            "occurrence  parties per class: {}",
            s.class_occurrence
                .iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!(
            "jaccard     mean overlap of two parties' label sets {:.3}",
            s.mean_jaccard
        );
        println!("diversity   {:.3} (mean centroid distance within a party's classes, over all classes')", s.diversity);
        for (p, (set, size)) in s.label_sets.iter().zip(&s.sizes).enumerate() {
            println!("party {p:<4}  {size:>5} records, classes {set:?}");
        }
        println!("client graph (Jaccard overlap per pair): a benchmark artefact that reveals each party's classes; it never reaches a coordinator");
        for row in &s.pairwise_overlap {
            println!(
                "  {}",
                row.iter()
                    .map(|v| format!("{v:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        let path = f
            .stats_json
            .clone()
            .or_else(|| f.out.as_ref().map(|o| o.join("partition-stats.json")));
        if let Some(path) = path {
            std::fs::write(&path, serde_json::to_string_pretty(&s)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("statistics  {}", path.display());
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct EncoderFlags {
    /// The public set: a gzip-compressed CSV of 28×28 images (784 pixel
    /// columns, 0–255) and a label column.
    #[arg(long, default_value = "data/mnist_5k.csv.gz")]
    public: PathBuf,
    /// Where to write the encoder.
    #[arg(long, default_value = "data/digits-encoder.safetensors")]
    out: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// `shroud data encoder`: the same file from the same public set and seed.
pub fn encoder(f: EncoderFlags) -> Result<()> {
    let images = crate::encoder::load_mnist_gz(&f.public)?;
    let public = crate::encoder::digitise_dataset(&images);
    let t = crate::encoder::train(&public, f.seed);
    t.encoder
        .save(&f.out)
        .with_context(|| format!("cannot write {}", f.out.display()))?;
    let bytes = std::fs::read(&f.out)?;
    println!(
        "encoder     {} → {} (trained on {} public images in the digits format, seed {}; \
         the classifier it is cut from scores {:.1} % on them)",
        t.encoder.inputs(),
        t.encoder.dimension(),
        public.len(),
        f.seed,
        100.0 * t.public_accuracy
    );
    println!("written     {}", f.out.display());
    println!(
        "sha256      {}",
        crate::policy::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes))
    );
    Ok(())
}
