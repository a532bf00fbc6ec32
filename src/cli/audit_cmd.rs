//! `shroud audit`, `shroud report verify` and `shroud verify-log`.

use std::path::Path;

use anyhow::{bail, Result};
use shroud_audit::report::AuditReport;

use crate::release::{report_from_log, verify_report, write_report};
use crate::store::PrivacyLedger;

fn open(db: &Path) -> Result<PrivacyLedger> {
    if !db.exists() {
        bail!("{}: no such database", db.display());
    }
    Ok(PrivacyLedger::open(db)?)
}

/// Re-renders the report of a job's latest release decision from the log.
pub fn rerender(db: &Path, job: &str, out: &Path) -> Result<()> {
    let ledger = open(db)?;
    let report = report_from_log(&ledger, job).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(out)?;
    let (json, html) = write_report(&report, out).map_err(anyhow::Error::msg)?;
    println!(
        "job {job}: decision {:?}; report {} and {}",
        report.decision,
        html.display(),
        json.display()
    );
    Ok(())
}

pub fn verify(file: &Path, db: &Path) -> Result<()> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", file.display()))?;
    let report: AuditReport = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not an audit report: {e}", file.display()))?;
    let ledger = open(db)?;
    match verify_report(&ledger, &report) {
        Ok(seq) => {
            println!(
                "{}: matches log entry {seq} of {}; decision {:?}",
                file.display(),
                db.display(),
                report.decision
            );
            Ok(())
        }
        Err(e) => bail!("{}: {e}", file.display()),
    }
}

pub fn verify_log(db: &Path) -> Result<()> {
    let ledger = open(db)?;
    match ledger.log_verify()? {
        Ok(n) => {
            println!(
                "{}: the log's {n} entries form an unbroken chain",
                db.display()
            );
            Ok(())
        }
        Err(b) => bail!(
            "{}: first broken entry is {}: {}",
            db.display(),
            b.seq,
            b.reason
        ),
    }
}
