//! The audit report: one JSON document for machines and one self-contained
//! HTML page for reviewers (no scripts, no external resources; the ROC is
//! inline SVG on log-log axes). Writers are generic over `io::Write`.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::canary::CanaryAudit;
use crate::epsilon::EpsilonBound;
use crate::gate::{Decision, GateCheck};
use crate::utility::{Accuracy, TransferCounts, Utility};

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
    /// The lower bound a perfect attack would reach here (the most this
    /// figure could show with these samples and this noise).
    #[serde(default)]
    pub tpr_lower_ceiling: Option<f64>,
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
    /// The AUC lower bound a perfect attack would reach.
    #[serde(default)]
    pub auc_lower_ceiling: Option<f64>,
    /// The std of the DP noise on each count the attack's figures come
    /// from (summed over parties); `None` for exact scores.
    #[serde(default)]
    pub noise_std: Option<f64>,
    pub tpr_at_fpr: Vec<TprAtFpr>,
    pub epsilon: EpsilonBound,
    /// (fpr, tpr) points, thinned for plotting.
    pub roc: Vec<(f64, f64)>,
    /// Confidence box at each threshold: (FPR lower, FPR upper, TPR lower,
    /// TPR upper); empty for exact scores.
    #[serde(default)]
    pub band: Vec<(f64, f64, f64, f64)>,
    /// The attack's scores as binned (noisy) counts, members and
    /// non-members apart; `None` for exact scores.
    #[serde(default)]
    pub histogram: Option<ScoreHistogram>,
}

/// Binned scores of one attack: each bin's lower edge and its counts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScoreHistogram {
    pub lower_edges: Vec<f64>,
    pub members: Vec<i64>,
    pub non_members: Vec<i64>,
}

/// How training went, from the job's round records.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RoundsSummary {
    pub rounds: u32,
    /// Secure sums of training that finished, and that aborted (an aborted
    /// sum still costs its charge once its inputs were in).
    pub sums_finished: u32,
    pub sums_aborted: u32,
    /// Party dropouts survived across the finished sums.
    pub dropouts: u32,
}

