//! Whole rounds in memory: exact sums under dropouts at every phase, aborts
//! below threshold, and a coordinator that lies.

use std::collections::BTreeMap;

use shroud_crypto::sim::{plain_sum, NoMeter, Scenario};
use shroud_crypto::{Error, GraphSpec, Message, Misbehaviour, PartyId, Peer, Phase, SecretKind};

fn scenario(parties: u32, graph: GraphSpec, threshold: usize, bits: u8, len: usize) -> Scenario {
    Scenario {
        parties,
        len,
        bits,
        threshold,
        max_colluding: 0,
        graph,
        active: false,
        seed: 7,
    }
}

/// The error with which `party` refused a coordinator message.
fn refusal(sim: &shroud_crypto::sim::Sim, party: u32) -> Error {
    sim.party_errors
        .iter()
        .find(|(p, _)| *p == PartyId(party))
        .unwrap_or_else(|| panic!("party {party} refused nothing"))
        .1
        .clone()
}

fn run(
    s: &Scenario,
    drops: &[(u32, Phase)],
) -> (
    Result<shroud_crypto::Aggregate, Error>,
    BTreeMap<PartyId, Vec<u32>>,
) {
    let inputs = s.inputs();
    let mut sim = s.sim(&inputs, NoMeter).expect("valid scenario");
    for &(p, phase) in drops {
        sim.drop_party(PartyId(p), phase);
    }
    let res = sim.run();
    assert!(
        sim.party_errors.is_empty(),
        "parties refused: {:?}",
        sim.party_errors
    );
    (res, inputs)
}

fn assert_exact(s: &Scenario, drops: &[(u32, Phase)]) {
    let (res, inputs) = run(s, drops);
    let agg = res.unwrap_or_else(|e| panic!("{s:?} with drops {drops:?}: {e}"));
    // Parties that dropped before sending their masked input are not in
    // the sum; everyone else is.
    let expected_in: Vec<PartyId> = (0..s.parties)
        .map(PartyId)
        .filter(|p| {
            drops
                .iter()
                .all(|&(d, ph)| PartyId(d) != *p || ph > Phase::MaskedInput)
        })
        .collect();
    assert_eq!(agg.contributors, expected_in, "{s:?} drops {drops:?}");
    assert_eq!(
        agg.sum,
        plain_sum(&inputs, &agg.contributors, s.bits),
        "{s:?} drops {drops:?}"
    );
}

#[test]
fn complete_graph_without_dropouts_is_exact() {
    for (n, t, bits, len) in [
        (2, 2, 8, 1),
        (3, 2, 16, 17),
        (5, 3, 32, 1000),
        (10, 6, 20, 333),
    ] {
        assert_exact(&scenario(n, GraphSpec::Complete, t, bits, len), &[]);
    }
}

#[test]
fn sparse_graph_without_dropouts_is_exact() {
    for (n, k, t, bits, len) in [
        (10, 4, 3, 16, 100),
        (12, 5, 4, 24, 50),
        (21, 6, 4, 32, 64),
        (30, 2, 2, 8, 9),
    ] {
        assert_exact(
            &scenario(n, GraphSpec::Regular { degree: k }, t, bits, len),
            &[],
        );
    }
}

#[test]
fn dropouts_at_every_phase_still_give_exact_sums() {
    let cases = [
        (12, GraphSpec::Complete, 7),
        (16, GraphSpec::Regular { degree: 8 }, 5),
        (20, GraphSpec::Regular { degree: 9 }, 6),
        (9, GraphSpec::Complete, 5),
    ];
    for (n, graph, t) in cases {
        for phase in Phase::ALL {
            for active in [false, true] {
                let mut s = scenario(n, graph, t, 16, 257);
                s.active = active;
                assert_exact(&s, &[(0, phase), (n - 1, phase)]);
            }
        }
        // Several phases in one round.
        let mut s = scenario(n, graph, t, 24, 100);
        s.active = true;
        assert_exact(
            &s,
            &[
                (1, Phase::AdvertiseKeys),
                (3, Phase::ShareKeys),
                (5, Phase::MaskedInput),
                (7, Phase::ConsistencyCheck),
                (9, Phase::Unmasking),
            ],
        );
    }
}

