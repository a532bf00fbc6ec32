//! Decoding untrusted bytes never panics, and whatever decodes re-encodes
//! to the same bytes.

use proptest::prelude::*;
use shroud_crypto::message::{
    EncryptedShare, KeyAdvertisement, MaskedVector, Message, SurvivorSignature, UnmaskRequest,
};
use shroud_crypto::session::SessionId;
use shroud_crypto::{InvalidMessage, PartyId};

fn session() -> SessionId {
    SessionId([5; 32])
}

fn samples() -> Vec<Message> {
    let advert = |p| KeyAdvertisement {
        party: PartyId(p),
        enc_key: shroud_crypto::agreement::DhSecret::random(&mut rand_core::OsRng).public(),
        mask_key: shroud_crypto::agreement::DhSecret::random(&mut rand_core::OsRng).public(),
        seed_commitment: shroud_crypto::commitment::SeedCommitment::from_bytes(
            [p as u8 ^ 0x5a; 32],
        ),
        signature: shroud_crypto::identity::Signature::from_bytes([p as u8; 64]),
    };
    vec![
        Message::AdvertiseKeys(advert(1)),
        Message::KeyRoster(vec![advert(2), advert(3)]),
        Message::EncryptedShares(vec![EncryptedShare {
            from: PartyId(1),
            to: PartyId(2),
            ciphertext: Box::new([9; shroud_crypto::share_box::CIPHERTEXT_LEN]),
        }]),
        Message::MaskedInput(MaskedVector {
            party: PartyId(4),
            bits: 12,
            words: vec![0, 1, 4095, 77],
        }),
        Message::MaskedInput(MaskedVector {
            party: PartyId(4),
            bits: 32,
            words: vec![u32::MAX, 0],
        }),
        Message::SurvivorList(vec![PartyId(0), PartyId(2), PartyId(9)]),
        Message::SurvivorSignature(SurvivorSignature {
            party: PartyId(3),
            signature: shroud_crypto::identity::Signature::from_bytes([1; 64]),
        }),
        Message::UnmaskRequest(UnmaskRequest {
            survivors: vec![PartyId(1), PartyId(2)],
            dropped: vec![PartyId(3)],
            signatures: vec![],
        }),
    ]
}

#[test]
fn samples_round_trip() {
    for m in samples() {
        let bytes = m.encode(&session());
        let (s, back) = Message::decode(&bytes).unwrap();
        assert_eq!(s, session());
        assert_eq!(back.encode(&s), bytes, "{:?}", m.kind());
    }
}

#[test]
fn specific_malformations_get_specific_errors() {
    let ok = Message::SurvivorList(vec![PartyId(1), PartyId(2)]).encode(&session());
    let mut v = ok.clone();
    v[0] = 1;
    assert_eq!(
        Message::decode(&v).unwrap_err(),
        InvalidMessage::UnsupportedVersion(1)
    );
    let mut v = ok.clone();
    v[1] = 200;
    assert_eq!(
        Message::decode(&v).unwrap_err(),
        InvalidMessage::UnknownKind(200)
    );
    let mut v = ok.clone();
    v.push(0);
    assert!(matches!(
        Message::decode(&v).unwrap_err(),
        InvalidMessage::TrailingBytes { .. }
    ));
    assert!(matches!(
        Message::decode(&ok[..ok.len() - 1]).unwrap_err(),
        InvalidMessage::Truncated { .. }
    ));
    let unsorted = Message::SurvivorList(vec![PartyId(2), PartyId(1)]).encode(&session());
    assert_eq!(
        Message::decode(&unsorted).unwrap_err(),
        InvalidMessage::Unsorted("survivor list")
    );
    // A count far beyond the bytes present is refused before allocating.
    let mut huge = ok[..34].to_vec();
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Message::decode(&huge).unwrap_err(),
        InvalidMessage::TooLong { .. }
    ));
    let mut big = ok[..34].to_vec();
    big.extend_from_slice(&60_000u32.to_le_bytes());
    assert!(matches!(
        Message::decode(&big).unwrap_err(),
        InvalidMessage::Truncated { .. }
    ));
    // A 12-bit word above 4095 is out of range.
    let m = Message::MaskedInput(MaskedVector {
        party: PartyId(4),
        bits: 12,
        words: vec![4096],
    })
    .encode(&session());
    assert!(matches!(
        Message::decode(&m).unwrap_err(),
        InvalidMessage::OutOfRange { .. }
    ));
    // Bits outside 8..=32.
    let mut m = Message::MaskedInput(MaskedVector {
        party: PartyId(4),
        bits: 8,
        words: vec![1],
    })
    .encode(&session());
    m[38] = 40;
    assert!(matches!(
        Message::decode(&m).unwrap_err(),
        InvalidMessage::OutOfRange { what: "bits", .. }
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Message::decode(&bytes);
    }

    /// Random bytes behind a valid header reach every body decoder.
    #[test]
    fn random_bodies_never_panic(kind in 1u8..=10, body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut bytes = vec![1u8, kind];
        bytes.extend_from_slice(&[5; 32]);
        bytes.extend_from_slice(&body);
        if let Ok((_, m)) = Message::decode(&bytes) {
            prop_assert_eq!(m.encode(&session()), bytes);
        }
    }

    /// Valid messages with bytes flipped, cut or appended never panic.
    #[test]
    fn mutated_messages_never_panic(which in 0usize..8, pos in any::<usize>(), val in any::<u8>(), cut in any::<bool>()) {
        let msg = &samples()[which];
        let mut bytes = msg.encode(&session());
        let i = pos % bytes.len();
        if cut {
            bytes.truncate(i);
        } else {
            bytes[i] = val;
        }
        let _ = Message::decode(&bytes);
    }
}
