//! Every party and the coordinator of one round wired together in memory,
//! with dropouts injected between phases. Messages cross as encoded bytes,
//! so the codec is exercised exactly as on the network. Time is virtual: when
//! no message is in flight, the clock jumps to the coordinator's deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::config::Round;
use crate::coordinator::{Aggregate, Coordinator, Event};
use crate::error::{Error, Phase};
use crate::identity::IdentityKey;
use crate::ids::PartyId;
use crate::message::Message;
use crate::party::Party;

/// Who did a piece of work, for metering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    Party(PartyId),
    Coordinator,
}

/// Measures work; the simulator itself reads no clock. Parties may work on
/// several threads at once, so a meter records through `&self`.
pub trait Meter: Sync {
    fn measure<R>(&self, actor: Actor, phase: Phase, work: impl FnOnce() -> R) -> R;
}

/// A meter that measures nothing.
pub struct NoMeter;

impl Meter for NoMeter {
    fn measure<R>(&self, _: Actor, _: Phase, work: impl FnOnce() -> R) -> R {
        work()
    }
}

/// Rewrites a message from the coordinator before its recipient sees it:
/// how tests play a lying coordinator.
pub type Tamper = Box<dyn FnMut(PartyId, &mut Message)>;

/// Sees every message a party sends that reaches the coordinator.
pub type Observer = Box<dyn FnMut(PartyId, &Message)>;

/// Rewrites a message a party sends before the coordinator sees it: how
/// tests play a lying party.
pub type PartyTamper = Box<dyn FnMut(PartyId, &mut Message)>;

type Slot = (Party, ChaCha20Rng);

pub struct Sim<M: Meter = NoMeter> {
    pub coordinator: Coordinator,
    parties: BTreeMap<PartyId, Slot>,
    /// Each listed party sends nothing from this phase on.
    drop_at: BTreeMap<PartyId, Phase>,
    gone: BTreeSet<PartyId>,
    time: Instant,
    tamper: Option<Tamper>,
    party_tamper: Option<PartyTamper>,
    observer: Option<Observer>,
    threads: usize,
    /// Errors parties raised on refusing a coordinator message.
    pub party_errors: Vec<(PartyId, Error)>,
    pub meter: M,
}

/// What one party did in one delivery step.
#[derive(Default)]
struct PartyOutput {
    sent: Vec<(PartyId, Vec<u8>)>,
    went_silent: Vec<PartyId>,
    errors: Vec<(PartyId, Error)>,
}

impl<M: Meter> Sim<M> {
    /// Builds a round over `round`'s roster. `identities` and `inputs` are
    /// per party; party randomness comes from `seed`, reproducibly (tests,
    /// benches and the simulator).
    pub fn new(
        round: Round,
        identities: Vec<(PartyId, IdentityKey)>,
        inputs: BTreeMap<PartyId, Vec<u32>>,
        seed: u64,
        meter: M,
    ) -> Result<Self, Error> {
        Self::build(round, identities, inputs, meter, |id| party_rng(seed, id))
    }

    /// As [`Sim::new`], with every party's randomness drawn from a 256-bit
    /// master secret (one ChaCha20 stream per party): for jobs, whose
    /// round secrets must be unpredictable.
    pub fn with_master_secret(
        round: Round,
        identities: Vec<(PartyId, IdentityKey)>,
        inputs: BTreeMap<PartyId, Vec<u32>>,
        master: &zeroize::Zeroizing<[u8; 32]>,
        meter: M,
    ) -> Result<Self, Error> {
        Self::build(round, identities, inputs, meter, |id| {
            let mut rng = ChaCha20Rng::from_seed(**master);
            rng.set_stream(u64::from(id.0));
            rng
        })
    }

    fn build(
        round: Round,
        identities: Vec<(PartyId, IdentityKey)>,
        mut inputs: BTreeMap<PartyId, Vec<u32>>,
        meter: M,
        rng_for: impl Fn(PartyId) -> ChaCha20Rng,
    ) -> Result<Self, Error> {
        let time = Instant::now();
        let coordinator = Coordinator::new(round.clone(), time);
        let mut parties = BTreeMap::new();
        for (id, identity) in identities {
            let mut rng = rng_for(id);
            let input = inputs
                .remove(&id)
                .ok_or_else(|| Error::Config(format!("no input for party {id}")))?;
            let r = round.clone();
            let party = meter.measure(Actor::Party(id), Phase::AdvertiseKeys, || {
                Party::new(r, id, identity, input, &mut rng)
            })?;
            parties.insert(id, (party, rng));
        }
        Ok(Sim {
            coordinator,
            parties,
            drop_at: BTreeMap::new(),
            gone: BTreeSet::new(),
            time,
            tamper: None,
            party_tamper: None,
            observer: None,
            threads: 1,
            party_errors: Vec::new(),
            meter,
        })
    }

    /// `party` goes silent from `phase` on (it sends nothing in that phase).
    pub fn drop_party(&mut self, party: PartyId, phase: Phase) {
        self.drop_at.insert(party, phase);
    }