/// Many random combinations of (n, k, threshold, bits, length, active) with
/// random dropouts, as long as every neighbourhood keeps `threshold` live
/// holders.
#[test]
fn random_configurations_with_random_dropouts() {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2024);
    let mut run_count = 0;
    while run_count < 40 {
        let n = 3 + rng.next_u32() % 20;
        let complete = rng.next_u32() % 3 == 0 || n < 6;
        let graph = if complete {
            GraphSpec::Complete
        } else {
            let mut k = 2 + rng.next_u32() % (n - 3);
            if k % 2 == 1 && n % 2 == 1 {
                k += 1;
            }
            GraphSpec::Regular { degree: k }
        };
        let holders = match graph {
            GraphSpec::Complete => n,
            GraphSpec::Regular { degree } => degree + 1,
        } as usize;
        let t = 2 + (rng.next_u32() as usize) % (holders - 1);
        let bits = 8 + (rng.next_u32() % 25) as u8;
        let len = 1 + (rng.next_u32() % 300) as usize;
        let mut s = scenario(n, graph, t, bits, len);
        s.active = rng.next_u32() % 2 == 0 && 2 * t > holders;
        s.seed = rng.next_u64();
        // Dropouts that leave every neighbourhood with at least t holders
        // answering through unmasking: at most holders − t, spread out.
        let budget = (holders - t).min(n as usize - t);
        let mut drops = BTreeMap::new();
        for i in 0..budget as u32 {
            if rng.next_u32() % 2 == 0 {
                let phase = Phase::ALL[(rng.next_u32() % 5) as usize];
                drops.insert((i * 7919) % n, phase);
            }
        }
        let drops: Vec<(u32, Phase)> = drops.into_iter().collect();
        assert_exact(&s, &drops);
        run_count += 1;
    }
}

#[test]
fn too_few_parties_aborts_naming_the_phase() {
    for phase in Phase::ALL {
        let mut s = scenario(6, GraphSpec::Complete, 4, 16, 10);
        s.active = true;
        let drops: Vec<(u32, Phase)> = (0..3).map(|p| (p, phase)).collect();
        let (res, _) = run(&s, &drops);
        match res {
            Err(Error::TooFewParties {
                phase: got,
                answered,
                needed,
            }) => {
                assert_eq!(got, phase);
                assert_eq!(answered, 3);
                assert_eq!(needed, 4);
                let msg = res.unwrap_err().to_string();
                assert!(
                    msg.contains(phase.name()) && msg.contains("3 parties answered"),
                    "{msg}"
                );
            }
            other => panic!("phase {phase}: expected an abort, got {other:?}"),
        }
    }
}

#[test]
fn sparse_abort_when_a_neighbourhood_loses_its_shares() {
    // Degree 2, threshold 3: a party's two neighbours dropping during
    // unmasking leaves nobody able to give its shares.
    let s = scenario(10, GraphSpec::Regular { degree: 2 }, 3, 16, 5);
    let identities = s.identities();
    let round = s.round(&identities).unwrap();
    let victim = PartyId(4);
    let nbrs = round.graph().neighbours(victim);
    let drops: Vec<(u32, Phase)> = nbrs.iter().map(|p| (p.0, Phase::Unmasking)).collect();
    let (res, _) = run(&s, &drops);
    match res {
        Err(Error::NotEnoughShares { have, needed, .. }) => {
            assert!(have < needed);
        }
        other => panic!("expected NotEnoughShares, got {other:?}"),
    }
}

/// Runs an active round in which the coordinator rewrites what party 0 is
/// told, and returns party 0's error.
fn party0_refusal(lie: impl FnMut(PartyId, &mut Message) + 'static) -> Error {
    let mut s = scenario(8, GraphSpec::Complete, 5, 16, 40);
    s.active = true;
    let inputs = s.inputs();
    let mut sim = s.sim(&inputs, NoMeter).unwrap();
    sim.set_tamper(Box::new(lie));
    let res = sim.run();
    let err = refusal(&sim, 0);
    // Party 0 revealed nothing: it is still waiting to unmask. Its masked
    // input is in the sum and the others' shares remove its masks.
    assert_eq!(
        sim.party(PartyId(0)).unwrap().phase(),
        Some(Phase::Unmasking)
    );
    let agg = res.expect("the others finish");
    assert_eq!(agg.sum, plain_sum(&inputs, &agg.contributors, 16));
    err
}

fn assert_inconsistent(err: &Error) {
    assert!(
        matches!(
            err,
            Error::PeerMisbehaved {
                peer: Peer::Coordinator,
                kind: Misbehaviour::InconsistentSurvivors { .. }
            }
        ),
        "{err:?}"
    );
}

