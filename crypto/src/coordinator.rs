//! The coordinator's side of one secure-sum round, as a sans-IO state
//! machine. It routes ciphertexts it cannot read, sums masked inputs as they
//! arrive (one accumulator, never one vector per party), and at the end
//! reconstructs the secrets it is owed and strips the masks chunk by chunk.
//!
//! Inputs: [`Coordinator::handle`] / [`Coordinator::handle_bytes`] and
//! [`Coordinator::handle_timeout`]. Outputs: [`Coordinator::poll_outgoing`],
//! [`Coordinator::poll_event`], [`Coordinator::poll_timeout`]. It reads no
//! clock: the caller passes `now`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use subtle::ConstantTimeEq;

use crate::agreement::DhSecret;
use crate::config::Round;
use crate::error::{Error, Misbehaviour, Peer, Phase, SecretKind};
use crate::ids::PartyId;
use crate::message::{
    EncryptedShare, KeyAdvertisement, MaskedVector, Message, MessageKind, RevealedShare,
    SurvivorSignature, UnmaskRequest, UnmaskResponse,
};
use crate::party::{pairwise_seed, self_mask_seed};
use crate::prg::{apply_all, MaskStream, Sign};
use crate::shamir::{self, Interpolator, SecretShare, SharedSecret};
use crate::transcript;

/// What the coordinator reports.
#[derive(Debug)]
pub enum Event {
    /// A phase closed with these parties having answered.
    PhaseClosed { phase: Phase, answered: usize },
    /// The masked inputs are in (and, in active mode, the survivor list is
    /// signed): the next step sends unmask requests, the first moment
    /// anything of the round could be decoded. The coordinator holds them
    /// until the host calls [`Coordinator::confirm_unmask`] — after charging
    /// the round durably — or [`Coordinator::abort`]. A round that ends
    /// before this event revealed nothing.
    ReadyToUnmask { contributors: Vec<PartyId> },
    /// The round finished: the sum over `contributors`.
    Finished(Aggregate),
    /// The round could not finish.
    Aborted(Error),
}

/// The unmasked result: `Σ x_u mod 2^bits` over the contributors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    pub sum: Vec<u32>,
    pub bits: u8,
    /// Parties whose input is in the sum (U3).
    pub contributors: Vec<PartyId>,
    /// Parties that advertised keys but whose input is not in the sum.
    pub dropped: Vec<PartyId>,
    /// Revealed shares that lay off the polynomial the owner dealt; the sum
    /// was still recovered exactly from the others.
    pub bad_shares: Vec<BadShare>,
}

/// A responder revealed a share of `of`'s secret that was not the one dealt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BadShare {
    pub responder: PartyId,
    pub of: PartyId,
    pub secret: SecretKind,
}

/// Counters about the coordinator's work.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoordinatorStats {
    /// Mask keystream bytes regenerated during unmasking.
    pub keystream_bytes: u64,
    /// Self-mask seeds and mask keys reconstructed.
    pub reconstructions: u64,
}

pub struct Coordinator {
    round: Round,
    state: State,
    deadline: Instant,
    outgoing: VecDeque<(PartyId, Message)>,
    events: VecDeque<Event>,
    stats: CoordinatorStats,
    finished: Option<Aggregate>,
    /// Contributors of a round that just became ready to unmask.
    ready: Option<Vec<PartyId>>,
}

/// Per-phase state. Each phase keeps what later phases need and no more.
enum State {
    Keys {
        adverts: BTreeMap<PartyId, KeyAdvertisement>,
    },
    Shares {
        u1: BTreeMap<PartyId, KeyAdvertisement>,
        shares: BTreeMap<PartyId, Vec<EncryptedShare>>,
    },
    Masked(Box<Masked>),
    Check(Box<Check>),
    /// Waiting for the host's go-ahead to send unmask requests.
    AwaitConfirm(Box<Pending>),
    Unmask(Box<Unmask>),
    Closed,
}

