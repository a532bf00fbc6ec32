//! The HTTP API's JSON bodies. Vectors travel as `application/octet-stream`
//! (protocol messages in the versioned binary codec; model parameters as
//! little-endian f64).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::store::service::{ReleaseRecord, RoundRecord};

/// Starts a job (operator only).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartJob {
    /// Job id: 1–64 characters of `[A-Za-z0-9._-]`.
    pub job: String,
    /// Seed of the initial model (public).
    #[serde(default)]
    pub seed: Option<u64>,
    /// The job's privacy budget, at most the policy's ε (recalibrates the
    /// noise when the policy calibrates).
    #[serde(default)]
    pub epsilon: Option<f64>,
    /// Rounds, at most the policy's.
    #[serde(default)]
    pub rounds: Option<u32>,
}

/// The secure-sum task the coordinator is collecting now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct LiveTask {
    pub round: u32,
    pub task: u32,
    /// `training` (noisy update) or `audit` (the audit's bin counts).
    pub kind: String,
    /// The protocol phase being collected.
    pub phase: String,
    pub cohort: Vec<u32>,
    pub bits: u8,
    /// Words in the vector each party sends (after padding).
    pub len: usize,
}

/// A job as the coordinator sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobStatus {
    pub job: String,
    pub consortium: String,
    pub policy_hash: String,
    /// `running`, `auditing`, `released`, `blocked`, `aborted` or `failed`.
    pub state: String,
    pub rounds: u32,
    /// The job's ε budget (δ as the policy).
    pub epsilon: f64,
    pub delta: f64,
    /// ε the consortium has spent (all jobs), `null` without DP.
    pub epsilon_spent: Option<f64>,
    pub noise_std_per_party: f64,
    pub live: Option<LiveTask>,
    pub history: Vec<RoundRecord>,
    pub release: Option<ReleaseRecord>,
    pub reason: Option<String>,
    /// Changes whenever anything the parties wait for changes.
    pub version: u64,
}

/// What a party needs before its first round.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PartySetup {
    pub job: String,
    pub policy_hash: String,
    pub epsilon: f64,
    pub rounds: u32,
    pub noise_std_per_party: f64,
    /// The "in" audit canaries dealt to this party, by index (ascending):
    /// it adds each to every training sum as one more record.
    pub canaries: Vec<u32>,
}

/// Every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code: `unauthenticated`, `replay`, `unknown_job`,
    /// `wrong_round`, `wrong_phase`, `invalid_message`, `too_large`,
    /// `invalid_request`, `conflict`, `forbidden`, `internal`.
    pub error: String,
    /// What was wrong, for a person.
    pub message: String,
}
