//! The release gate and the compliance report: the audit's figures against
//! the policy's limits, the decision recorded in the tamper-evident log, and
//! the model written out only when the gate passes.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use shroud_audit::gate::{evaluate, AttackFigures, Decision, GateCheck, GateLimits};
use shroud_audit::report::{AuditReport, CohortEntry};

use crate::audit::Findings;
use crate::network::Network;
use crate::policy::{hex, Policy, Unit};
use crate::store::PrivacyLedger;

pub const REPORT_FORMAT: &str = "shroud-audit-report/1";
pub const LOG_KIND: &str = "release-decision";

pub struct ReleaseOutcome {
    pub report: AuditReport,
    pub report_json: PathBuf,
    pub report_html: PathBuf,
    /// The released model, if the gate passed.
    pub model: Option<PathBuf>,
}

/// Days-from-civil inverse: a UTC timestamp without a date library.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub struct ReleaseInputs<'a> {
    pub policy: &'a Policy,
    pub policy_text: String,
    pub job: &'a str,
    pub model: &'a Network,
    pub findings: Findings,
    /// ε this job spent (its own charges, the audit's included).
    pub epsilon_spent: Option<f64>,
    /// The audit's noisy release, as planned.
    pub audit_plan: Option<&'a crate::dp::plan::AuditPlan>,
    /// Each party's noise share, in integer units (from the privacy plan).
    pub noise_std_per_party: f64,
    pub cohort: Vec<CohortEntry>,
    pub out: &'a Path,
}

/// Gates, reports, logs and (on a pass) releases. A blocked model leaves no
/// model file behind.
pub fn gate_and_report(
    r: ReleaseInputs<'_>,
    ledger: &mut PrivacyLedger,
) -> Result<ReleaseOutcome, String> {
    let p = r.policy;
    let no_dp = p.privacy.unit == Unit::None;
    let limits = GateLimits {
        max_auc: p.audit.max_auc,
        max_tpr_at_fpr: p.audit.max_tpr_at_fpr,
        // Default: no empirical bound may exceed what the ledger says this
        // job spent.
        max_epsilon_lower_bound: p
            .audit
            .max_epsilon_lower_bound
            .unwrap_or(r.epsilon_spent.unwrap_or(0.0)),
    };
    let mut figures: Vec<AttackFigures<'_>> = r
        .findings
        .attacks
        .iter()
        .map(|a| {
            // A few hundred canaries make AUC and TPR too noisy to gate on
            // directly; canaries are gated through their ε lower bounds,
            // which account for the sample size. Population attacks come
            // from DP-noised counts and are gated on their lower confidence
            // bounds: blocked when the evidence says a limit is exceeded.
            let population = a.attack != "canary";
            let at_fpr = limits
                .max_tpr_at_fpr
                .filter(|_| population)
                .and_then(|(fpr, _)| a.tpr_at_fpr.iter().find(|t| (t.fpr - fpr).abs() < 1e-12));
            AttackFigures {
                attack: &a.attack,
                auc: population.then(|| a.auc_lower.unwrap_or(a.auc)),
                tpr_at_fpr: at_fpr.map(|t| t.tpr_lower),
                epsilon_lower_bound: a.epsilon.epsilon,
                auc_ceiling: a.auc_lower_ceiling,
                tpr_ceiling: at_fpr.and_then(|t| t.tpr_lower_ceiling),
                epsilon_ceiling: Some(a.epsilon.certifiable_max),
                lower_bounds: population,
            }
        })
        .collect();
    if let Some(c) = &r.findings.canary {
        figures.push(AttackFigures {
            attack: "canary (one-run bound)",
            auc: None,
            tpr_at_fpr: None,
            epsilon_lower_bound: c.epsilon_lower_bound,
            auc_ceiling: None,
            tpr_ceiling: None,
            epsilon_ceiling: Some(c.certifiable_max),
            lower_bounds: false,
        });
    }
    let (mut checks, mut decision) = evaluate(&limits, &figures);
    if no_dp {
        checks.push(GateCheck {
            check: "differential_privacy".into(),
            attack: "-".into(),
            value: 1.0,
            limit: 0.0,
            passed: false,
            margin: -1.0,
            ceiling: None,
            could_fail: true,
        });
        decision = Decision::Block;
    }

    std::fs::create_dir_all(r.out).map_err(|e| format!("{}: {e}", r.out.display()))?;
    let candidate = r.out.join("model.candidate.safetensors");
    r.model
        .save_safetensors(&candidate)
        .map_err(|e| e.to_string())?;
    let bytes = std::fs::read(&candidate).map_err(|e| e.to_string())?;
    let model_sha256 = hex(&Sha256::digest(&bytes));

    let mut report = AuditReport {
        format: REPORT_FORMAT.into(),
        job: r.job.into(),
        consortium: p.consortium.id.clone(),
        created_at: utc_now(),
        model_sha256: Some(model_sha256),
        policy_path: p.source.display().to_string(),
        policy_sha256: p.hash.clone(),
        policy_text: r.policy_text,
        cohort: r.cohort,
        mechanism: if no_dp {
            "none: trained without differential privacy".into()
        } else {
            format!(
                "distributed discrete Gaussian (opendp exact sampler), sum of {} honest shares of std {:.2} integer units, under pairwise-mask secure aggregation",
                p.honest_survivors(),
                r.noise_std_per_party
            )
        },
        unit: format!("{:?}", p.privacy.unit).to_lowercase(),
        accountant: p.privacy.accountant.name().into(),
        epsilon_spent: r.epsilon_spent,
        epsilon_budget: p.privacy.epsilon,
        delta: p.privacy.delta,
        audit_release: r.audit_plan.map(|a| shroud_audit::report::AuditRelease {
            epsilon_alone: a.epsilon_alone,
            budget_share: a.budget_share,
            noise: a
                .blocks
                .iter()
                .map(|n| shroud_audit::report::CountsNoise {
                    block: n.block.clone(),
                    sensitivity: n.sensitivity,
                    noise_std_per_party: n.noise_std_per_party,
                })
                .collect(),
        }),
        confidence: p.audit.confidence,
        rounds: Some(rounds_summary(ledger, r.job, p.privacy.rounds)?),
        utility: r.findings.utility,
        transfer: r.findings.transfer,
        attacks: r.findings.attacks,
        canary: r.findings.canary,
        checks,
        decision,
        log_entry_hash: None,
        sign_offs: Vec::new(),
    };
    let entry = ledger
        .log_append(LOG_KIND, r.job, &report.content_json())
        .map_err(|e| e.to_string())?;
    report.log_entry_hash = Some(entry.hash);

    let model = if decision == Decision::Release {
        let path = r.out.join("model.safetensors");
        std::fs::rename(&candidate, &path).map_err(|e| e.to_string())?;
        Some(path)
    } else {
        let _ = std::fs::remove_file(&candidate);
        let _ = std::fs::remove_file(r.out.join("model.safetensors"));
        None
    };
    let (report_json, report_html) = write_report(&report, r.out)?;
    Ok(ReleaseOutcome {
        report,
        report_json,
        report_html,
        model,
    })
}