/// Everything unmasking needs, held until the host confirms.
struct Pending {
    u1: BTreeMap<PartyId, KeyAdvertisement>,
    u2: BTreeSet<PartyId>,
    sum: Vec<u32>,
    u3: Vec<PartyId>,
    asked: BTreeSet<PartyId>,
    signatures: BTreeMap<PartyId, SurvivorSignature>,
}

struct Masked {
    u1: BTreeMap<PartyId, KeyAdvertisement>,
    u2: BTreeSet<PartyId>,
    sum: Vec<u32>,
    u3: BTreeSet<PartyId>,
}

struct Check {
    u1: BTreeMap<PartyId, KeyAdvertisement>,
    u2: BTreeSet<PartyId>,
    sum: Vec<u32>,
    u3: Vec<PartyId>,
    signatures: BTreeMap<PartyId, SurvivorSignature>,
}

struct Unmask {
    u1: BTreeMap<PartyId, KeyAdvertisement>,
    u2: BTreeSet<PartyId>,
    sum: Vec<u32>,
    u3: Vec<PartyId>,
    /// Parties asked to unmask (U4 in active mode, U3 otherwise).
    asked: BTreeSet<PartyId>,
    responses: BTreeMap<PartyId, UnmaskResponse>,
}

impl Coordinator {
    pub fn new(round: Round, now: Instant) -> Self {
        let deadline = now + round.config.phase_timeout;
        Coordinator {
            round,
            state: State::Keys {
                adverts: BTreeMap::new(),
            },
            deadline,
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
            stats: CoordinatorStats::default(),
            finished: None,
            ready: None,
        }
    }

    pub fn round(&self) -> &Round {
        &self.round
    }

    pub fn stats(&self) -> CoordinatorStats {
        self.stats
    }

    /// The phase being collected; `None` once the round is over.
    pub fn phase(&self) -> Option<Phase> {
        Some(match self.state {
            State::Keys { .. } => Phase::AdvertiseKeys,
            State::Shares { .. } => Phase::ShareKeys,
            State::Masked(_) => Phase::MaskedInput,
            State::Check(_) => Phase::ConsistencyCheck,
            State::AwaitConfirm(_) | State::Unmask(_) => Phase::Unmasking,
            State::Closed => return None,
        })
    }

    /// Whether the round waits for [`Coordinator::confirm_unmask`].
    pub fn awaiting_confirm(&self) -> bool {
        matches!(self.state, State::AwaitConfirm(_))
    }

    /// Sends the unmask requests the round holds: call once the round is
    /// charged durably. Starts the unmasking deadline at `now`.
    pub fn confirm_unmask(&mut self, now: Instant) -> Result<(), Error> {
        if !self.awaiting_confirm() {
            return Err(Error::NotAwaitingConfirmation);
        }
        let State::AwaitConfirm(p) = std::mem::replace(&mut self.state, State::Closed) else {
            unreachable!("checked above")
        };
        let Pending {
            u1,
            u2,
            sum,
            u3,
            asked,
            signatures,
        } = *p;
        self.state = self.start_unmasking(u1, u2, sum, u3, asked, &signatures);
        self.deadline = now + self.round.config.phase_timeout;
        Ok(())
    }

    /// Ends the round here: nothing more is sent, and the reason is
    /// reported as [`Event::Aborted`].
    pub fn abort(&mut self, reason: Error) {
        if self.phase().is_none() {
            return;
        }
        self.state = State::Closed;
        self.outgoing.clear();
        self.events.push_back(Event::Aborted(reason));
    }

    #[must_use]
    pub fn poll_outgoing(&mut self) -> Option<(PartyId, Message)> {
        self.outgoing.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When the current phase closes if not everyone answers.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.awaiting_confirm() {
            return None;
        }
        self.phase().map(|_| self.deadline)
    }

