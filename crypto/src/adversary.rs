//! A lying coordinator, written by hand, with colluding parties, against
//! real [`Party`] machines: what it can unmask, checked by actually
//! unmasking it.
//!
//! The coordinator runs the first three phases honestly (so it holds every
//! masked input), then shows honest parties whatever survivor lists it
//! likes. Colluders sign every list, hand over every share they hold, both
//! kinds, and their own round secrets. Afterwards the attacker reconstructs
//! every secret it has enough verified shares for and looks for sets of
//! parties whose masks it can strip: a set `S` is unmaskable when it knows
//! `b_u` for every honest `u ∈ S` and, for every honest `u ∈ S` and
//! neighbour `w ∉ S`, the pairwise seed `s_uw` (from either mask key). The
//! sum over each such set is then computed for real and compared with the
//! plain sum of the inputs, so the analysis cannot claim what it cannot do.
//!
//! The promise under test (docs/threat-model.md): whenever
//! `2t > holders + max_colluding` and at most `max_colluding` parties
//! collude, every set the coordinator can unmask holds at least
//! `t − max_colluding` honest parties — the honest noise shares the privacy
//! plan counts on.

use std::collections::{BTreeMap, BTreeSet};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::agreement::DhSecret;
use crate::commitment::SeedCommitment;
use crate::config::Round;
use crate::graph::GraphSpec;
use crate::identity::IdentityKey;
use crate::ids::PartyId;
use crate::message::{EncryptedShare, KeyAdvertisement, Message, SurvivorSignature, UnmaskRequest};
use crate::party::{pairwise_seed, self_mask_seed, Party};
use crate::prg::{apply_all, MaskStream, Sign};
use crate::shamir::{recover, SecretShare, SharedSecret};
use crate::sim::{party_rng, Scenario};

const BITS: u8 = 16;
const LEN: usize = 8;

/// A colluder: its identity (to sign any list), its round secrets and
/// every share it holds.
struct Colluder {
    key: IdentityKey,
    seed: SharedSecret,
    mask: DhSecret,
    held: Vec<(PartyId, SecretShare, SecretShare)>,
}

/// The round after three honest phases.
struct Staged {
    round: Round,
    honest: BTreeMap<PartyId, (Party, ChaCha20Rng)>,
    colluders: BTreeMap<PartyId, Colluder>,
    adverts: BTreeMap<PartyId, KeyAdvertisement>,
    masked: BTreeMap<PartyId, Vec<u32>>,
    inputs: BTreeMap<PartyId, Vec<u32>>,
}

fn copy(s: &SecretShare) -> SecretShare {
    SecretShare {
        holder: s.holder,
        value: s.value,
    }
}

