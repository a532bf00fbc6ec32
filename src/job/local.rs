//! The in-memory driver: a whole job — the engine and every party's
//! session — in one process, messages handed over directly, the host's
//! effects applied to a real store. Time is virtual: when nobody can move,
//! the clock jumps to the engine's next deadline, so a silent party costs
//! no waiting. Dropouts are injected here, by the same rule as the demo's
//! networked parties use, never inside the engine or the sessions.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::engine::{EngineError, ErrorKind};
use super::host::{self, Host, ObservedSum};
use super::session::{
    InputRandomness, Member, ObservedInput, PartyObservation, PartySession, SessionState,
};
use crate::net::api::{JobStatus, StartJob};
use crate::policy::Policy;
use crate::store::PrivacyLedger;

/// When a party goes silent in one task: after its `n`-th batch of
/// outgoing messages (0: it never advertises), or never. The same rule
/// drives the networked demo's parties, so both go silent alike.
pub fn silent_at(dropout: f64, party_seed: u64, round: u32, task: u32) -> Option<usize> {
    let mut rng =
        ChaCha20Rng::seed_from_u64(party_seed ^ (u64::from(round) << 32) ^ u64::from(task));
    (dropout > 0.0 && crate::sampling::bernoulli(&mut rng, dropout))
        .then(|| (rng.next_u32() % 5) as usize)
}

/// The dropout seed of party `i` of a demo run with `seed`.
pub fn party_dropout_seed(seed: u64, i: u32) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(i)
}

/// A job to run in memory.
pub struct LocalJob<'a> {
    /// The consortium's policy, and its file as the report quotes it.
    pub policy: &'a Policy,
    pub policy_text: &'a str,
    pub request: StartJob,
    pub parties: Vec<Member>,
    pub allow_no_dp: bool,
    /// Chance that a party goes silent in a task.
    pub dropout: f64,
    /// The run's seed for those decisions (each party's follows by
    /// [`party_dropout_seed`]).
    pub dropout_seed: u64,
    pub randomness: InputRandomness,
    /// Reports and the released model go to `out/<job>/`.
    pub out: &'a Path,
    /// Hears every party's input words (tests check sums with them).
    pub tap: Option<mpsc::Sender<PartyObservation>>,
}

/// One party as the driver holds it.
struct LocalParty {
    session: PartySession,
    /// The task it is in, and whether it is still talking.
    current: Option<(u32, u32)>,
    talking: bool,
    batches: usize,
    silent_at: Option<usize>,
    /// Sequence number of the last message it received.
    acked: u64,
}

/// Runs the job to its end: released, blocked or failed. `on_round` hears
/// of every training round as it ends.
pub fn run(
    job: LocalJob<'_>,
    store: &mut PrivacyLedger,
    observer: Option<&mpsc::Sender<ObservedSum>>,
    on_round: &mut dyn FnMut(u32),
) -> Result<JobStatus, EngineError> {
    store.register_consortium(job.policy, job.policy_text)?;
    let mut engine = host::create_job(store, job.policy, &job.request, job.allow_no_dp)?;
    let mut host = Host {
        store,
        out: job.out,
        policy_text: job.policy_text,
        metrics: None,
        observer,
    };
    let mut now = Instant::now();
    engine.start(now)?;
    host.drive(&mut engine, now);

    let mut parties: BTreeMap<u32, LocalParty> = BTreeMap::new();
    for m in job.parties {
        let id = m.id;
        let setup = engine.setup(id);
        let session = PartySession::join(
            m,
            job.policy,
            &setup,
            SessionState::default(),
            None,
            job.randomness,
        )
        .map_err(|e| EngineError::new(ErrorKind::Forbidden, format!("party {id}: {e}")))?;
        parties.insert(
            id,
            LocalParty {
                session,
                current: None,
                talking: false,
                batches: 0,
                silent_at: None,
                acked: 0,
            },
        );
    }
    let seeds: BTreeMap<u32, u64> = parties
        .keys()
        .map(|&id| (id, party_dropout_seed(job.dropout_seed, id)))
        .collect();

    let mut last_round = 0;
    while let Some(live) = engine.live() {
        if live.round != last_round {
            if last_round > 0 && last_round <= engine.rounds() {
                on_round(last_round);
            }
            last_round = live.round;
        }
        let key = (live.round, live.task);
        for &p in &live.cohort {
            let Some(party) = parties.get_mut(&p) else {
                continue;
            };
            if party.current == Some(key) {
                continue;
            }
            party.current = Some(key);
            party.acked = 0;
            party.batches = 0;
            party.talking = false;
            party.silent_at = silent_at(job.dropout, seeds[&p], live.round, live.task);
            // A task the party's own rules refuse, it sits out.
            let Ok(admission) = party.session.admit(&live) else {
                continue;
            };
            let downlink = engine.downlink(p, live.round)?;
            let words = party
                .session
                .begin(&admission, &downlink)
                .map_err(|e| EngineError::new(ErrorKind::Internal, format!("party {p}: {e}")))?;
            if let Some(tap) = &job.tap {
                let _ = tap.send(PartyObservation::Input(ObservedInput {
                    party: p,
                    job: engine.id().to_string(),
                    round: live.round,
                    task: live.task,
                    words,
                }));
            }
            party.talking = true;
        }

        let mut moved = false;
        for &p in &live.cohort {
            let Some(party) = parties.get_mut(&p).filter(|x| x.talking) else {
                continue;
            };
            let mut batch = Vec::new();
            while let Some((_, bytes)) = party.session.poll_outgoing() {
                batch.push(bytes);
            }
            if !batch.is_empty() {
                if party.silent_at == Some(party.batches) {
                    party.talking = false;
                    party.session.leave();
                    continue;
                }
                party.batches += 1;
                for bytes in batch {
                    // A message the engine refuses leaves the party out.
                    if engine.handle(now, p, live.round, &bytes).is_err() {
                        party.talking = false;
                    }
                    host.drive(&mut engine, now);
                    moved = true;
                }
            }
            if engine.live().map(|l| (l.round, l.task)) != Some(key) {
                break;
            }
            while let Some((seq, bytes)) = engine.next_message(p, live.round, party.acked)? {
                party.acked = seq;
                moved = true;
                if party.session.handle(&bytes).is_err() {
                    party.talking = false;
                    break;
                }
            }
        }
        if moved || engine.live().map(|l| (l.round, l.task)) != Some(key) {
            continue;
        }
        // Nobody can move: the next deadline.
        match engine.poll_timeout() {
            Some(t) => {
                now = now.max(t);
                engine.handle_timeout(now)?;
                host.drive(&mut engine, now);
            }
            None => {
                return Err(EngineError::new(
                    ErrorKind::Internal,
                    format!("round {} task {} is stuck with no deadline", key.0, key.1),
                ))
            }
        }
    }
    if last_round > 0 && last_round <= engine.rounds() {
        on_round(last_round);
    }
    host.drive(&mut engine, now);
    host::status(&engine, host.store, engine.generation())
}