#[test]
fn lying_coordinator_changing_the_signed_list_is_caught() {
    // Party 0 signed the true list, but is then told party 5 dropped, so
    // that it would reveal 5's mask key while the others reveal 5's
    // self-mask share: enough to unmask 5's input.
    let err = party0_refusal(|to, msg| {
        if let (PartyId(0), Message::UnmaskRequest(req)) = (to, msg) {
            req.survivors.retain(|p| *p != PartyId(5));
            req.dropped.push(PartyId(5));
            req.dropped.sort();
        }
    });
    assert_inconsistent(&err);
}

#[test]
fn lying_coordinator_forwarding_signatures_over_another_list_is_caught() {
    // The coordinator told parties 1..=4 that party 5 dropped and got their
    // signatures over that list; it forwards those to party 0, which signed
    // the true list.
    let s = {
        let mut s = scenario(8, GraphSpec::Complete, 5, 16, 40);
        s.active = true;
        s
    };
    let identities = s.identities();
    let session = *s.round(&identities).unwrap().session();
    let err = party0_refusal(move |to, msg| {
        if let (PartyId(0), Message::UnmaskRequest(req)) = (to, msg) {
            let lie: Vec<PartyId> = req
                .survivors
                .iter()
                .copied()
                .filter(|p| *p != PartyId(5))
                .collect();
            for sig in req.signatures.iter_mut() {
                if (1..=4).contains(&sig.party.0) {
                    sig.signature = identities[sig.party.0 as usize]
                        .1
                        .sign_survivor_list(&session, &lie);
                }
            }
        }
    });
    assert_inconsistent(&err);
}

#[test]
fn thresholds_must_outweigh_colluders() {
    let refused = |n, t, c, active| {
        let mut s = scenario(n, GraphSpec::Complete, t, 16, 4);
        s.max_colluding = c;
        s.active = active;
        let ids = s.identities();
        s.round(&ids).err().map(|e| e.to_string())
    };
    // The split-view cases of the attack: 2t ≤ holders + colluders.
    for (n, t, c) in [(8, 4, 0), (8, 5, 2), (7, 4, 1)] {
        let err = refused(n, t, c, true).expect("refused");
        assert!(
            err.contains("2·threshold > holders + max_colluding"),
            "{err}"
        );
    }
    assert_eq!(refused(8, 6, 2, true), None);
    assert_eq!(refused(7, 5, 1, true), None);
    // Colluders must never hold a threshold of shares on their own.
    let err = refused(8, 3, 3, false).expect("refused");
    assert!(err.contains("must be below the threshold"), "{err}");
    assert_eq!(refused(8, 3, 2, false), None);
    // The bound holds per neighbourhood in SecAgg+ (k = 6: 7 holders).
    let mut s = scenario(12, GraphSpec::Regular { degree: 6 }, 4, 16, 4);
    s.max_colluding = 1;
    s.active = true;
    let ids = s.identities();
    assert!(s.round(&ids).is_err(), "2·4 ≤ 7 + 1 must be refused");
    s.threshold = 5;
    s.max_colluding = 3;
    assert!(s.round(&ids).is_err(), "2·5 ≤ 7 + 3 must be refused");
    s.max_colluding = 2;
    assert!(s.round(&ids).is_ok());
}

#[test]
fn asked_for_both_shares_is_refused() {
    let s = scenario(6, GraphSpec::Complete, 3, 16, 8);
    let inputs = s.inputs();
    let mut sim = s.sim(&inputs, NoMeter).unwrap();
    sim.set_tamper(Box::new(|to, msg| {
        if let (PartyId(2), Message::UnmaskRequest(req)) = (to, msg) {
            req.dropped = vec![PartyId(4)];
        }
    }));
    let _ = sim.run();
    let err = refusal(&sim, 2);
    assert_eq!(
        err,
        Error::PeerMisbehaved {
            peer: Peer::Coordinator,
            kind: Misbehaviour::AskedForBothShares { of: PartyId(4) }
        }
    );
}

#[test]
fn tampered_ciphertext_is_rejected() {
    let s = scenario(5, GraphSpec::Complete, 3, 16, 8);
    let inputs = s.inputs();
    let mut sim = s.sim(&inputs, NoMeter).unwrap();
    sim.set_tamper(Box::new(|to, msg| {
        if let (PartyId(1), Message::ShareDelivery(list)) = (to, msg) {
            list[0].ciphertext[10] ^= 1;
        }
    }));
    let res = sim.run();
    let err = refusal(&sim, 1);
    assert!(
        matches!(
            err,
            Error::PeerMisbehaved {
                kind: Misbehaviour::BadCiphertext { .. },
                ..
            }
        ),
        "{err:?}"
    );
    // Party 1 goes silent; the rest still sum exactly.
    let agg = res.unwrap();
    assert!(!agg.contributors.contains(&PartyId(1)));
    assert_eq!(agg.sum, plain_sum(&inputs, &agg.contributors, 16));
}