/// Runs advertise, share and masked-input honestly for everyone. The round
/// is configured with `declared` colluders; `colluders` really collude.
fn stage(
    n: u32,
    graph: GraphSpec,
    threshold: usize,
    declared: usize,
    colluders: &[PartyId],
    seed: u64,
) -> Staged {
    let scenario = Scenario {
        parties: n,
        len: LEN,
        bits: BITS,
        threshold,
        max_colluding: declared,
        graph,
        active: true,
        seed,
    };
    let ids = scenario.identities();
    let round = scenario.round(&ids).expect("accepted parameters");
    let inputs = scenario.inputs();
    let mut all: BTreeMap<PartyId, (Party, ChaCha20Rng)> = BTreeMap::new();
    let mut keys = BTreeMap::new();
    for (id, key) in ids {
        keys.insert(id, IdentityKey::from_seed(&key.to_seed()));
        let mut rng = party_rng(seed, id);
        let p = Party::new(round.clone(), id, key, inputs[&id].clone(), &mut rng).unwrap();
        all.insert(id, (p, rng));
    }
    let mut adverts = BTreeMap::new();
    for (id, (p, _)) in all.iter_mut() {
        match p.poll_outgoing() {
            Some(Message::AdvertiseKeys(a)) => adverts.insert(*id, a),
            other => panic!("expected an advertisement, got {other:?}"),
        };
    }
    let mut routed: BTreeMap<PartyId, Vec<EncryptedShare>> = BTreeMap::new();
    for (id, (p, rng)) in all.iter_mut() {
        let list = round
            .graph
            .neighbours(*id)
            .iter()
            .map(|v| adverts[v].clone())
            .collect();
        p.handle(Message::KeyRoster(list), rng).unwrap();
        match p.poll_outgoing() {
            Some(Message::EncryptedShares(out)) => {
                for s in out {
                    routed.entry(s.to).or_default().push(s);
                }
            }
            other => panic!("expected shares, got {other:?}"),
        }
    }
    let mut masked = BTreeMap::new();
    for (id, (p, rng)) in all.iter_mut() {
        let delivery = routed.remove(id).unwrap_or_default();
        p.handle(Message::ShareDelivery(delivery), rng).unwrap();
        match p.poll_outgoing() {
            Some(Message::MaskedInput(v)) => masked.insert(*id, v.words),
            other => panic!("expected a masked input, got {other:?}"),
        };
    }
    // A colluder's round secrets are dropped once it has masked; a twin
    // built from the same randomness draws the same ones and still holds
    // them after sharing.
    let mut colluding = BTreeMap::new();
    for &c in colluders {
        let key = IdentityKey::from_seed(&keys[&c].to_seed());
        let mut rng = party_rng(seed, c);
        let mut twin = Party::new(round.clone(), c, key, inputs[&c].clone(), &mut rng).unwrap();
        let _advert = twin.poll_outgoing();
        let list = round
            .graph
            .neighbours(c)
            .iter()
            .map(|v| adverts[v].clone())
            .collect();
        twin.handle(Message::KeyRoster(list), &mut rng).unwrap();
        let _shares = twin.poll_outgoing();
        let (seed, mask) = twin.leak_secrets();
        colluding.insert(
            c,
            Colluder {
                key: IdentityKey::from_seed(&keys[&c].to_seed()),
                seed,
                mask,
                held: all[&c].0.leak_held(),
            },
        );
    }
    let honest = all
        .into_iter()
        .filter(|(id, _)| !colluders.contains(id))
        .collect();
    Staged {
        round,
        honest,
        colluders: colluding,
        adverts,
        masked,
        inputs,
    }
}

/// Shares revealed to the coordinator, by owner.
#[derive(Default)]
struct Revealed {
    seed: BTreeMap<PartyId, Vec<SecretShare>>,
    key: BTreeMap<PartyId, Vec<SecretShare>>,
}

