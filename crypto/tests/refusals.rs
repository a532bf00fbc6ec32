//! The coordinator and parties driven by hand, with bad messages slipped in
//! at every phase: each is refused with the promised error, and the round
//! still finishes exactly, so the refusals changed no state.

use std::collections::BTreeMap;
use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use shroud_crypto::message::{MaskedVector, MessageKind, SurvivorSignature};
use shroud_crypto::sim::{party_rng, plain_sum, Scenario};
use shroud_crypto::{
    Coordinator, Error, Event, GraphSpec, Message, Misbehaviour, Party, PartyId, Peer, Phase,
};

struct Rig {
    coord: Coordinator,
    parties: BTreeMap<PartyId, (Party, ChaCha20Rng)>,
    inputs: BTreeMap<PartyId, Vec<u32>>,
    now: Instant,
    /// Messages parties sent that have not yet reached the coordinator.
    pending: Vec<(PartyId, Message)>,
}

impl Rig {
    fn new(active: bool) -> Rig {
        let s = Scenario {
            parties: 5,
            len: 64,
            bits: 16,
            threshold: 3,
            max_colluding: 0,
            graph: GraphSpec::Complete,
            active,
            seed: 11,
        };
        let ids = s.identities();
        let round = s.round(&ids).unwrap();
        let inputs = s.inputs();
        let now = Instant::now();
        let coord = Coordinator::new(round.clone(), now);
        let mut parties = BTreeMap::new();
        for (id, key) in ids {
            let mut rng = party_rng(1, id);
            let p = Party::new(round.clone(), id, key, inputs[&id].clone(), &mut rng).unwrap();
            parties.insert(id, (p, rng));
        }
        Rig {
            coord,
            parties,
            inputs,
            now,
            pending: Vec::new(),
        }
    }

    fn session(&self) -> shroud_crypto::session::SessionId {
        *self.coord.round().session()
    }

    /// Collects what parties want to send.
    fn collect(&mut self) {
        for (&id, (p, _)) in self.parties.iter_mut() {
            while let Some(m) = p.poll_outgoing() {
                self.pending.push((id, m));
            }
        }
    }

    fn send(&mut self, from: PartyId, msg: &Message) -> Result<(), Error> {
        let bytes = msg.encode(&self.session());
        self.coord.handle_bytes(self.now, from, &bytes)
    }

    /// Delivers pending party messages, then the coordinator's replies.
    fn flush(&mut self) {
        for (from, m) in std::mem::take(&mut self.pending) {
            let bytes = m.encode(&self.session());
            self.coord
                .handle_bytes(self.now, from, &bytes)
                .unwrap_or_else(|e| panic!("{from} {:?}: {e}", m.kind()));
        }
        while let Some((to, m)) = self.coord.poll_outgoing() {
            let bytes = m.encode(&self.session());
            let (p, rng) = self.parties.get_mut(&to).unwrap();
            p.handle_bytes(&bytes, rng).unwrap();
        }
        self.collect();
    }

    fn finish(mut self) {
        for _ in 0..6 {
            self.flush();
            if self.coord.awaiting_confirm() {
                self.coord.confirm_unmask(self.now).unwrap();
            }
        }
        let mut result = None;
        while let Some(ev) = self.coord.poll_event() {
            if let Event::Finished(a) = ev {
                result = Some(a);
            }
        }
        let agg = result.expect("round finished");
        assert_eq!(agg.contributors.len(), 5);
        assert_eq!(agg.sum, plain_sum(&self.inputs, &agg.contributors, 16));
    }
}

fn misbehaved(e: Error) -> Misbehaviour {
    match e {
        Error::PeerMisbehaved { kind, .. } => kind,
        other => panic!("expected misbehaviour, got {other:?}"),
    }
}

