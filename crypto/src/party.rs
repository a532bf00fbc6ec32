//! The party's side of one secure-sum round, as a sans-IO state machine.
//!
//! Messages go in through [`Party::handle`] (or [`Party::handle_bytes`]) and
//! replies come out of [`Party::poll_outgoing`]. A message that fails any
//! check is refused with an error and leaves the state exactly as it was.
//! Each phase is a type that holds only what the next step needs; secrets
//! that are no longer needed are dropped (and so wiped) at the transition.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::agreement::{DhPublicKey, DhSecret};
use crate::commitment::SeedCommitment;
use crate::config::Round;
use crate::error::{Error, InvalidMessage, Misbehaviour, Peer, Phase};
use crate::identity::IdentityKey;
use crate::ids::PartyId;
use crate::kdf::{derive, Purpose};
use crate::message::{
    EncryptedShare, KeyAdvertisement, MaskedVector, Message, RevealedShare, SurvivorSignature,
    UnmaskRequest, UnmaskResponse,
};
use crate::prg::{apply_all, MaskSeed, MaskStream, Sign};
#[cfg(test)]
use crate::shamir::SecretShare;
use crate::shamir::{split, SharedSecret};
use crate::share_box::{open, seal, SharePair, ShareSecret};
use crate::transcript;

/// Counters a party keeps about its own work.
#[derive(Clone, Copy, Debug, Default)]
pub struct PartyStats {
    /// Mask keystream bytes generated for the masked input.
    pub keystream_bytes: u64,
}

/// One party in one round.
pub struct Party {
    round: Round,
    id: PartyId,
    identity: IdentityKey,
    phase: ClientPhase,
    outgoing: VecDeque<Message>,
    stats: PartyStats,
}

enum ClientPhase {
    AwaitRoster(Box<AwaitRoster>),
    AwaitDelivery(Box<AwaitDelivery>),
    AwaitSurvivors(Box<AwaitSurvivors>),
    AwaitUnmask(Box<AwaitUnmask>),
    Done,
}

struct AwaitRoster {
    enc: DhSecret,
    mask_scalar: SharedSecret,
    mask: DhSecret,
    /// `b_u`, drawn now so that its commitment is signed with the keys.
    seed: SharedSecret,
    input: Zeroizing<Vec<u32>>,
}

struct AwaitDelivery {
    /// Share-encryption agreements with each advertised neighbour.
    share_secrets: BTreeMap<PartyId, ShareSecret>,
    mask: DhSecret,
    seed: SharedSecret,
    input: Zeroizing<Vec<u32>>,
    /// Neighbours that advertised keys (U1 ∩ N(u)).
    peers: BTreeMap<PartyId, KeyAdvertisement>,
    own: SharePair,
}

/// Everything the share-keys step makes, before the phase changes.
struct PreparedShares {
    own: SharePair,
    out: Vec<EncryptedShare>,
    secrets: BTreeMap<PartyId, ShareSecret>,
}

/// The delivered shares, opened, and the pairwise mask streams.
struct OpenedDelivery {
    received: BTreeMap<PartyId, SharePair>,
    streams: Vec<(MaskStream, Sign)>,
}

/// Shares this party holds, by owner (including its own pair).
struct Held {
    shares: BTreeMap<PartyId, SharePair>,
}

impl Held {
    /// Owners whose shares we hold: we and the neighbours that shared (U2 ∩ N(u)).
    fn owners(&self) -> impl Iterator<Item = PartyId> + '_ {
        self.shares.keys().copied()
    }
}

struct AwaitSurvivors {
    held: Held,
}

struct AwaitUnmask {
    held: Held,
    /// The survivor list this party signed (active mode only).
    signed: Option<Vec<PartyId>>,
}

/// Proof that the survivor list was checked against the other survivors'
/// signatures; only [`verify_consistency`] creates one.
struct ConsistencyVerified(());

/// What allows a party to reveal shares: in active mode, only a verified
/// consistency check.
enum UnmaskPermit {
    Passive,
    Verified(ConsistencyVerified),
}