    /// Closes the current phase once its deadline has passed: the parties
    /// that have not answered are dropouts from then on.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase().is_some() && !self.awaiting_confirm() && now >= self.deadline {
            self.close_phase(now);
        }
    }

    /// Decodes and handles bytes from an authenticated party.
    pub fn handle_bytes(&mut self, now: Instant, from: PartyId, bytes: &[u8]) -> Result<(), Error> {
        let (session, msg) = Message::decode(bytes)?;
        if session != self.round.session {
            return Err(Error::misbehaved(
                Peer::Party(from),
                Misbehaviour::WrongSession,
            ));
        }
        self.handle(now, from, msg)
    }

    /// Handles a message from `from` (authenticated by the transport). A
    /// refused message changes nothing.
    pub fn handle(&mut self, now: Instant, from: PartyId, msg: Message) -> Result<(), Error> {
        if self.phase().is_none() {
            return Err(Error::Closed);
        }
        let bad = |kind| Error::misbehaved(Peer::Party(from), kind);
        if !self.round.config.roster.contains_key(&from) {
            return Err(bad(Misbehaviour::UnexpectedParty(from)));
        }
        let round = &self.round;
        let all_in = match (&mut self.state, msg) {
            (State::Keys { adverts }, Message::AdvertiseKeys(a)) => {
                if a.party != from {
                    return Err(bad(Misbehaviour::SenderMismatch { claimed: a.party }));
                }
                if adverts.contains_key(&from) {
                    return Err(bad(Misbehaviour::Replay));
                }
                let msg = transcript::advert(&round.session, &a);
                if !round.config.roster[&from].verify(&msg, &a.signature) {
                    return Err(bad(Misbehaviour::BadSignature { signer: from }));
                }
                adverts.insert(from, a);
                adverts.len() == round.config.roster.len()
            }
            (State::Shares { u1, shares }, Message::EncryptedShares(list)) => {
                if !u1.contains_key(&from) {
                    return Err(bad(Misbehaviour::UnexpectedParty(from)));
                }
                if shares.contains_key(&from) {
                    return Err(bad(Misbehaviour::Replay));
                }
                let expected: Vec<PartyId> = round
                    .graph
                    .neighbours(from)
                    .into_iter()
                    .filter(|v| u1.contains_key(v))
                    .collect();
                let mut to: Vec<PartyId> = Vec::with_capacity(list.len());
                for s in &list {
                    if s.from != from {
                        return Err(bad(Misbehaviour::SenderMismatch { claimed: s.from }));
                    }
                    to.push(s.to);
                }
                to.sort_unstable();
                if to != expected {
                    let stray = to
                        .iter()
                        .find(|v| expected.binary_search(v).is_err())
                        .copied();
                    return Err(bad(match stray {
                        Some(v) => Misbehaviour::NotNeighbour(v),
                        None => Misbehaviour::WrongLength {
                            expected: expected.len(),
                            got: list.len(),
                        },
                    }));
                }
                shares.insert(from, list);
                shares.len() == u1.len()
            }
            (State::Masked(st), Message::MaskedInput(v)) => {
                check_masked(round, from, &v, &st.u2, &st.u3)?;
                for (acc, w) in st.sum.iter_mut().zip(&v.words) {
                    *acc = acc.wrapping_add(*w);
                }
                st.u3.insert(from);
                st.u3.len() == st.u2.len()
            }
            (State::Check(st), Message::SurvivorSignature(s)) => {
                if s.party != from {
                    return Err(bad(Misbehaviour::SenderMismatch { claimed: s.party }));
                }
                if st.u3.binary_search(&from).is_err() {
                    return Err(bad(Misbehaviour::UnexpectedParty(from)));
                }
                if st.signatures.contains_key(&from) {
                    return Err(bad(Misbehaviour::Replay));
                }
                let msg = transcript::survivors(&round.session, &st.u3);
                if !round.config.roster[&from].verify(&msg, &s.signature) {
                    return Err(bad(Misbehaviour::BadSignature { signer: from }));
                }
                st.signatures.insert(from, s);
                st.signatures.len() == st.u3.len()
            }
            (State::Unmask(st), Message::UnmaskResponse(r)) => {
                check_response(round, from, &r, st)?;
                st.responses.insert(from, r);
                st.responses.len() == st.asked.len()
            }
            (_, msg) => {
                return Err(Error::UnexpectedMessage {
                    expected: self.expected_kind(),
                    got: msg.kind(),
                })
            }
        };
        if all_in {
            self.close_phase(now);
        }
        Ok(())
    }

    fn expected_kind(&self) -> &'static str {
        match self.state {
            State::Keys { .. } => "advertise-keys",
            State::Shares { .. } => "encrypted-shares",
            State::Masked(_) => "masked-input",
            State::Check(_) => "survivor-signature",
            State::AwaitConfirm(_) => "nothing (unmask requests are not out yet)",
            State::Unmask(_) => "unmask-response",
            State::Closed => "nothing (the round is over)",
        }
    }

    fn close_phase(&mut self, now: Instant) {
        let phase = self.phase().expect("closing an open phase");
        let state = std::mem::replace(&mut self.state, State::Closed);
        match self.advance(state) {
            Ok((next, answered)) => {
                self.events
                    .push_back(Event::PhaseClosed { phase, answered });
                self.state = next;
                self.deadline = now + self.round.config.phase_timeout;
                if let Some(contributors) = self.ready.take() {
                    self.events.push_back(Event::ReadyToUnmask { contributors });
                }
                if let Some(aggregate) = self.finished.take() {
                    self.events.push_back(Event::Finished(aggregate));
                }
            }
            Err(e) => {
                self.outgoing.clear();
                self.events.push_back(Event::Aborted(e));
            }
        }
    }

    fn enough(&self, phase: Phase, answered: usize) -> Result<(), Error> {
        let needed = self.round.config.threshold;
        if answered < needed {
            return Err(Error::TooFewParties {
                phase,
                answered,
                needed,
            });
        }
        Ok(())
    }

    fn advance(&mut self, state: State) -> Result<(State, usize), Error> {
        match state {
            State::Keys { adverts } => {
                self.enough(Phase::AdvertiseKeys, adverts.len())?;
                for &u in adverts.keys() {
                    let list = self
                        .round
                        .graph
                        .neighbours(u)
                        .into_iter()
                        .filter_map(|v| adverts.get(&v).cloned())
                        .collect();
                    self.outgoing.push_back((u, Message::KeyRoster(list)));
                }
                let n = adverts.len();
                Ok((
                    State::Shares {
                        u1: adverts,
                        shares: BTreeMap::new(),
                    },
                    n,
                ))
            }
            State::Shares { u1, shares } => {
                self.enough(Phase::ShareKeys, shares.len())?;
                let u2: BTreeSet<PartyId> = shares.keys().copied().collect();
                let mut inbox: BTreeMap<PartyId, Vec<EncryptedShare>> =
                    u2.iter().map(|&v| (v, Vec::new())).collect();
                for list in shares.into_values() {
                    for s in list {
                        if let Some(b) = inbox.get_mut(&s.to) {
                            b.push(s);
                        }
                    }
                }
                for (to, list) in inbox {
                    self.outgoing.push_back((to, Message::ShareDelivery(list)));
                }
                let n = u2.len();
                let len = self.round.config.len;
                Ok((
                    State::Masked(Box::new(Masked {
                        u1,
                        u2,
                        sum: vec![0; len],
                        u3: BTreeSet::new(),
                    })),
                    n,
                ))
            }
            State::Masked(st) => {
                let Masked { u1, u2, sum, u3 } = *st;
                self.enough(Phase::MaskedInput, u3.len())?;
                let u3: Vec<PartyId> = u3.into_iter().collect();
                let n = u3.len();
                if self.round.config.active {
                    for &u in &u3 {
                        self.outgoing
                            .push_back((u, Message::SurvivorList(u3.clone())));
                    }
                    Ok((
                        State::Check(Box::new(Check {
                            u1,
                            u2,
                            sum,
                            u3,
                            signatures: BTreeMap::new(),
                        })),
                        n,
                    ))
                } else {
                    let asked: BTreeSet<PartyId> = u3.iter().copied().collect();
                    let next = self.hold_unmasking(u1, u2, sum, u3, asked, BTreeMap::new());
                    Ok((next, n))
                }
            }
            State::Check(st) => {
                let Check {
                    u1,
                    u2,
                    sum,
                    u3,
                    signatures,
                } = *st;
                self.enough(Phase::ConsistencyCheck, signatures.len())?;
                let asked: BTreeSet<PartyId> = signatures.keys().copied().collect();
                let n = asked.len();
                let next = self.hold_unmasking(u1, u2, sum, u3, asked, signatures);
                Ok((next, n))
            }
            State::AwaitConfirm(_) => unreachable!("no phase closes while awaiting confirmation"),
            State::Unmask(st) => {
                self.enough(Phase::Unmasking, st.responses.len())?;
                let n = st.responses.len();
                self.finished = Some(self.unmask(*st)?);
                Ok((State::Closed, n))
            }
            State::Closed => Err(Error::Closed),
        }
    }

    /// Holds the unmask requests until the host confirms the round is
    /// charged.
    fn hold_unmasking(
        &mut self,
        u1: BTreeMap<PartyId, KeyAdvertisement>,
        u2: BTreeSet<PartyId>,
        sum: Vec<u32>,
        u3: Vec<PartyId>,
        asked: BTreeSet<PartyId>,
        signatures: BTreeMap<PartyId, SurvivorSignature>,
    ) -> State {
        self.ready = Some(u3.clone());
        State::AwaitConfirm(Box::new(Pending {
            u1,
            u2,
            sum,
            u3,
            asked,
            signatures,
        }))
    }

    /// Asks `asked` to unmask and moves to collecting their responses.
    fn start_unmasking(
        &mut self,
        u1: BTreeMap<PartyId, KeyAdvertisement>,
        u2: BTreeSet<PartyId>,
        sum: Vec<u32>,
        u3: Vec<PartyId>,
        asked: BTreeSet<PartyId>,
        signatures: &BTreeMap<PartyId, SurvivorSignature>,
    ) -> State {
        self.request_unmask(&u2, &u3, &asked, signatures);
        State::Unmask(Box::new(Unmask {
            u1,
            u2,
            sum,
            u3,
            asked,
            responses: BTreeMap::new(),
        }))
    }

    /// Sends each party the survivor and dropout lists and, in active mode,
    /// the signatures over the list from the party and its neighbours.
    fn request_unmask(
        &mut self,
        u2: &BTreeSet<PartyId>,
        u3: &[PartyId],
        asked: &BTreeSet<PartyId>,
        signatures: &BTreeMap<PartyId, SurvivorSignature>,
    ) {
        let dropped: Vec<PartyId> = u2
            .iter()
            .copied()
            .filter(|v| u3.binary_search(v).is_err())
            .collect();
        for &u in asked {
            let sigs = signatures
                .values()
                .filter(|s| s.party == u || self.round.graph.adjacent(u, s.party))
                .cloned()
                .collect();
            self.outgoing.push_back((
                u,
                Message::UnmaskRequest(UnmaskRequest {
                    survivors: u3.to_vec(),
                    dropped: dropped.clone(),
                    signatures: sigs,
                }),
            ));
        }
    }

    /// Reconstructs every owed secret, regenerates the masks and removes them
    /// from the running sum, one cache-sized chunk at a time.
    fn unmask(&mut self, st: Unmask) -> Result<Aggregate, Error> {
        let Unmask {
            u1,
            u2,
            mut sum,
            u3,
            responses,
            ..
        } = st;
        let session = self.round.session;
        let t = self.round.config.threshold;
        let mut seed_shares: BTreeMap<PartyId, Vec<SecretShare>> = BTreeMap::new();
        let mut key_shares: BTreeMap<PartyId, Vec<SecretShare>> = BTreeMap::new();
        for r in responses.into_values() {
            for RevealedShare { of, share } in r.seed_shares {
                seed_shares.entry(of).or_default().push(share);
            }
            for RevealedShare { of, share } in r.key_shares {
                key_shares.entry(of).or_default().push(share);
            }
        }
        let mut opener = Opener {
            threshold: t,
            max_colluding: self.round.config.max_colluding,
            lagrange: HashMap::new(),
            bad: BTreeSet::new(),
        };

        let mut streams: Vec<(MaskStream, Sign)> = Vec::new();
        for &v in &u3 {
            let commitment = u1[&v].seed_commitment;
            let b = opener.open(v, SecretKind::SelfMaskSeed, seed_shares.get_mut(&v), |b| {
                commitment.opens_to(&session, v, b)
            })?;
            streams.push((MaskStream::new(&self_mask_seed(&session, v, &b)), Sign::Sub));
        }
        let dropped: Vec<PartyId> = u2
            .iter()
            .copied()
            .filter(|v| u3.binary_search(v).is_err())
            .collect();
        for &v in &dropped {
            let advertised = u1[&v].mask_key;
            let scalar = opener.open(v, SecretKind::MaskKey, key_shares.get_mut(&v), |m| {
                let derived = DhSecret::from_mask_scalar(&session, v, m).public();
                bool::from(derived.as_bytes().ct_eq(advertised.as_bytes()))
            })?;
            let secret = DhSecret::from_mask_scalar(&session, v, &scalar);
            for w in self.round.graph.neighbours(v) {
                if u3.binary_search(&w).is_err() {
                    continue;
                }
                let seed = pairwise_seed(&session, &secret, v, w, &u1[&w].mask_key)?;
                // w added +PRG(s_wv) if v > w and −PRG(s_wv) otherwise.
                let added = if v > w { Sign::Add } else { Sign::Sub };
                streams.push((MaskStream::new(&seed), added.flip()));
            }
        }
        self.stats.reconstructions += (u3.len() + dropped.len()) as u64;
        self.stats.keystream_bytes += apply_all(&mut sum, &mut streams);
        let mask = self.round.mask();
        sum.iter_mut().for_each(|w| *w &= mask);
        let all: Vec<PartyId> = u1.keys().copied().collect();
        Ok(Aggregate {
            sum,
            bits: self.round.config.bits,
            dropped: all
                .into_iter()
                .filter(|v| u3.binary_search(v).is_err())
                .collect(),
            contributors: u3,
            bad_shares: opener.bad.into_iter().collect(),
        })
    }
}

