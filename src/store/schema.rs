//! Every table of the store, and the upgrades of stores written by earlier
//! versions, applied when the store is opened.

use rusqlite::Connection;

use super::error::LedgerError;

/// Creates what is missing and upgrades what is old.
pub(super) fn create(conn: &Connection) -> Result<(), LedgerError> {
    conn.execute_batch(LEDGER)?;
    add_charge_kind(conn)?;
    add_charge_party(conn)?;
    widen_charge_kinds(conn)?;
    conn.execute_batch(LOG)?;
    conn.execute_batch(SERVICE)?;
    add_strategy_state(conn)?;
    Ok(())
}

/// The privacy ledger: budgets, jobs and their charges.
const LEDGER: &str = "
CREATE TABLE IF NOT EXISTS budgets (
    consortium TEXT PRIMARY KEY,
    epsilon    REAL NOT NULL,
    delta      REAL NOT NULL,
    accountant TEXT NOT NULL CHECK (accountant IN ('zcdp', 'rdp'))
);
CREATE TABLE IF NOT EXISTS jobs (
    job          TEXT PRIMARY KEY,
    consortium   TEXT NOT NULL REFERENCES budgets(consortium),
    policy_hash  TEXT NOT NULL,
    planned      INTEGER NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS charges (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    job           TEXT NOT NULL REFERENCES jobs(job),
    round         INTEGER NOT NULL,
    task          INTEGER NOT NULL,
    kind          TEXT NOT NULL DEFAULT 'training' CHECK (kind IN ('training', 'audit', 'statistics')),
    party         INTEGER,
    accountant    TEXT NOT NULL,
    rho           REAL NOT NULL,
    rdp           TEXT NOT NULL,
    epsilon_after REAL NOT NULL,
    delta         REAL NOT NULL,
    released      INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS charges_by_job ON charges(job);
";

/// The hash-chained audit log.
const LOG: &str = "
CREATE TABLE IF NOT EXISTS audit_log (
    seq        INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    kind       TEXT NOT NULL,
    job        TEXT NOT NULL,
    content    TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
";

/// The coordinator service: the consortium, jobs' progress, rounds and
/// releases.
const SERVICE: &str = "
CREATE TABLE IF NOT EXISTS consortium (
    id          TEXT PRIMARY KEY,
    policy_hash TEXT NOT NULL,
    policy      TEXT NOT NULL,
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS parties (
    consortium   TEXT NOT NULL REFERENCES consortium(id),
    id           INTEGER NOT NULL,
    name         TEXT NOT NULL,
    identity_key TEXT NOT NULL,
    PRIMARY KEY (consortium, id)
);
CREATE TABLE IF NOT EXISTS job_runs (
    job         TEXT PRIMARY KEY,
    consortium  TEXT NOT NULL,
    policy_hash TEXT NOT NULL,
    state       TEXT NOT NULL,
    rounds      INTEGER NOT NULL,
    epsilon     REAL NOT NULL,
    next_round  INTEGER NOT NULL,
    seed        INTEGER NOT NULL,
    canary_seed INTEGER NOT NULL,
    params      BLOB NOT NULL,
    velocity    BLOB NOT NULL,
    strategy_state BLOB,
    canary_scores BLOB,
    reason      TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS rounds (
    job        TEXT NOT NULL REFERENCES job_runs(job),
    round      INTEGER NOT NULL,
    task       INTEGER NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('running', 'finished', 'aborted')),
    phase      TEXT NOT NULL,
    survivors  TEXT NOT NULL DEFAULT '[]',
    dropped    TEXT NOT NULL DEFAULT '[]',
    charge_id  INTEGER,
    reason     TEXT,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (job, round, task)
);
CREATE TABLE IF NOT EXISTS releases (
    job          TEXT PRIMARY KEY REFERENCES job_runs(job),
    decision     TEXT NOT NULL,
    model_path   TEXT,
    model_sha256 TEXT,
    report_json  TEXT NOT NULL,
    report_html  TEXT NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
";

/// Brings a ledger written before charges had a kind up to date: earlier
/// charges were all training rounds.
fn add_charge_kind(conn: &Connection) -> Result<(), LedgerError> {
    let has_kind: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('charges') WHERE name = 'kind'")?
        .exists([])?;
    if !has_kind {
        conn.execute_batch(
            "ALTER TABLE charges ADD COLUMN kind TEXT NOT NULL DEFAULT 'training'
               CHECK (kind IN ('training', 'audit'));",
        )?;
    }
    Ok(())
}

/// Brings a ledger written before strategies summed statistics up to
/// date: its `kind` check admits no 'statistics', and SQLite cannot change
/// a check in place, so the table is copied into one that does, in one
/// transaction.
fn widen_charge_kinds(conn: &Connection) -> Result<(), LedgerError> {
    let sql: String = conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'charges'",
        [],
        |r| r.get(0),
    )?;
    if sql.contains("'statistics'") {
        return Ok(());
    }
    let columns = "id, job, round, task, kind, party, accountant, rho, rdp, epsilon_after, \
                   delta, released, created_at";
    let create = LEDGER
        .split("CREATE TABLE IF NOT EXISTS charges")
        .nth(1)
        .and_then(|rest| rest.split(");").next())
        .expect("the ledger's schema defines charges");
    conn.execute_batch(&format!(
        "BEGIN;
         CREATE TABLE charges_widened {create});
         INSERT INTO charges_widened ({columns}) SELECT {columns} FROM charges;
         DROP TABLE charges;
         ALTER TABLE charges_widened RENAME TO charges;
         CREATE INDEX IF NOT EXISTS charges_by_job ON charges(job);
         COMMIT;"
    ))?;
    Ok(())
}

/// Brings a ledger written before parties trained at home up to date:
/// earlier charges were all paid by every record.
fn add_charge_party(conn: &Connection) -> Result<(), LedgerError> {
    let has: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('charges') WHERE name = 'party'")?
        .exists([])?;
    if !has {
        conn.execute_batch("ALTER TABLE charges ADD COLUMN party INTEGER;")?;
    }
    Ok(())
}

/// Brings a store written before strategies kept their own state up to
/// date.
fn add_strategy_state(conn: &Connection) -> Result<(), LedgerError> {
    for column in ["strategy_state", "canary_scores"] {
        let has: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('job_runs') WHERE name = ?1")?
            .exists([column])?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE job_runs ADD COLUMN {column} BLOB;"))?;
        }
    }
    Ok(())
}
