//! Shroud's secure aggregation: pairwise-mask SecAgg (Bonawitz et al., CCS
//! 2017) and its sparse-graph form SecAgg+ (Bell et al., CCS 2020).
//!
//! The protocol is written as sans-IO state machines: [`party::Party`] and
//! [`coordinator::Coordinator`] take messages (and, for the coordinator, the
//! current time) in and hand messages and events out. They never touch a
//! socket or read a clock, and all randomness is passed in, so whole rounds
//! run deterministically in memory ([`sim::Sim`]) exactly as they run over
//! the network.
//!
//! Invariants kept throughout:
//! - keys, seeds and shares are fresh for every round and task, and every
//!   derivation binds the round's [`session::SessionId`];
//! - secrets are newtypes without `Clone`, `Debug` or serde and are wiped on
//!   drop;
//! - a message that fails a check is refused and changes no state;
//! - the coordinator holds one running sum, never a vector per party.

#[cfg(test)]
mod adversary;
pub mod agreement;
mod codec;
pub mod commitment;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod graph;
pub mod identity;
pub mod ids;
mod kdf;
pub mod message;
pub mod party;
pub mod prg;
pub mod session;
pub mod shamir;
pub mod share_box;
pub mod sim;
mod transcript;

pub use config::{Round, RoundConfig};
pub use coordinator::{Aggregate, BadShare, Coordinator, Event};
pub use error::{Error, InvalidMessage, Misbehaviour, Peer, Phase, SecretKind};
pub use graph::GraphSpec;
pub use identity::{IdentityKey, IdentityPublicKey};
pub use ids::PartyId;
pub use message::Message;
pub use party::Party;
pub use session::SessionParams;