impl Party {
    /// Creates the party's round keys and queues its key advertisement.
    /// `input` holds words mod `2^bits`, `len` of them.
    pub fn new(
        round: Round,
        id: PartyId,
        identity: IdentityKey,
        input: Vec<u32>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, Error> {
        let input = Zeroizing::new(input);
        match round.config.roster.get(&id) {
            Some(listed) if *listed == identity.public() => {}
            Some(_) => {
                return Err(Error::Config(format!(
                    "identity key does not match the roster entry of party {id}"
                )))
            }
            None => return Err(Error::Config(format!("party {id} is not in the roster"))),
        }
        if input.len() != round.config.len {
            return Err(Error::Config(format!(
                "input has {} words, the round expects {}",
                input.len(),
                round.config.len
            )));
        }
        if let Some(i) = input.iter().position(|&x| x & !round.mask() != 0) {
            return Err(Error::Config(format!(
                "input word {i} is not below 2^{}",
                round.config.bits
            )));
        }
        let enc = DhSecret::random(rng);
        let mask_scalar = SharedSecret::random(rng);
        let mask = DhSecret::from_mask_scalar(&round.session, id, &mask_scalar);
        let seed = SharedSecret::random(rng);
        let seed_commitment = SeedCommitment::to(&round.session, id, &seed);
        let (enc_key, mask_key) = (enc.public(), mask.public());
        let signature = identity.sign(&transcript::advertisement(
            &round.session,
            id,
            &enc_key,
            &mask_key,
            &seed_commitment,
        ));
        let mut outgoing = VecDeque::new();
        outgoing.push_back(Message::AdvertiseKeys(KeyAdvertisement {
            party: id,
            enc_key,
            mask_key,
            seed_commitment,
            signature,
        }));
        Ok(Party {
            round,
            id,
            identity,
            phase: ClientPhase::AwaitRoster(Box::new(AwaitRoster {
                enc,
                mask_scalar,
                mask,
                seed,
                input,
            })),
            outgoing,
            stats: PartyStats::default(),
        })
    }

    pub fn id(&self) -> PartyId {
        self.id
    }

    pub fn stats(&self) -> PartyStats {
        self.stats
    }

    /// The phase whose message this party will send next; `None` when done.
    pub fn phase(&self) -> Option<Phase> {
        match &self.phase {
            ClientPhase::AwaitRoster(_) => Some(Phase::ShareKeys),
            ClientPhase::AwaitDelivery(_) => Some(Phase::MaskedInput),
            ClientPhase::AwaitSurvivors(_) => Some(Phase::ConsistencyCheck),
            ClientPhase::AwaitUnmask(_) => Some(Phase::Unmasking),
            ClientPhase::Done => None,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.phase, ClientPhase::Done)
    }

    #[must_use]
    pub fn poll_outgoing(&mut self) -> Option<Message> {
        self.outgoing.pop_front()
    }

    /// Decodes and handles bytes from the coordinator.
    pub fn handle_bytes(
        &mut self,
        bytes: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), Error> {
        let (session, msg) = Message::decode(bytes)?;
        if session != self.round.session {
            return Err(self.coordinator(Misbehaviour::WrongSession));
        }
        self.handle(msg, rng)
    }

    /// Handles a message from the coordinator. On error nothing changes:
    /// every check runs on borrowed state before the phase is consumed.
    pub fn handle(&mut self, msg: Message, rng: &mut impl CryptoRngCore) -> Result<(), Error> {
        let next = match (&self.phase, msg) {
            (ClientPhase::AwaitRoster(st), Message::KeyRoster(list)) => {
                let peers = self.check_roster(list)?;
                let PreparedShares {
                    own,
                    out,
                    secrets: share_secrets,
                } = self.prepare_shares(st, &peers, rng)?;
                let ClientPhase::AwaitRoster(st) = self.take_phase() else {
                    unreachable!("phase matched above")
                };
                self.outgoing.push_back(Message::EncryptedShares(out));
                // The share-encryption secret is dropped (wiped) here.
                ClientPhase::AwaitDelivery(Box::new(AwaitDelivery {
                    share_secrets,
                    mask: st.mask,
                    seed: st.seed,
                    input: st.input,
                    peers,
                    own,
                }))
            }
            (ClientPhase::AwaitDelivery(st), Message::ShareDelivery(list)) => {
                let OpenedDelivery { received, streams } = self.check_delivery(st, &list)?;
                let ClientPhase::AwaitDelivery(st) = self.take_phase() else {
                    unreachable!("phase matched above")
                };
                self.mask_input(*st, received, streams)
            }
            (ClientPhase::AwaitSurvivors(st), Message::SurvivorList(list)) => {
                self.check_survivors(&st.held, &list)?;
                let ClientPhase::AwaitSurvivors(st) = self.take_phase() else {
                    unreachable!("phase matched above")
                };
                let signature = self.identity.sign_survivor_list(&self.round.session, &list);
                self.outgoing
                    .push_back(Message::SurvivorSignature(SurvivorSignature {
                        party: self.id,
                        signature,
                    }));
                ClientPhase::AwaitUnmask(Box::new(AwaitUnmask {
                    held: st.held,
                    signed: Some(list),
                }))
            }
            (ClientPhase::AwaitUnmask(st), Message::UnmaskRequest(req)) => {
                let permit = self.check_unmask(st, &req)?;
                let ClientPhase::AwaitUnmask(st) = self.take_phase() else {
                    unreachable!("phase matched above")
                };
                self.reveal(st.held, &req, permit)
            }
            (_, msg) => return Err(self.unexpected(msg.kind())),
        };
        self.phase = next;
        Ok(())
    }

    fn take_phase(&mut self) -> ClientPhase {
        std::mem::replace(&mut self.phase, ClientPhase::Done)
    }

    fn coordinator(&self, kind: Misbehaviour) -> Error {
        Error::misbehaved(Peer::Coordinator, kind)
    }

    fn unexpected(&self, got: crate::message::MessageKind) -> Error {
        let expected = match self.phase {
            ClientPhase::AwaitRoster(_) => "key-roster",
            ClientPhase::AwaitDelivery(_) => "share-delivery",
            ClientPhase::AwaitSurvivors(_) => "survivor-list",
            ClientPhase::AwaitUnmask(_) => "unmask-request",
            ClientPhase::Done => "nothing (the round is over)",
        };
        Error::UnexpectedMessage { expected, got }
    }

    /// Neighbours of this party that are expected in every list it receives.
    fn neighbours(&self) -> Vec<PartyId> {
        self.round.graph.neighbours(self.id)
    }

    fn threshold(&self) -> usize {
        self.round.config.threshold
    }

    /// Roster of neighbours' keys: each entry a neighbour, once, validly signed.
    fn check_roster(
        &self,
        list: Vec<KeyAdvertisement>,
    ) -> Result<BTreeMap<PartyId, KeyAdvertisement>, Error> {
        let mut peers = BTreeMap::new();
        for a in list {
            if !self.round.graph.adjacent(self.id, a.party) {
                return Err(self.coordinator(Misbehaviour::NotNeighbour(a.party)));
            }
            let key = self.round.config.roster[&a.party];
            if !key.verify(&transcript::advert(&self.round.session, &a), &a.signature) {
                return Err(Error::misbehaved(
                    Peer::Party(a.party),
                    Misbehaviour::BadSignature { signer: a.party },
                ));
            }
            let party = a.party;
            if peers.insert(party, a).is_some() {
                return Err(self.coordinator(Misbehaviour::Duplicate(party)));
            }
        }
        let holders = peers.len() + 1;
        if holders < self.threshold() {
            return Err(Error::TooFewParties {
                phase: Phase::AdvertiseKeys,
                answered: holders,
                needed: self.threshold(),
            });
        }
        Ok(peers)
    }

    /// Shares `b_u` and the mask-key scalar among this party and its
    /// advertised neighbours, and encrypts each neighbour's pair.
    fn prepare_shares(
        &self,
        st: &AwaitRoster,
        peers: &BTreeMap<PartyId, KeyAdvertisement>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<PreparedShares, Error> {
        let mut holders: Vec<PartyId> = peers.keys().copied().collect();
        holders.push(self.id);
        holders.sort_unstable();
        let t = self.threshold();
        let key_shares = split(&st.mask_scalar, &holders, t, rng).expect("threshold checked");
        let seed_shares = split(&st.seed, &holders, t, rng).expect("threshold checked");
        let mut own = None;
        let mut out = Vec::with_capacity(peers.len());
        let mut secrets = BTreeMap::new();
        for (key_share, seed_share) in key_shares.into_iter().zip(seed_shares) {
            let to = key_share.holder;
            let pair = SharePair {
                key_share,
                seed_share,
            };
            if to == self.id {
                own = Some(pair);
                continue;
            }
            let shared = ShareSecret::agree(&st.enc, &peers[&to].enc_key).map_err(|_| {
                Error::misbehaved(Peer::Party(to), Misbehaviour::WeakPublicKey { owner: to })
            })?;
            let ct = seal(&self.round.session, &shared, self.id, to, &pair);
            secrets.insert(to, shared);
            let ciphertext: Box<[u8; crate::share_box::CIPHERTEXT_LEN]> = ct
                .into_boxed_slice()
                .try_into()
                .expect("fixed ciphertext length");
            out.push(EncryptedShare {
                from: self.id,
                to,
                ciphertext,
            });
        }
        let own = own.expect("the party is among its own holders");
        Ok(PreparedShares { own, out, secrets })
    }

    /// Opens every delivered ciphertext and derives every pairwise seed
    /// before anything changes.
    fn check_delivery(
        &self,
        st: &AwaitDelivery,
        list: &[EncryptedShare],
    ) -> Result<OpenedDelivery, Error> {
        let mut received = BTreeMap::new();
        let mut streams = Vec::with_capacity(list.len() + 1);
        for s in list {
            if s.to != self.id {
                return Err(self.coordinator(Misbehaviour::UnexpectedParty(s.to)));
            }
            let (Some(peer), Some(shared)) = (st.peers.get(&s.from), st.share_secrets.get(&s.from))
            else {
                return Err(self.coordinator(Misbehaviour::NotNeighbour(s.from)));
            };
            if received.contains_key(&s.from) {
                return Err(self.coordinator(Misbehaviour::Duplicate(s.from)));
            }
            let pair = open(
                &self.round.session,
                shared,
                s.from,
                self.id,
                &s.ciphertext[..],
            )
            .map_err(|_| {
                Error::misbehaved(
                    Peer::Party(s.from),
                    Misbehaviour::BadCiphertext { from: s.from },
                )
            })?;
            let seed = pairwise_seed(
                &self.round.session,
                &st.mask,
                self.id,
                s.from,
                &peer.mask_key,
            )?;
            // y_u adds PRG(s_uv) for v > u and subtracts it for v < u.
            let sign = if s.from > self.id {
                Sign::Add
            } else {
                Sign::Sub
            };
            streams.push((MaskStream::new(&seed), sign));
            received.insert(s.from, pair);
        }
        if received.len() + 1 < self.threshold() {
            return Err(Error::TooFewParties {
                phase: Phase::ShareKeys,
                answered: received.len() + 1,
                needed: self.threshold(),
            });
        }
        Ok(OpenedDelivery { received, streams })
    }

    /// `y_u = x_u + PRG(b_u) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv)` mod 2^bits.
    fn mask_input(
        &mut self,
        mut st: AwaitDelivery,
        mut received: BTreeMap<PartyId, SharePair>,
        mut streams: Vec<(MaskStream, Sign)>,
    ) -> ClientPhase {
        let self_seed = self_mask_seed(&self.round.session, self.id, &st.seed);
        streams.push((MaskStream::new(&self_seed), Sign::Add));
        // Masked in place: once the masks are added the words are no longer
        // secret, and no second copy of the input is ever made.
        let mut words = std::mem::take(&mut *st.input);
        self.stats.keystream_bytes += apply_all(&mut words, &mut streams);
        let mask = self.round.mask();
        words.iter_mut().for_each(|w| *w &= mask);
        self.outgoing.push_back(Message::MaskedInput(MaskedVector {
            party: self.id,
            bits: self.round.config.bits,
            words,
        }));
        received.insert(self.id, st.own);
        let held = Held { shares: received };
        // The input, b_u and both round secrets are dropped (wiped) here.
        if self.round.config.active {
            ClientPhase::AwaitSurvivors(Box::new(AwaitSurvivors { held }))
        } else {
            ClientPhase::AwaitUnmask(Box::new(AwaitUnmask { held, signed: None }))
        }
    }

    /// A survivor list is plausible from where this party stands: it
    /// includes this party, names only parties whose shares were delivered
    /// (among neighbours), and leaves at least `threshold` holders.
    fn check_survivors(&self, held: &Held, list: &[PartyId]) -> Result<(), Error> {
        check_sorted(list, "survivor list")?;
        if list.binary_search(&self.id).is_err() {
            return Err(self.coordinator(Misbehaviour::InconsistentSurvivors {
                detail: format!("party {} is missing from its own survivor list", self.id),
            }));
        }
        for v in self.neighbours() {
            if list.binary_search(&v).is_ok() && !held.shares.contains_key(&v) {
                return Err(self.coordinator(Misbehaviour::InconsistentSurvivors {
                    detail: format!("party {v} is listed as a survivor but never shared keys"),
                }));
            }
        }
        for &v in list {
            if !self.round.config.roster.contains_key(&v) {
                return Err(self.coordinator(Misbehaviour::UnexpectedParty(v)));
            }
        }
        let alive = held
            .owners()
            .filter(|v| list.binary_search(v).is_ok())
            .count();
        if alive < self.threshold() {
            return Err(Error::TooFewParties {
                phase: Phase::MaskedInput,
                answered: alive,
                needed: self.threshold(),
            });
        }
        Ok(())
    }

    fn check_unmask(&self, st: &AwaitUnmask, req: &UnmaskRequest) -> Result<UnmaskPermit, Error> {
        self.check_survivors(&st.held, &req.survivors)?;
        check_sorted(&req.dropped, "dropped list")?;
        for v in &req.dropped {
            if req.survivors.binary_search(v).is_ok() {
                return Err(self.coordinator(Misbehaviour::AskedForBothShares { of: *v }));
            }
        }
        if !self.round.config.active {
            return Ok(UnmaskPermit::Passive);
        }
        let signed = st
            .signed
            .as_deref()
            .expect("active rounds sign the list first");
        verify_consistency(self, &st.held, signed, req).map(UnmaskPermit::Verified)
    }

    /// Reveals, for every party whose shares this party holds, the self-mask
    /// share if it survived or the mask-key share if it dropped — never both.
    fn reveal(&mut self, mut held: Held, req: &UnmaskRequest, permit: UnmaskPermit) -> ClientPhase {
        match permit {
            UnmaskPermit::Passive => debug_assert!(!self.round.config.active),
            UnmaskPermit::Verified(ConsistencyVerified(())) => {}
        }
        let mut seed_shares = Vec::new();
        let mut key_shares = Vec::new();
        for (of, pair) in std::mem::take(&mut held.shares) {
            if req.survivors.binary_search(&of).is_ok() {
                seed_shares.push(RevealedShare {
                    of,
                    share: pair.seed_share,
                });
            } else if req.dropped.binary_search(&of).is_ok() {
                key_shares.push(RevealedShare {
                    of,
                    share: pair.key_share,
                });
            }
        }
        self.outgoing
            .push_back(Message::UnmaskResponse(UnmaskResponse {
                party: self.id,
                seed_shares,
                key_shares,
            }));
        ClientPhase::Done
    }
}

/// What a colluding party hands a lying coordinator (tests only).
#[cfg(test)]
impl Party {
    /// Its own `b_u` and mask secret, while it still holds them.
    pub(crate) fn leak_secrets(&self) -> (SharedSecret, DhSecret) {
        match &self.phase {
            ClientPhase::AwaitDelivery(st) => (SharedSecret(st.seed.0), st.mask.leak()),
            _ => panic!("secrets are held only until the masked input"),
        }
    }

    /// Every share it holds, of both kinds: `(owner, seed share, key share)`.
    pub(crate) fn leak_held(&self) -> Vec<(PartyId, SecretShare, SecretShare)> {
        let held = match &self.phase {
            ClientPhase::AwaitSurvivors(st) => &st.held,
            ClientPhase::AwaitUnmask(st) => &st.held,
            _ => panic!("shares are held after the masked input"),
        };
        let copy = |s: &SecretShare| SecretShare {
            holder: s.holder,
            value: s.value,
        };
        held.shares
            .iter()
            .map(|(o, p)| (*o, copy(&p.seed_share), copy(&p.key_share)))
            .collect()
    }
}

/// Active mode: the list in the unmask request is the one this party signed,
/// and every forwarded signature is a survivor's valid signature over that
/// same list, with at least `threshold` of them from this party's holders.
/// A coordinator that told different parties different survivor lists
/// cannot produce such signatures.
fn verify_consistency(
    party: &Party,
    held: &Held,
    signed: &[PartyId],
    req: &UnmaskRequest,
) -> Result<ConsistencyVerified, Error> {
    if signed != req.survivors.as_slice() {
        return Err(party.coordinator(Misbehaviour::InconsistentSurvivors {
            detail: "the unmask request lists other survivors than the list this party signed"
                .into(),
        }));
    }
    let msg = transcript::survivors(&party.round.session, signed);
    let mut seen = BTreeSet::new();
    for s in &req.signatures {
        if signed.binary_search(&s.party).is_err() {
            return Err(party.coordinator(Misbehaviour::InconsistentSurvivors {
                detail: format!("signature from party {} who is not a survivor", s.party),
            }));
        }
        if !seen.insert(s.party) {
            return Err(party.coordinator(Misbehaviour::Duplicate(s.party)));
        }
        if !party.round.config.roster[&s.party].verify(&msg, &s.signature) {
            return Err(party.coordinator(Misbehaviour::InconsistentSurvivors {
                detail: format!(
                    "party {} did not sign the survivor list this party signed",
                    s.party
                ),
            }));
        }
    }
    let from_holders = held.owners().filter(|v| seen.contains(v)).count();
    if from_holders < party.threshold() {
        return Err(Error::TooFewParties {
            phase: Phase::ConsistencyCheck,
            answered: from_holders,
            needed: party.threshold(),
        });
    }
    Ok(ConsistencyVerified(()))
}

fn check_sorted(list: &[PartyId], what: &'static str) -> Result<(), Error> {
    if list.windows(2).any(|w| w[0] >= w[1]) {
        return Err(InvalidMessage::Unsorted(what).into());
    }
    Ok(())
}

/// `s_uv` from X25519 of the mask keys, bound to the session and the
/// unordered pair.
pub(crate) fn pairwise_seed(
    session: &crate::session::SessionId,
    own: &DhSecret,
    me: PartyId,
    peer: PartyId,
    peer_key: &DhPublicKey,
) -> Result<MaskSeed, Error> {
    let shared = own.agree(peer_key).ok_or(Error::misbehaved(
        Peer::Party(peer),
        Misbehaviour::WeakPublicKey { owner: peer },
    ))?;
    let pair = if me < peer { [me, peer] } else { [peer, me] };
    let bytes = derive(session, Purpose::PairwiseMask, &pair, shared.as_ref());
    Ok(MaskSeed::from_bytes(&bytes))
}

pub(crate) fn self_mask_seed(
    session: &crate::session::SessionId,
    owner: PartyId,
    b: &SharedSecret,
) -> MaskSeed {
    let bytes = derive(session, Purpose::SelfMask, &[owner], b.to_bytes().as_ref());
    MaskSeed::from_bytes(&bytes)
}
