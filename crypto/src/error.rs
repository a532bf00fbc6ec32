//! Errors, typed in layers: bytes that do not parse ([`InvalidMessage`]),
//! messages that parse but break the protocol ([`Misbehaviour`]), and rounds
//! that cannot finish because too few parties answered.

use core::fmt;

use crate::ids::PartyId;
use crate::message::MessageKind;

/// A protocol phase, named as in the design: the phase whose messages the
/// coordinator is collecting, or a party is about to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Phase {
    AdvertiseKeys,
    ShareKeys,
    MaskedInput,
    ConsistencyCheck,
    Unmasking,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::AdvertiseKeys,
        Phase::ShareKeys,
        Phase::MaskedInput,
        Phase::ConsistencyCheck,
        Phase::Unmasking,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::AdvertiseKeys => "advertise-keys",
            Phase::ShareKeys => "share-keys",
            Phase::MaskedInput => "masked-input",
            Phase::ConsistencyCheck => "consistency-check",
            Phase::Unmasking => "unmasking",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who sent a message that broke the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Party(PartyId),
    Coordinator,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Party(p) => write!(f, "party {p}"),
            Peer::Coordinator => f.write_str("the coordinator"),
        }
    }
}

/// Bytes that could not be decoded into a message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidMessage {
    /// The message ended before a field that was required.
    Truncated {
        needed: usize,
        remaining: usize,
    },
    /// Bytes were left over after the message.
    TrailingBytes {
        what: &'static str,
        count: usize,
    },
    UnsupportedVersion(u8),
    UnknownKind(u8),
    /// A length prefix exceeds what the protocol allows.
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    /// A field that must be a canonical encoding was not.
    NonCanonical(&'static str),
    /// A list that must be strictly increasing was not.
    Unsorted(&'static str),
    /// A field held a value outside its range.
    OutOfRange {
        what: &'static str,
        value: u64,
    },
}

impl fmt::Display for InvalidMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidMessage::Truncated { needed, remaining } => write!(
                f,
                "message truncated: needed {needed} more bytes, {remaining} remain"
            ),
            InvalidMessage::TrailingBytes { what, count } => {
                write!(f, "{count} trailing bytes after {what}")
            }
            InvalidMessage::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported wire version {v} (this build speaks version {})",
                    crate::message::WIRE_VERSION
                )
            }
            InvalidMessage::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            InvalidMessage::TooLong { what, len, max } => {
                write!(f, "{what} has length {len}, the limit is {max}")
            }
            InvalidMessage::NonCanonical(what) => write!(f, "{what} is not canonically encoded"),
            InvalidMessage::Unsorted(what) => {
                write!(
                    f,
                    "{what} must be strictly increasing (sorted, no duplicates)"
                )
            }
            InvalidMessage::OutOfRange { what, value } => {
                write!(f, "{what} value {value} is out of range")
            }
        }
    }
}

/// A well-formed message that the protocol does not allow at this point.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Misbehaviour {
    /// The message is bound to another consortium, job, round or task.
    WrongSession,
    /// The sender named in the message is not the authenticated sender.
    SenderMismatch { claimed: PartyId },
    /// The party is not in the roster, or not expected in this phase.
    UnexpectedParty(PartyId),
    /// The same party or entry appears twice.
    Duplicate(PartyId),
    /// A signature did not verify.
    BadSignature { signer: PartyId },
    /// A share ciphertext did not decrypt, or decrypted to the wrong header.
    BadCiphertext { from: PartyId },
    /// A public key is of low order, so key agreement with it is not contributory.
    WeakPublicKey { owner: PartyId },
    /// A vector had the wrong length.
    WrongLength { expected: usize, got: usize },
    /// A vector used another modulus.
    WrongBits { expected: u8, got: u8 },
    /// A word was not below `2^bits`.
    WordOutOfRange { index: usize },
    /// The coordinator gave parties different survivor lists.
    InconsistentSurvivors { detail: String },
    /// The coordinator asked for both the self-mask share and the mask-key
    /// share of one party, which would reveal that party's input.
    AskedForBothShares { of: PartyId },
    /// The same party re-sent a message it had already sent this phase.
    Replay,
    /// A list contained a party that is not a neighbour.
    NotNeighbour(PartyId),
}

