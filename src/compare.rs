//! `shroud compare`: which strategy wins on data split like ours, at our ε,
//! and what privacy costs. A spec (TOML) names a data set, strategies,
//! partitions, ε values (with `"none"` for training without noise: a
//! reference, never released) and seeds; every combination is one cell,
//! a whole demo job in process — real secure aggregation, noise, ledger and
//! audit — with no dropouts.
//!
//! Finished cells are appended to `cells.jsonl` in the output folder (one
//! JSON line each, synced) before the next starts, so a killed comparison
//! resumes where it stopped: cells already there are kept and skipped. The
//! results are written as CSV, JSON and one self-contained HTML page.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::demo::{Demo, DemoConfig, Transport};
use crate::policy::hex;

/// A comparison as its TOML file states it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompareSpec {
    pub dataset: String,
    pub parties: u32,
    /// The policy every cell adapts (default: the built-in default
    /// policy), relative to the working folder like every path.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Override the policy's rounds.
    #[serde(default)]
    pub rounds: Option<u32>,
    /// Training records set aside as the public unlabelled set, for every
    /// strategy alike (the ensemble needs them; default: none, or 100 for
    /// the ensemble alone).
    #[serde(default)]
    pub public_records: Option<usize>,
    pub seeds: Vec<u64>,
    /// Budgets ε, and `"none"` for no noise.
    pub epsilons: Vec<EpsilonSetting>,
    #[serde(rename = "strategy")]
    pub strategies: Vec<StrategySpec>,
    #[serde(rename = "partition")]
    pub partitions: Vec<PartitionSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum EpsilonSetting {
    Budget(f64),
    Word(NoNoise),
}

/// The word `"none"`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoNoise {
    None,
}

