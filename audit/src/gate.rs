//! The release gate: the audit's figures against the policy's limits. Any
//! empirical ε lower bound above the ε the ledger says was spent is a
//! defect in the privacy machinery, and blocks release like any breach.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GateLimits {
    pub max_auc: f64,
    /// `(fpr, max tpr)`.
    pub max_tpr_at_fpr: Option<(f64, f64)>,
    /// Defaults to the ε spent.
    pub max_epsilon_lower_bound: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GateCheck {
    pub check: String,
    pub attack: String,
    pub value: f64,
    pub limit: f64,
    pub passed: bool,
    /// `limit − value`: how far inside (positive) or beyond (negative).
    pub margin: f64,
    /// The most this figure could show with these samples and this noise
    /// (a perfect attack), when known.
    #[serde(default)]
    pub ceiling: Option<f64>,
    /// False when even a perfect attack stays within the limit: the check
    /// passed because it could not have failed, and proves nothing.
    #[serde(default = "could_fail_default")]
    pub could_fail: bool,
}

fn could_fail_default() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Release,
    Block,
}

/// Figures of one attack that the gate looks at.
pub struct AttackFigures<'a> {
    pub attack: &'a str,
    pub auc: Option<f64>,
    /// TPR at the policy's FPR, if the attack has a ROC.
    pub tpr_at_fpr: Option<f64>,
    pub epsilon_lower_bound: f64,
    /// What a perfect attack would show for each figure, when known.
    pub auc_ceiling: Option<f64>,
    pub tpr_ceiling: Option<f64>,
    pub epsilon_ceiling: Option<f64>,
    /// `auc` and `tpr_at_fpr` are lower confidence bounds (figures from
    /// noisy counts), not point estimates: the gate then blocks only when
    /// the evidence says the limit is exceeded at the stated confidence.
    pub lower_bounds: bool,
}

pub fn evaluate(limits: &GateLimits, figures: &[AttackFigures<'_>]) -> (Vec<GateCheck>, Decision) {
    let mut checks = Vec::new();
    let mut push = |check: String, attack: &str, value: f64, limit: f64, ceiling: Option<f64>| {
        checks.push(GateCheck {
            check,
            attack: attack.to_string(),
            value,
            limit,
            passed: value <= limit,
            margin: limit - value,
            ceiling,
            could_fail: ceiling.map_or(true, |c| c > limit),
        });
    };
    for f in figures {
        let suffix = if f.lower_bounds { "_lower_bound" } else { "" };
        if let Some(auc) = f.auc {
            push(
                format!("auc{suffix}"),
                f.attack,
                auc,
                limits.max_auc,
                f.auc_ceiling,
            );
        }
        if let (Some(tpr), Some((fpr, max))) = (f.tpr_at_fpr, limits.max_tpr_at_fpr) {
            push(
                format!("tpr{suffix}_at_fpr_{fpr}"),
                f.attack,
                tpr,
                max,
                f.tpr_ceiling,
            );
        }
        push(
            "epsilon_lower_bound".into(),
            f.attack,
            f.epsilon_lower_bound,
            limits.max_epsilon_lower_bound,
            f.epsilon_ceiling,
        );
    }
    let decision = if checks.iter().all(|c| c.passed) {
        Decision::Release
    } else {
        Decision::Block
    };
    (checks, decision)
}
