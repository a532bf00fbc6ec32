//! What can go wrong with the store.

#[derive(Debug)]
pub enum LedgerError {
    Sqlite(rusqlite::Error),
    /// The job's planned rounds would take the consortium over its budget.
    BudgetExceeded {
        consortium: String,
        spent: f64,
        with_job: f64,
        budget: f64,
        delta: f64,
    },
    UnknownConsortium(String),
    UnknownJob(String),
    Corrupt(String),
}

impl std::fmt::Display for LedgerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerError::Sqlite(e) => write!(f, "ledger database error: {e}"),
            LedgerError::BudgetExceeded {
                consortium,
                spent,
                with_job,
                budget,
                delta,
            } => write!(
                f,
                "job refused: consortium {consortium} has spent ε = {spent:.4} of its budget ε = {budget} \
                 (δ = {delta}); this job's planned rounds would bring it to ε = {with_job:.4}"
            ),
            LedgerError::UnknownConsortium(c) => write!(f, "no budget recorded for consortium {c}"),
            LedgerError::UnknownJob(j) => write!(f, "no job {j} in the ledger"),
            LedgerError::Corrupt(m) => write!(f, "ledger is corrupt: {m}"),
        }
    }
}

impl std::error::Error for LedgerError {}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        LedgerError::Sqlite(e)
    }
}