impl EpsilonSetting {
    /// The budget, `None` for no noise.
    pub fn budget(self) -> Option<f64> {
        match self {
            EpsilonSetting::Budget(e) => Some(e),
            EpsilonSetting::Word(NoNoise::None) => None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StrategySpec {
    /// fedavg, fedmr or series.
    pub name: String,
    #[serde(default)]
    pub group_size: Option<u32>,
    #[serde(default)]
    pub warmup_rounds: Option<u32>,
    #[serde(default)]
    pub stages: Option<u32>,
    /// Further `[strategy]` keys for the policy (FedImpres', FST-CBDG's).
    #[serde(default)]
    pub settings: Option<toml::Table>,
    /// The name cells and plots give it (default: from the name and the
    /// keys above).
    #[serde(default)]
    pub label: Option<String>,
}

impl StrategySpec {
    /// The name a cell and a plot give it.
    pub fn label(&self) -> String {
        if let Some(l) = &self.label {
            return l.clone();
        }
        match (self.name.as_str(), self.group_size, self.stages) {
            ("fedmr", Some(g), _) => match self.warmup_rounds {
                Some(w) if w > 0 => format!("fedmr(g={g},w={w})"),
                _ => format!("fedmr(g={g})"),
            },
            ("series", _, Some(s)) => format!("series({s})"),
            _ => self.name.clone(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// iid, dirichlet, pathological, quantity, R, D or S.
    pub name: String,
    #[serde(default)]
    pub alpha: Option<f64>,
    #[serde(default)]
    pub classes_per_party: Option<usize>,
    #[serde(default)]
    pub clusters: Option<usize>,
}

impl PartitionSpec {
    pub fn label(&self) -> String {
        match (self.name.as_str(), self.alpha, self.classes_per_party) {
            ("dirichlet" | "quantity", Some(a), _) => format!("{}(α={a})", self.name),
            ("R" | "D" | "S" | "r" | "d" | "s", _, Some(k)) => match self.clusters {
                Some(c) if c > 0 => format!("{}(k={k},c={c})", self.name),
                _ => format!("{}(k={k})", self.name),
            },
            ("pathological", _, Some(k)) => format!("{}(k={k})", self.name),
            _ => self.name.clone(),
        }
    }
}

/// One combination.
#[derive(Clone, Debug)]
pub struct Cell {
    pub strategy: StrategySpec,
    pub partition: PartitionSpec,
    pub epsilon: Option<f64>,
    pub seed: u64,
}

impl Cell {
    /// Unique within a spec: what a resumed comparison matches on.
    pub fn id(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.strategy.label(),
            self.partition.label(),
            self.epsilon.map_or("none".into(), |e| e.to_string()),
            self.seed
        )
    }
}

/// One finished cell, as the CSV and JSON give it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    pub id: String,
    pub strategy: String,
    pub partition: String,
    /// The budget; `None`: no noise.
    pub epsilon: Option<f64>,
    pub seed: u64,
    /// What the ledger charged (`None` without noise).
    pub epsilon_spent: Option<f64>,
    /// Test accuracy of the final model.
    pub accuracy: f64,
    /// Test accuracy before the first round (FST-CBDG's zero-shot head).
    #[serde(default)]
    pub initial_accuracy: Option<f64>,
    /// Two-class data: precision, recall, F1 and AUC.
    pub test_metrics: Option<crate::evaluate::BinaryMetrics>,
    /// Party-level local training: the parties' locally trained models on
    /// the classes they lack (see [`crate::demo::Forgetting`]).
    #[serde(default)]
    pub forgetting: Option<crate::demo::Forgetting>,
    pub rounds_aborted: usize,
    /// "release" or "block" (every cell without noise is blocked).
    pub decision: String,
    pub wall_seconds: f64,
    /// Digest of everything the cell ran with (see [`settings_digest`]): a
    /// kept cell must match it, so changing the spec's rounds, policy or
    /// data set re-runs cells rather than keeping stale ones.
    #[serde(default)]
    pub settings: String,
}

/// SHA-256 (hex) of the policy every cell of `spec` adapts: the file's
/// bytes, or the built-in policy's.
pub fn policy_sha256(spec: &CompareSpec) -> Result<String> {
    let bytes = match &spec.policy {
        Some(p) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
        None => crate::demo::DEFAULT_POLICY.as_bytes().to_vec(),
    };
    Ok(hex(&Sha256::digest(&bytes)))
}

/// SHA-256 (hex, 16 bytes) of the cell's whole configuration: the spec's
/// shared settings, its policy's digest ([`policy_sha256`]), the
/// strategy's and partition's parameters, ε and seed.
pub fn settings_digest(spec: &CompareSpec, policy_sha256: &str, cell: &Cell) -> String {
    let doc = serde_json::json!({
        "dataset": spec.dataset,
        "parties": spec.parties,
        "policy_sha256": policy_sha256,
        "rounds": spec.rounds,
        "public_records": spec.public_records,
        "strategy": cell.strategy,
        "partition": cell.partition,
        "epsilon": cell.epsilon,
        "seed": cell.seed,
    });
    hex(&Sha256::digest(doc.to_string().as_bytes())[..16])
}

/// Reads and checks a spec.
pub fn load_spec(path: &Path) -> Result<CompareSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_spec(path, &text)
}

pub fn parse_spec(path: &Path, text: &str) -> Result<CompareSpec> {
    let spec: CompareSpec =
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e))?;
    let at = |key: &str, msg: String| anyhow::anyhow!("{}: `{key}`: {msg}", path.display());
    for (key, empty) in [
        ("seeds", spec.seeds.is_empty()),
        ("epsilons", spec.epsilons.is_empty()),
        ("strategy", spec.strategies.is_empty()),
        ("partition", spec.partitions.is_empty()),
    ] {
        if empty {
            return Err(at(key, "must list at least one".into()));
        }
    }
    if spec.parties < 2 {
        return Err(at("parties", format!("at least 2, got {}", spec.parties)));
    }
    for (i, e) in spec.epsilons.iter().enumerate() {
        if let Some(v) = e.budget() {
            if !(v.is_finite() && v > 0.0 && v <= 100.0) {
                return Err(at(
                    &format!("epsilons[{i}]"),
                    format!("a budget in (0, 100] or \"none\", got {v}"),
                ));
            }
        }
    }
    for (i, s) in spec.strategies.iter().enumerate() {
        if !crate::policy::STRATEGIES.contains(&s.name.as_str()) {
            return Err(at(
                &format!("strategy[{i}].name"),
                format!(
                    "must be one of {:?}, got \"{}\"",
                    crate::policy::STRATEGIES,
                    s.name
                ),
            ));
        }
    }
    for (i, p) in spec.partitions.iter().enumerate() {
        crate::demo::parse_partition(
            &p.name,
            p.alpha.unwrap_or(0.5),
            p.classes_per_party.unwrap_or(2),
            p.clusters.unwrap_or(0),
        )
        .map_err(|e| at(&format!("partition[{i}].name"), e.to_string()))?;
    }
    if let Some(p) = &spec.policy {
        if !p.is_file() {
            return Err(at(
                "policy",
                format!(
                    "{} is not a file (paths are relative to the working folder)",
                    p.display()
                ),
            ));
        }
    }
    let ids = cells(&spec).iter().map(Cell::id).collect::<Vec<_>>();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != ids.len() {
        bail!(
            "{}: two cells would be the same (a strategy, partition, ε or seed listed twice)",
            path.display()
        );
    }
    Ok(spec)
}

/// Every cell, strategies outermost, seeds innermost.
pub fn cells(spec: &CompareSpec) -> Vec<Cell> {
    let mut out = Vec::new();
    for p in &spec.partitions {
        for s in &spec.strategies {
            for e in &spec.epsilons {
                for &seed in &spec.seeds {
                    out.push(Cell {
                        strategy: s.clone(),
                        partition: p.clone(),
                        epsilon: e.budget(),
                        seed,
                    });
                }
            }
        }
    }
    out
}

/// What a comparison reports as it goes.
pub struct Progress<'a> {
    pub done: usize,
    pub total: usize,
    /// Cells found finished in the journal and skipped.
    pub kept: usize,
    /// The cell just finished (or kept).
    pub cell: &'a CellResult,
    /// Mean wall time of the cells run in this session.
    pub mean_seconds: Option<f64>,
}