#[test]
fn bad_messages_in_every_phase_change_nothing() {
    let mut r = Rig::new(true);
    r.collect();
    let p0 = PartyId(0);

    // Advertise keys.
    let Message::AdvertiseKeys(good) = &r.pending[0].1 else {
        panic!()
    };
    let good = good.clone();
    assert_eq!(
        misbehaved(
            r.send(PartyId(99), &Message::AdvertiseKeys(good.clone()))
                .unwrap_err()
        ),
        Misbehaviour::UnexpectedParty(PartyId(99))
    );
    assert_eq!(
        misbehaved(
            r.send(PartyId(1), &Message::AdvertiseKeys(good.clone()))
                .unwrap_err()
        ),
        Misbehaviour::SenderMismatch { claimed: p0 }
    );
    let mut forged = good.clone();
    // A different key under the original signature.
    forged.mask_key = shroud_crypto::agreement::DhSecret::random(&mut rand_core::OsRng).public();
    assert_eq!(
        misbehaved(r.send(p0, &Message::AdvertiseKeys(forged)).unwrap_err()),
        Misbehaviour::BadSignature { signer: p0 }
    );
    let mut wrong_session = Message::AdvertiseKeys(good.clone()).encode(&r.session());
    wrong_session[5] ^= 1;
    assert_eq!(
        misbehaved(r.coord.handle_bytes(r.now, p0, &wrong_session).unwrap_err()),
        Misbehaviour::WrongSession
    );
    assert!(matches!(
        r.send(p0, &Message::SurvivorList(vec![])).unwrap_err(),
        Error::UnexpectedMessage {
            got: MessageKind::SurvivorList,
            ..
        }
    ));
    r.send(p0, &Message::AdvertiseKeys(good.clone())).unwrap();
    assert_eq!(
        misbehaved(r.send(p0, &Message::AdvertiseKeys(good)).unwrap_err()),
        Misbehaviour::Replay
    );
    r.pending.remove(0);
    r.flush();
    assert_eq!(r.coord.phase(), Some(Phase::ShareKeys));

    // Share keys: a list missing one recipient, and a replay.
    let i = r.pending.iter().position(|(p, _)| *p == p0).unwrap();
    let (_, msg) = r.pending.remove(i);
    let Message::EncryptedShares(list) = msg else {
        panic!()
    };
    let short = Message::EncryptedShares(list[1..].to_vec());
    assert!(matches!(
        misbehaved(r.send(p0, &short).unwrap_err()),
        Misbehaviour::WrongLength {
            expected: 4,
            got: 3
        }
    ));
    r.send(p0, &Message::EncryptedShares(list.clone())).unwrap();
    assert_eq!(
        misbehaved(r.send(p0, &Message::EncryptedShares(list)).unwrap_err()),
        Misbehaviour::Replay
    );
    r.flush();
    assert_eq!(r.coord.phase(), Some(Phase::MaskedInput));

    // Masked input: wrong length, wrong bits, out-of-range word, replay.
    let i = r.pending.iter().position(|(p, _)| *p == p0).unwrap();
    let (_, msg) = r.pending.remove(i);
    let Message::MaskedInput(v) = msg else {
        panic!()
    };
    let mut shorter = v.clone();
    shorter.words.pop();
    assert_eq!(
        misbehaved(r.send(p0, &Message::MaskedInput(shorter)).unwrap_err()),
        Misbehaviour::WrongLength {
            expected: 64,
            got: 63
        }
    );
    let wider = MaskedVector {
        bits: 24,
        ..v.clone()
    };
    assert_eq!(
        misbehaved(r.send(p0, &Message::MaskedInput(wider)).unwrap_err()),
        Misbehaviour::WrongBits {
            expected: 16,
            got: 24
        }
    );
    let mut over = v.clone();
    over.words[3] = 1 << 16;
    assert_eq!(
        misbehaved(
            r.coord
                .handle(r.now, p0, Message::MaskedInput(over))
                .unwrap_err()
        ),
        Misbehaviour::WordOutOfRange { index: 3 }
    );
    r.send(p0, &Message::MaskedInput(v.clone())).unwrap();
    assert_eq!(
        misbehaved(r.send(p0, &Message::MaskedInput(v)).unwrap_err()),
        Misbehaviour::Replay
    );
    r.flush();
    assert_eq!(r.coord.phase(), Some(Phase::ConsistencyCheck));

    // Consistency check: a signature over another list.
    let i = r.pending.iter().position(|(p, _)| *p == p0).unwrap();
    let (_, msg) = r.pending.remove(i);
    let Message::SurvivorSignature(sig) = msg else {
        panic!()
    };
    let stolen = SurvivorSignature {
        party: p0,
        signature: match &r.pending[0].1 {
            Message::SurvivorSignature(s) => s.signature,
            _ => panic!(),
        },
    };
    assert_eq!(
        misbehaved(r.send(p0, &Message::SurvivorSignature(stolen)).unwrap_err()),
        Misbehaviour::BadSignature { signer: p0 }
    );
    r.send(p0, &Message::SurvivorSignature(sig.clone()))
        .unwrap();
    r.flush();
    assert_eq!(r.coord.phase(), Some(Phase::Unmasking));

    // Ready to unmask: nothing goes out, and nothing comes in, until the
    // host confirms that the round is charged; deadlines do not move it.
    assert!(r.coord.awaiting_confirm());
    assert!(r.coord.poll_outgoing().is_none());
    assert!(matches!(
        r.send(p0, &Message::SurvivorSignature(sig)).unwrap_err(),
        Error::UnexpectedMessage { .. }
    ));
    assert_eq!(r.coord.poll_timeout(), None);
    r.coord
        .handle_timeout(r.now + std::time::Duration::from_secs(3600));
    assert!(r.coord.awaiting_confirm());
    r.coord.confirm_unmask(r.now).unwrap();
    assert!(
        r.coord.confirm_unmask(r.now).is_err(),
        "confirmed once only"
    );
    r.flush();

    // A party refuses a second unmask request: it has already answered.
    let bogus = Message::UnmaskRequest(shroud_crypto::message::UnmaskRequest {
        survivors: vec![],
        dropped: vec![],
        signatures: vec![],
    });
    let (p, rng) = r.parties.get_mut(&p0).unwrap();
    assert!(matches!(
        p.handle(bogus, rng).unwrap_err(),
        Error::UnexpectedMessage {
            got: MessageKind::UnmaskRequest,
            ..
        }
    ));
    r.finish();
}

#[test]
fn a_party_refuses_a_delivery_from_the_wrong_session() {
    let mut r = Rig::new(false);
    r.flush();
    let (p, rng) = r.parties.get_mut(&PartyId(2)).unwrap();
    let other = shroud_crypto::session::SessionId([0; 32]);
    let bytes = Message::KeyRoster(vec![]).encode(&other);
    assert_eq!(
        p.handle_bytes(&bytes, rng).unwrap_err(),
        Error::PeerMisbehaved {
            peer: Peer::Coordinator,
            kind: Misbehaviour::WrongSession
        }
    );
    r.finish();
}