/// The noise on one block of the audit's counts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CountsNoise {
    /// The population attack whose histograms the block holds, or
    /// "utility".
    #[serde(alias = "attack")]
    pub block: String,
    /// L2 sensitivity of the block to one unit of privacy.
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
    /// Training rounds, sums and dropouts; `None` in reports written before.
    #[serde(default)]
    pub rounds: Option<RoundsSummary>,
    /// The released model's accuracy on the audit's members and held-out
    /// non-members, from DP-noised counts; `None` in reports written before.
    #[serde(default)]
    pub utility: Option<Utility>,
    /// Transfer: the base and each party's fine-tuned model on the parties'
    /// held-out records, from DP-noised confusion counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferCounts>,
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
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 62em; padding: 0 1em; color: #222; }}
td, th {{ overflow-wrap: anywhere; }} svg {{ max-width: 100%; height: auto; }}
.figs {{ display: flex; flex-wrap: wrap; gap: 1em; }} .note {{ color: #555; font-size: .92em; }}
.flag {{ color: #8a5a00; font-weight: bold; }} abbr, [title] {{ text-decoration: underline dotted; cursor: help; }}
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
<p id="reason">{reason}</p>
<p class="note">Every count in this report that comes from the parties' records — the attacks' score
histograms, the utility counts and everything computed from them — is itself differentially private: each party noised its
counts before the secure sum, and that release is charged to the budget below. Hover over a heading or
a column for what it means.</p>
"#,
            job = esc(&self.job),
            consortium = esc(&self.consortium),
            created = esc(&self.created_at),
            dclass = decision.1,
            dtext = decision.0,
            reason = esc(&self.reason()),
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
                            n.block, n.noise_std_per_party, n.sensitivity
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

        if let Some(r) = &self.rounds {
            writeln!(
                w,
                "<h2 title=\"From the job's round records in the coordinator's store\">Training</h2><table>"
            )?;
            row(&mut w, "rounds", &r.rounds.to_string())?;
            row(
                &mut w,
                "secure sums finished / aborted",
                &format!("{} / {}", r.sums_finished, r.sums_aborted),
            )?;
            row(&mut w, "party dropouts survived", &r.dropouts.to_string())?;
            writeln!(w, "</table>")?;
        }
        if let Some(u) = &self.utility {
            self.write_utility(&mut w, u)?;
        }
        if let Some(t) = &self.transfer {
            self.write_transfer(&mut w, t)?;
        }

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

        writeln!(
            w,
            "<h2 title=\"How often an attack flags a member (true-positive rate) against how often it \
             wrongly flags a non-member (false-positive rate), over every threshold\">ROC curves</h2>\
             <p class=\"note\">Shaded: the confidence boxes of the attacks on noisy counts. Dashed grey: \
             chance. Red dotted: the most any attack can reach under the ε spent, \
             TPR = e<sup>ε</sup>·FPR + δ; a curve above it (beyond its box) would contradict the claim.</p>\
             <div class=\"figs\">"
        )?;
        self.write_roc_svg(&mut w, false)?;
        self.write_roc_svg(&mut w, true)?;
        writeln!(w, "</div>")?;
        self.write_histograms(&mut w)?;

        writeln!(
            w,
            "<h2>Attacks</h2><p>Confidence {} for every interval and bound (one-sided Clopper–Pearson; \
             the ε bounds are Bonferroni-corrected over the thresholds tried).</p>",
            self.confidence
        )?;
        writeln!(w, "<table><tr><th>attack</th><th title=\"Audit records trained on / held out (noisy totals for attacks on noisy counts)\">members / non-members</th><th title=\"Area under the ROC: 0.5 is chance, 1 a perfect attack\">AUC</th><th title=\"Share of members flagged when this share of non-members is flagged, with its confidence interval\">TPR at FPR (interval)</th><th title=\"The ε this attack proves, at the stated confidence\">ε lower bound</th><th title=\"The most a perfect attack could prove with these samples: a bound that could never exceed the limit proves nothing\">largest certifiable ε</th></tr>")?;
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
                "<tr><td>{}</td><td>{} / {}</td><td>{:.4}</td><td>{}</td><td>{:.4}</td><td>{:.3}</td></tr>",
                esc(&a.attack),
                a.members,
                a.non_members,
                a.auc,
                tprs.join("<br>"),
                a.epsilon.epsilon,
                a.epsilon.certifiable_max,
            )?;
        }
        writeln!(w, "</table>")?;
        writeln!(
            w,
            "<h2 title=\"How each attack was run: enough to reproduce it\">Attack parameters</h2>"
        )?;
        for a in &self.attacks {
            writeln!(
                w,
                "<table class=\"params\"><tr><th colspan=\"2\">{}</th></tr>",
                esc(&a.attack)
            )?;
            match &a.parameters {
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        let v = match v {
                            serde_json::Value::String(t) => t.clone(),
                            other => other.to_string(),
                        };
                        writeln!(w, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v))?;
                    }
                }
                other => writeln!(
                    w,
                    "<tr><td colspan=\"2\">{}</td></tr>",
                    esc(&other.to_string())
                )?,
            }
            writeln!(w, "</table>")?;
        }
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
            row(&mut w, "δ of the bound", &format!("{}", c.delta))?;
            writeln!(
                w,
                "</table><p class=\"note\">Gradient canaries ride every training sum as records of \
                 their own; the bound is Steinke, Nasr and Jagielski's (2023) with its δ term, at \
                 confidence {}. If the largest certifiable ε does not exceed the ε spent, this check \
                 could not have failed.</p>",
                c.confidence
            )?;
        }

        writeln!(w, "<h2 title=\"Each figure against the policy's limit; figures from noisy counts are lower confidence bounds, so a check fails only when the evidence says the limit is exceeded\">Release gate</h2><table id=\"checks\"><tr><th>check</th><th>attack</th><th>value</th><th>limit</th><th>margin</th><th title=\"What a perfect attack would show with these samples and this noise\">ceiling</th><th>result</th></tr>")?;
        for c in &self.checks {
            let (cls, txt) = match (c.passed, c.could_fail) {
                (false, _) => ("fail", "FAIL"),
                (true, true) => ("pass", "pass"),
                (true, false) => ("flag", "pass — could not have failed"),
            };
            writeln!(
                w,
                "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:+.4}</td><td>{}</td><td class=\"{cls}\">{txt}</td></tr>",
                esc(&c.check),
                esc(&c.attack),
                c.value,
                c.limit,
                c.margin,
                c.ceiling.map_or("-".to_string(), |v| format!("{v:.4}")),
            )?;
        }
        writeln!(w, "</table>")?;
        let blind = self.checks.iter().filter(|c| !c.could_fail).count();
        if blind > 0 {
            writeln!(
                w,
                "<p class=\"flag\">{blind} of {} checks could not have failed: even a perfect attack \
                 would stay within their limits with these samples and this noise. They pass \
                 without evidence; weigh the others.</p>",
                self.checks.len()
            )?;
        }
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

    /// The decision's reason in one sentence.
    pub fn reason(&self) -> String {
        let failed: Vec<&GateCheck> = self.checks.iter().filter(|c| !c.passed).collect();
        match failed.first() {
            Some(c) => format!(
                "Blocked because {} of the {} attack is {:.4}, beyond the policy's limit {:.4}{}.",
                c.check.replace('_', " "),
                c.attack,
                c.value,
                c.limit,
                match failed.len() {
                    1 => String::new(),
                    n => format!(
                        " (and {} more check{} failed)",
                        n - 1,
                        if n == 2 { "" } else { "s" }
                    ),
                }
            ),
            None => {
                let blind = self.checks.iter().filter(|c| !c.could_fail).count();
                format!(
                    "Released because all {} gate checks passed{}.",
                    self.checks.len(),
                    match blind {
                        0 => String::new(),
                        n => format!(
                            "; {n} of them could not have failed with these samples and this noise"
                        ),
                    }
                )
            }
        }
    }

    fn write_transfer<W: Write>(&self, w: &mut W, t: &TransferCounts) -> io::Result<()> {
        writeln!(
            w,
            "<h2 title=\"Each party fine-tuned the released base model at home with DP-SGD; the \
             fine-tuned models never left the parties. Each party counted how the base and its \
             fine-tuned model classify its held-out audit records; only the DP-noised sum of \
             those counts left the parties\">Transfer: base and fine-tuned</h2>\
             <p>Point estimates from counts that carry DP noise (std {:.2} per count, summed over \
             the parties); negative noisy counts read as 0. The positive class is class 0.</p>\
             <table id=\"transfer\"><tr><th>model</th><th>records</th><th>accuracy</th>\
             <th>precision</th><th>recall</th><th>F1</th></tr>",
            t.noise_std
        )?;
        let cell = |v: &serde_json::Value| match v.as_f64() {
            Some(x) => format!("{:.1} %", 100.0 * x),
            None => "—".into(),
        };
        for (name, m) in [
            ("base (released)", &t.base),
            ("fine-tuned (kept at home)", &t.fine_tuned),
        ] {
            let f = TransferCounts::figures(m, t.classes, 0);
            writeln!(
                w,
                "<tr><td>{name}</td><td>≈ {:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                f["records"].as_f64().unwrap_or(0.0),
                cell(&f["accuracy"]),
                cell(&f["precision"]),
                cell(&f["recall"]),
                cell(&f["f1"]),
            )?;
        }
        writeln!(w, "</table>")
    }

    /// One ROC plot: linear axes, or log-log down to 10⁻⁴.
    fn write_utility<W: Write>(&self, w: &mut W, u: &Utility) -> io::Result<()> {
        writeln!(
            w,
            "<h2 title=\"How well the released model classifies. Each party counted, among its audit \
             sample, the records the model gets right and wrong; only the DP-noised sum of those \
             counts left the parties\">Utility</h2>\
             <p>Intervals hold jointly at confidence {} and include the DP noise (std {:.2} per \
             count).</p><table id=\"utility\"><tr><th>figure</th><th>estimate</th>\
             <th>interval</th><th>records</th></tr>",
            self.confidence, u.noise_std
        )?;
        let pct = |x: f64| format!("{:.1} %", 100.0 * x);
        let acc = |w: &mut W, name: &str, title: &str, a: &Accuracy| {
            writeln!(
                w,
                "<tr><td title=\"{}\">{}</td><td>{}</td><td>{} – {}</td><td>≈ {}</td></tr>",
                esc(title),
                name,
                pct(a.estimate),
                pct(a.lower),
                pct(a.upper),
                a.records
            )
        };
        acc(
            w,
            "test accuracy",
            "On the audit's non-members: records no party trained on",
            &u.test,
        )?;
        acc(
            w,
            "train accuracy",
            "On the audit's members: records the model trained on",
            &u.train,
        )?;
        writeln!(
            w,
            "<tr><td title=\"Train minus test accuracy: how much better the model does on records \
             it saw; a large gap is what membership inference feeds on\">train/test gap</td>\
             <td>{:+.1} pt</td><td>{:+.1} – {:+.1} pt</td><td></td></tr></table>",
            100.0 * u.gap,
            100.0 * u.gap_lower,
            100.0 * u.gap_upper
        )
    }

    fn write_roc_svg<W: Write>(&self, w: &mut W, log: bool) -> io::Result<()> {
        const W: f64 = 420.0;
        const H: f64 = 420.0;
        const PAD: f64 = 50.0;
        const LO: f64 = 1e-4;
        let scale = |v: f64| {
            if log {
                (v.max(LO).log10() - LO.log10()) / (-LO.log10())
            } else {
                v.clamp(0.0, 1.0)
            }
        };
        let x = |fpr: f64| PAD + scale(fpr) * (W - 2.0 * PAD);
        let y = |tpr: f64| H - PAD - scale(tpr) * (H - 2.0 * PAD);
        let (id, label) = if log {
            ("roc-log", "ROC curves on log-log axes")
        } else {
            ("roc", "ROC curves on linear axes")
        };
        writeln!(
            w,
            r#"<svg id="{id}" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{label}"><title>{label}</title>"#
        )?;
        writeln!(
            w,
            r##"<rect x="{PAD}" y="{PAD}" width="{}" height="{}" fill="#fff" stroke="#888"/>"##,
            W - 2.0 * PAD,
            H - 2.0 * PAD
        )?;
        let ticks: Vec<f64> = if log {
            (0..=4).map(|k| 10f64.powi(-k)).collect()
        } else {
            (0..=4).map(|k| f64::from(k) / 4.0).collect()
        };
        for v in ticks {
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
            r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">false-positive rate{}</text>"#,
            W / 2.0,
            H - 10.0,
            if log { " (log)" } else { "" }
        )?;
        writeln!(
            w,
            r#"<text x="14" y="{}" font-size="12" text-anchor="middle" transform="rotate(-90 14 {})">true-positive rate{}</text>"#,
            H / 2.0,
            H / 2.0,
            if log { " (log)" } else { "" }
        )?;
        // Sampled finely on log axes, where the curves live at small FPR.
        let grid: Vec<f64> = (0..=200)
            .map(|i| {
                let t = f64::from(i) / 200.0;
                if log {
                    10f64.powf(LO.log10() * (1.0 - t))
                } else {
                    t
                }
            })
            .collect();
        let line = |f: &dyn Fn(f64) -> f64| -> String {
            grid.iter()
                .map(|&v| format!("{:.1},{:.1}", x(v), y(f(v).min(1.0))))
                .collect::<Vec<_>>()
                .join(" ")
        };
        writeln!(
            w,
            r##"<polyline fill="none" stroke="#aaa" stroke-dasharray="4 3" points="{}"><title>chance: TPR = FPR</title></polyline>"##,
            line(&|v| v)
        )?;
        if let Some(eps) = self.epsilon_spent {
            let delta = self.delta;
            writeln!(
                w,
                r##"<polyline class="dp-bound" fill="none" stroke="#c00" stroke-width="1.5" stroke-dasharray="2 3" points="{}"><title>DP bound at ε = {eps:.3}, δ = {delta}: TPR ≤ e^ε·FPR + δ</title></polyline>"##,
                line(&|v| eps.exp() * v + delta)
            )?;
        }
        let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
        for (i, a) in self.attacks.iter().enumerate() {
            let c = colours[i % colours.len()];
            for &(f_lo, f_hi, t_lo, t_hi) in &a.band {
                writeln!(
                    w,
                    r#"<rect class="roc-band" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{c}" fill-opacity="0.08"/>"#,
                    x(f_lo),
                    y(t_hi),
                    (x(f_hi) - x(f_lo)).max(0.5),
                    (y(t_lo) - y(t_hi)).max(0.5)
                )?;
            }
            let pts: Vec<String> = a
                .roc
                .iter()
                .filter(|(f, t)| !log || *f > 0.0 || *t > 0.0)
                .map(|(f, t)| format!("{:.1},{:.1}", x(*f), y(*t)))
                .collect();
            writeln!(
                w,
                r#"<polyline class="roc-curve" data-attack="{a}" fill="none" stroke="{c}" stroke-width="2" points="{}"><title>{a}: AUC {auc:.3}</title></polyline>"#,
                pts.join(" "),
                a = esc(&a.attack),
                auc = a.auc,
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

    /// Members' and non-members' score histograms of every attack on
    /// counts: the noisy counts as summed, clamped at zero for drawing.
    fn write_histograms<W: Write>(&self, w: &mut W) -> io::Result<()> {
        let with: Vec<(&AttackResult, &ScoreHistogram)> = self
            .attacks
            .iter()
            .filter_map(|a| a.histogram.as_ref().map(|h| (a, h)))
            .collect();
        if with.is_empty() {
            return Ok(());
        }
        writeln!(
            w,
            "<h2 title=\"How the attack's scores of members (trained on) and non-members (held out) \
             are spread: the further apart, the more the model gives away\">Score histograms</h2>\
             <p class=\"note\">Blue: members; orange: non-members. Noisy counts (negative ones drawn \
             as zero); the higher the score, the more the attack believes a record was trained on.</p>\
             <div class=\"figs\">"
        )?;
        const W: f64 = 420.0;
        const H: f64 = 220.0;
        const PAD: f64 = 40.0;
        for (a, h) in with {
            let bins = h.members.len().max(1);
            let top = h
                .members
                .iter()
                .chain(&h.non_members)
                .copied()
                .max()
                .unwrap_or(1)
                .max(1) as f64;
            let bw = (W - 2.0 * PAD) / bins as f64;
            writeln!(
                w,
                r#"<svg class="histogram" data-attack="{a}" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{a} score histogram"><title>{a}: score histogram</title>"#,
                a = esc(&a.attack)
            )?;
            for (k, (m, n)) in h.members.iter().zip(&h.non_members).enumerate() {
                for (j, (v, colour, who)) in
                    [(m, "#1f77b4", "members"), (n, "#ff7f0e", "non-members")]
                        .into_iter()
                        .enumerate()
                {
                    let hgt = (*v).max(0) as f64 / top * (H - 2.0 * PAD);
                    writeln!(
                        w,
                        r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}" fill-opacity="0.8"><title>{who}, score ≥ {:.2}: {v} (noisy)</title></rect>"#,
                        PAD + bw * k as f64 + j as f64 * bw / 2.0,
                        H - PAD - hgt,
                        bw / 2.0,
                        hgt,
                        h.lower_edges.get(k).copied().unwrap_or(0.0),
                    )?;
                }
            }
            writeln!(
                w,
                r##"<line x1="{PAD}" y1="{y}" x2="{x2}" y2="{y}" stroke="#888"/><text x="{}" y="{}" font-size="12" text-anchor="middle">{} score</text><text x="{PAD}" y="{}" font-size="11">{top:.0}</text></svg>"##,
                W / 2.0,
                H - 10.0,
                esc(&a.attack),
                PAD - 6.0,
                y = H - PAD,
                x2 = W - PAD,
            )?;
        }
        writeln!(w, "</div>")
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
