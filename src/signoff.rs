//! Reviewers' sign-off of audit reports. A compliance reviewer listed in
//! the policy signs a dated verdict (accepted or rejected, with a comment)
//! on a report's release decision; the sign-off goes into the hash-chained
//! log and the report. A released model is *approved* once no listed
//! reviewer has rejected it and, when the policy requires sign-off, one has
//! accepted it — judged from the log, so a report file that leaves a
//! rejection out changes nothing.

use std::path::Path;

use shroud_audit::gate::Decision;
use shroud_audit::report::{AuditReport, SignOff, Verdict};
use shroud_crypto::identity::Signature;
use shroud_crypto::{IdentityKey, IdentityPublicKey};

use crate::policy::{hex, unhex, Policy, Reviewer};
use crate::release::verify_report;
use crate::store::PrivacyLedger;

/// The log's kind for a sign-off entry.
pub const LOG_KIND: &str = "report-sign-off";

/// Longest comment a sign-off carries.
pub const MAX_COMMENT: usize = 4000;

/// Whether a report's model may be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    pub approved: bool,
    pub reason: String,
}

/// The policy the report's job ran under (already checked against the log
/// by [`verify_report`]), for its reviewers and sign-off rule.
fn policy_of(report: &AuditReport) -> Result<Policy, String> {
    Policy::parse(Path::new(&report.policy_path), &report.policy_text)
        .map_err(|e| format!("the report's policy does not parse: {e}"))
}

fn listed<'p>(policy: &'p Policy, reviewer: &str) -> Result<&'p Reviewer, String> {
    policy
        .reviewers
        .iter()
        .find(|r| r.id == reviewer)
        .ok_or_else(|| {
            let ids: Vec<&str> = policy.reviewers.iter().map(|r| r.id.as_str()).collect();
            format!(
                "`{}` is not a reviewer the job's policy lists (it lists: {})",
                reviewer.escape_debug(),
                if ids.is_empty() {
                    "none".to_string()
                } else {
                    ids.join(", ")
                }
            )
        })
}

/// Signs `report` off as `reviewer` with `key`: checks the report against
/// the log, that the policy lists the reviewer with this key, then appends
/// the signed sign-off to the log and to the report.
pub fn sign(
    ledger: &mut PrivacyLedger,
    report: &mut AuditReport,
    key: &IdentityKey,
    reviewer: &str,
    verdict: Verdict,
    comment: &str,
) -> Result<SignOff, String> {
    verify_report(ledger, report)?;
    if comment.len() > MAX_COMMENT {
        return Err(format!(
            "the comment is {} bytes; at most {MAX_COMMENT}",
            comment.len()
        ));
    }
    let policy = policy_of(report)?;
    let entry = listed(&policy, reviewer)?;
    let public = hex(&key.public().to_bytes());
    if public != entry.identity_key {
        return Err(format!(
            "this key is not the one the policy lists for reviewer `{}`",
            reviewer.escape_debug()
        ));
    }
    let mut s = SignOff {
        reviewer: reviewer.to_string(),
        public_key: public,
        verdict,
        comment: comment.to_string(),
        signed_at: ledger.clock().map_err(|e| e.to_string())?,
        report_entry_hash: report
            .log_entry_hash
            .clone()
            .ok_or("the report names no log entry")?,
        signature: String::new(),
    };
    s.signature = hex(&key.sign_sign_off(&s.canonical()).to_bytes());
    let content = serde_json::to_string(&s).expect("sign-offs serialise");
    ledger
        .log_append(LOG_KIND, &report.job, &content)
        .map_err(|e| e.to_string())?;
    report.sign_offs.push(s.clone());
    Ok(s)
}

