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

/// Measures work; the simulator itself reads no clock.
pub trait Meter {
    fn measure<R>(&mut self, actor: Actor, phase: Phase, work: impl FnOnce() -> R) -> R;
}

/// A meter that measures nothing.
pub struct NoMeter;

impl Meter for NoMeter {
    fn measure<R>(&mut self, _: Actor, _: Phase, work: impl FnOnce() -> R) -> R {
        work()
    }
}

/// Rewrites a message from the coordinator before its recipient sees it:
/// how tests play a lying coordinator.
pub type Tamper = Box<dyn FnMut(PartyId, &mut Message)>;

/// Sees every message a party sends that reaches the coordinator.
pub type Observer = Box<dyn FnMut(PartyId, &Message)>;

pub struct Sim<M: Meter = NoMeter> {
    pub coordinator: Coordinator,
    parties: BTreeMap<PartyId, (Party, ChaCha20Rng)>,
    /// Each listed party sends nothing from this phase on.
    drop_at: BTreeMap<PartyId, Phase>,
    gone: BTreeSet<PartyId>,
    time: Instant,
    tamper: Option<Tamper>,
    observer: Option<Observer>,
    /// Errors parties raised on refusing a coordinator message.
    pub party_errors: Vec<(PartyId, Error)>,
    pub meter: M,
}

impl<M: Meter> Sim<M> {
    /// Builds a round over `round`'s roster. `identities` and `inputs` are
    /// per party; party randomness comes from `seed`.
    pub fn new(
        round: Round,
        identities: Vec<(PartyId, IdentityKey)>,
        mut inputs: BTreeMap<PartyId, Vec<u32>>,
        seed: u64,
        meter: M,
    ) -> Result<Self, Error> {
        let time = Instant::now();
        let mut meter = meter;
        let coordinator = Coordinator::new(round.clone(), time);
        let mut parties = BTreeMap::new();
        for (id, identity) in identities {
            let mut rng = party_rng(seed, id);
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
            observer: None,
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

    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    pub fn party(&self, id: PartyId) -> Option<&Party> {
        self.parties.get(&id).map(|(p, _)| p)
    }

    /// Runs the round to its end: the aggregate, or the abort reason.
    pub fn run(&mut self) -> Result<Aggregate, Error> {
        let session = *self.coordinator.round().session();
        // Five phases, each needing at most a delivery and a timeout.
        for _ in 0..64 {
            let mut moved = false;
            for (&id, (party, _)) in self.parties.iter_mut() {
                while let Some(msg) = party.poll_outgoing() {
                    let phase = msg
                        .kind()
                        .party_phase()
                        .expect("parties send party messages");
                    if self.drop_at.get(&id).is_some_and(|&p| phase >= p) {
                        self.gone.insert(id);
                        continue;
                    }
                    if let Some(o) = self.observer.as_mut() {
                        o(id, &msg);
                    }
                    let bytes = msg.encode(&session);
                    let coord = &mut self.coordinator;
                    let now = self.time;
                    let cphase = coord.phase().unwrap_or(Phase::Unmasking);
                    // A refused party message is the party's fault; the
                    // coordinator's state is unchanged and the round goes on.
                    let _ = self.meter.measure(Actor::Coordinator, cphase, || {
                        coord.handle_bytes(now, id, &bytes)
                    });
                    moved = true;
                }
            }
            while let Some((to, mut msg)) = self.coordinator.poll_outgoing() {
                if self.gone.contains(&to) {
                    continue;
                }
                if let Some(t) = self.tamper.as_mut() {
                    t(to, &mut msg);
                }
                let bytes = msg.encode(&session);
                let (party, rng) = self
                    .parties
                    .get_mut(&to)
                    .expect("coordinator sends to roster");
                let phase = party.phase().unwrap_or(Phase::Unmasking);
                let res = self
                    .meter
                    .measure(Actor::Party(to), phase, || party.handle_bytes(&bytes, rng));
                if let Err(e) = res {
                    // A party that refuses goes silent: to the coordinator,
                    // a dropout.
                    self.party_errors.push((to, e));
                    self.gone.insert(to);
                }
                moved = true;
            }
            while let Some(ev) = self.coordinator.poll_event() {
                match ev {
                    Event::Finished(a) => return Ok(a),
                    Event::Aborted(e) => return Err(e),
                    Event::PhaseClosed { .. } => {}
                }
            }
            if !moved {
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
