//! The coordinator's service state, in the same SQLite file as the ledger
//! and the log: the consortium and its parties as the policy listed them,
//! each job's progress (its strategy's state at the end of its last round,
//! its next round), every round's phase and survivors, and release
//! decisions.
//!
//! Writes that must agree commit together: a round's charge with its round
//! row, a round's result with the model it produced. A crash therefore
//! leaves either the state before a step or the state after it.

use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::LedgerError;
use super::ledger::PrivacyLedger;
use crate::policy::Policy;

/// A job's durable progress.
#[derive(Debug, Clone)]
pub struct JobRunRecord {
    pub job: String,
    pub consortium: String,
    pub policy_hash: String,
    pub state: String,
    pub rounds: u32,
    /// The job's own ε (at most the policy's).
    pub epsilon: f64,
    pub next_round: u32,
    pub seed: u64,
    pub canary_seed: u64,
    /// The strategy's coordinator state at the end of the last round.
    pub strategy_state: Vec<u8>,
    /// The audit canaries' scores at the end of the last round.
    pub canary_scores: Vec<f64>,
    pub reason: Option<String>,
}

/// What a round's last task leaves for a restart: the strategy's state and
/// the canaries' scores.
#[derive(Clone, Copy, Debug)]
pub struct SavedRound<'a> {
    pub strategy_state: &'a [u8],
    pub canary_scores: &'a [f64],
}

fn scores_to_bytes(scores: &[f64]) -> Vec<u8> {
    scores.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn scores_from_bytes(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// A job as read back, with what a store written before strategies kept
/// their own state holds instead (a model and its momentum).
#[derive(Debug, Clone)]
pub struct StoredJobRun {
    pub record: JobRunRecord,
    pub legacy_params: Vec<f64>,
    pub legacy_velocity: Vec<f64>,
}

impl std::ops::Deref for StoredJobRun {
    type Target = JobRunRecord;
    fn deref(&self) -> &JobRunRecord {
        &self.record
    }
}

/// One round (task) as stored, and as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoundRecord {
    pub round: u32,
    pub task: u32,
    /// `running`, `finished` or `aborted`.
    pub state: String,
    pub phase: String,
    pub survivors: Vec<u32>,
    pub dropped: Vec<u32>,
    pub charge_id: Option<i64>,
    pub reason: Option<String>,
}

/// A release decision as stored, and as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReleaseRecord {
    /// `release` or `block`.
    pub decision: String,
    pub model_path: Option<String>,
    pub model_sha256: Option<String>,
    pub report_json: String,
    pub report_html: String,
}