/// The journal of finished cells in `out`.
pub fn journal_path(out: &Path) -> PathBuf {
    out.join("cells.jsonl")
}

/// The finished cells a journal holds; a torn last line (a kill mid-write)
/// is ignored.
pub fn read_journal(path: &Path) -> Result<Vec<CellResult>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn append_journal(path: &Path, r: &CellResult) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // After a torn line, start on a fresh one: only the last byte tells.
    let len = f.metadata()?.len();
    let torn = len > 0 && {
        let mut last = [0u8; 1];
        let mut r = std::fs::File::open(path)?;
        r.seek(std::io::SeekFrom::Start(len - 1))?;
        r.read_exact(&mut last)?;
        last != *b"\n"
    };
    let mut line = if torn {
        "\n".to_string()
    } else {
        String::new()
    };
    line += &serde_json::to_string(r)?;
    line.push('\n');
    f.write_all(line.as_bytes())?;
    f.sync_data()?;
    Ok(())
}

/// Runs every cell of `spec` not already in `out`'s journal, reporting each.
pub fn run(
    spec: &CompareSpec,
    out: &Path,
    on_cell: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<CellResult>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let journal = journal_path(out);
    let finished = read_journal(&journal)?;
    let policy = policy_sha256(spec)?;
    let all = cells(spec);
    let total = all.len();
    let mut results = Vec::with_capacity(total);
    let mut kept = 0;
    let mut ran_seconds = Vec::new();
    for cell in &all {
        let id = cell.id();
        let settings = settings_digest(spec, &policy, cell);
        if let Some(r) = finished
            .iter()
            .rev()
            .find(|r| r.id == id && r.settings == settings)
        {
            kept += 1;
            results.push(r.clone());
            on_cell(Progress {
                done: results.len(),
                total,
                kept,
                cell: r,
                mean_seconds: None,
            });
            continue;
        }
        let mut r = run_cell(spec, cell, out).with_context(|| format!("cell {id}"))?;
        r.settings = settings;
        append_journal(&journal, &r)?;
        ran_seconds.push(r.wall_seconds);
        results.push(r);
        on_cell(Progress {
            done: results.len(),
            total,
            kept,
            cell: results.last().expect("just pushed"),
            mean_seconds: Some(ran_seconds.iter().sum::<f64>() / ran_seconds.len() as f64),
        });
    }
    Ok(results)
}

