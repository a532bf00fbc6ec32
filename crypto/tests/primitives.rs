//! Known-answer tests for the primitives, Shamir's thresholds, mask
//! uniformity and the neighbour graphs.

use std::collections::BTreeMap;

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use shroud_crypto::agreement::x25519_raw;
use shroud_crypto::graph::{recommend_sparse, GraphSpec, NeighbourGraph};
use shroud_crypto::prg::{raw_keystream, MaskSeed, MaskStream, Sign};
use shroud_crypto::shamir::{reconstruct, split, ShamirError, SharedSecret};
use shroud_crypto::share_box::aead_seal_raw;
use shroud_crypto::sim::{NoMeter, Scenario};
use shroud_crypto::{Message, PartyId};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex32(s: &str) -> [u8; 32] {
    hex(s).try_into().unwrap()
}

#[test]
fn x25519_rfc7748_vectors() {
    // Section 5.2, first vector.
    let out = x25519_raw(
        hex32("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
        hex32("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"),
    );
    assert_eq!(
        out,
        hex32("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
    );
    // Section 6.1: Alice and Bob agree.
    let alice = hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let bob = hex32("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
    let mut base = [0u8; 32];
    base[0] = 9;
    let alice_pub = x25519_raw(alice, base);
    let bob_pub = x25519_raw(bob, base);
    assert_eq!(
        alice_pub,
        hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    );
    assert_eq!(
        bob_pub,
        hex32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    );
    let shared = hex32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
    assert_eq!(x25519_raw(alice, bob_pub), shared);
    assert_eq!(x25519_raw(bob, alice_pub), shared);
}

#[test]
fn chacha20_poly1305_rfc8439_vector() {
    // Section 2.8.2.
    let key = hex32("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
    let nonce: [u8; 12] = hex("070000004041424344454647").try_into().unwrap();
    let aad = hex("50515253c0c1c2c3c4c5c6c7");
    let msg = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    let sealed = aead_seal_raw(&key, &nonce, &aad, msg);
    let want = hex(concat!(
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6",
        "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36",
        "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc",
        "3ff4def08e4b7a9de576d26586cec64b6116",
        "1ae10b594f09e26a7e902ecbd0600691"
    ));
    assert_eq!(sealed, want);
}

#[test]
fn shamir_any_t_shares_reconstruct_and_t_minus_one_do_not() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let holders: Vec<PartyId> = [0u32, 3, 4, 9, 17, 20, 31].map(PartyId).to_vec();
    let n = holders.len();
    for t in 2..=n {
        let secret = SharedSecret::random(&mut rng);
        let shares = split(&secret, &holders, t, &mut rng).unwrap();
        // Every subset of size t (by bitmask) reconstructs.
        for mask in 0u32..(1 << n) {
            if mask.count_ones() as usize != t {
                continue;
            }
            let mut subset: Vec<_> = Vec::new();
            for (i, s) in shares.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    subset.push(s);
                }
            }
            let owned = subset;
            assert!(
                reconstruct(&owned, t).unwrap().ct_eq(&secret),
                "t={t} mask={mask:b}"
            );
            // With one share fewer the API refuses, and interpolating the
            // t − 1 shares as if they were enough yields another value.
            assert_eq!(
                reconstruct(&owned[..t - 1], t).err(),
                Some(ShamirError::NotEnoughShares {
                    have: t - 1,
                    needed: t
                })
            );
            if t > 2 {
                let wrong = reconstruct(&owned[..t - 1], t - 1).unwrap();
                assert!(!wrong.ct_eq(&secret));
            }
        }
    }
}

#[test]
fn shamir_rejects_duplicate_holders_and_bad_thresholds() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let secret = SharedSecret::random(&mut rng);
    let dup = [PartyId(1), PartyId(1), PartyId(2)];
    assert_eq!(
        split(&secret, &dup, 2, &mut rng).err(),
        Some(ShamirError::DuplicateHolder(PartyId(1)))
    );
    let ok = [PartyId(1), PartyId(2)];
    assert!(split(&secret, &ok, 3, &mut rng).is_err());
    assert!(split(&secret, &ok, 0, &mut rng).is_err());
}

/// The mask PRG is ChaCha12 with a zero nonce: the same keystream as
/// `rand_chacha`'s independent ChaCha12 implementation on stream 0.
#[test]
fn masks_are_the_chacha12_keystream() {
    use rand_chacha::rand_core::RngCore;
    let seed = [0x5au8; 32];
    let mut reference = vec![0u8; 4 * 3000];
    rand_chacha::ChaCha12Rng::from_seed(seed).fill_bytes(&mut reference);
    let mut out = vec![0u32; 3000];
    MaskStream::new(&MaskSeed::for_testing(seed)).apply(0, &mut out, Sign::Add);
    let words: Vec<u32> = reference
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(out, words);
    let mut raw = vec![0u8; reference.len()];
    raw_keystream(seed, &mut raw);
    assert_eq!(raw, reference);
}