impl fmt::Display for Misbehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misbehaviour::WrongSession => {
                f.write_str("message is for another consortium, job, round or task")
            }
            Misbehaviour::SenderMismatch { claimed } => {
                write!(f, "message claims to come from party {claimed}")
            }
            Misbehaviour::UnexpectedParty(p) => write!(f, "party {p} is not expected here"),
            Misbehaviour::Duplicate(p) => write!(f, "party {p} appears twice"),
            Misbehaviour::BadSignature { signer } => {
                write!(f, "signature of party {signer} does not verify")
            }
            Misbehaviour::BadCiphertext { from } => {
                write!(
                    f,
                    "share ciphertext from party {from} failed authentication"
                )
            }
            Misbehaviour::WeakPublicKey { owner } => {
                write!(f, "public key of party {owner} has low order")
            }
            Misbehaviour::WrongLength { expected, got } => {
                write!(f, "vector has {got} words, expected {expected}")
            }
            Misbehaviour::WrongBits { expected, got } => {
                write!(f, "vector uses {got} bits, expected {expected}")
            }
            Misbehaviour::WordOutOfRange { index } => {
                write!(f, "word {index} is not below 2^bits")
            }
            Misbehaviour::InconsistentSurvivors { detail } => {
                write!(f, "inconsistent survivor lists: {detail}")
            }
            Misbehaviour::AskedForBothShares { of } => write!(
                f,
                "asked for both the self-mask share and the mask-key share of party {of}"
            ),
            Misbehaviour::Replay => f.write_str("message already received in this phase"),
            Misbehaviour::NotNeighbour(p) => write!(f, "party {p} is not a neighbour"),
        }
    }
}

/// Which of a party's two shared secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecretKind {
    /// `b_u`, which removes the self-mask of a survivor.
    SelfMaskSeed,
    /// The mask-key scalar, which removes a dropout's pairwise masks.
    MaskKey,
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecretKind::SelfMaskSeed => "self-mask seed",
            SecretKind::MaskKey => "mask key",
        })
    }
}

/// Everything that can go wrong in a secure-aggregation round.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Bytes that do not decode.
    InvalidMessage(InvalidMessage),
    /// A message of the wrong kind for the current phase.
    UnexpectedMessage {
        expected: &'static str,
        got: MessageKind,
    },
    /// A message that decodes but breaks the protocol.
    PeerMisbehaved { peer: Peer, kind: Misbehaviour },
    /// Too few parties answered a phase for the round to go on.
    TooFewParties {
        phase: Phase,
        answered: usize,
        needed: usize,
    },
    /// Too few shares arrived to reconstruct one party's secret.
    NotEnoughShares {
        of: PartyId,
        have: usize,
        needed: usize,
    },
    /// The revealed shares of a secret did not open its commitment (for a
    /// mask key, its advertised public key) under any subset tried: too
    /// many responders sent bad shares, or the owner dealt inconsistent ones.
    SecretUnrecoverable {
        of: PartyId,
        secret: SecretKind,
        shares: usize,
    },
    /// The round parameters are unusable.
    Config(String),
    /// The round already finished or aborted.
    Closed,
    /// The host confirmed unmasking when the round was not waiting for it.
    NotAwaitingConfirmation,
}

impl Error {
    pub(crate) fn misbehaved(peer: Peer, kind: Misbehaviour) -> Self {
        Error::PeerMisbehaved { peer, kind }
    }
}

impl From<InvalidMessage> for Error {
    fn from(e: InvalidMessage) -> Self {
        Error::InvalidMessage(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidMessage(e) => write!(f, "invalid message: {e}"),
            Error::UnexpectedMessage { expected, got } => {
                write!(f, "unexpected {got} message; expected {expected}")
            }
            Error::PeerMisbehaved { peer, kind } => write!(f, "{peer} misbehaved: {kind}"),
            Error::TooFewParties {
                phase,
                answered,
                needed,
            } => write!(
                f,
                "round aborted in phase {phase}: {answered} parties answered, at least {needed} needed"
            ),
            Error::NotEnoughShares { of, have, needed } => write!(
                f,
                "round aborted in phase unmasking: {have} shares of party {of} arrived, at least {needed} needed"
            ),
            Error::SecretUnrecoverable { of, secret, shares } => write!(
                f,
                "round aborted in phase unmasking: the {shares} revealed shares of party {of}'s {secret} \
                 do not open what it committed to; some responders sent bad shares or party {of} dealt inconsistent ones"
            ),
            Error::Config(msg) => write!(f, "invalid round configuration: {msg}"),
            Error::Closed => f.write_str("the round has already finished or aborted"),
            Error::NotAwaitingConfirmation => {
                f.write_str("the round is not waiting for a confirmation to unmask")
            }
        }
    }
}

impl std::error::Error for Error {}