fn run_cell(spec: &CompareSpec, cell: &Cell, out: &Path) -> Result<CellResult> {
    let folder: String = cell
        .id()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cfg = DemoConfig {
        dataset: spec.dataset.clone(),
        parties: Some(spec.parties),
        partition: cell.partition.name.clone(),
        alpha: cell.partition.alpha.unwrap_or(0.5),
        classes_per_party: cell.partition.classes_per_party.unwrap_or(2),
        clusters: cell.partition.clusters.unwrap_or(0),
        strategy: Some(cell.strategy.name.clone()),
        group_size: cell.strategy.group_size,
        stages: cell.strategy.stages,
        public_records: spec.public_records,
        vote_noise_std: None,
        warmup_rounds: cell.strategy.warmup_rounds,
        strategy_settings: cell.strategy.settings.clone().unwrap_or_default(),
        policy: spec.policy.clone(),
        epsilon: cell.epsilon,
        rounds: spec.rounds,
        dropout: 0.0,
        seed: cell.seed,
        no_dp: cell.epsilon.is_none(),
        allow_no_dp: cell.epsilon.is_none(),
        out: out.join("cells").join(folder),
        db: None,
        phase_timeout: 2.0,
        transport: Transport::InProcess,
    };
    let started = Instant::now();
    let summary = Demo::prepare(cfg)?.run(&mut |_, _| {})?;
    Ok(CellResult {
        id: cell.id(),
        strategy: cell.strategy.label(),
        partition: cell.partition.label(),
        epsilon: cell.epsilon,
        seed: cell.seed,
        epsilon_spent: summary.epsilon_spent,
        accuracy: summary.accuracy,
        initial_accuracy: Some(summary.initial_accuracy),
        test_metrics: summary.test_metrics,
        forgetting: summary.forgetting,
        rounds_aborted: summary.rounds_aborted,
        decision: match summary.decision {
            shroud_audit::Decision::Release => "release",
            shroud_audit::Decision::Block => "block",
        }
        .into(),
        wall_seconds: started.elapsed().as_secs_f64(),
        settings: String::new(),
    })
}

/// One row per cell.
pub fn write_csv(results: &[CellResult], path: &Path) -> Result<()> {
    let mut s = String::from(
        "strategy,partition,epsilon,seed,epsilon_spent,accuracy,initial_accuracy,precision,recall,f1,auc,absent_class_accuracy_global,absent_class_accuracy_local,rounds_aborted,decision,wall_seconds\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x}"));
    for r in results {
        let m = r.test_metrics;
        s += &format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.3}\n",
            csv_field(&r.strategy),
            csv_field(&r.partition),
            r.epsilon.map_or("none".into(), |e| e.to_string()),
            r.seed,
            opt(r.epsilon_spent),
            r.accuracy,
            opt(r.initial_accuracy),
            opt(m.map(|m| m.precision)),
            opt(m.map(|m| m.recall)),
            opt(m.map(|m| m.f1)),
            opt(m.map(|m| m.auc)),
            opt(r
                .forgetting
                .as_ref()
                .map(|f| f.absent_class_accuracy_global)),
            opt(r.forgetting.as_ref().map(|f| f.absent_class_accuracy_local)),
            r.rounds_aborted,
            r.decision,
            r.wall_seconds
        );
    }
    std::fs::write(path, s).with_context(|| format!("cannot write {}", path.display()))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Mean and sample sd.
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n.max(1.0);
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Accuracy over the seeds of one strategy, partition and ε.
#[derive(Clone, Debug, Serialize)]
pub struct Aggregate {
    pub strategy: String,
    pub partition: String,
    pub epsilon: Option<f64>,
    pub seeds: usize,
    pub mean: f64,
    pub sd: f64,
    pub min: f64,
    pub max: f64,
    /// Mean and sd of the forgetting figures, where cells have them: the
    /// final model, then the locally trained models, on absent classes.
    pub absent_class_accuracy_global: Option<(f64, f64)>,
    pub absent_class_accuracy_local: Option<(f64, f64)>,
    /// Mean and sd of the test accuracy before the first round.
    pub initial_accuracy: Option<(f64, f64)>,
}