#[test]
fn mask_stream_starts_at_any_word_offset() {
    let seed = [7u8; 32];
    let mut bytes = vec![0u8; 4 * 5000];
    raw_keystream(seed, &mut bytes);
    let words: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    for (offset, len) in [
        (0usize, 5000usize),
        (1, 10),
        (17, 1500),
        (1023, 2),
        (1024, 1024),
        (4999, 1),
    ] {
        let mut out = vec![0u32; len];
        MaskStream::new(&MaskSeed::for_testing(seed)).apply(offset as u64, &mut out, Sign::Add);
        assert_eq!(out, words[offset..offset + len], "offset {offset}");
        MaskStream::new(&MaskSeed::for_testing(seed)).apply(offset as u64, &mut out, Sign::Sub);
        assert!(out.iter().all(|&w| w == 0));
    }
}

/// A party whose input is all zeros sends its masks alone: every residue
/// mod 2^8 must be about equally frequent (chi-square, 255 degrees of
/// freedom; 330 is exceeded with probability about 1e-3 under uniformity,
/// and the seeds are fixed so the outcome is reproducible).
#[test]
fn masked_input_words_are_uniform() {
    for graph in [GraphSpec::Complete, GraphSpec::Regular { degree: 2 }] {
        let s = Scenario {
            parties: 6,
            len: 200_000,
            bits: 8,
            threshold: 3,
            max_colluding: 0,
            graph,
            active: false,
            seed: 99,
        };
        let mut inputs = s.inputs();
        inputs.insert(PartyId(0), vec![0; s.len]);
        let mut sim = s.sim(&inputs, NoMeter).unwrap();
        let seen = std::rc::Rc::new(std::cell::RefCell::new(None));
        let sink = seen.clone();
        sim.set_observer(Box::new(move |from, msg| {
            if let (PartyId(0), Message::MaskedInput(v)) = (from, msg) {
                *sink.borrow_mut() = Some(v.words.clone());
            }
        }));
        sim.run().unwrap();
        let words = seen
            .borrow_mut()
            .take()
            .expect("party 0 sent its masked input");
        let mut counts = [0u64; 256];
        for w in &words {
            counts[*w as usize] += 1;
        }
        let expected = words.len() as f64 / 256.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 330.0, "chi-square {chi2} for {graph:?}");
        assert!(chi2 > 180.0, "suspiciously regular: chi-square {chi2}");
    }
}

#[test]
fn harary_graphs_are_regular_and_symmetric() {
    for (n, k) in [(10u32, 2u32), (10, 3), (11, 4), (20, 7), (100, 6), (7, 6)] {
        let parties: Vec<PartyId> = (0..n).map(PartyId).collect();
        let g = NeighbourGraph::new(&parties, GraphSpec::Regular { degree: k }, [3; 32]).unwrap();
        let mut degree = BTreeMap::new();
        for &u in &parties {
            let nb = g.neighbours(u);
            assert_eq!(nb.len(), k as usize, "n={n} k={k} u={u}");
            assert!(!nb.contains(&u));
            for &v in &nb {
                assert!(g.adjacent(u, v) && g.adjacent(v, u));
            }
            degree.insert(u, nb.len());
        }
        let edges: usize = degree.values().sum();
        assert_eq!(edges, (n * k) as usize);
    }
    let parties: Vec<PartyId> = (0..9).map(PartyId).collect();
    let err = NeighbourGraph::new(&parties, GraphSpec::Regular { degree: 3 }, [0; 32]).unwrap_err();
    assert!(err.contains("even number of parties"), "{err}");
}

#[test]
fn sparse_parameters_grow_with_risk() {
    let low = recommend_sparse(1000, 0.05, 0.05, 0, 40.0, 20.0).unwrap();
    let high = recommend_sparse(1000, 0.2, 0.2, 0, 40.0, 20.0).unwrap();
    assert!(high.degree > low.degree, "{low:?} {high:?}");
    // A hard cap on colluders raises the threshold it must outweigh.
    let capped = recommend_sparse(1000, 0.05, 0.05, 30, 40.0, 20.0).unwrap();
    assert!(capped.threshold > low.threshold, "{low:?} {capped:?}");
    for (p, c) in [(low, 0), (high, 0), (capped, 30)] {
        let holders = p.degree as usize + 1;
        assert!(2 * p.threshold > holders + c, "{p:?} with {c} colluders");
        assert!(p.threshold <= holders);
        // The recommendation is a round the protocol accepts.
        shroud_crypto::config::check_collusion(p.threshold, holders, c, true).unwrap();
    }
    // Still far below the complete graph.
    assert!(high.degree < 999);
}
