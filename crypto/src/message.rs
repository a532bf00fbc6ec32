//! Wire messages and their versioned binary encoding.
//!
//! Layout: `version (1) | kind (1) | session digest (32) | body`. Integers are
//! little-endian; lists carry a `u32` count checked against protocol limits
//! and the bytes present before allocation; party lists are strictly
//! increasing; trailing bytes are rejected. Decoding never panics.

use core::fmt;

use crate::agreement::DhPublicKey;
use crate::codec::{put_count, put_u32, Reader};
use crate::commitment::SeedCommitment;
use crate::config::{word_mask, MAX_BITS, MAX_LEN, MAX_PARTIES, MIN_BITS};
use crate::error::InvalidMessage;
use crate::identity::Signature;
use crate::ids::PartyId;
use crate::session::SessionId;
use crate::shamir::SecretShare;
use crate::share_box::CIPHERTEXT_LEN;

/// Version 3: masks are ChaCha12 keystreams (version 2 used ChaCha20).
pub const WIRE_VERSION: u8 = 3;
const HEADER_LEN: usize = 2 + 32;

/// The kind of a message, for errors and dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageKind {
    AdvertiseKeys = 1,
    KeyRoster = 2,
    EncryptedShares = 3,
    ShareDelivery = 4,
    MaskedInput = 5,
    SurvivorList = 6,
    SurvivorSignature = 7,
    UnmaskRequest = 8,
    UnmaskResponse = 9,
}

impl MessageKind {
    fn from_u8(v: u8) -> Option<Self> {
        use MessageKind::*;
        Some(match v {
            1 => AdvertiseKeys,
            2 => KeyRoster,
            3 => EncryptedShares,
            4 => ShareDelivery,
            5 => MaskedInput,
            6 => SurvivorList,
            7 => SurvivorSignature,
            8 => UnmaskRequest,
            9 => UnmaskResponse,
            _ => return None,
        })
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            MessageKind::AdvertiseKeys => "advertise-keys",
            MessageKind::KeyRoster => "key-roster",
            MessageKind::EncryptedShares => "encrypted-shares",
            MessageKind::ShareDelivery => "share-delivery",
            MessageKind::MaskedInput => "masked-input",
            MessageKind::SurvivorList => "survivor-list",
            MessageKind::SurvivorSignature => "survivor-signature",
            MessageKind::UnmaskRequest => "unmask-request",
            MessageKind::UnmaskResponse => "unmask-response",
        };
        f.write_str(s)
    }
}

/// A party's signed round keys and its commitment to `b_u`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyAdvertisement {
    pub party: PartyId,
    pub enc_key: DhPublicKey,
    pub mask_key: DhPublicKey,
    pub seed_commitment: SeedCommitment,
    pub signature: Signature,
}

/// One share ciphertext, routed by the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedShare {
    pub from: PartyId,
    pub to: PartyId,
    pub ciphertext: Box<[u8; CIPHERTEXT_LEN]>,
}

/// A party's masked input: words mod `2^bits`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskedVector {
    pub party: PartyId,
    pub bits: u8,
    pub words: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SurvivorSignature {
    pub party: PartyId,
    pub signature: Signature,
}

/// The coordinator's request to unmask: who survived (reveal their self-mask
/// shares), who dropped (reveal their mask-key shares), and in active mode
/// the survivors' signatures over the survivor list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmaskRequest {
    pub survivors: Vec<PartyId>,
    pub dropped: Vec<PartyId>,
    pub signatures: Vec<SurvivorSignature>,
}

/// One revealed share of another party's secret.
pub struct RevealedShare {
    pub of: PartyId,
    pub share: SecretShare,
}

impl fmt::Debug for RevealedShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevealedShare")
            .field("of", &self.of)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct UnmaskResponse {
    pub party: PartyId,
    /// Shares of `b_v` for surviving `v`.
    pub seed_shares: Vec<RevealedShare>,
    /// Shares of the mask key of dropped `v`.
    pub key_shares: Vec<RevealedShare>,
}

#[derive(Debug)]
pub enum Message {
    AdvertiseKeys(KeyAdvertisement),
    KeyRoster(Vec<KeyAdvertisement>),
    EncryptedShares(Vec<EncryptedShare>),
    ShareDelivery(Vec<EncryptedShare>),
    MaskedInput(MaskedVector),
    SurvivorList(Vec<PartyId>),
    SurvivorSignature(SurvivorSignature),
    UnmaskRequest(UnmaskRequest),
    UnmaskResponse(UnmaskResponse),
}