/// The lie: each honest party in `views` is shown its list (parties not in
/// `views` hear nothing more). Colluders sign every list they appear on.
/// Each honest party that accepts is asked to unmask with its own list, the
/// rest of the roster as dropped, and every signature over that list.
fn lie(st: &mut Staged, views: &BTreeMap<PartyId, Vec<PartyId>>) -> Revealed {
    let session = st.round.session;
    let mut signatures: BTreeMap<Vec<PartyId>, Vec<SurvivorSignature>> = BTreeMap::new();
    let mut signed = BTreeSet::new();
    for (id, list) in views {
        let (p, rng) = st.honest.get_mut(id).expect("views name honest parties");
        if p.handle(Message::SurvivorList(list.clone()), rng).is_err() {
            continue;
        }
        match p.poll_outgoing() {
            Some(Message::SurvivorSignature(s)) => {
                signatures.entry(list.clone()).or_default().push(s);
                signed.insert(*id);
            }
            other => panic!("expected a signature, got {other:?}"),
        }
    }
    for list in views.values() {
        let sigs = signatures.entry(list.clone()).or_default();
        for (c, col) in &st.colluders {
            if list.binary_search(c).is_ok() && !sigs.iter().any(|s| s.party == *c) {
                sigs.push(SurvivorSignature {
                    party: *c,
                    signature: col.key.sign_survivor_list(&session, list),
                });
            }
        }
    }
    let everyone: Vec<PartyId> = st.round.config.roster.keys().copied().collect();
    let mut out = Revealed::default();
    for (id, list) in views {
        if !signed.contains(id) {
            continue;
        }
        let (p, rng) = st.honest.get_mut(id).unwrap();
        let req = UnmaskRequest {
            survivors: list.clone(),
            dropped: everyone
                .iter()
                .copied()
                .filter(|v| list.binary_search(v).is_err())
                .collect(),
            signatures: signatures[list].clone(),
        };
        if p.handle(Message::UnmaskRequest(req), rng).is_err() {
            continue;
        }
        match p.poll_outgoing() {
            Some(Message::UnmaskResponse(r)) => {
                for s in r.seed_shares {
                    out.seed.entry(s.of).or_default().push(copy(&s.share));
                }
                for s in r.key_shares {
                    out.key.entry(s.of).or_default().push(copy(&s.share));
                }
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }
    for col in st.colluders.values() {
        for (owner, seed, key) in &col.held {
            out.seed.entry(*owner).or_default().push(copy(seed));
            out.key.entry(*owner).or_default().push(copy(key));
        }
    }
    out
}

/// A set of parties whose summed inputs the attacker unmasked.
#[derive(Debug)]
struct Unmasked {
    members: BTreeSet<PartyId>,
    honest: usize,
}

/// Every minimal set containing an honest party that the attacker can
/// unmask with what it learned, each one unmasked for real and checked
/// against the plain sum.
fn unmaskable(st: &Staged, revealed: &Revealed) -> Vec<Unmasked> {
    let session = st.round.session;
    let t = st.round.config.threshold;
    let mut seeds: BTreeMap<PartyId, SharedSecret> = BTreeMap::new();
    let mut keys: BTreeMap<PartyId, DhSecret> = BTreeMap::new();
    for (c, col) in &st.colluders {
        seeds.insert(*c, SharedSecret(col.seed.0));
        keys.insert(*c, col.mask.leak());
    }
    for (owner, shares) in &revealed.seed {
        if seeds.contains_key(owner) || shares.len() < t {
            continue;
        }
        let commitment: SeedCommitment = st.adverts[owner].seed_commitment;
        if let Ok(Some(r)) = recover(shares, t, 0, |b| commitment.opens_to(&session, *owner, b)) {
            seeds.insert(*owner, r.secret);
        }
    }
    for (owner, shares) in &revealed.key {
        if keys.contains_key(owner) || shares.len() < t {
            continue;
        }
        let advertised = st.adverts[owner].mask_key;
        let found = recover(shares, t, 0, |m| {
            DhSecret::from_mask_scalar(&session, *owner, m).public() == advertised
        });
        if let Ok(Some(r)) = found {
            keys.insert(
                *owner,
                DhSecret::from_mask_scalar(&session, *owner, &r.secret),
            );
        }
    }
    let graph = &st.round.graph;
    let mut found: Vec<Unmasked> = Vec::new();
    for &u in st.honest.keys() {
        // The smallest set around u whose boundary masks are all known.
        let mut members = BTreeSet::from([u]);
        let mut frontier = vec![u];
        let mut ok = true;
        while let Some(s) = frontier.pop() {
            if !seeds.contains_key(&s) {
                ok = false;
                break;
            }
            for w in graph.neighbours(s) {
                if members.contains(&w) || keys.contains_key(&s) || keys.contains_key(&w) {
                    continue;
                }
                members.insert(w);
                frontier.push(w);
            }
        }
        if !ok || found.iter().any(|f| f.members == members) {
            continue;
        }
        // Unmask it for real.
        let mut words = vec![0u32; LEN];
        for s in &members {
            for (a, y) in words.iter_mut().zip(&st.masked[s]) {
                *a = a.wrapping_add(*y);
            }
        }
        let mut streams = Vec::new();
        for &s in &members {
            streams.push((
                MaskStream::new(&self_mask_seed(&session, s, &seeds[&s])),
                Sign::Sub,
            ));
            for w in graph.neighbours(s) {
                if members.contains(&w) {
                    continue;
                }
                let seed = if let Some(k) = keys.get(&s) {
                    pairwise_seed(&session, k, s, w, &st.adverts[&w].mask_key)
                } else {
                    pairwise_seed(&session, &keys[&w], w, s, &st.adverts[&s].mask_key)
                }
                .unwrap();
                let added = if w > s { Sign::Add } else { Sign::Sub };
                streams.push((MaskStream::new(&seed), added.flip()));
            }
        }
        apply_all(&mut words, &mut streams);
        let mask = st.round.mask();
        words.iter_mut().for_each(|w| *w &= mask);
        let mut plain = vec![0u32; LEN];
        for s in &members {
            for (a, x) in plain.iter_mut().zip(&st.inputs[s]) {
                *a = a.wrapping_add(*x);
            }
        }
        plain.iter_mut().for_each(|w| *w &= mask);
        assert_eq!(words, plain, "the analysis claimed a sum it cannot unmask");
        let honest = members.iter().filter(|m| st.honest.contains_key(m)).count();
        found.push(Unmasked { members, honest });
    }
    found
}

fn sorted(set: impl IntoIterator<Item = PartyId>) -> Vec<PartyId> {
    let s: BTreeSet<PartyId> = set.into_iter().collect();
    s.into_iter().collect()
}

/// The split view on `victim`: honest parties in `camp` (with the victim)
/// see everyone alive, the other honest parties see the victim dropped.
fn split_view(
    st: &Staged,
    victim: PartyId,
    camp: &BTreeSet<PartyId>,
) -> BTreeMap<PartyId, Vec<PartyId>> {
    let everyone: Vec<PartyId> = st.round.config.roster.keys().copied().collect();
    let without = sorted(everyone.iter().copied().filter(|p| *p != victim));
    st.honest
        .keys()
        .map(|&p| {
            let list = if p == victim || camp.contains(&p) {
                everyone.clone()
            } else {
                without.clone()
            };
            (p, list)
        })
        .collect()
}

/// Every accepted (t, c) with c colluders placed next to the victim.
fn accepted(holders: usize, n: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for c in 0..=n.saturating_sub(2).min(holders.saturating_sub(2)) {
        for t in 2..=holders {
            if crate::config::check_collusion(t, holders, c, true).is_ok() {
                out.push((t, c));
            }
        }
    }
    out
}

fn colluders_near(
    round_graph: &crate::graph::NeighbourGraph,
    victim: PartyId,
    c: usize,
) -> Vec<PartyId> {
    round_graph
        .neighbours(victim)
        .into_iter()
        .rev()
        .take(c)
        .collect()
}

/// The graph of a staged round with these parameters (the graph does not
/// depend on the threshold).
fn graph_of(n: u32, graph: GraphSpec, seed: u64) -> crate::graph::NeighbourGraph {
    let st = Scenario {
        parties: n,
        len: LEN,
        bits: BITS,
        threshold: 2,
        max_colluding: 0,
        graph,
        active: false,
        seed,
    };
    let ids = st.identities();
    st.round(&ids).unwrap().graph.clone()
}

#[test]
fn split_view_unmasks_the_victim_when_colluders_break_the_bound() {
    // The cases, configured as if nobody colluded (2t > holders
    // holds), with colluders present: the attack works.
    for (n, t, c) in [(8u32, 5usize, 2usize), (7, 4, 1)] {
        let victim = PartyId(0);
        let colluders: Vec<PartyId> = (n - c as u32..n).map(PartyId).collect();
        let mut st = stage(n, GraphSpec::Complete, t, 0, &colluders, 11);
        // The victim's camp: just enough with the colluders to reach t.
        let camp: BTreeSet<PartyId> = (1..(t - c) as u32).map(PartyId).collect();
        let views = split_view(&st, victim, &camp);
        let revealed = lie(&mut st, &views);
        let sets = unmaskable(&st, &revealed);
        assert!(
            sets.iter().any(|s| s.members == BTreeSet::from([victim])),
            "n = {n}, t = {t}, c = {c}: the victim's input should be exposed, found {sets:?}"
        );
    }
}

#[test]
fn split_view_unmasks_nothing_small_under_accepted_parameters() {
    let victim = PartyId(0);
    let mut runs = 0;
    let graphs: Vec<(u32, GraphSpec)> = (3..=9)
        .map(|n| (n, GraphSpec::Complete))
        .chain([
            (10, GraphSpec::Regular { degree: 4 }),
            (12, GraphSpec::Regular { degree: 6 }),
        ])
        .collect();
    for (n, graph) in graphs {
        let g = graph_of(n, graph, 21);
        let holders = g.degree() + 1;
        for (t, c) in accepted(holders, n as usize) {
            let colluders = colluders_near(&g, victim, c);
            let camp_pool: Vec<PartyId> = g
                .neighbours(victim)
                .into_iter()
                .filter(|p| !colluders.contains(p))
                .collect();
            for size in 0..=camp_pool.len() {
                let mut st = stage(n, graph, t, c, &colluders, 21);
                let camp: BTreeSet<PartyId> = camp_pool[..size].iter().copied().collect();
                let views = split_view(&st, victim, &camp);
                let revealed = lie(&mut st, &views);
                for set in unmaskable(&st, &revealed) {
                    assert!(
                        set.honest >= t - c,
                        "n = {n}, {graph:?}, t = {t}, c = {c}, camp {camp:?}: unmasked {set:?}"
                    );
                }
                runs += 1;
            }
        }
    }
    assert!(runs > 100, "{runs}");
}

#[test]
fn random_lying_views_unmask_nothing_small_under_accepted_parameters() {
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let configs: [(u32, GraphSpec); 4] = [
        (7, GraphSpec::Complete),
        (10, GraphSpec::Regular { degree: 4 }),
        (12, GraphSpec::Regular { degree: 6 }),
        (14, GraphSpec::Regular { degree: 4 }),
    ];
    let mut refused_or_learned = 0;
    for trial in 0..240u64 {
        let (n, graph) = configs[(trial % 4) as usize];
        let g = graph_of(n, graph, 100 + trial);
        let holders = g.degree() + 1;
        let options = accepted(holders, n as usize);
        let (t, c) = options[(rng.next_u32() as usize) % options.len()];
        let victim = PartyId(rng.next_u32() % n);
        let colluders = colluders_near(&g, victim, c);
        let mut st = stage(n, graph, t, c, &colluders, 100 + trial);
        // Two or three camps, each shown its members, the colluders and a
        // random choice of everyone else as alive.
        let camps = 2 + (rng.next_u32() % 2) as usize;
        let mut lists: Vec<BTreeSet<PartyId>> = (0..camps)
            .map(|_| colluders.iter().copied().collect())
            .collect();
        let mut camp_of = BTreeMap::new();
        for &p in st.honest.keys() {
            let k = (rng.next_u32() as usize) % camps;
            camp_of.insert(p, k);
            lists[k].insert(p);
        }
        for list in lists.iter_mut() {
            for &p in st.honest.keys() {
                if rng.next_u32() % 3 == 0 {
                    list.insert(p);
                }
            }
        }
        let views = camp_of
            .iter()
            .map(|(p, k)| (*p, sorted(lists[*k].iter().copied())))
            .collect();
        let revealed = lie(&mut st, &views);
        let sets = unmaskable(&st, &revealed);
        refused_or_learned += usize::from(!sets.is_empty());
        for set in sets {
            assert!(
                set.honest >= t - c,
                "trial {trial}: n = {n}, {graph:?}, t = {t}, c = {c}: unmasked {set:?}"
            );
        }
    }
    // The search is not vacuous: some lies do get sums unmasked (over
    // enough honest parties).
    assert!(refused_or_learned > 0);
}