/// Reconstructs the secrets owed at unmasking, each checked against what
/// its owner committed to. Lagrange coefficients are computed once per set
/// of responders; responders already caught with a bad share are used last.
struct Opener {
    threshold: usize,
    max_colluding: usize,
    lagrange: HashMap<Vec<PartyId>, Interpolator>,
    bad: BTreeSet<BadShare>,
}

impl Opener {
    fn open(
        &mut self,
        of: PartyId,
        secret: SecretKind,
        shares: Option<&mut Vec<SecretShare>>,
        accept: impl Fn(&SharedSecret) -> bool,
    ) -> Result<SharedSecret, Error> {
        let mut none = Vec::new();
        let shares = shares.unwrap_or(&mut none);
        let t = self.threshold;
        if shares.len() < t {
            return Err(Error::NotEnoughShares {
                of,
                have: shares.len(),
                needed: t,
            });
        }
        let suspect =
            |s: &SecretShare, bad: &BTreeSet<BadShare>| bad.iter().any(|b| b.responder == s.holder);
        shares.sort_by_key(|s| suspect(s, &self.bad));
        let used = &shares[..t];
        let holders: Vec<PartyId> = used.iter().map(|s| s.holder).collect();
        let interp = match self.lagrange.entry(holders) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let i = Interpolator::new(e.key()).expect("responders are distinct");
                e.insert(i)
            }
        };
        let first = interp
            .combine(used)
            .expect("one share per holder, in the holders' order");
        if accept(&first) {
            return Ok(first);
        }
        let found = shamir::recover(shares, t, self.max_colluding, &accept)
            .expect("enough distinct shares, checked above");
        let Some(found) = found else {
            return Err(Error::SecretUnrecoverable {
                of,
                secret,
                shares: shares.len(),
            });
        };
        self.bad
            .extend(found.bad_holders.iter().map(|&responder| BadShare {
                responder,
                of,
                secret,
            }));
        Ok(found.secret)
    }
}