impl Message {
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::AdvertiseKeys(_) => MessageKind::AdvertiseKeys,
            Message::KeyRoster(_) => MessageKind::KeyRoster,
            Message::EncryptedShares(_) => MessageKind::EncryptedShares,
            Message::ShareDelivery(_) => MessageKind::ShareDelivery,
            Message::MaskedInput(_) => MessageKind::MaskedInput,
            Message::SurvivorList(_) => MessageKind::SurvivorList,
            Message::SurvivorSignature(_) => MessageKind::SurvivorSignature,
            Message::UnmaskRequest(_) => MessageKind::UnmaskRequest,
            Message::UnmaskResponse(_) => MessageKind::UnmaskResponse,
        }
    }

    pub fn encode(&self, session: &SessionId) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.body_len_hint());
        out.push(WIRE_VERSION);
        out.push(self.kind() as u8);
        out.extend_from_slice(session.as_bytes());
        match self {
            Message::AdvertiseKeys(a) => put_advert(&mut out, a),
            Message::KeyRoster(list) => {
                put_count(&mut out, list.len());
                list.iter().for_each(|a| put_advert(&mut out, a));
            }
            Message::EncryptedShares(list) | Message::ShareDelivery(list) => {
                put_count(&mut out, list.len());
                for s in list {
                    put_u32(&mut out, s.from.0);
                    put_u32(&mut out, s.to.0);
                    out.extend_from_slice(&s.ciphertext[..]);
                }
            }
            Message::MaskedInput(v) => {
                put_u32(&mut out, v.party.0);
                out.push(v.bits);
                put_count(&mut out, v.words.len());
                pack_words(&mut out, v.bits, &v.words);
            }
            Message::SurvivorList(list) => put_parties(&mut out, list),
            Message::SurvivorSignature(s) => put_sig(&mut out, s),
            Message::UnmaskRequest(r) => {
                put_parties(&mut out, &r.survivors);
                put_parties(&mut out, &r.dropped);
                put_count(&mut out, r.signatures.len());
                r.signatures.iter().for_each(|s| put_sig(&mut out, s));
            }
            Message::UnmaskResponse(r) => {
                put_u32(&mut out, r.party.0);
                put_shares(&mut out, &r.seed_shares);
                put_shares(&mut out, &r.key_shares);
            }
        }
        out
    }

    fn body_len_hint(&self) -> usize {
        match self {
            Message::MaskedInput(v) => 9 + v.words.len() * byte_width(v.bits),
            _ => 256,
        }
    }

    /// Decodes untrusted bytes. Returns the session the message is bound to;
    /// the state machines check it against their own.
    pub fn decode(bytes: &[u8]) -> Result<(SessionId, Message), InvalidMessage> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != WIRE_VERSION {
            return Err(InvalidMessage::UnsupportedVersion(version));
        }
        let kind_byte = r.u8()?;
        let kind = MessageKind::from_u8(kind_byte).ok_or(InvalidMessage::UnknownKind(kind_byte))?;
        let session = SessionId(r.array()?);
        let msg = match kind {
            MessageKind::AdvertiseKeys => Message::AdvertiseKeys(read_advert(&mut r)?),
            MessageKind::KeyRoster => {
                let n = r.count("key roster", ADVERT_LEN, MAX_PARTIES)?;
                let list = (0..n)
                    .map(|_| read_advert(&mut r))
                    .collect::<Result<Vec<_>, _>>()?;
                Message::KeyRoster(list)
            }
            MessageKind::EncryptedShares | MessageKind::ShareDelivery => {
                let n = r.count("share list", 8 + CIPHERTEXT_LEN, MAX_PARTIES)?;
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    let from = PartyId(r.u32()?);
                    let to = PartyId(r.u32()?);
                    let ciphertext = Box::new(r.array::<CIPHERTEXT_LEN>()?);
                    list.push(EncryptedShare {
                        from,
                        to,
                        ciphertext,
                    });
                }
                if kind == MessageKind::EncryptedShares {
                    Message::EncryptedShares(list)
                } else {
                    Message::ShareDelivery(list)
                }
            }
            MessageKind::MaskedInput => {
                let party = PartyId(r.u32()?);
                let bits = r.u8()?;
                if !(MIN_BITS..=MAX_BITS).contains(&bits) {
                    return Err(InvalidMessage::OutOfRange {
                        what: "bits",
                        value: u64::from(bits),
                    });
                }
                let len = r.count("masked vector", byte_width(bits), MAX_LEN)?;
                let words = unpack_words(&mut r, bits, len)?;
                Message::MaskedInput(MaskedVector { party, bits, words })
            }
            MessageKind::SurvivorList => {
                Message::SurvivorList(read_parties(&mut r, "survivor list")?)
            }
            MessageKind::SurvivorSignature => Message::SurvivorSignature(read_sig(&mut r)?),
            MessageKind::UnmaskRequest => {
                let survivors = read_parties(&mut r, "survivor list")?;
                let dropped = read_parties(&mut r, "dropped list")?;
                let n = r.count("signature list", SIG_ENTRY_LEN, MAX_PARTIES)?;
                let signatures = (0..n)
                    .map(|_| read_sig(&mut r))
                    .collect::<Result<Vec<_>, _>>()?;
                Message::UnmaskRequest(UnmaskRequest {
                    survivors,
                    dropped,
                    signatures,
                })
            }
            MessageKind::UnmaskResponse => {
                let party = PartyId(r.u32()?);
                let seed_shares = read_shares(&mut r, party)?;
                let key_shares = read_shares(&mut r, party)?;
                Message::UnmaskResponse(UnmaskResponse {
                    party,
                    seed_shares,
                    key_shares,
                })
            }
        };
        r.expect_empty("message")?;
        Ok((session, msg))
    }
}