/// Every (partition, strategy, ε) over its seeds, in the spec's order.
pub fn aggregate(spec: &CompareSpec, results: &[CellResult]) -> Vec<Aggregate> {
    let mut out = Vec::new();
    for p in &spec.partitions {
        for s in &spec.strategies {
            for e in &spec.epsilons {
                let cells: Vec<&CellResult> = results
                    .iter()
                    .filter(|r| {
                        r.partition == p.label()
                            && r.strategy == s.label()
                            && r.epsilon == e.budget()
                    })
                    .collect();
                let acc: Vec<f64> = cells.iter().map(|r| r.accuracy).collect();
                let forgetting = |f: fn(&crate::demo::Forgetting) -> f64| {
                    let v: Vec<f64> = cells
                        .iter()
                        .filter_map(|r| r.forgetting.as_ref().map(f))
                        .collect();
                    (!v.is_empty()).then(|| mean_sd(&v))
                };
                if acc.is_empty() {
                    continue;
                }
                let (mean, sd) = mean_sd(&acc);
                out.push(Aggregate {
                    strategy: s.label(),
                    partition: p.label(),
                    epsilon: e.budget(),
                    seeds: acc.len(),
                    mean,
                    sd,
                    min: acc.iter().copied().fold(f64::INFINITY, f64::min),
                    max: acc.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    absent_class_accuracy_global: forgetting(|f| f.absent_class_accuracy_global),
                    absent_class_accuracy_local: forgetting(|f| f.absent_class_accuracy_local),
                    initial_accuracy: {
                        let v: Vec<f64> = cells.iter().filter_map(|r| r.initial_accuracy).collect();
                        (!v.is_empty()).then(|| mean_sd(&v))
                    },
                });
            }
        }
    }
    out
}