/// Training's sums, aborts and dropouts from the job's round records (the
/// audit's own sum, after the last round, left out).
fn rounds_summary(
    ledger: &PrivacyLedger,
    job: &str,
    rounds: u32,
) -> Result<shroud_audit::report::RoundsSummary, String> {
    let records = ledger.rounds(job).map_err(|e| e.to_string())?;
    let training = records.iter().filter(|r| r.round <= rounds);
    let mut s = shroud_audit::report::RoundsSummary {
        rounds,
        ..Default::default()
    };
    for r in training {
        match r.state.as_str() {
            "finished" => {
                s.sums_finished += 1;
                s.dropouts += r.dropped.len() as u32;
            }
            "aborted" => s.sums_aborted += 1,
            _ => {}
        }
    }
    Ok(s)
}

pub fn write_report(report: &AuditReport, out: &Path) -> Result<(PathBuf, PathBuf), String> {
    let json = out.join("audit-report.json");
    let html = out.join("audit-report.html");
    let f = std::fs::File::create(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    report
        .write_json(std::io::BufWriter::new(f))
        .map_err(|e| e.to_string())?;
    let f = std::fs::File::create(&html).map_err(|e| format!("{}: {e}", html.display()))?;
    report
        .write_html(std::io::BufWriter::new(f))
        .map_err(|e| e.to_string())?;
    Ok((json, html))
}

/// The latest release decision of `job` in the log, as a report.
pub fn report_from_log(ledger: &PrivacyLedger, job: &str) -> Result<AuditReport, String> {
    let entry = ledger
        .log_entries()
        .map_err(|e| e.to_string())?
        .into_iter()
        .rfind(|e| e.kind == LOG_KIND && e.job == job)
        .ok_or_else(|| format!("no release decision for job {job} in the log"))?;
    let mut report: AuditReport = serde_json::from_str(&entry.content)
        .map_err(|e| format!("log entry {}: {e}", entry.seq))?;
    report.log_entry_hash = Some(entry.hash);
    Ok(report)
}

/// Checks a report file against the log: its content must be exactly what
/// the entry it names recorded, and the chain must hold.
pub fn verify_report(ledger: &PrivacyLedger, report: &AuditReport) -> Result<i64, String> {
    match ledger.log_verify().map_err(|e| e.to_string())? {
        Ok(_) => {}
        Err(b) => {
            return Err(format!(
                "the log is broken at entry {}: {}",
                b.seq, b.reason
            ))
        }
    }
    let hash = report
        .log_entry_hash
        .as_deref()
        .ok_or("the report names no log entry")?;
    let entry = ledger
        .log_entries()
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|e| e.hash == hash)
        .ok_or_else(|| format!("no log entry has hash {hash}"))?;
    if entry.content != report.content_json() {
        return Err(format!(
            "the report differs from what log entry {} recorded",
            entry.seq
        ));
    }
    Ok(entry.seq)
}
