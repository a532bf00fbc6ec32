//! The privacy ledger: one row per charge, committed (and fsynced) before the
//! round's result is decoded, so a crash can make the ledger over-count but
//! never under-count. A round retried after a crash is charged again: its
//! noise is fresh, so it is a new release.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::dp::accountant::orders;
use crate::dp::plan::RoundCharge;
use crate::policy::AccountantKind;

pub use super::error::LedgerError;

/// What a charge paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChargeKind {
    /// A training round's secure sum.
    Training,
    /// The audit's noisy counts.
    Audit,
    /// A strategy's one-off statistics sum.
    Statistics,
}

impl ChargeKind {
    pub fn name(self) -> &'static str {
        match self {
            ChargeKind::Training => "training",
            ChargeKind::Audit => "audit",
            ChargeKind::Statistics => "statistics",
        }
    }

    fn parse(s: &str) -> rusqlite::Result<ChargeKind> {
        match s {
            "training" => Ok(ChargeKind::Training),
            "audit" => Ok(ChargeKind::Audit),
            "statistics" => Ok(ChargeKind::Statistics),
            other => Err(rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("unknown charge kind `{other}`").into(),
            )),
        }
    }
}

/// One committed charge.
#[derive(Debug, Clone, Serialize)]
pub struct ChargeRecord {
    pub id: i64,
    pub job: String,
    pub round: u32,
    pub task: u32,
    pub kind: ChargeKind,
    /// `None`: every record of the consortium paid (a secure sum). A party:
    /// only that party's records paid (its home DP-SGD).
    pub party: Option<u32>,
    pub accountant: String,
    pub rho: f64,
    /// ε of the consortium after this charge, at its δ.
    pub epsilon_after: f64,
    pub delta: f64,
    pub released: bool,
    pub created_at: String,
}

/// What a consortium has spent.
#[derive(Debug, Clone, Serialize)]
pub struct Spent {
    pub consortium: String,
    pub accountant: String,
    pub epsilon: f64,
    pub delta: f64,
    pub budget: f64,
    pub remaining: f64,
    pub charges: usize,
    pub jobs: usize,
}

pub struct PrivacyLedger {
    pub(super) conn: Connection,
}

struct Budget {
    epsilon: f64,
    delta: f64,
    accountant: AccountantKind,
}

