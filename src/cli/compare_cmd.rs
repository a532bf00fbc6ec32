//! `shroud compare SPEC`: parses flags, shows progress and prints where the
//! results went; the comparison itself is `crate::compare`.

use std::path::PathBuf;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::compare;

#[derive(clap::Args)]
pub struct CompareFlags {
    /// The comparison: data set, parties, strategies, partitions, ε values
    /// ("none" for no noise) and seeds, as TOML.
    spec: PathBuf,
    /// Output folder (default: out/compare-<spec name>). Cells already
    /// finished there are kept and skipped.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(f: CompareFlags) -> Result<()> {
    let spec = compare::load_spec(&f.spec)?;
    let out = f.out.unwrap_or_else(|| {
        let stem = f
            .spec
            .file_stem()
            .map_or("spec".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from("out").join(format!("compare-{stem}"))
    });
    let total = compare::cells(&spec).len();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} cell {pos:>4}/{len} {msg}").expect("valid template"),
    );
    let mut kept = 0;
    let results = compare::run(&spec, &out, &mut |p| {
        kept = p.kept;
        bar.set_position(p.done as u64);
        let left = p.total - p.done;
        let eta = p.mean_seconds.map_or(String::new(), |s| {
            let secs = (s * left as f64).round() as u64;
            format!(", about {}m{:02}s left", secs / 60, secs % 60)
        });
        bar.set_message(format!(
            "{} kept; last {} → {:.3}{eta}",
            p.kept, p.cell.id, p.cell.accuracy
        ));
    })?;
    bar.finish();
    let [csv, json, html] = compare::write_outputs(&spec, &results, &out)?;
    println!(
        "{} cells ({kept} kept from an earlier run), {:.0} s of jobs in all",
        results.len(),
        results.iter().map(|r| r.wall_seconds).sum::<f64>()
    );
    println!("csv     {}", csv.display());
    println!("json    {}", json.display());
    println!("html    {}", html.display());
    Ok(())
}
