//! What both sides of a job agree a secure sum is: its kind, the word
//! width of the audit's counts and how the outputs of models trained at
//! home are written as words.

/// The kind of a secure sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// A training update (noisy, charged once per round).
    Training,
    /// What models trained at home with DP output on public data (the
    /// ensemble's class probabilities): a post-processing of DP releases,
    /// so summed without noise; charged as each member's home training.
    Outputs,
    /// One-off summary statistics (noisy; charged once per job).
    Statistics,
    /// The audit's bin counts, once, after the last training round.
    Audit,
}

impl TaskKind {
    /// The kind of a strategy's task.
    pub fn of(spec: &crate::strategy::TaskSpec) -> TaskKind {
        match spec.sum {
            crate::strategy::SumKind::Update => TaskKind::Training,
            crate::strategy::SumKind::Outputs => TaskKind::Outputs,
            crate::strategy::SumKind::Statistics => TaskKind::Statistics,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Training => "training",
            TaskKind::Outputs => "outputs",
            TaskKind::Statistics => "statistics",
            TaskKind::Audit => "audit",
        }
    }
}

/// Bits of an audit count word (the counts are summed mod 2^32).
pub const AUDIT_BITS: u8 = 32;

/// Bits of an outputs word.
pub const OUTPUT_BITS: u8 = 32;

/// One unit of an outputs word: values in [0, 1] are written in steps of
/// 2⁻¹⁶, so that a sum over fewer than 2¹⁶ parties cannot wrap.
const OUTPUT_SCALE: f64 = 65_536.0;

/// Most parties whose outputs one sum can hold.
pub const MAX_OUTPUT_PARTIES: usize = 65_535;

/// Writes values in [0, 1] (others are clamped) as fixed-point words.
pub fn encode_outputs(values: &[f64]) -> Vec<u32> {
    values
        .iter()
        .map(|v| {
            let v = if v.is_finite() {
                v.clamp(0.0, 1.0)
            } else {
                0.0
            };
            (v * OUTPUT_SCALE).round() as u32
        })
        .collect()
}

/// Reads a sum of outputs words.
pub fn decode_outputs(words: &[u32]) -> Vec<f64> {
    words.iter().map(|&w| f64::from(w) / OUTPUT_SCALE).collect()
}