#[test]
fn tampered_key_signature_is_rejected() {
    let s = scenario(5, GraphSpec::Complete, 3, 16, 8);
    let inputs = s.inputs();
    let mut sim = s.sim(&inputs, NoMeter).unwrap();
    sim.set_tamper(Box::new(|to, msg| {
        if let (PartyId(3), Message::KeyRoster(list)) = (to, msg) {
            let mut bytes = list[1].signature.to_bytes();
            bytes[0] ^= 0x80;
            list[1].signature = shroud_crypto::identity::Signature::from_bytes(bytes);
        }
    }));
    let _ = sim.run();
    let err = refusal(&sim, 3);
    assert!(
        matches!(
            err,
            Error::PeerMisbehaved {
                kind: Misbehaviour::BadSignature { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

/// Runs a round in which `liar` rewrites its unmask response, and returns
/// the outcome with the inputs.
fn with_lying_responder(
    s: &Scenario,
    drops: &[(u32, Phase)],
    liar: u32,
    lie: impl Fn(&mut shroud_crypto::message::UnmaskResponse) + 'static,
) -> (
    Result<shroud_crypto::Aggregate, Error>,
    BTreeMap<PartyId, Vec<u32>>,
) {
    let inputs = s.inputs();
    let mut sim = s.sim(&inputs, NoMeter).unwrap();
    for &(p, phase) in drops {
        sim.drop_party(PartyId(p), phase);
    }
    sim.set_party_tamper(Box::new(move |from, msg| {
        if let (true, Message::UnmaskResponse(r)) = (from == PartyId(liar), msg) {
            lie(r);
        }
    }));
    (sim.run(), inputs)
}

/// Swaps the share values of the first two entries: each becomes a valid
/// scalar that is not the share dealt.
fn swap_first_two(list: &mut [shroud_crypto::message::RevealedShare]) {
    let (a, b) = list.split_at_mut(1);
    std::mem::swap(&mut a[0].share, &mut b[0].share);
}

#[test]
fn a_bad_self_mask_share_is_caught_and_its_sender_named() {
    // Eight parties, t = 5, everyone answers: one bad share among eight is
    // within the error-correction radius, so the sum is exact.
    let s = scenario(8, GraphSpec::Complete, 5, 16, 64);
    let (res, inputs) = with_lying_responder(&s, &[], 3, |r| swap_first_two(&mut r.seed_shares));
    let agg = res.expect("one bad share does not stop the round");
    assert_eq!(agg.sum, plain_sum(&inputs, &agg.contributors, 16));
    // Party 3 is named; once caught, its shares are used last, so its bad
    // share of party 1 need not even be looked at.
    assert_eq!(
        agg.bad_shares
            .first()
            .map(|b| (b.responder, b.of, b.secret)),
        Some((PartyId(3), PartyId(0), SecretKind::SelfMaskSeed))
    );
    assert!(
        agg.bad_shares.iter().all(|b| b.responder == PartyId(3)),
        "{:?}",
        agg.bad_shares
    );
}

#[test]
fn a_bad_mask_key_share_blames_its_sender_not_the_dropout() {
    // Parties 6 and 7 drop after sharing their keys; party 2 swaps the two
    // mask-key shares it reveals. Six responders for t = 5: only other
    // subsets of five shares find the keys.
    let s = scenario(8, GraphSpec::Complete, 5, 16, 64);
    let drops = [(6, Phase::MaskedInput), (7, Phase::MaskedInput)];
    let (res, inputs) = with_lying_responder(&s, &drops, 2, |r| swap_first_two(&mut r.key_shares));
    let agg = res.expect("the keys are recovered from the honest shares");
    assert_eq!(agg.dropped, vec![PartyId(6), PartyId(7)]);
    assert_eq!(agg.sum, plain_sum(&inputs, &agg.contributors, 16));
    assert!(!agg.bad_shares.is_empty());
    assert!(
        agg.bad_shares
            .iter()
            .all(|b| b.responder == PartyId(2) && b.secret == SecretKind::MaskKey),
        "{:?}",
        agg.bad_shares
    );
}

#[test]
fn blame_needs_more_agreeing_shares_than_colluders_could_steer() {
    // The same lie with one colluder allowed: five agreeing shares could be
    // four honest ones plus a colluder's, so the key is recovered (its
    // public key proves it) but nobody is named.
    let mut s = scenario(8, GraphSpec::Complete, 5, 16, 64);
    s.max_colluding = 1;
    let drops = [(6, Phase::MaskedInput), (7, Phase::MaskedInput)];
    let (res, inputs) = with_lying_responder(&s, &drops, 2, |r| swap_first_two(&mut r.key_shares));
    let agg = res.expect("the keys are recovered");
    assert_eq!(agg.sum, plain_sum(&inputs, &agg.contributors, 16));
    assert!(agg.bad_shares.is_empty(), "{:?}", agg.bad_shares);
}

#[test]
fn too_many_bad_shares_abort_naming_the_secret() {
    // Six parties, t = 5, two liars: every five shares include a bad one.
    let s = scenario(6, GraphSpec::Complete, 5, 16, 8);
    let inputs = s.inputs();
    let mut sim = s.sim(&inputs, NoMeter).unwrap();
    sim.set_party_tamper(Box::new(|from, msg| {
        if let Message::UnmaskResponse(r) = msg {
            if from == PartyId(1) || from == PartyId(4) {
                swap_first_two(&mut r.seed_shares);
            }
        }
    }));
    let err = sim.run().unwrap_err();
    assert_eq!(
        err,
        Error::SecretUnrecoverable {
            of: PartyId(0),
            secret: SecretKind::SelfMaskSeed,
            shares: 6
        }
    );
    assert!(
        err.to_string().contains("party 0's self-mask seed"),
        "{err}"
    );
}

/// Runs a round whose charge point answers `verdict`, and reports whether
/// any unmask request had reached a party when the charge point was
/// called, and how many were sent in all.
fn with_charge_point(
    s: &Scenario,
    drops: &[(u32, Phase)],
    verdict: Result<(), Error>,
) -> (Result<shroud_crypto::Aggregate, Error>, Option<bool>, usize) {
    use std::cell::RefCell;
    use std::rc::Rc;
    let inputs = s.inputs();
    let mut sim = s.sim(&inputs, NoMeter).unwrap();
    for &(p, phase) in drops {
        sim.drop_party(PartyId(p), phase);
    }
    let requests = Rc::new(RefCell::new(0usize));
    let seen_at_charge = Rc::new(RefCell::new(None));
    let r = requests.clone();
    sim.set_tamper(Box::new(move |_, msg| {
        if matches!(msg, Message::UnmaskRequest(_)) {
            *r.borrow_mut() += 1;
        }
    }));
    let (r, seen) = (requests.clone(), seen_at_charge.clone());
    let res = sim.run_charged(move |_| {
        *seen.borrow_mut() = Some(*r.borrow() > 0);
        verdict.clone()
    });
    let seen = *seen_at_charge.borrow();
    let sent = *requests.borrow();
    (res, seen, sent)
}

#[test]
fn no_unmask_request_leaves_before_the_round_is_charged() {
    for active in [false, true] {
        let mut s = scenario(8, GraphSpec::Complete, 6, 16, 32);
        s.active = active;
        let (res, seen, sent) = with_charge_point(&s, &[], Ok(()));
        res.expect("the round finishes once charged");
        assert_eq!(seen, Some(false), "active = {active}");
        assert_eq!(sent, 8);
    }
}

#[test]
fn a_refused_charge_aborts_the_round_before_anything_is_revealed() {
    let s = scenario(8, GraphSpec::Complete, 6, 16, 32);
    let refusal = Error::Config("budget exhausted".into());
    let (res, seen, sent) = with_charge_point(&s, &[], Err(refusal.clone()));
    assert_eq!(res.unwrap_err(), refusal);
    assert_eq!(seen, Some(false));
    assert_eq!(sent, 0, "no unmask request may leave an uncharged round");
}

#[test]
fn a_round_that_aborts_before_the_masked_inputs_are_in_is_never_charged() {
    let s = scenario(8, GraphSpec::Complete, 6, 16, 32);
    let drops: Vec<(u32, Phase)> = (0..3).map(|p| (p, Phase::MaskedInput)).collect();
    let (res, seen, sent) = with_charge_point(&s, &drops, Ok(()));
    assert!(matches!(res, Err(Error::TooFewParties { .. })));
    assert_eq!(seen, None, "the charge point was reached");
    assert_eq!(sent, 0);
}
