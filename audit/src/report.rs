//! The audit report: one JSON document for machines and one self-contained
//! HTML page for reviewers (no scripts, no external resources; the ROC is
//! inline SVG on log-log axes). Writers are generic over `io::Write`.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::canary::CanaryAudit;
use crate::epsilon::EpsilonBound;
use crate::gate::{Decision, GateCheck};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CohortEntry {
    pub party: u32,
    pub name: String,
    pub records: usize,
    /// Audit sample sizes; `None` where each party drew its sample at home
    /// and only the summed counts reached the coordinator.
    pub audit_members: Option<usize>,
    pub audit_non_members: Option<usize>,
}

/// TPR at one FPR, with its one-sided Clopper–Pearson interval.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TprAtFpr {
    pub fpr: f64,
    pub tpr: f64,
    pub tpr_lower: f64,
    pub tpr_upper: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttackResult {
    pub attack: String,
    /// What the attack assumes and how it was run (seeds included).
    pub parameters: serde_json::Value,
    pub members: u64,
    pub non_members: u64,
    /// Point estimate (from noisy counts: the counts clamped at zero).
    pub auc: f64,
    /// Lower confidence bound on the AUC, for attacks on noisy counts.
    #[serde(default)]
    pub auc_lower: Option<f64>,
    /// The std of the DP noise on each count the attack's figures come
    /// from (summed over parties); `None` for exact scores.
    #[serde(default)]
    pub noise_std: Option<f64>,
    pub tpr_at_fpr: Vec<TprAtFpr>,
    pub epsilon: EpsilonBound,
    /// (fpr, tpr) points, thinned for plotting.
    pub roc: Vec<(f64, f64)>,
}

/// The noise on one attack's counts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CountsNoise {
    pub attack: String,
    /// L2 sensitivity of the attack's histograms to one unit of privacy.
    pub sensitivity: f64,
    /// Std of each party's discrete Gaussian share on every count.
    pub noise_std_per_party: f64,
}

/// The audit's own release: the population attacks' counts, noised and
/// charged like a training round.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditRelease {
    /// ε of this release alone at the report's δ (it is included in
    /// `epsilon_spent`).
    pub epsilon_alone: f64,
    /// Share of the job's budget (zCDP ρ) it was sized to.
    pub budget_share: f64,
    pub noise: Vec<CountsNoise>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditReport {
    pub format: String,
    pub job: String,
    pub consortium: String,
    pub created_at: String,
    pub model_sha256: Option<String>,
    pub policy_path: String,
    pub policy_sha256: String,
    pub policy_text: String,
    pub cohort: Vec<CohortEntry>,
    pub mechanism: String,
    pub unit: String,
    pub accountant: String,
    /// ε this job spent, its audit's counts included (the ledger's charges
    /// for this job, composed).
    pub epsilon_spent: Option<f64>,
    pub epsilon_budget: f64,
    pub delta: f64,
    /// The audit's own noisy release; `None` without DP or without
    /// population attacks.
    #[serde(default)]
    pub audit_release: Option<AuditRelease>,
    pub confidence: f64,
    pub attacks: Vec<AttackResult>,
    pub canary: Option<CanaryAudit>,
    pub checks: Vec<GateCheck>,
    pub decision: Decision,
    /// SHA-256 of the log entry that records this report (set once the
    /// entry is appended; excluded from the content it hashes).
    pub log_entry_hash: Option<String>,
    /// Reviewers' signed verdicts, each also in the log (excluded from the
    /// content the release entry hashes: they come after it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sign_offs: Vec<SignOff>,
}

/// A compliance reviewer's dated verdict on a report, signed with the key
/// the consortium's policy lists for them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SignOff {
    pub reviewer: String,
    /// Hex of the reviewer's ed25519 public key.
    pub public_key: String,
    pub verdict: Verdict,
    pub comment: String,
    /// UTC, RFC 3339.
    pub signed_at: String,
    /// The log entry of the release decision this signs off.
    pub report_entry_hash: String,
    /// Hex of the ed25519 signature over [`SignOff::canonical`].
    pub signature: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accepted,
    Rejected,
}