    pub fn set_tamper(&mut self, tamper: Tamper) {
        self.tamper = Some(tamper);
    }

    pub fn set_party_tamper(&mut self, tamper: PartyTamper) {
        self.party_tamper = Some(tamper);
    }

    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    /// Lets parties work on up to `threads` threads, as they would on
    /// their own machines. The coordinator always runs on one.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    pub fn party(&self, id: PartyId) -> Option<&Party> {
        self.parties.get(&id).map(|(p, _)| p)
    }

    /// Runs `work` for each party that has something to do, spread over the
    /// configured threads, and gathers what the parties sent.
    fn parties_step(
        &mut self,
        mut inbox: BTreeMap<PartyId, Vec<Vec<u8>>>,
        session: &crate::session::SessionId,
    ) -> PartyOutput {
        let drop_at = &self.drop_at;
        let gone = &self.gone;
        let meter = &self.meter;
        let mut slots: Vec<(PartyId, &mut Slot, Vec<Vec<u8>>)> = self
            .parties
            .iter_mut()
            .filter(|(id, _)| !gone.contains(id))
            .map(|(&id, slot)| (id, slot, inbox.remove(&id).unwrap_or_default()))
            .collect();
        let work = |chunk: &mut [(PartyId, &mut Slot, Vec<Vec<u8>>)]| {
            let mut out = PartyOutput::default();
            for (id, (party, rng), msgs) in chunk.iter_mut() {
                let id = *id;
                for bytes in msgs.drain(..) {
                    let phase = party.phase().unwrap_or(Phase::Unmasking);
                    let res =
                        meter.measure(Actor::Party(id), phase, || party.handle_bytes(&bytes, rng));
                    if let Err(e) = res {
                        // A party that refuses goes silent: to the
                        // coordinator, a dropout.
                        out.errors.push((id, e));
                        out.went_silent.push(id);
                        break;
                    }
                }
                while let Some(msg) = party.poll_outgoing() {
                    let phase = msg
                        .kind()
                        .party_phase()
                        .expect("parties send party messages");
                    if drop_at.get(&id).is_some_and(|&p| phase >= p) {
                        out.went_silent.push(id);
                        continue;
                    }
                    let bytes = meter.measure(Actor::Party(id), phase, || msg.encode(session));
                    out.sent.push((id, bytes));
                }
            }
            out
        };
        let per = slots.len().div_ceil(self.threads).max(1);
        let outputs: Vec<PartyOutput> = if self.threads == 1 {
            vec![work(&mut slots)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = slots
                    .chunks_mut(per)
                    .map(|chunk| s.spawn(move || work(chunk)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("party thread panicked"))
                    .collect()
            })
        };
        let mut all = PartyOutput::default();
        for o in outputs {
            all.sent.extend(o.sent);
            all.went_silent.extend(o.went_silent);
            all.errors.extend(o.errors);
        }
        all
    }

    /// Moves the coordinator's queued messages to their recipients' inboxes.
    fn route_outgoing(
        &mut self,
        inbox: &mut BTreeMap<PartyId, Vec<Vec<u8>>>,
        session: &crate::session::SessionId,
    ) {
        while let Some((to, mut msg)) = self.coordinator.poll_outgoing() {
            if self.gone.contains(&to) {
                continue;
            }
            if let Some(t) = self.tamper.as_mut() {
                t(to, &mut msg);
            }
            inbox.entry(to).or_default().push(msg.encode(session));
        }
    }

    /// Runs the round to its end: the aggregate, or the abort reason. The
    /// round is confirmed as soon as it is ready to unmask.
    pub fn run(&mut self) -> Result<Aggregate, Error> {
        self.run_charged(|_| Ok(()))
    }

    /// Runs the round, calling `charge` with the contributors when it is
    /// ready to unmask — the host charges the round there — and unmasking
    /// only if it returns `Ok`; an `Err` aborts the round with that error.
    pub fn run_charged(
        &mut self,
        mut charge: impl FnMut(&[PartyId]) -> Result<(), Error>,
    ) -> Result<Aggregate, Error> {
        let session = *self.coordinator.round().session();
        let mut inbox: BTreeMap<PartyId, Vec<Vec<u8>>> = BTreeMap::new();
        // Five phases, each needing at most a delivery and a timeout.
        for _ in 0..64 {
            let delivered = !inbox.is_empty();
            let out = self.parties_step(std::mem::take(&mut inbox), &session);
            self.gone.extend(out.went_silent);
            self.party_errors.extend(out.errors);
            let moved = delivered || !out.sent.is_empty();
            for (id, mut bytes) in out.sent {
                if let Some(t) = self.party_tamper.as_mut() {
                    let (_, mut msg) = Message::decode(&bytes).expect("own encoding decodes");
                    t(id, &mut msg);
                    bytes = msg.encode(&session);
                }
                if let Some(o) = self.observer.as_mut() {
                    let (_, msg) = Message::decode(&bytes).expect("own encoding decodes");
                    o(id, &msg);
                }
                let coord = &mut self.coordinator;
                let now = self.time;
                let cphase = coord.phase().unwrap_or(Phase::Unmasking);
                // A refused party message is the party's fault; the
                // coordinator's state is unchanged and the round goes on.
                let _ = self.meter.measure(Actor::Coordinator, cphase, || {
                    coord.handle_bytes(now, id, &bytes)
                });
            }
            self.route_outgoing(&mut inbox, &session);
            while let Some(ev) = self.coordinator.poll_event() {
                match ev {
                    Event::Finished(a) => return Ok(a),
                    Event::Aborted(e) => return Err(e),
                    Event::PhaseClosed { .. } => {}
                    Event::ReadyToUnmask { contributors } => {
                        match charge(&contributors) {
                            Ok(()) => self
                                .coordinator
                                .confirm_unmask(self.time)
                                .expect("the round awaits confirmation"),
                            Err(e) => self.coordinator.abort(e),
                        }
                        self.route_outgoing(&mut inbox, &session);
                    }
                }
            }
            if !moved && inbox.is_empty() {
                let Some(deadline) = self.coordinator.poll_timeout() else {
                    return Err(Error::Closed);
                };
                self.time = deadline;
                let coord = &mut self.coordinator;
                let now = self.time;
                let cphase = coord.phase().unwrap_or(Phase::Unmasking);
                self.meter
                    .measure(Actor::Coordinator, cphase, || coord.handle_timeout(now));
            }
        }
        Err(Error::Closed)
    }
}

