//! `shroud budget show`.

use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::store::ledger::{ChargeRecord, Spent};
use crate::store::PrivacyLedger;

#[derive(Serialize)]
struct BudgetReport {
    db: String,
    consortia: Vec<Spent>,
    charges: Vec<ChargeRecord>,
}

pub fn show(db: &Path, json: bool) -> Result<()> {
    if !db.exists() {
        bail!("{}: no such database", db.display());
    }
    let ledger = PrivacyLedger::open(db)?;
    let consortia = ledger
        .consortia()?
        .iter()
        .map(|c| ledger.spent(c))
        .collect::<Result<Vec<_>, _>>()?;
    let charges = ledger.charges(None)?;
    let report = BudgetReport {
        db: db.display().to_string(),
        consortia,
        charges,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if report.consortia.is_empty() {
        println!("{}: no budgets recorded", report.db);
    }
    for s in &report.consortia {
        println!(
            "{}: spent ε = {:.4} of {} at δ = {} ({}), {:.4} remaining; {} charges over {} jobs",
            s.consortium,
            s.epsilon,
            s.budget,
            s.delta,
            s.accountant,
            s.remaining,
            s.charges,
            s.jobs
        );
    }
    if !report.charges.is_empty() {
        println!(
            "{:>6} {:<20} {:>6} {:>5} {:<8} {:>12} {:>10} {:>9}  at",
            "id", "job", "round", "task", "kind", "rho", "ε after", "released"
        );
        for c in &report.charges {
            println!(
                "{:>6} {:<20} {:>6} {:>5} {:<8} {:>12.6} {:>10.4} {:>9}  {}",
                c.id,
                c.job,
                c.round,
                c.task,
                c.kind.name(),
                c.rho,
                c.epsilon_after,
                c.released,
                c.created_at
            );
        }
    }
    Ok(())
}