/// A sign-off's signature, under the key the policy lists for its reviewer.
fn check_signature(policy: &Policy, s: &SignOff) -> Result<(), String> {
    let entry = listed(policy, &s.reviewer)?;
    if s.public_key != entry.identity_key {
        return Err(format!(
            "the sign-off by `{}` names a key the policy does not list for them",
            s.reviewer.escape_debug()
        ));
    }
    let key = unhex(&entry.identity_key)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| IdentityPublicKey::from_bytes(&b).ok())
        .ok_or("the policy's reviewer key is not valid")?;
    let sig = unhex(&s.signature)
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(Signature::from_bytes)
        .ok_or_else(|| format!("the sign-off by `{}` has a malformed signature", s.reviewer))?;
    if !key.verify_sign_off(&s.canonical(), &sig) {
        return Err(format!(
            "the sign-off by `{}` dated {} does not verify: it was altered or not signed by them",
            s.reviewer.escape_debug(),
            s.signed_at.escape_debug()
        ));
    }
    Ok(())
}

/// The sign-offs the log holds for the release decision `entry_hash`, each
/// checked.
fn logged(
    ledger: &PrivacyLedger,
    policy: &Policy,
    entry_hash: &str,
) -> Result<Vec<SignOff>, String> {
    let mut out = Vec::new();
    for e in ledger.log_entries().map_err(|e| e.to_string())? {
        if e.kind != LOG_KIND {
            continue;
        }
        let s: SignOff = serde_json::from_str(&e.content)
            .map_err(|err| format!("log entry {}: not a sign-off: {err}", e.seq))?;
        if s.report_entry_hash == entry_hash {
            check_signature(policy, &s).map_err(|err| format!("log entry {}: {err}", e.seq))?;
            out.push(s);
        }
    }
    Ok(out)
}

/// Checks a report with its sign-offs against the log — the report as
/// [`verify_report`] does, every sign-off's signature and its log entry —
/// and says whether its model is approved. Returns the report's log entry.
pub fn verify(ledger: &PrivacyLedger, report: &AuditReport) -> Result<(i64, Approval), String> {
    let seq = verify_report(ledger, report)?;
    let policy = policy_of(report)?;
    let entry_hash = report.log_entry_hash.as_deref().unwrap_or_default();
    for s in &report.sign_offs {
        check_signature(&policy, s)?;
        if s.report_entry_hash != entry_hash {
            return Err(format!(
                "the sign-off by `{}` is for another report",
                s.reviewer.escape_debug()
            ));
        }
    }
    let logged = logged(ledger, &policy, entry_hash)?;
    if let Some(s) = report.sign_offs.iter().find(|s| !logged.contains(s)) {
        return Err(format!(
            "the sign-off by `{}` dated {} is not in the log",
            s.reviewer.escape_debug(),
            s.signed_at.escape_debug()
        ));
    }
    Ok((seq, approval(report, &policy, &logged)))
}

fn approval(report: &AuditReport, policy: &Policy, logged: &[SignOff]) -> Approval {
    let no = |reason: String| Approval {
        approved: false,
        reason,
    };
    if report.decision != Decision::Release {
        return no("the release gate blocked the model".into());
    }
    if let Some(r) = logged.iter().find(|s| s.verdict == Verdict::Rejected) {
        return no(format!(
            "rejected by `{}` on {}: {}",
            r.reviewer, r.signed_at, r.comment
        ));
    }
    let accepted: Vec<&str> = logged
        .iter()
        .filter(|s| s.verdict == Verdict::Accepted)
        .map(|s| s.reviewer.as_str())
        .collect();
    if policy.audit.require_sign_off && accepted.is_empty() {
        let ids: Vec<&str> = policy.reviewers.iter().map(|r| r.id.as_str()).collect();
        return no(format!(
            "the policy requires a sign-off; none yet by a listed reviewer ({})",
            ids.join(", ")
        ));
    }
    Approval {
        approved: true,
        reason: if accepted.is_empty() {
            "released by the gate; the policy requires no sign-off".into()
        } else {
            format!(
                "released by the gate and accepted by {}",
                accepted.join(", ")
            )
        },
    }
}

/// Adds to `report` the sign-offs the log holds for it (a report rebuilt
/// from the log).
pub fn attach(ledger: &PrivacyLedger, report: &mut AuditReport) -> Result<(), String> {
    let policy = policy_of(report)?;
    let entry = report.log_entry_hash.clone().unwrap_or_default();
    report.sign_offs = logged(ledger, &policy, &entry)?;
    Ok(())
}
