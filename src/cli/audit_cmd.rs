//! `shroud audit`, `shroud report verify|sign` and `shroud verify-log`.

use std::path::Path;

use anyhow::{bail, Result};
use shroud_audit::report::{AuditReport, Verdict};

use crate::release::{report_from_log, write_report};
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
    let mut report = report_from_log(&ledger, job).map_err(anyhow::Error::msg)?;
    crate::signoff::attach(&ledger, &mut report).map_err(anyhow::Error::msg)?;
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

fn read_report(file: &Path) -> Result<AuditReport> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", file.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not an audit report: {e}", file.display()))
}

pub fn verify(file: &Path, db: &Path) -> Result<()> {
    let report = read_report(file)?;
    let ledger = open(db)?;
    match crate::signoff::verify(&ledger, &report) {
        Ok((seq, approval)) => {
            println!(
                "{}: matches log entry {seq} of {}; decision {:?}; {} sign-off(s) verified",
                file.display(),
                db.display(),
                report.decision,
                report.sign_offs.len()
            );
            println!(
                "{}: {}",
                if approval.approved {
                    "approved"
                } else {
                    "NOT approved"
                },
                approval.reason
            );
            Ok(())
        }
        Err(e) => bail!("{}: {e}", file.display()),
    }
}

pub fn sign(
    file: &Path,
    db: &Path,
    key: &Path,
    reviewer: &str,
    verdict: &str,
    comment: &str,
) -> Result<()> {
    let mut report = read_report(file)?;
    if let Some(why) = crate::keyfile::exposure(key) {
        eprintln!("warning: {why}");
    }
    let seed = crate::keyfile::load(key).map_err(anyhow::Error::msg)?;
    let key = shroud_crypto::IdentityKey::from_seed(&seed);
    let verdict = match verdict {
        "accepted" => Verdict::Accepted,
        _ => Verdict::Rejected,
    };
    let mut ledger = open(db)?;
    let s = crate::signoff::sign(&mut ledger, &mut report, &key, reviewer, verdict, comment)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    // The sign-off is in the log; the report file and its HTML twin are
    // rewritten in place to carry it.
    let html = file.with_extension("html");
    let write = |path: &Path, f: &dyn Fn(std::fs::File) -> std::io::Result<()>| {
        std::fs::File::create(path)
            .and_then(f)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    };
    write(file, &|f| report.write_json(std::io::BufWriter::new(f)))?;
    write(&html, &|f| report.write_html(std::io::BufWriter::new(f)))?;
    println!(
        "{}: signed off by {} ({:?}) at {}; recorded in {}",
        file.display(),
        s.reviewer,
        s.verdict,
        s.signed_at,
        db.display()
    );
    Ok(())
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