/// The spec, every cell and the aggregates, as one JSON document.
pub fn write_json(spec: &CompareSpec, results: &[CellResult], path: &Path) -> Result<()> {
    let doc = serde_json::json!({
        "spec": spec,
        "cells": results,
        "aggregates": aggregate(spec, results),
        "wall_seconds": results.iter().map(|r| r.wall_seconds).sum::<f64>(),
    });
    std::fs::write(path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One self-contained page: accuracy against ε per strategy, one panel per
/// partition, every seed a dot, the mean a line and ± sd a bar; then the
/// table of means.
pub fn write_html(spec: &CompareSpec, results: &[CellResult], path: &Path) -> Result<()> {
    let aggs = aggregate(spec, results);
    // x positions: the budgets ascending, then "no noise".
    let mut budgets: Vec<f64> = spec.epsilons.iter().filter_map(|e| e.budget()).collect();
    budgets.sort_by(f64::total_cmp);
    let has_none = spec.epsilons.iter().any(|e| e.budget().is_none());
    let slots = budgets.len() + usize::from(has_none);
    let slot = |e: Option<f64>| -> usize {
        match e {
            Some(v) => budgets.iter().position(|b| *b == v).unwrap_or(0),
            None => budgets.len(),
        }
    };
    let slot_label = |s: usize| -> String {
        budgets
            .get(s)
            .map_or("no noise".into(), |b| format!("ε {b}"))
    };
    let (lo, hi) = results.iter().fold((1.0f64, 0.0f64), |(lo, hi), r| {
        (lo.min(r.accuracy), hi.max(r.accuracy))
    });
    let (lo, hi) = if results.is_empty() {
        (0.0, 1.0)
    } else {
        (
            (lo * 20.0).floor() / 20.0,
            ((hi * 20.0).ceil() / 20.0).max(lo + 0.05),
        )
    };
    let (w, h, ml, mr, mt, mb) = (380.0, 260.0, 48.0, 12.0, 28.0, 40.0);
    let x = |s: usize| ml + (w - ml - mr) * (s as f64 + 0.5) / slots.max(1) as f64;
    // Clamped to the panel: a spread bar may reach past the data's range.
    let y = |a: f64| mt + (h - mt - mb) * (1.0 - (a.clamp(lo, hi) - lo) / (hi - lo));
    let mut html = String::new();
    let total: f64 = results.iter().map(|r| r.wall_seconds).sum();
    html += &format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>shroud compare: {ds}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:1.5em auto;padding:0 1em;color:#222}}\
         .panels{{display:flex;flex-wrap:wrap;gap:12px}} svg{{background:#fff;border:1px solid #ddd}}\
         table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}\
         th:first-child,td:first-child{{text-align:left}} .legend span{{margin-right:1em}}</style></head><body>\
         <h1>Strategies compared on {ds}</h1>\
         <p>{parties} parties; {cells} cells (strategy × partition × ε × seed), each a whole job in process: secure aggregation, \
         distributed discrete Gaussian noise, ledger and audit, no dropouts. \"no noise\" trains without DP (a reference, never released). \
         Dots are seeds, lines join the means, bars are ± one sd over seeds. Total wall time {total:.0} s.</p>",
        ds = esc(&spec.dataset),
        parties = spec.parties,
        cells = results.len(),
    );
    html += "<p class=\"legend\">";
    for (i, s) in spec.strategies.iter().enumerate() {
        html += &format!(
            "<span><svg width=\"14\" height=\"10\" style=\"border:0\"><rect width=\"14\" height=\"10\" fill=\"{}\"/></svg> {}</span>",
            COLOURS[i % COLOURS.len()],
            esc(&s.label())
        );
    }
    html += "</p><div class=\"panels\">";
    for p in &spec.partitions {
        let pl = p.label();
        html += &format!(
            "<svg class=\"panel\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"accuracy against epsilon, {t}\">\
             <title>Accuracy against ε, partition {t}</title>\
             <text x=\"{cx}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">{t}</text>",
            t = esc(&pl),
            cx = w / 2.0
        );
        // Axes and ticks.
        html += &format!(
            "<line x1=\"{ml}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#444\"/><line x1=\"{ml}\" y1=\"{mt}\" x2=\"{ml}\" y2=\"{b}\" stroke=\"#444\"/>",
            b = h - mb,
            r = w - mr
        );
        for k in 0..=4 {
            let a = lo + (hi - lo) * k as f64 / 4.0;
            html += &format!(
                "<text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\" font-size=\"11\">{a:.2}</text><line x1=\"{ml}\" y1=\"{yy}\" x2=\"{r}\" y2=\"{yy}\" stroke=\"#eee\"/>",
                tx = ml - 4.0,
                ty = y(a) + 4.0,
                yy = y(a),
                r = w - mr
            );
        }
        for s in 0..slots {
            html += &format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{}</text>",
                x(s),
                h - mb + 16.0,
                esc(&slot_label(s))
            );
        }
        html += &format!(
            "<text x=\"12\" y=\"{}\" font-size=\"11\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">test accuracy</text>",
            (mt + h - mb) / 2.0,
            (mt + h - mb) / 2.0
        );
        for (i, s) in spec.strategies.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let sl = s.label();
            // Each strategy a little apart so that bars do not overlap.
            let dx = (i as f64 - (spec.strategies.len() as f64 - 1.0) / 2.0) * 6.0;
            let mut line = Vec::new();
            for a in aggs
                .iter()
                .filter(|a| a.partition == pl && a.strategy == sl)
            {
                let cx = x(slot(a.epsilon)) + dx;
                line.push((cx, y(a.mean)));
                html += &format!(
                    "<line class=\"spread\" x1=\"{cx:.1}\" y1=\"{:.1}\" x2=\"{cx:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-width=\"2\"><title>{}: {:.3} ± {:.3} over {} seeds</title></line>",
                    y(a.mean - a.sd),
                    y(a.mean + a.sd),
                    esc(&sl),
                    a.mean,
                    a.sd,
                    a.seeds
                );
            }
            for r in results
                .iter()
                .filter(|r| r.partition == pl && r.strategy == sl)
            {
                html += &format!(
                    "<circle class=\"seed\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{colour}\" fill-opacity=\"0.45\"><title>{} seed {}: {:.3}</title></circle>",
                    x(slot(r.epsilon)) + dx,
                    y(r.accuracy),
                    esc(&sl),
                    r.seed,
                    r.accuracy
                );
            }
            if !line.is_empty() {
                let pts: Vec<String> = line.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
                html += &format!(
                    "<polyline class=\"mean\" points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"/>",
                    pts.join(" ")
                );
            }
        }
        html += "</svg>";
    }
    html += "</div><h2>Mean test accuracy ± sd over seeds</h2><table><tr><th>partition</th><th>strategy</th>";
    for s in 0..slots {
        html += &format!("<th>{}</th>", esc(&slot_label(s)));
    }
    html += "</tr>";
    for p in &spec.partitions {
        for s in &spec.strategies {
            html += &format!(
                "<tr><td>{}</td><td>{}</td>",
                esc(&p.label()),
                esc(&s.label())
            );
            for k in 0..slots {
                let cell = aggs.iter().find(|a| {
                    a.partition == p.label() && a.strategy == s.label() && slot(a.epsilon) == k
                });
                html += &match cell {
                    Some(a) => format!(
                        "<td>{:.3} ± {:.3}{}</td>",
                        a.mean,
                        a.sd,
                        match (
                            a.absent_class_accuracy_global,
                            a.absent_class_accuracy_local
                        ) {
                            (Some(g), Some(l)) => format!(
                                "<br><small>absent classes: {:.3} ± {:.3} → {:.3} ± {:.3} \
                                 after local training</small>",
                                g.0, g.1, l.0, l.1
                            ),
                            _ => String::new(),
                        }
                    ),
                    None => "<td></td>".into(),
                };
            }
            html += "</tr>";
        }
    }
    html += "</table></body></html>\n";
    std::fs::write(path, html).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `results.csv`, `results.json` and `compare.html` in `out`.
pub fn write_outputs(
    spec: &CompareSpec,
    results: &[CellResult],
    out: &Path,
) -> Result<[PathBuf; 3]> {
    let paths = [
        out.join("results.csv"),
        out.join("results.json"),
        out.join("compare.html"),
    ];
    write_csv(results, &paths[0])?;
    write_json(spec, results, &paths[1])?;
    write_html(spec, results, &paths[2])?;
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
dataset = "wine"
parties = 3
seeds = [1, 2]
epsilons = [8, "none"]
[[strategy]]
name = "fedavg"
[[partition]]
name = "iid"
[[partition]]
name = "dirichlet"
alpha = 0.1
"#;

    #[test]
    fn a_spec_lists_every_cell_once_with_located_errors() {
        let spec = parse_spec(Path::new("s.toml"), SPEC).unwrap();
        let c = cells(&spec);
        // Two partitions × one strategy × two ε × two seeds.
        assert_eq!(c.len(), 8);
        assert_eq!(c[0].id(), "fedavg|iid|8|1");
        assert_eq!(c[3].id(), "fedavg|iid|none|2");
        assert_eq!(c[4].partition.label(), "dirichlet(α=0.1)");
        let err = |t: &str| parse_spec(Path::new("s.toml"), t).unwrap_err().to_string();
        assert!(err(&SPEC.replace("\"none\"", "\"never\"")).contains("s.toml"));
        assert!(err(&SPEC.replace("[8,", "[-1,")).contains("epsilons[0]"));
        assert!(
            err(&SPEC.replace("name = \"fedavg\"", "name = \"fedx\"")).contains("strategy[0].name")
        );
        assert!(err(&SPEC.replace("name = \"iid\"", "name = \"Q\"")).contains("partition[0].name"));
        assert!(err(&SPEC.replace("seeds = [1, 2]", "seeds = [1, 1]")).contains("the same"));
        assert!(err(&SPEC.replace("seeds = [1, 2]", "seeds = []")).contains("`seeds`"));
    }

    #[test]
    fn a_torn_journal_line_is_ignored_and_the_next_starts_afresh() {
        let dir = std::env::temp_dir().join(format!("shroud-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cells.jsonl");
        let _ = std::fs::remove_file(&path);
        let r = CellResult {
            id: "a".into(),
            strategy: "fedavg".into(),
            partition: "iid".into(),
            epsilon: Some(8.0),
            seed: 1,
            epsilon_spent: Some(7.9),
            accuracy: 0.9,
            initial_accuracy: None,
            test_metrics: None,
            forgetting: None,
            rounds_aborted: 0,
            decision: "release".into(),
            wall_seconds: 1.0,
            settings: "s".into(),
        };
        append_journal(&path, &r).unwrap();
        // A kill mid-write leaves half a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"id\":\"b\",\"strat").unwrap();
        assert_eq!(read_journal(&path).unwrap(), vec![r.clone()]);
        let second = CellResult {
            id: "c".into(),
            ..r.clone()
        };
        append_journal(&path, &second).unwrap();
        assert_eq!(read_journal(&path).unwrap(), vec![r, second]);
    }
}