impl SignOff {
    /// What the signature covers: every field but the signature,
    /// length-prefixed so that no two sign-offs share a form.
    pub fn canonical(&self) -> Vec<u8> {
        let verdict = match self.verdict {
            Verdict::Accepted => "accepted",
            Verdict::Rejected => "rejected",
        };
        let mut m = Vec::new();
        for part in [
            self.reviewer.as_str(),
            self.public_key.as_str(),
            verdict,
            self.comment.as_str(),
            self.signed_at.as_str(),
            self.report_entry_hash.as_str(),
        ] {
            m.extend_from_slice(&(part.len() as u64).to_le_bytes());
            m.extend_from_slice(part.as_bytes());
        }
        m
    }
}

impl AuditReport {
    pub fn write_json<W: Write>(&self, mut w: W) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut w, self).map_err(io::Error::other)?;
        writeln!(w)
    }

    /// The canonical content the log records: the JSON without the log hash.
    pub fn content_json(&self) -> String {
        let mut copy = self.clone();
        copy.log_entry_hash = None;
        copy.sign_offs.clear();
        serde_json::to_string(&copy).expect("reports serialise")
    }

    pub fn write_html<W: Write>(&self, mut w: W) -> io::Result<()> {
        let decision = match self.decision {
            Decision::Release => ("RELEASE", "release"),
            Decision::Block => ("BLOCKED", "block"),
        };
        write!(
            w,
            r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Shroud audit report — {job}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 62em; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }}