impl PrivacyLedger {
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let conn = Connection::open(path)?;
        // WAL with synchronous = FULL: every commit is fsynced before it
        // returns, so a committed charge survives a crash or power loss.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        super::schema::create(&conn)?;
        Ok(PrivacyLedger { conn })
    }

    /// Records (or updates) a consortium's budget, as its policy sets it.
    pub fn set_budget(
        &mut self,
        consortium: &str,
        epsilon: f64,
        delta: f64,
        accountant: AccountantKind,
    ) -> Result<(), LedgerError> {
        self.conn.execute(
            "INSERT INTO budgets (consortium, epsilon, delta, accountant) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(consortium) DO UPDATE SET epsilon = ?2, delta = ?3, accountant = ?4",
            params![consortium, epsilon, delta, accountant.name()],
        )?;
        Ok(())
    }

    fn epsilon_of(b: &Budget, rho: f64, rdp: &[f64]) -> Result<f64, LedgerError> {
        crate::dp::plan::epsilon_of_total(b.accountant, rho, rdp, b.delta)
            .map_err(|e| LedgerError::Corrupt(e.to_string()))
    }

    /// ε that one job's own charges spend, at its consortium's δ and under
    /// its accountant: what its model's privacy rests on.
    pub fn job_spent(&self, job: &str) -> Result<f64, LedgerError> {
        let consortium = job_consortium(&self.conn, job)?;
        let b = read_budget(&self.conn, &consortium)?;
        let (rho, rdp, _) = read_totals(&self.conn, Scope::Job(job), b.accountant)?;
        Self::epsilon_of(&b, rho, &rdp)
    }

    /// What a consortium has spent so far, in-flight rounds included.
    pub fn spent(&self, consortium: &str) -> Result<Spent, LedgerError> {
        let b = read_budget(&self.conn, consortium)?;
        let (rho, rdp, charges) =
            read_totals(&self.conn, Scope::Consortium(consortium), b.accountant)?;
        let epsilon = Self::epsilon_of(&b, rho, &rdp)?;
        let jobs: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM jobs WHERE consortium = ?1",
            params![consortium],
            |r| r.get(0),
        )?;
        Ok(Spent {
            consortium: consortium.to_string(),
            accountant: b.accountant.name().into(),
            epsilon,
            delta: b.delta,
            budget: b.epsilon,
            remaining: (b.epsilon - epsilon).max(0.0),
            charges,
            jobs: jobs as usize,
        })
    }

    /// Registers a job after checking that its planned rounds fit in what
    /// remains of the budget. Refused jobs leave no trace.
    pub fn begin_job(
        &mut self,
        consortium: &str,
        job: &str,
        policy_hash: &str,
        planned: &[RoundCharge],
    ) -> Result<(), LedgerError> {
        let b = read_budget(&self.conn, consortium)?;
        let (mut rho, mut rdp, _) =
            read_totals(&self.conn, Scope::Consortium(consortium), b.accountant)?;
        let spent = Self::epsilon_of(&b, rho, &rdp)?;
        for c in planned {
            rho += c.rho;
            rdp.iter_mut().zip(&c.rdp).for_each(|(a, b)| *a += b);
        }
        let with_job = Self::epsilon_of(&b, rho, &rdp)?;
        if with_job > b.epsilon {
            return Err(LedgerError::BudgetExceeded {
                consortium: consortium.into(),
                spent,
                with_job,
                budget: b.epsilon,
                delta: b.delta,
            });
        }
        self.conn.execute(
            "INSERT INTO jobs (job, consortium, policy_hash, planned) VALUES (?1, ?2, ?3, ?4)",
            params![job, consortium, policy_hash, planned.len() as i64],
        )?;
        Ok(())
    }

    /// Commits one charge. Call before decoding the round's result: once
    /// this returns, the charge is on disk.
    pub fn charge(
        &mut self,
        job: &str,
        round: u32,
        task: u32,
        kind: ChargeKind,
        charge: &RoundCharge,
    ) -> Result<ChargeRecord, LedgerError> {
        self.charge_with(job, round, task, kind, charge, |_, _| Ok(()))
    }

    /// [`charge`](Self::charge), running `also` (given the charge id) in the
    /// same transaction, so that what it writes commits with the charge or
    /// not at all.
    pub fn charge_with(
        &mut self,
        job: &str,
        round: u32,
        task: u32,
        kind: ChargeKind,
        charge: &RoundCharge,
        also: impl FnOnce(&rusqlite::Transaction<'_>, i64) -> rusqlite::Result<()>,
    ) -> Result<ChargeRecord, LedgerError> {
        self.charge_all_with(job, round, task, kind, &[(None, charge.clone())], also)
    }

    /// Commits several charges of one task in one transaction — the
    /// consortium's (`None`) and each home-training party's — and runs
    /// `also` with the last one's id. Returns the last one.
    pub fn charge_all_with(
        &mut self,
        job: &str,
        round: u32,
        task: u32,
        kind: ChargeKind,
        charges: &[(Option<u32>, RoundCharge)],
        also: impl FnOnce(&rusqlite::Transaction<'_>, i64) -> rusqlite::Result<()>,
    ) -> Result<ChargeRecord, LedgerError> {
        if charges.is_empty() {
            return Err(LedgerError::Corrupt(
                "a charge with nothing to charge".into(),
            ));
        }
        let tx = self.conn.transaction()?;
        let consortium = job_consortium(&tx, job)?;
        let b = read_budget(&tx, &consortium)?;
        let mut id = 0;
        for (party, charge) in charges {
            let rdp = serde_json::to_string(&charge.rdp)
                .map_err(|e| LedgerError::Corrupt(e.to_string()))?;
            tx.execute(
                "INSERT INTO charges (job, round, task, kind, party, accountant, rho, rdp, epsilon_after, delta)
                 VALUES (?1, ?2, ?3, ?4, ?5, '', ?6, ?7, 0, 0)",
                params![job, round, task, kind.name(), party, charge.rho, rdp],
            )?;
            id = tx.last_insert_rowid();
            // ε after the charge, computed inside the same transaction.
            let (rho, rdp_total, _) =
                read_totals(&tx, Scope::Consortium(&consortium), b.accountant)?;
            let eps = Self::epsilon_of(&b, rho, &rdp_total)?;
            tx.execute(
                "UPDATE charges SET accountant = ?1, epsilon_after = ?2, delta = ?3 WHERE id = ?4",
                params![b.accountant.name(), eps, b.delta, id],
            )?;
        }
        also(&tx, id)?;
        tx.commit()?;
        self.charge_by_id(id)
    }

    /// Marks a charged round as released (its result left the protocol).
    pub fn mark_released(&mut self, charge_id: i64) -> Result<(), LedgerError> {
        self.conn.execute(
            "UPDATE charges SET released = 1 WHERE id = ?1",
            params![charge_id],
        )?;
        Ok(())
    }

    fn charge_by_id(&self, id: i64) -> Result<ChargeRecord, LedgerError> {
        Ok(self.conn.query_row(
            "SELECT id, job, round, task, kind, accountant, rho, epsilon_after, delta, released, created_at, party
             FROM charges WHERE id = ?1",
            params![id],
            row_to_charge,
        )?)
    }

    /// Every charge, oldest first, optionally of one job.
    pub fn charges(&self, job: Option<&str>) -> Result<Vec<ChargeRecord>, LedgerError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, job, round, task, kind, accountant, rho, epsilon_after, delta, released, created_at, party
             FROM charges WHERE (?1 IS NULL OR job = ?1) ORDER BY id",
        )?;
        let rows = stmt.query_map(params![job], row_to_charge)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn consortia(&self) -> Result<Vec<String>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare("SELECT consortium FROM budgets ORDER BY consortium")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

fn row_to_charge(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChargeRecord> {
    Ok(ChargeRecord {
        id: r.get(0)?,
        job: r.get(1)?,
        round: r.get(2)?,
        task: r.get(3)?,
        kind: ChargeKind::parse(&r.get::<_, String>(4)?)?,
        party: r.get(11)?,
        accountant: r.get(5)?,
        rho: r.get(6)?,
        epsilon_after: r.get(7)?,
        delta: r.get(8)?,
        released: r.get::<_, i64>(9)? != 0,
        created_at: r.get(10)?,
    })
}

fn read_budget(conn: &Connection, consortium: &str) -> Result<Budget, LedgerError> {
    let row = conn
        .query_row(
            "SELECT epsilon, delta, accountant FROM budgets WHERE consortium = ?1",
            params![consortium],
            |r| {
                Ok((
                    r.get::<_, f64>(0)?,
                    r.get::<_, f64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?
        .ok_or_else(|| LedgerError::UnknownConsortium(consortium.to_string()))?;
    let accountant = match row.2.as_str() {
        "zcdp" => AccountantKind::Zcdp,
        "rdp" => AccountantKind::Rdp,
        other => return Err(LedgerError::Corrupt(format!("unknown accountant {other}"))),
    };
    Ok(Budget {
        epsilon: row.0,
        delta: row.1,
        accountant,
    })
}

/// Whose charges to total.
enum Scope<'a> {
    Consortium(&'a str),
    Job(&'a str),
}

/// Sums of ρ and, for the RDP accountant, of the RDP curves over the
/// charges in `scope`. A curve over another grid of orders (a ledger
/// written by an earlier accountant) is refused rather than guessed at.
///
/// A charge paid by every record (a secure sum) counts for all; a charge
/// paid by one party's records (its home DP-SGD) counts for that party's
/// records only. Every record lives at one party, so the worst record pays
/// the shared total plus the largest party's own total (parallel
/// composition); for RDP the party curves are bounded by their pointwise
/// maximum.
fn read_totals(
    conn: &Connection,
    scope: Scope<'_>,
    accountant: AccountantKind,
) -> Result<(f64, Vec<f64>, usize), LedgerError> {
    let (sql, key) = match scope {
        Scope::Consortium(c) => (
            "SELECT c.rho, c.rdp, c.party FROM charges c JOIN jobs j ON c.job = j.job WHERE j.consortium = ?1",
            c,
        ),
        Scope::Job(j) => ("SELECT rho, rdp, party FROM charges WHERE job = ?1", j),
    };
    let mut stmt = conn.prepare(sql)?;
    let orders = orders().len();
    // `None`: what every record paid; `Some(p)`: what party p's records paid.
    let mut totals: std::collections::BTreeMap<Option<u32>, (f64, Vec<f64>)> =
        std::collections::BTreeMap::new();
    totals.insert(None, (0.0, vec![0.0; orders]));
    let mut n = 0;
    let rows = stmt.query_map(params![key], |r| {
        Ok((
            r.get::<_, f64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<u32>>(2)?,
        ))
    })?;
    for row in rows {
        let (r, curve, party) = row?;
        let total = totals
            .entry(party)
            .or_insert_with(|| (0.0, vec![0.0; orders]));
        total.0 += r;
        n += 1;
        if accountant != AccountantKind::Rdp {
            continue;
        }
        let curve: Vec<f64> = serde_json::from_str(&curve)
            .map_err(|e| LedgerError::Corrupt(format!("RDP curve: {e}")))?;
        if curve.len() != orders {
            return Err(LedgerError::Corrupt(format!(
                "a charge's RDP curve has {} orders, this accountant tracks {}: the ledger was \
                 written by an earlier RDP accountant; account it with that version",
                curve.len(),
                orders
            )));
        }
        total.1.iter_mut().zip(curve).for_each(|(a, b)| *a += b);
    }
    let (mut rho, mut rdp) = totals.remove(&None).expect("inserted above");
    let mut home_rho = 0.0f64;
    let mut home_rdp = vec![0.0f64; orders];
    for (r, curve) in totals.values() {
        home_rho = home_rho.max(*r);
        home_rdp
            .iter_mut()
            .zip(curve)
            .for_each(|(a, b)| *a = a.max(*b));
    }
    rho += home_rho;
    rdp.iter_mut().zip(home_rdp).for_each(|(a, b)| *a += b);
    Ok((rho, rdp, n))
}

/// The consortium a job belongs to.
fn job_consortium(conn: &rusqlite::Connection, job: &str) -> Result<String, LedgerError> {
    conn.query_row(
        "SELECT consortium FROM jobs WHERE job = ?1",
        params![job],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| LedgerError::UnknownJob(job.into()))
}