/// Per-party randomness for simulations, reproducible from one seed.
pub fn party_rng(seed: u64, id: PartyId) -> ChaCha20Rng {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8..12].copy_from_slice(&id.0.to_le_bytes());
    s[12..16].copy_from_slice(b"prty");
    ChaCha20Rng::from_seed(s)
}

/// A whole round's parameters with generated identities and inputs, all
/// reproducible from `seed`: the fixture shared by tests, benches and the
/// `secagg-sim` command.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub parties: u32,
    pub len: usize,
    pub bits: u8,
    pub threshold: usize,
    /// Parties assumed to collude with the coordinator (bounds the threshold).
    pub max_colluding: usize,
    pub graph: crate::graph::GraphSpec,
    pub active: bool,
    pub seed: u64,
}

impl Scenario {
    fn rng(&self, label: &[u8; 4]) -> ChaCha20Rng {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&self.seed.to_le_bytes());
        s[8..12].copy_from_slice(label);
        ChaCha20Rng::from_seed(s)
    }

    /// Identity keys for parties `0..parties`.
    pub fn identities(&self) -> Vec<(PartyId, IdentityKey)> {
        let mut rng = self.rng(b"idty");
        (0..self.parties)
            .map(|i| (PartyId(i), IdentityKey::generate(&mut rng)))
            .collect()
    }

    pub fn round(&self, identities: &[(PartyId, IdentityKey)]) -> Result<Round, Error> {
        let mut graph_seed = [0u8; 32];
        rand_chacha::rand_core::RngCore::fill_bytes(&mut self.rng(b"grph"), &mut graph_seed);
        Round::new(crate::config::RoundConfig {
            session: crate::session::SessionParams {
                consortium: "sim-consortium".into(),
                job: "sim-job".into(),
                round: 1,
                task: 0,
            },
            roster: identities.iter().map(|(id, k)| (*id, k.public())).collect(),
            threshold: self.threshold,
            max_colluding: self.max_colluding,
            graph: self.graph,
            graph_seed,
            bits: self.bits,
            len: self.len,
            active: self.active,
            phase_timeout: std::time::Duration::from_secs(30),
        })
    }

    /// Uniform inputs mod `2^bits`, one vector per party.
    pub fn inputs(&self) -> BTreeMap<PartyId, Vec<u32>> {
        let mut rng = self.rng(b"inpt");
        let mask = crate::config::word_mask(self.bits);
        (0..self.parties)
            .map(|i| {
                let v = (0..self.len)
                    .map(|_| rand_chacha::rand_core::RngCore::next_u32(&mut rng) & mask)
                    .collect();
                (PartyId(i), v)
            })
            .collect()
    }

    pub fn sim<M: Meter>(
        &self,
        inputs: &BTreeMap<PartyId, Vec<u32>>,
        meter: M,
    ) -> Result<Sim<M>, Error> {
        let identities = self.identities();
        let round = self.round(&identities)?;
        Sim::new(round, identities, inputs.clone(), self.seed, meter)
    }
}

/// The plain sum mod `2^bits` of the contributors' inputs: what a correct
/// round must output.
pub fn plain_sum(
    inputs: &BTreeMap<PartyId, Vec<u32>>,
    contributors: &[PartyId],
    bits: u8,
) -> Vec<u32> {
    let len = inputs.values().next().map_or(0, Vec::len);
    let mut sum = vec![0u32; len];
    for p in contributors {
        for (s, x) in sum.iter_mut().zip(&inputs[p]) {
            *s = s.wrapping_add(*x);
        }
    }
    let mask = crate::config::word_mask(bits);
    sum.iter_mut().for_each(|s| *s &= mask);
    sum
}