table {{ border-collapse: collapse; margin: .5em 0; }} td, th {{ border: 1px solid #ccc; padding: .25em .6em; text-align: left; }}
.decision {{ font-size: 1.6em; font-weight: bold; padding: .4em .8em; display: inline-block; }}
.release {{ background: #e3f6e3; color: #1d5e1d; }} .block {{ background: #fbe3e3; color: #8a1b1b; }}
.pass {{ color: #1d5e1d; }} .fail {{ color: #8a1b1b; font-weight: bold; }}
code, pre {{ font-family: ui-monospace, monospace; font-size: .9em; }} pre {{ background: #f6f6f6; padding: .8em; overflow-x: auto; }}
</style></head><body>
<h1>Shroud membership-inference audit</h1>
<p>Job <code>{job}</code> of consortium <code>{consortium}</code>, {created}.</p>
<p id="decision" class="decision {dclass}">Decision: {dtext}</p>
"#,
            job = esc(&self.job),
            consortium = esc(&self.consortium),
            created = esc(&self.created_at),
            dclass = decision.1,
            dtext = decision.0,
        )?;
        writeln!(w, "<h2>Model and policy</h2><table>")?;
        row(
            &mut w,
            "model SHA-256",
            &self
                .model_sha256
                .clone()
                .unwrap_or_else(|| "(no model file: not released)".into()),
        )?;
        row(&mut w, "policy", &self.policy_path)?;
        row(&mut w, "policy SHA-256", &self.policy_sha256)?;
        row(
            &mut w,
            "log entry SHA-256",
            self.log_entry_hash.as_deref().unwrap_or("(not logged)"),
        )?;
        writeln!(w, "</table>")?;

        writeln!(w, "<h2>Privacy spent</h2><table>")?;
        row(&mut w, "mechanism", &self.mechanism)?;
        row(&mut w, "unit", &self.unit)?;
        row(&mut w, "accountant", &self.accountant)?;
        let spent = self
            .epsilon_spent
            .map_or("none (no DP)".to_string(), |e| format!("{e:.4}"));
        row(&mut w, "ε spent by this job (ledger)", &spent)?;
        row(&mut w, "ε budget", &format!("{}", self.epsilon_budget))?;
        row(&mut w, "δ", &format!("{}", self.delta))?;
        match &self.audit_release {
            Some(a) => {
                let noise: Vec<String> = a
                    .noise
                    .iter()
                    .map(|n| {
                        format!(
                            "{}: σ {} per party (sensitivity {:.3})",
                            n.attack, n.noise_std_per_party, n.sensitivity
                        )
                    })
                    .collect();
                row(
                    &mut w,
                    "this audit's counts",
                    &format!(
                        "DP-noised and charged: ε {:.4} alone ({:.0} % of the budget's ρ), included above; {}",
                        a.epsilon_alone,
                        100.0 * a.budget_share,
                        noise.join("; ")
                    ),
                )?;
            }
            None => row(
                &mut w,
                "this audit's counts",
                if self.epsilon_spent.is_some() {
                    "no population attack: nothing summed"
                } else {
                    "exact (no DP): this job is never released"
                },
            )?,
        }
        writeln!(w, "</table>")?;

        writeln!(w, "<h2>Cohort</h2><table><tr><th>party</th><th>name</th><th>records</th><th>audit members</th><th>audit non-members</th></tr>")?;
        for c in &self.cohort {
            writeln!(
                w,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                c.party,
                esc(&c.name),
                c.records,
                c.audit_members
                    .map_or("kept by the party".to_string(), |n| n.to_string()),
                c.audit_non_members
                    .map_or("kept by the party".to_string(), |n| n.to_string())
            )?;
        }
        writeln!(w, "</table>")?;

        writeln!(w, "<h2>ROC (log-log)</h2>")?;
        self.write_svg(&mut w)?;

        writeln!(
            w,
            "<h2>Attacks</h2><p>Confidence {} for every interval and bound (one-sided Clopper–Pearson; \
             the ε bounds are Bonferroni-corrected over the thresholds tried).</p>",
            self.confidence
        )?;
        writeln!(w, "<table><tr><th>attack</th><th>members / non-members</th><th>AUC</th><th>TPR at FPR (interval)</th><th>ε lower bound</th><th>largest certifiable ε</th><th>parameters</th></tr>")?;
        for a in &self.attacks {
            let tprs: Vec<String> = a
                .tpr_at_fpr
                .iter()
                .map(|t| {
                    format!(
                        "{:.1}%: {:.4} [{:.4}, {:.4}]",
                        100.0 * t.fpr,
                        t.tpr,
                        t.tpr_lower,
                        t.tpr_upper
                    )
                })
                .collect();
            writeln!(
                w,
                "<tr><td>{}</td><td>{} / {}</td><td>{:.4}</td><td>{}</td><td>{:.4}</td><td>{:.3}</td><td><code>{}</code></td></tr>",
                esc(&a.attack),
                a.members,
                a.non_members,
                a.auc,
                tprs.join("<br>"),
                a.epsilon.epsilon,
                a.epsilon.certifiable_max,
                esc(&a.parameters.to_string())
            )?;
        }
        writeln!(w, "</table>")?;
        if let Some(c) = &self.canary {
            writeln!(w, "<h2>Canary audit (one training run)</h2><table>")?;
            row(
                &mut w,
                "canaries (included)",
                &format!("{} ({})", c.canaries, c.included),
            )?;
            row(
                &mut w,
                "guesses (correct)",
                &format!("{} ({})", c.guesses, c.correct),
            )?;
            row(
                &mut w,
                "ε lower bound",
                &format!("{:.4}", c.epsilon_lower_bound),
            )?;
            row(
                &mut w,
                "largest certifiable ε",
                &format!("{:.3}", c.certifiable_max),
            )?;
            writeln!(w, "</table>")?;
        }

        writeln!(w, "<h2>Release gate</h2><table id=\"checks\"><tr><th>check</th><th>attack</th><th>value</th><th>limit</th><th>margin</th><th>result</th></tr>")?;
        for c in &self.checks {
            let (cls, txt) = if c.passed {
                ("pass", "pass")
            } else {
                ("fail", "FAIL")
            };
            writeln!(
                w,
                "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:+.4}</td><td class=\"{cls}\">{txt}</td></tr>",
                esc(&c.check),
                esc(&c.attack),
                c.value,
                c.limit,
                c.margin
            )?;
        }
        writeln!(w, "</table>")?;
        writeln!(w, "<h2>Sign-off</h2>")?;
        if self.sign_offs.is_empty() {
            writeln!(
                w,
                "<p>No reviewer has signed off this report (<code>shroud report sign</code>).</p>"
            )?;
        } else {
            writeln!(
                w,
                "<table><tr><th>reviewer</th><th>verdict</th><th>signed (UTC)</th><th>comment</th></tr>"
            )?;
            for s in &self.sign_offs {
                let (cls, txt) = match s.verdict {
                    Verdict::Accepted => ("pass", "accepted"),
                    Verdict::Rejected => ("fail", "rejected"),
                };
                writeln!(
                    w,
                    "<tr><td>{}</td><td class=\"{cls}\">{txt}</td><td>{}</td><td>{}</td></tr>",
                    esc(&s.reviewer),
                    esc(&s.signed_at),
                    esc(&s.comment)
                )?;
            }
            writeln!(
                w,
                "</table><p>Each sign-off is signed with the reviewer's key and recorded in the \
                 hash-chained log; <code>shroud report verify</code> checks both.</p>"
            )?;
        }
        writeln!(w, "<h2>Policy</h2><pre>{}</pre>", esc(&self.policy_text))?;
        writeln!(w, "</body></html>")
    }

    fn write_svg<W: Write>(&self, w: &mut W) -> io::Result<()> {
        const W: f64 = 480.0;
        const H: f64 = 480.0;
        const PAD: f64 = 50.0;
        const LO: f64 = 1e-4;
        let x =
            |fpr: f64| PAD + (fpr.max(LO).log10() - LO.log10()) / (-LO.log10()) * (W - 2.0 * PAD);
        let y = |tpr: f64| {
            H - PAD - (tpr.max(LO).log10() - LO.log10()) / (-LO.log10()) * (H - 2.0 * PAD)
        };
        writeln!(
            w,
            r#"<svg id="roc" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="ROC curve on log-log axes">"#
        )?;
        writeln!(
            w,
            r##"<rect x="{PAD}" y="{PAD}" width="{}" height="{}" fill="#fff" stroke="#888"/>"##,
            W - 2.0 * PAD,
            H - 2.0 * PAD
        )?;
        for k in 0..=4 {
            let v = 10f64.powi(-k);
            writeln!(
                w,
                r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{v}</text><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{v}</text>"##,
                x(v),
                H - PAD + 16.0,
                PAD - 6.0,
                y(v) + 4.0
            )?;
        }
        writeln!(
            w,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">false-positive rate</text>"#,
            W / 2.0,
            H - 10.0
        )?;
        writeln!(
            w,
            r#"<text x="14" y="{}" font-size="12" text-anchor="middle" transform="rotate(-90 14 {})">true-positive rate</text>"#,
            H / 2.0,
            H / 2.0
        )?;
        // Chance: TPR = FPR.
        writeln!(
            w,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#aaa" stroke-dasharray="4 3"/>"##,
            x(LO),
            y(LO),
            x(1.0),
            y(1.0)
        )?;
        let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
        for (i, a) in self.attacks.iter().enumerate() {
            let pts: Vec<String> = a
                .roc
                .iter()
                .filter(|(f, t)| *f > 0.0 || *t > 0.0)
                .map(|(f, t)| format!("{:.1},{:.1}", x(*f), y(*t)))
                .collect();
            let c = colours[i % colours.len()];
            writeln!(
                w,
                r#"<polyline class="roc-curve" data-attack="{}" fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
                esc(&a.attack),
                pts.join(" ")
            )?;
            writeln!(
                w,
                r#"<text x="{:.1}" y="{:.1}" font-size="12" fill="{c}">{} (AUC {:.3})</text>"#,
                PAD + 10.0,
                PAD + 18.0 + 16.0 * i as f64,
                esc(&a.attack),
                a.auc
            )?;
        }
        writeln!(w, "</svg>")
    }
}

fn row<W: Write>(w: &mut W, k: &str, v: &str) -> io::Result<()> {
    writeln!(
        w,
        "<tr><th>{}</th><td><code>{}</code></td></tr>",
        esc(k),
        esc(v)
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Thins a ROC to at most `max` points for plotting, keeping the ends.
pub fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    let step = (points.len() - 1) as f64 / (max - 1) as f64;
    (0..max)
        .map(|i| points[((i as f64) * step).round() as usize])
        .collect()
}