const ADVERT_LEN: usize = 4 + 32 + 32 + 32 + 64;
const SIG_ENTRY_LEN: usize = 4 + 64;
const SHARE_ENTRY_LEN: usize = 4 + 32;

fn put_advert(out: &mut Vec<u8>, a: &KeyAdvertisement) {
    put_u32(out, a.party.0);
    out.extend_from_slice(&a.enc_key.0);
    out.extend_from_slice(&a.mask_key.0);
    out.extend_from_slice(&a.seed_commitment.0);
    out.extend_from_slice(&a.signature.0);
}

fn read_advert(r: &mut Reader<'_>) -> Result<KeyAdvertisement, InvalidMessage> {
    Ok(KeyAdvertisement {
        party: PartyId(r.u32()?),
        enc_key: DhPublicKey(r.array()?),
        mask_key: DhPublicKey(r.array()?),
        seed_commitment: SeedCommitment(r.array()?),
        signature: Signature(r.array()?),
    })
}

fn put_sig(out: &mut Vec<u8>, s: &SurvivorSignature) {
    put_u32(out, s.party.0);
    out.extend_from_slice(&s.signature.0);
}

fn read_sig(r: &mut Reader<'_>) -> Result<SurvivorSignature, InvalidMessage> {
    Ok(SurvivorSignature {
        party: PartyId(r.u32()?),
        signature: Signature(r.array()?),
    })
}

fn put_parties(out: &mut Vec<u8>, list: &[PartyId]) {
    put_count(out, list.len());
    list.iter().for_each(|p| put_u32(out, p.0));
}

fn read_parties(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<PartyId>, InvalidMessage> {
    let n = r.count(what, 4, MAX_PARTIES)?;
    let list = (0..n)
        .map(|_| r.u32().map(PartyId))
        .collect::<Result<Vec<_>, _>>()?;
    if list.windows(2).any(|w| w[0] >= w[1]) {
        return Err(InvalidMessage::Unsorted(what));
    }
    Ok(list)
}

fn put_shares(out: &mut Vec<u8>, list: &[RevealedShare]) {
    put_count(out, list.len());
    for s in list {
        put_u32(out, s.of.0);
        out.extend_from_slice(&s.share.value_bytes());
    }
}

fn read_shares(r: &mut Reader<'_>, holder: PartyId) -> Result<Vec<RevealedShare>, InvalidMessage> {
    let n = r.count("share list", SHARE_ENTRY_LEN, MAX_PARTIES)?;
    let mut list: Vec<RevealedShare> = Vec::with_capacity(n);
    for _ in 0..n {
        let of = PartyId(r.u32()?);
        if list.last().is_some_and(|prev| prev.of >= of) {
            return Err(InvalidMessage::Unsorted("share list"));
        }
        let bytes = zeroize::Zeroizing::new(r.array::<32>()?);
        let share = SecretShare::from_parts(holder, &bytes)?;
        list.push(RevealedShare { of, share });
    }
    Ok(list)
}

/// Bytes per word on the wire: the fewest whole bytes that hold `bits`.
pub fn byte_width(bits: u8) -> usize {
    usize::from(bits).div_ceil(8)
}

fn pack_words(out: &mut Vec<u8>, bits: u8, words: &[u32]) {
    let w = byte_width(bits);
    out.reserve(words.len() * w);
    let start = out.len();
    match w {
        // Sized once and written in place: a straight copy on little-endian
        // machines.
        4 => {
            out.resize(start + 4 * words.len(), 0);
            for (b, x) in out[start..].chunks_exact_mut(4).zip(words) {
                b.copy_from_slice(&x.to_le_bytes());
            }
        }
        2 => {
            out.resize(start + 2 * words.len(), 0);
            for (b, x) in out[start..].chunks_exact_mut(2).zip(words) {
                b.copy_from_slice(&(*x as u16).to_le_bytes());
            }
        }
        1 => out.extend(words.iter().map(|x| *x as u8)),
        _ => words
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes()[..w])),
    }
}

fn unpack_words(r: &mut Reader<'_>, bits: u8, len: usize) -> Result<Vec<u32>, InvalidMessage> {
    let w = byte_width(bits);
    let bytes = r.take(len * w)?;
    let words: Vec<u32> = match w {
        4 => bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        2 => bytes
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        1 => bytes.iter().map(|&b| u32::from(b)).collect(),
        _ => bytes
            .chunks_exact(3)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], 0]))
            .collect(),
    };
    let mask = word_mask(bits);
    if let Some(i) = words.iter().position(|x| x & !mask != 0) {
        return Err(InvalidMessage::OutOfRange {
            what: "masked word",
            value: i as u64,
        });
    }
    Ok(words)
}