fn check_masked(
    round: &Round,
    from: PartyId,
    v: &MaskedVector,
    u2: &BTreeSet<PartyId>,
    u3: &BTreeSet<PartyId>,
) -> Result<(), Error> {
    let bad = |kind| Err(Error::misbehaved(Peer::Party(from), kind));
    if v.party != from {
        return bad(Misbehaviour::SenderMismatch { claimed: v.party });
    }
    if !u2.contains(&from) {
        return bad(Misbehaviour::UnexpectedParty(from));
    }
    if u3.contains(&from) {
        return bad(Misbehaviour::Replay);
    }
    if v.bits != round.config.bits {
        return bad(Misbehaviour::WrongBits {
            expected: round.config.bits,
            got: v.bits,
        });
    }
    if v.words.len() != round.config.len {
        return bad(Misbehaviour::WrongLength {
            expected: round.config.len,
            got: v.words.len(),
        });
    }
    let mask = round.mask();
    if let Some(index) = v.words.iter().position(|w| w & !mask != 0) {
        return bad(Misbehaviour::WordOutOfRange { index });
    }
    Ok(())
}

/// A response may only reveal shares the sender holds, of the kind the
/// request asked for: self-mask shares of survivors, key shares of dropouts.
fn check_response(
    round: &Round,
    from: PartyId,
    r: &UnmaskResponse,
    st: &Unmask,
) -> Result<(), Error> {
    let bad = |kind| Err(Error::misbehaved(Peer::Party(from), kind));
    if r.party != from {
        return bad(Misbehaviour::SenderMismatch { claimed: r.party });
    }
    if !st.asked.contains(&from) {
        return bad(Misbehaviour::UnexpectedParty(from));
    }
    if st.responses.contains_key(&from) {
        return bad(Misbehaviour::Replay);
    }
    let holds = |of: PartyId| st.u2.contains(&of) && (of == from || round.graph.adjacent(of, from));
    for s in &r.seed_shares {
        if !holds(s.of) || st.u3.binary_search(&s.of).is_err() {
            return bad(Misbehaviour::UnexpectedParty(s.of));
        }
    }
    for s in &r.key_shares {
        if !holds(s.of) || st.u3.binary_search(&s.of).is_ok() {
            return bad(Misbehaviour::UnexpectedParty(s.of));
        }
    }
    Ok(())
}

impl MessageKind {
    /// The phase in which a party sends this kind of message.
    pub fn party_phase(self) -> Option<Phase> {
        Some(match self {
            MessageKind::AdvertiseKeys => Phase::AdvertiseKeys,
            MessageKind::EncryptedShares => Phase::ShareKeys,
            MessageKind::MaskedInput => Phase::MaskedInput,
            MessageKind::SurvivorSignature => Phase::ConsistencyCheck,
            MessageKind::UnmaskResponse => Phase::Unmasking,
            _ => return None,
        })
    }
}
