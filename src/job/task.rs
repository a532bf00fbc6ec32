//! What both sides of a job agree a secure sum is: its kind, and the word
//! width of the audit's counts.

/// The kind of a secure sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// A training update (noisy, charged once per round).
    Training,
    /// The audit's bin counts, once, after the last training round.
    Audit,
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Training => "training",
            TaskKind::Audit => "audit",
        }
    }
}

/// Bits of an audit count word (the counts are summed mod 2^32).
pub const AUDIT_BITS: u8 = 32;