pub fn blob_to_f64s(b: &[u8]) -> Result<Vec<f64>, LedgerError> {
    if b.len() % 8 != 0 {
        return Err(LedgerError::Corrupt(format!(
            "a stored vector has {} bytes, not a multiple of 8",
            b.len()
        )));
    }
    Ok(b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

fn ids_json(ids: &[u32]) -> String {
    serde_json::to_string(ids).expect("a list of integers serialises")
}

fn ids_from_json(s: &str) -> rusqlite::Result<Vec<u32>> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

impl PrivacyLedger {
    /// Records the consortium and its roster as the policy lists them.
    pub fn register_consortium(&mut self, policy: &Policy, text: &str) -> Result<(), LedgerError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO consortium (id, policy_hash, policy) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET policy_hash = ?2, policy = ?3,
               updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            params![policy.consortium.id, policy.hash, text],
        )?;
        tx.execute(
            "DELETE FROM parties WHERE consortium = ?1",
            params![policy.consortium.id],
        )?;
        for p in &policy.parties {
            tx.execute(
                "INSERT INTO parties (consortium, id, name, identity_key) VALUES (?1, ?2, ?3, ?4)",
                params![policy.consortium.id, p.id, p.name, p.identity_key],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn insert_job_run(&mut self, r: &JobRunRecord) -> Result<(), LedgerError> {
        self.conn.execute(
            "INSERT INTO job_runs (job, consortium, policy_hash, state, rounds, next_round, seed,
                                   canary_seed, params, velocity, strategy_state, epsilon)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, x'', x'', ?9, ?10)",
            params![
                r.job,
                r.consortium,
                r.policy_hash,
                r.state,
                r.rounds,
                r.next_round,
                r.seed as i64,
                r.canary_seed as i64,
                r.strategy_state,
                r.epsilon
            ],
        )?;
        Ok(())
    }

    pub fn job_run(&self, job: &str) -> Result<Option<StoredJobRun>, LedgerError> {
        let row = self
            .conn
            .query_row(
                "SELECT job, consortium, policy_hash, state, rounds, next_round, seed, canary_seed,
                        params, velocity, reason, epsilon, strategy_state, canary_scores
                 FROM job_runs WHERE job = ?1",
                params![job],
                |r| {
                    Ok((
                        JobRunRecord {
                            job: r.get(0)?,
                            consortium: r.get(1)?,
                            policy_hash: r.get(2)?,
                            state: r.get(3)?,
                            rounds: r.get(4)?,
                            next_round: r.get(5)?,
                            seed: r.get::<_, i64>(6)? as u64,
                            canary_seed: r.get::<_, i64>(7)? as u64,
                            strategy_state: r.get::<_, Option<Vec<u8>>>(12)?.unwrap_or_default(),
                            canary_scores: scores_from_bytes(
                                &r.get::<_, Option<Vec<u8>>>(13)?.unwrap_or_default(),
                            ),
                            reason: r.get(10)?,
                            epsilon: r.get(11)?,
                        },
                        r.get::<_, Vec<u8>>(8)?,
                        r.get::<_, Vec<u8>>(9)?,
                    ))
                },
            )
            .optional()?;
        match row {
            None => Ok(None),
            Some((record, p, v)) => Ok(Some(StoredJobRun {
                record,
                legacy_params: blob_to_f64s(&p)?,
                legacy_velocity: blob_to_f64s(&v)?,
            })),
        }
    }

    /// Jobs in the given states, oldest first.
    pub fn job_runs_in(&self, states: &[&str]) -> Result<Vec<String>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare("SELECT job, state FROM job_runs ORDER BY created_at, job")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (job, state) = row?;
            if states.contains(&state.as_str()) {
                out.push(job);
            }
        }
        Ok(out)
    }

    pub fn set_job_state(
        &mut self,
        job: &str,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), LedgerError> {
        self.conn.execute(
            "UPDATE job_runs SET state = ?2, reason = ?3,
               updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE job = ?1",
            params![job, state, reason],
        )?;
        Ok(())
    }

    /// Charges a running round at its charge point (its masked inputs are
    /// in, no unmask request has left) and links the charge to the round,
    /// in one transaction.
    pub fn charge_round(
        &mut self,
        job: &str,
        round: u32,
        task: u32,
        kind: super::ledger::ChargeKind,
        charges: &[(Option<u32>, crate::dp::plan::RoundCharge)],
    ) -> Result<super::ledger::ChargeRecord, LedgerError> {
        let job_s = job.to_string();
        self.charge_all_with(job, round, task, kind, charges, move |tx, id| {
            tx.execute(
                "UPDATE rounds SET charge_id = ?4,
                   updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE job = ?1 AND round = ?2 AND task = ?3 AND state = 'running'",
                params![job_s, round, task, id],
            )
            .and_then(|n| {
                if n == 1 {
                    Ok(())
                } else {
                    Err(rusqlite::Error::QueryReturnedNoRows)
                }
            })
        })
    }

    /// Records a round as running, uncharged until its charge point.
    pub fn begin_round(&mut self, job: &str, round: u32, task: u32) -> Result<(), LedgerError> {
        let tx = self.conn.transaction()?;
        start_round(&tx, job, round, task, None)?;
        tx.commit()?;
        Ok(())
    }

    pub fn set_round_phase(
        &mut self,
        job: &str,
        round: u32,
        task: u32,
        phase: &str,
        survivors: &[u32],
    ) -> Result<(), LedgerError> {
        self.conn.execute(
            "UPDATE rounds SET phase = ?4, survivors = ?5,
               updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE job = ?1 AND round = ?2 AND task = ?3",
            params![job, round, task, phase, ids_json(survivors)],
        )?;
        Ok(())
    }

    /// A finished task, its charge marked released, and — after a round's
    /// last task — the strategy's state, all in one transaction.
    pub fn finish_round(
        &mut self,
        job: &str,
        round: u32,
        task: u32,
        survivors: &[u32],
        dropped: &[u32],
        saved: Option<SavedRound<'_>>,
    ) -> Result<(), LedgerError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE rounds SET state = 'finished', phase = 'done', survivors = ?4, dropped = ?5,
               updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE job = ?1 AND round = ?2 AND task = ?3",
            params![job, round, task, ids_json(survivors), ids_json(dropped)],
        )?;
        tx.execute(
            "UPDATE charges SET released = 1
             WHERE id = (SELECT charge_id FROM rounds WHERE job = ?1 AND round = ?2 AND task = ?3)",
            params![job, round, task],
        )?;
        save_state(&tx, job, saved)?;
        tx.commit()?;
        Ok(())
    }

    /// A task that could not finish (its charge stays), and — after a
    /// round's last task — the strategy's state, in one transaction.
    pub fn abort_round(
        &mut self,
        job: &str,
        round: u32,
        task: u32,
        reason: &str,
        dropped: &[u32],
        saved: Option<SavedRound<'_>>,
    ) -> Result<(), LedgerError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE rounds SET state = 'aborted', reason = ?4, dropped = ?5,
               updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE job = ?1 AND round = ?2 AND task = ?3 AND state = 'running'",
            params![job, round, task, reason, ids_json(dropped)],
        )?;
        save_state(&tx, job, saved)?;
        tx.commit()?;
        Ok(())
    }

    /// Rounds left running (by a crash), for the restart to abort.
    pub fn running_rounds(&self, job: &str) -> Result<Vec<RoundRecord>, LedgerError> {
        Ok(self
            .rounds(job)?
            .into_iter()
            .filter(|r| r.state == "running")
            .collect())
    }

    pub fn rounds(&self, job: &str) -> Result<Vec<RoundRecord>, LedgerError> {
        let mut stmt = self.conn.prepare(
            "SELECT round, task, state, phase, survivors, dropped, charge_id, reason
             FROM rounds WHERE job = ?1 ORDER BY round, task",
        )?;
        let rows = stmt.query_map(params![job], |r| {
            Ok(RoundRecord {
                round: r.get(0)?,
                task: r.get(1)?,
                state: r.get(2)?,
                phase: r.get(3)?,
                survivors: ids_from_json(&r.get::<_, String>(4)?)?,
                dropped: ids_from_json(&r.get::<_, String>(5)?)?,
                charge_id: r.get(6)?,
                reason: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn record_release(&mut self, job: &str, r: &ReleaseRecord) -> Result<(), LedgerError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO releases (job, decision, model_path, model_sha256, report_json, report_html)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                job,
                r.decision,
                r.model_path,
                r.model_sha256,
                r.report_json,
                r.report_html
            ],
        )?;
        Ok(())
    }

    pub fn release(&self, job: &str) -> Result<Option<ReleaseRecord>, LedgerError> {
        Ok(self
            .conn
            .query_row(
                "SELECT decision, model_path, model_sha256, report_json, report_html
                 FROM releases WHERE job = ?1",
                params![job],
                |r| {
                    Ok(ReleaseRecord {
                        decision: r.get(0)?,
                        model_path: r.get(1)?,
                        model_sha256: r.get(2)?,
                        report_json: r.get(3)?,
                        report_html: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }
}

fn save_state(
    tx: &Transaction<'_>,
    job: &str,
    saved: Option<SavedRound<'_>>,
) -> rusqlite::Result<()> {
    if let Some(saved) = saved {
        tx.execute(
            "UPDATE job_runs SET strategy_state = ?2, canary_scores = ?3,
               updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE job = ?1",
            params![
                job,
                saved.strategy_state,
                scores_to_bytes(saved.canary_scores)
            ],
        )?;
    }
    Ok(())
}

fn start_round(
    tx: &Transaction<'_>,
    job: &str,
    round: u32,
    task: u32,
    charge_id: Option<i64>,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO rounds (job, round, task, state, phase, charge_id)
         VALUES (?1, ?2, ?3, 'running', 'advertise-keys', ?4)",
        params![job, round, task, charge_id],
    )?;
    tx.execute(
        "UPDATE job_runs SET next_round = MAX(next_round, ?2 + 1),
           updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE job = ?1",
        params![job, round],
    )?;
    Ok(())
}
